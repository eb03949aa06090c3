"""A tiny random ViLaMP checkpoint in the ORIGINAL layout and a toy tokenizer, for `vilamp demo` (its synthetic video
comes from `vilamp.testing`).

Nothing is downloaded: the towers, the language model and the keyframe selector are built from tiny configs with random
weights and saved under the original code's key names (`model.mm_projector.0`, `model.composer_projector`,
`model.frame_selector.model`, ...), so `vilamp demo` exercises the converter on the layout of the released checkpoint.
The sizes follow the shared tiny reference checkpoint (SigLIP 384x384 with 14-pixel patches, so a keyframe still pools
27x27 patches to 14x14).
"""

import json
from pathlib import Path

import torch
from torch import nn

from vilamp.conversion.convert_original_to_hf import SUPPORTED_ORIGINAL_SETTINGS
from vilamp.testing import TINY_VOCAB_SIZE, build_tiny_tokenizer


TINY_TEXT_CONFIG = {
    "vocab_size": TINY_VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "use_sliding_window": False,
    "sliding_window": None,
    "max_window_layers": 2,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "bos_token_id": 509,
    "eos_token_id": 511,
    "rope_theta": 1000000.0,
}
# the tower's config, as the original names it; the checkpoint holds one layer fewer (the original drops the last)
TINY_SIGLIP_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "image_size": 384,
    "patch_size": 14,
}
TINY_CLIP_CONFIG = {
    "projection_dim": 16,
    "text_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2},
    "vision_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 224,
        "patch_size": 32,
    },
}
NUM_KEYFRAMES = 4
SIGLIP_DIR_NAME = "siglip-tiny-patch14-384"
CLIP_DIR_NAME = "clip-tiny-patch32"
TOKENIZER_DIR_NAME = "tiny-tokenizer"

# The original settings of the forward path this package implements (the converter checks them).
ORIGINAL_SETTINGS = {
    **SUPPORTED_ORIGINAL_SETTINGS,
    "model_type": "llava_qwen",
    "architectures": ["LlavaQwenForCausalLM"],
    "mm_vision_select_layer": -2,
    "mm_newline_position": "one_token",
    "torch_dtype": "float32",
}


def prefixed(prefix: str, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of `state_dict` under `prefix`, contiguous, for safetensors."""
    return {prefix + key: tensor.detach().contiguous() for key, tensor in state_dict.items()}


def random_original_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """
    Random weights of a tiny ViLaMP under the original checkpoint's key names: Qwen2 (`model.*`, `lm_head`), SigLIP
    without its last layer and head (`model.vision_tower.vision_tower.*`), the `mlp2x_gelu` projector
    (`model.mm_projector.0/2`), the DFM (`model.composer_projector.*`), `model.image_newline` and the keyframe
    selector's CLIP (`model.frame_selector.model.*`).
    """
    from transformers import CLIPConfig, CLIPModel, Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    text_config = {name: value for name, value in TINY_TEXT_CONFIG.items() if name != "rope_theta"}
    language_model = Qwen2ForCausalLM(Qwen2Config(**text_config))
    siglip_config = {**TINY_SIGLIP_CONFIG, "num_hidden_layers": TINY_SIGLIP_CONFIG["num_hidden_layers"] - 1}
    vision_tower = SiglipVisionModel(SiglipVisionConfig(**siglip_config, vision_use_head=False))
    clip = CLIPModel(CLIPConfig(**TINY_CLIP_CONFIG))
    vision_width, hidden_size = TINY_SIGLIP_CONFIG["hidden_size"], TINY_TEXT_CONFIG["hidden_size"]
    query_dim = TINY_CLIP_CONFIG["projection_dim"]
    merger = nn.ModuleDict(
        {
            "linear_q": nn.Linear(query_dim, hidden_size),
            "linear_iq": nn.Linear(hidden_size, hidden_size),
            "linear_k": nn.Linear(hidden_size, hidden_size),
            "linear_ik": nn.Linear(hidden_size, hidden_size),
        }
    )
    projector = nn.Sequential(nn.Linear(vision_width, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))
    state_dict = {
        **prefixed("", language_model.state_dict()),
        # transformers versions differ on whether the tower's keys start with `vision_model.`
        **prefixed(
            "model.vision_tower.vision_tower.vision_model.",
            {key.removeprefix("vision_model."): tensor for key, tensor in vision_tower.state_dict().items()},
        ),
        **prefixed("model.mm_projector.", projector.state_dict()),
        **prefixed("model.composer_projector.", merger.state_dict()),
        "model.composer_projector.tau": torch.tensor(0.1),
        "model.image_newline": torch.randn(hidden_size) * 0.02,
        **prefixed("model.frame_selector.model.", clip.state_dict()),
    }
    # buffers are not weights of the original checkpoint
    return {key: tensor for key, tensor in state_dict.items() if not key.endswith("position_ids")}


def original_config() -> dict:
    """The original `config.json` of the tiny checkpoint (`llava_qwen` fields)."""
    return {
        **ORIGINAL_SETTINGS,
        **TINY_TEXT_CONFIG,
        "mm_hidden_size": TINY_SIGLIP_CONFIG["hidden_size"],
        "mm_vision_tower": SIGLIP_DIR_NAME,
        "clip_model_path": CLIP_DIR_NAME,
        "max_frame_num": NUM_KEYFRAMES,
        "f2t_thrd": 0.2,
        "f2f_thrd": 0.85,
        "composer_proj_dim": TINY_CLIP_CONFIG["projection_dim"],
    }


def write_original_checkpoint(directory, seed: int = 0) -> Path:
    """
    Writes a tiny random checkpoint in the original layout into `directory/original_tiny`, with its two tower config
    directories beside it (where the converter looks for them) and the toy tokenizer in `directory/tiny-tokenizer`.

    Returns:
        `Path`: the checkpoint directory.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    checkpoint_dir = directory / "original_tiny"
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    (checkpoint_dir / "config.json").write_text(json.dumps(original_config(), indent=2), encoding="utf-8")
    generation_config = {"bos_token_id": 509, "eos_token_id": 511, "pad_token_id": 509}
    (checkpoint_dir / "generation_config.json").write_text(json.dumps(generation_config, indent=2), encoding="utf-8")
    save_file(random_original_state_dict(seed), checkpoint_dir / "model.safetensors", metadata={"format": "pt"})
    build_tiny_tokenizer().save_pretrained(directory / TOKENIZER_DIR_NAME)
    towers = (
        (SIGLIP_DIR_NAME, {"model_type": "siglip", "vision_config": TINY_SIGLIP_CONFIG}),
        (CLIP_DIR_NAME, {"model_type": "clip", **TINY_CLIP_CONFIG}),
    )
    for name, config in towers:
        (directory / name).mkdir(exist_ok=True)
        (directory / name / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return checkpoint_dir


def build_demo_checkpoint(directory, *, seed: int = 0, overwrite: bool = True) -> Path:
    """Writes the tiny original checkpoint into `directory` and converts it into `directory/vilamp-tiny`."""
    from vilamp.conversion.convert_original_to_hf import convert_checkpoint

    checkpoint_dir = write_original_checkpoint(directory, seed=seed)
    tokenizer_dir = Path(directory) / TOKENIZER_DIR_NAME
    return convert_checkpoint(
        checkpoint_dir, Path(directory) / "vilamp-tiny", tokenizer_dir=tokenizer_dir, overwrite=overwrite
    )


__all__ = [
    "build_demo_checkpoint",
    "random_original_state_dict",
    "write_original_checkpoint",
]
