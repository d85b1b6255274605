"""Verified against torch in float64: F.dropout's scaling and statistics,
nn.BatchNorm1d/2d (outputs, gradients and running statistics over several steps, to
1e-10), nn.LayerNorm and F.cross_entropy(label_smoothing=...) (1e-10), and
torch.optim's SGD, Adam(weight_decay) and AdamW for the two kinds of weight decay (1e-10
over 20 steps).

Shifted digits are checked against shifts cut by hand with NumPy, early stopping against
a scripted loss curve, and the demo's short run against the claim its figure makes.
"""

import argparse
import copy
import math

import numpy as np
import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from annotated.data import digits
from annotated.networks.regularisation import (
    MLP,
    BatchNorm,
    Dropout,
    EarlyStopping,
    LayerNorm,
    Regularisers,
    decay_weights_,
    example,
    l2_penalty,
    main,
    shift_digits,
    smoothed_cross_entropy,
    train,
)
from tools.literate.figures import short_band

TOL = {"rtol": 1e-10, "atol": 1e-10}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors: a second torch thread only adds handoffs on a busy 2-core
    machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def close(a: torch.Tensor, b: torch.Tensor, **tolerance) -> None:
    torch.testing.assert_close(a, b, **(tolerance or TOL))


# --------------------------------------------------------------------------------------
# Dropout.


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_scales_kept_units_and_drops_at_rate_p_like_f_dropout(p):
    torch.manual_seed(0)
    x = torch.randn(400, 250, dtype=torch.float64) + 3.0  # no exact zeros
    n = x.numel()
    ours = Dropout(p).train()(x)
    theirs = F.dropout(x, p, training=True)
    for y in (ours, theirs):
        kept = y != 0
        # Every kept unit is x / (1 - p), exactly as torch scales it.
        close(y[kept], x[kept] / (1 - p), rtol=1e-15, atol=0.0)
        # The dropped fraction is p within five binomial standard errors.
        assert abs((~kept).double().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)
    # The mean is preserved in expectation: E[y] = x.
    standard_error = (x.std() * math.sqrt(p / (1 - p)) / math.sqrt(n)).item()
    assert abs((ours - x).mean().item()) < 5 * standard_error


def test_dropout_gradient_is_the_scaled_mask():
    torch.manual_seed(1)
    x = torch.rand(64, 32, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(64, 32, dtype=torch.float64)
    y = Dropout(0.25)(x)
    y.backward(upstream)
    mask = (y != 0).double()
    close(x.grad, upstream * mask / 0.75)


def test_dropout_is_the_identity_in_eval_mode_and_at_p_zero():
    x = torch.randn(8, 8, dtype=torch.float64)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)


def test_dropout_draws_a_fresh_mask_each_call():
    torch.manual_seed(0)
    x = torch.ones(1000, dtype=torch.float64)
    layer = Dropout(0.5)
    assert not torch.equal(layer(x), layer(x))


# --------------------------------------------------------------------------------------
# Batch norm.

BATCH_NORM_CASES = [
    (2, (16, 5), nn.BatchNorm1d),
    (3, (8, 5, 7), nn.BatchNorm1d),
    (4, (6, 5, 4, 3), nn.BatchNorm2d),
]


def batch_norm_pair(dims, reference_class, momentum=0.3, eps=1e-3):
    torch.manual_seed(0)
    ours = BatchNorm(5, dims=dims, eps=eps, momentum=momentum).double()
    theirs = reference_class(5, eps=eps, momentum=momentum).double()
    with torch.no_grad():
        for module in (ours, theirs):
            module.weight.copy_(torch.linspace(0.5, 2.0, 5))
            module.bias.copy_(torch.linspace(-1.0, 1.0, 5))
    return ours, theirs


def forward_backward(module, x, upstream):
    x = x.clone().requires_grad_()
    module.zero_grad()
    y = module(x)
    y.backward(upstream)
    return y.detach(), x.grad, module.weight.grad.clone(), module.bias.grad.clone()


