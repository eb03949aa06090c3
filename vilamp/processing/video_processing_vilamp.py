"""Video processor of ViLaMP: opens, samples and decodes videos, and resizes each kept frame as it is read for SigLIP
(PIL bicubic to 384x384) and for the keyframe selector's CLIP (shortest edge to 224, centre crop), both kept as uint8.

The original `SigLipImageProcessor` resizes every frame to 384x384 with PIL bicubic (the aspect ratio is not kept),
rescales by 1/255 and normalises with mean = std = 0.5. The rescale and normalisation are left to the model, which
applies `(pixel_values_videos / 255 - 0.5) / 0.5` in float32 on its device: this gives the original pixel values bit
for bit and keeps the frames 4x smaller on the host (10K frames take 4.4 GB). torchvision's bicubic resize differs from
PIL's, so frames are resized with PIL.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import PILImageResampling
from transformers.processing_utils import Unpack, VideosKwargs
from transformers.video_processing_utils import BaseVideoProcessor
from transformers.video_utils import VideoMetadata

from .video_decoding import DECODE_DEVICES, DecodedVideo, decode_video, sample_frame_indices

# Called with the number of frames a stage has just finished (1 per resized frame, one CLIP batch at a time), so a
# progress bar's `update` (`tqdm.update`) can be passed as it is; decoding calls it from its worker threads.
ProgressCallback = Callable[[int], None]
# Video kwargs that change a video's frames (sampling, resizing, rescaling); the others (the keyframe selection's, and
# where and how files are decoded: every decoder gives the same frames) leave them as they are. A loaded video was
# loaded with these, and they key its entry in a `VideoCache`: a new setting that changes frames belongs here.
FRAME_SETTINGS = (
    "fps",
    "max_frames",
    "num_frames",
    "do_sample_frames",
    "size",
    "resample",
    "do_resize",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
)
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
    decode_device (`str`, *optional*, defaults to `"auto"`):
        Where video files are decoded. `"auto"`: videos of a minute or more on the CPU and the GPU's video decoders
        (NVDEC, through PyNvVideoCodec) together, where torch sees a GPU, PyNvVideoCodec is installed and NVDEC decodes
        the codec; otherwise on the CPU alone. `"cpu"`: on the CPU alone (PyAV). `"cuda"`: on NVDEC alone, an error
        naming why where it cannot. The frames are the same whichever decoders run (docs/performance.md, "Decoding on
        the CPU and the GPU's decoders").
    num_decoders (`int`, *optional*):
        Decoders run at once on spans of a video file cut at keyframes: CPU decoders for `"cpu"` and `"auto"` (by
        default one per 4 CPU cores for videos over a minute, else one; `"auto"` adds up to 4 NVDEC sessions), NVDEC
        sessions for `"cuda"` (by default 4, or the GPU's decoder count if lower).
    """

    max_frames: int | None
    num_keyframes: int | None
    keyframe_relevance_threshold: int | float | None
    keyframe_similarity_threshold: int | float | None
    decode_device: str | None
    num_decoders: int | None


def check_video_settings(settings: dict[str, Any]):
    """Checks sampling and keyframe settings where they enter (the video processor's init and `call_settings`), naming
    the setting, the value seen and the rule."""
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
    if settings.get("decode_device") not in (None, *DECODE_DEVICES):
        raise ValueError(
            "`decode_device` must be 'auto' (NVDEC and the CPU together where NVDEC is available), 'cpu' or 'cuda' "
            f"(NVDEC), got {settings['decode_device']!r}."
        )
    num_decoders = settings.get("num_decoders")
    if num_decoders is not None and (
        not isinstance(num_decoders, int) or isinstance(num_decoders, bool) or num_decoders < 1
    ):
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


def is_single_video(video) -> bool:
    """Whether `video` is one video: a path, a loaded video, a 4-dimensional array or tensor of frames, or a list of
    images."""
    if isinstance(video, (str, os.PathLike, LoadedVideo)):
        return True
    if isinstance(video, (np.ndarray, torch.Tensor)):
        return video.ndim == 4
    return isinstance(video, (list, tuple)) and len(video) > 0 and all(isinstance(item, Image.Image) for item in video)


def flatten_videos(videos) -> list:
    """Turns one video, a list of videos or a list of per-prompt lists of videos into a flat list of videos."""
    if videos is None:
        return []
    if is_single_video(videos):
        return [videos]
    if isinstance(videos, (list, tuple)) or (isinstance(videos, (np.ndarray, torch.Tensor)) and videos.ndim == 5):
        return [video for item in videos for video in flatten_videos(item)]
    raise TypeError(
        "`videos` must be a video file path, a `LoadedVideo`, a uint8 array or tensor of shape (num_frames, height, width, 3) or "
        f"(num_frames, 3, height, width), a list of PIL images, or a list of these; got {type(videos).__name__}."
    )


