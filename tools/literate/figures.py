"""Figures: run a lesson's demo and keep the PNGs it saves, their captions, and the
measured time, with the hash of the source that made them.

    python -m tools.literate.figures annotated/foundations/autograd.py  # one lesson
    python -m tools.literate.figures --all  # every lesson
    python -m tools.literate.figures --stale  # only stale ones

The site build only reads what this wrote; it never trains anything. Each PNG is drawn
by the lesson through `annotated/figures.py`, which stores the caption and font sizes
inside the file; this tool copies them into the manifest `figures.json` beside the PNGs.
A manifest whose `source_sha256` differs from the lesson's current source is stale: the
page says so and a test fails.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from tools.literate import rules
from tools.literate.files import LessonFile, atomic_write, lesson_command
from tools.literate.parse import parse

MANIFEST = "figures.json"
OUTPUT_LINES = 20  # how much of the demo's printed output the page shows


@dataclass(frozen=True)
class Figure:
    name: str  # "loss.png"
    caption: str
    width: int  # pixels
    height: int
    font_pt: tuple[float, ...]  # the sizes `annotated.figures.save` set
    dpi: float


@dataclass(frozen=True)
class Figures:
    """What a lesson's page shows from its last demo run."""

    files: tuple[Figure, ...]
    output: str  # the last lines the demo printed
    command: str
    seconds: float  # how long the demo took
    machine: str
    fresh: bool  # made from the current source
    # The metric over several seeds, when the lesson declares `expected:`: {"metric",
    # "seeds", "values", "seconds", and "short": {"args", "values"} for its short run}.
    expected: dict | None = None

    def band(self) -> tuple[float, float] | None:
        """The lowest and highest value of the expected metric over the seeds."""
        if not self.expected:
            return None
        return min(self.expected["values"]), max(self.expected["values"])


def expected_matches(stored: dict | None, declared: dict | None) -> bool:
    """Whether a stored `expected` record was made from the lesson's declared one: the
    same metric, number of seeds and short-run flags."""
    if declared is None or stored is None:
        return declared is None and stored is None
    short = declared.get("short")
    return (
        stored["metric"] == declared["metric"]
        and len(stored["seeds"]) == int(declared.get("seeds", 3))
        and (short is None) == ("short" not in stored)
        and (short is None or stored["short"]["args"] == [str(a) for a in short])
    )


def parse_manifest(
    text: str, source_sha256: str, declared_expected: dict | None = None
) -> Figures:
    """The `Figures` stored in a manifest's JSON text, checked against the current
    source's hash and the lesson's declared `expected:` front matter."""
    manifest = json.loads(text)
    if any(not isinstance(entry, dict) for entry in manifest["files"]):
        # Written by an older engine (names only, no captions): as good as stale.
        manifest = {**manifest, "files": [], "source_sha256": "", "seconds": 0.0}
        manifest.setdefault("machine", "")
    return Figures(
        files=tuple(
            Figure(**{**entry, "font_pt": tuple(entry["font_pt"])})
            for entry in manifest["files"]
        ),
        output=manifest.get("output", ""),
        command=manifest["command"],
        seconds=manifest["seconds"],
        machine=manifest["machine"],
        fresh=manifest["source_sha256"] == source_sha256
        and expected_matches(manifest.get("expected"), declared_expected),
        expected=manifest.get("expected"),
    )


def read(lesson: LessonFile, docs_dir: Path) -> Figures | None:
    """The stored figures of a lesson, or None when its demo was never run through this
    tool."""
    path = docs_dir / lesson.figures_folder / MANIFEST
    if not path.exists():
        return None
    declared = parse(lesson.path.read_text(encoding="utf-8"), lesson.path).front_matter
    return parse_manifest(
        path.read_text(encoding="utf-8"),
        lesson.source_sha256(),
        declared.get("expected"),
    )


