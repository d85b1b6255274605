"""Verified against the sequential computation each trick replaces, in float64 to
1e-12 (values) and 1e-10 (gradients): full BPTT and one long pass of nn.GRU/nn.LSTM,
nn.LSTM run on each sequence alone, the step-by-step loop (and scipy.signal.lfilter)
for the scan, and torch's FlopCounterMode for the FLOP count.

The sampler is checked for its promise in full (every index exactly once per epoch),
the scan's operator count against the prose's numbers, and the demo must learn the copy
only when the chunk is longer than the delay.
"""

import math

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils.rnn import (
    pack_padded_sequence,
    pack_sequence,
    pad_packed_sequence,
    pad_sequence,
)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import BatchSampler, DataLoader, RandomSampler
from torch.utils.flop_counter import FlopCounterMode

from annotated.sequence.parallel_rnn import (
    BucketBatchSampler,
    MinGRU,
    StreamModel,
    collate_padded,
    detach_state,
    echo_stream,
    example,
    linear_recurrence_loop,
    linear_scan,
    lstm_cell_like,
    lstm_flops,
    main,
    padding_fraction,
    run_packed,
    sequence_lengths,
    truncated_bptt,
)
from tools.literate.figures import short_band

torch.set_num_threads(1)
TIGHT = {"rtol": 1e-12, "atol": 1e-12}
GRAD = {"rtol": 1e-10, "atol": 1e-10}


# ---------------------------------------------------------------- truncated BPTT


def stream_model(cell: str, seed: int = 0) -> StreamModel:
    torch.manual_seed(seed)
    return StreamModel(5, 8, cell=cell, embed=4).double()


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def full_bptt_grads(model, tokens, targets):
    model.zero_grad()
    logits, _ = model(tokens)
    F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
    return grads(model)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("chunk", [50, 1000])
def test_one_chunk_is_full_bptt(cell, chunk):
    model = stream_model(cell)
    tokens, targets = echo_stream(3, 50, 2, vocab=5)
    want = full_bptt_grads(model, tokens, targets)
    model.zero_grad()
    losses, _ = truncated_bptt(model, tokens, targets, chunk)
    assert len(losses) == 1
    for name, grad in grads(model).items():
        torch.testing.assert_close(grad, want[name], **TIGHT)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_carried_state_equals_one_long_pass(cell):
    model = stream_model(cell)
    tokens, _ = echo_stream(3, 100, 2, vocab=5)
    with torch.no_grad():
        whole, whole_state = model(tokens)
        state, pieces = None, []
        for start in range(0, 100, 7):  # 14 chunks of 7 and one of 2
            logits, state = model(tokens[:, start : start + 7], state)
            pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, **TIGHT)
    for got, want in zip(
        state if cell == "lstm" else (state,),
        whole_state if cell == "lstm" else (whole_state,),
    ):
        torch.testing.assert_close(got, want, **TIGHT)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("chunk", [1, 3, 7, 16])
def test_truncated_gradient_equals_chunks_started_from_the_long_pass_state(cell, chunk):
    """The reference builds each chunk's loss from the state one long pass reaches at
    the chunk's start, taken as a constant, and adds up the gradients."""
    tokens, targets = echo_stream(2, 40, 3, vocab=5, seed=1)
    reference = stream_model(cell)
    reference.zero_grad()
    for start in range(0, 40, chunk):
        with torch.no_grad():
            state = reference(tokens[:, :start])[1] if start else None
        logits, _ = reference(tokens[:, start : start + chunk], state)
        piece = targets[:, start : start + chunk].flatten()
        F.cross_entropy(logits.flatten(0, 1), piece).backward()
    model = stream_model(cell)
    model.zero_grad()
    losses, _ = truncated_bptt(model, tokens, targets, chunk)
    assert len(losses) == math.ceil(40 / chunk)
    want = grads(reference)
    for name, grad in grads(model).items():
        torch.testing.assert_close(grad, want[name], **GRAD)
    # And the truncation is real: the gradient differs from full BPTT's.
    full = full_bptt_grads(stream_model(cell), tokens, targets)
    assert (
        grads(model)["rnn.weight_hh_l0"] - full["rnn.weight_hh_l0"]
    ).abs().max() > 1e-4


