"""Verified against each paper's formula in float64 (to 1e-12), Hugging Face's LLaMA
rotary code and BLOOM's ALiBi slopes, Shaw et al.'s equations written as loops (values
and gradients to 1e-10) and F.scaled_dot_product_attention with the same ALiBi mask.

Checked besides: the sinusoids' shift is one rotation for every position (hypothesis
over offsets), RoPE's score depends only on m - n (hypothesis over shifts, both
conventions) and the two conventions differ by a fixed reordering, ALiBi's slopes for 8
and 12 heads written out, attention without positions sees a bag and with them does
not, every model is causal, a learned table refuses positions it has no row for, a
safetensors round trip, long and far positions, and the demo's length-generalisation
ordering on a short run.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from annotated.transformers.attention import scaled_dot_product_attention
from annotated.transformers.positional import (
    ENCODINGS,
    PAD,
    Config,
    LearnedPositions,
    PositionalAttention,
    RelativePositions,
    Transformer,
    alibi_bias,
    alibi_slopes,
    apply_rope,
    example,
    main,
    offset_copy_batch,
    relative_buckets,
    rope_frequencies,
    sinusoidal_encoding,
    sinusoidal_shift,
)

# Hugging Face's LLaMA rotary code and BLOOM's ALiBi tensor are the references.
from transformers import LlamaConfig  # noqa: E402
from transformers.models.bloom.modeling_bloom import build_alibi_tensor  # noqa: E402
from transformers.models.llama.modeling_llama import (  # noqa: E402
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

EXACT = dict(rtol=1e-12, atol=1e-12)


pytestmark = pytest.mark.usefixtures("one_thread")


def randn(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


# ---------------------------------------------------------------- sinusoidal


@pytest.mark.parametrize("dim", [2, 6, 16])
def test_sinusoidal_matches_the_formula_in_float64(dim):
    positions = torch.tensor([0, 1, 2, 7, 63, 100, 4095, 9999])
    ours = sinusoidal_encoding(positions, dim, dtype=torch.float64)
    expected = torch.tensor(
        [
            [
                math.sin(p / 10000 ** (2 * (c // 2) / dim))
                if c % 2 == 0
                else math.cos(p / 10000 ** (2 * (c // 2) / dim))
                for c in range(dim)
            ]
            for p in positions.tolist()
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)
    assert ours[0, 0::2].abs().max() == 0 and (ours[0, 1::2] == 1).all()


@given(offset=st.integers(-300, 300), dim=st.sampled_from([2, 8, 30]))
def test_sinusoidal_shift_is_one_rotation_for_every_position(offset, dim):
    positions = torch.arange(0, 10_000, 37)
    table = sinusoidal_encoding(positions, dim, dtype=torch.float64)  # [n, dim]
    shifted = sinusoidal_encoding(positions + offset, dim, dtype=torch.float64)
    shift = sinusoidal_shift(offset, dim)
    torch.testing.assert_close(table @ shift.T, shifted, rtol=0, atol=1e-9)
    identity = torch.eye(dim, dtype=torch.float64)
    torch.testing.assert_close(shift @ shift.T, identity, rtol=0, atol=1e-12)
    composed = sinusoidal_shift(offset, dim) @ sinusoidal_shift(5, dim)
    torch.testing.assert_close(composed, sinusoidal_shift(offset + 5, dim), **EXACT)


def test_sinusoidal_rejects_an_odd_width():
    with pytest.raises(ValueError, match="dim must be even"):
        sinusoidal_encoding(torch.arange(4), 7)
    with pytest.raises(ValueError, match="dim must be even"):
        sinusoidal_shift(3, 0)


# ---------------------------------------------------------------- learned


def test_learned_table_refuses_positions_it_has_no_row_for():
    table = LearnedPositions(64, 8)
    assert table(torch.arange(64)).shape == (64, 8)
    with pytest.raises(ValueError, match=r"positions must lie in \[0, 64\).*0\.\.64"):
        table(torch.arange(65))
    with pytest.raises(ValueError, match="no row past its length"):
        table(torch.tensor([-1, 3]))


def test_learned_model_clamps_past_its_table_so_late_positions_look_alike():
    torch.manual_seed(0)
    model = Transformer(Config("learned", max_len=8)).double().eval()
    tokens = torch.randint(16, (2, 20))
    with torch.no_grad():
        embedded = (
            model.embedding(tokens)
            + model.positions.table.weight[torch.arange(20).clamp(max=7)]
        )
        assert model(tokens).shape == (2, 20, 16)
    # Positions 7, 8, ..., 19 all received the same row:
    rows = embedded - model.embedding(tokens)
    torch.testing.assert_close(rows[:, 7:], rows[:, 7:8].expand_as(rows[:, 7:]))


# ---------------------------------------------------------------- relative


def shaw_attention_loops(layer, x):
    """Shaw et al.'s equations (3)-(4) as loops over i and j, with the causal mask,
    from the layer's own projections and tables."""
    batch, length, _ = x.shape
    heads, d = layer.heads, layer.head_dim
    k_max = layer.relative.max_distance
    q, k, v = layer.qkv(x).unflatten(-1, (3, heads, d)).permute(2, 0, 3, 1, 4)
    rows = []
    for b in range(batch):
        per_head = []
        for h in range(heads):
            outputs = []
            for i in range(length):
                scores = []
                for j in range(i + 1):
                    r = max(-k_max, min(k_max, j - i)) + k_max
                    key = k[b, h, j] + layer.relative.key_table[r]
                    scores.append(q[b, h, i] @ key / math.sqrt(d))
                alpha = torch.softmax(torch.stack(scores), dim=0)
                z = sum(
                    alpha[j]
                    * (
                        v[b, h, j]
                        + layer.relative.value_table[
                            max(-k_max, min(k_max, j - i)) + k_max
                        ]
                    )
                    for j in range(i + 1)
                )
                outputs.append(z)
            per_head.append(torch.stack(outputs))  # [L, d]
        rows.append(torch.cat(per_head, dim=-1))  # [L, heads·d]
    return layer.out(torch.stack(rows))  # [batch, L, d_model]


