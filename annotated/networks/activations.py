r"""
---
title: Activation functions side by side
summary: >-
  Sigmoid, tanh, ReLU, LeakyReLU, ELU, GELU, SiLU, Mish and softmax, each with its
  derivative written out and checked against torch in float64; then the same digits
  network trained with each, counting the units that die.
time: 15 s
expected:
  metric: "accuracy/ordinary/relu"
  short: ["--epochs", "2", "--activations", "relu,leaky_relu,elu", "--device", "cpu"]
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
  - key: nair2010rectified
    authors: [Vinod Nair, Geoffrey E. Hinton]
    title: Rectified Linear Units Improve Restricted Boltzmann Machines
    year: 2010
    venue: ICML 2010
    url: https://www.cs.toronto.edu/~hinton/absps/reluICML.pdf
  - key: glorot2011deep
    authors: [Xavier Glorot, Antoine Bordes, Yoshua Bengio]
    title: Deep Sparse Rectifier Neural Networks
    year: 2011
    venue: AISTATS 2011, PMLR 15
    url: https://proceedings.mlr.press/v15/glorot11a.html
  - key: maas2013rectifier
    authors: [Andrew L. Maas, Awni Y. Hannun, Andrew Y. Ng]
    title: Rectifier Nonlinearities Improve Neural Network Acoustic Models
    year: 2013
    venue: ICML 2013 Workshop on Deep Learning for Audio, Speech and Language
    url: https://ai.stanford.edu/~amaas/papers/relu_hybrid_icml2013_final.pdf
  - key: clevert2016fast
    authors: [Djork-Arné Clevert, Thomas Unterthiner, Sepp Hochreiter]
    title: >-
      Fast and Accurate Deep Network Learning by Exponential Linear Units (ELUs)
    year: 2016
    venue: ICLR 2016
    arxiv: "1511.07289"
  - key: hendrycks2016gaussian
    authors: [Dan Hendrycks, Kevin Gimpel]
    title: Gaussian Error Linear Units (GELUs)
    year: 2016
    venue: arXiv preprint
    arxiv: "1606.08415"
  - key: elfwing2018sigmoid
    authors: [Stefan Elfwing, Eiji Uchibe, Kenji Doya]
    title: >-
      Sigmoid-Weighted Linear Units for Neural Network Function Approximation in
      Reinforcement Learning
    year: 2018
    venue: Neural Networks 107
    arxiv: "1702.03118"
  - key: ramachandran2017searching
    authors: [Prajit Ramachandran, Barret Zoph, Quoc V. Le]
    title: Searching for Activation Functions
    year: 2017
    venue: arXiv preprint
    arxiv: "1710.05941"
  - key: misra2019mish
    authors: [Diganta Misra]
    title: "Mish: A Self Regularized Non-Monotonic Activation Function"
    year: 2019
    venue: arXiv preprint (BMVC 2020)
    arxiv: "1908.08681"
  - key: bridle1990probabilistic
    authors: [John S. Bridle]
    title: >-
      Probabilistic Interpretation of Feedforward Classification Network Outputs,
      with Relationships to Statistical Pattern Recognition
    year: 1990
    venue: "Neurocomputing: Algorithms, Architectures and Applications, Springer"
    url: https://doi.org/10.1007/978-3-642-76153-9_28
  - key: lu2020dying
    authors: [Lu Lu, Yeonjong Shin, Yanhui Su, George Em Karniadakis]
    title: "Dying ReLU and Initialization: Theory and Numerical Examples"
    year: 2020
    venue: Communications in Computational Physics 28(5)
    arxiv: "1903.06733"
worksheet:
  - region: sigmoid_derivative
    hint: >-
      Write sigma'(x) = sigma(x) sigma(-x) through t = exp(-|x|), which never
      overflows: t / (1 + t)^2 keeps its digits in both tails, where sigma (1 - sigma)
      rounds to 0.
    tests:
      - test_sigmoid_derivative_keeps_its_digits_in_both_tails
      - test_derivatives_match_torch_autograd
  - region: gelu
    hint: >-
      x times the normal CDF, with the CDF written as 0.5 * erfc(-x / sqrt 2) so that
      the small left tail is computed directly instead of as 1 + erf, which cancels.
    tests:
      - test_gelu_left_tail_is_accurate_where_erf_cancels
      - test_gelu_dips_to_minus_0_17_near_minus_0_75
  - region: softmax_jvp
    hint: >-
      Check the arguments (x and dim as softmax does, v a floating tensor of x's
      shape); with s = softmax(x, dim), the Jacobian-vector product is s * (v - <s, v>),
      the inner product summed along dim and kept as an axis.
    tests: [test_softmax_jvp_matches_torch_func_jvp_and_autograd]
---

Without a nonlinearity between them, a stack of linear layers is one linear layer:
$W_2 (W_1 x + b_1) + b_2 = W x + b$. The *activation function* $f$, applied to every
unit's pre-activation $z$, is what lets depth buy expressiveness. Any non-polynomial $f$
would do for that; what separates the choices in practice is the *derivative*, because
backpropagation multiplies the gradient arriving at a unit by $f'(z)$ on its way down.
Where $f'(z)$ is close to 0 the unit passes almost nothing back and its incoming weights
stop learning.

This lesson writes nine activations and their derivatives by hand, in plain torch
operations without autograd: the saturating pair sigmoid and tanh
[@lecun1998efficient], the rectifiers ReLU [@nair2010rectified; @glorot2011deep],
LeakyReLU [@maas2013rectifier] and ELU [@clevert2016fast], the smooth self-gated ones
GELU [@hendrycks2016gaussian] (exact and with its tanh approximation), SiLU
[@elfwing2018sigmoid; @ramachandran2017searching] and Mish [@misra2019mish], and the
softmax [@bridle1990probabilistic], whose derivative is a Jacobian rather than a number
per unit. The test compares every value with `torch.nn.functional` and every derivative
with `torch.autograd` in float64, at the kink, at $\pm 10^3$ and in between.

Then the derivatives go to work. The same small network learns the digits once with
each activation, its backward pass running through *our* derivatives, and we count the
units that have stopped learning: those whose $|f'(z)|$ is below $10^{-3}$ on every
training example. In the demo's ordinary runs almost none do (ReLU loses 5 % of its
units). At twice the learning rate, 59 % of the ReLU units die and none of LeakyReLU's;
ELU, whose left side is flat too, ends with every unit deep in it. Hidden biases shifted
down by 0.5 silence 83 % of the ReLU units before the first step, and none of them comes
back, while ELU trains as if nothing had happened [@lu2020dying].
"""

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from annotated.data import digits, integer, names_from, number, torch_device
from annotated.figures import figure, save


