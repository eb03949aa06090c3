"""
Answer the questions of a video question-answer dataset with ViLaMP, data-parallel over processes (one per GPU, or
several on the CPU with the gloo backend), resumably.

The dataset is a JSON list or a JSONL file of `{"video": path, "question": ..., "answer": ...}` rows (video paths
relative to the dataset file). Process `rank` of `world_size` takes the videos `j` (numbered in order of first
appearance) with `j % world_size == rank` and all of their rows, loads each video once for all of its questions (greedy
decoding; worker processes decode the next videos meanwhile, `--decode-workers`), through the same wrapper as the
lmms-eval model (`vilamp.evaluation.video_qa`), and appends `{"index", "video", "question", "answer", "prediction"}` to its
part file `OUTPUT.partRANK`, flushed after each row. Once every process is done, the main process merges the part files
(and an earlier `OUTPUT`) into `OUTPUT`, one line per row ordered by index, and removes the part files. Run it again
after an interruption: rows already in a part file or in `OUTPUT` are skipped, whatever the number of processes.

    python examples/evaluate_videos.py --model vilamp-7b --data test.jsonl --output predictions.jsonl
    accelerate launch --multi_gpu --num_processes 2 examples/evaluate_videos.py --model vilamp-7b --data test.jsonl --output preds.jsonl
    torchrun --nproc_per_node 2 examples/evaluate_videos.py --tiny --device cpu   # 2 CPU processes, gloo
    python examples/evaluate_videos.py --tiny --work-dir vilamp-tiny-eval   # tiny random model, a few seconds on a CPU
"""

import argparse
import json
import os
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import gather_object

from vilamp import VideoCache, VideoQuestion
from vilamp.evaluation.video_qa import DecodingWorkers, VideoQuestionAnswerer, group_by_video
from vilamp.processing import read_video_qa_file
from vilamp.runner import DTYPES, KEEP_FEATURES
from vilamp.testing import build_tiny_model, build_tiny_processor, write_tiny_video_qa_dataset

# the processes meet twice, at the start and when all are done: a process whose shard ends early waits at the second
# meeting for the slowest one, far longer than the default collective timeout on long videos
BARRIER_TIMEOUT = timedelta(hours=24)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="converted ViLaMP directory (model and processor)")
    parser.add_argument("--data", type=Path, help="JSON or JSONL dataset of video, question, answer rows")
    parser.add_argument(
        "--output", type=Path, help="JSONL predictions (default with --tiny: WORK_DIR/predictions.jsonl)"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny random model and synthetic videos: runs anywhere")
    parser.add_argument(
        "--work-dir", type=Path, default=Path("vilamp-tiny-eval"), help="where --tiny writes its videos"
    )
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--cache-implementation",
        choices=["dynamic", "static"],
        default="dynamic",
        help="generate's KV cache; static compiles the decoding step on a GPU (its first row pays the compilation)",
    )
    parser.add_argument("--max-frames", type=int, help="frames sampled per video (default: the processor's, 600)")
    parser.add_argument(
        "--decode-workers",
        type=int,
        default=2,
        help="processes that decode the next videos while the model runs; 0: none",
    )
    parser.add_argument(
        "--keep-features",
        choices=KEEP_FEATURES,
        default="auto",
        help="where each video's projected patches are kept for its questions (auto: the GPU or the host where they "
        "fit, else none)",
    )
    parser.add_argument(
        "--video-cache",
        type=Path,
        help="directory of loaded videos read before decoding (vilamp.VideoCache), so a re-run skips decoding",
    )
    parser.add_argument(
        "--video-cache-max-gib", type=float, default=20, help="the video cache's size cap (default 20)"
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (default: this process's GPU, else the CPU), cpu, cuda (this process's GPU)",
    )
    parser.add_argument(
        "--dtype", choices=["auto", *DTYPES], default="auto", help="auto: bfloat16 on a GPU, float32 on the CPU"
    )
    args = parser.parse_args()
    if args.tiny and (args.model is not None or args.data is not None):
        parser.error("`--tiny` builds its own model and data: leave out `--model` and `--data`.")
    if not args.tiny and (args.model is None or args.data is None or args.output is None):
        parser.error("`--model`, `--data` and `--output` are required unless `--tiny` is given.")
    if args.device not in ("auto", "cpu", "cuda") and not args.device.startswith("cuda:"):
        parser.error(f"`--device` must be auto, cpu, cuda or cuda:N, got {args.device!r}.")
    if args.video_cache_max_gib <= 0:
        parser.error(f"`--video-cache-max-gib` must be positive, got {args.video_cache_max_gib}.")
    if args.decode_workers < 0:
        parser.error(f"`--decode-workers` must be at least 0, got {args.decode_workers}.")
    return args


def start_processes(device: str) -> PartialState:
    """The distributed state of `accelerate launch` or `torchrun` (or a single process); CPU processes talk through
    gloo (accelerate picks it unless torch was built with MPI)."""
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if on_cpu:
        return PartialState(cpu=True, timeout=BARRIER_TIMEOUT)
    return PartialState(timeout=BARRIER_TIMEOUT)


def process_device(state: PartialState, device: str) -> torch.device:
    """Where this process runs the model: an explicit `cuda:N` as given, otherwise the device accelerate gave it."""
    if device.startswith("cuda:"):
        return torch.device(device)
    if device == "cuda" and state.device.type != "cuda":
        raise SystemExit("`--device cuda` asks for a GPU, but torch sees none; pass --device cpu.")
    return torch.device("cpu") if device == "cpu" else state.device


