"""
Long-video benchmark: peak GPU memory and time per stage of ViLaMP for growing frame counts, printed as markdown tables.

Builds the full-size architecture (SigLIP so400m, Qwen2-7B, K = 32) with random weights directly on the device, feeds
it synthetic uint8 frames with evenly spread keyframes, and measures for each frame count one `generate` call split
into its stages (vision+DFM, prefill, first token, decoding), next to the SigLIP-only throughput on the same frames.
Then it encodes the frames unstreamed (`vision_chunk_size` = number of frames, the original's way) until it runs out
of memory.

Decoding is timed as a user gets it: generate with `--max-new-tokens` N+1 tokens and with 1 token, and take the
difference per token, with no clock, streamer or device synchronisation inside the decoding loop. The first N-token
`generate` of each prompt length is a cold start (with `--cache-implementation static` it compiles the decoding step);
it is timed apart (the `decode cold extra s` column) from the steady-state figure, which comes from a second call. The
same steady figure is measured for transformers' own `Qwen2ForCausalLM` over the same language model weights (the
same modules, no copy) on a text prompt of the same length, in the same run (`Qwen2 decode ms/token`).

    python bench/long_video.py                                # full size, one GPU
    python bench/long_video.py --frames 600 --unstreamed-frames "" --cache-implementation static
    python bench/long_video.py --frames 100000 --unstreamed-frames ""
    python bench/long_video.py --tiny --device cpu            # tiny config, seconds: proves that it runs
"""

import argparse
import shlex
import sys
import time
from dataclasses import dataclass

import torch
import transformers
from bench_utils import (
    DTYPES,
    FRAME_POOL_SIZE,
    FULL_NUM_KEYFRAMES,
    PROMPT_TEXT_IDS,
    build_config,
    build_random_model,
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
    timed_generate,
    video_inputs,
)
from transformers import PreTrainedModel, Qwen2ForCausalLM

from vilamp.modeling_vilamp import ViLaMPForConditionalGeneration

FULL_FRAMES = "600,2000,10000,30000,100000"
FULL_UNSTREAMED_FRAMES = "600,1000,1500,2000,3000"
TINY_FRAMES = "16,64"
CACHE_IMPLEMENTATIONS = ("dynamic", "static")

STREAMED_COLUMNS = [
    "frames",
    "chunk",
    "prompt tokens",
    "peak GPU GiB",
    "vision+DFM s",
    "prefill s",
    "first token s",
    "decode ms/token",
    "Qwen2 decode ms/token",
    "decode cold extra s",
    "frames/s",
    "SigLIP-only frames/s",
    "ratio",
]
UNSTREAMED_COLUMNS = ["frames", "chunk", "peak GPU GiB", "vision+DFM s", "frames/s"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=frame_counts, help=f"frame counts to measure (default {FULL_FRAMES})")
    parser.add_argument("--num-keyframes", type=int, help=f"keyframes per video K (default {FULL_NUM_KEYFRAMES})")
    parser.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--attn-implementation", help="attention of both towers (default flash_attention_2 if installed, else sdpa)"
    )
    parser.add_argument("--vision-chunk-size", type=int, help="frames per vision chunk (default: from free memory)")
    parser.add_argument(
        "--compile", action="store_true", help="compile the vision tower (`model.compile_vision_tower()`)"
    )
    parser.add_argument(
        "--cache-implementation",
        choices=CACHE_IMPLEMENTATIONS,
        default="dynamic",
        help="`generate`'s KV cache; static compiles the decoding step on the GPU (default: %(default)s)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=65,
        help="tokens of the long `generate`; decode ms/token is its time less a 1-token one's, per extra token "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--siglip-only-max-frames",
        type=int,
        help="measure the SigLIP-only ceiling on at most this many of each row's frames (default: all of them)",
    )
    parser.add_argument(
        "--unstreamed-frames",
        type=frame_counts,
        help=f'counts to encode in one chunk until out of memory; "" skips them (default {FULL_UNSTREAMED_FRAMES})',
    )
    parser.add_argument("--tiny", action="store_true", help=f"tiny config, K = 2, frames {TINY_FRAMES}: runs on a CPU")
    args = parser.parse_args()

    if args.frames is None:
        args.frames = frame_counts(TINY_FRAMES if args.tiny else FULL_FRAMES)
    if args.unstreamed_frames is None:
        args.unstreamed_frames = frame_counts(TINY_FRAMES if args.tiny else FULL_UNSTREAMED_FRAMES)
    if args.num_keyframes is None:
        args.num_keyframes = default_num_keyframes(args.tiny)
    if args.attn_implementation is None:
        args.attn_implementation = default_attn_implementation(args.device)
    if not args.frames or min(args.frames + args.unstreamed_frames) < 1:
        parser.error(f"`--frames` needs at least one frame count and every count must be positive, got {args.frames}.")
    if args.max_new_tokens < 1:
        parser.error(f"`--max-new-tokens` must be at least 1, got {args.max_new_tokens}.")
    return args


