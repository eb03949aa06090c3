"""
Throughput of `lmms-eval --model vilamp` on 1 and more GPUs: samples per second of a local lmms-eval task, with each
video loaded once for its `--questions-per-video` questions (grouped) and once per question (ungrouped), and whether
every run's predictions equal the first run's.

Writes two tasks into `--work-dir` (built once, then reused) and runs lmms-eval on each once per process count, one
process per GPU under `accelerate launch` (torchrun with gloo on the CPU). Both tasks ask the same `--samples` questions,
`--questions-per-video` about each video and interleaved in request order (one question of each video, then the next
of each; 3 per video by default, as Video-MME asks): the grouped task asks them about the videos themselves, the
ungrouped one about a copy of its video per question, so that the model loads each video once per question, as it did
before questions were grouped by video. The full-size videos are synthetic H.264 of `--video-seconds` seconds (600
frames sampled at 1 fps by default) asked to a full-size ViLaMP
with random weights (SigLIP so400m, Qwen2-7B, CLIP ViT-B/32 keyframe selector, K = 32, the toy tokenizer), saved to the
work directory; `--tiny` asks the tiny random model of the tests about small synthetic videos. The time per run is the
slowest process's `generate_until` (decoding in worker processes, keyframe selection, the model), read from the model's
log line; loading the model is left out. `steady samples/s` leaves out each process's wait for its first batch (its
decoding workers' start and first video): the rate once the pipeline runs, summed over the processes. Under the table,
the start-up of the first grouped run's process 0 as the model logs it (loading, the decoding workers' start, the first
video's decoding, CLIP and SigLIP, the first batch). Every process started here has NVLink multicast off
(NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1, NVSHMEM_DISABLE_NVLS=1).

    python bench/evaluation_throughput.py --processes 1,2                  # full size, 1 then 2 GPUs
    python bench/evaluation_throughput.py --tiny --processes 1,2           # the tiny task on 1 then 2 GPUs
    python bench/evaluation_throughput.py --tiny --device cpu --processes 1,2 --samples 4   # CPU: proves that it runs
"""

import argparse
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import transformers
from bench_utils import (
    VIT_B_32_CONFIG,
    build_random_model,
    device_name,
    markdown_row,
    print_table_start,
    turn_off_nvlink_multicast,
    write_gradient_video,
)

from vilamp.testing import free_port, torchrun_launcher

TASK = "vilamp_throughput"
TIMING_LINE = re.compile(
    r"ViLaMP process (\d+): generate_until of (\d+) requests in ([0-9.]+) s, the first batch ready after ([0-9.]+) s"
)
STARTUP_LINE = re.compile(r"ViLaMP process 0 start-up: ([^\x1b\n]*)")
QUESTIONS = ("What happens in the video?", "Which colour dominates the video?", "How does the scene change?")
OPTIONS = ("A. It stays the same.", "B. It changes colour.", "C. Something moves.", "D. It goes dark.")


