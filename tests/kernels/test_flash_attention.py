"""Verified against torch.nn.functional.scaled_dot_product_attention and an eager
softmax(QKᵀ/√d)V computed in float64 from the same float32 inputs (to 2e-5), outputs,
log-sum-exp and dQ, dK, dV, in Triton's interpreter on a CPU with exact float32
products; on a GPU also in float16 and bfloat16 (to 2e-3 and 1.6e-2).

The kernels run causal and not, at lengths the blocks do not divide, at sequence length
1, with N_q != N_k, with resident and streamed blocks of different sizes, every head
dimension they accept, and scores in the thousands. The traffic counts the prose states
are counted again, and the demo's check is run on a short setting.
"""

import functools
import math
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")


from annotated.kernels import flash_attention as lesson  # noqa: E402
from annotated.kernels.flash_attention import (  # noqa: E402
    attention_flops,
    attention_forward,
    dataflow,
    eager_attention,
    eager_traffic,
    example,
    flash_attention,
    flash_traffic,
    gpu_report,
    main,
    sram_bytes,
    visited_tiles,
)
from tools.fake_cuda import fake_cuda  # noqa: E402

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# conftest.py sets TRITON_INTERPRET=1 unless it is set already, so by default the
# kernels run in the interpreter on CPU tensors, GPU or not. With TRITON_INTERPRET=0 on
# a GPU they are compiled, and every test below runs on the GPU instead.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu"
FLOAT32 = dict(rtol=2e-5, atol=2e-5)
MIB = 2**20


pytestmark = pytest.mark.usefixtures("one_thread")


def inputs(batch, heads, n_q, n_k, d, seed=0, scale=1.0, dtype=torch.float32):
    """q, k, v and an incoming gradient dO, as float32 (or `dtype`) on DEVICE."""
    generator = torch.Generator().manual_seed(seed)

    def randn(n):
        x = scale * torch.randn(batch, heads, n, d, generator=generator)
        return x.to(DEVICE, dtype)

    return randn(n_q), randn(n_k), randn(n_k), randn(n_q) / scale


def outputs_and_gradients(attention, q, k, v, grad_out, dtype=None):
    """attention(q, k, v) and its gradients for `grad_out`, on copies cast to
    `dtype`."""
    leaves = [t.to(dtype or t.dtype).clone().requires_grad_() for t in (q, k, v)]
    out = attention(*leaves)
    grads = torch.autograd.grad(out, leaves, grad_out.to(out.dtype))
    return [out.detach(), *grads]


def assert_matches_float64_references(q, k, v, grad_out, causal, **kwargs):
    ours = outputs_and_gradients(
        lambda *t: flash_attention(*t, causal, **kwargs), q, k, v, grad_out
    )
    scale = kwargs.get("scale")
    sdpa = outputs_and_gradients(
        lambda *t: F.scaled_dot_product_attention(*t, is_causal=causal, scale=scale),
        q,
        k,
        v,
        grad_out,
        torch.float64,
    )
    eager = outputs_and_gradients(
        lambda *t: eager_attention(*t, causal, scale), q, k, v, grad_out, torch.float64
    )
    for mine, reference, other in zip(ours, sdpa, eager, strict=True):
        assert mine.dtype == q.dtype and mine.shape == reference.shape
        torch.testing.assert_close(mine.double(), reference, **FLOAT32)
        torch.testing.assert_close(mine.double(), other, **FLOAT32)


# ---------------------------------------------------------------- values and gradients


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    "batch, heads, n, d, blocks",
    [
        (2, 3, 37, 32, None),  # two whole blocks of 16 and a ragged third
        (1, 2, 64, 32, (32, 16)),  # resident 32, streamed 16: blocks divide N
        (1, 1, 50, 16, (32, 16)),  # resident and streamed blocks both ragged
        (1, 1, 1, 16, None),  # one position
    ],
)
def test_matches_sdpa_and_eager_attention(batch, heads, n, d, blocks, causal):
    q, k, v, grad_out = inputs(batch, heads, n, n, d)
    assert_matches_float64_references(q, k, v, grad_out, causal, blocks=blocks)


