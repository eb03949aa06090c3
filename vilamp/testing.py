"""
The tiny fixtures, in one place: a tiny random ViLaMP config and model, the toy tokenizer, a tiny processor, a tiny
random checkpoint in the original layout (converted for `vilamp demo`), synthetic frames and the one synthetic video
writer. Tests, examples, benchmarks and `vilamp demo` run anywhere in seconds with them; the library itself never
imports this module. Nothing here needs PyAV or open_clip until a function that uses them is called.
"""

import itertools
import json
import os
import socket
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vilamp.conversion.convert_original_to_hf import SUPPORTED_ORIGINAL_SETTINGS, convert_checkpoint
from vilamp.modeling_vilamp import ViLaMPConfig, ViLaMPForConditionalGeneration
from vilamp.processing import KeyframeSelector, ViLaMPProcessor

# A byte-level toy vocabulary: UTF-8 byte b is id b, the Qwen2 special tokens sit at the top of 512 ids.
TINY_SPECIAL_TOKEN_IDS = {"<video>": 508, "<|endoftext|>": 509, "<|im_start|>": 510, "<|im_end|>": 511}
TINY_VOCAB_SIZE = 512

TINY_VISION_CONFIG = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 56,
    "patch_size": 14,
    "vision_use_head": False,
}
TINY_TEXT_CONFIG = {
    "vocab_size": TINY_VOCAB_SIZE,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "pad_token_id": TINY_SPECIAL_TOKEN_IDS["<|endoftext|>"],
    "eos_token_id": TINY_SPECIAL_TOKEN_IDS["<|im_end|>"],
}
# initializer_range 0.2, not 0.02: with a random frozen `lm_head` of std 0.02 the logits of a hidden-size-32 model span
# well under one unit, so no adapter could fit an answer; 0.2 gives them the spread of a trained model's
TINY_SETTINGS = {"keyframe_pooled_size": 2, "query_embed_dim": 16, "initializer_range": 0.2}
# keyframes per video K of the tiny processor (the processor owns K, the model config does not)
TINY_NUM_KEYFRAMES = 2

# A random CLIP ViT of the reference's tiny layout, in open_clip's config format (its `embed_dim` is `query_embed_dim`).
TINY_KEYFRAME_SELECTOR_CONFIG = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "patch_size": 32, "width": 32, "layers": 2, "head_width": 16, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 2, "mlp_ratio": 2.0},
}


def tiny_config(**overrides) -> ViLaMPConfig:
    """A tiny ViLaMP config (SigLIP 56x56 in 4x4 patches pooled to 2x2, Qwen2 of hidden size 32 and 2 layers) that
    matches [`build_tiny_processor`]."""
    settings = {**TINY_SETTINGS, "video_token_index": TINY_SPECIAL_TOKEN_IDS["<video>"], **overrides}
    return ViLaMPConfig(vision_config=TINY_VISION_CONFIG, text_config=TINY_TEXT_CONFIG, **settings)


