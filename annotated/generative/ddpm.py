r"""
---
title: Denoising diffusion (DDPM)
summary: >-
  A diffusion model from the forward noising process up: linear and cosine schedules
  checked against diffusers' DDPMScheduler, a small U-Net trained to predict the
  noise, and ancestral sampling of 16×16 digits.
time: 40 s
expected:
  metric: last_loss
  short:
    - "--steps"
    - "12"
    - "--batch-size"
    - "16"
    - "--timesteps"
    - "20"
    - "--samples"
    - "6"
    - "--no-fid"
references:
  - key: sohl2015deep
    authors: [Jascha Sohl-Dickstein, Eric Weiss, Niru Maheswaranathan, Surya Ganguli]
    title: Deep Unsupervised Learning using Nonequilibrium Thermodynamics
    year: 2015
    venue: ICML 2015
    arxiv: "1503.03585"
  - key: ho2020denoising
    authors: [Jonathan Ho, Ajay Jain, Pieter Abbeel]
    title: Denoising Diffusion Probabilistic Models
    year: 2020
    venue: NeurIPS 2020
    arxiv: "2006.11239"
  - key: nichol2021improved
    authors: [Alex Nichol, Prafulla Dhariwal]
    title: Improved Denoising Diffusion Probabilistic Models
    year: 2021
    venue: ICML 2021
    arxiv: "2102.09672"
  - key: ronneberger2015unet
    authors: [Olaf Ronneberger, Philipp Fischer, Thomas Brox]
    title: "U-Net: Convolutional Networks for Biomedical Image Segmentation"
    year: 2015
    venue: MICCAI 2015
    arxiv: "1505.04597"
  - key: vaswani2017attention
    authors: [Ashish Vaswani, Noam Shazeer, Niki Parmar, Jakob Uszkoreit, Llion Jones,
      Aidan N. Gomez, Łukasz Kaiser, Illia Polosukhin]
    title: Attention Is All You Need
    year: 2017
    venue: NeurIPS 2017
    arxiv: "1706.03762"
worksheet:
  - region: Schedule.q_sample
    hint: >-
      Check the noise's shape and that t holds one valid integer step per image; look
      up ᾱ_t for each image, shape it [batch, 1, 1, 1] in x0's dtype and device, and
      return sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) noise.
    tests: [test_q_sample_matches_diffusers_add_noise]
  - region: Schedule.step
    hint: >-
      Check t, eps and the noise (needed for t > 0). Estimate the clean image x̂0 =
      (x_t - sqrt(1 - ᾱ_t) eps) / sqrt(ᾱ_t), clipped to [-1, 1] when asked; the
      posterior mean is sqrt(ᾱ_{t-1}) β_t / (1 - ᾱ_t) x̂0 + sqrt(α_t) (1 - ᾱ_{t-1}) /
      (1 - ᾱ_t) x_t; add sqrt(β̃_t) noise except at t = 0. Return (x_{t-1}, x̂0).
    tests: [test_step_matches_diffusers, test_sampling_chain_matches_diffusers]
  - region: diffusion_loss
    hint: >-
      Check the images; draw one random step per image and fresh Gaussian noise (both
      from the generator, on the CPU, then moved to x0's device), noise x0 to x_t in
      closed form, and return the mean squared error between the model's prediction
      at (x_t, t) and the noise.
    tests: [test_unet_shapes_and_gradients]
---

A diffusion model learns to undo a process that destroys data slowly
[@sohl2015deep]. The *forward* process adds a little Gaussian noise to an image, then a
little more, for $T$ steps, until nothing of the image is left and $x_T$ is (almost
exactly) a sample of $\mathcal N(0, I)$. Each step is so small that its reverse is
also close to Gaussian, so a network can learn the reverse steps one at a time; run
them from pure noise and an image comes out.

Ho, Jain and Abbeel [@ho2020denoising] made this work on images with three choices
that this lesson follows: the forward process has a closed form for any step, so
training picks a random step instead of simulating the chain; the network predicts
the *noise* that was added, trained with a plain squared error; and the network is a
U-Net [@ronneberger2015unet] told the step through a sinusoidal embedding. Sampling
("ancestral sampling") walks the learned chain from $t = T$ down to $0$.

The pieces are checked against Hugging Face `diffusers`' `DDPMScheduler` in the
tests: the linear and cosine [@nichol2021improved] schedules, $\bar\alpha_t$, the
posterior variance, and one sampling step with the same noise. The demo trains a
U-Net of about 190,000 parameters on 16×16 digits in under a minute of CPU and
samples from it. A later lesson, [DDIM](ddim.md), reuses this file's `Schedule`,
`UNet` and `trained_model()` to sample in a few dozen steps instead of hundreds.
"""

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from annotated.data import cached_weights, digit_images, integer, number, torch_device
from annotated.figures import figure, save

