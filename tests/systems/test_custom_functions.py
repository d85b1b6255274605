"""Verified against torch.nn.functional.mish, torch.logsumexp and torchvision's sigmoid
focal loss formula (restated here in autograd) in float64 to 1e-12, and by
torch.autograd.gradcheck and gradgradcheck against finite differences.

Every Function's forward values and gradients are compared with the reference on odd
shapes and extreme inputs (logits of +-1000, masked -inf scores); the straight-through
sign is compared with the `clip(x) + (sign(x) - clip(x)).detach()` trick, and gradcheck
is shown to reject it, as it must reject a gradient that is not the derivative. The
memory the demo reports is counted again, and the demo's claim (straight-through binary
weights learn, torch.sign's do not) is checked on a three-epoch run.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from annotated.systems.custom_functions import (
    Binarize,
    BinaryLinear,
    DigitsNet,
    FocalLoss,
    LogSumExp,
    Mish,
    Objective,
    binarize,
    cross_entropy,
    example,
    focal_loss_composed,
    logsumexp,
    main,
    mish,
    mish_composed,
    saved_bytes,
    sigmoid_focal_loss,
)
from tools.literate.figures import short_band

TOLERANCE = dict(rtol=1e-12, atol=1e-12)


pytestmark = pytest.mark.usefixtures("one_thread")


def random(*shape, seed=0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(*shape, generator=generator, dtype=torch.float64)
    return x.requires_grad_()


def value_and_gradient(fn, x, seed=1):
    """`fn(x)` and the gradient of `<fn(x), w>` for a random weight `w`."""
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    weight = torch.randn(
        y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(seed)
    )
    (gradient,) = torch.autograd.grad((y * weight).sum(), x)
    return y.detach(), gradient


# ---------------------------------------------------------------- Mish


def test_mish_matches_torch_on_a_grid_and_in_the_tails():
    x = torch.cat(
        [
            torch.linspace(-20, 20, 2001, dtype=torch.float64),
            torch.tensor([-1e3, 1e3, 0.0], dtype=torch.float64),
        ]
    )
    ours = value_and_gradient(mish, x)
    reference = value_and_gradient(F.mish, x)
    torch.testing.assert_close(ours[0], reference[0], **TOLERANCE)
    torch.testing.assert_close(ours[1], reference[1], **TOLERANCE)
    assert torch.isfinite(ours[1]).all()


def test_mish_passes_gradcheck_and_gradgradcheck():
    x = random(4, 5, scale=3.0)
    assert gradcheck(mish, (x,))
    assert gradgradcheck(mish, (x,))


def test_mish_second_derivative_matches_torch():
    x = random(50, scale=3.0)
    (ours,) = torch.autograd.grad(
        torch.autograd.grad(mish(x).sum(), x, create_graph=True)[0].sum(), x
    )
    (reference,) = torch.autograd.grad(
        torch.autograd.grad(F.mish(x).sum(), x, create_graph=True)[0].sum(), x
    )
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)


def test_mish_module_and_torch_func_see_through_the_function():
    x = random(6, 3)
    torch.testing.assert_close(Mish()(x), F.mish(x), **TOLERANCE)
    ours = torch.func.grad(lambda t: mish(t).sum())(x.detach())
    reference = torch.func.grad(lambda t: F.mish(t).sum())(x.detach())
    torch.testing.assert_close(ours, reference, **TOLERANCE)


def test_a_saved_input_modified_in_place_is_caught():
    x = random(5)
    y = x * 1.0
    out = mish(y)
    y.add_(1.0)  # the saved tensor's version counter moves on
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


# ---------------------------------------------------------------- log-sum-exp


@pytest.mark.parametrize(
    "shape, dim, keepdim",
    [
        ((7,), 0, False),
        ((3, 5), 1, False),
        ((3, 5), 0, True),
        ((2, 1, 4), -1, True),
        ((2, 3, 4), 1, False),
    ],
)
def test_logsumexp_matches_torch(shape, dim, keepdim):
    x = random(*shape, scale=5.0)
    ours = value_and_gradient(lambda t: logsumexp(t, dim, keepdim), x)
    reference = value_and_gradient(lambda t: torch.logsumexp(t, dim, keepdim), x)
    torch.testing.assert_close(ours[0], reference[0], **TOLERANCE)
    torch.testing.assert_close(ours[1], reference[1], **TOLERANCE)


def test_logsumexp_passes_gradcheck_and_gradgradcheck():
    x = random(3, 4, scale=2.0)
    assert gradcheck(lambda t: logsumexp(t, 1), (x,))
    assert gradgradcheck(lambda t: logsumexp(t, 0, True), (x,))


def test_logsumexp_is_stable_where_the_naive_composition_overflows():
    x = torch.tensor(
        [[1000.0, 1000.0, 999.0], [-1000.0, -1001.0, -1002.0]], dtype=torch.float64
    )
    naive = x.exp().sum(1).log()
    assert torch.isinf(naive[0]) and torch.isinf(naive[1])
    ours, gradient = value_and_gradient(lambda t: logsumexp(t, 1), x)
    reference, reference_gradient = value_and_gradient(
        lambda t: torch.logsumexp(t, 1), x
    )
    torch.testing.assert_close(ours, reference, **TOLERANCE)
    torch.testing.assert_close(gradient, reference_gradient, **TOLERANCE)
    # float32 overflows at e^89; the shift keeps every exponent <= 0
    x32 = torch.full((4,), 100.0, requires_grad=True)
    y = logsumexp(x32, 0)
    y.backward()
    assert abs(y.item() - (100.0 + torch.log(torch.tensor(4.0)).item())) < 1e-5
    torch.testing.assert_close(x32.grad, torch.full((4,), 0.25))


def test_logsumexp_masked_scores_get_exactly_zero_gradient():
    x = torch.tensor(
        [[0.5, -torch.inf, 2.0], [-torch.inf] * 3],
        dtype=torch.float64,
        requires_grad=True,
    )
    y = logsumexp(x, 1)
    assert y[1].item() == -torch.inf and y[1].item() == torch.logsumexp(x, 1)[1].item()
    (gradient,) = torch.autograd.grad(y[0], x)
    assert gradient[0, 1].item() == 0.0
    torch.testing.assert_close(
        gradient[0, [0, 2]], torch.softmax(x[0, [0, 2]], 0).detach(), **TOLERANCE
    )


def test_cross_entropy_through_logsumexp_matches_torch():
    logits = random(9, 10, scale=4.0)
    labels = torch.arange(9) % 10
    ours = value_and_gradient(lambda t: cross_entropy(t, labels), logits)
    reference = value_and_gradient(lambda t: F.cross_entropy(t, labels), logits)
    torch.testing.assert_close(ours[0], reference[0], **TOLERANCE)
    torch.testing.assert_close(ours[1], reference[1], **TOLERANCE)
    torch.testing.assert_close(
        LogSumExp(dim=0)(logits), torch.logsumexp(logits, 0), **TOLERANCE
    )


# ---------------------------------------------------------------- focal loss


def torchvision_focal_loss(logits, targets, alpha, gamma, reduction):
    """torchvision.ops.sigmoid_focal_loss's formula, in plain autograd."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_true = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_true) ** gamma
    loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return {"mean": loss.mean, "sum": loss.sum, "none": lambda: loss}[reduction]()


