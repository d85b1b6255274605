r"""
---
title: "What autograd records: the computation graph"
summary: >-
  PyTorch's backward graph walked node by node, the tensors it saves and their memory,
  hooks, the version counter, and every ATen op a linear layer dispatches.
time: 8 s
references:
  - key: paszke2017automatic
    authors:
      - Adam Paszke
      - Sam Gross
      - Soumith Chintala
      - Gregory Chanan
      - Edward Yang
      - Zachary DeVito
      - Zeming Lin
      - Alban Desmaison
      - Luca Antiga
      - Adam Lerer
    title: Automatic differentiation in PyTorch
    year: 2017
    venue: NIPS 2017 Autodiff Workshop
    url: https://openreview.net/forum?id=BJJsrmfCZ
  - key: paszke2019pytorch
    authors: [Adam Paszke, Sam Gross, Francisco Massa, Adam Lerer, et al.]
    title: "PyTorch: An Imperative Style, High-Performance Deep Learning Library"
    year: 2019
    venue: NeurIPS 2019
    arxiv: "1912.01703"
  - key: chen2016training
    authors: [Tianqi Chen, Bing Xu, Chiyuan Zhang, Carlos Guestrin]
    title: Training Deep Nets with Sublinear Memory Cost
    year: 2016
    venue: arXiv preprint
    arxiv: "1604.06174"
  - key: yang2020pytorch
    authors: [Edward Z. Yang]
    title: Let's talk about the PyTorch dispatcher
    year: 2020
    venue: blog post
    url: http://blog.ezyang.com/2020/09/lets-talk-about-the-pytorch-dispatcher/
worksheet:
  - region: walk_graph
    hint: >-
      Check the output was recorded, then walk from its grad_fn with an explicit stack
      instead of recursion: for each node's next_functions skip the None entries,
      record every edge (node, next_node), and push a next node only the first time it
      is seen, listing nodes in the order first reached.
    tests:
      - test_walker_finds_the_nodes_the_engine_evaluates
      - test_walker_on_a_hand_built_graph_and_a_shared_node
      - test_walker_has_no_recursion_limit
  - region: SavedTensorLog.pack
    hint: >-
      Log (shape, dtype, storage key) of every tensor saved; unless its storage belongs
      to a parameter, record the tensor's own bytes (numel times element size) under
      its storage key, keeping the largest seen, and return the tensor unchanged.
    tests:
      - test_saved_bytes_match_the_formula
      - test_saved_bytes_count_a_view_not_its_whole_storage
  - region: GradientRecorder._forward_hook
    hint: >-
      Return a forward hook that registers a tensor hook on the layer's output; the
      tensor hook stores the gradient it receives in self.gradients under the layer's
      name.
    tests: [test_gradient_recorder_matches_autograd_grad_in_float64]
---

[The scalar engine](../foundations/autograd.md) kept, for every value, the values it
came from and a closure that sends a gradient back to them. PyTorch keeps the same
record, in C++, for tensors [@paszke2017automatic; @paszke2019pytorch]. Every tensor
computed from one that requires a gradient carries a `grad_fn`: a *node* of the
backward graph (`torch::autograd::Node`, in `torch/csrc/autograd/function.h`), such as
`AddmmBackward0` for a matrix product plus bias. The node holds the tensors its
backward formula needs and a list of edges, `next_functions`, to the nodes that made
its inputs. A leaf that requires a gradient, such as a parameter, ends the chain at an
`AccumulateGrad` node, whose only job is to add what arrives into `.grad`.

This lesson reads that record from Python instead of taking it on trust. A walker
follows `next_functions` from any output and draws the backward graph (the dataflow
diagram above is the example's loss, drawn by it). Saved-tensor hooks show exactly which
tensors the graph keeps alive and how many bytes they take: for a ReLU network, one
copy of each layer's activation, which is the memory that reverse mode pays for speed
[@chen2016training]. Tensor and module hooks read gradients as they pass. The version
counter explains the most common autograd error, and where it is raised. Finally a
`TorchDispatchMode` sits at the bottom of PyTorch's dispatcher [@yang2020pytorch] and
lists every ATen operator that a forward and a backward pass of a linear layer call,
which the prose then follows from `nn.Linear` down to the BLAS call.

The demo builds a small MLP on the digits, checks the measured saved-tensor memory
against the formula derived below at nine batch sizes, and counts the ATen ops of one
training step.
"""

