"""Verified against exhaustive search and teacher-forced rescoring in float64: beam
scores equal the recomputed sum of token log-probabilities to 1e-12, a width-1 beam
equals greedy decoding exactly, and a padded batch decodes each string as it does
alone (to 1e-10).

Also checked: step-by-step decoding equals the one-call teacher-forced forward, the
packed encoder's final states are each string's own, a padded batch's logits equal
each string's alone for random batches (hypothesis, 1e-12), the loss counts only real
tokens, a beam as wide as every prefix finds the exhaustive optimum, long inputs, a
state dict round trip, the bad-input errors, and a short demo run on which accuracy
falls with length.
"""

import itertools
import math
import random

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from annotated.sequence.seq2seq import (
    BOS,
    EOS,
    PAD,
    VOCAB,
    Config,
    Hypothesis,
    ReverseDigits,
    Seq2Seq,
    beam_search,
    check_source,
    decode,
    encode,
    example,
    exact_match_by_length,
    greedy_decode,
    main,
    make_batch,
    sequence_log_probs,
    teacher_forcing_loss,
    train,
)
from tools.literate.figures import short_band


pytestmark = pytest.mark.usefixtures("one_thread")


def model64(seed: int = 0, hidden_size: int = 16) -> Seq2Seq:
    """An untrained model in float64, in eval mode."""
    torch.manual_seed(seed)
    return Seq2Seq(Config(embed_dim=8, hidden_size=hidden_size)).double().eval()


@pytest.fixture(scope="module")
def half_trained() -> Seq2Seq:
    """A model trained for 40 steps, then in float64: its outputs depend on the input
    and end at different lengths, but it is far from certain, so greedy and beam
    search disagree. An untrained model's outputs hardly depend on the input."""
    model = model64(0).float().train()
    train(model, ReverseDigits(1, 6), 40, batch_size=32, lr=1e-2, desc="fixture")
    return model.double().eval()


def batch_of(sources: list[str]):
    return make_batch(sources, [s[::-1] for s in sources])


SOURCES = ["4021", "98765432", "31", "5", "777000111"]
TIGHT = dict(rtol=0, atol=1e-12)


def test_vocabulary_round_trip_and_markers():
    assert len(VOCAB) == 13 and (PAD, BOS, EOS) == (0, 1, 2)
    assert encode("409") == [7, 3, 12]
    assert decode(encode("0123456789")) == "0123456789"
    assert decode([BOS, 4, 5, EOS, 6]) == "12"  # stops at <eos>, skips <bos>
    assert decode([PAD, 4, PAD]) == "1"


def test_task_targets_held_out_and_exclusion():
    task = ReverseDigits(2, 5)
    assert task.target("40213") == "31204"
    held = task.held_out(per_length=30, seed=3)
    assert list(held) == [2, 3, 4, 5]
    for length, strings in held.items():
        assert len(set(strings)) == 30 and all(len(s) == length for s in strings)
    assert task.held_out(per_length=30, seed=3) == held  # deterministic
    # Exclude all but one 1-digit string: sampling can only return that one.
    tiny = ReverseDigits(1, 1)
    exclude = frozenset("012345678")
    assert set(tiny.sample(20, random.Random(0), exclude)) == {"9"}
    lengths = {len(s) for s in task.sample(400, random.Random(0))}
    assert lengths == {2, 3, 4, 5}


def test_make_batch_shifts_targets_and_pads():
    batch = make_batch(["12", "345"], ["21", "543"])
    one, two, three, four, five = encode("12345")
    assert batch.source.tolist() == [[one, two, PAD], [three, four, five]]
    assert batch.source_lengths.tolist() == [2, 3]
    assert batch.target_in.tolist() == [
        [BOS, two, one, PAD],
        [BOS, five, four, three],
    ]
    assert batch.target_out.tolist() == [
        [two, one, EOS, PAD],
        [five, four, three, EOS],
    ]


