"""The processor memory benchmark runs in its tiny mode (its figures are printed, never asserted)."""

from tests.bench_output import markdown_tables, run_bench


def test_tiny_run_prints_one_row_per_video():
    result = run_bench("bench/processor_memory.py", "--tiny")
    assert result.returncode == 0, result.stderr[-3000:]
    (table,) = markdown_tables(result.stdout.splitlines())
    assert [(row["sampled frames"], row["calls"]) for row in table] == [("8", "6")]
    for column in ("RSS before MB", "peak of call 1 MB", "RSS after last call MB", "highest / peak of call 1"):
        assert float(table[0][column]) > 0
