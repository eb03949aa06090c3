"""Host memory of the processor over many requests in one process: `processor(videos=path, text=question)` again and
again on the same video file, the resident set size (RSS) read after each call.

Writes synthetic MPEG-4 videos in a temporary directory (at `--video-fps` frames per second, so a video of N sampled
frames lasts N seconds and N frames are kept at 1 fps) and uses the tiny processor of `vilamp.testing` (toy tokenizer,
tiny random CLIP at the released 224x224) with SigLIP frames of `--frame-size` (384, the released model's, by default):
decoding, sampling and both resizes are those of the released processor. Prints a markdown table per video: RSS before
the first call, the peak during the first call, after the warm-up, after the last call, the growth per call after the
warm-up, and the highest RSS seen after any call against the first call's peak.

    python bench/processor_memory.py
    python bench/processor_memory.py --frames 40 --calls 500
    python bench/processor_memory.py --tiny
"""

import argparse
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from bench_utils import frame_counts, markdown_row, print_table_start

from vilamp.processing import ViLaMPProcessor
from vilamp.testing import (
    TINY_NUM_KEYFRAMES,
    build_tiny_keyframe_selector,
    build_tiny_tokenizer,
    synthetic_frames,
    write_video,
)

COLUMNS = [
    "sampled frames",
    "calls",
    "RSS before MB",
    "peak of call 1 MB",
    "RSS after warm-up MB",
    "RSS after last call MB",
    "growth after warm-up MB/call",
    "highest RSS MB",
    "highest / peak of call 1",
]
QUESTION = "What happens in the video?"
# distinct frames, repeated: the content does not change the memory a call needs
FRAME_POOL_SIZE = 32


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--frames", type=frame_counts, default=[40, 600], help="comma-separated sampled frames (seconds) per video"
    )
    parser.add_argument("--calls", type=int, default=100, help="processor calls per video")
    parser.add_argument("--warmup", type=int, default=10, help="calls before the growth is measured")
    parser.add_argument("--video-fps", type=int, default=2)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--frame-size", type=int, default=384, help="SigLIP frame size")
    parser.add_argument("--tiny", action="store_true", help="an 8-frame video at 64x48, 6 calls after 2 of warm-up")
    args = parser.parse_args(argv)
    if args.tiny:
        args.frames, args.calls, args.warmup, args.width, args.height = [8], 6, 2, 64, 48
    if not 0 < args.warmup < args.calls:
        parser.error(f"--warmup must be at least 1 and below --calls ({args.calls}), got {args.warmup}")
    return args


def resident_mb() -> float:
    """This process's resident set size in MB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_resident():
    """Starts a new peak-RSS measurement (Linux: writing 5 to /proc/self/clear_refs resets VmHWM)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def peak_resident_mb() -> float:
    """The highest RSS of this process since the last `reset_peak_resident`, in MB."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def write_long_video(path: Path, seconds: int, fps: int, width: int, height: int) -> Path:
    """An MPEG-4 video of `seconds * fps` synthetic frames."""
    pool = synthetic_frames(FRAME_POOL_SIZE, width=width, height=height)
    return write_video(path, (pool[index % FRAME_POOL_SIZE] for index in range(seconds * fps)), fps=fps)


def measure(processor: ViLaMPProcessor, path: Path, calls: int, warmup: int) -> list:
    """RSS around `calls` processor calls on `path`: one table row."""
    before = resident_mb()
    reset_peak_resident()
    processor(videos=str(path), text=QUESTION)
    first_peak = peak_resident_mb()
    after_call = [resident_mb()]
    for _ in range(calls - 1):
        processor(videos=str(path), text=QUESTION)
        after_call.append(resident_mb())
    after_warmup, last = after_call[warmup - 1], after_call[-1]
    highest = max(after_call)
    return [
        f"{before:.0f}",
        f"{first_peak:.0f}",
        f"{after_warmup:.0f}",
        f"{last:.0f}",
        f"{(last - after_warmup) / (calls - warmup):.2f}",
        f"{highest:.0f}",
        f"{highest / first_peak:.2f}",
    ]


def main(argv=None):
    args = parse_args(argv)
    processor = ViLaMPProcessor(
        tokenizer=build_tiny_tokenizer(),
        num_keyframes=TINY_NUM_KEYFRAMES,
        frame_size=args.frame_size,
        keyframe_selector=build_tiny_keyframe_selector(),
    )
    print(
        f"# processor host memory: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, transformers {transformers.__version__}"
    )
    print(f"# {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"# videos: {args.width}x{args.height} MPEG-4 at {args.video_fps} fps, sampled at 1 fps; SigLIP frames "
        f"{args.frame_size}x{args.frame_size}; growth measured after {args.warmup} calls of warm-up"
    )
    print_table_start(COLUMNS)
    with tempfile.TemporaryDirectory() as directory:
        for num_frames in args.frames:
            path = write_long_video(
                Path(directory) / f"video_{num_frames}.mp4", num_frames, args.video_fps, args.width, args.height
            )
            row = measure(processor, path, args.calls, args.warmup)
            print(markdown_row([num_frames, args.calls, *row]), flush=True)


if __name__ == "__main__":
    main()
