"""
Model-split benchmark: ViLaMP loaded with `device_map` over several GPUs against one GPU, printed as markdown.

Builds the full-size architecture (SigLIP so400m, Qwen2-7B, K = 32) with random weights (seed 0) once and saves it to
`--work-dir` (reused when present). Then it loads it on one GPU (`device_map="cuda:0"`, the reference) and once per
`--split`, and runs the same greedy `generate` of `--max-new-tokens` tokens on synthetic uint8 frames (a pool of
distinct frames, repeated) with evenly spread keyframes, for each `--frames` count. Each row gives the vision chunk
used, whether the ids equal one GPU's, the largest difference of the first step's logits, the peak memory of each
GPU, the time to the first token (from the `generate` call to the prefill step's logits) and the whole `generate`.

To tell why a split differs, every run records a checksum of the bits of each stage's output during the prefill step,
call by call in the order they run: the query projection, SigLIP's embeddings and encoder, the projector and the DFM
(once per vision chunk), the language model's `inputs_embeds` (the video tokens scattered into the prompt), the rotary
cos/sin, each decoder layer, the final norm and the logits. A split's diagnosis names the first of these whose bits
differ from one GPU's (with the largest difference over 4096 evenly spread values of it); before it runs, every weight
and buffer the split loaded is checked bitwise against one GPU's. The records cost a few percent of the time and add
up to about 0.3 GiB to a GPU's peak at 100K frames. Two control rows use the one-GPU model at the smallest count:
`generate` again (is one GPU deterministic?) and with half the vision chunk (does the chunk size alone change the ids?).

A split is a transformers strategy, `auto`, `balanced`, `balanced_low_0` or `sequential`, with an optional
`max_memory` after `@` (`auto@0=10GiB,1=70GiB`), or a placement of the model's parts (`vision=1,language=0`; the
parts are vision, projector, merger, newline, language and head; the projector, merger and newline follow vision and
the head follows language unless given). The default splits are `auto`, `auto@0=10GiB,1=70GiB`, the vision stage on
GPU 1 with the language model on GPU 0, and one that puts each stage of a vision chunk on another GPU than the stage
before it (SigLIP on 0, projector on 1, DFM on 0, `image_newline` and the language model on 1). A split that fails
prints its error and the next one runs. NVLink multicast is off (NCCL_NVLS_ENABLE=0,
TORCH_SYMM_MEM_DISABLE_MULTICAST=1, NVSHMEM_DISABLE_NVLS=1), as the lent multi-GPU machines need.

    python bench/model_split.py                                          # full size, 2 GPUs: 600 and 5000 frames
    python bench/model_split.py --frames 100000 --split auto --no-controls   # 100K frames, one split
    python bench/model_split.py --split "sequential@0=4GiB,1=70GiB" --split "vision=1,language=0,head=1"
    python bench/model_split.py --tiny --device cpu                      # tiny config on the CPU: proves that it runs

With `--device cpu` every split maps the model onto the CPU (`auto` then places all of it there): the rows only prove
that the flow runs and that loading through a device map gives the same ids.
"""

import argparse
import gc
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from bench_utils import (
    DTYPES,
    FULL_NUM_KEYFRAMES,
    build_config,
    build_random_model,
    default_attn_implementation,
    default_num_keyframes,
    exact_length_generate_kwargs,
    format_number,
    frame_counts,
    markdown_row,
    print_table_start,
    repeated_frames,
    turn_off_nvlink_multicast,
    video_inputs,
)
from model_split_diagnosis import PrefillCapture, Run, compare, compare_weights, placement, tensor_checksums

from vilamp.modeling_vilamp import ViLaMPConfig, ViLaMPForConditionalGeneration

