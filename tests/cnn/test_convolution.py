"""Verified against torch.nn.functional's conv2d, max_pool2d and avg_pool2d in float64
(forward values and input, weight and bias gradients to 1e-10) over hypothesis-drawn
shapes, strides, paddings, dilations and groups.

Each of the three algorithms (direct, im2col with its hand-written col2im backward, FFT)
runs on the same random input and upstream gradient as the reference. Unusual cases: a
kernel as large as the padded image, 1×1 kernels, depthwise groups, extreme values in
max pooling, and a bad argument of every kind. Benchmarks pair each algorithm with
F.conv2d at 3×3 kernels, and im2col and FFT at 11×11, where the FFT overtakes im2col.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from annotated.cnn.convolution import (
    ALGORITHMS,
    avg_pool2d,
    col2im,
    conv2d_fft,
    conv2d_im2col,
    dataflow,
    example,
    fast_size,
    im2col,
    main,
    max_pool2d,
)

TOLERANCE = dict(rtol=1e-10, atol=1e-10)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors: torch's second thread only adds handoffs on a busy 2-core host."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    channels = groups * draw(st.integers(1, 2))
    out_channels = groups * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    h = draw(st.integers(max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0]), 9))
    w = draw(st.integers(max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1]), 9))
    batch = draw(st.integers(1, 2))
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return (
        batch,
        channels,
        out_channels,
        (h, w),
        (kh, kw),
        stride,
        padding,
        dilation,
        groups,
        bias,
        seed,
    )


def run_both(fn, reference, inputs, grad_seed):
    """Forward and backward through `fn` and `reference` with one upstream gradient;
    return both outputs and both lists of input gradients."""
    results = []
    for f in (fn, reference):
        leaves = [
            t.detach().clone().requires_grad_() if t is not None else None
            for t in inputs
        ]
        out = f(*leaves)
        grad = torch.randn(
            out.shape,
            dtype=out.dtype,
            generator=torch.Generator().manual_seed(grad_seed),
        )
        out.backward(grad)
        results.append(
            (out.detach(), [t.grad if t is not None else None for t in leaves])
        )
    return results


@pytest.mark.parametrize("name", list(ALGORITHMS))
@settings(max_examples=25, deadline=None)
@given(case=conv_cases())
def test_conv2d_matches_torch(name, case):
    batch, c, o, (h, w), (kh, kw), stride, padding, dilation, groups, has_bias, seed = (
        case
    )
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, c, h, w, dtype=torch.float64, generator=g)
    weight = torch.randn(o, c // groups, kh, kw, dtype=torch.float64, generator=g)
    bias = torch.randn(o, dtype=torch.float64, generator=g) if has_bias else None
    options = (stride, padding, dilation, groups)
    (ours, our_grads), (theirs, their_grads) = run_both(
        lambda x, w, b: ALGORITHMS[name](x, w, b, *options),
        lambda x, w, b: F.conv2d(x, w, b, *options),
        (x, weight, bias),
        seed + 1,
    )
    torch.testing.assert_close(ours, theirs, **TOLERANCE)
    for mine, reference in zip(our_grads, their_grads):
        if reference is None:
            assert mine is None
        else:
            torch.testing.assert_close(mine, reference, **TOLERANCE)


@pytest.mark.parametrize("name", list(ALGORITHMS))
@pytest.mark.parametrize(
    "shape, weight_shape, options",
    [
        ((1, 3, 5, 5), (4, 3, 5, 5), dict()),  # kernel as large as the image
        ((2, 4, 6, 7), (8, 1, 3, 3), dict(padding=1, groups=4)),  # depthwise
        ((1, 2, 9, 9), (3, 2, 1, 1), dict(stride=2)),  # 1×1, strided
        ((1, 1, 13, 13), (1, 1, 3, 3), dict(dilation=4, padding=4)),  # wide dilation
    ],
)
def test_conv2d_unusual_shapes(name, shape, weight_shape, options):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, generator=g)
    weight = torch.randn(weight_shape, dtype=torch.float64, generator=g)
    (ours, our_grads), (theirs, their_grads) = run_both(
        lambda x, w: ALGORITHMS[name](x, w, **options),
        lambda x, w: F.conv2d(x, w, **options),
        (x, weight),
        1,
    )
    torch.testing.assert_close(ours, theirs, **TOLERANCE)
    for mine, reference in zip(our_grads, their_grads):
        torch.testing.assert_close(mine, reference, **TOLERANCE)


def test_fast_size_is_the_next_size_with_only_factors_2_3_and_5():
    # By hand: 7 -> 8, 11 -> 12, 13 -> 15, 17 -> 18, 97 -> 100; 1 and 60 already are.
    sizes = [1, 7, 11, 13, 17, 60, 97]
    assert [fast_size(n) for n in sizes] == [1, 8, 12, 15, 18, 60, 100]


def test_col2im_is_the_adjoint_of_im2col():
    """<im2col(x), c> = <x, col2im(c)> for overlapping, strided, dilated windows."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 10, 9, dtype=torch.float64, generator=g)
    cols = im2col(x, (3, 2), (2, 1), (2, 3), (3, 6))
    c = torch.randn(cols.shape, dtype=torch.float64, generator=g)
    left = (cols * c).sum()
    right = (x * col2im(c, (10, 9), (2, 1), (2, 3))).sum()
    torch.testing.assert_close(left, right, rtol=1e-12, atol=1e-12)


