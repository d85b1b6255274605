r"""
---
title: FlashAttention as a Triton kernel
summary: >-
  FlashAttention-2's forward and backward as Triton kernels (online softmax in SRAM,
  the log-sum-exp saved, a preprocess for D = rowsum(dO ⊙ O), one kernel for dK and dV
  and one for dQ), causal or not, wrapped in an autograd Function: checked against
  F.scaled_dot_product_attention, its HBM traffic counted against eager attention,
  and on a GPU its TFLOP/s measured against the bf16 matmul peak and PyTorch's flash
  backend.
time: 5 s
references:
  - key: vaswani2017attention
    authors: [Ashish Vaswani, Noam Shazeer, Niki Parmar, Jakob Uszkoreit, Llion Jones,
      Aidan N. Gomez, Łukasz Kaiser, Illia Polosukhin]
    title: Attention Is All You Need
    year: 2017
    venue: NeurIPS 2017
    arxiv: "1706.03762"
  - key: milakov2018online
    authors: [Maxim Milakov, Natalia Gimelshein]
    title: Online normalizer calculation for softmax
    year: 2018
    venue: arXiv preprint
    arxiv: "1805.02867"
  - key: dao2022flashattention
    authors: [Tri Dao, Daniel Y. Fu, Stefano Ermon, Atri Rudra, Christopher Ré]
    title: "FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness"
    year: 2022
    venue: NeurIPS 2022
    arxiv: "2205.14135"
  - key: dao2023flashattention2
    authors: [Tri Dao]
    title: >-
      FlashAttention-2: Faster Attention with Better Parallelism and Work
      Partitioning
    year: 2023
    venue: arXiv preprint (ICLR 2024)
    arxiv: "2307.08691"
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
worksheet:
  - region: forward_tiles
    hint: >-
      For each block of BLOCK_N keys from start to stop: load K transposed and V
      (masked past n_k if MASKED), score q @ k_t * qk_scale (base 2), set invisible
      scores to -inf if MASKED (past n_k, and after the query if CAUSAL), take the new
      running maximum, exponentiate with exp2 against it, rescale row_sum and acc by
      exp2(old maximum - new maximum), then add the row sums of the probabilities and
      probs @ v. Return acc, row_max and row_sum.
    tests:
      - test_log_sum_exp_matches_torch_logsumexp
      - test_scores_in_the_thousands_stay_finite_and_as_exact_as_sdpa
      - test_matches_sdpa_and_eager_attention
  - region: backward_key_tiles
    hint: >-
      For each block of BLOCK_M queries: load Q, dO, L and D (masked past n_q if
      MASKED), form the transposed scores k @ q^T * qk_scale, mask them as the
      forward does, recompute P^T = exp2(S^T - L * log2(e)), add P^T @ dO into
      grad_v, take dP^T = v @ dO^T and dS^T = P^T * (dP^T - D), and add dS^T @ q
      into grad_k. Return grad_k and grad_v.
    tests:
      - test_cross_attention_with_unequal_lengths_and_a_given_scale
      - test_the_larger_head_dimensions
---

[The FlashAttention algorithm](../transformers/flash_attention.md) derived exact
attention [@vaswani2017attention] tile by tile: the online softmax
[@milakov2018online] merges the tiles of a row with a running maximum $m$ and a running
sum $\ell$, the backward pass recomputes each tile's probabilities from the saved
log-sum-exp $L$, and no $N \times N$ matrix is ever held. Written in plain PyTorch, that
lesson saved the memory but not the time: every tile was a dozen operator calls, and
every one of them wrote its tile of scores to main memory and read it back.

This chapter writes the same algorithm as it is meant to run, as GPU kernels in Triton
[@tillet2019triton], in FlashAttention-2's order [@dao2023flashattention2]. One
*program* owns a block of query rows; it keeps that block, its $m$, $\ell$ and its
output accumulator on chip for the whole loop over the keys, and writes the output once.
The backward pass is three kernels: a small one for $D = \operatorname{rowsum}(dO \odot
O)$, one that owns a block of keys and accumulates $dK$ and $dV$, and one that owns a
block of queries and accumulates $dQ$. A `torch.autograd.Function` joins them, so the
kernels train.

First the count. For one head at $N = 4096$, $d = 128$ in bfloat16, a causal
training step of eager attention moves 800 MiB through the GPU's memory (560 MiB
without the mask), nearly all of it $N \times N$ scores, probabilities and their
gradients, written and read again. The kernels' compulsory traffic, each tensor once,
is 12 MiB; even if no tile of $K$ and $V$ were ever found in the L2 cache it would be
111 MiB. Then the check: outputs and all three gradients against
`F.scaled_dot_product_attention`, on a CPU in Triton's interpreter. And on a GPU, the
measurement: `gpu_report` times the kernels at batch 4, 16 heads, $N = 4096$,
$d = 128$ in bfloat16 against the bf16 matrix-multiplication peak it measures and
against PyTorch's own FlashAttention-2 backend.
"""

import argparse
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from tqdm import tqdm

from annotated.data import integer, integers, torch_device
from annotated.figures import figure, save
from annotated.kernels.softmax import ByteCounter

# Triton compiles a kernel for the GPU when it is first launched. Without a GPU it can
# run the same kernel in its *interpreter*, which executes each program with NumPy on
# the CPU: slow, but exact enough to test against PyTorch. Triton reads the switch,
# `TRITON_INTERPRET`, while it is being imported, so it is set before `import triton`,
# and only when there is no GPU to compile for.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

# ## Attention, and what it costs
#
# For one head with queries $Q \in \mathbb{R}^{N \times d}$, keys $K$ and values $V$
# (the same shape) and the scale $\tau = 1/\sqrt d$,
#
# $$
# \begin{aligned}
# S &= \tau\, Q K^\top, \\
# P &= \operatorname{softmax}(S) \text{ (by rows)}, \\
# O &= P V ,
# \end{aligned}
# $$
#
# and causal attention sets $S_{ij} = -\infty$ for $j > i$. The two products are
# $2 \cdot 2N^2 d$ floating-point operations; the causal mask halves them. The plain
# version, `eager_attention` below, is the [attention lesson's](
# ../transformers/attention.md) formula in four PyTorch calls: the reference the
# kernels are checked against, and the version whose memory traffic we count.


