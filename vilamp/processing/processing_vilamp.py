"""Processor class for ViLaMP: composes the tokenizer, the video processor and the keyframe selector."""

import dataclasses
from functools import partial
from pathlib import Path

import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import MultiModalData, ProcessingKwargs, ProcessorMixin, TextKwargs, Unpack
from transformers.utils.chat_template_utils import _get_template_variables, render_jinja_template

from .chat_template_extras import (
    assistant_token_masks,
    check_assistant_mask_arguments,
    check_every_conversation_answers,
    conversation_videos,
    named_chat_template,
)
from .keyframe_selection import KeyframeSelection, KeyframeSelector, resolve_device
from .video_cache import VideoCache
from .video_processing_vilamp import (
    LoadedVideo,
    ProgressCallback,
    ViLaMPVideoProcessor,
    ViLaMPVideoProcessorInitKwargs,
    check_loaded_video,
    flatten_videos,
    video_frames_inputs,
    video_processor_with,
)

CHAT_TEMPLATE_PATH = Path(__file__).with_name("chat_template.jinja")

# Label of a position without loss (`ignore_index` of the loss).
IGNORE_INDEX = -100

# `cached_file` arguments of `from_pretrained` that the keyframe selector files are fetched with as well.
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


class ViLaMPProcessorKwargs(ProcessingKwargs, total=False):
    videos_kwargs: ViLaMPVideoProcessorInitKwargs
    _defaults = {
        # generation continues every row at its end, so rows are padded on the left (see `__call__`)
        "text_kwargs": {"padding": True},
        "common_kwargs": {"return_tensors": "pt"},
    }


def num_video_tokens(num_frames: int, num_keyframes: int, keyframe_pooled_size: int) -> int:
    """Placeholder tokens of one video: a pooled grid per keyframe, one token per other frame, one newline."""
    # +1 for the image_newline token that closes the video
    return keyframe_pooled_size**2 * num_keyframes + (num_frames - num_keyframes) + 1


