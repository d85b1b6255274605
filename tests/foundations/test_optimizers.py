"""torch.optim's SGD, RMSprop, Adam and AdamW, step for step (100 float64 steps of a
digits MLP, and 50 of a complex least-squares problem, 1e-10 relative at every step),
and torch.optim.lr_scheduler's StepLR and LinearLR + CosineAnnealingLR (1e-12 relative).
The demo's Rosenbrock valley is scipy's `rosen`, and SGD down it follows scipy's
gradient `rosen_der` step for step.

Each lockstep test trains two copies of the same network on the same mini-batches, one
with our optimizer and one with torch's, and compares every parameter after every step
and every state buffer at the end. A companion test shows the comparison is sharp: a
one-percent change in one hyperparameter, or weight decay moved from the gradient to the
weights, fails it. Every optimizer must leave `param.grad` as it found it, and every
argument of every optimizer and schedule is checked.
"""

import copy
import math
import re
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn
from torch.optim import lr_scheduler

from annotated.data import digits
from scipy.optimize import rosen, rosen_der

from annotated.foundations.optimizers import (
    ROSENBROCK_OPTIMIZERS,
    ROSENBROCK_START,
    SGD,
    Adam,
    AdamW,
    RMSProp,
    check_number,
    dataflow,
    descend_rosenbrock,
    example,
    main,
    rosenbrock,
    step_decay,
    warmup_cosine,
)
from tools.literate.figures import short_band

STEPS = 100
BATCH = 32
X_TRAIN, Y_TRAIN, _, _ = digits()
IMAGES = torch.tensor(X_TRAIN)  # [n_train, 64] float64
LABELS = torch.tensor(Y_TRAIN)  # [n_train]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tensors here are tiny, so torch's second thread only adds a handoff to every
    operation; on a busy 2-core machine those handoffs cost far more than the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10)).double()


def train_in_lockstep(
    make_ours, make_reference, steps: int = STEPS, make_schedulers=None
):
    """Train two copies of one model side by side and compare their parameters after
    every step.

    `make_ours(model)` and `make_reference(model)` build the optimizers;
    `make_schedulers(ours, reference)` optionally returns a scheduler for each. Returns
    both optimizers and both models for further checks.
    """
    our_model = make_model()
    reference_model = copy.deepcopy(our_model)
    ours, reference = make_ours(our_model), make_reference(reference_model)
    schedulers = make_schedulers(ours, reference) if make_schedulers else ()
    batches = torch.Generator().manual_seed(1)
    for step in range(steps):
        index = torch.randint(len(IMAGES), (BATCH,), generator=batches)
        for model, optimizer in ((our_model, ours), (reference_model, reference)):
            optimizer.zero_grad()
            F.cross_entropy(model(IMAGES[index]), LABELS[index]).backward()
            optimizer.step()
        for scheduler in schedulers:
            scheduler.step()
        for mine, theirs in zip(our_model.parameters(), reference_model.parameters()):
            torch.testing.assert_close(
                mine,
                theirs,
                rtol=1e-10,
                atol=1e-12,
                msg=lambda message, step=step: f"after step {step + 1}: {message}",
            )
    return ours, reference, our_model, reference_model


def assert_same_state(ours, reference, our_model, reference_model):
    """Every buffer our optimizer keeps equals torch's buffer of the same name.

    torch may keep more: RMSprop counts steps it never uses. Ours keeps only what its
    equations need.
    """
    for mine, theirs in zip(our_model.parameters(), reference_model.parameters()):
        our_state, reference_state = ours.state[mine], reference.state[theirs]
        assert set(our_state) <= set(reference_state)
        for name, value in our_state.items():
            if name == "step":
                assert value == int(reference_state["step"])
            else:
                torch.testing.assert_close(
                    value, reference_state[name], rtol=1e-10, atol=1e-12
                )


def assert_moved(model):
    """Guard against a vacuous pass: the weights must have left their initial values."""
    initial = make_model()
    moved = sum(
        (p - q).abs().max().item()
        for p, q in zip(model.parameters(), initial.parameters())
    )
    assert moved > 1e-2


# --------------------------------------------------------------------------------------
# The update rules, step for step.


