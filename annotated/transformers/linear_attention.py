r"""
---
title: Linear attention
summary: >-
  Attention with a kernel that factorises, computed three ways (the N×N kernel matrix,
  the associative product φ(Q)(φ(K)ᵀV) taken chunk by chunk, and an RNN that carries
  a d×d state) that agree to 1e-12, and Performer's positive random features, which
  approximate softmax attention better the more features they draw; timed against
  softmax attention from 256 to 8,192 positions.
time: 10 s
references:
  - key: vaswani2017attention
    authors: [Ashish Vaswani, Noam Shazeer, Niki Parmar, Jakob Uszkoreit, Llion Jones,
      Aidan N. Gomez, Łukasz Kaiser, Illia Polosukhin]
    title: Attention Is All You Need
    year: 2017
    venue: NeurIPS 2017
    arxiv: "1706.03762"
  - key: tsai2019transformer
    authors:
      - Yao-Hung Hubert Tsai
      - Shaojie Bai
      - Makoto Yamada
      - Louis-Philippe Morency
      - Ruslan Salakhutdinov
    title: >-
      Transformer Dissection: An Unified Understanding for Transformer's Attention
      via the Lens of Kernel
    year: 2019
    venue: EMNLP 2019
    arxiv: "1908.11775"
  - key: katharopoulos2020transformers
    authors: [Angelos Katharopoulos, Apoorv Vyas, Nikolaos Pappas, François Fleuret]
    title: >-
      Transformers are RNNs: Fast Autoregressive Transformers with Linear
      Attention
    year: 2020
    venue: ICML 2020
    arxiv: "2006.16236"
  - key: choromanski2021rethinking
    authors:
      - Krzysztof Choromanski
      - Valerii Likhosherstov
      - David Dohan
      - Xingyou Song
      - Andreea Gane
      - et al.
    title: Rethinking Attention with Performers
    year: 2021
    venue: ICLR 2021
    arxiv: "2009.14794"
  - key: rahimi2007random
    authors: [Ali Rahimi, Benjamin Recht]
    title: Random Features for Large-Scale Kernel Machines
    year: 2007
    venue: NeurIPS 2007
    url: https://papers.nips.cc/paper/3182-random-features-for-large-scale-kernel-machines
  - key: yu2016orthogonal
    authors:
      - Felix X. Yu
      - Ananda Theertha Suresh
      - Krzysztof Choromanski
      - Daniel Holtmann-Rice
      - Sanjiv Kumar
    title: Orthogonal Random Features
    year: 2016
    venue: NeurIPS 2016
    arxiv: "1610.09072"
  - key: mezzadri2007generate
    authors: [Francesco Mezzadri]
    title: How to generate random matrices from the classical compact groups
    year: 2007
    venue: Notices of the AMS 54(5)
    arxiv: "math-ph/0609050"
  - key: yang2024gated
    authors: [Songlin Yang, Bailin Wang, Yikang Shen, Rameswar Panda, Yoon Kim]
    title: Gated Linear Attention Transformers with Hardware-Efficient Training
    year: 2024
    venue: ICML 2024
    arxiv: "2312.06635"
worksheet:
  - region: kernel_attention
    hint: >-
      Without a mask, associate the other way: S = phi_k^T value [m, d_v] and
      z = the sum of phi_k over positions, then normalise phi_q @ S by phi_q @ z.
      With one, walk the sequence in chunks of chunk_size: each chunk's numerator is
      q_c @ S (every earlier chunk) plus the lower-triangular (q_c @ k_c^T) @ v_c (its
      own), its denominator q_c @ z plus that triangle's row sums; normalise, then add
      the chunk's k_c^T v_c to S and its keys to z.
    tests:
      - test_non_causal_keys_may_outnumber_queries
      - test_causal_output_ignores_the_future
      - test_every_form_matches_sdpa_with_the_log_kernel
  - region: kernel_attention_recurrent
    hint: >-
      Check the inputs, start from the given state (S [..., m, d_v], z [..., m]) or
      zeros, and step through the positions: add the outer product phi(k_i) v_i^T to
      S and phi(k_i) to z, then output (phi(q_i)^T S) normalised by phi(q_i) . z.
      Return the stacked outputs and the final (S, z).
    tests:
      - test_state_carried_and_reloaded_equals_one_pass
      - test_the_state_is_the_parallel_scan_of_the_linear_recurrence
  - region: favor_log_features
    hint: >-
      Check that projection is [m, d] with x's width and dtype; the log-feature of
      x for direction omega_i is omega_i . x - |x|^2 / 2 - ln(m) / 2: one matrix
      product with the projection's transpose and two subtractions.
    tests:
      - test_favor_kernel_estimate_is_unbiased
      - test_performer_forms_agree_and_match_the_explicit_estimate
---

[Softmax attention](attention.md) [@vaswani2017attention] compares every query with
every key: for $N$ positions it computes an $N \times N$ matrix, so doubling the
sequence quadruples the time, and a decoder must keep every past key and value to
produce the next token. Read the softmax as a *kernel*, a similarity
$\mathrm{sim}(q, k) = \exp(q^\top k / \sqrt{d})$ normalised over the keys
[@tsai2019transformer], and ask what happens when the kernel is an inner product of
feature vectors, $\mathrm{sim}(q, k) = \phi(q)^\top \phi(k)$. Then the output for
query $i$ is

$$
\begin{aligned}
y_i &= \frac{\sum_j \phi(q_i)^\top \phi(k_j)\, v_j^\top}
           {\sum_j \phi(q_i)^\top \phi(k_j)}
     = \frac{\phi(q_i)^\top \left(\sum_j \phi(k_j) v_j^\top\right)}
            {\phi(q_i)^\top \left(\sum_j \phi(k_j)\right)},
\end{aligned}
$$

and the two sums in brackets do not depend on $i$: they are computed once, in
$O(N m d)$ for $m$ features, and shared by all queries. That is the whole trick: the
matrix product is associative, $(\phi(Q)\phi(K)^\top)V = \phi(Q)(\phi(K)^\top V)$, and
the right-hand order never forms the $N \times N$ matrix. Katharopoulos et al.
[@katharopoulos2020transformers] take $\phi(x) = \mathrm{elu}(x) + 1$ and notice more:
with a causal mask, the sums run over $j \le i$ only, and they can be kept as a
running state

$$
S_i = S_{i-1} + \phi(k_i) v_i^\top, \qquad z_i = z_{i-1} + \phi(k_i),
$$

an RNN whose state has a fixed size, $m \times d_v$, however long the sequence: a
decoder produces each token in constant time and memory. It is a *linear* recurrence,
the kind [the parallel scan](../sequence/parallel_rnn.md#linear-scan) computes in
$\lceil\log_2 N\rceil$ rounds, which is how such a model trains in parallel.

The elu feature map gives a different model from softmax attention, not an
approximation of it. Performer [@choromanski2021rethinking] approximates the softmax
kernel itself with *random features* [@rahimi2007random]: $m$ random directions
$\omega$ turn $\exp(q^\top k)$ into the expectation of a product of positive
features, so that its estimate improves as $m$ grows, and drawing the directions
orthogonal [@yu2016orthogonal] improves it faster.

This chapter builds the three forms of kernel attention (the explicit $N \times N$
matrix, the associative product taken chunk by chunk, and the recurrence) for any
positive feature map, and checks that they agree to 1e-12 in float64, gradients
included; the test also matches the matrix form with `F.scaled_dot_product_attention`
given the kernel's logarithm as its mask. The demo times linear attention against
`F.scaled_dot_product_attention` from 256 to 8,192 positions: softmax attention's
time grows as $N^2$, linear attention's about as $N$ (the exponents fitted to each run
are printed below), and at 8,192 positions linear attention was more than 20× faster
in every run on one CPU thread. It then measures how close
Performer's features come to softmax attention as their number grows from 16 to
1,024: for soft attention the error falls as $1/\sqrt m$, from 0.63 to 0.11, while
for sharper attention it is still 0.54 at 1,024 features.
"""

