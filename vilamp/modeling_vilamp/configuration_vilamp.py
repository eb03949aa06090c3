"""ViLaMP model configuration."""

from contextvars import ContextVar
from typing import Literal

from huggingface_hub.dataclasses import strict
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, PreTrainedConfig
from transformers.models.auto import CONFIG_MAPPING

# SigLIP so400m-patch14-384 with its last encoder layer removed: the original tower deletes it and
# reads the output of the remaining 26 layers, before `post_layernorm`.
DEFAULT_VISION_CONFIG = {
    "model_type": "siglip_vision_model",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 26,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 14,
    "vision_use_head": False,
}

# Qwen2-7B, the language model of LLaVA-OneVision-Qwen2-7B.
DEFAULT_TEXT_CONFIG = {
    "model_type": "qwen2",
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "bos_token_id": 151643,
    "eos_token_id": 151645,
}

# Fields a saved `config.json` must hold. Their defaults are the 7B release's: a saved config without a tower's
# sub-config would build a 7B tower (and exhaust the memory of a machine that loads a small model), and one without
# a token-layout field would lay out the video tokens differently from the processor in silence.
REQUIRED_SAVED_FIELDS = {
    "vision_config": "the SigLIP vision tower's config",
    "text_config": "the Qwen2 language model's config",
    "video_token_index": "the tokenizer's id of the `<video>` placeholder",
    "keyframe_pooled_size": "the side of a keyframe's pooled token grid",
    "query_embed_dim": "the size of the CLIP text embedding the DFM takes",
}

# What to do about a saved config that lacks a field or holds a wrong one.
SAVED_CONFIG_FIX = "re-convert the checkpoint with `vilamp convert`, or set the field in `config.json`"
# the checkpoint that `ViLaMPConfig.from_pretrained` is reading, named in the errors of `from_dict`
_saved_config_source: ContextVar[str | None] = ContextVar("saved_config_source", default=None)


