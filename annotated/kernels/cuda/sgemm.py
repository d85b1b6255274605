r"""The driver of the CUDA C lesson `annotated/kernels/sgemm.cu`: its seven SGEMM
kernels as Python functions on torch CUDA tensors, checked and measured against
cuBLAS (`torch.matmul`).

Run `python -m annotated.kernels.cuda.sgemm`: on a GPU it checks every step against
`torch.matmul` and prints `gpu_report()` (each step's GFLOP/s at $4096^3$ as a fraction
of cuBLAS's); on a CPU it compiles the lesson for `sm_90` if `nvcc` is installed and
says that running the kernels needs a GPU.
"""

import argparse
import ctypes
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from annotated.data import integer, torch_device
from annotated.kernels.cuda import (
    check_error,
    compile_without_gpu,
    launcher,
    load,
)

SOURCE = Path(__file__).resolve().parents[1] / "sgemm.cu"
# Every launcher is `int launch(int M, int N, int K, const float *A, const float *B,
# float *C, cudaStream_t stream)`; the pointers are device addresses.
ARGTYPES = [ctypes.c_int] * 3 + [ctypes.c_void_p] * 4


@dataclass(frozen=True)
class Step:
    """One kernel of the ladder: its launcher and what it requires of the sizes."""

    launcher: str
    multiple_m: int = 1  # M must be a multiple of this (the block tile's rows)
    multiple_n: int = 1  # N: the block tile's columns
    multiple_k: int = 1  # K: the slice of K staged per step
    float4: bool = False  # reads and writes float4: pointers 16-byte aligned


STEPS = {
    "naive": Step("sgemm_naive_launch"),
    "coalesced": Step("sgemm_coalesced_launch"),
    "shared": Step("sgemm_shared_launch"),
    "blocktile_1d": Step("sgemm_blocktile_1d_launch", 64, 64, 8),
    "blocktile_2d": Step("sgemm_blocktile_2d_launch", 128, 128, 8),
    "vectorized": Step("sgemm_vectorized_launch", 128, 128, 8, float4=True),
    "warptiling": Step("sgemm_warptiling_launch", 128, 128, 16, float4=True),
}


def matmul_reference(a: Tensor, b: Tensor) -> Tensor:
    """The same operation in plain PyTorch: `a @ b`, cuBLAS's SGEMM on a GPU (in full
    float32 only with `torch.backends.cuda.matmul.allow_tf32 = False`)."""
    return a @ b


def check_operands(a: object, b: object, step: str) -> None:
    """Raise `TypeError`/`ValueError` naming the argument unless `a` `[M, K]` and `b`
    `[K, N]` are what `step`'s kernel can read. The device is checked last, so that
    every other check can be tried on CPU tensors."""
    if step not in STEPS:
        raise ValueError(f"sgemm: step must be one of {list(STEPS)}, got {step!r}")
    for name, value in (("a", a), ("b", b)):
        if not isinstance(value, Tensor):
            raise TypeError(
                f"sgemm: {name} must be a torch.Tensor, got {type(value).__name__}"
            )
        if value.dtype != torch.float32:
            raise TypeError(f"sgemm: {name} must be float32, got {value.dtype}")
        if value.ndim != 2:
            raise ValueError(
                f"sgemm: {name} must be 2-D, got shape {tuple(value.shape)}"
            )
        if not value.is_contiguous():
            raise ValueError(
                f"sgemm: {name} must be contiguous (row-major), got strides "
                f"{value.stride()}: pass {name}.contiguous()"
            )
        if value.numel() >= 2**31:
            raise ValueError(
                f"sgemm: {name} has {value.numel()} elements; the kernels "
                "index with 32-bit ints, so at most 2**31 - 1"
            )
    (m, k), (k_b, n) = a.shape, b.shape
    if k != k_b:
        raise ValueError(
            f"sgemm: a is {m}×{k} but b is {k_b}×{n}; a's columns must equal b's rows"
        )
    if m * n >= 2**31:
        raise ValueError(f"sgemm: the output has {m * n} elements; at most 2**31 - 1")
    need = STEPS[step]
    for size, label, multiple in (
        (m, "M (a's rows)", need.multiple_m),
        (n, "N (b's columns)", need.multiple_n),
        (k, "K (a's columns)", need.multiple_k),
    ):
        if size % multiple:
            raise ValueError(
                f"sgemm: step {step!r} has no edge handling and needs {label} to be a "
                f"multiple of {multiple}, got {size}; use 'naive', 'coalesced' or "
                "'shared' for any size"
            )
    if need.float4:
        for name, value in (("a", a), ("b", b)):
            if value.data_ptr() % 16:
                raise ValueError(
                    f"sgemm: step {step!r} loads float4s, so {name}'s "
                    "first element must be 16-byte aligned; pass "
                    f"{name}.clone()"
                )
    if a.device != b.device:
        raise ValueError(f"sgemm: a is on {a.device} but b on {b.device}")
    if a.device.type != "cuda":
        raise ValueError(f"sgemm: a and b must be CUDA tensors, got {a.device}")


