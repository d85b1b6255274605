"""Verified against torch.nn.functional.conv2d / avg_pool2d and an nn.Conv2d twin in
float64 (forward and gradients to 1e-10), and against the lesson's plain-loop forward.

The parameter count of the 1998 layout (61,706 with full C3) is asserted, and the demo
trains briefly and must clear a loose accuracy bar.
"""

import pytest
import torch
import torch.nn.functional as F

from annotated.cnn.lenet import (
    LeNet5,
    avg_pool2d,
    conv2d,
    count_parameters,
    example,
    lenet_loops,
    main,
)
from tools.literate.figures import short_band

torch.set_num_threads(1)


@pytest.mark.parametrize(
    "shape, out_channels, kernel, stride, padding",
    [
        ((2, 3, 9, 7), 4, 3, 1, 0),
        ((1, 2, 8, 8), 5, 5, 2, 1),
        ((3, 1, 5, 5), 2, 5, 1, 0),
    ],
)
def test_conv2d_matches_torch_forward_and_gradients(
    shape, out_channels, kernel, stride, padding
):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(
        out_channels, shape[1], kernel, kernel, dtype=torch.float64, requires_grad=True
    )
    b = torch.randn(out_channels, dtype=torch.float64, requires_grad=True)
    ours = conv2d(x, w, b, stride, padding)
    theirs = F.conv2d(x, w, b, stride=stride, padding=padding)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(ours)
    got = torch.autograd.grad(ours, (x, w, b), grad)
    want = torch.autograd.grad(theirs, (x, w, b), grad)
    for g, h in zip(got, want):
        torch.testing.assert_close(g, h, rtol=1e-10, atol=1e-10)


def test_avg_pool_matches_torch_including_odd_sizes():
    x = torch.randn(2, 3, 7, 10, dtype=torch.float64)
    torch.testing.assert_close(avg_pool2d(x), F.avg_pool2d(x, 2), rtol=0, atol=1e-12)


def test_parameter_count_of_the_1998_layout():
    assert count_parameters(LeNet5()) == 61_706
    assert count_parameters(LeNet5(twin=True)) == 61_706


def test_conv_initialisation_has_the_range_of_nn_conv2d():
    # nn.Conv2d's default draws weights and biases uniformly in +-1/sqrt(C_in k^2); with
    # 48,000 weights (and 120 biases) the largest draw lies within a whisker of it.
    torch.manual_seed(3)
    ours, twin = LeNet5().c5, LeNet5(twin=True).c5  # 16 -> 120 channels, 5 x 5
    bound = 1 / (16 * 5**2) ** 0.5
    for layer in (ours, twin):
        assert 0.999 * bound < layer.weight.abs().max().item() <= bound
        assert 0.9 * bound < layer.bias.abs().max().item() <= bound


def test_our_layers_match_the_nn_conv2d_twin_with_copied_weights():
    torch.manual_seed(1)
    ours = LeNet5().double()
    twin = LeNet5(twin=True).double()
    twin.load_state_dict(ours.state_dict())
    x = torch.randn(4, 1, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(ours(x), twin(x), rtol=1e-10, atol=1e-10)
    ours(x).square().sum().backward()
    twin(x).square().sum().backward()
    twin_params = dict(twin.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(
            p.grad, twin_params[name].grad, rtol=1e-9, atol=1e-10
        )


def test_plain_loops_match_the_tensor_model():
    torch.manual_seed(2)
    model = LeNet5().double()
    image = torch.rand(32, 32, dtype=torch.float64)
    weights = {name: t.tolist() for name, t in model.state_dict().items()}
    loops = torch.tensor(lenet_loops(image.tolist(), weights), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(
            loops, model(image[None, None])[0], atol=1e-12, rtol=0
        )


def test_extreme_inputs_saturate_without_nan():
    model = LeNet5()
    logits = model(torch.full((1, 1, 32, 32), 1e6))
    assert torch.isfinite(logits).all()


def test_state_dict_round_trip(tmp_path):
    model = LeNet5()
    torch.save(model.state_dict(), tmp_path / "lenet.pt")
    other = LeNet5()
    other.load_state_dict(torch.load(tmp_path / "lenet.pt"))
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(model(x), other(x), rtol=0, atol=0)


def test_bad_inputs_raise_naming_the_argument():
    w, b = torch.randn(2, 1, 5, 5), torch.zeros(2)
    with pytest.raises(ValueError, match="x must be a 4-D tensor"):
        conv2d(torch.randn(32, 32), w, b)
    with pytest.raises(ValueError, match="weight .* must be"):
        conv2d(torch.randn(1, 3, 32, 32), w, b)
    with pytest.raises(ValueError, match="stride"):
        conv2d(torch.randn(1, 1, 32, 32), w, b, stride=0)
    with pytest.raises(ValueError, match="smaller than the 5×5 kernel"):
        LeNet5()(torch.randn(1, 1, 4, 4))


def test_example_runs():
    fn, args = example()
    assert fn(*args).shape == (2, 10)


def test_demo_learns_and_agrees(tmp_path):
    # The short run's accuracy over the stored seeds is its expected band.
    metric, args, low, high = short_band("annotated/cnn/lenet.py")
    metrics = main([*args, "--out", str(tmp_path)])
    assert metrics["accuracy"] > 0.7
    assert low <= metrics[metric] <= high
    assert metrics["logit_gap"] < 1e-5 and metrics["loop_gap"] < 1e-5
    assert (tmp_path / "filters.png").exists() and (tmp_path / "confusion.png").exists()


def one_image():
    torch.manual_seed(0)
    model = LeNet5()
    twin = LeNet5(twin=True)
    twin.load_state_dict(model.state_dict())
    return model, twin, torch.rand(1, 1, 32, 32)


@pytest.mark.benchmark(group="lenet forward, one 32×32 image")
def test_bench_forward_nn_conv2d(benchmark):
    benchmark.extra_info["label"] = "nn.Conv2d twin"
    benchmark.extra_info["baseline"] = True
    _, twin, x = one_image()
    with torch.no_grad():
        benchmark(twin, x)


@pytest.mark.benchmark(group="lenet forward, one 32×32 image")
def test_bench_forward_im2col(benchmark):
    benchmark.extra_info["label"] = "our im2col layers"
    model, _, x = one_image()
    with torch.no_grad():
        benchmark(model, x)


@pytest.mark.benchmark(group="lenet forward, one 32×32 image")
def test_bench_forward_plain_loops(benchmark):
    benchmark.extra_info["label"] = "plain Python loops"
    model, _, x = one_image()
    weights = {name: t.tolist() for name, t in model.state_dict().items()}
    image = x[0, 0].tolist()
    benchmark.pedantic(lenet_loops, (image, weights), rounds=3, iterations=1)


def training_step(model):
    torch.manual_seed(0)
    x, y = torch.rand(64, 1, 32, 32), torch.randint(0, 10, (64,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def step():
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


@pytest.mark.benchmark(group="lenet training step, batch 64")
def test_bench_step_nn_conv2d(benchmark):
    benchmark.extra_info["label"] = "nn.Conv2d twin"
    benchmark.extra_info["baseline"] = True
    benchmark(training_step(LeNet5(twin=True)))


@pytest.mark.benchmark(group="lenet training step, batch 64")
def test_bench_step_im2col(benchmark):
    benchmark.extra_info["label"] = "our im2col layers"
    benchmark(training_step(LeNet5()))
