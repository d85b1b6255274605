"""Exercise mode: a lesson turned into a worksheet, graded by the lesson's own tests.

A lesson marks its core functions in its front matter:

    worksheet:
      - region: Matrix.matmul          # a function or method, by qualified name
        hint: Three loops; the innermost runs over the shared dimension.
        tests: [test_matmul_equals_numpy, test_matmul_rejects_shapes]

The worksheet is the lesson with each region's body (everything after its docstring)
replaced by the hint and `raise NotImplementedError`. The page offers it for download,
and the learner grades a solution with the lesson's tests, which import the worksheet in
place of the lesson:

    pytest --lesson annotated/foundations/matrix.py --worksheet matrix_worksheet.py

`python -m tools.literate.worksheet --verify LESSON` checks the three facts that make
this a grader: the lesson passes the region's tests, the worksheet fails every one of
them, and the worksheet with the bodies filled back in passes them again.

    python -m tools.literate.worksheet annotated/foundations/matrix.py  # write it
    python -m tools.literate.worksheet --language zh annotated/...   # hints in Chinese
    python -m tools.literate.worksheet --verify --all                   # every lesson
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

from tools.literate import LessonError
from tools.literate.files import LessonFile, discover, select
from tools.literate.parse import parse

# The first line of every worksheet body: `fill` finds the bodies to put back by it.
MARK = "# Exercise: "


@dataclass(frozen=True)
class Region:
    """One function the worksheet blanks, its hint, and the tests that grade it."""

    name: str  # qualified name: "matmul" or "Matrix.matmul"
    hint: str
    tests: tuple[str, ...]


def regions(file: LessonFile, front_matter: dict) -> list[Region]:
    """The `worksheet:` entries of a lesson's front matter, checked for shape."""
    entries = front_matter.get("worksheet", [])
    where = "front matter: worksheet"
    if not isinstance(entries, list):
        raise LessonError(file.path, 1, f"{where} must be a list of regions")
    found = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) != {"region", "hint", "tests"}:
            raise LessonError(
                file.path,
                1,
                f"{where}[{index}] must map exactly region, hint and tests, got "
                f"{entry!r}",
            )
        tests = entry["tests"]
        if not (
            isinstance(tests, list)
            and tests
            and all(isinstance(t, str) and t.startswith("test_") for t in tests)
        ):
            raise LessonError(
                file.path,
                1,
                f"{where}[{index}].tests must be a non-empty list of test function "
                f"names, got {tests!r}",
            )
        found.append(Region(str(entry["region"]), str(entry["hint"]), tuple(tests)))
    return found


def _definitions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    """Every function and method of a module by qualified name ("Matrix.matmul")."""
    found: dict[str, ast.FunctionDef] = {}

    def visit(body, prefix: str):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found[prefix + node.name] = node
                visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, ast.ClassDef):
                visit(node.body, f"{prefix}{node.name}.")

    visit(tree.body, "")
    return found


def _body_lines(
    file: LessonFile, lines: list[str], node: ast.FunctionDef
) -> tuple[int, int, str]:
    """(first, last) 0-based line indices of a definition's body after its docstring,
    and the body's indentation."""
    body = list(node.body)
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        body = body[1:]
    if not body or body[0].lineno == node.lineno:
        raise LessonError(
            file.path,
            node.lineno,
            f"worksheet region {node.name!r} has no body below its docstring to blank",
        )
    # Comments just above the first statement explain it: they go with the body.
    first = body[0].lineno - 1
    indent = lines[first][: len(lines[first]) - len(lines[first].lstrip())]
    while first - 1 > 0 and lines[first - 1].strip().startswith("#"):
        first -= 1
    return first, node.end_lineno - 1, indent


def _located(file: LessonFile, source: str, wanted: list[Region]):
    """[(region, first, last, indent)] in source order, checked not to overlap."""
    lines = source.splitlines()
    definitions = _definitions(ast.parse(source))
    located = []
    for region in wanted:
        if region.name not in definitions:
            raise LessonError(
                file.path,
                1,
                f"worksheet region {region.name!r} is not a function or method of "
                f"the lesson (it defines {', '.join(sorted(definitions)) or 'none'})",
            )
        first, last, indent = _body_lines(file, lines, definitions[region.name])
        located.append((region, first, last, indent))
    located.sort(key=lambda entry: entry[1])
    for (one, _, end, _), (two, start, _, _) in zip(located, located[1:]):
        if start <= end:
            raise LessonError(
                file.path,
                start + 1,
                f"worksheet regions {one.name!r} and {two.name!r} overlap",
            )
    return located