def build_model(args: argparse.Namespace) -> ViLaMPForConditionalGeneration:
    """The full-size ViLaMP (or the tiny one with `--tiny`) with random weights on the device, compiled with
    `--compile`."""
    config = build_config(args.tiny, vision_chunk_size=args.vision_chunk_size)
    model = build_random_model(
        config, device=args.device, dtype=args.dtype, attn_implementation=args.attn_implementation
    )
    if args.compile:
        model.compile_vision_tower()
    return model


@dataclass
class GenerationTimes:
    vision_seconds: float
    prefill_seconds: float  # from the language model's first forward to the first token
    first_token_seconds: float  # vision and prefill: what a 1-token `generate` takes
    decode_ms_per_token: float | None  # steady state; None when `--max-new-tokens` is 1
    decode_cold_extra_seconds: float | None  # the first long `generate`'s time beyond a steady one's


def measure_generation(model: PreTrainedModel, inputs: dict, args: argparse.Namespace) -> GenerationTimes:
    """
    Times a 1-token `generate` (vision, prefill, first token) and an N-token one, N = `--max-new-tokens`: decode
    ms/token = (language-model time of N tokens - that of 1 token) / (N - 1), from a second N-token call; the first
    one's extra time is the cold start (with a static cache, the decoding step's compilation for this prompt length).
    """
    device = torch.device(args.device)
    first = timed_generate(model, inputs, 1, device, args.cache_implementation)
    times = GenerationTimes(
        vision_seconds=first.vision_seconds,
        prefill_seconds=first.language_model_seconds,
        first_token_seconds=first.total_seconds,
        decode_ms_per_token=None,
        decode_cold_extra_seconds=None,
    )
    if args.max_new_tokens == 1:
        return times
    long_generate = (model, inputs, args.max_new_tokens, device, args.cache_implementation)
    cold = timed_generate(*long_generate)
    steady = timed_generate(*long_generate)
    decode_seconds = steady.language_model_seconds - first.language_model_seconds
    times.decode_ms_per_token = 1000 * decode_seconds / (args.max_new_tokens - 1)
    times.decode_cold_extra_seconds = cold.total_seconds - steady.total_seconds
    return times


def transformers_qwen2(model: ViLaMPForConditionalGeneration) -> Qwen2ForCausalLM:
    """transformers' own Qwen2 causal LM made of ViLaMP's language model and head: the same modules, no copy."""
    with torch.device("meta"):
        qwen2 = Qwen2ForCausalLM(model.config.text_config)
    qwen2.model, qwen2.lm_head = model.model.language_model, model.lm_head
    return qwen2.eval()


def measure_qwen2_decoding(qwen2: Qwen2ForCausalLM, prompt_length: int, args: argparse.Namespace) -> float | None:
    """Steady decode ms/token of transformers' Qwen2 on a text prompt of `prompt_length` tokens, timed by
    `measure_generation` as ViLaMP's is; None when `--max-new-tokens` is 1."""
    device = torch.device(args.device)
    input_ids = torch.tensor([[PROMPT_TEXT_IDS[index % len(PROMPT_TEXT_IDS)] for index in range(prompt_length)]])
    inputs = {"input_ids": input_ids.to(device), "attention_mask": torch.ones_like(input_ids, device=device)}
    return measure_generation(qwen2, inputs, args).decode_ms_per_token


def measure_siglip_only(
    model: ViLaMPForConditionalGeneration, frames: torch.Tensor, chunk_size: int, device: torch.device
) -> float:
    """Seconds for the SigLIP tower alone over `frames`, in chunks of `chunk_size` as the model streams them."""
    synchronize(device)
    start_time = time.perf_counter()
    for start in range(0, frames.shape[0], chunk_size):
        model.model.get_vision_features(frames[start : start + chunk_size])
    synchronize(device)
    return time.perf_counter() - start_time