def process_counts(text: str) -> list[int]:
    return [int(count) for count in text.split(",") if count.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the tiny random model of the tests on small videos")
    parser.add_argument(
        "--processes", type=process_counts, default=[1, 2], help="process counts, one GPU each (default 1,2)"
    )
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: gloo processes, for a dry run")
    parser.add_argument(
        "--work-dir", type=Path, default=Path("bench-evaluation"), help="task, model and runs (reused)"
    )
    parser.add_argument("--samples", type=int, help="questions (default 48, 8 with --tiny)")
    parser.add_argument(
        "--questions-per-video",
        type=int,
        default=3,
        help="questions about each video (default 3, as Video-MME); the last video may get fewer",
    )
    parser.add_argument("--video-seconds", type=int, default=600, help="length of each full-size video (default 600)")
    parser.add_argument("--video-fps", type=int, default=2, help="frame rate of the full-size videos (default 2)")
    parser.add_argument(
        "--video-size", default="640x360", help="WIDTHxHEIGHT of the full-size videos (default 640x360)"
    )
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--decode-workers", type=int, default=2, help="decoding processes per GPU (default 2)")
    parser.add_argument("--max-new-tokens", type=int, default=1, help="tokens per answer (default 1, Video-MME's)")
    parser.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16")
    parser.add_argument(
        "--keep-features",
        choices=["auto", "device", "cpu", "none"],
        default="auto",
        help="where the model keeps each video's projected patches for its questions (default auto)",
    )
    args = parser.parse_args(argv)
    if args.questions_per_video < 1:
        parser.error(f"`--questions-per-video` must be at least 1, got {args.questions_per_video}.")
    if not args.processes or min(args.processes) < 1:
        parser.error(f"`--processes` needs positive process counts, got {args.processes}.")
    if args.device == "cuda" and max(args.processes) > torch.cuda.device_count():
        parser.error(f"`--processes` asks for {max(args.processes)} GPUs, torch sees {torch.cuda.device_count()}.")
    args.samples = args.samples or (8 if args.tiny else 48)
    args.videos = math.ceil(args.samples / args.questions_per_video)
    return args


def build_full_size_checkpoint(directory: Path, dtype: str) -> Path:
    """A full-size ViLaMP with random weights and its processor (toy tokenizer, random CLIP ViT-B/32), saved once."""
    import open_clip

    from vilamp.modeling_vilamp import ViLaMPConfig
    from vilamp.processing import KeyframeSelector, ViLaMPProcessor
    from vilamp.testing import TINY_SPECIAL_TOKEN_IDS, build_tiny_tokenizer

    if (directory / "config.json").is_file():
        return directory
    temporary = directory.with_name(directory.name + ".tmp")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    # the toy tokenizer's ids are below every row of Qwen2's embeddings; its `<video>` is the placeholder
    config = ViLaMPConfig(video_token_index=TINY_SPECIAL_TOKEN_IDS["<video>"])
    model = build_random_model(config, device=device, dtype=dtype)
    model.save_pretrained(temporary)
    # the GPU's memory goes back before lmms-eval's processes load the model
    del model
    torch.cuda.empty_cache()
    selector = KeyframeSelector(open_clip.model.CLIP(**VIT_B_32_CONFIG), VIT_B_32_CONFIG)
    ViLaMPProcessor(tokenizer=build_tiny_tokenizer(), keyframe_selector=selector).save_pretrained(temporary)
    os.replace(temporary, directory)
    return directory


def write_videos(directory: Path, args: argparse.Namespace) -> list[Path]:
    """The synthetic videos, written in parallel (each once)."""
    from vilamp.testing import write_synthetic_video

    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"video_{index}.mp4" for index in range(args.videos)]
    missing = [path for path in paths if not path.is_file()]
    with ProcessPoolExecutor(max_workers=min(len(missing), os.cpu_count()) or 1) as pool:
        if args.tiny:
            jobs = [
                pool.submit(write_synthetic_video, path, num_frames=24 + 8 * (index % 4))
                for index, path in enumerate(missing)
            ]
        else:
            width, height = map(int, args.video_size.split("x"))
            video = (args.video_seconds, args.video_fps, width, height)
            jobs = [pool.submit(write_gradient_video, path, *video) for path in missing]
        for job in jobs:
            job.result()
    return paths


def question_videos(videos: list[Path], samples: int, grouped: bool) -> list[Path]:
    """The video of each question, one question of each video in turn: the video itself when `grouped`, else a copy
    of it per question (a copy, not a link, so that no cache keyed by the file takes two questions for one video)."""
    paths = [videos[index % len(videos)] for index in range(samples)]
    if grouped:
        return paths
    copies = []
    for index, path in enumerate(paths):
        copy = path.parent.with_name(path.parent.name + "-ungrouped") / f"question_{index}_{path.name}"
        copy.parent.mkdir(parents=True, exist_ok=True)
        if not copy.is_file():
            shutil.copyfile(path, copy)
        copies.append(copy)
    return copies


