"""Verified against torch.autograd in float64 to 1e-9 (values and gradients of every
leaf, on random expressions, deep chains and the MLP) and against central finite
differences to 1e-5.

The random expressions are drawn by hypothesis from every operation of `Value`, with
domains kept safe by construction: logarithms and fractional or negative powers take
`e * e + 0.5`, and divisors are `e * e + 0.5` or numbers away from 0. One interpreter
evaluates an expression on `Value`s and on torch tensors, since both spell the
operations alike (`a + b`, `a ** 2`, `a.tanh()`). Both checkers are shown to flag a
planted wrong backward rule. The benchmarks time one training step on two moons against
micrograd, with Python's cycle collector on and off.
"""

import gc
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, reject, settings, strategies as st
from micrograd.engine import Value as MicrogradValue
from micrograd.nn import MLP as MicrogradMLP

from tools.literate.figures import short_band
from annotated.data import two_moons
from annotated.foundations.autograd import (
    MLP,
    Layer,
    Neuron,
    Value,
    dataflow,
    example,
    logistic_loss,
    main,
    mlp_scores,
)

TOLERANCE = 1e-9
N_LEAVES = 3


def close(ours, reference, tolerance=TOLERANCE):
    """Relative agreement for large numbers, absolute for small ones."""
    return abs(ours - reference) <= tolerance * max(1.0, abs(reference))


# --------------------------------------------------------------------------------------
# Random expressions, evaluated by one interpreter on Values or on torch tensors.
#
# An expression is a short straight-line program over the leaves. Each instruction
# applies one operation to the previous result and, for binary operations, to any
# earlier value, leaf or intermediate. So the output depends on every instruction, and
# intermediates are reused: the graph is a DAG, not only a tree, which is what makes the
# order of the backward pass matter.

BINARY_OPS = ["add", "sub", "mul", "div"]
NUMBER_OPS = [
    "number+",
    "number-",
    "number*",
    "number/",
    "+number",
    "-number",
    "*number",
    "/number",
]
SMOOTH_UNARY_OPS = ["neg", "exp", "tanh", "sigmoid", "softplus", "log", "pow"]
# A fractional or negative power needs a positive base, so it is taken of `e * e + 0.5`;
# a whole power of any base is taken of `e` itself.
POWERS = [("positive base", p) for p in (-1.5, -1, -0.5, 0.5, 1.5, 2)] + [
    ("any base", 2),
    ("any base", 3),
]


def expressions(unary_ops):
    """Lists of instructions `(op, other_index, number, power)`; `other_index` picks an
    earlier value."""
    number = st.one_of(
        st.floats(-3.0, -0.1), st.floats(0.1, 3.0)
    )  # also a divisor, so kept away from 0
    instruction = st.tuples(
        st.sampled_from(BINARY_OPS + NUMBER_OPS + unary_ops),
        st.integers(0, 1000),
        number,
        st.sampled_from(POWERS),
    )
    return st.lists(instruction, min_size=1, max_size=20)


def apply(op, operand, other, number, power):
    """One instruction: `operand` is the previous result, `other` an earlier value."""
    if op == "add":
        return operand + other
    if op == "sub":
        return operand - other
    if op == "mul":
        return operand * other
    if op == "div":
        return operand / (other * other + 0.5)
    if op == "number+":
        return number + operand
    if op == "number-":
        return number - operand
    if op == "number*":
        return number * operand
    if op == "number/":
        return number / (operand * operand + 0.5)
    if op == "+number":
        return operand + number
    if op == "-number":
        return operand - number
    if op == "*number":
        return operand * number
    if op == "/number":
        return operand / number
    if op == "neg":
        return -operand
    if op == "log":
        return (operand * operand + 0.5).log()
    if op == "pow":
        base, exponent = power
        return (
            (operand * operand + 0.5) ** exponent
            if base == "positive base"
            else operand**exponent
        )
    if op == "softplus" and isinstance(operand, torch.Tensor):
        # torch returns x itself past its threshold of 20, 2e-9 off log(1 + e^x) there
        # (see SOFTPLUS_POINTS below); from 40 on the two are equal in float64.
        return F.softplus(operand, threshold=40.0)
    return getattr(operand, op)()  # exp, tanh, sigmoid, softplus, relu