@pytest.mark.parametrize(
    "hyper",
    [
        {},
        {"momentum": 0.9},
        {"momentum": 0.9, "nesterov": True},
        {"momentum": 0.5, "weight_decay": 1e-2},
        {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
        {"weight_decay": 1e-2},
    ],
    ids=str,
)
def test_sgd_matches_torch_sgd(hyper):
    run = train_in_lockstep(
        lambda model: SGD(model.parameters(), lr=0.1, **hyper),
        lambda model: torch.optim.SGD(model.parameters(), lr=0.1, **hyper),
    )
    assert_same_state(*run)
    assert_moved(run[2])


@pytest.mark.parametrize(
    "hyper",
    [
        {},
        {"centered": True},
        {"momentum": 0.9},
        {"centered": True, "momentum": 0.9},
        {
            "centered": True,
            "momentum": 0.5,
            "weight_decay": 1e-2,
            "alpha": 0.9,
            "eps": 1e-6,
        },
        {"weight_decay": 1e-2, "alpha": 0.9},
    ],
    ids=str,
)
def test_rmsprop_matches_torch_rmsprop(hyper):
    run = train_in_lockstep(
        lambda model: RMSProp(model.parameters(), lr=1e-3, **hyper),
        lambda model: torch.optim.RMSprop(model.parameters(), lr=1e-3, **hyper),
    )
    assert_same_state(*run)
    assert_moved(run[2])


def test_centered_rmsprop_rounds_its_mean_as_torch_does():
    # A gradient that barely varies makes v - ḡ² cancel to about 1e-12 of v, so the last
    # bit of ḡ decides the step. The lesson computes ḡ with `lerp_`, as torch does; the
    # textbook `mul_(alpha).add_(g, alpha=1 - alpha)` rounds differently and ends about
    # 1e-3 away. Elementwise only, no matrix product: the result is bitwise
    # reproducible.
    generator = torch.Generator().manual_seed(0)
    ours = nn.Parameter(torch.zeros(1000, dtype=torch.float64))
    theirs = nn.Parameter(torch.zeros(1000, dtype=torch.float64))
    hyper = {"lr": 1e-3, "alpha": 0.7, "eps": 1e-12, "centered": True}
    our_optimizer = RMSProp([ours], **hyper)
    reference = torch.optim.RMSprop([theirs], **hyper)
    for _ in range(100):
        grad = 1.0 + 1e-6 * torch.randn(1000, dtype=torch.float64, generator=generator)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        our_optimizer.step()
        reference.step()
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=0)


@pytest.mark.parametrize(
    "hyper",
    [
        {},
        {"weight_decay": 1e-2},
        {"amsgrad": True},
        {"amsgrad": True, "weight_decay": 1e-2},
        {"betas": (0.8, 0.95), "eps": 1e-6},
    ],
    ids=str,
)
def test_adam_matches_torch_adam(hyper):
    run = train_in_lockstep(
        lambda model: Adam(model.parameters(), lr=1e-2, **hyper),
        lambda model: torch.optim.Adam(model.parameters(), lr=1e-2, **hyper),
    )
    assert_same_state(*run)
    assert_moved(run[2])


@pytest.mark.parametrize(
    "hyper",
    [
        {"weight_decay": 0.0},
        {"weight_decay": 1e-2},
        {"weight_decay": 0.1},
        {"weight_decay": 0.1, "amsgrad": True},
    ],
    ids=str,
)
def test_adamw_matches_torch_adamw(hyper):
    run = train_in_lockstep(
        lambda model: AdamW(model.parameters(), lr=1e-2, **hyper),
        lambda model: torch.optim.AdamW(model.parameters(), lr=1e-2, **hyper),
    )
    assert_same_state(*run)
    assert_moved(run[2])


def test_adam_matches_torch_foreach_kernel():
    # On CPU torch.optim defaults to its per-tensor loop; its multi-tensor (foreach)
    # path, the CUDA default, orders some operations differently and must agree as well.
    train_in_lockstep(
        lambda model: Adam(model.parameters(), lr=1e-2, amsgrad=True),
        lambda model: torch.optim.Adam(
            model.parameters(), lr=1e-2, amsgrad=True, foreach=True
        ),
    )


