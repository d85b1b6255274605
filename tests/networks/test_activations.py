"""Verified against torch.nn.functional (values) and torch.autograd (derivatives) in
float64, to 1e-12 relative or absolute, and against mpmath in the tails.

Every activation is compared on a grid over [-20, 20], at the kink 0, at +-1e3 and on
random points; softmax's Jacobian-vector product against torch.func.jvp and
torch.autograd.grad, with masked (-inf) scores; the hand-written backward of the
training network against autograd through the same network built from F.* calls. The
demo's claim about dead units is checked on a two-epoch run.
"""

import math

import mpmath
import pytest
import torch
import torch.nn.functional as F

from annotated.networks.activations import (
    ACTIVATIONS,
    Activate,
    DigitsNet,
    apply_activation,
    dead_fraction,
    elu,
    elu_derivative,
    example,
    gelu,
    gelu_tanh,
    get_activation,
    leaky_relu,
    leaky_relu_derivative,
    main,
    sigmoid,
    softmax,
    softmax_jvp,
)
from tools.literate.figures import short_band

TOLERANCE = dict(rtol=1e-12, atol=1e-12)

# The reference of each activation in the table: torch's own function.
REFERENCES = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,
    "elu": F.elu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "mish": F.mish,
}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors: torch's second thread only adds handoffs on a 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def points() -> torch.Tensor:
    """A grid, the kink and its neighbours, the extremes, and random points."""
    generator = torch.Generator().manual_seed(0)
    special = [-1e3, -709.0, -50.0, -1.0, -1e-8, -0.0, 0.0, 1e-8, 1.0, 50.0, 709.0, 1e3]
    return torch.cat(
        [
            torch.linspace(-20.0, 20.0, 4001, dtype=torch.float64),
            torch.tensor(special, dtype=torch.float64),
            3.0 * torch.randn(1000, generator=generator, dtype=torch.float64),
        ]
    )


def autograd_derivative(function, x: torch.Tensor) -> torch.Tensor:
    """f'(x) elementwise, from torch.autograd on torch's own f."""
    x = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(function(x).sum(), x)
    return gradient


def test_the_table_holds_the_nine_elementwise_activations():
    assert list(ACTIVATIONS) == list(REFERENCES)


@pytest.mark.parametrize("name", list(REFERENCES))
def test_values_match_torch_functional(name):
    x = points()
    ours = get_activation(name)(x)
    torch.testing.assert_close(ours, REFERENCES[name](x), **TOLERANCE)
    assert torch.isfinite(ours).all()


@pytest.mark.parametrize("name", list(REFERENCES))
def test_derivatives_match_torch_autograd(name):
    x = points()
    ours = get_activation(name).derivative(x)
    torch.testing.assert_close(
        ours, autograd_derivative(REFERENCES[name], x), **TOLERANCE
    )
    assert torch.isfinite(ours).all()


def test_the_kink_follows_torchs_convention():
    zero = torch.zeros(1, dtype=torch.float64)
    for name in ["relu", "leaky_relu", "elu"]:
        ours = ACTIVATIONS[name].derivative(zero)
        assert ours.item() == autograd_derivative(REFERENCES[name], zero).item()
    assert ACTIVATIONS["relu"].derivative(zero).item() == 0.0
    assert ACTIVATIONS["leaky_relu"].derivative(zero).item() == 0.01


def test_slope_and_alpha_other_than_the_defaults_match_torch():
    x = points()
    for slope in [0.2, 0.0]:
        torch.testing.assert_close(leaky_relu(x, slope), F.leaky_relu(x, slope))
        torch.testing.assert_close(
            leaky_relu_derivative(x, slope),
            autograd_derivative(lambda t: F.leaky_relu(t, slope), x),
        )
    torch.testing.assert_close(elu(x, 1.5), F.elu(x, 1.5), **TOLERANCE)
    torch.testing.assert_close(
        elu_derivative(x, 1.5),
        autograd_derivative(lambda t: F.elu(t, 1.5), x),
        **TOLERANCE,
    )


# --------------------------------------------------------------------------------------
# The tails, where the lesson claims to be more accurate than the textbook formulas.


@pytest.mark.parametrize("x", [40.0, 100.0, 700.0, -40.0, -700.0])
def test_sigmoid_derivative_keeps_its_digits_in_both_tails(x):
    exact = float(mpmath.exp(-abs(x)) / (1 + mpmath.exp(-abs(x))) ** 2)
    ours = ACTIVATIONS["sigmoid"].derivative(torch.tensor([x], dtype=torch.float64))
    assert ours.item() == pytest.approx(exact, rel=1e-13, abs=0.0)
    # The textbook sigma * (1 - sigma), which autograd uses, has lost it for x > 0.
    if x > 0:
        assert (
            torch.sigmoid(torch.tensor(x)) * (1 - torch.sigmoid(torch.tensor(x)))
        ) == 0


