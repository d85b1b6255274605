r"""
---
title: "Reproducing a paper: grokking"
summary: >-
  A worked reproduction of Power et al.'s grokking, written as a technical report in the
  four steps of the plan: the formulas, a base implementation (a 2-layer GPT-2 on
  a + b mod p with AdamW), the experiment set beside the paper's published numbers,
  and one improvement (a larger weight decay, predicted by the derivation) tested over
  paired seeds with a confidence interval.
time: 5 min
references:
  - key: power2022grokking
    authors: [Alethea Power, Yuri Burda, Harri Edwards, Igor Babuschkin, Vedant Misra]
    title: "Grokking: Generalization Beyond Overfitting on Small Algorithmic Datasets"
    year: 2022
    venue: arXiv preprint
    arxiv: "2201.02177"
  - key: nanda2023progress
    authors: [Neel Nanda, Lawrence Chan, Tom Lieberum, Jess Smith, Jacob Steinhardt]
    title: Progress Measures for Grokking via Mechanistic Interpretability
    year: 2023
    venue: ICLR 2023
    arxiv: "2301.05217"
  - key: liu2023omnigrok
    authors: [Ziming Liu, Eric J. Michaud, Max Tegmark]
    title: "Omnigrok: Grokking Beyond Algorithmic Data"
    year: 2023
    venue: ICLR 2023
    arxiv: "2210.01117"
  - key: lee2024grokfast
    authors: [Jaerin Lee, Bong Gyun Kang, Kihoon Kim, Kyoung Mu Lee]
    title: "Grokfast: Accelerated Grokking by Amplifying Slow Gradients"
    year: 2024
    venue: arXiv preprint
    arxiv: "2405.20233"
  - key: loshchilov2019decoupled
    authors: [Ilya Loshchilov, Frank Hutter]
    title: Decoupled Weight Decay Regularization
    year: 2019
    venue: ICLR 2019
    arxiv: "1711.05101"
  - key: radford2019language
    authors: [Alec Radford, Jeffrey Wu, Rewon Child, David Luan, Dario Amodei,
      Ilya Sutskever]
    title: Language Models are Unsupervised Multitask Learners
    year: 2019
    venue: OpenAI technical report
    url: https://cdn.openai.com/better-language-models/language_models_are_unsupervised_multitask_learners.pdf
worksheet:
  - region: fourier_energy
    hint: >-
      After the checks, take the real FFT of the embedding along its rows (in
      float64), sum the squared magnitudes over the columns, double every frequency
      but 0 (k and p - k together), and divide by the total.
    tests:
      - test_fourier_energy_matches_an_explicit_cosine_sine_projection
      - test_a_single_frequency_embedding_has_all_its_energy_there
  - region: GrokfastEMA.__call__
    hint: >-
      For the parameters that have a gradient: the first call sets each average to
      a copy of the gradient, later ones update it to alpha mu + (1 - alpha) g; then
      add lamb * average to each gradient in place.
    tests:
      - test_grokfast_matches_an_iir_filter_from_scipy_signal_lfilter
      - test_grokfast_with_zero_gain_leaves_gradients_alone
  - region: t_interval
    hint: >-
      After the checks, the mean plus and minus the Student t quantile at (1 +
      level) / 2 with n - 1 degrees of freedom, times the sample standard deviation
      (ddof 1) over sqrt(n).
    tests:
      - test_t_interval_matches_scipy_stats_t_interval
      - test_speedup_interval_matches_scipy_paired_t_test_on_logs
---

**The question.** Power et al. trained a small transformer on the table of a binary
operation, such as $a \circ b = (a + b) \bmod p$, with half of the table held out
[@power2022grokking]. The network fits its training half almost at once and then, long
after its training accuracy is perfect, its accuracy on the held-out half climbs from
chance to 100 %. They called this *grokking*. Their Figure 1 (division mod 97, 50 % of
the data) is the striking case: training accuracy is close to perfect in fewer than
$10^3$ optimization steps, validation accuracy needs close to $10^6$. And they found one
knob that matters more than the others: weight decay "has a very large effect on data
efficiency, more than halving the amount of samples needed compared to most other
interventions". Does the effect reproduce on a laptop-sized budget, does weight decay
decide when it happens, and can we make it happen sooner?

**The method** follows the four steps of the study plan, and so does this page. *Step 1*
reads the paper and derives every formula the code needs: the data, the model, the
loss on the answer token, AdamW's decoupled decay and why the weight norm is the thing
to watch, and Nanda et al.'s Fourier explanation of what the network finally learns
[@nanda2023progress]. *Step 2* writes the base implementation, with the paper's
optimiser settings (Appendix A.1.2): AdamW, learning rate $10^{-3}$, weight decay 1,
$\beta = (0.9, 0.98)$, a linear warm-up over 10 updates, minibatches of 512 or half the
training set, whichever is smaller. The model is a 2-layer, 4-head [GPT-2](
../llm/gpt2.md) reused whole from its lesson [@radford2019language]; the test checks
it against Hugging Face's `GPT2LMHeadModel` to $10^{-10}$. *Step 3* runs the
experiments and puts our numbers next to the paper's in one table, with the reason for
each gap. *Step 4* proposes one improvement that step 1's derivation predicts, a larger
weight decay, and tests it the way a claim should be tested: the same seeds for both
arms, and the speed-up with a confidence interval. (The literature's candidate,
Grokfast's gradient filter [@lee2024grokfast], is there too, and why we dropped it.)

**What is different, on purpose.** The whole demo has to run in about five minutes on
two CPU cores, where the paper budgets $10^5$ steps per run on a GPU. So the modulus is
$p = 47$ instead of 97 (2,209 equations instead of 9,409), the training fraction is
40 %, the width is 64 instead of 128 (`--width 128 --prime 97` is the paper's size,
and it groks too, only slower), and a run stops as soon as it has generalised. The
operation is addition, the paper's first; its Figure 1 is division, which needs more
data and more steps.

**Results, in short** (the numbers the demo printed when this page was built; the
table in step 3 has them all). Training accuracy passes 99 % after 200 updates and
validation accuracy after 1,750, 8.8 times later; in between, with a perfect training
score, validation accuracy creeps from about 37 % to about 59 % over some 750 updates,
then climbs to 99 % in about 750 more. Without weight decay, or with 0.3, the held-out
half is not learned within the 4,000-update budget (36 % and 73 % at the end).
Tripling the decay, which step 1 predicts should make the network generalise three
times sooner, makes it 2.7 times sooner over three paired seeds, 95 % confidence
interval 2.3–3.2×. Grokfast's filter, tried on one seed on top of the same AdamW, did
not generalise at all within the budget.
"""