def test_parameter_groups_keep_their_own_hyperparameters():
    def groups(model):
        return [
            {"params": model[0].parameters(), "lr": 3e-3, "weight_decay": 0.1},
            {"params": model[2].parameters()},
        ]

    train_in_lockstep(
        lambda model: AdamW(groups(model), lr=1e-2),
        lambda model: torch.optim.AdamW(groups(model), lr=1e-2),
        steps=50,
    )


def test_adamw_with_warmup_cosine_matches_torch_sequential_schedule():
    def ours_and_torch_schedules(ours, reference):
        schedule = partial(
            warmup_cosine,
            warmup_steps=20,
            total_steps=STEPS,
            start_factor=0.1,
            min_factor=0.01,
        )
        torch_schedule = lr_scheduler.SequentialLR(
            reference,
            [
                lr_scheduler.LinearLR(reference, start_factor=0.1, total_iters=20),
                lr_scheduler.CosineAnnealingLR(
                    reference, T_max=STEPS - 20, eta_min=0.01 * 1e-2
                ),
            ],
            milestones=[20],
        )
        return lr_scheduler.LambdaLR(ours, schedule), torch_schedule

    train_in_lockstep(
        lambda model: AdamW(model.parameters(), lr=1e-2, weight_decay=0.05),
        lambda model: torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05),
        make_schedulers=ours_and_torch_schedules,
    )


@pytest.mark.parametrize(
    "make_ours, make_reference",
    [
        (
            lambda model: SGD(model.parameters(), lr=0.1, momentum=0.9),
            lambda model: torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.891),
        ),
        (
            lambda model: RMSProp(model.parameters(), lr=1e-3, alpha=0.99),
            lambda model: torch.optim.RMSprop(
                model.parameters(), lr=1e-3, alpha=0.9801
            ),
        ),
        (
            lambda model: AdamW(model.parameters(), lr=1e-2, weight_decay=0.1),
            lambda model: torch.optim.Adam(
                model.parameters(), lr=1e-2, weight_decay=0.1
            ),
        ),
    ],
    ids=["momentum 1% off", "alpha 1% off", "coupled vs decoupled decay"],
)
def test_lockstep_comparison_detects_a_different_rule(make_ours, make_reference):
    with pytest.raises(AssertionError, match="after step"):
        train_in_lockstep(make_ours, make_reference, steps=50)


def test_parameters_without_gradient_are_left_alone():
    used, unused = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    for optimizer in (
        SGD([used, unused], lr=0.1, momentum=0.9),
        RMSProp([used, unused]),
        Adam([used, unused]),
        AdamW([used, unused]),
    ):
        used.grad = torch.ones(3)
        optimizer.step()
        assert torch.equal(unused, torch.ones(3)) and unused not in optimizer.state
        assert not torch.equal(used, torch.ones(3))


def test_adam_first_step_moves_every_coordinate_by_lr():
    # With bias correction, m̂_1 / √v̂_1 = g / |g|: the first step is ±lr per coordinate
    # whatever the gradient's scale (up to ε). This is the property the bias correction
    # exists for.
    param = nn.Parameter(torch.zeros(4, dtype=torch.float64))
    param.grad = torch.tensor([1e-3, -2.0, 50.0, -1e4], dtype=torch.float64)
    Adam([param], lr=0.01, eps=1e-12).step()
    torch.testing.assert_close(
        param.detach(), -0.01 * torch.sign(param.grad), rtol=1e-8, atol=0
    )


# --------------------------------------------------------------------------------------
# Complex parameters: torch.optim updates the real and imaginary parts as separate
# coordinates (a `view_as_real` of each tensor); so must we.

COMPLEX_GENERATOR = torch.Generator().manual_seed(2)
COMPLEX_INPUTS = torch.randn(
    20, 6, dtype=torch.complex128, generator=COMPLEX_GENERATOR
)  # [20, 6]
COMPLEX_TARGETS = torch.randn(
    20, 3, dtype=torch.complex128, generator=COMPLEX_GENERATOR
)  # [20, 3]


