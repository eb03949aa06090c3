"""LoRA fine-tuning of ViLaMP with PEFT: adapters on the language model only, gradient checkpointing in both transformers
versions, and QLoRA on a language model quantized as it loads."""

import re
from collections.abc import Sequence

from vilamp.modeling_vilamp import ViLaMPForConditionalGeneration

# The projections of a Qwen2 decoder layer that LoRA may adapt, by the block that holds them.
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
DEFAULT_TARGET_PROJECTIONS = ATTENTION_PROJECTIONS + MLP_PROJECTIONS

# Modules that may be trained in full next to the adapters (PEFT `modules_to_save`), by their name in `ViLaMPModel`.
FULLY_TRAINABLE_MODULES = ("multi_modal_projector", "feature_merger")


def language_model_target_pattern(target_projections: Sequence[str] = DEFAULT_TARGET_PROJECTIONS) -> str:
    """
    The PEFT `target_modules` regex that matches the given projections of the language model's decoder layers only.

    A plain list such as `["q_proj", "v_proj"]` would also hit the attention of the SigLIP tower; the pattern is
    anchored on the module path `model.language_model.layers.<n>.` of [`ViLaMPForConditionalGeneration`] (PEFT matches
    a string `target_modules` against the whole module name).

    Args:
        target_projections (`Sequence[str]`, *optional*, defaults to every attention and MLP projection):
            Names among `q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`.

    Returns:
        `str`: e.g. `model\\.language_model\\.layers\\.\\d+\\.(self_attn\\.(q_proj|v_proj))` for `("q_proj", "v_proj")`.
    """
    unknown = sorted(set(target_projections) - set(DEFAULT_TARGET_PROJECTIONS))
    if unknown or not target_projections:
        raise ValueError(
            f"`target_projections` must be a non-empty selection of {list(DEFAULT_TARGET_PROJECTIONS)}, got "
            f"{list(target_projections)}."
        )
    blocks = []
    for block, projections in (("self_attn", ATTENTION_PROJECTIONS), ("mlp", MLP_PROJECTIONS)):
        chosen = [projection for projection in projections if projection in target_projections]
        if chosen:
            blocks.append(rf"{block}\.({'|'.join(chosen)})")
    return rf"model\.language_model\.layers\.\d+\.({'|'.join(blocks)})"


def lora_config(
    *,
    r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.05,
    target_projections: Sequence[str] = DEFAULT_TARGET_PROJECTIONS,
    modules_to_save: Sequence[str] = (),
):
    """
    A PEFT `LoraConfig` for [`ViLaMPForConditionalGeneration`]: adapters on the language model's projections; the
    vision tower gets none and stays frozen (PEFT freezes every weight that is neither an adapter nor saved in full).

    Args:
        r (`int`, *optional*, defaults to 16): the adapters' rank.
        lora_alpha (`int`, *optional*, defaults to 32): the adapters' scale numerator.
        lora_dropout (`float`, *optional*, defaults to 0.05): dropout on the adapters' input.
        target_projections (`Sequence[str]`, *optional*, defaults to every attention and MLP projection):
            the language model's projections that get adapters (see [`language_model_target_pattern`]).
        modules_to_save (`Sequence[str]`, *optional*, defaults to `()`): modules trained in full and saved with the
            adapter, among `"multi_modal_projector"` and `"feature_merger"` (the DFM); the original training trained
            the projector.

    Returns:
        `peft.LoraConfig`.
    """
    try:
        from peft import LoraConfig
    except ImportError as error:
        raise ImportError("LoRA fine-tuning needs the `peft` package: `pip install peft`.") from error
    unknown = sorted(set(modules_to_save) - set(FULLY_TRAINABLE_MODULES))
    if unknown:
        raise ValueError(f"`modules_to_save` may hold {list(FULLY_TRAINABLE_MODULES)}, got {list(modules_to_save)}.")
    return LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=language_model_target_pattern(target_projections),
        # full paths, so that no module of the towers with the same name is caught
        modules_to_save=[f"model.{name}" for name in modules_to_save] or None,
        task_type="CAUSAL_LM",
    )


def enable_gradient_checkpointing(model: ViLaMPForConditionalGeneration, use_reentrant: bool = False):
    """
    Turns on activation checkpointing in the vision tower and the language model, and makes the input embeddings
    require gradients so that checkpointed layers before any trainable weight still pass gradients to the adapters.

    transformers 5.23 names it `activation_checkpointing_enable` (deprecating `gradient_checkpointing_enable`), which
    5.17 lacks: the one that exists is called. Call it on the model before wrapping it with PEFT.

    Args:
        model ([`ViLaMPForConditionalGeneration`]): the model.
        use_reentrant (`bool`, *optional*, defaults to `False`): `torch.utils.checkpoint`'s mode; the non-reentrant
            one also works when a layer's inputs do not require gradients.
    """
    checkpoint_kwargs = {"use_reentrant": use_reentrant}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpoint_kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_kwargs)
    model.enable_input_require_grads()


def prepare_quantized_model_for_training(model: ViLaMPForConditionalGeneration, use_reentrant: bool = False):
    """
    QLoRA: readies a model whose language model was quantized as it loaded (`from_pretrained(...,
    quantization_config=BitsAndBytesConfig(load_in_4bit=True, ...))`) for LoRA, the documented PEFT way. PEFT's
    `prepare_model_for_kbit_training` freezes every weight and, for bitsandbytes, upcasts the unquantized float16 and
    bfloat16 weights (the vision path, the embeddings, the norms, `lm_head`) to float32 for stable training; then
    [`enable_gradient_checkpointing`] turns on activation checkpointing under the name this transformers release has.
    Wrap the model with `peft.get_peft_model(model, lora_config(...))` afterwards.

    Args:
        model ([`ViLaMPForConditionalGeneration`]): the model, loaded with a `quantization_config`.
        use_reentrant (`bool`, *optional*, defaults to `False`): `torch.utils.checkpoint`'s mode.

    Returns:
        [`ViLaMPForConditionalGeneration`]: the same model, ready for `get_peft_model`.
    """
    try:
        from peft import prepare_model_for_kbit_training
    except ImportError as error:
        raise ImportError("QLoRA fine-tuning needs the `peft` package: `pip install peft`.") from error
    if getattr(model, "hf_quantizer", None) is None:
        # on a model loaded without quantization, PEFT's preparation would upcast every weight to float32
        raise ValueError(
            "`model` was loaded without a `quantization_config`, so there is nothing to prepare for QLoRA: load it with "
            "`from_pretrained(..., quantization_config=BitsAndBytesConfig(load_in_4bit=True, ...))`, or train LoRA on "
            "the unquantized model with `enable_gradient_checkpointing` and `lora_config`."
        )
    prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    enable_gradient_checkpointing(model, use_reentrant=use_reentrant)
    return model


def trainable_parameter_names(model) -> list[str]:
    """The names of the parameters that require gradients."""
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]


def is_vision_tower_parameter(name: str) -> bool:
    """Whether a parameter name (of the model or of its PEFT wrapper) belongs to the SigLIP tower."""
    return re.search(r"(^|\.)model\.vision_tower\.", name) is not None


__all__ = [
    "enable_gradient_checkpointing",
    "is_vision_tower_parameter",
    "language_model_target_pattern",
    "lora_config",
    "prepare_quantized_model_for_training",
    "trainable_parameter_names",
]
