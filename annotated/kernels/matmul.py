r"""
---
title: A tiled matrix multiplication in Triton
summary: >-
  A matrix product as a grid of Triton programs, each computing one tile of the output
  with a float32 accumulator, launched in grouped order so that the L2 cache serves the
  tiles that neighbouring programs share: tile loads counted for each order, checked
  against torch.matmul in the interpreter, and timed against cuBLAS on a GPU.
time: 5 s
references:
  - key: williams2009roofline
    authors: [Samuel Williams, Andrew Waterman, David Patterson]
    title: "Roofline: An Insightful Visual Performance Model for Multicore
      Architectures"
    year: 2009
    venue: Communications of the ACM 52(4)
    url: https://doi.org/10.1145/1498765.1498785
  - key: tillet2019triton
    authors: [Philippe Tillet, H. T. Kung, David Cox]
    title: "Triton: An Intermediate Language and Compiler for Tiled Neural Network
      Computations"
    year: 2019
    venue: MAPL 2019
    url: https://doi.org/10.1145/3315508.3329973
  - key: goto2008anatomy
    authors: [Kazushige Goto, Robert A. van de Geijn]
    title: Anatomy of High-Performance Matrix Multiplication
    year: 2008
    venue: ACM Transactions on Mathematical Software 34(3)
    url: https://doi.org/10.1145/1356052.1356053
  - key: micikevicius2018mixed
    authors: [Paulius Micikevicius, Sharan Narang, Jonah Alben, Gregory Diamos, Erich
        Elsen, David Garcia, Boris Ginsburg, Michael Houston, Oleksii Kuchaiev, Ganesh
        Venkatesh, Hao Wu]
    title: Mixed Precision Training
    year: 2018
    venue: ICLR 2018
    arxiv: "1710.03740"
worksheet:
  - region: tile_coordinates
    hint: >-
      Programs come in groups of group_m * n_tiles; within a group, number the tiles
      down each column of the group's rows before moving right. The last group may
      have fewer than group_m rows, so divide by the rows it really has.
    tests:
      - test_grouped_order_visits_every_tile_once
      - test_group_of_one_row_is_row_major_and_groups_go_down_columns
  - region: matmul_kernel
    hint: >-
      Find this program's output tile in grouped order (tile_coordinates' arithmetic),
      build BLOCK_M x BLOCK_K and BLOCK_K x BLOCK_N blocks of pointers from the
      strides, and walk K in steps of BLOCK_K, loading both tiles with the lanes past
      K masked to 0 and adding tl.dot(a, b) into a float32 accumulator; store it,
      rounded to c's dtype, under a mask that keeps rows < M and columns < N.
    tests:
      - test_float32_matches_torch_matmul_and_the_float64_product
      - test_strided_operands_are_read_where_they_lie
      - test_float16_accumulates_in_float32_over_a_long_k
---

A product $C = AB$ of an $M \times K$ and a $K \times N$ matrix does $2MNK$
floating-point operations on $MK + KN$ inputs: every number it reads is used $N$ or
$M$ times. That reuse is what makes the matrix product the one operation a GPU can run
at its arithmetic peak instead of at its memory bandwidth, but only if the reuse
happens close to the arithmetic. A kernel that fetched both operands from memory for
every multiply-add would move $4MNK$ bytes in float16, and at $4096^3$ that is 275 GB
to do 137 GFLOP: 57 ms at an H200's 4.8 TB/s, against 0.14 ms of arithmetic.

This chapter writes the matrix product in Triton [@tillet2019triton] the way cuBLAS
and its predecessors organise it [@goto2008anatomy]. Each program computes one
$\text{BLOCK\_M} \times \text{BLOCK\_N}$ tile of $C$, walking $K$ in steps of
$\text{BLOCK\_K}$ and keeping the running sum in float32 registers; the tiles of $A$
and $B$ it reads are reused $\text{BLOCK\_N}$ and $\text{BLOCK\_M}$ times from fast
on-chip memory. The tiles that neighbouring programs share are reused once more in
the L2 cache, if those programs run at the same time, and the order in which programs
are numbered decides that: the chapter counts the tile loads for row-major and for
*grouped* order and draws them. On a CPU the kernel runs in Triton's interpreter and is
checked against `torch.matmul` on ragged shapes and strided operands; on a GPU,
`gpu_report` times it against cuBLAS at $4096^3$ in float16 and bfloat16, where a
well-tiled kernel should reach 90 % of cuBLAS, and states the bfloat16 rate as a
fraction of the device's datasheet peak. No GPU was available when this page was
written, so its measured numbers are not quoted here; `gpu_report`'s table is what a
GPU run prints.
"""

import argparse
import math
import os
from pathlib import Path

import torch
from torch import Tensor
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

