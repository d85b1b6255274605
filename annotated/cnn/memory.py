r"""
---
title: Memory of a training step
summary: >-
  Activation memory measured with torch's own profiler, then cut four ways: gradient
  checkpointing (torch.utils.checkpoint and a from-scratch Function), in-place ReLU,
  gradient accumulation and bfloat16.
time: 5 s
references:
  - key: chen2016training
    authors: [Tianqi Chen, Bing Xu, Chiyuan Zhang, Carlos Guestrin]
    title: Training Deep Nets with Sublinear Memory Cost
    year: 2016
    venue: arXiv preprint
    arxiv: "1604.06174"
  - key: griewank2000algorithm
    authors: [Andreas Griewank, Andrea Walther]
    title: >-
      Algorithm 799: Revolve: an implementation of checkpointing for the reverse or
      adjoint mode of computational differentiation
    year: 2000
    venue: ACM Transactions on Mathematical Software 26(1)
    url: https://doi.org/10.1145/347837.347846
  - key: kalamkar2019study
    authors: [Dhiraj Kalamkar, Dheevatsa Mudigere, Naveen Mellempudi, et al.]
    title: A Study of BFLOAT16 for Deep Learning Training
    year: 2019
    venue: arXiv preprint
    arxiv: "1905.12322"
worksheet:
  - region: Checkpoint.backward
    hint: >-
      Take the saved input, detach it and make it require grad; rerun the segment on
      it with grad enabled, backpropagate grad_output through that fresh graph, and
      return None for run and the input's gradient for x.
    tests: [test_checkpoint_function_is_a_vjp, test_checkpointed_gradients_equal_plain]
  - region: forward_checkpointed
    hint: >-
      Check the arguments and impl; cut the blocks into `segments` nearly equal runs
      (np.linspace rounded), run the stem, then each segment as a Sequential: through
      Checkpoint.apply (or torch's non-reentrant checkpoint) except the last, which runs
      normally; pool over H and W and apply the head.
    tests:
      - test_checkpointed_gradients_equal_plain
      - test_saved_bytes_match_prediction
  - region: accumulate_gradients
    hint: >-
      Check the arguments and zero the gradients; for each micro-batch, take the SUM
      of its cross-entropy divided by the full batch size, call backward (the .grad
      add up), and add the loss's value to the total you return.
    tests: [test_accumulation_equals_large_batch]
---

Backpropagation needs, for every layer, something the forward pass computed: a
convolution needs its input to form the weight gradient, a ReLU needs its output to know
where it was open. Autograd keeps those tensors alive from the moment the forward pass
makes them until the backward pass has used them. For a network of $n$ layers on images
of $B \times C \times H \times W$ numbers, that is about $n\,BCHW$ numbers held at once,
and it grows with the depth and the batch while the weights do not. On a GPU it is
usually the activations, not the parameters, that decide whether a batch fits.

This chapter measures that memory instead of guessing it, with two tools PyTorch
ships: saved-tensor hooks, which see every tensor autograd stores, and the profiler,
which records every allocation and free of the CPU allocator so that the *peak* of a
whole training step can be read off. Then it cuts the peak four ways and checks each
against the prediction made in the prose:

- **Gradient checkpointing** [@griewank2000algorithm; @chen2016training] keeps only
  the inputs of $k$ segments and recomputes the rest during backward: memory
  $\approx k + n/k$ activations instead of $n$, at the price of one extra forward pass.
  Written twice: with `torch.utils.checkpoint`, and as a twenty-line
  `torch.autograd.Function`.
- **In-place operations** overwrite their input instead of allocating an output.
- **Gradient accumulation** splits a batch into micro-batches and sums their gradients:
  the same gradient as the large batch, with the activations of one micro-batch.
- **bfloat16** [@kalamkar2019study] stores each activation in two bytes, not four.

The test checks that checkpointed gradients equal plain ones, that accumulation
equals the large batch, and that every measured peak drops in the direction and by
roughly the factor the prose predicts.
"""

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

from annotated.data import integer, integers, torch_device
from annotated.figures import figure, save

