r"""
---
title: Decoding with a KV cache
summary: >-
  A small GPT-like decoder that keeps every layer's keys and values in one preallocated
  cache, with multi-head, grouped-query and multi-query attention: its logits equal a
  full recomputation at every step; in the demo the cache cuts the arithmetic of
  generation 126 times and makes it 5 to 10 times faster on one CPU thread, while its
  bytes follow 2 · layers · KV heads · head width · tokens · bytes.
time: 13 s
references:
  - key: pope2022efficiently
    authors: [Reiner Pope, Sholto Douglas, Aakanksha Chowdhery, Jacob Devlin, et al.]
    title: Efficiently Scaling Transformer Inference
    year: 2023
    venue: MLSys 2023
    arxiv: "2211.05102"
  - key: shazeer2019fast
    authors: [Noam Shazeer]
    title: "Fast Transformer Decoding: One Write-Head is All You Need"
    year: 2019
    venue: arXiv preprint
    arxiv: "1911.02150"
  - key: ainslie2023gqa
    authors:
      - Joshua Ainslie
      - James Lee-Thorp
      - Michiel de Jong
      - Yury Zemlyanskiy
      - Federico Lebrón
      - Sumit Sanghai
    title: >-
      GQA: Training Generalized Multi-Query Transformer Models from Multi-Head
      Checkpoints
    year: 2023
    venue: EMNLP 2023
    arxiv: "2305.13245"
  - key: vaswani2017attention
    authors: [Ashish Vaswani, Noam Shazeer, Niki Parmar, Jakob Uszkoreit, Llion Jones,
      Aidan N. Gomez, Łukasz Kaiser, Illia Polosukhin]
    title: Attention Is All You Need
    year: 2017
    venue: NeurIPS 2017
    arxiv: "1706.03762"
  - key: radford2019language
    authors: [Alec Radford, Jeffrey Wu, Rewon Child, David Luan, Dario Amodei,
      Ilya Sutskever]
    title: Language Models are Unsupervised Multitask Learners
    year: 2019
    venue: OpenAI technical report
    url: https://cdn.openai.com/better-language-models/language_models_are_unsupervised_multitask_learners.pdf
  - key: touvron2023llama2
    authors: [Hugo Touvron, Louis Martin, Kevin Stone, Peter Albert, et al.]
    title: "Llama 2: Open Foundation and Fine-Tuned Chat Models"
    year: 2023
    venue: arXiv preprint
    arxiv: "2307.09288"
  - key: kwon2023efficient
    authors: [Woosuk Kwon, Zhuohan Li, Siyuan Zhuang, Ying Sheng, Lianmin Zheng,
      Cody Hao Yu, Joseph E. Gonzalez, Hao Zhang, Ion Stoica]
    title: >-
      Efficient Memory Management for Large Language Model Serving with
      PagedAttention
    year: 2023
    venue: SOSP 2023
    arxiv: "2309.06180"
worksheet:
  - region: GroupedQueryAttention.forward
    hint: >-
      Project x to queries [batch, kv_heads, group * T, d_head] (each group's query
      heads folded into the rows of its key-value head) and to keys and values
      [batch, kv_heads, T, d_head]; with a cache, write them at slot start and attend
      over what write returns. Repeat the mask once per head of the group along the
      query rows, run scaled_dot_product_attention, unfold the heads back to
      [batch, T, d_model] and apply the output projection.
    tests:
      - test_attention_layer_matches_torch_sdpa_with_enable_gqa
      - test_gqa_equals_mha_with_each_kv_head_repeated
  - region: decoder_mask
    hint: >-
      Queries sit at slots start .. start + length - 1 and keys at 0 .. start +
      length - 1; a key is allowed when its slot is <= the query's (bottom-right
      triangle), and the positions are the query slots. With left_pad, also block
      each row's keys below its padding, return the mask as [batch, 1, T, S], and
      shift the positions down by the padding (clamped at 0).
    tests:
      - test_mask_is_torchs_bottom_right_causal_mask
      - test_mask_blocks_left_padding_and_shifts_positions
  - region: generate
    hint: >-
      Check new_tokens and the length, and allocate a cache of prompt + new_tokens -
      1 slots if asked. Each step: without a cache run the whole text so far; with
      one, feed the prompt at step 0 (prefill) and afterwards only the last chosen
      token at its slot. Take the argmax of the last position's logits, append it,
      and record the logits and the step's seconds.
    tests:
      - test_cached_generation_equals_recomputation_in_float64
      - test_left_padded_batch_equals_each_prompt_alone
---

A language model writes one token at a time. To choose token $t+1$ it runs over the
whole text so far, tokens $1 \ldots t$, and reads the logits at the last position. Done
naively, step $t$ pushes all $t$ tokens through every layer again, so writing $N$ tokens
costs $1 + 2 + \dots + N \approx N^2/2$ token-passes, almost all of them repeating work
done at the previous step. In a causal decoder that repetition is exact: token $u$'s
keys and values depend only on tokens $1 \ldots u$, so they are the same at every later
step. Keeping them, one key and one value vector per token, per layer and per head, is
the *KV cache*: each step then runs only the new token through the model, and its
attention reads the past from memory [@pope2022efficiently].

The price is memory. The cache holds
$2 \cdot \text{layers} \cdot \text{KV heads} \cdot d_\text{head} \cdot \text{tokens}
\cdot \text{bytes}$, and for a 7-billion-parameter model at its full context that is
2 GiB per sequence, read in full at every step. Multi-query attention
[@shazeer2019fast] and grouped-query attention [@ainslie2023gqa] shrink it by letting
several query heads share one key and value head.

This chapter builds a small GPT-like decoder [@radford2019language] whose attention has
`n_kv_heads` key–value heads for `n_heads` query heads: equal for multi-head attention,
a divisor for grouped-query, one for multi-query. Its cache is one preallocated tensor
per role, `[layers, batch, kv_heads, max_len, d_head]`; a forward pass writes the new
tokens at their positions and attends over everything written so far. The test checks
that cached decoding gives the logits of a full recomputation at every step, for all
three kinds, after a prompt of any length, fed in chunks of any size, and for a batch
of prompts of different lengths; that a grouped model equals a multi-head model whose
key and value heads are repeated; and that the cache's size is the formula's, byte for
byte, in float32 and bfloat16.

The demo generates 224 tokens after a 32-token prompt with and without the cache, and
draws the time per step and the bytes of each kind of cache. The two ways choose the
same tokens, from logits that agree to about $10^{-6}$ in float32, and on one CPU thread
the cache makes the generation 5 to 10 times faster. The dataflow diagram below is
declared by the lesson (`dataflow()`), not traced: it shows one generation, prefill
then decoding, with the shapes that pass between the steps.
"""

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from annotated.data import integer, torch_device
from annotated.figures import figure, save
from annotated.transformers.attention import scaled_dot_product_attention