# ## What a matrix product costs
#
# The roofline model [@williams2009roofline] bounds a kernel by two numbers of the
# machine, its arithmetic rate $P$ and its memory bandwidth $B$, and one of the kernel,
# its *arithmetic intensity* $I$: operations per byte moved. It runs at most at
# $\min(P, I \cdot B)$. An H200 does 989 TFLOP/s of dense bfloat16 arithmetic on its
# tensor cores and moves 4.8 TB/s from its HBM, so a kernel needs
# $989 / 4.8 \approx 206$ operations per byte to be limited by arithmetic rather than
# by memory: the *ridge point*.
#
# The whole product, with each input read once and the output written once, in 2-byte
# float16 or bfloat16, has
#
# $$
# I_\text{product} = \frac{2MNK}{2(MK + KN + MN)}
# = \frac{n}{3} \quad (M = N = K = n),
# $$
#
# 1,365 operations per byte at $n = 4096$: far right of the ridge, compute-bound with
# room to spare. But no kernel can hold a 32 MB operand on chip. A program that
# computes one $b_m \times b_n$ tile of $C$ reads a $b_m \times K$ panel of $A$ and a
# $K \times b_n$ panel of $B$ and does $2 b_m b_n K$ operations:
#
# $$
# I_\text{tile} = \frac{2 b_m b_n K}{2 (b_m + b_n) K} = \frac{b_m b_n}{b_m + b_n},
# $$
#
# 64 for a $128 \times 128$ tile and 85 for $128 \times 256$, whatever $K$ is. If every
# program fetched its panels from HBM, even the largest tile that fits in a streaming
# multiprocessor's 228 KB of shared memory would sit at two fifths of the ridge (85 of
# 206), and the tensor cores would wait on memory more than half the time. The missing
# factor has to come from reuse *between* programs: program $(i, j)$ and program
# $(i, j + 1)$ read the same panel of $A$, and if they run at about the same time the
# second finds it in the 50 MB L2 cache that all the multiprocessors share. How much
# sharing happens depends on which programs run together, which is the launch order,
# the subject of the next section.
#
# The same reasoning, one level down, chose the loop order in the
# [pure-Python matrix lesson](../foundations/matrix.md): there the reuse was of rows in
# the CPU's cache, here of tiles in shared memory and L2.
#
# ## The product in plain PyTorch, tile by tile
#
# Before the kernel, the same algorithm in eager PyTorch: the reference whose loops the
# kernel's programs run in parallel. The outer loop is over *programs*, each owning one
# output tile; `tile_coordinates` (below) turns a program's number into its tile. The
# inner loop walks $K$ in steps of $b_k$, adding the product of a $b_m \times b_k$ tile
# of $A$ and a $b_k \times b_n$ tile of $B$ into a float32 accumulator; the tile is
# rounded to the output's dtype once, at the end. Python's slicing clips the tiles at
# the matrix edges, which the kernel will do with masks.


def blocked_matmul(
    a: Tensor,
    b: Tensor,
    block_m: int = 16,
    block_n: int = 16,
    block_k: int = 16,
    group_m: int = 4,
) -> Tensor:
    """`a @ b`, `[M, K] @ [K, N]`, computed tile by tile in the kernel's order with a
    float32 accumulator; the result has `a`'s dtype."""
    M, K = a.shape
    N = b.shape[1]
    c = torch.empty(M, N, dtype=a.dtype, device=a.device)  # [M, N]
    m_tiles, n_tiles = math.ceil(M / block_m), math.ceil(N / block_n)
    for pid in range(m_tiles * n_tiles):
        pid_m, pid_n = tile_coordinates(pid, m_tiles, n_tiles, group_m)
        rows = slice(pid_m * block_m, (pid_m + 1) * block_m)
        cols = slice(pid_n * block_n, (pid_n + 1) * block_n)
        acc = torch.zeros_like(c[rows, cols], dtype=torch.float32)  # [bm, bn]
        for k in range(0, K, block_k):
            a_tile = a[rows, k : k + block_k].float()  # [bm, bk]
            b_tile = b[k : k + block_k, cols].float()  # [bk, bn]
            acc += a_tile @ b_tile
        c[rows, cols] = acc.to(c.dtype)
    return c


# ## The order of the programs
#
# A GPU does not run all of a kernel's programs at once. An H200 has 132 streaming
# multiprocessors; with large tiles each holds one or two programs, so programs run in
# *waves* of a few hundred, in the order of their number. Number them row-major, as
# `pid_m = pid // n_tiles, pid_n = pid % n_tiles`, and a wave of $W$ programs spans
# whole rows of tiles: at $4096^3$ with $128 \times 128$ tiles there are 32 tiles to a
# row, and the first 132 programs touch 5 panels of $A$ and all 32 panels of $B$.
#
# *Grouped* order numbers the tiles column by column inside groups of `GROUP_M` rows:
# the first `GROUP_M` programs go down the first column of the group, the next
# `GROUP_M` down the second, and only after the group's last column does numbering move
# to the next `GROUP_M` rows. A wave of 132 programs with `GROUP_M = 8` then covers 8
# rows and $\lceil 132 / 8 \rceil = 17$ columns: 25 panels instead of 37, for the same
# 132 tiles of output. Every panel is $K / b_k$ tiles long, and a panel that two
# programs of one wave share is read from HBM once if the L2 keeps it while the wave
# walks $K$ in step. The last group is cut short when `GROUP_M` does not divide the
# number of tile rows, hence the `min`.


