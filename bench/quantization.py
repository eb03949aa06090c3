"""
Quantization benchmark: ViLaMP with its language model in bfloat16, 8 bits or 4 bits (the vision tower, projector, DFM
and `lm_head` stay in bfloat16), one row per setting and frame count: peak GPU memory, first-token time, decode
ms/token, and how far the logits and greedy ids move from bfloat16's on the same inputs.

The full-size architecture (SigLIP so400m, Qwen2-7B, K = 32) gets random weights once, is saved to a temporary
directory, and each setting loads it as a user does: `from_pretrained(dir, quantization_config=...)`. The weights are
random: the distances say how far each setting moves the numbers, not how well it answers.

Each row is one greedy `generate` of `--max-new-tokens` tokens on synthetic frames (keyframes spread evenly), after a
2-token warm-up of the loaded setting on the smallest row's frames: first token = from `generate` to the first logits (vision+DFM, then the prefill);
decode ms/token = the rest over the remaining tokens; peak GPU GiB = the most allocated during the row, weights
included. Distances compare the last prompt position's logits (float32) and the greedy ids position by position with
the bfloat16 row of the same frame count.

    python bench/quantization.py                            # one GPU: bf16, int8, nf4, torchao-int4 at 600 and 10000 frames
    python bench/quantization.py --settings bf16,nf4 --frames 600
    python bench/quantization.py --tiny --device cpu        # tiny config, seconds: proves that it runs

Settings: `bf16` (none), `int8` (bitsandbytes LLM.int8()), `nf4` (bitsandbytes NF4 with double quantization, computing
in bfloat16), `torchao-int8` (torchao `Int8WeightOnlyConfig`), `torchao-int4` (torchao `Int4WeightOnlyConfig`, groups of
128, the tinygemm layout of torch's CUDA build). A setting that cannot run here (no GPU for bitsandbytes or torchao's
int4, a package missing, an error while loading) prints a row saying why, and the others go on.
"""

import argparse
import gc
import shlex
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass

import torch
import transformers
from bench_utils import (
    build_config,
    build_random_model,
    default_attn_implementation,
    default_num_keyframes,
    device_name,
    exact_length_generate_kwargs,
    format_number,
    frame_counts,
    markdown_row,
    print_table_start,
    repeated_frames,
    reset_peak_memory,
    synchronize,
    video_inputs,
)

from vilamp.modeling_vilamp import ViLaMPForConditionalGeneration

SETTINGS = ("bf16", "int8", "nf4", "torchao-int8", "torchao-int4")
FULL_SETTINGS = "bf16,int8,nf4,torchao-int4"
TINY_SETTINGS = "bf16,int8,nf4,torchao-int8,torchao-int4"
FULL_FRAMES = "600,10000"
TINY_FRAMES = "16,64"
COLUMNS = [
    "setting",
    "frames",
    "prompt tokens",
    "weights GiB",
    "peak GPU GiB",
    "vision+DFM s",
    "prefill s",
    "first token s",
    "decode ms/token",
    "max abs Δlogits",
    "mean abs Δlogits",
    "equal greedy ids",
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--settings",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        help=f"comma-separated among {', '.join(SETTINGS)} (default {FULL_SETTINGS}; with --tiny {TINY_SETTINGS})",
    )
    parser.add_argument("--frames", type=frame_counts, help=f"frame counts to measure (default {FULL_FRAMES})")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="greedy tokens per row (default %(default)s)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--vision-chunk-size", type=int, help="frames per vision chunk (default: from free memory)")
    parser.add_argument(
        "--save-dir", help="where the random bfloat16 model is saved for the settings to load (default: the system's "
        "temporary directory; about 16 GB at full size, removed at the end)",
    )  # fmt: skip
    parser.add_argument("--tiny", action="store_true", help=f"tiny config, K = 2, frames {TINY_FRAMES}: runs on a CPU")
    args = parser.parse_args()

    if args.settings is None:
        args.settings = (TINY_SETTINGS if args.tiny else FULL_SETTINGS).split(",")
    unknown = sorted(set(args.settings) - set(SETTINGS))
    if unknown or not args.settings:
        parser.error(f"`--settings` must name some of {', '.join(SETTINGS)}, got {args.settings}.")
    if args.frames is None:
        args.frames = frame_counts(TINY_FRAMES if args.tiny else FULL_FRAMES)
    if not args.frames or min(args.frames) < 1:
        parser.error(f"`--frames` needs at least one frame count and every count must be positive, got {args.frames}.")
    if args.max_new_tokens < 2:
        parser.error(
            f"`--max-new-tokens` must be at least 2 (a first token and one decoded), got {args.max_new_tokens}."
        )
    args.num_keyframes = default_num_keyframes(args.tiny)
    args.attn_implementation = default_attn_implementation(args.device)
    return args


class SettingUnavailable(RuntimeError):
    """A setting that cannot run here: a package is missing, or it needs a GPU."""


