"""
Frame-parallel benchmark: one long video encoded across the ranks of `torchrun`, against one rank, as a markdown table.

Every rank builds the same random model (full size, or `--tiny`) and the same synthetic video with evenly spread
keyframes. For each frame count, rank 0 first encodes the video alone (a process group of rank 0 only: the one-GPU
baseline), then all ranks encode it together (`model.enable_frame_parallel()`, each rank a contiguous span of frames)
and run `generate` for one token. The table gives both times, the time to the first token, the largest difference
between the two encodings' tokens, and the peak memory of the most loaded rank.

    torchrun --nproc_per_node 4 bench/frame_parallel_encoding.py                       # full size, 4 GPUs (NCCL)
    torchrun --nproc_per_node 2 bench/frame_parallel_encoding.py --tiny --device cpu   # tiny config on CPU gloo processes
"""

import argparse
import shlex
import sys
import time

import torch
import transformers
from bench_utils import (
    DTYPES,
    FULL_NUM_KEYFRAMES,
    build_config,
    build_random_model,
    default_attn_implementation,
    default_num_keyframes,
    device_name,
    frame_counts,
    markdown_row,
    peak_memory_gib,
    print_table_start,
    repeated_frames,
    reset_peak_memory,
    start_process_group,
    synchronize,
    video_inputs,
)
from torch import distributed as dist

FULL_FRAMES = "600,10000,100000"
TINY_FRAMES = "5,16,64"
COLUMNS = [
    "frames",
    "ranks",
    "1-rank vision+DFM s",
    "vision+DFM s",
    "speed-up",
    "first token s",
    "max abs token diff",
    "peak GPU GiB (max rank)",
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=frame_counts, help=f"frame counts to measure (default {FULL_FRAMES})")
    parser.add_argument("--num-keyframes", type=int, help=f"keyframes per video K (default {FULL_NUM_KEYFRAMES})")
    parser.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cuda: one GPU per rank, NCCL")
    parser.add_argument("--vision-chunk-size", type=int, help="frames per vision chunk (default: from free memory)")
    parser.add_argument("--tiny", action="store_true", help=f"tiny config, K = 2, frames {TINY_FRAMES}: runs on a CPU")
    args = parser.parse_args()
    args.frames = args.frames or frame_counts(TINY_FRAMES if args.tiny else FULL_FRAMES)
    args.num_keyframes = args.num_keyframes or default_num_keyframes(args.tiny)
    if not args.frames or min(args.frames) < 1:
        parser.error(f"`--frames` needs at least one frame count and every count must be positive, got {args.frames}.")
    return args


def timed_on_ranks(function, device: torch.device, group) -> tuple[float, object]:
    """Runs `function` on every rank of `group` and returns the seconds from the first rank's start to the last
    rank's end, and what `function` returned."""
    synchronize(device)
    dist.barrier(group)
    start_time = time.perf_counter()
    result = function()
    synchronize(device)
    dist.barrier(group)
    return time.perf_counter() - start_time, result


def main():
    args = parse_args()
    device = start_process_group(args.device)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    config = build_config(args.tiny, vision_chunk_size=args.vision_chunk_size)
    attn_implementation = default_attn_implementation(args.device)
    model = build_random_model(config, device=device, dtype=args.dtype, attn_implementation=attn_implementation)
    config = model.config
    frames = repeated_frames(max(args.frames), config.vision_config.image_size)
    # every rank takes part in creating a group, rank 0 alone encodes in it
    rank_zero_group = dist.new_group([0])

    if rank == 0:
        print("# ViLaMP frame-parallel benchmark\n")
        print(f"- command: `torchrun --nproc_per_node {world_size} {shlex.join(sys.argv)}`")
        print(f"- device: {world_size} x {device_name(device)}; backend: {dist.get_backend()}; dtype: {args.dtype}")
        print(f"- torch {torch.__version__}, transformers {transformers.__version__}")
        print(f"- model: {'tiny' if args.tiny else 'full size'}, random weights; K = {args.num_keyframes}")
        print_table_start(COLUMNS)

    with torch.inference_mode():
        # warm-up: the first call of each kernel and of each collective is not timed
        inputs = video_inputs(config, frames, min(args.frames), args.num_keyframes, device)
        model.enable_frame_parallel()
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
        for num_frames in args.frames:
            inputs = video_inputs(config, frames, num_frames, args.num_keyframes, device)
            video_args = {name: inputs[name] for name in ("pixel_values_videos", "keyframe_mask", "query_embeds")}
            single_seconds = single_tokens = None
            if rank == 0:
                model.enable_frame_parallel(rank_zero_group)
                single_seconds, single_tokens = timed_on_ranks(
                    lambda: model.get_video_features(**video_args).pooler_output[0], device, rank_zero_group
                )
            model.enable_frame_parallel()
            reset_peak_memory(device)
            parallel_seconds, tokens = timed_on_ranks(
                lambda: model.get_video_features(**video_args).pooler_output[0], device, None
            )
            first_token_seconds, _ = timed_on_ranks(
                lambda: model.generate(**inputs, max_new_tokens=1, do_sample=False), device, None
            )
            peak = torch.tensor([peak_memory_gib(device) or 0.0], device=device)
            dist.all_reduce(peak, op=dist.ReduceOp.MAX)
            if rank == 0:
                token_diff = (tokens.float() - single_tokens.float()).abs().max().item()
                peak_cell = f"{peak.item():.1f}" if device.type == "cuda" else "n/a"
                row = [num_frames, world_size, f"{single_seconds:.2f}", f"{parallel_seconds:.2f}"]
                row += [f"{single_seconds / parallel_seconds:.2f}", f"{first_token_seconds:.2f}", f"{token_diff:.1e}"]
                print(markdown_row(row + [peak_cell]), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
