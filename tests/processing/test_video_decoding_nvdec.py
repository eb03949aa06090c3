"""Decoding on the GPU's video decoders (NVDEC) next to the CPU: the CPU-only behaviour of `decode_device="auto"` and
`"cuda"`, the span queue the two share, the NV12 repacking, and (marked `gpu`) frames equal to the CPU's on camera-like
H.264, HEVC, VP9 and AV1 files."""

import itertools
import logging
import sys
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor

import av
import numpy as np
import pytest
import torch

from vilamp.processing.nvdec_decoding import Nv12Frame, NvdecUnavailable
from vilamp.processing.video_decoding import decode_spans_from_queue, decode_video
from vilamp.testing import NOISY_VIDEO_CODECS, synthetic_frames, write_noisy_video, write_video

# camera-like files of the GPU tests: over a minute, so `"auto"` cuts them into spans for the CPU and NVDEC
GPU_TEST_SECONDS = 64
# 720p30: NVDEC's sizes and spans are exercised as at 1080p, and the files write in a third of the time
GPU_TEST_WIDTH, GPU_TEST_HEIGHT = 1280, 720


@pytest.fixture
def long_video(tmp_path):
    """A 70-second video (2 fps, small frames, a keyframe every 4 seconds): long enough for NVDEC under "auto"."""
    frames = synthetic_frames(140, width=64, height=48)
    options = {"preset": "ultrafast", "g": "8"}
    return write_video(tmp_path / "long.mp4", frames, fps=2, codec="libx264", options=options)


def assert_same_decoding(decoded, expected):
    """Same frame numbers, timestamps and RGB pixels."""
    assert decoded.metadata.frames_indices == expected.metadata.frames_indices
    assert decoded.metadata.total_num_frames == expected.metadata.total_num_frames
    assert decoded.timestamps_seconds == expected.timestamps_seconds
    assert len(decoded.frames) == len(expected.frames)
    for index, (frame, expected_frame) in enumerate(zip(decoded.frames, expected.frames)):
        assert torch.equal(torch.from_numpy(np.array(frame)), torch.from_numpy(np.array(expected_frame))), index


def test_auto_without_pynvvideocodec_decodes_as_the_cpu(long_video, monkeypatch):
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", None)
    on_cpu = decode_video(long_video, device="cpu")
    automatic = decode_video(long_video, device="auto")
    assert_same_decoding(automatic, on_cpu)
    assert automatic.metadata.video_backend == on_cpu.metadata.video_backend == "pyav"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks `auto` where torch sees no GPU")
def test_auto_without_gpu_decodes_as_the_cpu(long_video):
    assert_same_decoding(decode_video(long_video, device="auto"), decode_video(long_video, device="cpu"))


def test_auto_is_the_default(long_video, monkeypatch):
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", None)
    assert_same_decoding(decode_video(long_video), decode_video(long_video, device="cpu"))


def test_cuda_without_pynvvideocodec_names_the_package_to_install(long_video, monkeypatch):
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", None)
    with pytest.raises(ImportError, match="`pip install PyNvVideoCodec`") as error:
        decode_video(long_video, device="cuda")
    assert "\n" not in str(error.value)


def test_unknown_device_lists_the_decoding_devices(long_video):
    with pytest.raises(ValueError, match="`device` 'gpu' is not a decoding device; pass `auto` .*, `cpu` or `cuda`"):
        decode_video(long_video, device="gpu")


def write_tagged_video(path, colorspace: int, color_range: int):
    """A short H.264 video whose stream says its colorspace and range (0 and 0: unspecified)."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.codec_context.colorspace, stream.codec_context.color_range = colorspace, color_range
        stream.options = {"preset": "ultrafast"}
        for _ in range(3):
            pixels = np.clip(rng.normal(120, 60, (64, 96, 3)), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def stored_samples(plane) -> np.ndarray:
    """A decoded plane's samples as stored, without the row padding (`to_ndarray` may convert a yuvj420p frame)."""
    return np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]


@pytest.mark.parametrize("colorspace, color_range", [(0, 0), (1, 1), (1, 2), (5, 1)])
def test_nv12_pictures_give_the_cpu_decoders_rgb(tmp_path, colorspace, color_range):
    """NVDEC's NV12 pictures (the samples the CPU decoder stores, chroma interleaved) give the RGB pixels the CPU path
    gives, for BT.709 and BT.601, limited and full range (yuvj420p on older FFmpeg)."""
    path = write_tagged_video(tmp_path / "tagged.mp4", colorspace, color_range)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            luma, u, v = (stored_samples(plane) for plane in frame.planes)
            nv12 = np.concatenate([luma, np.stack([u, v], axis=-1).reshape(u.shape[0], -1)])
            picture = Nv12Frame(
                nv12, stream.codec_context.pix_fmt, stream.codec_context.colorspace, stream.codec_context.color_range
            )
            np.testing.assert_array_equal(np.asarray(picture.to_image()), np.asarray(frame.to_image()))