def eager_attention(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: float | None = None
) -> Tensor:
    r"""$\operatorname{softmax}(\tau QK^\top)V$ in eager PyTorch, through the
    $N \times N$ matrix; `q`, `k`, `v` are `[batch, heads, seq, d]`."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale  # [batch, heads, N_q, N_k]
    if causal:
        keep = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v  # [batch, heads, N_q, d]


# ## Where the bytes go
#
# Eager PyTorch runs each of those calls as its own kernel, and each kernel reads its
# inputs from the GPU's main memory (HBM) and writes its output back. The scores are
# $N^2$ numbers per head: the first product writes them, the scaling reads and writes
# them, the mask reads and writes them, the softmax reads them and writes $P$, and the
# second product reads $P$. Autograd keeps $P$ for the backward pass, which reads it
# again and writes $dP$ and $dS$, $N \times N$ each. At $N = 4096$ one such matrix is
# 32 MiB per head in bfloat16, and `ByteCounter` (from the [softmax
# chapter](softmax.md), counting every ATen call's tensor arguments and results) adds
# up 262 MiB per head for the forward pass, eight such matrices, and 298 MiB for the
# backward. The causal mask adds 240 MiB, 800 MiB in all: 80 MiB to build the boolean
# $N \times N$ mask (16 MiB) and 80 MiB for each `masked_fill`, forward and backward,
# which reads the mask and reads and writes an $N \times N$ matrix.
#
# The arithmetic is $4N^2d$ operations forward, so eager attention does about
# $4N^2d / (8 N^2 \cdot 2) = d/4$ operations per byte. The roofline model
# [@williams2009roofline] says a kernel that does $I$ operations per byte runs at most
# at $\min(P, I \cdot B)$ with $P$ the arithmetic peak and $B$ the memory bandwidth; an
# H200's ratio $P / B$ is about $990 \text{ TFLOP/s} / 4.8 \text{ TB/s} \approx 200$
# operations per byte, so at $d = 128$ ($I = 32$) eager attention is memory-bound by a
# factor of six: its scaling, masking and softmax kernels do almost no arithmetic, and
# only its two products run near the peak.
#
# FlashAttention [@dao2022flashattention] keeps the tiles of $S$ and $P$ on chip. The
# traffic it cannot avoid, its *compulsory* traffic, is reading $Q$, $K$, $V$ and
# writing $O$ and one float32 $L$ per row: $4Nd$ numbers, linear in $N$. What it may
# pay on top is re-reading: each program reads all of $K$ and $V$ (causal: the part
# below the diagonal), so over the $\lceil N / B_r \rceil$ query blocks $K$ and $V$
# cross the memory bus $N / B_r$ times, $2N^2 d / B_r$ numbers, unless the L2 cache
# serves them. Were that so, the intensity would be
# $4N^2 d / (2 \cdot 2N^2 d / B_r) = B_r$ operations per byte in bfloat16, 128 for
# $B_r = 128$: below the H200's 200, memory-bound by a factor of 1.6. But the cache
# does serve them: the programs of one head run at the same time (the query block is
# the grid's fastest axis), and one head's $K$ and $V$, 2 MiB at $N = 4096$,
# $d = 128$, fit in an H200's 50 MB L2 many times over. With the cache the kernel is
# compute-bound, and the ceiling to compare it with is the GPU's dense bf16
# matrix-multiplication rate, which `gpu_report` measures. FlashAttention-2 reaches
# 50–73 % of the A100's theoretical peak [@dao2023flashattention2]; this project's
# target is at least 50 % of the measured matmul rate on an H200.
#
# The two functions below do the counting: `eager_traffic` on PyTorch's dispatcher, on
# the `meta` device where tensors have shapes and no data, and `flash_traffic` by
# walking the kernels' loops below block by block.


def eager_traffic(
    n: int, d: int, dtype: torch.dtype = torch.bfloat16, causal: bool = False
) -> dict[str, int]:
    """HBM bytes of `eager_attention` for one head, forward and backward, counted on
    the dispatcher."""

    def leaf():
        return torch.empty(1, 1, n, d, dtype=dtype, device="meta", requires_grad=True)

    q, k, v = leaf(), leaf(), leaf()
    with ByteCounter() as forward:
        out = eager_attention(q, k, v, causal)
    with ByteCounter() as backward:
        torch.autograd.grad(out, (q, k, v), torch.empty_like(out))
    return {"forward bytes": forward.bytes, "backward bytes": backward.bytes}


def visited_tiles(n_q: int, n_k: int, rows: int, cols: int, causal: bool) -> int:
    """How many `rows × cols` tiles of the `n_q × n_k` score matrix a pass computes:
    causal skips those wholly above the diagonal."""
    count = 0
    for row in range(0, n_q, rows):
        for col in range(0, n_k, cols):
            if not causal or col <= min(row + rows, n_q) - 1:
                count += 1
    return count


def flash_traffic(
    n: int,
    d: int,
    dtype: torch.dtype = torch.bfloat16,
    causal: bool = False,
    block_m: int = 128,
    block_n: int = 64,
) -> dict[str, int]:
    """HBM bytes of our kernels for one head: every load and store counted
    (no cache reuse), and the compulsory traffic (each tensor once)."""
    item, lse = dtype.itemsize, 4  # L and D are float32
    rows = n * d * item  # one [N, d] tensor
    # forward: a program reads its Q block once and a K and a V tile per tile it visits
    forward_tiles = visited_tiles(n, n, block_m, block_n, causal)
    forward = 2 * rows + n * lse + forward_tiles * 2 * block_n * d * item
    # preprocess: read O and dO, write D
    preprocess = 2 * rows + n * lse
    # dK, dV: a program keeps a K and a V block of block_m keys, and reads Q, dO, L and
    # D for each block of block_n queries it visits
    kv_tiles = visited_tiles(n, n, block_n, block_m, causal)
    key_value = 4 * rows + kv_tiles * block_n * (2 * d * item + 2 * lse)
    # dQ: a program keeps Q, dO, L, D, writes dQ, and reads K and V per visited tile
    query = 3 * rows + 2 * n * lse + forward_tiles * 2 * block_n * d * item
    return {
        "forward bytes": forward,
        "backward bytes": preprocess + key_value + query,
        "forward compulsory bytes": 4 * rows + n * lse,
        "backward compulsory bytes": 8 * rows + n * lse + 3 * n * lse,
    }


# Note the last line: the backward pass must read $Q$, $K$, $V$, $O$, $dO$ and $L$ and
# write $dQ$, $dK$, $dV$ (eight $[N, d]$ tensors and $L$), and $D$ is written once and
# read twice, once by each of the two gradient kernels.
#
# ## SRAM: how large a tile fits
#
# A streaming multiprocessor (SM) of an H100 or H200 has 228 KiB of shared memory
# (SRAM) and a 256 KiB register file, shared by the programs it runs. A forward program
# holds its $Q$ block, $B_r \times d$, and as many $K$ and $V$ tiles,
# $B_c \times d$ each, as the software pipeline keeps in flight (`num_stages`: while
# the tensor cores work on one tile, the next ones are being loaded). In registers it
# holds the float32 accumulator $\tilde O$, $B_r \times d$, the tile of scores,
# $B_r \times B_c$, and $m$, $\ell$. At $B_r = 128$, $B_c = 64$, $d = 128$, bfloat16
# and three stages that is $32 + 3 \cdot 32 = 128$ KiB of SRAM and 97 KiB of
# registers: one program per SM. $d = 256$ would need twice as much and no longer
# fits with three stages; that is why head dimensions above 128 need smaller tiles
# and run slower in every FlashAttention.


def sram_bytes(
    block_m: int,
    block_n: int,
    d: int,
    dtype: torch.dtype = torch.bfloat16,
    stages: int = 3,
) -> dict[str, int]:
    """Bytes a forward program keeps on chip: operand tiles in shared memory and the
    float32 accumulator, scores and statistics in registers."""
    return {
        "shared": (block_m * d + stages * 2 * block_n * d) * dtype.itemsize,
        "registers": (block_m * d + block_m * block_n + 2 * block_m) * 4,
    }


# ## The forward kernel
#
# One program per block of `BLOCK_M` query rows of one head: the launch grid is
# $\lceil N / B_r \rceil \times (\text{batch} \cdot \text{heads})$, and
# `tl.program_id(1)` picks the head. Tensors are contiguous
# `[batch, heads, seq, d]`, so head `h`'s rows start at `h * seq * d`.
#
# The inner loop, `forward_tiles`, is the online softmax of [the algorithm
# lesson](../transformers/flash_attention.md#flash-forward) on one tile at a time:
#
# $$
# \begin{aligned}
# m' &= \max(m, \operatorname{rowmax} S_{ij}), \\
# \alpha &= e^{m - m'}, \quad \tilde P = e^{S_{ij} - m'}, \\
# \ell &\leftarrow \alpha \ell + \operatorname{rowsum} \tilde P, \\
# \tilde O &\leftarrow \operatorname{diag}(\alpha)\, \tilde O + \tilde P V_j .
# \end{aligned}
# $$
#
# Two details are the GPU's. Exponentials are computed as powers of two:
# $e^x = 2^{x \log_2 e}$, and `exp2` is one hardware instruction, so the kernel folds
# $\log_2 e$ into the scale once ($\tau \log_2 e$, `qk_scale`) and works in base 2
# throughout; $m$ is then in base-2 units and $L = (m + \log_2 \ell) \ln 2$ is turned
# back into natural units when it is stored. And $\tilde P$ is cast to the inputs'
# type before the second product, so that both products run on the tensor cores in
# bf16 or fp16 with a float32 accumulator, as FlashAttention does.
#
# `tl.dot` takes `input_precision`: on a GPU float32 operands would otherwise be
# rounded to TF32 (a 10-bit mantissa). For float32 inputs the kernels ask for `"ieee"`,
# exact float32 products, which is what the tests compare against and what the
# interpreter computes anyway; half-precision operands ignore it.
#
# Which tiles need a mask: the loop is called twice, once over the tiles that need
# none (`MASKED=False`: no comparison, no `where`, the fast path that most tiles take)
# and once over the rest. Non-causal, the masked tiles are the ragged last block of
# keys when $B_c$ does not divide $N_k$: keys past the end read zeros and get score
# $-\infty$. Causal, the program for query block $i$ computes keys
# $[0, i B_r)$ unmasked, since each of those keys comes before each of its queries,
# then the keys $[i B_r, \min((i+1) B_r, N))$ of the diagonal with the mask
# $j \le i$, and never the keys after them: the tiles above the diagonal are skipped,
# not computed and masked. This needs $B_c$ to divide $B_r$. A row's first tile always
# contains key 0, which every query sees, so $m$ is finite after it and
# $e^{-\infty - m}$ is $0$, never NaN.


@triton.jit
def forward_tiles(
    acc,  # [BLOCK_M, HEAD_DIM] float32: Õ
    row_max,  # [BLOCK_M] float32: m, base 2
    row_sum,  # [BLOCK_M] float32: ℓ
    q,  # [BLOCK_M, HEAD_DIM], input dtype
    k_ptr,  # this head's K, [n_k, HEAD_DIM]
    v_ptr,  # this head's V, [n_k, HEAD_DIM]
    rows,  # [BLOCK_M] query positions
    start,
    stop,
    n_k,
    qk_scale,  # τ·log2(e)
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PRECISION: tl.constexpr,
):
    dims = tl.arange(0, HEAD_DIM)
    for key_start in range(start, stop, BLOCK_N):
        cols = key_start + tl.arange(0, BLOCK_N)  # [BLOCK_N] key positions
        k_t_ptrs = k_ptr + cols[None, :] * HEAD_DIM + dims[:, None]  # Kᵀ [D, BLOCK_N]
        v_ptrs = v_ptr + cols[:, None] * HEAD_DIM + dims[None, :]  # [BLOCK_N, D]
        if MASKED:
            k_t = tl.load(k_t_ptrs, mask=cols[None, :] < n_k, other=0.0)
            v = tl.load(v_ptrs, mask=cols[:, None] < n_k, other=0.0)
        else:
            k_t = tl.load(k_t_ptrs)
            v = tl.load(v_ptrs)
        scores = tl.dot(q, k_t, input_precision=PRECISION) * qk_scale  # [M, N]
        if MASKED:
            visible = cols[None, :] < n_k
            if CAUSAL:
                visible = visible & (cols[None, :] <= rows[:, None])
            scores = tl.where(visible, scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, 1))  # m'
        probs = tl.exp2(scores - new_max[:, None])  # P̃: [BLOCK_M, BLOCK_N]
        alpha = tl.exp2(row_max - new_max)  # e^{m - m'}: [BLOCK_M]
        row_sum = alpha * row_sum + tl.sum(probs, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(probs.to(v.dtype), v, acc, input_precision=PRECISION)
        row_max = new_max
    return acc, row_max, row_sum


# The kernel sets up the program's block, runs the two loops, and divides by $\ell$
# once, at the end: the one rescale of FlashAttention-2's forward. It stores $O$ in the
# inputs' dtype and $L$ in float32, one number per row, which is all the backward pass
# will need besides $Q$, $K$, $V$ and $O$. Rows past the end of a ragged last block
# read zeros, compute harmless finite numbers, and are not stored.


@triton.jit
def attention_forward_kernel(
    q_ptr,  # [batch*heads, n_q, HEAD_DIM]
    k_ptr,  # [batch*heads, n_k, HEAD_DIM]
    v_ptr,  # [batch*heads, n_k, HEAD_DIM]
    out_ptr,  # [batch*heads, n_q, HEAD_DIM], written
    lse_ptr,  # [batch*heads, n_q] float32, written: L
    n_q,
    n_k,
    qk_scale,
    CAUSAL: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    block = tl.program_id(0)
    head = tl.program_id(1).to(tl.int64)  # 64-bit: batch·heads·N·d may pass 2**31
    q_ptr += head * n_q * HEAD_DIM
    out_ptr += head * n_q * HEAD_DIM
    k_ptr += head * n_k * HEAD_DIM
    v_ptr += head * n_k * HEAD_DIM
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    dims = tl.arange(0, HEAD_DIM)
    tile = rows[:, None] * HEAD_DIM + dims[None, :]  # [BLOCK_M, HEAD_DIM] offsets
    q = tl.load(q_ptr + tile, mask=rows[:, None] < n_q, other=0.0)
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    if CAUSAL:  # n_q == n_k
        unmasked_stop = block * BLOCK_M  # keys before the block's first query
        stop = tl.minimum(unmasked_stop + BLOCK_M, n_k)  # through the diagonal
    else:
        unmasked_stop = (n_k // BLOCK_N) * BLOCK_N  # whole key blocks
        stop = n_k
    acc, row_max, row_sum = forward_tiles(
        acc,
        row_max,
        row_sum,
        q,
        k_ptr,
        v_ptr,
        rows,
        0,
        unmasked_stop,
        n_k,
        qk_scale,
        False,
        CAUSAL,
        BLOCK_N,
        HEAD_DIM,
        PRECISION,
    )
    acc, row_max, row_sum = forward_tiles(
        acc,
        row_max,
        row_sum,
        q,
        k_ptr,
        v_ptr,
        rows,
        unmasked_stop,
        stop,
        n_k,
        qk_scale,
        True,
        CAUSAL,
        BLOCK_N,
        HEAD_DIM,
        PRECISION,
    )
    out = acc / row_sum[:, None]  # the one rescale
    lse = (row_max + tl.log2(row_sum)) * 0.6931471805599453  # L = (m + log2 ℓ)·ln 2
    tl.store(out_ptr + tile, out.to(out_ptr.dtype.element_ty), mask=rows[:, None] < n_q)
    tl.store(lse_ptr + head * n_q + rows, lse, mask=rows < n_q)


# ## The backward pass
#
# From [the algorithm lesson](../transformers/flash_attention.md#flash-backward),
# with $P_{ij} = e^{S_{ij} - L_i}$ recomputed from the saved $L$:
#
# $$
# \begin{aligned}
# dV &= P^\top dO, \quad dP = dO\, V^\top, \\
# dS &= P \odot (dP - D), \\
# dQ &= \tau\, dS\, K, \quad dK = \tau\, dS^\top Q,
# \end{aligned}
# $$
#
# with $D_i = dO_i \cdot O_i$. The first kernel computes $D$, one float32 per row: it
# reads $O$ and $dO$ once, where every tile of the later kernels would otherwise need
# the whole rows.


@triton.jit
def attention_backward_preprocess_kernel(
    out_ptr,  # [batch*heads, n_q, HEAD_DIM]
    grad_out_ptr,  # [batch*heads, n_q, HEAD_DIM]
    delta_ptr,  # [batch*heads, n_q] float32, written: D
    n_q,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    head = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    tile = head * n_q * HEAD_DIM + rows[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)
    inside = rows[:, None] < n_q
    out = tl.load(out_ptr + tile, mask=inside, other=0.0).to(tl.float32)
    grad_out = tl.load(grad_out_ptr + tile, mask=inside, other=0.0).to(tl.float32)
    tl.store(delta_ptr + head * n_q + rows, tl.sum(out * grad_out, 1), mask=rows < n_q)


# $dK_j$ and $dV_j$ are sums over query rows, $dQ_i$ a sum over key columns: no single
# loop order writes all three once. FlashAttention-2 [@dao2023flashattention2] gives
# each program a block of keys, loops over the query blocks, writes $dK_j$ and $dV_j$
# once at the end, and adds each tile's share of $dQ_i$ into a float32 buffer in main
# memory with atomic additions. We take the other route, that of Triton's own fused
# attention tutorial: a second kernel in which each program owns a block of queries
# and loops over the keys, so that every gradient is accumulated in registers and
# written once. It costs recomputation: the $dQ$ kernel computes $S$ and $dP$ again,
# two more products per tile, seven instead of five. What it buys is that nothing is
# written twice: no float32 $dQ$ buffer to zero, accumulate into with
# $N / B_c$ read-modify-writes per element and convert at the end, and gradients that
# are bitwise reproducible, since atomic additions land in whatever order the programs
# reach them and floating-point addition is not associative. It also lets
# `triton.autotune` rerun any kernel freely, which an accumulating kernel forbids.
#
# The key-block kernel works on transposed tiles, $S^\top_{ji} = \tau K_j Q_i^\top$,
# so that its rows are its keys; its masked tiles are the diagonal (causal, queries
# $[j B_c, (j+1) B_c)$) and the ragged last block of queries, where rows past the end
# get score $-\infty$, so probability 0, and add nothing. (Masking the scores before
# the exponential, not the probabilities after it, also keeps a hidden score far above
# $L$ from overflowing to infinity on its way to being discarded.)


@triton.jit
def backward_key_tiles(
    grad_k,  # [BLOCK_N, HEAD_DIM] float32
    grad_v,  # [BLOCK_N, HEAD_DIM] float32
    k,  # [BLOCK_N, HEAD_DIM], this program's keys
    v,  # [BLOCK_N, HEAD_DIM]
    q_ptr,  # this head's Q, [n_q, HEAD_DIM]
    grad_out_ptr,  # this head's dO
    lse_ptr,  # this head's L, [n_q]
    delta_ptr,  # this head's D, [n_q]
    cols,  # [BLOCK_N] key positions
    start,
    stop,
    n_q,
    qk_scale,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PRECISION: tl.constexpr,
):
    dims = tl.arange(0, HEAD_DIM)
    for query_start in range(start, stop, BLOCK_M):
        rows = query_start + tl.arange(0, BLOCK_M)  # [BLOCK_M] query positions
        tile = rows[:, None] * HEAD_DIM + dims[None, :]  # [BLOCK_M, HEAD_DIM]
        if MASKED:
            q = tl.load(q_ptr + tile, mask=rows[:, None] < n_q, other=0.0)
            grad_out = tl.load(grad_out_ptr + tile, mask=rows[:, None] < n_q, other=0.0)
            lse = tl.load(lse_ptr + rows, mask=rows < n_q, other=0.0)
            delta = tl.load(delta_ptr + rows, mask=rows < n_q, other=0.0)
        else:
            q = tl.load(q_ptr + tile)
            grad_out = tl.load(grad_out_ptr + tile)
            lse = tl.load(lse_ptr + rows)
            delta = tl.load(delta_ptr + rows)
        scores_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale
        if MASKED:
            visible = rows[None, :] < n_q
            if CAUSAL:
                visible = visible & (cols[:, None] <= rows[None, :])
            scores_t = tl.where(visible, scores_t, float("-inf"))
        probs_t = tl.exp2(scores_t - lse[None, :] * 1.4426950408889634)  # Pᵀ: [N, M]
        grad_v = tl.dot(
            probs_t.to(grad_out.dtype), grad_out, grad_v, input_precision=PRECISION
        )
        grad_probs_t = tl.dot(v, tl.trans(grad_out), input_precision=PRECISION)  # dPᵀ
        grad_scores_t = probs_t * (grad_probs_t - delta[None, :])  # dSᵀ: [N, M]
        grad_k = tl.dot(grad_scores_t.to(q.dtype), q, grad_k, input_precision=PRECISION)
    return grad_k, grad_v


@triton.jit
def attention_backward_kv_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    grad_out_ptr,
    lse_ptr,
    delta_ptr,
    grad_k_ptr,  # [batch*heads, n_k, HEAD_DIM], written
    grad_v_ptr,  # [batch*heads, n_k, HEAD_DIM], written
    n_q,
    n_k,
    scale,  # τ
    qk_scale,  # τ·log2(e)
    CAUSAL: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,  # queries per tile (streamed)
    BLOCK_N: tl.constexpr,  # keys per program (resident)
    PRECISION: tl.constexpr,
):
    block = tl.program_id(0)
    head = tl.program_id(1).to(tl.int64)
    q_ptr += head * n_q * HEAD_DIM
    grad_out_ptr += head * n_q * HEAD_DIM
    lse_ptr += head * n_q
    delta_ptr += head * n_q
    cols = block * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    tile = head * n_k * HEAD_DIM + cols[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)
    inside = cols[:, None] < n_k
    k = tl.load(k_ptr + tile, mask=inside, other=0.0)
    v = tl.load(v_ptr + tile, mask=inside, other=0.0)
    grad_k = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    grad_v = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    if CAUSAL:  # queries before the block's first key see none of it
        diagonal_start = block * BLOCK_N
        diagonal_stop = tl.minimum(diagonal_start + BLOCK_N, n_q)
    else:
        diagonal_start = 0
        diagonal_stop = 0
    whole_stop = (n_q // BLOCK_M) * BLOCK_M  # whole query blocks
    grad_k, grad_v = backward_key_tiles(
        grad_k,
        grad_v,
        k,
        v,
        q_ptr,
        grad_out_ptr,
        lse_ptr,
        delta_ptr,
        cols,
        diagonal_start,
        diagonal_stop,
        n_q,
        qk_scale,
        True,
        CAUSAL,
        BLOCK_M,
        HEAD_DIM,
        PRECISION,
    )
    grad_k, grad_v = backward_key_tiles(
        grad_k,
        grad_v,
        k,
        v,
        q_ptr,
        grad_out_ptr,
        lse_ptr,
        delta_ptr,
        cols,
        diagonal_stop,
        whole_stop,
        n_q,
        qk_scale,
        False,
        CAUSAL,
        BLOCK_M,
        HEAD_DIM,
        PRECISION,
    )
    grad_k, grad_v = backward_key_tiles(
        grad_k,
        grad_v,
        k,
        v,
        q_ptr,
        grad_out_ptr,
        lse_ptr,
        delta_ptr,
        cols,
        tl.maximum(whole_stop, diagonal_stop),
        n_q,
        n_q,
        qk_scale,
        True,
        CAUSAL,
        BLOCK_M,
        HEAD_DIM,
        PRECISION,
    )
    out = grad_k_ptr.dtype.element_ty
    tl.store(grad_k_ptr + tile, (grad_k * scale).to(out), mask=inside)
    tl.store(grad_v_ptr + tile, grad_v.to(out), mask=inside)


# The query-block kernel has the forward kernel's shape: the same program grid, the
# same unmasked and masked key ranges, and $P$ recomputed from $L$ instead of the
# running maximum.


@triton.jit
def backward_query_tiles(
    grad_q,  # [BLOCK_M, HEAD_DIM] float32
    q,  # [BLOCK_M, HEAD_DIM], this program's queries
    grad_out,  # [BLOCK_M, HEAD_DIM]
    lse,  # [BLOCK_M] float32
    delta,  # [BLOCK_M] float32
    k_ptr,
    v_ptr,
    rows,
    start,
    stop,
    n_k,
    qk_scale,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PRECISION: tl.constexpr,
):
    dims = tl.arange(0, HEAD_DIM)
    for key_start in range(start, stop, BLOCK_N):
        cols = key_start + tl.arange(0, BLOCK_N)
        t_ptrs = cols[None, :] * HEAD_DIM + dims[:, None]  # [HEAD_DIM, BLOCK_N]
        if MASKED:
            k_t = tl.load(k_ptr + t_ptrs, mask=cols[None, :] < n_k, other=0.0)
            v_t = tl.load(v_ptr + t_ptrs, mask=cols[None, :] < n_k, other=0.0)
        else:
            k_t = tl.load(k_ptr + t_ptrs)
            v_t = tl.load(v_ptr + t_ptrs)
        scores = tl.dot(q, k_t, input_precision=PRECISION) * qk_scale  # [M, N]
        if MASKED:
            visible = cols[None, :] < n_k
            if CAUSAL:
                visible = visible & (cols[None, :] <= rows[:, None])
            scores = tl.where(visible, scores, float("-inf"))
        probs = tl.exp2(scores - lse[:, None] * 1.4426950408889634)  # P
        grad_probs = tl.dot(grad_out, v_t, input_precision=PRECISION)  # dP: [M, N]
        grad_scores = probs * (grad_probs - delta[:, None])  # dS
        grad_q = tl.dot(
            grad_scores.to(k_t.dtype), tl.trans(k_t), grad_q, input_precision=PRECISION
        )
    return grad_q


@triton.jit
def attention_backward_q_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    grad_out_ptr,
    lse_ptr,
    delta_ptr,
    grad_q_ptr,  # [batch*heads, n_q, HEAD_DIM], written
    n_q,
    n_k,
    scale,
    qk_scale,
    CAUSAL: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,  # queries per program (resident)
    BLOCK_N: tl.constexpr,  # keys per tile (streamed)
    PRECISION: tl.constexpr,
):
    block = tl.program_id(0)
    head = tl.program_id(1).to(tl.int64)
    k_ptr += head * n_k * HEAD_DIM
    v_ptr += head * n_k * HEAD_DIM
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    tile = head * n_q * HEAD_DIM + rows[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)
    inside = rows[:, None] < n_q
    q = tl.load(q_ptr + tile, mask=inside, other=0.0)
    grad_out = tl.load(grad_out_ptr + tile, mask=inside, other=0.0)
    lse = tl.load(lse_ptr + head * n_q + rows, mask=rows < n_q, other=0.0)
    delta = tl.load(delta_ptr + head * n_q + rows, mask=rows < n_q, other=0.0)
    grad_q = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    if CAUSAL:
        unmasked_stop = block * BLOCK_M
        stop = tl.minimum(unmasked_stop + BLOCK_M, n_k)
    else:
        unmasked_stop = (n_k // BLOCK_N) * BLOCK_N
        stop = n_k
    grad_q = backward_query_tiles(
        grad_q,
        q,
        grad_out,
        lse,
        delta,
        k_ptr,
        v_ptr,
        rows,
        0,
        unmasked_stop,
        n_k,
        qk_scale,
        False,
        CAUSAL,
        BLOCK_N,
        HEAD_DIM,
        PRECISION,
    )
    grad_q = backward_query_tiles(
        grad_q,
        q,
        grad_out,
        lse,
        delta,
        k_ptr,
        v_ptr,
        rows,
        unmasked_stop,
        stop,
        n_k,
        qk_scale,
        True,
        CAUSAL,
        BLOCK_N,
        HEAD_DIM,
        PRECISION,
    )
    tl.store(
        grad_q_ptr + tile, (grad_q * scale).to(grad_q_ptr.dtype.element_ty), mask=inside
    )


# ## Launching
#
# Every kernel has a *resident* block, the rows a program owns for its whole life
# (queries for the forward and $dQ$ kernels, keys for the $dK, dV$ kernel), and a
# *streamed* block, the tiles its loop walks through. `block_m` is the resident size
# and `block_n` the streamed one; the masks above need `block_n` to divide `block_m`.
# On a GPU the sizes, the number of warps and the depth of the software pipeline are
# chosen by `triton.autotune`, which times each configuration on the first call for
# each sequence length, head dimension and causal flag, and keeps the fastest. The
# configurations are those Triton's tutorial finds good on Hopper: 128 resident rows,
# 32 to 128 streamed ones. Autotuning needs a GPU to time on, so in the interpreter
# the blocks are fixed at 16 × 16, the smallest `tl.dot` accepts and the cheapest to
# interpret.

INTERPRETER_BLOCKS = (16, 16)


def configs(block_pairs, stage_warps):
    """Autotuning configurations: every (resident, streamed) pair with every
    (num_stages, num_warps) pair."""
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_stages=s, num_warps=w)
        for m, n in block_pairs
        for s, w in stage_warps
    ]


if torch.cuda.is_available() and not INTERPRETED:
    KEY = ["n_q", "n_k", "HEAD_DIM", "CAUSAL"]
    tuned_forward = triton.autotune(
        configs([(128, 64), (128, 128)], [(3, 4), (3, 8), (4, 8)]), key=KEY
    )(attention_forward_kernel)
    tuned_backward_kv = triton.autotune(
        configs([(32, 128), (64, 128)], [(3, 4), (3, 8)]), key=KEY
    )(attention_backward_kv_kernel)
    tuned_backward_q = triton.autotune(
        configs([(128, 32), (128, 64)], [(3, 4), (3, 8)]), key=KEY
    )(attention_backward_q_kernel)


def precision(dtype: torch.dtype) -> str:
    """`tl.dot`'s input precision: exact products for float32."""
    return "ieee" if dtype == torch.float32 else "tf32"


