"""Processor class for ViLaMP: video decoding, SigLIP frames, differential keyframe selection and the prompt."""

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import MultiModalData, ProcessorMixin
from transformers.video_utils import VideoMetadata

from .keyframe_selection import KeyframeSelector, clip_resize_and_crop, select_keyframes
from .video_decoding import DecodedVideo, decode_video, sample_frame_indices
from .video_processing_vilamp import ViLaMPVideoProcessor

CHAT_TEMPLATE_PATH = Path(__file__).with_name("chat_template.jinja")

# Label of a position without loss (`ignore_index` of the loss).
IGNORE_INDEX = -100
# The chat template closes every turn with this token; an answer's labels include it, so the model learns to stop.
END_OF_TURN = "<|im_end|>"

# `cached_file` arguments of `from_pretrained` that the keyframe selector files are fetched with as well.
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


def num_video_tokens(num_frames: int, num_keyframes: int, keyframe_pooled_size: int) -> int:
    """Placeholder tokens of one video: a pooled grid per keyframe, one token per other frame, one newline."""
    # +1 for the image_newline token that closes the video
    return keyframe_pooled_size**2 * num_keyframes + (num_frames - num_keyframes) + 1


def is_single_video(video) -> bool:
    """Whether `video` is one video: a path, a `(num_frames, height, width, 3)` array or tensor, or a list of images."""
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
        f"`videos` must be a video file path, a uint8 array or tensor of shape (num_frames, height, width, 3), a list "
        f"of PIL images, or a list of these; got {type(videos).__name__}."
    )


