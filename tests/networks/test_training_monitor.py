"""Verified against direct torch computations in float64 (norms, update ratios and
activation statistics to 1e-12, filter norms to 1e-9), against a one-model-at-a-time
evaluation of the loss landscape (to 1e-10), and against tensorboard's EventAccumulator
reading the event files back (to float32 precision).

The filter normalisation is checked as Li et al. define it: every filter (row of a
Linear weight, output channel of a convolution) of the direction has the norm of the
same filter of the weights, and biases get a zero direction. The landscape's centre must
equal the model's loss, the batched grid must equal a hand-perturbed copy of the model
at every point, and neither evaluation may leave the model changed. The benchmarks
evaluate a 21×21 grid on the digits training set, and on 128 of its digits, batched
(ours) and one model at a time (baseline).
"""

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import (
    EventAccumulator,
)
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from annotated.data import digits
from annotated.networks import training_monitor
from annotated.networks.training_monitor import (
    TrainingMonitor,
    dataflow,
    example,
    filter_normalise,
    loss_landscape,
    loss_landscape_loop,
    main,
    make_mlp,
    random_direction,
)
from tools.literate.figures import short_band

X_TRAIN, Y_TRAIN, _, _ = digits()


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tensors here are tiny, so torch's second thread only adds handoffs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def digits_model(dtype=torch.float64):
    torch.manual_seed(0)
    model = make_mlp().to(dtype)
    inputs = torch.tensor(X_TRAIN[:256], dtype=dtype)
    targets = torch.tensor(Y_TRAIN[:256])
    return model, inputs, targets


def directions_for(model, count=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    params = [param.detach() for param in model.parameters()]
    return [random_direction(params, generator) for _ in range(count)]


# -- filter normalisation -------------------------------------------------------------


def test_each_direction_filter_has_the_norm_of_its_weight_filter():
    torch.manual_seed(1)
    params = [
        torch.randn(16, 64, dtype=torch.float64) * 3,  # Linear weight: 16 filters
        torch.randn(16, dtype=torch.float64),  # its bias
        torch.randn(8, 3, 5, 5, dtype=torch.float64) * 0.01,  # conv: 8 channels
    ]
    gaussian = [torch.randn(p.shape, dtype=torch.float64) for p in params]
    direction = filter_normalise(gaussian, params)
    # to 1e-9, not 1e-12: the 1e-10 that Li et al. add to each filter's norm shifts the
    # ratio by 1e-10 / ||δ_i||, about 1e-11 here
    for part, param in ((direction[0], params[0]), (direction[2], params[2])):
        torch.testing.assert_close(
            part.flatten(1).norm(dim=1),
            param.flatten(1).norm(dim=1),
            rtol=1e-9,
            atol=0,
        )
    # each filter only rescaled, never rotated: parallel to its Gaussian filter
    cosines = F.cosine_similarity(direction[0], gaussian[0], dim=1)
    torch.testing.assert_close(cosines, torch.ones(16, dtype=torch.float64))
    assert torch.equal(direction[1], torch.zeros(16, dtype=torch.float64))


def test_filter_normalise_of_a_zero_weight_filter_gives_a_zero_filter():
    params = [torch.ones(3, 4, dtype=torch.float64)]
    params[0][1] = 0.0
    direction = filter_normalise([torch.ones(3, 4, dtype=torch.float64)], params)
    assert torch.equal(direction[0][1], torch.zeros(4, dtype=torch.float64))
    assert torch.isfinite(direction[0]).all()


def test_random_direction_is_seeded_and_normalised_for_the_model():
    model, _, _ = digits_model()
    first, again = directions_for(model, 1)[0], directions_for(model, 1)[0]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    for part, (name, param) in zip(first, model.named_parameters()):
        if name.endswith("bias"):
            assert not part.any()
        else:
            torch.testing.assert_close(
                part.norm(dim=1), param.detach().norm(dim=1), rtol=1e-9, atol=0
            )


# -- the landscape --------------------------------------------------------------------


def test_landscape_centre_equals_the_models_loss():
    model, inputs, targets = digits_model()
    directions = directions_for(model)
    axis = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64)
    grid = loss_landscape(
        model,
        F.cross_entropy,
        inputs,
        targets,
        directions,
        torch.cartesian_prod(axis, axis),
        models_per_call=7,
    ).view(5, 5)
    expected = F.cross_entropy(model(inputs), targets).item()
    assert grid[2, 2].item() == pytest.approx(expected, rel=1e-12)
    assert grid.min() < grid.max()  # the plane is not flat


