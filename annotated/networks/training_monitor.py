r"""
---
title: A training monitor with loss landscapes
summary: >-
  Per-layer weight and gradient norms, update-to-weight ratios, activation statistics,
  dead ReLUs and throughput, logged to TensorBoard through hooks, and the filter-
  normalised loss landscape of Li et al. around a trained digits network.
time: 8 s
expected:
  metric: test_accuracy
  short: ["--steps", "100", "--grid", "5", "--slice-points", "5", "--device", "cpu"]
references:
  - key: li2018visualizing
    authors: [Hao Li, Zheng Xu, Gavin Taylor, Christoph Studer, Tom Goldstein]
    title: Visualizing the Loss Landscape of Neural Nets
    year: 2018
    venue: NeurIPS 2018
    arxiv: "1712.09913"
  - key: goodfellow2015qualitatively
    authors: [Ian J. Goodfellow, Oriol Vinyals, Andrew M. Saxe]
    title: Qualitatively characterizing neural network optimization problems
    year: 2015
    venue: ICLR 2015
    arxiv: "1412.6544"
  - key: dinh2017sharp
    authors: [Laurent Dinh, Razvan Pascanu, Samy Bengio, Yoshua Bengio]
    title: Sharp Minima Can Generalize For Deep Nets
    year: 2017
    venue: ICML 2017
    arxiv: "1703.04933"
  - key: karpathy2015learning
    authors: [Andrej Karpathy]
    title: "CS231n course notes: Neural Networks Part 3, Learning and Evaluation"
    year: 2015
    venue: "Stanford CS231n: Convolutional Neural Networks for Visual Recognition"
    url: https://cs231n.github.io/neural-networks-3/
  - key: lu2020dying
    authors: [Lu Lu, Yeonjong Shin, Yanhui Su, George Em Karniadakis]
    title: "Dying ReLU and Initialization: Theory and Numerical Examples"
    year: 2020
    venue: Communications in Computational Physics 28(5)
    arxiv: "1903.06733"
worksheet:
  - region: TrainingMonitor._after_step
    hint: >-
      For every parameter whose weights _before_step saved, the update ratio is the
      norm of (weights now minus weights before) divided by the norm of the weights
      before; stack the norms, move them to the CPU in one tolist() and store the
      ratios by name in update_ratios, leaving out a parameter whose weights were all
      zero.
    tests:
      - test_tracked_norms_ratios_and_activations_match_direct_torch
      - test_a_parameter_that_was_all_zeros_has_no_ratio_that_step
  - region: filter_normalise
    hint: >-
      Check the direction against the parameters; a parameter of at most one dimension
      (a bias) gets a zero direction; otherwise rescale each filter (each row of the
      tensor flattened from axis 1) to the norm of the same filter of the weight,
      adding 1e-10 to the direction filter's norm.
    tests:
      - test_each_direction_filter_has_the_norm_of_its_weight_filter
      - test_filter_normalise_of_a_zero_weight_filter_gives_a_zero_filter
      - test_random_direction_is_seeded_and_normalised_for_the_model
  - region: loss_landscape
    hint: >-
      Check the directions, coordinates [points, directions] and the data; stack each
      parameter's directions, make the loss a function of the weights with
      functional_call, and vmap it; in eval mode and without gradient, build each chunk
      of k points as param + tensordot(chunk, directions) and evaluate them in one
      call; restore the model's mode and return the concatenated losses.
    tests:
      - test_landscape_centre_equals_the_models_loss
      - test_batched_landscape_matches_hand_perturbed_models
      - test_landscape_leaves_the_model_and_its_mode_unchanged
---

A loss curve tells you *that* a run is going wrong, rarely *why*. A flat loss can mean
gradients that vanish before they reach the first layer, a learning rate so small that
the weights barely move, or a layer of ReLUs that has stopped firing for every input.
Each of these leaves a trace in a number that is cheap to compute on every step, if you
know where to look. This lesson builds a small monitor that looks in those places:

- **weight and gradient norms per parameter**, to see a layer whose gradient vanishes or
  explodes while the others are fine;
- **the update-to-weight ratio** $\lVert \Delta\theta \rVert / \lVert \theta \rVert$,
  the fraction by which one step changes a layer. A rule of thumb puts a healthy value
  near $10^{-3}$ [@karpathy2015learning]: far below, the layer is not learning; far
  above, it is being rewritten every step;
- **activation statistics and histograms** after every ReLU, and the fraction of
  *dead* units, units that output zero for every input of the batch and therefore pass
  no gradient back [@lu2020dying];
- **throughput** in examples per second, because a monitor that slows training is
  monitoring something else.

None of this needs a change to the model. PyTorch lets code watch a computation from
outside through *hooks*: a forward hook on a module sees its output, and an optimizer's
step pre- and post-hooks see the weights just before and just after each update. The
monitor writes everything as real TensorBoard event files, which the test reads back.

The second half of the lesson looks at the loss itself, around the trained weights. The
loss is a function of tens of thousands of numbers; one can only see a slice of it. Li
et al. [@li2018visualizing] draw it along one or two random directions, each scaled
*filter by filter* to the size of the weights it perturbs, so that the picture does not
depend on how the network happens to distribute scale between its layers. The 2-D
picture takes 441 evaluations of the loss on the whole training set, and here they run
as a few batched calls rather than 441 separate forward passes.
"""

