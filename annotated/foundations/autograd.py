r"""
---
title: Reverse-mode automatic differentiation
summary: >-
  A scalar autograd engine, checked against torch.autograd to 1e-9, faster than
  micrograd, and used to train a small neural network.
time: 6 s
expected:
  metric: accuracy
  short: ["--steps", "60"]
references:
  - key: wengert1964simple
    authors: [R. E. Wengert]
    title: A simple automatic derivative evaluation program
    year: 1964
    venue: Communications of the ACM 7(8)
    url: https://doi.org/10.1145/355586.364791
  - key: griewank2008evaluating
    authors: [Andreas Griewank, Andrea Walther]
    title: >-
      Evaluating Derivatives: Principles and Techniques of Algorithmic
      Differentiation, second edition
    year: 2008
    venue: SIAM
    url: https://doi.org/10.1137/1.9780898717761
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
  - key: rumelhart1986learning
    authors: [David E. Rumelhart, Geoffrey E. Hinton, Ronald J. Williams]
    title: Learning representations by back-propagating errors
    year: 1986
    venue: Nature 323
    url: https://doi.org/10.1038/323533a0
  - key: karpathy2020micrograd
    authors: [Andrej Karpathy]
    title: "micrograd: a tiny scalar-valued autograd engine"
    year: 2020
    venue: GitHub repository
    url: https://github.com/karpathy/micrograd
worksheet:
  - region: Value.topological_order
    hint: >-
      Depth-first search without recursion: keep a stack of (node, iterator over its
      children), push the first unvisited child, and append a node to the order only
      once all its children are in; the output itself comes last.
    tests: [test_topological_order_lists_every_node_after_its_children]
  - region: Value.backward
    hint: >-
      Take the topological order, reset the gradient of every node that has children
      to 0, add the seed 1 to this node's gradient, then call each node's _backward
      with its gradient, from the output back to the leaves.
    tests:
      - test_value_used_twice_accumulates_gradients
      - test_backward_order_example_from_the_lesson
      - test_backward_twice_doubles_leaf_gradients_like_torch
      - test_backward_on_a_bare_leaf_accumulates_like_torch
---

Training a neural network means moving every parameter a little against the gradient of
one number, the loss. A network has thousands to billions of parameters
$\theta_1, \dots, \theta_n$ and a single loss $L$, so each training step needs all $n$
partial derivatives $\partial L / \partial \theta_i$: exactly, and at a cost close to
that of computing $L$ itself.

The obvious ways fail. Writing the derivative out symbolically produces expressions that
grow much faster than the program they came from. Finite differences,
$(L(\theta + h e_i) - L(\theta - h e_i)) / 2h$, need two evaluations of $L$ *per
parameter*, and with rounding error pulling against truncation error they keep at best
about two-thirds of a float's digits. Automatic differentiation does neither: it records
each elementary operation as the program runs (a sum, a product, a $\tanh$) and applies
the chain rule to that record [@griewank2008evaluating; @baydin2018automatic]. Every
operation only has to know its own local derivative. The record goes by several names: a
*tape*, a *computation graph*, or a *Wengert list*, after R. E. Wengert, who described
the forward-mode version of the method in 1964 [@wengert1964simple].

This lesson builds the idea at its smallest, in the style of Karpathy's micrograd
[@karpathy2020micrograd]. `Value` wraps one float and remembers which values it was
computed from and how to send a gradient back to them; `backward()` visits the record in
the right order. On top of it, `Neuron`, `Layer` and `MLP` are a neural network in a few
lines, and the demo trains one on two interleaved half-moons. The test checks every
operation against `torch.autograd` on random expressions, and times a training step
against micrograd itself.

## The chain rule

If $y = f(u)$ and $u = g(x)$, a small change in $x$ changes $u$ by $g'(x)$ times as
much, and each change in $u$ changes $y$ by $f'(u)$ times as much:
$$
\frac{dy}{dx} = \frac{dy}{du}\,\frac{du}{dx} .
$$
A program is a longer chain, and a branching one: a value can feed several later values,
and every path from $x$ to $L$ carries part of $x$'s influence. The multivariate chain
rule adds the paths up, each path contributing the product of the local derivatives
along it:
$$
\frac{\partial L}{\partial x}
= \sum_{\text{paths } x \to L} \; \prod_{(u \to v) \in \text{path}}
\frac{\partial v}{\partial u} .
$$
The number of paths can grow exponentially with the depth of the program, so nobody sums
them one by one. Both modes below factor the sum so that each edge's local derivative is
used once per pass.

## Forward mode or reverse mode

Take a program that computes $L$ from inputs $x_1, \dots, x_n$ through intermediate
values $v$. The chain rule can be applied in two directions.

*Forward mode* fixes one input $x_j$ and carries the tangent
$\dot v = \partial v / \partial x_j$ forward alongside each value: if
$v = f(u, w)$, then
$$
\dot v = \frac{\partial f}{\partial u}\,\dot u + \frac{\partial f}{\partial w}\,\dot w .
$$
One pass costs a small constant times one evaluation of $L$ and yields
$\partial L / \partial x_j$ for a single $j$. The full gradient needs $n$ passes.

*Reverse mode* fixes the output and carries the adjoint
$\bar v = \partial L / \partial v$ backward, from $\bar L = 1$ down to the inputs. A
value $u$ used by several later values $v$ collects one term from each:
$$
\bar u = \sum_{v \,\text{uses}\, u} \bar v \,\frac{\partial v}{\partial u} .
$$
One backward pass, again a small constant times the cost of $L$, yields $\bar x_j$ for
*every* $j$.

For a scalar loss of $n$ parameters, the whole gradient therefore costs $n$ forward-mode
passes but a single reverse-mode pass: reverse mode is about $n$ times cheaper. For the
demo's small network $n = 105$; for GPT-2 small, $n \approx 1.24 \times 10^8$. That is
why every deep-learning framework is built on reverse mode, which applied to neural
networks is called backpropagation [@rumelhart1986learning]. Its price is memory: the
backward pass needs the intermediate values of the forward pass, so they are kept until
it runs. (For a function with one input and many outputs the comparison flips, and
forward mode wins.)
"""

