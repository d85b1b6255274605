r"""
---
title: A paged KV cache
summary: >-
  The KV cache cut into fixed-size blocks and handed out by an allocator, as in
  vLLM's PagedAttention: block tables, shared prefixes with copy-on-write, attention
  over scattered blocks, and a GPT-2 forward that batches prefills and decoding steps
  of many sequences; its logits equal GPT-2's full forward to 1e-10, and it wastes a
  few percent of the cache where a preallocated one wastes most of it.
time: 5 s
references:
  - key: kwon2023efficient
    authors: [Woosuk Kwon, Zhuohan Li, Siyuan Zhuang, Ying Sheng, Lianmin Zheng,
      Cody Hao Yu, Joseph E. Gonzalez, Hao Zhang, Ion Stoica]
    title: >-
      Efficient Memory Management for Large Language Model Serving with
      PagedAttention
    year: 2023
    venue: SOSP 2023
    arxiv: "2309.06180"
  - key: yu2022orca
    authors: [Gyeong-In Yu, Joo Seong Jeong, Geon-Woo Kim, Soojeong Kim,
      Byung-Gon Chun]
    title: "Orca: A Distributed Serving System for Transformer-Based Generative Models"
    year: 2022
    venue: OSDI 2022
    url: https://www.usenix.org/conference/osdi22/presentation/yu
  - key: radford2019language
    authors: [Alec Radford, Jeffrey Wu, Rewon Child, David Luan, Dario Amodei,
      Ilya Sutskever]
    title: Language Models are Unsupervised Multitask Learners
    year: 2019
    venue: OpenAI technical report
    url: https://cdn.openai.com/better-language-models/language_models_are_unsupervised_multitask_learners.pdf
worksheet:
  - region: PagedKVCache.reserve
    hint: >-
      Refuse with OutOfBlocks if blocks_needed exceeds the free count; if the last
      block is partly filled and shared, copy it to a fresh block (copy-on-write);
      append blocks until the table holds length + new tokens; return each new
      token's slot, table[t // block_size] * block_size + t % block_size.
    tests:
      - test_cache_holds_the_keys_and_values_of_a_full_pass
      - test_fork_and_copy_on_write_keep_the_parent_intact
  - region: paged_attention
    hint: >-
      Gather each sequence's blocks through its table and flatten them into [batch,
      S, heads, d] keys and values; a slot t is visible to the query at position p
      when t <= p and t < the context length; run scaled_dot_product_attention with
      heads second and that mask, and transpose back.
    tests:
      - test_paged_attention_equals_contiguous_cache_attention
      - test_prefill_then_decode_matches_full_forward_at_every_step
---

The [KV-cache chapter](../transformers/kv_cache.md) kept each sequence's keys and
values in one preallocated tensor of `max_len` slots. A server that answers many users
at once cannot afford that. It does not know how long an answer will be, so it must
reserve the model's whole context for every request, and most of it stays empty: the
vLLM paper measured that earlier serving systems used only 20 to 38 % of their KV-cache
memory for tokens [@kwon2023efficient]. The memory that sits reserved and unused is
memory that could have held more sequences, and the number of sequences decoded
together is what a server's throughput is made of.

PagedAttention borrows the answer of operating systems to the same problem: virtual
memory in pages. The cache is one pool of *blocks* of `block_size` token slots each.
A sequence owns a *block table*, the list of its blocks in order, and gets a new block
only when its last one is full, so it wastes at most `block_size - 1` slots. Blocks
need not be adjacent, so attention gathers a sequence's keys through its table. And
two sequences may point to the same block: a prompt shared by several samples is
stored once, and copied only when one of them writes into a shared, partly filled
block (*copy-on-write*).

This chapter builds the three pieces: the allocator (a free list and reference
counts), the cache (block tables over two tensors of blocks), and a forward pass of
the [GPT-2](../llm/gpt2.md) that reads and writes through them for a batch of
sequences, each bringing any number of new tokens (a prompt to prefill, or one token
to decode): the step that the [inference engine](engine.md) batches continuously
[@yu2022orca]. The test checks that its logits equal GPT-2's full forward and the
attention of a contiguous cache to 1e-10 in float64, at odd lengths that cross block
boundaries, and that forks, copy-on-write and frees leave every reference count where
it belongs. The demo decodes with the pretrained small GPT through the paged cache,
and measures the memory a preallocated cache and a paged one reserve for sequence
lengths drawn like real conversations: about 79 % wasted against under 2 %.
"""

