"""
From a loaded ViLaMP model and its processor to answers: the dtype rule, which inputs go to the model's device,
batches of questions through the processor, greedy generation and the answer text, and videos loaded once for any
number of questions ([`ViLaMPRunner.load_video`]). The command line, the evaluation, the examples and the benches
answer through it; what only one of them needs (progress bars and a streamer, worker processes that decode ahead of
the model, continuation scores) stays with it.
"""

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.generation.streamers import BaseStreamer

from .modeling_vilamp import ViLaMPForConditionalGeneration
from .processing import LoadedVideo, VideoCache, ViLaMPProcessor, resolve_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CACHE_IMPLEMENTATIONS = ("dynamic", "static")
# Where `ViLaMPRunner.load_video` keeps a video's projected patches (its SigLIP features after the projector), which every
# question about it reuses: "auto" picks the first of the model's device and the host that holds them in half its free
# memory, else none; "none" keeps none, and each question encodes the frames again.
KEEP_FEATURES = ("auto", "device", "cpu", "none")
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
    quantization_config=None,
) -> ViLaMPForConditionalGeneration:
    """
    Loads a converted ViLaMP model straight onto `device` (no copy of the weights in host memory), in eval mode.

    Args:
        pretrained_model_name_or_path (`str` or `os.PathLike`): the converted checkpoint's directory or repository.
        device (`str` or `torch.device`, *optional*, defaults to `"auto"`): the GPU when torch sees one, else the CPU.
        dtype (`str` or `torch.dtype`, *optional*, defaults to `"auto"`): see [`resolve_dtype`]; with a
            `quantization_config`, the dtype of what stays unquantized (the vision path, `lm_head`, the norms).
        attn_implementation (`str`, *optional*): the language model's attention (`"sdpa"`, `"flash_attention_2"`, ...).
        quantization_config (`transformers.utils.quantization_config.QuantizationConfigMixin`, *optional*): quantizes
            the language model as it loads, e.g. `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16)` or `TorchAoConfig(Int8WeightOnlyConfig())`; the vision tower, the
            projector and the DFM stay in `dtype` (see [`ViLaMPPreTrainedModel.from_pretrained`]).
    """
    device = resolve_device(device)
    model_kwargs = {"dtype": resolve_dtype(dtype, device), "device_map": str(device)}
    if attn_implementation is not None:
        model_kwargs["attn_implementation"] = attn_implementation
    if quantization_config is not None:
        model_kwargs["quantization_config"] = quantization_config
    return ViLaMPForConditionalGeneration.from_pretrained(pretrained_model_name_or_path, **model_kwargs).eval()


@dataclass(eq=False)
class EncodedVideo:
    """
    A video loaded once for any number of questions ([`ViLaMPRunner.load_video`]): what does not depend on the
    question. Each question then costs its keyframe selection, the DFM, the prefill and the answer. Dropping the last
    reference frees it all.

    Args:
        video ([`LoadedVideo`]): the sampled frames for SigLIP and the keyframe selector's CLIP embeddings.
        frame_features (`torch.Tensor` of shape `(num_frames, num_patches, hidden_size)`, *optional*): every frame's
            projected patches, on the model's device or the host; `None` when they were not kept.
        seconds (`dict[str, float]`): the one-time costs: `decoding` (decoding, sampling and resizing, or reading the
            frames from the `VideoCache`), `keyframe_embedding` (CLIP on the frames) and `vision_encoding` (SigLIP and
            the projector; 0 when the features were not kept).
    """

    video: LoadedVideo
    frame_features: torch.Tensor | None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return len(self.video.siglip_frames)


