r"""
---
title: LSTM and GRU from the gate equations
summary: >-
  The LSTM and GRU cells written from their gate equations in PyTorch's layout, stacked
  into drop-in twins of nn.LSTM and nn.GRU (layers, directions, projections, packed
  sequences), and trained on the adding problem that a vanilla RNN cannot learn.
time: 35 s
expected:
  metric: mse/lstm
  short:
    - "--steps"
    - "40"
    - "--length"
    - "10"
    - "--test-size"
    - "100"
    - "--models"
    - "lstm,gru,rnn"
    - "--device"
    - "cpu"
references:
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
  - key: bengio1994learning
    authors: [Yoshua Bengio, Patrice Simard, Paolo Frasconi]
    title: Learning long-term dependencies with gradient descent is difficult
    year: 1994
    venue: IEEE Transactions on Neural Networks 5(2)
    url: https://doi.org/10.1109/72.279181
  - key: schuster1997bidirectional
    authors: [Mike Schuster, Kuldip K. Paliwal]
    title: Bidirectional recurrent neural networks
    year: 1997
    venue: IEEE Transactions on Signal Processing 45(11)
    url: https://doi.org/10.1109/78.650093
  - key: sak2014long
    authors: [Haşim Sak, Andrew Senior, Françoise Beaufays]
    title: >-
      Long Short-Term Memory Based Recurrent Neural Network Architectures for Large
      Vocabulary Speech Recognition
    year: 2014
    venue: arXiv preprint
    arxiv: "1402.1128"
  - key: jozefowicz2015empirical
    authors: [Rafal Jozefowicz, Wojciech Zaremba, Ilya Sutskever]
    title: An Empirical Exploration of Recurrent Network Architectures
    year: 2015
    venue: ICML 2015
    url: https://proceedings.mlr.press/v37/jozefowicz15.html
worksheet:
  - region: lstm_cell
    hint: >-
      Check the shapes; compute all four gate pre-activations at once as x W_ih^T + h
      W_hh^T plus the biases that are given, split them into i, f, g, o; the new cell
      is sigmoid(f) c + sigmoid(i) tanh(g), the new h is sigmoid(o) tanh(c_new).
    tests:
      - test_lstm_cell_matches_nn_lstmcell_values_and_all_gradients
      - test_lstm_cell_with_a_projected_state_is_one_step_of_nn_lstm_with_proj_size
  - region: gru_cell
    hint: >-
      Check the shapes; project x and h separately (each with its own bias) and split
      each into r, z, n parts; r and z are sigmoids of the summed parts, n =
      tanh(n_x + r * n_h) with the reset inside, on W_hn h + b_hn; return (1 - z) n +
      z h.
    tests:
      - test_gru_cell_matches_nn_grucell_values_and_all_gradients
      - test_gru_reset_gate_multiplies_b_hn_as_in_pytorch
---

A recurrent network reads a sequence one step at a time and carries what it has seen
in a state. The [vanilla RNN](rnn.md) keeps that state in one vector and rewrites all
of it at every step, and its gradient pays for that: the error signal that teaches step
$t$ something about step $t - k$ is multiplied $k$ times by the same kind of Jacobian,
and it vanishes (or explodes) geometrically in $k$ [@bengio1994learning]. The long
short-term memory [@hochreiter1997long] adds a second state, the *cell*, changed by
addition under the control of multiplicative *gates*, so that what the network decides
to keep, and the gradient through it, can cross many steps unchanged. The *forget gate*
[@gers2000learning] lets it clear the cell as well; the *gated recurrent unit*
[@cho2014learning] folds cell and state into one vector with two gates.

This chapter writes both cells from their equations, in PyTorch's gate order and
parameter layout, and stacks them into `LSTM` and `GRU` layers that take the same
arguments, hold the same parameters under the same names and accept the same inputs as
`nn.LSTM` and `nn.GRU`: several layers, two directions, a projection of the LSTM's
output [@sak2014long], `batch_first`, a single unbatched sequence, dropout between
layers, and packed batches of sequences of different lengths. The test copies the
weights into PyTorch's layers and compares, in float64, every output, every final state,
and the gradient with respect to the input, the initial states and every parameter, to
1e-10; the differences it sees are around 1e-16, a few units of rounding.

The demo trains our LSTM on the adding problem from the 1997 paper, with sequences of
50 steps. A vanilla RNN of the same width (PyTorch's `nn.RNN`) never does better than
always answering 1, whose test error on the demo's 1,000 test sequences is 0.175 (1/6
in expectation): it settles on a constant, near 1.17 in the stored run, for a test
error of 0.206. The LSTM sits on that plateau for about 400
steps, then leaves it and ends at a test error of 0.0005, and its gates show how: one
unit keeps its forget gate at 0.995 on average and opens its input gate only at the
two marked steps.
"""

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence
from tqdm import tqdm

from annotated.data import integer, names_from, number, torch_device
from annotated.figures import figure, save

