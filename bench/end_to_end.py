"""
From a video file to an answer: time and memory of every stage on real encoded videos, next to the original's frame
loop on the same file.

The bench writes camera-like H.264 videos (a moving texture with a scene cut every 20 s, x264 `veryfast`, crf 23,
30 fps; videos over 10 minutes repeat a 2-minute one, stream-copied), with `--noisy` camera-like files with sensor
noise in H.264, HEVC, VP9, AV1 and 4K HEVC (8-25 Mbit/s; a `--segment-seconds` segment repeated), or takes any file
through `--video`. It builds
the full-size architecture (SigLIP so400m, Qwen2-7B, CLIP ViT-B/32 keyframe selector) with random weights, saves the
processor and loads it with `AutoProcessor`, then answers a question the way the README tells a user:

    inputs = processor(text=question, videos=path, return_tensors="pt").to(model.device)
    model.generate(**inputs, max_new_tokens=64)

That run gives the public API's wall time. The runner's path for one video and several questions
(`ViLaMPRunner.load_video` once: decoding, CLIP and SigLIP; then each question's keyframe selection, DFM, prefill
and answer) gives the total to the first answer, and, with `--questions N`, the time to the first token of each
later question about the loaded video. The stages are then timed one by one on the same file through the processor's
stages (`load_video`, `select_keyframes`, `build_inputs`) and `generate`:
- probing: opening the file and reading its stream header;
- decoding: decoding to the kept RGB frames, no resizing (`decode_video`, the processor's decoder and its settings);
- conversion and resize: what `load_video` (decoding, then SigLIP and CLIP resizing on worker threads while decoding
  goes on) takes beyond decoding alone;
- CLIP: the keyframe selection (`select_keyframes`) on the processor's device (the GPU when there is one);
- vision+DFM, prefill, answer: one `generate` of `--max-new-tokens` tokens, split as bench/long_video.py splits it.
With OpenCV installed, the original's frame loop (`grab()` every frame, `retrieve()` every `int(fps)`-th, then
`np.linspace(..., dtype=int)` to 600, as the original evaluation scripts do) runs on the same file, and the table says
whether it kept the same frame numbers and pixels as this package.

    python bench/end_to_end.py                                  # 720p and 1080p, 10 minutes, one GPU
    python bench/end_to_end.py --resolutions 1080p --minutes 60
    python bench/end_to_end.py --resolutions --noisy h264 hevc vp9 av1 hevc4k --questions 3
    python bench/end_to_end.py --video talk.mp4 --questions 3
    python bench/end_to_end.py --tiny --device cpu              # tiny model, seconds: proves that it runs
"""

import argparse
import hashlib
import multiprocessing
import os
import resource
import shlex
import sys
import tempfile
import time
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from bench_utils import (
    NOISY_VIDEOS,
    VIT_B_32_CONFIG,
    build_config,
    build_random_model,
    device_name,
    markdown_row,
    peak_memory_gib,
    print_table_start,
    repeat_video,
    reset_peak_memory,
    synchronize,
    timed,
    timed_generate,
    write_long_noisy_video,
)
from transformers import AutoProcessor

import vilamp  # noqa: F401  (registers ViLaMP with the Auto classes)
from vilamp.modeling_vilamp import ViLaMPForConditionalGeneration
from vilamp.processing import KeyframeSelector, ViLaMPProcessor
from vilamp.processing.video_decoding import decode_video
from vilamp.runner import VideoQuestion, ViLaMPRunner
from vilamp.testing import build_tiny_processor, build_tiny_tokenizer, write_video

RESOLUTIONS = {"720p": (1280, 720), "1080p": (1920, 1080), "tiny": (160, 120)}
VIDEO_FPS = 30
SCENE_SECONDS = 20
QUESTION = "What happens after the second scene cut?"
# the later questions about a loaded video, asked in turn (`--questions`)
LATER_QUESTIONS = [
    "What colour is the first scene?",
    "How many scene cuts are there?",
    "Does the camera move to the left or to the right?",
    "What is in the last scene?",
    "Is there any text on screen?",
]
COLUMNS = [
    "video",
    "decoders",
    "probing s",
    "decoding s",
    "conversion and resize s",
    "CLIP s",
    "vision+DFM s",
    "prefill s",
    "answer s",
    "public API total s",
    "total s",
    "video-min per wall-min",
    "host peak RSS GiB",
    "GPU peak GiB",
    "original loop s",
    "same frames as original",
]


