"""Verified against a full recomputation of the sequence at every step: cached logits
equal it to 1e-12 in float64 (to 1e-6 in float32) for multi-head, grouped-query and
multi-query attention.

Also checked: prompts fed in chunks of any size (hypothesis), a left-padded batch of
prompts of different lengths against each prompt alone, the cache's contents against
the keys and values of a full pass, the attention layer against
F.scaled_dot_product_attention(enable_gqa=True) in values and gradients, a GQA model
against an MHA model with each KV head repeated (values and gradients), the
bottom-right mask against torch's causal_lower_right, the cache-size formula against
the tensors' bytes in float32 and bfloat16 with the prose's Llama-2 numbers, a
1,000-token prompt, saturated softmaxes, a cache saved to safetensors and reloaded
mid-generation, clear errors for overflow and bad arguments, and the demo.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch.nn.attention.bias import causal_lower_right

from annotated.transformers.attention import scaled_dot_product_attention
from annotated.transformers.kv_cache import (
    Config,
    KVCache,
    TinyGPT,
    cache_bytes,
    decoder_mask,
    example,
    generate,
    main,
)

EXACT = dict(rtol=1e-12, atol=1e-12)
KINDS = {"MHA": 6, "GQA": 2, "MQA": 1}  # KV heads for 6 query heads


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(n_kv_heads=2, n_heads=6, d_head=3, n_layers=2, max_len=40, seed=0, **kw):
    """A float64 model; d_head 3 so that 1/sqrt(d_head) is not a power of two."""
    torch.manual_seed(seed)
    config = Config(
        vocab_size=kw.pop("vocab_size", 29),
        max_len=max_len,
        n_layers=n_layers,
        d_model=n_heads * d_head,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
    )
    return TinyGPT(config).double().eval()


def tokens(batch, length, vocab=29, seed=1):
    return torch.randint(
        0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed)
    )


# ------------------------------------------------------ cached == recomputed


@pytest.mark.parametrize("kind", list(KINDS))
def test_cached_generation_equals_recomputation_in_float64(kind):
    model = tiny(KINDS[kind])
    prompt = tokens(3, 7)
    cached = generate(model, prompt, 12, use_cache=True)
    recomputed = generate(model, prompt, 12, use_cache=False)
    assert cached.cache.max_len == 7 + 12 - 1  # the last token is never fed
    torch.testing.assert_close(cached.logits, recomputed.logits, **EXACT)
    assert torch.equal(cached.tokens, recomputed.tokens)
    # and each step's logits are the full forward pass's at that position
    text = torch.cat([prompt, cached.tokens], dim=1)
    with torch.no_grad():
        full = model(text[:, :-1])  # [batch, 18, vocab]
    torch.testing.assert_close(cached.logits, full[:, 6:], **EXACT)
    assert torch.equal(cached.tokens, cached.logits.argmax(dim=-1))


@pytest.mark.parametrize("kind", list(KINDS))
def test_cached_generation_equals_recomputation_in_float32(kind):
    torch.manual_seed(3)
    config = Config(
        vocab_size=64,
        max_len=64,
        n_layers=3,
        d_model=48,
        n_heads=6,
        n_kv_heads=KINDS[kind],
    )
    model = TinyGPT(config).eval()
    prompt = tokens(2, 10, vocab=64)
    cached = generate(model, prompt, 30, use_cache=True)
    recomputed = generate(model, prompt, 30, use_cache=False)
    torch.testing.assert_close(cached.logits, recomputed.logits, rtol=1e-6, atol=1e-6)
    assert torch.equal(cached.tokens, recomputed.tokens)


@given(
    kind=st.sampled_from(list(KINDS)),
    n_layers=st.integers(1, 3),
    d_head=st.sampled_from([1, 2, 3, 8]),
    length=st.integers(1, 24),
    batch=st.integers(1, 3),
    cuts=st.lists(st.integers(1, 23), max_size=6),
)
def test_prompt_fed_in_any_chunks_equals_one_pass(
    kind, n_layers, d_head, length, batch, cuts
):
    """Prefill in pieces (chunked prefill) and single tokens compute the same."""
    model = tiny(KINDS[kind], d_head=d_head, n_layers=n_layers, max_len=24)
    text = tokens(batch, length, seed=length)
    bounds = sorted({0, length, *(c for c in cuts if c < length)})
    cache = KVCache.for_model(model, batch, length)
    with torch.no_grad():
        chunks = [model(text[:, a:b], a, cache) for a, b in zip(bounds, bounds[1:])]
        whole = model(text)
    torch.testing.assert_close(torch.cat(chunks, dim=1), whole, **EXACT)


def test_cache_holds_the_keys_and_values_of_a_full_pass():
    model = tiny(2)
    prompt = tokens(2, 6)
    cached = generate(model, prompt, 9)
    text = torch.cat([prompt, cached.tokens[:, :-1]], dim=1)  # what was fed: 14
    seen = {}
    hooks = [
        getattr(block.attention, role).register_forward_hook(
            lambda m, i, out, key=(layer, role): seen.__setitem__(key, out)
        )
        for layer, block in enumerate(model.blocks)
        for role in ("key", "value")
    ]
    with torch.no_grad():
        model(text)
    for hook in hooks:
        hook.remove()
    for layer in range(2):
        for role, stored in (("key", cached.cache.k), ("value", cached.cache.v)):
            full = seen[layer, role].view(2, 14, 2, 3).transpose(1, 2)  # [B, KVH, S, d]
            torch.testing.assert_close(stored[layer], full, **EXACT)


def test_left_padded_batch_equals_each_prompt_alone():
    model = tiny(2)
    lengths = [7, 3, 5, 1]
    prompts = [tokens(1, n, seed=10 + n)[0] for n in lengths]
    width = max(lengths)
    left_pad = torch.tensor([width - n for n in lengths])
    batch = torch.stack(
        [torch.cat([torch.full((width - len(p),), 28), p]) for p in prompts]
    )  # [4, 7]: any token may pad; the mask hides it
    cached = generate(model, batch, 10, left_pad=left_pad)
    recomputed = generate(model, batch, 10, use_cache=False, left_pad=left_pad)
    torch.testing.assert_close(cached.logits, recomputed.logits, **EXACT)
    assert torch.isfinite(cached.logits).all()
    for row, prompt in enumerate(prompts):
        alone = generate(model, prompt[None], 10)
        torch.testing.assert_close(cached.logits[row], alone.logits[0], **EXACT)
        assert torch.equal(cached.tokens[row], alone.tokens[0])


def test_padding_tokens_do_not_matter():
    model = tiny(3)
    batch = tokens(2, 8)
    left_pad = torch.tensor([5, 0])
    other = batch.clone()
    other[0, :5] = (other[0, :5] + 7) % 29  # change only the padding
    first = generate(model, batch, 6, left_pad=left_pad)
    second = generate(model, other, 6, left_pad=left_pad)
    torch.testing.assert_close(first.logits, second.logits, **EXACT)


def test_long_prompt_of_1000_tokens():
    model = tiny(1, n_heads=2, d_head=4, n_layers=1, max_len=1010, vocab_size=50)
    prompt = tokens(1, 1000, vocab=50)
    cached = generate(model, prompt, 8)
    recomputed = generate(model, prompt, 8, use_cache=False)
    torch.testing.assert_close(cached.logits, recomputed.logits, rtol=1e-11, atol=1e-11)


def test_saturated_softmax_still_matches():
    """Queries scaled by 1e4: every attention row is one-hot to float64 precision."""
    model = tiny(2)
    with torch.no_grad():
        for block in model.blocks:
            block.attention.query.weight.mul_(1e4)
    prompt = tokens(2, 5)
    cached = generate(model, prompt, 8)
    recomputed = generate(model, prompt, 8, use_cache=False)
    torch.testing.assert_close(cached.logits, recomputed.logits, rtol=1e-10, atol=1e-10)


def test_cache_saved_with_safetensors_resumes_generation(tmp_path):
    model = tiny(2)
    prompt = tokens(2, 6)
    whole = generate(model, prompt, 8)
    cache = KVCache.for_model(model, 2, 13)
    with torch.no_grad():
        model(prompt, 0, cache)  # prefill, then save and drop the cache
    save_file({"k": cache.k, "v": cache.v}, tmp_path / "prompt.safetensors")
    del cache
    loaded = load_file(tmp_path / "prompt.safetensors")
    resumed = KVCache.for_model(model, 2, 13)
    resumed.k.copy_(loaded["k"])
    resumed.v.copy_(loaded["v"])
    text = torch.cat([prompt, whole.tokens], dim=1)
    with torch.no_grad():
        for step in range(1, 8):
            logits = model(text[:, 5 + step : 6 + step], 5 + step, resumed)[:, -1]
            torch.testing.assert_close(logits, whole.logits[:, step], **EXACT)


# -------------------------------------------------------- grouped-query attention


def attention_by_torch(attention, x):
    """The layer's projections around F.scaled_dot_product_attention(enable_gqa)."""
    batch, length, _ = x.shape
    h, g, d = attention.n_heads, attention.n_kv_heads, attention.d_head
    q = attention.query(x).view(batch, length, h, d).transpose(1, 2)
    k = attention.key(x).view(batch, length, g, d).transpose(1, 2)
    v = attention.value(x).view(batch, length, g, d).transpose(1, 2)
    heads = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return attention.out(heads.transpose(1, 2).flatten(2))


