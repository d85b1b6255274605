r"""
---
title: A fused, chunked cross-entropy kernel in Triton
summary: >-
  The language-model loss as two Triton kernels that walk the vocabulary in chunks with
  an online log-sum-exp, so that no float32 copy of the logits or their softmax is ever
  made: checked against F.cross_entropy with ignore_index and label smoothing, its
  memory counted and measured against eager PyTorch, and timed on a GPU.
time: 10 s
references:
  - key: milakov2018online
    authors: [Maxim Milakov, Natalia Gimelshein]
    title: Online normalizer calculation for softmax
    year: 2018
    venue: arXiv preprint
    arxiv: "1805.02867"
  - key: szegedy2016rethinking
    authors:
      - Christian Szegedy
      - Vincent Vanhoucke
      - Sergey Ioffe
      - Jonathon Shlens
      - Zbigniew Wojna
    title: Rethinking the Inception Architecture for Computer Vision
    year: 2016
    venue: CVPR 2016
    arxiv: "1512.00567"
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
  - key: hsu2024liger
    authors: [Pin-Lun Hsu, Yun Dai, Vignesh Kothapalli, Qingquan Song, et al.]
    title: "Liger Kernel: Efficient Triton Kernels for LLM Training"
    year: 2024
    venue: arXiv preprint
    arxiv: "2410.10989"
  - key: wijmans2024cut
    authors: [Erik Wijmans, Brody Huval, Alexander Hertzberg, Vladlen Koltun, Philipp
      Krähenbühl]
    title: "Cut Your Losses in Large-Vocabulary Language Models"
    year: 2024
    venue: arXiv preprint (ICLR 2025)
    arxiv: "2411.09009"
worksheet:
  - region: cross_entropy_forward_kernel
    hint: >-
      One program per row (index widened to 64 bits): walk the row in chunks of
      BLOCK columns (past vocab read -inf), keeping a running maximum and the sum of
      exp(z - maximum), rescaled by exp(old - new) whenever the maximum grows, and,
      if HAS_SMOOTHING, the plain sum of the logits. lse = maximum + log(sum); the
      loss is lse minus the target's logit (mixed with the mean logit when
      smoothing). Store lse, and the loss, or 0 for an ignored row.
    tests:
      - test_no_grad_runs_the_forward_kernel_alone
      - test_label_smoothing_matches_torch_in_float64
      - test_extreme_logits_stay_finite_and_exact
  - region: cross_entropy_backward_kernel
    hint: >-
      One program per row: load its target, saved lse and row scale, then walk the
      row in chunks, storing (exp(z - lse) - smoothing / vocab, less another
      1 - smoothing at the target's column) times the scale, in the gradient's dtype.
    tests:
      - test_gradient_is_softmax_minus_one_hot_scaled_by_the_incoming_gradient
      - test_passes_gradcheck
---

A language model ends in a matrix product that turns each token's hidden state into one
score, a *logit*, for every word of its vocabulary, and its loss is the cross-entropy of
those scores against the next token. Vocabularies have grown from GPT-2's 50,257 to
Llama 3's 128,256 and Gemma's 256,000, so at 8,192 tokens a step (a batch of 8 sequences
of 1,024) the logits are a `[8192, 128256]` matrix: 1.05 billion numbers, 2.1 GB in
bfloat16, more than any other activation of a model of a few billion parameters.

The usual loss makes it worse. `F.cross_entropy(logits.float(), targets)` first copies
the logits to float32 (4.2 GB), because a 16-bit log-softmax over a hundred thousand
words rounds the small probabilities away; it then writes the log-probabilities (4.2 GB
more), keeps them until the backward pass, and there makes two more float32 tensors of
the same size. Measured on the CPU's allocator below, the loss's forward and backward
hold **12 bytes per logit** at their peak, 12.6 GB at this size, for a result that is
one number per token.

This chapter writes the loss as two Triton kernels [@tillet2019triton]. The forward
kernel gives each token one program, which walks its row of logits in chunks and keeps
a running maximum and a running sum, the *online* log-sum-exp [@milakov2018online], so
it reads every logit once, in its own 16-bit type, and writes two numbers per token. The
backward kernel walks the row again and writes the gradient, softmax minus one-hot,
straight into a tensor of the logits' type. The peak falls from 12 to 2 bytes per
logit, the gradient itself; and the memory traffic, which is what the loss's time is
made of, from about 36 bytes per logit to 6. The loss supports what training scripts
use: `ignore_index` for padding, mean or sum, and label smoothing
[@szegedy2016rethinking]. Liger Kernel [@hsu2024liger] ships the same idea; Cut Your
Losses [@wijmans2024cut] goes further and fuses the final matrix product too, so the
logits never exist at all (an exercise below).
"""

import argparse
import gc
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from tqdm import tqdm

from annotated.cnn.memory import peak_memory
from annotated.data import integer, number, torch_device
from annotated.figures import figure, save

# Triton compiles a kernel for the GPU when it is first launched. Without a GPU it can
# run the same kernel in its *interpreter*, which executes each program with NumPy on
# the CPU: slow, but exact enough to test against PyTorch. The switch is the variable
# `TRITON_INTERPRET`, and Triton reads it while it is being imported, so it has to be
# set before `import triton`, and only when there is no GPU to compile for.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

