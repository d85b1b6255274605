r"""
---
title: Basic attention for the encoder–decoder
summary: >-
  Additive (Bahdanau) and dot and general (Luong) attention with masked padding, added
  to the previous lesson's encoder–decoder: the accuracy-against-length curve goes
  flat, and the learned alignment of a reversal is the anti-diagonal.
time: 90 s
references:
  - key: bahdanau2015neural
    authors: [Dzmitry Bahdanau, Kyunghyun Cho, Yoshua Bengio]
    title: Neural Machine Translation by Jointly Learning to Align and Translate
    year: 2015
    venue: ICLR 2015
    arxiv: "1409.0473"
  - key: luong2015effective
    authors: [Minh-Thang Luong, Hieu Pham, Christopher D. Manning]
    title: Effective Approaches to Attention-based Neural Machine Translation
    year: 2015
    venue: EMNLP 2015
    arxiv: "1508.04025"
  - key: cho2014properties
    authors: [Kyunghyun Cho, Bart van Merriënboer, Dzmitry Bahdanau, Yoshua Bengio]
    title: >-
      On the Properties of Neural Machine Translation: Encoder–Decoder Approaches
    year: 2014
    venue: SSST-8 workshop at EMNLP 2014
    arxiv: "1409.1259"
  - key: vaswani2017attention
    authors: [Ashish Vaswani, Noam Shazeer, Niki Parmar, Jakob Uszkoreit, Llion Jones,
      Aidan N. Gomez, Łukasz Kaiser, Illia Polosukhin]
    title: Attention Is All You Need
    year: 2017
    venue: NeurIPS 2017
    arxiv: "1706.03762"
worksheet:
  - region: masked_softmax
    hint: >-
      Fill the scores at the padded positions (mask False) with minus infinity, then
      take the softmax over the last axis: exp(-inf) is exactly 0.
    tests: [test_masked_softmax_matches_softmax_over_the_real_positions]
  - region: Attention.score
    hint: >-
      Additive: add the projected query W s ([B, 1, d_a]) to every precomputed key,
      take tanh and apply the energy layer v, dropping its last axis. Dot and general:
      multiply the keys [B, S, D] by the query as a column, giving [B, S].
    tests:
      - test_additive_equals_the_formula_position_by_position
      - test_dot_weights_are_the_softmax_of_plain_dot_products
  - region: Attention.forward
    hint: >-
      Check the inputs; the weights are the masked softmax of the scores of the query
      against the keys ([B, S]); the context is their weighted sum of the values, a
      [B, 1, S] by [B, S, D] product squeezed to [B, D]. Return both.
    tests:
      - test_dot_and_general_equal_scaled_dot_product_attention
      - test_weights_sum_to_one_and_are_exactly_zero_on_padding
---

The [encoder–decoder of the previous lesson](seq2seq.md) passes one vector from the
encoder to the decoder, and its accuracy at reversing digit strings falls from 100 % for
4 and 5 digits (99 % at 6) to 10 % at 14 and none from 18 digits on. Bahdanau, Cho and
Bengio named the cause: "a neural network needs to be able to compress all the necessary
information of a source sentence into a fixed-length vector", and showed translation
quality falling with sentence length for exactly this reason
[@cho2014properties; @bahdanau2015neural].

Their fix keeps every encoder state. The encoder already computes an *annotation*
$h_j$ for each input position $j$; at each output step the decoder scores every
annotation against its own state, turns the scores into weights that sum to one, and
reads the weighted average, a *context* vector made for that step. The decoder learns
where to look, and the weights are a soft *alignment* between output and input
[@bahdanau2015neural]. Luong, Pham and Manning simplified the scoring to a dot product,
with or without a learned matrix between the two vectors [@luong2015effective]; the
Transformer's scaled dot-product attention is the same idea again
[@vaswani2017attention].

This lesson writes the three scores, masks the padding so that a batch gives each
input the answer it gets alone, and checks the dot score against PyTorch's
`F.scaled_dot_product_attention`. It then adds attention to the previous lesson's model
without changing anything else: same task, vocabulary, encoder, training loop and
decoders, all imported. With the demo's defaults (just over a minute on two cores) the
model with additive attention, trained for half as many steps as the model without,
reverses every one of the 1,700 held-out strings, the 20-digit ones as well as the
4-digit ones.
"""