# ## The saturating pair: sigmoid and tanh
#
# The logistic sigmoid squashes the real line into $(0, 1)$:
# $$
# \sigma(x) = \frac{1}{1 + e^{-x}}, \qquad \sigma'(x) = \sigma(x)\,\sigma(-x).
# $$
# The textbook form of the derivative is $\sigma(1 - \sigma)$, and that is what
# autograd computes. It is exact algebra but poor arithmetic: from $x = 37$, $\sigma(x)$
# rounds to 1 in float64, so $1 - \sigma$ is 0 and the derivative vanishes, although its
# true value $e^{-x}/(1+e^{-x})^2$ is still a perfectly representable $10^{-17}$.
#
# Both are written here through one number, $t = e^{-|x|} \in (0, 1]$, which never
# overflows. For $x \ge 0$, $\sigma(x) = 1/(1+t)$; for $x < 0$ it is $t/(1+t)$; and on
# both sides
# $$
# \sigma'(x) = \frac{t}{(1 + t)^2},
# $$
# accurate to the last bit in both tails. (The naive $1/(1+e^{-x})$ at $x = -10^3$ first
# computes $e^{1000} = \infty$; it happens to return the right 0, but only by way of an
# overflow.)
def sigmoid(x: Tensor) -> Tensor:
    r"""$\sigma(x) = 1 / (1 + e^{-x})$, without overflow."""
    t = torch.exp(-x.abs())
    return torch.where(x >= 0, 1.0 / (1.0 + t), t / (1.0 + t))


def sigmoid_derivative(x: Tensor) -> Tensor:
    r"""$\sigma'(x) = \sigma(x)\sigma(-x) = t/(1+t)^2$ with $t = e^{-|x|}$."""
    t = torch.exp(-x.abs())
    return t / (1.0 + t) ** 2


# $\tanh$ is the sigmoid stretched to $(-1, 1)$ and centred:
# $\tanh(x) = 2\sigma(2x) - 1$. Being zero-centred, it hands the next layer inputs of
# both signs, which LeCun et al. found to speed learning up [@lecun1998efficient]. Its
# derivative is the sigmoid's, scaled:
# $$
# \tanh'(x) = 1 - \tanh^2(x) = 4\,\sigma'(2x) = \frac{4t}{(1+t)^2},
# $$
# now with $t = e^{-2|x|}$. The value needs care near 0 instead: $2\sigma(2x) - 1$ would
# subtract two numbers close to 1 and keep only the digits of their difference, so we
# write $\tanh |x| = (1 - t)/(1 + t)$ with the numerator from `expm1`, which computes
# $e^{u} - 1$ without that cancellation.
#
# Both functions *saturate*: $\sigma'(x) < 10^{-3}$ once $|x| > 6.91$, and
# $\tanh'(x) < 10^{-3}$ once $|x| > 4.15$. A unit pushed that far on every input has
# stopped learning, which is why deep sigmoid networks trained so badly
# [@glorot2010understanding].
def tanh(x: Tensor) -> Tensor:
    r"""$\tanh(x) = \operatorname{sign}(x)\,(1 - e^{-2|x|}) / (1 + e^{-2|x|})$."""
    minus_two_abs = -2.0 * x.abs()
    magnitude = -torch.expm1(minus_two_abs) / (1.0 + torch.exp(minus_two_abs))
    return torch.sign(x) * magnitude


