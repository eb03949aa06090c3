"""Decoding speed of camera-like video files on the CPU (PyAV), the GPU's video decoders (NVDEC, PyNvVideoCodec) and
both together (`decode_device` "cpu", "cuda", "auto"), at 1 fps with the 600-frame cap.

Writes each file with `vilamp.testing.write_noisy_video` (a panning scene with sensor noise, a keyframe every 2 s, 12
Mbit/s at 1080p, 25 at 4K, fast encoder presets), then times `decode_video` once per device and prints one markdown
table: seconds, video-minutes decoded per wall-minute and the decoders that ran (`metadata.video_backend`) per device,
and whether each device's kept frames equal the CPU's (frame numbers, timestamps, RGB pixels). Each kept frame is hashed
on the converter's threads instead of held, so 4K runs stay small in memory. CUDA and PyNvVideoCodec are initialised
before the clock starts; each `decode_video` call still opens its own NVDEC sessions, as a real call does. Writing
10-minute files is slow (HEVC most; the files are written at once), so a longer file repeats a `--segment-seconds`
segment, stream-copied (the decoding cost is the full length's); `--directory` keeps them for the next run.

    PYTHONPATH=. python bench/video_decoding.py --minutes 10 --directory videos
    PYTHONPATH=. python bench/video_decoding.py --codecs hevc4k --minutes 2
    PYTHONPATH=. python bench/video_decoding.py --tiny
"""

import argparse
import hashlib
import importlib.metadata
import os
import shlex
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import torch
from bench_utils import NOISY_VIDEOS, format_number, markdown_row, print_table_start, write_long_noisy_video

from vilamp.processing.video_decoding import decode_video
from vilamp.testing import write_noisy_video

DEVICES = ("cpu", "cuda", "auto")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--codecs", default="h264,hevc,vp9,av1,hevc4k", help=f"comma-separated, of {list(NOISY_VIDEOS)}"
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="length of each file")
    parser.add_argument("--devices", default=",".join(DEVICES), help="comma-separated decode devices to time")
    parser.add_argument("--max-frames", type=int, default=600)
    parser.add_argument(
        "--segment-seconds",
        type=float,
        default=60.0,
        help="longer files repeat a segment of this length, stream-copied: the decoding cost of the full length, "
        "written in a fraction of the time (default 60)",
    )
    parser.add_argument("--directory", help="where the files are written and found again (default: a temporary one)")
    parser.add_argument(
        "--tiny", action="store_true", help="20-second 96x64 H.264 and VP9 files, cpu and auto only: runs in seconds"
    )
    args = parser.parse_args(argv)
    args.codecs = [name.strip() for name in args.codecs.split(",") if name.strip()]
    args.devices = [name.strip() for name in args.devices.split(",") if name.strip()]
    for name in args.codecs:
        if name not in NOISY_VIDEOS:
            parser.error(f"--codecs: {name!r} is not one of {list(NOISY_VIDEOS)}")
    for name in args.devices:
        if name not in DEVICES:
            parser.error(f"--devices: {name!r} is not one of {list(DEVICES)}")
    if args.tiny:
        args.codecs, args.devices, args.minutes = ["h264", "vp9"], ["cpu", "auto"], 20 / 60
    return args


def video_size(name: str, tiny: bool) -> tuple[str, int, int]:
    codec, width, height = NOISY_VIDEOS[name]
    return (codec, 96, 64) if tiny else (codec, width, height)


def written_video(directory: Path, name: str, minutes: float, args) -> Path:
    """The bench's file for `name`, written unless `directory` already holds it."""
    codec, width, height = video_size(name, args.tiny)
    return write_long_noisy_video(directory, codec, width, height, minutes, args.segment_seconds)


def frame_digest(image) -> bytes:
    """A kept frame's RGB pixels, hashed (held instead of the image)."""
    return hashlib.blake2b(image.tobytes(), digest_size=16).digest()


def timed_decode(path: Path, device: str, max_frames: int):
    """(decoded video, seconds), or (None, the reason) where the device cannot decode the file."""
    start = time.perf_counter()
    try:
        decoded = decode_video(path, device=device, max_frames=max_frames, frame_transform=frame_digest)
    except (ImportError, ValueError) as error:
        return None, str(error).split(";")[0]
    return decoded, time.perf_counter() - start


def same_frames(decoded, reference) -> bool:
    return (
        decoded.metadata.frames_indices == reference.metadata.frames_indices
        and decoded.timestamps_seconds == reference.timestamps_seconds
        and decoded.frames == reference.frames
    )


def warm_up(devices: list[str], directory: Path):
    """Starts CUDA, PyNvVideoCodec and NVDEC's libraries on a 2-second file before any clock runs (a process pays
    them once, not per video)."""
    if not set(devices) - {"cpu"} or not torch.cuda.is_available():
        return
    torch.zeros(1, device="cuda")
    path = write_noisy_video(directory / "warm_up.mp4", "h264", seconds=2, width=320, height=240)
    try:
        decode_video(path, device="cuda")
    except (ImportError, ValueError) as error:
        print(f"NVDEC warm-up: {error}", file=sys.stderr)


def library_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def main(argv=None):
    args = parse_args(argv)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"# Video decoding: {gpu}, {os.cpu_count()} CPU cores")
    print(
        f"torch {torch.__version__}, PyAV {av.__version__} (FFmpeg {av.ffmpeg_version_info}), PyNvVideoCodec "
        f"{library_version('PyNvVideoCodec')}; 1 fps, at most {args.max_frames} frames kept"
    )
    print("command: PYTHONPATH=. python " + shlex.join(["bench/video_decoding.py", *(argv or sys.argv[1:])]))
    columns = ["video", "resolution", "minutes", "Mbit/s", "frames", "kept"]
    for device in args.devices:
        columns += [f"{device} s", f"{device} video-min/min", f"{device} decoders"]
    columns.append("equal to cpu")
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(args.directory or temporary)
        directory.mkdir(parents=True, exist_ok=True)
        warm_up(args.devices, Path(temporary))
        # written at once: each writer's Python loop and each encoder's threads leave cores to the others
        with ThreadPoolExecutor(max_workers=len(args.codecs)) as writers:
            paths = dict(
                zip(
                    args.codecs,
                    writers.map(lambda name: written_video(directory, name, args.minutes, args), args.codecs),
                )
            )
        print_table_start(columns)
        for name, path in paths.items():
            _, width, height = video_size(name, args.tiny)
            results = {device: timed_decode(path, device, args.max_frames) for device in args.devices}
            decoded = next((video for video, _ in results.values() if video is not None), None)
            minutes = decoded.metadata.duration / 60 if decoded is not None else args.minutes
            megabits = os.path.getsize(path) * 8 / (minutes * 60) / 1e6
            row = [name, f"{width}x{height}", f"{minutes:.1f}", f"{megabits:.1f}"]
            row += [decoded.metadata.total_num_frames, len(decoded.frames)] if decoded is not None else ["n/a", "n/a"]
            for video, seconds in results.values():
                if video is None:
                    row += ["n/a", "n/a", f"cannot: {seconds}"]
                else:
                    row += [f"{seconds:.2f}", format_number(minutes / (seconds / 60), 1), video.metadata.video_backend]
            reference = results.get("cpu", (None, None))[0]
            equal = [
                f"{device}: {'yes' if same_frames(video, reference) else 'NO'}"
                for device, (video, _) in results.items()
                if device != "cpu" and video is not None and reference is not None
            ]
            row.append(", ".join(equal) or "n/a")
            print(markdown_row(row), flush=True)


if __name__ == "__main__":
    main()
