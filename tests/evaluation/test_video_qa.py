"""The evaluation's question answerer: decoding in worker processes gives the processor's inputs, answers are greedy,
and scored continuations equal a full forward of the prompt and the continuation."""

import multiprocessing
import time

import pytest
import torch
from transformers import AutoModel, AutoProcessor

from vilamp import VideoCache
from vilamp.evaluation.video_qa import DecodingWorkers, VideoQuestionAnswerer, visible_gpu
from vilamp.runner import VideoQuestion, ViLaMPRunner, process_questions


@pytest.fixture(scope="module")
def answerer(converted_dir):
    with VideoQuestionAnswerer.from_pretrained(converted_dir, device="cpu", decode_workers=1) as answerer:
        yield answerer


@pytest.fixture(scope="module")
def questions(question_rows) -> list[VideoQuestion]:
    return [VideoQuestion(video=row["video"], prompt=row["prompt"], query=row["question"]) for row in question_rows]


@pytest.fixture(scope="module")
def interleaved_questions(question_rows) -> list[VideoQuestion]:
    """Three questions about each of the three videos, in the order Video-MME's requests can come: one question of
    each video, then the next question of each."""
    asked = ("What moves in the video?", "How does the brightness change?", "What colour is the bar?")
    return [
        VideoQuestion(video=row["video"], prompt=f"{question}\nAnswer briefly.", query=question)
        for question in asked
        for row in question_rows
    ]


def test_worker_processes_give_the_loaded_video_of_each_video_in_order(answerer, questions):
    videos = [question.video for question in questions]
    loaded_videos = list(answerer.decoding_workers.map(videos))
    assert len(loaded_videos) == 3
    for (loaded, seconds), video in zip(loaded_videos, videos):
        expected = answerer.processor.load_video(video)
        # the workers only decode: the model's process embeds the frames with CLIP
        assert loaded.frame_embeds is None
        for name in ("siglip_frames", "clip_frames"):
            assert torch.equal(getattr(loaded, name), getattr(expected, name)), name
        assert loaded.timestamps_seconds == expected.timestamps_seconds
        assert seconds > 0


def test_decoding_workers_start_when_made_and_serve_every_later_map(answerer, questions):
    children = set(multiprocessing.active_children())
    with DecodingWorkers(answerer.processor, num_workers=2) as workers:
        # they start before any video is asked for, while the caller goes on (loading the model)
        deadline = time.monotonic() + 120
        while len(set(multiprocessing.active_children()) - children) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(set(multiprocessing.active_children()) - children) == 2
        for videos in ([question.video for question in questions], [questions[2].video, questions[0].video]):
            for (loaded, _), video in zip(workers.map(videos), videos, strict=True):
                assert torch.equal(loaded.siglip_frames, answerer.processor.load_video(video).siglip_frames)
        assert workers.ready_seconds() > 0
    assert set(multiprocessing.active_children()) <= children


def test_decoding_workers_read_through_a_video_cache(answerer, questions, tmp_path):
    cache = VideoCache(tmp_path / "videos", max_bytes=2**30)
    video = questions[0].video
    with DecodingWorkers(answerer.processor, num_workers=1, video_cache=cache) as workers:
        (stored, _), (read, _) = workers.map([video, video])
    # the worker stored the video's frames in the cache, and the second load read them back
    assert list((tmp_path / "videos").iterdir())
    expected = answerer.processor.load_video(video)
    for loaded in (stored, read):
        assert torch.equal(loaded.siglip_frames, expected.siglip_frames)
        assert torch.equal(loaded.clip_frames, expected.clip_frames)


def test_a_video_that_fails_to_decode_in_a_worker_raises_its_error_and_the_workers_go_on(
    answerer, questions, tmp_path
):
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(b"not a video" * 100)
    loaded_videos = answerer.load_videos([questions[0].video, str(damaged)])
    next(loaded_videos)
    with pytest.raises(ValueError, match="damaged.mp4` could not be decoded"):
        next(loaded_videos)
    (encoded,) = answerer.load_videos([questions[1].video])
    assert torch.equal(encoded.video.siglip_frames, answerer.processor.load_video(questions[1].video).siglip_frames)


