"""Fixtures of the fine-tuning tests: the tiny processor and model of `vilamp.testing`, and one fixed labelled batch."""

import pytest

from vilamp.processing import ViLaMPDataCollator
from vilamp.testing import build_tiny_model, build_tiny_processor, write_synthetic_video

# Two videos of different lengths (3 and 6 frames at 1 fps), so that the batch is padded.
VIDEO_FRAME_COUNTS_AT_8_FPS = (24, 48)
TRAINING_ROWS = (
    {"question": "What moves?", "answer": "A white bar."},
    {"question": "How bright is it?", "answer": "Grey, then lighter."},
)


@pytest.fixture(scope="module")
def processor():
    return build_tiny_processor()


@pytest.fixture(scope="module")
def training_rows(tmp_path_factory) -> list[dict]:
    """`{"video", "question", "answer"}` rows over two synthetic videos of 3 and 6 sampled frames."""
    directory = tmp_path_factory.mktemp("videos")
    return [
        {**row, "video": str(write_synthetic_video(directory / f"video_{index}.mp4", num_frames=num_frames))}
        for index, (row, num_frames) in enumerate(zip(TRAINING_ROWS, VIDEO_FRAME_COUNTS_AT_8_FPS))
    ]


@pytest.fixture(scope="module")
def training_batch(processor, training_rows) -> dict:
    """The collated batch of `training_rows`, right-padded, with labels."""
    return ViLaMPDataCollator(processor)(training_rows)


@pytest.fixture
def tiny_model():
    """A factory of tiny random ViLaMP models (seed 0 unless given), in training mode."""

    def build(seed: int = 0):
        return build_tiny_model(seed).train()

    return build
