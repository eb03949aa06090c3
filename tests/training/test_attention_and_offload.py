"""Attention implementations and `device_map` loading with offload: what fine-tuning and long-video inference load with."""

import pytest
import torch
from transformers.utils import is_flash_attn_2_available

from vilamp.modeling_vilamp import ViLaMPForConditionalGeneration
from vilamp.testing import build_tiny_model

MAX_NEW_TOKENS = 5


@pytest.fixture(scope="module")
def saved_model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_model")
    build_tiny_model().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def generated_ids(saved_model_dir, training_batch):
    """Greedy ids of the plainly loaded model on the fixed batch's first row."""
    model = ViLaMPForConditionalGeneration.from_pretrained(saved_model_dir).eval()
    return generate(model, first_row(training_batch))


def first_row(batch: dict) -> dict:
    """The inputs of the batch's first video, without labels."""
    num_frames = int(batch["video_frame_counts"][0])
    return {
        "input_ids": batch["input_ids"][:1],
        "attention_mask": batch["attention_mask"][:1],
        "pixel_values_videos": batch["pixel_values_videos"][:num_frames],
        "keyframe_mask": batch["keyframe_mask"][:num_frames],
        "query_embeds": batch["query_embeds"][:1],
        "video_frame_counts": batch["video_frame_counts"][:1],
    }


def generate(model, inputs: dict) -> torch.Tensor:
    # random weights may pick the end token at once: generate a fixed number of tokens
    return model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, min_new_tokens=MAX_NEW_TOKENS, do_sample=False)


def parameter_bytes(module: torch.nn.Module) -> int:
    return sum(parameter.numel() * parameter.element_size() for parameter in module.parameters())


def test_sdpa_is_the_default_attention(saved_model_dir):
    model = ViLaMPForConditionalGeneration.from_pretrained(saved_model_dir)
    assert model.config.text_config._attn_implementation == "sdpa"
    assert model.config.vision_config._attn_implementation == "sdpa"


@pytest.mark.skipif(is_flash_attn_2_available(), reason="checks the message shown when flash-attn is missing")
def test_flash_attention_2_without_flash_attn_fails_with_a_clear_message(saved_model_dir):
    with pytest.raises(
        ImportError, match="FlashAttention2 .* the package for FlashAttention2 doesn't seem to be installed"
    ):
        ViLaMPForConditionalGeneration.from_pretrained(saved_model_dir, attn_implementation="flash_attention_2")


# accelerate warns that `model.image_newline`, a parameter, is no submodule; it still places it
@pytest.mark.filterwarnings("ignore:The following device_map keys do not match any submodules")
def test_device_map_with_disk_offload_generates_the_same_ids(saved_model_dir, training_batch, generated_ids, tmp_path):
    device_map = {
        "model.vision_tower": "cpu",
        "model.multi_modal_projector": "cpu",
        "model.feature_merger": "cpu",
        "model.image_newline": "cpu",
        "model.language_model.embed_tokens": "cpu",
        "model.language_model.rotary_emb": "cpu",
        "model.language_model.layers.0": "cpu",
        "model.language_model.layers.1": "disk",
        "model.language_model.norm": "disk",
        "lm_head": "disk",
    }
    model = ViLaMPForConditionalGeneration.from_pretrained(
        saved_model_dir, device_map=device_map, offload_folder=tmp_path / "offload"
    ).eval()
    assert model.model.language_model.layers[1].self_attn.q_proj.weight.device.type == "meta"
    torch.testing.assert_close(generate(model, first_row(training_batch)), generated_ids, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:The following device_map keys do not match any submodules")
def test_device_map_auto_over_a_memory_limit_generates_the_same_ids(
    saved_model_dir, training_batch, generated_ids, tmp_path
):
    plain = ViLaMPForConditionalGeneration.from_pretrained(saved_model_dir)
    # room for the vision side, the embeddings and one decoder layer: the rest of the language model goes to disk
    vision_side = [plain.model.vision_tower, plain.model.multi_modal_projector, plain.model.feature_merger]
    budget = sum(map(parameter_bytes, vision_side)) + parameter_bytes(plain.model.language_model.embed_tokens)
    budget += 2 * parameter_bytes(plain.model.language_model.layers[0])
    model = ViLaMPForConditionalGeneration.from_pretrained(
        saved_model_dir, device_map="auto", max_memory={"cpu": budget}, offload_folder=tmp_path / "offload"
    ).eval()
    placements = set(model.hf_device_map.values())
    assert placements == {"cpu", "disk"}, model.hf_device_map
    assert model.hf_device_map["model.vision_tower"] == "cpu"
    torch.testing.assert_close(generate(model, first_row(training_batch)), generated_ids, rtol=0, atol=0)
