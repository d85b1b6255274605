r"""
---
title: Convolution and pooling from scratch
summary: >-
  conv2d three ways (direct loops, im2col + GEMM with col2im backward, FFT) and max and
  average pooling, with stride, padding, dilation and groups, checked against
  torch.nn.functional in float64 and timed against F.conv2d.
time: 20 s
references:
  - key: chellapilla2006high
    authors: [Kumar Chellapilla, Sidd Puri, Patrice Simard]
    title: High Performance Convolutional Neural Networks for Document Processing
    year: 2006
    venue: Tenth International Workshop on Frontiers in Handwriting Recognition
    url: https://inria.hal.science/inria-00112631
  - key: mathieu2014fast
    authors: [Michael Mathieu, Mikael Henaff, Yann LeCun]
    title: Fast Training of Convolutional Networks through FFTs
    year: 2014
    venue: ICLR 2014
    arxiv: "1312.5851"
  - key: dumoulin2016guide
    authors: [Vincent Dumoulin, Francesco Visin]
    title: A guide to convolution arithmetic for deep learning
    year: 2016
    venue: arXiv
    arxiv: "1603.07285"
  - key: lecun1998gradient
    authors: [Yann LeCun, Léon Bottou, Yoshua Bengio, Patrick Haffner]
    title: Gradient-based learning applied to document recognition
    year: 1998
    venue: Proceedings of the IEEE 86(11)
    url: https://doi.org/10.1109/5.726791
worksheet:
  - region: conv2d_direct
    hint: >-
      Check the arguments, pad x, split the channels into [N, g, C/g, Hp, Wp] and the
      weight into [g, O/g, C/g, kH, kW]; then loop over the kernel taps (i, j), slice
      the strided, dilated window of shape [N, g, C/g, Ho, Wo] for that tap, contract
      it with the tap's weights over C/g, and add it up; reshape to [N, O, Ho, Wo] and
      add the bias.
    tests: [test_conv2d_matches_torch, test_conv2d_unusual_shapes]
  - region: Im2colConv2d.backward
    hint: >-
      Per group, with grad_y as [N, g, O/g, L]: the weight gradient is grad_y times
      cols transposed, summed over the batch; the cols gradient is the weight matrix
      transposed times grad_y; col2im sums it back into the padded image, which you
      crop to x's size; the bias gradient sums grad_out over N, H and W. Return None
      for the four options.
    tests: [test_conv2d_matches_torch, test_conv2d_unusual_shapes]
---

A convolutional layer slides a small stack of filters over an image and takes a dot
product at every position [@lecun1998gradient]. What "convolution" means in a deep
learning library is, strictly, a *cross-correlation*: the filter is not flipped. For an
input $x$ of shape `[N, C, H, W]` and a weight $w$ of shape `[O, C, kH, kW]`,

$$
\begin{aligned}
y_{n,o,p,q} = b_o + \sum_{c}\sum_{i,j}\;
  & w_{o,c,i,j}\, \\
  & x_{n,c,\,ps + id,\; qs + jd},
\end{aligned}
$$

where $s$ is the stride, $d$ the dilation, and $x$ has been padded with $P$ zeros on
every side. The output is $H_o = \lfloor (H + 2P - d(k_H - 1) - 1)/s \rfloor + 1$ rows
high, and the same across [@dumoulin2016guide]. *Groups* split the channels into $g$
independent convolutions: output channel $o$ sees only the $C/g$ input channels of its
own group.

The same sum can be computed in very different ways, and this lesson writes three:

1. **Direct loops** over the kernel's taps, each a small matrix product: simple, and the
   shape of the naive 7-loop definition.
2. **im2col + GEMM** [@chellapilla2006high]: copy every receptive field into a column
   of a matrix, then do one big matrix multiplication. Its backward pass needs the
   inverse scatter, *col2im*. This is PyTorch's own CPU fallback
   (`aten/src/ATen/native/ConvolutionMM2d.cpp`, `slow_conv2d_forward_out_cpu`, built
   on `im2col` and `col2im` in `aten/src/ATen/native/im2col.h`).
3. **FFT convolution** [@mathieu2014fast]: a convolution is a pointwise product in
   the frequency domain, so the kernel's area no longer multiplies its cost, which
   grows far more slowly with the kernel than the other two's.

Then max and average pooling, forward and backward. Every function is checked against
`F.conv2d`, `F.max_pool2d` and `F.avg_pool2d` in float64, forward values and the input,
weight and bias gradients, over hypothesis-drawn shapes and options. The demo times the
three algorithms against `F.conv2d` for kernels 3 to 15 and shows where the FFT wins.
"""

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from annotated.data import integer, torch_device
from annotated.figures import figure, save

