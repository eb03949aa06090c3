"""
Answers questions about videos with ViLaMP for evaluations, on the package's runner (`vilamp.runner.ViLaMPRunner`:
greedy answers, the dtype rule, device placement). The processor's call (decoding, keyframe selection, chat template)
runs ahead of the model in worker processes, so that decoding the next videos overlaps the model's work on the current
ones; given answer continuations can be scored for multiple-choice questions.
"""

import functools
import inspect
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import islice

import torch
from transformers import DynamicCache
from transformers.feature_extraction_utils import BatchFeature

from ..runner import VideoQuestion, ViLaMPRunner, load_model, load_processor, process_questions, resolve_dtype

# The processor and device of a decoding worker process, set when it starts.
WORKER_STATE = {}


def start_decoding_worker(processor, device: str):
    """Runs once in each decoding worker: keeps the processor and moves its keyframe selector to `device`. One thread
    for torch's CPU operations per worker, as a `DataLoader`'s workers have: the workers run side by side."""
    torch.set_num_threads(1)
    processor.keyframe_selector.to(device)
    WORKER_STATE.update(processor=processor, device=device)


def worker_ready() -> bool:
    return True


def process_questions_in_worker(questions: list[VideoQuestion]) -> BatchFeature:
    return process_questions(WORKER_STATE["processor"], questions, WORKER_STATE["device"])


class DecodingWorkers:
    """
    Worker processes that run the processor on batches of questions ahead of the model. They start when this object is
    made and stay until `close`: their start (importing torch and the package, receiving the processor, moving its
    keyframe selector to the device) overlaps whatever the caller does next, such as loading the model, and each later
    `prepare` finds them ready.

    Args:
        processor ([`ViLaMPProcessor`]): the processor; each worker gets a copy.
        device (`torch.device`): where the workers run the keyframe selector.
        num_workers (`int`): worker processes; each holds one batch at a time, so `num_workers` batches wait at most.
    """

    def __init__(self, processor, device: torch.device, num_workers: int):
        if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 1:
            raise ValueError(f"`num_workers` must be an integer of at least 1, got {num_workers!r}.")
        self.num_workers = num_workers
        # spawned, not forked: the parent may hold a CUDA context, which a forked child cannot use
        self.executor = ProcessPoolExecutor(
            num_workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=start_decoding_worker,
            initargs=(processor, str(device)),
        )
        # A spawning pool starts a process per task submitted while none is idle: one task each starts them all. Each
        # start holds the submitting thread until the new process has imported torch and the package and taken its
        # copy of the processor (seconds each), so a thread of its own starts them while the caller goes on.
        self.starter = threading.Thread(target=self._start_workers, name="decoding-workers-start", daemon=True)
        self.starter.start()

    def _start_workers(self):
        for _ in range(self.num_workers):
            self.executor.submit(worker_ready)

    def map(self, batches: Iterable[list[VideoQuestion]]) -> Iterator[BatchFeature]:
        """The processor's inputs of each batch, in order, with at most `num_workers` batches in the workers at once."""
        self.starter.join()
        batches = iter(batches)
        submit = functools.partial(self.executor.submit, process_questions_in_worker)
        pending = deque(map(submit, islice(batches, self.num_workers)))
        try:
            while pending:
                inputs = pending.popleft().result()
                pending.extend(map(submit, islice(batches, 1)))
                yield inputs
        finally:
            # a caller that stops early (an error, a `break`) leaves no batch queued behind it
            for future in pending:
                future.cancel()

    def close(self):
        """Stops the workers once they finish the batches they hold."""
        self.starter.join()
        self.executor.shutdown(cancel_futures=True)

    def __enter__(self) -> "DecodingWorkers":
        return self

    def __exit__(self, *exc_info):
        self.close()


def process_device(device: str | torch.device) -> torch.device:
    """`"auto"`: this process's GPU under `accelerate launch` or `torchrun` (`LOCAL_RANK`), else the CPU."""
    if device != "auto":
        return torch.device(device)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