class RecordingDecoder:
    """A fake span decoder: records the spans it decoded; `wrong` spans come out wrong, `unavailable` raises."""

    def __init__(self, wrong=(), unavailable: str | None = None):
        self.wrong, self.unavailable = set(wrong), unavailable
        self.spans, self.lock = [], threading.Lock()

    def __call__(self, span) -> bool:
        if self.unavailable is not None:
            with self.lock:
                self.spans.append(span)
            raise NvdecUnavailable(self.unavailable)
        time.sleep(0.002)
        if span in self.wrong:
            return False
        with self.lock:
            self.spans.append(span)
        return True


SPANS = [(start, start + 10) for start in range(0, 300, 10)]


def test_span_queue_decodes_every_span_exactly_once_on_both():
    cpu, gpu = RecordingDecoder(), RecordingDecoder()
    used = decode_spans_from_queue(SPANS, cpu, 2, [gpu, gpu])
    assert sorted(cpu.spans + gpu.spans) == SPANS
    assert used == {"pyav", "nvdec"}


def test_span_queue_decodes_a_span_the_gpu_got_wrong_again_on_the_cpu():
    cpu, gpu = RecordingDecoder(), RecordingDecoder(wrong=SPANS[::3])
    used = decode_spans_from_queue(SPANS, cpu, 0, [gpu])
    assert sorted(cpu.spans) == SPANS[::3]
    assert sorted(cpu.spans + gpu.spans) == SPANS
    assert used == {"pyav", "nvdec"}


def test_span_queue_stops_an_unavailable_gpu_and_says_why_once(caplog):
    cpu = RecordingDecoder()
    gpus = [RecordingDecoder(unavailable="the fake GPU lacks the fake codec") for _ in range(2)]
    with caplog.at_level(logging.INFO, logger="vilamp.processing.video_decoding"):
        used = decode_spans_from_queue(SPANS, cpu, 2, gpus)
    assert sorted(cpu.spans) == SPANS
    assert [len(gpu.spans) for gpu in gpus] == [1, 1]
    assert used == {"pyav"}
    messages = [record.getMessage() for record in caplog.records if "fake codec" in record.getMessage()]
    assert messages == ["Video decoding runs on the CPU only: NVDEC stopped: the fake GPU lacks the fake codec."]


def test_span_queue_without_cpu_decoders_raises_when_the_gpu_is_unavailable():
    with pytest.raises(NvdecUnavailable, match="no decoder"):
        decode_spans_from_queue(SPANS, RecordingDecoder(), 0, [RecordingDecoder(unavailable="no decoder")])


def test_span_queue_reports_a_cpu_span_that_differs_from_the_timestamps():
    assert decode_spans_from_queue(SPANS, RecordingDecoder(wrong=[SPANS[4]]), 3) is None


