"""
LoRA training-step benchmark: peak GPU memory and seconds per step of one LoRA step (forward, backward, optimizer step)
of ViLaMP on long videos, printed as a markdown table.

Builds the full-size architecture (SigLIP so400m, Qwen2-7B, K = 32) with random weights directly on the device, wraps
it with the package's LoRA config (adapters on the language model only; optionally the projector and the DFM trained in
full), and feeds it synthetic uint8 frames with evenly spread keyframes and a short answer as the only labels. Each row
runs one warm-up step, then times `--steps` steps.

    python bench/lora_step.py                                   # full size, 600 and 2000 frames, one GPU
    python bench/lora_step.py --frames 600 --trainable lora+projector+dfm --no-gradient-checkpointing
    python bench/lora_step.py --tiny --device cpu               # tiny config, seconds: proves that it runs
"""

import argparse
import shlex
import sys
import time

import torch
import transformers
from bench_utils import (
    ANSWER_LENGTH,
    DTYPES,
    FULL_NUM_KEYFRAMES,
    TRAINABLE_CONFIGURATIONS,
    build_training_model,
    default_attn_implementation,
    default_num_keyframes,
    device_name,
    format_number,
    frame_counts,
    markdown_row,
    peak_memory_gib,
    print_table_start,
    repeated_frames,
    reset_peak_memory,
    synchronize,
    training_inputs,
)

from vilamp.testing import TINY_NUM_KEYFRAMES
from vilamp.training import lora_config

FULL_FRAMES = "600,2000"
TINY_FRAMES = "16,64"
COLUMNS = ["frames", "trainable", "tokens", "trainable params", "peak GPU GiB", "s / step"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--frames",
        type=frame_counts,
        help=f"comma-separated frame counts (default {FULL_FRAMES}; {TINY_FRAMES} with --tiny)",
    )
    parser.add_argument(
        "--trainable",
        default="lora,lora+projector+dfm",
        help=f"comma-separated configurations among {list(TRAINABLE_CONFIGURATIONS)} (default: %(default)s)",
    )
    parser.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--attn-implementation", help="language model attention (default flash_attention_2 if installed, else sdpa)"
    )
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="activation checkpointing in both towers (default: on)",
    )
    parser.add_argument("--vision-chunk-size", type=int, help="frames per vision chunk (default: from free memory)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per row, after one warm-up step")
    parser.add_argument("--num-keyframes", type=int, help=f"keyframes per video K (default {FULL_NUM_KEYFRAMES})")
    parser.add_argument("--tiny", action="store_true", help=f"tiny config, K = {TINY_NUM_KEYFRAMES}: runs on a CPU")
    args = parser.parse_args()
    if args.num_keyframes is None:
        args.num_keyframes = default_num_keyframes(args.tiny)
    args.frames = args.frames or frame_counts(TINY_FRAMES if args.tiny else FULL_FRAMES)
    args.trainable = args.trainable.split(",")
    unknown = sorted(set(args.trainable) - set(TRAINABLE_CONFIGURATIONS))
    if unknown:
        parser.error(f"`--trainable` takes {list(TRAINABLE_CONFIGURATIONS)}, got {unknown}.")
    if min(args.frames) < 1 or args.steps < 1:
        parser.error(f"`--frames` must be positive and `--steps` at least 1, got {args.frames} and {args.steps}.")
    if args.attn_implementation is None:
        args.attn_implementation = default_attn_implementation(args.device)
    return args


def training_step(model, optimizer, inputs: dict):
    """Forward, backward and optimizer step."""
    model(**inputs, use_cache=False).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure_row(base_model, frames: torch.Tensor, num_frames: int, trainable: str, args: argparse.Namespace) -> list:
    """The cells of one row: the model wrapped for `trainable`, one warm-up step, then the mean of `--steps` steps."""
    from peft import get_peft_model

    device = torch.device(args.device)
    inputs = training_inputs(base_model.config, frames, num_frames, args.num_keyframes, device)
    model = get_peft_model(
        base_model,
        lora_config(r=args.lora_rank, modules_to_save=TRAINABLE_CONFIGURATIONS[trainable], lora_dropout=0.0),
    )
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    cells = [num_frames, trainable, inputs["input_ids"].shape[1], f"{sum(p.numel() for p in parameters):,}"]
    optimizer = torch.optim.AdamW(parameters, lr=1e-5)
    try:
        reset_peak_memory(device)
        training_step(model, optimizer, inputs)
        synchronize(device)
        start_time = time.perf_counter()
        for _ in range(args.steps):
            training_step(model, optimizer, inputs)
        synchronize(device)
        seconds = (time.perf_counter() - start_time) / args.steps
        return cells + [format_number(peak_memory_gib(device), 1), f"{seconds:.2f}"]
    except torch.cuda.OutOfMemoryError:
        return cells + ["OOM", "-"]
    finally:
        del optimizer, parameters
        model.unload()  # back to the bare base model for the next configuration
        reset_peak_memory(device)


def main():
    args = parse_args()
    device = torch.device(args.device)
    print("# ViLaMP: one LoRA training step (forward + backward + AdamW step)")
    print(f"- device: {device_name(device)}; dtype {args.dtype}; attention {args.attn_implementation}")
    print(f"- torch {torch.__version__}, transformers {transformers.__version__}")
    print(
        f"- LoRA rank {args.lora_rank} on every language-model projection; vision tower frozen; "
        f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}; answer of {ANSWER_LENGTH} tokens"
    )
    print(f"- command: python {shlex.join(sys.argv)}")
    base_model = build_training_model(args)
    frames = repeated_frames(max(args.frames), base_model.config.vision_config.image_size)
    print_table_start(COLUMNS)
    for num_frames in args.frames:
        for trainable in args.trainable:
            print(markdown_row(measure_row(base_model, frames, num_frames, trainable, args)), flush=True)
    print(
        "\ntokens: prompt with the expanded video placeholders and the answer; s / step: mean over "
        f"{args.steps} step(s) after one warm-up step; peak: the largest allocation over all of a row's steps.",
        flush=True,
    )


if __name__ == "__main__":
    main()
