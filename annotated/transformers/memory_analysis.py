r"""
---
title: The memory and compute of a training step
summary: >-
  Where the bytes and the FLOPs of a GPT training step go: parameters, gradients, Adam
  and master weights, activations per layer with Korthikanti et al.'s 34sbh + 5as²b and
  its selective and full recomputation, and 6N FLOPs per token, each formula matched to
  the byte and the FLOP against tensors measured on small GPTs.
time: 9 s
references:
  - key: korthikanti2022reducing
    authors: [Vijay Korthikanti, Jared Casper, Sangkug Lym, Lawrence McAfee,
      Michael Andersch, Mohammad Shoeybi, Bryan Catanzaro]
    title: Reducing Activation Recomputation in Large Transformer Models
    year: 2022
    venue: arXiv preprint (MLSys 2023)
    arxiv: "2205.05198"
  - key: kaplan2020scaling
    authors: [Jared Kaplan, Sam McCandlish, Tom Henighan, Tom B. Brown, Benjamin Chess,
      Rewon Child, Scott Gray, Alec Radford, Jeffrey Wu, Dario Amodei]
    title: Scaling Laws for Neural Language Models
    year: 2020
    venue: arXiv preprint
    arxiv: "2001.08361"
  - key: rajbhandari2020zero
    authors: [Samyam Rajbhandari, Jeff Rasley, Olatunji Ruwase, Yuxiong He]
    title: "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models"
    year: 2020
    venue: SC 2020
    arxiv: "1910.02054"
  - key: narayanan2021efficient
    authors: [Deepak Narayanan, Mohammad Shoeybi, Jared Casper, Patrick LeGresley,
      Mostofa Patwary, Vijay Korthikanti, Dmitri Vainbrand, Prethvi Kashinkunti,
      Julie Bernauer, Bryan Catanzaro, Amar Phanishayee, Matei Zaharia]
    title: >-
      Efficient Large-Scale Language Model Training on GPU Clusters Using
      Megatron-LM
    year: 2021
    venue: SC 2021
    arxiv: "2104.04473"
  - key: micikevicius2018mixed
    authors: [Paulius Micikevicius, Sharan Narang, Jonah Alben, Gregory Diamos,
      Erich Elsen, David Garcia, Boris Ginsburg, Michael Houston, Oleksii Kuchaiev,
      Ganesh Venkatesh, Hao Wu]
    title: Mixed Precision Training
    year: 2018
    venue: ICLR 2018
    arxiv: "1710.03740"
  - key: radford2019language
    authors: [Alec Radford, Jeffrey Wu, Rewon Child, David Luan, Dario Amodei,
      Ilya Sutskever]
    title: Language Models are Unsupervised Multitask Learners
    year: 2019
    venue: OpenAI technical report
    url: https://cdn.openai.com/better-language-models/language_models_are_unsupervised_multitask_learners.pdf
  - key: kingma2015adam
    authors: [Diederik P. Kingma, Jimmy Ba]
    title: "Adam: A Method for Stochastic Optimization"
    year: 2015
    venue: ICLR 2015
    arxiv: "1412.6980"
worksheet:
  - region: model_state_bytes
    hint: >-
      With n parameters of e bytes each: parameters and gradients are e * n each;
      Adam keeps two float32 moments (8 n) and a 4-byte step counter per parameter
      tensor, plus a float32 master copy (4 n) in mixed precision.
    tests: [test_model_states_are_16_bytes_per_parameter_exactly]
  - region: activation_bytes
    hint: >-
      Add up the prose's table with e bytes per value and 1-byte dropout masks (only
      if dropout > 0): per layer, the s*b*h-sized tensors (16 e, plus 2 masks), the
      a*s*s*b-sized scores and weights (e, plus a mask and the dropped copy), and the
      two LayerNorms' statistics (4 e s b). Selective recomputation drops the scores'
      share, full keeps only the layer's input (e s b h). Return the embedding's, one
      layer's and the head's bytes.
    tests:
      - test_float32_constants_are_66_and_9
      - test_gpt2_small_layer_in_mixed_precision
      - test_saved_bytes_equal_the_formula_per_part
  - region: training_flops
    hint: >-
      Per token: 6 FLOPs for every weight in a matrix product (72 L h^2 + 6 V h) plus
      12 L s h for the two attention products; recomputation adds another forward of
      the attention products (4 L s h, selective) or of every layer (24 L h^2 +
      4 L s h, full). Multiply by batch * seq tokens.
    tests:
      - test_counted_flops_equal_the_formula
      - test_flops_of_recomputation_and_the_6n_rule
---

Before a training run starts, two questions decide whether it can run at all: does one
step fit in the accelerator's memory, and how long will all the steps take? Both have
answers on paper. A training step with Adam holds four things:

- the **parameters**, $N$ numbers;
- their **gradients**, $N$ more;
- the **optimizer state**: Adam's two moving averages [@kingma2015adam], and in mixed
  precision a float32 master copy of every weight [@micikevicius2018mixed], which
  together make the "16 bytes per parameter" of ZeRO [@rajbhandari2020zero];
- the **activations**: every tensor the forward pass computes and the backward pass
  needs again, which grow with the batch and the sequence, not with $N$.

For a Transformer layer Korthikanti et al. count the last one in closed form: with
sequence length $s$, micro-batch $b$, hidden size $h$ and $a$ heads, a layer keeps

$$
sbh\left(34 + \frac{5as}{h}\right) \text{ bytes in 16-bit training,}
$$

and *recomputation* trades some of it for a second forward pass
[@korthikanti2022reducing]. The compute has a closed form too: about $6N$ floating-point
operations per token, $2N$ forward and $4N$ backward [@kaplan2020scaling], plus an
attention term that grows with $s$ [@narayanan2021efficient].

This chapter builds a small GPT-2 [@radford2019language], derives each formula term by
term for exactly this model (its dropout masks, its float32 or bfloat16 values, the
LayerNorm statistics the paper leaves out), and then checks every one against what
PyTorch actually holds: parameter and optimizer-state tensors by their sizes, the
activations by the tensors autograd saves for backward, the FLOPs with
`torch.utils.flop_counter.FlopCounterMode`. The formulas match to the byte and to the
FLOP. The demo then uses them where measuring is not possible here: GPT-2 small to XL.
The peak of a CNN step, and checkpointing written from scratch, are in
[the memory of a training step](../cnn/memory.md); sharding the 16 bytes per parameter
over several processes is in [data-parallel training](../systems/data_parallel.md).
"""