def quantization_config(setting: str, args: argparse.Namespace):
    """transformers' quantization config of `setting` (None for bf16); raises `SettingUnavailable` with the reason
    when it cannot run on `--device` here."""
    device = torch.device(args.device)
    if setting == "bf16":
        return None
    if setting in ("int8", "nf4"):
        if device.type != "cuda":
            raise SettingUnavailable("the bitsandbytes rows need a GPU")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as error:
            raise SettingUnavailable("bitsandbytes is not installed (`pip install bitsandbytes`)") from error
        from transformers import BitsAndBytesConfig

        if setting == "int8":
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    try:
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig
    except ImportError as error:
        raise SettingUnavailable("torchao is not installed (`pip install torchao`)") from error
    from transformers import TorchAoConfig

    if setting == "torchao-int8":
        return TorchAoConfig(Int8WeightOnlyConfig())
    if device.type != "cuda":
        raise SettingUnavailable("torchao's int4 weight-only layout needs a GPU")
    # groups of 128 do not divide the tiny model's rows of 32
    group_size = 32 if args.tiny else 128
    return TorchAoConfig(Int4WeightOnlyConfig(group_size=group_size, int4_packing_format="tile_packed_to_4d"))


@dataclass
class Generation:
    vision_seconds: float  # from `generate` to the language model's first forward: SigLIP, projector, pooling, DFM
    prefill_seconds: float  # from there to the first logits
    decode_ms_per_token: float  # from the first logits to the end, per remaining token
    first_logits: torch.Tensor  # `(vocab_size,)` float32 on the host: the last prompt position's logits
    ids: list[int]  # the greedy ids

    @property
    def first_token_seconds(self) -> float:
        return self.vision_seconds + self.prefill_seconds


def timed_generation(model, inputs: dict, max_new_tokens: int, device: torch.device) -> Generation:
    """One greedy `generate` of exactly `max_new_tokens` tokens, with the clock read at the language model's first
    forward and at the first logits (hooks that remove themselves: nothing is timed inside the decoding loop)."""
    marks = {}

    def mark(name):
        def hook(*_):
            synchronize(device)
            marks[name] = time.perf_counter()
            handles[name].remove()

        return hook

    handles = {
        "language_model_start": model.get_decoder().register_forward_pre_hook(mark("language_model_start")),
        "first_logits": model.lm_head.register_forward_hook(mark("first_logits")),
    }
    try:
        synchronize(device)
        start_time = time.perf_counter()
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                **exact_length_generate_kwargs(model, max_new_tokens),
                return_dict_in_generate=True,
                output_logits=True,
            )
        synchronize(device)
        end_time = time.perf_counter()
    finally:
        for handle in handles.values():
            handle.remove()
    prompt_length = inputs["input_ids"].shape[1]
    return Generation(
        vision_seconds=marks["language_model_start"] - start_time,
        prefill_seconds=marks["first_logits"] - marks["language_model_start"],
        decode_ms_per_token=1000 * (end_time - marks["first_logits"]) / (max_new_tokens - 1),
        first_logits=output.logits[0][0].float().cpu(),
        ids=output.sequences[0, prompt_length:].tolist(),
    )


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def save_random_model(args: argparse.Namespace, directory: str) -> float:
    """Builds the random bfloat16 model on the device, saves it to `directory`, frees it; returns the seconds taken."""
    start_time = time.perf_counter()
    torch.manual_seed(0)
    model = build_random_model(build_config(args.tiny), device=args.device, dtype="bfloat16")
    model.save_pretrained(directory, max_shard_size="5GB")
    del model
    reset_peak_memory(torch.device(args.device))
    return time.perf_counter() - start_time


def load_setting(directory: str, setting: str, args: argparse.Namespace):
    """The saved model loaded as a user loads it, with `setting`'s quantization config."""
    device = torch.device(args.device)
    kwargs = {"dtype": torch.bfloat16, "device_map": str(device), "attn_implementation": args.attn_implementation}
    config = quantization_config(setting, args)
    if config is not None:
        kwargs["quantization_config"] = config
    if args.vision_chunk_size is not None:
        kwargs["vision_chunk_size"] = args.vision_chunk_size
    return ViLaMPForConditionalGeneration.from_pretrained(directory, **kwargs).eval()


def distance_cells(generation: Generation, reference: Generation | None) -> list[str]:
    """Max and mean absolute difference of the first logits, and the fraction of equal greedy ids, against bf16."""
    if reference is None:
        return ["n/a"] * 3
    if reference is generation:
        return ["reference"] * 3
    difference = (generation.first_logits - reference.first_logits).abs()
    equal = sum(ours == theirs for ours, theirs in zip(generation.ids, reference.ids)) / len(reference.ids)
    return [f"{difference.max().item():.4f}", f"{difference.mean().item():.4f}", f"{equal:.2f}"]


