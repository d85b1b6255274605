r"""
---
title: Layer norm in Triton, forward and backward
summary: >-
  Layer norm as one Triton kernel forward (one program per row, the row held in
  registers) and two backward (the input's gradient per row, then the weight's and
  bias's gradients by a partial-sum reduction), wrapped in an autograd Function:
  bytes counted against eager PyTorch, checked against torch.nn.functional.layer_norm,
  and timed against it on a GPU.
time: 5 s
references:
  - key: ba2016layer
    authors: [Jimmy Lei Ba, Jamie Ryan Kiros, Geoffrey E. Hinton]
    title: Layer Normalization
    year: 2016
    venue: arXiv preprint
    arxiv: "1607.06450"
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
  - key: triton2021layernorm
    authors: [The Triton authors]
    title: "Triton tutorials: Layer Normalization (05-layer-norm.py)"
    year: 2021
    venue: Triton documentation
    url: https://triton-lang.org/main/getting-started/tutorials/05-layer-norm.html
worksheet:
  - region: layer_norm_forward_kernel
    hint: >-
      One program per row: load the row (masked lanes 0) in ACC, take its mean, centre
      it with the masked lanes forced back to 0, take the variance of the centred row
      (two passes, not E[x^2] - E[x]^2) and rstd = 1 / sqrt(variance + eps); store
      x_hat * weight + bias (each only if present) and the row's mean and rstd.
    tests:
      - test_saved_statistics_match_atens_native_layer_norm
      - test_a_large_mean_does_not_cancel_the_variance
      - test_matches_torch_layer_norm_in_float64
  - region: layer_norm_backward_kernel
    hint: >-
      One program per group of rows_per_group rows: for each row rebuild x_hat from
      the saved mean and rstd, let g = grad_y * weight, take c1 = mean(g * x_hat) and
      c2 = mean(g), and store grad_x = rstd * (g - x_hat * c1 - c2); keep the group's
      sums of grad_y * x_hat and grad_y in two registers and, if PARTIALS, store them
      as the group's row of the partial buffer.
    tests: [test_the_backward_kernels_directly, test_passes_gradcheck]
---

Layer norm [@ba2016layer] standardises every row of a `[rows, features]` activation
over its features and then scales and shifts each feature. Per element it does about
ten floating-point operations, and a Transformer runs it twice per block, on tensors as
large as any it has. It is the textbook case of a *memory-bound* operation: the
arithmetic is free, and its time is the bytes it moves divided by the memory's
bandwidth. Written as eager PyTorch operators it launches 9 kernels forward and moves
13 numbers per element, and 19 kernels and 35 numbers backward; one kernel needs to
read $x$ once and write $y$ once, 2 numbers per element (4 bytes in float16), and the
backward 3.

This chapter writes that kernel and its backward in Triton [@tillet2019triton],
following the Triton tutorial's design [@triton2021layernorm]. The forward kernel is
one program per row. The backward has a harder part: the input's gradient is per row,
but the weight's and bias's gradients are sums *over all rows*, and thousands of
programs cannot all add into one vector. The answer is a two-stage, partial-sum
reduction. The kernels go into a `torch.autograd.Function`, are checked against
`torch.nn.functional.layer_norm` (values and all three gradients) in Triton's
interpreter on a CPU, and on a GPU `gpu_report` measures their bandwidth against a
plain copy and their speed against PyTorch's own fused CUDA kernels. The backward
formula is derived in
[backpropagation by hand](../foundations/backprop_by_hand.md); the layer itself,
beside batch norm, is in [regularisation](../networks/regularisation.md).
"""

import argparse
import math
import os
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from tqdm import tqdm

from annotated.data import torch_device
from annotated.figures import figure, save
from annotated.kernels.softmax import ByteCounter

# Triton compiles a kernel for the GPU when it is first launched. Without a GPU it can
# run the same kernel in its *interpreter*, which executes each program with NumPy on
# the CPU: slow, but exact enough to test against PyTorch. The switch is the variable
# `TRITON_INTERPRET`, and Triton reads it while it is being imported, so it has to be
# set before `import triton`, and only when there is no GPU to compile for.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

# ## The operation
#
# For one row $x$ of $D$ features, with a weight $\gamma$ and a bias $\beta$ of $D$
# values each,
#
# $$
# \begin{aligned}
# \mu &= \frac{1}{D} \sum_i x_i, \qquad
# v = \frac{1}{D} \sum_i (x_i - \mu)^2, \\
# r &= \frac{1}{\sqrt{v + \epsilon}}, \qquad
# \hat x_i = (x_i - \mu)\, r, \\
# y_i &= \gamma_i \hat x_i + \beta_i .
# \end{aligned}
# $$
#
# $r$ is the *reciprocal standard deviation*, `rstd` in PyTorch's code. The variance
# is the biased one and $\epsilon$ sits inside the root, as in `nn.LayerNorm`. Given
# $\bar y = \partial L / \partial y$, the gradients are (derived in
# [backpropagation by hand](../foundations/backprop_by_hand.md), with
# $g = \bar y \odot \gamma$ the gradient reaching $\hat x$)
#
# $$
# \begin{aligned}
# \bar x &= r \Big( g - \tfrac{1}{D} \textstyle\sum_j g_j
#   - \hat x \cdot \tfrac{1}{D} \sum_j g_j \hat x_j \Big), \\
# \bar\gamma &= \textstyle\sum_{\text{rows}} \bar y \odot \hat x, \qquad
# \bar\beta = \textstyle\sum_{\text{rows}} \bar y .
# \end{aligned}
# $$
#
# $\bar x$ needs only its own row (and $\mu$, $r$ of that row, which the forward pass
# saves: 2 numbers per row against $D$ per row to recompute them). $\bar\gamma$ and
# $\bar\beta$ need *every* row. That difference shapes the backward kernels.
#
# Here is the operation in plain PyTorch, one operator at a time: the eager version
# whose traffic we count, and a second reference beside `F.layer_norm`. `x` may have
# any leading axes; the last `len(normalized_shape)` are the features.