@pytest.mark.parametrize(
    "dims, shape, reference_class", BATCH_NORM_CASES, ids=["1d", "1d-seq", "2d"]
)
def test_batch_norm_matches_torch_in_training_and_eval_over_several_steps(
    dims, shape, reference_class
):
    ours, theirs = batch_norm_pair(dims, reference_class)
    generator = torch.Generator().manual_seed(1)
    for step in range(5):
        # A different mean and scale per step, so that the running averages move.
        x = 3.0 * step + (1 + step) * torch.randn(
            shape, dtype=torch.float64, generator=generator
        )
        upstream = torch.randn(shape, dtype=torch.float64, generator=generator)
        for a, b in zip(
            forward_backward(ours.train(), x, upstream),
            forward_backward(theirs.train(), x, upstream),
        ):
            close(a, b)
        close(ours.running_mean, theirs.running_mean)
        close(ours.running_var, theirs.running_var)
        assert ours.num_batches_tracked.item() == theirs.num_batches_tracked.item()
    assert ours.num_batches_tracked.item() == 5
    x = torch.randn(shape, dtype=torch.float64, generator=generator)
    upstream = torch.randn(shape, dtype=torch.float64, generator=generator)
    running = ours.running_mean.clone(), ours.running_var.clone()
    for a, b in zip(
        forward_backward(ours.eval(), x, upstream),
        forward_backward(theirs.eval(), x, upstream),
    ):
        close(a, b)
    # Evaluation reads the running statistics and leaves them alone.
    assert torch.equal(ours.running_mean, running[0])
    assert torch.equal(ours.running_var, running[1])
    assert ours.num_batches_tracked.item() == 5


def test_batch_norm_running_variance_is_unbiased_and_momentum_weighted():
    """One step from the initial (0, 1) with momentum m: the running variance is
    (1 - m) + m * n / (n - 1) * biased variance, checked with numpy."""
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(10, 5))
    layer = BatchNorm(5, momentum=0.25).double()
    layer(torch.tensor(x))
    np.testing.assert_allclose(
        layer.running_var.numpy(), 0.75 + 0.25 * x.var(axis=0, ddof=1), rtol=1e-12
    )
    np.testing.assert_allclose(
        layer.running_mean.numpy(), 0.25 * x.mean(axis=0), rtol=1e-12
    )


def test_batch_norm_extreme_and_constant_inputs_match_torch():
    ours, theirs = batch_norm_pair(2, nn.BatchNorm1d)
    torch.manual_seed(2)
    x = 1e8 + 1e3 * torch.randn(32, 5, dtype=torch.float64)
    x[:, 2] = 7.0  # a constant channel: variance 0, so the output is the bias
    upstream = torch.randn(32, 5, dtype=torch.float64)
    results = forward_backward(ours, x, upstream), forward_backward(theirs, x, upstream)
    for a, b in zip(*results):
        close(a, b, rtol=1e-9, atol=1e-9)
    close(results[0][0][:, 2], torch.full((32,), ours.bias[2].item(), dtype=x.dtype))


def test_batch_norm_state_survives_state_dict_and_loads_into_torch():
    ours, theirs = batch_norm_pair(2, nn.BatchNorm1d)
    torch.manual_seed(3)
    for _ in range(4):
        ours(torch.randn(16, 5, dtype=torch.float64) * 2 + 1)
    state = ours.state_dict()
    assert set(state) == set(theirs.state_dict())
    reloaded = BatchNorm(5, eps=1e-3, momentum=0.3).double()
    reloaded.load_state_dict(copy.deepcopy(state))
    theirs.load_state_dict(copy.deepcopy(state))
    x = torch.randn(3, 5, dtype=torch.float64)
    expected = ours.eval()(x)
    close(reloaded.eval()(x), expected)
    close(theirs.eval()(x), expected)
    assert reloaded.num_batches_tracked.item() == 4
    # And torch's state loads into ours.
    ours_again = BatchNorm(5, eps=1e-3, momentum=0.3).double()
    ours_again.load_state_dict(theirs.state_dict())
    close(ours_again.eval()(x), expected)