def attention_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool,
    scale: float,
    blocks: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Run the forward kernel on checked `[batch, heads, seq, d]` tensors; returns `O`
    and the float32 log-sum-exp `L` `[batch, heads, seq]`."""
    batch, heads, n_q, d = q.shape
    n_k = k.shape[2]
    out = torch.empty_like(q)
    lse = torch.empty(batch, heads, n_q, dtype=torch.float32, device=q.device)
    args = (q, k, v, out, lse, n_q, n_k, scale * math.log2(math.e))
    flags = dict(CAUSAL=causal, HEAD_DIM=d, PRECISION=precision(q.dtype))
    if blocks is None and not INTERPRETED:

        def grid(meta):  # the autotuner picks BLOCK_M, so the grid depends on it
            return (triton.cdiv(n_q, meta["BLOCK_M"]), batch * heads)

        tuned_forward[grid](*args, **flags)
    else:
        block_m, block_n = blocks or INTERPRETER_BLOCKS
        grid = (triton.cdiv(n_q, block_m), batch * heads)
        attention_forward_kernel[grid](*args, **flags, BLOCK_M=block_m, BLOCK_N=block_n)
    return out, lse


def attention_backward(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    causal: bool,
    scale: float,
    blocks: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the three backward kernels; returns `(dQ, dK, dV)`."""
    batch, heads, n_q, d = q.shape
    n_k = k.shape[2]
    delta = torch.empty_like(lse)  # D: [batch, heads, N_q] float32
    grad_q, grad_k, grad_v = (torch.empty_like(t) for t in (q, k, v))
    preprocess_rows = 64
    attention_backward_preprocess_kernel[
        (triton.cdiv(n_q, preprocess_rows), batch * heads)
    ](out, grad_out, delta, n_q, HEAD_DIM=d, BLOCK_M=preprocess_rows)
    shared = (q, k, v, grad_out, lse, delta)
    sizes = (n_q, n_k, scale, scale * math.log2(math.e))
    flags = dict(CAUSAL=causal, HEAD_DIM=d, PRECISION=precision(q.dtype))
    if blocks is None and not INTERPRETED:

        def kv_grid(meta):
            return (triton.cdiv(n_k, meta["BLOCK_N"]), batch * heads)

        def q_grid(meta):
            return (triton.cdiv(n_q, meta["BLOCK_M"]), batch * heads)

        tuned_backward_kv[kv_grid](*shared, grad_k, grad_v, *sizes, **flags)
        tuned_backward_q[q_grid](*shared, grad_q, *sizes, **flags)
    else:
        resident, streamed = blocks or INTERPRETER_BLOCKS
        attention_backward_kv_kernel[(triton.cdiv(n_k, resident), batch * heads)](
            *shared, grad_k, grad_v, *sizes, **flags, BLOCK_M=streamed, BLOCK_N=resident
        )
        attention_backward_q_kernel[(triton.cdiv(n_q, resident), batch * heads)](
            *shared, grad_q, *sizes, **flags, BLOCK_M=resident, BLOCK_N=streamed
        )
    return grad_q, grad_k, grad_v