@pytest.mark.parametrize("d", [64, 128])
def test_the_larger_head_dimensions(d):
    q, k, v, grad_out = inputs(1, 1, 20, 20, d, seed=d)
    assert_matches_float64_references(q, k, v, grad_out, True)


def test_cross_attention_with_unequal_lengths_and_a_given_scale():
    q, k, v, grad_out = inputs(2, 1, 20, 45, 16, seed=3)
    assert_matches_float64_references(q, k, v, grad_out, False, scale=0.3)
    assert_matches_float64_references(k, q, q, v, False, blocks=(32, 16))  # N_q > N_k


@settings(max_examples=6)
@given(
    n_q=st.integers(1, 48),
    n_k=st.integers(1, 48),
    d=st.sampled_from([16, 32]),
    causal=st.booleans(),
    blocks=st.sampled_from([None, (32, 16), (32, 32)]),
    seed=st.integers(0, 2**16),
)
def test_matches_sdpa_on_random_shapes(n_q, n_k, d, causal, blocks, seed):
    n_k = n_q if causal else n_k
    q, k, v, grad_out = inputs(1, 2, n_q, n_k, d, seed=seed)
    assert_matches_float64_references(q, k, v, grad_out, causal, blocks=blocks)


@pytest.mark.parametrize("causal", [False, True])
def test_log_sum_exp_matches_torch_logsumexp(causal):
    q, k, v, _ = inputs(2, 2, 37, 37, 32, seed=1)
    _, lse = attention_forward(q, k, v, causal, 32**-0.5)
    scores = q.double() @ k.double().transpose(-2, -1) * 32**-0.5
    if causal:
        hidden = torch.ones(37, 37, dtype=torch.bool, device=DEVICE).triu(1)
        scores = scores.masked_fill(hidden, -math.inf)
    assert lse.dtype == torch.float32
    torch.testing.assert_close(lse.double(), scores.logsumexp(-1), **FLOAT32)


@pytest.mark.parametrize("causal", [False, True])
def test_scores_in_the_thousands_stay_finite_and_as_exact_as_sdpa(causal):
    # q and k of scale 30 give scores in the thousands: every e^s would overflow
    # without the running maximum, and the softmax is nearly one-hot. Rounding the
    # scores to float32 costs about 1e-3 then, so the yardstick is SDPA's own float32
    # error against float64, not a fixed tolerance.
    q, k, v, grad_out = inputs(1, 2, 37, 37, 32, seed=2, scale=30.0)
    v = v / 30.0

    def run(attention, dtype):
        return outputs_and_gradients(attention, q, k, v, grad_out, dtype)

    def sdpa(*t):
        return F.scaled_dot_product_attention(*t, is_causal=causal)

    ours = run(lambda *t: flash_attention(*t, causal), torch.float32)
    assert all(torch.isfinite(t).all() for t in ours)
    torch_float32 = run(sdpa, torch.float32)
    reference = run(sdpa, torch.float64)
    for mine, theirs, exact in zip(ours, torch_float32, reference, strict=True):
        error = (mine.double() - exact).abs().max().item()
        yardstick = (theirs.double() - exact).abs().max().item()
        assert error <= 3 * yardstick + 1e-6 * exact.abs().max().item()


def test_a_stride_zero_gradient_and_no_grad_inference():
    q, k, v, _ = inputs(1, 2, 20, 20, 16, seed=4)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = flash_attention(*leaves, True)
    grads = torch.autograd.grad(out.sum(), leaves)  # dO is expanded: stride 0
    wide = [t.double().requires_grad_() for t in (q, k, v)]
    reference = F.scaled_dot_product_attention(*wide, is_causal=True)
    expected = torch.autograd.grad(reference.sum(), wide)
    for mine, theirs in zip(grads, expected, strict=True):
        torch.testing.assert_close(mine.double(), theirs, **FLOAT32)
    with torch.no_grad():
        inference = flash_attention(*leaves, True)
    assert inference.grad_fn is None and out.grad_fn is not None
    assert torch.equal(inference, out.detach())


