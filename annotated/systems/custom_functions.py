r"""
---
title: Custom autograd Functions
summary: >-
  Four torch.autograd.Functions with hand-written backward passes (Mish, a stable
  log-sum-exp, the focal loss and a straight-through sign), each wrapped as an
  nn.Module, checked with gradcheck and gradgradcheck, and trained on digits.
time: 10 s
expected:
  metric: "accuracy/binary, straight-through"
  short: ["--epochs", "3", "--device", "cpu"]
references:
  - key: paszke2019pytorch
    authors: [Adam Paszke, Sam Gross, Francisco Massa, Adam Lerer, et al.]
    title: "PyTorch: An Imperative Style, High-Performance Deep Learning Library"
    year: 2019
    venue: NeurIPS 2019
    arxiv: "1912.01703"
  - key: misra2019mish
    authors: [Diganta Misra]
    title: "Mish: A Self Regularized Non-Monotonic Activation Function"
    year: 2019
    venue: arXiv preprint (BMVC 2020)
    arxiv: "1908.08681"
  - key: lin2017focal
    authors: [Tsung-Yi Lin, Priya Goyal, Ross Girshick, Kaiming He, Piotr Dollár]
    title: Focal Loss for Dense Object Detection
    year: 2017
    venue: ICCV 2017
    arxiv: "1708.02002"
  - key: bengio2013estimating
    authors: [Yoshua Bengio, Nicholas Léonard, Aaron Courville]
    title: >-
      Estimating or Propagating Gradients Through Stochastic Neurons for Conditional
      Computation
    year: 2013
    venue: arXiv preprint
    arxiv: "1308.3432"
  - key: courbariaux2015binaryconnect
    authors: [Matthieu Courbariaux, Yoshua Bengio, Jean-Pierre David]
    title: >-
      BinaryConnect: Training Deep Neural Networks with binary weights during
      propagations
    year: 2015
    venue: NeurIPS 2015
    arxiv: "1511.00363"
  - key: hubara2016binarized
    authors:
      - Itay Hubara
      - Matthieu Courbariaux
      - Daniel Soudry
      - Ran El-Yaniv
      - Yoshua Bengio
    title: Binarized Neural Networks
    year: 2016
    venue: NeurIPS 2016
    arxiv: "1602.02830"
worksheet:
  - region: MishFunction.backward
    hint: >-
      Recompute from the saved x alone: with gate = tanh(softplus(x)), the derivative
      is gate + x * sigmoid(x) * (1 - gate^2); return grad_output times it, written in
      differentiable torch operations so that gradgradcheck can go through it.
    tests:
      - test_mish_matches_torch_on_a_grid_and_in_the_tails
      - test_mish_passes_gradcheck_and_gradgradcheck
  - region: LogSumExpFunction.backward
    hint: >-
      The gradient is the softmax, exp(x - out), from the saved input and output; when
      keepdim was false, first unsqueeze grad_output and out along dim so that they
      broadcast; dim and keepdim get no gradient (None, None).
    tests:
      - test_logsumexp_matches_torch
      - test_logsumexp_passes_gradcheck_and_gradgradcheck
      - test_logsumexp_masked_scores_get_exactly_zero_gradient
  - region: SigmoidFocalLossFunction.backward
    hint: >-
      With s = 2 targets - 1, log p_t = logsigmoid(s * logits) and alpha_t as in the
      forward, the elementwise gradient is s * alpha_t * sigmoid(-s * logits)^gamma *
      (gamma p_t log p_t + p_t - 1); divide grad_output by the number of elements for
      the mean, and return None for the other four inputs.
    tests:
      - test_focal_loss_matches_torchvisions_formula
      - test_focal_loss_passes_gradcheck_and_gradgradcheck
      - test_focal_loss_gradient_is_finite_and_right_at_extreme_logits
---

Autograd differentiates any composition of PyTorch's operations [@paszke2019pytorch].
So why would anyone write a backward pass by hand? Four reasons, one per Function in
this chapter:

1. **Memory.** Autograd keeps every intermediate a backward rule needs. Mish,
   $x \tanh(\operatorname{softplus}(x))$, composed from three operations saves two
   tensors; written as one Function it saves only $x$ and recomputes the rest. The
   focal loss composed from some fifteen operations saves eight tensors of the
   input's size (the logits and labels among them); as one Function it saves two.
2. **Numerics.** $\log \sum_i e^{x_i}$ composed naively overflows at $x_i = 710$ in
   float64 and $89$ in float32. A Function shifts by the maximum in its forward pass
   and writes the backward rule, a softmax, without ever forming $e^{x_i}$ unshifted.
3. **A closed form autograd would not find.** The focal loss's gradient collapses to
   one line, finite at logits of $\pm 1000$.
4. **A gradient that is deliberately not the derivative.** $\operatorname{sign}(x)$
   has derivative 0 almost everywhere, so nothing upstream of it could learn. The
   *straight-through estimator* pretends it was the identity [@bengio2013estimating],
   and that lie is what trains networks with binary weights
   [@courbariaux2015binaryconnect].

Each Function is checked the way PyTorch checks its own operators: `gradcheck`
compares the hand-written backward with finite differences in float64, and
`gradgradcheck` does the same for the backward of the backward. The test runs both,
compares every value and gradient with torch's operator or the autograd composition,
and checks that `gradcheck` *rejects* the straight-through estimator, as it should. The
demo trains a digits network with all four: 97 % test accuracy with float weights, 92 %
with weights that are all $\pm 1$, and 54 % when the same binary network uses
`torch.sign`'s true gradient, zero, instead of the straight-through one, so that only
its biases learn.
"""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from annotated.data import digits, integer, number, torch_device
from annotated.figures import figure, save

