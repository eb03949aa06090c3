"""ViLaMP: SigLIP frames, keyframes pooled to a grid, non-keyframes merged by the DFM, and a Qwen2 language model."""

import bisect
import copy
import functools
import itertools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint
from transformers import AutoModel, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, CausalLMOutputWithPast
from transformers.quantizers.auto import AutoQuantizationConfig
from transformers.utils import cached_file, is_torchdynamo_compiling, logging
from transformers.utils.generic import can_return_tuple

from .configuration_vilamp import ViLaMPConfig
from .feature_merger import ViLaMPDifferentialFeatureMerger, reference_frame_indices
from .frame_parallel import encode_frames_across_ranks, resolve_process_group

logger = logging.get_logger(__name__)

# Inputs that only the prefill step reads; `prepare_inputs_for_generation` drops them once the cache holds the video.
VIDEO_INPUT_NAMES = (
    "pixel_values_videos",
    "video_frame_features",
    "keyframe_mask",
    "query_embeds",
    "video_frame_counts",
)

# SigLIP normalisation: the processor hands over uint8 frames, normalised here on the device, chunk by chunk.
SIGLIP_PIXEL_MEAN = 0.5
SIGLIP_PIXEL_STD = 0.5

# `from_pretrained` arguments that locate a checkpoint's files; the processor's files saved with it are read with them.
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")

# Frames per vision chunk when it is chosen from free memory. Larger chunks barely speed up the encoder but cost about
# 70 MB a frame (H100, bfloat16, full size: 402, 411, 419 and 432 frames/s for chunks of 16, 32, 64 and 128 frames).
MAX_AUTO_VISION_CHUNK_SIZE = 32


# Built on transformers' own output classes, so that their fields follow transformers (5.24 renames
# `past_key_values` to `cache`); the language model's output is passed on whole instead of field by field.
@dataclass
class ViLaMPModelOutputWithPast(BaseModelOutputWithPast):
    r"""
    video_hidden_states (`torch.Tensor` of shape `(num_video_tokens, hidden_size)`, *optional*):
        The video tokens of every video of the batch, in order, as scattered into the placeholders.
    """

    video_hidden_states: torch.Tensor | None = None


@dataclass
class ViLaMPCausalLMOutputWithPast(CausalLMOutputWithPast):
    r"""
    video_hidden_states (`torch.Tensor` of shape `(num_video_tokens, hidden_size)`, *optional*):
        The video tokens of every video of the batch, in order.
    """

    video_hidden_states: torch.Tensor | None = None


@dataclass
class VideoTokenLayout:
    """Where each frame's tokens go in the concatenated video tokens, and which frame each non-keyframe is compared with."""

    token_starts: torch.Tensor  # (num_frames,) position of each frame's first token
    newline_positions: torch.Tensor  # (num_videos,) position of each video's closing `image_newline`
    num_tokens: int
    video_token_counts: list[int]  # tokens of each video, its closing `image_newline` included
    reference_frames: list[int]  # global index of each frame's reference frame, -1 where there is none
    last_reference_use: list[int]  # last non-keyframe that uses each frame as its reference, -1 where none does
    frame_video_indices: torch.Tensor  # (num_frames,) which video each frame belongs to


@dataclass
class VideoFrames:
    """
    The frames of a batch of videos, concatenated in order, as the vision stage reads them: uint8 `pixel_values` that
    the vision tower and the projector encode, or `frame_features`, each video's projected patches computed earlier by
    [`ViLaMPModel.get_video_frame_features`]. Exactly one is set.
    """

    pixel_values: torch.Tensor | None = None  # (num_frames, 3, image_size, image_size), uint8
    frame_features: list[torch.Tensor] | None = None  # one (video_num_frames, num_patches, hidden_size) per video

    def gather_features(self, frames: slice | list[int], device: torch.device) -> torch.Tensor:
        """The given projected patches of `frames` (indices over the batch's frames) on `device`: a view of the stored
        features where they lie in one video on that device, else a copy of these frames only."""
        video_starts = list(itertools.accumulate((features.shape[0] for features in self.frame_features), initial=0))
        frame_indices = range(video_starts[-1])[frames] if isinstance(frames, slice) else frames
        # runs of consecutive frames of one video, as [video, first frame, one past the last frame] within that video
        runs = []
        for frame in frame_indices:
            video = bisect.bisect_right(video_starts, frame) - 1
            local_frame = frame - video_starts[video]
            if runs and runs[-1][0] == video and runs[-1][2] == local_frame:
                runs[-1][2] += 1
            else:
                runs.append([video, local_frame, local_frame + 1])
        pieces = [self.frame_features[video][first:end].to(device) for video, first, end in runs]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def frame_features_by_video(
    video_frame_features: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...], frame_counts: list[int]
) -> list[torch.Tensor]:
    """`video_frame_features` as one tensor per video: views of one tensor split by `frame_counts`, or the given
    per-video tensors themselves (never copies)."""
    if isinstance(video_frame_features, torch.Tensor):
        return list(video_frame_features.split(frame_counts))
    return list(video_frame_features)


def plan_video_tokens(
    keyframe_mask: torch.Tensor, video_frame_counts: list[int], num_keyframe_tokens: int, rule: str
) -> VideoTokenLayout:
    """Lays out the tokens of a batch of videos (frames of all videos concatenated) in temporal order."""
    frame_token_counts = torch.where(keyframe_mask, num_keyframe_tokens, 1)
    frame_video_indices = torch.repeat_interleave(
        torch.arange(len(video_frame_counts)), torch.tensor(video_frame_counts)
    )
    # each earlier video's closing newline shifts the frames of the later videos by one
    token_starts = frame_token_counts.cumsum(0) - frame_token_counts + frame_video_indices
    video_ends = torch.tensor(video_frame_counts).cumsum(0)
    newline_positions = frame_token_counts.cumsum(0)[video_ends - 1] + torch.arange(len(video_frame_counts))

    reference_frames, last_reference_use = [], [-1] * keyframe_mask.shape[0]
    video_starts = (video_ends - torch.tensor(video_frame_counts)).tolist()
    for video_start, video_mask in zip(video_starts, keyframe_mask.split(video_frame_counts)):
        references = reference_frame_indices(video_mask, rule).tolist()
        for offset, (reference, is_keyframe) in enumerate(zip(references, video_mask.tolist())):
            reference = reference + video_start if reference >= 0 else -1
            reference_frames.append(reference)
            if reference >= 0 and not is_keyframe:
                last_reference_use[reference] = video_start + offset
    return VideoTokenLayout(
        token_starts=token_starts,
        newline_positions=newline_positions,
        num_tokens=int(newline_positions[-1]) + 1,
        video_token_counts=(newline_positions + 1).diff(prepend=torch.tensor([0])).tolist(),
        reference_frames=reference_frames,
        last_reference_use=last_reference_use,
        frame_video_indices=frame_video_indices,
    )


def read_saved_json(pretrained_model_name_or_path, filename: str, **hub_kwargs) -> dict | None:
    """The JSON file `filename` saved with a checkpoint (a directory or a Hub repository), or None if it has none."""
    resolved_file = cached_file(
        pretrained_model_name_or_path,
        filename,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **hub_kwargs,
    )
    if resolved_file is None:
        return None
    with open(resolved_file, encoding="utf-8") as file:
        return json.load(file)


def damaged_weight_files(pretrained_model_name_or_path, subfolder: str = "") -> list[Path]:
    """The model's safetensors files (`model*.safetensors`) in a local checkpoint directory whose header or size is
    wrong; empty for a Hub repository."""
    if pretrained_model_name_or_path is None or not os.path.isdir(pretrained_model_name_or_path):
        return []
    damaged = []
    for path in sorted(Path(pretrained_model_name_or_path, subfolder).glob("model*.safetensors")):
        try:
            with safe_open(path, framework="pt"):
                pass
        except (SafetensorError, OSError):
            damaged.append(path)
    return damaged


