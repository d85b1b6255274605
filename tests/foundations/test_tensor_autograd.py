"""Verified against torch.autograd in float64 (forward values and gradients to 1e-9) on
random broadcast shapes, and against torch.optim.SGD for a full training step.

Each operation is run on hypothesis-drawn shapes and values, once in our engine and once
in torch, with the same random upstream gradient fed to both backward passes; outputs
and every input's gradient must agree. The comparison is shown to catch a planted wrong
backward rule. Deep graphs (a chain of 10,000 operations) and NumPy operands on either
side of an operator are checked against torch too.
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from annotated.data import digits
from tools.literate.figures import short_band
from annotated.foundations.tensor_autograd import (
    MLP,
    SGD,
    Linear,
    Tensor,
    cross_entropy,
    dataflow,
    example,
    main,
    sum_to_shape,
)

TOLERANCE = 1e-9


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tensors here are tiny, so torch's second thread only adds a handoff to every
    operation; on a busy 2-core machine those handoffs cost far more than the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_close(ours, reference):
    reference = (
        reference.detach().numpy() if isinstance(reference, torch.Tensor) else reference
    )
    np.testing.assert_allclose(ours, reference, rtol=TOLERANCE, atol=TOLERANCE)


def check_against_torch(function, torch_function, arrays, seed):
    """Run `function` on Tensors and `torch_function` on torch tensors; compare "
    "outputs and gradients."""
    ours = [Tensor(array.copy()) for array in arrays]
    theirs = [
        torch.tensor(array, dtype=torch.float64, requires_grad=True) for array in arrays
    ]
    our_out = function(*ours)
    their_out = torch_function(*theirs)
    assert our_out.shape == tuple(their_out.shape)
    assert_close(our_out.data, their_out)
    upstream = np.random.default_rng(seed).standard_normal(our_out.shape)
    our_out.backward(upstream)
    their_out.backward(torch.from_numpy(upstream))
    for our_input, their_input in zip(ours, theirs):
        assert_close(our_input.grad, their_input.grad)


seeds = st.integers(0, 2**32 - 1)
two_broadcast_shapes = hnp.mutually_broadcastable_shapes(
    num_shapes=2, min_dims=0, max_dims=4, max_side=4
)


