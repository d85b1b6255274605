r"""
---
title: The FlashAttention algorithm
summary: >-
  Exact attention computed tile by tile with the online softmax, in FlashAttention-2's
  loop order, and a backward pass that recomputes each tile from the log-sum-exp: equal
  to F.scaled_dot_product_attention to 1e-10 in float64, with memory linear in the
  sequence length where plain attention keeps an N×N matrix.
time: 9 s
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
  - key: rabe2021self
    authors: [Markus N. Rabe, Charles Staats]
    title: Self-attention Does Not Need O(n²) Memory
    year: 2021
    venue: arXiv preprint
    arxiv: "2112.05682"
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
worksheet:
  - region: flash_forward
    hint: >-
      Work in float32 or wider. For each block of block_q queries keep a running
      maximum m, a running sum l and an unnormalised output; for each block of
      block_k keys (skipping those block_kind calls skipped, masking the diagonal
      ones via tile_scores) take the new maximum, exponentiate the scores against
      it, rescale l and the output by exp(old m - new m), and add the row sums and
      probs @ v. Write output / l and the log-sum-exp m + log l.
    tests:
      - test_logsumexp_equals_pytorchs_own_flash_kernel
      - test_different_query_and_key_lengths_and_a_custom_scale
      - test_huge_scores_stay_finite_and_exact
  - region: flash_backward
    hint: >-
      First D = rowsum(dO * O) - dL. Then, key blocks outside and query blocks
      inside (skipping skipped tiles), recompute the scores and P = exp(S - L),
      add P^T dO to dV, form dP = dO V^T and dS = P * (dP - D), and add
      scale * dS K to dQ and scale * dS^T Q to dK. Return them in the inputs' dtypes.
    tests:
      - test_matches_sdpa_and_logsumexp_in_float64
      - test_gradcheck_and_gradgradcheck_on_a_tiny_case
---

Attention [@vaswani2017attention] (built in [scaled dot-product
attention](attention.md)) scores every query against every key: for $N$ positions it
forms an $N \times N$ matrix of scores, takes its softmax row by row, and multiplies
the probabilities with the values. Written plainly, that matrix is real memory. For
$N = 8192$ and 16 heads it is $8192^2 \cdot 16 \cdot 4$ bytes $= 4$ GiB in float32,
per sequence, and autograd keeps it until the backward pass. On a GPU it is also real
traffic: the kernel writes the scores to the card's main memory, reads them back for
the softmax, writes the probabilities, and reads them again for the product.

FlashAttention [@dao2022flashattention] never forms the matrix. It cuts the queries
into blocks of rows and the keys and values into blocks of columns, computes one tile
of scores at a time in fast on-chip memory, and merges the tiles of a row with the
*online softmax* [@milakov2018online]: a running maximum and a running sum per row,
and a rescaling of what has been accumulated whenever the maximum grows. The result is
exact attention, not an approximation, in memory linear in $N$. The backward pass keeps
only $Q$, $K$, $V$, the output $O$ and one number per row, the log-sum-exp $L$, and
recomputes each tile's probabilities from them. Rabe and Staats [@rabe2021self] had
shown the same point, that attention does not need $O(N^2)$ memory, with chunked
attention in JAX; FlashAttention made it fast by sizing the tiles to the GPU's SRAM,
and FlashAttention-2 [@dao2023flashattention2] reordered the loops, which is the
order written here.

This chapter writes the algorithm in plain PyTorch, one tile per loop iteration, as a
`torch.autograd.Function` whose forward and backward are the two loops of the paper.
Its test compares the output, the log-sum-exp and all three gradients with
`F.scaled_dot_product_attention` and `torch.logsumexp`, to $10^{-10}$ in float64,
for block sizes that divide $N$ and block sizes that do not, causal or not, under
hypothesis. The demo measures what the algorithm buys: at $N = 2048$ (2 heads,
$d = 64$) a training step of plain attention peaks at 20 times the memory of ours, and
autograd saves $(N + 3d)/(4d + 1) = 8.7$ times as many bytes for it. It also measures
what a Python loop costs: on two CPU cores ours takes about as long as plain attention
(0.9 to 1.2 times, in our runs) and two to three times as long as PyTorch's own CPU
kernel, which is FlashAttention written in C++ (the demo prints this run's ratios); on
a GPU, where every one of a tile's dozen operations is a kernel launch, it is some 200
times slower than either. The fused GPU version, where the tiles really live in SRAM,
is the later lesson *FlashAttention as a Triton kernel*.
"""

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from annotated.data import integer, integers, torch_device
from annotated.cnn.memory import peak_memory
from annotated.figures import figure, save
from annotated.transformers.sparse_attention import saved_bytes, time_step