def frame_feature_bytes(model: ViLaMPForConditionalGeneration) -> int:
    """The bytes of one frame's projected patches: `num_patches * hidden_size` values in the model's dtype."""
    vision_config = model.config.vision_config
    num_patches = (vision_config.image_size // vision_config.patch_size) ** 2
    return num_patches * model.config.text_config.hidden_size * model.dtype.itemsize


def host_available_bytes() -> int:
    """The host memory available to new allocations (`MemAvailable`), or 0 where the system does not say."""
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 0


def feature_storage(keep_features: str, feature_bytes: int, device: torch.device) -> torch.device | None:
    """Where a video's projected patches of `feature_bytes` are kept for `keep_features` (see `KEEP_FEATURES`), or
    None where they are not kept."""
    if keep_features == "device":
        return device
    if keep_features == "cpu":
        return torch.device("cpu")
    if device.type == "cuda" and feature_bytes <= torch.cuda.mem_get_info(device)[0] // 2:
        return device
    if feature_bytes <= host_available_bytes() // 2:
        return torch.device("cpu")
    return None


def check_keep_features(keep_features: str):
    """Checks a `keep_features` value against `KEEP_FEATURES`."""
    if keep_features not in KEEP_FEATURES:
        raise ValueError(f"`keep_features` must be one of {list(KEEP_FEATURES)}, got {keep_features!r}.")


def synchronized_seconds(device: torch.device, start: float) -> float:
    """Seconds since `start` (`time.perf_counter`), once the work queued on `device` is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


@dataclass(frozen=True)
class VideoQuestion:
    """
    One question about one video.

    Args:
        video (`str`, `os.PathLike`, frames or [`EncodedVideo`]): the video, as the processor takes it, or loaded once
            by [`ViLaMPRunner.load_video`].
        prompt (`str`): the user's text, put into the chat template after the video: the question with its options and
            instructions, as a benchmark asks it.
        query (`str`): the text the keyframe selector ranks the frames against; the original evaluation gives it the
            question alone, without the answer options.
    """

    video: Any
    prompt: str
    query: str


def process_questions(
    processor: ViLaMPProcessor,
    questions: list[VideoQuestion],
    device: str | torch.device,
    video_cache: VideoCache | None = None,
) -> BatchFeature:
    """The model inputs of a batch of questions: one processor call, its keyframe selector run on `device`; video
    files are read through `video_cache` when one is given."""
    videos = [
        question.video.video if isinstance(question.video, EncodedVideo) else question.video for question in questions
    ]
    if video_cache is not None:
        videos = [
            processor.load_video(video, cache=video_cache) if isinstance(video, (str, os.PathLike)) else video
            for video in videos
        ]
    return processor(
        text=[question.prompt for question in questions],
        videos=videos,
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
        video_cache ([`VideoCache`], *optional*): video files are read through it, so a file loaded once, by this
            process or another, is not decoded again.
    """

    def __init__(
        self,
        model: ViLaMPForConditionalGeneration,
        processor: ViLaMPProcessor,
        *,
        cache_implementation: str = "dynamic",
        video_cache: VideoCache | None = None,
    ):
        if cache_implementation not in CACHE_IMPLEMENTATIONS:
            raise ValueError(
                f"`cache_implementation` must be one of {list(CACHE_IMPLEMENTATIONS)}, got {cache_implementation!r}."
            )
        if video_cache is not None and not isinstance(video_cache, VideoCache):
            raise TypeError(f"`video_cache` must be a `VideoCache` or None, got {type(video_cache).__name__}.")
        self.model = model
        self.processor = processor
        self.cache_implementation = cache_implementation
        self.video_cache = video_cache

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        attn_implementation: str | None = None,
        cache_implementation: str = "dynamic",
        video_cache: VideoCache | None = None,
        **video_settings,
    ) -> "ViLaMPRunner":
        """
        Loads a converted ViLaMP: the model on `device` in `dtype` ([`load_model`]) and the processor with its keyframe
        selector on `device` ([`load_processor`], `video_settings` overriding the saved ones when not None); the
        other arguments are the runner's.
        """
        device = resolve_device(device)
        processor = load_processor(pretrained_model_name_or_path, device=device, **video_settings)
        model = load_model(
            pretrained_model_name_or_path, device=device, dtype=dtype, attn_implementation=attn_implementation
        )
        return cls(model, processor, cache_implementation=cache_implementation, video_cache=video_cache)

    @property
    def device(self) -> torch.device:
        """Where the model runs, and the keyframe selector when the runner calls the processor."""
        return self.model.device

    def load_video(
        self,
        video,
        *,
        keep_features: str = "auto",
        progress: Any | None = None,
        embedding_progress: Any | None = None,
        **video_settings,
    ) -> EncodedVideo:
        """
        Loads a video once for any number of questions: decodes and samples it, embeds its frames with the keyframe
        selector's CLIP and, as `keep_features` says, encodes every frame with SigLIP and the projector. Questions
        about the returned video (`ask`, or [`VideoQuestion`]s holding it) then run only their keyframe selection, the
        DFM, the prefill and the answer, and give the same tokens as asking afresh.

        The projected patches take `num_patches * hidden_size` values per frame in the model's dtype: 729 * 3584 * 2
        bytes = 5.0 MiB per frame for the released 7B in bfloat16, so 3.0 GiB for 600 frames.

        Args:
            video: a file path or frames, as the processor takes them.
            keep_features (`str`, *optional*, defaults to `"auto"`): where the projected patches are kept: `"device"`
                (the model's), `"cpu"` (host memory; each question moves them chunk by chunk), `"none"` (each question
                encodes the frames again), or `"auto"`: the model's device if they take at most half its free memory,
                else the host under the same rule, else none.
            progress (`Callable[[int], None]`, *optional*): called with 1 as each frame is decoded and resized.
            embedding_progress (`Callable[[int], None]`, *optional*): called with the size of each batch of frames the
                keyframe selector's CLIP embedded.
            video_settings: frame settings for this video (`fps`, `max_frames`, ...), as the processor takes them.

        Returns:
            [`EncodedVideo`].
        """
        check_keep_features(keep_features)
        start = time.perf_counter()
        loaded = self.processor.load_video(video, cache=self.video_cache, progress=progress, **video_settings)
        decoding_seconds = time.perf_counter() - start
        encoded = self.encode_video(loaded, keep_features=keep_features, embedding_progress=embedding_progress)
        encoded.seconds = {"decoding": decoding_seconds, **encoded.seconds}
        return encoded

    def encode_video(
        self, loaded: LoadedVideo, *, keep_features: str = "auto", embedding_progress: Any | None = None
    ) -> EncodedVideo:
        """
        The second half of `load_video`, for a video the processor's `load_video` decoded elsewhere (in a worker
        process, say): its frames' CLIP embeddings on the model's device (unless it has them already) and its projected
        patches as `keep_features` says. The returned `seconds` hold `keyframe_embedding` and `vision_encoding`.
        """
        check_keep_features(keep_features)
        device = self.device
        start = time.perf_counter()
        loaded = self.processor.embed_frames(loaded, progress=embedding_progress, device=device)
        seconds = {"keyframe_embedding": synchronized_seconds(device, start)}
        start = time.perf_counter()
        frame_features = self.encode_frames(loaded.siglip_frames, keep_features)
        seconds["vision_encoding"] = synchronized_seconds(device, start)
        return EncodedVideo(video=loaded, frame_features=frame_features, seconds=seconds)

    def encode_frames(self, siglip_frames: torch.Tensor, keep_features: str) -> torch.Tensor | None:
        """The projected patches of a video's frames, kept where `keep_features` says (see `load_video`), or None."""
        if keep_features == "none":
            return None
        feature_bytes = len(siglip_frames) * frame_feature_bytes(self.model)
        storage = feature_storage(keep_features, feature_bytes, self.device)
        if storage is None:
            return None
        with torch.inference_mode():
            return self.model.get_video_frame_features(siglip_frames, storage_device=storage)

    def ask(self, video, questions: str | list[str], max_new_tokens: int = 256, batch_size: int = 1) -> list[str]:
        """
        Greedy answers to `questions` about one video.

        Args:
            video ([`EncodedVideo`], `str`, `os.PathLike` or frames): the video, loaded once by `load_video`; a path or
                frames is loaded here, once for all the questions.
            questions (`str` or `list[str]`): the questions, each put into the chat template after the video, and each
                the text its keyframes are ranked against.
            max_new_tokens (`int`, *optional*, defaults to 256): at most this many tokens per answer.
            batch_size (`int`, *optional*, defaults to 1): questions per `generate` call.

        Returns:
            `list[str]`: one answer per question, in order.
        """
        questions = [questions] if isinstance(questions, str) else list(questions)
        if not isinstance(video, EncodedVideo):
            video = self.load_video(video)
        return self.answer(
            [VideoQuestion(video, question, question) for question in questions], max_new_tokens, batch_size
        )

    def prepare_chat(self, video: EncodedVideo, conversation: list[dict], question: str) -> BatchFeature:
        """
        The model inputs of the next answer in a chat about a loaded video: `conversation` through the processor's chat
        template with the generation prompt added, the keyframes ranked against `question` alone, and the video's
        projected patches as `video_frame_features` when it kept them.

        Args:
            video ([`EncodedVideo`]): the video, loaded once by `load_video`.
            conversation (`list[dict]`): the messages so far, ending with the user's `question`; the first user turn
                holds the video as `{"type": "video", "video": video.video}` (the chat template has it there and
                nowhere else), later user turns are text and earlier answers are assistant turns.
            question (`str`): the text the keyframes are ranked against, usually the last user turn's.

        Returns:
            [`BatchFeature`] as [`ViLaMPRunner.prepare`] gives it, for a batch of one.
        """
        videos = [
            block.get("video")
            for message in conversation
            if isinstance(message.get("content"), (list, tuple))
            for block in message["content"]
            if block.get("type") == "video"
        ]
        if len(videos) != 1 or videos[0] is not video.video:
            found = "one holding another video" if len(videos) == 1 else f"{len(videos)} video blocks"
            raise ValueError(
                "`conversation` must hold the loaded video in one video block, `{'type': 'video', 'video': "
                f"video.video}}` in its first user turn; found {found}."
            )
        inputs = self.processor.apply_chat_template(
            conversation,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            query=question,
            device=self.device,
        )
        if video.frame_features is not None:
            inputs["video_frame_features"] = [video.frame_features]
        return inputs

    def reply(
        self,
        video: EncodedVideo,
        conversation: list[dict],
        question: str,
        max_new_tokens: int = 256,
        streamer: BaseStreamer | None = None,
    ) -> str:
        """
        The greedy answer to the last user turn of a chat about a loaded video (see [`ViLaMPRunner.prepare_chat`] for
        the arguments); its first turn gives the same answer as `ask(video, question)`.

        Returns:
            `str`: the answer, special tokens left out.
        """
        (answer,) = self.generate(self.prepare_chat(video, conversation, question), max_new_tokens, streamer)
        return answer

    def prepare(self, batches: Iterable[list[VideoQuestion]]) -> Iterator[BatchFeature]:
        """The model inputs of each batch of questions, in order, one processor call per batch as it is asked for;
        the projected patches of each video loaded with them ride along as `video_frame_features`."""
        for batch in batches:
            inputs = process_questions(self.processor, batch, self.device, self.video_cache)
            frame_features = [getattr(question.video, "frame_features", None) for question in batch]
            if all(features is not None for features in frame_features):
                inputs["video_frame_features"] = frame_features
            yield inputs

    def model_inputs(self, inputs: BatchFeature) -> dict[str, Any]:
        """The processor's `inputs` with `DEVICE_INPUT_NAMES` on the model's device and the others as they are; with
        `video_frame_features`, the frames are left out, since the model reads the features instead."""
        device = self.device
        model_inputs = {
            name: tensor.to(device) if name in DEVICE_INPUT_NAMES else tensor for name, tensor in inputs.items()
        }
        if "video_frame_features" in model_inputs:
            del model_inputs["pixel_values_videos"]
        return model_inputs

    def generate(self, inputs: BatchFeature, max_new_tokens: int, streamer: BaseStreamer | None = None) -> list[str]:
        """
        Greedy answers to a batch of processed questions.

        Args:
            inputs (`BatchFeature`): what the processor (or [`ViLaMPRunner.prepare`]) returned: `input_ids` and
                `attention_mask` of shape `(batch_size, sequence_length)`, left-padded; `pixel_values_videos` of shape
                `(total_frames, 3, frame_size, frame_size)`, `video_frame_counts` of shape `(num_videos,)`,
                `keyframe_mask` of shape `(total_frames,)` and `query_embeds` of shape `(num_videos, embed_dim)`; with
                `video_frame_features` (from `prepare`), the model reads those instead of the frames.
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
    "KEEP_FEATURES",
    "EncodedVideo",
    "VideoQuestion",
    "ViLaMPRunner",
    "load_model",
    "load_processor",
    "process_questions",
    "resolve_dtype",
]
