r"""
---
title: An encoder–decoder without attention
summary: >-
  A GRU encoder squeezes a digit string into one vector and a GRU decoder unrolls its
  reversal from it, trained with teacher forcing and decoded greedily and with beam
  search; exact-match accuracy falls with the input's length, and the one vector is why.
time: 55 s
expected:
  metric: accuracy
  short:
    - "--steps"
    - "150"
    - "--lr"
    - "0.01"
    - "--batch-size"
    - "32"
    - "--min-length"
    - "3"
    - "--max-length"
    - "9"
    - "--test-per-length"
    - "20"
    - "--hidden-size"
    - "32"
    - "--beam-size"
    - "2"
    - "--device"
    - "cpu"
references:
  - key: sutskever2014sequence
    authors: [Ilya Sutskever, Oriol Vinyals, Quoc V. Le]
    title: Sequence to Sequence Learning with Neural Networks
    year: 2014
    venue: NeurIPS 2014
    arxiv: "1409.3215"
  - key: cho2014learning
    authors:
      - Kyunghyun Cho
      - Bart van Merriënboer
      - Caglar Gulcehre
      - Dzmitry Bahdanau
      - Fethi Bougares
      - Holger Schwenk
      - Yoshua Bengio
    title: >-
      Learning Phrase Representations using RNN Encoder–Decoder for Statistical
      Machine Translation
    year: 2014
    venue: EMNLP 2014
    arxiv: "1406.1078"
  - key: cho2014properties
    authors: [Kyunghyun Cho, Bart van Merriënboer, Dzmitry Bahdanau, Yoshua Bengio]
    title: >-
      On the Properties of Neural Machine Translation: Encoder–Decoder Approaches
    year: 2014
    venue: SSST-8 workshop at EMNLP 2014
    arxiv: "1409.1259"
  - key: schuster1997bidirectional
    authors: [Mike Schuster, Kuldip K. Paliwal]
    title: Bidirectional recurrent neural networks
    year: 1997
    venue: IEEE Transactions on Signal Processing 45(11)
    url: https://doi.org/10.1109/78.650093
  - key: williams1989learning
    authors: [Ronald J. Williams, David Zipser]
    title: >-
      A Learning Algorithm for Continually Running Fully Recurrent Neural Networks
    year: 1989
    venue: Neural Computation 1(2)
    url: https://doi.org/10.1162/neco.1989.1.2.270
  - key: bengio2015scheduled
    authors: [Samy Bengio, Oriol Vinyals, Navdeep Jaitly, Noam Shazeer]
    title: >-
      Scheduled Sampling for Sequence Prediction with Recurrent Neural Networks
    year: 2015
    venue: NeurIPS 2015
    arxiv: "1506.03099"
  - key: wu2016google
    authors: [Yonghui Wu, Mike Schuster, Zhifeng Chen, Quoc V. Le, et al.]
    title: >-
      Google's Neural Machine Translation System: Bridging the Gap between Human and
      Machine Translation
    year: 2016
    venue: arXiv preprint
    arxiv: "1609.08144"
worksheet:
  - region: greedy_decode
    hint: >-
      Check max_length, encode with model.start and feed <bos> to the whole batch;
      each step take the log-softmax, forbid <pad> and <bos>, pick the argmax token and
      add its log-probability to the score of rows that have not yet written <eos>;
      stop when every row has ended, then cut each row's tokens at its <eos>.
    tests: [test_beam_of_width_one_is_greedy]
  - region: beam_search
    hint: >-
      Run B·K hypotheses as one decoder batch, only beam 0 alive (score 0, the rest
      -inf) at first. Each step add every token's log-probability to its hypothesis's
      score, take the best 2K of the K·V extensions per row: an <eos> among the top K
      finishes a hypothesis, the others refill the beam up to K; reorder the states
      and histories by beam. A row stops with K finished; at the end keep the
      unfinished too and return the best by score over the length penalty.
    tests:
      - test_beam_scores_equal_teacher_forced_log_probs
      - test_wide_beam_finds_the_exhaustive_optimum
      - test_padded_batch_decodes_like_each_string_alone
---

A translation model reads a sentence of one length and writes a sentence of another.
The *encoder–decoder* of Sutskever et al. [@sutskever2014sequence] and Cho et al.
[@cho2014learning] does it with two recurrent networks: the encoder reads the input
token by token and keeps only its final state, a single vector $c$; the decoder starts
from $c$ and writes the output one token at a time, each conditioned on the tokens it
has written so far. Nothing else passes between them. Whatever the decoder needs to
know about the input, a word near the start or the length of the whole, must survive
in those few hundred numbers.

That is the design's weakness, and this lesson measures it. Cho et al. saw translation
quality drop as sentences grew [@cho2014properties]; here the task is one where the
right answer is never in doubt: **reverse a string of digits**, `"40213"` →
`"31204"`, with inputs of 4 to 20 digits. Every input digit must be carried through
$c$ to come out in the right place, so exact-match accuracy against the input's length
shows how much one vector can carry.

The lesson builds, in order: the vocabulary and the task (with held-out inputs the
training never sees); padded batches and a bidirectional GRU encoder that reads them
through `pack_padded_sequence`; the decoder and its probability model; training with
*teacher forcing*; greedy decoding and *beam search* with end-of-sequence and length
handling; and the measurement. With the demo's defaults (1,200 steps of 64 strings,
about half a minute on two cores) the model reverses every held-out string of 4 or 5
digits and 99 % of those of 6, 60 % of those of 10, 10 % at 14, 1 % at 17 and none
from 18 on. The [attention lesson](attention.md) adds one mechanism to the same model,
and the curve goes flat at 100 %.
"""

