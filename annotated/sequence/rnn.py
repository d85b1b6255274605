r"""
---
title: The vanilla RNN and backpropagation through time
summary: >-
  The Elman RNN with backpropagation through time written as an explicit backward loop
  over the steps, matched against nn.RNN (stacked, bidirectional, packed batches) and
  trained to continue sine waves whose frequency it must work out from their past.
time: 15 s
expected:
  metric: test_mse
  short: ["--steps", "150", "--seq-len", "30"]
references:
  - key: elman1990finding
    authors: [Jeffrey L. Elman]
    title: Finding Structure in Time
    year: 1990
    venue: Cognitive Science 14(2)
    url: https://doi.org/10.1207/s15516709cog1402_1
  - key: rumelhart1986learning
    authors: [David E. Rumelhart, Geoffrey E. Hinton, Ronald J. Williams]
    title: Learning representations by back-propagating errors
    year: 1986
    venue: Nature 323
    url: https://doi.org/10.1038/323533a0
  - key: werbos1990backpropagation
    authors: [Paul J. Werbos]
    title: "Backpropagation Through Time: What It Does and How to Do It"
    year: 1990
    venue: Proceedings of the IEEE 78(10)
    url: https://doi.org/10.1109/5.58337
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
  - key: appleyard2016optimizing
    authors: [Jeremy Appleyard, Tomáš Kočiský, Phil Blunsom]
    title: Optimizing Performance of Recurrent Neural Networks on GPUs
    year: 2016
    venue: arXiv preprint
    arxiv: "1604.01946"
  - key: hochreiter1997long
    authors: [Sepp Hochreiter, Jürgen Schmidhuber]
    title: Long Short-Term Memory
    year: 1997
    venue: Neural Computation 9(8)
    url: https://doi.org/10.1162/neco.1997.9.8.1735
worksheet:
  - region: rnn_forward
    hint: >-
      Project every input at once, x W_ih^T + b_ih + b_hh ([seq, batch, hidden]); then
      loop over the steps: h = f(projected input_t + h W_hh^T), keeping the old h where
      the mask is False; stack the states to [seq, batch, hidden].
    tests:
      - test_matches_torch_nn_rnn_forward_and_gradients
      - test_hand_bptt_equals_autograd_through_the_loop
  - region: rnn_backward
    hint: >-
      Read f'(a_t) from the saved states; walk t from the last step down with a carry
      (zero at first): h̄_t = ȳ_t + carry, ā_t = h̄_t f'(a_t), carry = ā_t W_hh (a
      masked step has ā_t = 0 and passes h̄_t on unchanged). Then every weight
      gradient is one product over all seq·batch rows of ā; the last carry is h0's
      gradient.
    tests:
      - test_gradcheck_of_the_hand_written_backward_with_and_without_a_mask
      - test_per_step_total_gradient_equals_autograd
---

A feed-forward network maps one input to one output. A *recurrent* network reads a
sequence one element at a time and carries a *hidden state* $h_t$ from each step to the
next, computed by the same weights at every step. Elman's network [@elman1990finding]
is the simplest one, and it is what `torch.nn.RNN` computes:

$$
h_t = \tanh\bigl(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}\bigr).
$$

The state is the network's only memory: whatever it needs about $x_1, \dots, x_{t-1}$
must have been squeezed into $h_{t-1}$.

To train it, unroll the loop: $T$ steps become a $T$-layer feed-forward network whose
layers share their weights, and backpropagation through that network is
*backpropagation through time* (BPTT) [@rumelhart1986learning;
@werbos1990backpropagation]. This lesson writes BPTT by hand, as an explicit loop that
runs backwards over the steps and carries $\partial L/\partial h_t$ from each step to
the one before, and then lets autograd differentiate the same forward loop. The test
holds both to `nn.RNN` with copied weights in float64: outputs, final states and every
gradient, for stacked and bidirectional layers, both layouts (`batch_first`), with and
without an initial state, `tanh` and `relu`, batches of unequal lengths packed with
`pack_padded_sequence`, and sequences of 2,000 steps.

The demo trains the RNN, on the hand-written backward, to predict the next value of
sine waves whose frequency differs from sequence to sequence, so that the only way to
predict well is to remember enough of the past to work the frequency out. After 2,000
steps of training with 32 hidden units, its test error is 0.0028, against 0.070 for
repeating the last value; over the second half of each wave, once the state has seen
enough, it is 0.00009, a typical miss of 1 % of the amplitude. The same run measures
how the gradient of the last step's loss shrinks as it travels back through time:
tenfold every five steps at initialisation and about every ten after training, so
that only a hundredth of it reaches 20 steps back. That is the vanishing gradient
[@bengio1994learning; @pascanu2013difficulty] that limits how far back a vanilla RNN
can learn. [Vanishing gradients, measured](vanishing_gradients.md) measures it
properly, and the [LSTM](lstm.md) [@hochreiter1997long] is the fix.
"""

