"""Verified against diffusers' DDPMScheduler: the linear and cosine
("squaredcos_cap_v2") betas, alphas, ᾱ and posterior variance to 1e-6, one ancestral
step with the same noise (epsilon prediction, "fixed_small", with and without
clipping; in float64) to 1e-6 (2e-5 where diffusers' float32 betas meet a huge x̂₀),
a whole float32 sampling chain to 1e-5, and the sinusoidal time embedding against
diffusers' get_timestep_embedding to 1e-6.

Also checked: the closed form q(x_t | x_0) against the iterated chain (its moments
exactly in float64, to 1e-12, and a 20,000-sample draw within 5 standard errors), the
U-Net on odd sizes, its cached weights saved and reloaded, the loss falling in a short
run of the demo, and clear errors for bad input.
"""

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.models.embeddings import get_timestep_embedding

import annotated.generative.metrics as metrics
from annotated.data import cache_folder
from annotated.generative.ddpm import (
    Schedule,
    TrainConfig,
    UNet,
    cache_name,
    diffusion_loss,
    example,
    forward_moments,
    iterate_forward,
    main,
    make_schedule,
    mosaic,
    sample,
    timestep_embedding,
    train,
    trained_model,
)
from tools.literate.figures import short_band

torch.set_num_threads(1)

SCHEDULES = [("linear", Schedule.linear), ("squaredcos_cap_v2", Schedule.cosine)]


def test_mosaic_maps_minus_one_to_black_and_tiles_row_by_row():
    # Five 2×2 images, three columns: one full row is drawn, the rest dropped. Image k
    # is filled with -1 + k/2 and drawn at k/4 (from [-1, 1] to [0, 1]) inside a grey
    # frame, left to right.
    images = (-1 + torch.arange(5.0) / 2).clamp(max=1).reshape(5, 1, 1, 1)
    grid = mosaic(images.expand(5, 1, 2, 2), columns=3)
    assert grid.shape == (4, 12)
    for k in range(3):
        tile = grid[:, 4 * k : 4 * k + 4]
        assert (tile[1:3, 1:3] == k / 4).all()
        assert (tile[0] == 0.5).all() and (tile[:, 0] == 0.5).all()
    # A sample that overshoots [-1, 1] is drawn black or white, never off the scale.
    overshoot = torch.tensor([-3.0, 3.0]).reshape(2, 1, 1, 1).expand(2, 1, 2, 2)
    grid = mosaic(overshoot, columns=2)
    assert (grid[1:3, 1:3] == 0).all() and (grid[1:3, 5:7] == 1).all()


@pytest.mark.parametrize("name, make", SCHEDULES)
def test_schedule_matches_diffusers(name, make):
    ours = make(1000)
    theirs = DDPMScheduler(num_train_timesteps=1000, beta_schedule=name)
    for field in ("betas", "alphas", "alphas_cumprod"):
        torch.testing.assert_close(
            getattr(ours, field), getattr(theirs, field).double(), rtol=0, atol=1e-6
        )
    variance = torch.stack([theirs._get_variance(t) for t in range(1000)]).double()
    torch.testing.assert_close(ours.posterior_variance, variance, rtol=0, atol=1e-6)
    assert ours.posterior_variance[0] == 0


def float64_scheduler(**kwargs) -> DDPMScheduler:
    """diffusers' scheduler with its ᾱ recomputed from its own betas in float64: in
    float32, 1 - ᾱ near t = 0 loses four of its seven digits (ᾱ ≈ 0.9997), and its
    step then differs from the exact one by up to 2e-4."""
    scheduler = DDPMScheduler(**kwargs)
    scheduler.alphas_cumprod = torch.cumprod(1 - scheduler.betas.double(), dim=0)
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    return scheduler


def reference_step(schedule_name, clip, eps, t, x, seed):
    scheduler = float64_scheduler(beta_schedule=schedule_name, clip_sample=clip)
    generator = torch.Generator().manual_seed(seed)
    return scheduler.step(eps, t, x, generator=generator)


