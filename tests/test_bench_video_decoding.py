"""The video decoding benchmark runs in its tiny mode (its timings are printed, never asserted)."""

import pytest

from tests.bench_output import markdown_tables, run_bench


@pytest.mark.slow
def test_tiny_run_prints_a_row_per_codec_with_the_decoders_used_and_equal_frames():
    result = run_bench("bench/video_decoding.py", "--tiny")
    assert result.returncode == 0, result.stderr[-3000:]
    (table,) = markdown_tables(result.stdout.splitlines())
    assert [row["video"] for row in table] == ["h264", "vp9"]
    for row in table:
        assert row["cpu decoders"] == "pyav"
        assert row["auto decoders"] in ("pyav", "pyav+nvdec")
        assert row["equal to cpu"] == "auto: yes"
        # the WebM header states no frame count: the frames are counted, so the length reads right
        assert row["minutes"] == "0.3"
