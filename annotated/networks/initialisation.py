r"""
---
title: Initialisation schemes
summary: >-
  Zeros, constants, small and large normals, Xavier, Kaiming and orthogonal weights,
  written from their variance arguments, matched against torch.nn.init, and sent
  through 20-layer tanh and ReLU networks.
time: 10 s
expected:
  metric: "kaiming test accuracy"
  short: ["--width", "128", "--batch", "128", "--steps", "40", "--hidden", "16",
    "--device", "cpu"]
references:
  - key: lecun1998efficient
    authors: [Yann LeCun, Léon Bottou, Genevieve B. Orr, Klaus-Robert Müller]
    title: Efficient BackProp
    year: 1998
    venue: "Neural Networks: Tricks of the Trade, LNCS 1524"
    url: https://doi.org/10.1007/3-540-49430-8_2
  - key: glorot2010understanding
    authors: [Xavier Glorot, Yoshua Bengio]
    title: Understanding the difficulty of training deep feedforward neural networks
    year: 2010
    venue: AISTATS 2010, PMLR 9
    url: https://proceedings.mlr.press/v9/glorot10a.html
  - key: he2015delving
    authors: [Kaiming He, Xiangyu Zhang, Shaoqing Ren, Jian Sun]
    title: >-
      Delving Deep into Rectifiers: Surpassing Human-Level Performance on ImageNet
      Classification
    year: 2015
    venue: ICCV 2015
    arxiv: "1502.01852"
  - key: saxe2014exact
    authors: [Andrew M. Saxe, James L. McClelland, Surya Ganguli]
    title: >-
      Exact solutions to the nonlinear dynamics of learning in deep linear neural
      networks
    year: 2014
    venue: ICLR 2014
    arxiv: "1312.6120"
  - key: mezzadri2007generate
    authors: [Francesco Mezzadri]
    title: How to generate random matrices from the classical compact groups
    year: 2007
    venue: Notices of the AMS 54(5)
    arxiv: math-ph/0609050
worksheet:
  - region: fans
    hint: >-
      Check the weight, then multiply the sizes of the kernel axes (everything after
      the first two; 1 for a linear layer) into a receptive field: fan_in is
      shape[1] times it and fan_out is shape[0] times it.
    tests:
      - test_fans_match_torch_calculate_fan_in_and_fan_out
      - test_conv_weight_uses_the_receptive_field_in_its_fans
  - region: kaiming_std
    hint: >-
      Take the fans, refuse a mode other than fan_in or fan_out, and return the gain of
      the nonlinearity (with a as its parameter) divided by the square root of the
      chosen fan.
    tests:
      - test_moments_of_a_million_draws_are_within_sampling_error
      - test_saved_and_restored_generator_state_repeats_the_fill
  - region: orthogonal_
    hint: >-
      View the weight as rows x cols (cols the product of the rest), fill a Gaussian of
      that shape from the generator, transpose it if wide, take its QR, multiply each
      column of Q by the sign of R's diagonal, transpose back if needed, copy it into
      the tensor and scale by the gain.
    tests:
      - test_orthogonal_is_orthogonal_times_gain
      - test_orthogonal_is_uniform_over_the_group
      - test_fill_equals_torch_nn_init_bit_for_bit
---

Training starts from weights someone chose. Two things about that choice matter before
a single gradient step is taken.

- **They must differ.** If every weight of a layer starts equal, every unit of the
  layer computes the same function, receives the same gradient and takes the same step:
  the units stay copies of one another for ever, and a layer of 32 units is a layer of
  one. Random weights *break the symmetry*.
- **Their scale must suit the depth.** A layer multiplies the spread of its input by a
  factor that depends on the weights' variance. Twenty layers multiply twenty such
  factors: a factor of $0.5$ becomes $10^{-6}$, a factor of $2$ becomes $10^{6}$. The
  same holds for the gradient on its way back. The scale is right when the factor is
  one, and that depends on the layer's width and on its nonlinearity
  [@lecun1998efficient; @glorot2010understanding; @he2015delving].

This chapter derives the variance each classical scheme chooses, writes the schemes as
in-place fills of a tensor, the way `torch.nn.init` does, and checks them against it:
with the same random generator our tensors are bit for bit torch's, and over a million
draws their moments sit within sampling error of the formula. Then it sends a signal
through 20-layer tanh and ReLU networks under each scheme and measures the spread of the
activations and the gradients at every layer, reproducing the two papers that made
the point: Glorot and Bengio's normalised initialisation for tanh, He et al.'s for ReLU.
"""

