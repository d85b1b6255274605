"""Verified against torch.autograd and torch.nn.functional.cross_entropy in float64 on
identical weights (losses, logits and every gradient to 1e-12 relative) and against
central finite differences (1e-6 relative), with SGD momentum checked step for step
against torch.optim.SGD.

Also checked: a 200-layer network (no recursion), logits of ±1000, batches of one,
saving and reloading the network and optimizer mid-training, the bad-input errors, and
the demo's accuracy on a short run. The benchmarks run the same training step in this
lesson, in NumPy and in torch.
"""

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from annotated.data import digits
from annotated.networks.mlp_stdlib import (
    MLP,
    SGD,
    accuracy,
    dataflow,
    dense_backward,
    dense_forward,
    example,
    main,
    matmul_transposed,
    softmax_cross_entropy,
    train_step,
    transpose,
)
from tools.literate.figures import short_band


X_TRAIN, Y_TRAIN, _, _ = digits()  # [1438, 64], [1438]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tensors here are tiny, so a second torch thread only adds handoffs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_batch(n_rows, n_inputs, n_classes, seed=0, scale=1.0):
    rng = random.Random(seed)
    x = [[rng.uniform(-scale, scale) for _ in range(n_inputs)] for _ in range(n_rows)]
    labels = [rng.randrange(n_classes) for _ in range(n_rows)]
    return x, labels


def torch_parameters(model):
    """The model's weights and biases as float64 leaf tensors."""
    return [
        (
            torch.tensor(w, dtype=torch.float64, requires_grad=True),
            torch.tensor(b, dtype=torch.float64, requires_grad=True),
        )
        for w, b in zip(model.weights, model.biases)
    ]


def torch_forward(parameters, x, activation):
    h = torch.tensor(x, dtype=torch.float64)
    for i, (w, b) in enumerate(parameters):
        h = F.linear(h, w, b)
        if i < len(parameters) - 1:
            h = torch.relu(h) if activation == "relu" else torch.tanh(h)
    return h


def assert_close(ours, reference, rtol=1e-12, atol=1e-14):
    np.testing.assert_allclose(
        np.asarray(ours, dtype=np.float64),
        reference.detach().numpy(),
        rtol=rtol,
        atol=atol,
    )


# --------------------------------------------------------------------------------------
# Forward values and gradients against torch, on identical float64 weights.


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize(
    "sizes, batch",
    [([64, 16, 10], 8), ([5, 3], 4), ([1, 1, 2], 1), ([7, 20, 20, 20, 3], 5)],
    ids=["64-16-10", "one layer", "width one, batch one", "three hidden layers"],
)
def test_loss_logits_and_gradients_match_torch(sizes, batch, activation):
    model = MLP(sizes, activation=activation, seed=1)
    x, labels = random_batch(batch, sizes[0], sizes[-1], seed=2)
    # Nonzero biases, so that a bias dropped from the forward pass would show.
    for b in model.biases:
        b[:] = [0.1 * (j + 1) for j in range(len(b))]
    logits, _ = model.forward(x)
    loss, grad_weights, grad_biases = model.loss_and_gradients(x, labels)

    parameters = torch_parameters(model)
    reference_logits = torch_forward(parameters, x, activation)
    reference_loss = F.cross_entropy(reference_logits, torch.tensor(labels))
    reference_loss.backward()

    assert_close(logits, reference_logits)
    assert loss == pytest.approx(reference_loss.item(), rel=1e-12)
    for (w, b), grad_w, grad_b in zip(parameters, grad_weights, grad_biases):
        assert_close(grad_w, w.grad)
        assert_close(grad_b, b.grad)


def test_dense_backward_input_gradient_matches_torch():
    rng = random.Random(3)
    x = [[rng.gauss(0, 1) for _ in range(6)] for _ in range(4)]  # [4, 6]
    weight = [[rng.gauss(0, 1) for _ in range(6)] for _ in range(3)]  # [3, 6]
    bias = [rng.gauss(0, 1) for _ in range(3)]
    grad_out = [[rng.gauss(0, 1) for _ in range(3)] for _ in range(4)]  # [4, 3]
    x_t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    w_t = torch.tensor(weight, dtype=torch.float64, requires_grad=True)
    b_t = torch.tensor(bias, dtype=torch.float64, requires_grad=True)
    out = F.linear(x_t, w_t, b_t)
    out.backward(torch.tensor(grad_out, dtype=torch.float64))

    assert_close(dense_forward(x, weight, bias), out)
    grad_w, grad_b, grad_x = dense_backward(x, weight, grad_out)
    assert_close(grad_w, w_t.grad)
    assert_close(grad_b, b_t.grad)
    assert_close(grad_x, x_t.grad)
    assert dense_backward(x, weight, grad_out, need_input_grad=False)[2] is None


