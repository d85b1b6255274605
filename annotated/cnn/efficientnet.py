r"""
---
title: EfficientNet and compound scaling
summary: >-
  MBConv blocks with squeeze-and-excitation and stochastic depth, and B0–B7 built from
  one base configuration by scaling depth, width and resolution together.
time: 25 s
expected:
  metric: accuracy
  short: ["--steps", "150", "--largest", "b0", "--device", "cpu"]
references:
  - key: tan2019efficientnet
    authors: [Mingxing Tan, Quoc V. Le]
    title: "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks"
    year: 2019
    venue: ICML 2019
    arxiv: "1905.11946"
  - key: sandler2018mobilenetv2
    authors:
      - Mark Sandler
      - Andrew Howard
      - Menglong Zhu
      - Andrey Zhmoginov
      - Liang-Chieh Chen
    title: "MobileNetV2: Inverted Residuals and Linear Bottlenecks"
    year: 2018
    venue: CVPR 2018
    arxiv: "1801.04381"
  - key: hu2018squeeze
    authors: [Jie Hu, Li Shen, Gang Sun]
    title: Squeeze-and-Excitation Networks
    year: 2018
    venue: CVPR 2018
    arxiv: "1709.01507"
  - key: huang2016deep
    authors: [Gao Huang, Yu Sun, Zhuang Liu, Daniel Sedra, Kilian Q. Weinberger]
    title: Deep Networks with Stochastic Depth
    year: 2016
    venue: ECCV 2016
    arxiv: "1603.09382"
  - key: ramachandran2017searching
    authors: [Prajit Ramachandran, Barret Zoph, Quoc V. Le]
    title: Searching for Activation Functions
    year: 2017
    venue: arXiv preprint
    arxiv: "1710.05941"
  - key: tpu2019efficientnet
    authors: [Mingxing Tan, The TensorFlow TPU team]
    title: "EfficientNet reference implementation (efficientnet_builder.py)"
    year: 2019
    venue: GitHub, tensorflow/tpu
    url: https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet
worksheet:
  - region: SqueezeExcitation.forward
    hint: >-
      Average x over height and width to [B, C, 1, 1], pass it through fc1, SiLU, fc2
      and a sigmoid to get one gate in (0, 1) per example and channel, and multiply x
      by it.
    tests:
      - test_squeeze_excitation_gates_channels
      - test_mbconv_matches_functional_reference
  - region: stochastic_depth
    hint: >-
      Check p; in eval mode or with p = 0 return x itself. Otherwise draw one Bernoulli
      mask value per example (shape [B, 1, ..., 1]) that keeps it with probability
      1 - p, and return x times the mask divided by 1 - p.
    tests: [test_stochastic_depth_contract]
  - region: MBConv.forward
    hint: >-
      Run the block (expand, depthwise, squeeze-excite, project); when the block keeps
      stride 1 and its width, add the input back to the output passed through
      stochastic depth with the block's drop probability.
    tests: [test_mbconv_matches_functional_reference]
---

A convolutional network can be made bigger in three ways: more layers (depth), more
channels per layer (width), or larger input images (resolution). Each helps on its own
and each saturates on its own: a very deep thin network, or a very wide shallow one,
stops improving long before it stops costing. EfficientNet [@tan2019efficientnet]
observes that the three are not independent (a larger image has more detail, which
wants more layers to grow the receptive field and more channels to hold the finer
patterns) and scales them together with one knob $\varphi$:

$$
\begin{aligned}
\text{depth} &= \alpha^{\varphi}, \quad \text{width} = \beta^{\varphi}, \\
\text{resolution} &= \gamma^{\varphi}, \quad
\alpha \beta^{2} \gamma^{2} \approx 2 .
\end{aligned}
$$

The constraint fixes the cost: a convolution's FLOPs grow linearly with depth but
quadratically with width (input *and* output channels) and with resolution (height *and*
width), so each step of $\varphi$ roughly doubles the FLOPs. A small grid search on the
base network found $\alpha = 1.2$, $\beta = 1.1$, $\gamma = 1.15$.

The base network, B0, is itself found by architecture search. It stacks the inverted
residual block of MobileNetV2 [@sandler2018mobilenetv2] ("MBConv": expand the channels,
filter each channel on its own, project back) with squeeze-and-excitation
[@hu2018squeeze] in the middle, SiLU activations [@ramachandran2017searching], and
stochastic depth [@huang2016deep] on the residual branches.

This chapter builds those parts from `nn.Conv2d`, `nn.BatchNorm2d` and `nn.Linear`,
then B0–B7 from one table of seven stages. The test holds the result to torchvision's
published figures: B0 has exactly 5,288,548 parameters and about 0.39 billion
multiply-adds on a 224 × 224 image, and every one of B1–B7 matches its published
parameter count too. The demo trains a small scaled-down member of the family on
handwritten digits.
"""