@pytest.mark.parametrize("x", [-710.0, -720.0])
def test_sigmoid_keeps_the_subnormal_left_tail_where_the_naive_formula_overflows(x):
    # e^{-x} overflows here, so the naive 1 / (1 + e^{-x}) (and torch.sigmoid) give 0;
    # t / (1 + t) with t = e^{x} keeps the subnormal answer.
    exact = float(mpmath.exp(x) / (1 + mpmath.exp(x)))
    ours = sigmoid(torch.tensor([x], dtype=torch.float64)).item()
    assert exact > 0.0
    assert ours == pytest.approx(exact, rel=1e-9, abs=0.0)


@pytest.mark.parametrize("x", [-10.0, -20.0, -30.0])
def test_gelu_left_tail_is_accurate_where_erf_cancels(x):
    exact = float(x * mpmath.ncdf(x))
    ours = gelu(torch.tensor([x], dtype=torch.float64)).item()
    assert ours == pytest.approx(exact, rel=1e-12, abs=0.0)
    assert exact != 0.0


@pytest.mark.parametrize("x", [1e-12, 1e-6, -3e-9, 0.3, 5.0])
def test_tanh_near_zero_keeps_relative_accuracy(x):
    ours = ACTIVATIONS["tanh"](torch.tensor([x], dtype=torch.float64)).item()
    assert ours == pytest.approx(math.tanh(x), rel=1e-14, abs=0.0)


def test_gelu_tanh_stays_within_half_a_thousandth_of_the_exact_gelu():
    x = torch.linspace(-10.0, 10.0, 200001, dtype=torch.float64)
    gap = (gelu(x) - gelu_tanh(x)).abs().max().item()
    assert 4e-4 < gap < 5e-4


def test_gelu_dips_to_minus_0_17_near_minus_0_75():
    x = torch.linspace(-3.0, 0.0, 30001, dtype=torch.float64)
    values = gelu(x)
    assert values.min().item() == pytest.approx(-0.17, abs=5e-4)
    assert x[values.argmin()].item() == pytest.approx(-0.75, abs=5e-3)


def test_saturation_thresholds_quoted_in_the_prose():
    def derivative(name, x):
        return ACTIVATIONS[name].derivative(torch.tensor([x], dtype=torch.float64))

    assert derivative("sigmoid", 6.8) > 1e-3 > derivative("sigmoid", 6.95)
    assert derivative("tanh", 4.1) > 1e-3 > derivative("tanh", 4.2)
    assert derivative("elu", -6.9) > 1e-3 > derivative("elu", -6.95)


# --------------------------------------------------------------------------------------
# Softmax.


def logits() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    x = 5.0 * torch.randn(3, 4, 7, generator=generator, dtype=torch.float64)
    x[0, 0] = torch.tensor([1e3, -1e3, 999.0, 0.0, -5.0, 1e3, 2.0])
    x[1, 1, :3] = -math.inf  # masked entries
    return x


@pytest.mark.parametrize("dim", [-1, 0, 1, 2])
def test_softmax_matches_torch(dim):
    x = logits()
    if dim != -1 and dim != 2:
        x = x.nan_to_num(neginf=-1e4)  # a fully masked column would be 0/0
    torch.testing.assert_close(softmax(x, dim), F.softmax(x, dim), **TOLERANCE)


@pytest.mark.parametrize("dim", [-1, 1])
def test_softmax_jvp_matches_torch_func_jvp_and_autograd(dim):
    x = logits().nan_to_num(neginf=-1e4)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).double()
    _, reference_jvp = torch.func.jvp(lambda t: F.softmax(t, dim), (x,), (v,))
    leaf = x.clone().requires_grad_(True)
    (reference_vjp,) = torch.autograd.grad(F.softmax(leaf, dim), leaf, v)
    ours = softmax_jvp(x, v, dim)
    torch.testing.assert_close(ours, reference_jvp, **TOLERANCE)
    torch.testing.assert_close(ours, reference_vjp, **TOLERANCE)


