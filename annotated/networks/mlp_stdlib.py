r"""
---
title: A fully connected network in the standard library
summary: >-
  A multilayer perceptron with hand-written forward and backward passes, softmax
  cross-entropy and SGD with momentum, in nothing but `math`, `random` and lists,
  trained to over 95 % on the digits and checked against torch in float64.
time: 8 s
expected:
  metric: test_accuracy
  short: ["--epochs", "2", "--train-size", "500"]
references:
  - key: rumelhart1986learning
    authors: [David E. Rumelhart, Geoffrey E. Hinton, Ronald J. Williams]
    title: Learning representations by back-propagating errors
    year: 1986
    venue: Nature 323
    url: https://doi.org/10.1038/323533a0
  - key: lecun1998efficient
    authors: [Yann LeCun, Léon Bottou, Genevieve B. Orr, Klaus-Robert Müller]
    title: Efficient BackProp
    year: 1998
    venue: "Neural Networks: Tricks of the Trade, LNCS 1524"
    url: https://doi.org/10.1007/3-540-49430-8_2
  - key: he2015delving
    authors: [Kaiming He, Xiangyu Zhang, Shaoqing Ren, Jian Sun]
    title: >-
      Delving Deep into Rectifiers: Surpassing Human-Level Performance on ImageNet
      Classification
    year: 2015
    venue: ICCV 2015
    arxiv: "1502.01852"
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
  - key: goodfellow2016deep
    authors: [Ian Goodfellow, Yoshua Bengio, Aaron Courville]
    title: Deep Learning
    year: 2016
    venue: MIT Press
    url: https://www.deeplearningbook.org/
worksheet:
  - region: dense_backward
    hint: >-
      With G = grad_out: the weight gradient is G^T X, the bias gradient the column
      sums of G, and the input gradient G W, skipped (None) when need_input_grad is
      false; build them from transpose and matmul_transposed.
    tests: [test_dense_backward_input_gradient_matches_torch]
  - region: softmax_cross_entropy
    hint: >-
      Per row: subtract the row's maximum before exponentiating, add log(sum) + max -
      logit of the label to the total, and make the gradient row the probabilities
      divided by B, with 1 / B taken off at the label; return the mean loss and the
      gradient.
    tests: [test_softmax_cross_entropy_is_stable_at_extreme_logits]
  - region: MLP.backward
    hint: >-
      Loop over the layers from the last to the first: dense_backward with the input
      that forward kept gives the layer's weight and bias gradients and the gradient of
      its input (not needed for layer 0), which then passes back through the
      activation's derivative, computed from that input (the previous layer's output).
    tests:
      - test_loss_logits_and_gradients_match_torch
      - test_a_deep_network_needs_no_recursion_and_matches_torch
      - test_gradients_match_central_finite_differences
---

The [scalar engine](../foundations/autograd.md) trains a network by recording every
multiplication as an object and walking that record backwards. That is the most
general way to get gradients, and for a fully connected network it is also the most
wasteful: the graph has the same shape at every step, and its backward pass can be
written out once, by hand, as a few matrix products
[@rumelhart1986learning; @goodfellow2016deep].

This lesson does exactly that, with nothing but the standard library: matrices are
lists of rows, a layer is a weight matrix and a bias vector, and each operation has a
forward function and a backward function written side by side. On top of them sit the
softmax cross-entropy loss, a multilayer perceptron of any depth, and stochastic
gradient descent with momentum [@polyak1964some; @sutskever2013importance]. The demo
trains a 64-64-10 network on scikit-learn's 8×8 digits to 98 % test accuracy (95 %
after two epochs) in about seven seconds on two cores, with no NumPy anywhere in the
implementation: the data arrive as NumPy arrays and are turned into lists once.

Pure Python is slow at arithmetic, so the second theme is *how* to lay the computation
out so that the interpreter does as little as possible per multiply-add. Every matrix
product below becomes rows dotted with rows, and every dot product runs inside C. The
test measures the same training step here, in NumPy and in torch. The honest result,
on the machine this page's benchmarks ran on: on a batch of 32 the interpreter takes
about 13 ms, some 46 times torch's 0.28 ms and 200 times NumPy's 0.06 ms (at this size
NumPy beats torch, whose fixed cost per operation outweighs the arithmetic). The
sections below say where the time goes.

The test checks every gradient twice: against central finite differences, and against
`torch.autograd` on identical float64 weights, for shallow and deep networks and both
activations; and it trains our optimizer in lockstep with `torch.optim.SGD`.
"""