def evaluate(program, leaves):
    """Run `program` on `leaves` (Values or 0-d tensors) and return its last value."""
    values = list(leaves)
    for op, other_index, number, power in program:
        values.append(
            apply(op, values[-1], values[other_index % len(values)], number, power)
        )
    return values[-1]


def evaluate_ours(program, leaf_values):
    """Forward and backward on `Value`s; rejects (via `reject`) programs whose numbers
    leave a sane range."""
    leaves = [Value(x) for x in leaf_values]
    try:
        output = evaluate(program, leaves)
        output.backward()
    except OverflowError:
        reject()
    if not (abs(output.data) < 1e6 and all(abs(leaf.grad) < 1e6 for leaf in leaves)):
        reject()
    return output.data, [leaf.grad for leaf in leaves]


leaf_values = st.lists(st.floats(-2.0, 2.0), min_size=N_LEAVES, max_size=N_LEAVES)


def check_against_torch(program, values):
    """Run `program` on our engine and on torch.autograd; values and gradients must
    agree."""
    output, grads = evaluate_ours(program, values)
    leaves = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in values]
    reference = evaluate(program, leaves)
    reference.backward()
    assert close(output, reference.item()), (output, reference.item())
    for ours, leaf in zip(grads, leaves):
        # A leaf the program never reads gets no torch gradient at all; ours stays 0.
        reference_grad = 0.0 if leaf.grad is None else leaf.grad.item()
        assert close(ours, reference_grad), (grads, [leaf.grad for leaf in leaves])


def check_against_finite_differences(program, values):
    """Our gradient of `program` must match central differences of its forward pass."""
    output, grads = evaluate_ours(program, values)
    if not abs(output) < 1e3:
        reject()
    for i in range(N_LEAVES):
        # (f(x + h) - f(x - h)) / 2h errs by O(h^2) from truncation and by
        # O(eps |f| / h) from rounding; h = 1e-6 keeps both near 1e-10 for the functions
        # drawn here.
        step = 1e-6 * max(1.0, abs(values[i]))
        plus, minus = list(values), list(values)
        plus[i] += step
        minus[i] -= step
        try:
            finite_difference = (
                evaluate(program, [Value(x) for x in plus]).data
                - evaluate(program, [Value(x) for x in minus]).data
            ) / (2 * step)
        except (OverflowError, ValueError):
            reject()
        assert close(grads[i], finite_difference, tolerance=1e-5), (
            i,
            grads,
            finite_difference,
        )


@settings(max_examples=150)
@given(program=expressions(SMOOTH_UNARY_OPS + ["relu"]), values=leaf_values)
def test_random_expressions_match_torch_autograd(program, values):
    check_against_torch(program, values)


@settings(max_examples=100)
@given(program=expressions(SMOOTH_UNARY_OPS), values=leaf_values)
def test_random_smooth_expressions_match_central_finite_differences(program, values):
    check_against_finite_differences(program, values)


def wrong_tanh(self):
    """tanh with a planted fault in its backward rule: 1 - z instead of 1 - z^2."""
    tanh_x = math.tanh(self.data)
    out = Value(tanh_x, (self,), "tanh")

    def _backward(out_grad):
        self.grad += (1.0 - tanh_x) * out_grad

    out._backward = _backward
    return out


@pytest.mark.parametrize(
    "checker", [check_against_torch, check_against_finite_differences]
)
def test_both_checkers_flag_a_wrong_backward_rule(checker, monkeypatch):
    program = [("tanh", 0, 1.0, POWERS[0]), ("mul", 1, 1.0, POWERS[0])]
    values = [0.7, -0.4, 1.1]
    checker(program, values)  # the correct rule passes
    monkeypatch.setattr(Value, "tanh", wrong_tanh)
    with pytest.raises(AssertionError):
        checker(program, values)


# --------------------------------------------------------------------------------------
# Gradient accumulation: a value used more than once collects one term per use.


@pytest.mark.parametrize(
    "build, expected_grad",
    [
        (lambda a: a * a, lambda x: 2 * x),
        (lambda a: a + a, lambda x: 2.0),
        (lambda a: a * a * a, lambda x: 3 * x**2),
        (lambda a: (a * 3) * (a * 3) + a * 3, lambda x: (2 * 3 * x + 1) * 3),
        (
            lambda a: a.tanh() * a.exp() - a,
            lambda x: (
                (1 - math.tanh(x) ** 2) * math.exp(x) + math.tanh(x) * math.exp(x) - 1
            ),
        ),
    ],
    ids=["a*a", "a+a", "a*a*a", "shared intermediate", "tanh(a)*exp(a)-a"],
)
def test_value_used_twice_accumulates_gradients(build, expected_grad):
    a = Value(0.7)
    build(a).backward()
    assert a.grad == pytest.approx(expected_grad(0.7), rel=1e-12)


