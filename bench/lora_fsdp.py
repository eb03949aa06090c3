"""
LoRA fine-tuning with FSDP: seconds per step, peak memory per GPU and the losses of the first steps of ViLaMP sharded
over the ranks of `torchrun` (`training.shard_model`), next to one process training on the same global batches, as a
markdown table.

Every rank builds the same random model (full size, or `--tiny`) with the package's LoRA config and trains it on its own
video of each global batch: rank r takes sample `step * ranks + r`, a synthetic video with evenly spread keyframes and a
short answer as the only labels (each sample starts at another frame of the pool, so the ranks see different videos).
Then rank 0 alone builds the model again from the same seed and trains it on the same global batches, one video at a
time with gradient accumulation (the loss of each divided by the number of ranks, as FSDP averages the ranks'
gradients). Both start every frame count from the same initial adapter weights.

    torchrun --nproc_per_node 2 bench/lora_fsdp.py                                      # full size, 600 and 2000 frames
    torchrun --nproc_per_node 2 bench/lora_fsdp.py --tiny --device cpu --dtype float32  # tiny, CPU gloo processes
"""

import argparse
import shlex
import sys
import time

import torch
import transformers
from bench_utils import (
    ANSWER_LENGTH,
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
    start_process_group,
    synchronize,
    training_inputs,
)
from torch import distributed as dist

from vilamp.testing import TINY_NUM_KEYFRAMES
from vilamp.training import lora_config, shard_model

FULL_FRAMES = "600,2000"
TINY_FRAMES = "4,8"
# the DFM's 0-d `tau` cannot be sharded, so `shard_model` refuses a trainable DFM
FSDP_CONFIGURATIONS = ("lora", "lora+projector")
# Largest difference between the losses of FSDP and of one process for which the table says "yes". float32 on the CPU:
# the two sum the same gradients in another order, so the losses may differ in the last bits. Half precision on GPUs:
# the forward passes run the same kernels on the same shapes, but gradients reduced across GPUs round differently from
# gradients accumulated in one, and half-precision weights and activations carry such differences on (about 0.1% of a
# loss of 12).
LOSS_TOLERANCE = {"float32": 1e-5, "bfloat16": 1e-2, "float16": 1e-2}
COLUMNS = [
    "frames",
    "tokens / video",
    "ranks",
    "1 process s / step",
    "FSDP s / step",
    "speed-up",
    "1 process peak GiB",
    "FSDP peak GiB (each rank)",
    "1 process losses",
    "FSDP losses",
    "max abs loss diff",
    "equal",
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--frames", type=frame_counts, help=f"frames per video (default {FULL_FRAMES}; {TINY_FRAMES} with --tiny)"
    )
    parser.add_argument(
        "--trainable",
        default="lora+projector",
        choices=FSDP_CONFIGURATIONS,
        help="what is trained: the adapters, or the adapters and the projector (default: %(default)s, as "
        "examples/finetune_lora.py does)",
    )
    parser.add_argument("--dtype", default="bfloat16", choices=list(LOSS_TOLERANCE))
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cuda: one GPU per rank, NCCL")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="AdamW's (default: %(default)s)")
    parser.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="activation checkpointing in both towers (default: on)",
    )
    parser.add_argument(
        "--vision-chunk-size",
        type=int,
        default=32,
        help="frames per vision chunk, fixed so that both runs encode the same chunks (default: %(default)s)",
    )
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per frame count (default: %(default)s)")
    parser.add_argument("--num-keyframes", type=int, help=f"keyframes per video K (default {FULL_NUM_KEYFRAMES})")
    parser.add_argument("--tiny", action="store_true", help=f"tiny config, K = {TINY_NUM_KEYFRAMES}: runs on a CPU")
    args = parser.parse_args()
    args.frames = args.frames or frame_counts(TINY_FRAMES if args.tiny else FULL_FRAMES)
    args.num_keyframes = args.num_keyframes or default_num_keyframes(args.tiny)
    if not args.frames or min(args.frames) < 1 or args.steps < 2:
        parser.error(
            f"`--frames` must be positive frame counts and `--steps` at least 2 (the first is not timed), got "
            f"{args.frames} and {args.steps}."
        )
    # what `build_training_model` reads
    args.attn_implementation = default_attn_implementation(args.device)
    return args