import argparse
import math
import random
from operator import mul
from pathlib import Path

from tqdm import tqdm

from annotated.data import digits, integer, number
from annotated.figures import figure, save

# ## Matrices as lists of rows
#
# A batch of $B$ inputs with $n$ features each is a list of $B$ rows, each a list of
# $n$ floats: row-major, like NumPy's default layout. A weight matrix $W$ of a layer
# with $n$ inputs and $m$ outputs is stored the way torch's `nn.Linear` stores it,
# $m \times n$: row $j$ holds the weights *into* output unit $j$.
#
# With that layout every product the network needs has the form "rows of $A$ dotted
# with rows of $C$", that is $A C^\top$:
#
# $$
# (A C^\top)_{bj} = \sum_k A_{bk} C_{jk} .
# $$
#
# The forward pass is $X W^\top$ directly. The backward pass needs $G^\top X$ and
# $G W$ (below); both become $A C^\top$ after one transpose, and in Python a transpose
# is `list(zip(*rows))`: a single call that runs in C and makes one tuple per column.
# It costs $O(mn)$ and is paid once per batch, while the product that uses it costs
# $O(Bmn)$.
Matrix = list[list[float]]


def transpose(rows: Matrix) -> list[tuple[float, ...]]:
    """The columns of `rows` as tuples: `[n, m]` becomes `[m, n]`."""
    return list(zip(*rows))


# ### Where the time goes in a dot product
#
# The obvious inner loop, `for k in range(n): s += a[i][k] * c[j][k]`, executes about
# a dozen bytecodes per multiply-add: two double subscripts, a multiply, an add, a
# store, and the loop's own bookkeeping. Each one goes through the interpreter's
# dispatch, type checks and reference counting. Three changes move most of that work
# out of the interpreter's loop.
#
# - **Bind rows, not indices.** `for a_row in a: for c_row in c:` hands the loop each
#   row once; the inner loop no longer looks anything up by index. The same goes for
#   globals and attributes: `mul` is imported by name, so a dot product finds it with
#   one global lookup instead of an attribute lookup on `operator`, and the methods
#   below read `self.weights` into a local before their loops, because a local is an
#   array slot while an attribute is a dictionary lookup.
# - **Let C iterate.** `sum(map(mul, a_row, c_row))` has no Python-level loop at all:
#   `map` calls the C function `operator.mul` on pairs it pulls from the two lists,
#   and `sum` adds the results, all without returning to the interpreter between
#   elements. (A list comprehension `sum([x * y for x, y in zip(a, c)])` still runs
#   bytecode per element and is slower.) Python 3.12 adds `math.sumprod`, which
#   avoids even the intermediate float objects; this lesson keeps to what 3.11 has.
# - **Lists of floats, not `array('d')`.** An `array` stores raw doubles compactly,
#   but every read from it boxes a fresh float object, so the same `sum(map(mul, ...))`
#   over arrays is about 1.5 times *slower* than over lists, whose elements are already
#   objects.
#
# On a 32 × 64 by 64 × 64 product, the textbook triple loop takes about 8 ms here,
# row binding with `zip` about 6 ms, and `sum(map(mul, ...))` about 4 ms; NumPy takes
# 10 µs. The remaining gap is the object per product and the call per row pair, and
# no layout removes those in pure Python.
def matmul_transposed(a: Matrix, c: Matrix) -> Matrix:
    r"""$A C^\top$ for `a` of shape `[p, k]` and `c` of shape `[q, k]`: `[p, q]`."""
    return [[sum(map(mul, a_row, c_row)) for c_row in c] for a_row in a]


