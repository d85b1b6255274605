"""Every engine command the docs name starts as `python -m tools.literate.<name>`.

Importing a module in a test is not the same as running it: run as `__main__`, a
module is imported a second time by whatever imports it back, and a cycle that the
tests' imports never hit fails there (the worksheet command did, with ImportError).
"""

import subprocess
import sys

import pytest

from conftest import REPO

COMMANDS = sorted(
    path.stem
    for path in (REPO / "tools/literate").glob("*.py")
    if 'if __name__ == "__main__":' in path.read_text(encoding="utf-8")
)


def test_the_commands_are_found():
    assert {"figures", "benchmarks", "i18n", "worksheet", "pdf"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_answers_help(name):
    result = subprocess.run(
        [sys.executable, "-m", f"tools.literate.{name}", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:")