@pytest.mark.parametrize("name, make", SCHEDULES)
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("t", [0, 1, 37, 500, 999])
def test_step_matches_diffusers(name, make, clip, t):
    schedule = make(1000)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 8, 8, generator=generator, dtype=torch.float64)
    eps = torch.randn(3, 1, 8, 8, generator=generator, dtype=torch.float64)
    seeded = torch.Generator().manual_seed(7)
    noise = torch.randn(x.shape, generator=seeded, dtype=torch.float64)
    ours, x0_hat = schedule.step(eps, t, x, noise, clip)
    theirs = reference_step(name, clip, eps, t, x, seed=7)
    # diffusers stores betas in float32; at t = 999 of the cosine schedule, ᾱ ≈ 1e-9
    # and x̂₀ ≈ 1e5, which that rounding shifts by 7e-6 relative, and x_{t-1} by
    # about 1e-10 of x̂₀.
    expected = theirs.pred_original_sample
    torch.testing.assert_close(x0_hat, expected, rtol=2e-5, atol=1e-6)
    atol = 1e-6 + 1e-9 * expected.abs().max().item()
    torch.testing.assert_close(ours, theirs.prev_sample, rtol=2e-5, atol=atol)


def test_sampling_chain_matches_diffusers():
    torch.manual_seed(0)
    model = UNet().eval()
    # A random U-Net predicts no noise (its head starts at zero): perturb it.
    torch.nn.init.normal_(model.head.weight, std=0.1)
    schedule = Schedule.cosine(12)
    ours, _ = sample(model, schedule, 2, 8, torch.Generator().manual_seed(3))
    scheduler = DDPMScheduler(num_train_timesteps=12, beta_schedule="squaredcos_cap_v2")
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1, 8, 8, generator=generator)
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = model(x, torch.full((2,), int(t)))
            x = scheduler.step(eps, t, x, generator=generator).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, make", SCHEDULES)
def test_q_sample_matches_diffusers_add_noise(name, make):
    generator = torch.Generator().manual_seed(2)
    x0 = torch.rand(5, 1, 4, 4, generator=generator) * 2 - 1
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.tensor([0, 3, 250, 998, 999])
    theirs = DDPMScheduler(beta_schedule=name).add_noise(x0, noise, t)
    torch.testing.assert_close(make(1000).q_sample(x0, t, noise), theirs)


@pytest.mark.parametrize("make", [Schedule.linear, Schedule.cosine])
def test_closed_form_equals_iterated_moments(make):
    schedule = make(1000)
    x0 = torch.tensor([-1.0, 0.3, 1.0], dtype=torch.float64)
    means, variances = forward_moments(schedule, x0)  # [1000, 3], [1000]
    alpha_bar = schedule.alphas_cumprod
    torch.testing.assert_close(
        means, alpha_bar.sqrt()[:, None] * x0, rtol=0, atol=1e-12
    )
    torch.testing.assert_close(variances, 1 - alpha_bar, rtol=0, atol=1e-12)


@pytest.mark.parametrize("t", [0, 60, 199])
def test_iterated_chain_draws_match_closed_form(t):
    schedule = Schedule.cosine(200)
    n = 20_000
    x0 = torch.full((n,), 0.8, dtype=torch.float64)
    x_t = iterate_forward(schedule, x0, t, torch.Generator().manual_seed(t))
    alpha_bar = schedule.alphas_cumprod[t].item()
    mean, variance = 0.8 * alpha_bar**0.5, 1 - alpha_bar
    assert abs(x_t.mean().item() - mean) < 5 * (variance / n) ** 0.5
    # The sample variance of a Gaussian has standard error variance·sqrt(2/(n-1)).
    assert abs(x_t.var().item() - variance) < 5 * variance * (2 / (n - 1)) ** 0.5


def test_loss_is_the_mse_to_the_noise_at_steps_drawn_from_all_of_them():
    seen = []

    def model(x_t, t):  # records its input, predicts 0.1 everywhere
        seen.append((x_t, t))
        return torch.full_like(x_t, 0.1)

    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(64, 1, 4, 4, generator=generator, dtype=torch.float64) * 2 - 1
    loss = diffusion_loss(model, Schedule.linear(4), x0, generator)
    ((x_t, t),) = seen
    # The noise in x_t, by diffusers' ᾱ: a standard normal draw of 1,024 values.
    betas = DDPMScheduler(num_train_timesteps=4).betas.double()
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)  # in float64: at t = 0, 1 - ᾱ = β
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    noise = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
    assert abs(noise.mean()) < 0.15 and abs(noise.std() - 1) < 0.1
    torch.testing.assert_close(loss, ((0.1 - noise) ** 2).mean(), rtol=1e-5, atol=0)
    assert set(t.tolist()) == {0, 1, 2, 3}  # every step, the last denoising one too