import argparse
import csv
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import Tensor, nn
from tqdm import tqdm

from annotated.data import integer, number, numbers, torch_device
from annotated.figures import figure, save
from annotated.llm.gpt2 import GPT2, GPT2Config

# ## Step 1: read the paper, derive the formulas
#
# ### The task
#
# Fix a prime $p$. The data set is the whole operation table: every ordered pair
# $(a, b)$ with $a, b \in \{0, \ldots, p - 1\}$ and its answer $c = (a + b) \bmod p$,
# $p^2$ equations in all. The paper writes each equation as the five tokens
# $\langle a\rangle\langle\circ\rangle\langle b\rangle\langle=\rangle\langle c\rangle$
# and "calculated loss and accuracy only on the answer part of the equation". The
# operator token is the same in every equation, so it carries no information; we drop
# it, as Nanda et al. do, and feed the three tokens `a b =`: numbers are token ids
# $0 \ldots p-1$ and `=` is id $p$. The model's output at the `=` position is its guess
# for $c$.
#
# Which equations the network sees is chosen once, at random: a fraction $f$ of the
# $p^2$ is the training set and the rest is the validation set. A validation pair is
# a *new pair of familiar numbers*: every number appears in training, in other
# equations. Guessing scores $1/p$, about 2 % at $p = 47$. Nothing in the tokens says
# that 5 comes after 4; to answer a held-out equation the network has to discover the
# structure of the table from the other equations.


@dataclass(frozen=True)
class Split:
    """The operation table split in two: tokens `[n, 3]` (`a b =`) and answers `[n]`."""

    train_tokens: Tensor  # [n_train, 3]
    train_answers: Tensor  # [n_train]
    val_tokens: Tensor  # [p² - n_train, 3]
    val_answers: Tensor  # [p² - n_train]


def is_prime(n: int) -> bool:
    """Trial division: enough for the moduli a demo uses."""
    return n >= 2 and all(n % d for d in range(2, math.isqrt(n) + 1))


def modular_addition(prime: int, train_fraction: float, seed: int = 0) -> Split:
    """All `prime²` equations `a + b = c (mod prime)`, a random `train_fraction` of
    them for training (the split is fixed by `seed`)."""
    if isinstance(prime, bool) or not isinstance(prime, int) or not is_prime(prime):
        raise ValueError(f"prime must be a prime number, got {prime!r}")
    n_train = round(train_fraction * prime**2)
    if not 0 < train_fraction < 1 or not 0 < n_train < prime**2:
        raise ValueError(
            f"train_fraction must leave both halves of the {prime}² table non-empty, "
            f"got {train_fraction!r}"
        )
    a, b = torch.meshgrid(torch.arange(prime), torch.arange(prime), indexing="ij")
    a, b = a.flatten(), b.flatten()  # [p²] each, every ordered pair once
    equals = torch.full_like(a, prime)  # the token id of "="
    tokens = torch.stack([a, b, equals], dim=1)  # [p², 3]
    answers = (a + b) % prime  # [p²]
    order = torch.randperm(prime**2, generator=torch.Generator().manual_seed(seed))
    train, val = order[:n_train], order[n_train:]
    return Split(tokens[train], answers[train], tokens[val], answers[val])


# ### The model
#
# The paper's network is "a standard decoder-only transformer with causal attention
# masking", 2 layers, width 128, 4 heads, "about $4 \cdot 10^5$ non-embedding
# parameters". That is GPT-2 at toy size, so we take the [GPT-2 lesson](
# ../llm/gpt2.md)'s model whole: learned position embeddings, pre-LayerNorm blocks of
# causal attention and a GELU MLP, a final LayerNorm, and an output layer tied to the
# token embedding [@radford2019language]. Its parameter formula gives, at width $d$ and
# $L$ layers, $L(12d^2 + 13d) + 2d$ non-embedding parameters: 396,800 at the paper's
# $d = 128$, $L = 2$, which is the paper's "about $4 \cdot 10^5$". Our default $d = 64$
# has 100,096.
#
# The vocabulary is the $p$ numbers and `=`. The answer is read at the last position
# and only the $p$ number tokens compete for it:
#
# $$
# z = \mathrm{GPT}(a, b, =)_{3,\,0:p} \in \mathbb{R}^p .
# $$
#
# Dropping `=` from the classes is the same as the paper's set-up, where the answer
# token is always a number. Dropout is off: the paper's default has none (residual
# dropout 0.1 appears only as one of its ablations).
#
# The inputs are checked where they enter. `torch.fx`, which draws the page's dataflow
# diagram, cannot trace an `if` on a tensor, so the check is wrapped into one node, as
# in the GPT-2 lesson.


@torch.fx.wrap
def check_equations(tokens: Tensor, prime: int) -> Tensor:
    """Return `tokens` if it is an integer `[batch, 3]` tensor of `a b =` equations;
    raise naming what is wrong."""
    if not isinstance(tokens, Tensor) or tokens.is_floating_point():
        raise TypeError(
            f"tokens must be an integer tensor, got "
            f"{getattr(tokens, 'dtype', type(tokens).__name__)}"
        )
    if tokens.dim() != 2 or tokens.shape[1] != 3 or tokens.shape[0] == 0:
        raise ValueError(
            f"tokens must be [batch, 3] (a b =), got {tuple(tokens.shape)}"
        )
    operands = tokens[:, :2]
    if operands.min() < 0 or operands.max() >= prime or (tokens[:, 2] != prime).any():
        raise ValueError(
            f"tokens must be rows (a, b, {prime}) with a and b in [0, {prime})"
        )
    return tokens


