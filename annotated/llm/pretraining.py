r"""
---
title: Pretraining a small GPT
summary: >-
  The training loop of a GPT, piece by piece: BPE tokens packed into windows, AdamW with
  decoupled weight-decay groups, warm-up and cosine decay, gradient accumulation and
  clipping, bf16 autocast, safetensors checkpoints that resume bit for bit, TensorBoard
  logs, and the same script on two processes with DDP; then what 124M, 350M and 774M
  parameters cost in memory, FLOPs and GPU-hours.
time: 60 s
expected:
  metric: validation_loss
  short: ["--steps", "6", "--micro-batch", "4", "--block", "16", "--layers", "1",
    "--width", "16", "--heads", "2", "--merges", "64", "--warmup", "2",
    "--eval-every", "3", "--lr", "3e-2", "--accumulation", "2"]
references:
  - key: radford2019language
    authors: [Alec Radford, Jeffrey Wu, Rewon Child, David Luan, Dario Amodei,
      Ilya Sutskever]
    title: Language Models are Unsupervised Multitask Learners
    year: 2019
    venue: OpenAI technical report
    url: https://cdn.openai.com/better-language-models/language_models_are_unsupervised_multitask_learners.pdf
  - key: loshchilov2019decoupled
    authors: [Ilya Loshchilov, Frank Hutter]
    title: Decoupled Weight Decay Regularization
    year: 2019
    venue: ICLR 2019
    arxiv: "1711.05101"
  - key: loshchilov2017sgdr
    authors: [Ilya Loshchilov, Frank Hutter]
    title: "SGDR: Stochastic Gradient Descent with Warm Restarts"
    year: 2017
    venue: ICLR 2017
    arxiv: "1608.03983"
  - key: kaplan2020scaling
    authors: [Jared Kaplan, Sam McCandlish, Tom Henighan, Tom B. Brown, Benjamin Chess,
      Rewon Child, Scott Gray, Alec Radford, Jeffrey Wu, Dario Amodei]
    title: Scaling Laws for Neural Language Models
    year: 2020
    venue: arXiv preprint
    arxiv: "2001.08361"
  - key: hoffmann2022training
    authors: [Jordan Hoffmann, Sebastian Borgeaud, Arthur Mensch, Elena Buchatskaya,
      et al.]
    title: Training Compute-Optimal Large Language Models
    year: 2022
    venue: NeurIPS 2022
    arxiv: "2203.15556"
  - key: li2020pytorch
    authors: [Shen Li, Yanli Zhao, Rohan Varma, Omkar Salpekar, Pieter Noordhuis,
      Teng Li, Adam Paszke, Jeff Smith, Brian Vaughan, Pritam Damania, Soumith Chintala]
    title: "PyTorch Distributed: Experiences on Accelerating Data Parallel Training"
    year: 2020
    venue: Proceedings of the VLDB Endowment 13(12)
    arxiv: "2006.15704"
  - key: zhao2023fsdp
    authors: [Yanli Zhao, Andrew Gu, Rohan Varma, Liang Luo, Chien-Chin Huang, et al.]
    title: "PyTorch FSDP: Experiences on Scaling Fully Sharded Data Parallel"
    year: 2023
    venue: Proceedings of the VLDB Endowment 16(12)
    arxiv: "2304.11277"
  - key: chowdhery2022palm
    authors: [Aakanksha Chowdhery, Sharan Narang, Jacob Devlin, et al.]
    title: "PaLM: Scaling Language Modeling with Pathways"
    year: 2023
    venue: JMLR 24
    arxiv: "2204.02311"
worksheet:
  - region: parameter_groups
    hint: >-
      Refuse a negative weight_decay; sort the trainable parameters by name into
      those with two or more dimensions (matrices and embeddings, decayed) and the
      rest (biases, LayerNorm gains and shifts, not decayed), and return the two
      groups as dicts of params, names and weight_decay (0 for the second).
    tests:
      - test_groups_decay_exactly_the_matrices_and_embeddings
      - test_one_step_equals_the_decoupled_update_written_out
  - region: learning_rate
    hint: >-
      During warm-up (step < warmup) rise linearly from 0 to max_lr; afterwards
      follow half a cosine from max_lr down to min_lr over the remaining steps,
      holding min_lr past the last one.
    tests:
      - test_schedule_equals_transformers_cosine_with_warmup
      - test_schedule_after_warmup_equals_cosine_annealing_with_eta_min
  - region: accumulate_gradients
    hint: >-
      For each micro-batch: run the model on all but the last token of each window
      (under bfloat16 autocast if bf16), score it with next_token_loss against the
      windows shifted by one, divide by the number of micro-batches, and call
      backward; under DistributedDataParallel skip the gradient sync (no_sync) for
      all but the last. Return the sum of the detached scaled losses.
    tests:
      - test_k_micro_batches_give_the_gradient_of_one_batch
      - test_bf16_autocast_is_close_to_float32
---

The [GPT-2 chapter](gpt2.md) wrote the model; this one writes what turns it into a
language model: the training loop. The loop of every open GPT reproduction (nanoGPT,
Megatron, HF's `Trainer`) has the same parts, and each part exists because of a way a
run fails at scale [@radford2019language]:

1. **Data**: the text is tokenized once with the [BPE tokenizer](bpe.md), the documents
   are joined with `<|endoftext|>` between them, and every batch is a set of windows
   cut at random offsets. No padding, no sentence boundaries: every position trains.
2. **The optimizer**: AdamW [@loshchilov2019decoupled], with weight decay applied to
   the matrices and not to the biases and LayerNorm gains, a linear warm-up and a
   cosine decay of the learning rate [@loshchilov2017sgdr].
3. **The step**: gradient accumulation, so that a batch larger than memory is a sum of
   micro-batches; gradient clipping, so that one bad batch cannot throw the weights
   away; bfloat16 autocast, for speed.
4. **Surviving**: checkpoints in safetensors, with the optimizer state and every random
   state, written every `--save-every` steps, so that a run killed at step 5,000
   resumes from its last checkpoint exactly as if it had never stopped; and
   TensorBoard logs of the loss, the learning rate, the gradient norm and the
   throughput.
5. **More than one machine**: the same script under `torchrun`, with PyTorch's
   `DistributedDataParallel` [@li2020pytorch].

The test checks each part against a reference: the optimizer against the AdamW
update written out, the schedule against `transformers`' and `torch.optim`'s,
accumulated gradients against one large batch, a resumed run against an uninterrupted
one (bit for bit), and a two-process DDP run against one process with the same global
batch. The demo trains a 4-layer GPT of 0.9M parameters on Python's documentation in
about a minute on two cores; then a table says what the real sizes would cost,
from the parameter counts of the GPT-2 chapter and the formulas of the [memory
chapter](../transformers/memory_analysis.md) [@kaplan2020scaling;
@hoffmann2022training].
"""

