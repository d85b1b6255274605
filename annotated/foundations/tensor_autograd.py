r"""
---
title: Autograd on tensors
summary: >-
  A reverse-mode engine whose nodes are NumPy arrays, with broadcasting, reductions and
  a stable softmax, trained on digits and checked against torch.autograd.
time: 3 s
expected:
  metric: test_accuracy
  short: ["--epochs", "15"]
references:
  - key: baydin2018automatic
    authors:
      - Atılım Güneş Baydin
      - Barak A. Pearlmutter
      - Alexey Andreyevich Radul
      - Jeffrey Mark Siskind
    title: "Automatic Differentiation in Machine Learning: a Survey"
    year: 2018
    venue: Journal of Machine Learning Research 18(153)
    arxiv: "1502.05767"
  - key: griewank2008evaluating
    authors: [Andreas Griewank, Andrea Walther]
    title: >-
      Evaluating Derivatives: Principles and Techniques of Algorithmic
      Differentiation, second edition
    year: 2008
    venue: SIAM
    url: https://doi.org/10.1137/1.9780898717761
  - key: he2015delving
    authors: [Kaiming He, Xiangyu Zhang, Shaoqing Ren, Jian Sun]
    title: >-
      Delving Deep into Rectifiers: Surpassing Human-Level Performance on ImageNet
      Classification
    year: 2015
    venue: ICCV 2015
    arxiv: "1502.01852"
  - key: glorot2010understanding
    authors: [Xavier Glorot, Yoshua Bengio]
    title: Understanding the difficulty of training deep feedforward neural networks
    year: 2010
    venue: AISTATS 2010, PMLR 9
    url: https://proceedings.mlr.press/v9/glorot10a.html
  - key: polyak1964some
    authors: [Boris T. Polyak]
    title: Some methods of speeding up the convergence of iteration methods
    year: 1964
    venue: USSR Computational Mathematics and Mathematical Physics 4(5)
    url: https://doi.org/10.1016/0041-5553(64)90137-5
worksheet:
  - region: sum_to_shape
    hint: >-
      First sum over the leading axes broadcasting added (the gradient's extra
      dimensions), then, keeping the axis, over every axis where the input had size 1
      but the gradient does not.
    tests:
      - test_sum_to_shape_inverts_broadcasting
      - test_binary_op_with_broadcasting_matches_torch
  - region: Tensor.__matmul__
    hint: >-
      Check both operands are at least 2-D, the inner sizes agree and the batch axes
      broadcast; the output is self.data @ other.data, and its backward adds
      out.grad @ B^T to A's gradient and A^T @ out.grad to B's (transposing only the
      last two axes), each summed down to its operand's shape.
    tests: [test_matmul_with_batch_broadcasting_matches_torch]
  - region: Tensor.backward
    hint: >-
      Seed with ones for a one-element output (else check the given gradient's shape
      and dtype), zero the gradient of every non-leaf in the topological order, add
      the seed to this tensor's gradient, and call each tensor's _backward in reverse
      order.
    tests:
      - test_composite_expression_with_reuse_matches_torch
      - test_leaf_gradients_accumulate_and_interior_ones_do_not
---

[The scalar engine](autograd.md) differentiates one number at a time. That is the
clearest way to see the chain rule, and the slowest way to use it: a product of two
64×64 matrices becomes 262,144 multiplications, each its own node with its own closure.
Every real framework makes the *array* the unit instead. One node stands for a whole
matrix product, and its backward rule is again array arithmetic: the gradient of a
matrix product is two more matrix products, which NumPy hands to an optimised BLAS.

This lesson builds that engine. A `Tensor` holds a float64 NumPy array, a gradient of
the same shape, the tensors it was made from, and a `_backward` closure defined right
beside the forward computation of its operation. `backward()` sorts the graph
topologically and runs the closures from the loss back to the leaves, exactly as the
scalar engine does. Three things are new once values are arrays:

1. **A backward rule is a vector-Jacobian product.** For $y = f(x)$ with
   $x \in \mathbb{R}^n$ and $y \in \mathbb{R}^m$ the Jacobian
   $J = \partial y / \partial x$ is $m \times n$: for a softmax over 1,000 classes that
   is a million numbers. No rule ever builds it. Each rule receives
   $\bar{y} = \partial L / \partial y$, an array shaped like $y$, and returns
   $\bar{x} = J^\top \bar{y}$, an array shaped like $x$, computed in closed form in
   about as many operations as the forward pass
   [@griewank2008evaluating; @baydin2018automatic].
2. **Broadcasting has a backward rule.** Adding a bias `[10]` to a batch `[64, 10]`
   copies the bias 64 times; the copies' gradients must be summed back into `[10]`.
3. **Reductions and normalisations couple elements.** A sum sends its gradient to every
   input; a softmax mixes the gradients of all the classes in a row.

With these the engine trains a two-layer network on scikit-learn's handwritten digits to
over 95 % test accuracy in a few seconds, and its test checks every operation, forward
values and gradients, against `torch.autograd` in float64 to $10^{-9}$.
"""

import argparse
import math
import numbers
from pathlib import Path