def video_frames_inputs(video_frames: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model inputs of a batch of videos' frames: `pixel_values_videos` (all frames concatenated) and
    `video_frame_counts` (`(num_videos,)`)."""
    return {
        "pixel_values_videos": torch.cat(video_frames),
        "video_frame_counts": torch.tensor([len(frames) for frames in video_frames], dtype=torch.int64),
    }


def clip_resize_and_crop(image: Image.Image, size: int = 224) -> torch.Tensor:
    """
    Resizes the shortest edge of a frame to `size` (PIL bicubic) and crops its centre, as `CLIPImageProcessor` does.

    Args:
        image (`PIL.Image.Image`): an RGB frame of any size.
        size (`int`, *optional*, defaults to 224): the CLIP image size.

    Returns:
        `torch.ByteTensor` of shape `(3, size, size)`.
    """
    width, height = image.size
    short_edge, long_edge = min(width, height), max(width, height)
    # transformers' `get_resize_output_image_size` truncates the long edge
    new_long_edge = int(size * long_edge / short_edge)
    new_width, new_height = (size, new_long_edge) if width <= height else (new_long_edge, size)
    resized = image.convert("RGB").resize((new_width, new_height), resample=Image.Resampling.BICUBIC)
    top, left = (new_height - size) // 2, (new_width - size) // 2
    cropped = np.asarray(resized)[top : top + size, left : left + size]
    return torch.from_numpy(cropped.copy()).permute(2, 0, 1)


@dataclass
class LoadedVideo:
    """
    One video as `ViLaMPVideoProcessor.load_video` returns it: its sampled frames resized for SigLIP and, when asked,
    for the keyframe selector's CLIP.

    Args:
        siglip_frames (`torch.ByteTensor` of shape `(num_frames, 3, height, width)`): the frames for the model (its
            `pixel_values_videos`); uint8 unless a rescale or normalisation was asked.
        clip_frames (`torch.ByteTensor` of shape `(num_frames, 3, image_size, image_size)` or `None`): the frames for
            the keyframe selector, resized and centre-cropped as `CLIPImageProcessor` does; `None` without
            `keyframe_image_size`.
        timestamps_seconds (`list[float]`): the presentation time of each sampled frame.
        metadata (`VideoMetadata`): `total_num_frames`, `fps`, `frames_indices` (the frame numbers kept) and, for a
            file, `width`, `height`, `duration` and `video_backend`.
        frame_embeds (`torch.FloatTensor` of shape `(num_frames, embed_dim)`, *optional*): the keyframe selector's
            CLIP image embeddings of the frames, once `ViLaMPProcessor.embed_frames` computed them (it then drops
            `clip_frames`); every question about the video ranks its frames against these.
    """

    siglip_frames: torch.Tensor
    clip_frames: torch.Tensor | None
    timestamps_seconds: list[float]
    metadata: VideoMetadata
    frame_embeds: torch.Tensor | None = None


def check_loaded_video(video: LoadedVideo, videos_kwargs: dict) -> LoadedVideo:
    """Returns a video given already loaded, checking that no frame setting comes with it (its frames were sampled and
    resized when it was loaded, so one would be silently ignored) and that its keyframes can be selected."""
    frame_settings = sorted(
        name for name, value in videos_kwargs.items() if name in FRAME_SETTINGS and value is not None
    )
    if frame_settings:
        raise ValueError(
            f"it is a `LoadedVideo`, whose frames were sampled and resized when it was loaded, so {frame_settings} "
            "cannot apply to it now; pass them to `load_video` instead."
        )
    if video.clip_frames is None and video.frame_embeds is None:
        raise ValueError(
            "the `LoadedVideo` has neither CLIP frames nor `frame_embeds`, so its keyframes cannot be selected; "
            "load it with `ViLaMPProcessor.load_video`, which makes the CLIP frames."
        )
    return video


class ViLaMPVideoProcessor(BaseVideoProcessor):
    r"""
    Opens, samples and decodes each video at `fps` frames per second (at most `max_frames`) and resizes every kept
    frame as it is read, for the SigLIP tower with PIL bicubic (uint8) and, when asked, for the keyframe selector's
    CLIP. It also holds the keyframe settings of the processor's keyframe selection, so they are saved with it and can
    be overridden per call as video kwargs.

    Args:
        size (`dict[str, int]`, *optional*, defaults to `{"height": 384, "width": 384}`):
            Output height and width; the aspect ratio is not kept, as in the original.
        fps (`float`, *optional*, defaults to 1.0):
            Frames sampled per second of a video file (the original keeps every `int(average_fps / fps)`-th frame).
        do_sample_frames (`bool`, *optional*, defaults to `True`):
            Sample frames; with `False` every given frame (or decoded frame of a file) is kept.
        kwargs ([`ViLaMPVideoProcessorInitKwargs`]): `max_frames`, `num_keyframes`, `keyframe_relevance_threshold`,
            `keyframe_similarity_threshold`, `decode_device`, `num_decoders` and the standard video kwargs.
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
    decode_device = "auto"
    num_decoders = None
    valid_kwargs = ViLaMPVideoProcessorInitKwargs
    model_input_names = ["pixel_values_videos", "video_frame_counts"]

    def __init__(self, **kwargs: Unpack[ViLaMPVideoProcessorInitKwargs]):
        super().__init__(**kwargs)
        check_video_settings({name: getattr(self, name, None) for name in self.valid_kwargs.__annotations__})

    @classmethod
    def from_processor_dict(cls, processor_dict: dict, **kwargs) -> "ViLaMPVideoProcessor":
        """The video processor of a `processor_config.json`: its nested `video_processor`, or the flat
        `LEGACY_VIDEO_SETTINGS` of processors saved before it was one; video settings in `kwargs` override them."""
        if isinstance(processor_dict.get("video_processor"), dict):
            video_processor_dict = processor_dict["video_processor"]
        else:
            legacy = {name: processor_dict[name] for name in LEGACY_VIDEO_SETTINGS if name in processor_dict}
            video_processor_dict = video_processor_with(None, legacy).to_dict()
        overrides = {name: kwargs[name] for name in cls.valid_kwargs.__annotations__ if name in kwargs}
        return cls.from_dict(video_processor_dict, **overrides)

    def call_settings(self, **overrides) -> dict[str, Any]:
        """
        The settings of one call: `overrides` (checked here, where they enter) over this video processor's own.

        Args:
            overrides ([`ViLaMPVideoProcessorInitKwargs`]): per-call values; `None` keeps the saved setting.

        Returns:
            `dict[str, Any]` with every video kwarg.
        """
        check_video_settings(overrides)
        return {
            name: overrides[name] if overrides.get(name) is not None else getattr(self, name, None)
            for name in self.valid_kwargs.__annotations__
        }

    def resize_frame(self, image: Image.Image, size: dict[str, int] | None = None, resample=None) -> torch.Tensor:
        """
        Resizes one RGB frame for SigLIP with PIL.

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

    def _resize_for_both(
        self, image: Image.Image, settings: dict, keyframe_image_size: int | None, progress: ProgressCallback | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One kept frame resized for SigLIP and, with `keyframe_image_size`, for CLIP, as soon as it is read."""
        if settings["do_resize"]:
            siglip_frame = self.resize_frame(image, settings["size"], settings["resample"])
        else:
            siglip_frame = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
        clip_frame = None if keyframe_image_size is None else clip_resize_and_crop(image, keyframe_image_size)
        if progress is not None:
            progress(1)
        return siglip_frame, clip_frame

    def load_video(
        self,
        video,
        *,
        keyframe_image_size: int | None = None,
        progress: ProgressCallback | None = None,
        **kwargs: Unpack[ViLaMPVideoProcessorInitKwargs],
    ) -> LoadedVideo:
        """
        Decodes (or takes) the sampled frames of one video, streaming: each kept frame is resized, for SigLIP and for
        the keyframe selector, as soon as it is read, so full-resolution frames are never all held at once.

        Args:
            video: a file path, a uint8 array or tensor of shape `(num_frames, height, width, 3)` or
                `(num_frames, 3, height, width)`, or a list of PIL images. Given frames are taken as sampled at `fps`,
                so only `max_frames` (or `num_frames`) applies to them.
            keyframe_image_size (`int`, *optional*): the keyframe selector's CLIP image size; without it no CLIP frames
                are made.
            progress (`Callable[[int], None]`, *optional*): called with 1 as each sampled frame is resized, from a
                decoding worker thread; where decoding starts over (a damaged file sampled again over the frames that
                decode, parallel spans that disagree) the frames resized again are reported again.
            kwargs ([`ViLaMPVideoProcessorInitKwargs`]): `fps`, `max_frames`, `num_frames` (instead of `fps`: this many
                frames evenly spread over all, first and last included), `do_sample_frames`, `decode_device`,
                `num_decoders`, `size`, `resample`, `do_resize`, `do_rescale`, `do_normalize`, ...; default to this
                video processor's settings.

        Returns:
            [`LoadedVideo`].
        """
        settings = self.call_settings(**kwargs)
        max_frames = settings["max_frames"]
        if not settings["do_sample_frames"]:
            # every frame: a stride of one frame and no cap
            fps, max_frames = float("inf"), np.iinfo(np.int64).max
        elif settings["num_frames"] is not None:
            # a stride of one frame thinned evenly to `num_frames`
            fps, max_frames = float("inf"), settings["num_frames"]
        else:
            fps = settings["fps"]
        resize = partial(
            self._resize_for_both, settings=settings, keyframe_image_size=keyframe_image_size, progress=progress
        )
        if isinstance(video, (str, os.PathLike)):
            decoded_video = decode_video(
                video,
                fps=fps,
                max_frames=max_frames,
                frame_transform=resize,
                device=settings["decode_device"],
                num_decoders=settings["num_decoders"],
            )
        else:
            decoded_video = self._sample_given_frames(video_to_frames(video), settings["fps"], fps, max_frames, resize)
        siglip_frames, clip_frames = zip(*decoded_video.frames)
        return LoadedVideo(
            siglip_frames=self._rescale_and_normalize(torch.stack(siglip_frames), settings),
            clip_frames=None if keyframe_image_size is None else torch.stack(clip_frames),
            timestamps_seconds=decoded_video.timestamps_seconds,
            metadata=decoded_video.metadata,
        )

    @staticmethod
    def _sample_given_frames(
        frames: list, given_fps: float, fps: float, max_frames: int, frame_transform: Callable[[Image.Image], Any]
    ) -> DecodedVideo:
        """Keeps the frames `sample_frame_indices` picks from frames given as sampled at `given_fps`."""
        frame_indices = sample_frame_indices(len(frames), given_fps, fps=fps, max_frames=max_frames)
        images = [frames[index] for index in frame_indices]
        kept = [frame_transform(item if isinstance(item, Image.Image) else Image.fromarray(item)) for item in images]
        metadata = VideoMetadata(total_num_frames=len(frames), fps=given_fps, frames_indices=frame_indices.tolist())
        return DecodedVideo(frames=kept, timestamps_seconds=(frame_indices / given_fps).tolist(), metadata=metadata)

    def _rescale_and_normalize(self, frames: torch.Tensor, settings: dict) -> torch.Tensor:
        """The optional steps after the resize, `do_rescale` and `do_normalize`: both off by default, the model does
        them on its device."""
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
        Samples and resizes videos for SigLIP.

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
        return_tensors = kwargs.pop("return_tensors", None)
        video_frames = [self.load_video(video, **kwargs).siglip_frames for video in flatten_videos(videos)]
        return BatchFeature(data=video_frames_inputs(video_frames), tensor_type=return_tensors)


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


def video_processor_with(video_processor: ViLaMPVideoProcessor | None, legacy_settings: dict) -> ViLaMPVideoProcessor:
    """The video processor with flat `LEGACY_VIDEO_SETTINGS` applied (a new one when none is given)."""
    unknown = set(legacy_settings) - set(LEGACY_VIDEO_SETTINGS)
    if unknown:
        raise TypeError(
            f"ViLaMPProcessor got unexpected arguments {sorted(unknown)}; the settings it takes besides its "
            f"components are {sorted(LEGACY_VIDEO_SETTINGS)}."
        )
    settings = {name: value for name, value in legacy_settings.items() if value is not None}
    if "frame_size" in settings:
        frame_size = settings.pop("frame_size")
        if not isinstance(frame_size, int) or frame_size < 1:
            raise ValueError(f"`frame_size` must be an integer of at least 1, got {frame_size!r}.")
        settings["size"] = {"height": frame_size, "width": frame_size}
    if video_processor is None:
        return ViLaMPVideoProcessor(**settings)
    return ViLaMPVideoProcessor(**{**video_processor.to_dict(), **settings}) if settings else video_processor


__all__ = [
    "FRAME_SETTINGS",
    "LEGACY_VIDEO_SETTINGS",
    "LoadedVideo",
    "ProgressCallback",
    "ViLaMPVideoProcessor",
    "ViLaMPVideoProcessorInitKwargs",
    "check_loaded_video",
    "check_video_settings",
    "clip_resize_and_crop",
    "flatten_videos",
    "video_frames_inputs",
    "video_processor_with",
    "video_to_frames",
]