def complex_lockstep(make_ours, make_reference, steps: int = 50):
    """Least squares |X W + b - Y|^2 with complex W [6, 3] and b [3], two copies side by
    side; every parameter must agree after every step and every buffer at the end."""
    start = [
        torch.randn(
            6, 3, dtype=torch.complex128, generator=torch.Generator().manual_seed(3)
        ),
        torch.zeros(3, dtype=torch.complex128),
    ]
    ours = [nn.Parameter(p.clone()) for p in start]
    theirs = [nn.Parameter(p.clone()) for p in start]
    our_optimizer, reference = make_ours(ours), make_reference(theirs)
    for step in range(steps):
        for (weight, bias), optimizer in ((ours, our_optimizer), (theirs, reference)):
            optimizer.zero_grad()
            residual = COMPLEX_INPUTS @ weight + bias - COMPLEX_TARGETS  # [20, 3]
            (residual.abs() ** 2).mean().backward()
            optimizer.step()
        for mine, expected in zip(ours, theirs):
            torch.testing.assert_close(
                mine,
                expected,
                rtol=1e-10,
                atol=1e-12,
                msg=lambda message, step=step: f"after step {step + 1}: {message}",
            )
    for mine, expected, initial in zip(ours, theirs, start):
        assert (mine - initial).abs().max() > 1e-2  # it really moved
        for name, value in our_optimizer.state[mine].items():
            reference_value = reference.state[expected][name]
            if name == "step":
                assert value == int(reference_value)
            else:  # torch keeps complex buffers; ours are their real views
                torch.testing.assert_close(
                    value, torch.view_as_real(reference_value), rtol=1e-10, atol=1e-12
                )


COMPLEX_CASES = [
    (SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}),
    (SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.5, "nesterov": True}),
    (RMSProp, torch.optim.RMSprop, {"lr": 1e-2, "weight_decay": 0.01}),
    (RMSProp, torch.optim.RMSprop, {"lr": 1e-2, "centered": True, "momentum": 0.5}),
    (Adam, torch.optim.Adam, {"lr": 2e-2, "weight_decay": 0.01}),
    (Adam, torch.optim.Adam, {"lr": 2e-2, "amsgrad": True}),
    (AdamW, torch.optim.AdamW, {"lr": 2e-2, "weight_decay": 0.1}),
    (AdamW, torch.optim.AdamW, {"lr": 2e-2, "weight_decay": 0.1, "amsgrad": True}),
]


@pytest.mark.parametrize(
    "ours, theirs, hyper",
    COMPLEX_CASES,
    ids=[f"{ours.__name__} {hyper}" for ours, _, hyper in COMPLEX_CASES],
)
def test_complex_parameters_match_torch(ours, theirs, hyper):
    complex_lockstep(lambda p: ours(p, **hyper), lambda p: theirs(p, **hyper))


# --------------------------------------------------------------------------------------
# Side effects: an optimizer reads `param.grad` and never writes to it, weight decay or
# not, real or complex.

SIDE_EFFECT_CASES = [
    (SGD, {"lr": 0.1, "weight_decay": 0.1}),
    (SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1}),
    (SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1}),
    (RMSProp, {"weight_decay": 0.1}),
    (RMSProp, {"weight_decay": 0.1, "centered": True, "momentum": 0.9}),
    (Adam, {"weight_decay": 0.1}),
    (Adam, {"weight_decay": 0.1, "amsgrad": True}),
    (AdamW, {"weight_decay": 0.1}),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize(
    "make, hyper",
    SIDE_EFFECT_CASES,
    ids=[f"{make.__name__} {hyper}" for make, hyper in SIDE_EFFECT_CASES],
)
def test_step_leaves_the_gradient_untouched(make, hyper, dtype):
    generator = torch.Generator().manual_seed(0)
    param = nn.Parameter(torch.randn(5, 4, dtype=dtype, generator=generator))
    optimizer = make([param], **hyper)
    for _ in range(3):  # later steps also read the buffers built by the first
        param.grad = torch.randn(5, 4, dtype=dtype, generator=generator)
        before = param.grad.clone()
        optimizer.step()
        assert torch.equal(param.grad, before)


# --------------------------------------------------------------------------------------
# The schedules.


def learning_rates(optimizer, scheduler, steps: int) -> list[float]:
    """The learning rate in force at steps 0..steps, stepping the optimizer before the
    scheduler as torch asks."""
    rates = []
    for _ in range(steps + 1):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def dummy_optimizer(lr: float):
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)


