from .keyframe_selection import (
    KeyframeSelection,
    KeyframeSelector,
    fill_keyframe_slots,
    frame_relevance_scores,
    greedy_keyframe_selection,
    normalize_clip_pixels,
    rank_keyframes,
    resolve_device,
    select_keyframes,
)
from .processing_vilamp import IGNORE_INDEX, ViLaMPProcessor, num_video_tokens
from .training_data import ViLaMPDataCollator, read_video_qa_file, video_qa_conversation
from .video_cache import VideoCache, VideoCacheWarning
from .video_decoding import DecodedVideo, decode_video, sample_frame_indices
from .video_processing_vilamp import LoadedVideo, ProgressCallback, ViLaMPVideoProcessor, clip_resize_and_crop

__all__ = [
    "DecodedVideo",
    "IGNORE_INDEX",
    "KeyframeSelection",
    "KeyframeSelector",
    "LoadedVideo",
    "ProgressCallback",
    "ViLaMPDataCollator",
    "ViLaMPProcessor",
    "ViLaMPVideoProcessor",
    "VideoCache",
    "VideoCacheWarning",
    "clip_resize_and_crop",
    "decode_video",
    "fill_keyframe_slots",
    "frame_relevance_scores",
    "greedy_keyframe_selection",
    "normalize_clip_pixels",
    "num_video_tokens",
    "rank_keyframes",
    "read_video_qa_file",
    "resolve_device",
    "sample_frame_indices",
    "select_keyframes",
    "video_qa_conversation",
]
