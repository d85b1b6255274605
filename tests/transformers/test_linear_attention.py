"""F.scaled_dot_product_attention in float64, given the log-kernel as its mask (to
1e-12), the matrix, associative, chunkwise and recurrent forms against one another,
gradients included (to 1e-12), and FAVOR+ against exact softmax attention: its error
falls with the number of features and its kernel estimate is unbiased within 4 standard
errors."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from annotated.sequence.parallel_rnn import linear_scan
from annotated.transformers.linear_attention import (
    LinearAttention,
    elu_feature_map,
    example,
    favor_log_features,
    kernel_attention,
    kernel_attention_quadratic,
    kernel_attention_recurrent,
    linear_attention,
    main,
    performer_attention,
    random_projection,
)

TIGHT = dict(rtol=1e-12, atol=1e-12)


pytestmark = pytest.mark.usefixtures("one_thread")


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def features(batch, length, m, d_v, seed=0):
    """Positive query and key features and values, float64."""
    phi_q = randn(*batch, length, m, seed=seed).exp()
    phi_k = randn(*batch, length, m, seed=seed + 1).exp()
    return phi_q, phi_k, randn(*batch, length, d_v, seed=seed + 2)


def sdpa_reference(phi_q, phi_k, value, causal):
    """torch's softmax attention with zero scores and the log-kernel as additive
    mask: softmax(log A) = A / rowsum(A)."""
    log_kernel = (phi_q @ phi_k.transpose(-2, -1)).log()  # [..., N, S]
    if causal:
        future = torch.ones_like(log_kernel, dtype=torch.bool).triu(1)
        log_kernel = log_kernel.masked_fill(future, float("-inf"))
    zeros = torch.zeros_like(phi_q[..., :1])  # [..., N, 1]: q·k = 0
    keys = torch.zeros_like(phi_k[..., :1])
    return F.scaled_dot_product_attention(zeros, keys, value, attn_mask=log_kernel)


# ------------------------------------------------------------- the forms agree


@settings(max_examples=30)
@given(
    batch=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    length=st.integers(1, 30),
    m=st.integers(1, 9),
    d_v=st.integers(1, 6),
    chunk_size=st.integers(1, 35),
    seed=st.integers(0, 10_000),
)
def test_every_form_matches_sdpa_with_the_log_kernel(
    batch, length, m, d_v, chunk_size, seed
):
    phi_q, phi_k, value = features(batch, length, m, d_v, seed)
    for causal in (False, True):
        expected = sdpa_reference(phi_q, phi_k, value, causal)
        quadratic = kernel_attention_quadratic(phi_q, phi_k, value, causal)
        fast = kernel_attention(phi_q, phi_k, value, causal, chunk_size)
        torch.testing.assert_close(quadratic, expected, **TIGHT)
        torch.testing.assert_close(fast, expected, **TIGHT)
    recurrent, _ = kernel_attention_recurrent(phi_q, phi_k, value)
    torch.testing.assert_close(recurrent, expected, **TIGHT)


def test_non_causal_keys_may_outnumber_queries():
    phi_q, _, _ = features((2,), 5, 4, 3)
    _, phi_k, value = features((2,), 11, 4, 3, seed=7)
    expected = sdpa_reference(phi_q, phi_k, value, False)
    torch.testing.assert_close(kernel_attention(phi_q, phi_k, value), expected, **TIGHT)


def test_causal_output_ignores_the_future():
    phi_q, phi_k, value = features((2,), 30, 4, 3)
    before = kernel_attention(phi_q, phi_k, value, causal=True, chunk_size=8)
    value = value.clone()
    value[:, 17:] += 100.0
    phi_k = phi_k.clone()
    phi_k[:, 17:] *= 50.0
    after = kernel_attention(phi_q, phi_k, value, causal=True, chunk_size=8)
    torch.testing.assert_close(after[:, :17], before[:, :17], rtol=0, atol=0)
    assert (after[:, 17:] - before[:, 17:]).abs().min() > 1e-3


@pytest.mark.parametrize("causal", [False, True])
def test_gradients_of_every_form_match(causal):
    q, k, v = (randn(2, 3, 37, 6, seed=s) for s in range(3))
    weights = randn(2, 3, 37, 6, seed=9)
    runs = {
        "sdpa": lambda q, k, v: sdpa_reference(
            elu_feature_map(q), elu_feature_map(k), v, causal
        ),
        "quadratic": lambda q, k, v: kernel_attention_quadratic(
            elu_feature_map(q), elu_feature_map(k), v, causal
        ),
        "fast": lambda q, k, v: linear_attention(q, k, v, causal, chunk_size=10),
    }
    if causal:
        runs["recurrent"] = lambda q, k, v: kernel_attention_recurrent(
            elu_feature_map(q), elu_feature_map(k), v
        )[0]
    grads = {}
    for name, run in runs.items():
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        (run(*inputs) * weights).sum().backward()
        grads[name] = [t.grad for t in inputs]
    for name in runs:
        for ours, reference in zip(grads[name], grads["sdpa"], strict=True):
            torch.testing.assert_close(ours, reference, **TIGHT)
    assert all(g.abs().max() > 1e-3 for g in grads["fast"])


def test_gradcheck_linear_attention():
    q, k, v = (randn(1, 7, 2, seed=s).requires_grad_() for s in range(3))
    assert torch.autograd.gradcheck(
        lambda q, k, v: linear_attention(q, k, v, True, chunk_size=4), (q, k, v)
    )


# ------------------------------------------------------------- the recurrence


def test_state_carried_and_reloaded_equals_one_pass(tmp_path):
    phi_q, phi_k, value = features((2, 3), 50, 5, 4)
    whole, final = kernel_attention_recurrent(phi_q, phi_k, value)
    first, state = kernel_attention_recurrent(
        phi_q[..., :21, :], phi_k[..., :21, :], value[..., :21, :]
    )
    save_file({"S": state[0], "z": state[1]}, tmp_path / "state.safetensors")
    loaded = load_file(tmp_path / "state.safetensors")
    second, resumed = kernel_attention_recurrent(
        phi_q[..., 21:, :],
        phi_k[..., 21:, :],
        value[..., 21:, :],
        (loaded["S"], loaded["z"]),
    )
    torch.testing.assert_close(torch.cat([first, second], -2), whole, **TIGHT)
    torch.testing.assert_close(resumed[0], final[0], **TIGHT)
    torch.testing.assert_close(resumed[1], final[1], **TIGHT)
    # the final state is the sums over every position, as the prose says
    torch.testing.assert_close(final[0], phi_k.transpose(-2, -1) @ value, **TIGHT)
    torch.testing.assert_close(final[1], phi_k.sum(-2), **TIGHT)


def test_the_state_is_the_parallel_scan_of_the_linear_recurrence():
    """S_i = 1 · S_{i-1} + φ(k_i) v_iᵀ: parallel_rnn's scan with every a_t = 1."""
    phi_q, phi_k, value = features((2,), 45, 3, 4)
    outer = (phi_k[..., :, None] * value[..., None, :]).flatten(-2)  # [2, 45, 12]
    states = linear_scan(torch.ones_like(outer), outer)  # [2, 45, 12]: every S_i
    numerator = (phi_q[..., None, :] @ states.unflatten(-1, (3, 4)))[..., 0, :]
    normaliser = linear_scan(torch.ones_like(phi_k), phi_k)  # [2, 45, 3]: every z_i
    scanned = numerator / (phi_q * normaliser).sum(-1, keepdim=True)
    recurrent, _ = kernel_attention_recurrent(phi_q, phi_k, value)
    torch.testing.assert_close(recurrent, scanned, **TIGHT)