import argparse
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from tqdm import tqdm

from annotated.data import integer, number, torch_device
from annotated.figures import figure, save

# ## The vocabulary
#
# Thirteen tokens: the ten digits and three markers. `<pad>` fills the end of a short
# sequence in a batch and is never predicted; `<bos>` (beginning of sequence) is the
# decoder's first input, the token it conditions on before it has written anything;
# `<eos>` (end of sequence) is the decoder's way of saying it is done. Because the
# model must *predict* `<eos>`, it decides the output's length itself, which is what
# lets an encoder–decoder map inputs and outputs of different lengths.

PAD, BOS, EOS = 0, 1, 2
VOCAB = ["<pad>", "<bos>", "<eos>", *"0123456789"]
TOKEN = {symbol: index for index, symbol in enumerate(VOCAB)}


def encode(text: str) -> list[int]:
    """The token ids of a digit string: `"409"` → `[7, 3, 12]`."""
    if not isinstance(text, str) or not text or not set(text) <= set("0123456789"):
        raise ValueError(f"encode: text must be a non-empty digit string, got {text!r}")
    return [TOKEN[digit] for digit in text]


def decode(tokens: list[int]) -> str:
    """The digit string of token ids, read up to the first `<eos>`; markers are
    skipped."""
    digits = []
    for token in tokens:
        if token == EOS:
            break
        if token > EOS:
            digits.append(VOCAB[token])
    return "".join(digits)


# ## The task: reverse a digit string
#
# `ReverseDigits` draws strings of `min_length` to `max_length` digits, every length
# equally likely, and its target is the string reversed. `held_out` draws a fixed set
# of distinct test strings per length; training draws fresh strings every step and
# rejects any that is in the held-out set, so every test input is new to the model.
# (At 4 digits there are 10,000 strings and the demo holds out 100 of each length; at 20
# digits there are $10^{20}$, and the model never sees the same long string twice.)
#
# Reversal is the cleanest probe of the bottleneck: the first output digit is the last
# input digit, the last output digit is the first, so the decoder needs every input
# position and has no way to guess any of them. It is also the task Sutskever et al.
# turned to their advantage: they fed the *source* reversed, so that the first words of
# the output sat close to the first words of the input in time
# [@sutskever2014sequence].


@dataclass(frozen=True)
class ReverseDigits:
    """Reverse strings of `min_length` to `max_length` digits."""

    min_length: int = 4
    max_length: int = 20

    def __post_init__(self):
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError(
                f"ReverseDigits: need 1 <= min_length <= max_length, got "
                f"min_length={self.min_length}, max_length={self.max_length}"
            )

    def target(self, source: str) -> str:
        return source[::-1]

    def held_out(self, per_length: int, seed: int = 1) -> dict[int, list[str]]:
        """`per_length` distinct strings of each length, drawn with `seed`."""
        if per_length < 1 or per_length > 10**self.min_length // 2:
            raise ValueError(
                f"held_out: per_length must lie in 1..{10**self.min_length // 2} "
                f"(half the strings of length {self.min_length}), got {per_length}"
            )
        rng = random.Random(seed)
        held = {}
        for length in range(self.min_length, self.max_length + 1):
            strings = set()
            while len(strings) < per_length:
                strings.add("".join(rng.choices("0123456789", k=length)))
            held[length] = sorted(strings)
        return held

    def sample(
        self, n: int, rng: random.Random, exclude: frozenset[str] = frozenset()
    ) -> list[str]:
        """`n` random strings, none of them in `exclude`."""
        strings = []
        while len(strings) < n:
            length = rng.randint(self.min_length, self.max_length)
            text = "".join(rng.choices("0123456789", k=length))
            if text not in exclude:
                strings.append(text)
        return strings


# ## Batches and padding
#
# A batch of strings of different lengths becomes one rectangular tensor by filling the
# short ones with `<pad>` on the right. The decoder gets two views of each target: its
# *input* starts with `<bos>` and its *output*, what it must predict at each step, ends
# with `<eos>`, one position later:
#
# | step | 1 | 2 | 3 | 4 |
# | --- | --- | --- | --- | --- |
# | `target_in` | `<bos>` | 3 | 1 | 2 |
# | `target_out` | 3 | 1 | 2 | `<eos>` |
#
# Padding changes the arithmetic unless every consumer ignores it. The encoder will skip
# it (packed sequences, below); the loss skips it with `ignore_index=PAD`; and the
# decoder needs nothing, because it reads left to right and padding only ever follows
# the real tokens. The test checks the promise in full: a padded batch gives each
# string the same output as decoding it alone.


