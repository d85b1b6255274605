"""Verified against torch.nn.functional in float64 (forward, and the gradients of the
input and of every parameter of the block, to 1e-10) and against torchvision's
published parameter counts (exact) and GFLOPs (within 2 %).

Each block is recomputed from its own weights with `F.conv2d`, `F.batch_norm` and
`F.relu`, in training and in eval mode. FLOPs are counted on the meta device, so the
ImageNet networks cost no arithmetic here.
"""

import pytest
import torch
import torch.nn.functional as F

import annotated.cnn.resnet as resnet_module
from annotated.cnn.resnet import (
    PUBLISHED,
    BasicBlock,
    Bottleneck,
    DigitsNet,
    ResNet,
    count_multiply_adds,
    count_parameters,
    example,
    main,
    resnet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
)
from tools.literate.figures import short_band


pytestmark = pytest.mark.usefixtures("one_thread")


def bn(x, module, training):
    return F.batch_norm(
        x,
        module.running_mean.clone(),
        module.running_var.clone(),
        module.weight,
        module.bias,
        training=training,
        eps=module.eps,
    )


def reference_basic(block, x, training):
    out = F.relu(
        bn(
            F.conv2d(x, block.conv1.weight, None, block.conv1.stride, 1),
            block.bn1,
            training,
        )
    )
    out = bn(F.conv2d(out, block.conv2.weight, None, 1, 1), block.bn2, training)
    shortcut = x
    if block.downsample is not None:
        conv, norm = block.downsample
        shortcut = bn(F.conv2d(x, conv.weight, None, conv.stride), norm, training)
    return F.relu(out + shortcut)


def reference_bottleneck(block, x, training):
    out = F.relu(bn(F.conv2d(x, block.conv1.weight), block.bn1, training))
    out = F.relu(
        bn(
            F.conv2d(out, block.conv2.weight, None, block.conv2.stride, 1),
            block.bn2,
            training,
        )
    )
    out = bn(F.conv2d(out, block.conv3.weight), block.bn3, training)
    if not block.residual:
        return F.relu(out)
    shortcut = x
    if block.downsample is not None:
        conv, norm = block.downsample
        shortcut = bn(F.conv2d(x, conv.weight, None, conv.stride), norm, training)
    return F.relu(out + shortcut)


def randomise_bn(block):
    for module in block.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.5, 0.5)
            torch.nn.init.uniform_(module.running_mean, -0.2, 0.2)
            torch.nn.init.uniform_(module.running_var, 0.5, 2.0)