# ## The LSTM cell
#
# The LSTM [@hochreiter1997long] keeps two states: the output $h_t$, which the next
# step and the next layer read, and the *cell* $c_t$, which only the cell itself reads
# and which it changes by addition. Four *gates*, each computed from the input $x_t$
# and the previous output $h_{t-1}$, decide what to write and what to keep:
#
# $$
# \begin{aligned}
# i_t &= \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi}) \\
# f_t &= \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf}) \\
# g_t &= \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\
# o_t &= \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho}) \\
# c_t &= f_t \odot c_{t-1} + i_t \odot g_t \\
# h_t &= o_t \odot \tanh(c_t)
# \end{aligned}
# $$
#
# $g_t$ is the candidate to write, $i_t$ (input gate) how much of it to write, $f_t$
# (forget gate) how much of the old cell to keep, and $o_t$ (output gate) how much of
# the cell to show as $h_t$. A step of a vanilla RNN,
# $h_t = \tanh(W_{ih} x_t + W_{hh} h_{t-1} + b)$, multiplies the gradient by
# $W_{hh}^\top \operatorname{diag}(\tanh')$ [@bengio1994learning]. Along the cell,
# one step's Jacobian is just
# $\partial c_t / \partial c_{t-1} = \operatorname{diag}(f_t)$ plus terms through the
# gates: no weight matrix and no squashing derivative. With $f_t$ near 1 an error
# signal rides the cell for hundreds of steps, the "constant error carousel" of the
# 1997 paper, whose cell had no forget gate at all (in effect $f_t = 1$). The forget
# gate came three years later [@gers2000learning], so that the cell can also be
# cleared.
#
# The layout is PyTorch's, so that weights move between this code and `nn.LSTM`
# unchanged. The four gates' matrices are stacked by rows in the order **i, f, g, o**:
# `weight_ih` is $[W_{ii}; W_{if}; W_{ig}; W_{io}]$, `[4*hidden, input]`, and
# `weight_hh` is `[4*hidden, hidden]`. Two matrix products give all four gates'
# pre-activations at once, `chunk(4)` splits them. There are two bias vectors where
# one would do (only $b_{ih} + b_{hh}$ matters): it is cuDNN's layout, which PyTorch
# kept so that its GPU path can hand the weights to cuDNN as they are.
#
# The function is public and checked once at its boundary. With a projection (below),
# $h$ is narrower than $c$ and `weight_hh` is `[4*hidden, proj]`; nothing in the cell
# changes, and the layer applies the projection to the returned $h_t$.


def lstm_cell(
    x: Tensor,
    h: Tensor,
    c: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""One LSTM step, gates in PyTorch's order i, f, g, o.

    `x` `[batch, input]`, `h` and `c` `[batch, hidden]`, `weight_ih`
    `[4*hidden, input]`, `weight_hh` `[4*hidden, hidden]`, biases `[4*hidden]`.
    Returns `(h_new, c_new)`, both `[batch, hidden]`.

    With a projection of size `proj`, `h` is `[batch, proj]` and `weight_hh`
    `[4*hidden, proj]`; the returned `h_new` is still the unprojected
    $o_t \odot \tanh(c_t)$, `[batch, hidden]`, which the layer multiplies by
    `weight_hr`.
    """
    check_cell("lstm_cell", 4, x, h, c, weight_ih, weight_hh, bias_ih, bias_hh)
    gates = x @ weight_ih.T + h @ weight_hh.T  # [batch, 4*hidden]
    if bias_ih is not None:
        gates = gates + bias_ih
    if bias_hh is not None:
        gates = gates + bias_hh
    i, f, g, o = gates.chunk(4, dim=1)  # each [batch, hidden]
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)  # [batch, hidden]
    h_new = torch.sigmoid(o) * torch.tanh(c_new)  # [batch, hidden]
    return h_new, c_new


# One checker serves both cells. It runs once per call, before any arithmetic: a
# transposed weight or a state of the wrong width would otherwise surface as a shape
# error inside `@` or, worse, broadcast silently in the pointwise part.
def check_cell(
    name: str,
    gates: int,
    x: Tensor,
    h: Tensor,
    c: Tensor | None,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
) -> None:
    """Raise `TypeError` or `ValueError` naming the cell's argument that does not
    fit."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(
            f"{name}: x must be a floating-point tensor, "
            f"got {getattr(x, 'dtype', type(x).__name__)}"
        )
    arguments = {"x": x, "h": h, "c": c, "weight_ih": weight_ih}
    arguments |= {"weight_hh": weight_hh, "bias_ih": bias_ih, "bias_hh": bias_hh}
    for argument, value in arguments.items():
        if value is None and argument in ("c", "bias_ih", "bias_hh"):
            continue
        if not isinstance(value, Tensor) or value.dtype != x.dtype:
            raise TypeError(
                f"{name}: {argument} must be a tensor of x's dtype {x.dtype}, got "
                f"{getattr(value, 'dtype', type(value).__name__)}"
            )
    if weight_ih.ndim != 2 or weight_ih.shape[0] % gates:
        raise ValueError(
            f"{name}: weight_ih must be [{gates}*hidden, input], "
            f"got {list(weight_ih.shape)}"
        )
    hidden = weight_ih.shape[0] // gates
    batch = x.shape[0] if x.ndim else 0
    lstm_width = weight_hh.shape[-1] if weight_hh.ndim else hidden  # maybe projected
    width = hidden if c is None else lstm_width  # a GRU's h is never projected
    expected = {
        "x": (batch, weight_ih.shape[1]),
        "weight_hh": (gates * hidden, width),
        "h": (batch, width),
        "c": (batch, hidden),
        "bias_ih": (gates * hidden,),
        "bias_hh": (gates * hidden,),
    }
    for argument, shape in expected.items():
        value = arguments[argument]
        if value is not None and tuple(value.shape) != shape:
            raise ValueError(
                f"{name}: {argument} must have shape {list(shape)}, got "
                f"{list(value.shape)} (x is {list(x.shape)}, weight_ih "
                f"{list(weight_ih.shape)}: {gates} gates of {hidden} units)"
            )


