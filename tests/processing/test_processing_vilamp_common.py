"""transformers' own `ProcessorTesterMixin` on ViLaMPProcessor, in the style of `test_processing_llava_onevision.py`."""

import unittest

import numpy as np

import vilamp  # noqa: F401  registers ViLaMP with the Auto classes, `AutoVideoProcessor` included
from tests.transformers_suite import import_transformers_test_module
from vilamp.processing import ViLaMPProcessor, ViLaMPVideoProcessor
from vilamp.testing import build_tiny_keyframe_selector, build_tiny_tokenizer

common = import_transformers_test_module("test_processing_common")

HUB_INPUTS = "downloads its inputs from the Hugging Face Hub, which the tests cannot reach"
NO_IMAGES = "ViLaMPProcessor takes videos only, not images"
NO_AUDIO = "ViLaMPProcessor takes no audio"


class ViLaMPProcessorTest(common.ProcessorTesterMixin, unittest.TestCase):
    processor_class = ViLaMPProcessor
    # the mixin's prompts are short; the tiny video of `prepare_videos_inputs` takes 8 frames: 2*2*2 + 6 + 1 = 15 tokens
    videos_text_kwargs_max_length = 48
    videos_text_kwargs_override_max_length = 44
    videos_unstructured_max_length = 52
    chat_template_max_length = 100

    @classmethod
    def _setup_tokenizer(cls):
        return build_tiny_tokenizer()

    @classmethod
    def _setup_video_processor(cls):
        return ViLaMPVideoProcessor(size={"height": 28, "width": 28}, num_keyframes=2)

    @staticmethod
    def prepare_processor_dict():
        return {"keyframe_pooled_size": 2, "keyframe_selector": build_tiny_keyframe_selector()}

    def prepare_videos_inputs(self, batch_size=None):
        # channels-first frames like the mixin's, but small: (8, 3, 30, 40)
        video = np.random.default_rng(0).integers(0, 256, size=(8, 3, 30, 40), dtype=np.uint8)
        return video if batch_size is None else [video] * batch_size

    # overwrite: `keyframe_selector` is a model saved in its own files, not a JSON setting
    def test_processor_to_json_string(self):
        processor = self.get_processor()
        self.assertIn('"keyframe_pooled_size": 2', processor.to_json_string())

    @unittest.skip(NO_IMAGES + " (it calls the processor with `images=`)")
    def test_get_num_multimodal_tokens_matches_processor_call(self):
        pass

    @unittest.skip(
        "it counts one `pixel_values_videos` row per video unless the output has `num_frames_per_video`; ViLaMP "
        "concatenates the frames of all videos too, but names the counts `video_frame_counts` (the model's input)"
    )
    def test_apply_chat_template_decoded_video_0(self):
        pass


# parameterized tests are generated under their expanded names, so they are skipped under those
for name, reason in (
    ("test_apply_chat_template_image_0", NO_IMAGES),
    ("test_apply_chat_template_image_1", NO_IMAGES),
    ("test_apply_chat_template_video_0", HUB_INPUTS),
    ("test_apply_chat_template_video_1", HUB_INPUTS),
    ("test_apply_chat_template_video_frame_sampling", HUB_INPUTS),
    ("test_chat_template_audio_from_video", NO_AUDIO),
    ("test_chat_template_audio_sampling_rate", NO_AUDIO),
    # 5.24 only: an OpenAI `image_url` block in a message object, normalised to an image block
    ("test_chat_template_message_objects", NO_IMAGES + " (the message holds an OpenAI `image_url` block)"),
):
    if hasattr(ViLaMPProcessorTest, name):
        setattr(ViLaMPProcessorTest, name, unittest.skip(reason)(getattr(ViLaMPProcessorTest, name)))
for name in dir(ViLaMPProcessorTest):
    if name.startswith("test_apply_chat_template_audio_"):
        setattr(ViLaMPProcessorTest, name, unittest.skip(NO_AUDIO)(getattr(ViLaMPProcessorTest, name)))