FULL_FRAMES = "600,5000"
TINY_FRAMES = "16,64"
# the last one sends every stage of the vision chunk to another GPU than the one before it
FULL_SPLITS = [
    "auto",
    "auto@0=10GiB,1=70GiB",
    "vision=1,language=0",
    "vision=0,projector=1,merger=0,newline=1,language=1",
]
TINY_SPLITS = ["auto", "vision=cpu,language=cpu"]
STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
# the parts an explicit split places, and the part each follows when it is not given
SPLIT_PARTS = {
    "vision": "model.vision_tower",
    "projector": "model.multi_modal_projector",
    "merger": "model.feature_merger",
    "newline": "model.image_newline",
    "language": "model.language_model",
    "head": "lm_head",
}
FOLLOWED_PARTS = {"projector": "vision", "merger": "vision", "newline": "vision", "head": "language"}
# the warm-up `generate` runs on this many frames at most
WARM_UP_FRAMES = 32
COLUMNS = [
    "split",
    "frames",
    "chunk",
    "same ids as one device",
    "first-step logits max abs diff",
    "first stage that differs",
    "peak GiB per GPU",
    "first token s",
    "generate s",
]
REFERENCE = "one device (reference)"


def parse_device(text: str) -> int | str:
    """A GPU index or `cpu`."""
    text = text.strip()
    if text == "cpu":
        return text
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"a device is a GPU index or `cpu`, got {text!r}")


@dataclass
class Split:
    name: str  # as given on the command line
    device_map: str | dict
    max_memory: dict | None = None

    def devices(self) -> set:
        """The devices the split names, transformers' strategies none."""
        if isinstance(self.device_map, dict):
            return set(self.device_map.values())
        return set(self.max_memory or {})


def parse_split(text: str) -> Split:
    """`auto`, `auto@0=10GiB,1=70GiB` (a strategy and its `max_memory`) or `vision=1,language=0` (a placement)."""
    strategy, _, memory = text.partition("@")
    items = [item.split("=", 1) for item in (memory if strategy in STRATEGIES else text).split(",") if item.strip()]
    if any(len(item) != 2 for item in items):
        raise argparse.ArgumentTypeError(
            f"{text!r}: `max_memory` entries and part placements are written `key=value`, separated by commas"
        )
    if strategy in STRATEGIES:
        max_memory = {parse_device(device): size.strip() for device, size in items} or None
        return Split(text, strategy, max_memory)
    parts = {part.strip(): parse_device(device) for part, device in items}
    unknown = sorted(set(parts) - set(SPLIT_PARTS))
    if unknown or not {"vision", "language"} <= set(parts):
        unknown_note = f" (unknown: {', '.join(unknown)})" if unknown else ""
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a strategy ({', '.join(STRATEGIES)}) nor a placement that names `vision` and "
            f"`language` among the parts {', '.join(SPLIT_PARTS)}{unknown_note}"
        )
    for part, followed in FOLLOWED_PARTS.items():
        parts.setdefault(part, parts[followed])
    return Split(text, {SPLIT_PARTS[part]: device for part, device in parts.items()})


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=frame_counts, help=f"frame counts to measure (default {FULL_FRAMES})")
    parser.add_argument(
        "--split",
        dest="splits",
        type=parse_split,
        action="append",
        help=f"a device map to compare with one GPU, repeatable (default: {' '.join(FULL_SPLITS)})",
    )
    parser.add_argument("--num-keyframes", type=int, help=f"keyframes per video K (default {FULL_NUM_KEYFRAMES})")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="greedy tokens per `generate` (default 8)")
    parser.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cuda: the reference on GPU 0")
    parser.add_argument(
        "--attn-implementation", help="attention of both towers (default flash_attention_2 if installed, else sdpa)"
    )
    parser.add_argument("--vision-chunk-size", type=int, help="frames per vision chunk (default: from free memory)")
    parser.add_argument(
        "--no-controls",
        dest="controls",
        action="store_false",
        help="skip the two control rows (one device again, and with half the vision chunk)",
    )
    parser.add_argument("--work-dir", type=Path, default=Path("bench-model-split"), help="the saved model (reused)")
    parser.add_argument("--tiny", action="store_true", help=f"tiny config, K = 2, frames {TINY_FRAMES}: runs on a CPU")
    args = parser.parse_args(argv)

    args.frames = args.frames or frame_counts(TINY_FRAMES if args.tiny else FULL_FRAMES)
    if args.splits is None:
        args.splits = [parse_split(text) for text in (TINY_SPLITS if args.device == "cpu" else FULL_SPLITS)]
    args.num_keyframes = args.num_keyframes or default_num_keyframes(args.tiny)
    if args.attn_implementation is None:
        args.attn_implementation = default_attn_implementation(args.device)
    if min(args.frames, default=0) < 1:
        parser.error(f"`--frames` needs at least one frame count and every count must be positive, got {args.frames}.")
    if args.max_new_tokens < 1:
        parser.error(f"`--max-new-tokens` must be at least 1, got {args.max_new_tokens}.")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("`--device cuda` needs a GPU and torch sees none; pass `--device cpu` (with `--tiny`).")
    num_gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    for split in args.splits:
        devices = split.devices() - {"cpu"}
        if args.device == "cpu" and (devices or split.device_map == "balanced_low_0"):
            parser.error(
                f"`--split {split.name}` places the model on GPUs, but `--device cpu` maps it onto the CPU only."
            )
        if devices and max(devices) >= num_gpus:
            parser.error(f"`--split {split.name}` names GPU {max(devices)}, but torch sees {num_gpus} GPUs.")
    return args


