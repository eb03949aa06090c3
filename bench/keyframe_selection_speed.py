"""Throughput of the processor's video stages: decoding + 1 fps sampling, frame resizing, and DKS.

Builds a synthetic video with PyAV in a temporary directory and a randomly initialised open_clip ViT-B-32 (no
download), then prints a markdown table. Without PyAV (e.g. on a GPU machine without it) the decode rows are skipped.

    python bench/keyframe_selection_speed.py --device cpu
    python bench/keyframe_selection_speed.py --device cuda --minutes 0 --dks-frames 600 10000 100000
    python bench/keyframe_selection_speed.py --tiny
"""

import argparse
import importlib.util
import shlex
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from bench_utils import (
    VIT_B_32_CONFIG,
    device_name,
    markdown_row,
    peak_memory_gib,
    print_table_start,
    reset_peak_memory,
    timed,
    write_gradient_video,
)

from vilamp.processing.keyframe_selection import KeyframeSelector, select_keyframes
from vilamp.processing.video_decoding import decode_video
from vilamp.processing.video_processing_vilamp import ViLaMPVideoProcessor, clip_resize_and_crop
from vilamp.testing import TINY_KEYFRAME_SELECTOR_CONFIG

COLUMNS = ["stage", "frames", "seconds", "frames/s", "note", "peak CUDA GiB"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="where the keyframe selector runs (cpu, cuda)")
    parser.add_argument("--minutes", type=float, default=2.0, help="length of the synthetic video; 0 skips decoding")
    parser.add_argument("--video-fps", type=int, default=30)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--max-frames", type=int, default=600)
    parser.add_argument("--num-keyframes", type=int, default=32)
    parser.add_argument("--frame-batch-size", type=int, default=256)
    parser.add_argument(
        "--dks-frames", type=int, nargs="+", default=[120, 600], help="frame counts for the DKS rows (random frames)"
    )
    parser.add_argument("--tiny", action="store_true", help="a 10-second video, a tiny CLIP and small DKS rows")
    args = parser.parse_args(argv)
    if args.tiny:
        args.minutes, args.width, args.height, args.dks_frames = 10 / 60, 64, 48, [16]
    return args


def best_of(device: torch.device, function, repeats: int = 1):
    """Best wall time of `repeats` runs of `function` (after a warm-up), the peak CUDA memory in GiB (`None` on the
    CPU) and the last run's result."""
    function()
    reset_peak_memory(device)
    best = float("inf")
    for _ in range(repeats):
        result, seconds = timed(device, function)
        best = min(best, seconds)
    return best, peak_memory_gib(device), result


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    import open_clip

    model_config = TINY_KEYFRAME_SELECTOR_CONFIG if args.tiny else VIT_B_32_CONFIG
    selector = KeyframeSelector(
        open_clip.model.CLIP(**model_config), model_config, frame_batch_size=args.frame_batch_size
    )
    selector.to(device)
    video_processor = ViLaMPVideoProcessor()
    rows = []

    has_av = importlib.util.find_spec("av") is not None
    if args.minutes > 0 and has_av:
        with tempfile.TemporaryDirectory() as directory:
            path = write_gradient_video(
                Path(directory) / "synthetic.mp4", args.minutes * 60, args.video_fps, args.width, args.height
            )
            seconds, _, decoded = best_of(device, lambda: decode_video(path, max_frames=args.max_frames))
            num_sampled = len(decoded.frames)
            total = decoded.metadata.total_num_frames
            rows.append(
                ("decode + 1 fps sampling (PyAV)", num_sampled, seconds, f"{total / seconds:.0f} video frames/s", None)
            )

            def decode_and_resize():
                return decode_video(
                    path,
                    max_frames=args.max_frames,
                    frame_transform=lambda image: (video_processor.resize_frame(image), clip_resize_and_crop(image)),
                )

            seconds, _, resized = best_of(device, decode_and_resize)
            rows.append(("decode + sampling + SigLIP/CLIP resize", num_sampled, seconds, "", None))
            clip_frames = torch.stack([clip_frame for _, clip_frame in resized.frames])
            query = "What happens after the scene change?"

            def dks_on_video():
                frame_embeds = selector.encode_frames(clip_frames)
                return select_keyframes(
                    frame_embeds,
                    selector.encode_query(query),
                    num_keyframes=args.num_keyframes,
                    relevance_threshold=0.2,
                    similarity_threshold=0.85,
                )

            seconds, peak, _ = best_of(device, dks_on_video)
            rows.append(("DKS (CLIP image + text, selection) on the video", num_sampled, seconds, "", peak))

    for num_frames in args.dks_frames:
        clip_frames = torch.randint(0, 256, (num_frames, 3, 224, 224), dtype=torch.uint8)

        def dks_on_random_frames():
            frame_embeds = selector.encode_frames(clip_frames)
            return select_keyframes(
                frame_embeds,
                selector.encode_query("a question"),
                num_keyframes=args.num_keyframes,
                relevance_threshold=-1.0,
                similarity_threshold=0.85,
            )

        seconds, peak, _ = best_of(device, dks_on_random_frames)
        rows.append(("DKS (CLIP image + text, selection), random frames", num_frames, seconds, "", peak))

    for num_frames in (600, 10_000, 100_000):
        frame_embeds = torch.randn(num_frames, model_config["embed_dim"], device=device)
        query_embeds = torch.randn(model_config["embed_dim"], device=device)

        def selection_only():
            return select_keyframes(
                frame_embeds,
                query_embeds,
                num_keyframes=args.num_keyframes,
                relevance_threshold=-1.0,
                similarity_threshold=0.85,
            )

        seconds, peak, _ = best_of(device, selection_only, repeats=3)
        rows.append(("selection only (greedy + fill), random embeddings", num_frames, seconds, "", peak))

    command = shlex.join(["python", "bench/keyframe_selection_speed.py", *sys.argv[1:]])
    device_text = device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device_text}; dtype: float32; torch {torch.__version__}; transformers {transformers.__version__}")
    print(
        f"CLIP: {'tiny' if args.tiny else 'ViT-B-32'} (random weights); K = {args.num_keyframes}; command: `{command}`"
    )
    if not has_av:
        print("PyAV is not installed: the decode rows are skipped.")
    elif args.minutes > 0:
        print(
            f"video: {args.minutes:g} min, {args.video_fps} fps, {args.width}x{args.height}, max_frames {args.max_frames}"
        )
    print_table_start(COLUMNS)
    for stage, num_frames, seconds, note, peak in rows:
        peak_text = "" if peak is None else f"{peak:.2f}"
        print(markdown_row([stage, num_frames, f"{seconds:.3f}", f"{num_frames / seconds:.0f}", note, peak_text]))


if __name__ == "__main__":
    main()