def parse_args(argv=None) -> Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--video", type=Path, action="append", help="a video file to measure (repeatable); none: write them"
    )
    parser.add_argument(
        "--resolutions",
        nargs="*",
        default=["720p", "1080p"],
        choices=["720p", "1080p"],
        help="the smooth camera-like H.264 files to write (none: only --noisy ones)",
    )
    parser.add_argument(
        "--noisy",
        nargs="*",
        default=[],
        choices=list(NOISY_VIDEOS),
        help="also camera-like files with sensor noise (8-25 Mbit/s) in these codecs, 1080p (hevc4k: 2160p)",
    )
    parser.add_argument(
        "--segment-seconds",
        type=float,
        default=60.0,
        help="a noisy file longer than this repeats a segment of this length, stream-copied (default 60)",
    )
    parser.add_argument("--minutes", nargs="+", type=float, default=[10.0], help="lengths of the written videos")
    parser.add_argument("--video-dir", type=Path, help="where written videos are kept and reused (default: temporary)")
    parser.add_argument("--max-frames", type=int, default=600)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--questions",
        type=int,
        default=1,
        choices=range(1, len(LATER_QUESTIONS) + 2),
        metavar=f"1..{len(LATER_QUESTIONS) + 1}",
        help="questions about each loaded video; each after the first gets a column: its seconds to the first token",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on a GPU, float32 on the CPU")
    parser.add_argument("--attn-implementation", default="sdpa")
    parser.add_argument(
        "--decoders",
        nargs="*",
        default=[],
        metavar="DEVICE:COUNT",
        help="also time decoding and resizing alone with these settings, e.g. cpu:1 cpu:4 cuda:1 (cuda is NVDEC)",
    )
    parser.add_argument("--tiny", action="store_true", help="tiny model, processor and a 20-second 160x120 video")
    args = parser.parse_args(argv)
    try:
        args.decoders = [(device, int(count)) for device, count in (setting.split(":") for setting in args.decoders)]
    except ValueError:
        parser.error(f"`--decoders` takes DEVICE:COUNT settings such as cpu:4 or cuda:1, got {args.decoders}.")
    args.dtype = args.dtype or ("bfloat16" if torch.device(args.device).type == "cuda" else "float32")
    return args


def camera_like_frames(num_frames: int, width: int, height: int, seed: int = 0):
    """Yields `(height, width, 3)` uint8 frames of a smooth random texture panned like a hand-held camera, with a new
    texture every `SCENE_SECONDS`."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    margin, cell = 200, 6
    textures = []
    for _ in range(4):
        coarse = rng.integers(0, 256, ((height + margin) // cell, (width + margin) // cell, 3), dtype=np.uint8)
        fine = Image.fromarray(coarse).resize((coarse.shape[1] * cell, coarse.shape[0] * cell), Image.BICUBIC)
        textures.append(np.asarray(fine))
    for index in range(num_frames):
        texture = textures[index // (SCENE_SECONDS * VIDEO_FPS) % len(textures)]
        left = int(margin / 2 + 0.3 * margin * np.sin(index / 40))
        top = int(margin / 2 + 0.3 * margin * np.cos(index / 55))
        yield np.ascontiguousarray(texture[top : top + height, left : left + width])


def write_camera_like_video(path: Path, width: int, height: int, minutes: float) -> Path:
    """Writes a camera-like H.264 video; videos over 10 minutes repeat a 2-minute one, stream-copied (decoding costs
    the same, writing far less)."""
    if path.is_file():
        return path
    if minutes > 10:
        segment = write_camera_like_video(path.with_name(f"{path.stem}_segment.mp4"), width, height, 2)
        return repeat_video(segment, path, repeats=round(minutes / 2))
    frames = camera_like_frames(int(minutes * 60 * VIDEO_FPS), width, height)
    return write_video(path, frames, fps=VIDEO_FPS, codec="libx264", options={"preset": "veryfast", "crf": "23"})


def build_model(args: Namespace, video_token_id: int) -> ViLaMPForConditionalGeneration:
    """Random weights created on the device in the benchmark's dtype; its video token is the processor's."""
    overrides = {} if args.tiny else {"video_token_index": video_token_id}
    config = build_config(args.tiny, **overrides)
    return build_random_model(
        config, device=args.device, dtype=args.dtype, attn_implementation=args.attn_implementation
    )


def load_processor(directory: Path, args: Namespace) -> ViLaMPProcessor:
    """Saves a processor (the toy tokenizer, a random CLIP ViT-B/32 keyframe selector) and loads it with `AutoProcessor`."""
    if args.tiny:
        processor = build_tiny_processor()
    else:
        import open_clip

        torch.manual_seed(0)
        selector = KeyframeSelector(open_clip.model.CLIP(**VIT_B_32_CONFIG), VIT_B_32_CONFIG)
        processor = ViLaMPProcessor(tokenizer=build_tiny_tokenizer(), keyframe_selector=selector)
    processor.save_pretrained(directory)
    # as the README loads it: the keyframe selector goes to the GPU when there is one
    return AutoProcessor.from_pretrained(directory)


def warm_up(model, processor: ViLaMPProcessor, args: Namespace):
    """
    Answers once, untimed, about `--max-frames` random 64x64 frames given as an array, so that CUDA start-up and the
    first use of each kernel (vision chunks, CLIP batches, prefill) fall outside the measured rows.
    """
    frames = np.random.default_rng(0).integers(0, 256, (args.max_frames, 64, 64, 3), dtype=np.uint8)
    inputs = processor(text=QUESTION, videos=frames, return_tensors="pt").to(args.device)
    model.generate(**inputs, do_sample=False, max_new_tokens=2)


def probe(path: Path) -> float:
    """The seconds opening the file and reading its video stream's header take."""
    import av

    start = time.perf_counter()
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream.")
    return time.perf_counter() - start


