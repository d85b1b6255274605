"""Verified against torch.nn.functional.layer_norm in float64 (to 1e-12), values and
the gradients of x, weight and bias, in Triton's interpreter on a CPU; float16 and
bfloat16 inputs against float32 math on the same rounded inputs (to their rounding);
on a GPU also in float32, float16 and bfloat16 at realistic sizes.

The kernels run on odd shapes (one row, one feature, widths that are not powers of
two, several feature axes, strided and transposed inputs, no rows at all), without
weight or bias or with only one of them, with several values of eps, on rows whose
mean dwarfs their spread (where one-pass variance fails), constant rows and huge and
tiny values, with any number of partial-sum groups (the same result, the same bits on
every run), and through an nn.LayerNorm checkpoint saved with safetensors. The byte
counts the prose states are counted again on the dispatcher.
"""

import os
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

pytest.importorskip("triton")


from annotated.kernels.layernorm import (  # noqa: E402
    TritonLayerNorm,
    counted_traffic,
    dataflow,
    example,
    fused_traffic,
    gpu_report,
    layer_norm,
    layer_norm_backward,
    layer_norm_eager,
    layer_norm_forward,
    main,
)
from tools.fake_cuda import fake_cuda  # noqa: E402

FLOAT64 = dict(rtol=1e-12, atol=1e-12)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# conftest.py sets TRITON_INTERPRET=1 unless it is set already, so by default the
# kernels run in the interpreter on CPU tensors, GPU or not. With TRITON_INTERPRET=0 on
# a GPU they are compiled, and every test below runs on the GPU instead.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu"


pytestmark = pytest.mark.usefixtures("one_thread")


