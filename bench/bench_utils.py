"""
What the benches share: the full-size defaults, random models and synthetic inputs laid out as the processor lays them
out, clocks and memory on the device, process groups, and markdown tables.

Each bench is a script run from the repository root (`python bench/<name>.py`, or under `torchrun`): its folder is
first on the path, so `from bench_utils import ...` finds this module, and `vilamp` is the installed package (run with
`PYTHONPATH=.` to use a checkout's).
"""

import gc
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import distributed as dist
from transformers import PreTrainedModel
from transformers.utils import is_flash_attn_2_available

from vilamp.modeling_vilamp import ViLaMPConfig, ViLaMPForConditionalGeneration
from vilamp.processing import num_video_tokens
from vilamp.testing import (
    NOISY_VIDEO_CODECS,
    TINY_NUM_KEYFRAMES,
    synthetic_frames,
    tiny_config,
    write_noisy_video,
    write_video,
)

# keyframes per video K of the released model
FULL_NUM_KEYFRAMES = 32
DTYPES = ("bfloat16", "float16", "float32")
# distinct random frames, repeated to make a video of any length: the content does not change the work done
FRAME_POOL_SIZE = 256
# ordinary text ids around the video placeholders, below every special id of both configs
PROMPT_TEXT_IDS = list(range(2, 10))
# NVLink multicast stays off on the lent multi-GPU machines, which do not support it
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
# CLIP ViT-B/32 (openai) in open_clip's config format: the released keyframe selector's architecture
VIT_B_32_CONFIG = {
    "embed_dim": 512,
    "quick_gelu": True,
    "vision_cfg": {
        "image_size": 224,
        "patch_size": 32,
        "width": 768,
        "layers": 12,
        "head_width": 64,
        "mlp_ratio": 4.0,
    },
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12, "mlp_ratio": 4.0},
}
# what the LoRA benches train next to the adapters, by configuration name
TRAINABLE_CONFIGURATIONS = {
    "lora": (),
    "lora+projector": ("multi_modal_projector",),
    "lora+projector+dfm": ("multi_modal_projector", "feature_merger"),
}
# tokens of the answer the LoRA benches train on
ANSWER_LENGTH = 32


def frame_counts(text: str) -> list[int]:
    """Parses a comma-separated list of frame counts; the empty string is an empty list."""
    return [int(count) for count in text.split(",") if count.strip()]


def default_num_keyframes(tiny: bool) -> int:
    """K of the tiny processor with `--tiny`, of the released model otherwise."""
    return TINY_NUM_KEYFRAMES if tiny else FULL_NUM_KEYFRAMES


def default_attn_implementation(device: str) -> str:
    """flash_attention_2 on a GPU where it is installed, sdpa otherwise."""
    return "flash_attention_2" if device.startswith("cuda") and is_flash_attn_2_available() else "sdpa"


def build_config(tiny: bool, **overrides) -> ViLaMPConfig:
    """The full-size ViLaMP architecture (SigLIP so400m, Qwen2-7B), or the tiny one of `vilamp.testing`."""
    return tiny_config(**overrides) if tiny else ViLaMPConfig(**overrides)


def build_random_model(
    config: ViLaMPConfig, *, device, dtype: str, attn_implementation: str | None = None
) -> ViLaMPForConditionalGeneration:
    """Random weights created on the device in the benchmark's dtype: no float32 copy on the host, no download."""
    with torch.device(device):
        model = ViLaMPForConditionalGeneration._from_config(
            config, dtype=getattr(torch, dtype), attn_implementation=attn_implementation
        )
    return model.eval()


def build_training_model(args) -> ViLaMPForConditionalGeneration:
    """The random model of `build_random_model` in training mode, with activation checkpointing in both towers when
    `args.gradient_checkpointing` (`args` also gives `tiny`, `vision_chunk_size`, `device`, `dtype` and
    `attn_implementation`)."""
    from vilamp.training import enable_gradient_checkpointing

    config = build_config(args.tiny, vision_chunk_size=args.vision_chunk_size)
    model = build_random_model(
        config, device=args.device, dtype=args.dtype, attn_implementation=args.attn_implementation
    )
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model.train()


def repeated_frames(num_frames: int, image_size: int) -> torch.Tensor:
    """`(num_frames, 3, image_size, image_size)` uint8 frames on the host: a pool of synthetic frames, repeated."""
    pool = synthetic_frames(FRAME_POOL_SIZE, width=image_size, height=image_size)
    pool = torch.from_numpy(pool).permute(0, 3, 1, 2)
    frames = torch.empty(num_frames, 3, image_size, image_size, dtype=torch.uint8)
    for start in range(0, num_frames, FRAME_POOL_SIZE):
        end = min(start + FRAME_POOL_SIZE, num_frames)
        frames[start:end] = pool[: end - start]
    return frames


