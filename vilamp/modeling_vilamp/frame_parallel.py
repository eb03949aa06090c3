"""Frame-parallel video encoding: the ranks of a `torch.distributed` group each encode a contiguous span of frames."""

import torch
from torch import distributed as dist
from torch.nn import functional as F


def resolve_process_group(process_group=None):
    """The group to split the frames over: `process_group`, or the default group, which must be initialised."""
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError(
            "Frame-parallel encoding needs `torch.distributed` to be initialised; start the script with `torchrun` and "
            "call `torch.distributed.init_process_group()` before `enable_frame_parallel`."
        )
    return dist.group.WORLD if process_group is None else process_group


def frame_span_bounds(num_frames: int, world_size: int) -> list[int]:
    """The first frame of each rank's span and one past the last: rank r encodes frames `bounds[r]` to `bounds[r + 1]`
    (a rank gets no frame when there are fewer frames than ranks)."""
    return [num_frames * rank // world_size for rank in range(world_size + 1)]


def encode_frames_across_ranks(
    model,
    video_frames,
    keyframe_mask: torch.Tensor,
    layout,
    projected_query: torch.Tensor,
    process_group,
) -> torch.Tensor:
    """
    Encodes the frames of a batch over the ranks of `process_group`, each rank a contiguous span of frames, and gathers
    the video tokens on every rank. Each rank runs [`ViLaMPModel.encode_frames`] on its span, so its tokens are those a
    single process computes for these frames.

    Args:
        model (`ViLaMPModel`): the same model on every rank.
        video_frames (`VideoFrames`): every frame of the batch as pixels or projected patches, the same on every rank;
            a rank moves only the frames it encodes to its device.
        keyframe_mask (`torch.BoolTensor` of shape `(num_frames,)`): which frames are keyframes, on the CPU.
        layout (`VideoTokenLayout`): the batch's token layout, from `plan_video_tokens`.
        projected_query (`torch.Tensor` of shape `(num_videos, hidden_size)`): each video's projected query.
        process_group (`torch.distributed.ProcessGroup`): the ranks that share the frames.

    Returns:
        `torch.Tensor` of shape `(num_video_tokens, hidden_size)`: the video tokens of the whole batch, on every rank.
    """
    vision_parameters = [
        parameter for name, parameter in model.named_parameters() if not name.startswith("language_model.")
    ]
    if torch.is_grad_enabled() and any(parameter.requires_grad for parameter in vision_parameters):
        raise ValueError(
            "Frame-parallel encoding gathers the other ranks' video tokens without their gradient, but gradients are "
            "enabled and the vision stage has trainable parameters; run the model under `torch.no_grad()` (as "
            "`generate` does) or freeze the vision tower, projector, feature merger and `image_newline`."
        )
    rank, world_size = dist.get_rank(process_group), dist.get_world_size(process_group)
    span_bounds = frame_span_bounds(keyframe_mask.shape[0], world_size)
    start, end = span_bounds[rank], span_bounds[rank + 1]

    # A non-keyframe whose reference frame lies in an earlier rank's span needs that frame's patches. This rank encodes
    # those frames again (or gathers their given features) rather than receiving them: the ranks then never wait on
    # each other before the final gather, and there are few such frames (under either rule they are keyframes or early
    # frames of the video, at most `num_keyframes` per video), against thousands of frames per span for a long video.
    earlier_references = sorted(
        {
            layout.reference_frames[frame]
            for frame in range(start, end)
            if not keyframe_mask[frame] and 0 <= layout.reference_frames[frame] < start
        }
    )
    kept_features = {}
    chunk_size = model.get_vision_chunk_size(max(len(earlier_references), 1))
    for chunk_start in range(0, len(earlier_references), chunk_size):
        chunk_frames = earlier_references[chunk_start : chunk_start + chunk_size]
        kept_features.update(zip(chunk_frames, model.get_frame_features_at(video_frames, chunk_frames)))
    span_tokens = model.encode_frames(video_frames, keyframe_mask, layout, projected_query, start, end, kept_features)

    # every rank knows every span's token count from the layout, so no sizes need exchanging before the gather;
    # the collective takes tensors of one size, so each span is padded to the longest
    token_bounds = torch.cat([layout.token_starts, torch.tensor([layout.num_tokens])])
    span_token_counts = [
        int(token_bounds[span_bounds[r + 1]] - token_bounds[span_bounds[r]]) for r in range(world_size)
    ]
    max_span_tokens = max(span_token_counts)
    padded_span_tokens = F.pad(span_tokens, (0, 0, 0, max_span_tokens - span_tokens.shape[0])).contiguous()
    gathered = [torch.empty_like(padded_span_tokens) for _ in range(world_size)]
    dist.all_gather(gathered, padded_span_tokens, group=process_group)
    return torch.cat([tokens[:count] for tokens, count in zip(gathered, span_token_counts)])


__all__ = ["encode_frames_across_ranks", "frame_span_bounds", "resolve_process_group"]