class AnswerModel(nn.Module):
    """A GPT-2 reading `a b =`: `tokens [batch, 3]` → answer logits `[batch, p]`."""

    def __init__(self, prime: int, width: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.prime = prime
        self.gpt = GPT2(
            GPT2Config(
                vocab_size=prime + 1,  # the numbers and "="
                n_positions=3,
                n_embd=width,
                n_layer=layers,
                n_head=heads,
                dropout=0.0,
            )
        )

    def forward(self, tokens: Tensor) -> Tensor:
        tokens = check_equations(tokens, self.prime)
        logits = self.gpt(tokens)  # [batch, 3, p + 1]
        return logits[:, -1, : self.prime]  # [batch, p], read at "="


# ### The loss on the answer token
#
# With the answer read at one position, the paper's "loss only on the answer part" is
# the cross-entropy of that position alone, averaged over a batch $B$:
#
# $$
# \mathcal{L}(\theta) = -\frac{1}{|B|} \sum_{(a, b, c) \in B}
#   \log \frac{e^{z_c}}{\sum_{j < p} e^{z_j}} .
# $$
#
# Its gradient with respect to the logits is $\mathrm{softmax}(z) - \mathrm{onehot}(c)$
# per example, divided by $|B|$: once every training answer has probability near 1,
# the gradient of the training loss is near 0. Keep that in mind for the next section.
# Accuracy is the share of equations whose largest logit is the answer.


def answer_loss(logits: Tensor, answers: Tensor) -> Tensor:
    """Mean cross-entropy of `logits [batch, p]` against `answers [batch]`."""
    return F.cross_entropy(logits, answers)


# ### AdamW, the weight norm, and why weight decay decides
#
# Adam keeps running means of the gradient $g_t$ and of its square, corrects their
# bias, and steps each weight by their ratio; AdamW then shrinks every weight towards
# zero by a fixed fraction, *outside* that ratio [@loshchilov2019decoupled]:
#
# $$
# \begin{aligned}
# m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, \\
# v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, g_t^2, \\
# \theta_t &= \theta_{t-1} - \eta \Big( \frac{m_t / (1 - \beta_1^t)}
#   {\sqrt{v_t / (1 - \beta_2^t)} + \epsilon} + \lambda\, \theta_{t-1} \Big).
# \end{aligned}
# $$
#
# Adding $\lambda\theta$ to the gradient instead (Adam's "L2" weight decay) would put
# the decay inside the ratio, where $\sqrt{v}$ divides it: a weight with large
# gradients would hardly decay at all. Decoupled, every weight loses the same fraction
# $\eta\lambda$ of itself per step, whatever its gradient. The test checks exactly
# this on `torch.optim.AdamW`: a weight with zero gradient is multiplied by
# $1 - \eta\lambda$.
#
# Why that decides grokking. A network that has memorised its training set has a
# training-loss gradient near zero (previous section); the one force left is the
# decay, which pulls $\|\theta\|$ down by a factor $e$ every $1/(\eta\lambda)$ steps,
# 1,000 steps at the paper's $\eta = 10^{-3}$, $\lambda = 1$. There are many ways to fit
# the training table. Memorising a look-up table of $0.4 p^2$ arbitrary answers takes
# large weights; the rule that explains the whole table fits the same answers with
# smaller ones. The decay slides the network along the set of training-set fits towards
# the small-norm one, which is the rule, and validation accuracy rises when it arrives.
# This is Liu et al.'s "LU" picture (training loss is flat in the weight norm, test
# loss is U-shaped in it) [@liu2023omnigrok], and Nanda et al.'s three phases:
# memorisation, then the gradual formation of the rule's circuit, then a "cleanup" in
# which decay removes the memorising weights [@nanda2023progress]. It makes a
# prediction we can test in step 3: without decay there is no such force and nothing
# should happen within our budget; with more decay it should happen sooner, roughly
# in proportion to $1/\lambda$ while the optimiser stays stable.
#
# The warm-up is the paper's: the learning rate rises linearly over the first 10
# updates, $\eta_t = \eta \min(1, t/10)$ for update $t = 1, 2, \ldots$


def adamw(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.98),
    warmup: int = 10,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """The paper's optimiser: AdamW with a linear warm-up over `warmup` updates."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup)
    )
    return optimizer, scheduler


def weight_norm(model: nn.Module) -> float:
    r"""$\|\theta\|_2$ over every parameter of `model`."""
    return math.sqrt(
        sum(p.detach().double().square().sum().item() for p in model.parameters())
    )


# ### What the network learns: a few Fourier frequencies
#
# Nanda et al. reverse-engineered the rule a one-layer transformer finds
# [@nanda2023progress]. It embeds each number $a$ as points on circles,
# $\cos(\omega_k a)$ and $\sin(\omega_k a)$ with $\omega_k = 2\pi k/p$, for a handful of
# *key frequencies* $k$; attention and the MLP combine the two operands with the
# angle-addition identities into $\cos(\omega_k(a + b))$ and $\sin(\omega_k(a + b))$;
# and the output layer scores each candidate $c$ by
#
# $$
# z_c \approx \sum_{k} \alpha_k \cos\big(\omega_k (a + b - c)\big),
# $$
#
# which is largest, for every $k$ at once, exactly when $c \equiv a + b \pmod p$:
# addition has become rotation. Such a rule needs only a few frequencies, so a trained
# embedding matrix $E \in \mathbb{R}^{p \times d}$ should be sparse in the Fourier basis
# along its $p$ rows. The discrete Fourier transform along the token axis,
# $\hat E_k = \sum_a E_a e^{-i\omega_k a}$, splits its squared norm by Parseval's
# theorem into one share per frequency: $|\hat E_0|^2/p$ for the constant and
# $2|\hat E_k|^2/p$ for $k = 1, \ldots, (p-1)/2$, since $k$ and $p - k$ carry the same
# cosine and sine. A random embedding spreads its energy evenly, about $1/24$ per
# frequency at $p = 47$; a grokked one should put most of it on a few. The demo
# measures this "top-5 share" before and after training, a progress measure in
# Nanda et al.'s sense that needs no held-out data.


def fourier_energy(embedding: Tensor) -> Tensor:
    """The share of `embedding [p, d]`'s squared norm on each frequency
    `k = 0 … (p-1)/2` along its rows (`p` odd): `[(p + 1) / 2]`, summing to 1."""
    if not isinstance(embedding, Tensor) or embedding.dim() != 2:
        raise ValueError("embedding must be a [p, d] tensor")
    if embedding.shape[0] % 2 == 0 or embedding.shape[0] < 3:
        raise ValueError(
            f"embedding must have an odd number of rows p >= 3, got "
            f"{embedding.shape[0]}"
        )
    spectrum = torch.fft.rfft(embedding.detach().double(), dim=0)  # [(p+1)/2, d]
    energy = spectrum.abs().square().sum(dim=1)  # [(p+1)/2]
    energy[1:] *= 2  # k and p - k together
    return energy / energy.sum()


def top_share(energy: Tensor, k: int = 5) -> float:
    """The share of the energy on the `k` strongest non-constant frequencies."""
    return energy[1:].topk(k).values.sum().item()


# ## Step 2: the base implementation
#
# Every setting of a run is one field of a dataclass, with the paper's value where we
# keep it. `batch_size` is the paper's cap: the minibatch is 512 equations or half the
# training set, whichever is smaller (442 at $p = 47$, $f = 0.4$). `steps` is the budget
# of optimiser updates; the paper's is $10^5$.


@dataclass(frozen=True)
class GrokConfig:
    """One training run: data, model, optimiser and budget."""

    prime: int = 47  # the modulus p (the paper: 97)
    train_fraction: float = 0.4  # share of the p² equations used for training
    width: int = 64  # d of the GPT-2 (the paper: 128)
    layers: int = 2  # transformer blocks (the paper: 2)
    heads: int = 4  # attention heads (the paper: 4)
    lr: float = 1e-3  # AdamW's peak learning rate (the paper: 1e-3)
    weight_decay: float = 1.0  # AdamW's decoupled decay λ (the paper: 1)
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW's β1, β2 (the paper's)
    warmup: int = 10  # updates of linear warm-up (the paper: 10)
    batch_size: int = 512  # capped at half the training set (the paper's rule)
    steps: int = 4000  # budget of updates (the paper: 1e5)
    eval_every: int = 25  # updates between evaluations on both halves
    threshold: float = 0.99  # "generalised": validation accuracy ≥ this (the paper's)
    seed: int = 0  # fixes the split, the initialisation and the batches

    def __post_init__(self):
        for name in ("width", "layers", "heads", "warmup", "batch_size", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"GrokConfig.{name} must be a positive int, got {value!r}"
                )
        if self.width % self.heads:
            raise ValueError(
                f"GrokConfig.width ({self.width}) must be divisible by heads "
                f"({self.heads})"
            )
        if not self.lr > 0 or not self.weight_decay >= 0:
            raise ValueError(
                f"GrokConfig.lr must be > 0 and weight_decay >= 0, got {self.lr!r}, "
                f"{self.weight_decay!r}"
            )
        if not 0 < self.threshold <= 1:
            raise ValueError(
                f"GrokConfig.threshold must be in (0, 1], got {self.threshold!r}"
            )
        if (
            isinstance(self.eval_every, bool)
            or not isinstance(self.eval_every, int)
            or (self.eval_every < 1)
        ):
            raise ValueError(
                f"GrokConfig.eval_every must be a positive int, got {self.eval_every!r}"
            )


# A run's record: the curves at every evaluation, and the two step counts the paper
# reports, the first evaluation at which training accuracy reached the threshold
# ("memorised") and the first at which validation accuracy did ("generalised"),
# `None` if it did not happen within the budget.


@dataclass
class Run:
    """The curves of one run and its two step counts."""

    config: GrokConfig
    label: str
    steps: list[int] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    weight_norm: list[float] = field(default_factory=list)
    memorised_at: int | None = None
    generalised_at: int | None = None
    seconds: float = 0.0


@torch.no_grad()
def evaluate(
    model: AnswerModel, tokens: Tensor, answers: Tensor
) -> tuple[float, float]:
    """Accuracy and mean loss of `model` on a whole half of the table."""
    logits = model(tokens)  # [n, p]
    accuracy = (logits.argmax(dim=1) == answers).double().mean().item()
    return accuracy, answer_loss(logits, answers).item()


# The steps-to-threshold statistic reads a curve sampled at `steps` and returns the
# first step at which it reached `threshold`, or `None`. Its resolution is the
# evaluation interval: a run that generalised at update 2,590 is recorded at 2,600.


def steps_to_threshold(
    steps: list[int], values: list[float], threshold: float
) -> int | None:
    """The first of `steps` whose value is ≥ `threshold`, else `None`."""
    if len(steps) != len(values):
        raise ValueError(
            f"steps and values must have the same length, got {len(steps)} and "
            f"{len(values)}"
        )
    return next((s for s, v in zip(steps, values) if v >= threshold), None)


# The training loop is the textbook one with two hooks. `grad_filter`, if given, is
# called with the model between `backward()` and the optimiser's step: step 4's
# improvement plugs in there, and nothing else changes. `run_on` lets a run continue
# after it generalised, to `run_on` times that step, so that the main figure shows
# what happens next; the sweeps stop at once (`run_on = 1`) and spend the saved time
# on more runs. Minibatches are drawn without replacement within a batch, from a
# generator seeded with the run's seed, so that two arms of a comparison with the same
# seed see the same split, the same initial weights and the same batches.


def train(
    config: GrokConfig,
    device: str | torch.device = "cpu",
    grad_filter=None,
    run_on: float = 1.0,
    label: str = "",
    progress: bool = True,
) -> tuple[Run, AnswerModel]:
    """Train one `AnswerModel` under `config`; returns its `Run` and the model."""
    if not isinstance(config, GrokConfig):
        raise TypeError(f"config must be a GrokConfig, got {type(config).__name__}")
    if not run_on >= 1:
        raise ValueError(f"run_on must be >= 1, got {run_on!r}")
    split = modular_addition(config.prime, config.train_fraction, config.seed)
    x_train, y_train = split.train_tokens.to(device), split.train_answers.to(device)
    x_val, y_val = split.val_tokens.to(device), split.val_answers.to(device)
    torch.manual_seed(config.seed)
    model = AnswerModel(config.prime, config.width, config.layers, config.heads)
    model = model.to(device)
    optimizer, scheduler = adamw(
        model, config.lr, config.weight_decay, config.betas, config.warmup
    )
    batches = torch.Generator().manual_seed(config.seed)
    n_train = len(y_train)
    batch = min(config.batch_size, n_train // 2)
    run = Run(config, label or f"λ = {config.weight_decay:g}, seed {config.seed}")
    start = time.perf_counter()
    bar = tqdm(range(1, config.steps + 1), desc=run.label, disable=not progress)
    for step in bar:
        index = torch.randperm(n_train, generator=batches)[:batch].to(device)
        loss = answer_loss(model(x_train[index]), y_train[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_filter is not None:
            grad_filter(model)
        optimizer.step()
        scheduler.step()
        if step % config.eval_every and step != config.steps:
            continue
        train_accuracy, train_loss = evaluate(model, x_train, y_train)
        val_accuracy, val_loss = evaluate(model, x_val, y_val)
        run.steps.append(step)
        run.train_accuracy.append(train_accuracy)
        run.val_accuracy.append(val_accuracy)
        run.train_loss.append(train_loss)
        run.val_loss.append(val_loss)
        run.weight_norm.append(weight_norm(model))
        bar.set_postfix(train=f"{train_accuracy:.2f}", val=f"{val_accuracy:.2f}")
        run.memorised_at = steps_to_threshold(
            run.steps, run.train_accuracy, config.threshold
        )
        run.generalised_at = steps_to_threshold(
            run.steps, run.val_accuracy, config.threshold
        )
        if run.generalised_at is not None and step >= run_on * run.generalised_at:
            break
    bar.close()
    run.seconds = time.perf_counter() - start
    return run, model


# ## Step 3: the experiment, against the published figures
#
# Three measurements, each set against the paper in the table below.
#
# 1. **The memorise-then-generalise gap.** One run at the default settings, training
#    and validation accuracy against the step on a logarithmic axis, as in the paper's
#    Figure 1.
# 2. **Weight decay.** The same run, same seed, with $\lambda \in \{0, 0.3, 1, 3\}$:
#    steps to generalise, and the weight norm along the way.
# 3. **Seeds.** The default run again with seeds 1 and 2: how much of a step count is
#    the seed? Three seeds give the baseline arm of step 4.
#
# A mean over a handful of seeds is reported with a Student-$t$ interval: for $n$
# values with mean $\bar x$ and sample standard deviation $s$ (divisor $n - 1$),
#
# $$
# \bar x \pm t_{n-1,\,(1+\gamma)/2}\, \frac{s}{\sqrt n},
# $$
#
# at confidence $\gamma = 0.95$. With $n = 3$ the quantile is 4.30, not 1.96: three
# seeds buy a wide interval, and the page says so rather than hiding it. The test
# checks the function against `scipy.stats.t.interval`.


def t_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """`(mean, low, high)`: the Student-t confidence interval of the mean of
    `values`."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) < 2 or not np.isfinite(x).all():
        raise ValueError(f"values must be at least two finite numbers, got {values!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    mean = x.mean()
    half = (
        stats.t.ppf((1 + level) / 2, df=len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    )
    return float(mean), float(mean - half), float(mean + half)


# Step counts are multiplicative (step 4 says more), so for them we apply `t_interval`
# to the logarithms and exponentiate the three numbers: a geometric mean with its
# interval.
#
# ### Our numbers next to the paper's
#
# | quantity | paper | ours (default demo) |
# | --- | --- | --- |
# | operation, data | $a / b$ mod 97, 50 % (Fig. 1) | $a + b$ mod 47, 40 % |
# | model, budget | 2 layers, $d = 128$, $10^5$ updates | 2 layers, $d = 64$, 4,000 |
# | 99 % training accuracy | $< 10^3$ updates | 200 |
# | 99 % validation accuracy | close to $10^6$ updates | 1,750 (3 seeds: 1,875) |
# | validation ÷ training | $\sim 10^3$ | 8.8 |
# | accuracy on the plateau | chance, until $10^5$ | about 37 % → 59 % |
# | $\lambda = 0$ | generalises, needs more data | 36 % after 4,000 |
# | $\lambda = 1 \to 3$ | data needed "more than halved" | updates ÷ 2.7 (2.3–3.2) |
# | embedding | circles in a t-SNE (§3.4) | top-5 of 24 frequencies: 52 % |
#
# (The 3-seed figure is the geometric mean of 1,750, 3,275 and 1,150 updates; its 95 %
# interval, 507–6,937, shows how much of a step count is the seed.)
#
# **What reproduces.** Every effect goes the paper's way. The network fits the
# training table first, at 200 updates, which is the paper's "$< 10^3$", and learns the
# held-out half much later; the delay needs weight decay, and more decay shortens it.
# After grokking the token embedding has gathered half its energy onto five of its
# 24 Fourier frequencies (figure below), against 26 % at initialisation: the
# few-frequency structure Nanda et al. explain.
#
# **What does not, and why.** The gap is 8.8×, not $10^3$×, and the plateau is not at
# chance. Four reasons, in order of how much we think they matter:
#
# 1. *The operation.* Figure 1 is division; the paper's own Figure 2 shows that
#    addition, symmetric in its operands, generalises from less data, and near the
#    smallest fraction that generalises at all the delay grows fastest.
# 2. *The regulariser.* The paper does not say which of its optimiser variants drew
#    Figure 1; we run its default, weight decay 1, which (step 1) is exactly the force
#    that ends the plateau. With $\lambda = 0$ and 0.3 our delay is beyond the budget.
# 3. *The budget.* A run of ours lasts 4,000 updates, the paper's $10^5$: "not within
#    4,000" is not "never", and we cannot see the paper's late regime at all.
# 4. *The size.* $p = 47$ and $d = 64$ instead of 97 and 128: a table 4.3 times
#    smaller to memorise. (`--prime 97 --width 128` is the paper's size.)
#
# The two fractions also differ (40 % against 50 %); a lower fraction lengthens the
# delay, so it works against the gap, not for it. Our top-5 share, 52 %, is far from
# Nanda et al.'s clean five-frequency picture, which was a one-layer model trained
# well past grokking, through their "cleanup" phase; our main run stops at 1.25 times
# its grokking step.
#
# ## Step 4: one improvement, tested
#
# **The proposal.** Step 1's argument says that once the training set is memorised,
# the decay does the remaining work, shrinking the weights by a factor $e$ every
# $1/(\eta\lambda)$ updates. If that is the mechanism, the time spent on the plateau
# should scale like $1/\lambda$: tripling the decay from the paper's $\lambda = 1$ to
# $\lambda = 3$ should make the network generalise about **three times sooner**. The
# sweep in step 3 already hints at it, with one seed; a claim needs more. (Too much
# decay must stop helping at some point, when the weights can no longer fit the
# training set at all; at $\eta\lambda = 0.003$ per step we expect to be far from it.)
#
# **The candidate we dropped.** Grokfast [@lee2024grokfast] reads a parameter's
# gradients as a signal in time and amplifies its slow part: it keeps an exponential
# moving average of the gradients and adds $\lambda_g$ times it to each new gradient
# before the optimiser sees it,
#
# $$
# \begin{aligned}
# \mu_t &= \alpha\, \mu_{t-1} + (1 - \alpha)\, g_t, \qquad \mu_1 = g_1, \\
# \hat g_t &= g_t + \lambda_g\, \mu_t ,
# \end{aligned}
# $$
#
# a first-order low-pass filter of gain $\lambda_g$ added to the identity. Its paper
# reports 39,890 iterations cut to 910 (×43.8) on $x y \bmod 97$, with Adam and a
# weight decay of 0.005. With its algorithmic-task settings, $\alpha = 0.98$ and
# $\lambda_g = 2$, and the reference code's start $\mu_1 = g_1$ (the paper's
# Algorithm 2 writes $\mu \leftarrow \theta_0$, which its code does not do), on top of
# our AdamW with $\lambda = 1$, seed 0 did *not* generalise within 4,000 updates
# (validation accuracy 42 % at the end, against 1,750 updates without the filter).
# One seed proves little, but it was enough to choose the cheaper and better-founded
# proposal for the default demo. The filter stays here, checked against
# `scipy.signal.lfilter` in the test, and `--grokfast` runs the comparison with it
# instead.


class GrokfastEMA:
    """Grokfast's gradient filter: add `lamb` × an EMA (momentum `alpha`) of each
    parameter's gradients to its gradient, in place."""

    def __init__(self, alpha: float = 0.98, lamb: float = 2.0):
        if not 0 <= alpha < 1:
            raise ValueError(f"alpha must be in [0, 1), got {alpha!r}")
        if not lamb >= 0:
            raise ValueError(f"lamb must be >= 0, got {lamb!r}")
        self.alpha, self.lamb = alpha, lamb
        self.averages: list[Tensor] | None = None  # μ, one per parameter

    def __call__(self, model: nn.Module) -> None:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if self.averages is None:
            self.averages = [g.detach().clone() for g in grads]  # μ_1 = g_1
        else:
            for average, grad in zip(self.averages, grads):
                average.mul_(self.alpha).add_(grad, alpha=1 - self.alpha)
        for average, grad in zip(self.averages, grads):
            grad.add_(average, alpha=self.lamb)  # ĝ = g + λ_g μ


# **The controlled comparison.** Two arms, baseline and improved, run with the same
# seeds; a seed fixes the split, the initial weights and the order of the minibatches,
# so within a seed the change under test is the only difference. Step counts are
# multiplicative things (a method that halves them is "2× faster" whether the baseline
# takes 1,000 or 100,000), so the comparison is made on the log scale: for each seed
# the log of the ratio, baseline steps over improved steps, then the $t$ interval of
# their mean, then back with $\exp$. That is a paired test: differences between seeds,
# which are large, cancel out of each ratio. The result is the geometric-mean speed-up
# with its 95 % interval. An interval that excludes 1 means the change helped on this
# task at this budget; whether it contains 3 says whether the $1/\lambda$ prediction
# survives.
#
# A run that did not generalise within the budget has no step count; it enters with
# the budget, a lower bound, and the printed result marks it, since then the true
# speed-up could be larger (or smaller) than reported.


def speedup_interval(
    baseline_steps, improved_steps, level: float = 0.95
) -> tuple[float, float, float]:
    """`(geometric-mean speed-up, low, high)` of paired step counts: the t interval
    of `log(baseline / improved)`, exponentiated."""
    base = np.asarray(baseline_steps, dtype=np.float64)
    improved = np.asarray(improved_steps, dtype=np.float64)
    if base.shape != improved.shape or base.ndim != 1:
        raise ValueError(
            f"baseline_steps and improved_steps must be paired lists of equal length, "
            f"got {base.shape} and {improved.shape}"
        )
    if (base <= 0).any() or (improved <= 0).any():
        raise ValueError("step counts must be positive")
    mean, low, high = t_interval(np.log(base / improved), level)
    return math.exp(mean), math.exp(low), math.exp(high)


# ## The example
#
# The diagrams and the benchmarks use one small batch: a freshly initialised default
# model on eight equations of the $p = 47$ table.


def example():
    """The default 2-layer, width-64 model on eight equations mod 47."""
    torch.manual_seed(0)
    model = AnswerModel(47, width=64, layers=2, heads=4).eval()
    split = modular_addition(47, 0.4, seed=0)
    return model, (split.train_tokens[:8],)


# ## The figures and the log


def plot_runs(main: Run, sweep: list[Run], out: Path) -> Path:
    """The main run's curves, and validation accuracy and weight norm per decay."""
    fig, (left, middle, right) = figure(panels=3)
    left.plot(main.steps, main.train_accuracy, color="C3", label="training")
    left.plot(main.steps, main.val_accuracy, color="C2", label="validation")
    left.axhline(1 / main.config.prime, color="grey", ls=":", label="chance, $1/p$")
    for at, color in ((main.memorised_at, "C3"), (main.generalised_at, "C2")):
        if at is not None:
            left.axvline(at, color=color, ls="--", lw=0.8)
    left.set_xscale("log")
    left.set_xlabel("optimiser update $t$")
    left.set_ylabel("accuracy")
    left.set_title(f"$a+b$ mod {main.config.prime}, $\\lambda$ = 1")
    left.legend(loc="upper left")  # above the curves while they are still low
    for index, run in enumerate(sweep):
        label = f"$\\lambda$ = {run.config.weight_decay:g}"
        middle.plot(run.steps, run.val_accuracy, color=f"C{index}", label=label)
        right.plot(run.steps, run.weight_norm, color=f"C{index}", label=label)
    middle.set_xscale("log")
    middle.set_xlabel("optimiser update $t$")
    middle.set_ylabel("validation accuracy")
    middle.set_title("Weight decay decides when")
    middle.legend(loc="upper left")
    right.set_xscale("log")
    right.set_xlabel("optimiser update $t$")
    right.set_ylabel(r"weight norm $\|\theta\|_2$")
    right.set_title("The norm the decay pulls down")
    right.legend(loc="upper left")  # the largest decay's norm runs low on the left
    return save(fig, out / "grokking.png", caption=grokking_caption(main, sweep))


def grokking_caption(main: Run, sweep: list[Run]) -> str:
    """The caption of `plot_runs`' figure, its claims read from the runs."""
    config = main.config
    threshold = f"{config.threshold * 100:g} %"
    if main.generalised_at is None:
        left = (
            f"reaches {threshold}, but validation accuracy does not within the budget"
        )
    else:
        left = (
            f"reaches {threshold} long before validation accuracy does (dashed lines)"
        )
    words = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
    count = words.get(len(sweep), str(len(sweep)))
    decays = "weight decay" if len(sweep) == 1 else "weight decays"
    failed = [r.config.weight_decay for r in sweep if r.generalised_at is None]
    if failed:
        middle = ", or ".join(
            "without decay" if decay == 0 else f"with {decay:g}" for decay in failed
        )
        middle += ", the held-out half is not learned within the budget"
    else:
        middle = "every decay learns the held-out half within the budget"
    learned = sorted(
        (r.config.weight_decay, r.generalised_at)
        for r in sweep
        if r.generalised_at is not None
    )
    if len(learned) > 1 and all(a[1] > b[1] for a, b in zip(learned, learned[1:])):
        middle += ", and more decay learns it sooner"
    return (
        f"Left: training accuracy of the {config.layers}-layer GPT-2 on a + b mod "
        f"{config.prime} {left}, on a logarithmic step axis, the paper's Figure 1 in "
        f"miniature. Middle: the same run with {count} {decays}; {middle}. Right: the "
        "weight norm falls fastest under the largest decay."
    )


def plot_sweep(sweep: list[Run], budget: int, energy: tuple[Tensor, Tensor], out: Path):
    """Steps to generalise per weight decay, and the embedding's Fourier spectrum."""
    fig, (left, right) = figure(panels=2)
    # Each count is written a few points above its marker, not across it.
    above = dict(xytext=(0, 6), textcoords="offset points", ha="center", va="bottom")
    for index, run in enumerate(sweep):
        if run.generalised_at is None:
            left.scatter([index], [budget], marker="^", color="C3", s=60)
            left.annotate(f"> {budget:,}", (index, budget), **above)
        else:
            left.scatter([index], [run.generalised_at], color="C2", s=60)
            left.annotate(
                f"{run.generalised_at:,}", (index, run.generalised_at), **above
            )
        left.scatter([index], [run.memorised_at or budget], color="C3", marker="x")
    left.set_xticks(range(len(sweep)), [f"{r.config.weight_decay:g}" for r in sweep])
    left.set_xlim(-0.5, len(sweep) - 0.5)  # the first count clear of the y axis
    left.set_yscale("log")
    left.set_ylim(top=budget * 2)
    left.set_xlabel(r"weight decay $\lambda$")
    left.set_ylabel("updates to 99 % (x: training, o: validation)")
    left.set_title("Steps to generalise against weight decay")
    initial, trained = energy
    frequencies = np.arange(len(initial))
    right.bar(
        frequencies - 0.2,
        initial.numpy(),
        width=0.4,
        color="grey",
        label="at initialisation",
    )
    right.bar(
        frequencies + 0.2,
        trained.numpy(),
        width=0.4,
        color="C0",
        label="after grokking",
    )
    right.set_xlabel("frequency $k$ (cycles over the $p$ numbers)")
    right.set_ylabel("share of the embedding's energy")
    right.set_title("The embedding becomes a few Fourier modes")
    right.legend()
    return save(
        fig,
        out / "sweep.png",
        caption="Left: updates until validation accuracy first reaches 99 % (circles) "
        "and training accuracy (crosses) for each weight decay, seed 0; a triangle "
        "marks a run that had not generalised when the budget ran out. Right: the "
        "share of the token embedding's squared norm on each Fourier frequency: spread "
        "evenly at initialisation, concentrated on a few frequencies after grokking, "
        "as Nanda et al. found.",
    )


def plot_improvement(
    baseline: list[Run],
    improved: list[Run],
    names: tuple[str, str],
    budget: int,
    out: Path,
) -> Path:
    """Per-seed steps to generalise in both arms, and their validation curves."""
    fig, (left, right) = figure(panels=2)
    for position, (name, runs, color) in enumerate(
        ((names[0], baseline, "C0"), (names[1], improved, "C1"))
    ):
        steps = [r.generalised_at or budget for r in runs]
        mean, low, high = (math.exp(v) for v in t_interval(np.log(steps)))
        left.scatter([position] * len(steps), steps, color=color, zorder=3)
        left.errorbar(
            [position + 0.15],
            [mean],
            yerr=[[mean - low], [high - mean]],
            fmt="s",
            color="black",
            capsize=4,
        )
        for run in runs:
            right.plot(run.steps, run.val_accuracy, color=color, alpha=0.8)
        right.plot([], [], color=color, label=name)
    for base, fast in zip(baseline, improved):
        left.plot(
            [0, 1],
            [base.generalised_at or budget, fast.generalised_at or budget],
            color="grey",
            lw=0.8,
        )
    left.set_xticks([0, 1], names)
    left.set_xlim(-0.5, 1.5)
    left.set_yscale("log")
    left.set_ylabel("updates to 99 % validation accuracy")
    left.set_title("Paired by seed; geometric mean, 95 % interval")
    right.set_xscale("log")
    right.set_xlabel("optimiser update $t$")
    right.set_ylabel("validation accuracy")
    right.set_title("Validation accuracy, every seed")
    right.legend()
    return save(
        fig,
        out / "improvement.png",
        caption=f"Left: updates to 99 % validation accuracy for each seed, {names[0]} "
        f"against {names[1]} (grey lines join the same seed: same split, "
        "initialisation and batches), with each arm's geometric mean and its 95 % "
        "Student-t interval on the log scale. Right: the validation curves of every "
        "run of both arms.",
    )


# Every evaluation of every run also goes to one CSV file, one row per run and step,
# so that any curve on this page can be re-plotted or compared with another run
# without training again.


def write_log(runs: list[Run], path: Path) -> Path:
    """All curves of `runs` as one CSV table."""
    columns = [
        "run",
        "step",
        "train_accuracy",
        "val_accuracy",
        "train_loss",
        "val_loss",
        "weight_norm",
    ]
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(columns)
        for run in runs:
            for row in zip(
                run.steps,
                run.train_accuracy,
                run.val_accuracy,
                run.train_loss,
                run.val_loss,
                run.weight_norm,
            ):
                writer.writerow([run.label, *row])
    return path


def describe(run: Run) -> str:
    """One line: the run's two step counts."""
    generalised = run.generalised_at or f">{run.config.steps}"
    return (
        f"{run.label:>20s}: 99 % train at {run.memorised_at}, 99 % validation at "
        f"{generalised} (final {run.val_accuracy[-1]:.3f}, {run.seconds:.0f} s)"
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """The reproduction: the main run, the weight-decay sweep, then the improvement
    tested against the baseline over paired seeds."""
    parser = argparse.ArgumentParser(
        description="Reproduce grokking on a + b mod p, sweep weight decay, and test "
        "a larger weight decay (or Grokfast) against the paper's AdamW over seeds.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--prime", type=integer(at_least=2), default=47, help="the modulus p"
    )
    parser.add_argument(
        "--fraction",
        type=number(above=0, below=1),
        default=0.4,
        help="share of the p² equations used for training",
    )
    parser.add_argument(
        "--width", type=integer(at_least=1), default=64, help="width d of the GPT-2"
    )
    parser.add_argument(
        "--layers", type=integer(at_least=1), default=2, help="transformer blocks"
    )
    parser.add_argument(
        "--steps",
        type=integer(at_least=1),
        default=4000,
        help="budget of optimiser updates per run",
    )
    parser.add_argument(
        "--eval-every",
        type=integer(at_least=1),
        default=25,
        help="updates between evaluations",
    )
    parser.add_argument(
        "--weight-decays",
        type=numbers(at_least=0),
        default="0,0.3,1,3",
        help="comma-separated AdamW weight decays for the sweep",
    )
    parser.add_argument(
        "--seeds",
        type=integer(at_least=2),
        default=3,
        help="seeds per arm of the comparison in step 4 (>= 2)",
    )
    parser.add_argument(
        "--improved-decay",
        type=number(at_least=0),
        default=3.0,
        help="the improved arm's weight decay (the baseline's is 1)",
    )
    parser.add_argument(
        "--grokfast",
        action="store_true",
        help="make the improved arm weight decay 1 plus Grokfast's filter instead",
    )
    parser.add_argument(
        "--alpha",
        type=number(at_least=0, below=1),
        default=0.98,
        help="Grokfast's EMA momentum",
    )
    parser.add_argument(
        "--lamb", type=number(at_least=0), default=2.0, help="Grokfast's amplification"
    )
    parser.add_argument(
        "--run-on",
        type=number(at_least=1),
        default=1.25,
        help="the main run continues to this multiple of its grokking step",
    )
    parser.add_argument(
        "--threads",
        type=integer(at_least=1),
        default=1,
        help="torch CPU threads (at this size a second one costs more than it gives)",
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to train on",
    )
    parser.add_argument(
        "--out", default="out/reproduce", help="folder for figures and log"
    )
    args = parser.parse_args(argv)
    decays = args.weight_decays
    if 1.0 not in decays:
        parser.error(
            "--weight-decays must include 1, the paper's value and the baseline"
        )
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = GrokConfig(
        prime=args.prime,
        train_fraction=args.fraction,
        width=args.width,
        layers=args.layers,
        steps=args.steps,
        eval_every=args.eval_every,
    )
    print(
        f"{args.prime}² = {args.prime**2} equations, {args.fraction:.0%} for training; "
        f"chance {1 / args.prime:.3f}"
    )
    torch.manual_seed(
        base.seed
    )  # the main run's initial weights, as train() makes them
    initial = AnswerModel(base.prime, base.width, base.layers, base.heads)
    print(f"model: {sum(p.numel() for p in initial.parameters()):,} parameters")

    # Steps 2 and 3: the main run is the sweep's λ = 1 run, trained on a little longer.
    sweep, main_model = [], None
    for decay in decays:
        run_on = args.run_on if decay == 1.0 else 1.0
        run, model = train(
            replace(base, weight_decay=decay), args.device, run_on=run_on
        )
        sweep.append(run)
        if decay == 1.0:
            main, main_model = run, model
        print(describe(run))
    gap = (main.generalised_at or args.steps) / (main.memorised_at or args.steps)
    print(f"gap: validation reaches 99 % {gap:.1f}× later than training")
    embedding_before = fourier_energy(initial.gpt.wte.weight[: base.prime])
    embedding_after = fourier_energy(main_model.gpt.wte.weight[: base.prime].cpu())
    print(
        f"top-5 Fourier share of the embedding: {top_share(embedding_before):.2f} at "
        f"initialisation, {top_share(embedding_after):.2f} after training"
    )

    # Step 4: both arms over the same seeds. Seed 0 of an arm is reused from the
    # sweep when the sweep ran that setting without a filter.
    names = (
        "λ = 1",
        "λ = 1 + Grokfast" if args.grokfast else f"λ = {args.improved_decay:g}",
    )
    improved_decay = 1.0 if args.grokfast else args.improved_decay
    baseline, improved = [main], []
    if not args.grokfast and improved_decay in decays:
        improved.append(sweep[decays.index(improved_decay)])
    for seed in range(args.seeds):
        if seed >= len(baseline):
            run, _ = train(replace(base, seed=seed), args.device)
            baseline.append(run)
            print(describe(run))
        if seed >= len(improved):
            run, _ = train(
                replace(base, seed=seed, weight_decay=improved_decay),
                args.device,
                grad_filter=GrokfastEMA(args.alpha, args.lamb)
                if args.grokfast
                else None,
                label=f"{names[1]}, seed {seed}",
            )
            improved.append(run)
            print(describe(run))
    base_steps = [r.generalised_at or args.steps for r in baseline]
    fast_steps = [r.generalised_at or args.steps for r in improved]
    censored = sum(r.generalised_at is None for r in baseline + improved)
    mean_base, low_base, high_base = (
        math.exp(v) for v in t_interval(np.log(base_steps))
    )
    mean_fast, low_fast, high_fast = (
        math.exp(v) for v in t_interval(np.log(fast_steps))
    )
    speedup, low, high = speedup_interval(base_steps, fast_steps)
    print(
        f"{names[0]:>16s}: {mean_base:5.0f} updates to generalise, geometric mean "
        f"(95 % CI {low_base:.0f}–{high_base:.0f})"
    )
    print(
        f"{names[1]:>16s}: {mean_fast:5.0f} updates to generalise, geometric mean "
        f"(95 % CI {low_fast:.0f}–{high_fast:.0f})"
    )
    print(
        f"speed-up {speedup:.2f}× (geometric mean over {args.seeds} paired seeds, "
        f"95 % CI {low:.2f}–{high:.2f}×)"
        + (f"; {censored} run(s) hit the budget, counted at it" if censored else "")
    )

    plot_runs(main, sweep, out)
    plot_sweep(sweep, args.steps, (embedding_before, embedding_after), out)
    plot_improvement(baseline, improved, names, args.steps, out)
    write_log(
        sweep + [r for r in baseline + improved if all(r is not s for s in sweep)],
        out / "runs.csv",
    )
    return {
        "memorised_at": float(main.memorised_at or args.steps),
        "generalised_at": float(main.generalised_at or args.steps),
        "final_train_accuracy": main.train_accuracy[-1],
        "final_val_accuracy": main.val_accuracy[-1],
        "gap": gap,
        "top5_fourier_share": top_share(embedding_after),
        "baseline_geomean_steps": mean_base,
        "improved_geomean_steps": mean_fast,
        "speedup": speedup,
        "speedup_low": low,
        "speedup_high": high,
        "censored_runs": float(censored),
        **{
            f"steps_wd_{r.config.weight_decay:g}": float(r.generalised_at or args.steps)
            for r in sweep
        },
    }


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Power et al. measure weight decay by *data*: the smallest training fraction that
#    generalises within the budget. Run `--fraction 0.3`, `0.4` and `0.5` with
#    $\lambda = 1$ and with $\lambda = 0.3$. Does decay lower the fraction needed, and
#    does the time to generalise grow as fast as the paper's "40–50 % per 1 % of data"?
# 2. Replace `torch.optim.AdamW` by `torch.optim.Adam(..., weight_decay=1)`, the
#    coupled L2 version. Does the model still grok? Plot the weight norm of both and
#    explain the difference from the update equations in step 1.
# 3. Track `top_share` of the embedding at every evaluation. Does it start rising
#    before validation accuracy does, as Nanda et al.'s progress measures do?
# 4. Give Grokfast a fair chance: its paper paired it with a weight decay of 0.005,
#    not 1. Run `--grokfast` with `--lamb` 0.5, 1 and 2 and, by editing the improved
#    arm's decay, with $\lambda \in \{0.1, 1\}$. Is there a setting whose interval
#    lies above 1 against the plain $\lambda = 1$ baseline?
