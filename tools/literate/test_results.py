"""The stored run of the competency tests, which the checklist page reports.

The plan's competency checklist names, for each ability, the tests that demonstrate it
(`tests = [...]` in `annotated/curriculum.toml`). This tool runs exactly those tests and
stores what happened, test by test, in `docs/tests/results.json` with the machine, the
date and the commit:

    python -m tools.literate.test_results           # run them, store the outcome
    python -m tools.literate.test_results --show    # print the stored outcome

The build never runs tests: the checklist page and the lesson pages read the stored
file, so they say "passed in the stored run of <date>", not "passes now". A test that is
not in the stored run (a lesson written since) is marked so.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from tools.literate import learning_path
from tools.literate.files import pytest_environment

RESULTS = Path("docs/tests/results.json")


@dataclass(frozen=True)
class TestResults:
    """One stored run: `outcomes` maps a test file ("tests/rl/test_ppo.py") to
    {test function name → "passed" | "failed" | "skipped"}; parametrised cases of one
    function are folded together (failed if any failed, skipped if all skipped)."""

    date: str
    machine: str
    commit: str
    outcomes: dict[str, dict[str, str]]

    def status(self, ref: learning_path.TestRef) -> str | None:
        """ "passed", "failed", "skipped", or None when the stored run lacks it."""
        functions = self.outcomes.get(ref.file)
        if functions is None:
            return None
        if ref.name is not None:
            return functions.get(ref.name)
        return _fold(list(functions.values())) if functions else None


def _fold(outcomes: list[str]) -> str:
    if "failed" in outcomes:
        return "failed"
    return "passed" if "passed" in outcomes else "skipped"


def load(root: Path) -> TestResults | None:
    """The stored run, or None if there is none yet."""
    path = root / RESULTS
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return TestResults(data["date"], data["machine"], data["commit"], data["outcomes"])


def competency_tests(
    curriculum: learning_path.Curriculum,
) -> list[learning_path.TestRef]:
    """Every test the checklist names, in order, each once."""
    refs = [
        ref
        for group in curriculum.competencies
        for item in group.items
        for ref in item.tests
    ]
    return list(dict.fromkeys(refs))


def parse_junit(xml_text: str) -> dict[str, dict[str, str]]:
    """{test file: {function: outcome}} from pytest's JUnit XML."""
    cases: dict[str, dict[str, list[str]]] = {}
    for case in ET.fromstring(xml_text).iter("testcase"):
        # classname "tests.rl.test_ppo" (or "...test_ppo.TestClass"), name "test_x[3]"
        module = case.get("classname", "")
        parts = module.split(".")
        while parts and not parts[-1].startswith("test_"):
            parts.pop()
        file = "/".join(parts) + ".py"
        function = case.get("name", "").split("[", 1)[0]
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = "failed"
        elif case.find("skipped") is not None:
            outcome = "skipped"
        else:
            outcome = "passed"
        cases.setdefault(file, {}).setdefault(function, []).append(outcome)
    return {
        file: {name: _fold(outcomes) for name, outcomes in functions.items()}
        for file, functions in cases.items()
    }


def run_pytest(
    root: Path, arguments: list[str], quiet: bool = False
) -> dict[str, dict[str, str]]:
    """{test file: {function: outcome}} of one fresh pytest process run in `root`,
    read from the JUnit XML report it writes (its console output shown, or hidden when
    `quiet`)."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        subprocess.run(
            [*command, f"--junitxml={report}", *arguments],
            cwd=root,
            env=pytest_environment(),
            capture_output=quiet,
            check=False,
        )
        if not report.is_file():
            raise RuntimeError("pytest wrote no report: it could not start")
        return parse_junit(report.read_text(encoding="utf-8"))


def _commit(root: Path) -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> str:
    """ "2 CPU cores, x86_64, Python 3.12": what the run's numbers depend on."""
    cores = (
        len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count()
    )
    return (
        f"{cores} CPU cores, {platform.machine()}, Python {platform.python_version()}"
    )


def run(root: Path) -> TestResults:
    """Run the checklist's tests (benchmarks skipped) and store the outcome."""
    curriculum = learning_path.load(root / "annotated/curriculum.toml")
    files = sorted(
        {
            ref.file
            for ref in competency_tests(curriculum)
            if (root / ref.file).is_file()
        }
    )
    if not files:
        raise ValueError("no test file named by the competency checklist exists yet")
    outcomes = run_pytest(root, ["--benchmark-skip", *files])
    results = TestResults(
        date=datetime.date.today().isoformat(),
        machine=machine(),
        commit=_commit(root),
        outcomes=outcomes,
    )
    path = root / RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(results.__dict__, indent=1, sort_keys=True) + "\n")
    temporary.replace(path)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--show", action="store_true", help="print the stored run only")
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parents[2]
    results = load(root) if args.show else run(root)
    if results is None:
        print("no stored run yet: python -m tools.literate.test_results")
        return
    curriculum = learning_path.load(root / "annotated/curriculum.toml")
    print(f"stored run of {results.date} on {results.machine} at {results.commit}")
    for group in curriculum.competencies:
        for item in group.items:
            marks = [f"{ref}: {results.status(ref) or 'not run'}" for ref in item.tests]
            print(f"- {item.text}: {'; '.join(marks) or 'no tests named'}")


if __name__ == "__main__":
    main()
