"""Where lessons are and where they belong: the files on disk, and the learning path in
`annotated/curriculum.toml` (stages → weeks → lessons, written or planned)."""

from __future__ import annotations

import ast
import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LessonFile:
    """A lesson on disk and the names the rest of the engine knows it by."""

    root: Path  # the project root
    relative: str  # "annotated/foundations/autograd.py"

    @property
    def path(self) -> Path:
        return self.root / self.relative

    @property
    def module(self) -> str:
        """`annotated.foundations.autograd`: what `python -m` runs."""
        return self.relative[: -len(".py")].replace("/", ".")

    @property
    def key(self) -> str:
        """`foundations/autograd` (kernels keep their folder: `kernels/softmax`); names
        pages, figures, results."""
        stem = self.relative[: -len(".py")]
        return stem.split("/", 1)[1] if stem.startswith("annotated/") else stem

    @property
    def test(self) -> str:
        """The mirrored test file: `tests/foundations/test_autograd.py`."""
        folder, _, topic = self.key.rpartition("/")
        return f"tests/{folder}/test_{topic}.py"

    @property
    def page(self) -> str:
        return f"lessons/{self.key}.md"

    def source_sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(
    root: Path, packages: tuple[str, ...] = ("annotated", "kernels")
) -> list[LessonFile]:
    """Every lesson file: `annotated/<area>/<topic>.py` and
    `kernels/[<area>/]<topic>.py`, sorted."""
    found = []
    for package in packages:
        base = root / package
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            depth = len(path.relative_to(base).parts)
            if path.name.startswith("_") or any(
                part.startswith((".", "_"))
                for part in path.relative_to(base).parts[:-1]
            ):
                continue
            if (package == "annotated" and depth == 2) or (
                package != "annotated" and depth in (1, 2)
            ):
                found.append(LessonFile(root, relative))
    return found


def select(names: list[str], candidates: list[LessonFile]) -> list[LessonFile]:
    """The candidates named by file path (as typed on a command line); ValueError for
    any that is not one."""
    wanted = {Path(name).resolve(): name for name in names}
    chosen = [lesson for lesson in candidates if lesson.path.resolve() in wanted]
    unknown = [
        name
        for path, name in wanted.items()
        if path not in {lesson.path.resolve() for lesson in chosen}
    ]
    if unknown or not names:
        raise ValueError(f"not lessons here: {', '.join(unknown) or '(none named)'}")
    return chosen


@dataclass(frozen=True)
class PlannedLesson:
    stage: int
    stage_title: str
    weeks: str
    week_title: str
    module: str  # "foundations/autograd"
    title: str


def load_curriculum(path: Path) -> list[dict]:
    """The stages as dicts: number, title, summary, week[weeks, title, lessons].

    A file in the plan's layout (`[[stage.block]]`) is read and checked by
    `learning_path.load`, its blocks returned as the `week` lists; a file in the older
    layout (`[[stage.week]]`) is returned as it is.
    """
    with open(path, "rb") as handle:
        stages = tomllib.load(handle)["stage"]
    if all("week" in stage for stage in stages):
        return stages
    from tools.literate import learning_path

    return [
        {
            "number": stage.number,
            "title": stage.title,
            "summary": stage.summary,
            "week": [
                {
                    "weeks": block.weeks,
                    "title": block.title,
                    "lessons": [
                        {"module": lesson.module, "title": lesson.title}
                        for lesson in block.lessons
                    ],
                }
                for block in stage.blocks
            ],
        }
        for stage in learning_path.load(path).stages
    ]


def planned_lessons(stages: list[dict]) -> list[PlannedLesson]:
    """Every lesson in the curriculum, written or not, in reading order."""
    return [
        PlannedLesson(
            stage["number"],
            stage["title"],
            week["weeks"],
            week["title"],
            lesson["module"],
            lesson["title"],
        )
        for stage in stages
        for week in stage["week"]
        for lesson in week["lessons"]
    ]


def imported_modules(tree) -> list[str]:
    """Every module an AST imports, `from a.b import c` counted as both `a.b` and
    `a.b.c` (c may be a module)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return names


def project_sources(tree, root: Path) -> dict[str, str]:
    """{path: sha256} of the project files (`annotated/…`, `kernels/…`) that an AST
    imports."""
    found = {}
    for name in imported_modules(tree):
        path = root / (name.replace(".", "/") + ".py")
        if name.split(".")[0] in ("annotated", "kernels") and path.is_file():
            found[path.relative_to(root).as_posix()] = hashlib.sha256(
                path.read_bytes()
            ).hexdigest()
    return dict(sorted(found.items()))