import argparse
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from annotated.data import integer, names_from, torch_device
from annotated.figures import figure, save

# ## The model
#
# A GPT-2 in miniature: token and position embeddings, $L$ pre-LayerNorm blocks of
# causal self-attention and a $4h$ MLP, a final LayerNorm, and a language-model head
# that reuses the token embedding matrix, as GPT-2 does. Every size is in one
# `Config`. The symbols used below: $V$ `vocab_size`, $L$ `layers`, $h$ `hidden`,
# $a$ `heads`, the context length `n_ctx`, and at run time the batch $b$ and the
# sequence length $s \le$ `n_ctx`.
#
# `recompute` chooses what the backward pass computes again instead of keeping:
# `"none"`, `"selective"` (the attention core) or `"full"` (whole layers), described in
# their own section below.

RECOMPUTE = ("none", "selective", "full")


@dataclass(frozen=True)
class Config:
    """The sizes of a GPT; `recompute` is one of `RECOMPUTE`."""

    vocab_size: int = 256  # V, tokens in the vocabulary
    n_ctx: int = 64  # longest sequence; the position embedding has one row per slot
    layers: int = 2  # L, Transformer blocks
    hidden: int = 64  # h, width of the residual stream
    heads: int = 4  # a, attention heads of hidden / heads each
    dropout: float = 0.1  # after the embedding, the attention weights, each block
    recompute: str = "none"  # what backward recomputes: none, selective or full

    def __post_init__(self):
        for name in ("vocab_size", "n_ctx", "layers", "hidden", "heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Config.{name} must be a positive int, got {value!r}")
        if self.hidden % self.heads:
            raise ValueError(
                f"Config.hidden ({self.hidden}) must be a multiple of Config.heads "
                f"({self.heads})"
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"Config.dropout must be in [0, 1), got {self.dropout!r}")
        if self.recompute not in RECOMPUTE:
            raise ValueError(
                f"Config.recompute must be one of {RECOMPUTE}, got {self.recompute!r}"
            )


