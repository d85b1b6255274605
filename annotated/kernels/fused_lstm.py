r"""
---
title: A fused LSTM-cell kernel in Triton
summary: >-
  The LSTM cell's pointwise tail (four gate nonlinearities and the state update) as one
  Triton kernel forward and one backward, wrapped in an autograd Function: bytes counted
  against eager PyTorch, checked against the LSTM lesson's cell and nn.LSTMCell, and
  timed against ATen's fused CUDA kernel and cuDNN on a GPU.
time: 25 s
references:
  - key: hochreiter1997long
    authors: [Sepp Hochreiter, Jürgen Schmidhuber]
    title: Long Short-Term Memory
    year: 1997
    venue: Neural Computation 9(8)
    url: https://doi.org/10.1162/neco.1997.9.8.1735
  - key: appleyard2016optimizing
    authors: [Jeremy Appleyard, Tomáš Kočiský, Phil Blunsom]
    title: Optimizing Performance of Recurrent Neural Networks on GPUs
    year: 2016
    venue: arXiv preprint
    arxiv: "1604.01946"
  - key: tillet2019triton
    authors: [Philippe Tillet, H. T. Kung, David Cox]
    title: "Triton: An Intermediate Language and Compiler for Tiled Neural Network
      Computations"
    year: 2019
    venue: MAPL 2019
    url: https://doi.org/10.1145/3315508.3329973
  - key: williams2009roofline
    authors: [Samuel Williams, Andrew Waterman, David Patterson]
    title: "Roofline: An Insightful Visual Performance Model for Multicore
      Architectures"
    year: 2009
    venue: Communications of the ACM 52(4)
    url: https://doi.org/10.1145/1498765.1498785
worksheet:
  - region: lstm_forward_kernel
    hint: >-
      Each lane owns one (row, unit) element: its gate i sits at row * 4 * hidden +
      unit, and f, g, o follow hidden, 2 * hidden and 3 * hidden further on. Add the
      two gate tensors (and both biases if HAS_BIAS) in ACC, apply sigmoid, sigmoid,
      tanh (as 2 * sigmoid(2z) - 1) and sigmoid, form c_new = f * c + i * g and
      h_new = o * tanh(c_new), store both, and store i, f, g, o in the workspace if
      SAVE_GATES.
    tests:
      - test_the_workspace_holds_the_activated_gates
      - test_pointwise_matches_eager_in_float64
  - region: lstm_backward_kernel
    hint: >-
      Load the saved i, f, g, o, c and tanh(c_new); gather the gradient reaching c_new
      from grad_c_new (if HAS_GRAD_C) and from grad_h_new * o * (1 - tanh^2) (if
      HAS_GRAD_H); chain it through each activation (sigmoid' = s(1 - s), tanh' =
      1 - t^2) into the four gate gradients, with o's coming from grad_h_new *
      tanh(c_new), and store them and grad_c = (gradient at c_new) * f.
    tests: [test_a_gradient_through_one_output_only, test_pointwise_passes_gradcheck]
---

One step of an LSTM [@hochreiter1997long] is two matrix products and a tail of
pointwise arithmetic. The products, $x W_{ih}^\top$ and $h W_{hh}^\top$, are what a GPU
is built for, and cuBLAS runs them near the machine's peak. The tail (add the two
products and the biases, squash four gates, update the cell) does about 35 arithmetic
operations per hidden unit, and in eager PyTorch it runs as 12 separate kernels, each
reading its inputs from the GPU's memory and writing its output back. Counted on the
dispatcher, that is 200 bytes of memory traffic per hidden unit and batch row in
float32; one kernel that does the whole tail needs 44, or 60 when it keeps the gates
for training, and its backward 68 instead of 208. The arithmetic is free; the bytes
are the cost.

This chapter writes those two kernels in Triton [@tillet2019triton], the fusion that
cuDNN [@appleyard2016optimizing] and PyTorch's own `_thnn_fused_lstm_cell` make. It
counts the bytes first, writes the kernels, wraps them in a `torch.autograd.Function`
so that the fused cell trains, and checks it against the
[LSTM lesson's cell](../sequence/lstm.md) and `nn.LSTMCell`, on a CPU in Triton's
interpreter and on a GPU. On a GPU it measures the kernels with
`triton.testing.do_bench` and reports the bandwidth they reach as a fraction of the
device's peak.

Measured on an H200 at batch 8192 with 1024 hidden units, the fused forward kernel
takes 97 µs against eager PyTorch's 536, and moves 3.8 TB/s: 79 % of the datasheet's
4.8 TB/s, 90 % of what a plain copy reaches. ATen's fused kernel takes 126 µs, because
it always writes the gates for a backward pass. A whole training step of the tail,
forward and backward, took 282 µs in a run that had the GPU to itself, the same as
ATen's fused kernel (3.8 TB/s, 79 % of peak), and 431 µs in another; eager takes
1,022. At batch 64, where the kernels have almost nothing to do, ours takes 485 µs
against ATen's 198: the Python `autograd.Function` and its two Triton launches cost
about 0.3 ms of CPU time per step, which a large batch hides behind the GPU's work
only when nothing else competes for the CPU.
"""

import argparse
import copy
import os
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from tqdm import tqdm

from annotated.data import integer, number, torch_device
from annotated.figures import figure, save
from annotated.kernels.softmax import ByteCounter
from annotated.sequence.lstm import lstm_cell

# Triton compiles a kernel for the GPU when it is first launched. Without a GPU it can
# run the same kernel in its *interpreter*, which executes each program with NumPy on
# the CPU: slow, but exact enough to test against PyTorch. The switch is the variable
# `TRITON_INTERPRET`, and Triton reads it while it is being imported, so it has to be
# set before `import triton`, and only when there is no GPU to compile for.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

# ## Where the time goes: bytes, not arithmetic
#
# The cell's pointwise tail takes the two gate products $a = x W_{ih}^\top$ and
# $b = h W_{hh}^\top$, both `[batch, 4·hidden]`, the biases and the cell state $c$,
# and computes, with $\sigma$ the logistic sigmoid and the gates in PyTorch's order
# $i, f, g, o$:
#
# $$
# \begin{aligned}
# z &= a + b + b_{ih} + b_{hh} = [z_i, z_f, z_g, z_o], \\
# i &= \sigma(z_i), \quad f = \sigma(z_f), \\
# g &= \tanh(z_g), \quad o = \sigma(z_o), \\
# c' &= f \odot c + i \odot g, \\
# h' &= o \odot \tanh(c').
# \end{aligned}
# $$
#
# Per hidden unit and batch row that is 12 additions for the gates, five
# nonlinearities of about four operations each, and four for the update: about 35
# floating-point operations. The bytes it must move are at least its inputs and
# outputs: $a$ and $b$ (8 numbers), $c$ (1), and $h'$ and $c'$ (2), so 11 numbers, 44
# bytes in float32; 15 numbers, 60 bytes, when training keeps the activated gates for
# the backward pass. The *arithmetic intensity* is under one operation per byte.
#
# The roofline model [@williams2009roofline] says which of the two limits a kernel: a
# GPU can do $P$ operations a second and move $B$ bytes a second, so a kernel that does
# $I$ operations per byte runs at most at $\min(P, I \cdot B)$. An H200 does about 67
# TFLOP/s of float32 arithmetic and moves 4.8 TB/s: below $67 / 4.8 \approx 14$
# operations per byte a kernel is memory-bound, and at 0.6 the LSTM tail is 20 times
# below that line. Its time is its bytes divided by the bandwidth, and the only way to
# make it faster is to move fewer bytes. A kernel that only streams memory reaches
# about 80–90 % of the datasheet bandwidth (a plain copy on an H200 moves about 4.3 of
# its 4.8 TB/s); that is the ceiling to compare against.
#
# Eager PyTorch moves far more than the minimum. Every operator is its own kernel,
# and every intermediate goes out to memory and comes back: `a + b` reads 8 numbers
# and writes 4, each bias add reads 4 and writes 4, each nonlinearity reads and writes
# one number per unit, each product reads two and writes one. Counted below on the
# dispatcher, the forward pass is 12 kernels and 50 numbers per unit (200 bytes in
# float32) and the backward pass 15 kernels and 52 numbers, against the fused kernel's
# 11 or 15 and, backward, 17. At small batch there is a second cost: every launch is a
# few microseconds of fixed overhead, and 12 launches cost more than the work.
#
# ## The tail in plain PyTorch
#
# The same operation as the [LSTM lesson's cell](../sequence/lstm.md),
# without its two matrix products: the reference the kernels are checked against, and
# the eager version whose traffic we count. `chunk` makes views, so it moves nothing.