# ## Shapes and arguments
#
# Every algorithm below agrees on one piece of arithmetic: how big the output is. A
# dilated kernel of $k$ taps spans $d(k-1)+1$ pixels; on a padded input of $H + 2P$
# rows it fits $\lfloor (H + 2P - d(k-1) - 1)/s \rfloor + 1$ times at stride $s$.
# `pair` lets each option be one int or an `(height, width)` pair, as in `F.conv2d`.


def pair(value, name: str) -> tuple[int, int]:
    """`value` as a `(height, width)` pair of ints, or a `TypeError` naming `name`."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return int(value[0]), int(value[1])
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int):
    """How many positions a dilated kernel takes along one axis."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


# One checker guards every public function of the lesson, so that a wrong argument
# fails at the caller's line with a sentence rather than deep inside a matrix product
# with a shape mismatch. It returns the options as pairs.


def check_conv_args(x, weight, bias, stride, padding, dilation, groups):
    """Check a conv2d call and return `(stride, padding, dilation)` as pairs."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a 4-d tensor [N, C, H, W], got {_shape(x)}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        raise ValueError(
            f"weight must be a 4-d tensor [O, C/groups, kH, kW], got {_shape(weight)}"
        )
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    stride, padding, dilation = (
        pair(stride, "stride"),
        pair(padding, "padding"),
        pair(dilation, "dilation"),
    )
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(
            "stride and dilation must be >= 1 and padding >= 0, got "
            f"stride={stride}, padding={padding}, dilation={dilation}"
        )
    channels, out_channels = x.shape[1], weight.shape[0]
    if channels % groups or out_channels % groups:
        raise ValueError(
            f"groups={groups} must divide x's {channels} channels and weight's "
            f"{out_channels} output channels"
        )
    if weight.shape[1] * groups != channels:
        raise ValueError(
            f"weight has {weight.shape[1]} input channels per group but x has "
            f"{channels} channels in {groups} groups; expected {channels // groups}"
        )
    if bias is not None and tuple(bias.shape) != (out_channels,):
        raise ValueError(f"bias must have shape ({out_channels},), got {_shape(bias)}")
    if x.dtype != weight.dtype:
        raise TypeError(f"x is {x.dtype} but weight is {weight.dtype}; make them match")
    for axis in (0, 1):
        size = output_size(
            x.shape[2 + axis],
            weight.shape[2 + axis],
            stride[axis],
            padding[axis],
            dilation[axis],
        )
        if size < 1:
            raise ValueError(
                f"the dilated kernel {tuple(weight.shape[2:])} (dilation {dilation}) "
                f"does not fit in x's padded {tuple(x.shape[2:])} image"
            )
    return stride, padding, dilation


def _shape(value) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else repr(value)


# ## Direct loops
#
# The definition is seven nested loops: batch, output channel, output row and column,
# input channel, kernel row and column. Written literally in Python it would take
# minutes for one layer. The trick that keeps this version honest *and* usable is to
# keep only the two kernel loops in Python. For a fixed tap $(i, j)$ the input pixels
# it touches form a strided slice of the padded image,
# `x[:, :, i*d : ... : s, j*d : ... : s]`, of exactly the output's size; the tap
# contributes that slice times $w_{:,:,i,j}$, a `[O, C]` matrix applied at every
# pixel. Summing $k_H k_W$ such products is the direct algorithm. With groups the
# channel axes split into `[g, C/g]` and `[g, O/g]` and the product runs per group.
# Autograd differentiates it: every operation is a slice, an `einsum` or a sum.


def conv2d_direct(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """conv2d by looping over the kernel's taps; autograd gives the backward pass."""
    stride, padding, dilation = check_conv_args(
        x, weight, bias, stride, padding, dilation, groups
    )
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    ho = output_size(h, kh, stride[0], padding[0], dilation[0])
    wo = output_size(w, kw, stride[1], padding[1], dilation[1])
    padded = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    padded = padded.view(
        n, groups, c // groups, *padded.shape[2:]
    )  # [N, g, C/g, Hp, Wp]
    grouped = weight.view(
        groups, o // groups, c // groups, kh, kw
    )  # [g, O/g, C/g, kH, kW]
    out = x.new_zeros(n, groups, o // groups, ho, wo)  # [N, g, O/g, Ho, Wo]
    for i in range(kh):
        for j in range(kw):
            top, left = i * dilation[0], j * dilation[1]
            window = padded[
                ...,
                top : top + stride[0] * (ho - 1) + 1 : stride[0],
                left : left + stride[1] * (wo - 1) + 1 : stride[1],
            ]  # [N, g, C/g, Ho, Wo]
            out = out + torch.einsum("ngchw,goc->ngohw", window, grouped[..., i, j])
    out = out.reshape(n, o, ho, wo)  # [N, O, Ho, Wo]
    return out if bias is None else out + bias.view(1, o, 1, 1)


# ## im2col and col2im
#
# im2col turns convolution into the one operation hardware is best at, a matrix
# product [@chellapilla2006high]. For every output pixel it copies the $C k_H k_W$
# input values under the kernel into one column. The result, `cols`, has shape
# `[N, C·kH·kW, Ho·Wo]`, and the convolution is
#
# $$
# Y_n = W\, \mathrm{cols}_n + b, \qquad W \in \mathbb{R}^{O \times C k_H k_W}.
# $$
#
# The copy is built with the same strided slices as the direct loop, stacked instead of
# multiplied. The price is memory: each input pixel is copied up to $k_H k_W$ times,
# nine times for a 3×3 kernel.


def im2col(padded, kernel, stride, dilation, out_size):
    """Receptive fields of `padded` [N, C, Hp, Wp] as `[N, C, kH, kW, Ho, Wo]`."""
    (kh, kw), (ho, wo) = kernel, out_size
    rows = []
    for i in range(kh):
        for j in range(kw):
            top, left = i * dilation[0], j * dilation[1]
            rows.append(
                padded[
                    :,
                    :,
                    top : top + stride[0] * (ho - 1) + 1 : stride[0],
                    left : left + stride[1] * (wo - 1) + 1 : stride[1],
                ]
            )
    n, c = padded.shape[:2]
    return torch.stack(rows, dim=2).view(n, c, kh, kw, ho, wo)


# col2im is im2col's adjoint. im2col *reads* each padded pixel once for every window
# that covers it; so the gradient of a pixel is the *sum* of the gradients of all its
# copies. col2im walks the same slices and adds each tap's gradient back into place.
# Overlapping windows (stride smaller than the kernel) are exactly where the sum
# matters: forget the `+=` and use `=` and the gradient of every overlapped pixel is
# wrong.


def col2im(cols, padded_size, stride, dilation):
    """Sum `cols` [N, C, kH, kW, Ho, Wo] back into a padded image `[N, C, Hp, Wp]`."""
    n, c, kh, kw, ho, wo = cols.shape
    image = cols.new_zeros(n, c, *padded_size)  # [N, C, Hp, Wp]
    for i in range(kh):
        for j in range(kw):
            top, left = i * dilation[0], j * dilation[1]
            image[
                :,
                :,
                top : top + stride[0] * (ho - 1) + 1 : stride[0],
                left : left + stride[1] * (wo - 1) + 1 : stride[1],
            ] += cols[:, :, i, j]
    return image


# ## The GEMM and its backward pass
#
# With `cols` per group reshaped to $K \times L$ ($K = (C/g) k_H k_W$ rows,
# $L = H_o W_o$ columns) and the group's weight to $(O/g) \times K$, the forward pass is
# one batched matrix product per group. Its backward rules are the matrix product's:
#
# $$
# \begin{aligned}
# \bar{W} &= \textstyle\sum_n \bar{Y}_n\, \mathrm{cols}_n^\top, \\
# \overline{\mathrm{cols}}_n &= W^\top \bar{Y}_n, \\
# \bar{x} &= \mathrm{col2im}(\overline{\mathrm{cols}}), \quad
# \bar{b}_o = \textstyle\sum_{n,p,q} \bar{Y}_{n,o,p,q}.
# \end{aligned}
# $$
#
# We write them by hand in a `torch.autograd.Function`, the way ATen does in
# `slow_conv2d_backward_out_cpu`: forward saves `cols` (not $x$), so the backward pass
# never repeats the copy. Padding is undone by cropping the padded gradient.


class Im2colConv2d(torch.autograd.Function):
    """conv2d as im2col + GEMM, with a hand-written col2im backward pass."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        n, c, h, w = x.shape
        o, _, kh, kw = weight.shape
        ho = output_size(h, kh, stride[0], padding[0], dilation[0])
        wo = output_size(w, kw, stride[1], padding[1], dilation[1])
        padded = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
        cols = im2col(padded, (kh, kw), stride, dilation, (ho, wo))
        cols = cols.reshape(n, groups, (c // groups) * kh * kw, ho * wo)  # [N, g, K, L]
        matrix = weight.reshape(groups, o // groups, -1)  # [g, O/g, K]
        out = torch.matmul(matrix, cols).reshape(n, o, ho, wo)  # [N, O, Ho, Wo]
        if bias is not None:
            out = out + bias.view(1, o, 1, 1)
        ctx.save_for_backward(cols, weight)
        ctx.options = (x.shape, padded.shape[2:], stride, padding, dilation, groups)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        cols, weight = ctx.saved_tensors
        x_shape, padded_size, stride, padding, dilation, groups = ctx.options
        n, c, h, w = x_shape
        o, _, kh, kw = weight.shape
        grad_y = grad_out.reshape(n, groups, o // groups, -1)  # [N, g, O/g, L]
        grad_weight = torch.matmul(grad_y, cols.transpose(-1, -2)).sum(0)  # [g, O/g, K]
        matrix = weight.reshape(groups, o // groups, -1)  # [g, O/g, K]
        grad_cols = torch.matmul(matrix.transpose(-1, -2), grad_y)  # [N, g, K, L]
        grad_cols = grad_cols.reshape(n, c, kh, kw, *grad_out.shape[2:])
        grad_padded = col2im(grad_cols, padded_size, stride, dilation)  # [N, C, Hp, Wp]
        grad_x = grad_padded[
            :, :, padding[0] : padding[0] + h, padding[1] : padding[1] + w
        ]
        grad_bias = grad_out.sum((0, 2, 3)) if ctx.has_bias else None
        return grad_x, grad_weight.reshape(weight.shape), grad_bias, *(None,) * 4


def conv2d_im2col(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """conv2d by im2col + GEMM; the backward pass is `Im2colConv2d.backward`."""
    options = check_conv_args(x, weight, bias, stride, padding, dilation, groups)
    return Im2colConv2d.apply(x, weight, bias, *options, groups)


# ## FFT convolution
#
# The convolution theorem turns a convolution into a pointwise product of Fourier
# transforms, and a cross-correlation into a product with the *conjugate* transform:
#
# $$
# \mathcal{F}(x \star w) = \mathcal{F}(x) \cdot \overline{\mathcal{F}(w)}.
# $$
#
# The discrete transform makes the correlation *circular*: indices wrap around the
# image. With both transforms taken at the padded image's size $H_p \times W_p$, output
# row $p$ reads rows $p, \dots, p + d(k_H-1)$, which wrap only when
# $p > H_p - d(k_H-1) - 1$: those rows lie past the valid output and we crop them.
# Dilation is a kernel with $d-1$ zeros between taps; stride keeps every $s$-th row of
# the stride-1 result (wasteful, and the reason nobody uses FFT for strided layers).
#
# The cost is the point [@mathieu2014fast]. The direct and im2col algorithms do
# $O(H W k^2)$ multiplications per channel pair; the FFT does $O(H W \log(HW))$ for
# the transforms, computed once per image and per filter, and $O(HW)$ for each product,
# whatever $k$ is. For 3×3 kernels that is a loss; for large kernels a win, once the
# filters' transforms are shared by a batch of several images. Autograd differentiates
# `torch.fft` natively, so the backward pass is free.


def dilate(weight, dilation):
    """`weight` [O, C, kH, kW] with `dilation - 1` zeros between its taps."""
    o, c, kh, kw = weight.shape
    if dilation == (1, 1):
        return weight
    spread = weight.new_zeros(
        o, c, dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    )
    spread[:, :, :: dilation[0], :: dilation[1]] = weight
    return spread


def strip_small_primes(n: int) -> int:
    """`n` with every factor 2, 3 and 5 divided out."""
    for p in (2, 3, 5):
        while n % p == 0:
            n //= p
    return n


def fast_size(n: int) -> int:
    """The smallest integer >= `n` whose only prime factors are 2, 3 and 5: the sizes
    for which FFT libraries are fastest."""
    while strip_small_primes(n) != 1:
        n += 1
    return n


# Two practical details. The transforms may be taken at any size at least
# $H_p \times W_p$ (a larger one only adds zeros that never wrap into the valid
# output), so we round up to a size whose prime factors are 2, 3 and 5, where FFTs are
# fastest. And the sum over input channels at each frequency is a matrix product, which
# we write as four *real* batched matrix products,
# $(a + ib)(c - id) = (ac + bd) + i(bc - ad)$, because complex `matmul` on CPU is much
# slower than real BLAS.


def conv2d_fft(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """conv2d as a product of 2-d real FFTs; autograd gives the backward pass."""
    stride, padding, dilation = check_conv_args(
        x, weight, bias, stride, padding, dilation, groups
    )
    n, c, h, w = x.shape
    o = weight.shape[0]
    padded = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    kernel = dilate(weight, dilation)  # [O, C/g, kdH, kdW]
    size = (fast_size(padded.shape[2]), fast_size(padded.shape[3]))  # (Hf, Wf)
    image_f = torch.fft.rfft2(padded, s=size)  # [N, C, Hf, Wf/2+1]
    kernel_f = torch.fft.rfft2(kernel, s=size)  # [O, C/g, Hf, Wf/2+1]
    freqs = image_f.shape[2] * image_f.shape[3]
    # frequencies become a batch axis: [g, freqs, N, C/g] @ [g, freqs, C/g, O/g]
    image_f = image_f.reshape(n, groups, c // groups, freqs).permute(1, 3, 0, 2)
    kernel_f = kernel_f.reshape(groups, o // groups, c // groups, freqs)
    kernel_f = kernel_f.permute(0, 3, 2, 1)  # [g, freqs, C/g, O/g]
    a, b = image_f.real.contiguous(), image_f.imag.contiguous()
    kr, ki = kernel_f.real.contiguous(), kernel_f.imag.contiguous()
    product = torch.complex(a @ kr + b @ ki, b @ kr - a @ ki)  # [g, freqs, N, O/g]
    product = product.permute(2, 0, 3, 1).reshape(n, o, size[0], size[1] // 2 + 1)
    full = torch.fft.irfft2(product, s=size)  # [N, O, Hf, Wf]
    valid_h = padded.shape[2] - kernel.shape[2] + 1
    valid_w = padded.shape[3] - kernel.shape[3] + 1
    out = full[:, :, : valid_h : stride[0], : valid_w : stride[1]]  # [N, O, Ho, Wo]
    return out if bias is None else out + bias.view(1, o, 1, 1)


# ## Pooling
#
# Pooling summarises each window of one channel by one number: its maximum or its mean
# [@lecun1998gradient]. It is a convolution without a weight, and im2col gives it for
# free: gather the windows, reduce over the tap axes. Max pooling pads with $-\infty$
# so that padding never wins; average pooling pads with zeros and, like
# `F.avg_pool2d`'s default `count_include_pad=True`, divides by the full window
# $k_H k_W$.
#
# The backward passes are the two reductions' rules, scattered back by col2im. A mean
# sends $\bar{y}/(k_H k_W)$ to every tap of its window. A maximum sends all of $\bar{y}$
# to the one tap that won, which forward remembers as an index (ATen keeps the same
# `indices` tensor: `aten/src/ATen/native/DilatedMaxPool2d.cpp`,
# `max_pool2d_with_indices`). Overlapping windows sum their contributions in col2im, as
# before.


def check_pool_args(x, kernel_size, stride, padding):
    """Check a pooling call and return `(kernel, stride, padding)` as pairs."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a 4-d tensor [N, C, H, W], got {_shape(x)}")
    kernel = pair(kernel_size, "kernel_size")
    stride = kernel if stride is None else pair(stride, "stride")
    padding = pair(padding, "padding")
    if min(kernel) < 1 or min(stride) < 1 or min(padding) < 0:
        raise ValueError(
            "kernel_size and stride must be >= 1 and padding >= 0, got "
            f"kernel_size={kernel}, stride={stride}, padding={padding}"
        )
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(
            f"padding {padding} must be at most half of kernel_size {kernel}"
        )
    if (
        min(
            output_size(x.shape[2 + a], kernel[a], stride[a], padding[a], 1)
            for a in (0, 1)
        )
        < 1
    ):
        raise ValueError(
            f"kernel_size {kernel} does not fit in x's {tuple(x.shape[2:])}"
        )
    return kernel, stride, padding