def test_relative_attention_matches_shaws_equations_as_loops():
    torch.manual_seed(0)
    layer = PositionalAttention(
        Config("relative", d_model=8, heads=2, max_distance=2)
    ).double()
    x = randn(2, 7, 8, seed=1)  # 7 positions: distances up to 6, clipped at 2
    parameters = [x.requires_grad_(), *layer.parameters()]
    ours = layer(x)
    reference = shaw_attention_loops(layer, x)
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)
    weight = randn(*ours.shape, seed=2)
    got = torch.autograd.grad((ours * weight).sum(), parameters)
    want = torch.autograd.grad((reference * weight).sum(), parameters)
    for g, h in zip(got, want, strict=True):
        torch.testing.assert_close(g, h, rtol=1e-10, atol=1e-12)
    # Only the k + 1 = 3 distances -2..0 occur under a causal mask:
    names = ["x"] + [name for name, _ in layer.named_parameters()]
    for table in ("relative.key_table", "relative.value_table"):
        rows = dict(zip(names, got))[table].norm(dim=1)  # [2k + 1]
        assert (rows[3:] == 0).all() and (rows[:3] > 0).all()


def test_relative_tables_gather_and_scatter_like_the_direct_form():
    """Queries at positions 5..8 against keys 0..9: distances of both signs, clipped
    both ways, a rectangular score matrix."""
    torch.manual_seed(0)
    tables = RelativePositions(3, 4).double()
    # One row per clipped distance, -3 to 3: Shaw et al.'s 2k + 1.
    assert tables.key_table.shape == tables.value_table.shape == (7, 4)
    buckets = relative_buckets(torch.arange(5, 9), torch.arange(10), 3)  # [4, 10]
    assert buckets.min() == 0 and buckets.max() == 6
    query = randn(2, 3, 4, 4, seed=1)  # [batch, heads, L, d]
    weights = torch.softmax(randn(2, 3, 4, 10, seed=2), dim=-1)
    a_key = tables.key_table[buckets]  # [L, S, d]: a^K_ij written out
    a_value = tables.value_table[buckets]
    torch.testing.assert_close(
        tables.key_scores(query, buckets),
        torch.einsum("bhld,lsd->bhls", query, a_key),
        **EXACT,
    )
    torch.testing.assert_close(
        tables.value_term(weights, buckets),
        torch.einsum("bhls,lsd->bhld", weights, a_value),
        **EXACT,
    )


