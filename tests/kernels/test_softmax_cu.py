"""Float64 torch.softmax, on a CUDA GPU (to 1e-6 absolute, a few float32 roundings of a
probability): both kernels at row lengths from 1 to 70,001 that straddle the warp
kernel's register sizes (32, 64, ... 1024) and the block's 1024 threads, with scores
scaled up to ±80; on a CPU, the lesson compiles with nvcc for sm_90, its launchers' C
signatures match the arguments the driver passes through ctypes, and bad arguments raise
before any launch.

Also tested: rows holding -inf (masked scores) and all -inf (NaN, as torch gives),
the demo's CPU path, and on a GPU a small gpu_report.
"""

import ctypes
import re

import pytest
import torch

import annotated.kernels.cuda as cuda_loader
from annotated.kernels.cuda import build, compile_only, launcher
from annotated.kernels.cuda.softmax import (
    ARGTYPES,
    KERNELS,
    SOURCE,
    WARP_MAX_COLS,
    gpu_report,
    main,
    softmax,
    softmax_reference,
)
from tests.kernels.cuda_checks import CUDA, NVCC, launcher_signatures

# ---------------------------------------------------------------- on any machine


@NVCC
def test_lesson_compiles_for_sm_90():
    compile_only(SOURCE, "sm_90")


def test_driver_passes_what_each_launcher_declares():
    signatures = launcher_signatures(SOURCE)
    for name in KERNELS.values():
        assert signatures[name] == ARGTYPES, name
    text = SOURCE.read_text()
    launched = set(re.findall(r"(\w+)(?:<\w+>)?\s*<<<", text))
    kernels = set(
        re.findall(r"__global__ void(?: __launch_bounds__\(\w+\))?\s+(\w+)", text)
    )
    assert kernels == launched == {"softmax_warp_per_row", "softmax_block_per_row"}


@NVCC
def test_built_library_exports_both_launchers_and_refuses_long_rows_for_a_warp():
    library = ctypes.CDLL(str(build(SOURCE, "sm_90")))
    warp = launcher(library, KERNELS["warp_per_row"], ARGTYPES)
    launcher(library, KERNELS["block_per_row"], ARGTYPES)
    # decided on the host before any launch, so it runs without a GPU
    assert warp(None, None, 4, WARP_MAX_COLS + 1, None) == 1  # cudaErrorInvalidValue
    assert warp(None, None, 0, 5, None) == 0  # nothing to do: no launch


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
        (lambda: softmax([[1.0, 2.0]]), TypeError, "x must be a torch.Tensor"),
        (
            lambda: softmax(torch.zeros(2, 3, dtype=torch.float16)),
            TypeError,
            "x must be float32, got torch.float16",
        ),
        (
            lambda: softmax(torch.zeros(2, 3, 4)),
            ValueError,
            r"x must be 2-D \[rows, cols\], got shape \(2, 3, 4\)",
        ),
        (
            lambda: softmax(torch.zeros(3, 2).T),
            ValueError,
            r"x must be contiguous .* pass x.contiguous\(\)",
        ),
        (
            lambda: softmax(torch.zeros(2, 1025), "warp_per_row"),
            ValueError,
            "kernel 'warp_per_row' holds a row in one warp's registers, at most 1024 "
            "columns, got 1025",
        ),
        (lambda: softmax(torch.zeros(2, 3), "fast"), ValueError, "kernel must be"),
        (
            lambda: softmax(torch.zeros(2, 1025)),
            ValueError,
            "x must be a CUDA tensor, got cpu",
        ),
    ],
)
def test_bad_arguments_raise_before_any_launch(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------- on a GPU only

SHAPES = [
    (1, 1),
    (3, 31),
    (5, 32),
    (7, 33),
    (4, 63),
    (9, 100),
    (6, 257),
    (5, 513),
    (3, 1000),
    (2, 1024),
    (2, 1025),
    (3, 5000),
    (1, 70001),
    (4099, 77),  # rows not a multiple of the warp kernel's 4 per block
]


@CUDA
@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("scale", [1.0, 80.0])
def test_cuda_both_kernels_match_float64_softmax(kernel, scale):
    generator = torch.Generator().manual_seed(0)
    for rows, cols in SHAPES:
        if kernel == "warp_per_row" and cols > WARP_MAX_COLS:
            continue
        x = scale * torch.randn(rows, cols, generator=generator)
        ours = softmax(x.cuda(), kernel).cpu().double()
        exact = softmax_reference(x.double())
        torch.testing.assert_close(
            ours, exact, rtol=0, atol=1e-6, msg=f"{kernel} {rows}×{cols}"
        )
        assert torch.allclose(ours.sum(1), torch.ones(rows, dtype=torch.float64))


@CUDA
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_cuda_masked_scores_and_fully_masked_rows(kernel):
    x = torch.randn(3, 700, device="cuda")
    x[0, ::2] = float("-inf")  # half masked: those columns get exactly 0
    x[1, :] = float("-inf")  # fully masked: NaN, as in torch.softmax
    ours, reference = softmax(x, kernel), softmax_reference(x)
    assert (ours[0, ::2] == 0).all()
    torch.testing.assert_close(ours[0], reference[0], rtol=0, atol=1e-6)
    assert torch.isnan(ours[1]).all() and torch.isnan(reference[1]).all()
    torch.testing.assert_close(ours[2], reference[2], rtol=0, atol=1e-6)


@CUDA
def test_cuda_empty_inputs():
    assert softmax(torch.zeros(0, 5, device="cuda")).shape == (0, 5)
    assert softmax(torch.zeros(3, 0, device="cuda")).shape == (3, 0)


@CUDA
def test_cuda_gpu_report_of_small_rows():
    report = gpu_report(rows=256, cols=(100, 2000))
    assert report["rows"] == 256 and report["copy GB/s"] > 0
    for n in (100, 2000):
        assert report[f"N={n} ours µs"] > 0 and report[f"N={n} torch µs"] > 0
        assert report[f"N={n} max error"] < 1e-6
    assert (
        "N=100 block_per_row µs" in report and "N=2000 block_per_row µs" not in report
    )