import numpy as np
from tqdm import tqdm

from annotated.data import digits, integer, number
from annotated.figures import figure, save

# ## Broadcasting, forwards and backwards
#
# NumPy lets `[64, 10] + [10]` mean "add the row to every row". The rule: align the
# shapes on the right; a missing leading axis counts as size 1; two sizes are compatible
# when they are equal or one of them is 1, and the 1 is stretched to match. Forwards,
# the input $x$ is read many times. Write the broadcast output as $y_i = x_{\pi(i)}$,
# where the map $\pi$ drops the leading axes that $x$ lacks and sends every index along
# an axis where $x$ has size 1 to 0. The chain rule sums over every place $x_j$ was
# read:
#
# $$
# \bar{x}_j = \sum_{i \,:\, \pi(i) = j} \bar{y}_i .
# $$
#
# In array terms that is two sums: over the leading axes that broadcasting added, and,
# keeping the axis, over each axis where $x$ had size 1 but the output did not. For the
# bias of `[64, 10] + [10]` the first sum runs over the batch:
# $\bar{b}_k = \sum_n \bar{y}_{nk}$.


def sum_to_shape(gradient: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum a gradient of the broadcast output's shape back down to an input's
    `shape`."""
    added_axes = gradient.ndim - len(shape)
    if added_axes > 0:
        gradient = gradient.sum(axis=tuple(range(added_axes)))
    stretched_axes = tuple(
        axis
        for axis, size in enumerate(shape)
        if size == 1 and gradient.shape[axis] != 1
    )
    if stretched_axes:
        gradient = gradient.sum(axis=stretched_axes, keepdims=True)
    return gradient


# Every wrong argument should fail where it is made, naming what was expected. A shape
# error that surfaced inside a backward closure would point at the engine, not at the
# caller's line. These small checks run before any array is computed.


def is_positive_int(value) -> bool:
    """An int (NumPy's included) >= 1; a bool is not a size."""
    return (
        isinstance(value, numbers.Integral)
        and not isinstance(value, bool)
        and value >= 1
    )


def check_broadcast(op: str, left: tuple[int, ...], right: tuple[int, ...]) -> None:
    """Raise a `ValueError` naming both shapes if `left` and `right` do not
    broadcast."""
    try:
        np.broadcast_shapes(left, right)
    except ValueError:
        raise ValueError(
            f"{op}: shapes {left} and {right} do not broadcast; aligned from the "
            "right, each pair of sizes must be equal or contain a 1"
        ) from None


def check_axis(op: str, axis: int, ndim: int) -> int:
    """Return `axis` as a non-negative index into `ndim` dimensions, or raise naming the
    range."""
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise TypeError(f"{op}: axis must be an int, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"{op}: axis {axis} is out of range for a tensor with {ndim} dimensions"
        )
    return int(axis) % ndim


def check_axes(
    op: str, axis: int | tuple[int, ...] | None, ndim: int
) -> tuple[int, ...]:
    """Normalise `axis` (None for all axes, an int, or a tuple of ints) to a tuple of
    distinct indices."""
    if axis is None:
        return tuple(range(ndim))
    requested = axis if isinstance(axis, tuple) else (axis,)
    axes = tuple(check_axis(op, single_axis, ndim) for single_axis in requested)
    if len(set(axes)) != len(axes):
        raise ValueError(f"{op}: axis {axis} repeats an axis")
    return axes


# ## The tensor
#
# A `Tensor` is the scalar engine's `Value` with an array inside. `grad` has the shape
# of `data` and holds $\partial L / \partial(\text{data})$ once `backward()` has run.
# Each operation makes a new tensor that remembers its `parents` and an `op` name (for
# the dataflow diagram), and sets a `_backward` closure that reads `out.grad` and *adds*
# into each parent's `grad`. Adding, not assigning, is what makes a tensor used twice,
# like `a * a`, receive both contributions. (These closures do hold their own output,
# `out`, so each node sits in a reference cycle that Python's cycle collector frees;
# with a few dozen nodes per step, unlike the scalar engine's tens of thousands, that
# costs nothing.)
#
# NumPy arrays and tensors meet on both sides of an operator, and one line decides what
# happens when the array is on the left. `np.ones(3) * x` first asks the array, and
# NumPy, which treats any object it does not know as a scalar, would multiply
# elementwise and return an *array of `Tensor`s*: an object that is no longer in the
# graph, with no error. `__array_ufunc__ = None` tells NumPy to step aside instead, so
# Python calls `x.__rmul__(np.ones(3))` and the result is a `Tensor`. NumPy's functions,
# such as `np.exp(x)`, then refuse a `Tensor` outright; use `x.exp()`.


class Tensor:
    """An array of float64 numbers that records how it was computed, so that gradients
    can flow back.

    `data` may be a NumPy array of numbers or a Python or NumPy scalar. A float64 array
    is wrapped without a copy, as `torch.from_numpy` does; anything else is converted to
    float64. Lists and other objects are refused, so that `Tensor([1, 2])` cannot
    silently mean something else.
    """

    __array_ufunc__ = None

    def __init__(
        self, data, parents: tuple["Tensor", ...] = (), op: str = "leaf", name: str = ""
    ):
        if not isinstance(data, (np.ndarray, int, float, np.number)):
            raise TypeError(
                "Tensor: data must be a numpy array or a real number, got "
                f"{type(data).__name__}"
            )
        array = np.asarray(data)
        if array.dtype.kind not in "biuf":
            raise TypeError(
                f"Tensor: data must hold real numbers, got dtype {array.dtype}"
            )
        self.data = array.astype(np.float64, copy=False)
        self.grad = np.zeros_like(self.data)
        self.parents = parents
        self.op = op
        self.name = name
        self._backward = lambda: None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    def __repr__(self) -> str:
        return f"Tensor(shape={list(self.shape)}, op={self.op!r})"

    # ### Elementwise arithmetic
    #
    # For $y = a + b$ each input's local derivative is 1, so $\bar{a} = \bar{y}$ and
    # $\bar{b} = \bar{y}$, each summed back to its own shape. Subtraction flips the sign
    # for $b$. For the product, $\partial(ab)/\partial a = b$, so
    # $\bar{a} = \bar{y}\, b$ and $\bar{b} = \bar{y}\, a$, all elementwise. For the
    # quotient $y = a / b$:
    #
    # $$
    # \bar{a} = \frac{\bar{y}}{b}, \qquad
    # \bar{b} = -\bar{y}\,\frac{a}{b^2} = -\bar{y}\,\frac{y}{b} .
    # $$
    #
    # The multiplication by $b$ happens at the broadcast shape; only then is the result
    # summed down. Python numbers on either side are wrapped as 0-dimensional tensors,
    # so `2 * x` and `1 - x` work.

    def __add__(self, other) -> "Tensor":
        other = as_tensor(other)
        check_broadcast("add", self.shape, other.shape)
        out = Tensor(self.data + other.data, (self, other), "add")

        def _backward():
            self.grad += sum_to_shape(out.grad, self.shape)
            other.grad += sum_to_shape(out.grad, other.shape)

        out._backward = _backward
        return out

    def __sub__(self, other) -> "Tensor":
        other = as_tensor(other)
        check_broadcast("sub", self.shape, other.shape)
        out = Tensor(self.data - other.data, (self, other), "sub")

        def _backward():
            self.grad += sum_to_shape(out.grad, self.shape)
            other.grad -= sum_to_shape(out.grad, other.shape)

        out._backward = _backward
        return out

    def __mul__(self, other) -> "Tensor":
        other = as_tensor(other)
        check_broadcast("mul", self.shape, other.shape)
        out = Tensor(self.data * other.data, (self, other), "mul")

        def _backward():
            self.grad += sum_to_shape(out.grad * other.data, self.shape)
            other.grad += sum_to_shape(out.grad * self.data, other.shape)

        out._backward = _backward
        return out

    def __truediv__(self, other) -> "Tensor":
        other = as_tensor(other)
        check_broadcast("div", self.shape, other.shape)
        out = Tensor(self.data / other.data, (self, other), "div")

        def _backward():
            self.grad += sum_to_shape(out.grad / other.data, self.shape)
            other.grad -= sum_to_shape(out.grad * out.data / other.data, other.shape)

        out._backward = _backward
        return out

    def __neg__(self) -> "Tensor":
        out = Tensor(-self.data, (self,), "neg")

        def _backward():
            self.grad -= out.grad

        out._backward = _backward
        return out

    def __radd__(self, other) -> "Tensor":
        return as_tensor(other) + self

    def __rsub__(self, other) -> "Tensor":
        return as_tensor(other) - self

    def __rmul__(self, other) -> "Tensor":
        return as_tensor(other) * self

    def __rtruediv__(self, other) -> "Tensor":
        return as_tensor(other) / self

    def __rmatmul__(self, other) -> "Tensor":
        return as_tensor(other) @ self

    # ### Matrix product
    #
    # For $C = AB$ with $A$ of shape $m \times k$ and $B$ of shape $k \times n$,
    # $C_{ij} = \sum_k A_{ik} B_{kj}$. Differentiating,
    #
    # $$
    # \begin{aligned}
    # \bar{A}_{ik} &= \textstyle\sum_j \bar{C}_{ij} B_{kj} = (\bar{C} B^\top)_{ik}, \\
    # \bar{B}_{kj} &= \textstyle\sum_i A_{ik} \bar{C}_{ij} = (A^\top \bar{C})_{kj} .
    # \end{aligned}
    # $$
    #
    # A shape check confirms it: $\bar{C} B^\top$ is
    # $(m \times n)(n \times k) = m \times k$, the shape of $A$. The same rule holds for
    # stacks of matrices (`[batch, m, k] @ [k, n]`), where the leading axes broadcast
    # like any elementwise operation and are summed back with `sum_to_shape`; the
    # transpose then swaps only the last two axes.

    def __matmul__(self, other) -> "Tensor":
        other = as_tensor(other)
        if self.ndim < 2 or other.ndim < 2:
            raise ValueError(
                f"matmul: operands must have at least 2 dimensions, got {self.shape} "
                f"and {other.shape}"
            )
        if self.shape[-1] != other.shape[-2]:
            raise ValueError(
                f"matmul: left is {self.shape} and right is {other.shape}; "
                "left's last dimension must equal right's second-to-last"
            )
        check_broadcast("matmul (batch axes)", self.shape[:-2], other.shape[:-2])
        out = Tensor(self.data @ other.data, (self, other), "matmul")

        def _backward():
            self.grad += sum_to_shape(
                out.grad @ np.swapaxes(other.data, -1, -2), self.shape
            )
            other.grad += sum_to_shape(
                np.swapaxes(self.data, -1, -2) @ out.grad, other.shape
            )

        out._backward = _backward
        return out

    # ### Reshaping and transposing
    #
    # Neither changes a number, only where it sits, so the backward rule moves the
    # gradient back: a reshape is undone by reshaping to the input's shape, and the
    # permutation `axes` by its inverse (`np.argsort(axes)`: if output axis $i$ is input
    # axis $p_i$, input axis $p_i$ is output axis $i$).

    def reshape(self, shape: tuple[int, ...]) -> "Tensor":
        """The same numbers in a new `shape`; one entry may be -1 to be inferred."""
        try:
            reshaped = self.data.reshape(shape)
        except (ValueError, TypeError):
            raise ValueError(
                f"reshape: cannot reshape a tensor of shape {self.shape} "
                f"({self.data.size} elements) into {shape}"
            ) from None
        out = Tensor(reshaped, (self,), "reshape")

        def _backward():
            self.grad += out.grad.reshape(self.shape)

        out._backward = _backward
        return out

    def transpose(self, axes: tuple[int, ...] | None = None) -> "Tensor":
        """Permute the axes: output axis `i` is input axis `axes[i]`. The default
        reverses them."""
        axes = tuple(reversed(range(self.ndim))) if axes is None else tuple(axes)
        if sorted(axes) != list(range(self.ndim)):
            raise ValueError(
                f"transpose: axes {axes} must be a permutation of 0..{self.ndim - 1} "
                f"for shape {self.shape}"
            )
        out = Tensor(self.data.transpose(axes), (self,), "transpose")

        def _backward():
            self.grad += out.grad.transpose(np.argsort(axes))

        out._backward = _backward
        return out

    # ### Reductions
    #
    # A sum over some axes, $y = \sum_{i \in \text{axes}} x_i$, has local derivative 1
    # for every input, so each $x_i$ receives the gradient of the output it was summed
    # into: the backward rule is a broadcast, the mirror image of broadcasting's
    # backward rule being a sum. When `keepdims=False` the reduced axes are gone from
    # $\bar{y}$; `np.expand_dims` puts them back as size 1 so that the broadcast lines
    # up. The mean divides by the count $N$ of numbers averaged, so it also divides the
    # gradient by $N$.

    def sum(
        self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False
    ) -> "Tensor":
        """Sum over `axis` (all axes when None), dropping the summed axes unless
        `keepdims`."""
        axes = check_axes("sum", axis, self.ndim)
        out = Tensor(self.data.sum(axis=axes, keepdims=keepdims), (self,), "sum")

        def _backward():
            upstream = out.grad if keepdims else np.expand_dims(out.grad, axes)
            self.grad += np.broadcast_to(upstream, self.shape)

        out._backward = _backward
        return out

    def mean(
        self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False
    ) -> "Tensor":
        """Average over `axis` (all axes when None), dropping the averaged axes unless
        `keepdims`."""
        axes = check_axes("mean", axis, self.ndim)
        count = math.prod(self.shape[single_axis] for single_axis in axes)
        out = Tensor(self.data.mean(axis=axes, keepdims=keepdims), (self,), "mean")

        def _backward():
            upstream = out.grad if keepdims else np.expand_dims(out.grad, axes)
            self.grad += np.broadcast_to(upstream, self.shape) / count

        out._backward = _backward
        return out

    # ### Elementwise functions
    #
    # Each multiplies the upstream gradient by its own derivative, elementwise. Two of
    # them reuse the forward *output*: $\frac{d}{dx} e^x = e^x$ and
    # $\frac{d}{dx}\tanh x = 1 - \tanh^2 x$, so the closure reads `out.data` instead of
    # recomputing. The logarithm's derivative is $1/x$, and ReLU's is 1 where $x > 0$
    # and 0 elsewhere (PyTorch also picks 0 at the kink $x = 0$).

    def exp(self) -> "Tensor":
        out = Tensor(np.exp(self.data), (self,), "exp")

        def _backward():
            self.grad += out.grad * out.data

        out._backward = _backward
        return out

    def log(self) -> "Tensor":
        """The natural logarithm; every element must be positive."""
        if np.any(self.data <= 0):
            raise ValueError(
                "log: input must be positive everywhere, but its minimum is "
                f"{self.data.min()}"
            )
        out = Tensor(np.log(self.data), (self,), "log")

        def _backward():
            self.grad += out.grad / self.data

        out._backward = _backward
        return out

    def relu(self) -> "Tensor":
        out = Tensor(np.maximum(self.data, 0.0), (self,), "relu")

        def _backward():
            self.grad += out.grad * (self.data > 0)

        out._backward = _backward
        return out

    def tanh(self) -> "Tensor":
        out = Tensor(np.tanh(self.data), (self,), "tanh")

        def _backward():
            self.grad += out.grad * (1.0 - out.data**2)

        out._backward = _backward
        return out

    # ### Softmax, computed so that it cannot overflow
    #
    # The softmax turns a row of scores $z$ into probabilities,
    # $s_i = e^{z_i} / \sum_k e^{z_k}$. Taken literally it breaks on ordinary inputs:
    # float64's `exp` overflows to infinity above about 709.78, and a score of 1,000
    # gives $\infty / \infty = \text{NaN}$. Very negative scores underflow every
    # $e^{z_k}$ to 0 and give $0/0$. The cure is an identity: for any constant $c$,
    #
    # $$
    # \frac{e^{z_i - c}}{\sum_k e^{z_k - c}}
    # = \frac{e^{-c}\, e^{z_i}}{e^{-c} \sum_k e^{z_k}} = s_i .
    # $$
    #
    # Choosing $c = \max_k z_k$ makes the largest exponent $e^0 = 1$: nothing can
    # overflow, and the denominator is at least 1, so it cannot underflow to 0 either.
    # The same shift makes the log-softmax safe,
    # $\log s_i = (z_i - c) - \log \sum_k e^{z_k - c}$, and computing it this way,
    # rather than as `log(softmax(z))`, also keeps tiny probabilities from rounding to
    # $\log 0 = -\infty$.
    #
    # The backward rules come from one Jacobian,
    # $\partial s_i / \partial z_j = s_i(\delta_{ij} - s_j)$, and its logarithmic form
    # $\partial \log s_i / \partial z_j = \delta_{ij} - s_j$. For the softmax,
    #
    # $$
    # \begin{aligned}
    # \bar{z}_j &= \sum_i \bar{s}_i\, s_i (\delta_{ij} - s_j) \\
    #   &= s_j \Big(\bar{s}_j - \sum_i \bar{s}_i s_i\Big),
    # \end{aligned}
    # $$
    #
    # and for the log-softmax,
    #
    # $$
    # \begin{aligned}
    # \bar{z}_j &= \sum_i \overline{\log s}_i\, (\delta_{ij} - s_j) \\
    #   &= \overline{\log s}_j - s_j \sum_i \overline{\log s}_i .
    # \end{aligned}
    # $$
    #
    # Both are a few elementwise operations and one sum along the axis: the $n \times n$
    # Jacobian per row is never formed.

    def softmax(self, axis: int = -1) -> "Tensor":
        """Probabilities along `axis`: exponentiate, shifted by the maximum, and
        normalise."""
        axis = check_axis("softmax", axis, self.ndim)
        shifted = self.data - self.data.max(axis=axis, keepdims=True)
        exponentials = np.exp(shifted)
        out = Tensor(
            exponentials / exponentials.sum(axis=axis, keepdims=True),
            (self,),
            "softmax",
        )

        def _backward():
            weighted_sum = (out.grad * out.data).sum(axis=axis, keepdims=True)
            self.grad += out.data * (out.grad - weighted_sum)

        out._backward = _backward
        return out

    def log_softmax(self, axis: int = -1) -> "Tensor":
        """Log-probabilities along `axis`, computed from max-shifted scores."""
        axis = check_axis("log_softmax", axis, self.ndim)
        shifted = self.data - self.data.max(axis=axis, keepdims=True)
        out = Tensor(
            shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True)),
            (self,),
            "log_softmax",
        )

        def _backward():
            probabilities = np.exp(out.data)
            self.grad += out.grad - probabilities * out.grad.sum(
                axis=axis, keepdims=True
            )

        out._backward = _backward
        return out

    # ### Backward
    #
    # A tensor's gradient is complete only when every tensor computed from it has passed
    # its share back. A topological order, each tensor after its parents, guarantees
    # that when it is walked in reverse. It is built by the same depth-first search as
    # in [the scalar engine](autograd.md), with its own stack of
    # `(tensor, iterator over its parents)` pairs rather than recursion: a recursive
    # search needs one Python call frame per tensor along the longest path, and a graph
    # 1,000 operations deep (a long unrolled recurrence, or the test's chain of 10,000)
    # would exceed Python's recursion limit. The seed $\partial L / \partial L = 1$
    # starts the walk for a scalar loss; for a non-scalar output the caller passes
    # $\bar{y}$ explicitly, which is how the tests probe a single operation.
    #
    # Interior gradients are zeroed before the walk, so running `backward()` twice gives
    # the same interior gradients. Leaf gradients (the parameters) *accumulate* across
    # calls, as in PyTorch, which is why the optimiser zeroes them before each step.

    def topological_order(self) -> list["Tensor"]:
        """Every tensor this one depends on, itself last, each after all of its
        parents."""
        order: list[Tensor] = []
        visited = {self}
        stack = [(self, iter(self.parents))]
        while stack:
            tensor, parents = stack[-1]
            for parent in parents:
                if parent not in visited:
                    visited.add(parent)
                    stack.append((parent, iter(parent.parents)))
                    break
            else:
                stack.pop()
                order.append(tensor)
        return order

    def backward(self, gradient: np.ndarray | None = None) -> None:
        """Fill `grad` of every tensor this one depends on with the derivative of this
        one."""
        if gradient is None:
            if self.data.size != 1:
                raise ValueError(
                    f"backward: output has shape {self.shape}; pass gradient= unless "
                    "it is a scalar"
                )
            gradient = np.ones_like(self.data)
        elif np.shape(gradient) != self.shape:
            raise ValueError(
                f"backward: gradient has shape {np.shape(gradient)} but the output has "
                f"shape {self.shape}"
            )
        elif np.asarray(gradient).dtype.kind not in "biuf":
            raise TypeError(
                "backward: gradient must hold real numbers, got dtype "
                f"{np.asarray(gradient).dtype}"
            )
        order = self.topological_order()
        for tensor in order:
            if tensor.parents:
                tensor.grad.fill(0.0)
        self.grad += gradient
        for tensor in reversed(order):
            tensor._backward()


