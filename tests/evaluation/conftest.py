"""Fixtures of the evaluation tests: the demo's tiny converted checkpoint and multiple-choice questions about three
synthetic videos."""

from pathlib import Path

import pytest

from vilamp.testing import build_demo_checkpoint, write_synthetic_video

# Three videos of different lengths (3, 5 and 4 frames sampled at 1 fps), each with a question and its options.
QUESTIONS = (
    (24, "What moves in the video?", ["a white bar", "a red ball", "nothing"]),
    (40, "How does the brightness change?", ["it gets lighter", "it gets darker", "it stays the same"]),
    (32, "What colour is the bar?", ["white", "green", "blue"]),
)


@pytest.fixture(scope="session")
def converted_dir(tmp_path_factory) -> Path:
    """A tiny random ViLaMP in the original layout, converted by the converter (model and processor)."""
    return build_demo_checkpoint(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def question_rows(tmp_path_factory) -> list[dict]:
    """`{"video", "question", "prompt", "choices", "answer_index"}` rows: the prompt is the question followed by its
    lettered options and an instruction, as benchmarks ask it."""
    directory = tmp_path_factory.mktemp("videos")
    rows = []
    for index, (num_frames, question, choices) in enumerate(QUESTIONS):
        video = write_synthetic_video(directory / f"video_{index}.mp4", num_frames=num_frames, level_step=4 + index)
        options = "\n".join(f"{letter}. {choice}" for letter, choice in zip("ABC", choices))
        prompt = f"{question}\n{options}\nAnswer with the option's letter from the given choices directly."
        rows.append(
            {"video": str(video), "question": question, "prompt": prompt, "choices": choices, "answer_index": index}
        )
    return rows
