"""Verified against torch.softmax and its autograd gradient in float64 (to 1e-12) and
float32 (to 1e-6), and float16/bfloat16 outputs against the float32 softmax to within
one unit in the last place, in Triton's interpreter on a CPU and compiled on a GPU.

The shapes are the kernel's edge cases: one column, 1,000 columns in a block of 1,024,
a block of exactly a power of two and one past it, three axes, empty tensors; the
values include rows that are -inf but for one score, rows that are all -inf (NaN, as in
torch), and scores of 1e4. The traffic the prose counts is counted again on the
dispatcher, the masked lanes are checked to touch nothing past a row, and the demo's
claims on a short run.
"""

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")


from annotated.kernels import softmax  # noqa: E402
from annotated.kernels.softmax import (  # noqa: E402
    MAX_COLS,
    accumulator,
    dataflow,
    example,
    fused_softmax,
    gpu_report,
    launch,
    main,
    overflow_experiment,
    softmax_backward,
    softmax_backward_reference,
    softmax_forward_kernel,
    softmax_reference,
    traffic,
)
from tools.fake_cuda import fake_cuda  # noqa: E402

FLOAT64 = dict(rtol=1e-12, atol=1e-12)
FLOAT32 = dict(rtol=1e-6, atol=1e-6)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# conftest.py sets TRITON_INTERPRET=1 unless it is set already, so by default the
# kernels run in the interpreter on CPU tensors, GPU or not. With TRITON_INTERPRET=0 on
# a GPU they are compiled, and every test below runs on the GPU instead.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu"