def gpu_indices(args: argparse.Namespace) -> list[int]:
    return list(range(torch.cuda.device_count())) if args.device == "cuda" else []


def synchronize_all(args: argparse.Namespace):
    """Waits for every GPU's queued work, so that a host clock read after it covers that work."""
    for index in gpu_indices(args):
        torch.cuda.synchronize(index)


def release_memory(args: argparse.Namespace):
    """Frees cached blocks (the automatic vision chunk reads free memory) and starts a new peak on every GPU."""
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    for index in gpu_indices(args):
        torch.cuda.reset_peak_memory_stats(index)


def measure_run(model: ViLaMPForConditionalGeneration, inputs: dict, args: argparse.Namespace) -> Run:
    """One greedy `generate` with the prefill step's stages recorded."""
    release_memory(args)
    capture = PrefillCapture(model, lambda: synchronize_all(args))
    try:
        synchronize_all(args)
        start_time = time.perf_counter()
        output_ids = model.generate(**inputs, **exact_length_generate_kwargs(model, args.max_new_tokens))
        synchronize_all(args)
        end_time = time.perf_counter()
    finally:
        capture.remove()
    return Run(
        new_ids=output_ids[0, inputs["input_ids"].shape[1] :].tolist(),
        chunk_size=capture.chunk_size,
        first_token_seconds=capture.first_token_time - start_time,
        generate_seconds=end_time - start_time,
        peak_gib=[torch.cuda.max_memory_allocated(index) / 2**30 for index in gpu_indices(args)],
        records=capture.to_cpu(),
        first_logits=capture.first_logits[0].cpu(),
    )


def build_checkpoint(directory: Path, config: ViLaMPConfig, args: argparse.Namespace) -> str:
    """Saves the random model (seed 0) to `directory` unless it holds one; says what it did."""
    if (directory / "config.json").is_file():
        return f"reused {directory}"
    start_time = time.perf_counter()
    temporary = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    torch.manual_seed(0)
    model = build_random_model(config, device="cuda:0" if args.device == "cuda" else "cpu", dtype=args.dtype)
    model.save_pretrained(temporary)
    del model
    release_memory(args)
    os.replace(temporary, directory)
    return f"built and saved to {directory} in {time.perf_counter() - start_time:.1f} s"


def load(checkpoint: Path, device_map, max_memory, args) -> tuple[ViLaMPForConditionalGeneration, float]:
    """The saved model loaded through `device_map`, and the seconds it took."""
    start_time = time.perf_counter()
    overrides = {} if args.vision_chunk_size is None else {"vision_chunk_size": args.vision_chunk_size}
    model = ViLaMPForConditionalGeneration.from_pretrained(
        checkpoint,
        dtype=getattr(torch, args.dtype),
        attn_implementation=args.attn_implementation,
        device_map=device_map,
        max_memory=max_memory,
        **overrides,
    )
    return model.eval(), time.perf_counter() - start_time