def test_training_state_and_weights_survive_a_safetensors_checkpoint(tmp_path):
    """Stop a TBPTT run half-way, save weights and the carried state, reload, go on:
    the same losses as a run that never stopped."""
    tokens, targets = echo_stream(4, 60, 2)
    torch.manual_seed(0)
    model = StreamModel(4, 12)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    first, state = truncated_bptt(model, tokens[:, :30], targets[:, :30], 10, optimizer)
    save_file({**model.state_dict(), "carried_state": state}, tmp_path / "tbptt.st")
    rest, _ = truncated_bptt(
        model, tokens[:, 30:], targets[:, 30:], 10, optimizer, state
    )

    saved = load_file(tmp_path / "tbptt.st")
    resumed = StreamModel(4, 12)
    carried = saved.pop("carried_state")
    resumed.load_state_dict(saved)
    optimizer = torch.optim.SGD(resumed.parameters(), lr=0.1)
    again, _ = truncated_bptt(
        resumed, tokens[:, 30:], targets[:, 30:], 10, optimizer, carried
    )
    assert len(first) == 3 and again == rest


def test_detach_state_cuts_a_tensor_or_a_pair_and_passes_none_through():
    h = 2 * torch.ones(2, 3, requires_grad=True)  # has a grad_fn
    assert detach_state(None) is None  # a stream's first chunk: no state yet
    assert detach_state(h).grad_fn is None and torch.equal(detach_state(h), h)
    pair = detach_state((h, h + 1))  # an LSTM's (h, c)
    assert isinstance(pair, tuple) and [p.grad_fn for p in pair] == [None, None]


def test_echo_stream_targets_are_the_tokens_delay_steps_back():
    tokens, targets = echo_stream(3, 50, 5, vocab=7, seed=3)
    assert tokens.shape == targets.shape == (3, 50)
    assert torch.equal(targets[:, 5:], tokens[:, :-5])
    assert tokens.min() >= 0 and tokens.max() < 7


# ---------------------------------------------------------------- packing


def ragged(lengths, features=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(length, features, dtype=torch.float64, generator=generator)
        for length in lengths
    ]


def one_by_one(lstm, sequences):
    outputs, finals_h, finals_c = [], [], []
    for sequence in sequences:
        out, (h, c) = lstm(sequence[None])  # batch of one, no padding
        outputs.append(out[0])
        finals_h.append(h[0, 0])
        finals_c.append(c[0, 0])
    return outputs, torch.stack(finals_h), torch.stack(finals_c)


LENGTHS = [5, 1, 9, 9, 2, 7, 1]  # unsorted, ties, several of length 1


def test_packed_lstm_equals_each_sequence_run_alone():
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 6, batch_first=True).double()
    sequences = ragged(LENGTHS)
    packed = pack_sequence(sequences, enforce_sorted=False)
    out, (h, c) = lstm(packed)
    padded, lengths = pad_packed_sequence(out, batch_first=True)
    want_out, want_h, want_c = one_by_one(lstm, sequences)
    assert lengths.tolist() == LENGTHS
    for row, (length, expected) in enumerate(zip(LENGTHS, want_out)):
        torch.testing.assert_close(padded[row, :length], expected, **TIGHT)
        assert not padded[row, length:].any()  # pad_packed_sequence pads with 0
    torch.testing.assert_close(h[0], want_h, **TIGHT)
    torch.testing.assert_close(c[0], want_c, **TIGHT)


def test_padding_without_packing_gives_the_wrong_final_state():
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 6, batch_first=True).double()
    sequences = ragged(LENGTHS)
    out, (h, _) = lstm(pad_sequence(sequences, batch_first=True))
    _, want_h, _ = one_by_one(lstm, sequences)
    # The output at each sequence's last real step is still its right final state.
    last = out[torch.arange(len(LENGTHS)), torch.tensor(LENGTHS) - 1]
    torch.testing.assert_close(last, want_h, **TIGHT)
    gaps = (h[0] - want_h).abs().amax(dim=1)
    longest = [length == max(LENGTHS) for length in LENGTHS]
    assert all(gap < 1e-12 for gap, full in zip(gaps, longest) if full)
    assert all(gap > 1e-3 for gap, full in zip(gaps, longest) if not full)


