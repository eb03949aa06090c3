"""A video file written by the test, through the processor, into a tiny model that generates."""

import pytest
import torch
from transformers import AutoProcessor

from modeling_vilamp import ViLaMPConfig, ViLaMPForConditionalGeneration
from processing import KeyframeSelector, ViLaMPProcessor

VIDEO_TOKEN_ID = 508  # the tiny tokenizer's `<video>`
NUM_KEYFRAMES = 2
KEYFRAME_POOLED_SIZE = 2
FRAME_SIZE = 56


@pytest.fixture
def processor(tiny_tokenizer, tiny_keyframe_selector_dir):
    return ViLaMPProcessor(
        tokenizer=tiny_tokenizer,
        num_keyframes=NUM_KEYFRAMES,
        keyframe_pooled_size=KEYFRAME_POOLED_SIZE,
        frame_size=FRAME_SIZE,
        keyframe_selector=KeyframeSelector.from_pretrained(tiny_keyframe_selector_dir),
    )


@pytest.fixture
def model():
    torch.manual_seed(0)
    config = ViLaMPConfig(
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": FRAME_SIZE,
            "patch_size": 14,
        },
        text_config={
            "vocab_size": 512,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "pad_token_id": 509,
            "eos_token_id": 511,
        },
        video_token_index=VIDEO_TOKEN_ID,
        keyframe_pooled_size=KEYFRAME_POOLED_SIZE,
        query_embed_dim=16,
    )
    return ViLaMPForConditionalGeneration(config).eval()


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