import argparse
import copy
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from annotated.data import digits, integer, number, torch_device
from annotated.figures import figure, save

# ## The network being watched
#
# A multilayer perceptron on the 8×8 digits: 64 pixels in, two hidden layers of ReLUs,
# ten class scores out. The monitor works on any `nn.Module`; this one is small enough
# that the demo and its loss landscape run in seconds on a CPU.


def make_mlp(inputs: int = 64, hidden: tuple[int, ...] = (64, 64), classes: int = 10):
    """`Linear → ReLU` for each hidden width, then a `Linear` to the class scores."""
    layers = []
    for width in hidden:
        layers += [nn.Linear(inputs, width), nn.ReLU()]
        inputs = width
    layers.append(nn.Linear(inputs, classes))
    return nn.Sequential(*layers)


# ## Hooks: watching from outside
#
# A *forward hook* is a function that a module calls after its `forward`, as
# `hook(module, inputs, output)`. Registered on every `nn.ReLU`, it sees each hidden
# layer's activations without any change to the model's code. It returns a handle whose
# `remove()` detaches it again.
#
# From the activations $a \in \mathbb{R}^{B \times U}$ of a batch of $B$ examples and
# $U$ units the hook keeps their mean and standard deviation, and the *dead fraction*:
#
# $$
# \text{dead} = \frac{1}{U} \sum_{u=1}^{U}
# \mathbb{1}\!\left[\, a_{bu} = 0 \text{ for all } b \,\right] .
# $$
#
# A ReLU unit whose pre-activation is negative for every input outputs zero, and its
# derivative is zero too, so no gradient reaches its incoming weights: once dead on all
# the data it stays dead [@lu2020dying], unless the layers below move its inputs (or
# momentum, still carrying earlier updates, moves its weights) back. On one batch the
# count is an upper bound on the truly dead units (a unit may fire only for inputs the
# batch lacks).
#
# The hook stores a detached copy of the tensor and ignores forwards in eval mode, so
# that evaluating the model (on the test set, or 441 times for the loss landscape) does
# not overwrite what the training step saw.
#
# Weights and gradients need no forward hook. After `loss.backward()` every parameter's
# gradient sits in `param.grad`, and the optimizer offers the two moments that matter:
# `register_step_pre_hook` runs just before `optimizer.step()` changes the weights, and
# `register_step_post_hook` just after. The pre-hook reads the gradient norms and keeps
# a copy of the weights; the post-hook computes the update-to-weight ratio
#
# $$
# r = \frac{\lVert \theta_t - \theta_{t-1} \rVert_F}{\lVert \theta_{t-1} \rVert_F}
# $$
#
# for each parameter tensor, with $\lVert\cdot\rVert_F$ the Frobenius norm (the
# Euclidean norm of all its entries). A tensor of zeros (a bias that starts at zero)
# has no ratio at its first step: every change is infinitely large against nothing,
# and one `inf` would flatten the TensorBoard chart of every later step.
#
# Every norm of one step is stacked into one tensor and moved to the CPU with one
# `tolist()`: on a GPU each `.item()` waits for the device, and forty waits a step would
# cost more than the norms.


