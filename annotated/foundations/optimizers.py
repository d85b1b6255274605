r"""
---
title: SGD, RMSProp, Adam and AdamW
summary: >-
  The update rules of torch.optim written from their equations, with step decay and
  warm-up cosine schedules, matched step for step against PyTorch.
time: 8 s
expected:
  metric: "AdamW test accuracy"
  short: ["--rosenbrock-steps", "300", "--digits-steps", "80", "--warmup-steps", "5",
    "--device", "cpu"]
references:
  - key: polyak1964some
    authors: [Boris T. Polyak]
    title: Some methods of speeding up the convergence of iteration methods
    year: 1964
    venue: USSR Computational Mathematics and Mathematical Physics 4(5)
    url: https://doi.org/10.1016/0041-5553(64)90137-5
  - key: sutskever2013importance
    authors: [Ilya Sutskever, James Martens, George Dahl, Geoffrey Hinton]
    title: On the importance of initialization and momentum in deep learning
    year: 2013
    venue: ICML 2013, PMLR 28(3)
    url: https://proceedings.mlr.press/v28/sutskever13.html
  - key: tieleman2012lecture
    authors: [Tijmen Tieleman, Geoffrey Hinton]
    title: >-
      Lecture 6.5, rmsprop: Divide the gradient by a running average of its recent
      magnitude
    year: 2012
    venue: "COURSERA: Neural Networks for Machine Learning"
    url: https://www.cs.toronto.edu/~tijmen/csc321/slides/lecture_slides_lec6.pdf
  - key: graves2013generating
    authors: [Alex Graves]
    title: Generating Sequences With Recurrent Neural Networks
    year: 2013
    venue: arXiv preprint
    arxiv: "1308.0850"
  - key: kingma2015adam
    authors: [Diederik P. Kingma, Jimmy Ba]
    title: "Adam: A Method for Stochastic Optimization"
    year: 2015
    venue: ICLR 2015
    arxiv: "1412.6980"
  - key: reddi2018convergence
    authors: [Sashank J. Reddi, Satyen Kale, Sanjiv Kumar]
    title: On the Convergence of Adam and Beyond
    year: 2018
    venue: ICLR 2018
    arxiv: "1904.09237"
  - key: loshchilov2019decoupled
    authors: [Ilya Loshchilov, Frank Hutter]
    title: Decoupled Weight Decay Regularization
    year: 2019
    venue: ICLR 2019
    arxiv: "1711.05101"
  - key: loshchilov2017sgdr
    authors: [Ilya Loshchilov, Frank Hutter]
    title: "SGDR: Stochastic Gradient Descent with Warm Restarts"
    year: 2017
    venue: ICLR 2017
    arxiv: "1608.03983"
  - key: goyal2017accurate
    authors:
      - Priya Goyal
      - Piotr Dollár
      - Ross Girshick
      - Pieter Noordhuis
      - Lukasz Wesolowski
      - Aapo Kyrola
      - Andrew Tulloch
      - Yangqing Jia
      - Kaiming He
    title: "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour"
    year: 2017
    venue: arXiv preprint
    arxiv: "1706.02677"
  - key: rosenbrock1960automatic
    authors: [H. H. Rosenbrock]
    title: >-
      An Automatic Method for Finding the Greatest or Least Value of a Function
    year: 1960
    venue: The Computer Journal 3(3)
    url: https://doi.org/10.1093/comjnl/3.3.175
worksheet:
  - region: SGD.step
    hint: >-
      For every parameter with a gradient (through real_view): add the L2 term with
      l2_gradient; with momentum, start the buffer as a copy of the first gradient and
      then keep buffer = momentum * buffer + grad, stepping along the buffer (or along
      grad + momentum * buffer for Nesterov); finally weight -= lr * step.
    tests: [test_sgd_matches_torch_sgd, test_parameters_without_gradient_are_left_alone]
  - region: adam_update
    hint: >-
      On the first call create step 0 and zero moments (and the AMSGrad maximum); then
      count the step, update m = beta1 m + (1 - beta1) g and v = beta2 v + (1 - beta2)
      g^2 in place (AMSGrad keeps the running maximum of v), and move the parameter by
      -lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps).
    tests:
      - test_adam_matches_torch_adam
      - test_adam_first_step_moves_every_coordinate_by_lr
  - region: AdamW.apply_weight_decay
    hint: >-
      Shrink the weight in place by the factor 1 - lr * weight_decay and hand the raw
      gradient on to the Adam step.
    tests: [test_adamw_matches_torch_adamw]
---

[Backpropagation](backprop_by_hand.md) gives the gradient $g = \nabla_\theta L$; an
*optimizer* decides what to do with it. The simplest answer,
$\theta \leftarrow \theta - \eta g$, is stochastic gradient descent. Everything else in
this chapter either fixes its main weakness or repairs what that fix breaks:

- **One step size for every direction.** A loss surface is often a narrow valley: steep
  across, shallow along. A learning rate $\eta$ small enough not to bounce off the steep
  walls crawls along the floor. *Momentum* [@polyak1964some] averages successive
  gradients so the bouncing cancels and the steady drift along the valley adds up.
  *RMSProp* [@tieleman2012lecture] divides each coordinate by a running estimate of its
  own gradient scale, so steep and shallow coordinates move at similar speeds. *Adam*
  [@kingma2015adam] does both, and corrects the bias of averages that start at zero.
- **Weight decay means different things to different rules.** Adding $\lambda\theta$ to
  the gradient is the same as shrinking the weights when the rule is plain SGD, but not
  once the gradient is divided by a per-coordinate scale. *AdamW*
  [@loshchilov2019decoupled] takes the decay out of the gradient and applies it to the
  weights directly.

Each rule here subclasses `torch.optim.Optimizer`, which already keeps the parameter
groups (`optimizer.param_groups`, a list of dicts holding the parameters and their
hyperparameters) and a per-parameter `optimizer.state` dict. All we write is `step()`:
the equation, then the few tensor operations that carry it out in place. The state
entries use PyTorch's names (`momentum_buffer`, `exp_avg`, ...) so that the test can
compare our buffers with `torch.optim`'s, and it does: each optimizer is run beside its
`torch.optim` twin for 100 training steps in float64, and for 50 steps on a complex
least-squares problem, and must agree to ten significant digits at every step.

The learning rate itself usually changes during training. The last part writes two
schedules, step decay and a linear warm-up followed by a cosine decay, as plain
functions of the step, and checks them against `torch.optim.lr_scheduler`.

The demo races the optimizers down the Rosenbrock valley [@rosenbrock1960automatic], the
textbook narrow valley, and then trains the same small network on handwritten digits
with each of them.
"""