import argparse
import gc
import math
import numbers
import random
from pathlib import Path

import numpy as np
from tqdm import tqdm

from annotated.data import integer, number, two_moons
from annotated.figures import figure, save


# ## The engine
#
# A `Value` is one node of the computation graph. Besides its number it keeps three
# things: the values it was computed from (its *children*, because `backward` walks from
# the output at the root down towards them), the name of the operation (only for drawing
# the graph), and a closure `_backward`.
#
# Once the node's own gradient $\bar z$ is complete, `backward` calls `_backward` with
# $\bar z$, which applies the chain rule for this one operation: it adds
# $\bar z \, \partial z / \partial x$ to the `grad` of each child $x$. PyTorch's custom
# operations have the same contract, `Function.backward(ctx, grad_output)`: the gradient
# of the output comes in, the gradients of the inputs go out. A leaf (an input or a
# parameter) has no children, and its `_backward` does nothing.
#
# Every operation below follows the same pattern: compute the forward result, then
# define `_backward` right beside it. The forward rule and the backward rule of an
# operation are never more than a few lines apart.
#
# The closure holds the children and any forward result it needs, but never the node it
# belongs to. micrograd's closures read `out.grad`, so each node holds its closure and
# the closure holds the node: a reference cycle per node, which only Python's cycle
# collector can free. Ours receive the gradient as an argument instead. So the graph has
# no reference cycles, and Python frees a whole graph by reference counting as soon as
# the last name for its output goes away; the demo relies on that.
class Value:
    r"""A scalar that remembers how it was computed, so that gradients can flow back
    through it.

    `data` is the number. `grad` holds $\partial L / \partial \mathrm{self}$ once
    `L.backward()` has run. Gradients are added to it with `+=`, never assigned, because
    a value used twice receives one contribution from each use. `label` is an optional
    name for the diagram.
    """

    # The demo's loss is a graph of over 21,000 `Value`s, built and thrown away at every
    # step, so creating a node has to be cheap. Three choices make it so. `__slots__`
    # fixes the fields of a `Value` and stores them in the object itself, with no room
    # for attributes it does not declare: the object is about a third smaller (80 bytes
    # instead of 128 on CPython 3.11, as `tracemalloc` counts them) and quicker to
    # create. Every leaf shares one `_backward` that does nothing, `_leaf_backward`,
    # rather than each making a `lambda` of its own.
    #
    # And the type check runs in full only when `data` is not already a `float`. Every
    # operation below passes a float it has just computed, so only a number from outside
    # (an input, a parameter, a constant in `x * 2`) pays for the full check. That check
    # accepts any real number, NumPy's `float32` and `int64` included, but not a `bool`:
    # `bool` is a subclass of `int` in Python, and a `True` here is almost certainly a
    # mistake.
    #
    # `__array_ufunc__ = None` tells NumPy not to handle a `Value` itself. Without it,
    # `np.array([1.0, 2.0]) * x` quietly becomes an array of `Value`s, while
    # `x * np.array([1.0, 2.0])` fails; with it, NumPy hands both to `Value`, which
    # refuses an array as it refuses any other non-number, and `np.exp(x)` says that a
    # `Value` does not support ufuncs (write `x.exp()`). NumPy scalars still work on
    # either side.
    __slots__ = ("data", "grad", "label", "_children", "_op", "_backward")
    __array_ufunc__ = None

    @staticmethod
    def _leaf_backward(out_grad: float) -> None:  # no children to pass it on to
        pass

    def __init__(
        self,
        data: float,
        children: tuple["Value", ...] = (),
        op: str = "",
        label: str = "",
    ):
        if type(data) is not float:
            if isinstance(data, bool) or not isinstance(data, numbers.Real):
                raise TypeError(
                    "Value: data must be a real number (an int or a float), "
                    f"got {type(data).__name__} {data!r}"
                )
            data = float(data)
        self.data = data
        self.grad = 0.0
        self.label = label
        self._children = children
        self._op = op
        self._backward = Value._leaf_backward

    def __repr__(self) -> str:
        return f"Value(data={self.data:.6g}, grad={self.grad:.6g})"

    # ### Addition and multiplication
    #
    # In the backward rules, `+=` matters. In `a + a` both children are the same object,
    # and the true derivative is 2; with `=` the second assignment would overwrite the
    # first and leave 1.
    def __add__(self, other: "Value | float") -> "Value":
        r"""$z = x + y$ has $\partial z / \partial x = \partial z / \partial y = 1$.

        The sum passes $\bar z$ unchanged to both inputs.
        """
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data + other.data, (self, other), "+")

        def _backward(out_grad):
            self.grad += out_grad
            other.grad += out_grad

        out._backward = _backward
        return out

    # The product's backward rule reads `other.data` and `self.data`: the forward values
    # have to be kept until the backward pass. That is the memory price of reverse mode,
    # visible in two lines.
    def __mul__(self, other: "Value | float") -> "Value":
        r"""$z = x y$ has $\partial z / \partial x = y$ and
        $\partial z / \partial y = x$.

        Each input receives $\bar z$ times the *other* input.
        """
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data * other.data, (self, other), "*")

        def _backward(out_grad):
            self.grad += other.data * out_grad
            other.grad += self.data * out_grad

        out._backward = _backward
        return out

    # ### Powers
    #
    # The exponent must be a plain number: differentiating with respect to the exponent
    # too would need $x^y = e^{y \log x}$, which the exponential and logarithm below
    # already provide.
    #
    # Two bases are refused before anything is computed. A negative base has no real
    # power unless the exponent is a whole number. At a base of 0, $x^n$ or its
    # derivative $n x^{n-1}$ is infinite whenever $n < 1$, except $n = 0$: $x^0$ is the
    # constant 1, whose derivative is 0. Division by zero arrives here too, as $0^{-1}$.
    def __pow__(self, exponent: float) -> "Value":
        r"""$z = x^n$ for a fixed number $n$ has
        $\partial z / \partial x = n x^{n-1}$."""
        if isinstance(exponent, Value):
            raise TypeError(
                "Value ** exponent: the exponent must be an int or a float, not a "
                "Value; for a Value exponent y write (y * x.log()).exp()"
            )
        if isinstance(exponent, bool) or not isinstance(exponent, numbers.Real):
            raise TypeError(
                "Value ** exponent: the exponent must be an int or a float, "
                f"got {type(exponent).__name__}"
            )
        if self.data < 0 and not float(exponent).is_integer():
            raise ValueError(
                f"Value ** exponent: a negative base ({self.data}) has no real power "
                f"{exponent}"
            )
        if self.data == 0 and exponent < 1 and exponent != 0:
            raise ValueError(
                f"Value ** exponent: at base 0, x ** {exponent} has no finite "
                "derivative (the exponent must be 0 or >= 1 there; dividing by a Value "
                "of 0 also ends here)"
            )
        exponent = float(exponent)  # a NumPy float32 would round the result to float32
        out = Value(self.data**exponent, (self,), f"**{exponent:g}")

        def _backward(out_grad):
            if exponent != 0:  # x ** 0 is the constant 1 (and 0.0 ** -1 would raise)
                self.grad += exponent * self.data ** (exponent - 1) * out_grad

        out._backward = _backward
        return out

    # ### Operations built from others
    #
    # Negation, subtraction and division need no backward rule of their own:
    # $-x = x \cdot (-1)$, $x - y = x + (-y)$ and $x / y = x \cdot y^{-1}$. Written this
    # way, their gradients come out of the rules above through the chain rule, which is
    # the whole point of the engine.
    #
    # The reflected methods (`__radd__` and friends) let a plain number stand on the
    # left: Python turns `2 * x` into `x.__rmul__(2)` once `float.__mul__` has given up
    # on a `Value`.
    def __neg__(self) -> "Value":
        return self * -1

    def __sub__(self, other: "Value | float") -> "Value":
        return self + (-other)

    def __truediv__(self, other: "Value | float") -> "Value":
        other = other if isinstance(other, Value) else Value(other)
        return self * other**-1

    def __radd__(self, other: float) -> "Value":
        return self + other

    def __rmul__(self, other: float) -> "Value":
        return self * other

    def __rsub__(self, other: float) -> "Value":
        return (-self) + other

    def __rtruediv__(self, other: float) -> "Value":
        return self**-1 * other

    # ### Exponential and logarithm
    #
    # Some backward rules are cheapest in terms of the forward *result*, and the closure
    # simply keeps it: the exponential is its own derivative. The logarithm refuses
    # $x \le 0$ outright rather than return a `nan` that would surface, unexplained,
    # steps later.
    def exp(self) -> "Value":
        r"""$z = e^x$ has $\partial z / \partial x = e^x = z$."""
        exp_x = math.exp(self.data)
        out = Value(exp_x, (self,), "exp")

        def _backward(out_grad):
            self.grad += exp_x * out_grad

        out._backward = _backward
        return out

    def log(self) -> "Value":
        r"""$z = \log x$, for $x > 0$, has $\partial z / \partial x = 1 / x$."""
        if self.data <= 0:
            raise ValueError(f"Value.log: needs a positive value, got {self.data}")
        out = Value(math.log(self.data), (self,), "log")

        def _backward(out_grad):
            self.grad += out_grad / self.data

        out._backward = _backward
        return out

    # ### Activation functions
    #
    # The squashing functions of neural networks also have derivatives written in terms
    # of their own outputs.
    def tanh(self) -> "Value":
        r"""$z = \tanh x$ has $\partial z / \partial x = 1 - \tanh^2 x = 1 - z^2$."""
        tanh_x = math.tanh(self.data)
        out = Value(tanh_x, (self,), "tanh")

        def _backward(out_grad):
            self.grad += (1.0 - tanh_x**2) * out_grad

        out._backward = _backward
        return out

    def relu(self) -> "Value":
        r"""$z = \max(0, x)$ has $\partial z / \partial x = 1$ for $x > 0$ and 0 for
        $x < 0$.

        At exactly $x = 0$ the ReLU has no derivative; like PyTorch, we use 0 there.
        """
        out = Value(max(0.0, self.data), (self,), "relu")

        def _backward(out_grad):
            self.grad += (self.data > 0) * out_grad

        out._backward = _backward
        return out

    def sigmoid(self) -> "Value":
        r"""$z = \sigma(x) = 1 / (1 + e^{-x})$ has
        $\partial z / \partial x = \sigma(x)\,(1 - \sigma(x)) = z (1 - z)$.

        It is computed in one of two equal forms so that the exponential is never of a
        large positive number, which would overflow: $1 / (1 + e^{-x})$ for $x \ge 0$
        and $e^{x} / (1 + e^{x})$ for $x < 0$.
        """
        if self.data >= 0:
            sigmoid = 1.0 / (1.0 + math.exp(-self.data))
        else:
            exp_x = math.exp(self.data)
            sigmoid = exp_x / (1.0 + exp_x)
        out = Value(sigmoid, (self,), "sigmoid")

        def _backward(out_grad):
            self.grad += sigmoid * (1.0 - sigmoid) * out_grad

        out._backward = _backward
        return out

    # The *softplus* $\log(1 + e^x)$ is a smooth ReLU, and the logistic loss below is a
    # softplus. Written literally it fails at both ends: `math.exp(x)` overflows for
    # $x > 709$, and for $x < -37$ the sum $1 + e^x$ rounds to exactly 1, so the result
    # is 0 instead of about $e^x$. Factoring $e^x$ out of the logarithm when $x > 0$
    # gives one form for every $x$,
    # $$
    # \log(1 + e^x) = \max(x, 0) + \log\bigl(1 + e^{-|x|}\bigr),
    # $$
    # whose exponential is of a number $\le 0$ and cannot overflow, and `math.log1p`
    # computes $\log(1 + u)$ without first rounding $1 + u$. The same $e^{-|x|}$ gives
    # the derivative, the sigmoid, in the stable form of `sigmoid` above.
    def softplus(self) -> "Value":
        r"""$z = \log(1 + e^x)$ has
        $\partial z / \partial x = e^x / (1 + e^x) = \sigma(x)$."""
        exp_minus_abs = math.exp(-abs(self.data))  # e^{-|x|}, in (0, 1]
        softplus = max(self.data, 0.0) + math.log1p(exp_minus_abs)
        sigmoid = (1.0 if self.data >= 0 else exp_minus_abs) / (1.0 + exp_minus_abs)
        out = Value(softplus, (self,), "softplus")

        def _backward(out_grad):
            self.grad += sigmoid * out_grad

        out._backward = _backward
        return out

    # ### The order of the backward pass
    #
    # A node may push its gradient to its children only once that gradient is complete,
    # that is, once every node that *uses* it has already added its share. Take
    # $b = 3a$, $c = 2b$ and $L = b + c$. The gradient of $b$ has two terms,
    # $$
    # \bar b = \bar L \frac{\partial L}{\partial b}
    # + \bar c \frac{\partial c}{\partial b} = 1 + 2 = 3 .
    # $$
    # Visiting $b$ before $c$ would pass $\bar b = 1$ on to $a$, and the later
    # contribution from $c$ would never reach it: $a$ would end with $\bar a = 3$
    # instead of 9.
    #
    # A *topological order* of the graph lists every node after all of its children.
    # Walking it backwards visits every node after all of the nodes that use it, which
    # is exactly the condition. We build it with a depth-first search that appends a
    # node once all its children are in the list.
    #
    # The search keeps its own stack instead of recursing, so that a long chain (a sum
    # over thousands of examples, or the 10,000 steps of the test's chain) cannot hit
    # Python's limit of 1,000 nested calls. Each entry of the stack is a node with an
    # iterator over its children: the loop resumes the node on top where it left off and
    # descends into its next unvisited child; once the iterator is exhausted, all of the
    # node's children are in the list, and the node goes in after them. The stack holds
    # exactly what the recursion's call frames would hold, and costs one small tuple per
    # node.
    def topological_order(self) -> list["Value"]:
        """Every value this one depends on, itself last, each listed after all of its
        children."""
        order: list[Value] = []
        visited = {self}
        stack = [(self, iter(self._children))]
        while stack:
            node, children = stack[-1]
            for child in children:
                if child not in visited:
                    visited.add(child)
                    stack.append((child, iter(child._children)))
                    break
            else:
                stack.pop()
                order.append(node)
        return order

    # With the order in hand the backward pass is one loop. It seeds
    # $\bar L = \partial L / \partial L = 1$ and, from the output down, hands each
    # node's completed gradient to its `_backward`.
    #
    # Gradients of leaves (inputs and parameters) accumulate across calls, as in
    # PyTorch: running `backward` twice doubles them, and a training loop clears them
    # between steps. The gradients of intermediate nodes are reset first, because each
    # pass recomputes them from scratch; keeping the old ones would add the previous
    # pass's gradient into this one's. The seed is *added* too: for an output computed
    # from others the reset has just made its gradient 0, and a bare leaf `x`, whose
    # `x.backward()` is $\partial x / \partial x = 1$, accumulates like any other leaf.
    def backward(self) -> None:
        r"""Fill `grad` of every value this one depends on with
        $\partial\,\mathrm{self} / \partial\,\mathrm{value}$."""
        order = self.topological_order()
        for node in order:
            if node._children:
                node.grad = 0.0
        self.grad += 1.0
        for node in reversed(order):
            node._backward(node.grad)


