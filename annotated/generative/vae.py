r"""
---
title: The variational autoencoder
summary: >-
  A VAE from the evidence lower bound up: the reparameterisation trick, the closed-form
  Gaussian KL checked against torch.distributions, Bernoulli and Gaussian decoders, β,
  and the importance-weighted bound, shown exact on a linear-Gaussian model and
  reported on 16×16 digits.
time: 10 s
expected:
  metric: elbo
  short: ["--epochs", "3", "--iwae-samples", "20", "--hidden", "64"]
references:
  - key: kingma2014auto
    authors: [Diederik P. Kingma, Max Welling]
    title: Auto-Encoding Variational Bayes
    year: 2014
    venue: ICLR 2014
    arxiv: "1312.6114"
  - key: rezende2014stochastic
    authors: [Danilo Jimenez Rezende, Shakir Mohamed, Daan Wierstra]
    title: >-
      Stochastic Backpropagation and Approximate Inference in Deep Generative Models
    year: 2014
    venue: ICML 2014
    arxiv: "1401.4082"
  - key: higgins2017beta
    authors:
      - Irina Higgins
      - Loic Matthey
      - Arka Pal
      - Christopher Burgess
      - Xavier Glorot
      - Matthew Botvinick
      - Shakir Mohamed
      - Alexander Lerchner
    title: >-
      beta-VAE: Learning Basic Visual Concepts with a Constrained Variational
      Framework
    year: 2017
    venue: ICLR 2017
    url: https://openreview.net/forum?id=Sy2fzU9gl
  - key: burda2016importance
    authors: [Yuri Burda, Roger Grosse, Ruslan Salakhutdinov]
    title: Importance Weighted Autoencoders
    year: 2016
    venue: ICLR 2016
    arxiv: "1509.00519"
  - key: loaiza2019continuous
    authors: [Gabriel Loaiza-Ganem, John P. Cunningham]
    title: >-
      The continuous Bernoulli: fixing a pervasive error in variational
      autoencoders
    year: 2019
    venue: NeurIPS 2019
    arxiv: "1907.06845"
  - key: rybkin2021simple
    authors: [Oleh Rybkin, Kostas Daniilidis, Sergey Levine]
    title: Simple and Effective VAE Training with Calibrated Decoders
    year: 2021
    venue: ICML 2021
    arxiv: "2006.13202"
worksheet:
  - region: reparameterise
    hint: >-
      Draw standard normal noise shaped like mu (the only randomness, with no
      parameter in it) and return mu plus the standard deviation exp(logvar / 2) times
      that noise.
    tests: [test_reparameterised_gradient_matches_the_analytic_one]
  - region: gaussian_kl
    hint: >-
      Check the two tensors; turn mu_p and logvar_p into tensors like mu_q; per
      dimension the KL is half of (variance ratio exp(logvar_q - logvar_p) + (mu_q -
      mu_p)² exp(-logvar_p) - 1 - (logvar_q - logvar_p)), all in log-variances so
      nothing underflows; sum over the last axis.
    tests:
      - test_kl_matches_torch_distributions_forward_and_gradients
      - test_kl_to_the_prior_at_extreme_log_variances
  - region: iwae_bound
    hint: >-
      Check samples; encode once, expand mu and logvar to K copies and draw K codes
      per image; decode them; the log weight of each is log p(x|z) + log p(z) - log
      q(z|x), with both Gaussians' log densities at the samples; return the logsumexp
      over the K samples minus log K.
    tests:
      - test_iwae_is_exact_when_the_encoder_is_the_true_posterior
      - test_elbo_below_iwae_k_increasing_below_exact_log_px
---

A variational autoencoder [@kingma2014auto; @rezende2014stochastic] is a generative
model with a latent variable: draw a code $z$ from a fixed prior $p(z) = \mathcal N(0,
I)$, then an image $x$ from a decoder $p_\theta(x \mid z)$ that a neural network
parameterises. Sampling is easy. Training is not: the likelihood of an image,
$p_\theta(x) = \int p_\theta(x \mid z)\,p(z)\,dz$, is an integral over every code.

The VAE replaces that integral with a bound it can differentiate. An *encoder*
$q_\phi(z \mid x)$ guesses which codes could have made $x$, and

$$
\begin{aligned}
\log p_\theta(x) &\ge \mathbb E_{q_\phi(z\mid x)}
  \big[\log p_\theta(x \mid z)\big] \\
&\quad - \mathrm{KL}\big(q_\phi(z\mid x)\,\|\,p(z)\big)
  = \mathcal L(x),
\end{aligned}
$$

the evidence lower bound (ELBO): a reconstruction term that rewards codes which decode
back to $x$, minus a KL term that keeps the codes near the prior, so that samples from
the prior decode to something. The gap is exactly
$\mathrm{KL}(q_\phi(z\mid x)\,\|\,p_\theta(z\mid x))$, the encoder's error against the
true posterior.

This lesson builds each piece and checks it: the reparameterisation trick that lets
gradients reach the encoder, the closed-form KL of two diagonal Gaussians (against
`torch.distributions.kl_divergence`), a Bernoulli and a Gaussian decoder, the β-VAE
weight on the KL [@higgins2017beta], and the importance-weighted bound
[@burda2016importance], which the test shows is exact on a linear-Gaussian model whose
$\log p(x)$ is known in closed form. The demo trains a 2-D latent VAE on 16×16 digits in
about ten seconds and reports its test ELBO and IWAE bound in nats per image.
"""

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from annotated.data import digit_images, integer, number, torch_device
from annotated.figures import figure, save

