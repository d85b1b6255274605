r"""The lesson rules, in one place: what a lesson file must be for the engine to make
its page.

The build calls `check` on every lesson and stops on the first problem; the tests call
it too and list every problem. Each problem is a `LessonError` with the file and line to
fix:

- a Python lesson compiles without escape warnings (math in a plain string: `"\frac"`
  holds a form feed);
- front matter holds `title`, `summary`, `time` and `references`, and nothing that has
  another home (the stage comes from the curriculum, the area from the folder);
- every reference names its authors, title, year, venue and an arXiv id or URL; every
  `[@key]` citation in the prose names one of them;
- the lesson is in the curriculum, and imports only earlier lessons and the shared
  modules;
- the test file exists and its docstring opens with the sentence naming the reference;
- the file ends with 2–4 exercises.

Across lessons (`one_entry_per_work`): a reference key names one work, with one entry.
"""

from __future__ import annotations

import ast
import functools
import re
import warnings

from tools.literate import LessonError, worksheet
from tools.literate.files import LessonFile, imported_modules, project_imports
from tools.literate.parse import Lesson

FRONT_MATTER_FIELDS = ("title", "summary", "time", "references")
REFERENCE_FIELDS = ("key", "authors", "title", "year", "venue")
SHARED_MODULES = ("annotated/data.py", "annotated/figures.py")
CITATION = re.compile(r"\[(@[\w:.-]+(?:\s*;\s*@[\w:.-]+)*)\]")
# Anything that opens like a citation: a `[@...]` that CITATION does not match (a
# locator, `[@key, p. 4]`) would reach the page as literal text.
CITATION_LIKE = re.compile(r"\[@[^\]]*\]")
# A tab or other control character: in prose it is almost always an escape written into
# the file by a tool (`"\times"` in a plain Python string is a tab and "imes").
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
TIME = re.compile(r"\d+(\.\d+)? (s|min)")


def seconds(time: str) -> float:
    """`"15 s"` → 15.0, `"2 min"` → 120.0."""
    number, unit = str(time).split()
    return float(number) * (60 if unit == "min" else 1)


def citations(text: str) -> list[str]:
    """The keys cited in a piece of prose: `[@a; @b]` → ["a", "b"]."""
    return [
        key.strip().lstrip("@")
        for match in CITATION.finditer(text)
        for key in match.group(1).split(";")
    ]


def check(
    file: LessonFile,
    lesson: Lesson,
    test_source: str | None,
    order: list[str],
) -> list[LessonError]:
    """Every rule `lesson` breaks, as `LessonError`s with file:line; empty when it keeps
    them all.

    `order` is the curriculum's reading order of lesson keys.
    """
    # A CUDA C lesson is compiled by nvcc in its test file (`compile_only`).
    problems = []
    if lesson.language == "python":
        problems += _compile(file, lesson.source) or _docstrings(file, lesson.source)
    problems += _front_matter(file, lesson)
    problems += _citations(file, lesson)
    problems += _control_characters(file, lesson)
    problems += _place(file, lesson, order)
    problems += _drawing(file, lesson)
    problems += _flags(file, lesson)
    problems += _test_file(file, test_source)
    problems += _exercises(file, lesson)
    if "worksheet" in lesson.front_matter:
        problems += worksheet.check(
            file, lesson.source, lesson.front_matter, test_source
        )
    return problems


@functools.lru_cache(maxsize=512)
def first_sentence(test_source: str) -> str:
    """The first sentence of a test module's docstring: what the lesson is verified
    against. Remembered by content: parsing the whole test file is the cost."""
    docstring = ast.get_docstring(ast.parse(test_source)) or ""
    paragraph = docstring.strip().split("\n\n")[0].replace("\n", " ")
    # A sentence ends at a full stop before a capital: not in "eq. 1" or "64, ... 1024".
    end = re.search(r"\.\s+(?=[A-Z`])", paragraph)
    sentence = paragraph if end is None else paragraph[: end.start() + 1]
    # The page's label already says "Verified against"; the sentence often opens with it
    # too.
    return re.sub(r"^verified against\s+", "", sentence, flags=re.IGNORECASE)


def _compile(file: LessonFile, source: str) -> list[LessonError]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", SyntaxWarning)
        warnings.simplefilter("error", DeprecationWarning)
        try:
            compile(source, str(file.path), "exec", dont_inherit=True)
        except (SyntaxWarning, DeprecationWarning, SyntaxError) as warning:
            line = getattr(warning, "lineno", None) or 1
            reason = getattr(warning, "msg", None) or str(warning)
            # Python names the line a string starts on; the escape may be lines below
            # it, in a long docstring.
            escape = re.search(r"invalid escape sequence '(\\.)'", reason)
            if escape:
                lines = source.splitlines()[line - 1 :]
                line += next(
                    (i for i, text in enumerate(lines) if escape.group(1) in text), 0
                )
            return [
                LessonError(
                    file.path, line, f'{reason}: write the string as r"""..."""'
                )
            ]
    return []