import argparse
import math
import numbers
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from annotated.data import digits, integer, torch_device
from annotated.figures import figure, save

# ## L2 weight decay
#
# SGD, RMSProp and Adam all take weight decay the classical way, as the gradient of the
# penalty $\tfrac{\lambda}{2}\lVert\theta\rVert^2$ added to the loss's gradient:
#
# $$
# g_t = \nabla_\theta L(\theta_{t-1}) + \lambda\,\theta_{t-1}
# $$
#
# The sum is a new tensor: `param.grad` itself must keep the raw gradient, because the
# caller may read it after the step (to log its norm, or to clip and step again), and
# the test checks that no optimizer here writes to it.


def l2_gradient(
    param: torch.Tensor, grad: torch.Tensor, weight_decay: float
) -> torch.Tensor:
    r"""$g + \lambda\theta$ as a new tensor, so that `param.grad` keeps the raw
    gradient.

    With $\lambda = 0$ it returns `grad` itself, saving a copy; the update rules never
    write to it.
    """
    if weight_decay == 0.0:
        return grad
    return grad.add(param, alpha=weight_decay)


# ## Complex parameters
#
# A complex parameter $z = x + iy$ is two real parameters, and `torch.optim` updates it
# as such: it views the tensor as real pairs, `torch.view_as_real(z)` of shape
# `[..., 2]`, and runs the real update on that view. For SGD nothing changes, because
# its update is linear and complex arithmetic with real coefficients acts on the two
# parts separately anyway. For the adaptive rules it matters: RMSProp's $g^2$ of a
# complex $g$ is the complex square, not the squared magnitude of each part, and Adam's
# $\sqrt{v}$ would take complex roots. On the real view, $g^2$ is squared coordinate by
# coordinate, the real part and the imaginary part each get their own step size, and the
# result matches PyTorch's. The state is kept in the same real view.


def real_view(tensor: torch.Tensor) -> torch.Tensor:
    """A complex tensor as real `[..., 2]` pairs (a view: writing to it writes the
    tensor); a real tensor as itself."""
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


# ## Checking hyperparameters
#
# A negative learning rate turns descent into ascent, a momentum of 1 never forgets and
# a momentum above 1 blows up, and $\epsilon = 0$ divides by zero on the first
# coordinate whose gradient is zero. None of these fails loudly on its own: the loss
# just drifts. So every optimizer and schedule checks its arguments when it is called
# and names the one that is wrong. One checker does it all: `interval` is the range the
# value must lie in, written as in mathematics, so that the call reads like the
# constraint and the error message quotes it. The checks are stricter than
# `torch.optim`'s, which accepts $\epsilon = 0$ and any momentum $\ge 0$.


def check_number(
    owner: str, name: str, value: object, interval: str, integer: bool = False
) -> float:
    """Return `value` as a float (an int if `integer`), or raise naming `owner`'s
    `name`.

    `interval` is like `"[0, 1)"` or `"(0, inf)"`: a bracket includes its end, a
    parenthesis excludes it. A bool is not a number here (`True` is an int in Python),
    and NaN lies in no interval.
    """
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = "an int" if integer else "a real number"
        raise TypeError(
            f"{owner}: {name} must be {expected}, got {type(value).__name__}"
        )
    low, high = (float(end) for end in interval[1:-1].split(","))
    above = value >= low if interval[0] == "[" else value > low
    below = value <= high if interval[-1] == "]" else value < high
    if not (above and below):
        raise ValueError(f"{owner}: {name} must lie in {interval}, got {value!r}")
    return int(value) if integer else float(value)


def check_flag(owner: str, name: str, value: object) -> bool:
    """`nesterov=1` or `amsgrad="no"` would be truthy or falsy by accident: only a bool
    is a flag."""
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be True or False, got {value!r}")
    return value


