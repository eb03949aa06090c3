"""Throughput of the processor's video stages: decoding + 1 fps sampling, frame resizing, and DKS.

Builds a synthetic video with PyAV in a temporary directory and a randomly initialised open_clip ViT-B-32 (no
download), then prints a markdown table. Without PyAV (e.g. on a GPU machine without it) the decode rows are skipped.

    python bench/keyframe_selection.py --device cpu
    python bench/keyframe_selection.py --device cuda --minutes 0 --dks-frames 600 10000 100000
    python bench/keyframe_selection.py --tiny
"""

import argparse
import importlib.util
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vilamp.processing.keyframe_selection import KeyframeSelector, select_keyframes  # noqa: E402
from vilamp.processing.video_decoding import decode_video  # noqa: E402
from vilamp.processing.video_processing_vilamp import ViLaMPVideoProcessor, clip_resize_and_crop  # noqa: E402
from vilamp.testing import TINY_KEYFRAME_SELECTOR_CONFIG, write_video  # noqa: E402

VIT_B_32_CONFIG = {
    "embed_dim": 512,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "patch_size": 32, "width": 768, "layers": 12, "head_width": 64, "mlp_ratio": 4.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12, "mlp_ratio": 4.0},
}


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


def gradient_frames(seconds: float, fps: int, width: int, height: int):
    """RGB uint8 frames `(height, width, 3)` of moving gradients with a scene change every 10 s, one at a time."""
    rows, columns = np.mgrid[0:height, 0:width]
    for frame_index in range(int(seconds * fps)):
        pixels = np.empty((height, width, 3), dtype=np.uint8)
        pixels[..., 0] = (columns + 3 * frame_index) % 256
        pixels[..., 1] = (rows + frame_index) % 256
        pixels[..., 2] = (frame_index // (10 * fps)) * 40 % 256
        yield pixels


def write_synthetic_video(path: Path, seconds: float, fps: int, width: int, height: int) -> Path:
    """An H.264 video (MPEG-4 Part 2 where libx264 is missing) of `gradient_frames`."""
    import av

    try:
        av.codec.Codec("libx264", "w")
    except (av.error.FFmpegError, ValueError):
        return write_video(path, gradient_frames(seconds, fps, width, height), fps=fps)
    frames = gradient_frames(seconds, fps, width, height)
    return write_video(path, frames, fps=fps, codec="libx264", options={"preset": "ultrafast"})


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, function, repeats: int = 1):
    """Best wall time of `repeats` runs of `function` (after a warm-up) and the peak CUDA memory in GiB."""
    function()
    best = float("inf")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        result = function()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return best, peak, result


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    import open_clip

    model_config = TINY_KEYFRAME_SELECTOR_CONFIG if args.tiny else VIT_B_32_CONFIG
    selector = KeyframeSelector(open_clip.model.CLIP(**model_config), model_config, frame_batch_size=args.frame_batch_size)
    selector.to(device)
    video_processor = ViLaMPVideoProcessor()
    rows = []

    has_av = importlib.util.find_spec("av") is not None
    if args.minutes > 0 and has_av:
        with tempfile.TemporaryDirectory() as directory:
            path = write_synthetic_video(
                Path(directory) / "synthetic.mp4", args.minutes * 60, args.video_fps, args.width, args.height
            )
            seconds, _, decoded = timed(device, lambda: decode_video(path, max_frames=args.max_frames))
            num_sampled = len(decoded.frames)
            total = decoded.metadata.total_num_frames
            rows.append(("decode + 1 fps sampling (PyAV)", num_sampled, seconds, f"{total / seconds:.0f} video frames/s", None))

            def decode_and_resize():
                return decode_video(
                    path,
                    max_frames=args.max_frames,
                    frame_transform=lambda image: (video_processor.resize_frame(image), clip_resize_and_crop(image)),
                )

            seconds, _, resized = timed(device, decode_and_resize)
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

            seconds, peak, _ = timed(device, dks_on_video)
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

        seconds, peak, _ = timed(device, dks_on_random_frames)
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

        seconds, peak, _ = timed(device, selection_only, repeats=3)
        rows.append(("selection only (greedy + fill), random embeddings", num_frames, seconds, "", peak))

    command = "python " + " ".join(shlex.quote(part) for part in ["bench/keyframe_selection.py", *sys.argv[1:]])
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device_name}; dtype: float32; torch {torch.__version__}; transformers {transformers.__version__}")
    print(f"CLIP: {'tiny' if args.tiny else 'ViT-B-32'} (random weights); K = {args.num_keyframes}; command: `{command}`")
    if not has_av:
        print("PyAV is not installed: the decode rows are skipped.")
    elif args.minutes > 0:
        print(f"video: {args.minutes:g} min, {args.video_fps} fps, {args.width}x{args.height}, max_frames {args.max_frames}")
    print()
    print("| stage | frames | seconds | frames/s | note | peak CUDA GiB |")
    print("| --- | ---: | ---: | ---: | --- | ---: |")
    for stage, num_frames, seconds, note, peak in rows:
        peak_text = "" if peak is None or np.isnan(peak) else f"{peak:.2f}"
        print(f"| {stage} | {num_frames} | {seconds:.3f} | {num_frames / seconds:.0f} | {note} | {peak_text} |")


if __name__ == "__main__":
    main()