@pytest.mark.parametrize(
    "step_size, gamma", [(30, 0.1), (1, 0.97), (50, 0.5), (7, 1.0)]
)
def test_step_decay_matches_torch_steplr(step_size, gamma):
    ours = dummy_optimizer(0.1)
    ours_rates = learning_rates(
        ours,
        lr_scheduler.LambdaLR(
            ours, partial(step_decay, step_size=step_size, gamma=gamma)
        ),
        STEPS,
    )
    theirs = dummy_optimizer(0.1)
    torch_rates = learning_rates(
        theirs, lr_scheduler.StepLR(theirs, step_size=step_size, gamma=gamma), STEPS
    )
    # StepLR multiplies the previous rate by gamma; we raise gamma to a power: rounding
    # differs by ~1e-16.
    torch.testing.assert_close(
        torch.tensor(ours_rates, dtype=torch.float64),
        torch.tensor(torch_rates, dtype=torch.float64),
        rtol=1e-12,
        atol=0,
    )


@settings(max_examples=25)
@given(
    warmup_steps=st.integers(1, 40),
    decay_steps=st.integers(1, 250),
    start_factor=st.floats(0.01, 1.0),
    min_factor=st.sampled_from([0.0, 1e-3, 0.1, 0.5]),
    base_lr=st.sampled_from([1e-3, 0.1, 3.0]),
)
def test_warmup_cosine_matches_torch_linear_then_cosine(
    warmup_steps, decay_steps, start_factor, min_factor, base_lr
):
    total_steps = warmup_steps + decay_steps
    ours = dummy_optimizer(base_lr)
    schedule = partial(
        warmup_cosine,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
        start_factor=start_factor,
        min_factor=min_factor,
    )
    ours_rates = learning_rates(
        ours, lr_scheduler.LambdaLR(ours, schedule), total_steps
    )
    theirs = dummy_optimizer(base_lr)
    torch_schedule = lr_scheduler.SequentialLR(
        theirs,
        [
            lr_scheduler.LinearLR(
                theirs, start_factor=start_factor, total_iters=warmup_steps
            ),
            lr_scheduler.CosineAnnealingLR(
                theirs, T_max=decay_steps, eta_min=min_factor * base_lr
            ),
        ],
        milestones=[warmup_steps],
    )
    torch_rates = learning_rates(theirs, torch_schedule, total_steps)
    # torch updates both parts recursively (rate_t = rate_{t-1} * ratio), so rounding
    # accumulates to ~1e-15 relative; where the cosine reaches a zero floor the absolute
    # error, ~1e-17 * base_lr per step, dominates.
    torch.testing.assert_close(
        torch.tensor(ours_rates, dtype=torch.float64),
        torch.tensor(torch_rates, dtype=torch.float64),
        rtol=1e-12,
        atol=1e-14 * base_lr,
    )


def test_warmup_cosine_without_warmup_matches_torch_cosine():
    ours = dummy_optimizer(0.1)
    ours_rates = learning_rates(
        ours,
        lr_scheduler.LambdaLR(
            ours, partial(warmup_cosine, warmup_steps=0, total_steps=STEPS)
        ),
        STEPS,
    )
    theirs = dummy_optimizer(0.1)
    torch_rates = learning_rates(
        theirs, lr_scheduler.CosineAnnealingLR(theirs, T_max=STEPS), STEPS
    )
    torch.testing.assert_close(
        torch.tensor(ours_rates, dtype=torch.float64),
        torch.tensor(torch_rates, dtype=torch.float64),
        rtol=1e-12,
        atol=1e-15,
    )


def test_warmup_cosine_shape():
    factors = [
        warmup_cosine(
            t, warmup_steps=10, total_steps=100, start_factor=0.2, min_factor=0.05
        )
        for t in range(150)
    ]
    assert factors[0] == 0.2 and factors[10] == 1.0 and math.isclose(factors[100], 0.05)
    assert all(
        a < b for a, b in zip(factors[:10], factors[1:11])
    )  # rising during warm-up
    assert all(
        a > b for a, b in zip(factors[10:100], factors[11:101])
    )  # falling during the cosine
    assert factors[100:] == [factors[100]] * 50  # and flat on the floor afterwards


