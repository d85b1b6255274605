"""Verified against torch.amp.GradScaler step for step (the same skip decision, the same
float32 scale and growth count, and bit-identical parameters after every step of
scripted runs with injected inf and nan gradients), against torch.finfo and
torch.autocast's own casts, and against float32 gradients for the float16 backward.

Most scripted runs use a growth interval of 3 so that growth, back-off and the reset of
the count all happen within a dozen steps, and one an interval of 1, which grows the
scale after every good step; one uses factors that are not powers of two, so that the
float32 rounding of the scale is compared too.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from annotated.systems.mixed_precision import (
    MODES,
    LossScaler,
    accumulate,
    autocast_output_dtypes,
    dataflow,
    example,
    float_formats,
    fp16_gradient_loss,
    load_digits,
    main,
    make_model,
    saved_activation_bytes,
    train,
    train_step,
)
from tools.literate.figures import short_band


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tensors here are small; on a busy 2-core machine a second torch thread costs
    more in handoffs than it saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------
# The formats and autocast.


def test_formats_match_the_numbers_in_the_prose():
    formats = float_formats()
    assert formats["float16"]["max"] == 65504.0
    assert formats["float16"]["smallest normal"] == 2.0**-14  # 6.1e-5
    assert formats["float16"]["smallest subnormal"] == 2.0**-24  # 6e-8
    assert formats["float16"]["eps"] == 2.0**-10  # 9.8e-4
    assert formats["bfloat16"]["eps"] == 2.0**-7  # 7.8e-3
    assert formats["bfloat16"]["max"] == pytest.approx(3.39e38, rel=1e-3)
    assert (
        formats["bfloat16"]["smallest normal"] == formats["float32"]["smallest normal"]
    )
    assert formats["float32"]["eps"] == 2.0**-23
    assert [f["bits"] for f in formats.values()] == [32, 16, 16]
    # The smallest subnormal really is the last number before zero.
    tiny = torch.tensor(formats["float16"]["smallest subnormal"], dtype=torch.float16)
    assert tiny.item() > 0 and (tiny / 2).item() == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_casts_as_the_lesson_says(dtype):
    dtypes = autocast_output_dtypes("cpu", dtype)
    assert dtypes == {
        "linear(float32)": dtype,  # lower_precision_fp: cast down
        "matmul(float32)": dtype,
        "relu(float32)": torch.float32,  # not in the table: left alone
        "relu(low)": dtype,
        "softmax(float32)": torch.float32,
        "softmax(low)": dtype,
        "cross_entropy(low)": torch.float32,  # fp32 policy: cast up
        "mse_loss(low)": torch.float32,
        "add(low, float32)": torch.float32,  # type promotion
    }


def test_autocast_leaves_parameters_and_their_gradients_float32():
    model = make_model(0, "cpu")
    x = torch.rand(8, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    assert logits.dtype == torch.bfloat16
    F.cross_entropy(logits.float(), torch.zeros(8, dtype=torch.long)).backward()
    assert all(p.dtype == p.grad.dtype == torch.float32 for p in model.parameters())


def test_bfloat16_rounds_small_updates_away_and_float32_keeps_them():
    assert accumulate(torch.float32, 1.0, 1e-3, 1000) == pytest.approx(2.0, abs=1e-3)
    assert accumulate(torch.bfloat16, 1.0, 1e-3, 1000) == 1.0
    # Just above half the gap at 1 (2^-8), the update survives rounding.
    assert accumulate(torch.bfloat16, 1.0, 2.0**-8 + 2.0**-12, 1) == 1.0 + 2.0**-7


# --------------------------------------------------------------------------------------
# The loss scaler against torch.amp.GradScaler.


def tiny_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    x = torch.randn(16, 5)
    y = torch.randint(3, (16,))
    return model, x, y


# The script: one entry per step, what to plant in the gradients after backward().
SCRIPT = [None, None, None, "inf", None, "nan", None, None, None, None, None, None]
SCRIPT += ["-inf", "inf", None, None, None, None, None, "nan", None, None, None, None]


def plant(model, fault):
    if fault is not None:
        model[2].weight.grad[1, 2] = {"inf": math.inf, "-inf": -math.inf}.get(
            fault, math.nan
        )


def run_lockstep(
    settings, script, unscale_first=False, optimizer_class=torch.optim.SGD
):
    """Our scaler and GradScaler on two copies of one model; after each step, yield
    both models, both scalers, whether each took the step, and our optimizer."""
    model, x, y = tiny_problem()
    twin = copy.deepcopy(model)
    ours = LossScaler(**settings)
    theirs = torch.amp.GradScaler("cpu", **settings)
    opt_ours = optimizer_class(model.parameters(), lr=0.1)
    opt_theirs = optimizer_class(twin.parameters(), lr=0.1)
    for step, fault in enumerate(script):
        taken = []
        for net, scaler, optimizer in [
            (model, ours, opt_ours),
            (twin, theirs, opt_theirs),
        ]:
            optimizer.zero_grad()
            loss = F.cross_entropy(net(x + 0.01 * step), y)
            scaler.scale(loss).backward()
            plant(net, fault)
            if unscale_first:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            before = [p.detach().clone() for p in net.parameters()]
            scaler.step(optimizer)
            taken.append(
                any(not torch.equal(b, p) for b, p in zip(before, net.parameters()))
            )
            scaler.update()
        yield step, model, twin, ours, theirs, taken, opt_ours


@pytest.mark.parametrize(
    "settings",
    [
        {"init_scale": 2.0**16, "growth_interval": 3},
        {
            "init_scale": 1000.1,
            "growth_factor": 2.7,
            "backoff_factor": 0.37,
            "growth_interval": 3,
        },
        {"init_scale": 8.0, "growth_factor": 4.0, "growth_interval": 1},
    ],
    ids=["defaults, interval 3", "odd factors", "interval 1"],
)
@pytest.mark.parametrize("unscale_first", [False, True], ids=["step", "unscale+clip"])
def test_scaler_makes_gradscalers_decisions_step_for_step(settings, unscale_first):
    scales = []
    for step, model, twin, ours, theirs, taken, _ in run_lockstep(
        settings, SCRIPT, unscale_first
    ):
        assert taken[0] == taken[1] == (SCRIPT[step] is None), step
        assert ours.get_scale() == theirs.get_scale(), step  # exact, in float32
        assert ours.state_dict() == theirs.state_dict(), step
        for ours_p, theirs_p in zip(model.parameters(), twin.parameters()):
            assert torch.equal(ours_p, theirs_p), step
        scales.append(ours.get_scale())
    # The script exercises growth and back-off both.
    assert any(b > a for a, b in zip(scales, scales[1:]))
    assert any(b < a for a, b in zip(scales, scales[1:]))


def test_scale_sequence_for_the_default_factors_is_the_one_the_rules_give():
    settings = {"init_scale": 2.0**16, "growth_interval": 3}
    scales = [s[3].get_scale() for s in run_lockstep(settings, SCRIPT)]
    k = 2.0**16
    expected = [k, k, 2 * k, k, k, k / 2, k / 2, k / 2, k, k, k, 2 * k]
    expected += [k, k / 2, k / 2, k / 2, k, k, k, k / 2, k / 2, k / 2, k, k]
    assert scales == expected


def test_scale_stops_growing_at_the_float32_limit_like_gradscaler():
    settings = {"init_scale": 2.0**127, "growth_interval": 1}
    for _, _, _, ours, theirs, _, _ in run_lockstep(settings, [None] * 3):
        assert ours.get_scale() == theirs.get_scale() == 2.0**127
        assert ours.state_dict()["_growth_tracker"] == 0


def test_skipped_step_leaves_weights_and_adam_state_untouched():
    snapshots = []
    for _, model, _, _, _, taken, optimizer in run_lockstep(
        {"growth_interval": 3}, [None, "inf"], optimizer_class=torch.optim.Adam
    ):
        state = [p.detach().clone() for p in model.parameters()]
        for p in model.parameters():
            state += [optimizer.state[p]["exp_avg"].clone(), optimizer.state[p]["step"]]
        snapshots.append((state, taken))
    (after_first, _), (after_skip, taken) = snapshots
    assert taken == [False, False]
    assert all(torch.equal(a, b) for a, b in zip(after_first, after_skip, strict=True))


def test_state_dict_round_trip_and_gradscaler_state_resume_the_sequence():
    settings = {"init_scale": 2.0**10, "growth_interval": 3}
    runs = run_lockstep(settings, SCRIPT)
    for step, _, _, ours, theirs, _, _ in runs:
        if step == 10:
            break
    resumed = LossScaler()
    resumed.load_state_dict(ours.state_dict())
    from_torch = LossScaler()
    from_torch.load_state_dict(theirs.state_dict())
    assert resumed.state_dict() == from_torch.state_dict() == ours.state_dict()
    # Two more good steps. Step 11 is the third since the growth at step 8 and doubles
    # the scale; step 12 starts the count again and does not grow it.
    for scaler in (resumed, from_torch, ours):
        scales = []
        for _ in range(2):
            scaler.found_inf = False
            scaler.update()
            scales.append(scaler.get_scale())
        assert scales == [2.0**11, 2.0**11]
        assert scaler.state_dict()["_growth_tracker"] == 1
    assert resumed.state_dict() == from_torch.state_dict() == ours.state_dict()


def test_unscale_divides_every_gradient_even_after_an_inf_like_gradscaler():
    # The inf sits in the first parameter: a loop that stopped at it would leave the
    # later gradients scaled, which a clip or a logger after unscale_ would see.
    model, x, y = tiny_problem()
    twin = copy.deepcopy(model)
    grads = []
    for net, scaler in [(model, LossScaler(init_scale=1024.0))] + [
        (twin, torch.amp.GradScaler("cpu", init_scale=1024.0))
    ]:
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        scaler.scale(F.cross_entropy(net(x), y)).backward()
        net[0].weight.grad[0, 0] = math.inf
        scaler.unscale_(optimizer)
        grads.append([p.grad for p in net.parameters()])
    for ours, theirs in zip(*grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert grads[0][-1].abs().max() < 1  # a scaled gradient would be ~1024 times this


def test_unscale_passes_over_a_parameter_without_a_gradient():
    model, x, y = tiny_problem()
    unused = nn.Parameter(torch.zeros(3))  # in the optimizer, not in the graph
    optimizer = torch.optim.SGD([*model.parameters(), unused], lr=0.1)
    scaler = LossScaler(init_scale=4.0)
    scaler.scale(F.cross_entropy(model(x), y)).backward()
    scaled = [p.grad.clone() for p in model.parameters()]
    assert not scaler.unscale_(optimizer) and unused.grad is None
    for param, grad in zip(model.parameters(), scaled, strict=True):
        torch.testing.assert_close(param.grad, grad / 4, rtol=0, atol=0)


def test_scaler_refuses_to_unscale_twice_or_update_too_early():
    model, x, y = tiny_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = LossScaler()
    with pytest.raises(RuntimeError, match="call step"):
        scaler.update()
    scaler.scale(F.cross_entropy(model(x), y)).backward()
    scaler.unscale_(optimizer)
    with pytest.raises(RuntimeError, match="already unscaled"):
        scaler.unscale_(optimizer)


# --------------------------------------------------------------------------------------
# float16 underflow and memory.


@pytest.fixture(scope="module")
def trained():
    data = load_digits("cpu")
    run = train("float32", data, 150, 64, 0.05, 50, 0)
    return run["model"], data[2], data[3]


def test_fp16_backward_loses_small_gradients_and_a_loss_scale_recovers_them(trained):
    model, x, y = trained
    unscaled = fp16_gradient_loss(model, x, y, 1.0)
    scaled = fp16_gradient_loss(model, x, y, 2.0**10)
    shrunk = fp16_gradient_loss(model, x, y, 2.0**-10)  # gradients 1024× smaller
    assert 0.0 < scaled < unscaled < shrunk
    assert scaled < 1e-3
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_fp16_gradient_loss_counts_exactly_the_entries_that_vanish():
    """A linear layer whose second input is 1e-9, below float16's smallest subnormal
    (6e-8): float16 reads it as 0, so that input's three weight gradients vanish and
    nothing else does: 3 of 15 nonzero entries (12 weights, 3 biases)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    assert fp16_gradient_loss(model, x, y, 1.0) == 0.0
    x[:, 1] *= 1e-9
    assert fp16_gradient_loss(model, x, y, 1.0) == 3 / 15