# A character that takes two columns in a terminal or editor: Chinese, Japanese, Korean
# and their full-width punctuation.
WIDE = re.compile(
    r"[\u1100-\u115f\u2e80-\ua4cf\uac00-\ud7a3\uf900-\ufaff\ufe30-\uff60]"
)
# Punctuation a Chinese line never starts with: it stays on the line before.
CLOSING = set("，。、；：！？）》」』”’")


def _columns(text: str) -> int:
    return len(text) + len(WIDE.findall(text))


def _wrap_wide(text: str, width: int, subsequent_indent: str) -> list[str]:
    """`textwrap.wrap` for a hint in Chinese: a line is measured in columns (a Chinese
    character takes two), and it may break between two Chinese characters as well as
    at a space, but not before closing punctuation."""
    lines, line = [], ""
    for piece in re.findall(r"\s+|[^\s\u1100-\uffff]+|.", text):
        if piece.isspace():
            piece = " "
        if (
            line.strip()
            and _columns(line + piece.rstrip()) > width
            and piece[0] not in CLOSING
        ):
            lines.append(line.rstrip())
            line = subsequent_indent + piece.lstrip()
        else:
            line += piece
    return [*lines, line.rstrip()] if line.strip() else lines


def _stub(region: Region, indent: str) -> list[str]:
    width = 88 - len(indent) - 2
    if WIDE.search(region.hint):
        hint = _wrap_wide(MARK + region.hint, width + 2, subsequent_indent="#   ")
    else:
        hint = textwrap.wrap(MARK + region.hint, width + 2, subsequent_indent="#   ")
    graded = textwrap.wrap(
        "Graded by: " + ", ".join(region.tests), width, subsequent_indent="  "
    )
    return [
        *(indent + line for line in hint),
        *(f"{indent}# {line}" for line in graded),
        f"{indent}raise NotImplementedError({('write ' + region.name)!r})",
    ]


def blank(file: LessonFile, source: str, wanted: list[Region]) -> str:
    """The worksheet: `source` with each region's body replaced by its stub."""
    if not wanted:
        raise LessonError(file.path, 1, "the front matter declares no worksheet")
    lines = source.splitlines()
    for region, first, last, indent in reversed(_located(file, source, wanted)):
        lines[first : last + 1] = _stub(region, indent)
    return "\n".join(lines) + "\n"


def fill(file: LessonFile, worksheet: str, original: str, wanted: list[Region]) -> str:
    """The worksheet with each region's body taken from `original`: what a learner
    hands in after writing every region as the lesson does."""
    bodies = {
        region.name: original.splitlines()[first : last + 1]
        for region, first, last, _ in _located(file, original, wanted)
    }
    lines = worksheet.splitlines()
    for region, first, last, _ in reversed(_located(file, worksheet, wanted)):
        if not lines[first].lstrip().startswith(MARK):
            raise LessonError(
                file.path, first + 1, f"region {region.name!r} is not a worksheet stub"
            )
        lines[first : last + 1] = bodies[region.name]
    return "\n".join(lines) + "\n"


def install(module: str, path: Path) -> None:
    """Import the file at `path` as `module` ("annotated.foundations.matrix"), so that
    the lesson's tests, and later lessons that import it, get the learner's version."""
    import importlib
    import importlib.util

    if not path.is_file():
        raise FileNotFoundError(f"--worksheet: no file {path}")
    package, _, name = module.rpartition(".")
    spec = importlib.util.spec_from_file_location(module, path)
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[module] = loaded  # before it runs: dataclasses look themselves up
    spec.loader.exec_module(loaded)
    setattr(importlib.import_module(package), name, loaded)


