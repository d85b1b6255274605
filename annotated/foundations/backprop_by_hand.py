r"""
---
title: Backpropagation by hand
summary: >-
  The backward passes of a linear layer, softmax cross-entropy, layer norm and an
  attention head, derived in index notation and typed into NumPy.
time: 1 s
expected:
  metric: accuracy
  short: ["--steps", "60"]
references:
  - key: parr2018matrix
    authors: [Terence Parr, Jeremy Howard]
    title: The Matrix Calculus You Need For Deep Learning
    year: 2018
    venue: arXiv preprint
    arxiv: "1802.01528"
  - key: karpathy2015backprop
    authors: [Andrej Karpathy]
    title: "CS231n course notes: Backpropagation, Intuitions"
    year: 2015
    venue: "Stanford CS231n: Convolutional Neural Networks for Visual Recognition"
    url: https://cs231n.github.io/optimization-2/
  - key: karpathy2015learning
    authors: [Andrej Karpathy]
    title: "CS231n course notes: Neural Networks Part 3, Learning and Evaluation"
    year: 2015
    venue: "Stanford CS231n: Convolutional Neural Networks for Visual Recognition"
    url: https://cs231n.github.io/neural-networks-3/
  - key: ba2016layer
    authors: [Jimmy Lei Ba, Jamie Ryan Kiros, Geoffrey E. Hinton]
    title: Layer Normalization
    year: 2016
    venue: arXiv preprint
    arxiv: "1607.06450"
  - key: vaswani2017attention
    authors: [Ashish Vaswani, Noam Shazeer, Niki Parmar, Jakob Uszkoreit, Llion Jones,
      Aidan N. Gomez, Łukasz Kaiser, Illia Polosukhin]
    title: Attention Is All You Need
    year: 2017
    venue: NeurIPS 2017
    arxiv: "1706.03762"
worksheet:
  - region: linear_backward
    hint: >-
      With Y = X W^T + b: the input gradient is grad_output @ W, the weight gradient
      grad_output^T @ X, and the bias gradient sums grad_output over the batch (a copy
      forward is a sum backward). Check grad_output's shape first.
    tests: [test_linear_matches_torch]
  - region: layer_norm_backward
    hint: >-
      From the cache (x_hat, sigma, gamma): grad_gamma sums grad_output * x_hat over
      the batch and grad_beta sums grad_output; with G = grad_output * gamma, the input
      gradient is G minus its row mean minus x_hat times the row mean of G * x_hat, all
      divided by sigma.
    tests: [test_layer_norm_matches_torch]
  - region: attention_head_backward
    hint: >-
      Walk the forward backwards: grad V = A^T grad_O and grad A = grad_O V^T; push
      grad A through softmax_backward to get grad S; grad Q = grad S K / sqrt(d) and
      grad K = grad S^T Q / sqrt(d); each weight's gradient is X^T times its
      projection's gradient over all batch rows, and grad X sums the three grad_P W^T.
    tests: [test_attention_head_matches_torch]
---

An autograd engine applies the chain rule one scalar ([the scalar engine](autograd.md))
or one tensor operation ([the tensor engine](tensor_autograd.md)) at a time and never
needs to know what the whole layer computes. Frameworks nevertheless ship hand-derived
backward rules for the layers that matter most, because a derivation done once on paper
is shorter, faster and numerically safer than the chain of tiny steps an engine would
record: softmax followed by cross-entropy collapses to $p - y$, layer norm's backward is
three lines, and attention's backward is four matrix products, ten with the three
projections. This lesson derives four of them, each to the point where it can be typed
straight into NumPy [@parr2018matrix; @karpathy2015backprop]:

1. a linear layer $Y = XW^\top + b$;
2. softmax with cross-entropy, averaged over the batch;
3. layer norm [@ba2016layer] with a scale $\gamma$ and a shift $\beta$;
4. one attention head [@vaswani2017attention],
   $O = \mathrm{softmax}(QK^\top/\sqrt{d})\,V$, with and without a causal mask.

Each piece is a pair of functions. The *forward* function returns its output and a
*cache*: whatever the backward pass will need (inputs, or intermediate values it would
be wasteful to recompute). The *backward* function takes the upstream gradient
$\partial L/\partial(\text{output})$ and the cache, and returns the gradient of the loss
with respect to every input.

## The recipe

Throughout, $L$ is a scalar loss and a bar denotes its gradient with respect to a
tensor: $\bar{Y} = \partial L / \partial Y$, read "the adjoint of $Y$". Every derivation
follows the same four steps.

1. **Write one entry of the output in index notation**, with every sum explicit, e.g.
   $Y_{nj} = \sum_i X_{ni} W_{ji} + b_j$. Matrix notation hides which index is summed;
   index notation cannot.
2. **Differentiate that entry** with respect to one entry of an input. Kronecker deltas
   ($\delta_{ij} = 1$ if $i = j$, else $0$) appear whenever an index of the output
   coincides with an index of the input.
3. **Apply the chain rule**, summing over *every* output entry the input can influence:

    $$
    \bar{X}_{ni} = \sum_{m, j} \bar{Y}_{mj}\, \frac{\partial Y_{mj}}{\partial X_{ni}} .
    $$

    The deltas collapse most of these sums.

4. **Read the surviving sum back as matrix products**, and check the shapes.

**The shape-check trick.** The gradient of a scalar with respect to a tensor has exactly
the shape of that tensor. So $\bar W$ for a `[d_out, d_in]` weight must itself be
`[d_out, d_in]`; if it is built from $\bar Y$ `[batch, d_out]` and $X$ `[batch, d_in]`,
the only product that lands on that shape is $\bar Y^\top X$. Often the shapes alone pin
down where every transpose goes. They cannot catch everything: when two dimensions are
equal (a square matrix, `seq = d_head`), a wrong transpose still has the right shape.

**The numerical gradient check.** The last line of defence is to compare each derived
gradient against central differences of the forward function,
$(L(\theta + h e_k) - L(\theta - h e_k)) / 2h$, one entry at a time
[@karpathy2015learning]. It is far too slow to train with, but in float64 it agrees
with a correct backward pass to between $10^{-10}$ and about $10^{-9}$, and a bug shows
up as an error near $1$. The demo runs this
check on all four pieces, then trains a small attention classifier assembled from them.
The test file checks every gradient against `torch.autograd` in float64.
"""

import argparse
import math
import numbers
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from annotated.data import integer, number
from annotated.figures import figure, save