# --------------------------------------------------------------------------------------
# Bad input.


def params():
    return [nn.Parameter(torch.zeros(2))]


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: SGD(params(), lr=-0.1), r"SGD: lr must lie in \[0, inf\), got -0.1"),
        (
            lambda: SGD(params(), lr=math.nan),
            r"SGD: lr must lie in \[0, inf\), got nan",
        ),
        (
            lambda: SGD(params(), lr=math.inf),
            r"SGD: lr must lie in \[0, inf\), got inf",
        ),
        (
            lambda: SGD(params(), momentum=1.0),
            r"SGD: momentum must lie in \[0, 1\), got 1.0",
        ),
        (lambda: SGD(params(), momentum=-0.5), r"SGD: momentum must lie in \[0, 1\)"),
        (
            lambda: SGD(params(), nesterov=True),
            r"SGD: nesterov=True needs momentum > 0",
        ),
        (
            lambda: SGD(params(), weight_decay=-1e-4),
            r"SGD: weight_decay must lie in \[0, inf\)",
        ),
        (lambda: RMSProp(params(), lr=-1.0), r"RMSProp: lr must lie in \[0, inf\)"),
        (
            lambda: RMSProp(params(), eps=0.0),
            r"RMSProp: eps must lie in \(0, inf\), got 0.0",
        ),
        (
            lambda: RMSProp(params(), alpha=1.0),
            r"RMSProp: alpha must lie in \[0, 1\)",
        ),
        (
            lambda: RMSProp(params(), momentum=1.5),
            r"RMSProp: momentum must lie in \[0, 1\)",
        ),
        (
            lambda: Adam(params(), betas=(1.0, 0.999)),
            r"Adam: betas\[0\] must lie in \[0, 1\), got 1.0",
        ),
        (
            lambda: Adam(params(), betas=(0.9, -0.1)),
            r"Adam: betas\[1\] must lie in \[0, 1\)",
        ),
        (lambda: Adam(params(), eps=-1e-8), r"Adam: eps must lie in \(0, inf\)"),
        (lambda: AdamW(params(), lr=-1e-3), r"AdamW: lr must lie in \[0, inf\)"),
        (
            lambda: AdamW(params(), weight_decay=-0.01),
            r"AdamW: weight_decay must lie in \[0, inf\)",
        ),
        (
            lambda: AdamW(params(), betas=(0.9, 1.0)),
            r"AdamW: betas\[1\] must lie in \[0, 1\)",
        ),
        (
            lambda: step_decay(-1, step_size=5),
            r"step_decay: step must lie in \[0, inf\), got -1",
        ),
        (
            lambda: step_decay(5, step_size=0),
            r"step_decay: step_size must lie in \[1, inf\), got 0",
        ),
        (
            lambda: step_decay(5, step_size=10, gamma=1.5),
            r"step_decay: gamma must lie in \(0, 1\], got 1.5",
        ),
        (
            lambda: step_decay(5, step_size=10, gamma=0.0),
            r"step_decay: gamma must lie in \(0, 1\], got 0.0",
        ),
        (
            lambda: step_decay(5, step_size=10, gamma=math.nan),
            r"step_decay: gamma must lie in \(0, 1\], got nan",
        ),
        (
            lambda: warmup_cosine(-5, warmup_steps=10, total_steps=100),
            r"warmup_cosine: step must lie in \[0, inf\), got -5",
        ),
        (
            lambda: warmup_cosine(5, warmup_steps=-1, total_steps=100),
            r"warmup_cosine: warmup_steps must lie in \[0, inf\), got -1",
        ),
        (
            lambda: warmup_cosine(5, warmup_steps=0, total_steps=0),
            r"warmup_cosine: total_steps must lie in \[1, inf\), got 0",
        ),
        (
            lambda: warmup_cosine(5, warmup_steps=10, total_steps=10),
            r"warmup_cosine: warmup_steps must be less than total_steps, "
            r"got warmup_steps=10, total_steps=10",
        ),
        (
            lambda: warmup_cosine(5, 2, 10, start_factor=0.0),
            r"warmup_cosine: start_factor must lie in \(0, 1\]",
        ),
        (
            lambda: warmup_cosine(5, 2, 10, min_factor=2.0),
            r"warmup_cosine: min_factor must lie in \[0, 1\]",
        ),
    ],
)
def test_bad_arguments_raise_value_error(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_a_warmup_as_long_as_the_run_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        main(["--digits-steps", "10", "--warmup-steps", "10"])
    assert "--warmup-steps must be below --digits-steps, got 10" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: SGD(params(), lr="0.1"), r"SGD: lr must be a real number, got str"),
        (
            lambda: SGD(params(), lr=0.1, momentum=0.9, nesterov="yes"),
            r"SGD: nesterov must be True or False, got 'yes'",
        ),
        (
            lambda: RMSProp(params(), momentum=True),
            r"RMSProp: momentum must be a real number, got bool",
        ),
        (
            lambda: RMSProp(params(), centered=1),
            r"RMSProp: centered must be True or False, got 1",
        ),
        (
            lambda: Adam(params(), betas=0.9),
            r"Adam: betas must be a pair \(beta1, beta2\)",
        ),
        (
            lambda: AdamW(params(), betas=(0.9, 0.99, 0.999)),
            r"AdamW: betas must be a pair",
        ),
        (
            lambda: AdamW(params(), amsgrad=None),
            r"AdamW: amsgrad must be True or False, got None",
        ),
        (
            lambda: step_decay(2.5, step_size=10),
            r"step_decay: step must be an int, got float",
        ),
        (
            lambda: step_decay(True, step_size=10),
            r"step_decay: step must be an int, got bool",
        ),
        (
            lambda: warmup_cosine(5, warmup_steps=2.0, total_steps=10),
            r"warmup_cosine: warmup_steps must be an int, got float",
        ),
        (
            lambda: warmup_cosine(5, 2, 10, start_factor="0.1"),
            r"warmup_cosine: start_factor must be a real number, got str",
        ),
    ],
)
def test_bad_argument_types_raise_type_error(build, match):
    with pytest.raises(TypeError, match=match):
        build()


