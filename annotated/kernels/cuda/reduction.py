r"""The driver of the CUDA C lesson `annotated/kernels/reduction.cu`: Harris's seven
reduction kernels and a warp-shuffle one as Python functions summing torch CUDA
tensors, checked against `torch.sum` and measured against a device-to-device copy.

Run `python -m annotated.kernels.cuda.reduction`: on a GPU it checks every kernel
against a float64 sum and prints `gpu_report()` (each kernel's GB/s on $2^{27}$ floats
as a fraction of a copy's); on a CPU it compiles the lesson for `sm_90` if `nvcc` is
installed and says that running the kernels needs a GPU.
"""

import argparse
import ctypes
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from annotated.data import integer, torch_device
from annotated.kernels.cuda import (
    check_error,
    compile_without_gpu,
    copy_bandwidth,
    launcher,
    load,
)

SOURCE = Path(__file__).resolve().parents[1] / "reduction.cu"
# Every launcher is `int launch(const float *input, float *output, float *workspace,
# int n, cudaStream_t stream)`; the pointers are device addresses.
ARGTYPES = [ctypes.c_void_p] * 3 + [ctypes.c_int, ctypes.c_void_p]

# Harris's order; the value is the launcher in reduction.cu.
KERNELS = {
    "interleaved_divergent": "reduce_interleaved_divergent_launch",
    "interleaved_strided": "reduce_interleaved_strided_launch",
    "sequential": "reduce_sequential_launch",
    "first_add": "reduce_first_add_launch",
    "unrolled_warp": "reduce_unrolled_warp_launch",
    "complete_unroll": "reduce_complete_unroll_launch",
    "many_per_thread": "reduce_many_per_thread_launch",
    "shuffle": "reduce_shuffle_launch",
}


def sum_reference(x: Tensor) -> Tensor:
    """The same operation in plain PyTorch."""
    return x.sum()


def check_input(x: object, kernel: str) -> None:
    """Raise `TypeError`/`ValueError` naming the argument unless `kernel` can read `x`.
    The device is checked last, so that every other check can be tried on the CPU."""
    if kernel not in KERNELS:
        raise ValueError(
            f"reduce_sum: kernel must be one of {list(KERNELS)}, got {kernel!r}"
        )
    if not isinstance(x, Tensor):
        raise TypeError(f"reduce_sum: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"reduce_sum: x must be float32, got {x.dtype}")
    if not x.is_contiguous():
        raise ValueError(
            f"reduce_sum: x must be contiguous (the kernels read it as flat memory), "
            f"got strides {x.stride()}: pass x.contiguous()"
        )
    if x.numel() >= 2**31:
        raise ValueError(
            f"reduce_sum: x has {x.numel()} elements; the kernels count "
            "with 32-bit ints, so at most 2**31 - 1"
        )
    if kernel == "shuffle" and x.data_ptr() % 16:
        raise ValueError(
            "reduce_sum: kernel 'shuffle' loads float4s, so x's first "
            "element must be 16-byte aligned; pass x.clone()"
        )
    if x.device.type != "cuda":
        raise ValueError(f"reduce_sum: x must be a CUDA tensor, got {x.device}")


def reduce_sum(x: Tensor, kernel: str = "shuffle") -> Tensor:
    """The sum of all of float32 `x`'s elements, a 0-d tensor, by the lesson's kernel
    `kernel` (see `KERNELS`), on the current CUDA stream."""
    check_input(x, kernel)
    library = load(SOURCE)
    workspace_floats = library.reduce_workspace_floats
    workspace_floats.argtypes, workspace_floats.restype = [ctypes.c_int], ctypes.c_int
    n = x.numel()
    output = torch.empty((), device=x.device, dtype=torch.float32)
    workspace = torch.empty(workspace_floats(n), device=x.device, dtype=torch.float32)
    launch = launcher(library, KERNELS[kernel], ARGTYPES)
    with torch.cuda.device(x.device):
        stream = torch.cuda.current_stream().cuda_stream
        code = launch(x.data_ptr(), output.data_ptr(), workspace.data_ptr(), n, stream)
    check_error(library, code, f"reduce_sum kernel {kernel!r}")
    return output


def gpu_report(n: int = 2**27, kernels: tuple[str, ...] = tuple(KERNELS)) -> dict:
    """Each kernel's time, GB/s (the 4n bytes it reads) and fraction of a copy's
    bandwidth summing `n` float32 numbers, beside `torch.sum`'s, and its relative
    error against a float64 sum.

    Times are medians of `triton.testing.do_bench`, which clears the L2 cache before
    every run."""
    if not torch.cuda.is_available():
        raise RuntimeError("gpu_report needs a CUDA GPU")
    from triton.testing import do_bench

    generator = torch.Generator("cuda").manual_seed(0)
    x = torch.rand(n, device="cuda", generator=generator)  # in [0, 1): no cancellation
    exact = x.double().sum().item()
    read = 4 * n
    copy = copy_bandwidth()
    torch_ms = do_bench(lambda: sum_reference(x), return_mode="median")
    report = {
        "size": n,
        "copy GB/s": copy,
        "torch.sum µs": torch_ms * 1e3,
        "torch.sum GB/s": read / torch_ms / 1e6,
        "torch.sum of copy": read / torch_ms / 1e6 / copy,
    }
    for kernel in tqdm(kernels, desc="reduction kernels", leave=False):
        error = abs(reduce_sum(x, kernel).item() - exact) / exact
        ms = do_bench(lambda: reduce_sum(x, kernel), return_mode="median")
        report[f"{kernel} µs"] = ms * 1e3
        report[f"{kernel} GB/s"] = read / ms / 1e6
        report[f"{kernel} of copy"] = read / ms / 1e6 / copy
        report[f"{kernel} / torch"] = torch_ms / ms  # speed ratio: > 1 is faster
        report[f"{kernel} relative error"] = error
    return report


def check_kernels(device: str, sizes: tuple[int, ...]) -> dict[str, float]:
    """Each kernel's largest error on `sizes`, relative to the float64 sum of |x|."""
    errors = {}
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(n, generator=generator) for n in sizes]
    for kernel in KERNELS:
        errors[kernel] = max(
            abs(reduce_sum(x.to(device), kernel).item() - x.double().sum().item())
            / max(x.double().abs().sum().item(), 1.0)
            for x in inputs
        )
    return errors


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description="Check the reduction kernels against torch.sum and measure their "
        "bandwidth (needs a CUDA GPU; on a CPU, compiles the lesson with nvcc).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--size",
        type=integer(at_least=1),
        default=2**27,
        help="elements of the timed sum",
    )
    parser.add_argument(
        "--check-sizes",
        type=integer(at_least=1),
        nargs="+",
        default=(1, 257, 1000, 123457, 3 * 2**20 + 5),
        help="sizes of the correctness check",
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
    errors = check_kernels(args.device, tuple(args.check_sizes))
    for kernel, error in errors.items():
        print(f"{kernel:>22}: max error / sum|x| vs float64 {error:.2e}")
    report = gpu_report(args.size)
    for key, value in report.items():
        print(
            f"{key:>34}: {value:,.4g}"
            if isinstance(value, float)
            else f"{key:>34}: {value}"
        )
    return {**{f"{kernel} max error": e for kernel, e in errors.items()}, **report}


if __name__ == "__main__":
    main()