# ## Why the past does not change
#
# Write $x_1, \ldots, x_t$ for the tokens and $h^{(\ell)}_u$ for position $u$'s hidden
# state after layer $\ell$. Layer $\ell$ computes, at every position, a query, a key and
# a value from the previous layer's state,
#
# $$
# q_u = W_Q h^{(\ell-1)}_u, \quad k_u = W_K h^{(\ell-1)}_u, \quad
# v_u = W_V h^{(\ell-1)}_u ,
# $$
#
# and the causal mask lets position $u$ attend only to positions $\le u$
# [@vaswani2017attention]. By induction over the layers, $h^{(\ell)}_u$, and so $k_u$
# and $v_u$, depend on $x_1, \ldots, x_u$ alone: appending token $t+1$ changes none of
# them. The one new thing step $t+1$ needs is the new token's own row,
#
# $$
# o_{t+1} = \sum_{u \le t+1} \mathrm{softmax}_u\!\left(
#   \frac{q_{t+1} \cdot k_u}{\sqrt{d_\text{head}}}\right) v_u ,
# $$
#
# which reads every earlier $k_u$ and $v_u$ but only produces one row. So the cache is
# not an approximation: the logits are the same numbers, up to the order in which
# floating-point sums are taken. The test checks this to 1e-12 in float64.
#
# ## The model's size, in one place
#
# The configuration follows nanoGPT's dataclass. The one field this chapter adds is
# `n_kv_heads`, the number of key–value heads:
#
# - `n_kv_heads == n_heads`: multi-head attention (MHA), each query head with its own
#   keys and values [@vaswani2017attention];
# - `n_kv_heads == 1`: multi-query attention (MQA), every query head reading one shared
#   key head and one shared value head [@shazeer2019fast];
# - anything between that divides `n_heads`: grouped-query attention (GQA), query heads
#   in `n_kv_heads` groups of `n_heads // n_kv_heads`, one key–value head per group
#   [@ainslie2023gqa].
#
# `max_len` bounds the positions the model knows (its learned position table has that
# many rows), and so the longest cache it can use.


@dataclass(frozen=True)
class Config:
    """A GPT-like decoder's hyperparameters; `n_kv_heads` picks MHA, GQA or MQA."""

    vocab_size: int = 256  # tokens the model reads and predicts
    max_len: int = 512  # positions: the longest text, prompt and generated
    n_layers: int = 4  # transformer blocks
    d_model: int = 256  # width of the residual stream
    n_heads: int = 8  # query heads; d_head = d_model // n_heads
    n_kv_heads: int = 8  # key–value heads: n_heads (MHA), a divisor (GQA), 1 (MQA)

    def __post_init__(self):
        for name in ("vocab_size", "max_len", "n_layers", "d_model", "n_heads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"Config: {name} must be a positive int")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"Config: d_model {self.d_model} must be divisible by n_heads "
                f"{self.n_heads}"
            )
        if (
            not isinstance(self.n_kv_heads, int)
            or self.n_kv_heads < 1
            or self.n_heads % self.n_kv_heads
        ):
            raise ValueError(
                f"Config: n_kv_heads must divide n_heads {self.n_heads} (n_heads for "
                f"MHA, 1 for MQA), got {self.n_kv_heads!r}"
            )

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


