"""Verified against torch.nn.functional.scaled_dot_product_attention with scale=1.0 in
float64 (dot and general scores, outputs and gradients to 1e-12) and against the
additive score written out position by position.

Also checked, under hypothesis: the weights sum to 1 over the real positions and are
exactly 0 on padding, also for scores of ±1e4; a padded batch gives each input the
weights, context and logits it gets alone (1e-12); the previous lesson's decoders run
the attention model unchanged (width-1 beam = greedy, beam scores = teacher-forced
log-probabilities); a state dict round trip; the bad-input errors; and a short demo
run on which attention beats no attention on the longest inputs.
"""

import random

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from annotated.sequence.attention import (
    SCORES,
    Attention,
    AttentionSeq2Seq,
    example,
    main,
    masked_softmax,
)
from annotated.sequence.seq2seq import (
    Config,
    ReverseDigits,
    beam_search,
    greedy_decode,
    make_batch,
    sequence_log_probs,
    train,
)

TOLERANCE = dict(rtol=0, atol=1e-12)


pytestmark = pytest.mark.usefixtures("one_thread")


def inputs(lengths: list[int], size: int = 6, seed: int = 0, scale: float = 1.0):
    """A query `[B, size]`, annotations `[B, S, size]` zero on padding, and the mask,
    for inputs of `lengths`."""
    generator = torch.Generator().manual_seed(seed)
    positions = max(lengths)
    mask = torch.arange(positions)[None] < torch.tensor(lengths)[:, None]
    query = scale * torch.randn(len(lengths), size, generator=generator).double()
    annotations = torch.randn(len(lengths), positions, size, generator=generator)
    annotations = scale * annotations.double() * mask[..., None]
    return query, annotations, mask


def attention64(score: str, size: int = 6, seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    return Attention(score, size).double()


def sdpa(query, keys, values, mask):
    """PyTorch's attention for one query per row: `[B, D]` in, `[B, D_v]` out."""
    return F.scaled_dot_product_attention(
        query[:, None], keys, values, attn_mask=mask[:, None], scale=1.0
    )[:, 0]


@given(
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=5),
    scale=st.sampled_from([1e-3, 1.0, 1e2, 1e4]),
    score=st.sampled_from(SCORES),
)
def test_weights_sum_to_one_and_are_exactly_zero_on_padding(lengths, scale, score):
    query, annotations, mask = inputs(lengths, scale=scale)
    attention = attention64(score)
    keys = attention.project_keys(annotations)
    context, weights = attention(query, keys, annotations, mask)
    assert torch.isfinite(context).all() and torch.isfinite(weights).all()
    assert (weights[~mask] == 0).all()  # exactly, not approximately
    assert (weights >= 0).all()
    torch.testing.assert_close(
        weights.sum(dim=-1), torch.ones(len(lengths), dtype=torch.float64), **TOLERANCE
    )


def test_masked_softmax_matches_softmax_over_the_real_positions():
    scores = torch.randn(3, 7, dtype=torch.float64)
    mask = torch.arange(7)[None] < torch.tensor([7, 4, 1])[:, None]
    weights = masked_softmax(scores, mask)
    for row, n in enumerate([7, 4, 1]):
        torch.testing.assert_close(weights[row, :n], scores[row, :n].softmax(0))
        assert (weights[row, n:] == 0).all()


@pytest.mark.parametrize("score", ["dot", "general"])
def test_dot_and_general_equal_scaled_dot_product_attention(score):
    """Dot attention is SDPA with scale 1 on the annotations; general attention is
    SDPA with scale 1 on the projected keys. Outputs and all gradients agree."""
    query, annotations, mask = inputs([5, 3, 1, 5], size=8, seed=1)
    attention = attention64(score, size=8)
    query.requires_grad_()
    annotations.requires_grad_()
    keys = attention.project_keys(annotations)
    ours, _ = attention(query, keys, annotations, mask)
    theirs = sdpa(query, keys, annotations, mask)
    torch.testing.assert_close(ours, theirs, **TOLERANCE)
    upstream = torch.randn_like(ours)
    leaves = [query, annotations, *attention.parameters()]
    got = torch.autograd.grad(ours, leaves, upstream, retain_graph=True)
    want = torch.autograd.grad(theirs, leaves, upstream)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOLERANCE)