@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_run_packed_matches_nn_lstm_forward_and_gradients(enforce_sorted):
    torch.manual_seed(1)
    lstm = nn.LSTM(3, 6).double()
    lengths = sorted(LENGTHS, reverse=True) if enforce_sorted else LENGTHS
    sequences = [s.requires_grad_() for s in ragged(lengths)]
    packed = pack_sequence(sequences, enforce_sorted=enforce_sorted)
    ours, (h, c) = run_packed(lstm_cell_like(lstm), packed)
    theirs, (h_ref, c_ref) = lstm(packed)
    torch.testing.assert_close(ours.data, theirs.data, **TIGHT)
    assert torch.equal(ours.batch_sizes, theirs.batch_sizes)
    torch.testing.assert_close(h, h_ref[0], **TIGHT)
    torch.testing.assert_close(c, c_ref[0], **TIGHT)
    weights = [*lstm.parameters(), *sequences]
    cotangent = torch.randn_like(ours.data)
    loss = (ours.data * cotangent).sum() + h.sum() + c.sum()
    got = torch.autograd.grad(loss, weights, retain_graph=True)  # shared packing
    total = (theirs.data * cotangent).sum() + h_ref.sum() + c_ref.sum()
    want = torch.autograd.grad(total, weights)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **GRAD)


def test_packed_run_computes_only_the_real_time_steps():
    """FlopCounterMode counts the gate products: 8H(I + H) per real step when packed,
    per padded step when the same cell runs over the padded rectangle."""
    torch.manual_seed(2)
    lstm = nn.LSTM(3, 6)
    cell = lstm_cell_like(lstm)
    sequences = [s.float() for s in ragged(LENGTHS)]
    with FlopCounterMode(display=False) as packed_count:
        run_packed(cell, pack_sequence(sequences, enforce_sorted=False))
    padded = pad_sequence(sequences)  # [max_len, batch, 3]
    with FlopCounterMode(display=False) as padded_count:
        state = None
        for step in padded:
            state = cell(step, state)
    assert packed_count.get_total_flops() == lstm_flops(sum(LENGTHS), 3, 6)
    rectangle = len(LENGTHS) * max(LENGTHS)
    assert padded_count.get_total_flops() == lstm_flops(rectangle, 3, 6)


def test_padding_fraction_by_hand():
    lengths = torch.tensor([3, 2, 1, 4])
    assert padding_fraction(lengths, [[0, 1, 2]]) == pytest.approx(1 - 6 / 9)
    assert padding_fraction(lengths, [[0, 1], [2], [3]]) == pytest.approx(1 - 10 / 11)
    assert padding_fraction(lengths, [[i] for i in range(4)]) == 0


def test_sequence_lengths_have_the_promised_shape():
    lengths = sequence_lengths(2048)
    assert lengths.dtype == torch.int64 and lengths.min() >= 1
    assert 18 <= lengths.median() <= 22
    assert 22 <= lengths.double().mean() <= 26 and 13 <= lengths.double().std() <= 17
    assert lengths.max() == 126  # the number in the prose
    assert torch.equal(lengths, sequence_lengths(2048))


# ---------------------------------------------------------------- bucketing


@given(
    n=st.integers(1, 300),
    batch_size=st.integers(1, 40),
    pool_batches=st.integers(1, 6),
    seed=st.integers(0, 10),
    epoch=st.integers(0, 3),
)
def test_every_index_exactly_once_per_epoch(n, batch_size, pool_batches, seed, epoch):
    lengths = sequence_lengths(n, seed=seed)
    sampler = BucketBatchSampler(lengths, batch_size, pool_batches, seed=seed)
    sampler.set_epoch(epoch)
    batches = list(sampler)
    assert sorted(i for batch in batches for i in batch) == list(range(n))
    assert len(batches) == len(sampler)
    assert all(1 <= len(batch) <= batch_size for batch in batches)
    pool = batch_size * pool_batches
    assert sum(len(batch) < batch_size for batch in batches) <= math.ceil(n / pool)