def test_matmul_transposed_and_transpose_match_numpy():
    rng = np.random.default_rng(0)
    a, c = rng.normal(size=(5, 7)), rng.normal(size=(3, 7))
    np.testing.assert_allclose(
        matmul_transposed(a.tolist(), c.tolist()), a @ c.T, rtol=1e-13
    )
    assert np.array_equal(np.array(transpose(a.tolist())), a.T)


def test_a_deep_network_needs_no_recursion_and_matches_torch():
    sizes = [8] + [8] * 200 + [3]
    model = MLP(sizes, activation="tanh", seed=0)
    x, labels = random_batch(4, 8, 3, seed=1)
    loss, grad_weights, grad_biases = model.loss_and_gradients(x, labels)
    parameters = torch_parameters(model)
    reference = F.cross_entropy(
        torch_forward(parameters, x, "tanh"), torch.tensor(labels)
    )
    reference.backward()
    assert loss == pytest.approx(reference.item(), rel=1e-12)
    # The first layer's gradient has passed back through all 200 tanh layers.
    assert_close(grad_weights[0], parameters[0][0].grad, rtol=1e-9, atol=1e-18)
    assert_close(grad_biases[-1], parameters[-1][1].grad)


def test_softmax_cross_entropy_is_stable_at_extreme_logits():
    logits = [[1000.0, -1000.0, 0.0], [-1000.0, -1000.0, -999.0], [3.0, 3.0, 3.0]]
    labels = [1, 2, 0]
    loss, grad = softmax_cross_entropy(logits, labels)
    logits_t = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    reference = F.cross_entropy(logits_t, torch.tensor(labels))
    reference.backward()
    assert math.isfinite(loss)
    assert loss == pytest.approx(reference.item(), rel=1e-12)
    assert_close(grad, logits_t.grad)
    # Each row of p - onehot sums to zero.
    assert all(abs(sum(row)) < 1e-15 for row in grad)


# --------------------------------------------------------------------------------------
# Gradients against central finite differences, for every parameter of a small net.


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_gradients_match_central_finite_differences(activation):
    model = MLP([4, 5, 3], activation=activation, seed=4)
    for b in model.biases:
        b[:] = [0.05 * (j + 1) for j in range(len(b))]
    x, labels = random_batch(6, 4, 3, seed=5)
    _, grad_weights, grad_biases = model.loss_and_gradients(x, labels)
    analytic = [g for gw in grad_weights for row in gw for g in row]
    analytic += [g for gb in grad_biases for g in gb]
    rows = [row for w in model.weights for row in w] + model.biases
    step = 1e-6
    numeric = []
    for row in rows:
        for k in range(len(row)):
            saved = row[k]
            row[k] = saved + step
            up = model.loss_and_gradients(x, labels)[0]
            row[k] = saved - step
            down = model.loss_and_gradients(x, labels)[0]
            row[k] = saved
            numeric.append((up - down) / (2 * step))
    assert len(numeric) == 4 * 5 + 5 + 5 * 3 + 3
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------------------
# The optimizer, step for step against torch.optim.SGD, and saved state.


def test_sgd_with_momentum_matches_torch_optim_in_lockstep():
    model = MLP([64, 16, 10], seed=0)
    optimizer = SGD(model, lr=0.1, momentum=0.9)
    parameters = [p for pair in torch_parameters(model) for p in pair]
    reference = torch.optim.SGD(parameters, lr=0.1, momentum=0.9)
    rng = random.Random(0)
    first_row = model.weights[0][0]
    for _ in range(20):
        batch = rng.sample(range(len(X_TRAIN)), 16)
        x, labels = X_TRAIN[batch].tolist(), Y_TRAIN[batch].tolist()
        train_step(model, optimizer, x, labels)
        reference.zero_grad()
        logits = torch_forward(list(zip(parameters[::2], parameters[1::2])), x, "relu")
        F.cross_entropy(logits, torch.tensor(labels)).backward()
        reference.step()
        ours = [model.weights[0], model.biases[0], model.weights[1], model.biases[1]]
        for mine, theirs in zip(ours, parameters):
            assert_close(mine, theirs, rtol=1e-10, atol=1e-13)
    # The update writes into the same lists.
    assert model.weights[0][0] is first_row


