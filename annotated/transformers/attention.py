r"""
---
title: Scaled dot-product and multi-head attention
summary: >-
  The Transformer's attention from its two equations, with padding, causal and additive
  masks, dropout and a defined answer for fully masked rows, matched against
  F.scaled_dot_product_attention and nn.MultiheadAttention and trained on a dictionary
  look-up.
time: 8 s
expected:
  metric: accuracy
  short: ["--steps", "150"]
references:
  - key: vaswani2017attention
    authors: [Ashish Vaswani, Noam Shazeer, Niki Parmar, Jakob Uszkoreit, Llion Jones,
      Aidan N. Gomez, Łukasz Kaiser, Illia Polosukhin]
    title: Attention Is All You Need
    year: 2017
    venue: NeurIPS 2017
    arxiv: "1706.03762"
  - key: bahdanau2015neural
    authors: [Dzmitry Bahdanau, Kyunghyun Cho, Yoshua Bengio]
    title: Neural Machine Translation by Jointly Learning to Align and Translate
    year: 2015
    venue: ICLR 2015
    arxiv: "1409.0473"
  - key: graves2014neural
    authors: [Alex Graves, Greg Wayne, Ivo Danihelka]
    title: Neural Turing Machines
    year: 2014
    venue: arXiv preprint
    arxiv: "1410.5401"
  - key: srivastava2014dropout
    authors:
      - Nitish Srivastava
      - Geoffrey Hinton
      - Alex Krizhevsky
      - Ilya Sutskever
      - Ruslan Salakhutdinov
    title: "Dropout: A Simple Way to Prevent Neural Networks from Overfitting"
    year: 2014
    venue: Journal of Machine Learning Research 15(56)
    url: https://jmlr.org/papers/v15/srivastava14a.html
worksheet:
  - region: scaled_dot_product_attention
    hint: >-
      Check the inputs, score query @ key^T times the scale (1 / sqrt(E) by default),
      set disallowed scores to -inf (the top-left lower triangle if is_causal, False
      entries of a boolean mask) or add a float mask, softmax over the keys with rows
      that allow no key giving all-zero weights instead of NaN, apply dropout to the
      weights in training, and return (weights @ value, weights).
    tests:
      - test_sdpa_matches_torch_for_every_mask_kind
      - test_sdpa_weights_are_the_softmax_of_the_masked_scores
      - test_fully_masked_rows_give_zero_output_and_zero_gradient
  - region: MultiHeadAttention.forward
    hint: >-
      Check the inputs and go batch-first; project query, key and value and split
      each into heads [batch, heads, seq, head_dim]; merge attn_mask and
      key_padding_mask into one additive mask; run scaled_dot_product_attention (with
      dropout only in training), concatenate the heads back to [batch, L, embed_dim],
      apply out_proj, and return the output with the weights (averaged over heads if
      asked, None if not needed).
    tests:
      - test_mha_matches_torch
      - test_mha_with_other_key_and_value_widths_matches_torch
      - test_mha_is_causal_applies_the_mask_itself
---

Attention is a dictionary look-up made differentiable. A *query* is compared with every
*key*; the comparisons become weights that sum to one; the answer is the weighted
average of the *values* stored under those keys. A Python `dict` returns the one value
whose key equals the query. Attention returns a blend, and because the blend is smooth
in the query, the keys and the values, gradient descent can learn all three. The
encoder–decoder attention of [basic attention](../sequence/attention.md) scored each
encoder state with a small network [@bahdanau2015neural]. The Transformer replaced
the network with a dot product, divided it by $\sqrt{d_k}$, and ran several such
look-ups side by side, each in its own learned projection [@vaswani2017attention]:

$$
\begin{aligned}
\mathrm{Attention}(Q, K, V)
  &= \mathrm{softmax}\!\left(\frac{QK^\top}{\sqrt{d_k}}\right) V, \\
\mathrm{MultiHead}(Q, K, V)
  &= \mathrm{Concat}(\mathrm{head}_1, \ldots, \mathrm{head}_h)\, W^O, \\
\mathrm{head}_i
  &= \mathrm{Attention}(QW_i^Q, KW_i^K, VW_i^V).
\end{aligned}
$$

This chapter builds both equations in a few dozen lines, then the parts a real model
needs around them: masks for padding and for the future, dropout on the weights, and
a decision for the query that the masks forbid to look anywhere. The
two public pieces, `scaled_dot_product_attention` and `MultiHeadAttention`, are the
ones the later Transformer chapters import. The test compares them with PyTorch's
`F.scaled_dot_product_attention` and, with the weights copied across, with
`nn.MultiheadAttention`, in float64, forward values and gradients, under every kind of
mask.

The demo trains one multi-head attention layer on *associative recall*
[@graves2014neural]: the model is shown up to twelve (key, value) pairs and asked for
the value of each key, in shuffled order. It reaches 100 % on held-out examples in
400 steps. Its attention maps, drawn below, show each query finding the slot that
holds its key, with exactly zero weight on the padding, and show the heads sharing the
work: each head puts about 0.8 of its weight on the right slot, and for almost every
query at least one head is sure of it.
"""

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from annotated.data import integer, number, torch_device
from annotated.figures import figure, save