def test_scaled_fp16_gradients_match_float32_after_unscaling(trained):
    model, x, y = trained
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    reference = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scaler = LossScaler(init_scale=2.0**12)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = F.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    assert not scaler.unscale_(optimizer)
    for ref, p in zip(reference, model.parameters()):
        # float16 keeps 11 significant bits: relative error ~1e-3 on the large entries.
        torch.testing.assert_close(p.grad, ref, rtol=2e-2, atol=2e-2 * ref.abs().max())
    model.zero_grad()


def test_bfloat16_autocast_halves_the_activations_saved_for_backward():
    model = make_model(0, "cpu")
    x = torch.rand(256, 64)
    full = saved_activation_bytes(model, x, None)
    half = saved_activation_bytes(model, x, torch.bfloat16)
    # Every linear saves its [256, n_in] input: 256 · (64 + 128 + 128) floats at least.
    assert full >= 4 * 256 * (64 + 128 + 128)
    assert 0.45 < half / full < 0.6


# --------------------------------------------------------------------------------------
# Training, the example, bad input and the demo.


def test_each_mode_computes_its_layers_in_its_own_dtype():
    expected = {
        "float32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bfloat16 weights": torch.bfloat16,
        "float16 + scaler": torch.float16,
    }
    x, y = torch.rand(16, 64), torch.randint(0, 10, (16,))
    for mode in MODES:
        model_dtype = torch.bfloat16 if mode == "bfloat16 weights" else torch.float32
        model = make_model(0, "cpu", model_dtype)
        seen = []
        model[0].register_forward_hook(lambda m, i, out: seen.append(out.dtype))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = LossScaler() if mode == "float16 + scaler" else None
        train_step(model, optimizer, x, y, mode, scaler)
        assert seen == [expected[mode]], mode
        assert all(p.dtype == model_dtype for p in model.parameters()), mode