def _docstrings(file: LessonFile, source: str) -> list[LessonError]:
    """A docstring is prose, rendered as it is written in the file: in a plain string
    `\\sigma` would show both backslashes, so one with a backslash must be raw."""
    lines = source.encode("utf-8").splitlines()  # ast counts columns in UTF-8 bytes
    problems = []
    for node in ast.walk(ast.parse(source)):
        kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        if not isinstance(node, kinds) or not node.body:
            continue
        first = node.body[0]
        if not (
            isinstance(first, ast.Expr)
            and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)
        ):
            continue
        string = first.value
        written = b"\n".join(lines[string.lineno - 1 : string.end_lineno])
        written = written[string.col_offset :]  # from its prefix or opening quote
        if b"\\" in written and written[:1] not in (b"r", b"R"):
            problems.append(
                LessonError(
                    file.path,
                    first.lineno,
                    "a docstring with a backslash is rendered as written: "
                    'write it as r"""...""" with single backslashes',
                )
            )
    return problems


def _expected(file: LessonFile, lesson: Lesson) -> list[LessonError]:
    """`expected: {metric, seeds, short}`: the metric the figures tool records over
    several seeds (with `--seed`), and the short run's flags the test repeats."""
    expected, line = lesson.front_matter["expected"], lesson.front_matter_line
    where = "front matter: expected"
    if not isinstance(expected, dict) or not isinstance(expected.get("metric"), str):
        return [LessonError(file.path, line, f"{where} must map metric to a name")]
    problems = []
    unknown = sorted(set(expected) - {"metric", "seeds", "short"})
    if unknown:
        problems.append(
            LessonError(file.path, line, f"{where}: unknown keys {', '.join(unknown)}")
        )
    seeds = expected.get("seeds", 3)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 2:
        problems.append(
            LessonError(file.path, line, f"{where}.seeds must be an int >= 2")
        )
    short = expected.get("short", [])
    if not isinstance(short, list) or not all(isinstance(a, str) for a in short):
        problems.append(
            LessonError(file.path, line, f"{where}.short must be a list of flags")
        )
    if '"--seed"' not in lesson.source:
        problems.append(
            LessonError(
                file.path, line, f"{where}: the demo needs a --seed flag to vary"
            )
        )
    return problems


def _front_matter(file: LessonFile, lesson: Lesson) -> list[LessonError]:
    meta, line = lesson.front_matter, lesson.front_matter_line
    if not meta:
        return [
            LessonError(
                file.path,
                1,
                "no front matter: the module docstring must begin with a '---' "
                "YAML block "
                f"holding {', '.join(FRONT_MATTER_FIELDS)}",
            )
        ]
    problems = []
    missing = [name for name in FRONT_MATTER_FIELDS if name not in meta]
    if missing:
        problems.append(
            LessonError(file.path, line, f"front matter lacks {', '.join(missing)}")
        )
    placed = ("stage", "week", "weeks", "area", "topic")
    moved = [name for name in placed if name in meta]
    if moved:
        problems.append(
            LessonError(
                file.path,
                line,
                f"front matter: remove {', '.join(moved)}: the stage and week come "
                "from annotated/curriculum.toml and the area and topic from the "
                "lesson's path",
            )
        )
    if "time" in meta and not TIME.fullmatch(str(meta["time"])):
        problems.append(
            LessonError(
                file.path,
                line,
                f"front matter: time is like '20 s' or '2 min', got {meta['time']!r}",
            )
        )
    if "expected" in meta:
        problems += _expected(file, lesson)
    references = meta.get("references")
    if "references" in meta and (not isinstance(references, list) or not references):
        problems.append(
            LessonError(
                file.path, line, "front matter: references must be a non-empty list"
            )
        )
        return problems
    keys = set()
    for index, reference in enumerate(references or []):
        where = f"front matter: references[{index}]"
        if not isinstance(reference, dict):
            problems.append(LessonError(file.path, line, f"{where} must be a mapping"))
            continue
        lacking = [name for name in REFERENCE_FIELDS if not reference.get(name)]
        if not (reference.get("arxiv") or reference.get("url")):
            lacking.append("arxiv or url")
        if lacking:
            problems.append(
                LessonError(file.path, line, f"{where} lacks {', '.join(lacking)}")
            )
        if not isinstance(reference.get("authors", []), list):
            problems.append(
                LessonError(file.path, line, f"{where}: authors must be a list")
            )
        if reference.get("key") in keys:
            problems.append(
                LessonError(
                    file.path, line, f"{where}: key {reference['key']!r} is used twice"
                )
            )
        keys.add(reference.get("key"))
    return problems


