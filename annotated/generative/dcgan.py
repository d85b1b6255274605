r"""
---
title: DCGAN
summary: >-
  A generator and a discriminator of strided convolutions play the GAN game on 16×16
  digits; the non-saturating loss against the minimax one, the N(0, 0.02²) init, sample
  grids over training, and the samples' FID as computed by the metrics lesson
  (`generative/metrics`).
time: 20 s
expected:
  metric: fid
  short:
    - "--steps"
    - "300"
    - "--width"
    - "16"
    - "--batch-size"
    - "32"
    - "--samples"
    - "400"
    - "--judge-epochs"
    - "5"
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
  - key: radford2016unsupervised
    authors: [Alec Radford, Luke Metz, Soumith Chintala]
    title: >-
      Unsupervised Representation Learning with Deep Convolutional Generative
      Adversarial Networks
    year: 2016
    venue: ICLR 2016
    arxiv: "1511.06434"
  - key: ioffe2015batch
    authors: [Sergey Ioffe, Christian Szegedy]
    title: >-
      Batch Normalization: Accelerating Deep Network Training by Reducing Internal
      Covariate Shift
    year: 2015
    venue: ICML 2015
    arxiv: "1502.03167"
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
worksheet:
  - region: discriminator_loss
    hint: >-
      Binary cross-entropy written on the logits with softplus: the mean of
      softplus(-l) over the real logits (label 1) plus the mean of softplus(l) over
      the fakes (label 0).
    tests:
      - test_discriminator_loss_matches_bce_with_logits
      - test_losses_stay_finite_at_extreme_logits
  - region: generator_loss
    hint: >-
      Non-saturating: the mean of softplus(-l) on the fakes' logits (the fakes
      labelled real); minimax: minus the mean of softplus(l). Any other kind is a
      ValueError naming the choices.
    tests:
      - test_generator_losses_match_bce_with_logits
      - test_minimax_gradient_vanishes_where_the_generator_is_losing
  - region: DCGAN.step
    hint: >-
      Draw z and make the fakes. Discriminator first: real and detached fakes in two
      separate passes, its loss, zero_grad, backward, step. Then the generator: the
      same fakes, attached, through the updated discriminator, its loss, zero_grad,
      backward, step. Return both losses as floats.
    tests: [test_step_matches_a_hand_written_round_and_detaches_the_fakes]
---

A generative adversarial network [@goodfellow2014generative] learns to draw samples
without ever writing down a density. Two networks play a game: the *generator* $G$
turns noise $z$ into an image, the *discriminator* $D$ looks at an image and says how
likely it is to be real. $D$ is trained to tell the two apart; $G$ is trained to fool
$D$. At the game's equilibrium $G$'s samples are distributed like the data and $D$
can only guess, $D(x) = \tfrac12$ everywhere.

The first GANs were fully connected and hard to train at all. DCGAN
[@radford2016unsupervised] is the list of architectural rules that made convolutional
GANs train reliably, and it is still the baseline every GAN paper starts from. This
lesson builds it for 16×16 digits, explains why the generator is trained on a
different loss than the game's own (with the gradient at $D(G(z)) \approx 0$ in
numbers), shows the samples of a fixed set of $z$ sharpening over training, and scores
them with the FID of the [metrics lesson](metrics.md): on 2 CPU cores, about twelve
seconds of training take the generator from noise to digits.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from annotated.data import digit_images, integer, number, torch_device
from annotated.figures import figure, save
from annotated.generative.metrics import feature_extractor, fid

# ## The game
#
# With $p_\text{data}$ the data and $p_z$ the noise (here a standard normal in
# `latent` dimensions), GAN training is the two-player game [@goodfellow2014generative]
#
# $$
# \begin{aligned}
# \min_G \max_D\; V &= \mathbb E_{x}\log D(x) \\
# &\quad + \mathbb E_{z}\log\big(1 - D(G(z))\big).
# \end{aligned}
# $$
#
# For a fixed $G$ the best discriminator is
# $D^*(x) = p_\text{data}(x) / (p_\text{data}(x) + p_G(x))$, and with it the game's
# value is $2\,\mathrm{JSD}(p_\text{data}\Vert p_G) - \log 4$: the generator
# minimises a Jensen–Shannon divergence it never computes. In practice both players
# take alternating gradient steps on mini-batches.
#
# ### The losses, on logits
#
# $D$ outputs a logit $\ell$ and $D(x) = \sigma(\ell)$. The logs of a sigmoid are
# softplus functions, $\log\sigma(\ell) = -\operatorname{softplus}(-\ell)$ and
# $\log(1 - \sigma(\ell)) = -\operatorname{softplus}(\ell)$, which `F.softplus`
# evaluates without overflow for any $\ell$: computing $\sigma$ first and then its log
# would return $\log 0 = -\infty$ in float32 once $\ell \gtrsim 17$ for
# $\log(1 - \sigma)$, and $\ell \lesssim -89$ for $\log \sigma$. The
# discriminator *minimises* the negated value,
#
# $$
# L_D = \mathbb E\operatorname{softplus}(-\ell_\text{real})
#   + \mathbb E\operatorname{softplus}(\ell_\text{fake}),
# $$
#
# which is the binary cross-entropy with label 1 for the real images and 0 for the
# fakes: exactly what `F.binary_cross_entropy_with_logits` computes, and what the test
# checks it against.


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor):
    r"""$L_D$: the mean of $\operatorname{softplus}(-\ell)$ over the real logits plus
    that of $\operatorname{softplus}(\ell)$ over the fakes."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


