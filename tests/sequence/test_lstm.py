"""Verified against nn.LSTMCell, nn.GRUCell, nn.LSTM and nn.GRU with copied weights in
float64 (outputs, final states and every gradient to 1e-10), packed sequences included.

Every gradient means the input's, the initial states' and each parameter's, with random
upstream gradients on the output and on the final states. The layers are compared over
1 and 3 layers, both directions, with and without projection, bias and batch_first;
packed batches of random lengths are compared with `pack_padded_sequence` through
torch's layers and with each sequence run on its own. The demo trains briefly and must
move below its starting error.
"""

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from annotated.sequence.lstm import (
    GRU,
    LSTM,
    AddingModel,
    adding_problem,
    dataflow,
    example,
    gate_trace,
    gru_cell,
    lstm_cell,
    main,
    moving_average,
)
from tools.literate.figures import short_band

torch.set_num_threads(1)
TOLERANCE = {"rtol": 1e-10, "atol": 1e-10}
DOUBLE = torch.float64


def randn(*shape, seed=0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(*shape, generator=generator, dtype=DOUBLE) * scale
    return values.requires_grad_()


def gradients(outputs, inputs, seed=1):
    """Gradients of `sum(<outputs, random>)` with respect to `inputs`."""
    outputs = [o for o in outputs]
    upstream = [randn(*o.shape, seed=seed + k).detach() for k, o in enumerate(outputs)]
    return torch.autograd.grad(
        outputs, inputs, upstream, retain_graph=True, allow_unused=True
    )


def assert_all_close(ours, theirs, tolerance=TOLERANCE):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, **tolerance)


# ---------------------------------------------------------------- the cells

sizes = st.integers(1, 6)


@given(batch=sizes, inputs=sizes, hidden=sizes, bias=st.booleans())
def test_lstm_cell_matches_nn_lstmcell_values_and_all_gradients(
    batch, inputs, hidden, bias
):
    torch.manual_seed(batch * 100 + inputs * 10 + hidden)
    reference = nn.LSTMCell(inputs, hidden, bias=bias).double()
    x, h, c = (
        randn(batch, inputs),
        randn(batch, hidden, seed=1),
        randn(batch, hidden, seed=2),
    )
    weights = list(reference.parameters())  # weight_ih, weight_hh, (bias_ih, bias_hh)
    ours = lstm_cell(x, h, c, *weights)
    theirs = reference(x, (h, c))
    assert_all_close(ours, theirs)
    assert_all_close(
        gradients(ours, [x, h, c, *weights]), gradients(theirs, [x, h, c, *weights])
    )


@given(batch=sizes, inputs=sizes, hidden=sizes, bias=st.booleans())
def test_gru_cell_matches_nn_grucell_values_and_all_gradients(
    batch, inputs, hidden, bias
):
    torch.manual_seed(batch * 100 + inputs * 10 + hidden)
    reference = nn.GRUCell(inputs, hidden, bias=bias).double()
    x, h = randn(batch, inputs), randn(batch, hidden, seed=1)
    weights = list(reference.parameters())
    ours = gru_cell(x, h, *weights)
    theirs = reference(x, h)
    torch.testing.assert_close(ours, theirs, **TOLERANCE)
    assert_all_close(
        gradients([ours], [x, h, *weights]), gradients([theirs], [x, h, *weights])
    )


def test_lstm_cell_with_a_projected_state_is_one_step_of_nn_lstm_with_proj_size():
    torch.manual_seed(0)
    reference = nn.LSTM(3, 5, proj_size=2).double()
    w_ih, w_hh, b_ih, b_hh, w_hr = reference.parameters()
    assert w_hh.shape == (20, 2) and w_hr.shape == (2, 5)
    x, h, c = randn(4, 3), randn(4, 2, seed=1), randn(4, 5, seed=2)
    h_new, c_new = lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh)
    assert h_new.shape == (4, 5)  # the cell returns the unprojected h
    output, (h_n, c_n) = reference(x[None], (h[None], c[None]))
    torch.testing.assert_close(h_new @ w_hr.T, output[0], **TOLERANCE)
    torch.testing.assert_close(c_new, c_n[0], **TOLERANCE)


