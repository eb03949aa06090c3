"""The runner from a loaded model and processor to answers: batching, answer text, the dtype rule, device placement."""

import gc
import weakref

import pytest
import torch

from vilamp import VideoCache, VideoQuestion, ViLaMPRunner, ViLaMPVideoProcessor
from vilamp.runner import DEVICE_INPUT_NAMES, EncodedVideo, feature_storage, process_questions, resolve_dtype
from vilamp.testing import TINY_SPECIAL_TOKEN_IDS, build_tiny_model, build_tiny_processor, write_synthetic_video

MAX_NEW_TOKENS = 6


@pytest.fixture(scope="module")
def runner() -> ViLaMPRunner:
    # a seed whose random model answers the two questions differently, so that rows swapped in a batch would show
    return ViLaMPRunner(build_tiny_model(seed=2).eval(), build_tiny_processor())


@pytest.fixture(scope="module")
def questions(tmp_path_factory) -> list[VideoQuestion]:
    """Two questions about videos of uneven length: 2 and 5 frames sampled at 1 fps."""
    directory = tmp_path_factory.mktemp("videos")
    short_video = write_synthetic_video(directory / "short.mp4", num_frames=16)
    long_video = write_synthetic_video(directory / "long.mp4", num_frames=40, level_step=5)
    return [
        VideoQuestion(video=str(short_video), prompt="What moves in the video?", query="What moves in the video?"),
        VideoQuestion(str(long_video), prompt="How bright is it?\nA. dark\nB. bright", query="How bright is it?"),
    ]


def test_batch_of_two_uneven_videos_equals_each_alone(runner, questions):
    (batch,) = runner.prepare([questions])
    assert batch["video_frame_counts"].tolist() == [2, 5]
    # the shorter prompt is left-padded, as batched generation needs
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][1].all()
    answers = runner.answer(questions, MAX_NEW_TOKENS, batch_size=2)
    alone = [runner.answer([question], MAX_NEW_TOKENS)[0] for question in questions]
    assert answers == alone
    assert all(answers) and answers[0] != answers[1]


def test_answers_equal_generate_on_the_processor_call_decoded_without_special_tokens(runner, questions):
    answers = runner.answer(questions, MAX_NEW_TOKENS)
    for question, answer in zip(questions, answers):
        inputs = runner.processor(text=question.prompt, videos=question.video, query=question.query)
        output_ids = runner.model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        new_ids = output_ids[0, inputs["input_ids"].shape[1] :]
        assert runner.processor.tokenizer.decode(new_ids, skip_special_tokens=True) == answer


def test_answer_text_leaves_out_special_tokens(questions):
    model = build_tiny_model().eval()
    # every generated token is `<|im_start|>`, a special token that does not end generation
    im_start_id = TINY_SPECIAL_TOKEN_IDS["<|im_start|>"]
    model.generation_config.sequence_bias = {(im_start_id,): 1e4}
    runner = ViLaMPRunner(model, build_tiny_processor())
    (inputs,) = runner.prepare([questions[:1]])
    output_ids = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert runner.processor.tokenizer.decode(output_ids[0, inputs["input_ids"].shape[1] :]) == "<|im_start|>" * 3
    assert runner.generate(inputs, max_new_tokens=3) == [""]


def test_dtype_rule_is_bfloat16_on_a_gpu_and_float32_on_the_cpu():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cuda")) == torch.float16
    assert resolve_dtype(torch.bfloat16, torch.device("cpu")) == torch.bfloat16
    expected = r"`dtype` must be 'auto' or one of \['bfloat16', 'float16', 'float32'\], got 'fp8'"
    with pytest.raises(ValueError, match=expected):
        resolve_dtype("fp8", torch.device("cpu"))


def test_from_pretrained_loads_in_the_dtype_on_the_device_with_the_video_settings(tmp_path):
    build_tiny_model().save_pretrained(tmp_path)
    build_tiny_processor().save_pretrained(tmp_path)
    runner = ViLaMPRunner.from_pretrained(tmp_path, device="cpu", max_frames=7, num_keyframes=None)
    assert runner.model.dtype == torch.float32 and runner.device == torch.device("cpu") and not runner.model.training
    assert runner.processor.video_processor.max_frames == 7
    assert runner.processor.video_processor.num_keyframes == build_tiny_processor().video_processor.num_keyframes
    runner = ViLaMPRunner.from_pretrained(tmp_path, device="cpu", dtype="bfloat16")
    assert runner.model.dtype == torch.bfloat16


