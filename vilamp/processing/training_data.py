"""Training data for ViLaMP: video question-answer rows, read from JSON or JSONL, collated into labelled batches."""

import json
import os
from pathlib import Path

from .processing_vilamp import ViLaMPProcessor

# The fields of one training row.
VIDEO_QA_FIELDS = ("video", "question", "answer")


def video_qa_conversation(row: dict) -> list[dict]:
    """The chat messages of one row: a user turn with the video and the question, an assistant turn with the answer."""
    return [
        {
            "role": "user",
            "content": [{"type": "video", "video": row["video"]}, {"type": "text", "text": row["question"]}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": row["answer"]}]},
    ]


def check_video_qa_row(row, where: str):
    """Checks that a row has a video and non-empty `question` and `answer` strings."""
    if not isinstance(row, dict):
        raise TypeError(
            f"{where} must be an object with the fields {list(VIDEO_QA_FIELDS)}, got {type(row).__name__}."
        )
    missing = [field for field in VIDEO_QA_FIELDS if field not in row]
    if missing:
        raise ValueError(
            f"{where} lacks the fields {missing}; each row needs {list(VIDEO_QA_FIELDS)}, got {sorted(row)}."
        )
    for field in ("question", "answer"):
        if not isinstance(row[field], str) or not row[field].strip():
            raise ValueError(f"{where}: `{field}` must be a non-empty string, got {row[field]!r}.")


def read_video_qa_file(path: str | os.PathLike) -> list[dict]:
    """
    Reads a video question-answer dataset.

    Args:
        path (`str` or `os.PathLike`): a `.json` file holding a list of rows, or a `.jsonl` file with one row per line.
            A row is `{"video": path, "question": str, "answer": str}`; a relative video path is taken relative to the
            dataset file's directory.

    Returns:
        `list[dict]`: the rows, video paths made absolute, in file order.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = [
            (f"{path}, line {number}", json.loads(line))
            for number, line in enumerate(text.splitlines(), 1)
            if line.strip()
        ]
    elif path.suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list):
            raise ValueError(
                f"{path} must hold a list of rows, got {type(data).__name__}; or use one row per line (.jsonl)."
            )
        rows = [(f"{path}, row {number}", row) for number, row in enumerate(data)]
    else:
        raise ValueError(
            f"The dataset {path} must be a .json file (a list of rows) or a .jsonl file (one row per line)."
        )
    if not rows:
        raise ValueError(f"The dataset {path} has no rows.")
    for where, row in rows:
        check_video_qa_row(row, where)
    return [
        {**row, "video": str(path.parent / row["video"])} if isinstance(row["video"], str) else row for _, row in rows
    ]


class ViLaMPDataCollator:
    r"""
    Collates video question-answer rows into a training batch for `transformers.Trainer`: it runs the processor
    (decoding, keyframe selection against the question, placeholder expansion) on the chat conversation of each row
    and adds `labels` that keep only the answer and its closing `<|im_end|>`.

    Trainer's default `remove_unused_columns=True` drops the `video`, `question` and `answer` fields before the
    collator sees them: pass `remove_unused_columns=False` in `TrainingArguments`.

    Args:
        processor ([`ViLaMPProcessor`]):
            The processor saved with the model.
        padding_side (`str`, *optional*, defaults to `"right"`):
            Where shorter rows are padded; right padding keeps each row's positions as when it is alone.

    Example:

    ```python
    >>> collator = ViLaMPDataCollator(processor)
    >>> batch = collator([{"video": "talk.mp4", "question": "What is he holding?", "answer": "A cup."}])
    >>> loss = model(**batch).loss
    ```"""

    def __init__(self, processor: ViLaMPProcessor, padding_side: str = "right"):
        if padding_side not in ("left", "right"):
            raise ValueError(f"`padding_side` must be 'left' or 'right', got {padding_side!r}.")
        self.processor = processor
        self.padding_side = padding_side

    def __call__(self, rows: list[dict]) -> dict:
        """
        Args:
            rows (`list[dict]`): `{"video": ..., "question": str, "answer": str}` rows; a video is anything the
                processor takes (a file path, a uint8 array of shape `(num_frames, height, width, 3)`, a list of images).

        Returns:
            `dict` with the processor's outputs (`input_ids`, `attention_mask`, `pixel_values_videos`,
            `video_frame_counts`, `keyframe_mask`, `query_embeds`) and `labels`.
        """
        for index, row in enumerate(rows):
            check_video_qa_row(row, f"`rows[{index}]`")
        batch = self.processor.apply_chat_template(
            [video_qa_conversation(row) for row in rows],
            tokenize=True,
            return_dict=True,
            return_labels=True,
            padding_side=self.padding_side,
        )
        return dict(batch)


__all__ = ["ViLaMPDataCollator", "read_video_qa_file", "video_qa_conversation"]