# ## A fully connected layer
#
# A layer maps each input row $x \in \mathbb{R}^n$ to $z = W x + b$ with
# $W \in \mathbb{R}^{m \times n}$ and $b \in \mathbb{R}^m$. For the batch $X$
# (shape $B \times n$) that is
#
# $$
# Z = X W^\top + \mathbf{1} b^\top, \qquad Z \in \mathbb{R}^{B \times m}.
# $$
#
# The bias is added inside the same comprehension that computes the dot products, so
# the output row is built once.
def dense_forward(x: Matrix, weight: Matrix, bias: list[float]) -> Matrix:
    """`x @ weight.T + bias`: `x` is `[B, n]`, `weight` `[m, n]`, `bias` `[m]`."""
    pairs = list(zip(weight, bias))  # m pairs (row of W, b_j)
    return [[sum(map(mul, x_row, w_row)) + b for w_row, b in pairs] for x_row in x]


# The backward pass receives $G = \partial L / \partial Z$, one row per example, and
# returns the gradients of the loss with respect to the layer's parameters and its
# input. Each entry $Z_{bj} = \sum_k X_{bk} W_{jk} + b_j$ depends on $W_{jk}$ through
# $X_{bk}$, on $b_j$ with slope 1, and on $X_{bk}$ through $W_{jk}$, so summing over
# the entries that each parameter touches:
#
# $$
# \begin{aligned}
# \frac{\partial L}{\partial W} &= G^\top X
#   &&[m \times n] \\
# \frac{\partial L}{\partial b} &= G^\top \mathbf{1}
#   &&[m] \\
# \frac{\partial L}{\partial X} &= G W
#   &&[B \times n]
# \end{aligned}
# $$
#
# With $G^\top$ and $X^\top$ as lists of columns, $G^\top X$ is `matmul_transposed` of
# the two transposes; $G W$ is `matmul_transposed(G, W^\top)`. The input gradient is a
# full product, as expensive as the forward pass, and the first layer's input is the
# data, whose gradient nobody uses: `need_input_grad=False` skips it and saves half of
# the first layer's backward pass.
def dense_backward(
    x: Matrix, weight: Matrix, grad_out: Matrix, need_input_grad: bool = True
) -> tuple[Matrix, list[float], Matrix | None]:
    """Gradients of a dense layer: `(grad_weight [m, n], grad_bias [m],
    grad_x [B, n] or None)` from its input `x [B, n]`, `weight [m, n]` and
    `grad_out [B, m]`."""
    grad_out_columns = transpose(grad_out)  # [m, B]
    grad_weight = matmul_transposed(grad_out_columns, transpose(x))  # [m, n]
    grad_bias = [sum(column) for column in grad_out_columns]  # [m]
    if not need_input_grad:
        return grad_weight, grad_bias, None
    grad_x = matmul_transposed(grad_out, transpose(weight))  # [B, n]
    return grad_weight, grad_bias, grad_x


# ## Activations
#
# Between layers sits an elementwise nonlinearity; without it the stack of layers
# would collapse into one linear map. Two are provided, the rectified linear unit
# $\mathrm{relu}(z) = \max(z, 0)$ and $\tanh$. Each backward function multiplies the
# incoming gradient by the local derivative, and both can compute that derivative from
# the activation's *output* $a$, so the forward pass keeps only the outputs:
#
# $$
# \begin{aligned}
# \mathrm{relu}'(z) &= [a > 0] \\
# \tanh'(z) &= 1 - a^2
# \end{aligned}
# $$
#
# (At $z = 0$ the ReLU has no derivative; we use 0, as torch does.) The conditional
# expression `z if z > 0.0 else 0.0` is faster than calling `max(z, 0.0)`, which pays
# for a function call per element.
def relu(z: Matrix) -> Matrix:
    return [[v if v > 0.0 else 0.0 for v in row] for row in z]


def relu_backward(out: Matrix, grad_out: Matrix) -> Matrix:
    return [
        [g if a > 0.0 else 0.0 for a, g in zip(a_row, g_row)]
        for a_row, g_row in zip(out, grad_out)
    ]


def tanh(z: Matrix) -> Matrix:
    tanh_ = math.tanh
    return [list(map(tanh_, row)) for row in z]


def tanh_backward(out: Matrix, grad_out: Matrix) -> Matrix:
    return [
        [g * (1.0 - a * a) for a, g in zip(a_row, g_row)]
        for a_row, g_row in zip(out, grad_out)
    ]


ACTIVATIONS = {"relu": (relu, relu_backward), "tanh": (tanh, tanh_backward)}


