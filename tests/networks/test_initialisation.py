"""Verified against torch.nn.init: bit for bit with the same generator, the moments of
a million draws within five standard errors of the formula, calculate_gain exactly,
_calculate_fan_in_and_fan_out on 2- to 5-D weights, and orthogonality to 1e-12 in
float64.

Sampling error: for N independent draws with variance s², the sample mean has standard
error s/√N, and the sample variance s²·√((κ − 1)/N), where κ is the kurtosis (3 for a
normal, 9/5 for a uniform). Every moment is asserted within 5 of those standard errors,
so a correct fill fails about once in two million runs, while a wrong fan (500 against
2000 here) or a missing √3 moves the variance by hundreds of them. The kurtosis itself
(standard error √(24/N) ≈ 0.005 for a normal) tells a normal fill from a uniform one.

The depth experiment is checked for direction: each mismatched scheme must shrink or
grow the signal by more than 100× over 20 layers, each matched one keep it within 10×.
The symmetry claim is checked by training from a constant and from zeros.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.init import _calculate_fan_in_and_fan_out, calculate_gain

from annotated.data import digits
from annotated.networks.initialisation import (
    SCHEMES,
    DeepMLP,
    constant_,
    distinct_units,
    example,
    fans,
    gain,
    initialise,
    kaiming_normal_,
    kaiming_uniform_,
    main,
    normal_,
    orthogonal_,
    signal_through_depth,
    train_digits,
    xavier_normal_,
    xavier_uniform_,
    zeros_,
)
from tools.literate.figures import short_band

SIGMAS = 5.0  # how many standard errors a sample moment may stray


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The work here is small; on a busy 2-core machine torch's threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------
# Fans and gains.


@pytest.mark.parametrize(
    "shape",
    [
        (3, 5),
        (1, 1),
        (7, 2, 3),
        (16, 8, 3, 3),
        (4, 6, 2, 3, 5),
        (2, 3, 1, 1),
        (5, 4, 0),
    ],
)
def test_fans_match_torch_calculate_fan_in_and_fan_out(shape):
    weight = torch.empty(shape)
    if weight.numel() == 0:
        with pytest.raises(ValueError, match="fans: tensor is empty"):
            fans(weight)
        return
    assert fans(weight) == _calculate_fan_in_and_fan_out(weight)


NONLINEARITIES = [
    ("linear", None),
    ("conv1d", None),
    ("conv2d", None),
    ("conv3d", None),
    ("conv_transpose1d", None),
    ("conv_transpose2d", None),
    ("conv_transpose3d", None),
    ("sigmoid", None),
    ("tanh", None),
    ("relu", None),
    ("selu", None),
    ("leaky_relu", None),
    ("leaky_relu", 0),
    ("leaky_relu", 0.2),
    ("leaky_relu", 3),
    ("leaky_relu", math.sqrt(5.0)),
]


@pytest.mark.parametrize("nonlinearity, param", NONLINEARITIES)
def test_gain_equals_torch_calculate_gain_exactly(nonlinearity, param):
    assert gain(nonlinearity, param) == calculate_gain(nonlinearity, param)


# --------------------------------------------------------------------------------------
# Bit for bit: the same generator state gives torch's tensor exactly.

FILLS = [
    (lambda w, g: normal_(w, 0.3, g), lambda w, g: nn.init.normal_(w, 0, 0.3, g)),
    (
        lambda w, g: xavier_uniform_(w, generator=g),
        lambda w, g: nn.init.xavier_uniform_(w, generator=g),
    ),
    (
        lambda w, g: xavier_uniform_(w, gain=5 / 3, generator=g),
        lambda w, g: nn.init.xavier_uniform_(w, gain=5 / 3, generator=g),
    ),
    (
        lambda w, g: xavier_normal_(w, gain=0.5, generator=g),
        lambda w, g: nn.init.xavier_normal_(w, gain=0.5, generator=g),
    ),
    (
        lambda w, g: kaiming_uniform_(w, generator=g),
        lambda w, g: nn.init.kaiming_uniform_(w, generator=g),
    ),
    (
        lambda w, g: kaiming_uniform_(w, a=math.sqrt(5), generator=g),
        lambda w, g: nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=g),
    ),
    (
        lambda w, g: kaiming_normal_(
            w, mode="fan_out", nonlinearity="relu", generator=g
        ),
        lambda w, g: nn.init.kaiming_normal_(
            w, mode="fan_out", nonlinearity="relu", generator=g
        ),
    ),
    (
        lambda w, g: kaiming_normal_(w, a=0.2, generator=g),
        lambda w, g: nn.init.kaiming_normal_(w, a=0.2, generator=g),
    ),
    (
        lambda w, g: orthogonal_(w, generator=g),
        lambda w, g: nn.init.orthogonal_(w, generator=g),
    ),
    (
        lambda w, g: orthogonal_(w, gain=math.sqrt(2), generator=g),
        lambda w, g: nn.init.orthogonal_(w, gain=math.sqrt(2), generator=g),
    ),
]


@pytest.mark.parametrize("fill, reference", FILLS)
@pytest.mark.parametrize("shape", [(40, 30), (30, 40), (8, 3, 5, 5), (1, 9)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fill_equals_torch_nn_init_bit_for_bit(fill, reference, shape, dtype):
    ours = fill(torch.empty(shape, dtype=dtype), generator(7))
    theirs = reference(torch.empty(shape, dtype=dtype), generator(7))
    assert torch.equal(ours, theirs)


def test_constant_and_zeros_equal_torch_and_keep_autograd_out():
    weight = nn.Parameter(torch.randn(4, 6))
    assert torch.equal(
        constant_(weight, 0.25), nn.init.constant_(torch.empty(4, 6), 0.25)
    )
    assert weight.grad_fn is None and weight.requires_grad
    assert torch.equal(zeros_(weight), torch.zeros(4, 6))
    assert constant_(torch.empty(()), 2.0).item() == 2.0  # any shape, even a scalar


def test_saved_and_restored_generator_state_repeats_the_fill():
    g = generator(3)
    state = g.get_state()
    first = kaiming_normal_(torch.empty(50, 20), generator=g).clone()
    second = kaiming_normal_(torch.empty(50, 20), generator=g)
    assert not torch.equal(first, second)
    g.set_state(state)
    assert torch.equal(kaiming_normal_(torch.empty(50, 20), generator=g), first)


# --------------------------------------------------------------------------------------
# Moments over a million draws, for our fills and torch's, against the formula. The
# weight is 500 × 2000, so fan-in and fan-out differ by 4×.

SHAPE = (500, 2000)
FAN_IN, FAN_OUT = 2000, 500
N = SHAPE[0] * SHAPE[1]
UNIFORM, NORMAL = 9 / 5, 3.0

MOMENTS = [
    ("normal σ=0.01", lambda w, g: normal_(w, 0.01, g), 0.01, NORMAL),
    ("normal σ=1", lambda w, g: normal_(w, 1.0, g), 1.0, NORMAL),
    (
        "xavier uniform",
        lambda w, g: xavier_uniform_(w, generator=g),
        math.sqrt(2 / (FAN_IN + FAN_OUT)),
        UNIFORM,
    ),
    (
        "xavier normal, tanh gain",
        lambda w, g: xavier_normal_(w, gain=5 / 3, generator=g),
        5 / 3 * math.sqrt(2 / (FAN_IN + FAN_OUT)),
        NORMAL,
    ),
    (
        "kaiming uniform fan_in",
        lambda w, g: kaiming_uniform_(w, nonlinearity="relu", generator=g),
        math.sqrt(2 / FAN_IN),
        UNIFORM,
    ),
    (
        "kaiming normal fan_out",
        lambda w, g: kaiming_normal_(
            w, mode="fan_out", nonlinearity="relu", generator=g
        ),
        math.sqrt(2 / FAN_OUT),
        NORMAL,
    ),
    (
        "kaiming normal leaky 0.2",
        lambda w, g: kaiming_normal_(w, a=0.2, generator=g),
        math.sqrt(2 / (1 + 0.04) / FAN_IN),
        NORMAL,
    ),
]

TORCH_FILLS = {
    "normal σ=0.01": lambda w, g: nn.init.normal_(w, 0, 0.01, g),
    "normal σ=1": lambda w, g: nn.init.normal_(w, 0, 1.0, g),
    "xavier uniform": lambda w, g: nn.init.xavier_uniform_(w, generator=g),
    "xavier normal, tanh gain": lambda w, g: nn.init.xavier_normal_(
        w, gain=5 / 3, generator=g
    ),
    "kaiming uniform fan_in": lambda w, g: nn.init.kaiming_uniform_(
        w, nonlinearity="relu", generator=g
    ),
    "kaiming normal fan_out": lambda w, g: nn.init.kaiming_normal_(
        w, mode="fan_out", nonlinearity="relu", generator=g
    ),
    "kaiming normal leaky 0.2": lambda w, g: nn.init.kaiming_normal_(
        w, a=0.2, generator=g
    ),
}


def assert_moments(weight: torch.Tensor, std: float, kurtosis: float) -> None:
    values = weight.double().flatten()
    mean, variance = values.mean().item(), values.var().item()
    assert abs(mean) < SIGMAS * std / math.sqrt(N), (mean, std)
    variance_error = std**2 * math.sqrt((kurtosis - 1) / N)
    assert abs(variance - std**2) < SIGMAS * variance_error, (variance, std**2)
    sample_kurtosis = ((values - mean) ** 4).mean().item() / variance**2
    assert abs(sample_kurtosis - kurtosis) < 0.05, sample_kurtosis
    if kurtosis == UNIFORM:
        bound = math.sqrt(3) * std
        assert values.abs().max().item() <= bound * (1 + 1e-6)
        assert values.abs().max().item() > bound * 0.999


@pytest.mark.parametrize("name, fill, std, kurtosis", MOMENTS)
def test_moments_of_a_million_draws_are_within_sampling_error(
    name, fill, std, kurtosis
):
    assert_moments(fill(torch.empty(SHAPE), generator(11)), std, kurtosis)
    assert_moments(TORCH_FILLS[name](torch.empty(SHAPE), generator(12)), std, kurtosis)


def test_conv_weight_uses_the_receptive_field_in_its_fans():
    weight = kaiming_normal_(torch.empty(64, 32, 5, 5), generator=generator(0))
    N_conv = weight.numel()
    std = math.sqrt(2 / (32 * 25))
    assert abs(weight.double().var().item() - std**2) < SIGMAS * std**2 * math.sqrt(
        2 / N_conv
    )


# --------------------------------------------------------------------------------------
# Orthogonal.


@pytest.mark.parametrize("shape", [(64, 64), (100, 30), (30, 100), (16, 4, 3, 3)])
@pytest.mark.parametrize("scale", [1.0, 5 / 3])
def test_orthogonal_is_orthogonal_times_gain(shape, scale):
    weight = orthogonal_(torch.empty(shape, dtype=torch.float64), scale, generator(1))
    matrix = weight.reshape(shape[0], -1) / scale
    rows, cols = matrix.shape
    gram = matrix.T @ matrix if rows >= cols else matrix @ matrix.T
    torch.testing.assert_close(
        gram, torch.eye(min(rows, cols), dtype=torch.float64), rtol=0, atol=1e-12
    )
    singular_values = torch.linalg.svdvals(weight.reshape(shape[0], -1))
    torch.testing.assert_close(
        singular_values, torch.full_like(singular_values, scale), rtol=0, atol=1e-12
    )


def test_orthogonal_is_uniform_over_the_group():
    """A Haar-random orthogonal matrix has mean zero in every entry (Q and −Q are
    equally likely). QR without the sign fix has E[Q₀₀] ≈ −0.5 here."""
    draws = 2000
    g = generator(2)
    total = torch.zeros(3, 3, dtype=torch.float64)
    for _ in range(draws):
        total += orthogonal_(torch.empty(3, 3, dtype=torch.float64), generator=g)
    standard_error = math.sqrt(1 / 3 / draws)  # each entry has variance 1/n
    assert (total / draws).abs().max().item() < SIGMAS * standard_error


# --------------------------------------------------------------------------------------
# Symmetry.


def digits_tensors():
    x_train, y_train, x_test, y_test = digits()
    return tuple(torch.tensor(a) for a in (x_train, y_train, x_test, y_test))


def test_constant_init_keeps_every_hidden_unit_identical_after_training():
    data = digits_tensors()
    model, constant_accuracy = train_digits("constant", data, 16, 60, 0, "cpu")
    first, second = model[0].weight.detach(), model[2].weight.detach()
    assert first.dtype == torch.float64
    assert (first - first[0]).abs().max() < 1e-10 * first.abs().max()  # equal rows
    assert (second - second[:, :1]).abs().max() < 1e-10 * second.abs().max()
    assert first[0].std() > 0.01  # the rows did train, together
    assert distinct_units(first) == 1
    model, kaiming_accuracy = train_digits("kaiming", data, 16, 60, 0, "cpu")
    assert distinct_units(model[0].weight.detach()) == 16
    assert kaiming_accuracy > constant_accuracy + 0.3


def test_zero_init_trains_only_the_output_bias():
    x_train, y_train, _, _ = digits_tensors()
    model = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10)).double()
    for parameter in model.parameters():
        zeros_(parameter)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(20):
        loss = F.cross_entropy(model(x_train[step * 32 : step * 32 + 32]), y_train[:32])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(p.abs().max() == 0 for p in (*model[0].parameters(), model[2].weight))
    assert model[2].bias.abs().max() > 0


def test_distinct_units_counts_rows_up_to_rounding():
    rows = torch.tensor([[1.0, 2.0], [1.0, 2.0 + 1e-13], [1.0, 2.1], [0.0, 0.0]])
    assert distinct_units(rows.double()) == 3
    # The tolerance is relative to the largest row: rescaling the rows changes nothing.
    assert distinct_units(rows.double() * 1e-12) == 3
    assert distinct_units(rows.double() * 1e6) == 3


# --------------------------------------------------------------------------------------
# The experiment: direction of the signal, and the demo.

MATCHED = {"tanh": {"Xavier uniform", "Kaiming normal", "orthogonal"}}
MATCHED["relu"] = {"Kaiming normal", "orthogonal"}


def test_demo_reproduces_glorot_and_he_and_saves_figures(tmp_path):
    # --width 128 --batch 128 --steps 40 --hidden 16 --device cpu
    metric, args, low, high = short_band("annotated/networks/initialisation.py")
    metrics = main([*args, "--out", str(tmp_path)])
    assert low <= metrics[metric] <= high  # the short run's band over stored seeds
    assert (tmp_path / "signal_through_depth.png").stat().st_size > 0
    assert (tmp_path / "symmetry.png").stat().st_size > 0
    for nonlinearity in ("tanh", "relu"):
        for scheme in SCHEMES:
            activation = metrics[f"{nonlinearity} {scheme} activation ratio"]
            gradient = metrics[f"{nonlinearity} {scheme} gradient ratio"]
            kept = [0.1 < ratio < 10 for ratio in (activation, gradient)]
            if scheme in MATCHED[nonlinearity]:
                assert all(kept), (nonlinearity, scheme, activation, gradient)
            else:
                assert not all(  # vanished or exploded by more than 100×
                    0.01 < ratio < 100 for ratio in (activation, gradient)
                ), (nonlinearity, scheme, activation, gradient)
    # The directions of the papers, one by one.
    assert metrics["tanh normal σ=0.01 activation ratio"] < 1e-6
    assert metrics["tanh normal σ=1 gradient ratio"] > 1e3  # saturated: explodes back
    assert metrics["tanh PyTorch default gradient ratio"] < 1e-3  # Glorot's standard
    assert metrics["relu Xavier uniform activation ratio"] < 1e-2  # He: 2^-10
    assert metrics["relu normal σ=1 activation ratio"] > 1e6
    assert metrics["constant distinct units"] == 1
    assert metrics["kaiming distinct units"] == 16


def test_relu_xavier_halves_the_second_moment_per_layer():
    """He et al.'s argument, quantitatively: in a wide ReLU network with Var(w) = 1/n
    and zero biases the second moment E[h²] halves at each layer."""
    g = generator(5)
    model = initialise(DeepMLP(512, 512, 10, "relu"), "Xavier uniform", g)
    second_moments = []
    h = torch.randn(256, 512, generator=g)
    with torch.no_grad():
        for layer in model.layers:
            h = torch.relu(layer(h))
            second_moments.append(h.pow(2).mean().item())
    ratios = torch.tensor(second_moments[1:]) / torch.tensor(second_moments[:-1])
    torch.testing.assert_close(ratios, torch.full_like(ratios, 0.5), rtol=0.1, atol=0)


def test_signal_through_a_thousand_layers_needs_no_recursion():
    g = generator(0)
    model = initialise(DeepMLP(8, 8, 1000, "tanh"), "orthogonal", g)
    activation_stds, gradient_stds = signal_through_depth(model, torch.randn(4, 8), g)
    assert len(activation_stds) == len(gradient_stds) == 1000
    assert all(math.isfinite(s) for s in activation_stds + gradient_stds)


def test_example_runs_and_traces():
    model, (x,) = example()
    y = model(x)
    assert y.shape == (8, 32)
    traced = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(traced(x), y)
    xavier_bound = math.sqrt(6 / (64 + 32))
    assert model.layers[0].weight.abs().max() <= xavier_bound
    assert all(layer.bias.abs().max() == 0 for layer in model.layers)


# --------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize(
    "call, error, match",
    [
        (
            lambda: xavier_uniform_([[1.0]]),
            TypeError,
            r"xavier_uniform_: tensor must be",
        ),
        (
            lambda: kaiming_normal_(torch.zeros(3, 3, dtype=torch.int64)),
            TypeError,
            r"kaiming_normal_: tensor must have a floating-point dtype",
        ),
        (
            lambda: xavier_normal_(torch.empty(5)),
            ValueError,
            r"xavier_normal_: tensor must have at least 2 dimensions .* shape \(5,\)",
        ),
        (lambda: orthogonal_(torch.empty(0, 3)), ValueError, r"orthogonal_: .* empty"),
        (
            lambda: kaiming_uniform_(torch.empty(3, 3), mode="fan_avg"),
            ValueError,
            r"mode must be 'fan_in' or 'fan_out', got 'fan_avg'",
        ),
        (lambda: gain("gelu"), ValueError, r"gain: nonlinearity must be one of"),
        (lambda: gain("leaky_relu", True), TypeError, r"gain: param must be a real"),
        (lambda: normal_(torch.empty(3), -1.0), ValueError, r"std must be >= 0"),
        (lambda: normal_(torch.empty(3), math.nan), ValueError, r"std must be >= 0"),
        (
            lambda: initialise(DeepMLP(2, 2, 2, "tanh"), "he", generator()),
            ValueError,
            r"initialise: scheme must be one of",
        ),
        (lambda: DeepMLP(2, 2, 2, "gelu"), ValueError, r"nonlinearity must be 'tanh'"),
        (lambda: DeepMLP(2, 0, 2, "relu"), ValueError, r"must be >= 1"),
    ],
)
def test_bad_input_raises_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_bad_input_writes_nothing():
    weight = torch.ones(3, 3)
    with pytest.raises(ValueError):
        kaiming_normal_(weight, mode="fan_avg")
    assert torch.equal(weight, torch.ones(3, 3))


# --------------------------------------------------------------------------------------
# Benchmarks: our fills against torch.nn.init's on the same weight.


@pytest.mark.benchmark(group="orthogonal_, 512 × 512")
def test_bench_orthogonal_ours(benchmark):
    benchmark.extra_info["label"] = "our orthogonal_"
    weight, g = torch.empty(512, 512), generator()
    benchmark(orthogonal_, weight, 1.0, g)


@pytest.mark.benchmark(group="orthogonal_, 512 × 512")
def test_bench_orthogonal_torch(benchmark):
    benchmark.extra_info["label"] = "torch.nn.init.orthogonal_"
    benchmark.extra_info["baseline"] = True
    weight, g = torch.empty(512, 512), generator()
    benchmark(nn.init.orthogonal_, weight, 1.0, g)


@pytest.mark.benchmark(group="kaiming_uniform_, 1024 × 1024")
def test_bench_kaiming_uniform_ours(benchmark):
    benchmark.extra_info["label"] = "our kaiming_uniform_"
    weight, g = torch.empty(1024, 1024), generator()
    benchmark(lambda: kaiming_uniform_(weight, generator=g))


@pytest.mark.benchmark(group="kaiming_uniform_, 1024 × 1024")
def test_bench_kaiming_uniform_torch(benchmark):
    benchmark.extra_info["label"] = "torch.nn.init.kaiming_uniform_"
    benchmark.extra_info["baseline"] = True
    weight, g = torch.empty(1024, 1024), generator()
    benchmark(lambda: nn.init.kaiming_uniform_(weight, generator=g))