def test_buckets_hold_neighbours_in_length_and_reshuffle_each_epoch():
    lengths = sequence_lengths(2048)
    sampler = BucketBatchSampler(lengths, 64, pool_batches=2048)  # one pool: a sort
    batches = list(sampler)
    spans = sorted((int(lengths[b].min()), int(lengths[b].max())) for b in batches)
    assert all(hi <= next_lo for (_, hi), (next_lo, _) in zip(spans, spans[1:]))
    assert batches == list(sampler)  # same epoch, same batches
    sampler.set_epoch(1)
    assert batches != list(sampler)
    unshuffled = BucketBatchSampler(lengths, 64, 4, shuffle=False)
    first = next(iter(unshuffled))
    assert first == torch.argsort(lengths[:256], stable=True)[:64].tolist()


def test_padding_numbers_in_the_prose():
    lengths = sequence_lengths(2048)
    random = BatchSampler(
        RandomSampler(lengths, generator=torch.Generator().manual_seed(0)), 64, False
    )
    fractions = [
        padding_fraction(lengths, list(random)),
        padding_fraction(lengths, list(BucketBatchSampler(lengths, 64, 4))),
        padding_fraction(lengths, list(BucketBatchSampler(lengths, 64, 32))),
    ]
    assert fractions == pytest.approx([0.71, 0.43, 0.098], abs=0.01)


def test_sampler_drives_a_dataloader_that_pads_and_packs():
    lengths = sequence_lengths(100, seed=4)
    dataset = [
        torch.full((int(length), 2), float(i)) for i, length in enumerate(lengths)
    ]
    loader = DataLoader(
        dataset,
        batch_sampler=BucketBatchSampler(lengths, 16, 2),
        collate_fn=collate_padded,
    )
    seen = []
    for padded, batch_lengths in loader:
        packed = pack_padded_sequence(
            padded, batch_lengths, batch_first=True, enforce_sorted=False
        )
        assert packed.data.shape == (int(batch_lengths.sum()), 2)
        seen += padded[:, 0, 0].long().tolist()
    assert sorted(seen) == list(range(100))


# ---------------------------------------------------------------- the scan


@pytest.mark.parametrize("steps", [1, 2, 3, 5, 7, 8, 13, 64, 100, 1000])
@pytest.mark.parametrize("with_h0", [False, True])
def test_scan_equals_the_loop_forward_and_gradients(steps, with_h0):
    generator = torch.Generator().manual_seed(steps)
    shape = (3, steps, 4)
    a = torch.empty(shape, dtype=torch.float64).uniform_(-1, 1, generator=generator)
    b = torch.randn(shape, dtype=torch.float64, generator=generator)
    h0 = (
        torch.randn(3, 4, dtype=torch.float64, generator=generator) if with_h0 else None
    )
    inputs = [t.requires_grad_() for t in (a, b, h0) if t is not None]
    ours = linear_scan(a, b, h0)
    loop = linear_recurrence_loop(a, b, h0)
    torch.testing.assert_close(ours, loop, **TIGHT)
    cotangent = torch.randn(ours.shape, dtype=torch.float64, generator=generator)
    # With one step and no h0 the scan never reads `a`: its gradient is zero.
    got = torch.autograd.grad(ours, inputs, cotangent, materialize_grads=True)
    want = torch.autograd.grad(loop, inputs, cotangent)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **GRAD)