def as_tensor(value) -> Tensor:
    """`value` itself if it is a `Tensor`; otherwise a new leaf wrapping it
    (type-checked by `Tensor`)."""
    return value if isinstance(value, Tensor) else Tensor(value)


# ## Cross-entropy, fused
#
# A classifier's loss is the mean negative log-probability of the right class. With
# scores $z_{b}$ for example $b$ of a batch of $B$ and its target class $y_b$,
#
# $$
# L = -\frac{1}{B} \sum_{b=1}^{B} \log s_{b, y_b},
# \quad s_b = \operatorname{softmax}(z_b) .
# $$
#
# It could be built from `log_softmax`, an indexing operation and `mean`, but fusing it
# into one node gives the most famous gradient in deep learning. From the log-softmax
# rule with $\overline{\log s}_{bi} = -[i = y_b]/B$:
#
# $$
# \frac{\partial L}{\partial z_{bj}} = \frac{1}{B}\big(s_{bj} - [j = y_b]\big),
# $$
#
# the predicted probabilities minus the one-hot target. Every score is pushed down in
# proportion to the probability it claims, the right one is pulled up by 1, and the
# gradient of each row sums to zero.


def cross_entropy(logits: Tensor, targets: np.ndarray) -> Tensor:
    """Mean cross-entropy of `logits [batch, classes]` against integer class
    `targets [batch]`."""
    if not isinstance(logits, Tensor):
        raise TypeError(
            f"cross_entropy: logits must be a Tensor, got {type(logits).__name__}"
        )
    if logits.ndim != 2:
        raise ValueError(
            "cross_entropy: logits must be 2-D [batch, classes], got shape "
            f"{logits.shape}"
        )
    if not isinstance(targets, np.ndarray) or targets.dtype.kind not in "iu":
        raise TypeError(
            "cross_entropy: targets must be a numpy array of integer class indices"
        )
    batch, classes = logits.shape
    if targets.shape != (batch,):
        raise ValueError(
            f"cross_entropy: targets must have shape ({batch},) to match logits "
            f"{logits.shape}, got {targets.shape}"
        )
    if batch == 0:
        raise ValueError(
            "cross_entropy: logits must hold at least one row (the mean over an empty "
            f"batch is undefined), got shape {logits.shape}"
        )
    if targets.min() < 0 or targets.max() >= classes:
        raise ValueError(
            f"cross_entropy: targets must lie in [0, {classes}), got values from "
            f"{targets.min()} to {targets.max()}"
        )
    rows = np.arange(batch)
    shifted = logits.data - logits.data.max(axis=1, keepdims=True)  # [batch, classes]
    log_normalizer = np.log(np.exp(shifted).sum(axis=1, keepdims=True))  # [batch, 1]
    log_probabilities = shifted - log_normalizer  # [batch, classes]
    out = Tensor(-log_probabilities[rows, targets].mean(), (logits,), "cross_entropy")

    def _backward():
        gradient = np.exp(log_probabilities)  # [batch, classes], the probabilities s
        gradient[rows, targets] -= 1.0
        logits.grad += out.grad * gradient / batch

    out._backward = _backward
    return out


