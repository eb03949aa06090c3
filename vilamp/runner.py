"""
From a loaded ViLaMP model and its processor to answers: the dtype rule, which inputs go to the model's device,
batches of questions through the processor, greedy generation and the answer text. The command line, the evaluation,
the examples and the benches answer through it; what only one of them needs (progress bars and a streamer, worker
processes that decode ahead of the model, continuation scores) stays with it.
"""

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.generation.streamers import BaseStreamer

from .modeling_vilamp import ViLaMPForConditionalGeneration
from .processing import ViLaMPProcessor, resolve_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CACHE_IMPLEMENTATIONS = ("dynamic", "static")
# Inputs moved to the model's device before a call; the frames and the keyframe mask stay on the CPU as the processor
# gives them (uint8 frames are compact), and the model moves each chunk of frames to its device when it encodes it.
DEVICE_INPUT_NAMES = ("input_ids", "attention_mask", "query_embeds")


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """The weights' dtype: `"auto"` is bfloat16 on a GPU and float32 on the CPU; a name of `DTYPES` (or a torch dtype
    among them) is that dtype."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}.")
    return DTYPES[dtype]


def load_processor(
    pretrained_model_name_or_path: str | os.PathLike, *, device: str | torch.device = "auto", **video_settings
) -> ViLaMPProcessor:
    """
    Loads the processor of a converted ViLaMP with its keyframe selector on `device`.

    Args:
        pretrained_model_name_or_path (`str` or `os.PathLike`): the converted checkpoint's directory or repository.
        device (`str` or `torch.device`, *optional*, defaults to `"auto"`): where the keyframe selector runs.
        video_settings: `max_frames`, `num_keyframes`, ... overriding the saved ones; None keeps the saved one.
    """
    settings = {name: value for name, value in video_settings.items() if value is not None}
    return ViLaMPProcessor.from_pretrained(pretrained_model_name_or_path, device=device, **settings)


def load_model(
    pretrained_model_name_or_path: str | os.PathLike,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    attn_implementation: str | None = None,
) -> ViLaMPForConditionalGeneration:
    """
    Loads a converted ViLaMP model straight onto `device` (no copy of the weights in host memory), in eval mode.

    Args:
        pretrained_model_name_or_path (`str` or `os.PathLike`): the converted checkpoint's directory or repository.
        device (`str` or `torch.device`, *optional*, defaults to `"auto"`): the GPU when torch sees one, else the CPU.
        dtype (`str` or `torch.dtype`, *optional*, defaults to `"auto"`): see [`resolve_dtype`].
        attn_implementation (`str`, *optional*): the language model's attention (`"sdpa"`, `"flash_attention_2"`, ...).
    """
    device = resolve_device(device)
    model_kwargs = {"dtype": resolve_dtype(dtype, device), "device_map": str(device)}
    if attn_implementation is not None:
        model_kwargs["attn_implementation"] = attn_implementation
    return ViLaMPForConditionalGeneration.from_pretrained(pretrained_model_name_or_path, **model_kwargs).eval()


@dataclass(frozen=True)
class VideoQuestion:
    """
    One question about one video.

    Args:
        video (`str`, `os.PathLike` or frames): the video, as the processor takes it.
        prompt (`str`): the user's text, put into the chat template after the video: the question with its options and
            instructions, as a benchmark asks it.
        query (`str`): the text the keyframe selector ranks the frames against; the original evaluation gives it the
            question alone, without the answer options.
    """

    video: Any
    prompt: str
    query: str


def process_questions(
    processor: ViLaMPProcessor, questions: list[VideoQuestion], device: str | torch.device
) -> BatchFeature:
    """The model inputs of a batch of questions: one processor call, its keyframe selector run on `device`."""
    return processor(
        text=[question.prompt for question in questions],
        videos=[question.video for question in questions],
        query=[question.query for question in questions],
        device=device,
        return_tensors="pt",
    )


class ViLaMPRunner:
    """
    A ViLaMP model and its processor, answering questions about videos greedily.

    Args:
        model ([`ViLaMPForConditionalGeneration`]): the model on its device, in eval mode.
        processor ([`ViLaMPProcessor`]): its processor; the only road from a video to the model's inputs.
        cache_implementation (`str`, *optional*, defaults to `"dynamic"`): `generate`'s key/value cache; `"static"`
            compiles the decoding step on a GPU.
    """

    def __init__(
        self,
        model: ViLaMPForConditionalGeneration,
        processor: ViLaMPProcessor,
        *,
        cache_implementation: str = "dynamic",
    ):
        if cache_implementation not in CACHE_IMPLEMENTATIONS:
            raise ValueError(
                f"`cache_implementation` must be one of {list(CACHE_IMPLEMENTATIONS)}, got {cache_implementation!r}."
            )
        self.model = model
        self.processor = processor
        self.cache_implementation = cache_implementation

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        attn_implementation: str | None = None,
        cache_implementation: str = "dynamic",
        **video_settings,
    ) -> "ViLaMPRunner":
        """
        Loads a converted ViLaMP: the model on `device` in `dtype` ([`load_model`]) and the processor with its keyframe
        selector on `device` ([`load_processor`], `video_settings` overriding the saved ones when not None).
        """
        device = resolve_device(device)
        processor = load_processor(pretrained_model_name_or_path, device=device, **video_settings)
        model = load_model(
            pretrained_model_name_or_path, device=device, dtype=dtype, attn_implementation=attn_implementation
        )
        return cls(model, processor, cache_implementation=cache_implementation)

    @property
    def device(self) -> torch.device:
        """Where the model runs, and the keyframe selector when the runner calls the processor."""
        return self.model.device

    def prepare(self, batches: Iterable[list[VideoQuestion]]) -> Iterator[BatchFeature]:
        """The model inputs of each batch of questions, in order, one processor call per batch as it is asked for."""
        return (process_questions(self.processor, batch, self.device) for batch in batches)

    def model_inputs(self, inputs: BatchFeature) -> dict[str, torch.Tensor]:
        """The processor's `inputs` with `DEVICE_INPUT_NAMES` on the model's device and the others as they are."""
        device = self.device
        return {name: tensor.to(device) if name in DEVICE_INPUT_NAMES else tensor for name, tensor in inputs.items()}

    def generate(self, inputs: BatchFeature, max_new_tokens: int, streamer: BaseStreamer | None = None) -> list[str]:
        """
        Greedy answers to a batch of processed questions.

        Args:
            inputs (`BatchFeature`): what the processor (or [`ViLaMPRunner.prepare`]) returned: `input_ids` and
                `attention_mask` of shape `(batch_size, sequence_length)`, left-padded; `pixel_values_videos` of shape
                `(total_frames, 3, frame_size, frame_size)`, `video_frame_counts` of shape `(num_videos,)`,
                `keyframe_mask` of shape `(total_frames,)` and `query_embeds` of shape `(num_videos, embed_dim)`.
            max_new_tokens (`int`): at most this many tokens per answer.
            streamer (`BaseStreamer`, *optional*): given the tokens as `generate` makes them (a batch of one only).

        Returns:
            `list[str]`: one answer per prompt, special tokens left out.
        """
        model_inputs = self.model_inputs(inputs)
        with torch.inference_mode():
            output_ids = self.model.generate(
                **model_inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                cache_implementation=self.cache_implementation,
                streamer=streamer,
            )
        prompt_length = inputs["input_ids"].shape[1]
        return self.processor.batch_decode(output_ids[:, prompt_length:], skip_special_tokens=True)

    def answer(self, questions: list[VideoQuestion], max_new_tokens: int, batch_size: int = 1) -> list[str]:
        """Greedy answers to `questions`, in order, `batch_size` questions per `generate` call."""
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an integer of at least 1, got {batch_size!r}.")
        batches = [questions[start : start + batch_size] for start in range(0, len(questions), batch_size)]
        return [answer for inputs in self.prepare(batches) for answer in self.generate(inputs, max_new_tokens)]


__all__ = [
    "CACHE_IMPLEMENTATIONS",
    "DEVICE_INPUT_NAMES",
    "DTYPES",
    "VideoQuestion",
    "ViLaMPRunner",
    "load_model",
    "load_processor",
    "process_questions",
    "resolve_dtype",
]