def test_gru_reset_gate_multiplies_b_hn_as_in_pytorch():
    # With the reset gate shut (r = 0), n = tanh(W_in x + b_in) whatever b_hn is: b_hn
    # sits inside r * (W_hn h + b_hn). In Cho et al.'s placement it would not.
    torch.manual_seed(0)
    cell = nn.GRUCell(3, 4).double()
    x, h = randn(2, 3), randn(2, 4, seed=1)
    with torch.no_grad():
        cell.bias_hh[:4] = -1e4  # b_hr: r = sigmoid(-1e4) = 0
        first = gru_cell(x, h, *cell.parameters())
        cell.bias_hh[8:] += 5.0  # b_hn
        second = gru_cell(x, h, *cell.parameters())
    torch.testing.assert_close(first, second, rtol=0, atol=1e-15)


def test_the_two_lstm_biases_only_matter_through_their_sum():
    torch.manual_seed(0)
    x, h, c = randn(2, 3), randn(2, 4, seed=1), randn(2, 4, seed=2)
    w_ih, w_hh = randn(16, 3, seed=3), randn(16, 4, seed=4)
    b_ih, b_hh = randn(16, seed=5), randn(16, seed=6)
    split = lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh)
    summed = lstm_cell(x, h, c, w_ih, w_hh, b_ih + b_hh)
    assert_all_close(split, summed)


# ---------------------------------------------------------------- the layers


def copied(ours: nn.Module, reference_class, **options):
    """`reference_class(**options)` holding `ours`'s weights, in float64."""
    reference = reference_class(**options).double()
    reference.load_state_dict(ours.state_dict())
    return reference


LSTM_CASES = [
    dict(num_layers=layers, bidirectional=bi, proj_size=proj, batch_first=bf, bias=b)
    for layers in (1, 3)
    for bi in (False, True)
    for proj in (0, 2)
    for bf in (False, True)
    for b in (True, False)
]


@pytest.mark.parametrize(
    "options", LSTM_CASES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items())
)
def test_lstm_layer_matches_nn_lstm_outputs_states_and_every_gradient(options):
    options = dict(input_size=3, hidden_size=4, **options)
    torch.manual_seed(0)
    ours = LSTM(**options).double()
    reference = copied(ours, nn.LSTM, **options)
    stacked = options["num_layers"] * (2 if options["bidirectional"] else 1)
    width = options["proj_size"] or 4
    seq, batch = 5, 3
    x = randn(batch, seq, 3) if options["batch_first"] else randn(seq, batch, 3)
    h0, c0 = randn(stacked, batch, width, seed=1), randn(stacked, batch, 4, seed=2)
    out, (h_n, c_n) = ours(x, (h0, c0))
    ref_out, (ref_h, ref_c) = reference(x, (h0, c0))
    assert_all_close([out, h_n, c_n], [ref_out, ref_h, ref_c])
    names = [name for name, _ in reference.named_parameters()]
    assert names == [name for name, _ in ours.named_parameters()]
    ours_grads = gradients([out, h_n, c_n], [x, h0, c0, *ours.parameters()])
    ref_grads = gradients([ref_out, ref_h, ref_c], [x, h0, c0, *reference.parameters()])
    assert all(g is not None for g in ours_grads)
    assert_all_close(ours_grads, ref_grads)


GRU_CASES = [
    dict(num_layers=layers, bidirectional=bi, batch_first=bf, bias=b)
    for layers in (1, 3)
    for bi in (False, True)
    for bf in (False, True)
    for b in (True, False)
]


@pytest.mark.parametrize(
    "options", GRU_CASES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items())
)
def test_gru_layer_matches_nn_gru_outputs_state_and_every_gradient(options):
    options = dict(input_size=3, hidden_size=4, **options)
    torch.manual_seed(0)
    ours = GRU(**options).double()
    reference = copied(ours, nn.GRU, **options)
    stacked = options["num_layers"] * (2 if options["bidirectional"] else 1)
    x = randn(3, 5, 3) if options["batch_first"] else randn(5, 3, 3)
    h0 = randn(stacked, 3, 4, seed=1)
    out, h_n = ours(x, h0)
    ref_out, ref_h = reference(x, h0)
    assert_all_close([out, h_n], [ref_out, ref_h])
    ours_grads = gradients([out, h_n], [x, h0, *ours.parameters()])
    ref_grads = gradients([ref_out, ref_h], [x, h0, *reference.parameters()])
    assert_all_close(ours_grads, ref_grads)


