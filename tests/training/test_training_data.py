"""Training inputs: labels that keep only the answers, the data collator and the dataset reader."""

import json
from pathlib import Path

import pytest
import torch

from vilamp.processing import IGNORE_INDEX, ViLaMPDataCollator, num_video_tokens, read_video_qa_file
from vilamp.testing import TINY_NUM_KEYFRAMES, TINY_SETTINGS, TINY_SPECIAL_TOKEN_IDS

VIDEO_ID = TINY_SPECIAL_TOKEN_IDS["<video>"]
PAD_ID = TINY_SPECIAL_TOKEN_IDS["<|endoftext|>"]
IM_START_ID = TINY_SPECIAL_TOKEN_IDS["<|im_start|>"]
IM_END_ID = TINY_SPECIAL_TOKEN_IDS["<|im_end|>"]


def byte_ids(text: str) -> list[int]:
    """The toy tokenizer's ids of plain text: one id per UTF-8 byte."""
    return list(text.encode("utf-8"))


def expected_row(question: str, answer: str, num_frames: int) -> tuple[list[int], list[int]]:
    """Hand-built ids and labels of one video question-answer conversation in the qwen_1_5 template."""
    num_keyframes = min(TINY_NUM_KEYFRAMES, num_frames)
    video_tokens = num_video_tokens(num_frames, num_keyframes, TINY_SETTINGS["keyframe_pooled_size"])
    prompt = (
        [IM_START_ID] + byte_ids("system\nYou are a helpful assistant.") + [IM_END_ID] + byte_ids("\n")
        + [IM_START_ID] + byte_ids("user\n") + [VIDEO_ID] * video_tokens + byte_ids("\n" + question)
        + [IM_END_ID] + byte_ids("\n") + [IM_START_ID] + byte_ids("assistant\n")
    )  # fmt: skip
    target = byte_ids(answer) + [IM_END_ID]
    # the newline after the answer's <|im_end|> is never generated: no loss on it
    trailer = byte_ids("\n")
    ids = prompt + target + trailer
    labels = [IGNORE_INDEX] * len(prompt) + target + [IGNORE_INDEX] * len(trailer)
    return ids, labels


def test_labels_mask_exactly_the_prompt_video_and_padding(training_batch, training_rows):
    frame_counts = training_batch["video_frame_counts"].tolist()
    assert frame_counts == [3, 6]
    width = training_batch["input_ids"].shape[1]
    for row, (data, num_frames) in enumerate(zip(training_rows, frame_counts)):
        ids, labels = expected_row(data["question"], data["answer"], num_frames)
        padding = width - len(ids)
        # right padding: the shorter video's row ends with padding, without loss
        assert training_batch["input_ids"][row].tolist() == ids + [PAD_ID] * padding
        assert training_batch["labels"][row].tolist() == labels + [IGNORE_INDEX] * padding
        assert training_batch["attention_mask"][row].tolist() == [1] * len(ids) + [0] * padding
    assert (training_batch["labels"][0] == IGNORE_INDEX).sum() > (training_batch["labels"][1] == IGNORE_INDEX).sum()


def test_labels_follow_left_padding_too(processor, training_rows, training_batch):
    batch = ViLaMPDataCollator(processor, padding_side="left")(training_rows)
    for row in range(2):
        is_token = batch["attention_mask"][row].bool()
        right_is_token = training_batch["attention_mask"][row].bool()
        assert batch["labels"][row][is_token].tolist() == training_batch["labels"][row][right_is_token].tolist()
        assert (batch["labels"][row][~is_token] == IGNORE_INDEX).all()


def test_labels_of_a_multi_turn_conversation_keep_every_answer(processor, training_rows):
    conversation = [
        {
            "role": "user",
            "content": [{"type": "video", "path": training_rows[0]["video"]}, {"type": "text", "text": "Hi?"}],
        },
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "And?"},
        {"role": "assistant", "content": [{"type": "text", "text": "No."}]},
    ]
    inputs = processor.apply_chat_template(conversation, tokenize=True, return_dict=True, return_labels=True)
    kept = inputs["labels"][0][inputs["labels"][0] != IGNORE_INDEX].tolist()
    assert kept == byte_ids("Yes.") + [IM_END_ID] + byte_ids("No.") + [IM_END_ID]


def test_model_loss_counts_only_answer_tokens(training_batch):
    from vilamp.testing import build_tiny_model

    model = build_tiny_model().eval()
    with torch.no_grad():
        outputs = model(**training_batch)
    logits = outputs.logits[:, :-1].flatten(0, 1)
    targets = training_batch["labels"][:, 1:].flatten()
    expected = torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(outputs.loss, expected)


def test_return_labels_needs_a_tokenized_dict(processor, training_rows):
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes."}]
    with pytest.raises(ValueError, match="`return_labels=True` needs `tokenize=True` and `return_dict=True`"):
        processor.apply_chat_template(conversation, return_labels=True)


def test_conversation_without_answer_is_rejected(processor, training_rows):
    conversation = [
        {
            "role": "user",
            "content": [{"type": "video", "path": training_rows[0]["video"]}, {"type": "text", "text": "Hi?"}],
        }
    ]
    with pytest.raises(ValueError, match="Conversation 0 has no assistant message"):
        processor.apply_chat_template(conversation, tokenize=True, return_dict=True, return_labels=True)


def test_collator_row_without_answer_names_the_row(processor, training_rows):
    rows = [training_rows[0], {"video": training_rows[1]["video"], "question": "Why?"}]
    with pytest.raises(ValueError, match=r"`rows\[1\]` lacks the fields \['answer'\]"):
        ViLaMPDataCollator(processor)(rows)


def test_read_video_qa_file_json_and_jsonl_resolve_relative_videos(tmp_path):
    rows = [
        {"video": "clips/a.mp4", "question": "What?", "answer": "This."},
        {"video": "b.mp4", "question": "Q", "answer": "A"},
    ]
    (tmp_path / "data.json").write_text(json.dumps(rows), encoding="utf-8")
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n\n", encoding="utf-8")
    for name in ("data.json", "data.jsonl"):
        loaded = read_video_qa_file(tmp_path / name)
        assert [row["video"] for row in loaded] == [str(tmp_path / "clips" / "a.mp4"), str(tmp_path / "b.mp4")]
        assert [row["answer"] for row in loaded] == ["This.", "A"]


def test_read_video_qa_file_errors_name_the_line(tmp_path):
    (tmp_path / "data.jsonl").write_text('{"video": "a.mp4", "question": "Q", "answer": ""}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"data.jsonl, line 1: `answer` must be a non-empty string"):
        read_video_qa_file(tmp_path / "data.jsonl")
    (tmp_path / "data.csv").write_text("video,question,answer\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"must be a .json file"):
        read_video_qa_file(tmp_path / "data.csv")


def test_tiny_video_qa_dataset_reads_back_with_resolved_video_paths(tmp_path):
    from vilamp.testing import write_tiny_video_qa_dataset

    path = write_tiny_video_qa_dataset(tmp_path / "tiny" / "data.jsonl")
    rows = read_video_qa_file(path)
    assert len(rows) == 4
    assert all(Path(row["video"]).is_file() and row["question"] and row["answer"] for row in rows)