def tanh_derivative(x: Tensor) -> Tensor:
    r"""$\tanh'(x) = 4t/(1+t)^2$ with $t = e^{-2|x|}$."""
    t = torch.exp(-2.0 * x.abs())
    return 4.0 * t / (1.0 + t) ** 2


# ## The rectifiers: ReLU, LeakyReLU, ELU
#
# The rectified linear unit keeps the positive part [@nair2010rectified]:
# $$
# \operatorname{relu}(x) = \max(0, x), \qquad
# \operatorname{relu}'(x) = \begin{cases} 1 & x > 0 \\ 0 & x \le 0 \end{cases}
# $$
# Its derivative never shrinks a gradient that passes, so deep stacks of ReLUs train
# where sigmoids stall [@glorot2011deep]. The price is the other half: a unit whose
# pre-activation is negative on every input passes no gradient back at all, so its own
# weights stop changing; only the layers below it, moving its inputs, can revive it (a
# unit of the first layer stays dead under plain SGD). That is a *dead* unit.
#
# At the kink $x = 0$ the derivative does not exist. Any value in $[0, 1]$ is a valid
# subgradient; torch uses 0 (its backward masks with `x > 0`), and so do we, so that the
# test can compare at 0 exactly.
def relu(x: Tensor) -> Tensor:
    r"""$\max(0, x)$."""
    return torch.clamp(x, min=0.0)


def relu_derivative(x: Tensor) -> Tensor:
    r"""1 where $x > 0$, else 0 (0 at the kink, as torch)."""
    return (x > 0).to(x.dtype)


