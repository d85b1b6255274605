"""Verified by grading: a lesson passes the tests its worksheet names, the worksheet
fails every one of them, and the worksheet filled back in passes them again; the
blanking itself is checked against the fixture lesson's source line by line. The
command line reads `--lesson` from wherever pytest starts, and says in one line what is
wrong with a path that is no lesson or a worksheet that is missing, unreadable or raises
on import. Each edition's page and download carry the hints in its language, a Chinese
hint wrapped by columns."""

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import REPO, make_project
from tools.literate import LessonError, i18n, pipeline, render
from tools.literate.files import LessonFile, discover
from tools.literate.parse import parse
from tools.literate.worksheet import (
    MARK,
    Region,
    blank,
    check,
    fill,
    main,
    regions,
    verify,
)

FIXTURE = (Path(__file__).parent / "fixtures/tiny_model.py").read_text()
FILE = LessonFile(REPO, "annotated/demo/tiny_model.py")
FORWARD = Region("TinyModel.forward", "Chain the three layers.", ("test_forward",))
EXAMPLE = Region("example", "Seed, then build the model and a batch.", ("test_ex",))


def test_blank_replaces_each_body_and_keeps_signatures_and_docstrings():
    worksheet = blank(FILE, FIXTURE, [FORWARD, EXAMPLE])
    tree = ast.parse(worksheet)
    functions = {
        node.name: node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
    }
    for name in ("forward", "example"):
        body = functions[name].body
        assert isinstance(body[-1], ast.Raise) and len(body) <= 2  # docstring, raise
    assert '"""The declared example: a batch of four inputs."""' in worksheet
    assert "return self.head(self.block(self.embed(x)))" not in worksheet
    # The comment above forward's first statement goes with the body.
    assert "h = \\mathrm{block}(W_e x)" not in worksheet
    assert f"        {MARK}Chain the three layers." in worksheet
    assert "raise NotImplementedError('write TinyModel.forward')" in worksheet
    # Everything outside the regions is unchanged: Block's forward is still there.
    assert "return x + torch.relu(self.linear(x))" in worksheet
    assert max(len(line) for line in worksheet.splitlines()) <= 88


def test_filling_the_worksheet_back_in_gives_the_lesson_exactly():
    wanted = [EXAMPLE, FORWARD]
    assert fill(FILE, blank(FILE, FIXTURE, wanted), FIXTURE, wanted) == FIXTURE


def test_bad_regions_are_named():
    with pytest.raises(LessonError, match="'TinyModel.backward' is not a function"):
        blank(FILE, FIXTURE, [Region("TinyModel.backward", "h", ("test_a",))])
    nested = Region("TinyModel", "h", ("test_a",))
    with pytest.raises(LessonError, match="not a function or method"):
        blank(FILE, FIXTURE, [nested])
    with pytest.raises(LessonError, match="declares no worksheet"):
        blank(FILE, FIXTURE, [])
    docstring_only = FIXTURE + '\n\ndef later():\n    """Only a docstring."""\n'
    with pytest.raises(LessonError, match="no body below its docstring"):
        blank(FILE, docstring_only, [Region("later", "h", ("test_a",))])
    with pytest.raises(LessonError, match=r"worksheet\[0\].tests must be"):
        regions(FILE, {"worksheet": [{"region": "f", "hint": "h", "tests": "test_a"}]})
    with pytest.raises(LessonError, match="exactly region, hint and tests"):
        regions(FILE, {"worksheet": [{"region": "f", "hint": "h"}]})
    with pytest.raises(LessonError, match=":1: front matter: worksheet must be a list"):
        regions(FILE, {"worksheet": {"region": "f", "hint": "h", "tests": ["t"]}})
    nested = FIXTURE + "\n\ndef outer():\n    def inner():\n        return 1\n"
    both = [Region("outer", "h", ("test_a",)), Region("outer.inner", "h", ("test_a",))]
    with pytest.raises(LessonError, match="regions 'outer' and 'outer.inner' overlap"):
        blank(FILE, nested, both)


def test_filling_a_file_that_is_not_the_worksheet_is_refused():
    with pytest.raises(
        LessonError, match="'TinyModel.forward' is not a worksheet stub"
    ):
        fill(FILE, FIXTURE, FIXTURE, [FORWARD])


def test_check_names_tests_the_test_file_does_not_define():
    front_matter = {
        "worksheet": [{"region": "example", "hint": "h", "tests": ["test_gone"]}]
    }
    problems = check(FILE, FIXTURE, front_matter, "def test_here():\n    pass\n")
    assert len(problems) == 1 and "defines no test_gone" in problems[0].reason


