"""The data-parallel evaluation example in its tiny CPU mode: one process, two gloo processes under torchrun, resuming."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vilamp.testing import torchrun_launcher

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "examples/evaluate_videos.py"
NUM_TINY_ROWS = 4


def run_evaluation(work_dir: Path, *extra_arguments: str, processes: int = 1) -> subprocess.CompletedProcess:
    # the repository root on the path: the script imports the package's folders from it; CPU only, one thread per
    # process, so that one and two processes compute the same greedy answers on any machine
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
    }
    launcher = torchrun_launcher(processes) if processes > 1 else [sys.executable]
    arguments = ["--tiny", "--work-dir", str(work_dir), "--max-new-tokens", "6", "--device", "cpu", *extra_arguments]
    command = [*launcher, SCRIPT, *arguments]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def evaluated_rows(result: subprocess.CompletedProcess) -> int:
    match = re.search(r"^Evaluated (\d+) rows", result.stdout, re.MULTILINE)
    assert match, result.stdout
    return int(match.group(1))


def read_output(work_dir: Path) -> list[dict]:
    lines = (work_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.slow
def test_one_and_two_processes_write_the_same_predictions_in_index_order_and_a_rerun_skips_them(tmp_path):
    single = run_evaluation(tmp_path / "single")
    assert evaluated_rows(single) == NUM_TINY_ROWS
    predictions = read_output(tmp_path / "single")
    assert [row["index"] for row in predictions] == list(range(NUM_TINY_ROWS))
    assert all(set(row) == {"index", "video", "question", "answer", "prediction"} for row in predictions)
    assert all(isinstance(row["prediction"], str) and row["prediction"] for row in predictions)
    assert not list((tmp_path / "single").glob("predictions.jsonl.part*"))  # merged, then removed

    double = run_evaluation(tmp_path / "double", processes=2)
    assert evaluated_rows(double) == NUM_TINY_ROWS
    assert "process 0 of 2: evaluated 2 rows" in double.stdout and "process 1 of 2: evaluated 2 rows" in double.stdout
    double_predictions = read_output(tmp_path / "double")
    assert [row["index"] for row in double_predictions] == list(range(NUM_TINY_ROWS))
    assert [(row["question"], row["prediction"]) for row in double_predictions] == [
        (row["question"], row["prediction"]) for row in predictions
    ]

    output_text = (tmp_path / "double" / "predictions.jsonl").read_text(encoding="utf-8")
    rerun = run_evaluation(tmp_path / "double", processes=2)
    assert evaluated_rows(rerun) == 0
    assert (tmp_path / "double" / "predictions.jsonl").read_text(encoding="utf-8") == output_text


@pytest.mark.slow
def test_an_interrupted_run_resumes_from_its_part_files(tmp_path):
    work_dir = tmp_path / "run"
    run_evaluation(work_dir)
    output = work_dir / "predictions.jsonl"
    lines = output.read_text(encoding="utf-8").splitlines(keepends=True)
    # as if two processes had been stopped: rows 0 and 1 written, row 3 cut short in the middle of its line, no output
    (work_dir / "predictions.jsonl.part0").write_text(lines[0], encoding="utf-8")
    (work_dir / "predictions.jsonl.part1").write_text(lines[1] + lines[3][: len(lines[3]) // 2], encoding="utf-8")
    output.unlink()

    resumed = run_evaluation(work_dir)
    assert evaluated_rows(resumed) == 2  # rows 2 and 3
    assert output.read_text(encoding="utf-8") == "".join(lines)
    assert not list(work_dir.glob("predictions.jsonl.part*"))


@pytest.mark.slow
def test_a_static_cache_gives_the_default_greedy_predictions(tmp_path):
    run_evaluation(tmp_path / "dynamic")
    run_evaluation(tmp_path / "static", "--cache-implementation", "static")
    static, dynamic = read_output(tmp_path / "static"), read_output(tmp_path / "dynamic")
    assert [row["prediction"] for row in static] == [row["prediction"] for row in dynamic]