def test_batch_norm_needs_two_values_per_channel_only_in_training():
    layer = BatchNorm(3)
    with pytest.raises(ValueError, match="at least 2 values per feature"):
        layer(torch.randn(1, 3))
    assert layer.eval()(torch.randn(1, 3)).shape == (1, 3)


# --------------------------------------------------------------------------------------
# Layer norm.


@pytest.mark.parametrize(
    "shape, normalized_shape",
    [((4, 7), 7), ((2, 3, 4, 5), (4, 5)), ((6, 3), (6, 3))],
    ids=["rows", "last two axes", "whole tensor"],
)
def test_layer_norm_matches_torch(shape, normalized_shape):
    torch.manual_seed(0)
    ours = LayerNorm(normalized_shape, eps=1e-4).double()
    theirs = nn.LayerNorm(normalized_shape, eps=1e-4).double()
    with torch.no_grad():
        weight = torch.randn(ours.weight.shape, dtype=torch.float64)
        bias = torch.randn(ours.bias.shape, dtype=torch.float64)
        for module in (ours, theirs):
            module.weight.copy_(weight)
            module.bias.copy_(bias)
    x = 5.0 + 10.0 * torch.randn(shape, dtype=torch.float64)
    upstream = torch.randn(shape, dtype=torch.float64)
    for a, b in zip(
        forward_backward(ours, x, upstream), forward_backward(theirs, x, upstream)
    ):
        close(a, b)
    # No running statistics: training and evaluation are the same computation.
    assert torch.equal(ours.train()(x), ours.eval()(x))


# --------------------------------------------------------------------------------------
# Label smoothing.


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("scale", [1.0, 1e4], ids=["ordinary", "huge logits"])
def test_label_smoothing_matches_f_cross_entropy(smoothing, scale):
    torch.manual_seed(0)
    logits = (scale * torch.randn(13, 10, dtype=torch.float64)).requires_grad_()
    targets = torch.randint(10, (13,))
    ours = smoothed_cross_entropy(logits, targets, smoothing)
    (ours_grad,) = torch.autograd.grad(ours, logits)
    theirs = F.cross_entropy(logits, targets, label_smoothing=smoothing)
    (theirs_grad,) = torch.autograd.grad(theirs, logits)
    assert torch.isfinite(ours)
    close(ours, theirs, rtol=1e-12, atol=1e-12 * scale)
    close(ours_grad, theirs_grad)


def test_label_smoothing_minimum_puts_the_stated_probability_on_the_target():
    """The prose's 0.91: at the optimum softmax(z) = q, so the gradient vanishes."""
    q = torch.full((1, 10), 0.01, dtype=torch.float64)
    q[0, 3] = 0.91
    logits = q.log().requires_grad_()
    loss = smoothed_cross_entropy(logits, torch.tensor([3]), 0.1)
    (grad,) = torch.autograd.grad(loss, logits)
    close(grad, torch.zeros_like(grad), atol=1e-15, rtol=0.0)


# --------------------------------------------------------------------------------------
# Weight decay: penalty and shrink, against torch.optim.

LAMBDA, LR, STEPS = 0.1, 0.05, 20
X_TRAIN, Y_TRAIN, _, _ = digits()
IMAGES = torch.tensor(X_TRAIN[:64])  # [64, 64] float64
LABELS = torch.tensor(Y_TRAIN[:64])  # [64]