# ## Attention the plain way
#
# With queries $Q \in \mathbb{R}^{N_q \times d}$, keys
# $K \in \mathbb{R}^{N_k \times d}$, values $V \in \mathbb{R}^{N_k \times d_v}$ and the
# scale $\tau = 1/\sqrt{d}$,
#
# $$
# \begin{aligned}
# S &= \tau\, Q K^\top, \\
# P &= \operatorname{softmax}(S) \text{ (by rows)}, \\
# O &= P V .
# \end{aligned}
# $$
#
# In the causal case query $i$ sees keys $0..i$ only: $S_{ij} = -\infty$ for $j > i$,
# so $P_{ij} = 0$. The [attention lesson](attention.md) builds this with heads and
# projections; here it is restated in a few lines of plain torch, the reference the
# demo measures against. Autograd then saves, for the backward
# pass, $Q$ and $K$ (for the first product), $P$ (the softmax's backward needs its own
# output, and the second product needs it too, stored once) and $V$: $3Nd + N^2$
# numbers per head, plus a boolean mask of $N^2$ bytes in the causal case. The test
# counts them exactly.


def naive_attention(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: float | None = None
) -> Tensor:
    r"""$\operatorname{softmax}(\tau QK^\top)V$ in plain torch, keeping the $N \times N$
    matrix."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale  # [..., N_q, N_k]
    if causal:
        keep = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))  # key j > query i is hidden
    return torch.softmax(scores, dim=-1) @ v  # [..., N_q, d_v]


# ## The online softmax
#
# Take one query row, with scores $s_j = \tau\, q \cdot k_j$. Attention returns
#
# $$
# o = \frac{\sum_j e^{s_j} v_j}{\sum_j e^{s_j}} .
# $$
#
# $e^{s_j}$ overflows float32 once $s_j > 88$, so every softmax subtracts the row's
# maximum $m$ first; that changes nothing, since $e^{-m}$ cancels between numerator and
# denominator. But the maximum needs the whole row before the first exponential, and
# the whole row is what we refuse to hold. The online softmax [@milakov2018online]
# keeps instead, after it has seen the key blocks $1, \dots, t$ (write $j \le t$ for
# "$j$ in those blocks"),
#
# $$
# \begin{aligned}
# m_t &= \textstyle\max_{j \le t} s_j, \\
# \ell_t &= \textstyle\sum_{j \le t} e^{s_j - m_t}, \\
# \tilde o_t &= \textstyle\sum_{j \le t} e^{s_j - m_t}\, v_j .
# \end{aligned}
# $$
#
# A new block $B$ arrives. The maximum is easy:
# $m_{t+1} = \max(m_t, \max_{j \in B} s_j)$. The old sums were taken against the old
# maximum; every one of their terms can be moved to the new one by one common factor,
#
# $$
# \begin{aligned}
# e^{s_j - m_{t+1}}
#   &= e^{s_j - m_t}\, e^{m_t - m_{t+1}} \\
#   &= e^{s_j - m_t}\, \alpha_t ,
# \end{aligned}
# $$
#
# so the old sum is rescaled by $\alpha_t = e^{m_t - m_{t+1}} \le 1$ and the new
# block's terms are added:
#
# $$
# \begin{aligned}
# \ell_{t+1} &= \alpha_t\, \ell_t
#   + \textstyle\sum_{j \in B} e^{s_j - m_{t+1}}, \\
# \tilde o_{t+1} &= \alpha_t\, \tilde o_t
#   + \textstyle\sum_{j \in B} e^{s_j - m_{t+1}} v_j .
# \end{aligned}
# $$
#
# Every exponent is $\le 0$, so nothing overflows, and when the maximum does not move,
# $\alpha_t = 1$ and the recurrence is a plain running sum. It starts from
# $m_0 = -\infty$, $\ell_0 = 0$, $\tilde o_0 = 0$ (the first $\alpha$ is
# $e^{-\infty} = 0$ and multiplies only zeros), and after the last block $T$,
#
# $$
# \begin{aligned}
# o &= \tilde o_T / \ell_T, \\
# L &= m_T + \log \ell_T \\
#   &= \textstyle\log \sum_j e^{s_j} .
# \end{aligned}
# $$
#
# $L$ is the log-sum-exp of the row, its softmax's log-normaliser. For a block of query
# rows at once the same recurrence runs on vectors: $m$ and $\ell$ hold one entry per
# row, the tile of scores is $S_{ij} = \tau\, Q_i K_j^\top$, and
# $\tilde O \leftarrow \operatorname{diag}(\alpha)\,\tilde O + \exp(S_{ij} - m)\,V_j$.

# ## Which tiles to visit
#
# Queries are cut into blocks of $B_r$ rows, keys and values into blocks of $B_c$
# (the last block of each is shorter when the block size does not divide $N$). In the
# causal case a tile whose every key comes after its every query is all $-\infty$: its
# probabilities are zero and it contributes nothing, so it is skipped, not computed
# and masked. A tile whose every key comes at or before its every query needs no mask
# at all. Only the tiles that the diagonal crosses are masked. With $T$ blocks each
# way, $T(T-1)/2$ of the $T^2$ tiles are skipped, close to half the work.


def block_kind(
    q_start: int, q_stop: int, k_start: int, k_stop: int, causal: bool
) -> str:
    """`'full'`, `'diagonal'` (needs the causal mask) or `'skipped'` for the tile of
    query rows `[q_start, q_stop)` and key columns `[k_start, k_stop)`."""
    if not causal or k_stop - 1 <= q_start:
        return "full"
    if k_start > q_stop - 1:
        return "skipped"
    return "diagonal"


def block_counts(
    n_q: int, n_k: int, block_q: int, block_k: int, causal: bool
) -> dict[str, int]:
    """How many tiles of each kind an `n_q × n_k` attention cut into
    `block_q × block_k` tiles has."""
    counts = {"full": 0, "diagonal": 0, "skipped": 0}
    for q_start in range(0, n_q, block_q):
        for k_start in range(0, n_k, block_k):
            q_stop, k_stop = min(q_start + block_q, n_q), min(k_start + block_k, n_k)
            counts[block_kind(q_start, q_stop, k_start, k_stop, causal)] += 1
    return counts


# One tile of scores, shared by the forward and the backward pass. Query $i$ may not see
# key $j > i$; on a diagonal tile those entries become $-\infty$, and $e^{-\infty} = 0$
# removes them from every sum. A row of a diagonal tile may have every key hidden (row
# 0 of the tile that pairs queries 0..3 with keys 3..5). That is harmless once the row
# has a finite maximum, and it has one from its first tile on: the first key block
# holds key 0, which every query sees. So $e^{-\infty - m}$ is $0$, never the
# $e^{-\infty + \infty}$ that would be NaN.


def tile_scores(
    q_block: Tensor,
    k_block: Tensor,
    scale: float,
    q_start: int,
    k_start: int,
    mask: bool,
) -> Tensor:
    r"""$\tau\, Q_i K_j^\top$ for one tile, with $-\infty$ where the key comes after the
    query if `mask`."""
    scores = q_block @ k_block.transpose(-2, -1) * scale  # [..., B_r, B_c]
    if mask:
        rows = torch.arange(q_start, q_start + scores.shape[-2], device=scores.device)
        cols = torch.arange(k_start, k_start + scores.shape[-1], device=scores.device)
        scores = scores.masked_fill(cols > rows.unsqueeze(-1), float("-inf"))
    return scores


# ## The forward pass
#
# FlashAttention-2's order [@dao2023flashattention2]: the *outer* loop runs over query
# blocks, the inner one over key blocks. A query block's $m$, $\ell$ and $\tilde O$
# then stay in fast memory for its whole inner loop, the output block is written once,
# and every query block is independent of the others: on a GPU each one is a thread
# block, which is how FlashAttention-2 parallelises over the sequence and not only over
# batch and heads. The first FlashAttention [@dao2022flashattention] had the loops the
# other way round, and so read and rewrote the output block, normalised, in main memory
# at every key block; FlashAttention-2 keeps $\tilde O$ unnormalised and divides by
# $\ell$ once at the end, and stores for backward only $L = m + \log\ell$ instead of
# both $m$ and $\ell$.
#
# Inputs in float16 or bfloat16 are accumulated in float32, as the GPU kernels do; the
# log-sum-exp is returned in that accumulation type, as `flash_attn` returns its
# `softmax_lse`.


def flash_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool,
    block_q: int,
    block_k: int,
    scale: float,
) -> tuple[Tensor, Tensor]:
    """The tiled forward pass: `(O, L)` for `q` `[..., N_q, d]`, `k` `[..., N_k, d]`
    and `v` `[..., N_k, d_v]`."""
    work = torch.promote_types(q.dtype, torch.float32)  # float32 or float64
    n_q, n_k = q.shape[-2], k.shape[-2]
    out = q.new_empty(*q.shape[:-1], v.shape[-1], dtype=work)  # [..., N_q, d_v]
    lse = q.new_empty(q.shape[:-1], dtype=work)  # [..., N_q]
    for q_start in range(0, n_q, block_q):
        q_stop = min(q_start + block_q, n_q)
        q_block = q[..., q_start:q_stop, :].to(work)  # [..., B_r, d]
        row_max = q_block.new_full(q_block.shape[:-1], -math.inf)  # m: [..., B_r]
        row_sum = q_block.new_zeros(q_block.shape[:-1])  # ℓ: [..., B_r]
        acc = q_block.new_zeros(*q_block.shape[:-1], v.shape[-1])  # Õ: [..., B_r, d_v]
        for k_start in range(0, n_k, block_k):
            k_stop = min(k_start + block_k, n_k)
            kind = block_kind(q_start, q_stop, k_start, k_stop, causal)
            if kind == "skipped":
                continue
            k_block = k[..., k_start:k_stop, :].to(work)  # [..., B_c, d]
            v_block = v[..., k_start:k_stop, :].to(work)  # [..., B_c, d_v]
            scores = tile_scores(
                q_block, k_block, scale, q_start, k_start, kind == "diagonal"
            )  # [..., B_r, B_c]
            new_max = torch.maximum(row_max, scores.amax(dim=-1))  # m_{t+1}
            probs = torch.exp(scores - new_max.unsqueeze(-1))  # [..., B_r, B_c]
            rescale = torch.exp(row_max - new_max)  # α_t: [..., B_r]
            row_sum = rescale * row_sum + probs.sum(dim=-1)
            acc = rescale.unsqueeze(-1) * acc + probs @ v_block  # [..., B_r, d_v]
            row_max = new_max
        out[..., q_start:q_stop, :] = acc / row_sum.unsqueeze(-1)  # the one rescale
        lse[..., q_start:q_stop] = row_max + torch.log(row_sum)  # L = m + log ℓ
    return out.to(q.dtype), lse


# ## The backward pass
#
# With $P = \operatorname{softmax}(S)$ by rows and $O = PV$, the incoming gradient
# $dO$ flows back as
#
# $$
# \begin{aligned}
# dV &= P^\top dO, \\
# dP &= dO\, V^\top, \\
# dS_{ij} &= P_{ij}\,(dP_{ij} - D_i), \\
# dQ &= \tau\, dS\, K, \\
# dK &= \tau\, dS^\top Q,
# \end{aligned}
# $$
#
# where the softmax's Jacobian brings in $D_i = \sum_j P_{ij}\, dP_{ij}$, a sum over a
# whole row of a matrix we never hold. But $dP_{ij} = dO_i \cdot v_j$, so
#
# $$
# \begin{aligned}
# D_i &= \textstyle\sum_j P_{ij}\; dO_i \cdot v_j \\
#     &= dO_i \cdot \textstyle\sum_j P_{ij} v_j \\
#     &= dO_i \cdot O_i ,
# \end{aligned}
# $$
#
# a dot product of two rows we do have: $D = \operatorname{rowsum}(dO \circ O)$, one
# number per query, computed before the loop. And any tile's probabilities come back
# exactly from the log-sum-exp, $P_{ij} = e^{S_{ij} - L_i}$, because $L_i$ is the
# row's complete normaliser: no running maximum, no rescaling, no second pass. So the
# backward pass needs from the forward pass only $Q$, $K$, $V$, $O$ and $L$.
#
# If the caller differentiates $L$ too (merging the outputs of two attention calls
# needs it), its gradient $dL$ adds $P_{ij}\, dL_i$ to $dS_{ij}$, since
# $\partial L_i / \partial S_{ij} = P_{ij}$: the same formula with $D_i - dL_i$ in
# place of $D_i$.
#
# The loops are FlashAttention-2's backward order: key blocks outside, so $dK_j$ and
# $dV_j$ collect every query block's contribution before they are written; query
# blocks inside, so $dQ_i$ receives one contribution per key block (on a GPU, an atomic
# add). Per tile it is five matrix products, one more than plain attention's backward,
# because $S$ is computed again: recomputation trades that one product for the
# $N \times N$ matrix, as gradient checkpointing does for a whole layer
# ([memory of a training step](../cnn/memory.md)).


def flash_backward(
    grad_out: Tensor,
    grad_lse: Tensor,
    saved: tuple[Tensor, Tensor, Tensor, Tensor, Tensor],
    causal: bool,
    block_q: int,
    block_k: int,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """`(dQ, dK, dV)` from the incoming `dO`, `dL` and the saved `(Q, K, V, O, L)`,
    tile by tile."""
    q, k, v, out, lse = saved
    work = lse.dtype
    n_q, n_k = q.shape[-2], k.shape[-2]
    delta = (grad_out.to(work) * out.to(work)).sum(dim=-1) - grad_lse  # D: [..., N_q]
    grad_q = torch.zeros_like(q, dtype=work)  # [..., N_q, d]
    grad_k = torch.zeros_like(k, dtype=work)  # [..., N_k, d]
    grad_v = torch.zeros_like(v, dtype=work)  # [..., N_k, d_v]
    for k_start in range(0, n_k, block_k):
        k_stop = min(k_start + block_k, n_k)
        k_block = k[..., k_start:k_stop, :].to(work)  # [..., B_c, d]
        v_block = v[..., k_start:k_stop, :].to(work)  # [..., B_c, d_v]
        for q_start in range(0, n_q, block_q):
            q_stop = min(q_start + block_q, n_q)
            kind = block_kind(q_start, q_stop, k_start, k_stop, causal)
            if kind == "skipped":
                continue
            rows, cols = slice(q_start, q_stop), slice(k_start, k_stop)
            q_block = q[..., rows, :].to(work)  # [..., B_r, d]
            grad_out_block = grad_out[..., rows, :].to(work)  # [..., B_r, d_v]
            scores = tile_scores(
                q_block, k_block, scale, q_start, k_start, kind == "diagonal"
            )  # [..., B_r, B_c]
            probs = torch.exp(scores - lse[..., rows].unsqueeze(-1))  # P, recomputed
            grad_v[..., cols, :] += probs.transpose(-2, -1) @ grad_out_block
            grad_probs = grad_out_block @ v_block.transpose(-2, -1)  # dP
            grad_scores = probs * (grad_probs - delta[..., rows].unsqueeze(-1))  # dS
            grad_q[..., rows, :] += grad_scores @ k_block * scale
            grad_k[..., cols, :] += grad_scores.transpose(-2, -1) @ q_block * scale
    return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype)


# ## The Function
#
# The two loops become one `torch.autograd.Function`
# ([custom Functions](../systems/custom_functions.md) explains the contract). Its
# `forward` runs with gradient recording off, so none of the tiles leaves a node or a
# saved tensor behind; `setup_context` saves exactly $Q$, $K$, $V$, $O$ and $L$; and
# `backward` receives the gradients of both outputs. PyTorch's own CPU kernel,
# `aten/src/ATen/native/cpu/FlashAttentionKernel.cpp`, behind
# `F.scaled_dot_product_attention`, saves the same five tensors. Because `backward` is
# written in differentiable torch operations, a second derivative works too, by
# differentiating the loops themselves; the test checks it with `gradgradcheck`.


class FlashAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        causal: bool,
        block_q: int,
        block_k: int,
        scale: float,
    ) -> tuple[Tensor, Tensor]:
        return flash_forward(q, k, v, causal, block_q, block_k, scale)

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: tuple[Tensor, Tensor]) -> None:
        q, k, v, ctx.causal, ctx.block_q, ctx.block_k, ctx.scale = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, out, lse)

    @staticmethod
    def backward(ctx, grad_out: Tensor, grad_lse: Tensor) -> tuple:
        grads = flash_backward(
            grad_out,
            grad_lse,
            ctx.saved_tensors,
            ctx.causal,
            ctx.block_q,
            ctx.block_k,
            ctx.scale,
        )
        return *grads, None, None, None, None


# ## The public function
#
# `flash_attention` takes the layout of `F.scaled_dot_product_attention` (any leading
# batch and head dimensions, then sequence, then features) and returns the output with
# the log-sum-exp, as `flash_attn`'s `return_attn_probs=True` and PyTorch's
# `_scaled_dot_product_flash_attention_for_cpu` do. It checks its arguments first: a
# wrong shape would otherwise surface as a broadcasting error deep inside a tile, or not
# at all. Causal attention here means query $i$ sees keys $0..i$, which is
# `is_causal=True` in `F.scaled_dot_product_attention` when $N_q = N_k$; with
# $N_q \ne N_k$ PyTorch aligns the mask to the top-left corner and `flash_attn` to the
# bottom-right, so rather than pick one silently the function asks for equal lengths.


def check_attention_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool,
    block_q: int,
    block_k: int,
    scale: float | None,
) -> None:
    """Raise `TypeError` or `ValueError` naming the argument unless the inputs are valid
    for `flash_attention`."""
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if not isinstance(tensor, Tensor):
            raise TypeError(
                f"flash_attention: {name} must be a torch.Tensor, "
                f"got {type(tensor).__name__}"
            )
        if not tensor.is_floating_point():
            raise TypeError(
                f"flash_attention: {name} must have a floating-point dtype, "
                f"got {tensor.dtype}"
            )
        if tensor.ndim < 2 or tensor.numel() == 0:
            raise ValueError(
                f"flash_attention: {name} must be a non-empty [..., seq, features] "
                f"tensor, got shape {tuple(tensor.shape)}"
            )
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(
            f"flash_attention: q, k and v must share a dtype, "
            f"got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if not q.device == k.device == v.device:
        raise ValueError(
            f"flash_attention: q, k and v must be on one device, "
            f"got {q.device}, {k.device}, {v.device}"
        )
    if not q.shape[:-2] == k.shape[:-2] == v.shape[:-2]:
        raise ValueError(
            "flash_attention: q, k and v must share their leading (batch, head) dims, "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"flash_attention: k must have q's feature size d={q.shape[-1]}, "
            f"got {k.shape[-1]}"
        )
    if v.shape[-2] != k.shape[-2]:
        raise ValueError(
            f"flash_attention: v must have as many rows as k (N_k={k.shape[-2]}), "
            f"got {v.shape[-2]}"
        )
    if not isinstance(causal, bool):
        raise TypeError(f"flash_attention: causal must be a bool, got {causal!r}")
    if causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(
            "flash_attention: causal attention needs N_q == N_k (query i sees keys "
            f"0..i), got N_q={q.shape[-2]}, N_k={k.shape[-2]}"
        )
    for name, size in (("block_q", block_q), ("block_k", block_k)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(
                f"flash_attention: {name} must be an int >= 1, got {size!r}"
            )
    if scale is not None and (
        isinstance(scale, bool)
        or not isinstance(scale, int | float)
        or not math.isfinite(scale)
    ):
        raise ValueError(
            f"flash_attention: scale must be a finite number or None, got {scale!r}"
        )


def flash_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = False,
    block_q: int = 64,
    block_k: int = 64,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Exact attention $\operatorname{softmax}(\tau QK^\top)V$, tiled: returns the
    output `[..., N_q, d_v]` and the log-sum-exp $L$ `[..., N_q]`."""
    check_attention_inputs(q, k, v, causal, block_q, block_k, scale)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return FlashAttentionFunction.apply(q, k, v, causal, block_q, block_k, scale)