def test_backward_order_example_from_the_lesson():
    # b = 3a, c = 2b, L = b + c: dL/db = 1 + 2 = 3 and dL/da = 9. Visiting b before c
    # would give 3.
    a = Value(1.5)
    b = a * 3
    c = b * 2
    loss = b + c
    loss.backward()
    assert (b.grad, a.grad) == (3.0, 9.0)


def test_topological_order_lists_every_node_after_its_children():
    fn, args = example()
    output = fn(*args)
    order = output.topological_order()
    position = {node: i for i, node in enumerate(order)}
    assert order[-1] is output and len(position) == len(order)
    assert all(
        position[child] < position[node] for node in order for child in node._children
    )


def test_backward_twice_doubles_leaf_gradients_like_torch():
    x, w = Value(0.3), Value(-1.2)
    out = (x * w).tanh() + x
    out.backward()
    out.backward()
    x_ref = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    w_ref = torch.tensor(-1.2, dtype=torch.float64, requires_grad=True)
    out_ref = (x_ref * w_ref).tanh() + x_ref
    out_ref.backward(retain_graph=True)
    out_ref.backward()
    assert close(x.grad, x_ref.grad.item()) and close(w.grad, w_ref.grad.item())


def test_repr_shows_data_and_grad_to_six_significant_digits():
    x = Value(1 / 3)
    (x * 3).backward()
    assert repr(x) == "Value(data=0.333333, grad=3)"


def test_backward_on_a_bare_leaf_accumulates_like_torch():
    # x.backward() is dx/dx = 1, and a leaf accumulates: twice gives 2, as in torch.
    x = Value(0.3)
    x.backward()
    x.backward()
    reference = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    reference.backward()
    reference.backward()
    assert x.grad == reference.grad.item() == 2.0


@pytest.mark.parametrize("x", [-800.0, -40.0, -1e-3, 0.0, 2.5, 40.0, 800.0])
def test_sigmoid_is_stable_at_extremes_and_matches_torch(x):
    ours = Value(x)
    ours.sigmoid().backward()
    reference = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    torch.sigmoid(reference).backward()
    assert close(Value(x).sigmoid().data, torch.sigmoid(reference).item())
    assert close(ours.grad, reference.grad.item())


@pytest.mark.parametrize("x", [-2.0, -1e-300, 0.0, 1e-300, 2.0])
def test_relu_gradient_matches_torch_including_zero_at_exactly_zero(x):
    # The lesson's rule: slope 1 for x > 0, 0 for x < 0, and 0 at x = 0, as torch does.
    ours = Value(x)
    ours.relu().backward()
    reference = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    torch.relu(reference).backward()
    assert Value(x).relu().data == torch.relu(reference).item()
    assert ours.grad == reference.grad.item()


# Past 20, torch's softplus returns x itself (its `threshold`); between 20 and 37 that
# differs from log(1 + e^x) by more than 1e-9 in the gradient, so those points are left
# out. Everywhere else both are exact to rounding, tiny values included.
SOFTPLUS_POINTS = [-1000.0, -745.2, -40.0, -20.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 15.0]
SOFTPLUS_POINTS += [40.0, 709.8, 710.0, 1000.0]


@pytest.mark.parametrize("x", SOFTPLUS_POINTS)
def test_softplus_is_stable_at_extremes_and_matches_torch(x):
    ours = Value(x)
    output = ours.softplus()
    output.backward()
    reference = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    reference_output = F.softplus(reference)
    reference_output.backward()
    # Relative, not absolute: at x = -40 the answer is 4.2e-18, and 0 would be wrong.
    assert math.isclose(output.data, reference_output.item(), rel_tol=1e-12)
    assert math.isclose(ours.grad, reference.grad.item(), rel_tol=1e-12)


def test_the_literal_softplus_fails_where_the_stable_one_does_not():
    with pytest.raises(OverflowError):
        (1 + Value(710.0).exp()).log()
    assert (1 + Value(-40.0).exp()).log().data == 0.0  # 1 + e^-40 rounds to 1
    assert Value(-40.0).softplus().data > 0.0