def labels(*shape, seed=2):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, shape, generator=generator).to(torch.float64)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
@pytest.mark.parametrize(
    "alpha, reduction", [(0.25, "mean"), (0.5, "sum"), (1.0, "none")]
)
def test_focal_loss_matches_torchvisions_formula(gamma, alpha, reduction):
    logits, targets = random(6, 7, scale=3.0), labels(6, 7)
    ours = value_and_gradient(
        lambda t: sigmoid_focal_loss(t, targets, alpha, gamma, reduction), logits
    )
    reference = value_and_gradient(
        lambda t: torchvision_focal_loss(t, targets, alpha, gamma, reduction), logits
    )
    torch.testing.assert_close(ours[0], reference[0], **TOLERANCE)
    torch.testing.assert_close(ours[1], reference[1], **TOLERANCE)


def test_focal_loss_passes_gradcheck_and_gradgradcheck():
    logits, targets = random(3, 4, scale=2.0), labels(3, 4)
    for gamma in (0.0, 1.5, 2.0):
        assert gradcheck(
            lambda t: sigmoid_focal_loss(t, targets, 0.25, gamma), (logits,)
        )
        assert gradgradcheck(
            lambda t: sigmoid_focal_loss(t, targets, 0.25, gamma, "none"), (logits,)
        )