import argparse
import math
import time
from pathlib import Path

import matplotlib.ticker
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from annotated.data import integer, number, torch_device
from annotated.figures import figure, save

# ## Kernel attention, written out
#
# Everything below takes the *features* $\phi(Q)$ `[..., N, m]` and $\phi(K)$
# `[..., S, m]`, which must be nonnegative, and the values `[..., S, d_v]`; the
# feature map is chosen by the caller. The reference form builds the kernel matrix
# $A = \phi(Q)\phi(K)^\top$, `[..., N, S]`, zeroes the entries above the diagonal when
# the attention is causal (query $i$ may read keys $j \le i$), and divides each row
# by its sum:
#
# $$
# Y = \mathrm{diag}(A\mathbf{1})^{-1} A V.
# $$
#
# This is softmax attention's code with the exponential swapped for the kernel, and it
# costs what softmax attention costs: $O(N S (m + d_v))$ time and an $N \times S$
# matrix. The test uses it as the yardstick for the two fast forms.
#
# A row sum can be 0: $\mathrm{elu}(x) + 1 = e^x$ for $x < 0$, but `F.elu` computes
# $e^x - 1$, and adding the 1 back gives exactly 0 once $x \le -17$ in float32 and
# $-37$ in float64; a query whose features are all 0 has a zero kernel with every
# key. Its numerator is 0 too, and $0/0$ would poison the loss with NaN; every form
# below divides such a row by 1 instead, so its output is 0, as for the query with
# nowhere to look in
# [attention](attention.md#scaled-dot-product-attention). Dividing by the smallest
# positive float instead would give 0 too, but its backward pass would multiply
# $1/10^{-308}$, an overflow to infinity, by the feature map's zero slope: NaN again.


def normalise(numerator: Tensor, denominator: Tensor) -> Tensor:
    """`numerator [..., N, d_v] / denominator [..., N]`, dividing by 1 where the
    denominator is exactly 0, so that an all-zero row gives 0, not NaN."""
    safe = denominator.masked_fill(denominator == 0, 1.0)  # [..., N]
    return numerator / safe[..., None]


def kernel_attention_quadratic(
    phi_q: Tensor, phi_k: Tensor, value: Tensor, causal: bool = False
) -> Tensor:
    r"""$\mathrm{diag}(A\mathbf{1})^{-1}AV$ with the explicit kernel matrix
    $A = \phi(Q)\phi(K)^\top$ `[..., N, S]`; returns `[..., N, d_v]`."""
    check_kernel_inputs(phi_q, phi_k, value, causal, "kernel_attention_quadratic")
    kernel = phi_q @ phi_k.transpose(-2, -1)  # [..., N, S]
    if causal:
        kernel = kernel.tril()  # query i reads keys j <= i
    return normalise(kernel @ value, kernel.sum(dim=-1))  # [..., N, d_v]


# One checker for every public function, called before anything is computed. The
# features and values must share their batch axes exactly (broadcasting a batch of
# queries against one set of keys is a mistake more often than a wish), and a causal
# mask needs as many queries as keys, since query $i$ reads keys $0..i$.


