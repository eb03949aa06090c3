import pytest
import torch

from vilamp.processing import num_video_tokens
from vilamp.testing import TINY_SPECIAL_TOKEN_IDS, build_tiny_model, build_tiny_processor, write_synthetic_video
from vilamp.testing import tiny_config as build_tiny_config

VIDEO_TOKEN_ID = TINY_SPECIAL_TOKEN_IDS["<video>"]
PAD_TOKEN_ID = TINY_SPECIAL_TOKEN_IDS["<|endoftext|>"]
# transformers' default, as in its model tests (`vilamp.testing` widens it for fine-tuning)
TRANSFORMERS_INITIALIZER_RANGE = 0.02
# the `videos` fixture's two videos (6 and 10 frames sampled at 1 fps) and the `questions` about them
VIDEO_FRAME_COUNTS_AT_8_FPS = (48, 80)
QUESTIONS = ("What moves in the video?", "How bright is it?")


@pytest.fixture(scope="module")
def processor():
    return build_tiny_processor()


@pytest.fixture(scope="module")
def questions() -> tuple[str, ...]:
    return QUESTIONS


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[str]:
    """Two video files of uneven length, one per question of `questions`."""
    directory = tmp_path_factory.mktemp("videos")
    return [
        str(write_synthetic_video(directory / f"video_{index}.mp4", num_frames=num_frames, level_step=5 + 3 * index))
        for index, num_frames in enumerate(VIDEO_FRAME_COUNTS_AT_8_FPS)
    ]


@pytest.fixture
def tiny_config():
    """The tiny ViLaMP config of `vilamp.testing` (4x4 SigLIP patches pooled to 2x2, Qwen2 of hidden size 32 and 2
    layers), with overrides; weights drawn with transformers' default `initializer_range` of 0.02, as in transformers'
    model tests (`vilamp.testing` widens it for fine-tuning)."""

    def build(**overrides):
        return build_tiny_config(**{"initializer_range": TRANSFORMERS_INITIALIZER_RANGE, **overrides})

    return build


@pytest.fixture
def tiny_model():
    """The tiny ViLaMP of `vilamp.testing` (seed 0) with the config of `tiny_config`, in evaluation mode."""

    def build(compile_vision_tower=False, **overrides):
        overrides = {"initializer_range": TRANSFORMERS_INITIALIZER_RANGE, **overrides}
        return build_tiny_model(0, compile_vision_tower=compile_vision_tower, **overrides).eval()

    return build


@pytest.fixture
def video_inputs():
    """Model inputs for videos given as keyframe masks, as the processor lays them out (left padding)."""

    def build(config, keyframe_masks, prompt_lengths=None, seed=0):
        generator = torch.Generator().manual_seed(seed)
        image_size = config.vision_config.image_size
        prompt_lengths = prompt_lengths or [(3, 4)] * len(keyframe_masks)
        rows = []
        for mask, (before, after) in zip(keyframe_masks, prompt_lengths):
            num_tokens = num_video_tokens(len(mask), sum(mask), config.keyframe_pooled_size)
            text = torch.randint(1, 90, (before + after,), generator=generator).tolist()
            rows.append(text[:before] + [VIDEO_TOKEN_ID] * num_tokens + text[before:])
        width = max(len(row) for row in rows)
        input_ids = torch.tensor([[PAD_TOKEN_ID] * (width - len(row)) + row for row in rows])
        attention_mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
        num_frames = sum(len(mask) for mask in keyframe_masks)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values_videos": torch.randint(
                0, 256, (num_frames, 3, image_size, image_size), dtype=torch.uint8, generator=generator
            ),
            "keyframe_mask": torch.tensor([flag for mask in keyframe_masks for flag in mask], dtype=torch.bool),
            "query_embeds": torch.randn(len(keyframe_masks), config.query_embed_dim, generator=generator),
            "video_frame_counts": torch.tensor([len(mask) for mask in keyframe_masks]),
        }

    return build
