"""Verified by ruff, with the project's configuration (pyproject.toml: its default 88
columns, the pyflakes and pycodestyle rules): the engine, the lessons, the kernels, the
tests and the code under docs/ (the tour notebook, the Python blocks of the hand-written
pages) lint clean and are formatted as `ruff format` would write them. A code line of 88
characters fits the page."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PATHS = [
    name for name in ("tools", "annotated", "tests", "docs") if (REPO / name).is_dir()
]


@pytest.mark.parametrize(
    "command", [["check"], ["format", "--check"]], ids=["check", "format"]
)
def test_ruff_is_clean(command):
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *command, *PATHS],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
