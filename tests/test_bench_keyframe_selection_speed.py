"""The keyframe-selection speed benchmark runs in its tiny mode (its timings are printed, never asserted)."""

import pytest

from tests.bench_output import run_bench


@pytest.mark.slow
def test_tiny_run_prints_the_keyframe_selection_row_of_the_video():
    result = run_bench("bench/keyframe_selection_speed.py", "--tiny")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| DKS (CLIP image + text, selection) on the video |" in result.stdout