# ## What a Function is
#
# A `torch.autograd.Function` is a node of the graph that autograd records, written in
# Python. `Function.apply(*inputs)` does three things, in
# `torch/csrc/autograd/python_function.cpp` (`THPFunction_apply`): it runs `forward`
# with gradient recording switched off, so the operations inside leave no nodes behind;
# it calls `setup_context` to let the Function keep what its backward needs; and it
# attaches a `PyNode` to the outputs, whose `apply` calls our `backward` when the
# engine reaches it (the Python side is `torch/autograd/function.py`).
#
# The contract of `backward(ctx, grad_output)`:
#
# - it receives $\bar{y} = \partial L / \partial y$, shaped like the output, and
#   returns one value per input of `forward`: $\bar{x} = J^\top \bar{y}$ for a tensor
#   input, `None` for anything else (a `dim`, a $\gamma$);
# - tensors it needs are kept with `ctx.save_for_backward`, never as plain attributes:
#   saved tensors are checked for in-place modification between forward and backward
#   (the version counter), and they are what `saved_tensors_hooks` can intercept;
# - if `backward` is itself written in differentiable torch operations, autograd
#   records them when a second derivative is asked for (`create_graph=True`), and the
#   Function is twice differentiable for free. A backward in NumPy would have to be
#   marked `@once_differentiable`, and `gradgradcheck` would refuse it.
#
# We write `forward` without `ctx` and a separate `setup_context`, the form PyTorch has
# recommended since 2.0: it is the one `torch.func` transforms (`grad`, `jacrev`) can
# see through.
#
# ## Mish, saving one tensor
#
# Mish gates $x$ by $\tanh$ of the softplus $\zeta(x) = \log(1 + e^x)$
# [@misra2019mish]. Since $\zeta' = \sigma$, the logistic sigmoid,
#
# $$
# \begin{aligned}
# \operatorname{mish}(x) &= x \tanh \zeta(x), \\
# \operatorname{mish}'(x) &= \tanh \zeta(x)
#   + x\,\sigma(x)\bigl(1 - \tanh^2 \zeta(x)\bigr).
# \end{aligned}
# $$
#
# Composed as `x * torch.tanh(F.softplus(x))`, autograd saves $x$ for the softplus and
# for the product, and $\tanh \zeta(x)$ for the tanh and for the product: two tensors
# of $x$'s size. The Function saves $x$ alone and recomputes $\zeta$, $\tanh$ and
# $\sigma$ in its backward, trading a little arithmetic for half the memory. PyTorch's
# own `F.mish` makes the same choice: `tools/autograd/derivatives.yaml` gives it
# `mish_backward(grad, self)`, a fused kernel, and, when a second derivative may be
# needed (`GradMode::is_enabled()`), `infinitely_differentiable_mish_backward` in
# `torch/csrc/autograd/FunctionsManual.cpp`, a composition like ours.