# LeakyReLU lets a little through on the negative side, a slope $\alpha$ (0.01 by
# default, as in torch) [@maas2013rectifier]:
# $$
# \operatorname{leaky}(x) = \begin{cases} x & x > 0 \\ \alpha x & x \le 0 \end{cases}
# $$
# so its derivative is never below $\alpha$, and by our definition it cannot die. At
# the kink torch takes the negative side's slope, $\alpha$.
def leaky_relu(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    r"""$x$ for $x > 0$, $\alpha x$ otherwise."""
    return torch.where(x > 0, x, negative_slope * x)


def leaky_relu_derivative(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    r"""1 for $x > 0$, $\alpha$ otherwise (the kink included)."""
    # Both branches as plain numbers would give a float32 tensor whatever x's dtype,
    # and 0.01 in float32 is 0.0099999998: one branch is built in x's dtype instead.
    return torch.where(x > 0, 1.0, torch.full_like(x, negative_slope))


# The exponential linear unit bends smoothly towards $-\alpha$ instead
# [@clevert2016fast]:
# $$
# \operatorname{elu}(x) = \begin{cases} x & x > 0 \\ \alpha (e^x - 1) & x \le 0
# \end{cases}, \quad
# \operatorname{elu}'(x) = \begin{cases} 1 & x > 0 \\ \alpha e^x & x \le 0 \end{cases}
# $$
# With $\alpha = 1$ the derivative is continuous at 0. Negative outputs pull the mean
# activation towards 0, as $\tanh$ does, without saturating on the positive side. It
# does saturate on the negative one: $e^x < 10^{-3}$ below $x = -6.91$.
#
# `clamp(x, max=0)` feeds the exponential only the negative side; the positive branch
# of `where` is discarded anyway, and this way $x = 10^3$ never computes $e^{1000}$.
def elu(x: Tensor, alpha: float = 1.0) -> Tensor:
    r"""$x$ for $x > 0$, $\alpha(e^x - 1)$ otherwise."""
    return torch.where(x > 0, x, alpha * torch.expm1(torch.clamp(x, max=0.0)))


def elu_derivative(x: Tensor, alpha: float = 1.0) -> Tensor:
    r"""1 for $x > 0$, $\alpha e^x$ otherwise."""
    return torch.where(x > 0, 1.0, alpha * torch.exp(torch.clamp(x, max=0.0)))


# ## The self-gated ones: GELU, SiLU, Mish
#
# These multiply the input by a smooth gate between 0 and 1 that depends on the input
# itself. The Gaussian error linear unit gates by the standard normal CDF $\Phi$
# [@hendrycks2016gaussian]: a unit's input is kept with the probability that a standard
# normal variable falls below it.
# $$
# \begin{aligned}
# \operatorname{gelu}(x) &= x\,\Phi(x), \\
# \operatorname{gelu}'(x) &= \Phi(x) + x\,\varphi(x),
# \end{aligned}
# $$
# with $\varphi(x) = e^{-x^2/2}/\sqrt{2\pi}$ the normal density. Unlike the rectifiers
# it is not monotonic: it dips to about $-0.17$ near $x = -0.75$, where its derivative
# crosses 0.
#
# torch writes $\Phi(x) = \tfrac12(1 + \operatorname{erf}(x/\sqrt2))$. In the left tail
# that adds 1 to a number close to $-1$ and loses every digit: at $x = -10$ it returns
# $\Phi = 0$ where the truth is $7.6 \times 10^{-24}$. The complementary error function
# computes the small tail directly: $\Phi(x) = \tfrac12 \operatorname{erfc}(-x/\sqrt2)$.
SQRT_2 = math.sqrt(2.0)
SQRT_2_PI = math.sqrt(2.0 * math.pi)


def gelu(x: Tensor) -> Tensor:
    r"""$x\,\Phi(x)$ with $\Phi(x) = \frac12 \operatorname{erfc}(-x/\sqrt2)$."""
    return x * 0.5 * torch.special.erfc(-x / SQRT_2)


def gelu_derivative(x: Tensor) -> Tensor:
    r"""$\Phi(x) + x\,\varphi(x)$."""
    cdf = 0.5 * torch.special.erfc(-x / SQRT_2)
    density = torch.exp(-0.5 * x * x) / SQRT_2_PI
    return cdf + x * density


# Before `erf` was fast on accelerators, BERT and GPT-2 used a tanh approximation of
# $\Phi$ [@hendrycks2016gaussian], still available as `F.gelu(x, approximate="tanh")`:
# $$
# \begin{aligned}
# \operatorname{gelu}_{\tanh}(x) &= \tfrac12 x\,\bigl(1 + \tanh u(x)\bigr), \\
# u(x) &= \sqrt{2/\pi}\,\bigl(x + 0.044715\,x^3\bigr).
# \end{aligned}
# $$
# Since $\tfrac12(1 + \tanh u) = \sigma(2u)$, this is $x\,\sigma(2u)$, and we write it
# so, which also avoids the $1 + \tanh$ cancellation in the left tail. The chain rule
# gives
# $$
# \operatorname{gelu}_{\tanh}'(x) = \sigma(2u) + 2x\,\sigma'(2u)\,u'(x),
# $$
# with $u'(x) = \sqrt{2/\pi}\,(1 + 3 \cdot 0.044715\,x^2)$. It stays within
# $5 \times 10^{-4}$ of the exact GELU everywhere (the figure below overlays the two).
GELU_TANH_SCALE = math.sqrt(2.0 / math.pi)
GELU_TANH_CUBIC = 0.044715


def gelu_tanh(x: Tensor) -> Tensor:
    r"""$x\,\sigma(2u)$, $u = \sqrt{2/\pi}(x + 0.044715 x^3)$."""
    u = GELU_TANH_SCALE * (x + GELU_TANH_CUBIC * x**3)
    return x * sigmoid(2.0 * u)


def gelu_tanh_derivative(x: Tensor) -> Tensor:
    r"""$\sigma(2u) + 2x\,\sigma'(2u)\,u'(x)$."""
    u = GELU_TANH_SCALE * (x + GELU_TANH_CUBIC * x**3)
    du_dx = GELU_TANH_SCALE * (1.0 + 3.0 * GELU_TANH_CUBIC * x * x)
    return sigmoid(2.0 * u) + 2.0 * x * sigmoid_derivative(2.0 * u) * du_dx


# The sigmoid-weighted linear unit gates by the sigmoid [@elfwing2018sigmoid]; a search
# over formulas rediscovered it as *Swish* [@ramachandran2017searching]:
# $$
# \begin{aligned}
# \operatorname{silu}(x) &= x\,\sigma(x), \\
# \operatorname{silu}'(x) &= \sigma(x) + x\,\sigma'(x).
# \end{aligned}
# $$
def silu(x: Tensor) -> Tensor:
    r"""$x\,\sigma(x)$."""
    return x * sigmoid(x)


def silu_derivative(x: Tensor) -> Tensor:
    r"""$\sigma(x) + x\,\sigma'(x)$."""
    return sigmoid(x) + x * sigmoid_derivative(x)


# Mish gates by $\tanh$ of the softplus $\zeta(x) = \log(1 + e^x)$ [@misra2019mish].
# The softplus's derivative is $\sigma$, so the chain rule gives
# $$
# \begin{aligned}
# \operatorname{mish}(x) &= x \tanh \zeta(x), \\
# \operatorname{mish}'(x) &= \tanh \zeta(x) + x \tanh'\!\bigl(\zeta(x)\bigr)\,\sigma(x).
# \end{aligned}
# $$
# $\log(1 + e^x)$ overflows for $x > 709$; written as
# $\max(x, 0) + \log(1 + e^{-|x|})$ it never does, and `log1p` keeps the small
# logarithm accurate.
def softplus(x: Tensor) -> Tensor:
    r"""$\zeta(x) = \log(1 + e^x) = \max(x, 0) + \log(1 + e^{-|x|})$."""
    return torch.clamp(x, min=0.0) + torch.log1p(torch.exp(-x.abs()))


def mish(x: Tensor) -> Tensor:
    r"""$x \tanh \zeta(x)$."""
    return x * tanh(softplus(x))


def mish_derivative(x: Tensor) -> Tensor:
    r"""$\tanh \zeta(x) + x \tanh'(\zeta(x))\,\sigma(x)$."""
    gate = softplus(x)
    return tanh(gate) + x * tanh_derivative(gate) * sigmoid(x)


# ## One table of activations
#
# Each elementwise activation is a pair, its function and its derivative, and the rest
# of the lesson uses them through this table. The `Activation` wrapper is also the
# public door, so it is where bad input is refused, once for all of them: anything that
# is not a floating-point tensor. A NumPy array or an integer tensor would otherwise
# fail deep inside some `torch.exp` with a message about the wrong function.
def check_tensor(x: object, name: str, argument: str = "x") -> None:
    """Raise `TypeError` unless `x` is a floating-point `torch.Tensor`."""
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{name}: {argument} must be a torch.Tensor, got {type(x).__name__}; "
            "wrap it with torch.as_tensor"
        )
    if not x.is_floating_point():
        raise TypeError(
            f"{name}: {argument} must have a floating-point dtype, got {x.dtype}"
        )


@dataclass(frozen=True)
class Activation:
    """An elementwise activation: `act(x)` is $f(x)$, `act.derivative(x)` is
    $f'(x)$."""

    name: str
    function: Callable[[Tensor], Tensor]
    derivative_function: Callable[[Tensor], Tensor]

    def __call__(self, x: Tensor) -> Tensor:
        check_tensor(x, self.name)
        return self.function(x)

    def derivative(self, x: Tensor) -> Tensor:
        check_tensor(x, f"{self.name}.derivative")
        return self.derivative_function(x)


ACTIVATIONS = {
    activation.name: activation
    for activation in [
        Activation("sigmoid", sigmoid, sigmoid_derivative),
        Activation("tanh", tanh, tanh_derivative),
        Activation("relu", relu, relu_derivative),
        Activation("leaky_relu", leaky_relu, leaky_relu_derivative),
        Activation("elu", elu, elu_derivative),
        Activation("gelu", gelu, gelu_derivative),
        Activation("gelu_tanh", gelu_tanh, gelu_tanh_derivative),
        Activation("silu", silu, silu_derivative),
        Activation("mish", mish, mish_derivative),
    ]
}


def get_activation(name: str) -> Activation:
    """The activation called `name`, or a `ValueError` listing the names there are."""
    if name not in ACTIVATIONS:
        raise ValueError(
            f"activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}"
        )
    return ACTIVATIONS[name]


# ## Softmax and its Jacobian
#
# Softmax is not applied unit by unit: it turns a vector of scores into probabilities
# [@bridle1990probabilistic], so each output depends on every input.
# $$
# s_i = \frac{e^{x_i}}{\sum_j e^{x_j}}, \qquad
# \frac{\partial s_i}{\partial x_j} = s_i(\delta_{ij} - s_j).
# $$
# Its derivative is a matrix, $J = \operatorname{diag}(s) - s s^\top$. Nobody builds it:
# for $n$ classes it has $n^2$ entries, while the backward pass only needs $J$ times a
# vector. That product costs $O(n)$:
# $$
# J v = s \odot \bigl(v - \langle s, v \rangle\bigr).
# $$
# $J$ is symmetric, so this Jacobian-vector product is also the vector-Jacobian product
# $v^\top J$ that reverse mode needs. Two facts the test checks: $J \mathbf 1 = 0$
# (adding a constant to every score changes nothing), and for two scores
# $\operatorname{softmax}(x, 0)_1 = \sigma(x)$.
#
# Subtracting the largest score first leaves $s$ unchanged (the factor $e^{-m}$ cancels)
# and keeps every exponent $\le 0$, so scores of $10^3$ do not overflow. A score of
# $-\infty$, the usual way to mask an entry, gets probability exactly 0.
#
# The same checker guards it, plus the one thing an elementwise function does not
# have: `dim` must name an axis of `x`.
def check_softmax_arguments(x: object, dim: int) -> None:
    """Raise unless `x` is a floating tensor with an axis `dim`."""
    check_tensor(x, "softmax")
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"softmax: dim must be an int, got {type(dim).__name__}")
    if not -x.ndim <= dim < x.ndim or x.ndim == 0:
        raise ValueError(
            f"softmax: dim must name an axis of x (x has {x.ndim}), got {dim}"
        )


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    r"""$e^{x_i - m} / \sum_j e^{x_j - m}$ along `dim`, with $m$ the largest score."""
    check_softmax_arguments(x, dim)
    exponentials = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return exponentials / exponentials.sum(dim=dim, keepdim=True)