import argparse
import math
from pathlib import Path

from matplotlib.ticker import MaxNLocator
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from annotated.data import digits, integer, torch_device
from annotated.figures import figure, save

# ## Fan-in and fan-out
#
# Every scheme below scales the weights by how many numbers a unit adds up. A linear
# layer's weight has shape `[out, in]`: each output sums `in` products, its *fan-in*,
# and each input feeds `out` outputs, its *fan-out*. A convolution's weight has shape
# `[out_channels, in_channels, *kernel]`: an output pixel sums
# $\text{in\_channels} \times k_1 k_2 \cdots$ products, so the kernel's size (the
# *receptive field*) multiplies both fans:
#
# $$
# \begin{aligned}
# n_\text{in} &= \text{shape}[1] \cdot \textstyle\prod_{i \ge 2} \text{shape}[i], \\
# n_\text{out} &= \text{shape}[0] \cdot \textstyle\prod_{i \ge 2} \text{shape}[i]
# \end{aligned}
# $$
#
# This is the rule of PyTorch's `_calculate_fan_in_and_fan_out`, quirk included: a
# transposed convolution stores its weight as `[in, out, *kernel]`, so the rule swaps
# its two fans. A vector has no fans, and an empty tensor nothing to fill: both are
# refused here by the lesson's one checker, which also insists on a floating-point
# tensor (the fills below draw real numbers).


def check_weight(owner: str, tensor: object, min_dims: int = 2) -> torch.Tensor:
    """Return `tensor` if it is a non-empty floating-point tensor with at least
    `min_dims` dimensions; else raise naming `owner`."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(
            f"{owner}: tensor must be a torch.Tensor, got {type(tensor).__name__}"
        )
    if not tensor.is_floating_point():
        raise TypeError(
            f"{owner}: tensor must have a floating-point dtype, got {tensor.dtype}"
        )
    if tensor.dim() < min_dims:
        raise ValueError(
            f"{owner}: tensor must have at least {min_dims} dimensions "
            f"([out, in, *kernel]), got shape {tuple(tensor.shape)}"
        )
    if tensor.numel() == 0:
        raise ValueError(f"{owner}: tensor is empty, shape {tuple(tensor.shape)}")
    return tensor


def fans(tensor: torch.Tensor) -> tuple[int, int]:
    """`(fan_in, fan_out)` of a weight `[out, in, *kernel]`."""
    check_weight("fans", tensor)
    receptive_field = math.prod(tensor.shape[2:])  # 1 for a linear layer
    return tensor.shape[1] * receptive_field, tensor.shape[0] * receptive_field


# ## Zeros and constants, and why they break nothing
#
# Filling a tensor with one number is the first idea, and the one that fails. Take a
# hidden layer $h = \phi(W x + b)$ whose rows $w_j$ are all equal. Then every unit
# $h_j = \phi(w_j^\top x + b_j)$ has the same value on every input; the next layer
# weighs them with columns that are also equal, so the loss treats the units
# interchangeably, and the gradient of row $j$,
#
# $$
# \frac{\partial L}{\partial w_j} = \sum_{\text{batch}}
#   \frac{\partial L}{\partial h_j}\, \phi'(w_j^\top x + b_j)\, x,
# $$
#
# is the same for every $j$. Equal rows take equal steps and stay equal, under SGD,
# momentum or Adam alike: a layer of $n$ units trains as if it had one. With zeros it
# is worse still: for tanh or ReLU, $\phi(0) = 0$, so the hidden units output zero, the
# output weights see no input and get no gradient, and only the last bias learns. The
# demo trains a digits network from a constant and counts its distinct hidden units
# after training: one in exact arithmetic, two in the stored run (see below).
#
# Zeros *are* the right start for biases, which every scheme below leaves to the caller
# and the demo sets to zero: random weights already break the symmetry.


@torch.no_grad()
def constant_(tensor: torch.Tensor, value: float) -> torch.Tensor:
    """Fill `tensor` with `value`, in place; returns it."""
    return check_weight("constant_", tensor, min_dims=0).fill_(value)


def zeros_(tensor: torch.Tensor) -> torch.Tensor:
    """Fill `tensor` with zeros, in place; returns it."""
    return constant_(tensor, 0.0)


# ## Small and large normals
#
# Random numbers from $\mathcal N(0, \sigma^2)$ break the symmetry; the question is
# $\sigma$. Let a unit sum $n$ products, $y = \sum_{i=1}^{n} w_i x_i$, with weights
# independent of the inputs and of each other, and zero mean. Then
#
# $$
# \operatorname{Var}(y) = n\, \sigma^2\, \mathbb{E}[x^2].
# $$
#
# Each layer multiplies the second moment of its signal by $n\sigma^2$ (times what the
# nonlinearity keeps). A "small" $\sigma = 0.01$ in a layer 256 wide gives
# $n\sigma^2 = 0.0256$: the spread shrinks by $\sqrt{0.0256} = 0.16$ per layer and by
# $10^{-16}$ after twenty. A "large" $\sigma = 1$ gives $n\sigma^2 = 256$, a factor 16
# per layer. Neither number is wrong by itself: each is wrong for a width, which is why
# every scheme from here on divides by a fan.


@torch.no_grad()
def normal_(
    tensor: torch.Tensor,
    std: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Fill `tensor` with draws from $\mathcal N(0, \text{std}^2)$, in place."""
    check_weight("normal_", tensor, min_dims=0)
    if not std >= 0.0:
        raise ValueError(f"normal_: std must be >= 0, got {std!r}")
    return tensor.normal_(0.0, std, generator=generator)


