"""Conversion of the original ViLaMP checkpoint (`llava_qwen` layout) to this package's layout.

The keyframe selector's CLIP is stored in the original checkpoint as a transformers `CLIPModel` under
`model.frame_selector.model.`; `convert_clip_to_open_clip` turns it into an open_clip `CLIP` state dict and model
config, which the processor loads from `keyframe_selector.safetensors` and `keyframe_selector_config.json`.
"""

import re

import torch
from transformers import CLIPConfig

CLIP_PREFIX = "model.frame_selector.model."

# Ordered regex swaps, applied one after the other to every key (after `CLIP_PREFIX` is removed). The query, key
# and value projections are merged by `merge_attention_projections`, the two output projections transposed by
# `transpose_output_projections`.
CLIP_TO_OPEN_CLIP_KEYS = [
    (r"^vision_model\.embeddings\.class_embedding$", "visual.class_embedding"),
    (r"^vision_model\.embeddings\.patch_embedding\.", "visual.conv1."),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "visual.positional_embedding"),
    (r"^vision_model\.pre_layrnorm\.", "visual.ln_pre."),
    (r"^vision_model\.post_layernorm\.", "visual.ln_post."),
    (r"^vision_model\.encoder\.layers\.", "visual.transformer.resblocks."),
    (r"^visual_projection\.weight$", "visual.proj"),
    (r"^text_model\.embeddings\.token_embedding\.", "token_embedding."),
    (r"^text_model\.embeddings\.position_embedding\.weight$", "positional_embedding"),
    (r"^text_model\.encoder\.layers\.", "transformer.resblocks."),
    (r"^text_model\.final_layer_norm\.", "ln_final."),
    (r"^text_projection\.weight$", "text_projection"),
    (r"\.layer_norm1\.", ".ln_1."),
    (r"\.layer_norm2\.", ".ln_2."),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."),
    (r"\.mlp\.fc2\.", ".mlp.c_proj."),
    (r"\.self_attn\.out_proj\.", ".attn.out_proj."),
]

# open_clip keeps the projections as `x @ proj`, transformers as `nn.Linear` weights `(out, in)`.
TRANSPOSED_OPEN_CLIP_KEYS = ("visual.proj", "text_projection")

ATTENTION_PROJECTION_PATTERN = re.compile(r"^(?P<layer>.+)\.self_attn\.(?P<projection>[qkv])_proj\.(?P<kind>weight|bias)$")

# open_clip builds its LayerNorms with the torch default epsilon.
OPEN_CLIP_LAYER_NORM_EPS = 1e-5


def rename_clip_key(key: str) -> str:
    """Applies `CLIP_TO_OPEN_CLIP_KEYS` in order to one transformers CLIP key."""
    for pattern, replacement in CLIP_TO_OPEN_CLIP_KEYS:
        key = re.sub(pattern, replacement, key)
    return key