# ## The GRU cell
#
# The gated recurrent unit [@cho2014learning] keeps one state and two gates: a
# *reset* gate $r_t$ that decides how much of $h_{t-1}$ the candidate $n_t$ may see,
# and an *update* gate $z_t$ that mixes the old state with the candidate. In
# PyTorch's order **r, z, n**:
#
# $$
# \begin{aligned}
# r_t &= \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\
# z_t &= \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
# n_t &= \tanh\bigl(W_{in} x_t + b_{in} \\
#     &\qquad + r_t \odot (W_{hn} h_{t-1} + b_{hn})\bigr) \\
# h_t &= (1 - z_t) \odot n_t + z_t \odot h_{t-1}
# \end{aligned}
# $$
#
# Where $r_t$ sits is a real difference from the paper. Cho et al. reset the state
# *before* the product, $W_{hn}(r_t \odot h_{t-1})$; PyTorch and cuDNN reset it
# *after*, $r_t \odot (W_{hn} h_{t-1} + b_{hn})$, with $b_{hn}$ inside the product with
# $r_t$. The reason is speed: then all three gates' recurrent products are one matrix
# product $W_{hh} h_{t-1}$, computed before $r_t$ is known. (ONNX calls this variant
# `linear_before_reset=1`.) The two are different functions, so weights trained in one
# convention do not transfer to the other; we follow PyTorch's. The update
# $h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}$ is again additive: with $z_t$ near 1
# the state, and its gradient, pass through unchanged, the GRU's version of the
# carousel.


def gru_cell(
    x: Tensor,
    h: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
) -> Tensor:
    r"""One GRU step, gates in PyTorch's order r, z, n, with $b_{hn}$ inside the reset.

    `x` `[batch, input]`, `h` `[batch, hidden]`, `weight_ih` `[3*hidden, input]`,
    `weight_hh` `[3*hidden, hidden]`, biases `[3*hidden]`. Returns `h_new`
    `[batch, hidden]`.
    """
    check_cell("gru_cell", 3, x, h, None, weight_ih, weight_hh, bias_ih, bias_hh)
    from_x = x @ weight_ih.T  # [batch, 3*hidden]
    from_h = h @ weight_hh.T  # [batch, 3*hidden]
    if bias_ih is not None:
        from_x = from_x + bias_ih
    if bias_hh is not None:
        from_h = from_h + bias_hh
    r_x, z_x, n_x = from_x.chunk(3, dim=1)  # each [batch, hidden]
    r_h, z_h, n_h = from_h.chunk(3, dim=1)
    r = torch.sigmoid(r_x + r_h)
    z = torch.sigmoid(z_x + z_h)
    n = torch.tanh(n_x + r * n_h)  # the reset multiplies W_hn h + b_hn
    return (1 - z) * n + z * h  # [batch, hidden]


# ## One direction of one layer
#
# A layer runs its cell along the sequence, carrying the state from step to step.
# `scan` does that for one direction, for any cell: `step(x, state, weights)` takes
# the input of one time step and the state as a tuple ($(h, c)$ for the LSTM, $(h,)$
# for the GRU) and returns the new state, whose first entry is the step's output.
#
# The inputs arrive as a list of per-step tensors, and their batch may shrink along
# the list. That is how a *packed* sequence stores a batch of different lengths:
# sorted by length, longest first, step $t$ holds only the `batch_sizes[t]` sequences
# that are still running, always a prefix of the batch. So at step $t$ the cell
# updates the first `batch_sizes[t]` rows of the state and leaves the rest alone:
# a sequence that has ended keeps the state of its own last token, which is what the
# layer returns as its final state. Running backwards, the prefix grows instead: a
# sequence joins at its own last token, from the initial state its rows still hold.
# Nothing is computed for padding, and nothing needs masking afterwards.


def scan(
    step,
    inputs: list[Tensor],
    state: tuple[Tensor, ...],
    weights: dict,
    reverse: bool = False,
) -> tuple[list[Tensor], tuple[Tensor, ...]]:
    """Run `step` over `inputs` (a list of `[batch_t, features]`, `batch_t`
    non-increasing) from `state` (tensors `[batch, width]`); returns the outputs, one
    `[batch_t, width]` per step, and the final state."""
    outputs = [None] * len(inputs)
    order = range(len(inputs) - 1, -1, -1) if reverse else range(len(inputs))
    for t in order:
        active = inputs[t].shape[0]  # the sequences still running: a prefix
        new = step(inputs[t], tuple(s[:active] for s in state), weights)
        if active == state[0].shape[0]:
            state = new
        else:
            state = tuple(torch.cat([n, s[active:]]) for n, s in zip(new, state))
        outputs[t] = new[0]  # [batch_t, width]
    return outputs, state


