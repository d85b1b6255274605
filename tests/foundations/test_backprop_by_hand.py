"""Verified against torch.autograd in float64, forward values and gradients to 1e-9
relative, on random shapes.

Shapes come from hypothesis, and the attention head is tested with and without the
causal mask. Also checked: the cross-entropy gradient equals (softmax - one-hot) / batch
computed independently with scipy, layer norm's input gradient sums to zero over
features, a masked head ignores the future, the finite-difference checker catches wrong
backward passes (a missing term, an ignored upstream gradient, a missing or misshapen
gradient), no function changes its inputs, and the bad-input errors name their argument.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from scipy.special import softmax as scipy_softmax

from annotated.foundations.backprop_by_hand import (
    attention_head_backward,
    attention_head_forward,
    classifier_loss_and_gradients,
    dataflow,
    example,
    flagged_token_task,
    gradient_check,
    init_classifier,
    layer_norm_backward,
    layer_norm_forward,
    linear_backward,
    linear_forward,
    main,
    numerical_gradient,
    relative_error,
    softmax,
    softmax_backward,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from tools.literate.figures import short_band

TOLERANCE = 1e-9
sizes = st.integers(min_value=1, max_value=6)
seeds = st.integers(min_value=0, max_value=2**32 - 1)


def assert_close(ours, reference):
    """Max absolute difference within 1e-9 of the reference's largest entry.

    Plus 1e-15, for references that are all zero.
    """
    reference = (
        reference.detach().numpy()
        if isinstance(reference, torch.Tensor)
        else np.asarray(reference)
    )
    ours = np.asarray(ours)
    assert ours.shape == reference.shape
    error = np.abs(ours - reference).max(initial=0.0)
    scale = np.abs(reference).max(initial=0.0)
    assert error <= TOLERANCE * scale + 1e-15, (
        f"relative error {error / max(scale, 1e-300):.2e}"
    )


def leaf(array):
    return torch.tensor(array, dtype=torch.float64, requires_grad=True)


@settings(max_examples=25)
@given(batch=sizes, d_in=sizes, d_out=sizes, seed=seeds)
def test_linear_matches_torch(batch, d_in, d_out, seed):
    rng = np.random.default_rng(seed)
    x, weight, bias = (
        rng.standard_normal((batch, d_in)),
        rng.standard_normal((d_out, d_in)),
        rng.standard_normal(d_out),
    )
    upstream = rng.standard_normal((batch, d_out))
    output, cache = linear_forward(x, weight, bias)
    grads = linear_backward(upstream, cache)

    torch_inputs = [leaf(x), leaf(weight), leaf(bias)]
    torch_output = F.linear(*torch_inputs)
    torch_output.backward(torch.tensor(upstream))
    assert_close(output, torch_output)
    for ours, reference in zip(grads, torch_inputs):
        assert_close(ours, reference.grad)


@settings(max_examples=25)
@given(
    batch=sizes, classes=sizes, scale=st.sampled_from([1.0, 10.0, 300.0]), seed=seeds
)
def test_softmax_cross_entropy_matches_torch(batch, classes, scale, seed):
    rng = np.random.default_rng(seed)
    logits = scale * rng.standard_normal((batch, classes))
    labels = rng.integers(0, classes, size=batch)
    loss, cache = softmax_cross_entropy_forward(logits, labels)
    grad_logits = softmax_cross_entropy_backward(0.7, cache)

    torch_logits = leaf(logits)
    torch_loss = F.cross_entropy(torch_logits, torch.tensor(labels))
    (0.7 * torch_loss).backward()
    assert_close(loss, torch_loss)
    assert_close(grad_logits, torch_logits.grad)


def test_cross_entropy_gradient_is_p_minus_y_over_batch():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((7, 5))
    labels = rng.integers(0, 5, size=7)
    _, cache = softmax_cross_entropy_forward(logits, labels)
    grad_logits = softmax_cross_entropy_backward(1.0, cache)

    expected = (scipy_softmax(logits, axis=1) - np.eye(5)[labels]) / 7
    assert_close(grad_logits, expected)
    # Each row of p - y sums to 1 - 1 = 0: the logits' common offset gets no gradient.
    assert np.abs(grad_logits.sum(axis=1)).max() < 1e-15
    # The unfused route, through dL/dp = -1/(N p) at the label and the softmax Jacobian,
    # agrees.
    probs = scipy_softmax(logits, axis=1)
    grad_probs = -np.eye(5)[labels] / (7 * probs)
    assert_close(softmax_backward(grad_probs, probs), expected)


def test_cross_entropy_stays_finite_where_the_unfused_route_fails():
    logits = np.array([[1000.0, -1000.0, 0.0]])
    labels = np.array([1])
    loss, cache = softmax_cross_entropy_forward(logits, labels)
    grad_logits = softmax_cross_entropy_backward(1.0, cache)
    assert loss == pytest.approx(2000.0)
    assert_close(grad_logits, np.array([[1.0, -1.0, 0.0]]))
    with np.errstate(divide="ignore", invalid="ignore"):
        unfused = softmax_backward(-np.eye(3)[labels] / cache[0], cache[0])
    assert not np.isfinite(unfused).all()


@settings(max_examples=25)
@given(leading=st.lists(sizes, min_size=0, max_size=2), classes=sizes, seed=seeds)
def test_softmax_and_its_backward_match_torch(leading, classes, seed):
    rng = np.random.default_rng(seed)
    scores = 3.0 * rng.standard_normal((*leading, classes))
    upstream = rng.standard_normal(scores.shape)
    probs = softmax(scores)

    torch_scores = leaf(scores)
    torch_probs = torch.softmax(torch_scores, dim=-1)
    torch_probs.backward(torch.tensor(upstream))
    assert_close(probs, torch_probs)
    assert_close(softmax_backward(upstream, probs), torch_scores.grad)


@settings(max_examples=25)
@given(
    batch=sizes,
    features=st.integers(2, 8),
    eps=st.sampled_from([1e-5, 1e-2]),
    seed=seeds,
)
def test_layer_norm_matches_torch(batch, features, eps, seed):
    rng = np.random.default_rng(seed)
    x = (
        rng.standard_normal((batch, features)) * rng.uniform(0.1, 5.0)
        + rng.standard_normal()
    )
    gamma, beta = rng.standard_normal(features), rng.standard_normal(features)
    upstream = rng.standard_normal((batch, features))
    output, cache = layer_norm_forward(x, gamma, beta, eps)
    grads = layer_norm_backward(upstream, cache)

    torch_x, torch_gamma, torch_beta = leaf(x), leaf(gamma), leaf(beta)
    torch_output = F.layer_norm(torch_x, (features,), torch_gamma, torch_beta, eps)
    torch_output.backward(torch.tensor(upstream))
    assert_close(output, torch_output)
    for ours, reference in zip(grads, (torch_x, torch_gamma, torch_beta)):
        assert_close(ours, reference.grad)
    # Adding a constant to a row changes nothing, so the input gradient has no component
    # along the ones vector (zero up to rounding in the terms that cancel, which are of
    # size |upstream * gamma| / sigma).
    _, sigma, _ = cache
    assert np.abs(grads[0].sum(axis=1)).max() <= 1e-13 * (
        np.abs(upstream * gamma).sum() / sigma.min()
    )


@settings(max_examples=30)
@given(
    batch=st.sampled_from([None, 1, 3]),
    seq=sizes,
    d_model=sizes,
    d_head=st.integers(1, 5),
    causal=st.booleans(),
    seed=seeds,
)
def test_attention_head_matches_torch(batch, seq, d_model, d_head, causal, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((seq, d_model) if batch is None else (batch, seq, d_model))
    weights = [rng.standard_normal((d_model, d_head)) for _ in range(3)]
    output, cache = attention_head_forward(x, *weights, causal=causal)
    upstream = rng.standard_normal(output.shape)
    grads = attention_head_backward(upstream, cache)

    torch_inputs = [leaf(x)] + [leaf(weight) for weight in weights]
    torch_x, torch_w_query, torch_w_key, torch_w_value = torch_inputs
    torch_output = F.scaled_dot_product_attention(
        torch_x @ torch_w_query,
        torch_x @ torch_w_key,
        torch_x @ torch_w_value,
        is_causal=causal,
    )
    torch_output.backward(torch.tensor(upstream))
    assert_close(output, torch_output)
    for ours, reference in zip(grads, torch_inputs):
        assert_close(ours, reference.grad)


def test_causal_head_ignores_the_future():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 4))
    weights = [rng.standard_normal((4, 3)) for _ in range(3)]
    output, cache = attention_head_forward(x, *weights, causal=True)
    attention = cache[-1]
    assert np.all(attention[np.triu_indices(6, k=1)] == 0.0)
    changed = x.copy()
    changed[4:] = rng.standard_normal((2, 4))
    changed_output, _ = attention_head_forward(changed, *weights, causal=True)
    np.testing.assert_array_equal(changed_output[:4], output[:4])
    # Only position 2's output (of 6) flows back; under the mask it read positions 0..2
    # alone, so positions 3..5 get no gradient.
    upstream = np.zeros_like(output)
    upstream[2] = 1.0
    grad_x = attention_head_backward(upstream, cache)[0]
    assert np.all(grad_x[3:] == 0.0)


def test_classifier_starts_with_weights_of_variance_one_over_fan_in():
    # What torch.nn.init.kaiming_normal_(nonlinearity="linear") draws: std 1/√fan-in,
    # where fan-in is a matrix's first axis here (x @ w) and the head width for the
    # output layer (normed @ weight.T). 25,600 draws a matrix: std within 3 %.
    params = init_classifier(vocab=399, d_head=64, rng=np.random.default_rng(0))
    for name in ("w_query", "w_key", "w_value"):
        assert params[name].shape == (400, 64)
        assert params[name].std() * math.sqrt(400) == pytest.approx(1, abs=0.03)
    assert params["weight"].shape == (399, 64)
    assert params["weight"].std() * math.sqrt(64) == pytest.approx(1, abs=0.03)
    assert (params["gamma"] == 1).all() and (params["beta"] == 0).all()
    assert (params["bias"] == 0).all()


def test_classifier_gradients_match_torch():
    rng = np.random.default_rng(2)
    params = init_classifier(vocab=5, d_head=4, rng=rng)
    x, labels, _ = flagged_token_task(9, seq_len=6, vocab=5, rng=rng)
    loss, _, gradients = classifier_loss_and_gradients(params, x, labels)

    t = {name: leaf(value) for name, value in params.items()}
    torch_x = torch.tensor(x)
    attended = F.scaled_dot_product_attention(
        torch_x @ t["w_query"], torch_x @ t["w_key"], torch_x @ t["w_value"]
    )
    normed = F.layer_norm(attended.mean(dim=1), (4,), t["gamma"], t["beta"])
    torch_loss = F.cross_entropy(
        F.linear(normed, t["weight"], t["bias"]), torch.tensor(labels)
    )
    torch_loss.backward()
    assert_close(loss, torch_loss)
    for name, gradient in gradients.items():
        assert_close(gradient, t[name].grad)


def test_numerical_gradient_matches_a_known_derivative():
    x = np.linspace(-2.0, 2.0, 9)
    gradient = numerical_gradient(lambda: np.sum(np.sin(x) * x), x)
    assert np.abs(gradient - (np.cos(x) * x + np.sin(x))).max() < 1e-9
    assert np.array_equal(x, np.linspace(-2.0, 2.0, 9)), "the input must be restored"
    for step in (0.0, math.inf):
        with pytest.raises(ValueError, match="step must be a finite number > 0"):
            numerical_gradient(lambda: np.sum(x), x, step)


def test_relative_error_divides_by_the_larger_of_the_two_largest_entries():
    # max|a - n| / max(max|a|, max|n|), by hand: 2 / max(2, 4) = 0.5.
    assert relative_error(np.array([1.0, 2.0]), np.array([1.0, 4.0])) == 0.5
    assert relative_error(np.array([-3.0, 0.0]), np.array([-2.0, 0.0])) == 1.0 / 3.0
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0


def test_gradient_check_passes_correct_and_flags_wrong_backward():
    rng = np.random.default_rng(3)
    inputs = [
        rng.standard_normal((4, 3)),
        rng.standard_normal((2, 3)),
        rng.standard_normal(2),
    ]
    assert gradient_check(linear_forward, linear_backward, inputs, rng) < 1e-7

    def missing_bias_sum(grad_output, cache):
        grad_x, grad_weight, _ = linear_backward(grad_output, cache)
        return grad_x, grad_weight, grad_output[0]

    assert gradient_check(linear_forward, missing_bias_sum, inputs, rng) > 0.1


def linear_inputs(rng):
    return [
        rng.standard_normal((4, 3)),
        rng.standard_normal((2, 3)),
        rng.standard_normal(2),
    ]


def test_gradient_check_flags_a_backward_pass_that_ignores_its_upstream_gradient():
    # A common bug: the backward pass returns the gradient of sum(Y), as if the upstream
    # gradient were all ones. The checker's random upstream gradient exposes it.
    rng = np.random.default_rng(4)
    inputs = linear_inputs(rng)

    def ignores_upstream(grad_output, cache):
        return linear_backward(np.ones_like(grad_output), cache)

    assert gradient_check(linear_forward, linear_backward, inputs, rng) < 1e-7
    assert gradient_check(linear_forward, ignores_upstream, inputs, rng) > 0.1
    # The same for a scalar loss: a backward pass that assumes the upstream is 1.
    logits, labels = rng.standard_normal((5, 3)), rng.integers(0, 3, size=5)

    def forward(z):
        return softmax_cross_entropy_forward(z, labels)

    def correct(grad_loss, cache):
        return (softmax_cross_entropy_backward(grad_loss, cache),)

    def assumes_one(grad_loss, cache):
        return (softmax_cross_entropy_backward(1.0, cache),)

    assert gradient_check(forward, correct, [logits.copy()], rng) < 1e-7
    assert gradient_check(forward, assumes_one, [logits.copy()], rng) > 0.01


def test_gradient_check_rejects_missing_and_misshapen_gradients():
    rng = np.random.default_rng(5)
    inputs = linear_inputs(rng)

    def drops_bias(grad_output, cache):
        return linear_backward(grad_output, cache)[:2]

    def bias_as_row(grad_output, cache):
        grad_x, grad_weight, grad_bias = linear_backward(grad_output, cache)
        return grad_x, grad_weight, grad_bias[None, :]  # [1, d_out] would broadcast

    with pytest.raises(ValueError, match="returned 2 gradients for 3 inputs"):
        gradient_check(linear_forward, drops_bias, inputs, rng)
    with pytest.raises(ValueError, match=r"analytic has shape \(1, 2\) but numeric"):
        gradient_check(linear_forward, bias_as_row, inputs, rng)


def test_gradient_check_leaves_its_inputs_unchanged_even_when_forward_raises():
    rng = np.random.default_rng(6)
    inputs = linear_inputs(rng)
    kept = [array.copy() for array in inputs]
    gradient_check(linear_forward, linear_backward, inputs, rng)
    for array, original in zip(inputs, kept):
        np.testing.assert_array_equal(array, original)
    x = np.linspace(-1.0, 1.0, 5)
    calls = []

    def fails_on_second_call():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return float(np.sum(x**2))

    with pytest.raises(RuntimeError, match="boom"):
        numerical_gradient(fails_on_second_call, x)
    np.testing.assert_array_equal(x, np.linspace(-1.0, 1.0, 5))
    with pytest.raises(TypeError, match="array must be a numpy array of floats"):
        numerical_gradient(lambda: 0.0, np.arange(3))


def test_forward_and_backward_passes_leave_their_inputs_unchanged():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 5, 4))
    weights = [rng.standard_normal((4, 3)) for _ in range(3)]
    upstream = rng.standard_normal((2, 5, 3))
    arrays = [x, *weights, upstream]
    kept = [array.copy() for array in arrays]
    _, cache = attention_head_forward(x, *weights, causal=True)
    attention_head_backward(upstream, cache)
    rows = x.reshape(10, 4)
    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)
    norm_upstream = rng.standard_normal((10, 4))
    _, norm_cache = layer_norm_forward(rows, gamma, beta)
    layer_norm_backward(norm_upstream, norm_cache)
    logits, labels = rng.standard_normal((10, 3)), rng.integers(0, 3, size=10)
    logits_kept = logits.copy()
    _, loss_cache = softmax_cross_entropy_forward(logits, labels)
    softmax_cross_entropy_backward(1.0, loss_cache)
    for array, original in zip(arrays, kept):
        np.testing.assert_array_equal(array, original)
    np.testing.assert_array_equal(logits, logits_kept)


def test_flagged_token_task_keeps_its_promise_in_every_sequence():
    x, labels, flagged = flagged_token_task(500, 7, 5, np.random.default_rng(8))
    assert x.shape == (500, 7, 6) and labels.shape == flagged.shape == (500,)
    tokens = x[:, :, :5]  # [n, seq, vocab]: one-hot token identity
    np.testing.assert_array_equal(tokens.sum(axis=2), 1.0)
    np.testing.assert_array_equal(x[:, :, 5].sum(axis=1), 1.0)  # exactly one flag each
    np.testing.assert_array_equal(x[:, :, 5].argmax(axis=1), flagged)
    np.testing.assert_array_equal(
        tokens[np.arange(500), flagged].argmax(axis=1), labels
    )
    assert set(np.unique(labels)) == set(range(5))  # every class occurs


ones = np.ones
head_weight = ones((5, 2))  # [d_model, d_head]
linear_cache = linear_forward(ones((2, 3)), ones((4, 3)), ones(4))[1]
attention_cache = attention_head_forward(
    ones((4, 5)), head_weight, head_weight, head_weight
)[1]


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: linear_forward(ones(3), ones((4, 3)), ones(4)),
            r"x must have shape \[batch, d_in\]",
        ),
        (
            lambda: linear_forward(ones((2, 3)), ones((4, 2)), ones(4)),
            r"weight must have shape \[d_out, d_in\]",
        ),
        (
            lambda: linear_forward(ones((2, 3)), ones((4, 3)), ones(3)),
            r"bias must have shape \[d_out\]",
        ),
        (
            lambda: linear_backward(ones((2, 3)), linear_cache),
            r"grad_output must have shape \[batch, d_out\] = \(2, 4\)",
        ),
        (
            lambda: softmax_cross_entropy_forward(ones((2, 3)), np.arange(3)),
            r"labels must have shape \[batch\]",
        ),
        (
            lambda: softmax_cross_entropy_forward(ones((2, 3)), np.array([0, 3])),
            r"labels must lie in \[0, classes\)",
        ),
        (
            lambda: softmax_cross_entropy_forward(ones((0, 3)), np.zeros(0, int)),
            "logits must hold at least one row",
        ),
        (
            lambda: softmax_cross_entropy_backward(
                ones(2), (ones((2, 3)), np.arange(2))
            ),
            "grad_loss must be a scalar",
        ),
        (
            lambda: softmax_backward(ones((2, 3)), ones((3, 2))),
            r"grad_probs must have shape",
        ),
        (
            lambda: layer_norm_forward(ones((2, 3)), ones(4), ones(3)),
            r"gamma must have shape \[features\]",
        ),
        (
            lambda: layer_norm_forward(ones((2, 3)), ones(3), ones(2)),
            r"beta must have shape \[features\]",
        ),
        (
            lambda: layer_norm_forward(ones((2, 3)), ones(3), ones(3), eps=0.0),
            "eps must be a finite number > 0",
        ),
        (
            lambda: attention_head_forward(
                ones(5), head_weight, head_weight, head_weight
            ),
            r"x must have shape \[seq, d_model\]",
        ),
        (
            lambda: attention_head_forward(
                ones((4, 5)), ones((6, 2)), head_weight, head_weight
            ),
            r"w_query must have shape",
        ),
        (
            lambda: attention_head_forward(
                ones((4, 5)), head_weight, ones((5, 3)), head_weight
            ),
            r"w_key must .* = \(5, 2\)",
        ),
        (
            lambda: attention_head_forward(
                ones((4, 5)), head_weight, head_weight, ones((2, 5))
            ),
            r"w_value must have shape",
        ),
        (
            lambda: attention_head_backward(ones((4, 5)), attention_cache),
            r"grad_output must have shape \[\.\.\., seq",
        ),
    ],
)
def test_shape_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_type_errors():
    with pytest.raises(TypeError, match="causal must be True or False"):
        attention_head_forward(
            np.ones((2, 2)), np.ones((2, 1)), np.ones((2, 1)), np.ones((2, 1)), "no"
        )
    with pytest.raises(TypeError, match="scores must be a numpy array"):
        softmax([[1.0, 2.0]])
    with pytest.raises(TypeError, match="probs must be a numpy array"):
        softmax_backward(np.ones(2), [0.5, 0.5])
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        flagged_token_task(0, 4, 3, np.random.default_rng(0))
    with pytest.raises(TypeError, match="labels must be integers"):
        softmax_cross_entropy_forward(np.ones((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(TypeError, match="x must be a numpy array"):
        linear_forward([[1.0, 2.0]], np.ones((1, 2)), np.ones(1))
    with pytest.raises(TypeError, match="x must be a numpy array"):
        attention_head_forward(
            [[1.0]], np.ones((1, 1)), np.ones((1, 1)), np.ones((1, 1))
        )


def test_example_matches_torch_and_dataflow_is_small():
    fn, args = example()
    result = fn(*args)
    x, w_query, w_key, w_value, grad_output, causal = args
    torch_inputs = [leaf(x), leaf(w_query), leaf(w_key), leaf(w_value)]
    torch_x, torch_w_query, torch_w_key, torch_w_value = torch_inputs
    torch_output = F.scaled_dot_product_attention(
        torch_x @ torch_w_query,
        torch_x @ torch_w_key,
        torch_x @ torch_w_value,
        is_causal=causal,
    )
    torch_output.backward(torch.tensor(grad_output))
    assert_close(result["output"], torch_output)
    for name, reference in zip(["x", "w_query", "w_key", "w_value"], torch_inputs):
        assert_close(result[name], reference.grad)

    nodes, edges = dataflow(result)
    node_ids = {node_id for node_id, _ in nodes}
    assert len(nodes) == len(node_ids) <= 20
    assert all(src in node_ids and dst in node_ids for src, dst, _ in edges)
    assert dict(nodes)["x"] == "X [4, 8]"


def test_demo_checks_gradients_and_learns(tmp_path):
    metric, args, low, high = short_band("annotated/foundations/backprop_by_hand.py")
    metrics = main([*args, "--out", str(tmp_path)])
    for name in [
        "linear",
        "softmax_cross_entropy",
        "layer_norm",
        "attention",
        "attention_causal",
    ]:
        assert metrics[name] < 1e-6
    assert metrics["accuracy"] > 0.9  # chance is 1/8
    assert low <= metrics[metric] <= high  # the short run's band over stored seeds
    assert (tmp_path / "gradient_check.png").stat().st_size > 0
    assert (tmp_path / "attention.png").stat().st_size > 0


def test_demo_rejects_bad_flags(tmp_path):
    for flags in (["--vocab", "1"], ["--batch", "0"], ["--steps", "-1"]):
        with pytest.raises(SystemExit):
            main([*flags, "--out", str(tmp_path)])


def layer_norm_inputs():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 512))
    gamma, beta = rng.standard_normal(512), rng.standard_normal(512)
    upstream = rng.standard_normal((256, 512))
    return x, gamma, beta, upstream


@pytest.mark.benchmark(group="layernorm backward, 256 x 512 float64")
def test_bench_layer_norm_backward_ours(benchmark):
    benchmark.extra_info["label"] = "our NumPy layer-norm backward"
    x, gamma, beta, upstream = layer_norm_inputs()
    _, cache = layer_norm_forward(x, gamma, beta)
    benchmark(layer_norm_backward, upstream, cache)


@pytest.mark.benchmark(group="layernorm backward, 256 x 512 float64")
def test_bench_layer_norm_backward_torch(benchmark):
    benchmark.extra_info["label"] = "torch.autograd through F.layer_norm"
    benchmark.extra_info["baseline"] = True
    x, gamma, beta, upstream = layer_norm_inputs()
    inputs = [leaf(x), leaf(gamma), leaf(beta)]
    output = F.layer_norm(inputs[0], (512,), inputs[1], inputs[2])
    upstream = torch.tensor(upstream)
    benchmark(lambda: torch.autograd.grad(output, inputs, upstream, retain_graph=True))