def test_dot_weights_are_the_softmax_of_plain_dot_products():
    query, annotations, mask = inputs([4, 2], size=5, seed=2)
    _, weights = attention64("dot", size=5)(query, annotations, annotations, mask)
    for row, n in enumerate([4, 2]):
        scores = annotations[row, :n] @ query[row]
        torch.testing.assert_close(weights[row, :n], scores.softmax(0), **TOLERANCE)


def test_additive_equals_the_formula_position_by_position():
    """$e_j = v^T \\tanh(W s + U h_j)$ written out for each $j$ in float64."""
    query, annotations, mask = inputs([6, 2, 4], size=5, seed=3)
    attention = attention64("additive", size=5)
    keys = attention.project_keys(annotations)
    context, weights = attention(query, keys, annotations, mask)
    W = attention.query_layer.weight
    U = attention.key_layer.weight
    v = attention.energy.weight[0]
    for row, n in enumerate([6, 2, 4]):
        scores = torch.stack(
            [v @ torch.tanh(W @ query[row] + U @ annotations[row, j]) for j in range(n)]
        )
        alpha = scores.softmax(0)
        torch.testing.assert_close(weights[row, :n], alpha, **TOLERANCE)
        torch.testing.assert_close(context[row], alpha @ annotations[row, :n])


@pytest.mark.parametrize("score", SCORES)
def test_masked_batch_equals_each_input_alone(score):
    lengths = [5, 2, 1, 4]
    query, annotations, mask = inputs(lengths, seed=4)
    attention = attention64(score)
    keys = attention.project_keys(annotations)
    context, weights = attention(query, keys, annotations, mask)
    for row, n in enumerate(lengths):
        alone = annotations[row : row + 1, :n]
        one_mask = torch.ones(1, n, dtype=torch.bool)
        c, w = attention(
            query[row : row + 1], attention.project_keys(alone), alone, one_mask
        )
        torch.testing.assert_close(context[row], c[0], **TOLERANCE)
        torch.testing.assert_close(weights[row, :n], w[0], **TOLERANCE)


SOURCES = ["4021", "98765432", "31", "5", "777000111"]


def model64(score: str = "additive", seed: int = 0) -> AttentionSeq2Seq:
    torch.manual_seed(seed)
    config = Config(embed_dim=8, hidden_size=8)
    return AttentionSeq2Seq(config, score).double().eval()


def batch_of(sources):
    return make_batch(sources, [s[::-1] for s in sources])


@pytest.mark.parametrize("score", SCORES)
def test_model_padded_batch_equals_each_input_alone(score):
    model = model64(score)
    batch = batch_of(SOURCES)
    logits, weights = model.teacher_forced(
        batch.source, batch.source_lengths, batch.target_in
    )
    for row, text in enumerate(SOURCES):
        alone = batch_of([text])
        one_logits, one_weights = model.teacher_forced(
            alone.source, alone.source_lengths, alone.target_in
        )
        n = len(text)
        torch.testing.assert_close(logits[row, : n + 1], one_logits[0], **TOLERANCE)
        torch.testing.assert_close(
            weights[row, : n + 1, :n], one_weights[0], **TOLERANCE
        )
        assert (weights[row, :, n:] == 0).all()
    torch.testing.assert_close(
        weights.sum(dim=-1), torch.ones(weights.shape[:2], dtype=torch.float64)
    )


@pytest.fixture(scope="module")
def half_trained() -> AttentionSeq2Seq:
    """Trained for 30 steps, then in float64: outputs that depend on the input."""
    model = model64("general").float().train()
    train(model, ReverseDigits(1, 6), 30, batch_size=32, lr=1e-2, desc="fixture")
    return model.double().eval()


def test_seq2seq_decoders_run_the_attention_model(half_trained):
    sources = ReverseDigits(1, 9).sample(24, random.Random(0))
    batch = batch_of(sources)
    args = (half_trained, batch.source, batch.source_lengths)
    greedy = greedy_decode(*args, max_length=12)
    assert beam_search(*args, beam_size=1, max_length=12) == greedy
    found = beam_search(*args, beam_size=3, max_length=12)
    scores = torch.tensor([h.score for h in found], dtype=torch.float64)
    torch.testing.assert_close(scores, sequence_log_probs(*args, found), **TOLERANCE)
    # The logits of the teacher-forced pass equal those of the decoding steps.
    state = half_trained.start(batch.source, batch.source_lengths)
    logits = half_trained(batch.source, batch.source_lengths, batch.target_in)
    for t in range(batch.target_in.shape[1]):
        step_logits, state = half_trained.step(batch.target_in[:, t], state)
        torch.testing.assert_close(step_logits, logits[:, t], **TOLERANCE)