# ## Layers, directions and projections
#
# `nn.LSTM` and `nn.GRU` share one base class in `torch/nn/modules/rnn.py`, `RNNBase`,
# and so do ours. It owns what the two have in common:
#
# - **Stacking.** Layer $\ell > 0$ reads the outputs of layer $\ell - 1$ as its
#   inputs. Between layers, in training mode, those outputs pass through dropout with
#   probability `dropout` (never after the last layer).
# - **Directions.** A bidirectional layer [@schuster1997bidirectional] runs a second
#   cell with its own weights from the last step to the first, and concatenates the
#   two outputs of each step, forward first: a layer's output is
#   `[seq, batch, 2*width]`.
# - **Projection** (LSTM only). With `proj_size` $P > 0$, the output is
#   $h_t = W_{hr}(o_t \odot \tanh c_t)$, `[batch, P]` [@sak2014long]. It is this
#   narrower $h_t$ that is fed back, so `weight_hh` shrinks from `[4H, H]` to
#   `[4H, P]`, while the cell $c_t$ keeps its $H$ units.
# - **Names and shapes.** Parameters are registered under PyTorch's names, in its
#   order: for each layer $\ell$, then each direction (suffix `_reverse`),
#   `weight_ih_l{ℓ}`, `weight_hh_l{ℓ}`, `bias_ih_l{ℓ}`, `bias_hh_l{ℓ}` and, with a
#   projection, `weight_hr_l{ℓ}`. A state dict therefore loads into `nn.LSTM` and back
#   without renaming, and the same seed draws the same initial weights: every one is
#   uniform in $\pm 1/\sqrt{H}$, as in `RNNBase.reset_parameters`.
# - **States.** The initial and final states are stacked `[layers*directions, batch,
#   width]`, layer-major: index $2\ell + d$ with two directions.
# - **Inputs.** `[seq, batch, features]`, or `[batch, seq, features]` with
#   `batch_first=True`, or one unbatched sequence `[seq, features]`, or a
#   `PackedSequence`. A packed batch is sorted by length, so the initial states, given
#   in the caller's order, are permuted by its `sorted_indices` on the way in and the
#   final states by `unsorted_indices` on the way out, as `nn.LSTM.permute_hidden`
#   does.
#
# The subclasses add their cell (`step`), the names of their states, and the shape of
# `forward`'s answer.


