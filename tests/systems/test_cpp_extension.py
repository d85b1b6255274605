"""Verified against the Python composition F.gelu(x + bias) in float64 (values and both
gradients to 1e-12, float32 to 1e-5), torch.autograd.gradcheck, and
torch.library.opcheck (schema, fake and autograd registrations).

The extension is built once per test session by a module-scoped fixture; torch caches
the build under `$TORCH_EXTENSIONS_DIR` (default `~/.cache/torch_extensions`), so only
the first run on a machine compiles. Shapes cover 1-D, 3-D, transposed (strided)
inputs, one feature, zero rows and zero features; values go out to ±30, where GELU is
the identity or zero. The operator is compiled with `fullgraph=True`, which fails on a
graph break, and the missing-compiler and missing-ninja errors are checked.
"""

import pytest
import torch
import torch.nn.functional as F

from annotated.systems.cpp_extension import (
    BuildToolsMissing,
    bias_gelu,
    bias_gelu_composition,
    dataflow,
    example,
    find_build_tools,
    load_extension,
    main,
)


@pytest.fixture(autouse=True, scope="module")
def extension():
    """Build (or load the cached build) once, on one torch thread: the tensors are small
    and the machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_extension()
    torch.set_num_threads(threads)


def gradients(op, x, bias, grad):
    """`(y, x̄, b̄)` of `op` at `(x, bias)` for the upstream gradient `grad`."""
    x = x.detach().requires_grad_(True)
    bias = bias.detach().requires_grad_(True)
    y = op(x, bias)
    y.backward(grad)
    return y.detach(), x.grad, bias.grad


SHAPES = [(7,), (4, 9), (2, 3, 5), (6, 1), (0, 8), (3, 0)]


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_gradients_match_composition_float64(shape):
    generator = torch.Generator().manual_seed(len(shape))
    x = 3 * torch.randn(shape, dtype=torch.float64, generator=generator)
    bias = torch.randn(shape[-1], dtype=torch.float64, generator=generator)
    grad = torch.randn(shape, dtype=torch.float64, generator=generator)
    ours = gradients(bias_gelu, x, bias, grad)
    reference = gradients(bias_gelu_composition, x, bias, grad)
    for name, a, b in zip(("y", "grad x", "grad bias"), ours, reference):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


def test_float32_matches_composition_and_keeps_dtype():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(33, 65, generator=generator)
    bias = torch.randn(65, generator=generator)
    grad = torch.randn(33, 65, generator=generator)
    ours = gradients(bias_gelu, x, bias, grad)
    reference = gradients(bias_gelu_composition, x, bias, grad)
    for a, b in zip(ours, reference):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_strided_input_and_expanded_gradient():
    """A transposed `x` and the all-zero-stride gradient of `.sum()` must be read as
    the values they stand for, not as their memory."""
    generator = torch.Generator().manual_seed(2)
    base = torch.randn(12, 10, dtype=torch.float64, generator=generator)
    x = base.t()  # [10, 12], not contiguous
    bias = torch.randn(12, dtype=torch.float64, generator=generator)
    ones = torch.ones(10, 12, dtype=torch.float64).expand(10, 12)
    ours = gradients(bias_gelu, x, bias, ones)
    reference = gradients(bias_gelu_composition, x, bias, ones)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    xs = x.detach().requires_grad_(True)
    bias_gelu(xs, bias).sum().backward()
    torch.testing.assert_close(xs.grad, reference[1], rtol=1e-12, atol=1e-12)


def test_extreme_values():
    """Far out GELU is x on the right and 0 on the left, and so is its slope (1, 0)."""
    x = torch.tensor([[-30.0, -8.0, 0.0, 8.0, 30.0]], dtype=torch.float64)
    bias = torch.zeros(5, dtype=torch.float64)
    y, grad_x, _ = gradients(bias_gelu, x, bias, torch.ones_like(x))
    torch.testing.assert_close(y, F.gelu(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        grad_x,
        torch.tensor([[0.0, 0.0, 0.5, 1.0, 1.0]], dtype=torch.float64),
        rtol=0,
        atol=1e-12,
    )


def test_gradcheck():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(4, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(bias_gelu, (x, bias))


def test_opcheck_schema_fake_and_autograd_registrations():
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(5, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, generator=generator, requires_grad=True)
    results = torch.library.opcheck(
        torch.ops.annotated_cpp.bias_gelu.default, (x, bias)
    )
    assert set(results.values()) == {"SUCCESS"}, results


def test_fake_tensor_gives_shape_without_running_the_kernel():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(1000, 64)
        y = torch.ops.annotated_cpp.bias_gelu(x, torch.empty(64))
        grad_x, grad_bias = torch.ops.annotated_cpp.bias_gelu_backward(
            y, x, torch.empty(64)
        )
    assert (y.shape, grad_x.shape, grad_bias.shape) == ((1000, 64), (1000, 64), (64,))


def test_compiles_without_graph_break():
    torch._dynamo.reset()
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(8, 16, dtype=torch.float64, generator=generator)
    bias = torch.randn(16, dtype=torch.float64, generator=generator)
    grad = torch.randn(8, 16, dtype=torch.float64, generator=generator)
    compiled = torch.compile(bias_gelu, backend="aot_eager", fullgraph=True)
    ours = gradients(compiled, x, bias, grad)
    reference = gradients(bias_gelu_composition, x, bias, grad)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_build_is_cached():
    """A second load returns the same library without building again."""
    assert load_extension() == load_extension()
    assert load_extension().endswith(".so")


def test_missing_compiler_is_named(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler++")
    with pytest.raises(BuildToolsMissing, match="'no-such-compiler\\+\\+'.*g\\+\\+"):
        find_build_tools()


def test_missing_ninja_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv(
        "CXX", find_build_tools()
    )  # an absolute path: found without PATH
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BuildToolsMissing, match="ninja"):
        find_build_tools()


@pytest.mark.parametrize(
    "x, bias, error, message",
    [
        ([1.0, 2.0], torch.zeros(2), TypeError, "x must be a torch.Tensor"),
        (torch.zeros(2), None, TypeError, "bias must be a torch.Tensor"),
        (torch.zeros(2, dtype=torch.int64), torch.zeros(2), ValueError, "float32"),
        (torch.zeros(2, device="meta"), torch.zeros(2), ValueError, "CPU kernel"),
        (torch.zeros(3, 2), torch.zeros(2, 1), ValueError, "bias must be 1-D"),
        (torch.zeros(3, 4), torch.zeros(2), ValueError, "last size must equal"),
        (torch.tensor(1.0), torch.zeros(1), ValueError, "last size must equal"),
        (torch.zeros(2), torch.zeros(2, dtype=torch.float64), ValueError, "must match"),
    ],
)
def test_bad_input(x, bias, error, message):
    with pytest.raises(error, match=message):
        bias_gelu(x, bias)


def test_kernel_guards_direct_calls():
    """`torch.ops` skips the Python checks; the C++ check stops a read out of bounds."""
    with pytest.raises(RuntimeError, match="match x's last size"):
        torch.ops.annotated_cpp.bias_gelu(torch.zeros(3, 5), torch.zeros(2))


def test_example_and_dataflow():
    fn, args = example()
    y = fn(*args)
    nodes, edges = dataflow(y)
    ids = {node for node, _ in nodes}
    assert all(src in ids and dst in ids for src, dst, _ in edges)
    assert y.shape == (8, 16)


def test_demo(tmp_path):
    metrics = main(
        [
            "--cols",
            "64",
            "--max-rows",
            "64",
            "--seconds",
            "0.01",
            "--out",
            str(tmp_path),
        ]
    )
    assert metrics["max_error"] < 1e-12
    assert metrics["compiled_error"] < 1e-12
    assert metrics["speedup"] > 0
    assert (tmp_path / "timing.png").exists()


GROUP = "bias + GELU forward and backward, 1024×1024 float32"


def bench_inputs():
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(1024, 1024, generator=generator, requires_grad=True)
    bias = torch.randn(1024, generator=generator, requires_grad=True)
    return x, bias


def forward_backward(op, x, bias):
    x.grad = bias.grad = None
    op(x, bias).sum().backward()


@pytest.mark.benchmark(group=GROUP)
def test_bench_fused_cpp(benchmark):
    benchmark.extra_info["label"] = "fused C++ bias_gelu"
    benchmark(forward_backward, bias_gelu, *bench_inputs())


@pytest.mark.benchmark(group=GROUP)
def test_bench_composition(benchmark):
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["label"] = "F.gelu(x + bias)"
    benchmark(forward_backward, bias_gelu_composition, *bench_inputs())
