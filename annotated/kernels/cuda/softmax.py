r"""The driver of the CUDA C lesson `annotated/kernels/softmax.cu`: its warp-per-row
and block-per-row softmax kernels as Python functions on torch CUDA tensors, checked
against `torch.softmax` and measured against a copy and against PyTorch's own kernel.

Run `python -m annotated.kernels.cuda.softmax`: on a GPU it checks both kernels against
`torch.softmax` in float64 and prints `gpu_report()` ($4096 \times N$ float32 for a few
$N$); on a CPU it compiles the lesson for `sm_90` if `nvcc` is installed and says that
running the kernels needs a GPU.
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

SOURCE = Path(__file__).resolve().parents[1] / "softmax.cu"
KERNELS = {
    "warp_per_row": "softmax_warp_per_row_launch",
    "block_per_row": "softmax_block_per_row_launch",
}
WARP_MAX_COLS = 1024  # 32 lanes × 32 registers
# Both launchers are `int launch(const float *input, float *output, int rows, int cols,
# cudaStream_t stream)`; the pointers are device addresses.
ARGTYPES = [ctypes.c_void_p] * 2 + [ctypes.c_int] * 2 + [ctypes.c_void_p]


def softmax_reference(x: Tensor) -> Tensor:
    """The same operation in plain PyTorch: softmax over the last dimension."""
    return torch.softmax(x, dim=-1)


def pick_kernel(cols: int, kernel: str) -> str:
    """`kernel`, or for "auto" the warp kernel when a row fits in a warp's registers."""
    if kernel == "auto":
        return "warp_per_row" if cols <= WARP_MAX_COLS else "block_per_row"
    return kernel