def one_entry_per_work(lessons: list[tuple[LessonFile, Lesson]]) -> list[LessonError]:
    """The rule across lessons: a key names one work, cited with the same entry in
    every lesson that cites it, and a work (its arXiv id or URL) has one key. The
    papers page (`papers.py`) lists each work once, with every lesson citing it; a
    lesson that cites the work differently is reported at its entry, naming the lesson
    to copy the entry from."""
    first: dict[str, tuple[LessonFile, dict]] = {}  # key → where it is first cited
    keys: dict[str, tuple[str, LessonFile]] = {}  # arXiv id or URL → key, lesson
    problems = []
    for file, lesson in lessons:
        for reference in lesson.front_matter.get("references") or []:
            if not isinstance(reference, dict) or not reference.get("key"):
                continue  # reported by the lesson's own rules
            key = str(reference["key"])
            line = _reference_line(lesson, key)
            if key in first:
                other, entry = first[key]
                differ = sorted(
                    name
                    for name in entry.keys() | reference.keys()
                    if entry.get(name) != reference.get(name)
                )
                if differ:
                    problems.append(
                        LessonError(
                            file.path,
                            line,
                            f"references: {key!r} has another {', '.join(differ)} "
                            f"in {other.relative}: a key names one work, with one "
                            "entry wherever it is cited",
                        )
                    )
                continue
            first[key] = (file, reference)
            work = str(reference.get("arxiv") or reference.get("url") or "")
            if work in keys:
                named, other = keys[work]
                problems.append(
                    LessonError(
                        file.path,
                        line,
                        f"references: {key!r} is {work}, which {other.relative} "
                        f"cites as {named!r}: one work, one key",
                    )
                )
            elif work:
                keys[work] = (key, file)
    return problems


def _reference_line(lesson: Lesson, key: str) -> int:
    """The line of a reference's `key:` in the front matter."""
    found = re.search(rf"^\s*-?\s*key:\s*{re.escape(key)}\s*$", lesson.source, re.M)
    if found is None:
        return lesson.front_matter_line
    return lesson.source.count("\n", 0, found.start()) + 1


def _citations(file: LessonFile, lesson: Lesson) -> list[LessonError]:
    keys = {
        ref.get("key")
        for ref in lesson.front_matter.get("references") or []
        if isinstance(ref, dict)
    }
    problems = []
    for section in lesson.sections:
        # A citation may be wrapped across lines, so each section's prose is read
        # whole; a match reports the line it starts on.
        numbers = [number for number, _ in section.markdown]
        prose = "\n".join(text for _, text in section.markdown)

        def line(match) -> int:
            return numbers[prose.count("\n", 0, match.start())] or 1

        for match in CITATION_LIKE.finditer(prose):
            if not CITATION.fullmatch(match.group(0)):
                problems.append(
                    LessonError(
                        file.path,
                        line(match),
                        f"citation {' '.join(match.group(0).split())} is not "
                        "rendered: write [@key] or [@a; @b], with any locator outside",
                    )
                )
        for match in CITATION.finditer(prose):
            problems += [
                LessonError(
                    file.path,
                    line(match),
                    f"citation [@{key}] is not in the front matter's references",
                )
                for key in citations(match.group(0))
                if key not in keys
            ]
    return problems


def _control_characters(file: LessonFile, lesson: Lesson) -> list[LessonError]:
    return [
        LessonError(
            file.path,
            number or 1,
            f"prose holds control character {match.group(0)!r} at column "
            f"{match.start() + 1}: a tab or an escape (\\t of \\times?) written "
            "into the file",
        )
        for section in lesson.sections
        for number, text in section.markdown
        for match in CONTROL.finditer(text)
    ]