def test_token_inputs_go_to_the_model_device_and_the_frames_stay_on_the_cpu(questions):
    # a model on the meta device: every input's placement shows without a GPU
    runner = ViLaMPRunner(build_tiny_model().to("meta"), build_tiny_processor())
    inputs = process_questions(runner.processor, questions, device="cpu")
    placed = runner.model_inputs(inputs)
    frame_input_names = {"pixel_values_videos", "video_frame_counts", "keyframe_mask"}
    assert set(placed) == set(inputs) == {*DEVICE_INPUT_NAMES, *frame_input_names}
    for name, tensor in placed.items():
        assert tensor.device.type == ("meta" if name in DEVICE_INPUT_NAMES else "cpu"), name
    assert placed["pixel_values_videos"].dtype == torch.uint8


def test_settings_are_checked_where_they_enter(runner, questions):
    expected = r"`cache_implementation` must be one of \['dynamic', 'static'\], got 'paged'"
    with pytest.raises(ValueError, match=expected):
        ViLaMPRunner(runner.model, runner.processor, cache_implementation="paged")
    with pytest.raises(ValueError, match="`batch_size` must be an integer of at least 1, got 0"):
        runner.answer(questions, MAX_NEW_TOKENS, batch_size=0)


THREE_QUESTIONS = ["What moves in the video?", "How bright is it?", "Where does the bar go?"]