def part_path(output: Path, rank: int) -> Path:
    return output.with_name(f"{output.name}.part{rank}")


def part_paths(output: Path) -> list[Path]:
    """The part files of `output` left by any process of any run, whatever its number of processes."""
    parts = [
        path for path in output.parent.glob(f"{output.name}.part*") if path.name[len(output.name) + 5 :].isdigit()
    ]
    return sorted(parts, key=lambda path: int(path.name[len(output.name) + 5 :]))


def read_predictions(path: Path) -> list[dict]:
    """The complete lines of a predictions file; a last line cut short by an interruption is left out."""
    if not path.is_file():
        return []
    predictions = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            predictions.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return predictions


def done_predictions(output: Path, rows: list[dict]) -> dict[int, dict]:
    """The predictions already made, by index, from the final output and the part files; checks they are of `rows`."""
    done = {}
    for path in [output, *part_paths(output)]:
        for prediction in read_predictions(path):
            index = prediction.get("index")
            known = isinstance(index, int) and 0 <= index < len(rows)
            if not known or prediction.get("question") != rows[index]["question"]:
                raise SystemExit(
                    f"{path} holds a prediction that is not of this dataset (index {index!r}); "
                    "pass another --output, or remove the old predictions."
                )
            done[index] = prediction
    return done


def open_part_file(path: Path):
    """Opens a part file for appending, first dropping a last line cut short by an interruption."""
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])
    return path.open("a", encoding="utf-8")


def load_answerer(args, device: torch.device) -> VideoQuestionAnswerer:
    """The model and its processor on this process's device (the lmms-eval model's wrapper, `vilamp.evaluation.video_qa`)."""
    video_cache = None
    if args.video_cache is not None:
        video_cache = VideoCache(args.video_cache, max_bytes=int(args.video_cache_max_gib * 2**30))
    if not args.tiny:
        return VideoQuestionAnswerer.from_pretrained(
            args.model,
            device=device,
            dtype=args.dtype,
            max_frames=args.max_frames,
            decode_workers=args.decode_workers,
            cache_implementation=args.cache_implementation,
            keep_features=args.keep_features,
            video_cache=video_cache,
        )
    processor = build_tiny_processor()
    if args.max_frames is not None:
        processor.video_processor.max_frames = args.max_frames
    workers = (
        DecodingWorkers(processor, args.decode_workers, video_cache, device=device) if args.decode_workers else None
    )
    model = build_tiny_model().to(device).eval()
    return VideoQuestionAnswerer(
        model, processor, workers, args.cache_implementation, args.keep_features, video_cache=video_cache
    )


def question_of(row: dict) -> VideoQuestion:
    """A row's question about its video; the keyframe selector ranks the frames against the question."""
    return VideoQuestion(video=row["video"], prompt=row["question"], query=row["question"])


def main():
    args = parse_args()
    state = start_processes(args.device)
    device = process_device(state, args.device)
    if args.tiny:
        with state.main_process_first():
            data_path = args.work_dir / "data.jsonl"
            if state.is_main_process and not data_path.is_file():
                write_tiny_video_qa_dataset(data_path)
        output = args.output or args.work_dir / "predictions.jsonl"
    else:
        data_path, output = args.data, args.output
    output.parent.mkdir(parents=True, exist_ok=True)

    rows = read_video_qa_file(data_path)
    done = done_predictions(output, rows)
    # every process reads the old predictions before any of them appends to (or cleans up) its part file
    state.wait_for_everyone()
    # by video, so that each video is loaded by one process only, once for all of its rows
    groups = group_by_video([question_of(row) for row in rows])
    shard = sorted(index for group in groups[state.process_index :: state.num_processes] for index in group)
    todo = [index for index in shard if index not in done]

    evaluated = 0
    if todo:
        # each video is loaded once for all of its rows, and the next videos are decoded in worker processes while
        # the model answers this one
        with load_answerer(args, device) as answerer, open_part_file(part_path(output, state.process_index)) as part:
            prepared = answerer.prepare_by_video([question_of(rows[index]) for index in todo])
            for (todo_index,), inputs in prepared:
                index = todo[todo_index]
                row = rows[index]
                (prediction,) = answerer.generate(inputs, args.max_new_tokens)
                record = {"index": index, "video": row["video"], "question": row["question"], "answer": row["answer"]}
                part.write(json.dumps({**record, "prediction": prediction}, ensure_ascii=False) + "\n")
                part.flush()
                evaluated += 1
    print(
        f"process {state.process_index} of {state.num_processes}: evaluated {evaluated} rows, "
        f"skipped {len(shard) - len(todo)} already done",
        flush=True,
    )

    state.wait_for_everyone()
    counts = gather_object([evaluated])
    missing = []
    if state.is_main_process:
        parts = part_paths(output)
        merged = done_predictions(output, rows)
        missing = sorted(set(range(len(rows))) - set(merged))
        temporary = output.with_name(output.name + ".tmp")
        temporary.write_text(
            "".join(json.dumps(merged[index], ensure_ascii=False) + "\n" for index in sorted(merged)), encoding="utf-8"
        )
        os.replace(temporary, output)
        if not missing:
            for path in parts:
                path.unlink()
        evaluated = sum(counts)
        print(
            f"Evaluated {evaluated} rows ({len(rows) - evaluated} already done); wrote {len(merged)} predictions to {output}"
        )
    state.wait_for_everyone()
    state.destroy_process_group()
    if state.is_main_process and missing:
        raise SystemExit(f"Rows {missing} have no prediction; run the script again to answer them.")


if __name__ == "__main__":
    main()