@pytest.mark.parametrize(
    "scores, labels",
    [
        ([1000.0, -1000.0, 1000.0, -1000.0], [-1.0, 1.0, 1.0, -1.0]),
        ([40.0, -40.0, 0.3, -2.5, 745.5], [1.0, 1.0, -1.0, -1.0, -1.0]),
        ([0.0], [1.0]),
    ],
    ids=["margins of 1000", "mixed", "zero score"],
)
def test_logistic_loss_matches_torch_bce_with_logits_at_extreme_margins(scores, labels):
    values = [Value(score) for score in scores]
    loss = logistic_loss(values, labels)
    loss.backward()
    reference_scores = torch.tensor(scores, dtype=torch.float64, requires_grad=True)
    targets = (torch.tensor(labels, dtype=torch.float64) + 1) / 2  # {-1, 1} -> {0, 1}
    reference = F.binary_cross_entropy_with_logits(reference_scores, targets)
    reference.backward()
    assert math.isclose(loss.data, reference.item(), rel_tol=1e-12)
    for value, reference_grad in zip(values, reference_scores.grad.tolist()):
        assert close(value.grad, reference_grad, tolerance=1e-12)


def test_graphs_have_no_reference_cycles():
    # The demo turns the cycle collector off while training; that is only safe if
    # reference counting alone frees every graph, i.e. if no node can reach itself.
    model = MLP(2, [4, 4, 1])
    gc.collect()
    gc.disable()
    try:
        loss = logistic_loss(
            [model([0.1 * i, -0.2 * i])[0] for i in range(5)],
            [1.0, -1.0, 1.0, -1.0, 1.0],
        )
        (loss.sigmoid() + loss.relu() / 2 - 1 / loss.exp() + loss**2).backward()
        del loss
        unreachable = gc.collect()
    finally:
        gc.enable()
    assert unreachable == 0


def test_a_10000_term_sum_does_not_hit_the_recursion_limit():
    x = Value(1.0)
    total = x
    for _ in range(10_000):
        total = total + x
    total.backward()
    assert x.grad == 10_001.0


def test_a_10000_deep_chain_of_tanh_matches_torch():
    # Each step adds a `*` node (over y and the constant 1.0001) and a tanh node, so the
    # path from the output down to x is 20,000 nodes long: twenty times Python's default
    # recursion limit of 1,000.
    x = Value(0.9)
    y = x
    for _ in range(10_000):
        y = (y * 1.0001).tanh()
    y.backward()
    reference_x = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    reference_y = reference_x
    for _ in range(10_000):
        reference_y = (reference_y * 1.0001).tanh()
    reference_y.backward()
    assert math.isclose(y.data, reference_y.item(), rel_tol=1e-9)
    assert math.isclose(x.grad, reference_x.grad.item(), rel_tol=1e-9)
    assert len(y.topological_order()) == 1 + 3 * 10_000  # x, then (*, 1.0001, tanh)


# --------------------------------------------------------------------------------------
# NumPy numbers mix with Values on either side; NumPy arrays are refused on either side.


@pytest.mark.parametrize(
    "number", [np.float64(1.5), np.float32(1.5), np.int64(3), 2], ids=repr
)
def test_numpy_scalars_work_on_either_side(number):
    x = Value(0.5)
    output = number * x + x * number - number / (x + number) + x**number
    output.backward()
    n = float(number)
    assert close(output.data, 2 * n * 0.5 - n / (0.5 + n) + 0.5**n)
    assert close(x.grad, 2 * n + n / (0.5 + n) ** 2 + n * 0.5 ** (n - 1))
    assert type(output) is Value and type(output.data) is float


@pytest.mark.parametrize(
    "make",
    [
        lambda x: np.array([1.0, 2.0]) * x,
        lambda x: x * np.array([1.0, 2.0]),
        lambda x: np.ones(3) + x,
        lambda x: x - np.ones(3),
    ],
    ids=["array * x", "x * array", "array + x", "x - array"],
)
def test_numpy_arrays_are_refused_on_either_side(make):
    with pytest.raises(TypeError, match="data must be a real number .* got ndarray"):
        make(Value(0.5))


def test_numpy_functions_refuse_a_value():
    with pytest.raises(TypeError, match="does not support ufuncs"):
        np.exp(Value(0.5))


