"""A float64 torch.sum, on a CUDA GPU (to 1e-6 of the sum of |x|, about eight float32
roundings): all eight kernels at sizes from 0 to several million that are not multiples
of the block, over one to four passes; on a CPU, the lesson compiles with nvcc for
sm_90, its launchers' C signatures match the arguments the driver passes through ctypes,
and bad arguments raise before any launch.

Also tested: the demo's CPU path, extreme values (infinities and NaN propagate as in
torch.sum), a tensor on another stream, and on a GPU a small gpu_report.
"""

import ctypes
import re

import pytest
import torch

import annotated.kernels.cuda as cuda_loader
from annotated.kernels.cuda import build, compile_only, launcher
from annotated.kernels.cuda.reduction import (
    ARGTYPES,
    KERNELS,
    SOURCE,
    gpu_report,
    main,
    reduce_sum,
    sum_reference,
)
from tests.kernels.cuda_checks import CUDA, NVCC, launcher_signatures

# ---------------------------------------------------------------- on any machine


@NVCC
def test_lesson_compiles_for_sm_90():
    compile_only(SOURCE, "sm_90")


def test_driver_passes_what_each_launcher_declares():
    signatures = launcher_signatures(SOURCE)
    assert len(KERNELS) == 8
    for name in KERNELS.values():
        assert signatures[name] == ARGTYPES, name
    assert signatures["reduce_workspace_floats"] == [ctypes.c_int]
    text = SOURCE.read_text()
    launched = set(re.findall(r"(\w+)(?:<\w+>)?\s*<<<", text))
    kernels = set(re.findall(r"__global__ void\s+(\w+)", text))
    assert kernels == launched and len(kernels) == 8  # every kernel has a launcher


@NVCC
def test_built_library_exports_every_launcher():
    library = ctypes.CDLL(str(build(SOURCE, "sm_90")))
    for name in KERNELS.values():
        launcher(library, name, ARGTYPES)  # raises if missing
    workspace = library.reduce_workspace_floats
    workspace.argtypes, workspace.restype = [ctypes.c_int], ctypes.c_int
    # room for two passes of partial sums at 256 per block: the host code runs here
    assert [workspace(n) for n in (1, 256, 257, 2**26)] == [2, 2, 4, 2**19]


def test_demo_on_a_cpu_compiles_and_says_it_needs_a_gpu(monkeypatch, capsys):
    compiled = []
    monkeypatch.setattr(cuda_loader, "nvcc_path", lambda: "nvcc")
    monkeypatch.setattr(
        cuda_loader, "compile_only", lambda *args: compiled.append(args)
    )
    result = main(["--device", "cpu"])
    assert result == {"compiled": 1.0, "needs a GPU": 1.0}
    assert compiled == [(SOURCE, "sm_90")]  # the first test runs the real compile
    assert "running its kernels needs a CUDA GPU" in capsys.readouterr().out


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: reduce_sum([1.0, 2.0]), TypeError, "x must be a torch.Tensor"),
        (
            lambda: reduce_sum(torch.zeros(5, dtype=torch.float64)),
            TypeError,
            "x must be float32, got torch.float64",
        ),
        (
            lambda: reduce_sum(torch.zeros(5, dtype=torch.int32)),
            TypeError,
            "x must be float32, got torch.int32",
        ),
        (
            lambda: reduce_sum(torch.zeros(4, 3).T),
            ValueError,
            r"x must be contiguous .* pass x.contiguous\(\)",
        ),
        (
            lambda: reduce_sum(torch.zeros(9)[1:], "shuffle"),
            ValueError,
            "kernel 'shuffle' loads float4s, so x's first element must be 16-byte",
        ),
        (lambda: reduce_sum(torch.zeros(5), "tree"), ValueError, "kernel must be one"),
        (
            lambda: reduce_sum(torch.zeros(9)[1:], "sequential"),
            ValueError,
            "x must be a CUDA tensor, got cpu",
        ),
    ],
)
def test_bad_arguments_raise_before_any_launch(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------- on a GPU only

# 1 pass, 2 passes, a ragged last block, 3 and 4 passes for the first kernels
SIZES = [0, 1, 3, 255, 256, 257, 511, 513, 65537, 3 * 2**20 + 7, 2**24 + 3]


@CUDA
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_cuda_every_kernel_matches_float64_sum(kernel):
    generator = torch.Generator().manual_seed(0)
    for n in SIZES:
        x = torch.randn(n, generator=generator)
        ours = reduce_sum(x.cuda(), kernel).item()
        exact = x.double().sum().item()
        scale = max(x.double().abs().sum().item(), 1.0)
        assert abs(ours - exact) <= 1e-6 * scale, (kernel, n, ours, exact)


@CUDA
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_cuda_infinities_and_nan_propagate_like_torch_sum(kernel):
    x = torch.ones(10_000, device="cuda")
    x[7777] = float("inf")
    assert reduce_sum(x, kernel).item() == float("inf")
    x[123] = float("-inf")
    assert torch.isnan(reduce_sum(x, kernel))
    x[123] = float("nan")
    assert torch.isnan(reduce_sum(x, kernel)) and torch.isnan(sum_reference(x))


@CUDA
def test_cuda_reduce_sum_of_a_matrix_and_on_another_stream():
    x = torch.randn(300, 301, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        ours = reduce_sum(x, "many_per_thread")
    stream.synchronize()
    assert abs(ours.item() - x.double().sum().item()) <= 1e-6 * x.abs().sum().item()


@CUDA
def test_cuda_gpu_report_of_a_small_sum():
    report = gpu_report(n=2**22, kernels=("sequential", "shuffle"))
    assert report["copy GB/s"] > 0 and report["size"] == 2**22
    for kernel in ("sequential", "shuffle"):
        assert 0 < report[f"{kernel} of copy"] < 1.5
        assert report[f"{kernel} relative error"] < 1e-5
    assert report["sequential GB/s"] < report["shuffle GB/s"]