def setting_rows(directory: str, setting: str, frames: torch.Tensor, references: dict, args: argparse.Namespace):
    """Loads `setting` and prints its row for each frame count; a setting that cannot load prints one row saying why.
    The bf16 rows' generations become `references`."""
    device = torch.device(args.device)
    reset_peak_memory(device)
    try:
        start_time = time.perf_counter()
        model = load_setting(directory, setting, args)
        load_seconds = time.perf_counter() - start_time
        synchronize(device)
        weights_bytes = torch.cuda.memory_allocated(device) if device.type == "cuda" else model.get_memory_footprint()
        weights_gib = weights_bytes / 2**30
        # the smallest row's frames: its vision chunks, and the kernels of a prefill and a decoding step
        warm_up = video_inputs(model.config, frames, min(args.frames), args.num_keyframes, device)
        timed_generation(model, warm_up, 2, device)
    # a setting that cannot run here is reported with its reason, and the others go on
    except Exception as error:
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        print(markdown_row([setting, "-", "-", "-", "-", f"skipped: {reason}"] + ["-"] * (len(COLUMNS) - 6)))
        if not isinstance(error, SettingUnavailable):
            traceback.print_exc(file=sys.stderr)
        return None
    for num_frames in args.frames:
        inputs = video_inputs(model.config, frames, num_frames, args.num_keyframes, device)
        cells = [setting, num_frames, inputs["input_ids"].shape[1], f"{weights_gib:.2f}"]
        reset_peak_memory(device)
        try:
            generation = timed_generation(model, inputs, args.max_new_tokens, device)
        except torch.cuda.OutOfMemoryError:
            print(markdown_row(cells + ["OOM"] + ["-"] * (len(COLUMNS) - len(cells) - 1)), flush=True)
            continue
        if setting == "bf16":
            references[num_frames] = generation
        cells += [
            format_number(peak_memory_gib(device), 2),
            f"{generation.vision_seconds:.2f}",
            f"{generation.prefill_seconds:.2f}",
            f"{generation.first_token_seconds:.2f}",
            f"{generation.decode_ms_per_token:.1f}",
            *distance_cells(generation, references.get(num_frames)),
        ]
        print(markdown_row(cells), flush=True)
    del model
    reset_peak_memory(device)
    return load_seconds


def print_header(args: argparse.Namespace, save_seconds: float):
    config = build_config(args.tiny)
    vision, text = config.vision_config, config.text_config
    print("# ViLaMP quantization benchmark\n")
    print(f"- command: `python {shlex.join(sys.argv)}`")
    print(f"- device: {device_name(torch.device(args.device))} ({args.device}); attention: {args.attn_implementation}")
    versions = [f"torch {torch.__version__}", f"transformers {transformers.__version__}"]
    for package in ("bitsandbytes", "torchao"):
        try:
            versions.append(f"{package} {__import__(package).__version__}")
        except ImportError:
            versions.append(f"{package} not installed")
    print(f"- {', '.join(versions)}")
    print(
        f"- model: {'tiny' if args.tiny else 'full size'}, random bfloat16 weights (seed 0): SigLIP "
        f"{vision.num_hidden_layers} layers x {vision.hidden_size}, text {text.num_hidden_layers} layers x "
        f"{text.hidden_size}, K = {args.num_keyframes} keyframes; built and saved in {save_seconds:.1f} s"
    )
    print(f"- vision chunk size: {args.vision_chunk_size or 'auto (from free memory)'}")
    print(f"- decoding: greedy, {args.max_new_tokens} new tokens, dynamic KV cache", flush=True)


def main():
    args = parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="vilamp-quantization-", dir=args.save_dir) as directory:
        save_seconds = save_random_model(args, directory)
        image_size = build_config(args.tiny).vision_config.image_size
        frames = repeated_frames(max(args.frames), image_size)
        print_header(args, save_seconds)
        print_table_start(COLUMNS)
        references, load_seconds = {}, {}
        for setting in args.settings:
            load_seconds[setting] = setting_rows(directory, setting, frames, references, args)
            gc.collect()
    loaded = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in load_seconds.items() if seconds is not None)
    print(
        "\nweights GiB: GPU memory allocated once the setting is loaded (on the CPU, `get_memory_footprint()`, which counts "
        "torchao's packed weights at their logical size). peak GPU GiB: the most allocated during the row's "
        "`generate`, weights included. first token = vision+DFM + prefill (to the first logits); decode ms/token: the "
        "rest of the `generate` over the remaining tokens. Δlogits: the last prompt position's logits against the bf16 "
        "row's with the same frames; equal greedy ids: the fraction of positions where the greedy ids agree. Random "
        f"weights: distances, not quality. from_pretrained per setting: {loaded or 'none loaded'}.",
        flush=True,
    )
    synchronize(device)


if __name__ == "__main__":
    main()