# ## The loss and its gradient
#
# For one token with logits $z \in \mathbb{R}^V$ and target word $t$, the softmax
# $p_j = e^{z_j} / \sum_k e^{z_k}$ gives the model's probabilities, and the
# cross-entropy is the negative log-probability of the target. Written with the row's
# *log-sum-exp* $\ell = \log \sum_k e^{z_k}$, it is one subtraction:
#
# $$
# \mathcal{L} = -\log p_t = \ell - z_t .
# $$
#
# Label smoothing [@szegedy2016rethinking] trains against a target distribution that
# puts $1 - \varepsilon$ on $t$ and spreads $\varepsilon$ evenly over all $V$ words,
# $q_j = (1 - \varepsilon)\,[j = t] + \varepsilon / V$. Since $\sum_j q_j = 1$,
#
# $$
# \begin{aligned}
# \mathcal{L} &= -\textstyle\sum_j q_j \log p_j \\
#   &= \ell - (1 - \varepsilon)\, z_t
#      - \tfrac{\varepsilon}{V} \textstyle\sum_j z_j ,
# \end{aligned}
# $$
#
# so besides $\ell$ and $z_t$ the kernel needs only the row's plain sum. The gradient
# is the famous collapse of softmax and cross-entropy into one subtraction, derived in
# [backpropagation by hand](../foundations/backprop_by_hand.md):
#
# $$
# \frac{\partial \mathcal{L}}{\partial z_j} = p_j - q_j
#   = e^{z_j - \ell} - q_j .
# $$
#
# Given $\ell$, every entry of the gradient is one exponential of one logit: no other
# entry of the row is needed. A batch of $N$ tokens averages the losses over the tokens
# whose target is not `ignore_index` (padding, or a prompt that should not be trained
# on), so each counted row's gradient is scaled by $\bar{\mathcal{L}} / N_\text{valid}$,
# with $\bar{\mathcal{L}}$ the gradient arriving from above, and an ignored row's is
# zero. When every row is ignored, the mean is $0/0$: PyTorch returns `nan` and a zero
# gradient, and so does this kernel.
#
# ## The loss in plain PyTorch
#
# The reference, and the code a training script writes: the same call as the
# `lm_loss` of [the memory-analysis lesson](../transformers/memory_analysis.md), which
# upcasts 16-bit logits for the reason above. `logits.float()` of float32 logits is the
# tensor itself, and of float64 ones a rounding we do not want, so the cast goes to the
# wider of the two types.


def eager_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """Cross-entropy of `logits` `[tokens, vocab]` against `targets` `[tokens]`, in
    float32 (float64 for float64 logits)."""
    wide = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(
        wide,
        targets,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        reduction=reduction,
    )


# ## Where the memory goes
#
# Follow `eager_cross_entropy` on bfloat16 logits, with $NV$ logits in all. The forward
# pass makes the float32 copy ($4NV$ bytes) and from it the log-probabilities
# ($4NV$): 8 bytes per logit at its peak. The copy is then freed, but autograd keeps the
# log-probabilities for the backward pass, 4 bytes per logit, through the whole rest of
# the forward and backward passes of the model. The backward pass of `nll_loss` writes
# a dense float32 gradient that is zero except at the targets ($4NV$), the backward of
# `log_softmax` turns it into the logits' gradient in float32 ($4NV$), and only then is
# that cast to bfloat16 ($2NV$): with the saved log-probabilities, 12 bytes per logit at
# the peak. `peak_memory` from [the memory lesson](../cnn/memory.md) reads exactly that
# off PyTorch's CPU allocator, as the demo shows.
#
# The fused loss keeps, from forward to backward, one float32 number per token (its
# $\ell$), a one-byte mask of the counted rows, and a reference to the logits, which it
# reads again. It allocates the per-token losses, a per-token scale, and the gradient,
# in the logits' own type: 2 bytes per logit in bfloat16, and nothing else of size
# $NV$. At 8,192 tokens and 128,256 words that is 2.1 GB at the peak against 12.6 GB.
#
# Keeping the logits is not free either: in a language model the logits come from a
# matrix product whose backward needs its input and weight, not its output, so eager
# PyTorch could free the 16-bit logits after the loss (it keeps its 32-bit
# log-probabilities instead, twice their size). Only a loss that never needs the logits
# again, because it is fused with the product that makes them [@wijmans2024cut], holds
# less than they do.


def memory_count(
    tokens: int, vocab: int, dtype: torch.dtype = torch.bfloat16
) -> dict[str, int]:
    """Bytes of size `tokens x vocab` (and per token) each loss allocates or keeps, on
    `dtype` logits; counted as the prose above lists them."""
    logits = tokens * vocab
    wide = max(dtype.itemsize, 4)  # the float32 (or float64) working type
    copy = 0 if dtype.itemsize == wide else wide * logits  # logits.float()
    return {
        "eager held": wide * logits,  # log-probabilities, saved for backward
        # forward: the copy and the log-probabilities; backward: the saved
        # log-probabilities, nll_loss's gradient and log_softmax's gradient
        "eager peak": max(copy + wide * logits, 3 * wide * logits),
        # the log-sum-exp and a one-byte mask of counted rows (and the logits, kept)
        "fused held": (wide + 1) * tokens,
        # the gradient, and per token the losses, the log-sum-exp, the mask, the row
        # scale and its temporaries: about 16 bytes
        "fused peak": dtype.itemsize * logits + 16 * tokens,
    }


