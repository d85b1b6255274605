"""Where things are: every path and URL the engine derives from a lesson file, the
lesson files on disk, the project modules a lesson imports, the one atomic write
every store uses, and the environment every child pytest runs in.

`LessonFile` is the single owner of names: the module `python -m` runs, the page, its
URL, the test, the downloads, the stored figures and benchmark results. Nothing else in
the engine spells a path.
"""

from __future__ import annotations

import argparse
import ast
import functools
import os
import posixpath
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LessonFile:
    """A lesson on disk and the names the rest of the engine knows it by.

    Two languages: a Python lesson (`annotated/<area>/<topic>.py`) and a CUDA C lesson
    (`annotated/kernels/<topic>.cu`). A CUDA C lesson keeps its suffix in its key
    (`kernels/softmax.cu`, beside the Triton `kernels/softmax`), and runs through its
    Python driver, `annotated/kernels/cuda/<topic>.py`.
    """

    root: Path  # the project root
    relative: str  # "annotated/foundations/autograd.py"

    @property
    def path(self) -> Path:
        return self.root / self.relative

    @property
    def language(self) -> str:
        """ "python" or "cuda"."""
        return "cuda" if self.relative.endswith(".cu") else "python"

    @property
    def module(self) -> str:
        """`annotated.foundations.autograd`: what `python -m` runs. A CUDA C lesson's
        is its driver's: `annotated.kernels.cuda.softmax`."""
        if self.language == "cuda":
            folder, _, name = self.relative[: -len(".cu")].rpartition("/")
            return f"{folder}/cuda/{name}".replace("/", ".")
        return self.relative[: -len(".py")].replace("/", ".")

    @property
    def key(self) -> str:
        """`foundations/autograd`, `kernels/fused_lstm`, `kernels/softmax.cu`: names
        pages and stored results, and is the lesson's entry in the curriculum."""
        name = self.relative.removesuffix(".py")
        return name.split("/", 1)[1]

    @property
    def area(self) -> str:
        """`foundations`: the folder the lesson lives in."""
        return self.key.rpartition("/")[0]

    @property
    def stem(self) -> str:
        """`autograd`, `softmax.cu`."""
        return self.key.rpartition("/")[2]

    @property
    def test(self) -> str:
        """The mirrored test file: `tests/foundations/test_autograd.py`;
        `tests/kernels/test_softmax_cu.py` for `kernels/softmax.cu`."""
        return f"tests/{self.area}/test_{self.stem.replace('.', '_')}.py"

    @property
    def page(self) -> str:
        """The page's path in the docs tree: `lessons/foundations/autograd.md`."""
        return f"lessons/{self.key}.md"

    @property
    def download_py(self) -> str:
        """The source download: the lesson as a script (`.py`), or the `.cu` file."""
        if self.language == "cuda":
            return f"downloads/{self.key}"
        return f"downloads/{self.key}.py"

    @property
    def download_ipynb(self) -> str | None:
        """The notebook download; a CUDA C lesson has none."""
        if self.language == "cuda":
            return None
        return f"downloads/{self.key}.ipynb"

    @property
    def download_worksheet(self) -> str:
        """The exercise-mode worksheet (`tools.literate.worksheet`): the lesson with its
        marked regions blanked."""
        return f"downloads/{self.key}_worksheet.py"

    @property
    def download_test(self) -> str:
        return f"downloads/{self.test}"

    @property
    def figures_folder(self) -> str:
        """Relative to docs/: where the demo's figures and their manifest are stored."""
        return f"figures/{self.key}"

    @property
    def benchmarks_record(self) -> str:
        """Relative to docs/: the stored pytest-benchmark results."""
        return f"benchmarks/{self.key}.json"

    @property
    def gpu_record(self) -> str:
        """Relative to docs/: the numbers the prepared GPU check measured
        (`tools/gpu_check.sh`, stored by `python -m tools.literate.gpu_results`)."""
        return f"gpu/{self.key}.json"

    def source_sha256(self) -> str:
        """The hash stored results are made from: they go stale when it changes."""
        return results_sha256(self.path.read_text(encoding="utf-8"), self.path.suffix)

    def diagram(self, kind: str) -> str:
        """The site path of a diagram's SVG file, opened full size in the lightbox."""
        return f"diagrams/{self.key}/{kind}.svg"


@functools.lru_cache(maxsize=1024)
def results_sha256(source: str, suffix: str = ".py") -> str:
    """The hash of what a lesson's stored results (figures, benchmarks, GPU numbers)
    depend on: its code, without its prose or front matter
    (`annotated.data.code_sha256`, which also names the weights one lesson trains for
    another). The front matter describes the lesson (its title, time, references,
    expected result and exercises) and the prose explains it; neither changes an
    output, so editing them leaves the stored results fresh. The figures tool checks
    the declared expected result against its stored one separately. Remembered by
    content: each build asks for every lesson's in both editions, and tokenising is the
    cost."""
    from annotated.data import code_sha256

    return code_sha256(source, suffix)