@strict
class ViLaMPConfig(PreTrainedConfig):
    r"""
    Configuration of a ViLaMP model: a SigLIP vision tower, a 2-layer projector, the differential feature merger
    (DFM) and a Qwen2 language model. The keyframe selection (DKS) settings belong to the processor
    ([`ViLaMPProcessor`]), which runs it. Built in code, every field has a default (the 7B release's); a saved
    `config.json` must hold the fields of `REQUIRED_SAVED_FIELDS`, which loading never fills with defaults.

    Args:
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            The SigLIP vision tower. Every layer of it runs: the converter stores the original tower without its
            last layer, and the output of the last layer that is kept, before `post_layernorm`, is the frame feature.
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            The Qwen2 language model.
        video_token_index (`int`, *optional*, defaults to 151646):
            The id of the `<video>` placeholder token, which the processor repeats once per video token.
        projector_hidden_act (`str`, *optional*, defaults to `"gelu"`):
            The activation between the two projector layers (`mlp2x_gelu` in the original).
        multimodal_projector_bias (`bool`, *optional*, defaults to `True`):
            Whether the projector layers have biases.
        query_embed_dim (`int`, *optional*, defaults to 512):
            Size of the CLIP text embedding that the DFM receives as its query (`composer_proj_dim` in the original;
            read by the model).
        keyframe_pooled_size (`int`, *optional*, defaults to 14):
            Keyframe features are bilinearly resized to this grid, giving `keyframe_pooled_size**2` tokens
            (hard-coded 14x14 in the original; read by the model and the processor).
        dfm_reference_rule (`str`, *optional*, defaults to `"original"`):
            Which frame a non-keyframe is compared with in the DFM. `"original"`: the rule of the original code,
            which the released weights were trained with (frame `i` for frames after the `i`-th keyframe, the frame
            itself before the first keyframe). `"paper"`: the nearest preceding keyframe, and no redundancy term
            before the first keyframe (read by the model).
        vision_chunk_size (`int`, *optional*):
            Frames encoded at once by the vision tower, projector and DFM. `None` chooses it from the free device
            memory; the number of frames of a video encodes it in one piece (read by the model).

    Example:

    ```python
    >>> from modeling_vilamp import ViLaMPConfig, ViLaMPForConditionalGeneration

    >>> configuration = ViLaMPConfig(dfm_reference_rule="original")
    >>> model = ViLaMPForConditionalGeneration(configuration)
    ```"""

    model_type = "vilamp"
    attribute_map = {"video_token_id": "video_token_index"}
    sub_configs = {"text_config": AutoConfig, "vision_config": AutoConfig}

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    video_token_index: int = 151646
    projector_hidden_act: str = "gelu"
    multimodal_projector_bias: bool = True
    query_embed_dim: int = 512
    keyframe_pooled_size: int = 14
    dfm_reference_rule: Literal["original", "paper"] = "original"
    vision_chunk_size: int | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        self.vision_config = _build_sub_config(self.vision_config, DEFAULT_VISION_CONFIG)
        self.text_config = _build_sub_config(self.text_config, DEFAULT_TEXT_CONFIG)
        super().__post_init__(**kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "ViLaMPConfig":
        """Loads a saved config as `PreTrainedConfig.from_pretrained` does; errors name the checkpoint."""
        # the path names the checkpoint in `from_dict`'s errors without becoming a field, so that a saved and reloaded
        # config equals the original (`AutoConfig.from_pretrained` passes it as `name_or_path`, which is transformers')
        source = _saved_config_source.set(str(pretrained_model_name_or_path))
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        finally:
            _saved_config_source.reset(source)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> "ViLaMPConfig":
        """
        Builds the config from a saved `config.json`'s fields, which must include every field of
        `REQUIRED_SAVED_FIELDS`: unlike `ViLaMPConfig()` built in code, a saved config never falls back to the 7B
        release's towers or token layout. Errors name the field, the value seen and the fix.
        """
        checkpoint = kwargs.get("name_or_path") or _saved_config_source.get()
        source = f"`config.json` of {checkpoint}" if checkpoint else "The saved config"
        missing = [
            name
            for name in REQUIRED_SAVED_FIELDS
            if not any(
                config_dict.get(key) not in (None, {}) or key in kwargs
                for key in (name, *(alias for alias, target in cls.attribute_map.items() if target == name))
            )
        ]
        if missing:
            fields = ", ".join(f"`{name}` ({REQUIRED_SAVED_FIELDS[name]})" for name in missing)
            raise ValueError(
                f"{source} has no {fields}; a saved config never falls back to the 7B release's defaults: "
                f"{SAVED_CONFIG_FIX}."
            )
        try:
            return super().from_dict(config_dict, **kwargs)
        except StrictDataclassError as error:
            # the strict dataclass wraps the field's own TypeError or ValueError, which names the field and the value
            cause = error.__cause__
            error_class = TypeError if isinstance(cause, TypeError) else ValueError
            message = f"{source} holds an invalid field ({str(cause).rstrip('.')}); {SAVED_CONFIG_FIX}."
            raise error_class(message) from error

    def validate_vilamp_settings(self):
        """Checks the ViLaMP fields, naming the field, the value seen and the rule."""
        for name in ("query_embed_dim", "keyframe_pooled_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be at least 1, got {getattr(self, name)}.")
        if not 0 <= self.video_token_index < self.text_config.vocab_size:
            raise ValueError(
                f"`video_token_index` must be a token id of the language model, from 0 to `text_config.vocab_size` - 1 "
                f"= {self.text_config.vocab_size - 1}, got {self.video_token_index}."
            )
        if self.vision_chunk_size is not None and self.vision_chunk_size < 1:
            raise ValueError(
                f"`vision_chunk_size` must be None (chosen from free memory) or at least 1, got {self.vision_chunk_size}."
            )


def _build_sub_config(sub_config, defaults: dict) -> PreTrainedConfig:
    """Builds a sub-config from a dict (its `model_type` defaulting to that of `defaults`), or from `defaults`."""
    if isinstance(sub_config, PreTrainedConfig):
        return sub_config
    if sub_config is None:
        sub_config = defaults
    model_type = sub_config.get("model_type", defaults["model_type"])
    return CONFIG_MAPPING[model_type](**{**sub_config, "model_type": model_type})


__all__ = ["ViLaMPConfig"]