def check_saved_processor(config: ViLaMPConfig, pretrained_model_name_or_path, **hub_kwargs):
    """
    Checks that the processor saved with a checkpoint lays out the video tokens as `config` does: the same
    `keyframe_pooled_size` (in `processor_config.json`) and the same id of its `video_token` (in `tokenizer.json`).
    A checkpoint without a saved processor, or a setting that its files do not hold, is not checked.
    """
    processor_dict = read_saved_json(pretrained_model_name_or_path, "processor_config.json", **hub_kwargs)
    if processor_dict is None:
        return
    disagreements = []
    keyframe_pooled_size = processor_dict.get("keyframe_pooled_size")
    if keyframe_pooled_size is not None and keyframe_pooled_size != config.keyframe_pooled_size:
        disagreements.append(
            f"`keyframe_pooled_size` is {keyframe_pooled_size!r} in `processor_config.json` but "
            f"{config.keyframe_pooled_size} in `config.json`"
        )
    video_token = processor_dict.get("video_token")
    tokenizer_dict = {}
    if video_token is not None:
        tokenizer_dict = read_saved_json(pretrained_model_name_or_path, "tokenizer.json", **hub_kwargs) or {}
    # the converter adds the video token to the tokenizer, which saves it among its added tokens
    added_token_ids = {token["content"]: token["id"] for token in tokenizer_dict.get("added_tokens", [])}
    video_token_id = added_token_ids.get(video_token)
    if video_token_id is not None and video_token_id != config.video_token_id:
        disagreements.append(
            f"the processor's `video_token` {video_token!r} has id {video_token_id} in `tokenizer.json` but "
            f"`video_token_index` is {config.video_token_id} in `config.json`"
        )
    if disagreements:
        raise ValueError(
            f"The processor saved with {pretrained_model_name_or_path} does not lay out the video tokens as the model "
            f"does: {'; and '.join(disagreements)}. Set the value the model was trained with in both files, or "
            "re-convert the checkpoint with `vilamp convert`."
        )


def placeholder_mismatch_hint(
    num_placeholders: int, num_keyframes: int, num_non_keyframes: int, num_videos: int, keyframe_pooled_size: int
) -> str:
    """The likely cause of a count of `<video>` placeholders that differs from the video tokens, and its fix."""
    if num_placeholders == 0:
        return (
            "Build the prompt with the processor saved with the model: it expands one `<video>` per video into its "
            "video tokens. If it did, its video token has another id than `config.video_token_id`."
        )
    # a processor pooling keyframes to a side-by-side grid lays out side**2 per keyframe, 1 per non-keyframe and video
    keyframe_placeholders = num_placeholders - num_non_keyframes - num_videos
    if num_keyframes > 0 and keyframe_placeholders > 0 and keyframe_placeholders % num_keyframes == 0:
        side = math.isqrt(keyframe_placeholders // num_keyframes)
        if side * side * num_keyframes == keyframe_placeholders:
            return (
                f"{num_placeholders} is the count for `keyframe_pooled_size` = {side}: the prompt was built by a "
                f"processor that pools keyframes to {side}x{side}, while `config.keyframe_pooled_size` is "
                f"{keyframe_pooled_size}. Use the processor saved with the model, or make the two "
                "`keyframe_pooled_size` agree."
            )
    return (
        "Pass the `input_ids` and the video inputs of one processor call, with every placeholder it expanded (a "
        "prompt cut by `truncation` or `max_length` loses some)."
    )


def starts_sequence(model_kwargs: dict) -> bool:
    """Whether a step's key/value cache (`cache`, `past_key_values` before transformers 5.24) is absent or empty: the
    step's tokens then start the sequence, prompt included, while later steps hold new tokens after the cached ones."""
    cache = model_kwargs.get("cache", model_kwargs.get("past_key_values"))
    return cache is None or cache.get_seq_length() == 0


def free_memory_bytes(device: torch.device) -> int:
    """Free memory of `device`: the accelerator's free memory, or the host's available memory for the CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def with_unquantized_modules(quantization_config, module_names: list[str]):
    """
    A copy of a transformers quantization config whose list of modules to skip (`llm_int8_skip_modules` of
    bitsandbytes, `modules_to_not_convert` of torchao and most others) holds `module_names` and then the user's own;
    the user's config is left as it is. A config without such a list is returned as given.
    """
    if isinstance(quantization_config, dict):
        quantization_config = AutoQuantizationConfig.from_dict(quantization_config)
    for skip_field in ("llm_int8_skip_modules", "modules_to_not_convert"):
        if hasattr(quantization_config, skip_field):
            user_modules = getattr(quantization_config, skip_field) or []
            quantization_config = copy.deepcopy(quantization_config)
            setattr(quantization_config, skip_field, list(dict.fromkeys([*module_names, *user_modules])))
            break
    return quantization_config


class ViLaMPMultiModalProjector(nn.Module):
    """The 2-layer MLP from SigLIP features to the language model's width (`mlp2x_gelu` in the original)."""

    def __init__(self, config: ViLaMPConfig):
        super().__init__()
        self.linear_1 = nn.Linear(
            config.vision_config.hidden_size, config.text_config.hidden_size, bias=config.multimodal_projector_bias
        )
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(
            config.text_config.hidden_size, config.text_config.hidden_size, bias=config.multimodal_projector_bias
        )

    def forward(self, vision_features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(vision_features)))


