r"""
---
title: Vanishing gradients, measured
summary: >-
  The gradient norm at every step of a tanh RNN, an LSTM and a GRU, read from autograd
  and fitted: exponential decay at the predicted rate, Pascanu's Jacobian products
  rebuilt by hand, and gradient clipping rescuing a run that diverges without it.
time: 5 s
expected:
  metric: clipped_final_loss
  short: ["--length", "60", "--batch", "8", "--hidden", "16", "--steps", "80"]
references:
  - key: bengio1994learning
    authors: [Yoshua Bengio, Patrice Simard, Paolo Frasconi]
    title: Learning long-term dependencies with gradient descent is difficult
    year: 1994
    venue: IEEE Transactions on Neural Networks 5(2)
    url: https://doi.org/10.1109/72.279181
  - key: pascanu2013difficulty
    authors: [Razvan Pascanu, Tomas Mikolov, Yoshua Bengio]
    title: On the difficulty of training recurrent neural networks
    year: 2013
    venue: ICML 2013
    arxiv: "1211.5063"
  - key: hochreiter1997long
    authors: [Sepp Hochreiter, Jürgen Schmidhuber]
    title: Long Short-Term Memory
    year: 1997
    venue: Neural Computation 9(8)
    url: https://doi.org/10.1162/neco.1997.9.8.1735
  - key: gers2000learning
    authors: [Felix A. Gers, Jürgen Schmidhuber, Fred Cummins]
    title: "Learning to Forget: Continual Prediction with LSTM"
    year: 2000
    venue: Neural Computation 12(10)
    url: https://doi.org/10.1162/089976600300015015
  - key: jozefowicz2015empirical
    authors: [Rafal Jozefowicz, Wojciech Zaremba, Ilya Sutskever]
    title: An Empirical Exploration of Recurrent Network Architectures
    year: 2015
    venue: ICML 2015
    url: https://proceedings.mlr.press/v37/jozefowicz15.html
  - key: cho2014learning
    authors:
      - Kyunghyun Cho
      - Bart van Merriënboer
      - Caglar Gulcehre
      - Dzmitry Bahdanau
      - Fethi Bougares
      - Holger Schwenk
      - Yoshua Bengio
    title: >-
      Learning Phrase Representations using RNN Encoder–Decoder for Statistical
      Machine Translation
    year: 2014
    venue: EMNLP 2014
    arxiv: "1406.1078"
  - key: saxe2014exact
    authors: [Andrew M. Saxe, James L. McClelland, Surya Ganguli]
    title: >-
      Exact solutions to the nonlinear dynamics of learning in deep linear neural
      networks
    year: 2014
    venue: ICLR 2014
    arxiv: "1312.6120"
  - key: chen2018dynamical
    authors: [Minmin Chen, Jeffrey Pennington, Samuel S. Schoenholz]
    title: >-
      Dynamical Isometry and a Mean Field Theory of RNNs: Gating Enables Signal
      Propagation in Recurrent Neural Networks
    year: 2018
    venue: ICML 2018
    arxiv: "1806.05394"
worksheet:
  - region: rnn_jacobians
    hint: >-
      Check the shapes; the derivative of tanh at each unit is 1 - h_k², read from the
      saved states; J_k = diag(1 - h_k²) W_hh scales row i of W_hh by unit i's slope,
      for every step and sequence at once ([T, batch, H, H]) by broadcasting.
    tests:
      - test_one_step_jacobian_matches_autograd_functional
      - test_explicit_jacobian_products_equal_autograd
  - region: backward_through_jacobians
    hint: >-
      Start from the gradient at h_T; walk the Jacobians from J_T down to J_2,
      multiplying the gradient by each one's transpose (per sequence: J^T g), and
      stack the T gradients in order of distance.
    tests: [test_explicit_jacobian_products_equal_autograd]
  - region: clip_grad_norm
    hint: >-
      Accept one tensor or an iterable; check max_norm and norm_type; take the norm of
      each existing .grad, then the norm of those norms as the total; refuse a
      non-finite total when asked; multiply every gradient in place by
      min(1, max_norm / (total + 1e-6)) and return the total.
    tests:
      - test_clip_matches_torch
      - test_clip_rescales_to_max_norm_keeping_direction
      - test_clip_edge_cases_like_torch
---

Backpropagation through time multiplies. The gradient that reaches the hidden state
$T-t$ steps before the loss is the gradient at the end times one Jacobian for every step
in between, and a product of $T-t$ matrices shrinks or grows exponentially in $T-t$.
That is the vanishing- and exploding-gradient problem [@bengio1994learning;
@pascanu2013difficulty]: a tanh RNN has trouble learning that an input 50 steps back
matters, because the signal saying so arrives $10^{-12}$ times weaker than the signal
from the last step.

This chapter measures that instead of asserting it. It runs PyTorch's `nn.RNN`,
`nn.LSTM` and `nn.GRU` (the [RNN](rnn.md) and [LSTM](lstm.md) chapters build them from
their equations and check them against these) one step at a time, keeps every hidden
state as a node of one autograd graph, and asks autograd for
$\|\partial L/\partial h_t\|$ at every $t$. Then:

- it fits a line to $\log\|\partial L/\partial h_t\|$ against the distance $T-t$.
  For a tanh RNN away from the edge of chaos the fit is close to perfect
  ($R^2 > 0.99$), so the decay is exponential, and for PyTorch's default and for
  orthogonal weights the slope is the one a one-line mean-field argument predicts,
  within 5 % (the chapter also shows where that argument misses);
- it builds the Jacobians $\partial h_k/\partial h_{k-1} =
  \operatorname{diag}(1-h_k^2)\,W_{hh}$ explicitly, multiplies them, and gets
  autograd's gradients back to rounding error; beside them it draws the bound
  $(\gamma\,\sigma_{\max})^{T-t}$ of Pascanu et al., which for PyTorch's default
  initialisation *grows* while the gradients shrink by 40 % at every step;
- it measures the LSTM with its forget gate biased to 1 carrying about $10^7$ times
  more gradient than the default RNN at distance 50, and the forget bias setting the
  rate of decay;
- and it trains an RNN started in the chaotic regime: plain SGD turns the loss into
  NaN within 30 steps, and the same run with its gradient clipped to norm 1 learns
  the task.
"""

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from annotated.data import integer, number, torch_device
from annotated.figures import figure, save