@given(
    batch=st.integers(1, 3),
    steps=st.integers(1, 300),
    hidden=st.integers(1, 5),
    scale=st.floats(0.0, 1.2),
    seed=st.integers(0, 2**16),
)
def test_scan_equals_the_loop_on_random_shapes(batch, steps, hidden, scale, seed):
    generator = torch.Generator().manual_seed(seed)
    a = scale * (2 * torch.rand(batch, steps, hidden, generator=generator) - 1)
    b = torch.randn(batch, steps, hidden, generator=generator)
    a, b = a.double(), b.double()
    h0 = torch.randn(batch, hidden, generator=generator).double()
    loop = linear_recurrence_loop(a, b, h0)
    torch.testing.assert_close(
        linear_scan(a, b, h0), loop, rtol=1e-10, atol=1e-10 * loop.abs().max()
    )


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.99, 1.0, -0.9])
def test_constant_decay_matches_scipy_lfilter(alpha):
    """For a constant $a_t = \\alpha$ the recurrence is the IIR filter
    $y_n = x_n + \\alpha y_{n-1}$; `zi` carries $h_0$."""
    rng = np.random.default_rng(0)
    b = rng.standard_normal((2, 777, 3))
    h0 = rng.standard_normal((2, 3))
    want = np.empty_like(b)
    for i in range(2):
        for j in range(3):
            want[i, :, j], _ = scipy.signal.lfilter(
                [1.0], [1.0, -alpha], b[i, :, j], zi=[alpha * h0[i, j]]
            )
    a = torch.full(b.shape, alpha, dtype=torch.float64)
    bt, h0t = torch.from_numpy(b), torch.from_numpy(h0)
    torch.testing.assert_close(
        linear_scan(a, bt, h0t).numpy(), want, rtol=1e-10, atol=1e-10
    )
    loop = linear_recurrence_loop(a, bt, h0t).numpy()
    torch.testing.assert_close(loop, want, rtol=1e-10, atol=1e-10)