class Pool2d(torch.autograd.Function):
    """Max or average pooling over im2col windows, with a col2im backward pass."""

    @staticmethod
    def forward(ctx, x, mode, kernel, stride, padding):
        n, c, h, w = x.shape
        ho = output_size(h, kernel[0], stride[0], padding[0], 1)
        wo = output_size(w, kernel[1], stride[1], padding[1], 1)
        fill = -math.inf if mode == "max" else 0.0
        padded = F.pad(x, (padding[1], padding[1], padding[0], padding[0]), value=fill)
        cols = im2col(
            padded, kernel, stride, (1, 1), (ho, wo)
        )  # [N, C, kH, kW, Ho, Wo]
        cols = cols.reshape(n, c, kernel[0] * kernel[1], ho, wo)  # [N, C, k, Ho, Wo]
        if mode == "max":
            out, winner = cols.max(dim=2)  # [N, C, Ho, Wo] each
            ctx.save_for_backward(winner)
        else:
            out = cols.mean(dim=2)  # [N, C, Ho, Wo]
        ctx.options = (mode, kernel, stride, padding, x.shape, padded.shape[2:])
        return out

    @staticmethod
    def backward(ctx, grad_out):
        mode, kernel, stride, padding, (n, c, h, w), padded_size = ctx.options
        taps = kernel[0] * kernel[1]
        if mode == "max":
            (winner,) = ctx.saved_tensors
            grad_cols = grad_out.new_zeros(n, c, taps, *grad_out.shape[2:])
            grad_cols.scatter_(2, winner.unsqueeze(2), grad_out.unsqueeze(2))
        else:
            grad_cols = (grad_out / taps).unsqueeze(2).expand(-1, -1, taps, -1, -1)
        grad_cols = grad_cols.reshape(n, c, *kernel, *grad_out.shape[2:])
        grad_padded = col2im(grad_cols, padded_size, stride, (1, 1))  # [N, C, Hp, Wp]
        grad_x = grad_padded[
            :, :, padding[0] : padding[0] + h, padding[1] : padding[1] + w
        ]
        return grad_x, None, None, None, None


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Max pooling as `F.max_pool2d` (no dilation, floor mode); `stride` defaults to
    the kernel."""
    return Pool2d.apply(x, "max", *check_pool_args(x, kernel_size, stride, padding))


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """Average pooling as `F.avg_pool2d` with `count_include_pad=True`."""
    return Pool2d.apply(x, "avg", *check_pool_args(x, kernel_size, stride, padding))


# ## Choosing an algorithm
#
# PyTorch chooses, too. `F.conv2d` lands in `at::convolution`
# (`aten/src/ATen/native/Convolution.cpp`), where `select_conv_backend` picks among
# cuDNN, MKLDNN (oneDNN), depthwise kernels, and the `Slow2d` im2col fallback from the
# shapes, dtype and device. None of these is an FFT (on a GPU, cuDNN has FFT
# algorithms among those it may pick inside its backend): for the 3×3 and 1×1 kernels
# that dominate modern networks an FFT is slower, as the demo below shows. Our three are
# collected here so that the example, the demo and the tests can name them.

ALGORITHMS = {"direct": conv2d_direct, "im2col": conv2d_im2col, "fft": conv2d_fft}


def example():
    """A batch of two 3-channel 16×16 images through a 3×3, stride-1, padding-1 conv
    with 8 filters, computed by im2col."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 16, generator=generator)
    weight = torch.randn(8, 3, 3, 3, generator=generator)
    bias = torch.randn(8, generator=generator)
    return conv2d_im2col, (x, weight, bias, 1, 1)