@pytest.mark.parametrize(
    "value, interval, ok",
    [
        (0.0, "[0, 1)", True),
        (1.0, "[0, 1)", False),
        (0.0, "(0, 1]", False),
        (1.0, "(0, 1]", True),
        (1e300, "[0, inf)", True),
        (math.inf, "[0, inf)", False),
        (math.nan, "[0, inf)", False),
        (-0.0, "[0, inf)", True),
    ],
)
def test_check_number_reads_its_interval_like_mathematics(value, interval, ok):
    if ok:
        assert check_number("owner", "x", value, interval) == value
    else:
        with pytest.raises(
            ValueError, match=rf"owner: x must lie in {re.escape(interval)}"
        ):
            check_number("owner", "x", value, interval)


def test_numpy_numbers_are_accepted_as_hyperparameters_and_steps():
    optimizer = AdamW(params(), lr=np.float32(1e-3), betas=(np.float64(0.9), 0.999))
    assert (
        optimizer.defaults["lr"] == pytest.approx(1e-3)
        and type(optimizer.defaults["lr"]) is float
    )
    assert (
        step_decay(np.int64(25), step_size=np.int32(10), gamma=np.float32(0.5)) == 0.25
    )


# --------------------------------------------------------------------------------------
# The example and the demo.


def test_example_matches_torch_adamw_and_dataflow_is_consistent():
    fn, args = example()
    state = fn(*args)
    assert state["step"] == 1
    reference_fn, reference_args = example()
    weight = reference_args[0].param_groups[0]["params"][0]
    reference = torch.optim.AdamW([weight], lr=1e-3, weight_decay=1e-2)
    reference.step()
    ours_weight = args[0].param_groups[0]["params"][0]
    torch.testing.assert_close(ours_weight, weight, rtol=1e-6, atol=1e-7)
    nodes, edges = dataflow(state)
    ids = [node_id for node_id, _ in nodes]
    assert len(ids) == len(set(ids)) <= 25
    assert all(src in ids and dst in ids for src, dst, _ in edges)
    assert any("[32, 64]" in label for _, label in nodes)


