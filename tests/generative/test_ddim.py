"""Verified against diffusers' DDIMScheduler with the same betas: its timesteps for
the leading and trailing spacings (every step count of T = 50 and 500), and every step
of set_timesteps(n) with eta 0, 0.5 and 1 (the same variance_noise), with and without
clipping (use_clipped_model_output), to 1e-6 in float64; and a whole sampling chain (a
random U-Net, 10 of 50 steps, eta 0 and 0.5, diffusers drawing the noise from the same
seed) to 1e-6.

Also checked: eta = 1 over all steps is DDPM (σ² equals the posterior variance β̃ to
1e-12, and the step equals ddpm's Schedule.step with the same noise, clipped or
not); the eta = 0 step
is an Euler step of dx̄/dρ = ε; every eta keeps the marginals q(x_t | x_0); on
Gaussian data with the exact noise predictor the sampler draws the data's mean and
spread, and DDIM inversion reconstructs x_0 with an error that shrinks with the steps;
the demo on a tiny model; clear errors for bad input.
"""

import itertools
import math

import pytest
import torch
from diffusers import DDIMScheduler
from torch import nn

from annotated.generative.ddim import (
    dataflow,
    ddim_euler_step,
    ddim_invert,
    ddim_sample,
    ddim_sigma,
    ddim_step,
    example,
    main,
    timesteps,
)
from annotated.generative.ddpm import Schedule, UNet, sample

torch.set_num_threads(1)

SCHEDULES = [("linear", Schedule.linear), ("squaredcos_cap_v2", Schedule.cosine)]


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("total", [50, 500])
def test_timesteps_match_diffusers(spacing, total):
    scheduler = DDIMScheduler(num_train_timesteps=total, timestep_spacing=spacing)
    for steps in range(1, total + 1):
        scheduler.set_timesteps(steps)
        ours = timesteps(total, steps, spacing)
        assert len(ours) == len(set(ours)) == steps
        assert 0 <= min(ours) and max(ours) < total
        # diffusers' float arange sometimes adds one index, -1 (see the lesson).
        assert scheduler.timesteps.tolist()[:steps] == ours
    assert timesteps(total, total, spacing) == list(range(total - 1, -1, -1))


def test_diffusers_trailing_overshoot_is_real():
    scheduler = DDIMScheduler(num_train_timesteps=50, timestep_spacing="trailing")
    scheduler.set_timesteps(29)
    assert len(scheduler.timesteps) == 30 and scheduler.timesteps[-1] == -1
    assert len(timesteps(50, 29, "trailing")) == 29


@pytest.mark.parametrize("name, make", SCHEDULES)
def test_eta_one_over_all_steps_is_ddpm(name, make):
    schedule = make(1000)
    sigma2 = torch.tensor(
        [ddim_sigma(schedule, t, t - 1, 1.0) ** 2 for t in range(1000)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(
        sigma2, schedule.posterior_variance, rtol=1e-12, atol=1e-15
    )
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 8, 8, generator=generator, dtype=torch.float64)
    eps = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    for t, clip in itertools.product([0, 1, 37, 500, 998, 999], [False, True]):
        ours, x0_hat = ddim_step(schedule, eps, t, t - 1, x, 1.0, noise, clip)
        theirs, x0_ddpm = schedule.step(eps, t, x, noise, clip)
        torch.testing.assert_close(x0_hat, x0_ddpm, rtol=1e-12, atol=0)
        # x̂₀ reaches 1e5 at the cosine schedule's last step; the two formulas
        # cancel it in different orders.
        atol = 1e-12 * (1 + x0_hat.abs().max().item())
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=atol)


def float64_ddim(schedule: Schedule, **kwargs) -> DDIMScheduler:
    """diffusers' DDIMScheduler on `schedule`'s betas, with its ᾱ replaced by ours in
    float64 (after checking that its float32 ones agree)."""
    scheduler = DDIMScheduler(num_train_timesteps=schedule.steps, **kwargs)
    torch.testing.assert_close(
        scheduler.alphas_cumprod.double(), schedule.alphas_cumprod, rtol=0, atol=1e-6
    )
    scheduler.alphas_cumprod = schedule.alphas_cumprod.clone()
    scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return scheduler