# ## The cache, preallocated
#
# The cache holds, for every layer, the keys and the values of every position seen so
# far. We allocate it once, at its full length, as two tensors `k` and `v` of shape
# `[layers, batch, kv_heads, max_len, d_head]`: the layout of Meta's reference Llama
# code, which keeps one `cache_k` and one `cache_v` per layer, shaped
# `[batch, max_len, kv_heads, d_head]` (the head axis after the positions there).
# A forward pass over $T$ new tokens that start at position `start` writes them into
# slots `start … start+T-1` of its layer and attends over slots `0 … start+T-1`: a
# view, not a copy. The simple alternative, `torch.cat` of the old keys with the new
# ones at every step, copies the whole cache each time, $O(t)$ bytes moved at step $t$
# and $O(N^2)$ over a generation, and asks the allocator for a new, larger block each
# step. (Hugging Face's default `DynamicCache` grows this way; its `StaticCache`
# preallocates, as here, and writes with `index_copy_`.) Preallocating moves only the
# new rows, and the memory a generation will need is known, and claimed, before it
# starts. The price is that a cache sized for 4096 tokens occupies 4096 tokens' worth
# of memory for a sequence that stops at 100: the waste that paged caches remove by
# allocating in small blocks [@kwon2023efficient].
#
# Writing past the end is an error, raised before anything is written. Without the
# check, several tokens past the end would fail inside PyTorch with a shape mismatch,
# and a single token, a decoding step, would fail silently: its `[..., 1, d_head]`
# broadcasts into the empty slice `max_len:max_len+1`, nothing is written, and the
# model attends to the old rows without the new token's own key.
#
# ### How big it is
#
# Each token stores one key and one value ($2$) of $d_\text{head}$ numbers for every
# key–value head of every layer, so
#
# $$
# \begin{aligned}
# \text{bytes} = 2 &\cdot \text{layers} \cdot \text{KV heads} \\
#   &\cdot d_\text{head} \cdot \text{tokens} \cdot \text{bytes per number}.
# \end{aligned}
# $$
#
# Worked for Llama 2 [@touvron2023llama2], in 16-bit numbers (2 bytes) at its context of
# 4096 tokens:
#
# - **Llama-2-7B** (32 layers, 32 heads of width 128, MHA): $2 \cdot 32 \cdot 32 \cdot
#   128 \cdot 2 = 524{,}288$ bytes, 512 KiB per token; times 4096 tokens,
#   $2^{31}$ bytes = **2 GiB per sequence**. Sixteen such sequences need 32 GiB, more
#   than the model's own 13.5 GB of weights.
# - **Llama-2-70B** (80 layers, 64 query heads of width 128, **8 KV heads**, GQA):
#   $2 \cdot 80 \cdot 8 \cdot 128 \cdot 2 = 327{,}680$ bytes, 320 KiB per token;
#   times 4096, **1.25 GiB per sequence**. With 64 KV heads, multi-head attention
#   would need 10 GiB: grouping the 64 query heads in 8 groups divides the cache by 8,
#   and a model ten times the 7B's size keeps a smaller cache per token.
#
# The test computes these numbers with `cache_bytes` and checks the formula against
# the bytes of real tensors (`numel() * element_size()`) for MHA, GQA and MQA in
# float32 and bfloat16.


def cache_bytes(
    n_layers: int, n_kv_heads: int, d_head: int, tokens: int, bytes_per_number: int
) -> int:
    r"""$2 \cdot \text{layers} \cdot \text{KV heads} \cdot d_\text{head} \cdot
    \text{tokens} \cdot \text{bytes}$: the size of one sequence's K and V cache."""
    return 2 * n_layers * n_kv_heads * d_head * tokens * bytes_per_number