def merge_attention_projections(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenates the `q_proj`, `k_proj`, `v_proj` weights and biases of each layer into `attn.in_proj_*`."""
    grouped: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    merged = {}
    for key, tensor in state_dict.items():
        match = ATTENTION_PROJECTION_PATTERN.match(key)
        if match is None:
            merged[key] = tensor
            continue
        grouped.setdefault((match["layer"], match["kind"]), {})[match["projection"]] = tensor
    for (layer, kind), projections in grouped.items():
        if sorted(projections) != ["k", "q", "v"]:
            raise ValueError(
                f"`{layer}.self_attn` has the {kind} of projections {sorted(projections)}; a CLIP attention layer "
                "needs q_proj, k_proj and v_proj. Pass the complete CLIP state dict."
            )
        merged[f"{layer}.attn.in_proj_{kind}"] = torch.cat([projections["q"], projections["k"], projections["v"]])
    return merged


def transpose_output_projections(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Transposes the image and text projections from `nn.Linear` layout to open_clip's `x @ proj` layout."""
    return {key: tensor.t().contiguous() if key in TRANSPOSED_OPEN_CLIP_KEYS else tensor for key, tensor in state_dict.items()}


def count_layers(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    """Number of transformer blocks whose keys start with `prefix` (e.g. `"visual.transformer.resblocks."`)."""
    indices = {int(key[len(prefix) :].split(".")[0]) for key in state_dict if key.startswith(prefix)}
    return len(indices)


def open_clip_model_config(state_dict: dict[str, torch.Tensor], clip_config: CLIPConfig) -> dict:
    """Builds the open_clip model config: sizes from the converted weights, head counts and activation from `clip_config`."""
    vision_config, text_config = clip_config.vision_config, clip_config.text_config
    activations = {vision_config.hidden_act, text_config.hidden_act}
    if not activations <= {"quick_gelu", "gelu"} or len(activations) != 1:
        raise ValueError(
            f"open_clip needs one activation, `quick_gelu` or `gelu`, for both towers; the CLIP config has "
            f"vision `{vision_config.hidden_act}` and text `{text_config.hidden_act}`."
        )
    for name, sub_config in (("vision_config", vision_config), ("text_config", text_config)):
        if sub_config.layer_norm_eps != OPEN_CLIP_LAYER_NORM_EPS:
            raise ValueError(
                f"`{name}.layer_norm_eps` is {sub_config.layer_norm_eps}, but open_clip uses {OPEN_CLIP_LAYER_NORM_EPS}."
            )
    vision_width = state_dict["visual.conv1.weight"].shape[0]
    text_width = state_dict["token_embedding.weight"].shape[1]
    return {
        "embed_dim": state_dict["text_projection"].shape[1],
        "quick_gelu": vision_config.hidden_act == "quick_gelu",
        "vision_cfg": {
            "image_size": vision_config.image_size,
            "patch_size": state_dict["visual.conv1.weight"].shape[-1],
            "width": vision_width,
            "layers": count_layers(state_dict, "visual.transformer.resblocks."),
            "head_width": vision_width // vision_config.num_attention_heads,
            "mlp_ratio": state_dict["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / vision_width,
        },
        "text_cfg": {
            "context_length": state_dict["positional_embedding"].shape[0],
            "vocab_size": state_dict["token_embedding.weight"].shape[0],
            "width": text_width,
            "heads": text_config.num_attention_heads,
            "layers": count_layers(state_dict, "transformer.resblocks."),
            "mlp_ratio": state_dict["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / text_width,
        },
    }


def convert_clip_to_open_clip(
    state_dict: dict[str, torch.Tensor], clip_config: dict | CLIPConfig
) -> tuple[dict[str, torch.Tensor], dict]:
    """
    Converts the keyframe selector's transformers CLIP weights into an open_clip `CLIP` state dict and model config.

    Args:
        state_dict (`dict[str, torch.Tensor]`):
            The original checkpoint's tensors; only the keys under `model.frame_selector.model.` are read.
        clip_config (`dict` or `CLIPConfig`):
            The CLIP config the original code built its `CLIPModel` from (`clip_model_path` in the original config).
            Head counts and the activation come from it; every size that the weights show comes from the weights.

    Returns:
        `tuple[dict[str, torch.Tensor], dict]`: the open_clip state dict (loadable with `strict=True`) and the open_clip
        model config (`embed_dim`, `quick_gelu`, `vision_cfg`, `text_cfg`), as `keyframe_selector_config.json` stores it.
    """
    if isinstance(clip_config, dict):
        clip_config = CLIPConfig.from_dict(clip_config)
    clip_state_dict = {key[len(CLIP_PREFIX) :]: tensor for key, tensor in state_dict.items() if key.startswith(CLIP_PREFIX)}
    if not clip_state_dict:
        raise ValueError(
            f"No key of the state dict starts with `{CLIP_PREFIX}`; pass the original ViLaMP checkpoint, whose keyframe "
            "selector CLIP is stored under that prefix."
        )
    clip_state_dict = merge_attention_projections(clip_state_dict)
    open_clip_state_dict = transpose_output_projections({rename_clip_key(key): tensor for key, tensor in clip_state_dict.items()})
    return open_clip_state_dict, open_clip_model_config(open_clip_state_dict, clip_config)


__all__ = ["CLIP_TO_OPEN_CLIP_KEYS", "convert_clip_to_open_clip"]
