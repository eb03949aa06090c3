import av
import numpy as np
import pytest
import torch

from vilamp.processing.video_decoding import decode_video, sample_frame_indices
from vilamp.testing import synthetic_frames, write_video


def original_sampled_indices(total_num_frames: int, average_fps: float, max_frames: int) -> list[int]:
    """`access_video_by_sec` of the original evaluation (exp_vMME.py), on frame numbers instead of images."""
    frame_interval = int(average_fps)
    frames = [count for count in range(total_num_frames) if count % frame_interval == 0]
    if len(frames) > max_frames:
        frames = [frames[i] for i in np.linspace(0, len(frames) - 1, max_frames, dtype=int)]
    return frames


@pytest.mark.parametrize(
    "total_num_frames, average_fps, max_frames",
    [
        (3600, 30.0, 600),
        (3600, 29.97, 600),
        (18000, 25.0, 600),
        (100, 24.0, 600),
        (1, 30.0, 600),
        (7, 2.0, 3),
        (3_000_000, 30.0, 100_000),
        (50, 1.0, 600),
    ],
)
def test_sample_frame_indices_matches_original_evaluation(total_num_frames, average_fps, max_frames):
    indices = sample_frame_indices(total_num_frames, average_fps, fps=1.0, max_frames=max_frames)
    assert indices.tolist() == original_sampled_indices(total_num_frames, average_fps, max_frames)


def test_sample_frame_indices_rejects_non_positive_fps():
    with pytest.raises(ValueError, match="`fps` must be positive"):
        sample_frame_indices(100, 30.0, fps=0.0, max_frames=10)


def test_decode_video_keeps_one_frame_per_second_with_timestamps(make_video_file):
    decoded = decode_video(make_video_file(num_frames=40, fps=8))
    assert len(decoded.frames) == 5
    assert decoded.timestamps_seconds == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert decoded.metadata.frames_indices == [0, 8, 16, 24, 32]
    assert decoded.metadata.total_num_frames == 40
    assert decoded.metadata.fps == 8.0
    # frame i is a grey of level 8 * i outside the white bar
    grey_levels = [np.asarray(frame)[:, -1].mean() for frame in decoded.frames]
    np.testing.assert_allclose(grey_levels, [0, 64, 128, 192, 0], atol=6)


def test_decode_video_caps_frames_evenly(make_video_file):
    decoded = decode_video(make_video_file(num_frames=80, fps=8), max_frames=4)
    assert decoded.metadata.frames_indices == [0, 24, 48, 72]


def test_decode_video_applies_frame_transform_to_each_kept_frame(make_video_file):
    decoded = decode_video(make_video_file(num_frames=16, fps=8), frame_transform=lambda image: image.size)
    assert decoded.frames == [(64, 48), (64, 48)]


def test_one_frame_video_decodes_to_one_frame(make_video_file):
    decoded = decode_video(make_video_file(num_frames=1))
    assert len(decoded.frames) == 1


def test_missing_file_error_names_path(tmp_path):
    with pytest.raises(ValueError, match="No video file at .*missing.mp4"):
        decode_video(tmp_path / "missing.mp4")


def test_corrupt_file_error_names_path(tmp_path):
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(b"this is not a video" * 20)
    with pytest.raises(ValueError, match="corrupt.mp4` could not be decoded"):
        decode_video(path)


def test_video_without_decodable_frames_errors(make_video_file, tmp_path):
    # Matroska keeps its header before the frames, so zeroing the frames leaves a readable, empty video
    source = make_video_file(num_frames=10, suffix=".mkv")
    with av.open(str(source)) as container:
        first_packet_position = next(container.demux(container.streams.video[0])).pos
    data = source.read_bytes()
    path = tmp_path / "empty.mkv"
    path.write_bytes(data[:first_packet_position] + bytes(len(data) - first_packet_position))
    with pytest.raises(ValueError, match="empty.mkv` has no decodable frames"):
        decode_video(path)


@pytest.mark.parametrize("x264_params", ["keyint=10:min-keyint=10:bframes=3", "keyint=10:bframes=3:open-gop=1"])
@pytest.mark.parametrize("num_decoders", [2, 3, 7])
def test_spans_decoded_at_once_equal_one_decoder_in_order(tmp_path, x264_params, num_decoders):
    """Spans cut at keyframes keep the frame numbers and pixels of one decoder, with B-frames, with and without x264's
    open GOPs."""
    frames = synthetic_frames(90, width=64, height=48)
    path = write_video(tmp_path / "gops.mp4", frames, fps=10, codec="libx264", options={"x264-params": x264_params})
    in_order = decode_video(path, fps=3, max_frames=20, num_decoders=1)
    in_spans = decode_video(path, fps=3, max_frames=20, num_decoders=num_decoders)
    assert in_spans.metadata.frames_indices == in_order.metadata.frames_indices
    assert in_spans.timestamps_seconds == in_order.timestamps_seconds
    for span_frame, order_frame in zip(in_spans.frames, in_order.frames):
        np.testing.assert_array_equal(np.asarray(span_frame), np.asarray(order_frame))


def test_processor_takes_the_decoding_settings_per_call_and_checks_them(make_video_file):
    """`num_decoders` and `decode_device` are video kwargs of the processor: same inputs with any number of decoders,
    a clear error for a device that cannot decode."""
    from vilamp.testing import build_tiny_processor

    processor = build_tiny_processor()
    path = str(make_video_file(num_frames=80, fps=8))
    one = processor(text="What moves?", videos=path, num_decoders=1, return_tensors="pt")
    three = processor(text="What moves?", videos=path, num_decoders=3, return_tensors="pt")
    for key in one:
        assert torch.equal(one[key], three[key]), key
    with pytest.raises(
        ValueError, match=r"`decode_device` must be 'auto' \(NVDEC and the CPU together .*\), 'cpu' or 'cuda'"
    ):
        processor(text="What moves?", videos=path, decode_device="gpu")
    with pytest.raises(ValueError, match="`num_decoders` must be an integer of at least 1, got 0"):
        processor(text="What moves?", videos=path, num_decoders=0)