import argparse
import math
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence
from tqdm import tqdm

from annotated.data import integer, number, torch_device
from annotated.figures import figure, save

# ## One layer, forward
#
# Write the step's *pre-activation* as $a_t$ and the nonlinearity as $f$:
#
# $$
# \begin{aligned}
# a_t &= W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}, \\
# h_t &= f(a_t).
# \end{aligned}
# $$
#
# With a batch, $x_t$ is `[batch, input]` and $h_t$ is `[batch, hidden]`, so the
# products are `x_t @ W_ih.T` and `h @ W_hh.T`. Only $W_{hh} h_{t-1}$ has to wait for
# the previous step; $W_{ih} x_t$ does not depend on the state at all. So it is computed
# for every step at once, before the loop, as one `[seq · batch, input]` by
# `[input, hidden]` product instead of $T$ thin ones. PyTorch's CPU path does the
# same: in `aten/src/ATen/native/RNN.cpp`, `FullLayer` calls `params.linear_ih(inputs)`
# on the whole sequence and hands the cell `pre_compute_input=true`; cuDNN's RNNs do it
# too [@appleyard2016optimizing]. The loop is left with one matrix product, one
# addition and one nonlinearity per step.
#
# `nn.RNN` has two biases, $b_{ih}$ and $b_{hh}$, although only their sum ever
# matters (cuDNN's parameter layout has both). The loop adds the sum once.
#
# $f$ is $\tanh$ or, as `nn.RNN(nonlinearity="relu")` offers, $\max(0, a)$. Each is
# stored beside its derivative, and both derivatives can be read off the *output*
# $h = f(a)$: $\tanh' = 1 - h^2$, and $\mathrm{relu}' = [h > 0]$. So the backward pass
# will need the states, which the forward keeps anyway, and never $a_t$.
#
# One more argument serves batches of unequal lengths (below): `mask[t]` says which
# sequences are still running at step $t$. A sequence that has ended keeps its state,
# $h_t = h_{t-1}$, so the last state is the one after its own last step.

ACTIVATIONS = {
    "tanh": (torch.tanh, lambda h: 1 - h * h),
    "relu": (torch.relu, lambda h: (h > 0).to(h.dtype)),
}


