"""The evaluation's question answerer: decoding in worker processes gives the processor's inputs, answers are greedy,
and scored continuations equal a full forward of the prompt and the continuation."""

import multiprocessing
import time

import pytest
import torch
from transformers import AutoModel, AutoProcessor

from vilamp.evaluation.video_qa import DecodingWorkers, VideoQuestionAnswerer
from vilamp.runner import VideoQuestion, process_questions


@pytest.fixture(scope="module")
def answerer(converted_dir):
    with VideoQuestionAnswerer.from_pretrained(converted_dir, device="cpu", decode_workers=1) as answerer:
        yield answerer


@pytest.fixture(scope="module")
def questions(question_rows) -> list[VideoQuestion]:
    return [VideoQuestion(video=row["video"], prompt=row["prompt"], query=row["question"]) for row in question_rows]


def test_worker_processes_give_the_processor_inputs_of_each_batch_in_order(answerer, questions):
    batches = [questions[:2], questions[2:]]
    prepared = list(answerer.prepare(batches))
    assert len(prepared) == 2
    for inputs, batch in zip(prepared, batches):
        expected = process_questions(answerer.processor, batch, "cpu")
        assert set(inputs) == set(expected)
        for name, tensor in expected.items():
            assert torch.equal(inputs[name], tensor), name


def test_decoding_workers_start_when_made_and_serve_every_later_prepare(answerer, questions):
    children = set(multiprocessing.active_children())
    with DecodingWorkers(answerer.processor, torch.device("cpu"), num_workers=2) as workers:
        # they start before any batch is asked for, while the caller goes on (loading the model)
        deadline = time.monotonic() + 120
        while len(set(multiprocessing.active_children()) - children) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(set(multiprocessing.active_children()) - children) == 2
        for batches in ([questions[:1], questions[1:2], questions[2:]], [questions[2:], questions[:1]]):
            for inputs, batch in zip(workers.map(batches), batches, strict=True):
                assert torch.equal(
                    inputs["input_ids"], process_questions(answerer.processor, batch, "cpu")["input_ids"]
                )
    assert set(multiprocessing.active_children()) <= children


def test_a_video_that_fails_to_decode_in_a_worker_raises_its_error_and_the_workers_go_on(
    answerer, questions, tmp_path
):
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(b"not a video" * 100)
    batches = [questions[:1], [VideoQuestion(video=str(damaged), prompt="What moves?", query="What moves?")]]
    prepared = answerer.prepare(batches)
    next(prepared)
    with pytest.raises(ValueError, match="damaged.mp4` could not be decoded"):
        next(prepared)
    (inputs,) = answerer.prepare([questions[1:2]])
    assert torch.equal(inputs["input_ids"], process_questions(answerer.processor, questions[1:2], "cpu")["input_ids"])


def test_decoding_workers_take_a_positive_count(answerer):
    with pytest.raises(ValueError, match="`num_workers` must be an integer of at least 1, got 0"):
        DecodingWorkers(answerer.processor, torch.device("cpu"), num_workers=0)


def test_answers_equal_generate_on_the_processor_call_with_the_question_as_keyframe_query(
    converted_dir, answerer, questions
):
    answers = answerer.answer(questions, max_new_tokens=4, batch_size=1)
    model = AutoModel.from_pretrained(converted_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(converted_dir)
    for question, answer in zip(questions, answers):
        inputs = processor(text=question.prompt, videos=question.video, query=question.query)
        output_ids = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert (
            processor.tokenizer.decode(output_ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            == answer
        )


def test_continuation_losses_equal_a_full_forward_of_prompt_and_continuation(answerer, questions):
    question = questions[1]
    continuations = [" it gets lighter", " it gets darker", " B"]
    inputs = process_questions(answerer.processor, [question], "cpu")
    scores = answerer.continuation_losses(inputs, continuations)
    assert len(scores) == 3
    for continuation, (loss, is_greedy) in zip(continuations, scores):
        continuation_ids = answerer.processor.tokenizer(
            continuation, add_special_tokens=False, return_tensors="pt"
        ).input_ids
        full = {**inputs, "input_ids": torch.cat([inputs["input_ids"], continuation_ids], dim=1)}
        full["attention_mask"] = torch.ones_like(full["input_ids"])
        with torch.no_grad():
            logits = answerer.model(**full).logits[0, inputs["input_ids"].shape[1] - 1 : -1].float()
        expected = torch.nn.functional.cross_entropy(logits, continuation_ids[0])
        torch.testing.assert_close(torch.tensor(loss), expected, rtol=0, atol=1e-4)
        assert is_greedy == bool((logits.argmax(-1) == continuation_ids[0]).all())


def test_continuation_losses_take_one_question_at_a_time(answerer, questions):
    inputs = process_questions(answerer.processor, questions[:2], "cpu")
    with pytest.raises(ValueError, match="`inputs` must hold one question, got a batch of 2"):
        answerer.continuation_losses(inputs, [" A"])
