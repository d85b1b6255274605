r"""
---
title: A fused softmax kernel in Triton
summary: >-
  Row softmax as one Triton program per row that reads each element once and writes it
  once, numerically stable, with a fused backward kernel behind an autograd Function:
  checked against torch.softmax values and gradients, its memory traffic counted
  against eager PyTorch's eight passes, and on a GPU measured against a copy's
  bandwidth and torch.softmax.
time: 8 s
references:
  - key: tillet2019triton
    authors: [Philippe Tillet, H. T. Kung, David Cox]
    title: "Triton: An Intermediate Language and Compiler for Tiled Neural Network
      Computations"
    year: 2019
    venue: MAPL 2019
    url: https://doi.org/10.1145/3315508.3329973
  - key: williams2009roofline
    authors: [Samuel Williams, Andrew Waterman, David Patterson]
    title: "Roofline: An Insightful Visual Performance Model for Multicore
      Architectures"
    year: 2009
    venue: Communications of the ACM 52(4)
    url: https://doi.org/10.1145/1498765.1498785
  - key: milakov2018online
    authors: [Maxim Milakov, Natalia Gimelshein]
    title: Online normalizer calculation for softmax
    year: 2018
    venue: arXiv preprint
    arxiv: "1805.02867"
  - key: triton2024softmax
    authors: [The Triton authors]
    title: "Tutorials: Fused Softmax"
    year: 2024
    venue: Triton documentation
    url: https://triton-lang.org/main/getting-started/tutorials/02-fused-softmax.html
worksheet:
  - region: softmax_forward_kernel
    hint: >-
      One program per row: load the row's BLOCK lanes (masked lanes read -inf) in ACC
      precision, subtract the row's maximum, exponentiate, divide by the sum of the
      exponentials, and store the result in y's dtype under the same mask.
    tests:
      - test_masked_lanes_touch_nothing_past_a_row
      - test_matches_torch_softmax_in_float64
      - test_scores_of_1e4_do_not_overflow
  - region: softmax_backward_kernel
    hint: >-
      One program per row: load y and grad_y (masked lanes read 0) in ACC precision,
      reduce their dot product to a scalar, and store y * (grad_y - dot) as grad_x.
    tests: [test_backward_kernel_alone_matches_the_formula, test_passes_gradcheck]
---

Softmax turns each row of a matrix of scores into probabilities, and it sits in every
attention layer and every classifier. Its arithmetic is a handful of operations per
element; its cost is memory traffic. Written as five PyTorch operations (a maximum, a
subtraction, an exponential, a sum, a division) it launches five kernels, and
counted on PyTorch's dispatcher they read the matrix five times and write it three
times. One kernel that keeps a row in registers from the moment it is loaded until its
probabilities are stored reads it once and writes it once: a quarter of the traffic,
and on a memory-bound operation, up to four times the speed.

This chapter writes that kernel in Triton [@tillet2019triton], after Triton's own
fused-softmax tutorial [@triton2024softmax], using the programming model of the
[vector add](vector_add.md): one *program* per row, the whole row in one block, the
lanes past its end masked with $-\infty$. It subtracts the row's maximum first so
that no exponent overflows, writes the backward pass as a second fused kernel, wraps
both in a `torch.autograd.Function`, and checks values and gradients against
`torch.softmax` on a CPU in Triton's interpreter. On a GPU `gpu_report` measures its
bandwidth against a plain copy and its speed against `torch.softmax`. Rows too long
for one block need the *online* softmax [@milakov2018online], which the
[FlashAttention lesson](../transformers/flash_attention.md) derives; it is an exercise
here.
"""

import argparse
import os
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from tqdm import tqdm

from annotated.data import integer, torch_device
from annotated.figures import figure, save

