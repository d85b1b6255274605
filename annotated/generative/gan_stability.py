r"""
---
title: Stabilising GAN training
summary: >-
  Spectral normalisation by power iteration, the WGAN-GP gradient penalty, one-sided
  label smoothing, two time-scale learning rates and an EMA of the generator, each
  checked against PyTorch; then a plain GAN whose samples collapse into one clump on a
  ring of eight Gaussians against a stabilised one that covers all eight.
time: 25 s
expected:
  metric: stabilised_quality
  short: ["--steps", "300", "--every", "50"]
references:
  - key: goodfellow2014generative
    authors:
      - Ian Goodfellow
      - Jean Pouget-Abadie
      - Mehdi Mirza
      - Bing Xu
      - David Warde-Farley
      - Sherjil Ozair
      - Aaron Courville
      - Yoshua Bengio
    title: Generative Adversarial Nets
    year: 2014
    venue: NeurIPS 2014
    arxiv: "1406.2661"
  - key: metz2017unrolled
    authors: [Luke Metz, Ben Poole, David Pfau, Jascha Sohl-Dickstein]
    title: Unrolled Generative Adversarial Networks
    year: 2017
    venue: ICLR 2017
    arxiv: "1611.02163"
  - key: arjovsky2017towards
    authors: [Martin Arjovsky, Léon Bottou]
    title: Towards Principled Methods for Training Generative Adversarial Networks
    year: 2017
    venue: ICLR 2017
    arxiv: "1701.04862"
  - key: arjovsky2017wasserstein
    authors: [Martin Arjovsky, Soumith Chintala, Léon Bottou]
    title: Wasserstein Generative Adversarial Networks
    year: 2017
    venue: ICML 2017
    arxiv: "1701.07875"
  - key: gulrajani2017improved
    authors:
      - Ishaan Gulrajani
      - Faruk Ahmed
      - Martin Arjovsky
      - Vincent Dumoulin
      - Aaron Courville
    title: Improved Training of Wasserstein GANs
    year: 2017
    venue: NeurIPS 2017
    arxiv: "1704.00028"
  - key: miyato2018spectral
    authors: [Takeru Miyato, Toshiki Kataoka, Masanori Koyama, Yuichi Yoshida]
    title: Spectral Normalization for Generative Adversarial Networks
    year: 2018
    venue: ICLR 2018
    arxiv: "1802.05957"
  - key: salimans2016improved
    authors:
      - Tim Salimans
      - Ian Goodfellow
      - Wojciech Zaremba
      - Vicki Cheung
      - Alec Radford
      - Xi Chen
    title: Improved Techniques for Training GANs
    year: 2016
    venue: NeurIPS 2016
    arxiv: "1606.03498"
  - key: heusel2017gans
    authors:
      - Martin Heusel
      - Hubert Ramsauer
      - Thomas Unterthiner
      - Bernhard Nessler
      - Sepp Hochreiter
    title: >-
      GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
      Equilibrium
    year: 2017
    venue: NeurIPS 2017
    arxiv: "1706.08500"
  - key: yazici2019unusual
    authors:
      - Yasin Yazıcı
      - Chuan-Sheng Foo
      - Stefan Winkler
      - Kim-Hui Yap
      - Georgios Piliouras
      - Vijay Chandrasekhar
    title: The Unusual Effectiveness of Averaging in GAN Training
    year: 2019
    venue: ICLR 2019
    arxiv: "1806.04498"
  - key: srivastava2017veegan
    authors:
      - Akash Srivastava
      - Lazar Valkov
      - Chris Russell
      - Michael U. Gutmann
      - Charles Sutton
    title: >-
      VEEGAN: Reducing Mode Collapse in GANs using Implicit Variational Learning
    year: 2017
    venue: NeurIPS 2017
    arxiv: "1705.07761"
worksheet:
  - region: power_iteration
    hint: >-
      Without recording gradients, repeat `rounds` times: u becomes W v normalised,
      then v becomes W^T u normalised (F.normalize with eps), written into the given
      tensors in place.
    tests:
      - test_sigma_estimate_converges_to_svdvals
      - test_spectral_norm_matches_torch_step_by_step
  - region: SpectralNorm.forward
    hint: >-
      Flatten the weight to [out, -1]; in training mode run `rounds` rounds of power
      iteration on the stored u and v; then divide the weight by u^T W v computed with
      clones of u and v, so autograd treats them as constants and a second forward
      pass cannot overwrite what the first saved.
    tests:
      - test_spectral_norm_matches_torch_step_by_step
      - test_gradient_through_w_over_sigma_matches_the_closed_form
  - region: gradient_penalty
    hint: >-
      Check the shapes; draw one uniform epsilon per sample, interpolate between the
      detached real and fake points, make the interpolates require grad, score them,
      and take the gradient of the summed scores with respect to them with
      create_graph=True (so the penalty can be differentiated again); return the mean
      of (per-sample gradient norm - 1) squared.
    tests:
      - test_gradient_penalty_matches_torch_func_value_and_weight_gradient
      - test_gradient_penalty_of_a_linear_critic_is_exact
---

The [DCGAN lesson](dcgan.md) trains a generator $G$ and a discriminator $D$ in
alternating gradient steps on the game of Goodfellow et al.
[@goodfellow2014generative]. Alternating gradient steps are not guaranteed to find the
game's equilibrium, and in practice they fail in two recognisable ways. The
discriminator becomes too sharp: where the real and generated distributions barely
overlap, a near-perfect $D$ exists and its gradients either vanish or explode
[@arjovsky2017towards]. And the generator *collapses*: it learns that one kind of
output fools the current $D$, puts all its samples there, and when $D$ catches up it
jumps to another, never covering the data [@metz2017unrolled].

This lesson builds the standard remedies and checks each against PyTorch:

- **spectral normalisation** [@miyato2018spectral], which divides every weight matrix
  of $D$ by its largest singular value, found by power iteration, so that $D$ cannot be
  steeper than 1 (checked step by step against
  `torch.nn.utils.parametrizations.spectral_norm` on linear and convolution layers);
- the **gradient penalty** of WGAN-GP
  [@arjovsky2017wasserstein; @gulrajani2017improved], which asks for the same slope
  softly (checked against `torch.func` and finite differences);
- **one-sided label smoothing** [@salimans2016improved], **two time-scale** learning
  rates [@heusel2017gans], and an **exponential moving average** of the generator's
  weights [@yazici2019unusual] (checked against `torch.optim.swa_utils.AveragedModel`).

The demo trains two small GANs on the classic test of mode collapse, eight Gaussians
on a ring [@metz2017unrolled], and counts the modes each one covers. The plain GAN,
in the setting Metz et al. used, collapses: its samples gather in one clump that
wanders around the ring, mostly between modes, so that it covers at most one mode at
any check in the second half of training and one at the end; the stabilised one
(spectral norm, two time scales, label smoothing, EMA) covers all eight within 3,000
rounds. The two runs take about 25 seconds together on 2 CPU cores.
"""