# ## Gains
#
# The variance argument above is for a linear unit. A nonlinearity changes the second
# moment it passes on, and a *gain* $g$ multiplies the weights' standard deviation to
# compensate. ReLU zeroes half of a symmetric input, so it halves the second moment:
# $\mathbb{E}[\max(0, z)^2] = \tfrac12 \mathbb{E}[z^2]$, and $g = \sqrt 2$ puts it back
# [@he2015delving]. A leaky ReLU with slope $a$ keeps $\tfrac12(1 + a^2)$ of it, so
# $g = \sqrt{2 / (1 + a^2)}$. tanh is the identity near zero and squashes beyond, so it
# loses a little, and PyTorch's rule of thumb is $g = 5/3$; SELU's $3/4$ is likewise
# empirical. The linear maps, and the sigmoid (whose slope at zero, $1/4$, a gain of
# one ignores), get $g = 1$. These are `torch.nn.init.calculate_gain`'s numbers, and
# the test compares them exactly.

LINEAR_GAIN = (
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
)


def gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for `nonlinearity`; `param` is leaky ReLU's negative
    slope (default 0.01)."""
    if nonlinearity in LINEAR_GAIN:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "selu":
        return 3.0 / 4
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise TypeError(f"gain: param must be a real number, got {param!r}")
        return math.sqrt(2.0 / (1 + slope**2))
    known = ", ".join((*LINEAR_GAIN, "tanh", "relu", "leaky_relu", "selu"))
    raise ValueError(f"gain: nonlinearity must be one of {known}; got {nonlinearity!r}")


# ## Xavier / Glorot
#
# The forward pass wants $n_\text{in}\sigma^2 = 1$, so that activations keep their
# spread [@lecun1998efficient]. The backward pass runs the same argument on the
# transposed weights: the gradient with respect to an input sums $n_\text{out}$
# products, so it wants $n_\text{out}\sigma^2 = 1$. A layer with
# $n_\text{in} \neq n_\text{out}$ cannot have both, and Glorot and Bengio take the
# compromise [@glorot2010understanding]
#
# $$
# \sigma^2 = g^2\, \frac{2}{n_\text{in} + n_\text{out}}.
# $$
#
# Drawn from a normal this is *Xavier normal*. Drawn from a uniform $U(-a, a)$, whose
# variance is $a^2/3$, it is *Xavier uniform* with
# $a = g\sqrt{6 / (n_\text{in} + n_\text{out})}$, the form of the paper. Glorot and
# Bengio derived it for a unit that is linear near zero, tanh, with $g = 1$.


@torch.no_grad()
def xavier_uniform_(
    tensor: torch.Tensor, gain: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    r"""Fill `tensor` from $U(-a, a)$ with $a = g\sqrt{6/(n_\text{in} +
    n_\text{out})}$."""
    fan_in, fan_out = fans(check_weight("xavier_uniform_", tensor))
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    bound = math.sqrt(3.0) * std  # Var U(-a, a) = a² / 3
    return tensor.uniform_(-bound, bound, generator=generator)


@torch.no_grad()
def xavier_normal_(
    tensor: torch.Tensor, gain: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    r"""Fill `tensor` from $\mathcal N(0, \sigma^2)$ with
    $\sigma = g\sqrt{2/(n_\text{in} + n_\text{out})}$."""
    fan_in, fan_out = fans(check_weight("xavier_normal_", tensor))
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    return tensor.normal_(0.0, std, generator=generator)


# ## Kaiming / He
#
# He et al. keep one of the two conditions exactly instead of averaging them, and fold
# in ReLU's halving [@he2015delving]. Preserving the forward signal gives
# $\sigma^2 = g^2 / n_\text{in}$ (*fan-in mode*); preserving the backward signal gives
# $\sigma^2 = g^2 / n_\text{out}$ (*fan-out mode*). With ReLU's $g = \sqrt 2$:
#
# $$
# \sigma = \sqrt{\frac{2}{n_\text{mode}}}, \qquad
# a = \sqrt 3\, \sigma = \sqrt{\frac{6}{n_\text{mode}}}.
# $$
#
# In a network of equal widths both modes agree. When they do not, the paper shows the
# other pass then changes its spread only by the product of the width ratios, which
# telescopes to $n_\text{first}/n_\text{last}$ however deep the network is, so either
# mode is safe. Following PyTorch the default nonlinearity is `leaky_relu` with
# `a = 0`, which is ReLU's $\sqrt 2$. PyTorch's own `nn.Linear` default is this fill
# with `a = √5`: a gain of $\sqrt{1/3}$ and so $U(\pm 1/\sqrt{n_\text{in}})$, the
# "standard" initialisation Glorot and Bengio start from.


def kaiming_std(tensor: torch.Tensor, a: float, mode: str, nonlinearity: str) -> float:
    r"""$g / \sqrt{n_\text{mode}}$ for a weight, checked; shared by both Kaiming
    fills."""
    fan_in, fan_out = fans(tensor)
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"kaiming: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan = fan_in if mode == "fan_in" else fan_out
    return gain(nonlinearity, a) / math.sqrt(fan)


@torch.no_grad()
def kaiming_uniform_(
    tensor: torch.Tensor,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Fill `tensor` from $U(-\sqrt3\sigma, \sqrt3\sigma)$ with $\sigma = g /
    \sqrt{n_\text{mode}}$."""
    check_weight("kaiming_uniform_", tensor)
    bound = math.sqrt(3.0) * kaiming_std(tensor, a, mode, nonlinearity)
    return tensor.uniform_(-bound, bound, generator=generator)


