r"""
---
title: LeNet-5
summary: >-
  LeNet-5 in its 1998 layout on the lesson's own im2col convolution and pooling, matched
  against an nn.Conv2d twin and plain Python loops, and trained on 32×32 digits.
time: 15 s
expected:
  metric: accuracy
  short: ["--epochs", "2", "--batch-size", "64"]
references:
  - key: lecun1998gradient
    authors: [Yann LeCun, Léon Bottou, Yoshua Bengio, Patrick Haffner]
    title: Gradient-based learning applied to document recognition
    year: 1998
    venue: Proceedings of the IEEE 86(11)
    url: https://doi.org/10.1109/5.726791
  - key: chellapilla2006high
    authors: [Kumar Chellapilla, Sidd Puri, Patrice Simard]
    title: High Performance Convolutional Neural Networks for Document Processing
    year: 2006
    venue: Tenth International Workshop on Frontiers in Handwriting Recognition
    url: https://inria.hal.science/inria-00112631
worksheet:
  - region: conv2d
    hint: >-
      Check the input, pad x on all four sides, cut every k×k patch with unfold on the
      height and then the width axis ([N, C, H', W', k, k]), contract the patches with
      the weight over channels and kernel taps with einsum, and add the bias per output
      channel.
    tests:
      - test_conv2d_matches_torch_forward_and_gradients
      - test_our_layers_match_the_nn_conv2d_twin_with_copied_weights
  - region: LeNet5.forward
    hint: >-
      C1, tanh, S2; C3, tanh, S4; C5, tanh, flatten to [N, 120]; F6, tanh; then the
      output layer, with no tanh, gives the logits [N, 10].
    tests:
      - test_our_layers_match_the_nn_conv2d_twin_with_copied_weights
      - test_plain_loops_match_the_tensor_model
---

LeNet-5 [@lecun1998gradient] is the network that made convolution the default for
images: seven layers, 61,706 weights in the layout built here, reading a 32×32 picture
of a digit and answering which of ten it is. Its layers alternate *convolution*, which
slides one small set of weights over every position of the image, and *subsampling*,
which averages neighbouring outputs so that the next layer sees a coarser, wider view.

The paper names the layers C1, S2, C3, S4, C5, F6 and the output:

| layer | does | output shape | weights |
| --- | --- | --- | --- |
| C1 | 6 filters 5×5 | 6×28×28 | 6·(25+1) = 156 |
| S2 | 2×2 average | 6×14×14 | 0 |
| C3 | 16 filters 5×5×6 | 16×10×10 | 16·(150+1) = 2,416 |
| S4 | 2×2 average | 16×5×5 | 0 |
| C5 | 120 filters 5×5×16 | 120×1×1 | 120·(400+1) = 48,120 |
| F6 | dense | 84 | 84·(120+1) = 10,164 |
| output | dense | 10 | 10·(84+1) = 850 |

Three simplifications against the paper, each common in modern reproductions: C3 sees
all six maps of S2 (the paper wires each of its 16 maps to a chosen subset, 1,516
weights instead of 2,416), S2 and S4 average without the paper's trainable coefficient
and bias, and the output is a linear layer with cross-entropy rather than the paper's
Gaussian (RBF) units.

The lesson builds the convolution itself as one matrix product (im2col), checks that it
gives the same logits as a twin built on `nn.Conv2d` with the same weights, and as a
third version in plain Python loops on a single image; then it trains the twin on
scikit-learn's digits, upscaled to 32×32, to 98 % test accuracy.
"""

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from annotated.data import digits, integer, number, torch_device
from annotated.figures import figure, save