# Triton compiles a kernel for the GPU when it is first launched. Without a GPU it can
# run the same kernel in its *interpreter*, which executes each program with NumPy on
# the CPU: slow, but exact enough to test against PyTorch. The switch is the variable
# `TRITON_INTERPRET`, and Triton reads it while it is being imported, so it has to be
# set before `import triton`, and only when there is no GPU to compile for.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

# ## Softmax, stably
#
# For a row $x \in \mathbb{R}^n$, derived in the
# [activations lesson](../networks/activations.md) with its Jacobian,
#
# $$
# y_i = \frac{e^{x_i - m}}{\sum_j e^{x_j - m}}, \qquad m = \max_j x_j .
# $$
#
# Subtracting $m$ changes nothing in exact arithmetic (the factor $e^{-m}$ cancels)
# and everything in floating point: $e^{x}$ overflows float32 above $x \approx 88.7$,
# and a row of scores of $10^4$ would become $\infty / \infty$, NaN. With $m$
# subtracted every exponent is $\le 0$, the largest term is exactly 1, and the sum
# lies between 1 and $n$. A score of $-\infty$, the usual mask, gets probability
# exactly 0; a row that is *all* $-\infty$ has no probabilities to give and comes out
# NaN, in `torch.softmax` and here alike.
#
# ## The eager version, and its traffic
#
# The plain PyTorch version of the same operation, over the last axis: the reference
# in the tests, and the traffic to beat. Each line is one kernel, and each kernel
# reads its inputs from the GPU's memory and writes its result back. For an
# $M \times N$ matrix: the maximum reads $MN$ elements; the subtraction reads $MN$ and
# writes $MN$; the exponential reads and writes $MN$; the sum reads $MN$; the division
# reads and writes $MN$. That is five reads and three writes of the matrix, plus a few
# $M$-element columns: $8MN$ elements moved, where the operation needs $2MN$.


def softmax_reference(x: Tensor) -> Tensor:
    """Softmax over the last axis in five eager PyTorch operations."""
    row_max = x.amax(dim=-1, keepdim=True)  # [..., 1]
    shifted = x - row_max  # [..., n]
    numerator = torch.exp(shifted)  # [..., n]
    denominator = numerator.sum(dim=-1, keepdim=True)  # [..., 1]
    return numerator / denominator  # [..., n]


# The backward pass needs only the output. With $\bar y = \partial L / \partial y$
# and $J = \operatorname{diag}(y) - y y^\top$ the softmax's Jacobian,
#
# $$
# \bar x = J \bar y = y \odot \Bigl(\bar y - \sum_j \bar y_j y_j\Bigr),
# $$
#
# one dot product per row and an elementwise update. Eager, that is four kernels: the
# product $\bar y \odot y$ (two reads, a write), its row sum (a read), the subtraction
# (a read, a write) and the final product (two reads, a write): $9MN$ elements moved,
# against the $3MN$ (read $y$ and $\bar y$, write $\bar x$) that one fused kernel
# needs.


def softmax_backward_reference(y: Tensor, grad_y: Tensor) -> Tensor:
    r"""$\bar x = y \odot (\bar y - \langle \bar y, y \rangle)$ over the last axis, in
    eager PyTorch."""
    dot = (grad_y * y).sum(dim=-1, keepdim=True)  # [..., 1]
    return y * (grad_y - dot)  # [..., n]


# ## Counting the bytes on the dispatcher
#
# Every PyTorch operator passes through the dispatcher as an ATen call such as
# `aten.exp.default`. A `TorchDispatchMode` sees each call with its arguments and
# results, so it can add up what each kernel reads (its tensor arguments) and writes
# (its tensor results); views launch nothing and are skipped. On the `meta` device
# tensors have shapes and no data, so a $4096 \times 4096$ count computes nothing.
# The count is the traffic to memory when no operand is still in the cache from the
# kernel before: true once the matrix outgrows the L2 cache (50 MB on an H200; a
# $4096 \times 4096$ float32 matrix is 64 MiB). The later kernel chapters (layer norm,
# the [fused LSTM](fused_lstm.md), FlashAttention) import this counter.


