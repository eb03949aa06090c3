"""README.md as a user follows it: every ```bash and ```python block that needs no GPU and no network runs as written,
in order, in a fresh directory, with `vilamp` and `python` meaning this checkout's command line and interpreter."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vilamp.testing import build_tiny_model, build_tiny_processor, write_synthetic_video

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
# how the first line of a block starts when a machine without a GPU, or without the network, cannot run it
SKIP_MARKERS = ("# needs a GPU", "# needs the network")
# the README is the front door; depth goes to docs/
MAX_README_LINES = 250
# what "The real model" section leaves behind and the Python and CLI examples use: the tiny model stands in for it
README_MODEL_DIR, README_VIDEO = "vilamp-7b", "talk.mp4"
COMMANDS = {
    "python": '#!/bin/sh\nexec "{python}" "$@"\n',
    "vilamp": '#!/bin/sh\nexec "{python}" -m vilamp.cli "$@"\n',
    "vilamp-convert": '#!/bin/sh\nexec "{python}" -m vilamp.conversion.convert_original_to_hf "$@"\n',
}
BLOCK_TIMEOUT_SECONDS = 600


def readme_blocks() -> list[tuple[str, str]]:
    """The README's shell and Python blocks, in order, as `(language, code)`."""
    pattern = re.compile(r"^```(bash|shell|python)\n(.*?)^```", re.M | re.S)
    return [(language, code) for language, code in pattern.findall(README.read_text(encoding="utf-8"))]


def needs_gpu_or_network(code: str) -> bool:
    """Whether the block's first line starts with one of `SKIP_MARKERS`."""
    return code.splitlines()[0].startswith(SKIP_MARKERS)


def runnable_blocks() -> list[tuple[str, str]]:
    """The blocks that need neither a GPU nor the network."""
    return [(language, code) for language, code in readme_blocks() if not needs_gpu_or_network(code)]


def test_readme_is_short_and_its_blocks_are_marked_or_runnable():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move depth to docs/."
    blocks = readme_blocks()
    skipped = [code for _, code in blocks if needs_gpu_or_network(code)]
    assert skipped and len(runnable_blocks()) + len(skipped) == len(blocks)
    # a marker elsewhere than on the first line would not skip the block: a reader would think it runs here
    for _, code in blocks:
        later_lines = code.splitlines()[1:]
        assert not any(line.startswith(SKIP_MARKERS) for line in later_lines), f"a marker not on line 1:\n{code}"


def test_readme_links_to_files_that_exist():
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [target for target in targets if not target.startswith(("http://", "https://"))]
    assert local, "README.md links to no file of the repository"
    missing = [target for target in local if not (REPO_ROOT / target).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


@pytest.mark.slow
def test_readme_blocks_run_without_gpu_or_network(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, script in COMMANDS.items():
        (bin_dir / name).write_text(script.format(python=sys.executable))
        (bin_dir / name).chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    build_tiny_model().save_pretrained(work / README_MODEL_DIR)
    build_tiny_processor().save_pretrained(work / README_MODEL_DIR)
    write_synthetic_video(work / README_VIDEO, num_frames=24)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        # this checkout's `vilamp`, whatever an editable install points at
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "MPLBACKEND": "Agg",
        "HF_HUB_OFFLINE": "1",
    }
    blocks = runnable_blocks()
    assert any(language == "python" for language, _ in blocks) and any(language != "python" for language, _ in blocks)
    for index, (language, code) in enumerate(blocks):
        if language == "python":
            script = work / f"readme_block_{index}.py"
            script.write_text(code, encoding="utf-8")
            command = [sys.executable, script.name]
        else:
            command = ["bash", "-e", "-o", "pipefail", "-c", code]
        result = subprocess.run(
            command, cwd=work, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_SECONDS
        )
        assert result.returncode == 0, (
            f"README block {index} ({language}) exited {result.returncode}:\n{code}\n"
            f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
        )