def frame_digest(image) -> str:
    """A digest of an RGB frame's pixels (a PIL image or a `(height, width, 3)` uint8 array)."""
    return hashlib.sha1(np.ascontiguousarray(np.asarray(image, dtype=np.uint8)).tobytes()).hexdigest()


def original_frame_loop(path: str, max_frames: int):
    """
    The original evaluation's OpenCV loop, run in its own process so that the frames it holds (every candidate, at
    full resolution) do not count in this process's memory: its seconds, the frame numbers it keeps and their
    digests; None without OpenCV.
    """
    try:
        import cv2
    except ImportError:
        return None
    start = time.perf_counter()
    capture = cv2.VideoCapture(path)
    frame_interval = int(capture.get(cv2.CAP_PROP_FPS))
    total_num_frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    frames, frame_indices = [], []
    for count in range(total_num_frames):
        if not capture.grab():
            break
        if count % frame_interval == 0:
            _, frame = capture.retrieve()
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            frame_indices.append(count)
    capture.release()
    if len(frames) > max_frames:
        keep = np.linspace(0, len(frames) - 1, max_frames, dtype=int)
        frames, frame_indices = [frames[i] for i in keep], [frame_indices[i] for i in keep]
    seconds = time.perf_counter() - start
    return seconds, frame_indices, [frame_digest(frame) for frame in frames]