def test_default_states_are_zeros_and_unbatched_input_matches_torch():
    torch.manual_seed(0)
    ours = LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2).double()
    reference = copied(
        ours,
        nn.LSTM,
        input_size=3,
        hidden_size=4,
        num_layers=2,
        bidirectional=True,
        proj_size=2,
    )
    x = randn(6, 3)  # one sequence, no batch dimension
    out, (h_n, c_n) = ours(x)
    ref_out, (ref_h, ref_c) = reference(x)
    assert out.shape == (6, 4) and h_n.shape == (4, 2) and c_n.shape == (4, 4)
    assert_all_close([out, h_n, c_n], [ref_out, ref_h, ref_c])
    h0, c0 = randn(4, 2, seed=1), randn(4, 4, seed=2)
    assert_all_close(ours(x, (h0, c0))[1], reference(x, (h0, c0))[1])
    gru = GRU(3, 4).double()
    ref_gru = copied(gru, nn.GRU, input_size=3, hidden_size=4)
    assert_all_close(gru(x), ref_gru(x))


def test_same_seed_draws_the_same_weights_and_state_dicts_move_both_ways():
    torch.manual_seed(7)
    ours = LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2)
    torch.manual_seed(7)
    reference = nn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2)
    assert list(ours.state_dict()) == list(reference.state_dict())
    for (name, a), b in zip(ours.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name
    # saved to bytes and loaded into a fresh twin, in either direction
    buffer = io.BytesIO()
    torch.save(reference.state_dict(), buffer)
    buffer.seek(0)
    fresh = LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2)
    fresh.load_state_dict(torch.load(buffer))
    x = torch.randn(4, 2, 3)
    torch.testing.assert_close(fresh(x)[0], reference(x)[0], rtol=1e-6, atol=1e-6)
    torch.manual_seed(7)
    assert list(GRU(3, 5, 2).state_dict()) == list(nn.GRU(3, 5, 2).state_dict())


# ---------------------------------------------------------------- packed sequences


@settings(max_examples=30)  # each example runs every sequence alone as well
@given(
    lengths=st.lists(st.integers(1, 7), min_size=1, max_size=5),
    with_states=st.booleans(),
    kind=st.sampled_from(["lstm", "gru"]),
)
def test_packed_sequences_match_torch_and_each_sequence_run_alone(
    lengths, with_states, kind
):
    torch.manual_seed(len(lengths))
    batch, seq = len(lengths), max(lengths)
    if kind == "lstm":
        options = dict(input_size=3, hidden_size=4, num_layers=2, proj_size=2)
        ours = LSTM(**options, bidirectional=True, batch_first=True).double()
        reference = copied(
            ours, nn.LSTM, **options, bidirectional=True, batch_first=True
        )
        widths = (2, 4)
    else:
        options = dict(input_size=3, hidden_size=4, num_layers=2)
        ours = GRU(**options, bidirectional=True, batch_first=True).double()
        reference = copied(
            ours, nn.GRU, **options, bidirectional=True, batch_first=True
        )
        widths = (4,)
    x = randn(batch, seq, 3)
    states = [randn(4, batch, w, seed=1 + k) for k, w in enumerate(widths)]
    hx = None if not with_states else tuple(states) if kind == "lstm" else states[0]
    packed = pack_padded_sequence(
        x, torch.tensor(lengths), batch_first=True, enforce_sorted=False
    )
    out, final = ours(packed, hx)
    ref_out, ref_final = reference(packed, hx)
    final = final if kind == "lstm" else (final,)
    ref_final = ref_final if kind == "lstm" else (ref_final,)
    assert torch.equal(out.batch_sizes, ref_out.batch_sizes)
    assert torch.equal(out.unsorted_indices, ref_out.unsorted_indices)
    assert_all_close([out.data, *final], [ref_out.data, *ref_final])
    inputs = [x, *(states if with_states else []), *ours.parameters()]
    ref_inputs = [x, *(states if with_states else []), *reference.parameters()]
    assert_all_close(
        gradients([out.data, *final], inputs),
        gradients([ref_out.data, *ref_final], ref_inputs),
    )
    # the padded outputs at valid positions and the final states are those of each
    # sequence run alone, unpadded
    padded, _ = pad_packed_sequence(out, batch_first=True)
    for b, length in enumerate(lengths):
        alone_hx = None
        if with_states:
            alone = tuple(s[:, b : b + 1] for s in states)
            alone_hx = alone if kind == "lstm" else alone[0]
        alone_out, alone_final = ours(x[b : b + 1, :length], alone_hx)
        alone_final = alone_final if kind == "lstm" else (alone_final,)
        torch.testing.assert_close(padded[b, :length], alone_out[0], **TOLERANCE)
        assert_all_close([s[:, b] for s in final], [s[:, 0] for s in alone_final])


