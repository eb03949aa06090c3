"""QLoRA: LoRA on a language model quantized as it loads, prepared the documented PEFT way.

torchao's int8 weight-only runs on the CPU (PEFT's torchao LoRA takes int8 weights only); bitsandbytes' NF4, the usual
QLoRA, is tested on a GPU.
"""

import pytest
import torch

peft = pytest.importorskip("peft", reason="QLoRA fine-tuning needs peft (the `peft` extra)")

from vilamp import ViLaMPForConditionalGeneration  # noqa: E402
from vilamp.runner import DEVICE_INPUT_NAMES  # noqa: E402
from vilamp.testing import build_tiny_model, train_steps  # noqa: E402
from vilamp.training import (  # noqa: E402
    is_vision_tower_parameter,
    lora_config,
    prepare_quantized_model_for_training,
    trainable_parameter_names,
)

NUM_STEPS = 30
LEARNING_RATE = 1e-2


@pytest.fixture(scope="module")
def saved_model_dir(tmp_path_factory):
    """The tiny model of the LoRA tests (seed 0), saved as a user's checkpoint is."""
    directory = tmp_path_factory.mktemp("model")
    build_tiny_model(0).save_pretrained(directory)
    return directory


def torchao_int8_config():
    torchao = pytest.importorskip("torchao", reason="the torchao tests need torchao (pinned in ci/constraints*.txt)")
    from transformers import TorchAoConfig

    return TorchAoConfig(torchao.quantization.Int8WeightOnlyConfig())


def nf4_config():
    pytest.importorskip("bitsandbytes", reason="the bitsandbytes tests need bitsandbytes (a GPU package, not in CI)")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)


def qlora_model(directory, quantization_config, device: str, dtype: torch.dtype):
    """The saved model loaded with its language model quantized, prepared for QLoRA and wrapped with deterministic
    adapters (no dropout)."""
    model = ViLaMPForConditionalGeneration.from_pretrained(
        directory, quantization_config=quantization_config, dtype=dtype, device_map=device
    )
    return peft.get_peft_model(prepare_quantized_model_for_training(model), lora_config(r=8, lora_dropout=0.0))


def on_device(batch, device) -> dict:
    """The batch with the inputs that the runner moves, and the labels, on `device` (the frames stay)."""
    names = (*DEVICE_INPUT_NAMES, "labels")
    return {name: value.to(device) if name in names else value for name, value in batch.items()}


def train(model, batch, num_steps: int) -> list[float]:
    """Runs `num_steps` AdamW steps on one batch, the model in training mode, and returns the loss before each step."""
    model.train()
    return train_steps(model, batch, num_steps, LEARNING_RATE)


def check_qlora_trains_and_reloads(directory, quantization_config, batch, tmp_path, device, dtype):
    """Only adapters train, the loss falls by more than half, and the saved adapters on a fresh quantized model give
    the trained model's logits."""
    model = qlora_model(directory, quantization_config, device, dtype)
    trainable = trainable_parameter_names(model)
    assert trainable and all("lora_" in name for name in trainable)
    assert not any(is_vision_tower_parameter(name) for name in trainable)
    losses = train(model, batch, NUM_STEPS)
    assert min(losses) < losses[0] / 2, losses
    model.eval()
    model.save_pretrained(tmp_path / "adapter")
    base = ViLaMPForConditionalGeneration.from_pretrained(
        directory, quantization_config=quantization_config, dtype=dtype, device_map=device
    )
    reloaded = peft.PeftModel.from_pretrained(prepare_quantized_model_for_training(base), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits)


@pytest.mark.slow
def test_qlora_on_torchao_int8_trains_and_reloads(saved_model_dir, training_batch, tmp_path):
    check_qlora_trains_and_reloads(
        saved_model_dir, torchao_int8_config(), training_batch, tmp_path, device="cpu", dtype=torch.float32
    )


def test_unquantized_model_is_refused_with_the_way_to_load_it(tiny_model):
    with pytest.raises(ValueError, match="`model` was loaded without a `quantization_config`.*BitsAndBytesConfig"):
        prepare_quantized_model_for_training(tiny_model())


@pytest.mark.gpu
def test_qlora_on_nf4_trains_and_reloads(saved_model_dir, training_batch, tmp_path):
    check_qlora_trains_and_reloads(
        saved_model_dir, nf4_config(), on_device(training_batch, "cuda"), tmp_path, device="cuda", dtype=torch.bfloat16
    )


@pytest.mark.gpu
def test_qlora_on_nf4_keeps_the_vision_path_unquantized_and_frozen(saved_model_dir):
    model = qlora_model(saved_model_dir, nf4_config(), "cuda", torch.bfloat16)
    vision = {name: parameter for name, parameter in model.named_parameters() if is_vision_tower_parameter(name)}
    # PEFT's preparation upcasts the unquantized weights to float32 for stable training
    assert vision and all(
        type(parameter) is torch.nn.Parameter and parameter.dtype == torch.float32 and not parameter.requires_grad
        for parameter in vision.values()
    )