# ## Where the time goes
#
# The arithmetic per logit is a handful of operations: a maximum, an exponential, two
# additions forward, an exponential, a subtraction and a multiplication backward. An
# H200 does tens of TFLOP/s of float32 arithmetic and moves 4.8 TB/s, so anything under
# about ten operations per byte is limited by memory, not arithmetic, by the roofline
# argument [@williams2009roofline]: the loss's time is the bytes it moves divided by the
# bandwidth. A kernel that streams memory reaches 80–90 % of the datasheet bandwidth; a
# plain device-to-device copy measures that ceiling, and `gpu_report` below measures
# both.
#
# Counted per logit, in bfloat16, with each kernel reading its inputs once (a lower
# bound for eager PyTorch, whose log-softmax may read its input twice):
#
# | kernels | forward | backward |
# | --- | --- | --- |
# | eager: `.float()`, `log_softmax` | 2 + 4, 4 + 4 | |
# | eager: `nll_loss`, `log_softmax`, cast | | 4, 4 + 4 + 4, 4 + 2 |
# | fused: forward kernel | 2 | |
# | fused: backward kernel | | 2 + 2 |
#
# Eager moves 14 + 22 = 36 bytes per logit and the fused kernels 6: at the ceiling's
# rate the fused loss should be about six times faster, and its forward alone seven.
# The fused loss reads the logits twice; eager reads them once, then writes and reads
# four float32 tensors of their size. Reading the logits fewer than twice would need a
# whole row on the chip: the gradient of every logit needs $\ell$, which needs every
# logit of its row, and a row of 128,256 bfloat16 logits is 256 KB, more than the 228
# KB of shared memory an H100 or H200 multiprocessor has.
#
# ## The forward kernel
#
# One program per token: `tl.program_id(0)` is its row. The program walks the row in
# chunks of `BLOCK` columns, loads each chunk into registers, converts it to the
# working type `ACC` (float32, or float64 for float64 logits), and updates three
# numbers: the largest logit so far $m$, the sum $s = \sum e^{z_j - m}$ against that
# maximum, and, with label smoothing, the plain sum of the logits. When a chunk raises
# the maximum, the sum so far is rescaled by $e^{m_\text{old} - m_\text{new}}$, exactly
# the online softmax of [the FlashAttention lesson](../transformers/flash_attention.md);
# every exponent is $\le 0$, so logits of $10^4$ cannot overflow. After the last chunk,
# $\ell = m + \log s$. The columns past the end of the row, in the last chunk when $V$
# is not a multiple of `BLOCK`, load as $-\infty$ and add $e^{-\infty} = 0$.
#
# The target's logit is one more load at column $t$, skipped for an ignored row (whose
# target, $-100$, is not a column). The program writes $\ell$, for the backward pass,
# and its row's loss, zero if ignored. The row's starting address is
# `row * row_stride`: at 16,384 tokens of 150,000 words that is past $2^{31}$, so the
# row index is widened to 64 bits first; 32 bits would wrap around and read another
# row's logits without a word.


