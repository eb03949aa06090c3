"""Directories converted before 0.2 (when the package's import names were `modeling_vilamp` and `processing`) keep
loading: their config.json, processor_config.json and generation_config.json, as the converter of commit e418f8e
wrote them for the reference checkpoint, sit in tests/conversion/converted_before_0_2. The remote-code half is
tests/conversion/test_convert_original_to_hf.py's test, run on this directory too."""

from transformers import AutoConfig, AutoModel, AutoProcessor

from vilamp import ViLaMPConfig, ViLaMPForConditionalGeneration, ViLaMPProcessor
from vilamp.conversion.verify_reference import EXACT_STAGES, FLOAT_TOLERANCE, format_report, verify_converted


def test_old_directory_loads_with_the_package_without_remote_code(converted_before_0_2_dir):
    assert type(AutoConfig.from_pretrained(converted_before_0_2_dir)) is ViLaMPConfig
    assert type(AutoModel.from_pretrained(converted_before_0_2_dir)) is ViLaMPForConditionalGeneration
    processor = AutoProcessor.from_pretrained(converted_before_0_2_dir)
    assert type(processor) is ViLaMPProcessor
    assert processor.video_processor.num_keyframes == 4
    assert processor.video_token_id == 508


def test_old_directory_reproduces_every_golden_stage(converted_before_0_2_dir, reference_dir):
    differences = verify_converted(converted_before_0_2_dir, reference_dir)
    assert {"keyframe_mask", "logits", "generated_ids", "video_tokens", "clip_image_embeds"} <= set(differences)
    for name, difference in differences.items():
        tolerance = 0.0 if name in EXACT_STAGES else FLOAT_TOLERANCE
        assert difference <= tolerance, format_report(differences)