def scores(*shape, dtype=torch.float64, seed=0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(*shape, generator=generator, dtype=torch.float64)
    return x.to(DEVICE, dtype)


def values_and_gradient(fn, x, seed=1):
    """`fn(x)` and the gradient of a random weighting of it with respect to `x`."""
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(y.shape, generator=generator, dtype=torch.float64).to(y)
    (gradient,) = torch.autograd.grad(y, x, weight)
    return y.detach(), gradient


def torch_softmax(x):
    return torch.softmax(x, dim=-1)


def assert_matches_torch(x, **tolerance):
    ours = values_and_gradient(fused_softmax, x)
    theirs = values_and_gradient(torch_softmax, x)
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine.dtype == reference.dtype and mine.shape == reference.shape
        torch.testing.assert_close(mine, reference, equal_nan=True, **tolerance)


def assert_close_to_float32(x, ulp):
    """Ours in `x`'s dtype against torch.softmax in float32 on the same rounded
    inputs: values within `ulp` (relative); the gradient starts from the rounded
    output, so it is held to two ulps of its largest entry. The weighting of the
    gradient is rounded to `x`'s dtype for both sides."""
    x = x.detach().requires_grad_()
    wide = x.detach().float().requires_grad_()
    generator = torch.Generator().manual_seed(2)
    weight = torch.randn(x.shape, generator=generator).to(x)
    ours, theirs = fused_softmax(x), torch.softmax(wide, -1)
    assert ours.dtype == x.dtype
    torch.testing.assert_close(ours.float(), theirs.detach(), rtol=ulp, atol=1e-6)
    (ours_gradient,) = torch.autograd.grad(ours, x, weight)
    (gradient,) = torch.autograd.grad(theirs, wide, weight.float())
    assert ours_gradient.dtype == x.dtype
    scale = gradient.abs().max().item()
    torch.testing.assert_close(
        ours_gradient.float(), gradient, rtol=2 * ulp, atol=2 * ulp * scale
    )


# ---------------------------------------------------------------- forward and backward


def test_masked_lanes_touch_nothing_past_a_row():
    # First in the file, since a kernel that addresses memory past its tensors can
    # crash the interpreter in a later test instead of failing this one. Two rows of
    # 5 in blocks of 8, in larger buffers: row 1 starts at element 5, and its lanes
    # 5-7 would land past the end.
    x = scores(16, dtype=torch.float32)
    y = torch.full((16,), -7.0, device=DEVICE)
    softmax_forward_kernel[(2,)](x, y, 5, ACC=accumulator(torch.float32), BLOCK=8)
    torch.testing.assert_close(y[:10], torch.softmax(x[:10].view(2, 5), -1).flatten())
    assert torch.all(y[10:] == -7.0)


@pytest.mark.parametrize(
    "shape",
    [(1, 1), (4, 1), (3, 1000), (2, 1024), (2, 1025), (2, 3, 37), (17,)],
    ids=str,
)
def test_matches_torch_softmax_in_float64(shape):
    assert_matches_torch(scores(*shape), **FLOAT64)


@pytest.mark.parametrize("shape", [(5, 37), (3, 1000)], ids=str)
def test_matches_torch_softmax_in_float32(shape):
    assert_matches_torch(scores(*shape, dtype=torch.float32, scale=5.0), **FLOAT32)


@settings(max_examples=12)
@given(
    rows=st.integers(1, 6),
    cols=st.integers(1, 300),
    scale=st.sampled_from([0.01, 1.0, 30.0]),
    seed=st.integers(0, 2**16),
)
def test_matches_torch_softmax_on_random_shapes(rows, cols, scale, seed):
    assert_matches_torch(scores(rows, cols, seed=seed, scale=scale), **FLOAT64)


def test_matches_the_eager_reference_and_its_backward():
    x = scores(4, 50)
    y, gradient = values_and_gradient(fused_softmax, x)
    torch.testing.assert_close(y, softmax_reference(x), **FLOAT64)
    generator = torch.Generator().manual_seed(1)  # the weighting of the gradient
    weight = torch.randn(y.shape, generator=generator, dtype=torch.float64).to(y)
    torch.testing.assert_close(
        gradient, softmax_backward_reference(y, weight), **FLOAT64
    )


def test_passes_gradcheck():
    x = scores(3, 11).requires_grad_()
    assert torch.autograd.gradcheck(fused_softmax, (x,), fast_mode=True)


def test_rows_sum_to_one_and_shifting_a_row_changes_nothing():
    x = scores(6, 77, scale=4.0)
    y = fused_softmax(x)
    ones = torch.ones(6, dtype=torch.float64, device=DEVICE)
    torch.testing.assert_close(y.sum(-1), ones, **FLOAT64)
    # x + shift rounds x to the shift's ulp (about 1e-12 at 5000), nothing else moves
    shift = torch.arange(6, dtype=torch.float64, device=DEVICE)[:, None] * 1000
    torch.testing.assert_close(fused_softmax(x + shift), y, rtol=1e-10, atol=1e-12)


def test_a_row_of_minus_infinity_but_one_is_one_hot_with_zero_gradient():
    x = torch.full((3, 9), -float("inf"), dtype=torch.float64, device=DEVICE)
    x[0, 4], x[1, 0], x[2, 8] = 2.0, -1e4, 1e4
    assert_matches_torch(x, **FLOAT64)
    y, gradient = values_and_gradient(fused_softmax, x)
    assert torch.equal(y, torch.eye(9, dtype=torch.float64, device=DEVICE)[[4, 0, 8]])
    assert torch.equal(gradient, torch.zeros_like(gradient))


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # NumPy's -inf - -inf
def test_a_row_of_minus_infinity_is_nan_like_torch():
    x = scores(2, 5)
    x[1] = -float("inf")
    assert_matches_torch(x, **FLOAT64)
    assert torch.isnan(fused_softmax(x)[1]).all()
    assert torch.isfinite(fused_softmax(x)[0]).all()


def test_scores_of_1e4_do_not_overflow():
    x = scores(4, 37, dtype=torch.float32, scale=1e4)
    assert torch.isinf(torch.exp(x)).any()  # the unshifted softmax would overflow
    assert_matches_torch(x, **FLOAT32)
    assert torch.isfinite(fused_softmax(x)).all()


@pytest.mark.parametrize(
    "dtype, ulp", [(torch.float16, 2**-10), (torch.bfloat16, 2**-7)]
)
def test_half_precision_in_and_out_computes_in_float32(dtype, ulp):
    # Ours rounds the float32 result once, as it is stored: within one unit in the
    # last place (relative `ulp`) of the float32 softmax of the same rounded inputs.
    # The interpreter rounds bfloat16 toward zero, a GPU to nearest: one ulp covers
    # both.
    assert_close_to_float32(scores(5, 300, dtype=dtype, scale=3.0), ulp)


def test_a_stride_zero_gradient_from_sum_is_handled():
    x = scores(3, 20).requires_grad_()
    y, strides = fused_softmax(x), []
    y.register_hook(lambda grad: strides.append(grad.stride()))
    (ours,) = torch.autograd.grad(y.sum(), x)
    (theirs,) = torch.autograd.grad(torch.softmax(x, -1).sum(), x)
    assert strides == [(0, 0)]  # what backward was handed: one number, expanded
    torch.testing.assert_close(ours, theirs, **FLOAT64)


def test_a_gradient_that_is_not_contiguous_is_read_by_its_strides():
    # A sum's gradient is a stride-0 expand of one number and a transposed weight
    # has swapped strides: the kernel indexes rows as if contiguous, so backward must
    # hand it a contiguous copy.
    x = scores(4, 20).requires_grad_()
    weight = torch.randn(20, 4, dtype=torch.float64).T
    for ours, theirs in (
        (fused_softmax(x).sum(), torch.softmax(x, -1).sum()),
        ((fused_softmax(x) * 1.5).sum(), (torch.softmax(x, -1) * 1.5).sum()),
    ):
        (got,) = torch.autograd.grad(ours, x)
        (want,) = torch.autograd.grad(theirs, x)
        torch.testing.assert_close(got, want, **FLOAT64)
    (got,) = torch.autograd.grad(fused_softmax(x), x, weight)
    (want,) = torch.autograd.grad(torch.softmax(x, -1), x, weight)
    assert not weight.is_contiguous()
    torch.testing.assert_close(got, want, **FLOAT64)


def test_inference_skips_autograd_and_agrees_with_training():
    x = scores(3, 20).requires_grad_()
    with torch.no_grad():
        inference = fused_softmax(x)
    training = fused_softmax(x)
    assert inference.grad_fn is None and training.grad_fn is not None
    assert torch.equal(inference, training.detach())


def test_second_derivatives_are_refused_not_wrong():
    x = scores(2, 5).requires_grad_()
    y = fused_softmax(x)
    direction = torch.ones_like(y, requires_grad=True)
    (gradient,) = torch.autograd.grad(y, x, direction, create_graph=True)
    with pytest.raises(RuntimeError, match="marked with @once_differentiable"):
        gradient.sum().backward()


@pytest.mark.parametrize("shape", [(0, 5), (3, 0)], ids=str)
def test_an_empty_tensor_returns_empty_like_torch(shape):
    x = torch.empty(shape, device=DEVICE)
    assert fused_softmax(x).shape == torch.softmax(x, -1).shape == shape


def test_backward_kernel_alone_matches_the_formula():
    y = torch.softmax(scores(4, 33), -1)
    grad_y = scores(4, 33, seed=3)
    torch.testing.assert_close(
        softmax_backward(y, grad_y), softmax_backward_reference(y, grad_y), **FLOAT64
    )


# ---------------------------------------------------------------- launch and traffic


def test_launch_takes_the_next_power_of_two_and_about_eight_elements_a_thread():
    assert launch(1) == {"BLOCK": 1, "num_warps": 1}
    assert launch(1000) == {"BLOCK": 1024, "num_warps": 4}
    assert launch(3000) == {"BLOCK": 4096, "num_warps": 16}
    assert launch(MAX_COLS) == {"BLOCK": MAX_COLS, "num_warps": 16}


def test_traffic_is_what_the_prose_counts():
    rows, cols = 8, 16
    counted = traffic(rows, cols)
    matrix, column = rows * cols * 4, rows * 4
    assert counted["eager forward kernels"] == 5
    assert counted["eager forward bytes"] == 8 * matrix + 4 * column
    assert counted["eager backward kernels"] == 4
    assert counted["eager backward bytes"] == 9 * matrix + 2 * column
    assert counted["fused forward bytes"] == 2 * matrix
    assert counted["fused backward bytes"] == 3 * matrix
    assert traffic(rows, cols, torch.float16)["fused forward bytes"] == matrix


# ---------------------------------------------------------------- example and demo


def test_example_and_its_declared_dataflow():
    fn, args = example()
    args = [a.to(DEVICE) for a in args]
    y = fn(*args)
    torch.testing.assert_close(y, torch.softmax(args[0], -1), **FLOAT32)
    nodes, edges = dataflow(y)
    names = {node for node, _ in nodes}
    assert all(source in names and target in names for source, target, _ in edges)
    assert ("kernel", "y", "[6, 37], written once") in edges
    assert ("kernel", "softmax_forward_kernel\n6 programs × BLOCK 64") in nodes


def test_overflow_experiment_fails_unshifted_rows_only_at_large_scale():
    # At scale 1 every row is fine both ways; at 1e4, exp overflows in every unshifted
    # row (16 normal scores: one above 0.009 is enough), and no fused row.
    result = overflow_experiment([1.0, 1e4], rows=8, cols=16, device=DEVICE)
    assert result == {"unshifted": [1.0, 0.0], "fused": [1.0, 1.0]}


def test_demo_checks_counts_and_shows_the_overflow(tmp_path, capsys):
    metrics = main(
        [
            "--count-size",
            "64x96",
            "--overflow-rows",
            "8",
            "--overflow-cols",
            "16",
            "--report-shapes",  # used on a GPU only
            "256x300",
            "--device",
            DEVICE,
            "--out",
            str(tmp_path),
        ]
    )
    assert metrics["max error vs torch.softmax, float64 values"] < 1e-12
    assert metrics["max error vs torch.softmax, float64 gradients"] < 1e-12
    assert metrics["max error vs torch.softmax, float16 values"] < 1e-3
    assert 3.9 < metrics["forward traffic ratio"] < 4.1
    assert 2.9 < metrics["backward traffic ratio"] < 3.1
    assert metrics["unshifted good rows at 1e4"] == 0.0
    assert metrics["fused good rows at 1e4"] == 1.0
    assert "4.0× fewer bytes" in capsys.readouterr().out
    assert (tmp_path / "softmax.png").stat().st_size > 0


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, error, match",
    [
        (
            lambda: fused_softmax([[1.0, 2.0]]),
            TypeError,
            "fused_softmax: x must be a torch.Tensor, got list",
        ),
        (
            lambda: fused_softmax(torch.ones(3, dtype=torch.int64)),
            TypeError,
            "x must be float16, bfloat16, float32 or float64, got torch.int64",
        ),
        (
            lambda: fused_softmax(torch.tensor(1.0)),
            ValueError,
            "x must have at least one axis, got a scalar",
        ),
        (
            lambda: fused_softmax(torch.ones(4, 3).T),
            ValueError,
            r"x must be contiguous .* pass x.contiguous\(\)",
        ),
        (
            lambda: fused_softmax(torch.empty(2, MAX_COLS + 1, device="meta")),
            ValueError,
            f"last axis has {MAX_COLS + 1} elements; one block holds a row of at most",
        ),
        (
            lambda: fused_softmax(torch.empty(2**15, 2**16, device="meta")),
            ValueError,
            r"at most 2\*\*31 - 1",
        ),
    ],
)
def test_bad_input_raises_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_gpu_report_runs_end_to_end_on_a_stand_in_device(monkeypatch, fixed_times):
    """gpu_report runs on a fake GPU; its GB/s and ratios follow from fixed times."""
    fixed_times([1.0, 2.0, 4.0, 5.0, 10.0, 0.5, 1.0, 2.0, 3.0, 6.0])  # ms
    monkeypatch.setattr(softmax, "copy_bandwidth", lambda: 6e-5)
    with fake_cuda():
        report = gpu_report(shapes=((3, 5), (2, 100)), dtype=torch.float16)
    # 3x5 float16: 30 bytes a matrix, 60 moved forward (x, y), 90 backward.
    expected = {"device": "fake CUDA device", "dtype": "float16", "copy GB/s": 6e-5}
    for name, ms, gbps in (
        ("ours", 1.0, 6e-5),
        ("torch", 2.0, 3e-5),
        ("eager", 4.0, 1.5e-5),
        ("backward ours", 5.0, 1.8e-5),
        ("backward torch", 10.0, 9e-6),
    ):
        expected[f"3x5 {name} µs"] = 1e3 * ms
        expected[f"3x5 {name} GB/s"] = gbps
        expected[f"3x5 {name} of copy"] = gbps / 6e-5
    expected["3x5 ours / torch"] = expected["3x5 backward ours / torch"] = 2.0
    first = {key: value for key, value in report.items() if "2x100" not in key}
    assert first == pytest.approx(expected)
    # 2x100 float16: 400 bytes a matrix, 800 moved forward, 1,200 backward.
    assert report["2x100 ours GB/s"] == pytest.approx(1.6e-3)
    assert report["2x100 backward torch of copy"] == pytest.approx(2e-4 / 6e-5)
    assert report["2x100 ours / torch"] == report["2x100 backward ours / torch"] == 2
    assert len(report) == len(expected) + 17


