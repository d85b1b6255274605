"""Verified against torch.nn.RNN with copied weights in float64 (outputs, final states
and every gradient to 1e-10), for the hand-written BPTT and for autograd through the
forward loop alike.

Covered: one to three layers, one or two directions, `batch_first` both ways, `h0`
given or zeros, tanh and relu, batches packed with `pack_padded_sequence` (sorted and
unsorted, lengths tied and of one step), 2,000-step sequences under a low recursion
limit, and random sizes drawn by hypothesis. The hand BPTT also passes
`torch.autograd.gradcheck` (central finite differences) with and without a mask; its
per-step total gradient ∂L/∂h_t equals autograd's, and the demo's gradient-reach
measurement equals the gradient of `nn.RNN` restarted from h_t. Float32 matches
`nn.RNN` to 1e-5, on a GPU both match cuDNN in float64 to 1e-10, state dicts move
both ways through safetensors, extreme inputs stay finite, and the demo must beat the
repeat-the-last-value baseline on a short run.
"""

import inspect
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from annotated.sequence.rnn import (
    RNN,
    RNNFunction,
    SinePredictor,
    example,
    main,
    rnn_backward,
    rnn_forward,
    sine_waves,
    state_gradient_norms,
)
from tools.literate.figures import short_band

TOLERANCE = dict(rtol=1e-10, atol=1e-10)


pytestmark = pytest.mark.usefixtures("one_thread")


def twins(seed=0, dtype=torch.float64, **config):
    """Our RNN and an nn.RNN with the same configuration and copied weights."""
    backprop = config.pop("backprop", "hand")
    torch.manual_seed(seed)
    ours = RNN(backprop=backprop, **config).to(dtype)
    theirs = nn.RNN(**config).to(dtype)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def run(model, x, h0, seed=1):
    """Outputs, h_n and the gradients of x, h0 and every parameter, for a loss that
    weights every output and final state differently."""
    x = x.detach().clone().requires_grad_()
    h0 = None if h0 is None else h0.detach().clone().requires_grad_()
    output, h_n = model(x, h0)
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(output.shape, generator=generator, dtype=output.dtype)
    weight_h = torch.randn(h_n.shape, generator=generator, dtype=h_n.dtype)
    weight, weight_h = weight.to(output.device), weight_h.to(output.device)
    loss = (output.sin() * weight).sum() + (h_n * weight_h).sum()
    inputs = [x] + ([] if h0 is None else [h0]) + list(model.parameters())
    grads = torch.autograd.grad(loss, inputs)
    return [output.detach(), h_n.detach(), *grads]


def assert_same(ours, theirs, **tolerance):
    assert len(ours) == len(theirs)
    for index, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(
            a, b, **(tolerance or TOLERANCE), msg=f"item {index}"
        )


