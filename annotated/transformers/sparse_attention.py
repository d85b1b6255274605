r"""
---
title: Sparse attention patterns
summary: >-
  Sliding-window, strided, fixed and BigBird block-sparse attention computed by blocks,
  never forming the N×N matrix, equal to F.scaled_dot_product_attention with the
  pattern's boolean mask to 1e-10 in float64, forward and gradients.
time: 10 s
references:
  - key: vaswani2017attention
    authors: [Ashish Vaswani, Noam Shazeer, Niki Parmar, Jakob Uszkoreit, Llion Jones,
      Aidan N. Gomez, Łukasz Kaiser, Illia Polosukhin]
    title: Attention Is All You Need
    year: 2017
    venue: NeurIPS 2017
    arxiv: "1706.03762"
  - key: child2019generating
    authors: [Rewon Child, Scott Gray, Alec Radford, Ilya Sutskever]
    title: Generating Long Sequences with Sparse Transformers
    year: 2019
    venue: arXiv preprint
    arxiv: "1904.10509"
  - key: beltagy2020longformer
    authors: [Iz Beltagy, Matthew E. Peters, Arman Cohan]
    title: "Longformer: The Long-Document Transformer"
    year: 2020
    venue: arXiv preprint
    arxiv: "2004.05150"
  - key: zaheer2020bigbird
    authors: [Manzil Zaheer, Guru Guruganesh, Avinava Dubey, Joshua Ainslie, et al.]
    title: "Big Bird: Transformers for Longer Sequences"
    year: 2020
    venue: NeurIPS 2020
    arxiv: "2007.14062"
worksheet:
  - region: sliding_window_attention
    hint: >-
      Cut q into blocks of b = min(window, N) queries and give each block its band of
      key and value blocks (the one before, its own, and the one after unless causal)
      with to_blocks and band_of_blocks; score each block against its band, allow the
      pairs that sliding_window_rule and inside keep (band_positions gives the
      positions), take joint_softmax, sum the band's values, and flatten the blocks
      back to [..., N, d_v].
    tests:
      - test_sliding_window_matches_sdpa_with_its_mask
      - test_a_long_sequence
  - region: strided_attention
    hint: >-
      Two disjoint parts in blocks of stride: a band (own and neighbouring blocks)
      that owns the offsets |i - j| < stride, and a column in which query I*stride + p
      scores the key at offset p of every other block (an einsum with p as a batch
      axis). Mask each with strided_rule and inside, take one joint_softmax over
      both, and add the band's and the column's weighted values.
    tests:
      - test_strided_matches_sdpa_with_its_mask
      - test_huge_scores_stay_finite
---

[Attention](attention.md) [@vaswani2017attention] compares every query with every
key: $N^2$ scores for $N$ positions. At $N = 16384$ that is 268 million scores per head,
and a training step keeps them for the backward pass. Most of those weights end up
close to zero anyway: a token mostly reads its neighbours and a few special places.
Sparse attention decides in advance which (query, key) pairs may interact, and
computes only those. Each query still takes a softmax over its keys, so the result is
exact attention under a mask; what changes is that the forbidden scores are never
computed at all.

Three families of patterns are built here:

- **local**, a sliding window: query $i$ reads keys $j$ with $|i - j| \le w$, the
  backbone of Longformer [@beltagy2020longformer];
- **strided** and **fixed**, the two factorised patterns of the Sparse Transformer
  [@child2019generating]: a local part plus a part that reaches every $\ell$-th
  position (strided) or a few *summary* positions at the end of every block of
  $\ell$ (fixed), so that any position reaches any other in two steps;
- **block-sparse with global blocks**, BigBird's pattern [@zaheer2020bigbird]: blocks
  of $b$ tokens, each attending its neighbouring blocks, a few global blocks that
  attend and are attended by everything, and, optionally, a few random blocks per row
  (without them it is Longformer's window-plus-global pattern on blocks).

Each pattern is one rule `allowed(i, j)`, and each is computed two ways: as a dense
boolean mask handed to `F.scaled_dot_product_attention` (the reference, $N^2$ bytes),
and by blocks, gathering for each block of queries only the keys its rule can allow.
The test checks that the two agree to $10^{-10}$ in float64, forward and all three
gradients, causal or not, for lengths the blocks do not divide, and that each mask
holds exactly the number of pairs its formula predicts. The demo measures what the
blocks buy on two CPU cores: at $N = 4096$ (2 heads, $d = 64$), a sliding window of
$w = 64$ (3 % of the pairs) saves 21 MiB for backward, where PyTorch's fused SDPA with
the mask saves 72 MiB (the mask as floats) and plain dense attention 278 MiB; it
computes 192 scores per query where SDPA computes 4096.
"""

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from annotated.data import integer, integers, torch_device
from annotated.figures import figure, save
from annotated.transformers.attention import scaled_dot_product_attention

# ## A pattern is a rule on positions
#
# Every pattern below is a function `allowed(i, j)` of two integer tensors that
# broadcast against each other: `True` where query $i$ may read key $j$. Called on
# `i = arange(N)[:, None]` and `j = arange(N)[None, :]` it gives the dense $N \times N$
# mask. Called on the positions of one block of queries and the keys gathered for it,
# it gives that tile's mask. The same rule serves both, so the reference and the sparse
# computation cannot disagree about what the pattern *is*; the test checks each rule
# separately against a count of its pairs.
#
# The sliding window of radius $w$ allows $|i - j| \le w$: $2w + 1$ keys for a query
# in the middle, fewer near the ends, $N(2w+1) - w(w+1)$ pairs in all when $w < N$.
# Causal attention keeps $0 \le i - j \le w$: $N(w+1) - w(w+1)/2$ pairs.