# ## Where the gradient goes
#
# A recurrent network carries a state $h_k$ from step to step,
# $h_k = f(x_k, h_{k-1})$, and the loss $L$ here reads the last state only. By the
# chain rule, the gradient with respect to an earlier state passes through every
# state after it:
#
# $$
# \begin{aligned}
# \frac{\partial L}{\partial h_t}
#   &= \Bigl(\frac{\partial h_T}{\partial h_t}\Bigr)^{\!\top}
#      \frac{\partial L}{\partial h_T}, \\
# \frac{\partial h_T}{\partial h_t}
#   &= \prod_{k=t+1}^{T} \frac{\partial h_k}{\partial h_{k-1}}
#   = J_T\,J_{T-1}\cdots J_{t+1}.
# \end{aligned}
# $$
#
# To see each $\partial L/\partial h_t$ we need each $h_t$ as a tensor autograd can
# differentiate with respect to. `nn.RNN` called on a whole sequence runs the loop in
# one fused operation (C++ or cuDNN) and hands back the states as its *output*: the
# gradient with respect to `output[t]` counts only what the loss does with
# `output[t]` directly, not what the later steps inside the kernel did with $h_t$. So
# we call the module on one step at a time, feeding back the state it returns: each
# returned state is the very tensor the next call reads, and
# `torch.autograd.grad(loss, states)` gives the total derivative with respect to
# every one of them in a single backward pass.
#
# For the LSTM the state is the pair $(h_t, c_t)$; we measure the gradient at $h_t$,
# which reaches the future through both the next step's gates and, via them, the
# cell. A loss $L = \langle r, h_T\rangle$ with a unit vector $r$ for each sequence
# makes $\|\partial L/\partial h_T\| = 1$, so every later norm is a ratio to the
# last step. The sequences of a batch do not interact, so one backward pass gives
# every sequence its own gradients.
#
# Every gradient below is indexed by the *distance* $d = T - t$: row 0 is the last
# step, row $T-1$ the first.


def check_recurrent_input(model: nn.Module, inputs: Tensor, readout: Tensor) -> None:
    """Raise naming the argument when the measurement would fail deep inside torch or
    measure something else (a second layer, a reversed direction)."""
    if not isinstance(model, (nn.RNN, nn.LSTM, nn.GRU)):
        raise TypeError(
            f"model must be an nn.RNN, nn.LSTM or nn.GRU, got {type(model).__name__}"
        )
    if model.num_layers != 1 or model.bidirectional or model.batch_first:
        raise ValueError(
            "model must have one layer, one direction and batch_first=False, got "
            f"num_layers={model.num_layers}, bidirectional={model.bidirectional}, "
            f"batch_first={model.batch_first}"
        )
    if not isinstance(inputs, Tensor) or inputs.ndim != 3:
        raise ValueError(
            "inputs must be a 3-D tensor [steps, batch, input_size], got "
            f"{getattr(inputs, 'shape', type(inputs).__name__)}"
        )
    steps, batch, features = inputs.shape
    if steps < 2 or features != model.input_size:
        raise ValueError(
            f"inputs {tuple(inputs.shape)} must have at least 2 steps and "
            f"input_size {model.input_size}"
        )
    if not isinstance(readout, Tensor) or readout.shape != (batch, model.hidden_size):
        raise ValueError(
            f"readout must be [batch, hidden] = ({batch}, {model.hidden_size}), got "
            f"{getattr(readout, 'shape', type(readout).__name__)}"
        )


def stepped_states(model: nn.Module, inputs: Tensor) -> list[Tensor]:
    """Run `model` over `inputs [T, batch, input_size]` one step at a time from a zero
    state; returns the hidden state after each step, `T` tensors `[1, batch, hidden]`
    that the following step consumed."""
    batch = inputs.shape[1]
    zeros = inputs.new_zeros(1, batch, model.hidden_size)  # [1, batch, hidden]
    lstm = isinstance(model, nn.LSTM)
    state = (zeros, zeros) if lstm else zeros
    states = []
    for step in inputs.split(1):  # [1, batch, input_size]
        _, state = model(step, state)
        states.append(state[0] if lstm else state)  # [1, batch, hidden]
    return states


def hidden_state_gradients(
    model: nn.Module, inputs: Tensor, readout: Tensor
) -> tuple[Tensor, Tensor]:
    r"""$\partial L/\partial h_t$ for $L = \sum_b \langle r_b, h_{T,b}\rangle$ with
    `readout` $r$ `[batch, hidden]`.

    Returns `(gradients, states)`: the gradients `[T, batch, hidden]` by distance (row
    $d$ is $\partial L/\partial h_{T-d}$), and the hidden states `[T, batch, hidden]`
    by time (row $k-1$ is $h_k$), detached.
    """
    check_recurrent_input(model, inputs, readout)
    states = stepped_states(model, inputs)
    loss = (states[-1][0] * readout).sum()
    gradients = torch.autograd.grad(loss, states)  # T × [1, batch, hidden]
    return torch.cat(gradients).flip(0), torch.cat(states).detach()