def lstm_pointwise(
    input_gates: Tensor,
    hidden_gates: Tensor,
    c: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The LSTM cell's pointwise tail in eager PyTorch: gates `[batch, 4*hidden]`, `c`
    `[batch, hidden]`, biases `[4*hidden]`; returns `(h_new, c_new)`."""
    gates = input_gates + hidden_gates  # [batch, 4*hidden]
    if bias_ih is not None:
        gates = gates + bias_ih + bias_hh
    i, f, g, o = gates.chunk(4, dim=1)  # each [batch, hidden], views
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    return h_new, c_new


# ## Counting the bytes on the dispatcher
#
# Every PyTorch operator, forward or backward, passes through the dispatcher as an ATen
# call such as `aten.sigmoid.default`. A `TorchDispatchMode` sees each call with its
# arguments and results, so it can add up what each kernel reads (its tensor
# arguments) and writes (its tensor results). Views (`chunk`'s pieces, `detach`) share
# memory and launch nothing, so they are skipped. The count is the traffic to the GPU's
# memory when no operand is still in the cache from the kernel before: true once the
# tensors outgrow the L2 cache (50 MB on an H200; at batch 8192 and 1024 hidden units
# one gate tensor is 128 MiB), flattering to eager PyTorch below that. Run on the
# `meta` device, tensors have shapes and no data, and nothing is computed at all. The
# counter is the [softmax chapter's](softmax.md) `ByteCounter`, imported.


def unfused_traffic(
    batch: int, hidden: int, dtype: torch.dtype = torch.float32
) -> dict[str, int]:
    """Kernels and bytes of `lstm_pointwise` with biases, forward and backward, counted
    on the meta device."""

    def leaf(*shape):
        return torch.empty(*shape, dtype=dtype, device="meta", requires_grad=True)

    inputs = (
        leaf(batch, 4 * hidden),
        leaf(batch, 4 * hidden),
        leaf(batch, hidden),
        leaf(4 * hidden),
        leaf(4 * hidden),
    )
    with ByteCounter() as forward:
        h_new, c_new = lstm_pointwise(*inputs)
    grad_outputs = (torch.empty_like(h_new), torch.empty_like(c_new))
    with ByteCounter() as backward:
        torch.autograd.grad((h_new, c_new), inputs, grad_outputs)
    return {
        "forward bytes": forward.bytes,
        "forward kernels": forward.kernels,
        "backward bytes": backward.bytes,
        "backward kernels": backward.kernels,
    }


# The fused kernels' traffic is what their arguments hold, written out. With
# $u = \text{batch} \cdot \text{hidden}$ numbers per `[batch, hidden]` tensor, the
# forward kernel reads $a$, $b$ ($4u$ each) and $c$ ($u$) and the two biases ($8 \cdot
# \text{hidden}$), and writes $h'$ and $c'$ ($2u$); in training it also writes the
# four activated gates ($4u$). The backward kernel reads $\bar h'$, $\bar c'$, $c$, $c'$
# and the gates ($8u$) and writes the gates' gradient ($4u$) and $\bar c$ ($u$); then
# one `sum(0)` over the gates' gradient ($4u$ in, $4 \cdot \text{hidden}$ out) gives
# both biases' gradient, since $\partial z / \partial b_{ih} = \partial z / \partial
# b_{hh}$.
def fused_traffic(
    batch: int, hidden: int, dtype: torch.dtype = torch.float32
) -> dict[str, int]:
    """Kernels and bytes of the fused forward (inference and training) and backward,
    with biases."""
    unit = batch * hidden * dtype.itemsize  # one [batch, hidden] tensor
    biases = 2 * 4 * hidden * dtype.itemsize
    return {
        "inference bytes": (4 + 4 + 1 + 2) * unit + biases,
        "forward bytes": (4 + 4 + 1 + 2 + 4) * unit + biases,
        "forward kernels": 1,
        "backward bytes": (1 + 1 + 1 + 1 + 4 + 4 + 1) * unit + 4 * unit + biases // 2,
        "backward kernels": 2,
    }


# ## The forward kernel
#
# A Triton program [@tillet2019triton] is one instance of the kernel working on a
# *block* of `BLOCK` elements at once; `tl.program_id(0)` says which block. We lay the
# `[batch, hidden]` outputs out flat, as PyTorch's own CUDA kernel does
# (`lstm_cell_forward` in `aten/src/ATen/native/cuda/RNN.cu`): element `index` is
# row `index // hidden`, unit `index % hidden`, and its four gates sit in that row of
# the `[batch, 4·hidden]` gate tensors at columns `unit`, `unit + hidden`,
# `unit + 2·hidden` and `unit + 3·hidden`. Neighbouring elements of a block are
# neighbouring units, so every load and store reads consecutive addresses: the GPU
# serves a warp's 32 loads with a few wide memory transactions. The last block runs
# past the end when `batch · hidden` is not a multiple of `BLOCK`; the `mask` turns
# its extra lanes' loads and stores off.
#
# Each element is read once, its arithmetic happens in registers, and three results
# leave: $h'$, $c'$ and, when training, the four activated gates (the *workspace*
# that the backward kernel needs, as in `_thnn_fused_lstm_cell`). Arithmetic runs in
# `ACC`, float32 for half-precision inputs (PyTorch's `accscalar_t`) and float64 for
# float64. Triton's language has $\sigma$ (`tl.sigmoid`) but no $\tanh$ that its
# interpreter can run, so we write $\tanh z = 2\sigma(2z) - 1$, exact in real
# arithmetic and within a few units in the last place of 1 in floating point.


@triton.jit
def lstm_forward_kernel(
    input_gates_ptr,  # [batch, 4*hidden]
    hidden_gates_ptr,  # [batch, 4*hidden]
    bias_ih_ptr,  # [4*hidden], read only if HAS_BIAS
    bias_hh_ptr,  # [4*hidden]
    c_ptr,  # [batch, hidden]
    h_new_ptr,  # [batch, hidden], written
    c_new_ptr,  # [batch, hidden], written
    workspace_ptr,  # [batch, 4*hidden], written only if SAVE_GATES
    hidden,
    n_elements,  # batch * hidden
    HAS_BIAS: tl.constexpr,
    SAVE_GATES: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    index = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    mask = index < n_elements
    unit = index % hidden
    gate = (index // hidden) * 4 * hidden + unit  # gate i of this element
    z_i = tl.load(input_gates_ptr + gate, mask=mask).to(ACC)
    z_f = tl.load(input_gates_ptr + gate + hidden, mask=mask).to(ACC)
    z_g = tl.load(input_gates_ptr + gate + 2 * hidden, mask=mask).to(ACC)
    z_o = tl.load(input_gates_ptr + gate + 3 * hidden, mask=mask).to(ACC)
    z_i += tl.load(hidden_gates_ptr + gate, mask=mask).to(ACC)
    z_f += tl.load(hidden_gates_ptr + gate + hidden, mask=mask).to(ACC)
    z_g += tl.load(hidden_gates_ptr + gate + 2 * hidden, mask=mask).to(ACC)
    z_o += tl.load(hidden_gates_ptr + gate + 3 * hidden, mask=mask).to(ACC)
    if HAS_BIAS:  # a constexpr: the branch is compiled in or out
        z_i += tl.load(bias_ih_ptr + unit, mask=mask).to(ACC)
        z_f += tl.load(bias_ih_ptr + unit + hidden, mask=mask).to(ACC)
        z_g += tl.load(bias_ih_ptr + unit + 2 * hidden, mask=mask).to(ACC)
        z_o += tl.load(bias_ih_ptr + unit + 3 * hidden, mask=mask).to(ACC)
        z_i += tl.load(bias_hh_ptr + unit, mask=mask).to(ACC)
        z_f += tl.load(bias_hh_ptr + unit + hidden, mask=mask).to(ACC)
        z_g += tl.load(bias_hh_ptr + unit + 2 * hidden, mask=mask).to(ACC)
        z_o += tl.load(bias_hh_ptr + unit + 3 * hidden, mask=mask).to(ACC)
    i = tl.sigmoid(z_i)
    f = tl.sigmoid(z_f)
    g = 2 * tl.sigmoid(2 * z_g) - 1  # tanh
    o = tl.sigmoid(z_o)
    c = tl.load(c_ptr + index, mask=mask).to(ACC)
    c_new = f * c + i * g
    h_new = o * (2 * tl.sigmoid(2 * c_new) - 1)
    out = h_new_ptr.dtype.element_ty
    tl.store(c_new_ptr + index, c_new.to(out), mask=mask)
    tl.store(h_new_ptr + index, h_new.to(out), mask=mask)
    if SAVE_GATES:
        tl.store(workspace_ptr + gate, i.to(out), mask=mask)
        tl.store(workspace_ptr + gate + hidden, f.to(out), mask=mask)
        tl.store(workspace_ptr + gate + 2 * hidden, g.to(out), mask=mask)
        tl.store(workspace_ptr + gate + 3 * hidden, o.to(out), mask=mask)


# ## The backward kernel
#
# Given $\bar h' = \partial L / \partial h'$ and $\bar c' = \partial L / \partial c'$,
# the chain rule through the equations above, written with the saved activations so
# that nothing but $\tanh c'$ is recomputed ($\sigma' = \sigma(1 - \sigma)$,
# $\tanh' = 1 - \tanh^2$):
#
# $$
# \begin{aligned}
# \bar c_\text{tot} &= \bar c' + \bar h' \odot o \odot (1 - \tanh^2 c'), \\
# \bar z_i &= \bar c_\text{tot} \odot g \odot i (1 - i), \\
# \bar z_f &= \bar c_\text{tot} \odot c \odot f (1 - f), \\
# \bar z_g &= \bar c_\text{tot} \odot i \odot (1 - g^2), \\
# \bar z_o &= \bar h' \odot \tanh c' \odot o (1 - o), \\
# \bar c &= \bar c_\text{tot} \odot f .
# \end{aligned}
# $$
#
# $\bar c'$ collects two paths: the gradient handed back from the next step, and the
# one through $h' = o \tanh c'$. Since $z = a + b + b_{ih} + b_{hh}$, $\bar z$ is
# also the gradient of $a$, of $b$, and (summed over the batch) of each bias. A loss
# that reads only $h'$ sends no $\bar c'$ at all, and the last step of a sequence
# gets none: `HAS_GRAD_H` and `HAS_GRAD_C` compile those loads out, where ATen's
# `lstm_cell_backward` skips them with a check at run time.


@triton.jit
def lstm_backward_kernel(
    grad_h_new_ptr,  # [batch, hidden], read only if HAS_GRAD_H
    grad_c_new_ptr,  # [batch, hidden], read only if HAS_GRAD_C
    c_ptr,  # [batch, hidden]
    c_new_ptr,  # [batch, hidden]
    workspace_ptr,  # [batch, 4*hidden]: i, f, g, o after their nonlinearities
    grad_gates_ptr,  # [batch, 4*hidden], written
    grad_c_ptr,  # [batch, hidden], written
    hidden,
    n_elements,
    HAS_GRAD_H: tl.constexpr,
    HAS_GRAD_C: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    index = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    mask = index < n_elements
    gate = (index // hidden) * 4 * hidden + index % hidden
    i = tl.load(workspace_ptr + gate, mask=mask).to(ACC)
    f = tl.load(workspace_ptr + gate + hidden, mask=mask).to(ACC)
    g = tl.load(workspace_ptr + gate + 2 * hidden, mask=mask).to(ACC)
    o = tl.load(workspace_ptr + gate + 3 * hidden, mask=mask).to(ACC)
    c = tl.load(c_ptr + index, mask=mask).to(ACC)
    tanh_c_new = 2 * tl.sigmoid(2 * tl.load(c_new_ptr + index, mask=mask).to(ACC)) - 1
    grad_o = tl.zeros([BLOCK], dtype=ACC)
    grad_c_total = tl.zeros([BLOCK], dtype=ACC)
    if HAS_GRAD_H:
        grad_h_new = tl.load(grad_h_new_ptr + index, mask=mask).to(ACC)
        grad_o = grad_h_new * tanh_c_new
        grad_c_total += grad_h_new * o * (1 - tanh_c_new * tanh_c_new)
    if HAS_GRAD_C:
        grad_c_total += tl.load(grad_c_new_ptr + index, mask=mask).to(ACC)
    grad_i = grad_c_total * g * i * (1 - i)
    grad_f = grad_c_total * c * f * (1 - f)
    grad_g = grad_c_total * i * (1 - g * g)
    grad_o = grad_o * o * (1 - o)
    out = grad_gates_ptr.dtype.element_ty
    tl.store(grad_gates_ptr + gate, grad_i.to(out), mask=mask)
    tl.store(grad_gates_ptr + gate + hidden, grad_f.to(out), mask=mask)
    tl.store(grad_gates_ptr + gate + 2 * hidden, grad_g.to(out), mask=mask)
    tl.store(grad_gates_ptr + gate + 3 * hidden, grad_o.to(out), mask=mask)
    tl.store(grad_c_ptr + index, (grad_c_total * f).to(out), mask=mask)


# ## Launching
#
# The launch grid is one program per block: $\lceil \text{batch} \cdot
# \text{hidden} / \text{BLOCK} \rceil$ of them. A block of 1024 elements with the
# default four warps gives each thread eight elements; smaller problems get one block
# rounded up to a power of two, which also keeps the interpreter, whose cost is per
# program, fast. The offsets are 32-bit integers, so the gate tensors must have fewer
# than $2^{31}$ elements (the public functions check).


def accumulator(dtype: torch.dtype):
    """The Triton type the kernels compute in for tensors of `dtype`."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def launch_grid(n_elements: int, block_size: int | None) -> tuple[int, tuple[int]]:
    """The block size (the largest useful power of two up to 1024 unless given) and
    the grid."""
    block = block_size or min(1024, triton.next_power_of_2(max(n_elements, 1)))
    return block, (triton.cdiv(n_elements, block),)


def lstm_forward(
    input_gates: Tensor,
    hidden_gates: Tensor,
    c: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    save_gates: bool,
    block_size: int | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Run the forward kernel; returns `(h_new, c_new, workspace or None)`."""
    batch, hidden = c.shape
    h_new, c_new = torch.empty_like(c), torch.empty_like(c)
    workspace = torch.empty_like(input_gates) if save_gates else None
    block, grid = launch_grid(batch * hidden, block_size)
    lstm_forward_kernel[grid](
        input_gates,
        hidden_gates,
        input_gates if bias_ih is None else bias_ih,  # a placeholder, never read
        input_gates if bias_hh is None else bias_hh,
        c,
        h_new,
        c_new,
        h_new if workspace is None else workspace,  # never written
        hidden,
        batch * hidden,
        HAS_BIAS=bias_ih is not None,
        SAVE_GATES=save_gates,
        ACC=accumulator(c.dtype),
        BLOCK=block,
    )
    return h_new, c_new, workspace


def lstm_backward(
    grad_h_new: Tensor | None,
    grad_c_new: Tensor | None,
    c: Tensor,
    c_new: Tensor,
    workspace: Tensor,
    block_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Run the backward kernel; returns `(grad_gates, grad_c)`."""
    batch, hidden = c.shape
    grad_gates, grad_c = torch.empty_like(workspace), torch.empty_like(c)
    block, grid = launch_grid(batch * hidden, block_size)
    lstm_backward_kernel[grid](
        c if grad_h_new is None else grad_h_new,  # a placeholder, never read
        c if grad_c_new is None else grad_c_new,
        c,
        c_new,
        workspace,
        grad_gates,
        grad_c,
        hidden,
        batch * hidden,
        HAS_GRAD_H=grad_h_new is not None,
        HAS_GRAD_C=grad_c_new is not None,
        ACC=accumulator(c.dtype),
        BLOCK=block,
    )
    return grad_gates, grad_c


# ## The autograd Function
#
# Forward saves $c$, $c'$ and the workspace; backward runs the backward kernel and
# returns $\bar z$ for both gate tensors (the same tensor twice, as ATen's
# `_thnn_fused_lstm_cell_backward` does) and one `sum(0)` of it for both biases.
#
# Three choices differ from the Functions of the
# [custom-Functions lesson](../systems/custom_functions.md). The
# workspace is a tensor the forward pass makes and the caller never sees, so this
# Function uses the `forward(ctx, ...)` form, which may save such an intermediate;
# the `setup_context` form saves only inputs and outputs. `set_materialize_grads(False)`
# lets a missing $\bar h'$ or $\bar c'$ arrive as `None` instead of a tensor of zeros
# that would cost a kernel and its bytes. And the backward is one Triton kernel that
# autograd cannot see into, so it is `once_differentiable`: asking for a second
# derivative raises instead of silently returning a wrong one. Gradients arrive in
# whatever layout autograd made (`h.sum()` sends an expanded, stride-0 tensor), and the
# kernel reads flat memory, hence `.contiguous()`.


class FusedLSTMPointwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_gates, hidden_gates, c, bias_ih, bias_hh, block_size):
        h_new, c_new, workspace = lstm_forward(
            input_gates, hidden_gates, c, bias_ih, bias_hh, True, block_size
        )
        ctx.save_for_backward(c, c_new, workspace)
        ctx.block_size = block_size
        ctx.set_materialize_grads(False)
        return h_new, c_new

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h_new, grad_c_new):
        c, c_new, workspace = ctx.saved_tensors
        grad_gates, grad_c = lstm_backward(
            None if grad_h_new is None else grad_h_new.contiguous(),
            None if grad_c_new is None else grad_c_new.contiguous(),
            c,
            c_new,
            workspace,
            ctx.block_size,
        )
        needs = ctx.needs_input_grad
        grad_bias = grad_gates.sum(0) if needs[3] or needs[4] else None
        return (
            grad_gates if needs[0] else None,
            grad_gates if needs[1] else None,
            grad_c if needs[2] else None,
            grad_bias if needs[3] else None,
            grad_bias if needs[4] else None,
            None,
        )


