"""The stages of answering questions about a video, with progress bars and timings.

`ask` and `chat` load a video once through the package's runner (`vilamp.runner.ViLaMPRunner.load_video`: decoding, the
CLIP embeddings of its frames, its projected patches), with a progress bar for each stage, then answer each question
through the runner: its keyframe selection and inputs (`ViLaMPRunner.prepare` or `prepare_chat`), then `generate` with
a streamer and timing hooks around it. `keyframes` calls the processor's three public stages (`load_video`,
`select_keyframes` and `build_inputs`) one by one, to keep what the keyframe picture needs (the processor's
`KeyframeSelection`: every frame's relevance to the question, which keyframes the ranking chose).
"""

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from transformers import TextStreamer
from transformers.feature_extraction_utils import BatchFeature

from vilamp.processing import KeyframeSelection, LoadedVideo
from vilamp.processing.video_decoding import check_video_file, unreadable_video_error
from vilamp.runner import EncodedVideo, VideoQuestion, ViLaMPRunner


def progress_bar(total: int | None, description: str, enabled: bool = True):
    """A tqdm progress bar on stderr, in frames; a silent stand-in when `enabled` is False or tqdm is missing. Both are
    context managers, and their `update` is a processor stage's progress callback."""
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            enabled = False
    if not enabled:
        return _SilentBar()
    return tqdm(total=total, desc=description, unit="frame", leave=False, dynamic_ncols=True)


