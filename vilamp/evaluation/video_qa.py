"""
Answers questions about videos with ViLaMP for evaluations, on the package's runner (`vilamp.runner.ViLaMPRunner`:
greedy answers, the dtype rule, device placement). Questions are grouped by video: each video is loaded once for all of
its questions (decoded, its frames embedded by CLIP and, where memory allows, encoded by SigLIP and the projector), and
each question then runs only its keyframe selection, the DFM, the prefill and its answer. Worker processes decode the
next videos while the model answers the current one; given answer continuations can be scored for multiple-choice
questions.
"""

import dataclasses
import functools
import inspect
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Hashable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import islice

import torch
from transformers import DynamicCache
from transformers.feature_extraction_utils import BatchFeature

from ..processing import LoadedVideo, VideoCache
from ..runner import (
    KEEP_FEATURES,
    EncodedVideo,
    VideoQuestion,
    ViLaMPRunner,
    load_model,
    load_processor,
    resolve_dtype,
)

# The video processor of a decoding worker process, the keyframe selector's image size, the video cache it reads
# through, and when its start ended.
WORKER_STATE = {}


def start_decoding_worker(
    video_processor, keyframe_image_size: int, video_cache: VideoCache | None, visible_gpu: str | None
):
    """Runs once in each decoding worker: keeps the video processor, and makes the model's GPU (`visible_gpu`, as
    `CUDA_VISIBLE_DEVICES` names it) the only one NVDEC can use here; nothing has started CUDA yet, so it applies. One
    thread for torch's CPU operations per worker, as a `DataLoader`'s workers have: the workers run side by side."""
    if visible_gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible_gpu
    torch.set_num_threads(1)
    WORKER_STATE.update(
        video_processor=video_processor,
        keyframe_image_size=keyframe_image_size,
        video_cache=video_cache,
        ready_time=time.time(),
    )


def worker_ready_time() -> float:
    """When this worker's start (interpreter, imports, its copy of the processor) ended, as `time.time()`."""
    return WORKER_STATE["ready_time"]


def load_video_in_worker(video) -> tuple[LoadedVideo, float]:
    """The processor's `load_video` of `video` (its video processor's, with CLIP frames of the keyframe selector's image
    size), and the seconds it took."""
    video_processor, video_cache = WORKER_STATE["video_processor"], WORKER_STATE["video_cache"]
    keyframe_image_size = WORKER_STATE["keyframe_image_size"]
    start = time.perf_counter()
    if video_cache is None:
        loaded = video_processor.load_video(video, keyframe_image_size=keyframe_image_size)
    else:
        loaded = video_cache.load_video(video_processor, video, keyframe_image_size=keyframe_image_size)
    return loaded, time.perf_counter() - start