class MishFunction(torch.autograd.Function):
    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return x * torch.tanh(F.softplus(x))

    @staticmethod
    def setup_context(ctx, inputs: tuple[Tensor], output: Tensor) -> None:
        (x,) = inputs
        ctx.save_for_backward(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        gate = torch.tanh(F.softplus(x))
        return grad_output * (gate + x * torch.sigmoid(x) * (1 - gate * gate))


# Every public entry point refuses what would otherwise fail deep inside a kernel or,
# worse, run: an integer tensor has no gradient, and a NumPy array would leave the
# graph. One checker serves all four Functions.
def check_floating(value: object, function: str, argument: str) -> None:
    """Raise `TypeError` unless `value` is a floating-point `torch.Tensor`."""
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{function}: {argument} must be a torch.Tensor, got {type(value).__name__}"
        )
    if not value.is_floating_point():
        raise TypeError(
            f"{function}: {argument} must have a floating-point dtype, "
            f"got {value.dtype}"
        )


# `torch.fx`, which draws this page's dataflow diagram, traces a model by running it on
# placeholder objects and cannot look inside a Function. `torch.fx.wrap` makes it
# record each of these public functions as one opaque call instead.
def mish(x: Tensor) -> Tensor:
    r"""$x \tanh \zeta(x)$ with the hand-written backward of `MishFunction`."""
    check_floating(x, "mish", "x")
    return MishFunction.apply(x)


torch.fx.wrap("mish")


class Mish(nn.Module):
    """The Mish activation as a layer."""

    def forward(self, x: Tensor) -> Tensor:
        return mish(x)


# The composition, kept for the demo's memory count: what autograd would record without
# the Function.
def mish_composed(x: Tensor) -> Tensor:
    """Mish as three recorded operations."""
    return x * torch.tanh(F.softplus(x))


# ## A stable log-sum-exp
#
# $\operatorname{lse}(x) = \log \sum_i e^{x_i}$ is the log-normaliser of a softmax, and
# the heart of every cross-entropy. Composed as `x.exp().sum().log()` it overflows
# as soon as one $x_i$ exceeds about 709 in float64, and 88 in float32. With
# $m = \max_i x_i$,
#
# $$
# \operatorname{lse}(x) = m + \log \sum_i e^{x_i - m},
# $$
#
# exact in real arithmetic, and every exponent is now $\le 0$: the largest term is
# $e^0 = 1$, so the sum lies in $[1, n]$ and neither overflows nor vanishes. The
# derivative is the softmax, and it too can be written through the output $y$
# without an unshifted exponential:
#
# $$
# \frac{\partial y}{\partial x_i} = \frac{e^{x_i}}{\sum_j e^{x_j}} = e^{x_i - y} .
# $$
#
# So the backward rule is $\bar{x}_i = \bar{y}\, e^{x_i - y}$, and the Function saves
# $x$ and its own output. A saved output is no obstacle to the second derivative:
# autograd knows the output came from this node and differentiates through it.
#
# Two edge cases follow ATen's own `logsumexp` (`aten/src/ATen/native/ReduceOps.cpp`),
# whose backward is `logsumexp_backward` in `torch/csrc/autograd/FunctionsManual.cpp`.
# A row that is all $-\infty$ (fully masked) has $m = -\infty$ and $x - m$ would be
# NaN; an infinite maximum is replaced by 0, so the row's result is $\log 0 = -\infty$.
# And a $-\infty$ entry in an ordinary row gets gradient $e^{-\infty} = 0$, exactly.


class LogSumExpFunction(torch.autograd.Function):
    @staticmethod
    def forward(x: Tensor, dim: int, keepdim: bool) -> Tensor:
        shift = x.amax(dim=dim, keepdim=True)  # [..., 1, ...]
        shift = torch.where(shift.isinf(), torch.zeros_like(shift), shift)
        total = torch.exp(x - shift).sum(dim=dim, keepdim=True)  # in [1, n]
        out = shift + torch.log(total)  # [..., 1, ...]
        return out if keepdim else out.squeeze(dim)

    @staticmethod
    def setup_context(ctx, inputs: tuple[Tensor, int, bool], output: Tensor) -> None:
        x, ctx.dim, ctx.keepdim = inputs
        ctx.save_for_backward(x, output)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None, None]:
        x, out = ctx.saved_tensors
        if not ctx.keepdim:
            grad_output = grad_output.unsqueeze(ctx.dim)  # [..., 1, ...]
            out = out.unsqueeze(ctx.dim)
        return grad_output * torch.exp(x - out), None, None