# ---------------------------------------------------------------- unusual inputs


def test_a_long_sequence_matches_torch_without_recursion():
    torch.manual_seed(0)
    ours = LSTM(2, 3).double()
    reference = copied(ours, nn.LSTM, input_size=2, hidden_size=3)
    x = randn(2000, 2, 2)
    out, (h_n, c_n) = ours(x)
    ref_out, (ref_h, ref_c) = reference(x)
    assert_all_close([out, h_n, c_n], [ref_out, ref_h, ref_c])
    ours_grads = gradients([out, h_n, c_n], [x, *ours.parameters()])
    ref_grads = gradients([ref_out, ref_h, ref_c], [x, *reference.parameters()])
    assert_all_close(ours_grads, ref_grads, {"rtol": 1e-9, "atol": 1e-9})


def test_saturated_gates_stay_finite_and_match_torch():
    torch.manual_seed(0)
    ours = LSTM(3, 4, bidirectional=True).double()
    reference = copied(ours, nn.LSTM, input_size=3, hidden_size=4, bidirectional=True)
    x = randn(6, 2, 3, scale=1e4)  # every gate pinned at 0, 1 or ±1
    out, (h_n, c_n) = ours(x)
    ref_out, (ref_h, ref_c) = reference(x)
    assert torch.isfinite(out).all() and torch.isfinite(c_n).all()
    assert_all_close([out, h_n, c_n], [ref_out, ref_h, ref_c])
    ours_grads = gradients([out, c_n], [x, *ours.parameters()])
    ref_grads = gradients([ref_out, ref_c], [x, *reference.parameters()])
    assert all(torch.isfinite(g).all() for g in ours_grads)
    assert_all_close(ours_grads, ref_grads)


