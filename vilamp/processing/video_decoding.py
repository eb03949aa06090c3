"""Streaming video decoding with PyAV, on the GPU's decoders too (nvdec_decoding.py), and the frame sampling of the
original evaluation.

PyAV was chosen over torchcodec by measurement (bench/keyframe_selection_speed.py and the issue note): torchcodec
decoded a 2-minute 640x360 video at 1 fps somewhat faster, but it only loads next to system FFmpeg shared libraries,
while the PyAV wheels bundle FFmpeg and install with pip alone.
"""

import logging
import os
import queue
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from transformers.video_utils import VideoMetadata

from .nvdec_decoding import (
    MAX_NVDEC_SESSIONS,
    NVDEC_INSTALL_HINT,
    NvdecSpanDecoder,
    NvdecUnavailable,
    NvdecVideo,
    open_nvdec_video,
)

logger = logging.getLogger(__name__)
DECODE_DEVICES = ("auto", "cpu", "cuda")


class VideoDecodingWarning(UserWarning):
    """A video file decoded only in part: fewer frames came back than its header promises."""


@dataclass
class DecodedVideo:
    """
    The sampled frames of a video.

    Args:
        frames (`list`): one entry per sampled frame, in temporal order: the RGB `PIL.Image.Image`, or what
            `frame_transform` returned for it.
        timestamps_seconds (`list[float]`): the presentation time of each sampled frame.
        metadata (`VideoMetadata`): `total_num_frames`, `fps` (average), `width`, `height`, `duration` (seconds),
            `video_backend` (the decoders that ran: `"pyav"`, `"pyav+nvdec"` or `"nvdec"`) and `frames_indices` (the
            decoded frame numbers that were kept).
    """

    frames: list[Any]
    timestamps_seconds: list[float]
    metadata: VideoMetadata


def sample_frame_indices(total_num_frames: int, average_fps: float, *, fps: float, max_frames: int) -> np.ndarray:
    """
    Frame numbers kept by the original evaluation: every `int(average_fps / fps)`-th frame (one per second at
    `fps=1`, e.g. every 29th frame of a 29.97 fps video), then `np.linspace(..., dtype=int)` down to `max_frames`.

    Args:
        total_num_frames (`int`): frames in the video.
        average_fps (`float`): the video's frame rate.
        fps (`float`): frames sampled per second of video.
        max_frames (`int`): at most this many frames are kept.

    Returns:
        `np.ndarray` of shape `(num_frames,)`, strictly increasing frame numbers.
    """
    if fps <= 0 or max_frames < 1:
        raise ValueError(
            f"`fps` must be positive and `max_frames` at least 1, got fps={fps} and max_frames={max_frames}."
        )
    stride = max(int(average_fps / fps), 1)
    frame_indices = np.arange(0, total_num_frames, stride)
    if len(frame_indices) > max_frames:
        frame_indices = frame_indices[np.linspace(0, len(frame_indices) - 1, max_frames, dtype=int)]
    return frame_indices


# what a video file is usually called, for errors that name a file as something else
VIDEO_SUFFIXES = frozenset(".mp4 .mkv .webm .mov .avi .m4v .mpg .mpeg .ts .mts .flv .wmv .3gp".split())
VIDEO_FILE_HINT = "pass a video file (mp4, mkv, webm, mov, avi, ...)"


def check_video_file(path: str):
    """Refuses, naming what it is, a path no video can be read from: nothing there, a directory, an empty file."""
    if os.path.isdir(path):
        raise ValueError(f"`{path}` is a directory, not a video file; pass the path of a video file.")
    if not os.path.isfile(path):
        raise ValueError(f"No video file at `{path}`; pass the path of an existing video file.")
    if os.path.getsize(path) == 0:
        raise ValueError(
            f"`{path}` is empty (0 bytes), not a video (an interrupted copy or download?); {VIDEO_FILE_HINT}."
        )


def _is_text(head: bytes) -> bool:
    """Whether the first bytes of a file read as UTF-8 text (the last character may be cut)."""
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start >= len(head) - 3
    return True