def logsumexp(x: Tensor, dim: int = -1, keepdim: bool = False) -> Tensor:
    r"""$\log \sum_i e^{x_i}$ along `dim`, stable for any finite input."""
    check_floating(x, "logsumexp", "x")
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"logsumexp: dim must be an int, got {type(dim).__name__}")
    if x.ndim == 0 or not -x.ndim <= dim < x.ndim:
        raise ValueError(
            f"logsumexp: dim must name an axis of x (x has {x.ndim}), got {dim}"
        )
    return LogSumExpFunction.apply(x, dim % x.ndim, bool(keepdim))


torch.fx.wrap("logsumexp")


class LogSumExp(nn.Module):
    """Log-sum-exp along a fixed `dim` as a layer."""

    def __init__(self, dim: int = -1, keepdim: bool = False):
        super().__init__()
        self.dim = dim
        self.keepdim = keepdim

    def forward(self, x: Tensor) -> Tensor:
        return logsumexp(x, self.dim, self.keepdim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, keepdim={self.keepdim}"


# With it, the cross-entropy of logits $z$ and class $c$ is
# $-\log \operatorname{softmax}(z)_c = \operatorname{lse}(z) - z_c$, stable at any
# scale. The demo trains with it.
def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    r"""Mean of $\operatorname{lse}(z) - z_c$ over the batch: `logits` `[batch,
    classes]`, `labels` `[batch]`."""
    picked = logits.gather(1, labels.unsqueeze(1)).squeeze(1)  # [batch]
    return (logsumexp(logits, dim=1) - picked).mean()


# ## The focal loss
#
# A detector scores tens of thousands of anchor boxes, nearly all background. With the
# binary cross-entropy, the easy negatives, each with a small loss, add up to swamp the
# few hard examples. The focal loss [@lin2017focal] scales each example's cross-entropy
# by $(1 - p_t)^\gamma$, where $p_t$ is the probability the model gives the true label,
# so that examples already classified well contribute little. For a logit $z$ and a
# label $y \in \{0, 1\}$, let $s = 2y - 1$ be the label's sign; then
# $p_t = \sigma(s z)$, and with the class weight $\alpha_t$ ($\alpha$ for positives,
# $1 - \alpha$ for negatives),
#
# $$
# \mathrm{FL} = -\alpha_t (1 - p_t)^\gamma \log p_t .
# $$
#
# $\gamma = 0$ is the weighted cross-entropy. Differentiating, with
# $\partial p_t / \partial z = s\, p_t (1 - p_t)$, the factor $(1 - p_t)$ cancels
# the $(1 - p_t)^{\gamma - 1}$ the power rule produces, and the gradient is one line
# with no negative power left in it:
#
# $$
# \begin{aligned}
# \frac{\partial\, \mathrm{FL}}{\partial z}
#   &= s\, \alpha_t (1 - p_t)^\gamma \\
#   &\quad \times \bigl(\gamma\, p_t \log p_t + p_t - 1\bigr).
# \end{aligned}
# $$
#
# At $\gamma = 0$ it is $s\,\alpha_t (p_t - 1)$, the cross-entropy's familiar
# $\sigma(z) - y$ times $\alpha_t$. Written with $\log p_t = \log\sigma(sz)$ and
# $1 - p_t = \sigma(-sz)$, each computed directly, every factor stays finite for logits
# of $\pm 1000$. The composition of some fifteen operations that torchvision ships
# (`sigmoid_focal_loss`) saves most of its intermediates; the Function saves the logits
# and the labels. The labels, like $\alpha$ and $\gamma$, get no gradient: `None`.


class SigmoidFocalLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        logits: Tensor, targets: Tensor, alpha: float, gamma: float, reduction: str
    ) -> Tensor:
        sign = 2 * targets - 1  # +1 for positives, -1 for negatives
        log_p_true = F.logsigmoid(sign * logits)  # log p_t
        alpha_true = alpha * targets + (1 - alpha) * (1 - targets)
        loss = -alpha_true * torch.sigmoid(-sign * logits) ** gamma * log_p_true
        if reduction == "mean":
            return loss.mean()
        return loss.sum() if reduction == "sum" else loss

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: Tensor) -> None:
        logits, targets, ctx.alpha, ctx.gamma, ctx.reduction = inputs
        ctx.save_for_backward(logits, targets)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None, None, None, None]:
        logits, targets = ctx.saved_tensors
        sign = 2 * targets - 1
        log_p_true = F.logsigmoid(sign * logits)
        p_true = torch.exp(log_p_true)
        alpha_true = ctx.alpha * targets + (1 - ctx.alpha) * (1 - targets)
        gradient = (
            sign
            * alpha_true
            * torch.sigmoid(-sign * logits) ** ctx.gamma
            * (ctx.gamma * p_true * log_p_true + p_true - 1)
        )
        if ctx.reduction == "mean":
            grad_output = grad_output / logits.numel()
        return grad_output * gradient, None, None, None, None