# ### Why the generator does not play the game's loss
#
# In the game, $G$ minimises $\mathbb E\log(1 - D(G(z))) = -\mathbb
# E\operatorname{softplus}(\ell_\text{fake})$, the **minimax** loss. Its gradient with
# respect to the logit is
#
# $$
# \frac{\partial}{\partial\ell}\big(-\operatorname{softplus}(\ell)\big)
#   = -\sigma(\ell) = -D(G(z)),
# $$
#
# which vanishes exactly when the generator is losing: early in training the fakes are
# obviously fake, $D(G(z)) \approx 0$, and the generator receives almost no signal.
# At $D(G(z)) = 10^{-3}$ the gradient is $-10^{-3}$. Goodfellow et al. proposed
# instead to *maximise* $\log D(G(z))$, the **non-saturating** loss,
#
# $$
# L_G = \mathbb E\operatorname{softplus}(-\ell_\text{fake}),\quad
# \frac{\partial L_G}{\partial\ell} = -(1 - D(G(z))),
# $$
#
# which has the same fixed point but a gradient near $-1$ where the minimax one is
# near 0, and fades only when the generator is already winning. It is the
# cross-entropy with the *real* label on the fakes: the generator asks $D$ to call
# them real. The demo's first figure draws both losses and gradients against
# $D(G(z))$.

LOSSES = ("non_saturating", "minimax")


def generator_loss(fake_logits: torch.Tensor, kind: str = "non_saturating"):
    r"""$L_G$ on the discriminator's logits for the fakes: non-saturating
    $\mathbb E\operatorname{softplus}(-\ell)$, or minimax
    $-\mathbb E\operatorname{softplus}(\ell)$."""
    if kind == "non_saturating":
        return F.softplus(-fake_logits).mean()
    if kind == "minimax":
        return -F.softplus(fake_logits).mean()
    raise ValueError(f"kind must be one of {LOSSES}, got {kind!r}")