# ## The autograd Function
#
# The forward saves $Q$, $K$, $V$, $O$ and $L$, no $N \times N$ anything; the backward
# runs the three kernels. The incoming $dO$ arrives in whatever layout autograd made
# (`out.sum()` sends an expanded, stride-0 tensor) and the kernels read flat memory,
# hence `.contiguous()`. The backward is made of kernels autograd cannot see into, so
# it is `once_differentiable`: a second derivative raises instead of being silently
# wrong. (The [algorithm lesson's](../transformers/flash_attention.md) Function, built
# of torch operations, can be differentiated twice.)


class FlashAttentionKernel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale, blocks):
        out, lse = attention_forward(q, k, v, causal, scale, blocks)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.scale, ctx.blocks = causal, scale, blocks
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        grads = attention_backward(
            grad_out.contiguous(), q, k, v, out, lse, ctx.causal, ctx.scale, ctx.blocks
        )
        return *grads, None, None, None


# ## Checking the inputs
#
# A kernel reads raw memory: handed a transposed tensor or a head dimension it was not
# compiled for, it computes garbage without a word. So `flash_attention` checks every
# argument before anything runs, and names it in the error. The layout is
# `F.scaled_dot_product_attention`'s, `[batch, heads, seq, d]`, contiguous; the head
# dimension is 16, 32, 64 or 128 (a power of two, so that a row is one `tl.arange`,
# and at least 16, the smallest `tl.dot`); the dtype float16, bfloat16 or float32 (the
# tensor cores' types). Causal attention needs $N_q = N_k$: with unequal lengths
# PyTorch aligns the mask to the top-left corner and `flash_attn` to the bottom-right,
# and rather than pick one silently the function asks for equal lengths.

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
HEAD_DIMS = (16, 32, 64, 128)