class ViLaMPProcessor(ProcessorMixin):
    r"""
    Constructs a ViLaMP processor from a Qwen2 tokenizer, a [`ViLaMPVideoProcessor`] (decoding, sampling, resizing, and
    the sampling and keyframe settings, saved with it and overridable per call) and a [`KeyframeSelector`] (DKS against
    the question). `__call__` runs three stages, public on their own: `load_video`, `select_keyframes` and
    `build_inputs` (each `<video>` expanded to the tokens the model makes of its video, then tokenized).

    Args:
        tokenizer (`PreTrainedTokenizerBase`): the Qwen2 tokenizer; it must know the `video_token` as one token.
        video_processor ([`ViLaMPVideoProcessor`], *optional*): defaults to one built from `video_settings`.
        chat_template (`str`, *optional*): defaults to the original's `qwen_1_5` template (`chat_template.jinja`).
        video_token (`str`, *optional*, defaults to `"<video>"`): its id must equal the config's `video_token_index`.
        keyframe_pooled_size (`int`, *optional*, defaults to 14): a keyframe takes `keyframe_pooled_size**2` tokens.
        keyframe_selector ([`KeyframeSelector`], *optional*): `from_pretrained` loads it from its own files.
        video_settings (*optional*): the flat `LEGACY_VIDEO_SETTINGS` of processors saved before the video processor
            was one; they build the video processor or override its settings.
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
        self.keyframe_selector = keyframe_selector
        if chat_template is None:
            chat_template = CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")
        video_processor = video_processor_with(video_processor, video_settings)
        super().__init__(tokenizer, video_processor, chat_template=chat_template)

    @property
    def model_input_names(self) -> list[str]:
        return [
            "input_ids",
            "attention_mask",
            "pixel_values_videos",
            "video_frame_counts",
            "keyframe_mask",
            "query_embeds",
        ]

    def __call__(self, text=None, videos=None, query=None, **kwargs: Unpack[ViLaMPProcessorKwargs]) -> BatchFeature:
        """
        Prepares prompts and their videos for the model: `load_video`, `select_keyframes` and `build_inputs`.

        Args:
            text (`str` or `list[str]`): the prompts, chat template applied, one `<video>` per video; plain questions
                without placeholders, one per video, are put into the chat template first (`question_prompt`).
            videos (*optional*): one video or a list of videos (or of per-prompt lists), in placeholder order: file
                paths, uint8 arrays or tensors of shape `(num_frames, height, width, 3)` or `(num_frames, 3, height,
                width)`, lists of PIL images (taken as sampled at `fps`), or [`LoadedVideo`]s, which are not decoded
                (nor, after `embed_frames`, embedded) again, so one loaded video answers any number of questions.
            query (`str` or `list[str]`, *optional*): the question the frames are ranked against, one for all or one
                per video; defaults to the video's prompt without the placeholder.
            kwargs ([`ViLaMPProcessorKwargs`]): flat or in `text_kwargs` / `videos_kwargs`: video kwargs override the
                video processor's settings and `device` moves the keyframe selector; the tokenizer's default to
                `padding=True, padding_side="left"`; `return_tensors` must be `"pt"`; any other key is an error.

        Returns:
            [`BatchFeature`] with **input_ids** and **attention_mask** (`(batch_size, sequence_length)`, each `<video>`
            repeated `num_video_tokens(...)` times), **pixel_values_videos** (uint8 `(total_frames, 3, height, width)`,
            normalised by the model), **video_frame_counts** (`(num_videos,)`), **keyframe_mask** (bool
            `(total_frames,)`) and **query_embeds** (`(num_videos, embed_dim)`, unnormalised CLIP text embeddings);
            the video entries only when a prompt has a video.
        """
        output_kwargs = self._merge_call_kwargs(kwargs)
        videos_kwargs = output_kwargs["videos_kwargs"]
        texts, videos = self._check_text(text), flatten_videos(videos)
        if videos and len(texts) == len(videos) and not any(self.video_token in prompt for prompt in texts):
            query = texts if query is None else query
            texts = [self.question_prompt(question) for question in texts]
        # checked before any decoding, so a mismatch costs no video; `build_inputs` checks its own arguments
        self._check_video_placeholders(texts, len(videos))
        if videos:
            self._keyframe_selector()
        video_frames, keyframe_selections = [], []
        for video_index, (video, video_query) in enumerate(
            zip(videos, self._video_queries(texts, len(videos), query))
        ):
            try:
                if isinstance(video, LoadedVideo):
                    loaded_video = check_loaded_video(video, videos_kwargs)
                else:
                    loaded_video = self.load_video(video, **videos_kwargs)
            except ValueError as error:
                raise ValueError(f"`videos[{video_index}]`: {error}") from error
            # only the SigLIP frames are kept: the CLIP frames of a video are dropped once its keyframes are chosen
            keyframe_selections.append(
                self.select_keyframes(
                    loaded_video.clip_frames if loaded_video.frame_embeds is None else None,
                    video_query,
                    frame_embeds=loaded_video.frame_embeds,
                    **videos_kwargs,
                )
            )
            video_frames.append(loaded_video.siglip_frames)
        return self.build_inputs(texts, video_frames, keyframe_selections, **output_kwargs["text_kwargs"])

    def _merge_call_kwargs(self, kwargs: dict) -> dict[str, dict]:
        """Splits call kwargs into tokenizer and video kwargs (`_merge_kwargs`), refusing keys neither takes; pads left
        by default and requires `return_tensors="pt"`."""
        modality_kwargs = ("text_kwargs", "videos_kwargs", "common_kwargs")
        accepted = (
            set(TextKwargs.__annotations__)
            | set(ViLaMPProcessorKwargs.__annotations__["text_kwargs"].__annotations__)
            | set(self.video_processor.valid_kwargs.__annotations__)
        )
        unknown = [name for name, value in kwargs.items() if name not in accepted | set(modality_kwargs)]
        unknown += [key for name in modality_kwargs for key in kwargs.get(name, {}) if key not in accepted]
        if unknown:
            raise TypeError(
                f"ViLaMPProcessor got unexpected keyword argument(s) {unknown}. Besides `text`, `videos` and `query` it "
                f"takes these keyword arguments, flat or in {', '.join(f'`{name}`' for name in modality_kwargs)}: "
                f"{sorted(accepted)}."
            )
        # `from_pretrained` hands its video settings to the tokenizer too, which keeps them in `init_kwargs`; as call
        # kwargs they would refuse a `LoadedVideo`
        video_only = set(self.video_processor.valid_kwargs.__annotations__) - set(TextKwargs.__annotations__)
        tokenizer_init_kwargs = {
            name: value for name, value in self.tokenizer.init_kwargs.items() if name not in video_only
        }
        output_kwargs = self._merge_kwargs(
            ViLaMPProcessorKwargs, tokenizer_init_kwargs=tokenizer_init_kwargs, **kwargs
        )
        text_kwargs = output_kwargs["text_kwargs"]
        if {**kwargs, **kwargs.get("text_kwargs", {}), **kwargs.get("common_kwargs", {})}.get("padding_side") is None:
            text_kwargs["padding_side"] = "left"
        return_tensors = text_kwargs.pop("return_tensors", None)
        output_kwargs["videos_kwargs"].pop("return_tensors", None)
        if return_tensors != "pt":
            raise ValueError(
                f"`return_tensors` must be 'pt' (the video inputs are torch tensors), got {return_tensors!r}."
            )
        return output_kwargs

    def _check_text(self, text) -> list[str]:
        """Returns the prompts as a list, checking their type."""
        if text is None:
            raise ValueError("`text` is required: pass the prompt(s), with one `<video>` placeholder per video.")
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, (list, tuple)) or not all(isinstance(prompt, str) for prompt in texts):
            raise TypeError(f"`text` must be a string or a list of strings, got {type(text).__name__}.")
        return list(texts)

    def question_prompt(self, question: str) -> str:
        """The chat-template prompt of one user turn holding a video and `question`, ending with the assistant header."""
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=True
        )

    def _check_video_placeholders(self, texts: list[str], num_videos: int):
        """Checks that the prompts hold one placeholder per video."""
        num_placeholders = sum(prompt.count(self.video_token) for prompt in texts)
        if num_placeholders != num_videos:
            raise ValueError(
                f"The total number of {self.video_token} tokens in the prompts should be the same as the number of "
                f"videos passed. Found total {num_placeholders} {self.video_token} tokens in `text` and {num_videos} "
                f"videos in `videos`; put one {self.video_token} in the prompt for each video."
            )

    def _video_queries(self, texts: list[str], num_videos: int, query) -> list[str]:
        """The question of each video: `query` (one for all or one per video), or the video's prompt text."""
        if query is None:
            query = [
                prompt.replace(self.video_token, "").strip()
                for prompt in texts
                for _ in range(prompt.count(self.video_token))
            ]
        queries = [query] * num_videos if isinstance(query, str) else query
        if not isinstance(queries, (list, tuple)) or len(queries) != num_videos:
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
        return list(queries)

    def _keyframe_selector(self, device: str | torch.device | None = None) -> KeyframeSelector:
        """The keyframe selector, moved to `device` when one is given, or an error saying how to get one."""
        if self.keyframe_selector is None:
            raise ValueError(
                "This processor has no `keyframe_selector`; load it with `ViLaMPProcessor.from_pretrained` from a "
                "directory holding keyframe_selector.safetensors, or pass `keyframe_selector=`."
            )
        return self.keyframe_selector if device is None else self.keyframe_selector.to(resolve_device(device))

    def load_video(
        self, video, *, cache: VideoCache | None = None, progress: ProgressCallback | None = None, **videos_kwargs
    ) -> LoadedVideo:
        """
        The first stage of `__call__`: the video processor's `load_video` (see it for `video`, `progress` and the
        `videos_kwargs`) with CLIP frames for the keyframe selector, read from or stored in `cache` ([`VideoCache`])
        when one is given. Returns a [`LoadedVideo`].
        """
        if videos_kwargs.get("do_resize") is False:
            raise ValueError(
                "`do_resize=False` is not supported: SigLIP takes frames of one size; set `size` instead."
            )
        if cache is not None and not isinstance(cache, VideoCache):
            raise TypeError(f"`cache` must be a `VideoCache` or None, got {type(cache).__name__}.")
        load = self.video_processor.load_video if cache is None else partial(cache.load_video, self.video_processor)
        return load(
            video, keyframe_image_size=self._keyframe_selector().image_size, progress=progress, **videos_kwargs
        )

    def embed_frames(
        self,
        loaded_video: LoadedVideo,
        *,
        progress: ProgressCallback | None = None,
        device: str | torch.device | None = None,
    ) -> LoadedVideo:
        """
        The keyframe selector's CLIP embeddings of a loaded video's frames, computed once for all its questions.

        Args:
            loaded_video ([`LoadedVideo`]): what `load_video` returned.
            progress (`Callable[[int], None]`, *optional*): called with the size of each batch CLIP embedded.
            device (`str` or `torch.device`, *optional*): where the keyframe selector runs; defaults to where it is.

        Returns:
            [`LoadedVideo`]: the video with `frame_embeds` (on the selector's device) and without CLIP frames.
        """
        if loaded_video.frame_embeds is not None:
            return loaded_video
        if loaded_video.clip_frames is None:
            raise ValueError(
                "The `LoadedVideo` has no CLIP frames to embed; load it with `ViLaMPProcessor.load_video`, which makes "
                "them."
            )
        frame_embeds = self._keyframe_selector(device).encode_frames(loaded_video.clip_frames, progress=progress)
        return dataclasses.replace(loaded_video, clip_frames=None, frame_embeds=frame_embeds)

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
        The second stage of `__call__`: `KeyframeSelector.select` of one video against its question, with the video
        processor's keyframe settings.

        Args:
            clip_frames (`torch.ByteTensor` of shape `(num_frames, 3, 224, 224)`, *optional*): the CLIP frames
                (`LoadedVideo.clip_frames`).
            query (`str`): the question the frames are ranked against.
            frame_embeds (`torch.FloatTensor` of shape `(num_frames, embed_dim)`, *optional*): CLIP image embeddings
                already known (`LoadedVideo.frame_embeds`), instead of `clip_frames` (pass exactly one of them).
            progress (`Callable[[int], None]`, *optional*): called with the size of each batch CLIP embedded.
            videos_kwargs: `num_keyframes`, `keyframe_relevance_threshold`, `keyframe_similarity_threshold` (default to
                the video processor's settings) and `device` (where the keyframe selector runs).

        Returns:
            [`KeyframeSelection`] (on the CPU).
        """
        settings = self.video_processor.call_settings(**videos_kwargs)
        return self._keyframe_selector(videos_kwargs.get("device")).select(
            query,
            clip_frames=clip_frames,
            frame_embeds=frame_embeds,
            num_keyframes=settings["num_keyframes"],
            relevance_threshold=settings["keyframe_relevance_threshold"],
            similarity_threshold=settings["keyframe_similarity_threshold"],
            progress=progress,
        )

    def build_inputs(
        self,
        text: str | list[str],
        video_frames: list[torch.Tensor] | None = None,
        keyframe_selections: list[KeyframeSelection] | None = None,
        **text_kwargs,
    ) -> BatchFeature:
        """
        The last stage of `__call__`: expands each `<video>` placeholder to the tokens its video takes and tokenizes.

        Args:
            text (`str` or `list[str]`): the prompts, chat template applied, one `<video>` per video.
            video_frames (`list[torch.Tensor]`, *optional*): per video, `LoadedVideo.siglip_frames`.
            keyframe_selections (`list[KeyframeSelection]`, *optional*): per video, what `select_keyframes` returned.
            text_kwargs: for the tokenizer, and `return_mm_token_type_ids`, `return_text_replacement_offsets`.

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
        self._check_video_placeholders(texts, len(video_frames))
        for video_index, (frames, selection) in enumerate(zip(video_frames, keyframe_selections)):
            if len(frames) != len(selection.keyframe_mask):
                raise ValueError(
                    f"`video_frames[{video_index}]` has {len(frames)} frames but its keyframe selection "
                    f"{len(selection.keyframe_mask)}; select the keyframes of these frames."
                )
        video_inputs = {}
        if video_frames:
            video_inputs = {
                **video_frames_inputs(video_frames),
                "keyframe_mask": torch.cat([selection.keyframe_mask for selection in keyframe_selections]),
                "query_embeds": torch.stack([selection.query_embeds for selection in keyframe_selections]),
            }
        replacements = [self.replace_video_token(video_inputs, video_idx) for video_idx in range(len(video_frames))]
        prompts, replacement_offsets = self.get_text_with_replacements(texts, videos_replacements=replacements)
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
        num_frames = int(video_inputs["video_frame_counts"][video_idx])
        start = int(video_inputs["video_frame_counts"][:video_idx].sum())
        num_keyframes = int(video_inputs["keyframe_mask"][start : start + num_frames].sum())
        return self.video_token * num_video_tokens(num_frames, num_keyframes, self.keyframe_pooled_size)

    def _get_num_multimodal_tokens(self, video_sizes=None, **kwargs) -> MultiModalData:
        """Placeholder tokens per video of `video_sizes` (`(num_frames, height, width)`, frames counted after sampling)
        without any pixels, for `num_keyframes` (a kwarg, else the video processor's), as `MultiModalData`."""
        vision_data = {}
        if video_sizes is not None:
            num_keyframes = self.video_processor.call_settings(**kwargs)["num_keyframes"]
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
        `ProcessorMixin.apply_chat_template` (same arguments) plus what transformers lacks: each video's question (the
        text of its message, or `query`), `return_labels`, assistant masks past the expanded placeholders alike under
        transformers 5.17 and 5.24, and `chat_template_kwargs`. It renders once and tokenizes once.

        Args:
            return_assistant_tokens_mask (`bool`, *optional*, defaults to `False`): add `assistant_masks`, 1 on the
                tokens the template marks with `{% generation %}` (needs `tokenize=True` and `return_dict=True`).
            return_labels (`bool`, *optional*, defaults to `False`): add `labels`, the assistant tokens' ids and -100
                elsewhere (same needs).
            query (`str` or `list[str]`, *optional*): overrides the questions, as in `__call__`.
            chat_template_kwargs (`dict`, *optional*): variables for the Jinja template.
            kwargs: template variables when the template uses them, otherwise kwargs for `__call__`.
        """
        check_assistant_mask_arguments(
            tokenize=tokenize,
            return_dict=return_dict,
            return_assistant_tokens_mask=return_assistant_tokens_mask,
            return_labels=return_labels,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
        )
        with_masks = return_assistant_tokens_mask or return_labels
        chat_template = named_chat_template(self.chat_template, chat_template)
        template_variables = _get_template_variables(chat_template)
        template_kwargs = {name: value for name, value in kwargs.items() if name in template_variables}
        call_kwargs = {name: value for name, value in kwargs.items() if name not in template_variables}
        is_batched = isinstance(conversation[0], (list, tuple))
        conversations = conversation if is_batched else [conversation]
        prompts, generation_spans = render_jinja_template(
            conversations=conversations,
            chat_template=chat_template,
            return_assistant_tokens_mask=with_masks,
            continue_final_message=continue_final_message,
            add_generation_prompt=add_generation_prompt,
            **{**self.tokenizer.special_tokens_map, **template_kwargs, **(chat_template_kwargs or {})},
        )
        if not tokenize:
            return prompts if is_batched else prompts[0]
        videos, questions = conversation_videos(conversations)
        if return_labels:
            check_every_conversation_answers(generation_spans)
        if with_masks:
            call_kwargs.update(return_offsets_mapping=True, return_text_replacement_offsets=True)
        inputs = self(
            text=prompts,
            videos=videos or None,
            query=questions if query is None else query,
            **{**(processor_kwargs or {}), **call_kwargs},
        )
        if with_masks:
            assistant_masks = assistant_token_masks(inputs, generation_spans, self.video_token_id)
            if return_assistant_tokens_mask:
                inputs["assistant_masks"] = assistant_masks.long()
            if return_labels:
                inputs["labels"] = inputs["input_ids"].masked_fill(~assistant_masks, IGNORE_INDEX)
        return inputs if return_dict else inputs["input_ids"]

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
        """The tokenizer and the video processor (`ViLaMPVideoProcessor.from_processor_dict`)."""
        processor_dict = processor_dict or {}
        subfolder = kwargs.pop("subfolder", "")
        tokenizer = cls._load_tokenizer_from_pretrained(
            "tokenizer", pretrained_model_name_or_path, subfolder=subfolder, **kwargs
        )
        return [tokenizer, ViLaMPVideoProcessor.from_processor_dict(processor_dict, **kwargs)]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, device="auto", **kwargs):
        """Loads the processor (`ProcessorMixin.from_pretrained`; video settings in `kwargs` override the saved ones)
        and its keyframe selector on `device` (`"auto"`: the CUDA GPU when torch sees one, else the CPU)."""
        processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        hub_kwargs = {name: kwargs[name] for name in HUB_KWARGS if name in kwargs}
        processor.keyframe_selector = KeyframeSelector.from_pretrained(
            pretrained_model_name_or_path, device=resolve_device(device), **hub_kwargs
        )
        return processor


__all__ = ["IGNORE_INDEX", "ViLaMPProcessor", "ViLaMPProcessorKwargs", "num_video_tokens"]