def test_every_python_lesson_marks_sound_regions():
    unmarked, problems = [], []
    for file in discover(REPO):
        if file.language != "python":
            continue  # CUDA C: its tests only compile it on a machine without a GPU
        source = file.path.read_text(encoding="utf-8")
        front_matter = parse(source, file.path).front_matter
        if not front_matter.get("worksheet"):
            unmarked.append(file.relative)
            continue
        test_source = (REPO / file.test).read_text(encoding="utf-8")
        problems += check(file, source, front_matter, test_source)
    assert not unmarked, f"lessons with no worksheet regions: {unmarked}"
    assert not problems, "\n".join(str(problem) for problem in problems)


@pytest.mark.slow
def test_the_lessons_tests_grade_its_worksheet():
    outcome = verify(LessonFile(REPO, "annotated/foundations/matrix.py"))
    tests = {
        "test_matmul_both_orders_match_numpy",
        "test_loop_orders_are_bitwise_identical",
        "test_lu_reconstructs_pa_with_bounded_multipliers",
        "test_lu_matches_scipy",
    }
    assert outcome["original"] == dict.fromkeys(tests, True)
    assert outcome["worksheet"] == dict.fromkeys(tests, False)
    assert outcome["filled"] == dict.fromkeys(tests, True)


def worksheet_table(name: str, hint: str, tests: list[str]) -> str:
    """The worksheet HTML of a page with one region."""
    facts = SimpleNamespace(
        worksheet="topic_worksheet.py",
        module="annotated.area.topic",
        root="../",
        lesson_path="annotated/area/topic.py",
        regions=[SimpleNamespace(name=name, hint=hint, tests=tests)],
    )
    return render._worksheet(facts)


def test_the_page_sets_a_hints_code_spans_as_code_and_escapes_the_rest():
    page = worksheet_table("f", "Cut `x[:k]` in <two> & `y`", ["t"])
    assert "<td>Cut <code>x[:k]</code> in &lt;two&gt; &amp; <code>y</code></td>" in page


def test_the_page_lets_long_names_wrap_after_underscores_and_dots():
    page = worksheet_table("Checkpoint.backward", "h", ["test_a_b", "test_c"])
    assert "<code>Checkpoint.<wbr>backward</code>" in page
    assert "<code>test_<wbr>a_<wbr>b</code><br><code>test_<wbr>c</code>" in page


def test_the_pages_command_works_as_typed_from_the_repo_root():
    # `--lesson PATH`, with a space: pytest reads PATH as a folder to collect before it
    # knows the option, so the option must come from the root conftest.py.
    import subprocess
    import sys

    lesson = "annotated/foundations/matrix.py"
    command = [sys.executable, "-m", "pytest", "--lesson", lesson, "--co", "-q"]
    run = subprocess.run(
        [*command, "-p", "no:cacheprovider"], cwd=REPO, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
    collected = [line for line in run.stdout.splitlines() if "::" in line]
    assert collected and all(
        line.startswith("tests/foundations/test_matrix.py::") for line in collected
    )


MATRIX = str(REPO / "annotated/foundations/matrix.py")


def pytest_in(folder: Path, *args: str):
    import subprocess
    import sys

    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]
    return subprocess.run(command, cwd=folder, capture_output=True, text=True)


def test_the_lesson_path_is_read_from_where_pytest_starts(tmp_path):
    # From a subfolder, and as an absolute path: the same lesson, the same tests.
    for folder, lesson in [
        (REPO / "tests", "../annotated/foundations/matrix.py"),
        (tmp_path, str(REPO / "annotated/foundations/matrix.py")),
    ]:
        run = pytest_in(folder, "--rootdir", str(REPO), "--lesson", lesson, "--co")
        assert run.returncode == 0, run.stdout + run.stderr
        assert "test_matrix.py" in run.stdout


def test_a_path_that_is_no_lesson_is_said_in_one_line():
    run = pytest_in(REPO, "--lesson", "README.md")
    assert run.returncode == 4, run.stdout + run.stderr  # pytest's usage error
    assert "--lesson: no Python lesson at README.md (a lesson is" in run.stderr


