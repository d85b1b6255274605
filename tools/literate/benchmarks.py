"""Benchmarks: measure a lesson's `test_bench_*` pairs with pytest-benchmark and keep the results, with the
machine and the hash of the lesson source, for its page.

    python -m tools.literate.benchmarks annotated/foundations/matrix.py
    python -m tools.literate.benchmarks --all

Within a benchmark group, the entry marked `benchmark.extra_info["baseline"] = True` (the library's) is the
yardstick: the page shows every other entry as a ratio of its mean time to the baseline's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tools.literate.curriculum import LessonFile, discover, select


@dataclass
class Result:
    group: str
    name: str
    mean_s: float
    stddev_s: float
    rounds: int
    baseline: bool
    ratio: (
        float | None
    )  # mean / the group's baseline mean; None for the baseline or a group without one


@dataclass
class Benchmarks:
    results: list[Result]
    machine: str
    fresh: bool


def record_path(lesson: LessonFile, docs_dir: Path) -> Path:
    return docs_dir / "benchmarks" / f"{lesson.key}.json"


def has_benchmarks(lesson: LessonFile) -> bool:
    test = lesson.root / lesson.test
    return test.exists() and "def test_bench_" in test.read_text(encoding="utf-8")


def read(lesson: LessonFile, docs_dir: Path) -> Benchmarks | None:
    path = record_path(lesson, docs_dir)
    if not path.exists():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    results = [Result(**entry) for entry in record["results"]]
    return Benchmarks(
        results, record["machine"], record["source_sha256"] == lesson.source_sha256()
    )


def measure(lesson: LessonFile, docs_dir: Path) -> Benchmarks:
    """Run `pytest --benchmark-only` on the lesson's test file and store the results."""
    source_sha256 = lesson.source_sha256()
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "raw.json"
        command = [
            sys.executable,
            "-m",
            "pytest",
            lesson.test,
            "--benchmark-only",
            f"--benchmark-json={raw}",
            "-q",
            "-p",
            "no:cacheprovider",
        ]
        result = subprocess.run(
            command, cwd=lesson.root, capture_output=True, text=True
        )
        if result.returncode != 0 or not raw.exists():
            raise RuntimeError(
                f"{lesson.test}: the benchmarks failed (exit {result.returncode}):\n{result.stdout[-3000:]}"
            )
        data = json.loads(raw.read_text(encoding="utf-8"))
    results = []
    baselines = {
        b["group"]: b["stats"]["mean"]
        for b in data["benchmarks"]
        if b.get("extra_info", {}).get("baseline")
    }
    for bench in data["benchmarks"]:
        is_baseline = bool(bench.get("extra_info", {}).get("baseline"))
        base = baselines.get(bench["group"])
        ratio = None if is_baseline or base is None else bench["stats"]["mean"] / base
        results.append(
            Result(
                bench["group"] or "",
                bench["name"],
                bench["stats"]["mean"],
                bench["stats"]["stddev"],
                bench["stats"]["rounds"],
                is_baseline,
                ratio,
            )
        )
    info = data["machine_info"]
    cpu = info.get("cpu", {})
    machine = f"{cpu.get('brand_raw') or info.get('processor') or info.get('machine')}, {os.cpu_count()} cores, {info.get('system', platform.system())}, Python {info.get('python_version')}"
    record = {
        "source": lesson.relative,
        "source_sha256": source_sha256,
        "machine": machine,
        "results": [r.__dict__ for r in results],
    }
    path = record_path(lesson, docs_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, delete=False, suffix=".part", encoding="utf-8"
    ) as handle:
        handle.write(json.dumps(record, indent=2) + "\n")
    os.chmod(handle.name, 0o644)
    os.replace(handle.name, path)
    return read(lesson, docs_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Measure lesson benchmarks and store them for the site."
    )
    parser.add_argument(
        "lessons", nargs="*", help="lesson files, e.g. annotated/foundations/matrix.py"
    )
    parser.add_argument(
        "--all", action="store_true", help="every lesson that has benchmarks"
    )
    parser.add_argument("--root", default=".", help="the project root")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    everything = [lesson for lesson in discover(root) if has_benchmarks(lesson)]
    try:
        chosen = everything if args.all else select(args.lessons, everything)
    except ValueError as error:
        parser.error(
            f"{error}; name lesson files whose tests have test_bench_* functions, or pass --all"
        )
    for lesson in chosen:
        print(f"{lesson.test}: measuring ...", flush=True)
        stored = measure(lesson, root / "docs")
        for entry in stored.results:
            ratio = (
                "baseline"
                if entry.baseline
                else (f"{entry.ratio:.2f}× baseline" if entry.ratio else "")
            )
            print(
                f"  {entry.group:32s} {entry.name:40s} {entry.mean_s * 1e3:9.3f} ms  {ratio}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