import argparse
import base64
import contextlib
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from annotated.data import (
    cache_folder,
    cached_weights,
    integer,
    python_docs,
    number,
    torch_device,
)
from annotated.figures import figure, save
from annotated.llm.bpe import Tokenizer
from annotated.llm.bpe import train as train_tokenizer
from annotated.llm.gpt2 import PRESETS, GPT2, GPT2Config, generate, parameter_breakdown
from annotated.transformers.memory_analysis import Config as MemoryConfig
from annotated.transformers.memory_analysis import model_state_bytes, six_n_flops

# ## The corpus, one document at a time
#
# `python_docs()` gives the training and validation text: the topic pages of Python's
# `pydoc_data`, joined three newlines apart, the last tenth of the pages held out. The
# pages are the corpus's *documents*, and a pretraining corpus marks where one ends
# with a special token, as GPT-2 did with `<|endoftext|>`. The page breaks cannot be
# recovered by splitting at three newlines (some pages hold such runs themselves), so
# `corpus_pages` reads the pages from `pydoc_data` in `python_docs`' order and checks
# that joining them gives its two texts back.


def corpus_pages(validation_fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """The pages of `python_docs(validation_fraction)`: `(train, validation)` lists."""
    from pydoc_data.topics import topics

    train_text, validation_text = python_docs(validation_fraction)
    pages = [topics[name].strip() for name in sorted(topics)]
    count, length = 0, -3
    while length < len(train_text):
        length += len(pages[count]) + 3  # the page and the "\n\n\n" before it
        count += 1
    train_pages, validation_pages = pages[:count], pages[count:]
    if "\n\n\n".join(train_pages) != train_text or (
        "\n\n\n".join(validation_pages) != validation_text
    ):
        raise RuntimeError("corpus_pages: python_docs no longer joins the topic pages")
    return train_pages, validation_pages


# ## Tokens, once
#
# The tokenizer is the [BPE chapter](bpe.md)'s, trained on the training pages only
# (the validation text must not shape the vocabulary it is scored with). A few hundred
# merges suffice at this scale: 512 merges take half a second and bring the text to
# about 2.6 bytes a token, so a window of 64 tokens sees some 170 characters. The
# trained ranks are stored in the cache folder (`annotated.data.cache_folder()`) in
# tiktoken's file format, under a name made from the merge count and a hash of the
# text, so a second run, or the second process of a distributed run, reads them back.
#
# Packing turns the pages into one long tensor of ids: each page's tokens followed by
# `<|endoftext|>`. The model learns that after this token a new, unrelated document
# begins, and at sampling time the token can serve as a prompt of "the start of a
# document".


def build_tokenizer(pages: list[str], merges: int) -> Tokenizer:
    """A BPE tokenizer with `merges` merges learned from `pages`, cached on disk."""
    if isinstance(merges, bool) or not isinstance(merges, int) or merges < 0:
        raise ValueError(f"merges must be an int >= 0, got {merges!r}")
    text = "\n\n\n".join(pages)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    folder = cache_folder() / f"pretraining-bpe-{merges}-{digest}"
    if (folder / "tokenizer.json").is_file():
        return Tokenizer.load(folder)
    tokenizer = train_tokenizer(text, merges)
    tokenizer.save(folder)
    return tokenizer


def pack(pages: list[str], tokenizer: Tokenizer) -> Tensor:
    """All `pages` tokenized and joined, each followed by `<|endoftext|>`:
    `[tokens]`."""
    end = tokenizer.special_tokens["<|endoftext|>"]
    ids = []
    for page in pages:
        ids += tokenizer.encode_ordinary(page) + [end]
    return torch.tensor(ids, dtype=torch.long)


# ## Windows at random offsets
#
# A batch is `count` windows of `block + 1` consecutive tokens, each starting at an
# offset drawn uniformly from the packed tensor. The model reads the first `block`
# tokens of a window and is scored on predicting the last `block`, so each window
# gives `block` training positions, and a window that crosses an `<|endoftext|>`
# trains on the boundary too. The offsets come from a `torch.Generator` that the
# training loop owns: its state is part of the checkpoint, so a resumed run draws the
# same batches an uninterrupted one would.


def sample_windows(
    tokens: Tensor, count: int, block: int, generator: torch.Generator
) -> Tensor:
    """`count` windows of `block + 1` tokens at random offsets: `[count, block + 1]`."""
    if tokens.dim() != 1 or tokens.is_floating_point():
        raise ValueError(f"tokens must be a 1-D integer tensor, got {tokens.shape}")
    if len(tokens) < block + 2:
        raise ValueError(
            f"tokens has {len(tokens)} ids, too few for windows of block + 1 = "
            f"{block + 1}"
        )
    starts = torch.randint(0, len(tokens) - block, (count,), generator=generator)
    offsets = torch.arange(block + 1)  # [block + 1]
    return tokens[starts[:, None] + offsets]  # [count, block + 1]


# The loss is the GPT-2 chapter's, without its shift: the window is already cut into
# input `window[:, :-1]` and targets `window[:, 1:]`. The logits are promoted to
# float32 before the log-softmax, which under bf16 autocast matters: a 16-bit
# log-softmax over the vocabulary loses the small probabilities.


def next_token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of `logits [batch, seq, vocab]` against `targets
    [batch, seq]`."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


# ## The hyperparameters
#
# Everything the loop needs is one frozen dataclass, so that a checkpoint can store it
# as JSON beside the weights. The
# defaults are the demo's. Three are GPT-3's choices that most small reproductions
# copy: Adam's $\beta_2 = 0.95$ (the default 0.999 averages the squared gradients over
# a thousand steps, too slow for a loss that is still falling fast), a weight decay of
# 0.1 and clipping at a global norm of 1. The decay ends at a tenth of the peak rate.


@dataclass(frozen=True)
class TrainSettings:
    """The hyperparameters of a pretraining run."""

    steps: int = 700  # optimizer steps
    micro_batch: int = 16  # windows per forward pass, per process
    accumulation: int = 1  # micro-batches per optimizer step, per process
    block: int = 64  # tokens the model reads per window
    max_lr: float = 3e-3  # the peak learning rate, reached at the end of warm-up
    min_lr: float = 3e-4  # the rate the cosine decays to
    warmup: int = 50  # steps of linear warm-up
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1  # on the matrices only
    clip: float = 1.0  # the largest global gradient norm
    bf16: bool = False  # autocast the forward pass to bfloat16 (the demo does)
    seed: int = 0  # of the model and of the batches

    def __post_init__(self):
        for name in ("steps", "micro_batch", "accumulation", "block"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"TrainSettings.{name} must be a positive int, got {value!r}"
                )
        if not 0 <= self.warmup <= self.steps:
            raise ValueError(
                f"TrainSettings.warmup must be in [0, steps = {self.steps}], got "
                f"{self.warmup!r}"
            )
        if not 0 <= self.min_lr <= self.max_lr:
            raise ValueError(
                f"TrainSettings needs 0 <= min_lr <= max_lr, got min_lr "
                f"{self.min_lr!r} and max_lr {self.max_lr!r}"
            )
        if not self.clip > 0:
            raise ValueError(f"TrainSettings.clip must be > 0, got {self.clip!r}")


# ## AdamW and its two groups
#
# Adam with an L2 penalty adds $\lambda\theta$ to the gradient, and the penalty is
# then divided by $\sqrt{\hat v}$ like the rest of it: a weight whose gradients are
# large is hardly decayed at all. Loshchilov and Hutter *decouple* the decay from the
# adaptive step [@loshchilov2019decoupled]:
#
# $$
# \begin{aligned}
# \theta_t &= \theta_{t-1} - \eta_t\Big(\frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}
#   + \lambda\,\theta_{t-1}\Big),
# \end{aligned}
# $$
#
# with $\hat m_t$, $\hat v_t$ Adam's bias-corrected moments. Every weight shrinks by
# the same factor $1 - \eta_t\lambda$ a step, whatever its gradient. That is
# `torch.optim.AdamW`.
#
# Which weights to decay? The rule here is nanoGPT's: **every parameter with two or
# more dimensions decays, every one-dimensional parameter does not**. The 2-D tensors
# are the weight matrices of the linear layers and the token and position
# embeddings; the 1-D ones are the biases and the LayerNorm gains and shifts. A bias
# or a gain has no "size" that a regulariser should pull towards zero: a LayerNorm
# gain of zero switches its features off. HF's `Trainer` picks by name instead (no
# decay for anything called `bias` or belonging to a LayerNorm) and arrives at the same
# split for GPT-2. The test checks the two groups by name and one AdamW step against
# the update above, written out.


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW's parameter groups: 2-D and larger tensors with `weight_decay`, the rest
    without. Each group lists its parameters' `names`."""
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    decay, no_decay = {}, {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (decay if parameter.dim() >= 2 else no_decay)[name] = parameter
    return [
        {
            "params": list(decay.values()),
            "names": list(decay),
            "weight_decay": weight_decay,
        },
        {
            "params": list(no_decay.values()),
            "names": list(no_decay),
            "weight_decay": 0.0,
        },
    ]


def make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.AdamW:
    """AdamW on `parameter_groups(model)` with the settings' rate, betas and decay."""
    groups = parameter_groups(model, settings.weight_decay)
    return torch.optim.AdamW(groups, lr=settings.max_lr, betas=settings.betas)


# ## Warm-up, then a cosine
#
# At the first steps Adam's second moment $\hat v$ rests on a handful of gradients and
# the step it takes is large and noisy; a warm-up lets the rate grow linearly from
# zero over the first $w$ steps. After it the rate follows half a cosine from the peak
# $\eta_{\max}$ to $\eta_{\min}$ at the last step $T$ [@loshchilov2017sgdr]:
#
# $$
# \begin{aligned}
# \eta_t &= \eta_{\max}\,\frac{t}{w}, \qquad t < w, \\
# \eta_t &= \eta_{\min} + \tfrac12(\eta_{\max} - \eta_{\min}) \\
# &\qquad\big(1 + \cos(\pi\,\tfrac{t - w}{T - w})\big), \quad t \ge w.
# \end{aligned}
# $$
#
# With $\eta_{\min} = 0$ this is exactly `transformers`'
# `get_cosine_schedule_with_warmup`, and after the warm-up it is `torch.optim`'s
# `CosineAnnealingLR` with `eta_min`; the test checks both. The loop sets the rate of
# each step itself instead of keeping a scheduler object: the step number is then the
# schedule's whole state, and it is in the checkpoint anyway.


def learning_rate(step: int, settings: TrainSettings) -> float:
    """The learning rate of optimizer step `step` (counted from 0)."""
    if step < settings.warmup:
        return settings.max_lr * step / settings.warmup
    progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return settings.min_lr + (settings.max_lr - settings.min_lr) * cosine


# ## Accumulating micro-batches
#
# A batch of $kb$ windows that does not fit in memory can be run as $k$ micro-batches
# of $b$. The loss of the batch is the mean of the micro-batches' mean losses (they
# hold equally many tokens), so each micro-batch's loss is divided by $k$ before its
# `backward()`, and the gradients add up in `.grad` to the gradient of the whole
# batch. The test checks it to $10^{-6}$.
#
# Under `DistributedDataParallel` every `backward()` would all-reduce the gradients
# across processes; `no_sync()` skips that for all but the last micro-batch, whose
# backward reduces the accumulated sum once.
#
# The forward pass runs under `torch.autocast` when `bf16` is set: matrix products in
# bfloat16, reductions and the loss in float32, the weights and their gradients in
# float32 throughout. bfloat16 keeps float32's exponent range, so no loss scaling is
# needed (float16 would need it). On a GPU with tensor cores this is the fast path. A
# CPU gains only if it has bfloat16 instructions: on the AMD EPYC (AVX-512 BF16) this
# lesson was measured on, a step of the demo's model takes about 0.12 s instead of
# 0.14 s on one core; on a CPU without them autocast is slower than float32, and
# `--precision fp32` turns it off.


def accumulate_gradients(
    model: nn.Module, micro_batches: list[Tensor], bf16: bool = False
) -> Tensor:
    """Add the gradient of the mean loss over `micro_batches` (each `[b, block + 1]`)
    to `.grad`; return that mean loss, detached."""
    device_type = micro_batches[0].device.type
    losses = []
    for index, window in enumerate(micro_batches):
        last = index == len(micro_batches) - 1
        skip_sync = isinstance(model, DistributedDataParallel) and not last
        with model.no_sync() if skip_sync else contextlib.nullcontext():
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(window[:, :-1])  # [b, block, vocab]
            loss = next_token_loss(logits, window[:, 1:]) / len(micro_batches)
            loss.backward()
        losses.append(loss.detach())
    return torch.stack(losses).sum()


# ## One optimizer step
#
# Set the step's rate, accumulate, clip, update, and clear the gradients. Clipping
# rescales all gradients together when their global norm
# $\lVert g \rVert = \sqrt{\sum_i \lVert g_i\rVert^2}$ exceeds the threshold, so the
# direction of the step is kept and only its length capped; `clip_grad_norm_` returns
# the norm *before* clipping, which is worth logging: spikes in it come before loss
# spikes.


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: list[Tensor],
    step: int,
    settings: TrainSettings,
) -> tuple[float, float, float]:
    """One optimizer step; returns `(loss, gradient norm, learning rate)`."""
    lr = learning_rate(step, settings)
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = accumulate_gradients(model, micro_batches, settings.bf16)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item(), norm.item(), lr


# ## Checkpoints that resume exactly
#
# A checkpoint is a folder of three files:
#
# - `model.safetensors`: the model's state dict. safetensors is raw tensors behind a
#   JSON header, read without running code (a pickled `.pt` runs whatever it holds).
# - `optimizer.safetensors`: AdamW's state, flattened to names such as
#   `state.3.exp_avg`, since safetensors holds a flat dict of tensors.
# - `trainer.json`: the step, the settings, the model's config, the optimizer's
#   hyperparameters per group, and the random states, base64-encoded: the batch
#   sampler's generator and torch's global generator (which dropout draws from).
#
# Without the sampler's state a resumed run would draw other batches and drift from
# the uninterrupted one; without Adam's moments it would restart with $\hat v = 0$ and
# take huge steps. The test trains $N$ steps straight and $N/2 + N/2$ with a save and a
# load into a fresh model and optimizer in between, and gets the same losses bit for
# bit. Everything is written to a temporary folder first and renamed into place, so a
# crash while the files are being written leaves the previous checkpoint whole.
#
# The loop writes one every `--save-every` steps (100 by default; 0 writes one only at
# the end) and after its last step, always to the same folder, so a run killed at
# any point loses at most `--save-every` steps: `--resume` picks up at the step of the
# last checkpoint and redraws the same batches from there.


def save_checkpoint(
    folder: str | Path,
    model: GPT2,
    optimizer: torch.optim.Optimizer,
    step: int,
    generator: torch.Generator,
    settings: TrainSettings,
) -> Path:
    """Write the model, the optimizer, the step and the random states to `folder`."""
    folder = Path(folder)
    partial = folder.with_name(folder.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    save_file(
        {name: t.contiguous() for name, t in model.state_dict().items()},
        partial / "model.safetensors",
    )
    state = optimizer.state_dict()
    flat = {
        f"state.{index}.{key}": value
        for index, entry in state["state"].items()
        for key, value in entry.items()
    }
    save_file(flat, partial / "optimizer.safetensors")
    trainer = {
        "step": step,
        "settings": asdict(settings),
        "config": asdict(model.config),
        "param_groups": state["param_groups"],
        "rng": {
            "sampler": base64.b64encode(generator.get_state().numpy()).decode(),
            "torch": base64.b64encode(torch.get_rng_state().numpy()).decode(),
        },
    }
    (partial / "trainer.json").write_text(json.dumps(trainer, indent=1) + "\n")
    if folder.exists():
        for file in folder.iterdir():
            file.unlink()
        folder.rmdir()
    partial.rename(folder)
    return folder


def decode_state(text: str) -> Tensor:
    """A random state from its base64 text."""
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def load_checkpoint(
    folder: str | Path,
    model: GPT2,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> int:
    """Restore what `save_checkpoint` wrote into `model`, `optimizer` and
    `generator`; return the step to continue from."""
    folder = Path(folder)
    for name in ("model.safetensors", "optimizer.safetensors", "trainer.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing: not a checkpoint")
    trainer = json.loads((folder / "trainer.json").read_text())
    if trainer["config"] != asdict(model.config):
        raise ValueError(
            f"model: the checkpoint is of {trainer['config']}, the model is of "
            f"{asdict(model.config)}"
        )
    device = next(model.parameters()).device
    model.load_state_dict(load_file(folder / "model.safetensors", device=str(device)))
    state: dict[int, dict[str, Tensor]] = {}
    for name, value in load_file(folder / "optimizer.safetensors").items():
        _, index, key = name.split(".")
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": trainer["param_groups"]})
    generator.set_state(decode_state(trainer["rng"]["sampler"]))
    torch.set_rng_state(decode_state(trainer["rng"]["torch"]))
    return trainer["step"]


# ## Evaluation and samples
#
# The validation loss is measured on fixed windows spread evenly over the validation
# tokens, the same ones at every evaluation, so the curve is not noisy from sampling.
# A sample of text from the start of a document is logged beside it: the loss says how
# much the model learned, the sample what.


@torch.no_grad()
def evaluate(model: GPT2, tokens: Tensor, block: int, windows: int = 64) -> float:
    """Mean next-token loss on `windows` evenly spaced windows of `tokens`."""
    room = len(tokens) - block - 1  # the last offset a window of block + 1 can start at
    if room < 0:
        raise ValueError(
            f"evaluate: {len(tokens)} tokens are too few for one window of block + 1 "
            f"= {block + 1} tokens"
        )
    if not 1 <= windows <= max(1, room):
        raise ValueError(
            f"evaluate: {len(tokens)} tokens allow 1 to {max(1, room)} evenly spaced "
            f"windows (stride >= 1) of block + 1 = {block + 1} tokens, "
            f"got windows={windows}"
        )
    was_training = model.training
    model.eval()
    stride = room // windows
    starts = torch.arange(windows) * stride  # [windows]
    batch = tokens[starts[:, None] + torch.arange(block + 1)]  # [windows, block + 1]
    batch = batch.to(next(model.parameters()).device)
    loss = next_token_loss(model(batch[:, :-1]), batch[:, 1:]).item()
    model.train(was_training)
    return loss


@torch.no_grad()
def sample_text(model: GPT2, tokenizer: Tokenizer, tokens: int, seed: int = 0) -> str:
    """`tokens` tokens sampled (top-k 40) after `<|endoftext|>`, decoded."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    start = tokenizer.special_tokens["<|endoftext|>"]
    prompt = torch.tensor([[start]], device=device)  # [1, 1]
    generator = torch.Generator(device).manual_seed(seed)
    ids = generate(model, prompt, tokens, top_k=40, generator=generator)
    model.train(was_training)
    return tokenizer.decode(ids[0, 1:].tolist())


# ## The loop
#
# `pretrain` runs optimizer steps `start` to `stop`. On each step every process draws
# the *global* batch of `world × accumulation × micro_batch` windows from the same
# generator and keeps its own slice of it; a single process whose accumulation is
# `world` times as large draws the same windows and trains on all of them, which
# is what makes the two runs comparable. The loss logged is the mean over processes.
# Every `eval_every` steps (and at the end) the validation loss and a sample are
# logged; TensorBoard gets the training loss, the rate, the gradient norm and the
# tokens per second of every step. Given a `checkpoint` folder, process 0 saves to it
# every `save_every` steps (0: never in between) and after the last step.


def pretrain(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    tokens: Tensor,
    settings: TrainSettings,
    generator: torch.Generator,
    start: int = 0,
    stop: int | None = None,
    validation: Tensor | None = None,
    eval_every: int = 0,
    writer: SummaryWriter | None = None,
    tokenizer: Tokenizer | None = None,
    checkpoint: str | Path | None = None,
    save_every: int = 0,
) -> dict[str, list]:
    """Train from step `start` to `stop` (default `settings.steps`), saving to
    `checkpoint` every `save_every` steps and after the last; returns the per-step
    `loss`, `lr`, `grad_norm` and the `(step, loss)` pairs of `validation`."""
    stop = settings.steps if stop is None else stop
    if not 0 <= start <= stop <= settings.steps:
        raise ValueError(
            f"need 0 <= start <= stop <= steps, got {start}, {stop}, {settings.steps}"
        )
    if save_every < 0 or (save_every and checkpoint is None):
        raise ValueError(
            f"pretrain: save_every must be >= 0, and > 0 only with a checkpoint "
            f"folder; got save_every={save_every}, checkpoint={checkpoint}"
        )
    rank, world = (
        (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    )
    module = model.module if isinstance(model, DistributedDataParallel) else model
    device = next(model.parameters()).device
    per_rank = settings.accumulation * settings.micro_batch
    history = {"loss": [], "lr": [], "grad_norm": [], "validation": []}
    model.train()
    for step in tqdm(range(start, stop), desc="pretraining", disable=rank != 0):
        began = time.perf_counter()
        windows = sample_windows(tokens, world * per_rank, settings.block, generator)
        mine = windows[rank * per_rank : (rank + 1) * per_rank].to(device)
        micro_batches = list(mine.split(settings.micro_batch))
        loss, norm, lr = train_step(model, optimizer, micro_batches, step, settings)
        if world > 1:
            mean = torch.tensor(loss / world)
            dist.all_reduce(mean)
            loss = mean.item()
        seconds = time.perf_counter() - began
        history["loss"].append(loss)
        history["lr"].append(lr)
        history["grad_norm"].append(norm)
        if writer is not None and rank == 0:
            writer.add_scalar("train/loss", loss, step)
            writer.add_scalar("train/lr", lr, step)
            writer.add_scalar("train/grad_norm", norm, step)
            throughput = world * per_rank * settings.block / seconds
            writer.add_scalar("train/tokens_per_second", throughput, step)
        last = step == stop - 1
        if (
            validation is not None
            and eval_every
            and ((step + 1) % eval_every == 0 or last)
        ):
            val_loss = evaluate(module, validation, settings.block)
            history["validation"].append((step + 1, val_loss))
            if writer is not None and rank == 0:
                writer.add_scalar("validation/loss", val_loss, step + 1)
                if tokenizer is not None:
                    text = sample_text(module, tokenizer, 48, seed=step)
                    writer.add_text("sample", text, step + 1)
        if (
            checkpoint is not None
            and rank == 0
            and (last or (save_every and (step + 1) % save_every == 0))
        ):
            save_checkpoint(
                checkpoint, module, optimizer, step + 1, generator, settings
            )
    return history


# ## Past one machine: DDP
#
# `DistributedDataParallel` [@li2020pytorch] keeps a full copy of the model on every
# process, gives each process its own slice of the batch, and all-reduces the
# gradients during backward, in buckets, overlapping communication with the rest of
# the backward pass; the [data-parallel chapter](../systems/data_parallel.md) builds
# it by hand. Since every process ends the backward with the same averaged gradient
# and runs the same AdamW step, the copies stay equal.
#
# `torchrun --nproc_per_node 2 -m annotated.llm.pretraining` starts two copies of
# this script with `RANK`, `WORLD_SIZE`, `MASTER_ADDR` and `MASTER_PORT` set;
# `init_distributed` joins them into a process group (gloo on CPUs, NCCL on GPUs).
# Started without them, the script is a single process. The global batch is
# `world × accumulation × micro_batch` windows, so two processes with accumulation 1
# train the same model as one process with accumulation 2: the test checks the
# losses agree to $10^{-5}$.
#
# DDP's cost is memory: each process holds all 16 bytes a parameter of the model
# states (below). FSDP [@zhao2023fsdp] shards parameters, gradients and Adam's
# moments across the processes and gathers each layer's parameters only while it
# runs. It is left to the [data-parallel chapter](../systems/data_parallel.md), whose
# test runs `torch.distributed.fsdp` on gloo; a model of a million parameters does not
# need it.


def init_distributed(device: str) -> tuple[int, int]:
    """Join the process group `torchrun` describes, if any: `(rank, world_size)`."""
    if "RANK" not in os.environ:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size()


# ## What the real sizes cost
#
# The loop above is the one that trains GPT-2's published sizes; only the numbers
# change. For a model of $N$ parameters:
#
# - **Memory of the model states**, in bf16 with float32 master weights and AdamW:
#   2 bytes a parameter for the bf16 weights, 2 for their gradients, 4 for the master
#   copy and 8 for Adam's two moments, $16N$ (the [memory
#   chapter](../transformers/memory_analysis.md)'s `model_state_bytes(..., "mixed")`).
#   With DDP every GPU holds all of it; activations come on top and depend on the
#   micro-batch and on recomputation.
# - **FLOPs per token** of a training step: $6N$ for the weights [@kaplan2020scaling]
#   plus $12Lsh$ for the attention products [@chowdhery2022palm], the memory
#   chapter's `six_n_flops`.
# - **Tokens**: Chinchilla's compute-optimal budget is about 20 tokens a parameter
#   [@hoffmann2022training].
# - **GPU-hours**: FLOPs over the throughput actually reached, the *model FLOPs
#   utilisation* (MFU) times the peak [@chowdhery2022palm]. An H100 or H200 SXM does
#   989 TFLOP/s of dense bf16 matrix products; 40 % MFU is a good run of a model this
#   small.


def run_cost(
    config: GPT2Config,
    seq: int = 1024,
    tokens_per_parameter: float = 20.0,
    mfu: float = 0.4,
    peak_flops: float = 989e12,
) -> dict[str, float]:
    """Parameters, model-state bytes, FLOPs per token, tokens and GPU-hours of a
    compute-optimal run of `GPT2(config)` on sequences of `seq` tokens."""
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu!r}")
    memory_config = MemoryConfig(
        vocab_size=config.vocab_size,
        n_ctx=config.n_positions,
        layers=config.n_layer,
        hidden=config.n_embd,
        heads=config.n_head,
    )
    parameters = sum(parameter_breakdown(config).values())
    flops_per_token = six_n_flops(memory_config, 1, seq) / seq
    tokens = tokens_per_parameter * parameters
    return {
        "parameters": parameters,
        "state_bytes": sum(model_state_bytes(memory_config, "mixed").values()),
        "flops_per_token": flops_per_token,
        "tokens": tokens,
        "gpu_hours": flops_per_token * tokens / (mfu * peak_flops) / 3600,
    }


# ## The model the next chapters start from
#
# [LoRA](lora.md), the [GGML formats](ggml_quant.md) and [GPTQ](gptq.md) all begin
# from a pretrained model. `small_gpt` is the demo's run with its defaults (4 layers,
# 128 wide, 700 steps in bf16), trained the first time it is called and read back
# from the cache folder after that, through `annotated.data.cached_weights`; the file's
# name carries a hash of this lesson, so editing the lesson retrains it.


def small_gpt(device: str = "cpu") -> tuple[GPT2, Tokenizer, list[str], list[str]]:
    """The demo's pretrained GPT in eval mode, its tokenizer, and the training and
    validation pages it was trained and scored on."""
    train_pages, validation_pages = corpus_pages()
    tokenizer = build_tokenizer(train_pages, 512)
    settings = TrainSettings(bf16=True)
    config = GPT2Config(
        vocab_size=tokenizer.vocabulary_size,
        n_positions=settings.block,
        n_embd=128,
        n_layer=4,
        n_head=4,
        dropout=0.0,
    )

    def train() -> dict[str, Tensor]:
        torch.manual_seed(settings.seed)
        model = GPT2(config)
        optimizer = make_optimizer(model, settings)
        generator = torch.Generator().manual_seed(settings.seed)
        pretrain(model, optimizer, pack(train_pages, tokenizer), settings, generator)
        return model.state_dict()

    model = GPT2(config)
    model.load_state_dict(cached_weights("pretraining-small-gpt", __file__, train))
    return model.to(device).eval(), tokenizer, train_pages, validation_pages


# ## The example
#
# One training step of a tiny GPT on two micro-batches: the function is `train_step`,
# so the dataflow diagram is declared below rather than traced.


def example():
    """One optimizer step of a 2-layer GPT on two micro-batches of 4 windows."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    model = GPT2(config)
    settings = TrainSettings(
        steps=10, micro_batch=4, accumulation=2, block=16, warmup=2
    )
    optimizer = make_optimizer(model, settings)
    tokens = torch.randint(0, 64, (400,), generator=torch.Generator().manual_seed(1))
    windows = sample_windows(tokens, 8, 16, torch.Generator().manual_seed(2))
    micro_batches = list(windows.split(4))
    return train_step, (model, optimizer, micro_batches, 3, settings)


def dataflow(output):
    """The step's stages, with the shapes of the example."""
    loss, norm, lr = output
    nodes = [
        ("windows", "sample_windows\n[8, 17] token ids"),
        ("micro", "split into 2 micro-batches\n2 × [4, 17]"),
        ("forward", "GPT2 forward (autocast)\n[4, 16] → [4, 16, 64]"),
        ("backward", "loss / 2, backward\ngradients add up in .grad"),
        ("clip", f"clip_grad_norm_\nnorm {norm:.2f} → ≤ 1"),
        ("adamw", f"AdamW, 2 groups\nlr {lr:.2e}"),
    ]
    edges = [
        ("windows", "micro", "[8, 17]"),
        ("micro", "forward", "[4, 16] inputs"),
        ("forward", "backward", f"loss {loss:.3f}"),
        ("backward", "forward", "next micro-batch"),
        ("backward", "clip", "summed gradients"),
        ("clip", "adamw", "clipped gradients"),
    ]
    return nodes, edges


# ## The demo
#
# The demo trains a GPT of 4 layers, width 128 and 4 heads (0.9M parameters) on 64-token
# windows of the 512-merge BPE, 16 windows a step, for 700 steps: under a minute on
# two cores. The uniform guess over its 769 ids scores $\ln 769 \approx 6.65$ nats a
# token; the run ends near 3.4 nats a token on the validation pages, 1.23 nats a
# *byte* (the [GPT-2 chapter](gpt2.md)'s byte-level model, seven times smaller,
# reached about 1.6 nats a byte in its 800 steps; tokens let a model see almost three
# times as much text per window). The sample it prints has the shape of a pydoc page,
# headings underlined with asterisks and quoted keywords, with invented words in it.
#
# A longer run shows the corpus's limit. With `--steps 2500 --eval-every 250` (5.3
# minutes, float32) the validation loss bottoms out at 3.20 nats a token (1.16 a byte)
# around step 1,750 and then *rises* to 3.34 by the end, while the training loss keeps
# falling: 2,500 steps of 16 windows of 64 tokens are 2.56M tokens, about 16 passes
# over the 164,555 training tokens, and the model starts to memorise them.
# Chinchilla's rule asks for about 20 tokens a parameter, 18M for this model
# [@hoffmann2022training]; the corpus has a hundredth of that. At this point a real
# run would need more text, not more steps.


def plot(history: dict, settings: TrainSettings, out: Path) -> Path:
    """The training and validation losses, and the learning-rate schedule."""
    fig, (left, right) = figure(panels=2)
    steps = range(1, len(history["loss"]) + 1)
    left.plot(steps, history["loss"], lw=0.8, label="training batch")
    val_steps, val_losses = zip(*history["validation"])
    left.plot(val_steps, val_losses, "o-", color="C3", label="validation")
    left.set_xlabel("step $k$")
    left.set_ylabel("next-token loss (nats)")
    left.set_title("A 4-layer GPT on Python's docs")
    left.legend()
    right.plot(steps, history["lr"], color="C1")
    right.axvline(
        settings.warmup,
        color="grey",
        ls=":",
        label=f"end of warm-up, {settings.warmup}",
    )
    right.set_xlabel("step $k$")
    right.set_ylabel(r"learning rate $\eta_k$")
    right.set_title("Linear warm-up, cosine decay")
    right.legend()
    return save(
        fig,
        out / "pretraining.png",
        caption="Left: the training loss of every step and the validation loss at "
        "each evaluation; both fall fast while the rate is high and keep falling more "
        "slowly as the cosine brings it down. Right: the learning rate, rising "
        "linearly over the warm-up and decaying along half a cosine to a tenth of "
        "its peak.",
    )


def print_costs() -> dict[str, dict[str, float]]:
    """Print and return `run_cost` for GPT-2 small, medium and large."""
    costs = {name: run_cost(GPT2Config.preset(name)) for name in list(PRESETS)[:3]}
    print(
        "preset        parameters  states/GPU  FLOPs/token  tokens (20/param)  H100-h"
    )
    for name, cost in costs.items():
        print(
            f"{name:12s} {cost['parameters']:>11,}"
            f"  {cost['state_bytes'] / 2**30:6.1f} GiB"
            f"  {cost['flops_per_token'] / 1e9:7.2f} G  {cost['tokens'] / 1e9:12.1f} B"
            f"  {cost['gpu_hours']:10,.0f}"
        )
    return costs


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Pretrain a small GPT on Python's docs; print the cost of the real sizes."""
    parser = argparse.ArgumentParser(
        description="Pretrain a small GPT on Python's documentation (torchrun-ready).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--steps", type=integer(at_least=1), default=700, help="optimizer steps"
    )
    parser.add_argument(
        "--micro-batch", type=integer(at_least=1), default=16, help="windows per pass"
    )
    parser.add_argument(
        "--accumulation", type=integer(at_least=1), default=1, help="passes per step"
    )
    parser.add_argument(
        "--block", type=integer(at_least=1), default=64, help="tokens per window"
    )
    parser.add_argument(
        "--layers", type=integer(at_least=1), default=4, help="Transformer blocks"
    )
    parser.add_argument(
        "--width", type=integer(at_least=1), default=128, help="n_embd of the model"
    )
    parser.add_argument(
        "--heads", type=integer(at_least=1), default=4, help="attention heads"
    )
    parser.add_argument(
        "--merges", type=integer(at_least=1), default=512, help="BPE merges"
    )
    parser.add_argument(
        "--lr", type=number(above=0), default=3e-3, help="peak learning rate"
    )
    parser.add_argument(
        "--warmup", type=integer(at_least=0), default=50, help="warm-up steps"
    )
    parser.add_argument(
        "--precision",
        choices=("bf16", "fp32"),
        default="bf16",
        help="bf16 autocast of the forward pass, or plain float32",
    )
    parser.add_argument(
        "--eval-every",
        type=integer(at_least=1),
        default=100,
        help="steps between evals",
    )
    parser.add_argument(
        "--save-every",
        type=integer(at_least=0),
        default=100,
        help="steps between checkpoints (0: only at the end)",
    )
    parser.add_argument("--resume", default=None, help="checkpoint folder to resume")
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to train on",
    )
    parser.add_argument("--out", default="out/pretraining", help="folder for outputs")
    args = parser.parse_args(argv)
    settings = TrainSettings(
        steps=args.steps,
        micro_batch=args.micro_batch,
        accumulation=args.accumulation,
        block=args.block,
        max_lr=args.lr,
        min_lr=args.lr / 10,
        warmup=min(args.warmup, args.steps),
        bf16=args.precision == "bf16",
        seed=args.seed,
    )
    rank, world = init_distributed(args.device)
    device = args.device
    if device.startswith("cuda") and world > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    out = Path(args.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        costs = print_costs()

    train_pages, validation_pages = corpus_pages()
    if world > 1 and rank != 0:
        dist.barrier()  # rank 0 trains and caches the tokenizer first
    tokenizer = build_tokenizer(train_pages, args.merges)
    if world > 1 and rank == 0:
        dist.barrier()
    tokens, validation = pack(train_pages, tokenizer), pack(validation_pages, tokenizer)
    validation_bytes = len("\n\n\n".join(validation_pages).encode("utf-8"))

    torch.manual_seed(settings.seed)
    config = GPT2Config(
        vocab_size=tokenizer.vocabulary_size,
        n_positions=settings.block,
        n_embd=args.width,
        n_layer=args.layers,
        n_head=args.heads,
        dropout=0.0,
    )
    module = GPT2(config).to(device)
    optimizer = make_optimizer(module, settings)
    generator = torch.Generator().manual_seed(settings.seed)
    start = 0
    if args.resume:
        start = load_checkpoint(args.resume, module, optimizer, generator)
        if start >= settings.steps:
            parser.error(
                f"--resume {args.resume} is at step {start}, nothing to do for "
                f"--steps {settings.steps}: ask for more --steps"
            )
    model = module
    if world > 1:
        model = DistributedDataParallel(
            module, device_ids=[device] if device.startswith("cuda") else None
        )
    if rank == 0:
        parameters = sum(p.numel() for p in module.parameters())
        print(
            f"{len(tokens):,} training tokens, {len(validation):,} validation tokens "
            f"({tokenizer.vocabulary_size} ids); model {parameters:,} parameters; "
            f"{world} process(es)"
        )
    writer = SummaryWriter(str(out / "tensorboard")) if rank == 0 else None
    began = time.perf_counter()
    history = pretrain(
        model,
        optimizer,
        tokens,
        settings,
        generator,
        start=start,
        validation=validation,
        eval_every=args.eval_every,
        writer=writer,
        tokenizer=tokenizer,
        checkpoint=out / "checkpoint",
        save_every=args.save_every,
    )
    seconds = time.perf_counter() - began
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    if rank != 0:
        return {}
    writer.close()
    (out / "history.json").write_text(json.dumps(history) + "\n")
    val_loss = history["validation"][-1][1]
    per_byte = val_loss * len(validation) / validation_bytes
    print(f"trained steps {start}–{settings.steps} in {seconds:.1f} s")
    print(f"validation loss {val_loss:.3f} nats/token = {per_byte:.3f} nats/byte")
    print(f"sample: {sample_text(module, tokenizer, 64, seed=args.seed)!r}")
    plot(history, settings, out)
    return {
        "first_loss": history["loss"][0] if history["loss"] else float("nan"),
        "final_loss": sum(history["loss"][-10:]) / max(1, len(history["loss"][-10:])),
        "validation_loss": val_loss,
        "validation_nats_per_byte": per_byte,
        "gpt2_gpu_hours": costs["gpt2"]["gpu_hours"],
    }


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Decay every parameter (one group) and then none, and compare the validation loss
#    of the demo's run with the two-group rule. At this scale, does it matter?
# 2. Replace the cosine with a constant rate and a linear decay over the last 20 % of
#    the steps (warm-up-stable-decay). Which reaches the lower loss for the same number
#    of steps, and which would let you extend a finished run?
# 3. Train with `--micro-batch 4 --accumulation 4` and with `--micro-batch 16`: the
#    losses should agree closely. Time both; where does the time go?
# 4. Kill a run with Ctrl-C halfway (after at least one `--save-every` checkpoint),
#    resume it with `--resume out/pretraining/checkpoint`, and compare its
#    TensorBoard curves with an uninterrupted run's. What would break if the sampler's
#    generator were not in the checkpoint?