def test_bfloat16_weights_without_masters_train_worse_on_the_same_batches():
    data = load_digits("cpu")
    runs = {mode: train(mode, data, 200, 64, 0.01, 50, 0) for mode in MODES[:3]}
    final = {mode: sum(run["losses"][-50:]) / 50 for mode, run in runs.items()}
    assert abs(final["bfloat16"] - final["float32"]) < 0.02 * final["float32"]
    assert final["bfloat16 weights"] > 1.1 * final["float32"]


def test_example_takes_a_step_and_dataflow_draws_it():
    fn, args = example()
    model = args[0]
    before = [p.detach().clone() for p in model.parameters()]
    scaler = fn(*args)
    assert scaler.get_scale() == 2.0**16  # one good step: no change yet
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    nodes, edges = dataflow(scaler)
    ids = {node for node, _ in nodes}
    assert len(ids) == len(nodes) == 10
    assert all(src in ids and dst in ids for src, dst, _ in edges)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: LossScaler(init_scale=0.0), ValueError, "init_scale must be a pos"),
        (lambda: LossScaler(init_scale=math.inf), ValueError, "init_scale"),
        (lambda: LossScaler(growth_factor=1.0), ValueError, "growth_factor must be"),
        (lambda: LossScaler(backoff_factor=1.0), ValueError, r"backoff_factor .*\(0,"),
        (lambda: LossScaler(backoff_factor=0), ValueError, "backoff_factor"),
        (lambda: LossScaler(growth_interval=0), ValueError, "growth_interval must be"),
        (lambda: LossScaler(growth_interval=2.5), ValueError, "growth_interval"),
        (lambda: LossScaler(growth_interval=True), ValueError, "growth_interval"),
        (
            lambda: LossScaler().load_state_dict(
                {**LossScaler().state_dict(), "scale": -1.0}
            ),
            ValueError,
            "init_scale",
        ),
        (
            lambda: train_step(*example()[1][:4], "float8"),
            ValueError,
            "mode must be one of",
        ),
        (
            lambda: train_step(*example()[1][:4], "float16 + scaler"),
            ValueError,
            "pass a scaler",
        ),
    ],
)
def test_bad_input_raises_a_clear_error(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_demo_trains_all_four_ways_and_the_scaler_backs_off(tmp_path, capsys):
    # --steps 150 --growth-interval 10 --lr 0.03
    metric, args, low, high = short_band("annotated/systems/mixed_precision.py")
    metrics = main([*args, "--out", str(tmp_path)])
    assert metrics["float32 accuracy"] > 0.85
    assert low <= metrics[metric] <= high  # the short run's band over stored seeds
    for mode in ("bfloat16", "float16 + scaler"):
        assert abs(metrics[f"{mode} accuracy"] - metrics["float32 accuracy"]) <= 0.02
    assert metrics["skipped steps"] >= 1
    assert metrics["fp16 lost at scale 1024"] < metrics["fp16 lost at scale 1"]
    assert 0.45 < metrics["saved bytes ratio"] < 0.6
    printed = capsys.readouterr().out
    assert f"test accuracy {metrics['float32 accuracy']:.4f}" in printed
    assert (tmp_path / "gradient_range.png").stat().st_size > 0
    assert (tmp_path / "training.png").stat().st_size > 0


# --------------------------------------------------------------------------------------
# Benchmarks: one training step of the digits MLP on a batch of 256, float32 against
# bfloat16 autocast (a CPU without bfloat16 units gains nothing in time; the saving is
# the memory measured above); and one scaler step + update, ours against GradScaler.

BATCH_X = torch.rand(256, 64)
BATCH_Y = torch.randint(10, (256,))


def step_in(mode):
    model = make_model(0, "cpu")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    return lambda: train_step(model, optimizer, BATCH_X, BATCH_Y, mode)


@pytest.mark.benchmark(group="digits MLP train step, batch 256")
def test_bench_step_float32(benchmark):
    benchmark.extra_info["label"] = "float32"
    benchmark.extra_info["baseline"] = True
    benchmark(step_in("float32"))


@pytest.mark.benchmark(group="digits MLP train step, batch 256")
def test_bench_step_bfloat16_autocast(benchmark):
    benchmark.extra_info["label"] = "bfloat16 autocast, fp32 master weights"
    benchmark(step_in("bfloat16"))


def scaler_step(scaler):
    model, x, y = tiny_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler.scale(F.cross_entropy(model(x), y)).backward()

    def step():
        scaler.step(optimizer)
        scaler.update()

    return step


@pytest.mark.benchmark(group="loss scaler step + update")
def test_bench_scaler_ours(benchmark):
    benchmark.extra_info["label"] = "our LossScaler"
    benchmark(scaler_step(LossScaler(init_scale=1.0)))


@pytest.mark.benchmark(group="loss scaler step + update")
def test_bench_scaler_gradscaler(benchmark):
    benchmark.extra_info["label"] = "torch.amp.GradScaler"
    benchmark.extra_info["baseline"] = True
    benchmark(scaler_step(torch.amp.GradScaler("cpu", init_scale=1.0)))