def test_gradients_are_bitwise_reproducible():
    # No atomics: every gradient is accumulated in one program and written once.
    q, k, v, grad_out = inputs(1, 2, 37, 37, 32, seed=5)
    first = outputs_and_gradients(
        lambda *t: flash_attention(*t, True), q, k, v, grad_out
    )
    again = outputs_and_gradients(
        lambda *t: flash_attention(*t, True), q, k, v, grad_out
    )
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_second_derivatives_are_refused_not_wrong():
    q, k, v, _ = inputs(1, 1, 16, 16, 16)
    q = q.requires_grad_()
    out = flash_attention(q, k, v)
    direction = torch.ones_like(out, requires_grad=True)
    (gradient,) = torch.autograd.grad(out, q, direction, create_graph=True)
    with pytest.raises(RuntimeError, match="marked with @once_differentiable"):
        gradient.sum().backward()


# ---------------------------------------------------------------- traffic counts


def test_visited_tiles_skip_the_upper_triangle():
    assert visited_tiles(64, 64, 16, 16, False) == 16
    assert visited_tiles(64, 64, 16, 16, True) == 4 * 5 // 2  # T(T+1)/2
    assert visited_tiles(50, 50, 32, 16, True) == 2 + 4  # rows 0..31: 2 key blocks