import argparse
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import Node, saved_tensors_hooks
from torch.utils._python_dispatch import TorchDispatchMode
from tqdm import tqdm

from annotated.data import digits, integer, integers, torch_device
from annotated.figures import figure, save


# ## The backward graph
#
# Run `y = torch.relu(x @ w + b).sum()` with `w` and `b` requiring gradients. Each
# operation that sees an input requiring a gradient creates a node and stores it as its
# output's `grad_fn`: `y.grad_fn` is a `SumBackward0`, whose one edge leads to a
# `ReluBackward0`, then an `AddBackward0` with two edges, one to the `MmBackward0` of
# the product and one to the `AccumulateGrad` of `b`. An edge is a pair `(node,
# input_nr)`: which node receives the gradient and as which of its inputs. An input that
# needs no gradient (here `x`) gets the pair `(None, 0)`, so that the positions still
# line up with the forward inputs.
#
# `loss.backward()` hands the graph to the engine (`torch/csrc/autograd/engine.cpp`):
# it counts each node's dependencies, then runs a node once all the gradients for its
# output have arrived (`Engine::evaluate_function`), and passes what the node returns
# along its edges. That is the topological order of the scalar engine, with the graph
# built in C++.
#
# The walker below visits every node reachable from an output once. It keeps an
# explicit stack instead of recursing, so that a chain of 10,000 operations (a long
# RNN unrolled, say) does not hit Python's recursion limit. Nodes are keyed by their
# Python object: the same C++ node always comes back as the same Python object while
# it is alive, so a node reached along two paths, like `a` in `a * a`, is visited once.
def walk_graph(output: torch.Tensor) -> tuple[list[Node], list[tuple[Node, Node]]]:
    """Every node of `output`'s backward graph, in the order first reached, and every
    edge `(node, next_node)` along which a gradient flows."""
    check_recorded(output)
    root = output.grad_fn
    nodes, edges, seen, stack = [root], [], {root}, [root]
    while stack:
        node = stack.pop()
        for next_node, _input_nr in node.next_functions:
            if next_node is None:  # an input that needs no gradient
                continue
            edges.append((node, next_node))
            if next_node not in seen:
                seen.add(next_node)
                nodes.append(next_node)
                stack.append(next_node)
    return nodes, edges


# ### Leaves, and the one check of this lesson
#
# A tensor is a *leaf* when no recorded operation made it: `x.is_leaf` is `True` and
# `x.grad_fn` is `None`. Only leaves that require a gradient get an `AccumulateGrad`
# node and a `.grad` after `backward()`. An intermediate tensor (a *non-leaf*) has a
# `grad_fn` and no `.grad`: its gradient passes through and is freed, unless
# `t.retain_grad()` asks for it to be kept. A parameter is a leaf; its `.grad` is what
# the optimiser reads.
#
# So there is nothing to walk from a leaf, and nothing at all from a tensor computed
# under `torch.no_grad()` or from tensors that need no gradient. That is the one
# mistake the functions of this lesson check for, here, with the error naming what was
# expected.
def check_recorded(output: object) -> None:
    """Raise TypeError or ValueError unless `output` is a tensor with a `grad_fn`."""
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"output must be a torch.Tensor, got {type(output).__name__}")
    if output.grad_fn is None:
        kind = "a leaf" if output.requires_grad else "a tensor that needs no gradient"
        raise ValueError(
            f"output must have a grad_fn (be computed by recorded operations), but it "
            f"is {kind}: nothing was recorded; was it made under torch.no_grad() or "
            "from tensors with requires_grad=False?"
        )