def test_long_sequence_in_every_causal_form():
    """5,000 steps: a loop, not recursion, and no drift between the forms."""
    q, k, v = (randn(1, 5000, 4, seed=s) for s in range(3))
    phi_q, phi_k = elu_feature_map(q), elu_feature_map(k)
    recurrent, (memory, _) = kernel_attention_recurrent(phi_q, phi_k, v)
    chunked = kernel_attention(phi_q, phi_k, v, causal=True, chunk_size=128)
    torch.testing.assert_close(chunked, recurrent, **TIGHT)
    torch.testing.assert_close(memory, phi_k.transpose(-2, -1) @ v, **TIGHT)
    last = kernel_attention(phi_q[:, -1:], phi_k, v)  # the last query sees every key
    torch.testing.assert_close(chunked[:, -1:], last, **TIGHT)


def test_a_query_whose_features_underflow_gives_zero_not_nan():
    q, k, v = (randn(2, 12, 4, seed=s) for s in range(3))
    q[0, 3] = -1e4  # elu(x) + 1 = exp(-1e4) = 0 in float64
    for causal in (False, True):
        for output in (
            linear_attention(q, k, v, causal, chunk_size=5),
            kernel_attention_quadratic(elu_feature_map(q), elu_feature_map(k), v),
        ):
            assert output.isfinite().all()
            assert (output[0, 3] == 0).all()
    inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    linear_attention(*inputs, True).sum().backward()
    assert all(t.grad.isfinite().all() for t in inputs)


