"""Verified against torch.nn.functional.cross_entropy, loss and gradient, in float64 (to
1e-12), float32 (to 1e-6) and on float16 and bfloat16 logits (to their rounding), in
Triton's interpreter on a CPU and, on a GPU, compiled at a Llama-3-sized vocabulary.

The kernels run on vocabularies that are not a multiple of the chunk, with ignore_index
rows, every row ignored (nan mean and zero gradient, as torch), label smoothing, all
three reductions, targets at 0 and vocab - 1, logits of +-1e4, rows that are a slice of
a wider buffer, an empty batch and an incoming gradient other than 1. The memory the
prose counts (12 bytes per logit for F.cross_entropy(logits.float()), 2 for the fused
loss) is measured on PyTorch's allocator, and the demo's claim (the fused loss trains
like F.cross_entropy, the losses within 1e-5 at every step) is checked on a short run.
"""

import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")


from annotated.kernels import cross_entropy  # noqa: E402
from annotated.kernels.cross_entropy import (  # noqa: E402
    dataflow,
    eager_cross_entropy,
    example,
    fused_cross_entropy,
    gpu_report,
    main,
    measure_memory,
    memory_count,
)
from tools.fake_cuda import fake_cuda  # noqa: E402

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# conftest.py sets TRITON_INTERPRET=1 unless it is set already, so by default the
# kernels run in the interpreter on CPU tensors, GPU or not. With TRITON_INTERPRET=0 on
# a GPU they are compiled, and every test below runs on the GPU instead.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu"
FLOAT64 = dict(rtol=1e-12, atol=1e-12)
FLOAT32 = dict(rtol=1e-6, atol=1e-6)


pytestmark = pytest.mark.usefixtures("one_thread")


def make_inputs(tokens, vocab, dtype=torch.float64, seed=0, scale=3.0, ignored=()):
    generator = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(
        tokens, vocab, generator=generator, dtype=torch.float64
    )
    targets = torch.randint(0, vocab, (tokens,), generator=generator)
    targets[list(ignored)] = -100
    return logits.to(DEVICE, dtype).requires_grad_(), targets.to(DEVICE)


def loss_and_grad(loss_fn, logits, targets, seed=1, **options):
    """The loss and the gradient of a random weighting of it (one weight per token
    for reduction='none')."""
    loss = loss_fn(logits, targets, **options)
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(loss.shape, generator=generator, dtype=torch.float64)
    (grad,) = torch.autograd.grad(loss, logits, weight.to(loss))
    return loss.detach(), grad


def assert_matches_torch(logits, targets, tolerance, block_size=None, **options):
    ours = loss_and_grad(
        fused_cross_entropy, logits, targets, block_size=block_size, **options
    )
    theirs = loss_and_grad(eager_cross_entropy, logits, targets, **options)
    torch.testing.assert_close(ours[0], theirs[0], equal_nan=True, **tolerance)
    torch.testing.assert_close(ours[1], theirs[1], **tolerance)
    return ours


# ------------------------------------------------------------ against F.cross_entropy


def test_eager_reference_is_f_cross_entropy_on_float32():
    logits, targets = make_inputs(5, 30, torch.bfloat16, ignored=[2])
    expected = F.cross_entropy(logits.float(), targets, label_smoothing=0.2)
    assert torch.equal(
        eager_cross_entropy(logits, targets, label_smoothing=0.2), expected
    )


@pytest.mark.parametrize(
    "tokens, vocab, block_size",
    [
        (1, 1, None),  # one word: the loss is 0, the gradient 0
        (1, 7, None),  # one chunk of 8 with a masked lane
        (3, 300, 64),  # five chunks, the last 44 wide
        (4, 256, 64),  # chunks that divide the row exactly
        (5, 1000, None),  # one chunk of 1024
    ],
)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_torch_in_float64(tokens, vocab, block_size, reduction):
    logits, targets = make_inputs(tokens, vocab, ignored=[0] if tokens > 2 else [])
    assert_matches_torch(
        logits, targets, FLOAT64, reduction=reduction, block_size=block_size
    )