def test_batched_landscape_matches_hand_perturbed_models():
    model, inputs, targets = digits_model()
    directions = directions_for(model)
    coordinates = torch.rand(11, 2, dtype=torch.float64) * 2 - 1
    batched = loss_landscape(
        model, F.cross_entropy, inputs, targets, directions, coordinates, 4
    )
    loop = loss_landscape_loop(
        model, F.cross_entropy, inputs, targets, directions, coordinates
    )
    torch.testing.assert_close(batched, loop, rtol=1e-10, atol=0)
    # and both against weights written into a copy of the model by hand
    alpha, beta = coordinates[3].tolist()
    probe = copy.deepcopy(model)
    with torch.no_grad():
        for param, delta, eta in zip(probe.parameters(), *directions):
            param += alpha * delta + beta * eta
        expected = F.cross_entropy(probe(inputs), targets)
    torch.testing.assert_close(batched[3], expected, rtol=1e-12, atol=0)


def test_both_landscapes_evaluate_a_dropout_model_in_eval_mode():
    # A model left in training mode: dropout must be off at every point of both grids,
    # so the centre is the eval-mode loss, the same on every call.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10)
    ).double()
    inputs, targets = torch.tensor(X_TRAIN[:64]), torch.tensor(Y_TRAIN[:64])
    directions = directions_for(model, count=1)
    centre = torch.zeros(3, 1, dtype=torch.float64)
    with torch.no_grad():
        expected = F.cross_entropy(copy.deepcopy(model).eval()(inputs), targets)
    for landscape in (loss_landscape, loss_landscape_loop):
        losses = landscape(model, F.cross_entropy, inputs, targets, directions, centre)
        torch.testing.assert_close(losses, expected.expand(3), rtol=1e-12, atol=0)
    assert model.training


def test_one_dimensional_slice_and_float32():
    model, inputs, targets = digits_model(torch.float32)
    direction = directions_for(model, 1)
    alphas = torch.linspace(-1.0, 1.0, 9)[:, None]  # [9, 1]
    batched = loss_landscape(model, F.cross_entropy, inputs, targets, direction, alphas)
    loop = loss_landscape_loop(
        model, F.cross_entropy, inputs, targets, direction, alphas
    )
    assert batched.shape == (9,)
    torch.testing.assert_close(batched, loop, rtol=1e-5, atol=1e-6)


def test_landscape_leaves_the_model_and_its_mode_unchanged():
    model, inputs, targets = digits_model()
    before = copy.deepcopy(model.state_dict())
    directions = directions_for(model)
    for evaluate in (loss_landscape, loss_landscape_loop):
        evaluate(
            model,
            F.cross_entropy,
            inputs,
            targets,
            directions,
            torch.ones(3, 2, dtype=torch.float64),
        )
        assert model.training
        for name, value in model.state_dict().items():
            assert torch.equal(value, before[name])


def test_landscape_rejects_mismatched_directions_and_coordinates():
    model, inputs, targets = digits_model()
    directions = directions_for(model)
    with pytest.raises(ValueError, match="coordinates must be \\[points, 2\\]"):
        loss_landscape(
            model, F.cross_entropy, inputs, targets, directions, torch.zeros(4, 3)
        )
    with pytest.raises(ValueError, match="direction 1 has 5 tensors"):
        loss_landscape(
            model,
            F.cross_entropy,
            inputs,
            targets,
            [directions[0], directions[1][:5]],
            torch.zeros(4, 2),
        )
    with pytest.raises(ValueError, match="shape \\(64, 63\\)"):
        filter_normalise([torch.zeros(64, 63)] + directions[0][1:], directions[0])
    with pytest.raises(TypeError, match="list of tensors"):
        loss_landscape_loop(
            model, F.cross_entropy, inputs, targets, [torch.zeros(3)], torch.zeros(1, 1)
        )
    with pytest.raises(ValueError, match="targets has 10"):
        loss_landscape(
            model, F.cross_entropy, inputs, targets[:10], directions, torch.zeros(1, 2)
        )


# -- the monitor ----------------------------------------------------------------------


def test_tracked_norms_ratios_and_activations_match_direct_torch():
    model, inputs, targets = digits_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    monitor = TrainingMonitor(model, optimizer)
    for step in range(3):
        loss = F.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        expected_grads = {n: p.grad.norm().item() for n, p in model.named_parameters()}
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        optimizer.step()
        scalars = monitor.log(step, loss.item(), len(inputs))
    monitor.close()
    for name, param in model.named_parameters():
        after = param.detach()
        assert scalars[f"weight_norm/{name}"] == pytest.approx(
            after.norm().item(), rel=1e-12
        )
        assert scalars[f"grad_norm/{name}"] == pytest.approx(
            expected_grads[name], rel=1e-12
        )
        ratio = ((after - before[name]).norm() / before[name].norm()).item()
        assert scalars[f"update_ratio/{name}"] == pytest.approx(ratio, rel=1e-12)
    # activations of the last step's forward, which ran on the weights `before`
    hidden = inputs
    for index in (0, 2):
        weight, bias = before[f"{index}.weight"], before[f"{index}.bias"]
        hidden = torch.relu(hidden @ weight.T + bias)  # [256, 64]
        name = f"relu{index + 1}"
        assert scalars[f"activation_mean/{name}"] == pytest.approx(
            hidden.mean().item(), rel=1e-12
        )
        assert scalars[f"activation_std/{name}"] == pytest.approx(
            hidden.std().item(), rel=1e-12
        )
        dead = (hidden.amax(dim=0) == 0).double().mean().item()
        assert scalars[f"activation_dead/{name}"] == dead
        torch.testing.assert_close(monitor.activations[str(index + 1)], hidden)
    assert scalars["throughput/examples_per_s"] > 0
    steps, losses = monitor.series("loss/train")
    assert steps.tolist() == [0, 1, 2] and losses[-1] == loss.item()


