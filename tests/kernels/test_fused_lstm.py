"""Verified against the LSTM lesson's lstm_cell, torch.nn.LSTMCell and torch.nn.LSTM in
float64 (to 1e-12) and float32 (to 1e-5), values and every gradient, in Triton's
interpreter on a CPU; on a GPU also against ATen's fused CUDA kernel
_thnn_fused_lstm_cell in float32, float16 and bfloat16.

The kernels run on odd sizes (batch 1 and 3, hidden sizes that leave the last block
ragged, an empty batch), on saturated gates (pre-activations of +-1000), with gradients
that reach only h or only c (autograd then sends None or a stride-0 tensor), over a
30-step sequence, and with a state dict saved by nn.LSTMCell through safetensors. The
byte counts the prose states are counted again on the dispatcher, and the demo's claim
(the fused model trains like nn.LSTM, the losses within 1e-5 at every step) is checked
on a short run.
"""

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

pytest.importorskip("triton")

import triton  # noqa: E402

from annotated.sequence.lstm import lstm_cell  # noqa: E402
from annotated.kernels.fused_lstm import (  # noqa: E402
    FusedLSTMCell,
    dataflow,
    example,
    fused_lstm_cell,
    fused_lstm_pointwise,
    fused_lstm_sequence,
    fused_traffic,
    gpu_report,
    lstm_forward,
    lstm_pointwise,
    main,
    unfused_traffic,
)
from tools.fake_cuda import fake_cuda  # noqa: E402

FLOAT64 = dict(rtol=1e-12, atol=1e-12)
FLOAT32 = dict(rtol=1e-5, atol=1e-5)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# conftest.py sets TRITON_INTERPRET=1 unless it is set already, so by default the
# kernels run in the interpreter on CPU tensors, GPU or not. With TRITON_INTERPRET=0 on
# a GPU they are compiled, and every test below runs on the GPU instead.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu"


pytestmark = pytest.mark.usefixtures("one_thread")


def pointwise_inputs(batch, hidden, dtype=torch.float64, seed=0, scale=1.0, bias=True):
    generator = torch.Generator().manual_seed(seed)

    def leaf(*shape):
        x = scale * torch.randn(*shape, generator=generator, dtype=torch.float64)
        return x.to(DEVICE, dtype).requires_grad_()

    biases = (leaf(4 * hidden), leaf(4 * hidden)) if bias else (None, None)
    return (
        leaf(batch, 4 * hidden),
        leaf(batch, 4 * hidden),
        leaf(batch, hidden),
        *biases,
    )


def values_and_gradients(fn, inputs, seed=1):
    """`fn(*inputs)` and the gradients of a random weighting of its outputs with
    respect to every tensor input."""
    outputs = fn(*inputs)
    generator = torch.Generator().manual_seed(seed)
    weights = [
        torch.randn(o.shape, generator=generator, dtype=torch.float64).to(o)
        for o in outputs
    ]
    leaves = [t for t in inputs if t is not None]
    gradients = torch.autograd.grad(outputs, leaves, weights)
    return [o.detach() for o in outputs], list(gradients)


def assert_all_close(ours, reference, **tolerance):
    for mine, theirs in zip(ours, reference, strict=True):
        torch.testing.assert_close(mine, theirs, **tolerance)


# ---------------------------------------------------------------- the pointwise tail


@pytest.mark.parametrize(
    "batch, hidden, block_size",
    [
        (1, 1, None),  # one unit
        (1, 7, None),  # batch 1, one block of 8 with a masked lane
        (3, 5, None),  # batch 3: 15 elements in a block of 16
        (3, 37, 16),  # 111 elements: 7 blocks, the last one ragged
        (4, 8, 8),  # blocks that divide the work exactly
    ],
)
def test_pointwise_matches_eager_in_float64(batch, hidden, block_size):
    inputs = pointwise_inputs(batch, hidden)
    ours = values_and_gradients(
        lambda *t: fused_lstm_pointwise(*t, block_size=block_size), inputs
    )
    reference = values_and_gradients(lstm_pointwise, inputs)
    assert_all_close(ours[0], reference[0], **FLOAT64)
    assert_all_close(ours[1], reference[1], **FLOAT64)


