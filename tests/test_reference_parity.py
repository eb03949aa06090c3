"""Each model stage against the original code's output on the shared reference (tiny checkpoint, float32, CPU).

The model is built from the original checkpoint by renaming its keys (the converter's table), and fed the golden
keyframe mask and CLIP query, so that each stage here tests the model alone; the processor's stages are tested in
tests/processing and the whole conversion in tests/conversion.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vilamp.conversion.convert_original_to_hf import convert_config, convert_state_dict, converted_vision_config
from vilamp.conversion.verify_reference import model_stage_outputs
from vilamp.modeling_vilamp import ViLaMPForConditionalGeneration, reference_frame_indices
from vilamp.processing import ViLaMPVideoProcessor

# float32 on the CPU: the reference's eager-vs-SDPA spread is 2.4e-6 (golden/meta.json); the issue asks for 1e-4
ATOL = 1e-4
VIDEO_TOKEN_ID = 508  # a free id of the reference's toy vocabulary


@pytest.fixture(scope="module")
def golden(reference_dir):
    return load_file(reference_dir / "golden" / "golden.safetensors")


@pytest.fixture(scope="module")
def model(reference_dir):
    state_dict = load_file(reference_dir / "original_tiny" / "model.safetensors")
    original_config = json.loads((reference_dir / "original_tiny" / "config.json").read_text())
    tower_config = json.loads((reference_dir / "siglip-tiny-patch14-384" / "config.json").read_text())
    config = convert_config(
        original_config,
        converted_vision_config(tower_config, state_dict),
        video_token_index=VIDEO_TOKEN_ID,
        vocab_size=original_config["vocab_size"],
    )
    converted, unmapped_keys = convert_state_dict(state_dict)
    assert unmapped_keys == []
    model = ViLaMPForConditionalGeneration(config).eval()
    model.load_state_dict(converted, strict=True)
    return model


@pytest.fixture(scope="module")
def pixel_values_videos(reference_dir):
    frames = np.load(reference_dir / "inputs" / "frames.npy")
    return ViLaMPVideoProcessor()([Image.fromarray(frame) for frame in frames])["pixel_values_videos"]


@pytest.fixture(scope="module")
def stages(model, pixel_values_videos, golden, reference_dir):
    return model_stage_outputs(
        model, pixel_values_videos, golden["keyframe_mask"].bool(), golden["clip_text_embeds"], reference_dir
    )


@pytest.mark.parametrize(
    "stage",
    [
        "siglip_features",
        "projected_features",
        "pooled_keyframe_tokens",
        "non_keyframe_tokens",
        "video_tokens",
        "inputs_embeds",
        "logits",
        "generate_step_logits",
    ],
)
def test_stage_matches_the_original(stages, golden, stage):
    assert stages[stage].shape == golden[stage].shape
    torch.testing.assert_close(stages[stage], golden[stage], rtol=0, atol=ATOL)


def test_greedy_generation_matches_the_original_exactly(stages, golden):
    assert stages["generated_ids"].tolist() == golden["generated_ids"].tolist()


def test_dfm_reference_frames_follow_the_original_code(golden):
    references = reference_frame_indices(golden["keyframe_mask"].bool(), "original")
    assert references.tolist() == golden["dfm_reference_frame_index"].tolist()


def test_dfm_output_of_every_frame_matches_the_original(model, golden):
    # the original merges every frame, keyframes included, before keeping the non-keyframes' tokens
    projected_features = golden["projected_features"]
    references = reference_frame_indices(golden["keyframe_mask"].bool(), "original")
    merger = model.model.feature_merger
    with torch.no_grad():
        projected_query = merger.project_query(golden["clip_text_embeds"]).expand(projected_features.shape[0], -1)
        tokens = merger(projected_features, projected_features[references], projected_query)
    torch.testing.assert_close(tokens, golden["dfm_output_all_frames"], rtol=0, atol=ATOL)


def test_image_newline_is_the_checkpoint_parameter(model, golden):
    torch.testing.assert_close(model.model.image_newline.detach(), golden["image_newline"], rtol=0, atol=0)
