"""The model-split benchmark runs in its tiny CPU mode, where every split is a device map onto the CPU; its timings and
memory are printed, never asserted (rule 19)."""

import subprocess

import pytest

from tests.bench_output import markdown_tables, run_bench

FRAME_COUNTS = [5, 16]
SPLITS = ["auto", "vision=cpu,language=cpu,head=cpu"]


def run_model_split(*arguments: str) -> subprocess.CompletedProcess:
    return run_bench("bench/model_split.py", *arguments, timeout=300)


@pytest.mark.slow
def test_tiny_cpu_splits_give_the_one_device_ids_at_every_frame_count(tmp_path):
    arguments = ["--tiny", "--device", "cpu", "--work-dir", str(tmp_path), "--max-new-tokens", "3"]
    arguments += ["--frames", ",".join(str(count) for count in FRAME_COUNTS)]
    for split in SPLITS:
        arguments += ["--split", split]
    result = run_model_split(*arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("- torch ") and "transformers" in line for line in lines)
    assert sum("bitwise equal to one device's" in line for line in lines) == len(SPLITS)

    rows = next(table for table in markdown_tables(lines) if table and "same ids as one device" in table[0])
    reference_rows = [row for row in rows if row["split"] == "one device (reference)"]
    assert [int(row["frames"]) for row in reference_rows] == FRAME_COUNTS
    for split in SPLITS:
        split_rows = [row for row in rows if row["split"] == split]
        assert [int(row["frames"]) for row in split_rows] == FRAME_COUNTS
        for row in split_rows:
            assert row["same ids as one device"] == "yes"
            assert row["first stage that differs"] == "none"
            assert float(row["first-step logits max abs diff"]) == 0
            assert row["peak GiB per GPU"] == "n/a"  # no GPU memory on the CPU
    # the same model again, and with half the vision chunk
    controls = [row for row in rows if row["split"] in ("one device again", "one device, chunk 2")]
    assert len(controls) == 2 and all(row["same ids as one device"] == "yes" for row in controls)


def test_gpu_split_with_cpu_device_is_refused_naming_the_split(tmp_path):
    result = run_model_split(
        "--tiny", "--device", "cpu", "--work-dir", str(tmp_path), "--split", "vision=1,language=0"
    )
    assert result.returncode == 2
    assert "`--split vision=1,language=0` places the model on GPUs" in result.stderr
    assert not any(tmp_path.iterdir())  # refused before anything is built