def same_frames_as_original(path: Path, args: Namespace, processor: ViLaMPProcessor):
    """Runs the original's loop; returns its seconds and whether its frame numbers and pixels equal this package's."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        result = pool.apply(original_frame_loop, (str(path), args.max_frames))
    if result is None:
        return None, "no OpenCV"
    seconds, frame_indices, digests = result
    ours = decode_video(
        path, fps=processor.video_processor.fps, max_frames=args.max_frames, frame_transform=frame_digest
    )
    same_indices = ours.metadata.frames_indices == frame_indices
    same_pixels = ours.frames == digests
    return seconds, f"numbers {'yes' if same_indices else 'NO'}, pixels {'yes' if same_pixels else 'NO'}"


def question_columns(args: Namespace) -> list[str]:
    """A column for each question after the first."""
    return [f"question {number} first token s" for number in range(2, args.questions + 1)]


def answer_questions(path: Path, runner: ViLaMPRunner, args: Namespace) -> tuple[float, list[float], str]:
    """The runner's path: the seconds from the file to the first question's answer of `--max-new-tokens` tokens (the
    video loaded once), the seconds to the first token of each later question about the loaded video, and the
    decoders that read the file."""
    device = runner.device
    synchronize(device)
    start = time.perf_counter()
    video = runner.load_video(str(path))
    (inputs,) = runner.prepare([[VideoQuestion(video, QUESTION, QUESTION)]])
    timed_generate(runner.model, runner.model_inputs(inputs), args.max_new_tokens, device)
    total_seconds = time.perf_counter() - start
    later_seconds = []
    for question in LATER_QUESTIONS[: args.questions - 1]:
        start = time.perf_counter()
        (inputs,) = runner.prepare([[VideoQuestion(video, question, question)]])
        timed_generate(runner.model, runner.model_inputs(inputs), 1, device)
        later_seconds.append(time.perf_counter() - start)
    return total_seconds, later_seconds, video.video.metadata.video_backend


def measure(path: Path, model, processor: ViLaMPProcessor, args: Namespace) -> list:
    """One table row: the public API's total, the runner's total and later questions, then each stage on its own."""
    device = torch.device(args.device)
    generate_args = dict(do_sample=False, max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens)
    probe_seconds = probe(path)

    reset_peak_memory(device)
    start = time.perf_counter()
    inputs = processor(text=QUESTION, videos=str(path), return_tensors="pt").to(device)
    model.generate(**inputs, **generate_args)
    synchronize(device)
    public_api_seconds = time.perf_counter() - start
    total_seconds, later_seconds, decoders = answer_questions(path, ViLaMPRunner(model, processor), args)
    gpu_peak = peak_memory_gib(device)
    host_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    decoded, decode_seconds = timed(
        device, decode_video, path, fps=processor.video_processor.fps, max_frames=args.max_frames
    )
    loaded, load_seconds = timed(device, processor.load_video, str(path))
    assert loaded.metadata.frames_indices == decoded.metadata.frames_indices
    selection, clip_seconds = timed(device, processor.select_keyframes, loaded.clip_frames, QUESTION)
    inputs = processor.build_inputs(
        [processor.question_prompt(QUESTION)], [loaded.siglip_frames], [selection], padding=True, return_tensors="pt"
    ).to(device)
    first = timed_generate(model, inputs, 1, device)
    full = timed_generate(model, inputs, args.max_new_tokens, device)
    original_seconds, same_frames = same_frames_as_original(path, args, processor)
    # from the frames that decode, not the header: a WebM header states no frame count
    duration_seconds = decoded.metadata.duration
    return [
        f"{path.name} ({duration_seconds / 60:.1f} min, {len(decoded.frames)} frames)",
        decoders,
        f"{probe_seconds:.3f}",
        f"{decode_seconds:.2f}",
        f"{max(load_seconds - decode_seconds, 0.0):.2f}",
        f"{clip_seconds:.2f}",
        f"{full.vision_seconds:.2f}",
        f"{first.language_model_seconds:.2f}",
        # two runs apart: when the answer's later tokens take less than the runs' noise the difference can be negative
        f"{max(full.language_model_seconds - first.language_model_seconds, 0.0):.2f}",
        f"{public_api_seconds:.2f}",
        f"{total_seconds:.2f}",
        f"{duration_seconds / total_seconds:.1f}",
        f"{host_peak:.1f}",
        "-" if gpu_peak is None else f"{gpu_peak:.1f}",
        "-" if original_seconds is None else f"{original_seconds:.2f}",
        same_frames,
        *(f"{seconds:.2f}" for seconds in later_seconds),
    ]


def decoder_rows(path: Path, processor: ViLaMPProcessor, args: Namespace) -> list[list[str]]:
    """Seconds of `load_video` (decoding, conversion and resizing) on `path` with each `--decoders` setting, and
    whether its frames equal those of one CPU decoder."""
    reference = processor.load_video(str(path), decode_device="cpu", num_decoders=1)
    rows = []
    for device, count in args.decoders:
        loaded, seconds = timed(
            torch.device("cpu"), processor.load_video, str(path), decode_device=device, num_decoders=count
        )
        same = torch.equal(loaded.siglip_frames, reference.siglip_frames) and torch.equal(
            loaded.clip_frames, reference.clip_frames
        )
        rows.append(
            [path.name, "NVDEC" if device == "cuda" else "CPU", str(count), f"{seconds:.2f}", "yes" if same else "NO"]
        )
    return rows


def videos_to_measure(args: Namespace, directory: Path) -> Iterator[Path]:
    """The `--video` files, or camera-like videos for each resolution, noisy codec and length, each written when its
    turn comes."""
    if args.video:
        yield from args.video
    elif args.tiny:
        yield write_camera_like_video(directory / "camera_tiny.mp4", *RESOLUTIONS["tiny"], 1 / 3)
    else:
        for minutes in args.minutes:
            for resolution in args.resolutions:
                name = f"camera_{resolution}_{minutes:g}min.mp4"
                yield write_camera_like_video(directory / name, *RESOLUTIONS[resolution], minutes)
            for name in args.noisy:
                yield write_long_noisy_video(directory, *NOISY_VIDEOS[name], minutes, args.segment_seconds)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as temporary:
        video_dir = args.video_dir or Path(temporary)
        video_dir.mkdir(parents=True, exist_ok=True)
        processor = load_processor(Path(temporary) / "processor", args)
        model = build_model(args, processor.video_token_id)
        warm_up(model, processor, args)
        print(
            f"ViLaMP {'tiny' if args.tiny else 'full size'} (random weights), {args.dtype}, on {device_name(device)}; "
            f"{args.max_frames} frames at most, {args.max_new_tokens} new tokens; keyframe selector on "
            f"{processor.keyframe_selector.device}; {os.cpu_count()} CPU cores"
        )
        print(f"command: python {shlex.join(['bench/end_to_end.py', *(argv if argv is not None else sys.argv[1:])])}")
        print_table_start(COLUMNS + question_columns(args))
        paths = []
        for path in videos_to_measure(args, video_dir):
            paths.append(path)
            print(markdown_row(measure(path, model, processor, args)), flush=True)
        if args.decoders:
            print_table_start(
                ["video", "decoder", "decoders at once", "load_video s", "same frames as one CPU decoder"]
            )
            for path in paths:
                for row in decoder_rows(path, processor, args):
                    print(markdown_row(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