@pytest.mark.parametrize("name, make", SCHEDULES)
@pytest.mark.parametrize(
    "spacing, steps", [("leading", 10), ("leading", 37), ("trailing", 50)]
)
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("clip", [False, True])
def test_step_matches_diffusers(name, make, spacing, steps, eta, clip):
    schedule = make(500)
    scheduler = float64_ddim(
        schedule, beta_schedule=name, clip_sample=clip, timestep_spacing=spacing
    )
    # Our clipped step re-derives the noise from the clipped x̂₀: diffusers' option.
    kwargs = {"use_clipped_model_output": clip}
    scheduler.set_timesteps(steps)
    ours_sequence = timesteps(500, steps, spacing)
    generator = torch.Generator().manual_seed(steps)
    for t, t_prev in zip(ours_sequence, ours_sequence[1:] + [-1]):
        x = torch.randn(3, 1, 4, 4, generator=generator, dtype=torch.float64)
        eps = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        ours, x0_hat = ddim_step(schedule, eps, t, t_prev, x, eta, noise, clip)
        theirs = scheduler.step(
            eps, t, x, eta=eta, variance_noise=noise if eta > 0 else None, **kwargs
        )
        torch.testing.assert_close(
            x0_hat, theirs.pred_original_sample, rtol=1e-12, atol=1e-6
        )
        torch.testing.assert_close(ours, theirs.prev_sample, rtol=0, atol=1e-6)


def perturbed_unet() -> UNet:
    torch.manual_seed(0)
    model = UNet().eval()
    # A fresh U-Net predicts no noise (its head starts at zero): perturb it.
    nn.init.normal_(model.head.weight, std=0.1)
    return model


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_sampling_chain_matches_diffusers(spacing, eta):
    unet, schedule = perturbed_unet(), Schedule.cosine(50)

    def model(x, t):  # the U-Net in float32 on the float64 chain
        return unet(x.float(), t).double()

    generator = torch.Generator().manual_seed(3)
    x_T = torch.randn(2, 1, 8, 8, generator=generator, dtype=torch.float64)
    ours = ddim_sample(model, schedule, x_T, 10, eta, spacing, generator)
    scheduler = float64_ddim(
        schedule, beta_schedule="squaredcos_cap_v2", timestep_spacing=spacing
    )
    scheduler.set_timesteps(10)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1, 8, 8, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = model(x, torch.full((2,), int(t)))
            x = scheduler.step(
                eps, t, x, eta=eta, generator=generator, use_clipped_model_output=True
            ).prev_sample
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-6)


def test_deterministic_step_is_euler_and_reversible():
    schedule = Schedule.cosine(500)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 4, 4, generator=generator, dtype=torch.float64)
    eps = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    for t, t_prev in [(499, 399), (250, 249), (120, 0), (30, -1)]:
        ours, _ = ddim_step(schedule, eps, t, t_prev, x)
        euler = ddim_euler_step(schedule, eps, t, t_prev, x)
        torch.testing.assert_close(ours, euler, rtol=1e-10, atol=1e-10)
        # With the same ε, the step back up lands exactly where it started.
        back = ddim_euler_step(schedule, eps, t_prev, t, euler)
        torch.testing.assert_close(back, x, rtol=1e-10, atol=1e-10)


def test_zero_dim_tensor_steps_are_the_int_steps():
    """Looping over `timesteps` yields 0-d tensors: a step takes them as ints."""
    schedule = Schedule.cosine(50)
    eps, x = torch.randn(2, 2, 1, 4, 4, generator=torch.Generator())
    expected, _ = ddim_step(schedule, eps, 30, 20, x)
    ours, _ = ddim_step(schedule, eps, torch.tensor(30), torch.tensor(20), x)
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("t, t_prev", [(499, 449), (300, 100), (40, -1)])
def test_every_eta_keeps_the_marginals(eta, t, t_prev):
    # One data point x0: the true noise is known, so x̂₀ = x0 and x_t_prev must have
    # the marginal N(√ᾱ_prev x0, 1 − ᾱ_prev) for every eta.
    schedule, n, x0 = Schedule.cosine(500), 50_000, 0.7
    generator = torch.Generator().manual_seed(t)
    eps = torch.randn(n, generator=generator, dtype=torch.float64)
    x_t = schedule.q_sample(torch.full((n,), x0, dtype=torch.float64),
                            torch.full((n,), t), eps)  # fmt: skip
    noise = torch.randn(n, generator=generator, dtype=torch.float64)
    x_prev, x0_hat = ddim_step(schedule, eps, t, t_prev, x_t, eta, noise)
    torch.testing.assert_close(x0_hat, torch.full_like(x0_hat, x0))
    a_prev = 1.0 if t_prev == -1 else schedule.alphas_cumprod[t_prev].item()
    mean, variance = math.sqrt(a_prev) * x0, 1 - a_prev
    assert abs(x_prev.mean().item() - mean) < 5 * math.sqrt(variance / n) + 1e-12
    assert abs(x_prev.var().item() - variance) < 5 * variance * math.sqrt(2 / n) + 1e-12
    # The fresh noise's share is what eta sets: its covariance with x_prev is σ.
    sigma = ddim_sigma(schedule, t, t_prev, eta)
    covariance = ((x_prev - x_prev.mean()) * noise).mean().item()
    assert abs(covariance - sigma) < 5 * math.sqrt(variance / n) + 1e-12


