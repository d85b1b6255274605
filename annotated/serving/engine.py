r"""
---
title: An inference engine with continuous batching
summary: >-
  A small vLLM: a scheduler that admits, decodes, finishes and preempts sequences at
  every step over the paged KV cache, prefix caching by block hashes, streaming, and
  an OpenAI-compatible HTTP server that the official client talks to unchanged; its
  greedy outputs equal sequential generation token for token, and it serves requests
  of mixed lengths about twice as fast as static batching.
time: 10 s
references:
  - key: yu2022orca
    authors: [Gyeong-In Yu, Joo Seong Jeong, Geon-Woo Kim, Soojeong Kim,
      Byung-Gon Chun]
    title: "Orca: A Distributed Serving System for Transformer-Based Generative Models"
    year: 2022
    venue: OSDI 2022
    url: https://www.usenix.org/conference/osdi22/presentation/yu
  - key: kwon2023efficient
    authors: [Woosuk Kwon, Zhuohan Li, Siyuan Zhuang, Ying Sheng, Lianmin Zheng,
      Cody Hao Yu, Joseph E. Gonzalez, Hao Zhang, Ion Stoica]
    title: >-
      Efficient Memory Management for Large Language Model Serving with
      PagedAttention
    year: 2023
    venue: SOSP 2023
    arxiv: "2309.06180"
  - key: zheng2024sglang
    authors: [Lianmin Zheng, Liangsheng Yin, Zhiqiang Xie, Chuyue Sun, Jeff Huang,
      Cody Hao Yu, Shiyi Cao, Christos Kozyrakis, Ion Stoica, Joseph E. Gonzalez,
      Clark Barrett, Ying Sheng]
    title: "SGLang: Efficient Execution of Structured Language Model Programs"
    year: 2024
    venue: NeurIPS 2024
    arxiv: "2312.07104"
  - key: holtzman2020curious
    authors: [Ari Holtzman, Jan Buys, Li Du, Maxwell Forbes, Yejin Choi]
    title: The Curious Case of Neural Text Degeneration
    year: 2020
    venue: ICLR 2020
    arxiv: "1904.09751"
worksheet:
  - region: Engine.step
    hint: >-
      Preempt the newest running sequence while the running ones cannot each get one
      more token; admit waiting requests in order while their admission cost fits in
      what is left; run one paged_forward over every running sequence's last token
      and every admitted prompt's uncached rest; then sample, hash full blocks, and
      finish or keep each request, emitting its token.
    tests:
      - test_concurrent_requests_equal_sequential_generation
      - test_preemption_under_a_tiny_pool_equals_sequential_generation
  - region: Engine.prefix_hits
    hint: >-
      Walk the prompt's full blocks (leaving at least its last token out), chaining
      block_digest(parent, block tokens); keep each digest the allocator has cached
      and stop at the first miss.
    tests: [test_prefix_cache_reads_shared_blocks_and_keeps_outputs]
---

A server that generates text for many users at once has one lever for throughput:
decode many sequences in the same forward pass, because one pass over the weights
costs about the same for one sequence as for sixteen. The obvious way, *static*
batching, collects a batch, runs it until its longest answer is done, and only then
takes the next one. Answers differ in length by orders of magnitude, so most of the
batch sits finished, or waits in the queue, while one long answer runs on: a batch of
answers of lengths $L_1, \dots, L_B$ runs $\max_i L_i$ steps and fills only
$\sum_i L_i$ of its $B \max_i L_i$ slots with useful work.

Orca's answer is *iteration-level scheduling* [@yu2022orca], now called continuous
batching: the scheduler decides again at every step. A sequence that finishes leaves
the batch at once, and a waiting request joins it at the next step with its prompt
prefilled in the same forward pass as everyone else's decoding token. Its price is
memory that comes and goes at every step, which is what the
[paged KV cache](paged_attention.md) is for [@kwon2023efficient]: a sequence takes a
block when it needs one, and when the blocks run out the scheduler *preempts* the
newest sequence, frees its blocks, and recomputes it later.

This chapter builds the engine in the shape of vLLM's: requests with sampling
parameters; a scheduler with waiting and running queues that admits, decodes,
finishes and preempts; prefix caching, which finds the blocks of a prompt's prefix
already in the cache by hashing them, as vLLM and SGLang do [@zheng2024sglang];
streaming; and an HTTP server speaking OpenAI's API, so that the official `openai`
client, and every tool built on it, can use the model unchanged. The engine runs on a
thread of its own and talks to the server through queues.

The test runs the server on the loopback interface with a tiny GPT-2 and checks that
greedy answers equal sequential generation token for token, for concurrent requests,
32 concurrent clients, a tiny block pool that forces preemption, and prefixes found in
the cache; that the `openai` client works for completions, chat and streaming (with
the token counts at the end of a stream when asked); that
bad requests get a 4xx with a reason; and that a client leaving mid-stream gives its
blocks back. The demo serves 128 requests of mixed lengths with the pretrained small
GPT three ways and compares their throughput.
"""

import argparse
import asyncio
import codecs
import contextlib
import hashlib
import itertools
import json
import queue
import random
import threading
import time
import traceback
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from matplotlib.ticker import MaxNLocator
from pydantic import BaseModel, Field
from torch import Tensor
from tqdm import tqdm
from transformers import GPT2Config as HFGPT2Config
from transformers import GPT2LMHeadModel

from annotated.data import integer, torch_device
from annotated.figures import figure, save
from annotated.llm.bpe import Tokenizer, train
from annotated.llm.gpt2 import GPT2, GPT2Config, to_hf_state_dict, top_p_filter
from annotated.llm.pretraining import small_gpt
from annotated.serving.paged_attention import (
    BlockAllocator,
    PagedKVCache,
    paged_forward,
    paged_generate,
)

# ## A request and how to sample it
#
# A request is a prompt of token ids and the sampling parameters of OpenAI's API:
# at most `max_tokens` new tokens; `temperature` (0 is greedy); `top_p`, the nucleus
# of [@holtzman2020curious] from the [GPT-2 chapter](../llm/gpt2.md); `stop`, strings
# that end the answer (and are cut from it); `stop_token_ids`, tokens that end it (the
# server passes `<|endoftext|>`); and `seed`, which gives the request its own random
# generator, so that a sampled answer does not depend on which other requests shared
# its batches.


