"""Fine-tuning helpers: LoRA on the language model with PEFT, and FSDP sharding over GPUs."""

from .fsdp import save_adapter, shard_model
from .lora import (
    enable_gradient_checkpointing,
    is_vision_tower_parameter,
    language_model_target_pattern,
    lora_config,
    trainable_parameter_names,
)

__all__ = [
    "enable_gradient_checkpointing",
    "is_vision_tower_parameter",
    "language_model_target_pattern",
    "lora_config",
    "save_adapter",
    "shard_model",
    "trainable_parameter_names",
]