def evenly_spread_keyframes(num_frames: int, num_keyframes: int) -> torch.Tensor:
    """A `(num_frames,)` mask with `min(num_keyframes, num_frames)` keyframes spread evenly, the first and last included."""
    keyframe_indices = torch.linspace(0, num_frames - 1, min(num_keyframes, num_frames)).round().long()
    keyframe_mask = torch.zeros(num_frames, dtype=torch.bool)
    keyframe_mask[keyframe_indices] = True
    return keyframe_mask


def video_inputs(
    config: ViLaMPConfig, frames: torch.Tensor, num_frames: int, num_keyframes: int, device: torch.device
) -> dict:
    """Model inputs for the first `num_frames` frames with `num_keyframes` keyframes, laid out as the processor does;
    the frames stay on the host."""
    keyframe_mask = evenly_spread_keyframes(num_frames, num_keyframes)
    video_tokens = num_video_tokens(num_frames, int(keyframe_mask.sum()), config.keyframe_pooled_size)
    input_ids = torch.tensor([PROMPT_TEXT_IDS + [config.video_token_id] * video_tokens + PROMPT_TEXT_IDS])
    generator = torch.Generator().manual_seed(0)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones_like(input_ids, device=device),
        "pixel_values_videos": frames[:num_frames],
        "keyframe_mask": keyframe_mask,
        "query_embeds": torch.randn(1, config.query_embed_dim, generator=generator).to(device),
    }


def training_inputs(
    config: ViLaMPConfig, frames: torch.Tensor, num_frames: int, num_keyframes: int, device: torch.device
) -> dict:
    """A one-video batch laid out as the processor does (`video_inputs`) with a short answer appended, labels on the
    answer only; the frames stay on the host."""
    inputs = video_inputs(config, frames, num_frames, num_keyframes, device)
    answer = torch.tensor([[PROMPT_TEXT_IDS[index % len(PROMPT_TEXT_IDS)] for index in range(ANSWER_LENGTH)]])
    prompt_ids = inputs["input_ids"]
    input_ids = torch.cat([prompt_ids, answer.to(device)], dim=1)
    labels = torch.cat([torch.full_like(prompt_ids, -100), answer.to(device)], dim=1)
    return {
        **inputs,
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": labels,
    }


