"""Streaming video decoding with PyAV and the frame sampling of the original evaluation.

PyAV was chosen over torchcodec by measurement (bench/keyframe_selection.py and the issue note): torchcodec decoded a
2-minute 640x360 video at 1 fps somewhat faster, but it only loads next to system FFmpeg shared libraries, while the
PyAV wheels bundle FFmpeg and install with pip alone.
"""

import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from transformers.video_utils import VideoMetadata


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
            `video_backend` and `frames_indices` (the decoded frame numbers that were kept).
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
        raise ValueError(f"`fps` must be positive and `max_frames` at least 1, got fps={fps} and max_frames={max_frames}.")
    stride = max(int(average_fps / fps), 1)
    frame_indices = np.arange(0, total_num_frames, stride)
    if len(frame_indices) > max_frames:
        frame_indices = frame_indices[np.linspace(0, len(frame_indices) - 1, max_frames, dtype=int)]
    return frame_indices


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
class _KeptFrames:
    """The frames one decoding pass kept, by frame number, and how many frames decoded before it stopped."""

    frames: dict[int, Any]
    timestamps_seconds: dict[int, float]
    num_decoded: int


def _decode_frames_at(
    path: str, frame_indices: list[int], average_fps: float, frame_transform: Callable[[Any], Any] | None
) -> _KeptFrames:
    """Decodes `path` up to its last wanted frame, keeping the frames numbered `frame_indices` (numbers count the
    frames that decode)."""
    av = _import_av()
    kept = _KeptFrames(frames={}, timestamps_seconds={}, num_decoded=0)
    wanted = set(frame_indices)
    last_index = max(frame_indices, default=-1)
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame_index, frame in enumerate(_decodable_frames(container, stream)):
            kept.num_decoded = frame_index + 1
            if frame_index in wanted:
                image = frame.to_image()
                kept.frames[frame_index] = frame_transform(image) if frame_transform is not None else image
                kept.timestamps_seconds[frame_index] = float(frame.time) if frame.time is not None else frame_index / average_fps
            if frame_index == last_index:
                break
    return kept


def decode_video(
    source: str | os.PathLike,
    *,
    fps: float = 1.0,
    max_frames: int = 600,
    frame_transform: Callable[[Any], Any] | None = None,
) -> DecodedVideo:
    """
    Decodes a video file and keeps the frames chosen by `sample_frame_indices`. Frames are decoded one at a time and
    only the kept ones are converted to RGB and passed to `frame_transform`, so no more than one full-resolution frame
    is held at once when `frame_transform` shrinks it.

    A damaged file whose frames stop decoding before the count its header promises is sampled as the original's frame
    loop samples it: by the same rule, over the frames that decoded. A `VideoDecodingWarning` says how many came back.

    Args:
        source (`str` or `os.PathLike`): path of the video file.
        fps (`float`, *optional*, defaults to 1.0): frames sampled per second of video.
        max_frames (`int`, *optional*, defaults to 600): at most this many frames are kept, evenly spread.
        frame_transform (`Callable`, *optional*): called on each kept frame (an RGB `PIL.Image.Image`) as soon as it
            is decoded; `frames` holds its results. By default `frames` holds the images.

    Returns:
        `DecodedVideo`.
    """
    av = _import_av()
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise ValueError(f"No video file at `{path}`; pass the path of an existing video file.")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError(f"`{path}` has no video stream; pass a video file.")
            stream = container.streams.video[0]
            average_fps = float(stream.average_rate or stream.guessed_rate or 0)
            width, height = stream.codec_context.width, stream.codec_context.height
            header_num_frames = stream.frames
        if average_fps <= 0:
            raise ValueError(f"`{path}` does not state its frame rate, so frames cannot be sampled per second.")
        total_num_frames = header_num_frames or _count_video_frames(path)
        frame_indices = sample_frame_indices(total_num_frames, average_fps, fps=fps, max_frames=max_frames).tolist()
        kept = _decode_frames_at(path, frame_indices, average_fps, frame_transform)
        if kept.num_decoded == 0:
            raise ValueError(f"`{path}` has no decodable frames; pass a video with at least one frame.")
        if len(kept.frames) < len(frame_indices):
            frame_indices = sample_frame_indices(kept.num_decoded, average_fps, fps=fps, max_frames=max_frames).tolist()
            warnings.warn(
                f"`{path}` is damaged or truncated: only {kept.num_decoded} of the {total_num_frames} frames its header "
                f"promises could be decoded; the frames are sampled from those ({len(frame_indices)} kept).",
                VideoDecodingWarning,
                stacklevel=2,
            )
            total_num_frames = kept.num_decoded
            missing = [index for index in frame_indices if index not in kept.frames]
            if missing:
                again = _decode_frames_at(path, missing, average_fps, frame_transform)
                kept.frames.update(again.frames)
                kept.timestamps_seconds.update(again.timestamps_seconds)
    except av.error.FFmpegError as error:
        raise ValueError(f"`{path}` could not be decoded ({error}); pass a readable video file.") from error
    metadata = VideoMetadata(
        total_num_frames=total_num_frames,
        fps=average_fps,
        width=width,
        height=height,
        duration=total_num_frames / average_fps,
        video_backend="pyav",
        frames_indices=frame_indices,
    )
    return DecodedVideo(
        frames=[kept.frames[index] for index in frame_indices],
        timestamps_seconds=[kept.timestamps_seconds[index] for index in frame_indices],
        metadata=metadata,
    )


__all__ = ["DecodedVideo", "VideoDecodingWarning", "decode_video", "sample_frame_indices"]