def softmax_jvp(x: Tensor, v: Tensor, dim: int = -1) -> Tensor:
    r"""$J v = s \odot (v - \langle s, v \rangle)$ along `dim`, $J$ the softmax's
    Jacobian at `x`."""
    check_softmax_arguments(x, dim)
    check_tensor(v, "softmax_jvp", "v")
    if v.shape != x.shape:
        raise ValueError(
            f"softmax_jvp: v must have x's shape {tuple(x.shape)}, got {tuple(v.shape)}"
        )
    s = softmax(x, dim)
    return s * (v - (s * v).sum(dim=dim, keepdim=True))


# ## Our derivatives in a real backward pass
#
# To train with these derivatives rather than autograd's, each activation becomes a
# `torch.autograd.Function`: `forward` computes $f(z)$ and keeps $z$; `backward`
# receives $\partial L / \partial f(z)$ and returns it times $f'(z)$, elementwise. The
# second input, the activation's name, is not a tensor and gets no gradient (`None`).
class ActivationFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, name: str) -> Tensor:
        ctx.save_for_backward(z)
        ctx.name = name
        return ACTIVATIONS[name].function(z)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:
        (z,) = ctx.saved_tensors
        return grad_output * ACTIVATIONS[ctx.name].derivative_function(z), None


# `torch.fx`, which draws this page's dataflow diagram, traces a model by running it on
# placeholder objects, and cannot look inside a custom `autograd.Function`.
# `torch.fx.wrap` tells it to record `apply_activation` as one opaque call instead.
def apply_activation(z: Tensor, name: str) -> Tensor:
    """The activation called `name` applied to `z`, with its hand-written backward
    rule."""
    return ActivationFunction.apply(z, name)