import argparse
import math
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from annotated.data import integer, torch_device
from annotated.figures import figure, save
from annotated.llm.gpt2 import GPT2, GPT2Config, generate
from annotated.llm.pretraining import small_gpt

# ## The allocator
#
# The pool has `num_blocks` blocks, numbered $0 \ldots$ `num_blocks`$-1$; a block is
# only a number here, and the tensors that hold its keys and values come below. The
# allocator keeps two things:
#
# - a **free list** of the blocks nobody uses. An `OrderedDict` serves as a queue
#   that can also remove from its middle in $O(1)$, which the
#   [engine's prefix cache](engine.md) needs when it takes back a freed block that
#   still holds a known prefix;
# - a **reference count** per block: how many block tables point to it. `allocate`
#   hands out a free block with count 1, `share` adds a reader, `free` removes one,
#   and a block returns to the free list when its count reaches zero.
#
# Two errors matter to the code above it. Running out of blocks is not a bug but a
# normal event in a busy server: the engine catches `OutOfBlocks` and preempts a
# sequence. Freeing a block whose count is already zero *is* a bug (a double free),
# and it would hand the same block to two sequences later, each overwriting the
# other's keys; it raises `ValueError` at once.


class OutOfBlocks(RuntimeError):
    """The pool has fewer free blocks than a request needs; nothing was changed."""


