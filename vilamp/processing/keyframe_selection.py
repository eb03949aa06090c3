"""Differential keyframe selection (DKS): CLIP relevance ranking, redundancy skipping and the even fill of the rest.

`KeyframeSelector` wraps the open_clip CLIP model that embeds frames and the question. The selection itself is a set
of pure tensor functions (`select_keyframes`, built from `greedy_keyframe_selection` and `fill_keyframe_slots`, and
`rank_keyframes`, which also keeps what the ranking saw) that reproduce the original `SeqFrameSelector` (see the
reference README, section (iv)) without an N x N matrix. The frames come resized and cropped for CLIP from the video
processor (`clip_resize_and_crop`).
"""

import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

KEYFRAME_SELECTOR_WEIGHTS_NAME = "keyframe_selector.safetensors"
KEYFRAME_SELECTOR_CONFIG_NAME = "keyframe_selector_config.json"

# CLIPImageProcessor settings of the original (OpenAI CLIP ViT-B/32 preprocessor_config.json).
CLIP_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize_clip_pixels(clip_frames: torch.Tensor) -> torch.Tensor:
    """
    Rescales and normalises CLIP frames with the same float arithmetic as `CLIPImageProcessor`.

    Args:
        clip_frames (`torch.ByteTensor` of shape `(num_frames, 3, height, width)`).

    Returns:
        `torch.FloatTensor` of shape `(num_frames, 3, height, width)`: the CLIP pixel values.
    """
    # transformers rescales in float64 and casts to float32 before normalising in float32
    pixel_values = (clip_frames.to(torch.float64) * (1 / 255)).to(torch.float32)
    mean = torch.tensor(CLIP_IMAGE_MEAN, dtype=torch.float32, device=clip_frames.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_IMAGE_STD, dtype=torch.float32, device=clip_frames.device).view(1, 3, 1, 1)
    return (pixel_values - mean) / std


def frame_relevance_scores(frame_embeds: torch.Tensor, query_embeds: torch.Tensor) -> torch.Tensor:
    """
    Cosine similarity of every frame to the query (`f2t_scores` in the original).

    Args:
        frame_embeds (`torch.FloatTensor` of shape `(num_frames, embed_dim)`).
        query_embeds (`torch.FloatTensor` of shape `(embed_dim,)`).

    Returns:
        `torch.FloatTensor` of shape `(num_frames,)`.
    """
    frame_embeds = F.normalize(frame_embeds.float(), p=2, dim=-1)
    query_embeds = F.normalize(query_embeds.float().reshape(1, -1), p=2, dim=-1)
    return (frame_embeds @ query_embeds.T).reshape(-1)


def greedy_keyframe_selection(
    frame_embeds: torch.Tensor,
    query_embeds: torch.Tensor,
    *,
    num_keyframes: int,
    relevance_threshold: float,
    similarity_threshold: float,
) -> torch.Tensor:
    """
    Walks the frames from the most to the least relevant to the query and keeps a frame unless its cosine similarity
    to a kept frame exceeds `similarity_threshold`; stops at the first frame whose relevance is below
    `relevance_threshold` or once `num_keyframes` frames are kept (the greedy loop of the original `SeqFrameSelector`).

    Only the similarities of each kept frame to all frames are computed (at most `num_keyframes` rows), never the
    N x N matrix: a frame is skipped exactly when one of these rows exceeds the threshold at its position.

    Args:
        frame_embeds (`torch.FloatTensor` of shape `(num_frames, embed_dim)`): CLIP image embeddings (any norm).
        query_embeds (`torch.FloatTensor` of shape `(embed_dim,)`): the CLIP text embedding (any norm).
        num_keyframes (`int`): at most this many frames are kept.
        relevance_threshold (`float`): frames with relevance strictly below it end the walk.
        similarity_threshold (`float`): frames strictly more similar than it to a kept frame are skipped.

    Returns:
        `torch.BoolTensor` of shape `(num_frames,)` on the CPU: the kept frames.
    """
    return _greedy_walk(
        frame_embeds,
        frame_relevance_scores(frame_embeds, query_embeds),
        num_keyframes=num_keyframes,
        relevance_threshold=relevance_threshold,
        similarity_threshold=similarity_threshold,
    )


