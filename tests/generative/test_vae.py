"""Verified against torch.distributions (Gaussian KL, Normal and Bernoulli log-probs,
in float64: forward to 1e-10, gradients to 1e-8) and against the closed-form log p(x)
of a linear-Gaussian model: ELBO ≤ IWAE_K ≤ log p(x), increasing in K, exact (1e-9)
when the encoder is the true posterior.

The reparameterisation gradient is checked against the analytic derivative of a
quadratic's expectation within 5 standard errors; the demo trains briefly and must
improve its reconstruction and report IWAE ≥ ELBO.
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.distributions import Bernoulli, MultivariateNormal, Normal, kl_divergence

from tools.literate.figures import short_band
from annotated.generative.vae import (
    VAE,
    VAEConfig,
    bernoulli_log_likelihood,
    elbo,
    example,
    gaussian_kl,
    gaussian_log_likelihood,
    iwae_bound,
    log_normal,
    main,
    reparameterise,
    train,
)

torch.set_num_threads(1)

logvars = st.floats(-60.0, 60.0)
means = st.floats(-50.0, 50.0)


@given(
    st.lists(st.tuples(means, logvars, means, logvars), min_size=1, max_size=6),
)
def test_kl_matches_torch_distributions_forward_and_gradients(rows):
    values = torch.tensor(rows, dtype=torch.float64).T.clone().requires_grad_(True)
    mu_q, logvar_q, mu_p, logvar_p = values
    ours = gaussian_kl(mu_q, logvar_q, mu_p, logvar_p)
    theirs = kl_divergence(
        Normal(mu_q, torch.exp(0.5 * logvar_q)), Normal(mu_p, torch.exp(0.5 * logvar_p))
    ).sum()
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    (got,) = torch.autograd.grad(ours, values)
    (want,) = torch.autograd.grad(theirs, values)
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8)


def test_kl_to_the_prior_at_extreme_log_variances():
    mu = torch.tensor([[0.0, 3.0, -1.0, 0.5]], dtype=torch.float64)
    logvar = torch.tensor([[-300.0, 300.0, -1e-12, 0.0]], dtype=torch.float64)
    ours = gaussian_kl(mu, logvar)
    theirs = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0))
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, theirs.sum(-1), rtol=1e-12, atol=0)
    # A code equal to the prior costs nothing.
    zero = gaussian_kl(torch.zeros(3, 5), torch.zeros(3, 5))
    assert zero.shape == (3,) and zero.abs().max() == 0


def test_reparameterised_gradient_matches_the_analytic_one():
    # E[a z² + b z] = a(μ² + σ²) + bμ: ∂/∂μ = 2aμ + b, ∂/∂logvar = aσ².
    torch.manual_seed(0)
    a, b, n = 1.5, -0.7, 20_000
    mu = torch.tensor([0.8, -2.0], dtype=torch.float64).repeat(n, 1).requires_grad_()
    logvar = torch.tensor([0.3, -1.2], dtype=torch.float64).repeat(n, 1)
    logvar.requires_grad_()
    z = reparameterise(mu, logvar)
    (a * z.square() + b * z).sum().backward()  # per-sample gradients in .grad
    sigma2 = torch.exp(logvar[0].detach())
    for grad, want in [
        (mu.grad, 2 * a * mu[0].detach() + b),
        (logvar.grad, a * sigma2),
    ]:
        error = (grad.mean(0) - want).abs()
        standard_error = grad.std(0) / math.sqrt(n)
        assert (error < 5 * standard_error).all(), (error, standard_error)
        assert (standard_error < 0.05).all()
    # The sample itself has the right mean and variance.
    torch.testing.assert_close(z.detach().mean(0), mu[0].detach(), atol=0.03, rtol=0)
    torch.testing.assert_close(z.detach().var(0), sigma2, rtol=0.05, atol=0)


def test_log_likelihoods_match_torch_distributions():
    torch.manual_seed(1)
    x = torch.rand(3, 7, dtype=torch.float64)  # grey levels, as in the lesson
    logits = (20 * torch.randn(3, 7, dtype=torch.float64)).requires_grad_()
    ours = bernoulli_log_likelihood(logits, x)
    theirs = Bernoulli(logits=logits, validate_args=False).log_prob(x).sum(-1)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        torch.autograd.grad(ours.sum(), logits)[0],
        torch.autograd.grad(theirs.sum(), logits)[0],
        rtol=1e-12,
        atol=1e-12,
    )
    mean = torch.randn(3, 7, dtype=torch.float64)
    log_sigma = torch.tensor(-1.3, dtype=torch.float64, requires_grad=True)
    ours = gaussian_log_likelihood(mean, log_sigma, x)
    theirs = Normal(mean, torch.exp(log_sigma)).log_prob(x).sum(-1)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        torch.autograd.grad(ours.sum(), log_sigma)[0],
        torch.autograd.grad(theirs.sum(), log_sigma)[0],
        rtol=1e-10,
        atol=1e-10,
    )


def test_log_normal_matches_torch_normal_forward_and_gradients():
    # The IWAE weights use log p(z) - log q(z|x), where the constant log 2π cancels, so
    # the bound alone cannot see a wrong constant: check the density itself.
    torch.manual_seed(2)
    z, mu = torch.randn(2, 4, 5, dtype=torch.float64).unbind()
    logvar = (3 * torch.randn(4, 5, dtype=torch.float64)).requires_grad_()
    ours = log_normal(z, mu, logvar)  # [4]
    theirs = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        torch.autograd.grad(ours.sum(), logvar)[0],
        torch.autograd.grad(theirs.sum(), logvar)[0],
        rtol=1e-10,
        atol=1e-10,
    )


def test_training_history_is_each_epochs_mean_reconstruction_and_kl():
    # With a learning rate of 0 the model never moves, so every epoch's KL is the mean
    # analytic KL of all the images; the reconstruction is a log-likelihood of 256
    # pixels, far below zero, and the two must not trade places.
    torch.manual_seed(0)
    model, images = VAE(), torch.rand(100, 1, 16, 16)
    history = train(model, images, epochs=2, batch_size=32, lr=0.0)
    with torch.no_grad():
        kl = gaussian_kl(*model.encode(images)).mean().item()
    assert history["kl"] == pytest.approx([kl, kl], rel=1e-5)
    assert all(value < -100 for value in history["reconstruction"])


@pytest.mark.parametrize("likelihood, sigma", [("bernoulli", None), ("gaussian", 0.2)])
def test_elbo_matches_a_torch_distributions_estimate_with_the_same_noise(
    likelihood, sigma
):
    model = VAE(
        VAEConfig(pixels=16, hidden=8, latent=3, likelihood=likelihood, sigma=sigma)
    ).double()
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    torch.manual_seed(5)
    objective, reconstruction, kl = elbo(model, x, beta=2.5)
    torch.manual_seed(5)
    mu, logvar = model.encode(x)
    q = Normal(mu, torch.exp(0.5 * logvar))
    z = mu + q.scale * torch.randn_like(mu)
    decoded = model.decoder(z)
    if likelihood == "bernoulli":
        p_x = Bernoulli(logits=decoded, validate_args=False)
    else:
        p_x = Normal(decoded, torch.exp(model.log_sigma))  # σ rounded to float32
    want_rec = p_x.log_prob(x.flatten(1)).sum(-1)
    want_kl = kl_divergence(q, Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(reconstruction, want_rec, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(kl, want_kl, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(objective, want_rec - 2.5 * want_kl)


# A linear-Gaussian VAE: p(z) = N(0, I), p(x|z) = N(Wz + b, σ²I), so
# p(x) = N(b, WWᵀ + σ²I) in closed form. The lesson's VAE with its two MLPs replaced by
# single linear layers is exactly this model.
def linear_gaussian(encoder_weight, encoder_bias, seed=0):
    torch.manual_seed(seed)
    model = VAE(VAEConfig(pixels=4, latent=2, likelihood="gaussian", sigma=0.5))
    model = model.double()
    model.decoder = nn.Linear(2, 4).double()
    # Orthogonal columns make the true posterior's covariance diagonal.
    q, _ = torch.linalg.qr(torch.randn(4, 2, dtype=torch.float64))
    with torch.no_grad():
        model.decoder.weight.copy_(q * torch.tensor([1.5, 0.8], dtype=torch.float64))
    model.encoder = nn.Linear(4, 4).double()
    with torch.no_grad():
        model.encoder.weight.copy_(encoder_weight(model))
        model.encoder.bias.copy_(encoder_bias(model))
    return model


def exact_log_px(model, x):
    w, b = model.decoder.weight.detach(), model.decoder.bias.detach()
    covariance = w @ w.T + math.exp(2 * model.log_sigma.item()) * torch.eye(
        4, dtype=torch.float64
    )
    return MultivariateNormal(b, covariance).log_prob(x.flatten(1))


def true_posterior_encoder(model):
    w = model.decoder.weight.detach()
    sigma2 = math.exp(2 * model.log_sigma.item())
    cov = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + w.T @ w / sigma2)
    gain = cov @ w.T / sigma2  # [2, 4]: posterior mean = gain (x - b)
    weight = torch.cat([gain, torch.zeros(2, 4, dtype=torch.float64)])
    bias = torch.cat([-gain @ model.decoder.bias.detach(), cov.diagonal().log()])
    return weight, bias


def test_iwae_is_exact_when_the_encoder_is_the_true_posterior():
    model = linear_gaussian(
        lambda m: true_posterior_encoder(m)[0], lambda m: true_posterior_encoder(m)[1]
    )
    x = torch.randn(6, 4, dtype=torch.float64) * 2
    log_px = exact_log_px(model, x)
    for k in (1, 7):
        torch.testing.assert_close(iwae_bound(model, x, k), log_px, rtol=0, atol=1e-9)
    # The ELBO with its closed-form KL is exact only on average: 4,000 samples each.
    with torch.no_grad():
        objective = elbo(model, x.repeat(4000, 1))[0].reshape(4000, 6)
    error = objective.std(0) / math.sqrt(4000)
    assert ((objective.mean(0) - log_px).abs() < 5 * error).all()


def test_elbo_below_iwae_k_increasing_below_exact_log_px():
    # A deliberately wrong encoder: its means are shrunk and its variances too wide.
    model = linear_gaussian(
        lambda m: torch.cat(
            [0.5 * true_posterior_encoder(m)[0][:2], torch.zeros(2, 4)]
        ),
        lambda m: torch.tensor([0.1, -0.2, 0.7, 0.4]),
    )
    torch.manual_seed(3)
    x = torch.randn(3, 4, dtype=torch.float64) * 1.5
    log_px = exact_log_px(model, x)
    replicates = 400
    repeated = x.repeat(replicates, 1)  # [replicates · 3, 4]
    with torch.no_grad():
        estimates = {
            k: iwae_bound(model, repeated, k).reshape(replicates, 3) for k in (1, 10)
        }
        estimates[1000] = iwae_bound(model, x.repeat(20, 1), 1000).reshape(20, 3)
        elbos = elbo(model, repeated)[0].reshape(replicates, 3)
    mean = {k: e.mean(0) for k, e in estimates.items()}
    error = {k: e.std(0) / math.sqrt(len(e)) for k, e in estimates.items()}
    # IWAE_1 estimates the ELBO; each K is a clear step up; all stay below log p(x).
    gap = (mean[1] - elbos.mean(0)).abs()
    assert (gap < 5 * (error[1] + elbos.std(0) / math.sqrt(replicates))).all()
    assert (mean[10] - mean[1] > 3 * (error[1] + error[10])).all()
    assert (mean[10] < log_px).all() and (log_px - mean[1] > 0.2).all()
    # A single IWAE estimate can land above log p(x); its mean cannot, beyond noise.
    assert (mean[1000] - mean[10] > 3 * (error[10] + error[1000])).all()
    assert (mean[1000] < log_px + 5 * error[1000]).all()
    assert (log_px - mean[1000] < 0.05).all()


def test_learned_and_fixed_sigma_and_state_round_trip(tmp_path):
    from safetensors.torch import load_model, save_model

    learned = VAE(VAEConfig(likelihood="gaussian"))
    fixed = VAE(VAEConfig(likelihood="gaussian", sigma=0.1))
    assert "log_sigma" in dict(learned.named_parameters())
    assert "log_sigma" not in dict(fixed.named_parameters())
    assert fixed.state_dict()["log_sigma"].item() == pytest.approx(math.log(0.1))
    x = torch.rand(3, 1, 16, 16)
    elbo(learned, x)[0].sum().backward()
    assert learned.log_sigma.grad is not None
    save_model(fixed, tmp_path / "vae.safetensors")
    other = VAE(VAEConfig(likelihood="gaussian", sigma=0.1))
    load_model(other, tmp_path / "vae.safetensors")
    torch.manual_seed(0)
    a = elbo(fixed, x)[0]
    torch.manual_seed(0)
    torch.testing.assert_close(elbo(other, x)[0], a, rtol=0, atol=0)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_mean_image_is_the_likelihoods_mean_in_the_unit_range(likelihood):
    # The Bernoulli decoder outputs logits, whose mean is their sigmoid; the Gaussian
    # one outputs the mean itself, clipped to the pixels' range for the figures.
    model = VAE(VAEConfig(likelihood=likelihood))
    z = 3 * torch.randn(64, model.config.latent)
    with torch.no_grad():
        decoded, image = model.decoder(z), model.mean_image(z)  # [64, pixels] each
    mean = decoded.sigmoid() if likelihood == "bernoulli" else decoded.clamp(0, 1)
    torch.testing.assert_close(image, mean, rtol=0, atol=0)
    if likelihood == "gaussian":
        assert (decoded < 0).any()  # the clip had something to do


def test_extreme_inputs_stay_finite():
    model = VAE()
    with torch.no_grad():
        for layer in (model.encoder[0], model.decoder[2]):
            layer.weight.mul_(200.0)
        objective, reconstruction, kl = elbo(model, torch.rand(4, 1, 16, 16))
        bound = iwae_bound(model, torch.ones(2, 1, 16, 16), 3)
    assert torch.isfinite(reconstruction).all() and torch.isfinite(bound).all()


def test_bad_inputs_raise_naming_the_argument():
    model = VAE()
    with pytest.raises(ValueError, match="expects 256"):
        elbo(model, torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.ones(2, 256, dtype=torch.long))
    with pytest.raises(ValueError, match="beta must be >= 0"):
        elbo(model, torch.rand(2, 256), beta=-1.0)
    with pytest.raises(ValueError, match="samples must be an int"):
        iwae_bound(model, torch.rand(2, 256), 0)
    with pytest.raises(ValueError, match="likelihood must be"):
        VAE(VAEConfig(likelihood="poisson"))
    with pytest.raises(ValueError, match="sigma must be positive"):
        VAE(VAEConfig(likelihood="gaussian", sigma=0.0))
    with pytest.raises(ValueError, match="same shape"):
        gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(TypeError, match="must be tensors"):
        gaussian_kl([0.0], [0.0])


def test_example_runs_and_traces():
    fn, args = example()
    decoded, mu, logvar = fn(*args)
    assert decoded.shape == (2, 256) and mu.shape == logvar.shape == (2, 2)
    torch.fx.symbolic_trace(fn)


def test_demo_learns(tmp_path):
    metric, flags, low, high = short_band("annotated/generative/vae.py")
    result = main([*flags, "--out", str(tmp_path)])
    assert low <= result[metric] <= high  # the short run's band over stored seeds
    assert result["last_epoch_reconstruction"] > result["first_epoch_reconstruction"]
    assert result["iwae"] > result["elbo"] > -180
    for name in ("loss.png", "latent.png", "interpolation.png"):
        assert (tmp_path / name).exists()


def kl_inputs():
    torch.manual_seed(0)
    return torch.randn(256, 32), torch.randn(256, 32)


@pytest.mark.benchmark(group="Gaussian KL to the prior, 256 × 32")
def test_bench_kl_ours(benchmark):
    benchmark.extra_info["label"] = "ours: closed form in log-variances"
    mu, logvar = kl_inputs()
    benchmark(gaussian_kl, mu, logvar)


@pytest.mark.benchmark(group="Gaussian KL to the prior, 256 × 32")
def test_bench_kl_torch(benchmark):
    benchmark.extra_info["label"] = "torch.distributions.kl_divergence"
    benchmark.extra_info["baseline"] = True
    mu, logvar = kl_inputs()
    prior = Normal(0.0, 1.0)
    benchmark(lambda: kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), prior).sum(-1))


def elbo_step(use_distributions):
    torch.manual_seed(0)
    model = VAE()
    x = torch.rand(64, 1, 16, 16)
    optimizer = torch.optim.Adam(model.parameters())

    def step():
        if use_distributions:
            mu, logvar = model.encode(x)
            q = Normal(mu, torch.exp(0.5 * logvar))
            p_x = Bernoulli(logits=model.decoder(q.rsample()), validate_args=False)
            kl = kl_divergence(q, Normal(0.0, 1.0)).sum(-1)
            objective = p_x.log_prob(x.flatten(1)).sum(-1) - kl
        else:
            objective = elbo(model, x)[0]
        optimizer.zero_grad()
        (-objective.mean()).backward()
        optimizer.step()

    return step


@pytest.mark.benchmark(group="VAE training step, batch 64, 16×16")
def test_bench_elbo_step_ours(benchmark):
    benchmark.extra_info["label"] = "ours: elbo()"
    benchmark(elbo_step(False))


@pytest.mark.benchmark(group="VAE training step, batch 64, 16×16")
def test_bench_elbo_step_distributions(benchmark):
    benchmark.extra_info["label"] = "torch.distributions rsample + log_prob"
    benchmark.extra_info["baseline"] = True
    benchmark(elbo_step(True))