def check_kernel_inputs(
    phi_q: Tensor, phi_k: Tensor, value: Tensor, causal: bool, caller: str
) -> None:
    """Raise naming the argument when the queries, keys and values (or their
    features) do not fit together."""
    named = (("query", phi_q), ("key", phi_k), ("value", value))
    for name, tensor in named:
        if not isinstance(tensor, Tensor) or tensor.dim() < 2:
            raise ValueError(
                f"{caller}: {name} must be a tensor of shape [..., seq, features], "
                f"got {getattr(tensor, 'shape', type(tensor).__name__)}"
            )
    if not phi_q.is_floating_point() or not phi_q.dtype == phi_k.dtype == value.dtype:
        raise TypeError(
            f"{caller}: query, key and value must share one float dtype, got "
            f"{phi_q.dtype}, {phi_k.dtype}, {value.dtype}"
        )
    if phi_q.shape[-1] != phi_k.shape[-1]:
        raise ValueError(
            f"{caller}: query {tuple(phi_q.shape)} and key {tuple(phi_k.shape)} must "
            "have the same last dimension"
        )
    if phi_k.shape[-2] != value.shape[-2] or phi_k.shape[-2] == 0:
        raise ValueError(
            f"{caller}: key {tuple(phi_k.shape)} and value {tuple(value.shape)} must "
            "hold the same number of positions, at least one"
        )
    if not phi_q.shape[:-2] == phi_k.shape[:-2] == value.shape[:-2]:
        raise ValueError(
            f"{caller}: query, key and value must share their batch axes, got "
            f"{tuple(phi_q.shape[:-2])}, {tuple(phi_k.shape[:-2])}, "
            f"{tuple(value.shape[:-2])}"
        )
    if causal and phi_q.shape[-2] != phi_k.shape[-2]:
        raise ValueError(
            f"{caller}: causal attention needs as many queries as keys, got "
            f"{phi_q.shape[-2]} and {phi_k.shape[-2]}"
        )


# ## The associative form, and chunks for the causal mask
#
# Without a mask, the order of the products is free, and the two sums of the
# introduction are two matrix products over the keys:
#
# $$
# \begin{aligned}
# S &= \phi(K)^\top V \quad [m, d_v], \qquad z = \phi(K)^\top \mathbf{1} \quad [m], \\
# Y &= \mathrm{diag}(\phi(Q) z)^{-1}\, \phi(Q) S.
# \end{aligned}
# $$
#
# Time $O((N + S) m d_v)$, memory $O(m d_v)$ beyond the inputs: linear in the length.
#
# With the causal mask, query $i$ needs the sums over $j \le i$ only, a different $S_i$
# for every $i$. One way is a prefix sum, `torch.cumsum` of the outer products
# $\phi(k_j) v_j^\top$ along the sequence, the scan of the [parallel-training
# lesson](../sequence/parallel_rnn.md) with every $a_t = 1$. It stores all $N$ states,
# $N m d_v$ numbers: at $N = 8192$ and $m = d_v = 64$ that is 33 million per head,
# 130 MB in float32, a quadratic cost again in a different letter.
#
# The *chunkwise* form [@yang2024gated] stores one state. Cut the sequence into
# chunks of $C$ positions. For the queries of chunk $c$ the keys split in two: those
# of earlier chunks, whose contribution is already summed in the carried state
# $(S, z)$, and those of chunk $c$ itself, handled by the masked $C \times C$ kernel
# matrix of the reference form:
#
# $$
# \begin{aligned}
# Y_c &= \mathrm{diag}\big(\phi(Q_c) z + A_c \mathbf{1}\big)^{-1}
#        \big(\phi(Q_c) S + A_c V_c\big), \\
# A_c &= \mathrm{tril}\big(\phi(Q_c)\phi(K_c)^\top\big), \\
# S &\leftarrow S + \phi(K_c)^\top V_c, \qquad z \leftarrow z + \phi(K_c)^\top
#       \mathbf{1}.
# \end{aligned}
# $$
#
# Time $O(N C (m + d_v) + N m d_v)$, all of it matrix products, and a loop of $N / C$
# dependent steps instead of $N$. $C = N$ is the reference form; $C = 1$ is the RNN
# below. Libraries of linear-attention kernels such as flash-linear-attention do
# exactly this on the GPU, with $C$ chosen to fit a tile.


def kernel_attention(
    phi_q: Tensor,
    phi_k: Tensor,
    value: Tensor,
    causal: bool = False,
    chunk_size: int = 64,
) -> Tensor:
    r"""$\mathrm{diag}(\phi(Q)z)^{-1}\phi(Q)S$ in linear time: associative without a
    mask, chunkwise (chunks of `chunk_size` positions) with one; returns
    `[..., N, d_v]`."""
    check_kernel_inputs(phi_q, phi_k, value, causal, "kernel_attention")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(
            f"kernel_attention: chunk_size must be an int >= 1, got {chunk_size!r}"
        )
    if not causal:
        state = phi_k.transpose(-2, -1) @ value  # [..., m, d_v]: S
        normaliser = phi_k.sum(dim=-2)  # [..., m]: z
        denominator = (phi_q @ normaliser[..., None])[..., 0]  # [..., N]
        return normalise(phi_q @ state, denominator)  # [..., N, d_v]
    state = phi_k.new_zeros(*phi_k.shape[:-2], phi_k.shape[-1], value.shape[-1])
    normaliser = phi_k.new_zeros(*phi_k.shape[:-2], phi_k.shape[-1])  # [..., m]
    outputs = []
    for start in range(0, phi_q.shape[-2], chunk_size):
        q_c = phi_q[..., start : start + chunk_size, :]  # [..., C, m]
        k_c = phi_k[..., start : start + chunk_size, :]  # [..., C, m]
        v_c = value[..., start : start + chunk_size, :]  # [..., C, d_v]
        inside = (q_c @ k_c.transpose(-2, -1)).tril()  # [..., C, C]: A_c
        numerator = q_c @ state + inside @ v_c  # [..., C, d_v]
        across = (q_c @ normaliser[..., None])[..., 0]  # [..., C]: q_c · z
        denominator = across + inside.sum(dim=-1)  # [..., C]
        outputs.append(normalise(numerator, denominator))
        state = state + k_c.transpose(-2, -1) @ v_c  # [..., m, d_v]
        normaliser = normaliser + k_c.sum(dim=-2)  # [..., m]
    return torch.cat(outputs, dim=-2)  # [..., N, d_v]


