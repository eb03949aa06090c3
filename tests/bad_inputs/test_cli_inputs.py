"""Bad converted directories given to `vilamp ask` and `vilamp keyframes`: damaged weight files, invalid or mistyped
config.json. Each exits 1 with one line on stderr naming the directory, the problem and the fix, no traceback."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# loading the tiny model takes seconds; this bounds a hang
SUBPROCESS_TIMEOUT_SECONDS = 300


def run_vilamp(*arguments) -> subprocess.CompletedProcess:
    """Runs `python -m vilamp.cli ARGUMENTS...` (what the `vilamp` script runs) from the repository root."""
    command = [sys.executable, "-m", "vilamp.cli", *map(str, arguments)]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_SECONDS)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one line the command printed on stderr."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def damaged_dir(converted_dir, tmp_path) -> Path:
    """A copy of the converted reference checkpoint, for a test to damage."""
    return Path(shutil.copytree(converted_dir, tmp_path / "vilamp-tiny"))


def ask(model_dir: Path, video: Path) -> subprocess.CompletedProcess:
    return run_vilamp(
        "ask", model_dir, video, "What is shown?", "--device", "cpu", "--max-new-tokens", "2", "--no-progress"
    )


@pytest.mark.parametrize(
    "damage",
    [lambda data: b"not safetensors" * 100, lambda data: data[: len(data) // 2]],
    ids=["garbage", "truncated"],
)
def test_ask_with_damaged_weights_names_the_file(damage, damaged_dir, make_video_file):
    """A damaged `model.safetensors` in MODEL_DIR (garbage or truncated) exits 1 naming the file and how to convert again."""
    weights = damaged_dir / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    result = ask(damaged_dir, make_video_file(8))
    assert result.returncode == 1
    error = error_line(result)
    assert error.startswith(f"vilamp ask: error: MODEL_DIR `{damaged_dir}` does not load: model.safetensors damaged (")
    assert f"vilamp convert ORIGINAL_DIR {damaged_dir} --overwrite" in error


def test_keyframes_with_damaged_keyframe_selector_names_the_file(damaged_dir, make_video_file, tmp_path):
    """A damaged `keyframe_selector.safetensors` given to `vilamp keyframes` exits 1 naming the file."""
    (damaged_dir / "keyframe_selector.safetensors").write_bytes(b"{}")
    result = run_vilamp("keyframes", damaged_dir, make_video_file(8), "What is shown?", "--out", tmp_path / "t.png")
    assert result.returncode == 1
    assert "does not load: keyframe_selector.safetensors damaged" in error_line(result)


def test_ask_with_invalid_json_config_exits_1(damaged_dir, make_video_file):
    """A `config.json` that is not valid JSON exits 1 naming the file."""
    (damaged_dir / "config.json").write_text('{"model_type": "vilamp",')
    result = ask(damaged_dir, make_video_file(8))
    assert result.returncode == 1
    error = error_line(result)
    assert f"MODEL_DIR `{damaged_dir}` does not load" in error and "config.json" in error and "vilamp convert" in error


def test_ask_with_mistyped_config_field_exits_1(damaged_dir, make_video_file):
    """A `config.json` field of the wrong type (a string where an int is needed) exits 1 naming the field."""
    config = json.loads((damaged_dir / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] = "two"
    (damaged_dir / "config.json").write_text(json.dumps(config))
    result = ask(damaged_dir, make_video_file(8))
    assert result.returncode == 1
    error = error_line(result)
    assert f"MODEL_DIR `{damaged_dir}` does not load" in error and "num_hidden_layers" in error and "'two'" in error


def test_ask_on_a_truncated_video_warns_in_one_line_and_answers(converted_dir, tmp_path):
    """`vilamp ask` on an MP4 cut short after a front index: one warning line with how many frames decoded, then the
    answer, exit 0."""
    from vilamp.testing import synthetic_frames, write_video

    intact = write_video(
        tmp_path / "intact.mp4",
        synthetic_frames(48, width=64, height=48),
        fps=8,
        codec="libx264",
        options={"preset": "ultrafast"},
        container_options={"movflags": "faststart"},
    )
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(intact.read_bytes()[: intact.stat().st_size // 2])
    result = run_vilamp(
        "ask",
        converted_dir,
        truncated,
        "What is shown?",
        "--device",
        "cpu",
        "--max-new-tokens",
        "2",
        "--no-progress",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    warning = error_line(result)
    assert warning.startswith(f"vilamp ask: warning: `{truncated}` is damaged or truncated: only ")
    assert "of the 48 frames its header promises could be decoded" in warning
    assert 0 < json.loads(result.stdout)["num_frames"] < 48