@triton.jit
def cross_entropy_forward_kernel(
    logits_ptr,  # [tokens, vocab], rows row_stride apart
    targets_ptr,  # [tokens]
    losses_ptr,  # [tokens], written
    lse_ptr,  # [tokens], written: the log-sum-exp of each row
    row_stride,
    vocab,
    ignore_index,
    smoothing,  # label smoothing epsilon
    HAS_SMOOTHING: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_logits = logits_ptr + row * row_stride
    target = tl.load(targets_ptr + row)
    running_max = tl.full([], float("-inf"), ACC)
    running_sum = tl.zeros([], ACC)  # sum of exp(z - running_max)
    logit_sum = tl.zeros([], ACC)  # sum of z, for label smoothing
    for start in range(0, vocab, BLOCK):
        columns = start + tl.arange(0, BLOCK)  # [BLOCK]
        inside = columns < vocab
        z = tl.load(row_logits + columns, mask=inside, other=float("-inf")).to(ACC)
        new_max = tl.maximum(running_max, tl.max(z, axis=0))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(
            tl.exp(z - new_max), axis=0
        )
        running_max = new_max
        if HAS_SMOOTHING:  # a constexpr: compiled in or out
            logit_sum += tl.sum(tl.where(inside, z, 0.0), axis=0)
    lse = running_max + tl.log(running_sum)
    counted = target != ignore_index
    target_logit = tl.load(row_logits + target, mask=counted, other=0.0).to(ACC)
    loss = lse - target_logit
    if HAS_SMOOTHING:
        loss = lse - (1 - smoothing) * target_logit - smoothing / vocab * logit_sum
    tl.store(lse_ptr + row, lse)
    tl.store(losses_ptr + row, tl.where(counted, loss, 0.0))


# ## The backward kernel
#
# The second pass over the row: each chunk of logits comes in again, becomes
# $p_j = e^{z_j - \ell}$ with the saved $\ell$, loses $q_j$ (the target's column, found
# by comparing column indices with $t$, loses $1 - \varepsilon$, every column
# $\varepsilon / V$), is multiplied by the row's scale and stored in the gradient's
# type. The scale is $\bar{\mathcal{L}} / N_\text{valid}$ for a counted row and 0 for an
# ignored one, computed once per row before the launch, so that one kernel serves the
# mean, the sum and per-token losses.
#
# The gradient goes to a new tensor. Liger Kernel and Unsloth instead compute it in the
# *forward* kernel, right after $\ell$, and write it over the logits in place
# [@hsu2024liger]; the backward pass then only multiplies by $\bar{\mathcal{L}}$, and
# skips even that when it is 1. That saves the gradient's buffer, one logits-sized
# tensor (2.1 GB above), at the same traffic. It costs three things: the logits are
# gone after the loss, so anything else that reads them (an accuracy, a second loss, a
# logging hook) silently reads the gradient; the gradient is computed even when no
# backward pass follows; and a $\bar{\mathcal{L}} \ne 1$ (loss scaling, accumulation)
# costs an extra pass over the whole buffer. We choose the second pass and an intact
# `logits`: the function behaves like any other PyTorch operator. Doing it Liger's way
# is an exercise.


@triton.jit
def cross_entropy_backward_kernel(
    logits_ptr,  # [tokens, vocab], rows row_stride apart
    targets_ptr,  # [tokens]
    lse_ptr,  # [tokens]
    row_scale_ptr,  # [tokens]: grad_loss / n_valid, or 0 for an ignored row
    grad_ptr,  # [tokens, vocab], contiguous, written
    row_stride,
    vocab,
    smoothing,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_logits = logits_ptr + row * row_stride
    row_grad = grad_ptr + row * vocab
    target = tl.load(targets_ptr + row)
    lse = tl.load(lse_ptr + row)
    scale = tl.load(row_scale_ptr + row)
    for start in range(0, vocab, BLOCK):
        columns = start + tl.arange(0, BLOCK)  # [BLOCK]
        inside = columns < vocab
        z = tl.load(row_logits + columns, mask=inside, other=0.0).to(ACC)
        grad = tl.exp(z - lse) - smoothing / vocab  # p - q off the target
        grad = tl.where(columns == target, grad - (1 - smoothing), grad)
        tl.store(
            row_grad + columns,
            (grad * scale).to(grad_ptr.dtype.element_ty),
            mask=inside,
        )


# ## Launching
#
# The grid is one program per token. The chunk is the whole row rounded up to a power
# of two, up to 4,096 columns: a Llama 3 row takes 32 chunks. With eight warps (256
# threads) a chunk is 16 values per thread, few enough to stay in registers. One
# program per token is plenty of parallel work at 8,192 tokens, and too little when
# a step has a few dozen tokens and a big vocabulary (an exercise). Label smoothing
# reaches the kernels as a float32 scalar, as every Python float does in Triton, so in
# float64 the smoothing terms are exact to about $10^{-9}$, not $10^{-16}$.


def launch_config(vocab: int, block_size: int | None) -> tuple[int, int]:
    """The chunk size (a power of two up to 4096 unless given) and the warps per
    program."""
    block = block_size or min(4096, triton.next_power_of_2(vocab))
    return block, 8 if block >= 2048 else 4


def accumulator(dtype: torch.dtype):
    """The Triton type the kernels compute in for logits of `dtype`."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def cross_entropy_forward(
    logits: Tensor,
    targets: Tensor,
    ignore_index: int,
    label_smoothing: float,
    block_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Run the forward kernel; returns per-token `(losses, lse)`, both `[tokens]`."""
    tokens, vocab = logits.shape
    wide = torch.promote_types(logits.dtype, torch.float32)
    losses = torch.empty(tokens, dtype=wide, device=logits.device)
    lse = torch.empty(tokens, dtype=wide, device=logits.device)
    block, warps = launch_config(vocab, block_size)
    if tokens:  # a grid of zero programs is not a launch
        cross_entropy_forward_kernel[(tokens,)](
            logits,
            targets,
            losses,
            lse,
            logits.stride(0),
            vocab,
            ignore_index,
            label_smoothing,
            HAS_SMOOTHING=label_smoothing > 0,
            ACC=accumulator(logits.dtype),
            BLOCK=block,
            num_warps=warps,
        )
    return losses, lse


def cross_entropy_backward(
    logits: Tensor,
    targets: Tensor,
    lse: Tensor,
    row_scale: Tensor,
    label_smoothing: float,
    block_size: int | None = None,
) -> Tensor:
    """Run the backward kernel; returns the logits' gradient, contiguous, in their
    dtype."""
    tokens, vocab = logits.shape
    grad = torch.empty(tokens, vocab, dtype=logits.dtype, device=logits.device)
    block, warps = launch_config(vocab, block_size)
    if tokens:
        cross_entropy_backward_kernel[(tokens,)](
            logits,
            targets,
            lse,
            row_scale,
            grad,
            logits.stride(0),
            vocab,
            label_smoothing,
            ACC=accumulator(logits.dtype),
            BLOCK=block,
            num_warps=warps,
        )
    return grad


# ## The autograd Function
#
# Forward runs the forward kernel and reduces the per-token losses in PyTorch: a sum
# over $N$ numbers, nothing next to the kernel's $NV$. It saves the logits, the
# targets, $\ell$ and the mask of counted rows. Backward turns the incoming gradient
# into one scale per row (the mean's $1 / N_\text{valid}$ included; `clamp` keeps the
# all-ignored case at $0 \cdot 1$ instead of $0 / 0$, which gives PyTorch's zero
# gradient) and runs the backward kernel. The backward is one Triton kernel that
# autograd cannot see into, so it is `once_differentiable`: a second derivative raises
# instead of being silently wrong. The returned gradient is the only logits-sized
# tensor either pass allocates.


class FusedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, ignore_index, label_smoothing, reduction, block):
        losses, lse = cross_entropy_forward(
            logits, targets, ignore_index, label_smoothing, block
        )
        counted = targets != ignore_index  # [tokens]
        ctx.save_for_backward(logits, targets, lse, counted)
        ctx.settings = (label_smoothing, reduction, block)
        if reduction == "none":
            return losses  # [tokens], 0 where ignored
        if reduction == "sum":
            return losses.sum()
        return losses.sum() / counted.sum()  # nan when every row is ignored

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        logits, targets, lse, counted = ctx.saved_tensors
        label_smoothing, reduction, block = ctx.settings
        row_scale = counted.to(lse.dtype) * grad_loss.to(lse.dtype)  # [tokens]
        if reduction == "mean":
            row_scale = row_scale / counted.sum().clamp(min=1)
        grad_logits = cross_entropy_backward(
            logits, targets, lse, row_scale.contiguous(), label_smoothing, block
        )
        return grad_logits, None, None, None, None, None


# ## Checking the inputs
#
# A kernel reads raw memory. Handed a target of 200,000 in a vocabulary of 128,256 it
# would read some other row's logit, or memory past the tensor, and return a plausible
# loss; PyTorch's CUDA kernel stops the process with a device-side assert. So the public
# function checks everything first and raises a `ValueError` or `TypeError` naming the
# argument. The target check is one reduction over $N$ numbers and one wait for the GPU
# to report its result; the rest reads only shapes. The kernels read columns as
# consecutive addresses, so a row must be contiguous, but rows may be any distance
# apart (a slice of a wider buffer).

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
REDUCTIONS = ("mean", "sum", "none")


def check_inputs(
    logits: object,
    targets: object,
    ignore_index: object,
    label_smoothing: object,
    reduction: object,
    block_size: object,
) -> None:
    """Raise a ValueError or TypeError naming the first argument that the kernels could
    not use."""
    where = "fused_cross_entropy"
    if not isinstance(logits, Tensor):
        raise TypeError(f"{where}: logits must be a torch.Tensor, got {type(logits)}")
    if logits.ndim != 2:
        raise ValueError(
            f"{where}: logits must be 2-D [tokens, vocab], got shape "
            f"{tuple(logits.shape)}; flatten [batch, seq, vocab] with "
            "logits.flatten(0, 1)"
        )
    if logits.dtype not in DTYPES:
        raise TypeError(
            f"{where}: logits must be float16, bfloat16, float32 or float64, got "
            f"{logits.dtype}"
        )
    tokens, vocab = logits.shape
    if vocab == 0:
        raise ValueError(f"{where}: logits must have a vocab of at least 1, got 0")
    if vocab > 1 and logits.stride(1) != 1:
        raise ValueError(
            f"{where}: logits' rows must be contiguous (the kernels read columns as "
            f"consecutive addresses), got strides {logits.stride()}: pass "
            "logits.contiguous()"
        )
    if not isinstance(targets, Tensor):
        raise TypeError(f"{where}: targets must be a torch.Tensor, got {type(targets)}")
    if targets.dtype not in (torch.int64, torch.int32):
        raise TypeError(
            f"{where}: targets must be int64 or int32 word ids, got {targets.dtype}"
        )
    if tuple(targets.shape) != (tokens,):
        raise ValueError(
            f"{where}: targets must be [tokens] = ({tokens},) like logits' rows, got "
            f"{tuple(targets.shape)}"
        )
    if targets.device != logits.device:
        raise ValueError(
            f"{where}: targets are on {targets.device} but logits on {logits.device}"
        )
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"{where}: ignore_index must be an int, got {ignore_index!r}")
    if isinstance(label_smoothing, bool) or not isinstance(
        label_smoothing, (int, float)
    ):
        raise TypeError(
            f"{where}: label_smoothing must be a float, got {label_smoothing!r}"
        )
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(
            f"{where}: label_smoothing must be in [0, 1], got {label_smoothing}"
        )
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"{where}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}"
        )
    if block_size is not None and (
        not isinstance(block_size, int)
        or block_size < 16
        or block_size != triton.next_power_of_2(block_size)
    ):
        raise ValueError(
            f"{where}: block_size must be a power of two >= 16, got {block_size!r}"
        )
    wrong = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
    if wrong.any():
        row = int(wrong.nonzero()[0, 0])
        raise ValueError(
            f"{where}: targets must be word ids in [0, {vocab}) or ignore_index="
            f"{ignore_index}; targets[{row}] is {int(targets[row])}"
        )


