"""Shared fixtures: the golden reference directory, a tiny byte-level tokenizer and a tiny keyframe selector."""

import json
import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference"

# Ids of the reference's toy tokenizer (reference README, "Inputs"): UTF-8 byte b is id b, and the Qwen2 special
# tokens sit at the top of its 512-entry vocabulary. `<video>` takes the free id below them.
TINY_SPECIAL_TOKEN_IDS = {"<video>": 508, "<|endoftext|>": 509, "<|im_start|>": 510, "<|im_end|>": 511}
TINY_VOCAB_SIZE = 512

# A random CLIP with the reference's tiny layout (clip-tiny-patch32/config.json), in open_clip's config format.
TINY_KEYFRAME_SELECTOR_CONFIG = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "patch_size": 32, "width": 32, "layers": 2, "head_width": 16, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 2, "mlp_ratio": 2.0},
}


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The golden reference directory: `$VILAMP_REFERENCE_DIR`, or `../shared/reference` next to the repository."""
    path = Path(os.environ.get("VILAMP_REFERENCE_DIR", DEFAULT_REFERENCE_DIR))
    if not (path / "golden" / "golden.safetensors").is_file():
        pytest.fail(
            f"The golden reference directory {path} is missing (no golden/golden.safetensors); set VILAMP_REFERENCE_DIR "
            "to the shared reference directory."
        )
    return path


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer without merges, with the reference's toy ids, wrapped as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = dict(gpt2_unicode_to_byte())
    for index in range(len(vocab), min(TINY_SPECIAL_TOKEN_IDS.values())):
        vocab[f"<|reserved_{index}|>"] = index
    vocab.update(TINY_SPECIAL_TOKEN_IDS)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<video>"],
        padding_side="left",
    )
    return tokenizer


def gpt2_unicode_to_byte() -> dict[str, int]:
    """GPT-2's byte-level alphabet (used by the `ByteLevel` pre-tokenizer): each symbol and the byte it stands for."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes, shift = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + shift)
            shift += 1
    return {chr(code): byte for byte, code in zip(printable, codes)}


@pytest.fixture
def tiny_tokenizer():
    """A tiny tokenizer: byte b is id b, `<video>` 508, `<|endoftext|>` 509 (pad), `<|im_start|>` 510,
    `<|im_end|>` 511 (eos); 512 ids, no BOS, left padding."""
    return build_tiny_tokenizer()


@pytest.fixture
def tiny_keyframe_selector_dir(tmp_path) -> Path:
    """A directory with `keyframe_selector.safetensors` and `keyframe_selector_config.json` of a random tiny
    open_clip CLIP (seed 0)."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.model.CLIP(**TINY_KEYFRAME_SELECTOR_CONFIG)
    directory = tmp_path / "keyframe_selector"
    directory.mkdir()
    save_file({key: tensor.contiguous() for key, tensor in model.state_dict().items()}, directory / "keyframe_selector.safetensors")
    (directory / "keyframe_selector_config.json").write_text(json.dumps(TINY_KEYFRAME_SELECTOR_CONFIG), encoding="utf-8")
    return directory


def write_video_file(path: Path, *, num_frames: int, fps: int = 8, width: int = 64, height: int = 48) -> Path:
    """Writes an MPEG-4 video whose frame i is a flat grey of level 8 * i (mod 256) with a moving white bar."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame_index in range(num_frames):
            pixels = np.full((height, width, 3), (8 * frame_index) % 256, dtype=np.uint8)
            bar = (4 * frame_index) % (width - 4)
            pixels[:, bar : bar + 4] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture
def make_video_file(tmp_path):
    """A factory `make_video_file(num_frames, fps=8, width=64, height=48, suffix=".mp4") -> Path` writing small MPEG-4
    videos into `tmp_path` (frame i is a grey of level 8 * i with a white bar moving 4 pixels per frame)."""
    counter = iter(range(1_000_000))

    def make(num_frames: int, fps: int = 8, width: int = 64, height: int = 48, suffix: str = ".mp4") -> Path:
        path = tmp_path / f"video_{next(counter)}{suffix}"
        return write_video_file(path, num_frames=num_frames, fps=fps, width=width, height=height)

    return make