@pytest.mark.parametrize("kind", list(KINDS))
def test_attention_layer_matches_torch_sdpa_with_enable_gqa(kind):
    attention = tiny(KINDS[kind]).blocks[0].attention
    x = torch.randn(3, 9, 18, dtype=torch.float64, requires_grad=True)
    mask, _ = decoder_mask(0, 9, None, x.device)
    weight = torch.randn(3, 9, 18, dtype=torch.float64)
    results = []
    for fn in (lambda: attention(x, mask), lambda: attention_by_torch(attention, x)):
        output = fn()
        params = [x, *attention.parameters()]
        results.append((output, torch.autograd.grad((output * weight).sum(), params)))
    torch.testing.assert_close(results[0][0], results[1][0], **EXACT)
    for ours, theirs in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(ours, theirs, **EXACT)


@pytest.mark.parametrize("start, length", [(0, 5), (4, 1), (9, 3), (0, 1)])
def test_mask_is_torchs_bottom_right_causal_mask(start, length):
    mask, positions = decoder_mask(start, length, None, torch.device("cpu"))
    expected = causal_lower_right(length, start + length)._materialize()
    assert torch.equal(mask, expected)
    assert positions.tolist() == list(range(start, start + length))


def test_mask_blocks_left_padding_and_shifts_positions():
    mask, positions = decoder_mask(2, 2, torch.tensor([0, 3]), torch.device("cpu"))
    assert mask.shape == (2, 1, 2, 4)
    assert mask[1, 0].tolist() == [[False] * 4, [False] * 3 + [True]]
    assert mask[0, 0].tolist() == [[True] * 3 + [False], [True] * 4]
    assert positions.tolist() == [[2, 3], [0, 0]]


