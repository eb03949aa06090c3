"""The stages of answering a question about a video, with progress bars and timings.

`ViLaMPProcessor.__call__` is three public stages: `load_video`, `select_keyframes` and `build_inputs`. The command
line calls them one by one, so it can show a progress bar for each, time each, and keep what the keyframe picture needs
(the processor's `KeyframeSelection`: every frame's relevance to the question, which keyframes the ranking chose).
The model runs through the package's runner (`vilamp.runner.ViLaMPRunner`), with a streamer and timing hooks around it.
"""

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from transformers import TextStreamer
from transformers.feature_extraction_utils import BatchFeature

from vilamp.processing import KeyframeSelection
from vilamp.processing.video_decoding import check_video_file, unreadable_video_error
from vilamp.runner import ViLaMPRunner


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


class AnswerStreamer(TextStreamer):
    """A `TextStreamer` that writes the answer to `write` (nothing when None) and notes when the first two tokens came
    (the second ends the first decoding step, where `generate` compiles the step with a static cache)."""

    def __init__(self, tokenizer, write: Callable[[str], None] | None):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.write = write
        self.token_times: list[float] = []
        self._seen_prompt = False

    @property
    def first_token_time(self) -> float | None:
        return self.token_times[0] if self.token_times else None

    @property
    def second_token_time(self) -> float | None:
        return self.token_times[1] if len(self.token_times) > 1 else None

    def put(self, value):
        if self._seen_prompt and len(self.token_times) < 2:
            self.token_times.append(time.perf_counter())
        self._seen_prompt = True
        super().put(value)

    def on_finalized_text(self, text: str, stream_end: bool = False):
        if self.write is not None:
            self.write(text + ("\n" if stream_end else ""))


@contextmanager
def encoding_progress(model, num_frames: int, show_progress: bool = True) -> Iterator[dict[str, float]]:
    """
    Counts the frames the model encodes (a forward hook on the projector, which every chunk of frames passes) on a
    progress bar, and notes when the language model first runs, i.e. when the video is encoded.

    Yields:
        `dict[str, float]` that receives `encoded_at` (a `time.perf_counter()` value) once the video is encoded.
    """
    bar = progress_bar(num_frames, "encoding", show_progress)
    marks: dict[str, float] = {}

    def count_frames(module, inputs, output):
        bar.update(output.shape[0])

    def mark_encoded(module, args, kwargs):
        marks.setdefault("encoded_at", time.perf_counter())
        bar.close()

    handles = [
        model.model.multi_modal_projector.register_forward_hook(count_frames),
        model.model.language_model.register_forward_pre_hook(mark_encoded, with_kwargs=True),
    ]
    try:
        yield marks
    finally:
        for handle in handles:
            handle.remove()
        bar.close()


def generate_answer(
    runner: ViLaMPRunner,
    prepared: PreparedVideo,
    *,
    max_new_tokens: int,
    write=None,
    show_progress: bool = True,
) -> str:
    """
    Generates the answer greedily with the runner (its `cache_implementation` "static" compiles the decoding step on a
    GPU), streaming its text to `write` as it comes, and adds the `encoding` (SigLIP, projector, pooling, DFM),
    `prefill` (to the first token), `decode_warm_up` (the first decoding step, which holds the static cache's
    compilation) and `generation` (the other decoding steps) timings to `prepared.timings_seconds`.
    """
    streamer = AnswerStreamer(runner.processor.tokenizer, write)
    start = time.perf_counter()
    num_frames = len(prepared.keyframes.keyframe_mask)
    with encoding_progress(runner.model, num_frames, show_progress) as marks:
        (answer,) = runner.generate(prepared.inputs, max_new_tokens, streamer=streamer)
    end = time.perf_counter()
    encoded_at = marks.get("encoded_at", start)
    first_token_at = streamer.first_token_time or end
    second_token_at = streamer.second_token_time or first_token_at
    prepared.timings_seconds.update(
        encoding=encoded_at - start,
        prefill=first_token_at - encoded_at,
        decode_warm_up=second_token_at - first_token_at,
        generation=end - second_token_at,
    )
    return answer


__all__ = [
    "AnswerStreamer",
    "PreparedVideo",
    "encoding_progress",
    "generate_answer",
    "num_sampled_frames",
    "prepare_video",
    "probe_video",
    "progress_bar",
]
