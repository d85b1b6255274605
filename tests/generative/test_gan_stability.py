"""Verified against torch.nn.utils.parametrizations.spectral_norm step by step in
float64 (u, v, σ, the normalised weight, outputs and gradients to 1e-12), the
gradient penalty against torch.func (to 1e-10) and finite differences (gradcheck, to
1e-7), the smoothed loss against F.binary_cross_entropy_with_logits and the EMA against
torch.optim.swa_utils.AveragedModel (to 1e-12).

Also checked: σ estimates against torch.linalg.svdvals on matrices with known singular
values, the gradient through W/σ against its closed form, the optimal smoothed
discriminator against a numerical minimisation, a training round against one written
by hand with torch's BCE and the two learning rates, the mode-coverage measure on
constructed samples and on the true mixture (98.9 % within 3σ, from χ²₂), a
spectrally normalised discriminator saved with safetensors and reloaded, and a short
demo in which the plain GAN covers at most two modes.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from scipy.optimize import minimize_scalar
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from annotated.generative.gan_stability import (
    GAN,
    STABILISED,
    SpectralNorm,
    critic_loss,
    discriminator_loss,
    ema_update,
    example,
    generator_loss,
    gradient_penalty,
    main,
    mlp,
    mode_coverage,
    optimal_discriminator,
    ring_centres,
    sample_ring,
    spectral_norm,
    top_singular_value,
    train,
)
from tools.literate.figures import short_band

torch.set_num_threads(1)


# ## Spectral normalisation against PyTorch's parametrization


def twin_layers(make, rounds):
    """The same raw layer under torch's spectral norm and ours, with torch's u and v
    copied into ours so that both start from one state."""
    torch.manual_seed(0)
    theirs = torch_spectral_norm(make().double(), n_power_iterations=rounds)
    ours = make().double()
    with torch.no_grad():
        ours.weight.copy_(theirs.parametrizations.weight.original)
        ours.bias.copy_(theirs.bias)
    spectral_norm(ours, rounds)
    state = ours.parametrizations.weight[0]
    state.u.copy_(theirs.parametrizations.weight[0]._u)
    state.v.copy_(theirs.parametrizations.weight[0]._v)
    return ours, theirs


def vectors(layer, name_u, name_v):
    parametrization = layer.parametrizations.weight[0]
    return getattr(parametrization, name_u), getattr(parametrization, name_v)


@pytest.mark.parametrize("rounds", [1, 3])
@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: nn.Linear(7, 5), (4, 7)),
        (lambda: nn.Conv2d(3, 4, 3), (2, 3, 6, 5)),
    ],
    ids=["linear", "conv2d"],
)
def test_spectral_norm_matches_torch_step_by_step(make, shape, rounds):
    ours, theirs = twin_layers(make, rounds)
    x = torch.randn(shape, dtype=torch.float64)
    for _ in range(4):
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)
        u, v = vectors(ours, "u", "v")
        u_torch, v_torch = vectors(theirs, "_u", "_v")
        torch.testing.assert_close(u, u_torch, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(v, v_torch, rtol=1e-12, atol=1e-12)
        raw = ours.parametrizations.weight.original.flatten(1)
        torch.testing.assert_close(
            top_singular_value(raw, u, v),
            top_singular_value(raw, u_torch, v_torch),
            rtol=1e-12,
            atol=0,
        )
        with torch.no_grad():  # the weights move, so the next step iterates again
            for layer in (ours, theirs):
                layer.parametrizations.weight.original.add_(0.05)
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=1e-12, atol=1e-12)
    x.requires_grad_(True)
    ours_out, theirs_out = ours(x), theirs(x)
    g = torch.randn_like(ours_out)
    got = torch.autograd.grad(ours_out, (x, ours.parametrizations.weight.original), g)
    want = torch.autograd.grad(
        theirs_out, (x, theirs.parametrizations.weight.original), g
    )
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_eval_mode_stops_the_power_iteration():
    layer = spectral_norm(nn.Linear(6, 4).double())
    layer.eval()
    before = [t.clone() for t in vectors(layer, "u", "v")]
    layer(torch.randn(3, 6, dtype=torch.float64))
    for a, b in zip(before, vectors(layer, "u", "v")):
        assert torch.equal(a, b)
    layer.train()
    layer(torch.randn(3, 6, dtype=torch.float64))
    assert not torch.equal(before[0], vectors(layer, "u", "v")[0])


def matrix_with_singular_values(rows, columns, seed):
    """A random matrix whose singular values are 3, 1.5, 0.75, 0.5, ... (3, then
    1.5/i for i = 1, 2, ...): a gap of 2 at the top, so power iteration converges at
    rate 1/4 per round."""
    generator = torch.Generator().manual_seed(seed)
    k = min(rows, columns)
    left, _ = torch.linalg.qr(
        torch.randn(rows, k, generator=generator, dtype=torch.float64)
    )
    right, _ = torch.linalg.qr(
        torch.randn(columns, k, generator=generator, dtype=torch.float64)
    )
    values = torch.tensor([3.0] + [1.5 / (i + 1) for i in range(k - 1)])
    return left @ torch.diag(values.double()) @ right.T, values


@given(st.integers(2, 12), st.integers(2, 12), st.integers(0, 2**16))
def test_sigma_estimate_converges_to_svdvals(rows, columns, seed):
    weight, values = matrix_with_singular_values(rows, columns, seed)
    parametrization = SpectralNorm(weight, rounds=1)  # 15 rounds at construction
    for _ in range(15):
        normalised = parametrization(weight)
    estimate = top_singular_value(weight, parametrization.u, parametrization.v)
    exact = torch.linalg.svdvals(weight)[0]
    assert abs(exact.item() - 3.0) < 1e-12
    torch.testing.assert_close(estimate, exact, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        torch.linalg.svdvals(normalised)[0], torch.tensor(1.0).double()
    )


def test_gradient_through_w_over_sigma_matches_the_closed_form():
    torch.manual_seed(3)
    layer = spectral_norm(nn.Linear(5, 4).double())
    layer.eval()
    raw = layer.parametrizations.weight.original
    upstream = torch.randn(4, 5, dtype=torch.float64)
    (got,) = torch.autograd.grad(layer.weight, raw, upstream)
    u, v = vectors(layer, "u", "v")
    sigma = top_singular_value(raw, u, v).detach()
    normalised = raw.detach() / sigma
    want = (upstream - (upstream * normalised).sum() * torch.outer(u, v)) / sigma
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_two_forward_passes_then_one_backward():
    # A GAN step runs D on real and on fake data before one backward; the second
    # pass updates u and v in place.
    model = mlp(2, 1, 8, spectral=True)
    loss = model(torch.randn(4, 2)).mean() - model(torch.randn(4, 2)).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_spectral_norm_bad_inputs():
    with pytest.raises(ValueError, match="weight with >= 2 dimensions"):
        spectral_norm(nn.ReLU())
    with pytest.raises(ValueError, match="weight with >= 2 dimensions"):
        spectral_norm(nn.LayerNorm(4))
    with pytest.raises(ValueError, match="rounds must be an int >= 1"):
        spectral_norm(nn.Linear(3, 3), rounds=0)


def test_zero_weight_gives_no_nan_in_the_vectors():
    layer = nn.Linear(3, 2)
    nn.init.zeros_(layer.weight)
    spectral_norm(layer)
    assert all(torch.isfinite(t).all() for t in vectors(layer, "u", "v"))


def test_state_saved_with_safetensors_and_reloaded(tmp_path):
    torch.manual_seed(4)
    model = mlp(2, 1, 8, spectral=True)
    model(torch.randn(16, 2))  # move u and v away from their start
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "d"
    )
    other = mlp(2, 1, 8, spectral=True)
    other.load_state_dict(load_file(tmp_path / "d"))
    model.eval(), other.eval()
    x = torch.randn(5, 2)
    torch.testing.assert_close(model(x), other(x), rtol=0, atol=0)


# ## The gradient penalty


def critic_and_points(images=False):
    torch.manual_seed(5)
    if images:
        critic = nn.Sequential(
            nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(27, 1)
        ).double()
        shape = (4, 1, 5, 5)
    else:
        critic = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1)).double()
        shape = (6, 3)
    return critic, torch.randn(shape).double(), torch.randn(shape).double() + 1


def penalty_with_torch_func(critic, params, real, fake):
    """The same penalty through torch.func: per-sample input gradients with vmap."""
    shape = (len(real),) + (1,) * (real.ndim - 1)
    generator = torch.Generator().manual_seed(0)
    epsilon = torch.rand(shape, generator=generator, dtype=torch.float64)
    between = epsilon * real + (1 - epsilon) * fake

    def score(params, x):
        return functional_call(critic, params, (x[None],)).squeeze()

    grads = vmap(grad(score, argnums=1), in_dims=(None, 0))(params, between)
    return (grads.flatten(1).norm(dim=1) - 1).square().mean()


@pytest.mark.parametrize("images", [False, True], ids=["points", "images"])
def test_gradient_penalty_matches_torch_func_value_and_weight_gradient(images):
    critic, real, fake = critic_and_points(images)
    ours = gradient_penalty(critic, real, fake, torch.Generator().manual_seed(0))
    params = {k: v.detach() for k, v in critic.named_parameters()}
    theirs = penalty_with_torch_func(critic, params, real, fake)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad(  # double backward; the last bias has no input gradient
        ours, list(critic.parameters()), allow_unused=True, materialize_grads=True
    )
    want = grad(penalty_with_torch_func, argnums=1)(critic, params, real, fake)
    for g, name in zip(got, params):
        torch.testing.assert_close(g, want[name], rtol=1e-10, atol=1e-12)


def test_gradient_penalty_weight_gradient_against_finite_differences():
    critic, real, fake = critic_and_points()
    names = [name for name, _ in critic.named_parameters()]
    start = tuple(p.detach().clone().requires_grad_() for p in critic.parameters())

    def penalty(*weights):
        def call(x):
            return functional_call(critic, dict(zip(names, weights)), (x,))

        return gradient_penalty(call, real, fake, torch.Generator().manual_seed(0))

    assert torch.autograd.gradcheck(penalty, start, eps=1e-6, atol=1e-7)


def test_gradient_penalty_of_a_linear_critic_is_exact():
    # D(x) = a·x has gradient a everywhere: the penalty is (|a| - 1)^2, and at a = 0
    # it is 1 with a finite gradient.
    for scale, want in ((2.0, 1.0), (0.5, 0.25), (0.0, 1.0)):
        critic = nn.Linear(4, 1, bias=False).double()
        with torch.no_grad():
            critic.weight.fill_(scale / 2)  # |a| = scale
        value = gradient_penalty(critic, torch.randn(3, 4).double(), torch.zeros(3, 4))
        assert value.item() == pytest.approx(want, abs=1e-12)
        value.backward()
        assert torch.isfinite(critic.weight.grad).all()


def test_gradient_penalty_bad_shapes_and_critic_loss():
    critic = nn.Linear(2, 1)
    with pytest.raises(ValueError, match="must have the same shape"):
        gradient_penalty(critic, torch.randn(4, 2), torch.randn(3, 2))
    assert critic_loss(torch.tensor([3.0, 1.0]), torch.tensor([0.5])).item() == -1.5


# ## One-sided label smoothing, the generator loss and the optimal discriminator


@pytest.mark.parametrize("real_label", [1.0, 0.9])
def test_discriminator_loss_matches_bce_with_logits(real_label):
    generator = torch.Generator().manual_seed(6)
    real = (5 * torch.randn(9, 1, generator=generator)).double().requires_grad_()
    fake = (5 * torch.randn(7, 1, generator=generator)).double().requires_grad_()
    ours = discriminator_loss(real, fake, real_label)
    theirs = F.binary_cross_entropy_with_logits(
        real, torch.full_like(real, real_label)
    ) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad(ours, (real, fake))
    want = torch.autograd.grad(theirs, (real, fake))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    fake_target = torch.ones_like(fake)
    torch.testing.assert_close(
        generator_loss(fake), F.binary_cross_entropy_with_logits(fake, fake_target)
    )


def test_losses_at_extreme_logits_are_finite():
    logits = torch.tensor([-1e4, 1e4, 0.0])
    assert torch.isfinite(discriminator_loss(logits, logits, 0.9))
    assert torch.isfinite(generator_loss(logits))


@given(st.floats(0.01, 10.0), st.floats(0.01, 10.0), st.floats(0.6, 1.0))
def test_optimal_discriminator_minimises_the_smoothed_loss(p_data, p_model, alpha):
    def pointwise_loss(d):
        real = -alpha * math.log(d) - (1 - alpha) * math.log(1 - d)
        return p_data * real - p_model * math.log(1 - d)

    best = minimize_scalar(
        pointwise_loss,
        bounds=(1e-12, 1 - 1e-12),
        method="bounded",
        options={"xatol": 1e-12},
    ).x
    want = optimal_discriminator(torch.tensor(p_data), torch.tensor(p_model), alpha)
    assert best == pytest.approx(want.item(), abs=1e-6)


def test_real_label_out_of_range_raises():
    with pytest.raises(ValueError, match=r"real_label must lie in \(0.5, 1\]"):
        discriminator_loss(torch.zeros(2), torch.zeros(2), real_label=0.3)


# ## The generator's moving average


def test_ema_matches_averaged_model_with_an_exponential_average():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()
    ours = copy.deepcopy(model)
    theirs = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    theirs.update_parameters(model)  # the first call copies; ours starts as a copy
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    previous = [p.detach().clone() for p in ours.parameters()]
    for step in range(6):
        optimizer.zero_grad()
        model(torch.randn(8, 3, dtype=torch.float64)).square().mean().backward()
        optimizer.step()
        ema_update(ours, model, 0.9)
        theirs.update_parameters(model)
        for a, b in zip(ours.parameters(), theirs.module.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        if step == 0:  # the formula by hand, once
            for mean, old, new in zip(ours.parameters(), previous, model.parameters()):
                torch.testing.assert_close(
                    mean, 0.9 * old + 0.1 * new, rtol=1e-12, atol=0
                )
    for a, b in zip(ours.buffers(), model.buffers()):  # buffers are copied
        assert torch.equal(a, b)


def test_ema_bad_decay_raises_and_zero_decay_copies():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"decay must lie in \[0, 1\)"):
        ema_update(a, b, 1.0)
    ema_update(a, b, 0.0)
    assert torch.equal(a.weight, b.weight)


# ## A training round, with two time scales, against one written by hand


def test_training_measures_every_few_rounds_and_at_the_end():
    torch.manual_seed(0)
    history = train(GAN(STABILISED), steps=7, batch_size=16, every=3, samples=50)
    assert history["step"] == [3, 6, 7] and list(history["snapshots"]) == [3, 6, 7]
    for key in ("modes", "quality", "modes_ema", "quality_ema"):
        assert len(history[key]) == 3
    assert all(points.shape == (50, 2) for points in history["snapshots"].values())


@pytest.mark.parametrize("steps, every", [(0, 1), (5, 0), (5, 2.5)])
def test_training_refuses_bad_steps_and_every(steps, every):
    with pytest.raises(ValueError, match="steps and every must be ints >= 1"):
        train(GAN(STABILISED), steps=steps, every=every)


def test_round_matches_hand_written_bce_with_two_learning_rates():
    # float64 throughout: Adam's first step is about ±lr whatever the gradient's size,
    # so float32 rounding in a tiny gradient would move a weight visibly.
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(8)
        gan = GAN(STABILISED)
        reference = copy.deepcopy(gan)
        # The average before the round: a copy of the generator, not the generator.
        ema_before = [e.clone() for e in reference.generator_ema.parameters()]
        real = sample_ring(32, generator=torch.Generator().manual_seed(0)).double()
        torch.manual_seed(9)
        gan.step(real)

        g, d = reference.generator, reference.discriminator
        optimizer_g = torch.optim.Adam(g.parameters(), lr=5e-4, betas=(0.5, 0.999))
        optimizer_d = torch.optim.Adam(d.parameters(), lr=2e-3, betas=(0.5, 0.999))
        torch.manual_seed(9)
        fake = g(torch.randn(32, 16)).detach()
        real_logits, fake_logits = d(real), d(fake)
        loss_d = F.binary_cross_entropy_with_logits(
            real_logits, torch.full_like(real_logits, 0.9)
        ) + F.binary_cross_entropy_with_logits(
            fake_logits, torch.zeros_like(fake_logits)
        )
        optimizer_d.zero_grad()
        loss_d.backward()
        optimizer_d.step()
        fake_logits = d(g(torch.randn(32, 16)))
        loss_g = F.binary_cross_entropy_with_logits(
            fake_logits, torch.ones_like(fake_logits)
        )
        optimizer_g.zero_grad()
        loss_g.backward()
        optimizer_g.step()
        ema = [0.99 * e + 0.01 * p for e, p in zip(ema_before, g.parameters())]
    finally:
        torch.set_default_dtype(default)
    want = reference.state_dict()
    for name, value in gan.state_dict().items():
        if not name.startswith("generator_ema"):  # the reference's is the list below
            torch.testing.assert_close(value, want[name], rtol=1e-10, atol=1e-12)
    for a, b in zip(gan.generator_ema.parameters(), ema):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ## The mixture and the mode-coverage measure


def test_mode_coverage_on_constructed_samples():
    centres = ring_centres()
    everywhere = centres.repeat(100, 1) + 0.01  # [800, 2]: 100 per mode
    result = mode_coverage(everywhere, centres, std=0.05)
    assert result["modes"] == 8 and result["high_quality"] == 1.0
    assert result["counts"].tolist() == [100] * 8
    one = mode_coverage(centres[:1].repeat(800, 1), centres, std=0.05)
    assert one["modes"] == 1 and one["high_quality"] == 1.0
    between = (centres + centres.roll(1, 0)) / 2  # midpoints: 0.77 from every centre
    assert mode_coverage(between, centres, std=0.05)["high_quality"] == 0.0
    # Only high-quality samples count towards a mode: 800 off-mode points cover none.
    off = mode_coverage(between.repeat(100, 1), centres, std=0.05)
    assert off["modes"] == 0 and off["counts"].sum() == 0
    # A mode needs a quarter of its fair share, 25 of 800 samples: 23 is too few
    # (the first seven modes take 777 of the 800 rows).
    few = torch.cat([centres[:7].repeat(111, 1), centres[7:].repeat(24, 1)])[:800]
    assert mode_coverage(few, centres, std=0.05)["modes"] == 7


def test_real_mixture_scores_all_modes_and_the_chi_square_fraction():
    points = sample_ring(40_000, std=0.05, generator=torch.Generator().manual_seed(1))
    result = mode_coverage(points, ring_centres(), std=0.05)
    assert result["modes"] == 8
    # P(chi^2_2 <= 9) = 1 - exp(-4.5) = 0.98889; binomial standard error 5e-4.
    assert result["high_quality"] == pytest.approx(1 - math.exp(-4.5), abs=2.5e-3)


def test_mode_coverage_bad_inputs():
    with pytest.raises(ValueError, match=r"samples must be \[n >= 1, 2\]"):
        mode_coverage(torch.zeros(5, 3), ring_centres(), std=0.05)
    with pytest.raises(ValueError, match="std must be > 0"):
        mode_coverage(torch.zeros(5, 2), ring_centres(), std=0.0)
    with pytest.raises(ValueError, match="n and modes must be ints >= 1"):
        sample_ring(0)
    with pytest.raises(ValueError, match="std must be >= 0"):
        sample_ring(4, std=-1.0)


# ## The example and the demo


def test_example_runs():
    fn, args = example()
    assert fn(*args).shape == (4, 1)


def test_demo_runs_and_the_plain_gan_collapses(tmp_path):
    # The short run's stabilised sample quality over the stored seeds is its band.
    metric, args, low, high = short_band("annotated/generative/gan_stability.py")
    result = main([*args, "--out", str(tmp_path)])
    assert low <= result[metric] <= high  # the short run's band over stored seeds
    assert result["plain_max_modes_late"] <= 2
    assert 0 <= result["stabilised_quality"] <= 1
    assert (tmp_path / "samples.png").exists() and (tmp_path / "coverage.png").exists()


# ## Benchmarks: our spectral norm against torch's parametrization


def spectral_layers(make):
    torch.manual_seed(0)
    ours, theirs = make(), make()
    theirs.load_state_dict(ours.state_dict())
    return spectral_norm(ours), torch_spectral_norm(theirs)


@pytest.mark.benchmark(group="spectral-norm Linear(256, 256), batch 64, train mode")
def test_bench_linear_ours(benchmark):
    benchmark.extra_info["label"] = "our SpectralNorm"
    ours, _ = spectral_layers(lambda: nn.Linear(256, 256))
    x = torch.randn(64, 256)
    with torch.no_grad():
        benchmark(ours, x)


@pytest.mark.benchmark(group="spectral-norm Linear(256, 256), batch 64, train mode")
def test_bench_linear_torch(benchmark):
    benchmark.extra_info["label"] = "torch parametrizations.spectral_norm"
    benchmark.extra_info["baseline"] = True
    _, theirs = spectral_layers(lambda: nn.Linear(256, 256))
    x = torch.randn(64, 256)
    with torch.no_grad():
        benchmark(theirs, x)


@pytest.mark.benchmark(group="spectral-norm Conv2d(32, 64, 3), 8×32×16×16, train mode")
def test_bench_conv_ours(benchmark):
    benchmark.extra_info["label"] = "our SpectralNorm"
    ours, _ = spectral_layers(lambda: nn.Conv2d(32, 64, 3))
    x = torch.randn(8, 32, 16, 16)
    with torch.no_grad():
        benchmark(ours, x)


@pytest.mark.benchmark(group="spectral-norm Conv2d(32, 64, 3), 8×32×16×16, train mode")
def test_bench_conv_torch(benchmark):
    benchmark.extra_info["label"] = "torch parametrizations.spectral_norm"
    benchmark.extra_info["baseline"] = True
    _, theirs = spectral_layers(lambda: nn.Conv2d(32, 64, 3))
    x = torch.randn(8, 32, 16, 16)
    with torch.no_grad():
        benchmark(theirs, x)
