"""Fixtures of the command-line tests: the demo's tiny random checkpoint (original layout and converted) and a video."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vilamp.testing import build_demo_checkpoint, synthetic_frames, write_video

REPO_ROOT = Path(__file__).resolve().parents[2]
VIDEO_SECONDS = 12
VIDEO_FPS = 4


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """A directory holding `original_tiny` (original layout), `tiny-tokenizer`, the tower configs and `vilamp-tiny`
    (converted once per session)."""
    directory = tmp_path_factory.mktemp("demo")
    build_demo_checkpoint(directory)
    return directory


@pytest.fixture(scope="session")
def model_dir(demo_dir) -> Path:
    return demo_dir / "vilamp-tiny"


@pytest.fixture(scope="session")
def video_file(tmp_path_factory) -> Path:
    """A 12-second 160x120 video at 4 fps (12 frames at 1 fps), a red square in its middle third."""
    path = tmp_path_factory.mktemp("video") / "square.mp4"
    return write_video(path, synthetic_frames(VIDEO_SECONDS * VIDEO_FPS), fps=VIDEO_FPS)


@pytest.fixture(scope="session")
def run_vilamp():
    """Runs `python -m vilamp.cli ARGS...` (what the `vilamp` script runs) from the repository root, with `env` added to
    the environment and `stdin` (text) as its input."""

    def run(
        *args, timeout: int = 300, env: dict[str, str] | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "vilamp.cli", *map(str, args)]
        return subprocess.run(
            command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
            input=stdin,
        )  # fmt: skip

    return run