# ## Why divide by $\sqrt{d_k}$
#
# Each query is compared with each key by a dot product, and the rows of scores
# $S = QK^\top$ go through a softmax. If the $d_k$ entries of a query and a key are
# independent with mean 0 and variance 1, their dot product $\sum_i q_i k_i$ has mean 0
# and variance $d_k$ (footnote 4 of [@vaswani2017attention]). At $d_k = 64$ the scores
# spread with standard deviation 8, and a softmax of such scores is nearly one-hot.
# That is bad for learning, because the softmax's Jacobian
#
# $$
# \frac{\partial w_i}{\partial s_j} = w_i(\delta_{ij} - w_j)
# $$
#
# vanishes when one $w_i$ is near 1 and the others near 0: the scores stop receiving
# gradient. Dividing by $\sqrt{d_k}$ restores variance 1 whatever the width. With
# random unit-variance queries and ten keys of $d_k = 64$, the largest weight averages
# 0.87 without the division and 0.32 with it, and the trace of the Jacobian,
# $\sum_i w_i(1 - w_i)$, falls from 0.81 with it to 0.19 without (the test measures
# all four numbers).
#
# ## Masks, and PyTorch's two conventions
#
# A mask removes some (query, key) pairs before the softmax. Three kinds occur:
#
# - **padding**: sequences of different lengths share a batch, and the keys past each
#   sequence's end are filler that no query may read;
# - **causal**: in a decoder, position $t$ may not read positions $u > t$, or
#   training would let it copy the token it must predict;
# - **additive**: a float added to the scores: $0$ allows, $-\infty$ forbids, and a
#   finite value biases (relative-position schemes such as ALiBi are such biases).
#
# A forbidden score is set to $-\infty$, so that $e^{-\infty} = 0$ and its weight is
# exactly zero. PyTorch has two conventions for *boolean* masks, and this lesson keeps
# each where PyTorch has it, so that both functions are drop-in twins:
# `F.scaled_dot_product_attention` reads `True` as **may attend**, while
# `nn.MultiheadAttention`'s `attn_mask` and `key_padding_mask` read `True` as
# **blocked**. Float masks are added to the scores in both. `MultiHeadAttention` below
# turns its masks into one additive float mask before calling the function, as
# `F.multi_head_attention_forward` does (`_canonical_mask` in
# `torch/nn/functional.py`).
#
# `is_causal=True` keeps key $u$ for query $t$ when $u \le t$: the lower triangle
# anchored at the *top-left* corner, PyTorch's convention (`causal_upper_left` in
# `torch.nn.attention.bias`). When there are fewer queries than keys, as when a
# decoder with a cache feeds one new token, the last query should see every key, and
# the triangle must be anchored at the bottom right instead; the KV-cache chapter
# passes that mask explicitly. Unlike PyTorch, which refuses `attn_mask` together with
# `is_causal=True`, ours applies both: a causal decoder over padded batches needs
# exactly that.
#
# ## The query with nowhere to look
#
# A row whose scores are all $-\infty$ has softmax $0/0$: NaN. It happens in practice:
# a padded query position in a batch of padded sequences, with a padding mask on the
# queries' side too, or a causal mask combined with left padding. What should it
# return? NaN poisons the loss and, through the backward pass, every weight of the
# model. A uniform average reads the padding it was told not to read. We return **zero
# weights, hence a zero output row, and zero gradient** from that row. This is what
# PyTorch's `F.scaled_dot_product_attention` does since version 2.5 (pull request
# 133882 changed its fused kernels, and its math path to call `at::_safe_softmax`, in
# `aten/src/ATen/native/transformers/attention.cpp`), and what the test checks
# against.
#
# `nn.MultiheadAttention` is not consistent. Its `need_weights=True` path
# (`F.multi_head_attention_forward`) returns NaN for that row, and so does its
# inference fast path (`torch._native_multi_head_attention`, taken for self-attention
# in evaluation mode without autograd, when more conditions hold); its
# `need_weights=False` path calls `F.scaled_dot_product_attention` and returns zero.
# PyTorch's CUDA backends differ too: on an H200 with PyTorch 2.11 the math and
# memory-efficient backends returned zeros for such a row, but the cuDNN backend, in
# bfloat16, returned nonzero values.
#
# Only a row that is entirely $-\infty$ counts: a float mask that uses a large finite
# negative number, such as `torch.finfo(dtype).min` (the habit of Hugging Face
# models), yields a uniform row, in PyTorch and here alike.
#
# The code finds such rows after masking, softmaxes the others, and fills these with
# zeros. Filling the scores of a dead row with 0 *before* the softmax, and not only the
# weights after it, matters for the backward pass: the softmax of an all-$-\infty$ row
# is NaN, and its backward would pass $0 \cdot \text{NaN} = \text{NaN}$ back to the
# scores.
#
# ## Dropout on the weights
#
# Training may drop attention weights at random [@srivastava2014dropout]: each weight
# is zeroed with probability $p$ and the survivors are multiplied by $1/(1-p)$, so
# that the expected output is unchanged. A query then sometimes loses its favourite
# key and must hedge. `F.dropout` draws the mask from the global generator in the same
# order as PyTorch's own attention, so with the same seed our output equals
# `F.scaled_dot_product_attention(..., dropout_p=p)` to the last bits on the CPU. Like
# PyTorch's function, ours drops whenever `dropout_p > 0`: it is the module that
# passes 0 in evaluation mode. The weights returned are the ones that multiplied $V$,
# dropped and rescaled, as `nn.MultiheadAttention` returns them.
#
# ## The function
#
# Shapes follow PyTorch's: `query [..., L, E]`, `key [..., S, E]`, `value [..., S, Ev]`,
# where `...` is any number of batch axes (usually batch and head), $L$ the number of
# queries and $S$ the number of keys. The scores and weights are `[..., L, S]` and the
# output `[..., L, Ev]`. It returns the weights too, which PyTorch's function does not:
# the demo draws them, and `MultiHeadAttention` hands them out.


