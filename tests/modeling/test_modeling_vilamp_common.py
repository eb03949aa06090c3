"""transformers' own common model tests (ModelTesterMixin of the installed release) run against ViLaMP.

Written the way `tests/models/llava_onevision/test_modeling_llava_onevision.py` drives the mixin: a plain tester builds
a tiny config and inputs, the test class inherits the shared suite. Each row of the batch holds one video of several
frames, keyframes and non-keyframes, so a test that repeats or slices inputs along dim 0 meets frame-major tensors.
The generation tests of `GenerationTesterMixin` (not in the transformers sdist) are in `test_generation_vilamp.py`.
"""

import unittest
from unittest.mock import patch

import torch
from parameterized import parameterized

from tests.transformers_suite import GenerationTesterMixin, import_transformers_test_module
from vilamp.modeling_vilamp import ViLaMPConfig, ViLaMPForConditionalGeneration, ViLaMPModel
from vilamp.processing import num_video_tokens
from vilamp.testing import tiny_config

common = import_transformers_test_module("test_modeling_common")
configuration_common = import_transformers_test_module("test_configuration_common")

VIDEO_TOKEN_ID = 1


class ViLaMPVisionText2TextModelTester:
    """A tiny ViLaMP (SigLIP 56x56 in 4x4 patches pooled to 2x2, Qwen2 of hidden size 32, 2 layers) and a batch of two
    prompts, each with one video of `frames_per_video` frames whose first and last frames are keyframes. With
    `text_only`, the prompts alone, with a config whose video token is none of their ids."""

    def __init__(self, parent, batch_size=2, frames_per_video=4, text_length=5, is_training=True, text_only=False):
        self.parent = parent
        self.text_only = text_only
        self.batch_size = batch_size
        self.frames_per_video = frames_per_video
        self.is_training = is_training
        config = self.get_config()
        self.text_config = config.text_config.to_dict()
        self.vision_config = config.vision_config.to_dict()
        self.vocab_size = config.text_config.vocab_size
        self.hidden_size = config.text_config.hidden_size
        self.num_hidden_layers = config.text_config.num_hidden_layers
        self.num_attention_heads = config.text_config.num_attention_heads
        self.image_size = config.vision_config.image_size
        self.patch_size = config.vision_config.patch_size
        self.keyframe_mask = [frame in (0, frames_per_video - 1) for frame in range(frames_per_video)]
        self.num_video_tokens = num_video_tokens(
            frames_per_video, sum(self.keyframe_mask), config.keyframe_pooled_size
        )
        self.text_length = text_length
        self.seq_length = text_length + self.num_video_tokens

    def get_config(self) -> ViLaMPConfig:
        # a low placeholder id: the embedding-resize test clamps `input_ids` below the vocabulary size minus 16
        return tiny_config(video_token_index=VIDEO_TOKEN_ID)

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        text_ids = torch.randint(VIDEO_TOKEN_ID + 1, 255, (self.batch_size, self.text_length))
        video_ids = torch.full((self.batch_size, self.num_video_tokens), config.video_token_id)
        input_ids = torch.cat([text_ids[:, :2], video_ids, text_ids[:, 2:]], dim=1)
        num_frames = self.batch_size * self.frames_per_video
        inputs_dict = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "pixel_values_videos": torch.randint(
                0, 256, (num_frames, 3, self.image_size, self.image_size), dtype=torch.uint8
            ),
            "keyframe_mask": torch.tensor(self.keyframe_mask * self.batch_size),
            "query_embeds": torch.randn(self.batch_size, config.query_embed_dim),
            "video_frame_counts": torch.full((self.batch_size,), self.frames_per_video),
        }
        if self.text_only:
            config.video_token_index = config.text_config.vocab_size - 1
            inputs_dict = {"input_ids": input_ids, "attention_mask": inputs_dict["attention_mask"]}
        return config, inputs_dict


class ViLaMPModelTest(common.ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (ViLaMPModel, ViLaMPForConditionalGeneration)
    _is_composite = True
    # `get_video_features` streams the frames through SigLIP chunk by chunk and keeps only the video tokens: the
    # per-frame SigLIP output (`last_hidden_state`, 729 patches a frame, 10K frames) is never held, so it is `None`
    skip_test_video_features_output_shape = True

    def setUp(self):
        self.model_tester = ViLaMPVisionText2TextModelTester(self)
        # the ViLaMP fields at values other than their defaults, as llava_onevision's tester leaves the rest
        self.config_tester = configuration_common.ConfigTester(
            self,
            config_class=ViLaMPConfig,
            has_text_modality=False,
            video_token_index=VIDEO_TOKEN_ID,
            keyframe_pooled_size=7,
            query_embed_dim=64,
            dfm_reference_rule="paper",
            vision_chunk_size=8,
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        # the mixin adds labels to the causal LMs that transformers itself maps; ViLaMP is registered at import
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels and model_class is ViLaMPForConditionalGeneration:
            inputs_dict["labels"] = inputs_dict["input_ids"].clone()
        return inputs_dict

    def _video_features_prepare_config_and_inputs(self):
        # the mixin keeps the inputs with "video" in their name; ViLaMP's videos also need the DKS outputs
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        video_input_names = ("pixel_values_videos", "keyframe_mask", "query_embeds", "video_frame_counts")
        return config, {name: inputs_dict[name] for name in video_input_names}

    # the mixin's training tests skip base models by transformers' own model mapping, which does not list ViLaMPModel
    # (it has no loss); `AutoModel` resolves to the generating model, as the long-video releases are used
    def test_training(self):
        with patch.object(self, "all_model_classes", (ViLaMPForConditionalGeneration,)):
            super().test_training()

    def check_training_gradient_checkpointing(self, *args, **kwargs):
        with patch.object(self, "all_model_classes", (ViLaMPForConditionalGeneration,)):
            super().check_training_gradient_checkpointing(*args, **kwargs)

    # the mixin runs the model on `input_ids` alone, and placeholders without their video are an error: these prompts
    # are text only
    @parameterized.expand(common.TEST_EAGER_MATCHES_SDPA_INFERENCE_PARAMETERIZATION)
    def test_eager_matches_sdpa_inference(
        self, name, dtype, padding_side, use_attention_mask, output_attentions, enable_kernels
    ):
        with patch.object(self, "model_tester", ViLaMPVisionText2TextModelTester(self, text_only=True)):
            common._test_eager_matches_sdpa_inference(
                self, name, dtype, padding_side, use_attention_mask, output_attentions, enable_kernels
            )

    @unittest.skip(
        "ViLaMP takes no images: the test checks `image_outputs` only (its own FIXME: videos not yet covered)"
    )
    def test_multimodal_outputs_are_returned(self):
        pass

    @unittest.skip(
        "ViLaMP streams frames through SigLIP chunk by chunk and keeps only the video tokens; the vision tower's "
        "per-layer hidden states of every frame are not returned by `get_video_features`"
    )
    def test_get_video_features_hidden_states(self):
        pass

    @unittest.skip(
        "ViLaMP streams frames through SigLIP chunk by chunk and keeps only the video tokens; the vision tower's "
        "per-layer attentions of every frame are not returned by `get_video_features`"
    )
    def test_get_video_features_attentions(self):
        pass
