"""The file-to-answer benchmark runs in its tiny CPU mode on a video it writes; its timings are printed, never
asserted."""

import pytest

from tests.bench_output import markdown_tables, run_bench


@pytest.mark.slow
def test_tiny_cpu_run_prints_every_stage_and_each_decoder_setting(tmp_path):
    command = ["bench/end_to_end.py", "--tiny", "--device", "cpu", "--max-new-tokens", "3", "--questions", "3"]
    command += ["--video-dir", str(tmp_path), "--decoders", "cpu:1", "cpu:3"]
    result = run_bench(*command)
    assert result.returncode == 0, result.stderr
    stages, decoders = markdown_tables(result.stdout.splitlines())
    assert len(stages) == 1
    row = stages[0]
    assert row["video"].startswith("camera_tiny.mp4 (0.3 min, 20 frames)")
    assert row["decoders"] == "pyav"
    columns = ("probing s", "decoding s", "CLIP s", "vision+DFM s", "prefill s", "answer s", "public API total s")
    for column in (*columns, "total s", "question 2 first token s", "question 3 first token s"):
        assert float(row[column]) >= 0
    # the original evaluation's OpenCV loop keeps the same frame numbers and pixels as this package
    assert row["same frames as original"] == "numbers yes, pixels yes"
    assert [(row["decoders at once"], row["same frames as one CPU decoder"]) for row in decoders] == [
        ("1", "yes"),
        ("3", "yes"),
    ]
    assert (tmp_path / "camera_tiny.mp4").is_file()