class FakePyNvVideoCodec(types.ModuleType):
    """
    PyNvVideoCodec's decoding API played by PyAV on the CPU, so the NVDEC path runs where no GPU is: its demuxer
    seeks to a keyframe and yields packets; its decoder holds back 4 pictures as NVDEC does (flushed by an empty
    packet) and gives NV12 pictures through DLPack. `supported=False` plays a GPU without the codec, `unsupported_decode`
    one whose capabilities say yes but whose decoder refuses, `seek_lands_late` a seek that lands on the next keyframe,
    `demuxer_flushes` a demuxer that yields empty packets at the end of the file (the decoder's flush) instead of
    stopping.
    """

    class PyNvVCException(Exception):
        pass

    class PyNvVCExceptionUnsupported(PyNvVCException):
        pass

    def __init__(self, *, supported=True, unsupported_decode=False, seek_lands_late=False, demuxer_flushes=False):
        super().__init__("PyNvVideoCodec")
        self.supported, self.unsupported_decode, self.seek_lands_late = supported, unsupported_decode, seek_lands_late
        self.demuxer_flushes = demuxer_flushes
        self.num_decoders_created = 0

    class PacketData:
        def __init__(self, packet=None):
            self.packet = packet
            self.pts = packet.pts if packet is not None else 0
            self.bsl = packet.size if packet is not None else 0

    class Picture:
        def __init__(self, frame):
            self.pts, self.nv12 = frame.pts, frame.to_ndarray(format="nv12")

        def getPTS(self):
            return self.pts

        def __dlpack__(self, **kwargs):
            return self.nv12.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return self.nv12.__dlpack_device__()

    class Demuxer:
        def __init__(self, module, filename):
            self.module, self.container = module, av.open(filename)
            self.stream = self.container.streams.video[0]
            # the decoder reads the stream's parameter sets (NVDEC's demuxer puts them in the packets)
            module.extradata = self.stream.codec_context.extradata
            self.packets = (packet for packet in self.container.demux(self.stream) if packet.size)

        def GetNvCodecId(self):
            return self.stream.codec_context.name

        def ChromaFormat(self):
            return 1

        def BitDepth(self):
            return 8

        def Seek(self, pts):
            self.container.seek(pts, stream=self.stream, backward=True, any_frame=False)
            self.packets = (packet for packet in self.container.demux(self.stream) if packet.size)
            packet = next(self.packets)
            if self.module.seek_lands_late:
                packet = next(packet for packet in self.packets if packet.is_keyframe)
            return self.module.PacketData(packet)

        def __iter__(self):
            packets = (self.module.PacketData(packet) for packet in self.packets)
            if not self.module.demuxer_flushes:
                return packets
            return itertools.chain(packets, (self.module.PacketData() for _ in itertools.count()))

    class Decoder:
        def __init__(self, module, codec):
            self.module, self.context, self.held = module, av.CodecContext.create(codec, "r"), []
            self.context.extradata = module.extradata

        def Decode(self, packet):
            if self.module.unsupported_decode:
                raise self.module.PyNvVCExceptionUnsupported("Codec not supported on this GPU")
            frames = self.context.decode(packet.packet)
            self.held += sorted((self.module.Picture(frame) for frame in frames), key=lambda picture: picture.pts)
            num_out = len(self.held) if packet.bsl == 0 else max(0, len(self.held) - 4)
            out, self.held = self.held[:num_out], self.held[num_out:]
            return out

    def CreateDemuxer(self, filename):
        return self.Demuxer(self, filename)

    def CreateDecoder(self, gpuid, codec, usedevicememory):
        self.num_decoders_created += 1
        return self.Decoder(self, codec)

    def GetDecoderCaps(self, gpuid, codec, chromaformat, bitdepth):
        return {"supported": int(self.supported), "num_decoder_engines": 2, "width_max": 4096, "height_max": 4096}


@pytest.fixture
def fake_gpu(monkeypatch):
    """Installs a `FakePyNvVideoCodec` and makes torch say it sees a GPU; returns a function that configures it."""

    def install(**settings) -> FakePyNvVideoCodec:
        module = FakePyNvVideoCodec(**settings)
        monkeypatch.setitem(sys.modules, "PyNvVideoCodec", module)
        return module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    return install


@pytest.mark.parametrize("seek_lands_late, demuxer_flushes", [(False, False), (True, False), (False, True)])
def test_nvdec_path_gives_the_cpus_frames(long_video, fake_gpu, seek_lands_late, demuxer_flushes):
    """Spans on (fake) NVDEC sessions, alone and next to the CPU: the CPU's frame numbers, timestamps and pixels, the
    decoders named in the metadata; a seek that lands past a span's keyframe reads up to it instead."""
    on_cpu = decode_video(long_video, device="cpu", num_decoders=1)
    fake_gpu(seek_lands_late=seek_lands_late, demuxer_flushes=demuxer_flushes)
    on_gpu = decode_video(long_video, device="cuda")
    assert_same_decoding(on_gpu, on_cpu)
    assert on_gpu.metadata.video_backend == "nvdec"
    automatic = decode_video(long_video, device="auto", num_decoders=1)
    assert_same_decoding(automatic, on_cpu)
    assert automatic.metadata.video_backend in ("pyav+nvdec", "nvdec")


def test_nvdec_path_keeps_frames_on_the_cpu_for_short_videos_under_auto(tmp_path, fake_gpu):
    path = write_video(tmp_path / "short.mp4", synthetic_frames(40, width=64, height=48), fps=8, codec="libx264")
    fake_gpu()
    assert decode_video(path, device="auto").metadata.video_backend == "pyav"
    assert decode_video(path, device="cuda").metadata.video_backend == "nvdec"