def dataflow(output):
    """The im2col algorithm's steps on the example, with the shapes between them."""
    n, o, ho, wo = output.shape
    nodes = [
        ("x", "x"),
        ("pad", "F.pad"),
        ("im2col", "im2col"),
        ("weight", "weight"),
        ("gemm", "matmul (GEMM)"),
        ("bias", "+ bias"),
        ("y", "y"),
    ]
    edges = [
        ("x", "pad", f"[{n}, 3, 16, 16]"),
        ("pad", "im2col", f"[{n}, 3, 18, 18]"),
        ("im2col", "gemm", f"[{n}, 1, 27, {ho * wo}]"),
        ("weight", "gemm", f"[1, {o}, 27]"),
        ("gemm", "bias", f"[{n}, {o}, {ho}, {wo}]"),
        ("bias", "y", f"[{n}, {o}, {ho}, {wo}]"),
    ]
    return nodes, edges


# ## The demo: where does each algorithm win?
#
# We time each algorithm's forward pass against `F.conv2d` on a batch of images with
# `channels` input and output channels, for the kernel sizes 3, 7, 11 and 15 and a
# few image sizes, with padding that keeps the image's size. Each time is the best of
# `repeats` runs, which filters out the noise of a shared machine. Before timing, every
# algorithm's output is compared with `F.conv2d`'s, so the demo cannot report the speed
# of a wrong answer.