class ByteCounter(TorchDispatchMode):
    """Counts the kernels ATen launches and the bytes they read and write."""

    def __init__(self):
        super().__init__()
        self.kernels = 0
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            tensors = [
                leaf
                for leaf in tree_leaves((args, kwargs, out))
                if isinstance(leaf, Tensor)
            ]
            self.kernels += 1
            self.bytes += sum(t.numel() * t.element_size() for t in tensors)
        return out


def traffic(rows: int, cols: int, dtype: torch.dtype = torch.float32) -> dict[str, int]:
    """Kernels and bytes of the eager softmax, forward and backward, counted on the
    meta device, and of the fused kernels, from what they read and write."""
    x = torch.empty(rows, cols, dtype=dtype, device="meta")
    with ByteCounter() as forward:
        y = softmax_reference(x)
    grad_y = torch.empty_like(y)
    with ByteCounter() as backward:
        softmax_backward_reference(y, grad_y)
    matrix = rows * cols * dtype.itemsize
    return {
        "eager forward bytes": forward.bytes,
        "eager forward kernels": forward.kernels,
        "eager backward bytes": backward.bytes,
        "eager backward kernels": backward.kernels,
        "fused forward bytes": 2 * matrix,  # read x, write y
        "fused backward bytes": 3 * matrix,  # read y and grad_y, write grad_x
    }


# ## The forward kernel
#
# One program per row: program $r$ asks `tl.program_id(0)` for its row, and the row
# starts `r · n_cols` elements after the first (the tensor is contiguous, so rows are
# back to back). `tl.arange(0, BLOCK)` makes the column offsets. `BLOCK` must be a
# power of two, so it is the next one at or above `n_cols`, and the lanes past the
# row's end are masked: their loads read nothing and return `other`. Here `other` is
# $-\infty$, chosen so that the masked lanes cannot change the result: they never win
# the maximum, and $e^{-\infty - m} = 0$ adds nothing to the sum.
#
# From the load to the store the row lives in registers: `tl.max` and `tl.sum` reduce
# it across the program's threads (the compiler writes the warp shuffles), the
# subtraction, exponential and division happen in place, and only the probabilities
# go back to memory. One read, one write. Arithmetic runs in `ACC`: float32 for
# float16 and bfloat16 inputs, whose 10- and 7-bit mantissas would lose the sum of a
# long row, and float64 for float64. The result is rounded to the output's dtype only
# as it is stored.


@triton.jit
def softmax_forward_kernel(
    x_ptr,  # [rows, n_cols]
    y_ptr,  # [rows, n_cols], written
    n_cols,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)  # [BLOCK]
    mask = cols < n_cols
    offsets = row * n_cols + cols  # [BLOCK]
    x = tl.load(x_ptr + offsets, mask=mask, other=-float("inf")).to(ACC)
    shifted = x - tl.max(x, axis=0)  # every exponent <= 0
    numerator = tl.exp(shifted)  # [BLOCK], 0 in the masked lanes
    denominator = tl.sum(numerator, axis=0)  # a scalar, >= 1
    y = numerator / denominator
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


# ## The backward kernel
#
# The same layout: a program per row loads $y$ and $\bar y$ (masked lanes read 0, so
# they add nothing to the dot product), reduces $\langle \bar y, y \rangle$ in
# registers, and writes $\bar x$. Three passes over the matrix, against eager's nine.


@triton.jit
def softmax_backward_kernel(
    y_ptr,  # [rows, n_cols]
    grad_y_ptr,  # [rows, n_cols]
    grad_x_ptr,  # [rows, n_cols], written
    n_cols,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)  # [BLOCK]
    mask = cols < n_cols
    offsets = row * n_cols + cols  # [BLOCK]
    y = tl.load(y_ptr + offsets, mask=mask, other=0.0).to(ACC)
    grad_y = tl.load(grad_y_ptr + offsets, mask=mask, other=0.0).to(ACC)
    dot = tl.sum(grad_y * y, axis=0)  # a scalar
    grad_x = y * (grad_y - dot)
    tl.store(grad_x_ptr + offsets, grad_x.to(grad_x_ptr.dtype.element_ty), mask=mask)