# ## The DCGAN rules
#
# Radford et al. [@radford2016unsupervised] list what made convolutional GANs stable:
#
# 1. **No pooling**: $D$ downsamples with strided convolutions and $G$ upsamples with
#    transposed (fractionally strided) ones, so both *learn* their resampling.
# 2. **Batch normalisation** [@ioffe2015batch] in both networks, except at $G$'s output
#    and $D$'s input: normalising those layers made samples oscillate.
# 3. **No fully connected hidden layers**: $z$ enters $G$ as a $1\times1$ image that
#    the first transposed convolution projects to $4\times4$, and $D$'s last
#    convolution reduces its $4\times4$ map to one logit.
# 4. **ReLU in $G$, with $\tanh$ at its output** (so the data are scaled to
#    $[-1, 1]$); **LeakyReLU with slope 0.2 in $D$**, so that $D$ passes gradient
#    back to $G$ even for inputs it rejects.
# 5. **Adam with learning rate $2\times10^{-4}$ and $\beta_1 = 0.5$** (the default 0.9
#    made training oscillate), and every weight initialised from
#    $\mathcal N(0, 0.02^2)$.
#
# For 16×16 images two doublings are enough: $1 \to 4 \to 8 \to 16$ in $G$ and back in
# $D$. The convolutions that feed a batch normalisation carry no bias, since the
# normalisation would subtract it again.


class Generator(nn.Module):
    """Noise `[n, latent]` to images `[n, 1, 16, 16]` in (-1, 1), through transposed
    convolutions `1 → 4 → 8 → 16`."""

    def __init__(self, latent: int = 32, width: int = 32):
        super().__init__()
        self.latent = latent
        self.net = nn.Sequential(
            nn.ConvTranspose2d(latent, 2 * width, 4, 1, 0, bias=False),  # → 4×4
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1, bias=False),  # → 8×8
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.ConvTranspose2d(width, 1, 4, 2, 1),  # → 16×16, no BN at the output
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])  # [n, latent, 1, 1] → [n, 1, 16, 16]


class Discriminator(nn.Module):
    """Images `[n, 1, 16, 16]` in [-1, 1] to one logit each, `[n]`, through strided
    convolutions `16 → 8 → 4 → 1`."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 4, 2, 1),  # → 8×8, no BN at the input
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1, bias=False),  # → 4×4
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 1, 4, 1, 0),  # → 1×1: the logit
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).flatten()  # [n, 1, 1, 1] → [n]


# ### The initialisation
#
# Every convolution's weight from $\mathcal N(0, 0.02^2)$ and its bias at 0; every
# batch-norm scale $\gamma$ from $\mathcal N(1, 0.02^2)$ and its shift $\beta$ at 0,
# as in the paper and in PyTorch's DCGAN example. PyTorch's own default (Kaiming
# uniform) is scaled by fan-in, with standard deviation $1/\sqrt{3\,\text{fan-in}}$:
# 0.14 for $G$'s output layer and $D$'s input layer (fan-in 16), seven times 0.02,
# and 0.018 to 0.026 for the wide layers, about the same as 0.02. The small output
# layer starts the generator with outputs close to 0, where $\tanh$ is unsaturated,
# and the discriminator with logits of order 1, undecided.


@torch.no_grad()
def dcgan_init(module: nn.Module) -> None:
    r"""Initialise `module` in place, as DCGAN does: conv weights
    $\mathcal N(0, 0.02^2)$, batch-norm $\gamma \sim \mathcal N(1, 0.02^2)$, biases
    and $\beta$ 0. Pass it to `model.apply`."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


# ## One round of the game
#
# A training step updates each player once on a fresh batch, discriminator first:
#
# 1. Draw $z$ and make fakes. For $D$'s step they are `detach`ed: $D$'s loss must not
#    send gradients into $G$.
# 2. $D$ sees the real batch and the fakes in *two separate* forward passes, so that
#    its batch normalisation sees batches of one kind, as in the paper's code.
# 3. $G$'s step passes the same fakes, this time attached, through the *updated* $D$
#    and asks for the label "real". Its gradient also lands in $D$'s parameters;
#    $D$'s optimiser clears them before its next step.