def test_softmax_masks_and_properties():
    x = logits()
    s = softmax(x)
    assert (s[1, 1, :3] == 0).all()
    torch.testing.assert_close(s.sum(-1), torch.ones(3, 4, dtype=torch.float64))
    ones = torch.ones_like(x).nan_to_num()
    finite = x.nan_to_num(neginf=-1e4)
    assert softmax_jvp(finite, ones).abs().max() < 1e-15  # J 1 = 0
    scores = torch.linspace(-30, 30, 61, dtype=torch.float64)
    pairs = torch.stack([scores, torch.zeros_like(scores)], dim=1)  # [61, 2]
    torch.testing.assert_close(softmax(pairs)[:, 0], sigmoid(scores), **TOLERANCE)


# --------------------------------------------------------------------------------------
# The hand-written backward inside a network.


def reference_forward(model: DigitsNet, images: torch.Tensor) -> torch.Tensor:
    """The same network through torch's own activation, differentiated by autograd."""
    activation = REFERENCES[model.activate.activation.name]
    h = images
    for layer in model.hidden:
        h = activation(F.linear(h, layer.weight, layer.bias))
    return F.linear(h, model.output.weight, model.output.bias)


@pytest.mark.parametrize("name", list(REFERENCES))
def test_network_gradients_match_autograd_through_torch_activations(name):
    torch.manual_seed(0)
    model = DigitsNet(name, hidden=16).double()
    images = torch.rand(32, 64, dtype=torch.float64)
    labels = torch.randint(0, 10, (32,))
    ours = torch.autograd.grad(
        F.cross_entropy(model(images), labels), list(model.parameters())
    )
    reference = torch.autograd.grad(
        F.cross_entropy(reference_forward(model, images), labels),
        list(model.parameters()),
    )
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, **TOLERANCE)


@pytest.mark.parametrize("name", ["gelu", "mish", "elu"])
def test_apply_activation_passes_gradcheck(name):
    x = torch.randn(20, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: apply_activation(t, name), (x,))


def test_state_dict_round_trip_gives_the_same_outputs():
    torch.manual_seed(0)
    model = DigitsNet("silu")
    copy = DigitsNet("silu", bias_shift=3.0)
    copy.load_state_dict(model.state_dict())
    images = torch.rand(5, 64)
    assert torch.equal(model(images), copy(images))


def test_activate_layer_prints_its_activations_name():
    assert repr(Activate("gelu_tanh")) == "Activate(gelu_tanh)"


def test_bias_shift_moves_only_the_hidden_biases():
    torch.manual_seed(0)
    plain = DigitsNet("relu")
    torch.manual_seed(0)
    shifted = DigitsNet("relu", bias_shift=-0.5)
    for a, b in zip(plain.hidden, shifted.hidden):
        torch.testing.assert_close(b.bias, a.bias - 0.5)
        assert torch.equal(a.weight, b.weight)
    assert torch.equal(plain.output.bias, shifted.output.bias)


# --------------------------------------------------------------------------------------
# Dead units.


def network_with_biases(name: str, first: list[float], second: list[float]):
    """Zero hidden weights, so each unit's pre-activation is its bias on every input."""
    model = DigitsNet(name, hidden=len(first))
    with torch.no_grad():
        for layer, biases in zip(model.hidden, [first, second]):
            layer.weight.zero_()
            layer.bias.copy_(torch.tensor(biases))
    return model


def test_dead_fraction_counts_exactly_the_flat_units():
    images = torch.rand(50, 64)
    biases = ([-1.0, -1.0, 1.0, 0.0], [1.0, 1.0, 1.0, -2.0])
    assert dead_fraction(network_with_biases("relu", *biases), images) == 4 / 8
    assert dead_fraction(network_with_biases("leaky_relu", *biases), images) == 0.0
    saturated = ([10.0, -10.0, 0.0, 0.0], [0.0, 0.0, 0.0, 8.0])
    assert dead_fraction(network_with_biases("sigmoid", *saturated), images) == 3 / 8
    # One example that switches a unit on keeps it alive.
    model = network_with_biases("relu", [-1.0] * 4, [1.0] * 4)
    with torch.no_grad():
        model.hidden[0].weight[0, 0] = 10.0
    images[0, 0] = 1.0
    assert dead_fraction(model, images) == 3 / 8