# ## The network
#
# A plain stack of $3\times3$ convolutions at one resolution, each followed by a ReLU,
# between a stem that lifts the input to `width` channels and a head that pools and
# classifies. Every block maps a `[B, width, H, W]` map to one of the same shape, so
# each block adds exactly one activation map of $B \cdot \text{width} \cdot H W$
# numbers to what autograd must keep, and the memory of the stack is easy to predict.
# There is no batch norm on purpose: it would make micro-batches compute different
# statistics than the full batch (see the exercises).


class ConvStack(nn.Module):
    """`depth` conv-ReLU blocks of `width` channels between a stem and a linear head."""

    def __init__(
        self,
        depth: int = 8,
        width: int = 16,
        in_channels: int = 1,
        classes: int = 10,
        inplace: bool = False,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.blocks = nn.Sequential(
            *[
                nn.Sequential(
                    nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=inplace)
                )
                for _ in range(depth)
            ]
        )
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)  # [B, width, H, W]
        h = self.blocks(h)  # [B, width, H, W]
        return self.head(h.mean(dim=(2, 3)))  # [B, classes]


# ## What autograd saves
#
# `torch.autograd.graph.saved_tensors_hooks` installs a *pack* hook that autograd calls
# on every tensor a backward node stores (the `SavedVariable`s of
# `torch/csrc/autograd/saved_variable.cpp`). Counting each storage once (a ReLU's
# output is also the next convolution's input, and is kept once) gives the activation
# memory of a forward pass exactly. Parameters are saved too (a convolution needs its
# weight for the input gradient) but they live anyway, so they are left out.


def saved_activation_bytes(
    model: nn.Module, forward: Callable[[], torch.Tensor]
) -> int:
    """Bytes of the distinct non-parameter tensors autograd saves while `forward()`
    runs."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return sum(storages.values())


# ## The peak of a whole step
#
# Saved tensors are not the whole story: the backward pass allocates gradient maps,
# and temporaries come and go. The number that decides whether a step fits is the
# *peak* of live bytes. On a GPU `torch.cuda.max_memory_allocated` reads it from the
# caching allocator; the CPU allocator keeps no such counter, but the profiler with
# `profile_memory=True` records every allocation and free with its size and time (this
# is what `torch/profiler/_memory_profiler.py`, behind `export_memory_timeline`, walks).
# Sorting those events by time and taking the running sum gives the live bytes after
# each event; its maximum is the peak above what was alive when the step began.


def peak_memory(step: Callable[[], object]) -> dict[str, int]:
    """Run `step()` under the profiler; return its peak live bytes above the start and
    the total bytes it allocated."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = list(prof.profiler.kineto_results.experimental_event_tree())
    sizes = []
    while events:
        event = events.pop()
        events.extend(event.children)
        if event.tag == torch._C._profiler._EventType.Allocation:
            sizes.append((event.start_time_ns, event.extra_fields.alloc_size))
    live = np.cumsum([size for _, size in sorted(sizes)])
    allocated = sum(size for _, size in sizes if size > 0)
    return {"peak": int(live.max(initial=0)), "allocated": int(allocated)}


# ## Checking the arguments
#
# The functions below take a model, a batch and a count (segments or micro-batch size).
# A wrong one would otherwise fail deep inside a convolution or silently split the
# batch unevenly, so one checker names the argument and what was expected.