def warm_up(model: ViLaMPForConditionalGeneration, frames: torch.Tensor, args: argparse.Namespace):
    """One short `generate`: the first call of each kernel is not timed."""
    num_frames = min(WARM_UP_FRAMES, *args.frames)
    inputs = video_inputs(model.config, frames, num_frames, args.num_keyframes, model.device)
    model.generate(**inputs, **exact_length_generate_kwargs(model, 2))


def row_cells(label: str, num_frames: int, run: Run | None, comparison: dict | None) -> list:
    if run is None:
        return [label, num_frames, "-", "-", "-", "-", "OOM", "-", "-"]
    if comparison is None:
        same_ids = "reference" if label == REFERENCE else "no reference (one device ran out of memory)"
        comparison = {"same ids": same_ids, "logits": "-", "first difference": "-"}
    peak = " / ".join(f"{gib:.1f}" for gib in run.peak_gib) or "n/a"
    return [
        label,
        num_frames,
        format_number(run.chunk_size, 0),
        comparison["same ids"],
        comparison["logits"],
        comparison["first difference"],
        peak,
        f"{run.first_token_seconds:.2f}",
        f"{run.generate_seconds:.2f}",
    ]


def report(label: str, num_frames: int, run: Run | None, reference: Run | None, rows: list) -> Run | None:
    """Prints the diagnosis line of a run and keeps its table row."""
    if run is None:
        print(f"- {num_frames} frames: out of memory", flush=True)
        rows.append(row_cells(label, num_frames, None, None))
        return None
    comparison = None if reference is None else compare(reference, run)
    line = f"- {num_frames} frames: chunk {run.chunk_size}, first token {run.first_token_seconds:.2f} s"
    if comparison is not None:
        line += (
            f"; same ids as one device: {comparison['same ids']}; first-step logits max abs diff "
            f"{comparison['logits']}; first stage that differs: {comparison['first difference']} "
            f"({len(run.records)} outputs recorded)"
        )
    print(line, flush=True)
    rows.append(row_cells(label, num_frames, run, comparison))
    return run


def try_run(model: ViLaMPForConditionalGeneration, frames: torch.Tensor, num_frames: int, args) -> Run | None:
    """`measure_run` on the first `num_frames` frames, `None` when a GPU runs out of memory."""
    inputs = video_inputs(model.config, frames, num_frames, args.num_keyframes, model.device)
    try:
        return measure_run(model, inputs, args)
    except torch.cuda.OutOfMemoryError:
        release_memory(args)
        return None