# ## The recurrent form: a Transformer as an RNN
#
# Take $C = 1$ and the chunkwise form becomes Katharopoulos et al.'s recurrence
# [@katharopoulos2020transformers], one position at a time:
#
# $$
# \begin{aligned}
# S_i &= S_{i-1} + \phi(k_i) v_i^\top, \qquad z_i = z_{i-1} + \phi(k_i), \\
# y_i &= \frac{S_i^\top \phi(q_i)}{z_i^\top \phi(q_i)}.
# \end{aligned}
# $$
#
# This is how a causal linear-attention model generates text: the state $(S, z)$ is
# all it remembers, $m (d_v + 1)$ numbers per head whatever the length, where a
# softmax decoder's KV cache grows by a key and a value every token.
# The function takes the state to start from and returns the one it ends in, so a
# sequence can be fed in pieces (a prompt, then one token at a time) and the state
# saved between them. The memory has a price: $S$ is a sum that never forgets, and
# every key ever seen keeps its full weight in it. Gated variants multiply $S_{i-1}$
# by a learned decay before adding, $S_i = a_i \odot S_{i-1} + \phi(k_i) v_i^\top$,
# which is still a linear recurrence [@yang2024gated].


def kernel_attention_recurrent(
    phi_q: Tensor,
    phi_k: Tensor,
    value: Tensor,
    state: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    r"""Causal kernel attention one position at a time, carrying $(S, z)$: returns
    `(output [..., N, d_v], (S [..., m, d_v], z [..., m]))`."""
    check_kernel_inputs(phi_q, phi_k, value, True, "kernel_attention_recurrent")
    batch, features, width = phi_k.shape[:-2], phi_k.shape[-1], value.shape[-1]
    if state is None:
        state = (
            phi_k.new_zeros(*batch, features, width),
            phi_k.new_zeros(*batch, features),
        )
    memory, normaliser = state  # [..., m, d_v], [..., m]
    if memory.shape != (*batch, features, width) or normaliser.shape != (
        *batch,
        features,
    ):
        raise ValueError(
            "kernel_attention_recurrent: state must be (S [..., m, d_v], z [..., m]) = "
            f"({(*batch, features, width)}, {(*batch, features)}), got "
            f"({tuple(memory.shape)}, {tuple(normaliser.shape)})"
        )
    outputs = []
    steps = zip(phi_q.unbind(-2), phi_k.unbind(-2), value.unbind(-2))
    for q_i, k_i, v_i in steps:  # [..., m], [..., m], [..., d_v]
        memory = memory + k_i[..., :, None] * v_i[..., None, :]  # [..., m, d_v]
        normaliser = normaliser + k_i  # [..., m]
        numerator = (q_i[..., None, :] @ memory)[..., 0, :]  # [..., d_v]
        outputs.append(normalise(numerator, (q_i * normaliser).sum(dim=-1)))
    return torch.stack(outputs, dim=-2), (memory, normaliser)  # [..., N, d_v]


# ## Katharopoulos's feature map
#
# The features must be nonnegative, or the denominator could be zero or negative and
# the "weights" $\phi(q_i)^\top\phi(k_j) / \sum_{j'} \phi(q_i)^\top\phi(k_{j'})$
# would stop being an average. Katharopoulos et al. chose
#
# $$
# \phi(x) = \mathrm{elu}(x) + 1 =
# \begin{cases} x + 1 & x > 0 \\ e^{x} & x \le 0 \end{cases}
# $$
#
# over ReLU because it is positive everywhere and its gradient is not zero for negative
# inputs. It keeps the width, $m = d$. The kernel $\phi(q)^\top\phi(k)$ it defines is
# not $\exp(q^\top k/\sqrt{d})$, and does not try to be: a model is trained with it
# from the start. The paper reports it matching softmax attention on image generation
# while generating thousands of times faster, and on speech recognition beating an
# LSTM and the Reformer, though not softmax attention.


def elu_feature_map(x: Tensor) -> Tensor:
    r"""$\phi(x) = \mathrm{elu}(x) + 1$, elementwise: positive, $m = d$."""
    return F.elu(x) + 1


@torch.fx.wrap
def linear_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    causal: bool = False,
    chunk_size: int = 64,
) -> Tensor:
    """Katharopoulos et al.'s linear attention on `[..., N, d]` queries and keys and
    `[..., N, d_v]` values; returns `[..., N, d_v]`."""
    check_kernel_inputs(query, key, value, causal, "linear_attention")
    phi_q, phi_k = elu_feature_map(query), elu_feature_map(key)  # [..., N, d]
    return kernel_attention(phi_q, phi_k, value, causal, chunk_size)


# ## A layer
#
# As a drop-in for self-attention in a Transformer block, linear attention keeps
# the multi-head layout of [attention](attention.md#multiheadattention): project the
# input to queries, keys and values, split them into heads, attend in each head,
# merge and project back. Only the attention in the middle changed, so the parameter
# count is the same, $4 d_{\text{model}}^2 + 4 d_{\text{model}}$.