# ## A neural network on top
#
# Nothing below knows about derivatives. A neuron is written as its forward formula on
# `Value`s, and the engine differentiates it.
class Neuron:
    r"""One unit: $y = \phi\bigl(\sum_i w_i x_i + b\bigr)$, with $\phi = \tanh$ or, for
    an output unit, the identity.

    The weights start as Gaussian noise with variance $1 / n_{\mathrm{inputs}}$, so that
    the weighted sum of unit-sized inputs is itself about unit-sized and the $\tanh$
    starts in its sloped middle rather than its flat tails, where the gradient vanishes.
    (The initialisation lesson studies this choice.) The bias starts at zero.
    """

    def __init__(self, n_inputs: int, rng: random.Random, nonlinear: bool = True):
        if isinstance(n_inputs, bool) or not isinstance(n_inputs, int) or n_inputs < 1:
            raise ValueError(
                f"Neuron: n_inputs must be a positive int, got {n_inputs!r}"
            )
        scale = 1.0 / math.sqrt(n_inputs)
        self.weights = [Value(rng.gauss(0.0, scale)) for _ in range(n_inputs)]
        self.bias = Value(0.0)
        self.nonlinear = nonlinear

    def __call__(self, inputs: list["Value | float"]) -> Value:
        # `zip` would silently drop the extra inputs or weights, so the lengths are
        # checked first.
        if len(inputs) != len(self.weights):
            raise ValueError(
                f"Neuron: expected {len(self.weights)} inputs, got {len(inputs)}"
            )
        pre_activation = sum((w * x for w, x in zip(self.weights, inputs)), self.bias)
        return pre_activation.tanh() if self.nonlinear else pre_activation

    def parameters(self) -> list[Value]:
        return self.weights + [self.bias]


