"""Float64 torch.matmul, on a CUDA GPU (to 2e-6·K absolute, the rounding of K float32
multiply-adds): every step of the ladder at sizes that are not multiples of 32 or, for
the tiled steps, at several multiples of their tiles; on a CPU, the lesson compiles with
nvcc for sm_90, its launchers' C signatures match the arguments the driver passes
through ctypes, a launch reports CUDA's error text, and bad arguments raise before any
launch.

Also tested: the loader's errors (a source that does not compile names the file and
nvcc's message; a missing nvcc says what to install), the demo's CPU path, and on a
GPU a small gpu_report.
"""

import ctypes
import re

import pytest
import torch

import annotated.kernels.cuda as cuda_loader
from annotated.kernels.cuda import build, check_error, compile_only, launcher
from annotated.kernels.cuda.sgemm import (
    ARGTYPES,
    SOURCE,
    STEPS,
    gpu_report,
    main,
    sgemm,
)
from tests.kernels.cuda_checks import CUDA, NVCC, launcher_signatures

# ---------------------------------------------------------------- on any machine


@NVCC
def test_lesson_compiles_for_sm_90():
    compile_only(SOURCE, "sm_90")


def test_driver_passes_what_each_launcher_declares():
    signatures = launcher_signatures(SOURCE)
    assert len(STEPS) == 7
    for step in STEPS.values():
        assert signatures[step.launcher] == ARGTYPES, step.launcher
    launched = set(re.findall(r"(\w+)(?:<[^;]*?>)?\s*<<<", SOURCE.read_text()))
    kernels = set(
        re.findall(
            r"__global__ void(?: __launch_bounds__\(\w+\))?\s+(\w+)", SOURCE.read_text()
        )
    )
    assert kernels == launched and len(kernels) == 7  # every kernel has a launcher


@NVCC
def test_built_library_exports_every_launcher_and_reports_cuda_errors():
    library = ctypes.CDLL(str(build(SOURCE, "sm_90")))
    for step in STEPS.values():
        launcher(library, step.launcher, ARGTYPES)  # raises if missing
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: launching null pointers would fault")
    code = launcher(library, STEPS["naive"].launcher, ARGTYPES)(
        1, 1, 1, None, None, None, None
    )
    assert code != 0  # no GPU (or no driver): the launch itself fails
    with pytest.raises(RuntimeError, match=rf"sgemm: CUDA error {code}: \w+"):
        check_error(library, code, "sgemm")


@NVCC
def test_compile_errors_name_the_file_and_nvccs_message(tmp_path):
    broken = tmp_path / "broken.cu"
    broken.write_text("__global__ void k(float *x) { x[0] = undeclared; }\n")
    with pytest.raises(RuntimeError, match=r"nvcc failed to compile .*broken\.cu") as e:
        compile_only(broken)
    assert "undeclared" in str(e.value)  # nvcc's own message, with its line


def test_missing_nvcc_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    monkeypatch.delenv("NVCC", raising=False)
    with pytest.raises(FileNotFoundError, match="install the CUDA toolkit"):
        compile_only(SOURCE)


def test_loader_rejects_what_is_not_a_cu_file(tmp_path):
    with pytest.raises(ValueError, match="source must be an existing .cu file"):
        compile_only(tmp_path / "missing.cu")
    with pytest.raises(ValueError, match="arch must look like 'sm_90'"):
        compile_only(SOURCE, "90")


def test_demo_on_a_cpu_compiles_and_says_it_needs_a_gpu(monkeypatch, capsys):
    compiled = []
    monkeypatch.setattr(cuda_loader, "nvcc_path", lambda: "nvcc")
    monkeypatch.setattr(
        cuda_loader, "compile_only", lambda *args: compiled.append(args)
    )
    result = main(["--device", "cpu"])
    assert result == {"compiled": 1.0, "needs a GPU": 1.0}
    assert compiled == [(SOURCE, "sm_90")]  # the test above runs the real compile
    assert "running its kernels needs a CUDA GPU" in capsys.readouterr().out


def test_demo_without_nvcc_says_so(monkeypatch, capsys):
    def missing():
        raise FileNotFoundError("nvcc, the CUDA compiler, was not found")

    monkeypatch.setattr(cuda_loader, "nvcc_path", missing)
    assert main(["--device", "cpu"]) == {"compiled": 0.0, "needs a GPU": 1.0}
    assert "not compiled: nvcc" in capsys.readouterr().out