def tile_coordinates(
    pid: int, m_tiles: int, n_tiles: int, group_m: int
) -> tuple[int, int]:
    """The `(row, column)` of the output tile that program `pid` computes in grouped
    order; `group_m=1` is row-major order."""
    programs_per_group = group_m * n_tiles
    group = pid // programs_per_group
    first_row = group * group_m
    rows_in_group = min(m_tiles - first_row, group_m)
    pid_m = first_row + (pid % programs_per_group) % rows_in_group
    pid_n = (pid % programs_per_group) // rows_in_group
    return pid_m, pid_n


# With `GROUP_M = 1` every group is one row of tiles, and the formula is row-major
# order: the same function covers both orders the prose compares.
#
# Counting the traffic of an order needs a model of the cache, and the simplest one
# that captures the argument is this: programs run in waves of `wave` consecutive
# numbers; within a wave, every panel of $A$ and $B$ that some program reads comes
# from HBM once; nothing survives from one wave to the next. Then each wave costs its
# distinct rows times $K / b_k$ tiles of $A$ and its distinct columns times $K / b_k$
# tiles of $B$. Two bounds frame the count: *no reuse* (every program reads its two
# panels from HBM, the tile intensity above) and *each input once* (the whole
# product's intensity). The model ignores that programs drift out of step and that
# the L2 is split in two halves on an H100 or H200; it is a count that explains the
# direction of the effect, and `gpu_report` measures its size.
#
# What the demo counts, for a $4096^3$ float16 product in $128 \times 128 \times 64$
# tiles and waves of 132 programs (intensities include the 34 MB written for $C$):
#
# | order | MB read from HBM | FLOP per byte |
# | --- | --- | --- |
# | no reuse | 2,147 | 63 |
# | row-major (`GROUP_M = 1`) | 309 | 401 |
# | `GROUP_M = 4` | 324 | 384 |
# | `GROUP_M = 8` | 231 | 520 |
# | `GROUP_M = 16` | 224 | 533 |
# | each input once | 67 | 1,365 |
#
# Two things stand out. Grouping in 4 rows is *worse* than row-major: a group of
# 4 rows is 128 programs, fewer than a wave, so each wave still sweeps every column
# and now spans two groups' rows as well. Grouping pays once a group holds more than a
# wave, and a wave's footprint is smallest when it is square, $\text{GROUP\_M}
# \approx \sqrt{132} \approx 11$. And at this size both orders clear the ridge of 206
# FLOP per byte: the L2 turns a tile's 63 into several hundred either way. The order
# starts to decide the roofline for wider matrices: at $16384^3$ a row of tiles is 128
# programs, a row-major wave sweeps all 128 columns, and the count falls to 129 FLOP
# per byte, below the ridge, while `GROUP_M = 8` keeps 625.


def hbm_traffic(
    M: int,
    N: int,
    K: int,
    block_m: int,
    block_n: int,
    block_k: int,
    group_m: int,
    wave: int,
    itemsize: int = 2,
) -> dict[str, int]:
    """Bytes read from HBM by a tiled product under the wave model: for this order,
    with no reuse, and with each input read once; and the bytes of the output, written
    once in every case."""
    m_tiles, n_tiles = math.ceil(M / block_m), math.ceil(N / block_n)
    k_tiles = math.ceil(K / block_k)
    a_tile, b_tile = block_m * block_k * itemsize, block_k * block_n * itemsize
    programs = m_tiles * n_tiles
    loaded = 0
    for start in range(0, programs, wave):
        tiles = [
            tile_coordinates(pid, m_tiles, n_tiles, group_m)
            for pid in range(start, min(start + wave, programs))
        ]
        rows = len({pid_m for pid_m, _ in tiles})
        cols = len({pid_n for _, pid_n in tiles})
        loaded += k_tiles * (rows * a_tile + cols * b_tile)
    return {
        "this order": loaded,
        "no reuse": programs * k_tiles * (a_tile + b_tile),
        "each input once": k_tiles * (m_tiles * a_tile + n_tiles * b_tile),
        "output written": M * N * itemsize,
    }


