"""Shared fixtures: the golden reference directory, its checkpoint copied or converted, a tiny byte-level tokenizer and
a tiny keyframe selector."""

import os
import shutil
from pathlib import Path

import pytest
import torch

from vilamp.conversion.convert_original_to_hf import convert_checkpoint
from vilamp.testing import build_tiny_keyframe_selector, build_tiny_tokenizer, write_synthetic_video

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference"
CONVERTED_BEFORE_0_2 = REPO_ROOT / "tests" / "conversion" / "converted_before_0_2"


def pytest_collection_modifyitems(config, items):
    """Skips the tests marked `gpu` where torch sees no CUDA GPU, saying so (`python -m pytest -q` collects them all)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="marked `gpu`: needs a CUDA GPU and torch sees none")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


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


@pytest.fixture
def checkpoint_copy(reference_dir, tmp_path) -> Path:
    """A writable copy of the reference checkpoint (original layout), its two tower directories beside it."""
    for name in ("original_tiny", "siglip-tiny-patch14-384", "clip-tiny-patch32"):
        shutil.copytree(reference_dir / name, tmp_path / name)
    return tmp_path / "original_tiny"


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """The tiny tokenizer saved to a directory (the reference checkpoint ships none)."""
    directory = tmp_path_factory.mktemp("tokenizer")
    build_tiny_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def converted_dir(reference_dir, tokenizer_dir, tmp_path_factory) -> Path:
    """The reference checkpoint converted once per session; tests copy it before changing it."""
    return convert_checkpoint(
        reference_dir / "original_tiny",
        tmp_path_factory.mktemp("converted") / "vilamp-tiny",
        tokenizer_dir=tokenizer_dir,
    )


@pytest.fixture(scope="session")
def converted_before_0_2_dir(converted_dir, tmp_path_factory) -> Path:
    """The reference checkpoint converted, with the JSON files that the converter of 0.1 (commit e418f8e, before the
    package moved under `vilamp`) wrote for it: tests/conversion/converted_before_0_2."""
    directory = shutil.copytree(converted_dir, tmp_path_factory.mktemp("converted_before_0_2") / "vilamp-tiny")
    for path in CONVERTED_BEFORE_0_2.iterdir():
        shutil.copy(path, directory / path.name)
    return directory


@pytest.fixture
def tiny_tokenizer():
    """A tiny tokenizer: byte b is id b, `<video>` 508, `<|endoftext|>` 509 (pad), `<|im_start|>` 510,
    `<|im_end|>` 511 (eos); 512 ids, no BOS, left padding."""
    return build_tiny_tokenizer()


@pytest.fixture
def tiny_keyframe_selector_dir(tmp_path) -> Path:
    """A directory with `keyframe_selector.safetensors` and `keyframe_selector_config.json` of a random tiny
    open_clip CLIP (seed 0)."""
    directory = tmp_path / "keyframe_selector"
    build_tiny_keyframe_selector(seed=0).save_pretrained(directory)
    return directory


@pytest.fixture
def make_video_file(tmp_path):
    """A factory `make_video_file(num_frames, fps=8, width=64, height=48, suffix=".mp4") -> Path` writing small MPEG-4
    videos into `tmp_path` (frame i is a grey of level 8 * i with a white bar moving 4 pixels per frame)."""
    counter = iter(range(1_000_000))

    def make(num_frames: int, fps: int = 8, width: int = 64, height: int = 48, suffix: str = ".mp4") -> Path:
        path = tmp_path / f"video_{next(counter)}{suffix}"
        return write_synthetic_video(path, num_frames=num_frames, fps=fps, width=width, height=height)

    return make
