"""Do a lesson's tests notice a wrong lesson? Sampled mutation testing.

    python -m tools.literate.mutants annotated/foundations/matrix.py
    python -m tools.literate.mutants annotated/llm/lora.py --count 10 --seed 1

A mutant is the lesson with one small change: an operator swapped (`+` for `-`, `*`
for `/`, `**` for `*`), a comparison moved by one (`<` for `<=`, `==` for `!=`), a
number changed (`n` to `n + 1`, `x` to `1.1 x`), a minus sign dropped. The tool draws
`--count` of them from the lesson's functions, runs the lesson's test file against
each, as CI would (`CI=true`: hypothesis' fixed examples), and lists the mutants the
tests let through. A survivor is either a gap in the tests (write the test that fails
on it) or a change that alters nothing anyone can observe (an equivalent mutant:
`softmax(x, dim=-1)` and `dim=1` on a 2-D tensor).

Left alone, because a wrong value there is a different lesson rather than a wrong
one, or no test can see it: default arguments, `main`, `example`, `dataflow`, the
functions that draw (`plot_*`, `save_*`, `figure*`), messages (`raise`, `assert`,
f-strings, `print`, `tqdm`), and the conditions of a bare `if ...: raise`.

Each mutant is written to a temporary file and graded as the exercise mode grades a
worksheet (`pytest --lesson ... --worksheet ...`, see `tools.literate.worksheet`): the
tests import it in the lesson's place, and the lesson on disk is never changed, even
if the run is stopped half-way. A test run that takes longer than `--timeout`, or a
mutant that cannot even be imported, counts as noticed.
"""

import argparse
import ast
import random
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from tools.literate.files import LessonFile, pytest_environment

ROOT = Path(__file__).resolve().parents[2]

SWAPS = {ast.Add: "-", ast.Sub: "+", ast.Mult: "/", ast.Div: "*", ast.Pow: "*"}
SYMBOLS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
MOVES = {
    ast.Lt: ("<", "<="),
    ast.LtE: ("<=", "<"),
    ast.Gt: (">", ">="),
    ast.GtE: (">=", ">"),
    ast.Eq: ("==", "!="),
    ast.NotEq: ("!=", "=="),
}
UNTOUCHED = {"main", "example", "dataflow"}
DRAWING = ("plot", "save", "figure", "draw")


@dataclass(frozen=True)
class Mutant:
    """The source from `start` to `end` (character offsets) replaced by `new`."""

    function: str
    line: int
    start: int
    end: int
    new: str

    def apply(self, source: str) -> str:
        return source[: self.start] + self.new + source[self.end :]


def _offset(lines: list[str]):
    """Character offset of an AST position (line from 1, column in UTF-8 bytes)."""
    starts = [0]
    for text in lines:
        starts.append(starts[-1] + len(text))

    def at(line: int, column: int) -> int:
        return starts[line - 1] + len(lines[line - 1].encode()[:column].decode())

    return at


def _silent(tree: ast.AST) -> set[int]:
    """Ids of the nodes that only speak (messages, progress) or guard a `raise`."""
    nodes = set()
    for node in ast.walk(tree):
        speaks = isinstance(node, (ast.Raise, ast.Assert, ast.JoinedStr)) or (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", None) in ("print", "tqdm")
        )
        if speaks:
            nodes.update(id(inner) for inner in ast.walk(node))
        if isinstance(node, ast.If) and all(
            isinstance(s, ast.Raise) for s in node.body
        ):
            nodes.update(id(inner) for inner in ast.walk(node.test))
    return nodes