@dataclass(frozen=True)
class SamplingParams:
    """How one request is sampled and when it stops."""

    max_tokens: int = 16  # new tokens at most
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0  # keep the smallest set of tokens with this much probability
    stop: tuple[str, ...] = ()  # strings that end the answer, cut from it
    stop_token_ids: tuple[int, ...] = ()  # tokens that end the answer, not shown
    seed: int | None = None  # the request's own random generator

    def __post_init__(self):
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int):
            raise TypeError(f"max_tokens must be an int, got {self.max_tokens!r}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 0 <= self.temperature:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.stop, tuple):
            raise TypeError(
                "SamplingParams: stop must be a tuple of strings, e.g. ('the end',), "
                f"got {self.stop!r}"
            )
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be non-empty strings, got {self.stop!r}")
        if not isinstance(self.stop_token_ids, tuple) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in self.stop_token_ids
        ):
            raise TypeError(
                "SamplingParams: stop_token_ids must be a tuple of ints, e.g. "
                f"(50256,), got {self.stop_token_ids!r}"
            )


# A request carries its state through the engine: the tokens generated so far, the
# text they decode to and how much of it was streamed, the hashes of its full blocks
# (below), and why it finished. Its `on_event` callback receives an `Event` for every
# token: the new text, and on the last one the finish reason, `"length"`, `"stop"` or
# `"abort"`.


@dataclass
class Event:
    """One step of one request: a token, the text it adds, and maybe the end."""

    request_id: int
    token: int | None
    text: str
    finish_reason: str | None = None


@dataclass
class Request:
    """A prompt, its sampling parameters and its state in the engine."""

    id: int
    prompt: list[int]
    params: SamplingParams
    on_event: Callable[[Event], None] | None = None
    output: list[int] = field(default_factory=list)
    text: str = ""  # the output decoded, cut at a stop string
    sent: int = 0  # characters of `text` already streamed
    block_hashes: list[bytes] = field(default_factory=list)
    cached_tokens: int = 0  # prompt tokens found in the prefix cache
    finish_reason: str | None = None
    generator: torch.Generator = field(default_factory=torch.Generator)

    @property
    def tokens(self) -> list[int]:
        """The prompt and the output: what a recompute after preemption prefills."""
        return self.prompt + self.output


# Sampling follows the [GPT-2 chapter](../llm/gpt2.md): temperature, then the nucleus
# filter, then one draw from the request's own generator. That generator lives on the
# CPU, so the probabilities come to the CPU for the draw: a GPU tensor cannot be drawn
# from with a CPU generator, and a seed then draws the same numbers on any device.