class KVCache:
    """Preallocated keys and values of every layer: `k` and `v`, each `[layers, batch,
    kv_heads, max_len, d_head]`."""

    def __init__(
        self,
        n_layers: int,
        batch: int,
        n_kv_heads: int,
        max_len: int,
        d_head: int,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ):
        shape = (n_layers, batch, n_kv_heads, max_len, d_head)
        if any(not isinstance(size, int) or size < 1 for size in shape):
            raise ValueError(
                "KVCache: layers, batch, kv_heads, max_len and d_head must be positive "
                f"ints, got {shape}"
            )
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @classmethod
    def for_model(cls, model: "TinyGPT", batch: int, max_len: int) -> "KVCache":
        """An empty cache shaped for `model`, in its dtype and on its device."""
        config = model.config
        weight = model.token_embedding.weight
        return cls(
            config.n_layers,
            batch,
            config.n_kv_heads,
            max_len,
            config.d_head,
            weight.dtype,
            weight.device,
        )

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def nbytes(self) -> int:
        """Bytes held by the two tensors."""
        return self.k.numel() * self.k.element_size() * 2

    def write(
        self, layer: int, start: int, k: Tensor, v: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Store `k` and `v` (`[batch, kv_heads, T, d_head]`) at slots `start …
        start+T-1` of `layer`; return views of slots `0 … start+T-1`."""
        n_layers, batch, kv_heads, _, d_head = self.k.shape
        if (
            isinstance(layer, bool)
            or not isinstance(layer, int)
            or not 0 <= layer < n_layers  # -1 would write into the last layer
        ):
            raise ValueError(
                f"KVCache.write: layer must be an int in 0..{n_layers - 1}, got "
                f"{layer!r}"
            )
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(
                f"KVCache.write: start must be an int in 0..{self.max_len - 1} (the "
                f"first slot to write), got {start!r}"
            )
        for name, x in (("k", k), ("v", v)):
            if x.dim() != 4 or x.shape[:2] != (batch, kv_heads) or x.shape[3] != d_head:
                raise ValueError(
                    f"KVCache.write: {name} must be [batch, kv_heads, T, d_head] = "
                    f"[{batch}, {kv_heads}, T, {d_head}], got {tuple(x.shape)}"
                )
            if x.dtype != self.k.dtype:
                raise ValueError(
                    f"KVCache.write: {name} must be {self.k.dtype} like the cache, "
                    f"got {x.dtype}"
                )
        if v.shape != k.shape:
            raise ValueError(
                f"KVCache.write: k and v must have the same shape, got "
                f"{tuple(k.shape)} and {tuple(v.shape)}"
            )
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(
                f"KVCache: writing positions {start}…{end - 1} overflows the cache of "
                f"max_len {self.max_len}; allocate one with max_len ≥ {end}"
            )
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]  # [B, KVH, S, d]


# ## Grouped-query attention
#
# With $H$ query heads and $G$ key–value heads, query head $h$ reads key–value head
# $\lfloor h / (H/G) \rfloor$: heads $0 \ldots H/G-1$ share the first, and so on
# [@ainslie2023gqa]; `F.scaled_dot_product_attention(..., enable_gqa=True)` computes
# exactly this. The usual code (Llama's `repeat_kv`) repeats each key and value head
# $H/G$ times and runs ordinary multi-head attention. For a decoding
# step that is wasteful, because the step's work is reading the cache, and a repeat
# reads it once and writes it $H/G$ times. We instead *fold* each group's query heads
# into the rows of one matrix: queries `[batch, kv_heads, group·T, d_head]` against
# keys `[batch, kv_heads, S, d_head]`, an ordinary batched product per key–value head
# that reads each cached key once for all the queries of its group, and copies
# nothing. The mask gets the same rows, repeated once per head of the group.
#
# A tempting alternative, queries `[batch, kv_heads, group, T, d_head]` against keys
# with a group axis of size one, `[batch, kv_heads, 1, S, d_head]`, looks free but is
# not: `torch.matmul` implements broadcast batch axes by expanding the keys and
# reshaping them, which copies them. For one decoding step over a 1024-token cache
# (batch 4, 8 query heads on 2 KV heads, width 64) it took 3.1 ms against 0.45 ms for
# the folded rows in this page's benchmark, on one CPU thread (19 ms against 2.8 ms on
# a slower machine); the benchmark table times both against PyTorch's fused function.
#
# The arithmetic is the same in all three kinds: every query head still scores every
# key. What changes is the memory. The cache shrinks by $H/G$, and so does the traffic
# of a decoding step: one cached number (2 bytes in 16 bits) now serves $H/G$ query
# heads, one multiply–add each, so the attention of a decoding step does $H/G$ FLOPs
# per byte it reads. That is 1 for multi-head attention, where a GPU that can do
# hundreds of FLOPs per byte of memory bandwidth sits idle waiting for the cache
# [@shazeer2019fast; @pope2022efficiently]. Batching does not help here, as it does for
# the weights, because every sequence has its own cache.
#
# The layer reuses `scaled_dot_product_attention` from
# [the attention chapter](attention.md), which accepts any number of batch axes, and
# passes it an explicit mask, built once per forward pass by the model (next section).
# Each layer knows its index, to find its rows of the cache, as Hugging Face's layers
# know their `layer_idx`.


class GroupedQueryAttention(nn.Module):
    """Causal self-attention with `n_heads` query heads sharing `n_kv_heads` key and
    value heads; reads and extends the cache when given one."""

    def __init__(self, config: Config, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        self.n_heads, self.n_kv_heads = config.n_heads, config.n_kv_heads
        self.d_head = config.d_head
        kv_width = config.n_kv_heads * config.d_head
        self.query = nn.Linear(config.d_model, config.d_model)
        self.key = nn.Linear(config.d_model, kv_width)
        self.value = nn.Linear(config.d_model, kv_width)
        self.out = nn.Linear(config.d_model, config.d_model)

    def forward(
        self, x: Tensor, mask: Tensor, start: int = 0, cache: KVCache | None = None
    ) -> Tensor:
        """`x [batch, T, d_model]` at slots `start …`; `mask` is `[T, S]` or `[batch,
        1, T, S]` (True = may attend). Returns `[batch, T, d_model]`."""
        batch, length, _ = x.shape
        group = self.n_heads // self.n_kv_heads
        q = self.query(x).view(batch, length, self.n_kv_heads, group, self.d_head)
        q = q.permute(0, 2, 3, 1, 4).flatten(2, 3)  # [batch, kv_heads, group·T, d]
        k = self.key(x).view(batch, length, self.n_kv_heads, self.d_head)
        v = self.value(x).view(batch, length, self.n_kv_heads, self.d_head)
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # [batch, kv_heads, T, d_head]
        if cache is not None:
            k, v = cache.write(self.layer_index, start, k, v)  # [B, KVH, S, d_head]
        rows_mask = torch.cat([mask] * group, dim=-2)  # [..., group·T, S]
        heads, _ = scaled_dot_product_attention(q, k, v, rows_mask)  # [B,KVH,G·T,d]
        heads = heads.unflatten(2, (group, length))  # [batch, kv_heads, group, T, d]
        heads = heads.permute(0, 3, 1, 2, 4).reshape(batch, length, -1)  # [B, T, d]
        return self.out(heads)


# ## The mask, the positions, and prompts of different lengths
#
# The queries of a forward pass sit at slots `start … start+T-1` and the keys at slots
# `0 … start+T-1`. Key slot $u$ is allowed for query slot $t$ when $u \le t$. With the
# cache, there are fewer queries than keys, and this is the causal triangle anchored at
# the *bottom right*: the last query sees every key. PyTorch's `is_causal=True` anchors
# it at the top left and would let the one new token see only the first key, the
# pitfall [the attention chapter](attention.md) warns about, so the mask is built here
# from the slots themselves.
#
# A batch of prompts of different lengths is padded on the *left*, so that every
# sequence's last token sits in the same slot and all of them decode in step, writing
# one slot per step. Sequence $b$ with `left_pad[b]` padding tokens then has two more
# rules: its keys in slots below `left_pad[b]` are blocked for every query, and its
# position (the row of the position table it reads) is its slot minus `left_pad[b]`,
# so that its first real token is at position 0 exactly as if it were alone: the
# `attention_mask` and `position_ids` that Hugging Face's `generate` builds for
# left-padded batches. A padding query has no allowed key at all; the attention
# chapter's function returns a zero row for it instead of NaN, and its logits are
# never read.


def decoder_mask(
    start: int, length: int, left_pad: Tensor | None, device: torch.device
) -> tuple[Tensor, Tensor]:
    """The attention mask `[T, S]` or `[batch, 1, T, S]` (True = may attend) and the
    positions `[T]` or `[batch, T]` of `length` tokens written at slot `start`."""
    query_slots = torch.arange(start, start + length, device=device)  # [T]
    key_slots = torch.arange(start + length, device=device)  # [S]
    allowed = key_slots <= query_slots[:, None]  # [T, S]: bottom-right triangle
    if left_pad is None:
        return allowed, query_slots
    real_keys = key_slots >= left_pad[:, None]  # [batch, S]
    allowed = allowed & real_keys[:, None, :]  # [batch, T, S]
    positions = (query_slots - left_pad[:, None]).clamp(min=0)  # [batch, T]
    return allowed[:, None], positions  # [batch, 1, T, S]


# ## The decoder
#
# The rest is GPT-2's layout [@radford2019language]: token and learned position
# embeddings, blocks of pre-norm attention and a 4×-wide GELU MLP, each added to the
# residual stream, a final LayerNorm and a linear read-out to the vocabulary. The
# weights keep PyTorch's default initialisation, whose logits are far enough apart that
# greedy choices between near-ties are rare: the demo's model is untrained, and its
# tokens need only be the same with and without the cache.
#
# `forward(tokens, start, cache, left_pad)` serves every use. Without a cache it is the
# ordinary causal forward pass over a whole sequence. With one, it is *prefill* when
# `tokens` is the prompt (`start = 0`, $T = P$) and a *decoding step* when it is one
# token at `start = t` ($T = 1$); a prompt can also be fed in chunks, each starting
# where the last ended. The arguments are checked once, here, before any layer runs or
# any slot is written.


class Block(nn.Module):
    """Pre-norm transformer block: `x + attention(ln(x))`, then `x + mlp(ln(x))`."""

    def __init__(self, config: Config, layer_index: int):
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.d_model)
        self.attention = GroupedQueryAttention(config, layer_index)
        self.mlp_norm = nn.LayerNorm(config.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(config.d_model, 4 * config.d_model),
            nn.GELU(),
            nn.Linear(4 * config.d_model, config.d_model),
        )

    def forward(
        self, x: Tensor, mask: Tensor, start: int, cache: KVCache | None
    ) -> Tensor:
        x = x + self.attention(self.attention_norm(x), mask, start, cache)
        return x + self.mlp(self.mlp_norm(x))  # [batch, T, d_model]


class TinyGPT(nn.Module):
    """A GPT-like decoder whose attention has `config.n_kv_heads` key–value heads."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding = nn.Embedding(config.max_len, config.d_model)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.d_model)
        self.readout = nn.Linear(config.d_model, config.vocab_size, bias=False)

    def forward(
        self,
        tokens: Tensor,
        start: int = 0,
        cache: KVCache | None = None,
        left_pad: Tensor | None = None,
    ) -> Tensor:
        """Logits `[batch, T, vocab]` for `tokens [batch, T]` written at slots `start
        …`; `left_pad [batch]` counts each row's padding slots at the left."""
        check_forward_inputs(
            self.config, self.readout.weight, tokens, start, cache, left_pad
        )
        mask, positions = decoder_mask(start, tokens.shape[1], left_pad, tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        for block in self.blocks:
            x = block(x, mask, start, cache)  # [batch, T, d_model]
        return self.readout(self.final_norm(x))  # [batch, T, vocab]


# The checks: what would otherwise fail deep inside a layer (an embedding index out of
# range, a cache of the wrong shape or dtype meeting the keys in a matrix product) or
# silently compute something else (a forward pass at `start > 0` without a cache, whose
# tokens would attend to nothing before them; a position past the table). A cache
# that is merely too short is caught by `KVCache.write`, before the first layer writes.


def check_forward_inputs(
    config: Config,
    weight: Tensor,
    tokens: Tensor,
    start: int,
    cache: KVCache | None,
    left_pad: Tensor | None,
) -> None:
    """Raise naming the argument when `TinyGPT.forward` cannot run on these inputs."""
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.shape[1] == 0:
        raise ValueError(
            "TinyGPT: tokens must be a [batch, T] tensor with T ≥ 1, got "
            f"{getattr(tokens, 'shape', type(tokens))}"
        )
    if tokens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"TinyGPT: tokens must be int64 or int32, got {tokens.dtype}")
    if tokens.min() < 0 or tokens.max() >= config.vocab_size:
        raise ValueError(
            f"TinyGPT: tokens must lie in [0, vocab_size={config.vocab_size}), got "
            f"values from {int(tokens.min())} to {int(tokens.max())}"
        )
    batch, length = tokens.shape
    if not isinstance(start, int) or start < 0 or (cache is None and start != 0):
        raise ValueError(
            f"TinyGPT: start must be 0 without a cache, or an int ≥ 0 with one; got "
            f"{start!r} with{'out' if cache is None else ''} a cache"
        )
    if start + length > config.max_len:
        raise ValueError(
            f"TinyGPT: positions {start}…{start + length - 1} exceed the model's "
            f"max_len {config.max_len}"
        )
    if cache is not None:
        expected = (config.n_layers, batch, config.n_kv_heads, config.d_head)
        got = (*cache.k.shape[:3], cache.k.shape[4])
        if got != expected or cache.k.dtype != weight.dtype:
            raise ValueError(
                f"TinyGPT: cache must be [layers, batch, kv_heads, max_len, d_head] "
                f"with (layers, batch, kv_heads, d_head) = {expected} in "
                f"{weight.dtype}, got {tuple(cache.k.shape)} in {cache.k.dtype}"
            )
    if left_pad is not None and (
        not isinstance(left_pad, Tensor)
        or left_pad.shape != (batch,)
        or left_pad.dtype not in (torch.int32, torch.int64)
        or left_pad.min() < 0
        or left_pad.max() >= start + length
    ):
        raise ValueError(
            f"TinyGPT: left_pad must be an int tensor [batch] = [{batch}] of padding "
            f"counts below start + T = {start + length}, got "
            f"{getattr(left_pad, 'shape', left_pad)}"
        )


# ## Generation, with and without the cache
#
# Greedy decoding takes the most likely token at each step. With the cache, step 0 is
# the *prefill*: the whole prompt of $P$ tokens in one forward pass, which fills slots
# $0 \ldots P-1$ of every layer and yields the first new token. Each later step feeds
# only the token just chosen, at slot $P + i - 1$. The last token chosen is never fed,
# so $N$ new tokens need a cache of $P + N - 1$ slots, which is what `generate`
# allocates. Without the cache, step $i$ runs the model over all $P + i$ tokens.
#
# How much work does that save? A forward pass costs about $2 \times$ (parameters)
# FLOPs per token in its matrix products, so recomputing costs
# $\sum_{i<N} (P + i) \approx N (P + N/2)$ token-passes, and the cache
# $P + N - 1$ of them. For the demo's $P = 32$ and $N = 224$, that is 32,144 against
# 255: 126 times less arithmetic. The clock sees much less of it, because a cached
# step costs more than its arithmetic: a matrix–vector product for one token must
# still read every weight from memory, and each of the step's few hundred PyTorch
# operations has a fixed overhead (PyTorch's profiler puts most of a cached step of
# the demo's model in `addmm`, the linear layers). In the demo's runs on one CPU
# thread, a cached step took the same time at every length, while a recomputing step
# took 2 to 3 times as long at 40 tokens and 10 to 20 times as long at 250; the whole
# generation was 5 to 10 times faster with the cache. The larger the model and the
# longer the text, the more of a step is arithmetic, and the larger the ratio.
#
# `generate` returns the tokens, the logits they were chosen from (so that the two
# ways can be compared), the seconds each step took, and the cache.


@dataclass
class Generation:
    """What `generate` produced."""

    tokens: Tensor  # [batch, N]: the new tokens, prompt excluded
    logits: Tensor  # [batch, N, vocab]: the logits each new token was chosen from
    seconds: list[float]  # wall time of each of the N steps (step 0: the prompt)
    cache: KVCache | None  # the filled cache, None without one


@torch.no_grad()
def generate(
    model: TinyGPT,
    prompt: Tensor,
    new_tokens: int,
    use_cache: bool = True,
    left_pad: Tensor | None = None,
) -> Generation:
    """Greedy decoding of `new_tokens` tokens after `prompt [batch, P]` (left-padded
    rows: `left_pad [batch]`), with the KV cache or by recomputing every step."""
    if not isinstance(new_tokens, int) or new_tokens < 1:
        raise ValueError(f"generate: new_tokens must be an int ≥ 1, got {new_tokens!r}")
    prompt_len = prompt.shape[-1]
    if prompt_len + new_tokens - 1 > model.config.max_len:
        raise ValueError(
            f"generate: a prompt of {prompt_len} and {new_tokens} new tokens need "
            f"{prompt_len + new_tokens - 1} positions; the model has max_len "
            f"{model.config.max_len}"
        )
    cache = None
    if use_cache:
        cache = KVCache.for_model(model, prompt.shape[0], prompt_len + new_tokens - 1)
    text, chosen, seconds = prompt, [], []
    for step in range(new_tokens):
        began = time.perf_counter()
        if not use_cache:
            logits = model(text, 0, None, left_pad)[:, -1]  # [batch, vocab]
        elif step == 0:
            logits = model(prompt, 0, cache, left_pad)[:, -1]  # prefill
        else:
            fed = text[:, -1:]  # [batch, 1]: the token chosen at the last step
            logits = model(fed, prompt_len + step - 1, cache, left_pad)[:, -1]
        token = logits.argmax(dim=-1, keepdim=True)  # [batch, 1]
        text = torch.cat([text, token], dim=1)  # [batch, P + step + 1]
        if text.is_cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - began)
        chosen.append(logits)
    return Generation(text[:, prompt_len:], torch.stack(chosen, dim=1), seconds, cache)