# ## A two-layer network
#
# A linear layer computes $y = xW + b$ for a batch $x$ `[batch, fan_in]`. The weight is
# stored `[fan_in, fan_out]` so that the forward pass is one `@`; `torch.nn.Linear`
# stores the transpose, `[fan_out, fan_in]`, and computes $x W^\top + b$, which the test
# bridges with a `.T`.
#
# The initial scale of $W$ matters. With independent zero-mean weights, each output is a
# sum of `fan_in` terms, so
# $\operatorname{Var}(y_j) = n_\text{in} \operatorname{Var}(W) \, \mathbb{E}[x^2]$. **He
# initialisation** [@he2015delving] is for layers feeding a ReLU: a ReLU zeroes half of
# a symmetric input, halving $\mathbb{E}[x^2]$ for the next layer, so
# $\operatorname{Var}(W) = 2 / n_\text{in}$ keeps the signal's size constant from layer
# to layer. **Glorot initialisation** [@glorot2010understanding],
# $\operatorname{Var}(W) = 2 / (n_\text{in} + n_\text{out})$, balances the forward
# signal against the backward gradient for layers without that halving, such as the last
# one feeding the softmax; drawn uniformly from $[-a, a]$, whose variance is $a^2/3$, it
# needs $a = \sqrt{6 / (n_\text{in} + n_\text{out})}$. Biases start at zero.