def fused_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    block_size: int | None = None,
) -> Tensor:
    """`F.cross_entropy(logits.float(), targets, ...)` as two Triton kernels: logits
    `[tokens, vocab]` of any float type, targets `[tokens]`; the loss in float32
    (float64 for float64 logits), the logits' gradient in their own type."""
    check_inputs(logits, targets, ignore_index, label_smoothing, reduction, block_size)
    return FusedCrossEntropy.apply(
        logits, targets, ignore_index, float(label_smoothing), reduction, block_size
    )


# ## Measuring on a GPU
#
# `gpu_report` times the loss with `triton.testing.do_bench`, which runs a function for
# about 100 ms after a warm-up, clears the L2 cache before every run, and here returns
# the median. The ceiling is what a device-to-device copy of 1 GiB reaches, counting
# its read and its write. The fused loss's bandwidth is its counted bytes (the logits
# once forward, twice and the gradient once for forward and backward, plus 16 bytes a
# token each way) over its time; eager PyTorch gets no bandwidth column, since how
# often its kernels really read their inputs is theirs to know. Three versions run, by
# default at the size of a real training step, 8,192 tokens of Llama 3's 128,256 words
# in bfloat16:
#
# - the fused kernels;
# - `eager_cross_entropy`, `F.cross_entropy` on float32 logits;
# - `F.cross_entropy` straight on the bfloat16 logits, which computes in float32 inside
#   its kernels but stores the log-probabilities and gradients in bfloat16: less memory
#   than the float32 route, and 16-bit log-probabilities.
#
# For each it also measures the peak memory of one forward and backward above what
# was allocated before (the logits and targets), with
# `torch.cuda.max_memory_allocated`: the count says 12 bytes per logit for the float32
# route and 2 for ours. Every forward+backward uses `torch.autograd.grad`, so nothing
# accumulates into `logits.grad` between runs.


