r"""
---
title: Quantisation from scratch
summary: >-
  Symmetric and asymmetric, per-tensor and per-channel int8 and int4 quantisation,
  calibrated and trained with a straight-through estimator, checked against
  torch.ao.quantization's observers and torch._int_mm, and run in ONNX Runtime.
time: 10 s
expected:
  metric: accuracy_qat
  short: ["--epochs", "4", "--qat-epochs", "1"]
references:
  - key: jacob2018quantization
    authors:
      - Benoit Jacob
      - Skirmantas Kligys
      - Bo Chen
      - Menglong Zhu
      - Matthew Tang
      - Andrew Howard
      - Hartwig Adam
      - Dmitry Kalenichenko
    title: >-
      Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
      Inference
    year: 2018
    venue: CVPR 2018
    arxiv: "1712.05877"
  - key: bengio2013estimating
    authors: [Yoshua Bengio, Nicholas Léonard, Aaron Courville]
    title: >-
      Estimating or Propagating Gradients Through Stochastic Neurons for
      Conditional Computation
    year: 2013
    venue: arXiv preprint
    arxiv: "1308.3432"
  - key: krishnamoorthi2018quantizing
    authors: [Raghuraman Krishnamoorthi]
    title: >-
      Quantizing deep convolutional networks for efficient inference: A
      whitepaper
    year: 2018
    venue: arXiv preprint
    arxiv: "1806.08342"
  - key: nagel2021white
    authors:
      - Markus Nagel
      - Marios Fournarakis
      - Rana Ali Amjad
      - Yelysei Bondarenko
      - Mart van Baalen
      - Tijmen Blankevoort
    title: A White Paper on Neural Network Quantization
    year: 2021
    venue: arXiv preprint
    arxiv: "2106.08295"
  - key: onnxruntime2024quantize
    authors: [ONNX Runtime developers]
    title: "ONNX Runtime: quantize ONNX models"
    year: 2024
    venue: Documentation, Microsoft
    url: https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html
worksheet:
  - region: qparams
    hint: >-
      In float32, widen the range to include 0 (min clamped to <= 0, max to >= 0).
      Symmetric: scale = max(-min, max) / ((qmax - qmin) / 2) and zero point 0;
      asymmetric: scale = (max - min) / (qmax - qmin) and zero point qmin -
      round(min / scale) as int32, clamped to [qmin, qmax]; floor every scale at
      float32's eps.
    tests: [test_qparams_match_torch_observers_bitwise]
  - region: quantize
    hint: >-
      Broadcast a per-channel scale and zero point along axis 0 (_broadcast), multiply
      x by the reciprocal 1 / scale (not a division), round half to even, add the zero
      point, clamp to [qmin, qmax] and return int8.
    tests:
      - test_quantize_and_dequantize_match_torch_bitwise
      - test_quantize_clamps_outside_the_range
  - region: Int8Linear.forward
    hint: >-
      Quantise the input with the calibrated input scale and zero point, multiply by
      the transposed int8 weights in int32 with int_matmul, subtract input_zero times
      each output's weight row sum, then convert to float, multiply by input_scale *
      weight_scale (per output) and add the bias.
    tests: [test_int8_linear_matches_fbgemm_quantized_linear]
---

A trained network stores every weight as a 32-bit float, yet it rarely needs more than a
few hundred distinct levels per weight to keep its accuracy. *Quantisation* stores a
tensor as small integers plus one or a few floats that say how to read them back, and
computes with the integers: four times less memory and memory traffic at int8, eight
times less at int4, and integer multiply–accumulate units that are cheaper than float
ones [@jacob2018quantization; @krishnamoorthi2018quantizing].

Every scheme in this lesson is the same *affine* map between a real number $x$ and an
integer $q$ in a range $[q_{\min}, q_{\max}]$,
$$
\begin{aligned}
q &= \mathrm{clamp}\bigl(\mathrm{round}(x / s) + z,\; q_{\min},\, q_{\max}\bigr), \\
\hat x &= s\,(q - z),
\end{aligned}
$$
with a float *scale* $s$ and an integer *zero point* $z$. The choices are how to pick
$s$ and $z$ (symmetric or asymmetric), for how much of the tensor (per tensor or per
output channel), from which numbers (the weights themselves, or activations seen on a
calibration set, by min–max or by percentile), and how many bits. Then: an integer
matrix product that gives the same numbers as `torch._int_mm`; fake quantisation and
quantisation-aware training with a straight-through estimator [@bengio2013estimating];
and an export to the ONNX "QDQ" format that ONNX Runtime loads and runs.

The demo trains a small MLP on the 8×8 digits and measures accuracy and size at fp32,
int8 after post-training quantisation (PTQ), int8 after quantisation-aware training
(QAT), and int4 weight-only. The test checks our scales and zero points against
`torch.ao.quantization`'s `MinMaxObserver` and `PerChannelMinMaxObserver`, bit for bit.
"""

