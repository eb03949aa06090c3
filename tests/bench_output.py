"""Running the benchmarks as a user runs them, and reading what they print: their markdown tables."""

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_bench(*arguments: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs `python ARGUMENTS...` (a bench script, or `-m torch.distributed.run` on one) from the repository root, with
    this checkout's package first on the path as the benches import it (`PYTHONPATH=.`)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, *arguments]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def markdown_tables(lines: list[str]) -> list[list[dict[str, str]]]:
    """The markdown tables among `lines`, in order, each as a list of rows mapping column to cell."""
    tables, index = [], 0
    while index < len(lines):
        if not lines[index].startswith("|"):
            index += 1
            continue
        columns = [cell.strip() for cell in lines[index].strip("|").split("|")]
        index += 2
        rows = []
        while index < len(lines) and lines[index].startswith("|"):
            rows.append(dict(zip(columns, (cell.strip() for cell in lines[index].strip("|").split("|")))))
            index += 1
        tables.append(rows)
    return tables


__all__ = ["markdown_tables", "run_bench"]