def build_tiny_model(
    seed: int = 0, *, compile_vision_tower: bool = False, **overrides
) -> ViLaMPForConditionalGeneration:
    """A tiny ViLaMP with random weights drawn from `seed`; `overrides` go to [`tiny_config`]."""
    torch.manual_seed(seed)
    return ViLaMPForConditionalGeneration(tiny_config(**overrides), compile_vision_tower=compile_vision_tower)


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer without merges over the toy vocabulary (no BOS, left padding, `<|im_end|>` as EOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = byte_level_alphabet()
    # the ids between the bytes and the special tokens are reserved, as in Qwen2's vocabulary: special, so that decoding
    # with `skip_special_tokens=True` drops them when the tiny model's random weights pick one
    reserved_tokens = [f"<|reserved_{index}|>" for index in range(len(vocab), min(TINY_SPECIAL_TOKEN_IDS.values()))]
    vocab.update({token: len(vocab) + offset for offset, token in enumerate(reserved_tokens)})
    vocab.update(TINY_SPECIAL_TOKEN_IDS)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<video>", *reserved_tokens],
        padding_side="left",
    )


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet (the `ByteLevel` pre-tokenizer's): each symbol and the byte it stands for."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes, shift = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + shift)
            shift += 1
    return {chr(code): byte for byte, code in zip(printable, codes)}


def build_tiny_keyframe_selector(seed: int = 0) -> KeyframeSelector:
    """A keyframe selector over a random tiny open_clip CLIP drawn from `seed`."""
    import open_clip

    torch.manual_seed(seed)
    clip = open_clip.model.CLIP(**TINY_KEYFRAME_SELECTOR_CONFIG)
    return KeyframeSelector(clip, TINY_KEYFRAME_SELECTOR_CONFIG)


def build_tiny_processor(seed: int = 0) -> ViLaMPProcessor:
    """A processor for [`tiny_config`]: the toy tokenizer, 56x56 frames, K = 2 keyframes pooled to 2x2."""
    return ViLaMPProcessor(
        tokenizer=build_tiny_tokenizer(),
        num_keyframes=TINY_NUM_KEYFRAMES,
        keyframe_pooled_size=TINY_SETTINGS["keyframe_pooled_size"],
        frame_size=TINY_VISION_CONFIG["image_size"],
        keyframe_selector=build_tiny_keyframe_selector(seed),
    )


# A tiny random ViLaMP in the ORIGINAL layout, for `vilamp demo` and the tests of the command line and the evaluation.
# Its weights are saved under the original code's key names (`model.mm_projector.0`, `model.composer_projector`,
# `model.frame_selector.model`, ...), so the demo exercises the converter on the layout of the released checkpoint. The
# sizes follow the shared tiny reference checkpoint (SigLIP 384x384 with 14-pixel patches, so a keyframe still pools
# 27x27 patches to 14x14).
ORIGINAL_TINY_TEXT_CONFIG = {
    "vocab_size": TINY_VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "use_sliding_window": False,
    "sliding_window": None,
    "max_window_layers": 2,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "bos_token_id": 509,
    "eos_token_id": 511,
    "rope_theta": 1000000.0,
}
# the tower's config, as the original names it; the checkpoint holds one layer fewer (the original drops the last)
ORIGINAL_TINY_SIGLIP_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "image_size": 384,
    "patch_size": 14,
}
ORIGINAL_TINY_CLIP_CONFIG = {
    "projection_dim": 16,
    "text_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2},
    "vision_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 224,
        "patch_size": 32,
    },
}
ORIGINAL_TINY_NUM_KEYFRAMES = 4
ORIGINAL_TINY_SIGLIP_DIR_NAME = "siglip-tiny-patch14-384"
ORIGINAL_TINY_CLIP_DIR_NAME = "clip-tiny-patch32"
TINY_TOKENIZER_DIR_NAME = "tiny-tokenizer"

# The original settings of the forward path this package implements (the converter checks them).
ORIGINAL_SETTINGS = {
    **SUPPORTED_ORIGINAL_SETTINGS,
    "model_type": "llava_qwen",
    "architectures": ["LlavaQwenForCausalLM"],
    "mm_vision_select_layer": -2,
    "mm_newline_position": "one_token",
    "torch_dtype": "float32",
}