import argparse
import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.patches import Circle
from torch import nn
from torch.nn.utils import parametrize
from tqdm import tqdm

from annotated.data import integer, number, torch_device
from annotated.figures import figure, save

# ## The test bed: eight Gaussians on a ring
#
# Images hide mode collapse: a generator that draws only good 7s and 1s can look
# fine. A two-dimensional mixture makes it countable. The data are $K = 8$ Gaussians
# with centres $\mu_k = r(\cos 2\pi k/K, \sin 2\pi k/K)$ on a circle of radius $r=2$,
# each with standard deviation $\sigma$ in both coordinates and weight $1/K$
# [@metz2017unrolled]. We use $\sigma = 0.05$; the unrolled-GAN paper used 0.02,
# which needs far more training than this lesson's half minute to hit.


def ring_centres(modes: int = 8, radius: float = 2.0) -> torch.Tensor:
    r"""The `modes` centres $\mu_k$, evenly spaced on a circle: `[modes, 2]`."""
    angles = 2 * math.pi * torch.arange(modes, dtype=torch.float64) / modes
    return radius * torch.stack([angles.cos(), angles.sin()], dim=1).float()


def sample_ring(
    n: int,
    modes: int = 8,
    radius: float = 2.0,
    std: float = 0.05,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """`n` points of the mixture: a uniform choice of centre plus Gaussian noise,
    `[n, 2]`."""
    if not isinstance(n, int) or n < 1 or not isinstance(modes, int) or modes < 1:
        raise ValueError(f"n and modes must be ints >= 1, got n={n!r}, modes={modes!r}")
    if std < 0:
        raise ValueError(f"std must be >= 0, got {std!r}")
    which = torch.randint(0, modes, (n,), generator=generator)  # [n]
    noise = std * torch.randn(n, 2, generator=generator)  # [n, 2]
    return ring_centres(modes, radius)[which] + noise


# ## Counting modes
#
# We follow Srivastava et al. [@srivastava2017veegan]: a sample is
# **high quality** if it lies within $3\sigma$ of some centre (99 % of a real mode's
# points do, since the squared distance over $\sigma^2$ is $\chi^2_2$ and
# $P(\chi^2_2 \le 9) = 1 - e^{-4.5} = 0.989$), and a mode is **covered** if it receives
# at least a minimum number of the high-quality samples; we ask for a quarter of its
# fair share, $n/(4K)$ of $n$ samples. A
# collapsed generator scores 1 mode; a perfect one scores $K$ modes and 0.989 quality.


def mode_coverage(
    samples: torch.Tensor, centres: torch.Tensor, std: float, min_share: float = 0.25
) -> dict:
    """How many of `centres [K, 2]` the `samples [n, 2]` cover, and the fraction of
    samples within 3 `std` of a centre. Returns `{"modes", "high_quality",
    "counts"}`."""
    if samples.ndim != 2 or samples.shape[1] != centres.shape[1] or len(samples) < 1:
        raise ValueError(
            f"samples must be [n >= 1, {centres.shape[1]}] points, "
            f"got {tuple(samples.shape)}"
        )
    if not std > 0:
        raise ValueError(f"std must be > 0, got {std!r}")
    distances = torch.cdist(samples.double(), centres.double())  # [n, K]
    nearest_distance, nearest = distances.min(dim=1)  # [n], [n]
    good = nearest_distance <= 3 * std  # [n]
    counts = torch.bincount(nearest[good], minlength=len(centres))  # [K]
    needed = min_share * len(samples) / len(centres)
    return {
        "modes": int((counts >= needed).sum()),
        "high_quality": good.double().mean().item(),
        "counts": counts,
    }


# ## Spectral normalisation
#
# A function $f$ is $L$-Lipschitz if $\|f(x) - f(y)\| \le L\|x - y\|$. For a linear
# layer $x \mapsto Wx$ the smallest such $L$ is the largest singular value
# $\sigma(W)$, and ReLU and leaky ReLU are 1-Lipschitz, so a network of layers
# $W_1, \dots, W_n$ is at most $\prod_i \sigma(W_i)$-Lipschitz. Miyato et al.
# [@miyato2018spectral] divide every weight of $D$ by its largest singular value,
#
# $$
# \bar W = W / \sigma(W), \qquad \sigma(W) = \max_{\|v\| = 1} \|Wv\|,
# $$
#
# so that $D$ is at most 1-Lipschitz whatever its weights: it can no longer become
# steep enough to separate the two distributions perfectly, and its gradients stay on
# the order of 1.
#
# ### Power iteration with a persistent vector
#
# An SVD of every weight at every step would be expensive. Power iteration finds the
# top singular pair with matrix-vector products: from unit vectors $u, v$,
#
# $$
# \begin{aligned}
# u &\leftarrow \frac{W v}{\|W v\|}, \qquad
#   v \leftarrow \frac{W^\top u}{\|W^\top u\|}, \\
# \sigma &\approx u^\top W v,
# \end{aligned}
# $$
#
# converging at the rate $(\sigma_2/\sigma_1)^2$ per round. The trick that makes it
# nearly free is to keep $u$ and $v$ between training steps: the weights move a little
# per step, so yesterday's $u$ is already close, and **one** round per forward pass
# keeps up. The demo prints the estimates against `torch.linalg.svdvals`: after 3,000
# rounds they are within 1 % (0.8 % for the middle layer); after 300 rounds, while the
# weights still move fast, the middle layer's lagged by about 5 % in one run here and
# by 11 % in another. A convolution's weight
# `[out, in, k, k]` is flattened to the matrix `[out, in·k·k]`, as PyTorch does; its
# $\sigma$ bounds the map on each patch, not the whole convolution, a cheap proxy the
# paper accepts.
#
# `F.normalize` divides by $\max(\|x\|, \epsilon)$, so a zero weight gives a zero
# vector instead of a division by zero. The loop runs without autograd and writes the
# vectors in place, because they are state (buffers), not functions of the weight.


def power_iteration(
    matrix: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    rounds: int,
    eps: float = 1e-12,
) -> None:
    """`rounds` rounds of power iteration on `matrix [m, n]`, updating the unit vectors
    `u [m]` and `v [n]` in place."""
    with torch.no_grad():
        for _ in range(rounds):
            u.copy_(F.normalize(torch.mv(matrix, v), dim=0, eps=eps))
            v.copy_(F.normalize(torch.mv(matrix.T, u), dim=0, eps=eps))


# ### What the gradient sees
#
# $u$ and $v$ are treated as constants when autograd differentiates
# $\bar W = W / (u^\top W v)$, as in the paper. Then
# $\partial \sigma / \partial W = u v^\top$ and
#
# $$
# \begin{aligned}
# \frac{\partial L}{\partial W} &= \frac{1}{\sigma}\big(G - \langle G, \bar W\rangle\,
#   u v^\top\big), \\
# G &= \frac{\partial L}{\partial \bar W},
# \end{aligned}
# $$
#
# with $\langle G, \bar W\rangle = \sum_{ij} G_{ij}\bar W_{ij}$: the gradient loses
# its component along $W$ itself ($\langle \partial L/\partial W, W\rangle = 0$), so a
# step cannot simply scale the weight up.
#
# The forward pass uses *clones* of the buffers: a GAN step evaluates $D$ twice (on
# real and on fake images) before one backward, and the second evaluation's in-place
# update of $u$ would otherwise corrupt the tensors the first one saved for backward.
#
# `SpectralNorm` is a *parametrization*: `torch.nn.utils.parametrize` stores the
# layer's raw weight as `parametrizations.weight.original` and recomputes
# `layer.weight` as `SpectralNorm(original)` on every access, which is how PyTorch's
# own `spectral_norm` is built. Like PyTorch's, ours starts from random unit vectors
# and runs 15 rounds at construction, so that the first forward pass is already
# close; in `eval()` mode it stops iterating and uses the stored vectors.


def top_singular_value(
    matrix: torch.Tensor, u: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    r"""The power-iteration estimate $u^\top W v$ of `matrix`'s largest singular
    value."""
    return torch.dot(u, torch.mv(matrix, v))


class SpectralNorm(nn.Module):
    r"""The parametrization $W \mapsto W / \sigma(W)$, with $\sigma$ from power
    iteration on the weight flattened to `[out, -1]`."""

    def __init__(self, weight: torch.Tensor, rounds: int = 1, eps: float = 1e-12):
        super().__init__()
        self.rounds = rounds
        self.eps = eps
        matrix = weight.detach().flatten(1)  # [out, in·k·k]
        u = F.normalize(matrix.new_empty(matrix.shape[0]).normal_(), dim=0, eps=eps)
        v = F.normalize(matrix.new_empty(matrix.shape[1]).normal_(), dim=0, eps=eps)
        self.register_buffer("u", u)  # [out]
        self.register_buffer("v", v)  # [in·k·k]
        power_iteration(matrix, self.u, self.v, 15, eps)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        matrix = weight.flatten(1)  # [out, in·k·k]
        if self.training:
            power_iteration(matrix, self.u, self.v, self.rounds, self.eps)
        u, v = self.u.clone(), self.v.clone()  # constants for autograd
        return weight / top_singular_value(matrix, u, v)


def spectral_norm(module: nn.Module, rounds: int = 1) -> nn.Module:
    """Register `SpectralNorm` on `module.weight` (a Linear or Conv layer); returns
    `module`, like `torch.nn.utils.parametrizations.spectral_norm`."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim < 2:
        raise ValueError(
            "spectral_norm: module must have a weight with >= 2 dimensions "
            f"(a Linear or Conv layer), got {type(module).__name__}"
        )
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"spectral_norm: rounds must be an int >= 1, got {rounds!r}")
    parametrize.register_parametrization(module, "weight", SpectralNorm(weight, rounds))
    return module


# ## The Wasserstein critic and its gradient penalty
#
# Arjovsky et al. [@arjovsky2017wasserstein] replace the game's Jensen–Shannon
# divergence, which is constant (and so gives no gradient) when the two distributions
# do not overlap, by the Wasserstein-1 distance, written through its dual form:
#
# $$
# W_1(p_\text{data}, p_G) = \sup_{\|D\|_L \le 1}
#   \mathbb E_{x\sim p_\text{data}} D(x) - \mathbb E_{z} D(G(z)).
# $$
#
# The *critic* $D$ outputs an unbounded score, and it must be 1-Lipschitz. The first
# WGAN clipped every weight to $[-0.01, 0.01]$, which wastes the critic's capacity.
# Gulrajani et al. [@gulrajani2017improved] observe that the optimal critic has
# gradient norm exactly 1 on the lines between real and generated points, and ask for
# that softly, with a penalty on random points $\hat x = \epsilon x + (1-\epsilon)
# \tilde x$ between a real $x$ and a fake $\tilde x$, $\epsilon \sim U[0, 1]$:
#
# $$
# \begin{aligned}
# L_D &= \mathbb E\, D(\tilde x) - \mathbb E\, D(x) \\
# &\quad + \lambda\, \mathbb E_{\hat x}
#   \big(\|\nabla_{\hat x} D(\hat x)\|_2 - 1\big)^2,
# \end{aligned}
# $$
#
# with $\lambda = 10$. The penalty contains a gradient, so training it needs the
# gradient of a gradient: `torch.autograd.grad(..., create_graph=True)` records the
# backward pass as a graph of its own, which `loss.backward()` then differentiates
# (double backward). Summing the scores before differentiating gives every sample's
# own input gradient at once, because sample $i$'s score depends only on
# $\hat x_i$ (true of an MLP, and of a CNN without batch norm: WGAN-GP critics use
# none).
#
# The demo below does not train a WGAN-GP. The paper takes five critic steps per
# generator step, so that the critic stays close to optimal, and trains its toy
# problems for 100,000 rounds; with one critic step per round and this lesson's
# 3,000, our WGAN-GP runs on the ring found at most one mode (exercise 2).


def critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    r"""The WGAN critic's loss without the penalty: $\mathbb E D(\tilde x) -
    \mathbb E D(x)$."""
    return fake_scores.mean() - real_scores.mean()


def gradient_penalty(
    critic: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""$\mathbb E(\|\nabla_{\hat x} D(\hat x)\|_2 - 1)^2$ on random interpolates
    between `real` and `fake` (same shape `[batch, ...]`), differentiable with respect
    to the critic's weights."""
    if real.shape != fake.shape or real.ndim < 2:
        raise ValueError(
            f"gradient_penalty: real {tuple(real.shape)} and fake "
            f"{tuple(fake.shape)} must have the same shape [batch, ...]"
        )
    shape = (len(real),) + (1,) * (real.ndim - 1)  # one epsilon per sample
    epsilon = torch.rand(shape, generator=generator, dtype=real.dtype)
    epsilon = epsilon.to(real.device)
    between = epsilon * real.detach() + (1 - epsilon) * fake.detach()  # [batch, ...]
    between.requires_grad_(True)
    scores = critic(between)  # [batch, 1]
    (grad,) = torch.autograd.grad(scores.sum(), between, create_graph=True)
    norms = grad.flatten(1).norm(dim=1)  # [batch]
    return (norms - 1).square().mean()


# ## One-sided label smoothing
#
# The discriminator's loss is the binary cross-entropy with the real images labelled
# 1 and the fakes 0; on logits $\ell$, with $\log\sigma(\ell) =
# -\operatorname{softplus}(-\ell)$, it needs no sigmoid (this restates the
# [DCGAN lesson](dcgan.md)'s loss with one change). Salimans et al.
# [@salimans2016improved] label the real images $\alpha = 0.9$ instead of 1, so that
# $D$ is not rewarded for ever more confident logits on them:
#
# $$
# \begin{aligned}
# L_D &= \mathbb E_x\big[\alpha\,\mathrm{sp}(-\ell)
#   + (1-\alpha)\,\mathrm{sp}(\ell)\big] \\
# &\quad + \mathbb E_{\tilde x}\,\mathrm{sp}(\ell),
# \end{aligned}
# $$
#
# with $\mathrm{sp} = \operatorname{softplus}$. Minimising it pointwise, the best
# discriminator is
#
# $$
# D^*(x) = \frac{\alpha\, p_\text{data}(x)}{p_\text{data}(x) + p_G(x)}:
# $$
#
# still zero where there are no data. Why only *one-sided*: smoothing the fake labels
# to $\beta > 0$ too would give
# $D^* = (\alpha p_\text{data} + \beta p_G)/(p_\text{data} + p_G)$, which is large
# wherever the generator puts mass and the data do not, and so stops pushing the
# generator's wrong samples back. The test checks the formula against a numerical
# minimisation of the loss.


def discriminator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, real_label: float = 1.0
) -> torch.Tensor:
    """Binary cross-entropy on logits with the real images labelled `real_label`
    (one-sided smoothing when < 1) and the fakes 0."""
    if not 0.5 < real_label <= 1.0:
        raise ValueError(f"real_label must lie in (0.5, 1], got {real_label!r}")
    real_term = real_label * F.softplus(-real_logits) + (1 - real_label) * F.softplus(
        real_logits
    )
    return real_term.mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    r"""The non-saturating generator loss, $\mathbb E \operatorname{softplus}(-\ell)$
    (see the [DCGAN lesson](dcgan.md))."""
    return F.softplus(-fake_logits).mean()


def optimal_discriminator(
    p_data: torch.Tensor, p_model: torch.Tensor, real_label: float = 1.0
) -> torch.Tensor:
    r"""$D^*(x) = \alpha\,p_\text{data} / (p_\text{data} + p_G)$, the minimiser of
    `discriminator_loss` at a point with densities `p_data` and `p_model`."""
    return real_label * p_data / (p_data + p_model)


# ## An exponential moving average of the generator
#
# GAN weights rarely settle: they orbit the equilibrium, because each player chases
# the other. Averaging the generator's weights over time cancels much of the orbit.
# Yazıcı et al. [@yazici2019unusual] keep an exponential moving average,
#
# $$
# \theta_\text{EMA} \leftarrow \beta\,\theta_\text{EMA} + (1 - \beta)\,\theta,
# $$
#
# updated after every generator step and used only for sampling: it never feeds back
# into training. With $\beta = 0.99$ it averages over roughly the last
# $1/(1-\beta) = 100$ steps. `lerp_(θ, 1 − β)` computes exactly this in one fused
# operation; buffers (a batch norm's running statistics) are copied, not averaged.
# `torch.optim.swa_utils.AveragedModel` with `get_ema_multi_avg_fn` does the same, and
# the test holds ours to it.


def ema_update(average: nn.Module, model: nn.Module, decay: float) -> None:
    """`average`'s weights ← `decay` · themselves + (1 − `decay`) · `model`'s."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must lie in [0, 1), got {decay!r}")
    with torch.no_grad():
        for mean, current in zip(average.parameters(), model.parameters()):
            mean.lerp_(current, 1 - decay)
        for mean, current in zip(average.buffers(), model.buffers()):
            mean.copy_(current)


# ## Two time scales
#
# The last remedy is one number. Heusel et al. [@heusel2017gans] prove, under the
# assumptions of stochastic approximation (decaying step sizes, the generator's
# decaying faster), that if the discriminator learns on a faster time scale than the
# generator, alternating gradient steps converge to a local Nash equilibrium: the
# generator then always faces a nearly best-responding $D$, whose gradient points
# towards the data, instead of a stale one. The two time-scale update rule (TTUR) is
# two optimizers with different learning rates, the discriminator's the larger
# (4× here), and a single $D$ step per $G$ step instead of WGAN's five.
#
# The unrolled-GAN paper's toy setting does the opposite, a generator learning rate
# 10× the discriminator's ($10^{-3}$ against $10^{-4}$) [@metz2017unrolled]: the
# generator outruns $D$, finds the region $D$ currently rates most real, moves all
# its samples there, and when $D$ adapts, moves on. It is the demo's plain GAN.
#
# ## The two GANs
#
# Both players are MLPs with two hidden layers of 128 ReLU units, as in Metz et al.'s
# experiment; $G$ maps 16 Gaussian noise dimensions to a point (they used 256; 16
# are plenty for a 2-D target). The configuration
# names every difference between the plain GAN and the stabilised one.


@dataclass
class GANConfig:
    """Everything that differs between the plain and the stabilised GAN."""

    name: str
    lr_generator: float  # Adam learning rate of G
    lr_discriminator: float  # Adam learning rate of D
    spectral_norm: bool = False  # divide each weight of D by its σ
    real_label: float = 1.0  # < 1: one-sided label smoothing
    ema_decay: float = 0.99  # β of the generator's moving average
    latent: int = 16  # noise dimensions
    hidden: int = 128  # units per hidden layer


PLAIN = GANConfig("plain GAN", lr_generator=1e-3, lr_discriminator=1e-4)
STABILISED = GANConfig(
    "stabilised GAN",
    lr_generator=5e-4,
    lr_discriminator=2e-3,
    spectral_norm=True,
    real_label=0.9,
)


def mlp(
    inputs: int, outputs: int, hidden: int, spectral: bool = False
) -> nn.Sequential:
    """`inputs` → `hidden` → `hidden` → `outputs` with ReLUs; `spectral` normalises
    every weight."""
    layers = [
        nn.Linear(inputs, hidden),
        nn.Linear(hidden, hidden),
        nn.Linear(hidden, outputs),
    ]
    if spectral:
        layers = [spectral_norm(layer) for layer in layers]
    return nn.Sequential(layers[0], nn.ReLU(), layers[1], nn.ReLU(), layers[2])


class GAN(nn.Module):
    """A generator, a discriminator, the EMA copy of the generator, and one optimizer
    each."""

    def __init__(self, config: GANConfig):
        super().__init__()
        self.config = config
        self.generator = mlp(config.latent, 2, config.hidden)
        self.discriminator = mlp(2, 1, config.hidden, spectral=config.spectral_norm)
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
        self.optimizer_g = torch.optim.Adam(
            self.generator.parameters(), lr=config.lr_generator, betas=(0.5, 0.999)
        )
        self.optimizer_d = torch.optim.Adam(
            self.discriminator.parameters(),
            lr=config.lr_discriminator,
            betas=(0.5, 0.999),
        )

    def noise(self, n: int) -> torch.Tensor:
        device = next(self.parameters()).device
        return torch.randn(n, self.config.latent, device=device)  # [n, latent]

    def step(self, real: torch.Tensor) -> tuple[float, float]:
        """One round: a discriminator step on `real [batch, 2]` and fresh fakes, a
        generator step, an EMA update. Returns `(L_D, L_G)`."""
        fake = self.generator(self.noise(len(real))).detach()  # [batch, 2]
        loss_d = discriminator_loss(
            self.discriminator(real), self.discriminator(fake), self.config.real_label
        )
        self.optimizer_d.zero_grad()
        loss_d.backward()
        self.optimizer_d.step()

        fake = self.generator(self.noise(len(real)))  # [batch, 2]
        loss_g = generator_loss(self.discriminator(fake))
        self.optimizer_g.zero_grad()
        loss_g.backward()
        self.optimizer_g.step()
        ema_update(self.generator_ema, self.generator, self.config.ema_decay)
        return loss_d.item(), loss_g.item()


# ## Training
#
# Each round draws a fresh batch from the mixture. Every `every` rounds the generator
# (and its EMA) map a fixed set of noise vectors, and `mode_coverage` scores the
# result, so the curves follow the same 2,000 points through training.


def train(
    gan: GAN,
    steps: int,
    batch_size: int = 256,
    std: float = 0.05,
    every: int = 100,
    seed: int = 0,
    samples: int = 2000,
) -> dict:
    """Train `gan` for `steps` rounds on the ring; returns the coverage history and the
    fixed-noise samples at every measurement."""
    if (
        not isinstance(steps, int)
        or steps < 1
        or not isinstance(every, int)
        or every < 1
    ):
        raise ValueError(f"steps and every must be ints >= 1, got {steps!r}, {every!r}")
    data = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    device = next(gan.parameters()).device
    centres = ring_centres()
    fixed = torch.randn(samples, gan.config.latent, generator=data).to(device)
    keys = ("step", "modes", "quality", "modes_ema", "quality_ema")
    history = {key: [] for key in keys} | {"snapshots": {}}
    for step in tqdm(range(1, steps + 1), desc=gan.config.name, leave=False):
        gan.step(sample_ring(batch_size, std=std, generator=data).to(device))
        if step % every and step != steps:
            continue
        with torch.no_grad():
            points = gan.generator(fixed).cpu()  # [samples, 2]
            points_ema = gan.generator_ema(fixed).cpu()  # [samples, 2]
        now, now_ema = (mode_coverage(p, centres, std) for p in (points, points_ema))
        history["step"].append(step)
        history["modes"].append(now["modes"])
        history["quality"].append(now["high_quality"])
        history["modes_ema"].append(now_ema["modes"])
        history["quality_ema"].append(now_ema["high_quality"])
        history["snapshots"][step] = points
    return history


# ## The example
#
# The diagrams trace the stabilised discriminator on four points: three spectrally
# normalised linear layers with ReLUs between them.


def example():
    """The stabilised discriminator, 16 units wide, on a batch of four 2-D points."""
    torch.manual_seed(0)
    return mlp(2, 1, 16, spectral=True), (torch.randn(4, 2),)


# ## The demo


def plot_samples(runs: dict, snapshot_steps: list[int], std: float, out: Path) -> Path:
    """A row per GAN: its generator's samples at three points of training."""
    fig, axes = figure(panels=3 * len(runs), rows=len(runs))
    centres = ring_centres()
    for row, (name, history) in zip(axes, runs.items()):
        for ax, step in zip(row, snapshot_steps):
            points = history["snapshots"][step][:1000]
            for centre in centres:
                ax.add_patch(Circle(centre.tolist(), 3 * std, fill=False, color="C3"))
            ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5, color="C0")
            ax.set_xlim(-3, 3)
            ax.set_ylim(-3, 3)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}, round {step}")
    return save(
        fig,
        out / "samples.png",
        caption="1,000 samples of each generator from fixed noise at three "
        "points of training; red circles mark 3σ around the eight modes. The plain "
        "GAN's samples stay in one clump that wanders around the ring; the "
        "stabilised one spreads along the ring and then gathers on all eight modes.",
    )