def _greedy_walk(
    frame_embeds: torch.Tensor,
    relevance_scores: torch.Tensor,
    *,
    num_keyframes: int,
    relevance_threshold: float,
    similarity_threshold: float,
) -> torch.Tensor:
    """The walk of `greedy_keyframe_selection` over relevance scores already computed."""
    normalized_frames = F.normalize(frame_embeds.float(), p=2, dim=-1)
    sorted_scores, sorted_indices = torch.sort(relevance_scores, descending=True)
    num_frames = relevance_scores.shape[0]
    is_redundant = np.zeros(num_frames, dtype=bool)
    selection_mask = np.zeros(num_frames, dtype=bool)
    num_selected = 0
    for score, frame_index in zip(sorted_scores.tolist(), sorted_indices.tolist()):
        if num_selected >= num_keyframes or score < relevance_threshold:
            break
        if is_redundant[frame_index]:
            continue
        selection_mask[frame_index] = True
        num_selected += 1
        similarity_to_frame = normalized_frames @ normalized_frames[frame_index]
        is_redundant |= (similarity_to_frame > similarity_threshold).cpu().numpy()
        is_redundant[frame_index] = True
    return torch.from_numpy(selection_mask)


def unselected_runs(selection_mask: torch.Tensor) -> list[tuple[int, int]]:
    """Maximal runs of unselected frames, as `(first_frame, last_frame)` pairs in temporal order."""
    is_unselected = np.concatenate([[False], ~selection_mask.cpu().numpy().astype(bool), [False]])
    edges = np.flatnonzero(np.diff(is_unselected.astype(np.int8)))
    return [(int(start), int(stop) - 1) for start, stop in zip(edges[::2], edges[1::2])]


def fill_keyframe_slots(selection_mask: torch.Tensor, num_keyframes: int) -> torch.Tensor:
    """
    Tops a selection up to `min(num_keyframes, num_frames)` keyframes, spreading the extra ones evenly over the gaps
    between selected frames (`distribute_frames` of the original).

    The spacing `D` is the smallest one for which `sum(ceil(gap_length / D) - 1)` extra frames fit in the budget; each
    gap receives `k = ceil(gap_length / D) - 1` frames at `first_frame + ceil(gap_length / (k + 1)) * (i + 1)`. What is
    left of the budget is spent on the latest unselected frames.

    Args:
        selection_mask (`torch.BoolTensor` of shape `(num_frames,)`): the frames already selected.
        num_keyframes (`int`): the number of keyframes wanted.

    Returns:
        `torch.BoolTensor` of shape `(num_frames,)` with exactly `min(num_keyframes, num_frames)` frames set when the
        selection has at most that many.
    """
    keyframe_mask = selection_mask.cpu().numpy().astype(bool)
    num_frames = keyframe_mask.shape[0]
    budget = num_keyframes - int(keyframe_mask.sum())
    gap_lengths = [last - first + 1 for first, last in unselected_runs(selection_mask)]

    def num_extra_frames(spacing: int) -> int:
        return sum(math.ceil(length / spacing) - 1 for length in gap_lengths)

    low, high = 1, max(num_frames, 1)
    while low < high:
        middle = (low + high) // 2
        if num_extra_frames(middle) <= budget:
            high = middle
        else:
            low = middle + 1
    spacing = low

    num_placed = 0
    for first, last in unselected_runs(selection_mask):
        length = last - first + 1
        num_in_gap = math.ceil(length / spacing) - 1
        step = math.ceil(length / (num_in_gap + 1))
        for i in range(num_in_gap):
            keyframe_mask[min(first + step * (i + 1), last)] = True
        num_placed += num_in_gap

    remaining = budget - num_placed
    if remaining > 0:
        latest_unselected = np.flatnonzero(~keyframe_mask)[::-1][:remaining]
        keyframe_mask[latest_unselected] = True
    return torch.from_numpy(keyframe_mask)


def select_keyframes(
    frame_embeds: torch.Tensor,
    query_embeds: torch.Tensor,
    *,
    num_keyframes: int,
    relevance_threshold: float,
    similarity_threshold: float,
) -> torch.Tensor:
    """
    Differential keyframe selection of one video, as the original code does it.

    Args:
        frame_embeds (`torch.FloatTensor` of shape `(num_frames, embed_dim)`): CLIP image embeddings (any norm).
        query_embeds (`torch.FloatTensor` of shape `(embed_dim,)`): the CLIP text embedding (any norm).
        num_keyframes (`int`): keyframes per video K (`max_frame_num` in the original).
        relevance_threshold (`float`): relevance floor of the ranking (`f2t_thrd` in the original).
        similarity_threshold (`float`): redundancy cap between keyframes (`f2f_thrd` in the original).

    Returns:
        `torch.BoolTensor` of shape `(num_frames,)` on the CPU with exactly `min(num_keyframes, num_frames)` keyframes.
    """
    selection_mask = greedy_keyframe_selection(
        frame_embeds,
        query_embeds,
        num_keyframes=num_keyframes,
        relevance_threshold=relevance_threshold,
        similarity_threshold=similarity_threshold,
    )
    return fill_keyframe_slots(selection_mask, num_keyframes)