class DCGAN(nn.Module):
    """The two players and their Adam optimisers, with `step(real)` playing one
    round."""

    def __init__(
        self, latent: int = 32, width: int = 32, lr: float = 2e-4, loss: str = LOSSES[0]
    ):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.loss = loss
        self.generator = Generator(latent, width)
        self.discriminator = Discriminator(width)
        self.apply(dcgan_init)
        betas = (0.5, 0.999)
        self.g_optimizer = torch.optim.Adam(self.generator.parameters(), lr, betas)
        self.d_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr, betas)

    def step(self, real: torch.Tensor) -> tuple[float, float]:
        """One discriminator and one generator update on `real [n, 1, 16, 16]` in
        [-1, 1]; returns the two losses before the updates."""
        z = torch.randn(len(real), self.generator.latent, device=real.device)
        fake = self.generator(z)  # [n, 1, 16, 16]

        real_logits = self.discriminator(real)  # [n]
        fake_logits = self.discriminator(fake.detach())  # [n]
        d_loss = discriminator_loss(real_logits, fake_logits)
        self.d_optimizer.zero_grad()
        d_loss.backward()
        self.d_optimizer.step()

        g_loss = generator_loss(self.discriminator(fake), self.loss)
        self.g_optimizer.zero_grad()
        g_loss.backward()
        self.g_optimizer.step()
        return d_loss.item(), g_loss.item()

    @torch.no_grad()
    def sample(self, z: torch.Tensor) -> torch.Tensor:
        """Images `[n, 1, 16, 16]` in [0, 1] for noise `z [n, latent]`, with the
        generator's batch norm in eval mode (its running statistics)."""
        self.generator.eval()
        images = self.generator(z)
        self.generator.train()
        return (images + 1) / 2  # tanh's (-1, 1) → (0, 1)


# ## Training
#
# The data are the 1,438 training digits of `digit_images(16)`, mapped to $[-1, 1]$ to
# match $\tanh$. `train` runs `steps` rounds on shuffled mini-batches and records
# both losses; at the steps listed in `snapshot_at` it stores the samples of one fixed
# `z`, so the figures show the *same* latent points turning into digits. The checks
# sit here, at the public boundary: images the wrong shape or range would train a
# generator of the wrong thing without complaint.