def check_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool,
    scale: float | None,
    blocks: tuple[int, int] | None,
) -> None:
    """Raise `TypeError` or `ValueError` naming the argument unless the inputs suit the
    kernels."""
    where = "flash_attention"
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if not isinstance(tensor, Tensor):
            raise TypeError(
                f"{where}: {name} must be a torch.Tensor, got {type(tensor).__name__}"
            )
        if tensor.dtype not in DTYPES:
            raise TypeError(
                f"{where}: {name} must be float16, bfloat16 or float32, got "
                f"{tensor.dtype}"
            )
        if tensor.ndim != 4 or tensor.shape[2] == 0:
            raise ValueError(
                f"{where}: {name} must be [batch, heads, seq, d] with seq >= 1, got "
                f"{tuple(tensor.shape)}"
            )
        if not tensor.is_contiguous():
            raise ValueError(
                f"{where}: {name} must be contiguous (the kernels read it as flat "
                f"memory), got strides {tensor.stride()}: pass {name}.contiguous()"
            )
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(
            f"{where}: q, k and v must share a dtype, got {q.dtype}, {k.dtype}, "
            f"{v.dtype}"
        )
    if not q.device == k.device == v.device:
        raise ValueError(
            f"{where}: q, k and v must be on one device, got {q.device}, {k.device}, "
            f"{v.device}"
        )
    if INTERPRETED != (q.device.type == "cpu") or q.device.type not in ("cpu", "cuda"):
        expected = "cpu (TRITON_INTERPRET=1)" if INTERPRETED else "cuda"
        raise ValueError(
            f"{where}: q is on {q.device}, but the kernels run on {expected} here"
        )
    if k.shape != v.shape or k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3]:
        raise ValueError(
            f"{where}: k and v must be [batch, heads, N_k, d] with q's batch, heads "
            f"and d, got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if q.shape[3] not in HEAD_DIMS:
        raise ValueError(
            f"{where}: head dimension d must be one of {HEAD_DIMS}, got {q.shape[3]}"
        )
    if not isinstance(causal, bool):
        raise TypeError(f"{where}: causal must be a bool, got {causal!r}")
    if causal and q.shape[2] != k.shape[2]:
        raise ValueError(
            f"{where}: causal attention needs N_q == N_k (query i sees keys 0..i), got "
            f"N_q={q.shape[2]}, N_k={k.shape[2]}"
        )
    if scale is not None and (
        isinstance(scale, bool)
        or not isinstance(scale, int | float)
        or not math.isfinite(scale)
    ):
        raise ValueError(
            f"{where}: scale must be a finite number or None, got {scale!r}"
        )
    if blocks is not None:
        valid = (
            isinstance(blocks, tuple)
            and len(blocks) == 2
            and all(isinstance(b, int) and b >= 16 and b & (b - 1) == 0 for b in blocks)
        )
        if not valid or blocks[0] % blocks[1]:
            raise ValueError(
                f"{where}: blocks must be (resident, streamed), powers of two >= 16 "
                f"with streamed dividing resident, got {blocks!r}"
            )


# ## The public function
#
# `flash_attention` has `F.scaled_dot_product_attention`'s signature, reduced to what
# the kernels do: no attention mask, no dropout. `blocks` fixes the block sizes instead
# of autotuning them (the tests use it to try shapes the tuner would not pick).


def flash_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = False,
    scale: float | None = None,
    *,
    blocks: tuple[int, int] | None = None,
) -> Tensor:
    r"""Exact attention $\operatorname{softmax}(\tau QK^\top)V$ in the Triton kernels:
    `q` `[batch, heads, N_q, d]`, `k`, `v` `[batch, heads, N_k, d]`."""
    check_attention(q, k, v, causal, scale, blocks)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return FlashAttentionKernel.apply(q, k, v, causal, scale, blocks)