def test_extreme_positive_inputs_in_float32():
    q, k, v = (randn(2, 64, 8, seed=s, dtype=torch.float32) * 1e3 for s in range(3))
    output = linear_attention(q, k, v, causal=True)
    reference = linear_attention(q.double(), k.double(), v.double(), causal=True)
    assert output.isfinite().all()
    torch.testing.assert_close(output.double(), reference, rtol=1e-4, atol=1e-2)


# ------------------------------------------------------------- the layer


def test_layer_matches_the_formula_per_head():
    torch.manual_seed(0)
    layer = LinearAttention(12, 3, causal=True).double()
    x = randn(2, 17, 12)
    q, k, v = (
        proj(x).view(2, 17, 3, 4).transpose(1, 2)
        for proj in (layer.q_proj, layer.k_proj, layer.v_proj)
    )
    heads = sdpa_reference(elu_feature_map(q), elu_feature_map(k), v, True)
    expected = layer.out_proj(heads.transpose(1, 2).reshape(2, 17, 12))
    torch.testing.assert_close(layer(x), expected, **TIGHT)
    assert sum(p.numel() for p in layer.parameters()) == 4 * 12 * 12 + 4 * 12


def test_example_traces_like_eager():
    model, args = example()
    output = model(*args)
    assert output.shape == (2, 100, 32)
    traced = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(traced(*args), output, rtol=0, atol=0)


def test_layer_state_round_trip_through_safetensors(tmp_path):
    model, (x,) = example()
    save_file(model.state_dict(), tmp_path / "layer.safetensors")
    loaded = LinearAttention(32, 4, causal=True)
    loaded.load_state_dict(load_file(tmp_path / "layer.safetensors"))
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


# ------------------------------------------------------------- Performer


@pytest.mark.parametrize("orthogonal", [False, True])
def test_favor_kernel_estimate_is_unbiased(orthogonal):
    """Mean of φ(x)ᵀφ(y) over 4,000 independent draws of 8 directions (one
    orthogonal block each) within 4 standard errors of exp(xᵀy), for pairs of
    several sizes; the standard error is under 5 % of the kernel, so a bias of that
    size would fail."""
    x = randn(6, 8, seed=1) * torch.linspace(0.2, 0.6, 6)[:, None]
    y = randn(6, 8, seed=2) * 0.4
    exact = (x * y).sum(-1).exp()  # [6]
    draws, m = 4000, 8
    directions = random_projection(
        draws * m, 8, orthogonal, torch.Generator().manual_seed(0), torch.float64
    )  # [32000, 8]: blocks of 8 rows are independent draws
    log_terms = favor_log_features(x, directions) + favor_log_features(y, directions)
    terms = (log_terms + math.log(draws * m)).exp()  # [6, 32000]: one Z per direction
    estimates = terms.view(6, draws, m).mean(-1)  # [6, 4000]: φ(x)ᵀφ(y) per draw
    mean = estimates.mean(-1)
    error = estimates.std(-1) / math.sqrt(draws)
    assert ((mean - exact).abs() < 4 * error).all(), (mean, exact, error)
    assert (error < 0.05 * exact).all()