# ## Checking shapes
#
# A backward pass with a wrong shape rarely crashes: NumPy broadcasts a `[batch]` vector
# against a `[batch, 1]` column and silently produces a `[batch, batch]` matrix. So
# every public function checks its arguments first and names the one that is wrong
# together with the shape it expected.
def require_shape(
    name: str, array: np.ndarray, expected: tuple[int | None, ...], meaning: str
) -> None:
    """Raise unless `array` is a NumPy array of shape `expected` (`None`: any size).

    `meaning` spells the shape in symbols (`"[batch, d_in]"`) so that the message says
    what each axis is.
    """
    if not isinstance(array, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy array of shape {meaning}, "
            f"got {type(array).__name__}"
        )
    matches = array.ndim == len(expected) and all(
        wanted is None or wanted == size for wanted, size in zip(expected, array.shape)
    )
    if not matches:
        sizes = ", ".join("?" if wanted is None else str(wanted) for wanted in expected)
        raise ValueError(
            f"{name} must have shape {meaning} = ({sizes}), got {array.shape}"
        )


# ## 1. The linear layer
#
# A batch of row vectors $X$ `[batch, d_in]` is mapped by a weight $W$ `[d_out, d_in]`
# (stored the way `torch.nn.Linear` stores it) and a bias $b$ `[d_out]`:
#
# $$
# Y = XW^\top + b, \qquad Y_{nj} = \sum_i X_{ni} W_{ji} + b_j .
# $$
def linear_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray
) -> tuple[np.ndarray, tuple]:
    r"""$Y = XW^\top + b$ `[batch, d_out]`, and the cache `(x, weight)`."""
    require_shape("x", x, (None, None), "[batch, d_in]")
    require_shape("weight", weight, (None, x.shape[1]), "[d_out, d_in]")
    require_shape("bias", bias, (weight.shape[0],), "[d_out]")
    output = x @ weight.T + bias  # [batch, d_out]
    return output, (x, weight)