# ## The forward process
#
# Pick variances $\beta_1, \dots, \beta_T$ in $(0, 1)$, the *schedule*. One step of the
# forward process shrinks the image a little and adds noise:
#
# $$q(x_t \mid x_{t-1}) = \mathcal N\big(\sqrt{1 - \beta_t}\, x_{t-1},\
# \beta_t I\big).$$
#
# The shrinking keeps the variance bounded: if $x_{t-1}$ has variance 1, so does
# $x_t$. Write $\alpha_t = 1 - \beta_t$ and $\bar\alpha_t = \prod_{s \le t} \alpha_s$.
# Two Gaussian steps compose into one Gaussian, and by induction any number do: the
# mean of $x_t$ given $x_0$ is $\sqrt{\alpha_t}$ times the previous mean, and its
# variance is $\alpha_t$ times the previous variance plus $\beta_t$,
#
# $$\begin{aligned} m_t &= \sqrt{\alpha_t}\, m_{t-1} = \sqrt{\bar\alpha_t}\, x_0, \\
# v_t &= \alpha_t v_{t-1} + \beta_t = 1 - \bar\alpha_t, \end{aligned}$$
#
# (the second by induction: $\alpha_t(1 - \bar\alpha_{t-1}) + 1 - \alpha_t = 1 -
# \bar\alpha_t$). So
#
# $$q(x_t \mid x_0) = \mathcal N\big(\sqrt{\bar\alpha_t}\, x_0,\ (1 - \bar\alpha_t)
# I\big),$$
#
# and $x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon$ with
# $\epsilon \sim \mathcal N(0, I)$ is one draw from it, with no loop over steps.
# `forward_moments` runs the two recursions above and `iterate_forward` simulates the
# chain step by step; the tests check both against the closed form.
#
# **Indexing.** The paper counts steps $1, \dots, T$. Code (ours and `diffusers`')
# stores the schedule in arrays indexed $0, \dots, T - 1$, so array index `t` is the
# paper's step $t + 1$: `alphas_cumprod[0]` is $\bar\alpha_1 = \alpha_1$, and
# `alphas_cumprod[T - 1]` is $\bar\alpha_T \approx 0$. From here on, $t$ is the array
# index.
#
# ## Two schedules
#
# Ho et al. used $T = 1000$ and $\beta$ rising linearly from $10^{-4}$ to $0.02$.
# Nichol and Dhariwal [@nichol2021improved] noticed that with the linear schedule
# $\bar\alpha_t$ reaches nearly zero long before $T$, so the last part of the chain is
# pure noise that teaches nothing, and the effect is worst on small images. They
# define $\bar\alpha$ directly, as a squared cosine of time with a small offset
# $s = 0.008$ so that $\beta$ is not vanishingly small near $t = 0$,
#
# $$\bar\alpha(\tau) = \frac{f(\tau)}{f(0)},\quad f(\tau) = \cos^2\Big(\frac{\tau +
# s}{1 + s}\cdot\frac{\pi}{2}\Big),$$
#
# and read the betas off consecutive ratios, $\beta_t = 1 - \bar\alpha(\tfrac{t +
# 1}{T})/\bar\alpha(\tfrac{t}{T})$, capped at $0.999$ because the ratio goes to zero
# at the very end. (`diffusers` calls it `"squaredcos_cap_v2"`.) We use it for the
# 16×16 digits.


def linear_betas(
    steps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """Ho et al.'s schedule: `steps` betas evenly spaced from `beta_start` to
    `beta_end`, float64."""
    return torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)


