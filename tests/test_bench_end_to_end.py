"""The file-to-answer benchmark runs in its tiny CPU mode on a video it writes; its timings are printed, never
asserted."""

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_tiny_cpu_run_prints_one_row_with_every_stage(tmp_path):
    command = [sys.executable, "bench/end_to_end.py", "--tiny", "--device", "cpu", "--max-new-tokens", "3"]
    command += ["--video-dir", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("| video |"))
    columns = [cell.strip() for cell in lines[header].strip("|").split("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[header + 2 :] if line.startswith("|")]
    assert len(rows) == 1
    row = dict(zip(columns, rows[0]))
    assert row["video"].startswith("camera_tiny.mp4 (0.3 min, 20 frames)")
    for column in ("probing s", "decoding s", "CLIP s", "vision+DFM s", "prefill s", "answer s", "total s"):
        assert float(row[column]) >= 0
    # the original evaluation's OpenCV loop keeps the same frame numbers and pixels as this package
    assert row["same frames as original"] == "numbers yes, pixels yes"
    assert (tmp_path / "camera_tiny.mp4").is_file()