@pytest.mark.parametrize("n_kv_heads", [1, 2, 3])
def test_gqa_equals_mha_with_each_kv_head_repeated(n_kv_heads):
    """Values, and gradients: a shared head's gradient is the sum over its group."""
    grouped = tiny(n_kv_heads)
    multi = tiny(6)
    group = 6 // n_kv_heads
    state = grouped.state_dict()
    for name, tensor in state.items():
        if name.endswith(("key.weight", "key.bias", "value.weight", "value.bias")):
            heads = tensor.unflatten(0, (n_kv_heads, 3))  # [kv_heads, d_head, ...]
            state[name] = heads.repeat_interleave(group, dim=0).flatten(0, 1)
    multi.load_state_dict(state)
    text = tokens(2, 11)
    weight = torch.randn(2, 11, 29, dtype=torch.float64)
    (weight * grouped(text)).sum().backward()
    (weight * multi(text)).sum().backward()
    torch.testing.assert_close(grouped(text), multi(text), **EXACT)
    for (name, ours), (_, theirs) in zip(
        grouped.named_parameters(), multi.named_parameters(), strict=True
    ):
        if name.endswith(("key.weight", "key.bias", "value.weight", "value.bias")):
            theirs_grad = theirs.grad.unflatten(0, (n_kv_heads, group, 3)).sum(dim=1)
            torch.testing.assert_close(ours.grad, theirs_grad.flatten(0, 1), **EXACT)
        else:
            torch.testing.assert_close(ours.grad, theirs.grad, **EXACT)


def test_generation_with_cache_on_gqa_uses_the_shared_head_not_a_copy():
    """MHA with repeats and GQA generate alike; GQA's cache is `group` times smaller."""
    grouped, multi = tiny(2), tiny(6)
    state = grouped.state_dict()
    for name, tensor in state.items():
        if ".key." in name or ".value." in name:
            state[name] = (
                tensor.unflatten(0, (2, 3)).repeat_interleave(3, 0).flatten(0, 1)
            )
    multi.load_state_dict(state)
    prompt = tokens(1, 4)
    a, b = generate(grouped, prompt, 6), generate(multi, prompt, 6)
    torch.testing.assert_close(a.logits, b.logits, **EXACT)
    assert b.cache.nbytes() == 3 * a.cache.nbytes()