# The loss has the most arguments, and so the most ways to be called wrongly: labels of
# another shape, labels that are not 0 or 1 (the derivation above assumed they are), an
# $\alpha$ outside $[0, 1]$, a negative $\gamma$.
def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "mean",
) -> Tensor:
    r"""$-\alpha_t (1 - p_t)^\gamma \log p_t$ per element, reduced by `reduction`."""
    check_floating(logits, "sigmoid_focal_loss", "logits")
    check_floating(targets, "sigmoid_focal_loss", "targets")
    if targets.shape != logits.shape:
        raise ValueError(
            f"sigmoid_focal_loss: targets must have logits' shape {tuple(logits.shape)}"
            f", got {tuple(targets.shape)}"
        )
    if not bool(((targets == 0) | (targets == 1)).all()):
        raise ValueError("sigmoid_focal_loss: targets must be 0 or 1")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"sigmoid_focal_loss: alpha must lie in [0, 1], got {alpha}")
    if not gamma >= 0.0:
        raise ValueError(f"sigmoid_focal_loss: gamma must be >= 0, got {gamma}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(
            "sigmoid_focal_loss: reduction must be 'mean', 'sum' or 'none', "
            f"got {reduction!r}"
        )
    return SigmoidFocalLossFunction.apply(
        logits, targets.to(logits.dtype), float(alpha), float(gamma), reduction
    )


torch.fx.wrap("sigmoid_focal_loss")


class FocalLoss(nn.Module):
    """The sigmoid focal loss with fixed `alpha`, `gamma` and `reduction`."""

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, reduction="mean"):
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma
        self.reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return sigmoid_focal_loss(
            logits, targets, self.alpha, self.gamma, self.reduction
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}"