class DecodingWorkers:
    """
    Worker processes that load videos (decoding, 1 fps sampling, resizing: the processor's `load_video`) ahead of the
    model. They start when this object is made and stay until `close`: their start (importing torch and the package,
    receiving the processor) overlaps whatever the caller does next, such as loading the model, and each later `map`
    finds them ready. They only decode (on the CPU, and on the GPU's video decoders where the video processor's
    `decode_device` uses NVDEC, the one use of CUDA in a worker): the model's process embeds the frames with CLIP on its
    device, so that the embeddings do not depend on the number of workers. So each worker gets a copy of the video
    processor alone, not of the keyframe selector's CLIP weights (577 MiB for ViT-B/32), and does not import open_clip.

    Args:
        processor ([`ViLaMPProcessor`]): the processor, with its keyframe selector.
        num_workers (`int`): worker processes; each holds one video at a time, so `num_workers` videos wait at most.
        video_cache ([`VideoCache`], *optional*): the workers read video files through it (a video stored by an
            earlier run or another process is not decoded again); give the answerer the same one.
        device (`torch.device`, *optional*): the model's device; for a GPU, the only one the workers' NVDEC decoders
            use (otherwise each process's workers would all decode on the first GPU).
    """

    def __init__(
        self,
        processor,
        num_workers: int,
        video_cache: VideoCache | None = None,
        *,
        device: str | torch.device | None = None,
    ):
        if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 1:
            raise ValueError(f"`num_workers` must be an integer of at least 1, got {num_workers!r}.")
        if processor.keyframe_selector is None:
            raise ValueError(
                "`processor` has no `keyframe_selector`, whose image size the workers resize the CLIP frames to; load "
                "it with `ViLaMPProcessor.from_pretrained` from a directory holding keyframe_selector.safetensors."
            )
        self.num_workers = num_workers
        self.start_time = time.time()
        # spawned, not forked: the parent may hold a CUDA context, which a forked child cannot use
        self.executor = ProcessPoolExecutor(
            num_workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=start_decoding_worker,
            initargs=(
                processor.video_processor,
                processor.keyframe_selector.image_size,
                video_cache,
                visible_gpu(device),
            ),
        )
        self.ready_futures = []
        # A spawning pool starts a process per task submitted while none is idle: one task each starts them all. Each
        # start holds the submitting thread until the new process has imported torch and the package and taken its
        # copy of the processor (seconds each), so a thread of its own starts them while the caller goes on.
        self.starter = threading.Thread(target=self._start_workers, name="decoding-workers-start", daemon=True)
        self.starter.start()

    def _start_workers(self):
        self.ready_futures = [self.executor.submit(worker_ready_time) for _ in range(self.num_workers)]

    def ready_seconds(self) -> float:
        """Seconds from this object's making until the first worker was ready to decode (waits for it): the spawn, the
        imports and the copy of the video processor, in a worker of its own."""
        self.starter.join()
        return min(future.result() for future in self.ready_futures) - self.start_time

    def map(self, videos: Iterable) -> Iterator[tuple[LoadedVideo, float]]:
        """Each video loaded (see `load_video_in_worker`), in order, with at most `num_workers` videos in the workers at
        once."""
        self.starter.join()
        videos = iter(videos)
        submit = functools.partial(self.executor.submit, load_video_in_worker)
        pending = deque(map(submit, islice(videos, self.num_workers)))
        try:
            while pending:
                loaded = pending.popleft().result()
                pending.extend(map(submit, islice(videos, 1)))
                yield loaded
        finally:
            # a caller that stops early (an error, a `break`) leaves no video queued behind it
            for future in pending:
                future.cancel()

    def close(self):
        """Stops the workers once they finish the videos they hold."""
        self.starter.join()
        self.executor.shutdown(cancel_futures=True)

    def __enter__(self) -> "DecodingWorkers":
        return self

    def __exit__(self, *exc_info):
        self.close()


def visible_gpu(device: str | torch.device | None) -> str | None:
    """How `CUDA_VISIBLE_DEVICES` names the GPU `device` is in this process, or None for no GPU."""
    if device is None or torch.device(device).type != "cuda":
        return None
    index = torch.device(device).index or 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return str(index) if visible is None else visible.split(",")[index].strip()


def video_key(video) -> Hashable:
    """What identifies a video among the questions: its path, or the object itself for frames or a loaded video (the
    answerer's frame settings are the same for all)."""
    if isinstance(video, (str, os.PathLike)):
        return os.path.abspath(os.fspath(video))
    return id(video)


def group_by_video(questions: list[VideoQuestion]) -> list[list[int]]:
    """The indices of `questions`, grouped by video in the order each video first appears."""
    groups: dict[Hashable, list[int]] = {}
    for index, question in enumerate(questions):
        groups.setdefault(video_key(question.video), []).append(index)
    return list(groups.values())


def process_device(device: str | torch.device) -> torch.device:
    """`"auto"`: this process's GPU under `accelerate launch` or `torchrun` (`LOCAL_RANK`), else the CPU."""
    if device != "auto":
        return torch.device(device)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