def train_lockstep(make_optimizer, decay: str) -> list[torch.Tensor]:
    """Train a small float64 network for STEPS steps; return its final parameters.

    `decay` is "penalty" (l2_penalty in the loss), "shrink" (decay_weights_ before each
    step) or "optimizer" (whatever `make_optimizer` does itself)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10)).double()
    parameters = list(model.parameters())
    optimizer = make_optimizer(parameters)
    for _ in range(STEPS):
        loss = F.cross_entropy(model(IMAGES), LABELS)
        if decay == "penalty":
            loss = loss + l2_penalty(parameters, LAMBDA)
        optimizer.zero_grad()
        loss.backward()
        if decay == "shrink":
            decay_weights_(parameters, LR, LAMBDA)
        optimizer.step()
    return [p.detach().clone() for p in parameters]


def max_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def test_l2_penalty_gradient_is_lambda_theta():
    theta = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(l2_penalty([theta], 0.3), theta)
    close(grad, 0.3 * theta.detach())


def test_sgd_penalty_and_shrink_coincide_with_torch_weight_decay():
    def plain(params):
        return torch.optim.SGD(params, lr=LR)

    penalty = train_lockstep(plain, "penalty")
    shrink = train_lockstep(plain, "shrink")
    torch_sgd = train_lockstep(
        lambda params: torch.optim.SGD(params, lr=LR, weight_decay=LAMBDA), "optimizer"
    )
    assert max_difference(penalty, torch_sgd) < 1e-12
    assert max_difference(shrink, torch_sgd) < 1e-12


def test_adam_penalty_is_adam_weight_decay_and_shrink_is_adamw_and_they_differ():
    def plain(params):
        return torch.optim.Adam(params, lr=LR)

    penalty = train_lockstep(plain, "penalty")
    shrink = train_lockstep(plain, "shrink")
    torch_adam = train_lockstep(
        lambda params: torch.optim.Adam(params, lr=LR, weight_decay=LAMBDA), "optimizer"
    )
    torch_adamw = train_lockstep(
        lambda params: torch.optim.AdamW(params, lr=LR, weight_decay=LAMBDA),
        "optimizer",
    )
    assert max_difference(penalty, torch_adam) < 1e-10
    assert max_difference(shrink, torch_adamw) < 1e-10
    # The two kinds of decay are far apart under Adam: more than 1e-3 in some weight,
    # against 1e-12 under SGD.
    assert max_difference(penalty, shrink) > 1e-3


# --------------------------------------------------------------------------------------
# Shifted digits, against shifts cut by hand.


def numpy_shift(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """An 8×8 image moved down by `rows` and right by `cols`, zeros coming in."""
    moved = np.zeros_like(image)
    source = image[max(0, -rows) : 8 - max(0, rows), max(0, -cols) : 8 - max(0, cols)]
    moved[max(0, rows) : 8 - max(0, -rows), max(0, cols) : 8 - max(0, -cols)] = source
    return moved


@pytest.mark.parametrize("max_shift", [1, 2])
def test_shift_digits_moves_each_image_by_one_allowed_offset(max_shift):
    images = torch.tensor(X_TRAIN[:400])  # [400, 64]
    shifted = shift_digits(images, max_shift, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape
    offsets = [
        (r, c)
        for r in range(-max_shift, max_shift + 1)
        for c in range(-max_shift, max_shift + 1)
    ]
    used = set()
    for image, result in zip(images.numpy(), shifted.numpy()):
        matches = [
            offset
            for offset in offsets
            if np.array_equal(
                numpy_shift(image.reshape(8, 8), *offset), result.reshape(8, 8)
            )
        ]
        assert matches, "an output is no shift of its input"
        used.update(matches)
    assert used == set(offsets)  # every offset is drawn, (0, 0) included


def test_shift_digits_with_no_shift_is_the_identity():
    images = torch.tensor(X_TRAIN[:5])
    assert torch.equal(shift_digits(images, 0), images)


def test_shifts_leave_the_batch_order_as_it_is(monkeypatch):
    # The prose: every run sees the same mini-batches in the same order. The shifts
    # draw from their own generator, so a run with them orders its epochs as one
    # without them does.
    orders = []
    randperm = torch.randperm

    def recorded(*args, **kwargs):
        orders.append(randperm(*args, **kwargs))
        return orders[-1]

    monkeypatch.setattr(torch, "randperm", recorded)
    data = {
        "train": (torch.tensor(X_TRAIN[:40]).float(), torch.tensor(Y_TRAIN[:40])),
        "test": (torch.tensor(X_TRAIN[40:60]).float(), torch.tensor(Y_TRAIN[40:60])),
    }
    args = argparse.Namespace(seed=0, device="cpu", lr=1e-3, epochs=3, batch_size=10)
    train(Regularisers(), data, args)
    train(Regularisers(max_shift=1), data, args)
    assert len(orders) == 6
    for plain, shifted in zip(orders[:3], orders[3:]):
        assert torch.equal(plain, shifted)


def test_an_early_stopped_run_reports_the_epoch_it_restored():
    # The model handed back is the best epoch's, so its test accuracy is the one the
    # curve recorded at that epoch, and "epochs" counts the epochs up to it.
    x, y = torch.tensor(X_TRAIN).float(), torch.tensor(Y_TRAIN)
    data = {
        "train": (x[:60], y[:60]),
        "val": (x[60:90], y[60:90]),
        "test": (x[90:], y[90:]),
    }
    args = argparse.Namespace(seed=0, device="cpu", lr=3e-2, epochs=30, batch_size=20)
    result = train(Regularisers(patience=2), data, args)
    assert result["epochs"] < len(result["test curve"]) < 30  # it stopped early
    assert result["test"] == result["test curve"][result["epochs"] - 1]


# --------------------------------------------------------------------------------------
# Early stopping.


def test_early_stopping_stops_after_patience_and_restores_the_best_epoch():
    model = nn.Linear(1, 1, bias=False)
    stopper = EarlyStopping(patience=3)
    losses = [5.0, 4.0, 3.0, 3.5, 3.2, 3.1, 3.3, 2.0]
    stopped_at = None
    for epoch, loss in enumerate(losses):
        with torch.no_grad():
            model.weight.fill_(epoch)  # the weight records the epoch
        if stopper.update(epoch, loss, model):
            stopped_at = epoch
            break
    assert stopped_at == 5  # three epochs after the best, epoch 2
    assert (stopper.best_epoch, stopper.best_loss) == (2, 3.0)
    stopper.restore(model)
    assert model.weight.item() == 2.0


def test_early_stopping_copies_batch_norm_statistics_too():
    model = nn.Sequential(nn.Linear(3, 4), BatchNorm(4))
    stopper = EarlyStopping(patience=1)
    model(torch.randn(8, 3))
    stopper.update(0, 1.0, model)
    saved = model[1].running_mean.clone()
    model(torch.randn(8, 3) + 5)
    stopper.restore(model)
    assert torch.equal(model[1].running_mean, saved)


# --------------------------------------------------------------------------------------
# The example and its trace.


def test_example_traces_with_fx_and_the_trace_computes_the_same():
    model, (images,) = example()
    torch.fx.symbolic_trace(model)  # in training mode, as the diagram draws it
    model.eval()
    traced = torch.fx.symbolic_trace(model)
    assert any(
        node.target.__name__ == "check_features"
        for node in traced.graph.nodes
        if node.op == "call_function"
    )
    close(traced(images), model(images), rtol=0.0, atol=0.0)
    assert model.train()(images).shape == (4, 10)


# --------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: Dropout(1.0), ValueError, r"Dropout: p must lie in \[0, 1\)"),
        (lambda: Dropout(-0.1), ValueError, r"Dropout: p must lie in \[0, 1\)"),
        (lambda: Dropout("0.5"), TypeError, "Dropout: p must be a real number"),
        (lambda: BatchNorm(0), ValueError, "num_features must lie in"),
        (lambda: BatchNorm(4.0), TypeError, "num_features must be an int"),
        (lambda: BatchNorm(4, dims=5), ValueError, "dims must be 2, 3 or 4"),
        (lambda: BatchNorm(4, momentum=0.0), ValueError, r"momentum must lie in \(0"),
        (lambda: BatchNorm(4, eps=0.0), ValueError, r"eps must lie in \(0"),
        (
            lambda: BatchNorm(4)(torch.randn(8, 3)),
            ValueError,
            r"BatchNorm: input of shape \(8, 3\) has feature size \(3,\), "
            r"expected \(4,\)",
        ),
        (
            lambda: BatchNorm(4, dims=4)(torch.randn(8, 4)),
            ValueError,
            "BatchNorm: input must have 4 dimensions",
        ),
        (lambda: BatchNorm(4)([1.0] * 4), TypeError, "input must be a torch.Tensor"),
        (lambda: LayerNorm(()), ValueError, "normalized_shape must be a positive int"),
        (lambda: LayerNorm((3, -1)), ValueError, "normalized_shape"),
        (
            lambda: LayerNorm((4, 5))(torch.randn(2, 5, 4)),
            ValueError,
            r"LayerNorm: input of shape \(2, 5, 4\) has feature size \(5, 4\)",
        ),
        (
            lambda: smoothed_cross_entropy(
                torch.randn(3, 4), torch.zeros(3).long(), 1.5
            ),
            ValueError,
            r"smoothing must lie in \[0, 1\]",
        ),
        (
            lambda: smoothed_cross_entropy(torch.randn(3, 4), torch.zeros(2).long()),
            ValueError,
            r"logits must be \[N, K\] and targets \[N\]",
        ),
        (
            lambda: shift_digits(torch.zeros(3, 63), 1),
            ValueError,
            r"images must be \[N, 64\]",
        ),
        (
            lambda: shift_digits(torch.zeros(3, 64), 8),
            ValueError,
            r"max_shift must lie",
        ),
        (lambda: shift_digits(torch.zeros(3, 64), 1.0), TypeError, "max_shift must be"),
        (lambda: EarlyStopping(0), ValueError, "patience must be an int >= 1"),
        (lambda: EarlyStopping().restore(nn.Linear(1, 1)), ValueError, "before any"),
        (lambda: MLP(Regularisers(norm="group")), ValueError, "norm must be one of"),
    ],
)
def test_bad_input_raises_a_clear_error(make, error, match):
    with pytest.raises(error, match=match):
        make()


# --------------------------------------------------------------------------------------
# The demo.


def test_demo_gap_shrinks_with_dropout_and_with_shifts(tmp_path, capsys):
    """40 of the default 100 epochs: the plain network already fits its 200 digits,
    and dropout and shifted digits each leave a smaller train/test gap."""
    # --epochs 40 --techniques none dropout shifts
    metric, args, low, high = short_band("annotated/networks/regularisation.py")
    metrics = main([*args, "--out", str(tmp_path)])
    assert low <= metrics[metric] <= high  # the short run's band over stored seeds
    assert f"gap {metrics['none gap']:.3f}" in capsys.readouterr().out
    assert metrics["none gap"] > 0.03
    assert metrics["dropout gap"] < metrics["none gap"] - 0.01
    assert metrics["shifts gap"] < metrics["none gap"] - 0.01
    assert (tmp_path / "gaps.png").stat().st_size > 0


# --------------------------------------------------------------------------------------
# Benchmarks: one training step (forward and backward) of each normalisation, ours from
# tensor operations against torch's fused kernels, on a [256, 128] float32 batch.

BENCH_X = torch.randn(256, 128)
BENCH_UPSTREAM = torch.randn(256, 128)


def bench_step(module):
    x = BENCH_X.clone().requires_grad_()

    def step():
        module(x).backward(BENCH_UPSTREAM)

    return step


@pytest.mark.benchmark(group="batch norm forward+backward, [256, 128]")
def test_bench_batch_norm_ours(benchmark):
    benchmark.extra_info["label"] = "ours (tensor ops)"
    benchmark(bench_step(BatchNorm(128)))


@pytest.mark.benchmark(group="batch norm forward+backward, [256, 128]")
def test_bench_batch_norm_torch(benchmark):
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["label"] = "torch.nn.BatchNorm1d"
    benchmark(bench_step(nn.BatchNorm1d(128)))


@pytest.mark.benchmark(group="layer norm forward+backward, [256, 128]")
def test_bench_layer_norm_ours(benchmark):
    benchmark.extra_info["label"] = "ours (tensor ops)"
    benchmark(bench_step(LayerNorm(128)))


@pytest.mark.benchmark(group="layer norm forward+backward, [256, 128]")
def test_bench_layer_norm_torch(benchmark):
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["label"] = "torch.nn.LayerNorm"
    benchmark(bench_step(nn.LayerNorm(128)))


def test_a_training_set_outside_the_digits_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        main(["--train-size", "5"])
    assert "--train-size must lie in [10, 1238], got 5" in capsys.readouterr().err