# ## Softmax cross-entropy
#
# The last layer's outputs $z \in \mathbb{R}^{10}$ (the *logits*) become class
# probabilities through the softmax, and the loss of an example with label $y$ is the
# negative log-probability of its class:
#
# $$
# \begin{aligned}
# p_c &= \frac{e^{z_c}}{\sum_k e^{z_k}} \\
# \ell &= -\log p_y = \log \sum_k e^{z_k} - z_y
# \end{aligned}
# $$
#
# The batch loss $L$ is the mean of $\ell$ over the $B$ examples. Two details matter:
#
# - **Stability.** $e^{z}$ overflows a float for $z > 709$. Subtracting the row's
#   maximum $z^\ast$ first changes nothing mathematically and leaves every exponent
#   $\le 0$, so the sum lies in $[1, 10]$ and its logarithm is safe:
#   $\log \sum_k e^{z_k} = z^\ast + \log \sum_k e^{z_k - z^\ast}$.
# - **The fused gradient.** Differentiating through softmax and log separately needs
#   the $10 \times 10$ Jacobian of the softmax; differentiating the combination gives
#   a vector [@goodfellow2016deep]:
#
#   $$
#   \frac{\partial L}{\partial z_{bc}} = \frac{p_{bc} - [c = y_b]}{B} .
#   $$
#
#   Predicted probability minus the one-hot target: the gradient pushes the right
#   class up and every other class down in proportion to how much it is believed.
def softmax_cross_entropy(logits: Matrix, labels: list[int]) -> tuple[float, Matrix]:
    """Mean cross-entropy of `logits [B, C]` against integer `labels [B]`, and its
    gradient with respect to the logits, `[B, C]`.

    Raises ValueError unless `labels` holds one int in `0..C-1` per row: a label of -1
    would otherwise score the last class, and `zip` would drop a row without a label.
    """
    if (
        not logits
        or len(labels) != len(logits)
        or not all(
            type(label) is int and 0 <= label < len(row)
            for row, label in zip(logits, labels)
        )
    ):
        classes = len(logits[0]) if logits else 0
        raise ValueError(
            "softmax_cross_entropy: labels must hold one int in 0..C-1 per row of "
            f"logits [B, C] = [{len(logits)}, {classes}], got {labels!r:.60}"
        )
    exp, log = math.exp, math.log
    scale = 1.0 / len(logits)
    total = 0.0
    grad = []
    for row, label in zip(logits, labels):
        top = max(row)
        exps = [exp(v - top) for v in row]  # [C], each in (0, 1]
        norm = sum(exps)
        total += log(norm) + top - row[label]
        inv = scale / norm
        grad_row = [e * inv for e in exps]  # p / B
        grad_row[label] -= scale
        grad.append(grad_row)
    return total * scale, grad


# ### Checking a batch
#
# A batch with a short row would not fail loudly: `zip` stops at the shorter list, so a
# 63-pixel image would silently be dotted with the first 63 weights. One checker, used
# at the network's public entry points, refuses it, and labels outside the classes,
# before any work is done. It costs one pass over the rows, against the $O(Bnm)$ of the
# product that follows.
def check_batch(x, labels, sizes: list[int], where: str) -> None:
    """Raise unless `x` is a non-empty list of rows of `sizes[0]` numbers and `labels`
    (unless None) holds one int in `0..sizes[-1] - 1` per row."""
    n_inputs, n_classes = sizes[0], sizes[-1]
    if not isinstance(x, (list, tuple)) or not x:
        raise TypeError(f"{where}: x must be a non-empty list of rows, got {x!r:.60}")
    for b, row in enumerate(x):
        if not isinstance(row, (list, tuple)) or len(row) != n_inputs:
            raise ValueError(
                f"{where}: every row of x must be a list of {n_inputs} numbers; "
                f"row {b} is {row!r:.60}"
            )
    if labels is None:
        return
    if not isinstance(labels, (list, tuple)) or len(labels) != len(x):
        raise ValueError(
            f"{where}: labels must be a list of {len(x)} ints, one per row"
        )
    for label in labels:
        if type(label) is not int or not 0 <= label < n_classes:
            raise ValueError(
                f"{where}: labels must be ints in 0..{n_classes - 1}, got {label!r}"
            )


