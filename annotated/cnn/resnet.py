r"""
---
title: ResNet
summary: >-
  BasicBlock, Bottleneck and the ResNet-18/34/50/101 builders, matched to torchvision's
  published parameter counts and FLOPs, and the degradation problem that residual
  connections remove, reproduced on digits.
time: 30 s
expected:
  metric: residual_26_loss
  seeds: 5
  short:
    ["--skip-counts", "--blocks", "1", "4", "--steps", "100", "--device", "cpu"]
references:
  - key: he2016deep
    authors: [Kaiming He, Xiangyu Zhang, Shaoqing Ren, Jian Sun]
    title: Deep Residual Learning for Image Recognition
    year: 2016
    venue: CVPR 2016
    arxiv: "1512.03385"
  - key: he2016identity
    authors: [Kaiming He, Xiangyu Zhang, Shaoqing Ren, Jian Sun]
    title: Identity Mappings in Deep Residual Networks
    year: 2016
    venue: ECCV 2016
    arxiv: "1603.05027"
  - key: ioffe2015batch
    authors: [Sergey Ioffe, Christian Szegedy]
    title: >-
      Batch Normalization: Accelerating Deep Network Training by Reducing Internal
      Covariate Shift
    year: 2015
    venue: ICML 2015
    arxiv: "1502.03167"
  - key: goyal2017accurate
    authors:
      - Priya Goyal
      - Piotr Dollár
      - Ross Girshick
      - Pieter Noordhuis
      - Lukasz Wesolowski
      - Aapo Kyrola
      - Andrew Tulloch
      - Yangqing Jia
      - Kaiming He
    title: "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour"
    year: 2017
    venue: arXiv preprint
    arxiv: "1706.02677"
worksheet:
  - region: BasicBlock.forward
    hint: >-
      conv1, bn1, relu; conv2, bn2. A plain block (residual False) returns the relu of
      that; a residual block adds the shortcut (x itself, or downsample(x) when the
      block changes stride or width) before the final relu.
    tests: [test_block_matches_functional, test_plain_block_has_no_shortcut]
  - region: Bottleneck.forward
    hint: >-
      Three convolutions, each followed by its batch norm: 1×1 to squeeze, 3×3 (which
      carries the stride), 1×1 to expand by four; relu after the first two. Add the
      shortcut (x or downsample(x)) unless the block is plain, then a last relu.
    tests: [test_block_matches_functional]
---

Stacking more layers should never hurt a network's *training* error: the deeper net
could copy the shallower one and set its extra layers to the identity. Yet He et al.
found that a 56-layer plain convolutional network trains to a higher error than a
20-layer one, with batch normalisation [@ioffe2015batch] in place, so not for vanishing
gradients alone [@he2016deep]. They called it the *degradation problem*: the identity is
hard for a stack of conv–BN–ReLU layers to learn. Their fix is to make it the default:
each block computes a residual $F(x)$ and adds its input back,

$$
y = \operatorname{relu}\bigl(F(x) + x\bigr),
$$

so that a block with $F = 0$ passes its input through. This lesson builds the two blocks
of the paper, `BasicBlock` and `Bottleneck`, and the four ImageNet networks
torchvision ships, checks their size and cost against torchvision's published figures,
and then reproduces the degradation problem on the 8×8 digits: plain nets get worse
with depth, and residual ones
of the same depth stay below them, far below from 14 layers on.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from annotated.data import digits, integer, number, torch_device
from annotated.figures import figure, save


# ## Two building layers
#
# Every convolution in a ResNet is followed by batch normalisation, so it carries no
# bias (BN's shift $\beta$ would cancel it). The 3×3 convolution pads by one so that, at
# stride 1, it keeps the spatial size; the 1×1 convolution changes only the channel
# count. Both are `nn.Conv2d`, which lands in ATen's `at::native::_convolution`
# (`aten/src/ATen/native/Convolution.cpp`) and from there in a backend kernel.
def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)


# ## The basic block
#
# Two 3×3 conv–BN pairs with a ReLU between them, and the input added before the last
# ReLU [@he2016deep]:
#
# $$
# \begin{aligned}
# F(x) &= \mathrm{BN}_2\bigl(W_2 * \operatorname{relu}(\mathrm{BN}_1(W_1 * x))\bigr)
# \\ y &= \operatorname{relu}\bigl(F(x) + S(x)\bigr)
# \end{aligned}
# $$
#
# The shortcut $S$ is the identity when the shapes agree. When the block halves the
# resolution (stride 2) and doubles the channels, $S$ is a 1×1 convolution of the same
# stride followed by BN, the paper's "option B" projection, and torchvision's
# `downsample`. The attribute names (`conv1`, `bn1`, `downsample.0`...) are
# torchvision's, so its checkpoints would load into these modules.
#
# `residual=False` drops the addition and gives the *plain* block of the paper's
# control experiment: same layers, same parameters, no shortcut.
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        residual: bool = True,
    ):
        super().__init__()
        self.residual = residual
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = None
        if residual and (stride != 1 or in_channels != channels):
            self.downsample = nn.Sequential(
                conv1x1(in_channels, channels, stride), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(
            self.bn1(self.conv1(x))
        )  # [batch, channels, h / stride, w / stride]
        out = self.bn2(self.conv2(out))  # [batch, channels, h / stride, w / stride]
        if not self.residual:
            return F.relu(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)  # [batch, channels, h / stride, w / stride]


# ## The bottleneck block
#
# For ResNet-50 and deeper, two 3×3 convolutions at full width cost too much. The
# bottleneck squeezes the channels with a 1×1 convolution, runs the 3×3 on the narrow
# tensor, and expands by `expansion = 4` with another 1×1:
#
# $$
# \begin{aligned}
# F(x) &= \mathrm{BN}_3\bigl(W_3 * \operatorname{relu}(\mathrm{BN}_2(
# \\ &\quad W_2 * \operatorname{relu}(\mathrm{BN}_1(W_1 * x))))\bigr)
# \end{aligned}
# $$
#
# A block of width $c$ and input $4c$ costs $(4c \cdot c + 9c^2 + c \cdot 4c) = 17c^2$
# multiply–adds per pixel, against $2 \cdot 9 \cdot (4c)^2 = 288c^2$ for a basic block
# at the same $4c$ channels. The stride sits on the 3×3 convolution, not on the first
# 1×1 as in the paper: this is "ResNet v1.5", torchvision's choice since
# [@goyal2017accurate], and the one its 4.09 GFLOPs figure describes.
class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        residual: bool = True,
    ):
        super().__init__()
        self.residual = residual
        out_channels = channels * self.expansion
        self.conv1 = conv1x1(in_channels, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = conv1x1(channels, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if residual and (stride != 1 or in_channels != out_channels):
            self.downsample = nn.Sequential(
                conv1x1(in_channels, out_channels, stride),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # [batch, c, h, w]
        out = F.relu(self.bn2(self.conv2(out)))  # [batch, c, h / stride, w / stride]
        out = self.bn3(self.conv3(out))  # [batch, 4c, h / stride, w / stride]
        if not self.residual:
            return F.relu(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)  # [batch, 4c, h / stride, w / stride]


# ## Checking the input
#
# A ResNet takes a batch of images `[batch, channels, height, width]`. A 3-D tensor (one
# image without its batch axis) or the wrong channel count would otherwise fail deep in
# ATen with a message about weights; this check names the argument instead. It is the
# one checker of the lesson, used by every public entry point.
def check_images(x: object, channels: int, name: str = "x") -> None:
    if isinstance(x, torch.fx.Proxy):  # torch.fx tracing: no shapes to check
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(
            f"{name} must be [batch, {channels}, height, width], got {list(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")


# ## The ImageNet network
#
# The stem turns a 224×224 image into 56×56 features cheaply: a 7×7 stride-2
# convolution to 64 channels and a 3×3 stride-2 max-pool. Four stages follow, at 56, 28,
# 14 and 7 pixels with 64, 128, 256 and 512 block widths; each stage after the first
# halves the resolution in its first block. Global average pooling and one linear layer
# give the 1000 logits. A network is its block type and its four stage lengths.
#
# The initialisation is torchvision's: He-normal (fan-out) for the convolutions, BN at
# $\gamma = 1, \beta = 0$. `zero_init_residual` sets the *last* BN's $\gamma$ of every
# block to zero, so that every block without a projection shortcut starts as the
# identity [@goyal2017accurate]: the whole network then starts as stem, pool, the
# projection shortcuts and classifier.
class ResNet(nn.Module):
    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        num_classes: int = 1000,
        in_channels: int = 3,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        width = 64
        stages = []
        for index, (channels, count) in enumerate(zip([64, 128, 256, 512], layers)):
            stride = 1 if index == 0 else 2
            blocks = [block(width, channels, stride)]
            width = channels * block.expansion
            blocks += [block(width, channels) for _ in range(count - 1)]
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(width, num_classes)
        initialise(self, zero_init_residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, self.in_channels)
        x = F.relu(self.bn1(self.conv1(x)))  # [batch, 64, h / 2, w / 2]
        x = self.maxpool(x)  # [batch, 64, h / 4, w / 4]
        x = self.layer1(x)  # [batch, 64 e, h / 4, w / 4]
        x = self.layer2(x)  # [batch, 128 e, h / 8, w / 8]
        x = self.layer3(x)  # [batch, 256 e, h / 16, w / 16]
        x = self.layer4(x)  # [batch, 512 e, h / 32, w / 32]
        x = x.mean(dim=(2, 3))  # [batch, 512 e]
        return self.fc(x)  # [batch, num_classes]


def initialise(model: nn.Module, zero_init_residual: bool) -> None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    if zero_init_residual:
        for module in model.modules():
            if isinstance(module, Bottleneck):
                nn.init.zeros_(module.bn3.weight)
            elif isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)


# ## The four builders
#
# The stage lengths are the paper's Table 1 [@he2016deep]. Depth counts the weighted
# layers on the main path: ResNet-18 is $1 + 2(2+2+2+2) + 1$, ResNet-50 is
# $1 + 3(3+4+6+3) + 1$.
ARCHITECTURES = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
}


def resnet(depth: int, num_classes: int = 1000, **kwargs) -> ResNet:
    if depth not in ARCHITECTURES:
        raise ValueError(f"depth must be one of {sorted(ARCHITECTURES)}, got {depth!r}")
    block, layers = ARCHITECTURES[depth]
    return ResNet(block, layers, num_classes, **kwargs)


def resnet18(**kwargs) -> ResNet:
    return resnet(18, **kwargs)


def resnet34(**kwargs) -> ResNet:
    return resnet(34, **kwargs)


def resnet50(**kwargs) -> ResNet:
    return resnet(50, **kwargs)


def resnet101(**kwargs) -> ResNet:
    return resnet(101, **kwargs)


# ## Counting parameters and FLOPs
#
# Parameters are every trainable tensor's elements; BN's running statistics are
# buffers and do not count. torchvision publishes 11,689,512 for ResNet-18 and
# 25,557,032 for ResNet-50, and the test checks all four networks to the last digit.
#
# FLOPs come from `torch.utils.flop_counter.FlopCounterMode`, which intercepts each ATen
# operator and applies a formula registered for it (`conv_flop` and `addmm_flop` in
# `torch/utils/flop_counter.py`). A convolution with output $[N, C_o, H_o, W_o]$ and a
# $C_i \times k \times k$ kernel does $N C_o H_o W_o C_i k^2$ multiply–adds, and the
# counter reports **two FLOPs per multiply–add**. The figures published for ResNets
# (1.81 G for ResNet-18, 4.09 G for ResNet-50 at 224×224) count multiply–adds, so
# `count_multiply_adds` halves the counter's total. BN, ReLU, pooling and the
# additions are not counted by either: they are a fraction of a percent.
def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_multiply_adds(model: ResNet, resolution: int = 224) -> int:
    x = torch.zeros(1, model.in_channels, resolution, resolution)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


# ## The degradation experiment
#
# The paper's CIFAR networks [@he2016deep] are sized for small images and fit the 8×8
# digits: a 3×3 stem convolution to `width` channels, then three stages of $n$ basic
# blocks at 8×8, 4×4 and 2×2 with `width`, `2 width` and `4 width` channels, global
# pooling and a linear classifier. That is $6n + 2$ weighted layers. The plain variant
# uses the same blocks with `residual=False`; its stage-entry blocks then have no
# projection, so it has slightly fewer parameters, never more.
class DigitsNet(nn.Module):
    def __init__(self, blocks: int, residual: bool, width: int = 16):
        super().__init__()
        if not isinstance(blocks, int) or blocks < 1:
            raise ValueError(f"blocks must be a positive int, got {blocks!r}")
        self.depth = 6 * blocks + 2
        self.stem = nn.Sequential(conv3x3(1, width), nn.BatchNorm2d(width), nn.ReLU())
        layers = []
        channels = width
        for index, stage_width in enumerate([width, 2 * width, 4 * width]):
            for position in range(blocks):
                stride = 2 if index > 0 and position == 0 else 1
                layers.append(BasicBlock(channels, stage_width, stride, residual))
                channels = stage_width
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, 10)
        initialise(self, zero_init_residual=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, 1)
        x = self.stem(x)  # [batch, width, 8, 8]
        x = self.blocks(x)  # [batch, 4 width, 2, 2]
        return self.fc(x.mean(dim=(2, 3)))  # [batch, 10]


# Each net trains with the paper's recipe scaled down: SGD with momentum 0.9 and weight
# decay, the same mini-batches for every net, a fixed number of steps. The measure is
# the *training* loss, averaged over the last tenth of the steps, because degradation
# is an optimisation failure, not overfitting: the deep plain net fits its own training
# data worse.
def train_digits(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> list[float]:
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4
    )
    generator = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    for _ in range(steps):
        index = torch.randint(len(x), (batch_size,), generator=generator)
        loss = F.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# ## The example
#
# A ResNet-18 with one input channel and ten classes on a batch of two 32×32 images:
# small enough to trace in a moment, the whole ImageNet structure all the same.
def example():
    torch.manual_seed(0)
    model = resnet18(num_classes=10, in_channels=1).eval()
    x = torch.randn(2, 1, 32, 32)
    return model, (x,)


# ## Demo
#
# First the four ImageNet networks: parameters and multiply–adds at 224×224, printed
# beside torchvision's figures. Then the experiment: plain and residual `DigitsNet`s
# at each depth, trained on the same batches from the same seed. The figure shows the
# training loss curves and the final loss against depth; the paper's Figure 1 and
# Figure 6, in miniature.
def smoothed(values: list[float], window: int) -> np.ndarray:
    kernel = np.ones(window) / window
    return np.convolve(np.asarray(values), kernel, mode="valid")


def plot_degradation(
    curves: dict[tuple[str, int], list[float]], depths: list[int], out: Path
) -> None:
    fig, (left, right) = figure(panels=2)
    colours = {"plain": "tab:red", "residual": "tab:blue"}
    window = max(1, len(next(iter(curves.values()))) // 20)
    for (kind, depth), losses in curves.items():
        shade = 0.35 + 0.65 * depths.index(depth) / max(1, len(depths) - 1)
        left.plot(
            smoothed(losses, window),
            color=colours[kind],
            alpha=shade,
            label=f"{kind}-{depth}",
        )
    left.set_yscale("log")
    left.set_xlabel("step $k$")
    left.set_ylabel("training loss (smoothed)")
    left.legend(ncols=2, loc="lower left")  # every curve starts near 2
    for kind, colour in colours.items():
        final = [
            np.mean(curves[kind, d][-max(1, len(curves[kind, d]) // 10) :])
            for d in depths
        ]
        right.plot(depths, final, "o-", color=colour, label=kind)
    right.set_yscale("log")
    right.set_xlabel("weighted layers $6n + 2$")
    right.set_ylabel("final training loss")
    right.set_xticks(depths)
    right.legend()
    save(
        fig,
        out / "degradation.png",
        caption=(
            "Plain against residual networks on digits, same batches and steps. "
            "Left: training loss per step. Right: final training loss against depth; "
            "the plain nets get far worse as they deepen; "
            "the residual nets stay well below."
        ),
    )


PUBLISHED = {
    18: (11_689_512, 1.81e9),
    34: (21_797_672, 3.66e9),
    50: (25_557_032, 4.09e9),
    101: (44_549_160, 7.80e9),
}


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Count the ImageNet ResNets, then train plain and residual nets of growing depth
    on digits and draw the degradation problem."""
    parser = argparse.ArgumentParser(
        description="ResNet sizes and the degradation problem on digits.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--blocks",
        type=integer(at_least=1),
        nargs="+",
        default=[1, 2, 4],
        help="basic blocks per stage of each digits net (depth 6n + 2)",
    )
    parser.add_argument(
        "--steps", type=integer(at_least=1), default=200, help="training steps"
    )
    parser.add_argument(
        "--batch-size", type=integer(at_least=1), default=64, help="mini-batch size"
    )
    parser.add_argument(
        "--lr", type=number(above=0), default=0.05, help="SGD learning rate"
    )
    parser.add_argument(
        "--width", type=integer(at_least=1), default=16, help="first stage channels"
    )
    parser.add_argument(
        "--skip-counts",
        action="store_true",
        help="skip counting the ImageNet networks",
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to run on",
    )
    parser.add_argument("--out", default="out/resnet", help="folder for the figures")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, float] = {}

    if not args.skip_counts:
        for depth, (params, macs) in PUBLISHED.items():
            model = resnet(depth)
            ours_params = count_parameters(model)
            ours_macs = count_multiply_adds(model)
            print(
                f"resnet{depth}: {ours_params:,} parameters (published {params:,}), "
                f"{ours_macs / 1e9:.2f} G multiply-adds (published {macs / 1e9:.2f} G)"
            )
            metrics[f"resnet{depth}_gmacs"] = ours_macs / 1e9

    x_train, y_train, _, _ = digits(seed=args.seed)
    x = torch.tensor(x_train, dtype=torch.float32, device=args.device)
    x = x.reshape(-1, 1, 8, 8)  # [n_train, 1, 8, 8]
    y = torch.tensor(y_train, device=args.device)  # [n_train]
    depths = [6 * n + 2 for n in args.blocks]
    curves = {}
    start = time.perf_counter()
    runs = [(kind, n) for n in args.blocks for kind in ("plain", "residual")]
    for kind, n in tqdm(runs, desc="training"):
        torch.manual_seed(args.seed)
        model = DigitsNet(n, kind == "residual", args.width).to(args.device)
        losses = train_digits(
            model, x, y, args.steps, args.batch_size, args.lr, args.seed
        )
        curves[kind, 6 * n + 2] = losses
        final = float(np.mean(losses[-max(1, args.steps // 10) :]))
        metrics[f"{kind}_{6 * n + 2}_loss"] = final
        print(f"{kind}-{6 * n + 2}: final training loss {final:.4f}")
    print(f"trained {len(runs)} nets in {time.perf_counter() - start:.1f} s")
    plot_degradation(curves, depths, out)
    return metrics


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Replace the projection shortcut of the stage-entry blocks with the paper's option
#    A: subsample by two and pad the new channels with zeros. How many parameters does
#    ResNet-18 lose, and does the digits experiment change?
# 2. Move the ReLU and both BNs before the convolutions ("pre-activation",
#    [@he2016identity]), so that the shortcut path carries $x$ untouched from input to
#    output. Train a 50-layer plain and pre-activation net: which trains faster?
# 3. Count ResNet-50's multiply–adds by hand from the formula
#    $N C_o H_o W_o C_i k^2$, stage by stage. Which stage costs most, and why is it not
#    the one with the most parameters?
# 4. Train the digits nets with `zero_init_residual` behaviour (zero each block's last
#    BN $\gamma$). Does the residual-26 net now train faster in its first 50 steps?