# ## The declared example
#
# A two-layer model with four query heads in two groups (GQA), two prompts of five
# tokens, and four new tokens. Its dataflow diagram is declared, not traced: the model
# is called once per step with a different number of tokens, which a single `torch.fx`
# trace cannot show.


def example():
    """Generate 4 tokens after a [2, 5] prompt with a small GQA model and its cache."""
    torch.manual_seed(0)
    config = Config(
        vocab_size=32, max_len=16, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2
    )
    model = TinyGPT(config).eval()
    prompt = torch.randint(0, 32, (2, 5), generator=torch.Generator().manual_seed(1))
    return generate, (model, prompt, 4)


def dataflow(output: Generation) -> tuple[list, list]:
    """Prefill, the decoding steps, and the cache between them, with their shapes."""
    batch, new_tokens, vocab = output.logits.shape
    cache_shape = "[" + ", ".join(str(n) for n in output.cache.k.shape) + "]"
    prompt_len = output.cache.max_len - new_tokens + 1
    nodes = [
        ("prompt", f"prompt\n[{batch}, {prompt_len}]"),
        (
            "prefill",
            f"prefill: TinyGPT over {prompt_len} tokens,\nslots 0…{prompt_len - 1}",
        ),
        ("cache", f"KVCache k, v\n{cache_shape}"),
        ("argmax", "argmax of the last logits"),
        ("decode", f"decoding step: TinyGPT over 1 token\n× {new_tokens - 1}"),
        ("tokens", f"new tokens\n[{batch}, {new_tokens}]"),
    ]
    edges = [
        ("prompt", "prefill", f"[{batch}, {prompt_len}]"),
        ("prefill", "cache", "write K, V"),
        ("prefill", "argmax", f"[{batch}, {prompt_len}, {vocab}]"),
        ("argmax", "decode", f"[{batch}, 1]"),
        ("cache", "decode", "read slots 0…t"),
        ("decode", "cache", "write slot t"),
        ("decode", "argmax", f"[{batch}, 1, {vocab}]"),
        ("argmax", "tokens", f"[{batch}, 1] per step"),
    ]
    return nodes, edges