# ## The reparameterisation trick
#
# The ELBO is an expectation under $q_\phi(z\mid x) = \mathcal N(\mu, \mathrm{diag}\,
# \sigma^2)$, whose parameters come from the encoder. A sample drawn by
# `torch.normal(mu, sigma)` is a dead end for autograd: the sampler has no
# derivative with respect to $\mu$ or $\sigma$. Write the same sample as a
# deterministic function of the parameters and of noise that does not depend on them,
#
# $$
# z = \mu + \sigma \odot \varepsilon, \qquad \varepsilon \sim \mathcal N(0, I),
# $$
#
# and $\nabla_\mu \mathbb E[f(z)] =
# \mathbb E[\nabla_\mu f(\mu + \sigma\odot\varepsilon)]$: the gradient of an average
# becomes an average of ordinary gradients, with far lower variance than the
# score-function estimator [@kingma2014auto; @rezende2014stochastic].
# The encoder outputs $\log\sigma^2$ rather than $\sigma$, so that any real number is a
# valid output; $\sigma = \exp(\tfrac12 \log\sigma^2)$.
#
# For $f(z) = a z^2 + b z$ the expectation is $a(\mu^2 + \sigma^2) + b\mu$, so
# $\partial_\mu \mathbb E f = 2a\mu + b$ and $\partial_\sigma \mathbb E f = 2a\sigma$,
# which through $\sigma = \exp(\tfrac12 \log\sigma^2)$ is
# $\partial_{\log\sigma^2} \mathbb E f = a\sigma^2$; the test checks that the
# reparameterised estimates of $\partial_\mu$ and $\partial_{\log\sigma^2}$ land on
# these within a few standard errors.


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    r"""A sample of $\mathcal N(\mu, \mathrm{diag}\,e^{\text{logvar}})$ that autograd
    can differentiate with respect to both arguments."""
    epsilon = torch.randn_like(mu)  # the noise: no parameter inside
    return mu + torch.exp(0.5 * logvar) * epsilon


# ## The KL term in closed form
#
# For two diagonal Gaussians the KL divergence needs no sampling. Per dimension, with
# $q = \mathcal N(\mu_q, \sigma_q^2)$ and $p = \mathcal N(\mu_p, \sigma_p^2)$,
#
# $$
# \begin{aligned}
# \mathrm{KL}(q\,\|\,p) = \tfrac12 \Big[&\log\sigma_p^2 - \log\sigma_q^2 \\
#   &+ \frac{\sigma_q^2 + (\mu_q - \mu_p)^2}{\sigma_p^2} - 1\Big],
# \end{aligned}
# $$
#
# summed over dimensions. Against the prior ($\mu_p = 0$, $\sigma_p = 1$) it is the
# familiar $\tfrac12\sum(\mu^2 + \sigma^2 - \log\sigma^2 - 1)$ of the VAE paper's
# Appendix B [@kingma2014auto]. Working in log-variances keeps it finite where
# $\sigma^2$ itself would underflow: the ratio $\sigma_q^2/\sigma_p^2$ is one
# `exp` of a difference, and $\log\sigma^2$ is never taken of a rounded-off zero.