import argparse
from pathlib import Path

import torch
from torch import nn

from annotated.data import integer, number, torch_device
from annotated.figures import figure, save
from annotated.sequence.seq2seq import (
    BOS,
    VOCAB,
    Config,
    Encoder,
    ReverseDigits,
    Seq2Seq,
    decode,
    encode,
    exact_match_by_length,
    greedy_decode,
    make_batch,
    train,
)

# ## Attention as a soft lookup
#
# Take the decoder's state $s$ as a *query* and the annotations $h_1, \dots, h_n$ as
# both *keys* (what the query is compared with) and *values* (what is read). A score
# function rates each position, the softmax turns the scores into weights, and the
# context is the weighted average of the values:
#
# $$
# \begin{aligned}
# e_j &= \operatorname{score}(s, h_j),\\
# \alpha_j &= \frac{\exp e_j}{\sum_{k=1}^{n} \exp e_k},\\
# c &= \sum_{j=1}^{n} \alpha_j h_j.
# \end{aligned}
# $$
#
# The weights are positive and sum to one, so $c$ lies in the convex hull of the
# annotations: a weight near one at position $j$ copies $h_j$, and spread weights
# blend several. Every step of the computation is differentiable, so the decoder learns
# where to look from the translation loss alone, with no alignment ever given.
#
# **Masking.** In a padded batch a short input has annotations at its padded positions
# too (zeros, from `pad_packed_sequence`). They must get weight exactly zero, or the
# context, and the softmax's denominator, would depend on how much padding the batch
# happened to need. Setting their scores to $-\infty$ before the softmax does it:
# $\exp(-\infty) = 0$ exactly, in floating point too, and the remaining weights are
# the softmax over the real positions alone. Every input has at least one real position,
# so no row is all $-\infty$ (which would give 0/0).


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax of `scores [B, S]` over the positions where `mask [B, S]` is True;
    exactly 0 elsewhere."""
    return scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)


# ## Three scores
#
# **Additive** [@bahdanau2015neural]: a one-hidden-layer network of the query and the
# key,
#
# $$
# \operatorname{score}(s, h_j) = v^\top \tanh(W s + U h_j),
# $$
#
# with $W$, $U$ mapping both to an attention size $d_a$ and $v \in \mathbb{R}^{d_a}$.
# Bahdanau et al. point out that $U h_j$ does not depend on the step, so it is computed
# once per input; `project_keys` does that, and each step adds only $W s$.
#
# **Dot** [@luong2015effective]: $\operatorname{score}(s, h_j) = s^\top h_j$. No
# parameters; it needs the query and the keys in the same space and of the same size,
# which is why the decoder's state here has the annotations' size, `2 * hidden_size`.
#
# **General** [@luong2015effective]: $\operatorname{score}(s, h_j) = s^\top W_a h_j$, a
# learned bilinear form. Again $W_a h_j$ is computed once per input, after which a step
# is a dot product.
#
# In all three the step's work is a matrix–vector product with the precomputed keys
# plus a few element-wise operations. The dot score is the Transformer's attention with
# one query and no $1/\sqrt{d}$ scaling [@vaswani2017attention]; the test checks that
# our masked dot attention equals `F.scaled_dot_product_attention(..., scale=1.0)`, and
# general attention equals it on the projected keys.

SCORES = ("additive", "dot", "general")


@torch.fx.wrap
def check_attention_inputs(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
) -> None:
    """Raise naming the argument when the shapes of one attention read disagree, or
    when a row of `mask` has no real position."""
    batch, positions = values.shape[:2]
    if query.ndim != 2 or query.shape[0] != batch:
        raise ValueError(
            f"query must be [batch, size] with batch {batch} (from values), got "
            f"{tuple(query.shape)}"
        )
    if keys.shape[:2] != values.shape[:2]:
        raise ValueError(
            f"keys {tuple(keys.shape)} and values {tuple(values.shape)} must agree on "
            "[batch, positions]"
        )
    if mask.dtype != torch.bool or mask.shape != (batch, positions):
        raise ValueError(
            f"mask must be a bool tensor [batch, positions] = [{batch}, {positions}], "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )
    if not mask.any(dim=-1).all():
        raise ValueError("mask: every row needs at least one True (real) position")


class Attention(nn.Module):
    """One attention read: query `[B, D]`, keys `[B, S, D_k]`, values `[B, S, D]`,
    mask `[B, S]` → context `[B, D]` and weights `[B, S]`."""

    def __init__(self, score: str, size: int, attention_size: int | None = None):
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"Attention: score must be one of {SCORES}, got {score!r}")
        self.score_name = score
        if score == "additive":
            attention_size = attention_size or size
            self.query_layer = nn.Linear(size, attention_size, bias=False)  # W
            self.key_layer = nn.Linear(size, attention_size, bias=False)  # U
            self.energy = nn.Linear(attention_size, 1, bias=False)  # v
        elif score == "general":
            self.key_layer = nn.Linear(size, size, bias=False)  # W_a

    def project_keys(self, annotations: torch.Tensor) -> torch.Tensor:
        """The keys, computed once per input: $U h_j$, $h_j$ or $W_a h_j$."""
        if self.score_name == "dot":
            return annotations  # [B, S, D]
        return self.key_layer(annotations)  # [B, S, d_a] or [B, S, D]

    def score(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """The scores $e_j$ `[B, S]` of `query [B, D]` against `keys [B, S, D_k]`."""
        if self.score_name == "additive":
            hidden = torch.tanh(self.query_layer(query)[:, None] + keys)  # [B, S, d_a]
            return self.energy(hidden)[..., 0]  # [B, S]
        return (keys @ query[:, :, None])[..., 0]  # [B, S]

    def forward(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        check_attention_inputs(query, keys, values, mask)
        weights = masked_softmax(self.score(query, keys), mask)  # [B, S]
        context = (weights[:, None] @ values)[:, 0]  # [B, D]
        return context, weights


# ## The decoder with attention
#
# Everything but the decoder's step is the previous lesson's: the same `Encoder`, whose
# annotations were computed all along and ignored; the same initial state $s_0 = c$;
# the same sizes and vocabulary. The step follows Bahdanau et al.'s order
# [@bahdanau2015neural]: the previous state $s_{t-1}$ is the query, the context $c_t$
# it reads joins the previous token as the GRU's input, and the output layer sees the
# new state, the context and the previous token:
#
# $$
# \begin{aligned}
# c_t &= \operatorname{attend}(s_{t-1};\ h_1, \dots, h_n),\\
# s_t &= \operatorname{GRU}([\operatorname{emb}(y_{t-1});\ c_t],\ s_{t-1}),\\
# p(y_t \mid y_{<t}, x) &= \operatorname{softmax}(W_o [s_t;\ c_t;\
# \operatorname{emb}(y_{t-1})] + b_o).
# \end{aligned}
# $$
#
# (The paper's output layer is a maxout layer over the same three inputs; one linear
# layer is enough here.) Luong et al. put attention after the recurrent step instead:
# the query is the new state $s_t$, and the prediction reads $\tanh(W_c[c_t; s_t])$
# [@luong2015effective]. Both orders work; this lesson keeps Bahdanau's for all three
# scores, so that the score is the only thing that changes between them (the
# exercises try Luong's).
#
# The state is `(s, annotations, keys, mask)`, batch first, so the previous lesson's
# `greedy_decode` and `beam_search` run this model unchanged: they only call `start`
# and `step` and index the state's tensors. Training cannot run the decoder over all
# positions in one `nn.GRU` call any more, since each step's input depends on the
# attention read from the previous state; `forward` loops over the target with the
# same step the decoders use.


class AttentionSeq2Seq(nn.Module):
    """The encoder–decoder with attention: `Seq2Seq`'s interface, one more module."""

    def __init__(self, config: Config = Config(), score: str = "additive"):
        super().__init__()
        self.config = config
        size = 2 * config.hidden_size
        self.encoder = Encoder(config)
        self.attention = Attention(score, size)
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim)
        self.cell = nn.GRUCell(config.embed_dim + size, size)
        self.output = nn.Linear(2 * size + config.embed_dim, config.vocab_size)

    def start(self, source: torch.Tensor, lengths: torch.Tensor) -> tuple:
        """The state before the first step: `s_0 [B, D]`, the annotations
        `[B, S, D]`, their keys and the padding mask `[B, S]`."""
        annotations, summary = self.encoder(source, lengths)  # [B, S, D], [B, D]
        keys = self.attention.project_keys(annotations)
        positions = torch.arange(source.shape[1], device=source.device)
        mask = positions[None] < lengths.to(source.device)[:, None]  # [B, S]
        return summary, annotations, keys, mask

    def attend_and_step(
        self, previous: torch.Tensor, state: tuple
    ) -> tuple[torch.Tensor, tuple, torch.Tensor]:
        """One step: logits `[B, V]`, the new state, and the attention weights
        `[B, S]`."""
        hidden, annotations, keys, mask = state
        context, weights = self.attention(hidden, keys, annotations, mask)  # [B, D]
        embedded = self.embedding(previous)  # [B, E]
        hidden = self.cell(torch.cat([embedded, context], dim=-1), hidden)  # [B, D]
        logits = self.output(torch.cat([hidden, context, embedded], dim=-1))
        return logits, (hidden, annotations, keys, mask), weights

    def step(self, previous: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        logits, state, _ = self.attend_and_step(previous, state)
        return logits, state

    def teacher_forced(
        self, source: torch.Tensor, lengths: torch.Tensor, target_in: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits `[B, T, V]` and attention weights `[B, T, S]` for every position
        of `target_in [B, T]`."""
        state = self.start(source, lengths)
        logits, weights = [], []
        for t in range(target_in.shape[1]):
            step_logits, state, step_weights = self.attend_and_step(
                target_in[:, t], state
            )
            logits.append(step_logits)
            weights.append(step_weights)
        return torch.stack(logits, dim=1), torch.stack(weights, dim=1)

    def forward(
        self, source: torch.Tensor, lengths: torch.Tensor, target_in: torch.Tensor
    ) -> torch.Tensor:
        return self.teacher_forced(source, lengths, target_in)[0]


def example():
    """Additive attention for a batch of three inputs of lengths 5, 3 and 1, padded
    to 5."""
    torch.manual_seed(0)
    attention = Attention("additive", 8)
    annotations = torch.randn(3, 5, 8)
    mask = torch.arange(5)[None] < torch.tensor([5, 3, 1])[:, None]
    keys = attention.project_keys(annotations)
    return attention, (torch.randn(3, 8), keys, annotations, mask)


# ## The demo
#
# The model without attention trains exactly as in the previous lesson's demo (same
# seed, 1,200 steps, same batches), so its curve is that lesson's; the model with
# attention trains on the same batches for only the first 600. Both are decoded
# greedily on the same 1,700 held-out strings; `--scores additive dot general` trains
# all three attention variants. The first figure puts their accuracy against the
# input's length on one plot. The second shows the attention weights of the first
# attention model on a held-out 14-digit string: output steps down, input positions
# across.
#
# What the defaults give: 44 % exact match over all lengths without attention (none
# from 18 digits on), 100 % with additive attention at every length. With `--scores
# additive dot general` the two scores of Luong et al. reach 99.6 % (dot) and 99.5 %
# (general), their few misses among the longest inputs, where they still get 98 %
# right; with `--seed 1`, 100 %, 99.1 % and 99.4 %. The three scores differ far less
# than attention differs from none. The alignment is
# the anti-diagonal a reversal needs, learned from the loss alone: output step $t$
# puts most of its weight on input position $n + 1 - t$, the digit it writes, and most
# of the rest on the digit it wrote one step before, which its query, the previous
# state, was just reading. At `<eos>` the weights spread out: nothing in the input
# needs copying.


def plot_accuracy(
    curves: dict[str, dict[int, float]], steps: dict[str, int], out: Path
) -> Path:
    fig, ax = figure()
    for (name, accuracy), marker in zip(curves.items(), "os^v"):
        lengths = list(accuracy)
        label = f"{name}, {steps[name]:,} steps"
        ax.plot(lengths, [accuracy[n] for n in lengths], f"{marker}-", label=label)
    ax.set_xlabel("input length $n$ (digits)")
    ax.set_ylabel("exact-match accuracy")
    ax.set_ylim(-0.03, 1.03)
    ax.legend()
    return save(
        fig,
        out / "accuracy.png",
        caption="Held-out exact-match accuracy against the input's length, greedy "
        "decoding: without attention it falls as the input grows; with attention, "
        "trained for the steps in the legend, it stays flat.",
    )


def plot_alignment(
    model: AttentionSeq2Seq, source: str, device: str | torch.device, out: Path
) -> Path:
    batch = make_batch([source], [source[::-1]], device)
    output = greedy_decode(model, batch.source, batch.source_lengths, len(source) + 5)
    written = decode(output[0].tokens)
    target_in = torch.tensor([[BOS, *encode(written)]], device=device)
    with torch.no_grad():
        _, weights = model.teacher_forced(batch.source, batch.source_lengths, target_in)
    fig, ax = figure()
    image = ax.imshow(weights[0].cpu().numpy(), cmap="Greys", vmin=0, vmax=1)
    ax.set_xticks(range(len(source)), list(source))
    ax.set_yticks(range(len(written) + 1), [*written, VOCAB[2]])
    ax.set_xlabel("input digit $x_j$")
    ax.set_ylabel("output token $y_t$")
    fig.colorbar(image, ax=ax, label=r"weight $\alpha_{tj}$")
    return save(
        fig,
        out / "alignment.png",
        caption=f"Attention weights while reversing the held-out input {source}: "
        "each output digit puts most of its weight on the input digit it copies, so "
        "the alignment is the anti-diagonal.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train the encoder–decoder with and without attention on digit reversal."""
    parser = argparse.ArgumentParser(
        description="Attention added to the encoder–decoder, reversing digit strings.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--steps",
        type=integer(at_least=1),
        default=600,
        help="training steps, attention models",
    )
    parser.add_argument(
        "--baseline-steps",
        type=integer(at_least=1),
        default=1200,
        help="training steps, the model without attention",
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
        "--scores",
        nargs="+",
        choices=SCORES,
        default=["additive"],
        help="attention scores to train (the first draws the alignment)",
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
    parser.add_argument("--out", default="out/attention", help="folder for the figures")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task = ReverseDigits(args.min_length, args.max_length)
    held_out = task.held_out(args.test_per_length)
    exclude = frozenset(s for strings in held_out.values() for s in strings)
    config = Config(hidden_size=args.hidden_size)
    settings = dict(
        batch_size=args.batch_size,
        lr=args.lr,
        exclude=exclude,
        seed=args.seed,
        device=args.device,
    )

    models, curves, steps = {}, {}, {}
    for name in ["no attention", *args.scores]:
        torch.manual_seed(args.seed)
        if name == "no attention":
            model = Seq2Seq(config).to(args.device)
        else:
            model = AttentionSeq2Seq(config, name).to(args.device)
        models[name] = model
        steps[name] = args.baseline_steps if name == "no attention" else args.steps
        train(model, task, steps[name], desc=name, **settings)
        curves[name] = exact_match_by_length(model, task, held_out, 1, args.device)
        mean = sum(curves[name].values()) / len(curves[name])
        longest = curves[name][task.max_length]
        print(
            f"{name}: exact match {mean:.3f} (length {task.max_length}: {longest:.2f})"
        )

    plot_accuracy(curves, steps, out)
    examples = held_out[min(14, task.max_length)]
    plot_alignment(
        models[args.scores[0]], examples[len(examples) // 2], args.device, out
    )
    results = {}
    for name, accuracy in curves.items():
        results[f"accuracy/{name}"] = sum(accuracy.values()) / len(accuracy)
        results[f"longest/{name}"] = accuracy[task.max_length]
    results["accuracy"] = results[f"accuracy/{args.scores[0]}"]
    print(f"accuracy {results['accuracy']:.4f}")
    return results


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Move attention after the recurrent step, as Luong et al. do: query $s_t$, and
#    logits from $\tanh(W_c[c_t; s_t])$. Does the accuracy or the speed of training
#    change?
# 2. Remove the mask (let padded positions score like the rest) and train. How much
#    does accuracy fall, and for which input lengths?
# 3. Scale the dot score by $1/\sqrt{d}$ as the Transformer does. Plot the entropy of
#    the weights during training with and without the scaling.
# 4. Evaluate both models on inputs of 21 to 30 digits, longer than any trained on.
#    Which one extrapolates, and what does its alignment look like past 20?