# ## SGD with momentum
#
# Plain SGD steps against the gradient: $\theta_t = \theta_{t-1} - \eta\, g_t$.
# *Momentum* [@polyak1964some] keeps a running sum $b$ of past gradients, each older one
# discounted by $\mu$, and steps along the sum. Along a direction where the gradient
# keeps its sign the sum grows towards $g / (1 - \mu)$, ten times the gradient for
# $\mu = 0.9$; across a valley, where the sign alternates, the terms cancel:
#
# $$
# \begin{aligned}
# b_1 &= g_1, \qquad b_t = \mu\, b_{t-1} + g_t, \\
# \theta_t &= \theta_{t-1} - \eta\, b_t
# \end{aligned}
# $$
#
# PyTorch starts the buffer at the first gradient. Here that is the same as starting it
# at zero and applying the recursion, because $\mu \cdot 0 + g_1 = g_1$; the special
# case exists in `torch.optim.SGD` for its `dampening` option (which scales the new
# gradient by $1 - \text{dampening}$ after the first step). We fix dampening at its
# default 0 and do not expose it.
#
# *Nesterov momentum* evaluates the gradient where momentum is about to carry the
# weights rather than where they are. Written in the shifted variable
# $\tilde\theta = \theta - \eta\mu b$ [@sutskever2013importance], which is what the
# optimizer stores, this needs no second gradient: the step takes the current gradient
# plus the momentum once more,
#
# $$
# \theta_t = \theta_{t-1} - \eta\,(g_t + \mu\, b_t).
# $$
#
# Without momentum, Nesterov is meaningless, so asking for it is an error rather than a
# silent no-op.


class SGD(torch.optim.Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight
    decay.

    Matches
    `torch.optim.SGD(params, lr, momentum, dampening=0, weight_decay, nesterov)`.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ):
        defaults = {
            "lr": check_number("SGD", "lr", lr, "[0, inf)"),
            "momentum": check_number("SGD", "momentum", momentum, "[0, 1)"),
            "nesterov": check_flag("SGD", "nesterov", nesterov),
            "weight_decay": check_number(
                "SGD", "weight_decay", weight_decay, "[0, inf)"
            ),
        }
        if nesterov and momentum == 0.0:
            raise ValueError("SGD: nesterov=True needs momentum > 0, got momentum=0")
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self) -> None:
        """Update every parameter that has a gradient, in place."""
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                weight, grad = real_view(param), real_view(param.grad)
                grad = l2_gradient(weight, grad, group["weight_decay"])  # g_t = ∇L + λθ
                if momentum > 0.0:
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = grad.clone()  # b_1 = g_1
                    else:
                        buffer = state["momentum_buffer"]
                        buffer.mul_(momentum).add_(grad)  # b_t = μ b_{t-1} + g_t
                    buffer = state["momentum_buffer"]
                    grad = (
                        grad.add(buffer, alpha=momentum)
                        if group["nesterov"]
                        else buffer
                    )
                weight.add_(grad, alpha=-lr)


# ## RMSProp
#
# RMSProp [@tieleman2012lecture] gives each coordinate its own step size. It keeps an
# exponential moving average of the squared gradient, a running estimate of
# $\mathbb{E}[g^2]$ per coordinate, and divides the gradient by its square root:
#
# $$
# \begin{aligned}
# v_t &= \alpha\, v_{t-1} + (1 - \alpha)\, g_t^2, \\
# \theta_t &= \theta_{t-1} - \eta\, \frac{g_t}{\sqrt{v_t} + \epsilon}
# \end{aligned}
# $$
#
# A coordinate whose gradients are large gets a proportionally smaller step, so every
# coordinate moves by roughly $\eta$ per step whatever its scale. $\epsilon$ sits
# *outside* the square root, as in PyTorch (some papers put it inside; the difference is
# only visible when $v$ is near $\epsilon^2$).
#
# The *centered* variant [@graves2013generating] subtracts the square of the running
# mean $\bar g$, so the denominator estimates the gradient's standard deviation rather
# than its root mean square:
#
# $$
# \begin{aligned}
# \bar g_t &= \alpha\, \bar g_{t-1} + (1 - \alpha)\, g_t, \\
# d_t &= \sqrt{v_t - \bar g_t^2} + \epsilon
# \end{aligned}
# $$
#
# $v_t - \bar g_t^2$ cannot go negative: both averages start at zero, so their weights
# $w_i$ sum to $1 - \alpha^t \le 1$, and by Cauchy–Schwarz
# $(\sum_i w_i g_i)^2 \le (\sum_i w_i)(\sum_i w_i g_i^2) \le v_t$.
#
# With momentum $\mu > 0$ the *scaled* gradient is what accumulates:
#
# $$
# \begin{aligned}
# b_t &= \mu\, b_{t-1} + g_t / d_t, \\
# \theta_t &= \theta_{t-1} - \eta\, b_t
# \end{aligned}
# $$
#
# Because $v$ starts at zero, the first denominator is
# $\sqrt{1-\alpha}\,\lvert g_1\rvert$, and the first step is $1/\sqrt{1 - \alpha} = 10$
# times larger than the steady state for $\alpha = 0.99$. RMSProp lives with this; Adam
# corrects it.