# ## Measuring memory
#
# Two measurements, each saying exactly what it counts.
#
# **Saved for backward.** `torch.autograd.graph.saved_tensors_hooks` calls a *pack*
# hook on every tensor a backward node stores, ours and PyTorch's alike. Summing the
# bytes of the distinct storages (a view of $K$ is $K$) gives what a forward pass keeps
# alive until backward: $3Nd + N^2$ numbers per head for plain attention, $4Nd + N$
# for ours. This is exact and independent of the allocator; `saved_bytes` and the
# timer `time_step` are [the sparse-attention lesson's](sparse_attention.md).
#
# **Peak of a training step.** The backward pass allocates too: plain attention's
# $dP$ and $dS$ are $N \times N$ again, ours are tiles. On a CPU the profiler records
# every allocation and free, and `peak_memory` from [the memory
# lesson](../cnn/memory.md) reads the largest running total above the start from
# them; on a GPU the caching allocator keeps the same number itself,
# `torch.cuda.max_memory_allocated`. Both count the gradients $dQ$, $dK$, $dV$ that
# every method allocates. At $N \le B_r$ one tile is the whole matrix, and ours is
# even a little larger than plain attention, by the buffers of its loops ($\tilde O$,
# $D$, the gradients in the accumulation type); from a few tiles on, it is smaller.