def layer_norm_eager(
    x: Tensor,
    normalized_shape: tuple[int, ...],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Layer norm over the last `len(normalized_shape)` axes, as separate operators."""
    axes = tuple(range(-len(normalized_shape), 0))
    mean = x.mean(dim=axes, keepdim=True)  # [..., 1]
    centred = x - mean  # shape of x
    variance = (centred * centred).mean(dim=axes, keepdim=True)  # [..., 1]
    y = centred * torch.rsqrt(variance + eps)  # x̂, shape of x
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


# ## Where the time goes: bytes, not arithmetic
#
# With $M$ rows of $D$ features and $s$ bytes per number, a layer norm must at least
# read $x$ and write $y$: $2MDs$ bytes, plus $\gamma$, $\beta$ ($2Ds$) and the saved
# $\mu$, $r$ ($8M$ bytes, float32). It does about 10 operations per element, so its
# arithmetic intensity is $10 / 4 = 2.5$ operations per byte in float16. The roofline
# model [@williams2009roofline] bounds a kernel by $\min(P, I \cdot B)$ for a peak
# arithmetic rate $P$, intensity $I$ and bandwidth $B$; an H200 does about 67 TFLOP/s
# of float32 vector arithmetic and moves 4.8 TB/s, so anything below 14 operations per
# byte is memory-bound, and layer norm is far below. Its best time is its bytes over
# the bandwidth, and the ceiling to compare against is what a plain device-to-device
# copy reaches (about 85–90 % of the datasheet).
#
# The backward pass reads $x$ and $\bar y$ and writes $\bar x$: $3MDs$ bytes at least.
#
# Eager PyTorch moves much more. Every operator is a kernel that reads its inputs from
# memory and writes its output back: `x - mean` reads $x$ and writes a tensor as large,
# `centred * centred` reads it twice and writes again, and so on. The
# [softmax chapter's](softmax.md) `ByteCounter`, imported here, sees every ATen call
# and adds up the tensors each one reads and writes (views launch nothing and are
# skipped); run on the `meta` device, nothing is computed. The count is the memory
# traffic when no operand is still cached from the kernel before: true for tensors
# larger than the L2 cache (50 MB on an H200; `[4096, 8192]` in float16 is
# 64 MB), flattering to eager PyTorch below that.


def counted_traffic(
    function, rows: int, cols: int, dtype: torch.dtype = torch.float16
) -> dict[str, int]:
    """Kernels and bytes of `function(x, (cols,), weight, bias)` forward and backward,
    counted on the meta device."""

    def leaf(*shape):
        return torch.empty(*shape, dtype=dtype, device="meta", requires_grad=True)

    inputs = (leaf(rows, cols), leaf(cols), leaf(cols))
    with ByteCounter() as forward:
        y = function(inputs[0], (cols,), inputs[1], inputs[2])
    grad_y = torch.empty_like(y)
    with ByteCounter() as backward:
        torch.autograd.grad(y, inputs, grad_y)
    return {
        "forward bytes": forward.bytes,
        "forward kernels": forward.kernels,
        "backward bytes": backward.bytes,
        "backward kernels": backward.kernels,
    }


# Our kernels' traffic is what their arguments hold, written out. The forward kernel
# reads $x$, $\gamma$, $\beta$ and writes $y$, $\mu$, $r$. The backward reads $x$,
# $\bar y$, $\gamma$, $\mu$, $r$ and writes $\bar x$, and its reduction (below) writes
# and reads back two float32 buffers of `[groups, D]` (`groups` is the `groups`
# argument; the demo's count leaves them out), then writes $\bar\gamma$ and
# $\bar\beta$. With `default_groups` on a 132-multiprocessor H200 (264 groups at
# $D = 4096$, 132 at 8192) and `gpu_report`'s 4096 rows in float16, the buffers move
# 17 MB at either width: about 15 % of the backward's bytes at $D = 4096$ and 8 % at
# 8192, and small enough to stay in the L2 cache.
def fused_traffic(
    rows: int, cols: int, dtype: torch.dtype = torch.float16, groups: int = 0
) -> dict[str, int]:
    """Kernels and bytes of the Triton forward and backward, with weight and bias."""
    element, statistics = rows * cols * dtype.itemsize, 2 * rows * 4
    parameters = 2 * cols * dtype.itemsize
    partials = 2 * 2 * groups * cols * 4  # written by one kernel, read by the next
    return {
        "forward bytes": 2 * element + parameters + statistics,
        "forward kernels": 1,
        "backward bytes": 3 * element + 2 * parameters + statistics + partials,
        "backward kernels": 2,
    }


# ## The forward kernel: one program per row
#
# A Triton program [@tillet2019triton] works on a *block* of values at once. Here each
# program takes one row, `tl.program_id(0)`, and loads all of it: `BLOCK_N` is $D$
# rounded up to a power of two, and the `mask` switches off the lanes past $D$ (their
# loads return 0 and their stores do nothing). The whole row then lives in registers,
# spread over the program's warps, so $x$ is read from memory exactly once: the mean,
# the centred values, the variance and the output are all computed from the registers.
# That is also the kernel's limit: a program has at most 16 warps (512 threads), so a
# row of 64 KB leaves each thread 32 float32 values, or 64 float16 ones computed in
# float32, to hold in registers, of at most 255 a thread; a longer row would spill to
# memory. So rows are limited to $2^{16}$ bytes (16,384 float32 or 32,768 float16
# features); a wider layer would loop over the row in chunks and read it twice.
#
# The variance is computed in two passes over the registers, $\frac{1}{D}\sum (x -
# \mu)^2$, not as $\overline{x^2} - \mu^2$: the second form cancels catastrophically
# when $|\mu|$ is large against the spread (a row of $10^4 + $ noise), and the first
# costs nothing here since both passes read registers. The masked lanes must be zeroed
# after centring (`tl.where`), or each would add $\mu^2$ to the sum. Arithmetic runs in
# `ACC`: float32 for float16 and bfloat16 inputs, as PyTorch does, and float64 for
# float64. $\mu$ and $r$ are stored in `ACC` for the backward pass.
#
# The row's start is `row * row_stride`: rows need not be packed, only each row's
# features, so a slice `x[:, :D]` of a wider tensor is read in place. `row` is cast to
# 64 bits so that tensors past $2^{31}$ elements still index correctly.


@triton.jit
def layer_norm_forward_kernel(
    x_ptr,  # [rows, cols], rows row_stride apart
    y_ptr,  # [rows, cols], written
    weight_ptr,  # [cols], read only if HAS_WEIGHT
    bias_ptr,  # [cols], read only if HAS_BIAS
    mean_ptr,  # [rows], written
    rstd_ptr,  # [rows], written
    row_stride,
    cols,
    eps,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.arange(0, BLOCK_N)  # [BLOCK_N]
    mask = offsets < cols
    x = tl.load(x_ptr + row * row_stride + offsets, mask=mask, other=0.0).to(ACC)
    mean = tl.sum(x, axis=0) / cols
    centred = tl.where(mask, x - mean, 0.0)  # masked lanes must add nothing
    variance = tl.sum(centred * centred, axis=0) / cols
    rstd = 1 / tl.sqrt(variance + eps)
    y = centred * rstd  # x̂
    if HAS_WEIGHT:  # a constexpr: the branch is compiled in or out
        y = y * tl.load(weight_ptr + offsets, mask=mask).to(ACC)
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offsets, mask=mask).to(ACC)
    tl.store(y_ptr + row * cols + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)


# ## The backward kernel, and where to add up $\bar\gamma$ and $\bar\beta$
#
# $\bar x$ is per row, like the forward: load $x$ and $\bar y$, rebuild $\hat x$ from
# the saved $\mu$ and $r$, take the two row sums $c_1 = \frac{1}{D}\sum g \hat x$ and
# $c_2 = \frac{1}{D}\sum g$, and write $\bar x = r\,(g - \hat x c_1 - c_2)$.
#
# $\bar\gamma = \sum_\text{rows} \bar y \odot \hat x$ is a sum over all $M$ rows, and
# there are three ways to take it.
#
# - *In one place*: one program walks all $M$ rows. The sum is then serial: one
#   streaming multiprocessor of 132 reads all of $x$ and $\bar y$, at 1/132 of the
#   machine's bandwidth.
# - *Atomically into one buffer*: every row program does `tl.atomic_add` of its $D$
#   contributions into $\bar\gamma$. All $M$ programs hit the same $D$ addresses, and
#   the memory system serialises atomics to one address: thousands of programs queue on
#   every element. The result also depends on the order the additions land in, so it
#   is not reproducible bit for bit.
# - *Partial sums*: split the rows into `groups` groups. Each program owns one group
#   and adds its rows' contributions into *registers*, then writes one row of a
#   float32 buffer `[groups, D]` (float64 for float64 inputs); a second kernel sums
#   that buffer over its group
#   axis. Nothing is contended, the work of the first stage is spread over the whole
#   machine, and the second stage reads only `groups`$\times D$ numbers. Since every
#   addition happens in a fixed order, the result is the same bits every run.
#
# The Triton tutorial [@triton2021layernorm] takes a middle way: one program per row,
# adding into `GROUP_SIZE_M` partial buffers chosen by `row % GROUP_SIZE_M`, each
# guarded by a spin lock (`tl.atomic_cas`). Contention drops by a factor of
# `GROUP_SIZE_M`, but a lock is still a serialisation, and the order of additions
# within a buffer still varies between runs. Here each program owns its group outright,
# `rows_per_group` consecutive rows, so no lock is needed: the program loops over its
# rows, computing each row's $\bar x$ on the way and keeping the running
# $\bar\gamma$ and $\bar\beta$ of its rows in two `[BLOCK_N]` accumulators. With
# about as many groups as the GPU has programs running at once, every multiprocessor
# is busy, and the buffers are a few MB.


@triton.jit
def layer_norm_backward_kernel(
    x_ptr,  # [rows, cols], rows row_stride apart
    grad_y_ptr,  # [rows, cols]
    weight_ptr,  # [cols], read only if HAS_WEIGHT
    mean_ptr,  # [rows]
    rstd_ptr,  # [rows]
    grad_x_ptr,  # [rows, cols], written
    partial_ptr,  # [groups, 2, cols] in ACC: Σ ȳ x̂ and Σ ȳ per group, if PARTIALS
    row_stride,
    rows,
    cols,
    rows_per_group,
    HAS_WEIGHT: tl.constexpr,
    PARTIALS: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    group = tl.program_id(0).to(tl.int64)
    offsets = tl.arange(0, BLOCK_N)  # [BLOCK_N]
    mask = offsets < cols
    weight = tl.full([BLOCK_N], 1.0, ACC)
    if HAS_WEIGHT:
        weight = tl.load(weight_ptr + offsets, mask=mask, other=0.0).to(ACC)
    grad_weight = tl.zeros([BLOCK_N], dtype=ACC)  # this group's Σ ȳ x̂
    grad_bias = tl.zeros([BLOCK_N], dtype=ACC)  # this group's Σ ȳ
    first = group * rows_per_group
    for row in range(first, tl.minimum(first + rows_per_group, rows)):
        x = tl.load(x_ptr + row * row_stride + offsets, mask=mask, other=0.0).to(ACC)
        grad_y = tl.load(grad_y_ptr + row * cols + offsets, mask=mask, other=0.0)
        grad_y = grad_y.to(ACC)
        mean = tl.load(mean_ptr + row)
        rstd = tl.load(rstd_ptr + row)
        x_hat = tl.where(mask, (x - mean) * rstd, 0.0)
        g = grad_y * weight  # the gradient reaching x̂
        c1 = tl.sum(g * x_hat, axis=0) / cols
        c2 = tl.sum(g, axis=0) / cols
        grad_x = (g - x_hat * c1 - c2) * rstd
        out = grad_x_ptr.dtype.element_ty
        tl.store(grad_x_ptr + row * cols + offsets, grad_x.to(out), mask=mask)
        if PARTIALS:
            grad_weight += grad_y * x_hat
            grad_bias += grad_y
    if PARTIALS:
        partial = partial_ptr + group * 2 * cols + offsets
        tl.store(partial, grad_weight, mask=mask)
        tl.store(partial + cols, grad_bias, mask=mask)


# The second stage sums the buffer over its group axis. Each program takes `BLOCK_N`
# columns of both partial sums (the buffer read as `[groups, 2·D]`) and walks down the
# groups `BLOCK_G` at a time, accumulating a `[BLOCK_G, BLOCK_N]` tile and summing it
# at the end: the reads of neighbouring columns are neighbouring addresses, and each
# program has `BLOCK_G` loads in flight instead of one.


@triton.jit
def sum_partials_kernel(
    partial_ptr,  # [groups, width] in ACC
    out_ptr,  # [width], written
    groups,
    width,  # 2 * cols
    ACC: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    columns = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    column_mask = columns < width
    total = tl.zeros([BLOCK_G, BLOCK_N], dtype=ACC)
    for start in range(0, groups, BLOCK_G):
        group = start + tl.arange(0, BLOCK_G)  # [BLOCK_G]
        mask = (group < groups)[:, None] & column_mask[None, :]
        pointers = partial_ptr + group[:, None].to(tl.int64) * width + columns[None, :]
        total += tl.load(pointers, mask=mask, other=0.0)
    result = tl.sum(total, axis=0)  # [BLOCK_N]
    tl.store(out_ptr + columns, result.to(out_ptr.dtype.element_ty), mask=column_mask)


# ## Launching
#
# The forward grid is one program per row. A row of `BLOCK_N` values is spread over
# `num_warps` warps of 32 threads: one warp per 512 bytes of the block (128 float32 or
# 256 float16 values), at least 1 and at most 16. Up to 8 KB each thread keeps at most
# 16 bytes in registers, 4 float32 or 8 float16 values; wider rows share the 16 warps,
# up to 32 float32 or 64 float16 values a thread at the 64 KB limit.
# The backward grid is `groups` programs: by default as many as the GPU's
# multiprocessors can hold at once, one per multiprocessor for rows of 8,192 values
# and more for narrower rows, whose programs use fewer registers. In the interpreter
# on a CPU, where programs run one after another, 8 groups are plenty.

MAX_ROW_BYTES = 2**16


def launch_settings(cols: int, element_size: int) -> tuple[int, int]:
    """`BLOCK_N` (cols rounded up to a power of two) and the number of warps."""
    block = triton.next_power_of_2(cols)
    warps = min(max(block * element_size // 512, 1), 16)
    return block, warps


def default_groups(rows: int, block: int, device: torch.device) -> int:
    """How many partial sums the backward kernel writes."""
    if device.type == "cuda":
        processors = torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, min(rows, processors * max(1, 8192 // block)))
    return max(1, min(rows, 8))


def accumulator(dtype: torch.dtype):
    """The Triton type the kernels compute in for tensors of `dtype`."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def layer_norm_forward(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the forward kernel on `x` `[rows, cols]` (rows may be strided); returns
    `(y, mean, rstd)`, `y` contiguous."""
    rows, cols = x.shape
    stats = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = torch.empty(rows, cols, dtype=x.dtype, device=x.device)
    mean = torch.empty(rows, dtype=stats, device=x.device)
    rstd = torch.empty(rows, dtype=stats, device=x.device)
    block, warps = launch_settings(cols, x.element_size())
    layer_norm_forward_kernel[(rows,)](
        x,
        y,
        x if weight is None else weight,  # a placeholder, never read
        x if bias is None else bias,
        mean,
        rstd,
        x.stride(0),
        cols,
        eps,
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None,
        ACC=accumulator(x.dtype),
        BLOCK_N=block,
        num_warps=warps,
    )
    return y, mean, rstd


def layer_norm_backward(
    grad_y: Tensor,
    x: Tensor,
    weight: Tensor | None,
    mean: Tensor,
    rstd: Tensor,
    parameter_grads: bool,
    groups: int | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Run the backward kernels; returns `(grad_x, grad_weight, grad_bias)`, the last
    two None unless `parameter_grads`."""
    rows, cols = x.shape
    block, warps = launch_settings(cols, x.element_size())
    groups = min(groups or default_groups(rows, block, x.device), rows)
    rows_per_group = triton.cdiv(rows, groups)
    groups = triton.cdiv(rows, rows_per_group)  # no group left without rows
    grad_x = torch.empty(rows, cols, dtype=x.dtype, device=x.device)
    partials = None
    if parameter_grads:
        partials = torch.empty(groups, 2, cols, dtype=mean.dtype, device=x.device)
    layer_norm_backward_kernel[(groups,)](
        x,
        grad_y,
        x if weight is None else weight,  # a placeholder, never read
        mean,
        rstd,
        grad_x,
        grad_x if partials is None else partials,  # never written
        x.stride(0),
        rows,
        cols,
        rows_per_group,
        HAS_WEIGHT=weight is not None,
        PARTIALS=parameter_grads,
        ACC=accumulator(x.dtype),
        BLOCK_N=block,
        num_warps=warps,
    )
    if partials is None:
        return grad_x, None, None
    sums = torch.empty(2, cols, dtype=x.dtype, device=x.device)  # [γ̄; β̄]
    block_n = min(triton.next_power_of_2(2 * cols), 128)
    sum_partials_kernel[(triton.cdiv(2 * cols, block_n),)](
        partials,
        sums,
        groups,
        2 * cols,
        ACC=accumulator(x.dtype),
        BLOCK_G=32,
        BLOCK_N=block_n,
    )
    return grad_x, sums[0], sums[1]


# ## The autograd Function
#
# Forward saves $x$ (the `[rows, cols]` view, no copy), $\gamma$, $\mu$ and $r$;
# backward runs the two kernels and hands each input its gradient. The parameter
# gradients are skipped, partial buffers and second kernel included, when neither
# $\gamma$ nor $\beta$ wants one (a frozen layer). The backward kernels are not
# differentiable by autograd, so the Function is `once_differentiable`: a second
# derivative raises instead of returning a wrong one. The incoming $\bar y$ arrives in
# whatever layout autograd made (`y.sum()` sends an expanded, stride-0 tensor) and the
# kernel reads packed rows, hence `.contiguous()`.


class LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, groups):
        y, mean, rstd = layer_norm_forward(x, weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.groups = groups
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, weight, mean, rstd = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_x, grad_weight, grad_bias = layer_norm_backward(
            grad_y.contiguous(), x, weight, mean, rstd, needs[1] or needs[2], ctx.groups
        )
        return (
            grad_x if needs[0] else None,
            grad_weight if needs[1] else None,
            grad_bias if needs[2] else None,
            None,
            None,
        )


# ## Checking the inputs, and the public function
#
# A kernel reads raw memory: given a float64 weight beside float32 activations, or a
# weight of the wrong length, it computes garbage without a word. So `layer_norm`
# checks its arguments first, with `F.layer_norm`'s signature: the last
# `len(normalized_shape)` axes of `x` must be `normalized_shape`, the weight and bias
# (each optional) must have that shape and `x`'s dtype and device. Then `x` becomes a
# `[rows, cols]` matrix: a view when its layout allows, and a copy only when a row's
# features are not packed (the kernel needs stride 1 along them).

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_arguments(
    x: Tensor,
    normalized_shape: tuple[int, ...],
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    groups: int | None,
) -> None:
    """Raise a ValueError or TypeError naming the argument unless the call is valid."""
    if not isinstance(x, Tensor):
        raise TypeError(f"layer_norm: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in DTYPES:
        raise TypeError(
            "layer_norm: x must be float16, bfloat16, float32 or float64, got "
            f"{x.dtype}"
        )
    if not normalized_shape or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 1
        for d in normalized_shape
    ):
        raise ValueError(
            "layer_norm: normalized_shape must be a positive int or a non-empty tuple "
            f"of them, got {normalized_shape!r}"
        )
    if tuple(x.shape[x.ndim - len(normalized_shape) :]) != normalized_shape:
        raise ValueError(
            f"layer_norm: x's last axes must be normalized_shape = {normalized_shape}, "
            f"got x of shape {tuple(x.shape)}"
        )
    for name, value in (("weight", weight), ("bias", bias)):
        if value is None:
            continue
        if not isinstance(value, Tensor):
            raise TypeError(
                f"layer_norm: {name} must be a torch.Tensor or None, got "
                f"{type(value).__name__}"
            )
        if tuple(value.shape) != normalized_shape:
            raise ValueError(
                f"layer_norm: {name} must have normalized_shape = {normalized_shape}, "
                f"got {tuple(value.shape)}"
            )
        if value.dtype != x.dtype:
            raise TypeError(f"layer_norm: {name} is {value.dtype} but x is {x.dtype}")
        if value.device != x.device:
            raise ValueError(
                f"layer_norm: {name} is on {value.device} but x is on {x.device}"
            )
    if not (isinstance(eps, (int, float)) and 0 < eps < math.inf):
        raise ValueError(f"layer_norm: eps must be a finite number > 0, got {eps!r}")
    if math.prod(normalized_shape) * x.element_size() > MAX_ROW_BYTES:
        raise ValueError(
            f"layer_norm: a row of {math.prod(normalized_shape)} features of "
            f"{x.dtype} is over {MAX_ROW_BYTES} bytes; this kernel keeps a whole row "
            "in registers"
        )
    if groups is not None and not (isinstance(groups, int) and groups >= 1):
        raise ValueError(f"layer_norm: groups must be a positive int, got {groups!r}")


def layer_norm(
    x: Tensor,
    normalized_shape: int | tuple[int, ...],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    *,
    groups: int | None = None,
) -> Tensor:
    r"""`torch.nn.functional.layer_norm` in Triton; `groups` sets how many partial sums
    the backward pass reduces $\bar\gamma$ and $\bar\beta$ through."""
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    normalized_shape = tuple(normalized_shape)
    check_arguments(x, normalized_shape, weight, bias, eps, groups)
    cols = math.prod(normalized_shape)
    matrix = x.reshape(-1, cols)  # [rows, cols], a view when the layout allows
    if matrix.stride(1) != 1 and cols > 1:
        matrix = matrix.contiguous()
    if matrix.shape[0] == 0:  # no rows, no programs: F.layer_norm's empty result
        return layer_norm_eager(x, normalized_shape, weight, bias, eps)
    weight = None if weight is None else weight.reshape(cols)
    bias = None if bias is None else bias.reshape(cols)
    tensors = (matrix, weight, bias)
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in tensors
    ):
        y = LayerNormFunction.apply(matrix, weight, bias, float(eps), groups)
    else:
        y = layer_norm_forward(matrix, weight, bias, float(eps))[0]
    return y.view(x.shape)