class Layer:
    """`n_outputs` neurons that all read the same inputs; calling it returns their
    outputs as a list."""

    def __init__(
        self, n_inputs: int, n_outputs: int, rng: random.Random, nonlinear: bool = True
    ):
        if (
            isinstance(n_outputs, bool)
            or not isinstance(n_outputs, int)
            or n_outputs < 1
        ):
            raise ValueError(
                f"Layer: n_outputs must be a positive int, got {n_outputs!r}"
            )
        self.neurons = [Neuron(n_inputs, rng, nonlinear) for _ in range(n_outputs)]

    def __call__(self, inputs: list["Value | float"]) -> list[Value]:
        return [neuron(inputs) for neuron in self.neurons]

    def parameters(self) -> list[Value]:
        return [p for neuron in self.neurons for p in neuron.parameters()]


class MLP:
    r"""A multi-layer perceptron: layers applied one after another, $\tanh$ in between,
    none after the last.

    `MLP(2, [16, 16, 1])` maps 2 inputs through two hidden layers of 16 units to one
    output score. The output is left linear so that it can take any real value; the loss
    decides what it means. `seed` fixes the initial weights.
    """

    def __init__(self, n_inputs: int, layer_sizes: list[int], seed: int = 0):
        if isinstance(n_inputs, bool) or not isinstance(n_inputs, int) or n_inputs < 1:
            raise ValueError(f"MLP: n_inputs must be a positive int, got {n_inputs!r}")
        if not layer_sizes or not all(
            isinstance(size, int) and not isinstance(size, bool) and size >= 1
            for size in layer_sizes
        ):
            raise ValueError(
                "MLP: layer_sizes must be a non-empty list of positive ints, "
                f"got {layer_sizes!r}"
            )
        rng = random.Random(seed)
        sizes = [n_inputs] + list(layer_sizes)
        self.layers = [
            Layer(sizes[i], sizes[i + 1], rng, nonlinear=i < len(layer_sizes) - 1)
            for i in range(len(layer_sizes))
        ]

    def __call__(self, inputs: list["Value | float"]) -> list[Value]:
        activations = inputs
        for layer in self.layers:
            activations = layer(activations)
        return activations

    def parameters(self) -> list[Value]:
        return [p for layer in self.layers for p in layer.parameters()]

    # Because `backward` accumulates into the parameters' `grad`, a training loop sets
    # them back to zero before each step; otherwise every step would follow the sum of
    # all the gradients so far.
    def zero_grad(self) -> None:
        for parameter in self.parameters():
            parameter.grad = 0.0


