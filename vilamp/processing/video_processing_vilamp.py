"""Video processor of ViLaMP: frame sampling and the SigLIP resize (PIL bicubic to 384x384), kept as uint8.

The original `SigLipImageProcessor` resizes every frame to 384x384 with PIL bicubic (the aspect ratio is not kept),
rescales by 1/255 and normalises with mean = std = 0.5. The rescale and normalisation are left to the model, which
applies `(pixel_values_videos / 255 - 0.5) / 0.5` in float32 on its device: this gives the original pixel values bit
for bit and keeps the frames 4x smaller on the host (10K frames take 4.4 GB). torchvision's bicubic resize differs from
PIL's, so `_preprocess` resizes with PIL.
"""

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import PILImageResampling
from transformers.processing_utils import Unpack, VideosKwargs
from transformers.video_processing_utils import BaseVideoProcessor
from transformers.video_utils import VideoMetadata

from .video_decoding import DecodedVideo, decode_video, sample_frame_indices

# Standard `VideosKwargs` this video processor does not implement; passing one is an error, never a silent no-op.
UNSUPPORTED_VIDEO_KWARGS = ("do_center_crop", "crop_size", "do_pad", "video_metadata", "return_metadata")


class ViLaMPVideoProcessorInitKwargs(VideosKwargs, total=False):
    r"""
    max_frames (`int`, *optional*, defaults to 600):
        At most this many frames per video, evenly spread over the sampled ones.
    num_keyframes (`int`, *optional*, defaults to 32):
        Keyframes per video K (`max_frame_num` in the original; read by the processor's keyframe selection).
    keyframe_relevance_threshold (`float`, *optional*, defaults to 0.2):
        Frames whose CLIP similarity to the question is below this end the ranking (`f2t_thrd` in the original; read
        by the processor's keyframe selection).
    keyframe_similarity_threshold (`float`, *optional*, defaults to 0.85):
        A frame more similar than this to a chosen keyframe is skipped (`f2f_thrd` in the original; read by the
        processor's keyframe selection).
    decode_device (`str`, *optional*, defaults to `"cpu"`):
        Where video files are decoded: `"cpu"`, or `"cuda"` for NVDEC (PyAV's `cuda` hwaccel, no fallback). The
        frames are the same; on a 16-core machine the CPU was faster (README, "From a file to the answer").
    num_decoders (`int`, *optional*):
        Decoders run at once on spans of a video file cut at keyframes; by default one per 4 CPU cores for videos
        over a minute, else one.
    """

    max_frames: int | None
    num_keyframes: int | None
    keyframe_relevance_threshold: int | float | None
    keyframe_similarity_threshold: int | float | None
    decode_device: str | None
    num_decoders: int | None


def check_video_settings(settings: dict[str, Any]):
    """Checks sampling and keyframe settings (at init and per call), naming the setting, the value seen and the rule."""
    for name in UNSUPPORTED_VIDEO_KWARGS:
        if settings.get(name) not in (None, False):
            raise ValueError(
                f"`{name}` is not supported by ViLaMP, got {settings[name]!r}: frames are sampled at `fps` frames per "
                "second, at most `max_frames` per video, and resized to `size` without cropping."
            )
    for name in ("max_frames", "num_keyframes"):
        value = settings.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"`{name}` must be an integer of at least 1, got {value!r}.")
    for name in ("keyframe_relevance_threshold", "keyframe_similarity_threshold"):
        value = settings.get(name)
        if value is not None and not (isinstance(value, (int, float)) and -1.0 <= value <= 1.0):
            raise ValueError(f"`{name}` is a cosine similarity and must lie in [-1, 1], got {value!r}.")
    if settings.get("num_frames") is not None and settings.get("fps") is not None:
        raise ValueError("`num_frames` and `fps` are mutually exclusive arguments, please use only one!")
    num_frames = settings.get("num_frames")
    if num_frames is not None and (not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames < 1):
        raise ValueError(f"`num_frames` must be an integer of at least 1, got {num_frames!r}.")
    fps = settings.get("fps")
    if fps is not None and not (isinstance(fps, (int, float)) and fps > 0):
        raise ValueError(f"`fps` must be positive, got {fps!r}.")
    if settings.get("decode_device") not in (None, "cpu", "cuda"):
        raise ValueError(f"`decode_device` must be 'cpu' or 'cuda' (NVDEC), got {settings['decode_device']!r}.")
    num_decoders = settings.get("num_decoders")
    if num_decoders is not None and (not isinstance(num_decoders, int) or isinstance(num_decoders, bool) or num_decoders < 1):
        raise ValueError(f"`num_decoders` must be an integer of at least 1, got {num_decoders!r}.")