def check_choice(argument: str, value: object, choices) -> None:
    """Raise `ValueError` naming `argument` unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"{argument} must be one of {sorted(choices)}, got {value!r}")


def rnn_forward(
    x: Tensor,
    h0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
    nonlinearity: str = "tanh",
    mask: Tensor | None = None,
) -> Tensor:
    r"""Run one RNN layer over `x [seq, batch, input]` from `h0 [batch, hidden]`;
    returns every state $h_1, \dots, h_T$ as `[seq, batch, hidden]`.

    `mask`, if given, is a boolean `[seq, batch, 1]`: where it is False the state is
    carried over unchanged. Under autograd this loop is differentiated as it stands.
    """
    check_choice("nonlinearity", nonlinearity, ACTIVATIONS)
    activation, _ = ACTIVATIONS[nonlinearity]
    inputs = x @ w_ih.T + (b_ih + b_hh)  # [seq, batch, hidden]: W_ih x_t + b, every t
    h = h0
    states = []
    for t in range(x.shape[0]):
        step = activation(inputs[t] + h @ w_hh.T)  # [batch, hidden]
        h = step if mask is None else torch.where(mask[t], step, h)
        states.append(h)
    return torch.stack(states)  # [seq, batch, hidden]


# ## Backpropagation through time, by hand
#
# Let the loss $L$ depend on the states, and let $\bar{y}_t$ be its gradient with
# respect to $h_t$ *directly*: through the output at step $t$, holding the later
# states fixed (this is what arrives from above, `grad_states`). The total gradient
# $\bar{h}_t = \partial L / \partial h_t$ adds what flows back from step $t+1$, which
# reads $h_t$ through $a_{t+1} = \dots + W_{hh} h_t$. With
# $\bar{a}_t = \partial L/\partial a_t$ the recurrence is
#
# $$
# \begin{aligned}
# \bar{h}_t &= \bar{y}_t + W_{hh}^\top \bar{a}_{t+1}, \\
# \bar{a}_t &= \bar{h}_t \odot f'(a_t),
# \end{aligned}
# $$
#
# started at $\bar{h}_T = \bar{y}_T$ and run from $t = T$ down to $1$: the forward
# loop, backwards [@werbos1990backpropagation]. Row by row in a batch, the
# $W_{hh}^\top \bar{a}_{t+1}$ is `grad_a @ W_hh`. The last value of the carry,
# $W_{hh}^\top \bar{a}_1$, is the gradient for $h_0$.
#
# Every weight is shared by all steps, so its gradient is a sum over them, and none of
# those sums needs the loop: once every $\bar{a}_t$ is known they are single products
# over all `seq · batch` rows, as the forward's input projection was,
#
# $$
# \begin{aligned}
# \bar{W}_{ih} &= \textstyle\sum_t \bar{a}_t\, x_t^\top, &
# \bar{W}_{hh} &= \textstyle\sum_t \bar{a}_t\, h_{t-1}^\top, \\
# \bar{b}_{ih} &= \bar{b}_{hh} = \textstyle\sum_t \bar{a}_t, &
# \bar{x}_t &= W_{ih}^\top \bar{a}_t .
# \end{aligned}
# $$
#
# The two bias gradients are the same tensor, as they must be for two numbers that are
# only ever used through their sum.
#
# Unrolling the recurrence shows what BPTT has to fight. Going back $k$ steps
# multiplies the gradient by $k$ Jacobians
# $\partial h_{t}/\partial h_{t-1} = \operatorname{diag}(f'(a_t))\, W_{hh}$; when
# their norms stay below one, the product shrinks exponentially in $k$, and a loss at
# step $T$ barely reaches the weights through step $T - 50$
# [@bengio1994learning; @pascanu2013difficulty]. The demo draws this decay.
#
# A masked step (a sequence that has ended) copied its state, $h_t = h_{t-1}$, so its
# backward copies the gradient: $\bar{a}_t = 0$ and the carry to step $t - 1$ is
# $\bar{h}_t$ unchanged.


class Gradients(NamedTuple):
    """What `rnn_backward` returns: the gradient of each input of `rnn_forward`."""

    x: Tensor  # [seq, batch, input]
    h0: Tensor  # [batch, hidden]
    w_ih: Tensor  # [hidden, input]
    w_hh: Tensor  # [hidden, hidden]
    bias: Tensor  # [hidden], for b_ih and b_hh alike
    states: Tensor  # [seq, batch, hidden]: the total ∂L/∂h_t at every step


def rnn_backward(
    grad_states: Tensor,
    x: Tensor,
    h0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    states: Tensor,
    nonlinearity: str = "tanh",
    mask: Tensor | None = None,
) -> Gradients:
    r"""BPTT for `rnn_forward`: from $\bar{y}_t$ = `grad_states [seq, batch, hidden]`
    and the saved `states`, the gradients of every input."""
    check_choice("nonlinearity", nonlinearity, ACTIVATIONS)
    _, slope = ACTIVATIONS[nonlinearity]
    derivative = slope(states)  # [seq, batch, hidden]: f'(a_t), read from h_t
    grad_pre = torch.empty_like(states)  # ā_t
    grad_hidden = torch.empty_like(states)  # h̄_t
    carry = torch.zeros_like(h0)  # W_hh^T ā_{t+1}: what step t+1 sends back
    for t in reversed(range(states.shape[0])):
        grad_h = grad_states[t] + carry  # [batch, hidden]: h̄_t
        grad_a = grad_h * derivative[t]  # [batch, hidden]: ā_t
        if mask is None:
            carry = grad_a @ w_hh
        else:
            grad_a = torch.where(mask[t], grad_a, 0.0)
            carry = torch.where(mask[t], grad_a @ w_hh, grad_h)
        grad_pre[t], grad_hidden[t] = grad_a, grad_h
    previous = torch.cat([h0[None], states[:-1]])  # [seq, batch, hidden]: h_{t-1}
    rows = grad_pre.flatten(0, 1)  # [seq · batch, hidden]
    return Gradients(
        x=grad_pre @ w_ih,
        h0=carry,
        w_ih=rows.T @ x.flatten(0, 1),
        w_hh=rows.T @ previous.flatten(0, 1),
        bias=rows.sum(0),
        states=grad_hidden,
    )


# ## Plugging the hand-written backward into autograd
#
# A `torch.autograd.Function` runs `forward` with recording switched off and calls our
# `backward` when the engine reaches it (the
# [custom Functions lesson](../systems/custom_functions.md) takes the mechanism apart).
# The layer saves its inputs and its own output, the states, which is all
# `rnn_backward` reads. Inside a larger model (a readout, a second layer) autograd
# handles everything around the layer, and the layer's gradients are ours.
#
# Autograd, differentiating `rnn_forward` directly, records five graph nodes per step
# (picking row $t$ of the projected inputs, transposing $W_{hh}$, the product, the
# addition, the $\tanh$) and, in its backward, accumulates $\bar{W}_{hh}$ from $T$
# separate products. The Function is one node, and its weight gradients are one
# product each. The benchmark in the test file times both against `nn.RNN` on one
# layer (50 steps, batch 32, 32 inputs, 64 hidden units, forward and backward, one
# thread). On a shared 2-core machine the hand-written BPTT ran about level with
# `nn.RNN` (0.7× to 1.4× its time from run to run, 1.02× in this page's benchmark),
# although its loop is Python and `nn.RNN`'s is C++: on the CPU, `nn.RNN`'s backward
# is autograd through ATen's per-step operations, four nodes a step (transpose,
# `addmm`, add, $\tanh$), each paying the autograd engine's overhead. Autograd through
# our Python loop took 1.5× to 2× `nn.RNN`'s time.


class RNNFunction(torch.autograd.Function):
    @staticmethod
    def forward(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, mask):
        return rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, mask)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, h0, w_ih, w_hh, _, _, ctx.nonlinearity, mask = inputs
        ctx.save_for_backward(x, h0, w_ih, w_hh, output, mask)

    @staticmethod
    def backward(ctx, grad_states):
        x, h0, w_ih, w_hh, states, mask = ctx.saved_tensors
        grads = rnn_backward(
            grad_states, x, h0, w_ih, w_hh, states, ctx.nonlinearity, mask
        )
        return (
            grads.x,
            grads.h0,
            grads.w_ih,
            grads.w_hh,
            grads.bias,
            grads.bias,
            None,
            None,
        )


# `torch.fx`, which draws this page's dataflow diagram, cannot trace a loop whose length
# is a tensor's size. `torch.fx.wrap` records each call of `rnn_layer` as one node
# instead, with the weights flowing into it.


@torch.fx.wrap
def rnn_layer(
    x: Tensor,
    h0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
    nonlinearity: str = "tanh",
    mask: Tensor | None = None,
    backprop: str = "hand",
) -> Tensor:
    """One layer's states `[seq, batch, hidden]`, differentiated by our BPTT
    (`backprop="hand"`) or by autograd through the forward loop (`"autograd"`)."""
    if backprop == "hand":
        return RNNFunction.apply(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, mask)
    return rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, mask)


# ## The checks at the door
#
# `nn.RNN` checks its input before running (`RNNBase.check_forward_args` in
# `torch/nn/modules/rnn.py`), and so does ours, in the one function that sees both the
# input and the initial state. A missing state becomes zeros, as in `nn.RNN`. The
# shapes are the library's: `x` is `[seq, batch, input]`, or `[batch, seq, input]`
# with `batch_first`, and `h0` is `[layers · directions, batch, hidden]` either way.


@torch.fx.wrap
def initial_state(
    x: Tensor,
    h0: Tensor | None,
    weight_ih: Tensor,
    num_states: int,
    batch_first: bool,
) -> Tensor:
    """Check `x` and `h0` against the first layer's `weight_ih [hidden, input]`; return
    `h0`, or zeros `[num_states, batch, hidden]` when it is None."""
    hidden_size, input_size = weight_ih.shape
    layout = "[batch, seq, input]" if batch_first else "[seq, batch, input]"
    if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[2] != input_size:
        raise ValueError(
            f"RNN: x must be a 3-D tensor {layout} with input = {input_size}, "
            f"got {getattr(x, 'shape', type(x).__name__)}"
        )
    if x.dtype != weight_ih.dtype:
        raise TypeError(
            f"RNN: x has dtype {x.dtype} but the weights are {weight_ih.dtype}; "
            "convert one of them"
        )
    batch, steps = (x.shape[0], x.shape[1]) if batch_first else (x.shape[1], x.shape[0])
    if steps == 0 or batch == 0:
        raise ValueError(f"RNN: x {layout} is empty, got {tuple(x.shape)}")
    expected = (num_states, batch, hidden_size)
    if h0 is None:
        return x.new_zeros(expected)
    if not isinstance(h0, Tensor) or tuple(h0.shape) != expected:
        raise ValueError(
            f"RNN: h0 must be [layers · directions, batch, hidden] = {expected}, "
            f"got {getattr(h0, 'shape', type(h0).__name__)}"
        )
    if h0.dtype != x.dtype:
        raise TypeError(f"RNN: h0 has dtype {h0.dtype} but x has {x.dtype}")
    return h0


# ## Layers, directions, and `nn.RNN`'s names
#
# A stack of layers feeds the states of one layer to the next as its input sequence. A
# *bidirectional* layer runs a second RNN, with its own weights, over the sequence
# reversed, and concatenates the two states at each step, so every output sees the
# whole sequence; the next layer then reads `2 · hidden` features. The reversed pass is
# the same `rnn_layer` on `x.flip(0)`, and its states are flipped back. `h_n` stacks
# each layer's and direction's state after the last step it read: step $T$ going
# forwards, step 1 going backwards.
#
# Parameters carry `nn.RNN`'s names and shapes (`weight_ih_l{k}`, `bias_hh_l{k}`, with
# `_reverse` for the second direction), registered in its order and initialised as it
# does, uniform in $\pm 1/\sqrt{\text{hidden}}$ (`RNNBase.reset_parameters`). So
# `ours.load_state_dict(theirs.state_dict())` works in both directions with no
# renaming, which is how the test copies the weights.
#
# ## Batches of unequal lengths
#
# Sentences, recordings and time series rarely share a length. The tool of the field is
# the `PackedSequence`: `pack_padded_sequence(x, lengths)` stores only the real steps,
# and `nn.RNN` accepts it directly. Given one, ours unpacks it, runs with a mask that
# is True while a sequence still has steps (so an ended sequence keeps its final state),
# and packs the output again. `pad_packed_sequence` returns the batch in the caller's
# order, so `h0` and `h_n` are in that order too, as with `nn.RNN`, however the
# sequences were sorted for packing.
#
# The reversed direction needs no special case: on the flipped sequence the padding
# comes *first*, the masked steps leave $h_0$ untouched, and each sequence's backward
# pass starts from $h_0$ at its own last step, exactly as `ReversedPackedLayer` in
# `RNN.cpp` arranges by growing the batch as it goes.

WEIGHT_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


class RNN(nn.Module):
    """An Elman RNN with `nn.RNN`'s interface, parameters and results: `x`, `h0` →
    `(output, h_n)`, with our BPTT (`backprop="hand"`) or autograd's."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        batch_first: bool = False,
        bidirectional: bool = False,
        backprop: str = "hand",
    ):
        super().__init__()
        for name, value in (
            ("input_size", input_size),
            ("hidden_size", hidden_size),
            ("num_layers", num_layers),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"RNN: {name} must be an int >= 1, got {value!r}")
        check_choice("nonlinearity", nonlinearity, ACTIVATIONS)
        check_choice("backprop", backprop, ("hand", "autograd"))
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.nonlinearity, self.backprop = nonlinearity, backprop
        self.batch_first = batch_first
        self.suffixes = ("", "_reverse") if bidirectional else ("",)
        bound = 1.0 / math.sqrt(hidden_size)
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * len(self.suffixes)
            shapes = (
                (hidden_size, layer_input),
                (hidden_size, hidden_size),
                (hidden_size,),
                (hidden_size,),
            )
            for suffix in self.suffixes:
                for name, shape in zip(WEIGHT_NAMES, shapes):
                    weight = nn.Parameter(torch.empty(shape).uniform_(-bound, bound))
                    setattr(self, f"{name}_l{layer}{suffix}", weight)

    def forward(self, x: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if isinstance(x, PackedSequence):
            return self.forward_packed(x, h0)
        num_states = self.num_layers * len(self.suffixes)
        h0 = initial_state(x, h0, self.weight_ih_l0, num_states, self.batch_first)
        if self.batch_first:
            x = x.transpose(0, 1)  # [seq, batch, input]
        output, h_n = self.layers(x, h0)
        if self.batch_first:
            output = output.transpose(0, 1)  # [batch, seq, directions · hidden]
        return output, h_n

    def forward_packed(
        self, x: PackedSequence, h0: Tensor | None
    ) -> tuple[PackedSequence, Tensor]:
        """The same layers on a `PackedSequence`: unpack, mask, pack again."""
        padded, lengths = pad_packed_sequence(x)  # [seq, batch, input], [batch]
        num_states = self.num_layers * len(self.suffixes)
        h0 = initial_state(padded, h0, self.weight_ih_l0, num_states, False)
        steps = torch.arange(padded.shape[0])
        mask = (steps[:, None] < lengths[None, :])[..., None]  # [seq, batch, 1]
        output, h_n = self.layers(padded, h0, mask.to(padded.device))
        enforce_sorted = x.sorted_indices is None  # as the caller packed it
        return pack_padded_sequence(output, lengths, enforce_sorted=enforce_sorted), h_n

    def layers(
        self, x: Tensor, h0: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Run every layer and direction over time-major `x [seq, batch, input]`;
        returns `(output [seq, batch, directions · hidden], h_n)`."""
        finals = []
        for layer in range(self.num_layers):
            outputs = []
            for direction, suffix in enumerate(self.suffixes):
                weights = [getattr(self, f"{n}_l{layer}{suffix}") for n in WEIGHT_NAMES]
                reverse = direction == 1
                sequence = x.flip(0) if reverse else x
                keep = mask.flip(0) if reverse and mask is not None else mask
                state = h0[layer * len(self.suffixes) + direction]  # [batch, hidden]
                states = rnn_layer(
                    sequence, state, *weights, self.nonlinearity, keep, self.backprop
                )  # [seq, batch, hidden]
                finals.append(states[-1])
                outputs.append(states.flip(0) if reverse else states)
            x = torch.cat(outputs, dim=2)  # [seq, batch, directions · hidden]
        return x, torch.stack(finals)  # h_n: [layers · directions, batch, hidden]


# ## A task that needs memory: continuing a sine wave
#
# Each training sequence is a sine wave $x_t = \sin(\omega t + \varphi)$ with its own
# frequency $\omega$ (between 0.1 and 0.6 radians a step: periods of 10 to 63 steps)
# and phase $\varphi$; the target at step $t$ is the next value $x_{t+1}$. One value
# alone says nothing about where the wave goes next (rising or falling? how fast?). Two
# values give the slope, three give the frequency: every sine obeys
#
# $$
# x_{t+1} = 2 \cos\omega \; x_t - x_{t-1},
# $$
#
# with $\cos \omega = (x_t + x_{t-2}) / (2 x_{t-1})$ readable from the past. An RNN
# that predicts well must therefore keep the recent values in its state and compute
# something like this, and its error should fall over the first steps of each sequence
# as the evidence comes in. The baseline that has no memory to speak of, "the next
# value equals this one", is printed beside it.


def sine_waves(
    batch: int, steps: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """`batch` sine waves of random frequency and phase: inputs `[steps, batch, 1]`
    and the targets, the same waves one step later."""
    omega = 0.1 + 0.5 * torch.rand(batch, generator=generator)  # radians per step
    phase = 2 * math.pi * torch.rand(batch, generator=generator)
    t = torch.arange(steps + 1, dtype=torch.float32)
    waves = torch.sin(t[:, None] * omega + phase)[..., None]  # [steps + 1, batch, 1]
    return waves[:-1], waves[1:]


class SinePredictor(nn.Module):
    """Our RNN and a linear readout: `x [seq, batch, 1]` → the next values."""

    def __init__(self, hidden_size: int = 32, backprop: str = "hand"):
        super().__init__()
        self.rnn = RNN(1, hidden_size, backprop=backprop)
        self.readout = nn.Linear(hidden_size, 1)

    def forward(self, x: Tensor) -> Tensor:
        states, _ = self.rnn(x)  # [seq, batch, hidden]
        return self.readout(states)  # [seq, batch, 1]


# ## Training
#
# Adam on the mean squared error over every step of fresh random waves, so the model
# never sees the same sequence twice. The gradient norm is clipped at 1, the standard
# guard for RNNs against the opposite failure, the occasional *exploding* gradient
# [@pascanu2013difficulty].


def train(
    model: SinePredictor,
    steps: int,
    batch_size: int,
    seq_len: int,
    lr: float,
    generator: torch.Generator,
    device: str,
) -> list[float]:
    """Train `model` in place; returns the loss of every step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in tqdm(range(steps), desc="training"):
        x, y = (t.to(device) for t in sine_waves(batch_size, seq_len, generator))
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    return losses


# ## How far back the gradient reaches
#
# `rnn_backward` returns the total gradient $\bar{h}_t$ at every step, the quantity the
# recurrence carries. Put the loss on the *last* prediction alone,
# $L_T = \frac{1}{B}\sum_b (w^\top h_T + c - y_T)^2$ over a batch of $B$ waves with
# the readout's $w$ and $c$, and the only direct gradient is the one at step $T$,
# $\bar{y}_T = \frac{2}{B}(w^\top h_T + c - y_T)\, w$. Then $\|\bar{h}_t\|$ is the size
# of the signal that step $T$ sends back to step $t$: how far back the network can
# learn from. It is computed in float64, so that it can fall far without underflowing.


def state_gradient_norms(model: SinePredictor, x: Tensor, y: Tensor) -> Tensor:
    r"""$\|\partial L_T / \partial h_t\|$ for every step $t$ of `x [seq, batch, 1]`,
    averaged over the batch, with $L_T$ the squared error of the last prediction."""
    rnn = model.rnn
    w_ih, w_hh, b_ih, b_hh = (
        getattr(rnn, f"{name}_l0").detach().double() for name in WEIGHT_NAMES
    )
    w, c = model.readout.weight.detach().double(), model.readout.bias.detach().double()
    x, y = x.double(), y.double()
    h0 = x.new_zeros(x.shape[1], rnn.hidden_size)
    states = rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, rnn.nonlinearity)
    error = states[-1] @ w.T + c - y[-1]  # [batch, 1]
    grad_states = torch.zeros_like(states)  # [seq, batch, hidden]
    grad_states[-1] = 2 / x.shape[1] * error @ w  # the loss reads h_T alone
    grads = rnn_backward(grad_states, x, h0, w_ih, w_hh, states, rnn.nonlinearity)
    return grads.states.norm(dim=2).mean(dim=1)  # [seq]


def example():
    """The demo's model, with 8 hidden units, on two sequences of five steps."""
    torch.manual_seed(0)
    return SinePredictor(hidden_size=8), (torch.randn(5, 2, 1),)


# ## The check the demo prints
#
# Before training, the demo repeats the test's central check on a small case: the
# gradients of a two-layer bidirectional RNN against `nn.RNN`'s, in float64, where the
# two agree to about $10^{-13}$, rounding error. On a GPU, `nn.RNN` runs cuDNN, which
# by default multiplies float32 matrices in TF32 (ten-bit mantissas): there the two
# differ by about $5 \cdot 10^{-4}$ relative in float32 until
# `torch.backends.cudnn.allow_tf32 = False`, and then by $10^{-5}$ (measured on an
# H200).


def gradient_gap(seed: int = 0) -> float:
    """The largest difference between our BPTT's gradients and `nn.RNN`'s, in float64,
    for a two-layer bidirectional RNN with copied weights."""
    torch.manual_seed(seed)
    ours = RNN(3, 8, num_layers=2, bidirectional=True).double()
    theirs = nn.RNN(3, 8, num_layers=2, bidirectional=True).double()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(20, 4, 3, dtype=torch.float64)
    for model in (ours, theirs):
        output, h_n = model(x)
        (output.sin().sum() + h_n.square().sum()).backward()
    theirs_params = dict(theirs.named_parameters())
    return max(
        (p.grad - theirs_params[name].grad).abs().max().item()
        for name, p in ours.named_parameters()
    )


def plot_training(
    losses: list[float],
    baseline: float,
    example_wave: tuple[Tensor, Tensor],
    step_errors: Tensor,
    out: Path,
) -> Path:
    """Loss curve, one predicted wave, and the test error at each step."""
    fig, (loss_ax, wave_ax, step_ax) = figure(panels=3)
    loss_ax.semilogy(losses, lw=1, label="RNN, training")
    loss_ax.axhline(baseline, color="grey", ls="--", label="repeat last value")
    loss_ax.set_xlabel("training step")
    loss_ax.set_ylabel("mean squared error")
    loss_ax.set_title("training loss")
    loss_ax.legend()
    targets, predictions = example_wave
    wave_ax.plot(targets, color="black", lw=1.5, label="next value $x_{t+1}$")
    wave_ax.plot(predictions, color="tab:red", lw=1, ls="--", label="RNN prediction")
    wave_ax.set_xlabel("step $t$")
    wave_ax.set_title("a test wave")
    # Room above the unit-amplitude wave keeps the legend off the curve.
    wave_ax.set_ylim(-1.15, 1.6)
    wave_ax.legend(loc="upper center", ncols=2)
    step_ax.semilogy(step_errors, color="tab:blue", label="RNN, test")
    step_ax.axhline(baseline, color="grey", ls="--", label="repeat last value")
    step_ax.set_xlabel("step $t$")
    step_ax.set_ylabel("test squared error")
    step_ax.set_title("error at each step")
    step_ax.legend()
    return save(
        fig,
        out / "training.png",
        caption="Left: the training loss of the RNN on random sine waves, against "
        "repeating the last value. Middle: one unseen wave and the RNN's predictions. "
        "Right: the test error at each step, high at the start, where the RNN has "
        "seen too little to know the frequency, and falling as its state fills.",
    )


def plot_gradients(before: Tensor, after: Tensor, out: Path) -> Path:
    """‖∂L_T/∂h_t‖ against the distance T - t, at initialisation and after training."""
    fig, ax = figure()
    back = torch.arange(len(before)).flip(0)
    ax.semilogy(back, before, label="at initialisation")
    ax.semilogy(back, after, label="after training")
    ax.set_xlabel("steps back from the last, $T - t$")
    ax.set_ylabel(r"$\|\partial L_T / \partial h_t\|$")
    ax.legend()
    return save(
        fig,
        out / "gradients.png",
        caption="How much of the last step's loss gradient reaches each earlier hidden "
        "state, computed by the hand-written BPTT: it shrinks roughly exponentially "
        "with the distance, the vanishing gradient.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Check our BPTT against nn.RNN, train on sine waves, draw the figures."""
    parser = argparse.ArgumentParser(
        description="An Elman RNN with hand-written BPTT, trained to continue sine "
        "waves of unknown frequency.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--steps", type=integer(at_least=1), default=2000, help="training steps"
    )
    parser.add_argument(
        "--batch-size", type=integer(at_least=1), default=64, help="waves per step"
    )
    parser.add_argument(
        "--seq-len", type=integer(at_least=1), default=50, help="steps per wave"
    )
    parser.add_argument(
        "--hidden", type=integer(at_least=1), default=32, help="hidden state size"
    )
    parser.add_argument(
        "--lr", type=number(above=0), default=3e-3, help="Adam learning rate"
    )
    parser.add_argument(
        "--backprop",
        choices=["hand", "autograd"],
        default="hand",
        help="differentiate with our BPTT or with autograd through the loop",
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--threads",
        type=integer(at_least=1),
        default=1,
        help="CPU threads for torch: the matrices are tiny, so more threads add "
        "hand-offs, not speed",
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to train on",
    )
    parser.add_argument("--out", default="out/rnn", help="folder for the figures")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)

    gap = gradient_gap(args.seed)
    print(f"our BPTT vs nn.RNN (2 layers, bidirectional, float64): {gap:.1e}")

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model = SinePredictor(args.hidden, args.backprop).to(args.device)
    probe_x, probe_y = (t.to(args.device) for t in sine_waves(256, 100, generator))
    before = state_gradient_norms(model, probe_x, probe_y).cpu()
    losses = train(
        model,
        args.steps,
        args.batch_size,
        args.seq_len,
        args.lr,
        generator,
        args.device,
    )
    after = state_gradient_norms(model, probe_x, probe_y).cpu()

    test_x, test_y = sine_waves(1024, args.seq_len, torch.Generator().manual_seed(123))
    with torch.no_grad():
        predictions = model(test_x.to(args.device)).cpu()
    squared = (predictions - test_y).square()[..., 0]  # [seq, batch]
    test_mse = squared.mean().item()
    baseline = (test_x - test_y).square().mean().item()
    late = squared[args.seq_len // 2 :].mean().item()
    print(f"test mse {test_mse:.5f} (repeat last value: {baseline:.5f})")
    print(f"test mse over the second half of each wave {late:.5f}")
    reach = (after[-21] / after[-1]).item()
    print(f"gradient 20 steps back from the last, relative to the last's: {reach:.1e}")

    plot_training(
        losses,
        baseline,
        (test_y[:, 0, 0], predictions[:, 0, 0]),
        squared.mean(dim=1),
        out,
    )
    plot_gradients(before, after, out)
    return {
        "test_mse": test_mse,
        "baseline_mse": baseline,
        "late_mse": late,
        "first_loss": losses[0],
        "final_loss": losses[-1],
        "gradient_gap": gap,
    }


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Train with `--backprop autograd` and compare the time per step with the default.
#    Where does the hand-written backward save work, and where can it not?
# 2. Truncated BPTT: train on waves of 200 steps, but cut the gradient every 25 steps
#    (`h.detach()` between chunks, carrying the state forward). How does the test error
#    over the second half of each wave change, and the time per step?
# 3. Give `SinePredictor` a `relu` RNN whose $W_{hh}$ starts as the identity and whose
#    biases start at zero (the IRNN of Le, Jaitly and Hinton, 2015), and redraw the
#    gradient figure with `state_gradient_norms`. How far back does the gradient reach
#    at initialisation now, and does training stay stable?
# 4. Add `dropout` between layers, as `nn.RNN(dropout=p)` does, and check that in
#    `eval()` mode the outputs still match `nn.RNN`'s.