class ViLaMPPreTrainedModel(PreTrainedModel):
    config_class = ViLaMPConfig
    config: ViLaMPConfig
    base_model_prefix = "model"
    input_modalities = ("video", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["Qwen2DecoderLayer", "SiglipEncoderLayer", "SiglipVisionEmbeddings"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # the decoding steps run only the language model, so `generate` may compile them (static cache)
    _can_compile_fullgraph = True
    # converters before 0.2 kept SigLIP's `post_layernorm`, which the original never applies
    _keys_to_ignore_on_load_unexpected = [r"vision_tower\.post_layernorm\."]
    # Modules that `from_pretrained(..., quantization_config=...)` leaves in the model's dtype, by their name in the
    # class loaded: VLMs whose vision tower and projectors are quantized to 4 bits answer gibberish, and these are small
    # next to the language model. transformers' quantizers read none of the model's attributes for this (and
    # `_keep_in_fp32_modules` would upcast them under float16), so `from_pretrained` adds them to the config's list.
    _unquantized_modules: list[str] = []

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """
        Loads a saved model as `PreTrainedModel.from_pretrained` does, and checks that the processor saved with it lays
        out the video tokens as its config does (see `check_saved_processor`). A damaged weights file of a local
        directory raises safetensors' `SafetensorError` as in transformers, with a message naming the file and the fix.
        A `quantization_config` (bitsandbytes 4/8-bit, torchao, ...) quantizes the language model only: the vision
        tower, the projector, the DFM and `lm_head` stay in the model's dtype, next to the modules the config lists.
        """
        hub_kwargs = {name: kwargs[name] for name in HUB_KWARGS if name in kwargs}
        if kwargs.get("quantization_config") is not None:
            kwargs["quantization_config"] = with_unquantized_modules(
                kwargs["quantization_config"], cls._unquantized_modules
            )
        config = kwargs.get("config")
        # `AutoModel` hands over the loaded config: then the check comes before any weight is read
        if isinstance(config, PreTrainedConfig) and pretrained_model_name_or_path is not None:
            check_saved_processor(config, pretrained_model_name_or_path, **hub_kwargs)
        try:
            loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        except SafetensorError as error:
            # safetensors' own message ("header too large") names no file
            damaged = damaged_weight_files(pretrained_model_name_or_path, kwargs.get("subfolder", ""))
            if not damaged:
                raise
            raise SafetensorError(
                f"{', '.join(map(str, damaged))} cannot be read as safetensors ({error}): the file is damaged or "
                "incomplete. Download the checkpoint again, or convert the original checkpoint again with "
                f"`vilamp convert ORIGINAL_DIR {pretrained_model_name_or_path} --overwrite`."
            ) from error
        if not isinstance(config, PreTrainedConfig) and pretrained_model_name_or_path is not None:
            model = loaded[0] if kwargs.get("output_loading_info") else loaded
            check_saved_processor(model.config, pretrained_model_name_or_path, **hub_kwargs)
        return loaded

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, ViLaMPModel):
            init.normal_(module.image_newline, mean=0.0, std=1 / math.sqrt(self.config.text_config.hidden_size))
        elif isinstance(module, ViLaMPDifferentialFeatureMerger):
            # the original initialises the DFM temperature to 0.01
            init.constant_(module.tau, 0.01)


class ViLaMPModel(ViLaMPPreTrainedModel):
    """The ViLaMP encoder stages and the Qwen2 language model, without the language modeling head."""

    _unquantized_modules = ["vision_tower", "multi_modal_projector", "feature_merger"]

    def __init__(self, config: ViLaMPConfig, compile_vision_tower: bool = False):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        # the frame features are the encoder's output: the original never applies SigLIP's `post_layernorm`, and an
        # unused parameter would stop DistributedDataParallel (`find_unused_parameters=False`) when the tower trains
        del self.vision_tower.post_layernorm
        if compile_vision_tower:
            self.compile_vision_tower()
        self.multi_modal_projector = ViLaMPMultiModalProjector(config)
        self.feature_merger = ViLaMPDifferentialFeatureMerger(config)
        self.image_newline = nn.Parameter(torch.empty(config.text_config.hidden_size))
        self.language_model = AutoModel.from_config(config.text_config)
        # set by `gradient_checkpointing_enable`: each vision chunk is then recomputed in the backward pass
        self.gradient_checkpointing = False
        # set by `enable_frame_parallel`: the ranks of this group then share the encoding of the frames
        self.frame_parallel_group = None
        self.post_init()

    def compile_vision_tower(self):
        """Compiles the SigLIP encoder with `torch.compile`: it is most of the video encoding time."""
        self.vision_tower.encoder.compile()

    def enable_frame_parallel(self, process_group=None):
        """
        Splits the video encoding of every later call over the ranks of a `torch.distributed` process group: each rank
        encodes a contiguous span of the batch's frames and all ranks receive all video tokens, so that each runs the
        language model as before. Every rank must call the model with the same inputs. Inference only: the tokens of
        the other ranks carry no gradient.

        Args:
            process_group (`torch.distributed.ProcessGroup`, *optional*): the ranks to split over; defaults to the
                default group of `torch.distributed.init_process_group`.
        """
        self.frame_parallel_group = resolve_process_group(process_group)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.language_model.set_input_embeddings(value)

    def get_vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """
        Encodes frames with the SigLIP tower, normalising the uint8 pixels on the tower's device.

        Args:
            pixel_values (`torch.ByteTensor` of shape `(num_frames, 3, image_size, image_size)`):
                Frames resized by the processor, as uint8.

        Returns:
            `torch.Tensor` of shape `(num_frames, num_patches, vision_hidden_size)`: the output of the tower's last
            layer, before `post_layernorm` (golden key `siglip_features`).
        """
        if pixel_values.dtype != torch.uint8:
            raise TypeError(
                f"`pixel_values_videos` must be uint8 frames as the processor returns them, got {pixel_values.dtype}; "
                "the model normalises them on its device."
            )
        patch_embedding = self.vision_tower.embeddings.patch_embedding.weight
        pixel_values = pixel_values.to(patch_embedding.device, non_blocking=True).float()
        pixel_values = (pixel_values / 255.0 - SIGLIP_PIXEL_MEAN) / SIGLIP_PIXEL_STD
        # a frozen tower needs no graph, even when `enable_input_require_grads` hooks its patch embedding
        is_trainable = any(parameter.requires_grad for parameter in self.vision_tower.parameters())
        with torch.set_grad_enabled(is_trainable and torch.is_grad_enabled()):
            patch_embeds = self.vision_tower.embeddings(pixel_values.to(patch_embedding.dtype))
            return self.vision_tower.encoder(inputs_embeds=patch_embeds).last_hidden_state

    def get_frame_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """
        Args:
            pixel_values (`torch.ByteTensor` of shape `(num_frames, 3, image_size, image_size)`):
                Frames resized by the processor, as uint8.

        Returns:
            `torch.Tensor` of shape `(num_frames, num_patches, hidden_size)`: projected patches
            (golden key `projected_features`).
        """
        return self.multi_modal_projector(self.get_vision_features(pixel_values))

    def get_frame_features_at(self, video_frames: VideoFrames, frames: slice | list[int]) -> torch.Tensor:
        """The projected patches `(num_selected_frames, num_patches, hidden_size)` of some frames of a batch, on the
        projector's device: encoded from their pixels, or gathered from the given features (only these frames)."""
        if video_frames.pixel_values is not None:
            return self.get_frame_features(video_frames.pixel_values[frames])
        return video_frames.gather_features(frames, self.multi_modal_projector.linear_2.weight.device)

    @torch.no_grad()
    def get_video_frame_features(
        self, pixel_values_videos: torch.Tensor, *, storage_device: torch.device | str | None = None
    ) -> torch.Tensor:
        """
        Computes the projected patches of every frame of one video: the part of the video encoding that does not
        depend on the question. Pass them as `video_frame_features` to [`forward`], [`get_video_features`] or
        `generate` to answer any number of questions about the video without encoding its frames again; only keyframe
        pooling, the DFM and the language model then run for each question.

        The frames go through the vision tower and the projector in the chunks that [`get_video_features`] uses for
        this video alone (`get_vision_chunk_size(num_frames)`), so that an answer from the features is bit-identical to
        one from the pixels. Each chunk moves to `storage_device` as soon as it is computed: the vision stage's device
        holds one chunk's activations beyond what is stored on it. Each frame takes `num_patches * hidden_size *
        element_size` bytes: 729 * 3584 * 2 = 5.0 MiB for the released 7B in bfloat16, 3.0 GiB for 600 frames. The
        features are computed without gradient (they are constants to a later forward) and freed with the tensor.

        Args:
            pixel_values_videos (`torch.ByteTensor` of shape `(num_frames, 3, image_size, image_size)`):
                The sampled frames of one video, as uint8 from the processor. They may stay on the CPU: each chunk is
                moved to the vision tower's device when it is encoded.
            storage_device (`torch.device` or `str`, *optional*):
                Where the features are kept; defaults to the projector's device. `"cpu"` keeps them in host memory,
                and each chunk of them moves to the projector's device when a question uses it.

        Returns:
            `torch.Tensor` of shape `(num_frames, num_patches, hidden_size)`, in the projector's dtype, on
            `storage_device`: every frame's projected patches (golden key `projected_features`).
        """
        num_frames = self._check_pixel_values(pixel_values_videos)
        if num_frames == 0:
            raise ValueError(
                "`pixel_values_videos` holds no frame; pass the frames of one video as the processor returns them."
            )
        projector_weight = self.multi_modal_projector.linear_2.weight
        num_patches = (self.config.vision_config.image_size // self.config.vision_config.patch_size) ** 2
        frame_features = torch.empty(
            num_frames,
            num_patches,
            self.config.text_config.hidden_size,
            dtype=projector_weight.dtype,
            device=projector_weight.device if storage_device is None else storage_device,
        )
        chunk_size = self.get_vision_chunk_size(num_frames)
        for chunk_start in range(0, num_frames, chunk_size):
            chunk = slice(chunk_start, chunk_start + chunk_size)
            frame_features[chunk] = self.get_frame_features(pixel_values_videos[chunk])
        return frame_features

    def pool_keyframes(self, frame_features: torch.Tensor) -> torch.Tensor:
        """
        Bilinearly resizes each keyframe's patch grid to `keyframe_pooled_size` x `keyframe_pooled_size`.

        Args:
            frame_features (`torch.Tensor` of shape `(num_keyframes, num_patches, hidden_size)`):
                Projected patches of the keyframes.

        Returns:
            `torch.Tensor` of shape `(num_keyframes, keyframe_pooled_size**2, hidden_size)`
            (golden key `pooled_keyframe_tokens`).
        """
        num_keyframes, num_patches, hidden_size = frame_features.shape
        side = self.config.vision_config.image_size // self.config.vision_config.patch_size
        pooled_size = self.config.keyframe_pooled_size
        grid = frame_features.view(num_keyframes, side, side, hidden_size).permute(0, 3, 1, 2)
        pooled = F.interpolate(grid, size=(pooled_size, pooled_size), mode="bilinear", align_corners=False)
        return pooled.permute(0, 2, 3, 1).reshape(num_keyframes, pooled_size * pooled_size, hidden_size)

    def get_vision_chunk_size(self, num_frames: int) -> int:
        """Frames per vision chunk: `config.vision_chunk_size`, or as many as half the free memory of each device of
        the vision stage holds."""
        if self.config.vision_chunk_size is not None:
            return min(self.config.vision_chunk_size, num_frames)
        vision_config, text_config = self.config.vision_config, self.config.text_config
        num_patches = (vision_config.image_size // vision_config.patch_size) ** 2
        element_size = self.multi_modal_projector.linear_2.weight.element_size()
        # the largest activations of one frame: a SigLIP layer, then the projector and the DFM's float32 scores
        bytes_per_frame = num_patches * (
            (4 * vision_config.hidden_size + vision_config.intermediate_size) * element_size
            + text_config.hidden_size * (4 * element_size + 6 * 4)
        )
        # a device map may put SigLIP, the projector and the DFM on different GPUs: the chunk must fit on each
        vision_devices = {
            parameter.device
            for module in (self.vision_tower, self.multi_modal_projector, self.feature_merger)
            for parameter in module.parameters()
        }
        free_bytes = min(free_memory_bytes(device) for device in vision_devices)
        chunk_size = max(1, min(num_frames, MAX_AUTO_VISION_CHUNK_SIZE, free_bytes // (2 * bytes_per_frame)))
        if chunk_size < min(num_frames, MAX_AUTO_VISION_CHUNK_SIZE):
            # the chunk sets the shapes of the vision matmuls, hence their rounding: say so rather than differ in silence
            logger.warning_once(
                f"Vision chunks of {chunk_size} frames instead of {MAX_AUTO_VISION_CHUNK_SIZE}: the vision stage's "
                f"devices have {free_bytes / 2**30:.1f} GiB free. The video tokens then differ in their last bits from "
                "a run with more free memory, which can change a greedy answer. Set `model.config.vision_chunk_size` "
                "to make the chunks, and the results, independent of free memory."
            )
        return chunk_size

    def merge_non_keyframes(
        self,
        frame_features: torch.Tensor,
        reference_features: list[torch.Tensor | None],
        projected_query: torch.Tensor,
    ) -> torch.Tensor:
        """
        Runs the DFM on non-keyframes, grouping those with and without a reference frame.

        Args:
            frame_features (`torch.Tensor` of shape `(num_non_keyframes, num_patches, hidden_size)`):
                Projected patches of the non-keyframes.
            reference_features (`list` of `torch.Tensor` of shape `(num_patches, hidden_size)` or `None`):
                The reference frame's patches of each non-keyframe, `None` where it has none.
            projected_query (`torch.Tensor` of shape `(num_non_keyframes, hidden_size)`):
                The projected query of each non-keyframe's video.

        Returns:
            `torch.Tensor` of shape `(num_non_keyframes, hidden_size)` (golden key `non_keyframe_tokens`).
        """
        has_reference = torch.tensor([reference is not None for reference in reference_features])
        tokens = frame_features.new_empty(len(reference_features), frame_features.shape[-1])
        if has_reference.any():
            references = torch.stack([reference for reference in reference_features if reference is not None])
            # a device map may put the DFM on another device than the projector: its tokens come back to the projector's
            tokens[has_reference] = self.feature_merger(
                frame_features[has_reference], references, projected_query[has_reference]
            ).to(tokens.device)
        if not has_reference.all():
            tokens[~has_reference] = self.feature_merger(
                frame_features[~has_reference], None, projected_query[~has_reference]
            ).to(tokens.device)
        return tokens

    @can_return_tuple
    def get_video_features(
        self,
        pixel_values_videos: torch.Tensor | None = None,
        keyframe_mask: torch.Tensor | None = None,
        query_embeds: torch.Tensor | None = None,
        video_frame_counts: torch.Tensor | None = None,
        video_frame_features: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...] | None = None,
    ) -> BaseModelOutputWithPooling:
        """
        Encodes a batch of videos into their tokens, streaming the frames through SigLIP, the projector, keyframe
        pooling and the DFM in temporal chunks, so that memory holds only one chunk's patches, the reference frames
        still needed, and the output tokens. Given `video_frame_features` instead of pixels, each chunk's projected
        patches are gathered from them and only keyframe pooling and the DFM run.
        After [`enable_frame_parallel`], each rank of the group encodes a contiguous span of the frames and every rank
        returns the tokens of all of them.

        Args:
            pixel_values_videos (`torch.ByteTensor` of shape `(num_frames, 3, image_size, image_size)`, *optional*):
                Every sampled frame of every video, concatenated in order, as uint8. They may stay on the CPU: each
                chunk is moved to the vision tower's device when it is encoded.
            keyframe_mask (`torch.BoolTensor` of shape `(num_frames,)`):
                Which frames are keyframes, as chosen by the processor.
            query_embeds (`torch.Tensor` of shape `(num_videos, query_embed_dim)`):
                The CLIP text embedding of each video's query (the DFM's query).
            video_frame_counts (`torch.LongTensor` of shape `(num_videos,)`, *optional*):
                Frames of each video; may be omitted for a single video or a list of `video_frame_features`.
            video_frame_features (`torch.Tensor` of shape `(num_frames, num_patches, hidden_size)`, or a `list` of
                one such tensor per video, *optional*):
                The projected patches of every frame from [`get_video_frame_features`], instead of
                `pixel_values_videos` (exactly one of the two). A list may hold the same tensor several times, for
                several questions about one video: nothing is copied but one chunk at a time, moved to the
                projector's device when it is used, so the features may be kept in host memory.

        Returns:
            `BaseModelOutputWithPooling` whose `pooler_output` holds, as other transformers VLMs return their video
            tokens, one tensor of shape `(num_video_tokens, hidden_size)` per video: its frames' tokens in temporal
            order (`keyframe_pooled_size**2` per keyframe, one per non-keyframe) and one `image_newline`; concatenated,
            they are the golden key `video_tokens`. `last_hidden_state` is `None`: the SigLIP features are streamed
            chunk by chunk and never kept.
        """
        frame_counts = self._check_video_inputs(
            pixel_values_videos, keyframe_mask, query_embeds, video_frame_counts, video_frame_features
        )
        video_frames = VideoFrames(
            pixel_values=pixel_values_videos,
            frame_features=None
            if video_frame_features is None
            else frame_features_by_video(video_frame_features, frame_counts),
        )
        keyframe_mask = keyframe_mask.bool().cpu()
        num_frames = keyframe_mask.shape[0]
        layout = plan_video_tokens(
            keyframe_mask, frame_counts, self.config.keyframe_pooled_size**2, self.config.dfm_reference_rule
        )
        device = self.multi_modal_projector.linear_2.weight.device
        # the chunks are assembled on the projector's device, wherever a device map put the DFM
        projected_query = self.feature_merger.project_query(query_embeds.to(device)).to(device)
        if self.frame_parallel_group is None:
            video_tokens = self.encode_frames(video_frames, keyframe_mask, layout, projected_query, 0, num_frames)
        else:
            video_tokens = encode_frames_across_ranks(
                self, video_frames, keyframe_mask, layout, projected_query, self.frame_parallel_group
            )
        return BaseModelOutputWithPooling(pooler_output=video_tokens.split(layout.video_token_counts))

    def encode_frames(
        self,
        video_frames: VideoFrames,
        keyframe_mask: torch.Tensor,
        layout: VideoTokenLayout,
        projected_query: torch.Tensor,
        start: int,
        end: int,
        kept_features: dict[int, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """
        Encodes the frames `start` to `end` of a batch into their tokens, in temporal chunks: the stage that
        [`get_video_features`] runs over all frames and each rank of a frame-parallel group over its span.

        Args:
            video_frames (`VideoFrames`): every frame of the batch, as pixels or projected patches.
            keyframe_mask (`torch.BoolTensor` of shape `(num_frames,)`): which frames are keyframes, on the CPU.
            layout (`VideoTokenLayout`): the batch's token layout, from `plan_video_tokens`.
            projected_query (`torch.Tensor` of shape `(num_videos, hidden_size)`): each video's projected query.
            start, end (`int`): the global indices of the first frame and one past the last frame to encode.
            kept_features (`dict[int, torch.Tensor]`, *optional*): patches `(num_patches, hidden_size)` of the frames
                before `start` that the non-keyframes of the span compare with.

        Returns:
            `torch.Tensor` of shape `(num_span_tokens, hidden_size)`: the video tokens from the first token of frame
            `start` up to the first token of frame `end`, the `image_newline` of each video ending in the span included.
        """
        num_keyframe_tokens = self.config.keyframe_pooled_size**2
        device = self.multi_modal_projector.linear_2.weight.device
        token_bounds = torch.cat([layout.token_starts, torch.tensor([layout.num_tokens])])
        token_offset = int(token_bounds[start])
        # on the projector's device with the chunks' tokens, wherever a device map put `image_newline`
        video_tokens = torch.empty(
            int(token_bounds[end]) - token_offset,
            self.config.text_config.hidden_size,
            dtype=self.image_newline.dtype,
            device=device,
        )
        newline_positions = layout.newline_positions
        newline_positions = newline_positions[
            (newline_positions >= token_offset) & (newline_positions < token_bounds[end])
        ]
        video_tokens[(newline_positions - token_offset).to(device)] = self.image_newline.to(device, video_tokens.dtype)
        pooled_offsets = torch.arange(num_keyframe_tokens)
        # patches of earlier frames that later non-keyframes still compare with, by global frame index
        kept_features = dict(kept_features or {})
        chunk_size = self.get_vision_chunk_size(max(end - start, 1))
        for chunk_start in range(start, end, chunk_size):
            chunk_end = min(chunk_start + chunk_size, end)
            chunk_keyframes = keyframe_mask[chunk_start:chunk_end]
            chunk_token_starts = layout.token_starts[chunk_start:chunk_end] - token_offset
            references = [
                -1 if keyframe_mask[frame] else layout.reference_frames[frame]
                for frame in range(chunk_start, chunk_end)
            ]
            earlier_references = sorted({reference for reference in references if 0 <= reference < chunk_start})
            frames_to_keep = [
                frame for frame in range(chunk_start, chunk_end) if layout.last_reference_use[frame] >= chunk_end
            ]
            chunk_query = projected_query[
                layout.frame_video_indices[chunk_start:chunk_end][~chunk_keyframes].to(device)
            ]
            encode_chunk_args = (
                video_frames,
                chunk_start,
                chunk_keyframes,
                references,
                frames_to_keep,
                chunk_query,
            )
            earlier_features = [kept_features[frame] for frame in earlier_references]
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                # non-reentrant: the chunk reads uint8 frames or constant features, and the reentrant variant would
                # then pass no gradient to the projector and the DFM
                keyframe_tokens, non_keyframe_tokens, *new_kept = checkpoint(
                    self.encode_chunk,
                    *encode_chunk_args,
                    dict(zip(earlier_references, earlier_features)),
                    use_reentrant=False,
                )
            else:
                keyframe_tokens, non_keyframe_tokens, *new_kept = self.encode_chunk(
                    *encode_chunk_args, dict(zip(earlier_references, earlier_features))
                )
            if chunk_keyframes.any():
                positions = (chunk_token_starts[chunk_keyframes, None] + pooled_offsets).flatten()
                video_tokens[positions.to(device)] = keyframe_tokens.flatten(0, 1)
            if not chunk_keyframes.all():
                video_tokens[chunk_token_starts[~chunk_keyframes].to(device)] = non_keyframe_tokens
            kept_features = {
                frame: features
                for frame, features in kept_features.items()
                if layout.last_reference_use[frame] >= chunk_end
            }
            kept_features.update(zip(frames_to_keep, new_kept))
        return video_tokens

    def encode_chunk(
        self,
        video_frames: VideoFrames,
        start: int,
        chunk_keyframes: torch.Tensor,
        references: list[int],
        frames_to_keep: list[int],
        projected_query: torch.Tensor,
        earlier_features: dict[int, torch.Tensor],
    ) -> tuple[torch.Tensor, ...]:
        """
        Encodes one temporal chunk of frames into its tokens: SigLIP and projector (or the given projected patches),
        keyframe pooling and the DFM.

        Args:
            video_frames (`VideoFrames`): every frame of the batch, as pixels or projected patches.
            start (`int`): the global index of the chunk's first frame.
            chunk_keyframes (`torch.BoolTensor` of shape `(chunk_size,)`): which of them are keyframes.
            references (`list[int]`): each frame's global reference frame, -1 for keyframes and frames without one.
            frames_to_keep (`list[int]`): frames of this chunk that later chunks compare with.
            projected_query (`torch.Tensor` of shape `(num_non_keyframes, hidden_size)`): each non-keyframe's query.
            earlier_features (`dict[int, torch.Tensor]`): patches `(num_patches, hidden_size)` of the earlier frames
                that this chunk's non-keyframes compare with.

        Returns:
            `tuple`: the pooled keyframe tokens `(num_keyframes, keyframe_pooled_size**2, hidden_size)` (None without
            keyframes), the non-keyframe tokens `(num_non_keyframes, hidden_size)` (None without non-keyframes), then
            a copy of the patches of each frame of `frames_to_keep`, so that the chunk's other patches are freed.
        """
        frame_features = self.get_frame_features_at(video_frames, slice(start, start + chunk_keyframes.shape[0]))
        keyframe_tokens = non_keyframe_tokens = None
        if chunk_keyframes.any():
            keyframe_tokens = self.pool_keyframes(frame_features[chunk_keyframes])
        if not chunk_keyframes.all():
            available = {**earlier_features, **dict(enumerate(frame_features, start))}
            non_keyframe_references = [
                reference for reference, is_keyframe in zip(references, chunk_keyframes.tolist()) if not is_keyframe
            ]
            non_keyframe_tokens = self.merge_non_keyframes(
                frame_features[~chunk_keyframes],
                [available[reference] if reference >= 0 else None for reference in non_keyframe_references],
                projected_query,
            )
        kept_features = (frame_features[frame - start].clone() for frame in frames_to_keep)
        return keyframe_tokens, non_keyframe_tokens, *kept_features

    def _check_pixel_values(self, pixel_values_videos: torch.Tensor) -> int:
        """Validates the shape of `pixel_values_videos` and returns its number of frames."""
        if pixel_values_videos.ndim != 4:
            raise ValueError(
                "`pixel_values_videos` must have shape (num_frames, 3, height, width), frames of all videos "
                f"concatenated; got shape {tuple(pixel_values_videos.shape)}."
            )
        num_frames, _, height, width = pixel_values_videos.shape
        image_size = self.config.vision_config.image_size
        if (height, width) != (image_size, image_size):
            raise ValueError(
                f"`pixel_values_videos` frames are {height}x{width} but the vision tower takes {image_size}x{image_size} "
                "(`config.vision_config.image_size`); use the processor saved with the model."
            )
        return num_frames

    def _check_frame_features(
        self, video_frame_features: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...]
    ) -> list[int]:
        """Validates `video_frame_features` against the model and returns the frames of each of its tensors."""
        if isinstance(video_frame_features, torch.Tensor):
            entries = {"`video_frame_features`": video_frame_features}
        elif isinstance(video_frame_features, (list, tuple)) and all(
            isinstance(features, torch.Tensor) for features in video_frame_features
        ):
            entries = {
                f"`video_frame_features[{index}]`": features for index, features in enumerate(video_frame_features)
            }
        else:
            raise TypeError(
                "`video_frame_features` must be a tensor of shape (num_frames, num_patches, hidden_size) or a list of "
                f"one such tensor per video, as `get_video_frame_features` returns; got {type(video_frame_features)}."
            )
        vision_config = self.config.vision_config
        num_patches = (vision_config.image_size // vision_config.patch_size) ** 2
        hidden_size = self.config.text_config.hidden_size
        dtype = self.multi_modal_projector.linear_2.weight.dtype
        fix = "compute them with this model's `get_video_frame_features`"
        for name, features in entries.items():
            if features.ndim != 3:
                raise ValueError(
                    f"{name} must have shape (num_frames, num_patches, hidden_size), got {tuple(features.shape)}; {fix}."
                )
            if features.shape[2] != hidden_size:
                raise ValueError(
                    f"{name} has hidden size {features.shape[2]} but the model's is {hidden_size} "
                    f"(`config.text_config.hidden_size`); {fix}."
                )
            if features.shape[1] != num_patches:
                raise ValueError(
                    f"{name} has {features.shape[1]} patches per frame but the vision tower makes {num_patches} "
                    f"((`image_size` // `patch_size`)**2 of `config.vision_config`); {fix}."
                )
            if features.dtype != dtype:
                raise TypeError(
                    f"{name} is {features.dtype} but the model computes in {dtype}; {fix} in its current dtype."
                )
        return [features.shape[0] for features in entries.values()]

    def _check_video_inputs(
        self,
        pixel_values_videos: torch.Tensor | None,
        keyframe_mask: torch.Tensor | None,
        query_embeds: torch.Tensor | None,
        video_frame_counts: torch.Tensor | None,
        video_frame_features: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...] | None = None,
    ) -> list[int]:
        """Validates the video inputs against each other and the model, and returns the frame count of each video."""
        if (pixel_values_videos is None) == (video_frame_features is None):
            raise ValueError(
                "Pass exactly one of `pixel_values_videos` (the processor's uint8 frames) and `video_frame_features` "
                f"(projected patches from `get_video_frame_features`); got "
                f"{'neither' if pixel_values_videos is None else 'both'}."
            )
        frames_name = "`pixel_values_videos`" if video_frame_features is None else "`video_frame_features`"
        if keyframe_mask is None or query_embeds is None:
            raise ValueError(
                f"{frames_name} needs `keyframe_mask` and `query_embeds` too; pass everything the processor returns."
            )
        if video_frame_features is None:
            num_frames = self._check_pixel_values(pixel_values_videos)
        else:
            entry_frame_counts = self._check_frame_features(video_frame_features)
            num_frames = sum(entry_frame_counts)
        if keyframe_mask.shape != (num_frames,):
            raise ValueError(
                f"`keyframe_mask` has shape {tuple(keyframe_mask.shape)} but {frames_name} has {num_frames} "
                "frames; pass one mask entry per sampled frame."
            )
        if query_embeds.ndim != 2 or query_embeds.shape[1] != self.config.query_embed_dim:
            raise ValueError(
                f"`query_embeds` must have shape (num_videos, {self.config.query_embed_dim}) "
                f"(`config.query_embed_dim`), got {tuple(query_embeds.shape)}."
            )
        num_videos = query_embeds.shape[0]
        if isinstance(video_frame_features, (list, tuple)):
            # a list holds one entry per video, which gives that video's frames
            if len(entry_frame_counts) != num_videos:
                raise ValueError(
                    f"`video_frame_features` holds {len(entry_frame_counts)} videos but `query_embeds` has "
                    f"{num_videos}; pass one entry per video of the batch (the same tensor again for another question "
                    "about a video)."
                )
            if video_frame_counts is not None and video_frame_counts.flatten().tolist() != entry_frame_counts:
                raise ValueError(
                    f"`video_frame_counts` {video_frame_counts.flatten().tolist()} differs from the frames of the "
                    f"entries of `video_frame_features` {entry_frame_counts}; pass these videos' frame counts, or omit "
                    "`video_frame_counts`."
                )
            frame_counts = entry_frame_counts
        elif video_frame_counts is not None:
            frame_counts = video_frame_counts.flatten().tolist()
        elif num_videos == 1:
            frame_counts = [num_frames]
        else:
            raise ValueError(
                f"`video_frame_counts` is needed to split the frames of {num_videos} videos; pass the processor's."
            )
        if len(frame_counts) != num_videos or sum(frame_counts) != num_frames or min(frame_counts) < 1:
            raise ValueError(
                f"`video_frame_counts` {frame_counts} must give at least one frame to each of the {num_videos} videos "
                f"of `query_embeds` and sum to the {num_frames} frames of {frames_name}."
            )
        return frame_counts

    def placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor | None
    ) -> torch.BoolTensor:
        """Where the `<video>` placeholders are, `(batch_size, sequence_length)`: in `input_ids`, or else where
        `inputs_embeds` holds the placeholder's embedding."""
        # `generate` given only `inputs_embeds` passes an empty `input_ids` alongside them: the prompt is the embeds
        if input_ids is not None and (inputs_embeds is None or input_ids.shape[1] == inputs_embeds.shape[1]):
            return input_ids == self.config.video_token_id
        video_token_embeds = self.get_input_embeddings()(
            torch.tensor(self.config.video_token_id, dtype=torch.long, device=inputs_embeds.device)
        )
        return (inputs_embeds == video_token_embeds).all(-1)

    def get_placeholder_mask(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor,
        video_features: torch.Tensor,
        keyframe_mask: torch.Tensor,
        num_videos: int,
    ) -> torch.BoolTensor:
        """
        Finds the `<video>` placeholders in `input_ids` (or `inputs_embeds`) and checks that there is one per video
        token, naming the likely cause where there is not (no placeholder at all, or the count of another grid).

        Returns:
            `torch.BoolTensor` of shape `(batch_size, sequence_length, hidden_size)`, for `masked_scatter`.
        """
        special_video_mask = self.placeholder_mask(input_ids, inputs_embeds)
        num_placeholders = int(special_video_mask.sum())
        if num_placeholders != video_features.shape[0]:
            num_keyframes = int(keyframe_mask.bool().sum())
            num_non_keyframes = keyframe_mask.shape[0] - num_keyframes
            pooled_size = self.config.keyframe_pooled_size
            hint = placeholder_mismatch_hint(
                num_placeholders, num_keyframes, num_non_keyframes, num_videos, pooled_size
            )
            raise ValueError(
                f"Video features and video tokens do not match: expected {video_features.shape[0]} video tokens "
                f"({pooled_size**2}*{num_keyframes} + {num_non_keyframes} + {num_videos}), found {num_placeholders} in "
                f"{'`input_ids`' if input_ids is not None else '`inputs_embeds`'}, counting the placeholders of "
                f"`config.video_token_id` = {self.config.video_token_id} (the model gives `keyframe_pooled_size`**2 = "
                f"{pooled_size**2} tokens to each keyframe, 1 to each non-keyframe and a newline to each video). {hint}"
            )
        return special_video_mask.unsqueeze(-1).expand_as(inputs_embeds).to(inputs_embeds.device)

    def check_no_placeholders(self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor):
        """Checks that a prompt passed without a video holds no `<video>` placeholder: the language model would read
        the placeholder's bare embedding instead of the video."""
        num_placeholders = int(self.placeholder_mask(input_ids, inputs_embeds).sum())
        if num_placeholders > 0:
            raise ValueError(
                f"{'`input_ids`' if input_ids is not None else '`inputs_embeds`'} holds {num_placeholders} video "
                f"placeholders (`config.video_token_id` = {self.config.video_token_id}) but no video was passed; pass "
                "the video inputs the processor returned with the prompt (`pixel_values_videos`, or "
                "`video_frame_features` from `get_video_frame_features`, with `keyframe_mask`, `query_embeds` and "
                "`video_frame_counts`), or drop the placeholders from a text-only prompt."
            )

    def repeat_videos_with_rows(
        self,
        placeholder_mask: torch.BoolTensor,
        expand_size: int,
        pixel_values_videos: torch.Tensor | None = None,
        keyframe_mask: torch.Tensor | None = None,
        query_embeds: torch.Tensor | None = None,
        video_frame_counts: torch.Tensor | None = None,
        video_frame_features: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...] | None = None,
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """
        Repeats the video inputs as `generate` repeats the batch rows for beams and `num_return_sequences`: each row
        becomes `expand_size` consecutive rows, so each video is repeated `expand_size` times with the row that holds it.
        Videos fill the rows' placeholders in order, as the processor lays them out. Frame features are repeated as
        a list that holds each video's tensor again, never copied.

        Args:
            placeholder_mask (`torch.BoolTensor` of shape `(batch_size, sequence_length)`): the `<video>` placeholders
                of the rows before repetition.
            expand_size (`int`): copies of each row.
            pixel_values_videos, keyframe_mask, query_embeds, video_frame_counts, video_frame_features: the video
                inputs, as for `forward`.

        Returns:
            `dict` with the video inputs of the repeated rows: `pixel_values_videos` or `video_frame_features` (a list
            of one tensor per video), `keyframe_mask`, `query_embeds` and `video_frame_counts`.
        """
        frame_counts = self._check_video_inputs(
            pixel_values_videos, keyframe_mask, query_embeds, video_frame_counts, video_frame_features
        )
        layout = plan_video_tokens(
            keyframe_mask.bool().cpu(),
            frame_counts,
            self.config.keyframe_pooled_size**2,
            self.config.dfm_reference_rule,
        )
        video_token_counts = layout.video_token_counts
        videos_of_rows, next_video = [], 0
        for row, num_placeholders in enumerate(placeholder_mask.sum(-1).tolist()):
            row_videos = []
            while num_placeholders > 0 and next_video < len(video_token_counts):
                num_placeholders -= video_token_counts[next_video]
                row_videos.append(next_video)
                next_video += 1
            if num_placeholders != 0:
                raise ValueError(
                    f"Row {row} of `input_ids` holds placeholders that do not match whole videos (video token counts "
                    f"{video_token_counts}, placeholders per row {placeholder_mask.sum(-1).tolist()}); let the "
                    "processor expand the `<video>` placeholders."
                )
            videos_of_rows.append(row_videos)
        if next_video < len(video_token_counts):
            raise ValueError(
                f"{len(video_token_counts)} videos were passed but the prompts hold placeholders for {next_video}; pass "
                "`input_ids` or `inputs_embeds` holding every video's `<video>` placeholders, as the processor expands them."
            )
        video_order = [video for row_videos in videos_of_rows for _ in range(expand_size) for video in row_videos]
        frame_starts = [0, *itertools.accumulate(frame_counts)]
        frame_indices = torch.cat(
            [torch.arange(frame_starts[video], frame_starts[video] + frame_counts[video]) for video in video_order]
        )
        if video_frame_features is None:
            frames = {"pixel_values_videos": pixel_values_videos[frame_indices.to(pixel_values_videos.device)]}
        else:
            features_by_video = frame_features_by_video(video_frame_features, frame_counts)
            frames = {"video_frame_features": [features_by_video[video] for video in video_order]}
        return {
            **frames,
            "keyframe_mask": keyframe_mask[frame_indices.to(keyframe_mask.device)],
            "query_embeds": query_embeds[torch.tensor(video_order, device=query_embeds.device)],
            "video_frame_counts": torch.tensor([frame_counts[video] for video in video_order], dtype=torch.long),
        }

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        keyframe_mask: torch.Tensor | None = None,
        query_embeds: torch.Tensor | None = None,
        video_frame_counts: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        video_frame_features: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...] | None = None,
        **kwargs,
    ) -> ViLaMPModelOutputWithPast:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
                Prompt ids with the `<video>` placeholders expanded by the processor.
            pixel_values_videos (`torch.ByteTensor` of shape `(num_frames, 3, image_size, image_size)`, *optional*):
                Every sampled frame of every video, concatenated in order, as uint8.
            keyframe_mask (`torch.BoolTensor` of shape `(num_frames,)`, *optional*):
                Which frames are keyframes.
            query_embeds (`torch.Tensor` of shape `(num_videos, query_embed_dim)`, *optional*):
                The CLIP text embedding of each video's query.
            video_frame_counts (`torch.LongTensor` of shape `(num_videos,)`, *optional*):
                Frames of each video.
            video_frame_features (`torch.Tensor` of shape `(num_frames, num_patches, hidden_size)`, or a `list` of
                one such tensor per video, *optional*):
                Each video's projected patches from `get_video_frame_features`, instead of `pixel_values_videos`: a
                loaded video answers a new question without encoding its frames again. A list may hold one tensor
                several times, for several questions about one video; it is never copied.
            kwargs:
                Passed to the language model, the key/value cache included under the name the installed transformers
                gives it (`past_key_values`, or `cache` from 5.24).
        """
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of `input_ids` or `inputs_embeds`.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        video_features = None
        if pixel_values_videos is not None or video_frame_features is not None:
            video_features = self.get_video_features(
                pixel_values_videos, keyframe_mask, query_embeds, video_frame_counts, video_frame_features
            ).pooler_output
            video_features = torch.cat(video_features).to(inputs_embeds.device, inputs_embeds.dtype)
            special_video_mask = self.get_placeholder_mask(
                input_ids, inputs_embeds, video_features, keyframe_mask, num_videos=query_embeds.shape[0]
            )
            inputs_embeds = inputs_embeds.masked_scatter(special_video_mask, video_features)
        # a compiled step is one of `generate`'s decoding steps, and reading a static cache's length breaks the graph
        elif not is_torchdynamo_compiling() and starts_sequence(kwargs):
            self.check_no_placeholders(input_ids, inputs_embeds)

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        return ViLaMPModelOutputWithPast(**outputs, video_hidden_states=video_features)


class ViLaMPForConditionalGeneration(ViLaMPPreTrainedModel, GenerationMixin):
    """
    ViLaMP with the language modeling head: answers questions about videos with `generate`.

    Args:
        config ([`ViLaMPConfig`]): the model configuration.
        compile_vision_tower (`bool`, *optional*, defaults to `False`): compile the SigLIP encoder with `torch.compile`
            (see [`ViLaMPModel.compile_vision_tower`]). A load-time option, never saved with the model:
            `ViLaMPForConditionalGeneration.from_pretrained(path, compile_vision_tower=True)`.
    """

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    # `lm_head` is transformers' own default, which any list of modules to skip replaces
    _unquantized_modules = ["model.vision_tower", "model.multi_modal_projector", "model.feature_merger", "lm_head"]
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: ViLaMPConfig, compile_vision_tower: bool = False):
        super().__init__(config)
        self.model = ViLaMPModel(config, compile_vision_tower=compile_vision_tower)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()
        # a generated placeholder would be taken for a video token by the next forward without a cache
        self.generation_config.suppress_tokens = [config.video_token_id]

    def compile_vision_tower(self):
        """Compiles the SigLIP encoder with `torch.compile`; see [`ViLaMPModel.compile_vision_tower`]."""
        self.model.compile_vision_tower()

    def enable_frame_parallel(self, process_group=None):
        """Splits the video encoding over the ranks of a `torch.distributed` process group; see
        [`ViLaMPModel.enable_frame_parallel`]."""
        self.model.enable_frame_parallel(process_group)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module):
        self.lm_head = new_embeddings

    def get_video_frame_features(
        self, pixel_values_videos: torch.Tensor, *, storage_device: torch.device | str | None = None
    ) -> torch.Tensor:
        """The projected patches `(num_frames, num_patches, hidden_size)` of one video's frames, kept on
        `storage_device`, to answer any number of questions about it; see [`ViLaMPModel.get_video_frame_features`]."""
        return self.model.get_video_frame_features(pixel_values_videos, storage_device=storage_device)

    @can_return_tuple
    def get_video_features(
        self,
        pixel_values_videos: torch.Tensor | None = None,
        keyframe_mask: torch.Tensor | None = None,
        query_embeds: torch.Tensor | None = None,
        video_frame_counts: torch.Tensor | None = None,
        video_frame_features: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...] | None = None,
    ) -> BaseModelOutputWithPooling:
        """The video tokens of each video of a batch, as `pooler_output`; see [`ViLaMPModel.get_video_features`]."""
        return self.model.get_video_features(
            pixel_values_videos, keyframe_mask, query_embeds, video_frame_counts, video_frame_features
        )

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        keyframe_mask: torch.Tensor | None = None,
        query_embeds: torch.Tensor | None = None,
        video_frame_counts: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        video_frame_features: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...] | None = None,
        **kwargs,
    ) -> ViLaMPCausalLMOutputWithPast:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
                Prompt ids with the `<video>` placeholders expanded by the processor.
            pixel_values_videos (`torch.ByteTensor` of shape `(num_frames, 3, image_size, image_size)`, *optional*):
                Every sampled frame of every video, concatenated in order, as uint8.
            keyframe_mask (`torch.BoolTensor` of shape `(num_frames,)`, *optional*):
                Which frames are keyframes.
            query_embeds (`torch.Tensor` of shape `(num_videos, query_embed_dim)`, *optional*):
                The CLIP text embedding of each video's query.
            video_frame_counts (`torch.LongTensor` of shape `(num_videos,)`, *optional*):
                Frames of each video.
            labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                Target ids for the language modeling loss; -100 marks positions without loss.
            logits_to_keep (`int` or `torch.Tensor`, *optional*, defaults to 0):
                If an int, compute logits only for that many last positions (0 keeps all); if a tensor, the positions
                to keep. Generation keeps only the last one.
            video_frame_features (`torch.Tensor` of shape `(num_frames, num_patches, hidden_size)`, or a `list` of
                one such tensor per video, *optional*):
                Each video's projected patches from `get_video_frame_features`, instead of `pixel_values_videos`: a
                loaded video answers a new question without encoding its frames again. A list may hold one tensor
                several times, for several questions about one video; it is never copied.
            kwargs:
                Passed to the language model, the key/value cache included under the name the installed transformers
                gives it (`past_key_values`, or `cache` from 5.24).

        Example:

        ```python
        >>> import modeling_vilamp
        >>> from transformers import AutoModel, AutoProcessor

        >>> model = AutoModel.from_pretrained("vilamp-7b", dtype="auto", device_map="auto")
        >>> processor = AutoProcessor.from_pretrained("vilamp-7b")
        >>> inputs = processor(videos="talk.mp4", text="What is the speaker holding?", return_tensors="pt")
        >>> output_ids = model.generate(**inputs.to(model.device), max_new_tokens=64)
        ```"""
        outputs = self.model(
            input_ids=input_ids,
            pixel_values_videos=pixel_values_videos,
            keyframe_mask=keyframe_mask,
            query_embeds=query_embeds,
            video_frame_counts=video_frame_counts,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            video_frame_features=video_frame_features,
            **kwargs,
        )
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(outputs.last_hidden_state[:, slice_indices, :])

        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        language_model_outputs = {name: value for name, value in outputs.items() if name != "last_hidden_state"}
        return ViLaMPCausalLMOutputWithPast(loss=loss, logits=logits, **language_model_outputs)

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None, **model_kwargs):
        # `generate` repeats every tensor along dim 0 for beams and `num_return_sequences`, but the frames and the
        # keyframe mask are frame-major: each video is repeated with the row that holds it instead
        video_inputs = {name: model_kwargs.pop(name) for name in VIDEO_INPUT_NAMES if name in model_kwargs}
        has_video = any(video_inputs.get(name) is not None for name in ("pixel_values_videos", "video_frame_features"))
        if expand_size > 1 and has_video:
            placeholder_mask = self.model.placeholder_mask(input_ids, model_kwargs.get("inputs_embeds"))
            video_inputs = self.model.repeat_videos_with_rows(placeholder_mask, expand_size, **video_inputs)
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=is_encoder_decoder, input_ids=input_ids, **model_kwargs
        )
        return input_ids, {**model_kwargs, **video_inputs}

    # keeps the signature of transformers' method: `generate` checks its model kwargs against it, and the name of the
    # cache argument there depends on the transformers release
    @functools.wraps(GenerationMixin.prepare_inputs_for_generation)
    def prepare_inputs_for_generation(self, *args, is_first_iteration: bool | None = False, **kwargs):
        # `generate` marks every call of an assistant model as a later iteration, its first one included: the video
        # inputs are kept for any step whose cache is still empty, since the prompt's placeholders need them
        is_first_iteration = is_first_iteration or starts_sequence(kwargs)
        model_inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        # the video is in the cache after the prefill step: encoding it again would be wasted and mismatch the ids
        if not is_first_iteration and kwargs.get("use_cache", True):
            for name in VIDEO_INPUT_NAMES:
                model_inputs.pop(name, None)
        return model_inputs


__all__ = [
    "ViLaMPForConditionalGeneration",
    "ViLaMPModel",
    "ViLaMPMultiModalProjector",
    "ViLaMPPreTrainedModel",
]