def build_lora_model(args: argparse.Namespace):
    """The random model of every run, drawn from the same seed, with deterministic adapters (no dropout)."""
    from peft import get_peft_model

    torch.manual_seed(0)
    config = lora_config(r=args.lora_rank, lora_dropout=0.0, modules_to_save=TRAINABLE_CONFIGURATIONS[args.trainable])
    return get_peft_model(build_training_model(args), config)


def trainable_parameters(model) -> dict[str, torch.Tensor]:
    return {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}


def global_batches(config, args: argparse.Namespace, num_frames: int, world_size: int, device: torch.device) -> list:
    """`--steps` global batches, each a list of one training video per rank."""
    frames = repeated_frames(num_frames + args.steps * world_size, config.vision_config.image_size)
    return [
        [
            training_inputs(config, frames[sample:], num_frames, args.num_keyframes, device)
            for sample in range(step * world_size, (step + 1) * world_size)
        ]
        for step in range(args.steps)
    ]


def train(
    model, batches: list, train_step, learning_rate: float, device: torch.device, group
) -> tuple[list[float], float, float | None]:
    """Runs `train_step(model, optimizer, global_batch)` on each global batch from a fresh AdamW and returns the losses,
    the mean seconds of the steps after the first, and the peak memory in GiB (`None` on the CPU)."""
    optimizer = torch.optim.AdamW(list(trainable_parameters(model).values()), lr=learning_rate)
    reset_peak_memory(device)
    losses, seconds = [], []
    for batch in batches:
        synchronize(device)
        dist.barrier(group)
        start_time = time.perf_counter()
        losses.append(train_step(model, optimizer, batch))
        synchronize(device)
        dist.barrier(group)
        seconds.append(time.perf_counter() - start_time)
    peak = peak_memory_gib(device)
    del optimizer
    return losses, sum(seconds[1:]) / len(seconds[1:]), peak


def fsdp_step(model, optimizer, batch: list) -> float:
    """One step of the sharded model on this rank's video; returns the loss averaged over the ranks."""
    loss = model(**batch[dist.get_rank()], use_cache=False).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss = loss.detach().clone()
    dist.all_reduce(loss)
    return loss.item() / dist.get_world_size()


def accumulated_step(model, optimizer, batch: list) -> float:
    """One step of the whole model on every video of the global batch in turn; returns the mean loss."""
    total = 0.0
    for inputs in batch:
        loss = model(**inputs, use_cache=False).loss / len(batch)
        loss.backward()
        total += loss.item()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def run_frame_counts(
    model, batches_by_frames: dict, train_step, learning_rate: float, device: torch.device, group
) -> dict:
    """Trains `model` on the batches of each frame count, each time from the same initial trainable weights; returns
    what `train` returns, by frame count."""
    initial = {name: parameter.detach().clone() for name, parameter in trainable_parameters(model).items()}
    results = {}
    for num_frames, batches in batches_by_frames.items():
        with torch.no_grad():
            for name, parameter in trainable_parameters(model).items():
                parameter.copy_(initial[name])
        results[num_frames] = train(model, batches, train_step, learning_rate, device, group)
    return results


def format_losses(losses: list[float]) -> str:
    return ", ".join(f"{loss:.4f}" for loss in losses)