def test_names(test_source: str) -> set[str]:
    """The test functions a test file defines (module level and in classes)."""
    return {
        node.name
        for node in ast.walk(ast.parse(test_source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.name.startswith("test_")
    }


def check(
    file: LessonFile, source: str, front_matter: dict, test_source: str | None
) -> list[LessonError]:
    """What is wrong with a lesson's worksheet without running anything: regions that
    do not resolve, tests its test file does not define, a worksheet that does not
    compile. Empty when it is sound."""
    try:
        wanted = regions(file, front_matter)
        worksheet = blank(file, source, wanted)
    except LessonError as error:
        return [error]
    problems = []
    defined = test_names(test_source) if test_source else set()
    for region in wanted:
        missing = [name for name in region.tests if name not in defined]
        if missing:
            problems.append(
                LessonError(
                    file.path,
                    1,
                    f"worksheet region {region.name!r}: {file.test} defines no "
                    f"{', '.join(missing)}",
                )
            )
    try:
        compile(worksheet, f"{file.stem}_worksheet.py", "exec")
    except SyntaxError as error:
        problems.append(
            LessonError(file.path, 1, f"the worksheet does not compile: {error}")
        )
    return problems


def grade(file: LessonFile, worksheet: Path, tests: list[str]) -> dict[str, bool]:
    """{test name: passed} for the lesson's tests named in `tests`, run against the
    worksheet file in a fresh pytest process (a test not collected did not pass)."""
    # Imported here, not at the top: test_results reaches back to this module (through
    # learning_path, i18n and rules), so a top-level import fails when this file is run
    # as `python -m tools.literate.worksheet`.
    from tools.literate.test_results import run_pytest

    arguments = [f"--lesson={file.relative}", f"--worksheet={worksheet}"]
    try:
        outcomes = run_pytest(file.root, [*arguments, "-k", " or ".join(tests)], True)
    except RuntimeError as error:
        raise RuntimeError(f"{file.relative}: {error} for {worksheet}") from error
    by_name = {
        name: o for functions in outcomes.values() for name, o in functions.items()
    }
    return {name: by_name.get(name) == "passed" for name in tests}


def verify(file: LessonFile) -> dict[str, dict[str, bool]]:
    """The three gradings: {"original", "worksheet", "filled"} → {test: passed}. A sound
    worksheet passes every test in the first and third and fails every one in the
    second."""
    source = file.path.read_text(encoding="utf-8")
    front_matter = parse(source, file.path).front_matter
    test_path = file.root / file.test
    test_source = test_path.read_text("utf-8") if test_path.exists() else None
    problems = check(file, source, front_matter, test_source)
    if problems:
        raise problems[0]
    wanted = regions(file, front_matter)
    tests = sorted({name for region in wanted for name in region.tests})
    worksheet = blank(file, source, wanted)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        versions = {
            "original": source,
            "worksheet": worksheet,
            "filled": fill(file, worksheet, source, wanted),
        }
        outcome = {}
        for kind, text in versions.items():
            path = folder / f"{file.stem}_{kind}.py"
            path.write_text(text, encoding="utf-8")
            outcome[kind] = grade(file, path, tests)
    return outcome


def sound(outcome: dict[str, dict[str, bool]]) -> bool:
    return (
        all(outcome["original"].values())
        and not any(outcome["worksheet"].values())
        and all(outcome["filled"].values())
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lessons", nargs="*", help="lesson files, annotated/...")
    parser.add_argument("--all", action="store_true", help="every Python lesson")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="grade the lesson, its worksheet and the worksheet filled back in",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("."), help="folder the worksheets go in"
    )
    parser.add_argument(
        "--language",
        choices=("en", "zh"),
        default="en",
        help="the language of the hints (zh: the Chinese edition's, where translated)",
    )
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parents[2]
    # A CUDA C lesson has no worksheet: its tests only compile it on a CPU machine.
    candidates = [f for f in discover(root) if f.language == "python"]
    try:
        files = candidates if args.all else select(args.lessons, candidates)
    except ValueError as error:
        parser.error(str(error))
    failed = 0
    for file in files:
        if args.verify:
            outcome = verify(file)
            ok = sound(outcome)
            failed += not ok
            summary = ", ".join(
                f"{kind} {sum(result.values())}/{len(result)} passed"
                for kind, result in outcome.items()
            )
            print(f"{'ok  ' if ok else 'FAIL'} {file.relative}: {summary}", flush=True)
            continue
        source = file.path.read_text(encoding="utf-8")
        lesson = parse(source, file.path)
        if args.language != "en":
            from tools.literate import i18n  # it imports the rules, which import this

            stored = i18n.read(root / i18n.lesson_path(args.language, file))
            texts = i18n.translated(i18n.file_units(file, root / "docs"), stored)
            lesson = i18n.translate_lesson(lesson, texts)
        wanted = regions(file, lesson.front_matter)
        target = args.out / f"{file.stem}_worksheet.py"
        os.makedirs(args.out, exist_ok=True)
        target.write_text(blank(file, source, wanted), encoding="utf-8")
        print(f"{target}: {len(wanted)} region(s) to write")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
