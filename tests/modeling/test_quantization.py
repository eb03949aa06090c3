"""The language model quantized as it loads (`from_pretrained(..., quantization_config=...)`), the vision path not.

torchao's weight-only configs run on the CPU: their tests run everywhere torchao is installed (CI pins it). Of torchao's
4-bit configs only `IntxWeightOnlyConfig(weight_dtype=torch.int4)` runs on the CPU; `Int4WeightOnlyConfig` needs a GPU.
bitsandbytes (a GPU package, not installed in CI) is tested on a GPU only: its CPU kernels (0.50) reject NF4 blocks
wider than the tiny model's rows.
"""

import pytest
import torch

from vilamp import ViLaMPForConditionalGeneration
from vilamp.modeling_vilamp import ViLaMPModel
from vilamp.runner import DEVICE_INPUT_NAMES
from vilamp.testing import build_tiny_model

# 6 and 10 frames at 1 fps (K = 2 keyframes each), so the rows of a batch differ in length and in frames
MAX_NEW_TOKENS = 6
# the modules of `ViLaMPForConditionalGeneration` that stay in the model's dtype, and what transformers quantizes
UNQUANTIZED_PREFIXES = ("model.vision_tower.", "model.multi_modal_projector.", "model.feature_merger.", "lm_head.")
# bfloat16 on a GPU: the tiny model's logits spread over about +-3, and bfloat16 keeps 3 significant digits; batch-shaped
# kernels and LLM.int8()'s batch-wide outlier columns move them by rounding only
GPU_LOGITS_TOLERANCE = 0.1
LANGUAGE_MODEL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def torchao_config(kind: str):
    """transformers' `TorchAoConfig` for torchao's CPU weight-only configs: int8, or int4 values in groups of 16."""
    torchao = pytest.importorskip("torchao", reason="the torchao tests need torchao (pinned in ci/constraints*.txt)")
    from transformers import TorchAoConfig

    if kind == "int8":
        return TorchAoConfig(torchao.quantization.Int8WeightOnlyConfig())
    return TorchAoConfig(
        torchao.quantization.IntxWeightOnlyConfig(
            weight_dtype=torch.int4, granularity=torchao.quantization.PerGroup(16)
        )
    )


def bitsandbytes_config(kind: str):
    """transformers' `BitsAndBytesConfig`: NF4 computing in bfloat16, or LLM.int8()."""
    pytest.importorskip("bitsandbytes", reason="the bitsandbytes tests need bitsandbytes (a GPU package, not in CI)")
    from transformers import BitsAndBytesConfig

    if kind == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    return BitsAndBytesConfig(load_in_8bit=True)


def is_quantized_weight(module: torch.nn.Module) -> bool:
    """Whether a linear layer's weight was quantized, by torchao (a tensor subclass) or bitsandbytes (its modules)."""
    weight_type = type(module.weight)
    return weight_type not in (torch.Tensor, torch.nn.Parameter) or type(module) is not torch.nn.Linear


@pytest.fixture(scope="module")
def saved_model_dir(tmp_path_factory):
    """A tiny random ViLaMP saved as a user's checkpoint is."""
    directory = tmp_path_factory.mktemp("model")
    build_tiny_model(seed=1).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def batch(processor, questions, videos):
    return processor(text=list(questions), videos=videos, return_tensors="pt")


def load_quantized(directory, quantization_config, device: str = "cpu", dtype=torch.bfloat16):
    return ViLaMPForConditionalGeneration.from_pretrained(
        directory, quantization_config=quantization_config, dtype=dtype, device_map=device
    ).eval()


def check_only_language_model_quantized(model, dtype):
    """Every linear layer of the language model's decoder is quantized; every parameter of the vision path, the
    `image_newline` and `lm_head` is a plain tensor in the model's dtype."""
    decoder_linears = {
        name: module
        for name, module in model.named_modules()
        if name.startswith("model.language_model.layers.") and name.endswith(LANGUAGE_MODEL_PROJECTIONS)
    }
    assert decoder_linears and all(is_quantized_weight(module) for module in decoder_linears.values())
    kept = {
        name: parameter
        for name, parameter in model.named_parameters()
        if name.startswith(UNQUANTIZED_PREFIXES) or name == "model.image_newline"
    }
    assert {"model.image_newline", "model.feature_merger.tau", "lm_head.weight"} <= set(kept)
    wrong = {
        name: (type(parameter.data).__name__, parameter.dtype)
        for name, parameter in kept.items()
        if type(parameter.data) is not torch.Tensor or parameter.dtype != dtype
    }
    assert not wrong, wrong
    for prefix in UNQUANTIZED_PREFIXES:
        linears = [
            module
            for name, module in model.named_modules()
            if f"{name}.".startswith(prefix) and isinstance(module, torch.nn.Linear)
        ]
        assert linears and not any(is_quantized_weight(module) for module in linears), prefix


def on_model_device(inputs, model) -> dict:
    """The processor's inputs with those the runner moves moved to the model's device (the frames stay)."""
    return {name: value.to(model.device) if name in DEVICE_INPUT_NAMES else value for name, value in inputs.items()}


def greedy(model, inputs, **generate_kwargs) -> tuple[list[list[int]], torch.Tensor]:
    """The greedy new ids of each row and the first step's logits `(batch_size, vocab_size)` in float32."""
    output = model.generate(
        **inputs,
        max_new_tokens=MAX_NEW_TOKENS,
        do_sample=False,
        return_dict_in_generate=True,
        output_logits=True,
        **generate_kwargs,
    )
    return output.sequences[:, inputs["input_ids"].shape[1] :].tolist(), output.logits[0].float().cpu()