@pytest.mark.parametrize(
    "written, message",
    [
        (None, "--worksheet: no file ws.py"),
        ("def matmul(a, b:\n", "--worksheet: ws.py:1: '(' was never closed"),
        ("x = 1\nraise RuntimeError('at import')\n", "ws.py:2 raised RuntimeError"),
    ],
    ids=["no file", "syntax error", "raises on import"],
)
def test_a_bad_worksheet_is_said_in_one_line(tmp_path, written, message):
    if written is not None:
        (tmp_path / "ws.py").write_text(written)
    run = pytest_in(
        tmp_path, "--rootdir", str(REPO), "--lesson", MATRIX, "--worksheet", "ws.py"
    )
    assert run.returncode == 4, run.stdout + run.stderr
    assert message in run.stderr and "INTERNALERROR" not in run.stderr, run.stderr


def test_a_chinese_hint_wraps_by_columns_and_never_starts_a_line_with_a_comma():
    hint = (
        "先检查输入，再沿序列轴在前面补 K - 1 个零（`F.pad(x, (0, 0, K - 1, 0))`），"
        "然后对每个滞后 i = 0 .. K - 1，把第 i 行权重乘以向后平移 i 步的序列并累加："
        "也就是从 K - 1 - i 开始、长度与输入相同的那一段切片。"
    )
    worksheet = blank(FILE, FIXTURE, [Region("TinyModel.forward", hint, ("t",))])
    stub = [line.strip() for line in worksheet.splitlines() if line.strip()[:1] == "#"]
    stub = stub[stub.index(next(s for s in stub if s.startswith(MARK.strip()))) :]
    lines = stub[: next(i for i, s in enumerate(stub) if s.startswith("# Graded"))]
    assert len(lines) >= 3
    columns = [len(s) + sum(1 for c in s if "\u4e00" <= c <= "\uff60") for s in lines]
    assert max(columns) + 8 <= 88  # eight spaces of indent, inside a method
    assert all(s.removeprefix("#").strip()[0] not in "，。；：）" for s in lines)
    joined = "".join(s.removeprefix("#").strip() for s in lines)
    assert joined.replace(" ", "") == (MARK.strip("# ") + hint).replace(" ", "")


def test_each_edition_shows_and_downloads_the_hints_in_its_language(tmp_path):
    region = (
        "worksheet:\n  - region: TinyModel.forward\n"
        "    hint: Chain the three layers, `embed` first.\n    tests: [test_forward]\n"
    )
    project = make_project(
        tmp_path, FIXTURE.replace("time: 1 s\n", f"time: 1 s\n{region}")
    )
    record = pipeline.read(LessonFile(project, FILE.relative), project / "docs")
    chinese_hint = "依次串起三层，先做 `embed`。"
    pages = {
        language: pipeline.render_page(
            record,
            pipeline.Site(
                project / ".cache",
                True,
                frozenset({"index.md", "lessons/demo/tiny_model.md"}),
                {},
                language=language,
                prefix=prefix,
                translations={
                    "demo/tiny_model": {"worksheet.TinyModel.forward": chinese_hint}
                }
                if language == "zh"
                else {},
            ),
        )
        for language, prefix in (("en", ""), ("zh", "zh/"))
    }
    english, chinese = pages["en"], pages["zh"]
    assert "<td>Chain the three layers, <code>embed</code> first.</td>" in english.body
    assert 'href="../../../downloads/demo/tiny_model_worksheet.py"' in english.body
    assert f"{MARK}Chain the three layers" in english.worksheet
    assert "<td>依次串起三层，先做 <code>embed</code>。</td>" in chinese.body
    assert 'href="../../../../zh/downloads/demo/tiny_model_worksheet.py"' in (
        chinese.body
    )
    assert f"{MARK}{chinese_hint}" in chinese.worksheet
    assert f"{MARK}Chain" not in chinese.worksheet  # (the front matter keeps it)


def test_the_command_writes_a_worksheet_with_the_chinese_editions_hints(tmp_path):
    matrix = LessonFile(REPO, "annotated/foundations/matrix.py")
    stored = i18n.read(REPO / i18n.lesson_path("zh", matrix))
    hint = i18n.translated(i18n.file_units(matrix, REPO / "docs"), stored)[
        "worksheet.lu"
    ]
    assert main(["--language", "zh", "--out", str(tmp_path), str(matrix.path)]) == 0
    written = (tmp_path / "matrix_worksheet.py").read_text(encoding="utf-8")
    comment = "".join(
        line.strip().removeprefix("#").strip()
        for line in written.splitlines()
        if line.strip().startswith("#")
    )
    assert hint.replace(" ", "") in comment.replace(" ", "")
    compile(written, "matrix_worksheet.py", "exec")