def sliding_window_rule(i: Tensor, j: Tensor, window: int, causal: bool) -> Tensor:
    r"""`True` where $|i - j| \le w$ (and $j \le i$ if causal)."""
    near = (i - j).abs() <= window
    return near & (j <= i) if causal else near


# The Sparse Transformer's *strided* pattern with stride $\ell$ [@child2019generating]
# is the union of two sets: the previous $\ell$ positions, $0 \le i - j < \ell$, and
# every $\ell$-th position before, $(i - j) \bmod \ell = 0$. One head using both is
# the paper's "merged head". A query thus reads about $\ell + N/\ell$ keys, which is
# $2\sqrt N$ at the paper's choice $\ell \approx \sqrt N$; in two layers any position
# reaches any earlier one. Without the causal restriction the two sets extend to both
# sides: $|i - j| < \ell$, or $i - j$ a multiple of $\ell$. The strided pattern suits
# data with a period $\ell$, such as the rows of an image.


def strided_rule(i: Tensor, j: Tensor, stride: int, causal: bool) -> Tensor:
    r"""`True` where $|i - j| < \ell$ or $\ell$ divides $i - j$ (and $j \le i$ if
    causal)."""
    offset = i - j
    allowed = (offset.abs() < stride) | (offset % stride == 0)
    return allowed & (j <= i) if causal else allowed


# The *fixed* pattern cuts the sequence into blocks of $\ell$. A query reads its own
# block, and the last $c$ positions of every block, the summary cells that the
# paper's Figure 3 shows as columns. Its authors found it better than the strided one
# for text, which has no period. With $c = 1$ the summary columns are every
# $\ell$-th position, a fixed set that all queries share, which is what makes it
# cheap: the summary keys can be gathered once.


def fixed_rule(i: Tensor, j: Tensor, stride: int, summary: int, causal: bool) -> Tensor:
    r"""`True` where $\lfloor i/\ell \rfloor = \lfloor j/\ell \rfloor$ or
    $j \bmod \ell \ge \ell - c$ (and $j \le i$ if causal)."""
    same_block = torch.div(i, stride, rounding_mode="floor") == torch.div(
        j, stride, rounding_mode="floor"
    )
    allowed = same_block | (j % stride >= stride - summary)
    return allowed & (j <= i) if causal else allowed


# BigBird's pattern [@zaheer2020bigbird] lives on blocks of $b$ tokens: query block
# $I$ reads key block $J$ when $|I - J| \le r$ (the window, $r = 1$ in the paper: three
# blocks), when either block is one of the first $g$ *global* blocks, or when $J$ is
# one of $I$'s random blocks. Global blocks are BigBird's "ITC" variant and
# Longformer's global tokens [@beltagy2020longformer]: a few positions that see the
# whole sequence and that the whole sequence sees, so that any two tokens are two steps
# apart. With no random blocks, the pattern is Longformer's on blocks, what
# DeepSpeed's sparse attention calls `BSLongformerSparsityConfig`.
#
# The random blocks are drawn once per layout from a seeded generator, $R$ per query
# block, among the blocks that neither the window nor the global blocks already
# cover (BigBird's `_bigbird_block_rand_mask` draws them the same way, excluding the
# window and the global blocks), so that no pair is counted twice. Causal attention
# draws only among blocks before the window. Global query blocks need none: they see
# everything. A row short of candidates gets fewer, marked $-1$.


def bigbird_random_blocks(
    n_blocks: int,
    window_blocks: int,
    global_blocks: int,
    random_blocks: int,
    seed: int,
    causal: bool,
) -> Tensor:
    """`[n_blocks, random_blocks]` key-block indices per query block, `-1` where a
    row has fewer candidates."""
    generator = torch.Generator().manual_seed(seed)
    table = torch.full((n_blocks, random_blocks), -1, dtype=torch.long)
    for row in range(global_blocks, n_blocks):
        stop = row - window_blocks if causal else n_blocks
        candidates = torch.tensor(
            [
                block
                for block in range(global_blocks, stop)
                if abs(block - row) > window_blocks
            ],
            dtype=torch.long,
        )
        chosen = torch.randperm(len(candidates), generator=generator)[:random_blocks]
        table[row, : len(chosen)] = candidates[chosen]
    return table


def bigbird_rule(
    i: Tensor,
    j: Tensor,
    block: int,
    window_blocks: int,
    global_blocks: int,
    random: Tensor,
    causal: bool,
) -> Tensor:
    r"""`True` where block $J$ of key $j$ is in the window of $i$'s block $I$, either
    block is global, or $J$ is one of $I$'s `random` blocks (and $j \le i$ if
    causal)."""
    row = torch.div(i, block, rounding_mode="floor")  # I
    col = torch.div(j, block, rounding_mode="floor")  # J
    near = (row - col).abs() <= window_blocks
    is_global = (row < global_blocks) | (col < global_blocks)
    is_random = (col.unsqueeze(-1) == random[row]).any(dim=-1) & (col >= 0)
    allowed = near | is_global | is_random
    return allowed & (j <= i) if causal else allowed


# ## The masks, for the reference and the figures
#
# Evaluated on all $N^2$ pairs, the rules give the boolean masks that
# `F.scaled_dot_product_attention` reads (`True` = may attend). These are what the
# sparse computation avoids: $N^2$ bytes each, built only to check against and to
# draw.