def test_throughput_is_measured_from_the_previous_log_call(monkeypatch):
    # A scripted clock, read once at construction and once per log: 64 examples in the
    # 2 s after construction, then 64 in the 0.5 s after the first log.
    ticks = iter([10.0, 12.0, 12.5])
    monkeypatch.setattr(
        training_monitor, "time", SimpleNamespace(perf_counter=lambda: next(ticks))
    )
    model = digits_model()[0]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = TrainingMonitor(model, optimizer)
    first = monitor.log(0, 1.0, 64)["throughput/examples_per_s"]
    second = monitor.log(1, 1.0, 64)["throughput/examples_per_s"]
    monitor.close()
    assert (first, second) == (32.0, 128.0)


def test_a_step_without_gradients_records_empty_norms_and_ratios():
    """torch allows `optimizer.step()` when no parameter has a gradient (after
    `zero_grad()`); it changes nothing, and the monitor records nothing for it."""
    model = digits_model()[0]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = TrainingMonitor(model, optimizer)
    optimizer.step()
    monitor.close()
    assert monitor.grad_norms == {} and monitor.update_ratios == {}


def test_a_parameter_that_was_all_zeros_has_no_ratio_that_step():
    # A bias initialised to zero: its first update has nothing to be measured against
    # (an inf would reach TensorBoard); from the second step on it has a ratio.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    nn.init.zeros_(model[2].bias)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = TrainingMonitor(model, optimizer)
    inputs = torch.rand(32, 4, dtype=torch.float64)
    ratios = []
    for step in range(2):
        optimizer.zero_grad()
        model(inputs).square().sum().backward()
        before = model[2].bias.detach().clone()
        optimizer.step()
        monitor.log(step, 0.0, 32)
        ratios.append(dict(monitor.update_ratios))
    monitor.close()
    assert "2.bias" not in ratios[0] and len(ratios[0]) == 3
    change = (model[2].bias.detach() - before).norm() / before.norm()
    assert ratios[1]["2.bias"] == pytest.approx(change.item(), rel=1e-12)
    steps, values = monitor.series("update_ratio/2.bias")
    assert steps.tolist() == [1] and np.isfinite(values).all()


def test_dead_fraction_counts_units_silent_on_the_whole_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    with torch.no_grad():
        model[0].bias[:3] = -1e3  # units 0, 1, 2 can never fire on these inputs
        model[0].bias[3:] = 1e3  # the other five always fire
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    monitor = TrainingMonitor(model, optimizer)
    inputs = torch.rand(32, 4, dtype=torch.float64)
    model(inputs).sum().backward()
    optimizer.step()
    scalars = monitor.log(0, 0.0, 32)
    assert scalars["activation_dead/relu1"] == 3 / 8
    assert scalars["update_ratio/0.weight"] == 0.0  # lr 0 moves nothing
    # a frozen unit is not dead: its gradient is zero only because it never fires
    assert monitor.series("grad_norm/0.weight")[1][0] > 0


def test_eval_forwards_and_closed_monitors_record_nothing():
    model, inputs, targets = digits_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = TrainingMonitor(model, optimizer)
    model.eval()
    model(inputs)
    assert monitor.activation_stats == {}
    model.train()
    model(inputs[:5])
    assert monitor.activations["1"].shape == (5, 64)
    monitor.close()
    model(inputs)
    F.cross_entropy(model(inputs), targets).backward()
    optimizer.step()
    assert monitor.activations["1"].shape == (5, 64)
    assert monitor.grad_norms == {} and monitor.update_ratios == {}