def unreadable_video_error(path: str, error: Exception) -> ValueError:
    """The error for a file FFmpeg cannot read: what the file is, and FFmpeg's reason without its error number."""
    reason = getattr(error, "strerror", None) or str(error)
    reason = reason[:1].lower() + reason[1:]
    with open(path, "rb") as file:
        head = file.read(4096)
    suffix = os.path.splitext(path)[1].lower()
    if _is_text(head):
        what = "it is a text file, not a video"
    elif suffix not in VIDEO_SUFFIXES:
        what = f"it is a {suffix or 'suffix-less'} file that FFmpeg does not read as a video ({reason})"
    else:
        what = f"FFmpeg reads no video from it ({reason}): it is damaged or not a video"
    return ValueError(f"`{path}` could not be decoded: {what}; {VIDEO_FILE_HINT}.")


def _import_av():
    """Imports PyAV, naming the package to install when it is missing."""
    try:
        import av
    except ImportError as error:
        raise ImportError("Decoding video files needs PyAV: install it with `pip install av`.") from error
    return av


def _count_video_frames(path: str) -> int:
    """Counts the video packets of a container whose header gives no frame count (no decoding)."""
    av = _import_av()
    with av.open(path) as container:
        return sum(packet.size > 0 for packet in container.demux(container.streams.video[0]))


def _decodable_frames(container, stream) -> Iterator[Any]:
    """
    Yields the frames of `stream` that decode, in order. A packet the decoder rejects is skipped, and reading stops
    where the file can no longer be read (a truncated file), as OpenCV's `grab()` loop of the original does.
    """
    av = _import_av()
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError:
            return
        try:
            decoded = packet.decode()
        except av.error.FFmpegError:
            continue
        yield from decoded


@dataclass
class _FrameTimestamps:
    """The presentation timestamps of a video stream's frames, read from its packets without decoding."""

    frames: np.ndarray  # (num_frames,) int64, increasing: frame number i is the one shown at `frames[i]`
    keyframes: np.ndarray  # (num_keyframes,) int64, increasing


def _read_frame_timestamps(path: str) -> _FrameTimestamps | None:
    """Reads every video packet's timestamp; None when a packet has none or two share one (frames can then be
    numbered only by decoding them in order)."""
    av = _import_av()
    frames, keyframes = [], []
    try:
        with av.open(path) as container:
            for packet in container.demux(container.streams.video[0]):
                if packet.size == 0:
                    continue
                if packet.pts is None:
                    return None
                frames.append(packet.pts)
                if packet.is_keyframe:
                    keyframes.append(packet.pts)
    except av.error.FFmpegError:
        return None
    frames = np.sort(np.asarray(frames, dtype=np.int64))
    if len(frames) == 0 or np.any(np.diff(frames) == 0):
        return None
    return _FrameTimestamps(frames=frames, keyframes=np.sort(np.asarray(keyframes, dtype=np.int64)))


class _FrameConverter:
    """
    Converts kept frames to RGB images and applies `frame_transform` on a pool of threads, off the decoding threads
    (PyAV's conversion and PIL's resizing release the GIL). At most `max_pending` frames wait, which bounds memory.

    Nothing a future holds points back to the converter (a done-callback on `self` would): so the converter, its
    futures and every frame they hold are freed as soon as `decode_video` returns, not at the cyclic collector's next
    full pass, which let one call's frames pile up behind the next ones.
    """

    def __init__(self, frame_transform: Callable[[Any], Any] | None, num_workers: int, max_pending: int):
        self.frame_transform = frame_transform
        self.executor = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="vilamp-frames")
        self.slots = threading.BoundedSemaphore(max_pending)
        self.results: dict[int, Future] = {}
        self.timestamps_seconds: dict[int, float] = {}

    def submit(self, frame_index: int, frame, timestamp_seconds: float):
        self.slots.acquire()
        self.results[frame_index] = self.executor.submit(self.convert, frame)
        self.timestamps_seconds[frame_index] = timestamp_seconds

    def convert(self, frame):
        try:
            # a PyAV frame, or an NVDEC picture (`Nv12Frame`) whose RGB is the same as PyAV's
            image = frame.to_image()
            return self.frame_transform(image) if self.frame_transform is not None else image
        finally:
            self.slots.release()

    def close(self):
        self.executor.shutdown(wait=True, cancel_futures=True)


def _frame_time(frame, frame_index: int, average_fps: float) -> float:
    """A frame's presentation time in seconds; counted from the frame rate when the file gives none."""
    return float(frame.time) if frame.time is not None else frame_index / average_fps


