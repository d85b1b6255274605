r"""
---
title: Faster sampling with DDIM
summary: >-
  DDIM's family of samplers on the DDPM lesson's trained U-Net: η from deterministic
  to ancestral, skipped steps with diffusers' "leading" and "trailing" spacings,
  every step checked against diffusers' DDIMScheduler, and FID against the number of
  steps.
time: 2 min
references:
  - key: song2021denoising
    authors: [Jiaming Song, Chenlin Meng, Stefano Ermon]
    title: Denoising Diffusion Implicit Models
    year: 2021
    venue: ICLR 2021
    arxiv: "2010.02502"
  - key: ho2020denoising
    authors: [Jonathan Ho, Ajay Jain, Pieter Abbeel]
    title: Denoising Diffusion Probabilistic Models
    year: 2020
    venue: NeurIPS 2020
    arxiv: "2006.11239"
  - key: song2021score
    authors:
      - Yang Song
      - Jascha Sohl-Dickstein
      - Diederik P. Kingma
      - Abhishek Kumar
      - Stefano Ermon
      - Ben Poole
    title: Score-Based Generative Modeling through Stochastic Differential Equations
    year: 2021
    venue: ICLR 2021
    arxiv: "2011.13456"
  - key: lin2024common
    authors: [Shanchuan Lin, Bingchen Liu, Jiashi Li, Xiao Yang]
    title: Common Diffusion Noise Schedules and Sample Steps are Flawed
    year: 2024
    venue: WACV 2024
    arxiv: "2305.08891"
worksheet:
  - region: ddim_sigma
    hint: >-
      Check the pair of steps and that eta lies in [0, 1]; with a = ᾱ_t and a' =
      ᾱ_{t_prev}, return eta × sqrt((1 - a') / (1 - a) × (1 - a / a')).
    tests: [test_eta_one_over_all_steps_is_ddpm, test_step_matches_diffusers]
  - region: ddim_step
    hint: >-
      Get sigma and check eps and the noise (needed where sigma > 0). Predict x̂0 =
      (x_t - sqrt(1 - a) eps) / sqrt(a); when clipping, clamp it to [-1, 1] and
      recompute eps as the noise the clipped x̂0 implies. Then x_prev = sqrt(a') x̂0 +
      sqrt(1 - a' - sigma²) eps, plus sigma × noise when sigma > 0. Return (x_prev,
      x̂0).
    tests:
      - test_step_matches_diffusers
      - test_eta_one_over_all_steps_is_ddpm
      - test_deterministic_step_is_euler_and_reversible
  - region: ddim_sample
    hint: >-
      Check x_T and lay out the indices with `timesteps`; pair each with the next
      (the last with -1); at each pair ask the model for eps at (x, t), draw noise from
      the generator only where sigma > 0 (after the network call), and take one
      ddim_step.
    tests: [test_sampling_chain_matches_diffusers]
---

A [DDPM](ddpm.md) draws an image by running its network once per diffusion step:
$T = 500$ calls for our 16×16 digits, $T = 1000$ in Ho et al.'s paper
[@ho2020denoising]. The steps are small on purpose, because each reverse step is
Gaussian only when the forward step it undoes is small. Denoising diffusion
*implicit* models [@song2021denoising] keep the trained network and change the
sampler: they show that the network DDPM trains is equally the noise predictor of a
whole family of processes, most of them not Markov chains, one of them
deterministic, and that the deterministic one can take steps 10 to 50 times larger
with little loss of quality.

This lesson builds the family on top of the DDPM lesson's `Schedule`, U-Net and
`trained_model()`, without training anything new:

- one DDIM step for any amount of noise $\eta$, from $\eta = 0$ (deterministic) to
  $\eta = 1$ (which *is* DDPM's ancestral step, to rounding);
- sampling on a sub-sequence of the steps, with the two spacings `diffusers` offers
  ("leading", its `DDIMScheduler`'s default and what the DDIM authors' code does, and
  "trailing" [@lin2024common]);
- DDIM *inversion*, the deterministic sampler run backwards, from an image to the
  noise that produces it.

The tests check every step against Hugging Face `diffusers`' `DDIMScheduler` with the
same betas, $\eta = 1$ against DDPM's posterior variance and step, and the whole
sampler against exact answers on Gaussian data. The demo scores samples with the FID
of [the metrics lesson](metrics.md) for 5 to 500 steps. On our digits the
deterministic sampler is at its best with 20 to 50 of the 500 steps, at an FID of
about 41 against DDPM's 34 with all 500 (256 samples each; real digits score 13):
a 10 to 25 times cheaper sampler for a small loss, as Song et al. found on larger
images.
"""

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from annotated.data import digit_images, integer, integers, torch_device
from annotated.figures import figure, save
from annotated.generative.ddpm import (
    Schedule,
    TrainConfig,
    UNet,
    make_schedule,
    mosaic,
    sample,
    trained_model,
)
from annotated.generative.metrics import feature_extractor, fid

