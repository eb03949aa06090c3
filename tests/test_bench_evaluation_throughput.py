"""The lmms-eval throughput benchmark runs in its tiny mode on the CPU (no timing is checked)."""

import pytest

from tests.bench_output import run_bench

pytest.importorskip(
    "lmms_eval", reason="lmms-eval is not installed: pip install -e '.[lmms-eval]' (the lmms-eval CI lane)"
)


def test_tiny_cpu_run_prints_a_row_per_process_count(tmp_path):
    command = [
        "bench/evaluation_throughput.py",
        "--tiny",
        "--device",
        "cpu",
        "--processes",
        "1",
        "--samples",
        "2",
        "--videos",
        "1",
        "--work-dir",
        str(tmp_path),
    ]
    result = run_bench(*command)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "| processes | samples | answering s | first batch s | samples/s | speed-up |" in result.stdout
    assert "\n| 1 | 2 | " in result.stdout and result.stdout.rstrip().endswith("| yes |")
