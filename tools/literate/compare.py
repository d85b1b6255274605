"""The "compare implementations" page: one algorithm at several levels, side by side.

The plan's second method is comparative implementation: the library call, then plain
Python, then a GPU kernel. The lessons already hold every level; this module puts them
next to each other. `annotated/compare.toml` names, for each algorithm, its levels in
order, each a function (or class, or CUDA C kernel) of a lesson:

    [[compare]]
    title = "Matrix multiplication"
    text = "Why the levels differ."

      [[compare.level]]
      label = "Plain Python"
      function = "foundations/matrix:matmul_ikj"

A docs page holding `<!-- compare -->` gets each algorithm as a heading, its text, and
its levels as columns: the level's name, a link to the section of the lesson that
explains it, and the code itself, cut from the lesson's current source. A name the
lesson does not define stops the build.
"""

from __future__ import annotations

import ast
import functools
import posixpath
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from tools.literate.parse import parse

COMPARE = "<!-- compare -->"
_FUNCTION = re.compile(r"[a-z_]+/[a-z0-9_]+(\.cu)?:[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Level:
    label: str  # "Plain Python"
    module: str  # "foundations/matrix", or "kernels/softmax.cu"
    name: str  # the function, class or kernel: "matmul_ikj"
    label_zh: str = ""  # the Chinese edition's label, "纯 Python"


@dataclass(frozen=True)
class Comparison:
    title: str
    text: str
    levels: tuple[Level, ...]
    title_zh: str = ""  # the Chinese edition's title and text
    text_zh: str = ""


@dataclass(frozen=True)
class Excerpt:
    """A level's code as the lesson holds it now."""

    code: str
    language: str  # "python" or "cuda"
    line: int  # where it starts in the lesson
    section: str  # the id of the lesson section it sits in


def load(path: str | Path) -> tuple[Comparison, ...]:
    """Read `compare.toml`. Raises ValueError naming the entry at fault."""
    path = Path(path)
    with open(path, "rb") as handle:
        data = tomllib.load(handle)
    if set(data) != {"compare"} or not isinstance(data["compare"], list):
        raise ValueError(f"{path.name}: expected only [[compare]] tables")
    comparisons = []
    for index, table in enumerate(data["compare"]):
        where = f"{path.name}: [[compare]] #{index + 1}"
        if set(table) - {"zh"} != {"title", "text", "level"}:
            raise ValueError(
                f"{where}: needs exactly title, text and [[compare.level]] (and zh)"
            )
        chinese = table.get("zh", {})
        if not isinstance(chinese, dict) or set(chinese) - {"title", "text"}:
            raise ValueError(f"{where}: zh holds only a title and a text")
        levels = []
        for level in table["level"]:
            if set(level) - {"zh"} != {"label", "function"}:
                raise ValueError(
                    f"{where}: a level needs exactly label and function (and zh)"
                )
            if not _FUNCTION.fullmatch(level["function"]):
                raise ValueError(
                    f"{where}: function {level['function']!r} must look like "
                    '"area/topic:name" (or "area/topic.cu:kernel")'
                )
            module, name = level["function"].split(":")
            levels.append(Level(level["label"], module, name, level.get("zh", "")))
        if len(levels) < 2:
            raise ValueError(f"{where}: a comparison needs at least two levels")
        comparisons.append(
            Comparison(
                table["title"],
                table["text"],
                tuple(levels),
                chinese.get("title", ""),
                chinese.get("text", ""),
            )
        )
    return tuple(comparisons)


def lesson_path(root: Path, module: str) -> Path:
    """`annotated/<area>/<topic>.py`, or the `.cu` file itself."""
    suffix = "" if module.endswith(".cu") else ".py"
    return root / "annotated" / f"{module}{suffix}"


def excerpt(root: Path, level: Level) -> Excerpt:
    """The code of `level` from its lesson, decorators included, and its section.
    Raises ValueError when the lesson does not define it."""
    path = lesson_path(root, level.module)
    if not path.is_file():
        raise ValueError(f"compare: {level.module} has no lesson file {path.name}")
    return _excerpt(path.read_text(encoding="utf-8"), path, level.module, level.name)


@functools.lru_cache(maxsize=256)
def _excerpt(source: str, path: Path, module: str, name: str) -> Excerpt:
    """`excerpt` of a lesson's source, remembered by content: each build asks for
    every level in both editions, and parsing the lesson is the cost."""
    lines = source.splitlines()
    if path.suffix == ".cu":
        first, last = _kernel_lines(source, name)
        language = "cuda"
    else:
        first, last = _definition_lines(ast.parse(source), name)
        language = "python"
    if first is None:
        raise ValueError(f"compare: {module} defines no {name!r}")
    lesson = parse(source, path)
    section = next(
        s.id for s in lesson.sections if any(line.number >= first for line in s.code)
    )
    code = "\n".join(lines[first - 1 : last])
    return Excerpt(code, language, first, section)


def _definition_lines(tree: ast.Module, name: str) -> tuple[int | None, int]:
    for node in tree.body:
        if (
            isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and node.name == name
        ):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            return first, node.end_lineno
    return None, 0


def _kernel_lines(source: str, name: str) -> tuple[int | None, int]:
    """A `__global__` kernel's lines: from its declaration to its closing brace."""
    found = re.search(rf"^__global__[^;{{]*?\b{re.escape(name)}\s*\(", source, re.M)
    if found is None:
        return None, 0
    depth, opened = 0, False
    for offset in range(found.start(), len(source)):
        char = source[offset]
        if char == "{":
            depth, opened = depth + 1, True
        elif char == "}":
            depth -= 1
            if opened and depth == 0:
                first = source.count("\n", 0, found.start()) + 1
                return first, source.count("\n", 0, offset) + 1
    return None, 0


def render(
    markdown: str,
    comparisons: tuple[Comparison, ...],
    written: dict,
    root: Path,
    page_src: str,
    language: str = "en",
) -> str:
    """Fill `<!-- compare -->` in a docs page's Markdown, in the edition's `language`
    (the Chinese words where compare.toml has them). `written` maps module keys to
    `learning_path.WrittenLesson`s; a level whose lesson is not written stops the
    build, as a missing name does."""
    if COMPARE not in markdown:
        return markdown
    here = posixpath.dirname(page_src) or "."
    out = []
    chinese = language == "zh"
    for number, comparison in enumerate(comparisons, 1):
        title = (chinese and comparison.title_zh) or comparison.title
        text = (chinese and comparison.text_zh) or comparison.text
        out += [f"## {number}. {title}", "", text, ""]
        out += ['<div class="lit-compare" markdown>', ""]
        for level in comparison.levels:
            lesson = written.get(level.module)
            if lesson is None:
                raise ValueError(f"compare: {level.module} is not a written lesson")
            found = excerpt(root, level)
            page = posixpath.relpath(lesson.page, here)
            fence = "```"
            label = (chinese and level.label_zh) or level.label
            colon, of = ("：", "，出自") if chinese else (": ", " in ")
            out += [
                '<div class="lit-level" markdown>',
                "",
                f"**{label}**{colon}[`{level.name}`]({page}#{found.section}){of}"
                f"[{lesson.title}]({page})",
                "",
                f"{fence}{found.language}",
                found.code,
                fence,
                "",
                "</div>",
                "",
            ]
        out += ["</div>", ""]
    return markdown.replace(COMPARE, "\n".join(out))