def _place(file: LessonFile, lesson: Lesson, order: list[str]) -> list[LessonError]:
    if file.key not in order:
        return [
            LessonError(
                file.path,
                1,
                f"{file.key} is not in annotated/curriculum.toml: add it to its week",
            )
        ]
    problems = []
    for node in ast.walk(lesson.tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for name in imported_modules(node):
                if name.split(".")[0] == "tools":
                    problems.append(
                        LessonError(
                            file.path,
                            node.lineno,
                            f"a lesson never imports the engine ({name})",
                        )
                    )
            for path in project_imports(node, file.root):
                key = LessonFile(file.root, path).key
                earlier = key in order and order.index(key) < order.index(file.key)
                if path not in SHARED_MODULES and not earlier:
                    problems.append(
                        LessonError(
                            file.path,
                            node.lineno,
                            f"imports {path}, which is not an earlier lesson "
                            "in the curriculum",
                        )
                    )
    return problems


def _drawing(file: LessonFile, lesson: Lesson) -> list[LessonError]:
    """A lesson draws with `annotated.figures` (`figure`, `save`). pyplot picks a
    backend when it is imported, and `matplotlib.use` switches it: either breaks an
    import in the site build or in a notebook."""
    names = {"matplotlib"} | {  # what `matplotlib` is called in the lesson
        alias.asname
        for node in ast.walk(lesson.tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name == "matplotlib" and alias.asname
    }
    problems = []
    for node in ast.walk(lesson.tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if {"matplotlib.pyplot", "pylab"} & set(imported_modules(node)):
                problems.append((node.lineno, "pyplot"))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "use"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in names
        ):
            problems.append((node.lineno, "matplotlib.use"))
    return [
        LessonError(
            file.path,
            line,
            f"a lesson draws with annotated.figures (figure, save), not {what}: it "
            "must import cleanly in the site build and in a notebook",
        )
        for line, what in sorted(problems)
    ]


def _flags(file: LessonFile, lesson: Lesson) -> list[LessonError]:
    """Every flag of the demo says what it sets, and `--help` shows its default: that
    is how a reader finds them. A `--device` flag and a numeric flag are checked before
    anything runs (`annotated.data.torch_device`, `integer`, `number`), so a device this
    machine lacks, or `--steps -1`, is a usage line."""
    problems = []
    for node in ast.walk(lesson.tree):
        if not isinstance(node, ast.Call):
            continue
        called = ast.unparse(node.func)
        keywords = {keyword.arg: keyword.value for keyword in node.keywords}
        if called.endswith("ArgumentParser") and not (
            "formatter_class" in keywords
            and ast.unparse(keywords["formatter_class"]).endswith(
                "ArgumentDefaultsHelpFormatter"
            )
        ):
            problems.append(
                LessonError(
                    file.path,
                    node.lineno,
                    "the demo's parser needs formatter_class="
                    "argparse.ArgumentDefaultsHelpFormatter: --help shows each default",
                )
            )
        if not called.endswith("add_argument"):
            continue
        flag = ast.unparse(node.args[0]) if node.args else "?"
        if "help" not in keywords:
            problems.append(
                LessonError(
                    file.path,
                    node.lineno,
                    f"flag {flag} has no help=: say what it sets (--help shows it)",
                )
            )
        if flag in ("'--device'", '"--device"') and not (
            "type" in keywords
            and ast.unparse(keywords["type"]).endswith("torch_device")
        ):
            problems.append(
                LessonError(
                    file.path,
                    node.lineno,
                    "flag '--device' needs type=torch_device (from annotated.data): "
                    "a device this machine lacks is then a usage line, not a traceback",
                )
            )
        number = ast.unparse(keywords["type"]) if "type" in keywords else ""
        if number in ("int", "float") and "choices" not in keywords:
            helper = "integer(at_least=...)" if number == "int" else "number(...)"
            problems.append(
                LessonError(
                    file.path,
                    node.lineno,
                    f"flag {flag} takes any {number}: give its range with type="
                    f"{helper} (from annotated.data), so that a value outside it is "
                    "a usage line before anything runs",
                )
            )
    return problems


def _test_file(file: LessonFile, test_source: str | None) -> list[LessonError]:
    if test_source is None:
        return [
            LessonError(
                file.path,
                1,
                f"no test file {file.test}: every lesson is verified "
                "against a reference there",
            )
        ]
    if not first_sentence(test_source).strip():
        return [
            LessonError(
                file.root / file.test,
                1,
                "the test module's docstring must start with a sentence naming "
                "the reference it checks against",
            )
        ]
    return []


def _exercises(file: LessonFile, lesson: Lesson) -> list[LessonError]:
    last = lesson.sections[-1] if lesson.sections else None
    if last is None or last.kind != "exercises":
        marker = "// ## Exercises" if lesson.language == "cuda" else "# ## Exercises"
        return [
            LessonError(
                file.path,
                len(lesson.source.splitlines()),
                f"the file must end with a `{marker}` comment block",
            )
        ]
    items = re.findall(r"^\d+\. ", last.prose, flags=re.M)
    if not 2 <= len(items) <= 4:
        line = last.prose_lines[0].number
        return [LessonError(file.path, line, f"{len(items)} exercises; write 2 to 4")]
    return []