class _SilentBar:
    """The subset of tqdm's interface used here, doing nothing."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def update(self, count: int = 1):
        pass

    def close(self):
        pass


class StageProgress:
    """Progress bars of consecutive stages on stderr, one at a time: a stage's bar opens at its first update and
    closes the bar of the stage before it. Its callbacks may be called from several threads (decoding's workers)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.description: str | None = None
        self.bar = None
        self.lock = threading.Lock()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def stage(self, description: str, total: int | None) -> Callable[[int], None]:
        """The progress callback of the stage `description`, of `total` frames."""

        def update(count: int = 1):
            with self.lock:
                if self.description != description:
                    self._close()
                    self.description, self.bar = description, progress_bar(total, description, self.enabled)
                self.bar.update(count)

        return update

    def close(self):
        with self.lock:
            self._close()

    def _close(self):
        if self.bar is not None:
            self.bar.close()
        self.description, self.bar = None, None


def probe_video(path) -> int | None:
    """
    Opens a video file and decodes its first frame, so an empty, unreadable or non-video file fails before the model
    loads, with the message `decode_video` would give.

    Returns:
        `int` or `None`: the number of frames the header states (None when it states none).
    """
    import av

    path = os.fspath(path)
    check_video_file(path)
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError(f"`{path}` has no video stream; pass a video file.")
            stream = container.streams.video[0]
            if next(container.decode(stream), None) is None:
                raise ValueError(f"`{path}` has no decodable frames; pass a video with at least one frame.")
            return stream.frames or None
    except av.error.FFmpegError as error:
        raise unreadable_video_error(path, error) from error


def num_sampled_frames(path, processor) -> int | None:
    """How many frames the processor will sample from the video file, from its header (None when unknown)."""
    import av

    from vilamp.processing import sample_frame_indices

    with av.open(os.fspath(path)) as container:
        stream = container.streams.video[0]
        average_fps = float(stream.average_rate or stream.guessed_rate or 0)
        if not stream.frames or average_fps <= 0:
            return None
        indices = sample_frame_indices(
            stream.frames,
            average_fps,
            fps=processor.video_processor.fps,
            max_frames=processor.video_processor.max_frames,
        )
        return len(indices)


@dataclass
class PreparedVideo:
    """
    One video and question through the processor's stages, ready for the model, with what the stages decided.

    Args:
        inputs (`BatchFeature`): the model inputs, as `processor(text=question, videos=video)` returns them.
        timestamps_seconds (`list[float]`): the time of each sampled frame.
        keyframes (`KeyframeSelection`): the processor's keyframe selection: `keyframe_mask`, `ranked_keyframe_mask`,
            `relevance_scores` (each of shape `(num_frames,)`) and `query_embeds`.
        frame_aspect_ratio (`float`): width / height of the original frames (for thumbnails).
        timings_seconds (`dict[str, float]`): time per stage (`decoding`, `keyframe_selection`).
    """

    inputs: BatchFeature
    timestamps_seconds: list[float]
    keyframes: KeyframeSelection
    frame_aspect_ratio: float
    timings_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def keyframe_timestamps_seconds(self) -> list[float]:
        """The time of each keyframe, in temporal order."""
        return [self.timestamps_seconds[index] for index in self.keyframes.keyframe_mask.nonzero().flatten().tolist()]


def prepare_video(processor, video, question: str, *, show_progress: bool = True) -> PreparedVideo:
    """
    Runs the processor's stages on a video file and a bare question, a progress bar and a timing for each of
    `load_video` (`decoding`) and `select_keyframes` (`keyframe_selection`), then `build_inputs`.
    """
    if not question.strip():
        raise ValueError("The question is empty; the keyframe selection ranks frames against it. Pass a question.")
    start = time.perf_counter()
    with progress_bar(num_sampled_frames(video, processor), "decoding", show_progress) as bar:
        loaded_video = processor.load_video(video, progress=bar.update)
    decoded_at = time.perf_counter()
    with progress_bar(len(loaded_video.clip_frames), "keyframe selection", show_progress) as bar:
        keyframes = processor.select_keyframes(loaded_video.clip_frames, question, progress=bar.update)
    selected_at = time.perf_counter()
    prompt = processor.question_prompt(question)
    metadata = loaded_video.metadata
    return PreparedVideo(
        inputs=processor.build_inputs(prompt, [loaded_video.siglip_frames], [keyframes]),
        timestamps_seconds=list(loaded_video.timestamps_seconds),
        keyframes=keyframes,
        frame_aspect_ratio=(metadata.width or 1) / (metadata.height or 1),
        timings_seconds={"decoding": decoded_at - start, "keyframe_selection": selected_at - decoded_at},
    )


def load_video(
    runner: ViLaMPRunner, video, *, keep_features: str = "auto", show_progress: bool = True
) -> EncodedVideo:
    """
    Loads a video file once for all its questions with `runner.load_video`, a progress bar for each of its stages:
    decoding, the keyframe selection's CLIP embedding of every frame, and the encoding of every frame (SigLIP and the
    projector) when `keep_features` keeps the projected patches. The one-time costs are in the result's `seconds`.
    """
    num_frames = num_sampled_frames(video, runner.processor)
    with StageProgress(show_progress) as bars:
        with counting_encoded_frames(runner.model, bars.stage("encoding", num_frames)):
            return runner.load_video(
                video,
                keep_features=keep_features,
                progress=bars.stage("decoding", num_frames),
                embedding_progress=bars.stage("keyframe selection", num_frames),
            )


def chat_conversation(video: LoadedVideo, exchanges: list[tuple[str, str]], question: str) -> list[dict]:
    """The chat as the chat template takes it: the video in the first user turn (the template has it there), each
    earlier `(question, answer)` as a user and an assistant turn, then `question`."""
    conversation = []
    for question_text, answer in [*exchanges, (question, None)]:
        content = [{"type": "text", "text": question_text}]
        if not conversation:
            content.insert(0, {"type": "video", "video": video})
        conversation.append({"role": "user", "content": content})
        if answer is not None:
            conversation.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return conversation


def chat_inputs(
    runner: ViLaMPRunner,
    video: EncodedVideo,
    exchanges: list[tuple[str, str]],
    question: str,
    max_new_tokens: int,
) -> tuple[BatchFeature, int]:
    """
    The model inputs of the next answer in a chat (`ViLaMPRunner.prepare_chat`), without the oldest exchanges while
    the prompt and `max_new_tokens` would exceed the language model's `max_position_embeddings`; the video moves to the
    first exchange kept. When even `question` alone is too long, its inputs are returned as they are.

    Returns:
        `tuple[BatchFeature, int]`: the inputs and how many of the oldest `exchanges` they leave out.
    """
    max_positions = runner.model.config.text_config.max_position_embeddings
    for num_dropped in range(len(exchanges) + 1):
        conversation = chat_conversation(video.video, exchanges[num_dropped:], question)
        inputs = runner.prepare_chat(video, conversation, question)
        if inputs["input_ids"].shape[1] + max_new_tokens <= max_positions:
            break
    return inputs, num_dropped


@dataclass
class Answer:
    """
    One question answered about a loaded video.

    Args:
        question (`str`): the question.
        text (`str`): the answer, special tokens left out.
        keyframe_timestamps_seconds (`list[float]`): the time of each of its keyframes, in temporal order.
        num_video_tokens (`int`): the placeholders the video took in its prompt.
        num_tokens (`int`): the tokens generated.
        timings_seconds (`dict[str, float]`): `keyframe_selection` (its CLIP text embedding, the ranking and the
            tokenization), the `generate_answer` stages, `time_to_first_token` (from the question to its first token)
            and `total`.
        num_dropped_exchanges (`int`): in a chat, how many of the oldest exchanges its prompt left out (`chat_inputs`).
    """

    question: str
    text: str
    keyframe_timestamps_seconds: list[float]
    num_video_tokens: int
    num_tokens: int
    timings_seconds: dict[str, float]
    num_dropped_exchanges: int = 0


def answer_question(
    runner: ViLaMPRunner,
    video: EncodedVideo,
    question: str,
    *,
    max_new_tokens: int,
    exchanges: list[tuple[str, str]] | None = None,
    write=None,
    show_progress: bool = True,
) -> Answer:
    """
    Answers one question about a loaded video with the runner, timing each stage: its keyframe selection and inputs
    (`ViLaMPRunner.prepare` of the question alone or, in a chat, `chat_inputs` after the `(question, answer)`
    `exchanges` so far), then `generate_answer`.
    """
    start = time.perf_counter()
    num_dropped = 0
    if exchanges is None:
        model_inputs = next(runner.prepare([[VideoQuestion(video, question, question)]]))
    else:
        model_inputs, num_dropped = chat_inputs(runner, video, exchanges, question, max_new_tokens)
    prepared_at = time.perf_counter()
    generated = generate_answer(
        runner, model_inputs, max_new_tokens=max_new_tokens, write=write, show_progress=show_progress
    )
    end = time.perf_counter()
    stages = generated.timings_seconds
    keyframe_indices = model_inputs["keyframe_mask"].nonzero().flatten().tolist()
    return Answer(
        question=question,
        text=generated.text,
        keyframe_timestamps_seconds=[video.video.timestamps_seconds[index] for index in keyframe_indices],
        num_video_tokens=int((model_inputs["input_ids"] == runner.model.config.video_token_id).sum()),
        num_tokens=generated.num_tokens,
        timings_seconds={
            "keyframe_selection": prepared_at - start,
            **stages,
            "time_to_first_token": prepared_at - start + stages["encoding"] + stages["prefill"],
            "total": end - start,
        },
        num_dropped_exchanges=num_dropped,
    )


class AnswerStreamer(TextStreamer):
    """A `TextStreamer` that writes the answer to `write` (nothing when None), counts the tokens and notes when the
    first two came (the second ends the first decoding step, where `generate` compiles the step with a static cache)."""

    def __init__(self, tokenizer, write: Callable[[str], None] | None):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.write = write
        self.token_times: list[float] = []
        self.num_tokens = 0
        self._seen_prompt = False

    @property
    def first_token_time(self) -> float | None:
        return self.token_times[0] if self.token_times else None

    @property
    def second_token_time(self) -> float | None:
        return self.token_times[1] if len(self.token_times) > 1 else None

    def put(self, value):
        if self._seen_prompt:
            self.num_tokens += value.numel()
            if len(self.token_times) < 2:
                self.token_times.append(time.perf_counter())
        self._seen_prompt = True
        super().put(value)

    def on_finalized_text(self, text: str, stream_end: bool = False):
        if self.write is not None:
            self.write(text + ("\n" if stream_end else ""))


@contextmanager
def counting_encoded_frames(model, update: Callable[[int], None]) -> Iterator[None]:
    """Calls `update` with the number of frames of each chunk the model encodes (a forward hook on the projector, which
    every chunk of frames passes)."""
    handle = model.model.multi_modal_projector.register_forward_hook(
        lambda module, inputs, output: update(output.shape[0])
    )
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def encoding_progress(model, num_frames: int, show_progress: bool = True) -> Iterator[dict[str, float]]:
    """
    Counts the frames the model encodes on a progress bar (none when it reads the video's kept projected patches), and
    notes when the language model first runs, i.e. when the video is encoded.

    Yields:
        `dict[str, float]` that receives `encoded_at` (a `time.perf_counter()` value) once the video is encoded.
    """
    marks: dict[str, float] = {}
    with StageProgress(show_progress) as bars, counting_encoded_frames(model, bars.stage("encoding", num_frames)):

        def mark_encoded(module, args, kwargs):
            marks.setdefault("encoded_at", time.perf_counter())
            bars.close()

        handle = model.model.language_model.register_forward_pre_hook(mark_encoded, with_kwargs=True)
        try:
            yield marks
        finally:
            handle.remove()


@dataclass
class GeneratedAnswer:
    """
    What `generate_answer` gives.

    Args:
        text (`str`): the answer, special tokens left out.
        num_tokens (`int`): the tokens generated.
        timings_seconds (`dict[str, float]`): `encoding` (keyframe pooling and the DFM, and SigLIP with the projector
            when the video's projected patches were not kept), `prefill` (to the first token), `decode_warm_up` (the
            first decoding step, which holds the static cache's compilation) and `generation` (the other decoding steps).
    """

    text: str
    num_tokens: int
    timings_seconds: dict[str, float]


def generate_answer(
    runner: ViLaMPRunner,
    inputs: BatchFeature,
    *,
    max_new_tokens: int,
    write=None,
    show_progress: bool = True,
) -> GeneratedAnswer:
    """
    Generates the answer to one processed question greedily with the runner (its `cache_implementation` "static"
    compiles the decoding step on a GPU), streaming its text to `write` as it comes, and times its stages.
    """
    streamer = AnswerStreamer(runner.processor.tokenizer, write)
    start = time.perf_counter()
    num_frames = len(inputs["keyframe_mask"])
    with encoding_progress(runner.model, num_frames, show_progress) as marks:
        (answer,) = runner.generate(inputs, max_new_tokens, streamer=streamer)
    end = time.perf_counter()
    encoded_at = marks.get("encoded_at", start)
    first_token_at = streamer.first_token_time or end
    second_token_at = streamer.second_token_time or first_token_at
    timings = {
        "encoding": encoded_at - start,
        "prefill": first_token_at - encoded_at,
        "decode_warm_up": second_token_at - first_token_at,
        "generation": end - second_token_at,
    }
    return GeneratedAnswer(text=answer, num_tokens=streamer.num_tokens, timings_seconds=timings)


__all__ = [
    "Answer",
    "AnswerStreamer",
    "GeneratedAnswer",
    "PreparedVideo",
    "StageProgress",
    "answer_question",
    "chat_conversation",
    "chat_inputs",
    "counting_encoded_frames",
    "encoding_progress",
    "generate_answer",
    "load_video",
    "num_sampled_frames",
    "prepare_video",
    "probe_video",
    "progress_bar",
]