# **Step 2: differentiate one entry.** $Y_{mj}$ depends on $X_{ni}$ only when $m = n$,
# on $W_{kl}$ only when $j = k$, and on $b_k$ only when $j = k$:
#
# $$
# \begin{aligned}
# \frac{\partial Y_{mj}}{\partial X_{ni}} &= \delta_{mn} W_{ji}, \\
# \frac{\partial Y_{mj}}{\partial W_{kl}} &= \delta_{jk} X_{ml}, \\
# \frac{\partial Y_{mj}}{\partial b_k} &= \delta_{jk} .
# \end{aligned}
# $$
#
# **Step 3: chain rule, and let the deltas collapse the sums.**
#
# $$
# \begin{aligned}
# \bar X_{ni} &= \sum_{m,j} \bar Y_{mj}\, \delta_{mn} W_{ji}
#   = \sum_j \bar Y_{nj} W_{ji}, \\
# \bar W_{kl} &= \sum_{m,j} \bar Y_{mj}\, \delta_{jk} X_{ml}
#   = \sum_m \bar Y_{mk} X_{ml}, \\
# \bar b_k &= \sum_{m,j} \bar Y_{mj}\, \delta_{jk} = \sum_m \bar Y_{mk} .
# \end{aligned}
# $$
#
# **Step 4: read them as matrices.** A sum over the shared index $j$ of
# $\bar Y_{nj} W_{ji}$ is the product $\bar Y W$; a sum over the batch index $m$ of
# $\bar Y_{mk} X_{ml}$ is $\bar Y^\top X$:
#
# $$
# \bar X = \bar Y W, \qquad \bar W = \bar Y^\top X, \qquad
# \bar b = \textstyle\sum_{\text{batch}} \bar Y .
# $$
#
# Shapes: `[batch, d_out] @ [d_out, d_in] = [batch, d_in]` is the shape of $X$, and
# `[d_out, batch] @ [batch, d_in] = [d_out, d_in]` is the shape of $W$. The bias shows a
# rule worth remembering: the forward pass *copies* $b$ to every row of the batch
# (broadcasting), so the backward pass *sums* the rows' gradients. A copy forward is a
# sum backward, and vice versa.
def linear_backward(
    grad_output: np.ndarray, cache: tuple
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Given $\bar Y$ `[batch, d_out]`, return $(\bar X, \bar W, \bar b)$.

    Each gradient has the shape of its tensor: $X$, $W$ and $b$.
    """
    x, weight = cache
    require_shape(
        "grad_output", grad_output, (x.shape[0], weight.shape[0]), "[batch, d_out]"
    )
    grad_x = grad_output @ weight  # [batch, d_out] @ [d_out, d_in] -> [batch, d_in]
    grad_weight = grad_output.T @ x  # [d_out, batch] @ [batch, d_in] -> [d_out, d_in]
    grad_bias = grad_output.sum(axis=0)  # [d_out]
    return grad_x, grad_weight, grad_bias


# ## 2. Softmax, and softmax with cross-entropy
#
# Softmax turns a row of scores $z$ `[K]` into probabilities,
# $p_j = e^{z_j} / \sum_k e^{z_k}$. Adding the same constant to every score leaves $p$
# unchanged, so we subtract the row's maximum first: the largest exponent becomes
# $e^0 = 1$ and nothing overflows. A score of $-\infty$ (used for masking in section 4)
# becomes a probability of exactly $0$.
def softmax(scores: np.ndarray) -> np.ndarray:
    """Softmax along the last axis, any leading axes: `[..., K] -> [..., K]`."""
    require_shape("scores", scores, (None,) * max(np.ndim(scores), 1), "[..., K]")
    shifted = scores - scores.max(axis=-1, keepdims=True)  # [..., K], largest entry 0
    exponentials = np.exp(shifted)  # [..., K]
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


# **The softmax Jacobian.** Every output $p_j$ depends on every input $z_l$, through the
# shared denominator $\Sigma = \sum_k e^{z_k}$, whose derivative is
# $\partial\Sigma/\partial z_l = e^{z_l}$. By the quotient rule:
#
# $$
# \begin{aligned}
# \frac{\partial p_j}{\partial z_l}
# &= \frac{\delta_{jl} e^{z_j}}{\Sigma} - \frac{e^{z_j} e^{z_l}}{\Sigma^2} \\
# &= p_j (\delta_{jl} - p_l) .
# \end{aligned}
# $$
#
# As a matrix that is $\mathrm{diag}(p) - pp^\top$, a `[K, K]` object. We never build
# it: contracting it with the upstream gradient $\bar p$ right away costs $O(K)$ instead
# of $O(K^2)$:
#
# $$
# \begin{aligned}
# \bar z_l &= \sum_j \bar p_j\, p_j (\delta_{jl} - p_l) \\
# &= p_l \bar p_l - p_l \sum_j \bar p_j p_j \\
# &= p_l \Big( \bar p_l - \sum_j \bar p_j p_j \Big) .
# \end{aligned}
# $$
#
# For many rows at once, with $\odot$ the elementwise product and the row sum kept as a
# column:
#
# $$
# \bar Z = P \odot \big( \bar P - \mathrm{rowsum}(\bar P \odot P) \big) .
# $$
#
# Shapes: $\mathrm{rowsum}$ gives `[..., 1]`, which broadcasts across the row, so
# $\bar Z$ has the shape of $Z$. Rows are independent: row $n$ of $P$ does not depend on
# row $m \ne n$ of $Z$.
def softmax_backward(grad_probs: np.ndarray, probs: np.ndarray) -> np.ndarray:
    r"""Given $\bar P$ and the softmax output $P$ (both `[..., K]`), return $\bar Z$."""
    require_shape("probs", probs, (None,) * max(np.ndim(probs), 1), "[..., K]")
    require_shape("grad_probs", grad_probs, probs.shape, "[..., K], the shape of probs")
    return probs * (
        grad_probs - (grad_probs * probs).sum(axis=-1, keepdims=True)
    )  # [..., K]


# **Cross-entropy** for a batch of logits $Z$ `[N, K]` and integer labels $y$ `[N]` is
# the mean negative log-probability of the right class. Written with the log-sum-exp,
# which we compute in the same stable way as softmax:
#
# $$
# \begin{aligned}
# L &= -\frac{1}{N} \sum_n \log p_{n y_n} \\
# &= \frac{1}{N} \sum_n \Big( -z_{n y_n} + \log \sum_k e^{z_{nk}} \Big) .
# \end{aligned}
# $$
def softmax_cross_entropy_forward(
    logits: np.ndarray, labels: np.ndarray
) -> tuple[float, tuple]:
    """The mean cross-entropy of `logits` `[batch, classes]` against `labels` `[batch]`.

    Returns the loss and the cache `(probs, labels)`.
    """
    require_shape("logits", logits, (None, None), "[batch, classes]")
    require_shape("labels", labels, (logits.shape[0],), "[batch]")
    batch, classes = logits.shape
    if batch == 0:
        raise ValueError(
            "logits must hold at least one row: the mean over an empty batch is "
            "undefined"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(
            f"labels must be integers in [0, {classes}), got dtype {labels.dtype}"
        )
    if labels.min() < 0 or labels.max() >= classes:
        raise ValueError(
            f"labels must lie in [0, classes) = [0, {classes}), "
            f"got [{labels.min()}, {labels.max()}]"
        )
    shifted = logits - logits.max(axis=1, keepdims=True)  # [batch, classes]
    log_probs = shifted - np.log(
        np.exp(shifted).sum(axis=1, keepdims=True)
    )  # [batch, classes]
    loss = -log_probs[np.arange(batch), labels].mean()
    return float(loss), (np.exp(log_probs), labels)


# **Route 1: straight from the log-sum-exp form.** Differentiate one term of the sum
# with respect to $z_{nj}$. The first part gives $-\delta_{j y_n}$; the second gives
# $e^{z_{nj}} / \sum_k e^{z_{nk}} = p_{nj}$:
#
# $$
# \begin{aligned}
# \frac{\partial L}{\partial z_{nj}}
# &= \frac{1}{N} \big( p_{nj} - \delta_{j y_n} \big), \\
# \bar Z &= \frac{\bar L}{N} \big( P - Y \big),
# \end{aligned}
# $$
#
# where $Y$ `[N, K]` is the one-hot matrix of the labels and $\bar L$ the upstream
# gradient of the loss (1 when $L$ is the final loss). This is the famous "$p - y$": the
# logits are pushed down by their predicted probability and the right class is pushed up
# by 1.
#
# **Route 2: through the softmax Jacobian**, to see why frameworks fuse the two. With
# $\bar p_{nk} = -\delta_{k y_n} / (N p_{nk})$, the inner sum is
# $\sum_k \bar p_{nk} p_{nk} = -1/N$, and
#
# $$
# \begin{aligned}
# \bar z_{nj}
# &= p_{nj} \Big( -\frac{\delta_{j y_n}}{N p_{nj}} + \frac{1}{N} \Big) \\
# &= \frac{1}{N} \big( p_{nj} - \delta_{j y_n} \big) ,
# \end{aligned}
# $$
#
# the same answer, but reached by dividing by $p_{n y_n}$ and multiplying it back. When
# the model is confidently wrong, $p_{n y_n}$ underflows to $0$ and the unfused route
# computes $0 \cdot \infty$ = `nan`. The fused rule never divides.
def softmax_cross_entropy_backward(grad_loss: float, cache: tuple) -> np.ndarray:
    r"""Given $\bar L$ (a scalar), return $\bar Z = \bar L\,(P - Y)/N$, `[batch, K]`."""
    if np.ndim(grad_loss) != 0:
        raise ValueError(
            "grad_loss must be a scalar (the loss is one number), "
            f"got shape {np.shape(grad_loss)}"
        )
    probs, labels = cache
    batch = probs.shape[0]
    probs_minus_onehot = probs.copy()  # [batch, classes]
    probs_minus_onehot[np.arange(batch), labels] -= 1.0
    return grad_loss * probs_minus_onehot / batch  # [batch, classes]


# ## 3. Layer norm
#
# Layer norm standardises each row $x$ `[D]` of $X$ `[N, D]` over its $D$ features, then
# rescales each feature with $\gamma$ `[D]` and shifts it with $\beta$ `[D]`. Per row,
# dropping the row index:
#
# $$
# \begin{aligned}
# \mu &= \frac{1}{D} \sum_i x_i, \qquad v = \frac{1}{D} \sum_i (x_i - \mu)^2, \\
# \sigma &= \sqrt{v + \epsilon}, \qquad \hat x_i = \frac{x_i - \mu}{\sigma}, \\
# y_i &= \gamma_i \hat x_i + \beta_i .
# \end{aligned}
# $$
#
# The variance is the biased one (divide by $D$) and $\epsilon$ sits inside the square
# root, as in `torch.nn.LayerNorm`. The cache keeps $\hat X$ and $\sigma$, from which
# the whole backward pass follows.
def layer_norm_forward(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5
) -> tuple[np.ndarray, tuple]:
    r"""$Y = \gamma \odot \hat X + \beta$ `[batch, features]`, and the cache.

    The cache is `(x_hat, sigma, gamma)`.
    """
    require_shape("x", x, (None, None), "[batch, features]")
    require_shape("gamma", gamma, (x.shape[1],), "[features]")
    require_shape("beta", beta, (x.shape[1],), "[features]")
    if not (isinstance(eps, numbers.Real) and 0 < eps < math.inf):
        raise ValueError(
            "eps must be a finite number > 0 so that a constant row does not divide "
            f"by zero, got {eps!r}"
        )
    mean = x.mean(axis=1, keepdims=True)  # [batch, 1]
    centred = x - mean  # [batch, features]
    variance = (centred**2).mean(axis=1, keepdims=True)  # [batch, 1]
    sigma = np.sqrt(variance + eps)  # [batch, 1]
    x_hat = centred / sigma  # [batch, features]
    output = gamma * x_hat + beta  # [batch, features]
    return output, (x_hat, sigma, gamma)


# **The easy part: $\gamma$ and $\beta$.** $y_{ni} = \gamma_i \hat x_{ni} + \beta_i$
# copies $\gamma$ and $\beta$ to every row, so (copy forward, sum backward)
#
# $$
# \bar\gamma_i = \sum_n \bar y_{ni}\, \hat x_{ni}, \qquad
# \bar\beta_i = \sum_n \bar y_{ni},
# $$
#
# and the gradient reaching $\hat x$ is $g_{ni} = \partial L / \partial \hat x_{ni} =
# \bar y_{ni} \gamma_i$, i.e. $G = \bar Y \odot \gamma$ `[N, D]`.
#
# **The hard part: $\hat x$ with respect to $x$.** Every $\hat x_j$ depends on every
# $x_i$ of its row, through $\mu$ and $\sigma$. First the two statistics:
#
# $$
# \begin{aligned}
# \frac{\partial \mu}{\partial x_i} &= \frac{1}{D}, \\
# \frac{\partial v}{\partial x_i}
# &= \frac{2}{D} \sum_j (x_j - \mu) \Big( \delta_{ij} - \frac{1}{D} \Big) \\
# &= \frac{2}{D} (x_i - \mu)
#   - \frac{2}{D^2} \underbrace{\sum_j (x_j - \mu)}_{=\,0} \\
# &= \frac{2}{D} (x_i - \mu),
# \end{aligned}
# $$
#
# $$
# \frac{\partial \sigma}{\partial x_i}
# = \frac{1}{2\sigma} \frac{\partial v}{\partial x_i}
# = \frac{x_i - \mu}{D \sigma} = \frac{\hat x_i}{D} .
# $$
#
# Then the product rule on $\hat x_j = (x_j - \mu)\, \sigma^{-1}$:
#
# $$
# \begin{aligned}
# \frac{\partial \hat x_j}{\partial x_i}
# &= \frac{1}{\sigma} \Big( \delta_{ij} - \frac{1}{D} \Big)
#   - \frac{x_j - \mu}{\sigma^2} \cdot \frac{\hat x_i}{D} \\
# &= \frac{1}{\sigma}
#   \Big( \delta_{ij} - \frac{1}{D} - \frac{\hat x_i \hat x_j}{D} \Big) .
# \end{aligned}
# $$
#
# **Chain rule** over all $j$ of the row, and the delta collapses the first sum:
#
# $$
# \begin{aligned}
# \bar x_i &= \sum_j g_j \frac{\partial \hat x_j}{\partial x_i} \\
# &= \frac{1}{\sigma} \Big( g_i - \frac{1}{D} \sum_j g_j
#   - \hat x_i \cdot \frac{1}{D} \sum_j g_j \hat x_j \Big) .
# \end{aligned}
# $$
#
# **Matrix form**, with means taken over the feature axis and kept as `[N, 1]` columns:
#
# $$
# \begin{aligned}
# \bar X = \frac{1}{\sigma} \odot \Big( &G - \mathrm{mean}(G) \\
# &- \hat X \odot \mathrm{mean}(G \odot \hat X) \Big) .
# \end{aligned}
# $$
#
# Every term is `[N, D]` or a broadcast `[N, 1]` column, so $\bar X$ has the shape of
# $X$. The formula reads as a projection: from $G$ it removes the component along the
# all-ones vector and (up to $\epsilon$) the component along $\hat x$, the two
# directions in which moving $x$ does not change $\hat x$ (adding a constant to a row,
# or scaling it). In particular every row of $\bar X$ sums to exactly zero.
def layer_norm_backward(
    grad_output: np.ndarray, cache: tuple
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Given $\bar Y$ `[batch, features]`, return $(\bar X, \bar\gamma, \bar\beta)$."""
    x_hat, sigma, gamma = cache
    require_shape("grad_output", grad_output, x_hat.shape, "[batch, features]")
    grad_gamma = (grad_output * x_hat).sum(axis=0)  # [features]
    grad_beta = grad_output.sum(axis=0)  # [features]
    grad_x_hat = grad_output * gamma  # [batch, features], the G of the derivation
    grad_x = (
        grad_x_hat
        - grad_x_hat.mean(axis=1, keepdims=True)  # [batch, 1]
        - x_hat * (grad_x_hat * x_hat).mean(axis=1, keepdims=True)  # [batch, features]
    ) / sigma  # [batch, features]
    return grad_x, grad_gamma, grad_beta


# ## 4. One attention head
#
# A sequence $X$ `[T, d_model]` of $T$ token vectors is projected three ways by weights
# `[d_model, d]` (here multiplied on the right, $XW$, as in the attention papers),
# compared, and mixed:
#
# $$
# \begin{aligned}
# Q &= XW_q, \quad K = XW_k, \quad V = XW_v, \\
# S &= QK^\top / \sqrt d, \quad A = \mathrm{softmax}_{\text{rows}}(S), \\
# O &= AV .
# \end{aligned}
# $$
#
# $S$ and $A$ are `[T, T]`: row $t$ of $A$ says how much position $t$ draws from each
# position. A **causal mask** forbids position $t$ from looking at later positions
# $u > t$ by adding $-\infty$ to those scores before the softmax, so their weights
# become exactly $0$. Dividing by $\sqrt d$ keeps the scores' variance near 1 when $Q$
# and $K$ have unit-variance entries, so the softmax does not saturate at the start.
#
# The code accepts a leading batch axis, `[batch, T, d_model]`: NumPy's `@` treats it as
# a stack of independent sequences, and `swapaxes(-1, -2)` is the transpose of each one.
def attention_head_forward(
    x: np.ndarray,
    w_query: np.ndarray,
    w_key: np.ndarray,
    w_value: np.ndarray,
    causal: bool = False,
) -> tuple[np.ndarray, tuple]:
    r"""$O = \mathrm{softmax}(QK^\top/\sqrt d)\,V$ `[..., seq, d_head]`, and a cache."""
    if not isinstance(x, np.ndarray):
        raise TypeError(
            "x must be a numpy array of shape [batch, seq, d_model], "
            f"got {type(x).__name__}"
        )
    if x.ndim not in (2, 3):
        raise ValueError(
            f"x must have shape [seq, d_model] or [batch, seq, d_model], got {x.shape}"
        )
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be True or False, got {causal!r}")
    d_model, seq = x.shape[-1], x.shape[-2]
    require_shape("w_query", w_query, (d_model, None), "[d_model, d_head]")
    d_head = w_query.shape[1]
    require_shape("w_key", w_key, (d_model, d_head), "[d_model, d_head]")
    require_shape("w_value", w_value, (d_model, d_head), "[d_model, d_head]")
    query = x @ w_query  # [..., seq, d_head]
    key = x @ w_key  # [..., seq, d_head]
    value = x @ w_value  # [..., seq, d_head]
    scores = query @ key.swapaxes(-1, -2) / math.sqrt(d_head)  # [..., seq, seq]
    if causal:
        future = np.triu(
            np.ones((seq, seq), dtype=bool), k=1
        )  # [seq, seq]: key > query
        scores = np.where(future, -np.inf, scores)  # [..., seq, seq]
    attention = softmax(scores)  # [..., seq, seq], each row sums to 1
    output = attention @ value  # [..., seq, d_head]
    return output, (x, w_query, w_key, w_value, query, key, value, attention)


# The backward pass walks the forward equations in reverse, one product at a time, for
# one sequence.
#
# **$O = AV$.** $O_{td} = \sum_u A_{tu} V_{ud}$, so $\partial O_{td} / \partial A_{su} =
# \delta_{ts} V_{ud}$ and $\partial O_{td} / \partial V_{ue} = A_{tu} \delta_{de}$:
#
# $$
# \begin{aligned}
# \bar A_{su} &= \sum_{t,d} \bar O_{td}\, \delta_{ts} V_{ud}
#   = \sum_d \bar O_{sd} V_{ud}, \\
# \bar V_{ue} &= \sum_{t,d} \bar O_{td}\, A_{tu} \delta_{de}
#   = \sum_t A_{tu} \bar O_{te},
# \end{aligned}
# $$
#
# that is, $\bar A = \bar O V^\top$ and $\bar V = A^\top \bar O$. Shapes: `[T, d] @ [d,
# T] = [T, T]` for $\bar A$, `[T, T] @ [T, d] = [T, d]` for $\bar V$.
#
# **$A = \mathrm{softmax}(S)$, row by row.** This is section 2's rule, applied to every
# row of the `[T, T]` matrix:
#
# $$
# \bar S = A \odot \big( \bar A - \mathrm{rowsum}(\bar A \odot A) \big) .
# $$
#
# With a causal mask the softmax reads $S + M$, where $M_{tu} = -\infty$ for $u > t$ and
# $0$ otherwise. $M$ is a constant, so $\partial (S + M) / \partial S$ is the identity
# and the rule above is unchanged. Better still, $A_{tu} = 0$ at every masked entry, so
# the factor $A \odot$ makes $\bar S_{tu} = 0$ there: a score that had no influence on
# the loss gets no gradient, without a line of extra code.
#
# **$S = QK^\top / \sqrt d$.** $S_{tu} = \frac{1}{\sqrt d} \sum_c Q_{tc} K_{uc}$, so
#
# $$
# \begin{aligned}
# \bar Q_{tc} &= \frac{1}{\sqrt d} \sum_u \bar S_{tu} K_{uc}
#   \;\Rightarrow\; \bar Q = \frac{\bar S K}{\sqrt d}, \\
# \bar K_{uc} &= \frac{1}{\sqrt d} \sum_t \bar S_{tu} Q_{tc}
#   \;\Rightarrow\; \bar K = \frac{\bar S^\top Q}{\sqrt d} .
# \end{aligned}
# $$
#
# Shapes: `[T, T] @ [T, d] = [T, d]` for both. Here the shape check is weak: $\bar S$
# and $\bar S^\top$ are both `[T, T]`, so only the index derivation (or the numerical
# check) tells them apart.
#
# **$Q = XW_q$ (and likewise $K$, $V$).** $Q_{tc} = \sum_i X_{ti} (W_q)_{ic}$, the
# linear layer of section 1 with the weight already transposed:
#
# $$
# \overline{W_q} = X^\top \bar Q, \qquad \bar X \mathrel{+}= \bar Q\, W_q^\top .
# $$
#
# $X$ feeds three paths, to $Q$, $K$ and $V$, and the multivariate chain rule *adds* the
# contributions of all paths:
#
# $$
# \bar X = \bar Q W_q^\top + \bar K W_k^\top + \bar V W_v^\top .
# $$
#
# With a batch axis every weight is shared by all sequences and all positions (a copy
# forward), so its gradient sums over both: flattening $X$ to `[batch·T, d_model]` and
# $\bar Q$ to `[batch·T, d]` turns that double sum into one matrix product.
def attention_head_backward(
    grad_output: np.ndarray, cache: tuple
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    r"""Given $\bar O$ `[..., seq, d_head]`, the gradients of $X$ and of the weights.

    They come as $(\bar X, \overline{W_q}, \overline{W_k}, \overline{W_v})$.
    """
    x, w_query, w_key, w_value, query, key, value, attention = cache
    require_shape(
        "grad_output",
        grad_output,
        value.shape,
        "[..., seq, d_head], the shape of the output",
    )
    d_model, d_head = w_query.shape
    grad_value = (
        attention.swapaxes(-1, -2) @ grad_output
    )  # [..., seq, seq] @ [..., seq, d_head]
    grad_attention = grad_output @ value.swapaxes(
        -1, -2
    )  # [..., seq, d_head] @ [..., d_head, seq]
    grad_scores = softmax_backward(
        grad_attention, attention
    )  # [..., seq, seq], 0 where masked
    grad_query = grad_scores @ key / math.sqrt(d_head)  # [..., seq, d_head]
    grad_key = (
        grad_scores.swapaxes(-1, -2) @ query / math.sqrt(d_head)
    )  # [..., seq, d_head]
    x_rows = x.reshape(-1, d_model)  # [batch * seq, d_model]
    grad_w_query = x_rows.T @ grad_query.reshape(-1, d_head)  # [d_model, d_head]
    grad_w_key = x_rows.T @ grad_key.reshape(-1, d_head)  # [d_model, d_head]
    grad_w_value = x_rows.T @ grad_value.reshape(-1, d_head)  # [d_model, d_head]
    grad_x = (
        grad_query @ w_query.T + grad_key @ w_key.T + grad_value @ w_value.T
    )  # [..., seq, d_model]
    return grad_x, grad_w_query, grad_w_key, grad_w_value


# ## 5. The numerical gradient check
#
# Expand the loss around one parameter entry $\theta$ with Taylor's theorem, once with
# $+h$ and once with $-h$:
#
# $$
# \begin{aligned}
# L(\theta \pm h) = L(\theta) &\pm h L'(\theta) + \frac{h^2}{2} L''(\theta) \\
# &\pm \frac{h^3}{6} L'''(\theta) + O(h^4) .
# \end{aligned}
# $$
#
# Subtracting, the even terms cancel:
#
# $$
# \frac{L(\theta + h) - L(\theta - h)}{2h}
# = L'(\theta) + \frac{h^2}{6} L'''(\theta) + O(h^4) .
# $$
#
# The truncation error shrinks like $h^2$, but each evaluation of $L$ carries a rounding
# error of about $\varepsilon |L|$ (machine epsilon
# $\varepsilon \approx 2.2 \times 10^{-16}$ in float64), which the division by $2h$
# amplifies to $\varepsilon |L| / h$. The two balance near
# $h \approx \varepsilon^{1/3} \approx 10^{-5}$, where the total error is about
# $\varepsilon^{2/3} \approx 10^{-10}$ relative to the gradient's size. So with
# $h = 10^{-6}$ a correct backward pass agrees to between $10^{-10}$ and about
# $10^{-9}$; a wrong one (a missing term, a transposed product) is off by order $1$. The
# price is two forward passes per parameter entry, where backpropagation gets every
# entry for the cost of about two forward passes in total.
def numerical_gradient(
    loss: Callable[[], float], array: np.ndarray, step: float = 1e-6
) -> np.ndarray:
    """Central differences of the scalar `loss()` with respect to each entry of `array`.

    `loss` takes no arguments and must read `array`; each entry is nudged in place and
    restored, even when `loss` raises. `array` must hold floats: nudging an integer
    entry by $10^{-6}$ would round the nudge away.
    """
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.floating):
        raise TypeError(
            "array must be a numpy array of floats, got "
            f"{getattr(array, 'dtype', type(array).__name__)}"
        )
    if not (isinstance(step, numbers.Real) and 0 < step < math.inf):
        raise ValueError(f"step must be a finite number > 0, got {step!r}")
    gradient = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        original = array[index]
        try:
            array[index] = original + step
            loss_plus = loss()
            array[index] = original - step
            loss_minus = loss()
        finally:
            array[index] = original
        gradient[index] = (loss_plus - loss_minus) / (2 * step)
    return gradient


# The error is measured relative to the gradient's largest entry, not entry by entry: an
# entry that is truly $0$ comes out of finite differences as $10^{-11}$, and dividing by
# it would flag a correct gradient. The two arrays must have the same shape: NumPy would
# otherwise broadcast a `[d]` gradient against a `[1, d]` one and compare the wrong
# entries.
def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    r"""$\max|a - n| \,/\, \max(\max|a|, \max|n|)$, or $0$ when both are all zero."""
    if np.shape(analytic) != np.shape(numeric):
        raise ValueError(
            f"analytic has shape {np.shape(analytic)} but numeric has "
            f"{np.shape(numeric)}; a gradient has the shape of its input"
        )
    scale = max(np.abs(analytic).max(), np.abs(numeric).max())
    return 0.0 if scale == 0 else float(np.abs(analytic - numeric).max() / scale)


# To check a backward pass we need a scalar loss whose upstream gradient we know.
# $L = \sum Y \odot R$ for a fixed random $R$ has $\bar Y = R$ exactly, so feeding $R$
# to the backward function must reproduce the finite differences of $L$. A random $R$
# (rather than all ones) exercises every direction, and it catches a backward pass that
# ignores its upstream gradient: such a pass returns the gradient of $\sum Y$, which
# differs from that of $\sum Y \odot R$ by order 1. The checker also insists on one
# gradient per input, each of its input's shape, since `zip` would silently drop a
# missing one.
def gradient_check(
    forward: Callable,
    backward: Callable,
    inputs: list[np.ndarray],
    rng: np.random.Generator,
) -> float:
    """The worst `relative_error` of `backward` against differences of `forward`.

    `forward(*inputs)` returns `(output, cache)`; `backward(grad_output, cache)` returns
    one gradient per input, in the same order. The inputs are nudged and restored, so
    they come back unchanged.
    """
    output, cache = forward(*inputs)
    upstream = rng.standard_normal(np.shape(output))  # [*output's shape], maybe ()
    analytic = backward(upstream, cache)
    if len(analytic) != len(inputs):
        raise ValueError(
            f"backward returned {len(analytic)} gradients for {len(inputs)} inputs"
        )
    worst = 0.0
    for array, gradient in zip(inputs, analytic):
        numeric = numerical_gradient(
            lambda: np.sum(forward(*inputs)[0] * upstream), array
        )
        worst = max(worst, relative_error(gradient, numeric))
    return worst


# ## 6. A model assembled from the pieces
#
# The task: each sequence holds $T$ random tokens from a vocabulary of $V$, one-hot
# encoded, and exactly one position carries an extra *flag* feature. The label is the
# token at the flagged position. Averaging the sequence throws away which token was
# flagged, so a model must *attend* to the flagged position: a query that matches the
# flag feature in every key, and a value that copies the token's identity.
def flagged_token_task(
    n: int, seq_len: int, vocab: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs `[n, seq_len, vocab + 1]`, labels `[n]`, the flagged positions `[n]`."""
    for name, value in [("n", n), ("seq_len", seq_len), ("vocab", vocab)]:
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Integral)
            or value < 1
        ):
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    tokens = rng.integers(0, vocab, size=(n, seq_len))  # [n, seq_len]
    flagged = rng.integers(0, seq_len, size=n)  # [n]
    x = np.zeros((n, seq_len, vocab + 1))  # [n, seq_len, vocab + 1]
    x[np.arange(n)[:, None], np.arange(seq_len), tokens] = 1.0  # one-hot token identity
    x[np.arange(n), flagged, vocab] = 1.0  # the flag feature, last column
    labels = tokens[np.arange(n), flagged]  # [n]
    return x, labels, flagged


# The model is attention head → mean over positions → layer norm → linear → softmax
# cross-entropy. Its backward pass is the forward pass read bottom to top, each backward
# function handing its input gradient to the one below. The only step not derived above
# is the mean over $T$ positions, which copies $\bar{\text{pooled}}/T$ back to every
# position.
def classifier_loss_and_gradients(
    params: dict[str, np.ndarray], x: np.ndarray, labels: np.ndarray
) -> tuple[float, np.ndarray, dict[str, np.ndarray]]:
    """The loss, the logits `[batch, vocab]`, and the loss's gradient per parameter."""
    seq_len = x.shape[1]
    attended, attention_cache = attention_head_forward(
        x, params["w_query"], params["w_key"], params["w_value"]
    )
    pooled = attended.mean(axis=1)  # [batch, d_head]
    normed, norm_cache = layer_norm_forward(
        pooled, params["gamma"], params["beta"]
    )  # [batch, d_head]
    logits, linear_cache = linear_forward(
        normed, params["weight"], params["bias"]
    )  # [batch, vocab]
    loss, loss_cache = softmax_cross_entropy_forward(logits, labels)

    grad_logits = softmax_cross_entropy_backward(1.0, loss_cache)  # [batch, vocab]
    grad_normed, grad_weight, grad_bias = linear_backward(
        grad_logits, linear_cache
    )  # [batch, d_head]
    grad_pooled, grad_gamma, grad_beta = layer_norm_backward(
        grad_normed, norm_cache
    )  # [batch, d_head]
    grad_attended = np.repeat(
        grad_pooled[:, None, :] / seq_len, seq_len, axis=1
    )  # [batch, seq, d_head]
    _, grad_w_query, grad_w_key, grad_w_value = attention_head_backward(
        grad_attended, attention_cache
    )
    gradients = {
        "w_query": grad_w_query,
        "w_key": grad_w_key,
        "w_value": grad_w_value,
        "gamma": grad_gamma,
        "beta": grad_beta,
        "weight": grad_weight,
        "bias": grad_bias,
    }
    return loss, logits, gradients


def init_classifier(
    vocab: int, d_head: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    r"""Weights scaled by $1/\sqrt{\text{fan-in}}$; $\gamma = 1$, $\beta = 0$."""
    d_model = vocab + 1
    return {
        "w_query": rng.standard_normal((d_model, d_head)) / math.sqrt(d_model),
        "w_key": rng.standard_normal((d_model, d_head)) / math.sqrt(d_model),
        "w_value": rng.standard_normal((d_model, d_head)) / math.sqrt(d_model),
        "gamma": np.ones(d_head),
        "beta": np.zeros(d_head),
        "weight": rng.standard_normal((vocab, d_head)) / math.sqrt(d_head),
        "bias": np.zeros(vocab),
    }


# ## The example
#
# One causal attention head on a sequence of 4 tokens with 8 features and a
# 3-dimensional head, run forward and backward by the function below. Its dataflow
# diagram is declared by `dataflow`, not traced: it draws the forward graph and, below
# it, the backward graph the derivation produced. Every adjoint has the shape of its
# tensor, which is why the diagram can read the shapes of $X$ and the weights off their
# gradients.
def attention_head_forward_backward(
    x: np.ndarray,
    w_query: np.ndarray,
    w_key: np.ndarray,
    w_value: np.ndarray,
    grad_output: np.ndarray,
    causal: bool = False,
) -> dict[str, np.ndarray]:
    """Run the head forward, `grad_output` backward; the output and every gradient."""
    output, cache = attention_head_forward(x, w_query, w_key, w_value, causal)
    grad_x, grad_w_query, grad_w_key, grad_w_value = attention_head_backward(
        grad_output, cache
    )
    return {
        "output": output,
        "x": grad_x,
        "w_query": grad_w_query,
        "w_key": grad_w_key,
        "w_value": grad_w_value,
    }


def example():
    """A small example: `fn(*args)` runs a causal attention head forward and back."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8))  # [seq, d_model]
    w_query, w_key, w_value = (
        rng.standard_normal((8, 3)) / math.sqrt(8) for _ in range(3)
    )  # [d_model, d_head]
    grad_output = rng.standard_normal((4, 3))  # [seq, d_head]
    return attention_head_forward_backward, (
        x,
        w_query,
        w_key,
        w_value,
        grad_output,
        True,
    )


def dataflow(
    output: dict[str, np.ndarray],
) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """The head's forward graph and the backward graph of section 4, with shapes."""
    seq, d_model = output["x"].shape  # the gradient of X has the shape of X
    d_head = output["output"].shape[1]
    tokens = f"[{seq}, {d_head}]"
    square = f"[{seq}, {seq}]"
    weights = f"[{d_model}, {d_head}]"
    nodes = [
        ("x", f"X [{seq}, {d_model}]"),
        ("w_query", f"W_q {weights}"),
        ("w_key", f"W_k {weights}"),
        ("w_value", f"W_v {weights}"),
        ("query", "Q = X W_q"),
        ("key", "K = X W_k"),
        ("value", "V = X W_v"),
        ("scores", "S = Q Kᵀ / √d, causal mask"),
        ("attention", "A = softmax(S)"),
        ("output", "O = A V"),
        ("grad_output", f"dO {tokens}"),
        ("grad_value", "dV = Aᵀ dO"),
        ("grad_attention", "dA = dO Vᵀ"),
        ("grad_scores", "dS = A ⊙ (dA − rowsum(dA ⊙ A))"),
        ("grad_query", "dQ = dS K / √d"),
        ("grad_key", "dK = dSᵀ Q / √d"),
        ("grad_weights", f"dW_q, dW_k, dW_v = Xᵀ (dQ, dK, dV) {weights}"),
        ("grad_x", f"dX = dQ W_qᵀ + dK W_kᵀ + dV W_vᵀ [{seq}, {d_model}]"),
    ]
    edges = [
        ("x", "query", f"[{seq}, {d_model}]"),
        ("x", "key", f"[{seq}, {d_model}]"),
        ("x", "value", f"[{seq}, {d_model}]"),
        ("w_query", "query", weights),
        ("w_key", "key", weights),
        ("w_value", "value", weights),
        ("query", "scores", tokens),
        ("key", "scores", tokens),
        ("scores", "attention", square),
        ("attention", "output", square),
        ("value", "output", tokens),
        ("output", "grad_output", "upstream gradient"),
        ("grad_output", "grad_value", tokens),
        ("grad_output", "grad_attention", tokens),
        ("grad_attention", "grad_scores", square),
        ("attention", "grad_scores", f"cached A {square}"),
        ("grad_scores", "grad_query", square),
        ("grad_scores", "grad_key", square),
        ("grad_query", "grad_weights", tokens),
        ("grad_key", "grad_weights", tokens),
        ("grad_value", "grad_weights", tokens),
        ("grad_query", "grad_x", tokens),
        ("grad_key", "grad_x", tokens),
        ("grad_value", "grad_x", tokens),
    ]
    return nodes, edges


# ## The demo
#
# First the numerical check of all four backward passes (the attention head twice, with
# and without the mask) on small random float64 inputs.
def run_gradient_checks(rng: np.random.Generator) -> dict[str, float]:
    """Check each backward pass numerically on random inputs; each one's worst error."""
    batch, d_in, d_out, seq, d_head = 5, 4, 3, 6, 3
    labels = rng.integers(0, d_out, size=batch)
    checks = {
        "linear": (
            linear_forward,
            linear_backward,
            [
                rng.standard_normal((batch, d_in)),
                rng.standard_normal((d_out, d_in)),
                rng.standard_normal(d_out),
            ],
        ),
        "softmax_cross_entropy": (
            lambda logits: softmax_cross_entropy_forward(logits, labels),
            lambda grad_loss, cache: (
                softmax_cross_entropy_backward(grad_loss, cache),
            ),
            [rng.standard_normal((batch, d_out))],
        ),
        "layer_norm": (
            layer_norm_forward,
            layer_norm_backward,
            [
                rng.standard_normal((batch, d_in)),
                rng.standard_normal(d_in),
                rng.standard_normal(d_in),
            ],
        ),
        "attention": (
            attention_head_forward,
            attention_head_backward,
            [rng.standard_normal((2, seq, d_in))]
            + [rng.standard_normal((d_in, d_head)) for _ in range(3)],
        ),
        "attention_causal": (
            lambda *inputs: attention_head_forward(*inputs, causal=True),
            attention_head_backward,
            [rng.standard_normal((2, seq, d_in))]
            + [rng.standard_normal((d_in, d_head)) for _ in range(3)],
        ),
    }
    return {
        name: gradient_check(forward, backward, inputs, rng)
        for name, (forward, backward, inputs) in tqdm(
            checks.items(), desc="gradient checks"
        )
    }


# Two figures: the check's errors on a log scale, against the line where a bug would
# show, and the attention pattern the trained head puts on a few held-out sequences.
def plot_gradient_check(errors: dict[str, float], path: Path) -> None:
    """The worst relative error of each backward pass, on a log scale."""
    fig, axis = figure()
    names = list(errors)
    axis.barh(names, [max(errors[name], 1e-17) for name in names], color="tab:blue")
    axis.axvline(1e-6, color="tab:red", linestyle="--", label="above this, a bug")
    axis.set_xscale("log")
    axis.set_xlim(1e-13, 1.0)
    axis.set_xlabel(r"max relative error $|a - n| \,/\, \max(|a|, |n|)$")
    axis.invert_yaxis()
    axis.legend(loc="lower right")
    smallest, largest = min(errors.values()), max(errors.values())
    save(
        fig,
        path,
        caption="The worst relative error between each hand-derived backward pass and "
        "central differences of its forward pass, in float64. Every one lies between "
        f"{smallest:.1e} and {largest:.1e}; the largest is "
        f"{1e-6 / max(largest, 1e-17):,.0f} times below the 1e-6 line. A wrong "
        "formula lands near 1.",
    )


def plot_attention(
    attention: np.ndarray, x: np.ndarray, flagged: np.ndarray, path: Path
) -> None:
    """The learned attention weights `[3, seq, seq]` of three held-out sequences."""
    vocab = x.shape[2] - 1
    fig, axes = figure(panels=len(attention))
    for axis, weights, sequence, position in zip(axes, attention, x, flagged):
        tokens = sequence[:, :vocab].argmax(axis=1)  # [seq]
        ticks = [
            f"{token}*" if index == position else str(token)
            for index, token in enumerate(tokens)
        ]
        axis.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0)
        axis.set_xticks(range(len(ticks)), ticks)
        axis.set_yticks(range(len(ticks)), ticks)
        axis.set_xlabel("key token (* flagged)")
        axis.set_ylabel("query token")
    save(
        fig,
        path,
        caption="Attention weights of the trained head on three held-out sequences, "
        "one row per query token, brighter for more weight. Every query puts almost "
        "all of its weight on the flagged token (marked *), whose identity is the "
        "label.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Check every backward pass numerically, then train the classifier with them."""
    parser = argparse.ArgumentParser(
        description="Check hand-derived backward passes and train with them.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--steps",
        type=integer(at_least=0),
        default=300,
        help="SGD steps for the attention classifier",
    )
    parser.add_argument(
        "--batch", type=integer(at_least=1), default=64, help="sequences per SGD step"
    )
    parser.add_argument(
        "--seq-len", type=integer(at_least=1), default=8, help="tokens per sequence"
    )
    parser.add_argument(
        "--vocab",
        type=integer(at_least=2),
        default=8,
        help="vocabulary size, which is also the class count",
    )
    parser.add_argument(
        "--d-head",
        type=integer(at_least=1),
        default=16,
        help="width of the attention head",
    )
    parser.add_argument(
        "--lr", type=number(above=0), default=0.1, help="SGD learning rate"
    )
    parser.add_argument(
        "--momentum", type=number(at_least=0, below=1), default=0.9, help="SGD momentum"
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--out", default="out/backprop_by_hand", help="folder for the figures"
    )
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)

    errors = run_gradient_checks(rng)
    print("gradient check, max relative error against central differences:")
    for name, error in errors.items():
        print(f"  {name:<22} {error:.1e}")

    # Then the classifier of section 6, trained with nothing but the hand-derived
    # gradients and plain SGD with momentum: for every parameter $\theta$,
    # $m \leftarrow \mu m + \bar\theta$ and $\theta \leftarrow \theta - \eta m$.
    params = init_classifier(args.vocab, args.d_head, rng)
    velocity = {name: np.zeros_like(value) for name, value in params.items()}
    progress = tqdm(range(args.steps), desc="training")
    for step in progress:
        x, labels, _ = flagged_token_task(args.batch, args.seq_len, args.vocab, rng)
        loss, _, gradients = classifier_loss_and_gradients(params, x, labels)
        for name, gradient in gradients.items():
            velocity[name] = args.momentum * velocity[name] + gradient
            params[name] -= args.lr * velocity[name]
        if step % 25 == 0:
            progress.set_postfix(loss=f"{loss:.3f}")

    x_test, labels_test, flagged_test = flagged_token_task(
        2000, args.seq_len, args.vocab, rng
    )
    _, logits, _ = classifier_loss_and_gradients(params, x_test, labels_test)
    accuracy = float((logits.argmax(axis=1) == labels_test).mean())
    print(f"accuracy {accuracy:.3f} (chance {1 / args.vocab:.3f})")

    shown = x_test[:3]  # [3, seq, vocab + 1]
    _, attention_cache = attention_head_forward(
        shown, params["w_query"], params["w_key"], params["w_value"]
    )
    out = Path(args.out)
    plot_gradient_check(errors, out / "gradient_check.png")
    plot_attention(attention_cache[-1], shown, flagged_test[:3], out / "attention.png")
    return {**errors, "accuracy": accuracy}


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Derive the backward pass of RMSNorm, $y_i = \gamma_i x_i / \sqrt{\frac{1}{D}\sum_j
#    x_j^2 + \epsilon}$, the same way as layer norm's. Which of layer norm's terms
#    disappears, and which direction does the gradient still project out? Check it with
#    `gradient_check`.
# 2. Delete the `- x_hat * (...)` term from `layer_norm_backward` and run the demo. How
#    large is the reported error, and does the classifier still train? What does that
#    say about trusting a falling loss?
# 3. In `attention_head_backward`, swap the transposes: compute
#    $\bar Q = \bar S^\top K / \sqrt d$ and $\bar K = \bar S Q / \sqrt d$. Every shape
#    still agrees, so nothing crashes. Does `gradient_check` catch it with and without
#    the causal mask? Why would it stay hidden if $\bar S$ happened to be symmetric?
# 4. Extend the head to $H$ heads, splitting `d_head` into $H$ slices and concatenating
#    the outputs. Which backward formulas change, and which only gain an axis?