# ## Measuring on a GPU
#
# `gpu_report` times with `triton.testing.do_bench` (about 100 ms of runs after a
# warm-up, the L2 cache cleared before each, the median returned) and turns times into
# FLOP/s with the conventional count: $4 N^2 d$ per head forward, half of it causal,
# and 2.5 times as much for the backward pass (its five products against the forward's
# two). Our backward does seven products, so on the conventional count it is charged
# for five; this is the count FlashAttention's papers and benchmarks use, which makes
# the numbers comparable with theirs. The ceiling is measured in the same run: a dense
# bf16 `torch.matmul` of $8192 \times 8192$ matrices through cuBLAS, the best the
# tensor cores do on a real problem. The competitor is PyTorch's own
# FlashAttention-2, `F.scaled_dot_product_attention` restricted to its flash backend.
# The first call of each configuration autotunes and compiles (seconds); `do_bench`'s
# warm-up absorbs it.


def attention_flops(
    batch: int, heads: int, n: int, d: int, causal: bool, backward: bool = False
) -> float:
    """The conventional FLOP count of attention, forward or backward."""
    forward = 4 * batch * heads * n * n * d / (2 if causal else 1)
    return 2.5 * forward if backward else forward


def gpu_report(
    batch: int = 4,
    heads: int = 16,
    seq: int = 4096,
    head_dim: int = 128,
    dtype: torch.dtype = torch.bfloat16,
) -> dict[str, float | str]:
    """Times (µs), TFLOP/s and fractions of the bf16 matmul peak of our kernels and
    PyTorch's flash backend, causal and not, on the current CUDA device."""
    if not torch.cuda.is_available() or INTERPRETED:
        raise RuntimeError("gpu_report needs a CUDA GPU and compiled kernels")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    device = torch.device("cuda")
    generator = torch.Generator(device).manual_seed(0)

    def randn(*shape, dtype=dtype):
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype)

    size = 8192
    left, right = (
        randn(size, size, dtype=torch.bfloat16),
        randn(size, size, dtype=torch.bfloat16),
    )
    matmul_ms = triton.testing.do_bench(lambda: left @ right, return_mode="median")
    peak = 2 * size**3 / matmul_ms / 1e9  # TFLOP/s
    report = {
        "batch": batch,
        "heads": heads,
        "seq": seq,
        "head dim": head_dim,
        "dtype": str(dtype).removeprefix("torch."),
        "bf16 matmul TFLOP/s": peak,
    }
    shape = (batch, heads, seq, head_dim)
    q, k, v = (randn(*shape).requires_grad_() for _ in range(3))
    grad_out = randn(*shape)

    def sdpa(q, k, v, causal):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    for causal in (False, True):
        tag = "causal" if causal else "non-causal"
        for name, attention in (("ours", flash_attention), ("SDPA flash", sdpa)):

            def forward(attention=attention):
                with torch.no_grad():
                    attention(q, k, v, causal)

            def training(attention=attention):
                attention(q, k, v, causal).backward(grad_out)

            for step, function, flops in (
                (
                    "forward",
                    forward,
                    attention_flops(batch, heads, seq, head_dim, causal),
                ),
                (
                    "forward+backward",
                    training,
                    attention_flops(batch, heads, seq, head_dim, causal)
                    + attention_flops(batch, heads, seq, head_dim, causal, True),
                ),
            ):
                ms = triton.testing.do_bench(
                    function, grad_to_none=[q, k, v], return_mode="median"
                )
                report[f"{tag} {step} {name} µs"] = ms * 1e3
                report[f"{tag} {step} {name} TFLOP/s"] = flops / ms / 1e9
                report[f"{tag} {step} {name} of matmul peak"] = flops / ms / 1e9 / peak
        for step in ("forward", "forward+backward"):
            theirs = report[f"{tag} {step} SDPA flash µs"]
            report[f"{tag} {step} ours / SDPA flash"] = (
                theirs / report[f"{tag} {step} ours µs"]
            )
    return report