# ## The kernel
#
# One program computes one tile. It starts from its number, `tl.program_id(0)`, and
# finds its tile with the arithmetic of `tile_coordinates`. Then it builds two blocks
# of pointers: `a_ptrs`, a `[BLOCK_M, BLOCK_K]` grid of addresses
# $a + i \cdot s_{am} + k \cdot s_{ak}$, and `b_ptrs`, `[BLOCK_K, BLOCK_N]`. The strides
# come from the caller, so a transposed or otherwise strided operand is read where it
# lies, with no copy: for $A^\top$ stored row-major, $s_{am} = 1$ and $s_{ak} = M$.
#
# The loop walks $K$: load a tile of each, `tl.dot` them into the accumulator, advance
# both pointer blocks by `BLOCK_K` along $K$. `tl.dot` is where the tensor cores work;
# Triton stages the loads through shared memory and, with `num_stages > 1`, issues the
# next iterations' loads while the current one multiplies, hiding HBM latency behind
# arithmetic.
#
# Three kinds of edge need care when a size is not a multiple of its block:
#
# - Along $K$, the last step reads past the end: the `mask` on `k` turns those loads
#   off and `other=0.0` makes them zeros, which add nothing to the sum.
# - Along $M$ and $N$, a program at the edge owns rows or columns that do not exist.
#   Instead of masking its loads, the row and column indices wrap around with `% M` and
#   `% N`, as in Triton's own tutorial: the loads stay inside the matrix (reading
#   duplicate rows), the inner loop has no mask on those axes, and the junk rows of the
#   accumulator are dropped by the mask on the final store.
# - The store masks both axes with the unwrapped indices.
#
# The accumulator is float32 whatever the inputs, as mixed-precision training
# prescribes [@micikevicius2018mixed]: a float16 sum over $K = 4096$ terms would lose
# the small ones entirely once the partial sum grows (the
# [mixed-precision lesson](../systems/mixed_precision.md) shows the same effect in a
# weight update). One `.to(...)` rounds the finished tile to the output's dtype on the
# store. `PRECISION` is the `input_precision` of `tl.dot`: `"ieee"` for float32
# inputs, so that they are multiplied exactly as `torch.matmul` does by default, rather
# than rounded to TF32's 10-bit mantissa on the tensor cores; half-precision inputs
# are exact in either mode.