@pytest.mark.parametrize(
    "cls, reference, in_ch, ch, stride",
    [
        (BasicBlock, reference_basic, 8, 8, 1),
        (BasicBlock, reference_basic, 8, 16, 2),
        (Bottleneck, reference_bottleneck, 16, 4, 1),
        (Bottleneck, reference_bottleneck, 8, 4, 2),
    ],
)
@pytest.mark.parametrize("training", [True, False])
def test_block_matches_functional(cls, reference, in_ch, ch, stride, training):
    torch.manual_seed(0)
    block = cls(in_ch, ch, stride).double()
    randomise_bn(block)
    block.train(training)
    x = torch.randn(3, in_ch, 7, 9, dtype=torch.float64, requires_grad=True)
    ours = block(x)
    theirs = reference(block, x, training)
    assert ours.shape == (
        3,
        ch * cls.expansion,
        (7 - 1) // stride + 1,
        (9 - 1) // stride + 1,
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    weights = list(block.parameters())  # every convolution and batch norm
    g = torch.randn_like(ours)
    ours_grads = torch.autograd.grad(ours, [x, *weights], g)
    theirs_grads = torch.autograd.grad(theirs, [x, *weights], g)
    for a, b in zip(ours_grads, theirs_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_plain_block_has_no_shortcut():
    torch.manual_seed(0)
    block = BasicBlock(4, 4, residual=False).double().eval()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    out = F.relu(
        bn(
            F.conv2d(
                F.relu(
                    bn(F.conv2d(x, block.conv1.weight, padding=1), block.bn1, False)
                ),
                block.conv2.weight,
                padding=1,
            ),
            block.bn2,
            False,
        )
    )
    torch.testing.assert_close(block(x), out, rtol=1e-12, atol=1e-12)
    assert block.downsample is None


def test_plain_bottleneck_has_no_shortcut():
    """Even where channels and size change, a plain block adds no projection."""
    torch.manual_seed(0)
    block = Bottleneck(8, 4, stride=2, residual=False).double().eval()
    randomise_bn(block)
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    assert block.downsample is None
    out = block(x)
    assert out.shape == (2, 16, 3, 3)
    torch.testing.assert_close(out, reference_bottleneck(block, x, False))


def test_zero_init_residual_makes_blocks_identity():
    torch.manual_seed(0)
    model = resnet(18, num_classes=10, zero_init_residual=True).double().eval()
    x = torch.rand(2, 64, 8, 8, dtype=torch.float64)  # non-negative, so relu(x) == x
    torch.testing.assert_close(model.layer1(x), x, rtol=0, atol=0)
    deep = resnet(101, num_classes=10, zero_init_residual=True).eval()
    z = torch.rand(1, 256, 4, 4)
    torch.testing.assert_close(deep.layer1[1:](z), z, rtol=0, atol=0)


def test_zero_init_residual_zeroes_only_the_last_batch_norm_scale_of_each_block():
    # torchvision's rule: bn2 of a BasicBlock, bn3 of a Bottleneck; the others stay 1.
    for block, last in [(BasicBlock, "bn2"), (Bottleneck, "bn3")]:
        model = ResNet(block, [1, 1, 1, 1], num_classes=10, zero_init_residual=True)
        for module in model.modules():
            if isinstance(module, block):
                for name, child in module.named_children():
                    if name.startswith("bn"):
                        expected = 0.0 if name == last else 1.0
                        assert (child.weight == expected).all(), (block, name)


def test_convolutions_are_he_normal_over_the_fan_out():
    # std sqrt(2 / fan_out): the stem has fan_out 64 * 7 * 7 (fan_in only 3 * 7 * 7),
    # layer2.0.conv1 has fan_out 128 * 9, twice its fan_in.
    torch.manual_seed(0)
    model = resnet18(num_classes=10)
    for conv, fan_out in [(model.conv1, 64 * 49), (model.layer2[0].conv1, 128 * 9)]:
        std = conv.weight.std().item()
        assert std == pytest.approx((2 / fan_out) ** 0.5, rel=0.03)


def test_stages_run_at_56_28_14_and_7_pixels_for_a_224_image():
    sizes = []
    with torch.device("meta"):
        model = resnet18()
        for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
            stage.register_forward_hook(lambda m, i, out: sizes.append(out.shape[-2:]))
        model(torch.empty(1, 3, 224, 224))
    assert sizes == [(56, 56), (28, 28), (14, 14), (7, 7)]


@pytest.mark.parametrize(
    "depth, build", [(18, resnet18), (34, resnet34), (50, resnet50), (101, resnet101)]
)
def test_parameter_counts_are_torchvisions(depth, build):
    # Each named builder, and `resnet(depth)` with the same depth.
    with torch.device("meta"):
        counts = {count_parameters(resnet(depth)), count_parameters(build())}
    assert counts == {PUBLISHED[depth][0]}


@pytest.mark.parametrize("depth", [18, 50])
def test_flops_within_two_percent_of_published(depth):
    with torch.device("meta"):
        model = resnet(depth)
        macs = count_multiply_adds(model)
    assert abs(macs / PUBLISHED[depth][1] - 1) < 0.02


def test_state_dict_uses_torchvision_names():
    keys = set(resnet18().state_dict())
    for key in [
        "conv1.weight",
        "bn1.running_var",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.weight",
        "layer4.1.bn2.bias",
        "fc.bias",
    ]:
        assert key in keys
    assert "layer1.0.downsample.0.weight" not in keys


def test_state_dict_round_trip():
    model, (x,) = example()
    copy = resnet18(num_classes=10, in_channels=1).eval()
    copy.load_state_dict(model.state_dict())
    torch.testing.assert_close(copy(x), model(x), rtol=0, atol=0)


def test_odd_resolution_and_batch_of_one():
    model, _ = example()
    out = model(torch.randn(1, 1, 37, 53))
    assert out.shape == (1, 10) and torch.isfinite(out).all()


def test_bad_input():
    model, _ = example()
    with pytest.raises(ValueError, match=r"x must be \[batch, 1, height, width\]"):
        model(torch.randn(1, 32, 32))
    with pytest.raises(ValueError, match=r"x must be \[batch, 1"):
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        model([[1.0]])
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(1, 1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="depth must be one of"):
        resnet(20)
    with pytest.raises(ValueError, match="blocks must be a positive int"):
        DigitsNet(0, True)


@pytest.mark.parametrize("blocks", [1, 3])
@pytest.mark.parametrize("residual", [False, True])
def test_digits_net_is_the_papers_cifar_shape(blocks, residual):
    """6n + 2 weighted layers on the path (shortcut projections are not counted, as
    in the paper), widths 16, 32 and 64, and 2×2 maps before the pooling."""
    model = DigitsNet(blocks, residual)
    on_path = [
        name
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))
        and "downsample" not in name
    ]
    assert model.depth == len(on_path) == 6 * blocks + 2
    widths = [block.conv2.out_channels for block in model.blocks]
    assert widths == [16] * blocks + [32] * blocks + [64] * blocks
    projections = sum(block.downsample is not None for block in model.blocks)
    assert projections == (2 if residual else 0)  # at the two stage entries
    with torch.no_grad():
        features = model.blocks(model.stem(torch.zeros(2, 1, 8, 8)))
    assert features.shape == (2, 64, 2, 2)