class LinearAttention(nn.Module):
    """Multi-head linear self-attention: `x [batch, N, d_model]` → `[batch, N,
    d_model]`."""

    def __init__(self, d_model: int, heads: int, causal: bool = False):
        super().__init__()
        if d_model % heads:
            raise ValueError(
                f"LinearAttention: d_model={d_model} must be divisible by heads={heads}"
            )
        self.heads = heads
        self.causal = causal
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def split_heads(self, x: Tensor) -> Tensor:
        """`[batch, N, d_model]` → `[batch, heads, N, d_head]`."""
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        q = self.split_heads(self.q_proj(x))  # [batch, heads, N, d_head]
        k = self.split_heads(self.k_proj(x))  # [batch, heads, N, d_head]
        v = self.split_heads(self.v_proj(x))  # [batch, heads, N, d_head]
        y = linear_attention(q, k, v, self.causal)  # [batch, heads, N, d_head]
        return self.out_proj(y.transpose(1, 2).flatten(-2))  # [batch, N, d_model]


# ## Approximating softmax with random features
#
# Performer [@choromanski2021rethinking] keeps softmax attention's kernel and
# factorises it approximately. Scale queries and keys by $d^{-1/4}$ each, so that
# $\exp(q^\top k / \sqrt d) = \exp(x^\top y)$ with $x = q d^{-1/4}$, $y = k d^{-1/4}$.
# For $\omega \sim \mathcal{N}(0, I_d)$, the Gaussian moment generating function
# $\mathbb{E}[e^{\omega^\top u}] = e^{\|u\|^2/2}$ gives, with $u = x + y$,
#
# $$
# \begin{aligned}
# \exp(x^\top y)
#   &= e^{-\|x\|^2/2}\, e^{-\|y\|^2/2}\; e^{\|x + y\|^2/2} \\
#   &= \mathbb{E}_\omega\!\left[
#      e^{\omega^\top x - \|x\|^2/2}\; e^{\omega^\top y - \|y\|^2/2}\right].
# \end{aligned}
# $$
#
# Draw $m$ directions $\omega_1..\omega_m$ and average: the *positive random features*
#
# $$
# \phi(x) = \tfrac{1}{\sqrt m}
#   \left(e^{\omega_1^\top x - \|x\|^2/2}, \ldots,
#         e^{\omega_m^\top x - \|x\|^2/2}\right)
# $$
#
# give $\phi(x)^\top\phi(y)$, an unbiased estimate of $\exp(x^\top y)$ whose relative
# error falls as $1/\sqrt m$. Random Fourier features [@rahimi2007random] use
# $\cos$ and $\sin$ of $\omega^\top x$ instead; they are unbiased too, but can be
# negative, and where the true kernel is tiny (most entries of a peaked softmax) their
# estimate's sign is noise and the normaliser can come out near zero or negative.
# Positive features are positive by construction, and their relative error is smallest
# exactly there [@choromanski2021rethinking] (the "+" of FAVOR+).
#
# The function returns the logarithm of the features, $\omega_i^\top x - \|x\|^2/2 -
# \tfrac12\ln m$, `[..., N, m]`, because exponentiating is where the trouble lies:
# below, `performer_attention` shifts it before taking the exponential.


def favor_log_features(x: Tensor, projection: Tensor) -> Tensor:
    r"""$\ln\phi(x) = \omega_i^\top x - \|x\|^2/2 - \frac12\ln m$ for the rows
    $\omega_i$ of `projection [m, d]`; `x [..., N, d]` → `[..., N, m]`."""
    if not isinstance(projection, Tensor) or projection.dim() != 2:
        raise ValueError(
            f"favor_log_features: projection must be [m, d], got "
            f"{getattr(projection, 'shape', type(projection).__name__)}"
        )
    if x.shape[-1] != projection.shape[1] or x.dtype != projection.dtype:
        raise ValueError(
            f"favor_log_features: x {tuple(x.shape)} {x.dtype} and projection "
            f"{tuple(projection.shape)} {projection.dtype} must share the width d "
            "and the dtype"
        )
    squared_norm = (x * x).sum(dim=-1, keepdim=True) / 2  # [..., N, 1]
    log_m = math.log(projection.shape[0]) / 2
    return x @ projection.T - squared_norm - log_m  # [..., N, m]


# ### Orthogonal directions
#
# Independent Gaussian directions may come out nearly parallel and then estimate the
# same thing twice. Orthogonal random features [@yu2016orthogonal] draw them in blocks
# of $d$ mutually orthogonal directions, which keeps each $\omega_i$'s distribution
# (so the estimate stays unbiased) and lowers its variance; Performer proves it does for
# its positive features too [@choromanski2021rethinking]. Each block is the $Q$ of a
# QR decomposition of a Gaussian matrix, with the signs of $R$'s diagonal moved into
# $Q$: without that correction LAPACK's sign convention makes $Q$'s distribution
# depend on it, and the directions are not uniform [@mezzadri2007generate]. Then each
# row is given the length of an independent Gaussian vector, a $\chi_d$ variable,
# so that, taken alone, it is exactly a draw from $\mathcal{N}(0, I_d)$. For $m > d$
# the blocks are independent of one another, and the last is cut to size.