@dataclass
class Batch:
    """Padded token ids: `source [B, S]` with `source_lengths [B]` (int64, on the
    CPU, as `pack_padded_sequence` wants), `target_in` and `target_out` `[B, T]`."""

    source: torch.Tensor
    source_lengths: torch.Tensor
    target_in: torch.Tensor
    target_out: torch.Tensor


def make_batch(
    sources: list[str], targets: list[str], device: str | torch.device = "cpu"
) -> Batch:
    """Pad `sources` and `targets` (digit strings) into a `Batch` on `device`."""
    if not sources or len(sources) != len(targets):
        raise ValueError(
            f"make_batch: need as many targets as sources, and at least one; got "
            f"{len(sources)} sources and {len(targets)} targets"
        )
    source_ids = [encode(text) for text in sources]
    target_ids = [encode(text) for text in targets]
    source = torch.full((len(sources), max(map(len, source_ids))), PAD)
    target_in = torch.full((len(targets), max(map(len, target_ids)) + 1), PAD)
    target_out = torch.full_like(target_in, PAD)
    for row, (src, tgt) in enumerate(zip(source_ids, target_ids)):
        source[row, : len(src)] = torch.tensor(src)
        target_in[row, : len(tgt) + 1] = torch.tensor([BOS, *tgt])
        target_out[row, : len(tgt) + 1] = torch.tensor([*tgt, EOS])
    return Batch(
        source.to(device),
        torch.tensor([len(src) for src in source_ids]),
        target_in.to(device),
        target_out.to(device),
    )


# ## The encoder
#
# Each token becomes a vector through an embedding table, and a GRU reads the vectors
# in order [@cho2014learning]. (The [LSTM and GRU lesson](lstm.md) builds the gates from
# their equations and checks them against `nn.GRU`; here we use `nn.GRU` itself.) The
# GRU is *bidirectional* [@schuster1997bidirectional]: one GRU reads left to right,
# another right to left, and position $j$ gets both their states,
# $h_j = [\overrightarrow{h}_j; \overleftarrow{h}_j]$, the encoder's *annotation* of
# token $j$. This model uses only the two final states, concatenated into the summary
#
# $$
# c = [\overrightarrow{h}_{n};\ \overleftarrow{h}_{1}],
# $$
#
# one vector of `2 * hidden_size` numbers for an input of any length $n$. The
# annotations are returned too: the [attention lesson](attention.md) reuses this
# encoder, and attention is exactly the decoder reading the annotations instead of $c$.
#
# **Packed sequences.** Run a GRU over a padded batch and the backward direction of a
# short string starts on its padding, while the forward direction's final state is the
# state after the padding, not after the last digit. `pack_padded_sequence` fixes both:
# it sorts the batch by length and stores, for each time step, only the strings still
# running, so the recurrence stops at each string's own end. `nn.GRU` accepts the
# packed form directly (`torch/nn/modules/rnn.py`, `GRU.forward`), and its final
# states are each string's true final states; `pad_packed_sequence` turns the
# annotations back into a padded tensor, with zeros at the padding.
#
# The checks live in `check_source`, called by the encoder, which every path through
# both lessons' models passes. `torch.fx.wrap` makes the page's dataflow tracer record
# `check_source` and `run_encoder` as one box each: both need the concrete lengths,
# which a symbolic trace does not have.


@torch.fx.wrap
def check_source(source: torch.Tensor, lengths: torch.Tensor) -> None:
    """Raise naming the argument when `source [B, S]` and `lengths [B]` do not
    describe a padded batch of token ids."""
    if not isinstance(source, torch.Tensor) or source.ndim != 2:
        raise ValueError(
            f"source must be a 2-D tensor of token ids [batch, seq], got "
            f"{getattr(source, 'shape', type(source).__name__)}"
        )
    if source.dtype != torch.int64:
        raise TypeError(f"source must hold int64 token ids, got {source.dtype}")
    if not isinstance(lengths, torch.Tensor) or lengths.shape != source.shape[:1]:
        raise ValueError(
            f"lengths must be a 1-D tensor of {source.shape[0]} lengths, one per row "
            f"of source, got {getattr(lengths, 'shape', type(lengths).__name__)}"
        )
    if lengths.min() < 1 or lengths.max() > source.shape[1]:
        raise ValueError(
            f"lengths must lie in 1..{source.shape[1]} (the width of source), got "
            f"{lengths.min().item()}..{lengths.max().item()}"
        )
    if source.min() < 0 or source.max() >= len(VOCAB):
        raise ValueError(f"source ids must lie in 0..{len(VOCAB) - 1}")