class VideoQuestionAnswerer(ViLaMPRunner):
    """
    A [`ViLaMPRunner`] that answers questions grouped by video, each video loaded once for all of its questions (in
    worker processes ahead of the model), and which scores answer continuations.

    Memory: the decoding workers hold at most `num_workers` loaded videos (uint8 frames, 0.6 MiB per frame at 384 and
    224 pixels), and this process at most `batch_size + 1` encoded videos at once, those of the batch being answered
    and the next (with `keep_features`, their projected patches: 5.0 MiB per frame for the released 7B in bfloat16).

    Args:
        model ([`ViLaMPForConditionalGeneration`]): the model on its device, in eval mode.
        processor ([`ViLaMPProcessor`]): its processor; the only road from a video to the model's inputs.
        decoding_workers ([`DecodingWorkers`], *optional*): worker processes that load the next videos ahead of the
            model; without them videos load in this process, between the model's calls. `close` stops them.
        cache_implementation (`str`, *optional*, defaults to `"dynamic"`): `generate`'s key/value cache; `"static"`
            compiles the decoding step on a GPU.
        keep_features (`str`, *optional*, defaults to `"auto"`): where each video's projected patches are kept for its
            questions, as [`ViLaMPRunner.load_video`] takes it.
        video_cache ([`VideoCache`], *optional*): video files are read through it when this process loads them (the
            decoding workers read through their own, the same one from `from_pretrained`).
        startup_seconds (`dict[str, float]`, *optional*): the start-up's costs so far (`from_pretrained` fills
            `processor_loading` and `model_loading`); the first video adds its own (see `first_video_seconds`).
    """

    def __init__(
        self,
        model,
        processor,
        decoding_workers: DecodingWorkers | None = None,
        cache_implementation: str = "dynamic",
        keep_features: str = "auto",
        video_cache: VideoCache | None = None,
        startup_seconds: dict[str, float] | None = None,
    ):
        if keep_features not in KEEP_FEATURES:
            raise ValueError(f"`keep_features` must be one of {list(KEEP_FEATURES)}, got {keep_features!r}.")
        super().__init__(model, processor, cache_implementation=cache_implementation, video_cache=video_cache)
        self.decoding_workers = decoding_workers
        self.keep_features = keep_features
        self.startup_seconds = dict(startup_seconds or {})
        # the one-time costs of the first video loaded: decoding, CLIP, SigLIP (see `EncodedVideo.seconds`)
        self.first_video_seconds: dict[str, float] | None = None

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
        keep_features: str = "auto",
        video_cache: VideoCache | None = None,
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
            decode_workers (`int`, *optional*, defaults to 2): worker processes that load the next videos while the
                model answers (they decode on the CPU); 0 loads them in this process, between the model's calls.
            cache_implementation (`str`, *optional*, defaults to `"dynamic"`): see the class.
            keep_features (`str`, *optional*, defaults to `"auto"`): see the class.
            video_cache ([`VideoCache`], *optional*): the decoding workers and this process read video files through
                it, so that a re-run of an evaluation, or another process, does not decode them again.
        """
        device = process_device(device)
        # checked before anything loads or starts
        dtype = resolve_dtype(dtype, device)
        if not isinstance(decode_workers, int) or isinstance(decode_workers, bool) or decode_workers < 0:
            raise ValueError(f"`decode_workers` must be an integer of at least 0, got {decode_workers!r}.")
        if keep_features not in KEEP_FEATURES:
            raise ValueError(f"`keep_features` must be one of {list(KEEP_FEATURES)}, got {keep_features!r}.")
        start = time.perf_counter()
        # the keyframe selector is loaded on the host: the decoding workers each get a copy, and it moves to `device`
        # with the first video this process embeds
        processor = load_processor(pretrained_model_name_or_path, device="cpu", max_frames=max_frames)
        startup_seconds = {"processor_loading": time.perf_counter() - start}
        decoding_workers = (
            DecodingWorkers(processor, decode_workers, video_cache, device=device) if decode_workers else None
        )
        try:
            start = time.perf_counter()
            model = load_model(
                pretrained_model_name_or_path, device=device, dtype=dtype, attn_implementation=attn_implementation
            )
            startup_seconds["model_loading"] = time.perf_counter() - start
            return cls(
                model, processor, decoding_workers, cache_implementation, keep_features, video_cache, startup_seconds
            )
        except BaseException:
            if decoding_workers is not None:
                decoding_workers.close()
            raise

    def load_videos(self, videos: Iterable) -> Iterator[EncodedVideo]:
        """
        Each of `videos` (paths or frames, as the processor takes them) loaded once, in order, as
        [`ViLaMPRunner.load_video`] loads it with this answerer's `keep_features`. With decoding workers, they decode
        the next videos while the caller works with the current one. An [`EncodedVideo`] is taken as it is, and a
        [`LoadedVideo`] is only encoded.
        """
        videos = list(videos)
        to_decode = [video for video in videos if not isinstance(video, (EncodedVideo, LoadedVideo))]
        if self.decoding_workers is None:
            decoded = (self.load_video(video, keep_features=self.keep_features) for video in to_decode)
        else:
            decoded = (
                self._encode_loaded(loaded, decoding_seconds)
                for loaded, decoding_seconds in self.decoding_workers.map(to_decode)
            )
        for video in videos:
            if isinstance(video, EncodedVideo):
                encoded = video
            elif isinstance(video, LoadedVideo):
                encoded = self._encode_loaded(video, 0.0)
            else:
                encoded = next(decoded)
            if self.first_video_seconds is None:
                self.first_video_seconds = dict(encoded.seconds)
            yield encoded

    def _encode_loaded(self, loaded: LoadedVideo, decoding_seconds: float) -> EncodedVideo:
        """A video a worker loaded, encoded here, with the seconds of both."""
        encoded = self.encode_video(loaded, keep_features=self.keep_features)
        encoded.seconds = {"decoding": decoding_seconds, **encoded.seconds}
        return encoded

    def prepare_by_video(
        self, questions: list[VideoQuestion], batch_size: int = 1, batch_keys: list[Hashable] | None = None
    ) -> Iterator[tuple[list[int], BatchFeature]]:
        """
        The model inputs of `questions`, grouped by video: each distinct video (by path; the frame settings are this
        answerer's for all) is loaded once (`load_videos`) for all of its questions. Videos come in the order each first
        appears in `questions`, each video's questions in their order (those of one batch key together), and batches
        take up to `batch_size` consecutive questions of that order, so a batch may span videos (one question per
        video, as EgoSchema asks, still fills it). A video is released once its last batch is yielded: at most
        `batch_size + 1` videos are encoded at once.

        Args:
            questions (`list[VideoQuestion]`): the questions; their `video` is a path, frames, a [`LoadedVideo`] or an
                [`EncodedVideo`].
            batch_size (`int`, *optional*, defaults to 1): questions per batch.
            batch_keys (`list`, *optional*): one key per question; a batch holds questions of one key only (questions
                of different `max_new_tokens`, say).

        Returns:
            An iterator of `(indices, inputs)`: the batch's indices into `questions`, and its model inputs (with the
            video's projected patches as `video_frame_features` when they were kept).
        """
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an integer of at least 1, got {batch_size!r}.")
        if batch_keys is not None and len(batch_keys) != len(questions):
            raise ValueError(
                f"`batch_keys` must hold one key per question: got {len(batch_keys)} keys for {len(questions)} questions."
            )
        keys = [None] * len(questions) if batch_keys is None else batch_keys
        groups = group_by_video(questions)
        videos = (questions[indices[0]].video for indices in groups)
        batch = []
        for indices, encoded in zip(groups, self.load_videos(videos)):
            for key in dict.fromkeys(keys[index] for index in indices):
                for index in indices:
                    if keys[index] != key:
                        continue
                    if batch and (len(batch) == batch_size or keys[batch[0][0]] != key):
                        yield self._prepare_batch(batch)
                        batch = []
                    batch.append((index, dataclasses.replace(questions[index], video=encoded)))
        if batch:
            yield self._prepare_batch(batch)

    def _prepare_batch(self, batch: list[tuple[int, VideoQuestion]]) -> tuple[list[int], BatchFeature]:
        """The indices and model inputs of a batch of `(index, question)` pairs."""
        (inputs,) = self.prepare([[question for _, question in batch]])
        return [index for index, _ in batch], inputs

    def answer(self, questions: list[VideoQuestion], max_new_tokens: int, batch_size: int = 1) -> list[str]:
        """Greedy answers to `questions`, in order, each video loaded once for all of its questions and `batch_size`
        questions per `generate` call (see `prepare_by_video`)."""
        answers = [None] * len(questions)
        for batch, inputs in self.prepare_by_video(questions, batch_size):
            for index, answer in zip(batch, self.generate(inputs, max_new_tokens)):
                answers[index] = answer
        return answers

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


__all__ = ["DecodingWorkers", "VideoQuestionAnswerer", "group_by_video", "process_device", "video_key", "visible_gpu"]