def best_time(fn, repeats: int) -> float:
    """The fastest of `repeats` calls of `fn()`, in seconds, after one warm-up call."""
    fn()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description="Time direct, im2col and FFT conv2d against F.conv2d.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--sizes",
        type=integer(at_least=1),
        nargs="+",
        default=[16, 32],
        help="image sizes (height = width)",
    )
    parser.add_argument(
        "--kernels",
        type=integer(at_least=1),
        nargs="+",
        default=[3, 7, 11, 15],
        help="kernel sizes (odd)",
    )
    parser.add_argument(
        "--channels",
        type=integer(at_least=1),
        default=64,
        help="input and output channels",
    )
    parser.add_argument(
        "--batch", type=integer(at_least=1), default=8, help="images per batch"
    )
    parser.add_argument(
        "--repeats", type=integer(at_least=1), default=2, help="timed runs per point"
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--threads",
        type=integer(at_least=1),
        default=1,
        help="torch CPU threads (1: fair on a busy host)",
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device",
    )
    parser.add_argument(
        "--out", default="out/convolution", help="folder for the figures"
    )
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    names = [*ALGORITHMS, "F.conv2d"]
    functions = {**ALGORITHMS, "F.conv2d": F.conv2d}
    times = {
        (name, size, k): 0.0
        for name in names
        for size in args.sizes
        for k in args.kernels
    }
    worst_error = 0.0
    points = [(size, k) for size in args.sizes for k in args.kernels]
    for size, k in tqdm(points, desc="timing"):
        x = torch.randn(args.batch, args.channels, size, size, device=device)
        weight = torch.randn(args.channels, args.channels, k, k, device=device) / k
        reference = F.conv2d(x, weight, padding=k // 2)
        for name in names:
            result = functions[name](x, weight, None, 1, k // 2)
            error = (
                result - reference
            ).abs().max().item() / reference.abs().max().item()
            worst_error = max(worst_error, error)

            def run(name=name):
                functions[name](x, weight, None, 1, k // 2)
                sync()

            times[name, size, k] = best_time(run, args.repeats)

    fig, axes = figure(panels=len(args.sizes))
    axes = [axes] if len(args.sizes) == 1 else list(axes)
    for axis, size in zip(axes, args.sizes):
        for name in names:
            axis.plot(
                args.kernels,
                [1e3 * times[name, size, k] for k in args.kernels],
                marker="o",
                label=name,
            )
        axis.set_yscale("log")
        axis.set_xlabel("kernel size $k$")
        axis.set_ylabel("forward time (ms)")
        axis.set_title(f"{size}×{size}×{args.channels}, batch {args.batch}")
        axis.legend()
    out = Path(args.out)
    save(
        fig,
        out / "timings.png",
        caption="Forward time of each conv2d algorithm against kernel size: im2col and "
        "direct grow with k², FFT grows far more slowly and overtakes them for large "
        "kernels.",
    )

    size = args.sizes[-1]
    crossover = next(
        (k for k in args.kernels if times["fft", size, k] < times["im2col", size, k]),
        math.inf,
    )
    k0 = args.kernels[0]
    ratio = times["im2col", size, k0] / times["F.conv2d", size, k0]
    print(f"worst relative error vs F.conv2d {worst_error:.1e}")
    print(
        f"im2col / F.conv2d at {k0}×{k0}, {size}×{size}×{args.channels}: {ratio:.2f}×"
    )
    print(f"FFT beats im2col from kernel size {crossover} at {size}×{size}")
    return {
        "worst_error": worst_error,
        "im2col_ratio": ratio,
        "fft_crossover": crossover,
    }


if __name__ == "__main__":
    main()

# ## Exercises
#
# 1. `conv2d_fft` computes every stride-1 output and throws most away when the stride
#    is 2. Rewrite it to subsample in the frequency domain instead (aliasing: sum the
#    spectrum's four quarters) and measure the saving.
# 2. im2col copies each pixel $k^2$ times. Measure `cols`' size for a 3×3 layer on a
#    224×224×64 image in float32, and compare it with the input's.
# 3. Add `ceil_mode=True` to `max_pool2d` and check it against `F.max_pool2d`.
# 4. Winograd's F(2×2, 3×3) needs 16 multiplications where the direct method needs 36.
#    Implement it for stride 1 and test it against `conv2d_direct`.