def print_header(args: argparse.Namespace, world_size: int, device: torch.device):
    print("# ViLaMP: LoRA fine-tuning with FSDP against one process\n")
    print(f"- command: `torchrun --nproc_per_node {world_size} {shlex.join(sys.argv)}`")
    print(
        f"- device: {world_size} x {device_name(device)}; backend: {dist.get_backend()}; dtype: {args.dtype}; "
        f"attention {args.attn_implementation}"
    )
    print(f"- torch {torch.__version__}, transformers {transformers.__version__}")
    checkpointing = "on" if args.gradient_checkpointing else "off"
    print(
        f"- model: {'tiny' if args.tiny else 'full size'}, random weights; K = {args.num_keyframes}; vision chunks "
        f"of {args.vision_chunk_size} frames; gradient checkpointing {checkpointing}"
    )
    print(
        f"- trained: {args.trainable}, LoRA rank {args.lora_rank}; AdamW, learning rate {args.learning_rate}; "
        f"answer of {ANSWER_LENGTH} tokens; global batch of {world_size} videos, {args.steps} steps"
    )
    print(
        f"- FSDP: `training.shard_model`, each rank one video per step; 1 process: rank 0 alone, the {world_size} "
        "videos one after the other with gradient accumulation"
    )
    tolerance = LOSS_TOLERANCE[args.dtype]
    print(f"- equal: every step's loss within {tolerance:g} of one process's ({args.dtype})", flush=True)


def log(message: str):
    """Progress on rank 0, on stderr, so that a run cut short still shows how far it came."""
    if dist.get_rank() == 0:
        print(f"[lora_fsdp {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def log_results(what: str, results: dict):
    for num_frames, (losses, seconds, peak) in results.items():
        log(
            f"{what}, {num_frames} frames: losses {format_losses(losses)}; {seconds:.2f} s / step; peak "
            f"{format_number(peak, 1)} GiB (rank 0)"
        )


def main():
    args = parse_args()
    device = start_process_group(args.device)
    # `build_training_model` creates the weights on this rank's device
    args.device = str(device)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    # every rank takes part in creating a group, rank 0 alone trains in it
    rank_zero_group = dist.new_group([0])
    if rank == 0:
        print_header(args, world_size, device)

    model = shard_model(build_lora_model(args), device)
    log("built and sharded the model")
    batches_by_frames = {
        num_frames: global_batches(model.config, args, num_frames, world_size, device) for num_frames in args.frames
    }
    fsdp_results = run_frame_counts(model, batches_by_frames, fsdp_step, args.learning_rate, device, None)
    log_results("FSDP", fsdp_results)
    fsdp_peaks = [None] * world_size
    dist.all_gather_object(fsdp_peaks, {num_frames: result[2] for num_frames, result in fsdp_results.items()})
    del model
    reset_peak_memory(device)
    if device.type == "cuda":
        log(f"{torch.cuda.memory_allocated(device) / 2**30:.2f} GiB still allocated after freeing the sharded model")

    if rank == 0:
        single_model = build_lora_model(args)
        log("built the model for one process")
        single_results = run_frame_counts(
            single_model, batches_by_frames, accumulated_step, args.learning_rate, device, rank_zero_group
        )
        log_results("1 process", single_results)
        print_table_start(COLUMNS)
        tolerance = LOSS_TOLERANCE[args.dtype]
        for num_frames, (single_losses, single_seconds, single_peak) in single_results.items():
            fsdp_losses, fsdp_seconds, _ = fsdp_results[num_frames]
            difference = max(abs(a - b) for a, b in zip(fsdp_losses, single_losses))
            peaks = " / ".join(format_number(rank_peaks[num_frames], 1) for rank_peaks in fsdp_peaks)
            tokens = batches_by_frames[num_frames][0][0]["input_ids"].shape[1]
            row = [num_frames, tokens, world_size, f"{single_seconds:.2f}", f"{fsdp_seconds:.2f}"]
            row += [f"{single_seconds / fsdp_seconds:.2f}", format_number(single_peak, 1), peaks]
            row += [format_losses(single_losses), format_losses(fsdp_losses), f"{difference:.1e}"]
            print(markdown_row(row + ["yes" if difference <= tolerance else "no"]), flush=True)
        print(
            f"\ns / step: mean of steps 2 to {args.steps} (the first holds first-call costs); peak: the largest "
            "allocation over a frame count's steps; losses: the mean over the global batch at each step.",
            flush=True,
        )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