# ## The network
#
# An `MLP` is a list of layer sizes, say $[64, 64, 10]$, and one weight matrix and
# bias vector between each consecutive pair. The forward pass alternates dense layers
# and activations, with no activation after the last layer (the loss applies the
# softmax). It keeps the input of every dense layer, because each backward step needs
# it for $G^\top X$, and the activation outputs double as those inputs.
#
# The weights start as Gaussian noise with variance $2 / n_\text{in}$ for ReLU, which
# keeps the scale of the activations roughly constant from layer to layer
# [@he2015delving], and $1 / n_\text{in}$ for $\tanh$ [@lecun1998efficient]; biases
# start at zero. The [initialisation lesson](initialisation.md) measures what other
# choices do.
#
# The backward pass walks the layers in reverse, with a plain `for` loop over indices:
# a network of any depth needs no recursion and no graph.
class MLP:
    """A fully connected network: `sizes[0]` inputs, `sizes[-1]` logits, and the
    activation `activation` between layers.

    `weights[i]` is `[sizes[i + 1], sizes[i]]`, `biases[i]` is `[sizes[i + 1]]`; both
    are plain lists that the optimizer updates in place.
    """

    def __init__(self, sizes: list[int], activation: str = "relu", seed: int = 0):
        if (
            not isinstance(sizes, (list, tuple))
            or len(sizes) < 2
            or not all(type(n) is int and n > 0 for n in sizes)
        ):
            raise ValueError(
                "MLP: sizes must be a list of at least two positive ints "
                f"(inputs, ..., outputs), got {sizes!r}"
            )
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"MLP: activation must be one of {sorted(ACTIVATIONS)}, "
                f"got {activation!r}"
            )
        self.sizes = list(sizes)
        self.activation = activation
        gain = 2.0 if activation == "relu" else 1.0
        rng = random.Random(seed)
        self.weights = []
        self.biases = []
        for n_in, n_out in zip(sizes, sizes[1:]):
            std = math.sqrt(gain / n_in)
            self.weights.append(
                [[rng.gauss(0.0, std) for _ in range(n_in)] for _ in range(n_out)]
            )
            self.biases.append([0.0] * n_out)

    def forward(self, x: Matrix) -> tuple[Matrix, list[Matrix]]:
        """The logits `[B, sizes[-1]]` for `x [B, sizes[0]]`, and the input of every
        layer (for `backward`)."""
        check_batch(x, None, self.sizes, "MLP.forward")
        activate = ACTIVATIONS[self.activation][0]
        weights, biases = self.weights, self.biases
        last = len(weights) - 1
        inputs = []
        for i in range(last + 1):
            inputs.append(x)
            x = dense_forward(x, weights[i], biases[i])  # [B, sizes[i + 1]]
            if i < last:
                x = activate(x)
        return x, inputs

    def backward(
        self, inputs: list[Matrix], grad_logits: Matrix
    ) -> tuple[list[Matrix], list[list[float]]]:
        """Gradients of the loss for every weight and bias, from the layer inputs that
        `forward` kept and the gradient of the logits."""
        derivative = ACTIVATIONS[self.activation][1]
        weights = self.weights
        grad_weights = [None] * len(weights)
        grad_biases = [None] * len(weights)
        grad = grad_logits  # [B, sizes[-1]]
        for i in range(len(weights) - 1, -1, -1):
            grad_weights[i], grad_biases[i], grad = dense_backward(
                inputs[i], weights[i], grad, need_input_grad=i > 0
            )
            if i > 0:
                # inputs[i] is the activation output of layer i - 1
                grad = derivative(inputs[i], grad)  # [B, sizes[i]]
        return grad_weights, grad_biases

    def loss_and_gradients(
        self, x: Matrix, labels: list[int]
    ) -> tuple[float, list[Matrix], list[list[float]]]:
        """The mean cross-entropy on `(x, labels)` and its gradients."""
        check_batch(x, labels, self.sizes, "MLP.loss_and_gradients")
        logits, inputs = self.forward(x)
        loss, grad_logits = softmax_cross_entropy(logits, labels)
        grad_weights, grad_biases = self.backward(inputs, grad_logits)
        return loss, grad_weights, grad_biases

    def predict(self, x: Matrix) -> list[int]:
        """The most probable class of each row of `x`."""
        logits, _ = self.forward(x)
        return [row.index(max(row)) for row in logits]

    # The parameters are the whole state of a network: copying them out and back in
    # saves and restores it. Deep copies, so that later training cannot change a saved
    # state through a shared list.
    def state_dict(self) -> dict:
        return {
            "sizes": list(self.sizes),
            "activation": self.activation,
            "weights": [[list(row) for row in w] for w in self.weights],
            "biases": [list(b) for b in self.biases],
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("sizes") != self.sizes or state["activation"] != self.activation:
            raise ValueError(
                f"MLP.load_state_dict: state is for sizes {state.get('sizes')} with "
                f"{state.get('activation')}, this network has sizes {self.sizes} with "
                f"{self.activation}"
            )
        for w, saved in zip(self.weights, state["weights"]):
            for row, saved_row in zip(w, saved):
                row[:] = saved_row
        for b, saved in zip(self.biases, state["biases"]):
            b[:] = saved


# ## Stochastic gradient descent with momentum
#
# Plain SGD moves each parameter $\theta$ by $-\eta\, g$ for the mini-batch gradient
# $g$. Momentum keeps a running sum $v$ of past gradients and steps along it
# [@polyak1964some; @sutskever2013importance], in the form torch's `optim.SGD` uses:
#
# $$
# \begin{aligned}
# v &\leftarrow \mu v + g \\
# \theta &\leftarrow \theta - \eta v
# \end{aligned}
# $$
#
# In a direction where successive gradients agree, the steps add up to about
# $\eta / (1 - \mu)$ per unit of gradient, ten times plain SGD's at $\mu = 0.9$;
# where they alternate in sign, they cancel. With $v$ starting at zero the first step
# is plain SGD, as in torch.
#
# The update writes into the existing rows with slice assignment, `row[:] = [...]`:
# the network's lists stay the same objects, so anything holding them (the network,
# a test) sees the new values. One list comprehension per row builds the new values in
# a single pass over `zip(row, velocity)`.
class SGD:
    """SGD with momentum over an `MLP`'s weights and biases."""

    def __init__(self, model: MLP, lr: float = 0.05, momentum: float = 0.9):
        if not isinstance(model, MLP):
            raise TypeError(f"SGD: model must be an MLP, got {type(model).__name__}")
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"SGD: lr must be a positive number, got {lr!r}")
        if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
            raise ValueError(f"SGD: momentum must lie in [0, 1), got {momentum!r}")
        self.model, self.lr, self.momentum = model, float(lr), float(momentum)
        # the velocity's rows: every weight row, then every bias vector
        self.velocity = [[0.0] * len(row) for row in self._rows()]

    def _rows(self) -> list[list[float]]:
        return [row for w in self.model.weights for row in w] + self.model.biases

    def step(self, grad_weights: list[Matrix], grad_biases: list[list[float]]) -> None:
        lr, mu = self.lr, self.momentum
        grads = [row for g in grad_weights for row in g] + grad_biases
        for row, velocity, grad in zip(self._rows(), self.velocity, grads):
            velocity[:] = [mu * v + g for v, g in zip(velocity, grad)]
            row[:] = [p - lr * v for p, v in zip(row, velocity)]

    def state_dict(self) -> dict:
        return {"velocity": [list(v) for v in self.velocity]}

    def load_state_dict(self, state: dict) -> None:
        for velocity, saved in zip(self.velocity, state["velocity"], strict=True):
            velocity[:] = saved