def matrix(rows, cols, **kwargs):
    return torch.zeros(rows, cols, **kwargs)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: sgemm(matrix(4, 3), [[0.0]]), TypeError, "b must be a torch.Tensor"),
        (
            lambda: sgemm(matrix(4, 3, dtype=torch.float64), matrix(3, 5)),
            TypeError,
            "a must be float32, got torch.float64",
        ),
        (
            lambda: sgemm(torch.zeros(4), matrix(4, 5)),
            ValueError,
            r"a must be 2-D, got shape \(4,\)",
        ),
        (
            lambda: sgemm(matrix(4, 3), matrix(5, 3).T),
            ValueError,
            r"b must be contiguous .* pass b.contiguous\(\)",
        ),
        (
            lambda: sgemm(matrix(4, 3), matrix(4, 5)),
            ValueError,
            "a is 4×3 but b is 4×5; a's columns must equal b's rows",
        ),
        (
            lambda: sgemm(matrix(128, 16), matrix(16, 130), "warptiling"),
            ValueError,
            "step 'warptiling' has no edge handling and needs N .* multiple of 128, "
            "got 130",
        ),
        (
            lambda: sgemm(matrix(64, 12), matrix(12, 64), "blocktile_1d"),
            ValueError,
            r"needs K \(a's columns\) to be a multiple of 8, got 12",
        ),
        (
            lambda: sgemm(matrix(100, 8), matrix(8, 64), "blocktile_1d"),
            ValueError,
            r"needs M \(a's rows\) to be a multiple of 64, got 100",
        ),
        (
            lambda: sgemm(
                torch.zeros(128 * 8 + 1)[1:].view(128, 8), matrix(8, 128), "vectorized"
            ),
            ValueError,
            "a's first element must be 16-byte aligned",
        ),
        (
            lambda: sgemm(matrix(4, 3), matrix(3, 5), "tiled"),
            ValueError,
            "step must be one of",
        ),
        (
            lambda: sgemm(matrix(4, 3), matrix(3, 5, device="meta"), "naive"),
            ValueError,
            "a is on cpu but b on meta",
        ),
        (
            lambda: sgemm(matrix(128, 16), matrix(16, 128)),
            ValueError,
            "a and b must be CUDA tensors, got cpu",
        ),
    ],
)
def test_bad_arguments_raise_before_any_launch(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------- on a GPU only


def sizes_for(step):
    need = STEPS[step]
    if need.multiple_m == 1:
        return [(1, 1, 1), (33, 65, 47), (300, 200, 100), (17, 1, 129)]
    m, n, k = need.multiple_m, need.multiple_n, need.multiple_k
    return [(m, n, k), (3 * m, n, 5 * k), (m, 2 * n, 64 * k)]


@CUDA
@pytest.mark.parametrize("step", list(STEPS))
def test_cuda_every_step_matches_float64_matmul(step):
    generator = torch.Generator().manual_seed(0)
    for m, n, k in sizes_for(step):
        a = torch.randn(m, k, generator=generator)
        b = torch.randn(k, n, generator=generator)
        ours = sgemm(a.cuda(), b.cuda(), step)
        torch.cuda.synchronize()
        exact = a.double() @ b.double()
        torch.testing.assert_close(
            ours.cpu().double(), exact, rtol=0, atol=2e-6 * k, msg=f"{step} {m, n, k}"
        )


@CUDA
def test_cuda_empty_and_zero_depth_products():
    for step in ("naive", "shared"):
        a, b = torch.zeros(0, 5, device="cuda"), torch.zeros(5, 3, device="cuda")
        assert sgemm(a, b, step).shape == (0, 3)
        a, b = torch.ones(4, 0, device="cuda"), torch.ones(0, 3, device="cuda")
        zero_k = sgemm(a, b, step)  # an empty sum: zeros, as torch.matmul gives
        assert zero_k.shape == (4, 3) and not zero_k.any()
    a, b = torch.ones(128, 0, device="cuda"), torch.ones(0, 128, device="cuda")
    assert not sgemm(a, b, "warptiling").any()


@CUDA
def test_cuda_sgemm_runs_on_the_current_stream():
    a = torch.randn(256, 256, device="cuda")
    b = torch.randn(256, 256, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())  # a and b are ready
    with torch.cuda.stream(stream):
        ours = sgemm(a, b, "vectorized")
        reference = (a.double() @ b.double()).float()
    stream.synchronize()
    torch.testing.assert_close(ours, reference, rtol=0, atol=2e-6 * 256)


@CUDA
def test_cuda_gpu_report_of_a_small_product():
    report = gpu_report(size=1024, steps=("coalesced", "warptiling"))
    assert report["size"] == 1024 and report["cuBLAS GFLOP/s"] > 0
    for step in ("coalesced", "warptiling"):
        assert 0 < report[f"{step} of cuBLAS"] < 5
        assert report[f"{step} max error"] < 2e-6 * 1024
    assert report["coalesced GFLOP/s"] < report["warptiling GFLOP/s"]