# ---------------------------------------------------------------- on a GPU only


@CUDA
@pytest.mark.skipif(INTERPRETED, reason="compiled kernels only")
@pytest.mark.parametrize(
    "dtype, ulp",
    [(torch.float32, 1e-5), (torch.float16, 2**-10), (torch.bfloat16, 2**-7)],
    ids=str,
)
@pytest.mark.parametrize("shape", [(4097, 1000), (512, 4096), (64, 16385)], ids=str)
def test_gpu_matches_torch_softmax_values_and_gradients(shape, dtype, ulp):
    assert_close_to_float32((4 * torch.randn(shape, device="cuda")).to(dtype), ulp)


@CUDA
@pytest.mark.skipif(
    INTERPRETED, reason="interpreted kernels: do_bench would time NumPy"
)
def test_gpu_report_measures_bandwidth_against_a_copy():
    report = gpu_report(shapes=((1024, 1024), (256, 3000)))
    assert report["copy GB/s"] > 0 and report["dtype"] == "float32"
    for shape in ("1024x1024", "256x3000"):
        for name in ("ours", "torch", "eager", "backward ours", "backward torch"):
            assert report[f"{shape} {name} µs"] > 0
            assert 0 < report[f"{shape} {name} of copy"] < 2
        assert report[f"{shape} ours / torch"] == pytest.approx(
            report[f"{shape} torch µs"] / report[f"{shape} ours µs"]
        )