class RMSProp(torch.optim.Optimizer):
    """RMSProp, plain or centered, with optional momentum and L2 weight decay.

    Matches
    `torch.optim.RMSprop(params, lr, alpha, eps, weight_decay, momentum, centered)`.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
    ):
        defaults = {
            "lr": check_number("RMSProp", "lr", lr, "[0, inf)"),
            "alpha": check_number("RMSProp", "alpha", alpha, "[0, 1)"),
            "eps": check_number("RMSProp", "eps", eps, "(0, inf)"),
            "weight_decay": check_number(
                "RMSProp", "weight_decay", weight_decay, "[0, inf)"
            ),
            "momentum": check_number("RMSProp", "momentum", momentum, "[0, 1)"),
            "centered": check_flag("RMSProp", "centered", centered),
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self) -> None:
        """Update every parameter that has a gradient, in place."""
        for group in self.param_groups:
            lr, alpha, eps, momentum = (
                group["lr"],
                group["alpha"],
                group["eps"],
                group["momentum"],
            )
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                weight, grad = real_view(param), real_view(param.grad)
                if not state:
                    state["square_avg"] = torch.zeros_like(weight)  # v_0 = 0
                    if group["centered"]:
                        state["grad_avg"] = torch.zeros_like(weight)  # ḡ_0 = 0
                    if momentum > 0.0:
                        state["momentum_buffer"] = torch.zeros_like(weight)  # b_0 = 0
                grad = l2_gradient(weight, grad, group["weight_decay"])  # g_t = ∇L + λθ
                square_avg = state["square_avg"]
                square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)  # v_t
                if group["centered"]:
                    # The average $\alpha\bar g + (1 - \alpha) g$ equals
                    # $\bar g + (1 - \alpha)(g - \bar g)$: a step from $\bar g$ towards
                    # $g$, which is what `lerp_` computes.
                    # The two forms round differently, and here that matters:
                    # $v - \bar g^2$ cancels when the gradient barely varies, magnifying
                    # the last bit of $\bar g$. We round as PyTorch does so that the
                    # test can hold us to ten digits.
                    grad_avg = state["grad_avg"].lerp_(grad, 1 - alpha)
                    variance = square_avg.addcmul(grad_avg, grad_avg, value=-1)
                    denominator = variance.sqrt_().add_(eps)  # d_t
                else:
                    denominator = square_avg.sqrt().add_(eps)  # d_t
                if momentum > 0.0:
                    buffer = state["momentum_buffer"]
                    buffer.mul_(momentum).addcdiv_(grad, denominator)  # b_t
                    weight.add_(buffer, alpha=-lr)
                else:
                    weight.addcdiv_(grad, denominator, value=-lr)


# ## Adam
#
# Adam [@kingma2015adam] is momentum and RMSProp together. It keeps two exponential
# moving averages, of the gradient (the first moment) and of its square (the second),
# with separate decay rates $\beta_1, \beta_2$:
#
# $$
# \begin{aligned}
# m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, \\
# v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, g_t^2
# \end{aligned}
# $$
#
# Both start at zero, so early on they are biased towards zero. Unrolling the recursion
# shows by how much: if the gradients had a constant mean $\mathbb{E}[g]$,
#
# $$
# \begin{aligned}
# \mathbb{E}[m_t]
#   &= (1 - \beta_1) \sum_{i=1}^{t} \beta_1^{t-i}\, \mathbb{E}[g] \\
#   &= (1 - \beta_1^t)\, \mathbb{E}[g],
# \end{aligned}
# $$
#
# a geometric sum that is $1 - \beta_1 = 0.1$ of the truth at $t = 1$. Dividing by that
# factor removes the bias exactly, and the same for $v$:
#
# $$
# \begin{aligned}
# \hat m_t &= \frac{m_t}{1 - \beta_1^t}, \qquad \hat v_t = \frac{v_t}{1 - \beta_2^t}, \\
# \theta_t &= \theta_{t-1} - \eta\, \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}
# \end{aligned}
# $$
#
# At $t = 1$ this gives $\hat m_1 / \sqrt{\hat v_1} = g_1 / \lvert g_1\rvert$: the first
# step moves every coordinate by $\eta$, whatever its gradient's scale. That is the
# behaviour to keep in mind: $\eta$ is close to the distance each weight moves per step.
#
# *AMSGrad* [@reddi2018convergence] divides by the largest $v_t$ seen so far instead of
# the current one, so a coordinate's denominator never decreases. PyTorch keeps the
# maximum of the uncorrected $v$ and applies the current correction to it:
#
# $$
# \begin{aligned}
# v^{\max}_t &= \max(v^{\max}_{t-1}, v_t), \\
# \hat v_t &= v^{\max}_t / (1 - \beta_2^t)
# \end{aligned}
# $$
#
# Adam and AdamW differ only in where weight decay goes, so the moment updates and the
# step live in one function that both call.


def adam_update(
    param: torch.Tensor,
    grad: torch.Tensor,
    state: dict,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    amsgrad: bool,
) -> None:
    """Apply one bias-corrected Adam step to `param` in place, keeping the moments in
    `state`."""
    beta1, beta2 = betas
    if not state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(param)  # m_0 = 0
        state["exp_avg_sq"] = torch.zeros_like(param)  # v_0 = 0
        if amsgrad:
            state["max_exp_avg_sq"] = torch.zeros_like(param)
    state["step"] += 1
    step = state["step"]
    exp_avg = state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)  # m_t
    exp_avg_sq = state["exp_avg_sq"].mul_(beta2)
    exp_avg_sq.addcmul_(grad, grad, value=1 - beta2)  # v_t
    if amsgrad:
        exp_avg_sq = torch.maximum(
            state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"]
        )
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    # $\hat m_t$ is never formed: its correction $1 / (1 - \beta_1^t)$ is a scalar that
    # folds into the step size. $\sqrt{\hat v_t}$ is $\sqrt{v_t}$ divided by the scalar
    # $\sqrt{1 - \beta_2^t}$, and $\epsilon$ is added after the correction, exactly as
    # in the equation.
    root_v_hat = exp_avg_sq.sqrt() / math.sqrt(bias_correction2)  # √v̂_t
    denominator = root_v_hat.add_(eps)  # √v̂_t + ε
    param.addcdiv_(exp_avg, denominator, value=-lr / bias_correction1)


# Adam's own weight decay is the L2 kind, `l2_gradient` as in SGD. It lives in a method
# of its own, `apply_weight_decay`, because that method is the one thing AdamW changes.


class Adam(torch.optim.Optimizer):
    """Adam with bias correction, optional AMSGrad and L2 weight decay added to the
    gradient.

    Matches `torch.optim.Adam(params, lr, betas, eps, weight_decay, amsgrad)`.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ):
        owner = type(self).__name__  # "Adam", or "AdamW" for the subclass below
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(
                f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}"
            )
        defaults = {
            "lr": check_number(owner, "lr", lr, "[0, inf)"),
            "betas": (
                check_number(owner, "betas[0]", betas[0], "[0, 1)"),
                check_number(owner, "betas[1]", betas[1], "[0, 1)"),
            ),
            "eps": check_number(owner, "eps", eps, "(0, inf)"),
            "weight_decay": check_number(
                owner, "weight_decay", weight_decay, "[0, inf)"
            ),
            "amsgrad": check_flag(owner, "amsgrad", amsgrad),
        }
        super().__init__(params, defaults)

    def apply_weight_decay(
        self, weight: torch.Tensor, grad: torch.Tensor, group: dict
    ) -> torch.Tensor:
        r"""The gradient the Adam step follows: $g_t = \nabla L + \lambda\theta$."""
        return l2_gradient(weight, grad, group["weight_decay"])

    @torch.no_grad()
    def step(self) -> None:
        """Update every parameter that has a gradient, in place."""
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                weight, grad = real_view(param), real_view(param.grad)
                adam_update(
                    weight,
                    self.apply_weight_decay(weight, grad, group),
                    self.state[param],
                    group["lr"],
                    group["betas"],
                    group["eps"],
                    group["amsgrad"],
                )