def copy_bandwidth(device: torch.device) -> float:
    """GB/s of a device-to-device copy of 1 GiB, its read and its write counted."""
    source = torch.empty(2**30, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    ms = triton.testing.do_bench(lambda: target.copy_(source), return_mode="median")
    return 2 * source.nbytes / ms / 1e6


def gpu_report(
    tokens: int = 8192,
    vocab: int = 128256,
    dtype: torch.dtype = torch.bfloat16,
) -> dict[str, float | str]:
    """Times (µs), bandwidth (GB/s, as a fraction of a copy's) and peak memory (GB) of
    the fused loss and of F.cross_entropy, on the current CUDA device."""
    if not torch.cuda.is_available():
        raise RuntimeError("gpu_report needs a CUDA GPU: do_bench times CUDA events")
    if dtype not in DTYPES:
        raise TypeError(f"gpu_report: dtype must be one of {DTYPES}, got {dtype}")
    device = torch.device("cuda")
    generator = torch.Generator(device).manual_seed(0)
    logits = torch.randn(tokens, vocab, generator=generator, device=device)
    logits = logits.to(dtype).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), generator=generator, device=device)
    name = str(dtype).removeprefix("torch.")
    wide = str(torch.promote_types(dtype, torch.float32)).removeprefix("torch.")
    losses = {"ours": fused_cross_entropy, f"torch ({wide})": eager_cross_entropy}
    if dtype.itemsize < 4:  # F.cross_entropy straight on the 16-bit logits
        losses[f"torch ({name})"] = F.cross_entropy

    def forward(loss):
        def run():
            with torch.no_grad():
                loss(logits, targets)

        return run

    def training(loss):
        def run():
            torch.autograd.grad(loss(logits, targets), logits)

        return run

    report: dict[str, float | str] = {
        "size": f"{tokens}×{vocab} {name}",
        "copy GB/s": copy_bandwidth(device),
    }
    for label, loss in losses.items():
        for step, run in (
            ("forward", forward(loss)),
            ("forward+backward", training(loss)),
        ):
            ms = triton.testing.do_bench(run, return_mode="median")
            report[f"{step}, {label} µs"] = ms * 1e3
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        training(loss)()
        torch.cuda.synchronize()
        report[f"peak GB, {label}"] = (torch.cuda.max_memory_allocated() - start) / 1e9
    logit_bytes = logits.numel() * logits.element_size()
    moved = {  # logits, and per token the target, loss, lse and row scale
        "forward": logit_bytes + 16 * tokens,
        "forward+backward": 3 * logit_bytes + 32 * tokens,
    }
    for step, nbytes in moved.items():
        gb_per_s = nbytes / report[f"{step}, ours µs"] / 1e3
        report[f"{step}, ours GB/s"] = gb_per_s
        report[f"{step}, ours of copy"] = gb_per_s / report["copy GB/s"]
        report[f"{step}, ours / torch ({wide}), speed"] = (
            report[f"{step}, torch ({wide}) µs"] / report[f"{step}, ours µs"]
        )
    counted = memory_count(tokens, vocab, dtype)
    report["peak GB counted, ours"] = counted["fused peak"] / 1e9
    report[f"peak GB counted, torch ({wide})"] = counted["eager peak"] / 1e9
    return report


# ## The example
#
# Six tokens over a vocabulary of 300 words in chunks of 64, so the last of the five
# chunks is ragged (44 columns and 20 masked lanes). The targets include the first
# word, the last word and one ignored row. The dataflow diagram is declared by
# `dataflow` below, not traced: `torch.fx` cannot look inside a Triton kernel, and the
# point of the picture is which tensors cross memory between the two kernels.