def test_saved_state_resumes_training_exactly():
    x, labels = random_batch(12, 10, 4, seed=6)
    model = MLP([10, 8, 4], seed=0)
    optimizer = SGD(model, lr=0.1, momentum=0.9)
    for _ in range(3):
        train_step(model, optimizer, x, labels)
    saved_model, saved_optimizer = model.state_dict(), optimizer.state_dict()
    snapshot = repr(saved_model)
    for _ in range(3):
        train_step(model, optimizer, x, labels)
    assert repr(saved_model) == snapshot  # later training leaves a saved state alone

    resumed = MLP([10, 8, 4], seed=99)
    resumed_optimizer = SGD(resumed, lr=0.1, momentum=0.9)
    resumed.load_state_dict(saved_model)
    resumed_optimizer.load_state_dict(saved_optimizer)
    for _ in range(3):
        train_step(resumed, resumed_optimizer, x, labels)
    assert resumed.weights == model.weights
    assert resumed.biases == model.biases


def test_initial_weights_have_variance_gain_over_fan_in():
    model = MLP([400, 300, 10], seed=0)
    weights = np.array(model.weights[0])
    assert abs(weights.var() * 400 / 2.0 - 1) < 5 * math.sqrt(2 / weights.size)
    assert all(b == 0.0 for b in model.biases[0])
    tanh_weights = np.array(MLP([400, 300, 10], activation="tanh").weights[0])
    assert abs(tanh_weights.var() * 400 - 1) < 5 * math.sqrt(2 / weights.size)


# --------------------------------------------------------------------------------------
# The example, bad input and the demo.