# ## Initialisations
#
# What the gradient does depends on where the weights start. The cases we measure:
#
# - **PyTorch's default** for `nn.RNN`: every weight uniform in
#   $\pm 1/\sqrt{H}$ (`torch/nn/modules/rnn.py`, `RNNBase.reset_parameters`). For
#   $H = 64$ that $W_{hh}$ has spectral radius $\rho \approx 0.6$ but largest
#   singular value $\sigma_{\max} \approx 1.1$: a random matrix is far from normal,
#   and the two numbers Pascanu's argument uses are not the same.
# - **Gaussian, scaled to spectral radius** $\rho = 0.5, 1, 1.5$: draw $W_{hh}$ with
#   independent normal entries and divide by its largest eigenvalue modulus. Its
#   $\sigma_{\max}$ is nearly $2\rho$.
# - **Orthogonal** $W_{hh}$ [@saxe2014exact]: every singular value is 1, so
#   $\rho = \sigma_{\max} = 1$ and the matrix itself neither shrinks nor stretches any
#   vector; only the tanh can.
# - **The LSTM's forget gate** [@hochreiter1997long; @gers2000learning]. Its cell
#   is updated by $c_k = f_k \odot c_{k-1} + i_k \odot g_k$, so along the cell the
#   Jacobian is $\operatorname{diag}(f_k)$ and gradient fades like
#   $\prod_k f_k$. With the default biases $f_k \approx \sigma(0) = 0.5$; a bias of 1,
#   the common recommendation [@jozefowicz2015empirical], gives $\sigma(1) = 0.73$,
#   and a bias of 3 gives $0.95$. PyTorch stores the four gates in the order
#   $(i, f, g, o)$, so the forget gate's bias is the second quarter of `bias_ih_l0`
#   (and of `bias_hh_l0`, which is added to it).
# - **The GRU** [@cho2014learning] at PyTorch's default, whose update gate
#   $h_k = (1 - z_k)\odot n_k + z_k \odot h_{k-1}$ plays the forget gate's part.


@torch.no_grad()
def set_spectral_radius(weight: Tensor, radius: float) -> Tensor:
    """Fill the square `weight` with standard normal entries scaled so that its
    largest eigenvalue modulus is `radius`; in place, using torch's global RNG."""
    if weight.ndim != 2 or weight.shape[0] != weight.shape[1]:
        raise ValueError(f"weight must be square, got {tuple(weight.shape)}")
    weight.normal_()
    return weight.mul_(radius / spectral_radius(weight))


def spectral_radius(weight: Tensor) -> float:
    r"""$\rho(W) = \max_i |\lambda_i(W)|$."""
    return torch.linalg.eigvals(weight.detach()).abs().max().item()


@torch.no_grad()
def set_forget_bias(lstm: nn.LSTM, value: float) -> nn.LSTM:
    """Set the forget gate's total bias to `value`: the second of the four gate
    slices of `bias_ih_l0` to `value`, the same slice of `bias_hh_l0` to 0."""
    hidden = lstm.hidden_size
    lstm.bias_ih_l0[hidden : 2 * hidden] = value
    lstm.bias_hh_l0[hidden : 2 * hidden] = 0.0
    return lstm


def initialised_models(
    input_size: int, hidden_size: int, seed: int = 0
) -> dict[str, nn.Module]:
    """The nine models the demo measures, in float64, by label. Each is built from the
    same seed, so the RNNs share their input weights and differ only in $W_{hh}$."""

    def fresh(cls: type[nn.Module]) -> nn.Module:
        torch.manual_seed(seed)
        return cls(input_size, hidden_size).double()

    models = {"RNN, default": fresh(nn.RNN)}
    for radius in (0.5, 1.0, 1.5):
        model = fresh(nn.RNN)
        set_spectral_radius(model.weight_hh_l0, radius)
        models[f"RNN, Gaussian ρ = {radius:g}"] = model
    model = fresh(nn.RNN)
    with torch.no_grad():
        nn.init.orthogonal_(model.weight_hh_l0)
    models["RNN, orthogonal"] = model
    for bias in (0.0, 1.0, 3.0):
        models[f"LSTM, forget bias {bias:g}"] = set_forget_bias(fresh(nn.LSTM), bias)
    models["GRU, default"] = fresh(nn.GRU)
    return models


# ## Is the decay exponential?
#
# If $\|\partial L/\partial h_{T-d}\| \approx C\,a^{d}$, then its logarithm is a
# straight line in $d$ with slope $\log a$. We average the logarithm over the
# sequences of the batch (a geometric mean: one atypical sequence cannot dominate) and
# fit $\log\|\cdot\| \approx \text{slope}\cdot d + \text{intercept}$ by least
# squares. The coefficient of determination
#
# $$
# R^2 = 1 - \frac{\sum_d (y_d - \hat y_d)^2}{\sum_d (y_d - \bar y)^2}
# $$
#
# says how straight the line is: 1 for an exact exponential. Distance 0 is left out
# of the fit (the norm there is 1 by construction), and so is any distance where a
# norm is exactly 0, whose log would end the fit. That happens in float32, and
# earlier than one might think: the default RNN's gradient itself underflows past
# $10^{-45}$, about 200 steps back, but its float32 `norm` is 0 from some 100 steps
# back, where the true norm is still near $10^{-22}$. The norm sums squares, and the
# square of an entry below about $2.6\times10^{-23}$ is less than half of float32's
# smallest positive number, $1.4\times10^{-45}$, so it rounds to 0; once all 64
# entries are that small, the norm is 0. Everything measured here runs in float64.


@dataclass(frozen=True)
class Decay:
    """A line fitted to log gradient norm against distance."""

    slope: float  # log of the factor per step: < 0 vanishes, > 0 explodes
    intercept: float
    r2: float  # 1 for an exact exponential
    distances: int  # how many distances the fit used


def log_norms(norms: Tensor) -> Tensor:
    """The batch's geometric-mean log norm at each distance, `[T, batch]` → `[T]`;
    `-inf` where some sequence's norm is 0."""
    return norms.log().mean(dim=1)


def fit_decay(norms: Tensor, start: int = 1) -> Decay:
    """Least-squares line through `log_norms(norms)` for distances `start` onward,
    skipping distances where any norm is 0 or not finite."""
    if norms.ndim != 2:
        raise ValueError(f"norms must be [distance, batch], got {tuple(norms.shape)}")
    y = log_norms(norms.detach().double().cpu())[start:]
    d = torch.arange(start, start + len(y), dtype=torch.float64)
    keep = torch.isfinite(y)
    y, d = y[keep], d[keep]
    if len(y) < 3:
        raise ValueError(
            f"fit_decay needs at least 3 distances with non-zero finite norms, "
            f"got {len(y)}"
        )
    slope = ((d - d.mean()) * (y - y.mean())).sum() / (d - d.mean()).square().sum()
    intercept = y.mean() - slope * d.mean()
    residual = (y - (slope * d + intercept)).square().sum()
    r2 = 1 - residual / (y - y.mean()).square().sum()
    return Decay(slope.item(), intercept.item(), r2.item(), len(y))