@pytest.mark.parametrize("backprop", ["hand", "autograd"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("given_h0", [True, False], ids=["h0", "zeros"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_matches_torch_nn_rnn_forward_and_gradients(
    num_layers, bidirectional, batch_first, given_h0, nonlinearity, backprop
):
    config = dict(
        input_size=3,
        hidden_size=5,
        num_layers=num_layers,
        nonlinearity=nonlinearity,
        batch_first=batch_first,
        bidirectional=bidirectional,
    )
    ours, theirs = twins(backprop=backprop, **config)
    torch.manual_seed(2)
    x = torch.randn(4, 7, 3, dtype=torch.float64)  # batch_first: 4 waves of 7 steps
    states = num_layers * (2 if bidirectional else 1)
    h0 = torch.randn(states, 4 if batch_first else 7, 5, dtype=torch.float64)
    h0 = h0 if given_h0 else None
    assert_same(run(ours, x, h0), run(theirs, x, h0))


@settings(max_examples=40)
@given(
    seq=st.integers(1, 12),
    batch=st.integers(1, 5),
    input_size=st.integers(1, 6),
    hidden=st.integers(1, 6),
    num_layers=st.integers(1, 3),
    bidirectional=st.booleans(),
    nonlinearity=st.sampled_from(["tanh", "relu"]),
    scale=st.sampled_from([0.1, 1.0, 3.0]),
    seed=st.integers(0, 2**16),
)
def test_random_sizes_match_torch(
    seq, batch, input_size, hidden, num_layers, bidirectional, nonlinearity, scale, seed
):
    ours, theirs = twins(
        seed,
        input_size=input_size,
        hidden_size=hidden,
        num_layers=num_layers,
        nonlinearity=nonlinearity,
        bidirectional=bidirectional,
    )
    generator = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(seq, batch, input_size, generator=generator).double()
    states = num_layers * (2 if bidirectional else 1)
    h0 = torch.randn(states, batch, hidden, generator=generator).double()
    assert_same(run(ours, x, h0), run(theirs, x, h0))


def test_hand_bptt_equals_autograd_through_the_loop():
    hand, _ = twins(3, input_size=4, hidden_size=6, num_layers=2, bidirectional=True)
    loop, _ = twins(
        3,
        backprop="autograd",
        input_size=4,
        hidden_size=6,
        num_layers=2,
        bidirectional=True,
    )
    x = torch.randn(9, 3, 4, dtype=torch.float64)
    assert_same(run(hand, x, None), run(loop, x, None), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("backprop", ["hand", "autograd"])
def test_packed_batches_of_unequal_lengths_match_torch(enforce_sorted, backprop):
    ours, theirs = twins(
        4,
        backprop=backprop,
        input_size=3,
        hidden_size=5,
        num_layers=2,
        bidirectional=True,
    )
    lengths = torch.tensor([8, 5, 5, 1] if enforce_sorted else [5, 8, 1, 5, 3])
    torch.manual_seed(5)
    x = torch.randn(8, len(lengths), 3, dtype=torch.float64)
    h0 = torch.randn(4, len(lengths), 5, dtype=torch.float64)
    results = []
    for model in (ours, theirs):
        xs, h = x.clone().requires_grad_(), h0.clone().requires_grad_()
        packed = pack_padded_sequence(xs, lengths, enforce_sorted=enforce_sorted)
        output, h_n = model(packed, h)
        padded, out_lengths = pad_packed_sequence(output)
        assert torch.equal(out_lengths, lengths)
        loss = (padded.sin() * torch.arange(padded.numel()).reshape(padded.shape)).sum()
        loss = loss + (h_n * h_n.detach().cos()).sum()
        grads = torch.autograd.grad(loss, [xs, h, *model.parameters()])
        results.append([padded.detach(), h_n.detach(), *grads])
    assert_same(*results)
    # Padding gets no gradient: the steps after a sequence's end are not real.
    assert results[0][2][lengths[2] :, 2].abs().max() == 0


def test_gradcheck_of_the_hand_written_backward_with_and_without_a_mask():
    generator = torch.Generator().manual_seed(6)

    def leaf(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    inputs = [leaf(5, 3, 2), leaf(3, 4), leaf(4, 2), leaf(4, 4), leaf(4), leaf(4)]
    inputs = [t.requires_grad_() for t in inputs]
    lengths = torch.tensor([5, 2, 3])
    mask = (torch.arange(5)[:, None] < lengths)[..., None]
    for nonlinearity in ("tanh", "relu"):
        for keep in (None, mask):
            assert torch.autograd.gradcheck(
                lambda *args: RNNFunction.apply(*args, nonlinearity, keep), inputs
            )


@pytest.mark.parametrize("masked", [False, True])
def test_per_step_total_gradient_equals_autograd(masked):
    """`Gradients.states` is ∂L/∂h_t including everything after step t: compare with
    `retain_grad` on each state of a plain autograd loop."""
    torch.manual_seed(7)
    seq, batch, n_in, hidden = 6, 3, 2, 4
    x = torch.randn(seq, batch, n_in, dtype=torch.float64)
    h0 = torch.randn(batch, hidden, dtype=torch.float64)
    w_ih, w_hh = (
        torch.randn(hidden, n_in).double(),
        torch.randn(hidden, hidden).double(),
    )
    b_ih, b_hh = torch.randn(hidden).double(), torch.randn(hidden).double()
    mask = (torch.arange(seq)[:, None] < torch.tensor([6, 2, 4]))[..., None]
    mask = mask if masked else torch.ones(seq, batch, 1, dtype=torch.bool)
    direct = torch.randn(seq, batch, hidden, dtype=torch.float64)  # ∂L/∂h_t, direct

    h, states = h0.clone().requires_grad_(), []
    for t in range(seq):
        step = torch.tanh(x[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh)
        h = torch.where(mask[t], step, h)
        h.retain_grad()
        states.append(h)
    (torch.stack(states) * direct).sum().backward()

    saved = rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, "tanh", mask)
    grads = rnn_backward(direct, x, h0, w_ih, w_hh, saved, "tanh", mask)
    expected = torch.stack([state.grad for state in states])
    torch.testing.assert_close(grads.states, expected, rtol=1e-12, atol=1e-12)


def test_two_thousand_steps_without_recursion():
    ours, theirs = twins(8, input_size=2, hidden_size=8, num_layers=2)
    torch.manual_seed(8)
    x = torch.randn(2000, 2, 2, dtype=torch.float64)
    # Leave room for pytest's own frames and little more: a recursive BPTT or a
    # recursive graph walk would need thousands.
    depth = len(inspect.stack())
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + 100)
    try:
        ours_result = run(ours, x, None)
    finally:
        sys.setrecursionlimit(limit)
    assert_same(ours_result, run(theirs, x, None))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backprop", ["hand", "autograd"])
def test_on_a_gpu_matches_cudnn_in_float64(backprop):
    ours, theirs = twins(
        14, backprop=backprop, input_size=3, hidden_size=16, num_layers=2
    )
    ours, theirs = ours.cuda(), theirs.cuda()
    x = torch.randn(40, 5, 3, dtype=torch.float64, device="cuda")
    assert_same(run(ours, x, None), run(theirs, x, None))


def test_float32_matches_torch_to_single_precision():
    ours, theirs = twins(9, dtype=torch.float32, input_size=4, hidden_size=16)
    x = torch.randn(30, 8, 4)
    assert_same(run(ours, x, None), run(theirs, x, None), rtol=1e-5, atol=1e-5)


def test_the_two_bias_gradients_are_equal():
    ours, _ = twins(10, input_size=3, hidden_size=4)
    output, _ = ours(torch.randn(5, 2, 3, dtype=torch.float64))
    output.sum().backward()
    assert torch.equal(ours.bias_ih_l0.grad, ours.bias_hh_l0.grad)


def test_extreme_inputs_stay_finite():
    ours, _ = twins(11, dtype=torch.float32, input_size=2, hidden_size=4)
    x = torch.tensor([1e6, -1e6, 3e38, -3e38]).reshape(4, 1, 1).repeat(1, 3, 2)
    x.requires_grad_()
    output, h_n = ours(x)
    assert torch.isfinite(output).all() and output.abs().max() <= 1
    (output.sum() + h_n.sum()).backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in ours.parameters())


def test_state_dicts_move_both_ways_through_safetensors(tmp_path):
    ours, _ = twins(12, input_size=3, hidden_size=5, num_layers=2, bidirectional=True)
    save_file(ours.state_dict(), tmp_path / "rnn.safetensors")
    theirs = nn.RNN(3, 5, num_layers=2, bidirectional=True).double()
    theirs.load_state_dict(load_file(tmp_path / "rnn.safetensors"))
    fresh = RNN(3, 5, num_layers=2, bidirectional=True).double()
    fresh.load_state_dict(theirs.state_dict())
    assert [n for n, _ in fresh.named_parameters()] == [
        n for n, _ in theirs.named_parameters()
    ]
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(fresh(x)[0], theirs(x)[0], **TOLERANCE)
    torch.testing.assert_close(fresh(x)[0], ours(x)[0], rtol=0, atol=0)


def test_gradient_reach_equals_torch_restarted_from_each_state():
    """∂L_T/∂h_t is the gradient of L_T with respect to the initial state of an RNN
    started at step t + 1 from h_t: nn.RNN computes it independently."""
    torch.manual_seed(13)
    model = SinePredictor(hidden_size=6).double()
    x, y = (t.double() for t in sine_waves(4, 12, torch.Generator().manual_seed(0)))
    norms = state_gradient_norms(model, x, y)
    theirs = nn.RNN(1, 6).double()
    theirs.load_state_dict(model.rnn.state_dict())
    with torch.no_grad():
        states, _ = theirs(x)
    for t in (0, 5, 10):
        h_t = states[t].detach().clone()[None].requires_grad_()
        rest, _ = theirs(x[t + 1 :], h_t)
        loss = F.mse_loss(model.readout(rest[-1]), y[-1])
        (grad,) = torch.autograd.grad(loss, h_t)
        expected = grad[0].norm(dim=1).mean()
        torch.testing.assert_close(norms[t], expected, rtol=1e-10, atol=1e-14)


def test_bad_inputs_raise_naming_the_argument():
    model = RNN(3, 4)
    with pytest.raises(
        ValueError, match=r"x must be a 3-D tensor \[seq, batch, input\]"
    ):
        model(torch.randn(5, 3))
    with pytest.raises(ValueError, match="input = 3"):
        model(torch.randn(5, 2, 4))
    with pytest.raises(ValueError, match=r"\[batch, seq, input\]"):
        RNN(3, 4, batch_first=True)(torch.randn(2, 5))
    with pytest.raises(ValueError, match="is empty"):
        model(torch.randn(0, 2, 3))
    with pytest.raises(TypeError, match="x has dtype torch.float64"):
        model(torch.randn(5, 2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="x has dtype torch.int64"):
        model(torch.ones(5, 2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"h0 must be .* = \(1, 2, 4\)"):
        model(torch.randn(5, 2, 3), torch.zeros(2, 2, 4))
    with pytest.raises(TypeError, match="h0 has dtype"):
        model(torch.randn(5, 2, 3), torch.zeros(1, 2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="backprop must be one of"):
        RNN(3, 4, backprop="numeric")
    with pytest.raises(ValueError, match="num_layers must be an int >= 1"):
        RNN(3, 4, num_layers=0)
    with pytest.raises(ValueError, match="hidden_size must be an int >= 1"):
        RNN(3, 2.5)
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        weights = torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), torch.zeros(1)
        rnn_forward(torch.zeros(1, 1, 1), torch.zeros(1, 1), *weights, "Tanh")
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        one = torch.zeros(1, 1, 1)
        rnn_backward(one, one, one[0], *weights[:2], one, "sigmoid")


def test_example_runs():
    fn, args = example()
    assert fn(*args).shape == (5, 2, 1)


def test_demo_learns_to_beat_the_memoryless_baseline(tmp_path):
    # The short run's test MSE over the stored seeds is its expected band.
    metric, args, low, high = short_band("annotated/sequence/rnn.py")
    metrics = main([*args, "--out", str(tmp_path)])
    assert low <= metrics[metric] <= high  # the short run's band over stored seeds
    assert metrics["gradient_gap"] < 1e-10
    assert metrics["final_loss"] < metrics["first_loss"] / 5
    assert metrics["test_mse"] < metrics["baseline_mse"] / 2
    assert metrics["late_mse"] < metrics["test_mse"]  # memory helps: later is better
    assert (tmp_path / "training.png").exists() and (
        tmp_path / "gradients.png"
    ).exists()


def layer_inputs(backprop=None):
    torch.manual_seed(0)
    x = torch.randn(50, 32, 32)
    if backprop is None:
        return nn.RNN(32, 64), x
    return RNN(32, 64, backprop=backprop), x


def forward_backward(model, x):
    def step():
        output, h_n = model(x)
        (output.sum() + h_n.sum()).backward()

    return step


@pytest.mark.benchmark(group="RNN layer forward + backward, seq 50, batch 32, 32→64")
def test_bench_layer_torch(benchmark):
    benchmark.extra_info["label"] = "nn.RNN"
    benchmark.extra_info["baseline"] = True
    benchmark(forward_backward(*layer_inputs()))


@pytest.mark.benchmark(group="RNN layer forward + backward, seq 50, batch 32, 32→64")
def test_bench_layer_hand_bptt(benchmark):
    benchmark.extra_info["label"] = "ours, hand-written BPTT"
    benchmark(forward_backward(*layer_inputs("hand")))


@pytest.mark.benchmark(group="RNN layer forward + backward, seq 50, batch 32, 32→64")
def test_bench_layer_autograd(benchmark):
    benchmark.extra_info["label"] = "ours, autograd through the loop"
    benchmark(forward_backward(*layer_inputs("autograd")))