def random_projection(
    num_features: int,
    dim: int,
    orthogonal: bool = True,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    r"""`[num_features, dim]` directions, each marginally $\mathcal{N}(0, I_{dim})$;
    orthogonal within blocks of `dim` rows when `orthogonal`."""
    if not isinstance(num_features, int) or num_features < 1:
        raise ValueError(
            f"random_projection: num_features must be an int >= 1, got {num_features!r}"
        )
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"random_projection: dim must be an int >= 1, got {dim!r}")
    gaussian = torch.randn(num_features, dim, generator=generator, dtype=torch.float64)
    if not orthogonal:
        return gaussian.to(dtype)  # [m, d]
    blocks = math.ceil(num_features / dim)
    square = torch.randn(blocks, dim, dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(square)  # [blocks, d, d] each, one QR per block
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))  # [blocks, d]
    rows = (q * signs[:, None, :]).transpose(-2, -1)  # [blocks, d, d]: orthonormal rows
    directions = rows.flatten(0, 1)[:num_features]  # [m, d]
    lengths = gaussian.norm(dim=1, keepdim=True)  # [m, 1]: chi_d lengths
    return (directions * lengths).to(dtype)  # [m, d]


# ### FAVOR+ attention
#
# The features are exponentials of numbers far from 0. The $-\|x\|^2/2$ term grows
# with the square of the input's norm and $\omega^\top x$ only linearly, so large
# inputs push the log-features far below 0: with $d = 8$ and queries and keys of
# standard deviation 6, some products of a query's and a key's features fall below
# $e^{-103}$, where float32 stops (the test builds such a case), and whole rows of the
# kernel become 0. A direction well aligned with a large input overflows the other way,
# past $e^{88}$. The cure is the normaliser's indifference to constant factors. A
# factor $c_i$ common to all of query $i$'s features multiplies its numerator and its
# denominator alike, so each query's log-features are shifted by their own maximum; a
# factor common to *all* keys' features cancels the same way, so the keys' are shifted
# by one maximum over all keys and features. (A per-key shift would not cancel: it
# would reweight the keys.) After the shift the largest feature is exactly 1, nothing
# overflows, and what underflows is negligible next to it. For a causal decoder that
# receives keys one at a time the keys' maximum is not known in advance; a running
# shift, rescaling the state when it grows, as the online softmax of
# [FlashAttention](flash_attention.md) rescales its sums, is the fix.


def performer_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    projection: Tensor,
    causal: bool = False,
    chunk_size: int = 64,
) -> Tensor:
    r"""Softmax attention $\mathrm{softmax}(QK^\top/\sqrt d)V$ approximated with the
    positive random features of `projection [m, d]`; returns `[..., N, d_v]`."""
    check_kernel_inputs(query, key, value, causal, "performer_attention")
    scale = query.shape[-1] ** -0.25
    log_q = favor_log_features(query * scale, projection)  # [..., N, m]
    log_k = favor_log_features(key * scale, projection)  # [..., S, m]
    phi_q = torch.exp(log_q - log_q.amax(dim=-1, keepdim=True))  # per query
    phi_k = torch.exp(log_k - log_k.amax(dim=(-2, -1), keepdim=True))  # all keys
    return kernel_attention(phi_q, phi_k, value, causal, chunk_size)


# ## The example
#
# A causal linear-attention layer on two sequences of 100 positions, a length that
# is not a multiple of the chunk size: the dataflow diagram shows the three
# projections feeding one linear-attention node.


def example():
    """A causal `LinearAttention(32, 4)` on `[2, 100, 32]`."""
    torch.manual_seed(0)
    return LinearAttention(32, 4, causal=True), (torch.randn(2, 100, 32),)


# ## The demo
#
# Three things, each printed, two drawn.
#
# **The forms agree.** The matrix, chunkwise and recurrent forms on one float64
# example, causal, and the matrix and associative forms without the mask.
#
# **Scaling.** The forward time of `F.scaled_dot_product_attention` (softmax, PyTorch's
# fused kernel) and of `linear_attention`, without and with the causal mask, for
# $N = 256$ to 8,192 positions, 2 heads of width 64, float32, on one CPU thread (so
# that the measurement is of the algorithms, not of threads competing with whatever
# else the machine runs). Each point is the fastest of a few calls. The growth
# exponent is the slope of a least-squares line through the log–log points of the
# three longest lengths, where fixed overheads no longer dominate.
#
# **Performer's error.** For $m = 16$ to 1,024 features, independent and orthogonal,
# the relative error $\|\hat Y - Y\|_F / \|Y\|_F$ of FAVOR+ against exact softmax
# attention $Y$, averaged over fresh draws of the directions, on 4 heads of 256
# positions with $d = 16$ and queries and keys drawn from $\mathcal{N}(0, \sigma^2)$.
# The scale $\sigma$ matters more than anything else. One feature's relative variance
# is
#
# $$
# \frac{\mathbb{E}[Z^2]}{\mathbb{E}[Z]^2} - 1 = e^{\|x + y\|^2} - 1,
# \qquad Z = e^{\omega^\top (x + y) - \|x\|^2/2 - \|y\|^2/2},
# $$
#
# and here $\|x + y\|^2 \approx 2 d \sigma^2 / \sqrt d = 8\sigma^2$. At $\sigma = 0.5$
# (scores $q^\top k/\sqrt d$ with standard deviation $\sigma^2 = 0.25$, a soft
# attention) that is $e^2 - 1 \approx 6$; at $\sigma = 0.75$ (standard deviation 0.56)
# it is $e^{4.5} - 1 \approx 89$, and every further step towards a peaked softmax
# multiplies it. Positive random features are good at soft attention and need
# exponentially many features for sharp attention, which is why Performer models are
# trained with them from the start rather than swapped into a trained softmax model.


def timed(fn, device: str, repeats: int) -> float:
    """The fastest wall time of `fn()` over `repeats` calls, after one warm-up; on a
    GPU, the queued kernels are waited for."""
    times = []
    for index in range(repeats + 1):
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if index:
            times.append(time.perf_counter() - start)
    return min(times)