def test_demo_shows_degradation(tmp_path):
    # The short run's loss over the stored seeds is its expected band.
    metric, args, low, high = short_band("annotated/cnn/resnet.py")
    metrics = main([*args, "--out", str(tmp_path)])
    assert low <= metrics[metric] <= high  # the short run's band over stored seeds
    assert metrics["plain_26_loss"] > 2 * metrics["plain_8_loss"]
    assert metrics["residual_26_loss"] < metrics["plain_26_loss"] / 2
    assert (tmp_path / "degradation.png").exists()


def test_demo_counts_the_imagenet_nets(tmp_path, monkeypatch, capsys):
    """Without --skip-counts the demo prints and records each count (ResNet-18 here,
    built and counted on the meta device so that it costs no arithmetic; no figure)."""

    def on_meta(function):
        def wrapped(*args):
            with torch.device("meta"):
                return function(*args)

        return wrapped

    monkeypatch.setattr(resnet_module, "PUBLISHED", {18: PUBLISHED[18]})
    monkeypatch.setattr(resnet_module, "resnet", on_meta(resnet))
    monkeypatch.setattr(
        resnet_module, "count_multiply_adds", on_meta(count_multiply_adds)
    )
    monkeypatch.setattr(resnet_module, "plot_degradation", lambda *args: None)
    args = ["--blocks", "1", "--steps", "1", "--device", "cpu"]
    metrics = main([*args, "--out", str(tmp_path)])
    assert metrics["resnet18_gmacs"] == pytest.approx(1.81, rel=0.02)
    assert "resnet18: 11,689,512 parameters (published 11,689,512)" in (
        capsys.readouterr().out
    )


def bench_input():
    torch.manual_seed(0)
    x = torch.randn(8, 64, 28, 28)
    ours = BasicBlock(64, 64).eval()
    return ours, x


@pytest.mark.benchmark(group="basic block forward, 8x64x28x28")
def test_bench_block_ours(benchmark):
    benchmark.extra_info["label"] = "our BasicBlock"
    block, x = bench_input()
    with torch.no_grad():
        benchmark(block, x)


@pytest.mark.benchmark(group="basic block forward, 8x64x28x28")
def test_bench_block_functional(benchmark):
    benchmark.extra_info["label"] = "torch.nn.functional composition"
    benchmark.extra_info["baseline"] = True
    block, x = bench_input()
    with torch.no_grad():
        benchmark(reference_basic, block, x, False)