def test_relative_rejects_a_zero_clip():
    with pytest.raises(ValueError, match="max_distance must be >= 1"):
        RelativePositions(0, 4)


# ---------------------------------------------------------------- RoPE


def rope_complex(x, positions, halves=False, base=10000.0):
    """The paper's form: pairs as complex numbers times e^{i m theta_j} (Meta's LLaMA
    code for adjacent pairs)."""
    d = x.shape[-1]
    if halves:
        pairs = torch.stack([x[..., : d // 2], x[..., d // 2 :]], dim=-1)
    else:
        pairs = x.unflatten(-1, (d // 2, 2))
    z = torch.view_as_complex(pairs.contiguous())  # [..., L, d/2]
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = positions.double()[:, None] * theta
    rotated = torch.view_as_real(z * torch.polar(torch.ones_like(angles), angles))
    if halves:
        return torch.cat([rotated[..., 0], rotated[..., 1]], dim=-1)
    return rotated.flatten(-2)


@pytest.mark.parametrize("interleaved", [True, False])
def test_rope_matches_the_complex_number_form(interleaved):
    x = randn(2, 3, 9, 12)
    positions = torch.tensor([0, 1, 2, 5, 17, 64, 255, 1000, 65535])
    ours = apply_rope(x, positions, interleaved=interleaved)
    reference = rope_complex(x, positions, halves=not interleaved)
    torch.testing.assert_close(ours, reference, **EXACT)
    torch.testing.assert_close(ours.norm(dim=-1), x.norm(dim=-1), **EXACT)


def test_rope_half_split_matches_hugging_face_llama():
    head_dim = 16
    config = LlamaConfig(
        hidden_size=64,
        num_attention_heads=4,
        head_dim=head_dim,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    rotary = LlamaRotaryEmbedding(config)
    torch.testing.assert_close(
        rope_frequencies(head_dim), rotary.inv_freq, rtol=1e-6, atol=0
    )
    # Hugging Face's rotation with cos and sin in float64 from our frequencies:
    positions = torch.arange(40)
    angles = positions.double()[:, None] * rope_frequencies(
        head_dim, dtype=torch.float64
    )
    emb = torch.cat([angles, angles], dim=-1)[None]  # [1, L, d]
    q, k = randn(1, 4, 40, head_dim, seed=1), randn(1, 4, 40, head_dim, seed=2)
    hf_q, hf_k = apply_rotary_pos_emb(q, k, emb.cos(), emb.sin())
    torch.testing.assert_close(apply_rope(q, positions), hf_q, **EXACT)
    torch.testing.assert_close(apply_rope(k, positions), hf_k, **EXACT)
    # And Hugging Face's own cos/sin, in float32:
    cos, sin = rotary(q.float(), positions[None])
    hf_q32, _ = apply_rotary_pos_emb(q.float(), k.float(), cos, sin)
    torch.testing.assert_close(
        apply_rope(q.float(), positions), hf_q32, rtol=1e-5, atol=1e-5
    )


def test_the_two_conventions_differ_by_a_fixed_reordering():
    """Meta's adjacent pairs are Hugging Face's halves after putting the even
    coordinates first: what the checkpoint converter's `permute` does to W^Q, W^K."""
    d = 10
    x = randn(3, 7, d)
    positions = torch.arange(3, 10)
    evens_first = torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])
    back = torch.argsort(evens_first)
    interleaved = apply_rope(x, positions, interleaved=True)
    half = apply_rope(x[..., evens_first], positions)[..., back]
    torch.testing.assert_close(interleaved, half, **EXACT)
    assert not torch.allclose(interleaved, apply_rope(x, positions))


@given(
    m=st.integers(0, 5000),
    n=st.integers(0, 5000),
    shift=st.integers(-5000, 5000),
    interleaved=st.booleans(),
)
def test_rope_score_depends_only_on_the_distance(m, n, shift, interleaved):
    q, k = randn(1, 16, seed=m % 7), randn(1, 16, seed=100 + n % 5)

    def score(a, b):
        rotated_q = apply_rope(q, torch.tensor([a]), interleaved=interleaved)
        rotated_k = apply_rope(k, torch.tensor([b]), interleaved=interleaved)
        return (rotated_q * rotated_k).sum()

    if min(m, n) + shift < 0:
        shift = -min(m, n)
    torch.testing.assert_close(
        score(m + shift, n + shift), score(m, n), **dict(rtol=1e-9, atol=1e-9)
    )


def test_rope_without_a_distance_is_the_plain_dot_product():
    q, k = randn(5, 8, seed=1), randn(5, 8, seed=2)
    same = torch.full((5,), 1234)
    rotated = (apply_rope(q, same) * apply_rope(k, same)).sum(-1)
    torch.testing.assert_close(rotated, (q * k).sum(-1), **EXACT)


def test_rope_rejects_bad_shapes():
    with pytest.raises(ValueError, match="even d"):
        apply_rope(torch.randn(4, 7), torch.arange(4))
    with pytest.raises(ValueError, match=r"positions must be \[seq\] = \[4\]"):
        apply_rope(torch.randn(4, 8), torch.arange(5))


# ---------------------------------------------------------------- ALiBi


def test_alibi_slopes_for_8_and_12_heads_written_out():
    assert alibi_slopes(8) == [
        1 / 2,
        1 / 4,
        1 / 8,
        1 / 16,
        1 / 32,
        1 / 64,
        1 / 128,
        1 / 256,
    ]
    expected_12 = [2.0**-e for e in (1, 2, 3, 4, 5, 6, 7, 8, 0.5, 1.5, 2.5, 3.5)]
    assert alibi_slopes(12) == pytest.approx(expected_12, rel=1e-15)
    assert alibi_slopes(1) == [2.0**-8]
    assert alibi_slopes(16)[:2] == pytest.approx([2**-0.5, 2**-1.0], rel=1e-15)


@pytest.mark.parametrize("heads", [1, 2, 3, 5, 6, 8, 12, 16, 20, 24, 40, 64])
def test_alibi_slopes_match_bloom(heads):
    alibi = build_alibi_tensor(torch.ones(1, 5), heads, torch.float32)  # [H, 1, 5]
    bloom = alibi[:, 0, 1]  # slope · position 1
    torch.testing.assert_close(
        torch.tensor(alibi_slopes(heads), dtype=torch.float32), bloom, rtol=1e-6, atol=0
    )


def test_alibi_bias_values():
    bias = alibi_bias(torch.tensor([0.5, 0.25]), torch.arange(4))
    assert bias.shape == (2, 4, 4)
    assert bias[0, 3].tolist() == [-1.5, -1.0, -0.5, 0.0]
    assert bias[1, 1].tolist() == [-0.25, 0.0, -0.25, -0.5]


def test_alibi_attention_matches_torch_sdpa_with_the_same_mask():
    torch.manual_seed(0)
    layer = PositionalAttention(Config("alibi", d_model=24, heads=6)).double()
    x = randn(3, 11, 24, seed=1).requires_grad_()
    ours = layer(x)
    q, k, v = layer.qkv(x).unflatten(-1, (3, 6, 4)).permute(2, 0, 3, 1, 4)
    causal = torch.ones(11, 11, dtype=torch.bool).tril()
    mask = alibi_bias(layer.slopes.double(), torch.arange(11)).masked_fill(
        ~causal, float("-inf")
    )
    heads = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    reference = layer.out(heads.transpose(1, 2).flatten(2))
    torch.testing.assert_close(ours, reference, **EXACT)
    (got,) = torch.autograd.grad(ours.square().sum(), x)
    (want,) = torch.autograd.grad(reference.square().sum(), x)
    torch.testing.assert_close(got, want, **EXACT)


def test_alibi_rejects_no_heads():
    with pytest.raises(ValueError, match="num_heads must be an int >= 1"):
        alibi_slopes(0)


# ---------------------------------------------------------------- the model


@pytest.mark.parametrize("encoding", ["none", "relative", "rope", "alibi"])
def test_attention_without_positions_sees_a_bag(encoding):
    """The last query's output is unchanged by shuffling the tokens before it exactly
    when the layer has no positions of its own."""
    torch.manual_seed(0)
    layer = PositionalAttention(Config(encoding)).double()
    x = randn(1, 9, 32, seed=1)
    shuffled = torch.cat([x[:, torch.randperm(8)], x[:, 8:]], dim=1)
    last, last_shuffled = layer(x)[0, -1], layer(shuffled)[0, -1]
    if encoding == "none":
        torch.testing.assert_close(last, last_shuffled, **EXACT)
    else:
        assert (last - last_shuffled).abs().max() > 1e-3


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_every_model_is_causal(encoding):
    """The outputs up to t ignore the tokens after t: the demo's reading of one long
    evaluation as every shorter one rests on it."""
    torch.manual_seed(0)
    model = Transformer(Config(encoding, max_len=16)).double().eval()
    tokens = torch.randint(16, (2, 40))
    changed = tokens.clone()
    changed[:, 25:] = (changed[:, 25:] + 1) % 16
    with torch.no_grad():
        full, other = model(tokens), model(changed)
        prefix = model(tokens[:, :25])
    torch.testing.assert_close(full[:, :25], other[:, :25], **EXACT)
    torch.testing.assert_close(full[:, :25], prefix, rtol=1e-10, atol=1e-10)
    assert (full[:, 25:] - other[:, 25:]).abs().max() > 1e-3


@pytest.mark.parametrize("encoding", ["relative", "rope", "alibi", "learned"])
def test_state_round_trips_through_safetensors(encoding, tmp_path):
    torch.manual_seed(0)
    model = Transformer(Config(encoding))
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    torch.manual_seed(1)
    other = Transformer(Config(encoding))
    other.load_state_dict(load_file(tmp_path / "model.safetensors"))
    tokens = torch.randint(16, (2, 30))
    torch.testing.assert_close(model(tokens), other(tokens), rtol=0, atol=0)


@pytest.mark.parametrize("encoding", ["relative", "rope", "alibi"])
def test_long_sequences_stay_finite(encoding):
    torch.manual_seed(0)
    model = Transformer(Config(encoding)).eval()
    with torch.no_grad():
        logits = model(torch.randint(16, (1, 1024)))
    assert logits.shape == (1, 1024, 16) and torch.isfinite(logits).all()


def test_config_and_task_reject_bad_arguments():
    with pytest.raises(ValueError, match="encoding must be one of"):
        Config("t5")
    with pytest.raises(ValueError, match="even width"):
        Config(d_model=30, heads=6)
    with pytest.raises(ValueError, match="must split into 4 heads"):
        Config(d_model=30, heads=4)
    with pytest.raises(ValueError, match=r"offset must be in \[1, length=8\)"):
        offset_copy_batch(2, 8, offset=8)


def test_offset_copy_targets_are_the_tokens_three_back():
    tokens, targets = offset_copy_batch(4, 10, 3, 16, torch.Generator().manual_seed(0))
    assert (targets[:, :3] == PAD).all()
    assert torch.equal(targets[:, 3:], tokens[:, :-3])


def test_example_runs():
    fn, args = example()
    assert fn(*args).shape == (2, 12, 16)


@pytest.mark.parametrize(
    "flags", [["--test-length", "40"], ["--train-length", "64", "--test-length", "32"]]
)
def test_demo_refuses_a_test_length_it_cannot_measure(flags, capsys):
    with pytest.raises(SystemExit):
        main(flags)
    assert "--test-length must be a multiple of 16" in capsys.readouterr().err


def test_demo_learned_table_fails_past_its_length_relative_does_not(tmp_path):
    """A short run trained at length 16 and tested at 32. Both schemes learn the task
    in distribution; past it the learned table scores what a model right on its 13
    scored positions and guessing on the other 16 would, and Shaw's clipped relative
    positions stay right. (Seeds 0-3 of this run and of the full demo agree.)"""
    metrics = main(
        [
            "--encodings",
            "learned,relative",
            "--train-length",
            "16",
            "--test-length",
            "32",
            "--steps",
            "150",
            "--batch-size",
            "16",
            "--test-size",
            "64",
            "--out",
            str(tmp_path),
        ]
    )
    assert metrics["loss_learned"] < 0.2 and metrics["loss_relative"] < 0.2
    assert metrics["accuracy_learned_16"] > 0.95
    assert metrics["accuracy_relative_16"] > 0.95
    assert metrics["accuracy_relative_32"] > 0.95
    right_then_guessing = (13 + 16 / 16) / 29
    assert metrics["accuracy_learned_32"] == pytest.approx(
        right_then_guessing, abs=0.05
    )
    assert (tmp_path / "extrapolation.png").exists()
    assert (tmp_path / "encodings.png").exists()


# ---------------------------------------------------------------- benchmarks


def rope_inputs():
    generator = torch.Generator().manual_seed(0)
    q, k = (torch.randn(8, 8, 256, 64, generator=generator) for _ in range(2))
    return q, k, torch.arange(256)


@pytest.mark.benchmark(group="RoPE on q and k [8, 8, 256, 64], float32")
def test_bench_rope_hugging_face(benchmark):
    benchmark.extra_info["label"] = "transformers apply_rotary_pos_emb"
    benchmark.extra_info["baseline"] = True
    q, k, positions = rope_inputs()
    angles = positions[:, None] * rope_frequencies(64)

    def rotate():
        emb = torch.cat([angles, angles], dim=-1)  # cos and sin per call, as ours
        return apply_rotary_pos_emb(q, k, emb.cos(), emb.sin(), unsqueeze_dim=0)

    benchmark(rotate)


@pytest.mark.benchmark(group="RoPE on q and k [8, 8, 256, 64], float32")
def test_bench_rope_ours(benchmark):
    benchmark.extra_info["label"] = "ours, half-split"
    q, k, positions = rope_inputs()
    benchmark(lambda: (apply_rope(q, positions), apply_rope(k, positions)))


@pytest.mark.benchmark(group="RoPE on q and k [8, 8, 256, 64], float32")
def test_bench_rope_complex(benchmark):
    benchmark.extra_info["label"] = "complex multiply (Meta's LLaMA form)"
    q, k, positions = rope_inputs()
    theta = rope_frequencies(64)

    def rotate():
        angles = positions[:, None] * theta
        rotation = torch.polar(torch.ones_like(angles), angles)  # e^{i m theta}
        return tuple(
            torch.view_as_real(
                torch.view_as_complex(x.unflatten(-1, (32, 2))) * rotation
            ).flatten(-2)
            for x in (q, k)
        )

    benchmark(rotate)


def alibi_inputs():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, 8, 256, 32, generator=generator) for _ in range(3))
    mask = alibi_bias(torch.tensor(alibi_slopes(8)), torch.arange(256))
    causal = torch.ones(256, 256, dtype=torch.bool).tril()
    return q, k, v, mask.masked_fill(~causal, float("-inf"))


@pytest.mark.benchmark(group="causal ALiBi attention, [4, 8, 256, 32]")
def test_bench_alibi_torch_sdpa(benchmark):
    benchmark.extra_info["label"] = "F.scaled_dot_product_attention"
    benchmark.extra_info["baseline"] = True
    q, k, v, mask = alibi_inputs()
    benchmark(F.scaled_dot_product_attention, q, k, v, attn_mask=mask)


@pytest.mark.benchmark(group="causal ALiBi attention, [4, 8, 256, 32]")
def test_bench_alibi_ours(benchmark):
    benchmark.extra_info["label"] = "the attention chapter's function"
    q, k, v, mask = alibi_inputs()
    benchmark(scaled_dot_product_attention, q, k, v, mask)


def relative_inputs():
    torch.manual_seed(0)
    tables = RelativePositions(16, 32)
    query = torch.randn(4, 8, 256, 32)
    buckets = relative_buckets(torch.arange(256), torch.arange(256), 16)
    return tables, query, buckets


@pytest.mark.benchmark(group="Shaw key scores, [4, 8, 256, 32], k = 16")
def test_bench_relative_direct(benchmark):
    benchmark.extra_info["label"] = "a^K gathered to [L, S, d], then einsum"
    benchmark.extra_info["baseline"] = True
    tables, query, buckets = relative_inputs()
    with torch.no_grad():
        benchmark(
            lambda: torch.einsum("bhld,lsd->bhls", query, tables.key_table[buckets])
        )


@pytest.mark.benchmark(group="Shaw key scores, [4, 8, 256, 32], k = 16")
def test_bench_relative_gather(benchmark):
    benchmark.extra_info["label"] = "ours: q @ w_K.T, then gather"
    tables, query, buckets = relative_inputs()
    with torch.no_grad():
        benchmark(tables.key_scores, query, buckets)