# ------------------------------------------------------------- the cache's size


@pytest.mark.parametrize("dtype, size", [(torch.float32, 4), (torch.bfloat16, 2)])
@pytest.mark.parametrize("n_kv_heads", [8, 4, 1])
def test_cache_size_formula_matches_the_tensors(n_kv_heads, dtype, size):
    cache = KVCache(3, 2, n_kv_heads, 50, 16, dtype=dtype)
    measured = sum(t.numel() * t.element_size() for t in (cache.k, cache.v))
    storage = cache.k.untyped_storage().nbytes() + cache.v.untyped_storage().nbytes()
    assert measured == storage == cache.nbytes()
    assert cache.nbytes() == 2 * cache_bytes(3, n_kv_heads, 16, 50, size)  # 2 sequences


def test_bfloat16_model_fills_a_bfloat16_cache_of_half_the_bytes():
    model = tiny(2)
    half = tiny(2).to(torch.bfloat16)
    cached = generate(half, tokens(1, 5), 3)
    assert cached.cache.k.dtype == torch.bfloat16
    assert 2 * cached.cache.nbytes() == KVCache.for_model(model.float(), 1, 7).nbytes()
    assert cached.cache.nbytes() == cache_bytes(2, 2, 3, 7, 2)


def test_the_prose_numbers():
    gib = 2**30
    assert cache_bytes(32, 32, 128, 1, 2) == 512 * 2**10  # Llama-2-7B, per token
    assert cache_bytes(32, 32, 128, 4096, 2) == 2 * gib
    assert 16 * cache_bytes(32, 32, 128, 4096, 2) == 32 * gib > 13.5e9
    assert cache_bytes(80, 8, 128, 1, 2) == 320 * 2**10  # Llama-2-70B, per token
    assert cache_bytes(80, 8, 128, 4096, 2) == 1.25 * gib
    assert cache_bytes(80, 64, 128, 4096, 2) == 10 * gib  # the same model with MHA
    recompute = sum(32 + i for i in range(224))
    cached = 32 + 224 - 1
    assert (recompute, cached, round(recompute / cached)) == (32144, 255, 126)


# ----------------------------------------------------------------- bad input


def test_overflow_raises_before_anything_is_written():
    model = tiny(2, max_len=40)
    cache = KVCache.for_model(model, 1, 6)
    with torch.no_grad():
        model(tokens(1, 5), 0, cache)
        before = cache.k.clone(), cache.v.clone()
        with pytest.raises(ValueError, match=r"positions 5…6 overflows .* max_len 6"):
            model(tokens(1, 2), 5, cache)
        with pytest.raises(ValueError, match="overflows"):
            model(tokens(1, 1), 6, cache)  # pos == max_len
    assert torch.equal(cache.k, before[0]) and torch.equal(cache.v, before[1])
    zeros = torch.zeros(1, 2, 3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="overflows"):
        cache.write(0, 4, zeros, zeros)
    # Why the check: torch broadcasts one token into the empty slice past the end.
    cache.k[0, :, :, 6:7] = torch.ones(1, 2, 1, 3, dtype=torch.float64)
    assert torch.equal(cache.k, before[0])


def test_write_rejects_keys_of_another_shape_or_dtype():
    cache = KVCache(1, 4, 2, 8, 16)
    one_sequence = torch.randn(1, 2, 3, 16)
    with pytest.raises(
        ValueError,
        match=r"KVCache.write: k must be \[batch, kv_heads, "
        r"T, d_head\] = \[4, 2, T, 16\], got \(1, 2, 3, 16\)",
    ):
        cache.write(0, 0, one_sequence, one_sequence)
    good = torch.randn(4, 2, 3, 16)
    with pytest.raises(ValueError, match=r"v must be \[batch, .* got \(4, 2, 3, 8\)"):
        cache.write(0, 0, good, good[..., :8])
    with pytest.raises(ValueError, match=r"v must be \[batch, .* got \(4, 2, 3\)"):
        cache.write(0, 0, good, good[..., 0])
    with pytest.raises(ValueError, match="k and v must have the same shape"):
        cache.write(0, 0, good, good[:, :, :2])
    with pytest.raises(ValueError, match="k must be torch.float32 like the cache"):
        cache.write(0, 0, good.double(), good.double())
    # Why the check: torch broadcasts one sequence's keys into every row.
    cache.k[0, :, :, 0:3] = one_sequence
    assert all(
        torch.equal(cache.k[0, row, :, 0:3], one_sequence[0]) for row in range(4)
    )
    assert torch.equal(cache.v, torch.zeros_like(cache.v))  # nothing was written