class TrainingMonitor:
    """Track per-parameter norms, update ratios, ReLU activation statistics and
    throughput, and write them to TensorBoard.

    Call `log(step, loss, examples)` after each `optimizer.step()`. `history` maps each
    TensorBoard tag to its list of `(step, value)` pairs; `activations` holds the last
    training batch's output of each ReLU. `close()` removes the hooks.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        writer: SummaryWriter | None = None,
        histogram_every: int = 50,
    ):
        check_monitor_arguments(model, optimizer, writer, histogram_every)
        self.model = model
        self.writer = writer
        self.histogram_every = histogram_every
        self.params = {
            name: param
            for name, param in model.named_parameters()
            if param.requires_grad
        }
        self.history = defaultdict(list)
        self.activations = {}
        self.activation_stats = {}
        self.grad_norms = {}
        self.update_ratios = {}
        self._weights_before = {}
        self._clock = time.perf_counter()
        self._handles = [
            module.register_forward_hook(self._activation_hook(name))
            for name, module in model.named_modules()
            if isinstance(module, nn.ReLU)
        ]
        self._handles += [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]

    def _activation_hook(self, name: str):
        """The forward hook of the ReLU called `name`."""

        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not module.training:
                return
            output = output.detach()  # [batch, units]
            dead = (output == 0).all(dim=0).float().mean()
            stats = torch.stack([output.mean(), output.std(), dead]).tolist()
            self.activations[name] = output.flatten(1)  # [batch, units]
            self.activation_stats[name] = dict(zip(("mean", "std", "dead"), stats))

        return hook

    def _before_step(self, optimizer, args, kwargs) -> None:
        with_grad = {
            name: param for name, param in self.params.items() if param.grad is not None
        }
        norms = [param.grad.norm() for param in with_grad.values()]
        # One transfer for all the norms; a step with no gradient at all is a no-op.
        self.grad_norms = dict(
            zip(with_grad, torch.stack(norms).tolist() if norms else [])
        )
        self._weights_before = {
            name: param.detach().clone() for name, param in with_grad.items()
        }

    def _after_step(self, optimizer, args, kwargs) -> None:
        saved = self._weights_before
        updates = [(self.params[n].detach() - w).norm() for n, w in saved.items()]
        sizes = [w.norm() for w in saved.values()]
        # One transfer again; a parameter that was all zeros (a bias initialised to
        # zero, before its first step) has no ratio: the update is all of it.
        values = torch.stack(updates + sizes).tolist() if updates else []
        count = len(saved)
        self.update_ratios = {
            name: update / size
            for name, update, size in zip(saved, values[:count], values[count:])
            if size > 0
        }

    def log(self, step: int, loss: float, examples: int) -> dict[str, float]:
        """Record and write every scalar of this step; return them by tag.

        `examples` is the batch size; throughput is measured from the previous `log`
        call (or from construction) to this one.
        """
        now = time.perf_counter()
        scalars = {
            "loss/train": float(loss),
            "throughput/examples_per_s": examples / (now - self._clock),
        }
        self._clock = now
        norms = torch.stack([p.detach().norm() for p in self.params.values()]).tolist()
        for name, norm in zip(self.params, norms):
            scalars[f"weight_norm/{name}"] = norm
        for name, norm in self.grad_norms.items():
            scalars[f"grad_norm/{name}"] = norm
        for name, ratio in self.update_ratios.items():
            scalars[f"update_ratio/{name}"] = ratio
        for name, stats in self.activation_stats.items():
            for stat, value in stats.items():
                scalars[f"activation_{stat}/relu{name}"] = value
        for tag, value in scalars.items():
            self.history[tag].append((step, value))
            if self.writer is not None:
                self.writer.add_scalar(tag, value, step)
        if self.writer is not None and step % self.histogram_every == 0:
            for name, output in self.activations.items():
                self.writer.add_histogram(f"activation/relu{name}", output, step)
            for name, param in self.params.items():
                self.writer.add_histogram(f"weight/{name}", param.detach(), step)
        return scalars

    def series(self, tag: str) -> tuple[np.ndarray, np.ndarray]:
        """The steps and values logged under `tag`, as two arrays."""
        steps, values = zip(*self.history[tag]) if self.history[tag] else ((), ())
        return np.array(steps), np.array(values)

    def close(self) -> None:
        """Remove every hook; the model and optimizer run as if never watched."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


# ## Checking the arguments
#
# The monitor hooks into whatever it is given, so a wrong argument would fail late, in
# the middle of training, with a message about a missing method. One checker validates
# the constructor's arguments; the landscape functions below share a second one for
# their directions.