@st.composite
def pool_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    padding = (draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2)))
    h = draw(st.integers(max(1, kh - 2 * padding[0]), 9))
    w = draw(st.integers(max(1, kw - 2 * padding[1]), 9))
    return (
        (draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w),
        (kh, kw),
        stride,
        padding,
        draw(st.integers(0, 2**16)),
    )


@pytest.mark.parametrize(
    "ours, reference", [(max_pool2d, F.max_pool2d), (avg_pool2d, F.avg_pool2d)]
)
@settings(max_examples=40, deadline=None)
@given(case=pool_cases())
def test_pooling_matches_torch(ours, reference, case):
    shape, kernel, stride, padding, seed = case
    x = torch.randn(
        shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )
    (mine, (my_grad,)), (theirs, (their_grad,)) = run_both(
        lambda x: ours(x, kernel, stride, padding),
        lambda x: reference(x, kernel, stride, padding),
        (x,),
        seed + 1,
    )
    torch.testing.assert_close(mine, theirs, **TOLERANCE)
    torch.testing.assert_close(my_grad, their_grad, **TOLERANCE)


def test_max_pool_extreme_values():
    """Huge and subnormal values: padding (-inf) must never win a window."""
    x = torch.tensor(
        [[[[1e300, -1e300, 3.0], [-1e308, 5e-324, -2.0]]]], dtype=torch.float64
    )
    for kernel, stride, padding in [(2, 1, 1), (3, 2, 1), (2, 2, 0)]:
        (mine, (g1,)), (theirs, (g2,)) = run_both(
            lambda x: max_pool2d(x, kernel, stride, padding),
            lambda x: F.max_pool2d(x, kernel, stride, padding),
            (x,),
            0,
        )
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
        torch.testing.assert_close(g1, g2, rtol=0, atol=0)