class VideoQuestionAnswerer(ViLaMPRunner):
    """
    A [`ViLaMPRunner`] whose processor can run ahead of the model in worker processes, and which scores answer
    continuations.

    Args:
        model ([`ViLaMPForConditionalGeneration`]): the model on its device, in eval mode.
        processor ([`ViLaMPProcessor`]): its processor; the only road from a video to the model's inputs.
        decoding_workers ([`DecodingWorkers`], *optional*): worker processes that run the processor ahead of the model;
            without them the processor runs in this process, between the model's calls. `close` stops them.
        cache_implementation (`str`, *optional*, defaults to `"dynamic"`): `generate`'s key/value cache; `"static"`
            compiles the decoding step on a GPU.
    """

    def __init__(
        self,
        model,
        processor,
        decoding_workers: DecodingWorkers | None = None,
        cache_implementation: str = "dynamic",
    ):
        super().__init__(model, processor, cache_implementation=cache_implementation)
        self.decoding_workers = decoding_workers

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        device: str | torch.device = "auto",
        dtype: str = "auto",
        attn_implementation: str | None = None,
        max_frames: int | None = None,
        decode_workers: int = 2,
        cache_implementation: str = "dynamic",
    ) -> "VideoQuestionAnswerer":
        """
        Loads a converted ViLaMP (model and processor) onto one device. The decoding workers start before the model
        loads, so that their start overlaps the loading.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): the converted checkpoint's directory or repository.
            device (`str` or `torch.device`, *optional*, defaults to `"auto"`): `"auto"` is this process's GPU
                (`LOCAL_RANK` under `accelerate launch` or `torchrun`), else the CPU.
            dtype (`str`, *optional*, defaults to `"auto"`): `"bfloat16"`, `"float16"` or `"float32"`; `"auto"` is
                bfloat16 on a GPU and float32 on the CPU.
            attn_implementation (`str`, *optional*): the language model's attention (`"sdpa"`, `"flash_attention_2"`, ...).
            max_frames (`int`, *optional*): frames sampled per video; defaults to the processor's (600).
            decode_workers (`int`, *optional*, defaults to 2): worker processes that run the processor ahead of the
                model (each moves its keyframe selector to `device`); 0 runs it in this process, between the model's
                calls.
            cache_implementation (`str`, *optional*, defaults to `"dynamic"`): see the class.
        """
        device = process_device(device)
        # checked before anything loads or starts
        dtype = resolve_dtype(dtype, device)
        if not isinstance(decode_workers, int) or isinstance(decode_workers, bool) or decode_workers < 0:
            raise ValueError(f"`decode_workers` must be an integer of at least 0, got {decode_workers!r}.")
        # the keyframe selector is loaded on the host: the decoding workers each get a copy and move it to `device`
        processor = load_processor(pretrained_model_name_or_path, device="cpu", max_frames=max_frames)
        decoding_workers = DecodingWorkers(processor, device, decode_workers) if decode_workers else None
        try:
            model = load_model(
                pretrained_model_name_or_path, device=device, dtype=dtype, attn_implementation=attn_implementation
            )
            return cls(model, processor, decoding_workers, cache_implementation)
        except BaseException:
            if decoding_workers is not None:
                decoding_workers.close()
            raise

    def prepare(self, batches: Iterable[list[VideoQuestion]]) -> Iterator[BatchFeature]:
        """
        The model inputs of each batch of questions, in order. With decoding workers, they run the processor on the
        next batches while the caller runs the model on the current one.
        """
        if self.decoding_workers is None:
            return super().prepare(batches)
        return self.decoding_workers.map(batches)

    def close(self):
        """Stops the decoding workers, if any."""
        if self.decoding_workers is not None:
            self.decoding_workers.close()

    def __enter__(self) -> "VideoQuestionAnswerer":
        return self

    def __exit__(self, *exc_info):
        self.close()

    def continuation_losses(self, inputs: BatchFeature, continuations: list[str]) -> list[tuple[float, bool]]:
        """
        Scores answer continuations of one processed question: the prompt and its video run through the model once,
        and each continuation then runs on the prompt's key/value cache.

        Args:
            inputs (`BatchFeature`): one question, as [`~vilamp.runner.process_questions`] returns it.
            continuations (`list[str]`): the texts to score, each tokenized on its own and put right after the prompt
                (after the assistant turn's header).

        Returns:
            `list[tuple[float, bool]]`: per continuation, the mean negative log-likelihood of its tokens (a loss: lower
            is likelier) and whether greedy decoding would produce exactly these tokens.
        """
        batch_size, prompt_length = inputs["input_ids"].shape
        if batch_size != 1:
            raise ValueError(f"`inputs` must hold one question, got a batch of {batch_size}.")
        inputs = self.model_inputs(inputs)
        cache = DynamicCache(config=self.model.config)
        cache_kwargs = {self._cache_argument_name(): cache}
        results = []
        with torch.inference_mode():
            prompt_logits = self.model(**inputs, use_cache=True, **cache_kwargs).logits[:, -1:]
            for continuation in continuations:
                continuation_ids = self.processor.tokenizer(
                    continuation, add_special_tokens=False, return_tensors="pt"
                ).input_ids.to(self.device)
                if continuation_ids.shape[1] == 0:
                    raise ValueError(
                        f"The continuation {continuation!r} has no tokens; pass a non-empty answer to score."
                    )
                attention_mask = torch.ones(
                    1, prompt_length + continuation_ids.shape[1], dtype=torch.long, device=self.device
                )
                continuation_logits = self.model(
                    input_ids=continuation_ids, attention_mask=attention_mask, use_cache=True, **cache_kwargs
                ).logits
                # the next continuation starts again right after the prompt (a negative count: the tokens to drop, which
                # every supported transformers release reads the same way)
                cache.crop(-continuation_ids.shape[1])
                logits = torch.cat([prompt_logits, continuation_logits[:, :-1]], dim=1).float()
                token_log_probs = logits.log_softmax(dim=-1).gather(-1, continuation_ids[..., None])
                is_greedy = bool((logits.argmax(dim=-1) == continuation_ids).all())
                results.append((-token_log_probs.mean().item(), is_greedy))
        return results

    def _cache_argument_name(self) -> str:
        """The key/value cache's argument name of the installed transformers (`cache` from 5.24, else
        `past_key_values`); the model passes it on to its language model."""
        parameters = inspect.signature(self.model.model.language_model.forward).parameters
        return "cache" if "cache" in parameters else "past_key_values"


__all__ = ["DecodingWorkers", "VideoQuestionAnswerer", "process_device"]