def measure_video_features(model: ViLaMPForConditionalGeneration, inputs: dict, device: torch.device) -> float:
    """Seconds for `get_video_features`: SigLIP, projector, keyframe pooling and DFM."""
    synchronize(device)
    start_time = time.perf_counter()
    model.get_video_features(inputs["pixel_values_videos"], inputs["keyframe_mask"], inputs["query_embeds"])
    synchronize(device)
    return time.perf_counter() - start_time


def warm_up(model: ViLaMPForConditionalGeneration, frames: torch.Tensor, args: argparse.Namespace):
    """
    Runs each vision chunk shape that the streamed rows will use once (with `--compile` this compiles them), then one
    short `generate` on one chunk's frames.
    """
    device = torch.device(args.device)
    chunk_shapes = set()
    for num_frames in args.frames:
        chunk_size = model.model.get_vision_chunk_size(num_frames)
        chunk_shapes |= {chunk_size, num_frames % chunk_size} - {0}
    for num_frames in sorted(chunk_shapes):
        measure_video_features(
            model, video_inputs(model.config, frames, num_frames, args.num_keyframes, device), device
        )
    inputs = video_inputs(model.config, frames, max(chunk_shapes), args.num_keyframes, device)
    timed_generate(model, inputs, 2, device, args.cache_implementation)


def streamed_row(
    model: ViLaMPForConditionalGeneration, frames: torch.Tensor, num_frames: int, args: argparse.Namespace
) -> list:
    """The cells of one row of the streamed table: the `generate` timings, then the SigLIP-only ceiling."""
    device = torch.device(args.device)
    inputs = video_inputs(model.config, frames, num_frames, args.num_keyframes, device)
    reset_peak_memory(device)
    chunk_size = model.model.get_vision_chunk_size(num_frames)
    cells = [num_frames, chunk_size, inputs["input_ids"].shape[1]]
    try:
        times = measure_generation(model, inputs, args)
        peak_gib = peak_memory_gib(device)
        qwen2_ms_per_token = measure_qwen2_decoding(transformers_qwen2(model), inputs["input_ids"].shape[1], args)
        siglip_frames = frames[: min(num_frames, args.siglip_only_max_frames or num_frames)]
        siglip_seconds = measure_siglip_only(model, siglip_frames, chunk_size, device)
    except torch.cuda.OutOfMemoryError:
        return cells + ["OOM"] + ["-"] * (len(STREAMED_COLUMNS) - len(cells) - 1)
    frames_per_second = num_frames / times.vision_seconds
    siglip_frames_per_second = siglip_frames.shape[0] / siglip_seconds
    return cells + [
        format_number(peak_gib, 1),
        f"{times.vision_seconds:.2f}",
        f"{times.prefill_seconds:.2f}",
        f"{times.first_token_seconds:.2f}",
        format_number(times.decode_ms_per_token, 1),
        format_number(qwen2_ms_per_token, 1),
        format_number(times.decode_cold_extra_seconds, 1),
        f"{frames_per_second:.0f}",
        f"{siglip_frames_per_second:.0f}",
        f"{frames_per_second / siglip_frames_per_second:.2f}",
    ]


def print_streamed_table(model: ViLaMPForConditionalGeneration, frames: torch.Tensor, args: argparse.Namespace):
    print("\n## Streamed (the model's default)", flush=True)
    print_table_start(STREAMED_COLUMNS)
    for num_frames in args.frames:
        print(markdown_row(streamed_row(model, frames, num_frames, args)), flush=True)
    ceiling_frames = "all" if args.siglip_only_max_frames is None else f"the first {args.siglip_only_max_frames}"
    print(
        "\nvision+DFM: from `generate` to the language model's first forward; prefill: from there to the first token; "
        f"first token = both (a 1-token `generate`). decode ms/token: (language-model time of a {args.max_new_tokens}"
        f"-token `generate`, the second of two (steady state), - that of the 1-token one) / {args.max_new_tokens - 1}, "
        "nothing timed per token; Qwen2 decode ms/token: the same for transformers' own Qwen2ForCausalLM over "
        "the same weights on a text prompt of the row's length. decode cold extra: the first long `generate`'s extra "
        "time over the steady one (with a static cache, the decoding step's compilation). "
        f"SigLIP-only: the vision tower alone, same chunks, on {ceiling_frames} of the row's frames; ratio = "
        "vision+DFM frames/s / SigLIP-only frames/s.",
        flush=True,
    )