def test_float32_fft_is_close():
    """In float32 the FFT's rounding is larger but still small against the output."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 24, 24, generator=g)
    weight = torch.randn(16, 16, 11, 11, generator=g)
    reference = F.conv2d(x, weight, padding=5)
    error = (conv2d_fft(x, weight, padding=5) - reference).abs().max()
    assert error / reference.abs().max() < 1e-5


@pytest.mark.parametrize(
    "call, error, message",
    [
        (
            lambda: conv2d_im2col(torch.zeros(3, 8, 8), torch.zeros(1, 3, 3, 3)),
            ValueError,
            "x must be a 4-d",
        ),
        (
            lambda: conv2d_im2col(torch.zeros(1, 3, 8, 8), torch.zeros(1, 2, 3, 3)),
            ValueError,
            "input channels per group",
        ),
        (
            lambda: conv2d_im2col(
                torch.zeros(1, 4, 8, 8), torch.zeros(3, 2, 3, 3), groups=2
            ),
            ValueError,
            "groups=2 must divide",
        ),
        (
            lambda: conv2d_im2col(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 5, 5)),
            ValueError,
            "does not fit",
        ),
        (
            lambda: conv2d_im2col(
                torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 3, 3), stride=0
            ),
            ValueError,
            "stride and dilation",
        ),
        (
            lambda: conv2d_im2col(
                torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 3, 3), padding=1.5
            ),
            TypeError,
            "padding must be an int",
        ),
        (
            lambda: conv2d_im2col(
                torch.zeros(1, 3, 8, 8), torch.zeros(2, 3, 3, 3), torch.zeros(3)
            ),
            ValueError,
            "bias must have shape",
        ),
        (
            lambda: conv2d_fft(
                torch.zeros(1, 3, 8, 8), torch.zeros(2, 3, 3, 3, dtype=torch.float64)
            ),
            TypeError,
            "make them match",
        ),
        (
            lambda: max_pool2d(torch.zeros(1, 1, 8, 8), 2, padding=2),
            ValueError,
            "at most half",
        ),
        (lambda: avg_pool2d(torch.zeros(1, 1, 2, 2), 3), ValueError, "does not fit"),
        (lambda: max_pool2d(torch.zeros(8, 8), 2), ValueError, "x must be a 4-d"),
        (
            lambda: conv2d_im2col(torch.zeros(1, 3, 8, 8), torch.zeros(3, 3, 3)),
            ValueError,
            "weight must be a 4-d",
        ),
        (
            lambda: conv2d_im2col(
                torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 3, 3), groups=0
            ),
            ValueError,
            "groups must be a positive int",
        ),
        (
            lambda: max_pool2d(torch.zeros(1, 1, 8, 8), 0),
            ValueError,
            "kernel_size and stride must be >= 1",
        ),
    ],
)
def test_bad_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_example_and_dataflow():
    fn, args = example()
    out = fn(*args)
    assert out.shape == (2, 8, 16, 16)
    torch.testing.assert_close(out, F.conv2d(*args), rtol=1e-5, atol=1e-5)
    nodes, edges = dataflow(out)
    ids = {node for node, _ in nodes}
    assert all(src in ids and dst in ids for src, dst, _ in edges)


def test_demo_runs_and_fft_wins_for_large_kernels(tmp_path):
    result = main(
        [
            "--sizes",
            "16",
            "--kernels",
            "3",
            "15",
            "--channels",
            "8",
            "--repeats",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert result["worst_error"] < 1e-4
    assert result["fft_crossover"] == 15
    assert (tmp_path / "timings.png").exists()


# Benchmarks: 32×32 images with 64 channels in and out, float32; a batch of one
# image for 3×3, of eight for 11×11 (the FFT shares the filters' transforms).


def bench_inputs(kernel: int, batch: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 64, 32, 32, generator=g)
    weight = torch.randn(64, 64, kernel, kernel, generator=g)
    return x, weight, kernel // 2


@pytest.mark.parametrize("name", list(ALGORITHMS))
@pytest.mark.benchmark(group="conv2d 3×3, 32×32×64")
def test_bench_conv3_ours(benchmark, name):
    x, weight, padding = bench_inputs(3, 1)
    benchmark.extra_info["label"] = f"conv2d_{name}"
    benchmark(ALGORITHMS[name], x, weight, None, 1, padding)


@pytest.mark.benchmark(group="conv2d 3×3, 32×32×64")
def test_bench_conv3_torch(benchmark):
    x, weight, padding = bench_inputs(3, 1)
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["label"] = "F.conv2d"
    benchmark(F.conv2d, x, weight, None, 1, padding)


@pytest.mark.parametrize("name", ["im2col", "fft"])
@pytest.mark.benchmark(group="conv2d 11×11, 32×32×64, batch 8")
def test_bench_conv11_ours(benchmark, name):
    x, weight, padding = bench_inputs(11, 8)
    benchmark.extra_info["label"] = f"conv2d_{name}"
    benchmark(ALGORITHMS[name], x, weight, None, 1, padding)


@pytest.mark.benchmark(group="conv2d 11×11, 32×32×64, batch 8")
def test_bench_conv11_torch(benchmark):
    x, weight, padding = bench_inputs(11, 8)
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["label"] = "F.conv2d"
    benchmark(F.conv2d, x, weight, None, 1, padding)