# `nn.LayerNorm` with its forward replaced: the same parameters under the same names,
# so a checkpoint of one loads into the other.


class TritonLayerNorm(nn.LayerNorm):
    """An `nn.LayerNorm` that runs the Triton kernels."""

    def forward(self, input: Tensor) -> Tensor:
        return layer_norm(
            input, self.normalized_shape, self.weight, self.bias, self.eps
        )


# ## Measuring on a GPU
#
# `gpu_report` times each kernel with `triton.testing.do_bench`, which clears the L2
# cache before every run so that each reads from memory, and keeps the median. Every
# entry's GB/s is the *minimum* traffic of the operation ($2MDs$ forward, $3MDs$
# backward, plus the small vectors) divided by its time: the effective bandwidth, the
# same yardstick for ours and PyTorch's. The ceiling is measured in the same run: a
# device-to-device copy of 1 GiB, read and write counted. The competitor is PyTorch's
# own fused CUDA layer norm, called as the ATen ops `F.layer_norm` dispatches to,
# `native_layer_norm` and `native_layer_norm_backward`, so that both sides are timed
# as bare kernels. The `training step` entries are forward and backward through
# autograd, where a Python Function's overhead shows.


def gpu_report(
    rows: int = 4096,
    cols: tuple[int, ...] = (4096, 8192),
    dtypes: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16),
) -> dict[str, float]:
    """Times (µs), effective GB/s and their fractions of the copy bandwidth, ours and
    PyTorch's, for each width in `cols` and dtype in `dtypes`."""
    if not torch.cuda.is_available():
        raise RuntimeError("gpu_report needs a CUDA GPU: do_bench times CUDA events")
    device = torch.device("cuda")
    source = torch.empty(2**30, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    copy_ms = triton.testing.do_bench(
        lambda: target.copy_(source), return_mode="median"
    )
    report = {"rows": rows, "copy GB/s": 2 * source.nbytes / copy_ms / 1e6}
    aten = torch.ops.aten
    for dtype in dtypes:
        for width in cols:
            generator = torch.Generator(device).manual_seed(0)
            x, weight, bias, grad_y = (
                torch.randn(*shape, generator=generator, device=device, dtype=dtype)
                for shape in ((rows, width), (width,), (width,), (rows, width))
            )
            _, mean, rstd = layer_norm_forward(x, weight, bias, 1e-5)
            _, torch_mean, torch_rstd = aten.native_layer_norm(
                x, (width,), weight, bias, 1e-5
            )
            leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
            traffic = fused_traffic(rows, width, dtype)

            def training(function):
                def step():
                    y = function(leaves[0], (width,), leaves[1], leaves[2])
                    torch.autograd.grad(y, leaves, grad_y)

                return step

            entries = {  # name: (ours, PyTorch's, bytes)
                "forward": (
                    lambda: layer_norm_forward(x, weight, bias, 1e-5),
                    lambda: aten.native_layer_norm(x, (width,), weight, bias, 1e-5),
                    traffic["forward bytes"],
                ),
                "backward": (
                    lambda: layer_norm_backward(grad_y, x, weight, mean, rstd, True),
                    lambda: aten.native_layer_norm_backward(
                        grad_y,
                        x,
                        (width,),
                        torch_mean,
                        torch_rstd,
                        weight,
                        bias,
                        (True, True, True),
                    ),
                    traffic["backward bytes"],
                ),
                "training step": (
                    training(layer_norm),
                    training(nn.functional.layer_norm),
                    traffic["forward bytes"] + traffic["backward bytes"],
                ),
            }
            size = f"{str(dtype).removeprefix('torch.')} {rows}×{width}"
            for name, (ours, theirs, moved) in entries.items():
                ours_ms = triton.testing.do_bench(ours, return_mode="median")
                torch_ms = triton.testing.do_bench(theirs, return_mode="median")
                report[f"{size} {name} ours µs"] = ours_ms * 1e3
                report[f"{size} {name} torch µs"] = torch_ms * 1e3
                report[f"{size} {name} ours GB/s"] = moved / ours_ms / 1e6
                report[f"{size} {name} torch GB/s"] = moved / torch_ms / 1e6
                report[f"{size} {name} ours of copy"] = (
                    moved / ours_ms / 1e6 / report["copy GB/s"]
                )
                report[f"{size} {name} ours / torch"] = torch_ms / ours_ms
    return report


# ## The example
#
# A `[3, 5, 37]` activation normalised over its 37 features: 15 rows of a width that
# is not a power of two, so 27 of the 64 lanes of each program are masked off. The
# dataflow diagram is declared by `dataflow` below, not traced: `torch.fx` cannot look
# inside a Triton kernel, and the point of the picture is which tensors cross memory.


def example():
    """A small example: `fn(*args)` is layer norm of a `[3, 5, 37]` tensor over its last
    axis, with weight and bias."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 37, generator=generator)
    weight = 1 + 0.1 * torch.randn(37, generator=generator)
    bias = 0.1 * torch.randn(37, generator=generator)
    return layer_norm, (x, 37, weight, bias)


def dataflow(output: Tensor):
    """The forward kernel's and the backward kernels' tensors, with their shapes."""
    *leading, cols = output.shape
    rows = math.prod(leading)
    matrix, row, vector = f"[{rows}, {cols}]", f"[{rows}]", f"[{cols}]"
    groups = default_groups(rows, triton.next_power_of_2(cols), output.device)
    nodes = [
        ("x", "x"),
        ("params", "γ, β"),
        ("forward", "layer_norm_forward_kernel\n(one program per row)"),
        ("y", "y"),
        ("stats", "μ, r (saved)"),
        ("grad_y", "ȳ"),
        ("backward", "layer_norm_backward_kernel\n(one program per group of rows)"),
        ("grad_x", "x̄"),
        ("partials", "partial sums\n(float32)"),
        ("sum", "sum_partials_kernel"),
        ("grad_params", "γ̄, β̄"),
    ]
    edges = [
        ("x", "forward", matrix),
        ("params", "forward", f"2 × {vector}"),
        ("forward", "y", matrix),
        ("forward", "stats", f"2 × {row}"),
        ("x", "backward", matrix),
        ("grad_y", "backward", matrix),
        ("stats", "backward", f"2 × {row}"),
        ("params", "backward", f"γ {vector}"),
        ("backward", "grad_x", matrix),
        ("backward", "partials", f"[{groups}, 2, {cols}]"),
        ("partials", "sum", f"[{groups}, 2, {cols}]"),
        ("sum", "grad_params", f"2 × {vector}"),
    ]
    return nodes, edges


# ## The demo
#
# On a CPU the kernels run in the interpreter, so the demo stays small. It checks ours
# against `F.layer_norm` in float64, values and all three gradients, over a few odd
# shapes (one row, one feature, widths that are not powers of two, more groups than
# rows), and in float16 against float32 math on the same rounded inputs; it checks
# that the backward pass is the same bits when run twice; and it counts the bytes of
# eager PyTorch, of PyTorch's fused kernel and of ours at a GPU-sized shape and draws
# them. Eager PyTorch moves 13 numbers per element forward in 9 kernels and 35
# backward in 19, against 2 and 3 for a fused kernel, ours or PyTorch's
# (`native_layer_norm`, whose backward is one kernel on the dispatcher). With
# `--device cuda` it also prints `gpu_report`.

SHAPES = [  # (shape of x, normalized_shape, affine, groups)
    ((1, 5), (5,), True, None),  # one row
    ((4, 1), (1,), True, None),  # one feature: x̂ = 0, y = β
    ((3, 7, 24), (24,), True, 2),  # 21 rows in 2 groups of 11 and 10
    ((13, 100), (100,), False, 5),  # no weight or bias
    ((2, 3, 4, 5), (4, 5), True, 32),  # two feature axes; more groups than rows
]


def check_against_torch(device: str, dtype: torch.dtype) -> float:
    """The largest difference from `F.layer_norm` (run in float32 or float64 on the
    same inputs) over `SHAPES`, values and gradients, relative to their size."""
    worst = 0.0
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    for shape, normalized_shape, affine, groups in tqdm(
        SHAPES, desc=f"checking {dtype}", leave=False
    ):
        generator = torch.Generator().manual_seed(len(shape))
        x = 3 + 2 * torch.randn(*shape, generator=generator)
        params = [
            1 + torch.randn(*normalized_shape, generator=generator),
            torch.randn(*normalized_shape, generator=generator),
        ]
        grad_y = torch.randn(*shape, generator=generator)
        ours_in = [t.to(device, dtype).requires_grad_() for t in [x, *params]]
        theirs_in = [t.detach().to(wide).requires_grad_() for t in ours_in]
        if not affine:
            ours_in, theirs_in = ours_in[:1], theirs_in[:1]
        ours = layer_norm(*ours_in[:1], normalized_shape, *ours_in[1:], groups=groups)
        theirs = nn.functional.layer_norm(
            theirs_in[0], normalized_shape, *theirs_in[1:]
        )
        ours_grads = torch.autograd.grad(ours, ours_in, grad_y.to(device, dtype))
        grad_y = grad_y.to(device, dtype)
        theirs_grads = torch.autograd.grad(theirs, theirs_in, grad_y.to(wide))
        for mine, reference in zip([ours, *ours_grads], [theirs, *theirs_grads]):
            error = (mine.to(wide) - reference).abs().max().item()
            worst = max(worst, error / max(1.0, reference.abs().max().item()))
    return worst


def plot_traffic(counts: dict[str, dict], rows: int, cols: int, out: Path):
    fig, axes = figure(panels=2)
    elements = rows * cols * 2  # bytes of one float16 [rows, cols] tensor
    names = list(counts)
    positions = torch.arange(2, dtype=torch.float64)
    width = 0.8 / len(names)
    for index, name in enumerate(names):
        shift = (index - (len(names) - 1) / 2) * width
        for axis, unit, key in ((0, elements, "bytes"), (1, 1, "kernels")):
            heights = [
                counts[name][f"{part} {key}"] / unit for part in ("forward", "backward")
            ]
            bars = axes[axis].bar(positions + shift, heights, width, label=name)
            axes[axis].bar_label(bars, fmt="%.1f" if axis == 0 else "%d")
    for axis, ylabel, title in (
        (0, "bytes moved / bytes of x", "bytes moved, counted"),
        (1, "kernels per call", "kernels launched, counted"),
    ):
        axes[axis].set_xticks(positions.tolist(), ["forward", "backward"])
        axes[axis].set(ylabel=ylabel, title=title)
        axes[axis].set_ylim(0, 1.3 * axes[axis].get_ylim()[1])
        axes[axis].legend(loc="upper left", fontsize=8)
    save(
        fig,
        out / "traffic.png",
        caption="A count, not a measurement: the bytes each layer norm reads and "
        f"writes, in units of the input's size (float16, {rows} rows of {cols} "
        "features; eager PyTorch and torch's fused native_layer_norm counted on the "
        "dispatcher, ours from its kernels' arguments), and the kernels each launches "
        "per forward or backward pass.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description="Layer norm in Triton: check it against torch, count its bytes, "
        "and on a GPU time it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--count-size",
        default="4096x4096",
        help="ROWSxCOLS of the float16 layer norm whose bytes are counted",
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (cpu runs the kernels in Triton's interpreter)",
    )
    parser.add_argument("--out", default="out/layernorm", help="folder for figures")
    args = parser.parse_args(argv)
    out = Path(args.out)
    metrics = {}

    for dtype in (torch.float64, torch.float16):
        error = check_against_torch(args.device, dtype)
        print(f"{dtype} vs F.layer_norm, values and 3 gradients: {error:.1e}")
        metrics[f"max error {dtype}"] = error

    fn, (x, *rest) = example()
    x = x.to(args.device).requires_grad_()
    rest = [
        t.to(args.device).requires_grad_() if isinstance(t, Tensor) else t for t in rest
    ]
    first, second = (torch.autograd.grad(fn(x, *rest).square().sum(), x) for _ in "ab")
    metrics["backward reproducible"] = float(torch.equal(first[0], second[0]))
    print(f"backward twice, the same bits: {bool(metrics['backward reproducible'])}")

    rows, cols = (int(n) for n in args.count_size.split("x"))
    counts = {
        "eager PyTorch": counted_traffic(layer_norm_eager, rows, cols),
        "torch native_layer_norm": counted_traffic(
            nn.functional.layer_norm, rows, cols
        ),
        "ours (Triton)": fused_traffic(rows, cols, groups=0),
    }
    element = rows * cols * 2
    print(f"bytes moved per byte of x, float16, {rows}×{cols}:")
    for name, count in counts.items():
        print(
            f"  {name:24s} forward {count['forward bytes'] / element:5.2f}"
            f" ({count['forward kernels']} kernels)"
            f"  backward {count['backward bytes'] / element:5.2f}"
            f" ({count['backward kernels']} kernels)"
        )
    eager, ours = counts["eager PyTorch"], counts["ours (Triton)"]
    metrics["bytes ratio forward"] = eager["forward bytes"] / ours["forward bytes"]
    metrics["bytes ratio backward"] = eager["backward bytes"] / ours["backward bytes"]
    plot_traffic(counts, rows, cols, out)

    if args.device.startswith("cuda"):
        report = gpu_report()
        print(f"\n{torch.cuda.get_device_name()}: copy {report['copy GB/s']:.0f} GB/s")
        for name, value in report.items():
            if name.endswith(" ours µs"):
                entry = name[: -len(" ours µs")]
                print(
                    f"  {entry:32s} ours {value:7.1f} µs"
                    f" {report[f'{entry} ours GB/s']:6.0f} GB/s"
                    f" ({report[f'{entry} ours of copy']:.0%} of copy),"
                    f" torch {report[f'{entry} torch µs']:7.1f} µs:"
                    f" {report[f'{entry} ours / torch']:.2f}× torch's speed"
                )
        metrics.update({f"gpu {k}": v for k, v in report.items()})
    return metrics


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Replace the partial-sum reduction with one `tl.atomic_add` per program into
#    $\bar\gamma$ and $\bar\beta$ directly (float32 buffers). Run the backward twice
#    and compare the bits; on a GPU, time it with `groups` equal to the number of rows.
# 2. Run `gpu_report` with `layer_norm_backward`'s `groups` at a quarter, the default
#    and four times the default. Where does the time go at each end: the serial walk
#    down each group's rows, or the partial buffers?
# 3. Lift the 64 KB row limit: when the row does not fit, loop over it in chunks of
#    `BLOCK_N`, once for $\mu$ and $v$ and once for $y$. Count the bytes: how much
#    more does a row that no longer fits cost?
# 4. Write RMSNorm ($y = \gamma \odot x / \sqrt{\overline{x^2} + \epsilon}$) by
#    deleting lines from both kernels, and check it against `torch.nn.RMSNorm`.