def check_monitor_arguments(model, optimizer, writer, histogram_every) -> None:
    """Raise TypeError or ValueError naming the argument of `TrainingMonitor` that is
    wrong."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"TrainingMonitor: model must be a torch.nn.Module, got "
            f"{type(model).__name__}"
        )
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"TrainingMonitor: optimizer must be a torch.optim.Optimizer, got "
            f"{type(optimizer).__name__}"
        )
    if writer is not None and not isinstance(writer, SummaryWriter):
        raise TypeError(
            f"TrainingMonitor: writer must be a SummaryWriter or None, got "
            f"{type(writer).__name__}"
        )
    if isinstance(histogram_every, bool) or not isinstance(histogram_every, int):
        raise TypeError(
            f"TrainingMonitor: histogram_every must be an int, got {histogram_every!r}"
        )
    if histogram_every < 1:
        raise ValueError(
            f"TrainingMonitor: histogram_every must be >= 1, got {histogram_every}"
        )


# ## Filter-normalised directions
#
# To draw the loss near the trained weights $\theta^*$, pick two directions $\delta$ and
# $\eta$ in weight space and evaluate
#
# $$
# f(\alpha, \beta) = L(\theta^* + \alpha\,\delta + \beta\,\eta)
# $$
#
# on a grid of $(\alpha, \beta)$; with one direction it is a 1-D slice, the plot
# Goodfellow et al. used to look along training paths [@goodfellow2015qualitatively].
# In a space of many dimensions two Gaussian random directions are nearly orthogonal,
# so they span a fair plane.
#
# A plain Gaussian direction has a flaw. A ReLU network computes the same function when
# one layer's weights are multiplied by $c > 0$ and the next layer's divided by $c$, but
# a perturbation of fixed size is then large for the shrunken layer and small for the
# grown one, so the same function can look sharp or flat [@dinh2017sharp]. Li et al.
# [@li2018visualizing] remove the scale by normalising the direction *per filter*: for
# each filter $i$ of each layer (a row of a `Linear` weight, one output unit's incoming
# weights; an output channel of a convolution),
#
# $$
# \delta_{i} \leftarrow \frac{\delta_{i}}{\lVert \delta_{i} \rVert}\,
# \lVert \theta^*_{i} \rVert .
# $$
#
# Moving by $\alpha = 1$ then changes every filter by exactly its own norm, however the
# network spreads its scale. Biases (and any one-dimensional parameter) get a zero
# direction, as in the authors' code: they are few and a bias has no filter to scale by.
# The $10^{-10}$ in the denominator is also theirs, and keeps a zero random row at zero.


def check_directions(owner: str, directions, params: list[torch.Tensor]) -> None:
    """Each direction must be a list of tensors shaped like `params`, one per
    parameter."""
    for index, direction in enumerate(directions):
        if not isinstance(direction, (list, tuple)) or not all(
            isinstance(part, torch.Tensor) for part in direction
        ):
            raise TypeError(
                f"{owner}: direction {index} must be a list of tensors, one per "
                f"parameter, got {type(direction).__name__}"
            )
        if len(direction) != len(params):
            raise ValueError(
                f"{owner}: direction {index} has {len(direction)} tensors but the "
                f"model has {len(params)} parameters"
            )
        for part, param in zip(direction, params):
            if part.shape != param.shape:
                raise ValueError(
                    f"{owner}: direction {index} has a tensor of shape "
                    f"{tuple(part.shape)} where the parameter is {tuple(param.shape)}"
                )


def filter_normalise(
    direction: list[torch.Tensor], params: list[torch.Tensor]
) -> list[torch.Tensor]:
    r"""Scale each filter of `direction` to the norm of the same filter of `params`;
    zero the directions of one-dimensional parameters (biases)."""
    check_directions("filter_normalise", [direction], params)
    normalised = []
    for part, param in zip(direction, params):
        if param.dim() <= 1:
            normalised.append(torch.zeros_like(param))
            continue
        part_norms = part.flatten(1).norm(dim=1)  # [filters]
        param_norms = param.detach().flatten(1).norm(dim=1)  # [filters]
        scale = param_norms / (part_norms + 1e-10)  # [filters]
        normalised.append(part * scale.view(-1, *[1] * (part.dim() - 1)))
    return normalised


def random_direction(
    params: list[torch.Tensor], generator: torch.Generator
) -> list[torch.Tensor]:
    """A Gaussian direction, filter-normalised to `params`. `generator` is a CPU
    generator, so the direction is the same on every device."""
    gaussian = [
        torch.randn(param.shape, generator=generator, dtype=param.dtype).to(
            param.device
        )
        for param in params
    ]
    return filter_normalise(gaussian, params)


# ## The landscape, one model at a time
#
# The obvious way to evaluate $f$ on a grid: for each point, write
# $\theta^* + \sum_j c_j \delta^{(j)}$ into a copy of the model and run it on the data.
# It is correct, and the test uses it as the reference. But a 21×21 grid is 441 forward
# passes, each a few small matrix products wrapped in Python and dispatcher overhead,
# one after the other.


@torch.no_grad()
def loss_landscape_loop(
    model: nn.Module, loss_fn, inputs, targets, directions, coordinates
) -> torch.Tensor:
    r"""$L(\theta^* + \sum_j c_{kj}\,\delta^{(j)})$ for each row $c_k$ of `coordinates`
    `[points, len(directions)]`, one forward pass per point. Returns `[points]`."""
    params = [param.detach() for param in model.parameters()]
    check_directions("loss_landscape_loop", directions, params)
    probe = copy.deepcopy(model).eval()
    losses = []
    for point in coordinates:  # [len(directions)]
        for target, param, *parts in zip(probe.parameters(), params, *directions):
            target.copy_(param + sum(c * part for c, part in zip(point, parts)))
        losses.append(loss_fn(probe(inputs), targets))
    return torch.stack(losses)  # [points]


# ## The landscape, many models per call
#
# `torch.func.functional_call(model, weights, (x,))` runs `model`'s forward with its
# parameters replaced by the tensors in the dict `weights`, without touching the model.
# That makes the loss a plain function of the weights, and `torch.vmap` turns a function
# of one set of weights into a function of a *stack* of them: every weight tensor gets a
# leading dimension of $k$ models, and each `Linear` becomes one batched matrix product
# over all $k$ at once.
#
# The stack is built in one contraction per parameter. With the $m$ directions of a
# parameter stacked as $D \in \mathbb{R}^{m \times \dots}$ and $k$ grid points as the
# rows of $C \in \mathbb{R}^{k \times m}$, the $k$ perturbed copies are
# $\theta^* + C D$, a `tensordot` over the direction axis.
#
# The activations of $k$ models on $n$ examples take $k \cdot n \cdot$ width floats per
# layer, so the grid goes through in chunks of `models_per_call` points: 32 models on
# the 1,438 training digits need 12 MB a layer. The model runs in eval mode (so that
# dropout or batch norm, had it any, would be deterministic, and so that the monitor's
# hooks skip these forwards) and is put back as it was.
#
# What batching buys depends on where the time goes. The arithmetic is the same either
# way: the 21×21 grid on the 1,438 training digits is 441 forwards of about 26 MFLOP, 11
# GFLOP in all. On one CPU thread that is compute-bound: in this page's benchmark run
# (the times vary by machine) the batched grid took about 1.4× the loop's time (0.53 s
# against 0.38 s, mean of five rounds). The loop's per-model overhead, about a tenth of
# a millisecond, is small beside its 0.9 ms a model, and its `[1438, 64]` activations
# stay in cache where a stack of 32 does not. On 128 examples each model is only 2.3
# MFLOP, the overhead is most of the loop's time, and in the same run batching made the
# grid about 3.9× faster (0.036 s against 0.139 s). On a GPU, where
# each of the loop's small kernels costs a launch of several microseconds, the same
# batching is what keeps the device busy; we did not measure that here.


def loss_landscape(
    model: nn.Module,
    loss_fn,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    directions: list[list[torch.Tensor]],
    coordinates: torch.Tensor,
    models_per_call: int = 32,
) -> torch.Tensor:
    r"""$L(\theta^* + \sum_j c_{kj}\,\delta^{(j)})$ for each row $c_k$ of `coordinates`
    `[points, len(directions)]`, `models_per_call` points per vmapped forward. Returns
    `[points]`."""
    names, params = zip(*[(n, p.detach()) for n, p in model.named_parameters()])
    check_directions("loss_landscape", directions, params)
    if coordinates.dim() != 2 or coordinates.shape[1] != len(directions):
        raise ValueError(
            f"loss_landscape: coordinates must be [points, {len(directions)}] (one "
            f"column per direction), got {tuple(coordinates.shape)}"
        )
    if len(inputs) != len(targets):
        raise ValueError(
            f"loss_landscape: inputs has {len(inputs)} examples but targets has "
            f"{len(targets)}"
        )
    stacked_directions = [torch.stack(parts) for parts in zip(*directions)]

    def loss_at(weights: list[torch.Tensor]) -> torch.Tensor:
        outputs = functional_call(model, dict(zip(names, weights)), (inputs,))
        return loss_fn(outputs, targets)

    losses_of_stack = torch.vmap(loss_at)
    was_training = model.training
    model.eval()
    losses = []
    try:
        with torch.no_grad():
            for chunk in coordinates.split(models_per_call):  # [k, directions]
                chunk = chunk.to(params[0])
                weights = [
                    param + torch.tensordot(chunk, direction, dims=1)  # [k, *shape]
                    for param, direction in zip(params, stacked_directions)
                ]
                losses.append(losses_of_stack(weights))  # [k]
    finally:
        model.train(was_training)
    return torch.cat(losses)  # [points]


# ## The example
#
# One small landscape: a 5×5 grid around an untrained digits MLP, on 128 random inputs.
# Its dataflow diagram is declared by the lesson below (it is not a trace): the steps of
# `loss_landscape` with the shapes that pass between them.


def example():
    """A small example: `fn(*args)` evaluates a 5×5 loss landscape and returns its 25
    losses."""
    torch.manual_seed(0)
    model = make_mlp()
    inputs = torch.rand(128, 64)
    targets = torch.randint(10, (128,))
    generator = torch.Generator().manual_seed(0)
    params = [param.detach() for param in model.parameters()]
    directions = [random_direction(params, generator) for _ in range(2)]
    axis = torch.linspace(-1.0, 1.0, 5)
    coordinates = torch.cartesian_prod(axis, axis)  # [25, 2]
    return loss_landscape, (
        model,
        F.cross_entropy,
        inputs,
        targets,
        directions,
        coordinates,
    )


def dataflow(losses: torch.Tensor):
    """The steps of `loss_landscape` on the example, with the shapes between them."""
    points = str(list(losses.shape))  # [25]
    nodes = [
        ("theta", "centre weights θ, untrained: 6 tensors, 8,970 numbers"),
        ("directions", "2 filter-normalised directions δ, η"),
        ("grid", "grid coordinates C [25, 2]"),
        ("stack", "θ + C D, per parameter"),
        ("vmap", "vmap(functional_call(model)) on x [128, 64]"),
        ("loss", "cross-entropy per model"),
        ("out", f"losses {points}"),
    ]
    edges = [
        ("theta", "stack", "[64, 64], [64], ..."),
        ("directions", "stack", "D [2, 64, 64], ..."),
        ("grid", "stack", "[25, 2], in chunks"),
        ("stack", "vmap", "[k, 64, 64], ..."),
        ("vmap", "loss", "logits [k, 128, 10]"),
        ("loss", "out", "[k]"),
    ]
    return nodes, edges


# ## Demo: train, watch, then look around
#
# The demo trains the digits MLP with SGD and momentum, logging every step through the
# monitor to a TensorBoard run, then evaluates the loss landscape on the whole training
# set around the final weights: a 1-D slice along $\delta$ and a 2-D grid over
# $(\delta, \eta)$, both on $[-1, 1]$. The landscape's centre must equal the training
# loss of the trained model, which the demo checks.


def train(model, data, steps, batch_size, lr, seed, writer, histogram_every):
    """Train `model` with SGD and momentum under a `TrainingMonitor`; return the
    monitor (closed)."""
    x_train, y_train = data
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    monitor = TrainingMonitor(model, optimizer, writer, histogram_every)
    batches = torch.Generator().manual_seed(seed)
    for step in tqdm(range(steps), desc="training"):
        index = torch.randint(len(x_train), (batch_size,), generator=batches)
        index = index.to(x_train.device)
        loss = F.cross_entropy(model(x_train[index]), y_train[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        monitor.log(step, loss.item(), batch_size)
    monitor.close()
    return monitor


def plot_monitor(monitor: TrainingMonitor, out: Path) -> None:
    """The summary figure: six panels of what the monitor saw."""
    fig, axes = figure(panels=6, rows=2)
    axes = axes.ravel()
    steps, loss = monitor.series("loss/train")
    axes[0].plot(steps, loss, linewidth=0.8)
    axes[0].set(yscale="log", xlabel="step $k$", ylabel="loss", title="training loss")
    weights = [name for name in monitor.params if name.endswith("weight")]
    lowest = np.inf
    for name in weights:
        steps, norms = monitor.series(f"grad_norm/{name}")
        axes[1].plot(steps, norms, linewidth=0.8, label=name)
        axes[2].plot(*monitor.series(f"update_ratio/{name}"), linewidth=0.8, label=name)
        lowest = min(lowest, min(norms))
    axes[1].set(
        yscale="log",
        xlabel="step $k$",
        ylabel=r"$\Vert \nabla_W L \Vert_F$",
        title="gradient norm per weight",
    )
    # The norms fill the panel: room below them for the legend, in one row.
    axes[1].set_ylim(bottom=lowest / 4)
    axes[1].legend(loc="lower center", ncols=len(weights))
    axes[2].axhline(1e-3, color="black", linestyle="--", linewidth=0.8)
    axes[2].set(
        yscale="log",
        xlabel="step $k$",
        ylabel=r"$\Vert \Delta W \Vert_F / \Vert W \Vert_F$",
        title="update-to-weight ratio",
    )
    for name, output in monitor.activations.items():
        axes[3].plot(
            *monitor.series(f"activation_dead/relu{name}"), label=f"relu{name}"
        )
        axes[4].hist(
            output.cpu().numpy().ravel(), bins=40, histtype="step", label=f"relu{name}"
        )
    axes[3].set(
        xlabel="step $k$", ylabel="fraction of units", title="dead ReLUs per batch"
    )
    axes[4].set(
        yscale="log", xlabel="activation", ylabel="count", title="last batch's ReLUs"
    )
    axes[5].plot(*monitor.series("throughput/examples_per_s"), linewidth=0.8)
    axes[5].set(
        yscale="log", xlabel="step $k$", ylabel="examples / s", title="throughput"
    )
    for index in (2, 3, 4):
        axes[index].legend()
    save(
        fig,
        out / "monitor.png",
        caption="What the monitor logged while the digits MLP trained: the loss, the "
        "gradient norm and update-to-weight ratio of each weight matrix (dashed: the "
        "1e-3 rule of thumb), the fraction of ReLU units silent on a whole batch, the "
        "histogram of the last batch's activations, and examples per second.",
    )


def plot_landscape(alphas, slice_losses, axis, grid_losses, out: Path) -> None:
    """The 1-D slice and the 2-D contour around the trained weights."""
    fig, (line, contour) = figure(panels=2)
    line.plot(alphas, slice_losses)
    line.plot(0.0, slice_losses[len(slice_losses) // 2], "k*", markersize=10)
    line.set(
        yscale="log",
        xlabel=r"$\alpha$",
        ylabel=r"$L(\theta^* + \alpha\delta)$",
        title="1-D slice",
    )
    levels = np.geomspace(grid_losses.min(), grid_losses.max(), 15)
    # grid_losses is [alpha, beta]; contour wants [rows = beta, columns = alpha]
    filled = contour.contourf(axis, axis, grid_losses.T, levels=levels, cmap="viridis")
    contour.contour(axis, axis, grid_losses.T, levels=levels, colors="white")
    contour.plot(0.0, 0.0, "w*", markersize=10)
    contour.set(xlabel=r"$\alpha$", ylabel=r"$\beta$", title="2-D contour of the loss")
    fig.colorbar(filled, ax=contour, label="training loss", format="%.2g")
    save(
        fig,
        out / "landscape.png",
        caption="The training loss of the trained digits MLP along filter-normalised "
        "random directions (Li et al. 2018): left, a 1-D slice along one direction; "
        "right, contours over the plane of two, with levels spaced evenly in log "
        "scale. The star is the trained model.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train the digits MLP under the monitor, draw its loss landscape, save the
    figures."""
    parser = argparse.ArgumentParser(
        description="Watch a digits MLP train, then draw its loss landscape.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--steps", type=integer(at_least=1), default=400, help="training steps"
    )
    parser.add_argument(
        "--batch-size", type=integer(at_least=1), default=64, help="mini-batch size"
    )
    parser.add_argument(
        "--lr", type=number(above=0), default=0.05, help="SGD learning rate"
    )
    parser.add_argument(
        "--histogram-every",
        type=integer(at_least=1),
        default=50,
        help="write activation and weight histograms every this many steps",
    )
    parser.add_argument(
        "--grid",
        type=integer(at_least=2),
        default=21,
        help="points per side of the 2-D landscape",
    )
    parser.add_argument(
        "--slice-points",
        type=integer(at_least=2),
        default=51,
        help="points of the 1-D slice",
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--threads",
        type=integer(at_least=1),
        default=1,
        help="torch CPU threads: at these sizes a second thread costs more than it "
        "saves, much more on a busy machine",
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to run on",
    )
    parser.add_argument(
        "--out", default="out/training_monitor", help="folder for figures and runs"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    log_dir = out / "runs" / f"seed{args.seed}"
    # A rerun replaces its event files rather than overlaying a second run on them.
    for old in log_dir.glob("events.out.tfevents.*"):
        old.unlink()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = (
        torch.tensor(array, device=args.device) for array in digits(seed=args.seed)
    )
    x_train, x_test = x_train.float(), x_test.float()
    model = make_mlp().to(args.device)
    writer = SummaryWriter(log_dir=str(log_dir))
    monitor = train(
        model,
        (x_train, y_train),
        args.steps,
        args.batch_size,
        args.lr,
        args.seed,
        writer,
        args.histogram_every,
    )
    writer.close()
    model.eval()
    with torch.no_grad():
        train_loss = F.cross_entropy(model(x_train), y_train).item()
        test_accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    _, throughput = monitor.series("throughput/examples_per_s")
    dead = {name: stats["dead"] for name, stats in monitor.activation_stats.items()}
    print(
        f"after {args.steps} steps: training loss {train_loss:.4f}, "
        f"test accuracy {test_accuracy:.4f}"
    )
    print(f"median throughput {np.median(throughput):,.0f} examples/s")
    print(
        "dead ReLU fraction on the last batch: "
        + ", ".join(f"relu{name} {fraction:.3f}" for name, fraction in dead.items())
    )

    generator = torch.Generator().manual_seed(args.seed)
    params = [param.detach() for param in model.parameters()]
    directions = [random_direction(params, generator) for _ in range(2)]
    alphas = torch.linspace(-1.0, 1.0, args.slice_points)
    slice_losses = loss_landscape(
        model, F.cross_entropy, x_train, y_train, directions[:1], alphas[:, None]
    )
    axis = torch.linspace(-1.0, 1.0, args.grid)
    started = time.perf_counter()
    grid_losses = loss_landscape(
        model,
        F.cross_entropy,
        x_train,
        y_train,
        directions,
        torch.cartesian_prod(axis, axis),  # [grid², 2]
    ).view(args.grid, args.grid)  # [alpha, beta]
    seconds = time.perf_counter() - started
    centre = loss_landscape(
        model, F.cross_entropy, x_train, y_train, directions, torch.zeros(1, 2)
    ).item()
    print(
        f"{args.grid}×{args.grid} landscape on {len(x_train)} examples in "
        f"{seconds:.2f} s; centre loss {centre:.4f} (model: {train_loss:.4f}); "
        f"grid max {grid_losses.max().item():.2f}"
    )
    plot_monitor(monitor, out)
    plot_landscape(
        alphas.numpy(),
        slice_losses.cpu().numpy(),
        axis.numpy(),
        grid_losses.cpu().numpy(),
        out,
    )
    print(f"view the run with: tensorboard --logdir {out / 'runs'}")
    return {
        "train_loss": train_loss,
        "test_accuracy": test_accuracy,
        "centre_loss": centre,
        "landscape_seconds": seconds,
        "median_throughput": float(np.median(throughput)),
        **{f"dead_fraction_relu{name}": fraction for name, fraction in dead.items()},
    }


if __name__ == "__main__":
    main()

# ## Exercises
#
# 1. Train with `--lr 1.0` and watch the dead fraction and the update-to-weight ratio.
#    At what step do units start to die, and does the ratio warn you first? Initialise
#    the hidden biases at $+0.1$ and repeat.
# 2. Replace the filter normalisation with a direction of the same *total* norm as
#    $\theta^*$, then multiply the first layer's weights by 10 and divide the second
#    layer's by 10 (the function is unchanged). Which of the two landscapes changes?
# 3. Draw the 1-D slice of Goodfellow et al.: the loss along the straight line from the
#    initial weights to the trained ones, $\theta(\alpha) = (1-\alpha)\theta_0 +
#    \alpha\theta^*$. Is it convex, and is there a barrier?
# 4. Time `loss_landscape` for `models_per_call` from 1 to 441. Where does the speed-up
#    stop growing on your machine, and what limits it there?