def test_timestep_embedding_matches_diffusers():
    t = torch.tensor([0, 1, 17, 499, 999])
    theirs = get_timestep_embedding(
        t, 64, flip_sin_to_cos=False, downscale_freq_shift=0
    )
    torch.testing.assert_close(timestep_embedding(t, 64), theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("height, width", [(16, 16), (8, 12), (32, 4)])
def test_unet_shapes_and_gradients(height, width):
    torch.manual_seed(0)
    model = UNet()
    assert 50_000 < sum(p.numel() for p in model.parameters()) < 500_000
    x = torch.randn(3, 1, height, width)
    out = model(x, torch.tensor([0, 5, 999]))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # the head starts at zero
    loss = diffusion_loss(model, Schedule.cosine(1000), x)
    loss.backward()
    assert model.head.weight.grad.abs().sum() > 0


def test_example_runs():
    model, args = example()
    assert model(*args).shape == (2, 1, 16, 16)


def test_trained_model_is_cached_and_reloads(tmp_path, monkeypatch):
    monkeypatch.setenv("ANNOTATED_DL_CACHE", str(tmp_path))
    config = TrainConfig(timesteps=10, steps=2, batch_size=4)
    first = trained_model(config)
    files = list(cache_folder().glob("ddpm-digits-*.safetensors"))
    assert len(files) == 1
    second = trained_model(config)  # read back, not retrained
    assert list(cache_folder().glob("*.safetensors")) == files
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([1, 8])
    torch.testing.assert_close(first(x, t), second(x, t), rtol=0, atol=0)
    assert torch.count_nonzero(first(x, t)) > 0  # trained: the head moved


def test_demo_loss_falls(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ANNOTATED_DL_CACHE", str(tmp_path / "cache"))
    # An untrained judge stands in for the cached one, so the FID branch runs too.
    torch.manual_seed(0)
    judge = metrics.DigitFeatures().eval()
    monkeypatch.setattr(metrics, "feature_extractor", lambda: judge)
    # The short run's final loss over the stored seeds is its expected band.
    metric, args, low, high = short_band("annotated/generative/ddpm.py")
    args = [arg for arg in args if arg != "--no-fid"]  # the FID comes after the loss
    result = main([*args, "--out", str(tmp_path)])
    assert low <= result[metric] <= high  # the short run's band over stored seeds
    assert result["last_loss"] < 0.7 * result["first_loss"]
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "chain.png").is_file()
    assert list((tmp_path / "cache").glob("ddpm-digits-*.safetensors"))
    # Real training digits are closer to the test digits than a 12-step model's.
    assert 0 < result["fid_real"] < result["fid"]
    assert "FID against the 359 test digits: samples" in capsys.readouterr().out


def test_bad_input_is_refused():
    schedule = Schedule.cosine(10)
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match="betas must lie in"):
        Schedule(torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="betas must be a 1-D"):
        Schedule(torch.ones(2, 2) * 0.1)
    with pytest.raises(ValueError, match="noise must have x0's shape"):
        schedule.q_sample(x, torch.tensor([0, 1]), torch.zeros(2, 1, 8, 7))
    with pytest.raises(ValueError, match="t must be an integer tensor"):
        schedule.q_sample(x, torch.tensor([0.0, 1.0]), x)
    with pytest.raises(ValueError, match="t must lie in"):
        schedule.q_sample(x, torch.tensor([0, 10]), x)
    with pytest.raises(ValueError, match=r"t must be an int in \[0, 9\]"):
        schedule.step(x, 10, x, x)
    with pytest.raises(ValueError, match="noise must be a tensor shaped like x_t"):
        schedule.step(x, 3, x)
    with pytest.raises(ValueError, match="images must be"):
        diffusion_loss(UNet(), schedule, torch.zeros(2, 3, 8, 8))
    with pytest.raises(TypeError, match="images must be a float tensor"):
        diffusion_loss(UNet(), schedule, torch.zeros(2, 1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="n must be an int"):
        sample(UNet(), schedule, 0)
    with pytest.raises(ValueError, match="schedule must be 'cosine' or 'linear'"):
        make_schedule(TrainConfig(schedule="sigmoid"))
    with pytest.raises(ValueError, match="eps must have x_t's shape"):
        schedule.step(x[:1], 3, x, x)
    with pytest.raises(ValueError, match="size must be a positive multiple of 4"):
        sample(UNet(), schedule, 1, size=6)
    with pytest.raises(ValueError, match="steps and config.batch_size must be >= 1"):
        train(TrainConfig(steps=0), torch.zeros(2, 1, 16, 16))


def test_a_zero_dim_tensor_step_is_the_int_step():
    """Looping over a tensor of steps yields 0-d tensors: step takes them as ints."""
    schedule = Schedule.cosine(10)
    eps, x, noise = torch.randn(3, 2, 1, 4, 4, generator=torch.Generator())
    expected = schedule.step(eps, 3, x, noise)
    for ours, want in zip(schedule.step(eps, torch.tensor(3), x, noise), expected):
        assert torch.equal(ours, want)


def test_config_names_its_schedule_and_cache_file():
    linear = make_schedule(TrainConfig(schedule="linear", timesteps=10))
    assert torch.equal(linear.betas, Schedule.linear(10).betas)
    assert cache_name(TrainConfig()) == "ddpm-digits"  # the default's short name
    assert cache_name(TrainConfig(steps=3)) == (
        "ddpm-digits-cosine-T500-3-steps-b64-seed0"
    )


# Benchmarks: a training step of our U-Net against diffusers' UNet2DModel of the same
# widths, and one ancestral step against DDPMScheduler.step, on a batch of 64.


def training_step(model, schedule, x, optimizer, call):
    def run():
        t = torch.randint(0, schedule.steps, (len(x),))
        noise = torch.randn_like(x)
        loss = torch.nn.functional.mse_loss(
            call(schedule.q_sample(x, t, noise), t), noise
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return run


@pytest.mark.benchmark(group="U-Net training step, batch 64, 16×16")
def test_bench_train_step_ours(benchmark):
    torch.manual_seed(0)
    model, schedule = UNet(), Schedule.cosine(1000)
    optimizer = torch.optim.Adam(model.parameters())
    benchmark.extra_info["label"] = "ours: UNet (16, 32, 64)"
    benchmark(
        training_step(model, schedule, torch.randn(64, 1, 16, 16), optimizer, model)
    )


@pytest.mark.benchmark(group="U-Net training step, batch 64, 16×16")
def test_bench_train_step_diffusers(benchmark):
    torch.manual_seed(0)
    model = UNet2DModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32, 64),
        down_block_types=("DownBlock2D",) * 3,
        up_block_types=("UpBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=8,
    )
    optimizer = torch.optim.Adam(model.parameters())

    def call(x, t):
        return model(x, t).sample

    benchmark.extra_info["label"] = "diffusers UNet2DModel (16, 32, 64)"
    benchmark.extra_info["baseline"] = True
    x = torch.randn(64, 1, 16, 16)
    benchmark(training_step(model, Schedule.cosine(1000), x, optimizer, call))


def step_inputs():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 16, 16, generator=generator)
    return x, torch.randn(x.shape, generator=generator)


@pytest.mark.benchmark(group="one ancestral step, batch 64, 16×16")
def test_bench_ancestral_step_ours(benchmark):
    schedule = Schedule.cosine(1000)
    x, eps = step_inputs()
    benchmark.extra_info["label"] = "ours: Schedule.step"
    benchmark(lambda: schedule.step(eps, 500, x, torch.randn_like(x), True))


@pytest.mark.benchmark(group="one ancestral step, batch 64, 16×16")
def test_bench_ancestral_step_diffusers(benchmark):
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    x, eps = step_inputs()
    benchmark.extra_info["label"] = "diffusers DDPMScheduler.step"
    benchmark.extra_info["baseline"] = True
    benchmark(lambda: scheduler.step(eps, 500, x))