import argparse
import copy
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from annotated.data import digits, integer, number, torch_device
from annotated.figures import figure, save

# ## Conv, batch norm, activation
#
# Every convolution in the network is followed by batch norm and, except for the last
# one of each block, by SiLU, $\operatorname{silu}(x) = x \, \sigma(x)$. The convolution
# has no bias, since batch norm's shift would cancel it. Padding $(k-1)/2$ keeps the
# size at stride 1 and halves it (rounding up) at stride 2. `groups` is the number of
# independent channel groups: `groups=channels` makes the convolution *depthwise*, one
# $k \times k$ filter per channel and no mixing across channels.


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) → BatchNorm2d → optional SiLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        activation: bool = True,
    ):
        layers = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding=(kernel_size - 1) // 2,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
        ]
        if activation:
            layers.append(nn.SiLU())
        super().__init__(*layers)


# ## Squeeze and excitation
#
# A convolution sees a small window; it cannot know what the rest of the image looks
# like. Squeeze-and-excitation [@hu2018squeeze] gives each block that global view at
# almost no cost. *Squeeze* averages each channel over the whole image,
# $s_c = \frac{1}{HW} \sum_{i,j} x_{c,ij}$; *excite* passes $s$ through a two-layer
# bottleneck and a sigmoid to get one gate per channel in $(0, 1)$:
#
# $$
# \begin{aligned}
# g &= \sigma\big(W_2 \operatorname{silu}(W_1 s + b_1) + b_2\big), \\
# y_{c,ij} &= g_c \, x_{c,ij} .
# \end{aligned}
# $$
#
# EfficientNet sizes the bottleneck from the *block's* input channels (a quarter of
# them), not from the expanded ones the gate acts on. The two layers are 1 × 1
# convolutions, which on a $[B, C, 1, 1]$ tensor are the same as linear layers but keep
# the tensor four-dimensional.


class SqueezeExcitation(nn.Module):
    """Channel gates from global pooling: `x * sigmoid(fc2(silu(fc1(mean))))`."""

    def __init__(self, channels: int, squeeze_channels: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)  # [B, C, 1, 1]
        g = torch.sigmoid(self.fc2(F.silu(self.fc1(s))))  # [B, C, 1, 1]
        return x * g  # [B, C, H, W]


# ## Stochastic depth
#
# A residual block computes $x + f(x)$. Stochastic depth [@huang2016deep] drops the
# branch $f$ for a whole example at random during training, so each example trains a
# shallower network and the deep one at test time is an ensemble of them. Dropping with
# probability $p$ and scaling the kept branches by $1/(1-p)$ keeps the expected output
# equal to the test-time one:
#
# $$
# \begin{aligned}
# m_b &\sim \operatorname{Bernoulli}(1 - p), \\
# y_b &= x_b + \frac{m_b}{1-p} f(x)_b .
# \end{aligned}
# $$
#
# One mask value per example (the "row" mode), broadcast over channels and pixels.
# The function checks its arguments; it is the first public piece whose misuse would
# pass silently (a $p$ of 1 divides by zero), so the lesson's one checker comes here.


