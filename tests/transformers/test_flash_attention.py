"""Verified against F.scaled_dot_product_attention and torch.logsumexp of the scores:
forward and all three gradients to 1e-10 in float64 under hypothesis (lengths, widths,
block sizes, causal or not), to 2e-5 in float32, and by gradcheck and gradgradcheck.

Also checked: the log-sum-exp equals the one PyTorch's own CPU FlashAttention kernel
returns; only Q, K, V, O and L are saved for backward, never an N×N matrix; the causal
pass skips exactly the tiles above the diagonal (its matrix-product FLOPs, counted by
torch's FlopCounterMode, are those of the visited tiles); scores of 1e5 stay finite;
a 6,000-key sequence and a single key work; bfloat16 accumulates in float32.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd import gradcheck, gradgradcheck
from torch.utils.flop_counter import FlopCounterMode

from annotated.transformers.flash_attention import (
    block_counts,
    block_kind,
    dataflow,
    example,
    flash_attention,
    main,
    naive_attention,
    saved_bytes,
)

TIGHT = {"rtol": 1e-10, "atol": 1e-10}


def inputs(lead, n_q, n_k, d, d_v, dtype=torch.float64, seed=0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(*lead, n_q, d, generator=generator, dtype=torch.float64) * scale
    k = torch.randn(*lead, n_k, d, generator=generator, dtype=torch.float64) * scale
    v = torch.randn(*lead, n_k, d_v, generator=generator, dtype=torch.float64)
    return tuple(t.to(dtype).requires_grad_() for t in (q, k, v))


def reference_lse(q, k, causal):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        hidden = torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1)
        scores = scores.masked_fill(hidden, -math.inf)
    return torch.logsumexp(scores, dim=-1)


def forward_and_gradients(attention, q, k, v, seed=1):
    """The output, the log-sum-exp and dQ, dK, dV for a random weighting of both."""
    out, lse = attention(q, k, v)
    generator = torch.Generator().manual_seed(seed)
    weight_out = torch.randn(out.shape, generator=generator, dtype=torch.float64)
    weight_lse = torch.randn(lse.shape, generator=generator, dtype=torch.float64)
    weight_out, weight_lse = weight_out.to(out.dtype), weight_lse.to(lse.dtype)
    loss = (out * weight_out).sum() + (lse * weight_lse).sum()
    return (out, lse, *torch.autograd.grad(loss, (q, k, v)))


def ours(causal, block_q, block_k):
    return lambda q, k, v: flash_attention(q, k, v, causal, block_q, block_k)


def torchs(causal):
    return lambda q, k, v: (
        F.scaled_dot_product_attention(q, k, v, is_causal=causal),
        reference_lse(q, k, causal),
    )


def assert_all_close(ours_, reference, **tolerance):
    for name, a, b in zip(("O", "L", "dQ", "dK", "dV"), ours_, reference):
        torch.testing.assert_close(a, b, **tolerance, msg=lambda m, n=name: f"{n}: {m}")


# ---------------------------------------------------------------- against torch


@given(
    n_q=st.integers(1, 24),
    n_k=st.integers(1, 24),
    d=st.integers(1, 6),
    d_v=st.integers(1, 5),
    block_q=st.integers(1, 9),
    block_k=st.integers(1, 9),
    causal=st.booleans(),
    lead=st.sampled_from([(), (3,), (2, 2)]),
    seed=st.integers(0, 2**16),
)
def test_matches_sdpa_and_logsumexp_in_float64(
    n_q, n_k, d, d_v, block_q, block_k, causal, lead, seed
):
    if causal:
        n_k = n_q
    q, k, v = inputs(lead, n_q, n_k, d, d_v, seed=seed)
    assert_all_close(
        forward_and_gradients(ours(causal, block_q, block_k), q, k, v),
        forward_and_gradients(torchs(causal), q, k, v),
        **TIGHT,
    )


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("block_q, block_k", [(32, 32), (17, 23), (128, 7)])
def test_matches_sdpa_in_float32(causal, block_q, block_k):
    q, k, v = inputs((2, 3), 100, 100, 32, 32, dtype=torch.float32)
    ours_ = forward_and_gradients(ours(causal, block_q, block_k), q, k, v)
    assert_all_close(
        ours_, forward_and_gradients(torchs(causal), q, k, v), rtol=1e-4, atol=2e-5
    )
    exact = forward_and_gradients(torchs(causal), *inputs((2, 3), 100, 100, 32, 32))
    assert_all_close([t.double() for t in ours_], exact, rtol=1e-4, atol=2e-5)


def test_different_query_and_key_lengths_and_a_custom_scale():
    q, k, v = inputs((2,), 7, 19, 4, 6)
    out = flash_attention(q, k, v, block_q=3, block_k=5, scale=0.3)[0]
    torch.testing.assert_close(
        out, F.scaled_dot_product_attention(q, k, v, scale=0.3), **TIGHT
    )


def test_logsumexp_equals_pytorchs_own_flash_kernel():
    q, k, v = inputs((2, 3), 45, 45, 8, 8)
    for causal in (False, True):
        out, lse = flash_attention(q, k, v, causal, 16, 8)
        torch_out, torch_lse = (
            torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q, k, v, is_causal=causal
            )
        )
        torch.testing.assert_close(out, torch_out, **TIGHT)
        torch.testing.assert_close(lse, torch_lse, **TIGHT)


def test_naive_reference_matches_sdpa():
    q, k, v = inputs((2,), 9, 9, 4, 3)
    for causal in (False, True):
        torch.testing.assert_close(
            naive_attention(q, k, v, causal),
            F.scaled_dot_product_attention(q, k, v, is_causal=causal),
            **TIGHT,
        )


@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_and_gradgradcheck_on_a_tiny_case(causal):
    q, k, v = inputs((1, 2), 5, 5, 3, 2)
    assert gradcheck(lambda *t: flash_attention(*t, causal, 2, 3), (q, k, v))
    assert gradgradcheck(lambda *t: flash_attention(*t, causal, 3, 2)[0], (q, k, v))


# ---------------------------------------------------------------- unusual inputs


def test_huge_scores_stay_finite_and_exact():
    # scores reach ~1e5: e^s overflows float64 at 710, and float32 at 89
    q, k, v = inputs((2,), 30, 30, 4, 4, scale=200.0)
    assert_all_close(
        forward_and_gradients(ours(True, 8, 4), q, k, v),
        forward_and_gradients(torchs(True), q, k, v),
        **TIGHT,
    )
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    out, lse = flash_attention(q32, k32, v32, False, 8, 4)
    assert torch.isfinite(out).all() and lse.abs().max() > 1e4
    torch.testing.assert_close(
        out, F.scaled_dot_product_attention(q32, k32, v32), rtol=1e-4, atol=1e-5
    )


def test_a_long_sequence_of_keys():
    q, k, v = inputs((), 3, 6000, 8, 2)
    assert_all_close(
        forward_and_gradients(ours(False, 2, 1024), q, k, v),
        forward_and_gradients(torchs(False), q, k, v),
        **TIGHT,
    )


def test_a_single_key_returns_its_value_and_no_score_gradient():
    q, k, v = inputs((2,), 4, 1, 3, 5)
    out, lse = forward_and_gradients(ours(False, 3, 3), q, k, v)[:2]
    torch.testing.assert_close(out, v.detach().expand(2, 4, 5), **TIGHT)
    grad_q = torch.autograd.grad(flash_attention(q, k, v)[0].sum(), q)[0]
    assert grad_q.abs().max() < 1e-14  # zero, up to rounding in dP - D


def test_bfloat16_accumulates_in_float32():
    q, k, v = inputs((2,), 50, 50, 16, 16, dtype=torch.bfloat16)
    out, lse = flash_attention(q, k, v, True, 16, 16)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    exact = inputs((2,), 50, 50, 16, 16)
    torch.testing.assert_close(
        out.double(), flash_attention(*exact, True)[0], rtol=0, atol=2e-2
    )
    out.sum().backward()
    assert q.grad.dtype == torch.bfloat16 and torch.isfinite(q.grad.float()).all()


# ---------------------------------------------------------------- memory and tiles


def test_only_q_k_v_o_and_lse_are_saved_never_an_n_by_n_matrix():
    shapes = []

    def pack(tensor):
        shapes.append(tuple(tensor.shape))
        return tensor

    q, k, v = inputs((2, 3), 40, 40, 8, 5)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        flash_attention(q, k, v, True, 8, 8)
    assert sorted(shapes) == sorted(
        [(2, 3, 40, 8), (2, 3, 40, 8), (2, 3, 40, 5), (2, 3, 40, 5), (2, 3, 40)]
    )
    n, d, d_v, heads, byte = 40, 8, 5, 6, 8
    assert saved_bytes(lambda: flash_attention(q, k, v)) == heads * byte * (
        2 * n * d + 2 * n * d_v + n
    )
    assert saved_bytes(lambda: naive_attention(q, k, v)) == heads * byte * (
        2 * n * d + n * d_v + n * n
    )
    # the causal mask is one shared [N, N] boolean
    assert saved_bytes(lambda: naive_attention(q, k, v, causal=True)) == (
        heads * byte * (2 * n * d + n * d_v + n * n) + n * n
    )


def test_block_counts():
    assert block_counts(10, 10, 4, 3, True) == {"full": 4, "diagonal": 5, "skipped": 3}
    for tiles in (1, 2, 5, 16):
        counts = block_counts(64 * tiles, 64 * tiles, 64, 64, True)
        assert counts == {
            "full": tiles * (tiles - 1) // 2,
            "diagonal": tiles,
            "skipped": tiles * (tiles - 1) // 2,
        }
    counts = block_counts(100, 37, 7, 5, False)
    assert counts == {"full": 15 * 8, "diagonal": 0, "skipped": 0}
    assert block_kind(0, 4, 3, 6, True) == "diagonal"
    assert block_kind(4, 8, 0, 4, True) == "full"  # key 3 <= query 4
    assert block_kind(4, 8, 8, 9, True) == "skipped"


def matmul_flops(run):
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


@pytest.mark.parametrize("n, block_q, block_k", [(40, 8, 8), (37, 10, 6)])
def test_the_causal_pass_computes_only_the_visited_tiles(n, block_q, block_k):
    q, k, v = inputs((2,), n, n, 4, 3)
    d, d_v, lead = 4, 3, 2
    area = 0  # query-key pairs in the visited tiles
    for q_start in range(0, n, block_q):
        for k_start in range(0, n, block_k):
            q_stop, k_stop = min(q_start + block_q, n), min(k_start + block_k, n)
            if k_start < q_stop:  # its first key is visible to its last query
                area += (q_stop - q_start) * (k_stop - k_start)
    assert area < n * n
    forward = matmul_flops(lambda: flash_attention(q, k, v, True, block_q, block_k))
    assert forward == lead * 2 * area * (d + d_v)  # S = QKᵀ, then PV
    out = flash_attention(q, k, v, True, block_q, block_k)[0]
    backward = matmul_flops(lambda: out.sum().backward())
    assert backward == lead * 2 * area * (3 * d + 2 * d_v)  # S again, dV, dP, dQ, dK
    full = matmul_flops(lambda: flash_attention(q, k, v, False, block_q, block_k))
    assert full == lead * 2 * n * n * (d + d_v)


# ---------------------------------------------------------------- example and demo


def test_example_and_dataflow():
    fn, args = example()
    out, lse = fn(*args)
    assert out.shape == (2, 3, 10, 8) and lse.shape == (2, 3, 10)
    q, k, v = args[:3]
    torch.testing.assert_close(
        out, F.scaled_dot_product_attention(q, k, v, is_causal=True)
    )
    nodes, edges = dataflow((out, lse))
    ids = {node for node, _ in nodes}
    assert all(src in ids and dst in ids for src, dst, _ in edges)


def test_demo_measures_less_memory_and_matches_sdpa(tmp_path, capsys):
    metrics = main(
        [
            "--lengths", "32,256",
            "--heads", "1",
            "--dim", "16",
            "--block", "32",
            "--repeats", "1",
            "--device", "cpu",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    assert metrics["max error float64"] < 1e-12
    assert metrics["max error float32"] < 1e-5
    assert metrics["peak ratio"] > 2 and metrics["saved ratio"] > 2
    assert metrics["skipped tiles"] == 8 * 7 / 2
    printed = capsys.readouterr().out
    assert "max |ours - SDPA|" in printed and "28 skipped" in printed
    for name in ("memory_time.png", "tiles.png"):
        assert (tmp_path / name).stat().st_size > 1000


# ---------------------------------------------------------------- bad input


def good():
    return inputs((2,), 4, 4, 3, 3)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (
            lambda q, k, v: flash_attention(q.detach().numpy(), k, v),
            TypeError,
            "q must be a torch.Tensor, got ndarray",
        ),
        (
            lambda q, k, v: flash_attention(q, k.long(), v),
            TypeError,
            "k must have a floating-point dtype, got torch.int64",
        ),
        (
            lambda q, k, v: flash_attention(q, k, v[0, 0]),
            ValueError,
            r"v must be a non-empty \[\.\.\., seq, features\] tensor, got shape \(3,\)",
        ),
        (
            lambda q, k, v: flash_attention(q[:, :0], k, v),
            ValueError,
            r"q must be a non-empty .* got shape \(2, 0, 3\)",
        ),
        (
            lambda q, k, v: flash_attention(q, k.float(), v),
            TypeError,
            "q, k and v must share a dtype, got torch.float64, torch.float32",
        ),
        (
            lambda q, k, v: flash_attention(q, k.to("meta"), v),
            ValueError,
            "q, k and v must be on one device, got cpu, meta, cpu",
        ),
        (
            lambda q, k, v: flash_attention(q, k[:1], v[:1]),
            ValueError,
            r"must share their leading \(batch, head\) dims",
        ),
        (
            lambda q, k, v: flash_attention(q, k[..., :2], v),
            ValueError,
            "k must have q's feature size d=3, got 2",
        ),
        (
            lambda q, k, v: flash_attention(q, k, v[:, :3]),
            ValueError,
            r"v must have as many rows as k \(N_k=4\), got 3",
        ),
        (
            lambda q, k, v: flash_attention(q, k[:, :3], v[:, :3], causal=True),
            ValueError,
            "causal attention needs N_q == N_k .* got N_q=4, N_k=3",
        ),
        (
            lambda q, k, v: flash_attention(q, k, v, causal="yes"),
            TypeError,
            "causal must be a bool, got 'yes'",
        ),
        (
            lambda q, k, v: flash_attention(q, k, v, block_q=0),
            ValueError,
            "block_q must be an int >= 1, got 0",
        ),
        (
            lambda q, k, v: flash_attention(q, k, v, block_k=2.0),
            ValueError,
            "block_k must be an int >= 1, got 2.0",
        ),
        (
            lambda q, k, v: flash_attention(q, k, v, scale=math.nan),
            ValueError,
            "scale must be a finite number or None, got nan",
        ),
    ],
)
def test_bad_input_raises_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call(*good())


# ---------------------------------------------------------------- benchmarks

BENCH_SHAPE = (1, 2, 1024, 64)


def bench_step(attention):
    generator = torch.Generator().manual_seed(0)
    q, k, v, grad_out = (
        torch.randn(BENCH_SHAPE, generator=generator) for _ in range(4)
    )
    q, k, v = (t.requires_grad_() for t in (q, k, v))

    def step():
        q.grad = k.grad = v.grad = None
        attention(q, k, v).backward(grad_out)

    return step


GROUP = "attention forward+backward, 2 heads, N=1024, d=64, float32"


@pytest.mark.benchmark(group=GROUP)
def test_bench_ours(benchmark):
    benchmark.extra_info["label"] = "our flash_attention, 128×128 tiles"
    benchmark(bench_step(lambda q, k, v: flash_attention(q, k, v, False, 128, 128)[0]))


@pytest.mark.benchmark(group=GROUP)
def test_bench_naive(benchmark):
    benchmark.extra_info["label"] = "plain attention (softmax(QKᵀ/√d)V)"
    benchmark(bench_step(naive_attention))


@pytest.mark.benchmark(group=GROUP)
def test_bench_sdpa(benchmark):
    benchmark.extra_info["label"] = "F.scaled_dot_product_attention"
    benchmark.extra_info["baseline"] = True
    benchmark(bench_step(F.scaled_dot_product_attention))


CAUSAL_GROUP = "causal attention forward+backward, 2 heads, N=1024, d=64, float32"


@pytest.mark.benchmark(group=CAUSAL_GROUP)
def test_bench_ours_causal(benchmark):
    benchmark.extra_info["label"] = "our flash_attention, causal, 128×128 tiles"
    benchmark(bench_step(lambda q, k, v: flash_attention(q, k, v, True, 128, 128)[0]))


@pytest.mark.benchmark(group=CAUSAL_GROUP)
def test_bench_sdpa_causal(benchmark):
    benchmark.extra_info["label"] = "F.scaled_dot_product_attention(is_causal=True)"
    benchmark.extra_info["baseline"] = True
    benchmark(
        bench_step(
            lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
        )
    )
