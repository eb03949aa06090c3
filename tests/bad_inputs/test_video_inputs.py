"""Damaged video files and uneven batches: a warning or an error, never a silently shorter or wrong input."""

import struct

import numpy as np
import pytest
import torch

from vilamp.processing.video_decoding import VideoDecodingWarning, decode_video, sample_frame_indices
from vilamp.testing import build_tiny_model, build_tiny_processor, synthetic_frames, write_synthetic_video, write_video

NUM_FRAMES, FPS = 48, 8


@pytest.fixture(scope="module")
def faststart_video(tmp_path_factory):
    """An H.264 MP4 of 48 frames at 8 fps with its index (`moov`) before the frames, as streaming sites write them."""
    path = tmp_path_factory.mktemp("videos") / "faststart.mp4"
    frames = synthetic_frames(NUM_FRAMES, width=64, height=48)
    options = {"preset": "ultrafast"}
    return write_video(
        path, frames, fps=FPS, codec="libx264", options=options, container_options={"movflags": "faststart"}
    )


def truncated_copy(source, destination, fraction: float):
    """Writes the first `fraction` of `source`'s bytes to `destination`, as an interrupted download leaves a file."""
    data = source.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat"), "the index must come first for the header to promise every frame"
    destination.write_bytes(data[: int(len(data) * fraction)])
    return destination


@pytest.mark.parametrize("num_decoders", [1, 3])
def test_truncated_file_warns_and_samples_over_the_frames_that_decoded(faststart_video, tmp_path, num_decoders):
    """A file cut short after a front index: warning with the count, frames sampled by the original's rule over those
    that decoded, pixels equal to the intact file's (whether or not spans were asked for)."""
    truncated = truncated_copy(faststart_video, tmp_path / "truncated.mp4", 0.3)
    with pytest.warns(
        VideoDecodingWarning, match=r"truncated.mp4` is damaged or truncated: only (\d+) of the 48 frames"
    ):
        decoded = decode_video(truncated, fps=FPS, max_frames=12, num_decoders=num_decoders)
    num_decoded = decoded.metadata.total_num_frames
    assert 0 < num_decoded < NUM_FRAMES
    expected_indices = sample_frame_indices(num_decoded, FPS, fps=FPS, max_frames=12).tolist()
    assert decoded.metadata.frames_indices == expected_indices
    assert len(decoded.frames) == 12
    intact = decode_video(faststart_video, fps=FPS, max_frames=NUM_FRAMES)
    for index, frame in zip(expected_indices, decoded.frames):
        np.testing.assert_array_equal(np.asarray(frame), np.asarray(intact.frames[index]))


def test_zero_timescale_file_warns(faststart_video, tmp_path):
    """An MP4 whose video track has a zero timescale: the demuxer gives one frame of the 48 promised, with a warning."""
    data = bytearray(faststart_video.read_bytes())
    media_header = data.find(b"mdhd")
    version = data[media_header + 4]
    timescale_offset = media_header + 8 + (16 if version == 1 else 8)
    data[timescale_offset : timescale_offset + 4] = struct.pack(">I", 0)
    path = tmp_path / "zero_timescale.mp4"
    path.write_bytes(bytes(data))
    with pytest.warns(VideoDecodingWarning, match=r"only 1 of the 48 frames"):
        decoded = decode_video(path, fps=1, max_frames=600)
    assert len(decoded.frames) == 1


def test_file_whose_frames_never_decode_is_an_error(faststart_video, tmp_path):
    """An MP4 with a readable index but zeroed frames: an error naming the file, not an empty video."""
    data = faststart_video.read_bytes()
    frames_start = data.find(b"mdat") + 4
    path = tmp_path / "zeroed.mp4"
    path.write_bytes(data[:frames_start] + bytes(len(data) - frames_start))
    with pytest.raises(ValueError, match="zeroed.mp4` has no decodable frames"):
        decode_video(path)


def test_processor_passes_the_warning_on(faststart_video, tmp_path):
    """The processor's call on a damaged file shows the same warning and builds inputs from the frames that decoded."""
    truncated = truncated_copy(faststart_video, tmp_path / "truncated.mp4", 0.5)
    processor = build_tiny_processor()
    with pytest.warns(VideoDecodingWarning, match="truncated.mp4` is damaged or truncated"):
        inputs = processor(text="What moves?", videos=str(truncated), fps=FPS, return_tensors="pt")
    assert 0 < inputs["video_frame_counts"].item() < NUM_FRAMES


def test_uneven_batch_with_default_padding_generates_each_video_alone(tmp_path):
    """Two videos of 6 and 10 sampled frames in one batch with the processor's default padding: each row's greedy
    answer equals that video's answer alone."""
    model = build_tiny_model(seed=1).eval()
    processor = build_tiny_processor()
    questions = ("What moves in the video?", "How bright is it?")
    videos = [
        str(write_synthetic_video(tmp_path / f"video_{index}.mp4", num_frames=num_frames, level_step=5 + 3 * index))
        for index, num_frames in enumerate((48, 80))
    ]
    batch = processor(text=list(questions), videos=videos, return_tensors="pt")
    assert batch["video_frame_counts"].tolist() == [6, 10]
    with torch.no_grad():
        together = model.generate(**batch, max_new_tokens=6, do_sample=False)[:, batch["input_ids"].shape[1] :]
        for row, (question, video) in enumerate(zip(questions, videos)):
            alone = processor(text=question, videos=video, return_tensors="pt")
            alone_ids = model.generate(**alone, max_new_tokens=6, do_sample=False)[:, alone["input_ids"].shape[1] :]
            assert together[row].tolist() == alone_ids[0].tolist()


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.mp4", b"", r"`.*empty.mp4` is empty \(0 bytes\), not a video"),
        ("notes.mp4", b"these are notes, not a video\n" * 20, r"`.*notes.mp4` could not be decoded: it is a text file"),
        ("report.docx", b"PK\x03\x04\x00\xff" * 100, r"`.*report.docx` could not be decoded: it is a .docx file that FFmpeg"),
        ("broken.mp4", b"\x00\xff\x13" * 100, r"`.*broken.mp4` could not be decoded: FFmpeg reads no video from it \(invalid"),
    ],
)  # fmt: skip
def test_file_that_is_not_a_video_is_named_for_what_it_is(tmp_path, name, content, message):
    """Empty files, text files, files of another kind and undecodable videos: one `ValueError` naming the file and
    what it is, with FFmpeg's reason but not its error number, and what to pass instead."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        decode_video(path)
    assert "Errno" not in str(error.value) and "pass a video file" in str(error.value)


def test_directory_given_as_a_video_is_named_a_directory(tmp_path):
    """A directory where a video file is expected, through the processor as through `decode_video`."""
    with pytest.raises(ValueError, match=r"`videos\[0\]`: `.*` is a directory, not a video file"):
        build_tiny_processor()(text="What moves?", videos=str(tmp_path))