@dataclass
class KeyframeSelection:
    """
    The differential keyframe selection of one video, as `rank_keyframes` returns it (on the CPU).

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


def rank_keyframes(
    frame_embeds: torch.Tensor,
    query_embeds: torch.Tensor,
    *,
    num_keyframes: int,
    relevance_threshold: float,
    similarity_threshold: float,
) -> KeyframeSelection:
    """
    `select_keyframes`, keeping what the ranking saw: every frame's relevance and the keyframes it chose.

    Args:
        frame_embeds (`torch.FloatTensor` of shape `(num_frames, embed_dim)`): CLIP image embeddings (any norm).
        query_embeds (`torch.FloatTensor` of shape `(embed_dim,)`): the unnormalised CLIP text embedding.
        num_keyframes, relevance_threshold, similarity_threshold: as in `select_keyframes`.

    Returns:
        [`KeyframeSelection`] on the CPU.
    """
    relevance_scores = frame_relevance_scores(frame_embeds, query_embeds)
    ranked_keyframe_mask = _greedy_walk(
        frame_embeds,
        relevance_scores,
        num_keyframes=num_keyframes,
        relevance_threshold=relevance_threshold,
        similarity_threshold=similarity_threshold,
    )
    return KeyframeSelection(
        keyframe_mask=fill_keyframe_slots(ranked_keyframe_mask, num_keyframes),
        ranked_keyframe_mask=ranked_keyframe_mask,
        relevance_scores=relevance_scores.cpu(),
        query_embeds=query_embeds.cpu(),
    )


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


def _import_open_clip():
    """Imports open_clip, naming the package to install when it is missing."""
    try:
        import open_clip
    except ImportError as error:
        raise ImportError(
            "Keyframe selection needs open_clip: install it with `pip install open_clip_torch`."
        ) from error
    return open_clip


class KeyframeSelector:
    """
    The CLIP model of the keyframe selection, an open_clip `CLIP` with its bundled tokenizer (no download).

    Both encoders return the UNNORMALISED CLIP projections (`get_image_features` / `get_text_features` of the
    original): the DFM takes the raw text projection as its query, and the ranking normalises them itself.

    Args:
        model (`open_clip.model.CLIP`): the CLIP model, in eval mode.
        model_config (`dict`): its open_clip config (`embed_dim`, `quick_gelu`, `vision_cfg`, `text_cfg`).
        frame_batch_size (`int`, *optional*, defaults to 256): frames encoded at once.
    """

    def __init__(self, model, model_config: dict, frame_batch_size: int = 256):
        open_clip = _import_open_clip()
        self.model = model.eval()
        self.model_config = model_config
        self.frame_batch_size = frame_batch_size
        self.image_size = model_config["vision_cfg"]["image_size"]
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=model_config["text_cfg"]["context_length"])

    @classmethod
    def from_state_dict(
        cls, state_dict: dict[str, torch.Tensor], model_config: dict, device="cpu"
    ) -> "KeyframeSelector":
        """Builds the open_clip model from its config and loads `state_dict` into it (every key must match)."""
        open_clip = _import_open_clip()
        model = open_clip.model.CLIP(**model_config)
        model.load_state_dict(state_dict, strict=True)
        return cls(model.to(device), model_config)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, device="cpu", **kwargs
    ) -> "KeyframeSelector":
        """
        Loads `keyframe_selector_config.json` and `keyframe_selector.safetensors` from a local directory or a Hub
        repository (`kwargs` go to `transformers.utils.cached_file`).
        """
        from safetensors.torch import load_file
        from transformers.utils import cached_file

        config_file = cached_file(pretrained_model_name_or_path, KEYFRAME_SELECTOR_CONFIG_NAME, **kwargs)
        weights_file = cached_file(pretrained_model_name_or_path, KEYFRAME_SELECTOR_WEIGHTS_NAME, **kwargs)
        with open(config_file, encoding="utf-8") as file:
            model_config = json.load(file)
        return cls.from_state_dict(load_file(weights_file), model_config, device=device)

    def save_pretrained(self, save_directory: str | os.PathLike):
        """Writes `keyframe_selector_config.json` and `keyframe_selector.safetensors`, each through a temporary file."""
        from safetensors.torch import save_file

        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        state_dict = {key: tensor.detach().cpu().contiguous() for key, tensor in self.model.state_dict().items()}
        with tempfile.NamedTemporaryFile(dir=save_directory, suffix=".tmp", delete=False) as file:
            temporary_weights = file.name
        save_file(state_dict, temporary_weights)
        os.replace(temporary_weights, save_directory / KEYFRAME_SELECTOR_WEIGHTS_NAME)
        with tempfile.NamedTemporaryFile(
            "w", dir=save_directory, suffix=".tmp", delete=False, encoding="utf-8"
        ) as file:
            json.dump(self.model_config, file, indent=2, sort_keys=True)
            temporary_config = file.name
        os.replace(temporary_config, save_directory / KEYFRAME_SELECTOR_CONFIG_NAME)

    @property
    def device(self) -> torch.device:
        """The device of the CLIP model."""
        return next(self.model.parameters()).device

    def to(self, device) -> "KeyframeSelector":
        """Moves the CLIP model to `device`."""
        self.model.to(device)
        return self

    @torch.inference_mode()
    def encode_frames(self, clip_frames: torch.Tensor, progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """
        Embeds frames with the CLIP image tower, `frame_batch_size` at a time on the model's device.

        Args:
            clip_frames (`torch.ByteTensor` of shape `(num_frames, 3, image_size, image_size)`): frames resized and
                cropped by `clip_resize_and_crop`; each batch is normalised on the device by `normalize_clip_pixels`.
            progress (`Callable[[int], None]`, *optional*): called with the size of each batch once it is embedded.

        Returns:
            `torch.FloatTensor` of shape `(num_frames, embed_dim)` on the model's device (`clip_image_embeds`).
        """
        if clip_frames.dtype != torch.uint8:
            raise TypeError(
                f"`clip_frames` must be uint8 frames from `clip_resize_and_crop`, got dtype {clip_frames.dtype}."
            )
        frame_embeds = []
        for batch in clip_frames.split(self.frame_batch_size):
            pixel_values = normalize_clip_pixels(batch.to(self.device))
            frame_embeds.append(self.model.encode_image(pixel_values, normalize=False).float())
            if progress is not None:
                progress(len(batch))
        return torch.cat(frame_embeds)

    @torch.inference_mode()
    def encode_query(self, text: str) -> torch.Tensor:
        """
        Embeds the question with the CLIP text tower. Longer questions are truncated to the context length (77 tokens,
        the end token kept last), as the original `truncation=True, max_length=77` does.

        Args:
            text (`str`): the question.

        Returns:
            `torch.FloatTensor` of shape `(embed_dim,)` on the model's device (`clip_text_embeds`, unnormalised).
        """
        token_ids = self.tokenizer([text]).to(self.device)  # (1, context_length)
        return self.model.encode_text(token_ids, normalize=False).float()[0]

    def select(
        self,
        query: str,
        *,
        clip_frames: torch.Tensor | None = None,
        frame_embeds: torch.Tensor | None = None,
        num_keyframes: int,
        relevance_threshold: float,
        similarity_threshold: float,
        progress: Callable[[int], None] | None = None,
    ) -> KeyframeSelection:
        """
        The differential keyframe selection of one video against `query`, on the model's device: `rank_keyframes` of
        the frames' embeddings (`encode_frames` of `clip_frames`, or `frame_embeds`) and the question's.

        Args:
            query (`str`): the question the frames are ranked against.
            clip_frames (`torch.ByteTensor` of shape `(num_frames, 3, image_size, image_size)`, *optional*): the frames
                to embed; pass exactly one of `clip_frames` and `frame_embeds`.
            frame_embeds (`torch.FloatTensor` of shape `(num_frames, embed_dim)`, *optional*): the frames' embeddings.
            num_keyframes, relevance_threshold, similarity_threshold: as in `select_keyframes`.
            progress (`Callable[[int], None]`, *optional*): called with the size of each batch `encode_frames` embeds.

        Returns:
            [`KeyframeSelection`] on the CPU.
        """
        if (clip_frames is None) == (frame_embeds is None):
            raise ValueError("You must specify exactly one of `clip_frames` or `frame_embeds`.")
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"`query` must be the question to rank the frames against, got {query!r}.")
        if frame_embeds is None:
            frame_embeds = self.encode_frames(clip_frames, progress=progress)
        return rank_keyframes(
            frame_embeds,
            self.encode_query(query).to(frame_embeds.device),
            num_keyframes=num_keyframes,
            relevance_threshold=relevance_threshold,
            similarity_threshold=similarity_threshold,
        )


__all__ = [
    "KeyframeSelection",
    "KeyframeSelector",
    "fill_keyframe_slots",
    "frame_relevance_scores",
    "greedy_keyframe_selection",
    "normalize_clip_pixels",
    "rank_keyframes",
    "resolve_device",
    "select_keyframes",
]