def prefixed(prefix: str, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of `state_dict` under `prefix`, contiguous, for safetensors."""
    return {prefix + key: tensor.detach().contiguous() for key, tensor in state_dict.items()}


def random_original_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """
    Random weights of a tiny ViLaMP under the original checkpoint's key names: Qwen2 (`model.*`, `lm_head`), SigLIP
    without its last layer and head (`model.vision_tower.vision_tower.*`), the `mlp2x_gelu` projector
    (`model.mm_projector.0/2`), the DFM (`model.composer_projector.*`), `model.image_newline` and the keyframe
    selector's CLIP (`model.frame_selector.model.*`).
    """
    from transformers import (
        CLIPConfig,
        CLIPModel,
        Qwen2Config,
        Qwen2ForCausalLM,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    torch.manual_seed(seed)
    text_config = {name: value for name, value in ORIGINAL_TINY_TEXT_CONFIG.items() if name != "rope_theta"}
    language_model = Qwen2ForCausalLM(Qwen2Config(**text_config))
    num_layers = ORIGINAL_TINY_SIGLIP_CONFIG["num_hidden_layers"] - 1
    siglip_config = {**ORIGINAL_TINY_SIGLIP_CONFIG, "num_hidden_layers": num_layers}
    vision_tower = SiglipVisionModel(SiglipVisionConfig(**siglip_config, vision_use_head=False))
    clip = CLIPModel(CLIPConfig(**ORIGINAL_TINY_CLIP_CONFIG))
    vision_width, hidden_size = ORIGINAL_TINY_SIGLIP_CONFIG["hidden_size"], ORIGINAL_TINY_TEXT_CONFIG["hidden_size"]
    query_dim = ORIGINAL_TINY_CLIP_CONFIG["projection_dim"]
    merger = nn.ModuleDict(
        {
            "linear_q": nn.Linear(query_dim, hidden_size),
            "linear_iq": nn.Linear(hidden_size, hidden_size),
            "linear_k": nn.Linear(hidden_size, hidden_size),
            "linear_ik": nn.Linear(hidden_size, hidden_size),
        }
    )
    projector = nn.Sequential(nn.Linear(vision_width, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))
    state_dict = {
        **prefixed("", language_model.state_dict()),
        # transformers versions differ on whether the tower's keys start with `vision_model.`
        **prefixed(
            "model.vision_tower.vision_tower.vision_model.",
            {key.removeprefix("vision_model."): tensor for key, tensor in vision_tower.state_dict().items()},
        ),
        **prefixed("model.mm_projector.", projector.state_dict()),
        **prefixed("model.composer_projector.", merger.state_dict()),
        "model.composer_projector.tau": torch.tensor(0.1),
        "model.image_newline": torch.randn(hidden_size) * 0.02,
        **prefixed("model.frame_selector.model.", clip.state_dict()),
    }
    # buffers are not weights of the original checkpoint
    return {key: tensor for key, tensor in state_dict.items() if not key.endswith("position_ids")}


def original_config() -> dict:
    """The original `config.json` of the tiny checkpoint (`llava_qwen` fields)."""
    return {
        **ORIGINAL_SETTINGS,
        **ORIGINAL_TINY_TEXT_CONFIG,
        "mm_hidden_size": ORIGINAL_TINY_SIGLIP_CONFIG["hidden_size"],
        "mm_vision_tower": ORIGINAL_TINY_SIGLIP_DIR_NAME,
        "clip_model_path": ORIGINAL_TINY_CLIP_DIR_NAME,
        "max_frame_num": ORIGINAL_TINY_NUM_KEYFRAMES,
        "f2t_thrd": 0.2,
        "f2f_thrd": 0.85,
        "composer_proj_dim": ORIGINAL_TINY_CLIP_CONFIG["projection_dim"],
    }


def write_original_checkpoint(directory, seed: int = 0) -> Path:
    """
    Writes a tiny random checkpoint in the original layout into `directory/original_tiny`, with its two tower config
    directories beside it (where the converter looks for them) and the toy tokenizer in `directory/tiny-tokenizer`.

    Returns:
        `Path`: the checkpoint directory.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    checkpoint_dir = directory / "original_tiny"
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    (checkpoint_dir / "config.json").write_text(json.dumps(original_config(), indent=2), encoding="utf-8")
    generation_config = {"bos_token_id": 509, "eos_token_id": 511, "pad_token_id": 509}
    (checkpoint_dir / "generation_config.json").write_text(json.dumps(generation_config, indent=2), encoding="utf-8")
    save_file(random_original_state_dict(seed), checkpoint_dir / "model.safetensors", metadata={"format": "pt"})
    build_tiny_tokenizer().save_pretrained(directory / TINY_TOKENIZER_DIR_NAME)
    towers = (
        (ORIGINAL_TINY_SIGLIP_DIR_NAME, {"model_type": "siglip", "vision_config": ORIGINAL_TINY_SIGLIP_CONFIG}),
        (ORIGINAL_TINY_CLIP_DIR_NAME, {"model_type": "clip", **ORIGINAL_TINY_CLIP_CONFIG}),
    )
    for name, config in towers:
        (directory / name).mkdir(exist_ok=True)
        (directory / name / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return checkpoint_dir


def build_demo_checkpoint(directory, *, seed: int = 0, overwrite: bool = True) -> Path:
    """Writes the tiny original checkpoint into `directory` and converts it into `directory/vilamp-tiny`."""
    checkpoint_dir = write_original_checkpoint(directory, seed=seed)
    tokenizer_dir = Path(directory) / TINY_TOKENIZER_DIR_NAME
    return convert_checkpoint(
        checkpoint_dir, Path(directory) / "vilamp-tiny", tokenizer_dir=tokenizer_dir, overwrite=overwrite
    )


# Questions about the synthetic videos of `write_tiny_video_qa_dataset` (random weights cannot answer them).
TINY_VIDEO_QA_ROWS = [
    {"question": "What moves in the video?", "answer": "A white bar moves to the right."},
    {"question": "How does the brightness change?", "answer": "The grey background gets lighter."},
    {"question": "What colour is the bar?", "answer": "White."},
    {"question": "Is the video dark or bright at the start?", "answer": "Dark."},
]


def write_tiny_video_qa_dataset(path: str | os.PathLike) -> Path:
    """Writes a few synthetic videos next to `path` and a JSONL dataset about them at `path` (rows `{"video",
    "question", "answer"}`, video paths relative to it); returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, row in enumerate(TINY_VIDEO_QA_ROWS):
        video = write_synthetic_video(
            path.parent / f"video_{index}.mp4", num_frames=16 + 8 * index, level_step=4 + index
        )
        rows.append({"video": video.name, **row})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_synthetic_video(
    path: str | os.PathLike, *, num_frames: int, fps: int = 8, width: int = 64, height: int = 48, level_step: int = 8
) -> Path:
    """Writes an MPEG-4 video whose frame i is a flat grey of level `level_step * i` (mod 256) with a white bar moving
    4 pixels per frame."""

    def frames() -> Iterator[np.ndarray]:
        for frame_index in range(num_frames):
            pixels = np.full((height, width, 3), (level_step * frame_index) % 256, dtype=np.uint8)
            bar = (4 * frame_index) % (width - 4)
            pixels[:, bar : bar + 4] = 255
            yield pixels

    return write_video(path, frames(), fps=fps)


def synthetic_frames(
    num_frames: int, *, width: int = 160, height: int = 120, seed: int = 0, with_square: bool = True
) -> np.ndarray:
    """
    Synthetic RGB frames, uint8 of shape `(num_frames, height, width, 3)`: a slowly drifting colour gradient with a
    bouncing white ball; with `with_square`, a red square is shown in the middle third (something to ask about).
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for index in range(num_frames):
        phase = 2 * np.pi * index / max(num_frames, 1)
        frame = np.stack(
            [
                96 + 64 * np.sin(phase + x / width * np.pi),
                96 + 64 * np.sin(phase + y / height * np.pi + 2),
                np.full_like(x, 128 + 64 * np.cos(phase)),
            ],
            axis=-1,
        )
        ball_x = int((0.5 + 0.4 * np.sin(3 * phase)) * width)
        ball_y = int((0.5 + 0.4 * np.cos(5 * phase)) * height)
        frame[(x - ball_x) ** 2 + (y - ball_y) ** 2 < (height / 10) ** 2] = 255
        if with_square and num_frames // 3 <= index < 2 * num_frames // 3:
            frame[height // 4 : 3 * height // 4, width // 3 : 2 * width // 3] = (220, 30, 30)
        frames[index] = np.clip(frame + rng.normal(0, 4, frame.shape), 0, 255).astype(np.uint8)
    return frames


def write_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    *,
    fps: int = 8,
    codec: str = "mpeg4",
    options=None,
    container_options=None,
    frame_format: str = "rgb24",
) -> Path:
    """
    Writes uint8 RGB frames of shape `(height, width, 3)` as a video with PyAV, through a temporary file renamed into
    place once complete. `frames` may be a generator: frames are encoded as they come, never all held at once.

    Args:
        codec (`str`, *optional*, defaults to `"mpeg4"`): the FFmpeg encoder, e.g. `"libx264"`.
        frame_format (`str`, *optional*, defaults to `"rgb24"`): `"yuv420p"` takes planar frames of shape
            `(height * 3 // 2, width)` (as PyAV's `to_ndarray` gives them), encoded without a colour conversion.
        options (`dict[str, str]`, *optional*): encoder options, e.g. `{"preset": "ultrafast"}` for libx264.
        container_options (`dict[str, str]`, *optional*): muxer options, e.g. `{"movflags": "faststart"}` to write an
            MP4's index before its frames.
    """
    import av

    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp{path.suffix}")
    frames = iter(frames)
    first_frame = next(frames, None)
    if first_frame is None:
        raise ValueError(f"`frames` is empty: a video needs at least one frame to be written to {path}.")
    height, width = (
        (first_frame.shape[0] * 2 // 3, first_frame.shape[1]) if frame_format == "yuv420p" else first_frame.shape[:2]
    )
    with av.open(str(temporary), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if options:
            stream.options = options
        for frame in itertools.chain([first_frame], frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format=frame_format)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    temporary.replace(path)
    return path


# codec name -> (FFmpeg encoder, container suffix, fast encoder options) of `write_noisy_video`
NOISY_VIDEO_CODECS = {
    "h264": ("libx264", ".mp4", {"preset": "ultrafast"}),
    "hevc": ("libx265", ".mp4", {"preset": "ultrafast", "x265-params": "log-level=error"}),
    "vp9": ("libvpx-vp9", ".webm", {"deadline": "realtime", "cpu-used": "8", "row-mt": "1"}),
    "av1": ("libsvtav1", ".mp4", {"preset": "12"}),
}


def noisy_video_frames(
    num_frames: int, *, width: int, height: int, fps: int = 30, seed: int = 0
) -> Iterator[np.ndarray]:
    """
    Planar yuv420p frames of shape `(height * 3 // 2, width)` of a camera slowly panning over a textured scene, with
    sensor noise in every frame (luma about 5 levels, chroma about 2): the noise makes encoders spend the bitrate a
    camera's file has, unlike smooth synthetic frames. Each frame costs a few additions: the scene and a small bank of
    noise fields are drawn once, and each frame is a window into them.
    """
    if width % 2 or height % 2:
        raise ValueError(f"yuv420p frames need an even `width` and `height`, got {width}x{height}.")
    rng = np.random.default_rng(seed)
    margin = 2 * max(2, min(width, height) // 32)
    scene_height, scene_width = height + 2 * margin, width + 4 * margin
    y, x = np.mgrid[0:scene_height, 0:scene_width].astype(np.float32)
    # objects: coarse blocks of random level with hard edges, on smooth gradients
    blocks = np.kron(rng.integers(0, 60, (scene_height // 16 + 1, scene_width // 16 + 1)), np.ones((16, 16)))
    gradient = 0.5 + 0.25 * np.sin(x / 97 + y / 151) + 0.25 * np.sin(y / 61 - x / 203)
    scene_y = (24 + 120 * gradient + blocks[:scene_height, :scene_width]).astype(np.uint8)
    half = (slice(0, scene_height, 2), slice(0, scene_width, 2))
    scene_u = (100 + 40 * np.sin(x[half] / 53) + blocks[half] / 2).astype(np.uint8)
    scene_v = (100 + 40 * np.cos(y[half] / 71) + blocks[half] / 2).astype(np.uint8)
    # noise fields, offset to stay non-negative; every sum stays below 256
    bank_size = 4
    noise_y = [
        np.clip(rng.normal(15, 5, (height + margin, width + margin)), 0, 30).astype(np.uint8) for _ in range(bank_size)
    ]
    noise_uv = [
        np.clip(rng.normal(8, 2, (2, (height + margin) // 2, (width + margin) // 2)), 0, 16).astype(np.uint8)
        for _ in range(bank_size)
    ]
    luma_size, chroma_size = height * width, height * width // 4
    for index in range(num_frames):
        # pan: a slow ellipse through the scene's margins, on even pixels so the chroma window follows the luma one
        dx = int(2 * margin * (1 - np.cos(2 * np.pi * index / (8 * fps)))) // 2 * 2
        dy = int(margin * (1 - np.cos(2 * np.pi * index / (5 * fps)))) // 2 * 2
        nx, ny = (int(offset) // 2 * 2 for offset in rng.integers(0, margin, 2))
        bank = int(rng.integers(bank_size))
        frame = np.empty((height * 3 // 2, width), dtype=np.uint8)
        flat = frame.reshape(-1)
        luma = flat[:luma_size].reshape(height, width)
        np.add(scene_y[dy : dy + height, dx : dx + width], noise_y[bank][ny : ny + height, nx : nx + width], out=luma)
        for plane, scene in enumerate((scene_u, scene_v)):
            chroma = flat[luma_size + plane * chroma_size : luma_size + (plane + 1) * chroma_size]
            window = (slice(dy // 2, dy // 2 + height // 2), slice(dx // 2, dx // 2 + width // 2))
            noise = noise_uv[bank][plane, ny // 2 : ny // 2 + height // 2, nx // 2 : nx // 2 + width // 2]
            np.add(scene[window], noise, out=chroma.reshape(height // 2, width // 2))
        yield frame


def write_noisy_video(
    path: str | os.PathLike,
    codec: str,
    *,
    seconds: float,
    width: int = 1920,
    height: int = 1080,
    fps: int = 30,
    bitrate: int | None = None,
) -> Path:
    """
    Writes `noisy_video_frames` as a camera-like video with a fast encoder preset, a keyframe every 2 seconds.

    Args:
        path (`str` or `os.PathLike`): where to write; the suffix picks the container (`NOISY_VIDEO_CODECS` gives the
            usual one per codec, `.webm` for VP9).
        codec (`str`): `"h264"`, `"hevc"`, `"vp9"` or `"av1"`.
        seconds (`float`): length of the video.
        bitrate (`int`, *optional*): bits per second; defaults to 12 Mbit/s at 1080p, scaled by the frame area and
            capped at 25 Mbit/s.
    """
    if codec not in NOISY_VIDEO_CODECS:
        raise ValueError(f"`codec` {codec!r} is not one of {sorted(NOISY_VIDEO_CODECS)}.")
    encoder, _, options = NOISY_VIDEO_CODECS[codec]
    if bitrate is None:
        bitrate = int(min(25e6, 12e6 * width * height / (1920 * 1080)))
    options = {**options, "b": str(bitrate), "g": str(2 * fps)}
    frames = noisy_video_frames(max(1, round(seconds * fps)), width=width, height=height, fps=fps)
    return write_video(path, frames, fps=fps, codec=encoder, options=options, frame_format="yuv420p")


def train_steps(model, batch: dict, num_steps: int, learning_rate: float) -> list[float]:
    """Runs `num_steps` AdamW steps of `model` on one batch (its trainable parameters) and returns the loss before each
    step."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    losses = []
    for _ in range(num_steps):
        loss = model(**batch).loss
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return losses


def free_port() -> int:
    """A TCP port free on this machine now, for a process group's rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun_launcher(num_processes: int) -> list[str]:
    """The start of a command that runs `num_processes` copies of a Python module or script under
    `torch.distributed.run` on this machine (append `-m MODULE` or `SCRIPT`, then its arguments)."""
    return [
        sys.executable,
        *("-m", "torch.distributed.run", "--nproc_per_node", str(num_processes)),
        *("--master_port", str(free_port())),
    ]


__all__ = [
    "train_steps",
    "free_port",
    "torchrun_launcher",
    "build_demo_checkpoint",
    "build_tiny_keyframe_selector",
    "build_tiny_model",
    "build_tiny_processor",
    "build_tiny_tokenizer",
    "NOISY_VIDEO_CODECS",
    "noisy_video_frames",
    "random_original_state_dict",
    "synthetic_frames",
    "tiny_config",
    "write_synthetic_video",
    "write_tiny_video_qa_dataset",
    "write_original_checkpoint",
    "write_noisy_video",
    "write_video",
]