@pytest.mark.parametrize("smoothing", [0.1, 1.0])
def test_label_smoothing_matches_torch_in_float64(smoothing):
    # epsilon reaches the kernels as a float32 scalar: exact to about 1e-9, not 1e-16
    logits, targets = make_inputs(4, 300, ignored=[1])
    assert_matches_torch(
        logits, targets, dict(rtol=1e-8, atol=1e-9), label_smoothing=smoothing
    )


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_matches_torch_in_float32(smoothing):
    logits, targets = make_inputs(6, 1000, torch.float32, ignored=[3])
    assert_matches_torch(
        logits, targets, FLOAT32, label_smoothing=smoothing, block_size=256
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits_match_torch_on_the_float32_copy(dtype):
    # Both compute in float32 from the same 16-bit logits: the losses agree to float32
    # rounding and the gradients, rounded to `dtype` at the end, to one unit in the last
    # place.
    logits, targets = make_inputs(6, 700, dtype, ignored=[0, 5])
    ours = loss_and_grad(fused_cross_entropy, logits, targets, label_smoothing=0.1)
    theirs = loss_and_grad(eager_cross_entropy, logits, targets, label_smoothing=0.1)
    assert ours[0].dtype == torch.float32 and ours[1].dtype == dtype
    torch.testing.assert_close(ours[0], theirs[0], **FLOAT32)
    torch.testing.assert_close(ours[1], theirs[1])  # torch's defaults for `dtype`


@settings(max_examples=12)
@given(
    tokens=st.integers(1, 5),
    vocab=st.integers(1, 700),
    block_size=st.sampled_from([None, 16, 64, 256]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    ignored=st.sets(st.integers(0, 4)),
    scale=st.sampled_from([0.1, 3.0, 30.0]),
    seed=st.integers(0, 2**16),
)
def test_matches_torch_on_random_shapes(
    tokens, vocab, block_size, reduction, ignored, scale, seed
):
    ignored = [row for row in ignored if row < tokens]
    logits, targets = make_inputs(
        tokens, vocab, seed=seed, scale=scale, ignored=ignored
    )
    assert_matches_torch(
        logits, targets, FLOAT64, reduction=reduction, block_size=block_size
    )


def test_gradient_is_softmax_minus_one_hot_scaled_by_the_incoming_gradient():
    logits, targets = make_inputs(4, 50, ignored=[2])
    loss = fused_cross_entropy(logits, targets)
    (grad,) = torch.autograd.grad(2.5 * loss, logits)
    expected = torch.softmax(logits.detach(), -1) - F.one_hot(targets.clamp(min=0), 50)
    expected[2] = 0.0  # the ignored row
    torch.testing.assert_close(grad, 2.5 * expected / 3, **FLOAT64)
    assert torch.equal(grad[2], torch.zeros(50, dtype=torch.float64, device=DEVICE))


def test_passes_gradcheck():
    logits, targets = make_inputs(3, 20, ignored=[1])

    def loss(logits):
        return fused_cross_entropy(logits, targets, label_smoothing=0.3, block_size=16)

    assert torch.autograd.gradcheck(loss, (logits,), fast_mode=True)


# ---------------------------------------------------------------- unusual cases


def test_targets_at_the_first_and_last_word():
    logits, _ = make_inputs(4, 300)
    targets = torch.tensor([0, 299, 0, 299], device=DEVICE)
    assert_matches_torch(logits, targets, FLOAT64, reduction="none", block_size=64)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_every_row_ignored_gives_what_torch_gives(reduction):
    # mean: 0 / 0 = nan, and a zero gradient; sum and none: zeros
    logits, targets = make_inputs(3, 40, ignored=[0, 1, 2])
    ours = loss_and_grad(fused_cross_entropy, logits, targets, reduction=reduction)
    theirs = loss_and_grad(eager_cross_entropy, logits, targets, reduction=reduction)
    torch.testing.assert_close(ours[0], theirs[0], equal_nan=True, **FLOAT64)
    assert ours[0].isnan().all() == (reduction == "mean")
    assert torch.equal(ours[1], torch.zeros_like(ours[1]))
    assert torch.equal(theirs[1], ours[1])


def test_another_ignore_index_and_int32_targets():
    logits, targets = make_inputs(5, 30)
    targets[1] = targets[3] = 7  # ignore word 7, a real column
    options = dict(ignore_index=7, reduction="none")
    ours = loss_and_grad(fused_cross_entropy, logits, targets.int(), **options)
    theirs = loss_and_grad(eager_cross_entropy, logits, targets, **options)
    torch.testing.assert_close(ours[0], theirs[0], **FLOAT64)
    torch.testing.assert_close(ours[1], theirs[1], **FLOAT64)
    assert ours[0][1] == 0 and ours[0][3] == 0


@pytest.mark.filterwarnings("ignore:overflow encountered")  # the interpreter's NumPy
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_extreme_logits_stay_finite_and_exact(dtype):
    # +-1e4 overflows exp() in any float type; the online maximum keeps every exponent
    # <= 0. Row 0 puts +1e4 on its target (loss 0), row 1 on another word (loss 2e4).
    logits = torch.full((3, 100), -1e4, dtype=torch.float64)
    logits[0, 5] = logits[1, 6] = 1e4
    logits[2] = torch.linspace(-1e4, 1e4, 100)
    logits = logits.to(DEVICE, dtype).requires_grad_()
    targets = torch.tensor([5, 7, 99], device=DEVICE)
    ours = loss_and_grad(fused_cross_entropy, logits, targets, reduction="none")
    theirs = loss_and_grad(eager_cross_entropy, logits, targets, reduction="none")
    assert torch.isfinite(ours[0]).all() and torch.isfinite(ours[1]).all()
    torch.testing.assert_close(ours[0], theirs[0], **FLOAT32)
    torch.testing.assert_close(ours[0][1], torch.tensor(2e4, device=DEVICE))
    torch.testing.assert_close(ours[1], theirs[1], atol=1e-6, rtol=1e-3)


def test_rows_may_be_a_slice_of_a_wider_buffer():
    wide, targets = make_inputs(4, 333)
    logits = wide[:, :300]  # row stride 333, columns contiguous
    targets = targets.clamp(max=299)
    assert not logits.is_contiguous()
    assert_matches_torch(logits, targets, FLOAT64, block_size=64)


def test_an_empty_batch_gives_what_torch_gives():
    logits, targets = make_inputs(0, 20)
    for reduction in ("mean", "sum", "none"):
        ours = loss_and_grad(fused_cross_entropy, logits, targets, reduction=reduction)
        theirs = loss_and_grad(
            eager_cross_entropy, logits, targets, reduction=reduction
        )
        torch.testing.assert_close(ours[0], theirs[0], equal_nan=True)
        assert ours[1].shape == (0, 20)


def test_the_logits_are_left_intact_and_guarded():
    # The design choice: the gradient goes to a new tensor, not over the logits.
    logits, targets = make_inputs(3, 40)
    before = logits.detach().clone()
    loss = fused_cross_entropy(logits, targets)
    loss.backward()
    assert torch.equal(logits.detach(), before)
    # ... and autograd notices if the caller changes them between the two passes
    logits, targets = make_inputs(3, 40)
    scaled = logits * 1.0
    loss = fused_cross_entropy(scaled, targets)
    scaled.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_no_grad_runs_the_forward_kernel_alone():
    logits, targets = make_inputs(3, 40)
    with torch.no_grad():
        loss = fused_cross_entropy(logits, targets)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, eager_cross_entropy(logits, targets).detach())


def test_second_derivatives_are_refused_not_wrong():
    logits, targets = make_inputs(3, 20)
    loss = fused_cross_entropy(logits, targets)
    direction = torch.ones((), dtype=loss.dtype, device=DEVICE, requires_grad=True)
    (grad,) = torch.autograd.grad(loss, logits, direction, create_graph=True)
    with pytest.raises(RuntimeError, match="marked with @once_differentiable"):
        grad.sum().backward()


# ---------------------------------------------------------------- memory


def test_memory_count_is_what_the_prose_states():
    count = memory_count(8192, 128256)
    logits = 8192 * 128256
    assert (
        count["eager peak"] == 12 * logits
        and round(count["eager peak"] / 1e9, 1) == 12.6
    )
    assert (
        count["eager held"] == 4 * logits and round(count["eager held"] / 1e9, 1) == 4.2
    )
    assert round(count["fused peak"] / 1e9, 1) == 2.1
    assert count["fused held"] == 5 * 8192
    wide = memory_count(100, 1000, torch.float32)  # no copy: the backward's 12 decide
    assert (
        wide["eager peak"] == 12 * 100_000 and wide["fused peak"] == 4 * 100_000 + 1600
    )


def test_measured_peak_memory_matches_the_count():
    tokens, vocab = 32, 2048
    measured = measure_memory(tokens, vocab, DEVICE)
    counted = memory_count(tokens, vocab)
    # the CUDA caching allocator rounds each block up to 512 bytes
    slack = 0.01 if DEVICE == "cpu" else 0.05
    for name in ("eager", "fused"):
        assert measured[name] == pytest.approx(counted[f"{name} peak"], rel=slack)


# ---------------------------------------------------------------- example and demo


def test_example_and_its_declared_dataflow():
    fn, args = example()
    logits, targets = (a.to(DEVICE) for a in args)
    loss = fn(logits, targets)
    torch.testing.assert_close(loss, F.cross_entropy(logits, targets), **FLOAT32)
    assert targets.min() == -100 and 0 in targets and 299 in targets
    nodes, edges = dataflow(loss)
    names = {node for node, _ in nodes}
    assert all(source in names and target in names for source, target, _ in edges)
    assert ("backward", "grad", "[6, 300]") in edges
    assert ("mean", "loss", "[]") in edges


def test_demo_checks_measures_and_trains_like_f_cross_entropy(tmp_path, capsys):
    metrics = main(
        [
            "--steps",
            "12",
            "--tokens",
            "16",
            "--vocab",
            "16",
            "--lr",
            "0.1",
            "--count-tokens",
            "1024",
            "--measure-size",
            "16x1024",
            "--device",
            DEVICE,
            "--out",
            str(tmp_path),
        ]
    )
    for name in ("float32", "float16"):
        assert metrics[f"loss error {name}"] < 1e-5
        assert metrics[f"grad error {name}"] < 1e-5
    # on a GPU the caching allocator rounds the small per-token tensors up to 512 bytes
    slack = 0.05 if DEVICE == "cpu" else 0.2
    assert metrics["eager peak bytes per logit"] == pytest.approx(12, rel=slack)
    assert metrics["fused peak bytes per logit"] == pytest.approx(2, rel=slack)
    assert metrics["peak ratio"] == pytest.approx(6, rel=0.01)
    assert metrics["loss gap"] < 1e-5
    assert metrics["final loss"] < metrics["first loss"] - 0.3
    printed = capsys.readouterr().out
    assert "fused vs F.cross_entropy" in printed and "12.00" in printed
    assert (tmp_path / "memory.png").stat().st_size > 0
    assert (tmp_path / "training.png").stat().st_size > 0


# ---------------------------------------------------------------- bad input


def logits_of(*shape, **kwargs):
    return torch.zeros(*shape, **kwargs)


def ids(*values, **kwargs):
    return torch.tensor(values, **kwargs)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (
            lambda: fused_cross_entropy([[0.0, 1.0]], ids(0)),
            TypeError,
            "logits must be a torch.Tensor",
        ),
        (
            lambda: fused_cross_entropy(logits_of(2, 3, 5), ids(0, 1)),
            ValueError,
            r"logits must be 2-D \[tokens, vocab\], got shape \(2, 3, 5\); flatten",
        ),
        (
            lambda: fused_cross_entropy(logits_of(2, 5, dtype=torch.int64), ids(0, 1)),
            TypeError,
            "logits must be float16, bfloat16, float32 or float64, got torch.int64",
        ),
        (
            lambda: fused_cross_entropy(logits_of(2, 0), ids(0, 1)),
            ValueError,
            "logits must have a vocab of at least 1",
        ),
        (
            lambda: fused_cross_entropy(logits_of(5, 2).T, ids(0, 1)),
            ValueError,
            r"rows must be contiguous .* pass logits.contiguous\(\)",
        ),
        (
            lambda: fused_cross_entropy(logits_of(2, 5), ids(0.0, 1.0)),
            TypeError,
            "targets must be int64 or int32 word ids, got torch.float32",
        ),
        (
            lambda: fused_cross_entropy(logits_of(2, 5), ids(0, 1, 2)),
            ValueError,
            r"targets must be \[tokens\] = \(2,\) like logits' rows, got \(3,\)",
        ),
        (
            lambda: fused_cross_entropy(logits_of(2, 5), ids(0, 1, device="meta")),
            ValueError,
            "targets are on meta but logits on cpu",
        ),
        (
            lambda: fused_cross_entropy(logits_of(2, 5), ids(0, 5)),
            ValueError,
            r"targets must be word ids in \[0, 5\) or ignore_index=-100; targets\[1\] "
            "is 5",
        ),
        (
            lambda: fused_cross_entropy(logits_of(2, 5), ids(-1, 0)),
            ValueError,
            r"targets\[0\] is -1",
        ),
        (
            lambda: fused_cross_entropy(logits_of(2, 5), ids(-100, 0), ignore_index=-1),
            ValueError,
            r"ignore_index=-1; targets\[0\] is -100",
        ),
        (
            lambda: fused_cross_entropy(logits_of(2, 5), ids(0, 1), ignore_index=1.5),
            TypeError,
            "ignore_index must be an int, got 1.5",
        ),
        (
            lambda: fused_cross_entropy(
                logits_of(2, 5), ids(0, 1), label_smoothing=1.5
            ),
            ValueError,
            r"label_smoothing must be in \[0, 1\], got 1.5",
        ),
        (
            lambda: fused_cross_entropy(logits_of(2, 5), ids(0, 1), reduction="avg"),
            ValueError,
            "reduction must be 'mean', 'sum' or 'none', got 'avg'",
        ),
        (
            lambda: fused_cross_entropy(logits_of(2, 5), ids(0, 1), block_size=24),
            ValueError,
            "block_size must be a power of two >= 16, got 24",
        ),
    ],
)
def test_bad_input_raises_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_gpu_report_runs_end_to_end_on_a_stand_in_device(monkeypatch, fixed_times):
    """gpu_report runs on a fake GPU; its GB/s and ratios follow from fixed times."""
    fixed_times([1.0, 3.0, 2.0, 9.0, 1.5, 6.0])  # ms: forward, forward+backward
    monkeypatch.setattr(cross_entropy, "copy_bandwidth", lambda device: 1e-4)
    with fake_cuda():
        report = gpu_report(tokens=3, vocab=10, dtype=torch.float16)
    # 3×10 float16 logits, 60 bytes: read once forward, and twice with the gradient
    # written for forward+backward, plus 16 bytes a token each way.
    forward, training = 60 + 3 * 16, 3 * 60 + 3 * 32
    assert report == pytest.approx(
        {
            "size": "3×10 float16",
            "copy GB/s": 1e-4,
            "forward, ours µs": 1e3,
            "forward+backward, ours µs": 3e3,
            "forward, torch (float32) µs": 2e3,
            "forward+backward, torch (float32) µs": 9e3,
            "forward, torch (float16) µs": 1.5e3,
            "forward+backward, torch (float16) µs": 6e3,
            "peak GB, ours": 0.0,  # the fake's memory counters read 0
            "peak GB, torch (float32)": 0.0,
            "peak GB, torch (float16)": 0.0,
            "forward, ours GB/s": forward / 1e-3 / 1e9,
            "forward+backward, ours GB/s": training / 3e-3 / 1e9,
            "forward, ours of copy": forward / 1e-3 / 1e9 / 1e-4,
            "forward+backward, ours of copy": training / 3e-3 / 1e9 / 1e-4,
            "forward, ours / torch (float32), speed": 2.0,
            "forward+backward, ours / torch (float32), speed": 3.0,
            "peak GB counted, ours": (2 * 30 + 16 * 3) / 1e9,  # 2 bytes a logit
            "peak GB counted, torch (float32)": 12 * 30 / 1e9,  # 12 bytes a logit
        }
    )