class RNNBase(nn.Module):
    """What the LSTM and GRU layers share: parameters in PyTorch's layout, and the loop
    over layers and directions."""

    gates = 4
    state_names = ("h_0", "c_0")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
    ):
        super().__init__()
        sizes = {"input_size": input_size, "hidden_size": hidden_size}
        sizes["num_layers"] = num_layers
        for argument, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{argument} must be a positive int, got {value!r}")
        if not isinstance(proj_size, int) or not 0 <= proj_size < hidden_size:
            raise ValueError(
                f"proj_size must be an int in [0, hidden_size={hidden_size}), "
                f"got {proj_size!r}"
            )
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must lie in [0, 1], got {dropout!r}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.num_layers, self.bias, self.batch_first = num_layers, bias, batch_first
        self.dropout, self.bidirectional = float(dropout), bidirectional
        self.proj_size = proj_size
        self.directions = 2 if bidirectional else 1
        width = proj_size or hidden_size  # of h, the output of each direction
        self.state_widths = {"h_0": width, "c_0": hidden_size}
        rows = self.gates * hidden_size
        self.names = []  # [2ℓ + d]: "weight_ih" → "weight_ih_l{ℓ}" (or its _reverse)
        for layer in range(num_layers):
            for direction in range(self.directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                inputs = input_size if layer == 0 else width * self.directions
                shapes = {"weight_ih": (rows, inputs), "weight_hh": (rows, width)}
                if bias:
                    shapes |= {"bias_ih": (rows,), "bias_hh": (rows,)}
                if proj_size:
                    shapes["weight_hr"] = (proj_size, hidden_size)
                for name, shape in shapes.items():
                    self.register_parameter(
                        name + suffix, nn.Parameter(torch.empty(shape))
                    )
                self.names.append({name: name + suffix for name in shapes})
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -bound, bound)

    def weights(self, index: int) -> dict[str, Tensor]:
        """The parameters of layer-direction `index` (= 2ℓ + d), by short name."""
        return {short: getattr(self, full) for short, full in self.names[index].items()}

    def step(self, x: Tensor, state: tuple[Tensor, ...], weights: dict) -> tuple:
        raise NotImplementedError

    def run(
        self, input: Tensor | PackedSequence, hx: tuple[Tensor, ...] | None
    ) -> tuple[Tensor | PackedSequence, tuple[Tensor, ...]]:
        """The layers over `input` from the states `hx` (zeros when `None`); returns the
        last layer's output and the final states, shaped as `nn.LSTM` shapes them."""
        packed = isinstance(input, PackedSequence)
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            steps = list(data.split(batch_sizes.tolist()))  # each [batch_t, features]
            batch, unbatched = int(batch_sizes[0]), False
        else:
            data = input
            if not isinstance(input, Tensor) or input.ndim not in (2, 3):
                raise ValueError(
                    f"{type(self).__name__}: input must be [seq, batch, features], "
                    "[batch, seq, features] with batch_first, [seq, features] or a "
                    f"PackedSequence, got {getattr(input, 'shape', type(input))}"
                )
            unbatched = input.ndim == 2
            if unbatched:
                input = input.unsqueeze(1)
            elif self.batch_first:
                input = input.transpose(0, 1)
            steps = list(input.unbind(0))  # each [batch, features]
            batch = input.shape[1]
        if not steps:
            raise ValueError(f"{type(self).__name__}: input has no time steps")
        self.check_input(data, hx, batch, unbatched)
        stacked = self.num_layers * self.directions
        if hx is None:
            hx = tuple(
                data.new_zeros(stacked, batch, self.state_widths[name])
                for name in self.state_names
            )
        elif unbatched:
            hx = tuple(s.unsqueeze(1) for s in hx)  # [layers*directions, 1, width]
        elif packed and sorted_indices is not None:
            hx = tuple(s.index_select(1, sorted_indices) for s in hx)

        finals = []  # one state tuple per layer-direction, each entry [batch, width]
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.directions):
                index = layer * self.directions + direction
                state = tuple(s[index] for s in hx)  # each [batch, width]
                out, final = scan(
                    self.step, steps, state, self.weights(index), reverse=direction == 1
                )
                outputs.append(out)
                finals.append(final)
            steps = [torch.cat(pair, dim=1) for pair in zip(*outputs)]
            if self.training and self.dropout and layer < self.num_layers - 1:
                steps = [F.dropout(s, self.dropout) for s in steps]
        states = tuple(torch.stack(s) for s in zip(*finals))  # [layers*dirs, batch, w]

        if packed:
            output = PackedSequence(
                torch.cat(steps), batch_sizes, sorted_indices, unsorted_indices
            )
            if unsorted_indices is not None:
                states = tuple(s.index_select(1, unsorted_indices) for s in states)
            return output, states
        output = torch.stack(steps)  # [seq, batch, directions*width]
        if unbatched:
            return output.squeeze(1), tuple(s.squeeze(1) for s in states)
        if self.batch_first:
            output = output.transpose(0, 1)  # [batch, seq, directions*width]
        return output, states

    def check_input(
        self, data: Tensor, hx: tuple[Tensor, ...] | None, batch: int, unbatched: bool
    ) -> None:
        """Raise naming the argument when the input or a state does not fit."""
        name = type(self).__name__
        parameter = self.weight_ih_l0
        if data.dtype != parameter.dtype:
            raise TypeError(
                f"{name}: input must have the parameters' dtype {parameter.dtype}, "
                f"got {data.dtype}"
            )
        if data.shape[-1] != self.input_size:
            raise ValueError(
                f"{name}: input must have input_size={self.input_size} features in "
                f"its last dimension, got {list(data.shape)}"
            )
        for state_name, state in zip(self.state_names, hx or ()):
            stacked = self.num_layers * self.directions
            width = self.state_widths[state_name]
            shape = (stacked, width) if unbatched else (stacked, batch, width)
            if not isinstance(state, Tensor) or tuple(state.shape) != shape:
                raise ValueError(
                    f"{name}: {state_name} must have shape {list(shape)} "
                    "([layers*directions, batch, width]), got "
                    f"{list(getattr(state, 'shape', [type(state).__name__]))}"
                )


# ## The two layers, and what their loop costs
#
# Each subclass only names its states and wraps its cell as `step`; the LSTM's step
# applies the projection after the cell. The test file's benchmark runs a forward and
# backward pass of one LSTM layer (50 steps, batch 32, 32 inputs, 64 units, float32).
# On a shared 2-core machine ours took 3.2 to 3.7 times as long as `nn.LSTM` in our runs
# (the table at the top of the page has the numbers), while one step of `lstm_cell` on
# its own came within a factor of 1.6 of `torch.lstm_cell` in every run: a dozen small
# operations either way, each costing mostly its dispatch. The gap is the loop. Ours
# runs in Python and records each step's operations for autograd one by one; ATen's
# `FullLayer` (`aten/src/ATen/native/RNN.cpp`) runs the same loop in C++ and, on a
# CPU, first multiplies the whole sequence by `weight_ih` in one matrix product,
# leaving only $W_{hh} h_{t-1}$ inside the loop (exercise 2). On a GPU, `nn.LSTM`
# hands the whole layer to cuDNN; [the fused LSTM kernel](../kernels/fused_lstm.md)
# fuses the pointwise half of our cell instead.


class LSTM(RNNBase):
    r"""A twin of `nn.LSTM` on `lstm_cell`: same arguments, parameters and answers.

    `forward(input, (h_0, c_0))` returns `output, (h_n, c_n)`.
    """

    def step(self, x: Tensor, state: tuple[Tensor, Tensor], weights: dict):
        h, c = state
        h, c = lstm_cell(
            x,
            h,
            c,
            weights["weight_ih"],
            weights["weight_hh"],
            weights.get("bias_ih"),
            weights.get("bias_hh"),
        )
        if "weight_hr" in weights:
            h = h @ weights["weight_hr"].T  # [batch, proj]
        return h, c

    def forward(self, input, hx: tuple[Tensor, Tensor] | None = None):
        if hx is not None and not (isinstance(hx, tuple) and len(hx) == 2):
            raise TypeError(
                f"LSTM: hx must be a tuple (h_0, c_0), got {type(hx).__name__}"
            )
        output, (h_n, c_n) = self.run(input, hx)
        return output, (h_n, c_n)