def video_to_frames(video) -> list:
    """
    The frames of one video given as frames: a list of PIL images, or a uint8 array or tensor of shape
    `(num_frames, height, width, 3)` or `(num_frames, 3, height, width)`, as `(height, width, 3)` arrays or images.
    """
    if isinstance(video, (list, tuple)):
        if len(video) == 0 or not all(isinstance(frame, Image.Image) for frame in video):
            raise ValueError("A video given as a list must be a non-empty list of PIL images.")
        return list(video)
    if isinstance(video, torch.Tensor):
        video = video.cpu().numpy()
    if not isinstance(video, np.ndarray):
        raise TypeError(
            f"A video must be a file path, a uint8 array or tensor or a list of PIL images, got {type(video).__name__}."
        )
    channels_last = video.ndim == 4 and video.shape[-1] == 3
    channels_first = video.ndim == 4 and video.shape[1] == 3
    if video.dtype != np.uint8 or len(video) == 0 or not (channels_last or channels_first):
        raise ValueError(
            "A video array must be uint8 of shape (num_frames, height, width, 3) or (num_frames, 3, height, width) "
            f"with at least one frame, got dtype {video.dtype} and shape {tuple(video.shape)}."
        )
    if channels_last and channels_first and video.shape[2] != 3:
        raise ValueError(
            f"The video array of shape {tuple(video.shape)} is ambiguous: both its second and last axes have 3 entries, "
            "so the channel axis is unknown. Pass the frames as PIL images or a tensor whose other axes are not 3."
        )
    return list(video) if channels_last else list(np.moveaxis(video, 1, -1))