def test_write_rejects_a_layer_or_start_outside_the_cache():
    cache = KVCache(3, 1, 2, 8, 4)
    keys = torch.ones(1, 2, 2, 4)
    for layer in (-1, -3, 3, 1.0, True, None):
        message = rf"KVCache.write: layer must be an int in 0\.\.2, got {layer!r}$"
        with pytest.raises(ValueError, match=message):
            cache.write(layer, 0, keys, keys)
    for start in (-1, 2.0, False):
        message = rf"KVCache.write: start must be an int in 0\.\.7 .* got {start!r}$"
        with pytest.raises(ValueError, match=message):
            cache.write(0, start, keys, keys)
    # Why the check: torch reads -1 as the last layer and writes there.
    cache.k[-1, :, :, 0:2] = keys
    assert torch.equal(cache.k[2, :, :, 0:2], keys)
    cache.k.zero_()
    cache.write(2, 6, keys, keys)  # the last layer and the last two slots are valid
    assert torch.equal(cache.k[2, :, :, 6:], keys) and cache.k.sum() == keys.sum()


def test_bad_arguments_are_named():
    model = tiny(2, max_len=10)
    text = tokens(2, 4)
    cache = KVCache.for_model(model, 2, 10)
    with pytest.raises(TypeError, match="tokens must be int64"):
        model(text.double())
    with pytest.raises(ValueError, match=r"tokens must be a \[batch, T\]"):
        model(text[0])
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, vocab_size=29\)"):
        model(text + 29)
    with pytest.raises(ValueError, match="start must be 0 without a cache"):
        model(text, 3)
    with pytest.raises(ValueError, match="exceed the model's max_len 10"):
        model(tokens(2, 11))
    with pytest.raises(ValueError, match="cache must be"):
        model(text, 0, KVCache(2, 2, 6, 10, 3, dtype=torch.float64))  # MHA's cache
    with pytest.raises(ValueError, match="cache must be"):
        model(text, 0, KVCache(2, 2, 2, 10, 3))  # float32
    with pytest.raises(ValueError, match="cache must be"):
        model(text, 0, KVCache.for_model(model, 3, 10))  # another batch
    with pytest.raises(ValueError, match="left_pad must be"):
        model(text, 0, cache, torch.tensor([0]))
    with pytest.raises(ValueError, match="left_pad must be"):
        model(text, 0, cache, torch.tensor([0, 4]))  # no real token
    with pytest.raises(ValueError, match="need 11 positions; the model has max_len 10"):
        generate(model, text, 8)
    with pytest.raises(ValueError, match="new_tokens must be an int"):
        generate(model, text, 0)
    with pytest.raises(ValueError, match="n_kv_heads must divide n_heads 8"):
        Config(n_heads=8, n_kv_heads=3)
    with pytest.raises(ValueError, match="d_model 100 must be divisible"):
        Config(d_model=100, n_heads=8)
    with pytest.raises(ValueError, match="Config: n_layers must be a positive int"):
        Config(n_layers=0)
    with pytest.raises(ValueError, match="KVCache: layers, batch"):
        KVCache(2, 0, 2, 10, 3)


# ---------------------------------------------------------------- the example, demo


def test_example_runs_and_its_dataflow_shapes_are_the_cache():
    from annotated.transformers.kv_cache import dataflow

    fn, args = example()
    output = fn(*args)
    nodes, edges = dataflow(output)
    labels = dict(nodes)
    assert "[2, 2, 2, 8, 8]" in labels["cache"]  # 5 + 4 - 1 slots
    assert {e[0] for e in edges} | {e[1] for e in edges} <= set(labels)