def write_task(task_dir: Path, videos: list[Path], num_videos: int, max_new_tokens: int) -> Path:
    """A generation task of one multiple-choice question about each of `videos`, for `--include_path`: question `i`
    is the `i // num_videos`-th about its video (videos take turns)."""
    task_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, video in enumerate(videos):
        question = QUESTIONS[(index // num_videos) % len(QUESTIONS)]
        prompt = (
            f"{question}\n" + "\n".join(OPTIONS) + "\nAnswer with the option's letter from the given choices directly."
        )
        rows.append({"video": str(video.resolve()), "question": question, "prompt": prompt, "answer": "A"})
    data = task_dir / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    (task_dir / f"{TASK}.yaml").write_text(
        f"task: {TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data.resolve()}\ntest_split: test\n"
        "output_type: generate_until\ndoc_to_visual: video\ndoc_to_text: prompt\ndoc_to_target: answer\n"
        f"generation_kwargs:\n  max_new_tokens: {max_new_tokens}\n  do_sample: false\nmetric_list:\n  - metric: exact_match\n",
        encoding="utf-8",
    )
    return task_dir


def run_lmms_eval(model_dir: Path, task_dir: Path, output_dir: Path, processes: int, args: argparse.Namespace) -> dict:
    """One lmms-eval run; returns its slowest process's answering time, wall time and predictions by doc id."""
    model_args = (
        f"pretrained={model_dir.resolve()},dtype={args.dtype},decode_workers={args.decode_workers},"
        f"keep_features={args.keep_features}"
    )
    lmms_eval_args = [
        "--model",
        "vilamp",
        "--model_args",
        model_args,
        "--tasks",
        TASK,
        "--include_path",
        str(task_dir),
        "--batch_size",
        str(args.batch_size),
        "--log_samples",
        "--output_path",
        str(output_dir),
    ]
    if args.device == "cpu":
        lmms_eval_args += ["--device", "cpu"]
    if processes == 1:
        launcher = [sys.executable, "-m", "lmms_eval"]
    elif args.device == "cpu":
        launcher = [*torchrun_launcher(processes), "-m", "lmms_eval"]
    else:
        launcher = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(free_port()),
            "-m",
            "lmms_eval",
        ]
    # lmms-eval imports `vilamp` as this process does: installed, or the checkout through `PYTHONPATH=.`
    env = {
        **os.environ,
        "HF_HOME": str((args.work_dir / "hf-home").resolve()),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "WANDB_MODE": "disabled",
    }
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    output_dir.mkdir(parents=True, exist_ok=True)
    start_time = time.perf_counter()
    result = subprocess.run([*launcher, *lmms_eval_args], env=env, capture_output=True, text=True)
    wall_seconds = time.perf_counter() - start_time
    (output_dir / "log.txt").write_text(result.stdout + result.stderr, encoding="utf-8")
    samples_paths = list(output_dir.glob(f"*/*_samples_{TASK}.jsonl"))
    timings = {
        int(rank): (int(requests), float(seconds), float(first_batch_seconds))
        for rank, requests, seconds, first_batch_seconds in TIMING_LINE.findall(result.stdout + result.stderr)
    }
    startup = STARTUP_LINE.search(result.stdout + result.stderr)
    if result.returncode != 0 or len(samples_paths) != 1 or len(timings) != processes or startup is None:
        raise SystemExit(f"lmms-eval failed with {processes} processes; see {output_dir / 'log.txt'}")
    samples = [json.loads(line) for line in samples_paths[0].read_text(encoding="utf-8").splitlines()]
    # steady: after each process's first batch of `--batch-size` requests (its decoding workers' start and first video)
    steady = [
        (requests - args.batch_size) / (seconds - first)
        for requests, seconds, first in timings.values()
        if seconds > first
    ]
    return {
        "answering_seconds": max(seconds for _, seconds, _ in timings.values()),
        "first_batch_seconds": max(first for _, _, first in timings.values()),
        "steady_samples_per_second": sum(steady) if len(steady) == processes else float("nan"),
        "wall_seconds": wall_seconds,
        "startup": startup.group(1),
        "predictions": {sample["doc_id"]: sample["filtered_resps"] for sample in samples},
    }


def print_header(args: argparse.Namespace, model_dir: Path, build_seconds: float):
    device = device_name(torch.device("cuda:0" if args.device == "cuda" else "cpu"))
    print("# ViLaMP lmms-eval throughput\n")
    print(f"- command: `python {shlex.join(sys.argv)}`")
    print(f"- device: {device}, one process per {'GPU' if args.device == 'cuda' else 'CPU process (gloo)'}")
    dtype = args.dtype if args.device == "cuda" else "float32 (the model's on the CPU)"
    print(f"- torch {torch.__version__}, transformers {transformers.__version__}, dtype {dtype}")
    if args.tiny:
        print("- model: the tiny random ViLaMP of the tests; videos: 3 to 6 s of synthetic 64x48 MPEG-4 at 8 fps")
    else:
        print(
            f"- model: full size, random weights ({model_dir}, built or found in {build_seconds:.0f} s); videos: "
            f"{args.videos} synthetic H.264 (ultrafast) {args.video_size} videos of {args.video_seconds} s at "
            f"{args.video_fps} fps, sampled at 1 fps up to 600 frames, K = 32 keyframes"
        )
    print(
        f"- task: {args.samples} generation requests, {args.questions_per_video} per video (interleaved), "
        f"max_new_tokens {args.max_new_tokens}, keep_features {args.keep_features}, batch size "
        f"{args.batch_size}, {args.decode_workers} decoding processes per GPU; time: the slowest process's "
        "generate_until (model loading left out)",
        flush=True,
    )


def print_row(args: argparse.Namespace, processes: int, loads: str, run: dict, first: dict):
    """The table's row of one run, its speed-ups over the `first` run."""
    samples_per_second = args.samples / run["answering_seconds"]
    speed_up = first["answering_seconds"] / run["answering_seconds"]
    steady_speed_up = run["steady_samples_per_second"] / first["steady_samples_per_second"]
    identical = "yes" if run["predictions"] == first["predictions"] else "NO"
    cells = [
        processes,
        loads,
        args.samples,
        f"{run['answering_seconds']:.1f}",
        f"{run['first_batch_seconds']:.1f}",
        f"{samples_per_second:.2f}",
        f"{speed_up:.2f}x",
        f"{run['steady_samples_per_second']:.2f}",
        f"{steady_speed_up:.2f}x",
        f"{run['wall_seconds']:.0f}",
        identical,
    ]
    print(markdown_row(cells), flush=True)


def main(argv=None):
    args = parse_args(argv)
    # in this process and, through its environment, in every process lmms-eval starts
    turn_off_nvlink_multicast()
    start_time = time.perf_counter()
    if args.tiny:
        from vilamp.testing import build_demo_checkpoint

        model_dir = args.work_dir / "tiny" / "vilamp-tiny"
        if not (model_dir / "config.json").is_file():
            build_demo_checkpoint(args.work_dir / "tiny")
    else:
        model_dir = build_full_size_checkpoint(args.work_dir / "vilamp-full-size-random", args.dtype)
    build_seconds = time.perf_counter() - start_time
    videos = write_videos(args.work_dir / ("videos-tiny" if args.tiny else f"videos-{args.video_seconds}s"), args)
    # the ungrouped task first: the road before questions were grouped, which the speed-ups compare with
    task_dirs = {
        loads: write_task(
            args.work_dir / f"task-{loads.replace(' ', '-')}",
            question_videos(videos, args.samples, grouped=loads == "once"),
            len(videos),
            args.max_new_tokens,
        )
        for loads in ("per question", "once")
    }
    print_header(args, model_dir, build_seconds)

    columns = [
        "processes",
        "each video loaded",
        "samples",
        "answering s",
        "first batch s",
        "samples/s",
        "speed-up",
        "steady samples/s",
        "steady speed-up",
        "wall s",
        "predictions equal the first run's",
    ]
    print_table_start(columns)
    first = startup = None
    for processes in args.processes:
        for loads, task_dir in task_dirs.items():
            output_dir = args.work_dir / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{processes}-{task_dir.name}"
            run = run_lmms_eval(model_dir, task_dir, output_dir, processes, args)
            first = first or run
            startup = startup or (run["startup"] if loads == "once" else None)
            print_row(args, processes, loads, run, first)
    print(f"\nStart-up of the first grouped run's process 0: {startup}")


if __name__ == "__main__":
    main()