@settings(max_examples=15)
@given(
    batch=st.integers(1, 5),
    hidden=st.integers(1, 40),
    block_size=st.sampled_from([None, 4, 16, 64]),
    scale=st.sampled_from([0.1, 1.0, 8.0]),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_pointwise_matches_eager_on_random_shapes(
    batch, hidden, block_size, scale, bias, seed
):
    inputs = pointwise_inputs(batch, hidden, seed=seed, scale=scale, bias=bias)
    ours = values_and_gradients(
        lambda *t: fused_lstm_pointwise(*t, block_size=block_size), inputs
    )
    reference = values_and_gradients(lstm_pointwise, inputs)
    assert_all_close(ours[0], reference[0], **FLOAT64)
    assert_all_close(ours[1], reference[1], **FLOAT64)


def test_pointwise_passes_gradcheck():
    inputs = pointwise_inputs(2, 3)
    assert torch.autograd.gradcheck(fused_lstm_pointwise, inputs, fast_mode=True)


def test_both_gate_tensors_and_both_biases_get_the_same_gradient():
    inputs = pointwise_inputs(3, 4)
    _, (grad_a, grad_b, _, grad_bias_ih, grad_bias_hh) = values_and_gradients(
        fused_lstm_pointwise, inputs
    )
    assert torch.equal(grad_a, grad_b)
    assert torch.equal(grad_bias_ih, grad_bias_hh)
    torch.testing.assert_close(grad_bias_ih, grad_a.sum(0), **FLOAT64)


@pytest.mark.parametrize("which", ["h", "c"])
def test_a_gradient_through_one_output_only(which):
    # h.sum() sends an expanded, stride-0 gradient for h and None for c (and the
    # reverse), which the Function must handle without materialising zeros.
    inputs = pointwise_inputs(3, 6)

    def loss(fn):
        h_new, c_new = fn(*inputs)
        return (h_new if which == "h" else c_new).sum()

    ours = torch.autograd.grad(loss(fused_lstm_pointwise), inputs)
    reference = torch.autograd.grad(loss(lstm_pointwise), inputs)
    assert_all_close(ours, reference, **FLOAT64)


def test_inference_skips_autograd_and_agrees_with_training():
    inputs = pointwise_inputs(3, 5)
    with torch.no_grad():
        h_inference, c_inference = fused_lstm_pointwise(*inputs)
    h_training, c_training = fused_lstm_pointwise(*inputs)
    assert h_inference.grad_fn is None and h_training.grad_fn is not None
    assert torch.equal(h_inference, h_training.detach())
    assert torch.equal(c_inference, c_training.detach())


def test_the_workspace_holds_the_activated_gates():
    a, b, c, bias_ih, bias_hh = (t.detach() for t in pointwise_inputs(2, 3))
    _, _, workspace = lstm_forward(a, b, c, bias_ih, bias_hh, save_gates=True)
    i, f, g, o = (a + b + bias_ih + bias_hh).chunk(4, dim=1)
    expected = torch.cat([i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()], dim=1)
    torch.testing.assert_close(workspace, expected, **FLOAT64)
    assert lstm_forward(a, b, c, None, None, save_gates=False)[2] is None


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # the interpreter's
def test_saturated_gates_stay_finite_and_exact():
    inputs = pointwise_inputs(2, 4, dtype=torch.float32, scale=1000.0)
    ours = values_and_gradients(fused_lstm_pointwise, inputs)
    reference = values_and_gradients(lstm_pointwise, inputs)
    assert all(torch.isfinite(t).all() for t in ours[0] + ours[1])
    assert_all_close(ours[0], reference[0], **FLOAT32)
    # Saturated gates pass almost no gradient: both sides are tiny, not equal bits.
    assert_all_close(ours[1], reference[1], rtol=1e-4, atol=1e-3)


def test_an_empty_batch_returns_empty_results():
    inputs = pointwise_inputs(0, 3)
    h_new, c_new = fused_lstm_pointwise(*inputs)
    assert h_new.shape == c_new.shape == (0, 3)
    (h_new.sum() + c_new.sum()).backward()
    assert inputs[0].grad.shape == (0, 12)


@pytest.mark.parametrize(
    "dtype, tolerance",
    [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)],
)
def test_half_precision_computes_in_float32(dtype, tolerance):
    # The same rounded inputs through eager float32: ours differs only by the final
    # rounding to `dtype` (half a unit in the last place) and the workspace's.
    inputs = pointwise_inputs(3, 9, dtype=dtype)
    ours = values_and_gradients(fused_lstm_pointwise, inputs)
    wide = [t.detach().float().requires_grad_() for t in inputs]
    reference = values_and_gradients(lstm_pointwise, wide)
    assert all(t.dtype == dtype for t in ours[0] + ours[1])
    for mine, theirs in zip(ours[0] + ours[1], reference[0] + reference[1]):
        torch.testing.assert_close(mine.float(), theirs, rtol=tolerance, atol=tolerance)


