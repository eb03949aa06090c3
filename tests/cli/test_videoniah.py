"""bench/videoniah.py: its tiny synthetic run (table, heatmap, per-trial results) and its answer scoring."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def videoniah():
    spec = importlib.util.spec_from_file_location("videoniah", REPO_ROOT / "bench" / "videoniah.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_prints_the_table_and_draws_the_heatmap(tmp_path):
    command = ["bench/videoniah.py", "--tiny", "--lengths", "8,16", "--depths", "0,1", "--out-dir", str(tmp_path)]
    result = subprocess.run([sys.executable, *command], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = lines.index("| haystack frames | depth 0% | depth 100% | mean |")
    rows = [line.strip("|").split("|") for line in lines[header + 2 : header + 4]]
    assert [int(row[0]) for row in rows] == [8, 16]
    assert all(0.0 <= float(cell) <= 1.0 for row in rows for cell in row[1:])
    with Image.open(tmp_path / "heatmap.png") as image:
        assert image.size == (800, 500)
    results = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(results) == 2 * 2 * 2  # needles x lengths x depths
    for trial in results:
        assert trial["num_frames"] == trial["length"] + 3  # the 3-frame needle is inserted
        first, last = trial["needle_frame_indices"]
        assert first == round(trial["depth"] * trial["length"]) and last == first + 2
        assert isinstance(trial["correct"], bool) and isinstance(trial["response"], str)
    assert (tmp_path / "table.md").read_text().startswith("| haystack frames |")


@pytest.mark.parametrize(
    "response, answer, options, correct",
    [
        ("Red.", "red", None, True),
        ("It is a RED square", "red", None, True),
        ("green", "red", None, False),
        ("B", "B", ["stop", "exit"], True),
        ("(B) exit", "exit", ["stop", "exit"], True),
        ("b. the exit sign", "B", ["stop", "exit"], True),
        ("The sign says exit", "B", ["stop", "exit"], True),
        ("A", "B", ["stop", "exit"], False),
        ("stop or exit", "B", ["stop", "exit"], False),
    ],
)
def test_answers_are_scored_case_insensitively_and_by_letter(videoniah, response, answer, options, correct):
    assert videoniah.score_answer(response, answer, options)["correct"] is correct


def test_needles_jsonl_is_checked_line_by_line(videoniah, tmp_path):
    clip = tmp_path / "needle.png"
    Image.new("RGB", (32, 32), "red").save(clip)
    needles = tmp_path / "needles.jsonl"
    needles.write_text(
        json.dumps({"needle": "needle.png", "question": "What colour?", "answer": "red"}) + "\n"
        + json.dumps({"needle": "needle.png", "question": "What colour?"}) + "\n"
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"needles.jsonl:2 needs string fields \['answer'\]"):
        videoniah.read_needle_specs(needles)
    needles.write_text(json.dumps({"needle": "needle.png", "question": "What colour?", "answer": "red"}) + "\n")
    assert videoniah.read_needle_specs(needles)[0]["needle"] == clip