class GRU(RNNBase):
    r"""A twin of `nn.GRU` on `gru_cell`. `forward(input, h_0)` returns
    `output, h_n`."""

    gates = 3
    state_names = ("h_0",)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
    ):
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
        )

    def step(self, x: Tensor, state: tuple[Tensor], weights: dict):
        (h,) = state
        return (
            gru_cell(
                x,
                h,
                weights["weight_ih"],
                weights["weight_hh"],
                weights.get("bias_ih"),
                weights.get("bias_hh"),
            ),
        )

    def forward(self, input, hx: Tensor | None = None):
        if hx is not None and not isinstance(hx, Tensor):
            raise TypeError(f"GRU: hx must be a tensor h_0, got {type(hx).__name__}")
        output, (h_n,) = self.run(input, None if hx is None else (hx,))
        return output, h_n


# ## The adding problem
#
# A task that needs long memory, from the LSTM paper itself [@hochreiter1997long] (its
# experiment 4), in the form later papers use. Each input is a sequence of $T$ pairs:
# a number drawn uniformly from $[0, 1]$, and a marker that is 1 at exactly two steps,
# one in each half of the sequence, and 0 elsewhere. The target, read off the last
# step's output, is the sum of the two marked numbers. Nothing about the first number
# is visible after its step, so the network has to store it for up to $T$ steps while
# ignoring everything else, and the gradient that teaches it to do so has to travel
# back just as far.
#
# Always answering 1, the mean of the sum, scores a mean squared error of
# $\operatorname{Var}(u_1 + u_2) = 2 \cdot \tfrac{1}{12} = \tfrac{1}{6} \approx 0.167$.
# A model that beats this clearly has learned to remember.