# ## Convolution as one matrix product
#
# A convolution layer with $C_\text{out}$ filters of size $C_\text{in}\times k\times k$
# computes, at every output position $(i, j)$,
#
# $$
# \begin{aligned}
# y_{o,i,j} = b_o + \sum_{c,a,b} w_{o,c,a,b}\; x_{c,\,i+a,\,j+b}.
# \end{aligned}
# $$
#
# (It is a cross-correlation, as in every deep-learning library: the kernel is not
# flipped.) The sum over $(c, a, b)$ is a dot product between the flattened filter and
# the flattened $C_\text{in}\times k\times k$ *patch* under it. Gather every patch into
# a column and the whole layer is one matrix product of the filters,
# $[C_\text{out}, C_\text{in}k^2]$, with the patches, $[C_\text{in}k^2, H'W']$: the
# im2col trick [@chellapilla2006high]. It trades memory ($k^2$ copies of each pixel)
# for the speed of a tuned matrix multiply, and it is what PyTorch's own CPU path
# does: `aten/src/ATen/native/ConvolutionMM2d.cpp` (`slow_conv2d_forward_out_cpu`)
# unfolds the input with `unfolded2d_copy` and calls a GEMM.
#
# `Tensor.unfold(dim, size, step)` gives the patches as a strided view with no copy:
# unfolding the height then the width turns `[N, C, H, W]` into
# `[N, C, H', W', k, k]`. The `einsum` contracts channels and kernel offsets against
# the weights; autograd differentiates it like any other product, so the layer needs no
# backward of its own. `stride` is the step of the unfold; `padding` pads with zeros
# first.
#
# The checks sit here, at the one function every path goes through. `torch.fx.wrap`
# tells the tracer that draws this page's dataflow diagram to record a call to
# `conv2d` as one node instead of tracing through it, which also lets the checks read
# real shapes.


@torch.fx.wrap
def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    stride: int = 1,
    padding: int = 0,
) -> torch.Tensor:
    """Cross-correlate `x [N, C_in, H, W]` with `weight [C_out, C_in, k, k]`, add
    `bias [C_out]`; returns `[N, C_out, H', W']`, $H' = (H + 2p - k)/s + 1$ rounded
    down."""
    check_conv_input(x, weight, stride, padding)
    kernel = weight.shape[-1]
    x = F.pad(x, (padding,) * 4)
    patches = x.unfold(2, kernel, stride).unfold(3, kernel, stride)  # [N,C,H',W',k,k]
    out = torch.einsum("ncijab,ocab->noij", patches, weight)  # [N, C_out, H', W']
    return out + bias[None, :, None, None]