def check_generation_as_unquantized(model, batch, processor, questions, videos, logits_tolerance: float | None = None):
    """
    What holds for the unquantized model holds for the quantized one: each row of a batch of two videos is that video
    asked alone, and the static cache gives the dynamic cache's answers. Exact ids where `logits_tolerance` is None (float32
    weights and activations on the CPU); else the first step's logits within it, as kernels chosen by the batch's
    shape (bitsandbytes' single-row kernel, LLM.int8()'s outlier columns over the whole batch) round differently.
    """
    batch = on_model_device(batch, model)
    together_ids, together_logits = greedy(model, batch)
    static_ids, static_logits = greedy(model, batch, cache_implementation="static")
    alone = [
        greedy(model, on_model_device(processor(text=question, videos=video, return_tensors="pt"), model))
        for question, video in zip(questions, videos)
    ]
    alone_ids = [ids[0] for ids, _ in alone]
    alone_logits = torch.cat([logits for _, logits in alone])
    if logits_tolerance is None:
        assert static_ids == together_ids
        assert alone_ids == together_ids
    else:
        tolerance = {"rtol": 0, "atol": logits_tolerance}
        torch.testing.assert_close(static_logits, together_logits, **tolerance)
        torch.testing.assert_close(alone_logits, together_logits, **tolerance)
        assert all(len(ids) == MAX_NEW_TOKENS for ids in together_ids + static_ids + alone_ids)


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_torchao_quantizes_only_the_language_model(saved_model_dir, kind):
    check_only_language_model_quantized(load_quantized(saved_model_dir, torchao_config(kind)), torch.bfloat16)


def test_float16_keeps_the_vision_path_in_float16(saved_model_dir):
    # `_keep_in_fp32_modules` would have upcast it to float32 under float16
    model = load_quantized(saved_model_dir, torchao_config("int8"), dtype=torch.float16)
    check_only_language_model_quantized(model, torch.float16)


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_torchao_generates_batches_and_static_cache_as_unquantized(
    saved_model_dir, batch, processor, questions, videos, kind
):
    model = load_quantized(saved_model_dir, torchao_config(kind), dtype=torch.float32)
    check_generation_as_unquantized(model, batch, processor, questions, videos)


def test_user_modules_to_skip_add_to_the_vision_path_and_the_users_config_is_unchanged(saved_model_dir):
    quantization_config = torchao_config("int8")
    quantization_config.modules_to_not_convert = ["model.language_model.layers.1.mlp"]
    model = load_quantized(saved_model_dir, quantization_config)
    assert quantization_config.modules_to_not_convert == ["model.language_model.layers.1.mlp"]
    assert model.config.quantization_config.modules_to_not_convert == [
        "model.vision_tower",
        "model.multi_modal_projector",
        "model.feature_merger",
        "lm_head",
        "model.language_model.layers.1.mlp",
    ]
    assert not is_quantized_weight(model.model.language_model.layers[1].mlp.up_proj)
    assert is_quantized_weight(model.model.language_model.layers[1].self_attn.q_proj)
    # without ViLaMP's list, transformers would quantize `lm_head` once the user names modules of their own
    assert not is_quantized_weight(model.lm_head)


def test_base_model_names_its_modules_without_the_prefix(saved_model_dir):
    model = ViLaMPModel.from_pretrained(
        saved_model_dir, quantization_config=torchao_config("int8"), dtype=torch.bfloat16, device_map="cpu"
    )
    assert not is_quantized_weight(model.vision_tower.encoder.layers[0].mlp.fc1)
    assert not is_quantized_weight(model.multi_modal_projector.linear_1)
    assert not is_quantized_weight(model.feature_merger.linear_q)
    assert is_quantized_weight(model.language_model.layers[0].mlp.up_proj)


def test_saved_quantized_model_reloads_quantized_with_the_same_logits(saved_model_dir, batch, tmp_path):
    model = load_quantized(saved_model_dir, torchao_config("int8"), dtype=torch.float32)
    model.save_pretrained(tmp_path / "quantized")
    reloaded = ViLaMPForConditionalGeneration.from_pretrained(tmp_path / "quantized", device_map="cpu").eval()
    check_only_language_model_quantized(reloaded, torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_bitsandbytes_quantizes_only_the_language_model(saved_model_dir, batch, processor, questions, videos, kind):
    model = load_quantized(saved_model_dir, bitsandbytes_config(kind), device="cuda")
    check_only_language_model_quantized(model, torch.bfloat16)
    check_generation_as_unquantized(model, batch, processor, questions, videos, logits_tolerance=GPU_LOGITS_TOLERANCE)


@pytest.mark.gpu
def test_torchao_int4_weight_only_on_a_gpu(saved_model_dir, batch, processor, questions, videos):
    torchao = pytest.importorskip("torchao", reason="needs torchao")
    from transformers import TorchAoConfig

    # the tinygemm layout that torch's CUDA build runs without other kernels; groups of 32 fit the tiny widths
    quant_type = torchao.quantization.Int4WeightOnlyConfig(group_size=32, int4_packing_format="tile_packed_to_4d")
    model = load_quantized(saved_model_dir, TorchAoConfig(quant_type), device="cuda")
    check_only_language_model_quantized(model, torch.bfloat16)
    check_generation_as_unquantized(model, batch, processor, questions, videos, logits_tolerance=GPU_LOGITS_TOLERANCE)