def test_orthogonal_directions_are_orthogonal_with_gaussian_lengths():
    directions = random_projection(
        5000, 10, True, torch.Generator().manual_seed(0), torch.float64
    )
    for block in (directions[:10], directions[4990:]):
        gram = block @ block.T
        off_diagonal = gram - torch.diag(gram.diagonal())
        torch.testing.assert_close(off_diagonal, torch.zeros_like(gram))
    squared = directions.pow(2).sum(-1)  # chi-square with 10 degrees of freedom
    assert squared.mean().item() == pytest.approx(10, rel=0.05)
    assert squared.var().item() == pytest.approx(20, rel=0.15)
    # uniform directions: each coordinate of a unit row has mean 0 and variance 1/d
    units = directions / directions.norm(dim=-1, keepdim=True)
    assert units.mean(0).abs().max() < 0.02
    torch.testing.assert_close(
        units.pow(2).mean(0), torch.full_like(units[0], 0.1), atol=0.01, rtol=0
    )
    # two blocks are independent: not the same directions again
    assert (directions[:10] @ directions[10:20].T).abs().max() > 1


def test_performer_error_falls_with_the_number_of_features():
    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 64, 16, generator=generator).double() for _ in range(3))
    q, k = q * 0.5, k * 0.5
    exact = F.scaled_dot_product_attention(q, k, v)
    means = {}
    for orthogonal in (False, True):
        means[orthogonal] = []
        for m in (16, 64, 256, 1024):
            errors = []
            for seed in range(4):
                directions = random_projection(
                    m, 16, orthogonal, torch.Generator().manual_seed(seed)
                )
                estimate = performer_attention(q, k, v, directions.double())
                errors.append(((estimate - exact).norm() / exact.norm()).item())
            means[orthogonal].append(float(np.mean(errors)))
        assert all(a > b for a, b in zip(means[orthogonal], means[orthogonal][1:]))
    # independent features: as 1/sqrt(m), 64× the features, 8× smaller (within 1.5×)
    assert 8 / 1.5 < means[False][0] / means[False][-1] < 8 * 1.5
    assert means[False][-1] < 0.15
    assert all(o < i for o, i in zip(means[True], means[False]))


def test_performer_forms_agree_and_match_the_explicit_estimate():
    q, k, v = (randn(2, 40, 8, seed=s) * 0.5 for s in range(3))
    directions = random_projection(32, 8, True, torch.Generator().manual_seed(0))
    directions = directions.double()
    scale = 8**-0.25
    phi_q = favor_log_features(q * scale, directions).exp()
    phi_k = favor_log_features(k * scale, directions).exp()
    for causal in (False, True):
        expected = kernel_attention_quadratic(phi_q, phi_k, v, causal)
        ours = performer_attention(q, k, v, directions, causal, chunk_size=7)
        torch.testing.assert_close(ours, expected, **TIGHT)


