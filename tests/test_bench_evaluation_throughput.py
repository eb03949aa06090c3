"""The lmms-eval throughput benchmark runs in its tiny mode on the CPU (no timing is checked)."""

import pytest

from tests.bench_output import run_bench

pytest.importorskip(
    "lmms_eval", reason="lmms-eval is not installed: pip install -e '.[lmms-eval]' (the lmms-eval CI lane)"
)


def test_tiny_cpu_run_prints_a_grouped_and_an_ungrouped_row_per_process_count(tmp_path):
    command = [
        "bench/evaluation_throughput.py",
        "--tiny",
        "--device",
        "cpu",
        "--processes",
        "1",
        "--samples",
        "2",
        "--questions-per-video",
        "2",
        "--work-dir",
        str(tmp_path),
    ]
    result = run_bench(*command)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    header = "| processes | each video loaded | samples | answering s | first batch s | samples/s | speed-up |"
    assert header in result.stdout
    # the same predictions whether the video is loaded once for its two questions or once per question
    assert "\n| 1 | per question | 2 | " in result.stdout and "\n| 1 | once | 2 | " in result.stdout
    assert result.stdout.count("| yes |") == 2
    assert "Start-up of the first grouped run's process 0: processor_loading " in result.stdout
