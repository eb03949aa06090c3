"""Fine-tuning helpers: LoRA on the language model with PEFT, and a tiny random model for runs anywhere."""

from .fsdp import save_adapter, shard_model
from .lora import (
    enable_gradient_checkpointing,
    is_vision_tower_parameter,
    language_model_target_pattern,
    lora_config,
    trainable_parameter_names,
)
from .tiny import (
    build_tiny_keyframe_selector,
    build_tiny_model,
    build_tiny_processor,
    build_tiny_tokenizer,
    synthetic_frames,
    tiny_config,
    write_synthetic_video,
    write_tiny_video_qa_dataset,
    write_video,
)

__all__ = [
    "build_tiny_keyframe_selector",
    "build_tiny_model",
    "build_tiny_processor",
    "build_tiny_tokenizer",
    "enable_gradient_checkpointing",
    "is_vision_tower_parameter",
    "language_model_target_pattern",
    "lora_config",
    "save_adapter",
    "shard_model",
    "synthetic_frames",
    "tiny_config",
    "trainable_parameter_names",
    "write_synthetic_video",
    "write_tiny_video_qa_dataset",
    "write_video",
]
