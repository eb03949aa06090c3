"""Processor directories saved before the 0.2 processor change load with the same settings and give the same inputs.

`saved_before_0_2/processor_config.json` was written by `save_pretrained` of the processor before the change (the layout
the converter writes too), `saved_before_0_2/flat/processor_config.json` is the older flat layout (settings next to
`video_token`, `frame_size` for the SigLIP side); `expected_outputs.json` holds what the processor before the change
returned for the inputs built below. The tokenizer and keyframe selector are rebuilt from their seeds (their files are
not part of what changed).
"""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from vilamp.processing import ViLaMPProcessor
from vilamp.testing import build_tiny_keyframe_selector, build_tiny_tokenizer, synthetic_frames, write_synthetic_video

SAVED_DIR = Path(__file__).with_name("saved_before_0_2")


@pytest.fixture(params=["nested", "flat"])
def saved_processor_dir(request, tmp_path) -> Path:
    """A processor directory holding the saved `processor_config.json`, the tiny tokenizer and keyframe selector."""
    source = SAVED_DIR if request.param == "nested" else SAVED_DIR / "flat"
    build_tiny_tokenizer().save_pretrained(tmp_path)
    build_tiny_keyframe_selector(seed=0).save_pretrained(tmp_path)
    shutil.copy(source / "processor_config.json", tmp_path / "processor_config.json")
    return tmp_path


def test_saved_settings_load_unchanged(saved_processor_dir):
    processor = ViLaMPProcessor.from_pretrained(saved_processor_dir, device="cpu")
    video_processor = processor.video_processor
    assert processor.keyframe_pooled_size == 2 and processor.video_token == "<video>"
    assert (video_processor.num_keyframes, video_processor.fps, video_processor.max_frames) == (3, 2.0, 8)
    assert (video_processor.keyframe_relevance_threshold, video_processor.keyframe_similarity_threshold) == (0.1, 0.9)
    assert video_processor.size == {"height": 56, "width": 56}
    overridden = ViLaMPProcessor.from_pretrained(saved_processor_dir, device="cpu", max_frames=5)
    assert overridden.video_processor.max_frames == 5


def test_saved_processor_gives_the_inputs_it_gave_before(saved_processor_dir, tmp_path):
    processor = ViLaMPProcessor.from_pretrained(saved_processor_dir, device="cpu")
    expected = json.loads((SAVED_DIR / "expected_outputs.json").read_text())
    frames = synthetic_frames(20, width=40, height=30, seed=0)
    video = write_synthetic_video(tmp_path / "video.mp4", num_frames=40, fps=8)
    actual = {
        "frames": processor(text="What moves?", videos=frames),
        "file": processor(
            text=["<video>\nWhat moves?", "Compare <video> with it."],
            videos=[str(video), frames],
            query=["Where is the bar?", "How bright?"],
        ),
    }
    for case, inputs in actual.items():
        wanted = expected[case]
        for name in ("input_ids", "attention_mask", "video_frame_counts"):
            assert inputs[name].tolist() == wanted[name], (case, name)
        assert inputs["keyframe_mask"].int().tolist() == wanted["keyframe_mask"], case
        pixel_values_videos = inputs["pixel_values_videos"]
        assert list(pixel_values_videos.shape) == wanted["pixel_values_videos_shape"], case
        assert (
            hashlib.sha256(pixel_values_videos.numpy().tobytes()).hexdigest() == wanted["pixel_values_videos_sha256"]
        )
        torch.testing.assert_close(inputs["query_embeds"], torch.tensor(wanted["query_embeds"]), rtol=0, atol=0)