# ## The example
#
# Two sequences of three heads, 37 positions (two whole blocks of 16 and a ragged
# third), head dimension 32, causal. The dataflow diagram is declared by `dataflow`
# below, not traced: `torch.fx` cannot look inside a Triton kernel, and the picture's
# point is which tensors cross main memory between the four kernels.


def example():
    """A small example: `fn(*args)` runs causal flash attention on `[2, 3, 37, 32]`."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 2, 3, 37, 32, generator=generator)  # [2, 3, 37, 32] each
    device = "cpu" if INTERPRETED else "cuda"
    return flash_attention, (q.to(device), k.to(device), v.to(device), True)


def dataflow(output: Tensor):
    """The four kernels and the tensors between them, with shapes."""
    batch, heads, n, d = output.shape
    rows, lse = f"[{batch}, {heads}, {n}, {d}]", f"[{batch}, {heads}, {n}] fp32"
    nodes = [
        ("qkv", "Q, K, V"),
        ("forward", "attention_forward_kernel\n(one program per query block)"),
        ("out", "O"),
        ("lse", "L (log-sum-exp)"),
        ("grad_out", "dO"),
        ("preprocess", "preprocess kernel\nD = rowsum(dO ⊙ O)"),
        ("kv", "backward kv kernel\n(one program per key block)"),
        ("q", "backward q kernel\n(one program per query block)"),
        ("grads", "dQ, dK, dV"),
    ]
    edges = [
        ("qkv", "forward", f"3 × {rows}"),
        ("forward", "out", rows),
        ("forward", "lse", lse),
        ("out", "preprocess", rows),
        ("grad_out", "preprocess", rows),
        ("preprocess", "kv", f"D {lse}"),
        ("preprocess", "q", f"D {lse}"),
        ("lse", "kv", lse),
        ("lse", "q", lse),
        ("qkv", "kv", "Q, K, V, dO"),
        ("qkv", "q", "Q, K, V, dO"),
        ("kv", "grads", "dK, dV"),
        ("q", "grads", "dQ"),
    ]
    return nodes, edges


# ## The demo
#
# On a CPU the kernels run in the interpreter, so the demo checks them on small
# shapes: outputs and all three gradients against `F.scaled_dot_product_attention`
# computed in float64 from the same float32 inputs, causal and not, at a length the
# blocks do not divide. Then it counts the traffic of a training step of one head at
# $d = 128$ in bfloat16 for lengths up to 16384, and the SRAM a forward program needs
# for each head dimension, and draws both. With `--device cuda` it also prints
# `gpu_report` (about 30 s on an H200, most of it autotuning).


def check_against_sdpa(
    device: str, batch: int, heads: int, seq: int, head_dim: int, seed: int
) -> dict[str, float]:
    """Largest |ours - SDPA in float64| over O, dQ, dK, dV, causal and not."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, heads, seq, head_dim)
    tensors = [torch.randn(*shape, generator=generator).to(device) for _ in range(4)]
    errors = {}
    for causal in tqdm((False, True), desc="checking in the interpreter", leave=False):
        ours = [t.clone().requires_grad_() for t in tensors[:3]]
        wide = [t.double().requires_grad_() for t in tensors[:3]]
        out = flash_attention(*ours, causal)
        reference = F.scaled_dot_product_attention(*wide, is_causal=causal)
        grads = torch.autograd.grad(out, ours, tensors[3])
        reference_grads = torch.autograd.grad(reference, wide, tensors[3].double())
        errors["causal" if causal else "non-causal"] = max(
            (a.double() - b).abs().max().item()
            for a, b in zip([out, *grads], [reference, *reference_grads])
        )
    return errors


