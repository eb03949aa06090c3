from .keyframe_selection import (
    KeyframeSelector,
    clip_resize_and_crop,
    fill_keyframe_slots,
    frame_relevance_scores,
    greedy_keyframe_selection,
    normalize_clip_pixels,
    select_keyframes,
)
from .processing_vilamp import ViLaMPProcessor, num_video_tokens
from .video_decoding import DecodedVideo, decode_video, sample_frame_indices
from .video_processing_vilamp import ViLaMPVideoProcessor

__all__ = [
    "DecodedVideo",
    "KeyframeSelector",
    "ViLaMPProcessor",
    "ViLaMPVideoProcessor",
    "clip_resize_and_crop",
    "decode_video",
    "fill_keyframe_slots",
    "frame_relevance_scores",
    "greedy_keyframe_selection",
    "normalize_clip_pixels",
    "num_video_tokens",
    "sample_frame_indices",
    "select_keyframes",
]