# --------------------------------------------------------------------------------------
# The network: loss and every parameter gradient against the same MLP written with torch
# matrices.


def torch_matrices(model):
    weights = [
        torch.tensor(
            [[w.data for w in neuron.weights] for neuron in layer.neurons],
            dtype=torch.float64,
            requires_grad=True,
        )
        for layer in model.layers
    ]
    biases = [
        torch.tensor(
            [neuron.bias.data for neuron in layer.neurons],
            dtype=torch.float64,
            requires_grad=True,
        )
        for layer in model.layers
    ]
    return weights, biases


def test_mlp_loss_and_gradients_match_torch():
    model = MLP(3, [5, 4, 1], seed=1)
    rng = np.random.default_rng(0)
    points = rng.normal(size=(7, 3))  # [7, 3]
    labels = rng.choice([-1.0, 1.0], size=7)  # [7]
    for layer in (
        model.layers
    ):  # non-zero biases, so that their gradients are tested on a general point
        for neuron in layer.neurons:
            neuron.bias.data = rng.normal()

    loss = logistic_loss([model(list(point))[0] for point in points], list(labels))
    model.zero_grad()
    loss.backward()

    weights, biases = torch_matrices(model)
    activations = torch.tensor(points)
    for i, (weight, bias) in enumerate(zip(weights, biases)):
        activations = activations @ weight.T + bias
        if i < len(weights) - 1:
            activations = activations.tanh()
    loss_ref = torch.nn.functional.softplus(
        -torch.tensor(labels) * activations[:, 0]
    ).mean()
    loss_ref.backward()

    assert close(loss.data, loss_ref.item())
    for layer, weight, bias in zip(model.layers, weights, biases):
        for j, neuron in enumerate(layer.neurons):
            assert close(neuron.bias.grad, bias.grad[j].item())
            for i, w in enumerate(neuron.weights):
                assert close(w.grad, weight.grad[j, i].item())


@pytest.mark.parametrize(
    "make_layer, fan_in",
    [
        (lambda: Layer(400, 100, random.Random(0)), 400),
        (lambda: MLP(2, [300, 300, 1], seed=1).layers[1], 300),
    ],
    ids=["Layer(400, 100)", "MLP's second layer"],
)
def test_initial_weights_are_gaussian_with_variance_one_over_fan_in(make_layer, fan_in):
    """The promise of `Neuron`'s docstring, checked over 40,000 and 90,000 weights.

    For n Gaussian draws the sample variance has a relative standard error of
    sqrt(2 / n) (0.7 % and 0.5 % here) and the excess kurtosis a standard error of
    sqrt(24 / n) (0.025 and 0.016): each bound below is five or six standard errors.
    A uniform draw of the same variance has an excess kurtosis of -1.2.
    """
    layer = make_layer()
    weights = np.array([w.data for neuron in layer.neurons for w in neuron.weights])
    assert len(weights) == len(layer.neurons) * fan_in
    assert all(neuron.bias.data == 0.0 for neuron in layer.neurons)
    variance = 1.0 / fan_in
    assert abs(weights.mean()) < 5 * math.sqrt(variance / len(weights))
    assert abs(weights.var() / variance - 1) < 5 * math.sqrt(2 / len(weights))
    standardized = (weights - weights.mean()) / weights.std()
    assert abs(np.mean(standardized**4) - 3.0) < 6 * math.sqrt(24 / len(weights))


def test_demo_graph_has_the_node_count_the_lesson_states():
    points, classes = two_moons(100, noise=0.1, seed=0)
    points = points - points.mean(axis=0)
    model = MLP(2, [8, 8, 1], seed=0)
    scores = [model(list(point))[0] for point in points]
    loss = logistic_loss(scores, list(2.0 * classes - 1.0))
    assert len(loss.topological_order()) == 21_309


def test_mlp_parameters_and_zero_grad():
    model = MLP(2, [16, 16, 1])
    parameters = model.parameters()
    assert len(parameters) == (2 * 16 + 16) + (16 * 16 + 16) + (16 + 1)
    assert len({id(p) for p in parameters}) == len(parameters)
    model([0.5, -0.5])[0].backward()
    assert any(p.grad != 0 for p in parameters)
    model.zero_grad()
    assert all(p.grad == 0 for p in parameters)