def plot_traffic(lengths: list[int], head_dim: int, out: Path) -> dict[str, float]:
    """Draw the counted HBM bytes against N and the SRAM per program against d."""
    eager, flash, compulsory = [], [], []
    for n in tqdm(lengths, desc="counting bytes", leave=False):
        counted = eager_traffic(n, head_dim, causal=True)
        ours = flash_traffic(n, head_dim, causal=True)
        eager.append(counted["forward bytes"] + counted["backward bytes"])
        flash.append(ours["forward bytes"] + ours["backward bytes"])
        compulsory.append(
            ours["forward compulsory bytes"] + ours["backward compulsory bytes"]
        )
    fig, axes = figure(panels=2)
    mib = 2**20
    axes[0].plot(lengths, [b / mib for b in eager], "o-", label="eager (dispatcher)")
    axes[0].plot(lengths, [b / mib for b in flash], "s-", label="ours, no L2 reuse")
    axes[0].plot(lengths, [b / mib for b in compulsory], "^-", label="ours, compulsory")
    axes[0].set(xscale="log", yscale="log", xlabel="sequence length $N$")
    axes[0].set(ylabel="MiB per head", title="HBM bytes of a training step, counted")
    axes[0].xaxis.set_major_formatter("{x:.0f}")
    axes[0].legend()
    dims = list(HEAD_DIMS)
    shared = [sram_bytes(128, 64, d)["shared"] / 1024 for d in dims]
    registers = [sram_bytes(128, 64, d)["registers"] / 1024 for d in dims]
    positions = torch.arange(len(dims), dtype=torch.float64)
    axes[1].bar(positions - 0.2, shared, 0.4, label="shared memory (Q, 3 × K, V)")
    axes[1].bar(positions + 0.2, registers, 0.4, label="registers (Õ, S, m, ℓ)")
    axes[1].axhline(228, color="grey", linestyle=":", label="SRAM per SM (228 KiB)")
    axes[1].set_xticks(positions.tolist(), [f"d = {d}" for d in dims])
    axes[1].set(ylabel="KiB per program", title="on chip, forward, 128 × 64 tiles")
    axes[1].set_ylim(0, 360)
    axes[1].legend(loc="upper left")
    save(
        fig,
        out / "traffic.png",
        caption="A count, not a measurement. Left: bytes a causal training step of one "
        f"head (d = {head_dim}, bfloat16) moves through HBM: eager attention counted "
        "on PyTorch's dispatcher, our kernels with every K and V tile re-read from "
        "HBM (128 × 64 tiles), and their compulsory traffic, each tensor once. Right: "
        "the bytes a forward program keeps on chip for each head dimension, bfloat16, "
        "three pipeline stages, against an H100/H200 SM's 228 KiB of shared memory.",
    )
    n = 4096 if 4096 in lengths else lengths[-1]
    index = lengths.index(n)
    return {
        "eager MiB": eager[index] / mib,
        "flash MiB": flash[index] / mib,
        "compulsory MiB": compulsory[index] / mib,
        "N": n,
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description="FlashAttention in Triton: check it, count its bytes, and on a "
        "GPU time it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--batch", type=integer(at_least=1), default=2, help="batch of the check"
    )
    parser.add_argument(
        "--heads", type=integer(at_least=1), default=2, help="heads of the check"
    )
    parser.add_argument(
        "--seq",
        type=integer(at_least=1),
        default=45,
        help="sequence length of the check",
    )
    parser.add_argument(
        "--head-dim", type=int, default=32, choices=HEAD_DIMS, help="d of the check"
    )
    parser.add_argument(
        "--lengths",
        type=integers(at_least=1),
        default="256,512,1024,2048,4096,8192,16384",
        help="comma-separated N whose traffic is counted",
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (cpu runs the kernels in Triton's interpreter)",
    )
    parser.add_argument("--out", default="out/flash_attention", help="figure folder")
    args = parser.parse_args(argv)
    lengths = args.lengths
    out = Path(args.out)
    metrics = {}

    errors = check_against_sdpa(
        args.device, args.batch, args.heads, args.seq, args.head_dim, args.seed
    )
    for name, error in errors.items():
        print(
            f"{name}, float32, N={args.seq}, d={args.head_dim}: max |ours - SDPA "
            f"(float64)| over O, dQ, dK, dV: {error:.1e}"
        )
        metrics[f"max error {name}"] = error

    counted = plot_traffic(lengths, 128, out)
    print(
        f"causal training step, one head, N={counted['N']}, d=128, bfloat16: eager "
        f"{counted['eager MiB']:.0f} MiB, ours {counted['flash MiB']:.0f} MiB without "
        f"L2 reuse, {counted['compulsory MiB']:.1f} MiB compulsory"
    )
    metrics["eager / ours bytes"] = counted["eager MiB"] / counted["flash MiB"]
    metrics["eager / compulsory bytes"] = (
        counted["eager MiB"] / counted["compulsory MiB"]
    )

    if args.device.startswith("cuda"):
        report = gpu_report()
        print(
            f"\n{torch.cuda.get_device_name()}, batch {report['batch']}, "
            f"{report['heads']} heads, N={report['seq']}, d={report['head dim']}, "
            f"{report['dtype']}: matmul {report['bf16 matmul TFLOP/s']:.0f} TFLOP/s"
        )
        for name, value in report.items():
            if name.endswith(" µs"):
                entry = name.removesuffix(" µs")
                print(
                    f"  {entry:40s} {value:9.0f} µs "
                    f"{report[f'{entry} TFLOP/s']:6.0f} TFLOP/s "
                    f"{report[f'{entry} of matmul peak']:6.1%} of matmul"
                )
        metrics.update({f"gpu/{k}": v for k, v in report.items()})
    return metrics


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Write the FlashAttention-2 variant of the backward: one kernel over key blocks
#    that also adds each tile's $dQ$ share into a float32 buffer with
#    `tl.atomic_add`. Time it against the two-kernel version with `gpu_report`, and
#    show that two runs give gradients that differ in the last bits.
# 2. Add a `window` argument for sliding-window attention (query $i$ sees keys
#    $i - w < j \le i$). Which tiles can the forward kernel now skip on the left as
#    well, and how do the traffic counts change?
# 3. Support head dimension 256. How large can the tiles be in 228 KiB with two and
#    with three pipeline stages (`sram_bytes`), and what does `gpu_report` measure?
# 4. Swap the grid's axes so that `program_id(0)` picks the head and `program_id(1)`
#    the query block. Which programs now run at the same time, what happens to the
#    L2 reuse of $K$ and $V$, and does the measured time change?