# ## Launching
#
# The grid is one program per row. A block of `BLOCK` elements is spread over the
# program's warps; giving each thread about eight elements (`BLOCK // 256` warps, at
# least one and at most 16) keeps every thread's share in registers while letting a
# long row use up to 512 threads. The launch argument `num_warps` sets it; the
# interpreter ignores it.
#
# The whole row in one block is the design's limit. A row of 16,384 float32 elements
# is 64 KiB, spread over 512 threads at 32 registers each; much longer and the
# registers spill to memory, and Triton refuses blocks above $2^{20}$ elements at all.
# So `fused_softmax` takes rows of up to $2^{16}$ columns; longer rows want the online
# softmax of the exercises, which streams a row through in pieces.

MAX_COLS = 2**16


def launch(n_cols: int) -> dict[str, int]:
    """The block size and number of warps for rows of `n_cols` elements."""
    block = triton.next_power_of_2(n_cols)
    return {"BLOCK": block, "num_warps": min(max(block // 256, 1), 16)}


def accumulator(dtype: torch.dtype):
    """The Triton type the kernels compute in for tensors of `dtype`."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def softmax_forward(x: Tensor) -> Tensor:
    """Run the forward kernel over the last axis of a checked, non-empty `x`."""
    n_cols = x.shape[-1]
    y = torch.empty_like(x)
    grid = (x.numel() // n_cols,)
    softmax_forward_kernel[grid](
        x, y, n_cols, ACC=accumulator(x.dtype), **launch(n_cols)
    )
    return y


def softmax_backward(y: Tensor, grad_y: Tensor) -> Tensor:
    """Run the backward kernel; `y` and `grad_y` contiguous, of one shape."""
    n_cols = y.shape[-1]
    grad_x = torch.empty_like(y)
    grid = (y.numel() // n_cols,)
    softmax_backward_kernel[grid](
        y, grad_y, grad_x, n_cols, ACC=accumulator(y.dtype), **launch(n_cols)
    )
    return grad_x


# ## The autograd Function
#
# Forward runs the forward kernel and saves its output: the backward formula needs
# $y$, not $x$, so nothing is recomputed. Backward runs the backward kernel on the
# incoming gradient, made contiguous first because autograd hands over whatever layout
# it has (`y.sum()` sends an expanded, stride-0 tensor) and the kernel reads flat
# memory. The backward is a Triton kernel that autograd cannot see into, so it is
# `once_differentiable`: a second derivative raises instead of coming out wrong. The
# [custom-Functions lesson](../systems/custom_functions.md) explains the rest of the
# protocol.


class FusedSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = softmax_forward(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        (y,) = ctx.saved_tensors
        return softmax_backward(y, grad_y.contiguous())


# ## Checking the input
#
# A kernel reads raw memory, so the public function checks everything the kernel
# would otherwise misread, before anything runs: a floating tensor, contiguous (the
# row offsets assume it), rows short enough for one block, few enough elements for
# 32-bit offsets, and a GPU tensor unless the kernels are interpreted. An empty
# tensor launches nothing: `torch.softmax` returns it empty, and so does this.

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_input(function: str, x: object) -> None:
    """Raise unless the kernels can read `x` correctly."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{function}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in DTYPES:
        raise TypeError(
            f"{function}: x must be float16, bfloat16, float32 or float64, got "
            f"{x.dtype}"
        )
    if x.ndim == 0:
        raise ValueError(f"{function}: x must have at least one axis, got a scalar")
    if not x.is_contiguous():
        raise ValueError(
            f"{function}: x must be contiguous (the kernel finds rows by offset), got "
            f"strides {x.stride()}: pass x.contiguous()"
        )
    if x.shape[-1] > MAX_COLS:
        raise ValueError(
            f"{function}: x's last axis has {x.shape[-1]} elements; one block holds a "
            f"row of at most {MAX_COLS} (longer rows need the online softmax)"
        )
    if x.numel() >= 2**31:
        raise ValueError(
            f"{function}: x has {x.numel()} elements; the kernels index with 32-bit "
            "integers, so at most 2**31 - 1"
        )
    if not INTERPRETED and x.device.type != "cuda":
        raise ValueError(
            f"{function}: x is on {x.device}, but the compiled kernels run on a CUDA "
            "GPU (set TRITON_INTERPRET=1 before importing triton to run on the CPU)"
        )


def fused_softmax(x: Tensor) -> Tensor:
    """Softmax over the last axis of `x` by the fused Triton kernels, differentiable;
    the result has `x`'s shape and dtype."""
    check_input("fused_softmax", x)
    if x.numel() == 0:
        return torch.empty_like(x)
    if torch.is_grad_enabled() and x.requires_grad:
        return FusedSoftmax.apply(x)
    return softmax_forward(x)


# ## Measuring on a GPU
#
# `gpu_report` times each version with `triton.testing.do_bench`, which runs a
# function for about 100 ms after a warm-up, clears the L2 cache before every run so
# that each one reads from memory, and here returns the median. It divides the fused
# kernels' bytes ($2MN$ forward, $3MN$ backward, in the input's dtype) by the time,
# for ours and for `torch.softmax` alike, since both read and write at least that,
# and compares the bandwidth with that of a 1 GiB device-to-device copy measured in
# the same call (read and write both counted): the practical ceiling of a kernel that
# only streams memory; this project's target for the fused kernel is 80 % of it. The
# backward is compared with ATen's fused softmax backward,
# `torch._softmax_backward_data`, which autograd calls for `torch.softmax`. The
# shapes are $2^{24}$ elements (64 MiB in float32, beyond the L2 cache) with 1,024 to
# 16,384 columns, and one with 3,000 columns, whose block of 4,096 leaves a quarter of
# the lanes masked. `"ours / torch"` is a speed ratio: above 1, ours is faster.


def copy_bandwidth() -> float:
    """GB/s of a 1 GiB device-to-device copy, read and write both counted."""
    source = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    ms = triton.testing.do_bench(lambda: target.copy_(source), return_mode="median")
    return 2 * source.nbytes / ms / 1e6


def gpu_report(
    shapes: tuple[tuple[int, int], ...] = (
        (4096, 4096),
        (16384, 1024),
        (1024, 16384),
        (4096, 3000),
    ),
    dtype: torch.dtype = torch.float32,
) -> dict[str, float | str]:
    """Times (µs), GB/s and fractions of a copy's bandwidth of the fused kernels,
    `torch.softmax` and the eager version, forward and backward, on the current CUDA
    device."""
    if not torch.cuda.is_available():
        raise RuntimeError("gpu_report needs a CUDA GPU: do_bench times CUDA events")
    if dtype not in DTYPES:
        raise TypeError(f"gpu_report: dtype must be one of {DTYPES}, got {dtype}")
    copy_gbps = copy_bandwidth()
    report = {
        "device": torch.cuda.get_device_name(),
        "dtype": str(dtype).removeprefix("torch."),
        "copy GB/s": copy_gbps,
    }

    def median_ms(function):
        return triton.testing.do_bench(function, return_mode="median")

    for rows, cols in shapes:
        x = torch.randn(rows, cols, device="cuda", dtype=dtype)
        grad_y = torch.randn_like(x)
        y = torch.softmax(x, dim=-1)
        torch.testing.assert_close(fused_softmax(x), y, rtol=1e-2, atol=1e-5)
        times = {
            "ours": median_ms(lambda: fused_softmax(x)),
            "torch": median_ms(lambda: torch.softmax(x, dim=-1)),
            "eager": median_ms(lambda: softmax_reference(x)),
            "backward ours": median_ms(lambda: softmax_backward(y, grad_y)),
            "backward torch": median_ms(
                lambda: torch._softmax_backward_data(grad_y, y, -1, dtype)
            ),
        }
        matrix = rows * cols * dtype.itemsize
        shape = f"{rows}x{cols}"
        for name, ms in times.items():
            moved = (3 if name.startswith("backward") else 2) * matrix
            report[f"{shape} {name} µs"] = ms * 1e3
            report[f"{shape} {name} GB/s"] = moved / ms / 1e6
            report[f"{shape} {name} of copy"] = moved / ms / 1e6 / copy_gbps
        report[f"{shape} ours / torch"] = times["torch"] / times["ours"]
        report[f"{shape} backward ours / torch"] = (
            times["backward torch"] / times["backward ours"]
        )
    return report


# ## The example
#
# A softmax over 6 rows of 37 scores: six programs, blocks of 64, 27 lanes of each
# masked. The dataflow diagram above is declared by `dataflow` below, not traced:
# `torch.fx` cannot look inside a Triton kernel, and the point of the picture is what
# crosses memory: one read and one write of the matrix.


def example():
    """A small example: `fn(*args)` is the fused softmax of a 6 × 37 matrix."""
    generator = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(6, 37, generator=generator)
    return fused_softmax, (x,)


def dataflow(output: Tensor):
    """The matrix, the one kernel launch and the probabilities, with shapes."""
    rows, cols = output.shape
    block = launch(cols)["BLOCK"]
    shape = f"[{rows}, {cols}]"
    nodes = [
        ("x", "x (memory)"),
        ("kernel", f"softmax_forward_kernel\n{rows} programs × BLOCK {block}"),
        ("y", "y (memory)"),
    ]
    edges = [
        ("x", "kernel", f"{shape}, read once"),
        ("kernel", "y", f"{shape}, written once"),
    ]
    return nodes, edges


# ## The demo
#
# On a CPU the kernels run in the interpreter, one program at a time, so the demo
# stays small. It checks values and gradients against `torch.softmax` in float64 on
# the unusual shapes (one column; 1,000 columns in a block of 1,024; a row that is
# $-\infty$ except for one score; scores of $\pm 10^4$), and float16 in and out
# against float32. It counts the traffic of both versions at `--count-size` and draws
# it beside an experiment on why the maximum is subtracted: rows of random scores
# scaled up until a softmax without the shift, $e^{x_i} / \sum_j e^{x_j}$, overflows
# to NaN, while the kernel's rows stay exact. With `--device cuda` the kernels are
# compiled and the demo also prints `gpu_report`.


def check_against_torch(device: str) -> dict[str, float]:
    """Largest differences from `torch.softmax`, values and gradients, in float64 on
    the unusual shapes, and in float16 against float32."""
    generator = torch.Generator().manual_seed(0)
    masked = torch.full((2, 9), -float("inf"), dtype=torch.float64)
    masked[0, 4], masked[1, 0] = 2.0, -3.0  # one live score per row
    cases = [
        torch.randn(4, 1, generator=generator, dtype=torch.float64),
        torch.randn(3, 1000, generator=generator, dtype=torch.float64),
        masked,
        1e4 * torch.randn(5, 37, generator=generator, dtype=torch.float64),
    ]
    value_error = gradient_error = 0.0
    for case in tqdm(cases, desc="checking against torch.softmax", leave=False):
        x = case.to(device).requires_grad_()
        grad_y = torch.randn(case.shape, generator=generator, dtype=torch.float64)
        grad_y = grad_y.to(device)
        ours = fused_softmax(x)
        (ours_grad,) = torch.autograd.grad(ours, x, grad_y)
        theirs = torch.softmax(x, dim=-1)
        (theirs_grad,) = torch.autograd.grad(theirs, x, grad_y)
        value_error = max(value_error, (ours - theirs).abs().max().item())
        gradient_error = max(
            gradient_error, (ours_grad - theirs_grad).abs().max().item()
        )
    half = torch.randn(8, 300, generator=generator).half().to(device)
    wide = torch.softmax(half.float(), dim=-1)
    half_error = (fused_softmax(half).float() - wide).abs().max().item()
    return {
        "max error vs torch.softmax, float64 values": value_error,
        "max error vs torch.softmax, float64 gradients": gradient_error,
        "max error vs torch.softmax, float16 values": half_error,
    }


def overflow_experiment(
    scales: list[float], rows: int, cols: int, device: str
) -> dict[str, list[float]]:
    """Fractions of rows that come out finite and summing to 1, with and without the
    maximum subtracted, for random scores times each scale (float32)."""
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(rows, cols, generator=generator).to(device)
    unshifted, fused = [], []
    for scale in scales:
        x = scale * scores
        naive = torch.exp(x) / torch.exp(x).sum(dim=-1, keepdim=True)
        ours = fused_softmax(x)
        for results, y in ((unshifted, naive), (fused, ours)):
            good = torch.isfinite(y).all(-1) & ((y.sum(-1) - 1).abs() < 1e-5)
            results.append(good.float().mean().item())
    return {"unshifted": unshifted, "fused": fused}


def plot(counted: dict, rows: int, cols: int, overflow: dict, scales, out: Path):
    fig, (bytes_axis, overflow_axis) = figure(panels=2)
    matrix = rows * cols * 4
    positions = torch.arange(2, dtype=torch.float64)
    eager = [counted["eager forward bytes"], counted["eager backward bytes"]]
    fused = [counted["fused forward bytes"], counted["fused backward bytes"]]
    for offset, values, label in ((-0.2, eager, "eager"), (0.2, fused, "fused")):
        passes = [v / matrix for v in values]
        bytes_axis.bar(positions + offset, passes, 0.4, label=label)
        for position, value in zip(positions.tolist(), passes):
            bytes_axis.annotate(
                f"{value:.2f}", (position + offset, value), ha="center", va="bottom"
            )
    bytes_axis.set_xticks(positions.tolist(), ["forward", "backward"])
    bytes_axis.set_ylim(0, 1.25 * max(eager) / matrix)
    bytes_axis.set(
        title="memory traffic, counted",
        ylabel="bytes moved / bytes of the matrix",
    )
    bytes_axis.legend(loc="upper left")
    overflow_axis.plot(
        scales, overflow["unshifted"], "o-", label="$e^{x_i}/\\sum e^{x_j}$"
    )
    overflow_axis.plot(
        scales, overflow["fused"], "s--", label="fused kernel (max shifted)"
    )
    overflow_axis.set(
        xscale="log",
        xlabel="scale of the scores",
        ylabel="fraction of rows finite, summing to 1",
        title="why the maximum is subtracted",
    )
    overflow_axis.set_ylim(-0.05, 1.1)
    overflow_axis.legend(loc="center right")
    save(
        fig,
        out / "softmax.png",
        caption="Left: a count, not a measurement: the bytes each softmax reads and "
        f"writes, in units of one {rows} × {cols} float32 matrix (eager counted on "
        "PyTorch's dispatcher, fused from the kernels' arguments). Right: the "
        "fraction of rows of random float32 scores, multiplied by the scale, whose "
        "softmax is finite and sums to 1, without the maximum subtracted and from "
        "the fused kernel.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description="A fused softmax in Triton: check it against torch.softmax, count "
        "its traffic, and on a GPU measure it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--count-size", default="4096x4096", help="ROWSxCOLS whose traffic is counted"
    )
    parser.add_argument(
        "--overflow-rows",
        type=integer(at_least=1),
        default=64,
        help="rows in the overflow experiment",
    )
    parser.add_argument(
        "--overflow-cols",
        type=integer(at_least=1),
        default=100,
        help="columns in that experiment",
    )
    parser.add_argument(
        "--report-shapes",
        nargs="+",
        default=None,
        help="ROWSxCOLS shapes gpu_report measures (GPU only); omit for its own",
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (cpu runs the kernels in Triton's interpreter)",
    )
    parser.add_argument("--out", default="out/softmax", help="folder for figures")
    args = parser.parse_args(argv)
    out = Path(args.out)

    metrics = check_against_torch(args.device)
    for name, error in metrics.items():
        print(f"{name}: {error:.1e}")

    rows, cols = (int(n) for n in args.count_size.split("x"))
    counted = traffic(rows, cols)
    matrix = rows * cols * 4
    for direction in ("forward", "backward"):
        eager = counted[f"eager {direction} bytes"]
        fused = counted[f"fused {direction} bytes"]
        print(
            f"{direction}, {rows} × {cols} float32: eager "
            f"{counted[f'eager {direction} kernels']} kernels, "
            f"{eager / matrix:.2f} matrices moved; fused 1 kernel, "
            f"{fused / matrix:.0f}; {eager / fused:.1f}× fewer bytes"
        )
        metrics[f"{direction} traffic ratio"] = eager / fused

    scales = [1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 1e4]
    overflow = overflow_experiment(
        scales, args.overflow_rows, args.overflow_cols, args.device
    )
    print(
        "rows finite and summing to 1 at scale 1e4: "
        f"unshifted {overflow['unshifted'][-1]:.0%}, fused {overflow['fused'][-1]:.0%}"
    )
    metrics["unshifted good rows at 1e4"] = overflow["unshifted"][-1]
    metrics["fused good rows at 1e4"] = overflow["fused"][-1]
    plot(counted, rows, cols, overflow, scales, out)

    if args.device.startswith("cuda"):
        shapes = [
            tuple(int(n) for n in shape.split("x"))
            for shape in args.report_shapes or []
        ]
        report = gpu_report(tuple(shapes)) if shapes else gpu_report()
        print(f"\n{report['device']}, float32, copy {report['copy GB/s']:.0f} GB/s")
        for name, value in report.items():
            if name.endswith(" µs"):
                entry = name[: -len(" µs")]
                print(
                    f"  {entry:30s} {value:8.1f} µs {report[f'{entry} GB/s']:6.0f} "
                    f"GB/s {report[f'{entry} of copy']:6.1%} of copy"
                )
        metrics.update({f"gpu {k}": v for k, v in report.items() if k != "device"})
    return metrics


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Write the online softmax [@milakov2018online] for rows longer than `MAX_COLS`:
#    a program walks its row in blocks of 4,096, keeping a running maximum $m$ and a
#    running sum $d$ rescaled by $e^{m_\text{old} - m_\text{new}}$ whenever the
#    maximum grows, then walks it again to write $e^{x_i - m} / d$. Check it against
#    `torch.softmax` on a row of $10^5$ columns. How many passes over memory does it
#    make, against the eager version's eight?
# 2. Launch fewer programs than rows: a grid of a few programs per multiprocessor,
#    each looping over rows `tl.program_id(0)`, `+ tl.num_programs(0)`, ..., as
#    Triton's tutorial does. Run `gpu_report` with 16,384 rows of 1,024 columns and
#    with 1,024 rows of 16,384; which shape gains, and why?
# 3. Fuse a scale and a causal mask into the forward kernel, so that it computes the
#    softmax of $x / \sqrt{d} $ with the entries above the diagonal set to $-\infty$,
#    as attention needs. What does it save over scaling and masking with PyTorch
#    first?
# 4. Count, with `ByteCounter`, what `torch.softmax` itself moves on the meta device.
#    The dispatcher sees one kernel and two passes; compare with the bandwidth
#    `gpu_report` measures for it at each shape. Where it falls short of a copy, what
#    does a count of arguments and results not see inside the kernel?