# torchvision's formula, restated for the memory count: what autograd records without
# the Function.
def focal_loss_composed(
    logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """The mean sigmoid focal loss as some fifteen recorded operations."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_true = p * targets + (1 - p) * (1 - targets)
    alpha_true = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_true * ce * (1 - p_true) ** gamma).mean()


# ## The straight-through estimator
#
# A network with weights in $\{-1, +1\}$ needs a single bit per weight and no
# multiplications. Training one needs gradients, and the binarizer
#
# $$
# \operatorname{sign}(x) = \begin{cases} +1 & x \ge 0 \\ -1 & x < 0 \end{cases}
# $$
#
# has derivative 0 everywhere except at 0, where it has none: every weight upstream
# of it would receive exactly zero gradient. The straight-through estimator
# [@bengio2013estimating] keeps real-valued *latent* weights, binarizes them in the
# forward pass, and in the backward pass lets the gradient through as if the binarizer
# had been the identity. Cancelling it where $|x| > 1$ [@hubara2016binarized], the
# derivative of $\operatorname{clip}(x, -1, 1)$, stops a latent weight that has already
# settled far on one side from drifting further for nothing:
#
# $$
# \bar{x} = \bar{y} \cdot \mathbb{1}_{|x| \le 1} .
# $$
#
# This backward is deliberately not the derivative of the forward. `gradcheck`, which
# compares the two, must fail on it, and the test checks that it does; the second
# derivative, zero in $x$ and the indicator in $\bar{y}$, is consistent, and
# `gradgradcheck` passes. In one line of plain autograd the same trick reads
# `clip(x) + (sign(x) - clip(x)).detach()`, which the test uses as its reference.


class SignSTEFunction(torch.autograd.Function):
    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def setup_context(ctx, inputs: tuple[Tensor], output: Tensor) -> None:
        (x,) = inputs
        ctx.save_for_backward(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad_output * (x.abs() <= 1).to(grad_output.dtype)


def binarize(x: Tensor) -> Tensor:
    r"""$\operatorname{sign}(x)$ with $\operatorname{sign}(0) = 1$; gradient passed
    straight through where $|x| \le 1$."""
    check_floating(x, "binarize", "x")
    return SignSTEFunction.apply(x)


torch.fx.wrap("binarize")


class Binarize(nn.Module):
    """The straight-through sign as a layer."""

    def forward(self, x: Tensor) -> Tensor:
        return binarize(x)


# A linear layer with binary weights, as in BinaryConnect
# [@courbariaux2015binaryconnect].
# The latent weights start uniform in $[-1, 1]$, inside the band where gradients pass.
# With $\pm 1$ weights every output sums `in_features` terms of the input's size, so
# the layer scales its product by $1/\sqrt{\text{in\_features}}$ to keep activations
# near unit size, as the usual initialisation does. `straight_through=False` swaps in
# `torch.sign`, whose autograd gradient is the true one, zero: the demo's control.
class BinaryLinear(nn.Module):
    """`y = x (scale · sign(W))ᵀ + b`, `W` the latent weights."""

    def __init__(self, in_features: int, out_features: int, straight_through=True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.uniform_(self.weight, -1.0, 1.0)
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.binarize = Binarize() if straight_through else torch.sign
        self.scale = in_features**-0.5

    def forward(self, x: Tensor) -> Tensor:
        binary = self.binarize(self.weight)  # [out, in], every entry ±1
        return F.linear(x, binary * self.scale, self.bias)


# ## Counting the memory a backward keeps
#
# `torch.autograd.graph.saved_tensors_hooks` calls a *pack* hook on every tensor saved
# for backward, by a Function's `save_for_backward` as much as by ATen's own nodes.
# Summing the distinct storages it sees measures what a graph keeps alive until its
# backward runs (a tensor saved twice counts once).
def saved_bytes(fn, *args) -> int:
    """Bytes of the distinct storages that `fn(*args)` saves for its backward pass."""
    storages = {}

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn(*args)
    return sum(storages.values())


# ## A network that uses all four
#
# The 64 pixels of a digit, two hidden layers of 64 Mish units, 10 class scores; the
# linear layers are `nn.Linear` or `BinaryLinear`. The objective is the cross-entropy
# through our log-sum-exp, or the focal loss applied one-vs-rest to the ten scores,
# each score a binary "is it this digit?", which is how RetinaNet uses it for its
# object classes [@lin2017focal].
class DigitsNet(nn.Module):
    """64 → `hidden` → `hidden` → 10 with Mish; `weights` is 'float', 'binary' (the
    straight-through sign) or 'sign' (torch.sign's zero gradient)."""

    def __init__(self, weights: str = "float", hidden: int = 64):
        super().__init__()
        if weights not in ("float", "binary", "sign"):
            raise ValueError(
                "DigitsNet: weights must be 'float', 'binary' or 'sign', "
                f"got {weights!r}"
            )
        sizes = [64, hidden, hidden, 10]
        self.layers = nn.ModuleList(
            nn.Linear(n_in, n_out)
            if weights == "float"
            else BinaryLinear(n_in, n_out, straight_through=weights == "binary")
            for n_in, n_out in zip(sizes[:-1], sizes[1:])
        )
        self.activation = Mish()

    def forward(self, images: Tensor) -> Tensor:
        x = images  # [batch, 64]
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))  # [batch, hidden]
        return self.layers[-1](x)  # [batch, 10]


class Objective(nn.Module):
    """The training loss of `net` on a batch: 'cross_entropy' or 'focal'."""

    def __init__(self, net: DigitsNet, loss: str = "cross_entropy", gamma=2.0):
        super().__init__()
        if loss not in ("cross_entropy", "focal"):
            raise ValueError(
                f"Objective: loss must be 'cross_entropy' or 'focal', got {loss!r}"
            )
        self.net = net
        self.loss = loss
        self.focal = FocalLoss(alpha=0.25, gamma=gamma)

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        logits = self.net(images)  # [batch, 10]
        if self.loss == "cross_entropy":
            return cross_entropy(logits, labels)
        one_hot = F.one_hot(labels, 10).to(logits.dtype)  # [batch, 10]
        return self.focal(logits, one_hot)