# ## One training step
#
# Forward, loss, backward, update: the whole of training is this function in a loop
# over shuffled mini-batches.
def train_step(model: MLP, optimizer: SGD, x: Matrix, labels: list[int]) -> float:
    """One SGD step on the batch `(x [B, n], labels [B])`; returns the batch's loss
    before the step."""
    loss, grad_weights, grad_biases = model.loss_and_gradients(x, labels)
    optimizer.step(grad_weights, grad_biases)
    return loss


def accuracy(model: MLP, x: Matrix, labels: list[int]) -> float:
    predictions = model.predict(x)
    return sum(p == y for p, y in zip(predictions, labels)) / len(labels)


# ## The example
#
# One training step of a 64-16-10 network on a batch of 8 random "images". The
# dataflow diagram is declared by hand below: the steps of `train_step` in order, with
# the shapes that pass between them: the forward pass down to the loss, then the
# gradients flowing back to the optimizer.
def example():
    """`train_step(model, optimizer, x, labels)` on a small batch: `fn(*args)` runs
    it."""
    rng = random.Random(0)
    model = MLP([64, 16, 10], seed=0)
    optimizer = SGD(model, lr=0.05, momentum=0.9)
    x = [[rng.random() for _ in range(64)] for _ in range(8)]  # [8, 64]
    labels = [rng.randrange(10) for _ in range(8)]  # [8]
    return train_step, (model, optimizer, x, labels)


