"""
Answers questions about videos with ViLaMP for evaluations. The processor's call (decoding, keyframe selection, chat
template) runs ahead of the model in worker processes, so that decoding the next videos overlaps the model's work on the
current ones; answers are greedy, and given answer continuations can be scored for multiple-choice questions.
"""

import functools
import inspect
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
from transformers import AutoModel, AutoProcessor, DynamicCache
from transformers.feature_extraction_utils import BatchFeature

import vilamp  # noqa: F401  (registers ViLaMP with the Auto classes)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

# Inputs moved to the model's device before a call; the frames and the keyframe mask stay on the CPU as the processor
# gives them, and the model moves each chunk of frames to its device when it encodes it.
DEVICE_INPUT_NAMES = ("input_ids", "attention_mask", "query_embeds")


@dataclass(frozen=True)
class VideoQuestion:
    """
    One question about one video.

    Args:
        video (`str`, `os.PathLike` or frames): the video, as the processor takes it.
        prompt (`str`): the user's text, put into the chat template after the video: the question with its options and
            instructions, as the benchmark asks it.
        query (`str`): the text the keyframe selector ranks the frames against; the original evaluation gives it the
            question alone, without the answer options.
    """

    video: Any
    prompt: str
    query: str


def process_questions(processor, questions: list[VideoQuestion], device: str | torch.device) -> BatchFeature:
    """The model inputs of a batch of questions: one processor call, its keyframe selector run on `device`."""
    return processor(
        text=[question.prompt for question in questions],
        videos=[question.video for question in questions],
        query=[question.query for question in questions],
        device=device,
        return_tensors="pt",
    )


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


class VideoQuestionAnswerer:
    """
    A ViLaMP model and its processor on one device, answering batches of [`VideoQuestion`]s.

    Args:
        model ([`ViLaMPForConditionalGeneration`]): the model, on `device`, in eval mode.
        processor ([`ViLaMPProcessor`]): its processor; the only road from a video to the model's inputs.
        device (`torch.device`): where the model and the keyframe selector run.
        decoding_workers ([`DecodingWorkers`], *optional*): worker processes that run the processor ahead of the model;
            without them the processor runs in this process, between the model's calls. `close` stops them.
        cache_implementation (`str`, *optional*, defaults to `"dynamic"`): `generate`'s key/value cache; `"static"`
            compiles the decoding step on a GPU.
    """

    def __init__(
        self,
        model,
        processor,
        device: torch.device,
        decoding_workers: DecodingWorkers | None = None,
        cache_implementation: str = "dynamic",
    ):
        if cache_implementation not in ("dynamic", "static"):
            raise ValueError(f"`cache_implementation` must be 'dynamic' or 'static', got {cache_implementation!r}.")
        self.model = model
        self.processor = processor
        self.device = device
        self.decoding_workers = decoding_workers
        self.cache_implementation = cache_implementation

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
        if dtype != "auto" and dtype not in DTYPES:
            raise ValueError(f"`dtype` must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}.")
        if not isinstance(decode_workers, int) or isinstance(decode_workers, bool) or decode_workers < 0:
            raise ValueError(f"`decode_workers` must be an integer of at least 0, got {decode_workers!r}.")
        torch_dtype = DTYPES.get(dtype) or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        # the keyframe selector is loaded on the host: the decoding workers each get a copy and move it to `device`
        settings = {} if max_frames is None else {"max_frames": max_frames}
        processor = AutoProcessor.from_pretrained(pretrained_model_name_or_path, device="cpu", **settings)
        decoding_workers = DecodingWorkers(processor, device, decode_workers) if decode_workers else None
        # loaded straight onto the device: no copy of the weights in host memory per process
        model_kwargs = {"dtype": torch_dtype, "device_map": str(device)}
        if attn_implementation is not None:
            model_kwargs["attn_implementation"] = attn_implementation
        try:
            model = AutoModel.from_pretrained(pretrained_model_name_or_path, **model_kwargs)
            return cls(model.eval(), processor, device, decoding_workers, cache_implementation)
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
            return (process_questions(self.processor, batch, self.device) for batch in batches)
        return self.decoding_workers.map(batches)

    def close(self):
        """Stops the decoding workers, if any."""
        if self.decoding_workers is not None:
            self.decoding_workers.close()

    def __enter__(self) -> "VideoQuestionAnswerer":
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _on_device(self, inputs: BatchFeature) -> dict[str, torch.Tensor]:
        """The inputs with `DEVICE_INPUT_NAMES` moved to the model's device."""
        return {name: tensor.to(self.device) if name in DEVICE_INPUT_NAMES else tensor for name, tensor in inputs.items()}

    def generate(self, inputs: BatchFeature, max_new_tokens: int) -> list[str]:
        """
        Greedy answers to a batch of processed questions.

        Args:
            inputs (`BatchFeature`): what [`process_questions`] (or [`VideoQuestionAnswerer.prepare`]) returned.
            max_new_tokens (`int`): at most this many tokens per answer.

        Returns:
            `list[str]`: one answer per question, special tokens left out.
        """
        inputs = self._on_device(inputs)
        with torch.inference_mode():
            output_ids = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                cache_implementation=self.cache_implementation,
            )
        new_ids = output_ids[:, inputs["input_ids"].shape[1] :]
        return self.processor.tokenizer.batch_decode(new_ids, skip_special_tokens=True)

    def answer(self, questions: list[VideoQuestion], max_new_tokens: int, batch_size: int = 1) -> list[str]:
        """Greedy answers to `questions`, `batch_size` at a time, the videos decoded ahead of the model."""
        batches = [questions[start : start + batch_size] for start in range(0, len(questions), batch_size)]
        return [answer for inputs in self.prepare(batches) for answer in self.generate(inputs, max_new_tokens)]

    def continuation_losses(self, inputs: BatchFeature, continuations: list[str]) -> list[tuple[float, bool]]:
        """
        Scores answer continuations of one processed question: the prompt and its video run through the model once,
        and each continuation then runs on the prompt's key/value cache.

        Args:
            inputs (`BatchFeature`): one question, as [`process_questions`] returns it.
            continuations (`list[str]`): the texts to score, each tokenized on its own and put right after the prompt
                (after the assistant turn's header).

        Returns:
            `list[tuple[float, bool]]`: per continuation, the mean negative log-likelihood of its tokens (a loss: lower
            is likelier) and whether greedy decoding would produce exactly these tokens.
        """
        batch_size, prompt_length = inputs["input_ids"].shape
        if batch_size != 1:
            raise ValueError(f"`inputs` must hold one question, got a batch of {batch_size}.")
        inputs = self._on_device(inputs)
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
                    raise ValueError(f"The continuation {continuation!r} has no tokens; pass a non-empty answer to score.")
                attention_mask = torch.ones(1, prompt_length + continuation_ids.shape[1], dtype=torch.long, device=self.device)
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


__all__ = ["DTYPES", "DecodingWorkers", "VideoQuestion", "VideoQuestionAnswerer", "process_device", "process_questions"]