class ViLaMPVideoProcessor(BaseVideoProcessor):
    r"""
    Samples the frames of each video at `fps` frames per second (at most `max_frames`) and resizes them for the SigLIP
    tower with PIL bicubic, as uint8. It also holds the keyframe settings of the processor's keyframe selection, so
    they are saved with it and can be overridden per call as video kwargs.

    Args:
        size (`dict[str, int]`, *optional*, defaults to `{"height": 384, "width": 384}`):
            Output height and width; the aspect ratio is not kept, as in the original.
        fps (`float`, *optional*, defaults to 1.0):
            Frames sampled per second of a video file (the original keeps every `int(average_fps / fps)`-th frame).
        do_sample_frames (`bool`, *optional*, defaults to `True`):
            Sample frames; with `False` every given frame (or decoded frame of a file) is kept.
        kwargs ([`ViLaMPVideoProcessorInitKwargs`]): `max_frames`, `num_keyframes`, `keyframe_relevance_threshold`,
            `keyframe_similarity_threshold` and the standard video kwargs.
    """

    resample = PILImageResampling.BICUBIC
    size = {"height": 384, "width": 384}
    default_to_square = True
    do_resize = True
    do_rescale = False
    do_normalize = False
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]
    do_convert_rgb = True
    do_sample_frames = True
    fps = 1.0
    max_frames = 600
    num_keyframes = 32
    keyframe_relevance_threshold = 0.2
    keyframe_similarity_threshold = 0.85
    decode_device = "cpu"
    num_decoders = None
    valid_kwargs = ViLaMPVideoProcessorInitKwargs
    model_input_names = ["pixel_values_videos", "video_frame_counts"]

    def __init__(self, **kwargs: Unpack[ViLaMPVideoProcessorInitKwargs]):
        super().__init__(**kwargs)
        check_video_settings({name: getattr(self, name, None) for name in self.valid_kwargs.__annotations__})

    def resize_frame(self, image: Image.Image, size: dict[str, int] | None = None, resample=None) -> torch.Tensor:
        """
        Resizes one RGB frame with PIL.

        Args:
            image (`PIL.Image.Image`): a frame of any size.
            size (`dict[str, int]`, *optional*): `height` and `width`; defaults to `self.size`.
            resample (`PILImageResampling`, *optional*): defaults to `self.resample` (bicubic).

        Returns:
            `torch.ByteTensor` of shape `(3, height, width)`.
        """
        size = self.size if size is None else size
        resample = self.resample if resample is None else resample
        resized = image.convert("RGB").resize((size["width"], size["height"]), resample=PILImageResampling(resample))
        return torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1)

    def load_video(
        self,
        video,
        *,
        fps: float | None = None,
        max_frames: int | None = None,
        num_frames: int | None = None,
        do_sample_frames: bool | None = None,
        decode_device: str | None = None,
        num_decoders: int | None = None,
        frame_transform: Callable[[Image.Image], Any] | None = None,
    ) -> DecodedVideo:
        """
        Decodes (or takes) the sampled frames of one video, streaming: each kept frame goes through `frame_transform`
        as soon as it is read.

        Args:
            video: a file path, a uint8 array or tensor of shape `(num_frames, height, width, 3)` or
                `(num_frames, 3, height, width)`, or a list of PIL images. Given frames are taken as sampled at `fps`,
                so only `max_frames` applies to them.
            fps (`float`, *optional*), max_frames (`int`, *optional*), do_sample_frames (`bool`, *optional*): default
                to the processor's settings.
            num_frames (`int`, *optional*): instead of sampling at `fps`, keep this many frames evenly spread over
                all frames (first and last included), as transformers' `num_frames`.
            decode_device (`str`, *optional*), num_decoders (`int`, *optional*): how a file is decoded; default to the
                processor's settings (see `decode_video`).
            frame_transform (`Callable`, *optional*): called on each kept frame (an RGB `PIL.Image.Image`); defaults to
                `resize_frame`.

        Returns:
            `DecodedVideo` whose `frames` hold what `frame_transform` returned.
        """
        check_video_settings({"fps": fps, "num_frames": num_frames, "max_frames": max_frames})
        given_fps = self.fps if fps is None else fps
        max_frames = self.max_frames if max_frames is None else max_frames
        do_sample_frames = self.do_sample_frames if do_sample_frames is None else do_sample_frames
        frame_transform = frame_transform or self.resize_frame
        if not do_sample_frames:
            # every frame: a stride of one frame and no cap
            fps, max_frames = float("inf"), np.iinfo(np.int64).max
        elif num_frames is not None:
            # a stride of one frame thinned evenly to `num_frames`
            fps, max_frames = float("inf"), num_frames
        else:
            fps = given_fps
        if isinstance(video, (str, os.PathLike)):
            return decode_video(
                video,
                fps=fps,
                max_frames=max_frames,
                frame_transform=frame_transform,
                device=self.decode_device if decode_device is None else decode_device,
                num_decoders=self.num_decoders if num_decoders is None else num_decoders,
            )
        frames = video_to_frames(video)
        frame_indices = sample_frame_indices(len(frames), given_fps, fps=fps, max_frames=max_frames)
        fps = given_fps
        kept = [frame_transform(self._to_image(frames[index])) for index in frame_indices]
        metadata = VideoMetadata(total_num_frames=len(frames), fps=fps, frames_indices=frame_indices.tolist())
        return DecodedVideo(frames=kept, timestamps_seconds=(frame_indices / fps).tolist(), metadata=metadata)

    @staticmethod
    def _to_image(frame) -> Image.Image:
        """A given frame as a PIL image."""
        return frame if isinstance(frame, Image.Image) else Image.fromarray(frame)

    def finish_frames(self, frames: torch.Tensor, **kwargs) -> torch.Tensor:
        """
        The optional steps after the resize: `do_rescale` and `do_normalize` (both off by default, the model does them
        on its device).

        Args:
            frames (`torch.ByteTensor` of shape `(num_frames, 3, height, width)`): resized frames.
            kwargs: `do_rescale`, `rescale_factor`, `do_normalize`, `image_mean`, `image_std`; default to the
                processor's.

        Returns:
            `torch.Tensor` of shape `(num_frames, 3, height, width)`: uint8 unless a rescale or normalisation was asked.
        """
        settings = {
            name: kwargs[name] if kwargs.get(name) is not None else getattr(self, name)
            for name in ("do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std")
        }
        if not (settings["do_rescale"] or settings["do_normalize"]):
            return frames
        return self.rescale_and_normalize(
            frames.float(),
            settings["do_rescale"],
            settings["rescale_factor"],
            settings["do_normalize"],
            settings["image_mean"],
            settings["image_std"],
        )

    def __call__(self, videos, **kwargs: Unpack[ViLaMPVideoProcessorInitKwargs]) -> BatchFeature:
        """
        Samples and resizes videos.

        Args:
            videos: one video or a list of videos (file paths, uint8 arrays or tensors of shape
                `(num_frames, height, width, 3)` or `(num_frames, 3, height, width)`, or lists of PIL images).
            kwargs ([`ViLaMPVideoProcessorInitKwargs`]): override the processor's settings for this call.

        Returns:
            [`BatchFeature`] with **pixel_values_videos** (`torch.ByteTensor` of shape
            `(total_frames, 3, height, width)`, the frames of all videos concatenated) and **video_frame_counts**
            (`torch.LongTensor` of shape `(num_videos,)`).
        """
        return self.preprocess(videos, **kwargs)

    def preprocess(self, videos, **kwargs: Unpack[ViLaMPVideoProcessorInitKwargs]) -> BatchFeature:
        """Same as `__call__`."""
        unknown = set(kwargs) - set(self.valid_kwargs.__annotations__)
        if unknown:
            raise TypeError(
                f"Unexpected video kwargs {sorted(unknown)}; accepted: {sorted(self.valid_kwargs.__annotations__)}."
            )
        check_video_settings(kwargs)
        return_tensors = kwargs.pop("return_tensors", None)
        size = kwargs.get("size") or self.size
        resample = kwargs.get("resample") if kwargs.get("resample") is not None else self.resample
        do_resize = kwargs.get("do_resize") if kwargs.get("do_resize") is not None else self.do_resize
        videos = videos if isinstance(videos, (list, tuple)) and not _is_frame_list(videos) else [videos]

        def transform(image):
            if do_resize:
                return self.resize_frame(image, size, resample)
            return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)

        pixel_values_videos = []
        for video in videos:
            decoded = self.load_video(
                video,
                fps=kwargs.get("fps"),
                max_frames=kwargs.get("max_frames"),
                num_frames=kwargs.get("num_frames"),
                do_sample_frames=kwargs.get("do_sample_frames"),
                frame_transform=transform,
            )
            pixel_values_videos.append(self.finish_frames(torch.stack(decoded.frames), **kwargs))
        data = {
            "pixel_values_videos": torch.cat(pixel_values_videos),
            "video_frame_counts": torch.tensor([len(frames) for frames in pixel_values_videos], dtype=torch.int64),
        }
        return BatchFeature(data=data, tensor_type=return_tensors)


def _is_frame_list(videos) -> bool:
    """Whether a list is one video given as PIL images."""
    return len(videos) > 0 and all(isinstance(frame, Image.Image) for frame in videos)


__all__ = ["ViLaMPVideoProcessor", "ViLaMPVideoProcessorInitKwargs", "check_video_settings", "video_to_frames"]