# ## Pascanu's argument, computed
#
# For the tanh RNN, $h_k = \tanh(W_{ih}x_k + b + W_{hh}h_{k-1})$, and differentiating
# gives the Jacobian of one step in closed form:
#
# $$
# J_k = \frac{\partial h_k}{\partial h_{k-1}}
#     = \operatorname{diag}\bigl(1 - h_k^2\bigr)\,W_{hh}.
# $$
#
# Pascanu, Mikolov and Bengio [@pascanu2013difficulty] bound the norm of a product of
# these. With $\gamma$ a bound on the derivative of the nonlinearity
# ($|\tanh'| \le 1$, so $\gamma \le 1$) and $\sigma_{\max}$ the largest singular value
# of $W_{hh}$, each factor has norm at most $\gamma\sigma_{\max}$, so
#
# $$
# \Bigl\|\frac{\partial L}{\partial h_t}\Bigr\|
#   \le \Bigl\|\prod_{k=t+1}^{T} J_k\Bigr\|_2
#   \le (\gamma\,\sigma_{\max})^{T-t}
# $$
#
# for a unit $\partial L/\partial h_T$. If $\sigma_{\max} < 1/\gamma$, gradients must
# vanish: a sufficient condition. For them to explode, $\sigma_{\max}$ must exceed
# $1/\gamma$ (for a linear RNN: the spectral radius must exceed 1): a necessary
# condition, not a sufficient one, because saturated units ($1 - h^2 \approx 0$) can
# pull the product back down.
#
# We compute each link of that chain explicitly. `rnn_jacobians` forms every $J_k$ as
# a matrix; `backward_through_jacobians` multiplies $\partial L/\partial h_T$ by their
# transposes, one step at a time, which is what autograd does without forming them;
# `product_norms` multiplies the matrices themselves and takes the spectral norm of
# each partial product; `pascanu_bound` is the right-hand side, with $\gamma$ the
# largest $1 - h_k^2$ the sequence actually reached. Forming the matrices is the
# expensive way round: for 100 steps of 8 sequences with 64 units, the benchmark
# found it 5 to 12 times slower than autograd's backward (over several runs on a
# busy 2-core machine; 8.0 times in this page's benchmark run), which only ever
# multiplies a vector by $W_{hh}^\top$.


def rnn_jacobians(states: Tensor, w_hh: Tensor) -> Tensor:
    r"""$J_k = \operatorname{diag}(1 - h_k^2)\,W_{hh}$ for every step: `states
    [T, batch, H]` by time, `w_hh [H, H]` → `[T, batch, H, H]`."""
    if states.ndim != 3 or w_hh.shape != (states.shape[-1], states.shape[-1]):
        raise ValueError(
            f"states must be [T, batch, H] and w_hh [H, H]; got states "
            f"{tuple(states.shape)} and w_hh {tuple(w_hh.shape)}"
        )
    derivative = 1 - states.square()  # [T, batch, H]: tanh' at each unit
    return derivative[..., :, None] * w_hh  # [T, batch, H, H], row i scaled by d_i


def backward_through_jacobians(jacobians: Tensor, grad_last: Tensor) -> Tensor:
    r"""$\partial L/\partial h_{k-1} = J_k^\top\,\partial L/\partial h_k$, from
    `grad_last` $= \partial L/\partial h_T$ `[batch, H]` back to $h_1$; returns
    `[T, batch, H]` by distance."""
    gradient = grad_last  # [batch, H]
    gradients = [gradient]
    for jacobian in jacobians[1:].flip(0):  # J_T, J_{T-1}, ..., J_2: [batch, H, H]
        gradient = torch.einsum("bij,bi->bj", jacobian, gradient)  # J^T g
        gradients.append(gradient)
    return torch.stack(gradients)  # [T, batch, H]


def product_norms(jacobians: Tensor) -> Tensor:
    r"""$\|J_T J_{T-1}\cdots J_{T-d+1}\|_2$ for every distance $d$ (1 at $d = 0$);
    `[T, batch, H, H]` → `[T, batch]`."""
    steps, batch, hidden, _ = jacobians.shape
    eye = torch.eye(hidden, dtype=jacobians.dtype, device=jacobians.device)
    product = eye.expand(batch, hidden, hidden)  # [batch, H, H]
    norms = [torch.linalg.matrix_norm(product, ord=2)]
    for jacobian in jacobians[1:].flip(0):
        product = product @ jacobian  # ∂h_T/∂h_{T-d}
        norms.append(torch.linalg.matrix_norm(product, ord=2))  # [batch]
    return torch.stack(norms)  # [T, batch]


def pascanu_bound(states: Tensor, w_hh: Tensor) -> Tensor:
    r"""$(\gamma\,\sigma_{\max}(W_{hh}))^d$ for $d = 0, \dots, T-1$, with $\gamma$ the
    largest $1 - h^2$ of each sequence; `[T, batch]`."""
    gamma = (1 - states.square()).amax(dim=(0, 2))  # [batch]
    sigma_max = torch.linalg.matrix_norm(w_hh, ord=2)
    distance = torch.arange(len(states), dtype=states.dtype, device=states.device)
    return (gamma * sigma_max)[None, :] ** distance[:, None]  # [T, batch]


