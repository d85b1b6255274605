"""Verified against GPT-2's full forward (annotated.llm.gpt2) and the attention of a
contiguous KV cache (F.scaled_dot_product_attention) in float64, to 1e-10, at odd
lengths that cross block boundaries, for batches of mixed prefills and decoding steps.

Also checked: greedy continuations equal gpt2.generate's; fork and copy-on-write leave
the parent's cache intact and every reference count returns to zero; the allocator's
errors (out of blocks, atomically; double free); the memory count against its formula;
bad input; and the demo.
"""

import random

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import annotated.serving.paged_attention as paged_attention_module
from annotated.llm.bpe import train
from annotated.llm.gpt2 import GPT2, GPT2Config, generate
from annotated.serving.paged_attention import (
    BlockAllocator,
    OutOfBlocks,
    PagedKVCache,
    example,
    main,
    memory_waste,
    paged_attention,
    paged_forward,
    paged_generate,
)

EXACT = dict(rtol=1e-10, atol=1e-10)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(n_positions=48, seed=0):
    """A float64 GPT-2 with heads of width 3, so that 1/sqrt(d_head) is inexact."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=37,
        n_positions=n_positions,
        n_embd=12,
        n_layer=2,
        n_head=4,
        dropout=0.0,
    )
    return GPT2(config).double().eval()


def random_tokens(n, seed, vocab=37):
    return random.Random(seed).choices(range(vocab), k=n)


def full_logits(model, tokens):
    """GPT-2's logits at the last position of `tokens`, without any cache."""
    return model(torch.tensor([tokens]))[0, -1]


def test_prefill_then_decode_matches_full_forward_at_every_step():
    model = tiny()
    cache = PagedKVCache.for_model(model, num_blocks=64, block_size=3)
    texts = [random_tokens(n, seed) for seed, n in enumerate((1, 5, 7, 11))]
    for seq in range(4):
        cache.add(seq)
    logits = paged_forward(model, cache, [0, 1, 2, 3], texts)
    for seq, text in enumerate(texts):
        torch.testing.assert_close(logits[seq], full_logits(model, text), **EXACT)
    for step in range(9):  # decoding steps cross several block boundaries
        new = [[(7 * seq + step) % 37] for seq in range(4)]
        logits = paged_forward(model, cache, [0, 1, 2, 3], new)
        for seq in range(4):
            texts[seq] = texts[seq] + new[seq]
            torch.testing.assert_close(
                logits[seq], full_logits(model, texts[seq]), **EXACT
            )
    assert cache.lengths == {seq: len(text) for seq, text in enumerate(texts)}


@given(
    chunks=st.lists(
        st.lists(st.integers(1, 6), min_size=1, max_size=4), min_size=1, max_size=4
    ),
    block_size=st.integers(1, 5),
)
def test_any_mix_of_chunks_matches_full_forward(chunks, block_size):
    """Sequences fed in chunks of any size, batched in any mix of lengths."""
    model = tiny()
    cache = PagedKVCache.for_model(model, num_blocks=80, block_size=block_size)
    texts = {}
    for seq, sizes in enumerate(chunks):
        cache.add(seq)
        texts[seq] = []
    for round_ in range(max(map(len, chunks))):
        seqs = [seq for seq, sizes in enumerate(chunks) if round_ < len(sizes)]
        new = [random_tokens(chunks[s][round_], 100 * s + round_) for s in seqs]
        logits = paged_forward(model, cache, seqs, new)
        for row, (seq, tokens) in enumerate(zip(seqs, new)):
            texts[seq] += tokens
            torch.testing.assert_close(
                logits[row], full_logits(model, texts[seq]), **EXACT
            )


def test_cache_holds_the_keys_and_values_of_a_full_pass():
    model = tiny()
    cache = PagedKVCache.for_model(model, num_blocks=10, block_size=4)
    cache.add(0)
    text = random_tokens(10, 3)
    paged_forward(model, cache, [0], [text])
    x = model.wte(torch.tensor(text)) + model.wpe(torch.arange(10))
    block = model.h[0]
    _, k, _ = block.attn.c_attn(block.ln_1(x)).split(12, dim=-1)  # [10, 12]
    table = cache.tables[0]
    stored = torch.cat([cache.k[0, b] for b in table]).flatten(1)[:10]  # [10, 12]
    torch.testing.assert_close(stored, k, **EXACT)