def test_scan_gradcheck():
    a = torch.rand(2, 11, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 11, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(linear_scan, (a, b, h0))


def test_scan_in_float32_on_a_long_slow_decay():
    torch.manual_seed(0)
    a = 1 - 1e-3 * torch.rand(2, 4096, 8)  # memory of about a thousand steps
    b = torch.randn(2, 4096, 8)
    loop = linear_recurrence_loop(a.double(), b.double()).float()
    torch.testing.assert_close(linear_scan(a, b), loop, rtol=1e-4, atol=1e-3)


def test_long_sequences_backpropagate_without_recursion_limits():
    torch.manual_seed(0)
    a = torch.rand(1, 5_000, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, 5_000, 2, dtype=torch.float64, requires_grad=True)
    scan_grads = torch.autograd.grad(linear_scan(a, b).sum(), (a, b))
    loop_grads = torch.autograd.grad(linear_recurrence_loop(a, b).sum(), (a, b))
    for g, w in zip(scan_grads, loop_grads):
        torch.testing.assert_close(g, w, **GRAD)


class CountOperators(TorchDispatchMode):
    """Counts the operators PyTorch dispatches that compute something (views are
    free: no kernel runs)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += not func.is_view
        return func(*args, **(kwargs or {}))


def operator_counts(fn, steps):
    a = torch.rand(4, steps, 64, requires_grad=True)
    b = torch.randn(4, steps, 64, requires_grad=True)
    with CountOperators() as forward:
        h = fn(a, b)
    with CountOperators() as backward:
        h.sum().backward()
    return forward.count, forward.count + backward.count


@pytest.mark.parametrize("steps", [5, 1000, 4096])
def test_sequential_operations_are_log_depth_for_the_scan(steps):
    rounds = math.ceil(math.log2(steps))
    loop_forward, loop_total = operator_counts(linear_recurrence_loop, steps)
    scan_forward, scan_total = operator_counts(linear_scan, steps)
    assert loop_forward == 2 * steps + 2  # a mul and an add per step, zeros, stack
    assert scan_forward == 5 * rounds  # two muls, an add, two cats per round
    assert scan_total <= 20 * rounds and loop_total >= 5 * steps
    if steps == 4096:  # the numbers the lesson quotes
        assert (scan_forward, scan_total, loop_forward, loop_total) == (
            60,
            235,
            8194,
            20484,
        )


def test_scan_special_values():
    b = torch.randn(2, 9, 3, dtype=torch.float64)
    zeros, ones = torch.zeros_like(b), torch.ones_like(b)
    torch.testing.assert_close(linear_scan(zeros, b), b, **TIGHT)  # a = 0 forgets
    torch.testing.assert_close(linear_scan(ones, b), b.cumsum(1), **TIGHT)  # a sum
    huge = torch.full((1, 40, 1), 1e10, dtype=torch.float64)  # overflows in order
    assert torch.isinf(linear_scan(huge, huge)).any()
    assert not torch.isnan(linear_scan(huge, huge)).any()


def test_bad_recurrence_inputs_raise_naming_the_argument():
    a = torch.rand(2, 5, 3)
    with pytest.raises(
        ValueError, match=r"a and b must both be \[batch, seq, hidden\]"
    ):
        linear_scan(a, torch.rand(2, 4, 3))
    with pytest.raises(ValueError, match="seq >= 1"):
        linear_recurrence_loop(torch.rand(2, 0, 3), torch.rand(2, 0, 3))
    with pytest.raises(TypeError, match="b must be a floating-point tensor"):
        linear_scan(a, torch.ones(2, 5, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="a must be a floating-point tensor"):
        linear_scan(a.numpy(), a)
    with pytest.raises(ValueError, match=r"h0 must be \[batch, hidden\] = \(2, 3\)"):
        linear_scan(a, a, torch.zeros(3))


# ---------------------------------------------------------------- minGRU


def test_min_gru_scan_and_loop_agree_and_match_the_equations():
    torch.manual_seed(0)
    layer = MinGRU(4, 6).double()
    x = torch.randn(2, 17, 4, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 6, dtype=torch.float64)
    parallel = layer(x, h0)
    layer.parallel = False
    torch.testing.assert_close(layer(x, h0), parallel, **TIGHT)
    h, states = h0, []
    for x_t in x.unbind(1):  # the equations, step by step
        z = torch.sigmoid(x_t @ layer.gate.weight.T + layer.gate.bias)
        candidate = x_t @ layer.candidate.weight.T + layer.candidate.bias
        h = (1 - z) * h + z * candidate
        states.append(h)
    torch.testing.assert_close(parallel, torch.stack(states, 1), **TIGHT)
    got = torch.autograd.grad(parallel.sum(), [x, *layer.parameters()])
    want = torch.autograd.grad(torch.stack(states, 1).sum(), [x, *layer.parameters()])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **GRAD)


def test_min_gru_state_stays_bounded_on_extreme_inputs():
    layer = MinGRU(3, 5)
    x = torch.full((1, 500, 3), 1e4)
    assert torch.isfinite(layer(x)).all()
    bound = layer.candidate(x[:, 0]).abs().max()
    assert layer(x).abs().max() <= bound * (1 + 1e-5)


def test_example_traces_and_runs():
    fn, args = example()
    out = fn(*args)
    assert out.shape == (2, 13, 16)
    graph = torch.fx.symbolic_trace(fn).graph
    assert any(node.target is linear_scan for node in graph.nodes)


# ---------------------------------------------------------------- bad input elsewhere


def test_other_bad_inputs_raise_naming_the_argument():
    model = StreamModel(4, 8)
    tokens, targets = echo_stream(2, 10, 1)
    with pytest.raises(ValueError, match="chunk must be an int >= 1"):
        truncated_bptt(model, tokens, targets, 0)
    with pytest.raises(ValueError, match="tokens and targets must both be"):
        truncated_bptt(model, tokens, targets[:, :5], 4)
    with pytest.raises(ValueError, match="cell must be 'gru' or 'lstm'"):
        StreamModel(4, 8, cell="rnn")
    with pytest.raises(TypeError, match="packed must be a PackedSequence"):
        run_packed(nn.LSTMCell(3, 4), torch.randn(5, 2, 3))
    with pytest.raises(ValueError, match="one layer, one direction"):
        lstm_cell_like(nn.LSTM(3, 4, bidirectional=True))
    with pytest.raises(ValueError, match="lengths must be a 1-D sequence of integers"):
        BucketBatchSampler([1.5, 2.0], 2)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        BucketBatchSampler([1, 2], 0)
    with pytest.raises(ValueError, match="pool_batches must be an int >= 1"):
        BucketBatchSampler([1, 2], 1, pool_batches=0)


# ---------------------------------------------------------------- the demo


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--stream-length", "4", "--delay", "4"], "--delay must be below"),
        (["--sequences", "10"], "--batch-size must be at most --sequences"),
        # A chunk length < 1 is refused by the flag's type, before main's own check.
        (["--truncations", "4,0"], "expected comma-separated whole numbers >= 1"),
    ],
)
def test_demo_refuses_bad_flags_before_writing(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        main([*flags, "--out", str(tmp_path / "out")])
    assert exit.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_demo_learns_the_copy_only_when_the_chunk_is_longer_than_the_delay(tmp_path):
    # The k = 8 run's final loss over the stored seeds is its expected band.
    metric, args, low, high = short_band("annotated/sequence/parallel_rnn.py")
    metrics = main([*args, "--out", str(tmp_path)])
    assert low <= metrics[metric] <= high  # the short run's band over stored seeds
    assert metrics["carried_state_gap"] < 1e-6
    assert metrics["loss_k3"] > math.log(4) - 0.2  # k = delay: no gradient path
    assert metrics["loss_k8"] < 0.3
    assert metrics["padding_random"] > metrics["padding_pools_of_2"]
    assert metrics["padding_pools_of_2"] > metrics["padding_sorted"]
    for name in ("truncation.png", "padding.png", "scan.png"):
        assert (tmp_path / name).stat().st_size > 1000


# ---------------------------------------------------------------- benchmarks


def recurrence_inputs():
    torch.manual_seed(0)
    a = torch.rand(4, 1024, 64, requires_grad=True)
    b = torch.randn(4, 1024, 64, requires_grad=True)
    return a, b


@pytest.mark.benchmark(group="linear recurrence T=1024, 4×64, forward + backward")
def test_bench_recurrence_loop(benchmark):
    benchmark.extra_info["label"] = "sequential loop (1,024 steps)"
    benchmark.extra_info["baseline"] = True
    a, b = recurrence_inputs()
    benchmark(lambda: linear_recurrence_loop(a, b).sum().backward())


@pytest.mark.benchmark(group="linear recurrence T=1024, 4×64, forward + backward")
def test_bench_recurrence_scan(benchmark):
    benchmark.extra_info["label"] = "Hillis–Steele scan (10 rounds)"
    a, b = recurrence_inputs()
    benchmark(lambda: linear_scan(a, b).sum().backward())


def lstm_batch():
    torch.manual_seed(0)
    lengths = sequence_lengths(64, seed=1)  # 69 % of the padded batch is padding
    lstm = nn.LSTM(16, 64, batch_first=True)
    padded = pad_sequence([torch.randn(int(n), 16) for n in lengths], batch_first=True)
    return lstm, padded, lengths


GROUP = "nn.LSTM 16→64 on 64 sentence-length sequences, forward + backward"


@pytest.mark.benchmark(group=GROUP)
def test_bench_lstm_padded(benchmark):
    benchmark.extra_info["label"] = "nn.LSTM on the padded batch (oneDNN)"
    benchmark.extra_info["baseline"] = True
    lstm, padded, _ = lstm_batch()
    benchmark(lambda: lstm(padded)[0].sum().backward())


@pytest.mark.benchmark(group=GROUP)
def test_bench_lstm_padded_without_onednn(benchmark):
    benchmark.extra_info["label"] = "nn.LSTM on the padded batch, oneDNN off"
    lstm, padded, _ = lstm_batch()

    def step():
        with torch.backends.mkldnn.flags(enabled=False):
            lstm(padded)[0].sum().backward()

    benchmark(step)


@pytest.mark.benchmark(group=GROUP)
def test_bench_lstm_packed(benchmark):
    benchmark.extra_info["label"] = "nn.LSTM on a PackedSequence"
    lstm, padded, lengths = lstm_batch()

    def step():
        packed = pack_padded_sequence(
            padded, lengths, batch_first=True, enforce_sorted=False
        )
        lstm(packed)[0].data.sum().backward()

    benchmark(step)


@pytest.mark.benchmark(group=GROUP)
def test_bench_lstm_run_packed(benchmark):
    benchmark.extra_info["label"] = "run_packed over nn.LSTMCell"
    lstm, padded, lengths = lstm_batch()
    cell = lstm_cell_like(lstm)

    def step():
        packed = pack_padded_sequence(
            padded, lengths, batch_first=True, enforce_sorted=False
        )
        run_packed(cell, packed)[0].data.sum().backward()

    benchmark(step)