# ### What a node saves
#
# A node keeps the tensors its backward formula reads, and Python can see them: every
# saved tensor or number is an attribute named `_saved_<argument>`. The formulas come
# from `tools/autograd/derivatives.yaml` in PyTorch's source, which says for `addmm`
# that the gradient of `mat1` is `grad @ mat2ᵀ` and that of `mat2` is `mat1ᵀ @ grad`.
# So `AddmmBackward0` has `_saved_mat1` and `_saved_mat2`; `ReluBackward0` has
# `_saved_result`, because $\mathrm{relu}'(x) = [\mathrm{relu}(x) > 0]$ can be read
# off the output; `ExpBackward0` also saves its result ($e^x$ is its own derivative),
# while `SinBackward0` saves its input. An `AccumulateGrad` node has `.variable`, the
# leaf itself.
#
# The label names each node and the tensors it saves, with their shapes: that is the
# dataflow diagram at the top of the page.
def node_label(node: Node) -> str:
    """The node's name, its leaf's shape, and the shapes of the tensors it saved."""
    if hasattr(node, "variable"):  # AccumulateGrad: the leaf it writes .grad into
        return f"AccumulateGrad\n{list(node.variable.shape)}"
    saved = []
    for attribute in sorted(dir(node)):
        if attribute.startswith("_saved_"):
            value = getattr(node, attribute)
            if isinstance(value, torch.Tensor):
                saved.append(f"{attribute[len('_saved_') :]} {list(value.shape)}")
    return "\n".join([node.name(), *saved])


def dataflow(output: torch.Tensor) -> tuple[list, list]:
    """The backward graph of `output` as `(nodes, edges)` of strings, for Graphviz."""
    nodes, edges = walk_graph(output)
    ids = {node: f"n{i}" for i, node in enumerate(nodes)}
    return (
        [(ids[node], node_label(node)) for node in nodes],
        [(ids[src], ids[dst], "") for src, dst in edges],
    )


# The same graph as Graphviz's DOT text, for any output (the demo writes one to
# `--out`; `dot -Tsvg graph.dot` draws it). Gradients flow along the arrows.
def to_dot(output: torch.Tensor) -> str:
    """DOT source of `output`'s backward graph."""
    nodes, edges = dataflow(output)
    lines = ["digraph backward {", "  node [shape=box, fontname=monospace];"]
    for node_id, label in nodes:
        lines.append(f'  {node_id} [label="{label.replace(chr(10), chr(92) + "n")}"];')
    lines += [f"  {src} -> {dst};" for src, dst, _ in edges]
    return "\n".join([*lines, "}"])


# ### `retain_graph`: the saved tensors are freed by the first backward
#
# After a node has run, the engine releases what it saved (`Node::release_variables`),
# since a second backward is rare and activations are the largest thing in memory. A
# second `loss.backward()` then fails with *Trying to backward through the graph a
# second time*. `loss.backward(retain_graph=True)` keeps them, for the rare case that
# needs two passes (two losses sharing a trunk, or a gradient of a gradient); each pass
# adds into `.grad`, so two passes double it.
#
# This function runs the backward pass twice and returns the gradient the leaf holds
# afterwards; the test checks both outcomes.
def backward_twice(retain_graph: bool) -> torch.Tensor:
    """`(x.exp()).sum().backward()` twice on x = [0, 1, 2]; returns `x.grad`."""
    x = torch.tensor([0.0, 1.0, 2.0], requires_grad=True)
    loss = x.exp().sum()
    loss.backward(retain_graph=retain_graph)
    loss.backward()  # raises RuntimeError unless the graph was retained
    return x.grad  # 2 e^x: one e^x from each pass