def example():
    """A small example: `fn(*args)` is the mean loss of 6 tokens over 300 words."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 300, generator=generator)  # [tokens, vocab]
    targets = torch.tensor([0, 299, 17, -100, 150, 42])  # [tokens]

    def loss(logits, targets):
        return fused_cross_entropy(logits, targets, block_size=64)

    return loss, (logits, targets)


def dataflow(output: Tensor):
    """The loss's tensors and its two kernels, with the example's shapes."""
    _, (logits, targets) = example()
    tokens, vocab = logits.shape
    nodes = [
        ("logits", "logits"),
        ("targets", "targets"),
        (
            "forward",
            "cross_entropy_forward_kernel\n(one program per row,\nchunks of 64)",
        ),
        ("lse", "log-sum-exp ℓ"),
        ("losses", "per-token losses"),
        ("mean", "mean over non-ignored rows"),
        ("loss", "loss"),
        ("backward", "cross_entropy_backward_kernel\n(second pass, in backward)"),
        ("grad", "∂loss/∂logits"),
    ]
    edges = [
        ("logits", "forward", f"[{tokens}, {vocab}]"),
        ("targets", "forward", f"[{tokens}]"),
        ("forward", "lse", f"[{tokens}]"),
        ("forward", "losses", f"[{tokens}]"),
        ("losses", "mean", f"[{tokens}]"),
        ("mean", "loss", str(list(output.shape))),
        ("logits", "backward", f"[{tokens}, {vocab}]"),
        ("lse", "backward", f"[{tokens}]"),
        ("backward", "grad", f"[{tokens}, {vocab}]"),
    ]
    return nodes, edges


# ## The demo
#
# On a CPU the kernels run in the interpreter, so the demo stays small. It checks the
# kernels against `F.cross_entropy`, loss and gradient, on float32 and float16 logits
# with padding rows, label smoothing and a vocabulary that is not a multiple of the
# chunk; it measures the peak memory of both losses on PyTorch's allocator at a small
# size and compares it with the count; it draws the count at 8,192 tokens over
# the vocabularies of real models; and it trains a small language model head twice
# from the same weights, once with each loss. The data is a Markov chain: every word
# has four possible successors with fixed probabilities, so the best achievable loss
# is the next-word entropy averaged over the words, drawn uniformly, printed beside
# the loss reached. With `--device cuda` it also prints `gpu_report`.


def check_against_torch(device: str) -> dict[str, float]:
    """Largest differences of loss and gradient from `F.cross_entropy`, on float32 and
    float16 logits with ignored rows and label smoothing."""
    generator = torch.Generator().manual_seed(1)
    tokens, vocab = 16, 1000  # 1000 = one chunk of 1024, its last 24 lanes masked
    errors = {}
    for dtype, smoothing in ((torch.float32, 0.0), (torch.float16, 0.1)):
        logits = 3 * torch.randn(tokens, vocab, generator=generator)
        logits = logits.to(device, dtype).requires_grad_()
        targets = torch.randint(0, vocab, (tokens,), generator=generator)
        targets[::5] = -100  # padding rows
        targets = targets.to(device)
        results = []
        for loss_fn in (fused_cross_entropy, eager_cross_entropy):
            loss = loss_fn(logits, targets, label_smoothing=smoothing)
            (grad,) = torch.autograd.grad(loss, logits)
            results.append((loss, grad.float()))
        (ours, ours_grad), (theirs, theirs_grad) = results
        name = str(dtype).removeprefix("torch.")
        errors[f"loss error {name}"] = (ours - theirs).abs().item()
        errors[f"grad error {name}"] = (ours_grad - theirs_grad).abs().max().item()
    return errors


def measure_memory(tokens: int, vocab: int, device: str) -> dict[str, int]:
    """Peak bytes above the start of one forward and backward of each loss on bfloat16
    logits, read off PyTorch's allocator (the CPU's through the profiler)."""
    logits = torch.randn(tokens, vocab, device=device).to(torch.bfloat16)
    logits.requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), device=device)
    peaks = {}
    for name, loss_fn in (
        ("fused", fused_cross_entropy),
        ("eager", eager_cross_entropy),
    ):

        def step():
            torch.autograd.grad(loss_fn(logits, targets), logits)

        if logits.is_cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated()
            step()
            torch.cuda.synchronize()
            peaks[name] = torch.cuda.max_memory_allocated() - start
        else:
            # Tensors left in reference cycles by earlier work would otherwise be freed
            # by a collection during `step`, and read as negative allocations.
            gc.collect()
            peaks[name] = peak_memory(step)["peak"]
    return peaks


class MarkovChain:
    """A random Markov chain over `vocab` words, each with `successors` possible next
    words."""

    def __init__(self, vocab: int, successors: int, generator: torch.Generator):
        self.next_words = torch.stack(
            [
                torch.randperm(vocab, generator=generator)[:successors]
                for _ in range(vocab)
            ]
        )  # [vocab, successors]
        weights = torch.rand(vocab, successors, generator=generator) ** 3 + 1e-3
        self.probs = weights / weights.sum(1, keepdim=True)  # [vocab, successors]

    def mean_entropy(self) -> float:
        """The next-word entropy averaged over uniformly drawn words, as `batch` draws
        them: the lowest expected loss of any model on its batches."""
        probs = self.probs.double()
        return float(-(probs * probs.log()).sum(1).mean())

    def batch(self, tokens: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """`tokens` (word, next word) pairs, words drawn uniformly: `[tokens]` each."""
        words = torch.randint(0, len(self.probs), (tokens,), generator=generator)
        choice = torch.multinomial(self.probs[words], 1, generator=generator)[:, 0]
        return words, self.next_words[words, choice]


class LanguageModelHead(nn.Module):
    """An embedding and the final projection to the vocabulary: the part of a language
    model whose output is the logits."""

    def __init__(self, vocab: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.unembed = nn.Linear(hidden, vocab, bias=False)

    def forward(self, words: Tensor) -> Tensor:
        return self.unembed(self.embed(words))  # [tokens, vocab]


def train(
    loss_fn, chain: MarkovChain, args: argparse.Namespace, initial: dict
) -> list[float]:
    """Adam on fresh Markov-chain batches with `loss_fn`; the loss of every step."""
    model = LanguageModelHead(args.vocab, args.hidden).to(args.device)
    model.load_state_dict(initial)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    losses = []
    label = "fused" if loss_fn is fused_cross_entropy else "F.cross_entropy"
    for _ in tqdm(range(args.steps), desc=f"training ({label})", leave=False):
        words, next_words = chain.batch(args.tokens, generator)
        targets = next_words.clone()
        targets[: args.tokens // 8] = -100  # an ignored prefix, like a prompt
        logits = model(words.to(args.device))
        loss = loss_fn(logits, targets.to(args.device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def plot_memory(tokens: int, out: Path) -> None:
    vocabularies = [
        ("Llama 2", 32000),
        ("GPT-2", 50257),
        ("Llama 3", 128256),
        ("Qwen2", 151936),
        ("Gemma", 256000),
    ]
    sizes = torch.linspace(16000, 262144, 60).long().tolist()
    counts = [memory_count(tokens, vocab) for vocab in sizes]
    fig, axes = figure(panels=2)
    curves = (
        ("held from forward to backward", "eager held", "fused held"),
        ("peak of forward and backward", "eager peak", "fused peak"),
    )
    for ax, (title, eager, fused) in zip(axes, curves):
        ax.plot(sizes, [c[eager] / 1e9 for c in counts], label="F.cross_entropy, fp32")
        ax.plot(sizes, [c[fused] / 1e9 for c in counts], label="fused kernels")
        for name, vocab in vocabularies:
            ax.axvline(vocab, color="grey", linewidth=0.5, linestyle=":")
            ax.annotate(
                name,
                (vocab, 0.97),
                xycoords=("data", "axes fraction"),
                rotation=90,
                ha="right",
                va="top",
                color="grey",
            )
        ax.set(title=title, xlabel="vocabulary size $V$", ylabel="GB (10$^9$ bytes)")
        ax.set_ylim(0, 1.08 * max(c["eager peak"] for c in counts) / 1e9)
    kept = [
        (c["fused held"] + 2 * tokens * vocab) / 1e9 for c, vocab in zip(counts, sizes)
    ]
    axes[0].plot(
        sizes, kept, color="C1", linestyle="--", label="fused + the logits kept"
    )
    for ax in axes:
        ax.legend(loc="center left")
    save(
        fig,
        out / "memory.png",
        caption="A count, not a measurement: the bytes the loss allocates for "
        f"{tokens:,} tokens of bfloat16 logits as the vocabulary grows. Left: what "
        "stays alive from the forward pass to the backward pass: eager's float32 "
        "log-probabilities, against the fused loss's one number per token (solid) "
        "and the logits it keeps a reference to for its second pass (dashed). "
        "Right: the peak while the loss runs forward and backward, the gradient "
        "included: 12 bytes per logit against 2. Dotted lines mark real models' "
        "vocabularies.",
    )


def plot_training(fused: list[float], eager: list[float], floor: float, out: Path):
    fig, axes = figure(panels=2)
    axes[0].plot(eager, label="F.cross_entropy", linewidth=3, alpha=0.4)
    axes[0].plot(fused, label="fused kernels", linewidth=1)
    axes[0].axhline(floor, color="grey", linestyle=":", label="best possible")
    axes[0].set(xlabel="step $k$", ylabel="cross-entropy (nats)", title="training")
    axes[0].legend()
    gaps = [(step, abs(a - b)) for step, (a, b) in enumerate(zip(fused, eager))]
    differing = [(step, gap) for step, gap in gaps if gap > 0]
    if differing:
        axes[1].plot(*zip(*differing), ".")
    axes[1].set(
        yscale="log",
        xlabel="step $k$",
        ylabel="|loss difference|",
        title="fused minus F.cross_entropy",
    )
    save(
        fig,
        out / "training.png",
        caption="Left: the loss of a small language-model head trained on a Markov "
        "chain, once with the fused kernels (interpreted on the CPU) and once with "
        "F.cross_entropy, from the same weights on the same batches; the dotted line "
        "is the best loss possible, the chain's next-word entropy averaged over "
        "uniformly drawn words. Right: the absolute "
        f"difference of the two losses at each step; at {len(gaps) - len(differing)} "
        f"of the {len(gaps)} steps they are equal to the last bit and no point is "
        "drawn. The rest is float32 rounding: sums taken in a different order.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description="A fused cross-entropy kernel in Triton: check it, count and "
        "measure its memory, train with it, and on a GPU time it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--steps", type=integer(at_least=1), default=40, help="training steps"
    )
    parser.add_argument(
        "--tokens", type=integer(at_least=1), default=32, help="tokens per batch"
    )
    parser.add_argument(
        "--vocab", type=integer(at_least=4), default=64, help="words in the chain"
    )
    parser.add_argument(
        "--hidden", type=integer(at_least=1), default=32, help="hidden size"
    )
    parser.add_argument(
        "--lr", type=number(above=0), default=0.03, help="Adam's learning rate"
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--count-tokens",
        type=integer(at_least=1),
        default=8192,
        help="tokens of the memory count",
    )
    parser.add_argument(
        "--measure-size",
        default="64x4096",
        help="TOKENSxVOCAB at which the CPU allocator's peak is measured",
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
    parser.add_argument("--out", default="out/cross_entropy", help="folder for figures")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    metrics = {}

    for name, error in check_against_torch(args.device).items():
        print(f"fused vs F.cross_entropy, {name}: {error:.1e}")
        metrics[name] = error

    tokens, vocab = (int(n) for n in args.measure_size.split("x"))
    measured = measure_memory(tokens, vocab, args.device)
    counted = memory_count(tokens, vocab)
    print(
        f"peak bytes per logit, bfloat16 [{tokens}, {vocab}], {args.device} allocator:"
    )
    for name in ("eager", "fused"):
        per_logit = measured[name] / (tokens * vocab)
        print(
            f"  {name:5s} measured {per_logit:5.2f}, "
            f"counted {counted[f'{name} peak'] / (tokens * vocab):5.2f}"
        )
        metrics[f"{name} peak bytes per logit"] = per_logit
    big = memory_count(args.count_tokens, 128256)
    print(
        f"counted at {args.count_tokens} tokens x 128256 words, bfloat16: peak "
        f"{big['eager peak'] / 1e9:.1f} GB eager, "
        f"{big['fused peak'] / 1e9:.1f} GB fused"
    )
    metrics["peak ratio"] = big["eager peak"] / big["fused peak"]
    plot_memory(args.count_tokens, out)

    generator = torch.Generator().manual_seed(args.seed)
    chain = MarkovChain(args.vocab, 4, generator)
    torch.manual_seed(args.seed)
    initial = LanguageModelHead(args.vocab, args.hidden).state_dict()
    fused_losses = train(fused_cross_entropy, chain, args, initial)
    eager_losses = train(eager_cross_entropy, chain, args, initial)
    final = sum(fused_losses[-10:]) / len(fused_losses[-10:])
    floor = chain.mean_entropy()
    gap = max(abs(a - b) for a, b in zip(fused_losses, eager_losses))
    uniform = torch.tensor(args.vocab).log().item()
    print(
        f"language-model head: loss {fused_losses[0]:.2f} -> {final:.2f} "
        f"(best possible {floor:.2f}, uniform guess {uniform:.2f})"
    )
    print(f"largest loss difference, fused vs F.cross_entropy: {gap:.1e}")
    metrics.update(
        {"first loss": fused_losses[0], "final loss": final, "loss gap": gap}
    )
    plot_training(fused_losses, eager_losses, floor, out)

    if args.device.startswith("cuda"):
        report = gpu_report()
        print(f"\n{torch.cuda.get_device_name()}, {report['size']}:")
        for name, value in report.items():
            if name != "size":
                print(f"  {name:45s} {value:10.3f}")
        metrics.update({f"gpu/{k}": v for k, v in report.items() if k != "size"})
    return metrics


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Do it Liger's way: compute the gradient in the forward kernel, right after $\ell$,
#    and write it over the logits; the backward only scales it. Measure the peak with
#    `gpu_report`'s method, then show what a caller who reads `logits.argmax(-1)` after
#    the loss gets.
# 2. At 16 tokens and 128,256 words the grid has 16 programs for 132 streaming
#    multiprocessors. Split each row across several programs, each writing its chunk's
#    $(m, s)$, and combine them in a second tiny kernel with the same rescaling as the
#    online softmax. At what number of tokens does the split stop paying?
# 3. Add the z-loss of PaLM, $10^{-4} \ell^2$ per token, which keeps $\ell$ near 0.
#    Which of the two kernels changes, and by how much does the gradient?
# 4. Cut your losses [@wijmans2024cut]: take the hidden states `[tokens, hidden]` and
#    the unembedding `[vocab, hidden]` instead of the logits, and compute each chunk of
#    logits with `tl.dot` inside the forward kernel. How many bytes does the loss hold
#    now, and what must the backward kernel recompute?