def unstreamed_seconds(model: ViLaMPForConditionalGeneration, inputs: dict, device: torch.device) -> float | None:
    """Seconds for `get_video_features` with all frames in one chunk, `None` when it runs out of memory."""
    model.config.vision_chunk_size = inputs["keyframe_mask"].shape[0]
    try:
        return measure_video_features(model, inputs, device)
    except torch.cuda.OutOfMemoryError:
        return None


def print_unstreamed_table(model: ViLaMPForConditionalGeneration, frames: torch.Tensor, args: argparse.Namespace):
    """Encodes all frames in one chunk, the original's way, for growing frame counts until the first out-of-memory."""
    device = torch.device(args.device)
    print("\n## Unstreamed (`vision_chunk_size` = frames: all frames encoded at once, the original's way)", flush=True)
    print_table_start(UNSTREAMED_COLUMNS)
    largest_run = None
    for num_frames in args.unstreamed_frames:
        inputs = video_inputs(model.config, frames, num_frames, args.num_keyframes, device)
        reset_peak_memory(device)
        seconds = unstreamed_seconds(model, inputs, device)
        if seconds is None:
            print(markdown_row([num_frames, num_frames, "OOM", "-", "-"]), flush=True)
            reset_peak_memory(device)
            ran = f"the largest that ran: {largest_run}" if largest_run else "the smallest count tried"
            print(f"\nUnstreamed limit: out of memory at {num_frames} frames ({ran}).", flush=True)
            return
        row = [num_frames, num_frames, format_number(peak_memory_gib(device), 1), f"{seconds:.2f}"]
        print(markdown_row(row + [f"{num_frames / seconds:.0f}"]), flush=True)
        largest_run = num_frames
    print(f"\nUnstreamed limit: no out-of-memory up to {largest_run} frames, the largest tried.", flush=True)


def print_header(model: ViLaMPForConditionalGeneration, args: argparse.Namespace, build_seconds: dict):
    device = torch.device(args.device)
    config = model.config
    vision, text = config.vision_config, config.text_config
    chunk = args.vision_chunk_size or "auto (from free memory; the `chunk` column shows the size used)"
    print("# ViLaMP long-video benchmark\n")
    print(f"- command: `python {shlex.join(sys.argv)}`")
    print(f"- device: {device_name(device)} ({device})")
    attention = f"{text._attn_implementation} (text), {vision._attn_implementation} (vision)"
    print(f"- dtype: {args.dtype}; attention: {attention}")
    print(f"- torch {torch.__version__}, transformers {transformers.__version__}")
    print(
        f"- model: {'tiny' if args.tiny else 'full size'}, random weights: SigLIP {vision.num_hidden_layers} layers "
        f"x {vision.hidden_size}, text {text.num_hidden_layers} layers x {text.hidden_size}, "
        f"K = {args.num_keyframes} keyframes, {model.num_parameters():,} parameters, "
        f"built on the device in {build_seconds['model']:.1f} s"
    )
    print(f"- vision chunk size: {chunk}; vision tower compiled: {'yes' if args.compile else 'no'}")
    print(
        f"- frames: synthetic uint8 {vision.image_size}x{vision.image_size} on the host ({FRAME_POOL_SIZE} distinct, "
        f"repeated), keyframes spread evenly; built in {build_seconds['frames']:.1f} s, outside the timings"
    )
    print(
        f"- decoding: greedy, {args.max_new_tokens} new tokens against 1; KV cache: {args.cache_implementation}",
        flush=True,
    )


def main():
    args = parse_args()
    build_seconds = {}
    start_time = time.perf_counter()
    model = build_model(args)
    synchronize(torch.device(args.device))
    build_seconds["model"] = time.perf_counter() - start_time
    start_time = time.perf_counter()
    image_size = model.config.vision_config.image_size
    frames = repeated_frames(max(args.frames + args.unstreamed_frames), image_size)
    build_seconds["frames"] = time.perf_counter() - start_time
    print_header(model, args, build_seconds)

    with torch.inference_mode():
        start_time = time.perf_counter()
        warm_up(model, frames, args)
        print(f"- warm-up: {time.perf_counter() - start_time:.1f} s", flush=True)
        print_streamed_table(model, frames, args)
        if args.unstreamed_frames:
            print_unstreamed_table(model, frames, args)


if __name__ == "__main__":
    main()
