"""A video file written by the test, through the processor, into a tiny model that generates."""

import pytest
import torch
from transformers import AutoProcessor

from vilamp.processing import ViLaMPProcessor
from vilamp.testing import TINY_SETTINGS, TINY_SPECIAL_TOKEN_IDS, build_tiny_model, build_tiny_processor

VIDEO_TOKEN_ID = TINY_SPECIAL_TOKEN_IDS["<video>"]
KEYFRAME_POOLED_SIZE = TINY_SETTINGS["keyframe_pooled_size"]


@pytest.fixture
def processor():
    return build_tiny_processor()


@pytest.fixture
def model():
    return build_tiny_model().eval()


def test_video_file_through_processor_and_model_generates(processor, model, make_video_file):
    inputs = processor(text="What moves in the video?", videos=str(make_video_file(num_frames=48, fps=8)))
    with torch.no_grad():
        outputs = model(**inputs)
    num_placeholders = int((inputs["input_ids"] == VIDEO_TOKEN_ID).sum())
    assert outputs.video_hidden_states.shape[0] == num_placeholders == KEYFRAME_POOLED_SIZE**2 * 2 + (6 - 2) + 1

    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert generated.shape == (1, inputs["input_ids"].shape[1] + 4)


def test_batch_of_videos_and_a_text_only_prompt_generates(processor, model, make_video_file):
    short_video, long_video = str(make_video_file(num_frames=16)), str(make_video_file(num_frames=40))
    prompts = ["<video>\\nWhat moves?", "No video here.", "<video>\\nHow bright is it?"]
    inputs = processor(text=prompts, videos=[short_video, long_video])
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False, min_new_tokens=3)
    assert generated.shape == (3, inputs["input_ids"].shape[1] + 3)


def test_processor_and_model_round_trip_through_auto_classes(processor, model, make_video_file, tmp_path):
    from transformers import AutoModel

    processor.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    loaded_model = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded_processor, ViLaMPProcessor)
    video = str(make_video_file(num_frames=24))
    inputs = processor(text="What moves?", videos=video)
    loaded_inputs = loaded_processor(text="What moves?", videos=video)
    for name, tensor in inputs.items():
        torch.testing.assert_close(loaded_inputs[name], tensor, rtol=0, atol=0)
    with torch.no_grad():
        # float32 rounding only: the BLAS kernels may differ with the alignment of the weights loaded from the file
        torch.testing.assert_close(loaded_model(**inputs).logits, model(**inputs).logits, rtol=1e-6, atol=1e-6)