def sample(logits: Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """One token from the logits `[vocab]` of a request."""
    if params.temperature == 0:
        return int(logits.argmax())
    logits = top_p_filter(logits.float() / params.temperature, params.top_p)
    probs = logits.softmax(-1).cpu()  # [vocab]
    return int(torch.multinomial(probs, 1, generator=generator))


# ## Prefix caching
#
# Many requests start the same way: a system prompt, a few-shot preamble, the
# conversation so far. Their keys and values for that prefix are the same numbers, so
# the second request can read the first one's blocks instead of computing its own.
# To find them, every *full* block gets a key: the hash of its parent's key and its
# own token ids,
#
# $$
# h_i = \mathrm{SHA256}(h_{i-1} \,\|\, \text{tokens of block } i),
# $$
#
# so a key names the whole prefix up to the end of its block, not just the block's
# tokens: the same 16 tokens after different prefixes have different keys and
# values. This is vLLM's automatic prefix caching; SGLang keeps the same information
# as a radix tree of token sequences [@zheng2024sglang].
#
# `PrefixCachingAllocator` adds two maps to the [allocator](paged_attention.md): key
# to block and block to key. A sequence that frees a hashed block leaves it in the
# free list with its key still attached: it is free, and it is still a cache entry.
# `lookup` takes such a block back out of the free list (or adds a reader, if a
# running sequence still holds it). `allocate` hands out the free block that was
# freed longest ago and forgets its key, so the cache evicts its least recently used
# entries, and only when the memory is needed. The free count therefore includes the
# cached blocks, which is the count the scheduler needs.


class PrefixCachingAllocator(BlockAllocator):
    """A block allocator whose freed blocks stay findable by their prefix hash until
    they are handed out again."""

    def __init__(self, num_blocks: int, block_size: int):
        super().__init__(num_blocks, block_size)
        self.block_of: dict[bytes, int] = {}
        self.hash_of: dict[int, bytes] = {}

    def allocate(self) -> int:
        block = super().allocate()
        evicted = self.hash_of.pop(block, None)
        if evicted is not None:
            del self.block_of[evicted]
        return block

    def cached(self, digest: bytes) -> int | None:
        """The block holding the prefix `digest`, if any; nothing changes."""
        return self.block_of.get(digest)

    def lookup(self, digest: bytes) -> int:
        """Take one more reference to the cached block of `digest`."""
        block = self.block_of[digest]
        if self.refcounts[block] == 0:
            del self.free_blocks[block]  # it was free but remembered
            self.refcounts[block] = 1
        else:
            self.refcounts[block] += 1
        return block

    def register(self, block: int, digest: bytes) -> None:
        """Remember that the full `block` holds the prefix `digest`."""
        if digest not in self.block_of and block not in self.hash_of:
            self.block_of[digest], self.hash_of[block] = block, digest


def block_digest(parent: bytes, tokens: list[int]) -> bytes:
    """The key of a full block: SHA-256 of the parent's key and the block's ids."""
    return hashlib.sha256(
        parent + np.asarray(tokens, dtype=np.int64).tobytes()
    ).digest()


# ## The scheduler
#
# The engine holds the model, the paged cache and two queues: `waiting`, requests
# not yet in the cache, first come first served, and `running`, the sequences in the
# cache, oldest first. One call of `step` is one iteration of Orca's loop
# [@yu2022orca]:
#
# 1. **Room for the running.** Every running sequence will add one token; if the free
#    blocks cannot hold them all, the *newest* running sequence is preempted: its
#    blocks are freed and it goes back to the *front* of the waiting queue with its
#    generated tokens appended to its prompt. This is vLLM's preemption by recompute:
#    the newest sequence has the least work to redo, and the oldest keep running, so
#    every request eventually finishes. (vLLM can instead swap the blocks to CPU
#    memory and back.) Its full blocks stay in the prefix cache, so the recompute
#    often finds most of its own prefix there.
# 2. **Admission.** Waiting requests join, in order, while the free blocks, less what
#    the running need, hold their prompts. A prompt's prefix found in the prefix cache
#    costs no block and no compute; only the rest is prefilled. At least its last
#    token is always computed, because its logits are what the first new token is
#    drawn from.
# 3. **One forward pass** over everything: each new request's prompt and each running
#    sequence's last token, through `paged_forward`.
# 4. **Sampling and bookkeeping.** Each sequence draws its token, its newly full
#    blocks are hashed into the prefix cache, its text is streamed, and a sequence
#    that reaches `max_tokens`, a stop token or a stop string is finished and its
#    blocks freed, so that the next step can admit someone else.
#
# `max_batch` bounds the running sequences, as vLLM's `max_num_seqs` does.


class Engine:
    """Continuous batching over a paged KV cache, with prefix caching."""

    def __init__(
        self,
        model: GPT2,
        tokenizer: Tokenizer,
        num_blocks: int = 256,
        block_size: int = 16,
        max_batch: int = 32,
        prefix_caching: bool = True,
    ):
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an int >= 1, got {max_batch!r}")
        self.model, self.tokenizer, self.max_batch = model.eval(), tokenizer, max_batch
        allocator_class = PrefixCachingAllocator if prefix_caching else BlockAllocator
        self.allocator = allocator_class(num_blocks, block_size)
        self.cache = PagedKVCache.for_model(
            model, num_blocks, block_size, allocator=self.allocator
        )
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.ids = itertools.count()
        self.stats = Counter()  # steps, prompt and cached tokens, preemptions, ...
        self.batch_sizes: list[int] = []  # sequences in each step's forward pass

    # Requests are checked when they arrive, so that a bad one is refused with a
    # reason instead of failing inside a step that serves others: the ids must be in
    # the vocabulary, and the prompt with all its new tokens must fit both the model's
    # context and the whole block pool (else no amount of preemption would make room).

    def make_request(
        self,
        prompt: list[int],
        params: SamplingParams,
        on_event: Callable[[Event], None] | None = None,
    ) -> Request:
        """A checked `Request`, not yet queued: `add` queues it."""
        config, block_size = self.model.config, self.allocator.block_size
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be SamplingParams, got {type(params)}")
        if not prompt or not all(
            isinstance(i, int) and 0 <= i < config.vocab_size for i in prompt
        ):
            raise ValueError(
                f"prompt must be a non-empty list of token ids in [0, "
                f"{config.vocab_size}), got {len(prompt)} tokens"
            )
        total = len(prompt) + params.max_tokens
        if total > config.n_positions:
            raise ValueError(
                f"prompt of {len(prompt)} tokens plus max_tokens {params.max_tokens} "
                f"is {total} tokens; the model's context is {config.n_positions}"
            )
        if -(-total // block_size) > self.allocator.num_blocks:
            raise ValueError(
                f"{total} tokens need more than the pool's {self.allocator.num_blocks} "
                f"blocks of {block_size}"
            )
        request = Request(next(self.ids), list(prompt), params, on_event)
        seed = params.seed if params.seed is not None else random.randrange(2**62)
        request.generator.manual_seed(seed)
        return request

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def abort(self, request_id: int) -> None:
        """Stop a request wherever it is, freeing its blocks."""
        for request in self.waiting:
            if request.id == request_id:
                self.waiting.remove(request)
                return self.finish(request, "abort")
        for request in self.running:
            if request.id == request_id:
                self.running.remove(request)
                return self.finish(request, "abort")

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def step(self) -> None:
        """One iteration: make room, admit, run one forward pass, sample, finish."""
        # 1. Room for one more token of every running sequence.
        while self.running and self.decode_blocks() > self.allocator.num_free:
            self.preempt(self.running.pop())
        # 2. Admit waiting requests while their blocks last.
        spare = self.allocator.num_free - self.decode_blocks()
        admitted = []
        while self.waiting and len(self.running) + len(admitted) < self.max_batch:
            cost = self.admission_cost(self.waiting[0])
            if cost > spare:
                break
            spare -= cost
            admitted.append(self.admit(self.waiting.popleft()))
        if not self.running and not admitted:
            return
        # 3. One forward pass: decoding tokens and prefills together.
        batch = self.running + [request for request, _ in admitted]
        fed = [[request.output[-1]] for request in self.running]
        fed += [request.tokens[start:] for request, start in admitted]
        logits = paged_forward(self.model, self.cache, [r.id for r in batch], fed)
        self.stats["steps"] += 1
        self.batch_sizes.append(len(batch))
        # 4. Sample, hash the full blocks, stream, finish.
        self.running = []
        for request, row in zip(batch, logits):
            token = sample(row, request.params, request.generator)
            request.output.append(token)
            self.stats["generated"] += 1
            self.hash_full_blocks(request)
            reason = self.stop_reason(request, token)
            if reason:  # free the blocks before the client hears of the end
                self.finish(request, reason, notify=False)
            else:
                self.running.append(request)
            self.emit(request, token, reason)

    def decode_blocks(self) -> int:
        """Free blocks the running sequences need for one more token each."""
        return sum(self.cache.blocks_needed(r.id, 1) for r in self.running)

    # Admission looks the prompt's full blocks up in the prefix cache, one after the
    # other, stopping at the first miss (a later block's key includes every earlier
    # block, so nothing after a miss can hit). `admission_cost` counts, without
    # changing anything, the blocks admitting would take from the free list: the
    # blocks of the uncached rest, and the cached blocks nobody holds, which sit in
    # the free list.

    def prefix_hits(self, request: Request) -> list[bytes]:
        """Keys of the request's leading full blocks that are in the prefix cache,
        leaving at least one token to compute."""
        if not isinstance(self.allocator, PrefixCachingAllocator):
            return []
        tokens, size = request.tokens, self.allocator.block_size
        digests, parent = [], b""
        for i in range((len(tokens) - 1) // size):
            parent = block_digest(parent, tokens[i * size : (i + 1) * size])
            if self.allocator.cached(parent) is None:
                break
            digests.append(parent)
        return digests

    def admission_cost(self, request: Request) -> int:
        hits = self.prefix_hits(request)
        size = self.allocator.block_size
        idle = sum(
            self.allocator.refcounts[self.allocator.cached(d)] == 0 for d in hits
        )
        return -(-len(request.tokens) // size) - len(hits) + idle

    def admit(self, request: Request) -> tuple[Request, int]:
        """Put `request` in the cache with its cached prefix; return it and the index
        of its first token to compute."""
        hits = self.prefix_hits(request)
        self.cache.add(request.id)
        self.cache.tables[request.id] = [self.allocator.lookup(d) for d in hits]
        start = len(hits) * self.allocator.block_size
        self.cache.lengths[request.id] = start
        request.block_hashes = list(hits)
        if not request.output:  # a first admission, not a recompute
            request.cached_tokens = start
            self.stats["prompt_tokens"] += len(request.prompt)
            self.stats["cached_tokens"] += start
        return request, start

    def preempt(self, request: Request) -> None:
        """Free the blocks of `request` and put it first in line, to be recomputed."""
        self.cache.free(request.id)
        request.block_hashes = []
        self.waiting.appendleft(request)
        self.stats["preemptions"] += 1

    def hash_full_blocks(self, request: Request) -> None:
        """Register the blocks of `request` that are full since the last step."""
        if not isinstance(self.allocator, PrefixCachingAllocator):
            return
        size, table = self.allocator.block_size, self.cache.tables[request.id]
        tokens = request.tokens
        for i in range(
            len(request.block_hashes), self.cache.lengths[request.id] // size
        ):
            parent = request.block_hashes[-1] if request.block_hashes else b""
            digest = block_digest(parent, tokens[i * size : (i + 1) * size])
            request.block_hashes.append(digest)
            self.allocator.register(table[i], digest)

    # ### Stopping and streaming
    #
    # A stop token ends the answer and is not part of it. A stop string can end
    # in the middle of a token, so the text is decoded after every token and cut at
    # the first stop string found. Streaming must then be careful about what it has
    # already sent: text that could be the start of a stop string is held back
    # until the next token decides, and so are the last bytes when they are the
    # unfinished start of a UTF-8 character (a byte-level BPE token can end inside
    # one), which `decode` shows as U+FFFD and the next token may complete. Python's
    # incremental UTF-8 decoder, asked for the text so far without `final=True`,
    # returns exactly the text before such bytes.

    def stop_reason(self, request: Request, token: int) -> str | None:
        params = request.params
        if token in params.stop_token_ids:
            return "stop"
        request.text = self.tokenizer.decode(request.output)
        found = [request.text.find(s) for s in params.stop]
        found = [index for index in found if index >= 0]
        if found:
            request.text = request.text[: min(found)]
            return "stop"
        if len(request.output) >= params.max_tokens:
            return "length"
        return None

    def emit(self, request: Request, token: int | None, reason: str | None) -> None:
        end = len(request.text)
        if reason is None:
            data = self.tokenizer.decode_bytes(request.output)
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            end = min(end, len(decoder.decode(data)))  # not final: holds back a tail
            held = [
                k
                for stop in request.params.stop
                for k in range(1, len(stop))
                if request.text[:end].endswith(stop[:k])
            ]
            end -= max(held, default=0)
        delta, request.sent = request.text[request.sent : end], max(end, request.sent)
        if request.on_event is not None:
            request.on_event(Event(request.id, token, delta, reason))

    def finish(self, request: Request, reason: str, notify: bool = True) -> None:
        if request.id in self.cache.tables:
            self.cache.free(request.id)
        request.finish_reason = reason
        self.stats[f"finished_{reason}"] += 1
        if notify:
            self.emit(request, None, reason)

    # ### Offline use
    #
    # `generate` queues a list of prompts and steps until all are done: batch
    # inference without a server, which the benchmarks and the equality tests use.

    def generate(
        self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]
    ) -> list[list[int]]:
        """The output token ids of each prompt, served with continuous batching."""
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(
                "Engine.generate: params must be one SamplingParams or one per "
                f"prompt, got {len(params)} for {len(prompts)} prompts"
            )
        requests = [self.make_request(p, s) for p, s in zip(prompts, params)]
        for request in requests:
            self.add(request)
        while self.has_work():
            self.step()
        return [
            [t for t in r.output if t not in r.params.stop_token_ids] for r in requests
        ]


# ## Static batching, for comparison
#
# Static batching takes the requests in arrival order, `batch_size` at a time, and
# runs each batch until its longest request is done: every sequence of the batch is
# decoded for the longest `max_tokens`, and the tokens past its own are thrown away.
# To compare the schedules and nothing else, it runs the same `paged_forward` on the
# same cache (so its prompts need no padding: if anything, this makes it faster than
# the usual padded implementation). `useful` counts, for each forward pass, the
# sequences that still needed a token.


def static_batching(
    model: GPT2,
    prompts: list[list[int]],
    max_tokens: list[int],
    batch_size: int,
    block_size: int = 16,
) -> tuple[list[list[int]], list[int]]:
    """Greedy outputs in static batches, and the useful sequences of every step."""
    outputs, useful = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        limits = max_tokens[start : start + batch_size]
        longest = max(limits)
        blocks = sum(-(-(len(p) + longest) // block_size) for p in chunk)
        cache = PagedKVCache.for_model(model, blocks, block_size)
        tokens = paged_generate(model, cache, chunk, longest)
        outputs += [row[:limit] for row, limit in zip(tokens, limits)]
        useful += [sum(limit > step for limit in limits) for step in range(longest)]
    return outputs, useful


# The reference point from the libraries: Hugging Face's `GPT2LMHeadModel.generate`
# on the same weights (through `to_hf_state_dict`), greedy, in the same static
# batches, with left-padded prompts and an attention mask, as its documentation
# recommends for batched generation.


def hf_model(model: GPT2) -> GPT2LMHeadModel:
    """`GPT2LMHeadModel` with the weights of `model`."""
    config = model.config
    hf = GPT2LMHeadModel(
        HFGPT2Config(
            vocab_size=config.vocab_size,
            n_positions=config.n_positions,
            n_embd=config.n_embd,
            n_layer=config.n_layer,
            n_head=config.n_head,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            layer_norm_epsilon=config.layer_norm_epsilon,
            bos_token_id=config.vocab_size - 1,
            eos_token_id=config.vocab_size - 1,
        )
    )
    hf.load_state_dict(to_hf_state_dict(model))
    return hf.to(model.wte.weight.device, model.wte.weight.dtype).eval()


@torch.no_grad()
def hf_static_batching(
    hf: GPT2LMHeadModel,
    prompts: list[list[int]],
    max_tokens: list[int],
    batch_size: int,
) -> list[list[int]]:
    """Greedy outputs of `hf.generate` in static batches of left-padded prompts."""
    outputs, device = [], hf.device
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        limits = max_tokens[start : start + batch_size]
        width = max(map(len, chunk))
        ids = torch.zeros(len(chunk), width, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(chunk):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        tokens = hf.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max(limits),
            min_new_tokens=max(limits),
            do_sample=False,
            pad_token_id=0,
        )[:, width:]
        outputs += [row[:limit].tolist() for row, limit in zip(tokens, limits)]
    return outputs


# ## The engine on its own thread
#
# A web server handles each request in a coroutine on an asyncio event loop, and
# the engine's step is a blocking computation of many milliseconds: run on the loop,
# it would freeze every connection while it computed. So the engine gets a thread of
# its own, the pattern of vLLM's `AsyncLLMEngine`. Only that thread touches the
# engine's queues and cache; the server sends it commands (add a request, abort one)
# through a thread-safe `queue.Queue`, and it sends events back through each
# request's callback, which hands them to the request's `asyncio.Queue` with
# `loop.call_soon_threadsafe`, the one safe way into an event loop from another
# thread. When there is no work, the thread sleeps on the command queue.
#
# `stream` is what a handler iterates over. Its `finally` clause is the
# disconnection path: when a client goes away, the server cancels the handler,
# the generator is closed before its request finished, and it sends an abort, which
# frees the request's blocks at the engine's next iteration.
#
# A step can fail: a bug, or on a GPU a batch that runs out of memory. The thread
# must not simply die, or its requests wait for events that never come while the
# server goes on accepting new ones. So `loop` keeps the requests it holds, and when
# a step raises it prints the traceback, ends each of them with the finish reason
# `"error"`, and from then on refuses: a request still queued is ended the same way,
# and `submit` raises `EngineStopped`. The engine's state after a failed step cannot
# be trusted, so it does not try to recover; vLLM makes the same choice (its
# `EngineDeadError`), and whoever runs the server restarts it.


class EngineStopped(RuntimeError):
    """The engine's thread failed; it takes no more requests."""


class AsyncEngine:
    """An `Engine` served from a background thread."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.commands: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = None
        self.failure: Exception | None = None  # what stopped the engine, if anything

    def start(self) -> None:
        self.thread = threading.Thread(target=self.loop, daemon=True, name="engine")
        self.thread.start()

    def stop(self) -> None:
        self.commands.put(("stop", None))
        self.thread.join()

    def loop(self) -> None:
        held: dict[int, Request] = {}  # added and not yet finished
        try:
            self.run_commands(held)
        except Exception as failure:
            self.failure = failure
            traceback.print_exc()
            self.refuse(held.values())
            while True:  # what is still queued is refused too, until "stop"
                command, argument = self.commands.get()
                if command == "stop":
                    return
                if command == "add":
                    self.refuse([argument])

    def run_commands(self, held: dict[int, Request]) -> None:
        """Apply commands and step the engine until "stop", keeping in `held` the
        requests added and not yet finished."""
        engine = self.engine
        while True:
            wait = not engine.has_work()
            with contextlib.suppress(queue.Empty):
                while True:  # apply every pending command, sleeping only when idle
                    command, argument = self.commands.get(block=wait)
                    wait = False
                    if command == "stop":
                        return
                    if command == "add":
                        held[argument.id] = argument
                        engine.add(argument)
                    else:
                        engine.abort(argument)
            if engine.has_work():
                engine.step()
            for request in [r for r in held.values() if r.finish_reason]:
                del held[request.id]

    def refuse(self, requests) -> None:
        """End each request with the finish reason "error"."""
        for request in requests:
            request.finish_reason = "error"
            request.on_event(Event(request.id, None, "", "error"))

    def submit(
        self,
        prompt: list[int],
        params: SamplingParams,
        on_event: Callable[[Event], None],
    ) -> Request:
        """Check and queue a request; `ValueError` if it is refused, `EngineStopped`
        if the engine has failed."""
        if self.failure is not None:
            raise EngineStopped(f"the engine stopped: {self.failure!r}")
        request = self.engine.make_request(prompt, params, on_event)
        self.commands.put(("add", request))
        return request

    def abort(self, request_id: int) -> None:
        self.commands.put(("abort", request_id))

    async def stream(
        self, prompt: list[int], params: SamplingParams
    ) -> tuple[Request, AsyncIterator[Event]]:
        """Queue a request (raising `ValueError` or `EngineStopped` now if it is
        refused) and return it with an iterator over its events."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        request = self.submit(
            prompt, params, lambda e: loop.call_soon_threadsafe(events.put_nowait, e)
        )

        async def iterate() -> AsyncIterator[Event]:
            finished = False
            try:
                while not finished:
                    event = await events.get()
                    finished = event.finish_reason is not None
                    yield event
            finally:
                if not finished:  # the client went away: free the blocks
                    self.abort(request.id)

        return request, iterate()


# ## An OpenAI-compatible server
#
# OpenAI's HTTP API is the de facto interface of every serving engine (vLLM, SGLang,
# llama.cpp's server, TGI): a client written for it works with any of them by
# changing its `base_url`. The three endpoints most clients need:
#
# - `GET /v1/models` lists the model;
# - `POST /v1/completions` continues a `prompt`;
# - `POST /v1/chat/completions` answers a list of `messages`. A chat model is
#   trained on a *template* that turns the messages into one text with markers
#   between the turns; the small GPT was trained on documentation, not chats, so its
#   template here is the plainest one, `role: content` lines ending with
#   `assistant:`, and the answer stops at a new `user:` line.
#
# With `"stream": true` the answer comes as server-sent events: lines
# `data: {json}` separated by blank lines, one per token, then `data: [DONE]`.
# A completion chunk carries its new `text`; a chat chunk carries a `delta`, first
# the role and then pieces of `content`. The last chunk carries the `finish_reason`.
# A stream has no response body to hold the token counts, so a client that wants them
# asks with `"stream_options": {"include_usage": true}`: every chunk then carries
# `"usage": null`, and one more chunk before `[DONE]` has no choices and the usage
# (LangChain's `ChatOpenAI` asks for it when its `stream_usage` is on).
#
# Request bodies are validated by pydantic models of the fields we implement;
# anything else a client sends is ignored. A request the server cannot serve gets
# an error in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`:
# 400 for a malformed body or a prompt that does not fit, 404 for an unknown model;
# after the engine has failed, 500 for the requests it was answering (a stream ends
# with an `error` event instead of `[DONE]`) and 503 for new ones, and
# `GET /health`, which an orchestrator such as Kubernetes polls to know when to
# restart a server, answers 503 too. The `openai` client raises these as
# `BadRequestError`, `NotFoundError`, `InternalServerError` (`APIError` in a
# stream) and so on.


class StreamOptions(BaseModel):
    include_usage: bool = False


class CompletionBody(BaseModel):
    model: str
    prompt: str
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatBody(CompletionBody):
    prompt: str = ""  # unused: the prompt is made from the messages
    messages: list[Message] = Field(min_length=1)
    # The chat API's newer name for max_tokens, which recent clients send; it wins.
    max_completion_tokens: int | None = Field(None, ge=1)


def chat_prompt(messages: list[Message]) -> str:
    """The plain chat template: one `role: content` line per message, then the
    assistant's turn."""
    return "".join(f"{m.role}: {m.content}\n" for m in messages) + "assistant:"


def usage_of(request: Request) -> dict:
    prompt, completion = len(request.prompt), len(request.output)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def error_body(status: int, message: str, param: str | None = None) -> dict:
    if status >= 500:
        kind = "server_error"
    elif status == 404:
        kind = "not_found_error"
    else:
        kind = "invalid_request_error"
    return {"message": message, "type": kind, "param": param, "code": None}


def error(status: int, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": error_body(status, message, param)}, status_code=status
    )


def build_app(engine: AsyncEngine, model_name: str) -> FastAPI:
    """The FastAPI app serving `engine` as `model_name`; its lifespan starts and
    stops the engine's thread."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="annotated-dl inference engine", lifespan=lifespan)
    tokenizer = engine.engine.tokenizer
    end_of_text = tokenizer.special_tokens.get("<|endoftext|>")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: HTTPRequest, exc: RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
        )
        return error(400, f"invalid request: {problems}")

    @app.get("/health")
    async def health():
        if engine.failure is not None:
            return error(503, f"the engine stopped: {engine.failure!r}")
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        card = {"id": model_name, "object": "model", "created": 0, "owned_by": "me"}
        return {"object": "list", "data": [card]}

    async def answer(body: CompletionBody, prompt: str, chat: bool):
        if body.model != model_name:
            return error(404, f"model {body.model!r} does not exist", "model")
        if body.stream_options is not None and not body.stream:
            message = "stream_options is only allowed when stream is true"
            return error(400, message, "stream_options")
        # OpenAI's API takes one stop string or a list of them.
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        try:
            params = SamplingParams(
                max_tokens=body.max_tokens,
                temperature=body.temperature,
                top_p=body.top_p,
                stop=tuple(stop + (["\nuser:"] if chat else [])),
                stop_token_ids=(end_of_text,) if end_of_text is not None else (),
                seed=body.seed,
            )
        except (TypeError, ValueError) as problem:
            return error(400, str(problem))
        try:
            request, events = await engine.stream(
                tokenizer.encode_ordinary(prompt), params
            )
        except ValueError as problem:
            return error(400, str(problem), "prompt")
        except EngineStopped as problem:
            return error(503, str(problem))
        kind = "chat.completion" if chat else "text_completion"
        head = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": model_name,
        }
        if body.stream:
            usage = (
                body.stream_options is not None and body.stream_options.include_usage
            )
            return StreamingResponse(
                sse(head, kind, chat, request, events, engine, usage),
                media_type="text/event-stream",
            )
        text, reason = "", None
        async for event in events:
            text, reason = text + event.text, event.finish_reason
        if reason == "error":
            return error(500, f"the engine stopped: {engine.failure!r}")
        answer = {"role": "assistant", "content": text} if chat else None
        choice = {"index": 0, "finish_reason": reason, "logprobs": None}
        choice |= {"message": answer} if chat else {"text": text}
        return head | {"object": kind, "choices": [choice], "usage": usage_of(request)}

    @app.post("/v1/completions")
    async def completions(body: CompletionBody):
        return await answer(body, body.prompt, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody):
        if body.max_completion_tokens is not None:
            body.max_tokens = body.max_completion_tokens
        return await answer(body, chat_prompt(body.messages), chat=True)

    return app


async def sse(
    head: dict,
    kind: str,
    chat: bool,
    request: Request,
    events: AsyncIterator[Event],
    engine: AsyncEngine,
    include_usage: bool = False,
) -> AsyncIterator[str]:
    """Server-sent events of one streamed answer, ending with `data: [DONE]` (after
    a chunk with the usage, if asked for), or with an error if the engine stops."""
    chunk = head | {"object": f"{kind}.chunk" if chat else kind}
    chunk |= {"usage": None} if include_usage else {}

    def data(piece: dict, reason: str | None) -> str:
        choice = {"index": 0, "finish_reason": reason, "logprobs": None} | piece
        return f"data: {json.dumps(chunk | {'choices': [choice]})}\n\n"

    if chat:
        yield data({"delta": {"role": "assistant", "content": ""}}, None)
    async for event in events:
        if event.finish_reason == "error":
            failure = error_body(500, f"the engine stopped: {engine.failure!r}")
            yield f"data: {json.dumps({'error': failure})}\n\n"
            return
        if event.text or event.finish_reason:
            piece = {"delta": {"content": event.text}} if chat else {"text": event.text}
            yield data(piece, event.finish_reason)
    if include_usage:
        last = chunk | {"choices": [], "usage": usage_of(request)}
        yield f"data: {json.dumps(last)}\n\n"
    yield "data: [DONE]\n\n"


def serve(engine: AsyncEngine, model_name: str, host: str, port: int) -> None:
    """Serve until interrupted."""
    uvicorn.run(build_app(engine, model_name), host=host, port=port, log_level="info")


# ## The declared example
#
# Four greedy requests of mixed lengths through a tiny engine with a pool of 10
# blocks of 4 slots, small enough that the longest requests preempt the others. Its
# dataflow diagram is declared: it shows one iteration of the scheduler.


def example_setup() -> tuple[Engine, list[list[int]], SamplingParams]:
    torch.manual_seed(0)
    tokenizer = train("the engine serves the tokens that the model writes " * 8, 20)
    config = GPT2Config(
        vocab_size=tokenizer.vocabulary_size,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=4,
        dropout=0.0,
    )
    engine = Engine(GPT2(config), tokenizer, num_blocks=10, block_size=4, max_batch=4)
    prompts = [tokenizer.encode_ordinary(t) for t in ("the", "the engine", "tokens")]
    prompts.append(tokenizer.encode_ordinary("the model writes the tokens"))
    return engine, prompts, SamplingParams(max_tokens=10, temperature=0)


def example():
    """`Engine.generate` over four prompts with a pool small enough to preempt."""
    engine, prompts, params = example_setup()
    return engine.generate, (prompts, params)


def dataflow(output: list[list[int]]) -> tuple[list, list]:
    """One iteration of the scheduler, with the example's sizes."""
    engine, prompts, params = example_setup()
    pool = f"{engine.allocator.num_blocks} blocks × {engine.allocator.block_size}"
    nodes = [
        ("waiting", f"waiting queue\n{len(prompts)} requests"),
        ("room", "room for the running\npreempt the newest if short"),
        ("prefix", "prefix cache\nhash(parent, block ids)"),
        ("admit", "admit while blocks last"),
        ("forward", "paged_forward\nprefills + decoding tokens"),
        ("cache", f"PagedKVCache\n{pool}"),
        ("sample", "sample, hash full blocks\nstream, stop"),
        ("done", f"outputs\n{[len(o) for o in output]} tokens"),
    ]
    edges = [
        ("waiting", "admit", "first come, first served"),
        ("prefix", "admit", "cached blocks"),
        ("room", "admit", "spare blocks"),
        ("room", "waiting", "preempted: to the front"),
        ("admit", "forward", "new prompts"),
        ("cache", "forward", "K, V by block table"),
        ("forward", "cache", "new K, V"),
        ("forward", "sample", f"logits [batch, {engine.model.config.vocab_size}]"),
        ("sample", "prefix", "full blocks"),
        ("sample", "room", "next step"),
        ("sample", "done", "finished"),
    ]
    return nodes, edges


# ## The demo
#
# The workload is offline serving: 128 requests, all there at the start, whose
# prompts are 4 to 24 tokens of the validation pages and whose `max_tokens` are drawn
# from a long-tailed distribution (a log-normal of median 8, capped at 40 so that
# a static batch of the longest prompt and the longest answer fits the context of
# 64), because answer lengths are long-tailed. Each is served greedily three
# ways with at most 16 sequences per forward pass: by the engine (continuous
# batching), by static batching over the same forward pass, and by Hugging Face's
# `generate` in the same static batches. Throughput is the sum of the requests'
# `max_tokens` per second of wall time: with no stop set, each request generates
# exactly its `max_tokens`, and the tokens static batching decodes past them are not
# counted. The demo checks that the engine's outputs equal static batching's, and
# then serves 16 requests that share a 40-token prefix, to count prefix-cache hits.
#
# In our runs on two busy CPU cores, continuous batching needed 118 forward passes
# where static batching needed 288, and served 2.0 to 2.3 times as many tokens per
# second (a pass of a full batch costs a little more than one of a batch that is
# mostly done); Hugging Face's `generate`, with the same static batches, was a little
# slower than our static batching. All three chose the same tokens for every request.


def workload(
    tokenizer: Tokenizer, pages: list[str], n: int, context: int, seed: int
) -> tuple[list[list[int]], list[int]]:
    """`n` prompts of 4–24 tokens and long-tailed `max_tokens`, at most
    `context - 24` so that the longest prompt and answer fit any batch."""
    rng = np.random.default_rng(seed)
    prompts, limits = [], []
    for i in range(n):
        ids = tokenizer.encode_ordinary(pages[i % len(pages)])
        start = int(rng.integers(0, max(1, len(ids) - 24)))
        prompts.append(ids[start : start + int(rng.integers(4, 25))])
        wanted = int(np.exp(rng.normal(np.log(8), 1.0)))
        limits.append(int(np.clip(wanted, 1, context - 24)))
    return prompts, limits


def timed(fn: Callable, *args) -> tuple[object, float]:
    began = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - began


def plot(
    results: dict,
    requests: list[list[int]],
    engine_sizes: list[int],
    static_useful: list[int],
    out: Path,
) -> Path:
    """Throughput of the three ways, and the useful sequences per forward pass."""
    fig, (bars, occupancy) = figure(panels=2)
    names = list(results)
    rates = [results[name]["tokens/s"] for name in names]
    bars.bar(names, rates, color=["tab:blue", "tab:orange", "tab:grey"])
    for position, rate in enumerate(rates):
        bars.text(position, rate, f"{rate:,.0f}", ha="center", va="bottom")
    bars.set_ylabel("requested tokens per second")
    bars.set_ylim(0, max(rates) * 1.15)
    bars.set_title(f"throughput, {len(requests)} mixed requests")
    occupancy.plot(engine_sizes, label="continuous batching", color="tab:blue")
    occupancy.plot(static_useful, label="static batching", color="tab:orange")
    occupancy.set_xlabel("forward pass")
    occupancy.set_ylabel("sequences that needed a token")
    occupancy.set_title("how full each step's batch was")
    occupancy.set_ylim(0, max(engine_sizes) * 1.4)  # room for the legend
    occupancy.yaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 4, 10]))
    occupancy.legend(loc="upper right", ncols=2)
    ratio = results["continuous"]["tokens/s"] / results["static"]["tokens/s"]
    return save(
        fig,
        out / "engine.png",
        caption=f"Left: throughput of greedy serving of {len(requests)} requests of "
        "mixed lengths "
        f"with the small GPT: continuous batching is {ratio:.1f} times static "
        "batching over the same forward pass. Right: the sequences each forward pass "
        f"served usefully; continuous batching keeps the batch full and needs "
        f"{len(engine_sizes)} passes, static batching {len(static_useful)}.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Compare continuous batching, static batching and HF generate; or serve."""
    parser = argparse.ArgumentParser(
        description="An inference engine with continuous batching: a throughput "
        "comparison, or (--serve) an OpenAI-compatible server.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--requests", type=integer(at_least=1), default=128, help="requests served"
    )
    parser.add_argument(
        "--batch", type=integer(at_least=1), default=16, help="sequences per pass"
    )
    parser.add_argument(
        "--block-size", type=integer(at_least=1), default=16, help="slots per block"
    )
    parser.add_argument(
        "--num-blocks", type=integer(at_least=1), default=128, help="blocks in pool"
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
        help="torch device to serve on",
    )
    parser.add_argument("--out", default="out/engine", help="folder for the figures")
    parser.add_argument("--serve", action="store_true", help="start the HTTP server")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on")
    parser.add_argument(
        "--port",
        type=integer(at_least=1, at_most=65535),
        default=8000,
        help="port to serve on",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer, _, pages = small_gpt(args.device)

    def make_engine() -> Engine:
        return Engine(model, tokenizer, args.num_blocks, args.block_size, args.batch)

    if args.serve:
        print(f"serving small-gpt on http://{args.host}:{args.port}/v1")
        serve(AsyncEngine(make_engine()), "small-gpt", args.host, args.port)
        return {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    context = model.config.n_positions
    prompts, limits = workload(tokenizer, pages, args.requests, context, args.seed)
    greedy = [SamplingParams(max_tokens=m, temperature=0) for m in limits]
    hf = hf_model(model)
    make_engine().generate(prompts[:2], greedy[:2])  # warm-up: first calls allocate
    engine = make_engine()
    runs = {
        "continuous": lambda: engine.generate(prompts, greedy),
        "static": lambda: static_batching(
            model, prompts, limits, args.batch, args.block_size
        ),
        "HF generate": lambda: hf_static_batching(hf, prompts, limits, args.batch),
    }
    results, outputs = {}, {}
    for name, run in tqdm(runs.items(), desc="serving"):
        outputs[name], seconds = timed(run)
        results[name] = {"seconds": seconds, "tokens/s": sum(limits) / seconds}
    static_outputs, static_useful = outputs["static"]
    same = outputs["continuous"] == static_outputs
    same_hf = sum(a == b for a, b in zip(outputs["continuous"], outputs["HF generate"]))
    print(
        f"{args.requests} requests, prompts {min(map(len, prompts))}–"
        f"{max(map(len, prompts))} tokens, max_tokens {min(limits)}–{max(limits)} "
        f"(mean {np.mean(limits):.1f}), {sum(limits)} tokens, batch {args.batch}"
    )
    print(f"{'':14s}{'seconds':>9s}{'tokens/s':>10s}{'passes':>8s}")
    passes = {
        "continuous": engine.stats["steps"],
        "static": len(static_useful),
        "HF generate": len(static_useful),
    }
    for name, result in results.items():
        print(
            f"{name:14s}{result['seconds']:9.2f}{result['tokens/s']:10,.0f}"
            f"{passes[name]:8d}"
        )
    speedup = results["continuous"]["tokens/s"] / results["static"]["tokens/s"]
    speedup_hf = results["continuous"]["tokens/s"] / results["HF generate"]["tokens/s"]
    print(
        f"continuous / static: {speedup:.2f}×; continuous / HF generate: "
        f"{speedup_hf:.2f}×; outputs equal to static batching: {same}; to HF "
        f"generate: {same_hf}/{args.requests}; preemptions: "
        f"{engine.stats['preemptions']}"
    )
    shared = tokenizer.encode_ordinary(pages[0])[:40]
    questions = [shared + prompt[:4] for prompt in prompts[:16]]
    cached = make_engine()
    cached.generate(questions[:1], SamplingParams(max_tokens=4, temperature=0))
    cached.generate(questions[1:], SamplingParams(max_tokens=4, temperature=0))
    hit_rate = cached.stats["cached_tokens"] / cached.stats["prompt_tokens"]
    print(
        f"prefix caching: 16 prompts sharing {len(shared)} tokens; "
        f"{cached.stats['cached_tokens']} of {cached.stats['prompt_tokens']} prompt "
        f"tokens read from the cache ({hit_rate:.0%})"
    )
    plot(results, prompts, engine.batch_sizes, static_useful, out)
    return {
        "tokens_per_s_continuous": results["continuous"]["tokens/s"],
        "tokens_per_s_static": results["static"]["tokens/s"],
        "tokens_per_s_hf": results["HF generate"]["tokens/s"],
        "speedup_over_static": speedup,
        "speedup_over_hf": speedup_hf,
        "outputs_equal_static": float(same),
        "prefix_hit_rate": hit_rate,
    }


if __name__ == "__main__":
    main()

# ## Exercises
#
# 1. Add `n` to the completions endpoint: several samples of one prompt. Fork the
#    prompt's sequence in the paged cache instead of prefilling it `n` times, and
#    count the blocks saved.
# 2. Chunked prefill: a 2,000-token prompt admitted in one step makes every running
#    sequence wait for its prefill. Cap the tokens of a step (vLLM's
#    `max_num_batched_tokens`) and prefill long prompts over several steps. Measure
#    the longest gap between two tokens of a running stream, with and without.
# 3. Add `logprobs` to the completions endpoint (the log-probability of each chosen
#    token and of the `k` likeliest) and check them against `F.log_softmax` of
#    GPT-2's full forward.
# 4. Replace first-come-first-served admission by shortest-prompt-first. What does it
#    do to throughput and to the longest wait, on the demo's workload?