@torch.fx.wrap
def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    r"""$\mathrm{softmax}(QK^\top \cdot \text{scale} + \text{mask})\,V$ with
    `F.scaled_dot_product_attention`'s arguments; returns `(output [..., L, Ev],
    weights [..., L, S])`.

    `attn_mask` broadcasts to `[..., L, S]`: boolean with `True` = may attend, or float
    added to the scores. `is_causal` keeps the top-left lower triangle and may be
    combined with `attn_mask`. `scale` defaults to $1/\sqrt{E}$. Rows with no allowed
    key get zero weights and a zero output.
    """
    check_attention_inputs(query, key, value, attn_mask, dropout_p)
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    scores = query @ key.transpose(-2, -1) * scale  # [..., L, S]
    if is_causal:
        target_len, source_len = scores.shape[-2:]
        allowed = torch.ones(
            target_len, source_len, dtype=torch.bool, device=scores.device
        ).tril()  # [L, S]: key u is allowed for query t when u <= t
        scores = scores.masked_fill(~allowed, float("-inf"))
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    elif attn_mask is not None:
        scores = scores + attn_mask
    dead = scores.isneginf().all(dim=-1, keepdim=True)  # [..., L, 1]: nowhere to look
    weights = torch.softmax(scores.masked_fill(dead, 0.0), dim=-1)  # [..., L, S]
    weights = weights.masked_fill(dead, 0.0)  # dead rows: all zero, not NaN
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)  # zero, or scaled by 1/(1-p)
    return weights @ value, weights  # [..., L, Ev], [..., L, S]


# The function checks its arguments where a mistake would otherwise surface as a
# broadcasting error deep inside a matrix product, or not at all: a mask of the wrong
# dtype (an integer 0/1 mask would be *added* to the scores, a silent bias), or a mask
# that broadcasts against the scores in a way nobody meant.


def check_attention_inputs(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None,
    dropout_p: float,
) -> None:
    """Raise naming the argument if `scaled_dot_product_attention` would fail
    obscurely or silently compute something else."""
    for name, tensor in (("query", query), ("key", key), ("value", value)):
        if not isinstance(tensor, Tensor) or tensor.dim() < 2:
            raise ValueError(
                f"scaled_dot_product_attention: {name} must be a tensor of shape "
                f"[..., seq, features], got {getattr(tensor, 'shape', type(tensor))}"
            )
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"scaled_dot_product_attention: query {tuple(query.shape)} and key "
            f"{tuple(key.shape)} must have the same last dimension E"
        )
    if key.shape[-2] != value.shape[-2]:
        raise ValueError(
            f"scaled_dot_product_attention: key {tuple(key.shape)} and value "
            f"{tuple(value.shape)} must hold the same number of entries S"
        )
    if not query.is_floating_point() or not query.dtype == key.dtype == value.dtype:
        raise TypeError(
            "scaled_dot_product_attention: query, key and value must share one float "
            f"dtype, got {query.dtype}, {key.dtype}, {value.dtype}"
        )
    if attn_mask is not None:
        if attn_mask.dtype not in (torch.bool, query.dtype):
            raise TypeError(
                f"scaled_dot_product_attention: attn_mask must be bool (True = may "
                f"attend) or {query.dtype} (added to the scores), got {attn_mask.dtype}"
            )
        scores_shape = (*query.shape[:-1], key.shape[-2])
        try:
            broadcast = torch.broadcast_shapes(attn_mask.shape, scores_shape)
        except RuntimeError:
            broadcast = None
        if broadcast != torch.Size(scores_shape):
            raise ValueError(
                f"scaled_dot_product_attention: attn_mask {tuple(attn_mask.shape)} "
                f"must broadcast to the scores [..., L, S] = {scores_shape}"
            )
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(
            f"scaled_dot_product_attention: dropout_p must be in [0, 1), "
            f"got {dropout_p}"
        )