torch.fx.wrap("apply_activation")


class Activate(nn.Module):
    """A layer applying one activation from the table, by name."""

    def __init__(self, name: str):
        super().__init__()
        self.activation = get_activation(name)

    def forward(self, z: Tensor) -> Tensor:
        return apply_activation(z, self.activation.name)

    def extra_repr(self) -> str:
        return self.activation.name


# ## The experiment: one network, nine activations
#
# The network is the same for every activation: the 64 pixels of a digit, two hidden
# layers of 64 units, and 10 class scores. Every run starts from the same weights and
# sees the same mini-batches; only the activation differs.
#
# `bias_shift` adds a constant to the initial biases of the hidden layers. A negative
# shift starts every unit closer to the rectifiers' flat side, the way a bad
# initialisation or a large update can leave it [@lu2020dying].
class DigitsNet(nn.Module):
    r"""64 → `hidden` → `hidden` → 10, the activation between the linear layers."""

    def __init__(self, activation: str, hidden: int = 64, bias_shift: float = 0.0):
        super().__init__()
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(
                f"DigitsNet: hidden must be a positive int, got {hidden!r}"
            )
        self.hidden = nn.ModuleList([nn.Linear(64, hidden), nn.Linear(hidden, hidden)])
        self.activate = Activate(activation)
        self.output = nn.Linear(hidden, 10)
        with torch.no_grad():
            for layer in self.hidden:
                layer.bias += bias_shift

    def forward(self, images: Tensor) -> Tensor:
        h = images  # [batch, 64]
        for layer in self.hidden:
            h = self.activate(layer(h))  # [batch, hidden]
        return self.output(h)  # [batch, 10]

    # For counting dead units we need what each hidden unit receives, before its
    # activation, on every training example.
    @torch.no_grad()
    def pre_activations(self, images: Tensor) -> list[Tensor]:
        """The pre-activations $z$ of each hidden layer, each `[batch, hidden]`."""
        result, h = [], images
        for layer in self.hidden:
            z = layer(h)  # [batch, hidden]
            result.append(z)
            h = self.activate.activation.function(z)
        return result


# A unit is **dead** when it passes (almost) no gradient back on *any* training example:
# $|f'(z_n)| < \tau$ for every example $n$, with $\tau = 10^{-3}$. For ReLU this is
# exactly "outputs 0 on every example", since $\operatorname{relu}'(z) = 0$ precisely
# when $\operatorname{relu}(z) = 0$. For the sigmoid and $\tanh$ it catches a unit
# saturated on every example, and for ELU and GELU one deep in their flat left tails.
# LeakyReLU's derivative never goes below $\alpha = 0.01 > \tau$: it cannot die.
#
# Its incoming weights then get a gradient below $\tau$ times the gradient at its output
# on every example: ReLU's exactly 0, so its weights stop changing, unless the layers
# below move its inputs back into the positive range.
DEAD_THRESHOLD = 1e-3


def dead_fraction(
    model: DigitsNet, images: Tensor, threshold: float = DEAD_THRESHOLD
) -> float:
    r"""The fraction of hidden units with $|f'(z)| <$ `threshold` on every row of
    `images`."""
    derivative = model.activate.activation.derivative_function
    dead = [
        (derivative(z).abs() < threshold).all(dim=0)  # [hidden]
        for z in model.pre_activations(images)
    ]
    return torch.cat(dead).float().mean().item()


@dataclass
class RunResult:
    """One training run: the training loss after each epoch, the test accuracy at the
    end, and the fraction of dead hidden units at the end."""

    losses: list[float]
    accuracy: float
    dead: float


# Plain mini-batch SGD on the cross-entropy loss. The generator seeded with `seed`
# fixes the batch order, and `torch.manual_seed(seed)` the initial weights, so two runs
# differ only in their activation.
def train(
    activation: str,
    data: tuple[Tensor, Tensor, Tensor, Tensor],
    *,
    epochs: int,
    lr: float,
    bias_shift: float = 0.0,
    batch_size: int = 64,
    seed: int = 0,
) -> RunResult:
    """Train a `DigitsNet` with `activation` on `data` = (x_train, y_train, x_test,
    y_test), all on one device."""
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = DigitsNet(activation, bias_shift=bias_shift).to(x_train.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    batches = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=batches).to(x_train.device)
        for start in range(0, len(x_train), batch_size):
            batch = order[start : start + batch_size]  # [batch]
            loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            losses.append(F.cross_entropy(model(x_train), y_train).item())
    with torch.no_grad():
        predictions = model(x_test).argmax(dim=1)  # [n_test]
        accuracy = (predictions == y_test).float().mean().item()
    return RunResult(losses, accuracy, dead_fraction(model, x_train))