def dataflow(output: float):
    """The steps of `train_step` on the example, for its `output` (the loss)."""
    loss = f"loss {output:.3f}"
    nodes = [
        ("x", "x [8, 64]"),
        ("dense1", "dense: x W1ᵀ + b1"),
        ("relu", "relu"),
        ("dense2", "dense: h W2ᵀ + b2"),
        ("softmax", "softmax cross-entropy"),
        ("loss", loss),
        ("back2", "dense backward 2"),
        ("relu_back", "relu backward"),
        ("back1", "dense backward 1 (no input grad)"),
        ("sgd", "SGD with momentum"),
    ]
    edges = [
        ("x", "dense1", "[8, 64]"),
        ("dense1", "relu", "[8, 16]"),
        ("relu", "dense2", "h [8, 16]"),
        ("dense2", "softmax", "logits [8, 10]"),
        ("softmax", "loss", ""),
        ("softmax", "back2", "p − onehot [8, 10]"),
        ("relu", "back2", "h"),
        ("back2", "relu_back", "dL/dh [8, 16]"),
        ("relu_back", "back1", "[8, 16]"),
        ("x", "back1", "x"),
        ("back2", "sgd", "dW2 [10, 16], db2 [10]"),
        ("back1", "sgd", "dW1 [16, 64], db1 [16]"),
    ]
    return nodes, edges


# ## The demo
#
# The digits arrive from scikit-learn as NumPy arrays and become lists of floats and
# ints once, with `.tolist()`; from there on nothing but the code above touches them.
# Each epoch shuffles the 1,438 training digits with `random`, trains on mini-batches,
# and measures accuracy on the 359 held-out digits.
def plot_training(losses: list[float], accuracies: list[float], out: Path) -> None:
    epochs = range(1, len(losses) + 1)
    fig, (loss_axes, accuracy_axes) = figure(panels=2)
    loss_axes.plot(epochs, losses)
    loss_axes.set(
        xlabel="epoch", ylabel="mean training loss", yscale="log", title="Training loss"
    )
    accuracy_axes.plot(epochs, accuracies, color="tab:green")
    accuracy_axes.axhline(0.95, color="gray", linestyle=":", label="95 %")
    accuracy_axes.set(xlabel="epoch", ylabel="accuracy", title="Test accuracy")
    accuracy_axes.legend()
    save(
        fig,
        out / "training.png",
        caption="Training the standard-library MLP on the digits. Left: mean "
        "cross-entropy over each epoch's mini-batches, on a log scale. Right: accuracy "
        "on the 359 held-out digits after each epoch.",
    )