def test_demo_dead_units_claim_on_a_short_run(tmp_path):
    # --epochs 2 --activations relu,leaky_relu,elu --device cpu
    metric, args, low, high = short_band("annotated/networks/activations.py")
    metrics = main([*args, "--out", str(tmp_path)])
    assert low <= metrics[metric] <= high  # the short run's band over stored seeds
    for setting in ["ordinary", "large lr", "shifted"]:
        assert metrics[f"dead/{setting}/leaky_relu"] == 0.0
    assert metrics["dead/ordinary/relu"] < 0.1
    assert metrics["dead/large lr/relu"] > 0.25 + metrics["dead/ordinary/relu"]
    assert metrics["dead/shifted/relu"] > 0.5
    assert metrics["dead/shifted/elu"] == 0.0
    # ELU's left tail is flat too: at the large learning rate it goes all the way in.
    assert metrics["dead/large lr/elu"] == 1.0
    # Shifted down, ReLU and LeakyReLU stay at chance while ELU learns as usual.
    assert metrics["accuracy/ordinary/relu"] > 0.4
    assert metrics["accuracy/shifted/relu"] < 0.15
    assert metrics["accuracy/shifted/leaky_relu"] < 0.15
    assert metrics["accuracy/shifted/elu"] > 0.6
    for png in ["activations.png", "learning_curves.png", "dead_units.png"]:
        assert (tmp_path / png).stat().st_size > 10_000


# --------------------------------------------------------------------------------------
# Bad input.


def test_bad_input_is_refused_with_the_argument_named():
    relu = get_activation("relu")
    with pytest.raises(TypeError, match="relu: x must be a torch.Tensor"):
        relu([1.0, 2.0])
    with pytest.raises(TypeError, match="floating-point dtype"):
        relu.derivative(torch.arange(3))
    with pytest.raises(ValueError, match="activation must be one of .*swish"):
        get_activation("swish")
    with pytest.raises(ValueError, match="activation must be one of"):
        DigitsNet("swish")
    with pytest.raises(ValueError, match="hidden must be a positive int"):
        DigitsNet("relu", hidden=0)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="dim must name an axis"):
        softmax(x, dim=2)
    with pytest.raises(TypeError, match="softmax: dim must be an int, got float"):
        softmax(x, dim=1.0)
    with pytest.raises(ValueError, match="dim must name an axis"):
        softmax(torch.tensor(1.0))
    with pytest.raises(ValueError, match="v must have x's shape"):
        softmax_jvp(x, torch.zeros(3))
    with pytest.raises(TypeError, match="v must be a torch.Tensor"):
        softmax_jvp(x, [0.0, 0.0, 0.0])


def test_an_unknown_activation_flag_is_a_usage_line(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--activations", "relu,swish", "--epochs", "1"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "argument --activations: expected comma-separated names from" in err
    assert "got 'swish' in 'relu,swish'" in err


def test_example_runs():
    model, args = example()
    assert model(*args).shape == (8, 10)


# --------------------------------------------------------------------------------------
# Benchmarks: our forward and derivative against torch's fused kernels and autograd.

BENCH_X = torch.randn(1_000_000, generator=torch.Generator().manual_seed(0))


@pytest.mark.benchmark(group="gelu value and derivative, 1M float32")
def test_bench_gelu_ours(benchmark):
    benchmark.extra_info["label"] = "our gelu + gelu_derivative"
    gelu_activation = ACTIVATIONS["gelu"]
    benchmark(lambda: (gelu_activation(BENCH_X), gelu_activation.derivative(BENCH_X)))


@pytest.mark.benchmark(group="gelu value and derivative, 1M float32")
def test_bench_gelu_torch(benchmark):
    benchmark.extra_info["label"] = "F.gelu + autograd backward"
    benchmark.extra_info["baseline"] = True

    def value_and_derivative():
        x = BENCH_X.detach().requires_grad_(True)
        y = F.gelu(x)
        y.backward(torch.ones_like(y))
        return y, x.grad

    benchmark(value_and_derivative)


SOFTMAX_X = torch.randn(1024, 1000, generator=torch.Generator().manual_seed(0))
SOFTMAX_V = torch.randn(1024, 1000, generator=torch.Generator().manual_seed(1))


@pytest.mark.benchmark(group="softmax Jacobian-vector product, [1024, 1000]")
def test_bench_softmax_jvp_ours(benchmark):
    benchmark.extra_info["label"] = "our softmax_jvp"
    benchmark(softmax_jvp, SOFTMAX_X, SOFTMAX_V)


@pytest.mark.benchmark(group="softmax Jacobian-vector product, [1024, 1000]")
def test_bench_softmax_jvp_torch(benchmark):
    benchmark.extra_info["label"] = "F.softmax + autograd.grad"
    benchmark.extra_info["baseline"] = True

    def vector_jacobian_product():
        x = SOFTMAX_X.detach().requires_grad_(True)
        return torch.autograd.grad(F.softmax(x, -1), x, SOFTMAX_V)

    benchmark(vector_jacobian_product)