# ---------------------------------------------------------------- on a GPU only


@CUDA
@pytest.mark.parametrize(
    "dtype, tolerance",
    [(torch.float32, 1e-5), (torch.float16, 1e-3), (torch.bfloat16, 1e-2)],
)
def test_gpu_matches_torch_at_a_real_vocabulary(dtype, tolerance):
    generator = torch.Generator("cuda").manual_seed(0)
    logits = 4 * torch.randn(512, 50257, generator=generator, device="cuda")
    logits = logits.to(dtype).requires_grad_()
    targets = torch.randint(0, 50257, (512,), generator=generator, device="cuda")
    targets[::7] = -100
    for smoothing in (0.0, 0.1):
        ours = loss_and_grad(
            fused_cross_entropy, logits, targets, label_smoothing=smoothing
        )
        theirs = loss_and_grad(
            eager_cross_entropy, logits, targets, label_smoothing=smoothing
        )
        torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours[1], theirs[1], rtol=tolerance, atol=1e-6)


@CUDA
@pytest.mark.skipif(INTERPRETED, reason="2**31 logits in the interpreter: hours")
def test_gpu_rows_past_two_to_the_31_are_read_correctly():
    # 16,400 x 131,072 bfloat16 logits: the last rows start past 2**31 elements, where
    # a 32-bit row offset would wrap around to another row.
    tokens, vocab = 16400, 131072
    logits = torch.randn(tokens, vocab, device="cuda", dtype=torch.bfloat16)
    targets = torch.randint(0, vocab, (tokens,), device="cuda")
    assert logits.numel() > 2**31
    losses = fused_cross_entropy(logits, targets, reduction="none")
    last = F.cross_entropy(logits[-8:].float(), targets[-8:], reduction="none")
    torch.testing.assert_close(losses[-8:], last, rtol=1e-5, atol=1e-5)