def check_range(name: str, value, low: float, high: float, *, integer: bool = False):
    """Raise if `value` is not a number in `[low, high]` (an int when `integer`)."""
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = "an int" if integer else "a number"
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value!r}")


def stochastic_depth(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Zero each example of `x` with probability `p` and scale survivors by 1/(1-p)."""
    check_range("p", p, 0.0, 0.999)
    if not training or p == 0.0:
        return x
    keep = 1.0 - p
    mask = torch.empty(x.shape[0], *([1] * (x.ndim - 1)), device=x.device)
    mask = mask.bernoulli_(keep).to(x.dtype)  # [B, 1, 1, 1]
    return x * mask / keep


# ## The MBConv block
#
# The inverted residual [@sandler2018mobilenetv2] reverses ResNet's bottleneck: the
# residual connects the *thin* ends, and the block widens inside.
#
# 1. **Expand**: a 1 × 1 convolution multiplies the channels by the expand ratio $t$
#    (1 or 6 in B0; skipped when $t = 1$).
# 2. **Depthwise**: a $k \times k$ depthwise convolution, $k \in \{3, 5\}$, at the
#    block's stride. It costs $k^2$ multiply-adds per output instead of $k^2 C$.
# 3. **Squeeze-and-excitation** on the wide tensor.
# 4. **Project**: a 1 × 1 convolution back to the output channels, with *no*
#    activation: the thin tensor is a linear bottleneck, and a ReLU-like function there
#    would throw information away.
#
# When the stride is 1 and the channels match, the input is added back, through
# stochastic depth. In PyTorch the depthwise convolution is an ordinary `conv2d` call
# with `groups == channels`; `select_conv_backend` in
# `aten/src/ATen/native/Convolution.cpp` sends it to a dedicated depthwise kernel
# where one exists (on CUDA, `conv_depthwise2d` in
# `aten/src/ATen/native/cuda/DepthwiseConv2d.cu`).


@dataclass(frozen=True)
class Stage:
    """One row of the base table: `layers` MBConv blocks with the same settings."""

    expand_ratio: int
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    layers: int


class MBConv(nn.Module):
    """Expand 1×1 → depthwise k×k → squeeze-excite → project 1×1, plus residual."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expand_ratio: int,
        kernel: int,
        stride: int,
        drop_p: float = 0.0,
    ):
        super().__init__()
        wide = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        self.drop_p = drop_p
        layers = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_channels, wide, 1))
        layers += [
            ConvBNAct(wide, wide, kernel, stride, groups=wide),
            SqueezeExcitation(wide, max(1, in_channels // 4)),
            ConvBNAct(wide, out_channels, 1, activation=False),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)  # [B, out, H / stride, W / stride]
        if self.use_residual:
            y = x + stochastic_depth(y, self.drop_p, self.training)
        return y


# ## The base table and compound scaling
#
# B0 is seven stages of MBConv blocks between a 3 × 3 stride-2 stem (32 channels) and a
# 1 × 1 head (1,280 channels), then global average pooling, dropout and a linear
# classifier (Table 1 of [@tan2019efficientnet]). The stem and four of the stages
# halve the resolution, so a 224 × 224 image leaves the last stage at 7 × 7.
#
# Scaling by width $w$ and depth $d$ turns each row into a bigger one:
#
# - **width**: every channel count $c$ becomes $w c$ rounded to the nearest multiple of
#   8 (hardware likes channel counts in multiples of 8), but never below $0.9\,wc$;
# - **depth**: every stage's $n$ blocks become $\lceil d n \rceil$.
#
# The rounding is why a formula alone does not pin down a model: B4's width 1.4 turns
# the stem's 32 channels into 44.8, which rounds to 48.


B0_STAGES = (
    Stage(1, 3, 1, 32, 16, 1),  # 112 × 112 at 224 input
    Stage(6, 3, 2, 16, 24, 2),  # 56 × 56
    Stage(6, 5, 2, 24, 40, 2),  # 28 × 28
    Stage(6, 3, 2, 40, 80, 3),  # 14 × 14
    Stage(6, 5, 1, 80, 112, 3),  # 14 × 14
    Stage(6, 5, 2, 112, 192, 4),  # 7 × 7
    Stage(6, 3, 1, 192, 320, 1),  # 7 × 7
)
ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15


def round_channels(channels: float, divisor: int = 8) -> int:
    """Nearest multiple of `divisor`, but at least 90 % of `channels`."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * channels:
        rounded += divisor
    return rounded


def round_layers(layers: int, depth: float) -> int:
    """Blocks in a stage of `layers` base blocks at depth multiplier `depth`."""
    return int(math.ceil(layers * depth))


# The formula with $\varphi$ is the *idea*; the released models B1–B7 use the rounded
# coefficients of the reference implementation [@tpu2019efficientnet], tabled below
# with the dropout rate before the classifier. `compound_scaling(phi)` gives the pure
# formula so the two can be compared: their widths agree to within about 10 %
# throughout, but the formula grows faster in depth than the released models do
# (1.73 against 1.4 at B3, 3.58 against 3.1 at B7).


def compound_scaling(phi: float) -> tuple[float, float, int]:
    """(width, depth, resolution) from the formula: β^φ, α^φ, 224·γ^φ rounded."""
    check_range("phi", phi, 0.0, 10.0)
    return BETA**phi, ALPHA**phi, int(round(224 * GAMMA**phi))


# name: (width, depth, resolution, dropout)
VARIANTS = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}


# ## The network
#
# `EfficientNet` takes the base table and the two multipliers and builds everything
# else. The stochastic-depth probability rises linearly with the block's position,
# from 0 at the first block towards `stochastic_depth` (0.2): block $i$ of $N$,
# counting from 0, gets $0.2\,i/N$, so B0's last block ($i = 15$ of 16) gets
# $0.2 \cdot 15/16 = 0.1875$. Early blocks compute features every later block needs,
# so they are dropped least [@huang2016deep]. The head has $4 \times$ the last stage's
# channels (1,280 in B0). `in_channels`, `num_classes` and `stem_stride` are there for
# small inputs: the digits demo feeds 1-channel 8 × 8 images and keeps the stem at
# stride 1.


class EfficientNet(nn.Module):
    """EfficientNet from a stage table scaled by `width` and `depth`."""

    def __init__(
        self,
        width: float = 1.0,
        depth: float = 1.0,
        *,
        stages: tuple[Stage, ...] = B0_STAGES,
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.2,
        stochastic_depth: float = 0.2,
        stem_stride: int = 2,
    ):
        super().__init__()
        check_range("width", width, 0.01, 10.0)
        check_range("depth", depth, 0.01, 10.0)
        check_range("num_classes", num_classes, 1, 1_000_000, integer=True)
        check_range("in_channels", in_channels, 1, 1_000_000, integer=True)
        check_range("dropout", dropout, 0.0, 0.999)
        check_range("stochastic_depth", stochastic_depth, 0.0, 0.999)
        check_range("stem_stride", stem_stride, 1, 4, integer=True)
        stem = round_channels(stages[0].in_channels * width)
        layers = [ConvBNAct(in_channels, stem, 3, stem_stride)]
        total = sum(round_layers(s.layers, depth) for s in stages)
        index = 0
        for s in stages:
            c_in = round_channels(s.in_channels * width)
            c_out = round_channels(s.out_channels * width)
            blocks = []
            for i in range(round_layers(s.layers, depth)):
                p = stochastic_depth * index / total
                stride = s.stride if i == 0 else 1
                blocks.append(MBConv(c_in, c_out, s.expand_ratio, s.kernel, stride, p))
                c_in = c_out
                index += 1
            layers.append(nn.Sequential(*blocks))
        head = 4 * c_out
        layers.append(ConvBNAct(c_out, head, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(head, num_classes)
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """He-normal (fan-out) convolutions, unit batch norm, small uniform linear."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # [B, head, H / 32, W / 32] with stem stride 2
        x = self.pool(x).flatten(1)  # [B, head]
        return self.classifier(x)  # [B, num_classes]


def efficientnet(name: str, num_classes: int = 1000) -> tuple[EfficientNet, int]:
    """One of B0–B7 by name ("b0" … "b7"), with its input resolution."""
    if name not in VARIANTS:
        raise ValueError(f"name must be one of {sorted(VARIANTS)}, got {name!r}")
    width, depth, resolution, dropout = VARIANTS[name]
    model = EfficientNet(width, depth, num_classes=num_classes, dropout=dropout)
    return model, resolution


# ## Counting parameters and FLOPs
#
# Parameters are summed from the modules. FLOPs are counted by running the model once
# under `torch.utils.flop_counter.FlopCounterMode`, which intercepts every ATen call and
# adds a formula per operator (`conv_flop` and `mm_flop` in
# `torch/utils/flop_counter.py`) counting 2 FLOPs per multiply-add of the
# convolutions and matrix products; elementwise work is not counted, matching how the
# papers count. On the `meta` device the tensors have shapes but no storage, so even
# B7 at 600 × 600 is counted in a fraction of a second without computing anything; the
# count runs on a meta copy, leaving the model where it was.


def count_parameters(model: nn.Module) -> int:
    """The number of trainable scalars."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, resolution: int, in_channels: int = 3) -> float:
    """Multiply-adds of one forward pass on a `resolution`² image (FLOPs / 2)."""
    check_range("resolution", resolution, 1, 10_000, integer=True)
    meta = copy.deepcopy(model).to("meta").eval()
    x = torch.empty(1, in_channels, resolution, resolution, device="meta")
    with FlopCounterMode(display=False) as counter:
        meta(x)
    return counter.get_total_flops() / 2


# ## The example
#
# The small model the demo trains: a quarter of the base width and depth, on
# 1 × 8 × 8 digit images. It has seven MBConv blocks (one per stage) instead of
# sixteen, and about 127 thousand parameters.


def digits_model() -> EfficientNet:
    """A scaled-down EfficientNet for 8 × 8 single-channel digits."""
    return EfficientNet(
        0.25,
        0.25,
        num_classes=10,
        in_channels=1,
        dropout=0.1,
        stochastic_depth=0.1,
        stem_stride=1,
    )


def example():
    """The digits model in eval mode on two 8 × 8 images: `fn(*args)` runs it."""
    torch.manual_seed(0)
    model = digits_model().eval()
    x = torch.randn(2, 1, 8, 8)  # [batch, channels, height, width]
    return model, (x,)


# ## The demo
#
# The demo first tabulates the family: for each of B0–B7 its coefficients, the pure
# compound-scaling formula at $\varphi = 0 \ldots 7$ beside them, and its parameters and
# multiply-adds, counted on the meta device. Then it trains the digits model with AdamW
# and a cosine learning rate and reports test accuracy.


def family_table(largest: str = "b7") -> list[dict]:
    """Parameters and MACs of B0 up to `largest`, with the formula's coefficients."""
    rows = []
    for phi, (name, (width, depth, resolution, _)) in enumerate(VARIANTS.items()):
        if phi > list(VARIANTS).index(largest):
            break
        with torch.device("meta"):
            model, _ = efficientnet(name)
        formula = compound_scaling(phi)
        rows.append(
            {
                "name": name,
                "width": width,
                "depth": depth,
                "resolution": resolution,
                "formula": formula,
                "params": count_parameters(model),
                "macs": count_macs(model, resolution),
            }
        )
    return rows


def train_digits(
    steps: int, batch_size: int, lr: float, seed: int, device: str
) -> tuple[nn.Module, list[float], float]:
    """Train `digits_model()`; return it, the loss per step and the test accuracy."""
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = digits()
    x_train = torch.tensor(x_train, dtype=torch.float32, device=device)
    x_train = x_train.view(-1, 1, 8, 8)  # [n_train, 1, 8, 8]
    y_train = torch.tensor(y_train, device=device)
    x_test = torch.tensor(x_test, dtype=torch.float32, device=device).view(-1, 1, 8, 8)
    y_test = torch.tensor(y_test, device=device)
    model = digits_model().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in tqdm(range(steps), desc="digits", leave=False):
        index = torch.randint(len(x_train), (batch_size,), generator=generator)
        index = index.to(device)
        loss = F.cross_entropy(model(x_train[index]), y_train[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return model, losses, accuracy


def plot(rows: list[dict], losses: list[float], out: Path) -> None:
    """Save the family's cost against φ and the digits training loss."""
    fig, (cost, curve) = figure(panels=2)
    phi = np.arange(len(rows))
    cost.semilogy(phi, [r["macs"] / 1e9 for r in rows], "o-", label="GMACs")
    cost.semilogy(phi, [r["params"] / 1e6 for r in rows], "s-", label="M params")
    cost.semilogy(phi, 0.39 * 2.0**phi, "k--", label=r"$0.39 \cdot 2^{\varphi}$")
    cost.set_xticks(phi, [r["name"].upper() for r in rows])
    cost.set_xlabel(r"model ($\varphi$)")
    cost.set_title("EfficientNet family")
    cost.legend()
    curve.plot(losses, lw=0.8)
    curve.set_yscale("log")
    curve.set_xlabel("step $k$")
    curve.set_ylabel("cross-entropy")
    curve.set_title("small EfficientNet on digits")
    save(
        fig,
        out / "efficientnet.png",
        caption=(
            "Left: multiply-adds and parameters of B0–B7 against the doubling per "
            "step of phi that compound scaling aims for. Right: training loss of the "
            "scaled-down model on 8×8 digits."
        ),
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Tabulate B0–B7, train the small model on digits, save the figure."""
    parser = argparse.ArgumentParser(
        description="EfficientNet B0–B7 sizes, and a small EfficientNet on digits.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--steps", type=integer(at_least=1), default=300, help="training steps"
    )
    parser.add_argument(
        "--batch-size", type=integer(at_least=1), default=64, help="mini-batch size"
    )
    parser.add_argument(
        "--lr", type=number(above=0), default=1e-2, help="peak learning rate"
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--largest",
        default="b7",
        choices=list(VARIANTS),
        help="largest member of the family to count",
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to train on",
    )
    parser.add_argument(
        "--out", default="out/efficientnet", help="folder for the figures"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    rows = family_table(args.largest)
    print("model  width depth  res | formula w    d   res |   params    GMACs")
    for r in rows:
        fw, fd, fr = r["formula"]
        print(
            f"{r['name']:5s}  {r['width']:.1f}   {r['depth']:.1f}  {r['resolution']:4d}"
            f" |       {fw:.2f} {fd:.2f} {fr:4d}"
            f" | {r['params']:>10,d} {r['macs'] / 1e9:7.2f}"
        )
    model, losses, accuracy = train_digits(
        args.steps, args.batch_size, args.lr, args.seed, args.device
    )
    plot(rows, losses, out)
    print(f"digits model: {count_parameters(model):,d} parameters")
    print(f"accuracy {accuracy:.3f}")
    return {
        "accuracy": accuracy,
        "b0_params": float(rows[0]["params"]),
        "b0_gmacs": rows[0]["macs"] / 1e9,
    }


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Build B0 with the squeeze-and-excitation gates replaced by the identity. How many
#    parameters and multiply-adds does SE cost, as a fraction of the whole?
# 2. Train the digits model with `stochastic_depth=0` and with `0.5`, several seeds
#    each. Does the test accuracy change more than the seed-to-seed spread?
# 3. Scale the digits model by width alone, by depth alone, and by both with the same
#    multiply-add budget (use `count_macs`). Which reaches the best accuracy?
# 4. `compound_scaling(7)` gives a larger model than the released B7. Which of width,
#    depth and resolution differs most, and what does that do to the FLOPs?