def test_long_inputs():
    model = model64("dot")
    text = "".join(random.Random(0).choices("0123456789", k=1000))
    batch = batch_of([text, "7"])
    out = greedy_decode(model, batch.source, batch.source_lengths, max_length=4)
    assert len(out) == 2
    _, weights = model.teacher_forced(
        batch.source, batch.source_lengths, batch.target_in[:, :3]
    )
    assert (weights[1, :, 1:] == 0).all() and torch.isfinite(weights).all()


def test_state_dict_round_trip(half_trained, tmp_path):
    torch.save(half_trained.state_dict(), tmp_path / "attention.pt")
    other = AttentionSeq2Seq(half_trained.config, "general").double().eval()
    other.load_state_dict(torch.load(tmp_path / "attention.pt"))
    batch = batch_of(SOURCES)
    args = (batch.source, batch.source_lengths)
    assert beam_search(half_trained, *args, 3, 10) == beam_search(other, *args, 3, 10)


def test_bad_inputs_raise_naming_the_argument():
    query, annotations, mask = inputs([3, 2])
    attention = attention64("dot")
    with pytest.raises(ValueError, match="score must be one of"):
        Attention("cosine", 4)
    with pytest.raises(ValueError, match="query must be"):
        attention(query[:1], annotations, annotations, mask)
    with pytest.raises(ValueError, match="keys .* and values .* must agree"):
        attention(query, annotations[:, :2], annotations, mask)
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        attention(query, annotations, annotations, mask.double())
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        attention(query, annotations, annotations, mask[:, :2])
    with pytest.raises(ValueError, match="every row needs at least one True"):
        attention(query, annotations, annotations, mask & False)
    with pytest.raises(ValueError, match="lengths must lie"):
        model64().start(batch_of(["12"]).source, torch.tensor([3]))


def test_example_runs():
    fn, args = example()
    context, weights = fn(*args)
    assert context.shape == (3, 8) and weights.shape == (3, 5)


def test_demo_attention_beats_no_attention_on_long_inputs(tmp_path):
    metrics = main(
        [
            "--steps", "120",
            "--baseline-steps", "120",
            "--batch-size", "32",
            "--lr", "0.01",
            "--min-length", "3",
            "--max-length", "10",
            "--test-per-length", "20",
            "--hidden-size", "32",
            "--device", "cpu",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    assert metrics["longest/additive"] > metrics["longest/no attention"] + 0.3
    assert metrics["accuracy/additive"] > metrics["accuracy/no attention"]
    assert (tmp_path / "accuracy.png").exists() and (
        tmp_path / "alignment.png"
    ).exists()


# ---------------------------------------------------------------- benchmarks


def step_inputs():
    """One decoder step's read: 64 queries over 20 positions of size 128."""
    query, annotations, mask = inputs([20, 15, 10, 5] * 16, size=128, seed=5)
    return query.float(), annotations.float(), mask


@pytest.mark.benchmark(group="one attention read, 64 × 20 positions, size 128")
def test_bench_sdpa(benchmark):
    benchmark.extra_info["label"] = "F.scaled_dot_product_attention"
    benchmark.extra_info["baseline"] = True
    query, annotations, mask = step_inputs()
    benchmark(sdpa, query, annotations, annotations, mask)


@pytest.mark.benchmark(group="one attention read, 64 × 20 positions, size 128")
def test_bench_dot(benchmark):
    benchmark.extra_info["label"] = "our masked dot attention"
    query, annotations, mask = step_inputs()
    attention = Attention("dot", 128)
    with torch.no_grad():
        benchmark(attention, query, annotations, annotations, mask)


@pytest.mark.benchmark(group="one attention read, 64 × 20 positions, size 128")
def test_bench_additive(benchmark):
    benchmark.extra_info["label"] = "our additive attention (keys precomputed)"
    query, annotations, mask = step_inputs()
    attention = Attention("additive", 128)
    with torch.no_grad():
        keys = attention.project_keys(annotations)
        benchmark(attention, query, keys, annotations, mask)