def test_focal_loss_with_gamma_zero_is_the_weighted_cross_entropy():
    logits, targets = random(20, scale=3.0), labels(20)
    weights = 0.25 * targets + 0.75 * (1 - targets)
    expected = F.binary_cross_entropy_with_logits(logits, targets, weight=weights)
    torch.testing.assert_close(
        sigmoid_focal_loss(logits, targets, 0.25, 0.0), expected, **TOLERANCE
    )


def test_focal_loss_gradient_is_finite_and_right_at_extreme_logits():
    logits = torch.tensor(
        [1000.0, -1000.0, 1000.0, -1000.0], dtype=torch.float64, requires_grad=True
    )
    targets = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    loss = sigmoid_focal_loss(logits, targets, 0.25, 2.0, "sum")
    (gradient,) = torch.autograd.grad(loss, logits)
    # right with certainty: no loss, no gradient; wrong with certainty: loss
    # alpha_t * 1000, gradient -s * alpha_t (the cross-entropy's slope, unscaled)
    torch.testing.assert_close(
        loss.detach(), torch.tensor(0.75 * 1000 + 0.25 * 1000, dtype=torch.float64)
    )
    torch.testing.assert_close(
        gradient, torch.tensor([0.0, 0.0, 0.75, -0.25], dtype=torch.float64)
    )


def test_focal_loss_module_and_composition_agree():
    logits, targets = random(5, 10), labels(5, 10)
    torch.testing.assert_close(
        FocalLoss(0.3, 1.0)(logits, targets),
        torchvision_focal_loss(logits, targets, 0.3, 1.0, "mean"),
        **TOLERANCE,
    )
    torch.testing.assert_close(
        focal_loss_composed(logits, targets, 0.3, 1.0),
        sigmoid_focal_loss(logits, targets, 0.3, 1.0),
        **TOLERANCE,
    )


def test_the_layers_print_their_settings():
    assert repr(LogSumExp(1, keepdim=True)) == "LogSumExp(dim=1, keepdim=True)"
    assert (
        repr(FocalLoss(0.3, 1.0, "sum"))
        == "FocalLoss(alpha=0.3, gamma=1.0, reduction='sum')"
    )


# ---------------------------------------------------------------- straight-through sign


def straight_through_reference(x):
    clipped = torch.clamp(x, -1.0, 1.0)
    return clipped + (torch.where(x >= 0, 1.0, -1.0).to(x.dtype) - clipped).detach()


def test_binarize_matches_the_detach_trick():
    x = random(200, scale=1.5)
    x = x.detach().masked_fill(x.detach().abs().sub(1).abs() < 1e-6, 0.5)  # off ±1
    ours = value_and_gradient(binarize, x)
    reference = value_and_gradient(straight_through_reference, x)
    torch.testing.assert_close(ours[0], reference[0], rtol=0, atol=0)
    torch.testing.assert_close(ours[1], reference[1], rtol=0, atol=0)
    assert set(ours[0].tolist()) == {-1.0, 1.0}


def test_binarize_at_zero_and_on_the_edge_of_the_band():
    x = torch.tensor(
        [0.0, 1.0, -1.0, 1.0 + 1e-12, -2.0], dtype=torch.float64, requires_grad=True
    )
    y = Binarize()(x)
    y.sum().backward()
    assert y.tolist() == [1.0, 1.0, -1.0, 1.0, -1.0]
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_gradcheck_rejects_the_straight_through_estimator_but_gradgradcheck_passes():
    x = torch.tensor([0.3, -0.6, 0.8], dtype=torch.float64, requires_grad=True)
    assert not gradcheck(binarize, (x,), raise_exception=False)
    assert gradgradcheck(binarize, (x,))