# ---------------------------------------------------------------- benchmarks

BENCH = scores(32, 256, dtype=torch.float32)
BENCH_LEAF = BENCH.clone().requires_grad_()
BENCH_GRAD = scores(32, 256, dtype=torch.float32, seed=1)


def training_step(fn):
    def step():
        torch.autograd.grad(fn(BENCH_LEAF), BENCH_LEAF, BENCH_GRAD)

    return step


@pytest.mark.benchmark(group="softmax forward, 32 x 256 float32, CPU")
def test_bench_forward_fused(benchmark):
    benchmark.extra_info["label"] = "fused Triton kernel, in the interpreter"
    benchmark(fused_softmax, BENCH)


@pytest.mark.benchmark(group="softmax forward, 32 x 256 float32, CPU")
def test_bench_forward_torch(benchmark):
    benchmark.extra_info["label"] = "torch.softmax"
    benchmark.extra_info["baseline"] = True
    benchmark(torch_softmax, BENCH)


@pytest.mark.benchmark(group="softmax forward+backward, 32 x 256 float32, CPU")
def test_bench_training_fused(benchmark):
    benchmark.extra_info["label"] = "fused Triton kernels, in the interpreter"
    benchmark(training_step(fused_softmax))


@pytest.mark.benchmark(group="softmax forward+backward, 32 x 256 float32, CPU")
def test_bench_training_torch(benchmark):
    benchmark.extra_info["label"] = "torch.softmax and its ATen backward"
    benchmark.extra_info["baseline"] = True
    benchmark(training_step(torch_softmax))