def test_event_files_hold_the_logged_scalars_and_histograms(tmp_path):
    model, inputs, targets = digits_model(torch.float32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    writer = SummaryWriter(log_dir=str(tmp_path))
    monitor = TrainingMonitor(model, optimizer, writer, histogram_every=2)
    for step in range(4):
        loss = F.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        monitor.log(step, loss.item(), len(inputs))
    writer.close()
    events = EventAccumulator(
        str(tmp_path), size_guidance={"scalars": 0, "histograms": 0}
    )
    events.Reload()
    assert set(events.Tags()["scalars"]) == set(monitor.history)
    assert len(monitor.history) == 1 + 1 + 3 * 6 + 3 * 2  # loss, speed, 3×6, 3×2
    for tag, logged in monitor.history.items():
        read = events.Scalars(tag)
        assert [event.step for event in read] == [step for step, _ in logged]
        np.testing.assert_allclose(
            [event.value for event in read],
            [value for _, value in logged],
            rtol=1e-6,
        )
    histograms = events.Tags()["histograms"]
    assert "activation/relu1" in histograms and "weight/0.weight" in histograms
    assert [event.step for event in events.Histograms("activation/relu3")] == [0, 2]


def test_monitor_rejects_bad_arguments():
    model, _, _ = digits_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        TrainingMonitor(lambda x: x, optimizer)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        TrainingMonitor(model, "sgd")
    with pytest.raises(TypeError, match="writer must be a SummaryWriter"):
        TrainingMonitor(model, optimizer, writer="runs/")
    with pytest.raises(ValueError, match="histogram_every must be >= 1"):
        TrainingMonitor(model, optimizer, histogram_every=0)
    with pytest.raises(TypeError, match="histogram_every must be an int, got 2.0"):
        TrainingMonitor(model, optimizer, histogram_every=2.0)


# -- example, dataflow and demo -------------------------------------------------------


def test_example_and_dataflow():
    fn, args = example()
    losses = fn(*args)
    assert losses.shape == (25,)
    model = args[0]
    assert sum(p.numel() for p in model.parameters()) == 8970  # the count in dataflow
    nodes, edges = dataflow(losses)
    ids = {node for node, _ in nodes}
    assert all(src in ids and dst in ids for src, dst, _ in edges)


def test_demo_trains_draws_and_logs(tmp_path, capsys):
    # --steps 100 --grid 5 --slice-points 5 --device cpu
    metric, args, low, high = short_band("annotated/networks/training_monitor.py")
    stale = tmp_path / "runs" / "seed0" / "events.out.tfevents.0.earlier-run"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"")  # a rerun replaces, not overlays, an earlier run's events
    metrics = main([*args, "--out", str(tmp_path)])
    assert not stale.exists()
    assert metrics["test_accuracy"] > 0.85
    assert low <= metrics[metric] <= high  # the short run's band over stored seeds
    assert metrics["centre_loss"] == pytest.approx(metrics["train_loss"], rel=1e-5)
    assert 0.0 <= metrics["dead_fraction_relu1"] <= 1.0
    assert (tmp_path / "monitor.png").exists() and (tmp_path / "landscape.png").exists()
    assert list((tmp_path / "runs" / "seed0").glob("events.out.tfevents.*"))
    assert f"tensorboard --logdir {tmp_path / 'runs'}" in capsys.readouterr().out


# -- benchmarks -----------------------------------------------------------------------

GRID = 21
FULL = "loss landscape, 21×21 grid on 1,438 digits"
SMALL = "loss landscape, 21×21 grid on 128 digits"


def landscape_inputs(examples=len(X_TRAIN)):
    torch.manual_seed(0)
    model = make_mlp()
    inputs = torch.tensor(X_TRAIN[:examples], dtype=torch.float32)
    targets = torch.tensor(Y_TRAIN[:examples])
    axis = torch.linspace(-1.0, 1.0, GRID)
    coordinates = torch.cartesian_prod(axis, axis)  # [441, 2]
    return model, F.cross_entropy, inputs, targets, directions_for(model), coordinates


@pytest.mark.benchmark(group=FULL)
def test_bench_landscape_batched(benchmark):
    benchmark.extra_info["label"] = "vmap(functional_call), 32 models a call (ours)"
    losses = benchmark(loss_landscape, *landscape_inputs())
    assert losses.shape == (GRID * GRID,)


@pytest.mark.benchmark(group=FULL)
def test_bench_landscape_loop(benchmark):
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["label"] = "one model at a time (loop)"
    losses = benchmark(loss_landscape_loop, *landscape_inputs())
    assert losses.shape == (GRID * GRID,)


@pytest.mark.benchmark(group=SMALL)
def test_bench_small_landscape_batched(benchmark):
    benchmark.extra_info["label"] = "vmap(functional_call), 32 models a call (ours)"
    losses = benchmark(loss_landscape, *landscape_inputs(128))
    assert losses.shape == (GRID * GRID,)


@pytest.mark.benchmark(group=SMALL)
def test_bench_small_landscape_loop(benchmark):
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["label"] = "one model at a time (loop)"
    losses = benchmark(loss_landscape_loop, *landscape_inputs(128))
    assert losses.shape == (GRID * GRID,)
