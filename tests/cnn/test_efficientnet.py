"""Verified against torchvision's published figures (B0–B7 parameter counts exactly, B0
0.39 GMACs to 2 %), the reference implementation's B1–B7 coefficient table, and an
independent torch.nn.functional MBConv in float64 (outputs and gradients to 1e-10).

Stochastic depth is checked for its contract: identity at evaluation, one mask value per
example, survivors scaled by 1/(1-p), and the mean preserved over many draws.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from annotated.cnn.efficientnet import (
    ALPHA,
    BETA,
    GAMMA,
    VARIANTS,
    EfficientNet,
    MBConv,
    SqueezeExcitation,
    compound_scaling,
    count_macs,
    count_parameters,
    efficientnet,
    example,
    main,
    round_channels,
    stochastic_depth,
)
from tools.literate.figures import short_band

# torchvision.models.efficientnet_b0 ... b7, "num_params" in their weights' metadata.
TORCHVISION_PARAMS = {
    "b0": 5_288_548,
    "b1": 7_794_184,
    "b2": 9_109_994,
    "b3": 12_233_232,
    "b4": 19_341_616,
    "b5": 30_389_784,
    "b6": 43_040_704,
    "b7": 66_347_960,
}
# tensorflow/tpu efficientnet_builder.efficientnet_params: width, depth, res, dropout.
PAPER_TABLE = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Small tensors: a second torch thread only adds handoffs on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_coefficients_equal_the_papers_table():
    assert VARIANTS == PAPER_TABLE


def test_compound_scaling_formula():
    width, depth, resolution = compound_scaling(2)
    assert width == pytest.approx(1.1**2)
    assert depth == pytest.approx(1.2**2)
    assert resolution == round(224 * 1.15**2)
    # The constraint that makes each step of phi double the FLOPs.
    assert ALPHA * BETA**2 * GAMMA**2 == pytest.approx(1.92, abs=0.01)
    assert compound_scaling(0) == (1.0, 1.0, 224)


@pytest.mark.parametrize("name", list(TORCHVISION_PARAMS))
def test_parameter_count_matches_torchvision(name):
    with torch.device("meta"):
        model, resolution = efficientnet(name)
    assert count_parameters(model) == TORCHVISION_PARAMS[name]
    assert resolution == PAPER_TABLE[name][2]


def test_drop_probability_rises_linearly_from_zero_as_the_prose_states():
    # B0 has 16 blocks; block i (from 0) gets 0.2 * i / 16, the last one 0.1875, as
    # torchvision's efficientnet sets its StochasticDepth probabilities.
    with torch.device("meta"):
        model, _ = efficientnet("b0")
    probabilities = [m.drop_p for m in model.modules() if isinstance(m, MBConv)]
    assert probabilities == [0.2 * i / 16 for i in range(16)]
    assert probabilities[0] == 0.0 and probabilities[-1] == 0.1875


def test_b0_macs():
    with torch.device("meta"):
        model, resolution = efficientnet("b0")
    assert count_macs(model, resolution) / 1e9 == pytest.approx(0.39, rel=0.02)


def test_count_macs_leaves_the_model_alone():
    model = EfficientNet(0.25, 0.25, num_classes=10, in_channels=1, stem_stride=1)
    count_macs(model, 8, in_channels=1)
    assert next(model.parameters()).device.type == "cpu"


@pytest.mark.parametrize(
    "channels, expected", [(32, 32), (35.2, 32), (44.8, 48), (11.6, 16), (3, 8)]
)
def test_round_channels(channels, expected):
    assert round_channels(channels) == expected
    assert round_channels(channels) % 8 == 0


def test_b4_stem_is_rounded_up():
    model = EfficientNet(1.4, 1.8)
    assert model.features[0][0].out_channels == 48  # 32 * 1.4 = 44.8
    assert sum(len(stage) for stage in model.features[1:-1]) == 32


def test_initialisation_is_torchvisions():
    # Convolutions He-normal over the fan-out: the 1 x 1 head conv (160 -> 640) has
    # std sqrt(2 / 640), half of what its fan-in would give. The classifier is uniform
    # in +-1/sqrt(out_features) and starts with a zero bias.
    torch.manual_seed(0)
    model = EfficientNet(0.5, 0.25, num_classes=10)
    head_conv, linear = model.features[-1][0], model.classifier[1]
    assert (head_conv.in_channels, head_conv.out_channels) == (160, 640)
    assert head_conv.weight.std().item() == pytest.approx((2 / 640) ** 0.5, rel=0.02)
    bound = 1 / 10**0.5
    assert 0.99 * bound < linear.weight.abs().max().item() <= bound
    assert (linear.bias == 0).all()


def reference_mbconv(block: MBConv, x: torch.Tensor) -> torch.Tensor:
    """The same block from its weights, written with torch.nn.functional alone."""

    def conv_bn(seq, h, act):
        conv, bn = seq[0], seq[1]
        h = F.conv2d(h, conv.weight, None, conv.stride, conv.padding, 1, conv.groups)
        h = F.batch_norm(
            h, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
        )
        return h * torch.sigmoid(h) if act else h

    parts = list(block.block)
    h = x
    if len(parts) == 4:
        h = conv_bn(parts.pop(0), h, True)
    h = conv_bn(parts[0], h, True)
    se = parts[1]
    s = h.mean((2, 3), keepdim=True)
    z = F.conv2d(s, se.fc1.weight, se.fc1.bias)
    z = z * torch.sigmoid(z)
    h = h * torch.sigmoid(F.conv2d(z, se.fc2.weight, se.fc2.bias))
    h = conv_bn(parts[2], h, False)
    if x.shape == h.shape:
        h = h + x
    return h


@pytest.mark.parametrize(
    "c_in, c_out, expand, kernel, stride, size",
    [
        (16, 16, 6, 3, 1, 7),
        (16, 24, 6, 5, 2, 9),
        (8, 8, 1, 3, 1, 5),
        (12, 20, 4, 3, 2, 1),
    ],
)
def test_mbconv_matches_functional_reference(c_in, c_out, expand, kernel, stride, size):
    torch.manual_seed(0)
    block = MBConv(c_in, c_out, expand, kernel, stride, drop_p=0.3).double()
    for m in block.modules():  # non-trivial batch-norm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    block.eval()
    x = torch.randn(3, c_in, size, size, dtype=torch.float64, requires_grad=True)
    ours = block(x)
    reference = reference_mbconv(block, x)
    assert ours.shape == (3, c_out, math.ceil(size / stride), math.ceil(size / stride))
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(ours)
    grads = torch.autograd.grad(ours, [x, *block.parameters()], g)
    block.zero_grad()
    ref_grads = torch.autograd.grad(reference, [x, *block.parameters()], g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_squeeze_excitation_gates_channels():
    torch.manual_seed(0)
    se = SqueezeExcitation(6, 2).double()
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    gate = se(x) / x
    # One gate per (example, channel), constant over pixels, inside (0, 1).
    torch.testing.assert_close(gate, gate[:, :, :1, :1].expand_as(gate))
    assert ((gate > 0) & (gate < 1)).all()


def test_stochastic_depth_contract():
    torch.manual_seed(0)
    x = torch.randn(4000, 3, 2, 2, dtype=torch.float64) + 1.0
    assert stochastic_depth(x, 0.3, training=False) is x
    assert stochastic_depth(x, 0.0, training=True) is x
    y = stochastic_depth(x, 0.3, training=True)
    dropped = (y == 0).flatten(1).all(1)
    kept = torch.isclose(y, x / 0.7).flatten(1).all(1)
    assert (dropped | kept).all()  # whole examples, never single pixels
    assert dropped.double().mean().item() == pytest.approx(0.3, abs=0.03)
    torch.testing.assert_close(y.mean(0), x.mean(0), rtol=0.08, atol=0.08)


def test_deep_model_trains_and_reloads(tmp_path):
    """Depth 3 (48 blocks) on 1 × 8 × 8: forward, backward, and a state round trip."""
    torch.manual_seed(0)
    model = EfficientNet(0.25, 3.0, num_classes=10, in_channels=1, stem_stride=1)
    x = torch.randn(4, 1, 8, 8)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    torch.save(model.state_dict(), tmp_path / "model.pt")
    clone = EfficientNet(0.25, 3.0, num_classes=10, in_channels=1, stem_stride=1)
    clone.load_state_dict(torch.load(tmp_path / "model.pt"))
    model.eval(), clone.eval()
    torch.testing.assert_close(model(x), clone(x))


def test_example_runs():
    fn, args = example()
    assert fn(*args).shape == (2, 10)


def test_bad_input():
    with pytest.raises(ValueError, match="p must lie"):
        stochastic_depth(torch.ones(2, 3), 1.0, training=True)
    with pytest.raises(ValueError, match="width must lie"):
        EfficientNet(-1.0)
    with pytest.raises(TypeError, match="num_classes must be an int"):
        EfficientNet(num_classes=10.0)
    with pytest.raises(ValueError, match="name must be one of"):
        efficientnet("b8")
    with pytest.raises(ValueError, match="phi must lie"):
        compound_scaling(-1)


def test_demo_learns_digits(tmp_path):
    # The short run's accuracy over the stored seeds is its expected band.
    metric, args, low, high = short_band("annotated/cnn/efficientnet.py")
    metrics = main([*args, "--out", str(tmp_path)])
    assert metrics["b0_params"] == TORCHVISION_PARAMS["b0"]
    assert metrics["accuracy"] > 0.85
    assert low <= metrics[metric] <= high  # the short run's band over stored seeds
    assert (tmp_path / "efficientnet.png").exists()


# Depthwise against dense: the depthwise 3 × 3 does 1/96 of the multiply-adds of the
# dense one on 96 channels; the benchmark shows how much of that it turns into time.
BENCH_X = torch.randn(8, 96, 28, 28)
DEPTHWISE = torch.nn.Conv2d(96, 96, 3, padding=1, groups=96, bias=False)
DENSE = torch.nn.Conv2d(96, 96, 3, padding=1, bias=False)
torch.manual_seed(0)
BENCH_BLOCK = MBConv(16, 16, 6, 3, 1).eval()
BENCH_BLOCK_X = torch.randn(8, 16, 28, 28)


@pytest.mark.benchmark(group="3x3 conv, 96 channels, 8 x 28 x 28")
def test_bench_depthwise(benchmark):
    benchmark.extra_info["label"] = "depthwise 3×3 (groups=96)"
    with torch.no_grad():
        benchmark(DEPTHWISE, BENCH_X)


@pytest.mark.benchmark(group="3x3 conv, 96 channels, 8 x 28 x 28")
def test_bench_dense(benchmark):
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["label"] = "dense nn.Conv2d 3×3"
    with torch.no_grad():
        benchmark(DENSE, BENCH_X)


@pytest.mark.benchmark(group="MBConv 16→96→16, 8 x 28 x 28")
def test_bench_mbconv_module(benchmark):
    benchmark.extra_info["label"] = "MBConv module"
    with torch.no_grad():
        benchmark(BENCH_BLOCK, BENCH_BLOCK_X)


@pytest.mark.benchmark(group="MBConv 16→96→16, 8 x 28 x 28")
def test_bench_mbconv_functional(benchmark):
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["label"] = "torch.nn.functional calls"
    with torch.no_grad():
        benchmark(reference_mbconv, BENCH_BLOCK, BENCH_BLOCK_X)
