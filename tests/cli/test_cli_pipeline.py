"""The command line's stage-by-stage pipeline gives the processor's inputs, and its hooks leave the model as it was."""

import torch

from vilamp_cli.pipeline import generate_answer, load_model_and_processor, prepare_video


def test_stage_by_stage_inputs_equal_the_processor_call(model_dir, video_file):
    model, processor = load_model_and_processor(model_dir, device=torch.device("cpu"), dtype=torch.float32)
    question = "What colour is the square?"
    prepared = prepare_video(processor, video_file, question, show_progress=False)
    expected = processor(text=question, videos=str(video_file))
    assert set(prepared.inputs) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(prepared.inputs[name], tensor), name
    assert prepared.keyframe_mask.sum() == 4 and prepared.ranked_keyframe_mask.sum() <= 4
    assert not (prepared.ranked_keyframe_mask & ~prepared.keyframe_mask).any()
    assert prepared.relevance_scores.shape == (12,) and prepared.timestamps_seconds == [float(i) for i in range(12)]

    streamed = []
    answer = generate_answer(model, processor, prepared, max_new_tokens=4, write=streamed.append, show_progress=False)
    assert "".join(streamed).strip() == answer.strip()
    assert {"encoding", "prefill", "generation"} <= set(prepared.timings_seconds)
    expected_ids = model.generate(**expected, max_new_tokens=4, do_sample=False)
    assert processor.tokenizer.decode(expected_ids[0, expected["input_ids"].shape[1] :], skip_special_tokens=True) == answer
    # the progress hooks are removed
    assert not model.model.multi_modal_projector._forward_hooks
    assert not model.model.language_model._forward_pre_hooks