class BlockAllocator:
    """`num_blocks` blocks of `block_size` slots: a free list and reference counts."""

    def __init__(self, num_blocks: int, block_size: int):
        for name, value in (("num_blocks", num_blocks), ("block_size", block_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.free_blocks = OrderedDict.fromkeys(range(num_blocks))  # oldest first
        self.refcounts = [0] * num_blocks

    @property
    def num_free(self) -> int:
        return len(self.free_blocks)

    def allocate(self) -> int:
        """A free block, now with one reference; `OutOfBlocks` if none is left."""
        if not self.free_blocks:
            raise OutOfBlocks(f"all {self.num_blocks} blocks are in use")
        block, _ = self.free_blocks.popitem(last=False)
        self.refcounts[block] = 1
        return block

    def share(self, block: int) -> None:
        """One more block table points to `block`."""
        if self.refcounts[block] < 1:
            raise ValueError(f"block {block} is free; only a used block can be shared")
        self.refcounts[block] += 1

    def free(self, block: int) -> None:
        """One block table fewer points to `block`; at zero it is free again."""
        if not 0 <= block < self.num_blocks:
            raise ValueError(f"block must be in [0, {self.num_blocks}), got {block}")
        if self.refcounts[block] < 1:
            raise ValueError(f"double free: block {block} is already free")
        self.refcounts[block] -= 1
        if self.refcounts[block] == 0:
            self.free_blocks[block] = None  # the newest free block goes last


# ## The cache: blocks and block tables
#
# The keys live in one tensor `[n_layer, num_blocks, block_size, n_head, head_dim]`,
# the values in another of the same shape, vLLM's layout up to the order of the last
# axes. Token $t$ of a sequence whose table is $(b_0, b_1, \ldots)$ sits in block
# $b_{\lfloor t / B \rfloor}$ at offset $t \bmod B$, where $B$ is the block size; as a
# single *slot* number into the pool seen as `num_blocks · block_size` rows,
#
# $$
# \mathrm{slot}(t) = B \cdot b_{\lfloor t/B \rfloor} + (t \bmod B).
# $$
#
# `reserve(seq, n)` makes room for `n` more tokens and returns their slots. It counts
# first what it needs, new blocks for the tokens past the last block's end plus one
# for a copy if the last block is shared, and raises `OutOfBlocks` before changing
# anything when the pool is short: a half-grown table would otherwise be left behind.
#
# `fork(parent, child)` gives a new sequence the parent's blocks, each shared, as
# parallel sampling or beam search does with a prompt. Both then append to the same
# last block, and the first to do so would overwrite the other's next token: so
# `reserve` copies a shared, partly filled last block into a fresh one first
# (copy-on-write), for every layer, and drops its reference to the original. A full
# shared block needs no copy, since nobody writes into it again.


class PagedKVCache:
    """Keys and values in blocks, `k` and `v` each `[n_layer, num_blocks, block_size,
    n_head, head_dim]`, with a block table and a length per sequence."""

    def __init__(
        self,
        n_layer: int,
        n_head: int,
        head_dim: int,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        allocator: BlockAllocator | None = None,
    ):
        self.allocator = allocator or BlockAllocator(num_blocks, block_size)
        if (self.allocator.num_blocks, self.allocator.block_size) != (
            num_blocks,
            block_size,
        ):
            raise ValueError("allocator: its num_blocks and block_size must match")
        shape = (n_layer, num_blocks, block_size, n_head, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.tables: dict[int, list[int]] = {}  # sequence id → its blocks, in order
        self.lengths: dict[int, int] = {}  # sequence id → tokens stored

    @classmethod
    def for_model(
        cls, model: GPT2, num_blocks: int, block_size: int, **kwargs
    ) -> "PagedKVCache":
        """An empty cache shaped for `model`, in its dtype and on its device."""
        config, weight = model.config, model.wte.weight
        kwargs = {"dtype": weight.dtype, "device": weight.device} | kwargs
        head_dim = config.n_embd // config.n_head
        return cls(
            config.n_layer, config.n_head, head_dim, num_blocks, block_size, **kwargs
        )

    @property
    def block_size(self) -> int:
        return self.allocator.block_size

    def add(self, seq: int) -> None:
        """Start an empty sequence `seq`."""
        if seq in self.tables:
            raise ValueError(f"seq: sequence {seq} is already in the cache")
        self.tables[seq], self.lengths[seq] = [], 0

    def check(self, seq: int) -> None:
        if seq not in self.tables:
            raise ValueError(f"seq: no sequence {seq} in the cache; add() it first")

    def blocks_needed(self, seq: int, new: int) -> int:
        """Free blocks `reserve(seq, new)` would take, the copy-on-write one
        included."""
        self.check(seq)
        length, table = self.lengths[seq], self.tables[seq]
        grow = -(-(length + new) // self.block_size) - len(table)  # ceil division
        shared_tail = length % self.block_size and self.shared(table[-1])
        return grow + int(bool(new and shared_tail))

    def shared(self, block: int) -> bool:
        return self.allocator.refcounts[block] > 1

    def reserve(self, seq: int, new: int) -> Tensor:
        """Room for `new` more tokens of `seq`: their slots `[new]` in the pool."""
        needed = self.blocks_needed(seq, new)
        if needed > self.allocator.num_free:
            raise OutOfBlocks(
                f"sequence {seq} needs {needed} blocks for {new} tokens, "
                f"{self.allocator.num_free} are free"
            )
        table, length = self.tables[seq], self.lengths[seq]
        if new and length % self.block_size and self.shared(table[-1]):
            copy = self.allocator.allocate()  # copy-on-write
            self.k[:, copy] = self.k[:, table[-1]]
            self.v[:, copy] = self.v[:, table[-1]]
            self.allocator.free(table[-1])
            table[-1] = copy
        while len(table) * self.block_size < length + new:
            table.append(self.allocator.allocate())
        self.lengths[seq] = length + new
        size = self.block_size
        return torch.tensor(  # [new]
            [table[t // size] * size + t % size for t in range(length, length + new)],
            dtype=torch.long,
        )

    def fork(self, parent: int, child: int) -> None:
        """A new sequence `child` that shares every block of `parent`."""
        self.check(parent)
        self.add(child)
        for block in self.tables[parent]:
            self.allocator.share(block)
        self.tables[child] = list(self.tables[parent])
        self.lengths[child] = self.lengths[parent]

    def free(self, seq: int) -> None:
        """Drop `seq`, releasing its references to its blocks."""
        self.check(seq)
        for block in self.tables.pop(seq):
            self.allocator.free(block)
        del self.lengths[seq]

    def block_tables(self, seqs: list[int]) -> Tensor:
        """The tables of `seqs`, padded with block 0 to the longest: `[len(seqs),
        max blocks]`."""
        width = max(len(self.tables[s]) for s in seqs)
        rows = [self.tables[s] + [0] * (width - len(self.tables[s])) for s in seqs]
        return torch.tensor(rows, dtype=torch.long, device=self.k.device)


# ## Attention over scattered blocks
#
# A query at position $p$ of a sequence with block table $(b_0, b_1, \ldots)$ and
# length $L$ attends to the keys of positions $0 \ldots p$, wherever they sit:
#
# $$
# o_p = \sum_{t \le p} \mathrm{softmax}_t\!\left(
#   \frac{q_p \cdot k_{\mathrm{slot}(t)}}{\sqrt{d_\text{head}}}\right)
#   v_{\mathrm{slot}(t)} .
# $$
#
# Here the gather is one indexing of the block tensor by the padded tables, giving
# each sequence its blocks side by side, `[batch, blocks · block_size, heads, d]`,
# and the mask does the rest: slot $t$ is visible to the query at position $p$ when
# $t \le p$ (causality, which also hides the tokens of a prefill after $p$) and
# $t < L$ (the rest of the last block, and the padding block 0 of shorter tables,
# hold stale numbers from whoever used them before). vLLM's CUDA kernel does the same
# without the gather: each thread block walks a sequence's table and reads the blocks
# in place, so no contiguous copy of the cache is ever made. The arithmetic is the
# same, and so are the numbers the test compares.


def paged_attention(
    queries: Tensor,
    k_blocks: Tensor,
    v_blocks: Tensor,
    block_tables: Tensor,
    context_lens: Tensor,
    query_positions: Tensor,
) -> Tensor:
    """Causal attention of `queries [batch, Q, heads, d]` at `query_positions
    [batch, Q]` over one layer's `k_blocks, v_blocks [num_blocks, block_size,
    heads, d]`, read through `block_tables [batch, blocks]` up to `context_lens
    [batch]`. Returns `[batch, Q, heads, d]`."""
    keys = k_blocks[block_tables].flatten(1, 2)  # [batch, S, heads, d]
    values = v_blocks[block_tables].flatten(1, 2)  # [batch, S, heads, d]
    slot = torch.arange(keys.shape[1], device=keys.device)  # [S]
    visible = (slot <= query_positions[..., None]) & (
        slot < context_lens[:, None, None]
    )  # [batch, Q, S]
    out = F.scaled_dot_product_attention(
        queries.transpose(1, 2),  # [batch, heads, Q, d]
        keys.transpose(1, 2),  # [batch, heads, S, d]
        values.transpose(1, 2),
        attn_mask=visible[:, None],  # [batch, 1, Q, S]
    )
    return out.transpose(1, 2)  # [batch, Q, heads, d]


# ## GPT-2 through the paged cache
#
# `paged_forward` runs the GPT-2 of the [GPT-2 chapter](../llm/gpt2.md), with its own
# modules and weights, over a batch of sequences that each bring some new tokens: a
# whole prompt (prefill), one token (a decoding step), or anything between. It lays
# the new tokens of all sequences end to end in one flat row of $T$ tokens, as vLLM
# does, so that the per-token layers (LayerNorms, the `c_attn` projection, `c_proj`,
# the MLP) run once over all of them with no padding. Only attention needs to know
# which token belongs to whom: for it, the queries are scattered into a padded
# `[batch, Q, heads, d]`, with the longest sequence's $Q$ new tokens, and gathered
# back afterwards (`query_layout` computes where each goes). The decoding steps and
# the prefills are two such calls, as vLLM runs them with two kernels: padding a
# batch of one-token queries to a prompt's length would multiply their attention
# work by that length.
#
# Positions come from the cache: a sequence holding $L$ tokens gets positions
# $L, L+1, \ldots$ for its new ones, the rows of GPT-2's learned position table
# [@radford2019language]. Each layer writes its new keys and values into their slots
# *before* attending, so that a token sees itself, and the prefill's tokens see each
# other. The result is the logits of each sequence's last new token, the only ones
# a server samples from.
#
# Everything is checked before anything is written: sequences present and distinct,
# token ids in the vocabulary, positions within the context, and enough free blocks
# for all the sequences together.


class QueryLayout(NamedTuple):
    """Where a group of sequences' new tokens go in a padded attention call."""

    tokens: Tensor  # [t]: the group's tokens' indices in the flat row
    query_index: Tensor  # [batch, Q]: the flat index of each padded query
    valid: Tensor  # [batch, Q]: False where a query is padding
    positions: Tensor  # [batch, Q]: each query's position in its sequence
    context_lens: Tensor  # [batch]: tokens in the cache once the new ones are in
    tables: Tensor  # [batch, blocks]: the padded block tables


def query_layout(
    cache: PagedKVCache,
    seqs: list[int],
    starts: list[int],
    offsets: list[int],
    counts: list[int],
) -> QueryLayout:
    """The padded layout of sequences `seqs`, whose `counts` new tokens start at
    position `starts` and at index `offsets` of the flat row."""
    device = cache.k.device
    column = torch.arange(max(counts))  # [Q]
    valid = column < torch.tensor(counts)[:, None]  # [batch, Q]
    query_index = torch.where(valid, torch.tensor(offsets)[:, None] + column, 0)
    return QueryLayout(
        query_index[valid].to(device),
        query_index.to(device),
        valid.to(device),
        (torch.tensor(starts)[:, None] + column).to(device),
        torch.tensor([s + n for s, n in zip(starts, counts)], device=device),
        cache.block_tables(seqs),
    )


@torch.no_grad()
def paged_forward(
    model: GPT2, cache: PagedKVCache, seqs: list[int], tokens: list[list[int]]
) -> Tensor:
    """Append `tokens[i]` to sequence `seqs[i]` in `cache` through `model` (in eval
    mode); return the logits of each sequence's last new token, `[len(seqs),
    vocab]`."""
    config = model.config
    check_batch(config, cache, seqs, tokens)
    needed = sum(cache.blocks_needed(s, len(t)) for s, t in zip(seqs, tokens))
    if needed > cache.allocator.num_free:
        raise OutOfBlocks(
            f"the batch needs {needed} blocks, {cache.allocator.num_free} are free"
        )
    device = cache.k.device
    starts = [cache.lengths[s] for s in seqs]
    counts = [len(t) for t in tokens]
    offsets = [sum(counts[:i]) for i in range(len(counts))]
    slots = torch.cat([cache.reserve(s, n) for s, n in zip(seqs, counts)]).to(device)
    flat = torch.tensor([i for t in tokens for i in t], device=device)  # [T]
    positions = torch.cat([torch.arange(s, s + n) for s, n in zip(starts, counts)])
    groups = []
    for rows in (
        [i for i, n in enumerate(counts) if n == 1],  # decoding steps
        [i for i, n in enumerate(counts) if n > 1],  # prefills
    ):
        if rows:
            picked = [
                [values[i] for i in rows] for values in (seqs, starts, offsets, counts)
            ]
            groups.append(query_layout(cache, *picked))
    heads, width = config.n_head, config.n_embd
    head_shape = (len(flat), heads, width // heads)
    x = model.wte(flat) + model.wpe(positions.to(device))  # [T, d]
    for layer, block in enumerate(model.h):
        q, k, v = block.attn.c_attn(block.ln_1(x)).split(width, dim=-1)  # [T, d]
        cache.k[layer].flatten(0, 1)[slots] = k.view(head_shape)  # into the pool
        cache.v[layer].flatten(0, 1)[slots] = v.view(head_shape)
        q = q.view(head_shape)  # [T, heads, d_head]
        attended = torch.empty_like(q)  # [T, heads, d_head]
        for group in groups:
            attended[group.tokens] = paged_attention(
                q[group.query_index],  # [batch, Q, heads, d_head]
                cache.k[layer],
                cache.v[layer],
                group.tables,
                group.context_lens,
                group.positions,
            )[group.valid]  # [t, heads, d_head], back in the flat order
        x = x + block.attn.c_proj(attended.view(len(flat), width))  # [T, d]
        x = x + block.mlp(block.ln_2(x))  # [T, d]
    last = torch.tensor([o + n - 1 for o, n in zip(offsets, counts)], device=device)
    return F.linear(model.ln_f(x[last]), model.wte.weight)  # [batch, vocab]


def check_batch(
    config: GPT2Config, cache: PagedKVCache, seqs: list[int], tokens: list[list[int]]
) -> None:
    """Raise `ValueError` naming what is wrong with a batch for `paged_forward`."""
    if len(seqs) != len(tokens) or not seqs:
        raise ValueError(
            f"seqs and tokens must be non-empty lists of equal length, got "
            f"{len(seqs)} and {len(tokens)}"
        )
    if len(set(seqs)) != len(seqs):
        raise ValueError(f"seqs must be distinct, got {seqs}")
    for seq, new in zip(seqs, tokens):
        cache.check(seq)
        if not new:
            raise ValueError(f"tokens: sequence {seq} brings no new token")
        if not all(isinstance(i, int) and 0 <= i < config.vocab_size for i in new):
            raise ValueError(
                f"tokens: sequence {seq} holds ids outside [0, {config.vocab_size})"
            )
        if cache.lengths[seq] + len(new) > config.n_positions:
            raise ValueError(
                f"tokens: sequence {seq} would reach {cache.lengths[seq] + len(new)} "
                f"positions; the model's n_positions is {config.n_positions}"
            )


# ## Generating through the cache
#
# Greedy decoding of a batch of prompts is now a loop: one `paged_forward` that
# prefills every prompt, then one per step that feeds each sequence the token it
# just chose. Every sequence keeps its own length, so prompts of different lengths
# need no padding, and a sequence whose blocks run out would stop alone: the
# [engine](engine.md) builds its scheduler on exactly that.


def paged_generate(
    model: GPT2, cache: PagedKVCache, prompts: list[list[int]], new_tokens: int
) -> list[list[int]]:
    """Greedy continuations of `new_tokens` tokens for each of `prompts`, decoded
    together through `cache`; the sequences are freed at the end."""
    seqs = [max(cache.tables, default=-1) + 1 + i for i in range(len(prompts))]
    for seq in seqs:
        cache.add(seq)
    outputs, fed = [[] for _ in prompts], prompts
    try:
        for _ in range(new_tokens):
            logits = paged_forward(model, cache, seqs, fed)  # [batch, vocab]
            chosen = logits.argmax(dim=-1).tolist()
            for output, token in zip(outputs, chosen):
                output.append(token)
            fed = [[token] for token in chosen]
    finally:
        for seq in seqs:
            cache.free(seq)
    return outputs


# ## How much memory each cache wastes
#
# A cache that preallocates `max_len` slots per sequence reserves
# `batch · max_len` slots for $\sum_i L_i$ tokens; a paged cache reserves
# $\sum_i B \lceil L_i / B \rceil$, so it wastes less than one block per sequence:
#
# $$
# \text{waste}_\text{paged} < \frac{B \cdot \text{batch}}{\sum_i L_i} ,
# \qquad
# \text{waste}_\text{prealloc} = 1 - \frac{\sum_i L_i}{\text{batch} \cdot
#   \text{max\_len}} .
# $$
#
# `memory_waste` does not evaluate these formulas: it reserves every sequence's
# tokens through `PagedKVCache.reserve`, in a prefill of its first half and decoding
# steps of 16 tokens after that, and counts the blocks the allocator has handed out.
# (The tensors' width does not enter the count, so the measurement uses a cache of
# one layer, one head and one number per slot.)


def memory_waste(lengths: list[int], max_len: int, block_size: int) -> dict:
    """The fraction of reserved slots that hold no token, for a preallocated cache
    of `max_len` slots per sequence and for a paged cache of `block_size`."""
    if max(lengths) > max_len or min(lengths) < 1:
        raise ValueError(f"lengths must be in [1, max_len = {max_len}]")
    blocks = sum(-(-length // block_size) for length in lengths)
    cache = PagedKVCache(1, 1, 1, blocks, block_size)
    for seq, length in enumerate(lengths):
        cache.add(seq)
        cache.reserve(seq, length // 2)
        while cache.lengths[seq] < length:
            cache.reserve(seq, min(16, length - cache.lengths[seq]))
    used = sum(lengths)
    paged_slots = (cache.allocator.num_blocks - cache.allocator.num_free) * block_size
    preallocated_slots = len(lengths) * max_len
    return {
        "tokens": used,
        "paged_reserved": paged_slots,
        "preallocated_reserved": preallocated_slots,
        "paged_waste": 1 - used / paged_slots,
        "preallocated_waste": 1 - used / preallocated_slots,
    }


# Real requests are far from the context's length. vLLM's evaluation drew them from
# ShareGPT conversations, whose prompts average 161 tokens and answers 338
# [@kwon2023efficient], with a long tail. `conversation_lengths` draws from a
# log-normal of about that shape (median 300 tokens, a factor $e$ of spread), clipped
# to a 2,048-token context.


def conversation_lengths(n: int, max_len: int = 2048, seed: int = 0) -> list[int]:
    """`n` sequence lengths from a log-normal of median 300, clipped to `max_len`."""
    rng = np.random.default_rng(seed)
    lengths = np.exp(rng.normal(math.log(300), 1.0, n)).round().astype(int)
    return np.clip(lengths, 1, max_len).tolist()


# ## The declared example
#
# Three sequences in one call: two prompts of 5 and 7 tokens prefilled from empty,
# and a third that already holds 4 tokens and decodes one, with blocks of 4 slots,
# so that every sequence crosses a block boundary. Its dataflow diagram is declared:
# the forward pass is a function of a cache, not a module `torch.fx` could trace.


def example_setup() -> tuple[GPT2, PagedKVCache, list[int], list[list[int]]]:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, dropout=0.0
    )
    model = GPT2(config).eval()
    cache = PagedKVCache.for_model(model, num_blocks=12, block_size=4)
    for seq in range(3):
        cache.add(seq)
    paged_forward(model, cache, [2], [[1, 2, 3, 4]])
    return model, cache, [0, 1, 2], [[5, 6, 7, 8, 9], [3, 1, 4, 1, 5, 9, 2], [6]]


def example():
    """One `paged_forward`: two prefills (5 and 7 tokens) and one decoding step."""
    return paged_forward, example_setup()


def dataflow(output: Tensor) -> tuple[list, list]:
    """The steps of `paged_forward` on the example, with their shapes."""
    model, cache, seqs, tokens = example_setup()
    counts = [len(t) for t in tokens]
    total, batch = sum(counts), len(seqs)
    config = model.config
    heads, d_head = config.n_head, config.n_embd // config.n_head
    groups = [  # one attention call per group, as in paged_forward
        f"{name} [{len(group)}, {max(group)}, {heads}, {d_head}]"
        for name, group in (
            ("decode", [n for n in counts if n == 1]),
            ("prefill", [n for n in counts if n > 1]),
        )
        if group
    ]
    pool = "[" + ", ".join(map(str, cache.k.shape[1:])) + "]"
    nodes = [
        ("tokens", f"new tokens of {batch} sequences\nflat [{total}]"),
        ("embed", "wte + wpe at positions\nlength … length + n - 1"),
        ("qkv", "ln_1, c_attn\nq, k, v"),
        ("write", f"write k, v at their slots\npool {pool}"),
        ("gather", "gather by block tables\nmask t ≤ p and t < length"),
        ("attend", "attention, one call per group\n" + "\n".join(groups)),
        ("mlp", "c_proj, residual, ln_2, MLP"),
        ("logits", f"ln_f, logits of the last new tokens\n{list(output.shape)}"),
    ]
    edges = [
        ("tokens", "embed", f"[{total}]"),
        ("embed", "qkv", f"[{total}, {config.n_embd}]"),
        ("qkv", "write", f"k, v [{total}, {heads}, {d_head}]"),
        ("write", "gather", f"× {config.n_layer} layers"),
        ("gather", "attend", "keys, values"),
        ("qkv", "attend", "q, padded per group"),
        ("attend", "mlp", f"[{total}, {config.n_embd}]"),
        ("mlp", "qkv", "next layer"),
        ("mlp", "logits", f"[{batch}, {config.n_embd}]"),
    ]
    return nodes, edges


# ## The demo
#
# Two parts. First, the pretrained small GPT of the
# [pretraining chapter](../llm/pretraining.md) decodes a batch of prompts of mixed
# lengths through a paged cache with small blocks, and the result is compared with
# `gpt2.generate`, which recomputes the whole text at every step. Second, the
# memory measurement: a thousand sequence lengths drawn like conversations, the
# slots a preallocated cache and a paged one reserve for them, and what that means
# for the number of sequences a fixed amount of memory can hold.


def plot(lengths: list[int], max_len: int, sizes: dict, out: Path) -> Path:
    """The length distribution, the waste per block size, the sequences that fit."""
    fig, (histogram, waste, fit) = figure(panels=3)
    histogram.hist(lengths, bins=40, color="tab:blue")
    histogram.axvline(max_len, color="tab:red", ls="--", label="preallocated per seq")
    histogram.set_xlabel("sequence length (tokens)")
    histogram.set_ylabel("sequences")
    histogram.set_title("lengths drawn like conversations")
    histogram.legend()
    block_sizes = list(sizes)
    waste.plot(
        block_sizes,
        [100 * sizes[b]["paged_waste"] for b in block_sizes],
        "o-",
        label="paged",
    )
    prealloc = 100 * sizes[block_sizes[0]]["preallocated_waste"]
    waste.axhline(prealloc, color="tab:red", ls="--", label="preallocated")
    waste.set_xscale("log", base=2)
    waste.set_xlabel("block size $B$ (slots)")
    waste.set_ylabel("reserved slots holding no token (%)")
    waste.set_title("memory wasted")
    waste.legend()
    budgets = [2**k for k in range(15, 21)]  # token slots of KV memory
    mean_prealloc = sizes[16]["preallocated_reserved"] / len(lengths)
    mean_paged = sizes[16]["paged_reserved"] / len(lengths)
    fit.plot(budgets, [b / mean_paged for b in budgets], "o-", label="paged, $B = 16$")
    fit.plot(
        budgets,
        [b / mean_prealloc for b in budgets],
        "o--",
        color="tab:red",
        label="preallocated",
    )
    fit.set_xscale("log", base=2)
    fit.set_yscale("log", base=2)
    fit.set_xlabel("KV memory (token slots)")
    fit.set_ylabel("sequences that fit")
    fit.set_title("batch size a memory budget allows")
    fit.legend()
    paged16 = 100 * sizes[16]["paged_waste"]
    return save(
        fig,
        out / "paged_attention.png",
        caption=f"Left: {len(lengths)} sequence lengths from a log-normal shaped like "
        f"ShareGPT conversations, against the {max_len} slots a preallocated cache "
        f"reserves for each. Middle: the share of reserved slots holding no token, "
        f"{prealloc:.0f} % preallocated against {paged16:.1f} % for blocks of 16, "
        "growing with the block size. Right: the sequences a KV memory budget can "
        f"hold, {mean_prealloc / mean_paged:.1f} times more with the paged cache.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Decode the small GPT through a paged cache; measure the memory each cache
    wastes."""
    parser = argparse.ArgumentParser(
        description="A paged KV cache: decode the small GPT through it and measure "
        "the memory it saves over a preallocated cache.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--prompts", type=integer(at_least=1), default=6, help="prompts decoded"
    )
    parser.add_argument(
        "--new-tokens", type=integer(at_least=1), default=24, help="tokens per prompt"
    )
    parser.add_argument(
        "--block-size", type=integer(at_least=1), default=4, help="slots per block"
    )
    parser.add_argument(
        "--sequences",
        type=integer(at_least=1),
        default=1000,
        help="lengths drawn for the memory count",
    )
    parser.add_argument(
        "--max-len", type=integer(at_least=1), default=2048, help="context length"
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
        help="torch device to decode on",
    )
    parser.add_argument(
        "--out", default="out/paged_attention", help="folder for the figures"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)

    model, tokenizer, _, validation_pages = small_gpt(args.device)
    room = model.config.n_positions - args.new_tokens
    rng = np.random.default_rng(args.seed)
    prompts = []
    for page in validation_pages[: args.prompts]:
        ids = tokenizer.encode_ordinary(page)
        prompts.append(ids[: int(rng.integers(3, room + 1))])
    cache = PagedKVCache.for_model(model, num_blocks=256, block_size=args.block_size)
    free_before = cache.allocator.num_free
    paged = paged_generate(model, cache, prompts, args.new_tokens)
    agree = 0
    for prompt, tokens in zip(tqdm(prompts, desc="recomputing"), paged):
        idx = torch.tensor([prompt], device=args.device)
        reference = generate(model, idx, args.new_tokens, temperature=0)[
            0, len(prompt) :
        ]
        agree += reference.tolist() == tokens
    print(
        f"{len(prompts)} prompts of {min(map(len, prompts))}–"
        f"{max(map(len, prompts))} tokens, {args.new_tokens} new tokens each, blocks "
        f"of {args.block_size}: {agree}/{len(prompts)} continuations equal "
        f"gpt2.generate's; blocks free after: {cache.allocator.num_free}/{free_before}"
    )
    print(f"sample: {tokenizer.decode(prompts[0])!r} → {tokenizer.decode(paged[0])!r}")

    lengths = conversation_lengths(args.sequences, args.max_len, args.seed)
    sizes = {
        block: memory_waste(lengths, args.max_len, block)
        for block in tqdm([1, 2, 4, 8, 16, 32, 64, 128, 256], desc="block sizes")
    }
    print(f"{args.sequences} sequences, mean length {np.mean(lengths):.0f} tokens:")
    print(
        f"  preallocated {args.max_len}: {sizes[16]['preallocated_waste']:.1%} wasted"
    )
    for block, size in sizes.items():
        print(f"  paged, blocks of {block:>3}: {size['paged_waste']:.2%} wasted")
    plot(lengths, args.max_len, sizes, out)
    return {
        "continuations_equal": agree / len(prompts),
        "preallocated_waste": sizes[16]["preallocated_waste"],
        "paged_waste_16": sizes[16]["paged_waste"],
        "capacity_gain_16": sizes[16]["preallocated_reserved"]
        / sizes[16]["paged_reserved"],
    }


if __name__ == "__main__":
    main()

# ## Exercises
#
# 1. Beam search forks a sequence at every step and frees the beams it drops. Write
#    it for width 4 over `PagedKVCache.fork`, and count the blocks it holds at each
#    step against four independent sequences.
# 2. `paged_attention` gathers every block of the longest table for every sequence.
#    Write a decode-only version that loops over the blocks, keeping a running
#    maximum and sum of the softmax as FlashAttention does, so that nothing larger
#    than one block is ever gathered. Check it against `paged_attention`.
# 3. vLLM can also *swap* a preempted sequence's blocks to CPU memory instead of
#    recomputing them. Add `swap_out(seq)` and `swap_in(seq)` to the cache and
#    measure, for the small GPT, when copying blocks is cheaper than a new prefill.