class Linear:
    r"""An affine layer $y = xW + b$ with `weight [fan_in, fan_out]` and
    `bias [fan_out]`.

    `init` is `"he"` (normal, variance $2/n_\text{in}$, for layers followed by a ReLU)
    or `"glorot"` (uniform, variance $2/(n_\text{in} + n_\text{out})$).
    """

    def __init__(
        self,
        fan_in: int,
        fan_out: int,
        init: str,
        rng: np.random.Generator,
        name: str = "linear",
    ):
        if not all(is_positive_int(size) for size in (fan_in, fan_out)):
            raise ValueError(
                "Linear: fan_in and fan_out must be ints >= 1, "
                f"got {fan_in!r} and {fan_out!r}"
            )
        if init == "he":
            weight = rng.normal(0.0, math.sqrt(2.0 / fan_in), (fan_in, fan_out))
        elif init == "glorot":
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            weight = rng.uniform(-limit, limit, (fan_in, fan_out))
        else:
            raise ValueError(f"Linear: init must be 'he' or 'glorot', got {init!r}")
        self.weight = Tensor(weight, name=f"{name}.weight")  # [fan_in, fan_out]
        self.bias = Tensor(np.zeros(fan_out), name=f"{name}.bias")  # [fan_out]

    def __call__(self, x: Tensor) -> Tensor:
        return x @ self.weight + self.bias  # [batch, fan_out]

    def parameters(self) -> list[Tensor]:
        return [self.weight, self.bias]


