"""Differential feature merging (DFM): one token per non-keyframe, weighted towards query-relevant, new patches."""

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from .configuration_vilamp import ViLaMPConfig


def reference_frame_indices(keyframe_mask: torch.Tensor, rule: Literal["original", "paper"]) -> torch.Tensor:
    """
    Returns, for each frame of one video, the frame whose patches the DFM compares it with.

    Args:
        keyframe_mask (`torch.BoolTensor` of shape `(num_frames,)`):
            Which frames of the video are keyframes.
        rule (`str`):
            `"original"`: the original code's rule, which the released weights were trained with. With keyframes
            `k_0 < k_1 < ...`, a frame `j` with `k_i <= j < k_(i+1)` is compared with frame `i` (the keyframe's
            ordinal used as a frame number), and a frame before `k_0` with itself. `"paper"`: the nearest preceding
            keyframe (a keyframe is its own), and -1 (no reference) before the first keyframe.

    Returns:
        `torch.LongTensor` of shape `(num_frames,)`: the reference frame index of each frame, -1 where there is none.
    """
    frame_indices = torch.arange(keyframe_mask.shape[0], device=keyframe_mask.device)
    if rule == "original":
        # the original code repeats `img_embs[idx]` where the paper means keyframe `idx`; see the reference README (i)
        keyframe_ordinals = keyframe_mask.long().cumsum(0) - 1
        return torch.where(keyframe_ordinals >= 0, keyframe_ordinals, frame_indices)
    if rule == "paper":
        keyframe_positions = torch.where(keyframe_mask, frame_indices, torch.full_like(frame_indices, -1))
        return keyframe_positions.cummax(0).values
    raise ValueError(f"`rule` must be 'original' or 'paper', got {rule!r}.")


class ViLaMPDifferentialFeatureMerger(nn.Module):
    """
    Merges the projected patches of each non-keyframe into one token. A patch weighs more when it is similar to the
    query and dissimilar to the same patch of the reference frame: `softmax((cos(W_q q, W_iq p) - cos(W_k r, W_ik p)) / tau)`
    over the patches, then the weighted sum of the patches (`SigPooling` in the original code).
    """

    def __init__(self, config: ViLaMPConfig):
        super().__init__()
        hidden_size = config.text_config.hidden_size
        self.linear_q = nn.Linear(config.query_embed_dim, hidden_size)
        self.linear_iq = nn.Linear(hidden_size, hidden_size)
        self.linear_k = nn.Linear(hidden_size, hidden_size)
        self.linear_ik = nn.Linear(hidden_size, hidden_size)
        self.tau = nn.Parameter(torch.tensor(0.01))

    def project_query(self, query_embeds: torch.Tensor) -> torch.Tensor:
        """Projects the CLIP query embeddings `(num_videos, query_embed_dim)` to `(num_videos, hidden_size)`, once per video."""
        return self.linear_q(query_embeds.to(self.linear_q.weight.dtype))

    def forward(
        self,
        frame_features: torch.Tensor,
        reference_features: torch.Tensor | None,
        projected_query: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            frame_features (`torch.Tensor` of shape `(num_frames, num_patches, hidden_size)`):
                Projected patches of the frames to merge.
            reference_features (`torch.Tensor` of shape `(num_frames, num_patches, hidden_size)`, *optional*):
                Projected patches of each frame's reference frame; `None` for frames without one (no redundancy term).
            projected_query (`torch.Tensor` of shape `(num_frames, hidden_size)`):
                The projected query of the video each frame belongs to.

        Returns:
            `torch.Tensor` of shape `(num_frames, hidden_size)`: one token per frame.
        """
        # scores and softmax in float32: tau is small (0.01 at init), so scores / tau overflow half precision
        query = projected_query.float().unsqueeze(1)  # (F, 1, H)
        scores = F.cosine_similarity(query, self.linear_iq(frame_features).float(), dim=-1)
        if reference_features is not None:
            redundancy = F.cosine_similarity(
                self.linear_k(reference_features).float(), self.linear_ik(frame_features).float(), dim=-1
            )
            scores = scores - redundancy
        weights = torch.softmax(scores / self.tau.float(), dim=-1)  # (F, P)
        return torch.einsum("fp,fph->fh", weights.to(frame_features.dtype), frame_features)


__all__ = ["ViLaMPDifferentialFeatureMerger", "reference_frame_indices"]