def check_images(images: torch.Tensor) -> None:
    """A ValueError or TypeError unless `images` is a float tensor `[n, 1, 16, 16]`
    in [-1, 1] with n >= 2."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise TypeError(f"images must be a float tensor, got {type(images).__name__}")
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 16, 16) or len(images) < 2:
        raise ValueError(
            f"images must be [n >= 2, 1, 16, 16], got {tuple(images.shape)}"
        )
    if images.min() < -1 or images.max() > 1:
        raise ValueError("images must lie in [-1, 1]; map [0, 1] data with 2x - 1")


def train(
    gan: DCGAN,
    images: torch.Tensor,
    steps: int,
    batch_size: int = 64,
    fixed_z: torch.Tensor | None = None,
    snapshot_at: tuple[int, ...] = (),
    seed: int = 0,
) -> dict:
    """Play `steps` rounds on mini-batches of `images [n, 1, 16, 16]` in [-1, 1].
    Returns the losses per step and `{step: samples of fixed_z}` at `snapshot_at`."""
    check_images(images)
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if not isinstance(batch_size, int) or not 2 <= batch_size <= len(images):
        raise ValueError(
            f"batch_size must be an int in [2, {len(images)}], got {batch_size!r}"
        )
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    order, position = torch.randperm(len(images), generator=generator), 0
    d_losses, g_losses, snapshots = [], [], {}
    for step in tqdm(range(steps + 1), desc="DCGAN", leave=False):
        if step in snapshot_at and fixed_z is not None:
            snapshots[step] = gan.sample(fixed_z).cpu()
        if step == steps:
            break
        if position + batch_size > len(images):
            order, position = torch.randperm(len(images), generator=generator), 0
        batch = images[order[position : position + batch_size]]
        position += batch_size
        d_loss, g_loss = gan.step(batch)
        d_losses.append(d_loss)
        g_losses.append(g_loss)
    return {"d_loss": d_losses, "g_loss": g_losses, "snapshots": snapshots}


# ## The example
#
# The diagrams trace the generator, the half of the pair that is the product: a batch
# of 8 noise vectors in, 8 images out.


def example():
    """A DCGAN generator on a batch of 8 noise vectors."""
    torch.manual_seed(0)
    gan = DCGAN()
    return gan.generator, (torch.randn(8, gan.generator.latent),)


# ## The demo
#
# Train with the non-saturating loss, draw the grids of the fixed $z$, and score 1,000
# samples with the metrics lesson's FID against the 359 real *test* digits, beside two
# anchors on the same judge: uniform noise images (what a generator that learnt
# nothing would score; an untrained DCGAN scores worse still, about 1,000) and the
# 1,438 real *training* digits (the floor a perfect generator would reach at these
# sample sizes, since FID is biased upwards on finite samples [@heusel2017gans]).


def plot_saturation(out: Path) -> Path:
    """Both generator losses and their gradients against D(G(z))."""
    fig, (left, right) = figure(panels=2)
    probability = torch.linspace(1e-3, 1 - 1e-3, 400, dtype=torch.float64)  # [400]
    logits = torch.logit(probability).requires_grad_()
    for kind, label in (("non_saturating", r"$-\log D$"), ("minimax", r"$\log(1-D)$")):
        values = [generator_loss(logit[None], kind) for logit in logits]
        gradient = torch.autograd.grad(sum(values), logits)[0]
        left.plot(probability.numpy(), torch.stack(values).detach().numpy(), label=kind)
        right.plot(probability.numpy(), gradient.numpy(), label=f"{kind}: {label}")
    left.set_xlabel("$D(G(z))$")
    left.set_ylabel("generator loss")
    left.set_title("the two generator losses")
    left.legend()
    right.axhline(0.0, color="gray", lw=0.8)
    right.set_xlabel("$D(G(z))$")
    right.set_ylabel(r"$\partial L_G / \partial \ell$")
    right.set_title("their gradients on the logit")
    right.legend()
    return save(
        fig,
        out / "saturation.png",
        caption="Where the discriminator rejects the fakes (D(G(z)) near 0) the "
        "minimax loss's gradient is near 0 and the non-saturating loss's near -1.",
    )


def tile(images: torch.Tensor, columns: int) -> torch.Tensor:
    """`[n, 1, h, w]` images as one `[rows·(h+1), columns·(w+1)]` picture, 1-pixel
    gaps."""
    n, _, h, w = images.shape
    rows = -(-n // columns)
    canvas = torch.zeros(rows * (h + 1), columns * (w + 1))
    for index in range(n):
        r, c = divmod(index, columns)
        canvas[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = images[
            index, 0
        ]
    return canvas


def plot_grids(snapshots: dict, out: Path) -> Path:
    """The fixed z's samples at each snapshot step, one panel a step."""
    steps = sorted(snapshots)
    fig, axes = figure(panels=len(steps), rows=-(-len(steps) // 3))
    for ax, step in zip(np.ravel(axes), steps, strict=True):
        ax.imshow(tile(snapshots[step], 4), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(f"step {step}")
        ax.set_xticks([])
        ax.set_yticks([])
    return save(
        fig,
        out / "samples.png",
        caption="The same 16 noise vectors through the generator as training goes on: "
        "from near-uniform grey at step 0 to recognisable digits.",
    )


def plot_losses(d_losses, g_losses, last: tuple[float, float], out: Path) -> Path:
    """Both players' losses per step, smoothed; `last` is the pair of mean losses
    (L_D, L_G) over the last 100 steps, quoted in the caption."""
    fig, ax = figure()
    window = 20
    kernel = np.ones(window) / window
    for values, label in ((d_losses, "$L_D$"), (g_losses, "$L_G$ (non-saturating)")):
        ax.plot(np.convolve(values, kernel, mode="valid"), label=label)
    ax.axhline(np.log(4), color="gray", ls="--", lw=0.8, label=r"$L_D$ at $D=1/2$")
    ax.axhline(np.log(2), color="gray", ls=":", lw=0.8, label=r"$L_G$ at $D=1/2$")
    ax.set_xlabel("step $k$")
    ax.set_ylabel("loss (mean of 20 steps)")
    ax.set_title("the two players' losses")
    ax.legend()
    d_last, g_last = last
    ahead = d_last < np.log(4) and g_last > np.log(2)
    return save(
        fig,
        out / "losses.png",
        caption="The discriminator's and generator's losses over training: neither "
        "goes to 0, and "
        + ("the discriminator stays ahead" if ahead else "neither player stays ahead")
        + f". Over the last 100 steps L_D averages {d_last:.2f} and L_G "
        f"{g_last:.2f}; an even game would give log 4 = 1.39 and log 2 = 0.69.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train a DCGAN on 16×16 digits, draw the figures, and print FIDs."""
    parser = argparse.ArgumentParser(
        description="DCGAN on 16×16 digits, scored by FID on the digits judge.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--steps", type=integer(at_least=1), default=1000, help="training rounds"
    )
    parser.add_argument(
        "--batch-size", type=integer(at_least=1), default=64, help="mini-batch size"
    )
    parser.add_argument(
        "--lr", type=number(above=0), default=2e-4, help="Adam learning rate"
    )
    parser.add_argument(
        "--latent", type=integer(at_least=1), default=32, help="noise dimensions"
    )
    parser.add_argument(
        "--width", type=integer(at_least=1), default=32, help="channels of layer 1"
    )
    parser.add_argument(
        "--samples", type=integer(at_least=1), default=1000, help="samples for FID"
    )
    parser.add_argument(
        "--judge-epochs",
        type=integer(at_least=1),
        default=30,
        help="epochs of the metrics lesson's judge; the default is its cached one",
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
    parser.add_argument("--out", default="out/dcgan", help="folder for the figures")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    x_train, _, x_test, _ = digit_images(size=16)
    real = torch.from_numpy(x_train).to(args.device) * 2 - 1  # [1438, 1, 16, 16]
    judge = feature_extractor(args.judge_epochs)

    gan = DCGAN(args.latent, args.width, args.lr).to(args.device)
    fixed_z = torch.randn(16, args.latent, generator=torch.Generator().manual_seed(1))
    snapshot_at = tuple(int(args.steps * f) for f in (0, 0.1, 0.3, 1.0))
    start = time.perf_counter()
    history = train(
        gan,
        real,
        args.steps,
        args.batch_size,
        fixed_z.to(args.device),
        snapshot_at,
        args.seed,
    )
    seconds = time.perf_counter() - start
    print(f"{args.steps} rounds in {seconds:.1f} s")
    last = (np.mean(history["d_loss"][-100:]), np.mean(history["g_loss"][-100:]))
    print(f"last 100 rounds: L_D {last[0]:.3f}, L_G {last[1]:.3f}")

    z = torch.randn(args.samples, args.latent, device=args.device)
    samples = gan.sample(z).cpu()  # [samples, 1, 16, 16] in [0, 1]
    noise = torch.rand(args.samples, 1, 16, 16)
    test = torch.from_numpy(x_test)  # [359, 1, 16, 16]
    result = {
        "fid": fid(samples, test, judge),
        "fid_noise": fid(noise, test, judge),
        "fid_real": fid(torch.from_numpy(x_train), test, judge),
    }
    print(f"FID of DCGAN samples vs test digits: {result['fid']:.2f}")
    print(f"FID of uniform noise vs test digits: {result['fid_noise']:.2f}")
    print(f"FID of real training digits vs test digits: {result['fid_real']:.2f}")
    print(f"noise / DCGAN: {result['fid_noise'] / result['fid']:.1f}×")
    plot_saturation(out)
    plot_grids(history["snapshots"], out)
    plot_losses(history["d_loss"], history["g_loss"], last, out)
    return result


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Train with `DCGAN(loss="minimax")` from the same seed. How many rounds pass before
#    the samples stop being grey, and what does $D(G(z))$ sit at meanwhile?
# 2. Remove the batch normalisation from the generator (keep the init). Does training
#    still reach the same FID? Then put a batch norm on $D$'s *input* layer instead and
#    compare.
# 3. Replace `dcgan_init` by PyTorch's default initialisation and measure the FID
#    after the default 1,000 rounds, over three seeds.
# 4. Interpolate linearly between two noise vectors $z_0$ and $z_1$ in 8 steps and
#    draw the samples. Does one digit turn into another smoothly, as Radford et al.
#    report for faces and bedrooms?
