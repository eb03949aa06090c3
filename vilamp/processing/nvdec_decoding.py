"""Decoding spans of a video file on the GPU's video decoders (NVDEC) through PyNvVideoCodec.

PyNvVideoCodec (NVIDIA's package, with its own demuxer) was chosen over PyAV's `cuda` hwaccel by measurement (issue
22): it leaves decoded pictures on the GPU, so only the kept frames are copied to the host, and several sessions run
on the card's decoders at once. The kept pictures come back as NV12 and are repacked losslessly to the planar
yuv420p a CPU decoder gives, tagged with the stream's colorspace and range: converted to RGB on the CPU, their pixels
are those of the CPU path. PyNvVideoCodec is imported only here, and only when NVDEC is asked for.
"""

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

# NVDEC sessions run at once: the measurements on an H200 peak at about 4 decoding threads (7 engines)
MAX_NVDEC_SESSIONS = 4
NVDEC_INSTALL_HINT = "install it with `pip install PyNvVideoCodec` (or `pip install vilamp[nvdec]`)"


class NvdecUnavailable(Exception):
    """NVDEC cannot decode this video: no GPU, or the codec, profile, bit depth or size is not supported."""


def import_pynvvideocodec():
    """Imports PyNvVideoCodec, naming the package to install when it cannot be imported (its import also fails on a
    machine without an NVIDIA driver)."""
    try:
        import PyNvVideoCodec
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ImportError(
            f"Decoding on NVDEC needs PyNvVideoCodec, which could not be imported ({reason}): {NVDEC_INSTALL_HINT} on "
            "a machine with an NVIDIA GPU and driver, or pass `decode_device='cpu'`."
        ) from error
    return PyNvVideoCodec