class MLP:
    """Two linear layers with a ReLU between them: `[batch, d_in]` in, class scores
    `[batch, d_out]` out."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, seed: int = 0):
        if not all(is_positive_int(size) for size in (d_in, d_hidden, d_out)):
            raise ValueError(
                "MLP: d_in, d_hidden and d_out must be ints >= 1, "
                f"got {d_in!r}, {d_hidden!r} and {d_out!r}"
            )
        rng = np.random.default_rng(seed)
        self.hidden = Linear(d_in, d_hidden, "he", rng, name="hidden")
        self.output = Linear(d_hidden, d_out, "glorot", rng, name="output")

    def __call__(self, x: Tensor) -> Tensor:
        return self.output(self.hidden(x).relu())  # [batch, d_out] logits

    def parameters(self) -> list[Tensor]:
        return self.hidden.parameters() + self.output.parameters()


# ## Stochastic gradient descent with momentum
#
# Plain SGD steps against the gradient, $\theta \leftarrow \theta - \eta g$. Momentum
# [@polyak1964some] keeps a running velocity, so that directions the gradient agrees on
# from step to step build up speed while directions where it flips sign cancel:
#
# $$
# v \leftarrow \mu v + g, \qquad \theta \leftarrow \theta - \eta v .
# $$
#
# This is exactly `torch.optim.SGD(lr=η, momentum=μ)`, which the test confirms parameter
# by parameter. The update writes into `data` in place: the parameters are leaves, and
# no graph runs through them.


class SGD:
    """Momentum SGD over a list of leaf tensors."""

    def __init__(self, parameters: list[Tensor], lr: float, momentum: float = 0.0):
        self.parameters = list(parameters)
        if not all(isinstance(parameter, Tensor) for parameter in self.parameters):
            raise TypeError("SGD: parameters must be Tensors")
        for name, value in (("lr", lr), ("momentum", momentum)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(
                    f"SGD: {name} must be a real number, got {type(value).__name__}"
                )
        if not 0.0 < lr < math.inf:
            raise ValueError(f"SGD: lr must be > 0 and finite, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"SGD: momentum must lie in [0, 1), got {momentum}")
        self.lr = lr
        self.momentum = momentum
        self.velocities = [
            np.zeros_like(parameter.data) for parameter in self.parameters
        ]

    def zero_grad(self) -> None:
        for parameter in self.parameters:
            parameter.grad.fill(0.0)

    def step(self) -> None:
        for parameter, velocity in zip(self.parameters, self.velocities):
            velocity *= self.momentum
            velocity += parameter.grad
            parameter.data -= self.lr * velocity


# ## The example
#
# One forward and backward pass of a small network on a batch of eight random "images".
# Its dataflow diagram is the tensor graph itself: one node per tensor, labelled with
# the operation (or the parameter's name) and the shape.


def example():
    """A small example: one forward and backward pass of a 64 → 32 → 10 network on a
    `[8, 64]` batch."""
    rng = np.random.default_rng(0)
    model = MLP(64, 32, 10, seed=0)
    x = Tensor(rng.random((8, 64)), name="x")  # [8, 64]
    targets = rng.integers(0, 10, size=8)  # [8]

    def forward_backward(x: Tensor, targets: np.ndarray) -> Tensor:
        loss = cross_entropy(model(x), targets)
        loss.backward()
        return loss

    return forward_backward, (x, targets)


def dataflow(output: Tensor):
    """The graph behind `output`: nodes `(id, "op [shape]")` and edges
    `(parent, child, "[shape]")`."""
    order = output.topological_order()
    node_ids = {tensor: f"t{index}" for index, tensor in enumerate(order)}

    def shape_label(tensor):
        return str(list(tensor.shape)) if tensor.shape else "scalar"

    nodes = [
        (node_ids[tensor], f"{tensor.name or tensor.op} {shape_label(tensor)}")
        for tensor in order
    ]
    edges = [
        (node_ids[parent], node_ids[tensor], shape_label(parent))
        for tensor in order
        for parent in tensor.parents
    ]
    return nodes, edges


# ## The demo
#
# Train the network on the 1,438 training digits in mini-batches, reshuffled every
# epoch, and after each epoch measure accuracy on the 359 held-out test digits. The
# figure shows the mean training loss and the test accuracy per epoch.


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description="Train a two-layer MLP on digits with a NumPy tensor autograd "
        "engine.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--epochs",
        type=integer(at_least=1),
        default=30,
        help="passes over the training set",
    )
    parser.add_argument(
        "--hidden",
        type=integer(at_least=1),
        default=64,
        help="width of the hidden layer",
    )
    parser.add_argument(
        "--batch-size",
        type=integer(at_least=1),
        default=64,
        help="examples per gradient step",
    )
    parser.add_argument(
        "--lr", type=number(above=0), default=0.05, help="learning rate"
    )
    parser.add_argument(
        "--momentum", type=number(at_least=0, below=1), default=0.9, help="SGD momentum"
    )
    parser.add_argument(
        "--seed",
        type=integer(at_least=0),
        default=0,
        help="random seed for the split, initialisation and shuffling",
    )
    parser.add_argument(
        "--out", default="out/tensor_autograd", help="folder for the figures"
    )
    args = parser.parse_args(argv)
    x_train, y_train, x_test, y_test = digits(seed=args.seed)  # x: [n, 64], y: [n]
    model = MLP(x_train.shape[1], args.hidden, 10, seed=args.seed)
    optimiser = SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    rng = np.random.default_rng(args.seed)

    train_losses, test_accuracies = [], []
    progress = tqdm(range(args.epochs), desc="epochs")
    for _ in progress:
        order = rng.permutation(len(x_train))
        batch_losses = []
        for start in range(0, len(order), args.batch_size):
            batch = order[start : start + args.batch_size]
            optimiser.zero_grad()
            loss = cross_entropy(model(Tensor(x_train[batch])), y_train[batch])
            loss.backward()
            optimiser.step()
            batch_losses.append(loss.data.item())
        test_logits = model(Tensor(x_test)).data  # [359, 10]
        train_losses.append(float(np.mean(batch_losses)))
        test_accuracies.append(float(np.mean(test_logits.argmax(axis=1) == y_test)))
        progress.set_postfix(
            loss=f"{train_losses[-1]:.3f}", test_accuracy=f"{test_accuracies[-1]:.3f}"
        )

    epochs = np.arange(1, args.epochs + 1)
    fig, (loss_axes, accuracy_axes) = figure(panels=2)
    loss_axes.plot(epochs, train_losses)
    loss_axes.set(
        xlabel="epoch", ylabel="mean training loss", yscale="log", title="Training loss"
    )
    accuracy_axes.plot(epochs, test_accuracies, color="tab:green")
    accuracy_axes.set(xlabel="epoch", ylabel="accuracy", title="Test accuracy")
    save(
        fig,
        Path(args.out) / "loss.png",
        caption="Training the two-layer network on digits with the tensor engine. "
        "Left: the mean cross-entropy over each epoch's mini-batches, on a log scale. "
        "Right: accuracy on the 359 held-out test digits after each epoch, above 95 % "
        "within a few epochs.",
    )

    print(f"test accuracy {test_accuracies[-1]:.3f}")
    return {"test_accuracy": test_accuracies[-1], "train_loss": train_losses[-1]}


if __name__ == "__main__":
    main()

# ## Exercises
#
# 1. Add `__pow__` for a constant exponent and `sqrt`, then build a `LayerNorm` from
#    `mean`, `sub`, `mul`, `pow` and `div`. Check its gradient against
#    `torch.nn.functional.layer_norm`.
# 2. Every leaf gets a gradient, even the input batch `x`, whose gradient costs a full
#    matrix product per step and is never used. Add a `requires_grad` flag that lets
#    `backward` skip such tensors, and measure the step time before and after with the
#    benchmark in the test.
# 3. Replace the fused `cross_entropy` with a composition of `log_softmax`, a new
#    indexing operation `x[rows, columns]` (its backward rule is a scatter-add:
#    `np.add.at`), and `mean`. Confirm the gradients agree, and count the nodes each
#    version adds to the graph.
# 4. Add `max(axis)`, whose backward rule sends each output's gradient to the element
#    that was the maximum. What should happen when two elements tie, what does
#    `torch.amax` do, and how would you test the difference?