# ### Dropout with a one-byte mask
#
# Korthikanti et al. count a dropout mask as one byte per element. PyTorch keeps such a
# mask only where it takes its fused kernel: `F.dropout` on a GPU calls
# `native_dropout`, which saves a `bool` mask, but on a CPU it multiplies by a noise
# tensor of the input's own dtype and saves that, four bytes per element in float32
# (`at::dropout` in `aten/src/ATen/native/Dropout.cpp` picks the path). Calling
# `torch.native_dropout` directly saves the one-byte mask on every device, so the
# memory below is the same on a laptop and on a GPU.


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout with probability `p` that saves a `bool` mask for backward."""
    if not training or p == 0:
        return x
    return torch.native_dropout(x, p, True)[0]


# ### Causal self-attention
#
# One linear layer makes queries, keys and values for all heads at once; each head
# scores every earlier position, normalises with a softmax, drops some weights, and
# averages the values [@radford2019language]:
#
# $$
# \mathrm{head}_i = \mathrm{dropout}\!\left(\mathrm{softmax}\!\left(
# \frac{Q_i K_i^\top}{\sqrt{h/a}} + M\right)\right) V_i,
# $$
#
# where $M$ is $-\infty$ above the diagonal. `attention_core` is the part between the
# two linear layers: it is what *selective* recomputation recomputes, so it is a
# function of its own. Its score matrices are $a \times s \times s$ per sequence, the
# $as/h$ term of the memory formula. The [attention chapter](attention.md) builds the
# same equation with every kind of mask; here it is restated in six lines so that
# each tensor it saves is in plain view. `torch.fx.wrap` makes it one node of the
# dataflow diagram above, since its mask is sliced to the sequence's length.


@torch.fx.wrap
def attention_core(
    q: Tensor, k: Tensor, v: Tensor, future: Tensor, p: float, training: bool
) -> Tensor:
    """`dropout(softmax(q kᵀ / √d + mask)) v` for `q, k, v` of `[b, a, s, d]`, where
    the mask hides the positions `future [n_ctx, n_ctx]` marks."""
    s = q.shape[2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # [b, a, s, s]
    scores = scores.masked_fill(future[:s, :s], float("-inf"))
    weights = dropout(torch.softmax(scores, dim=-1), p, training)  # [b, a, s, s]
    return weights @ v  # [b, a, s, d]


class Attention(nn.Module):
    """Multi-head causal self-attention with one fused query-key-value projection."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.qkv = nn.Linear(config.hidden, 3 * config.hidden)
        self.proj = nn.Linear(config.hidden, config.hidden)
        future = torch.ones(config.n_ctx, config.n_ctx, dtype=torch.bool).triu(1)
        self.register_buffer("future", future, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        b, s, h = x.shape
        a = self.config.heads
        q, k, v = self.qkv(x).split(h, dim=2)  # 3 × [b, s, h]
        q = q.view(b, s, a, h // a).transpose(1, 2)  # [b, a, s, d]
        k = k.view(b, s, a, h // a).transpose(1, 2)  # [b, a, s, d]
        v = v.view(b, s, a, h // a).transpose(1, 2)  # [b, a, s, d]
        args = (q, k, v, self.future, self.config.dropout, self.training)
        if self.config.recompute == "selective" and self.training:
            y = checkpoint(attention_core, *args, use_reentrant=True)
        else:
            y = attention_core(*args)  # [b, a, s, d]
        y = y.transpose(1, 2).contiguous().view(b, s, h)  # [b, s, h]
        return self.proj(y)  # [b, s, h]


# ### The block and the model
#
# GPT-2's MLP widens to $4h$, applies the tanh approximation of GELU, and narrows back.
# A block adds each sub-layer's output to the residual stream after a LayerNorm of its
# input (pre-LN) and a dropout of its output. With full recomputation each block
# runs under `torch.utils.checkpoint`, which keeps only the block's input.
#
# Both checkpoints use the *reentrant* variant (`use_reentrant=True`): it saves its
# inputs with `ctx.save_for_backward`, where the measuring hook below sees them. The
# non-reentrant variant keeps its inputs alive through a closure instead, out of the
# hook's sight, though the bytes are the same. The reentrant variant has one price:
# `torch.autograd.grad` refuses to run through it, only `.backward()` does. Both keep
# the random-number generator's state (5 KB for the CPU generator, as a plain
# attribute, not a saved tensor), so the dropout masks drawn again during backward are
# the ones drawn in the forward pass.


class MLP(nn.Module):
    """`Linear(h, 4h)`, tanh-GELU, `Linear(4h, h)`."""

    def __init__(self, config: Config):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden, 4 * config.hidden)
        self.fc2 = nn.Linear(4 * config.hidden, config.hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))  # [b, s, h]


class Block(nn.Module):
    """A pre-LayerNorm Transformer block: attention, then MLP, each residual."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.ln1 = nn.LayerNorm(config.hidden)
        self.attn = Attention(config)
        self.ln2 = nn.LayerNorm(config.hidden)
        self.mlp = MLP(config)

    def forward(self, x: Tensor) -> Tensor:
        if self.config.recompute == "full" and self.training:
            return checkpoint(self.residual_branches, x, use_reentrant=True)
        return self.residual_branches(x)

    def residual_branches(self, x: Tensor) -> Tensor:
        p, training = self.config.dropout, self.training
        x = x + dropout(self.attn(self.ln1(x)), p, training)  # [b, s, h]
        return x + dropout(self.mlp(self.ln2(x)), p, training)  # [b, s, h]


# The token ids are checked where they enter. `torch.fx`, which draws this page's
# dataflow diagram, cannot trace a Python `if` on a tensor's shape, so `torch.fx.wrap`
# records `check_tokens` as one opaque node.


@torch.fx.wrap
def check_tokens(tokens: Tensor, vocab_size: int, n_ctx: int) -> Tensor:
    """Return `tokens` if it is an integer `[batch, seq]` tensor of ids below
    `vocab_size` with `seq <= n_ctx`; raise naming what is wrong otherwise."""
    if not isinstance(tokens, Tensor) or tokens.is_floating_point():
        raise TypeError(
            f"tokens must be an integer tensor of token ids, got "
            f"{getattr(tokens, 'dtype', type(tokens).__name__)}"
        )
    if tokens.dim() != 2 or tokens.numel() == 0:
        raise ValueError(f"tokens must be [batch, seq], got {tuple(tokens.shape)}")
    if tokens.shape[1] > n_ctx:
        raise ValueError(f"tokens has {tokens.shape[1]} positions but n_ctx is {n_ctx}")
    if tokens.min() < 0 or tokens.max() >= vocab_size:
        raise ValueError(f"tokens must be ids in [0, {vocab_size})")
    return tokens


class GPT(nn.Module):
    """Embeddings, `layers` blocks, a final LayerNorm and a tied language-model head."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.hidden)
        self.wpe = nn.Embedding(config.n_ctx, config.hidden)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.ln_f = nn.LayerNorm(config.hidden)

    def forward(self, tokens: Tensor) -> Tensor:
        tokens = check_tokens(tokens, self.config.vocab_size, self.config.n_ctx)
        positions = torch.arange(tokens.shape[1], device=tokens.device)  # [s]
        x = self.wte(tokens) + self.wpe(positions)  # [b, s, h]
        x = dropout(x, self.config.dropout, self.training)
        for block in self.blocks:
            x = block(x)  # [b, s, h]
        return F.linear(self.ln_f(x), self.wte.weight)  # [b, s, V]


# The loss upcasts 16-bit logits to float32 before the softmax, as mixed-precision
# training does: a 16-bit log-softmax over 50,000 words loses the small
# probabilities. That one cast makes the loss the largest single activation of a small
# model, $4sbV$ bytes.


def lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of `logits [b, s, V]` against `targets [b, s]`, in float32."""
    if not isinstance(targets, Tensor) or targets.is_floating_point():
        raise TypeError("targets must be an integer tensor of token ids")
    if targets.shape != logits.shape[:2]:
        raise ValueError(
            f"targets must be {tuple(logits.shape[:2])} like the logits' "
            f"[batch, seq], got {tuple(targets.shape)}"
        )
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


# ## Counting parameters
#
# Every `nn.Linear(m, n)` holds $mn + n$ numbers and every LayerNorm $2h$. A block has
# the query-key-value projection ($3h^2 + 3h$), the output projection ($h^2 + h$), the
# MLP ($4h^2 + 4h$ and $4h^2 + h$) and two LayerNorms ($4h$):
#
# $$
# \begin{aligned}
# N &= L\,(12h^2 + 13h) + Vh + n_{\mathrm{ctx}}h + 2h.
# \end{aligned}
# $$
#
# The head adds nothing: it is the token embedding, transposed. For GPT-2 small
# ($L = 12$, $h = 768$, $V = 50257$, $n_{\mathrm{ctx}} = 1024$) that is 124,439,808,
# the number Hugging Face's `GPT2LMHeadModel` reports. The test builds that model, and
# ours, on the `meta` device (shapes without memory) for all four GPT-2 sizes and
# compares their parameter counts, the tied head counted once, with this formula.


def parameter_count(config: Config) -> int:
    """Parameters of `GPT(config)`, counted from its sizes."""
    L, h = config.layers, config.hidden
    return L * (12 * h * h + 13 * h) + config.vocab_size * h + config.n_ctx * h + 2 * h


def parameter_tensors(config: Config) -> int:
    """How many parameter tensors `GPT(config)` has: twelve per block, four besides."""
    return 12 * config.layers + 4


# ## Model states: parameters, gradients, Adam
#
# In float32 training each parameter has four bytes, its gradient four, and Adam's two
# moving averages, `exp_avg` and `exp_avg_sq`, eight: $16N$.
#
# Mixed precision keeps the model in 16 bits (2 bytes a parameter, 2 a gradient) and
# does the update on a float32 *master* copy, because a 16-bit weight cannot absorb an
# update a thousand times smaller than itself (the
# [mixed-precision chapter](../systems/mixed_precision.md) shows the stall). The master
# copy is 4 bytes and Adam's moments stay in float32 too, 8 more:
#
# $$
# \underbrace{2N}_{\text{params}} + \underbrace{2N}_{\text{grads}}
# + \underbrace{4N + 4N + 4N}_{\text{master},\ m,\ v} = 16N,
# $$
#
# ZeRO's $(2 + 2 + K)N$ with $K = 12$ [@rajbhandari2020zero]. The same 16 bytes as
# float32, spent differently; mixed precision saves on the activations and on time,
# not on the model states. PyTorch's Adam also keeps a float32 `step` counter per
# parameter tensor, four bytes each, which papers rightly leave out and this
# chapter counts so that the test can be exact.

BYTES = {"float32": 4, "mixed": 2}  # bytes of one activation or model parameter

# Every formula takes a precision by name, and those of a step a batch and a sequence
# length; one checker each names the argument that is wrong.


def check_precision(precision: str) -> None:
    """Raise unless `precision` is a key of `BYTES`."""
    if precision not in BYTES:
        raise ValueError(f"precision must be one of {tuple(BYTES)}, got {precision!r}")


def check_sizes(config: Config, batch: int, seq: int | None) -> int:
    """Return `seq` (default `n_ctx`) after checking that `batch` and `seq` are positive
    ints and `seq <= n_ctx`."""
    seq = config.n_ctx if seq is None else seq
    for name, value in (("batch", batch), ("seq", seq)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if seq > config.n_ctx:
        raise ValueError(f"seq must be at most n_ctx = {config.n_ctx}, got {seq}")
    return seq


def model_state_bytes(config: Config, precision: str = "float32") -> dict[str, int]:
    """Bytes of the parameters, the gradients and the optimizer state (Adam's moments,
    its step counters and, in mixed precision, the float32 master weights)."""
    check_precision(precision)
    n, e = parameter_count(config), BYTES[precision]
    master = 4 * n if precision == "mixed" else 0
    optimizer = master + 8 * n + 4 * parameter_tensors(config)
    return {"parameters": e * n, "gradients": e * n, "optimizer": optimizer}


# The mixed-precision update is short enough to write out. `torch.optim.Adam` runs on
# the float32 masters; each step copies the 16-bit gradients up to them, updates, and
# copies the new weights back down. bfloat16 has float32's exponent range, so unlike
# float16 it needs no loss scaling.


class MasterWeightAdam:
    """Adam on float32 master copies of a 16-bit model's parameters."""

    def __init__(self, params, lr: float = 1e-3):
        self.params = list(params)
        if any(p.dtype not in (torch.float16, torch.bfloat16) for p in self.params):
            raise TypeError("MasterWeightAdam: params must be float16 or bfloat16")
        self.master = [p.detach().float() for p in self.params]
        self.adam = torch.optim.Adam(self.master, lr=lr)

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for param, master in zip(self.params, self.master):
            master.grad = param.grad.float()
        self.adam.step()
        for param, master in zip(self.params, self.master):
            param.copy_(master)
            master.grad = None  # the float32 gradient lives only during the update


def make_optimizer(model: nn.Module, precision: str = "float32", lr: float = 1e-3):
    """Adam for a float32 model; `MasterWeightAdam` for a bfloat16 one."""
    check_precision(precision)
    if precision == "float32":
        return torch.optim.Adam(model.parameters(), lr=lr)
    return MasterWeightAdam(model.parameters(), lr=lr)


# Measured: the bytes of the tensors themselves. The optimizer's are the tensors in its
# `state` (and the master weights), exactly what `optimizer.state_dict()` would save.


def tensor_bytes(tensors) -> int:
    """Total bytes of `tensors`."""
    return sum(t.numel() * t.element_size() for t in tensors)


def measured_state_bytes(model: nn.Module, optimizer) -> dict[str, int]:
    """Bytes of `model`'s parameters and gradients and of `optimizer`'s state, read
    from the tensors."""
    params = list(model.parameters())
    if isinstance(optimizer, MasterWeightAdam):
        adam, master = optimizer.adam, optimizer.master
    else:
        adam, master = optimizer, []
    state = [t for s in adam.state.values() for t in s.values() if torch.is_tensor(t)]
    return {
        "parameters": tensor_bytes(params),
        "gradients": tensor_bytes(p.grad for p in params if p.grad is not None),
        "optimizer": tensor_bytes(state) + tensor_bytes(master),
    }


# ## Activations, term by term
#
# An activation costs memory from the moment the forward pass makes it until the
# backward pass has used it. Which ones are kept is decided operation by operation:
# a linear layer keeps its input (for the weight gradient $\bar W = \bar y^\top x$), a
# GELU its input, a softmax its output, a LayerNorm its input and two statistics per
# row, a dropout its mask; an addition or a reshape keeps nothing. Going through one
# block in order, with $e$ bytes per value and one byte per mask element:
#
# | operation | keeps | bytes |
# | --- | --- | --- |
# | LayerNorm 1 | its input | $e\,sbh$ |
# | Q, K, V projection | LayerNorm output | $e\,sbh$ |
# | $QK^\top$ | $Q$ and $K$ | $2e\,sbh$ |
# | softmax | its output | $e\,as^2b$ |
# | attention dropout | mask | $as^2b$ |
# | weights $\times V$ | dropped weights, $V$ | $e\,as^2b + e\,sbh$ |
# | output projection | its input | $e\,sbh$ |
# | dropout | mask | $sbh$ |
# | LayerNorm 2 | its input | $e\,sbh$ |
# | MLP in, $h \to 4h$ | LayerNorm output | $e\,sbh$ |
# | GELU | its input | $4e\,sbh$ |
# | MLP out, $4h \to h$ | GELU output | $4e\,sbh$ |
# | dropout | mask | $sbh$ |
#
# The sum is $sbh(16e + 2) + as^2b(2e + 1)$. In 16-bit training, $e = 2$:
#
# $$
# sbh\,(32 + 2) + as^2b\,(4 + 1) = sbh\left(34 + \frac{5as}{h}\right),
# $$
#
# Korthikanti et al.'s equation, every constant accounted for
# [@korthikanti2022reducing]. In float32, $e = 4$, it is $sbh(66 + 9as/h)$: the values
# double, the masks do not. Without dropout the three masks vanish and the softmax
# output *is* the tensor multiplied by $V$, kept once: $16e\,sbh + e\,as^2b$.
#
# What the paper leaves out is small: each LayerNorm keeps a mean and an inverse
# standard deviation per token, $4e\,sb$ per block in all (on a CPU they have the
# input's dtype), $1/(4h)$ of the block's $16e\,sbh$.
#
# Outside the blocks: the embedding keeps the token ids (8-byte integers, $8sb$), the
# positions ($8s$) and its dropout mask ($sbh$); the head keeps the final LayerNorm's
# input and statistics ($e\,sbh + 2e\,sb$), the head's input ($e\,sbh$), the float32
# log-softmax ($4sbV$), the targets ($8sb$) and a 4-byte scalar, the loss's count of
# targets.


# ## Recomputation
#
# The $5as/h$ term is the attention matrices: at GPT-3's $s = 2048$, $a = 96$,
# $h = 12288$ it is 80, more than twice the 34 of everything else. Yet the operations
# that produce them (two batched matrix products, a softmax, a dropout) are cheap
# compared with the projections. *Selective* recomputation keeps everything but them:
# the attention core is checkpointed, keeping only its inputs $Q, K, V$, which the
# table already counts, and recomputing the rest during backward. The layer drops to
# $34\,sbh$, at the cost of re-running the two attention products.
#
# *Full* recomputation checkpoints whole layers: only each layer's input is kept,
# $e\,sbh$ ($2sbh$ in 16 bits), and the whole forward pass of the layers runs twice.


def activation_bytes(
    config: Config, batch: int, seq: int | None = None, precision: str = "float32"
) -> dict[str, int]:
    """Bytes autograd keeps for backward in one forward pass of `GPT(config)` on
    `batch` sequences of `seq` tokens (default `n_ctx`): the embedding's, one layer's
    and the head's."""
    check_precision(precision)
    s, b = check_sizes(config, batch, seq), batch
    h, a, V = config.hidden, config.heads, config.vocab_size
    e, masks = BYTES[precision], int(config.dropout > 0)
    values = s * b * h * (16 * e + 2 * masks)  # the sbh rows of the table
    scores = a * s * s * b * (e + masks * (e + 1))  # the as²b rows
    statistics = 4 * e * s * b  # two LayerNorms' mean and 1/std
    layer = {
        "none": values + scores + statistics,
        "selective": values + statistics,
        "full": e * s * b * h,  # the block's input, kept by its checkpoint
    }[config.recompute]
    return {
        "embedding": 8 * s * b + 8 * s + masks * s * b * h,
        "layer": layer,
        "head": 2 * e * s * b * h + 2 * e * s * b + 4 * s * b * V + 8 * s * b + 4,
    }


# For comparison, the paper's three cases per layer, in 16-bit bytes, without the
# LayerNorm statistics:


def korthikanti_layer_bytes(
    seq: int, batch: int, hidden: int, heads: int, recompute: str = "none"
) -> int:
    """Korthikanti et al.'s activation bytes of one 16-bit Transformer layer."""
    s, b, h, a = seq, batch, hidden, heads
    return {
        "none": s * b * h * 34 + 5 * a * s * s * b,
        "selective": 34 * s * b * h,
        "full": 2 * s * b * h,
    }[recompute]


# ## Measuring what autograd keeps
#
# `torch.autograd.graph.saved_tensors_hooks` calls a *pack* hook on every tensor a
# backward node saves; the [CNN memory chapter](../cnn/memory.md) uses it the same way.
# Two saved tensors can share memory: the three views $Q, K, V$ of one projection
# output, or the softmax output that the next product saves again. So each *storage*
# is counted once. The parameters and the causal mask are saved too, but they exist
# anyway, so they are skipped. A forward pre-hook on each block and on the final
# LayerNorm records which part of the model is running, so that every storage is
# charged to the part that saved it first.


def saved_bytes(model: GPT, tokens: Tensor, targets: Tensor) -> dict[str, int]:
    """Bytes of the distinct storages autograd saves in `lm_loss(model(tokens),
    targets)`, by part: `"embedding"`, `"layer 0"`, ..., `"head"`."""
    skip = {
        t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]
    }
    parts = ["embedding"] + [f"layer {i}" for i in range(len(model.blocks))] + ["head"]
    running = {"part": "embedding"}
    storages = {}  # address -> (part, bytes)

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip and storage.data_ptr() not in storages:
            storages[storage.data_ptr()] = (running["part"], storage.nbytes())
        return tensor

    def enter(part: str):
        def hook(module: nn.Module, args: tuple) -> None:
            running["part"] = part

        return hook

    modules = [*model.blocks, model.ln_f]
    hooks = [m.register_forward_pre_hook(enter(p)) for m, p in zip(modules, parts[1:])]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            lm_loss(model(tokens), targets)
    finally:
        for hook in hooks:
            hook.remove()
    totals = dict.fromkeys(parts, 0)
    for part, nbytes in storages.values():
        totals[part] += nbytes
    return totals


# ## Compute: 6N per token
#
# A linear layer with an $m \times n$ weight costs $2mn$ FLOPs per token forward (a
# multiply and an add per weight). Backward costs twice that: one product for the
# input's gradient $\bar x = \bar y W$, one for the weight's, $\bar W = \bar y^\top x$.
# So every weight used in a matrix product costs 6 FLOPs per token in a training step,
# and with $N$ weights, $6N$ per token [@kaplan2020scaling]. The attention products
# $QK^\top$ and (weights)$\,V$ use no weights: per token and layer they cost $2sh$
# each forward, $12sh$ for the step [@narayanan2021efficient]. Altogether:
#
# $$
# \begin{aligned}
# C &\approx 6N + 12\,Lsh \ \text{ FLOPs per token}.
# \end{aligned}
# $$
#
# `FlopCounterMode` intercepts every matrix product at the dispatcher and adds up
# $2mnk$; it does not count element-wise work (softmax, GELU, LayerNorm, Adam), and
# neither does $6N$. What it counts exactly is $6$ times the weights that take part
# in a product, $72Lh^2 + 6Vh$, not the biases, LayerNorms or position table, which
# are $6(13Lh + n_{\mathrm{ctx}}h + 2h)$ of $6N$: 0.7% of GPT-2 small. The tied head
# matters here: Kaplan et al. count non-embedding parameters and add the head's
# $2Vh$ separately; with the embedding matrix counted once in $N$, $6N$ includes it.
# The counter also counts all $s^2$ scores where a causal kernel such as
# FlashAttention would skip the upper half.
#
# Recomputation adds forward passes: full recomputation runs every layer forward
# again, $+24Lh^2 + 4Lsh$ per token ($8N$ instead of $6N$); selective only the two
# attention products, $+4Lsh$.


def training_flops(config: Config, batch: int, seq: int | None = None) -> int:
    """FLOPs of the matrix products of one forward and backward pass of `GPT(config)`
    on `batch` sequences of `seq` tokens (default `n_ctx`), recomputation included."""
    seq = check_sizes(config, batch, seq)
    L, h, V = config.layers, config.hidden, config.vocab_size
    weights = 72 * L * h * h + 6 * V * h  # 6 per weight in a product, per token
    attention = 12 * L * seq * h
    again = {
        "none": 0,
        "selective": 4 * L * seq * h,  # QKᵀ and weights × V forward
        "full": 24 * L * h * h + 4 * L * seq * h,  # every layer forward
    }[config.recompute]
    return (weights + attention + again) * batch * seq


def six_n_flops(config: Config, batch: int, seq: int | None = None) -> int:
    """The rule of thumb, $(6N + 12Lsh)$ per token, for the same step without
    recomputation."""
    seq = check_sizes(config, batch, seq)
    per_token = 6 * parameter_count(config) + 12 * config.layers * seq * config.hidden
    return per_token * batch * seq


def counted_flops(model: GPT, tokens: Tensor, targets: Tensor) -> int:
    """The FLOPs `FlopCounterMode` counts in one forward and backward pass."""
    with FlopCounterMode(display=False) as counter:
        lm_loss(model(tokens), targets).backward()
    return counter.get_total_flops()


# ## One measured step
#
# `measure` builds a model, runs one Adam step, and reads everything the formulas
# predict: the parameter count, the activations autograd saves by part, the FLOPs of
# forward and backward, and the model states after the step, when every gradient and
# every Adam moment exists.


def make_batch(
    config: Config, batch: int, seq: int | None = None, seed: int = 0, device="cpu"
) -> tuple[Tensor, Tensor]:
    """Random token ids and next-token targets, `[batch, seq]` each, as separate
    tensors."""
    seq = config.n_ctx if seq is None else seq
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(config.vocab_size, (batch, seq + 1), generator=generator)
    return tokens[:, :-1].clone().to(device), tokens[:, 1:].clone().to(device)


def measure(
    config: Config,
    batch: int,
    seq: int | None = None,
    precision: str = "float32",
    seed: int = 0,
    device: str = "cpu",
) -> dict:
    """Run one training step of `GPT(config)` and return what it measured."""
    check_precision(precision)
    torch.manual_seed(seed)
    dtype = torch.float32 if precision == "float32" else torch.bfloat16
    model = GPT(config).to(device=device, dtype=dtype)
    optimizer = make_optimizer(model, precision)
    tokens, targets = make_batch(config, batch, seq, seed, device)
    activations = saved_bytes(model, tokens, targets)
    flops = counted_flops(model, tokens, targets)
    optimizer.step()
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "activations": activations,
        "flops": flops,
        "states": measured_state_bytes(model, optimizer),
    }


