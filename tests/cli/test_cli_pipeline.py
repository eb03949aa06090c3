"""The command line's stages: the processor's stages with what they decided, and an answer streamed as `generate` gives
it, its hooks leaving the model as it was."""

from vilamp.cli.pipeline import generate_answer, prepare_video
from vilamp.runner import ViLaMPRunner


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
    answer = generate_answer(runner, prepared, max_new_tokens=4, write=streamed.append, show_progress=False)
    assert "".join(streamed).strip() == answer.strip()
    assert {"encoding", "prefill", "generation"} <= set(prepared.timings_seconds)
    expected = processor(text=question, videos=str(video_file))
    expected_ids = model.generate(**expected, max_new_tokens=4, do_sample=False)
    assert (
        processor.tokenizer.decode(expected_ids[0, expected["input_ids"].shape[1] :], skip_special_tokens=True)
        == answer
    )
    # the progress hooks are removed
    assert not model.model.multi_modal_projector._forward_hooks
    assert not model.model.language_model._forward_pre_hooks