# ## The demo
#
# Three models that differ only in `n_kv_heads` (8, 2 and 1 for 8 query heads), each
# generating 224 tokens after a random 32-token prompt, once with the cache and once
# recomputing. It checks that the two ways choose the same tokens from logits equal to
# float32 rounding, times every step, and allocates caches of growing length to draw
# their bytes against the formula.


def plot(
    runs: dict[str, dict[str, Generation]],
    prompt_len: int,
    byte_counts: dict[str, list[tuple[int, int, int]]],
    out: Path,
    caption: str,
) -> Path:
    """Time per step, total time, and cache bytes against the number of tokens."""
    fig, (per_step, total, memory) = figure(panels=3)
    colours = {"MHA": "tab:blue", "GQA": "tab:orange", "MQA": "tab:green"}
    window = 15  # steps in the running median that smooths the per-step times
    for kind, both in runs.items():
        for way, style in (("cache", "-"), ("recompute", "--")):
            seconds = torch.tensor(both[way].seconds)  # [N]; step 0 is the prompt
            length = torch.arange(len(seconds)) + prompt_len  # tokens the step reads
            median = seconds[1:].unfold(0, window, 1).median(dim=1).values
            per_step.plot(
                length[1 + window // 2 : len(seconds) - window // 2],
                1e3 * median,
                style,
                color=colours[kind],
            )
            total.plot(
                length - prompt_len + 1,
                seconds.cumsum(0),
                style,
                color=colours[kind],
                label=f"{kind}, {way}",
            )
    per_step.set_xlabel("tokens in the text")
    per_step.set_ylabel(f"time per step (ms), median of {window}")
    per_step.set_title("one decoding step")
    total.set_xlabel("tokens generated $N$")
    total.set_ylabel("total time (s)")
    total.set_title("a whole generation")
    total.legend(ncols=2)
    for kind, points in byte_counts.items():
        tokens, measured, formula = zip(*points)
        memory.plot(tokens, [b / 2**20 for b in formula], color=colours[kind])
        memory.plot(
            tokens,
            [b / 2**20 for b in measured],
            "o",
            color=colours[kind],
            label=kind,
        )
    memory.set_xlabel("tokens cached")
    memory.set_ylabel("cache size (MiB)")
    memory.set_title("cache bytes, one sequence: measured (dots), formula (lines)")
    memory.legend()
    return save(fig, out / "kv_cache.png", caption=caption)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Generate with and without the cache for MHA, GQA and MQA; time it and draw."""
    parser = argparse.ArgumentParser(
        description="Greedy generation with and without a KV cache, for multi-head, "
        "grouped-query and multi-query attention.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--prompt-len", type=integer(at_least=1), default=32, help="prompt tokens"
    )
    parser.add_argument(
        "--new-tokens", type=integer(at_least=2), default=224, help="tokens to generate"
    )
    parser.add_argument(
        "--batch",
        type=integer(at_least=1),
        default=1,
        help="sequences generated at once",
    )
    parser.add_argument(
        "--layers", type=integer(at_least=1), default=4, help="transformer blocks"
    )
    parser.add_argument(
        "--d-model", type=integer(at_least=1), default=256, help="residual width"
    )
    parser.add_argument(
        "--heads", type=integer(at_least=1), default=8, help="query heads"
    )
    parser.add_argument(
        "--gqa-kv-heads",
        type=integer(at_least=1),
        default=2,
        help="KV heads of the GQA model",
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--threads",
        type=integer(at_least=1),
        default=1,
        help="CPU threads for torch (small matrices)",
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to generate on",
    )
    parser.add_argument("--out", default="out/kv_cache", help="folder for the figures")
    args = parser.parse_args(argv)
    out = Path(args.out)
    torch.set_num_threads(args.threads)
    kinds = {"MHA": args.heads, "GQA": args.gqa_kv_heads, "MQA": 1}
    generator = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(0, 256, (args.batch, args.prompt_len), generator=generator)
    prompt = prompt.to(args.device)

    models = {}
    for kind, kv_heads in kinds.items():
        torch.manual_seed(args.seed)
        config = Config(
            vocab_size=256,
            max_len=args.prompt_len + args.new_tokens,
            n_layers=args.layers,
            d_model=args.d_model,
            n_heads=args.heads,
            n_kv_heads=kv_heads,
        )
        models[kind] = TinyGPT(config).to(args.device).eval()
    runs = {kind: {} for kind in kinds}
    jobs = [(kind, way) for kind in kinds for way in ("cache", "recompute")]
    for kind, way in tqdm(jobs, desc="generating"):
        use_cache = way == "cache"
        generate(models[kind], prompt, 2, use_cache)  # warm-up: first calls allocate
        runs[kind][way] = generate(models[kind], prompt, args.new_tokens, use_cache)
    byte_counts, speedups, gap, agree = {}, {}, 0.0, True
    for kind, both in runs.items():
        cached, recomputed = both["cache"], both["recompute"]
        gap = max(gap, (cached.logits - recomputed.logits).abs().max().item())
        agree = agree and torch.equal(cached.tokens, recomputed.tokens)
        config = models[kind].config
        number_bytes = cached.cache.k.element_size()
        every = max(1, config.max_len // 8)
        byte_counts[kind] = [
            (
                n,
                KVCache.for_model(models[kind], 1, n).nbytes(),  # measured
                cache_bytes(
                    config.n_layers, config.n_kv_heads, config.d_head, n, number_bytes
                ),
            )
            for n in range(every, config.max_len + 1, every)
        ]
        speedup = sum(recomputed.seconds) / sum(cached.seconds)
        speedups[kind] = speedup
        print(
            f"{kind} ({config.n_kv_heads} KV heads): {sum(cached.seconds):.2f} s with "
            f"the cache, {sum(recomputed.seconds):.2f} s recomputing: {speedup:.1f}× "
            f"faster; cache {cached.cache.nbytes() / 2**20:.2f} MiB for "
            f"{args.batch} × {cached.cache.max_len} tokens"
        )
    print(
        f"cached vs recomputed logits: max difference {gap:.1e}; "
        f"same tokens: {'yes' if agree else 'NO'}"
    )
    mha_tokens, mha_bytes, _ = byte_counts["MHA"][-1]
    caption = (
        f"Greedy generation of {args.new_tokens} tokens after a "
        f"{args.prompt_len}-token prompt by three untrained {args.layers}-layer "
        "models that differ only in their KV heads. "
        "Left: each decoding step's time against the length of the text; recomputing "
        "grows with it, the cached step stays flat. Middle: total time against tokens "
        f"generated; the cache is {speedups['MHA']:.0f}× faster at the end. "
        "Right: the cache's bytes per sequence, measured from its tensors: MQA's is "
        f"{args.heads}× and GQA's {args.heads // args.gqa_kv_heads}× smaller than "
        f"MHA's ({mha_bytes / 2**20:.2f} MiB at {mha_tokens} tokens); the lines are "
        "the formula."
    )
    plot(runs, args.prompt_len, byte_counts, out, caption)
    return {
        "speedup_mha": speedups["MHA"],
        "speedup_gqa": speedups["GQA"],
        "speedup_mqa": speedups["MQA"],
        "max_logit_gap": gap,
        "tokens_agree": float(agree),
    }


if __name__ == "__main__":
    main()

# ## Exercises
#
# 1. Replace the learned positions with rotary embeddings (RoPE), as Llama does. Should
#    the cache store keys before or after the rotation, and what would the other
#    choice cost at every decoding step?
# 2. Mistral attends only to the last $W$ tokens. Turn the cache into a ring buffer of
#    $W$ slots, written at `position % W`, and check its logits against a full
#    recomputation with a banded mask. How does the cache's size now depend on the
#    generated length?
# 3. Store the cache in int8 with one float scale per token and head, dequantising on
#    read. Measure the largest logit change on the demo's models, and compare the
#    bytes with the formula for 1-byte numbers.
# 4. Grouped-query checkpoints can be made from multi-head ones by mean-pooling each
#    group's key and value heads [@ainslie2023gqa]. Do it for the demo's MHA model
#    with 2 groups and measure how far its logits move. Why is the model after
#    pooling not the test's "MHA with repeated heads"?