def forms_gap(device: str) -> float:
    """The largest difference between the forms of kernel attention, in float64."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 77, 8, generator=generator) for _ in range(3))
    q, k, v = (t.double().to(device) for t in (q, k, v))
    phi_q, phi_k = elu_feature_map(q), elu_feature_map(k)
    causal = kernel_attention_quadratic(phi_q, phi_k, v, causal=True)
    chunked = kernel_attention(phi_q, phi_k, v, causal=True, chunk_size=16)
    recurrent, _ = kernel_attention_recurrent(phi_q, phi_k, v)
    full = kernel_attention_quadratic(phi_q, phi_k, v)
    associative = kernel_attention(phi_q, phi_k, v)
    gaps = (chunked - causal, recurrent - causal, associative - full)
    return max(gap.abs().max().item() for gap in gaps)


SOFTMAX, SOFTMAX_CAUSAL = "softmax (SDPA)", "softmax, causal (SDPA)"
LINEAR, LINEAR_CAUSAL = "linear", "linear, causal (chunks of 64)"


def scaling(lengths, heads, head_dim, repeats, device) -> dict[str, list[float]]:
    """Forward times, in seconds, of softmax and linear attention at each length."""
    runs = {
        SOFTMAX: lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
        SOFTMAX_CAUSAL: lambda q, k, v: F.scaled_dot_product_attention(
            q, k, v, is_causal=True
        ),
        LINEAR: lambda q, k, v: linear_attention(q, k, v),
        LINEAR_CAUSAL: lambda q, k, v: linear_attention(q, k, v, causal=True),
    }
    times = {name: [] for name in runs}
    generator = torch.Generator().manual_seed(0)
    for length in tqdm(lengths, desc="timing attention"):
        shape = (1, heads, length, head_dim)
        q, k, v = (torch.randn(shape, generator=generator).to(device) for _ in range(3))
        with torch.no_grad():
            for name, run in runs.items():
                times[name].append(timed(lambda: run(q, k, v), device, repeats))
    return times


def growth_exponent(lengths: list[int], seconds: list[float]) -> float:
    """The slope of log time against log length over the three longest lengths."""
    slope, _ = np.polyfit(np.log(lengths[-3:]), np.log(seconds[-3:]), 1)
    return float(slope)


def performer_errors(
    features: list[int], scales: list[float], seeds: int, device: str
) -> dict[tuple[float, str], list[float]]:
    """Mean relative error of FAVOR+ against softmax attention for each scale of the
    inputs and kind of directions, per feature count."""
    errors = {}
    steps = [
        (scale, kind) for scale in scales for kind in ("independent", "orthogonal")
    ]
    for scale, kind in tqdm(steps, desc="performer features"):
        generator = torch.Generator().manual_seed(1)
        q, k, v = (torch.randn(4, 256, 16, generator=generator) for _ in range(3))
        q, k, v = (t.double().to(device) for t in (q * scale, k * scale, v))
        exact = F.scaled_dot_product_attention(q, k, v)  # [4, 256, 16]
        errors[scale, kind] = []
        for m in features:
            draws = []
            for seed in range(seeds):
                directions = random_projection(
                    m, 16, kind == "orthogonal", torch.Generator().manual_seed(seed)
                )
                estimate = performer_attention(q, k, v, directions.double().to(device))
                draws.append(((estimate - exact).norm() / exact.norm()).item())
            errors[scale, kind].append(float(np.mean(draws)))
    return errors


def plot_scaling(lengths, times, slopes, out: Path) -> Path:
    fig, ax = figure()
    for (name, seconds), marker in zip(times.items(), "os^v"):
        dashed = "--" if "causal" in name else "-"
        ax.loglog(lengths, seconds, dashed, marker=marker, label=name)
    reference = np.array(lengths, dtype=float) / lengths[-1]
    top = times[SOFTMAX][-1]
    ax.loglog(lengths, top * reference**2, ":", color="grey", label="$\\propto N^2$")
    ax.loglog(lengths, top * reference / 10, "-.", color="grey", label="$\\propto N$")
    ax.set_xticks(lengths, [str(n) for n in lengths], minor=False)
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("sequence length $N$")
    ax.set_ylabel("forward time (s)")
    ax.legend(loc="upper left", fontsize=8)
    caption = (
        "Forward time of softmax attention (F.scaled_dot_product_attention) and of "
        "linear attention against the sequence length, log–log, 2 heads of width 64 "
        f"in float32 on one CPU thread: softmax time grows as "
        f"N^{slopes[SOFTMAX]:.1f}, linear attention's as N^{slopes[LINEAR]:.1f} "
        f"(N^{slopes[LINEAR_CAUSAL]:.1f} causal, in chunks of 64), and at "
        f"N = {lengths[-1]} linear attention is "
        f"{times[SOFTMAX][-1] / times[LINEAR][-1]:.0f}× faster."
    )
    return save(fig, out / "scaling.png", caption=caption)


def plot_performer(features, errors, seeds, out: Path) -> Path:
    fig, ax = figure()
    for ((scale, kind), values), marker in zip(errors.items(), "os^v"):
        dashed = "--" if kind == "orthogonal" else "-"
        label = f"$\\sigma = {scale}$, {kind}"
        ax.loglog(features, values, dashed, marker=marker, label=label)
    first = next(iter(errors.values()))[0]
    guide = first * (np.array(features) / features[0]) ** -0.5
    ax.loglog(features, guide, ":", color="grey", label="$\\propto m^{-1/2}$")
    ax.set_xlabel("random features $m$")
    ax.set_ylabel("relative error $\\|\\hat Y - Y\\|_F / \\|Y\\|_F$")
    ax.legend(fontsize=8)
    soft, sharp = list(dict.fromkeys(scale for scale, _ in errors))[:2]
    caption = (
        "Relative error of Performer's positive random features (FAVOR+) against "
        f"exact softmax attention, mean over {seeds} draws, against the number of "
        f"features m. For soft attention (σ = {soft}) it falls as 1/√m, from "
        f"{errors[soft, 'independent'][0]:.2f} at m = {features[0]} to "
        f"{errors[soft, 'independent'][-1]:.2f} at m = {features[-1]} "
        f"({errors[soft, 'orthogonal'][-1]:.2f} with orthogonal directions); for "
        f"sharper attention (σ = {sharp}) it is still "
        f"{errors[sharp, 'independent'][-1]:.2f} at m = {features[-1]}."
    )
    return save(fig, out / "performer.png", caption=caption)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Check the forms agree, time linear against softmax attention, measure
    Performer's error."""
    parser = argparse.ArgumentParser(
        description="Time linear attention against softmax attention and measure "
        "Performer's approximation error.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--max-length",
        type=integer(at_least=1),
        default=8192,
        help="longest sequence timed",
    )
    parser.add_argument(
        "--min-length",
        type=integer(at_least=1),
        default=256,
        help="shortest sequence timed",
    )
    parser.add_argument(
        "--heads", type=integer(at_least=1), default=2, help="heads in the timing"
    )
    parser.add_argument(
        "--head-dim", type=integer(at_least=1), default=64, help="width of each head"
    )
    parser.add_argument(
        "--repeats", type=integer(at_least=1), default=5, help="timed calls per point"
    )
    parser.add_argument(
        "--features",
        type=integer(at_least=1),
        nargs="+",
        default=[16, 64, 256, 1024],
        help="Performer feature counts m",
    )
    parser.add_argument(
        "--scales",
        type=number(above=0),
        nargs="+",
        default=[0.5, 0.75],
        help="standard deviations σ of the Performer queries and keys",
    )
    parser.add_argument(
        "--seeds",
        type=integer(at_least=1),
        default=8,
        help="draws of the directions per m",
    )
    parser.add_argument(
        "--threads", type=integer(at_least=1), default=1, help="CPU threads for torch"
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to run on",
    )
    parser.add_argument(
        "--out", default="out/linear_attention", help="folder for the figures"
    )
    args = parser.parse_args(argv)
    if 4 * args.min_length > args.max_length:  # three lengths at least, for a slope
        parser.error("need 4 × --min-length <= --max-length")
    if len(args.scales) < 2:
        parser.error("--scales needs two values: a soft and a sharper attention")
    out = Path(args.out)
    torch.set_num_threads(args.threads)

    gap = forms_gap(args.device)
    print(f"matrix, chunkwise, recurrent and associative forms agree to {gap:.1e}")

    lengths = [args.min_length]
    while lengths[-1] * 2 <= args.max_length:
        lengths.append(lengths[-1] * 2)
    times = scaling(lengths, args.heads, args.head_dim, args.repeats, args.device)
    slopes = {name: growth_exponent(lengths, times[name]) for name in times}
    for name, seconds in times.items():
        print(f"{name:30s} time grows as N^{slopes[name]:.2f}", end="; ")
        print(f"{seconds[-1] * 1e3:.1f} ms at N = {lengths[-1]}")
    speedup = times[SOFTMAX][-1] / times[LINEAR][-1]
    causal_speedup = times[SOFTMAX_CAUSAL][-1] / times[LINEAR_CAUSAL][-1]
    print(
        f"at N = {lengths[-1]} linear attention is {speedup:.1f}× faster than softmax "
        f"({causal_speedup:.1f}× causal)"
    )
    plot_scaling(lengths, times, slopes, out)

    errors = performer_errors(args.features, args.scales, args.seeds, args.device)
    for (scale, kind), values in errors.items():
        listed = ", ".join(f"m={m}: {e:.3f}" for m, e in zip(args.features, values))
        print(f"performer relative error, σ = {scale}, {kind}: {listed}")
    plot_performer(args.features, errors, args.seeds, out)
    metrics = {
        "forms_gap": gap,
        "softmax_exponent": slopes[SOFTMAX],
        "linear_exponent": slopes[LINEAR],
        "causal_linear_exponent": slopes[LINEAR_CAUSAL],
        "speedup": speedup,
        "causal_speedup": causal_speedup,
    }
    soft = args.scales[0]
    for kind in ("independent", "orthogonal"):
        for m, error in zip(args.features, errors[soft, kind]):
            metrics[f"performer_{kind}_m{m}"] = error
    return metrics


if __name__ == "__main__":
    main()

# ## Exercises
#
# 1. Give `LinearAttention` a `feature_map` argument that accepts FAVOR+ features
#    with a projection stored as a buffer, and a method that redraws it. Performer
#    redraws its directions every so many training steps: why does a model trained
#    with one fixed draw not need the kernel estimate to be unbiased?
# 2. Add a key padding mask to `kernel_attention`. Which single line makes a padded
#    key contribute nothing to $S$ and $z$, in all three forms?
# 3. Generate one token at a time from a causal `LinearAttention` with
#    `kernel_attention_recurrent`, and time it per token against the sequence length.
#    Compare with a softmax decoder's KV cache: what grows, and what stays fixed?
# 4. Replace $\mathrm{elu}(x) + 1$ by $\mathrm{relu}(x)$ and train the layer on
#    something small. What happens to a query whose features are all zero, and how
#    does `normalise` treat it?