def sgemm(a: Tensor, b: Tensor, step: str = "warptiling") -> Tensor:
    """`a @ b` for float32 `a` `[M, K]` and `b` `[K, N]` by the lesson's kernel `step`
    (see `STEPS`), on the current CUDA stream."""
    check_operands(a, b, step)
    (m, k), n = a.shape, b.shape[1]
    c = torch.empty(m, n, device=a.device, dtype=torch.float32)
    if c.numel() == 0:
        return c
    if k == 0:
        return c.zero_()
    library = load(SOURCE)
    launch = launcher(library, STEPS[step].launcher, ARGTYPES)
    with torch.cuda.device(a.device):
        stream = torch.cuda.current_stream().cuda_stream
        code = launch(m, n, k, a.data_ptr(), b.data_ptr(), c.data_ptr(), stream)
    check_error(library, code, f"sgemm step {step!r}")
    return c


def gpu_report(size: int = 4096, steps: tuple[str, ...] = tuple(STEPS)) -> dict:
    """Each step's time and GFLOP/s on `size`³ float32 as a fraction of cuBLAS's
    (`torch.matmul` with TF32 off), and its largest difference from cuBLAS's result.

    Times are medians of `triton.testing.do_bench`, which clears the L2 cache before
    every run."""
    if not torch.cuda.is_available():
        raise RuntimeError("gpu_report needs a CUDA GPU")
    from triton.testing import do_bench

    generator = torch.Generator("cuda").manual_seed(0)
    a = torch.randn(size, size, device="cuda", generator=generator)
    b = torch.randn(size, size, device="cuda", generator=generator)
    flops = 2 * size**3
    # By default PyTorch lets cuBLAS run float32 products on tensor cores in TF32 (a
    # 10-bit mantissa), several times faster and less exact. The kernels here do full
    # float32 arithmetic, so cuBLAS must too for the comparison to mean anything.
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        reference = matmul_reference(a, b)
        cublas_ms = do_bench(lambda: matmul_reference(a, b), return_mode="median")
        report = {
            "size": size,
            "cuBLAS µs": cublas_ms * 1e3,
            "cuBLAS GFLOP/s": flops / cublas_ms / 1e6,
        }
        for step in tqdm(steps, desc="sgemm steps", leave=False):
            error = (sgemm(a, b, step) - reference).abs().max().item()
            ms = do_bench(lambda: sgemm(a, b, step), return_mode="median")
            report[f"{step} µs"] = ms * 1e3
            report[f"{step} GFLOP/s"] = flops / ms / 1e6
            report[f"{step} of cuBLAS"] = cublas_ms / ms
            report[f"{step} max error"] = error
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return report


def check_steps(device: str, sizes: tuple[int, int, int]) -> dict[str, float]:
    """Each step's largest error against float64 `torch.matmul` on `sizes` rounded up
    to the step's multiples."""
    errors = {}
    generator = torch.Generator().manual_seed(0)
    for step, need in STEPS.items():
        m, n, k = (
            -(-size // multiple) * multiple
            for size, multiple in zip(
                sizes, (need.multiple_m, need.multiple_n, need.multiple_k)
            )
        )
        a = torch.randn(m, k, generator=generator)
        b = torch.randn(k, n, generator=generator)
        ours = sgemm(a.to(device), b.to(device), step).cpu().double()
        errors[step] = (ours - a.double() @ b.double()).abs().max().item()
    return errors


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description="Check the SGEMM ladder against torch.matmul and time it against "
        "cuBLAS (needs a CUDA GPU; on a CPU, compiles the lesson with nvcc).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--size",
        type=integer(at_least=1),
        default=4096,
        help="M = N = K of the timed product",
    )
    parser.add_argument(
        "--check-sizes",
        type=integer(at_least=1),
        nargs=3,
        default=(300, 200, 100),
        metavar=("M", "N", "K"),
        help="the correctness check's sizes (rounded up for the tiled steps)",
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cuda to run the kernels; cpu only compiles them",
    )
    args = parser.parse_args(argv)
    if not args.device.startswith("cuda"):
        return compile_without_gpu(SOURCE)
    errors = check_steps(args.device, tuple(args.check_sizes))
    for step, error in errors.items():
        print(f"{step:>13}: max error vs float64 torch.matmul {error:.2e}")
    report = gpu_report(args.size)
    for key, value in report.items():
        print(
            f"{key:>28}: {value:,.4g}"
            if isinstance(value, float)
            else f"{key:>28}: {value}"
        )
    return {**{f"{step} max error": e for step, e in errors.items()}, **report}


if __name__ == "__main__":
    main()