# ## Only the marginals were trained
#
# Look at what DDPM's training actually used. The loss $L_\text{simple}$ draws $x_t$
# from the closed form $q(x_t \mid x_0) = \mathcal N(\sqrt{\bar\alpha_t}\, x_0,\ (1 -
# \bar\alpha_t) I)$ and asks the network for the noise in it. The chain
# $q(x_t \mid x_{t-1})$ that produced the closed form appears nowhere in the loss.
# So any other *joint* process over $x_1, \dots, x_T$ with the same *marginals*
# $q(x_t \mid x_0)$ leads to the same loss, and the same trained network serves it
# (Song et al.'s Theorem 1 makes this exact for their whole family).
#
# Song et al. build such processes backwards. Pick any $\sigma_t \ge 0$ and define
# the reverse conditional
#
# $$\begin{aligned} q_\sigma(x_{t-1} \mid x_t, x_0) = \mathcal N\Big(&
# \sqrt{\bar\alpha_{t-1}}\, x_0 \\ &+ \sqrt{1 - \bar\alpha_{t-1} - \sigma_t^2}\,
# \epsilon_t,\ \ \sigma_t^2 I\Big), \end{aligned}$$
#
# with $\epsilon_t = (x_t - \sqrt{\bar\alpha_t}\,x_0) / \sqrt{1 - \bar\alpha_t}$, the
# noise that is in $x_t$. If $x_t$ has the right marginal, $\epsilon_t$ is a
# standard Gaussian independent of the fresh noise, so $x_{t-1}$ has mean
# $\sqrt{\bar\alpha_{t-1}}\, x_0$ and variance $(1 - \bar\alpha_{t-1} - \sigma_t^2) +
# \sigma_t^2 = 1 - \bar\alpha_{t-1}$: the right marginal again, for *every* choice of
# $\sigma_t$. Each choice is a different process with the marginals DDPM trained on.
#
# ## One step of the family
#
# To sample, replace the unknown $x_0$ by the network's guess $\hat x_0 = (x_t -
# \sqrt{1 - \bar\alpha_t}\, \epsilon_\theta) / \sqrt{\bar\alpha_t}$, as the DDPM step
# does. Then $\epsilon_t$ becomes $\epsilon_\theta$ itself, and the step is Song et
# al.'s eq. 12:
#
# $$\begin{aligned} x_{t-1} = {}& \sqrt{\bar\alpha_{t-1}}\, \hat x_0 \\ &+ \sqrt{1 -
# \bar\alpha_{t-1} - \sigma_t^2}\, \epsilon_\theta(x_t, t) + \sigma_t z.
# \end{aligned}$$
#
# Read it as: predict the clean image, move it to the noise level of step $t - 1$,
# and put back the predicted noise, partly as the same direction $\epsilon_\theta$
# and partly ($\sigma_t$) as fresh noise $z$. Song et al. choose the amount with one
# knob $\eta$ (their eq. 16):
#
# $$\sigma_t(\eta) = \eta\, \sqrt{\frac{1 - \bar\alpha_{t-1}}{1 - \bar\alpha_t}}\,
# \sqrt{1 - \frac{\bar\alpha_t}{\bar\alpha_{t-1}}}.$$
#
# For consecutive steps, $\bar\alpha_t / \bar\alpha_{t-1} = \alpha_t$ and
# $1 - \alpha_t = \beta_t$, so $\sigma_t(1)^2 = \frac{1 - \bar\alpha_{t-1}}{1 -
# \bar\alpha_t}\beta_t = \tilde\beta_t$, DDPM's posterior variance: $\eta = 1$ is
# DDPM (the tests check that the whole step, not only its variance, equals
# `Schedule.step`). $\eta = 0$ adds no noise at all: given $x_T$, the sample is a
# fixed function of it.
#
# Nothing in the step needs $t - 1$ to be the step right before $t$: it needs two
# noise levels $\bar\alpha_t$ and $\bar\alpha_{t'}$ with $t' < t$. Steps are written
# with an explicit `t_prev`, and `t_prev = -1` means "the clean image", where
# $\bar\alpha = 1$ (`diffusers`' `set_alpha_to_one=True`).