def check_inputs(
    model: nn.Module, x: torch.Tensor, name: str = "", count: int | None = None
) -> None:
    """Raise a clear error unless `x` is a float batch `[B, C, H, W]` for `model` and
    `count` (named `name`) is an int in 1..B (or 1..depth for segments)."""
    if not isinstance(model, ConvStack):
        raise TypeError(f"model must be a ConvStack, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
        raise TypeError("x must be a float tensor [batch, channels, height, width]")
    if x.shape[1] != model.in_channels:
        raise ValueError(
            f"x has {x.shape[1]} channels but the model expects {model.in_channels}"
        )
    if count is None:
        return
    limit = len(model.blocks) if name == "segments" else x.shape[0]
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= limit:
        raise ValueError(f"{name} must be an int in 1..{limit}, got {count!r}")


# ## Checkpointing from scratch
#
# A checkpointed segment is a function $f$ whose forward pass runs with grad disabled
# (as every `Function.forward` does): autograd records nothing inside it and every
# intermediate is freed as soon as the next layer has read it. The segment keeps only
# its input. When the backward pass reaches it, it runs $f$ again, this time with grad
# enabled, on a detached copy of the saved input, and back-propagates the incoming
# gradient through that fresh local graph:
#
# $$
# \begin{aligned}
# y &= f(x) \quad\text{(no graph kept)} \\
# \bar x &= \big(\partial f(x)/\partial x\big)^{\top}\,\bar y
# \quad\text{(recompute, then VJP)}
# \end{aligned}
# $$
#
# The parameters inside $f$ receive their gradients during that inner
# `torch.autograd.backward`, accumulated into `.grad` as usual. This is the
# "reentrant" variant, `CheckpointFunction` in `torch/utils/checkpoint.py`; it calls
# the engine from inside the engine (`Engine::execute` re-entered from
# `torch/csrc/autograd/engine.cpp`). Like it, ours needs an input that requires grad,
# or autograd would never call its backward: the stem stays outside the segments for
# that reason. A segment with dropout would also need the RNG state saved and restored,
# which `torch.utils.checkpoint` does with `preserve_rng_state`; this network has none.


class Checkpoint(torch.autograd.Function):
    """`Checkpoint.apply(run, x)` is `run(x)`, keeping only `x` for backward."""

    @staticmethod
    def forward(ctx, run: Callable, x: torch.Tensor) -> torch.Tensor:
        ctx.run = run
        ctx.save_for_backward(x)
        return run(x)  # a Function's forward runs with grad disabled

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (x,) = ctx.saved_tensors
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            y = ctx.run(x)
        torch.autograd.backward(y, grad_output)
        return None, x.grad


# ## Segments
#
# Cutting $n$ blocks into $k$ segments keeps the $k$ segment inputs through the forward
# pass, and during backward rebuilds one segment's $n/k$ activations at a time, so the
# stored maps number about
#
# $$
# M(k) = k + \frac{n}{k}, \qquad \min_k M = 2\sqrt{n} \text{ at } k = \sqrt n,
# $$
#
# against $n$ without checkpointing [@chen2016training]. The extra cost is one more
# forward pass of every checkpointed segment. As in `checkpoint_sequential`, the last
# segment runs normally: its activations are needed right away by backward anyway.
# `impl` picks our `Checkpoint` or `torch.utils.checkpoint.checkpoint` (the
# non-reentrant variant, which recomputes from saved-tensor hooks instead).


def forward_checkpointed(
    model: ConvStack, x: torch.Tensor, segments: int, impl: str = "ours"
) -> torch.Tensor:
    """`model(x)` with its blocks cut into `segments` checkpointed segments."""
    check_inputs(model, x, "segments", segments)
    if impl not in ("ours", "torch"):
        raise ValueError(f"impl must be 'ours' or 'torch', got {impl!r}")
    blocks = list(model.blocks)
    bounds = np.linspace(0, len(blocks), segments + 1).round().astype(int)
    h = model.stem(x)  # [B, width, H, W]
    for i, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        segment = nn.Sequential(*blocks[start:stop])
        if i == segments - 1:
            h = segment(h)
        elif impl == "ours":
            h = Checkpoint.apply(segment, h)
        else:
            h = checkpoint(segment, h, use_reentrant=False)
    return model.head(h.mean(dim=(2, 3)))  # [B, classes]


# ## Gradient accumulation
#
# A mean loss over a batch of $B$ examples is a sum over its micro-batches $b$:
#
# $$
# \nabla \frac{1}{B}\sum_{i=1}^{B} \ell_i
# = \sum_{b} \nabla \Big(\frac{1}{B}\sum_{i \in b} \ell_i\Big)
# $$
#
# so running backward on each micro-batch's *sum* of losses divided by the full $B$,
# and letting `.grad` accumulate (autograd adds into it; `AccumulateGrad` in
# `torch/csrc/autograd/functions/accumulate_grad.h`), gives the large batch's gradient
# while only one micro-batch's activations are alive. Dividing each micro-batch's
# *mean* by the number of micro-batches is the same only when they all have the same
# size; the sum over $B$ is right for a ragged last one too.


def accumulate_gradients(
    model: ConvStack, x: torch.Tensor, y: torch.Tensor, micro_batch: int
) -> float:
    """Set `.grad` of `model` to the gradient of the mean cross-entropy over `x`,
    computed `micro_batch` examples at a time; return the loss."""
    check_inputs(model, x, "micro_batch", micro_batch)
    model.zero_grad(set_to_none=True)
    total = 0.0
    for xb, yb in zip(x.split(micro_batch), y.split(micro_batch)):
        loss = F.cross_entropy(model(xb), yb, reduction="sum") / len(x)
        loss.backward()
        total += loss.item()
    return total


# ## One training step, measured
#
# `train_step` is the step every measurement runs: forward (plain or checkpointed),
# mean cross-entropy, backward. It returns nothing, so that nothing of the step's graph
# outlives it.


def train_step(
    model: ConvStack,
    x: torch.Tensor,
    y: torch.Tensor,
    segments: int | None = None,
    impl: str = "ours",
    micro_batch: int | None = None,
) -> None:
    """One forward and backward pass of `model` on `(x, y)`."""
    model.zero_grad(set_to_none=True)
    if micro_batch is not None:
        accumulate_gradients(model, x, y, micro_batch)
    elif segments is not None:
        F.cross_entropy(forward_checkpointed(model, x, segments, impl), y).backward()
    else:
        check_inputs(model, x)
        F.cross_entropy(model(x), y).backward()


# ## The predictions
#
# One activation map is $B \cdot w \cdot HW$ numbers. Without checkpointing a forward
# pass saves the stem's output and every block's ReLU output: $n + 1$ maps (the
# convolution's output is read by the ReLU and freed; the ReLU keeps its own output,
# which is also the next convolution's input). With $k$ segments it saves the $k$
# segment inputs plus the $n/k$ ReLU outputs of the last one, which runs plainly.
# bfloat16 halves the bytes of each map. The peak also holds the convolutions'
# temporary buffers, whose size depends on the CPU's kernels: the saved maps halve
# exactly (the test counts them), while the demo's measured peak fell to 0.51 of
# plain on the machine that drew this page's figure and to 0.67 on an AMD EPYC with
# AVX2 alone. An in-place ReLU allocates nothing, so the forward pass allocates $n$
# fewer maps (the convolution's own workspace remains); but it lowers neither the
# saved maps nor the peak, since the convolution's output it overwrites was never
# kept. In-place pays where an output would otherwise be saved beside its input.


def predicted_saved_maps(depth: int, segments: int | None = None) -> int:
    """Activation maps a forward pass saves, without or with `segments` checkpoints."""
    if segments is None:
        return depth + 1
    last = depth - int(round(depth * (segments - 1) / segments))
    return (segments - 1) + 1 + last


def make_batch(
    batch: int, size: int, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random one-channel images `[batch, 1, size, size]` and labels `[batch]`."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, size, size, generator=generator).to(dtype)
    y = torch.randint(10, (batch,), generator=generator)
    return x, y


def example():
    """A small example: `fn(*args)` is a forward pass of a four-block stack."""
    torch.manual_seed(0)
    model = ConvStack(depth=4, width=8)
    x, _ = make_batch(2, 8)
    return model, (x,)


# ## The demo
#
# The demo measures, on random $16\times16$ images, the peak of one training step of
# stacks of growing depth, plain and checkpointed into $\sqrt n$ segments with both
# implementations, then compares every technique at the deepest stack. It prints the
# peaks and returns their ratios to the plain step.


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Measure the peak memory of a training step under each technique; save the
    figures."""
    parser = argparse.ArgumentParser(
        description="Peak memory of a CNN training step: checkpointing, in-place, "
        "accumulation, bfloat16.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--depths",
        type=integers(at_least=1),
        default="4,9,16",
        help="comma-separated depths",
    )
    parser.add_argument(
        "--width", type=integer(at_least=1), default=16, help="channels per block"
    )
    parser.add_argument(
        "--batch", type=integer(at_least=1), default=16, help="batch size"
    )
    parser.add_argument(
        "--size", type=integer(at_least=1), default=16, help="image height and width"
    )
    parser.add_argument(
        "--micro-batch", type=integer(at_least=1), default=4, help="micro-batch size"
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (peaks are read from the CPU profiler, so use cpu for them)",
    )
    parser.add_argument("--out", default="out/memory", help="folder for the figures")
    args = parser.parse_args(argv)
    depths = args.depths
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x, y = make_batch(args.batch, args.size, args.seed)
    x, y = x.to(args.device), y.to(args.device)
    map_mb = args.batch * args.width * args.size**2 * 4 / 2**20

    def measure(model, x, **kwargs) -> float:
        train_step(model, x, y, **kwargs)  # warm-up: .grad buffers, kernels
        return peak_memory(lambda: train_step(model, x, y, **kwargs))["peak"] / 2**20

    curves = {"plain": [], "checkpoint (ours)": [], "checkpoint (torch)": []}
    for depth in tqdm(depths, desc="depths"):
        torch.manual_seed(args.seed)
        model = ConvStack(depth, args.width).to(args.device)
        k = max(1, round(math.sqrt(depth)))
        curves["plain"].append(measure(model, x))
        curves["checkpoint (ours)"].append(measure(model, x, segments=k, impl="ours"))
        curves["checkpoint (torch)"].append(measure(model, x, segments=k, impl="torch"))

    depth = depths[-1]
    torch.manual_seed(args.seed)
    model = ConvStack(depth, args.width).to(args.device)
    inplace = ConvStack(depth, args.width, inplace=True).to(args.device)
    inplace.load_state_dict(model.state_dict())
    k = max(1, round(math.sqrt(depth)))
    peaks = {
        "plain": curves["plain"][-1],
        f"checkpoint, k={k}": curves["checkpoint (ours)"][-1],
        "in-place ReLU": measure(inplace, x),
        f"accumulate {args.micro_batch}": measure(
            model, x, micro_batch=args.micro_batch
        ),
    }
    allocated = {
        "plain": peak_memory(lambda: model(x))["allocated"],
        "in-place": peak_memory(lambda: inplace(x))["allocated"],
    }
    peaks["bfloat16"] = measure(model.to(torch.bfloat16), x.to(torch.bfloat16))
    print(
        f"forward allocates {allocated['plain'] / 2**20:.2f} MB plain, "
        f"{allocated['in-place'] / 2**20:.2f} MB with in-place ReLU"
    )
    for name, mb in peaks.items():
        print(f"{name:18s} peak {mb:7.2f} MB  ({mb / peaks['plain']:.2f} of plain)")

    fig, (left, right) = figure(panels=2)
    for name, values in curves.items():
        left.plot(depths, values, marker="o", label=name)
    left.plot(
        depths,
        [map_mb * (2 * math.sqrt(n) + 1) for n in depths],
        "k:",
        label=r"$(2\sqrt{n}+1)$ maps",
    )
    left.set_xlabel("blocks $n$")
    left.set_ylabel("peak of one step (MB)")
    left.legend()
    right.barh(list(peaks), list(peaks.values()), color="tab:blue")
    right.invert_yaxis()
    right.set_xlabel(f"peak of one step (MB), $n={depth}$")
    save(
        fig,
        out / "peaks.png",
        caption="Peak memory of one training step: against depth for plain and "
        "checkpointed stacks (left), and for each technique at the deepest (right).",
    )
    ratios = {
        "checkpoint ratio": peaks[f"checkpoint, k={k}"] / peaks["plain"],
        "inplace ratio": peaks["in-place ReLU"] / peaks["plain"],
        "inplace allocated ratio": allocated["in-place"] / allocated["plain"],
        "accumulation ratio": peaks[f"accumulate {args.micro_batch}"] / peaks["plain"],
        "bfloat16 ratio": peaks["bfloat16"] / peaks["plain"],
    }
    return {"plain peak MB": peaks["plain"], **ratios}


if __name__ == "__main__":
    main()

# ## Exercises
#
# 1. Add `nn.BatchNorm2d` after each convolution. Does `accumulate_gradients` still
#    equal the large batch? What about checkpointing, whose recomputation runs the
#    batch norm forward a second time in training mode?
# 2. Put a `nn.Dropout` inside a checkpointed segment. Show that our `Checkpoint` then
#    gives wrong gradients, and fix it by saving and restoring the RNG state as
#    `torch.utils.checkpoint` does.
# 3. Measure the time of a checkpointed step against a plain one for several $k$.
#    Does the overhead stay near one extra forward pass?