# Adam on mini-batches of 64. Every run starts from the weights that `seed` draws and
# sees the same batches; the test accuracy is recorded after each epoch.
def train(
    objective: Objective,
    data: tuple[Tensor, Tensor, Tensor, Tensor],
    *,
    epochs: int,
    lr: float,
    seed: int,
    batch_size: int = 64,
) -> list[float]:
    """Train `objective.net` on `data` = (x_train, y_train, x_test, y_test); return
    the test accuracy after each epoch."""
    x_train, y_train, x_test, y_test = data
    optimizer = torch.optim.Adam(objective.parameters(), lr=lr)
    batches = torch.Generator().manual_seed(seed)
    accuracies = []
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=batches).to(x_train.device)
        for start in range(0, len(x_train), batch_size):
            batch = order[start : start + batch_size]  # [batch]
            loss = objective(x_train[batch], y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            predictions = objective.net(x_test).argmax(dim=1)  # [n_test]
            accuracies.append((predictions == y_test).float().mean().item())
    return accuracies


# ## Figures


def plot_functions(out: Path) -> None:
    """Write `functions.png`: Mish, the focal loss and the straight-through sign."""
    x = torch.linspace(-4.0, 4.0, 801, dtype=torch.float64, requires_grad=True)
    fig, axes = figure(panels=3)
    y = mish(x)
    (slope,) = torch.autograd.grad(y.sum(), x)
    axes[0].plot(x.detach(), y.detach(), label="mish $x$")
    axes[0].plot(x.detach(), slope, "--", label="hand-written backward")
    axes[0].set(title="Mish", xlabel="$x$")
    axes[0].legend(loc="upper left")

    p_true = torch.linspace(0.005, 1.0, 400, dtype=torch.float64)
    logits = torch.logit(p_true)  # p_t = sigmoid(z) for a positive label
    ones = torch.ones_like(logits)
    for gamma in (0.0, 0.5, 1.0, 2.0, 5.0):
        loss = sigmoid_focal_loss(logits, ones, 1.0, gamma, "none")
        axes[1].plot(p_true, loss, label=f"$\\gamma = {gamma:g}$")
    axes[1].set(title="focal loss ($\\alpha_t = 1$)", xlabel="$p_t$", ylim=(0, 5))
    axes[1].legend(loc="upper right")

    y = binarize(x)
    (straight,) = torch.autograd.grad(y.sum(), x)
    axes[2].plot(x.detach(), y.detach(), label="sign $x$")
    axes[2].plot(x.detach(), straight, "--", label="straight-through gradient")
    axes[2].axhline(0.0, color="0.6", linewidth=0.8, label="true gradient")
    axes[2].set(title="straight-through sign", xlabel="$x$", ylim=(-1.3, 1.6))
    axes[2].legend(loc="lower right")  # clear of the gradient's step at -1..1
    save(
        fig,
        out / "functions.png",
        caption="Left: Mish and the derivative its backward computes. Middle: the "
        "focal loss of a positive example against its probability p_t; a larger gamma "
        "flattens the loss of examples already classified well (p_t > 0.5). Right: "
        "the sign function, its true gradient (0) and the straight-through one, "
        "1 on [-1, 1].",
    )


def plot_runs(runs: dict[str, list[float]], memory: dict, out: Path) -> None:
    """Write `training.png`: test accuracy per epoch, and bytes saved for backward."""
    fig, axes = figure(panels=2)
    for name, accuracies in runs.items():
        axes[0].plot(range(1, len(accuracies) + 1), accuracies, label=name)
    axes[0].set(title="digits", xlabel="epoch", ylabel="test accuracy", ylim=(0, 1))
    axes[0].legend(loc="lower right")
    names = list(memory)
    positions = torch.arange(len(names), dtype=torch.float64)
    composed = [memory[name][0] for name in names]
    ours = [memory[name][1] for name in names]
    axes[1].bar(positions - 0.2, composed, 0.4, label="autograd composition")
    axes[1].bar(positions + 0.2, ours, 0.4, label="custom Function")
    axes[1].set_xticks(positions.tolist(), names)
    axes[1].set(title="saved for backward", ylabel="bytes per input element")
    axes[1].legend(loc="upper left")
    save(
        fig,
        out / "training.png",
        caption="Left: test accuracy of the digits network after each epoch, with "
        "float weights (cross-entropy through our log-sum-exp, or the focal loss), "
        "with ±1 weights trained by the straight-through estimator, and with ±1 "
        "weights behind torch.sign, whose zero gradient leaves only the biases to "
        "learn. Right: float32 bytes kept for the backward pass per input element.",
    )


# ## The example
#
# The binary-weight network with the focal loss, on eight digits: the page traces it
# with `torch.fx`, where `binarize`, `mish` and `sigmoid_focal_loss` each appear as one
# call.
def example():
    """A small example: `fn(*args)` is the focal loss of a binary-weight `DigitsNet`
    on eight digits."""
    torch.manual_seed(0)
    objective = Objective(DigitsNet("binary"), loss="focal")
    x_train, y_train, _, _ = digits()
    images = torch.tensor(x_train[:8], dtype=torch.float32)  # [8, 64]
    return objective, (images, torch.tensor(y_train[:8]))


# ## The demo
#
# Four runs of the same network from the same seed and batches: float weights with the
# cross-entropy, float weights with the focal loss, binary weights with the
# straight-through estimator, and binary weights behind `torch.sign`. It prints each
# run's final test accuracy and the bytes saved for backward, and returns them.
#
# What the defaults give: 97 % with float weights under either loss, 92 % with binary
# weights, and 54 % behind `torch.sign`, where no gradient reaches any weight and the
# biases alone learn what they can on top of random $\pm 1$ features. The memory
# counts, in float32 bytes per input element: Mish 8 composed against 4 as a Function
# (two tensors against one); the focal loss 32 against 8 (eight tensors against the
# logits and the labels).
def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description="Custom autograd Functions: train a digits network with Mish, "
        "log-sum-exp, the focal loss and straight-through binary weights.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--epochs", type=integer(at_least=1), default=15, help="epochs per run"
    )
    parser.add_argument(
        "--lr", type=number(above=0), default=0.01, help="Adam's learning rate"
    )
    parser.add_argument(
        "--gamma", type=number(at_least=0), default=2.0, help="focal loss gamma"
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="seed for weights, batches"
    )
    parser.add_argument(
        "--threads",
        type=integer(at_least=1),
        default=1,
        help="CPU threads for torch (tiny matrices)",
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to train on",
    )
    parser.add_argument(
        "--out", default="out/custom_functions", help="folder for the figures"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)

    plot_functions(out)
    x_train, y_train, x_test, y_test = digits()
    data = (
        torch.tensor(x_train, dtype=torch.float32, device=args.device),
        torch.tensor(y_train, device=args.device),
        torch.tensor(x_test, dtype=torch.float32, device=args.device),
        torch.tensor(y_test, device=args.device),
    )
    settings = {
        "float, cross-entropy": ("float", "cross_entropy"),
        "float, focal": ("float", "focal"),
        "binary, straight-through": ("binary", "cross_entropy"),
        "binary, torch.sign": ("sign", "cross_entropy"),
    }
    runs = {}
    for name, (weights, loss) in tqdm(settings.items(), desc="training"):
        torch.manual_seed(args.seed)
        objective = Objective(DigitsNet(weights), loss, args.gamma).to(args.device)
        runs[name] = train(
            objective, data, epochs=args.epochs, lr=args.lr, seed=args.seed
        )

    probe = torch.randn(256, 10, device=args.device, requires_grad=True)
    targets = F.one_hot(torch.arange(256, device=args.device) % 10, 10).float()
    memory = {
        "mish": (saved_bytes(mish_composed, probe), saved_bytes(mish, probe)),
        "focal loss": (
            saved_bytes(focal_loss_composed, probe, targets, 0.25, args.gamma),
            saved_bytes(sigmoid_focal_loss, probe, targets, 0.25, args.gamma),
        ),
    }
    memory = {
        name: (composed / probe.numel(), ours / probe.numel())
        for name, (composed, ours) in memory.items()
    }
    plot_runs(runs, memory, out)

    metrics = {}
    for name, accuracies in runs.items():
        print(f"{name:26s} test accuracy {accuracies[-1]:.3f}")
        metrics[f"accuracy/{name}"] = accuracies[-1]
    for name, (composed, ours) in memory.items():
        print(
            f"{name:26s} saved for backward: {composed:.0f} B/element composed, "
            f"{ours:.0f} as a Function"
        )
        metrics[f"saved_bytes/{name}/composed"] = composed
        metrics[f"saved_bytes/{name}/function"] = ours
    return metrics


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Make `MishFunction` save $\tanh \zeta(x)$ as well as $x$ and drop the recomputation
#    from its backward. Measure `saved_bytes` and the backward's time with
#    pytest-benchmark: when is the trade worth it?
# 2. Give `LogSumExpFunction` a tuple `dim`, reducing over several axes at once. Which
#    lines change, and what does `backward` need to unsqueeze?
# 3. Replace the sign by a $k$-bit uniform quantiser of $[-1, 1]$ with a
#    straight-through backward, and train the digits network with $k = 1, 2, 4$.
#    How quickly does the accuracy approach the float network's?
# 4. Decorate `SigmoidFocalLossFunction.backward` with
#    `torch.autograd.function.once_differentiable` and run `gradgradcheck` on it. What
#    does the error say, and what would a loss need it for?