def test_performer_shift_rescues_underflowing_features_in_float32():
    """Inputs large enough that the raw features' products underflow float32."""
    q, k, v = (randn(2, 30, 8, seed=s) * 6 for s in range(3))
    directions = random_projection(64, 8, True, torch.Generator().manual_seed(0))
    scale = 8**-0.25
    phi_q = favor_log_features(q * scale, directions.double()).exp()
    phi_k = favor_log_features(k * scale, directions.double()).exp()
    expected = kernel_attention_quadratic(phi_q, phi_k, v)  # float64: no underflow
    q, k, v = q.float(), k.float(), v.float()
    raw_q = favor_log_features(q * scale, directions)
    raw_k = favor_log_features(k * scale, directions)
    naive = kernel_attention_quadratic(raw_q.exp(), raw_k.exp(), v)  # no shift
    assert (naive.double() - expected).abs().max() > 1
    ours = performer_attention(q, k, v, directions)
    assert ours.isfinite().all()
    torch.testing.assert_close(ours.double(), expected, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------- bad input


def test_bad_inputs_raise_naming_the_argument():
    phi_q, phi_k, value = features((2,), 6, 4, 3)
    with pytest.raises(ValueError, match="query .* and key .* same last dimension"):
        kernel_attention(phi_q, phi_k[..., :3], value)
    with pytest.raises(ValueError, match="same number of positions"):
        kernel_attention_quadratic(phi_q, phi_k, value[:, :5])
    with pytest.raises(ValueError, match="query must be a tensor"):
        kernel_attention(phi_q[0, 0], phi_k, value)
    with pytest.raises(TypeError, match="share one float dtype"):
        kernel_attention(phi_q, phi_k.float(), value)
    with pytest.raises(ValueError, match="share their batch axes"):
        kernel_attention(phi_q[None], phi_k, value)
    with pytest.raises(ValueError, match="causal attention needs as many queries"):
        kernel_attention(phi_q[:, :4], phi_k, value, causal=True)
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1"):
        kernel_attention(phi_q, phi_k, value, causal=True, chunk_size=0)
    with pytest.raises(ValueError, match=r"state must be \(S \[..., m, d_v\]"):
        kernel_attention_recurrent(phi_q, phi_k, value, (torch.zeros(2, 3, 4),) * 2)
    with pytest.raises(ValueError, match="linear_attention: key .* and value"):
        linear_attention(phi_q, phi_k, value[:, :2])
    with pytest.raises(ValueError, match="divisible by heads"):
        LinearAttention(10, 3)
    with pytest.raises(ValueError, match="num_features must be an int >= 1"):
        random_projection(0, 4)
    with pytest.raises(ValueError, match="dim must be an int >= 1"):
        random_projection(4, 0)
    with pytest.raises(ValueError, match=r"projection must be \[m, d\]"):
        favor_log_features(phi_q, torch.zeros(4))
    with pytest.raises(ValueError, match="must share the width d and the dtype"):
        favor_log_features(phi_q, torch.zeros(8, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="must share the width d and the dtype"):
        performer_attention(phi_q, phi_k, value, torch.zeros(8, 4))


# ------------------------------------------------------------- the demo


def test_demo_on_short_sequences(tmp_path):
    metrics = main(
        [
            "--min-length",
            "64",
            "--max-length",
            "512",
            "--repeats",
            "1",
            "--features",
            "16",
            "256",
            "--seeds",
            "3",
            "--out",
            str(tmp_path),
        ]
    )
    assert metrics["forms_gap"] < 1e-12
    assert metrics["performer_independent_m256"] < metrics["performer_independent_m16"]
    assert metrics["performer_orthogonal_m256"] < metrics["performer_orthogonal_m16"]
    assert metrics["speedup"] > 0 and metrics["softmax_exponent"] > 0
    assert (tmp_path / "scaling.png").exists()
    assert (tmp_path / "performer.png").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--min-length", "300", "--max-length", "1000"], "need 4 × --min-length"),
        (["--scales", "0.5"], "--scales needs two values"),
    ],
)
def test_demo_refuses_bad_flags(flags, message, capsys):
    """Lengths too close for a slope; one scale where a soft and a sharp one are
    compared."""
    with pytest.raises(SystemExit):
        main(flags)
    assert message in capsys.readouterr().err


# ------------------------------------------------------------- benchmarks


def long_inputs():
    """One sequence of 4,096 positions, 4 heads of width 64, float32."""
    return tuple(randn(1, 4, 4096, 64, seed=s, dtype=torch.float32) for s in range(3))


@pytest.mark.benchmark(group="attention forward, 4 heads, N 4096, d 64")
def test_bench_sdpa(benchmark):
    benchmark.extra_info["label"] = "F.scaled_dot_product_attention"
    benchmark.extra_info["baseline"] = True
    inputs = long_inputs()
    with torch.no_grad():
        benchmark(F.scaled_dot_product_attention, *inputs)


@pytest.mark.benchmark(group="attention forward, 4 heads, N 4096, d 64")
def test_bench_linear(benchmark):
    benchmark.extra_info["label"] = "linear_attention"
    inputs = long_inputs()
    with torch.no_grad():
        benchmark(linear_attention, *inputs)


@pytest.mark.benchmark(group="causal attention forward, 4 heads, N 4096, d 64")
def test_bench_sdpa_causal(benchmark):
    benchmark.extra_info["label"] = "F.scaled_dot_product_attention(is_causal=True)"
    benchmark.extra_info["baseline"] = True
    inputs = long_inputs()
    with torch.no_grad():
        benchmark(F.scaled_dot_product_attention, *inputs, is_causal=True)


@pytest.mark.benchmark(group="causal attention forward, 4 heads, N 4096, d 64")
def test_bench_linear_causal(benchmark):
    benchmark.extra_info["label"] = "linear_attention(causal=True), chunks of 64"
    inputs = long_inputs()
    with torch.no_grad():
        benchmark(linear_attention, *inputs, causal=True)