# ## Saved tensors and their memory
#
# What a node saves stays alive until the backward pass frees it: this, not the
# parameters, is what fills a GPU during training. `saved_tensors_hooks(pack, unpack)`
# lets us watch it [@chen2016training]. Inside the context, every tensor that a node
# saves goes through `pack(tensor)`, and whatever `pack` returns is stored instead; in
# the backward pass `unpack` turns it back into a tensor. Activation checkpointing and
# CPU offloading are two pairs of such hooks. Ours stores the tensor unchanged and
# writes down its shape, dtype and storage.
#
# Counting bytes needs care: two nodes often save the same memory. A ReLU saves its
# output and the next layer's `addmm` saves the same tensor as `mat1`; `log_softmax`
# saves its result and `nll_loss` saves it again as `self`. And `addmm`'s `mat2` is
# `weightᵀ`, a view of a parameter that exists anyway. So the log counts each storage
# once, and leaves out storages that belong to a parameter. It counts the bytes of the
# saved tensor itself, not of the whole storage behind it: a batch sliced from the data
# set, `inputs[:64]`, is a view whose storage is the entire data set, which the graph
# keeps alive but which exists anyway.
class SavedTensorLog:
    r"""Records every tensor saved for backward inside `with SavedTensorLog(model):`.

    `entries` lists `(shape, dtype, storage_key)` in the order saved. `new_bytes` is
    the memory the graph keeps alive beyond the parameters: each storage counted once.
    """

    def __init__(self, model: nn.Module | None = None):
        parameters = [] if model is None else list(model.parameters())
        self.parameter_storages = {storage_key(p) for p in parameters}
        self.entries: list[tuple[tuple[int, ...], torch.dtype, tuple]] = []
        self.storage_bytes: dict[tuple, int] = {}
        self._hooks = saved_tensors_hooks(self.pack, self.unpack)

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = storage_key(tensor)
        self.entries.append((tuple(tensor.shape), tensor.dtype, key))
        if key not in self.parameter_storages:
            size = tensor.numel() * tensor.element_size()
            self.storage_bytes[key] = max(size, self.storage_bytes.get(key, 0))
        return tensor

    def unpack(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    @property
    def new_bytes(self) -> int:
        return sum(self.storage_bytes.values())

    def __enter__(self) -> "SavedTensorLog":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def storage_key(tensor: torch.Tensor) -> tuple:
    """Which memory a tensor lives in: its device and its storage's address."""
    return (tensor.device.type, tensor.untyped_storage().data_ptr())


# ### The memory of an MLP, as a formula
#
# Take an MLP with widths $d_0, d_1, \dots, d_L$, ReLU between its layers, a
# cross-entropy loss, float32 throughout, a batch of $B$ inputs that need no gradient
# and integer targets. The log above will see:
#
# - the first `addmm` saves its input $x$ ($B d_0$ numbers) to form the weight's
#   gradient, and not `mat2`: $x$ needs no gradient, so `weightᵀ` is never used;
# - each later `addmm` saves its input, the previous ReLU's output, which the ReLU
#   saved already ($B d_l$ numbers, counted once), and `weightᵀ`, a parameter;
# - `log_softmax` saves its result ($B d_L$), which `nll_loss` saves again, with the
#   targets ($B$ int64s) and a one-number `total_weight`.
#
# Every activation is kept exactly once:
# $$
# \begin{aligned}
# M(B) &= 4 B \sum_{l=0}^{L} d_l + 8 B + 4 \ \text{bytes},
# \end{aligned}
# $$
# linear in the batch, and independent of the parameter count. For the demo's
# 64-32-10 network that is $4 \cdot 106 + 8 = 432$ bytes per example, plus 4.
def predicted_saved_bytes(widths: list[int], batch: int) -> int:
    """$M(B)$ above: bytes saved for backward by `mlp_loss` on an MLP of `widths`."""
    return 4 * batch * sum(widths) + 8 * batch + 4


def make_mlp(widths: list[int], seed: int = 0) -> nn.Sequential:
    """Linear layers of `widths` with ReLU between them."""
    if len(widths) < 2 or not all(isinstance(w, int) and w > 0 for w in widths):
        raise ValueError(f"widths must list at least two positive ints, got {widths!r}")
    torch.manual_seed(seed)
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        if i > 0:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers)