# ## The rate, predicted
#
# A bound is not a prediction. For one, take $W_{hh}$ orthogonal times a scale $\rho$.
# Then $\|W_{hh}^\top u\| = \rho\,\|u\|$ for every vector, so one step back multiplies
# the gradient's norm by exactly $\rho\,\|D_k\,\hat g_k\|$, where
# $D_k = \operatorname{diag}(1 - h_k^2)$ and $\hat g_k$ is the gradient's direction. If
# that direction is spread evenly over the units, independently of which ones are
# saturated, $\|D_k \hat g_k\|^2$ is the mean of $(1-h_{k,i}^2)^2$ over the units
# $i$, and the log norm falls per step by
#
# $$
# \text{rate} = \log\rho
#   + \tfrac12\,\overline{\log \operatorname{mean}_i\,(1 - h_{k,i}^2)^2},
# $$
#
# the bar averaging over steps and sequences. This is the mean-field view of signal
# propagation [@chen2018dynamical]: the spectral radius sets the rate of the linear
# network, and the tanh's average slope takes its share away.
#
# For the orthogonal matrix the one approximation is the even spread of the
# gradient's direction, and the prediction lands within 3 % of the fitted slope. For
# the other matrices there is a second one: a matrix that is not normal stretches
# different directions by different amounts, and $\rho$ is its gain only along its
# top eigenvector. The prediction still lands within 3 % for the default matrix and
# the Gaussian one at $\rho = 0.5$, but it is 0.03 per step (20 %) too slow at
# $\rho = 1$, and at $\rho = 1.5$ it predicts growth where the measurement finds
# none.


def predicted_rate(states: Tensor, w_hh: Tensor) -> float:
    r"""$\log\rho(W_{hh}) + \frac12\overline{\log \operatorname{mean}_i (1 -
    h^2)^2}$, from `states [T, batch, H]`."""
    slope_squared = (1 - states.square()).square().mean(dim=-1)  # [T, batch]
    return math.log(spectral_radius(w_hh)) + 0.5 * slope_squared.log().mean().item()


# Everything for one tanh RNN together, in the shapes the figure and the test use:
# autograd's gradient norms, the same from the explicit product of Jacobians, the
# spectral norms of the partial products, the bound, and the predicted rate.


def pascanu_comparison(
    model: nn.RNN, inputs: Tensor, readout: Tensor
) -> dict[str, Tensor | float]:
    """Autograd's and the explicit Jacobians' gradient norms with the product norms
    and Pascanu's bound, each `[T, batch]` by distance, and the predicted rate."""
    if not isinstance(model, nn.RNN) or model.nonlinearity != "tanh":
        raise TypeError("model must be an nn.RNN with nonlinearity='tanh'")
    gradients, states = hidden_state_gradients(model, inputs, readout)
    w_hh = model.weight_hh_l0.detach()
    jacobians = rnn_jacobians(states, w_hh)  # [T, batch, H, H]
    explicit = backward_through_jacobians(jacobians, readout)  # [T, batch, H]
    return {
        "autograd": gradients.norm(dim=-1),
        "explicit": explicit.norm(dim=-1),
        "product": product_norms(jacobians),
        "bound": pascanu_bound(states, w_hh),
        "predicted_rate": predicted_rate(states, w_hh),
    }


# ## Exploding gradients and clipping
#
# When the product of Jacobians grows instead, one gradient can be thousands of times
# larger than the last, and one step of SGD along it throws the weights far across
# the loss surface: Pascanu et al. picture a steep cliff in an otherwise gentle
# landscape. Their remedy, now standard, is to rescale the whole gradient when its
# norm passes a threshold $c$, keeping its direction:
#
# $$
# g \leftarrow g \cdot \min\Bigl(1, \frac{c}{\|g\| + 10^{-6}}\Bigr),
# \qquad
# \|g\| = \Bigl\|\bigl(\|g_1\|_p, \dots, \|g_n\|_p\bigr)\Bigr\|_p,
# $$
#
# where $g_1, \dots, g_n$ are the gradients of the parameter tensors: the norm of all
# of them as one long vector, computed as the norm of their norms.
#
# `torch.nn.utils.clip_grad_norm_` does exactly this (`torch/nn/utils/clip_grad.py`:
# `_get_total_norm`, then `_clip_grads_with_norm_`), and so does ours, down to three
# details the test checks: the $10^{-6}$ in the denominator; the multiplication of
# every gradient even when the factor is 1, which saves a GPU-to-CPU synchronisation
# that `if norm > c` would cost; and the return value, the norm *before* clipping,
# which is the number worth logging. torch's version runs `torch._foreach_norm` and
# `torch._foreach_mul_` over all tensors of a device at once; ours loops. On a 2-core
# CPU the benchmark found the loop as fast as torch's or a little faster, on the 8
# gradient tensors of a 2-layer LSTM with 1.05 M weights: grouping by device and
# dtype costs about what the fused calls save. They are written for a GPU, where
# each of our per-tensor operations is a kernel launch of its own. We refuse a
# non-positive `max_norm`, which torch accepts (a negative one flips every gradient).


