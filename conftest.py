"""Settings shared by every test, in the one place pytest loads wherever it starts:
Triton's CPU interpreter and quiet plotting, hypothesis budgets, benchmarks that run
once as plain tests unless `--benchmark-only` asks for measurements, random states and
torch's thread count, and the exercise mode's `--lesson` and `--worksheet`.

They live at the root, not in tests/, because of how pytest starts. In
`pytest --lesson annotated/foundations/matrix.py` it reads the lesson's path as a
place to collect before it knows the option, and loads the conftest files on that
path's way up: this one, never tests/conftest.py, which would then define the option
too late ("unrecognized arguments: --lesson")."""

import os
import traceback
from pathlib import Path

# Triton reads this when a kernel is decorated, so it must be set before any test module
# imports one, and before a worksheet runs: its interpreter on a CPU, the compiler where
# a GPU can run the kernels.
if "TRITON_INTERPRET" not in os.environ:
    import torch

    os.environ["TRITON_INTERPRET"] = "0" if torch.cuda.is_available() else "1"
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
from hypothesis import HealthCheck, settings

# CI runs the whole suite on 2 cores: fewer, deadline-free examples there, drawn from
# a seed fixed by each test's name, so that a run passes or fails the same way again; a
# developer's machine draws more, and fresh ones each run.
settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(
    "ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev")
)


def pytest_addoption(parser):
    group = parser.getgroup("worksheet", "exercise mode: grade a lesson's worksheet")
    group.addoption(
        "--lesson",
        help="run only this lesson's tests: annotated/<area>/<topic>.py",
    )
    group.addoption(
        "--worksheet",
        help="a file the tests import in place of --lesson's module: your solution",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # A plain `pytest` runs each benchmark body once, as a test;
    # `pytest --benchmark-only` measures.
    if not config.getoption("benchmark_only", default=False):
        config.option.benchmark_disable = True
    lesson, worksheet = config.getoption("lesson"), config.getoption("worksheet")
    if worksheet and not lesson:
        raise pytest.UsageError("--worksheet needs --lesson: the lesson it replaces")
    if lesson:
        from tools.literate.files import discover

        root = Path(__file__).resolve().parent
        here = Path(config.invocation_params.dir)  # paths are as typed, from here
        wanted = (here / lesson).resolve()
        found = [
            file
            for file in discover(root)
            if file.language == "python" and file.path.resolve() == wanted
        ]
        if not found:
            raise pytest.UsageError(
                f"--lesson: no Python lesson at {lesson} (a lesson is "
                "annotated/<area>/<topic>.py)"
            )
        file = found[0]
        config.args[:] = [str(root / file.test)]
        if worksheet:
            install_worksheet(file.module, here / worksheet, worksheet)


def install_worksheet(module: str, path: Path, typed: str) -> None:
    """`worksheet.install`, with what goes wrong in a learner's file said in a line:
    a missing file, or a line Python cannot read or run on import."""
    from tools.literate.worksheet import install

    if not path.is_file():
        raise pytest.UsageError(f"--worksheet: no file {typed}")
    path = path.resolve()
    try:
        install(module, path)
    except SyntaxError as error:
        raise pytest.UsageError(
            f"--worksheet: {typed}:{error.lineno}: {error.msg}"
        ) from None
    except Exception as error:
        frames = [
            f
            for f in traceback.extract_tb(error.__traceback__)
            if f.filename == str(path)
        ]
        where = f":{frames[-1].lineno}" if frames else ""
        raise pytest.UsageError(
            f"--worksheet: importing {typed}{where} raised {type(error).__name__}: "
            f"{error}"
        ) from None


def _seed(name: str) -> None:
    import random
    import zlib

    import numpy as np
    import torch

    seed = zlib.crc32(name.encode("utf-8"))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# CI spreads the test files over workers in no fixed order (pytest-xdist), so the random
# state a test would inherit from the tests before it changes from run to run. Each
# module, then each test, starts instead from a state fixed by its name: a test that
# draws without a seed of its own draws the same numbers in every run, wherever it runs.
# (Autouse fixtures come first within their scope, so the module's is seeded before
# the module's other fixtures are built.)
@pytest.fixture(scope="module", autouse=True)
def _seed_each_module(request):
    _seed(request.node.nodeid)


@pytest.fixture(autouse=True)
def _seed_each_test(request):
    _seed(request.node.nodeid)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A demo run by a test may set torch's thread count for its process (`--threads`);
    put it back, so that later tests run with the count they would have had alone."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_thread():
    """One torch CPU thread for the whole module that asks for it, with
    `pytestmark = pytest.mark.usefixtures("one_thread")`: its tensors are small, so a
    second thread only adds hand-offs, and its benchmarks time one thread, as its
    lesson's demo and prose do."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