def positions(n: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """`(i [n, 1], j [1, n])`: every query position against every key position."""
    index = torch.arange(n, device=device)
    return index[:, None], index[None, :]


def sliding_window_mask(n: int, window: int, causal: bool = False) -> Tensor:
    """The `[n, n]` boolean mask of a sliding window of radius `window`."""
    return sliding_window_rule(*positions(n), window, causal)


def strided_mask(n: int, stride: int, causal: bool = False) -> Tensor:
    """The `[n, n]` boolean mask of the strided pattern with stride `stride`."""
    return strided_rule(*positions(n), stride, causal)


def fixed_mask(n: int, stride: int, summary: int, causal: bool = False) -> Tensor:
    """The `[n, n]` boolean mask of the fixed pattern: blocks of `stride`, the last
    `summary` cells of each shared."""
    return fixed_rule(*positions(n), stride, summary, causal)


def bigbird_mask(
    n: int,
    block: int,
    window_blocks: int = 1,
    global_blocks: int = 1,
    random_blocks: int = 0,
    seed: int = 0,
    causal: bool = False,
) -> Tensor:
    """The `[n, n]` boolean mask of BigBird's block pattern (the same random blocks
    as `bigbird_attention` with the same seed)."""
    n_blocks = -(-n // block)
    global_blocks = min(global_blocks, n_blocks)
    random = bigbird_random_blocks(
        n_blocks, window_blocks, global_blocks, random_blocks, seed, causal
    )
    return bigbird_rule(
        *positions(n), block, window_blocks, global_blocks, random, causal
    )


# ## Computing by blocks
#
# The sparse computation cuts the sequence into blocks of $b$ positions, zero-padded
# at the end to a whole number of blocks, so that a length the blocks do not divide
# costs at most one partial block. For each block of queries it gathers, as
# contiguous tensors, the few sets of keys its rule can allow (neighbouring blocks,
# a column, the global blocks), computes their scores with ordinary batched matrix
# products, and masks each tile with the rule evaluated on the tile's positions.
#
# Padded keys must never be read by a real query, so `inside` forbids key positions
# outside $[0, N)$. A padded query (position $\ge N$) is allowed to read padded keys:
# its row would otherwise be all $-\infty$, a NaN softmax, and although the row is cut
# off at the end, the NaN would flow back through the softmax into the real keys'
# gradients ($0 \cdot \text{NaN} = \text{NaN}$).


def inside(i: Tensor, j: Tensor, n: int) -> Tensor:
    """`True` where key $j$ exists, or where query $i$ is padding itself."""
    return (j >= 0) & ((j < n) | (i >= n))


def to_blocks(x: Tensor, block: int) -> Tensor:
    """`[..., N, d]` → `[..., ceil(N/b), b, d]`, zero-padded at the end."""
    n_blocks = -(-x.shape[-2] // block)
    x = F.pad(x, (0, 0, 0, n_blocks * block - x.shape[-2]))  # [..., n_blocks * b, d]
    return x.unflatten(-2, (n_blocks, block))


# The neighbouring blocks of every block, side by side, are the workhorse of the local
# parts. `band_of_blocks` shifts the blocked keys by whole blocks and concatenates the
# shifts: row $I$ of the result holds blocks $I - \text{before}, \dots, I +
# \text{after}$, zeros where they fall off the ends. This is the "sliding chunks" trick
# of Longformer's implementation and BigBird's three-block window: it copies the keys
# $\text{before} + 1 + \text{after}$ times, a cost linear in $N$, so that one batched
# matrix product computes every window at once. `band_positions` gives the positions
# of the same tiles, for the rule.


def band_of_blocks(x_blocks: Tensor, before: int, after: int) -> Tensor:
    """`[..., nb, b, d]` → `[..., nb, (before + 1 + after) b, d]`: each block with its
    neighbours."""
    n_blocks = x_blocks.shape[-3]
    padded = F.pad(x_blocks, (0, 0, 0, 0, before, after))  # whole zero blocks
    shifts = [padded[..., s : s + n_blocks, :, :] for s in range(before + 1 + after)]
    return torch.cat(shifts, dim=-2)


def band_positions(
    n_blocks: int, block: int, before: int, after: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Query positions `[nb, b, 1]` and the band's key positions `[nb, 1, width]`."""
    starts = torch.arange(n_blocks, device=device)[:, None, None] * block
    i = starts + torch.arange(block, device=device)[None, :, None]
    width = (before + 1 + after) * block
    j = starts - before * block + torch.arange(width, device=device)[None, None, :]
    return i, j


# ## One softmax over several key sets
#
# A pattern that is a union of parts (a band and a column, a window and the global
# blocks) needs one softmax over all its keys, not one per part. The parts' scores are
# concatenated along the key axis, masked, softmaxed together and split again, and
# each part then sums its own values with its own weights. BigBird's implementation
# does the same: it concatenates the scores of the window, the global and the random
# keys of a block row before its softmax. The parts must be *disjoint*: a key present
# in two parts would be counted twice and get twice its weight. Each part below
# therefore keeps only the pairs it owns (the strided band the offsets below $\ell$,
# the column the others). If they overlapped, the test against the dense mask would
# fail.


def joint_softmax(scores: list[Tensor], allowed: list[Tensor]) -> list[Tensor]:
    """Softmax across the concatenated parts, with `-inf` where not `allowed`; the
    weights split back into parts."""
    masked = [part.masked_fill(~keep, -math.inf) for part, keep in zip(scores, allowed)]
    weights = torch.softmax(torch.cat(masked, dim=-1), dim=-1)
    return list(weights.split([part.shape[-1] for part in scores], dim=-1))


# ## Checking the arguments
#
# One checker for the four public functions. Sparse patterns are self-attention
# patterns, defined on one sequence's positions, so queries, keys and values must have
# the same length; a pattern's sizes must be whole numbers of the right sign, or a
# block of $0$ would divide by zero and a float would index nothing.


def check_inputs(
    name: str, q: Tensor, k: Tensor, v: Tensor, causal: bool, **sizes: int
) -> None:
    """Raise `TypeError`/`ValueError` naming the argument unless the inputs fit
    `name`."""
    for label, tensor in (("q", q), ("k", k), ("v", v)):
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            raise TypeError(
                f"{name}: {label} must be a floating-point torch.Tensor, got "
                f"{getattr(tensor, 'dtype', type(tensor).__name__)}"
            )
        if tensor.ndim < 2 or tensor.shape[-2] == 0:
            raise ValueError(
                f"{name}: {label} must be [..., N, features] with N >= 1, got shape "
                f"{tuple(tensor.shape)}"
            )
    if not q.dtype == k.dtype == v.dtype or not q.device == k.device == v.device:
        raise TypeError(
            f"{name}: q, k and v must share one dtype and device, got {q.dtype}, "
            f"{k.dtype}, {v.dtype} on {q.device}, {k.device}, {v.device}"
        )
    if not q.shape[:-1] == k.shape[:-1] == v.shape[:-1] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"{name}: q, k and v must be [..., N, d], [..., N, d] and [..., N, d_v] "
            f"with the same leading dims and N, got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not isinstance(causal, bool):
        raise TypeError(f"{name}: causal must be a bool, got {causal!r}")
    for label, size in sizes.items():
        least = 0 if label in ("global_blocks", "random_blocks", "window_blocks") else 1
        if isinstance(size, bool) or not isinstance(size, int) or size < least:
            raise ValueError(f"{name}: {label} must be an int >= {least}, got {size!r}")


# ## The sliding window
#
# Blocks of $b = w$ queries. Query block $I$ spans positions $[Iw, Iw + w)$ and its
# windows $[Iw - w, Iw + 2w)$, inside blocks $I-1$, $I$ and $I+1$ (causal: $I-1$ and
# $I$). One batched product of each query block with its three key blocks gives
# scores `[..., N/w, w, 3w]`: $3w$ per query where $2w+1$ are needed, and nothing of
# size $N^2$. The window is clipped to $N$, so a window wider than the sequence is
# one block and dense attention.


def sliding_window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int,
    causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    r"""Attention where query $i$ reads keys $|i - j| \le w$ (causal: $0 \le i - j \le
    w$); `q`, `k` `[..., N, d]`, `v` `[..., N, d_v]` → `[..., N, d_v]`."""
    check_inputs("sliding_window_attention", q, k, v, causal, window=window)
    n = q.shape[-2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    block = min(window, n)
    after = 0 if causal else 1
    q_blocks = to_blocks(q, block)  # [..., nb, b, d]
    k_band = band_of_blocks(to_blocks(k, block), 1, after)  # [..., nb, width, d]
    v_band = band_of_blocks(to_blocks(v, block), 1, after)  # [..., nb, width, d_v]
    scores = q_blocks @ k_band.transpose(-2, -1) * scale  # [..., nb, b, width]
    i, j = band_positions(q_blocks.shape[-3], block, 1, after, q.device)
    allowed = sliding_window_rule(i, j, window, causal) & inside(i, j, n)
    (weights,) = joint_softmax([scores], [allowed])  # [..., nb, b, width]
    out = weights @ v_band  # [..., nb, b, d_v]
    return out.flatten(-3, -2)[..., :n, :]  # [..., N, d_v]


# ## Strided: a band and a column
#
# Blocks of $b = \ell$. The band part is the sliding window's computation with the
# offsets $|i - j| < \ell$. The column part is the interesting one: query $i = I\ell +
# p$ reads $j = J\ell + p$, the key at the *same offset* $p$ of every other block.
# Seen on the blocked tensors `[nb, ℓ, d]`, it is a product over the block index with
# the offset as a batch axis:
#
# $$
# S^{\text{col}}_{I p J} = \tau \textstyle\sum_e Q_{I p e} K_{J p e},
# $$
#
# `einsum("...ape,...bpe->...apb")`, scores `[nb, ℓ, nb]`: $N \cdot N/\ell$ of them,
# $N^{1.5}$ at $\ell = \sqrt N$. In the natural order the column is no use to
# block-sparse kernels, since it puts one key in every block. OpenAI's
# `blocksparse_attention_impl` therefore transposes the sequence as an $N/\ell \times
# \ell$ grid first (`strided_transpose`), which makes each column contiguous; the
# einsum's batch axis $p$ is that transpose.


def strided_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    stride: int,
    causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    r"""The Sparse Transformer's strided pattern, band $|i-j| < \ell$ plus column
    $\ell \mid i - j$; `[..., N, d]` → `[..., N, d_v]`."""
    check_inputs("strided_attention", q, k, v, causal, stride=stride)
    n = q.shape[-2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    after = 0 if causal else 1
    q_blocks, k_blocks, v_blocks = (to_blocks(t, stride) for t in (q, k, v))
    n_blocks = q_blocks.shape[-3]

    k_band = band_of_blocks(k_blocks, 1, after)  # [..., nb, width, d]
    band_scores = q_blocks @ k_band.transpose(-2, -1) * scale  # [..., nb, ℓ, width]
    i, j = band_positions(n_blocks, stride, 1, after, q.device)
    band_allowed = strided_rule(i, j, stride, causal) & inside(i, j, n)
    band_allowed &= (i - j).abs() < stride  # the band owns the offsets below ℓ

    column_scores = torch.einsum("...ape,...bpe->...apb", q_blocks, k_blocks) * scale
    offset = torch.arange(stride, device=q.device)[None, :, None]  # p: [1, ℓ, 1]
    block = torch.arange(n_blocks, device=q.device)
    i = block[:, None, None] * stride + offset  # [nb, ℓ, 1]
    j = block[None, None, :] * stride + offset  # [1, ℓ, nb]
    column_allowed = strided_rule(i, j, stride, causal) & inside(i, j, n)
    column_allowed &= i != j  # the column owns the other blocks

    band_weights, column_weights = joint_softmax(
        [band_scores, column_scores], [band_allowed, column_allowed]
    )  # [..., nb, ℓ, width], [..., nb, ℓ, nb]
    out = band_weights @ band_of_blocks(v_blocks, 1, after)  # [..., nb, ℓ, d_v]
    out = out + torch.einsum("...apb,...bpe->...ape", column_weights, v_blocks)
    return out.flatten(-3, -2)[..., :n, :]  # [..., N, d_v]


# ## Fixed: a block and the summary cells
#
# Blocks of $b = \ell$. The own-block part is one $\ell \times \ell$ tile per block,
# `[nb, ℓ, ℓ]`. The summary part gathers the last $c$ keys of every block once,
# `[nb·c, d]`, shared by every query, and scores all queries against them: $N \cdot
# cN/\ell$ scores. It owns the summary cells of the *other* blocks; those of the own
# block are in its tile already.


def fixed_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    stride: int,
    summary: int = 1,
    causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    r"""The Sparse Transformer's fixed pattern: own block of $\ell$ plus the last $c$
    cells of every block; `[..., N, d]` → `[..., N, d_v]`."""
    check_inputs("fixed_attention", q, k, v, causal, stride=stride, summary=summary)
    if summary > stride:
        raise ValueError(
            f"fixed_attention: summary must be <= stride={stride}, got {summary}"
        )
    n = q.shape[-2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q_blocks, k_blocks, v_blocks = (to_blocks(t, stride) for t in (q, k, v))
    n_blocks = q_blocks.shape[-3]
    i, j = band_positions(n_blocks, stride, 0, 0, q.device)  # [nb, ℓ, 1], [nb, 1, ℓ]

    own_scores = q_blocks @ k_blocks.transpose(-2, -1) * scale  # [..., nb, ℓ, ℓ]
    own_allowed = fixed_rule(i, j, stride, summary, causal) & inside(i, j, n)

    k_summary = k_blocks[..., stride - summary :, :].flatten(-3, -2)  # [..., nb·c, d]
    v_summary = v_blocks[..., stride - summary :, :].flatten(-3, -2)  # [.., nb·c, d_v]
    summary_scores = q_blocks.flatten(-3, -2) @ k_summary.transpose(-2, -1) * scale
    summary_scores = summary_scores.unflatten(
        -2, (n_blocks, stride)
    )  # [.., nb, ℓ, nb·c]
    j = j[..., stride - summary :].reshape(1, 1, -1)  # [1, 1, nb·c]
    summary_allowed = fixed_rule(i, j, stride, summary, causal) & inside(i, j, n)
    summary_allowed &= torch.div(j, stride, rounding_mode="floor") != torch.div(
        i, stride, rounding_mode="floor"
    )  # other blocks only

    own_weights, summary_weights = joint_softmax(
        [own_scores, summary_scores], [own_allowed, summary_allowed]
    )
    out = own_weights @ v_blocks  # [..., nb, ℓ, d_v]
    out = out.flatten(-3, -2) + summary_weights.flatten(-3, -2) @ v_summary
    return out[..., :n, :]  # [..., N, d_v]


# ## BigBird: global rows, then window, global and random keys
#
# The global query blocks see everything: their $gb$ rows are ordinary dense rows,
# `[gb, N]` scores, linear in $N$. Every other query block $I$ gathers three disjoint
# key sets and takes one softmax over them, as BigBird's
# `bigbird_block_sparse_attention` does:
#
# - the window, blocks $I - r, \dots, I + r$ from `band_of_blocks`, owning only the
#   non-global ones;
# - the $g$ global blocks, the same keys for every row;
# - its random blocks, gathered by index, `k_blocks[..., random[I], :, :]`.
#
# Per query that is $(2r + 1 + g + R)\,b$ keys whatever $N$ is: memory and time linear
# in $N$.


def bigbird_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    block: int,
    window_blocks: int = 1,
    global_blocks: int = 1,
    random_blocks: int = 0,
    seed: int = 0,
    causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """BigBird's block-sparse attention: window, global and (seeded) random blocks;
    `[..., N, d]` → `[..., N, d_v]`."""
    check_inputs(
        "bigbird_attention",
        q,
        k,
        v,
        causal,
        block=block,
        window_blocks=window_blocks,
        global_blocks=global_blocks,
        random_blocks=random_blocks,
    )
    n = q.shape[-2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q_blocks, k_blocks, v_blocks = (to_blocks(t, block) for t in (q, k, v))
    n_blocks = q_blocks.shape[-3]
    g = min(global_blocks, n_blocks)
    random = bigbird_random_blocks(
        n_blocks, window_blocks, g, random_blocks, seed, causal
    ).to(q.device)

    def rule(i: Tensor, j: Tensor) -> Tensor:
        allowed = bigbird_rule(i, j, block, window_blocks, g, random, causal)
        return allowed & inside(i, j, n)

    # The global rows: the first g blocks of queries against every key.
    k_all, v_all = k_blocks.flatten(-3, -2), v_blocks.flatten(-3, -2)  # [..., nb·b, *]
    q_global = q_blocks[..., :g, :, :].flatten(-3, -2)  # [..., g·b, d]
    i, j = positions(n_blocks * block, q.device)
    (global_row_weights,) = joint_softmax(
        [q_global @ k_all.transpose(-2, -1) * scale], [rule(i[: g * block], j)]
    )  # [..., g·b, nb·b]
    out_global = global_row_weights @ v_all  # [..., g·b, d_v]

    # The other rows: window, global and random keys.
    q_rest = q_blocks[..., g:, :, :]  # [..., nb - g, b, d]
    after = 0 if causal else window_blocks
    k_window = band_of_blocks(k_blocks, window_blocks, after)[..., g:, :, :]
    v_window = band_of_blocks(v_blocks, window_blocks, after)[..., g:, :, :]
    i, j = band_positions(n_blocks, block, window_blocks, after, q.device)
    i, j = i[g:], j[g:]  # [nb - g, b, 1], [nb - g, 1, width]
    window_allowed = rule(i, j) & (j >= g * block)  # global blocks: their own part
    window_scores = q_rest @ k_window.transpose(-2, -1) * scale

    k_global, v_global = k_all[..., : g * block, :], v_all[..., : g * block, :]
    global_scores = q_rest.flatten(-3, -2) @ k_global.transpose(-2, -1) * scale
    global_scores = global_scores.unflatten(-2, (n_blocks - g, block))
    global_allowed = rule(i, torch.arange(g * block, device=q.device))

    chosen = random[g:].clamp(min=0)  # [nb - g, R]; -1 entries masked by the rule
    k_random = k_blocks[..., chosen, :, :].flatten(-3, -2)  # [..., nb - g, R·b, d]
    v_random = v_blocks[..., chosen, :, :].flatten(-3, -2)  # [..., nb - g, R·b, d_v]
    j = random[g:, :, None] * block + torch.arange(block, device=q.device)
    random_allowed = rule(i, j.flatten(-2, -1)[:, None, :])  # [nb - g, b, R·b]
    random_scores = q_rest @ k_random.transpose(-2, -1) * scale

    window_weights, global_weights, random_weights = joint_softmax(
        [window_scores, global_scores, random_scores],
        [window_allowed, global_allowed, random_allowed],
    )
    out_rest = window_weights @ v_window + random_weights @ v_random
    out_rest = out_rest.flatten(-3, -2) + global_weights.flatten(-3, -2) @ v_global
    return torch.cat([out_global, out_rest], dim=-2)[..., :n, :]  # [..., N, d_v]


# ## Measuring memory and time
#
# **Saved for backward.** What a forward pass keeps alive until backward is what
# limits the length a training step can reach.
# `torch.autograd.graph.saved_tensors_hooks` calls a *pack* hook on every tensor a
# backward node stores, ours and PyTorch's alike; summing the bytes of the distinct
# storages (a view of $K$ is $K$) counts them exactly, independent of the allocator,
# as in [FlashAttention](flash_attention.md). The sparse functions save their tiles of
# scores and weights and the gathered key and value bands: all linear in $N$ for a
# window, $N \cdot N/\ell$ for the strided and fixed columns. PyTorch's
# `F.scaled_dot_product_attention` with a boolean mask runs, on a CPU, its fused
# FlashAttention kernel, which never stores the scores either; but it saves the mask,
# converted to a float $N \times N$ matrix, 4 bytes a pair. The plain dense attention
# of [the attention lesson](attention.md) saves, per head, the $N^2$ weights and more.
#
# **Time** is the best of a few runs of one training step, forward and backward from
# a fixed $dO$.


def saved_bytes(forward: Callable[[], object]) -> int:
    """Bytes of the distinct storages autograd saves for backward while `forward()`
    runs."""
    storages = {}

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return sum(storages.values())


def time_step(step: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best wall time of `repeats` runs of `step()`, in seconds."""
    best = math.inf
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


# ## The example
#
# BigBird's pattern on two sequences of two heads, 20 positions of 8 features, blocks
# of 4: one global block, a window of one block each side and one random block per
# row. The dataflow diagram is declared by `dataflow` below, not traced: the parts
# are gathered by index, which `torch.fx` does not follow.


def example():
    """A small example: `fn(*args)` runs BigBird attention on `[2, 2, 20, 8]`."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 20, 8, generator=generator)  # [2, 2, 20, 8] each
    return bigbird_attention, (q, k, v, 4, 1, 1, 1)


def dataflow(output: Tensor):
    """The steps of `bigbird_attention` as a graph, with the shapes between them."""
    *lead, n, d_v = output.shape
    batch = ", ".join(str(size) for size in lead)
    nodes = [
        ("qkv", f"Q, K, V [{batch}, {n}, d]"),
        ("blocks", "to_blocks: [..., nb, b, d], zero-padded"),
        ("rows", "global rows: first g query blocks × every key"),
        ("window", "window: band_of_blocks, blocks I−r … I+r"),
        ("global", "global keys: first g blocks, shared"),
        ("random", "random keys: k_blocks[random[I]]"),
        ("softmax", "joint_softmax over the three parts (masked by the rule)"),
        ("out", f"output [{batch}, {n}, {d_v}]"),
    ]
    edges = [
        ("qkv", "blocks", ""),
        ("blocks", "rows", "[..., g·b, N]"),
        ("blocks", "window", "[..., nb−g, b, (2r+1)b]"),
        ("blocks", "global", "[..., nb−g, b, g·b]"),
        ("blocks", "random", "[..., nb−g, b, R·b]"),
        ("window", "softmax", "scores"),
        ("global", "softmax", "scores"),
        ("random", "softmax", "scores"),
        ("softmax", "out", "weights @ values, summed over parts"),
        ("rows", "out", "concatenated in front"),
    ]
    return nodes, edges


# ## The demo
#
# First the check: every pattern, causal and not, against
# `F.scaled_dot_product_attention` with the pattern's mask, in float64, at a length
# that none of the blocks divides; the printed number is the largest difference over
# the output and the three gradients. Then the sweep: for each length $N$, the bytes
# saved for backward and the time of a training step, for the four patterns, for
# SDPA with the sliding window's mask, and for the plain dense attention of the
# attention lesson. The window and BigBird run bidirectionally, as in their encoders;
# strided and fixed run causally, as in the Sparse Transformer, with
# $\ell = \lfloor\sqrt N\rfloor$.
#
# The window computes $3w$ scores per query where dense SDPA (itself a fused C++
# kernel) computes $N$, so its advantage grows with $N$; BigBird, with
# $(3 + 1 + 2) \cdot 64 = 384$ keys per query, needs a longer sequence to pay off.
# Strided and fixed grow as $N^{1.5}$ and pay for their column parts, an einsum whose
# batch axis is the offset $p$ and which on a CPU is a poorly shaped product; on a GPU
# the same code runs (`--device cuda`), but a real sparse kernel (OpenAI's
# `blocksparse`, DeepSpeed's Triton kernels) fuses the gathering, the masks and the
# softmax, which these batched products do not.


def patterns(n: int, window: int, block: int) -> dict[str, Callable[..., Tensor]]:
    """The four patterns of the sweep at length `n`, each `fn(q, k, v)`."""
    stride = max(1, math.isqrt(n))
    return {
        f"window w={window}": lambda q, k, v: sliding_window_attention(q, k, v, window),
        "strided ℓ=√N, causal": lambda q, k, v: strided_attention(
            q, k, v, stride, True
        ),
        "fixed ℓ=√N, c=8, causal": lambda q, k, v: fixed_attention(
            q, k, v, stride, min(8, stride), True
        ),
        f"BigBird b={block}, r=1, g=1, R=2": lambda q, k, v: bigbird_attention(
            q, k, v, block, 1, 1, 2
        ),
    }


def pattern_masks(n: int, window: int, block: int) -> list[Tensor]:
    """The dense masks of `patterns(n, window, block)`, in the same order."""
    stride = max(1, math.isqrt(n))
    return [
        sliding_window_mask(n, window),
        strided_mask(n, stride, True),
        fixed_mask(n, stride, min(8, stride), True),
        bigbird_mask(n, block, 1, 1, 2),
    ]


def check_against_sdpa(n: int, device: torch.device, seed: int) -> dict[str, float]:
    """Largest |ours − SDPA with the mask| over O, dQ, dK, dV in float64, per
    pattern, causal and not."""
    generator = torch.Generator().manual_seed(seed)
    q, k, v, grad_out = (
        torch.randn(2, 2, n, 16, generator=generator, dtype=torch.float64).to(device)
        for _ in range(4)
    )
    cases = {
        "window": (
            lambda c: (sliding_window_attention, (5,), sliding_window_mask(n, 5, c))
        ),
        "strided": (lambda c: (strided_attention, (7,), strided_mask(n, 7, c))),
        "fixed": (lambda c: (fixed_attention, (7, 2), fixed_mask(n, 7, 2, c))),
        "BigBird": (
            lambda c: (
                bigbird_attention,
                (6, 1, 1, 2, seed),
                bigbird_mask(n, 6, 1, 1, 2, seed, c),
            )
        ),
    }
    errors = {}
    for name, case in cases.items():
        worst = 0.0
        for causal in (False, True):
            attention, sizes, mask = case(causal)
            results = []
            for run in (
                lambda *t: attention(*t, *sizes, causal=causal),
                lambda *t: F.scaled_dot_product_attention(
                    *t, attn_mask=mask.to(device)
                ),
            ):
                inputs = [t.clone().requires_grad_() for t in (q, k, v)]
                output = run(*inputs)
                output.backward(grad_out)
                results.append([output.detach(), *(t.grad for t in inputs)])
            worst = max(worst, *((a - b).abs().max().item() for a, b in zip(*results)))
        errors[name] = worst
    return errors


def plot_masks(out: Path, n: int) -> Path:
    """Draw the four patterns' masks at length `n`."""
    masks = {
        "sliding window, w=4": sliding_window_mask(n, 4),
        "strided, ℓ=8, causal": strided_mask(n, 8, True),
        "fixed, ℓ=8, c=2, causal": fixed_mask(n, 8, 2, True),
        "BigBird, b=8, r=1, g=1, R=1": bigbird_mask(n, 8, 1, 1, 1),
    }
    fig, axes = figure(panels=4, rows=2)
    for axis, (title, mask) in zip(axes.flat, masks.items()):
        axis.imshow(mask.numpy(), cmap="Blues", vmin=0, vmax=1.2)
        axis.set_title(f"{title}: {mask.float().mean():.0%} of pairs")
        axis.set_xlabel("key $j$")
        axis.set_ylabel("query $i$")
    return save(
        fig,
        out / "masks.png",
        caption=f"The four patterns at N={n}, blue where query i may read key j: "
        "a band of radius 4; the strided band plus every 8th earlier key; the fixed "
        "own block of 8 plus the last 2 cells of every earlier block; BigBird's "
        "three-block window, its global first block (full first rows and columns) "
        "and one random block per block row.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Check the patterns against SDPA with their masks, then measure memory and time
    against N; save the figures."""
    parser = argparse.ArgumentParser(
        description="Sparse attention patterns: exactness, memory and time against N.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--lengths",
        type=integers(at_least=1),
        default="256,512,1024,2048,4096",
        help="comma-separated N",
    )
    parser.add_argument(
        "--heads", type=integer(at_least=1), default=2, help="attention heads"
    )
    parser.add_argument(
        "--dim", type=integer(at_least=1), default=64, help="features per head, d"
    )
    parser.add_argument(
        "--window", type=integer(at_least=1), default=64, help="window radius w"
    )
    parser.add_argument(
        "--block", type=integer(at_least=1), default=64, help="BigBird's block size b"
    )
    parser.add_argument(
        "--repeats", type=integer(at_least=1), default=2, help="timed runs per point"
    )
    parser.add_argument(
        "--check-length", type=integer(at_least=1), default=203, help="N of the check"
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
    parser.add_argument("--out", default="out/sparse_attention", help="figure folder")
    args = parser.parse_args(argv)
    lengths = args.lengths
    device = torch.device(args.device)
    out = Path(args.out)
    generator = torch.Generator().manual_seed(args.seed)

    errors = check_against_sdpa(args.check_length, device, args.seed)
    for name, error in errors.items():
        print(
            f"{name:8s} max |ours - SDPA with mask| over O, dQ, dK, dV at "
            f"N={args.check_length}, float64, causal and not: {error:.1e}"
        )

    names = [*patterns(1, args.window, args.block), "dense SDPA + mask", "dense plain"]
    saved = {name: [] for name in names}
    seconds = {name: [] for name in names}
    for n in tqdm(lengths, desc="lengths"):
        shape = (1, args.heads, n, args.dim)
        q, k, v, grad_out = (
            torch.randn(*shape, generator=generator).to(device) for _ in range(4)
        )
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        window_mask = sliding_window_mask(n, args.window).to(device)
        methods = {
            **patterns(n, args.window, args.block),
            "dense SDPA + mask": lambda q, k, v, mask=window_mask: (
                F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            ),
            "dense plain": lambda q, k, v, mask=window_mask: (
                scaled_dot_product_attention(q, k, v, attn_mask=mask)[0]
            ),
        }
        for name, attention in methods.items():

            def step(attention=attention):
                q.grad = k.grad = v.grad = None
                attention(q, k, v).backward(grad_out)

            saved[name].append(saved_bytes(lambda: attention(q, k, v)))
            seconds[name].append(time_step(step, device, args.repeats))

    n = lengths[-1]
    densities = [
        mask.float().mean().item() for mask in pattern_masks(n, args.window, args.block)
    ]
    print(f"N={n}, {args.heads} heads, d={args.dim}: one training step")
    for index, name in enumerate(names):
        share = f"{densities[index]:6.1%} of pairs" if index < 4 else "all pairs"
        print(
            f"  {name:30s} {share:>16s}  saved {saved[name][-1] / 2**20:8.2f} MiB  "
            f"step {seconds[name][-1] * 1e3:8.1f} ms"
        )
    window_name = names[0]
    ratios = {
        "window saved ratio": saved["dense SDPA + mask"][-1] / saved[window_name][-1],
        "window speedup": seconds["dense SDPA + mask"][-1] / seconds[window_name][-1],
    }
    print(
        f"at N={n} the window saves {ratios['window saved ratio']:.1f}× fewer bytes "
        f"than dense SDPA with its mask and runs {ratios['window speedup']:.1f}× faster"
    )

    plot_masks(out, 64)
    fig, axes = figure(panels=2)
    styles = ["o-", "s-", "^-", "D-", "x--", "+:"]
    for name, style in zip(names, styles):
        axes[0].plot(lengths, [b / 2**20 for b in saved[name]], style, label=name)
        axes[1].plot(lengths, [s * 1e3 for s in seconds[name]], style, label=name)
    for axis, title, unit in zip(
        axes, ("saved for backward", f"training step ({device.type})"), ("MiB", "ms")
    ):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("sequence length $N$")
        axis.set_ylabel(unit)
        axis.set_title(title)
    # Below both panels: inside either, six entries would cover the short lengths.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3)
    save(
        fig,
        out / "memory_time.png",
        caption=f"One training step ({args.heads} heads, d={args.dim}) against N: "
        "left, the bytes autograd saves for backward, which grow as N for the window "
        "and BigBird, as N·√N for strided and fixed, and as N² for dense attention "
        "(SDPA saves the mask as a float N×N matrix; plain attention saves its weights "
        "per head); right, the time of forward plus backward.",
    )
    return {
        **{f"max error {name}": error for name, error in errors.items()},
        **ratios,
        "window density": densities[0],
    }


if __name__ == "__main__":
    main()

# ## Exercises
#
# 1. Longformer gives its global attention to chosen *tokens* (the classification
#    token, the question), not to the first blocks. Add a `global_positions` argument
#    to `sliding_window_attention`: a global part for their keys, and dense rows for
#    their queries. Which parts must give up which pairs so that none is counted twice?
# 2. Dilate the window: query $i$ reads $j = i + t\delta$ for $|t| \le w$, as
#    Longformer does in its upper layers. Write the rule, then a computation that uses
#    the strided column's trick (blocks of $\delta$, offset as a batch axis).
# 3. Implement the Sparse Transformer's two heads separately, one band and one column,
#    and compare with the merged head here: how many keys does each query read in two
#    layers of each, and which positions can position $N - 1$ reach?
# 4. Stack two BigBird layers with no global and no random blocks, and find, from the
#    mask alone, the longest distance information travels in $L$ layers. How many
#    global blocks bring every pair within two steps?