def test_binary_linear_uses_scaled_signs_and_passes_gradients_to_latent_weights():
    torch.manual_seed(0)
    layer = BinaryLinear(9, 4).double()
    with torch.no_grad():
        layer.weight[0, 0] = 1.5  # outside the band: no gradient
    x = random(3, 9)
    y = layer(x)
    binary = torch.where(layer.weight >= 0, 1.0, -1.0).double() / 3.0
    torch.testing.assert_close(y, x @ binary.T + layer.bias, **TOLERANCE)
    y.sum().backward()
    expected = x.sum(0).expand(4, 9) / 3.0 * (layer.weight.abs() <= 1)
    torch.testing.assert_close(layer.weight.grad, expected.detach(), **TOLERANCE)
    assert layer.weight.grad[0, 0] == 0.0


def test_torch_sign_gives_the_latent_weights_no_gradient():
    layer = BinaryLinear(5, 3, straight_through=False)
    layer(torch.randn(2, 5)).sum().backward()
    assert layer.weight.grad.abs().max() == 0.0 and layer.bias.grad.abs().max() > 0.0


# ---------------------------------------------------------------- memory, example, demo


def test_saved_bytes_count_what_the_prose_says():
    probe = torch.randn(256, 10, requires_grad=True)
    targets = F.one_hot(torch.arange(256) % 10, 10).float()
    element = probe.numel() * 4
    assert saved_bytes(mish, probe) == element
    assert saved_bytes(mish_composed, probe) == 2 * element
    assert saved_bytes(sigmoid_focal_loss, probe, targets) == 2 * element
    assert saved_bytes(focal_loss_composed, probe, targets) == 8 * element


def test_example_traces_each_function_as_one_call():
    objective, args = example()
    loss = objective(*args)
    assert loss.shape == () and torch.isfinite(loss)
    graph = torch.fx.symbolic_trace(objective).graph
    called = [
        getattr(node.target, "__name__", "")
        for node in graph.nodes
        if node.op == "call_function"
    ]
    assert {"mish", "binarize", "sigmoid_focal_loss"} <= set(called)
    assert called.count("mish") == 2


def test_demo_straight_through_learns_where_torch_sign_cannot(tmp_path, capsys):
    metric, args, low, high = short_band("annotated/systems/custom_functions.py")
    metrics = main([*args, "--out", str(tmp_path)])  # --epochs 3 --device cpu
    assert low <= metrics[metric] <= high  # the short run's band over stored seeds
    assert metrics["accuracy/float, cross-entropy"] > 0.9
    assert metrics["accuracy/float, focal"] > 0.8
    assert (
        metrics["accuracy/binary, straight-through"]
        > metrics["accuracy/binary, torch.sign"] + 0.2
    )
    assert (
        metrics["saved_bytes/mish/composed"]
        == 2 * metrics["saved_bytes/mish/function"]
        == 8
    )
    assert (
        metrics["saved_bytes/focal loss/composed"]
        == 4 * metrics["saved_bytes/focal loss/function"]
        == 32
    )
    assert "test accuracy" in capsys.readouterr().out
    assert (tmp_path / "functions.png").stat().st_size > 0
    assert (tmp_path / "training.png").stat().st_size > 0


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: mish([1.0]), TypeError, "mish: x must be a torch.Tensor, got list"),
        (
            lambda: mish(torch.arange(3)),
            TypeError,
            "mish: x must have a floating-point dtype, got torch.int64",
        ),
        (
            lambda: logsumexp(torch.ones(2, 3), 2),
            ValueError,
            r"dim must name an axis of x \(x has 2\), got 2",
        ),
        (
            lambda: logsumexp(torch.ones(2, 3), 1.0),
            TypeError,
            "logsumexp: dim must be an int, got float",
        ),
        (lambda: logsumexp(torch.tensor(1.0)), ValueError, r"x has 0"),
        (
            lambda: sigmoid_focal_loss(torch.zeros(3), torch.zeros(4)),
            ValueError,
            r"targets must have logits' shape \(3,\), got \(4,\)",
        ),
        (
            lambda: sigmoid_focal_loss(torch.zeros(3), torch.full((3,), 0.5)),
            ValueError,
            "targets must be 0 or 1",
        ),
        (
            lambda: sigmoid_focal_loss(
                torch.zeros(3), torch.zeros(3, dtype=torch.long)
            ),
            TypeError,
            "targets must have a floating-point dtype",
        ),
        (
            lambda: sigmoid_focal_loss(torch.zeros(3), torch.zeros(3), alpha=1.5),
            ValueError,
            r"alpha must lie in \[0, 1\], got 1.5",
        ),
        (
            lambda: sigmoid_focal_loss(torch.zeros(3), torch.zeros(3), gamma=-1.0),
            ValueError,
            "gamma must be >= 0, got -1.0",
        ),
        (
            lambda: sigmoid_focal_loss(
                torch.zeros(3), torch.zeros(3), gamma=float("nan")
            ),
            ValueError,
            "gamma must be >= 0, got nan",
        ),
        (
            lambda: sigmoid_focal_loss(torch.zeros(3), torch.zeros(3), reduction="avg"),
            ValueError,
            "reduction must be 'mean', 'sum' or 'none', got 'avg'",
        ),
        (
            lambda: binarize(torch.zeros(3).numpy()),
            TypeError,
            "binarize: x must be a torch.Tensor, got ndarray",
        ),
        (
            lambda: DigitsNet("ternary"),
            ValueError,
            "weights must be 'float', 'binary' or 'sign', got 'ternary'",
        ),
        (
            lambda: Objective(DigitsNet(), "hinge"),
            ValueError,
            "loss must be 'cross_entropy' or 'focal', got 'hinge'",
        ),
    ],
)
def test_bad_input_raises_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------- benchmarks