# ## AdamW: decoupled weight decay
#
# Feed Adam the L2 gradient $g_t + \lambda\theta$ and the decay term is divided by
# $\sqrt{\hat v_t}$ like everything else: weights with large gradients are barely
# decayed, weights with small ones are decayed hard. Loshchilov and Hutter showed this
# is why L2 regularisation helps Adam far less than SGD, and proposed shrinking the
# weights directly, outside the adaptive step [@loshchilov2019decoupled]:
#
# $$
# \begin{aligned}
# \theta &\leftarrow (1 - \eta\lambda)\, \theta, \\
# &\text{then the Adam step on } g_t = \nabla_\theta L
# \end{aligned}
# $$
#
# With plain SGD the two forms coincide:
# $\theta - \eta(g + \lambda\theta) = (1 - \eta\lambda)\theta - \eta g$. The decay is
# multiplied by $\eta$, so a learning-rate schedule scales it too, as in PyTorch. So
# `AdamW` is `Adam` with `apply_weight_decay` replaced, and one other difference: its
# default. `torch.optim.AdamW` decays by $\lambda = 0.01$ unless told otherwise.


class AdamW(Adam):
    r"""Adam with decoupled weight decay: shrink the weights by $1 - \eta\lambda$, then
    take the Adam step.

    Matches `torch.optim.AdamW(params, lr, betas, eps, weight_decay, amsgrad)`.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)

    def apply_weight_decay(
        self, weight: torch.Tensor, grad: torch.Tensor, group: dict
    ) -> torch.Tensor:
        r"""Shrink `weight` in place, $\theta \leftarrow (1 - \eta\lambda)\theta$; the
        step follows the raw gradient."""
        weight.mul_(1 - group["lr"] * group["weight_decay"])
        return grad


# ## Learning-rate schedules
#
# A schedule multiplies the base learning rate $\eta_0$ by a factor that depends on the
# step $t$. Written as a plain function of $t$, it plugs into
# `torch.optim.lr_scheduler.LambdaLR`, which sets `group["lr"] = base_lr * factor(t)`
# after every `scheduler.step()`, and works with any optimizer above. Each checks all of
# its arguments, the step included: a negative step would extrapolate the curve
# backwards, to a rate above the base rate or below zero.
#
# **Step decay** multiplies the rate by $\gamma$ every $s$ steps:
#
# $$
# \eta_t = \eta_0\, \gamma^{\lfloor t / s \rfloor}
# $$


def step_decay(step: int, step_size: int, gamma: float = 0.1) -> float:
    r"""The factor $\gamma^{\lfloor t/s \rfloor}$: `lr_scheduler.StepLR`'s rate divided
    by its base rate."""
    step = check_number("step_decay", "step", step, "[0, inf)", integer=True)
    step_size = check_number(
        "step_decay", "step_size", step_size, "[1, inf)", integer=True
    )
    gamma = check_number("step_decay", "gamma", gamma, "(0, 1]")
    return gamma ** (step // step_size)


# **Warm-up then cosine.** Adam's first steps rest on second-moment estimates built from
# a handful of gradients, and a large network's early gradients are large; a short
# linear ramp from $f_0 \eta_0$ up to $\eta_0$ over $W$ steps keeps those first updates
# small [@goyal2017accurate]. After it, the rate follows half a cosine from $\eta_0$
# down to a floor $f_{\min}\eta_0$ at step $T$, falling slowly at first, fastest in the
# middle, and gently onto the floor (the schedule of SGDR [@loshchilov2017sgdr], without
# its restarts). With the fraction of the decay done,
# $p = \min\bigl(1, (t - W) / (T - W)\bigr)$:
#
# $$
# f(t) = \begin{cases}
#   f_0 + (1 - f_0)\, t / W & t < W \\
#   f_{\min} + (1 - f_{\min})\, c(p) & t \ge W
# \end{cases}
# $$
#
# where $c(p) = \bigl(1 + \cos(\pi p)\bigr) / 2$ falls from 1 to 0.
#
# PyTorch builds the same curve from `LinearLR(start_factor=f0, total_iters=W)` followed
# by `CosineAnnealingLR(T_max=T - W, eta_min=f_min * base_lr)` inside
# `SequentialLR(milestones=[W])`. Those schedulers update the rate *recursively*,
# multiplying the previous rate by a ratio of consecutive factors, so after $T$ steps
# they differ from this closed form by a few units of rounding (about $10^{-15}$
# relative); the test allows $10^{-12}$. One real difference: past $T$ PyTorch's cosine
# climbs back up, while here the rate stays on the floor.


def warmup_cosine(
    step: int,
    warmup_steps: int,
    total_steps: int,
    start_factor: float = 0.01,
    min_factor: float = 0.0,
) -> float:
    """The factor $f(t)$: a linear warm-up over `warmup_steps`, then a cosine decay
    ending at `total_steps`."""
    owner = "warmup_cosine"
    step = check_number(owner, "step", step, "[0, inf)", integer=True)
    warmup_steps = check_number(
        owner, "warmup_steps", warmup_steps, "[0, inf)", integer=True
    )
    total_steps = check_number(
        owner, "total_steps", total_steps, "[1, inf)", integer=True
    )
    if not warmup_steps < total_steps:
        raise ValueError(
            f"{owner}: warmup_steps must be less than total_steps, "
            f"got warmup_steps={warmup_steps}, total_steps={total_steps}"
        )
    start_factor = check_number(owner, "start_factor", start_factor, "(0, 1]")
    min_factor = check_number(owner, "min_factor", min_factor, "[0, 1]")
    if step < warmup_steps:
        return start_factor + (1.0 - start_factor) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))  # p
    return min_factor + (1.0 - min_factor) * (1.0 + math.cos(math.pi * progress)) / 2.0


# ## The example
#
# One AdamW step on a `[32, 64]` weight, drawn as the flow of tensors through the
# update. The diagram is the equations above in the order `AdamW.step` runs them.


def example():
    """A small example: `fn(*args)` takes one AdamW step and returns the weight's
    optimizer state."""
    torch.manual_seed(0)
    weight = nn.Parameter(torch.randn(32, 64))
    weight.grad = torch.randn(32, 64)
    optimizer = AdamW([weight], lr=1e-3, weight_decay=1e-2)

    def adamw_step(optimizer: AdamW) -> dict:
        optimizer.step()
        return optimizer.state[weight]

    return adamw_step, (optimizer,)


def dataflow(state: dict) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """The steps of one AdamW update, with the shapes that pass between them."""
    shape = str(list(state["exp_avg"].shape))  # [32, 64]
    nodes = [
        ("grad", f"gradient g {shape}"),
        ("param", f"weight θ {shape}"),
        ("step", f"step count t = {state['step']}"),
        ("decay", "θ ← (1 − ηλ) θ"),
        ("first", "m ← β₁ m + (1 − β₁) g"),
        ("second", "v ← β₂ v + (1 − β₂) g²"),
        ("correct1", "m̂ = m / (1 − β₁ᵗ)"),
        ("correct2", "v̂ = v / (1 − β₂ᵗ)"),
        ("update", "θ ← θ − η m̂ / (√v̂ + ε)"),
        ("new_param", f"new weight θ {shape}"),
    ]
    edges = [
        ("param", "decay", shape),
        ("grad", "first", shape),
        ("grad", "second", shape),
        ("first", "correct1", f"m {shape}"),
        ("second", "correct2", f"v {shape}"),
        ("step", "correct1", "t"),
        ("step", "correct2", "t"),
        ("decay", "update", f"θ {shape}"),
        ("correct1", "update", f"m̂ {shape}"),
        ("correct2", "update", f"v̂ {shape}"),
        ("update", "new_param", shape),
    ]
    return nodes, edges


# ## Demo, part 1: the Rosenbrock valley
#
# $$
# f(x, y) = (1 - x)^2 + 100\,(y - x^2)^2
# $$
#
# has its minimum $f = 0$ at $(1, 1)$, at the end of a curved, flat-bottomed valley
# along $y = x^2$ whose walls are far steeper than its floor. Plain SGD must keep $\eta$
# below $2 / \lambda_{\max}$ of the Hessian to avoid bouncing off the walls; at the
# start used here, $(-1.5, 2)$, the Hessian is
# $\begin{pmatrix} 1902 & 600 \\ 600 & 200 \end{pmatrix}$ with
# $\lambda_{\max} \approx 2100$, so $\eta \approx 10^{-3}$ is the limit, and at that
# rate SGD crawls along the floor. Momentum keeps the same $\eta$ but accumulates the
# floor's small, consistent gradient; the adaptive methods rescale each coordinate and
# take rates ten to fifty times larger. Every learning rate below was tuned by hand to
# be roughly the largest that behaves.
#
# The figure shows all of them funnelled onto the valley floor within a few steps, and
# the race decided along it. Nesterov momentum bounces off the walls for its first few
# steps ($f$ jumps from 12.5 to 281) and then runs down the floor fastest, since its
# buffer adds up many small, same-signed gradients. Plain SGD, at the same $\eta$, is
# still far from the minimum after 1000 steps. RMSProp, with no momentum buffer to damp
# it, periodically overshoots across the narrow valley: the spikes in $f$. Adam and
# AdamW follow one path until AdamW's decay, which pulls towards the origin and so away
# from $(1, 1)$, holds it back.

ROSENBROCK_START = (-1.5, 2.0)

ROSENBROCK_OPTIMIZERS = {
    "SGD": lambda params: SGD(params, lr=1e-3),
    "SGD, Nesterov": lambda params: SGD(params, lr=1e-3, momentum=0.9, nesterov=True),
    "RMSProp": lambda params: RMSProp(params, lr=1e-2),
    "Adam": lambda params: Adam(params, lr=5e-2),
    "AdamW": lambda params: AdamW(params, lr=5e-2, weight_decay=1e-2),
}


def rosenbrock(point: torch.Tensor) -> torch.Tensor:
    """$f(x, y) = (1 - x)^2 + 100 (y - x^2)^2$ for `point = [x, y]`."""
    x, y = point[0], point[1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def descend_rosenbrock(make_optimizer, steps: int, device: str) -> np.ndarray:
    """Run one optimizer from `ROSENBROCK_START` and return the path it took,
    `[steps + 1, 2]`."""
    point = nn.Parameter(
        torch.tensor(ROSENBROCK_START, dtype=torch.float64, device=device)
    )
    optimizer = make_optimizer([point])
    path = [point.detach().clone()]
    for _ in range(steps):
        optimizer.zero_grad()
        rosenbrock(point).backward()
        optimizer.step()
        path.append(point.detach().clone())
    return torch.stack(path).cpu().numpy()  # [steps + 1, 2]


def plot_rosenbrock(paths: dict[str, np.ndarray], out: Path) -> None:
    r"""Left: contours of $\log(1 + f)$ with each optimizer's path. Right: $f$ along
    each path, per step."""
    xs, ys = np.meshgrid(np.linspace(-2.0, 2.0, 300), np.linspace(-1.0, 3.0, 300))
    values = (1 - xs) ** 2 + 100 * (ys - xs**2) ** 2  # [300, 300]
    fig, (map_axes, value_axes) = figure(panels=2)
    map_axes.contour(xs, ys, np.log1p(values), levels=30, cmap="Greys", linewidths=0.6)
    line_styles = ["-", "--", "-.", ":", (0, (5, 1, 1, 1))]
    for (name, path), style in zip(paths.items(), line_styles):
        (line,) = map_axes.plot(
            path[:, 0], path[:, 1], linestyle=style, linewidth=1.5, label=name
        )
        map_axes.plot(
            path[-1, 0], path[-1, 1], "o", color=line.get_color(), markersize=5
        )
        path_values = (1 - path[:, 0]) ** 2 + 100 * (
            path[:, 1] - path[:, 0] ** 2
        ) ** 2  # [steps + 1]
        value_axes.plot(
            path_values, linestyle=style, color=line.get_color(), label=name
        )
    map_axes.plot(*ROSENBROCK_START, "ks")
    map_axes.plot(1.0, 1.0, "k*", markersize=12)
    map_axes.set(
        xlim=(-2, 2),
        ylim=(-1, 3),
        xlabel="$x$",
        ylabel="$y$",
        title="paths from the square to the minimum (star)",
    )
    map_axes.legend(loc="upper right")
    value_axes.set(
        yscale="log",
        xlabel="step $k$",
        ylabel="$f(x_k, y_k)$",
        title="Rosenbrock value along each path",
    )
    save(
        fig,
        out / "rosenbrock_paths.png",
        caption=f"Five optimizers started at {ROSENBROCK_START} on the Rosenbrock "
        "function. Left: their paths over contours of log(1 + f), each ending at a "
        "dot; all fall onto the curved valley floor within a few steps and the race is "
        "decided along it. Right: f along each path, on a log scale, with RMSProp's "
        "overshoots across the valley showing as spikes.",
    )


# ## Demo, part 2: a digits classifier
#
# The same 64→64→10 network, from the same initial weights and on the same mini-batches,
# trained once with each optimizer under the warm-up-then-cosine schedule. Plain SGD's
# learning rate is thirty times Adam's, which is typical: dividing by $\sqrt{\hat v}$
# makes Adam's $\eta$ a distance per step, while SGD's is multiplied by the gradient,
# which here is small.

DIGITS_OPTIMIZERS = {
    "SGD": lambda params: SGD(params, lr=0.3),
    "SGD, Nesterov": lambda params: SGD(params, lr=0.05, momentum=0.9, nesterov=True),
    "RMSProp": lambda params: RMSProp(params, lr=3e-3),
    "Adam": lambda params: Adam(params, lr=1e-2),
    "AdamW": lambda params: AdamW(params, lr=1e-2, weight_decay=0.05),
}


def train_digits(
    make_optimizer,
    data: tuple,
    steps: int,
    batch_size: int,
    warmup_steps: int,
    seed: int,
    device: str,
) -> tuple[list[float], float, float]:
    """Train a fresh network with one optimizer; return the training losses, test loss
    and test accuracy."""
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10)).to(device)
    optimizer = make_optimizer(model.parameters())
    schedule = partial(warmup_cosine, warmup_steps=warmup_steps, total_steps=steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    batches = torch.Generator().manual_seed(seed)  # one batch order for every optimizer
    losses = []
    for _ in range(steps):
        index = torch.randint(len(x_train), (batch_size,), generator=batches).to(device)
        logits = model(x_train[index])  # [batch, 64] → [batch, 10]
        loss = F.cross_entropy(logits, y_train[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    with torch.no_grad():
        logits = model(x_test)  # [n_test, 10]
        test_loss = F.cross_entropy(logits, y_test).item()
        test_accuracy = (logits.argmax(dim=1) == y_test).double().mean().item()
    return losses, test_loss, test_accuracy


def plot_losses(losses: dict[str, list[float]], out: Path) -> None:
    """Training loss per step for each optimizer, smoothed over 20 steps, on a log
    scale."""
    fig, axes = figure()
    window = np.ones(20) / 20
    for name, curve in losses.items():
        smoothed = (
            np.convolve(curve, window, mode="valid")
            if len(curve) >= len(window)
            else np.array(curve)
        )
        axes.plot(
            np.arange(len(smoothed)) + len(curve) - len(smoothed), smoothed, label=name
        )
    axes.set(
        yscale="log",
        xlabel="step $k$",
        ylabel="training cross-entropy (20-step mean)",
        title="Digits, 64→64→10 MLP, warm-up + cosine",
    )
    axes.legend()
    save(
        fig,
        out / "digits_loss.png",
        caption="Training loss of the same digits network, from the same weights and "
        "on the same mini-batches, under each optimizer with a linear warm-up and a "
        "cosine decay of the learning rate; each curve is a 20-step moving average on "
        "a log scale.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Race the optimizers down Rosenbrock, train the digits network with each, save
    both figures."""
    parser = argparse.ArgumentParser(
        description="SGD, RMSProp, Adam and AdamW on Rosenbrock and on digits.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--rosenbrock-steps",
        type=integer(at_least=1),
        default=1000,
        help="steps down the Rosenbrock valley",
    )
    parser.add_argument(
        "--digits-steps",
        type=integer(at_least=1),
        default=400,
        help="training steps on the digits",
    )
    parser.add_argument(
        "--batch-size",
        type=integer(at_least=1),
        default=64,
        help="digits mini-batch size",
    )
    parser.add_argument(
        "--warmup-steps",
        type=integer(at_least=0),
        default=20,
        help="linear warm-up steps of the digits schedule",
    )
    parser.add_argument(
        "--seed",
        type=integer(at_least=0),
        default=0,
        help="random seed for the weights and the batch order",
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to run on",
    )
    parser.add_argument(
        "--out", default="out/optimizers", help="folder for the figures"
    )
    args = parser.parse_args(argv)
    if args.warmup_steps >= args.digits_steps:
        parser.error(
            f"--warmup-steps must be below --digits-steps, got {args.warmup_steps}"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {}

    paths = {}
    for name, make_optimizer in tqdm(ROSENBROCK_OPTIMIZERS.items(), desc="rosenbrock"):
        paths[name] = descend_rosenbrock(
            make_optimizer, args.rosenbrock_steps, args.device
        )
    plot_rosenbrock(paths, out)
    print(f"Rosenbrock after {args.rosenbrock_steps} steps (minimum 0 at (1, 1)):")
    for name, path in paths.items():
        distance = float(np.hypot(*(path[-1] - 1.0)))
        print(
            f"  {name:14s} ends at ({path[-1, 0]:+.4f}, {path[-1, 1]:+.4f}), "
            f"distance to minimum {distance:.4f}"
        )
        metrics[f"{name} rosenbrock distance"] = distance

    x_train, y_train, x_test, y_test = digits(seed=args.seed)
    data = (
        torch.tensor(x_train, dtype=torch.float32, device=args.device),
        torch.tensor(y_train, device=args.device),
        torch.tensor(x_test, dtype=torch.float32, device=args.device),
        torch.tensor(y_test, device=args.device),
    )
    losses = {}
    print(f"Digits after {args.digits_steps} steps of batch {args.batch_size}:")
    for name, make_optimizer in tqdm(DIGITS_OPTIMIZERS.items(), desc="digits"):
        losses[name], test_loss, test_accuracy = train_digits(
            make_optimizer,
            data,
            args.digits_steps,
            args.batch_size,
            args.warmup_steps,
            args.seed,
            args.device,
        )
        tqdm.write(
            f"  {name:14s} test loss {test_loss:.4f}, test accuracy {test_accuracy:.4f}"
        )
        metrics[f"{name} test loss"] = test_loss
        metrics[f"{name} test accuracy"] = test_accuracy
    plot_losses(losses, out)
    return metrics


if __name__ == "__main__":
    main()

# ## Exercises
#
# 1. Find, by bisection, the largest learning rate at which `SGD(momentum=0.9)` still
#    reaches the Rosenbrock minimum, with and without `nesterov`. Then, for a quadratic
#    with curvature $\lambda$, write one step as a linear map of $(\theta, b)$ and
#    derive each variant's stability condition on $\eta\lambda$. Which variant tolerates
#    the larger rate, and does Rosenbrock agree?
# 2. Remove the bias correction from `adam_update` (set both corrections to 1) and train
#    the digits network with $\beta_2 = 0.999$. How large is the first step compared
#    with the corrected one, and why?
# 3. Train the digits network with `Adam(weight_decay=λ)` and with
#    `AdamW(weight_decay=λ)` for a few values of λ, and plot the final norm of the first
#    layer's weights against λ. Which weights does each shrink most?
# 4. Add `dampening` to `SGD` so that it still matches `torch.optim.SGD` when dampening
#    is not zero. Which of the two buffer initialisations (the first gradient, or zero)
#    does the test now tell apart?