def test_paged_attention_equals_contiguous_cache_attention():
    """Keys scattered into random blocks give the attention of the contiguous ones."""
    generator = torch.Generator().manual_seed(0)
    heads, d, block_size, lengths, new = 3, 5, 4, [9, 4, 13], [3, 1, 5]
    pool_k = torch.randn(20, block_size, heads, d, dtype=torch.float64)
    pool_v = torch.randn_like(pool_k)
    free = torch.randperm(20, generator=generator).tolist()
    tables, queries, expected = [], [], []
    for length, n in zip(lengths, new):
        k = torch.randn(length, heads, d, dtype=torch.float64, generator=generator)
        v = torch.randn_like(k)
        table = [free.pop() for _ in range(-(-length // block_size))]
        for t in range(length):
            pool_k[table[t // block_size], t % block_size] = k[t]
            pool_v[table[t // block_size], t % block_size] = v[t]
        q = torch.randn(n, heads, d, dtype=torch.float64, generator=generator)
        # The last n tokens are the new ones: a bottom-right causal mask.
        mask = torch.ones(n, length, dtype=torch.bool).tril(length - n)
        expected.append(
            F.scaled_dot_product_attention(
                q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), mask
            ).transpose(0, 1)
        )
        tables.append(table)
        queries.append(q)
    width, rows = max(new), max(map(len, tables))
    padded_q = torch.zeros(3, width, heads, d, dtype=torch.float64)
    for i, q in enumerate(queries):
        padded_q[i, : len(q)] = q
    block_tables = torch.tensor([t + [0] * (rows - len(t)) for t in tables])
    lens = torch.tensor(lengths)
    positions = lens[:, None] - torch.tensor(new)[:, None] + torch.arange(width)
    out = paged_attention(padded_q, pool_k, pool_v, block_tables, lens, positions)
    for i, n in enumerate(new):
        torch.testing.assert_close(out[i, :n], expected[i], **EXACT)


def test_greedy_continuations_equal_gpt2_generate():
    model = tiny()
    cache = PagedKVCache.for_model(model, num_blocks=40, block_size=5)
    prompts = [random_tokens(n, n) for n in (2, 9, 14)]
    outputs = paged_generate(model, cache, prompts, 12)
    for prompt, output in zip(prompts, outputs):
        reference = generate(model, torch.tensor([prompt]), 12, temperature=0)
        assert output == reference[0, len(prompt) :].tolist()
    assert cache.allocator.num_free == 40 and not cache.tables


def test_fork_and_copy_on_write_keep_the_parent_intact():
    model = tiny()
    cache = PagedKVCache.for_model(model, num_blocks=12, block_size=4)
    cache.add(0)
    prompt = random_tokens(10, 1)  # two full blocks and a half-filled one
    paged_forward(model, cache, [0], [prompt])
    parent_blocks = list(cache.tables[0])
    snapshot_k, snapshot_v = cache.k.clone(), cache.v.clone()
    cache.fork(0, 1)
    cache.fork(0, 2)
    assert [cache.allocator.refcounts[b] for b in parent_blocks] == [3, 3, 3]
    assert cache.allocator.num_free == 9  # forks take no block
    children = {1: [5], 2: [9]}
    logits = paged_forward(model, cache, [1, 2], [children[1], children[2]])
    for row, seq in enumerate((1, 2)):
        expected = full_logits(model, prompt + children[seq])
        torch.testing.assert_close(logits[row], expected, **EXACT)
        # The full blocks are still shared; the half-filled one was copied.
        assert cache.tables[seq][:2] == parent_blocks[:2]
        assert cache.tables[seq][2] not in parent_blocks
    for block in parent_blocks:  # the parent's blocks were not written
        torch.testing.assert_close(cache.k[:, block], snapshot_k[:, block], **EXACT)
        torch.testing.assert_close(cache.v[:, block], snapshot_v[:, block], **EXACT)
    assert [cache.allocator.refcounts[b] for b in parent_blocks] == [3, 3, 1]
    logits = paged_forward(model, cache, [0], [[3]])  # the parent writes in place
    torch.testing.assert_close(logits[0], full_logits(model, prompt + [3]), **EXACT)
    assert cache.tables[0] == parent_blocks
    for seq in (1, 0, 2):
        cache.free(seq)
    assert cache.allocator.refcounts == [0] * 12
    assert cache.allocator.num_free == 12


def test_out_of_blocks_is_raised_before_anything_changes():
    model = tiny()
    cache = PagedKVCache.for_model(model, num_blocks=4, block_size=4)
    cache.add(0)
    cache.add(1)
    paged_forward(model, cache, [0], [random_tokens(10, 0)])  # 3 blocks
    tables, lengths, free = (
        dict(cache.tables),
        dict(cache.lengths),
        cache.allocator.num_free,
    )
    with pytest.raises(OutOfBlocks, match="needs 2 blocks"):
        paged_forward(model, cache, [0, 1], [[1, 2, 3], [4]])
    assert cache.tables == tables and cache.lengths == lengths
    assert cache.allocator.num_free == free
    with pytest.raises(OutOfBlocks, match="needs 2 blocks for 5 tokens"):
        cache.reserve(1, 5)
    allocator = BlockAllocator(2, 3)
    allocator.allocate(), allocator.allocate()
    with pytest.raises(OutOfBlocks, match="all 2 blocks"):
        allocator.allocate()


def test_copy_on_write_counts_its_block_before_anything_changes():
    # A forked sequence whose last block is half full needs one block for its copy
    # even when the new token fits in that block; with no block free, reserving must
    # refuse and leave tables, lengths and reference counts as they were.
    cache = PagedKVCache(1, 1, 1, num_blocks=2, block_size=4)
    cache.add(0)
    cache.reserve(0, 6)  # one full block and a half-filled one: none left free
    cache.fork(0, 1)
    assert cache.blocks_needed(1, 1) == 1 and cache.blocks_needed(1, 2) == 1
    assert cache.blocks_needed(1, 3) == 2 and cache.blocks_needed(1, 0) == 0
    assert cache.blocks_needed(0, 2) == 1  # the parent shares it too: it copies as well
    tables, lengths = {k: list(v) for k, v in cache.tables.items()}, dict(cache.lengths)
    refcounts = list(cache.allocator.refcounts)
    with pytest.raises(OutOfBlocks, match="needs 1 blocks for 1 tokens"):
        cache.reserve(1, 1)
    assert cache.tables == tables and cache.lengths == lengths
    assert cache.allocator.refcounts == refcounts == [2, 2]


def test_allocator_errors():
    allocator = BlockAllocator(3, 2)
    block = allocator.allocate()
    allocator.free(block)
    with pytest.raises(ValueError, match="double free"):
        allocator.free(block)
    with pytest.raises(ValueError, match="is free"):
        allocator.share(block)
    with pytest.raises(ValueError, match=r"block must be in \[0, 3\)"):
        allocator.free(7)
    with pytest.raises(ValueError, match="num_blocks must be a positive int"):
        BlockAllocator(0, 2)
    with pytest.raises(ValueError, match="block_size must be a positive int"):
        BlockAllocator(2, True)
    with pytest.raises(ValueError, match="num_blocks and block_size must match"):
        PagedKVCache(1, 1, 2, num_blocks=4, block_size=2, allocator=allocator)
    # A freed block goes to the back of the queue: the oldest free one comes first.
    first, second = allocator.allocate(), allocator.allocate()
    allocator.free(first)
    assert allocator.allocate() != first
    assert allocator.num_free == 1 and second != first


def test_bad_batches_raise_clear_errors():
    model = tiny(n_positions=8)
    cache = PagedKVCache.for_model(model, num_blocks=8, block_size=4)
    cache.add(0)
    with pytest.raises(ValueError, match="no sequence 3"):
        paged_forward(model, cache, [3], [[1]])
    with pytest.raises(ValueError, match="equal length"):
        paged_forward(model, cache, [0], [[1], [2]])
    with pytest.raises(ValueError, match="brings no new token"):
        paged_forward(model, cache, [0], [[]])
    with pytest.raises(ValueError, match=r"ids outside \[0, 37\)"):
        paged_forward(model, cache, [0], [[40]])
    with pytest.raises(ValueError, match="n_positions is 8"):
        paged_forward(model, cache, [0], [list(range(9))])
    with pytest.raises(ValueError, match="distinct"):
        paged_forward(model, cache, [0, 0], [[1], [2]])
    with pytest.raises(ValueError, match="already in the cache"):
        cache.add(0)
    assert cache.lengths[0] == 0 and cache.allocator.num_free == 8


def test_memory_waste_matches_its_formula():
    lengths = [1, 5, 16, 17, 100, 2048]
    result = memory_waste(lengths, 2048, 16)
    reserved = sum(16 * -(-n // 16) for n in lengths)
    assert result["paged_reserved"] == reserved
    assert result["paged_waste"] == pytest.approx(1 - sum(lengths) / reserved)
    assert result["preallocated_waste"] == pytest.approx(1 - sum(lengths) / (6 * 2048))
    assert memory_waste(lengths, 2048, 1)["paged_waste"] == 0
    with pytest.raises(ValueError, match="lengths must be in"):
        memory_waste([3000], 2048, 16)


def test_example_runs():
    fn, args = example()
    logits = fn(*args)
    assert logits.shape == (3, 64)


def test_demo_decodes_and_measures(tmp_path, monkeypatch):
    """The demo on a tiny random GPT-2 in place of the pretrained one."""
    text = "Blocks of the cache are handed out one at a time, as sequences grow. " * 3
    tokenizer = train(text, 30)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=tokenizer.vocabulary_size,
        n_positions=24,
        n_embd=16,
        n_layer=1,
        n_head=2,
        dropout=0.0,
    )
    pages = [text] * 3
    monkeypatch.setattr(
        paged_attention_module,
        "small_gpt",
        lambda device: (GPT2(config).to(device).eval(), tokenizer, pages, pages),
    )
    result = main(
        [
            "--prompts",
            "3",
            "--new-tokens",
            "6",
            "--sequences",
            "200",
            "--out",
            str(tmp_path),
        ]
    )
    assert result["continuations_equal"] == 1.0
    assert result["preallocated_waste"] > 0.5
    assert result["paged_waste_16"] < 0.05
    assert result["capacity_gain_16"] > 2
    assert (tmp_path / "paged_attention.png").is_file()


# ------------------------------------------------------------------ benchmarks

DECODE_GROUP = "one decoding step of 8 sequences of 40 tokens, tiny GPT-2"


def decode_setup():
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=4, dropout=0.0
    )
    model = GPT2(config).eval()
    texts = torch.randint(0, 256, (8, 40), generator=torch.Generator().manual_seed(1))
    return model, texts


@pytest.mark.benchmark(group=DECODE_GROUP)
def test_bench_decode_step_recompute(benchmark):
    benchmark.extra_info["label"] = "GPT2 full forward (no cache)"
    benchmark.extra_info["baseline"] = True
    model, texts = decode_setup()
    with torch.no_grad():
        benchmark(model, texts)


@pytest.mark.benchmark(group=DECODE_GROUP)
def test_bench_decode_step_paged(benchmark):
    benchmark.extra_info["label"] = "paged_forward, blocks of 16"
    model, texts = decode_setup()
    cache = PagedKVCache.for_model(model, num_blocks=64, block_size=16)
    for seq in range(8):
        cache.add(seq)
    paged_forward(model, cache, list(range(8)), texts[:, :-1].tolist())
    last = [[t] for t in texts[:, -1].tolist()]

    def step():
        logits = paged_forward(model, cache, list(range(8)), last)
        for seq in range(8):  # undo the step: the next round decodes the same token
            cache.lengths[seq] -= 1
        return logits

    benchmark(step)