# ## Training
#
# For a label $y \in \{-1, +1\}$ and a score $s$, the logistic loss is
# $$
# \ell(s, y) = \log\bigl(1 + e^{-y s}\bigr),
# $$
# the negative log-likelihood of $y$ when $P(y = 1) = \sigma(s)$. It is near 0 for a
# confident, correct score ($y s \gg 0$) and grows linearly with a confident, wrong one.
# Its gradient, $\partial \ell / \partial s = -y\,\sigma(-y s)$, never quite vanishes,
# so points already classified correctly keep pulling the boundary away from themselves,
# towards a wider margin.
#
# The loss is the softplus of $-y s$, and computed as one: the literal
# `(1 + (-y * s).exp()).log()` would overflow for a confidently wrong score,
# $-y s > 709$, which is exactly where the loss matters most.
def logistic_loss(scores: list[Value], labels: list[float]) -> Value:
    r"""The mean logistic loss of `scores` against `labels` in $\{-1, +1\}$."""
    if len(scores) != len(labels) or not scores:
        raise ValueError(
            "logistic_loss: need as many labels as scores (and at least one), "
            f"got {len(scores)} scores and {len(labels)} labels"
        )
    if any(label not in (-1, 1) for label in labels):
        raise ValueError(
            f"logistic_loss: labels must be -1 or +1, got {sorted(set(labels))}"
        )
    losses = [(-label * score).softplus() for score, label in zip(scores, labels)]
    return sum(losses) / len(losses)