def test_prepare_by_video_groups_the_questions_of_each_video_in_order_of_first_appearance(
    answerer, interleaved_questions
):
    prepared = list(answerer.prepare_by_video(interleaved_questions, batch_size=2))
    # questions 0, 3, 6 are about the first video, 1, 4, 7 about the second, 2, 5, 8 about the third; a batch may span
    # two videos
    assert [batch for batch, _ in prepared] == [[0, 3], [6, 1], [4, 7], [2, 5], [8]]
    # each video is encoded once: its questions share one tensor of projected patches
    features = [inputs["video_frame_features"] for _, inputs in prepared]
    assert features[0][0] is features[0][1] is features[1][0]
    assert features[1][1] is features[2][0] is features[2][1]
    assert features[3][0] is features[3][1] is features[4][0]
    assert features[0][0] is not features[1][1] and features[1][1] is not features[3][0]
    # a batch holds questions of one key: the second question of each video has a key of its own
    keys = ["short"] * 3 + ["long"] * 3 + ["short"] * 3
    batches = [batch for batch, _ in answerer.prepare_by_video(interleaved_questions, 2, batch_keys=keys)]
    assert batches == [[0, 6], [3], [1, 7], [4], [2, 8], [5]]


@pytest.fixture(scope="module")
def answers_asked_afresh(answerer, interleaved_questions) -> list[str]:
    """The answers of the road without grouping: one question at a time, the processor decoding its video again."""
    return ViLaMPRunner(answerer.model, answerer.processor).answer(interleaved_questions, max_new_tokens=4)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_answers_grouped_by_video_with_decoding_workers_equal_each_question_asked_afresh(
    answerer, interleaved_questions, answers_asked_afresh, batch_size
):
    # the answerer keeps each video's projected patches (`keep_features="auto"`) for its three questions
    assert answerer.answer(interleaved_questions, max_new_tokens=4, batch_size=batch_size) == answers_asked_afresh


@pytest.mark.parametrize("keep_features", ["none", "cpu"])
def test_answers_grouped_by_video_without_workers_equal_each_question_asked_afresh(
    answerer, interleaved_questions, answers_asked_afresh, keep_features
):
    grouped = VideoQuestionAnswerer(answerer.model, answerer.processor, keep_features=keep_features)
    assert grouped.answer(interleaved_questions, max_new_tokens=4, batch_size=2) == answers_asked_afresh


def test_ask_about_a_video_loaded_once_equals_each_question_asked_afresh(answerer, interleaved_questions):
    video = interleaved_questions[0].video
    prompts = [question.prompt for question in interleaved_questions[::3]]
    runner = ViLaMPRunner(answerer.model, answerer.processor)
    expected = [runner.answer([VideoQuestion(video, prompt, prompt)], max_new_tokens=4)[0] for prompt in prompts]
    assert answerer.ask(video, prompts, max_new_tokens=4) == expected
    loaded = answerer.processor.load_video(video)
    assert answerer.answer([VideoQuestion(loaded, prompt, prompt) for prompt in prompts], 4) == expected


def test_prepare_by_video_checks_its_batches(answerer, questions):
    with pytest.raises(ValueError, match="`batch_size` must be an integer of at least 1, got 0"):
        next(answerer.prepare_by_video(questions, batch_size=0))
    with pytest.raises(ValueError, match="`batch_keys` must hold one key per question: got 1 keys for 3 questions"):
        next(answerer.prepare_by_video(questions, batch_keys=[1]))


@pytest.mark.parametrize(
    "device, visible, expected",
    [("cpu", None, None), ("cuda:1", None, "1"), ("cuda:1", "4,6", "6"), ("cuda", "GPU-a, GPU-b", "GPU-a")],
)
def test_decoding_workers_decode_on_the_model_gpu_as_cuda_visible_devices_names_it(
    monkeypatch, device, visible, expected
):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert visible_gpu(device) == expected


def test_decoding_workers_take_a_positive_count(answerer):
    with pytest.raises(ValueError, match="`num_workers` must be an integer of at least 1, got 0"):
        DecodingWorkers(answerer.processor, num_workers=0)


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