def mlp_loss(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of `model(inputs)` against integer `targets`."""
    return F.cross_entropy(model(inputs), targets)  # inputs [B, d_0], targets [B]


# ### What is not recorded: `no_grad`, `detach`, and inference
#
# Under `torch.no_grad()` operations create no node and save nothing: the output has no
# `grad_fn`, and the log above sees no tensor (the test checks it). That is why
# evaluation runs under it: the activations are freed as soon as the next layer has
# read them. `t.detach()` returns a tensor that shares `t`'s memory but has no
# `grad_fn` and does not require a gradient, so the graph is cut there; the test shows
# that gradients stop at it. (`torch.inference_mode()` goes further and also skips the
# version counter of the next section.)
#
# ## Hooks: reading gradients as they pass
#
# A *tensor hook*, `t.register_hook(fn)`, is called with $\partial L / \partial t$ when
# the backward pass reaches `t`; returning a tensor replaces the gradient (gradient
# clipping per tensor is one line). A *module hook* works at the level of layers:
# `register_forward_hook` sees a module's inputs and output after its forward, and
# `register_full_backward_hook` sees the gradients of its output and inputs.
#
# The recorder below uses both: a forward hook on each `nn.Linear` attaches a tensor
# hook to the layer's output, which stores the gradient flowing into that layer. Its
# norm per layer is the usual first look at vanishing or exploding gradients. The hooks
# are removed with the handles that registering returned.
class GradientRecorder:
    """`with GradientRecorder(model) as rec:` stores in `rec.gradients[name]` the
    gradient of the loss with respect to the output of each `nn.Linear` of `model`."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.gradients: dict[str, torch.Tensor] = {}
        self._handles = []

    def _forward_hook(self, name: str):
        def hook(module, inputs, output):
            def store(gradient):
                self.gradients[name] = gradient  # [B, out_features]

            output.register_hook(store)

        return hook

    def __enter__(self) -> "GradientRecorder":
        for name, module in self.model.named_modules():
            if isinstance(module, nn.Linear):
                hook = self._forward_hook(name)
                self._handles.append(module.register_forward_hook(hook))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


# ## The version counter
#
# A saved tensor is stored by reference, not copied. If something overwrites it in
# place before the backward pass, the gradient would silently be wrong. So every tensor
# has a version counter (`t._version`, a `c10::VariableVersion` shared by a tensor and
# all its views), which each in-place operation bumps. A node that saves a tensor
# records its version then; when the backward pass unpacks it
# (`SavedVariable::unpack` in `torch/csrc/autograd/saved_variable.cpp`), a different
# version raises *one of the variables needed for gradient computation has been
# modified by an inplace operation ... is at version 1; expected version 0 instead*.
#
# Two things follow, both checked by the test. The error comes from `backward()`, not
# from the in-place operation that caused it, so the traceback points at the wrong
# line. And it depends on the backward formula: `x.exp().mul_(2)` fails, because
# `ExpBackward0` saved the result that `mul_` overwrote, but `x.sin().mul_(2)` is
# fine, because `SinBackward0` saved `x`. (An in-place operation on a leaf that
# requires a gradient fails at once: it would change a value the graph starts from.)
def inplace_after(op: str) -> torch.Tensor:
    """`x.<op>()` on x = [0.5, 1.0, 1.5], then doubled in place, then backward.

    Returns `x.grad`; raises RuntimeError where the saved tensor was overwritten.
    """
    x = torch.tensor([0.5, 1.0, 1.5], requires_grad=True)
    y = getattr(x, op)()  # version 0
    y.mul_(2)  # version 1: fine so far
    y.sum().backward()  # unpacks what the node saved, and checks its version
    return x.grad


# ## Below autograd: the dispatcher
#
# A call such as `torch.addmm(b, x, wᵀ)` does not go straight to a kernel. It goes to
# PyTorch's *dispatcher*, which looks at the *dispatch keys* of its arguments (is this
# tensor on CPU or CUDA, does it require a gradient, is a Python mode active) and calls
# the kernel registered for the highest key, which usually does its part and
# redispatches below itself [@yang2020pytorch]. The operators and their signatures are
# declared in `aten/src/ATen/native/native_functions.yaml`.
#
# A `TorchDispatchMode` registers Python code at the `Python` key, which sits *below*
# `Autograd`: it sees the operators that actually run, after autograd has recorded its
# node, and it sees the backward pass too, since the backward formulas are ATen calls
# as well. The recorder stores each operator with the shapes of its tensor inputs and
# outputs, then calls it unchanged.
class AtenOpRecorder(TorchDispatchMode):
    """Inside `with AtenOpRecorder() as rec:`, `rec.ops` lists `(op, in_shapes,
    out_shapes)` for every ATen operator called, in order."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, list, list]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.append((op_name(func), shapes(args), shapes(out)))
        return out


def op_name(func) -> str:
    """`aten.addmm.default` → `aten::addmm`; other overloads keep their name."""
    name = str(func)
    name = name.removesuffix(".default")
    return name.replace("aten.", "aten::", 1)


def shapes(value) -> list:
    """The shapes of the tensors in a (nested) argument list, in order."""
    if isinstance(value, torch.Tensor):
        return [tuple(value.shape)]
    if isinstance(value, (list, tuple)):
        return [shape for item in value for shape in shapes(item)]
    return []


# ### One op from Python to its kernel: `aten::addmm`
#
# Follow `nn.Linear(3, 2)` on a batch `x` of shape [4, 3] that requires a gradient.
#
# 1. `nn.Linear.forward` calls `F.linear(x, weight, bias)`, bound in C++ to
#    `at::linear` (`aten/src/ATen/native/Linear.cpp`). `linear` is a *composite*
#    operator, written in terms of others and with no backward formula of its own:
#    for a 2-D input with a bias it returns `at::addmm(bias, input, weight.t())`. So the
#    recorder never sees `aten::linear`; it sees **`aten::t`** (a view, [2, 3] → [3, 2])
#    and **`aten::addmm`** ([2], [4, 3], [3, 2] → [4, 2]).
# 2. The call to `addmm` reaches the dispatcher. The `Autograd` key's kernel is
#    generated from `derivatives.yaml` (`VariableType::addmm`, in
#    `torch/csrc/autograd/generated/VariableType_*.cpp`): it creates `AddmmBackward0`,
#    saves `mat1` and `mat2` through `SavedVariable` (and so through our pack hook),
#    and redispatches below autograd.
# 3. Our mode's `Python` key is next: `__torch_dispatch__` records the call.
# 4. The `CPU` key's kernel, `addmm_out_cpu` → `addmm_impl_cpu_` in
#    `aten/src/ATen/native/LinearAlgebra.cpp`, copies the bias into the output and calls
#    `at::native::cpublas::gemm`, which hands the product to the BLAS (MKL or
#    OpenBLAS). On a GPU the `CUDA` key's kernel calls cuBLAS instead.
#
# The backward pass of that layer, for a given output gradient, calls eleven ATen ops
# (`LINEAR_BACKWARD_OPS` below, checked by the test). `AddmmBackward0` computes the
# input's gradient as `grad @ mat2ᵀ` (an **`aten::t`** and an **`aten::mm`**), and the
# gradient of `mat2` as $(\mathrm{grad}^\top \mathrm{mat1})^\top$ rather than
# `mat1ᵀ @ grad` (two more `aten::t` and the second `aten::mm`): `mat2` is a transposed
# view of the weight, and `mm_mat2_backward` (in
# `torch/csrc/autograd/FunctionsManual.cpp`) builds its gradient in the same transposed
# layout. The bias's gradient sums `grad` over the batch
# (**`aten::sum.dim_IntList`**, then **`aten::view`** to shape [2]). `TBackward0`
# transposes the gradient of `weight.t()` back to the weight's shape, the fourth
# `aten::t`. Each of the three `AccumulateGrad` nodes ends with an **`aten::detach`**
# as it stores a fresh `.grad`.
LINEAR_FORWARD_OPS = Counter({"aten::t": 1, "aten::addmm": 1})
LINEAR_BACKWARD_OPS = Counter(
    {
        "aten::mm": 2,
        "aten::t": 4,
        "aten::sum.dim_IntList": 1,
        "aten::view": 1,
        "aten::detach": 3,
    }
)


def record_linear(
    layer: nn.Linear, inputs: torch.Tensor, output_grad: torch.Tensor
) -> tuple[list, list]:
    """The ATen ops of `layer(inputs)` and of its backward pass with `output_grad`."""
    with AtenOpRecorder() as forward:
        output = layer(inputs)
    with AtenOpRecorder() as backward:
        output.backward(output_grad)
    return forward.ops, backward.ops


# ## The example
#
# The dataflow diagram at the top is `walk_graph` applied to this example's loss: a
# 64-32-10 MLP's cross-entropy on four digits. Read it from the top, the way gradients
# flow: `NllLossBackward0`, `LogSoftmaxBackward0`, then each layer's
# `AddmmBackward0` with its `TBackward0` and `AccumulateGrad` nodes, and the
# `ReluBackward0` between the layers: 11 nodes.
def example():
    """The loss of a small MLP on four digits: `mlp_loss(*args)`."""
    model = make_mlp([64, 32, 10], seed=0)
    x_train, y_train, _, _ = digits(seed=0)
    inputs = torch.tensor(x_train[:4], dtype=torch.float32)  # [4, 64]
    targets = torch.tensor(y_train[:4], dtype=torch.long)  # [4]
    return mlp_loss, (model, inputs, targets)


# ## The demo
#
# The demo checks the memory formula at nine batch sizes, then records one training
# step of the MLP on the digits: the backward graph (written as `graph.dot`), the
# gradient norm of each layer, and the ATen ops of the forward pass, the backward pass
# and the optimiser's update.
def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description="Walk a backward graph, measure what it saves, and record the ATen "
        "ops of one training step.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--widths",
        type=integers(at_least=1),
        default="64,32,10",
        help="layer widths of the MLP, comma-separated (first 64, last 10)",
    )
    parser.add_argument(
        "--max-batch",
        type=integer(at_least=1),
        default=256,
        help="largest batch size measured",
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device",
    )
    parser.add_argument(
        "--out", default="out/computation_graph", help="folder for the figures"
    )
    args = parser.parse_args(argv)
    widths = args.widths
    if widths[0] != 64 or widths[-1] != 10:
        parser.error("--widths must start at 64 and end at 10")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    device = torch.device(args.device)
    model = make_mlp(widths, seed=args.seed).to(device)
    x_train, y_train, _, _ = digits(seed=args.seed)
    inputs = torch.tensor(x_train, dtype=torch.float32, device=device)  # [n, 64]
    targets = torch.tensor(y_train, dtype=torch.long, device=device)  # [n]

    # Saved memory against the formula, batch 1, 2, 4, ... up to --max-batch.
    batches = [2**k for k in range(args.max_batch.bit_length())]
    measured, predicted = [], []
    for batch in tqdm(batches, desc="batch sizes"):
        with SavedTensorLog(model) as log:
            mlp_loss(model, inputs[:batch], targets[:batch])
        measured.append(log.new_bytes)
        predicted.append(predicted_saved_bytes(widths, batch))
    worst = max(abs(m - p) / p for m, p in zip(measured, predicted))

    # One training step, recorded.
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    batch_inputs, batch_targets = inputs[: batches[-1]], targets[: batches[-1]]
    with GradientRecorder(model) as gradients, AtenOpRecorder() as forward:
        loss = mlp_loss(model, batch_inputs, batch_targets)
    (out / "graph.dot").write_text(to_dot(loss))
    graph_nodes = len(walk_graph(loss)[0])
    with AtenOpRecorder() as backward:
        loss.backward()
    with AtenOpRecorder() as update:
        optimiser.step()
    norms = ", ".join(
        f"layer {name}: {g.norm().item():.3g}"
        for name, g in gradients.gradients.items()
    )

    print(
        f"saved for backward at batch {batches[-1]}: {measured[-1]:,} bytes, formula "
        f"{predicted[-1]:,} (worst relative error {worst:.3g} over {len(batches)} "
        "batch sizes)"
    )
    print(f"backward graph: {graph_nodes} nodes; gradient norms: {norms}")
    print(
        f"ATen ops: forward {len(forward.ops)}, backward {len(backward.ops)}, "
        f"SGD step {len(update.ops)}"
    )

    fig, (memory_axes, ops_axes) = figure(panels=2)
    memory_axes.loglog(batches, predicted, color="tab:gray", label="formula $M(B)$")
    memory_axes.loglog(batches, measured, "o", color="tab:blue", label="measured")
    memory_axes.set(
        xlabel="batch size $B$",
        ylabel="bytes saved for backward",
        title="Saved tensors grow with the batch",
    )
    memory_axes.legend()
    counts = [Counter(op for op, _, _ in ops) for ops in (forward.ops, backward.ops)]
    names = sorted(set(counts[0]) | set(counts[1]))
    positions = torch.arange(len(names), dtype=torch.float32)
    for offset, count, label in [
        (-0.2, counts[0], "forward"),
        (0.2, counts[1], "backward"),
    ]:
        ops_axes.barh(
            positions + offset, [count[n] for n in names], height=0.4, label=label
        )
    ops_axes.set_yticks(positions, [n.removeprefix("aten::") for n in names])
    ops_axes.set(xlabel="calls", title="ATen ops of one step")
    ops_axes.legend()
    save(
        fig,
        out / "saved_memory_and_ops.png",
        caption="Left: bytes saved for backward by the MLP against the formula M(B). "
        "Right: the ATen ops its forward and backward passes dispatch.",
    )
    return {
        "saved_bytes": float(measured[-1]),
        "predicted_bytes": float(predicted[-1]),
        "worst_relative_error": worst,
        "graph_nodes": float(graph_nodes),
        "forward_ops": float(len(forward.ops)),
        "backward_ops": float(len(backward.ops)),
    }


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Add `torch.utils.checkpoint.checkpoint` around the hidden layer of the demo's MLP
#    and measure the saved bytes again with `SavedTensorLog`. Which activation
#    disappears from the log, and which ATen ops appear twice in the backward pass?
# 2. Replace `nn.ReLU()` by `nn.Tanh()`. Does $M(B)$ change? Read `TanhBackward0`'s
#    saved attributes to explain why, then write `x.tanh().mul_(2)` and predict whether
#    its backward pass raises.
# 3. Write pack and unpack hooks that store every saved tensor in float16 and restore
#    it to float32. Measure the memory, and compare the gradients with the exact ones:
#    how large is the error?
# 4. Feed a 3-D input of shape [2, 4, 3] to `nn.Linear(3, 2)` under `AtenOpRecorder`:
#    which ops appear around `addmm`? Then feed an input of the same shape that is not
#    contiguous, `torch.randn(4, 2, 3).transpose(0, 1)`. Which ATen ops replace
#    `addmm`, and where in `Linear.cpp` is that decided?