@triton.jit
def matmul_kernel(
    a_ptr,  # [M, K], any strides
    b_ptr,  # [K, N], any strides
    c_ptr,  # [M, N], written
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    stride_cm,
    stride_cn,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # the grouped order of `tile_coordinates`
    pid = tl.program_id(0)
    m_tiles = tl.cdiv(M, BLOCK_M)
    n_tiles = tl.cdiv(N, BLOCK_N)
    programs_per_group = GROUP_M * n_tiles
    first_row = (pid // programs_per_group) * GROUP_M
    rows_in_group = min(m_tiles - first_row, GROUP_M)
    pid_m = first_row + (pid % programs_per_group) % rows_in_group
    pid_n = (pid % programs_per_group) // rows_in_group

    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M  # [BLOCK_M], wrapped
    cols = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N  # [BLOCK_N], wrapped
    k = tl.arange(0, BLOCK_K)  # [BLOCK_K]
    a_ptrs = a_ptr + rows[:, None] * stride_am + k[None, :] * stride_ak
    b_ptrs = b_ptr + k[:, None] * stride_bk + cols[None, :] * stride_bn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - step * BLOCK_K
        a = tl.load(a_ptrs, mask=k[None, :] < k_left, other=0.0)  # [BLOCK_M, BLOCK_K]
        b = tl.load(b_ptrs, mask=k[:, None] < k_left, other=0.0)  # [BLOCK_K, BLOCK_N]
        acc = tl.dot(a, b, acc, input_precision=PRECISION)  # [BLOCK_M, BLOCK_N]
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    out_rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # unwrapped, for the mask
    out_cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    c_ptrs = c_ptr + out_rows[:, None] * stride_cm + out_cols[None, :] * stride_cn
    mask = (out_rows[:, None] < M) & (out_cols[None, :] < N)
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask)


# ## Choosing the blocks: autotuning on a GPU only
#
# The best tile shape depends on the GPU and the problem. Bigger tiles raise the
# tile's intensity, $b_m b_n / (b_m + b_n)$, but need more registers for the
# accumulator and more shared memory per pipeline stage
# ($(b_m + b_n) \cdot b_k \cdot 2$ bytes in float16: 48 KB for $128 \times 256 \times
# 64$, so four stages fit in an H200's 228 KB and five do not), and fewer, larger
# programs fill the 132 multiprocessors less evenly on small problems.
# `triton.autotune` times each of a handful of configurations the first time the
# kernel meets a new `(M, N, K)` (and new dtypes), and keeps the fastest. The
# candidates are those of Triton's matrix-multiplication tutorial for NVIDIA GPUs.
#
# Autotuning times kernels on the device, so it cannot run in the interpreter. The
# kernel is defined once, above; on a machine with CUDA it is also wrapped, once, as
# `tuned_matmul_kernel`, and `matmul` uses the wrapped one for CUDA tensors. On a CPU
# it launches the bare kernel with `CPU_CONFIG`: $16 \times 16$ tiles keep the
# interpreter, whose cost is per program and per step, fast on small products.
# Either can be overridden by passing `config`, which `gpu_report` uses to time the
# autotuner's winner in row-major order.

CPU_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 4}
GPU_CONFIGS = [
    triton.Config(
        {"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8},
        num_stages=stages,
        num_warps=warps,
    )
    for m, n, k, stages, warps in [
        (128, 256, 64, 3, 8),
        (256, 128, 64, 3, 8),
        (128, 128, 64, 4, 8),
        (128, 128, 32, 4, 4),
        (64, 256, 32, 4, 4),
        (128, 64, 32, 4, 4),
    ]
]
if torch.cuda.is_available():
    tuned_matmul_kernel = triton.autotune(configs=GPU_CONFIGS, key=["M", "N", "K"])(
        matmul_kernel
    )

# ## Checking the operands
#
# The kernel reads raw memory through the strides it is given, so any layout works,
# but a wrong shape or a mixed dtype would produce garbage without a word. The checks
# run before anything is allocated. Two limits are particular to this kernel: its
# offsets are 32-bit integers, so the furthest element of each operand must lie within
# $2^{31}$ elements of its start; and Triton's interpreter multiplies bfloat16 tiles as
# the raw 16-bit integers that hold them (NumPy has no bfloat16), so on a CPU bfloat16
# is refused rather than computed wrongly.

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_operands(function: str, a: object, b: object) -> None:
    """Raise unless `a` `[M, K]` and `b` `[K, N]` are 2-D tensors of one supported dtype
    on one device."""
    for name, value in (("a", a), ("b", b)):
        if not isinstance(value, Tensor):
            raise TypeError(
                f"{function}: {name} must be a torch.Tensor, got {type(value).__name__}"
            )
        if value.ndim != 2:
            raise ValueError(
                f"{function}: {name} must be a 2-D tensor, got shape "
                f"{tuple(value.shape)}"
            )
        if value.dtype not in DTYPES:
            raise TypeError(
                f"{function}: {name} must be float16, bfloat16 or float32, got "
                f"{value.dtype}"
            )
        furthest = sum(
            (size - 1) * stride for size, stride in zip(value.shape, value.stride())
        )
        if furthest >= 2**31:
            raise ValueError(
                f"{function}: {name} spans {furthest + 1} elements; the kernel indexes "
                "with 32-bit integers, so at most 2**31"
            )
    if b.dtype != a.dtype:
        raise TypeError(f"{function}: a is {a.dtype} but b is {b.dtype}; cast one")
    if b.device != a.device:
        raise ValueError(f"{function}: a is on {a.device} but b on {b.device}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(
            f"{function}: a is {a.shape[0]}×{a.shape[1]} but b is "
            f"{b.shape[0]}×{b.shape[1]}; a's columns must equal b's rows"
        )
    if a.dtype == torch.bfloat16 and not a.is_cuda:
        raise TypeError(
            f"{function}: bfloat16 needs a GPU; Triton's interpreter multiplies "
            "bfloat16 tiles as raw 16-bit integers. Use float16 or float32 on a CPU"
        )


# ## Launching
#
# The grid is one-dimensional, one program per output tile, and its size depends on
# the block sizes the autotuner picks, so it is a function of the configuration
# (`meta`) rather than a number. An empty output needs no program at all, and a
# product with $K = 0$ is a matrix of zeros: the loop runs no step and the store writes
# the zero accumulator.


def matmul(a: Tensor, b: Tensor, *, config: dict | None = None) -> Tensor:
    """`a @ b` for `a` `[M, K]` and `b` `[K, N]` in float16, bfloat16 or float32, with
    a float32 accumulator; `config` (block sizes, `GROUP_M`, optionally `num_warps`
    and `num_stages`) replaces the autotuner or `CPU_CONFIG`."""
    check_operands("matmul", a, b)
    M, K = a.shape
    N = b.shape[1]
    c = torch.empty(M, N, dtype=a.dtype, device=a.device)  # [M, N]
    if M == 0 or N == 0:
        return c

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    if config is None and a.is_cuda:
        kernel, config = tuned_matmul_kernel, {}
    else:
        kernel, config = matmul_kernel, config or CPU_CONFIG
    kernel[grid](
        a,
        b,
        c,
        M,
        N,
        K,
        *a.stride(),
        *b.stride(),
        *c.stride(),
        PRECISION="ieee" if a.dtype == torch.float32 else "tf32",
        **config,
    )
    return c


# ## Measuring on a GPU
#
# `gpu_report` times our kernel and `torch.matmul` (cuBLAS) with
# `triton.testing.do_bench`, which runs each for about 100 ms after a warm-up,
# clearing the L2 cache before every run, and here returns the median. A product of
# $n \times n$ matrices is $2n^3$ floating-point operations, so the rate is
# $2n^3 / t$. The ceiling a tiled matmul is judged against is cuBLAS on the same
# product: a well-tiled kernel should reach 90 % of it (`ours / torch`, a ratio of
# rates).
# A third entry runs the autotuner's winning configuration in row-major order
# (`GROUP_M = 1`), the measured counterpart of the count above. The bfloat16 rates are
# also given as a fraction of the device's dense bfloat16 peak, which the driver does
# not report: it comes from NVIDIA's datasheets, for the devices listed below, and the
# entry reads "unknown" for others.

BF16_DENSE_PEAK_TFLOPS = {"H200": 989.4, "H100 80GB HBM3": 989.4, "A100": 312.0}


def gpu_report(size: int = 4096) -> dict[str, float | str]:
    """TFLOP/s of our kernel (autotuned, and its best config in row-major order) and of
    `torch.matmul` on `size`³ products in float16 and bfloat16, on the current GPU."""
    if not torch.cuda.is_available():
        raise RuntimeError("gpu_report needs a CUDA GPU: do_bench times CUDA events")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"gpu_report: size must be a positive int, got {size!r}")
    generator = torch.Generator("cuda").manual_seed(0)
    flops = 2 * size**3
    name = torch.cuda.get_device_name()
    peak = next((p for k, p in BF16_DENSE_PEAK_TFLOPS.items() if k in name), None)
    report: dict[str, float | str] = {"size": size, "device": name}
    for label, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        a, b = (
            torch.randn(size, size, generator=generator, device="cuda", dtype=dtype)
            for _ in range(2)
        )
        matmul(a, b)  # autotunes for this size and dtype
        best = tuned_matmul_kernel.best_config
        row_major = {
            **best.kwargs,
            "GROUP_M": 1,
            "num_warps": best.num_warps,
            "num_stages": best.num_stages,
        }
        times = {
            "ours": triton.testing.do_bench(lambda: matmul(a, b), return_mode="median"),
            "ours, row-major order": triton.testing.do_bench(
                lambda: matmul(a, b, config=row_major), return_mode="median"
            ),
            "torch": triton.testing.do_bench(
                lambda: torch.matmul(a, b), return_mode="median"
            ),
        }
        for entry, ms in times.items():
            report[f"{label} {entry} µs"] = ms * 1e3
            report[f"{label} {entry} TFLOP/s"] = flops / ms / 1e9
        report[f"{label} ours / torch"] = times["torch"] / times["ours"]
        report[f"{label} grouped / row-major"] = (
            times["ours, row-major order"] / times["ours"]
        )
        report[f"{label} best config"] = (
            f"{best.kwargs['BLOCK_M']}×{best.kwargs['BLOCK_N']}×"
            f"{best.kwargs['BLOCK_K']}, GROUP_M {best.kwargs['GROUP_M']}, "
            f"{best.num_warps} warps, {best.num_stages} stages"
        )
    report["bf16 dense peak TFLOP/s"] = peak if peak else "unknown"
    for entry in ("ours", "torch"):
        rate = report[f"bf16 {entry} TFLOP/s"]
        report[f"bf16 {entry} of peak"] = rate / peak if peak else "unknown"
    return report