def greedy_ids_and_scores(runner: ViLaMPRunner, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """The new token ids and the scores of every step of a greedy `generate` on the runner's model inputs."""
    with torch.inference_mode():
        output = runner.model.generate(
            **runner.model_inputs(inputs),
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
    return output.sequences[:, inputs["input_ids"].shape[1] :], torch.stack(output.scores)


@pytest.mark.parametrize("keep_features", ["none", "cpu", "auto"])
def test_a_video_loaded_once_answers_each_question_as_asking_afresh(runner, questions, keep_features):
    path = questions[1].video
    video = runner.load_video(path, keep_features=keep_features)
    assert isinstance(video, EncodedVideo) and video.num_frames == 5
    assert set(video.seconds) == {"decoding", "keyframe_embedding", "vision_encoding"}
    assert (video.frame_features is None) == (keep_features == "none")
    afresh, loaded = [], []
    for question in THREE_QUESTIONS:
        (fresh_inputs,) = runner.prepare([[VideoQuestion(path, question, question)]])
        (loaded_inputs,) = runner.prepare([[VideoQuestion(video, question, question)]])
        assert ("video_frame_features" in loaded_inputs) == (keep_features != "none")
        afresh.append(greedy_ids_and_scores(runner, fresh_inputs))
        loaded.append(greedy_ids_and_scores(runner, loaded_inputs))
    for (fresh_ids, fresh_scores), (ids, scores) in zip(afresh, loaded):
        assert torch.equal(ids, fresh_ids) and torch.equal(scores, fresh_scores)
    # the questions select and weigh differently, so a swapped answer would show
    assert not torch.equal(afresh[0][1], afresh[1][1])
    answers = [
        runner.answer([VideoQuestion(path, question, question)], MAX_NEW_TOKENS)[0] for question in THREE_QUESTIONS
    ]
    assert runner.ask(video, THREE_QUESTIONS, MAX_NEW_TOKENS) == answers
    assert runner.ask(video, THREE_QUESTIONS, MAX_NEW_TOKENS, batch_size=3) == answers


def test_questions_over_several_loaded_videos_batch_in_any_order(runner, questions):
    videos = [runner.load_video(question.video) for question in questions]
    interleaved = [
        VideoQuestion(videos[index % 2], question, question) for index, question in enumerate(THREE_QUESTIONS * 2)
    ]
    afresh = [
        runner.answer([VideoQuestion(questions[index % 2].video, question, question)], MAX_NEW_TOKENS)[0]
        for index, question in enumerate(THREE_QUESTIONS * 2)
    ]
    assert runner.answer(interleaved, MAX_NEW_TOKENS, batch_size=4) == afresh


def test_a_loaded_video_needs_its_file_no_more(runner, tmp_path):
    path = write_synthetic_video(tmp_path / "gone.mp4", num_frames=24)
    video = runner.load_video(str(path))
    before = runner.ask(video, THREE_QUESTIONS[:1], MAX_NEW_TOKENS)
    path.unlink()
    assert runner.ask(video, THREE_QUESTIONS[:1], MAX_NEW_TOKENS) == before


def test_dropping_a_loaded_video_frees_its_frames_and_features(runner, questions):
    video = runner.load_video(questions[0].video, keep_features="cpu")
    runner.ask(video, THREE_QUESTIONS, MAX_NEW_TOKENS, batch_size=2)
    frames, features = weakref.ref(video.video.siglip_frames), weakref.ref(video.frame_features)
    del video
    gc.collect()
    assert frames() is None and features() is None


def test_features_are_kept_where_they_fit():
    cpu = torch.device("cpu")
    assert feature_storage("auto", 2**20, cpu) == cpu
    # more than any host's memory: encoded again for each question rather than kept
    assert feature_storage("auto", 2**62, cpu) is None
    assert feature_storage("cpu", 2**62, cpu) == cpu


def test_keep_features_is_checked(runner, questions):
    with pytest.raises(
        ValueError, match=r"`keep_features` must be one of \['auto', 'device', 'cpu', 'none'\], got 'gpu'"
    ):
        runner.load_video(questions[0].video, keep_features="gpu")


def test_a_video_cache_spares_the_second_runner_the_decoding(questions, tmp_path, monkeypatch):
    cache = VideoCache(tmp_path / "videos", max_bytes=2**30)
    first = ViLaMPRunner(build_tiny_model(seed=2).eval(), build_tiny_processor(), video_cache=cache)
    answers = first.answer(questions, MAX_NEW_TOKENS)
    loaded = first.load_video(questions[1].video)
    # a second runner on the same cache directory reads every file from it: decoding would fail
    second = ViLaMPRunner(
        first.model, build_tiny_processor(), video_cache=VideoCache(tmp_path / "videos", max_bytes=2**30)
    )
    monkeypatch.setattr(ViLaMPVideoProcessor, "load_video", lambda *args, **kwargs: pytest.fail("decoded again"))
    assert second.answer(questions, MAX_NEW_TOKENS) == answers
    again = second.load_video(questions[1].video)
    assert torch.equal(again.video.siglip_frames, loaded.video.siglip_frames)
    assert torch.equal(again.video.frame_embeds, loaded.video.frame_embeds)


def test_chat_replies_from_the_loaded_video_with_each_question_ranking_its_own_keyframes(runner, questions):
    video = runner.load_video(questions[1].video, keep_features="none")
    first, second = "What moves in the video?", "How bright is it?"
    conversation = [
        {"role": "user", "content": [{"type": "video", "video": video.video}, {"type": "text", "text": first}]}
    ]
    first_answer = runner.reply(video, conversation, first, MAX_NEW_TOKENS)
    assert first_answer == runner.ask(video, first, MAX_NEW_TOKENS)[0]

    conversation += [
        {"role": "assistant", "content": [{"type": "text", "text": first_answer}]},
        {"role": "user", "content": [{"type": "text", "text": second}]},
    ]
    inputs = runner.prepare_chat(video, conversation, second)
    prompt = runner.processor.tokenizer.decode(inputs["input_ids"][0])
    assert prompt.index(first) < prompt.index(first_answer) < prompt.index(second)
    # the keyframes are ranked against the current question alone, as `ask` ranks them, and the video is there once
    alone = runner.processor(text=second, videos=video.video, query=second)
    video_token_id = runner.model.config.video_token_id
    assert (inputs["input_ids"] == video_token_id).sum() == (alone["input_ids"] == video_token_id).sum()
    torch.testing.assert_close(inputs["query_embeds"], alone["query_embeds"], rtol=0, atol=0)
    assert torch.equal(inputs["keyframe_mask"], alone["keyframe_mask"])
    assert runner.reply(video, conversation, second, MAX_NEW_TOKENS) == runner.generate(inputs, MAX_NEW_TOKENS)[0]


def test_prepare_chat_needs_the_loaded_video_in_one_video_block(runner, questions):
    video = runner.load_video(questions[0].video, keep_features="none")
    other = runner.load_video(questions[0].video, keep_features="none")
    text_only = [{"role": "user", "content": [{"type": "text", "text": "What moves?"}]}]
    with pytest.raises(ValueError, match=r"`conversation` must hold the loaded video .* found 0 video blocks"):
        runner.prepare_chat(video, text_only, "What moves?")
    another = [{"role": "user", "content": [{"type": "video", "video": other.video}, {"type": "text", "text": "q"}]}]
    with pytest.raises(ValueError, match="found one holding another video"):
        runner.prepare_chat(video, another, "q")
