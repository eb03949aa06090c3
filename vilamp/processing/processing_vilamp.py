"""Processor class for ViLaMP: video decoding, SigLIP frames, differential keyframe selection and the prompt."""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import MultiModalData, ProcessingKwargs, ProcessorMixin, TextKwargs, Unpack
from transformers.utils.chat_template_utils import _get_template_variables, render_jinja_template
from transformers.video_utils import VideoMetadata

from .keyframe_selection import (
    KeyframeSelector,
    clip_resize_and_crop,
    fill_keyframe_slots,
    frame_relevance_scores,
    greedy_keyframe_selection,
)
from .video_processing_vilamp import ViLaMPVideoProcessor, ViLaMPVideoProcessorInitKwargs, check_video_settings

CHAT_TEMPLATE_PATH = Path(__file__).with_name("chat_template.jinja")

# Label of a position without loss (`ignore_index` of the loss).
IGNORE_INDEX = -100

# `cached_file` arguments of `from_pretrained` that the keyframe selector files are fetched with as well.
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")

# Settings that processors saved before the video processor became an attribute kept flat in processor_config.json;
# `ViLaMPProcessor(...)` still takes them and hands them to its video processor (`frame_size` becomes its `size`).
LEGACY_VIDEO_SETTINGS = (
    "num_keyframes",
    "keyframe_relevance_threshold",
    "keyframe_similarity_threshold",
    "fps",
    "max_frames",
    "frame_size",
)


class ViLaMPProcessorKwargs(ProcessingKwargs, total=False):
    videos_kwargs: ViLaMPVideoProcessorInitKwargs
    _defaults = {
        # generation continues every row at its end, so rows are padded on the left (see `__call__`)
        "text_kwargs": {"padding": True},
        "common_kwargs": {"return_tensors": "pt"},
    }


# Called with the number of frames a stage has just finished (1 per resized frame, one CLIP batch at a time), so a
# progress bar's `update` (`tqdm.update`) can be passed as it is; decoding calls it from its worker threads.
ProgressCallback = Callable[[int], None]


@dataclass
class LoadedVideo:
    """
    One video as `ViLaMPProcessor.load_video` returns it: its sampled frames resized for SigLIP and for the keyframe
    selector's CLIP.

    Args:
        siglip_frames (`torch.ByteTensor` of shape `(num_frames, 3, frame_size, frame_size)`): the frames for the model
            (its `pixel_values_videos`); uint8 unless a rescale or normalisation was asked.
        clip_frames (`torch.ByteTensor` of shape `(num_frames, 3, image_size, image_size)`): the frames for the keyframe
            selector, resized and centre-cropped as `CLIPImageProcessor` does.
        timestamps_seconds (`list[float]`): the presentation time of each sampled frame.
        metadata (`VideoMetadata`): `total_num_frames`, `fps`, `frames_indices` (the frame numbers kept) and, for a
            file, `width`, `height`, `duration` and `video_backend`.
    """

    siglip_frames: torch.Tensor
    clip_frames: torch.Tensor
    timestamps_seconds: list[float]
    metadata: VideoMetadata


@dataclass
class KeyframeSelection:
    """
    The differential keyframe selection of one video, as `ViLaMPProcessor.select_keyframes` returns it (on the CPU).

    Args:
        keyframe_mask (`torch.BoolTensor` of shape `(num_frames,)`): the keyframes, exactly
            `min(num_keyframes, num_frames)`.
        ranked_keyframe_mask (`torch.BoolTensor` of shape `(num_frames,)`): the keyframes the relevance ranking chose;
            the others in `keyframe_mask` fill the remaining slots evenly.
        relevance_scores (`torch.FloatTensor` of shape `(num_frames,)`): the cosine similarity of every frame's CLIP
            embedding to the question's (`f2t_scores` in the original).
        query_embeds (`torch.FloatTensor` of shape `(embed_dim,)`): the unnormalised CLIP text embedding of the
            question (the DFM query).
    """

    keyframe_mask: torch.Tensor
    ranked_keyframe_mask: torch.Tensor
    relevance_scores: torch.Tensor
    query_embeds: torch.Tensor