# ## Checking the inputs
#
# A kernel reads raw memory: handed a transposed tensor or a float64 cell state next
# to float32 gates, it would compute garbage without a word. So the public functions
# check every tensor before anything runs: its type, a floating dtype shared by all,
# one device, its shape, and, for what the kernel reads, a contiguous layout. The
# matrix products accept any layout, so `x`, `h` and the weights need not be
# contiguous.

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(
    function: str,
    name: str,
    value: object,
    shape: tuple[int, ...],
    layout: str,
    like: Tensor | None = None,
    contiguous: bool = True,
) -> None:
    """Raise unless `value` is a tensor of `shape` (described as `layout`) with `like`'s
    dtype and device."""
    where = f"{function}: {name}"
    if not isinstance(value, Tensor):
        raise TypeError(f"{where} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in DTYPES:
        raise TypeError(
            f"{where} must be float16, bfloat16, float32 or float64, got {value.dtype}"
        )
    if like is not None and value.dtype != like.dtype:
        raise TypeError(f"{where} is {value.dtype} but the others are {like.dtype}")
    if like is not None and value.device != like.device:
        raise ValueError(
            f"{where} is on {value.device} but the others on {like.device}"
        )
    if tuple(value.shape) != shape:
        raise ValueError(
            f"{where} must be {layout} = {shape}, got {tuple(value.shape)}"
        )
    if contiguous and not value.is_contiguous():
        raise ValueError(
            f"{where} must be contiguous (the kernel reads it as flat memory), got "
            f"strides {value.stride()}: pass {name}.contiguous()"
        )


def check_pointwise(
    function: str,
    input_gates: Tensor,
    hidden_gates: Tensor,
    c: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    block_size: int | None,
) -> None:
    """Check the fused kernels' inputs; `input_gates` sets batch, hidden, dtype and
    device."""
    if not isinstance(input_gates, Tensor) or input_gates.ndim != 2:
        raise ValueError(
            f"{function}: input_gates must be a 2-D tensor [batch, 4*hidden], got "
            f"{getattr(input_gates, 'shape', type(input_gates).__name__)}"
        )
    batch, four_hidden = input_gates.shape
    if four_hidden % 4 or four_hidden == 0:
        raise ValueError(
            f"{function}: input_gates must be [batch, 4*hidden] with hidden >= 1, got "
            f"{tuple(input_gates.shape)}"
        )
    hidden = four_hidden // 4
    gates = (batch, four_hidden)
    check_tensor(function, "input_gates", input_gates, gates, "[batch, 4*hidden]")
    for name, value, shape, layout in (
        ("hidden_gates", hidden_gates, gates, "[batch, 4*hidden]"),
        ("c", c, (batch, hidden), "[batch, hidden]"),
    ):
        check_tensor(function, name, value, shape, layout, like=input_gates)
    if (bias_ih is None) != (bias_hh is None):
        raise ValueError(
            f"{function}: bias_ih and bias_hh must both be given or both be None"
        )
    for name, value in (("bias_ih", bias_ih), ("bias_hh", bias_hh)):
        if value is not None:
            check_tensor(
                function, name, value, (four_hidden,), "[4*hidden]", like=input_gates
            )
    if input_gates.numel() >= 2**31:
        raise ValueError(
            f"{function}: input_gates has {input_gates.numel()} elements; the kernels "
            "index with 32-bit integers, so at most 2**31 - 1"
        )
    if block_size is not None and (
        block_size < 1 or block_size != triton.next_power_of_2(block_size)
    ):
        raise ValueError(
            f"{function}: block_size must be a power of two, got {block_size}"
        )


# ## The fused cell
#
# `fused_lstm_pointwise` is the kernel pair behind autograd. Without gradients to
# compute (inference, or `torch.no_grad()`), it skips the Function and the workspace:
# 44 bytes per unit instead of 60. `fused_lstm_cell` has the signature of the LSTM
# lesson's `lstm_cell` and leaves the two matrix products to torch (cuBLAS on a GPU),
# as cuDNN and `nn.LSTMCell` do; keeping them as two products rather than one with
# `[x, h]` concatenated lets a sequence compute $x_t W_{ih}^\top$ for every step in one
# large product up front [@appleyard2016optimizing].


def fused_lstm_pointwise(
    input_gates: Tensor,
    hidden_gates: Tensor,
    c: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
    *,
    block_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """`lstm_pointwise` as one Triton kernel (and one for its backward); returns
    `(h_new, c_new)`."""
    check_pointwise(
        "fused_lstm_pointwise",
        input_gates,
        hidden_gates,
        c,
        bias_ih,
        bias_hh,
        block_size,
    )
    return run_pointwise(input_gates, hidden_gates, c, bias_ih, bias_hh, block_size)


def run_pointwise(input_gates, hidden_gates, c, bias_ih, bias_hh, block_size):
    """The checked inputs through the Function when a gradient is wanted, else through
    the forward kernel alone."""
    tensors = (input_gates, hidden_gates, c, bias_ih, bias_hh)
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in tensors
    ):
        return FusedLSTMPointwise.apply(*tensors, block_size)
    h_new, c_new, _ = lstm_forward(*tensors, save_gates=False, block_size=block_size)
    return h_new, c_new


def check_cell(
    function: str,
    x: Tensor,
    h: Tensor | None,
    weight_ih: Tensor,
    weight_hh: Tensor,
) -> int:
    """Check the matrix products' operands (`h` unless None) and return hidden:
    `weight_ih` sets hidden, input, dtype and device, `x` the batch."""
    if not isinstance(weight_ih, Tensor) or weight_ih.ndim != 2:
        raise ValueError(
            f"{function}: weight_ih must be a 2-D tensor [4*hidden, input], got "
            f"{getattr(weight_ih, 'shape', type(weight_ih).__name__)}"
        )
    four_hidden, input_size = weight_ih.shape
    if four_hidden % 4 or four_hidden == 0:
        raise ValueError(
            f"{function}: weight_ih must be [4*hidden, input] with hidden >= 1, got "
            f"{tuple(weight_ih.shape)}"
        )
    hidden = four_hidden // 4
    if not isinstance(x, Tensor) or x.ndim != 2:
        raise ValueError(
            f"{function}: x must be a 2-D tensor [batch, input], got "
            f"{getattr(x, 'shape', type(x).__name__)}"
        )
    batch = x.shape[0]
    for name, value, shape, layout in (
        ("weight_ih", weight_ih, (four_hidden, input_size), "[4*hidden, input]"),
        ("weight_hh", weight_hh, (four_hidden, hidden), "[4*hidden, hidden]"),
        ("x", x, (batch, input_size), "[batch, input]"),
        ("h", h, (batch, hidden), "[batch, hidden]"),
    ):
        if value is not None or name != "h":
            check_tensor(
                function, name, value, shape, layout, like=weight_ih, contiguous=False
            )
    return hidden


def fused_lstm_cell(
    x: Tensor,
    h: Tensor,
    c: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One LSTM step: `x` `[batch, input]`, `h`, `c` `[batch, hidden]`, `weight_ih`
    `[4*hidden, input]`, `weight_hh` `[4*hidden, hidden]`, biases `[4*hidden]`."""
    check_cell("fused_lstm_cell", x, h, weight_ih, weight_hh)
    input_gates = x @ weight_ih.T  # [batch, 4*hidden]
    hidden_gates = h @ weight_hh.T  # [batch, 4*hidden]
    check_pointwise(
        "fused_lstm_cell", input_gates, hidden_gates, c, bias_ih, bias_hh, None
    )
    return run_pointwise(input_gates, hidden_gates, c, bias_ih, bias_hh, None)


# Over a sequence, only $h_{t-1} W_{hh}^\top$ has to wait for the previous step.
# `fused_lstm_sequence` computes $x_t W_{ih}^\top$ for all steps in one product before
# the loop, the first optimisation of [@appleyard2016optimizing], and then runs one
# recurrent product and one fused kernel per step. It takes `nn.LSTM`'s layout,
# `[seq, batch, input]`, and its parameters, so the two can be compared directly.


def fused_lstm_sequence(
    xs: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
    hx: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """A one-layer LSTM over `xs` `[seq, batch, input]`; returns `nn.LSTM`'s
    `(outputs [seq, batch, hidden], (h, c))` without its leading layer axis."""
    name = "fused_lstm_sequence"
    if not isinstance(xs, Tensor) or xs.ndim != 3 or xs.shape[0] == 0:
        raise ValueError(
            f"{name}: xs must be a 3-D tensor [seq, batch, input] with seq >= 1, got "
            f"{getattr(xs, 'shape', type(xs).__name__)}"
        )
    hidden = check_cell(
        name, xs[0], None if hx is None else hx[0], weight_ih, weight_hh
    )
    if hx is None:
        zeros = xs.new_zeros(xs.shape[1], hidden)
        hx = (zeros, zeros)
    h, c = hx
    input_gates = xs @ weight_ih.T  # [seq, batch, 4*hidden], one product
    check_pointwise(name, input_gates[0], input_gates[0], c, bias_ih, bias_hh, None)
    outputs = []
    for step in range(xs.shape[0]):
        hidden_gates = h @ weight_hh.T  # [batch, 4*hidden]
        h, c = run_pointwise(input_gates[step], hidden_gates, c, bias_ih, bias_hh, None)
        outputs.append(h)
    return torch.stack(outputs), (h, c)


# `nn.LSTMCell` with its forward replaced: the same parameters under the same names, so
# a state dict saved from one loads into the other. Unlike `nn.LSTMCell` it takes
# batched input only.


class FusedLSTMCell(nn.LSTMCell):
    """An `nn.LSTMCell` whose pointwise tail runs in the fused Triton kernels."""

    def forward(
        self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        if hx is None:
            zeros = input.new_zeros(input.shape[0], self.hidden_size)
            hx = (zeros, zeros)
        h, c = hx
        return fused_lstm_cell(
            input, h, c, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh
        )


# ## Measuring on a GPU
#
# `gpu_report` times each version with `triton.testing.do_bench`, which runs a
# function for about 100 ms after a warm-up, clears the L2 cache before every run so
# that each one reads from memory, and here returns the median. Dividing the bytes
# counted above by the time gives the bandwidth each version achieves; dividing that
# by the peak gives the fraction of the machine it uses. Two ceilings are reported:
# the datasheet peak, from the memory clock and bus width
# (`triton.testing.get_dram_gbps`), and what a plain device-to-device copy of 1 GiB
# reaches, the practical roof for a streaming kernel. The competitors:
#
# - the eager tail, `lstm_pointwise`: 12 kernels forward, 15 backward;
# - our forward kernel writing the workspace, as training runs it;
# - ATen's fused CUDA kernel, `torch.ops.aten._thnn_fused_lstm_cell`, which
#   `nn.LSTMCell` calls on a GPU (`LSTMCell` in `aten/src/ATen/native/RNN.cpp`); it
#   always writes the workspace, so its forward moves our training forward's bytes;
# - whole steps with their matrix products: `fused_lstm_cell`, the LSTM lesson's
#   `lstm_cell` and `nn.LSTMCell`;
# - a sequence: `fused_lstm_sequence` against `nn.LSTM`, which runs cuDNN's RNN
#   kernels, its own fused pointwise kernel included.
#
# Byte-based columns are left out for the entries with matrix products, whose time is
# mostly the products'.
#
# What an H200 gave (PyTorch 2.11, Triton 3.6, float32, median µs; GB/s from the
# counted bytes; the datasheet peak read as 4,814 GB/s, a copy reached 4,229):
#
# | pass, implementation | batch 64, hidden 512 | batch 8192, hidden 1024 |
# | --- | --- | --- |
# | forward, fused Triton | 8.4 | 97 (3,791 GB/s, 79 %) |
# | forward, eager PyTorch | 62 | 536 (3,133 GB/s, 65 %) |
# | forward, ATen fused CUDA | 6.2 | 126 (4,003 GB/s, 83 %) |
# | forward+backward, fused Triton | 485 | 431 (2,489 GB/s, 52 %)¹ |
# | forward+backward, eager PyTorch | 691 | 1,022 (3,350 GB/s, 70 %) |
# | forward+backward, ATen fused CUDA | 198 | 282 (3,812 GB/s, 79 %) |
# | cell step with products, fused_lstm_cell | 134 | 2,872 |
# | cell step, nn.LSTMCell | 57 | 2,900 |
#
# ¹ A second run of `gpu_report()`, alone on the GPU (through `tools/gpu_check.sh`),
# gave 282 µs here (3,807 GB/s, 79 %), level with ATen's 282, and 97 µs for the
# forward.
#
# The large forward is where the roofline says it should be: ours moves 11 numbers per
# unit at 90 % of the copy's bandwidth, eager moves 50 at a similar rate and takes 5.5
# times as long, and ATen moves 15. The small sizes are bound by launches and Python,
# not memory: eager pays for 12 launches, we for one. Training shows the price of
# writing the backward in Python: at batch 64, where the GPU work is a few
# microseconds, our forward+backward still takes 485 µs against ATen's 198, so about
# 0.3 ms per step is spent on the CPU between and around the two launches, and at
# batch 8192 that wait still leaves the GPU idle for part of the step. With the
# products included, a step is the products' time: at batch 8192 each of the two
# $8192 \times 1024 \times 4096$ products is 69 GFLOP of float32 work, and the whole
# step takes 2.9 ms whoever does the tail. (That run timed `nn.LSTM` with cuDNN's
# default TF32 products, so its sequence rows are left out here; `gpu_report` now
# switches TF32 off for every entry.)


def gpu_report(
    batch: int = 8192,
    hidden: int = 1024,
    dtype: torch.dtype = torch.float32,
    steps: int = 16,
) -> dict[str, float]:
    """Times (µs), GB/s and fractions of peak bandwidth of the fused kernels and their
    competitors on the current CUDA device."""
    if not torch.cuda.is_available():
        raise RuntimeError("gpu_report needs a CUDA GPU: do_bench times CUDA events")
    if dtype not in DTYPES:
        raise TypeError(f"gpu_report: dtype must be one of {DTYPES}, got {dtype}")
    device = torch.device("cuda")
    generator = torch.Generator(device).manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype)

    gates = (
        randn(batch, 4 * hidden),
        randn(batch, 4 * hidden),
        randn(batch, hidden),
        randn(4 * hidden),
        randn(4 * hidden),
    )
    leaves = tuple(t.clone().requires_grad_() for t in gates)
    grads = (randn(batch, hidden), randn(batch, hidden))
    cell = nn.LSTMCell(hidden, hidden, device=device, dtype=dtype)
    lstm = nn.LSTM(hidden, hidden, device=device, dtype=dtype)
    x, h, c = randn(batch, hidden), randn(batch, hidden), gates[2]
    xs = randn(steps, batch, hidden)
    weights = (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    sequence_weights = (
        lstm.weight_ih_l0,
        lstm.weight_hh_l0,
        lstm.bias_ih_l0,
        lstm.bias_hh_l0,
    )
    aten_fused = torch.ops.aten._thnn_fused_lstm_cell

    def training(fn):
        def step():
            h_new, c_new = fn(*leaves)[:2]
            torch.autograd.grad((h_new, c_new), leaves, grads)

        return step

    def inference(fn, *args):
        def step():
            with torch.no_grad():
                fn(*args)

        return step

    unfused = unfused_traffic(batch, hidden, dtype)
    fused = fused_traffic(batch, hidden, dtype)
    fused_training = fused["forward bytes"] + fused["backward bytes"]
    unfused_training = unfused["forward bytes"] + unfused["backward bytes"]
    entries = {  # name: (function, bytes it moves, repetitions it stands for)
        "forward, fused Triton": (
            inference(fused_lstm_pointwise, *gates),
            fused["inference bytes"],
            1,
        ),
        "forward keeping the gates, fused Triton": (
            inference(lstm_forward, *gates, True),
            fused["forward bytes"],
            1,
        ),
        "forward, eager PyTorch": (
            inference(lstm_pointwise, *gates),
            unfused["forward bytes"],
            1,
        ),
        "forward, ATen fused CUDA": (
            inference(aten_fused, *gates),
            fused["forward bytes"],
            1,
        ),
        "forward+backward, fused Triton": (
            training(fused_lstm_pointwise),
            fused_training,
            1,
        ),
        "forward+backward, eager PyTorch": (
            training(lstm_pointwise),
            unfused_training,
            1,
        ),
        "forward+backward, ATen fused CUDA": (
            training(aten_fused),
            fused_training,
            1,
        ),
        "cell step, fused_lstm_cell": (
            inference(fused_lstm_cell, x, h, c, *weights),
            None,
            1,
        ),
        "cell step, lstm_cell (eager)": (
            inference(lstm_cell, x, h, c, *weights),
            None,
            1,
        ),
        "cell step, nn.LSTMCell": (inference(cell, x, (h, c)), None, 1),
        "sequence step, fused_lstm_sequence": (
            inference(fused_lstm_sequence, xs, *sequence_weights),
            None,
            steps,
        ),
        "sequence step, nn.LSTM (cuDNN)": (inference(lstm, xs), None, steps),
    }
    source = torch.empty(2**28, device=device)  # 1 GiB of float32
    target = torch.empty_like(source)
    copy_ms = triton.testing.do_bench(
        lambda: target.copy_(source), return_mode="median"
    )
    report = {
        "batch": batch,
        "hidden": hidden,
        "peak GB/s": triton.testing.get_dram_gbps(),
        "copy GB/s": 2 * source.nbytes / copy_ms / 1e6,
    }
    # cuDNN would compute nn.LSTM's float32 products in TF32 (a 10-bit mantissa) by
    # default; switched off, every version does the same full-precision arithmetic.
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        for name, (function, moved, repetitions) in entries.items():
            ms = triton.testing.do_bench(function, return_mode="median") / repetitions
            report[f"{name} µs"] = ms * 1e3
            if moved is not None:
                report[f"{name} GB/s"] = moved / ms / 1e6
                report[f"{name} of peak"] = moved / ms / 1e6 / report["peak GB/s"]
    return report


# ## The example
#
# One cell step on odd sizes: a batch of 3, 10 inputs, 12 hidden units. The dataflow
# diagram above is declared by `dataflow` below, not traced: `torch.fx` cannot look
# inside a Triton kernel, and the point of the picture is which tensors cross memory
# between the two matrix products and the one kernel, with their shapes.


def example():
    """A small example: `fn(*args)` is one step of the fused cell, batch 3, hidden
    12."""
    generator = torch.Generator().manual_seed(0)
    batch, input_size, hidden = 3, 10, 12

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    args = (
        randn(batch, input_size),
        randn(batch, hidden),
        randn(batch, hidden),
        randn(4 * hidden, input_size) / input_size**0.5,
        randn(4 * hidden, hidden) / hidden**0.5,
        randn(4 * hidden) * 0.1,
        randn(4 * hidden) * 0.1,
    )
    return fused_lstm_cell, args


def dataflow(output: tuple[Tensor, Tensor]):
    """The step's tensors, the two products and the one fused kernel, with shapes."""
    batch, hidden = output[0].shape
    _, (x, *_) = example()
    state, gates = f"[{batch}, {hidden}]", f"[{batch}, {4 * hidden}]"
    nodes = [
        ("x", "x"),
        ("h", "h"),
        ("c", "c"),
        ("biases", "b_ih, b_hh"),
        ("gemm_ih", "x W_ihᵀ (cuBLAS)"),
        ("gemm_hh", "h W_hhᵀ (cuBLAS)"),
        ("kernel", "lstm_forward_kernel\n(Triton, one launch)"),
        ("h_new", "h'"),
        ("c_new", "c'"),
        ("workspace", "i, f, g, o\n(written when training)"),
    ]
    edges = [
        ("x", "gemm_ih", f"[{batch}, {x.shape[1]}]"),
        ("h", "gemm_hh", state),
        ("gemm_ih", "kernel", gates),
        ("gemm_hh", "kernel", gates),
        ("c", "kernel", state),
        ("biases", "kernel", f"2 × [{4 * hidden}]"),
        ("kernel", "h_new", state),
        ("kernel", "c_new", state),
        ("kernel", "workspace", gates),
    ]
    return nodes, edges


# ## The demo
#
# On a CPU the kernels run in the interpreter, so the demo stays small. It checks one
# step against the LSTM lesson's cell and `nn.LSTMCell` in float64, values and every
# gradient, on the example's odd sizes (36 elements in a block of 64, 28 lanes masked
# off); it counts the bytes of both tails at a GPU-sized step and draws them; and it
# trains the same model twice on the *adding problem* [@hochreiter1997long], once
# through `fused_lstm_sequence` and once through `nn.LSTM`, from the same weights on
# the same batches. Each input
# step carries a number in $[0, 1)$ and a marker; exactly two steps are marked, one in
# each half, and the target is the sum of their numbers. Predicting the mean, 1, scores
# the target's variance, $2 \cdot \tfrac{1}{12} \approx 0.167$: a loss far below that
# needs the cell to remember. With the defaults both runs reach about 0.005, and on a
# CPU their losses agree to about $10^{-7}$ at every step, the rounding of float32
# products summed in different orders. With `--device cuda` it also prints
# `gpu_report` for the sizes in `--report-sizes`.


def adding_problem(
    batch: int, length: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Inputs `[length, batch, 2]` (value, marker) and targets `[batch, 1]`."""
    values = torch.rand(length, batch, generator=generator)
    half = length // 2
    first = torch.randint(0, half, (batch,), generator=generator)
    second = torch.randint(half, length, (batch,), generator=generator)
    markers = torch.zeros(length, batch)
    markers[first, torch.arange(batch)] = 1.0
    markers[second, torch.arange(batch)] = 1.0
    targets = (values * markers).sum(0).unsqueeze(1)  # [batch, 1]
    return torch.stack([values, markers], dim=2), targets


class AddingModel(nn.Module):
    """An LSTM and a linear read-out of its last hidden state; `fused` picks the
    kernels."""

    def __init__(self, hidden: int, fused: bool):
        super().__init__()
        self.lstm = nn.LSTM(2, hidden)
        self.head = nn.Linear(hidden, 1)
        self.fused = fused

    def forward(self, xs: Tensor) -> Tensor:
        if self.fused:
            lstm = self.lstm
            _, (h, _) = fused_lstm_sequence(
                xs,
                lstm.weight_ih_l0,
                lstm.weight_hh_l0,
                lstm.bias_ih_l0,
                lstm.bias_hh_l0,
            )
        else:
            _, (h, _) = self.lstm(xs)
            h = h[0]  # drop nn.LSTM's layer axis
        return self.head(h)  # [batch, 1]


def train(
    model: AddingModel,
    steps: int,
    batch: int,
    length: int,
    lr: float,
    seed: int,
    device: str,
) -> list[float]:
    """Adam on fresh adding-problem batches; the loss of every step."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    label = "fused" if model.fused else "nn.LSTM"
    for _ in tqdm(range(steps), desc=f"training ({label})", leave=False):
        xs, targets = adding_problem(batch, length, generator)
        loss = nn.functional.mse_loss(model(xs.to(device)), targets.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def check_step(device: str) -> dict[str, float]:
    """Largest differences of one float64 step and its gradients from `lstm_cell` and
    `nn.LSTMCell`."""
    _, args = example()
    batch, hidden = args[1].shape
    inputs = [t.to(device, torch.float64).requires_grad_() for t in args]
    reference = nn.LSTMCell(args[0].shape[1], hidden, device=device)
    with torch.no_grad():
        for parameter, value in zip(reference.parameters(), inputs[3:]):
            parameter.copy_(value)
    reference.double()
    generator = torch.Generator().manual_seed(1)
    weight = [
        torch.randn(batch, hidden, generator=generator, dtype=torch.float64).to(device)
        for _ in range(2)
    ]

    def values_and_grads(fn, params):
        outputs = fn()
        return [*outputs, *torch.autograd.grad(outputs, params, weight)]

    ours = values_and_grads(lambda: fused_lstm_cell(*inputs), inputs)
    lesson = values_and_grads(lambda: lstm_cell(*inputs), inputs)
    module = values_and_grads(
        lambda: reference(inputs[0], (inputs[1], inputs[2])),
        [inputs[0], inputs[1], inputs[2], *reference.parameters()],
    )
    return {
        "vs lstm_cell": max((a - b).abs().max().item() for a, b in zip(ours, lesson)),
        "vs nn.LSTMCell": max((a - b).abs().max().item() for a, b in zip(ours, module)),
    }


def plot_traffic(unfused: dict, fused: dict, batch: int, hidden: int, out: Path):
    fig, axes = figure(panels=2)
    units = batch * hidden
    names = ["forward\n(inference)", "forward\n(training)", "backward"]
    eager = [
        unfused["forward bytes"],
        unfused["forward bytes"],
        unfused["backward bytes"],
    ]
    ours = [fused["inference bytes"], fused["forward bytes"], fused["backward bytes"]]
    positions = torch.arange(3, dtype=torch.float64)
    axes[0].bar(positions - 0.2, [b / units for b in eager], 0.4, label="eager")
    axes[0].bar(positions + 0.2, [b / units for b in ours], 0.4, label="fused")
    for position, eager_bytes, fused_bytes in zip(positions.tolist(), eager, ours):
        axes[0].annotate(
            f"{eager_bytes / units:.0f}",
            (position - 0.2, eager_bytes / units),
            ha="center",
            va="bottom",
        )
        axes[0].annotate(
            f"{fused_bytes / units:.0f}",
            (position + 0.2, fused_bytes / units),
            ha="center",
            va="bottom",
        )
    axes[0].set_xticks(positions.tolist(), names)
    axes[0].set(title="bytes moved, counted", ylabel="bytes per unit and row (float32)")
    axes[0].set_ylim(0, 1.3 * max(eager) / units)
    axes[0].legend(loc="upper center", ncols=2)
    kernels = [
        (unfused["forward kernels"], fused["forward kernels"]),
        (unfused["backward kernels"], fused["backward kernels"]),
    ]
    positions = torch.arange(2, dtype=torch.float64)
    axes[1].bar(positions - 0.2, [k[0] for k in kernels], 0.4, label="eager")
    axes[1].bar(positions + 0.2, [k[1] for k in kernels], 0.4, label="fused")
    axes[1].set_xticks(positions.tolist(), ["forward", "backward"])
    for position, (eager_kernels, fused_kernels) in zip(positions.tolist(), kernels):
        axes[1].annotate(
            str(eager_kernels),
            (position - 0.2, eager_kernels),
            ha="center",
            va="bottom",
        )
        axes[1].annotate(
            str(fused_kernels),
            (position + 0.2, fused_kernels),
            ha="center",
            va="bottom",
        )
    axes[1].yaxis.get_major_locator().set_params(integer=True)
    axes[1].set(title="kernels launched, counted", ylabel="kernels per step")
    axes[1].set_ylim(0, 1.3 * max(k[0] for k in kernels))
    axes[1].legend(loc="upper center", ncols=2)
    save(
        fig,
        out / "traffic.png",
        caption="A count, not a measurement: the bytes each version of the LSTM "
        f"cell's pointwise tail reads and writes per hidden unit and batch row "
        f"(float32, batch {batch}, hidden {hidden}; eager counted on PyTorch's "
        "dispatcher, fused from the kernels' arguments), and the kernels each "
        "launches per step.",
    )


def plot_training(fused: list[float], reference: list[float], out: Path):
    fig, axes = figure(panels=2)
    axes[0].plot(reference, label="nn.LSTM", linewidth=3, alpha=0.4)
    axes[0].plot(fused, label="fused kernels", linewidth=1)
    axes[0].axhline(1 / 6, color="grey", linestyle=":", label="predict the mean")
    axes[0].set(yscale="log", xlabel="step $k$", ylabel="mean squared error")
    axes[0].set_title("adding problem")
    axes[0].legend()
    gaps = [(step, abs(a - b)) for step, (a, b) in enumerate(zip(fused, reference))]
    differing = [(step, gap) for step, gap in gaps if gap > 0]
    axes[1].plot(*zip(*differing), ".")
    axes[1].set(yscale="log", xlabel="step $k$", ylabel="|loss difference|")
    axes[1].set_title("fused minus nn.LSTM")
    save(
        fig,
        out / "training.png",
        caption="Left: training loss on the adding problem of the same model "
        "through the fused Triton kernels and through nn.LSTM, from the same weights "
        "on the same batches. Right: the absolute difference of the two losses at "
        f"each step; at {len(gaps) - len(differing)} of the {len(gaps)} steps the "
        "two losses are equal to the last bit and no point is drawn.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description="A fused LSTM-cell kernel in Triton: check it, count its bytes, "
        "train with it, and on a GPU time it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--steps", type=integer(at_least=1), default=200, help="training steps"
    )
    parser.add_argument(
        "--length", type=integer(at_least=1), default=6, help="adding-problem length"
    )
    parser.add_argument(
        "--hidden", type=integer(at_least=1), default=32, help="hidden units"
    )
    parser.add_argument(
        "--batch-size", type=integer(at_least=1), default=32, help="batch size"
    )
    parser.add_argument(
        "--lr", type=number(above=0), default=0.03, help="Adam's learning rate"
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--count-size",
        default="256x1024",
        help="BATCHxHIDDEN of the step whose bytes are counted",
    )
    parser.add_argument(
        "--report-sizes",
        nargs="+",
        default=["64x512", "8192x1024"],
        help="BATCHxHIDDEN sizes gpu_report measures (GPU only)",
    )
    parser.add_argument(
        "--threads",
        type=integer(at_least=1),
        default=1,
        help="CPU threads for torch (small tensors)",
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (cpu runs the kernels in Triton's interpreter)",
    )
    parser.add_argument("--out", default="out/fused_lstm", help="folder for figures")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    metrics = {}

    errors = check_step(args.device)
    for name, error in errors.items():
        print(f"one float64 step, values and gradients, {name}: {error:.1e}")
        metrics[f"max error {name}"] = error

    batch, hidden = (int(n) for n in args.count_size.split("x"))
    unfused, fused = unfused_traffic(batch, hidden), fused_traffic(batch, hidden)
    units = batch * hidden
    print(f"bytes per hidden unit and batch row, float32, batch {batch}:")
    for label, eager, ours in (
        ("forward (inference)", unfused["forward bytes"], fused["inference bytes"]),
        ("forward (training)", unfused["forward bytes"], fused["forward bytes"]),
        ("backward", unfused["backward bytes"], fused["backward bytes"]),
    ):
        print(
            f"  {label:20s} eager {eager / units:6.1f}  fused {ours / units:5.1f}"
            f"  ({eager / ours:.1f}× fewer)"
        )
        metrics[f"bytes ratio {label}"] = eager / ours
    plot_traffic(unfused, fused, batch, hidden, out)

    torch.manual_seed(args.seed)
    model = AddingModel(args.hidden, fused=True).to(args.device)
    twin = copy.deepcopy(model)
    twin.fused = False
    settings = (args.steps, args.batch_size, args.length, args.lr, args.seed)
    # On a GPU, nn.LSTM's cuDNN kernels would multiply in TF32 by default, and that
    # alone would part the two runs by about 1e-4; the comparison wants float32 in both.
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        fused_losses = train(model, *settings, args.device)
        reference_losses = train(twin, *settings, args.device)
    final = sum(fused_losses[-10:]) / len(fused_losses[-10:])
    gap = max(abs(a - b) for a, b in zip(fused_losses, reference_losses))
    print(f"adding problem, mean loss of the last 10 steps: {final:.4f} (mean: 0.167)")
    print(f"largest loss difference, fused vs nn.LSTM: {gap:.1e}")
    metrics["final loss"] = final
    metrics["loss gap"] = gap
    plot_training(fused_losses, reference_losses, out)

    if args.device.startswith("cuda"):
        for size in args.report_sizes:
            batch, hidden = (int(n) for n in size.split("x"))
            report = gpu_report(batch, hidden)
            print(
                f"\n{torch.cuda.get_device_name()}, batch {batch}, hidden {hidden}: "
                f"peak {report['peak GB/s']:.0f} GB/s, copy {report['copy GB/s']:.0f}"
            )
            for name, value in report.items():
                if name.endswith(" µs"):
                    entry = name[: -len(" µs")]
                    line = f"  {entry:41s} {value:9.1f} µs"
                    if f"{entry} GB/s" in report:
                        line += (
                            f" {report[f'{entry} GB/s']:7.0f} GB/s"
                            f" {report[f'{entry} of peak']:6.1%} of peak"
                        )
                    print(line)
            metrics.update({f"gpu {size}/{k}": v for k, v in report.items()})
    return metrics


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Give `lstm_forward_kernel` an autotuning decorator over `BLOCK` and `num_warps`
#    and run `gpu_report` at batch 64 and at batch 8192. Which configuration wins at
#    each size, and why does a small batch want a smaller block?
# 2. Fold the bias sum into the backward kernel: each program adds its rows' gradient
#    into the bias gradient with `tl.atomic_add`. Count the bytes saved, and explain
#    why the result is no longer bitwise reproducible.
# 3. Find the 0.3 ms that a training step of the tail costs beyond ATen's at batch 64
#    with `torch.profiler`, then capture the whole step in a CUDA graph
#    (`torch.cuda.graphs`) and run `gpu_report`'s training entries again. What is left
#    of the gap?
# 4. Write the GRU's fused kernel the same way (`gru_cell_forward` in ATen's `RNN.cu`
#    is the model) and check it against `nn.GRUCell`.
