import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers.image_utils import PILImageResampling

from vilamp import VideoCache
from vilamp.processing import KeyframeSelector, VideoCacheWarning, ViLaMPProcessor, ViLaMPVideoProcessor
from vilamp.processing.video_processing_vilamp import FRAME_SETTINGS
from vilamp.testing import synthetic_frames, write_video

REPO_ROOT = Path(__file__).resolve().parents[2]
KEYFRAME_IMAGE_SIZE = 32


class CountingVideoProcessor(ViLaMPVideoProcessor):
    """A video processor that counts the videos it loads, so a test sees whether the cache decoded; `during_load`, when
    set, runs while a video is loaded."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.num_loads = 0
        self.during_load = None

    def load_video(self, video, **kwargs):
        self.num_loads += 1
        if self.during_load is not None:
            self.during_load()
        return super().load_video(video, **kwargs)


@pytest.fixture
def video_processor() -> CountingVideoProcessor:
    return CountingVideoProcessor()


@pytest.fixture
def cache(tmp_path) -> VideoCache:
    return VideoCache(tmp_path / "cache", max_bytes=2**30)


@pytest.fixture
def video_file(make_video_file) -> Path:
    return make_video_file(num_frames=40, fps=8)


def load(cache, video_processor, video, **kwargs):
    """A video loaded through `cache` as the processor loads it, with CLIP frames."""
    return cache.load_video(video_processor, video, keyframe_image_size=KEYFRAME_IMAGE_SIZE, **kwargs)


def assert_same_video(actual, expected):
    torch.testing.assert_close(actual.siglip_frames, expected.siglip_frames, rtol=0, atol=0)
    if expected.clip_frames is None:
        assert actual.clip_frames is None
    else:
        torch.testing.assert_close(actual.clip_frames, expected.clip_frames, rtol=0, atol=0)
    assert actual.timestamps_seconds == expected.timestamps_seconds
    assert actual.metadata == expected.metadata


def cache_files(cache) -> list[str]:
    return sorted(path.name for path in cache.directory.iterdir())


def entry_paths(cache) -> list[Path]:
    return sorted(cache.directory.glob("*.safetensors"))


def test_hit_equals_a_fresh_decode_and_does_not_decode(tiny_tokenizer, tiny_keyframe_selector_dir, cache, video_file):
    video_processor = CountingVideoProcessor()
    processor = ViLaMPProcessor(
        tokenizer=tiny_tokenizer,
        video_processor=video_processor,
        keyframe_selector=KeyframeSelector.from_pretrained(tiny_keyframe_selector_dir),
    )
    fresh = processor.load_video(video_file)
    progress_calls = []
    stored = processor.load_video(video_file, cache=cache, progress=progress_calls.append)
    hit = processor.load_video(video_file, cache=cache, progress=progress_calls.append)
    assert video_processor.num_loads == 2
    assert_same_video(stored, fresh)
    assert_same_video(hit, fresh)
    assert hit.clip_frames is not None
    # the decode reports each frame as it is resized, the hit all of them at once
    assert progress_calls == [1] * len(fresh.siglip_frames) + [len(fresh.siglip_frames)]


def test_processor_refuses_a_cache_that_is_not_a_video_cache(tiny_tokenizer, tiny_keyframe_selector_dir, video_file):
    processor = ViLaMPProcessor(
        tokenizer=tiny_tokenizer, keyframe_selector=KeyframeSelector.from_pretrained(tiny_keyframe_selector_dir)
    )
    with pytest.raises(TypeError, match="`cache` must be a `VideoCache` or None, got str"):
        processor.load_video(video_file, cache="cache_dir")


def test_a_second_process_hits(cache, video_processor, video_file, tmp_path):
    stored = load(cache, video_processor, video_file)
    script = (
        "import sys\n"
        "from safetensors.torch import save_file\n"
        "from vilamp import VideoCache, ViLaMPVideoProcessor\n"
        "class NoDecoding(ViLaMPVideoProcessor):\n"
        "    def load_video(self, video, **kwargs):\n"
        "        raise RuntimeError('decoded although the video is cached')\n"
        "cache = VideoCache(sys.argv[1], max_bytes=2**30)\n"
        "loaded = cache.load_video(NoDecoding(), sys.argv[2], keyframe_image_size=int(sys.argv[3]))\n"
        "save_file({'siglip_frames': loaded.siglip_frames, 'clip_frames': loaded.clip_frames}, sys.argv[4])\n"
    )
    output = tmp_path / "loaded.safetensors"
    subprocess.run(
        [sys.executable, "-c", script, str(cache.directory), str(video_file), str(KEYFRAME_IMAGE_SIZE), str(output)],
        cwd=REPO_ROOT,
        check=True,
    )
    from safetensors.torch import load_file

    loaded = load_file(output)
    torch.testing.assert_close(loaded["siglip_frames"], stored.siglip_frames, rtol=0, atol=0)
    torch.testing.assert_close(loaded["clip_frames"], stored.clip_frames, rtol=0, atol=0)


def write_raw_video(path: Path, frames: np.ndarray) -> Path:
    """An uncompressed video: its size depends only on the number and size of its frames, not on their pixels."""
    return write_video(path, frames, codec="rawvideo")


def test_file_rewritten_in_place_with_same_size_and_mtime_misses(cache, video_processor, tmp_path):
    frames = synthetic_frames(24, width=64, height=48)
    video = write_raw_video(tmp_path / "video.avi", frames)
    other = write_raw_video(tmp_path / "other.avi", 255 - frames)
    assert video.stat().st_size == other.stat().st_size
    load(cache, video_processor, video)
    stat = video.stat()
    with open(video, "r+b") as file:
        file.write(other.read_bytes())
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (video.stat().st_size, video.stat().st_mtime_ns, video.stat().st_ino) == (
        stat.st_size,
        stat.st_mtime_ns,
        stat.st_ino,
    )
    reloaded = load(cache, video_processor, video)
    assert video_processor.num_loads == 2
    assert_same_video(reloaded, ViLaMPVideoProcessor().load_video(other, keyframe_image_size=KEYFRAME_IMAGE_SIZE))


def test_changed_mtime_misses(cache, video_processor, video_file):
    load(cache, video_processor, video_file)
    stat = video_file.stat()
    os.utime(video_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    load(cache, video_processor, video_file)
    assert video_processor.num_loads == 2


# one change per frame setting, each away from the video processor's default
FRAME_SETTING_CHANGES = {
    "fps": {"fps": 2.0},
    "max_frames": {"max_frames": 3},
    "num_frames": {"num_frames": 3},
    "do_sample_frames": {"do_sample_frames": False},
    "size": {"size": {"height": 32, "width": 40}},
    "resample": {"resample": PILImageResampling.BILINEAR},
    "do_resize": {"do_resize": False},
    "do_rescale": {"do_rescale": True},
    "rescale_factor": {"do_rescale": True, "rescale_factor": 1 / 127.5},
    "do_normalize": {"do_normalize": True},
    "image_mean": {"do_normalize": True, "image_mean": (0.25, 0.5, 0.75)},
    "image_std": {"do_normalize": True, "image_std": (0.25, 0.5, 0.75)},
}


def test_every_frame_setting_has_a_change_below():
    assert set(FRAME_SETTING_CHANGES) == set(FRAME_SETTINGS)


@pytest.mark.parametrize("setting", sorted(FRAME_SETTING_CHANGES))
def test_changed_frame_setting_misses_and_gives_its_own_frames(cache, video_processor, video_file, setting):
    changes = FRAME_SETTING_CHANGES[setting]
    # the change's companions (`do_rescale` for `rescale_factor`, ...) are stored first, so only `setting` differs
    companions = {name: value for name, value in changes.items() if name != setting}
    load(cache, video_processor, video_file, **companions)
    changed = load(cache, video_processor, video_file, **changes)
    assert video_processor.num_loads == 2
    assert_same_video(changed, ViLaMPVideoProcessor().load_video(video_file, keyframe_image_size=32, **changes))
    assert_same_video(load(cache, video_processor, video_file, **changes), changed)
    assert video_processor.num_loads == 2


def test_video_processor_defaults_are_part_of_the_key(cache, video_file):
    one_fps, two_fps = CountingVideoProcessor(), CountingVideoProcessor(fps=2.0)
    load(cache, one_fps, video_file)
    assert len(load(cache, two_fps, video_file).siglip_frames) == 10
    assert two_fps.num_loads == 1


def test_keyframe_image_size_is_part_of_the_key(cache, video_processor, video_file):
    load(cache, video_processor, video_file)
    assert cache.load_video(video_processor, video_file).clip_frames is None
    assert cache.load_video(video_processor, video_file, keyframe_image_size=48).clip_frames.shape[-1] == 48
    assert video_processor.num_loads == 3


def test_decode_device_and_num_decoders_share_an_entry(cache, video_processor, video_file):
    stored = load(cache, video_processor, video_file)
    # a hit decodes nothing, so asking for NVDEC needs no GPU here
    assert_same_video(load(cache, video_processor, video_file, decode_device="cuda", num_decoders=3), stored)
    assert video_processor.num_loads == 1


def test_least_recently_used_entry_is_evicted(tmp_path, video_processor, make_video_file):
    first, second, third = (make_video_file(num_frames=40, fps=8) for _ in range(3))
    directory = tmp_path / "cache"
    load(VideoCache(directory, max_bytes=2**30), video_processor, first)
    entry_bytes = entry_paths(VideoCache(directory, max_bytes=2**30))[0].stat().st_size
    cache = VideoCache(directory, max_bytes=int(2.5 * entry_bytes))
    load(cache, video_processor, second)
    load(cache, video_processor, first)  # a hit: `first` is now used more recently than `second`
    load(cache, video_processor, third)
    assert len(entry_paths(cache)) == 2
    assert video_processor.num_loads == 3
    load(cache, video_processor, first)
    load(cache, video_processor, third)
    assert video_processor.num_loads == 3
    load(cache, video_processor, second)
    assert video_processor.num_loads == 4
    assert sum(path.stat().st_size for path in entry_paths(cache)) <= cache.max_bytes


def test_entry_larger_than_the_cap_is_not_stored_and_warned_once(tmp_path, video_processor, make_video_file):
    cache = VideoCache(tmp_path / "cache", max_bytes=1000)
    with pytest.warns(VideoCacheWarning, match=r"larger than the video cache's `max_bytes=1000`") as record:
        load(cache, video_processor, make_video_file(num_frames=40, fps=8))
        load(cache, video_processor, make_video_file(num_frames=40, fps=8))
    assert len(record) == 1
    assert cache_files(cache) == []


def truncate(path: Path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_last_byte(path: Path):
    data = bytearray(path.read_bytes())
    # a byte of a tensor's data: the header and its length stay valid
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def replace_with_garbage(path: Path):
    path.write_bytes(b"not a safetensors file")


def rename_backend_in_header(path: Path):
    data = path.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    # valid JSON of the same length, with a `VideoMetadata` field changed
    path.write_bytes(data[:8] + data[8:header_end].replace(b"pyav", b"xxxx") + data[header_end:])


@pytest.mark.parametrize("damage", [truncate, flip_last_byte, replace_with_garbage, rename_backend_in_header])
def test_damaged_entry_is_a_miss_with_a_warning_and_is_replaced(cache, video_processor, video_file, damage):
    stored = load(cache, video_processor, video_file)
    (entry,) = entry_paths(cache)
    damage(entry)
    with pytest.warns(VideoCacheWarning, match="is damaged or unreadable .* removed and the video decoded again"):
        reloaded = load(cache, video_processor, video_file)
    assert video_processor.num_loads == 2
    assert_same_video(reloaded, stored)
    assert_same_video(load(cache, video_processor, video_file), stored)
    assert video_processor.num_loads == 2


def test_writes_leave_no_temporary_files(cache, video_processor, make_video_file):
    videos = [make_video_file(num_frames=40, fps=8) for _ in range(3)]
    for video in videos:
        load(cache, video_processor, video)
    assert all(name.endswith(".safetensors") and not name.startswith(".") for name in cache_files(cache))
    assert len(cache_files(cache)) == 3


def test_two_writers_of_one_key_leave_one_entry(cache, video_file):
    video_processors = [CountingVideoProcessor(), CountingVideoProcessor()]
    with ThreadPoolExecutor(2) as pool:
        loaded = list(pool.map(lambda processor: load(cache, processor, video_file), video_processors))
    assert_same_video(loaded[0], loaded[1])
    assert len(cache_files(cache)) == 1
    reader = CountingVideoProcessor()
    assert_same_video(load(cache, reader, video_file), loaded[0])
    assert reader.num_loads == 0


def test_leftovers_of_dead_writers_are_removed_on_the_next_write(cache, video_processor, video_file):
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    digest = "0" * 64
    dead_writer = cache.directory / f".{digest}.{ended.pid}.0000.tmp"
    old_leftover = cache.directory / f".{digest}.{os.getpid()}.0001.tmp"
    live_writer = cache.directory / f".{digest}.{os.getpid()}.0002.tmp"
    for path in (dead_writer, old_leftover, live_writer):
        path.write_bytes(b"partial")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old_leftover, (two_days_ago, two_days_ago))
    load(cache, video_processor, video_file)
    assert live_writer.exists()
    assert not dead_writer.exists()
    assert not old_leftover.exists()


def test_file_changed_while_decoding_is_not_stored(cache, video_processor, video_file):
    video_processor.during_load = lambda: os.utime(video_file, ns=(0, 1_000_000_000))
    load(cache, video_processor, video_file)
    assert cache_files(cache) == []


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((4, 48, 64, 3), dtype=np.uint8),
        torch.zeros((4, 3, 48, 64), dtype=torch.uint8),
    ],
    ids=["array", "tensor"],
)
def test_given_frames_bypass_the_cache(cache, video_processor, frames):
    load(cache, video_processor, frames)
    load(cache, video_processor, frames)
    assert video_processor.num_loads == 2
    assert cache_files(cache) == []


def test_missing_file_gives_the_decoders_error(cache, video_processor, tmp_path):
    with pytest.raises(ValueError, match="No video file at"):
        load(cache, video_processor, tmp_path / "missing.mp4")


def test_eviction_and_clear_leave_other_files_alone(tmp_path, video_processor, make_video_file):
    directory = tmp_path / "shared"
    directory.mkdir()
    others = [directory / "model.safetensors", directory / ".notes.tmp", directory / "README.md"]
    for path in others:
        path.write_bytes(b"x" * 10_000)
    # an entry of 5 frames takes 2.2 MB, so the cap holds one
    cache = VideoCache(directory, max_bytes=3_500_000)
    for _ in range(3):
        load(cache, video_processor, make_video_file(num_frames=40, fps=8))
    assert len(set(directory.iterdir()) - set(others)) == 1
    assert all(path.exists() for path in others)
    cache.clear()
    assert cache_files(cache) == sorted(path.name for path in others)


def test_clear_removes_every_entry(cache, video_processor, video_file):
    load(cache, video_processor, video_file)
    cache.clear()
    assert cache_files(cache) == []
    load(cache, video_processor, video_file)
    assert video_processor.num_loads == 2


@pytest.mark.parametrize("max_bytes", [0, -1, 1.5, True, "10", None])
def test_max_bytes_must_be_a_positive_integer(tmp_path, max_bytes):
    with pytest.raises(ValueError, match=rf"`max_bytes` must be a positive integer .* got {max_bytes!r}"):
        VideoCache(tmp_path, max_bytes=max_bytes)


def test_directory_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(ValueError, match="`directory` .* cannot be created or is not a directory"):
        VideoCache(path, max_bytes=2**20)


def test_directory_must_be_a_path(tmp_path):
    with pytest.raises(TypeError, match="`directory` must be a path .* got int"):
        VideoCache(3, max_bytes=2**20)