# ## What the plain version costs
#
# The function writes out the whole `[..., L, S]` score matrix, then a masked copy,
# the weights and, in training, what autograd keeps of each: memory quadratic in the
# sequence length, all of it read and written through the GPU's main memory. A fused
# kernel never stores the scores: it walks the keys tile by tile with a running
# softmax, the subject of [FlashAttention](flash_attention.md). Measured once on an
# H200 (PyTorch 2.11, bfloat16, causal, batch 8, 16 heads, 2048 positions, head width
# 64), a forward and backward pass took 18 ms and 4.0 GiB of extra memory here, and
# 0.86 ms and 0.22 GiB with `F.scaled_dot_product_attention`. The plain version is
# the one to read and to check against; the later chapters that need speed call
# PyTorch's.
#
# ## Many heads
#
# One softmax row is one weighted average. A query that needs two things from the
# sequence, say the subject of its verb and the word before it, must blend both into
# one average; "averaging inhibits" telling them apart, in the paper's words
# [@vaswani2017attention]. Multi-head attention runs $h$ look-ups in parallel, each
# in its own learned projection of width $d_k = d_\text{model}/h$, and concatenates
# their answers:
#
# $$
# \begin{aligned}
# \mathrm{head}_i &= \mathrm{Attention}(QW_i^Q, KW_i^K, VW_i^V), \\
# \text{out} &= [\mathrm{head}_1; \ldots; \mathrm{head}_h]\, W^O .
# \end{aligned}
# $$
#
# The $h$ projections $W_i^Q$ of size $d_\text{model} \times d_k$ side by side are one
# $d_\text{model} \times d_\text{model}$ matrix, so the code applies one `nn.Linear`
# per role and cuts its output into heads: `unflatten` splits the last axis into
# `[heads, d_head]`, and `transpose` moves the head axis next to the batch, where the
# function above treats it as one more batch axis. Concatenation is the reverse:
# `transpose` back and `flatten` the two axes into one. The cost is that of a single
# head at full width: four $d_\text{model}^2$ matrices, plus four biases.
#
# The module's interface is `nn.MultiheadAttention`'s, argument for argument:
# `batch_first` (`[batch, seq, embed]`, or PyTorch's default `[seq, batch, embed]`),
# `kdim` and `vdim` for keys and values of other widths than the queries (cross-
# attention onto an encoder of another size), boolean masks with `True` = blocked,
# `need_weights` and `average_attn_weights`, and `dropout` on the weights in training
# mode. One difference: `is_causal=True` applies the causal mask itself, where PyTorch
# treats it as a hint that `attn_mask` already is one. Weights are initialised as
# PyTorch initialises them when `kdim` or `vdim` differ from `embed_dim`: Xavier-
# uniform projections and zero biases, with `out_proj` a default `nn.Linear` with a
# zero bias.