@torch.no_grad()
def clip_grad_norm(
    parameters: Tensor | list[Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
) -> Tensor:
    """Scale the gradients of `parameters` in place so that their total `norm_type`
    norm is at most `max_norm`; returns the total norm before scaling."""
    parameters = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    if not all(isinstance(p, Tensor) for p in parameters):
        raise TypeError("parameters must be a tensor or an iterable of tensors")
    if not max_norm > 0:  # also rejects NaN
        raise ValueError(f"max_norm must be > 0, got {max_norm!r}")
    norm_type = float(norm_type)
    if not norm_type > 0:
        raise ValueError(f"norm_type must be > 0 or inf, got {norm_type!r}")
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    device = grads[0].device
    norms = [torch.linalg.vector_norm(g, norm_type).to(device) for g in grads]
    total = torch.linalg.vector_norm(torch.stack(norms), norm_type)
    if error_if_nonfinite and not torch.isfinite(total):
        raise RuntimeError(
            f"the total norm of order {norm_type} of the gradients is {total.item()}, "
            "so they cannot be clipped"
        )
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(scale.to(g.device))
    return total


# ## A run that explodes
#
# The task is an echo: read a stream of standard normal numbers $x_1, x_2, \dots$ and
# output, at every step $k$, the number $x_{k-3}$ seen three steps earlier. A tanh RNN
# with 32 units and a linear readout learns it in a couple of hundred SGD steps from a
# sensible start; predicting 0 scores a mean squared error of 1.
#
# We start it somewhere less sensible: $W_{hh}$ Gaussian with spectral radius 2, in the
# chaotic regime where nearby states drift apart and the products of Jacobians grow.
# The first gradient then has a norm in the tens (30 with the demo's seed) where a
# start at $\rho = 1$ gives 1 to 6, and at a learning rate of 0.3 one step along it
# is a jump of several units in weight space. Within ten steps the gradient norm
# passes $10^{9}$; the jumps saturate the hidden units, and with every
# $h \approx \pm 1$ the readout's curvature grows until each step overshoots it
# further: the loss reaches $10^{34}$, then overflows to NaN. The same run with its
# gradient clipped to norm 1 takes the same directions in steps it can afford.
#
# A sensible start does not make clipping unnecessary. From $\rho = 1$ at the same
# learning rate, two of the first six seeds (2 and 5) still diverge without clipping,
# after more than 25 steps of normal training: a single spike of the gradient norm
# is enough. Clipped, all six learn the task.


def echo_batch(
    batch: int, length: int, delay: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    r"""`inputs [length, batch, 1]` of standard normals and `targets [length - delay,
    batch, 1]`: the output at step $k \ge$ `delay` must be input $k -$ `delay`."""
    inputs = torch.randn(length, batch, 1, generator=generator)
    return inputs, inputs[: length - delay]


class EchoRNN(nn.Module):
    """A tanh `nn.RNN` with a linear readout at every step, $W_{hh}$ started Gaussian
    at spectral radius `radius`."""

    def __init__(self, hidden_size: int, radius: float):
        super().__init__()
        self.rnn = nn.RNN(1, hidden_size)
        self.readout = nn.Linear(hidden_size, 1)
        set_spectral_radius(self.rnn.weight_hh_l0, radius)

    def forward(self, inputs: Tensor) -> Tensor:
        hidden, _ = self.rnn(inputs)  # [length, batch, hidden]
        return self.readout(hidden)  # [length, batch, 1]


@dataclass
class EchoRun:
    """One training run: its losses and gradient norms per step, and the step at
    which the loss stopped being finite (`None` if it never did)."""

    losses: list[float]
    grad_norms: list[float]
    diverged_at: int | None


def train_echo(
    max_norm: float | None,
    steps: int = 200,
    lr: float = 0.3,
    radius: float = 2.0,
    hidden_size: int = 32,
    length: int = 40,
    delay: int = 3,
    batch: int = 32,
    seed: int = 0,
    device: str = "cpu",
) -> EchoRun:
    """Train an `EchoRNN` with plain SGD, clipping the gradient to `max_norm` (`None`:
    not at all); stops at the first loss that is not finite."""
    torch.manual_seed(seed)
    model = EchoRNN(hidden_size, radius).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    run = EchoRun([], [], None)
    label = "clipped" if max_norm else "unclipped"
    for step in tqdm(range(steps), desc=f"echo, {label}", leave=False):
        inputs, targets = echo_batch(batch, length, delay, generator)
        inputs, targets = inputs.to(device), targets.to(device)
        loss = (model(inputs)[delay:] - targets).square().mean()
        if not torch.isfinite(loss):
            run.diverged_at = step
            break
        optimizer.zero_grad()
        loss.backward()
        # With max_norm = inf the factor is 1: the call only measures the norm.
        norm = clip_grad_norm(model.parameters(), max_norm or math.inf)
        optimizer.step()
        run.losses.append(loss.item())
        run.grad_norms.append(norm.item())
    return run


# ## The example
#
# The declared example is the Pascanu comparison on a small tanh RNN: 4 sequences of
# 20 steps, 16 units. Its dataflow diagram below is declared by `dataflow`, which
# draws the two routes from the states to the same gradients.


def example():
    """A small example: `fn(*args)` compares autograd with the explicit Jacobian
    products on a 16-unit tanh RNN."""
    torch.manual_seed(0)
    model = nn.RNN(3, 16).double()
    inputs = torch.randn(20, 4, 3, dtype=torch.float64)  # [T, batch, input]
    readout = nn.functional.normalize(torch.randn(4, 16, dtype=torch.float64), dim=1)
    return pascanu_comparison, (model, inputs, readout)


def dataflow(
    output: dict[str, Tensor | float],
) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """The comparison's steps, with the shapes that pass between them."""
    steps, batch = output["autograd"].shape
    curve = f"[{steps}, {batch}]"
    nodes = [
        ("inputs", "inputs x [T, batch, input]"),
        ("rnn", "nn.RNN, one step per call"),
        ("states", "states h_1 … h_T"),
        ("autograd", "torch.autograd.grad(⟨r, h_T⟩, states)"),
        ("jacobians", "J_k = diag(1 − h_k²) W_hh"),
        ("explicit", "g_(k−1) = J_kᵀ g_k"),
        ("product", "‖J_T ⋯ J_(T−d+1)‖₂"),
        ("bound", "(γ σ_max)^d"),
        ("compare", "norms by distance d"),
    ]
    edges = [
        ("inputs", "rnn", f"[{steps}, {batch}, input]"),
        ("rnn", "states", f"{steps} × [1, {batch}, H]"),
        ("states", "autograd", "graph"),
        ("states", "jacobians", "values"),
        ("jacobians", "explicit", f"[{steps}, {batch}, H, H]"),
        ("jacobians", "product", f"[{steps}, {batch}, H, H]"),
        ("states", "bound", "γ"),
        ("autograd", "compare", curve),
        ("explicit", "compare", curve),
        ("product", "compare", curve),
        ("bound", "compare", curve),
    ]
    return nodes, edges


# ## The demo
#
# It measures the nine initialisations on the same 32 sequences of 100 steps of 8-d
# standard normal inputs, with 64 hidden units in float64, prints each one's fitted
# slope, $R^2$ and gradient at distance 50, and draws them. Then it runs the Pascanu
# comparison on two of the RNNs, and trains the echo task twice from the same start,
# without and with clipping.
#
# What the defaults give, per step: the default RNN's gradient shrinks by a factor
# $e^{-0.51} = 0.60$ (predicted $e^{-0.50}$), reaching $3\times10^{-12}$ at distance
# 50; orthogonal $W_{hh}$ shrinks it by $e^{-0.14} = 0.87$, the tanh alone taking
# those 13 %. The Gaussian $\rho = 1.5$ network neither vanishes nor explodes:
# saturation cancels the growth the spectral radius would give, as Pascanu's
# necessary-but-not-sufficient condition allows, and the mean-field prediction
# (+0.10) misses it. The LSTM's rate is set by the forget bias: $-0.46$ at bias 0,
# $-0.16$ at bias 1 and about 0 at bias 3, so that at distance 50 the bias-1 LSTM
# keeps about $10^7$ times the default RNN's gradient. That is slower than the cell
# path alone would give, about $\log\sigma(1) = -0.31$ per step: the other terms of
# the LSTM's Jacobian, through $h_{k-1}$ and the gates, add gradient back. The GRU at
# its default decays at $-0.41$. In the echo run, plain SGD's loss is NaN at step 26;
# clipped, it falls from 1.11 to 0.14. With `--device cuda` (checked on an H200) the
# measured gradients agree with the CPU's to $10^{-14}$; the echo runs, in float32
# through cuDNN, round differently, and plain SGD reaches NaN at step 21 instead.


def measurement_batch(
    length: int, batch: int, input_size: int, hidden_size: int, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Standard normal `inputs [length, batch, input_size]` and unit-norm `readout
    [batch, hidden_size]` rows, in float64."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(length, batch, input_size, generator=generator)
    readout = torch.randn(batch, hidden_size, generator=generator)
    return inputs.double(), nn.functional.normalize(readout.double(), dim=1)


def plot_decay(norms: dict[str, Tensor], out: Path) -> Path:
    """Geometric-mean gradient norm against distance: the RNNs left, the gated
    networks right, with the default RNN on both for scale."""
    fig, (left, right) = figure(panels=2, sharey=True)
    for label, curve in norms.items():
        values = log_norms(curve.cpu()).exp()
        ax = left if label.startswith("RNN") else right
        ax.semilogy(values, label=label.replace("RNN, ", "").replace("ρ", "$\\rho$"))
        if label == "RNN, default":
            right.semilogy(values, "k--", label="RNN, default")
    for ax, title in ((left, "tanh RNN"), (right, "LSTM and GRU")):
        ax.set_title(title)
        ax.set_xlabel("distance $T - t$")
        ax.legend(loc="lower left")
    left.set_ylabel(r"$\|\partial L / \partial h_t\|$ (geometric mean)")
    return save(
        fig,
        out / "decay.png",
        caption="Gradient norm at each distance from the loss, averaged in log space "
        "over 32 sequences: straight lines are exponentials. The RNN's slope follows "
        "its spectral radius; the LSTM's follows its forget-gate bias.",
    )


def plot_pascanu(comparisons: dict[str, dict], out: Path) -> Path:
    """Autograd, the explicit Jacobian product, its spectral norm, Pascanu's bound and
    the predicted rate, for each RNN in `comparisons`."""
    fig, axes = figure(panels=len(comparisons), sharey=True)
    for ax, (label, result) in zip(axes, comparisons.items()):
        autograd = log_norms(result["autograd"].cpu()).exp()
        distance = torch.arange(len(autograd))
        ax.semilogy(autograd, label="autograd", lw=2.5, alpha=0.5)
        explicit = log_norms(result["explicit"].cpu()).exp()
        ax.semilogy(distance[::5], explicit[::5], "k.", label="explicit $\\prod J_k$")
        product = log_norms(result["product"].cpu()).exp()
        ax.semilogy(product, "--", label="$\\|\\prod J_k\\|_2$")
        bound = log_norms(result["bound"].cpu()).exp()
        ax.semilogy(bound, ":", label="bound $(\\gamma\\sigma_{max})^d$")
        predicted = torch.exp(result["predicted_rate"] * distance)
        ax.semilogy(predicted, lw=0.8, label="predicted rate")
        ax.set_title(label.replace("ρ", "$\\rho$"))
        ax.set_xlabel("distance $d = T - t$")
        ax.legend(loc="lower left")
    axes[0].set_ylabel("norm (geometric mean)")
    axes[0].set_ylim(1e-30, 1e8)
    return save(
        fig,
        out / "pascanu.png",
        caption="Gradient norms from autograd and from the explicit product of "
        "Jacobians (dots, equal), the product's spectral norm, Pascanu's bound and "
        "the predicted rate. For the default RNN the bound grows while the gradient "
        "shrinks.",
    )


LOSS_CEILING = 1e3


def plot_clipping(runs: dict[str, EchoRun], max_norm: float, out: Path) -> Path:
    """Loss and gradient norm per step of the echo task, with and without clipping."""
    clipped = runs[f"clipped to {max_norm:g}"]
    final = sum(clipped.losses[-20:]) / len(clipped.losses[-20:])
    fig, (left, right) = figure(panels=2)
    for label, run in runs.items():
        (line,) = left.semilogy(run.losses, label=label)
        right.semilogy(run.grad_norms, color=line.get_color(), label=label)
        if run.diverged_at is not None:
            left.annotate(
                f"{run.losses[-1]:.0e} at step {len(run.losses) - 1},\n"
                f"NaN at step {run.diverged_at}",
                (len(run.losses) - 1, LOSS_CEILING),
                textcoords="offset points",
                xytext=(6, -26),
            )
    # The unclipped loss climbs to 1e34: a ceiling, and a floor just under the lowest
    # loss, keep the clipped run's descent visible.
    lowest = min(min(run.losses) for run in runs.values() if run.losses)
    left.set_ylim(lowest / 2, LOSS_CEILING)
    right.axhline(max_norm, color="k", lw=0.8, ls=":", label=f"max norm {max_norm:g}")
    left.set_ylabel("mean squared error")
    right.set_ylabel("gradient norm before clipping")
    for ax in (left, right):
        ax.set_xlabel("SGD step")
        ax.legend()
    return save(
        fig,
        out / "clipping.png",
        caption="Training a tanh RNN started at spectral radius 2 on the echo task: "
        "without clipping the gradient norm passes 1e9 and the loss explodes to NaN; "
        f"clipped to norm {max_norm:g}, the loss falls from {clipped.losses[0]:.2f} "
        f"to {final:.2f} (the mean of the last 20 steps).",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Measure gradient decay for nine initialisations, compare with Pascanu's
    Jacobian products, and train with and without clipping."""
    parser = argparse.ArgumentParser(
        description="Vanishing and exploding gradients in RNN, LSTM and GRU, measured.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--length", type=integer(at_least=52), default=100, help="sequence length T"
    )
    parser.add_argument(
        "--batch", type=integer(at_least=1), default=32, help="sequences measured"
    )
    parser.add_argument(
        "--hidden", type=integer(at_least=1), default=64, help="hidden units"
    )
    parser.add_argument(
        "--inputs", type=integer(at_least=1), default=8, help="input features"
    )
    parser.add_argument(
        "--steps", type=integer(at_least=1), default=200, help="echo training steps"
    )
    parser.add_argument(
        "--lr", type=number(above=0), default=0.3, help="SGD learning rate"
    )
    parser.add_argument(
        "--max-norm", type=number(above=0), default=1.0, help="clipping threshold"
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--threads",
        type=integer(at_least=1),
        default=1,
        help="CPU threads (the tensors are small: more threads only add handoffs)",
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to run on",
    )
    parser.add_argument(
        "--out", default="out/vanishing_gradients", help="folder for the figures"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)

    inputs, readout = measurement_batch(
        args.length, args.batch, args.inputs, args.hidden, args.seed
    )
    inputs, readout = inputs.to(args.device), readout.to(args.device)

    models = initialised_models(args.inputs, args.hidden, args.seed)
    norms, rates, comparisons = {}, {}, {}
    print("model                      slope  predicted   R²   |grad| at 50")
    for label, model in tqdm(models.items(), desc="measuring"):
        model.to(args.device)
        gradients, states = hidden_state_gradients(model, inputs, readout)
        norms[label] = gradients.norm(dim=-1)  # [T, batch]
        decay = fit_decay(norms[label])
        if isinstance(model, nn.RNN):
            rates[label] = predicted_rate(states, model.weight_hh_l0.detach())
        predicted = f"{rates[label]:8.3f}" if label in rates else " " * 8
        at_50 = log_norms(norms[label])[50].exp().item()
        print(
            f"{label:24s} {decay.slope:7.3f} {predicted} {decay.r2:6.3f} {at_50:10.1e}"
        )
        if label in ("RNN, default", "RNN, Gaussian ρ = 1.5"):
            # Eight sequences are enough here: the product norms need one SVD per
            # sequence and distance.
            comparisons[label] = pascanu_comparison(model, inputs[:, :8], readout[:8])

    rnn = fit_decay(norms["RNN, default"])
    lstm_at_50 = log_norms(norms["LSTM, forget bias 1"])[50]
    ratio = (lstm_at_50 - log_norms(norms["RNN, default"])[50]).exp().item()
    print(f"LSTM (forget bias 1) / RNN (default) at distance 50: {ratio:.1e}")
    gap = max(
        ((c["explicit"] - c["autograd"]).abs() / c["autograd"]).max().item()
        for c in comparisons.values()
    )
    print(f"explicit Jacobian products vs autograd: max relative difference {gap:.1e}")

    runs = {
        "no clipping": train_echo(
            None, args.steps, args.lr, seed=args.seed, device=args.device
        ),
        f"clipped to {args.max_norm:g}": train_echo(
            args.max_norm, args.steps, args.lr, seed=args.seed, device=args.device
        ),
    }
    plain, clipped = runs.values()
    final = sum(clipped.losses[-20:]) / len(clipped.losses[-20:])
    if plain.diverged_at is None:
        print(f"without clipping: no divergence, final loss {plain.losses[-1]:.3f}")
    else:
        print(f"without clipping: loss not finite at step {plain.diverged_at}")
    print(f"clipped: loss {clipped.losses[0]:.3f} -> {final:.3f} (last 20 steps)")

    plot_decay({label: n.cpu() for label, n in norms.items()}, out)
    plot_pascanu(comparisons, out)
    plot_clipping(runs, args.max_norm, out)
    return {
        "rnn_slope": rnn.slope,
        "rnn_predicted_slope": rates["RNN, default"],
        "rnn_r2": rnn.r2,
        "lstm_over_rnn_at_50": ratio,
        "explicit_vs_autograd": gap,
        "unclipped_diverged_at": (
            math.inf if plain.diverged_at is None else float(plain.diverged_at)
        ),
        "clipped_first_loss": clipped.losses[0],
        "clipped_final_loss": final,
    }


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Build `nn.RNN(..., nonlinearity="relu")` with $W_{hh}$ the identity and zero
#    biases (the IRNN of Le, Jaitly and Hinton, 2015) and measure its decay. What does
#    the predicted rate become when the nonlinearity's slope is 0 or 1?
# 2. Remove the LSTM's forget gate (a bias of $+\infty$ in effect: try 30) as in the
#    1997 LSTM. Does $\|\partial L/\partial c_t\|$ still decay? What happens to the
#    size of $c_t$ over a long sequence?
# 3. Replace `clip_grad_norm` with `torch.nn.utils.clip_grad_value_` at 0.1 in the echo
#    run. Which of the two keeps the gradient's direction, and does the run survive?
# 4. Truncate backpropagation through time: detach the state every 10 steps in
#    `stepped_states`, and in `hidden_state_gradients` pass `allow_unused=True,
#    materialize_grads=True` to `torch.autograd.grad` (the states before the last cut
#    no longer reach the loss, and without these autograd raises that they "appear to
#    not have been used in the graph"; with them their gradients are zeros). Redraw the
#    decay figure. Which distances lose their gradient entirely?