def gaussian_kl(
    mu_q: torch.Tensor,
    logvar_q: torch.Tensor,
    mu_p: torch.Tensor | float = 0.0,
    logvar_p: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    r"""$\mathrm{KL}(\mathcal N(\mu_q, e^{\text{logvar}_q}) \,\|\,
    \mathcal N(\mu_p, e^{\text{logvar}_p}))$ for diagonal Gaussians, summed over the
    last dimension: `[..., latent]` → `[...]`. The defaults make $p$ the prior."""
    if not isinstance(mu_q, torch.Tensor) or not isinstance(logvar_q, torch.Tensor):
        raise TypeError("gaussian_kl: mu_q and logvar_q must be tensors")
    if mu_q.shape != logvar_q.shape or mu_q.ndim == 0:
        raise ValueError(
            f"gaussian_kl: mu_q {tuple(mu_q.shape)} and logvar_q "
            f"{tuple(logvar_q.shape)} must have the same shape [..., latent]"
        )
    mu_p = torch.as_tensor(mu_p, dtype=mu_q.dtype, device=mu_q.device)
    logvar_p = torch.as_tensor(logvar_p, dtype=mu_q.dtype, device=mu_q.device)
    variance_ratio = torch.exp(logvar_q - logvar_p)  # σ_q² / σ_p²
    mean_term = (mu_q - mu_p).square() * torch.exp(-logvar_p)
    per_dimension = 0.5 * (variance_ratio + mean_term - 1.0 - (logvar_q - logvar_p))
    return per_dimension.sum(dim=-1)


# ## Two decoders
#
# The reconstruction term $\log p_\theta(x\mid z)$ depends on what the decoder claims
# the pixels are.
#
# **Bernoulli.** The decoder outputs one logit $\ell_i$ per pixel and
#
# $$
# \begin{aligned}
# \log p(x\mid z) = \sum_i \big[&x_i \log s(\ell_i) \\
#   &+ (1 - x_i)\log(1 - s(\ell_i))\big],
# \end{aligned}
# $$
#
# minus the binary cross-entropy; `F.binary_cross_entropy_with_logits` computes it
# without forming $s(\ell)$, which would round to 0 or 1 for large logits. A Bernoulli
# is a distribution on $\{0, 1\}$. Our digits are grey levels in $[0, 1]$, and feeding
# them to the same formula is a common abuse: as a function of a continuous $x$ it does
# not integrate to one, so the "nats" it reports are not a log-likelihood, and the best
# decoder for a pixel of 0.5 is a logit of 0 that says "black or white, equally likely".
# The continuous Bernoulli adds the missing normaliser [@loaiza2019continuous];
# binarising the data (sampling each pixel from its grey level) makes the Bernoulli
# honest. We keep the common version, as most tutorials do, and say so where we print
# its numbers.
#
# **Gaussian.** The decoder outputs a mean per pixel, and
# $\log p(x\mid z) = -\sum_i \big[\tfrac{(x_i - m_i)^2}{2\sigma^2} + \log\sigma +
# \tfrac12\log 2\pi\big]$. A fixed $\sigma$ turns the term into a scaled squared error,
# and $\sigma$ silently acts as a β: a small $\sigma$ makes reconstruction dominate the
# KL. Learning one shared $\log\sigma$ with the rest lets the data set the balance
# [@rybkin2021simple]. This is a density on continuous pixels, so its nats can be
# positive and are not comparable with the Bernoulli's.


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r"""$\log p(x\mid z)$ per image for pixel `logits` and `x`, both `[batch, pixels]`:
    minus the binary cross-entropy, summed over pixels."""
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def gaussian_log_likelihood(
    mean: torch.Tensor, log_sigma: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    r"""$\log \mathcal N(x; \text{mean}, \sigma^2 I)$ per image, for `mean` and `x`
    `[batch, pixels]` and a scalar `log_sigma`."""
    squared = (x - mean).square() * torch.exp(-2.0 * log_sigma)
    per_pixel = 0.5 * squared + log_sigma + 0.5 * math.log(2.0 * math.pi)
    return -per_pixel.sum(-1)


# ## The model
#
# Both networks are small MLPs on flattened 16×16 images. The encoder ends in
# $2 \times$`latent` numbers, read as $\mu$ and $\log\sigma^2$; the decoder maps a code
# back to one number per pixel, a logit or a mean. `VAEConfig` holds every choice the
# demo's flags expose; `sigma=None` with the Gaussian decoder means "learn it".
#
# `flatten_images` is the one place that checks an input's shape. `torch.fx.wrap`
# makes the tracer that draws this page's dataflow diagram record it as one node, so
# the check can read real shapes.


@dataclass
class VAEConfig:
    """The hyperparameters of `VAE`."""

    pixels: int = 256  # 16 × 16, flattened
    hidden: int = 256  # width of the hidden layer in both networks
    latent: int = 2  # dimension of z
    likelihood: str = "bernoulli"  # "bernoulli" or "gaussian"
    sigma: float | None = None  # Gaussian decoder's fixed std; None learns it


@torch.fx.wrap
def flatten_images(x: torch.Tensor, pixels: int) -> torch.Tensor:
    """`x [batch, ...]` with `pixels` values per image, as `[batch, pixels]`."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2:
        raise ValueError(
            f"x must be a floating-point tensor [batch, ...], got "
            f"{getattr(x, 'shape', type(x).__name__)} {getattr(x, 'dtype', '')}"
        )
    if x[0].numel() != pixels:
        raise ValueError(
            f"x has {x[0].numel()} values per image {tuple(x.shape[1:])}; "
            f"the model expects {pixels}"
        )
    return x.flatten(1)


class VAE(nn.Module):
    r"""Encoder $q_\phi(z\mid x)$, decoder $p_\theta(x\mid z)$, prior
    $\mathcal N(0, I)$."""

    def __init__(self, config: VAEConfig = VAEConfig()):
        super().__init__()
        if config.likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(
                f"likelihood must be 'bernoulli' or 'gaussian', got "
                f"{config.likelihood!r}"
            )
        if config.sigma is not None and not config.sigma > 0:
            raise ValueError(f"sigma must be positive or None, got {config.sigma!r}")
        self.config = config
        self.encoder = nn.Sequential(
            nn.Linear(config.pixels, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, 2 * config.latent),
        )
        self.decoder = nn.Sequential(
            nn.Linear(config.latent, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, config.pixels),
        )
        # The Gaussian decoder's log σ: a parameter when learned, a buffer when fixed
        # (it moves with .to(device) and is saved either way).
        log_sigma = torch.tensor(math.log(config.sigma or 1.0))
        if config.sigma is None:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`x [batch, ...]` → `mu, logvar`, each `[batch, latent]`."""
        flat = flatten_images(x, self.config.pixels)  # [batch, pixels]
        mu, logvar = self.encoder(flat).chunk(2, dim=-1)  # [batch, latent] each
        return mu, logvar

    def log_likelihood(self, x: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
        r"""$\log p_\theta(x\mid z)$ per image, for `x [batch, pixels]` and the
        decoder's output `decoded [batch, pixels]`."""
        if self.config.likelihood == "bernoulli":
            return bernoulli_log_likelihood(decoded, x)
        return gaussian_log_likelihood(decoded, self.log_sigma, x)

    def mean_image(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's mean pixel values for codes `z [batch, latent]`: what the
        figures show. `[batch, pixels]`."""
        decoded = self.decoder(z)
        if self.config.likelihood == "bernoulli":
            return torch.sigmoid(decoded)
        return decoded.clamp(0.0, 1.0)

    def forward(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One pass with one sampled code: `(decoded [batch, pixels], mu, logvar)`."""
        mu, logvar = self.encode(x)  # [batch, latent] each
        z = reparameterise(mu, logvar)  # [batch, latent]
        return self.decoder(z), mu, logvar  # [batch, pixels], ...


# ## The ELBO, and β
#
# With one reparameterised sample per image, the ELBO estimate is the reconstruction
# term at that sample minus the closed-form KL. Only the first term is noisy; using the
# exact KL rather than a sampled $\log q - \log p$ is the variance reduction the VAE
# paper recommends [@kingma2014auto].
#
# The β-VAE [@higgins2017beta] trains on $\mathbb E_q[\log p(x\mid z)] -
# \beta\,\mathrm{KL}$. With $\beta > 1$ the codes are pushed harder toward the prior,
# which the paper found yields more disentangled, axis-aligned factors at the price of
# blurrier reconstructions; with $\beta < 1$ the objective is no longer a lower bound on
# $\log p(x)$. `elbo` returns the two terms separately so that the demo can plot them,
# and the objective for the given β; the demo always reports the β = 1 bound.


def elbo(
    model: VAE, x: torch.Tensor, beta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image: `(objective, reconstruction, kl)`, each `[batch]`, where
    objective = reconstruction − β·kl, with one sample of $z$ per image."""
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")
    decoded, mu, logvar = model(x)  # [batch, pixels], [batch, latent] × 2
    reconstruction = model.log_likelihood(x.flatten(1), decoded)  # [batch]
    kl = gaussian_kl(mu, logvar)  # [batch]
    return reconstruction - beta * kl, reconstruction, kl


# ## A tighter bound: importance weighting
#
# The ELBO is $\mathbb E_q[\log w]$ with the importance weight
# $w = p_\theta(x, z)/q_\phi(z\mid x)$, and $\mathbb E_q[w] = p_\theta(x)$ exactly.
# Moving the log outside an average of $K$ weights gives the IWAE bound
# [@burda2016importance]:
#
# $$
# \begin{aligned}
# \mathcal L_K(x) &= \mathbb E\Big[\log \frac1K \sum_{k=1}^K w_k\Big], \\
# \mathcal L_1 &= \mathcal L \le \mathcal L_K \le \mathcal L_{K+1}
#   \le \log p_\theta(x).
# \end{aligned}
# $$
#
# with $z_1, \dots, z_K$ drawn from $q_\phi(z\mid x)$. Each inequality is Jensen's,
# and $\mathcal L_K \to \log p_\theta(x)$ as
# $K \to \infty$; if $q$ were the true posterior every $w_k$ would equal $p_\theta(x)$
# and the bound would be exact for any $K$. That makes it the standard way to report a
# VAE's likelihood: train with the ELBO, evaluate with a large $K$. The average is taken
# in log space with `logsumexp`, since the weights themselves are $e^{-100}$ or so for
# a 256-pixel image (the demo's bound is about $-104$ nats), below float32's smallest
# normal number, $e^{-87}$. Here every term is sampled, the KL included, because the
# weights need $\log q(z_k\mid x)$ and $\log p(z_k)$ at the samples themselves.


def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    r"""$\log \mathcal N(z; \mu, \mathrm{diag}\,e^{\text{logvar}})$, summed over the
    last dimension."""
    squared = (z - mu).square() * torch.exp(-logvar)
    return -0.5 * (squared + logvar + math.log(2.0 * math.pi)).sum(-1)


@torch.no_grad()
def iwae_bound(model: VAE, x: torch.Tensor, samples: int) -> torch.Tensor:
    r"""$\mathcal L_K(x)$ per image with $K$ = `samples`: `[batch]` nats."""
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an int >= 1, got {samples!r}")
    mu, logvar = model.encode(x)  # [batch, latent] each
    flat = x.flatten(1)  # [batch, pixels]
    mu_k = mu.expand(samples, *mu.shape)  # [K, batch, latent]
    logvar_k = logvar.expand(samples, *logvar.shape)
    z = reparameterise(mu_k, logvar_k)  # [K, batch, latent]
    decoded = model.decoder(z)  # [K, batch, pixels]
    log_p_x_given_z = model.log_likelihood(flat.expand_as(decoded), decoded)  # [K, B]
    log_p_z = log_normal(z, torch.zeros_like(z), torch.zeros_like(z))  # [K, batch]
    log_q_z = log_normal(z, mu_k, logvar_k)  # [K, batch]
    log_w = log_p_x_given_z + log_p_z - log_q_z  # [K, batch]
    return torch.logsumexp(log_w, dim=0) - math.log(samples)  # [batch]


# ## Training on digits
#
# Plain Adam on the negative β-ELBO, averaged over a mini-batch. The demo records the
# two terms per epoch, so the figure can show how the KL rises as the encoder starts to
# use its codes while the reconstruction improves.


def train(
    model: VAE,
    images: torch.Tensor,
    epochs: int,
    beta: float = 1.0,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Train `model` in place on `images [n, 1, 16, 16]`; returns the per-epoch means of
    the reconstruction term and of the KL (nats per image)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    history = {"reconstruction": [], "kl": []}
    model.train()
    for _ in tqdm(range(epochs), desc="epochs"):
        order = torch.randperm(len(images), generator=generator)
        totals = torch.zeros(2)
        for start in range(0, len(images), batch_size):
            batch = images[order[start : start + batch_size]]
            objective, reconstruction, kl = elbo(model, batch, beta)
            loss = -objective.mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            totals += torch.stack([reconstruction.sum(), kl.sum()]).detach().cpu()
        history["reconstruction"].append(totals[0].item() / len(images))
        history["kl"].append(totals[1].item() / len(images))
    return history


def example():
    """A small example: the default VAE on two random 16×16 images."""
    torch.manual_seed(0)
    return VAE(), (torch.rand(2, 1, 16, 16),)


def mosaic(images: torch.Tensor) -> np.ndarray:
    """`images [rows, columns, side, side]` tiled into one `[rows·side,
    columns·side]` array."""
    rows, columns, side, _ = images.shape
    return images.permute(0, 2, 1, 3).reshape(rows * side, columns * side).numpy()


def plot_losses(history: dict[str, list[float]], beta: float, out: Path) -> Path:
    """The two terms of the ELBO per epoch."""
    fig, (left, right) = figure(panels=2)
    epochs = np.arange(1, len(history["kl"]) + 1)
    left.plot(epochs, [-r for r in history["reconstruction"]], color="C0")
    left.set_title(r"reconstruction $-\mathbb{E}_q[\log p(x\mid z)]$")
    right.plot(epochs, history["kl"], color="C1")
    right.set_title(r"$\mathrm{KL}(q(z\mid x)\,\|\,p(z))$")
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per image")
    return save(
        fig,
        out / "loss.png",
        caption=f"The training loss split in two (β = {beta:g}): the reconstruction "
        "error falls while the KL rises as the encoder learns to use its codes.",
    )


@torch.no_grad()
def plot_latent(model: VAE, x_test, y_test, out: Path, side: int = 16) -> Path:
    """The decoded 2-D latent grid beside the test digits' codes."""
    model.eval()
    # Grid points at Gaussian quantiles, so that each cell holds equal prior mass.
    quantiles = torch.linspace(0.05, 0.95, 12)
    values = torch.distributions.Normal(0.0, 1.0).icdf(quantiles)  # [12]
    first, second = torch.meshgrid(values, values.flip(0), indexing="xy")
    device = next(model.parameters()).device
    z = torch.zeros(144, model.config.latent, device=device)
    z[:, 0], z[:, 1] = first.reshape(-1), second.reshape(-1)
    images = model.mean_image(z).cpu().reshape(12, 12, side, side)
    mu, _ = model.encode(x_test)
    fig, (left, right) = figure(panels=2)
    left.imshow(mosaic(images), cmap="gray_r", vmin=0, vmax=1)
    left.set_title(r"decoded grid, $z_1, z_2 \in [-1.64, 1.64]$")
    left.set_xticks([])
    left.set_yticks([])
    left.set_xlabel(r"$z_1$, rising to the right")
    left.set_ylabel(r"$z_2$, rising upwards")
    mu = mu.cpu().numpy()
    points = right.scatter(mu[:, 0], mu[:, 1], c=y_test, cmap="tab10", s=6)
    fig.colorbar(points, ax=right, label="digit", ticks=range(10))
    right.set_xlabel(r"$\mu_1$")
    right.set_ylabel(r"$\mu_2$")
    right.set_title("encoder means of the test digits")
    return save(
        fig,
        out / "latent.png",
        caption="Left: the decoder's mean image at a 12×12 grid of codes spaced at "
        "the prior's quantiles (other dimensions at 0). Right: where the encoder "
        "puts each test digit, coloured by its label.",
    )


@torch.no_grad()
def plot_interpolations(model: VAE, x_test, out: Path, side: int = 16) -> Path:
    """Straight lines in latent space between pairs of test digits, decoded."""
    model.eval()
    pairs = [(0, 1), (2, 3), (4, 5), (6, 7)]
    mu, _ = model.encode(x_test[: 2 * len(pairs)])  # [8, latent]
    weights = torch.linspace(0.0, 1.0, 8, device=mu.device)[None, :, None]  # [1, 8, 1]
    starts, ends = mu[[a for a, _ in pairs]], mu[[b for _, b in pairs]]
    z = starts[:, None] + weights * (ends - starts)[:, None]  # [4, 8, latent]
    decoded = model.mean_image(z.reshape(-1, model.config.latent)).cpu()
    decoded = decoded.reshape(len(pairs), 8, side, side)
    originals = x_test[: 2 * len(pairs)].cpu().reshape(len(pairs), 2, side, side)
    rows = torch.cat([originals[:, :1], decoded, originals[:, 1:]], dim=1)
    fig, ax = figure()
    ax.imshow(mosaic(rows), cmap="gray_r", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("test digit, 8 decoded steps between the codes, test digit")
    return save(
        fig,
        out / "interpolation.png",
        caption="Four pairs of test digits (first and last column) and the decoder's "
        "mean images at eight evenly spaced points on the line between their codes.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train a VAE on 16×16 digits, report the test ELBO and IWAE bound, draw the
    figures."""
    parser = argparse.ArgumentParser(
        description="Train a variational autoencoder on 16×16 digits.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--epochs", type=integer(at_least=1), default=60, help="training epochs"
    )
    parser.add_argument(
        "--latent", type=integer(at_least=2), default=2, help="latent dimension (>= 2)"
    )
    parser.add_argument(
        "--hidden", type=integer(at_least=1), default=256, help="hidden layer width"
    )
    parser.add_argument(
        "--beta", type=number(at_least=0), default=1.0, help="weight on the KL term"
    )
    parser.add_argument(
        "--likelihood",
        choices=["bernoulli", "gaussian"],
        default="bernoulli",
        help="the decoder's distribution over pixels",
    )
    parser.add_argument(
        "--sigma",
        type=number(above=0),
        default=None,
        help="fixed std of the Gaussian decoder; omit to learn it",
    )
    parser.add_argument(
        "--iwae-samples",
        type=integer(at_least=1),
        default=500,
        help="K of the IWAE test bound",
    )
    parser.add_argument(
        "--batch-size", type=integer(at_least=1), default=64, help="mini-batch size"
    )
    parser.add_argument(
        "--lr", type=number(above=0), default=2e-3, help="Adam learning rate"
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to train on",
    )
    parser.add_argument("--out", default="out/vae", help="folder for the figures")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    x_train, _, x_test, y_test = digit_images(size=16, seed=args.seed)
    x_train = torch.from_numpy(x_train).to(args.device)  # [1438, 1, 16, 16]
    x_test = torch.from_numpy(x_test).to(args.device)  # [359, 1, 16, 16]

    config = VAEConfig(
        hidden=args.hidden,
        latent=args.latent,
        likelihood=args.likelihood,
        sigma=args.sigma,
    )
    model = VAE(config).to(args.device)
    history = train(
        model, x_train, args.epochs, args.beta, args.batch_size, args.lr, args.seed
    )
    model.eval()
    with torch.no_grad():
        _, reconstruction, kl = elbo(model, x_test)
        test_elbo = (reconstruction - kl).mean().item()
        iwae = torch.cat(
            [iwae_bound(model, batch, args.iwae_samples) for batch in x_test.split(32)]
        )
    test_iwae = iwae.mean().item()
    note = " (Bernoulli on grey pixels)" if args.likelihood == "bernoulli" else ""
    mean_reconstruction, mean_kl = reconstruction.mean().item(), kl.mean().item()
    print(f"test reconstruction {mean_reconstruction:.2f}, KL {mean_kl:.2f}")
    print(f"test ELBO {test_elbo:.2f} nats per image{note}")
    print(f"test IWAE bound, K={args.iwae_samples}: {test_iwae:.2f} nats per image")
    plot_losses(history, args.beta, out)
    plot_latent(model, x_test, y_test, out)
    plot_interpolations(model, x_test, out)
    return {
        "elbo": test_elbo,
        "iwae": test_iwae,
        "kl": mean_kl,
        "first_epoch_reconstruction": history["reconstruction"][0],
        "last_epoch_reconstruction": history["reconstruction"][-1],
    }


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Binarise the digits on the fly (`torch.bernoulli(batch)` each step) so that the
#    Bernoulli decoder is an honest likelihood. How do the test ELBO and the gap to the
#    IWAE bound change?
# 2. Train with `--beta 4` and `--latent 8`, then decode a sweep of one latent
#    dimension at a time with the others at 0. Do single dimensions now control single
#    features (slant, width, thickness) more cleanly than at β = 1?
# 3. Train on the IWAE bound itself with $K = 5$ (the loss is `-iwae_bound(...)` without
#    `no_grad`). Burda et al. report that it uses more latent dimensions: count the
#    dimensions whose average KL exceeds 0.01 nats.
# 4. Switch to `--likelihood gaussian` with `--sigma 1.0`, then `--sigma 0.05`. Explain
#    the blurry or the over-fitted samples you get in terms of an effective β.