def test_rosenbrock_descent_matches_scipy_rosen_and_its_gradient():
    # The demo's valley is scipy's `rosen`, and plain SGD down it is x <- x - lr f'(x)
    # with scipy's analytic gradient `rosen_der`, step for step.
    points = np.random.default_rng(0).uniform(-2, 2, size=(20, 2))
    values = [rosenbrock(torch.tensor(point)).item() for point in points]
    np.testing.assert_allclose(values, [rosen(point) for point in points], rtol=1e-14)
    path = descend_rosenbrock(ROSENBROCK_OPTIMIZERS["SGD"], steps=50, device="cpu")
    expected = [np.array(ROSENBROCK_START)]
    for _ in range(50):
        expected.append(expected[-1] - 1e-3 * rosen_der(expected[-1]))
    np.testing.assert_allclose(path, np.stack(expected), rtol=1e-12, atol=1e-14)
    assert rosenbrock(torch.tensor([1.0, 1.0])).item() == 0.0  # the minimum


def test_demo_runs_and_reports_its_metrics(tmp_path):
    # --rosenbrock-steps 300 --digits-steps 80 --warmup-steps 5 --device cpu
    metric, args, low, high = short_band("annotated/foundations/optimizers.py")
    metrics = main([*args, "--out", str(tmp_path)])
    assert low <= metrics[metric] <= high  # the short run's band over stored seeds
    assert (tmp_path / "rosenbrock_paths.png").stat().st_size > 0
    assert (tmp_path / "digits_loss.png").stat().st_size > 0
    start_distance = math.hypot(-1.5 - 1.0, 2.0 - 1.0)
    for name in ("SGD", "SGD, Nesterov", "RMSProp", "Adam", "AdamW"):
        assert metrics[f"{name} rosenbrock distance"] < start_distance, name
        assert metrics[f"{name} test accuracy"] > 0.7, name  # chance is 0.1


# --------------------------------------------------------------------------------------
# Benchmarks: one optimizer step on Linear(1000, 1000), 1,001,000 parameters, gradients
# fixed. On CPU torch.optim's default is its per-tensor loop (foreach kernels are its
# default only on CUDA), so the baseline is that default; the fused CPU kernel
# (`fused=True`) is shown beside it for what fusion buys.


def optimizer_on_a_million_parameters(make_optimizer):
    torch.manual_seed(0)
    layer = nn.Linear(1000, 1000)
    for param in layer.parameters():
        param.grad = torch.randn_like(param)
    optimizer = make_optimizer(layer.parameters())
    optimizer.step()  # allocate the state outside the timed region
    return optimizer


@pytest.mark.benchmark(group="adam step, 1M params")
def test_bench_adam_step_ours(benchmark):
    benchmark.extra_info["label"] = "our Adam"
    benchmark(optimizer_on_a_million_parameters(lambda p: Adam(p, lr=1e-3)).step)


@pytest.mark.benchmark(group="adam step, 1M params")
def test_bench_adam_step_torch(benchmark):
    benchmark.extra_info["label"] = "torch.optim.Adam (default)"
    benchmark.extra_info["baseline"] = True
    benchmark(
        optimizer_on_a_million_parameters(lambda p: torch.optim.Adam(p, lr=1e-3)).step
    )


@pytest.mark.benchmark(group="adam step, 1M params")
def test_bench_adam_step_torch_fused(benchmark):
    benchmark.extra_info["label"] = "torch.optim.Adam(fused=True)"
    benchmark(
        optimizer_on_a_million_parameters(
            lambda p: torch.optim.Adam(p, lr=1e-3, fused=True)
        ).step
    )


@pytest.mark.benchmark(group="sgd momentum step, 1M params")
def test_bench_sgd_momentum_step_ours(benchmark):
    benchmark.extra_info["label"] = "our SGD with momentum"
    benchmark(
        optimizer_on_a_million_parameters(lambda p: SGD(p, lr=1e-3, momentum=0.9)).step
    )


@pytest.mark.benchmark(group="sgd momentum step, 1M params")
def test_bench_sgd_momentum_step_torch(benchmark):
    benchmark.extra_info["label"] = "torch.optim.SGD"
    benchmark.extra_info["baseline"] = True
    benchmark(
        optimizer_on_a_million_parameters(
            lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9)
        ).step
    )