def plot_coverage(runs: dict, every: int, out: Path) -> Path:
    """Modes covered and the high-quality fraction against training rounds, measured
    every `every` rounds."""
    fig, (left, right) = figure(panels=2)
    for index, (name, history) in enumerate(runs.items()):
        color = f"C{index}"
        left.plot(history["step"], history["modes"], color=color, label=name)
        right.plot(history["step"], history["quality"], color=color, label=name)
        right.plot(
            history["step"],
            history["quality_ema"],
            color=color,
            linestyle="--",
            label=f"{name}, EMA",
        )
    left.set_xlabel("round")
    left.set_ylabel("modes covered (of 8)")
    left.set_ylim(-0.3, 8.3)
    right.set_xlabel("round")
    right.set_ylabel("samples within $3\\sigma$ of a mode")
    right.set_ylim(-0.03, 1)  # a run at 0 stays off the axis
    left.legend()
    right.legend()
    return save(
        fig,
        out / "coverage.png",
        caption="Left: modes covered by the raw generator's samples, measured every "
        f"{every} rounds. Right: the fraction of high-quality samples, raw (solid) and "
        "from the EMA of the generator (dashed).",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train the plain and the stabilised GAN on eight Gaussians and count modes."""
    parser = argparse.ArgumentParser(
        description="Mode collapse on a ring of eight Gaussians: a plain GAN against "
        "spectral norm + TTUR + label smoothing + EMA.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--steps", type=integer(at_least=3), default=3000, help="training rounds"
    )
    parser.add_argument(
        "--batch-size", type=integer(at_least=1), default=256, help="mini-batch size"
    )
    parser.add_argument(
        "--std", type=number(above=0), default=0.05, help="σ of each mode"
    )
    parser.add_argument(
        "--every",
        type=integer(at_least=1),
        default=100,
        help="rounds between coverage measurements",
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--threads",
        type=integer(at_least=1),
        default=1,
        help="CPU threads for torch (small MLPs)",
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to train on",
    )
    parser.add_argument(
        "--out", default="out/gan_stability", help="folder for the figures"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    runs, result = {}, {}
    for key, config in (("plain", PLAIN), ("stabilised", STABILISED)):
        torch.manual_seed(args.seed)
        gan = GAN(config).to(args.device)
        start = time.perf_counter()
        history = train(
            gan, args.steps, args.batch_size, args.std, args.every, args.seed
        )
        seconds = time.perf_counter() - start
        runs[config.name] = history
        result[f"{key}_modes"] = history["modes"][-1]
        result[f"{key}_quality"] = history["quality"][-1]
        result[f"{key}_modes_ema"] = history["modes_ema"][-1]
        result[f"{key}_quality_ema"] = history["quality_ema"][-1]
        print(
            f"{config.name}: {history['modes'][-1]} of 8 modes, "
            f"{history['quality'][-1]:.2f} high quality "
            f"(EMA: {history['modes_ema'][-1]} modes, "
            f"{history['quality_ema'][-1]:.2f}) in {seconds:.1f} s"
        )
        late = history["modes"][len(history["modes"]) // 2 :]
        print(f"  modes covered over the second half: max {max(late)}")
        result[f"{key}_max_modes_late"] = max(late)

    # The persistent power iteration, after thousands of one-round updates, against
    # the exact largest singular value of each weight of the stabilised D.
    for index, layer in enumerate(gan.discriminator[::2]):
        raw = layer.parametrizations.weight.original.detach()
        sn = layer.parametrizations.weight[0]
        estimate = top_singular_value(raw.flatten(1), sn.u, sn.v).item()
        exact = torch.linalg.svdvals(raw.flatten(1))[0].item()
        print(f"D layer {index}: σ estimate {estimate:.5f}, svdvals {exact:.5f}")
        result[f"sigma_error_{index}"] = abs(estimate - exact) / exact

    last = history["step"][-1]
    snapshot_steps = [history["step"][0], history["step"][len(history["step"]) // 3]]
    plot_samples(runs, snapshot_steps + [last], args.std, out)
    plot_coverage(runs, args.every, out)
    return result


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Train the plain GAN with the stabilised learning rates (5e-4 for $G$, 2e-3 for
#    $D$) and nothing else changed, then with spectral norm alone at the plain rates.
#    Which of the two fixes does the most for the modes covered?
# 2. Replace the stabilised GAN's loss by WGAN-GP (`critic_loss` plus
#    10 · `gradient_penalty`, no spectral norm) with one critic step per round. In our
#    runs it found at most one mode within 3,000 rounds; how many critic steps per
#    round, and how many rounds, does it need to cover all eight?
# 3. `spectral_norm` always flattens the weight from dimension 0. A
#    `nn.ConvTranspose2d` weight is `[in, out, k, k]`, and PyTorch normalises it along
#    dimension 1. Add a `dim` argument and check it against
#    `torch.nn.utils.parametrizations.spectral_norm(layer, dim=1)`.
# 4. Measure how far the one-round estimate $u^\top W v$ lags the true $\sigma(W)$
#    during training when you raise $D$'s learning rate tenfold. When is a second
#    round per step worth its cost?