# ## The example
#
# One product on odd sizes: $17 \times 65$ times $65 \times 33$ in float32. On a CPU,
# with `CPU_CONFIG`, that is $2 \times 3 = 6$ programs, each walking $K$ in 5 steps of
# 16 of which the last has one live column. The dataflow diagram is declared by
# `dataflow` below, not traced: `torch.fx` cannot look inside a Triton kernel.


def example():
    """A small example: `fn(*args)` multiplies a 17×65 by a 65×33 matrix."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(17, 65, generator=generator)
    b = torch.randn(65, 33, generator=generator)
    return matmul, (a, b)


def dataflow(output: Tensor):
    """The operands, the grid of programs with its tiles, and the result, with
    shapes."""
    _, (a, b) = example()
    M, K = a.shape
    N = b.shape[1]
    config = CPU_CONFIG
    programs = triton.cdiv(M, config["BLOCK_M"]) * triton.cdiv(N, config["BLOCK_N"])
    steps = triton.cdiv(K, config["BLOCK_K"])
    tile_a = f"[{config['BLOCK_M']}, {config['BLOCK_K']}] × {steps} steps"
    tile_b = f"[{config['BLOCK_K']}, {config['BLOCK_N']}] × {steps} steps"
    nodes = [
        ("a", f"A [{M}, {K}]"),
        ("b", f"B [{K}, {N}]"),
        ("kernel", f"matmul_kernel\n{programs} programs, grouped order"),
        ("acc", "float32 accumulator\n(registers)"),
        ("c", f"C [{output.shape[0]}, {output.shape[1]}]"),
    ]
    edges = [
        ("a", "kernel", tile_a),
        ("b", "kernel", tile_b),
        ("kernel", "acc", f"tl.dot → [{config['BLOCK_M']}, {config['BLOCK_N']}]"),
        ("acc", "c", "cast, masked store"),
    ]
    return nodes, edges


# ## The demo
#
# On a CPU the kernel runs in the interpreter, so the demo checks small products: the
# shapes in `--check-shapes`, each in float32 and float16, with $B$ given as a
# transposed view, against `torch.matmul`. Float32 errors are stated relative to the
# float64 product, float16 errors in units of float16's last place. Then it counts,
# for the product in `--count-size` and the tiles in `--count-block`, the bytes read
# from HBM in each order under the wave model, and draws the orders and the roofline.
# With `--device cuda` it also prints `gpu_report`.


def check_products(shapes: list[str], device: str) -> dict[str, float]:
    """Largest errors of `matmul` against the float64 product over `shapes`
    (`MxNxK`), float32 relative and float16 in units in the last place."""
    generator = torch.Generator().manual_seed(0)
    errors = {"float32 relative error": 0.0, "float16 error (ulps)": 0.0}
    for shape in tqdm(shapes, desc="checking products", leave=False):
        M, N, K = (int(n) for n in shape.split("x"))
        a = torch.randn(M, K, generator=generator, dtype=torch.float64)
        b_t = torch.randn(N, K, generator=generator, dtype=torch.float64)
        exact = a @ b_t.T  # [M, N]
        ours = matmul(a.float().to(device), b_t.float().to(device).T).cpu().double()
        scale = (a.abs() @ b_t.abs().T).clamp_min(1e-30)  # the error bound's scale
        relative = ((ours - exact).abs() / scale).max().item() if ours.numel() else 0.0
        errors["float32 relative error"] = max(
            errors["float32 relative error"], relative
        )
        a16, b16 = a.half(), b_t.half()
        ours16 = matmul(a16.to(device), b16.to(device).T).cpu().double()
        rounded = (a16.double() @ b16.double().T).half().double()
        ulp = torch.finfo(torch.float16).eps * rounded.abs().clamp_min(2**-14)
        ulps = ((ours16 - rounded).abs() / ulp).max().item() if ours16.numel() else 0.0
        errors["float16 error (ulps)"] = max(errors["float16 error (ulps)"], ulps)
    return errors


def plot_orders(traffic: dict, size: int, block: tuple[int, int, int], wave: int, out):
    fig, axes = figure(panels=3)
    tiles, small_wave, small_group = 9, 9, 3
    for axis, group_m, title in (
        (axes[0], 1, "row-major order"),
        (axes[1], small_group, f"grouped order, GROUP_M = {small_group}"),
    ):
        order = torch.zeros(tiles, tiles)
        for pid in range(tiles * tiles):
            pid_m, pid_n = tile_coordinates(pid, tiles, tiles, group_m)
            order[pid_m, pid_n] = pid
        axis.imshow((order < small_wave).tolist(), cmap="Blues", vmin=0, vmax=1.6)
        for (pid_m, pid_n), pid in zip(
            [(i, j) for i in range(tiles) for j in range(tiles)], order.flatten()
        ):
            axis.text(pid_n, pid_m, str(int(pid)), ha="center", va="center", fontsize=7)
        first = [tile_coordinates(p, tiles, tiles, group_m) for p in range(small_wave)]
        panels = len({m for m, _ in first}) + len({n for _, n in first})
        axis.set_title(f"{title}\nfirst {small_wave} programs read {panels} panels")
        axis.set(xlabel="tile column $j$", ylabel="tile row $i$")
        axis.set_xticks([])
        axis.set_yticks([])
    groups = list(traffic)
    bars = [traffic[g]["this order"] / 1e6 for g in groups]
    axes[2].bar([str(g) for g in groups], bars, color="tab:blue")
    for position, value in enumerate(bars):
        axes[2].annotate(f"{value:.0f}", (position, value), ha="center", va="bottom")
    once = traffic[groups[0]]["each input once"] / 1e6
    axes[2].axhline(once, color="grey", linestyle=":", label="each input once")
    axes[2].legend(loc="upper right")
    axes[2].set(
        xlabel="GROUP_M (1 = row-major)",
        ylabel="MB read from HBM, counted",
        title=f"{size}³, {block[0]}×{block[1]}×{block[2]} tiles, waves of {wave}",
    )
    axes[2].set_ylim(0, 1.3 * max(bars))
    save(
        fig,
        out / "orders.png",
        caption="A count, not a measurement. Left and middle: the program number of "
        f"each output tile on a {tiles}×{tiles} grid of tiles, row-major and grouped "
        f"with GROUP_M = {small_group}, the first {small_wave} programs shaded; the "
        f"panels of A and B that they read are their distinct rows plus columns. "
        f"Right: megabytes of float16 tiles read from HBM by a {size}³ product "
        "for each GROUP_M, if each wave of programs reads every panel it shares "
        "from HBM once and nothing survives between waves.",
    )


def plot_roofline(reads: dict[str, int], flops: int, written: int, out: Path):
    peak, bandwidth = 989.4, 4.8  # H200 datasheet: dense bf16 TFLOP/s, HBM TB/s
    fig, axis = figure()
    intensity = torch.logspace(0, 4, 200)
    roof = torch.minimum(torch.full_like(intensity, peak), intensity * bandwidth)
    axis.plot(intensity.tolist(), roof.tolist(), color="black", label="roofline (H200)")
    axis.axvline(peak / bandwidth, color="grey", linestyle=":")
    for (label, read), marker in zip(reads.items(), "os^Dv"):
        value = flops / (read + written)
        axis.plot(
            value,
            min(peak, value * bandwidth),
            marker,
            markersize=8,
            label=f"{label}: {value:.0f}",
        )
    axis.set(
        xscale="log",
        yscale="log",
        xlabel="arithmetic intensity (FLOP per HBM byte)",
        ylabel="attainable TFLOP/s",
        title="counted intensities of a 4096³ bf16 product",
    )
    axis.legend(fontsize=8, loc="lower right")
    save(
        fig,
        out / "roofline.png",
        caption="A count, not a measurement: the roofline of an H200 from its "
        "datasheet (989 TFLOP/s dense bfloat16, 4.8 TB/s), with the ridge dotted, "
        "and the arithmetic intensities (FLOP per byte, the output's write included) "
        "counted for tiles that each read their panels from HBM, for the whole "
        "product under the wave model in row-major and grouped order, and for the "
        "product with each input read once.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description="A tiled matmul in Triton: check it, count its tile loads per "
        "launch order, and on a GPU time it against cuBLAS.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--check-shapes",
        nargs="+",
        default=["1x1x1", "17x33x65", "40x24x50", "64x48x100"],
        help="MxNxK products checked against torch.matmul",
    )
    parser.add_argument(
        "--count-size",
        type=integer(at_least=1),
        default=4096,
        help="n of the n³ product counted",
    )
    parser.add_argument(
        "--count-block",
        default="128x128x64",
        help="BLOCK_MxBLOCK_NxBLOCK_K of the counted product",
    )
    parser.add_argument(
        "--wave",
        type=integer(at_least=1),
        default=132,
        help="programs running at once (H200: 132 SMs)",
    )
    parser.add_argument(
        "--group-m",
        type=integer(at_least=1),
        nargs="+",
        default=[1, 2, 4, 8, 16],
        help="GROUP_M values counted (1 is row-major)",
    )
    parser.add_argument(
        "--report-size",
        type=integer(at_least=1),
        default=4096,
        help="n of gpu_report (GPU only)",
    )
    parser.add_argument(
        "--threads",
        type=integer(at_least=1),
        default=1,
        help="CPU threads for torch (small tensors)",
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (cpu runs the kernel in Triton's interpreter)",
    )
    parser.add_argument("--out", default="out/matmul", help="folder for the figures")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    metrics: dict[str, float] = {}

    errors = check_products(args.check_shapes, args.device)
    for name, error in errors.items():
        print(f"matmul vs the float64 product, {name}: {error:.2g}")
    metrics.update(errors)

    size = args.count_size
    block = tuple(int(n) for n in args.count_block.split("x"))
    traffic = {
        group_m: hbm_traffic(size, size, size, *block, group_m, args.wave)
        for group_m in tqdm(args.group_m, desc="counting tile loads", leave=False)
    }
    flops = 2 * size**3
    bounds = hbm_traffic(size, size, size, *block, 1, args.wave)
    written = bounds["output written"]
    print(
        f"{size}³ float16 product, {args.count_block} tiles, waves of {args.wave}: "
        f"MB read from HBM (and FLOP per byte, with the {written / 1e6:.1f} MB output)"
    )
    for label, read in (
        ("no reuse", bounds["no reuse"]),
        *((f"GROUP_M = {g}", t["this order"]) for g, t in traffic.items()),
        ("each input once", bounds["each input once"]),
    ):
        intensity = flops / (read + written)
        print(f"  {label:16s} {read / 1e6:8.1f} MB  {intensity:7.1f} FLOP/byte")
    best = min(traffic, key=lambda g: traffic[g]["this order"])
    row_major = bounds["this order"]
    metrics["row-major MB"] = row_major / 1e6
    metrics["grouped MB"] = traffic[best]["this order"] / 1e6
    metrics["row-major / grouped"] = row_major / traffic[best]["this order"]
    print(
        f"  grouped order (GROUP_M = {best}) reads {metrics['row-major / grouped']:.2f}"
        "× less than row-major"
    )
    plot_orders(traffic, size, block, args.wave, out)
    plot_roofline(
        {
            f"one {block[0]}×{block[1]} tile, no reuse": bounds["no reuse"],
            "row-major order": row_major,
            f"grouped, GROUP_M = {best}": traffic[best]["this order"],
            "each input once": bounds["each input once"],
        },
        flops,
        written,
        out,
    )

    if args.device.startswith("cuda"):
        report = gpu_report(args.report_size)
        print(f"\n{report['device']}, {args.report_size}³ products:")
        for name, value in report.items():
            if name not in ("device", "size"):
                shown = value if isinstance(value, str) else f"{value:.3g}"
                print(f"  {name:36s} {shown}")
        metrics.update({f"gpu {k}": v for k, v in report.items()})
    return metrics


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Fuse an activation into the store: give `matmul_kernel` a constexpr
#    `ACTIVATION` and apply `leaky_relu` (or GELU's tanh form) to `acc` before the
#    cast. Check it against `F.leaky_relu(a @ b)` and count the bytes the fusion saves
#    at $4096^3$: what fraction of the product's HBM traffic was the extra pass?
# 2. Count the traffic with `--wave 264` (two programs per multiprocessor, as
#    $128 \times 128$ tiles allow) and with `--count-block 128x256x64`. Which
#    `GROUP_M` is best now, and how close is it to $\sqrt{\text{wave}}$ tiles of
#    rows, counted in the tile's own aspect ratio?
# 3. On a GPU, run `gpu_report(512)` and `gpu_report(16384)`. Which configuration does
#    the autotuner pick at each size, and how does `grouped / row-major` change?
#    Relate it to the $16384^3$ count in the section on launch order.
# 4. For a tall-skinny product ($M = N = 256$, $K = 65536$) only four $128 \times 128$
#    programs exist, and 128 multiprocessors idle. Write *split-K*: a second grid
#    axis splits $K$ into $S$ slices, each program adds its partial tile into
#    float32 `c` with `tl.atomic_add`, and a final cast produces the output. Time it
#    against `matmul` and `torch.matmul`.