def forward_backward(fn, x, *args):
    def step():
        x.grad = None
        fn(x, *args).sum().backward()

    return step


def bench_input():
    return torch.randn(
        256, 256, generator=torch.Generator().manual_seed(0)
    ).requires_grad_()


@pytest.mark.benchmark(group="mish forward+backward, 256×256 float32")
def test_bench_mish_ours(benchmark):
    benchmark.extra_info["label"] = "our MishFunction"
    benchmark(forward_backward(mish, bench_input()))


@pytest.mark.benchmark(group="mish forward+backward, 256×256 float32")
def test_bench_mish_composed(benchmark):
    benchmark.extra_info["label"] = "x * tanh(softplus(x)) in autograd"
    benchmark(forward_backward(mish_composed, bench_input()))


@pytest.mark.benchmark(group="mish forward+backward, 256×256 float32")
def test_bench_mish_torch(benchmark):
    benchmark.extra_info["label"] = "torch.nn.functional.mish"
    benchmark.extra_info["baseline"] = True
    benchmark(forward_backward(F.mish, bench_input()))


@pytest.mark.benchmark(group="logsumexp forward+backward, 256×256 float32, dim 1")
def test_bench_logsumexp_ours(benchmark):
    benchmark.extra_info["label"] = "our LogSumExpFunction"
    benchmark(forward_backward(logsumexp, bench_input(), 1))


@pytest.mark.benchmark(group="logsumexp forward+backward, 256×256 float32, dim 1")
def test_bench_logsumexp_torch(benchmark):
    benchmark.extra_info["label"] = "torch.logsumexp"
    benchmark.extra_info["baseline"] = True
    benchmark(forward_backward(torch.logsumexp, bench_input(), 1))


FOCAL_TARGETS = F.one_hot(torch.arange(256) % 256, 256).float()


@pytest.mark.benchmark(group="focal loss forward+backward, 256×256 float32")
def test_bench_focal_ours(benchmark):
    benchmark.extra_info["label"] = "our SigmoidFocalLossFunction"
    benchmark(forward_backward(sigmoid_focal_loss, bench_input(), FOCAL_TARGETS))


@pytest.mark.benchmark(group="focal loss forward+backward, 256×256 float32")
def test_bench_focal_composed(benchmark):
    benchmark.extra_info["label"] = "torchvision's formula in autograd"
    benchmark.extra_info["baseline"] = True
    benchmark(forward_backward(focal_loss_composed, bench_input(), FOCAL_TARGETS))