def resolve_device(device: str | torch.device) -> torch.device:
    """Where the keyframe selector runs: `"auto"` is the CUDA GPU when torch sees one, else the CPU; any other value is
    taken as a torch device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"`device` {device!r} is not a torch device; pass 'auto', 'cpu', 'cuda' or 'cuda:N'."
        ) from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`device` {device!r} asks for a GPU, but torch sees none; pass 'auto' or 'cpu'.")
    return resolved


def num_video_tokens(num_frames: int, num_keyframes: int, keyframe_pooled_size: int) -> int:
    """Placeholder tokens of one video: a pooled grid per keyframe, one token per other frame, one newline."""
    # +1 for the image_newline token that closes the video
    return keyframe_pooled_size**2 * num_keyframes + (num_frames - num_keyframes) + 1


def is_single_video(video) -> bool:
    """Whether `video` is one video: a path, a 4-dimensional array or tensor of frames, or a list of images."""
    if isinstance(video, (str, os.PathLike)):
        return True
    if isinstance(video, (np.ndarray, torch.Tensor)):
        return video.ndim == 4
    return isinstance(video, (list, tuple)) and len(video) > 0 and all(isinstance(frame, Image.Image) for frame in video)


def flatten_videos(videos) -> list:
    """Turns one video, a list of videos or a list of per-prompt lists of videos into a flat list of videos."""
    if videos is None:
        return []
    if is_single_video(videos):
        return [videos]
    if isinstance(videos, (list, tuple)) or (isinstance(videos, (np.ndarray, torch.Tensor)) and videos.ndim == 5):
        return [video for item in videos for video in flatten_videos(item)]
    raise TypeError(
        "`videos` must be a video file path, a uint8 array or tensor of shape (num_frames, height, width, 3) or "
        f"(num_frames, 3, height, width), a list of PIL images, or a list of these; got {type(videos).__name__}."
    )


class ViLaMPProcessor(ProcessorMixin):
    r"""
    Constructs a ViLaMP processor: its video processor samples each video at `fps` frames per second (at most
    `max_frames`) and resizes the frames for SigLIP (`pixel_values_videos`, uint8); the processor runs the differential
    keyframe selection (DKS) against the question with the open_clip keyframe selector, and expands each `<video>`
    placeholder of the prompt to the number of tokens the model produces for that video.

    `__call__` runs three public stages, the one path from a video to model inputs; call them one by one for progress
    callbacks or for what each stage decided: `load_video` (decoding and resizing, a [`LoadedVideo`]),
    `select_keyframes` (a [`KeyframeSelection`]: keyframes, the ones the ranking chose, every frame's relevance and the
    query embedding) and `build_inputs` (placeholder expansion and tokenization, the [`BatchFeature`]).

    The sampling and keyframe settings (`fps`, `max_frames`, `num_keyframes`, `keyframe_relevance_threshold`,
    `keyframe_similarity_threshold`) belong to the video processor, are saved with it, and can be overridden per call,
    flat or in `videos_kwargs`.

    Args:
        tokenizer (`PreTrainedTokenizerBase`):
            The Qwen2 tokenizer; it must know the `video_token` as one token.
        video_processor ([`ViLaMPVideoProcessor`], *optional*):
            Samples and resizes the frames and holds the keyframe settings; defaults to one built from `video_settings`.
        chat_template (`str`, *optional*):
            The Jinja chat template; defaults to the `qwen_1_5` template of the original (`chat_template.jinja`).
        video_token (`str`, *optional*, defaults to `"<video>"`):
            The video placeholder; its id must equal the model config's `video_token_index`.
        keyframe_pooled_size (`int`, *optional*, defaults to 14):
            Side of the pooled grid of a keyframe; a keyframe takes `keyframe_pooled_size**2` tokens.
        keyframe_selector (`KeyframeSelector`, *optional*):
            The open_clip model of the keyframe selection; `from_pretrained` loads it from
            `keyframe_selector.safetensors` and `keyframe_selector_config.json`.
        video_settings (*optional*):
            `num_keyframes`, `keyframe_relevance_threshold`, `keyframe_similarity_threshold`, `fps`, `max_frames` and
            `frame_size` (the side of the SigLIP frames) for the video processor built when `video_processor` is not
            given; with a `video_processor` they override its settings.
    """

    valid_processor_kwargs = ViLaMPProcessorKwargs

    def __init__(
        self,
        tokenizer=None,
        video_processor=None,
        chat_template=None,
        video_token="<video>",
        keyframe_pooled_size=14,
        keyframe_selector=None,
        **video_settings,
    ):
        if tokenizer is None:
            raise ValueError("`tokenizer` is required: pass the Qwen2 tokenizer that holds the `<video>` token.")
        self.video_token = tokenizer.video_token if hasattr(tokenizer, "video_token") else video_token
        self.video_token_id = (
            tokenizer.video_token_id
            if getattr(tokenizer, "video_token_id", None)
            else tokenizer.convert_tokens_to_ids(self.video_token)
        )
        if self.video_token_id is None or self.video_token_id == tokenizer.unk_token_id:
            raise ValueError(
                f"The tokenizer has no `{self.video_token}` token; add it with "
                f"`tokenizer.add_special_tokens({{'additional_special_tokens': ['{self.video_token}']}})`."
            )
        if not isinstance(keyframe_pooled_size, int) or keyframe_pooled_size < 1:
            raise ValueError(f"`keyframe_pooled_size` must be an integer of at least 1, got {keyframe_pooled_size!r}.")
        self.keyframe_pooled_size = keyframe_pooled_size
        video_processor = self._video_processor_with(video_processor, video_settings)
        self.keyframe_selector = keyframe_selector
        if chat_template is None:
            chat_template = CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")
        super().__init__(tokenizer, video_processor, chat_template=chat_template)

    @staticmethod
    def _video_processor_with(video_processor, video_settings: dict) -> ViLaMPVideoProcessor:
        """The video processor with the flat `video_settings` of `__init__` applied (a new one when none is given)."""
        unknown = set(video_settings) - set(LEGACY_VIDEO_SETTINGS)
        if unknown:
            raise TypeError(
                f"ViLaMPProcessor got unexpected arguments {sorted(unknown)}; the settings it takes besides its "
                f"components are {sorted(LEGACY_VIDEO_SETTINGS)}."
            )
        settings = dict(video_settings)
        if settings.get("frame_size") is not None:
            frame_size = settings.pop("frame_size")
            if not isinstance(frame_size, int) or frame_size < 1:
                raise ValueError(f"`frame_size` must be an integer of at least 1, got {frame_size!r}.")
            settings["size"] = {"height": frame_size, "width": frame_size}
        settings = {name: value for name, value in settings.items() if value is not None}
        if video_processor is None:
            return ViLaMPVideoProcessor(**settings)
        if settings:
            return ViLaMPVideoProcessor(**{**video_processor.to_dict(), **settings})
        return video_processor

    # The settings live in the video processor; these read (and, for scripts that set them, write) it.
    @property
    def num_keyframes(self) -> int:
        return self.video_processor.num_keyframes

    @property
    def keyframe_relevance_threshold(self) -> float:
        return self.video_processor.keyframe_relevance_threshold

    @property
    def keyframe_similarity_threshold(self) -> float:
        return self.video_processor.keyframe_similarity_threshold

    @property
    def fps(self) -> float:
        return self.video_processor.fps

    @property
    def max_frames(self) -> int:
        return self.video_processor.max_frames

    @max_frames.setter
    def max_frames(self, value: int):
        check_video_settings({"max_frames": value})
        self.video_processor.max_frames = value

    @property
    def frame_size(self) -> int:
        return self.video_processor.size["height"]

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values_videos", "video_frame_counts", "keyframe_mask", "query_embeds"]

    def __call__(self, text=None, videos=None, query=None, **kwargs: Unpack[ViLaMPProcessorKwargs]) -> BatchFeature:
        """
        Prepares prompts and their videos for the model.

        Args:
            text (`str` or `list[str]`):
                The prompts, chat template already applied, with one `<video>` placeholder per video. Plain questions
                without placeholders, one per video, are put into the chat template first (`question_prompt`).
            videos (*optional*):
                One video or a list of videos (or of per-prompt lists), in placeholder order. A video is a file path,
                a uint8 array or tensor of shape `(num_frames, height, width, 3)` or `(num_frames, 3, height, width)`,
                or a list of PIL images; given frames are taken as sampled at `fps` (only `max_frames` applies to them).
            query (`str` or `list[str]`, *optional*):
                The question each video's frames are ranked against, one for all videos or one per video. Defaults to
                the video's prompt without the placeholder; `apply_chat_template` passes the user's text.
            kwargs ([`ViLaMPProcessorKwargs`]):
                Flat or in `text_kwargs` / `videos_kwargs`. Video kwargs: `fps`, `max_frames`, `num_keyframes`,
                `keyframe_relevance_threshold`, `keyframe_similarity_threshold`, `do_sample_frames`, `size`,
                `do_rescale`, ... (they default to the video processor's settings, which they leave unchanged) and
                `device`, where the keyframe selector runs (it is moved there; outputs stay on the CPU). Tokenizer
                kwargs: `padding` (defaults to `True`), `padding_side` (defaults to `"left"`, for batched
                generation), `truncation`, `max_length`, ... `return_tensors` must be `"pt"`. Any other key is an error.

        Returns:
            [`BatchFeature`] with:
            - **input_ids**, **attention_mask** (`torch.LongTensor` of shape `(batch_size, sequence_length)`): each
              `<video>` repeated `num_video_tokens(num_frames, min(num_keyframes, num_frames), keyframe_pooled_size)`
              times.
            - **pixel_values_videos** (`torch.ByteTensor` of shape `(total_frames, 3, frame_size, frame_size)`): the
              frames of all videos, concatenated in order; the model normalises them as `(x / 255 - 0.5) / 0.5`.
            - **video_frame_counts** (`torch.LongTensor` of shape `(num_videos,)`).
            - **keyframe_mask** (`torch.BoolTensor` of shape `(total_frames,)`): `min(num_keyframes, num_frames)`
              keyframes per video.
            - **query_embeds** (`torch.FloatTensor` of shape `(num_videos, embed_dim)`): the unnormalised CLIP text
              embedding of each video's question (the DFM query).
            The video entries are left out when no prompt has a video.
        """
        output_kwargs = self._merge_call_kwargs(kwargs)
        text_kwargs, videos_kwargs = output_kwargs["text_kwargs"], output_kwargs["videos_kwargs"]
        texts = self._check_text(text)
        videos = flatten_videos(videos)
        if videos and self._are_bare_questions(texts, videos):
            query = texts if query is None else query
            texts = [self.question_prompt(question) for question in texts]
        self._check_video_placeholders(texts, videos)
        queries = self._video_queries(texts, len(videos), query)
        if videos:
            self._require_keyframe_selector()
        video_frames, keyframe_selections = [], []
        for video_index, (video, video_query) in enumerate(zip(videos, queries)):
            try:
                loaded_video = self.load_video(video, **videos_kwargs)
            except ValueError as error:
                raise ValueError(f"`videos[{video_index}]`: {error}") from error
            # only the SigLIP frames are kept: the CLIP frames of a video are dropped once its keyframes are chosen
            keyframe_selections.append(self.select_keyframes(loaded_video.clip_frames, video_query, **videos_kwargs))
            video_frames.append(loaded_video.siglip_frames)
        return self.build_inputs(texts, video_frames, keyframe_selections, **text_kwargs)

    def _merge_call_kwargs(self, kwargs: dict) -> dict[str, dict]:
        """
        Splits call kwargs into tokenizer and video kwargs with `_merge_kwargs`, after checking that every key is one
        this processor uses; checks the video settings like the init ones and defaults `padding_side` to left.
        """
        accepted, unknown = self._accepted_call_kwargs(), []
        for name, value in kwargs.items():
            if name in ("text_kwargs", "videos_kwargs", "common_kwargs") and isinstance(value, dict):
                unknown += [key for key in value if key not in accepted]
            elif name not in accepted:
                unknown.append(name)
        if unknown:
            raise TypeError(
                f"ViLaMPProcessor got unexpected keyword argument(s) {unknown}. Besides `text`, `videos` and `query` it "
                "takes these keyword arguments, flat or in `text_kwargs`, `videos_kwargs` or `common_kwargs`: "
                f"{sorted(accepted - {'text_kwargs', 'videos_kwargs', 'common_kwargs'})}."
            )
        output_kwargs = self._merge_kwargs(
            ViLaMPProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs
        )
        check_video_settings(output_kwargs["videos_kwargs"])
        text_kwargs = output_kwargs["text_kwargs"]
        user_text_kwargs = {**kwargs, **kwargs.get("text_kwargs", {}), **kwargs.get("common_kwargs", {})}
        if user_text_kwargs.get("padding_side") is None:
            text_kwargs["padding_side"] = "left"
        return_tensors = text_kwargs.pop("return_tensors", None)
        output_kwargs["videos_kwargs"].pop("return_tensors", None)
        if return_tensors != "pt":
            raise ValueError(f"`return_tensors` must be 'pt' (the video inputs are torch tensors), got {return_tensors!r}.")
        return output_kwargs

    def _accepted_call_kwargs(self) -> set[str]:
        """The keyword arguments `__call__` takes: the tokenizer's and the video processor's, and the modality dicts."""
        return (
            set(TextKwargs.__annotations__)
            | set(ViLaMPProcessorKwargs.__annotations__["text_kwargs"].__annotations__)
            | set(self.video_processor.valid_kwargs.__annotations__)
            | {"text_kwargs", "videos_kwargs", "common_kwargs"}
        )

    def _check_text(self, text) -> list[str]:
        """Returns the prompts as a list, checking their type."""
        if text is None:
            raise ValueError("`text` is required: pass the prompt(s), with one `<video>` placeholder per video.")
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, (list, tuple)) or not all(isinstance(prompt, str) for prompt in texts):
            raise TypeError(f"`text` must be a string or a list of strings, got {type(text).__name__}.")
        return list(texts)

    def _are_bare_questions(self, texts: list[str], videos: list) -> bool:
        """Whether the prompts are plain questions, one per video and without any placeholder."""
        return len(texts) == len(videos) and not any(self.video_token in prompt for prompt in texts)

    def question_prompt(self, question: str) -> str:
        """The chat-template prompt of one user turn holding a video and `question`, ending with the assistant header."""
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=True
        )

    def _check_video_placeholders(self, texts: list[str], videos: list):
        """Checks that the prompts hold one placeholder per video."""
        num_placeholders = sum(prompt.count(self.video_token) for prompt in texts)
        if num_placeholders != len(videos):
            raise ValueError(
                f"The total number of {self.video_token} tokens in the prompts should be the same as the number of "
                f"videos passed. Found total {num_placeholders} {self.video_token} tokens in `text` and {len(videos)} "
                f"videos in `videos`; put one {self.video_token} in the prompt for each video."
            )

    def _video_queries(self, texts: list[str], num_videos: int, query) -> list[str]:
        """The question of each video: `query` (one for all or one per video), or the video's prompt text."""
        if query is None:
            queries = [
                prompt.replace(self.video_token, "").strip()
                for prompt in texts
                for _ in range(prompt.count(self.video_token))
            ]
        elif isinstance(query, str):
            queries = [query] * num_videos
        elif isinstance(query, (list, tuple)) and len(query) == num_videos:
            queries = list(query)
        else:
            raise ValueError(
                f"`query` must be a string or a list of one string per video; got {query!r} for {num_videos} videos."
            )
        for video_index, video_query in enumerate(queries):
            if not isinstance(video_query, str):
                raise TypeError(f"`query` for video {video_index} must be a string, got {type(video_query).__name__}.")
            if not video_query.strip():
                raise ValueError(
                    f"The question for video {video_index} is empty ({video_query!r}); the keyframe selection ranks "
                    "frames against it. Pass a question in the prompt or as `query`."
                )
        return queries

    def _require_keyframe_selector(self) -> KeyframeSelector:
        """The keyframe selector, or an error saying how to get one."""
        if self.keyframe_selector is None:
            raise ValueError(
                "This processor has no `keyframe_selector`; load it with `ViLaMPProcessor.from_pretrained` from a "
                "directory holding keyframe_selector.safetensors, or pass `keyframe_selector=`."
            )
        return self.keyframe_selector

    def load_video(self, video, *, progress: ProgressCallback | None = None, **videos_kwargs) -> LoadedVideo:
        """
        The first stage of `__call__`: decodes (or takes) the sampled frames of one video and resizes each, as soon as
        it is read, for SigLIP and for the keyframe selector's CLIP.

        Args:
            video: a file path, a uint8 array or tensor of shape `(num_frames, height, width, 3)` or
                `(num_frames, 3, height, width)`, or a list of PIL images.
            progress (`Callable[[int], None]`, *optional*): called with 1 as each sampled frame is resized, from a
                decoding worker thread; where decoding starts over (a damaged file sampled again over the frames that
                decode, parallel spans that disagree) the frames resized again are reported again.
            videos_kwargs: `fps`, `max_frames`, `num_frames`, `do_sample_frames`, `size`, `resample`, `do_rescale`,
                `do_normalize`, ...; default to the video processor's settings.

        Returns:
            [`LoadedVideo`]: `siglip_frames` of shape `(num_frames, 3, frame_size, frame_size)`, `clip_frames` of shape
            `(num_frames, 3, 224, 224)`, `timestamps_seconds` and `metadata`.
        """
        if videos_kwargs.get("do_resize") is False:
            raise ValueError("`do_resize=False` is not supported: SigLIP takes frames of one size; set `size` instead.")
        clip_image_size = self._require_keyframe_selector().image_size
        size, resample = videos_kwargs.get("size"), videos_kwargs.get("resample")

        def resize_frame(image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
            siglip_frame = self.video_processor.resize_frame(image, size, resample)
            clip_frame = clip_resize_and_crop(image, clip_image_size)
            if progress is not None:
                progress(1)
            return siglip_frame, clip_frame

        decoded_video = self.video_processor.load_video(
            video,
            fps=videos_kwargs.get("fps"),
            max_frames=videos_kwargs.get("max_frames"),
            num_frames=videos_kwargs.get("num_frames"),
            do_sample_frames=videos_kwargs.get("do_sample_frames"),
            decode_device=videos_kwargs.get("decode_device"),
            num_decoders=videos_kwargs.get("num_decoders"),
            frame_transform=resize_frame,
        )
        siglip_frames, clip_frames = (torch.stack(frames) for frames in zip(*decoded_video.frames))
        return LoadedVideo(
            siglip_frames=self.video_processor.finish_frames(siglip_frames, **videos_kwargs),
            clip_frames=clip_frames,
            timestamps_seconds=decoded_video.timestamps_seconds,
            metadata=decoded_video.metadata,
        )

    def select_keyframes(
        self,
        clip_frames: torch.Tensor | None = None,
        query: str | None = None,
        *,
        frame_embeds: torch.Tensor | None = None,
        progress: ProgressCallback | None = None,
        **videos_kwargs,
    ) -> KeyframeSelection:
        """
        The second stage of `__call__`: the differential keyframe selection of one video against its question. The
        CLIP frames are embedded `keyframe_selector.frame_batch_size` at a time on the keyframe selector's device.

        Args:
            clip_frames (`torch.ByteTensor` of shape `(num_frames, 3, 224, 224)`, *optional*): the frames for CLIP
                (`LoadedVideo.clip_frames`).
            query (`str`): the question the frames are ranked against.
            frame_embeds (`torch.FloatTensor` of shape `(num_frames, embed_dim)`, *optional*): CLIP image embeddings
                (`keyframe_selector.encode_frames(clip_frames)`) to select from instead of `clip_frames`, for frames
                whose embeddings are already known. Pass exactly one of `clip_frames` and `frame_embeds`.
            progress (`Callable[[int], None]`, *optional*): called with the size of each batch of frames CLIP embedded.
            videos_kwargs: `num_keyframes`, `keyframe_relevance_threshold`, `keyframe_similarity_threshold` (default to
                the video processor's settings) and `device`, where the keyframe selector runs (it is moved there).

        Returns:
            [`KeyframeSelection`] (on the CPU): `keyframe_mask`, `ranked_keyframe_mask` and `relevance_scores` of shape
            `(num_frames,)`, and `query_embeds` of shape `(embed_dim,)`.
        """
        if (clip_frames is None) == (frame_embeds is None):
            raise ValueError("You must specify exactly one of `clip_frames` or `frame_embeds`.")
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"`query` must be the question to rank the frames against, got {query!r}.")
        selector = self._require_keyframe_selector()
        if videos_kwargs.get("device") is not None:
            selector.to(resolve_device(videos_kwargs["device"]))
        if frame_embeds is None:
            frame_embeds = []
            for batch in clip_frames.split(selector.frame_batch_size):
                frame_embeds.append(selector.encode_frames(batch))
                if progress is not None:
                    progress(len(batch))
            frame_embeds = torch.cat(frame_embeds)
        query_embeds = selector.encode_query(query).to(frame_embeds.device)
        settings = self._keyframe_settings(videos_kwargs)
        num_keyframes = settings["num_keyframes"]
        ranked_keyframe_mask = greedy_keyframe_selection(
            frame_embeds,
            query_embeds,
            num_keyframes=num_keyframes,
            relevance_threshold=settings["keyframe_relevance_threshold"],
            similarity_threshold=settings["keyframe_similarity_threshold"],
        )
        return KeyframeSelection(
            keyframe_mask=fill_keyframe_slots(ranked_keyframe_mask, num_keyframes),
            ranked_keyframe_mask=ranked_keyframe_mask,
            relevance_scores=frame_relevance_scores(frame_embeds, query_embeds).cpu(),
            query_embeds=query_embeds.cpu(),
        )

    def _keyframe_settings(self, videos_kwargs: dict) -> dict:
        """The keyframe settings of a call: the given ones, else the video processor's."""
        names = ("num_keyframes", "keyframe_relevance_threshold", "keyframe_similarity_threshold")
        return {
            name: videos_kwargs[name] if videos_kwargs.get(name) is not None else getattr(self.video_processor, name)
            for name in names
        }

    def build_inputs(
        self,
        text: str | list[str],
        video_frames: list[torch.Tensor] | None = None,
        keyframe_selections: list[KeyframeSelection] | None = None,
        **text_kwargs,
    ) -> BatchFeature:
        """
        The last stage of `__call__`: expands each `<video>` placeholder to the number of tokens its video takes and
        tokenizes the prompts.

        Args:
            text (`str` or `list[str]`): the prompts, chat template applied (`question_prompt` for a bare question),
                with one `<video>` placeholder per video.
            video_frames (`list[torch.Tensor]`, *optional*): per video in placeholder order, its frames of shape
                `(num_frames, 3, frame_size, frame_size)` (`LoadedVideo.siglip_frames`).
            keyframe_selections (`list[KeyframeSelection]`, *optional*): per video, what `select_keyframes` returned.
            text_kwargs: for the tokenizer (`padding`, `padding_side`, `truncation`, `max_length`, ...; `__call__`
                passes `padding=True, padding_side="left"` unless told otherwise), and `return_mm_token_type_ids`,
                `return_text_replacement_offsets`.

        Returns:
            [`BatchFeature`] as `__call__` returns it.
        """
        texts = self._check_text(text)
        video_frames, keyframe_selections = list(video_frames or []), list(keyframe_selections or [])
        if len(video_frames) != len(keyframe_selections):
            raise ValueError(
                f"`video_frames` holds {len(video_frames)} videos but `keyframe_selections` "
                f"{len(keyframe_selections)}; pass one keyframe selection per video."
            )
        self._check_video_placeholders(texts, video_frames)
        for video_index, (frames, selection) in enumerate(zip(video_frames, keyframe_selections)):
            if len(frames) != len(selection.keyframe_mask):
                raise ValueError(
                    f"`video_frames[{video_index}]` has {len(frames)} frames but its keyframe selection "
                    f"{len(selection.keyframe_mask)}; select the keyframes of these frames."
                )
        video_inputs = {}
        if video_frames:
            video_inputs = {
                "pixel_values_videos": torch.cat(video_frames),
                "video_frame_counts": torch.tensor([len(frames) for frames in video_frames], dtype=torch.int64),
                "keyframe_mask": torch.cat([selection.keyframe_mask for selection in keyframe_selections]),
                "query_embeds": torch.stack([selection.query_embeds for selection in keyframe_selections]),
            }
        prompts, replacement_offsets = self._expand_video_placeholders(texts, video_inputs)
        return_mm_token_type_ids = text_kwargs.pop("return_mm_token_type_ids", False)
        return_text_replacement_offsets = text_kwargs.pop("return_text_replacement_offsets", False)
        text_inputs = self.tokenizer(prompts, **text_kwargs)
        if return_mm_token_type_ids:
            text_inputs["mm_token_type_ids"] = self.create_mm_token_type_ids(text_inputs["input_ids"])
        data = {**text_inputs, **video_inputs}
        if return_text_replacement_offsets:
            data["text_replacement_offsets"] = replacement_offsets
        return BatchFeature(data=data, tensor_type="pt", skip_tensor_conversion=self.skip_tensor_conversion)

    def replace_video_token(self, video_inputs: dict, video_idx: int) -> str:
        """The expanded placeholder of video `video_idx`: `num_video_tokens` copies of the video token."""
        return self.video_token * self._num_video_tokens_of(video_inputs, video_idx)

    def _num_video_tokens_of(self, video_inputs: dict, video_idx: int) -> int:
        """The placeholder count of video `video_idx` of processed video inputs (its keyframes are counted)."""
        num_frames = int(video_inputs["video_frame_counts"][video_idx])
        start = int(video_inputs["video_frame_counts"][:video_idx].sum())
        num_keyframes = int(video_inputs["keyframe_mask"][start : start + num_frames].sum())
        return num_video_tokens(num_frames, num_keyframes, self.keyframe_pooled_size)

    def _expand_video_placeholders(self, texts: list[str], video_inputs: dict) -> tuple[list[str], list[list[dict]]]:
        """Replaces each placeholder, in order over the batch, by its expanded form; also returns where each went
        (`text_replacement_offsets`, see `ProcessorMixin.get_text_with_replacements`)."""
        num_videos = len(video_inputs.get("video_frame_counts", []))
        replacements = [self.replace_video_token(video_inputs, video_idx) for video_idx in range(num_videos)]
        return self.get_text_with_replacements(texts, videos_replacements=replacements)

    def _get_num_multimodal_tokens(self, video_sizes=None, **kwargs) -> MultiModalData:
        """
        Number of placeholder tokens of videos of the given sizes, without any pixels.

        Args:
            video_sizes (`list[list[int]]`, *optional*): `(num_frames, height, width)` per video, `num_frames` counted
                after sampling.
            kwargs: `num_keyframes`, as in `__call__`; defaults to the video processor's.

        Returns:
            `MultiModalData` with `num_video_tokens`, a list with one count per video.
        """
        vision_data = {}
        if video_sizes is not None:
            num_keyframes = self._keyframe_settings(kwargs)["num_keyframes"]
            vision_data["num_video_tokens"] = [
                num_video_tokens(num_frames, min(num_keyframes, num_frames), self.keyframe_pooled_size)
                for num_frames, _, _ in video_sizes
            ]
        return MultiModalData(**vision_data)

    def apply_chat_template(
        self,
        conversation,
        chat_template=None,
        add_generation_prompt=False,
        continue_final_message=False,
        tokenize=False,
        return_dict=False,
        return_assistant_tokens_mask=False,
        return_labels=False,
        query=None,
        chat_template_kwargs=None,
        processor_kwargs=None,
        **kwargs,
    ):
        """
        Renders chat messages with the chat template and, with `tokenize=True`, processes them with their videos.

        Video blocks are `{"type": "video", "path": ...}` (or `"video"` / `"url"`: a path, an array or a list of
        images). By default each video's question is the text of the message that holds it.

        Args:
            conversation (`list[dict]` or `list[list[dict]]`): one conversation or a batch of them.
            chat_template (`str`, *optional*): overrides the processor's template.
            add_generation_prompt (`bool`, *optional*, defaults to `False`): end with the assistant turn's header.
            continue_final_message (`bool`, *optional*, defaults to `False`): leave the last message open.
            tokenize (`bool`, *optional*, defaults to `False`): process the rendered prompts and videos.
            return_dict (`bool`, *optional*, defaults to `False`): return the whole `BatchFeature`, not only
                `input_ids`.
            return_assistant_tokens_mask (`bool`, *optional*, defaults to `False`): add `assistant_masks` (needs
                `tokenize=True` and `return_dict=True`): 1 on the tokens the template marks with `{% generation %}`
                (each assistant answer and its closing `<|im_end|>`), 0 elsewhere.
            return_labels (`bool`, *optional*, defaults to `False`): add `labels` for training (needs `tokenize=True`
                and `return_dict=True`): the ids of the assistant tokens (as in `assistant_masks`), -100 everywhere
                else (system and user turns, role headers, video placeholders, padding).
            query (`str` or `list[str]`, *optional*): overrides the questions, as in `__call__`.
            chat_template_kwargs (`dict`, *optional*): variables for the Jinja template.
            processor_kwargs (`dict`, *optional*): kwargs for `__call__` (as transformers' processors take them).
            kwargs: template variables when the template uses them, otherwise kwargs for `__call__` (`max_frames`,
                `num_keyframes`, `padding_side`, `return_tensors`, ...).

        Returns:
            The prompt (`str` or `list[str]`), or with `tokenize=True` the `input_ids` or the `BatchFeature` (with
            **assistant_masks** and **labels**, `torch.LongTensor` of shape `(batch_size, sequence_length)`, when
            asked).
        """
        chat_template = self._resolve_template(chat_template)
        if (return_labels or return_assistant_tokens_mask) and not (tokenize and return_dict):
            name = "return_labels" if return_labels else "return_assistant_tokens_mask"
            raise ValueError(
                f"`{name}=True` needs `tokenize=True` and `return_dict=True`: the result is returned next to the "
                f"`input_ids` in the `BatchFeature`; got tokenize={tokenize}, return_dict={return_dict}."
            )
        if (return_labels or return_assistant_tokens_mask) and (add_generation_prompt or continue_final_message):
            raise ValueError(
                "`return_labels` and `return_assistant_tokens_mask` mark complete answers: leave `add_generation_prompt` "
                "and `continue_final_message` False and end the conversation with the assistant's answer."
            )
        template_variables = _get_template_variables(chat_template)
        template_kwargs = {
            **self.tokenizer.special_tokens_map,
            **{name: value for name, value in kwargs.items() if name in template_variables},
            **(chat_template_kwargs or {}),
        }
        call_kwargs = {
            **(processor_kwargs or {}),
            **{name: value for name, value in kwargs.items() if name not in template_variables},
        }
        is_batched = isinstance(conversation[0], (list, tuple))
        conversations = conversation if is_batched else [conversation]
        prompts, generation_spans = render_jinja_template(
            conversations=conversations,
            chat_template=chat_template,
            return_assistant_tokens_mask=return_assistant_tokens_mask or return_labels,
            continue_final_message=continue_final_message,
            add_generation_prompt=add_generation_prompt,
            **template_kwargs,
        )
        if not tokenize:
            return prompts if is_batched else prompts[0]
        videos, video_queries = [], []
        for messages in conversations:
            for message in messages:
                message_videos, message_text = self._message_videos_and_text(message)
                videos.extend(message_videos)
                video_queries.extend([message_text] * len(message_videos))
        inputs = self(text=prompts, videos=videos or None, query=video_queries if query is None else query, **call_kwargs)
        if return_assistant_tokens_mask or return_labels:
            assistant_masks = self.assistant_token_masks(prompts, generation_spans, inputs)
            if return_assistant_tokens_mask:
                inputs["assistant_masks"] = assistant_masks.long()
            if return_labels:
                for row, spans in enumerate(generation_spans):
                    if not spans:
                        raise ValueError(
                            f"Conversation {row} has no assistant message, so nothing to learn; end it with "
                            '`{"role": "assistant", "content": [{"type": "text", "text": answer}]}`.'
                        )
                inputs["labels"] = inputs["input_ids"].masked_fill(~assistant_masks, IGNORE_INDEX)
        return inputs if return_dict else inputs["input_ids"]

    def _resolve_template(self, chat_template) -> str:
        """The template to render with: `chat_template` (a template or the name of one), else the processor's."""
        templates = self.chat_template if isinstance(self.chat_template, dict) else {"default": self.chat_template}
        if chat_template is None:
            chat_template = "default"
        if chat_template in templates:
            return templates[chat_template]
        if chat_template == "default":
            raise ValueError(
                'The processor has no chat template named "default"; pass `chat_template=` with one of '
                f"{sorted(templates)} or a template."
            )
        return chat_template

    def assistant_token_masks(
        self, prompts: list[str], generation_spans: list[list[tuple[int, int]]], inputs: BatchFeature
    ) -> torch.Tensor:
        """
        Which tokens of processed prompts lie in the assistant spans of the rendered text, video placeholders expanded.

        Args:
            prompts (`list[str]`): the rendered prompts, before placeholder expansion.
            generation_spans (`list[list[tuple[int, int]]]`): per prompt, the `[start, end)` character ranges the chat
                template marks with `{% generation %}`.
            inputs (`BatchFeature`): what `__call__` returned for `prompts`.

        Returns:
            `torch.BoolTensor` of shape `(batch_size, sequence_length)`, aligned with `inputs["input_ids"]`.
        """
        masks = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
        video_counts = inputs.get("video_frame_counts")
        video_idx = 0
        for row, (prompt, spans) in enumerate(zip(prompts, generation_spans)):
            encoding = self.tokenizer(prompt, return_offsets_mapping=True)
            row_ids, row_mask = [], []
            for token_id, (start, _) in zip(encoding["input_ids"], encoding["offset_mapping"]):
                if token_id == self.video_token_id and video_counts is not None and video_idx < len(video_counts):
                    count = self._num_video_tokens_of(inputs, video_idx)
                    video_idx += 1
                    row_ids += [token_id] * count
                    row_mask += [False] * count
                else:
                    row_ids.append(token_id)
                    row_mask.append(any(span_start <= start < span_end for span_start, span_end in spans))
            is_token = inputs["attention_mask"][row].bool()
            if row_ids != inputs["input_ids"][row][is_token].tolist():
                raise ValueError(
                    f"The tokens of conversation {row} differ from its `input_ids` ({len(row_ids)} against "
                    f"{int(is_token.sum())}), so the assistant tokens cannot be located; do not truncate when asking "
                    "for `labels` or `assistant_masks`."
                )
            masks[row, is_token] = torch.tensor(row_mask, dtype=torch.bool)
        return masks

    @staticmethod
    def _message_videos_and_text(message: dict) -> tuple[list, str]:
        """The videos of a chat message and its text blocks joined by spaces."""
        content = message.get("content")
        if not isinstance(content, (list, tuple)):
            return [], content or ""
        videos = [
            next(block[key] for key in ("video", "path", "url") if key in block)
            for block in content
            if block.get("type") == "video"
        ]
        text = " ".join(block["text"] for block in content if block.get("type") == "text").strip()
        return videos, text

    def to_dict(self) -> dict:
        """The processor settings saved in `processor_config.json`, with the video processor's nested (the tokenizer,
        chat template and keyframe selector have their own files)."""
        output = {
            "video_token": self.video_token,
            "keyframe_pooled_size": self.keyframe_pooled_size,
            "video_processor": self.video_processor.to_dict(),
        }
        if getattr(self, "auto_map", None) is not None:
            output["auto_map"] = self.auto_map
        output["processor_class"] = self.__class__.__name__
        return output

    def save_pretrained(self, save_directory, **kwargs):
        """Saves the tokenizer, chat template and settings (`ProcessorMixin.save_pretrained`) and the keyframe selector
        (`keyframe_selector.safetensors`, `keyframe_selector_config.json`)."""
        saved_files = super().save_pretrained(save_directory, **kwargs)
        if self.keyframe_selector is not None:
            self.keyframe_selector.save_pretrained(save_directory)
        return saved_files

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        """Loads the tokenizer, and builds the video processor from `processor_config.json` (its nested
        `video_processor`, or the flat settings of processors saved before it was one); video settings in `kwargs`
        override the saved ones."""
        processor_dict = processor_dict or {}
        subfolder = kwargs.pop("subfolder", "")
        tokenizer = cls._load_tokenizer_from_pretrained(
            "tokenizer", pretrained_model_name_or_path, subfolder=subfolder, **kwargs
        )
        if isinstance(processor_dict.get("video_processor"), dict):
            video_processor_dict = processor_dict["video_processor"]
        else:
            legacy = {name: processor_dict[name] for name in LEGACY_VIDEO_SETTINGS if name in processor_dict}
            video_processor_dict = cls._video_processor_with(None, legacy).to_dict()
        overrides = {name: kwargs[name] for name in ViLaMPVideoProcessor.valid_kwargs.__annotations__ if name in kwargs}
        video_processor = ViLaMPVideoProcessor.from_dict(video_processor_dict, **overrides)
        return [tokenizer, video_processor]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, device="auto", **kwargs):
        """
        Loads the processor and its keyframe selector from a directory or a Hub repository.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): the directory or repository.
            device (`str` or `torch.device`, *optional*, defaults to `"auto"`): where the keyframe selector runs;
                `"auto"` is the CUDA GPU when torch sees one (where the model runs), else the CPU.
            kwargs: passed to `ProcessorMixin.from_pretrained`; video settings (`max_frames`, `num_keyframes`, ...)
                override the saved ones.
        """
        processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        hub_kwargs = {name: kwargs[name] for name in HUB_KWARGS if name in kwargs}
        processor.keyframe_selector = KeyframeSelector.from_pretrained(
            pretrained_model_name_or_path, device=resolve_device(device), **hub_kwargs
        )
        return processor


__all__ = [
    "IGNORE_INDEX",
    "KeyframeSelection",
    "LoadedVideo",
    "ProgressCallback",
    "ViLaMPProcessor",
    "ViLaMPProcessorKwargs",
    "num_video_tokens",
    "resolve_device",
]