import argparse
import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
import torch.fx
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn
from tqdm import tqdm

from annotated.data import digits, integer, number, torch_device
from annotated.figures import figure, save


# ## Schemes
#
# A scheme fixes the integer range and how the scale and zero point are chosen. All our
# integers are signed: $[-128, 127]$ for int8 and $[-8, 7]$ for int4. (fbgemm's
# activations are *unsigned* int8 with the zero point moved up by 128; the real numbers
# they stand for are the same.)
#
# *Symmetric* schemes fix $z = 0$, so $\hat x = s q$ and zero is exact; the product of
# two symmetric tensors needs no correction terms. They suit weights, whose values
# straddle zero. *Asymmetric* (affine) schemes spend all $2^b$ levels on $[x_{\min},
# x_{\max}]$, which matters for a ReLU's output: a symmetric scheme would waste the
# negative half of its levels on values that never occur.
#
# *Per-channel* schemes give each output row of a weight matrix its own $s$ (axis 0 of
# `nn.Linear.weight`, `[out, in]`): one row of small weights no longer shares the
# coarse step of the row with the largest one [@krishnamoorthi2018quantizing].
@dataclass(frozen=True)
class Scheme:
    """How a tensor is quantised: `bits` (8 or 4), `symmetric`, and `per_channel` (one
    scale per slice along axis 0)."""

    bits: int = 8
    symmetric: bool = True
    per_channel: bool = False

    # The one checker of the lesson: a scheme is checked when it is made, so every
    # function below can trust the one it is given.
    def __post_init__(self):
        if self.bits not in (4, 8):
            raise ValueError(f"Scheme: bits must be 4 or 8, got {self.bits!r}")
        for name in ("symmetric", "per_channel"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"Scheme: {name} must be a bool")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1))

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1


INT8_WEIGHT = Scheme(8, symmetric=True, per_channel=True)
INT8_ACTIVATION = Scheme(8, symmetric=False, per_channel=False)
INT4_WEIGHT = Scheme(4, symmetric=True, per_channel=True)


# ## Scale and zero point
#
# Given the smallest and largest value to represent, the range is first widened to
# contain 0, so that zero (padding, a ReLU's output) is exactly representable. Then
# $$
# \begin{aligned}
# \text{symmetric:}\quad s &= \frac{\max(|x_{\min}|, |x_{\max}|)}
#   {(q_{\max} - q_{\min}) / 2}, \quad z = 0, \\
# \text{asymmetric:}\quad s &= \frac{x_{\max} - x_{\min}}{q_{\max} - q_{\min}}, \\
# z &= q_{\min} - \mathrm{round}(x_{\min} / s).
# \end{aligned}
# $$
# This is, operation for operation and in float32, what PyTorch's observers compute in
# `UniformQuantizationObserverBase._calculate_qparams` (`torch/ao/quantization/
# observer.py`), so the test can demand equal bits. Two details come from there: the
# symmetric denominator is $127.5$, not $127$, so the largest weight lands on $127.5$
# and is clamped to 127; and the scale is floored at float32's machine epsilon, so an
# all-zero tensor does not divide by zero.
def qparams(
    min_val: torch.Tensor, max_val: torch.Tensor, scheme: Scheme
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32) and zero point (int32) for values in `[min_val, max_val]`;
    both are 0-d, or `[channels]` for a per-channel scheme."""
    min_neg = torch.clamp(min_val.float(), max=0.0)
    max_pos = torch.clamp(max_val.float(), min=0.0)
    levels = float(scheme.qmax - scheme.qmin)
    eps = torch.finfo(torch.float32).eps
    if scheme.symmetric:
        scale = torch.maximum(-min_neg, max_pos) / (levels / 2)
        scale = torch.clamp(scale, min=eps)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = torch.clamp((max_pos - min_neg) / levels, min=eps)
        zero_point = scheme.qmin - torch.round(min_neg / scale).to(torch.int32)
        zero_point = torch.clamp(zero_point, scheme.qmin, scheme.qmax)
    return scale, zero_point


# For a weight, the range is the tensor's own: its minimum and maximum, over everything
# or per row.
def minmax(x: torch.Tensor, scheme: Scheme) -> tuple[torch.Tensor, torch.Tensor]:
    """`x`'s minimum and maximum: 0-d, or per slice along axis 0 (`[channels]`)."""
    if not scheme.per_channel:
        return x.min(), x.max()
    rows = x.reshape(x.shape[0], -1)  # [channels, rest]
    return rows.min(dim=1).values, rows.max(dim=1).values


