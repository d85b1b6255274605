"""The numbers measured on a GPU, stored beside the lesson they belong to.

The CI machines have no GPU, so a kernel lesson's speed is measured elsewhere: the
prepared check (`bash tools/gpu_check.sh` on a machine with one) writes one JSON of
everything it ran. This tool splits that file into one record per lesson,

    python -m tools.literate.gpu_results gpu-results/gpu_check.json

under `docs/gpu/<key>.json` (`LessonFile.gpu_record`), holding the device, its
measured ceilings, the lesson's `gpu_report()` and the hash of the lesson's source then,
so that a page can say when its numbers were measured on an older version of the file.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from tools.literate.files import LessonFile, atomic_write, discover


@dataclass(frozen=True)
class GpuRecord:
    device: str
    date: str
    torch: str
    ceilings: dict
    report: dict  # the lesson's gpu_report(): {name: number or text}
    fresh: bool  # measured on the lesson's current source
    error: str = ""


def parse_gpu_record(text: str, sha256: str) -> GpuRecord:
    data = json.loads(text)
    ceilings = data.get("ceilings", {})
    return GpuRecord(
        device=str(ceilings.get("device", "a GPU")),
        date=str(data.get("date", "")),
        torch=str(ceilings.get("torch", "")),
        ceilings=ceilings,
        report=data.get("report", {}),
        fresh=data.get("source_sha256") == sha256,
        error=str(data.get("report", {}).get("error", "")),
    )


def lessons_by_module(root: Path) -> dict[str, LessonFile]:
    """{module that gpu_check imports: lesson}: a Python kernel lesson is its own
    module, a CUDA C lesson's report comes from its driver."""
    return {lesson.module: lesson for lesson in discover(root)}


def store(check: dict, root: Path) -> list[Path]:
    """Write one record per lesson in a gpu_check result; returns the paths written."""
    lessons = lessons_by_module(root)
    written = []
    for module, report in check.get("kernels", {}).items():
        lesson = lessons.get(module)
        if lesson is None:
            print(f"skipped {module}: no lesson runs as this module here")
            continue
        record = {
            "date": check.get("date", ""),
            "ceilings": check.get("ceilings", {}),
            "source_sha256": check.get("sources", {}).get(lesson.relative, ""),
            "report": report,
        }
        path = root / "docs" / lesson.gpu_record
        atomic_write(path, json.dumps(record, indent=1, ensure_ascii=False) + "\n")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("check", help="gpu_check.json, as tools/gpu_check.sh wrote it")
    parser.add_argument("--root", default=".", help="the project root")
    args = parser.parse_args(argv)
    check = json.loads(Path(args.check).read_text(encoding="utf-8"))
    for path in store(check, Path(args.root).resolve()):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