# ## GPT-2's sizes
#
# The four published GPT-2 models [@radford2019language], with their vocabulary and
# context of 1024 tokens. Measuring them here would take minutes per step; the
# formulas, checked above on small models, give their memory in microseconds.

GPT2 = {
    "GPT-2 small": Config(
        vocab_size=50257, n_ctx=1024, layers=12, hidden=768, heads=12
    ),
    "GPT-2 medium": Config(
        vocab_size=50257, n_ctx=1024, layers=24, hidden=1024, heads=16
    ),
    "GPT-2 large": Config(
        vocab_size=50257, n_ctx=1024, layers=36, hidden=1280, heads=20
    ),
    "GPT-2 XL": Config(vocab_size=50257, n_ctx=1024, layers=48, hidden=1600, heads=25),
}

# The small models the demo measures, each twice (float32 and bfloat16) and in each
# recomputation mode.

MEASURED = {
    "2×64": Config(vocab_size=256, n_ctx=64, layers=2, hidden=64, heads=4),
    "3×96": Config(vocab_size=384, n_ctx=96, layers=3, hidden=96, heads=6),
    "4×128": Config(vocab_size=512, n_ctx=128, layers=4, hidden=128, heads=8),
}


def breakdown(
    config: Config, batch: int, seq: int | None = None, precision: str = "mixed"
) -> dict[str, int]:
    """Bytes of one training step by component, from the formulas."""
    states = model_state_bytes(config, precision)
    act = activation_bytes(config, batch, seq, precision)
    return {
        "parameters": states["parameters"],
        "gradients": states["gradients"],
        "optimizer": states["optimizer"],
        "activations": act["embedding"] + config.layers * act["layer"] + act["head"],
    }