def test_second_derivatives_are_refused_not_wrong():
    inputs = pointwise_inputs(2, 3)
    h_new, _ = fused_lstm_pointwise(*inputs)
    direction = torch.ones_like(h_new, requires_grad=True)
    (gradient,) = torch.autograd.grad(h_new, inputs[0], direction, create_graph=True)
    with pytest.raises(RuntimeError, match="marked with @once_differentiable"):
        gradient.sum().backward()


def test_modifying_the_saved_cell_state_in_place_is_caught():
    a, b, c, bias_ih, bias_hh = pointwise_inputs(2, 3)
    c = c * 1.0
    h_new, _ = fused_lstm_pointwise(a, b, c, bias_ih, bias_hh)
    c.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        h_new.sum().backward()


# ---------------------------------------------------------------- the cell and sequence


def cell_inputs(batch, input_size, hidden, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def leaf(*shape, scale=1.0):
        x = scale * torch.randn(*shape, generator=generator, dtype=torch.float64)
        return x.to(DEVICE, dtype).requires_grad_()

    return (
        leaf(batch, input_size),
        leaf(batch, hidden),
        leaf(batch, hidden),
        leaf(4 * hidden, input_size, scale=input_size**-0.5),
        leaf(4 * hidden, hidden, scale=hidden**-0.5),
        leaf(4 * hidden, scale=0.1),
        leaf(4 * hidden, scale=0.1),
    )


def twin_lstm_cell(inputs):
    """An nn.LSTMCell holding the weights in `inputs`."""
    x, h, c, *weights = inputs
    cell = nn.LSTMCell(x.shape[1], h.shape[1], device=DEVICE, dtype=x.dtype)
    with torch.no_grad():
        for parameter, value in zip(cell.parameters(), weights, strict=True):
            parameter.copy_(value)
    return cell


@pytest.mark.parametrize(
    "dtype, tolerance", [(torch.float64, FLOAT64), (torch.float32, FLOAT32)]
)
@pytest.mark.parametrize("batch, input_size, hidden", [(1, 3, 5), (3, 10, 37)])
def test_cell_matches_lstm_cell_and_nn_lstmcell(
    batch, input_size, hidden, dtype, tolerance
):
    inputs = cell_inputs(batch, input_size, hidden, dtype)
    ours = values_and_gradients(fused_lstm_cell, inputs)
    lesson = values_and_gradients(lstm_cell, inputs)
    assert_all_close(ours[0], lesson[0], **tolerance)
    assert_all_close(ours[1], lesson[1], **tolerance)
    cell = twin_lstm_cell(inputs)
    module = values_and_gradients(
        lambda x, h, c, *_: cell(x, (h, c)), [*inputs[:3], *cell.parameters()]
    )
    assert_all_close(ours[0], module[0], **tolerance)
    assert_all_close(ours[1], module[1], **tolerance)


def test_cell_without_biases_matches_lstm_cell():
    inputs = cell_inputs(3, 4, 6)[:5]
    ours = values_and_gradients(fused_lstm_cell, inputs)
    lesson = values_and_gradients(lstm_cell, inputs)
    assert_all_close(ours[0], lesson[0], **FLOAT64)
    assert_all_close(ours[1], lesson[1], **FLOAT64)


def test_cell_accepts_non_contiguous_operands_of_the_products():
    x, h, c, weight_ih, weight_hh, bias_ih, bias_hh = (
        t.detach() for t in cell_inputs(3, 4, 5)
    )
    transposed = weight_ih.T.contiguous().T  # same values, column-major
    assert not transposed.is_contiguous()
    ours = fused_lstm_cell(x, h, c, transposed, weight_hh, bias_ih, bias_hh)
    reference = lstm_cell(x, h, c, weight_ih, weight_hh, bias_ih, bias_hh)
    assert_all_close(ours, reference, **FLOAT64)


def test_sequence_matches_nn_lstm_over_30_steps():
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 7, device=DEVICE, dtype=torch.float64)
    xs = torch.randn(30, 3, 4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    hx = tuple(
        torch.randn(1, 3, 7, dtype=torch.float64, device=DEVICE) for _ in range(2)
    )
    weights = (lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)
    outputs, (h, c) = fused_lstm_sequence(xs, *weights, hx=(hx[0][0], hx[1][0]))
    reference, (h_ref, c_ref) = lstm(xs, hx)
    assert_all_close([outputs, h, c], [reference, h_ref[0], c_ref[0]], **FLOAT64)
    parameters = [xs, *weights]
    ours = torch.autograd.grad(outputs.sum() + c.sum(), parameters)
    theirs = torch.autograd.grad(reference.sum() + c_ref.sum(), parameters)
    assert_all_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_fused_cell_loads_an_nn_lstmcell_checkpoint(tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    reference = nn.LSTMCell(6, 9, device=DEVICE)
    save_file(reference.state_dict(), tmp_path / "cell.safetensors")
    fused = FusedLSTMCell(6, 9, device=DEVICE)
    fused.load_state_dict(load_file(tmp_path / "cell.safetensors", device=DEVICE))
    x = torch.randn(3, 6, device=DEVICE)
    state = (torch.randn(3, 9, device=DEVICE), torch.randn(3, 9, device=DEVICE))
    assert_all_close(fused(x, state), reference(x, state), **FLOAT32)
    assert_all_close(fused(x), reference(x), **FLOAT32)  # hx defaults to zeros
    without_bias = nn.LSTMCell(6, 9, bias=False, device=DEVICE)
    fused_without_bias = FusedLSTMCell(6, 9, bias=False, device=DEVICE)
    fused_without_bias.load_state_dict(without_bias.state_dict())
    assert_all_close(fused_without_bias(x), without_bias(x), **FLOAT32)


# ---------------------------------------------------------------- traffic counts


def test_eager_traffic_is_what_the_prose_counts():
    batch, hidden, itemsize = 8, 16, 4
    unit, biases = batch * hidden * itemsize, 8 * hidden * itemsize
    counted = unfused_traffic(batch, hidden)
    assert counted["forward kernels"] == 12 and counted["backward kernels"] == 15
    assert counted["forward bytes"] == 50 * unit + biases
    assert counted["backward bytes"] == 52 * unit + biases
    doubled = unfused_traffic(batch, hidden, torch.float64)
    assert doubled["forward bytes"] == 2 * counted["forward bytes"]


def test_fused_traffic_is_what_the_kernels_read_and_write():
    batch, hidden = 3, 5
    a, b, c, bias_ih, bias_hh = (t.detach() for t in pointwise_inputs(batch, hidden))
    h_new, c_new, workspace = lstm_forward(a, b, c, bias_ih, bias_hh, save_gates=True)

    def nbytes(*tensors):
        return sum(t.numel() * t.element_size() for t in tensors)

    read = nbytes(a, b, c, bias_ih, bias_hh)
    counted = fused_traffic(batch, hidden, torch.float64)
    assert counted["inference bytes"] == read + nbytes(h_new, c_new)
    assert counted["forward bytes"] == read + nbytes(h_new, c_new, workspace)
    grad_gates, grad_c, bias_grad = workspace, c, bias_ih[:1].expand(4 * hidden)
    kernel = nbytes(h_new, c_new, c, c_new, workspace) + nbytes(grad_gates, grad_c)
    assert counted["backward bytes"] == kernel + nbytes(grad_gates, bias_grad)
    # the prose's per-unit numbers, float32: 44, 60 and 68 bytes (plus the biases)
    per_unit = fused_traffic(1000, 1)
    assert per_unit["inference bytes"] // 1000 == 44
    assert per_unit["forward bytes"] // 1000 == 60
    assert per_unit["backward bytes"] // 1000 == 68


# ---------------------------------------------------------------- example and demo


def test_example_and_its_declared_dataflow():
    fn, args = example()
    args = [a.to(DEVICE) for a in args]
    h_new, c_new = fn(*args)
    torch.testing.assert_close(h_new, lstm_cell(*args)[0], **FLOAT32)
    nodes, edges = dataflow((h_new, c_new))
    names = {node for node, _ in nodes}
    assert all(source in names and target in names for source, target, _ in edges)
    assert ("kernel", "h_new", "[3, 12]") in edges
    assert ("gemm_ih", "kernel", "[3, 48]") in edges


def test_demo_checks_counts_and_trains_like_nn_lstm(tmp_path, capsys):
    metrics = main(
        [
            "--steps",
            "20",
            "--length",
            "3",
            "--hidden",
            "8",
            "--batch-size",
            "16",
            "--count-size",
            "64x32",
            "--report-sizes",  # used on a GPU only
            "64x128",
            "--device",
            DEVICE,
            "--out",
            str(tmp_path),
        ]
    )
    assert metrics["max error vs lstm_cell"] < 1e-12
    assert metrics["max error vs nn.LSTMCell"] < 1e-12
    assert metrics["loss gap"] < 1e-5
    assert metrics["final loss"] < 0.5  # from about 1 at the first step
    assert 4.4 < metrics["bytes ratio forward (inference)"] < 4.6
    assert 3.0 < metrics["bytes ratio backward"] < 3.1
    printed = capsys.readouterr().out
    assert "fused vs nn.LSTM" in printed and "4.5× fewer" in printed
    assert (tmp_path / "traffic.png").stat().st_size > 0
    assert (tmp_path / "training.png").stat().st_size > 0


# ---------------------------------------------------------------- bad input


def gates(batch=3, hidden=5, **kwargs):
    return torch.zeros(batch, 4 * hidden, **kwargs)


def cpu_cell(batch, input_size, hidden):
    """`cell_inputs` on the CPU: the checks run before any kernel, on any device."""
    return [t.detach().cpu() for t in cell_inputs(batch, input_size, hidden)]


@pytest.mark.parametrize(
    "call, error, match",
    [
        (
            lambda: fused_lstm_pointwise(gates(), gates(), torch.zeros(3, 6)),
            ValueError,
            r"c must be \[batch, hidden\] = \(3, 5\), got \(3, 6\)",
        ),
        (
            lambda: fused_lstm_pointwise(gates(), gates(2), torch.zeros(3, 5)),
            ValueError,
            r"hidden_gates must be \[batch, 4\*hidden\] = \(3, 20\), got \(2, 20\)",
        ),
        (
            lambda: fused_lstm_pointwise(
                torch.zeros(3, 18), torch.zeros(3, 18), torch.zeros(3, 5)
            ),
            ValueError,
            r"input_gates must be \[batch, 4\*hidden\] with hidden >= 1",
        ),
        (
            lambda: fused_lstm_pointwise(torch.zeros(20), gates(), torch.zeros(3, 5)),
            ValueError,
            "input_gates must be a 2-D tensor",
        ),
        (
            lambda: fused_lstm_pointwise(gates(), gates(), torch.zeros(5, 3).T),
            ValueError,
            r"c must be contiguous .* pass c.contiguous\(\)",
        ),
        (
            lambda: fused_lstm_pointwise(
                gates(), gates(), torch.zeros(3, 5, dtype=torch.float64)
            ),
            TypeError,
            "c is torch.float64 but the others are torch.float32",
        ),
        (
            lambda: fused_lstm_pointwise(
                gates(dtype=torch.int64), gates(), torch.zeros(3, 5)
            ),
            TypeError,
            "input_gates must be float16, bfloat16, float32 or float64, got "
            "torch.int64",
        ),
        (
            lambda: fused_lstm_pointwise(
                gates(), gates(device="meta"), torch.zeros(3, 5)
            ),
            ValueError,
            "hidden_gates is on meta but the others on cpu",
        ),
        (
            lambda: fused_lstm_pointwise(gates(), gates(), [[0.0] * 5] * 3),
            TypeError,
            "c must be a torch.Tensor, got list",
        ),
        (
            lambda: fused_lstm_pointwise(
                gates(), gates(), torch.zeros(3, 5), torch.zeros(20)
            ),
            ValueError,
            "bias_ih and bias_hh must both be given or both be None",
        ),
        (
            lambda: fused_lstm_pointwise(
                gates(), gates(), torch.zeros(3, 5), torch.zeros(20), torch.zeros(5)
            ),
            ValueError,
            r"bias_hh must be \[4\*hidden\] = \(20,\), got \(5,\)",
        ),
        (
            lambda: fused_lstm_pointwise(
                gates(), gates(), torch.zeros(3, 5), block_size=24
            ),
            ValueError,
            "block_size must be a power of two, got 24",
        ),
        (
            lambda: fused_lstm_cell(*cpu_cell(3, 4, 5)[:1], *cpu_cell(3, 6, 5)[1:]),
            ValueError,
            r"fused_lstm_cell: x must be \[batch, input\] = \(3, 6\), got \(3, 4\)",
        ),
        (
            lambda: fused_lstm_cell(
                *cpu_cell(3, 4, 5)[:4], torch.zeros(20, 4, dtype=torch.float64)
            ),
            ValueError,
            r"weight_hh must be \[4\*hidden, hidden\] = \(20, 5\), got \(20, 4\)",
        ),
        (
            lambda: fused_lstm_cell(
                *cpu_cell(3, 4, 5)[:3], torch.zeros(18, 4), torch.zeros(18, 4)
            ),
            ValueError,
            r"weight_ih must be \[4\*hidden, input\] with hidden >= 1",
        ),
        (
            lambda: fused_lstm_cell(
                *cpu_cell(3, 4, 5)[:2],
                torch.zeros(3, 5, dtype=torch.float64).T,
                *cpu_cell(3, 4, 5)[3:],
            ),
            ValueError,
            r"fused_lstm_cell: c must be \[batch, hidden\] = \(3, 5\), got \(5, 3\)",
        ),
        (
            lambda: fused_lstm_sequence(
                torch.zeros(3, 4), torch.zeros(20, 4), torch.zeros(20, 5)
            ),
            ValueError,
            r"xs must be a 3-D tensor \[seq, batch, input\]",
        ),
        (
            lambda: FusedLSTMCell(4, 5)(torch.zeros(4)),
            ValueError,
            r"x must be a 2-D tensor \[batch, input\], got torch.Size\(\[4\]\)",
        ),
    ],
)
def test_bad_input_raises_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.filterwarnings("ignore:PyTorch was compiled without cuDNN")
def test_gpu_report_runs_end_to_end_on_a_stand_in_device(monkeypatch, fixed_times):
    """gpu_report runs on a fake GPU; its GB/s and ratios follow from fixed times."""
    eager = unfused_traffic(2, 4)  # counted on the dispatcher
    # batch 2, hidden 4, float32: 32 bytes a [batch, hidden] tensor, 128 the biases.
    # Inference reads a, b, c and the biases and writes h', c' (11 tensors); training
    # writes the 4 gates too, and its backward moves 13 plus 4 summed into 64 bytes.
    inference, forward, backward = 11 * 32 + 128, 15 * 32 + 128, 17 * 32 + 64
    entries = {  # name: (ms, bytes), in gpu_report's order
        "forward, fused Triton": (1.0, inference),
        "forward keeping the gates, fused Triton": (2.0, forward),
        "forward, eager PyTorch": (4.0, eager["forward bytes"]),
        "forward, ATen fused CUDA": (0.5, forward),
        "forward+backward, fused Triton": (8.0, forward + backward),
        "forward+backward, eager PyTorch": (
            16.0,
            eager["forward bytes"] + eager["backward bytes"],
        ),
        "forward+backward, ATen fused CUDA": (5.0, forward + backward),
        "cell step, fused_lstm_cell": (3.0, None),
        "cell step, lstm_cell (eager)": (6.0, None),
        "cell step, nn.LSTMCell": (7.0, None),
        "sequence step, fused_lstm_sequence": (10.0, None),  # 2 steps: 5 ms each
        "sequence step, nn.LSTM (cuDNN)": (12.0, None),
    }
    # First the 1 GiB copy's time (not run: it would really copy on a CPU).
    fixed_times([0.25, *(ms for ms, _ in entries.values())], skip_first=True)

    def aten_fused(*gates):  # _thnn_fused_lstm_cell has no CPU kernel
        return (*lstm_pointwise(*gates), None)

    monkeypatch.setattr(triton.testing, "get_dram_gbps", lambda: 1e-4)
    monkeypatch.setattr(torch.ops.aten, "_thnn_fused_lstm_cell", aten_fused)
    with fake_cuda():
        report = gpu_report(batch=2, hidden=4, steps=2)
    expected = {"batch": 2, "hidden": 4, "peak GB/s": 1e-4}
    expected["copy GB/s"] = 2 * 2**30 / 0.25e-3 / 1e9  # 1 GiB read and written
    for name, (ms, moved) in entries.items():
        ms /= 2 if name.startswith("sequence") else 1
        expected[f"{name} µs"] = 1e3 * ms
        if moved is not None:
            expected[f"{name} GB/s"] = moved / (ms * 1e-3) / 1e9
            expected[f"{name} of peak"] = moved / (ms * 1e-3) / 1e9 / 1e-4
    assert report == pytest.approx(expected)


# ---------------------------------------------------------------- on a GPU only


@CUDA
@pytest.mark.parametrize(
    "dtype, tolerance",
    [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)],
)
def test_gpu_matches_atens_fused_cuda_kernel(dtype, tolerance):
    inputs = [t.detach().to("cuda", dtype) for t in pointwise_inputs(64, 300, scale=2)]
    inputs = [t.requires_grad_() for t in inputs]
    h_ref, c_ref, workspace_ref = torch.ops.aten._thnn_fused_lstm_cell(*inputs)
    _, _, workspace = lstm_forward(*(t.detach() for t in inputs), save_gates=True)
    ours = values_and_gradients(fused_lstm_pointwise, inputs)
    reference = values_and_gradients(
        lambda *t: torch.ops.aten._thnn_fused_lstm_cell(*t)[:2], inputs
    )
    close = dict(rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(workspace, workspace_ref.detach(), **close)
    assert_all_close(ours[0], [h_ref.detach(), c_ref.detach()], **close)
    assert_all_close(ours[1], reference[1], **close)


@CUDA
def test_gpu_cell_and_sequence_match_nn_lstmcell_and_nn_lstm():
    inputs = [t.detach().to("cuda").requires_grad_() for t in cell_inputs(33, 17, 129)]
    ours = values_and_gradients(fused_lstm_cell, inputs)
    lesson = values_and_gradients(lstm_cell, inputs)
    assert_all_close(ours[0] + ours[1], lesson[0] + lesson[1], **FLOAT64)
    lstm = nn.LSTM(17, 129, device="cuda")
    xs = torch.randn(12, 33, 17, device="cuda")
    weights = (lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)
    outputs, _ = fused_lstm_sequence(xs, *weights)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        reference, _ = lstm(xs)
    torch.testing.assert_close(outputs, reference, **FLOAT32)


@CUDA
@pytest.mark.skipif(
    INTERPRETED, reason="interpreted kernels: do_bench would time NumPy"
)
def test_gpu_report_counts_bandwidth_below_the_peak():
    report = gpu_report(batch=1024, hidden=512, steps=4)
    assert 0 < report["copy GB/s"] < 1.05 * report["peak GB/s"]
    for name in ("forward, fused Triton", "forward+backward, eager PyTorch"):
        assert report[f"{name} µs"] > 0
        assert 0 < report[f"{name} of peak"] < 1.05
    assert report["sequence step, nn.LSTM (cuDNN) µs"] > 0


# ---------------------------------------------------------------- benchmarks

BENCH = [t.detach() for t in pointwise_inputs(4, 32, dtype=torch.float32)]  # on DEVICE
BENCH_LEAVES = [t.clone().requires_grad_() for t in BENCH]


def training_step(fn):
    def step():
        h_new, c_new = fn(*BENCH_LEAVES)
        torch.autograd.grad((h_new, c_new), BENCH_LEAVES, (h_new, c_new))

    return step


@pytest.mark.benchmark(group="LSTM pointwise forward, batch 4, hidden 32, CPU")
def test_bench_forward_fused(benchmark):
    benchmark.extra_info["label"] = "fused Triton kernel, in the interpreter"
    benchmark(fused_lstm_pointwise, *BENCH)


@pytest.mark.benchmark(group="LSTM pointwise forward, batch 4, hidden 32, CPU")
def test_bench_forward_eager(benchmark):
    benchmark.extra_info["label"] = "eager PyTorch (12 ATen kernels)"
    benchmark.extra_info["baseline"] = True
    benchmark(lstm_pointwise, *BENCH)


@pytest.mark.benchmark(group="LSTM pointwise forward+backward, batch 4, hidden 32, CPU")
def test_bench_training_fused(benchmark):
    benchmark.extra_info["label"] = "fused Triton kernels, in the interpreter"
    benchmark(training_step(fused_lstm_pointwise))


@pytest.mark.benchmark(group="LSTM pointwise forward+backward, batch 4, hidden 32, CPU")
def test_bench_training_eager(benchmark):
    benchmark.extra_info["label"] = "eager PyTorch and autograd (27 ATen kernels)"
    benchmark.extra_info["baseline"] = True
    benchmark(training_step(lstm_pointwise))
