"""LoRA fine-tuning of the tiny model: what trains, what stays frozen, saving, merging and gradient checkpointing."""

import re

import pytest
import torch

peft = pytest.importorskip("peft", reason="LoRA fine-tuning needs peft (the `peft` extra)")

from vilamp.testing import train_steps  # noqa: E402
from vilamp.training import (  # noqa: E402
    enable_gradient_checkpointing,
    is_vision_tower_parameter,
    language_model_target_pattern,
    lora_config,
    trainable_parameter_names,
)

NUM_STEPS = 30
LEARNING_RATE = 1e-2
MODULES_TO_SAVE = ("multi_modal_projector", "feature_merger")
# merging adds the low-rank product into the float32 weights: the logits move by rounding only
MERGE_ATOL = 1e-5


def lora_model(model, modules_to_save=MODULES_TO_SAVE):
    """The model wrapped with deterministic adapters (no dropout) on the language model."""
    return peft.get_peft_model(model, lora_config(r=8, lora_dropout=0.0, modules_to_save=modules_to_save))


def train(model, batch, num_steps: int) -> list[float]:
    """Runs `num_steps` AdamW steps on one batch and returns the loss before each step."""
    return train_steps(model, batch, num_steps, LEARNING_RATE)


def test_target_pattern_hits_only_language_model_projections(tiny_model):
    pattern = language_model_target_pattern()
    names = [name for name, _ in tiny_model().named_modules()]
    hit = [name for name in names if re.fullmatch(pattern, name)]
    assert len(hit) == 2 * 7  # 2 decoder layers, 4 attention and 3 MLP projections each
    assert all(name.startswith("model.language_model.layers.") for name in hit)
    # the SigLIP attention has projections of the same names that a plain list would catch
    assert any(name.startswith("model.vision_tower.") and name.endswith(".q_proj") for name in names)
    assert [name for name in hit if "self_attn" in name and name.endswith("q_proj")] == [
        f"model.language_model.layers.{layer}.self_attn.q_proj" for layer in range(2)
    ]
    only_qv = language_model_target_pattern(["q_proj", "v_proj"])
    assert (
        sorted(name.rsplit(".", 1)[1] for name in names if re.fullmatch(only_qv, name))
        == ["q_proj"] * 2 + ["v_proj"] * 2
    )


def test_unknown_projection_or_module_is_rejected():
    with pytest.raises(ValueError, match="`target_projections` must be a non-empty selection"):
        language_model_target_pattern(["qkv"])
    with pytest.raises(ValueError, match="`modules_to_save` may hold"):
        lora_config(modules_to_save=["vision_tower"])


def test_loss_falls_by_more_than_half_within_30_steps(tiny_model, training_batch):
    losses = train(lora_model(tiny_model()), training_batch, NUM_STEPS)
    assert min(losses) < losses[0] / 2, losses


def test_only_adapters_and_saved_modules_change(tiny_model, training_batch):
    model = lora_model(tiny_model())
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    trainable = set(trainable_parameter_names(model))
    train(model, training_batch, 3)
    changed = {name for name, parameter in model.named_parameters() if not torch.equal(parameter, before[name])}
    assert changed <= trainable
    assert all("lora_" in name or ".modules_to_save.default." in name for name in trainable)
    assert any(".lora_B." in name for name in changed)
    assert any("multi_modal_projector.modules_to_save" in name for name in changed)
    assert any("feature_merger.modules_to_save" in name for name in changed)
    assert not any(is_vision_tower_parameter(name) for name in trainable)


def test_without_modules_to_save_only_adapters_train(tiny_model):
    model = lora_model(tiny_model(), modules_to_save=())
    assert all("lora_" in name for name in trainable_parameter_names(model))


def test_feature_merger_and_projector_get_gradients_vision_tower_none(tiny_model, training_batch):
    model = lora_model(tiny_model())
    model(**training_batch).loss.backward()
    for module in MODULES_TO_SAVE:
        grads = {
            name.split(".modules_to_save.default.")[1]: parameter.grad
            for name, parameter in model.named_parameters()
            if f"{module}.modules_to_save.default." in name
        }
        assert grads and all(grad is not None and grad.abs().sum() > 0 for grad in grads.values()), module
    assert {"tau", "linear_q.weight", "linear_iq.weight", "linear_k.weight", "linear_ik.weight"} <= set(
        name for name, _ in model.base_model.model.model.feature_merger.modules_to_save.default.named_parameters()
    )
    vision = [(name, parameter) for name, parameter in model.named_parameters() if is_vision_tower_parameter(name)]
    assert vision and all(not parameter.requires_grad and parameter.grad is None for _, parameter in vision)


def test_saved_adapter_reloads_with_identical_logits(tiny_model, training_batch, tmp_path):
    model = lora_model(tiny_model())
    train(model, training_batch, 3)
    model.eval()
    model.save_pretrained(tmp_path / "adapter")
    reloaded = peft.PeftModel.from_pretrained(tiny_model().eval(), tmp_path / "adapter")
    with torch.no_grad():
        expected = model(**training_batch).logits
        torch.testing.assert_close(reloaded(**training_batch).logits, expected, rtol=0, atol=0)
        # the adapter and the saved modules changed the model: reloading did not just give back the base
        assert not torch.allclose(tiny_model().eval()(**training_batch).logits, expected)


def test_merged_model_equals_unmerged(tiny_model, training_batch):
    model = lora_model(tiny_model())
    train(model, training_batch, 3)
    model.eval()
    with torch.no_grad():
        unmerged = model(**training_batch).logits
        merged_model = model.merge_and_unload()
        assert not any("lora_" in name for name, _ in merged_model.named_parameters())
        torch.testing.assert_close(merged_model(**training_batch).logits, unmerged, rtol=0, atol=MERGE_ATOL)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model, training_batch):
    gradients = []
    for checkpointing in (False, True):
        base = tiny_model()
        if checkpointing:
            enable_gradient_checkpointing(base)
        model = lora_model(base)
        train(model, training_batch, 1)  # one step, so that the adapters' B matrices are no longer zero
        model(**training_batch).loss.backward()
        gradients.append({name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad})
    assert gradients[0].keys() == gradients[1].keys()
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, rtol=1e-5, atol=1e-7, msg=name)


def test_gradient_checkpointing_is_on_in_the_towers(tiny_model):
    model = tiny_model()
    enable_gradient_checkpointing(model)
    assert model.model.language_model.gradient_checkpointing
    assert model.model.vision_tower.encoder.gradient_checkpointing
    # the vision chunks (SigLIP, projector, pooling, DFM) are recomputed in the backward pass too
    assert model.model.gradient_checkpointing


def test_frozen_vision_tower_builds_no_graph_even_with_input_require_grads(tiny_model, training_batch):
    model = lora_model(tiny_model(), modules_to_save=())
    enable_gradient_checkpointing(model.base_model.model)
    model.train()
    vision_model = model.base_model.model.model
    frames = training_batch["pixel_values_videos"][:2]
    assert not vision_model.get_vision_features(frames).requires_grad
    # nor do the frozen projector and DFM: the video tokens are constants of the language model's graph
    video_tokens = vision_model.get_video_features(
        training_batch["pixel_values_videos"],
        training_batch["keyframe_mask"],
        training_batch["query_embeds"],
        training_batch["video_frame_counts"],
    ).pooler_output
    assert not any(tokens.requires_grad for tokens in video_tokens)
