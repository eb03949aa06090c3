"""The frame-parallel benchmark runs under `torchrun` in its tiny CPU (gloo) mode; its timings are printed, never
asserted (rule 19)."""

import pytest

from tests.bench_output import markdown_tables, run_bench

FRAME_COUNTS = [2, 16]


@pytest.mark.slow
def test_tiny_gloo_run_gives_one_rank_tokens_for_each_frame_count():
    frame_counts = ",".join(str(count) for count in FRAME_COUNTS)
    result = run_bench(
        *["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "3"],
        *[
            "bench/frame_parallel_encoding.py",
            "--tiny",
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--frames",
            frame_counts,
        ],
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("- torch ") and "transformers" in line for line in lines)
    rows = next(table for table in markdown_tables(lines) if table and "ranks" in table[0])
    assert [int(row["frames"]) for row in rows] == FRAME_COUNTS
    for row in rows:
        assert row["ranks"] == "3"
        assert float(row["max abs token diff"]) <= 1e-5