def describe(png: Path) -> Figure:
    """A PNG's size and the caption and font sizes that `annotated.figures.save` stored
    in it."""
    with Image.open(png) as image:
        text = getattr(image, "text", {})
        dpi = image.info.get("dpi", (72.0, 72.0))[0]
        width, height = image.size
    caption = text.get("Description", "").strip()
    if not caption:
        raise RuntimeError(
            f"{png.name} has no caption: save figures with annotated.figures.save(fig, "
            "path, caption=...)"
        )
    sizes = tuple(float(size) for size in text.get("FontSizes", "").split(",") if size)
    return Figure(png.name, caption, width, height, sizes, round(float(dpi), 1))


# Runs a lesson's `main(args)` and writes the numbers of the dict it returns to a JSON
# file: what the demo prints is what `python -m` prints, and the metric comes back too.
_RUNNER = """
import importlib, json, sys
module, result, *args = sys.argv[1:]
metrics = importlib.import_module(module).main(args) or {}
numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
with open(result, "w") as handle:
    json.dump(numbers, handle)
"""


def run_demo(
    lesson: LessonFile, args: list[str], folder: Path
) -> tuple[dict, str, float]:
    """(the metrics `main(args)` returned, what it printed, seconds) of one run."""
    result = folder / "metrics.json"
    command = [sys.executable, "-c", _RUNNER, lesson.module, str(result), *args]
    started = time.perf_counter()
    # No display: a lesson that still uses pyplot must not try to open a window.
    env = {**os.environ, "MPLBACKEND": "Agg"}
    done = subprocess.run(
        command, cwd=lesson.root, capture_output=True, text=True, env=env
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(
            f"{lesson.relative}: the demo failed (exit {done.returncode}) with "
            f"{' '.join(args)}:\n{done.stderr[-3000:]}"
        )
    metrics = json.loads(result.read_text(encoding="utf-8"))
    result.unlink()
    return metrics, done.stdout, seconds


def expected_runs(lesson: LessonFile, first: dict, first_seconds: float, scratch: Path):
    """The `expected:` record: the declared metric of the default run and of the
    seeds after it, and of the short run (`short:` flags) for every seed."""
    declared = parse(lesson.path.read_text(encoding="utf-8"), lesson.path).front_matter
    expected = declared.get("expected")
    if expected is None:
        return None
    metric, seeds = expected["metric"], int(expected.get("seeds", 3))
    if metric not in first:
        raise RuntimeError(
            f"{lesson.relative}: expected.metric {metric!r} is not in what main() "
            f"returns: {sorted(first)}"
        )
    values, seconds = [first[metric]], [round(first_seconds, 1)]
    for seed in range(1, seeds):
        folder = scratch / f"seed{seed}"
        folder.mkdir()
        metrics, _, took = run_demo(
            lesson, ["--seed", str(seed), "--out", str(folder)], folder
        )
        values.append(metrics[metric])
        seconds.append(round(took, 1))
    record = {
        "metric": metric,
        "seeds": list(range(seeds)),
        "values": values,
        "seconds": seconds,
    }
    short = expected.get("short")
    if short is not None:
        short_values = []
        for seed in range(seeds):
            folder = scratch / f"short{seed}"
            folder.mkdir()
            args = [*map(str, short), "--seed", str(seed), "--out", str(folder)]
            metrics, _, _ = run_demo(lesson, args, folder)
            short_values.append(metrics[metric])
        record["short"] = {"args": [str(a) for a in short], "values": short_values}
    return record


def short_band(
    relative: str, root: Path | None = None
) -> tuple[str, list[str], float, float]:
    """(metric, the short run's flags, low, high) for a lesson's test: the band its
    short run fell in over the stored seeds, widened by its own width on each side (and
    by at least 1 % of its top). The test's run is a fresh draw wherever the arithmetic
    differs from the stored runs' in the last bits (another CPU's kernels, another
    thread count), and a chaotic run lands anywhere in its seeds' spread: a fresh draw
    falls outside three seeds' range widened by half its width one time in four,
    widened by its width one time in eight, and with five seeds one time in thirty
    (simulated, normal draws). `relative` is the lesson's path from the project root
    (`root`, this project's by default), "annotated/cnn/lenet.py"."""
    lesson = LessonFile(root or Path(__file__).resolve().parents[2], relative)
    stored = read(lesson, lesson.root / "docs")
    if stored is None or not stored.expected or "short" not in stored.expected:
        raise LookupError(
            f"{lesson.relative}: no stored short-run band; declare expected.short and "
            f"run python -m tools.literate.figures {lesson.relative}"
        )
    values = stored.expected["short"]["values"]
    low, high = min(values), max(values)
    margin = max(high - low, 0.01 * abs(high))
    return (
        stored.expected["metric"],
        stored.expected["short"]["args"],
        low - margin,
        high + margin,
    )


def regenerate(lesson: LessonFile, docs_dir: Path) -> Figures:
    """Run the lesson's demo with its default flags and replace its stored figures in
    one step."""
    target = docs_dir / lesson.figures_folder
    target.parent.mkdir(parents=True, exist_ok=True)
    source_sha256 = lesson.source_sha256()
    with tempfile.TemporaryDirectory(
        dir=target.parent, prefix=f".{target.name}-"
    ) as scratch:
        out = Path(scratch) / "out"
        out.mkdir()
        metrics, stdout, seconds = run_demo(lesson, ["--out", str(out)], Path(scratch))
        expected = expected_runs(lesson, metrics, seconds, Path(scratch))
        pngs = sorted(p for p in out.iterdir() if p.suffix == ".png")
        if not pngs:
            raise RuntimeError(
                f"{lesson.relative}: the demo saved no PNG figure in --out"
            )
        for stray in [p for p in out.iterdir() if p.suffix != ".png"]:
            shutil.rmtree(stray) if stray.is_dir() else stray.unlink()
        manifest = {
            "source": lesson.relative,
            "source_sha256": source_sha256,
            "command": f"python -m {lesson.module}",
            "files": [describe(png).__dict__ for png in pngs],
            # The demo ran with a scratch --out; a reader runs it with the default.
            "output": "\n".join(
                stdout.replace(str(out), f"out/{lesson.stem}")
                .strip()
                .splitlines()[-OUTPUT_LINES:]
            ),
            "seconds": round(seconds, 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
            f"{platform.system()}, Python {platform.python_version()}",
        }
        if expected is not None:
            manifest["expected"] = expected
        (out / MANIFEST).write_text(
            json.dumps(manifest, indent=2) + "\n", encoding="utf-8"
        )
        # Swap the new folder in whole: a failure above leaves the old figures as they
        # were.
        old = Path(scratch) / "old"
        if target.exists():
            os.replace(target, old)
        os.replace(out, target)
    return read(lesson, docs_dir)


def add_expected(lesson: LessonFile, docs_dir: Path) -> Figures:
    """Store the `expected:` record beside figures that are fresh for the current
    code, keeping the figures and the demo's measured time: the seeds run, the PNGs
    are not replaced. For a lesson whose expected result was declared after its figures
    were made (the front matter is not part of the hash)."""
    target = docs_dir / lesson.figures_folder
    manifest = json.loads((target / MANIFEST).read_text(encoding="utf-8"))
    if manifest["source_sha256"] != lesson.source_sha256():
        raise RuntimeError(
            f"{lesson.relative}: its figures are stale; regenerate them whole"
        )
    with tempfile.TemporaryDirectory(
        dir=target.parent, prefix=f".{target.name}-"
    ) as scratch:
        out = Path(scratch) / "out"
        out.mkdir()
        metrics, _, seconds = run_demo(lesson, ["--out", str(out)], Path(scratch))
        manifest["expected"] = expected_runs(lesson, metrics, seconds, Path(scratch))
    atomic_write(target / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return read(lesson, docs_dir)


def _report_expected(lesson: LessonFile, docs_dir: Path) -> None:
    band = add_expected(lesson, docs_dir).band()
    print(f"  expected {band[0]:.4g}–{band[1]:.4g} → docs/{lesson.figures_folder}")


# ---- prose that quotes the old run ---------------------------------------------------
#
# A lesson's prose quotes its run ("the λ = 1 run generalises at 1,725 updates") and
# so does its translation. A new run on another CPU, or after a change, prints other
# numbers, and nothing ties the prose to them. After each regeneration the tool lists
# the prose lines that hold a number the old run printed and the new one does not: a
# hint for the reader of the diff, not a check (prose rounds, and a number can recur
# for another reason).

NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?")


def _spellings(token: str) -> set[str]:
    """How prose may write a number the demo printed: as printed, rounded to fewer
    decimals, a fraction as a percentage, a large count with or without commas."""
    plain = token.replace(",", "")
    spellings = {token}
    try:
        value = float(plain)
    except ValueError:
        return spellings
    if "." in plain:
        decimals = len(plain.split(".")[1])
        spellings |= {f"{value:.{d}f}" for d in range(1, decimals)}
        if 0 < abs(value) < 1:
            spellings |= {f"{value * 100:.0f} %", f"{value * 100:.1f} %"}
    elif abs(value) >= 1000:
        spellings |= {f"{int(value):,}", plain}
    # One digit says too little to point at a quotation.
    return {s for s in spellings if len(re.sub(r"\D", "", s)) >= 2}


def _prose_lines(path: Path) -> list[tuple[int, str]]:
    """A lesson's prose lines with their numbers: the page's prose column as the
    engine parses it (a Markdown translation is prose throughout)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".md":
        return list(enumerate(text.splitlines(), 1))
    return [
        (line.number, line.text)
        for section in parse(text, path).sections
        for line in section.prose_lines
    ]


def stale_quotes(old: str, new: str, prose: list[Path]) -> list[str]:
    """`file:line: 'number'` for each prose line that holds a number which the old
    output (`old`: printed lines and captions) had and the new one (`new`) lacks."""
    kept = {s for token in NUMBER.findall(new) for s in _spellings(token)}
    gone = set(old.splitlines()) - set(new.splitlines())
    stale = {
        spelling
        for line in gone
        for token in NUMBER.findall(line)
        for spelling in _spellings(token)
    } - kept
    found = []
    for path in prose:
        for number, line in _prose_lines(path):
            for spelling in sorted(stale):
                if re.search(rf"(?<![\w.,]){re.escape(spelling)}(?![\w]|[.,]\d)", line):
                    found.append(f"{path}:{number}: {spelling!r}")
    return found


def _quoted(figures: Figures | None) -> str:
    """What a run printed, and its captions: what prose may quote."""
    if figures is None:
        return ""
    return "\n".join([figures.output, *(figure.caption for figure in figures.files)])


def prose_files(lesson: LessonFile) -> list[Path]:
    """Where a lesson's prose is: its file and each translation of it."""
    translations = (lesson.root / "translations").glob(f"*/lessons/{lesson.key}.md")
    return [lesson.path, *sorted(translations)]


def _report(lesson: LessonFile, docs_dir: Path) -> None:
    before = _quoted(read(lesson, docs_dir))
    figures = regenerate(lesson, docs_dir)
    print(
        f"  {len(figures.files)} figure(s) in {figures.seconds:.1f} s "
        f"→ docs/{lesson.figures_folder}"
    )
    for quote in stale_quotes(before, _quoted(figures), prose_files(lesson)):
        print(f"  prose may quote the old run: {quote}")
    time = parse(lesson.path.read_text(encoding="utf-8"), lesson.path).front_matter.get(
        "time"
    )
    try:
        declared = rules.seconds(time)
    except (ValueError, TypeError):
        return  # the build names a missing or malformed time
    if not 0.5 <= figures.seconds / declared <= 2:
        print(
            f"  the front matter says time: {time}, but the demo took "
            f"{figures.seconds:.0f} s: declare within 2x of it (the tests check)"
        )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --expected-only: add the expected record to fresh figures (see add_expected).
    expected_only = "--expected-only" in argv
    if expected_only:
        argv.remove("--expected-only")
    return lesson_command(
        argv,
        description="Run lesson demos and store the figures their pages show "
        "(--expected-only: only run the seeds of a newly declared expected result).",
        action=_report_expected if expected_only else _report,
        verb="running its demo",
        stale=lambda lesson, docs: (
            (stored := read(lesson, docs)) is None or not stored.fresh
        ),
        # A CUDA C lesson's demo needs a GPU: its numbers come from the GPU check.
        wanted=lambda lesson: lesson.language == "python",
    )


if __name__ == "__main__":
    sys.exit(main())