@torch.no_grad()
def kaiming_normal_(
    tensor: torch.Tensor,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Fill `tensor` from $\mathcal N(0, \sigma^2)$ with $\sigma = g /
    \sqrt{n_\text{mode}}$."""
    check_weight("kaiming_normal_", tensor)
    std = kaiming_std(tensor, a, mode, nonlinearity)
    return tensor.normal_(0.0, std, generator=generator)


# ## Orthogonal
#
# Variance is an average over directions. An orthogonal matrix does better: it keeps
# the length of *every* vector, $\lVert Q x\rVert = \lVert x\rVert$, so a deep linear
# network of orthogonal layers has all its singular values equal to one and passes every
# direction of the signal, forward and back, unchanged [@saxe2014exact]. A random one
# comes from the QR factorisation of a Gaussian matrix $A = QR$. The factorisation is
# unique only up to the signs of $R$'s diagonal; multiplying column $j$ of $Q$ by
# $\operatorname{sign}(R_{jj})$ fixes them and makes $Q$ uniformly distributed over the
# orthogonal matrices [@mezzadri2007generate]. A weight of shape `[rows, *rest]` is
# treated as a `rows × cols` matrix with `cols` the product of the rest. When
# `rows < cols` the matrix is wide, its rows cannot all be orthogonal to each other
# *and* span its columns, so we factor the transpose and get orthonormal rows,
# $Q Q^\top = I$; otherwise the columns are orthonormal, $Q^\top Q = I$. The gain
# scales the result, so every singular value is $g$.


@torch.no_grad()
def orthogonal_(
    tensor: torch.Tensor, gain: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Fill `tensor` with a uniformly random (semi-)orthogonal matrix times `gain`."""
    check_weight("orthogonal_", tensor)
    rows = tensor.shape[0]
    cols = tensor.numel() // rows
    gaussian = tensor.new_empty(rows, cols).normal_(0.0, 1.0, generator=generator)
    if rows < cols:
        gaussian = gaussian.T  # [cols, rows]: tall, so QR gives orthonormal columns
    q, r = torch.linalg.qr(gaussian)  # q: [tall, short], r: [short, short]
    q *= torch.diag(r).sign()  # column j times sign(R_jj): uniform over O(n)
    if rows < cols:
        q = q.T  # [rows, cols] with orthonormal rows
    tensor.view_as(q).copy_(q)
    return tensor.mul_(gain)


# ## A deep network to test them in
#
# The experiment needs a plain stack of `depth` equal layers, `width` units each, with
# one nonlinearity, and no normalisation layers to hide the effect. Biases start at zero
# as the schemes assume. `SCHEMES` lists what the experiment compares. Each entry maps
# `(weight, nonlinearity, generator)` to a fill, so that the orthogonal scheme can take
# the gain of the network it sits in; the Kaiming entry keeps He et al.'s ReLU gain
# everywhere, and Xavier keeps Glorot and Bengio's $g = 1$, so each is the paper's
# scheme.

NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}