def accuracy(model: MLP, points: np.ndarray, labels: np.ndarray) -> float:
    r"""The fraction of `points` (`[n, 2]`) whose score has the sign of their label in
    $\{-1, +1\}$ (`[n]`)."""
    scores = [model(list(point))[0].data for point in points]
    return float(np.mean(np.sign(scores) == labels))


# Drawing the decision boundary means evaluating the network on thousands of grid
# points. Through `Value` that would build, and throw away, a graph of millions of
# nodes. So we read the trained weights into arrays and evaluate the same formula with
# NumPy, a whole grid at a time: a preview of the tensors that replace these scalars in
# the next lesson. The test checks that both give the same scores.
def mlp_scores(model: MLP, points: np.ndarray) -> np.ndarray:
    """The network's output score for each row of `points` (`[n, n_inputs]`), computed
    with NumPy."""
    n_inputs = len(model.layers[0].neurons[0].weights)
    if np.ndim(points) != 2 or np.shape(points)[1] != n_inputs:
        raise ValueError(
            f"mlp_scores: points must have shape [n, {n_inputs}], "
            f"got {np.shape(points)}"
        )
    activations = points  # [n, n_inputs]
    for layer in model.layers:
        weights = np.array(
            [[w.data for w in neuron.weights] for neuron in layer.neurons]
        )  # [n_out, n_in]
        biases = np.array([neuron.bias.data for neuron in layer.neurons])  # [n_out]
        activations = activations @ weights.T + biases  # [n, n_out]
        if layer.neurons[0].nonlinear:
            activations = np.tanh(activations)
    return activations[:, 0]  # [n]