def _decode_in_order(path: str, frame_indices: list[int], average_fps: float, converter: _FrameConverter) -> int:
    """
    Decodes `path` from its start up to its last wanted frame, handing the frames numbered `frame_indices` (numbers
    count the frames that decode) to `converter`; returns how many frames decoded.
    """
    wanted = set(frame_indices)
    last_index = max(frame_indices, default=-1)
    num_decoded = 0
    with _import_av().open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame_index, frame in enumerate(_decodable_frames(container, stream)):
            num_decoded = frame_index + 1
            if frame_index in wanted:
                converter.submit(frame_index, frame, _frame_time(frame, frame_index, average_fps))
            if frame_index == last_index:
                break
    return num_decoded


def _decode_span(
    path: str,
    start_pts: int,
    end_pts: int,
    timestamps: _FrameTimestamps,
    wanted_indices: dict[int, int],
    average_fps: float,
    converter: _FrameConverter,
    num_threads: int,
) -> bool:
    """
    Decodes the frames shown in `[start_pts, end_pts)` from the keyframe at `start_pts`, handing those whose timestamp
    is in `wanted_indices` (timestamp -> frame number) to `converter`. Continues past `end_pts` until every frame of the
    span came out (an open GOP's leading frames come after the next keyframe). Returns False when the frames that
    decode differ from the timestamps read, so the caller decodes in order instead.
    """
    first, last = np.searchsorted(timestamps.frames, [start_pts, end_pts])
    expected_count, seen = int(last - first), 0
    with _import_av().open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = num_threads
        container.seek(int(start_pts), stream=stream, backward=True, any_frame=False)
        for frame in _decodable_frames(container, stream):
            if frame.pts is None:
                return False
            if not start_pts <= frame.pts < end_pts:
                continue
            seen += 1
            frame_index = wanted_indices.get(frame.pts)
            if frame_index is not None:
                converter.submit(frame_index, frame, _frame_time(frame, frame_index, average_fps))
            if seen == expected_count:
                return True
    return False