# ## Quantise and dequantise
#
# The map itself, with a per-channel scale reshaped to `[channels, 1, ...]` so that it
# broadcasts along axis 0. `torch.round` rounds halves to even, like `std::nearbyint`
# in ATen's `quantize_val` (`aten/src/ATen/native/quantized/AffineQuantizer.cpp`).
# ATen multiplies by the float32 reciprocal $1/s$ instead of dividing by $s$, and so do
# we. It matters in every symmetric row whose largest weight in magnitude is negative:
# it lands on $-127.5$, `x / s` can give exactly that half, which rounds to $-128$ and
# is kept by the clamp, where `x * (1 / s)` gives $-127.49999$ and torch's $-127$. (A
# positive extreme's $128$ is clamped to 127 either way.) The integers are returned
# as `int8` even for int4: a 4-bit type does not exist in
# memory, so `pack_int4` below puts two of them in each byte.
def _broadcast(params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return params.reshape(-1, *([1] * (x.dim() - 1))) if params.dim() else params


def quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, scheme: Scheme
) -> torch.Tensor:
    r"""Integers (`int8`, same shape as `x`) with $\hat x = s (q - z)$."""
    q = grid_index(x, scale, zero_point)
    return torch.clamp(q, scheme.qmin, scheme.qmax).to(torch.int8)


def grid_index(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor
) -> torch.Tensor:
    r"""$\operatorname{round}(x / s) + z$, as floats, before the clamp to the range."""
    scale, zero_point = _broadcast(scale, x), _broadcast(zero_point, x)
    return torch.round(x * (1.0 / scale)) + zero_point


def dequantize(
    q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor
) -> torch.Tensor:
    """The float32 values $s (q - z)$ that the integers `q` stand for."""
    scale, zero_point = _broadcast(scale, q), _broadcast(zero_point, q)
    return (q.to(torch.int32) - zero_point).float() * scale


# Two int4 values share a byte: the first in the low nibble, the second in the high
# one, each as its two's-complement 4 bits. Unpacking sign-extends a nibble $n$ by
# $n - 16$ when $n \ge 8$. An odd count is padded with one zero.
def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack int4 values (an `int8` tensor in $[-8, 7]$) two per byte: `uint8`
    `[ceil(numel / 2)]`."""
    flat = q.flatten().to(torch.uint8) & 0x0F  # two's complement nibbles
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return flat[0::2] | (flat[1::2] << 4)  # [ceil(numel / 2)]


def unpack_int4(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The `int8` tensor of `shape` that `pack_int4` packed."""
    nibbles = torch.stack([packed & 0x0F, packed >> 4], dim=1).flatten()
    values = nibbles.to(torch.int8)
    values = torch.where(values >= 8, values - 16, values)
    return values[: int(np.prod(shape))].reshape(shape)


# ## Calibrating activations
#
# A weight's range is known; an activation's depends on the input. *Calibration* runs
# the float model on a few batches and records each layer input's range. Min–max keeps
# the extreme values ever seen, exactly like torch's `MinMaxObserver.forward`. One
# outlier then stretches the scale for everyone: with 256 levels over a range
# stretched tenfold by a single value, the typical value keeps a tenth of its
# resolution.
class MinMaxCalibrator:
    """Tracks the running minimum and maximum of every tensor passed to `update`."""

    def __init__(self, scheme: Scheme = INT8_ACTIVATION):
        self.scheme = scheme
        self.min_val = torch.tensor(float("inf"))
        self.max_val = torch.tensor(float("-inf"))

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float().cpu()
        self.min_val = torch.minimum(self.min_val, x.min())
        self.max_val = torch.maximum(self.max_val, x.max())

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.min_val, self.max_val

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not torch.isfinite(self.min_val):
            raise ValueError("calibrator: call update() with data before qparams()")
        return qparams(*self.range(), self.scheme)


# The percentile calibrator clips instead: it keeps the values and takes the range
# between the $(100 - p)$-th and $p$-th percentiles, so a handful of outliers is
# clamped and everything else is resolved finely [@nagel2021white]. Keeping every value
# is fine for a calibration set of a few thousand rows; a large model would keep a
# histogram, as torch's `HistogramObserver` does.
class PercentileCalibrator(MinMaxCalibrator):
    """Range from the `percentile`-th and `(100 - percentile)`-th percentiles of all
    values seen."""

    def __init__(self, scheme: Scheme = INT8_ACTIVATION, percentile: float = 99.99):
        super().__init__(scheme)
        if not 50.0 < percentile <= 100.0:
            raise ValueError(
                f"PercentileCalibrator: percentile must lie in (50, 100], "
                f"got {percentile!r}"
            )
        self.percentile = percentile
        self.values: list[torch.Tensor] = []

    def update(self, x: torch.Tensor) -> None:
        super().update(x)
        self.values.append(x.detach().float().cpu().flatten())

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        values = torch.cat(self.values).double()  # [all values]
        q = torch.tensor([100.0 - self.percentile, self.percentile]) / 100.0
        low, high = torch.quantile(values, q.double())
        return low.float(), high.float()