def test_numpy_scores_match_the_engine():
    model = MLP(2, [6, 6, 1], seed=3)
    rng = np.random.default_rng(1)
    for layer in model.layers:  # biases start at 0; give them values, as training would
        for neuron in layer.neurons:
            neuron.bias.data = float(rng.normal())
    points = rng.normal(size=(10, 2))  # [10, 2]
    engine = [model(list(point))[0].data for point in points]
    np.testing.assert_allclose(
        mlp_scores(model, points), engine, rtol=1e-12, atol=1e-12
    )


# --------------------------------------------------------------------------------------
# The example and its diagram.


def test_example_matches_torch_and_dataflow_draws_it():
    fn, args = example()
    output = fn(*args)
    leaves = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in args]
    x1, x2, w1, w2, b = leaves
    reference = (x1 * w1 + x2 * w2 + b).tanh()
    reference.backward()
    assert close(output.data, reference.item())

    nodes, edges = dataflow(output)
    labels = dict(nodes)
    assert len(labels) == len(nodes) == 15  # 10 values and 5 operations
    assert all(src in labels and dst in labels for src, dst, _ in edges)
    assert sorted(label for label in labels.values() if "|" not in label) == [
        "*",
        "*",
        "+",
        "+",
        "tanh",
    ]
    for name, leaf in zip(["x1", "x2", "w1", "w2", "b"], leaves):
        (label,) = [
            label for label in labels.values() if label.startswith(f"{name} = ")
        ]
        assert float(label.split("grad ")[1]) == pytest.approx(
            leaf.grad.item(), rel=1e-3
        )


def test_the_zeroth_power_is_one_with_no_gradient_even_at_zero():
    """x ** 0 is the constant 1 at every base, 0 included, with gradient 0, as torch
    gives it; only exponents in (0, 1) and negative ones are refused at base 0."""
    for base in (0.0, 2.0, -3.0):
        x = Value(base)
        y = x**0
        y.backward()
        reference = torch.tensor(base, dtype=torch.float64, requires_grad=True)
        power = reference**0
        power.backward()
        assert (y.data, x.grad) == (power.item(), reference.grad.item()) == (1, 0)


# --------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: Value("3"), TypeError, "data must be a real number .*, got str"),
        (lambda: Value(True), TypeError, "data must be a real number .*, got bool"),
        (lambda: Value(1.0) + "a", TypeError, "data must be a real number"),
        (lambda: Value(1.0) * [2.0], TypeError, "data must be a real number .* list"),
        (lambda: Value(0.0).log(), ValueError, "needs a positive value, got 0.0"),
        (lambda: Value(-1).log(), ValueError, "needs a positive value, got -1.0"),
        (
            lambda: Value(2.0) ** Value(3.0),
            TypeError,
            "exponent must be an int or a float, not a Value",
        ),
        (
            lambda: Value(2.0) ** "3",
            TypeError,
            "exponent must be an int or a float, got str",
        ),
        (lambda: Value(-2.0) ** 0.5, ValueError, "negative base"),
        (lambda: Value(0.0) ** -1, ValueError, "at base 0"),
        (lambda: Value(1.0) / 0, ValueError, "at base 0"),
        (lambda: 1.0 / Value(0.0), ValueError, "at base 0"),
        (
            lambda: MLP(2, []),
            ValueError,
            "layer_sizes must be a non-empty list of positive ints",
        ),
        (
            lambda: MLP(2, [4, -1]),
            ValueError,
            "layer_sizes must be a non-empty list of positive ints",
        ),
        (lambda: MLP(2, [4, 2.5]), ValueError, "layer_sizes"),
        (lambda: MLP(0, [3]), ValueError, "n_inputs must be a positive int"),
        (
            lambda: Layer(2, 0, random.Random(0)),
            ValueError,
            "n_outputs must be a positive int",
        ),
        (
            lambda: Neuron(-1, random.Random(0)),
            ValueError,
            "n_inputs must be a positive int",
        ),
        (
            lambda: MLP(2, [3, 1])([1.0, 2.0, 3.0]),
            ValueError,
            "expected 2 inputs, got 3",
        ),
        (
            lambda: logistic_loss([Value(1.0)], [1.0, -1.0]),
            ValueError,
            "1 scores and 2 labels",
        ),
        (lambda: logistic_loss([], []), ValueError, "at least one"),
        (
            lambda: logistic_loss([Value(1.0), Value(2.0)], [0.0, 1.0]),
            ValueError,
            r"labels must be -1 or \+1, got \[0.0, 1.0\]",
        ),
        (
            lambda: mlp_scores(MLP(2, [3, 1]), np.zeros((4, 3))),
            ValueError,
            r"points must have shape \[n, 2\], got \(4, 3\)",
        ),
    ],
)
def test_bad_input_raises_a_clear_error(make, error, match):
    with pytest.raises(error, match=match):
        make()


