"""Figures: run a lesson's demo, keep the PNGs it saves with the hash of the source that made them.

    python -m tools.literate.figures annotated/foundations/autograd.py   # one lesson
    python -m tools.literate.figures --all                              # every lesson

The site build only reads what this wrote; it never trains anything. A figure set whose `source_sha256`
differs from the lesson's current source is stale: the page says so and `tests/tools/test_lessons.py` fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tools.literate.curriculum import LessonFile, discover, select

MANIFEST = "figures.json"
OUTPUT_LINES = 20  # how much of the demo's printed output the page shows


@dataclass
class Figures:
    """What a lesson's page shows from its last demo run."""

    files: list[str]  # PNG names, in the folder `folder`
    folder: str  # relative to docs/: "figures/foundations/autograd"
    output: str  # the last lines the demo printed
    fresh: bool  # made from the current source
    command: str


def folder_for(lesson: LessonFile) -> str:
    return f"figures/{lesson.key}"


def read(lesson: LessonFile, docs_dir: Path) -> Figures | None:
    """The stored figures of a lesson, or None when its demo has never been run through this tool."""
    manifest_path = docs_dir / folder_for(lesson) / MANIFEST
    if not manifest_path.exists():
        return None
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    return Figures(
        files=manifest["files"],
        folder=folder_for(lesson),
        output=manifest.get("output", ""),
        fresh=manifest["source_sha256"] == lesson.source_sha256(),
        command=manifest["command"],
    )


def regenerate(lesson: LessonFile, docs_dir: Path, extra: list[str] = ()) -> Figures:
    """Run the lesson's demo with its default flags and replace its stored figures in one step."""
    target = docs_dir / folder_for(lesson)
    target.parent.mkdir(parents=True, exist_ok=True)
    source_sha256 = lesson.source_sha256()
    with tempfile.TemporaryDirectory(
        dir=target.parent, prefix=f".{target.name}-"
    ) as scratch:
        out = Path(scratch) / "out"
        out.mkdir()
        command = [sys.executable, "-m", lesson.module, "--out", str(out), *extra]
        started = time.perf_counter()
        result = subprocess.run(
            command,
            cwd=lesson.root,
            capture_output=True,
            text=True,
            env={**os.environ, "MPLBACKEND": "Agg"},
        )
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(
                f"{lesson.relative}: the demo failed (exit {result.returncode}):\n{result.stderr[-3000:]}"
            )
        files = sorted(p.name for p in out.iterdir() if p.suffix == ".png")
        if not files:
            raise RuntimeError(
                f"{lesson.relative}: the demo saved no PNG figure in --out"
            )
        for stray in [p for p in out.iterdir() if p.suffix != ".png"]:
            shutil.rmtree(stray) if stray.is_dir() else stray.unlink()
        shown = " ".join(["python", "-m", lesson.module, *extra])
        manifest = {
            "source": lesson.relative,
            "source_sha256": source_sha256,
            "command": shown,
            "files": files,
            "output": "\n".join(result.stdout.strip().splitlines()[-OUTPUT_LINES:]),
            "seconds": round(seconds, 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}, Python {platform.python_version()}",
        }
        (out / MANIFEST).write_text(
            json.dumps(manifest, indent=2) + "\n", encoding="utf-8"
        )
        # Swap the new folder in whole: a failure above leaves the old figures as they were.
        old = Path(scratch) / "old"
        if target.exists():
            os.replace(target, old)
        os.replace(out, target)
    return read(lesson, docs_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Regenerate the figures shown on lesson pages."
    )
    parser.add_argument(
        "lessons",
        nargs="*",
        help="lesson files, e.g. annotated/foundations/autograd.py",
    )
    parser.add_argument("--all", action="store_true", help="every lesson")
    parser.add_argument(
        "--stale",
        action="store_true",
        help="only lessons whose figures are missing or stale",
    )
    parser.add_argument("--root", default=".", help="the project root")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    everything = discover(root)
    try:
        chosen = (
            everything if args.all or args.stale else select(args.lessons, everything)
        )
    except ValueError as error:
        parser.error(f"{error}; name lesson files or pass --all")
    docs_dir = root / "docs"
    for lesson in chosen:
        if args.stale and (stored := read(lesson, docs_dir)) and stored.fresh:
            continue
        print(f"{lesson.relative}: running its demo ...", flush=True)
        figures = regenerate(lesson, docs_dir)
        print(f"  {len(figures.files)} figure(s) → docs/{figures.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
