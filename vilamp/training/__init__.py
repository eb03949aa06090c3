"""Fine-tuning helpers: LoRA (and QLoRA) on the language model with PEFT, and FSDP sharding over GPUs."""

from .fsdp import save_adapter, shard_model
from .lora import (
    enable_gradient_checkpointing,
    is_vision_tower_parameter,
    language_model_target_pattern,
    lora_config,
    prepare_quantized_model_for_training,
    trainable_parameter_names,
)

__all__ = [
    "enable_gradient_checkpointing",
    "is_vision_tower_parameter",
    "language_model_target_pattern",
    "lora_config",
    "prepare_quantized_model_for_training",
    "save_adapter",
    "shard_model",
    "trainable_parameter_names",
]