def test_packed_encoder_gives_each_string_its_own_final_states():
    """The summary must be the forward state after the last real digit and the
    backward state after the first; annotations are zero on padding."""
    model = model64()
    batch = batch_of(SOURCES)
    annotations, summary = model.encoder(batch.source, batch.source_lengths)
    hidden = model.config.hidden_size
    for row, text in enumerate(SOURCES):
        alone = batch_of([text])
        ann, summ = model.encoder(alone.source, alone.source_lengths)
        n = len(text)
        torch.testing.assert_close(annotations[row, :n], ann[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(summary[row], summ[0], rtol=0, atol=1e-12)
        assert (annotations[row, n:] == 0).all()
        # The same states, read off the annotations: forward half at the last real
        # position, backward half at the first.
        torch.testing.assert_close(summ[0, :hidden], ann[0, n - 1, :hidden])
        torch.testing.assert_close(summ[0, hidden:], ann[0, 0, hidden:])
    # Without packing, the padded rows' forward state runs on through the padding.
    embedded = model.encoder.embedding(batch.source)
    _, unpacked = model.encoder.rnn(embedded)
    assert not torch.allclose(unpacked[0, 0], summary[0, :hidden])


def test_teacher_forced_forward_equals_step_by_step_decoding():
    model = model64(1)
    batch = batch_of(SOURCES)
    logits = model(batch.source, batch.source_lengths, batch.target_in)
    state = model.start(batch.source, batch.source_lengths)
    for t in range(batch.target_in.shape[1]):
        step_logits, state = model.step(batch.target_in[:, t], state)
        torch.testing.assert_close(step_logits, logits[:, t], rtol=0, atol=1e-12)


def test_loss_counts_only_real_tokens():
    """The padded batch's loss is the token-weighted mean of each string's loss
    alone."""
    model = model64(2)
    batch = batch_of(SOURCES)
    total, tokens = 0.0, 0
    for text in SOURCES:
        alone = batch_of([text])
        total += teacher_forcing_loss(model, alone) * (len(text) + 1)
        tokens += len(text) + 1
    loss = teacher_forcing_loss(model, batch)
    torch.testing.assert_close(loss, total / tokens, rtol=0, atol=1e-12)
    assert 2.0 < loss.item() < 3.2  # near ln 13 = 2.565 for an untrained model


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_of_width_one_is_greedy(half_trained, seed):
    sources = ReverseDigits(1, 9).sample(32, random.Random(seed))
    batch = batch_of(sources)
    args = (half_trained, batch.source, batch.source_lengths)
    greedy = greedy_decode(*args, max_length=3)
    beam = beam_search(*args, beam_size=1, max_length=3)
    assert greedy == beam  # tokens, ended flags and scores, exactly
    assert any(h.ended for h in greedy) and not all(h.ended for h in greedy)
    assert len({len(h.tokens) for h in greedy}) >= 2


@pytest.mark.parametrize(
    "beam_size, max_length, penalty", [(2, 6, 0.0), (3, 12, 0.0), (5, 9, 1.0)]
)
def test_beam_scores_equal_teacher_forced_log_probs(
    half_trained, beam_size, max_length, penalty
):
    sources = ReverseDigits(1, 10).sample(32, random.Random(beam_size))
    batch = batch_of(sources)
    args = (half_trained, batch.source, batch.source_lengths)
    found = beam_search(*args, beam_size, max_length, length_penalty=penalty)
    rescored = sequence_log_probs(*args, found)
    scores = torch.tensor([h.score for h in found], dtype=torch.float64)
    torch.testing.assert_close(scores, rescored, rtol=0, atol=1e-12)
    greedy = greedy_decode(*args, max_length)
    assert any(g.tokens != h.tokens for g, h in zip(greedy, found))  # it searched
    assert all(PAD not in h.tokens and BOS not in h.tokens for h in found)
    assert all(h.ended or len(h.tokens) == max_length for h in found)


def test_wide_beam_finds_the_exhaustive_optimum():
    """With a beam as wide as the number of prefixes, beam search is exhaustive: it
    must return the most probable of all outputs of up to 3 tokens."""
    model = model64(5)
    batch = batch_of(["4021", "98"])
    args = (model, batch.source, batch.source_lengths)
    writable = [EOS, *range(3, 13)]  # what a decoder may write
    candidates = []
    for length in range(0, 4):
        for tokens in itertools.product(range(3, 13), repeat=length):
            candidates.append(Hypothesis(list(tokens), 0.0, True))
            if length == 3:
                candidates.append(Hypothesis(list(tokens), 0.0, False))
    best = []
    for row in range(2):
        src = batch.source[row : row + 1].expand(len(candidates), -1)
        lengths = batch.source_lengths[row : row + 1].expand(len(candidates))
        scores = sequence_log_probs(model, src, lengths, candidates)
        best.append((candidates[scores.argmax()], scores.max().item()))
    found = beam_search(*args, beam_size=len(writable) ** 3, max_length=3)
    for hypothesis, (want, score) in zip(found, best):
        assert (hypothesis.tokens, hypothesis.ended) == (want.tokens, want.ended)
        assert hypothesis.score == pytest.approx(score, abs=1e-12)


@pytest.mark.parametrize("alpha", [3.0, 5.0])
def test_wide_beam_with_a_length_penalty_returns_the_best_normalised_output(alpha):
    """The same exhaustive beam, now ranked by GNMT's score / ((5 + |y|) / 6)^alpha
    with |y| counting <eos>: three steps write up to two digits and <eos>, or three
    digits unfinished. At 3 ending at once still wins, at 5 the long outputs do."""
    model = model64(5)
    batch = batch_of(["4021", "98"])
    candidates = []
    for length in range(0, 4):
        for tokens in itertools.product(range(3, 13), repeat=length):
            candidates.append(Hypothesis(list(tokens), 0.0, length < 3))
    sizes = torch.tensor(
        [len(h.tokens) + h.ended for h in candidates], dtype=torch.float64
    )
    found = beam_search(
        model, batch.source, batch.source_lengths, 11**3, 3, length_penalty=alpha
    )
    for row, hypothesis in enumerate(found):
        src = batch.source[row : row + 1].expand(len(candidates), -1)
        lengths = batch.source_lengths[row : row + 1].expand(len(candidates))
        scores = sequence_log_probs(model, src, lengths, candidates)
        want = candidates[(scores / ((5 + sizes) / 6) ** alpha).argmax()]
        assert (hypothesis.tokens, hypothesis.ended) == (want.tokens, want.ended)


class Scripted(torch.nn.Module):
    """A stand-in model whose next-token probabilities depend only on the step:
    row t of `probs [steps, V]`, whatever was written before."""

    def __init__(self, probs: torch.Tensor):
        super().__init__()
        self.config, self.log_probs = Config(), probs.log()

    def start(self, source, lengths):
        return (torch.zeros(len(source), 1, dtype=torch.long),)

    def step(self, previous, state):
        (t,) = state
        return self.log_probs[t[:, 0]], (t + 1,)


def test_an_eos_ranked_below_the_beam_does_not_end_a_hypothesis():
    """A beam of 2 by hand. Step 1 keeps "0" (0.6) and "1" (0.3). Step 2 (<eos> 0.5,
    "2" 0.3) ranks "0<eos>" 0.30, "02" 0.18, "1<eos>" 0.15, "12" 0.09: "1<eos>" is
    third, outside the beam, so only "0<eos>" ends. Step 3 (<eos> 0.9) ends "02" and
    "12". With a length penalty of 4, "02<eos>" (log 0.162 / (8/6)^4 = -0.576) beats
    "0<eos>" (log 0.3 / (7/6)^4 = -0.650); counting "1<eos>" would have stopped the
    row at step 2 with two finished, and returned "0"."""
    probs = torch.zeros(3, len(VOCAB), dtype=torch.float64)
    probs[0, 3:] = 0.1 / 8
    probs[0, encode("01")] = torch.tensor([0.6, 0.3], dtype=torch.float64)
    probs[1, 3:] = 0.2 / 9
    probs[1, EOS], probs[1, encode("2")[0]] = 0.5, 0.3
    probs[2, 3:], probs[2, EOS] = 0.01, 0.9
    batch = batch_of(["12"])
    (found,) = beam_search(
        Scripted(probs), batch.source, batch.source_lengths, 2, 3, length_penalty=4.0
    )
    assert (found.tokens, found.ended) == (encode("02"), True)
    assert found.score == pytest.approx(math.log(0.6 * 0.3 * 0.9), abs=1e-12)


def test_a_row_stops_once_a_beam_of_hypotheses_has_finished():
    """A beam of 2 by hand: step 1 ends "<eos>" (0.5) and keeps "0" and "1". Step 2
    (<eos> 0.5, "2" 0.45) ranks "0<eos>", "02", "1<eos>", "12": it ends "0<eos>", the
    second finished hypothesis, so the row is done (Hugging Face's
    `early_stopping=True`) and the decoder is not called a third time, though
    `max_length` allows four."""
    probs = torch.full((4, len(VOCAB)), 0.01, dtype=torch.float64)
    probs[0, EOS], probs[0, encode("0")[0]], probs[0, encode("1")[0]] = 0.5, 0.3, 0.15
    probs[1, EOS], probs[1, encode("2")[0]] = 0.5, 0.45
    probs[2:, EOS] = 0.9
    calls = []

    class Counted(Scripted):
        def step(self, previous, state):
            calls.append(len(previous))
            return super().step(previous, state)

    batch = batch_of(["7"])
    (found,) = beam_search(Counted(probs), batch.source, batch.source_lengths, 2, 4)
    assert calls == [2, 2]
    assert (found.tokens, found.ended) == ([], True)
    assert found.score == pytest.approx(math.log(0.5 / probs[0].sum()), abs=1e-12)


UNTRAINED = model64(10)


@given(
    st.lists(
        st.text(alphabet="0123456789", min_size=1, max_size=12), min_size=1, max_size=4
    )
)
def test_padded_batch_logits_equal_each_string_alone(sources):
    batch = batch_of(sources)
    logits = UNTRAINED(batch.source, batch.source_lengths, batch.target_in)
    for row, text in enumerate(sources):
        alone = batch_of([text])
        one = UNTRAINED(alone.source, alone.source_lengths, alone.target_in)
        torch.testing.assert_close(logits[row, : len(text) + 1], one[0], **TIGHT)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_padded_batch_decodes_like_each_string_alone(half_trained, beam_size):
    model = half_trained
    batch = batch_of(SOURCES)
    together = beam_search(model, batch.source, batch.source_lengths, beam_size, 12)
    for text, hypothesis in zip(SOURCES, together):
        alone = batch_of([text])
        (single,) = beam_search(
            model, alone.source, alone.source_lengths, beam_size, 12
        )
        assert single.tokens == hypothesis.tokens and single.ended == hypothesis.ended
        assert single.score == pytest.approx(hypothesis.score, abs=1e-10)


def test_long_inputs_and_extreme_lengths():
    model = model64(7)
    text = "".join(random.Random(0).choices("0123456789", k=1000))
    batch = batch_of([text, "3"])
    logits = model(batch.source, batch.source_lengths, batch.target_in)
    assert logits.shape == (2, 1001, len(VOCAB)) and torch.isfinite(logits).all()
    out = greedy_decode(model, batch.source, batch.source_lengths, max_length=3)
    assert all(len(h.tokens) <= 3 for h in out)


def test_state_dict_round_trip(half_trained, tmp_path):
    model = half_trained
    torch.save(model.state_dict(), tmp_path / "seq2seq.pt")
    other = Seq2Seq(model.config).double().eval()
    other.load_state_dict(torch.load(tmp_path / "seq2seq.pt"))
    batch = batch_of(SOURCES)
    args = (batch.source, batch.source_lengths)
    assert beam_search(model, *args, 3, 10) == beam_search(other, *args, 3, 10)


class Oracle(torch.nn.Module):
    """A stand-in model that writes the reversal of its input, then `<eos>`; with
    `ends=False` it writes one digit too many first."""

    def __init__(self, ends: bool = True):
        super().__init__()
        self.config, self.ends = Config(), ends

    def start(self, source, lengths):
        answers = torch.full((len(source), source.shape[1] + 8), EOS)
        for row, n in enumerate(lengths.tolist()):
            answers[row, :n] = source[row, :n].flip(0)
            if not self.ends:
                answers[row, n] = encode("7")[0]
        return answers, torch.zeros(len(source), 1, dtype=torch.long)

    def step(self, previous, state):
        answers, t = state
        logits = 10.0 * F.one_hot(answers.gather(1, t)[:, 0], len(VOCAB)).double()
        return logits, (answers, t + 1)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_exact_match_needs_the_whole_output(beam_size):
    task = ReverseDigits(3, 6)
    held = task.held_out(10)
    perfect = exact_match_by_length(Oracle(), task, held, beam_size)
    assert perfect == {3: 1.0, 4: 1.0, 5: 1.0, 6: 1.0}
    assert set(
        exact_match_by_length(Oracle(False), task, held, beam_size).values()
    ) == {0.0}
    assert set(exact_match_by_length(model64(9), task, held).values()) == {0.0}


def test_bad_inputs_raise_naming_the_argument():
    model = model64()
    source, lengths = batch_of(["123", "45"]).source, torch.tensor([3, 2])
    with pytest.raises(ValueError, match="non-empty digit string"):
        encode("12a")
    with pytest.raises(ValueError, match="non-empty digit string"):
        encode("")
    with pytest.raises(ValueError, match="non-empty digit string"):
        encode("١٢")  # Arabic-Indic digits: str.isdigit() would accept them
    with pytest.raises(ValueError, match="as many targets as sources"):
        make_batch(["12"], [])
    with pytest.raises(ValueError, match="source must be a 2-D tensor"):
        check_source(source[0], lengths)
    with pytest.raises(TypeError, match="int64 token ids"):
        check_source(source.float(), lengths)
    with pytest.raises(ValueError, match="lengths must be a 1-D tensor of 2"):
        check_source(source, torch.tensor([3]))
    with pytest.raises(ValueError, match="lengths must lie in 1..3"):
        check_source(source, torch.tensor([4, 2]))
    with pytest.raises(ValueError, match="source ids must lie in 0..12"):
        check_source(source + 20, lengths)
    with pytest.raises(ValueError, match="lengths must lie"):
        model(source, torch.tensor([0, 2]), source)
    with pytest.raises(ValueError, match="max_length must be an int >= 1"):
        greedy_decode(model, source, lengths, 0)
    with pytest.raises(ValueError, match="beam_size must be an int >= 1"):
        beam_search(model, source, lengths, 0, 5)
    with pytest.raises(ValueError, match="one hypothesis per row"):
        sequence_log_probs(model, source, lengths, [])
    task = ReverseDigits(2, 3)
    with pytest.raises(ValueError, match="steps and batch_size must be >= 1, got 0, 8"):
        train(model, task, 0, batch_size=8)
    with pytest.raises(ValueError, match="steps and batch_size must be >= 1, got 5, 0"):
        train(model, task, 5, batch_size=0)
    with pytest.raises(ValueError, match="min_length <= max_length"):
        ReverseDigits(5, 3)
    with pytest.raises(ValueError, match="per_length must lie in 1..50"):
        ReverseDigits(2, 3).held_out(51)


def test_example_runs():
    fn, args = example()
    assert fn(*args).shape == (3, 7, len(VOCAB))


def test_demo_accuracy_falls_with_length(tmp_path):
    # The short run's exact-match accuracy over the stored seeds is its expected band.
    metric, args, low, high = short_band("annotated/sequence/seq2seq.py")
    metrics = main([*args, "--out", str(tmp_path)])
    assert low <= metrics[metric] <= high  # the short run's band over stored seeds
    assert metrics["loss"] < 2.2  # learned something: ln 13 = 2.565
    assert metrics["short_accuracy"] > 0.5
    assert metrics["short_accuracy"] > metrics["long_accuracy"] + 0.4
    assert (tmp_path / "accuracy.png").exists()


# ---------------------------------------------------------------- benchmarks


def decoding_inputs():
    torch.manual_seed(0)
    model = Seq2Seq().eval()
    sources = ReverseDigits(4, 20).sample(64, random.Random(0))
    batch = batch_of(sources)
    return model, batch


@pytest.mark.benchmark(group="decoding 64 strings of 4–20 digits")
def test_bench_greedy(benchmark):
    benchmark.extra_info["label"] = "greedy decoding"
    benchmark.extra_info["baseline"] = True
    model, batch = decoding_inputs()
    benchmark(greedy_decode, model, batch.source, batch.source_lengths, 25)


@pytest.mark.benchmark(group="decoding 64 strings of 4–20 digits")
def test_bench_beam_4(benchmark):
    benchmark.extra_info["label"] = "beam search, width 4"
    model, batch = decoding_inputs()
    benchmark(beam_search, model, batch.source, batch.source_lengths, 4, 25)


def step_by_step(model, batch):
    state = model.start(batch.source, batch.source_lengths)
    logits = []
    for t in range(batch.target_in.shape[1]):
        step_logits, state = model.step(batch.target_in[:, t], state)
        logits.append(step_logits)
    return torch.stack(logits, dim=1)


@pytest.mark.benchmark(group="teacher-forced loss and gradient, 64 strings")
def test_bench_teacher_forced_one_call(benchmark):
    benchmark.extra_info["label"] = "decoder GRU over all positions in one call"
    benchmark.extra_info["baseline"] = True
    model, batch = decoding_inputs()
    model.train()
    benchmark(lambda: teacher_forcing_loss(model, batch).backward())


@pytest.mark.benchmark(group="teacher-forced loss and gradient, 64 strings")
def test_bench_teacher_forced_step_by_step(benchmark):
    benchmark.extra_info["label"] = "the same decoder one step at a time"
    model, batch = decoding_inputs()
    model.train()

    def loss_and_gradient():
        logits = step_by_step(model, batch)
        loss = F.cross_entropy(
            logits.flatten(0, 1), batch.target_out.flatten(), ignore_index=PAD
        )
        loss.backward()

    benchmark(loss_and_gradient)