def plan_decoding_spans(
    timestamps: _FrameTimestamps, frame_indices: list[int], num_spans: int
) -> list[tuple[int, int]]:
    """
    Cuts the video at keyframes into at most `num_spans` spans `(start_pts, end_pts)` holding about as many wanted
    frames each; the first starts at the keyframe before the first wanted frame and the last is open-ended.
    """
    wanted_pts = timestamps.frames[frame_indices]
    cuts = [wanted_pts[len(wanted_pts) * span // num_spans] for span in range(num_spans)]
    # the keyframe at or before each cut
    starts = timestamps.keyframes[np.maximum(np.searchsorted(timestamps.keyframes, cuts, side="right") - 1, 0)]
    starts = np.unique(starts)
    ends = np.append(starts[1:], np.iinfo(np.int64).max)
    return [(int(start), int(end)) for start, end in zip(starts, ends)]


Span = tuple[int, int]


def decode_spans_from_queue(
    spans: Sequence[Span],
    decode_on_cpu: Callable[[Span], bool],
    num_cpu_decoders: int,
    gpu_decoders: Sequence[Callable[[Span], bool]] = (),
) -> set[str] | None:
    """
    Decodes `spans` with `num_cpu_decoders` threads calling `decode_on_cpu` and one thread per GPU decoder, all
    pulling spans from one queue, so the faster decoders take more. A span whose frames a GPU decoder finds different
    from the timestamps read (it returns False) is decoded again on the CPU. A GPU decoder that raises
    `NvdecUnavailable` stops, after its span is decoded again on the CPU: the CPU decoders take the rest (with none,
    as for `decode_device="cuda"`, the error is raised).

    Returns:
        The decoders that decoded spans (`"pyav"`, `"nvdec"`), or None when a span's frames differ from the timestamps
        read on the CPU too (the caller then decodes in order).
    """
    pending = queue.SimpleQueue()
    for span in spans:
        pending.put(span)
    used = set()

    def next_span() -> Span | None:
        try:
            return pending.get_nowait()
        except queue.Empty:
            return None

    def decode_and_record_on_cpu(span: Span) -> bool:
        decoded = decode_on_cpu(span)
        if decoded:
            used.add("pyav")
        return decoded

    def cpu_worker() -> bool:
        while (span := next_span()) is not None:
            if not decode_and_record_on_cpu(span):
                return False
        return True

    def gpu_worker(decode_on_gpu: Callable[[Span], bool]) -> bool:
        while (span := next_span()) is not None:
            try:
                decoded = decode_on_gpu(span)
            except NvdecUnavailable as error:
                if num_cpu_decoders == 0:
                    raise
                _log_cpu_only(f"NVDEC stopped: {error}")
                return decode_and_record_on_cpu(span)
            if decoded:
                used.add("nvdec")
            elif not decode_and_record_on_cpu(span):
                return False
        return True

    num_workers = num_cpu_decoders + len(gpu_decoders)
    with ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="vilamp-decode") as workers:
        results = [workers.submit(cpu_worker) for _ in range(num_cpu_decoders)]
        results += [workers.submit(gpu_worker, decoder) for decoder in gpu_decoders]
        decoded = [result.result() for result in results]
    return used if all(decoded) else None


_logged_reasons: set[str] = set()
_logged_reasons_lock = threading.Lock()


def _log_cpu_only(reason: str):
    """Says once per process and reason (decoding threads may hit it at once) why a video is decoded on the CPU
    alone, where NVDEC was asked for."""
    with _logged_reasons_lock:
        if reason in _logged_reasons:
            return
        _logged_reasons.add(reason)
    logger.info("Video decoding runs on the CPU only: %s.", reason)


def _decode_in_spans(
    path: str,
    frame_indices: list[int],
    timestamps: _FrameTimestamps,
    average_fps: float,
    converter: _FrameConverter,
    num_cpu_decoders: int,
    nvdec_video: NvdecVideo | None,
    num_nvdec_sessions: int,
) -> str | None:
    """
    Decodes the video in spans cut at keyframes, pulled from one queue by `num_cpu_decoders` PyAV decoders and
    `num_nvdec_sessions` NVDEC sessions (three spans per decoder where NVDEC takes part, so the faster decoders take
    more; one per decoder on the CPU alone). Returns the decoders used (`"pyav"`, `"pyav+nvdec"`, `"nvdec"`), or None
    when a span's frames differ from the timestamps read (the caller then decodes in order).
    """
    num_gpu_decoders = num_nvdec_sessions if nvdec_video is not None else 0
    spans_per_decoder = 3 if num_gpu_decoders else 1
    spans = plan_decoding_spans(timestamps, frame_indices, spans_per_decoder * (num_cpu_decoders + num_gpu_decoders))
    wanted_indices = {int(timestamps.frames[index]): index for index in frame_indices}
    num_cpu_decoders = min(num_cpu_decoders, len(spans))
    num_threads = max(1, (os.cpu_count() or 1) // max(num_cpu_decoders, 1))

    def decode_on_cpu(span: Span) -> bool:
        return _decode_span(path, *span, timestamps, wanted_indices, average_fps, converter, num_threads)

    def gpu_decoder(session: NvdecSpanDecoder) -> Callable[[Span], bool]:
        def decode_on_gpu(span: Span) -> bool:
            first, last = np.searchsorted(timestamps.frames, span)
            return session.decode_span(*span, timestamps.frames[first:last], wanted_indices, converter.submit)

        return decode_on_gpu

    gpu_decoders = [gpu_decoder(NvdecSpanDecoder(nvdec_video)) for _ in range(num_gpu_decoders)]
    used = decode_spans_from_queue(spans, decode_on_cpu, num_cpu_decoders, gpu_decoders)
    if used is None:
        return None
    return "+".join(name for name in ("pyav", "nvdec") if name in used)


def default_num_decoders(num_frames: int, average_fps: float) -> int:
    """Decoders run at once by default: one per 4 CPU cores (FFmpeg's own threads use the rest), for videos over a
    minute; shorter ones decode faster in one pass than they take to index."""
    if num_frames < 60 * average_fps:
        return 1
    return max(1, (os.cpu_count() or 1) // 4)


def _cuda_is_available() -> bool:
    """Whether torch sees a CUDA GPU (torch is imported only when NVDEC may be used)."""
    import torch

    return torch.cuda.is_available()


def _wants_nvdec(device: str, num_frames: int, average_fps: float) -> bool:
    """Whether NVDEC is asked for: always for `"cuda"`; for `"auto"`, on videos of a minute or more (shorter ones
    decode faster on one CPU decoder than they take to index) where torch sees a GPU."""
    return device == "cuda" or (device == "auto" and num_frames >= 60 * average_fps and _cuda_is_available())


def _nvdec_cannot_decode(path: str, reason: str) -> ValueError:
    """The error of `decode_device="cuda"` for a video NVDEC cannot decode."""
    return ValueError(
        f"`decode_device='cuda'` cannot decode `{path}`: {reason}; pass `decode_device='auto'` (NVDEC where it can, "
        "the CPU elsewhere) or `'cpu'`."
    )


def _open_nvdec(path: str, device: str, stream_properties: dict[str, Any]) -> NvdecVideo | None:
    """
    The NVDEC side of `decode_video`: the video NVDEC decodes, or, where it cannot, an error naming why for `"cuda"`
    and None for `"auto"` (the CPU decodes it alone, said once per reason in an INFO log line).
    """
    try:
        return open_nvdec_video(path, **stream_properties)
    except (ImportError, NvdecUnavailable) as error:
        if device == "cuda":
            if isinstance(error, ImportError):
                raise
            raise _nvdec_cannot_decode(path, str(error)) from error
        if isinstance(error, ImportError):
            _log_cpu_only(
                f"PyNvVideoCodec cannot be imported ({error.__cause__}); {NVDEC_INSTALL_HINT} to decode on NVDEC too"
            )
        else:
            _log_cpu_only(f"NVDEC is not used for this video: {error}")
        return None


def decode_video(
    source: str | os.PathLike,
    *,
    fps: float = 1.0,
    max_frames: int = 600,
    frame_transform: Callable[[Any], Any] | None = None,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    num_decoders: int | None = None,
) -> DecodedVideo:
    """
    Decodes a video file and keeps the frames chosen by `sample_frame_indices`. The kept frames are converted to RGB
    and passed to `frame_transform` on a pool of threads while decoding goes on; only full-resolution frames waiting
    for it are held. Long videos are cut at keyframes into spans decoded at once, on the CPU and on the GPU's video
    decoders (NVDEC, through PyNvVideoCodec); frame numbers and pixels are those of one CPU decoder reading the file in
    order, whichever decoders ran (`metadata.video_backend` names them).

    A damaged file whose frames stop decoding before the count its header promises is sampled as the original's frame
    loop samples it: by the same rule, over the frames that decoded. A `VideoDecodingWarning` says how many came back.

    Args:
        source (`str` or `os.PathLike`): path of the video file.
        fps (`float`, *optional*, defaults to 1.0): frames sampled per second of video.
        max_frames (`int`, *optional*, defaults to 600): at most this many frames are kept, evenly spread.
        frame_transform (`Callable`, *optional*): called on each kept frame (an RGB `PIL.Image.Image`), from a worker
            thread; `frames` holds its results. By default `frames` holds the images.
        device (`str`, *optional*, defaults to `"auto"`): `"cpu"` decodes with PyAV on the CPU. `"auto"` decodes
            videos of a minute or more on the CPU and on NVDEC together where torch sees a GPU, PyNvVideoCodec is
            installed and NVDEC decodes the codec; otherwise as `"cpu"`. `"cuda"` decodes on NVDEC alone and raises
            an error naming why where it cannot. A span whose frames NVDEC gives differently from the timestamps read
            is decoded again on the CPU.
        num_decoders (`int`, *optional*): decoders run at once on spans of the video: CPU decoders for `"cpu"` and
            `"auto"` (defaults to `default_num_decoders`; `"auto"` adds up to 4 NVDEC sessions), NVDEC sessions for
            `"cuda"` (defaults to 4, or the GPU's decoder count if lower).

    Returns:
        `DecodedVideo`.
    """
    av = _import_av()
    path = os.fspath(source)
    check_video_file(path)
    if device not in DECODE_DEVICES:
        raise ValueError(
            f"`device` {device!r} is not a decoding device; pass `auto` (NVDEC and the CPU together where NVDEC is "
            "available), `cpu` or `cuda` (NVDEC)."
        )
    if num_decoders is not None and num_decoders < 1:
        raise ValueError(f"`num_decoders` must be at least 1, got {num_decoders}.")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError(f"`{path}` has no video stream; pass a video file.")
            stream = container.streams.video[0]
            average_fps = float(stream.average_rate or stream.guessed_rate or 0)
            width, height = stream.codec_context.width, stream.codec_context.height
            header_num_frames = stream.frames
            # what NVDEC's pictures need to give the CPU decoder's RGB and timestamps
            stream_properties = {
                "width": width,
                "height": height,
                "pixel_format": stream.codec_context.pix_fmt,
                "time_base": stream.time_base,
                "colorspace": stream.codec_context.colorspace,
                "color_range": stream.codec_context.color_range,
            }
        if average_fps <= 0:
            raise ValueError(f"`{path}` does not state its frame rate, so frames cannot be sampled per second.")
        # spans need the timestamps, and a header without a frame count (WebM) needs them to count the frames
        timestamps = (
            _read_frame_timestamps(path)
            if not header_num_frames
            or (num_decoders or default_num_decoders(header_num_frames, average_fps)) > 1
            or _wants_nvdec(device, header_num_frames, average_fps)
            else None
        )
        if header_num_frames:
            total_num_frames = header_num_frames
        else:
            total_num_frames = len(timestamps.frames) if timestamps is not None else _count_video_frames(path)
        nvdec_video = (
            _open_nvdec(path, device, stream_properties)
            if timestamps is not None and _wants_nvdec(device, total_num_frames, average_fps)
            else None
        )
        if total_num_frames == 0:
            raise ValueError(f"`{path}` has no decodable frames; pass a video with at least one frame.")
        if device == "cuda" and nvdec_video is None:
            raise _nvdec_cannot_decode(path, "its frames have no timestamps to cut it into spans")
        if device == "cuda":
            num_cpu_decoders, num_nvdec_sessions = 0, num_decoders or min(MAX_NVDEC_SESSIONS, nvdec_video.num_engines)
        else:
            num_cpu_decoders = num_decoders or default_num_decoders(total_num_frames, average_fps)
            num_nvdec_sessions = min(MAX_NVDEC_SESSIONS, nvdec_video.num_engines) if nvdec_video is not None else 0
        frame_indices = sample_frame_indices(total_num_frames, average_fps, fps=fps, max_frames=max_frames).tolist()
        converter = _FrameConverter(frame_transform, num_workers=min(8, os.cpu_count() or 1), max_pending=64)
        try:
            video_backend = None
            if (
                (num_cpu_decoders > 1 or nvdec_video is not None)
                and timestamps is not None
                and len(timestamps.frames) == total_num_frames
            ):
                try:
                    video_backend = _decode_in_spans(
                        path,
                        frame_indices,
                        timestamps,
                        average_fps,
                        converter,
                        num_cpu_decoders,
                        nvdec_video,
                        num_nvdec_sessions,
                    )
                except NvdecUnavailable as error:
                    # raised only with no CPU decoder to take over, for `"cuda"`
                    raise _nvdec_cannot_decode(path, str(error)) from error
            if video_backend is None:
                video_backend = "pyav"
                converter.results.clear()
                num_decoded = _decode_in_order(path, frame_indices, average_fps, converter)
                if num_decoded == 0:
                    raise ValueError(f"`{path}` has no decodable frames; pass a video with at least one frame.")
                if len(converter.results) < len(frame_indices):
                    frame_indices = sample_frame_indices(
                        num_decoded, average_fps, fps=fps, max_frames=max_frames
                    ).tolist()
                    warnings.warn(
                        f"`{path}` is damaged or truncated: only {num_decoded} of the {total_num_frames} frames its "
                        f"header promises could be decoded; the frames are sampled from those ({len(frame_indices)} kept).",
                        VideoDecodingWarning,
                        stacklevel=2,
                    )
                    total_num_frames = num_decoded
                    missing = [index for index in frame_indices if index not in converter.results]
                    if missing:
                        _decode_in_order(path, missing, average_fps, converter)
            frames = [converter.results[index].result() for index in frame_indices]
            timestamps_seconds = [converter.timestamps_seconds[index] for index in frame_indices]
        finally:
            converter.close()
    except av.error.FFmpegError as error:
        raise unreadable_video_error(path, error) from error
    metadata = VideoMetadata(
        total_num_frames=total_num_frames,
        fps=average_fps,
        width=width,
        height=height,
        duration=total_num_frames / average_fps,
        video_backend=video_backend,
        frames_indices=frame_indices,
    )
    return DecodedVideo(frames=frames, timestamps_seconds=timestamps_seconds, metadata=metadata)


__all__ = [
    "DECODE_DEVICES",
    "DecodedVideo",
    "VideoDecodingWarning",
    "check_video_file",
    "decode_spans_from_queue",
    "decode_video",
    "default_num_decoders",
    "plan_decoding_spans",
    "sample_frame_indices",
    "unreadable_video_error",
]