def adding_problem(
    batch: int, length: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """`batch` sequences of the adding problem: inputs `[batch, length, 2]` (value,
    marker) and targets `[batch]`, the sum of the two marked values."""
    if not isinstance(length, int) or length < 2:
        raise ValueError(f"length must be an int >= 2, got {length!r}")
    values = torch.rand(batch, length, generator=generator)  # [batch, length]
    first = torch.randint(0, length // 2, (batch,), generator=generator)
    second = torch.randint(length // 2, length, (batch,), generator=generator)
    markers = torch.zeros(batch, length)
    rows = torch.arange(batch)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    targets = values[rows, first] + values[rows, second]  # [batch]
    return torch.stack([values, markers], dim=2), targets


# The model reads the sequence with one recurrent layer and maps the last output to a
# number with a linear head. The recurrent layer is ours (`LSTM`, `GRU`) or, for the
# comparison, PyTorch's vanilla `nn.RNN` with a $\tanh$ cell (the one built by hand in
# [the RNN lesson](rnn.md)); all three have the same width.


class AddingModel(nn.Module):
    """A recurrent layer and a linear head: `[batch, length, 2]` → `[batch]`."""

    def __init__(self, kind: str = "lstm", hidden_size: int = 32):
        super().__init__()
        layers = {"lstm": LSTM, "gru": GRU, "rnn": nn.RNN}
        if kind not in layers:
            raise ValueError(f"kind must be 'lstm', 'gru' or 'rnn', got {kind!r}")
        self.recurrent = layers[kind](2, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, x: Tensor) -> Tensor:
        outputs, _ = self.recurrent(x)  # [batch, length, hidden]
        return self.head(outputs[:, -1]).squeeze(1)  # [batch]


# Training is plain: Adam on the squared error, fresh sequences every step, and the
# gradient's norm clipped to 1, the usual guard for recurrent networks (a single
# exploding step would otherwise throw the weights far away).


def train(
    model: AddingModel,
    length: int,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-2,
    seed: int = 0,
    device: str = "cpu",
) -> list[float]:
    """Train `model` in place on fresh adding problems; returns each step's loss."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in tqdm(range(steps), desc=f"{type(model.recurrent).__name__}", leave=False):
        x, y = adding_problem(batch_size, length, generator)
        loss = F.mse_loss(model(x.to(device)), y.to(device))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def evaluate(model: AddingModel, x: Tensor, y: Tensor) -> float:
    """Mean squared error of `model` on `x [n, length, 2]`, `y [n]`."""
    model.eval()
    return F.mse_loss(model(x), y).item()


# ## Looking inside the trained cell
#
# The trained LSTM's gates can be read off by running its one layer step by step on a
# single sequence and recomputing the four gate activations from the equations above.
# This repeats `lstm_cell`'s first lines, because the cell returns only $h_t$ and
# $c_t$.


@torch.no_grad()
def gate_trace(layer: LSTM, x: Tensor) -> dict[str, Tensor]:
    """Gates i, f, g, o and the cell c of `layer`'s first layer along one sequence `x
    [length, features]`: each `[length, hidden]`."""
    weights = layer.weights(0)
    h = x.new_zeros(1, layer.weight_hh_l0.shape[1])
    c = x.new_zeros(1, layer.hidden_size)
    trace = {name: [] for name in "ifgoc"}
    for x_t in x:
        gates = x_t[None] @ weights["weight_ih"].T + h @ weights["weight_hh"].T
        gates = gates + weights["bias_ih"] + weights["bias_hh"]  # [1, 4*hidden]
        i, f, g, o = gates.chunk(4, dim=1)
        for name, value in zip(
            "ifgo", (i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid())
        ):
            trace[name].append(value[0])
        h, c = layer.step(x_t[None], (h, c), weights)
        trace["c"].append(c[0])
    return {name: torch.stack(values) for name, values in trace.items()}


def example():
    """One step of `lstm_cell`: a batch of 3, 2 inputs, 4 hidden units."""
    generator = torch.Generator().manual_seed(0)
    batch, inputs, hidden = 3, 2, 4

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator)

    args = (
        randn(batch, inputs),  # x
        randn(batch, hidden),  # h
        randn(batch, hidden),  # c
        randn(4 * hidden, inputs) / 2,  # weight_ih
        randn(4 * hidden, hidden) / 2,  # weight_hh
        randn(4 * hidden) / 2,  # bias_ih
        randn(4 * hidden) / 2,  # bias_hh
    )
    return lstm_cell, args


# `lstm_cell` is a function, not a module, so this page's dataflow diagram is declared
# here rather than traced: the steps of the cell, with the shapes of the example on
# the edges.


def dataflow(output: tuple[Tensor, Tensor]) -> tuple[list, list]:
    """The LSTM cell's steps as `(nodes, edges)`, shapes taken from `example()`."""
    h_new, _ = output
    x, h = example()[1][:2]
    batch, hidden = h_new.shape
    state, gate = f"[{batch}, {hidden}]", f"[{batch}, {hidden}]"
    nodes = [
        ("x", "x"),
        ("h", "h"),
        ("c", "c"),
        ("gates", "x W_ih^T + h W_hh^T + b"),
        ("chunk", "chunk(4)"),
        ("i", "i = σ"),
        ("f", "f = σ"),
        ("g", "g = tanh"),
        ("o", "o = σ"),
        ("c_new", "c' = f c + i g"),
        ("h_new", "h' = o tanh(c')"),
    ]
    edges = [
        ("x", "gates", str(list(x.shape))),
        ("h", "gates", str(list(h.shape))),
        ("gates", "chunk", f"[{batch}, {4 * hidden}]"),
        *[("chunk", name, gate) for name in "ifgo"],
        ("c", "c_new", state),
        *[(name, "c_new", gate) for name in "ifg"],
        ("c_new", "h_new", state),
        ("o", "h_new", gate),
    ]
    return nodes, edges


def moving_average(values: list[float], window: int) -> Tensor:
    """The mean of each run of `window` consecutive values (fewer at the start)."""
    values = torch.tensor(values)
    sums = torch.cat([torch.zeros(1), values.cumsum(0)])
    starts = (torch.arange(len(values)) + 1 - window).clamp(min=0)
    return (sums[1:] - sums[starts]) / (torch.arange(len(values)) + 1 - starts)


def plot_training(
    losses: dict[str, list[float]],
    predictions: dict[str, Tensor],
    targets: Tensor,
    length: int,
    out: Path,
) -> Path:
    """Loss curves of every model, and predictions against targets on the test set."""
    fig, (left, right) = figure(panels=2)
    for name, curve in losses.items():
        left.plot(moving_average(curve, 25), label=name)
    left.axhline(1 / 6, color="grey", linestyle="--", label="always answer 1")
    left.set_yscale("log")
    left.set_xlabel("training step")
    left.set_ylabel("squared error (mean of 25 steps)")
    left.set_title(f"adding problem, $T = {length}$")
    left.legend()
    for name, predicted in predictions.items():
        right.scatter(targets, predicted, s=4, alpha=0.5, label=name)
    right.plot([0, 2], [0, 2], color="grey", linestyle="--")
    right.set_xlabel("target $u_1 + u_2$")
    right.set_ylabel("prediction")
    right.set_title("test sequences")
    right.legend()
    names = " and ".join(losses)
    return save(
        fig,
        out / "training.png",
        caption=f"Left: training loss of {names} on the adding problem with "
        f"{length} steps; the dashed line is the error of always answering 1. Right: "
        "predictions against targets on fresh test sequences.",
    )


def plot_gates(trace: dict[str, Tensor], x: Tensor, unit: int, out: Path) -> Path:
    """The trained LSTM's input and forget gates along one sequence, and the gates and
    cell of one `unit`."""
    marked = torch.nonzero(x[:, 1]).flatten().tolist()
    fig, axes = figure(panels=3)
    for ax, name, title in zip(axes, "if", ("input gate $i_t$", "forget gate $f_t$")):
        image = ax.imshow(
            trace[name].T,
            aspect="auto",
            cmap="viridis",
            vmin=0,
            vmax=1,
            interpolation="nearest",
        )
        ax.set_title(title)
        ax.set_xlabel("step $t$")
        ax.set_ylabel("unit")
        fig.colorbar(image, ax=ax)
    for name, label in zip(
        "ifc", ("input gate $i_t$", "forget gate $f_t$", "cell $c_t$")
    ):
        axes[2].plot(trace[name][:, unit], label=label)
    axes[2].set_title(f"unit {unit}")
    axes[2].set_xlabel("step $t$")
    axes[2].legend()
    for ax in axes:
        for t in marked:
            ax.axvline(t, color="red", linewidth=1, linestyle=":")
    opened = " and ".join(f"{trace['i'][t, unit]:.2f}" for t in marked)
    return save(
        fig,
        out / "gates.png",
        caption="The trained LSTM's input and forget gates, every unit, along one test "
        "sequence; dotted red lines mark the two marked steps. Right: unit "
        f"{unit}, whose forget gate stays at {trace['f'][:, unit].mean():.3f} on "
        f"average, opens its input gate only at the marked steps ({opened}): its "
        "cell moves by a step there and drifts only slowly in between.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train our LSTM and a vanilla RNN on the adding problem; draw the loss curves and
    the trained gates."""
    parser = argparse.ArgumentParser(
        description="The adding problem: our LSTM (or GRU) against a vanilla RNN.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--length", type=integer(at_least=2), default=50, help="sequence length T"
    )
    parser.add_argument(
        "--steps", type=integer(at_least=1), default=1200, help="training steps"
    )
    parser.add_argument(
        "--hidden", type=integer(at_least=1), default=32, help="hidden units"
    )
    parser.add_argument(
        "--batch-size", type=integer(at_least=1), default=64, help="sequences a step"
    )
    parser.add_argument(
        "--lr", type=number(above=0), default=1e-2, help="Adam learning rate"
    )
    parser.add_argument(
        "--models",
        type=names_from(("lstm", "gru", "rnn")),
        default="lstm,rnn",
        help="comma-separated models to train: lstm, gru (ours) and rnn (nn.RNN)",
    )
    parser.add_argument(
        "--test-size", type=integer(at_least=1), default=1000, help="test sequences"
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to train on",
    )
    parser.add_argument("--out", default="out/lstm", help="folder for the figures")
    args = parser.parse_args(argv)
    kinds = args.models
    out = Path(args.out)
    # A step is a few hundred operations on tensors of a few thousand numbers: too
    # small to share between cores. A second thread only adds waiting, and on a busy
    # machine it can slow training down many times over.
    if args.device == "cpu":
        torch.set_num_threads(1)
    x_test, y_test = adding_problem(
        args.test_size, args.length, torch.Generator().manual_seed(args.seed + 1)
    )
    x_test, y_test = x_test.to(args.device), y_test.to(args.device)
    metrics = {"mse/baseline": F.mse_loss(torch.ones_like(y_test), y_test).item()}
    losses, predictions, models = {}, {}, {}
    for kind in tqdm(kinds, desc="models"):
        torch.manual_seed(args.seed)
        model = AddingModel(kind, args.hidden).to(args.device)
        losses[kind] = train(
            model,
            args.length,
            args.steps,
            args.batch_size,
            args.lr,
            args.seed,
            args.device,
        )
        metrics[f"mse/{kind}"] = evaluate(model, x_test, y_test)
        with torch.no_grad():
            predictions[kind] = model(x_test).cpu()
        models[kind] = model
    for kind in kinds:
        print(
            f"test MSE {kind} {metrics[f'mse/{kind}']:.4f} "
            f"(always answering 1: {metrics['mse/baseline']:.4f})"
        )
    if "lstm" in models:
        # The trained weights load into nn.LSTM unchanged, and give the same answers.
        ours = models["lstm"].recurrent
        twin = nn.LSTM(2, args.hidden, batch_first=True).to(args.device)
        twin.load_state_dict(ours.state_dict())
        with torch.no_grad():
            gap = (ours(x_test)[0] - twin(x_test)[0]).abs().max().item()
        print(f"our trained LSTM vs nn.LSTM with its weights: max difference {gap:.1e}")
        metrics["gap/nn.LSTM"] = gap
        trace = {name: t.cpu() for name, t in gate_trace(ours, x_test[0]).items()}
        marked = x_test[0, :, 1].cpu() == 1
        unit = int(trace["f"].mean(0).argmax())  # the unit that forgets least
        print(
            f"unit {unit}: forget gate {trace['f'][:, unit].mean():.3f} on average; "
            f"input gate {trace['i'][marked, unit].mean():.2f} at the marked steps, "
            f"{trace['i'][~marked, unit].mean():.2f} elsewhere"
        )
        plot_gates(trace, x_test[0].cpu(), unit, out)
    plot_training(losses, predictions, y_test.cpu(), args.length, out)
    return metrics


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Initialise the forget gate's bias to 1 instead of a small random value
#    [@jozefowicz2015empirical]. Its bias is the sum of rows `hidden:2*hidden` of
#    `bias_ih` and of `bias_hh`, so set them to sum to 1 (one to 1, the other to 0).
#    How many fewer steps does the LSTM need to leave the plateau at $T = 50$? At
#    $T = 200$?
# 2. `scan` multiplies every step's input by `weight_ih` on its own. Compute
#    $x_t W_{ih}^\top + b_{ih}$ for all $t$ in one matrix product before the loop, as
#    ATen's CPU path and cuDNN do, and benchmark the layer again. Why can the same
#    trick not be applied to `weight_hh`?
# 3. Write the GRU with Cho et al.'s placement of the reset gate,
#    $W_{hn}(r_t \odot h_{t-1})$, and check that `nn.GRU`'s weights give different
#    answers in it. Train both on the adding problem: does the placement matter?
# 4. Remove the forget gate (fix $f_t = 1$, the 1997 cell) and train on sequences of
#    length 500 with the marked values at the start. What happens to $|c_t|$?