def inputs(
    shape,
    normalized_shape,
    weight=True,
    bias=True,
    dtype=torch.float64,
    seed=0,
    offset=0.0,
    scale=1.0,
):
    """x, weight or None, bias or None (leaves on DEVICE) and a gradient for y."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*size):
        return torch.randn(*size, generator=generator, dtype=torch.float64)

    x = offset + scale * randn(*shape)
    params = [
        1 + randn(*normalized_shape) if weight else None,
        randn(*normalized_shape) if bias else None,
    ]
    grad_y = randn(*shape).to(DEVICE, dtype)
    leaves = [
        None if t is None else t.to(DEVICE, dtype).requires_grad_()
        for t in [x, *params]
    ]
    return leaves, grad_y


def values_and_grads(function, leaves, normalized_shape, grad_y, eps=1e-5, **kwargs):
    """`function(x, normalized_shape, weight, bias, eps)` and the gradients of
    `(y * grad_y).sum()` with respect to every tensor leaf."""
    y = function(leaves[0], normalized_shape, leaves[1], leaves[2], eps, **kwargs)
    tensors = [t for t in leaves if t is not None]
    return [y.detach(), *torch.autograd.grad(y, tensors, grad_y)]


def compare(leaves, normalized_shape, grad_y, eps=1e-5, tolerance=FLOAT64, **kwargs):
    ours = values_and_grads(layer_norm, leaves, normalized_shape, grad_y, eps, **kwargs)
    theirs = values_and_grads(F.layer_norm, leaves, normalized_shape, grad_y, eps)
    assert len(ours) == len(theirs)
    for mine, reference in zip(ours, theirs):
        assert mine.dtype == reference.dtype and mine.shape == reference.shape
        torch.testing.assert_close(mine, reference, **tolerance)
    return ours


# ---------------------------------------------------------------- against F.layer_norm


@pytest.mark.parametrize(
    "shape, normalized_shape, weight, bias, groups",
    [
        ((1, 5), (5,), True, True, None),  # one row
        ((4, 1), (1,), True, True, None),  # one feature: x̂ = 0, y = β, x̄ = 0
        ((3, 7, 24), (24,), True, True, 2),  # 21 rows in groups of 11 and 10
        ((13, 100), (100,), False, False, 5),  # no affine parameters
        ((6, 33), (33,), True, False, 4),  # weight only
        ((6, 33), (33,), False, True, 4),  # bias only
        ((2, 3, 4, 5), (4, 5), True, True, 32),  # two feature axes; groups > rows
        ((37,), (37,), True, True, None),  # no leading axis at all
    ],
)
def test_matches_torch_layer_norm_in_float64(
    shape, normalized_shape, weight, bias, groups
):
    leaves, grad_y = inputs(shape, normalized_shape, weight, bias)
    compare(leaves, normalized_shape, grad_y, groups=groups)


@settings(max_examples=10)
@given(
    rows=st.integers(1, 9),
    cols=st.integers(1, 70),
    weight=st.booleans(),
    bias=st.booleans(),
    groups=st.sampled_from([None, 1, 2, 3, 16]),
    eps=st.sampled_from([1e-12, 1e-5, 0.1, 3.0]),
    offset=st.sampled_from([0.0, -5.0, 100.0]),
    scale=st.sampled_from([1e-3, 1.0, 50.0]),
    seed=st.integers(0, 2**16),
)
def test_matches_torch_layer_norm_on_random_shapes(
    rows, cols, weight, bias, groups, eps, offset, scale, seed
):
    leaves, grad_y = inputs(
        (rows, cols), (cols,), weight, bias, seed=seed, offset=offset, scale=scale
    )
    # x̄ scales as 1/σ: relative to the gradient's own size, still float64's rounding.
    compare(
        leaves,
        (cols,),
        grad_y,
        eps,
        dict(rtol=1e-10, atol=1e-10 / scale),
        groups=groups,
    )


def test_saved_statistics_match_atens_native_layer_norm():
    leaves, _ = inputs((5, 19), (19,))
    x, weight, bias = (t.detach() for t in leaves)
    y, mean, rstd = layer_norm_forward(x, weight, bias, 1e-5)
    y_ref, mean_ref, rstd_ref = torch.ops.aten.native_layer_norm(
        x, (19,), weight, bias, 1e-5
    )
    torch.testing.assert_close(y, y_ref, **FLOAT64)
    torch.testing.assert_close(mean, mean_ref.view(5), **FLOAT64)
    torch.testing.assert_close(rstd, rstd_ref.view(5), **FLOAT64)


def test_passes_gradcheck():
    leaves, _ = inputs((3, 6), (6,))
    assert torch.autograd.gradcheck(
        lambda x, w, b: layer_norm(x, 6, w, b, groups=2), leaves, fast_mode=True
    )


def test_eager_reference_matches_torch():
    leaves, grad_y = inputs((4, 3, 10), (3, 10))
    ours = values_and_grads(layer_norm_eager, leaves, (3, 10), grad_y)
    theirs = values_and_grads(F.layer_norm, leaves, (3, 10), grad_y)
    for mine, reference in zip(ours, theirs):
        torch.testing.assert_close(mine, reference, **FLOAT64)


@pytest.mark.parametrize(
    "dtype, tolerance", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)]
)
def test_half_precision_inputs_are_computed_in_float32(dtype, tolerance):
    # The same rounded inputs through F.layer_norm in float32: ours differs only by
    # the final rounding to `dtype` (half a unit in the last place). An accumulation
    # in float16 over 300 features would be off by far more.
    leaves, grad_y = inputs((7, 300), (300,), dtype=dtype, offset=3.0)
    ours = values_and_grads(layer_norm, leaves, (300,), grad_y)
    wide = [t.detach().float().requires_grad_() for t in leaves]
    theirs = values_and_grads(F.layer_norm, wide, (300,), grad_y.float())
    for mine, reference in zip(ours, theirs):
        assert mine.dtype == dtype
        scale = reference.abs().max()
        torch.testing.assert_close(
            mine.float() / scale, reference / scale, rtol=0, atol=tolerance
        )


def test_float32_matches_torch():
    leaves, grad_y = inputs((9, 129), (129,), dtype=torch.float32)
    compare(leaves, (129,), grad_y, tolerance=dict(rtol=1e-5, atol=1e-5))


# ---------------------------------------------------------------- extreme values


def test_a_large_mean_does_not_cancel_the_variance():
    # Rows of 1000 plus noise of 0.1 in float32: E[x²] - E[x]² = 10^6 - 10^6 would
    # keep nothing of the variance 0.01 (float32's spacing at 10^6 is 0.06); the
    # two-pass variance loses only the mean's rounding, about 1e-3 of the spread.
    leaves, grad_y = inputs((4, 64), (64,), dtype=torch.float32, offset=1e3, scale=0.1)
    ours = values_and_grads(layer_norm, leaves, (64,), grad_y)
    wide = [t.detach().double().requires_grad_() for t in leaves]
    exact = values_and_grads(F.layer_norm, wide, (64,), grad_y.double())
    torch.testing.assert_close(ours[0].double(), exact[0], rtol=0, atol=1e-2)
    for mine, reference in zip(ours[1:], exact[1:]):
        scale = reference.abs().max()
        torch.testing.assert_close(
            mine.double() / scale, reference / scale, atol=1e-2, rtol=0
        )


def test_a_constant_row_gives_the_bias_and_torchs_gradient():
    # v = 0, so r = 1/sqrt(eps) and x̂ = 0: y is exactly β, and x̄ = r (g - mean g),
    # about 316 times the centred gradient, as torch computes it.
    x = torch.full((2, 9), 7.5, device=DEVICE, requires_grad=True)
    weight = torch.randn(9, device=DEVICE, requires_grad=True)
    bias = torch.randn(9, device=DEVICE, requires_grad=True)
    y = layer_norm(x, 9, weight, bias)
    torch.testing.assert_close(y, bias.detach().expand(2, 9), rtol=0, atol=0)
    grad_y = torch.randn(2, 9, device=DEVICE)
    ours = torch.autograd.grad(y, (x, weight, bias), grad_y)
    theirs = torch.autograd.grad(
        F.layer_norm(x, (9,), weight, bias), (x, weight, bias), grad_y
    )
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ours[2], theirs[2], rtol=1e-6, atol=1e-6)
    # γ̄ = Σ ȳ x̂ is exactly 0 here; torch's CPU kernel rounds x̂ to about 1e-5.
    assert torch.equal(ours[1], torch.zeros_like(ours[1]))
    torch.testing.assert_close(theirs[1], torch.zeros_like(ours[1]), rtol=0, atol=1e-3)


@pytest.mark.parametrize("scale", [1e-30, 1e15])
def test_huge_and_tiny_values_match_torch_in_float32(scale):
    leaves, grad_y = inputs((3, 50), (50,), dtype=torch.float32, scale=scale)
    ours = values_and_grads(layer_norm, leaves, (50,), grad_y)
    theirs = values_and_grads(F.layer_norm, leaves, (50,), grad_y)
    for mine, reference in zip(ours, theirs):
        assert torch.isfinite(mine).all()
        scale_of = reference.abs().max()
        torch.testing.assert_close(
            mine / scale_of, reference / scale_of, rtol=0, atol=1e-5
        )


# ---------------------------------------------------------------- the reduction


def test_every_number_of_groups_gives_the_same_gradients():
    leaves, grad_y = inputs((11, 21), (21,))
    results = [
        values_and_grads(layer_norm, leaves, (21,), grad_y, groups=groups)
        for groups in (1, 2, 3, 11, 50)
    ]
    for result in results[1:]:
        for mine, reference in zip(result, results[0]):
            torch.testing.assert_close(mine, reference, **FLOAT64)


@pytest.mark.parametrize("groups", [35, 70])
def test_more_groups_than_one_tile_of_the_partial_sum_are_all_added(groups):
    # The second stage walks the groups 32 at a time: with more than 32, every tile
    # must reach the weight's and the bias's gradients.
    leaves, grad_y = inputs((70, 21), (21,))
    compare(leaves, (21,), grad_y, groups=groups)


def test_the_backward_is_the_same_bits_every_run():
    leaves, grad_y = inputs((10, 30), (30,), dtype=torch.float32)
    first = values_and_grads(layer_norm, leaves, (30,), grad_y, groups=3)
    second = values_and_grads(layer_norm, leaves, (30,), grad_y, groups=3)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_the_backward_kernels_directly():
    leaves, grad_y = inputs((7, 13), (13,))
    x, weight, bias = (t.detach() for t in leaves)
    _, mean, rstd = layer_norm_forward(x, weight, bias, 1e-5)
    grad_x, grad_weight, grad_bias = layer_norm_backward(
        grad_y, x, weight, mean, rstd, True, groups=3
    )
    x_hat = (x - x.mean(1, keepdim=True)) * torch.rsqrt(x.var(1, False, True) + 1e-5)
    torch.testing.assert_close(grad_weight, (grad_y * x_hat).sum(0), **FLOAT64)
    torch.testing.assert_close(grad_bias, grad_y.sum(0), **FLOAT64)
    torch.testing.assert_close(grad_x.sum(1), x.new_zeros(7), **FLOAT64)
    assert layer_norm_backward(grad_y, x, weight, mean, rstd, False)[1:] == (None, None)


# ---------------------------------------------------------------- layouts and autograd


def test_a_strided_slice_is_read_in_place_and_a_transpose_is_copied():
    wide, grad_y = inputs((5, 40), (40,))
    sliced = wide[0].detach()[:, :24].requires_grad_()  # rows 40 apart
    assert not sliced.is_contiguous()
    compare([sliced, wide[1][:24], wide[2][:24]], (24,), grad_y[:, :24])
    transposed = wide[0].detach().T.requires_grad_()  # [40, 5], features strided
    compare([transposed, None, None], (5,), grad_y.T.contiguous())


def test_inference_skips_autograd_and_agrees_with_training():
    leaves, _ = inputs((3, 8), (8,))
    with torch.no_grad():
        inference = layer_norm(leaves[0], 8, leaves[1], leaves[2])
    training = layer_norm(leaves[0], 8, leaves[1], leaves[2])
    assert inference.grad_fn is None and training.grad_fn is not None
    assert torch.equal(inference, training.detach())


def test_frozen_parameters_get_no_gradient():
    leaves, grad_y = inputs((4, 6), (6,))
    leaves[1].requires_grad_(False)
    leaves[2].requires_grad_(False)
    y = layer_norm(leaves[0], 6, leaves[1], leaves[2])
    y.backward(grad_y)
    assert leaves[1].grad is None and leaves[2].grad is None
    reference = torch.autograd.grad(
        F.layer_norm(leaves[0], (6,), *leaves[1:]), leaves[0], grad_y
    )
    torch.testing.assert_close(leaves[0].grad, reference[0], **FLOAT64)


def test_no_rows_returns_an_empty_result():
    x = torch.zeros(0, 4, 7, device=DEVICE, requires_grad=True)
    y = layer_norm(x, 7, torch.ones(7, device=DEVICE), torch.zeros(7, device=DEVICE))
    assert y.shape == (0, 4, 7)
    y.sum().backward()
    assert x.grad.shape == (0, 4, 7)


def test_second_derivatives_are_refused_not_wrong():
    leaves, _ = inputs((2, 5), (5,))
    y = layer_norm(leaves[0], 5, leaves[1], leaves[2])
    direction = torch.ones_like(y, requires_grad=True)
    (grad_x,) = torch.autograd.grad(y, leaves[0], direction, create_graph=True)
    with pytest.raises(RuntimeError, match="marked with @once_differentiable"):
        grad_x.sum().backward()


def test_loads_an_nn_layernorm_checkpoint(tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    reference = nn.LayerNorm((3, 10), eps=1e-3, device=DEVICE)
    with torch.no_grad():
        reference.weight.normal_()
        reference.bias.normal_()
    save_file(reference.state_dict(), tmp_path / "norm.safetensors")
    ours = TritonLayerNorm((3, 10), eps=1e-3, device=DEVICE)
    ours.load_state_dict(load_file(tmp_path / "norm.safetensors", device=DEVICE))
    x = torch.randn(4, 3, 10, device=DEVICE)
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)
    for kwargs in (dict(elementwise_affine=False), dict(bias=False)):
        plain, triton_version = (
            nn.LayerNorm(10, **kwargs, device=DEVICE),
            TritonLayerNorm(10, **kwargs, device=DEVICE),
        )
        triton_version.load_state_dict(plain.state_dict())
        torch.testing.assert_close(triton_version(x), plain(x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- traffic counts


def test_eager_and_fused_traffic_are_what_the_prose_counts():
    rows, cols = 16, 32
    element = rows * cols * 2  # float16
    eager = counted_traffic(layer_norm_eager, rows, cols)
    assert eager["forward kernels"] == 9 and eager["backward kernels"] == 19
    assert eager["forward bytes"] // element == 13
    assert eager["backward bytes"] // element == 35
    native = counted_traffic(F.layer_norm, rows, cols)
    assert native["forward kernels"] == 1 and native["backward kernels"] == 1
    assert (
        native["forward bytes"] // element == 2
        and native["backward bytes"] // element == 3
    )
    fused = fused_traffic(rows, cols)
    assert (
        fused["forward bytes"] // element == 2
        and fused["backward bytes"] // element == 3
    )
    assert fused_traffic(rows, cols, groups=4)["backward bytes"] == (
        fused["backward bytes"] + 2 * 2 * 4 * cols * 4
    )


def test_fused_traffic_is_what_the_kernels_read_and_write():
    leaves, grad_y = inputs((6, 10), (10,), dtype=torch.float32)
    x, weight, bias = (t.detach() for t in leaves)
    y, mean, rstd = layer_norm_forward(x, weight, bias, 1e-5)

    def nbytes(*tensors):
        return sum(t.numel() * t.element_size() for t in tensors)

    counted = fused_traffic(6, 10, torch.float32, groups=3)
    assert counted["forward bytes"] == nbytes(x, weight, bias, y, mean, rstd)
    grad_x, grad_weight, grad_bias = layer_norm_backward(
        grad_y, x, weight, mean, rstd, True, groups=3
    )
    partials = torch.empty(3, 2, 10)
    assert counted["backward bytes"] == nbytes(
        x,
        grad_y,
        weight,
        mean,
        rstd,
        grad_x,
        partials,
        partials,
        grad_weight,
        grad_bias,
    ) + nbytes(bias)  # the formula counts both parameter vectors read, as torch does


# ---------------------------------------------------------------- example and demo


def test_example_and_its_declared_dataflow():
    fn, (x, *rest) = example()
    y = fn(x.to(DEVICE), *(t.to(DEVICE) if torch.is_tensor(t) else t for t in rest))
    torch.testing.assert_close(
        y, F.layer_norm(x, (37,), rest[1], rest[2]).to(DEVICE), rtol=1e-5, atol=1e-5
    )
    nodes, edges = dataflow(y)
    names = {node for node, _ in nodes}
    assert all(source in names and target in names for source, target, _ in edges)
    assert ("forward", "y", "[15, 37]") in edges


def test_demo_checks_and_counts(tmp_path, capsys):
    metrics = main(
        ["--count-size", "64x128", "--device", DEVICE, "--out", str(tmp_path)]
    )
    assert metrics["max error torch.float64"] < 1e-12
    assert metrics["max error torch.float16"] < 1e-3
    assert metrics["backward reproducible"] == 1.0
    # 13 / 2 and 35 / 3, plus the parameters and statistics of a small tensor
    assert 6.2 < metrics["bytes ratio forward"] < 6.6
    assert 11.2 < metrics["bytes ratio backward"] < 11.7
    printed = capsys.readouterr().out
    assert "eager PyTorch" in printed and "(19 kernels)" in printed
    assert (tmp_path / "traffic.png").stat().st_size > 0


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: layer_norm([[1.0, 2.0]], 2), TypeError, "x must be a torch.Tensor"),
        (
            lambda: layer_norm(torch.zeros(3, 4, dtype=torch.int64), 4),
            TypeError,
            "x must be float16, bfloat16, float32 or float64, got torch.int64",
        ),
        (
            lambda: layer_norm(torch.zeros(3, 4), 5),
            ValueError,
            r"x's last axes must be normalized_shape = \(5,\), got x of shape \(3, 4\)",
        ),
        (
            lambda: layer_norm(torch.zeros(3, 4), (0,)),
            ValueError,
            "normalized_shape must be a positive int",
        ),
        (
            lambda: layer_norm(torch.zeros(3, 4), 4, torch.ones(5)),
            ValueError,
            r"weight must have normalized_shape = \(4,\), got \(5,\)",
        ),
        (
            lambda: layer_norm(torch.zeros(3, 4), 4, None, torch.ones(4).double()),
            TypeError,
            "bias is torch.float64 but x is torch.float32",
        ),
        (
            lambda: layer_norm(torch.zeros(3, 4), 4, torch.ones(4, device="meta")),
            ValueError,
            "weight is on meta but x is on cpu",
        ),
        (
            lambda: layer_norm(torch.zeros(3, 4), 4, [1.0] * 4),
            TypeError,
            "weight must be a torch.Tensor or None, got list",
        ),
        (
            lambda: layer_norm(torch.zeros(3, 4), 4, eps=0.0),
            ValueError,
            "eps must be a finite number > 0, got 0.0",
        ),
        (
            lambda: layer_norm(torch.zeros(1, 20000), 20000),
            ValueError,
            "a row of 20000 features of torch.float32 is over 65536 bytes",
        ),
        (
            lambda: layer_norm(torch.zeros(3, 4), 4, groups=0),
            ValueError,
            "groups must be a positive int, got 0",
        ),
    ],
)
def test_bad_input_raises_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_gpu_report_runs_end_to_end_on_a_stand_in_device(monkeypatch, fixed_times):
    """gpu_report runs on a fake GPU; its GB/s and ratios follow from fixed times."""
    # ms: the 1 GiB copy (not run), then the pairs
    fixed_times([0.5, 1.0, 2.0, 2.0, 5.0, 4.0, 6.0], skip_first=True)
    # fake_cuda has no multiprocessor count to give.
    properties = SimpleNamespace(multi_processor_count=2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d=None: properties)
    with fake_cuda():
        report = gpu_report(rows=2, cols=(8,), dtypes=(torch.float16,))
    copy = 2 * 2**30 / 0.5e-3 / 1e9  # read and write 1 GiB in 0.5 ms, in GB/s
    # float16 2×8: x, y and grad_y 32 bytes, a parameter 16, mean and rstd 8 each;
    # forward x γ β y μ r, backward x ȳ γ β μ r x̄ γ̄ β̄ (β counted, as torch reads it).
    forward, backward = 32 + 16 + 16 + 32 + 8 + 8, 32 * 3 + 16 * 4 + 8 * 2
    expected = {"rows": 2, "copy GB/s": copy}
    for name, moved, ours, torch_ms in (
        ("forward", forward, 1.0, 2.0),
        ("backward", backward, 2.0, 5.0),
        ("training step", forward + backward, 4.0, 6.0),
    ):
        entry = f"float16 2×8 {name}"
        expected |= {
            f"{entry} ours µs": 1e3 * ours,
            f"{entry} torch µs": 1e3 * torch_ms,
            f"{entry} ours GB/s": moved / ours / 1e6,
            f"{entry} torch GB/s": moved / torch_ms / 1e6,
            f"{entry} ours of copy": moved / ours / 1e6 / copy,
            f"{entry} ours / torch": torch_ms / ours,
        }
    assert report == pytest.approx(expected)


# ---------------------------------------------------------------- on a GPU only


@CUDA
@pytest.mark.parametrize(
    "dtype, tolerance",
    [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)],
)
def test_gpu_matches_torch_layer_norm_at_realistic_sizes(dtype, tolerance):
    generator = torch.Generator("cuda").manual_seed(0)
    for rows, cols in ((1000, 4097), (4096, 8192), (7, 1)):
        x, weight, bias, grad_y = (
            torch.randn(*shape, generator=generator, device="cuda").to(dtype)
            for shape in ((rows, cols), (cols,), (cols,), (rows, cols))
        )
        leaves = [t.requires_grad_() for t in (x, weight, bias)]
        ours = values_and_grads(layer_norm, leaves, (cols,), grad_y)
        wide = [t.detach().float().requires_grad_() for t in leaves]
        theirs = values_and_grads(F.layer_norm, wide, (cols,), grad_y.float())
        for mine, reference in zip(ours, theirs):
            scale = reference.abs().max().clamp(min=1)
            torch.testing.assert_close(
                mine.float() / scale, reference / scale, rtol=0, atol=tolerance
            )


@CUDA
@pytest.mark.skipif(
    INTERPRETED, reason="interpreted kernels: do_bench would time NumPy"
)
def test_gpu_report_measures_bandwidth_below_the_copy():
    report = gpu_report(rows=1024, cols=(1024,), dtypes=(torch.float16,))
    assert report["copy GB/s"] > 0
    for name in ("forward", "backward", "training step"):
        assert report[f"float16 1024×1024 {name} ours µs"] > 0
        assert report[f"float16 1024×1024 {name} torch µs"] > 0
    assert 0 < report["float16 1024×1024 forward ours of copy"] < 1.2


# ---------------------------------------------------------------- benchmarks

BENCH = [t.detach() for t in inputs((8, 64), (64,), dtype=torch.float32)[0]]
BENCH_GRAD = torch.randn(8, 64, device=DEVICE)
BENCH_LEAVES = [t.clone().requires_grad_() for t in BENCH]


def training_step(function):
    def step():
        y = function(BENCH_LEAVES[0], (64,), BENCH_LEAVES[1], BENCH_LEAVES[2])
        torch.autograd.grad(y, BENCH_LEAVES, BENCH_GRAD)

    return step


@pytest.mark.benchmark(group="layer norm forward, 8×64, CPU")
def test_bench_forward_triton(benchmark):
    benchmark.extra_info["label"] = "Triton kernel, in the interpreter"
    benchmark(layer_norm, BENCH[0], 64, BENCH[1], BENCH[2])


@pytest.mark.benchmark(group="layer norm forward, 8×64, CPU")
def test_bench_forward_torch(benchmark):
    benchmark.extra_info["label"] = "torch.nn.functional.layer_norm"
    benchmark.extra_info["baseline"] = True
    benchmark(F.layer_norm, BENCH[0], (64,), BENCH[1], BENCH[2])


@pytest.mark.benchmark(group="layer norm forward+backward, 8×64, CPU")
def test_bench_training_triton(benchmark):
    benchmark.extra_info["label"] = "Triton kernels, in the interpreter"
    benchmark(training_step(layer_norm))


@pytest.mark.benchmark(group="layer norm forward+backward, 8×64, CPU")
def test_bench_training_torch(benchmark):
    benchmark.extra_info["label"] = "torch.nn.functional.layer_norm and autograd"
    benchmark.extra_info["baseline"] = True
    benchmark(training_step(F.layer_norm))