def measure_reference(checkpoint: Path, frames: torch.Tensor, args: argparse.Namespace, rows: list):
    """Runs every frame count on one device, and the two control rows at the smallest count."""
    device = "cuda:0" if args.device == "cuda" else "cpu"
    model, load_seconds = load(checkpoint, device, None, args)
    print(f"\n### {REFERENCE}: `device_map={device!r}`\n")
    print(f"- devices: {placement(model)}; loaded in {load_seconds:.1f} s", flush=True)
    weights = tensor_checksums(model)
    runs = {}
    with torch.inference_mode():
        warm_up(model, frames, args)
        for num_frames in args.frames:
            runs[num_frames] = report(REFERENCE, num_frames, try_run(model, frames, num_frames, args), None, rows)
        num_frames = min(args.frames)
        reference = runs[num_frames]
        if args.controls and reference is not None:
            print("- control, the same model and inputs again:", flush=True)
            report("one device again", num_frames, try_run(model, frames, num_frames, args), reference, rows)
            chunk_size = max(1, reference.chunk_size // 2)
            print(f"- control, vision chunk {chunk_size} instead of {reference.chunk_size}:", flush=True)
            saved_chunk_size, model.config.vision_chunk_size = model.config.vision_chunk_size, chunk_size
            run = try_run(model, frames, num_frames, args)
            report(f"one device, chunk {chunk_size}", num_frames, run, reference, rows)
            model.config.vision_chunk_size = saved_chunk_size
    del model
    release_memory(args)
    return runs, weights


def measure_split(split: Split, checkpoint: Path, frames, args, reference_runs: dict, reference_weights: dict, rows):
    """
    Loads the model through the split's device map and compares every frame count with one device. An error (a
    split the model cannot run) is printed with its message, in the table too, and the next split runs.
    """
    max_memory = f", `max_memory={split.max_memory}`" if split.max_memory else ""
    print(f"\n### split `{split.name}`: `device_map={split.device_map!r}`{max_memory}\n", flush=True)
    model, done = None, []
    try:
        model, load_seconds = load(checkpoint, split.device_map, split.max_memory, args)
        print(f"- devices: {placement(model)}; loaded in {load_seconds:.1f} s", flush=True)
        print(f"- weights: {compare_weights(reference_weights, tensor_checksums(model))}", flush=True)
        with torch.inference_mode():
            warm_up(model, frames, args)
            for num_frames in args.frames:
                run = try_run(model, frames, num_frames, args)
                report(split.name, num_frames, run, reference_runs[num_frames], rows)
                done.append(num_frames)
    except Exception as error:  # a split that fails is a result: its message goes in the table
        message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        print(f"- error: {message}", flush=True)
        for num_frames in args.frames[len(done) :]:
            rows.append([split.name, num_frames, "-", f"error: {message.replace('|', '/')}", "-", "-", "-", "-", "-"])
    del model
    release_memory(args)


def print_header(args: argparse.Namespace, config: ViLaMPConfig, checkpoint_note: str):
    if args.device == "cuda":
        names = [torch.cuda.get_device_name(index) for index in gpu_indices(args)]
        device = f"{len(names)} x {names[0]}" if len(set(names)) == 1 else ", ".join(names)
    else:
        device = "CPU"
    import accelerate

    vision, text = config.vision_config, config.text_config
    print("# ViLaMP model-split benchmark\n")
    print(f"- command: `python {shlex.join(sys.argv)}`")
    print(f"- device: {device}; dtype: {args.dtype}; attention: {args.attn_implementation}")
    print(f"- torch {torch.__version__}, transformers {transformers.__version__}, accelerate {accelerate.__version__}")
    print(
        f"- model: {'tiny' if args.tiny else 'full size'}, random weights (seed 0): SigLIP {vision.num_hidden_layers} "
        f"layers x {vision.hidden_size}, text {text.num_hidden_layers} layers x {text.hidden_size}; {checkpoint_note}"
    )
    print(
        f"- frames: synthetic uint8 {vision.image_size}x{vision.image_size} on the host, repeated; K = "
        f"{args.num_keyframes} keyframes spread evenly; vision chunk: {args.vision_chunk_size or 'from free memory'}"
    )
    print(
        f"- decoding: greedy, {args.max_new_tokens} tokens; splits: {', '.join(split.name for split in args.splits)}"
    )
    print(
        "- first stage that differs: the first output of the prefill step, in the order of the calls, whose bits "
        "differ from one device's (checksums of the query projection, SigLIP embeddings and encoder, projector and DFM "
        "per vision chunk, inputs_embeds, rotary cos/sin, each decoder layer, final norm, logits)",
        flush=True,
    )


def main(argv=None):
    args = parse_args(argv)
    turn_off_nvlink_multicast()
    # loading bars would bury the tables in a log's tail
    transformers.utils.logging.disable_progress_bar()
    start_time = time.perf_counter()
    config = build_config(args.tiny)
    checkpoint = args.work_dir / f"vilamp-{'tiny' if args.tiny else 'full-size'}-random-{args.dtype}"
    checkpoint_note = build_checkpoint(checkpoint, config, args)
    frames = repeated_frames(max(args.frames), config.vision_config.image_size)
    print_header(args, config, checkpoint_note)

    rows = []
    reference_runs, reference_weights = measure_reference(checkpoint, frames, args, rows)
    for split in args.splits:
        measure_split(split, checkpoint, frames, args, reference_runs, reference_weights, rows)

    print("\n## Every split against one device")
    print_table_start(COLUMNS)
    for row in rows:
        print(markdown_row(row))
    print(
        f"\nchunk: frames per vision chunk (the first SigLIP call's). peak GiB: `torch.cuda.max_memory_allocated` of "
        f"each GPU during the row's `generate`. first token: from the `generate` call to the prefill step's logits. "
        f"Total {time.perf_counter() - start_time:.0f} s.",
        flush=True,
    )


if __name__ == "__main__":
    main()