# ## The integer matrix product
#
# For a layer $y = x W^\top + b$ with activations $x \approx s_x (q_x - z_x)$ and
# symmetric per-channel weights $W_{j\cdot} \approx s_j\, q_{W, j\cdot}$,
# $$
# \begin{aligned}
# y_{ij} &\approx s_x s_j \sum_k (q_{x,ik} - z_x)\, q_{W,jk} + b_j \\
# &= s_x s_j \Bigl(\underbrace{\textstyle\sum_k q_{x,ik} q_{W,jk}}_{\text{int8 matmul}}
#   - z_x \textstyle\sum_k q_{W,jk}\Bigr) + b_j .
# \end{aligned}
# $$
# The sum is all integers: int8 times int8 products, accumulated in int32, which cannot
# overflow while $k < 2^{31} / 2^{14} = 131{,}072$. The weight-row sums are computed
# once. Only the final rescale by $s_x s_j$ is in float [@jacob2018quantization].
#
# `torch._int_mm` is PyTorch's int8 × int8 → int32 kernel (`_int_mm` in
# `aten/src/ATen/native/native_functions.yaml`; on CPU it is `_int_mm_out_cpu` in
# `aten/src/ATen/native/LinearAlgebra.cpp`). Ours widens to int32 and uses the general
# integer `matmul`: the same numbers, which the test checks bit for bit, without
# `_int_mm`'s shape rules. Integer `matmul` is a CPU kernel, so the integer models of
# the demo run on the CPU. It is also a generic one, without the blocking and SIMD of
# fbgemm or oneDNN: the benchmarks on this page time it against `torch._int_mm`,
# fbgemm's `quantized.linear` and an fp32 `torch.mm` of the same size. Which of them
# wins depends on the CPU. On an AMD EPYC with AVX-512 VNNI, `_int_mm` and fbgemm both
# ran about 4 times faster than fp32 and ours 2.3 times slower. On an EPYC with AVX2
# alone (the measurements on this page), fbgemm ran 1.4 times faster than fp32, ours
# 3.3 times slower, and `_int_mm` 66 times slower: 8-bit arithmetic is fast where a
# kernel was tuned for the instructions the CPU has, not by virtue of its type.
def int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a @ b` for int8 `a [m, k]` and `b [k, n]`, accumulated exactly in int32."""
    if a.dtype != torch.int8 or b.dtype != torch.int8:
        raise TypeError(f"int_matmul: needs int8 tensors, got {a.dtype} and {b.dtype}")
    return a.to(torch.int32) @ b.to(torch.int32)  # [m, n] int32


# The page draws `Int8Linear` by tracing it with `torch.fx`; `torch.fx.wrap` tells the
# tracer to record `quantize` and `int_matmul` as single steps rather than look inside.
torch.fx.wrap("quantize")
torch.fx.wrap("int_matmul")


class Int8Linear(nn.Module):
    """A linear layer computed in integers: int8 per-channel symmetric weights, int8
    asymmetric input, int32 accumulation, float output."""

    def __init__(
        self, linear: nn.Linear, input_scale: torch.Tensor, input_zero: torch.Tensor
    ):
        super().__init__()
        weight = linear.weight.detach().float().cpu()  # [out, in]
        scale, zero = qparams(*minmax(weight, INT8_WEIGHT), INT8_WEIGHT)
        weight_q = quantize(weight, scale, zero, INT8_WEIGHT)  # [out, in] int8
        self.register_buffer("weight_q", weight_q)
        self.register_buffer("weight_scale", scale)  # [out]
        row_sums = weight_q.sum(1, dtype=torch.int32)  # [out]; int32, not sum's int64
        self.register_buffer("weight_row_sums", row_sums)
        bias = linear.bias.detach().float().cpu()  # [out]
        self.register_buffer("bias", bias)
        self.register_buffer("input_scale", input_scale.reshape(()).float())
        self.register_buffer("input_zero", input_zero.reshape(()).to(torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_q = quantize(x, self.input_scale, self.input_zero, INT8_ACTIVATION)  # [b, in]
        accumulator = int_matmul(x_q, self.weight_q.T)  # [b, out] int32
        accumulator = accumulator - self.input_zero * self.weight_row_sums  # [b, out]
        return accumulator.float() * (self.input_scale * self.weight_scale) + self.bias


# Weight-only int4 keeps the activations in float and stores the weights at half a
# byte each, dequantising them for every product. It saves memory and bandwidth, not
# arithmetic, which is why large language models, whose decoding is bound by reading
# weights, use it.
class Int4WeightOnlyLinear(nn.Module):
    """A linear layer whose weights are stored as packed per-channel symmetric int4."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float().cpu()  # [out, in]
        self.shape = tuple(weight.shape)
        scale, zero = qparams(*minmax(weight, INT4_WEIGHT), INT4_WEIGHT)
        q = quantize(weight, scale, zero, INT4_WEIGHT)  # [out, in] int8 in [-8, 7]
        self.register_buffer("weight_packed", pack_int4(q))  # [out * in / 2] uint8
        self.register_buffer("weight_scale", scale)  # [out]
        self.register_buffer("bias", linear.bias.detach().float().cpu())  # [out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = unpack_int4(self.weight_packed, self.shape)  # [out, in] int8
        weight = dequantize(q, self.weight_scale, torch.zeros_like(self.weight_scale))
        return F.linear(x, weight, self.bias)


# ## Fake quantisation and the straight-through estimator
#
# Training cannot run on integers: rounding has derivative zero almost everywhere. *Fake
# quantisation* keeps float tensors but replaces each by its quantise–dequantise round
# trip $\hat x$, so the forward pass sees exactly the rounding error of the integer
# model. For the backward pass, the *straight-through estimator* pretends rounding is
# the identity [@bengio2013estimating; @jacob2018quantization]:
# $$
# \frac{\partial \hat x}{\partial x} \approx
# \begin{cases}
# 1 & q_{\min} \le \operatorname{round}(x / s) + z \le q_{\max}, \\
# 0 & \text{otherwise (the value was clamped)} .
# \end{cases}
# $$
# The clamped values get no gradient because moving them a little changes nothing. The
# mask looks at the rounded integer, not at $x$ against the range's ends
# $s(q_{\min} - z)$ and $s(q_{\max} - z)$: a value up to half a step beyond an end
# rounds onto it, is not clamped, and keeps its gradient. This is the gradient of
# torch's `fake_quantize_per_tensor_affine` and its per-channel twin
# (`aten/src/ATen/native/quantized/FakeQuantPerTensorAffine.cpp`, which saves the same
# mask in `fake_quantize_per_tensor_affine_cachemask`), and the test compares both
# passes with them, at those half-step edges too.
class FakeQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, scheme):
        unclamped = grid_index(x, scale, zero_point)
        q = torch.clamp(unclamped, scheme.qmin, scheme.qmax)
        ctx.save_for_backward(q == unclamped)  # not clamped
        return dequantize(q.to(torch.int8), scale, zero_point).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        (inside,) = ctx.saved_tensors
        return grad_output * inside, None, None, None


def fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, scheme: Scheme
) -> torch.Tensor:
    r"""$\hat x$, differentiable with the straight-through estimator."""
    return FakeQuantize.apply(x, scale, zero_point, scheme)


# A QAT layer fake-quantises its input with the calibrated activation parameters, held
# fixed, and its weight with parameters recomputed from the current weight at every
# step, exactly as `Int8Linear` will quantise it after training. So the loss that
# training lowers is the loss of the integer model, up to float rounding.
class QATLinear(nn.Linear):
    """`nn.Linear` that trains through fake-quantised int8 inputs and weights."""

    def __init__(self, linear: nn.Linear, input_scale, input_zero):
        super().__init__(linear.in_features, linear.out_features)
        self.load_state_dict(linear.state_dict())
        self.register_buffer("input_scale", input_scale.reshape(()).float())
        self.register_buffer("input_zero", input_zero.reshape(()).to(torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_hat = fake_quantize(x, self.input_scale, self.input_zero, INT8_ACTIVATION)
        scale, zero = qparams(*minmax(self.weight.detach(), INT8_WEIGHT), INT8_WEIGHT)
        weight_hat = fake_quantize(self.weight, scale, zero, INT8_WEIGHT)
        return F.linear(x_hat, weight_hat, self.bias)


# ## Quantising a model
#
# A forward pre-hook on every `nn.Linear` feeds its input to a calibrator while the
# float model runs on the calibration batches; `swap_linears` then replaces each
# linear layer by a module built from it and its input's scale and zero point. It
# works on any `nn.Sequential` of linear layers and element-wise activations.
def calibrate(
    model: nn.Sequential, batches, make_calibrator=MinMaxCalibrator
) -> dict[int, MinMaxCalibrator]:
    """Run `model` on `batches`, recording each `nn.Linear`'s input; returns the
    calibrators by layer index."""
    calibrators = {i: make_calibrator() for i, m in enumerate(model) if _linear(m)}
    hooks = [
        model[i].register_forward_pre_hook(
            lambda module, inputs, c=calibrator: c.update(inputs[0])
        )
        for i, calibrator in calibrators.items()
    ]
    with torch.no_grad():
        for batch in batches:
            model(batch)
    for hook in hooks:
        hook.remove()
    return calibrators


def _linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear)


def swap_linears(model: nn.Sequential, calibrators, make_layer) -> nn.Sequential:
    """A copy of `model` with layer `i` replaced by `make_layer(layer, scale, zero)`."""
    layers = list(copy.deepcopy(model))
    for i, calibrator in calibrators.items():
        layers[i] = make_layer(layers[i], *calibrator.qparams())
    return nn.Sequential(*layers)


# The size of a model is what it stores: every parameter and buffer, at its element
# size. Scales and biases stay float32, zero points and the int8 layer's weight-row sums
# int32, and they are counted too.
def model_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers of `model`."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


# ## Exporting to ONNX QDQ
#
# ONNX represents a quantised model as a float graph with `QuantizeLinear` and
# `DequantizeLinear` nodes ("QDQ") around each operator; a runtime such as ONNX Runtime
# recognises the pattern `DQ → MatMul → Q` and runs it with integer kernels. PyTorch's
# exporter writes `torch.fake_quantize_per_tensor_affine` and
# `fake_quantize_per_channel_affine` as exactly such a pair, so a module that fake-
# quantises with our scales exports as QDQ. Its weights are the dequantised int8
# weights, $s_j q_{W,jk}$, which quantise back to the same integers.
#
# The file stores them as *uint8*, for a reason in the hardware. An x86 CPU without
# the VNNI instructions (most AVX2 machines, and AVX-512 ones before 2019) multiplies
# 8-bit integers with `vpmaddubsw`, which takes uint8 activations times int8 weights
# and adds each *pair* of products in 16 bits, saturating at 32,767. ONNX Runtime uses
# it for int8 weights, and $2 \times 255 \times 127 = 64{,}770$ does not fit. On such
# a machine (an AMD EPYC with AVX2), the int8-weight file of the demo's QAT model gave
# logits off by up to 2.2 and moved 3 of the 359 test digits to another class. For
# uint8 weights the runtime widens both operands to 16 bits before multiplying, which
# cannot saturate. So the file holds the same integers shifted by 128: activations
# $q + 128$ with zero point $z + 128$, weights $q + 128$ with zero point 128, and
# $s\,((q + 128) - (z + 128)) = s\,(q - z)$ changes nothing else. ONNX Runtime's own
# quantiser warns of the same saturation and offers 7-bit weights as its other
# remedy [@onnxruntime2024quantize].
class QDQLinear(nn.Module):
    """The float form of an `Int8Linear` that `torch.onnx.export` writes as QDQ, with
    uint8 activations and weights (the int8 integers plus 128)."""

    def __init__(self, layer: Int8Linear):
        super().__init__()
        zero = torch.zeros_like(layer.weight_scale, dtype=torch.int32)
        self.weight = nn.Parameter(dequantize(layer.weight_q, layer.weight_scale, zero))
        self.bias = nn.Parameter(layer.bias.clone())
        self.register_buffer("weight_scale", layer.weight_scale.clone())
        self.register_buffer("weight_zero", zero + 128)
        self.input_scale = float(layer.input_scale)
        self.input_zero = int(layer.input_zero) + 128

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.fake_quantize_per_tensor_affine(
            x, self.input_scale, self.input_zero, 0, 255
        )
        weight = torch.fake_quantize_per_channel_affine(
            self.weight, self.weight_scale, self.weight_zero, 0, 0, 255
        )
        return F.linear(x, weight, self.bias)


# The exporter stores each weight as float32 followed by a `QuantizeLinear`. The last
# step folds that quantisation: each `QuantizeLinear` whose input is a stored weight is
# removed and its output becomes a uint8 initializer, so the file holds one byte per
# weight, as the QDQ format intends, and the runtime only dequantises.
def export_onnx(model: nn.Sequential, path: Path, n_inputs: int) -> Path:
    """Write `model` (a Sequential of `Int8Linear` and activations) as an ONNX QDQ
    graph with uint8 weights."""
    float_model = nn.Sequential(
        *[QDQLinear(m) if isinstance(m, Int8Linear) else m for m in model]
    ).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    # `dynamo=False` picks the TorchScript exporter, which writes the two fake-quantise
    # calls as QDQ pairs; it warns that it is the older of the two, which we know.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", "You are using the legacy", DeprecationWarning
        )
        torch.onnx.export(
            float_model,
            (torch.zeros(1, n_inputs),),
            str(path),
            dynamo=False,
            opset_version=13,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )
    graph = onnx.load(str(path))
    stored = {init.name: init for init in graph.graph.initializer}
    for node in list(graph.graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] not in stored:
            continue
        weight = numpy_helper.to_array(stored[node.input[0]])  # [out, in]
        scale = numpy_helper.to_array(stored[node.input[1]])  # [out]
        q = np.clip(np.rint(weight / scale[:, None]) + 128, 0, 255).astype(np.uint8)
        graph.graph.initializer.remove(stored[node.input[0]])
        graph.graph.initializer.append(numpy_helper.from_array(q, node.output[0]))
        graph.graph.node.remove(node)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))
    return path


def onnx_logits(path: Path, x: np.ndarray) -> np.ndarray:
    """Run the ONNX model at `path` in ONNX Runtime on float32 inputs `x`."""
    session = onnxruntime.InferenceSession(
        str(path), providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"x": x.astype(np.float32)})[0]


# ## The example
#
# One int8 layer, calibrated on random inputs: the page traces it.
def example():
    """An `Int8Linear` of 16 inputs and 4 outputs and a batch of 8."""
    torch.manual_seed(0)
    linear = nn.Linear(16, 4)
    x = torch.randn(8, 16)  # [8, 16]
    calibrator = MinMaxCalibrator()
    calibrator.update(x)
    return Int8Linear(linear, *calibrator.qparams()), (x,)


# ## The demo
#
# A 64–128–64–10 ReLU MLP trained with Adam on the digits, then four ways to store it.
# PTQ calibrates on the first `--calibration` training rows; QAT starts from the
# trained float weights and fine-tunes through fake quantisation for a few epochs at a
# lower learning rate, then converts exactly as PTQ does.
def make_mlp(hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(64, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden // 2),
        nn.ReLU(),
        nn.Linear(hidden // 2, 10),
    )


def train(model, x, y, epochs, lr, batch_size, seed, desc) -> list[float]:
    """Adam on cross-entropy over shuffled mini-batches; returns the loss per epoch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in tqdm(range(epochs), desc=desc):
        order = torch.randperm(len(x), generator=generator).to(x.device)
        total = 0.0
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]
            loss = F.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
        losses.append(total / len(x))
    return losses


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def save_figures(model, calibrators, x_calib, sizes, accuracies, out: Path) -> None:
    """Write `ranges.png` (the int8 and int4 grids on the first layer's widest weight
    row, and the calibrated ranges of the second layer's input) and
    `size_accuracy.png`."""
    weight = model[0].weight.detach().float().cpu()  # [hidden, 64]
    row = weight[int(weight.abs().amax(1).argmax())]  # [64], the widest row
    fig, axes = figure(panels=2)
    axes[0].hist(row.numpy(), bins=40, color="#bbbbbb", label="fp32 weights")
    for scheme, color in ((INT8_WEIGHT, "#2171b5"), (INT4_WEIGHT, "#d94801")):
        scale, _ = qparams(row.min(), row.max(), scheme)
        levels = scale * torch.arange(scheme.qmin, scheme.qmax + 1)
        axes[0].vlines(
            levels.numpy(), 0, 0.5 if scheme.bits == 8 else 1.5, color=color, lw=0.6
        )
        axes[0].plot([], [], color=color, label=f"int{scheme.bits} levels")
    axes[0].set(title="The widest row of layer 1", xlabel="weight", ylabel="count")
    axes[0].legend(loc="upper right")
    with torch.no_grad():
        hidden = model[1](model[0](x_calib)).flatten().cpu()  # layer 2's input
    minmax_high = calibrators["minmax"][2].range()[1].item()
    percentile_high = calibrators["percentile"][2].range()[1].item()
    axes[1].hist(hidden[hidden > 0].numpy(), bins=60, color="#bbbbbb", log=True)
    axes[1].axvline(minmax_high, color="#2171b5", label="min–max range end")
    axes[1].axvline(percentile_high, color="#d94801", label="99.99th percentile")
    axes[1].set(title="Layer 2's input (ReLU > 0)", xlabel="activation", ylabel="count")
    axes[1].legend(loc="upper right")
    save(
        fig,
        out / "ranges.png",
        caption="Left: the first layer's widest weight row and the int8 (blue) and "
        "int4 (orange) grids a per-channel symmetric scale puts on it. Right: the "
        "positive activations entering the second layer on the calibration set, with "
        "the top of the range chosen by min–max and by the 99.99th percentile.",
    )

    fig, ax = figure()
    largest = max(sizes.values())
    for name in sizes:
        ax.scatter(sizes[name] / 1024, accuracies[name], s=30)
        left = sizes[name] == largest  # its label inside the axes
        ax.annotate(
            name,
            (sizes[name] / 1024, accuracies[name]),
            xytext=(-3 if left else 3, 3),  # above: clear of a point at its height
            textcoords="offset points",
            ha="right" if left else "left",
            va="bottom",
        )
    ax.set(
        title="Accuracy against stored size",
        xlabel="model size (KiB)",
        ylabel="test accuracy",
        xscale="log",
    )
    ax.margins(y=0.15)  # the top label clear of the frame
    save(
        fig,
        out / "size_accuracy.png",
        caption="Test accuracy on the digits against the bytes the model stores, for "
        "the float model, int8 post-training quantisation with min–max and "
        "percentile calibration, int8 quantisation-aware training, and int4 "
        "weight-only storage.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description="Quantise a digits MLP to int8 and int4 "
        "and run it in ONNX Runtime.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--hidden", type=integer(at_least=1), default=128, help="first hidden width"
    )
    parser.add_argument(
        "--epochs", type=integer(at_least=1), default=30, help="float training epochs"
    )
    parser.add_argument(
        "--qat-epochs", type=integer(at_least=1), default=5, help="QAT epochs"
    )
    parser.add_argument(
        "--lr", type=number(above=0), default=3e-3, help="Adam learning rate"
    )
    parser.add_argument(
        "--batch-size", type=integer(at_least=1), default=64, help="mini-batch size"
    )
    parser.add_argument(
        "--calibration",
        type=integer(at_least=1),
        default=256,
        help="training rows used to calibrate",
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="device for float training and QAT (integer models run on the CPU)",
    )
    parser.add_argument(
        "--out", default="out/quantization", help="folder for figures and the model"
    )
    args = parser.parse_args(argv)
    # The layers are tiny: a second thread would only add a handoff to every operation.
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = (torch.tensor(a) for a in digits(seed=args.seed))
    x_train, x_test = x_train.float(), x_test.float()
    device = torch.device(args.device)
    model = make_mlp(args.hidden).to(device)
    x_fit, y_fit = x_train.to(device), y_train.to(device)
    batch, lr = args.batch_size, args.lr
    train(model, x_fit, y_fit, args.epochs, lr, batch, args.seed, "fp32 training")
    model = model.cpu().eval()
    x_calib = x_train[: args.calibration]  # [calibration, 64]
    calibrators = {
        "minmax": calibrate(model, x_calib.split(64)),
        "percentile": calibrate(model, x_calib.split(64), PercentileCalibrator),
    }
    models = {
        "fp32": model,
        "int8 PTQ min-max": swap_linears(model, calibrators["minmax"], Int8Linear),
        "int8 PTQ percentile": swap_linears(
            model, calibrators["percentile"], Int8Linear
        ),
    }

    qat = swap_linears(model, calibrators["minmax"], QATLinear).to(device).train()
    train(qat, x_fit, y_fit, args.qat_epochs, lr / 10, batch, args.seed + 1, "QAT")
    qat = qat.cpu().eval()
    models["int8 QAT"] = nn.Sequential(
        *[
            Int8Linear(m, m.input_scale, m.input_zero)
            if isinstance(m, QATLinear)
            else m
            for m in qat
        ]
    )
    models["int4 weight-only"] = nn.Sequential(
        *[Int4WeightOnlyLinear(m) if _linear(m) else m for m in model]
    )

    accuracies = {name: accuracy(m, x_test, y_test) for name, m in models.items()}
    sizes = {name: model_bytes(m) for name, m in models.items()}
    out = Path(args.out)
    onnx_path = export_onnx(models["int8 QAT"], out / "digits_int8_qdq.onnx", 64)
    onnx_predictions = onnx_logits(onnx_path, x_test.numpy()).argmax(1)  # [n_test]
    onnx_accuracy = float((onnx_predictions == y_test.numpy()).mean())
    with torch.no_grad():
        qat_predictions = models["int8 QAT"](x_test).argmax(1).numpy()  # [n_test]
    onnx_agreement = float((onnx_predictions == qat_predictions).mean())
    save_figures(model, calibrators, x_calib, sizes, accuracies, out)

    for name in models:
        print(f"{name:20s} accuracy {accuracies[name]:.4f}  size {sizes[name]:7d} B")
    print(
        f"onnxruntime int8 QAT accuracy {onnx_accuracy:.4f}  "
        f"file {onnx_path.stat().st_size} B  "
        f"same class as ours for {onnx_agreement:.2%} of the test digits"
    )
    keys = {
        "fp32": "fp32",
        "int8 PTQ min-max": "ptq_minmax",
        "int8 PTQ percentile": "ptq_percentile",
        "int8 QAT": "qat",
        "int4 weight-only": "int4",
    }
    result = {f"accuracy_{keys[n]}": accuracies[n] for n in models}
    result |= {f"bytes_{keys[n]}": float(sizes[n]) for n in models}
    result["accuracy_onnx"] = onnx_accuracy
    result["onnx_agreement"] = onnx_agreement
    result["onnx_file_bytes"] = float(onnx_path.stat().st_size)
    return result


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Quantise the weights per tensor instead of per channel, at int8 and at int4. Which
#    loses more accuracy, and why does the int4 gap grow faster? The left panel of
#    `ranges.png` shows the grid the widest row gets: per tensor, every row gets it.
#    How many of its levels does a row of small weights still use?
# 2. Replace per-channel int4 with *group-wise* int4: one scale per 16 consecutive
#    weights of a row. How many extra bytes do the scales cost, and what does it buy?
# 3. Set `--calibration 8`. Which calibrator suffers more from a small calibration set,
#    and what happens to an activation that exceeds its calibrated range at test time?
# 4. Let QAT learn the activation scales too, as LSQ does: make `input_scale` an
#    `nn.Parameter` and derive its gradient through the straight-through estimator.
