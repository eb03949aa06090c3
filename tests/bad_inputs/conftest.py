"""Fixtures of the bad-input tests: the reference checkpoint converted once, and the tokenizer it needs."""

from pathlib import Path

import pytest

from conversion.convert_original_to_hf import convert_checkpoint
from training.tiny import build_tiny_tokenizer


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """The tiny tokenizer saved to a directory (the reference checkpoint ships none)."""
    directory = tmp_path_factory.mktemp("tokenizer")
    build_tiny_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def converted_dir(reference_dir, tokenizer_dir, tmp_path_factory) -> Path:
    """The reference checkpoint converted once per session; tests copy it before damaging it."""
    return convert_checkpoint(
        reference_dir / "original_tiny", tmp_path_factory.mktemp("converted") / "vilamp-tiny", tokenizer_dir=tokenizer_dir
    )
