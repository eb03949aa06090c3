"""The quantization benchmark runs in its tiny CPU mode; its timings and memory are printed, never asserted (rule 19)."""

import pytest

from tests.bench_output import markdown_tables, run_bench

FRAME_COUNTS = [16, 64]


@pytest.mark.slow
def test_tiny_cpu_run_prints_a_row_per_setting_and_frame_count_and_says_why_a_setting_is_skipped():
    pytest.importorskip("torchao", reason="the torchao rows need torchao (pinned in ci/constraints*.txt)")
    command = ["bench/quantization.py", "--tiny", "--device", "cpu", "--max-new-tokens", "3"]
    command += ["--frames", ",".join(str(count) for count in FRAME_COUNTS)]
    result = run_bench(*command, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("- torch ") and "transformers" in line and "torchao" in line for line in lines)
    (table,) = markdown_tables(lines)
    rows = {(row["setting"], row["frames"]): row for row in table}
    for setting in ("bf16", "torchao-int8"):
        for num_frames in FRAME_COUNTS:
            row = rows[setting, str(num_frames)]
            assert row["peak GPU GiB"] == "n/a"  # no GPU memory on the CPU
            assert float(row["first token s"]) > 0 and float(row["decode ms/token"]) > 0
    assert rows["bf16", "16"]["max abs Δlogits"] == "reference"
    # int8 weights move the logits, by a little
    assert 0 < float(rows["torchao-int8", "64"]["max abs Δlogits"]) < 1
    assert 0 <= float(rows["torchao-int8", "64"]["equal greedy ids"]) <= 1
    # bitsandbytes and torchao's int4 need a GPU: each says so in one row instead of failing the run
    for setting in ("int8", "nf4", "torchao-int4"):
        assert (
            "need a GPU" in rows[setting, "-"]["vision+DFM s"] or "needs a GPU" in rows[setting, "-"]["vision+DFM s"]
        )
