"""Streaming video decoding with PyAV and the frame sampling of the original evaluation.

PyAV was chosen over torchcodec by measurement (bench/keyframe_selection.py and the issue note): torchcodec decoded a
2-minute 640x360 video at 1 fps somewhat faster, but it only loads next to system FFmpeg shared libraries, while the
PyAV wheels bundle FFmpeg and install with pip alone.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from transformers.video_utils import VideoMetadata


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
            stream.thread_type = "AUTO"
            average_fps = float(stream.average_rate or stream.guessed_rate or 0)
            if average_fps <= 0:
                raise ValueError(f"`{path}` does not state its frame rate, so frames cannot be sampled per second.")
            total_num_frames = stream.frames or _count_video_frames(path)
            frame_indices = sample_frame_indices(total_num_frames, average_fps, fps=fps, max_frames=max_frames)
            frames, timestamps_seconds, kept_indices = [], [], []
            wanted = iter(frame_indices.tolist())
            next_index = next(wanted, None)
            for frame_index, frame in enumerate(container.decode(stream)):
                if next_index is None:
                    break
                if frame_index != next_index:
                    continue
                image = frame.to_image()
                frames.append(frame_transform(image) if frame_transform is not None else image)
                timestamps_seconds.append(float(frame.time) if frame.time is not None else frame_index / average_fps)
                kept_indices.append(frame_index)
                next_index = next(wanted, None)
            width, height = stream.codec_context.width, stream.codec_context.height
    except av.error.FFmpegError as error:
        raise ValueError(f"`{path}` could not be decoded ({error}); pass a readable video file.") from error
    if not frames:
        raise ValueError(f"`{path}` has no decodable frames; pass a video with at least one frame.")
    metadata = VideoMetadata(
        total_num_frames=total_num_frames,
        fps=average_fps,
        width=width,
        height=height,
        duration=total_num_frames / average_fps,
        video_backend="pyav",
        frames_indices=kept_indices,
    )
    return DecodedVideo(frames=frames, timestamps_seconds=timestamps_seconds, metadata=metadata)


__all__ = ["DecodedVideo", "decode_video", "sample_frame_indices"]