def _first_line(error: Exception) -> str:
    """An exception's message on one line."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def nv12_to_video_frame(nv12: np.ndarray, *, pixel_format: str, colorspace: int, color_range: int):
    """
    Repacks an NV12 picture losslessly into the planar `av.VideoFrame` a CPU decoder gives, of `pixel_format` and
    tagged with `colorspace` and `color_range` (PyAV's conversion to RGB reads them).

    Args:
        nv12 (`np.ndarray` of shape `(height * 3 // 2, width)`): uint8, the luma rows, then rows of interleaved U and
            V samples.
        pixel_format (`str`): the stream's pixel format, `yuv420p` or `yuvj420p` (the full-range 4:2:0 that FFmpeg
            before 7.1 gives, whose conversion ignores `color_range`).
        colorspace (`int`): the stream's `AVColorSpace`.
        color_range (`int`): the stream's `AVColorRange`.
    """
    import av

    rows, width = nv12.shape
    height = rows * 2 // 3
    luma, chroma = nv12[:height], nv12[height:].reshape(height // 2, width // 2, 2)
    planar = np.concatenate([luma.reshape(-1), chroma[..., 0].reshape(-1), chroma[..., 1].reshape(-1)])
    frame = av.VideoFrame.from_ndarray(planar.reshape(rows, width), format=pixel_format)
    frame.colorspace = colorspace
    frame.color_range = color_range
    return frame


@dataclass
class Nv12Frame:
    """A kept NVDEC picture copied to the host; converted to RGB off the decoding thread, like a PyAV frame."""

    nv12: np.ndarray  # (height * 3 // 2, width) uint8
    pixel_format: str
    colorspace: int
    color_range: int

    def to_image(self):
        """The RGB `PIL.Image.Image` PyAV gives for the same picture decoded on the CPU."""
        return nv12_to_video_frame(
            self.nv12, pixel_format=self.pixel_format, colorspace=self.colorspace, color_range=self.color_range
        ).to_image()


@dataclass
class NvdecVideo:
    """A video file NVDEC can decode, with what its span decoders need."""

    nvc: Any  # the PyNvVideoCodec module
    path: str
    gpu_id: int
    codec: Any  # PyNvVideoCodec's codec id
    num_engines: int
    width: int
    height: int
    time_base: Fraction
    pixel_format: str
    colorspace: int
    color_range: int


def open_nvdec_video(
    path: str,
    *,
    width: int,
    height: int,
    pixel_format: str,
    time_base: Fraction | None,
    colorspace: int,
    color_range: int,
) -> NvdecVideo:
    """
    Checks that NVDEC can decode `path` (read by PyAV as `width`x`height` frames of `pixel_format`) and returns what
    its span decoders need. Raises `ImportError` when PyNvVideoCodec cannot be imported, and `NvdecUnavailable`,
    naming why, when torch sees no GPU or NVDEC lacks the codec, profile, bit depth or size.
    """
    nvc = import_pynvvideocodec()
    import torch

    if not torch.cuda.is_available():
        raise NvdecUnavailable("torch sees no CUDA GPU")
    # NVDEC gives 8-bit 4:2:0 pictures as NV12, repacked to yuv420p; other layouts stay on the CPU
    if pixel_format not in ("yuv420p", "yuvj420p"):
        raise NvdecUnavailable(f"its pixel format {pixel_format} is not 8-bit 4:2:0")
    if time_base is None:
        raise NvdecUnavailable("its stream states no time base for the pictures' timestamps")
    if width % 2 or height % 2:
        raise NvdecUnavailable(f"its frames are {width}x{height}, not of even width and height")
    try:
        gpu_id = torch.cuda.current_device()
    except RuntimeError as error:
        # e.g. a DataLoader worker forked after its parent started CUDA
        raise NvdecUnavailable(f"CUDA cannot be used in this process ({_first_line(error)})") from error
    try:
        demuxer = nvc.CreateDemuxer(filename=path)
        codec = demuxer.GetNvCodecId()
        caps = nvc.GetDecoderCaps(
            gpuid=gpu_id, codec=codec, chromaformat=demuxer.ChromaFormat(), bitdepth=demuxer.BitDepth()
        )
    except Exception as error:
        raise NvdecUnavailable(f"PyNvVideoCodec cannot read it ({_first_line(error)})") from error
    # a capability PyNvVideoCodec does not report is found out at the first span (`PyNvVCExceptionUnsupported`)
    if not caps.get("supported", 1):
        raise NvdecUnavailable(f"NVDEC on this GPU does not decode {codec} ({demuxer.BitDepth()}-bit)")
    if width > caps.get("width_max", width) or height > caps.get("height_max", height):
        raise NvdecUnavailable(
            f"its {width}x{height} frames exceed NVDEC's {caps['width_max']}x{caps['height_max']} for {codec}"
        )
    return NvdecVideo(
        nvc=nvc,
        path=path,
        gpu_id=gpu_id,
        codec=codec,
        num_engines=max(1, int(caps.get("num_decoder_engines", 1))),
        width=width,
        height=height,
        time_base=time_base,
        pixel_format=pixel_format,
        colorspace=colorspace,
        color_range=color_range,
    )


def _packets_from_keyframe(nvc, path: str, start_pts: int):
    """The packets of `path` from its keyframe at `start_pts` (or one before it) on: by seeking, or, where the seek
    lands after it, by reading the packets before it. None when no packet has that timestamp."""
    demuxer = nvc.CreateDemuxer(filename=path)
    try:
        packet = demuxer.Seek(start_pts)
    except Exception:
        # a container PyNvVideoCodec cannot seek in ("Seek isn't supported for this input") is read up to the span
        packet = None
    if packet is None or packet.bsl == 0 or packet.pts > start_pts:
        demuxer = nvc.CreateDemuxer(filename=path)
        for packet in demuxer:
            if packet.bsl == 0:
                return None
            if packet.pts == start_pts:
                break
        else:
            return None
    return itertools.chain([packet], demuxer)


class NvdecSpanDecoder:
    """
    One NVDEC session, created at its first span and used for every span its thread takes. Each span opens its own
    demuxer and seeks it to the span's keyframe.
    """

    def __init__(self, video: NvdecVideo):
        self.video = video
        self.decoder = None

    def decode_span(
        self,
        start_pts: int,
        end_pts: int,
        span_pts: np.ndarray,
        wanted_indices: dict[int, int],
        submit: Callable[[int, Nv12Frame, float], None],
    ) -> bool:
        """
        Decodes the frames shown in `[start_pts, end_pts)` from the keyframe at `start_pts`, handing those whose
        timestamp is in `wanted_indices` (timestamp -> frame number) to `submit(frame_index, frame, seconds)`. Returns
        False when the frames that decode differ from `span_pts` (the timestamps PyAV read for the span), so the span
        is decoded again on the CPU; raises `NvdecUnavailable` when NVDEC cannot decode the video.
        """
        nvc = self.video.nvc
        try:
            return self._decode_span(nvc, start_pts, end_pts, set(span_pts.tolist()), wanted_indices, submit)
        except NvdecUnavailable:
            self.decoder = None
            raise
        except Exception as error:
            # PyNvVideoCodec's own errors, and CUDA's: the CPU decodes what NVDEC cannot
            self.decoder = None
            if isinstance(error, getattr(nvc, "PyNvVCExceptionUnsupported", ())):
                raise NvdecUnavailable(f"NVDEC on this GPU does not decode it ({_first_line(error)})") from error
            raise NvdecUnavailable(f"NVDEC failed on it ({type(error).__name__}: {_first_line(error)})") from error

    def _decode_span(self, nvc, start_pts, end_pts, expected_pts, wanted_indices, submit) -> bool:
        """`decode_span` without the translation of PyNvVideoCodec's errors."""
        import torch

        video = self.video
        packets = _packets_from_keyframe(nvc, video.path, start_pts)
        if packets is None:
            return False
        if self.decoder is None:
            self.decoder = nvc.CreateDecoder(gpuid=video.gpu_id, codec=video.codec, usedevicememory=True)
        decoder = self.decoder
        seen = set()
        for packet in itertools.chain(packets, [None]):
            # at the end of the file an empty packet flushes the pictures NVDEC still holds, where the demuxer's last
            # packet was not one
            packet = nvc.PacketData() if packet is None else packet
            end_of_stream = packet.bsl == 0
            if end_of_stream:
                # past the end of the stream, the session is made afresh for its thread's next span
                self.decoder = None
            for frame in decoder.Decode(packet):
                pts = frame.getPTS()
                # frames before the span, after it, or held from this session's previous span are not the span's
                if not start_pts <= pts < end_pts or pts in seen:
                    continue
                if pts not in expected_pts:
                    return False
                seen.add(pts)
                frame_index = wanted_indices.get(pts)
                if frame_index is not None:
                    # copied out now: the decoder reuses the picture's memory at its next call
                    nv12 = torch.from_dlpack(frame).cpu().numpy()
                    if nv12.shape != (video.height * 3 // 2, video.width):
                        raise NvdecUnavailable(
                            f"NVDEC gave pictures of shape {tuple(nv12.shape)}, expected "
                            f"{(video.height * 3 // 2, video.width)}"
                        )
                    seconds = float(pts) * video.time_base.numerator / video.time_base.denominator
                    submit(
                        frame_index, Nv12Frame(nv12, video.pixel_format, video.colorspace, video.color_range), seconds
                    )
            if len(seen) == len(expected_pts):
                return True
            if end_of_stream:
                break
        return False


__all__ = [
    "MAX_NVDEC_SESSIONS",
    "Nv12Frame",
    "NvdecSpanDecoder",
    "NvdecUnavailable",
    "NvdecVideo",
    "import_pynvvideocodec",
    "nv12_to_video_frame",
    "open_nvdec_video",
]