def mutants(source: str) -> list[Mutant]:
    """Every mutant of `source` this tool makes, in source order."""
    tree = ast.parse(source)
    at = _offset(source.splitlines(keepends=True))
    silent = _silent(tree)
    found = []
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        name = function.name
        if name in UNTOUCHED or name.lstrip("_").startswith(DRAWING):
            continue
        arguments = function.args
        defaults = [d for d in [*arguments.defaults, *arguments.kw_defaults] if d]
        skipped = silent | {id(n) for d in defaults for n in ast.walk(d)}
        for node in ast.walk(function):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.BinOp) and type(node.op) in SWAPS:
                left = at(node.left.end_lineno, node.left.end_col_offset)
                right = at(node.right.lineno, node.right.col_offset)
                symbol = SYMBOLS[type(node.op)]
                where = source.find(symbol, left, right)
                if where >= 0 and not (symbol == "*" and "**" in source[left:right]):
                    end = where + len(symbol)
                    new = SWAPS[type(node.op)]
                    found.append(Mutant(name, node.lineno, where, end, new))
            elif (
                isinstance(node, ast.Compare)
                and len(node.ops) == 1
                and type(node.ops[0]) in MOVES
            ):
                left = at(node.left.end_lineno, node.left.end_col_offset)
                right = at(node.comparators[0].lineno, node.comparators[0].col_offset)
                old, new = MOVES[type(node.ops[0])]
                where = source.find(old, left, right)
                if where >= 0:
                    found.append(
                        Mutant(name, node.lineno, where, where + len(old), new)
                    )
            elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
                value = node.value
                new = repr(value + 1 if isinstance(value, int) else value * 1.1 or 0.5)
                start = at(node.lineno, node.col_offset)
                end = at(node.end_lineno, node.end_col_offset)
                found.append(Mutant(name, node.lineno, start, end, new))
            elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
                start = at(node.lineno, node.col_offset)
                if source[start] == "-":
                    found.append(Mutant(name, node.lineno, start, start + 1, ""))
    return sorted(found, key=lambda mutant: mutant.start)


def run_tests(root: Path, lesson: str, module: Path | None, timeout: float) -> int:
    """pytest's exit status for `lesson`'s test file, run in `root` as CI runs it
    (`CI=true`), with the file `module` imported in the lesson's place when given."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    command += ["--benchmark-disable", f"--lesson={lesson}"]
    if module is not None:
        command.append(f"--worksheet={module}")
    try:
        result = subprocess.run(
            command,
            cwd=root,
            env=pytest_environment(CI="true"),
            capture_output=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return -1
    return result.returncode


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    parser = argparse.ArgumentParser(
        description="Mutate a lesson one change at a time and report the changes its "
        "tests do not notice.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("lesson", help="annotated/<area>/<topic>.py")
    parser.add_argument("--count", type=int, default=8, help="mutants to try")
    parser.add_argument("--seed", type=int, default=0, help="which mutants are drawn")
    parser.add_argument(
        "--timeout", type=float, default=300, help="seconds one test run may take"
    )
    args = parser.parse_args(argv)
    path = Path(args.lesson).resolve()
    relative = path.relative_to(root).as_posix() if path.is_relative_to(root) else ""
    if not (relative.startswith("annotated/") and relative.endswith(".py")):
        parser.error(f"lesson: expected annotated/<area>/<topic>.py, got {args.lesson}")
    file = LessonFile(root, relative)
    if not file.path.is_file() or not (root / file.test).is_file():
        parser.error(f"lesson: need {relative} and its tests, {file.test}")
    if args.count < 1:
        parser.error(f"--count must be at least 1, got {args.count}")
    source = file.path.read_text(encoding="utf-8")
    every = mutants(source)
    drawn = random.Random(args.seed).sample(every, min(args.count, len(every)))
    print(f"{relative}: {len(every)} possible mutants, trying {len(drawn)}")
    if run_tests(root, relative, None, args.timeout) != 0:
        print(f"the tests do not pass on the lesson as it is: pytest {file.test}")
        return 1
    survivors = []
    with tempfile.TemporaryDirectory(prefix="mutants-") as folder:
        module = Path(folder) / file.path.name
        for mutant in tqdm(sorted(drawn, key=lambda m: m.start), desc="mutants"):
            module.write_text(mutant.apply(source), encoding="utf-8")
            if run_tests(root, relative, module, args.timeout) == 0:
                survivors.append(mutant)
    lines = source.splitlines()
    print(f"{len(drawn) - len(survivors)} of {len(drawn)} mutants noticed")
    for mutant in survivors:
        before = lines[mutant.line - 1].strip()
        after = mutant.apply(source).splitlines()[mutant.line - 1].strip()
        print(f"  {relative}:{mutant.line} in {mutant.function}()")
        print(f"    - {before}\n    + {after}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