class ViLaMPProcessor(ProcessorMixin):
    r"""
    Constructs a ViLaMP processor: it decodes each video at `fps` frames per second (at most `max_frames`), resizes the
    frames for SigLIP (`pixel_values_videos`, uint8), runs the differential keyframe selection (DKS) against the
    question with the open_clip keyframe selector, and expands each `<video>` placeholder of the prompt to the number of
    tokens the model produces for that video.

    Args:
        tokenizer (`PreTrainedTokenizerBase`):
            The Qwen2 tokenizer; it must know the `video_token` as one token.
        chat_template (`str`, *optional*):
            The Jinja chat template; defaults to the `qwen_1_5` template of the original (`chat_template.jinja`).
        video_token (`str`, *optional*, defaults to `"<video>"`):
            The video placeholder; its id must equal the model config's `video_token_index`.
        num_keyframes (`int`, *optional*, defaults to 32):
            Keyframes per video K (`max_frame_num` in the original).
        keyframe_relevance_threshold (`float`, *optional*, defaults to 0.2):
            Frames whose CLIP similarity to the question is below this end the ranking (`f2t_thrd` in the original).
        keyframe_similarity_threshold (`float`, *optional*, defaults to 0.85):
            A frame more similar than this to a chosen keyframe is skipped (`f2f_thrd` in the original).
        keyframe_pooled_size (`int`, *optional*, defaults to 14):
            Side of the pooled grid of a keyframe; a keyframe takes `keyframe_pooled_size**2` tokens.
        fps (`float`, *optional*, defaults to 1.0):
            Frames sampled per second of video (the original keeps every `int(average_fps)`-th frame).
        max_frames (`int`, *optional*, defaults to 600):
            At most this many frames per video, evenly spread over the sampled ones.
        frame_size (`int`, *optional*, defaults to 384):
            Height and width of the SigLIP frames.
        keyframe_selector (`KeyframeSelector`, *optional*):
            The open_clip model of the keyframe selection; `from_pretrained` loads it from
            `keyframe_selector.safetensors` and `keyframe_selector_config.json`.
    """

    def __init__(
        self,
        tokenizer=None,
        chat_template=None,
        video_token="<video>",
        num_keyframes=32,
        keyframe_relevance_threshold=0.2,
        keyframe_similarity_threshold=0.85,
        keyframe_pooled_size=14,
        fps=1.0,
        max_frames=600,
        frame_size=384,
        keyframe_selector=None,
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
        self.num_keyframes = num_keyframes
        self.keyframe_relevance_threshold = keyframe_relevance_threshold
        self.keyframe_similarity_threshold = keyframe_similarity_threshold
        self.keyframe_pooled_size = keyframe_pooled_size
        self.fps = fps
        self.max_frames = max_frames
        self.frame_size = frame_size
        self._check_settings()
        self.video_processor = ViLaMPVideoProcessor(size={"height": frame_size, "width": frame_size})
        self.keyframe_selector = keyframe_selector
        if chat_template is None:
            chat_template = CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")
        super().__init__(tokenizer, chat_template=chat_template)

    def _check_settings(self):
        """Checks the DKS and sampling settings, naming the setting and the value seen."""
        for name in ("num_keyframes", "keyframe_pooled_size", "max_frames", "frame_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be an integer of at least 1, got {getattr(self, name)!r}.")
        for name in ("keyframe_relevance_threshold", "keyframe_similarity_threshold"):
            if not -1.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"`{name}` is a cosine similarity and must lie in [-1, 1], got {getattr(self, name)}.")
        if not self.fps > 0:
            raise ValueError(f"`fps` must be positive, got {self.fps}.")

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values_videos", "video_frame_counts", "keyframe_mask", "query_embeds"]

    def __call__(self, text=None, videos=None, query=None, return_tensors="pt", device=None, **kwargs) -> BatchFeature:
        """
        Prepares prompts and their videos for the model.

        Args:
            text (`str` or `list[str]`):
                The prompts, chat template already applied, with one `<video>` placeholder per video. Plain questions
                without placeholders, one per video, are put into the chat template first (`question_prompt`).
            videos (*optional*):
                One video or a list of videos (or of per-prompt lists), in placeholder order. A video is a file path,
                a uint8 array or tensor of shape `(num_frames, height, width, 3)`, or a list of PIL images; given
                frames are taken as sampled at `fps` (only `max_frames` applies to them).
            query (`str` or `list[str]`, *optional*):
                The question each video's frames are ranked against, one for all videos or one per video. Defaults to
                the video's prompt without the placeholder; `apply_chat_template` passes the user's text.
            return_tensors (`str`, *optional*, defaults to `"pt"`):
                Only `"pt"` is supported.
            device (`str` or `torch.device`, *optional*):
                Where the keyframe selector runs (it is moved there); defaults to where it is. Outputs are on the CPU.
            kwargs:
                Passed to the tokenizer (`padding` defaults to `True`).

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
        if return_tensors != "pt":
            raise ValueError(f"`return_tensors` must be 'pt' (the video inputs are torch tensors), got {return_tensors!r}.")
        texts = self._check_text(text)
        videos = flatten_videos(videos)
        if videos and self._are_bare_questions(texts, videos):
            query = texts if query is None else query
            texts = [self.question_prompt(question) for question in texts]
        self._check_video_placeholders(texts, videos)
        queries = self._video_queries(texts, len(videos), query)
        video_inputs = self._process_videos(videos, queries, device) if videos else {}
        prompts = self._expand_video_placeholders(texts, video_inputs)
        kwargs.setdefault("padding", True)
        text_inputs = self.tokenizer(prompts, return_tensors=return_tensors, **kwargs)
        return BatchFeature(data={**text_inputs, **video_inputs}, tensor_type=return_tensors)

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

    def load_video(self, video) -> DecodedVideo:
        """
        Decodes (or takes) the sampled frames of one video and resizes each, as soon as it is read, for SigLIP and for
        the keyframe selector.

        Args:
            video: a file path, a uint8 array or tensor of shape `(num_frames, height, width, 3)`, or a list of PIL
                images.

        Returns:
            `DecodedVideo` whose `frames` are `(siglip_frame, clip_frame)` pairs of `torch.ByteTensor` of shapes
            `(3, frame_size, frame_size)` and `(3, 224, 224)`.
        """
        if isinstance(video, (str, os.PathLike)):
            return decode_video(video, fps=self.fps, max_frames=self.max_frames, frame_transform=self.resize_frame)
        if isinstance(video, (np.ndarray, torch.Tensor)):
            if video.dtype not in (np.uint8, torch.uint8) or video.shape[-1] != 3 or video.shape[0] == 0:
                raise ValueError(
                    f"A video array must be uint8 of shape (num_frames, height, width, 3) with at least one frame, got "
                    f"dtype {video.dtype} and shape {tuple(video.shape)}."
                )
            video = np.asarray(video)
        frame_indices = sample_frame_indices(len(video), self.fps, fps=self.fps, max_frames=self.max_frames)
        frames = [self.resize_frame(self._to_image(video[index])) for index in frame_indices]
        metadata = VideoMetadata(total_num_frames=len(video), fps=self.fps, frames_indices=frame_indices.tolist())
        return DecodedVideo(frames=frames, timestamps_seconds=(frame_indices / self.fps).tolist(), metadata=metadata)

    @staticmethod
    def _to_image(frame) -> Image.Image:
        """A given frame as a PIL image."""
        return frame if isinstance(frame, Image.Image) else Image.fromarray(frame)

    def resize_frame(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        """Resizes one frame for SigLIP and for the keyframe selector's CLIP."""
        return self.video_processor.resize_frame(image), clip_resize_and_crop(image, self.keyframe_selector.image_size)

    def select_keyframes(self, clip_frames: torch.Tensor, query: str) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Runs the differential keyframe selection of one video.

        Args:
            clip_frames (`torch.ByteTensor` of shape `(num_frames, 3, 224, 224)`): the frames for CLIP.
            query (`str`): the question.

        Returns:
            `tuple(torch.BoolTensor, torch.FloatTensor)`: the `keyframe_mask` of shape `(num_frames,)` and the
            unnormalised CLIP `query_embeds` of shape `(embed_dim,)`, both on the CPU.
        """
        frame_embeds = self.keyframe_selector.encode_frames(clip_frames)
        query_embeds = self.keyframe_selector.encode_query(query)
        keyframe_mask = select_keyframes(
            frame_embeds,
            query_embeds,
            num_keyframes=self.num_keyframes,
            relevance_threshold=self.keyframe_relevance_threshold,
            similarity_threshold=self.keyframe_similarity_threshold,
        )
        return keyframe_mask, query_embeds.cpu()

    def _process_videos(self, videos: list, queries: list[str], device) -> dict[str, torch.Tensor]:
        """Loads every video, selects its keyframes and gathers the video inputs of the model."""
        if self.keyframe_selector is None:
            raise ValueError(
                "This processor has no `keyframe_selector`; load it with `ViLaMPProcessor.from_pretrained` from a "
                "directory holding keyframe_selector.safetensors, or pass `keyframe_selector=`."
            )
        if device is not None:
            self.keyframe_selector.to(device)
        pixel_values_videos, keyframe_masks, query_embeds = [], [], []
        for video_index, (video, query) in enumerate(zip(videos, queries)):
            try:
                decoded_video = self.load_video(video)
            except ValueError as error:
                raise ValueError(f"`videos[{video_index}]`: {error}") from error
            siglip_frames, clip_frames = zip(*decoded_video.frames)
            keyframe_mask, video_query_embeds = self.select_keyframes(torch.stack(clip_frames), query)
            pixel_values_videos.append(torch.stack(siglip_frames))
            keyframe_masks.append(keyframe_mask)
            query_embeds.append(video_query_embeds)
        return {
            "pixel_values_videos": torch.cat(pixel_values_videos),
            "video_frame_counts": torch.tensor([len(frames) for frames in pixel_values_videos], dtype=torch.int64),
            "keyframe_mask": torch.cat(keyframe_masks),
            "query_embeds": torch.stack(query_embeds),
        }

    def replace_video_token(self, video_inputs: dict, video_idx: int) -> str:
        """The expanded placeholder of video `video_idx`: `num_video_tokens` copies of the video token."""
        return self.video_token * self._num_video_tokens_of(video_inputs, video_idx)

    def _num_video_tokens_of(self, video_inputs: dict, video_idx: int) -> int:
        """The placeholder count of video `video_idx` of processed video inputs."""
        num_frames = int(video_inputs["video_frame_counts"][video_idx])
        return num_video_tokens(num_frames, min(self.num_keyframes, num_frames), self.keyframe_pooled_size)

    def _expand_video_placeholders(self, texts: list[str], video_inputs: dict) -> list[str]:
        """Replaces each placeholder, in order over the batch, by its expanded form."""
        prompts, video_idx = [], 0
        for prompt in texts:
            pieces = prompt.split(self.video_token)
            expanded = pieces[0]
            for piece in pieces[1:]:
                expanded += self.replace_video_token(video_inputs, video_idx) + piece
                video_idx += 1
            prompts.append(expanded)
        return prompts

    def _get_num_multimodal_tokens(self, video_sizes=None, **kwargs) -> MultiModalData:
        """
        Number of placeholder tokens of videos of the given sizes, without any pixels.

        Args:
            video_sizes (`list[list[int]]`, *optional*): `(num_frames, height, width)` per video, `num_frames` counted
                after sampling.

        Returns:
            `MultiModalData` with `num_video_tokens`, a list with one count per video.
        """
        vision_data = {}
        if video_sizes is not None:
            vision_data["num_video_tokens"] = [
                num_video_tokens(num_frames, min(self.num_keyframes, num_frames), self.keyframe_pooled_size)
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
        query=None,
        return_labels=False,
        **kwargs,
    ):
        """
        Renders chat messages with the chat template and, with `tokenize=True`, processes them with their videos.

        Video blocks are `{"type": "video", "path": ...}` (or `"video"`: a path, an array or a list of images). By
        default each video's question is the text of the message that holds it.

        Args:
            conversation (`list[dict]` or `list[list[dict]]`): one conversation or a batch of them.
            chat_template (`str`, *optional*): overrides the processor's template.
            add_generation_prompt (`bool`, *optional*, defaults to `False`): end with the assistant turn's header.
            continue_final_message (`bool`, *optional*, defaults to `False`): leave the last message open.
            tokenize (`bool`, *optional*, defaults to `False`): process the rendered prompts and videos.
            return_dict (`bool`, *optional*, defaults to `False`): return the whole `BatchFeature`, not only
                `input_ids`.
            query (`str` or `list[str]`, *optional*): overrides the questions, as in `__call__`.
            return_labels (`bool`, *optional*, defaults to `False`): add `labels` for training (needs `tokenize=True`
                and `return_dict=True`): the ids of each assistant answer and of the `<|im_end|>` that closes it,
                -100 everywhere else (system and user turns, role headers, video placeholders, padding).
            kwargs: passed to `__call__` (`return_tensors`, `device`, tokenizer arguments).

        Returns:
            The prompt (`str` or `list[str]`), or with `tokenize=True` the `input_ids` or the `BatchFeature` (with
            **labels**, `torch.LongTensor` of shape `(batch_size, sequence_length)`, when `return_labels=True`).
        """
        if return_labels and not (tokenize and return_dict):
            raise ValueError(
                "`return_labels=True` needs `tokenize=True` and `return_dict=True`: the labels are returned next to the "
                f"`input_ids` in the `BatchFeature`; got tokenize={tokenize}, return_dict={return_dict}."
            )
        if return_labels and (add_generation_prompt or continue_final_message):
            raise ValueError(
                "`return_labels=True` trains on complete conversations: leave `add_generation_prompt` and "
                "`continue_final_message` False and end the conversation with the assistant's answer."
            )
        prompt = super().apply_chat_template(
            conversation,
            chat_template=chat_template,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tokenize=False,
        )
        if not tokenize:
            return prompt
        is_batched = isinstance(conversation[0], (list, tuple))
        conversations = conversation if is_batched else [conversation]
        videos, video_queries = [], []
        for messages in conversations:
            for message in messages:
                message_videos, message_text = self._message_videos_and_text(message)
                videos.extend(message_videos)
                video_queries.extend([message_text] * len(message_videos))
        inputs = self(text=prompt, videos=videos or None, query=video_queries if query is None else query, **kwargs)
        if return_labels:
            inputs["labels"] = self.answer_labels(conversations, inputs, chat_template=chat_template)
        return inputs if return_dict else inputs["input_ids"]

    def _render(self, messages: list[dict], chat_template=None, add_generation_prompt=False) -> str:
        """One conversation rendered with the chat template, video blocks reduced to their type."""
        messages = [
            {
                "role": message["role"],
                "content": message["content"]
                if isinstance(message.get("content"), str)
                else [
                    {"type": block["type"], **({"text": block["text"]} if block.get("type") == "text" else {})}
                    for block in message["content"]
                ],
            }
            for message in messages
        ]
        return self.tokenizer.apply_chat_template(
            messages,
            chat_template=chat_template or self.chat_template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

    def answer_character_spans(self, messages: list[dict], chat_template=None) -> list[tuple[int, int]]:
        """
        Where the assistant answers lie in the rendered conversation.

        Args:
            messages (`list[dict]`): one conversation.
            chat_template (`str`, *optional*): overrides the processor's template.

        Returns:
            `list[tuple[int, int]]`: for each assistant message, the `[start, end)` character range of the rendered
            conversation from the first character after its role header through its closing `<|im_end|>`.
        """
        text = self._render(messages, chat_template)
        spans = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            # the answer is what the assistant turn adds after its header: render the conversation up to the header
            header_end = len(self._render(messages[:index], chat_template, add_generation_prompt=True)) if index else 0
            turn = self._render(messages[: index + 1], chat_template)
            end = turn.rfind(END_OF_TURN)
            if not text.startswith(turn) or end < header_end:
                raise ValueError(
                    f"Cannot find assistant message {index} in the rendered conversation: the chat template must render "
                    f"each turn after the previous ones and close it with `{END_OF_TURN}`."
                )
            spans.append((header_end, end + len(END_OF_TURN)))
        return spans

    def answer_labels(self, conversations: list[list[dict]], inputs: BatchFeature, chat_template=None) -> torch.Tensor:
        """
        Training labels for processed conversations: the assistant answers' ids, -100 elsewhere.

        Args:
            conversations (`list[list[dict]]`): the conversations, as passed to `apply_chat_template`.
            inputs (`BatchFeature`): what `apply_chat_template(conversations, tokenize=True, return_dict=True)` returned.
            chat_template (`str`, *optional*): the template they were rendered with.

        Returns:
            `torch.LongTensor` of shape `(batch_size, sequence_length)`, aligned with `inputs["input_ids"]`.
        """
        labels = torch.full_like(inputs["input_ids"], IGNORE_INDEX)
        video_idx = 0
        for row, messages in enumerate(conversations):
            spans = self.answer_character_spans(messages, chat_template)
            if not spans:
                raise ValueError(
                    f"Conversation {row} has no assistant message, so nothing to learn; end it with "
                    '`{"role": "assistant", "content": [{"type": "text", "text": answer}]}`.'
                )
            encoding = self.tokenizer(self._render(messages, chat_template), return_offsets_mapping=True)
            row_ids, row_labels = [], []
            for token_id, (start, _) in zip(encoding["input_ids"], encoding["offset_mapping"]):
                if token_id == self.video_token_id:
                    count = self._num_video_tokens_of(inputs, video_idx)
                    video_idx += 1
                    row_ids += [token_id] * count
                    row_labels += [IGNORE_INDEX] * count
                else:
                    is_answer = any(span_start <= start < span_end for span_start, span_end in spans)
                    row_ids.append(token_id)
                    row_labels.append(token_id if is_answer else IGNORE_INDEX)
            is_token = inputs["attention_mask"][row].bool()
            if row_ids != inputs["input_ids"][row][is_token].tolist():
                raise ValueError(
                    f"The tokens of conversation {row} differ from its `input_ids` ({len(row_ids)} against "
                    f"{int(is_token.sum())}), so its labels cannot be aligned; do not truncate when `return_labels=True`."
                )
            labels[row, is_token] = torch.tensor(row_labels, dtype=labels.dtype)
        return labels

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
        """The processor settings saved in `processor_config.json` (the tokenizer, chat template and keyframe selector
        have their own files)."""
        output = {
            name: getattr(self, name)
            for name in (
                "video_token",
                "num_keyframes",
                "keyframe_relevance_threshold",
                "keyframe_similarity_threshold",
                "keyframe_pooled_size",
                "fps",
                "max_frames",
                "frame_size",
            )
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
    def from_pretrained(cls, pretrained_model_name_or_path, device="cpu", **kwargs):
        """
        Loads the processor and its keyframe selector from a directory or a Hub repository.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): the directory or repository.
            device (`str` or `torch.device`, *optional*, defaults to `"cpu"`): where the keyframe selector runs.
            kwargs: passed to `ProcessorMixin.from_pretrained` (settings override the saved ones).
        """
        processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        hub_kwargs = {name: kwargs[name] for name in HUB_KWARGS if name in kwargs}
        processor.keyframe_selector = KeyframeSelector.from_pretrained(
            pretrained_model_name_or_path, device=device, **hub_kwargs
        )
        return processor


__all__ = ["IGNORE_INDEX", "ViLaMPProcessor", "num_video_tokens"]