def gradient_frames(seconds: float, fps: int, width: int, height: int):
    """RGB uint8 frames `(height, width, 3)` of moving gradients with a scene change every 10 s, one at a time."""
    rows, columns = np.mgrid[0:height, 0:width]
    for frame_index in range(int(seconds * fps)):
        pixels = np.empty((height, width, 3), dtype=np.uint8)
        pixels[..., 0] = (columns + 3 * frame_index) % 256
        pixels[..., 1] = (rows + frame_index) % 256
        pixels[..., 2] = (frame_index // (10 * fps)) * 40 % 256
        yield pixels


def write_gradient_video(path, seconds: float, fps: int, width: int, height: int):
    """An H.264 video (MPEG-4 Part 2 where libx264 is missing) of `gradient_frames`."""
    import av

    try:
        av.codec.Codec("libx264", "w")
    except (av.error.FFmpegError, ValueError):
        return write_video(path, gradient_frames(seconds, fps, width, height), fps=fps)
    frames = gradient_frames(seconds, fps, width, height)
    return write_video(path, frames, fps=fps, codec="libx264", options={"preset": "ultrafast"})


# The benches' camera-like files with sensor noise: name -> (codec of `vilamp.testing.write_noisy_video`, width, height)
NOISY_VIDEOS = {
    "h264": ("h264", 1920, 1080),
    "hevc": ("hevc", 1920, 1080),
    "vp9": ("vp9", 1920, 1080),
    "av1": ("av1", 1920, 1080),
    "hevc4k": ("hevc", 3840, 2160),
}


def repeat_video(segment: Path, path: Path, repeats: int) -> Path:
    """Writes `repeats` copies of the video file `segment` one after the other into `path` (same container), without
    re-encoding: decoding costs what a file of that length costs, writing far less."""
    import av

    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
    with av.open(str(segment)) as source, av.open(str(temporary), "w") as container:
        in_stream = source.streams.video[0]
        out_stream = container.add_stream_from_template(in_stream)
        frame_ticks = round(1 / (float(in_stream.average_rate) * in_stream.time_base))
        offset = 0
        for _ in range(repeats):
            source.seek(0)
            last_pts = 0
            for packet in source.demux(in_stream):
                if packet.size == 0:
                    continue
                last_pts = max(last_pts, packet.pts)
                packet.pts += offset
                packet.dts += offset
                packet.stream = out_stream
                container.mux(packet)
            offset += last_pts + frame_ticks
    temporary.replace(path)
    return path


def write_long_noisy_video(
    directory: Path, codec: str, width: int, height: int, minutes: float, segment_seconds: float
) -> Path:
    """A camera-like file with sensor noise (`vilamp.testing.write_noisy_video`) of `minutes`, reused when
    `directory` holds it already; longer than `segment_seconds`, it repeats a segment of that length, stream-copied."""
    suffix = NOISY_VIDEO_CODECS[codec][1]
    path = directory / f"noisy_{codec}_{width}x{height}_{round(minutes * 60)}s{suffix}"
    if path.exists():
        return path
    start = time.perf_counter()
    if minutes * 60 <= segment_seconds:
        write_noisy_video(path, codec, seconds=minutes * 60, width=width, height=height)
    else:
        segment = write_long_noisy_video(directory, codec, width, height, segment_seconds / 60, segment_seconds)
        repeat_video(segment, path, repeats=max(1, round(minutes * 60 / segment_seconds)))
    print(f"wrote {path.name} in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return path


def device_name(device: torch.device) -> str:
    """The GPU's name, or `CPU`."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def synchronize(device: torch.device):
    """Waits for the device's queued work, so that a host clock read after it covers that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, function, *function_args, **function_kwargs):
    """Runs `function` and returns its result and the seconds it took, device work included."""
    synchronize(device)
    start_time = time.perf_counter()
    result = function(*function_args, **function_kwargs)
    synchronize(device)
    return result, time.perf_counter() - start_time


def reset_peak_memory(device: torch.device):
    """Frees cached blocks (the automatic chunk size reads free memory) and starts a new peak-memory measurement."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak memory allocated on the device since the last reset, `None` on the CPU."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def exact_length_generate_kwargs(model: PreTrainedModel, max_new_tokens: int) -> dict:
    """Greedy `generate` arguments for exactly `max_new_tokens` tokens."""
    eos_token_id = model.config.get_text_config().eos_token_id
    # random weights may pick the end-of-sequence token: decode exactly `max_new_tokens` anyway
    return {
        "do_sample": False,
        "max_new_tokens": max_new_tokens,
        "min_new_tokens": max_new_tokens,
        "eos_token_id": eos_token_id,
        "pad_token_id": eos_token_id,
    }


@dataclass
class GenerateTimes:
    vision_seconds: float  # from `generate` to the language model's first forward: SigLIP, projector, pooling, DFM
    language_model_seconds: (
        float  # from the language model's first forward to the end: prefill and every decoding step
    )

    @property
    def total_seconds(self) -> float:
        return self.vision_seconds + self.language_model_seconds


def timed_generate(
    model: PreTrainedModel,
    inputs: dict,
    max_new_tokens: int,
    device: torch.device,
    cache_implementation: str = "dynamic",
) -> GenerateTimes:
    """
    Runs one greedy `generate` of exactly `max_new_tokens` tokens and times it with two clock reads besides its start
    and end, both at the language model's first forward (a pre-hook that removes itself). No streamer, hook or device
    synchronisation runs inside the decoding loop: a streamer's `put` copies each token to the host and waits for the
    device, which the `generate` a user runs does not.
    """
    marks = {}

    def mark_language_model_start(module, module_args):
        synchronize(device)
        marks["language_model_start"] = time.perf_counter()
        handle.remove()

    handle = model.get_decoder().register_forward_pre_hook(mark_language_model_start)
    try:
        synchronize(device)
        start_time = time.perf_counter()
        model.generate(
            **inputs, **exact_length_generate_kwargs(model, max_new_tokens), cache_implementation=cache_implementation
        )
        synchronize(device)
        end_time = time.perf_counter()
    finally:
        handle.remove()
    return GenerateTimes(
        vision_seconds=marks["language_model_start"] - start_time,
        language_model_seconds=end_time - marks["language_model_start"],
    )


def turn_off_nvlink_multicast():
    """Turns NVLink multicast off for this process and the processes it starts, where the environment does not say
    otherwise; NCCL reads it when it creates its communicators, so call it before `init_process_group`."""
    for name, value in MULTICAST_OFF.items():
        os.environ.setdefault(name, value)


def start_process_group(device_type: str) -> torch.device:
    """Starts the default process group of `torchrun`'s ranks with NVLink multicast off, NCCL on `"cuda"` (each rank
    on the GPU of its `LOCAL_RANK`) and gloo on `"cpu"`; returns this rank's device."""
    turn_off_nvlink_multicast()
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    if device_type != "cuda":
        return torch.device(device_type)
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)
    return device


def markdown_row(cells: list) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def print_table_start(columns: list[str]):
    """Prints a blank line and a markdown table's header."""
    print(flush=True)
    print(markdown_row(columns))
    print(markdown_row(["---"] * len(columns)), flush=True)


def format_number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


__all__ = [
    "ANSWER_LENGTH",
    "DTYPES",
    "FULL_NUM_KEYFRAMES",
    "PROMPT_TEXT_IDS",
    "TRAINABLE_CONFIGURATIONS",
    "VIT_B_32_CONFIG",
    "GenerateTimes",
    "build_config",
    "build_random_model",
    "build_training_model",
    "default_attn_implementation",
    "default_num_keyframes",
    "device_name",
    "exact_length_generate_kwargs",
    "format_number",
    "frame_counts",
    "markdown_row",
    "peak_memory_gib",
    "print_table_start",
    "repeated_frames",
    "reset_peak_memory",
    "start_process_group",
    "synchronize",
    "timed",
    "timed_generate",
    "training_inputs",
    "turn_off_nvlink_multicast",
    "video_inputs",
    "write_gradient_video",
]