def test_flash_traffic_in_closed_form():
    n, d, block_m, block_n = 1024, 64, 128, 64
    counted = flash_traffic(n, d, torch.bfloat16, False, block_m, block_n)
    rows = n * d * 2
    # Q, O once; K, V once per query block; L in float32
    assert counted["forward bytes"] == 2 * rows + (n // block_m) * 2 * rows + 4 * n
    assert counted["forward compulsory bytes"] == 4 * rows + 4 * n
    causal = flash_traffic(n, d, torch.bfloat16, True, block_m, block_n)
    tiles = sum(
        2 * (i + 1) for i in range(n // block_m)
    )  # 2 key blocks per query block
    assert causal["forward bytes"] == 2 * rows + tiles * 2 * block_n * d * 2 + 4 * n
    assert causal["backward compulsory bytes"] == counted["backward compulsory bytes"]


def test_the_counts_the_prose_states():
    # N = 4096, d = 128, bfloat16, one head
    plain = eager_traffic(4096, 128)
    assert round(plain["forward bytes"] / MIB) == 262
    assert round(plain["backward bytes"] / MIB) == 298
    masked = eager_traffic(4096, 128, causal=True)
    assert round((masked["forward bytes"] + masked["backward bytes"]) / MIB) == 800
    ours = flash_traffic(4096, 128, causal=True)
    assert round((ours["forward bytes"] + ours["backward bytes"]) / MIB) == 111
    compulsory = ours["forward compulsory bytes"] + ours["backward compulsory bytes"]
    assert round(compulsory / MIB, 1) == 12.1
    # eager forward: about 8 N×N bf16 matrices, d/4 = 32 operations per byte
    intensity = 4 * 4096**2 * 128 / plain["forward bytes"]
    assert 30 < intensity < 34
    on_chip = sram_bytes(128, 64, 128)
    assert on_chip["shared"] == 128 * 1024 and round(on_chip["registers"] / 1024) == 97
    assert sram_bytes(128, 64, 256)["shared"] > 228 * 1024  # d = 256 does not fit


def test_the_flop_count_is_the_two_matmuls_torch_counts():
    """The forward's 4·B·H·N²·d is what torch's FlopCounterMode counts for QKᵀ and PV
    (the softmax is left out by convention); causal halves it, and the backward is
    2.5 times the forward (five matmuls where the forward has two)."""
    from torch.utils.flop_counter import FlopCounterMode

    q, k, v = (torch.randn(2, 3, 48, 16) for _ in range(3))
    with FlopCounterMode(display=False) as counter:
        torch.softmax(q @ k.transpose(-1, -2), -1) @ v
    assert attention_flops(2, 3, 48, 16, causal=False) == counter.get_total_flops()
    assert attention_flops(2, 3, 48, 16, causal=True) == counter.get_total_flops() / 2
    forward = attention_flops(4, 16, 4096, 128, causal=False)
    assert attention_flops(4, 16, 4096, 128, False, backward=True) == 2.5 * forward


# ---------------------------------------------------------------- example and demo


def test_example_and_its_declared_dataflow():
    fn, args = example()
    out = fn(*args)
    reference = F.scaled_dot_product_attention(*args[:3], is_causal=True)
    torch.testing.assert_close(out, reference, **FLOAT32)
    nodes, edges = dataflow(out)
    names = {node for node, _ in nodes}
    assert all(source in names and target in names for source, target, _ in edges)
    assert ("forward", "out", "[2, 3, 37, 32]") in edges


def test_demo_checks_and_counts(tmp_path, capsys):
    metrics = main(
        [
            "--batch",
            "1",
            "--heads",
            "1",
            "--seq",
            "21",
            "--head-dim",
            "16",
            "--lengths",
            "256,1024",
            "--device",
            DEVICE,
            "--out",
            str(tmp_path),
        ]
    )
    assert metrics["max error causal"] < 2e-5
    assert metrics["max error non-causal"] < 2e-5
    assert 2 < metrics["eager / ours bytes"] < metrics["eager / compulsory bytes"]
    printed = capsys.readouterr().out
    assert "N=1024, d=128" in printed
    assert (tmp_path / "traffic.png").stat().st_size > 0


# ---------------------------------------------------------------- bad input


def qkv(n=16, d=16, **kwargs):
    return [torch.zeros(1, 2, n, d, **kwargs) for _ in range(3)]


def call(*tensors, **kwargs):
    return lambda: flash_attention(*tensors, **kwargs)


@pytest.mark.parametrize(
    "attempt, error, match",
    [
        (call([[0.0]], *qkv()[1:]), TypeError, "q must be a torch.Tensor, got list"),
        (
            call(*qkv(dtype=torch.float64)),
            TypeError,
            "q must be float16, bfloat16 or float32, got torch.float64",
        ),
        (
            call(torch.zeros(2, 16, 16), *qkv()[1:]),
            ValueError,
            r"q must be \[batch, heads, seq, d\] with seq >= 1, got \(2, 16, 16\)",
        ),
        (
            call(*qkv(n=0)),
            ValueError,
            r"must be \[batch, heads, seq, d\] with seq >= 1",
        ),
        (
            call(torch.zeros(1, 16, 2, 16).transpose(1, 2), *qkv()[1:]),
            ValueError,
            r"q must be contiguous .* pass q.contiguous\(\)",
        ),
        (
            call(*qkv()[:2], torch.zeros(1, 2, 16, 16, dtype=torch.float16)),
            TypeError,
            "q, k and v must share a dtype",
        ),
        (
            call(*qkv()[:2], torch.zeros(1, 2, 16, 16, device="meta")),
            ValueError,
            "q, k and v must be on one device",
        ),
        (
            call(qkv()[0], torch.zeros(1, 2, 16, 32), torch.zeros(1, 2, 16, 32)),
            ValueError,
            r"k and v must be \[batch, heads, N_k, d\] with q's batch, heads and d",
        ),
        (
            call(qkv()[0], qkv(n=20)[1], qkv()[2]),
            ValueError,
            "k and v must be",
        ),
        (
            call(*qkv(d=24)),
            ValueError,
            r"head dimension d must be one of \(16, 32, 64, 128\), got 24",
        ),
        (call(*qkv(), causal=1), TypeError, "causal must be a bool, got 1"),
        (
            call(qkv()[0], *qkv(n=20)[1:], causal=True),
            ValueError,
            "causal attention needs N_q == N_k",
        ),
        (
            call(*qkv(), scale=math.inf),
            ValueError,
            "scale must be a finite number or None, got inf",
        ),
        (
            call(*qkv(), blocks=(16, 32)),
            ValueError,
            r"blocks must be \(resident, streamed\), powers of two >= 16 with "
            r"streamed dividing resident, got \(16, 32\)",
        ),
        (call(*qkv(), blocks=(24, 8)), ValueError, "blocks must be"),
    ],
)
def test_bad_input_raises_clear_errors(attempt, error, match):
    with pytest.raises(error, match=match):
        attempt()


@pytest.mark.skipif(not INTERPRETED, reason="checks the interpreter's device rule")
def test_a_device_the_kernels_do_not_run_on_is_refused():
    with pytest.raises(ValueError, match="q is on meta, but the kernels run on cpu"):
        flash_attention(*qkv(device="meta"))


def test_gpu_report_runs_end_to_end_on_a_stand_in_device(monkeypatch, fixed_times):
    """gpu_report runs on a fake GPU; its TFLOP/s and ratios follow from fixed times."""
    times = {  # ms: forward and forward+backward, ours then SDPA's
        "non-causal": ((1.0, 4.0), (0.5, 2.0)),
        "causal": ((0.5, 2.0), (1.0, 3.0)),
    }
    # First the 8192² bf16 product's time (not run: hours on a CPU).
    calls = [2.0, *(ms for tag in times.values() for pair in tag for ms in pair)]
    fixed_times(calls, skip_first=True)

    def randn(*shape, generator=None, **options):
        if shape == (8192, 8192):  # that product's operands: left unfilled
            return torch.empty(*shape, **options)
        return original(*shape, generator=generator, **options)

    original = torch.randn
    # The interpreter's kernels need blocks given (the autotuned ones exist only where
    # compiled) and pass as compiled ones.
    monkeypatch.setattr(torch, "randn", randn)
    monkeypatch.setattr(lesson, "INTERPRETED", False)
    fixed = functools.partial(flash_attention, blocks=lesson.INTERPRETER_BLOCKS)
    monkeypatch.setattr(lesson, "flash_attention", fixed)
    with fake_cuda():
        report = gpu_report(batch=1, heads=1, seq=16, head_dim=16, dtype=torch.float16)
    peak = 2 * 8192**3 / 2e-3 / 1e12  # TFLOP/s of the product in 2 ms
    expected = {"batch": 1, "heads": 1, "seq": 16, "head dim": 16, "dtype": "float16"}
    expected["bf16 matmul TFLOP/s"] = peak
    # Forward: QKᵀ and PV, 2·16³ FLOP each; the backward's 5 products; causal half.
    for (tag, runs), share in zip(times.items(), (1, 0.5)):
        for name, ms in zip(("ours", "SDPA flash"), runs):
            for step, each, flop in zip(
                ("forward", "forward+backward"), ms, (16384 * share, 57344 * share)
            ):
                expected[f"{tag} {step} {name} µs"] = 1e3 * each
                expected[f"{tag} {step} {name} TFLOP/s"] = flop / each / 1e9
                expected[f"{tag} {step} {name} of matmul peak"] = (
                    flop / each / 1e9 / peak
                )
    expected |= {
        "non-causal forward ours / SDPA flash": 0.5,
        "non-causal forward+backward ours / SDPA flash": 0.5,
        "causal forward ours / SDPA flash": 2.0,
        "causal forward+backward ours / SDPA flash": 1.5,
    }
    assert report == pytest.approx(expected)


# ---------------------------------------------------------------- on a GPU only


@CUDA
@pytest.mark.skipif(INTERPRETED, reason="the kernels must be compiled for the GPU")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    "dtype, tolerance",
    [(torch.float32, 2e-5), (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)],
)
@pytest.mark.parametrize("n, d", [(1000, 64), (777, 128), (256, 16)])
def test_gpu_matches_sdpa_in_every_dtype(n, d, dtype, tolerance, causal):
    q, k, v, grad_out = inputs(2, 4, n, n, d, seed=n, dtype=dtype)
    ours = outputs_and_gradients(
        lambda *t: flash_attention(*t, causal), q, k, v, grad_out
    )
    # SDPA in float64 from the same rounded inputs: ours differs by its own roundings,
    # P cast to dtype before the second product above all.
    reference = outputs_and_gradients(
        lambda *t: F.scaled_dot_product_attention(*t, is_causal=causal),
        q,
        k,
        v,
        grad_out,
        torch.float64,
    )
    for mine, theirs in zip(ours, reference, strict=True):
        assert mine.dtype == dtype
        scale = max(theirs.abs().max().item(), 1.0)
        torch.testing.assert_close(
            mine.double(), theirs, rtol=tolerance, atol=tolerance * scale
        )


@CUDA
@pytest.mark.skipif(
    INTERPRETED, reason="interpreted kernels: do_bench would time NumPy"
)
def test_gpu_report_measures_below_the_matmul_peak():
    report = gpu_report(batch=1, heads=4, seq=1024, head_dim=64)
    assert report["bf16 matmul TFLOP/s"] > 0
    for tag in ("causal", "non-causal"):
        for step in ("forward", "forward+backward"):
            for name in ("ours", "SDPA flash"):
                assert report[f"{tag} {step} {name} µs"] > 0
                assert 0 < report[f"{tag} {step} {name} of matmul peak"] < 1.2
            assert report[f"{tag} {step} ours / SDPA flash"] > 0


# ---------------------------------------------------------------- benchmarks

BENCH = [t.contiguous() for t in inputs(1, 2, 32, 32, 16, seed=7)[:3]]
BENCH_LEAVES = [t.clone().requires_grad_() for t in BENCH]
BENCH_GRAD = inputs(1, 2, 32, 32, 16, seed=8)[3]


def training_step(attention):
    def step():
        out = attention(*BENCH_LEAVES)
        torch.autograd.grad(out, BENCH_LEAVES, BENCH_GRAD)

    return step


def sdpa_causal(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def flash_causal(q, k, v):
    return flash_attention(q, k, v, True)


@pytest.mark.benchmark(group="causal attention forward, 2 heads, N 32, d 16, CPU")
def test_bench_forward_ours(benchmark):
    benchmark.extra_info["label"] = "Triton kernel, in the interpreter"
    benchmark(flash_causal, *BENCH)


@pytest.mark.benchmark(group="causal attention forward, 2 heads, N 32, d 16, CPU")
def test_bench_forward_sdpa(benchmark):
    benchmark.extra_info["label"] = "F.scaled_dot_product_attention"
    benchmark.extra_info["baseline"] = True
    benchmark(sdpa_causal, *BENCH)


@pytest.mark.benchmark(
    group="causal attention forward+backward, 2 heads, N 32, d 16, CPU"
)
def test_bench_training_ours(benchmark):
    benchmark.extra_info["label"] = "Triton kernels, in the interpreter"
    benchmark(training_step(flash_causal))


@pytest.mark.benchmark(
    group="causal attention forward+backward, 2 heads, N 32, d 16, CPU"
)
def test_bench_training_sdpa(benchmark):
    benchmark.extra_info["label"] = "F.scaled_dot_product_attention and autograd"
    benchmark.extra_info["baseline"] = True
    benchmark(training_step(sdpa_causal))
