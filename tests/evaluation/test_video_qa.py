"""The evaluation's question answerer: decoding in worker processes gives the processor's inputs, answers are greedy,
and scored continuations equal a full forward of the prompt and the continuation."""

import pytest
import torch
from transformers import AutoModel, AutoProcessor

from evaluation.video_qa import VideoQuestion, VideoQuestionAnswerer, process_questions


@pytest.fixture(scope="module")
def answerer(converted_dir):
    return VideoQuestionAnswerer.from_pretrained(converted_dir, device="cpu", decode_workers=1)


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


def test_answers_equal_generate_on_the_processor_call_with_the_question_as_keyframe_query(converted_dir, answerer, questions):
    answers = answerer.answer(questions, max_new_tokens=4, batch_size=1)
    model = AutoModel.from_pretrained(converted_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(converted_dir)
    for question, answer in zip(questions, answers):
        inputs = processor(text=question.prompt, videos=question.video, query=question.query)
        output_ids = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert processor.tokenizer.decode(output_ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True) == answer


def test_continuation_losses_equal_a_full_forward_of_prompt_and_continuation(answerer, questions):
    question = questions[1]
    continuations = [" it gets lighter", " it gets darker", " B"]
    inputs = process_questions(answerer.processor, [question], "cpu")
    scores = answerer.continuation_losses(inputs, continuations)
    assert len(scores) == 3
    for continuation, (loss, is_greedy) in zip(continuations, scores):
        continuation_ids = answerer.processor.tokenizer(continuation, add_special_tokens=False, return_tensors="pt").input_ids
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