def test_demo_agrees_and_draws(tmp_path):
    metrics = main([
        "--prompt-len", "6", "--new-tokens", "20", "--layers", "2",
        "--d-model", "32", "--heads", "4", "--gqa-kv-heads", "2",
        "--out", str(tmp_path), "--device", "cpu",
    ])  # fmt: skip
    assert metrics["tokens_agree"] == 1.0
    assert metrics["max_logit_gap"] < 1e-5
    assert all(metrics[f"speedup_{k}"] > 0 for k in ("mha", "gqa", "mqa"))
    assert (tmp_path / "kv_cache.png").stat().st_size > 1000


# ------------------------------------------------------------------ benchmarks


def bench_model():
    torch.manual_seed(0)
    config = Config(
        vocab_size=256, max_len=96, n_layers=2, d_model=128, n_heads=8, n_kv_heads=8
    )
    return TinyGPT(config).eval(), tokens(1, 32, vocab=256)


@pytest.mark.benchmark(group="greedy generation of 64 tokens after 32, 2 × 128 wide")
def test_bench_generation_recompute(benchmark):
    benchmark.extra_info["label"] = "recompute every step"
    benchmark.extra_info["baseline"] = True
    model, prompt = bench_model()
    benchmark(generate, model, prompt, 64, False)


@pytest.mark.benchmark(group="greedy generation of 64 tokens after 32, 2 × 128 wide")
def test_bench_generation_cached(benchmark):
    benchmark.extra_info["label"] = "KV cache"
    model, prompt = bench_model()
    benchmark(generate, model, prompt, 64, True)


DECODE_GROUP = "one decoding step's attention, GQA 8/2 heads, 1024 cached"


def decode_step_inputs():
    """Batch 4, 8 query heads on 2 KV heads, 1 query over a 1024-token cache, d 64."""
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(4, 8, 1, 64, generator=generator)
    k, v = (torch.randn(4, 2, 1024, 64, generator=generator) for _ in range(2))
    return q, k, v


@pytest.mark.benchmark(group=DECODE_GROUP)
def test_bench_decode_attention_torch(benchmark):
    benchmark.extra_info["label"] = "F.scaled_dot_product_attention(enable_gqa=True)"
    benchmark.extra_info["baseline"] = True
    q, k, v = decode_step_inputs()
    benchmark(F.scaled_dot_product_attention, q, k, v, enable_gqa=True)


@pytest.mark.benchmark(group=DECODE_GROUP)
def test_bench_decode_attention_ours(benchmark):
    benchmark.extra_info["label"] = "ours (group folded into the query rows)"
    q, k, v = decode_step_inputs()
    folded = q.view(4, 2, 4, 64)  # [batch, kv_heads, group·1, d_head]
    mask = torch.ones(4, 1024, dtype=torch.bool)  # [group·1, S]
    benchmark(scaled_dot_product_attention, folded, k, v, mask)


@pytest.mark.benchmark(group=DECODE_GROUP)
def test_bench_decode_attention_broadcast(benchmark):
    benchmark.extra_info["label"] = "a broadcast group axis (matmul copies the keys)"
    q, k, v = decode_step_inputs()
    grouped = q.view(4, 2, 4, 1, 64)  # [batch, kv_heads, group, 1, d_head]
    mask = torch.ones(1, 1024, dtype=torch.bool)
    benchmark(scaled_dot_product_attention, grouped, k[:, :, None], v[:, :, None], mask)


def grow(write):
    """Append 512 steps of keys and values, batch 4, 2 KV heads, d 64, 4 layers."""
    new = torch.randn(4, 2, 1, 64)

    def run():
        state = write(None, 0, new)
        for step in range(1, 512):
            state = write(state, step, new)
        return state

    return run


def cat_write(state, step, new):
    if state is None:
        return [(new, new) for _ in range(4)]
    return [(torch.cat([k, new], dim=2), torch.cat([v, new], dim=2)) for k, v in state]


def preallocated_write(state, step, new):
    cache = state or KVCache(4, 4, 2, 512, 64)
    for layer in range(4):
        cache.write(layer, step, new, new)
    return cache


@pytest.mark.benchmark(group="growing a cache for 512 steps, 4 layers")
def test_bench_grow_cat(benchmark):
    benchmark.extra_info["label"] = "torch.cat per step (DynamicCache's way)"
    benchmark.extra_info["baseline"] = True
    benchmark(grow(cat_write))


@pytest.mark.benchmark(group="growing a cache for 512 steps, 4 layers")
def test_bench_grow_preallocated(benchmark):
    benchmark.extra_info["label"] = "preallocated KVCache.write"
    benchmark(grow(preallocated_write))