# --------------------------------------------------------------------------------------
# The demo.


def test_demo_reaches_95_percent_accuracy(tmp_path, capsys):
    # 60 of the default 100 steps, to keep this file fast; the default run reaches 0.99.
    metric, args, low, high = short_band("annotated/foundations/autograd.py")
    metrics = main([*args, "--out", str(tmp_path)])
    assert metrics["accuracy"] >= 0.95
    assert low <= metrics[metric] <= high  # the short run's band over stored seeds
    assert f"accuracy {metrics['accuracy']:.3f}" in capsys.readouterr().out
    # The demo switches the cycle collector off only while it trains.
    assert gc.isenabled()
    assert (tmp_path / "decision_boundary.png").stat().st_size > 0
    assert (tmp_path / "loss.png").stat().st_size > 0


# --------------------------------------------------------------------------------------
# Benchmarks against micrograd, on micrograd's own demo: one training step of a
# 2-16-16-1 MLP on a batch of 32 moons with micrograd's loss (an SVM max-margin loss
# plus an L2 penalty). A step is forward, backward, an SGD update and zeroing the
# gradients. Each engine runs its own MLP class; ours puts tanh between the layers and
# micrograd ReLU, one node per hidden unit either way, so the two graphs have the same
# number of nodes (the test below checks it). With Python's cycle collector on,
# micrograd pays for the reference cycle in every node; with it off (as our demo
# trains), the engines compete on building and walking the graph alone.

MOONS, MOON_CLASSES = two_moons(32, noise=0.1, seed=0)  # [32, 2], [32]
MOON_POINTS = [[float(x) for x in point] for point in MOONS]
MOON_LABELS = [2.0 * c - 1.0 for c in MOON_CLASSES]  # in {-1, +1}


def svm_loss(scores, parameters):
    """micrograd's demo loss: the mean hinge loss plus 1e-4 times the squared
    weights."""
    margins = [(1 + -label * score).relu() for label, score in zip(MOON_LABELS, scores)]
    data_loss = sum(margins) * (1.0 / len(margins))
    return data_loss + 1e-4 * sum(p * p for p in parameters)


def ours_on_moons():
    """A fresh 2-16-16-1 MLP of ours: its training step and its parameters."""
    model = MLP(2, [16, 16, 1], seed=0)
    parameters = model.parameters()

    def step():
        loss = svm_loss([model(point)[0] for point in MOON_POINTS], parameters)
        loss.backward()
        for p in parameters:
            p.data -= 0.05 * p.grad
            p.grad = 0.0
        return loss

    return step, parameters


def micrograd_on_moons():
    """A fresh 2-16-16-1 micrograd MLP (weights drawn from `random`): its step and
    its parameters."""
    random.seed(0)
    model = MicrogradMLP(2, [16, 16, 1])
    parameters = model.parameters()

    def step():
        loss = svm_loss([model(point) for point in MOON_POINTS], parameters)
        loss.backward()
        for p in parameters:
            p.data -= 0.05 * p.grad
            p.grad = 0
        return loss

    return step, parameters


def micrograd_nodes(output):
    nodes, stack = {output}, [output]
    while stack:
        for child in stack.pop()._prev:
            if child not in nodes:
                nodes.add(child)
                stack.append(child)
    return len(nodes)


def test_both_engines_build_the_same_size_graph_and_train():
    (ours, _), (theirs, _) = ours_on_moons(), micrograd_on_moons()
    our_loss, their_loss = ours(), theirs()
    assert isinstance(their_loss, MicrogradValue)
    assert len(our_loss.topological_order()) == micrograd_nodes(their_loss)
    assert ours().data < our_loss.data  # the step really descends


@pytest.mark.parametrize("make_step", [ours_on_moons, micrograd_on_moons])
def test_each_step_leaves_the_gradients_zeroed(make_step):
    step, parameters = make_step()
    step()
    assert all(p.grad == 0 for p in parameters)


