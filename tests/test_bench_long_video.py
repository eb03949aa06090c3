"""The long-video benchmark runs in its tiny CPU mode; its timings and memory are printed, never asserted (rule 19)."""

import pytest

from tests.bench_output import run_bench

FRAME_COUNTS = [16, 64]


def table_rows(lines: list[str], header_start: str) -> list[list[str]]:
    """The cells of the rows of the markdown table whose header line starts with `header_start`."""
    start = next(index for index, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
def test_tiny_cpu_run_prints_one_row_per_frame_count(cache_implementation):
    frame_counts = ",".join(str(count) for count in FRAME_COUNTS)
    command = ["bench/long_video.py", "--tiny", "--device", "cpu", "--max-new-tokens", "3"]
    command += ["--cache-implementation", cache_implementation]
    command += ["--frames", frame_counts, "--unstreamed-frames", frame_counts]
    result = run_bench(*command, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("- torch ") and "transformers" in line for line in lines)

    streamed = table_rows(lines, "| frames | chunk | prompt tokens | peak GPU GiB | vision+DFM s | prefill s |")
    assert [int(row[0]) for row in streamed] == FRAME_COUNTS
    for row in streamed:
        assert row[3] == "n/a"  # no GPU memory on the CPU
        assert "OOM" not in row

    unstreamed = table_rows(lines, "| frames | chunk | peak GPU GiB | vision+DFM s | frames/s |")
    assert [int(row[0]) for row in unstreamed] == FRAME_COUNTS
    assert any(line.startswith("Unstreamed limit:") for line in lines)