def test_dropout_between_layers_matches_torch_in_both_modes():
    torch.manual_seed(0)
    options = dict(input_size=3, hidden_size=4, num_layers=3)
    ours = LSTM(**options, dropout=1.0).double()
    reference = copied(ours, nn.LSTM, **options, dropout=1.0)
    x = randn(5, 2, 3)
    # p = 1 zeroes every input of layers 2 and 3: deterministic in training mode too
    assert_all_close(ours(x)[1], reference(x)[1])
    # and never the last layer's output, which torch leaves undropped
    torch.testing.assert_close(ours(x)[0], reference(x)[0], **TOLERANCE)
    x_free = torch.zeros_like(x)
    last_layer_alone = ours(x_free)[1][0][2]
    torch.testing.assert_close(ours(x)[1][0][2], last_layer_alone, **TOLERANCE)
    ours.eval()
    reference.eval()
    assert_all_close(ours(x)[1], reference(x)[1])
    half = LSTM(**options, dropout=0.5).double()
    half.load_state_dict(ours.state_dict())
    assert not torch.equal(half(x)[0], half.eval()(x)[0])


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, error, match",
    [
        (
            lambda: lstm_cell(
                torch.ones(2, 8),
                torch.ones(2, 4),
                torch.ones(2, 4),
                torch.ones(8, 16),
                torch.ones(16, 4),
            ),  # transposed
            ValueError,
            r"lstm_cell: x must have shape \[2, 16\], got \[2, 8\] \(x is \[2, 8\], "
            r"weight_ih \[8, 16\]: 4 gates of 2 units\)",
        ),
        (
            lambda: lstm_cell(
                torch.ones(2, 3),
                torch.ones(2, 4),
                torch.ones(2, 5),
                torch.ones(16, 3),
                torch.ones(16, 4),
            ),
            ValueError,
            r"lstm_cell: c must have shape \[2, 4\], got \[2, 5\]",
        ),
        (
            lambda: lstm_cell(
                torch.ones(2, 3),
                torch.ones(2, 4),
                torch.ones(2, 4),
                torch.ones(15, 3),
                torch.ones(15, 4),
            ),
            ValueError,
            r"weight_ih must be \[4\*hidden, input\], got \[15, 3\]",
        ),
        (
            lambda: lstm_cell(
                torch.ones(2, 3),
                torch.ones(2, 4),
                torch.ones(2, 4),
                torch.ones(16, 3),
                torch.ones(16, 4),
                torch.ones(12),
            ),
            ValueError,
            r"bias_ih must have shape \[16\], got \[12\]",
        ),
        (
            lambda: lstm_cell(
                torch.ones(2, 3),
                torch.ones(2, 4).double(),
                torch.ones(2, 4),
                torch.ones(16, 3),
                torch.ones(16, 4),
            ),
            TypeError,
            "lstm_cell: h must be a tensor of x's dtype torch.float32, "
            "got torch.float64",
        ),
        (
            lambda: gru_cell(
                torch.ones(2, 3, dtype=torch.long),
                torch.ones(2, 4),
                torch.ones(12, 3),
                torch.ones(12, 4),
            ),
            TypeError,
            "gru_cell: x must be a floating-point tensor, got torch.int64",
        ),
        (
            lambda: gru_cell(
                torch.ones(2, 3), torch.ones(2, 2), torch.ones(12, 3), torch.ones(12, 2)
            ),
            ValueError,
            r"gru_cell: weight_hh must have shape \[12, 4\], got \[12, 2\]",
        ),
        (
            lambda: gru_cell(
                [[1.0]], torch.ones(1, 1), torch.ones(3, 1), torch.ones(3, 1)
            ),
            TypeError,
            "gru_cell: x must be a floating-point tensor, got list",
        ),
        (lambda: LSTM(3, 4)(torch.ones(5, 2, 6)), ValueError, "input_size=3 features"),
        (lambda: GRU(3, 4)(torch.ones(0, 2, 3)), ValueError, "GRU: input has no time"),
        (
            lambda: LSTM(3, 4)(torch.ones(1, 5, 2, 3)),
            ValueError,
            r"LSTM: input must be \[seq, batch, features\]",
        ),
        (
            lambda: LSTM(3, 4)(torch.ones(5, 2, 3).double()),
            TypeError,
            "input must have the parameters' dtype torch.float32, got torch.float64",
        ),
        (
            lambda: LSTM(3, 4, 2)(
                torch.ones(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(2, 2, 4))
            ),
            ValueError,
            r"LSTM: h_0 must have shape \[2, 2, 4\]",
        ),
        (
            lambda: LSTM(3, 4, proj_size=2)(
                torch.ones(5, 2, 3), (torch.zeros(1, 2, 2), torch.zeros(1, 2, 2))
            ),
            ValueError,
            r"LSTM: c_0 must have shape \[1, 2, 4\]",
        ),
        (
            lambda: LSTM(3, 4)(torch.ones(5, 2, 3), torch.zeros(1, 2, 4)),
            TypeError,
            r"LSTM: hx must be a tuple \(h_0, c_0\), got Tensor",
        ),
        (
            lambda: GRU(3, 4)(torch.ones(5, 2, 3), (torch.zeros(1, 2, 4),)),
            TypeError,
            "GRU: hx must be a tensor h_0, got tuple",
        ),
        (lambda: LSTM(3, 4, proj_size=4), ValueError, r"proj_size must be an int in"),
        (lambda: LSTM(3, 0), ValueError, "hidden_size must be a positive int, got 0"),
        (
            lambda: GRU(3, 4, num_layers=1.5),
            ValueError,
            "num_layers must be a positive",
        ),
        (lambda: LSTM(3, 4, dropout=1.5), ValueError, r"dropout must lie in \[0, 1\]"),
        (lambda: AddingModel("transformer"), ValueError, "kind must be 'lstm', 'gru'"),
        (lambda: adding_problem(4, 1), ValueError, "length must be an int >= 2, got 1"),
    ],
)
def test_bad_input_raises_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------- data, example, demo


def test_adding_problem_marks_one_value_in_each_half_and_sums_them():
    x, y = adding_problem(200, 9, torch.Generator().manual_seed(0))
    assert x.shape == (200, 9, 2) and y.shape == (200,)
    markers = x[..., 1]
    assert torch.equal(markers.sum(1), torch.full((200,), 2.0))
    assert torch.equal(markers[:, :4].sum(1), torch.ones(200))  # first half: 9 // 2
    torch.testing.assert_close(y, (x[..., 0] * markers).sum(1))
    assert 0.0 <= x[..., 0].min() and x[..., 0].max() < 1.0


def test_gate_trace_recomputes_the_gates_the_layer_used():
    torch.manual_seed(0)
    layer = LSTM(2, 5).double()
    x = randn(7, 2)
    trace = gate_trace(layer, x.detach())
    output, (h_n, c_n) = layer(x)
    torch.testing.assert_close(trace["o"] * torch.tanh(trace["c"]), output.detach())
    previous = torch.cat([torch.zeros(1, 5, dtype=DOUBLE), trace["c"][:-1]])
    torch.testing.assert_close(
        trace["f"] * previous + trace["i"] * trace["g"], trace["c"]
    )
    torch.testing.assert_close(trace["c"][-1], c_n[0].detach())