@torch.fx.wrap
def run_encoder(
    rnn: nn.GRU, embedded: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the bidirectional `rnn` over `embedded [B, S, E]`, each row only up to its
    length; returns the annotations `[B, S, 2H]` (zero on padding) and the summary
    $c$ `[B, 2H]`."""
    packed = pack_padded_sequence(
        embedded, lengths.cpu(), batch_first=True, enforce_sorted=False
    )
    annotations, final = rnn(packed)  # final: [2 directions, B, H]
    annotations, _ = pad_packed_sequence(
        annotations, batch_first=True, total_length=embedded.shape[1]
    )
    return annotations, torch.cat([final[0], final[1]], dim=-1)  # [B, 2H]


@dataclass(frozen=True)
class Config:
    """The model's sizes."""

    vocab_size: int = len(VOCAB)  # 13 tokens
    embed_dim: int = 32  # the size of each token's embedding
    hidden_size: int = 64  # each encoder direction; the decoder's state is twice this


class Encoder(nn.Module):
    """Token ids `[B, S]` and their lengths → annotations `[B, S, 2H]` and the
    summary `[B, 2H]`."""

    def __init__(self, config: Config):
        super().__init__()
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim, PAD)
        self.rnn = nn.GRU(
            config.embed_dim, config.hidden_size, batch_first=True, bidirectional=True
        )

    def forward(
        self, source: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        check_source(source, lengths)
        return run_encoder(self.rnn, self.embedding(source), lengths)


# ## The decoder and its probability model
#
# The decoder defines the probability of an output $y = (y_1, \dots, y_m)$, with
# $y_m$ = `<eos>`, as a product of next-token probabilities [@sutskever2014sequence]:
#
# $$
# p(y \mid x) = \prod_{t=1}^{m} p(y_t \mid y_{<t},\, c).
# $$
#
# Its state $s_t$ starts at the summary, $s_0 = c$, and each step feeds the previous
# token through a GRU and a linear layer to the next-token logits:
#
# $$
# \begin{aligned}
# s_t &= \operatorname{GRU}(\operatorname{emb}(y_{t-1}),\ s_{t-1}),\\
# p(y_t \mid y_{<t}, c) &= \operatorname{softmax}(W s_t + b).
# \end{aligned}
# $$
#
# That is Sutskever et al.'s decoder: $c$ enters once, as the initial state. (Cho et
# al. also feed $c$ into every step [@cho2014learning]; it helps the decoder remember
# $c$ but does not widen it.) The decoder's state has the summary's size, `2 *
# hidden_size`, so no layer stands between them.
#
# The model exposes two ways to run the decoder, and they must agree:
#
# - `forward(source, lengths, target_in)` takes the whole target at once: the GRU runs
#   over all the positions in one call, because under teacher forcing (next section)
#   every input token is known in advance. This is how it trains.
# - `start(source, lengths)` and `step(previous, state)` advance one token at a time,
#   for decoding, when each input token is the model's own previous output. The state
#   is a tuple of tensors with the batch first, so that the decoders below can repeat
#   and reorder it for beam search without knowing what is inside. The attention model
#   keeps the same two methods with a bigger state.


class Seq2Seq(nn.Module):
    """The encoder–decoder without attention [@sutskever2014sequence]."""

    def __init__(self, config: Config = Config()):
        super().__init__()
        self.config = config
        decoder_size = 2 * config.hidden_size
        self.encoder = Encoder(config)
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim)
        self.rnn = nn.GRU(config.embed_dim, decoder_size, batch_first=True)
        self.output = nn.Linear(decoder_size, config.vocab_size)

    def forward(
        self, source: torch.Tensor, lengths: torch.Tensor, target_in: torch.Tensor
    ) -> torch.Tensor:
        """Next-token logits `[B, T, V]` for every position of `target_in [B, T]`."""
        _, summary = self.encoder(source, lengths)  # [B, 2H]
        states, _ = self.rnn(self.embedding(target_in), summary[None])  # [B, T, 2H]
        return self.output(states)  # [B, T, V]

    def start(self, source: torch.Tensor, lengths: torch.Tensor) -> tuple:
        """The decoder's state before its first step: `(s_0,)`, `s_0 = c` `[B, 2H]`."""
        _, summary = self.encoder(source, lengths)
        return (summary,)

    def step(self, previous: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        """One step from the tokens `previous [B]`: logits `[B, V]` and the new
        state."""
        (hidden,) = state  # [B, 2H]
        embedded = self.embedding(previous)[:, None]  # [B, 1, E]
        output, hidden = self.rnn(embedded, hidden[None].contiguous())
        return self.output(output[:, 0]), (hidden[0],)  # [B, V], ([B, 2H],)


# ## Teacher forcing
#
# Training maximises $\log p(y \mid x)$ of the true output. By the product above it
# is a sum over output positions of $\log p(y_t \mid y_{<t}, c)$, so maximising it
# means minimising one next-token cross-entropy per position. Each term conditions on
# the true earlier tokens $y_{<t}$, not on what the model would have written: the
# decoder is fed the target shifted right (`target_in`) and predicts the target
# (`target_out`). Williams and Zipser called this *teacher forcing*
# [@williams1989learning]. Since every decoder input is known in advance, all
# positions run in the one `nn.GRU` call of `forward`. (On a CPU that is only modestly
# faster than stepping from Python, because `nn.GRU` also walks the positions one by
# one, in C++; the benchmark at the top of the page times both.) The cost is that the
# model never practises continuing after its own mistakes, which it must do at test
# time (*exposure bias*; scheduled sampling feeds it its own outputs part of the time
# [@bengio2015scheduled]).
#
# The loss is the mean over the non-padding target tokens; `ignore_index=PAD` leaves
# the padded positions out of both the sum and the count.


def teacher_forcing_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy of the next-token predictions over `batch`'s real target
    tokens."""
    logits = model(batch.source, batch.source_lengths, batch.target_in)  # [B, T, V]
    return F.cross_entropy(
        logits.flatten(0, 1), batch.target_out.flatten(), ignore_index=PAD
    )


# ## Greedy decoding
#
# At test time the decoder feeds itself. The simplest policy takes the most probable
# token at every step, $\hat y_t = \arg\max_y p(y \mid \hat y_{<t}, c)$, and stops at
# `<eos>` or after `max_length` tokens. This does not find the most probable *sequence*:
# a likely first token can lead only to unlikely continuations. The beam search below
# looks further.
#
# The decoder may write a digit or `<eos>`; `<pad>` and `<bos>` are excluded by setting
# their log-probabilities to $-\infty$ (a trained model gives them almost none anyway,
# an untrained one does not). The batch runs in lockstep; a row that has produced
# `<eos>` keeps being stepped (cheaper than shrinking the batch) but its later tokens
# are dropped and its score frozen. Each result is a `Hypothesis`: the tokens (without
# `<eos>`), the score $\sum_t \log p(\hat y_t \mid \hat y_{<t}, c)$ including the
# `<eos>` token's, and whether it ended with `<eos>` or ran out of length.


@dataclass
class Hypothesis:
    """A decoded output: `tokens` without `<bos>`/`<eos>`, `score` = the sum of the
    log-probabilities of the tokens (and of `<eos>` when `ended`)."""

    tokens: list[int]
    score: float
    ended: bool


def check_decoding(max_length: int, beam_size: int = 1) -> None:
    """Raise naming the argument before a decoder starts on a bad setting (the
    encoder checks `source` and `lengths`)."""
    if not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be an int >= 1, got {max_length!r}")
    if not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size must be an int >= 1, got {beam_size!r}")


@torch.no_grad()
def greedy_decode(
    model: nn.Module, source: torch.Tensor, lengths: torch.Tensor, max_length: int
) -> list[Hypothesis]:
    """The most probable token at each step, for each row of `source [B, S]`."""
    check_decoding(max_length)
    batch_size = source.shape[0]
    state = model.start(source, lengths)
    previous = torch.full((batch_size,), BOS, device=source.device)
    scores = torch.zeros(batch_size, dtype=torch.float64, device=source.device)
    ended = torch.zeros(batch_size, dtype=torch.bool, device=source.device)
    steps = []
    for _ in range(max_length):
        logits, state = model.step(previous, state)
        log_probs = logits.log_softmax(dim=-1)  # [B, V]
        log_probs[:, [PAD, BOS]] = float("-inf")  # only digits and <eos> are written
        best_log_prob, previous = log_probs.max(dim=-1)  # [B], [B]
        scores += torch.where(ended, 0.0, best_log_prob.double())
        steps.append(torch.where(ended, PAD, previous))
        ended |= previous == EOS
        if ended.all():
            break
    tokens = torch.stack(steps, dim=1).tolist()  # [B, steps]
    hypotheses = []
    for row, score, done in zip(tokens, scores.tolist(), ended.tolist()):
        end = row.index(EOS) if done else len(row)
        hypotheses.append(Hypothesis(row[:end], score, done))
    return hypotheses


# ## Beam search
#
# Beam search keeps the $K$ most probable partial outputs (the *beam*) instead of one.
# Each step extends every one of them by every token, scores each extension by its
# total log-probability, $\log p(y_{\le t} \mid x) = \log p(y_{<t} \mid x) + \log
# p(y_t \mid y_{<t}, x)$, and keeps the best $K$. Sutskever et al. decoded this way,
# and found a beam of 2 gave most of the benefit [@sutskever2014sequence].
#
# Three details make it correct, each as fairseq (`fairseq/search.py`, `BeamSearch`)
# and Hugging Face (`BeamSearchScorer.process`) do it:
#
# - **The first step** has one real hypothesis (`<bos>`), not $K$ copies of it: the
#   other $K - 1$ start with score $-\infty$, or the beam would fill with duplicates.
# - **`<eos>`** ends a hypothesis: it leaves the beam for a list of finished ones, and
#   the beam refills from the next-best extensions. So each step looks at the best
#   $2K$ extensions: at most $K$ can end, and $K$ remain to continue. An `<eos>`
#   extension counts only if it ranks among the best $K$: one ranked lower would end
#   a hypothesis the beam would not have kept. The scan stops once the $K$ live
#   places are filled, so a width-1 beam never reaches a lower-ranked `<eos>` and is
#   exactly greedy decoding (the tests check both). A row stops once $K$ hypotheses
#   have finished (Hugging Face's `early_stopping=True`), or after `max_length`
#   steps, when the unfinished ones are kept as they are.
# - **Length.** A sum of log-probabilities only falls as tokens are added, so among
#   finished hypotheses raw scores favour short ones. The winner is chosen by the
#   score divided by GNMT's length penalty [@wu2016google],
#
#   $$
#   \operatorname{lp}(y) = \left(\frac{5 + |y|}{6}\right)^{\alpha},
#   $$
#
#   with $|y|$ counting `<eos>`; $\alpha = 0$ (the default) compares raw scores,
#   $\alpha = 1$ roughly per token. The returned `score` is always the raw sum, the
#   number the test recomputes with teacher forcing.
#
# The arithmetic is batched: the $B \cdot K$ hypotheses step as one batch of the
# decoder. The bookkeeping (which extension finishes, which continues) is a loop over
# $2K$ candidates per row on Python lists, a few microseconds each.


@torch.no_grad()
def beam_search(
    model: nn.Module,
    source: torch.Tensor,
    lengths: torch.Tensor,
    beam_size: int,
    max_length: int,
    length_penalty: float = 0.0,
) -> list[Hypothesis]:
    """The best hypothesis found by a beam of `beam_size`, for each row of `source`."""
    check_decoding(max_length, beam_size)
    batch_size, vocab = source.shape[0], model.config.vocab_size
    device = source.device
    state = model.start(source, lengths)
    state = tuple(s.repeat_interleave(beam_size, dim=0) for s in state)  # [B*K, ...]
    scores = torch.full(
        (batch_size, beam_size), float("-inf"), dtype=torch.float64, device=device
    )
    scores[:, 0] = 0.0  # one live hypothesis per row to begin with
    history = torch.zeros(batch_size, beam_size, 0, dtype=torch.long, device=device)
    previous = torch.full((batch_size * beam_size,), BOS, device=device)
    finished = [[] for _ in range(batch_size)]
    done = [False] * batch_size
    for step in range(max_length):
        logits, state = model.step(previous, state)  # [B*K, V]
        log_probs = logits.log_softmax(dim=-1)
        log_probs[:, [PAD, BOS]] = float("-inf")
        log_probs = log_probs.view(batch_size, beam_size, vocab)
        extended = (scores[:, :, None] + log_probs).view(batch_size, -1)  # [B, K*V]
        top_scores, top_index = extended.topk(2 * beam_size, dim=1)  # [B, 2K]
        new_scores = torch.full_like(scores, float("-inf")).tolist()
        new_beam = [[0] * beam_size for _ in range(batch_size)]
        new_token = [[PAD] * beam_size for _ in range(batch_size)]
        for row, (row_scores, row_index) in enumerate(
            zip(top_scores.tolist(), top_index.tolist())
        ):
            live = 0
            for rank, (score, index) in enumerate(zip(row_scores, row_index)):
                if done[row] or live == beam_size or score == float("-inf"):
                    break
                beam, token = divmod(index, vocab)
                if token == EOS:
                    if rank < beam_size:
                        tokens = history[row, beam].tolist()
                        finished[row].append(Hypothesis(tokens, score, True))
                    continue
                new_scores[row][live] = score
                new_beam[row][live], new_token[row][live] = beam, token
                live += 1
            done[row] = done[row] or len(finished[row]) >= beam_size
        if all(done):
            break
        beams = torch.tensor(new_beam, device=device)  # [B, K]
        rows = torch.arange(batch_size, device=device)[:, None] * beam_size
        state = tuple(s[(rows + beams).flatten()] for s in state)
        tokens = torch.tensor(new_token, device=device)  # [B, K]
        history = torch.cat(
            [history[rows // beam_size, beams], tokens[..., None]], dim=2
        )
        scores = torch.tensor(new_scores, dtype=torch.float64, device=device)
        previous = tokens.flatten()
    for row in range(batch_size):
        for beam in range(beam_size):
            if not done[row] and scores[row, beam] > float("-inf"):
                tokens = history[row, beam].tolist()
                finished[row].append(
                    Hypothesis(tokens, scores[row, beam].item(), False)
                )

    def normalised(hypothesis: Hypothesis) -> float:
        length = len(hypothesis.tokens) + hypothesis.ended
        return hypothesis.score / ((5 + length) / 6) ** length_penalty

    return [max(candidates, key=normalised) for candidates in finished]


# ## Scoring a given output
#
# The reverse question, how probable the model finds a given output, is one
# teacher-forced pass: feed `<bos>` and the output, and add up the log-probabilities of
# the output's tokens (and of `<eos>`, when the output ended with it). The test uses it
# to recompute every beam score; the demo uses it to ask whether beam search finds
# outputs the model rates higher than greedy's.


@torch.no_grad()
def sequence_log_probs(
    model: nn.Module,
    source: torch.Tensor,
    lengths: torch.Tensor,
    hypotheses: list[Hypothesis],
) -> torch.Tensor:
    r"""$\log p(y \mid x)$ `[B]` under teacher forcing, for each hypothesis's
    tokens (with `<eos>` appended when it ended)."""
    if len(hypotheses) != source.shape[0]:
        raise ValueError(
            f"sequence_log_probs: need one hypothesis per row of source "
            f"({source.shape[0]}), got {len(hypotheses)}"
        )
    outputs = [h.tokens + [EOS] * h.ended for h in hypotheses]
    width = max(1, max(map(len, outputs)))
    target_out = torch.full((len(outputs), width), PAD, device=source.device)
    for row, tokens in enumerate(outputs):
        target_out[row, : len(tokens)] = torch.tensor(tokens)
    target_in = torch.cat([torch.full_like(target_out[:, :1], BOS), target_out], 1)
    log_probs = model(source, lengths, target_in[:, :-1]).log_softmax(dim=-1)
    picked = log_probs.gather(2, target_out[..., None])[..., 0]  # [B, T]
    return picked.masked_fill(target_out == PAD, 0.0).double().sum(dim=1)


# ## Training
#
# Adam on the teacher-forced loss, with a fresh batch of strings every step. Two
# standard guards for recurrent networks: the gradient's norm is clipped to 1, which
# stops the occasional huge step a recurrence can produce, and the learning rate falls
# linearly to zero, so that the last steps settle instead of bouncing. The function is
# shared with the attention lesson, which trains its model the same way.


def train(
    model: nn.Module,
    task: ReverseDigits,
    steps: int,
    *,
    batch_size: int = 64,
    lr: float = 3e-3,
    exclude: frozenset[str] = frozenset(),
    seed: int = 0,
    device: str | torch.device = "cpu",
    desc: str = "training",
) -> list[float]:
    """Train `model` in place on `task`; returns the loss of every step."""
    if steps < 1 or batch_size < 1:
        raise ValueError(
            f"train: steps and batch_size must be >= 1, got {steps}, {batch_size}"
        )
    rng = random.Random(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1 - k / steps)
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc=desc):
        sources = task.sample(batch_size, rng, exclude)
        batch = make_batch(sources, [task.target(s) for s in sources], device)
        loss = teacher_forcing_loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return losses


# ## Measuring the bottleneck
#
# A string counts as right only if the whole output matches: every digit, in place, and
# `<eos>` at the right moment (*exact match*). The accuracy is measured separately for
# each input length on the held-out strings. Decoding is allowed five tokens more than
# the target needs, so that an output that runs on is caught as wrong rather than cut
# to fit.


@torch.no_grad()
def exact_match_by_length(
    model: nn.Module,
    task: ReverseDigits,
    held_out: dict[int, list[str]],
    beam_size: int = 1,
    device: str | torch.device = "cpu",
) -> dict[int, float]:
    """The fraction of `held_out` strings of each length whose decoded output equals
    the target exactly (greedy for `beam_size=1`, else beam search)."""
    model.eval()
    accuracy = {}
    for length, sources in held_out.items():
        targets = [task.target(s) for s in sources]
        batch = make_batch(sources, targets, device)
        args = (model, batch.source, batch.source_lengths)
        if beam_size == 1:
            outputs = greedy_decode(*args, max_length=length + 5)
        else:
            outputs = beam_search(*args, beam_size, max_length=length + 5)
        right = [h.ended and decode(h.tokens) == t for h, t in zip(outputs, targets)]
        accuracy[length] = sum(right) / len(right)
    return accuracy


def example():
    """The untrained model's teacher-forced logits for three strings of different
    lengths."""
    torch.manual_seed(0)
    sources = ["4021", "987654", "31"]
    batch = make_batch(sources, [s[::-1] for s in sources])
    return Seq2Seq(), (batch.source, batch.source_lengths, batch.target_in)


# ## The demo
#
# Train on strings of 4 to 20 digits, then decode the 1,700 held-out strings (100 per
# length) greedily and with a beam of 4, and draw exact-match accuracy against the
# input's length. A second panel looks inside the longest outputs: the accuracy of
# each output position, which tells *which* input digits were lost.
#
# What the defaults give (the figure below): greedily, every string of 4 or 5 digits
# right, 99 % at 6 (100 % with the beam), 98 % at 7, 60 % at 10, 10 % at 14, 1 % at 17
# and none from 18 on; 44 % over all lengths greedily and 47 % with the beam. The beam
# helps most in the middle (31 % → 44 % at 12 digits) and finds outputs the model rates
# more probable (mean $\log p$ at 20 digits −10.6 greedy, −10.0 beam), but it cannot
# restore digits the summary no longer holds. The right panel shows where they go: the
# first digits written, which are the input's last, are right 95 % of the time; the
# accuracy falls along the output to about 13 % for the last digit written, the input's
# first, close to the 10 % of chance among ten. The decoder has to carry what $c$ says
# about the early digits through every step it takes before it writes them.


def plot_accuracy(
    greedy: dict[int, float], beam: dict[int, float], position: list[float], out: Path
) -> Path:
    fig, (left, right) = figure(panels=2)
    lengths = list(greedy)
    left.plot(lengths, [greedy[n] for n in lengths], "o-", label="greedy")
    left.plot(lengths, [beam[n] for n in lengths], "s--", label="beam of 4")
    left.set_xlabel("input length $n$ (digits)")
    left.set_ylabel("exact-match accuracy")
    left.set_ylim(-0.03, 1.03)
    left.set_title("whole output right")
    left.legend()
    right.bar(range(1, len(position) + 1), position, color="tab:gray")
    right.set_xticks(range(1, len(position) + 1, max(1, len(position) // 10)))
    right.set_xlabel(f"output position $t$ (input length {len(position)})")
    right.set_ylabel("digit accuracy")
    right.set_ylim(0, 1.03)
    right.set_title("which digits survive")
    return save(
        fig,
        out / "accuracy.png",
        caption="Left: held-out exact-match accuracy of the encoder–decoder without "
        "attention against the input's length, greedy and with a beam of 4; it falls "
        "as one summary vector must carry more digits. Right: for the longest inputs, "
        "how often each output digit is right.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train the encoder–decoder on digit reversal and measure accuracy by length."""
    parser = argparse.ArgumentParser(
        description="An encoder–decoder without attention, reversing digit strings.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--steps", type=integer(at_least=1), default=1200, help="training steps"
    )
    parser.add_argument(
        "--batch-size", type=integer(at_least=1), default=64, help="strings per step"
    )
    parser.add_argument(
        "--lr", type=number(above=0), default=3e-3, help="Adam learning rate"
    )
    parser.add_argument(
        "--min-length", type=integer(at_least=1), default=4, help="shortest input"
    )
    parser.add_argument(
        "--max-length", type=integer(at_least=1), default=20, help="longest input"
    )
    parser.add_argument(
        "--test-per-length",
        type=integer(at_least=1),
        default=100,
        help="held-out strings per length",
    )
    parser.add_argument(
        "--beam-size", type=integer(at_least=1), default=4, help="beam width"
    )
    parser.add_argument(
        "--hidden-size", type=integer(at_least=1), default=64, help="encoder GRU size"
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to train on",
    )
    parser.add_argument("--out", default="out/seq2seq", help="folder for the figures")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    task = ReverseDigits(args.min_length, args.max_length)
    held_out = task.held_out(args.test_per_length)
    exclude = frozenset(s for strings in held_out.values() for s in strings)

    model = Seq2Seq(Config(hidden_size=args.hidden_size)).to(args.device)
    losses = train(
        model,
        task,
        args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        exclude=exclude,
        seed=args.seed,
        device=args.device,
    )
    greedy = exact_match_by_length(model, task, held_out, 1, args.device)
    beam = exact_match_by_length(model, task, held_out, args.beam_size, args.device)

    # Which output positions are right, for the longest inputs; and whether the beam
    # finds outputs the model itself rates more probable than greedy's.
    longest = held_out[task.max_length]
    batch = make_batch(longest, [task.target(s) for s in longest], args.device)
    inputs = (model, batch.source, batch.source_lengths)
    greedy_out = greedy_decode(*inputs, max_length=task.max_length + 5)
    beam_out = beam_search(*inputs, args.beam_size, max_length=task.max_length + 5)
    position = [0.0] * task.max_length
    for hypothesis, source in zip(greedy_out, longest):
        for t, (got, want) in enumerate(zip(decode(hypothesis.tokens), source[::-1])):
            position[t] += (got == want) / len(longest)
    greedy_lp = sequence_log_probs(*inputs, greedy_out)
    beam_lp = sequence_log_probs(*inputs, beam_out)

    greedy_mean = sum(greedy.values()) / len(greedy)
    beam_mean = sum(beam.values()) / len(beam)
    print(f"final training loss {sum(losses[-50:]) / len(losses[-50:]):.4f}")
    for length in held_out:
        print(
            f"length {length:2d}: greedy {greedy[length]:.2f}  beam {beam[length]:.2f}"
        )
    print(f"exact match, all lengths: greedy {greedy_mean:.3f}, beam {beam_mean:.3f}")
    print(
        f"length {task.max_length}: mean log p(output) greedy {greedy_lp.mean():.2f}, "
        f"beam {beam_lp.mean():.2f}"
    )
    plot_accuracy(greedy, beam, position, out)
    short = [greedy[n] for n in held_out if n <= task.min_length + 2]
    long = [greedy[n] for n in held_out if n >= task.max_length - 2]
    return {
        "accuracy": greedy_mean,
        "beam_accuracy": beam_mean,
        "short_accuracy": sum(short) / len(short),
        "long_accuracy": sum(long) / len(long),
        "loss": losses[-1],
    }


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Double `--hidden-size`, then halve it. Does the length at which accuracy drops
#    below one half move in proportion to the size of $c$?
# 2. Feed the source reversed, as Sutskever et al. did, with a unidirectional encoder.
#    Which output positions get easier and which harder, and why?
# 3. Change the task to sorting the digits. Sorting needs only the count of each digit,
#    ten numbers: does the accuracy still fall with length?
# 4. Run beam search with `length_penalty` 0, 1 and 2 on a half-trained model. When do
#    the outputs' lengths change, and which setting gives the best exact match?