def save_figures(
    model: MLP, points: np.ndarray, labels: np.ndarray, losses: list[float], out: Path
) -> None:
    """Write `decision_boundary.png` and `loss.png` into `out`."""
    low, high = points.min(axis=0) - 0.5, points.max(axis=0) + 0.5  # [2], [2]
    x0, x1 = np.meshgrid(
        np.linspace(low[0], high[0], 200), np.linspace(low[1], high[1], 150)
    )  # [150, 200] each
    grid = np.stack([x0.ravel(), x1.ravel()], axis=1)  # [30000, 2]
    grid_scores = mlp_scores(model, grid).reshape(x0.shape)  # [150, 200]
    fig, ax = figure()
    ax.contourf(
        x0, x1, grid_scores, levels=[-np.inf, 0, np.inf], colors=["#c6dbef", "#fdd0a2"]
    )
    ax.contour(x0, x1, grid_scores, levels=[0], colors="black", linewidths=1)
    ax.scatter(*points[labels < 0].T, s=14, c="#2171b5", label="$y = -1$")
    ax.scatter(*points[labels > 0].T, s=14, c="#d94801", label="$y = +1$")
    ax.set(
        title="Decision boundary of the trained MLP",
        xlabel="$x_0$ (centred)",
        ylabel="$x_1$ (centred)",
    )
    ax.legend(loc="lower left")
    save(
        fig,
        out / "decision_boundary.png",
        caption="The trained network's decision boundary (black line) on the two-moons "
        "training points: the region where its score is negative is shaded blue, "
        "positive orange. The curved boundary threads between the interleaved moons, "
        "which no straight line could separate.",
    )

    fig, ax = figure()
    ax.plot(np.arange(1, len(losses) + 1), losses)
    ax.set(
        title="Training loss",
        xlabel="step $k$",
        ylabel="mean logistic loss",
        yscale="log",
    )
    save(
        fig,
        out / "loss.png",
        caption="Mean logistic loss over the training points at each full-batch "
        "gradient-descent step, on a log scale: it falls steadily as the boundary "
        "bends around the moons.",
    )


# ## The example
#
# One tanh neuron with two inputs, small enough to check by hand. Its graph is what the
# page draws: each value with its gradient after `backward()`, and each operation
# between them.
def example():
    """A two-input tanh neuron: `fn(*args)` builds it, runs `backward()` and returns the
    output `Value`."""

    def neuron(x1: float, x2: float, w1: float, w2: float, b: float) -> Value:
        x1, x2 = Value(x1, label="x1"), Value(x2, label="x2")
        w1, w2, b = Value(w1, label="w1"), Value(w2, label="w2"), Value(b, label="b")
        x1w1, x2w2 = x1 * w1, x2 * w2
        x1w1.label, x2w2.label = "x1*w1", "x2*w2"
        weighted_sum = x1w1 + x2w2
        weighted_sum.label = "x1*w1 + x2*w2"
        pre_activation = weighted_sum + b
        pre_activation.label = "n"
        output = pre_activation.tanh()
        output.label = "o"
        output.backward()
        return output

    return neuron, (2.0, -1.0, -0.5, 1.5, 1.0)


def dataflow(output: Value) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """The graph behind `output`: a node per value (`label = data | grad g`), one per
    operation, and edges."""
    nodes, edges = [], []
    order = output.topological_order()
    node_ids = {value: f"v{i}" for i, value in enumerate(order)}
    for value in order:
        name = f"{value.label} = " if value.label else ""
        nodes.append(
            (node_ids[value], f"{name}{value.data:.4g} | grad {value.grad:.4g}")
        )
        if value._op:
            op_id = f"{node_ids[value]}_op"
            nodes.append((op_id, value._op))
            edges.extend((node_ids[child], op_id, "") for child in value._children)
            edges.append((op_id, node_ids[value], ""))
    return nodes, edges