def check_input(x: object, kernel: str) -> None:
    """Raise `TypeError`/`ValueError` naming the argument unless `kernel` can read `x`
    `[rows, cols]`. The device is checked last, so every other check runs on a CPU."""
    if kernel not in (*KERNELS, "auto"):
        raise ValueError(
            f"softmax: kernel must be 'auto' or one of {list(KERNELS)}, got {kernel!r}"
        )
    if not isinstance(x, Tensor):
        raise TypeError(f"softmax: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"softmax: x must be float32, got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(
            f"softmax: x must be 2-D [rows, cols], got shape {tuple(x.shape)}"
        )
    if not x.is_contiguous():
        raise ValueError(
            f"softmax: x must be contiguous (each row read as flat memory), got "
            f"strides {x.stride()}: pass x.contiguous()"
        )
    rows, cols = x.shape
    if rows >= 2**31 or cols >= 2**31:
        raise ValueError(f"softmax: x is {rows}×{cols}; each must be below 2**31")
    if pick_kernel(cols, kernel) == "warp_per_row" and cols > WARP_MAX_COLS:
        raise ValueError(
            f"softmax: kernel 'warp_per_row' holds a row in one warp's registers, at "
            f"most {WARP_MAX_COLS} columns, got {cols}; use 'block_per_row' or 'auto'"
        )
    if x.device.type != "cuda":
        raise ValueError(f"softmax: x must be a CUDA tensor, got {x.device}")


def softmax(x: Tensor, kernel: str = "auto") -> Tensor:
    """Softmax over the last dimension of float32 `x` `[rows, cols]` by the lesson's
    `kernel` ("warp_per_row", "block_per_row", or "auto": the warp kernel up to 1024
    columns), on the current CUDA stream."""
    check_input(x, kernel)
    kernel = pick_kernel(x.shape[1], kernel)
    output = torch.empty_like(x)
    if x.numel() == 0:
        return output
    library = load(SOURCE)
    launch = launcher(library, KERNELS[kernel], ARGTYPES)
    with torch.cuda.device(x.device):
        stream = torch.cuda.current_stream().cuda_stream
        code = launch(x.data_ptr(), output.data_ptr(), *x.shape, stream)
    check_error(library, code, f"softmax kernel {kernel!r}")
    return output


def gpu_report(
    rows: int = 4096, cols: tuple[int, ...] = (256, 1024, 4096, 16384)
) -> dict:
    """For each row length N: our kernel's time (the warp kernel up to 1024 columns,
    else the block kernel; up to 1024 also the block kernel alone), its GB/s counting
    one read and one write of the matrix, as a fraction of a copy's bandwidth, and
    beside `torch.softmax`'s time; "ours / torch" is the speed ratio, > 1 faster.

    Times are medians of `triton.testing.do_bench`, which clears the L2 cache before
    every run."""
    if not torch.cuda.is_available():
        raise RuntimeError("gpu_report needs a CUDA GPU")
    from triton.testing import do_bench

    copy = copy_bandwidth()
    report = {"rows": rows, "copy GB/s": copy}
    generator = torch.Generator("cuda").manual_seed(0)
    for n in tqdm(cols, desc="softmax sizes", leave=False):
        x = torch.randn(rows, n, device="cuda", generator=generator)
        moved = 2 * x.nbytes  # read once, write once
        torch_ms = do_bench(lambda: softmax_reference(x), return_mode="median")
        ours_ms = do_bench(lambda: softmax(x), return_mode="median")
        error = (softmax(x) - softmax_reference(x)).abs().max().item()
        report[f"N={n} ours µs"] = ours_ms * 1e3
        report[f"N={n} torch µs"] = torch_ms * 1e3
        report[f"N={n} ours GB/s"] = moved / ours_ms / 1e6
        report[f"N={n} ours of copy"] = moved / ours_ms / 1e6 / copy
        report[f"N={n} torch of copy"] = moved / torch_ms / 1e6 / copy
        report[f"N={n} ours / torch"] = torch_ms / ours_ms
        report[f"N={n} max error"] = error
        if n <= WARP_MAX_COLS:
            block_ms = do_bench(
                lambda: softmax(x, "block_per_row"), return_mode="median"
            )
            report[f"N={n} block_per_row µs"] = block_ms * 1e3
    return report


def check_kernels(device: str, shapes: list[tuple[int, int]]) -> dict[str, float]:
    """Each kernel's largest error against float64 `torch.softmax` on `shapes` (the
    warp kernel only where a row fits)."""
    errors = {kernel: 0.0 for kernel in KERNELS}
    generator = torch.Generator().manual_seed(0)
    for rows, cols in shapes:
        x = 3 * torch.randn(rows, cols, generator=generator)
        exact = softmax_reference(x.double())
        for kernel in KERNELS:
            if kernel == "warp_per_row" and cols > WARP_MAX_COLS:
                continue
            ours = softmax(x.to(device), kernel).cpu().double()
            errors[kernel] = max(errors[kernel], (ours - exact).abs().max().item())
    return errors


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description="Check the softmax kernels against torch.softmax and measure their "
        "bandwidth (needs a CUDA GPU; on a CPU, compiles the lesson with nvcc).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--rows", type=integer(at_least=1), default=4096, help="rows of the timed input"
    )
    parser.add_argument(
        "--cols",
        type=integer(at_least=1),
        nargs="+",
        default=(256, 1024, 4096, 16384),
        help="row lengths N of the timed inputs",
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
    shapes = [(1, 1), (3, 31), (7, 33), (5, 1000), (2, 1025), (3, 5000), (1, 70001)]
    errors = check_kernels(args.device, shapes)
    for kernel, error in errors.items():
        print(f"{kernel:>14}: max error vs float64 torch.softmax {error:.2e}")
    report = gpu_report(args.rows, tuple(args.cols))
    for key, value in report.items():
        print(
            f"{key:>24}: {value:,.4g}"
            if isinstance(value, float)
            else f"{key:>24}: {value}"
        )
    return {**{f"{kernel} max error": e for kernel, e in errors.items()}, **report}


if __name__ == "__main__":
    main()