class GaussianOracle(nn.Module):
    """The exact noise predictor E[ε | x_t] for data x_0 ~ N(mean, std²) per pixel."""

    def __init__(self, schedule: Schedule, mean: float, std: float):
        super().__init__()
        self.alpha_bar, self.mean, self.std = schedule.alphas_cumprod, mean, std

    def forward(self, x, t):
        a = self.alpha_bar[t].to(x).view(-1, 1, 1, 1)
        variance = a * self.std**2 + 1 - a  # of x_t
        return (1 - a).sqrt() * (x - a.sqrt() * self.mean) / variance


def test_exact_noise_predictor_draws_the_data():
    # Data N(0.3, 0.2²) per pixel, 32,000 values: the mean's standard error is 0.0011.
    schedule = Schedule.cosine(500)
    oracle = GaussianOracle(schedule, mean=0.3, std=0.2)
    generator = torch.Generator().manual_seed(0)
    x_T = torch.randn(2000, 1, 4, 4, generator=generator, dtype=torch.float64)
    mean, spread = {}, {}
    for spacing in ["leading", "trailing"]:
        for steps in [5, 10, 20, 100, 500]:
            for eta in [0.0, 1.0]:
                if steps == 500 and spacing == "trailing":  # the same as leading
                    mean[spacing, steps, eta] = mean["leading", steps, eta]
                    spread[spacing, steps, eta] = spread["leading", steps, eta]
                    continue
                x = ddim_sample(oracle, schedule, x_T, steps, eta, spacing, generator,
                                clip=False)  # fmt: skip
                key = spacing, steps, eta
                mean[key], spread[key] = x.mean().item(), x.std().item()
    for spacing in ["leading", "trailing"]:
        # All steps, deterministic: the data's spread to 1 %, and its mean.
        assert abs(spread[spacing, 500, 0.0] - 0.2) < 0.002
        assert abs(mean[spacing, 500, 0.0] - 0.3) < 0.0056
        # Fewer steps shrink the spread, η = 1 more than η = 0.
        spreads = [spread[spacing, steps, 0.0] for steps in [5, 10, 20, 100, 500]]
        assert spreads == sorted(spreads)
        for steps in [5, 10, 20, 100, 500]:
            assert spread[spacing, steps, 1.0] < spread[spacing, steps, 0.0]
    # Trailing starts from pure noise and keeps the mean at any step count; leading
    # starts 5 steps from 5 at index 400, where ᾱ = 0.09, and misses it.
    for steps in [5, 10, 20, 100, 500]:
        assert abs(mean["trailing", steps, 0.0] - 0.3) < 0.0056
    assert abs(mean["leading", 5, 0.0] - 0.3) > 0.0056


def test_inversion_converges_with_steps():
    schedule = Schedule.cosine(500)
    oracle = GaussianOracle(schedule, mean=0.3, std=0.2)
    generator = torch.Generator().manual_seed(1)
    x0 = 0.3 + 0.2 * torch.randn(16, 1, 4, 4, generator=generator, dtype=torch.float64)
    errors = []
    for steps in [5, 20, 100, 500]:
        noise = ddim_invert(oracle, schedule, x0, steps, "trailing")
        rebuilt = ddim_sample(oracle, schedule, noise, steps, 0.0, "trailing",
                              clip=False)  # fmt: skip
        errors.append((rebuilt - x0).abs().max().item())
    # Each 4–5× more steps at least halves the error (Euler's is first order).
    assert all(later < before / 2 for before, later in zip(errors, errors[1:]))
    assert errors[-1] < 0.02  # the largest of 256 values of spread 0.2


def test_inversion_asks_the_model_at_the_step_each_euler_step_heads_to():
    schedule = Schedule.cosine(500)
    oracle = GaussianOracle(schedule, mean=0.3, std=0.2)
    asked = []

    def model(x, t):
        asked.append(int(t[0]))
        return oracle(x, t)

    generator = torch.Generator().manual_seed(2)
    x0 = 0.3 + 0.2 * torch.randn(4, 1, 4, 4, generator=generator, dtype=torch.float64)
    ddim_invert(model, schedule, x0, 5, "trailing")
    # Each step is asked at the index it heads to, clean to noisy (x0 has no index).
    assert asked == timesteps(500, 5, "trailing")[::-1]


def test_deterministic_sampling_uses_no_randomness():
    model, schedule = perturbed_unet(), Schedule.cosine(50)
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()
    first = ddim_sample(model, schedule, x_T, 7, 0.0, "trailing", generator)
    assert torch.equal(generator.get_state(), state)
    second = ddim_sample(model, schedule, x_T, 7, 0.0, "trailing")
    assert torch.equal(first, second)