class DeepMLP(nn.Module):
    """`depth` layers `Linear → nonlinearity`, the first from `in_features` to
    `width`, the rest `width` to `width`."""

    def __init__(self, in_features: int, width: int, depth: int, nonlinearity: str):
        super().__init__()
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(
                f"DeepMLP: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}"
            )
        if min(in_features, width, depth) < 1:
            raise ValueError(
                "DeepMLP: in_features, width and depth must be >= 1, got "
                f"{in_features}, {width}, {depth}"
            )
        self.nonlinearity = nonlinearity
        sizes = [in_features] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(n_in, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activate = NONLINEARITIES[self.nonlinearity]
        for layer in self.layers:
            x = activate(layer(x))  # [batch, width]
        return x


SCHEMES = {
    "normal σ=0.01": lambda w, nl, gen: normal_(w, 0.01, gen),
    "normal σ=1": lambda w, nl, gen: normal_(w, 1.0, gen),
    "PyTorch default": lambda w, nl, gen: kaiming_uniform_(
        w, a=math.sqrt(5.0), generator=gen
    ),
    "Xavier uniform": lambda w, nl, gen: xavier_uniform_(w, generator=gen),
    "Kaiming normal": lambda w, nl, gen: kaiming_normal_(
        w, nonlinearity="relu", generator=gen
    ),
    "orthogonal": lambda w, nl, gen: orthogonal_(w, gain(nl), gen),
}


@torch.no_grad()
def initialise(model: DeepMLP, scheme: str, generator: torch.Generator) -> DeepMLP:
    """Fill every weight of `model` with `scheme` and every bias with zeros."""
    if scheme not in SCHEMES:
        raise ValueError(
            f"initialise: scheme must be one of {list(SCHEMES)}, got {scheme!r}"
        )
    for layer in model.layers:
        SCHEMES[scheme](layer.weight, model.nonlinearity, generator)
        zeros_(layer.bias)
    return model


# ## Measuring the signal at every layer
#
# Glorot and Bengio watched two things per layer: the spread of the activations on the
# way up and of the back-propagated gradients on the way down
# [@glorot2010understanding]. We do the same with a batch of standard normal inputs and
# a standard normal gradient arriving at the top, as if from a loss: the backward pass
# starts with spread one, and each layer's `h.grad` is $\partial L / \partial h_l$.
# `retain_grad` keeps these gradients, which autograd would otherwise free after use.


def signal_through_depth(
    model: DeepMLP, x: torch.Tensor, generator: torch.Generator
) -> tuple[list[float], list[float]]:
    """Per-layer standard deviations of the activations and of the loss's gradient with
    respect to them, for inputs `x` and a random gradient at the top."""
    activate = NONLINEARITIES[model.nonlinearity]
    activations = []
    h = x  # [batch, in_features]
    for layer in model.layers:
        h = activate(layer(h))  # [batch, width]
        h.retain_grad()
        activations.append(h)
    top_gradient = torch.randn(
        h.shape, generator=generator, device=h.device, dtype=h.dtype
    )
    h.backward(top_gradient)
    activation_stds = [a.std().item() for a in activations]
    gradient_stds = [a.grad.std().item() for a in activations]
    return activation_stds, gradient_stds


# ## The experiment
#
# Twenty layers of 256 units, each scheme, tanh and ReLU. We summarise each run by two
# ratios, *last layer over first* for the activations and *first layer over last* for
# the gradients (the direction each travels): one means the signal kept its spread,
# below one that it vanished, above one that it exploded. With the default flags the
# demo prints:
#
# | scheme | tanh act. | tanh grad. | ReLU act. | ReLU grad. |
# | --- | --- | --- | --- | --- |
# | normal σ=0.01 | 7e-16 | 7e-16 | 6e-19 | 8e-19 |
# | normal σ=1 | 1.0 | 8e8 | 6e19 | 8e19 |
# | PyTorch default | 2e-5 | 3e-5 | 2e-8 | 3e-8 |
# | Xavier uniform | 0.24 | 0.27 | 8e-4 | 1e-3 |
# | Kaiming normal | 0.76 | 2.2 | 0.56 | 0.80 |
# | orthogonal | 0.86 | 5.5 | 0.91 | 0.91 |
#
# These are the papers' findings. In tanh networks the "standard" initialisation, which
# is PyTorch's default, loses a factor $10^{-5}$ of the gradient by the first layer,
# while Glorot and Bengio's normalised one keeps it within a factor of four
# [@glorot2010understanding]: tanh's slope is below one away from zero, so even at
# $n\sigma^2 = 1$ the spread decays, but slowly, not geometrically. Large weights
# saturate tanh: the activations sit at $\pm 1$ and keep their spread, and the gradient
# *explodes* going down, a factor $10^{9}$. In ReLU networks Xavier's $n\sigma^2 = 1$
# loses ReLU's factor $\tfrac12$ of the second moment at every layer,
# $2^{-20/2} \approx 10^{-3}$ in spread after twenty, and He et al.'s
# $n\sigma^2 = 2$ holds it [@he2015delving]. Orthogonal weights with the matched gain
# keep the activations' spread best in both networks (0.86 with tanh, 0.91 with ReLU),
# and with ReLU the gradient's too. With tanh the gain of $5/3$ that holds the forward
# signal lets the gradient grow 5.5-fold by the first layer, further from 1 than
# Kaiming's 2.2 or Xavier's loss of a factor of four.


def experiment(
    width: int, depth: int, batch: int, seed: int, device: str
) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """`{nonlinearity: {scheme: (activation_stds, gradient_stds)}}` for every scheme,
    from the same inputs and the same top gradient."""
    results = {}
    runs = [(nl, scheme) for nl in NONLINEARITIES for scheme in SCHEMES]
    for nonlinearity, scheme in tqdm(runs, desc="signal through depth"):
        generator = torch.Generator(device=device).manual_seed(seed)
        x = torch.randn(batch, width, generator=generator, device=device)
        model = DeepMLP(width, width, depth, nonlinearity).to(device)
        initialise(model, scheme, generator)
        results.setdefault(nonlinearity, {})[scheme] = signal_through_depth(
            model, x, generator
        )
    return results


# ## Symmetry, measured
#
# The second demo trains a one-hidden-layer tanh network on the handwritten digits
# twice, from the same data and mini-batches: once with every weight set to the
# constant 0.1, once with Kaiming weights. Afterwards it counts the distinct hidden
# units, rows of the first weight matrix that differ from every other row by more than
# rounding. In exact arithmetic the constant network ends with one, however long it
# trains. In floating point the rows of a matrix product need not all be rounded the
# same way, and training can grow such a difference: in the run stored with this page
# the constant network ended with two distinct units of 32 and a test accuracy of
# 0.48, against Kaiming's 32 units and 0.975.


def train_digits(
    init: str,
    data: tuple[torch.Tensor, ...],
    hidden: int,
    steps: int,
    seed: int,
    device: str,
) -> tuple[nn.Sequential, float]:
    """Train `64 → hidden → 10` with SGD from `init` ('constant' or 'kaiming'); return
    the model and its test accuracy."""
    x_train, y_train, x_test, y_test = data
    model = nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10))
    model = model.to(device=device, dtype=x_train.dtype)
    generator = torch.Generator(device=device).manual_seed(seed)
    for layer in (model[0], model[2]):
        if init == "constant":
            constant_(layer.weight, 0.1)
        else:
            kaiming_normal_(layer.weight, nonlinearity="tanh", generator=generator)
        zeros_(layer.bias)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    batches = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        index = torch.randint(len(x_train), (64,), generator=batches).to(device)
        loss = F.cross_entropy(model(x_train[index]), y_train[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).double().mean().item()
    return model, accuracy


def distinct_units(weight: torch.Tensor, tolerance: float = 1e-9) -> int:
    """How many rows of `weight` differ from all earlier rows by more than `tolerance`
    times the largest row norm."""
    scale = weight.norm(dim=1).max().clamp_min(1e-300)
    kept = []
    for row in weight:
        if all((row - other).norm() > tolerance * scale for other in kept):
            kept.append(row)
    return len(kept)


# ## The example
#
# A small `DeepMLP`, four tanh layers of 32 units with Xavier weights, on a batch of
# eight digit-sized inputs. It is a `torch.nn.Module`, so the page's dataflow diagram is
# its `torch.fx` trace.


def example():
    """A small example: `fn(*args)` runs a 4-layer tanh `DeepMLP` with Xavier
    weights."""
    generator = torch.Generator().manual_seed(0)
    model = initialise(DeepMLP(64, 32, 4, "tanh"), "Xavier uniform", generator)
    x = torch.randn(8, 64, generator=generator)
    return model, (x,)


# ## Demo


def plot_signal(results: dict, depth: int, out: Path) -> None:
    """Activation and gradient spread per layer, tanh left and ReLU right."""
    fig, axes = figure(panels=4, rows=2, sharex=True)
    layers = np.arange(1, depth + 1)
    for column, (nonlinearity, runs) in enumerate(results.items()):
        for scheme, (activation_stds, gradient_stds) in runs.items():
            axes[0, column].plot(layers, activation_stds, marker=".", label=scheme)
            axes[1, column].plot(layers, gradient_stds, marker=".", label=scheme)
        axes[0, column].set(
            yscale="log", ylabel="std of $h_l$", title=f"{nonlinearity}: activations"
        )
        axes[1, column].set(
            yscale="log",
            xlabel="layer $l$",
            ylabel=r"std of $\partial L / \partial h_l$",
            title=f"{nonlinearity}: gradients",
        )
    axes[0, 0].legend(fontsize="small")
    # Layers are whole numbers: no tick at layer 2.5.
    axes[1, 0].xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    # How far each run moves either spread from first layer to last, as a factor >= 1,
    # for the matched schemes and for the rest.
    matched = {("tanh", "Xavier uniform"), ("tanh", "orthogonal")}
    matched |= {("relu", "Kaiming normal"), ("relu", "orthogonal")}
    moves = {True: [], False: []}
    for nonlinearity, runs in results.items():
        for scheme, (activation_stds, gradient_stds) in runs.items():
            for kind, ratio in (
                ("activations", activation_stds[-1] / activation_stds[0]),
                ("gradients", gradient_stds[0] / gradient_stds[-1]),
            ):
                moves[(nonlinearity, scheme) in matched].append(
                    (max(ratio, 1 / ratio), f"{nonlinearity} {scheme} {kind}")
                )
    worst_matched, which = max(moves[True])
    worst_other = max(moves[False])[0]
    save(
        fig,
        out / "signal_through_depth.png",
        caption="Standard deviation of the activations (top) and of the "
        "back-propagated gradients (bottom) at each layer of "
        f"{depth}-layer tanh (left) and ReLU (right) networks, log scale, under "
        "each initialisation scheme. From the first layer to the last, the matched "
        "schemes (Xavier for tanh, Kaiming for ReLU, orthogonal with the "
        "nonlinearity's gain) change either spread by at most a factor "
        f"{worst_matched:.2g} ({which}), the other schemes by up to a factor "
        f"{worst_other:.1g}.",
    )


def plot_symmetry(models: dict[str, nn.Sequential], out: Path) -> None:
    """The trained first-layer weights, one row per hidden unit, for each init."""
    fig, axes = figure(panels=2)
    for ax, (name, model) in zip(axes, models.items()):
        weight = model[0].weight.detach().cpu().numpy()  # [hidden, 64]
        # Centred on zero, so that white is zero and red and blue are the two signs.
        largest = np.abs(weight).max()
        image = ax.imshow(
            weight, aspect="auto", cmap="RdBu_r", vmin=-largest, vmax=largest
        )
        fig.colorbar(image, ax=ax)
        ax.set(xlabel="input pixel", ylabel="hidden unit", title=f"{name} start")
    save(
        fig,
        out / "symmetry.png",
        caption="First-layer weights of a digits network after SGD training, one row "
        "per hidden unit: from a constant start every row is the same, from random "
        "Kaiming weights every row is different.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the depth experiment and the symmetry demo; print and return their
    numbers."""
    parser = argparse.ArgumentParser(
        description="Initialisation schemes through deep tanh and ReLU networks.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--width", type=integer(at_least=1), default=256, help="units per layer"
    )
    parser.add_argument(
        "--depth", type=integer(at_least=1), default=20, help="layers in the network"
    )
    parser.add_argument(
        "--batch", type=integer(at_least=2), default=256, help="inputs per batch"
    )
    parser.add_argument(
        "--steps",
        type=integer(at_least=1),
        default=300,
        help="SGD steps of the symmetry demo",
    )
    parser.add_argument(
        "--hidden", type=integer(at_least=1), default=32, help="symmetry demo width"
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to run on",
    )
    parser.add_argument(
        "--out", default="out/initialisation", help="folder for the figures"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {}

    results = experiment(args.width, args.depth, args.batch, args.seed, args.device)
    plot_signal(results, args.depth, out)
    print(f"{args.depth} layers of {args.width}: activation std last/first, ")
    print("gradient std first/last (1 = kept, < 1 vanished, > 1 exploded)")
    for nonlinearity, runs in results.items():
        for scheme, (activation_stds, gradient_stds) in runs.items():
            activation_ratio = activation_stds[-1] / activation_stds[0]
            gradient_ratio = gradient_stds[0] / gradient_stds[-1]
            print(
                f"  {nonlinearity:4s} {scheme:16s} activations {activation_ratio:8.2e}"
                f"  gradients {gradient_ratio:8.2e}"
            )
            metrics[f"{nonlinearity} {scheme} activation ratio"] = activation_ratio
            metrics[f"{nonlinearity} {scheme} gradient ratio"] = gradient_ratio

    x_train, y_train, x_test, y_test = digits(seed=args.seed)
    data = (
        torch.tensor(x_train, device=args.device),  # [n_train, 64] float64
        torch.tensor(y_train, device=args.device),
        torch.tensor(x_test, device=args.device),
        torch.tensor(y_test, device=args.device),
    )
    models = {}
    for init in tqdm(("constant", "kaiming"), desc="symmetry"):
        models[init], accuracy = train_digits(
            init, data, args.hidden, args.steps, args.seed, args.device
        )
        units = distinct_units(models[init][0].weight.detach())
        tqdm.write(
            f"  {init:8s} init: {units} distinct hidden units of {args.hidden}, "
            f"test accuracy {accuracy:.3f}"
        )
        metrics[f"{init} distinct units"] = units
        metrics[f"{init} test accuracy"] = accuracy
    plot_symmetry(models, out)
    return metrics


if __name__ == "__main__":
    main()

# ## Exercises
#
# 1. Add a `bias` scheme to the experiment that draws the biases from
#    $\mathcal N(0, 0.1^2)$ instead of zeros. Which of the tanh runs change, and does a
#    constant *weight* with random biases still keep the hidden units identical?
# 2. Build a `DeepMLP` whose widths alternate 512 and 64 and compare Xavier with
#    Kaiming in fan-in and fan-out mode on ReLU. Which pass keeps its spread in each
#    mode, and by how much does the other drift after twenty layers?
# 3. Find by bisection the gain $g$ of Xavier uniform at which a 50-layer tanh network
#    keeps the gradient's spread within a factor two from top to bottom. How close is
#    it to PyTorch's $5/3$?
# 4. Replace the QR step of `orthogonal_` by the SVD $A = U S V^\top$ and return
#    $U V^\top$. Is the result still orthogonal, and is it still uniformly distributed
#    without a sign fix?