def cosine_betas(steps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    r"""Nichol and Dhariwal's schedule: $\beta_t = 1 - \bar\alpha(\frac{t+1}{T}) /
    \bar\alpha(\frac{t}{T})$, capped at `max_beta`, float64."""
    tau = torch.arange(steps + 1, dtype=torch.float64) / steps  # [steps + 1]
    f = torch.cos((tau + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


# ## The schedule and everything derived from it
#
# Sampling needs the *reverse* of a forward step. The reverse $q(x_{t-1} \mid x_t)$
# depends on the whole data distribution and is what the network must learn, but
# conditioned on $x_0$ as well it is a Gaussian we can write down (Bayes' rule on
# three Gaussians; Ho et al.'s eqs. 6–7):
#
# $$\begin{aligned} q(x_{t-1} \mid x_t, x_0) &= \mathcal N(\tilde\mu_t,\
# \tilde\beta_t I), \\ \tilde\mu_t &= \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1 -
# \bar\alpha_t}\, x_0 + \frac{\sqrt{\alpha_t}\,(1 - \bar\alpha_{t-1})}{1 -
# \bar\alpha_t}\, x_t, \\ \tilde\beta_t &= \frac{1 - \bar\alpha_{t-1}}{1 -
# \bar\alpha_t}\, \beta_t, \end{aligned}$$
#
# with $\bar\alpha_{-1} = 1$ before the first step, so $\tilde\beta_0 = 0$: the last
# reverse step adds no noise. `Schedule` computes these arrays once, in float64, from
# the betas. A schedule lives on the CPU; its methods move the few numbers they need
# to the data's device and dtype.


class Schedule:
    r"""The betas of a diffusion and the arrays derived from them, all `[steps]`
    float64: `alphas`, `alphas_cumprod` ($\bar\alpha_t$), `alphas_cumprod_prev`
    ($\bar\alpha_{t-1}$, 1 at `t = 0`) and `posterior_variance`
    ($\tilde\beta_t$)."""

    def __init__(self, betas: torch.Tensor):
        if not isinstance(betas, torch.Tensor) or betas.ndim != 1 or len(betas) < 1:
            raise ValueError(
                f"betas must be a 1-D tensor with at least one step, got {betas!r}"
            )
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(
                "betas must lie in (0, 1), got values in "
                f"[{betas.min().item():.3g}, {betas.max().item():.3g}]"
            )
        self.betas = betas.to(torch.float64)
        self.alphas = 1 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat(
            [torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]]
        )
        self.posterior_variance = (
            (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod) * self.betas
        )

    @classmethod
    def linear(
        cls, steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ):
        """Ho et al.'s linear schedule."""
        return cls(linear_betas(steps, beta_start, beta_end))

    @classmethod
    def cosine(cls, steps: int = 1000, s: float = 0.008, max_beta: float = 0.999):
        """Nichol and Dhariwal's cosine schedule."""
        return cls(cosine_betas(steps, s, max_beta))

    @property
    def steps(self) -> int:
        """$T$, the number of diffusion steps."""
        return len(self.betas)

    def check_step(self, t: int) -> int:
        """`t` if it is an int index into the schedule, else a clear error."""
        if isinstance(t, torch.Tensor) and t.ndim == 0:
            t = int(t)
        if not isinstance(t, int) or not 0 <= t < self.steps:
            raise ValueError(f"t must be an int in [0, {self.steps - 1}], got {t!r}")
        return t

    # ### Noising in one line
    #
    # `q_sample` is the closed form: one $\bar\alpha_t$ per image of the batch,
    # broadcast over its pixels.

    def q_sample(
        self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        r"""$x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1 - \bar\alpha_t}\,\epsilon$ for a
        batch `x0 [batch, ...]`, steps `t [batch]` and `noise` shaped like `x0`."""
        if noise.shape != x0.shape:
            raise ValueError(
                f"noise must have x0's shape {tuple(x0.shape)}, "
                f"got {tuple(noise.shape)}"
            )
        if t.ndim != 1 or len(t) != len(x0) or t.is_floating_point():
            raise ValueError(
                f"t must be an integer tensor [batch = {len(x0)}], got "
                f"{t.dtype} {tuple(t.shape)}"
            )
        if len(t) and not (0 <= t.min() and t.max() < self.steps):
            raise ValueError(f"t must lie in [0, {self.steps - 1}]")
        alpha_bar = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype)  # [batch]
        alpha_bar = alpha_bar.view(-1, *([1] * (x0.ndim - 1)))  # [batch, 1, 1, 1]
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise

    # ### One ancestral step
    #
    # The network $\epsilon_\theta(x_t, t)$ guesses the noise in $x_t$. Solving the
    # closed form for $x_0$ turns the guess into a guess of the clean image,
    #
    # $$\hat x_0 = \frac{x_t - \sqrt{1 - \bar\alpha_t}\,\epsilon_\theta(x_t,
    # t)}{\sqrt{\bar\alpha_t}},$$
    #
    # and the step draws $x_{t-1}$ from $q(x_{t-1} \mid x_t, \hat x_0)$: the posterior
    # mean $\tilde\mu_t$ with $\hat x_0$ in place of $x_0$, plus
    # $\sqrt{\tilde\beta_t}\,z$. This is Ho et al.'s Algorithm 2 written through
    # $\hat x_0$, which is what their code does and what `diffusers` does, and it
    # allows one practical trick: the data lies in $[-1, 1]$, so $\hat x_0$ may be
    # clipped to that range (`clip=True`) before it is used. Early in sampling
    # $\hat x_0$ is a wild guess, and clipping stops it from throwing the chain off
    # the data's range. Using $\tilde\beta_t$ as the reverse variance is
    # `diffusers`' `"fixed_small"`; Ho et al. found $\beta_t$ ("fixed_large") about as
    # good.

    def step(
        self,
        eps: torch.Tensor,
        t: int,
        x_t: torch.Tensor,
        noise: torch.Tensor | None = None,
        clip: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One reverse step from `x_t` at index `t` given the predicted noise `eps`:
        returns `(x_{t-1}, x0_hat)`. `noise` (shaped like `x_t`) is the $z$ to add;
        it is ignored at `t = 0`, where the variance is 0."""
        t = self.check_step(t)
        if eps.shape != x_t.shape:
            raise ValueError(
                f"eps must have x_t's shape {tuple(x_t.shape)}, got {tuple(eps.shape)}"
            )
        if t > 0 and (noise is None or noise.shape != x_t.shape):
            raise ValueError(
                f"noise must be a tensor shaped like x_t {tuple(x_t.shape)} for t > 0"
            )
        alpha_bar = self.alphas_cumprod[t].item()
        alpha_bar_prev = self.alphas_cumprod_prev[t].item()
        beta = self.betas[t].item()
        x0_hat = (x_t - math.sqrt(1 - alpha_bar) * eps) / math.sqrt(alpha_bar)
        if clip:
            x0_hat = x0_hat.clamp(-1, 1)
        mean = (math.sqrt(alpha_bar_prev) * beta / (1 - alpha_bar)) * x0_hat + (
            math.sqrt(self.alphas[t].item()) * (1 - alpha_bar_prev) / (1 - alpha_bar)
        ) * x_t
        if t == 0:
            return mean, x0_hat
        return mean + math.sqrt(self.posterior_variance[t].item()) * noise, x0_hat


# ### The forward process, the long way
#
# The closed form is the whole reason training is cheap, so it deserves a check
# against the definition. `forward_moments` runs the mean and variance recursions
# exactly; `iterate_forward` draws the chain one step at a time.


def forward_moments(
    schedule: Schedule, x0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean `[steps, ...]` and variance `[steps]` of $x_t$ given `x0`, by running
    $m_t = \sqrt{\alpha_t} m_{t-1}$, $v_t = \alpha_t v_{t-1} + \beta_t$."""
    mean, variance = x0.to(torch.float64), torch.zeros((), dtype=torch.float64)
    means, variances = [], []
    for alpha, beta in zip(schedule.alphas, schedule.betas):
        mean = alpha.sqrt() * mean
        variance = alpha * variance + beta
        means.append(mean)
        variances.append(variance)
    return torch.stack(means), torch.stack(variances)


def iterate_forward(
    schedule: Schedule, x0: torch.Tensor, t: int, generator: torch.Generator
) -> torch.Tensor:
    r"""A draw of $x_t$ made by applying $q(x_s \mid x_{s-1})$ for `s = 0, ..., t`."""
    t = schedule.check_step(t)
    x = x0
    for s in range(t + 1):
        beta = schedule.betas[s].to(x.dtype)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        x = (1 - beta).sqrt() * x + beta.sqrt() * noise
    return x


# ## The network
#
# The network sees a noisy image and the step $t$, and outputs an image-shaped guess
# of the noise. Its shape is a U-Net [@ronneberger2015unet]: convolutions at 16×16,
# downsample to 8×8 and 4×4 where a 3×3 kernel sees most of the digit, then upsample
# back, concatenating the features saved on the way down ("skip connections") so that
# fine detail need not squeeze through the 4×4 bottleneck. The output has the input's
# size, as a noise prediction must.
#
# ### Telling the network the time
#
# One network serves all $T$ steps, and the right denoising at $t = 999$ (almost pure
# noise: guess a plausible digit) is nothing like the right one at $t = 5$ (remove a
# faint speckle). The step enters as the sinusoidal embedding of the Transformer's
# positions [@vaswani2017attention]: $d/2$ frequencies $\omega_i = 10000^{-2i/d}$,
#
# $$\operatorname{emb}(t) = \big[\sin(\omega_i t)\big]_{i} \,\big\Vert\,
# \big[\cos(\omega_i t)\big]_{i},$$
#
# so that nearby steps get similar vectors and the network can still resolve single
# steps with the fast frequencies. A small MLP turns it into a vector that every
# residual block adds, per channel, to its features.


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    r"""Sinusoidal embedding `[batch, dim]` of steps `t [batch]`: $\sin(\omega_i t)$
    then $\cos(\omega_i t)$, $\omega_i = 10000^{-2i/d}$."""
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) / half
    frequencies = torch.exp(-math.log(10000.0) * exponent)  # [half]
    angles = t.float()[:, None] * frequencies[None]  # [batch, half]
    return torch.cat([angles.sin(), angles.cos()], dim=1)  # [batch, dim]


# ### The residual block
#
# Each block is two 3×3 convolutions with GroupNorm and SiLU before each (the
# "pre-activation" order of Ho et al.'s network), the time vector added between
# them, and a residual connection (a 1×1 convolution where the channel count
# changes). GroupNorm rather than BatchNorm, because a batch holds images at very
# different noise levels whose statistics should not be pooled.


class ResBlock(nn.Module):
    """Two 3×3 convolutions with the time added in between, plus a residual."""

    def __init__(self, channels_in: int, channels_out: int, time_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, channels_in)
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.time = nn.Linear(time_dim, channels_out)
        self.norm2 = nn.GroupNorm(8, channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.skip = (
            nn.Conv2d(channels_in, channels_out, 1)
            if channels_in != channels_out
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # [batch, out, h, w]
        h = h + self.time(time)[:, :, None, None]  # time added per channel
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


# ### The U-Net
#
# Three resolutions, 16×16 → 8×8 → 4×4, with `channels` features at each; strided
# convolutions go down, nearest-neighbour upsampling and a convolution go up. The
# last convolution starts at zero, so an untrained network predicts no noise at all,
# a calm starting point for training. With the default widths (16, 32, 64) it has
# about 190,000 parameters. Images must have sides divisible by 4.


@dataclass
class UNetConfig:
    """Widths of the U-Net."""

    channels: tuple[int, ...] = (16, 32, 64)
    """features at 16×16, 8×8 and 4×4 (multiples of 8, for GroupNorm)"""
    time_dim: int = 64
    """width of the sinusoidal step embedding"""


class UNet(nn.Module):
    r"""$\epsilon_\theta(x_t, t)$: `[batch, 1, h, w]` images and `[batch]` steps in,
    predicted noise `[batch, 1, h, w]` out."""

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        config = config or UNetConfig()
        c1, c2, c3 = config.channels
        d = config.time_dim
        self.time_dim = d
        self.time_mlp = nn.Sequential(
            nn.Linear(d, 4 * d), nn.SiLU(), nn.Linear(4 * d, d)
        )
        self.stem = nn.Conv2d(1, c1, 3, padding=1)
        self.down1 = ResBlock(c1, c1, d)
        self.pool1 = nn.Conv2d(c1, c1, 3, stride=2, padding=1)
        self.down2 = ResBlock(c1, c2, d)
        self.pool2 = nn.Conv2d(c2, c2, 3, stride=2, padding=1)
        self.middle = ResBlock(c2, c3, d)
        self.up2 = nn.Conv2d(c3, c2, 3, padding=1)
        self.block2 = ResBlock(2 * c2, c2, d)
        self.up1 = nn.Conv2d(c2, c1, 3, padding=1)
        self.block1 = ResBlock(2 * c1, c1, d)
        self.norm = nn.GroupNorm(8, c1)
        self.head = nn.Conv2d(c1, 1, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        time = self.time_mlp(timestep_embedding(t, self.time_dim))  # [batch, d]
        h1 = self.down1(self.stem(x), time)  # [batch, c1, 16, 16]
        h2 = self.down2(self.pool1(h1), time)  # [batch, c2, 8, 8]
        h = self.middle(self.pool2(h2), time)  # [batch, c3, 4, 4]
        h = self.up2(
            F.interpolate(h, scale_factor=2.0, mode="nearest")
        )  # [b, c2, 8, 8]
        h = self.block2(torch.cat([h, h2], dim=1), time)  # [batch, c2, 8, 8]
        h = self.up1(F.interpolate(h, scale_factor=2.0, mode="nearest"))  # 16×16
        h = self.block1(torch.cat([h, h1], dim=1), time)  # [batch, c1, 16, 16]
        return self.head(F.silu(self.norm(h)))  # [batch, 1, 16, 16]


# ## Training: predict the noise
#
# The variational bound on $-\log p_\theta(x_0)$ splits into one KL term per step,
# each between $q(x_{t-1} \mid x_t, x_0)$ and the model's reverse step. Both are
# Gaussians with the same fixed variance, so each term is a squared distance between
# means; writing the model's mean through a noise prediction, as `step` does, turns
# it into a weighted squared error between the true noise and the predicted one. Ho
# et al. dropped the weights and found the samples better for it: the *simple loss*
#
# $$L_\text{simple} = \mathbb E_{x_0, t, \epsilon}\Big[\big\lVert \epsilon -
# \epsilon_\theta\big(\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1 - \bar\alpha_t}\,\epsilon,\
# t\big)\big\rVert^2\Big],$$
#
# with $t$ uniform over the steps. One training step: take a batch of images, a
# random step and fresh noise for each, noise the images in closed form, and regress
# the noise.


def check_images(x: torch.Tensor) -> None:
    """A clear error unless `x` is a float batch `[batch, 1, h, w]` with sides
    divisible by 4."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"images must be a float tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] % 4 or x.shape[3] % 4:
        raise ValueError(
            "images must be [batch, 1, h, w] with h and w divisible by 4, got "
            f"{tuple(x.shape)}"
        )


def diffusion_loss(
    model: nn.Module,
    schedule: Schedule,
    x0: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""$L_\text{simple}$ on a batch `x0 [batch, 1, h, w]` in [-1, 1]: one random
    step and fresh noise per image; returns the mean squared error."""
    check_images(x0)
    t = torch.randint(0, schedule.steps, (len(x0),), generator=generator)  # [batch]
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    t, noise = t.to(x0.device), noise.to(x0.device)
    x_t = schedule.q_sample(x0, t, noise)  # [batch, 1, h, w]
    return F.mse_loss(model(x_t, t), noise)


# ### The training loop
#
# Adam at a constant rate, and an exponential moving average of the weights kept
# beside them, as Ho et al. do (their decay is 0.9999; our run is short, so 0.99):
# the noise in the loss makes the raw weights jitter, and sampling runs the network
# hundreds of times, so it pays to sample with the averaged ones.
# `torch.optim.swa_utils.AveragedModel` keeps the average. The images are the digits
# of [the VAE lesson](vae.md), mapped from [0, 1] to [-1, 1], the range of the noise.


@dataclass
class TrainConfig:
    """What `train` and `trained_model` do."""

    schedule: str = "cosine"
    """"cosine" or "linear" betas"""
    timesteps: int = 500
    """T, the number of diffusion steps"""
    steps: int = 500
    """optimizer steps"""
    batch_size: int = 64
    """images per step"""
    lr: float = 2e-3
    """Adam learning rate"""
    ema_decay: float = 0.99
    """decay of the weights' moving average"""
    seed: int = 0
    """seed of the initial weights and of every random draw"""


def make_schedule(config: TrainConfig) -> Schedule:
    """The schedule `config` names."""
    if config.schedule == "cosine":
        return Schedule.cosine(config.timesteps)
    if config.schedule == "linear":
        return Schedule.linear(config.timesteps)
    raise ValueError(f"schedule must be 'cosine' or 'linear', got {config.schedule!r}")


def training_images() -> torch.Tensor:
    """The digits' training split `[1438, 1, 16, 16]`, scaled to [-1, 1]."""
    x_train, _, _, _ = digit_images(size=16)
    return torch.from_numpy(x_train) * 2 - 1


def train(
    config: TrainConfig, images: torch.Tensor, device: str = "cpu"
) -> tuple[UNet, list[float]]:
    """Train a `UNet` on `images [n, 1, 16, 16]` in [-1, 1]; returns the
    moving-average model in eval mode and the loss of every step."""
    check_images(images)
    if config.steps < 1 or config.batch_size < 1:
        raise ValueError("config.steps and config.batch_size must be >= 1")
    schedule = make_schedule(config)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = UNet().to(device)
    average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    images = images.to(device)
    losses = []
    for _ in tqdm(range(config.steps), desc="training the U-Net"):
        batch = torch.randint(0, len(images), (config.batch_size,), generator=generator)
        loss = diffusion_loss(model, schedule, images[batch.to(device)], generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        average.update_parameters(model)
        losses.append(loss.item())
    return average.module.eval(), losses


# ### A model trained once
#
# [DDIM](ddim.md) samples from this very model. `trained_model` trains it with the
# default `TrainConfig` the first time and keeps the weights with
# `annotated.data.cached_weights`, a safetensors file in the user's cache named after
# this file's hash, so editing the lesson trains a fresh one. Another config is cached
# under its own name. Use it with `make_schedule(config)`.


def cache_name(config: TrainConfig) -> str:
    """The cache file's name for the weights `config` trains."""
    if config == TrainConfig():
        return "ddpm-digits"
    return (
        f"ddpm-digits-{config.schedule}-T{config.timesteps}-{config.steps}-steps-"
        f"b{config.batch_size}-seed{config.seed}"
    )


def trained_model(config: TrainConfig | None = None, device: str = "cpu") -> UNet:
    """The U-Net `config` trains (the default config if None), from the cache,
    training it on the first call; in eval mode on `device`."""
    config = config or TrainConfig()

    def train_weights() -> dict:
        model, _ = train(config, training_images(), device)
        return {key: value.cpu() for key, value in model.state_dict().items()}

    model = UNet()
    model.load_state_dict(cached_weights(cache_name(config), __file__, train_weights))
    return model.to(device).eval()


# ## Ancestral sampling
#
# Start from $x_{T-1} \sim \mathcal N(0, I)$ (array indexing) and apply `step` for
# $t = T - 1, \dots, 0$: $T$ network calls for one batch of images (500 here). That
# cost is the weak point of DDPM that [DDIM](ddim.md) attacks. `keep` records $x_t$
# at the listed steps, for the picture of the chain.


@torch.no_grad()
def sample(
    model: nn.Module,
    schedule: Schedule,
    n: int,
    size: int = 16,
    generator: torch.Generator | None = None,
    clip: bool = True,
    keep: tuple[int, ...] = (),
    device: str = "cpu",
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    r"""`n` images `[n, 1, size, size]`, and `{t: x_t}` on the CPU for each step in
    `keep`. The images are the last step's $\hat x_0$: within [-1, 1] with `clip`,
    unclipped and possibly outside it without (clamp them before display)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if not isinstance(size, int) or size < 4 or size % 4:
        raise ValueError(f"size must be a positive multiple of 4, got {size!r}")
    shape = (n, 1, size, size)
    x = torch.randn(shape, generator=generator).to(device)  # x_{T-1}
    kept = {}
    for t in tqdm(range(schedule.steps - 1, -1, -1), desc="sampling", leave=False):
        eps = model(x, torch.full((n,), t, device=device))  # [n, 1, size, size]
        noise = torch.randn(shape, generator=generator).to(device) if t > 0 else None
        if t in keep:
            kept[t] = x.cpu()
        x, _ = schedule.step(eps, t, x, noise, clip)
    return x, kept


# ## The example
#
# The default U-Net on two noisy 16×16 images at two steps.


def example():
    """A small example: the default U-Net predicting the noise in two images."""
    torch.manual_seed(0)
    return UNet(), (torch.randn(2, 1, 16, 16), torch.tensor([10, 900]))


# ## The demo
#
# Train with the default config, save the weights to the cache for
# [DDIM](ddim.md) (a default-config run trains exactly what `trained_model` would),
# sample 64 digits with $T = 500$ ancestral steps, and score them with the FID of
# [the metrics lesson](metrics.md) against the held-out digits, beside the FID of the
# same number of real training digits against the same test digits (the floor a
# perfect model would reach at this sample size).


def mosaic(images: torch.Tensor, columns: int) -> np.ndarray:
    """`images [n, 1, s, s]` in [-1, 1] tiled into one [0, 1] array, `columns` wide."""
    n, _, side, _ = images.shape
    rows = n // columns
    grid = images[: rows * columns, 0].clamp(-1, 1).add(1).div(2)
    grid = F.pad(grid, (1, 1, 1, 1), value=0.5)  # a grey frame around each image
    side += 2
    grid = grid.reshape(rows, columns, side, side).permute(0, 2, 1, 3)
    return grid.reshape(rows * side, columns * side).numpy()


def plot_training(
    losses: list[float], samples: torch.Tensor, steps: int, out: Path
) -> Path:
    """The loss per step (and its running mean) beside a grid of samples."""
    fig, (left, right) = figure(panels=2)
    step_axis = np.arange(1, len(losses) + 1)
    window = max(1, len(losses) // 50)
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    left.plot(step_axis, losses, color="C0", alpha=0.3, lw=0.5, label="one batch")
    left.plot(step_axis[window - 1 :], smooth, color="C0", label=f"mean of {window}")
    left.set_yscale("log")
    left.set_xlabel("step $k$")
    left.set_ylabel(r"$L_\mathrm{simple}$")
    left.legend()
    columns = min(8, len(samples))
    right.imshow(mosaic(samples, columns), cmap="gray", vmin=0, vmax=1)
    right.set_axis_off()
    right.set_title(f"{len(samples) // columns * columns} samples")
    return save(
        fig,
        out / "samples.png",
        caption="Left: the simple loss (noise-prediction error) falling over training. "
        f"Right: digits drawn by ancestral sampling with the trained U-Net, {steps} "
        "denoising steps each, starting from pure noise.",
    )


def plot_chain(kept: dict[int, torch.Tensor], final: torch.Tensor, out: Path) -> Path:
    """Rows of samples, columns of steps from pure noise to the image."""
    fig, ax = figure()
    times = sorted(kept, reverse=True)
    rows = min(6, len(final))
    columns = [kept[t][:rows] for t in times] + [final[:rows].cpu()]
    grid = torch.stack(columns, dim=1)  # [rows, columns, 1, s, s]
    side = grid.shape[-1] + 2  # with mosaic's frame
    ax.imshow(mosaic(grid.flatten(0, 1), len(columns)), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([side * i + side / 2 - 0.5 for i in range(len(columns))])
    ax.set_xticklabels([f"{t + 1}" for t in times] + ["0"], fontsize=8)
    ax.set_xlabel("step $t$ (paper's numbering; 0 is the final image)")
    ax.set_yticks([])
    return save(
        fig,
        out / "chain.png",
        caption="The reverse chain of six samples, from pure noise (left) to digits "
        "(right): the outline of a digit appears in the middle of the chain, and the "
        "last steps only sharpen it.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train a DDPM on 16×16 digits, sample from it, draw the figures and report the
    samples' FID."""
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        description="Train a denoising diffusion model on 16×16 digits and sample.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--steps", type=integer(at_least=1), default=defaults.steps, help="train steps"
    )
    parser.add_argument(
        "--batch-size",
        type=integer(at_least=1),
        default=defaults.batch_size,
        help="images per step",
    )
    parser.add_argument(
        "--lr", type=number(above=0), default=defaults.lr, help="Adam rate"
    )
    parser.add_argument(
        "--schedule",
        choices=["cosine", "linear"],
        default=defaults.schedule,
        help="the beta schedule",
    )
    parser.add_argument(
        "--timesteps",
        type=integer(at_least=10),
        default=defaults.timesteps,
        help="diffusion steps T",
    )
    parser.add_argument(
        "--samples", type=integer(at_least=6), default=64, help="images to sample"
    )
    parser.add_argument(
        "--no-clip", action="store_true", help="do not clip x0_hat to [-1, 1]"
    )
    parser.add_argument(
        "--no-fid", action="store_true", help="skip the FID (needs the metrics judge)"
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=defaults.seed, help="random seed"
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to train and sample on",
    )
    parser.add_argument("--out", default="out/ddpm", help="folder for the figures")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(
        schedule=args.schedule,
        timesteps=args.timesteps,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    model, losses = train(config, training_images(), args.device)
    weights = {key: value.cpu() for key, value in model.state_dict().items()}
    cached_weights(cache_name(config), __file__, lambda: weights)
    schedule = make_schedule(config)
    generator = torch.Generator().manual_seed(args.seed)
    T = schedule.steps
    keep = tuple(
        sorted({T - 1, (3 * T) // 4, T // 2, T // 3, T // 5, T // 10, T // 20})
    )
    x, kept = sample(
        model,
        schedule,
        args.samples,
        16,
        generator,
        not args.no_clip,
        keep,
        args.device,
    )
    images = x.clamp(-1, 1).cpu()
    first = float(np.mean(losses[: max(1, len(losses) // 10)]))
    last = float(np.mean(losses[-max(1, len(losses) // 10) :]))
    print(f"loss: first tenth {first:.4f}, last tenth {last:.4f}")
    plot_training(losses, images, schedule.steps, out)
    plot_chain(kept, images, out)
    result = {"first_loss": first, "last_loss": last}
    if not args.no_fid:
        from annotated.generative.metrics import fid, feature_extractor

        judge = feature_extractor()
        x_train, _, x_test, _ = (torch.from_numpy(a) for a in digit_images(size=16))
        real = x_train[torch.randperm(len(x_train), generator=generator)[: len(images)]]
        result["fid"] = fid((images + 1) / 2, x_test, judge)
        result["fid_real"] = fid(real, x_test, judge)
        print(
            f"FID against the {len(x_test)} test digits: samples {result['fid']:.2f}, "
            f"{len(images)} real training digits {result['fid_real']:.2f}"
        )
    return result


if __name__ == "__main__":
    main()

# ## Exercises
#
# 1. Train with `--schedule linear` and compare the chain figure: at which step does a
#    digit's outline appear now? Plot $\bar\alpha_t$ of both schedules to see why.
# 2. Sample with $\beta_t$ instead of $\tilde\beta_t$ as the reverse variance
#    ("fixed_large"). Do the samples or the FID change?
# 3. Sample with `--no-clip`. What goes wrong early in the chain, and why does
#    clipping $\hat x_0$ fix it?
# 4. Replace the noise target by $x_0$ itself (predict the image, not the noise) and
#    derive the matching `step`. Which trains faster here?