def test_example_and_dataflow():
    fn, args = example()
    output = fn(*args)
    assert output.shape == (2, 1, 16, 16) and torch.isfinite(output).all()
    nodes, edges = dataflow(output)
    names = {node for node, _ in nodes}
    assert all(src in names and dst in names for src, dst, _ in edges)


def test_demo_runs_on_a_tiny_model(tmp_path, monkeypatch):
    monkeypatch.setenv("ANNOTATED_DL_CACHE", str(tmp_path / "cache"))
    result = main(
        [
            "--steps", "2,5", "--samples", "8", "--timesteps", "20",
            "--train-steps", "15", "--judge-epochs", "1", "--out", str(tmp_path),
        ]
    )  # fmt: skip
    for name in ("fid.png", "samples.png", "inversion.png"):
        assert (tmp_path / name).is_file()
    assert {"fid_real", "fid_ddpm", "fid_ddim_2", "fid_ddim_20"} <= set(result)
    assert all(math.isfinite(value) for value in result.values())
    # Even on a barely trained model, inversion and resampling with 10 steps keep
    # most of the digits (pixels in [-1, 1], mostly -1: their RMS is about 0.9).
    assert result["inversion_rmse_10"] < 0.5


def test_bad_input_is_refused(capsys):
    schedule = Schedule.cosine(10)
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\]"):
        ddim_sigma(schedule, 5, 4, 1.5)
    with pytest.raises(ValueError, match=r"t_prev must be an int in \[-1, t - 1 = 4\]"):
        ddim_step(schedule, x, 5, 5, x)
    with pytest.raises(ValueError, match=r"t must be an int in \[0, 9\]"):
        ddim_step(schedule, x, 10, 3, x)
    with pytest.raises(ValueError, match="eps must have x_t's shape"):
        ddim_step(schedule, x[:1], 5, 3, x)
    with pytest.raises(ValueError, match="noise must be a tensor shaped like x_t"):
        ddim_step(schedule, x, 5, 3, x, eta=0.5)
    with pytest.raises(ValueError, match=r"steps must be an int in \[1, 10\]"):
        timesteps(10, 0)
    with pytest.raises(ValueError, match="spacing must be one of"):
        timesteps(10, 5, "linspace")
    with pytest.raises(ValueError, match=r"x_T must be \[n, 1, h, w\]"):
        ddim_sample(UNet(), schedule, torch.zeros(2, 3, 8, 8), 5)
    with pytest.raises(TypeError, match="x_T must be a float tensor"):
        ddim_sample(UNet(), schedule, torch.zeros(2, 1, 8, 8, dtype=torch.long), 5)
    with pytest.raises(SystemExit):
        main(["--steps", "5,500", "--timesteps", "500"])
    assert "--steps must be below --timesteps (500)" in capsys.readouterr().err


# Benchmarks: sampling a batch with DDIM's 20 steps against DDPM's 500 ancestral
# steps (the network calls dominate both), and one DDIM step against DDIMScheduler.


@pytest.mark.benchmark(group="sampling 8 digits, 16×16, T = 500")
def test_bench_sample_ddim_20(benchmark):
    model, schedule = perturbed_unet(), Schedule.cosine(500)
    x_T = torch.randn(8, 1, 16, 16)
    benchmark.extra_info["label"] = "ours: DDIM, 20 steps"
    benchmark(lambda: ddim_sample(model, schedule, x_T, 20, 0.0, "trailing"))


@pytest.mark.benchmark(group="sampling 8 digits, 16×16, T = 500")
def test_bench_sample_ddpm_500(benchmark):
    model, schedule = perturbed_unet(), Schedule.cosine(500)
    benchmark.extra_info["label"] = "DDPM ancestral, 500 steps (ddpm.sample)"
    benchmark.extra_info["baseline"] = True
    benchmark(lambda: sample(model, schedule, 8))


def step_inputs():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 16, 16, generator=generator)
    return x, torch.randn(x.shape, generator=generator)


@pytest.mark.benchmark(group="one DDIM step, eta 0, batch 64, 16×16")
def test_bench_ddim_step_ours(benchmark):
    schedule = Schedule.cosine(500)
    x, eps = step_inputs()
    benchmark.extra_info["label"] = "ours: ddim_step"
    benchmark(lambda: ddim_step(schedule, eps, 250, 225, x, clip=True))


@pytest.mark.benchmark(group="one DDIM step, eta 0, batch 64, 16×16")
def test_bench_ddim_step_diffusers(benchmark):
    scheduler = DDIMScheduler(
        num_train_timesteps=500, beta_schedule="squaredcos_cap_v2"
    )
    scheduler.set_timesteps(20)
    x, eps = step_inputs()
    benchmark.extra_info["label"] = "diffusers DDIMScheduler.step"
    benchmark.extra_info["baseline"] = True
    benchmark(lambda: scheduler.step(eps, 250, x))