# The first layer's weights are easiest to read as images: row $j$ of $W_1$ has one
# weight per pixel, so it is an 8×8 picture of what hidden unit $j$ responds to. The
# mosaic is built as a nested list, one tile per unit with a blank line between tiles.
def plot_first_layer(weight: Matrix, out: Path, columns: int = 8) -> None:
    n_tiles = min(len(weight), 4 * columns)
    rows_of_tiles = math.ceil(n_tiles / columns)
    size = 9 * rows_of_tiles - 1, 9 * columns - 1
    mosaic = [[math.nan] * size[1] for _ in range(size[0])]
    for tile in range(n_tiles):
        top, left = 9 * (tile // columns), 9 * (tile % columns)
        row = weight[tile]
        scale = max(abs(w) for w in row) or 1.0
        for pixel, w in enumerate(row):
            mosaic[top + pixel // 8][left + pixel % 8] = w / scale
    fig, axes = figure()
    axes.imshow(mosaic, cmap="RdBu_r", vmin=-1, vmax=1)
    axes.set_axis_off()
    axes.set_title(f"First-layer weights of {n_tiles} hidden units")
    save(
        fig,
        out / "first_layer.png",
        caption="Each tile is one hidden unit's 64 input weights shown as an 8×8 "
        "image, scaled to its largest weight: red pixels excite the unit, blue ones "
        "inhibit it.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description="Train a standard-library MLP on the 8x8 digits.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--epochs", type=integer(at_least=1), default=15, help="passes over the data"
    )
    parser.add_argument(
        "--hidden",
        type=integer(at_least=1),
        nargs="+",
        default=[64],
        help="hidden layer widths (one number per hidden layer)",
    )
    parser.add_argument(
        "--activation", choices=sorted(ACTIVATIONS), default="relu", help="nonlinearity"
    )
    parser.add_argument(
        "--batch-size", type=integer(at_least=1), default=32, help="examples per step"
    )
    parser.add_argument(
        "--lr", type=number(above=0), default=0.05, help="learning rate"
    )
    parser.add_argument(
        "--momentum", type=number(at_least=0, below=1), default=0.9, help="SGD momentum"
    )
    parser.add_argument(
        "--train-size",
        type=integer(at_least=0),
        default=0,
        help="use only this many training digits (0: all 1,438)",
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--out", default="out/mlp_stdlib", help="folder for the figures"
    )
    args = parser.parse_args(argv)
    x_train, y_train, x_test, y_test = digits(seed=args.seed)
    if args.train_size > 0:
        x_train, y_train = x_train[: args.train_size], y_train[: args.train_size]
    x_train, y_train = x_train.tolist(), y_train.tolist()  # [n, 64], [n]
    x_test, y_test = x_test.tolist(), y_test.tolist()  # [359, 64], [359]

    model = MLP([64, *args.hidden, 10], activation=args.activation, seed=args.seed)
    optimizer = SGD(model, lr=args.lr, momentum=args.momentum)
    rng = random.Random(args.seed)
    order = list(range(len(x_train)))
    losses, accuracies = [], []
    progress = tqdm(range(args.epochs), desc="epochs")
    for _ in progress:
        rng.shuffle(order)
        batch_losses = []
        for start in range(0, len(order), args.batch_size):
            batch = order[start : start + args.batch_size]
            x = [x_train[i] for i in batch]  # [B, 64]
            labels = [y_train[i] for i in batch]  # [B]
            batch_losses.append(train_step(model, optimizer, x, labels))
        losses.append(sum(batch_losses) / len(batch_losses))
        accuracies.append(accuracy(model, x_test, y_test))
        progress.set_postfix(loss=f"{losses[-1]:.3f}", accuracy=f"{accuracies[-1]:.3f}")

    out = Path(args.out)
    plot_training(losses, accuracies, out)
    plot_first_layer(model.weights[0], out)
    print(f"test accuracy {accuracies[-1]:.3f}")
    return {"test_accuracy": accuracies[-1], "train_loss": losses[-1]}


if __name__ == "__main__":
    main()

# ## Exercises
#
# 1. The backward pass recomputes `transpose(x)` for every layer input, and
#    `transpose(weight)` for every layer, once per batch. Profile a training step with
#    `python -m cProfile -s cumtime`: what fraction of the time goes to transposes, and
#    what to `matmul_transposed`? Would caching `transpose(weight)` between steps be
#    correct?
# 2. Add L2 weight decay to `SGD` as torch does (add $\lambda \theta$ to the gradient
#    before the momentum update), and extend the lockstep test with
#    `torch.optim.SGD(weight_decay=...)`.
# 3. On Python 3.12 or later, replace `sum(map(mul, a, c))` with `math.sumprod(a, c)`
#    and measure the training step with the benchmark in the test. Why can `sumprod`
#    avoid creating a float object per product, when `map(mul, ...)` cannot?
# 4. Replace the softmax cross-entropy by a mean squared error on one-hot targets.
#    Derive its gradient with respect to the logits, check it with the finite
#    differences of the test, and compare the accuracy after 30 epochs.