def alpha_bar(schedule: Schedule, t: int) -> float:
    r"""$\bar\alpha_t$ of `schedule` at index `t`, and 1 at `t = -1` (no noise)."""
    return 1.0 if t == -1 else schedule.alphas_cumprod[t].item()


def check_pair(schedule: Schedule, t: int, t_prev: int) -> tuple[int, int]:
    """`(t, t_prev)` as ints if `t` indexes the schedule and `-1 <= t_prev < t`, else
    a clear error."""
    t = schedule.check_step(t)
    if isinstance(t_prev, torch.Tensor) and t_prev.ndim == 0:
        t_prev = int(t_prev)
    if not isinstance(t_prev, int) or not -1 <= t_prev < t:
        raise ValueError(
            f"t_prev must be an int in [-1, t - 1 = {t - 1}], got {t_prev!r}"
        )
    return t, t_prev


def ddim_sigma(schedule: Schedule, t: int, t_prev: int, eta: float) -> float:
    r"""$\sigma_t(\eta)$ for a step from index `t` to `t_prev` (Song et al.'s
    eq. 16)."""
    t, t_prev = check_pair(schedule, t, t_prev)
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
    a, a_prev = alpha_bar(schedule, t), alpha_bar(schedule, t_prev)
    return eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))


# `ddim_step` is eq. 12 as written. With `clip=True`, $\hat x_0$ is clipped to the
# data's range $[-1, 1]$ first, as in the DDPM lesson, and the step is
# $q_\sigma(x_{t-1} \mid x_t, x_0)$ with the clipped $\hat x_0$ as $x_0$: so the
# noise direction becomes the noise that the clipped $\hat x_0$ implies, $(x_t -
# \sqrt{\bar\alpha_t}\,\hat x_0) / \sqrt{1 - \bar\alpha_t}$, not $\epsilon_\theta$
# itself. This is how DDPM's step uses a clipped $\hat x_0$ too, and with it
# $\eta = 1$ stays exactly DDPM's step with clipping as well (`diffusers` calls it
# `use_clipped_model_output=True`). `diffusers`' *default* keeps
# $\epsilon_\theta$: then, wherever $\hat x_0$ is clipped, the step forgets $x_t$ and
# puts $\epsilon_\theta$ in its place. On our model (192 samples, trailing) that
# default scores a little better at 10 and 50 steps (FID 47 and 45 against 57 and
# 50) but collapses with all 500 steps (135 against 49): each of the hundreds of
# clipped steps replaces the image by a noise prediction.
#
# Why clip at all? The cosine schedule's last $\beta$ is capped at 0.999, so
# $\bar\alpha_{T-1} \approx 10^{-8}$: at the first step from $T - 1$, $\hat x_0$
# divides the network's error by $10^{-4}$. Unclipped, every sampler that starts
# there (trailing, or all the steps) draws garbage on our model.


