"""Verified against torch's own autograd: the walker's nodes against the nodes the
engine evaluates (torch.autograd.profiler), the saved-tensor log against each node's
`_saved_*` attributes, the memory formula to the byte, gradients from hooks against
torch.autograd.grad in float64 (to 1e-12), and the ATen ops against the prose's list.
"""

from collections import Counter

import pytest
import torch
from torch import nn

from annotated.systems.computation_graph import (
    LINEAR_BACKWARD_OPS,
    LINEAR_FORWARD_OPS,
    AtenOpRecorder,
    GradientRecorder,
    SavedTensorLog,
    backward_twice,
    dataflow,
    example,
    inplace_after,
    main,
    make_mlp,
    mlp_loss,
    predicted_saved_bytes,
    record_linear,
    to_dot,
    walk_graph,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def evaluated_nodes(loss: torch.Tensor) -> Counter:
    """The names of the nodes torch's engine evaluates in `loss.backward()`."""
    with torch.autograd.profiler.profile() as profile:
        loss.backward()
    prefix = "autograd::engine::evaluate_function: "
    return Counter(
        event.name.removeprefix(prefix).removeprefix("torch::autograd::")
        for event in profile.function_events
        if event.name.startswith(prefix)
    )


def short_name(node) -> str:
    return node.name().removeprefix("torch::autograd::")


# --------------------------------------------------------------------------------------
# The walker.


def test_walker_finds_the_nodes_the_engine_evaluates():
    fn, args = example()
    loss = fn(*args)
    nodes, edges = walk_graph(loss)
    assert len(nodes) == 11  # the count the example's prose states
    assert len({id(node) for node in nodes}) == len(nodes)
    assert all(isinstance(node, torch.autograd.graph.Node) for node in nodes)
    assert Counter(short_name(node) for node in nodes) == evaluated_nodes(loss)
    # every edge is one of next_functions, and every non-None next function is an edge
    expected = [(node, nxt) for node in nodes for nxt, _ in node.next_functions if nxt]
    assert Counter(map(tuple, edges)) == Counter(expected)


def test_walker_on_a_hand_built_graph_and_a_shared_node():
    w = torch.randn(3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    x = torch.randn(3)
    a = torch.relu(x * w + b)
    loss = (a * a).sum()  # `a`'s node is reached along two edges
    nodes, edges = walk_graph(loss)
    names = [node.name() for node in nodes]
    assert Counter(names) == Counter(
        {
            "SumBackward0": 1,
            "MulBackward0": 2,
            "ReluBackward0": 1,
            "AddBackward0": 1,
            "torch::autograd::AccumulateGrad": 2,
        }
    )
    assert len(edges) == 1 + 2 + 1 + 2 + 1  # Sum, a*a twice, Relu, Add, x*w (x: None)
    assert Counter(short_name(node) for node in nodes) == evaluated_nodes(loss)


def test_walker_has_no_recursion_limit():
    x = torch.tensor(1.0, requires_grad=True)
    y = x
    for _ in range(5000):
        y = y * 1.0001
    nodes, edges = walk_graph(y)
    assert len(nodes) == 5001 and len(edges) == 5000


def test_dataflow_and_dot_describe_the_same_graph():
    fn, args = example()
    loss = fn(*args)
    nodes, edges = dataflow(loss)
    labels = dict(nodes)
    assert all(src in labels and dst in labels for src, dst, _ in edges)
    assert labels["n0"].startswith("NllLossBackward0")
    first_layer = [label for label in labels.values() if "mat1 [4, 64]" in label]
    assert first_layer == ["AddmmBackward0\nmat1 [4, 64]"]  # no mat2: x needs no grad
    assert "AccumulateGrad\n[32, 64]" in labels.values()
    dot = to_dot(loss)
    assert dot.count("->") == len(edges) and dot.count("[label=") == len(nodes)


# --------------------------------------------------------------------------------------
# Leaves, retain_graph, no_grad and detach.


def test_leaves_get_grad_and_non_leaves_do_not():
    w = torch.randn(3, requires_grad=True)
    hidden = w.exp()
    kept = w.sin()
    kept.retain_grad()
    (hidden.sum() + kept.sum()).backward()
    assert w.is_leaf and not hidden.is_leaf and not kept.is_leaf
    with pytest.warns(UserWarning, match="not a leaf Tensor"):
        assert hidden.grad is None
    torch.testing.assert_close(kept.grad, torch.ones(3))
    torch.testing.assert_close(w.grad, w.detach().exp() + w.detach().cos())


def test_second_backward_needs_retain_graph():
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        backward_twice(retain_graph=False)
    x = torch.tensor([0.0, 1.0, 2.0])
    torch.testing.assert_close(backward_twice(retain_graph=True), 2 * x.exp())


def test_no_grad_records_nothing_and_detach_cuts_the_graph():
    model = make_mlp([64, 8, 10])
    inputs, targets = torch.randn(5, 64), torch.randint(0, 10, (5,))
    with torch.no_grad(), SavedTensorLog(model) as log:
        loss = mlp_loss(model, inputs, targets)
    assert loss.grad_fn is None and log.entries == [] and log.new_bytes == 0

    w = torch.randn(3, requires_grad=True)
    y = w * 2
    cut = y.detach()
    assert cut.grad_fn is None and not cut.requires_grad
    assert cut.data_ptr() == y.data_ptr()  # same memory
    (w * cut).sum().backward()
    torch.testing.assert_close(w.grad, cut)  # no gradient through `cut`


# --------------------------------------------------------------------------------------
# Saved tensors.


@pytest.mark.parametrize(
    "op, saved",
    [
        ("exp", ["result"]),  # the documented tensors: derivatives.yaml
        ("sin", ["self"]),
        ("relu", ["result"]),
        ("sigmoid", ["result"]),
    ],
)
def test_saved_tensor_hooks_see_the_documented_unary_tensors(op, saved):
    x = torch.randn(4, 5, requires_grad=True)
    with SavedTensorLog() as log:
        y = getattr(x, op)()
    attributes = [
        a[len("_saved_") :] for a in dir(y.grad_fn) if a.startswith("_saved_")
    ]
    assert [
        a
        for a in attributes
        if isinstance(getattr(y.grad_fn, f"_saved_{a}"), torch.Tensor)
    ] == saved
    tensor = getattr(y.grad_fn, f"_saved_{saved[0]}")
    assert len(log.entries) == 1
    shape, dtype, key = log.entries[0]
    assert (shape, dtype) == ((4, 5), torch.float32)
    assert key[1] == tensor.untyped_storage().data_ptr()
    same = y if saved == ["result"] else x
    assert key[1] == same.untyped_storage().data_ptr()


def test_addmm_saves_mat1_and_mat2_only_when_needed():
    layer = nn.Linear(3, 2)
    for needs_grad, expected in [(False, [(4, 3)]), (True, [(4, 3), (3, 2)])]:
        x = torch.randn(4, 3, requires_grad=needs_grad)
        with SavedTensorLog(layer) as log:
            layer(x)
        assert sorted(shape for shape, _, _ in log.entries) == sorted(expected)
        assert log.new_bytes == 4 * 3 * 4  # weightᵀ is a parameter's storage


@pytest.mark.parametrize("widths, batch", [([64, 32, 10], 1), ([64, 7, 5, 10], 33)])
def test_saved_bytes_match_the_formula(widths, batch):
    model = make_mlp(widths, seed=1)
    inputs = torch.randn(batch, 64)
    targets = torch.randint(0, 10, (batch,))
    with SavedTensorLog(model) as log:
        mlp_loss(model, inputs, targets)
    assert log.new_bytes == predicted_saved_bytes(widths, batch)
    # counted once each: the ReLU outputs and log_softmax's result are saved twice
    assert len(log.entries) > len(log.storage_bytes)


def test_saved_bytes_count_a_view_not_its_whole_storage():
    model = make_mlp([64, 10])
    data = torch.randn(100, 64)
    with SavedTensorLog(model) as log:
        mlp_loss(model, data[:3], torch.zeros(3, dtype=torch.long))
    assert log.new_bytes == predicted_saved_bytes([64, 10], 3)


# --------------------------------------------------------------------------------------
# Hooks.


def test_gradient_recorder_matches_autograd_grad_in_float64():
    model = make_mlp([64, 16, 16, 10], seed=2).double()
    inputs = torch.randn(6, 64, dtype=torch.float64)
    targets = torch.randint(0, 10, (6,))
    outputs = {}
    handles = [
        module.register_forward_hook(
            lambda m, i, o, name=name: outputs.__setitem__(name, o)
        )
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
    ]
    with GradientRecorder(model) as recorder:
        loss = mlp_loss(model, inputs, targets)
    for handle in handles:
        handle.remove()
    names = list(outputs)
    expected = torch.autograd.grad(loss, [outputs[n] for n in names], retain_graph=True)
    loss.backward()
    assert sorted(recorder.gradients) == sorted(names) == ["0", "2", "4"]
    for name, gradient in zip(names, expected):
        torch.testing.assert_close(
            recorder.gradients[name], gradient, rtol=1e-12, atol=1e-12
        )
    # the hooks are gone once the block has ended
    assert all(not m._forward_hooks for m in model.modules())


# --------------------------------------------------------------------------------------
# The version counter.


def test_version_counter_error_is_raised_by_backward_not_by_the_inplace_op():
    x = torch.tensor([0.5, 1.0, 1.5], requires_grad=True)
    y = x.exp()
    assert y._version == 0
    y.mul_(2)  # no error here
    assert y._version == 1
    with pytest.raises(
        RuntimeError,
        match=r"modified by an inplace operation.*is at version 1; expected version 0",
    ):
        y.sum().backward()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        inplace_after("exp")


def test_inplace_is_fine_where_the_node_saved_the_input():
    x = torch.tensor([0.5, 1.0, 1.5])
    torch.testing.assert_close(inplace_after("sin"), 2 * x.cos())


def test_inplace_on_a_leaf_that_requires_grad_fails_at_once():
    w = torch.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        w.mul_(2)


# --------------------------------------------------------------------------------------
# The dispatcher.


def test_linear_layer_dispatches_the_ops_the_prose_lists():
    torch.manual_seed(0)
    layer = nn.Linear(3, 2)
    inputs = torch.randn(4, 3, requires_grad=True)
    forward, backward = record_linear(layer, inputs, torch.ones(4, 2))
    assert Counter(op for op, _, _ in forward) == LINEAR_FORWARD_OPS
    assert forward[-1] == ("aten::addmm", [(2,), (4, 3), (3, 2)], [(4, 2)])
    assert Counter(op for op, _, _ in backward) == LINEAR_BACKWARD_OPS
    mms = sorted(out for op, _, out in backward if op == "aten::mm")
    assert mms == [[(2, 3)], [(4, 3)]]  # the weight's and the input's gradients
    assert ("aten::view", [(1, 2)], [(2,)]) in backward  # the bias's gradient


def test_aten_recorder_sees_values_unchanged():
    layer = nn.Linear(3, 2).double()
    inputs = torch.randn(4, 3, dtype=torch.float64)
    with AtenOpRecorder() as recorder:
        recorded = layer(inputs)
    torch.testing.assert_close(recorded, inputs @ layer.weight.T + layer.bias)
    assert recorder.ops


# --------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize(
    "make, error, match",
    [
        (
            lambda: walk_graph([1.0]),
            TypeError,
            "output must be a torch.Tensor, got list",
        ),
        (
            lambda: walk_graph(torch.ones(2, requires_grad=True)),
            ValueError,
            "must have a grad_fn .* it is a leaf",
        ),
        (
            lambda: dataflow(torch.ones(2) * 2),
            ValueError,
            "a tensor that needs no gradient",
        ),
        (lambda: make_mlp([64]), ValueError, "widths must list at least two"),
        (lambda: make_mlp([64, 0]), ValueError, "positive ints"),
        (lambda: main(["--widths", "3,10"]), SystemExit, "2"),
    ],
)
def test_bad_input_raises_a_clear_error(make, error, match):
    with pytest.raises(error, match=match):
        make()


# --------------------------------------------------------------------------------------
# The demo.


def test_demo_memory_matches_the_formula(tmp_path, capsys):
    metrics = main(["--max-batch", "16", "--device", "cpu", "--out", str(tmp_path)])
    assert metrics["worst_relative_error"] == 0.0
    assert metrics["saved_bytes"] == predicted_saved_bytes([64, 32, 10], 16)
    assert metrics["graph_nodes"] == 11
    assert "worst relative error 0 over 5 batch sizes" in capsys.readouterr().out
    assert (tmp_path / "saved_memory_and_ops.png").stat().st_size > 0
    assert (tmp_path / "graph.dot").read_text().startswith("digraph backward")


# --------------------------------------------------------------------------------------
# Benchmarks: what recording costs. One forward and backward pass of the example MLP
# with the saved-tensor log and the ATen recorder on, against the same pass bare.


def step_bare():
    fn, args = EXAMPLE
    fn(*args).backward()


def step_recorded():
    fn, args = EXAMPLE
    with SavedTensorLog(args[0]), AtenOpRecorder():
        loss = fn(*args)
    with AtenOpRecorder():
        loss.backward()


EXAMPLE = example()


@pytest.mark.benchmark(group="MLP forward+backward, batch 4")
def test_bench_step_recorded(benchmark):
    benchmark.extra_info["label"] = "with SavedTensorLog and AtenOpRecorder"
    benchmark(step_recorded)


@pytest.mark.benchmark(group="MLP forward+backward, batch 4")
def test_bench_step_bare(benchmark):
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["label"] = "torch, no recording"
    benchmark(step_bare)