# ## Figures
#
# The functions and their derivatives, in three groups: saturating, rectifiers, and
# self-gated.
GROUPS = {
    "saturating": ["sigmoid", "tanh"],
    "rectifiers": ["relu", "leaky_relu", "elu"],
    "self-gated": ["gelu", "gelu_tanh", "silu", "mish"],
}


def plot_activations(out: Path) -> None:
    """Write `activations.png`: each group's functions above their derivatives."""
    x = torch.linspace(-4.0, 4.0, 801, dtype=torch.float64)  # [801]
    fig, axes = figure(panels=6, rows=2, sharex=True)
    for column, (group, names) in enumerate(GROUPS.items()):
        for name in names:
            activation = ACTIVATIONS[name]
            style = "--" if name == "gelu_tanh" else "-"
            axes[0, column].plot(x, activation(x), style, label=name)
            axes[1, column].plot(x, activation.derivative(x), style, label=name)
        axes[0, column].set(title=f"{group}: $f(x)$")
        axes[1, column].set(title=f"{group}: $f\\,'(x)$", xlabel="$x$")
        axes[0, column].legend(loc="upper left")
        for ax in axes[:, column]:
            ax.axhline(0.0, color="0.6", linewidth=0.6)
            ax.axvline(0.0, color="0.6", linewidth=0.6)
    save(
        fig,
        out / "activations.png",
        caption="Each activation (top) above its hand-written derivative (bottom). "
        "The sigmoid's and tanh's derivatives die away on both sides; ReLU's is a step "
        "from 0 to 1, LeakyReLU's from 0.01 to 1, ELU's a smooth rise to 1; the "
        "self-gated functions dip below 0 on the left, so their derivatives go "
        "negative there. The tanh-approximated GELU (dashed) lies on the exact one.",
    )