def ddim_step(
    schedule: Schedule,
    eps: torch.Tensor,
    t: int,
    t_prev: int,
    x_t: torch.Tensor,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    clip: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One DDIM step from `x_t` at index `t` to index `t_prev` (-1: the clean image)
    given the predicted noise `eps`: returns `(x_t_prev, x0_hat)`. `noise` (shaped
    like `x_t`) is the $z$ to add; it is needed only where $\sigma_t > 0$."""
    sigma = ddim_sigma(schedule, t, t_prev, eta)
    if eps.shape != x_t.shape:
        raise ValueError(
            f"eps must have x_t's shape {tuple(x_t.shape)}, got {tuple(eps.shape)}"
        )
    if sigma > 0 and (noise is None or noise.shape != x_t.shape):
        raise ValueError(
            f"noise must be a tensor shaped like x_t {tuple(x_t.shape)} when eta > 0"
        )
    a, a_prev = alpha_bar(schedule, t), alpha_bar(schedule, t_prev)
    x0_hat = (x_t - math.sqrt(1 - a) * eps) / math.sqrt(a)
    if clip:
        x0_hat = x0_hat.clamp(-1, 1)
        eps = (x_t - math.sqrt(a) * x0_hat) / math.sqrt(1 - a)  # the noise it implies
    direction = math.sqrt(1 - a_prev - sigma**2) * eps  # "pointing to x_t"
    x_prev = math.sqrt(a_prev) * x0_hat + direction
    if sigma > 0:
        x_prev = x_prev + sigma * noise
    return x_prev, x0_hat


# ## Why big steps work: $\eta = 0$ is an ODE
#
# Divide the deterministic step by $\sqrt{\bar\alpha_{t-1}}$ and name two things: the
# rescaled image $\bar x_t = x_t / \sqrt{\bar\alpha_t}$ and the noise-to-signal ratio
# $\rho_t = \sqrt{(1 - \bar\alpha_t) / \bar\alpha_t}$. Since $\hat x_0 = \bar x_t -
# \rho_t\, \epsilon_\theta$, the step becomes
#
# $$\bar x_{t-1} = \bar x_t + (\rho_{t-1} - \rho_t)\, \epsilon_\theta(x_t, t),$$
#
# one Euler step of the ordinary differential equation $d\bar x / d\rho =
# \epsilon_\theta$ (Song et al.'s Section 4.3; it is the probability-flow ODE of
# [@song2021score] in these coordinates). Sampling integrates it from a large $\rho$
# (pure noise) to $\rho = 0$ (the image). Euler's error depends on how much the
# direction $\epsilon_\theta$ turns along the way, not on how many steps the
# *training* used, and for a well-trained network it turns slowly: a few dozen
# steps follow the path closely. With $\eta > 0$ each step also injects fresh noise
# that later steps must remove, and with few steps there are few left to do it, so
# $\eta = 1$ degrades much faster as steps are skipped (Song et al.'s Table 1, and
# the demo below). `ddim_euler_step` writes the step in this form, and the tests
# check it against `ddim_step`.


def noise_ratio(schedule: Schedule, t: int) -> float:
    r"""$\rho_t = \sqrt{(1 - \bar\alpha_t)/\bar\alpha_t}$, 0 at `t = -1`."""
    a = alpha_bar(schedule, t)
    return math.sqrt((1 - a) / a)


def ddim_euler_step(
    schedule: Schedule, eps: torch.Tensor, t: int, t_next: int, x_t: torch.Tensor
) -> torch.Tensor:
    r"""The $\eta = 0$ step as Euler on $d\bar x/d\rho = \epsilon$: from index `t` to
    `t_next` (either direction; -1 is the clean image)."""
    for value in (t, t_next):
        if value != -1:
            schedule.check_step(value)
    x_bar = x_t / math.sqrt(alpha_bar(schedule, t))
    x_bar = x_bar + (noise_ratio(schedule, t_next) - noise_ratio(schedule, t)) * eps
    return x_bar * math.sqrt(alpha_bar(schedule, t_next))


# ## Skipping steps
#
# Song et al. sample on a sub-sequence $\tau_1 < \dots < \tau_S$ of the $T$ steps:
# the marginals argument holds for any sub-sequence, and the step above takes any
# pair of levels, so the sampler just walks $\tau_S \to \tau_{S-1} \to \dots \to
# \tau_1 \to$ clean image, $S$ network calls instead of $T$. Which sub-sequence? With
# $S$ steps out of $T$, two uniform spacings are common (the names are `diffusers`'
# `timestep_spacing`, after Lin et al. [@lin2024common]):
#
# - **leading**: $0, k, 2k, \dots, (S - 1)k$ with $k = \lfloor T / S \rfloor$. This is
#   what the DDIM authors' code does (`range(0, T, T // S)`) and the default of
#   `diffusers`' `DDIMScheduler`. It always contains step 0, but its last step is
#   $(S - 1)k$, not $T - 1$: with $S = 5$ of $T = 500$ sampling starts at index 400,
#   where our cosine schedule's $\bar\alpha$ is still 0.09, so the pure noise we
#   start from is *not* what the network saw at that step.
# - **trailing**: $T - 1, T - 1 - T/S, \dots$ (rounded), down to about $T/S - 1$.
#   It starts where the forward process ends, at pure noise, and takes its
#   last, large step from $\tau_1 \approx T/S - 1$ straight to the clean image.
#
# Lin et al. find trailing the better of the two at few steps, on Stable
# Diffusion, whose last $\bar\alpha$ is 0.005. On our model the demo finds the
# opposite: leading wins at every step count from 5 to 100 (FID 47 against 56 at 10
# steps). Our last $\bar\alpha$ is $10^{-8}$, so trailing's first step starts where
# $\hat x_0$ is a pure guess that clipping cuts to $\pm 1$, and the step has nothing
# to go on; leading's first step, at $\bar\alpha \approx 0.02$ for 10 steps, already
# sees a little of the image in the noise. (A reading of the numbers, not a proof;
# exercise 1 tests more spacings.) With $S = T$ both are all the steps.

SPACINGS = ("leading", "trailing")


def timesteps(total: int, steps: int, spacing: str = "leading") -> list[int]:
    """The indices `steps` DDIM steps visit out of `total`, in sampling order (from
    noisy to clean), as `diffusers`' `DDIMScheduler.set_timesteps` lays them out."""
    if not isinstance(steps, int) or not 1 <= steps <= total:
        raise ValueError(f"steps must be an int in [1, {total}], got {steps!r}")
    if spacing == "leading":
        return [i * (total // steps) for i in range(steps - 1, -1, -1)]
    if spacing == "trailing":
        # `diffusers`' arithmetic, so that halves round as they do there: `np.round`
        # takes a value ending in .5 to the even integer (62.5 to 62, 187.5 to 188),
        # not always up. In floating point its `np.arange` sometimes makes one
        # element too many (an extra index -1, e.g. for 29 of 50 steps): keep the
        # first `steps`.
        indices = np.round(np.arange(total, 0, -total / steps))[:steps] - 1
        return indices.astype(int).tolist()
    raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")


# ## The sampler
#
# `ddim_sample` starts from a given $x_T$ (so that several samplers can start from the
# same noise, which the demo uses) and walks the sub-sequence. Each step pairs an
# index with the next one in the list, and the last with $-1$. (`diffusers`'
# `DDIMScheduler.step` goes back by $\lfloor T / S \rfloor$ instead, the same
# thing for leading spacing, and for trailing when $S$ divides $T$; otherwise its
# trailing steps land beside the listed indices.) Fresh noise is drawn
# from `generator` after each network call, only where $\sigma > 0$, in the order
# `diffusers` draws it, so the tests can run both samplers from one seed.


def check_start(x_T: torch.Tensor) -> None:
    """A clear error unless `x_T` is a float batch `[n, 1, h, w]` with sides divisible
    by 4 (the U-Net's two halvings)."""
    if not isinstance(x_T, torch.Tensor) or not x_T.is_floating_point():
        raise TypeError(f"x_T must be a float tensor, got {type(x_T).__name__}")
    if x_T.ndim != 4 or x_T.shape[1] != 1 or x_T.shape[2] % 4 or x_T.shape[3] % 4:
        raise ValueError(
            "x_T must be [n, 1, h, w] with h and w divisible by 4, got "
            f"{tuple(x_T.shape)}"
        )


@torch.no_grad()
def ddim_sample(
    model: nn.Module,
    schedule: Schedule,
    x_T: torch.Tensor,
    steps: int,
    eta: float = 0.0,
    spacing: str = "leading",
    generator: torch.Generator | None = None,
    clip: bool = True,
) -> torch.Tensor:
    """Images `[n, 1, h, w]` drawn from the start noise `x_T [n, 1, h, w]` with
    `steps` DDIM steps (on `x_T`'s device)."""
    check_start(x_T)
    sequence = timesteps(schedule.steps, steps, spacing)
    x, n = x_T, len(x_T)
    for t, t_prev in zip(
        tqdm(sequence, desc=f"DDIM {steps} steps, eta {eta:g}", leave=False),
        sequence[1:] + [-1],
    ):
        eps = model(x, torch.full((n,), t, device=x.device))  # [n, 1, h, w]
        noise = None
        if ddim_sigma(schedule, t, t_prev, eta) > 0:
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            noise = noise.to(x.device)
        x, _ = ddim_step(schedule, eps, t, t_prev, x, eta, noise, clip)
    return x


# ## Running it backwards: inversion
#
# The deterministic sampler is a map from noise to images, and Euler steps can be
# taken in either direction: the same update with $\rho$ *increasing* carries an
# image $x_0$ up to a noise $x_T$ that the sampler maps back to (almost) $x_0$. This
# is DDIM inversion, the basis of many image-editing methods: invert, change
# something, sample again.
#
# It is not exact. The sampling step from $t$ down to $t'$ used
# $\epsilon_\theta(x_t, t)$ at its *upper* end, which inversion has not reached
# yet; it uses $\epsilon_\theta$ at the point it has, asked at the step it heads to
# (the image $x_0$ has no step of its own). The two ends differ by one step's change
# in $\epsilon_\theta$, so the reconstruction error shrinks as the steps do: "in the
# limit of many steps" the map is invertible. The tests show it with an exact noise
# predictor. With a trained one there is a catch at the noisy end: the last few
# indices have $\rho$ in the hundreds and thousands, where a small error of
# $\epsilon_\theta$ is a large error of $\bar x$. The demo inverts with the leading
# spacing, which stops short of $T - 1$; its error shrinks up to about 100 steps
# (RMSE 0.11 at 10 steps, 0.055 at 100) and then grows again as the steps crowd
# into that end (0.09 at 250). Inversion runs unclipped,
# and its reconstruction must too, since clipping cannot be undone.


@torch.no_grad()
def ddim_invert(
    model: nn.Module,
    schedule: Schedule,
    x0: torch.Tensor,
    steps: int,
    spacing: str = "leading",
) -> torch.Tensor:
    """The start noise `[n, 1, h, w]` from which `ddim_sample(..., eta=0,
    clip=False)` with the same `steps` and `spacing` redraws `x0 [n, 1, h, w]`,
    approximately."""
    check_start(x0)
    sequence = timesteps(schedule.steps, steps, spacing)[::-1]  # clean to noisy
    x, n = x0, len(x0)
    for t_from, t in zip([-1] + sequence[:-1], sequence):
        eps = model(x, torch.full((n,), t, device=x.device))  # [n, 1, h, w]
        x = ddim_euler_step(schedule, eps, t_from, t, x)
    return x


# ## The example
#
# Ten deterministic steps of a fresh U-Net on two 16×16 images, out of $T = 500$.
# The U-Net's last convolution, `head`, starts at zero, so a fresh one predicts no
# noise at all: its weights are redrawn from $N(0, 0.1^2)$.


def example():
    """A small example: DDIM sampling, 10 of 500 steps, with a random U-Net."""
    torch.manual_seed(0)
    model = UNet().eval()
    nn.init.normal_(model.head.weight, std=0.1)
    x_T = torch.randn(2, 1, 16, 16)
    return ddim_sample, (model, Schedule.cosine(500), x_T, 10)


def dataflow(output):
    """The loop of `ddim_sample` on the example, with the shapes between its parts
    (declared by the lesson, not traced)."""
    nodes = [
        ("x", "x_t (x_T = noise at the first step)"),
        ("tau", "timesteps(500, 10): t, t_prev"),
        ("unet", "U-Net ε_θ(x_t, t)"),
        ("x0", "x̂₀ = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t, clip"),
        ("step", "√ᾱ_prev x̂₀ + √(1−ᾱ_prev−σ²) ε + σz"),
        ("out", f"image {list(output.shape)}"),
    ]
    edges = [
        ("x", "unet", "[2, 1, 16, 16]"),
        ("tau", "unet", "t [2]"),
        ("unet", "x0", "ε [2, 1, 16, 16]"),
        ("x", "x0", "x_t"),
        ("x0", "step", "x̂₀ [2, 1, 16, 16]"),
        ("unet", "step", "ε"),
        ("tau", "step", "ᾱ_t, ᾱ_prev, σ"),
        ("step", "x", "x_prev (10 times)"),
        ("step", "out", "after t_prev = −1"),
    ]
    return nodes, edges


# ## The demo
#
# Load the DDPM lesson's trained U-Net (training it on the first run, about 50 s),
# fix one batch of start noises $x_T$, and draw from it with
#
# - DDIM, $\eta = 0$, both spacings, and $\eta = 1$ (trailing), at 5 to 100 steps,
#   so from 100 down to 5 times fewer network calls than DDPM;
# - DDIM, $\eta = 0$, with all $T = 500$ steps;
# - DDPM's own ancestral sampler, all 500 steps (`ddpm.sample`).
#
# Each set of samples is scored by FID against the 359 held-out test digits, with
# the same judge the DDPM lesson uses, beside the FID of as many real training digits
# (the floor at this sample size: FID is biased upwards on small samples). Sharing
# $x_T$ between the deterministic runs shows something else too: the same noise
# gives (nearly) the same digit at every step count, since all of them follow one
# ODE. Last, eight test digits are inverted and redrawn at several step counts.


def plot_fid(results: dict, fid_real: float, total: int, out: Path) -> Path:
    """FID against network calls for each sampler, with DDPM and the real floor."""
    fig, ax = figure()
    styles = {
        "eta 0, trailing": ("C0", "o", r"DDIM $\eta=0$, trailing"),
        "eta 0, leading": ("C1", "s", r"DDIM $\eta=0$, leading"),
        "eta 1, trailing": ("C2", "^", r"DDIM $\eta=1$, trailing"),
    }
    for key, (color, marker, label) in styles.items():
        steps = sorted(results[key])
        ax.plot(steps, [results[key][s] for s in steps], color=color, marker=marker,
                label=label)  # fmt: skip
    ax.plot([total], [results["ddpm"]], "k*", markersize=12, label=f"DDPM, {total}")
    ax.axhline(fid_real, color="gray", ls="--", lw=1, label="real digits")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("network calls per sample $S$")
    ax.set_ylabel("FID against test digits")
    ax.legend(fontsize=8)
    return save(
        fig,
        out / "fid.png",
        caption="FID of the samples against the number of network calls per sample, "
        f"on the DDPM lesson's U-Net (T = {total}). Deterministic DDIM (η = 0, "
        "leading) is at its best from 20 to 50 steps, 10 to 25 times fewer calls "
        "than DDPM's, a little above DDPM's FID (the star); the stochastic η = 1 "
        "falls apart when steps are skipped and needs about 100 to match DDPM. The "
        "dashed line is real training digits, the floor at this sample size.",
    )


def plot_grids(grids: dict[str, torch.Tensor], columns: int, out: Path) -> Path:
    """One row of samples per sampler, the same start noise in each column."""
    fig, ax = figure()
    names = list(grids)
    rows = torch.cat([grids[name][:columns].cpu() for name in names])
    side = rows.shape[-1] + 2  # with mosaic's frame
    ax.imshow(mosaic(rows, columns), cmap="gray", vmin=0, vmax=1)
    ax.set_yticks([side * i + side / 2 - 0.5 for i in range(len(names))])
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xticks([])
    return save(
        fig,
        out / "samples.png",
        caption="Samples from the same start noise in each column. The deterministic "
        "DDIM rows (η = 0, leading spacing) draw the same digit from the same noise at "
        "every step count from 5 to 500, a few of them with speckles; the stochastic "
        "DDPM row (bottom) draws other, cleaner digits from the same start.",
    )


def plot_inversion(
    originals: torch.Tensor, rebuilt: dict[int, torch.Tensor], out: Path
) -> Path:
    """Test digits and their DDIM reconstructions after inversion."""
    fig, ax = figure()
    names = ["original"] + [f"{s} steps" for s in rebuilt]
    rows = torch.cat([originals] + list(rebuilt.values()))
    side = rows.shape[-1] + 2
    ax.imshow(mosaic(rows, len(originals)), cmap="gray", vmin=0, vmax=1)
    ax.set_yticks([side * i + side / 2 - 0.5 for i in range(len(names))])
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xticks([])
    return save(
        fig,
        out / "inversion.png",
        caption="DDIM inversion: test digits (top) carried to noise by the "
        "deterministic sampler run backwards (leading spacing), then sampled again "
        "with the same number of steps.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Sample the DDPM lesson's U-Net with DDIM at several step counts and report the
    FID of each."""
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        description="DDIM sampling of the DDPM lesson's U-Net: FID against steps.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--steps",
        type=integers(at_least=1),
        default="5,10,20,50,100",
        help="comma-separated DDIM step counts (all T is always added)",
    )
    parser.add_argument(
        "--samples", type=integer(at_least=8), default=256, help="images per sampler"
    )
    parser.add_argument(
        "--timesteps",
        type=integer(at_least=2),
        default=defaults.timesteps,
        help="the DDPM's T",
    )
    parser.add_argument(
        "--train-steps",
        type=integer(at_least=1),
        default=defaults.steps,
        help="the DDPM's optimizer steps; the default is the cached model's",
    )
    parser.add_argument(
        "--judge-epochs",
        type=integer(at_least=1),
        default=30,
        help="epochs of the metrics lesson's judge; the default is its cached one",
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="seed of the start noise"
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to sample on",
    )
    parser.add_argument("--out", default="out/ddim", help="folder for the figures")
    args = parser.parse_args(argv)
    if max(args.steps) >= args.timesteps:
        parser.error(f"--steps must be below --timesteps ({args.timesteps})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(timesteps=args.timesteps, steps=args.train_steps)
    model = trained_model(config, args.device)
    schedule = make_schedule(config)
    judge = feature_extractor(args.judge_epochs)
    x_train, _, x_test, _ = (torch.from_numpy(a) for a in digit_images(size=16))
    T = schedule.steps
    generator = torch.Generator().manual_seed(args.seed)
    x_T = torch.randn(args.samples, 1, 16, 16, generator=generator).to(args.device)

    def score(images: torch.Tensor) -> float:
        return fid((images.clamp(-1, 1).cpu() + 1) / 2, x_test, judge)

    results: dict = {key: {} for key in ("eta 0, trailing", "eta 0, leading")}
    results["eta 1, trailing"] = {}
    grids = {}
    for steps in tqdm(args.steps, desc="step counts"):
        for key, eta, spacing in (
            ("eta 0, trailing", 0.0, "trailing"),
            ("eta 0, leading", 0.0, "leading"),
            ("eta 1, trailing", 1.0, "trailing"),
        ):
            x = ddim_sample(model, schedule, x_T, steps, eta, spacing, generator)
            results[key][steps] = score(x)
            if key == "eta 0, leading":
                grids[f"DDIM {steps}"] = x
    x = ddim_sample(model, schedule, x_T, T, 0.0, "leading")  # = trailing at S = T
    for key in ("eta 0, trailing", "eta 0, leading"):
        results[key][T] = score(x)
    grids[f"DDIM {T}"] = x
    # ddpm.sample draws its own start noise: give it a generator that starts with x_T.
    ddpm_x, _ = sample(
        model, schedule, args.samples, 16, torch.Generator().manual_seed(args.seed),
        device=args.device,
    )  # fmt: skip
    results["ddpm"] = score(ddpm_x)
    grids[f"DDPM {T}"] = ddpm_x
    real = x_train[torch.randperm(len(x_train), generator=generator)[: args.samples]]
    fid_real = fid(real, x_test, judge)

    originals = x_test[:8].to(args.device) * 2 - 1  # [8, 1, 16, 16] in [-1, 1]
    rebuilt, errors = {}, {}
    for steps in sorted({s for s in (10, 20, 100) if s < T}):
        noise = ddim_invert(model, schedule, originals, steps, "leading")
        rebuilt[steps] = ddim_sample(model, schedule, noise, steps, 0.0, "leading",
                                     clip=False)  # fmt: skip
        errors[steps] = (rebuilt[steps] - originals).pow(2).mean().sqrt().item()

    print(f"FID against the {len(x_test)} test digits, {args.samples} samples each")
    print(f"  real training digits: {fid_real:.2f}")
    print(f"  DDPM, {T} steps:      {results['ddpm']:.2f}")
    for key in ("eta 0, leading", "eta 0, trailing", "eta 1, trailing"):
        line = ", ".join(f"{s}: {v:.2f}" for s, v in sorted(results[key].items()))
        print(f"  DDIM {key}: {line}")
    print(
        "inversion RMSE (pixels in [-1, 1]): "
        + ", ".join(f"{s} steps {e:.3f}" for s, e in errors.items())
    )
    plot_fid(results, fid_real, T, out)
    plot_grids(grids, 8, out)
    plot_inversion(originals.cpu(), {s: x.cpu() for s, x in rebuilt.items()}, out)
    summary = {"fid_real": fid_real, "fid_ddpm": results["ddpm"]}
    for key, name in (("eta 0, leading", "ddim"), ("eta 0, trailing", "ddim_trailing"),
                      ("eta 1, trailing", "ddim_eta1")):  # fmt: skip
        summary.update({f"fid_{name}_{s}": v for s, v in results[key].items()})
    summary.update({f"inversion_rmse_{s}": e for s, e in errors.items()})
    return summary


if __name__ == "__main__":
    main()

# ## Exercises
#
# 1. Add the "linspace" spacing (`np.linspace(0, T - 1, S)`, rounded) and the DDIM
#    paper's quadratic spacing ($\tau_i \propto i^2$) to `timesteps`, and compare
#    their FIDs at 10 steps with leading and trailing.
# 2. Measure the FID at 20 steps for $\eta \in \{0, 0.2, 0.5, 1\}$. Where does the
#    extra noise start to hurt?
# 3. Interpolate between two start noises with spherical interpolation and sample
#    each with $\eta = 0$. Why does linear interpolation give washed-out images?
# 4. Make `ddim_step` keep $\epsilon_\theta$ after clipping (`diffusers`' default)
#    and plot FID against steps again. At how many steps does it overtake the
#    consistent step, and where does it collapse?