def check_conv_input(
    x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int
) -> None:
    """Raise naming the argument when `conv2d` would otherwise fail deep in `einsum`
    or silently return an empty map."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(
            f"conv2d: x must be a 4-D tensor [batch, channels, height, width], "
            f"got {getattr(x, 'shape', type(x).__name__)}"
        )
    if weight.ndim != 4 or weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"conv2d: weight {tuple(weight.shape)} must be [C_out, {x.shape[1]}, k, k] "
            f"for x with {x.shape[1]} channels"
        )
    if not isinstance(stride, int) or stride < 1 or padding < 0:
        raise ValueError(
            f"conv2d: stride must be an int >= 1 and padding >= 0, "
            f"got stride={stride!r}, padding={padding!r}"
        )
    kernel = weight.shape[-1]
    if min(x.shape[2:]) + 2 * padding < kernel:
        raise ValueError(
            f"conv2d: a {x.shape[2]}×{x.shape[3]} input padded by {padding} is smaller "
            f"than the {kernel}×{kernel} kernel"
        )


# ## Subsampling
#
# S2 and S4 average each 2×2 block: a reshape splits height and width into (blocks,
# 2), and a mean over the two 2s does the rest. No patches are gathered, because the
# blocks do not overlap. An odd row or column at the edge is dropped, as
# `nn.AvgPool2d(2)` does.


def avg_pool2d(x: torch.Tensor, size: int = 2) -> torch.Tensor:
    """Average non-overlapping `size`×`size` blocks of `x [N, C, H, W]`; returns
    `[N, C, H // size, W // size]`."""
    batch, channels, height, width = x.shape
    rows, cols = height // size, width // size
    x = x[:, :, : rows * size, : cols * size]
    blocks = x.reshape(batch, channels, rows, size, cols, size)
    return blocks.mean(dim=(3, 5))  # [N, C, H // size, W // size]


# ## The layers as modules
#
# `Conv2d` stores `weight` and `bias` under the names and shapes `nn.Conv2d` uses, so a
# state dict moves between this model and its twin without renaming. The initial
# weights follow `nn.Conv2d`'s default too: uniform in $\pm 1/\sqrt{C_\text{in}k^2}$
# (`torch/nn/modules/conv.py`, `_ConvNd.reset_parameters`).


class Conv2d(nn.Module):
    """A convolution layer on the lesson's im2col `conv2d`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_channels * kernel_size**2)
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.weight = nn.Parameter(torch.empty(shape).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d(x, self.weight, self.bias)


class AvgPool2d(nn.Module):
    """2×2 subsampling on the lesson's `avg_pool2d`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_pool2d(x, 2)


# ## LeNet-5
#
# The seven layers in the paper's order, with $\tanh$ after every layer that has
# weights except the last [@lecun1998gradient]. `twin=True` builds the same network on
# `nn.Conv2d` and `nn.AvgPool2d`, whose CPU kernels are the ones to train with; the
# parameter names are the same in both, so `twin.load_state_dict(ours.state_dict())`
# copies the weights. C5 is a convolution whose 5×5 kernel covers the whole 5×5 map of
# S4, so its output is $120\times1\times1$: a dense layer in all but name, flattened
# before F6.


class LeNet5(nn.Module):
    """LeNet-5 on 32×32 single-channel images: `[N, 1, 32, 32]` → logits `[N, 10]`."""

    def __init__(self, twin: bool = False):
        super().__init__()
        conv = nn.Conv2d if twin else Conv2d
        pool = nn.AvgPool2d(2) if twin else AvgPool2d()
        self.c1 = conv(1, 6, 5)
        self.s2 = pool
        self.c3 = conv(6, 16, 5)
        self.s4 = pool
        self.c5 = conv(16, 120, 5)
        self.f6 = nn.Linear(120, 84)
        self.output = nn.Linear(84, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.s2(torch.tanh(self.c1(images)))  # [N, 6, 14, 14]
        x = self.s4(torch.tanh(self.c3(x)))  # [N, 16, 5, 5]
        x = torch.tanh(self.c5(x)).flatten(1)  # [N, 120]
        x = torch.tanh(self.f6(x))  # [N, 84]
        return self.output(x)  # [N, 10]


def count_parameters(model: nn.Module) -> int:
    """The number of trainable weights: 61,706 for `LeNet5`, as the table above adds
    up."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ## The same network in plain Python loops
#
# The third version has no tensors at all: lists of floats and four nested loops per
# output value, the definition of $y_{o,i,j}$ written out. It runs on one image and
# takes its weights from a state dict converted to nested lists. It is the yardstick
# for what im2col and a tuned kernel buy: the benchmark below runs all three on the
# same image. It multiplies and adds the same 416,520 pairs as the tensor versions
# (117,600 in C1, 240,000 in C3, 48,000 in C5, 10,080 in F6, 840 in the output).


def conv_loops(maps, kernels, biases):
    """Valid cross-correlation of `maps [C][H][W]` with `kernels [O][C][k][k]`, then
    tanh."""
    size, k = len(maps[0]), len(kernels[0][0])
    out = []
    for kernel, bias in zip(kernels, biases):
        plane = []
        for i in range(size - k + 1):
            row = []
            for j in range(size - k + 1):
                total = bias
                for channel, weights in zip(maps, kernel):
                    for a in range(k):
                        line, weight_line = channel[i + a], weights[a]
                        for b in range(k):
                            total += line[j + b] * weight_line[b]
                row.append(math.tanh(total))
            plane.append(row)
        out.append(plane)
    return out


def pool_loops(maps):
    """2×2 averages of `maps [C][H][W]`."""
    return [
        [
            [
                (m[i][j] + m[i][j + 1] + m[i + 1][j] + m[i + 1][j + 1]) / 4
                for j in range(0, len(m[0]) - 1, 2)
            ]
            for i in range(0, len(m) - 1, 2)
        ]
        for m in maps
    ]


def dense_loops(inputs, weights, biases):
    """`weights [out][in]` times `inputs [in]` plus `biases [out]`."""
    return [
        bias + sum(w * v for w, v in zip(row, inputs))
        for row, bias in zip(weights, biases)
    ]


def lenet_loops(image, weights: dict) -> list[float]:
    """LeNet-5's logits for one `image [32][32]`, with `weights` a state dict of nested
    lists (`{name: tensor.tolist()}`)."""
    x = pool_loops(conv_loops([image], weights["c1.weight"], weights["c1.bias"]))
    x = pool_loops(conv_loops(x, weights["c3.weight"], weights["c3.bias"]))
    x = conv_loops(x, weights["c5.weight"], weights["c5.bias"])
    x = [plane[0][0] for plane in x]  # 120 values
    x = [math.tanh(v) for v in dense_loops(x, weights["f6.weight"], weights["f6.bias"])]
    return dense_loops(x, weights["output.weight"], weights["output.bias"])


# ## Three implementations, side by side
#
# The course's method for a new model: first with PyTorch's high-level API, then with
# our own layers, then in plain Python. All three compute the same logits for the same
# weights (in float64 the tests check the plain loops against our layers to 1e-12, and
# our layers against the `nn.Conv2d` twin to 1e-10), and the benchmark in the test file
# times them on one 32×32 image. In this page's benchmark run (a shared 2-core
# machine, mean times) the im2col layers took about 1.4× the `nn.Conv2d` twin's time
# for one image (0.40 ms against 0.29 ms), and the plain loops about 97× (29 ms): the
# interpreter pays for each of the 416,520 multiply-adds one by one, while the tensor
# versions pay a few dozen dispatches in all. On a training step of 64 images the
# im2col layers took about 2.8× the twin, whose convolution backward runs in PyTorch's
# tuned kernels.
#
# ## Digits at 32×32
#
# The paper's input is a 32×32 field with the 20×20 digit centred, so that strokes
# reach the borders of C1's receptive fields. scikit-learn's digits are 8×8: each is
# scaled to 28×28 by bilinear interpolation and padded by 2 zeros on every side, as
# MNIST's 28×28 digits are padded to LeNet's 32×32.


def digits_32(
    test_fraction: float = 0.2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`annotated.data.digits()` as float32 images `[n, 1, 32, 32]` and int64 labels."""
    x_train, y_train, x_test, y_test = digits(test_fraction, seed)

    def upscale(x: np.ndarray) -> torch.Tensor:
        images = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8)
        images = F.interpolate(images, size=28, mode="bilinear", align_corners=False)
        return F.pad(images, (2, 2, 2, 2))  # [n, 1, 32, 32]

    return (
        upscale(x_train),
        torch.tensor(y_train),
        upscale(x_test),
        torch.tensor(y_test),
    )


# ## Training
#
# Plain mini-batch training with Adam and cross-entropy on the twin, whose layers are
# PyTorch's own. Nothing here is specific to LeNet.


def train(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
) -> list[float]:
    """Train `model` in place; returns the mean loss of each epoch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in tqdm(range(epochs), desc="epochs"):
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for start in range(0, len(images), batch_size):
            batch = order[start : start + batch_size]
            loss = F.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        losses.append(total / len(images))
    return losses


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The predicted class of each of `images [n, 1, 32, 32]`."""
    model.eval()
    return model(images).argmax(dim=1)


def example():
    """Our LeNet-5 on a batch of two 32×32 images."""
    torch.manual_seed(0)
    return LeNet5(), (torch.randn(2, 1, 32, 32),)


def plot_filters(model: nn.Module, out: Path) -> Path:
    """C1's six learned 5×5 filters."""
    filters = model.c1.weight.detach().cpu()[:, 0]  # [6, 5, 5]
    fig, axes = figure(panels=6, rows=2)
    limit = float(filters.abs().max())
    for index, (ax, kernel) in enumerate(zip(axes.flat, filters)):
        image = ax.imshow(kernel, cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(f"C1 filter {index}")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes, shrink=0.8, label="weight")
    return save(
        fig,
        out / "filters.png",
        caption="The six 5×5 filters C1 learned on the digits (red positive, blue "
        "negative): oriented stroke and edge detectors.",
    )


def plot_confusion(confusion: np.ndarray, out: Path) -> Path:
    """Test-set confusion matrix: row = true digit, column = predicted digit."""
    fig, ax = figure()
    ax.imshow(confusion, cmap="Blues")
    for i in range(10):
        for j in range(10):
            if confusion[i, j]:
                color = "white" if confusion[i, j] > confusion.max() / 2 else "black"
                ax.text(j, i, str(confusion[i, j]), ha="center", va="center", c=color)
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    return save(
        fig,
        out / "confusion.png",
        caption="Confusion matrix of the trained LeNet-5 on the 359 test digits: "
        "almost everything on the diagonal.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Check the three implementations agree, train the twin on digits, draw the
    figures."""
    parser = argparse.ArgumentParser(
        description="LeNet-5 on 32×32 digits: our layers, nn.Conv2d and plain loops.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--epochs", type=integer(at_least=1), default=15, help="training epochs"
    )
    parser.add_argument(
        "--batch-size", type=integer(at_least=1), default=32, help="mini-batch size"
    )
    parser.add_argument(
        "--lr", type=number(above=0), default=2e-3, help="Adam learning rate"
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
    parser.add_argument("--out", default="out/lenet", help="folder for the figures")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = digits_32(seed=args.seed)

    ours, twin = LeNet5(), LeNet5(twin=True)
    twin.load_state_dict(ours.state_dict())
    print(f"parameters: {count_parameters(ours):,}")
    with torch.no_grad():
        gap = (ours(x_test[:64]) - twin(x_test[:64])).abs().max().item()
        weights = {name: t.tolist() for name, t in ours.state_dict().items()}
        start = time.perf_counter()
        loops = torch.tensor(lenet_loops(x_test[0, 0].tolist(), weights))
        loop_seconds = time.perf_counter() - start
        loop_gap = (loops - ours(x_test[:1])[0]).abs().max().item()
    print(f"ours vs nn.Conv2d twin: max logit difference {gap:.1e}")
    print(f"ours vs plain loops: {loop_gap:.1e} ({loop_seconds:.2f} s for one image)")

    twin.to(args.device)
    losses = train(
        twin,
        x_train.to(args.device),
        y_train.to(args.device),
        args.epochs,
        args.batch_size,
        args.lr,
        args.seed,
    )
    predicted = predict(twin, x_test.to(args.device)).cpu()
    accuracy = (predicted == y_test).double().mean().item()
    confusion = np.zeros((10, 10), dtype=np.int64)
    np.add.at(confusion, (y_test.numpy(), predicted.numpy()), 1)
    print(f"final training loss {losses[-1]:.4f}")
    print(f"accuracy {accuracy:.4f}")
    plot_filters(twin, out)
    plot_confusion(confusion, out)
    return {"accuracy": accuracy, "logit_gap": gap, "loop_gap": loop_gap}


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Wire C3 as the paper's Table I does (each of the 16 maps sees 3, 4 or 6 of S2's
#    maps) by masking C3's weight. The mask leaves the weight's shape, so
#    `count_parameters` still returns 61,706: check that the unmasked weights number
#    60,806, and compare the accuracy.
# 2. Replace the average pooling with max pooling and $\tanh$ with ReLU. Which change
#    moves the test accuracy more on these digits?
# 3. Give `conv2d` a `stride` of 2 in C1 and drop S2. How do the shapes, the parameter
#    count and the speed change?
# 4. Time the im2col `conv2d` against `nn.Conv2d` for batch sizes 1, 16 and 256. Where
#    does the gap close, and why does memory for the patches grow with the batch?