def normal(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


def away_from_zero(shape, seed):
    """Values with magnitude in [0.5, 2] and random sign: safe denominators."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)


# ---------------------------------------------------------------- elementwise binary
# ops with broadcasting

BINARY_OPS = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
}


@pytest.mark.parametrize("name", BINARY_OPS)
@settings(max_examples=30)
@given(shapes=two_broadcast_shapes, seed=seeds)
def test_binary_op_with_broadcasting_matches_torch(name, shapes, seed):
    left_shape, right_shape = shapes.input_shapes
    left = normal(left_shape, seed)
    right = away_from_zero(right_shape, seed + 1)
    check_against_torch(BINARY_OPS[name], BINARY_OPS[name], [left, right], seed)


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda a: 2.5 + a, lambda a: 2.5 + a),
        (lambda a: 1.0 - a, lambda a: 1.0 - a),
        (lambda a: a * 3, lambda a: a * 3),
        (lambda a: 2.0 / a, lambda a: 2.0 / a),
        (lambda a: a - np.float64(0.5), lambda a: a - 0.5),
        (lambda a: -a, lambda a: -a),
    ],
)
def test_python_scalars_on_either_side_match_torch(ours, theirs):
    check_against_torch(ours, theirs, [away_from_zero((3, 4), 0)], seed=1)


@settings(max_examples=30)
@given(shape=hnp.array_shapes(min_dims=0, max_dims=4, max_side=4), data=st.data())
def test_sum_to_shape_inverts_broadcasting(shape, data):
    """A property: summing a broadcast array of ones back counts how many copies each "
    "element made."""
    target = data.draw(
        hnp.broadcastable_shapes(shape, min_dims=0, max_dims=4, max_side=4)
    )
    broadcast = np.broadcast_shapes(shape, target)
    summed = sum_to_shape(np.ones(broadcast), target)
    assert summed.shape == target
    np.testing.assert_array_equal(summed, np.prod(broadcast) / max(np.prod(target), 1))


# ---------------------------------------------------------------- matmul, 2-D and
# batched


@settings(max_examples=30)
@given(
    shapes=hnp.mutually_broadcastable_shapes(
        signature="(m,k),(k,n)->(m,n)", max_dims=4, max_side=4
    ),
    seed=seeds,
)
def test_matmul_with_batch_broadcasting_matches_torch(shapes, seed):
    left_shape, right_shape = shapes.input_shapes
    check_against_torch(
        lambda a, b: a @ b,
        torch.matmul,
        [normal(left_shape, seed), normal(right_shape, seed + 1)],
        seed,
    )


# ---------------------------------------------------------------- unary elementwise ops

UNARY_OPS = {
    "exp": (lambda a: a.exp(), torch.exp),
    "log": (lambda a: a.log(), torch.log),
    "relu": (lambda a: a.relu(), torch.relu),
    "tanh": (lambda a: a.tanh(), torch.tanh),
    "neg": (lambda a: -a, torch.neg),
}


@pytest.mark.parametrize("name", UNARY_OPS)
@settings(max_examples=20)
@given(shape=hnp.array_shapes(min_dims=0, max_dims=4, max_side=4), seed=seeds)
def test_unary_op_matches_torch(name, shape, seed):
    values = (
        np.abs(away_from_zero(shape, seed)) if name == "log" else normal(shape, seed)
    )
    ours, theirs = UNARY_OPS[name]
    check_against_torch(ours, theirs, [values], seed)


def test_relu_gradient_at_exactly_zero_is_zero_like_torch():
    # Random normal values are never exactly 0; the kink gets its own check.
    values = np.array([-1.0, -0.0, 0.0, 1e-300, 2.0])
    check_against_torch(lambda a: a.relu(), torch.relu, [values], seed=0)


# ---------------------------------------------------------------- reductions, reshape,
# transpose


@st.composite
def shape_and_axes(draw):
    """A shape and a reduction `axis`: None, one (possibly negative) int, or a tuple "
    "of distinct axes."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, max_side=4))
    ndim = len(shape)
    axis = draw(
        st.one_of(
            st.none(),
            st.integers(-ndim, ndim - 1),
            st.lists(
                st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True
            ).map(tuple),
        )
    )
    return shape, axis


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@settings(max_examples=30)
@given(shape_axis=shape_and_axes(), keepdims=st.booleans(), seed=seeds)
def test_reduction_with_axis_and_keepdims_matches_torch(
    reduction, shape_axis, keepdims, seed
):
    shape, axis = shape_axis
    torch_axis = tuple(range(len(shape))) if axis is None else axis

    def ours(a):
        return getattr(a, reduction)(axis=axis, keepdims=keepdims)

    def theirs(a):
        return getattr(torch, reduction)(a, dim=torch_axis, keepdim=keepdims)

    check_against_torch(ours, theirs, [normal(shape, seed)], seed)


@settings(max_examples=30)
@given(
    shape=hnp.array_shapes(min_dims=1, max_dims=4, max_side=4),
    seed=seeds,
    data=st.data(),
)
def test_reshape_and_transpose_match_torch(shape, seed, data):
    size = int(np.prod(shape))
    new_shape = data.draw(
        st.sampled_from([(size,), (1, size, 1), (-1,), tuple(reversed(shape))])
    )
    axes = tuple(data.draw(st.permutations(range(len(shape)))))
    check_against_torch(
        lambda a: a.reshape(new_shape),
        lambda a: a.reshape(new_shape),
        [normal(shape, seed)],
        seed,
    )
    check_against_torch(
        lambda a: a.transpose(axes),
        lambda a: a.permute(axes),
        [normal(shape, seed)],
        seed,
    )
    reversed_axes = tuple(reversed(range(len(shape))))
    check_against_torch(
        lambda a: a.transpose(),
        lambda a: a.permute(reversed_axes),
        [normal(shape, seed)],
        seed,
    )


# ---------------------------------------------------------------- softmax, log_softmax,
# cross_entropy


@st.composite
def shape_and_axis(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, max_side=5))
    return shape, draw(st.integers(-len(shape), len(shape) - 1))


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@settings(max_examples=30)
@given(shape_axis=shape_and_axis(), scale=st.sampled_from([1.0, 30.0]), seed=seeds)
def test_softmax_and_log_softmax_match_torch(name, shape_axis, scale, seed):
    shape, axis = shape_axis
    check_against_torch(
        lambda a: getattr(a, name)(axis=axis),
        lambda a: getattr(torch, name)(a, dim=axis),
        [scale * normal(shape, seed)],
        seed,
    )


@settings(max_examples=30)
@given(batch=st.integers(1, 8), classes=st.integers(1, 12), seed=seeds)
def test_cross_entropy_matches_torch(batch, classes, seed):
    targets = np.random.default_rng(seed).integers(0, classes, size=batch)
    check_against_torch(
        lambda logits: cross_entropy(logits, targets),
        lambda logits: torch.nn.functional.cross_entropy(
            logits, torch.from_numpy(targets)
        ),
        [3.0 * normal((batch, classes), seed)],
        seed,
    )


def test_huge_logits_stay_finite_and_match_torch():
    """Scores of order 1e4 overflow a literal exp (e^710 is already inf); the shifted "
    "forms must not."""
    logits = 1e4 * normal((4, 7), 0)
    with np.errstate(over="ignore"):
        assert not np.all(
            np.isfinite(np.exp(logits))
        )  # the naive form really would overflow
    targets = np.array([0, 3, 6, 2])
    check_against_torch(
        lambda a: a.log_softmax(axis=1),
        lambda a: torch.log_softmax(a, dim=1),
        [logits],
        1,
    )
    check_against_torch(
        lambda a: a.softmax(axis=1), lambda a: torch.softmax(a, dim=1), [logits], 2
    )
    check_against_torch(
        lambda a: cross_entropy(a, targets),
        lambda a: torch.nn.functional.cross_entropy(a, torch.from_numpy(targets)),
        [logits],
        3,
    )
    log_probabilities = Tensor(logits).log_softmax(axis=1)
    log_probabilities.backward(np.ones((4, 7)))
    assert np.all(np.isfinite(log_probabilities.data))
    # Very negative scores: -inf would appear in log(softmax(z)) but not in the
    # log-softmax.
    assert np.min(log_probabilities.data) < -1000


# ---------------------------------------------------------------- graphs: fan-out,
# accumulation


def test_composite_expression_with_reuse_matches_torch():
    """A tensor used several times must receive the sum of all its paths' gradients."""

    def expression(a, b, bias):
        hidden = (a @ b + bias).tanh()
        return (
            (hidden * hidden - hidden / (1.0 + hidden.exp()))
            .mean(axis=0)
            .log_softmax(axis=-1)
        )

    arrays = [normal((5, 3), 0), normal((3, 4), 1), normal((4,), 2)]
    check_against_torch(expression, expression, arrays, seed=3)


def test_backward_on_a_bare_leaf_accumulates_like_torch():
    upstream = normal((2, 3), 1)
    x = Tensor(normal((2, 3), 0))
    x.backward(upstream)
    x.backward(upstream)
    reference = torch.tensor(normal((2, 3), 0), requires_grad=True)
    reference.backward(torch.from_numpy(upstream))
    reference.backward(torch.from_numpy(upstream))
    assert_close(x.grad, reference.grad)
    assert_close(x.grad, 2 * upstream)


def test_repr_shows_the_shape_and_the_operation_that_made_the_tensor():
    x = Tensor(np.zeros((2, 3)))
    assert repr(x) == "Tensor(shape=[2, 3], op='leaf')"
    assert repr((x * 2.0).sum()) == "Tensor(shape=[], op='sum')"


def test_leaf_gradients_accumulate_and_interior_ones_do_not():
    a = Tensor(normal((3,), 0))
    hidden = a * 2.0
    loss = hidden.sum()
    loss.backward()
    loss.backward()
    np.testing.assert_array_equal(
        a.grad, 4.0 * np.ones(3)
    )  # two passes, 2 each: like torch
    np.testing.assert_array_equal(hidden.grad, np.ones(3))  # recomputed, not doubled


def test_a_chain_of_10000_operations_matches_torch():
    """Ten times Python's recursion limit deep: the order must be built without
    recursion."""
    start = normal((3,), 0)
    x = Tensor(start.copy())
    y = x
    for _ in range(10_000):
        y = (y * 1.0001).tanh()
    y.sum().backward()
    reference_x = torch.tensor(start, requires_grad=True)
    reference_y = reference_x
    for _ in range(10_000):
        reference_y = (reference_y * 1.0001).tanh()
    reference_y.sum().backward()
    assert_close(y.data, reference_y)
    assert_close(x.grad, reference_x.grad)
    assert np.all(x.grad != 0)
    assert len(y.topological_order()) == 1 + 3 * 10_000  # x, then (1.0001, mul, tanh)


# ---------------------------------------------------------------- NumPy operands


@pytest.mark.parametrize(
    "expression",
    [
        lambda x, array: array * 2 + x,
        lambda x, array: array - x,
        lambda x, array: array * x,
        lambda x, array: array / x,
        lambda x, array: array.reshape(1, 3) @ x.reshape((3, 1)),
        lambda x, array: np.float64(2.0) * x - np.float32(0.5),
        lambda x, array: x * array + x / array - x.reshape((1, 3)) @ array[:, None],
    ],
    ids=[
        "array*2 + x",
        "array - x",
        "array * x",
        "array / x",
        "array @ x",
        "scalars",
        "x on the left",
    ],
)
def test_numpy_operands_on_either_side_stay_in_the_graph(expression):
    array = away_from_zero((3,), 0)
    start = away_from_zero((3,), 1)
    x = Tensor(start.copy())
    out = expression(x, array)
    assert isinstance(out, Tensor), type(out)
    reference_x = torch.tensor(start, requires_grad=True)
    reference_out = expression(reference_x, torch.from_numpy(array))
    assert_close(out.data, reference_out)
    out.sum().backward()
    reference_out.sum().backward()
    assert_close(x.grad, reference_x.grad)


def test_numpy_functions_refuse_a_tensor():
    with pytest.raises(TypeError, match="does not support ufuncs"):
        np.exp(Tensor(np.ones(3)))


# ---------------------------------------------------------------- the checker itself


def wrong_tanh(self):
    """tanh with a planted fault in its backward rule: 1 - y instead of 1 - y^2."""
    out = Tensor(np.tanh(self.data), (self,), "tanh")

    def _backward():
        self.grad += out.grad * (1.0 - out.data)

    out._backward = _backward
    return out


def test_the_torch_comparison_flags_a_wrong_backward_rule(monkeypatch):
    values = [normal((2, 3), 0)]
    check_against_torch(lambda a: a.tanh(), torch.tanh, values, seed=1)
    monkeypatch.setattr(Tensor, "tanh", wrong_tanh)
    with pytest.raises(AssertionError):
        check_against_torch(lambda a: a.tanh(), torch.tanh, values, seed=1)


# ---------------------------------------------------------------- the MLP, its
# initialisation and SGD


def torch_copy(model: MLP) -> torch.nn.Sequential:
    """The same network in torch: nn.Linear stores weight [fan_out, fan_in], our "
    "transpose."""
    reference = torch.nn.Sequential(
        torch.nn.Linear(model.hidden.weight.shape[0], model.hidden.weight.shape[1]),
        torch.nn.ReLU(),
        torch.nn.Linear(model.output.weight.shape[0], model.output.weight.shape[1]),
    ).double()
    with torch.no_grad():
        for layer, ours in [(reference[0], model.hidden), (reference[2], model.output)]:
            layer.weight.copy_(torch.from_numpy(ours.weight.data.T))
            layer.bias.copy_(torch.from_numpy(ours.bias.data))
    return reference


def test_training_steps_match_torch_sgd_with_momentum():
    x_train, y_train, _, _ = digits()
    model = MLP(64, 32, 10, seed=1)
    reference = torch_copy(model)
    optimiser = SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch_optimiser = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    for step in range(3):
        batch = slice(16 * step, 16 * (step + 1))
        optimiser.zero_grad()
        loss = cross_entropy(model(Tensor(x_train[batch])), y_train[batch])
        loss.backward()
        optimiser.step()
        torch_optimiser.zero_grad()
        torch_logits = reference(torch.from_numpy(x_train[batch]))
        torch_loss = torch.nn.functional.cross_entropy(
            torch_logits, torch.from_numpy(y_train[batch])
        )
        torch_loss.backward()
        torch_optimiser.step()
        assert_close(loss.data, torch_loss)
    for layer, ours in [(reference[0], model.hidden), (reference[2], model.output)]:
        assert_close(ours.weight.data, layer.weight.T)
        assert_close(ours.bias.data, layer.bias)


@pytest.mark.parametrize(
    "init, expected_variance",
    [("he", lambda i, o: 2 / i), ("glorot", lambda i, o: 2 / (i + o))],
)
def test_initialisation_has_the_promised_variance(init, expected_variance):
    """A property: with 250,000 draws the sample variance is within 2 % of the formula "
    "(about 7 standard errors)."""
    layer = Linear(500, 500, init, np.random.default_rng(0))
    assert abs(layer.weight.data.var() / expected_variance(500, 500) - 1) < 0.02
    assert abs(layer.weight.data.mean()) < 0.01 * np.sqrt(expected_variance(500, 500))
    np.testing.assert_array_equal(layer.bias.data, 0.0)


# ---------------------------------------------------------------- example, dataflow,
# demo


def test_example_runs_and_dataflow_is_the_tensor_graph():
    fn, args = example()
    loss = fn(*args)
    assert loss.shape == () and np.isfinite(loss.data)
    nodes, edges = dataflow(loss)
    labels = dict(nodes)
    assert len(labels) == len(nodes) == 11
    assert (
        "matmul [8, 32]" in labels.values()
        and "cross_entropy scalar" in labels.values()
    )
    assert (
        "hidden.weight [64, 32]" in labels.values() and "x [8, 64]" in labels.values()
    )
    assert all(source in labels and target in labels for source, target, _ in edges)
    assert ("[8, 10]" in {label for _, _, label in edges}) and len(edges) == 10


def test_demo_reaches_95_percent_test_accuracy(tmp_path, capsys):
    # The short run's accuracy over the stored seeds is its expected band.
    metric, args, low, high = short_band("annotated/foundations/tensor_autograd.py")
    metrics = main([*args, "--out", str(tmp_path)])
    assert metrics["test_accuracy"] >= 0.95
    assert low <= metrics[metric] <= high
    assert "test accuracy" in capsys.readouterr().out
    assert (tmp_path / "loss.png").stat().st_size > 0


# ---------------------------------------------------------------- bad input


def test_bad_input_raises_clear_errors():
    a, b = Tensor(np.ones((2, 3))), Tensor(np.ones((4,)))
    with pytest.raises(TypeError, match="numpy array or a real number, got list"):
        Tensor([1.0, 2.0])
    with pytest.raises(TypeError, match="real numbers"):
        Tensor(np.array(["a", "b"]))
    with pytest.raises(TypeError, match="got str"):
        a + "x"
    with pytest.raises(
        ValueError, match=r"add: shapes \(2, 3\) and \(4,\) do not broadcast"
    ):
        a + b
    with pytest.raises(ValueError, match=r"mul: shapes \(4,\) and \(2, 3\)"):
        b * a
    with pytest.raises(
        ValueError, match=r"matmul: left is \(2, 3\) and right is \(2, 3\)"
    ):
        a @ a
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        a @ b
    with pytest.raises(
        ValueError, match=r"matmul \(batch axes\): shapes \(2,\) and \(3,\)"
    ):
        Tensor(np.ones((2, 2, 3))) @ Tensor(np.ones((3, 3, 1)))
    with pytest.raises(
        ValueError,
        match=r"cannot reshape a tensor of shape \(2, 3\) \(6 elements\) into \(4,\)",
    ):
        a.reshape((4,))
    with pytest.raises(ValueError, match="permutation of 0..1"):
        a.transpose((0, 0))
    with pytest.raises(
        ValueError, match="axis 2 is out of range for a tensor with 2 dimensions"
    ):
        a.sum(axis=2)
    with pytest.raises(ValueError, match="repeats an axis"):
        a.mean(axis=(1, -1))
    with pytest.raises(TypeError, match="axis must be an int"):
        a.softmax(axis=1.0)
    with pytest.raises(ValueError, match="log: input must be positive"):
        (a - 1.0).log()
    with pytest.raises(ValueError, match=r"output has shape \(2, 3\); pass gradient="):
        a.exp().backward()
    with pytest.raises(ValueError, match=r"gradient has shape \(3,\)"):
        a.exp().backward(np.ones(3))


def test_cross_entropy_rejects_bad_targets():
    logits = Tensor(np.zeros((3, 5)))
    with pytest.raises(
        ValueError, match=r"targets must lie in \[0, 5\), got values from 0 to 5"
    ):
        cross_entropy(logits, np.array([0, 1, 5]))
    with pytest.raises(
        ValueError, match=r"targets must lie in \[0, 5\), got values from -1"
    ):
        cross_entropy(logits, np.array([-1, 1, 2]))
    with pytest.raises(
        ValueError,
        match=r"targets must have shape \(3,\) to match logits \(3, 5\), got \(3, 1\)",
    ):
        cross_entropy(logits, np.zeros((3, 1), dtype=np.int64))
    with pytest.raises(TypeError, match="integer class indices"):
        cross_entropy(logits, np.zeros(3))
    with pytest.raises(
        ValueError, match=r"logits must be 2-D \[batch, classes\], got shape \(5,\)"
    ):
        cross_entropy(Tensor(np.zeros(5)), np.zeros(5, dtype=np.int64))
    with pytest.raises(TypeError, match="logits must be a Tensor, got ndarray"):
        cross_entropy(np.zeros((3, 5)), np.zeros(3, dtype=np.int64))
    with pytest.raises(
        ValueError, match=r"logits must hold at least one row .*got shape \(0, 5\)"
    ):
        cross_entropy(Tensor(np.zeros((0, 5))), np.zeros(0, dtype=np.int64))


@pytest.mark.parametrize(
    "make, error, match",
    [
        (
            lambda: Linear(3, 2, "xavier", np.random.default_rng(0)),
            ValueError,
            "init must be 'he' or 'glorot', got 'xavier'",
        ),
        (
            lambda: Linear(0, 2, "he", np.random.default_rng(0)),
            ValueError,
            "fan_in and fan_out must be ints >= 1, got 0 and 2",
        ),
        (
            lambda: Linear(3, 2.5, "he", np.random.default_rng(0)),
            ValueError,
            "fan_in and fan_out must be ints >= 1, got 3 and 2.5",
        ),
        (
            lambda: MLP(64, True, 10),
            ValueError,
            "d_in, d_hidden and d_out must be ints >= 1, got 64, True and 10",
        ),
        (lambda: SGD([], lr=0.0), ValueError, "lr must be > 0 and finite, got 0.0"),
        (lambda: SGD([], lr=np.inf), ValueError, "lr must be > 0 and finite, got inf"),
        (lambda: SGD([], lr="0.1"), TypeError, "lr must be a real number, got str"),
        (
            lambda: SGD([], lr=0.1, momentum=1.0),
            ValueError,
            r"momentum must lie in \[0, 1\), got 1.0",
        ),
        (
            lambda: SGD([], lr=0.1, momentum=True),
            TypeError,
            "momentum must be a real number, got bool",
        ),
        (
            lambda: SGD([np.zeros(3)], lr=0.1),
            TypeError,
            "parameters must be Tensors",
        ),
        (
            lambda: Tensor(np.ones(2)).exp().backward(np.array(["a", "b"])),
            TypeError,
            "gradient must hold real numbers",
        ),
    ],
)
def test_layer_optimiser_and_backward_reject_bad_settings(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_sgd_step_leaves_the_gradients_untouched():
    model = MLP(4, 3, 2, seed=0)
    optimiser = SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = Tensor(normal((5, 4), 0))
    for _ in range(2):  # the second step also reads the momentum buffer
        optimiser.zero_grad()
        cross_entropy(model(x), np.array([0, 1, 1, 0, 1])).backward()
        before = [parameter.grad.copy() for parameter in model.parameters()]
        optimiser.step()
        for parameter, grad in zip(model.parameters(), before):
            np.testing.assert_array_equal(parameter.grad, grad)


# ---------------------------------------------------------------- benchmarks: one
# training step, batch 64


def training_step_ours():
    x_train, y_train, _, _ = digits()
    model = MLP(64, 64, 10, seed=0)
    optimiser = SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = x_train[:64], y_train[:64]  # [64, 64], [64]

    def step():
        optimiser.zero_grad()
        loss = cross_entropy(model(Tensor(x)), y)
        loss.backward()
        optimiser.step()

    return step


def training_step_torch():
    x_train, y_train, _, _ = digits()
    model = torch_copy(MLP(64, 64, 10, seed=0))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = (
        torch.from_numpy(x_train[:64]),
        torch.from_numpy(y_train[:64]),
    )  # [64, 64], [64]

    def step():
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimiser.step()

    return step


@pytest.mark.benchmark(group="mlp step, batch 64")
def test_bench_mlp_step_ours(benchmark):
    benchmark.extra_info["label"] = "our NumPy Tensor engine"
    benchmark(training_step_ours())


@pytest.mark.benchmark(group="mlp step, batch 64")
def test_bench_mlp_step_torch(benchmark):
    benchmark.extra_info["label"] = "torch (nn.Linear, autograd, optim.SGD)"
    benchmark.extra_info["baseline"] = True
    benchmark(training_step_torch())