@pytest.mark.benchmark(group="MLP step on moons, gc on")
def test_bench_moons_step_gc_on_ours(benchmark):
    benchmark.extra_info["label"] = "our scalar engine (Value)"
    benchmark.extra_info["label"] = "ours"
    step, _ = ours_on_moons()
    if not benchmark.disabled:
        gc.collect()  # start from a clean heap: no garbage left by earlier tests
    benchmark(step)


@pytest.mark.benchmark(group="MLP step on moons, gc on")
def test_bench_moons_step_gc_on_micrograd(benchmark):
    benchmark.extra_info["label"] = "micrograd"
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["label"] = "micrograd"
    step, _ = micrograd_on_moons()
    if not benchmark.disabled:
        gc.collect()
    benchmark(step)


# `disable_gc=True` has pytest-benchmark switch the collector off for each timed round
# and back on between rounds, so that micrograd's cyclic garbage is freed between rounds
# and does not pile up over the whole benchmark.
@pytest.mark.benchmark(group="MLP step on moons, gc off", disable_gc=True)
def test_bench_moons_step_gc_off_ours(benchmark):
    benchmark.extra_info["label"] = "our scalar engine (Value)"
    benchmark.extra_info["label"] = "ours"
    step, _ = ours_on_moons()
    if not benchmark.disabled:
        gc.collect()
    benchmark(step)


@pytest.mark.benchmark(group="MLP step on moons, gc off", disable_gc=True)
def test_bench_moons_step_gc_off_micrograd(benchmark):
    benchmark.extra_info["label"] = "micrograd"
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["label"] = "micrograd"
    step, _ = micrograd_on_moons()
    if not benchmark.disabled:
        gc.collect()
    benchmark(step)


# --------------------------------------------------------------------------------------
# And against torch's autograd: one forward and backward pass of a 2-16-16-1 MLP on one
# point, with one float64 0-d tensor per scalar, so that both build the same graph of
# about 1,000 nodes. Torch's per-operation overhead is made for large tensors, not for
# scalars.

POINT = [0.3, -0.7]


def torch_scalar_mlp(model):
    return [
        [
            (
                [
                    torch.tensor(w.data, dtype=torch.float64, requires_grad=True)
                    for w in neuron.weights
                ],
                torch.tensor(neuron.bias.data, dtype=torch.float64, requires_grad=True),
            )
            for neuron in layer.neurons
        ]
        for layer in model.layers
    ]


def torch_scalar_forward_backward(layers):
    activations = [torch.tensor(x, dtype=torch.float64) for x in POINT]
    for i, layer in enumerate(layers):
        activations = [
            sum((w * x for w, x in zip(weights, activations)), bias)
            for weights, bias in layer
        ]
        if i < len(layers) - 1:
            activations = [a.tanh() for a in activations]
    activations[0].backward()
    return activations[0]


def test_torch_scalar_reference_computes_the_same_gradients():
    model = MLP(2, [16, 16, 1])
    model(POINT)[0].backward()
    layers = torch_scalar_mlp(model)
    torch_scalar_forward_backward(layers)
    ours = [p.grad for p in model.parameters()]
    theirs = [
        p.grad.item()
        for layer in layers
        for weights, bias in layer
        for p in weights + [bias]
    ]
    assert all(close(a, b) for a, b in zip(ours, theirs, strict=True))


@pytest.mark.benchmark(group="mlp forward+backward, 2-16-16-1, one point")
def test_bench_mlp_forward_backward_ours(benchmark):
    benchmark.extra_info["label"] = "our scalar engine (Value)"
    benchmark.extra_info["label"] = "ours"
    model = MLP(2, [16, 16, 1])

    def step():
        model.zero_grad()
        model(POINT)[0].backward()

    benchmark(step)


@pytest.mark.benchmark(group="mlp forward+backward, 2-16-16-1, one point")
def test_bench_mlp_forward_backward_torch_scalars(benchmark):
    benchmark.extra_info["label"] = "torch.autograd on 0-d tensors"
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["label"] = "torch (0-d tensors)"
    layers = torch_scalar_mlp(MLP(2, [16, 16, 1]))
    parameters = [
        p for layer in layers for weights, bias in layer for p in weights + [bias]
    ]

    def step():
        for p in parameters:
            p.grad = None
        torch_scalar_forward_backward(layers)

    benchmark(step)