def test_moving_average_is_the_mean_of_the_last_window():
    averaged = moving_average([1.0, 2.0, 3.0, 4.0, 5.0], 2)
    torch.testing.assert_close(averaged, torch.tensor([1.0, 1.5, 2.5, 3.5, 4.5]))


def test_example_and_dataflow_describe_one_cell_step():
    fn, args = example()
    h_new, c_new = fn(*args)
    assert h_new.shape == c_new.shape == (3, 4)
    nodes, edges = dataflow((h_new, c_new))
    names = {node for node, _ in nodes}
    assert {"x", "h", "c", "i", "f", "g", "o", "c_new", "h_new"} <= names
    assert ("gates", "chunk", "[3, 16]") in edges
    assert all(source in names and target in names for source, target, _ in edges)


def test_demo_learns_and_matches_nn_lstm(tmp_path, capsys):
    # The short run's test MSE over the stored seeds is its expected band.
    metric, args, low, high = short_band("annotated/sequence/lstm.py")
    metrics = main([*args, "--out", str(tmp_path)])
    assert low <= metrics[metric] <= high  # the short run's band over stored seeds
    assert abs(metrics["mse/baseline"] - 1 / 6) < 0.03
    for kind in ("lstm", "gru", "rnn"):
        assert metrics[f"mse/{kind}"] < 0.5  # from about 1 at the start
    assert metrics["gap/nn.LSTM"] < 1e-5
    assert "test MSE lstm" in capsys.readouterr().out
    for name in ("training.png", "gates.png"):
        assert (tmp_path / name).stat().st_size > 1000


# ---------------------------------------------------------------- benchmarks

SEQ, BATCH, FEATURES, HIDDEN = 50, 32, 32, 64


def layer_step(layer, x):
    def step():
        x.grad = None
        layer.zero_grad()
        output, (h_n, c_n) = layer(x)
        (output.sum() + c_n.sum()).backward()

    return step


def bench_layers():
    torch.manual_seed(0)
    ours = LSTM(FEATURES, HIDDEN)
    reference = nn.LSTM(FEATURES, HIDDEN)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(SEQ, BATCH, FEATURES, requires_grad=True)
    return ours, reference, x


@pytest.mark.benchmark(group="LSTM layer forward+backward, 50 steps, batch 32, 32→64")
def test_bench_lstm_layer_ours(benchmark):
    benchmark.extra_info["label"] = "our LSTM (lstm_cell in a Python loop)"
    ours, _, x = bench_layers()
    benchmark(layer_step(ours, x))


@pytest.mark.benchmark(group="LSTM layer forward+backward, 50 steps, batch 32, 32→64")
def test_bench_lstm_layer_torch(benchmark):
    benchmark.extra_info["label"] = "torch.nn.LSTM"
    benchmark.extra_info["baseline"] = True
    _, reference, x = bench_layers()
    benchmark(layer_step(reference, x))


def cell_step(cell, args):
    def step():
        for tensor in args:
            tensor.grad = None
        h, c = cell(*args)
        (h.sum() + c.sum()).backward()

    return step


def bench_cell_args():
    fn, args = example()
    return [tensor.clone().requires_grad_() for tensor in args]


@pytest.mark.benchmark(group="one LSTM cell step forward+backward (the example)")
def test_bench_cell_ours(benchmark):
    benchmark.extra_info["label"] = "our lstm_cell"
    benchmark(cell_step(lstm_cell, bench_cell_args()))


@pytest.mark.benchmark(group="one LSTM cell step forward+backward (the example)")
def test_bench_cell_torch(benchmark):
    benchmark.extra_info["label"] = "torch.lstm_cell"
    benchmark.extra_info["baseline"] = True
    x, h, c, *weights = bench_cell_args()

    def torch_cell(x, h, c, *weights):
        return torch.lstm_cell(x, (h, c), *weights)

    benchmark(cell_step(torch_cell, [x, h, c, *weights]))


def test_an_unknown_model_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        main(["--models", "lstm,mamba"])
    assert (
        "argument --models: expected comma-separated names from lstm, gru, rnn, "
        "got 'mamba' in 'lstm,mamba'"
    ) in capsys.readouterr().err