# ## The demo
#
# Full-batch gradient descent on 100 points of the two-moons data, which no straight
# line separates. Each step builds the graph of the whole loss (21,309 nodes with the
# defaults), runs `backward`, and moves every parameter against its gradient:
# $$
# \theta \leftarrow \theta - \eta\,\frac{\partial L}{\partial \theta}.
# $$
# With $\eta = 1$ the loss falls smoothly; at $\eta = 3$ the steps start to overshoot
# and the loss curve spikes, though it still trains.
#
# The inputs are shifted so that the training points have mean zero: a $\tanh$ unit is
# most sensitive around 0, and centred inputs put the initial units there. Accuracy is
# measured on 200 fresh points that the network never trained on.
def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description="Train a scalar-autograd MLP on two moons.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--points", type=integer(at_least=1), default=100, help="training points"
    )
    parser.add_argument(
        "--test-points",
        type=integer(at_least=1),
        default=200,
        help="held-out points for the accuracy",
    )
    parser.add_argument(
        "--hidden",
        type=integer(at_least=1),
        default=8,
        help="units in each of the two hidden layers",
    )
    parser.add_argument(
        "--steps", type=integer(at_least=1), default=100, help="gradient-descent steps"
    )
    parser.add_argument("--lr", type=number(above=0), default=1.0, help="learning rate")
    parser.add_argument(
        "--seed",
        type=integer(at_least=0),
        default=0,
        help="random seed for the data and the weights",
    )
    parser.add_argument("--out", default="out/autograd", help="folder for the figures")
    args = parser.parse_args(argv)
    points, classes = two_moons(args.points, noise=0.1, seed=args.seed)  # [n, 2], [n]
    test_points, test_classes = two_moons(
        args.test_points, noise=0.1, seed=args.seed + 1
    )
    center = points.mean(axis=0)  # [2]
    points, test_points = points - center, test_points - center
    labels = 2.0 * classes - 1.0  # [n] in {-1, +1}
    test_labels = 2.0 * test_classes - 1.0
    model = MLP(2, [args.hidden, args.hidden, 1], seed=args.seed)

    # Each step allocates over 100,000 objects (nodes, their closures, and the tuples
    # and cells these hold) that stay alive until the step ends. Python's cycle
    # collector would walk that growing pile several times per step looking for
    # reference cycles, which more than triples the run time here. Our graphs have none,
    # so reference counting alone frees each one, and the collector can rest while we
    # train. (micrograd's graphs do have cycles: with the collector off they would never
    # be freed.) The benchmarks in the test time one training step of this engine and of
    # micrograd on the same network and data, with the collector on and off; the page
    # shows the ratios.
    gc.disable()
    try:
        losses = []
        progress = tqdm(range(args.steps), desc="training")
        for _ in progress:
            scores = [model(list(point))[0] for point in points]
            loss = logistic_loss(scores, list(labels))
            model.zero_grad()
            loss.backward()
            for parameter in model.parameters():
                parameter.data -= args.lr * parameter.grad
            losses.append(loss.data)
            progress.set_postfix(loss=f"{loss.data:.4f}")
    finally:
        gc.enable()

    test_accuracy = accuracy(model, test_points, test_labels)
    save_figures(model, points, labels, losses, Path(args.out))
    print(f"accuracy {test_accuracy:.3f}")
    return {
        "accuracy": test_accuracy,
        "train_accuracy": accuracy(model, points, labels),
        "loss": losses[-1],
    }


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Add `sin` and `cos` to `Value`, each with its backward rule beside it. Unlike `exp`
#    and `tanh`, neither can reuse its own forward result: which function does each
#    backward need, and should it be computed in the forward pass and kept, or in the
#    backward pass from the saved input?
# 2. Implement forward mode: a `Dual` number carrying a value and a tangent $\dot v$,
#    with the same operations. Recover the full gradient of the demo's loss with it and
#    count how many passes it takes compared with one `backward()`.
# 3. A `Value` is always created after its children. Give each `Value` a creation number
#    from a global counter and replace the depth-first search with a sort by that
#    number. Why is the result always a valid order for the backward pass, and what does
#    the sort cost compared with the search? Time both with the benchmark in the test.
# 4. Train with the hinge loss $\max(0, 1 - y s)$ written with `relu`. How does the
#    decision boundary differ from the logistic loss's, and why do correctly classified
#    points beyond the margin stop moving it?