class MultiHeadAttention(nn.Module):
    """Multi-head attention with `nn.MultiheadAttention`'s arguments and masks: query
    `[batch, L, embed_dim]`, key `[batch, S, kdim]`, value `[batch, S, vdim]`
    (sequence first unless `batch_first`)."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
    ):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(
                f"MultiHeadAttention: embed_dim {embed_dim} must be divisible by "
                f"num_heads {num_heads}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"MultiHeadAttention: dropout must be in [0, 1), got {dropout}"
            )
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.dropout, self.batch_first = dropout, batch_first
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        for projection in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.xavier_uniform_(projection.weight)
        for projection in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            if bias:
                nn.init.zeros_(projection.bias)

    def split_heads(self, x: Tensor) -> Tensor:
        """`[batch, seq, embed_dim]` → `[batch, heads, seq, head_dim]`."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Returns `(output, weights)`: output shaped like `query`, weights `[batch, L,
        S]` averaged over heads or `[batch, heads, L, S]`, or None."""
        check_module_inputs(
            self.embed_dim,
            self.kdim,
            self.vdim,
            self.num_heads,
            self.batch_first,
            query,
            key,
            value,
            key_padding_mask,
            attn_mask,
        )
        if not self.batch_first:  # [seq, batch, embed] → [batch, seq, embed]
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        q = self.split_heads(self.q_proj(query))  # [batch, heads, L, head_dim]
        k = self.split_heads(self.k_proj(key))  # [batch, heads, S, head_dim]
        v = self.split_heads(self.v_proj(value))  # [batch, heads, S, head_dim]
        mask = additive_mask(attn_mask, key_padding_mask, self.num_heads, q.dtype)
        dropout_p = self.dropout if self.training else 0.0
        heads, weights = scaled_dot_product_attention(
            q, k, v, mask, dropout_p, is_causal
        )  # [batch, heads, L, head_dim], [batch, heads, L, S]
        concat = heads.transpose(1, 2).flatten(2)  # [batch, L, embed_dim]
        output = self.out_proj(concat)  # [batch, L, embed_dim]
        if not self.batch_first:
            output = output.transpose(0, 1)  # [L, batch, embed_dim]
        if not need_weights:
            return output, None
        return output, weights.mean(dim=1) if average_attn_weights else weights

    # Weights trained in `nn.MultiheadAttention` load here by an explicit mapping. When
    # queries, keys and values have one width, PyTorch stores the three input
    # projections stacked in one `in_proj_weight` of shape `[3·embed_dim, embed_dim]`,
    # rows $W^Q$, then $W^K$, then $W^V$ (one matrix product serves all three in
    # self-attention), and their biases likewise in `in_proj_bias`. With other widths
    # it keeps `q_proj_weight`, `k_proj_weight` and `v_proj_weight` apart, and
    # `in_proj_bias` still stacked. `out_proj` has the same layout on both sides.

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention) -> "MultiHeadAttention":
        """A `MultiHeadAttention` holding a copy of `module`'s weights, on its device
        and in its dtype."""
        if module.bias_k is not None or module.add_zero_attn:
            raise ValueError(
                "from_torch: add_bias_kv and add_zero_attn are not supported"
            )
        has_bias = module.in_proj_bias is not None
        ours = cls(
            module.embed_dim,
            module.num_heads,
            dropout=module.dropout,
            bias=has_bias,
            kdim=module.kdim,
            vdim=module.vdim,
            batch_first=module.batch_first,
        ).to(module.out_proj.weight)
        if module._qkv_same_embed_dim:
            weights = module.in_proj_weight.chunk(3)  # 3 × [embed_dim, embed_dim]
        else:
            weights = (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight)
        biases = module.in_proj_bias.chunk(3) if has_bias else (None, None, None)
        projections = (ours.q_proj, ours.k_proj, ours.v_proj)
        with torch.no_grad():
            for projection, weight, bias in zip(projections, weights, biases):
                projection.weight.copy_(weight)
                if has_bias:
                    projection.bias.copy_(bias)
            ours.out_proj.weight.copy_(module.out_proj.weight)
            if has_bias:
                ours.out_proj.bias.copy_(module.out_proj.bias)
        return ours


# `nn.MultiheadAttention`'s masks, with `True` = blocked, become one float mask that
# the function adds to the scores: `attn_mask` is `[L, S]`, shared by the batch, or
# `[batch·heads, L, S]`, one per sequence and head (PyTorch's layout, batch-major);
# `key_padding_mask` is `[batch, S]`, one row per sequence, the same for every query
# and head. A boolean mask becomes $-\infty$ where it is `True` and 0 elsewhere; a float
# mask is used as it is; the two are summed.


def additive_mask(
    attn_mask: Tensor | None,
    key_padding_mask: Tensor | None,
    num_heads: int,
    dtype: torch.dtype,
) -> Tensor | None:
    """One float mask broadcasting to `[batch, heads, L, S]` from the two of
    `nn.MultiheadAttention`, or None when there is neither."""

    def as_float(mask: Tensor) -> Tensor:
        if mask.dtype != torch.bool:
            return mask
        blocked = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        return blocked.masked_fill(mask, float("-inf"))

    combined = None
    if attn_mask is not None:
        combined = as_float(attn_mask)  # [L, S] or [batch·heads, L, S]
        if attn_mask.dim() == 3:
            combined = combined.view(-1, num_heads, *attn_mask.shape[1:])
    if key_padding_mask is not None:
        padding = as_float(key_padding_mask)[:, None, None, :]  # [batch, 1, 1, S]
        combined = padding if combined is None else combined + padding
    return combined


# The module's checks: the shapes of the three inputs against the module's widths and
# layout, and of the two masks against the inputs.


def check_module_inputs(
    embed_dim: int,
    kdim: int,
    vdim: int,
    num_heads: int,
    batch_first: bool,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    key_padding_mask: Tensor | None,
    attn_mask: Tensor | None,
) -> None:
    """Raise naming the argument when the inputs or masks do not fit the module."""
    layout = "[batch, seq, {}]" if batch_first else "[seq, batch, {}]"
    for name, tensor, width in (
        ("query", query, embed_dim),
        ("key", key, kdim),
        ("value", value, vdim),
    ):
        if (
            not isinstance(tensor, Tensor)
            or tensor.dim() != 3
            or tensor.shape[-1] != width
        ):
            raise ValueError(
                f"MultiHeadAttention: {name} must be {layout.format(width)} "
                f"(batch_first={batch_first}), "
                f"got {getattr(tensor, 'shape', type(tensor))}"
            )
    batch_axis, seq_axis = (0, 1) if batch_first else (1, 0)
    batch, target_len, source_len = (
        query.shape[batch_axis],
        query.shape[seq_axis],
        key.shape[seq_axis],
    )
    if key.shape[:2] != value.shape[:2] or key.shape[batch_axis] != batch:
        raise ValueError(
            f"MultiHeadAttention: key {tuple(key.shape)} and value "
            f"{tuple(value.shape)} must match in batch and length, and query "
            f"{tuple(query.shape)} in batch"
        )
    if key_padding_mask is not None and key_padding_mask.shape != (batch, source_len):
        raise ValueError(
            f"MultiHeadAttention: key_padding_mask must be [batch, S] = "
            f"{(batch, source_len)}, got {tuple(key_padding_mask.shape)}"
        )
    allowed = ((target_len, source_len), (batch * num_heads, target_len, source_len))
    if attn_mask is not None and tuple(attn_mask.shape) not in allowed:
        raise ValueError(
            f"MultiHeadAttention: attn_mask must be [L, S] = {allowed[0]} or "
            f"[batch·heads, L, S] = {allowed[1]}, got {tuple(attn_mask.shape)}"
        )
    for name, mask in (
        ("key_padding_mask", key_padding_mask),
        ("attn_mask", attn_mask),
    ):
        if mask is not None and mask.dtype not in (torch.bool, query.dtype):
            raise TypeError(
                f"MultiHeadAttention: {name} must be bool (True = blocked) or "
                f"{query.dtype} (added to the scores), got {mask.dtype}"
            )


# The page's dataflow diagram traces the demo's model with `torch.fx`, which runs the
# code on placeholders whose shapes are unknown. The two functions above branch on
# shapes and on whether a mask was given, so `torch.fx.wrap` records each as one call
# instead of tracing into it, as its decorator does for
# `scaled_dot_product_attention`.
torch.fx.wrap("additive_mask")
torch.fx.wrap("check_module_inputs")

# ## A dictionary look-up to learn
#
# The demo's task is associative recall [@graves2014neural], the look-up attention
# performs: a query is matched against the keys and returns the value stored with the
# matching key. An example is a *memory* of $n$ pairs, $3 \le n \le 12$, with $n$
# different keys out of 32 and a value out of 32 for each (values may repeat), padded
# to 12 slots; and $n$ *queries*, the same keys in a shuffled order. The answer to a
# query is the value stored under its key. The padding of the memory is marked in the
# key padding mask; padded query slots are ignored by the loss (`-100`, PyTorch's
# `ignore_index`).
#
# Nothing but content can solve it: the matching pair sits at a random slot, so the
# model must compare each query with every stored key, exactly what $QK^\top$ does. A
# random guess is right 1 time in 32.

PAD = -100  # answer of a padded query slot: cross_entropy's ignore_index


def recall_batch(
    batch_size: int,
    n_keys: int = 32,
    n_values: int = 32,
    max_pairs: int = 12,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Random recall examples: `keys`, `values`, `queries`, `padding` (True = padded
    slot) and `answers`, each `[batch, max_pairs]`. Padded keys and queries hold the
    index `n_keys`, padded answers `PAD`."""
    if not 3 <= max_pairs <= n_keys:
        raise ValueError(f"max_pairs must be in [3, n_keys={n_keys}], got {max_pairs}")
    pairs = torch.randint(3, max_pairs + 1, (batch_size, 1), generator=generator)
    slots = torch.arange(max_pairs)  # [max_pairs]
    padding = slots >= pairs  # [batch, max_pairs]
    shuffled = torch.rand(batch_size, n_keys, generator=generator).argsort(dim=1)
    keys = shuffled[:, :max_pairs].masked_fill(padding, n_keys)  # distinct keys
    values = torch.randint(n_values, (batch_size, max_pairs), generator=generator)
    # A random order of the real slots first, the padded ones after them:
    noise = torch.rand(batch_size, max_pairs, generator=generator)
    order = noise.masked_fill(padding, 2.0).argsort(dim=1)  # [batch, max_pairs]
    queries = keys.gather(1, order)  # [batch, max_pairs]
    answers = values.gather(1, order).masked_fill(padding, PAD)
    return keys, values, queries, padding, answers


# The model is one multi-head attention layer between embeddings and a read-out. A
# memory slot is the sum of its key's and its value's embeddings, so the keys and the
# values of the attention see one vector that carries both; a query is its own
# embedding of the key it asks for. One layer of cross-attention, queries onto the
# memory, has to learn two things: $W^Q$ and $W^K$ such that a query scores its own
# key far above the others, and $W^V$ and $W^O$ that carry the value's part of the
# slot to the read-out and suppress the key's part.


class AssociativeRecall(nn.Module):
    """Embeddings → `MultiHeadAttention` (queries onto the memory) → linear read-out
    of the value."""

    def __init__(
        self,
        n_keys: int = 32,
        n_values: int = 32,
        d_model: int = 32,
        heads: int = 4,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.key_embedding = nn.Embedding(n_keys + 1, d_model)  # + 1: the padding
        self.value_embedding = nn.Embedding(n_values, d_model)
        self.query_embedding = nn.Embedding(n_keys + 1, d_model)
        self.attention = MultiHeadAttention(d_model, heads, dropout, batch_first=True)
        self.readout = nn.Linear(d_model, n_values)

    def forward(
        self, keys: Tensor, values: Tensor, queries: Tensor, padding: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Logits `[batch, queries, n_values]` and the attention weights `[batch,
        heads, queries, slots]`."""
        memory = self.key_embedding(keys) + self.value_embedding(values)  # [B, S, d]
        asked = self.query_embedding(queries)  # [batch, L, d_model]
        attended, weights = self.attention(
            asked, memory, memory, key_padding_mask=padding, average_attn_weights=False
        )  # [batch, L, d_model], [batch, heads, L, S]
        return self.readout(attended), weights


# ## Training
#
# Adam on fresh batches: the generator never repeats an example, so there is no fixed
# training set to memorise, and accuracy is measured on a held-out set drawn from
# another seed.


def train(
    model: AssociativeRecall,
    steps: int,
    batch_size: int,
    lr: float,
    max_pairs: int,
    seed: int,
    device: str,
) -> list[float]:
    """Train `model` in place on fresh recall batches; returns the loss of each step."""
    n_keys = model.key_embedding.num_embeddings - 1
    n_values = model.value_embedding.num_embeddings
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in tqdm(range(steps), desc="training"):
        batch = recall_batch(batch_size, n_keys, n_values, max_pairs, generator)
        keys, values, queries, padding, answers = (t.to(device) for t in batch)
        logits, _ = model(keys, values, queries, padding)  # [batch, L, n_values]
        loss = F.cross_entropy(
            logits.flatten(0, 1), answers.flatten(), ignore_index=PAD
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def evaluate(model: AssociativeRecall, batch: tuple[Tensor, ...]) -> dict[str, float]:
    """On the real (not padded) queries of `batch`: the fraction whose value the model
    names, each head's mean weight on the slot that holds the asked key, and the mean
    of the best head's weight there."""
    keys, values, queries, padding, answers = batch
    model.eval()
    logits, weights = model(keys, values, queries, padding)  # [N,L,V], [N,H,L,S]
    real = answers != PAD  # [N, L]
    named = (logits.argmax(dim=-1) == answers)[real]  # [real queries]
    asked_slot = queries[:, :, None] == keys[:, None, :]  # [N, L, S]: one-hot
    on_match = (weights * asked_slot[:, None]).sum(dim=-1)  # [N, heads, L]
    per_head = on_match.transpose(0, 1)[:, real].mean(dim=1)  # [heads]
    return {
        "accuracy": named.float().mean().item(),
        "head_weights": per_head.tolist(),
        "best_head_weight": on_match.amax(dim=1)[real].mean().item(),
    }


def example():
    """The recall model on a batch of two examples, one of them padded."""
    torch.manual_seed(0)
    model = AssociativeRecall(n_keys=8, n_values=8, d_model=16, heads=4)
    keys, values, queries, padding, _ = recall_batch(
        2, 8, 8, 5, torch.Generator().manual_seed(1)
    )
    return model, (keys, values, queries, padding)


# ## The figure
#
# One held-out example with padding, each head's weights as a grid: a row per query, a
# column per memory slot.


def plot_attention(
    weights: Tensor,
    keys: Tensor,
    values: Tensor,
    queries: Tensor,
    out: Path,
    caption: str,
) -> Path:
    """Draw `weights [heads, L, S]` of one example, labelled with its keys and values;
    `keys`, `values` and `queries` are that example's `[S]` and `[L]` rows."""
    heads = weights.shape[0]
    pad = int(keys.max())
    real_queries = int((queries != pad).sum())
    slot_labels = [
        "pad" if k == pad else f"k{k}→v{v}"
        for k, v in zip(keys.tolist(), values.tolist())
    ]
    query_labels = [f"k{q}" for q in queries[:real_queries].tolist()]
    rows = 2 if heads > 3 else 1
    fig, axes = figure(panels=heads, rows=rows, sharex=True, sharey=True)
    for head, ax in enumerate(axes.flat if heads > 1 else [axes]):
        image = ax.imshow(
            weights[head, :real_queries].numpy(), cmap="Blues", vmin=0, vmax=1
        )
        ax.set_title(f"head {head + 1}")
        ax.set_xticks(range(len(slot_labels)), slot_labels, rotation=90)
        ax.set_yticks(range(real_queries), query_labels)
        ax.set_xlabel("memory slot (key→value)")
        ax.set_ylabel("query (key asked for)")
        ax.label_outer()
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
    return save(fig, out / "attention.png", caption=caption)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Check against nn.MultiheadAttention, train associative recall, draw the
    heads' attention."""
    parser = argparse.ArgumentParser(
        description="Train one multi-head attention layer on associative recall and "
        "draw its attention maps.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--steps", type=integer(at_least=1), default=400, help="training steps"
    )
    parser.add_argument(
        "--batch-size", type=integer(at_least=1), default=64, help="examples per step"
    )
    parser.add_argument(
        "--lr", type=number(above=0), default=3e-3, help="Adam's learning rate"
    )
    parser.add_argument(
        "--max-pairs", type=integer(at_least=1), default=12, help="memory slots"
    )
    parser.add_argument(
        "--d-model", type=integer(at_least=1), default=32, help="embedding width"
    )
    parser.add_argument(
        "--heads", type=integer(at_least=1), default=4, help="attention heads"
    )
    parser.add_argument(
        "--dropout",
        type=number(at_least=0, below=1),
        default=0.0,
        help="attention dropout",
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--threads",
        type=integer(at_least=1),
        default=1,
        help="CPU threads for torch (tiny matrices)",
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to train on",
    )
    parser.add_argument("--out", default="out/attention", help="folder for the figures")
    args = parser.parse_args(argv)
    out = Path(args.out)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    reference = nn.MultiheadAttention(
        args.d_model, args.heads, batch_first=True, device=args.device
    )
    ours = MultiHeadAttention.from_torch(reference)
    x = torch.randn(8, 12, args.d_model, device=args.device)
    padding = torch.arange(12, device=args.device) >= 7  # [12]: slots 7… padded
    padding = padding.expand(8, 12)
    with torch.no_grad():
        ours_out, ours_weights = ours(x, x, x, key_padding_mask=padding)
        torch_out, torch_weights = reference(x, x, x, key_padding_mask=padding)
    gap = max(
        (ours_out - torch_out).abs().max().item(),
        (ours_weights - torch_weights).abs().max().item(),
    )
    print(f"ours vs nn.MultiheadAttention: max difference {gap:.1e}")

    model = AssociativeRecall(32, 32, args.d_model, args.heads, args.dropout)
    model.to(args.device)
    start = time.perf_counter()
    losses = train(
        model,
        args.steps,
        args.batch_size,
        args.lr,
        args.max_pairs,
        args.seed,
        args.device,
    )
    seconds = time.perf_counter() - start
    held_out = recall_batch(
        2000, 32, 32, args.max_pairs, torch.Generator().manual_seed(args.seed + 1)
    )
    held_out = tuple(t.to(args.device) for t in held_out)
    scores = evaluate(model, held_out)
    heads = " ".join(f"{w:.2f}" for w in scores["head_weights"])
    print(f"final loss {losses[-1]:.4f} after {args.steps} steps ({seconds:.1f} s)")
    print(f"accuracy {scores['accuracy']:.3f} on 2000 held-out examples (chance 0.031)")
    print(
        f"weight on the asked key's slot: heads {heads}; best head per query ", end=""
    )
    print(f"{scores['best_head_weight']:.2f}")

    keys, values, queries, padding, _ = held_out
    shown = int((padding.sum(dim=1) > 0).nonzero()[0])  # the first padded example
    with torch.no_grad():
        _, weights = model(*(t[shown : shown + 1] for t in held_out[:4]))
    mean_weight = sum(scores["head_weights"]) / len(scores["head_weights"])
    caption = (
        f"The {args.heads} heads' attention weights on a held-out recall example, one "
        "row per query and one column per memory slot; padded slots get exactly zero. "
        "The heads share the work: over 2000 held-out examples a head puts on average "
        f"{mean_weight:.2f} of its weight on the slot holding the asked key, and the "
        f"best head for each query {scores['best_head_weight']:.2f}."
    )
    plot_attention(
        weights[0].cpu(),
        keys[shown].cpu(),
        values[shown].cpu(),
        queries[shown].cpu(),
        out,
        caption,
    )
    return {
        "accuracy": scores["accuracy"],
        "best_head_weight": scores["best_head_weight"],
        "loss": losses[-1],
        "torch_gap": gap,
    }


if __name__ == "__main__":
    main()

# ## Exercises
#
# 1. Grouped-query attention shares each key and value head among several query heads,
#    shrinking the KV cache. Give `MultiHeadAttention` a `num_kv_heads` argument that
#    divides `num_heads`, repeat `k` and `v` along the head axis, and check against
#    `F.scaled_dot_product_attention(..., enable_gqa=True)`.
# 2. Give `MultiHeadAttention` a `scale` argument that its `forward` passes to
#    `scaled_dot_product_attention`, then train the recall model with `scale=1.0` (no
#    division by $\sqrt{d_k}$) and `--d-model 256`. How do the first hundred steps of
#    the loss curve change, and why, in terms of the softmax's Jacobian?
# 3. Build the bottom-right causal mask for $L < S$ queries (the last query sees every
#    key) and compare it with `torch.nn.attention.bias.causal_lower_right`. Which one
#    does a decoder with a KV cache need, and why does `is_causal=True` give the wrong
#    answer there?
# 4. `nn.MultiheadAttention(add_zero_attn=True)` appends a key and a value of zeros to
#    every sequence. What does a fully masked query return then, and how does that
#    compare with this lesson's zero rows?