def peak_bytes(step: Callable[[], object], device: torch.device) -> int:
    """Peak live bytes above the start while `step()` runs on `device`."""
    if device.type != "cuda":
        return peak_memory(step)["peak"]
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - start


# ## The example
#
# Two sequences of three heads, ten positions, eight features; causal, with tiles of
# 4 queries by 3 keys, which divide neither length: 3 query blocks by 4 key blocks, of
# which 4 are full, 5 cross the diagonal and 3 are skipped. The dataflow diagram is
# declared by `dataflow` below, not traced: a Function's loops are invisible to
# `torch.fx`.


def example():
    """A small example: `fn(*args)` runs causal flash attention on `[2, 3, 10, 8]`."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 2, 3, 10, 8, generator=generator)  # [2, 3, 10, 8] each
    return flash_attention, (q, k, v, True, 4, 3)


def dataflow(output: tuple[Tensor, Tensor]):
    """The steps of `flash_attention` as a graph, with the shapes between them."""
    out, lse = output
    *lead, n, d_v = out.shape
    batch = ", ".join(str(size) for size in lead)
    nodes = [
        ("q", f"Q [{batch}, {n}, d]"),
        ("kv", f"K, V [{batch}, N_k, d]"),
        ("qi", "outer loop: query block Q_i"),
        ("kj", "inner loop: key block K_j, V_j"),
        ("s", "tile of scores S = τ Q_i K_jᵀ (masked on the diagonal)"),
        ("online", "online softmax: m, ℓ, Õ ← α·Õ + exp(S − m) V_j"),
        ("o", f"O = Õ / ℓ [{batch}, {n}, {d_v}]"),
        ("lse", f"L = m + log ℓ [{', '.join(str(s) for s in lse.shape)}]"),
    ]
    edges = [
        ("q", "qi", f"[{batch}, B_r, d]"),
        ("kv", "kj", f"[{batch}, B_c, d]"),
        ("qi", "s", ""),
        ("kj", "s", ""),
        ("s", "online", f"[{batch}, B_r, B_c]"),
        ("kj", "online", "V_j"),
        ("online", "o", "once per query block"),
        ("online", "lse", "saved for backward"),
    ]
    return nodes, edges


# ## The demo
#
# For each length $N$ the demo runs one training step (forward, then backward from a
# fixed $dO$) of plain attention, of ours and of `F.scaled_dot_product_attention`,
# and records the bytes saved for backward, the peak of the step and its time (the
# best of a few runs). Then it checks ours against SDPA in float64 and float32 at a
# length the blocks do not divide, counts the tiles a causal pass skips, and draws two
# figures: the three measurements against $N$, and the tile map of a causal pass.
#
# The timing is the honest part. On two CPU cores ours takes about as long as plain
# attention at $N = 2048$ (0.9 to 1.2× in our runs) and two to three times as long as
# SDPA (the demo prints this run's ratios); on an H200 GPU it is some 200× slower than
# either. Three reasons. Each tile costs a dozen separate operator
# calls from Python (on a GPU, a dozen kernel launches), and a $128 \times 128$ tile
# is too little work to hide them. Nothing is fused: every tile's scores and
# probabilities are written to memory by one operator and read back by the next,
# exactly the traffic FlashAttention exists to remove. And the backward pass computes
# $S$ a second time. SDPA on a CPU is this same algorithm in C++, vectorised and
# parallel over batch, heads and query blocks; on a GPU it calls FlashAttention-2's own
# kernels. What survives in Python is the memory, and that is what the left panels
# show: on the GPU, at $N = 16384$ with 8 heads, plain attention's step peaks at 32 GiB
# and ours at no more than 133 MiB: 37 MiB measured, plus the 96 MiB of $dQ$, $dK$,
# $dV$, which that run left out (it freed the previous method's gradients inside the
# measurement, where the CPU's profiler does not count them but the GPU's allocator
# does; the demo now frees them before).


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Measure memory and time of plain, tiled and PyTorch attention against N; check
    the errors; save the figures."""
    parser = argparse.ArgumentParser(
        description="FlashAttention in plain PyTorch: memory and time against N.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--lengths",
        type=integers(at_least=1),
        default="64,128,256,512,1024,2048",
        help="comma-separated N",
    )
    parser.add_argument(
        "--heads", type=integer(at_least=1), default=2, help="attention heads"
    )
    parser.add_argument(
        "--dim", type=integer(at_least=1), default=64, help="features per head, d"
    )
    parser.add_argument(
        "--block", type=integer(at_least=1), default=128, help="tile size B_r = B_c"
    )
    parser.add_argument(
        "--repeats", type=integer(at_least=1), default=2, help="timed runs per point"
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device",
    )
    parser.add_argument("--out", default="out/flash_attention", help="figure folder")
    args = parser.parse_args(argv)
    lengths = args.lengths
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(args.seed)

    def ours(q, k, v):
        return flash_attention(q, k, v, block_q=args.block, block_k=args.block)[0]

    methods = {
        "plain": naive_attention,
        "ours": ours,
        "SDPA": F.scaled_dot_product_attention,
    }
    saved = {name: [] for name in methods}
    peaks = {name: [] for name in methods}
    seconds = {name: [] for name in methods}
    for n in tqdm(lengths, desc="lengths"):
        shape = (1, args.heads, n, args.dim)
        q, k, v, grad_out = (
            torch.randn(*shape, generator=generator).to(device) for _ in range(4)
        )
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        for name, attention in methods.items():

            def step(attention=attention):
                attention(q, k, v).backward(grad_out)

            saved[name].append(saved_bytes(lambda: attention(q, k, v)))
            # Freed before the measurement, not inside it: freed inside, the previous
            # method's gradients cancelled this one's in the GPU allocator's count.
            q.grad = k.grad = v.grad = None
            peaks[name].append(peak_bytes(step, device))
            seconds[name].append(time_step(step, device, args.repeats))

    # Correctness at a length the tiles do not divide, causal and not.
    errors = {}
    n_check = args.block * 2 + args.block // 2 + 1
    for dtype in (torch.float64, torch.float32):
        shape = (2, args.heads, n_check, args.dim)
        q, k, v, grad_out = (
            torch.randn(*shape, generator=generator).to(device, dtype) for _ in range(4)
        )
        worst = 0.0
        for causal in (False, True):
            results = []
            for attention in (flash_attention, F.scaled_dot_product_attention):
                inputs = [t.clone().requires_grad_() for t in (q, k, v)]
                if attention is flash_attention:
                    output = flash_attention(*inputs, causal, args.block, args.block)[0]
                else:
                    output = attention(*inputs, is_causal=causal)
                output.backward(grad_out)
                results.append([output.detach(), *(t.grad for t in inputs)])
            worst = max(worst, *((a - b).abs().max().item() for a, b in zip(*results)))
        errors[str(dtype).removeprefix("torch.")] = worst
    for dtype, error in errors.items():
        print(
            f"max |ours - SDPA| over O, dQ, dK, dV at N={n_check}, {dtype}: {error:.1e}"
        )

    n = lengths[-1]
    tiles = block_counts(n, n, args.block, args.block, True)
    visited = tiles["full"] + tiles["diagonal"]
    print(
        f"causal, N={n}, {args.block}×{args.block} tiles: {visited} of "
        f"{sum(tiles.values())} visited, {tiles['skipped']} skipped, "
        f"{tiles['diagonal']} masked"
    )
    ratios = {
        "peak ratio": peaks["plain"][-1] / peaks["ours"][-1],
        "saved ratio": saved["plain"][-1] / saved["ours"][-1],
        "time vs plain": seconds["ours"][-1] / seconds["plain"][-1],
        "time vs SDPA": seconds["ours"][-1] / seconds["SDPA"][-1],
    }
    for name in methods:
        print(
            f"N={n} {name:6s} saved {saved[name][-1] / 2**20:7.2f} MiB  "
            f"peak {peaks[name][-1] / 2**20:7.2f} MiB  "
            f"step {seconds[name][-1] * 1e3:7.1f} ms"
        )
    print(
        f"at N={n} plain attention peaks at {ratios['peak ratio']:.1f}× our memory "
        f"and saves {ratios['saved ratio']:.1f}× our bytes; ours takes "
        f"{ratios['time vs plain']:.1f}× plain's time and "
        f"{ratios['time vs SDPA']:.1f}× SDPA's"
    )
    crossover = next(
        (m for m, a, b in zip(lengths, peaks["plain"], peaks["ours"]) if b < a), None
    )

    fig, axes = figure(panels=3)
    styles = {
        "plain": ("plain attention", "o-"),
        "ours": ("ours (tiled)", "s-"),
        "SDPA": ("SDPA (PyTorch's kernel)", "x--"),
    }
    for name, (label, style) in styles.items():
        for axis, values, unit in zip(
            axes, (peaks, saved, seconds), (2**20,) * 2 + (1e-3,)
        ):
            axis.plot(
                lengths, [value / unit for value in values[name]], style, label=label
            )
    if crossover is not None:
        axes[0].axvline(crossover, color="0.5", linestyle=":", label="ours smaller")
    what = "CUDA allocator" if device.type == "cuda" else "CPU profiler"
    titles = (f"peak of forward+backward ({what})", "saved for backward", "step time")
    for axis, title, ylabel in zip(axes, titles, ("MiB", "MiB", "ms")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("sequence length $N$")
        axis.set_ylabel(ylabel)
        axis.set_title(title)
    axes[0].legend()
    save(
        fig,
        out / "memory_time.png",
        caption=f"One training step of attention ({args.heads} heads, "
        f"d={args.dim}, {args.block}×{args.block} tiles) against N: the peak of live "
        "bytes (left) and the bytes saved for backward (middle) grow as N² for plain "
        "attention and as N for ours and for PyTorch's kernel, which save the same "
        "five tensors; right, the time of the step, where ours pays for its Python "
        "loop.",
    )

    fig, axis = figure()
    starts = range(0, n, args.block)
    shade = {"skipped": 0, "diagonal": 1, "full": 2}
    grid = [
        [
            shade[
                block_kind(i, min(i + args.block, n), j, min(j + args.block, n), True)
            ]
            for j in starts
        ]
        for i in starts
    ]
    axis.imshow(grid, cmap="Blues", vmin=0, vmax=2)
    axis.set_xlabel("key block $j$")
    axis.set_ylabel("query block $i$")
    axis.set_title(
        f"causal, N={n}: {tiles['full']} full, {tiles['diagonal']} masked, "
        f"{tiles['skipped']} skipped"
    )
    save(
        fig,
        out / "tiles.png",
        caption=f"The tiles of a causal pass at N={n}: dark tiles are computed "
        "without a mask, the diagonal ones with it, and the white ones above the "
        "diagonal are skipped, never computed.",
    )
    return {
        "max error float64": errors["float64"],
        "max error float32": errors["float32"],
        **ratios,
        "skipped tiles": float(tiles["skipped"]),
    }


if __name__ == "__main__":
    main()

# ## Exercises
#
# 1. Add a key-padding mask (`lengths` per sequence) to `flash_attention`. Which tiles
#    can be skipped now, and what must happen to a query row whose keys are all masked,
#    so that $m = -\infty$ does not make $e^{-\infty + \infty}$ a NaN?
# 2. Split the keys into two halves, run `flash_attention` on each, and merge the two
#    outputs with their log-sum-exps into the full attention (this is how split-KV
#    decoding and ring attention combine partial results). Check the merged gradient,
#    which needs the gradient through $L$.
# 3. Support causal attention with $N_q < N_k$ aligned to the bottom-right corner, as
#    `flash_attn` does for decoding with a cache, and compare with SDPA given an
#    explicit boolean `attn_mask`.
# 4. Add attention dropout without storing the dropout mask: regenerate it in backward
#    from a seed and the tile's position, as FlashAttention does.