def test_auto_decodes_on_the_cpu_where_nvdec_lacks_the_codec(long_video, fake_gpu, caplog):
    on_cpu = decode_video(long_video, device="cpu")
    fake_gpu(supported=False)
    with caplog.at_level(logging.INFO, logger="vilamp.processing.video_decoding"):
        automatic = decode_video(long_video, device="auto")
    assert_same_decoding(automatic, on_cpu)
    assert automatic.metadata.video_backend == "pyav"
    assert [record.getMessage() for record in caplog.records] == [
        "Video decoding runs on the CPU only: NVDEC is not used for this video: NVDEC on this GPU does not decode "
        "h264 (8-bit)."
    ]
    with pytest.raises(
        ValueError, match="`decode_device='cuda'` cannot decode .*: NVDEC on this GPU does not decode h264"
    ):
        decode_video(long_video, device="cuda")


def test_auto_decodes_on_the_cpu_where_nvdec_refuses_the_first_span(long_video, fake_gpu):
    on_cpu = decode_video(long_video, device="cpu")
    fake_gpu(unsupported_decode=True)
    automatic = decode_video(long_video, device="auto")
    assert_same_decoding(automatic, on_cpu)
    assert automatic.metadata.video_backend == "pyav"
    with pytest.raises(
        ValueError, match="cannot decode .*: NVDEC on this GPU does not decode it \\(Codec not supported"
    ):
        decode_video(long_video, device="cuda")


def nvdec_decodes(path) -> bool:
    """Whether this GPU's NVDEC decodes the file's codec, bit depth and size (PyNvVideoCodec's capabilities)."""
    import PyNvVideoCodec as nvc

    demuxer = nvc.CreateDemuxer(filename=str(path))
    caps = nvc.GetDecoderCaps(
        gpuid=torch.cuda.current_device(),
        codec=demuxer.GetNvCodecId(),
        chromaformat=demuxer.ChromaFormat(),
        bitdepth=demuxer.BitDepth(),
    )
    print(f"\n{path.name}: NVDEC capabilities {caps}")
    return bool(caps.get("supported", 1))


@pytest.fixture(scope="module")
def camera_videos(tmp_path_factory):
    """720p30 camera-like files (sensor noise) of every codec, written at once."""
    pytest.importorskip("PyNvVideoCodec", reason="decoding on NVDEC needs `pip install PyNvVideoCodec`")
    directory = tmp_path_factory.mktemp("camera")
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(NOISY_VIDEO_CODECS)) as writers:
        paths = {
            codec: writers.submit(
                write_noisy_video,
                directory / f"{codec}{suffix}",
                codec,
                seconds=GPU_TEST_SECONDS,
                width=GPU_TEST_WIDTH,
                height=GPU_TEST_HEIGHT,
            )
            for codec, (_, suffix, _) in NOISY_VIDEO_CODECS.items()
        }
        paths = {codec: path.result() for codec, path in paths.items()}
    print(f"\nwrote {len(paths)} files of {GPU_TEST_SECONDS} s at 720p30 in {time.perf_counter() - start:.1f} s")
    return paths


def timed_decode(path, device):
    start = time.perf_counter()
    decoded = decode_video(path, device=device)
    return decoded, time.perf_counter() - start


@pytest.mark.gpu
@pytest.mark.parametrize("codec", list(NOISY_VIDEO_CODECS))
def test_nvdec_frames_equal_the_cpus(camera_videos, codec):
    """`auto` and `cuda` give the CPU's frames, numbers and timestamps; where NVDEC lacks the codec (AV1 on an H200),
    `auto` decodes on the CPU alone and `cuda` says why."""
    path = camera_videos[codec]
    supported = nvdec_decodes(path)
    on_cpu, cpu_seconds = timed_decode(path, "cpu")
    automatic, auto_seconds = timed_decode(path, "auto")
    report = f"{codec}: cpu {cpu_seconds:.2f} s ({on_cpu.metadata.video_backend}), auto {auto_seconds:.2f} s "
    report += f"({automatic.metadata.video_backend})"
    assert_same_decoding(automatic, on_cpu)
    assert automatic.metadata.video_backend == ("pyav+nvdec" if supported else "pyav")
    if supported:
        on_gpu, gpu_seconds = timed_decode(path, "cuda")
        print(f"\n{report}, cuda {gpu_seconds:.2f} s ({on_gpu.metadata.video_backend})")
        assert_same_decoding(on_gpu, on_cpu)
        assert on_gpu.metadata.video_backend == "nvdec"
    else:
        print(f"\n{report}; NVDEC lacks {codec} on this GPU")
        with pytest.raises(ValueError, match="`decode_device='cuda'` cannot decode .*: NVDEC on this GPU does not"):
            decode_video(path, device="cuda")