def example():
    """A small example: `fn(*args)` is a forward pass of a two-layer GPT."""
    torch.manual_seed(0)
    config = MEASURED["2×64"]
    tokens, _ = make_batch(config, batch=2, seq=16)
    return GPT(config), (tokens,)


# ## The demo
#
# The demo measures the small models, every component in both precisions and every
# recomputation mode, and prints the largest gap between formula and measurement (zero
# bytes and zero FLOPs when they agree). Then it draws the formulas' breakdown from the
# smallest measured model to GPT-2 XL in mixed precision.
#
# The numbers for GPT-2 small at micro-batch 8 of 1024 tokens: 11.4 GiB in all, of
# which the 16 bytes per parameter are 1.9 GiB and the activations 9.6 GiB (84%).
# Selective recomputation cuts the activations to 3.95 GiB, full recomputation to
# 1.70 GiB, and then 1.53 GiB of that is a single tensor, the loss's float32
# log-softmax over 50,257 words, $4sbV$. That is why large-vocabulary trainers compute
# the loss in chunks. Only at the small measured models do the model states weigh as
# much as the activations: there $V$, $s$ and $h$ are all small.


def compare(config: Config, batch: int, precision: str, device: str) -> dict:
    """Measure one step of `GPT(config)` and return the largest relative gaps to the
    formulas."""
    got = measure(config, batch, precision=precision, device=device)
    act = activation_bytes(config, batch, precision=precision)
    want_act = {"embedding": act["embedding"], "head": act["head"]}
    want_act |= {f"layer {i}": act["layer"] for i in range(config.layers)}
    states = model_state_bytes(config, precision)

    def gap(measured: dict, predicted: dict) -> float:
        return max(abs(measured[k] - predicted[k]) / predicted[k] for k in predicted)

    return {
        "activations": gap(got["activations"], want_act),
        "states": gap(got["states"], states),
        "parameters": abs(got["parameters"] / parameter_count(config) - 1),
        "flops": abs(got["flops"] / training_flops(config, batch) - 1),
        "6N": got["flops"] / six_n_flops(config, batch),
        "measured": sum(got["activations"].values()) + sum(got["states"].values()),
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Check every formula on small GPTs; draw the breakdown up to GPT-2 XL."""
    parser = argparse.ArgumentParser(
        description="Memory and FLOPs of a GPT training step: formulas against "
        "measured tensors and counted FLOPs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--configs",
        type=names_from(MEASURED),
        default=",".join(MEASURED),
        help=f"comma-separated small models to measure, from {', '.join(MEASURED)}",
    )
    parser.add_argument(
        "--batch", type=integer(at_least=1), default=4, help="micro-batch measured"
    )
    parser.add_argument(
        "--gpt2-batch",
        type=integer(at_least=1),
        default=8,
        help="micro-batch of the GPT-2 breakdown",
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to measure on",
    )
    parser.add_argument("--out", default="out/memory_analysis", help="figure folder")
    args = parser.parse_args(argv)
    names = args.configs
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    runs = [
        (name, precision, recompute)
        for name in names
        for precision in BYTES
        for recompute in RECOMPUTE
    ]
    worst = {"activations": 0.0, "states": 0.0, "parameters": 0.0, "flops": 0.0}
    measured_totals, six_n = {}, {}
    for name, precision, recompute in tqdm(runs, desc="measured steps"):
        config = replace(MEASURED[name], recompute=recompute)
        gaps = compare(config, args.batch, precision, args.device)
        worst = {key: max(value, gaps[key]) for key, value in worst.items()}
        measured_totals[name, precision, recompute] = gaps["measured"]
        if recompute == "none":
            six_n[name] = gaps["6N"]
    for key, value in worst.items():
        print(f"largest gap, formula vs measured {key:11s}: {value:.1e}")
    for name, ratio in six_n.items():
        print(f"{name}: counted FLOPs / (6N + 12Lsh) per token = {ratio:.3f}")

    sizes = {name: MEASURED[name] for name in names} | GPT2
    rows = {}
    for name, config in sizes.items():
        batch = args.batch if name in MEASURED else args.gpt2_batch
        for recompute in RECOMPUTE:
            rows[name, recompute] = breakdown(
                replace(config, recompute=recompute), batch
            )
    small = rows["GPT-2 small", "none"]
    total = sum(small.values())
    print(
        f"GPT-2 small, mixed precision, batch {args.gpt2_batch} × 1024 tokens: "
        + ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in small.items())
        + f"; total {total / 2**30:.2f} GiB"
    )
    for recompute in RECOMPUTE[1:]:
        act = rows["GPT-2 small", recompute]["activations"]
        print(f"  activations with {recompute} recomputation: {act / 2**30:.2f} GiB")
    plot_breakdown(rows, sizes, measured_totals, args, out)
    return {
        "activation gap": worst["activations"],
        "state gap": worst["states"],
        "parameter gap": worst["parameters"],
        "flop gap": worst["flops"],
        "6N ratio": six_n[names[-1]],
        "GPT-2 small GiB": total / 2**30,
        "GPT-2 small activation share": small["activations"] / total,
    }


LABELS = {
    "parameters": "params",
    "gradients": "grads",
    "optimizer": "Adam + master",
    "activations": "activations",
}


def plot_breakdown(rows, sizes, measured_totals, args, out: Path) -> None:
    """Stacked shares of each component (left) and totals by recomputation (right)."""
    fig, (left, right) = figure(panels=2)
    names = list(sizes)
    bottom = [0.0] * len(names)
    for component in LABELS:
        share = [
            rows[name, "none"][component] / sum(rows[name, "none"].values())
            for name in names
        ]
        left.bar(range(len(names)), share, bottom=bottom, label=LABELS[component])
        bottom = [b + s for b, s in zip(bottom, share)]
    for i, name in enumerate(names):
        total = sum(rows[name, "none"].values())
        size = (
            f"{total / 2**30:.1f} GiB" if total > 2**30 else f"{total / 2**20:.1f} MiB"
        )
        left.text(i, 0.97, size, rotation=90, ha="center", va="top", color="white")
    ticks = [n.replace("GPT-2 ", "") + ("*" if n in MEASURED else "") for n in names]
    left.set_xticks(range(len(names)), ticks)
    left.set_ylim(0, 1.25)
    left.set_ylabel("share of one step's memory")
    left.legend(loc="upper center", ncols=4, fontsize="small", handlelength=1)

    for recompute, marker in zip(RECOMPUTE, "osD"):
        counts = [parameter_count(sizes[name]) for name in names]
        totals = [sum(rows[name, recompute].values()) / 2**30 for name in names]
        right.plot(counts, totals, marker=marker, label=f"recompute: {recompute}")
        measured = [
            (parameter_count(sizes[name]), measured_totals[name, "mixed", recompute])
            for name in names
            if (name, "mixed", recompute) in measured_totals
        ]
        if measured:
            xs, ys = zip(*measured)
            right.plot(xs, [y / 2**30 for y in ys], "kx", markersize=8)
    right.plot([], [], "kx", label="measured")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("parameters $N$")
    right.set_ylabel("memory of one step (GiB)")
    right.legend()
    save(
        fig,
        out / "breakdown.png",
        caption="Memory of one mixed-precision Adam step by component, from the "
        f"formulas: the measured small models (*, micro-batch {args.batch}) to GPT-2 "
        f"XL (micro-batch {args.gpt2_batch} of 1024 tokens), as shares with the "
        "total written in each bar (left), and in total for each recomputation mode, "
        "with the totals measured on the small models marked (right).",
    )


if __name__ == "__main__":
    main()

# ## Exercises
#
# 1. Replace `attention_core` by `F.scaled_dot_product_attention` (flash or
#    memory-efficient backend on a GPU). Which terms of the table disappear, what
#    does the kernel keep instead, and what does `saved_bytes` report?
# 2. Measure the *peak* of a step with `torch.cuda.max_memory_allocated` (or the
#    profiler, as in [the CNN memory chapter](../cnn/memory.md)). Which of the four
#    components are alive at the peak, and when in the step does it occur?
# 3. Sequence parallelism splits the $sbh$ terms over $t$ tensor-parallel ranks
#    [@korthikanti2022reducing]. Extend `activation_bytes` with a `tensor_parallel`
#    argument that divides each layer's bytes by $t$ and leaves the embedding's and
#    the head's whole, and find the smallest $t$ for which GPT-2 XL with selective
#    recomputation fits in 32 GiB at micro-batch 8, its model states counted whole on
#    every rank. Why does no $t$ bring it under 24 GiB? Tensor parallelism also splits
#    most of the weights: how does that change the answer?