def page_url(src: str, use_directory_urls: bool) -> str:
    """The URL (relative to the site root) of the page whose docs path is `src`, as
    mkdocs makes it."""
    stem = posixpath.splitext(src)[0]
    if not use_directory_urls:
        return stem + ".html"
    if stem == "index" or stem.endswith("/index"):
        return stem[: -len("index")]
    return stem + "/"


def relative_url(target: str, from_url: str) -> str:
    """A URL relative to the page at `from_url` that reaches `target` (both relative to
    the site root)."""
    base = from_url if from_url.endswith("/") else posixpath.dirname(from_url) + "/"
    relative = posixpath.relpath("/" + target, "/" + base.lstrip("/"))
    if (target == "" or target.endswith("/")) and not relative.endswith("/"):
        relative += "/"
    return relative


def discover(
    root: Path, packages: tuple[str, ...] = ("annotated",)
) -> list[LessonFile]:
    """Every lesson file: `annotated/<area>/<topic>.py` and `.cu`, the kernels' among
    them (`annotated/kernels/`: a top-level `kernels` package would
    shadow the Hub's, which transformers imports)."""
    found = []
    for package in packages:
        base = root / package
        if not base.is_dir():
            continue
        paths = sorted([*base.rglob("*.py"), *base.rglob("*.cu")])
        for path in paths:
            parts = path.relative_to(base).parts
            if path.name.startswith("_") or any(
                part.startswith((".", "_")) for part in parts[:-1]
            ):
                continue
            if len(parts) == 2:
                found.append(LessonFile(root, path.relative_to(root).as_posix()))
    return found


def select(names: list[str], candidates: list[LessonFile]) -> list[LessonFile]:
    """The candidates named by file path (as typed on a command line); ValueError for
    others."""
    wanted = {Path(name).resolve(): name for name in names}
    chosen = [lesson for lesson in candidates if lesson.path.resolve() in wanted]
    found = {lesson.path.resolve() for lesson in chosen}
    unknown = [name for path, name in wanted.items() if path not in found]
    if unknown or not names:
        raise ValueError(f"not lessons here: {', '.join(unknown) or '(none named)'}")
    return chosen


def imported_modules(tree: ast.AST) -> list[str]:
    """Every module an AST imports; `from a.b import c` counts as `a.b` and `a.b.c` (c
    may be a module)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return names


def project_imports(tree: ast.AST, root: Path) -> list[str]:
    """The project files (`annotated/…`) that an AST imports, as relative
    paths."""
    return project_files(imported_modules(tree), root)


def project_files(modules: Iterable[str], root: Path) -> list[str]:
    """The project files (`annotated/…`) among `modules` ("annotated.data"), as
    relative paths."""
    found = set()
    for name in modules:
        path = root / (name.replace(".", "/") + ".py")
        if name.split(".")[0] == "annotated" and path.is_file():
            found.add(path.relative_to(root).as_posix())
    return sorted(found)


def project_sources(tree: ast.AST, root: Path) -> dict[str, str]:
    """{path: hash of its code} of the project files that an AST imports
    (`results_sha256`: what runs, not the prose)."""
    return {
        path: results_sha256(
            (root / path).read_text(encoding="utf-8"), posixpath.splitext(path)[1]
        )
        for path in project_imports(tree, root)
    }


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader sees the old file or the new one, never
    half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, delete=False, suffix=".part", encoding="utf-8"
    ) as handle:
        handle.write(text)
    os.chmod(handle.name, 0o644)
    os.replace(handle.name, path)


def pytest_environment(**extra: str) -> dict[str, str]:
    """This process's environment, with `extra` set, for a pytest the engine starts
    (benchmarks, gradings, mutants). Started from a pytest-xdist worker (CI runs the
    engine's tests on several), the child would inherit the worker's `PYTEST_XDIST_*`
    variables and take itself for part of a parallel run: pytest-benchmark, for one,
    then refuses to measure."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("PYTEST_XDIST_")
    }
    return {**inherited, **extra}


def lesson_command(
    argv, *, description: str, action, verb: str, stale, wanted=None
) -> int:
    """The command line shared by the figures and benchmarks tools: name lessons, or
    pass `--all` or `--stale`; `action(lesson, docs_dir)` runs on each chosen one.

    `stale(lesson, docs_dir)` says whether a lesson's stored results are missing or out
    of date; `wanted(lesson)` filters the lessons the tool applies to at all (e.g. those
    with benchmarks).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "lessons",
        nargs="*",
        help="lesson files, e.g. annotated/foundations/autograd.py",
    )
    parser.add_argument("--all", action="store_true", help="every lesson")
    parser.add_argument(
        "--stale",
        action="store_true",
        help="only lessons whose results are missing or stale",
    )
    parser.add_argument("--root", default=".", help="the project root")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    docs_dir = root / "docs"
    candidates = [
        lesson for lesson in discover(root) if wanted is None or wanted(lesson)
    ]
    if args.all or args.stale:
        chosen = [
            lesson for lesson in candidates if args.all or stale(lesson, docs_dir)
        ]
    else:
        try:
            chosen = select(args.lessons, candidates)
        except ValueError as error:
            parser.error(f"{error}; name lesson files or pass --all")
    for lesson in chosen:
        print(f"{lesson.relative}: {verb} ...", flush=True)
        action(lesson, docs_dir)
    return 0
