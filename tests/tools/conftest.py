"""A miniature project for the engine's tests: its own mkdocs.yml, curriculum, one
fixture lesson and its test."""

import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]

MKDOCS_YML = """\
site_name: fixture
docs_dir: docs
theme:
  name: material
  font: false
nav:
  - Home: index.md
plugins:
  - search
  - literate
"""

CURRICULUM = """\
[[stage]]
number = 1
label = "基础"
title = "Foundations"
weeks = "1–2"
summary = "Fixture stage."

  [[stage.block]]
  weeks = "1"
  label = "示例"
  title = "Fixture week"
  lessons = [
    { module = "demo/tiny_model", title = "A tiny model" },
    { module = "demo/not_written", title = "A planned lesson" },
  ]
"""


def make_project(root: Path, lesson_source: str | None = None) -> Path:
    """Lay out a project with the tiny fixture lesson (or `lesson_source` in its place)
    under `root`."""
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "index.md").write_text("# Fixture\n\n<!-- learning-path -->\n")
    (root / "mkdocs.yml").write_text(MKDOCS_YML)
    (root / "annotated" / "demo").mkdir(parents=True)
    (root / "annotated" / "__init__.py").write_text("")
    for shared in ("data.py", "figures.py"):  # the modules every lesson may import
        (root / "annotated" / shared).write_text(
            (REPO / "annotated" / shared).read_text()
        )
    (root / "annotated" / "demo" / "__init__.py").write_text("")
    (root / "annotated" / "curriculum.toml").write_text(CURRICULUM)
    source = (
        lesson_source
        if lesson_source is not None
        else (FIXTURES / "tiny_model.py").read_text()
    )
    (root / "annotated" / "demo" / "tiny_model.py").write_text(source)
    (root / "tests" / "demo").mkdir(parents=True)
    (root / "tests" / "demo" / "test_tiny_model.py").write_text(
        '"""Verified against torch.nn.Linear, to the bit."""\n'
    )
    return root


def build(root: Path, site: Path | None = None) -> subprocess.CompletedProcess:
    """`mkdocs build --strict` in `root`, with the repository importable (for
    `tools`)."""
    site = site or root / "site"
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=root,
        capture_output=True,
        text=True,
        env=_env(root),
    )


def _env(root: Path) -> dict:
    import os

    return {
        **os.environ,
        "PYTHONPATH": f"{root}{os.pathsep}{REPO}",
        "NO_MKDOCS_2_WARNING": "1",
    }


@pytest.fixture
def project(tmp_path) -> Path:
    return make_project(tmp_path / "project")