def test_example_runs_a_training_step_and_dataflow_draws_it():
    fn, args = example()
    model = args[0]
    before = [list(row) for row in model.weights[1]]
    loss = fn(*args)
    assert 0.5 < loss < 10.0
    assert model.weights[1] != before
    nodes, edges = dataflow(loss)
    ids = {node for node, _ in nodes}
    assert all(src in ids and dst in ids for src, dst, _ in edges)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: MLP([64]), ValueError, "sizes must be a list of at least two"),
        (lambda: MLP([64, 0, 10]), ValueError, "positive ints"),
        (lambda: MLP([64, 2.5, 10]), ValueError, "positive ints"),
        (lambda: MLP([4, 2], activation="gelu"), ValueError, "activation must be one"),
        (lambda: MLP([4, 2]).forward([]), TypeError, "x must be a non-empty list"),
        (
            lambda: MLP([4, 2]).forward([[1.0] * 4, [1.0] * 3]),
            ValueError,
            "every row of x must be a list of 4 numbers; row 1",
        ),
        (
            lambda: MLP([4, 2]).loss_and_gradients([[1.0] * 4], [0, 1]),
            ValueError,
            "labels must be a list of 1 ints",
        ),
        (
            lambda: MLP([4, 2]).loss_and_gradients([[1.0] * 4], [2]),
            ValueError,
            r"labels must be ints in 0\.\.1, got 2",
        ),
        (
            lambda: MLP([4, 2]).loss_and_gradients([[1.0] * 4], [1.0]),
            ValueError,
            "labels must be ints",
        ),
        (  # -1 would otherwise score the last class
            lambda: softmax_cross_entropy([[0.0, 1.0], [1.0, 0.0]], [0, -1]),
            ValueError,
            r"softmax_cross_entropy: labels must hold one int in 0\.\.C-1 per row "
            r"of logits \[B, C\] = \[2, 2\], got \[0, -1\]",
        ),
        (  # zip would otherwise drop the second row
            lambda: softmax_cross_entropy([[0.0, 1.0], [1.0, 0.0]], [0]),
            ValueError,
            r"softmax_cross_entropy: labels must hold one int in 0\.\.C-1 per row",
        ),
        (lambda: SGD([], lr=0.1), TypeError, "model must be an MLP"),
        (lambda: SGD(MLP([4, 2]), lr=0.0), ValueError, "lr must be a positive"),
        (lambda: SGD(MLP([4, 2]), momentum=1.0), ValueError, r"momentum must lie"),
        (
            lambda: MLP([4, 2]).load_state_dict(MLP([4, 3]).state_dict()),
            ValueError,
            r"state is for sizes \[4, 3\]",
        ),
    ],
)
def test_bad_input_raises_a_clear_error(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_demo_learns_on_a_short_run(tmp_path, capsys):
    metric, args, low, high = short_band("annotated/networks/mlp_stdlib.py")
    metrics = main([*args, "--out", str(tmp_path)])
    # Two epochs on 500 digits already reach about 0.9; chance is 0.1.
    assert metrics["test_accuracy"] >= 0.85
    assert low <= metrics[metric] <= high  # the short run's band over stored seeds
    assert metrics["train_loss"] < 1.0
    assert f"test accuracy {metrics['test_accuracy']:.3f}" in capsys.readouterr().out
    assert (tmp_path / "training.png").stat().st_size > 0
    assert (tmp_path / "first_layer.png").stat().st_size > 0


def test_accuracy_counts_correct_predictions():
    model = MLP([2, 2], seed=0)
    model.weights[0] = [[1.0, 0.0], [0.0, 1.0]]
    x = [[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]]
    assert model.predict(x) == [0, 1, 0, 1]
    assert accuracy(model, x, [0, 1, 1, 1]) == 0.75


# --------------------------------------------------------------------------------------
# Benchmarks: one training step (forward, loss, backward, momentum update) of a
# 64-64-10 ReLU network on a batch of 32 digits, in this lesson, in NumPy and in torch,
# all in float64 from the same weights. The NumPy and torch steps are written here, and
# the test below checks that all three compute the same update.

BATCH_X = X_TRAIN[:32]  # [32, 64]
BATCH_Y = Y_TRAIN[:32]  # [32]


def stdlib_step():
    model = MLP([64, 64, 10], seed=0)
    optimizer = SGD(model, lr=0.05, momentum=0.9)
    x, labels = BATCH_X.tolist(), BATCH_Y.tolist()
    return model, lambda: train_step(model, optimizer, x, labels)


def numpy_step():
    model = MLP([64, 64, 10], seed=0)
    params = [np.array(p) for pair in zip(model.weights, model.biases) for p in pair]
    velocity = [np.zeros_like(p) for p in params]
    onehot = np.eye(10)[BATCH_Y]  # [32, 10]

    def step():
        w1, b1, w2, b2 = params
        hidden = np.maximum(BATCH_X @ w1.T + b1, 0.0)  # [32, 64]
        logits = hidden @ w2.T + b2  # [32, 10]
        shifted = logits - logits.max(axis=1, keepdims=True)
        exps = np.exp(shifted)
        probs = exps / exps.sum(axis=1, keepdims=True)
        loss = -np.mean(np.log(probs[np.arange(32), BATCH_Y]))
        grad_logits = (probs - onehot) / 32
        grad_hidden = (grad_logits @ w2) * (hidden > 0)
        grads = [
            grad_hidden.T @ BATCH_X,
            grad_hidden.sum(axis=0),
            grad_logits.T @ hidden,
            grad_logits.sum(axis=0),
        ]
        for p, v, g in zip(params, velocity, grads):
            v *= 0.9
            v += g
            p -= 0.05 * v
        return loss

    return params, step


def torch_step():
    model = MLP([64, 64, 10], seed=0)
    net = torch.nn.Sequential(
        torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    ).double()
    with torch.no_grad():
        for layer, w, b in zip([net[0], net[2]], model.weights, model.biases):
            layer.weight.copy_(torch.tensor(w, dtype=torch.float64))
            layer.bias.copy_(torch.tensor(b, dtype=torch.float64))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    x, labels = torch.tensor(BATCH_X), torch.tensor(BATCH_Y)

    def step():
        optimizer.zero_grad()
        loss = F.cross_entropy(net(x), labels)
        loss.backward()
        optimizer.step()
        return loss

    return list(net.parameters()), step


def test_the_three_training_steps_compute_the_same_update():
    model, ours = stdlib_step()
    numpy_params, numpy_update = numpy_step()
    torch_params, torch_update = torch_step()
    for _ in range(3):
        loss = ours()
        assert numpy_update() == pytest.approx(loss, rel=1e-12)
        assert torch_update().item() == pytest.approx(loss, rel=1e-12)
    mine = [np.array(p) for pair in zip(model.weights, model.biases) for p in pair]
    for a, b, c in zip(mine, numpy_params, torch_params):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(a, c.detach().numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.benchmark(group="training step, 64-64-10 MLP, batch 32")
def test_bench_step_stdlib(benchmark):
    benchmark.extra_info["label"] = "standard library (this lesson)"
    _, step = stdlib_step()
    benchmark(step)


@pytest.mark.benchmark(group="training step, 64-64-10 MLP, batch 32")
def test_bench_step_numpy(benchmark):
    benchmark.extra_info["label"] = "NumPy"
    _, step = numpy_step()
    benchmark(step)


@pytest.mark.benchmark(group="training step, 64-64-10 MLP, batch 32")
def test_bench_step_torch(benchmark):
    benchmark.extra_info["label"] = "torch"
    benchmark.extra_info["baseline"] = True
    _, step = torch_step()
    benchmark(step)
