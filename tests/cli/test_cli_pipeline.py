"""The command line's stages: the processor's stages with what they decided, an answer streamed as `generate` gives
it, its hooks leaving the model as it was, and a chat's history bounded by the model's positions."""

from vilamp.cli.pipeline import answer_question, chat_conversation, chat_inputs, generate_answer, prepare_video
from vilamp.runner import VideoQuestion, ViLaMPRunner


def test_prepared_video_keeps_the_keyframe_selection_and_the_answer_streams_as_generate_gives_it(
    model_dir, video_file
):
    runner = ViLaMPRunner.from_pretrained(model_dir, device="cpu", dtype="float32")
    model, processor = runner.model, runner.processor
    question = "What colour is the square?"
    prepared = prepare_video(processor, video_file, question, show_progress=False)
    keyframes = prepared.keyframes
    assert keyframes.keyframe_mask.sum() == 4 and keyframes.ranked_keyframe_mask.sum() <= 4
    assert not (keyframes.ranked_keyframe_mask & ~keyframes.keyframe_mask).any()
    assert keyframes.relevance_scores.shape == (12,) and prepared.timestamps_seconds == [float(i) for i in range(12)]
    assert prepared.keyframe_timestamps_seconds == [float(i) for i in keyframes.keyframe_mask.nonzero().flatten()]
    assert prepared.frame_aspect_ratio == 160 / 120
    assert set(prepared.timings_seconds) == {"decoding", "keyframe_selection"}

    streamed = []
    generated = generate_answer(runner, prepared.inputs, max_new_tokens=4, write=streamed.append, show_progress=False)
    answer = generated.text
    assert "".join(streamed).strip() == answer.strip()
    assert {"encoding", "prefill", "generation"} <= set(generated.timings_seconds)
    expected = processor(text=question, videos=str(video_file))
    expected_ids = model.generate(**expected, max_new_tokens=4, do_sample=False)
    new_ids = expected_ids[0, expected["input_ids"].shape[1] :]
    assert processor.tokenizer.decode(new_ids, skip_special_tokens=True) == answer
    assert generated.num_tokens == len(new_ids)
    # the progress hooks are removed
    assert not model.model.multi_modal_projector._forward_hooks
    assert not model.model.language_model._forward_pre_hooks


def test_chat_leaves_out_the_oldest_exchanges_when_the_prompt_would_exceed_the_positions(model_dir, video_file):
    runner = ViLaMPRunner.from_pretrained(model_dir, device="cpu", dtype="float32")
    video = runner.load_video(str(video_file), keep_features="none")
    exchanges = [("What colour is the square?", "Red."), ("Where is it?", "In the middle.")]
    question, max_new_tokens = "Is anything moving?", 4
    full, num_dropped = chat_inputs(runner, video, exchanges, question, max_new_tokens)
    assert num_dropped == 0
    text_config = runner.model.config.text_config
    # one position short of the whole conversation: the oldest exchange goes, the video moves to the next one
    text_config.max_position_embeddings = full["input_ids"].shape[1] + max_new_tokens - 1
    bounded, num_dropped = chat_inputs(runner, video, exchanges, question, max_new_tokens)
    assert num_dropped == 1
    expected = runner.prepare_chat(video, chat_conversation(video.video, exchanges[1:], question), question)
    assert bounded["input_ids"].equal(expected["input_ids"])
    prompt = runner.processor.tokenizer.decode(bounded["input_ids"][0])
    assert "What colour" not in prompt and prompt.index(runner.processor.video_token) < prompt.index("Where is it?")
    answer = answer_question(runner, video, question, max_new_tokens=max_new_tokens, exchanges=exchanges)
    assert answer.num_dropped_exchanges == 1
    # even the question alone too long: its inputs as they are, every exchange left out
    text_config.max_position_embeddings = 8
    alone, num_dropped = chat_inputs(runner, video, exchanges, question, max_new_tokens)
    assert num_dropped == 2
    (asked,) = runner.prepare([[VideoQuestion(video, question, question)]])
    assert alone["input_ids"].equal(asked["input_ids"])