def plot_runs(runs: dict[str, dict[str, RunResult]], out: Path) -> None:
    """Write `learning_curves.png` and `dead_units.png` from `runs[setting][name]`."""
    settings = list(runs)
    fig, axes = figure(panels=len(settings))
    axes = np.atleast_1d(axes)
    for ax, setting in zip(axes, settings):
        for name, run in runs[setting].items():
            style = "--" if name in GROUPS["saturating"] else "-"
            epochs = np.arange(1, len(run.losses) + 1)
            ax.plot(epochs, run.losses, style, label=name)
        ax.set(title=setting, xlabel="epoch", ylabel="training loss", yscale="log")
        ax.set_ylim(0.03, 10.0)  # a diverging run would squash all the others
    fig.legend(
        *axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=9
    )
    save(
        fig,
        out / "learning_curves.png",
        caption="Training cross-entropy after each epoch, one line per activation "
        "(sigmoid and tanh dashed), same initial weights and batches. Left: learning "
        "rate 0.5, where all but the sigmoid learn. Middle: learning rate 1, where "
        "most runs stall, ELU diverges off the top, and SiLU does best. Right: "
        "hidden biases shifted down by 0.5, where ReLU and LeakyReLU stay flat at "
        "chance.",
    )

    names = list(runs[settings[0]])
    fig, axes = figure(panels=len(settings), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, setting in zip(axes, settings):
        fractions = [runs[setting][name].dead for name in names]
        ax.barh(np.arange(len(names)), fractions, color="#2171b5")
        ax.set(title=setting, xlabel="fraction of dead hidden units", xlim=(0, 1))
    axes[0].set_yticks(np.arange(len(names)), names)
    axes[0].invert_yaxis()
    fig.suptitle("Dead units after training: $|f\\,'(z)| < 10^{-3}$ on every example")
    # The caption says what this run lost, since that moves with the seed and the CPU.
    lost = {
        setting: ", ".join(
            f"{name} {100 * run.dead:.0f} %"
            for name, run in runs[setting].items()
            if run.dead > 0
        )
        or "none"
        for setting in settings
    }
    save(
        fig,
        out / "dead_units.png",
        caption="The fraction of hidden units whose derivative is below 0.001 on "
        "every training example, per activation and setting. Units lost: "
        + "; ".join(f"{setting}, {lost[setting]}" for setting in settings)
        + ".",
    )


# ## The example
#
# The network of the experiment with GELU, on a batch of eight digits: the page traces
# it with `torch.fx`, and each activation appears as one `apply_activation` call.
def example():
    """A small example: `fn(*args)` runs a GELU `DigitsNet` on eight digits."""
    torch.manual_seed(0)
    model = DigitsNet("gelu")
    x_train = digits()[0]
    return model, (torch.tensor(x_train[:8], dtype=torch.float32),)


# ## The demo
#
# Three settings, each run with all nine activations for 10 epochs. *ordinary*:
# learning rate 0.5. *large lr*: learning rate 1. *shifted*: learning rate 0.5 with the
# hidden biases started 0.5 lower. It prints the test accuracy and the dead fraction of
# every run and returns them as `accuracy/<setting>/<name>` and `dead/<setting>/<name>`.
#
# What the defaults give on one CPU thread: in the ordinary runs every activation but
# the sigmoid reaches 95–97 % (the sigmoid, neither zero-centred nor steep, is still at
# 20 % after 10 epochs), and only ReLU has dead units, 5 %. At learning rate 1, 59 % of
# ReLU's units die, none of LeakyReLU's, and all of ELU's: its updates overshoot into
# the flat left tail, where $e^z < 10^{-3}$ (tanh loses 48 %, saturated). With the
# shift, 83 % of ReLU's units start dead and stay dead. LeakyReLU loses none but is
# still at chance after 10 epochs: with every unit on its leaky side, the gradient
# reaching the first layer is scaled by $0.01^2$. Not dead, but barely alive. ELU
# reaches 96 %, as if unshifted.
def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description="Activations and their derivatives; the digits network trained "
        "with each, counting dead units.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--epochs", type=integer(at_least=1), default=10, help="epochs per run"
    )
    parser.add_argument(
        "--lr",
        type=number(above=0),
        default=0.5,
        help="learning rate of the ordinary runs",
    )
    parser.add_argument(
        "--large-lr",
        type=number(above=0),
        default=1.0,
        help="learning rate of the 'large lr' runs",
    )
    parser.add_argument(
        "--bias-shift",
        type=number(),
        default=-0.5,
        help="added to the initial hidden biases in the 'shifted' runs",
    )
    parser.add_argument(
        "--activations",
        type=names_from(ACTIVATIONS),
        default=",".join(ACTIVATIONS),
        help="comma-separated activations to train with",
    )
    parser.add_argument(
        "--seed",
        type=integer(at_least=0),
        default=0,
        help="seed for the weights and batch order",
    )
    parser.add_argument(
        "--threads",
        type=integer(at_least=1),
        default=1,
        help="CPU threads for torch (the matrices are tiny: more only adds handoffs)",
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to train on",
    )
    parser.add_argument(
        "--out", default="out/activations", help="folder for the figures"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)

    # With 64-unit layers, a step is a few microseconds of arithmetic per operation,
    # and a second CPU thread only adds a handoff to each: on a busy 2-core machine
    # that made training more than ten times slower. One thread is the default.
    torch.set_num_threads(args.threads)
    plot_activations(out)
    x_train, y_train, x_test, y_test = digits()
    data = (
        torch.tensor(x_train, dtype=torch.float32, device=args.device),
        torch.tensor(y_train, device=args.device),
        torch.tensor(x_test, dtype=torch.float32, device=args.device),
        torch.tensor(y_test, device=args.device),
    )
    settings = {
        "ordinary": {"lr": args.lr, "bias_shift": 0.0},
        "large lr": {"lr": args.large_lr, "bias_shift": 0.0},
        "shifted": {"lr": args.lr, "bias_shift": args.bias_shift},
    }
    runs = {setting: {} for setting in settings}
    jobs = [(setting, name) for setting in settings for name in args.activations]
    for setting, name in tqdm(jobs, desc="training"):
        runs[setting][name] = train(
            name, data, epochs=args.epochs, seed=args.seed, **settings[setting]
        )
    plot_runs(runs, out)

    metrics = {}
    for setting in settings:
        print(
            f"{setting}: lr {settings[setting]['lr']}, "
            f"bias shift {settings[setting]['bias_shift']}"
        )
        for name, run in runs[setting].items():
            print(
                f"  {name:10s} accuracy {run.accuracy:.3f}  dead units {run.dead:.3f}"
            )
            metrics[f"accuracy/{setting}/{name}"] = run.accuracy
            metrics[f"dead/{setting}/{name}"] = run.dead
    return metrics


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Write the derivative of softplus and add it to the table. Which other activation's
#    derivative is it, and where does softplus saturate by our definition?
# 2. Raise `DEAD_THRESHOLD` to $2 \times 10^{-2}$, just above LeakyReLU's slope
#    $\alpha = 0.01$, and rerun the demo. Which activations' counts change? Why does
#    ReLU's not move at all, while LeakyReLU's now counts every unit that sits on its
#    leaky side on every example? (At exactly $10^{-2}$ it would stay 0: the test is a
#    strict $<$ and the derivative is exactly $\alpha$.)
# 3. Revive the dead ReLU units of the large-lr run: after training, find them and reset
#    their incoming weights and biases to fresh initial values, then train a few more
#    epochs. How many stay alive?
# 4. Replace `softmax_jvp` in a cross-entropy loss by the gradient of
#    $-\log s_y$ with respect to $x$, written directly. Show that it equals $s - e_y$,
#    and explain why frameworks fuse log-softmax and cross-entropy into one operation.
