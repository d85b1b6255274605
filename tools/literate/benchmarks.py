"""Benchmarks: measure a lesson's `test_bench_*` pairs with pytest-benchmark and keep
the results, with the machine and the hash of the lesson source, for its page.

    python -m tools.literate.benchmarks annotated/foundations/matrix.py
    python -m tools.literate.benchmarks --all

Within a benchmark group, the entry marked `benchmark.extra_info["baseline"] = True`
(the library's) is the yardstick: the page states every other entry as "N× faster/slower
than" it. An entry may name what it measures with `benchmark.extra_info["label"]`; the
baseline's label is what the page compares against ("numpy.linalg.solve").
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tools.literate.figures import prose_files, stale_quotes
from tools.literate.files import (
    LessonFile,
    atomic_write,
    lesson_command,
    pytest_environment,
)


@dataclass(frozen=True)
class Result:
    group: str
    name: str
    label: str  # what a reader calls it: "numpy.linalg.solve", "ours"
    mean_s: float
    stddev_s: float
    rounds: int
    baseline: bool
    # mean / the group's baseline mean; None for the baseline itself
    ratio: float | None


@dataclass(frozen=True)
class Benchmarks:
    results: tuple[Result, ...]
    machine: str
    fresh: bool

    def baseline_of(self, group: str) -> Result | None:
        return next((r for r in self.results if r.group == group and r.baseline), None)


def has_benchmarks(test_source: str | None) -> bool:
    return bool(test_source) and "def test_bench_" in test_source


def parse_record(text: str, source_sha256: str) -> Benchmarks:
    record = json.loads(text)
    results = tuple(
        Result(**{"label": entry["name"], **entry}) for entry in record["results"]
    )
    return Benchmarks(
        results, record["machine"], record["source_sha256"] == source_sha256
    )


def read(lesson: LessonFile, docs_dir: Path) -> Benchmarks | None:
    path = docs_dir / lesson.benchmarks_record
    if not path.exists():
        return None
    return parse_record(path.read_text(encoding="utf-8"), lesson.source_sha256())


def _label(bench: dict) -> str:
    info = bench.get("extra_info", {})
    name = bench["name"].removeprefix("test_bench_")
    return str(info.get("label") or name.replace("_", " "))


def measure(lesson: LessonFile, docs_dir: Path) -> Benchmarks:
    """Run `pytest --benchmark-only` on the lesson's test file and store the results."""
    source_sha256 = lesson.source_sha256()
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "raw.json"
        command = [
            sys.executable, "-m", "pytest", lesson.test, "--benchmark-only",
            f"--benchmark-json={raw}", "-q", "-p", "no:cacheprovider",
        ]  # fmt: skip
        result = subprocess.run(
            command,
            cwd=lesson.root,
            capture_output=True,
            text=True,
            env=pytest_environment(),
        )
        if result.returncode != 0 or not raw.exists():
            raise RuntimeError(
                f"{lesson.test}: the benchmarks failed (exit {result.returncode}):\n"
                f"{result.stdout[-3000:]}{result.stderr[-2000:]}"
            )
        data = json.loads(raw.read_text(encoding="utf-8"))
    baselines = {
        b["group"]: b["stats"]["mean"]
        for b in data["benchmarks"]
        if b.get("extra_info", {}).get("baseline")
    }
    results = []
    for bench in data["benchmarks"]:
        is_baseline = bool(bench.get("extra_info", {}).get("baseline"))
        base = baselines.get(bench["group"])
        mean = bench["stats"]["mean"]
        results.append(
            Result(
                group=bench["group"] or "",
                name=bench["name"],
                label=_label(bench),
                mean_s=mean,
                stddev_s=bench["stats"]["stddev"],
                rounds=bench["stats"]["rounds"],
                baseline=is_baseline,
                ratio=None if is_baseline or base is None else mean / base,
            )
        )
    info = data["machine_info"]
    cpu = (
        info.get("cpu", {}).get("brand_raw")
        or info.get("processor")
        or info.get("machine")
    )
    system = info.get("system", platform.system())
    machine = (
        f"{cpu}, {os.cpu_count()} cores, {system}, Python {info.get('python_version')}"
        f"; {blas()}"
    )
    record = {
        "source": lesson.relative,
        "source_sha256": source_sha256,
        "machine": machine,
        "results": [r.__dict__ for r in results],
    }
    atomic_write(
        docs_dir / lesson.benchmarks_record, json.dumps(record, indent=2) + "\n"
    )
    return read(lesson, docs_dir)


def comparison(result: Result, baseline: Result | None) -> str:
    """The ratio in words: "386× slower than numpy.linalg.solve", "1.7× faster than
    torch"."""
    if result.baseline:
        return "the baseline"
    if baseline is None or result.ratio is None:
        return ""
    if result.ratio >= 1.05:
        return f"{result.ratio:.3g}× slower than {baseline.label}"
    if result.ratio <= 1 / 1.05:
        return f"{1 / result.ratio:.3g}× faster than {baseline.label}"
    return f"as fast as {baseline.label} (within 5 %)"


def blas() -> str:
    """Which BLAS kernel numpy runs here: OPENBLAS_CORETYPE can pick a slow one, and a
    benchmark against numpy must say which it measured."""
    import numpy  # loads the BLAS library that threadpoolctl reports on
    from threadpoolctl import threadpool_info

    found = [
        f"{i['internal_api']} {i['version']} ({i.get('architecture') or 'unknown'} "
        f"kernel, {i['num_threads']} threads)"
        for i in threadpool_info()
        if i["user_api"] == "blas"
    ]
    return f"numpy {numpy.__version__} on " + (", ".join(found) or "no BLAS found")


def _quoted(stored: Benchmarks | None) -> str:
    """Each result's time and ratio as the page shows them, and a time of 10 ms or
    more in seconds too: what prose may quote."""
    if stored is None:
        return ""
    return "\n".join(
        f"{entry.label}: {entry.mean_s * 1e3:.3g} ms"
        + (f" ({entry.mean_s:.2g} s)" if entry.mean_s >= 0.01 else "")
        + f", {comparison(entry, stored.baseline_of(entry.group))}"
        for entry in stored.results
    )


def _report(lesson: LessonFile, docs_dir: Path) -> None:
    before = _quoted(read(lesson, docs_dir))
    stored = measure(lesson, docs_dir)
    for entry in stored.results:
        words = comparison(entry, stored.baseline_of(entry.group))
        print(
            f"  {entry.group:32s} {entry.label:32s} "
            f"{entry.mean_s * 1e3:9.3f} ms  {words}"
        )
    for quote in stale_quotes(before, _quoted(stored), prose_files(lesson)):
        print(f"  prose may quote the old measurement: {quote}")


def main(argv: list[str] | None = None) -> int:
    return lesson_command(
        argv,
        description="Measure lesson benchmarks and store them for the site.",
        action=_report,
        verb="measuring",
        stale=lambda lesson, docs: (
            (stored := read(lesson, docs)) is None or not stored.fresh
        ),
        wanted=lambda lesson: has_benchmarks(
            (lesson.root / lesson.test).read_text(encoding="utf-8")
            if (lesson.root / lesson.test).exists()
            else None
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