@CUDA
@pytest.mark.skipif(
    INTERPRETED, reason="interpreted kernels: do_bench would time NumPy"
)
def test_gpu_report_measures_time_bandwidth_and_memory():
    report = gpu_report(tokens=1024, vocab=32000)
    assert report["size"] == "1024×32000 bfloat16"
    for step in ("forward", "forward+backward"):
        for name in ("ours", "torch (float32)", "torch (bfloat16)"):
            assert report[f"{step}, {name} µs"] > 0
        assert 0 < report[f"{step}, ours of copy"] < 1.1
    assert report["peak GB, ours"] < report["peak GB, torch (bfloat16)"]
    assert report["peak GB, ours"] < report["peak GB, torch (float32)"] / 4
    assert report["peak GB, ours"] == pytest.approx(
        report["peak GB counted, ours"], rel=0.1
    )


# ---------------------------------------------------------------- benchmarks

BENCH_LOGITS, BENCH_TARGETS = make_inputs(16, 1000, torch.float32, ignored=[3])


def training_step(loss_fn):
    def step():
        torch.autograd.grad(loss_fn(BENCH_LOGITS, BENCH_TARGETS), BENCH_LOGITS)

    return step


@pytest.mark.benchmark(group="cross-entropy forward, 16 x 1000, CPU")
def test_bench_forward_fused(benchmark):
    benchmark.extra_info["label"] = "fused Triton kernel, in the interpreter"
    benchmark(fused_cross_entropy, BENCH_LOGITS.detach(), BENCH_TARGETS)


@pytest.mark.benchmark(group="cross-entropy forward, 16 x 1000, CPU")
def test_bench_forward_torch(benchmark):
    benchmark.extra_info["label"] = "F.cross_entropy"
    benchmark.extra_info["baseline"] = True
    benchmark(eager_cross_entropy, BENCH_LOGITS.detach(), BENCH_TARGETS)


@pytest.mark.benchmark(group="cross-entropy forward+backward, 16 x 1000, CPU")
def test_bench_training_fused(benchmark):
    benchmark.extra_info["label"] = "fused Triton kernels, in the interpreter"
    benchmark(training_step(fused_cross_entropy))


@pytest.mark.benchmark(group="cross-entropy forward+backward, 16 x 1000, CPU")
def test_bench_training_torch(benchmark):
    benchmark.extra_info["label"] = "F.cross_entropy and autograd"
    benchmark.extra_info["baseline"] = True
    benchmark(training_step(eager_cross_entropy))
