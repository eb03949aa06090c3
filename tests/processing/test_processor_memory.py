"""Many requests in one process: a processor call frees what it held when it returns, so the host memory of a
long-lived process (a server, an evaluation's decoding workers) stays flat.

Not a benchmark: nothing is timed. RSS after a call jumps up or down by tens of MB now and then (the allocator gives
memory back or takes it), so the growth compares the median of the first and of the last few calls: a leak of 1 MB per
request adds 35 MB or more between them, a correct processor about 5.
"""

import gc
import os

import numpy as np
import pytest

from vilamp.processing import ViLaMPProcessor
from vilamp.testing import TINY_NUM_KEYFRAMES, build_tiny_keyframe_selector, build_tiny_tokenizer, write_video

QUESTION = "What happens in the video?"
WARMUP_CALLS = 5
MEASURED_CALLS = 40
# calls whose median RSS is compared, at the start and at the end of the measured ones
WINDOW = 5
# MB of growth allowed between the two medians, MEASURED_CALLS - WINDOW calls apart
MAX_GROWTH_MB = 15


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.fixture(scope="module")
def processor() -> ViLaMPProcessor:
    """The tiny tokenizer and CLIP with the released SigLIP frame size (384), so each call holds frames of real size."""
    return ViLaMPProcessor(
        tokenizer=build_tiny_tokenizer(),
        num_keyframes=TINY_NUM_KEYFRAMES,
        frame_size=384,
        keyframe_selector=build_tiny_keyframe_selector(),
    )


@pytest.fixture(scope="module")
def video_path(tmp_path_factory):
    """A 10-second 160x120 video sampled to 10 frames."""
    rng = np.random.default_rng(0)
    frames = (rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(20))
    return str(write_video(tmp_path_factory.mktemp("video") / "video.mp4", frames, fps=2))


def is_pyav_pixel_format(thing) -> bool:
    """PyAV before 16 keeps each pixel format's description (a VideoFormat and its components) in a reference cycle
    of its own; a few hundred bytes that hold no pixel data, and none of this package's making."""
    if isinstance(thing, tuple):
        return bool(thing) and all(is_pyav_pixel_format(item) for item in thing)
    return type(thing).__module__.startswith("av.") and type(thing).__name__ in ("VideoFormat", "VideoFormatComponent")


def test_a_call_on_a_file_leaves_nothing_for_the_cyclic_collector(processor, video_path):
    processor(videos=video_path, text=QUESTION)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        inputs = processor(videos=video_path, text=QUESTION)
        gc.collect()
        unreachable = [thing for thing in gc.garbage if not is_pyav_pixel_format(thing)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert inputs["video_frame_counts"].tolist() == [10]
    # objects in reference cycles wait for a full collection, and every frame they hold waits with them
    assert unreachable == [], f"{len(unreachable)} objects in reference cycles, such as {unreachable[:3]!r:.300}"


@pytest.mark.slow
def test_resident_memory_is_flat_over_many_calls_after_warm_up(processor, video_path):
    for _ in range(WARMUP_CALLS):
        processor(videos=video_path, text=QUESTION)
    resident = []
    for _ in range(MEASURED_CALLS):
        processor(videos=video_path, text=QUESTION)
        resident.append(resident_mb())
    growth = float(np.median(resident[-WINDOW:]) - np.median(resident[:WINDOW]))
    assert growth < MAX_GROWTH_MB, (
        f"RSS grew by {growth:.1f} MB over {MEASURED_CALLS - WINDOW} processor calls: {[round(mb) for mb in resident]}"
    )
