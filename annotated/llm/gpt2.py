r"""
---
title: GPT-2
summary: >-
  GPT-2 written out in one file: a config with the four published sizes, pre-LN blocks
  with a fused query-key-value projection, GELU, tied embeddings and the paper's scaled
  initialisation; Hugging Face's weights loaded by transposing its Conv1D matrices,
  logits and gradients matched to GPT2LMHeadModel, and sampling with temperature, top-k
  and top-p.
time: 20 s
expected:
  metric: validation_loss
  short: ["--steps", "30", "--batch", "8", "--length", "32", "--width", "32",
    "--new-tokens", "8"]
references:
  - key: radford2019language
    authors: [Alec Radford, Jeffrey Wu, Rewon Child, David Luan, Dario Amodei,
      Ilya Sutskever]
    title: Language Models are Unsupervised Multitask Learners
    year: 2019
    venue: OpenAI technical report
    url: https://cdn.openai.com/better-language-models/language_models_are_unsupervised_multitask_learners.pdf
  - key: vaswani2017attention
    authors: [Ashish Vaswani, Noam Shazeer, Niki Parmar, Jakob Uszkoreit, Llion Jones,
      Aidan N. Gomez, Łukasz Kaiser, Illia Polosukhin]
    title: Attention Is All You Need
    year: 2017
    venue: NeurIPS 2017
    arxiv: "1706.03762"
  - key: hendrycks2016gaussian
    authors: [Dan Hendrycks, Kevin Gimpel]
    title: Gaussian Error Linear Units (GELUs)
    year: 2016
    venue: arXiv preprint
    arxiv: "1606.08415"
  - key: press2017using
    authors: [Ofir Press, Lior Wolf]
    title: Using the Output Embedding to Improve Language Models
    year: 2017
    venue: EACL 2017
    arxiv: "1608.05859"
  - key: fan2018hierarchical
    authors: [Angela Fan, Mike Lewis, Yann Dauphin]
    title: Hierarchical Neural Story Generation
    year: 2018
    venue: ACL 2018
    arxiv: "1805.04833"
  - key: holtzman2020curious
    authors: [Ari Holtzman, Jan Buys, Li Du, Maxwell Forbes, Yejin Choi]
    title: The Curious Case of Neural Text Degeneration
    year: 2020
    venue: ICLR 2020
    arxiv: "1904.09751"
worksheet:
  - region: CausalSelfAttention.forward
    hint: >-
      One c_attn projection gives q, k and v side by side: split it in three along
      the width, view each as [batch, heads, seq, d_head], run
      F.scaled_dot_product_attention causally (with dropout only in training), merge
      the heads back to [batch, seq, width], and apply c_proj and the residual
      dropout.
    tests:
      - test_logits_and_gradients_match_hf
      - test_a_full_context_matches_hf
  - region: lm_loss
    hint: >-
      Check that labels are integer ids shaped like the logits' [batch, seq]; score
      the logits of positions 0 .. s-2, promoted to at least float32, against the
      labels of positions 1 .. s-1 with a mean cross-entropy that ignores -100.
    tests: [test_loss_and_its_gradients_match_hf]
  - region: generate
    hint: >-
      Check the arguments; then, max_new_tokens times, run the model on the last
      n_positions tokens and take the last position's logits: argmax if temperature
      is 0, else divide by the temperature, apply top_k_filter and top_p_filter if
      given, and draw from the softmax with torch.multinomial and the generator.
      Append the token and return the whole sequence.
    tests:
      - test_greedy_generation_matches_hf_generate
      - test_temperature_zero_top_k_one_and_a_cold_temperature_are_greedy
      - test_sampling_with_a_generator_is_reproducible
---

GPT-2 [@radford2019language] is the decoder half of the Transformer
[@vaswani2017attention] trained to predict the next token of web text, and almost every
open language model since is a small edit of it. The whole model is a few hundred lines:
token and position embeddings, $L$ identical blocks of causal self-attention and an
MLP, a final LayerNorm, and an output layer that reuses the token embedding matrix.
Its four published sizes differ only in three numbers:

| preset | layers $L$ | heads | width $d$ | parameters |
| --- | --- | --- | --- | --- |
| `gpt2` | 12 | 12 | 768 | 124,439,808 |
| `gpt2-medium` | 24 | 16 | 1024 | 354,823,168 |
| `gpt2-large` | 36 | 20 | 1280 | 774,030,080 |
| `gpt2-xl` | 48 | 25 | 1600 | 1,557,611,200 |

This chapter writes the model the way nanoGPT does, with the parameter names of
Hugging Face's `GPT2LMHeadModel`, so that its weights load by name with one twist: HF
stores each linear layer as a `Conv1D` whose matrix is the transpose of
`nn.Linear`'s. The test copies the weights of a random `GPT2LMHeadModel` into ours and
gets the same logits, loss and gradients; a `model.safetensors` saved by
`save_pretrained` (the file layout of the real GPT-2 checkpoints) loads the same way,
with nothing downloaded. Then it turns the model into a text generator: greedy decoding,
temperature, top-k [@fan2018hierarchical] and nucleus (top-p) sampling
[@holtzman2020curious]. The demo counts the presets' parameters by component, trains a
tiny GPT-2 on the bytes of Python's documentation for 800 steps, and samples from
it with each knob.
"""

import argparse
import json
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn
from tqdm import tqdm

from annotated.data import integer, python_docs, number, torch_device
from annotated.figures import figure, save

# ## The configuration
#
# Every size of the model is one field of a dataclass, as in nanoGPT. The defaults are
# GPT-2 small's: the 50,257 tokens of its byte-level BPE vocabulary, a context of 1,024
# positions, 12 layers of width 768 with 12 heads of 64. The three larger models keep
# the vocabulary and the context and change the depth, the width and the number of
# heads, always with heads of 64 dimensions. GPT-2 trained with a dropout of 0.1 on the
# embeddings, the attention weights and each residual branch; its LayerNorms add
# $\epsilon = 10^{-5}$ to the variance.


@dataclass(frozen=True)
class GPT2Config:
    """The hyperparameters of a GPT-2; `GPT2Config.preset(name)` gives a published
    size."""

    vocab_size: int = 50257  # V, tokens in the vocabulary
    n_positions: int = 1024  # the context: rows of the position embedding
    n_embd: int = 768  # d, width of the residual stream
    n_layer: int = 12  # L, Transformer blocks
    n_head: int = 12  # attention heads, of n_embd / n_head dimensions each
    dropout: float = 0.1  # on the embeddings, attention weights and residual branches
    layer_norm_epsilon: float = 1e-5  # added to the variance in every LayerNorm

    def __post_init__(self):
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"GPT2Config.{name} must be a positive int, got {value!r}"
                )
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPT2Config.n_embd ({self.n_embd}) must be divisible by "
                f"GPT2Config.n_head ({self.n_head})"
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(
                f"GPT2Config.dropout must be in [0, 1), got {self.dropout!r}"
            )
        if not self.layer_norm_epsilon > 0:
            raise ValueError(
                f"GPT2Config.layer_norm_epsilon must be > 0, got "
                f"{self.layer_norm_epsilon!r}"
            )

    @classmethod
    def preset(cls, name: str, **overrides) -> "GPT2Config":
        """One of the four published sizes (`PRESETS`), with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {name!r}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1.5B
}

# ## Causal self-attention with a fused projection
#
# Each position $t$ asks a query $q_t$ of every earlier position's key $k_u$, $u \le t$,
# and takes the average of their values weighted by the softmax of the scores
# [@vaswani2017attention]:
#
# $$
# \mathrm{head}(X) = \mathrm{softmax}\!\left(\frac{QK^\top}{\sqrt{d/a}} + M\right) V,
# $$
#
# with $M_{tu} = -\infty$ for $u > t$: no position sees its future, which is what lets
# one forward pass train on every next-token prediction of a sequence at once.
#
# GPT-2 makes $Q$, $K$ and $V$ for all $a$ heads with **one** matrix of $d \times 3d$,
# `c_attn`, instead of three of $d \times d$: one large matrix product keeps the
# hardware busier than three small ones, and the split afterwards is free (a view).
# The three thirds of its output are, in this order, the queries, the keys and the
# values; within each third, head $i$ owns columns $i\,d/a$ to $(i+1)\,d/a$. That
# ordering is part of the checkpoint's format: splitting the other way round would
# load without an error and compute nonsense.
#
# The attention itself is PyTorch's `F.scaled_dot_product_attention` with
# `is_causal=True`. The [attention chapter](../transformers/attention.md) writes the
# same equation out, softmax and mask included, and returns the weights too; here we
# want the fused kernel that PyTorch picks per device (FlashAttention's on a GPU,
# which never stores the $s \times s$ scores) and nothing else. `c_proj` mixes the
# heads back into the residual stream.


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused query-key-value projection."""

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.n_head, self.dropout = config.n_head, config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        batch, seq, width = x.shape
        q, k, v = self.c_attn(x).split(width, dim=2)  # 3 × [batch, seq, d]
        heads = (batch, seq, self.n_head, width // self.n_head)
        q = q.view(heads).transpose(1, 2)  # [batch, heads, seq, d_head]
        k = k.view(heads).transpose(1, 2)  # [batch, heads, seq, d_head]
        v = v.view(heads).transpose(1, 2)  # [batch, heads, seq, d_head]
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        y = y.transpose(1, 2).reshape(batch, seq, width)  # [batch, seq, d]
        return self.resid_dropout(self.c_proj(y))  # [batch, seq, d]


# ## The MLP and GELU
#
# Between attentions each position passes alone through a two-layer MLP four times as
# wide as the stream. Its nonlinearity is the GELU [@hendrycks2016gaussian],
# $x\,\Phi(x)$ with $\Phi$ the standard normal's CDF: the input scaled by the
# probability that a standard normal falls below it. GPT-2 used the paper's tanh
# approximation,
#
# $$
# \begin{aligned}
# \mathrm{GELU}(x) &\approx \tfrac12 x \Big(1 + \tanh\Big[\sqrt{2/\pi} \\
# &\qquad\quad \big(x + 0.044715\,x^3\big)\Big]\Big),
# \end{aligned}
# $$
#
# which differs from the exact GELU by up to about $5\times10^{-4}$. A pretrained
# checkpoint expects the approximation it was trained with, which is why HF calls it
# `gelu_new` and PyTorch spells it `approximate="tanh"`.


class MLP(nn.Module):
    """`Linear(d, 4d)`, tanh-GELU, `Linear(4d, d)`, dropout."""

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        hidden = F.gelu(self.c_fc(x), approximate="tanh")  # [batch, seq, 4d]
        return self.dropout(self.c_proj(hidden))  # [batch, seq, d]


# ## The pre-LN block
#
# The original Transformer normalised *after* adding each sub-layer to the stream. GPT-2
# moved the LayerNorm to each sub-layer's input and added one after the last block
# [@radford2019language]:
#
# $$
# \begin{aligned}
# x &\leftarrow x + \mathrm{Attn}(\mathrm{LN}_1(x)), \\
# x &\leftarrow x + \mathrm{MLP}(\mathrm{LN}_2(x)).
# \end{aligned}
# $$
#
# The residual stream $x$ is then never normalised inside the stack: the identity path
# runs untouched from the embeddings to the final LayerNorm, and a gradient reaches
# the first layer through additions alone. Deep pre-LN stacks are markedly easier
# to train than post-LN ones, which depend on a careful learning-rate warm-up.


class Block(nn.Module):
    """A pre-LayerNorm block: attention, then MLP, each added to the stream."""

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))  # [batch, seq, d]
        return x + self.mlp(self.ln_2(x))  # [batch, seq, d]


# ## Checking the input
#
# The token ids are checked where they enter the model. A float tensor of ids, or a
# sequence longer than the position table, would otherwise fail deep inside
# `nn.Embedding` with a message about indices. `torch.fx`, which draws this page's
# dataflow diagram, cannot trace an `if` on a tensor's shape, so `torch.fx.wrap`
# records the check as one node.


@torch.fx.wrap
def check_idx(idx: Tensor, vocab_size: int, n_positions: int) -> Tensor:
    """Return `idx` if it is an integer `[batch, seq]` tensor of ids in
    `[0, vocab_size)` with `seq <= n_positions`; raise naming what is wrong."""
    if not isinstance(idx, Tensor) or idx.is_floating_point() or idx.is_complex():
        raise TypeError(
            f"idx must be an integer tensor of token ids, got "
            f"{getattr(idx, 'dtype', type(idx).__name__)}"
        )
    if idx.dtype == torch.bool:
        raise TypeError("idx must be an integer tensor of token ids, got torch.bool")
    if idx.dim() != 2 or idx.numel() == 0:
        raise ValueError(f"idx must be [batch, seq], got shape {tuple(idx.shape)}")
    if idx.shape[1] > n_positions:
        raise ValueError(
            f"idx has {idx.shape[1]} positions but the model's n_positions is "
            f"{n_positions}"
        )
    if idx.min() < 0 or idx.max() >= vocab_size:
        raise ValueError(f"idx must hold token ids in [0, {vocab_size})")
    return idx


# ## The model and its initialisation
#
# The input is the sum of a token embedding `wte` and a *learned* position embedding
# `wpe`, one row per slot of the context (the [positional chapter](
# ../transformers/positional.md) compares this with sinusoids, RoPE and ALiBi). After
# the blocks and the final LayerNorm `ln_f`, the logits are the dot products of the
# output with every row of `wte`: the output matrix is the input matrix, *tied*
# [@press2017using]. For GPT-2 small that saves $Vd$ = 38.6 million parameters, 31 % of
# the model, and it means a token's vector is trained both by reading it and by
# predicting it.
#
# The initialisation is the paper's [@radford2019language], in the form HF's
# `GPT2PreTrainedModel._init_weights` uses: every weight matrix and embedding from
# $\mathcal N(0, 0.02^2)$, biases zero, LayerNorm gains one and shifts zero. (OpenAI's
# released code draws the position embeddings at 0.01 and leaves out the change
# below.)
# One change: the two matrices that write *into* the residual stream in each block,
# `attn.c_proj` and `mlp.c_proj`, get a standard deviation of
# $0.02/\sqrt{2L}$. The stream is a sum of $2L$ residual branches; if each adds
# independent noise of variance $\sigma^2$, the stream's variance grows as
# $2L\sigma^2$, and the scaling keeps it at $0.02^2$-ish whatever the depth.


class GPT2(nn.Module):
    """GPT-2: `idx [batch, seq]` of token ids → next-token logits
    `[batch, seq, vocab]`."""

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The paper's initialisation: N(0, 0.02²), residual projections scaled by
        1/√(2L), biases zero, LayerNorms one and zero."""
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                std = residual_std if name.endswith("c_proj") else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, idx: Tensor) -> Tensor:
        idx = check_idx(idx, self.config.vocab_size, self.config.n_positions)
        positions = torch.arange(idx.shape[1], device=idx.device)  # [seq]
        x = self.drop(self.wte(idx) + self.wpe(positions))  # [batch, seq, d]
        for block in self.h:
            x = block(x)  # [batch, seq, d]
        return F.linear(self.ln_f(x), self.wte.weight)  # [batch, seq, vocab]


# ## The loss
#
# A language model's loss is the mean cross-entropy of each position's logits against
# the *next* token. HF's convention, which we keep so that the two can be compared, is
# to pass the input ids themselves as `labels` and shift inside: the logits of
# positions $0 \ldots s-2$ are scored against the labels of positions $1 \ldots s-1$.
# A label of $-100$ is ignored (padding, or a prompt that should not be trained on).
# The logits are promoted to at least float32 first, as mixed-precision training
# does: a 16-bit log-softmax over 50,257 tokens loses the small probabilities.


def lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean next-token cross-entropy of `logits [batch, seq, vocab]` against
    `labels [batch, seq]` (shifted by one inside; -100 ignored)."""
    if not isinstance(labels, Tensor) or labels.is_floating_point():
        raise TypeError("labels must be an integer tensor of token ids")
    if labels.shape != logits.shape[:2]:
        raise ValueError(
            f"labels must be {tuple(logits.shape[:2])} like the logits' "
            f"[batch, seq], got {tuple(labels.shape)}"
        )
    logits = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(
        logits.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100
    )


# ## Counting parameters
#
# Each `nn.Linear(m, n)` holds $mn + n$ numbers and each LayerNorm $2d$, so per
# component:
#
# $$
# \begin{aligned}
# \text{tokens} &= Vd, \qquad \text{positions} = n_{\mathrm{pos}}\,d, \\
# \text{attention} &= L\,(4d^2 + 4d), \\
# \text{MLP} &= L\,(8d^2 + 5d), \\
# \text{LayerNorms} &= L \cdot 4d + 2d.
# \end{aligned}
# $$
#
# The output layer adds nothing: it is `wte`. For GPT-2 small that is
# 38,597,376 + 786,432 + 28,348,416 + 56,669,184 + 38,400 = 124,439,808. Two-thirds of
# the non-embedding weights are in the MLPs. The test checks the formula against our
# model and HF's, both built on the `meta` device, which allocates no memory, for all
# four presets. The [memory chapter](../transformers/memory_analysis.md) turns such
# counts into bytes and FLOPs.


def parameter_breakdown(config: GPT2Config) -> dict[str, int]:
    """Parameters of `GPT2(config)` per component, counted from its sizes."""
    d, L = config.n_embd, config.n_layer
    return {
        "token embedding": config.vocab_size * d,
        "position embedding": config.n_positions * d,
        "attention": L * (4 * d * d + 4 * d),
        "MLP": L * (8 * d * d + 5 * d),
        "LayerNorms": L * 4 * d + 2 * d,
    }


# ## Loading Hugging Face's weights
#
# HF's `GPT2LMHeadModel` names its parameters as we do, under a `transformer.` prefix
# (the original OpenAI checkpoints, converted, have no prefix). One difference is real:
# HF keeps OpenAI's `Conv1D` module, a linear layer computing $xW + b$ with $W$ stored
# `[in, out]`, while `nn.Linear` computes $xW^\top + b$ with $W$ stored `[out, in]`. So
# the four matrices of each block, `c_attn`, `attn.c_proj`, `c_fc` and `mlp.c_proj`,
# are transposed on the way in. (nanoGPT's `from_pretrained` does the same, with the
# same comment.) Everything else copies as it is.
#
# Three kinds of key are skipped on purpose: `lm_head.weight`, which is `wte.weight`
# again (tied); and `attn.bias` and `attn.masked_bias`, which old checkpoints carry:
# they are the causal mask stored as a buffer, not weights, and our attention builds
# the mask itself. Any other key we do not know, or one of ours that is missing, is an
# error that names it: a silently half-loaded model generates fluent-looking nonsense.

CONV1D_WEIGHTS = (
    "attn.c_attn.weight",
    "attn.c_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)
SKIPPED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # not "c_attn.bias"


def from_hf_state_dict(
    state_dict: dict[str, Tensor], config: GPT2Config
) -> dict[str, Tensor]:
    """Our state dict from HF `GPT2LMHeadModel`'s (or `GPT2Model`'s): the Conv1D
    weights transposed, the causal-mask buffers and the tied `lm_head` dropped."""
    if not isinstance(config, GPT2Config):
        raise TypeError(f"config must be a GPT2Config, got {type(config).__name__}")
    ours = {}
    for name, tensor in state_dict.items():
        name = name.removeprefix("transformer.")
        if name == "lm_head.weight" or name.endswith(SKIPPED_SUFFIXES):
            continue
        if name.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()  # Conv1D [in, out] → nn.Linear [out, in]
        ours[name] = tensor.contiguous()
    with torch.device("meta"):  # the shapes, without allocating the model
        expected = {n: t.shape for n, t in GPT2(config).state_dict().items()}
    missing = sorted(set(expected) - set(ours))
    unexpected = sorted(set(ours) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"state_dict does not match {config}: missing keys {missing}, "
            f"unexpected keys {unexpected}"
        )
    wrong = [
        f"{n}: {tuple(ours[n].shape)} instead of {tuple(s)}"
        for n, s in expected.items()
        if ours[n].shape != s
    ]
    if wrong:
        raise ValueError(f"state_dict has tensors of the wrong shape: {wrong}")
    return ours


# The way back is the same map inverted, with `lm_head.weight` written out as the
# tied matrix, so that `GPT2LMHeadModel.load_state_dict` accepts it with `strict=True`.


def to_hf_state_dict(model: GPT2) -> dict[str, Tensor]:
    """HF `GPT2LMHeadModel`'s state dict from our model."""
    hf = {}
    for name, tensor in model.state_dict().items():
        if name.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()  # nn.Linear [out, in] → Conv1D [in, out]
        hf[f"transformer.{name}"] = tensor.contiguous()
    hf["lm_head.weight"] = model.wte.weight.detach()
    return hf


# ## Loading a checkpoint from disk
#
# A released model is a folder: `config.json` with the sizes and `model.safetensors`
# with the tensors, which is what `save_pretrained` writes and what the GPT-2 models
# on the Hub hold. safetensors is a flat file of raw tensors behind a JSON header, read
# without running any code (a pickled `.bin` runs arbitrary code when loaded). If you
# have such a folder on disk, `load_safetensors` reads it into our model with no
# download and no `transformers`; `config.json`'s fields map onto ours by their HF
# names (`resid_pdrop` is GPT-2's one dropout rate), and a field it leaves out takes
# GPT-2's default, which is ours too. HF's class has a few switches for GPT-2's
# relatives that this model does not implement (another activation, an MLP width
# other than $4d$, untied embeddings); a `config.json` that sets one is refused
# rather than loaded into the wrong computation.

HF_CONFIG_FIELDS = {f.name: f.name for f in fields(GPT2Config)} | {
    "dropout": "resid_pdrop"
}
HF_FIXED = {
    "activation_function": "gelu_new",
    "n_inner": None,
    "scale_attn_by_inverse_layer_idx": False,
    "tie_word_embeddings": True,
}


def load_safetensors(path: str | Path, config: GPT2Config | None = None) -> GPT2:
    """A `GPT2` with the weights of the HF-layout `model.safetensors` at `path` (the
    file, or its folder); `config` defaults to the `config.json` beside it."""
    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"path: no safetensors file at {file}")
    if config is None:
        config_file = file.parent / "config.json"
        if not config_file.is_file():
            raise ValueError(
                f"config: none given and no config.json beside {file}; pass a "
                f"GPT2Config"
            )
        hf = json.loads(config_file.read_text())
        unsupported = {k: hf[k] for k, v in HF_FIXED.items() if hf.get(k, v) != v}
        if unsupported:
            raise ValueError(
                f"config: {config_file} sets {unsupported}, which GPT2 does not "
                f"implement"
            )
        defaults = {f.name: f.default for f in fields(GPT2Config)}
        config = GPT2Config(
            **{
                ours: hf.get(theirs, defaults[ours])
                for ours, theirs in HF_CONFIG_FIELDS.items()
            }
        )
    state = from_hf_state_dict(load_file(file), config)
    with torch.device("meta"):
        model = GPT2(config)
    model.load_state_dict(state, assign=True)
    return model


# ## Generation
#
# A trained model gives, at the last position, a distribution over the next token.
# Generation appends a token drawn from it and asks again. How it is drawn changes
# the text more than most people expect [@holtzman2020curious]:
#
# - **Greedy**: always the most likely token. Deterministic, and prone to loops,
#   because a likely continuation makes itself likelier.
# - **Temperature** $T$: sample from $\mathrm{softmax}(z/T)$. $T < 1$ sharpens the
#   distribution towards greedy (which is the limit $T \to 0$), $T > 1$ flattens it.
# - **Top-k** [@fan2018hierarchical]: keep the $k$ most likely tokens, renormalise,
#   sample. A fixed $k$ is too many when the model is sure and too few when it is not.
# - **Top-p, or nucleus** [@holtzman2020curious]: keep the smallest set of most likely
#   tokens whose probability adds up to at least $p$. The set is small when the
#   distribution is peaked and large when it is flat.
#
# Both filters work on logits, setting the tokens they drop to $-\infty$, so they
# compose, in HF's order: temperature, then top-k, then top-p.
#
# `top_k_filter` keeps every token whose logit is at least the $k$-th largest, so a
# tie at the boundary keeps all its members.


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """`logits [..., vocab]` with all but the `k` largest of each row set to -inf."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {k!r}")
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # [..., 1]
    return logits.masked_fill(logits < kth, float("-inf"))


# `top_p_filter` sorts the probabilities in decreasing order and keeps a token if the
# mass of the tokens strictly before it is still below $p$: so it keeps the first
# token that brings the sum to $p$ or more, and none after. Tokens tied with the
# least likely kept one are kept too, so that the result does not depend on the
# order a sort happens to put equal probabilities in. $p = 1$ keeps everything.


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """`logits [..., vocab]` with all but the nucleus of mass `p` set to -inf."""
    if not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {p!r}")
    if p == 1:
        return logits
    probs = torch.softmax(logits, dim=-1)  # [..., vocab]
    sorted_probs = torch.sort(probs, dim=-1, descending=True).values  # [..., vocab]
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # [..., vocab]
    kept = (mass_before < p).sum(dim=-1, keepdim=True)  # [..., 1], at least 1
    smallest_kept = sorted_probs.gather(-1, kept - 1)  # [..., 1]
    return logits.masked_fill(probs < smallest_kept, float("-inf"))


# `generate` runs the model on the whole text at every step and keeps only the last
# position's logits. That recomputes the keys and values of every earlier token,
# which is what the [KV cache](../transformers/kv_cache.md) avoids; here the model
# stays as simple as its checkpoint. When the text outgrows the context, the model
# sees its last `n_positions` tokens. `temperature=0` is greedy decoding; a
# `torch.Generator` makes sampling reproducible. Call `model.eval()` first, or
# dropout will perturb every step.


@torch.no_grad()
def generate(
    model: GPT2,
    idx: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """`idx [batch, P]` followed by `max_new_tokens` tokens drawn from `model`:
    returns `[batch, P + max_new_tokens]`."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise ValueError(f"max_new_tokens must be an int, got {max_new_tokens!r}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    context = model.config.n_positions
    for _ in range(max_new_tokens):
        logits = model(idx[:, -context:])[:, -1]  # [batch, vocab]
        if temperature == 0:
            token = logits.argmax(dim=-1, keepdim=True)  # [batch, 1]
        else:
            logits = logits / temperature
            if top_k is not None:
                logits = top_k_filter(logits, top_k)
            if top_p is not None:
                logits = top_p_filter(logits, top_p)
            probs = torch.softmax(logits, dim=-1)  # [batch, vocab]
            token = torch.multinomial(probs, 1, generator=generator)  # [batch, 1]
        idx = torch.cat([idx, token], dim=1)  # [batch, P + step + 1]
    return idx


# ## A tiny GPT-2 on bytes
#
# The demo trains the architecture at toy size on the bytes of Python's documentation
# (`annotated.data.python_docs`): a vocabulary of 256, no tokenizer needed. Training
# is plain next-token prediction on random windows, AdamW with a short warm-up and a
# cosine decay: the recipe a real pretraining run uses at scale. Two yardsticks: the
# uniform guess scores $\ln 256 \approx 5.55$ nats a byte, and a model that knew only
# how often each byte occurs (fitted on the training text) would score 3.22 nats on
# the validation text. In the demo's 800 steps the loss passes both, to about 1.6
# nats: beyond byte frequencies, the model has learned which bytes follow which and
# the spelling of common words ("the", "which", "string"). Greedy decoding of it
# shows the failure that motivates sampling: within a few words it repeats itself
# ("the statement and the statement"; the words differ from run to run).


def byte_windows(
    data: Tensor, batch: int, length: int, generator: torch.Generator
) -> Tensor:
    """`batch` random windows of `length` bytes from the 1-D tensor `data`."""
    starts = torch.randint(0, len(data) - length, (batch,), generator=generator)
    return torch.stack([data[s : s + length] for s in starts.tolist()])


def train(
    model: GPT2,
    data: Tensor,
    steps: int,
    batch: int,
    length: int,
    lr: float,
    seed: int = 0,
) -> list[float]:
    """Train `model` in place on windows of `data`; returns the loss of every step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    warmup = max(1, steps // 10)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc="training"):
        tokens = byte_windows(data, batch, length, generator).to(device)
        loss = lm_loss(model(tokens), tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def evaluate(model: GPT2, data: Tensor, length: int, windows: int = 32) -> float:
    """Mean next-byte loss over `windows` fixed windows of `data`, in nats."""
    model.eval()
    step = (len(data) - length) // windows
    tokens = torch.stack([data[i * step : i * step + length] for i in range(windows)])
    tokens = tokens.to(next(model.parameters()).device)
    return lm_loss(model(tokens), tokens).item()


def example():
    """A 2-layer GPT-2 of width 32 on two sequences of 8 token ids."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    idx = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
    return GPT2(config).eval(), (idx,)


def unigram_loss(train_data: Tensor, data: Tensor) -> float:
    """The loss on `data` of a model that predicts every byte with the byte
    frequencies of `train_data` (add-one smoothed), in nats."""
    counts = torch.bincount(train_data, minlength=256).double() + 1  # [256]
    log_probs = (counts / counts.sum()).log()  # [256]
    return -log_probs[data].mean().item()


def plot(
    losses: list[float], val_loss: float, unigram: float, out: Path, layers: int = 2
) -> Path:
    """The training loss of the `layers`-block model, and the presets' parameters by
    component."""
    fig, (left, right) = figure(panels=2)
    left.plot(range(1, len(losses) + 1), losses, label="training batch")
    left.axhline(math.log(256), color="grey", ls=":", label=r"uniform, $\ln 256$")
    left.axhline(unigram, color="C2", ls="-.", label="byte frequencies only")
    left.axhline(val_loss, color="C3", ls="--", label="validation, at the end")
    left.set_xlabel("step $k$")
    left.set_ylabel("next-byte loss (nats)")
    left.set_title("A tiny GPT-2 on Python's docs")
    left.legend()
    names = list(PRESETS)
    bottom = [0.0] * len(names)
    for index, part in enumerate(parameter_breakdown(GPT2Config())):
        counts = [parameter_breakdown(GPT2Config.preset(n))[part] / 1e6 for n in names]
        right.bar(names, counts, bottom=bottom, label=part, color=f"C{index}")
        bottom = [b + c for b, c in zip(bottom, counts)]
    for position, total in enumerate(bottom):
        right.text(position, total, f"{total:,.0f}M", ha="center", va="bottom")
    right.set_ylabel("parameters (millions)")
    right.set_ylim(0, max(bottom) * 1.12)
    right.set_title("GPT-2's four sizes")
    right.legend()
    return save(
        fig,
        out / "gpt2.png",
        caption=f"Left: the loss of a {layers}-layer GPT-2 trained on the bytes of "
        "Python's documentation falls from the uniform guess, ln 256, past what byte "
        "frequencies alone achieve, within a few hundred steps. "
        "Right: the parameters of the four GPT-2 sizes by component; the MLPs grow "
        "with depth times width squared, the token embedding only with width.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Count the presets, train a tiny GPT-2 on bytes, sample with each knob."""
    parser = argparse.ArgumentParser(
        description="GPT-2: parameter counts, a tiny model trained on bytes, sampling.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--steps", type=integer(at_least=1), default=800, help="training steps"
    )
    parser.add_argument(
        "--batch", type=integer(at_least=1), default=16, help="windows per batch"
    )
    parser.add_argument(
        "--length", type=integer(at_least=2), default=64, help="bytes per window"
    )
    parser.add_argument(
        "--layers", type=integer(at_least=1), default=2, help="blocks of the model"
    )
    parser.add_argument(
        "--width", type=integer(at_least=1), default=64, help="n_embd of the model"
    )
    parser.add_argument(
        "--heads", type=integer(at_least=1), default=4, help="attention heads"
    )
    parser.add_argument(
        "--lr", type=number(above=0), default=6e-3, help="peak AdamW rate"
    )
    parser.add_argument(
        "--new-tokens", type=integer(at_least=1), default=80, help="bytes to sample"
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to train and sample on",
    )
    parser.add_argument("--out", default="out/gpt2", help="folder for the figures")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    print("preset        parameters  (embeddings / blocks)")
    for name in PRESETS:
        parts = parameter_breakdown(GPT2Config.preset(name))
        embeddings = parts["token embedding"] + parts["position embedding"]
        total = sum(parts.values())
        print(f"{name:12s} {total:>13,}  ({embeddings:,} / {total - embeddings:,})")

    config = GPT2Config(
        vocab_size=256,
        n_positions=args.length,
        n_embd=args.width,
        n_layer=args.layers,
        n_head=args.heads,
        dropout=0.0,
    )
    model = GPT2(config).to(args.device)
    print(f"tiny model: {sum(p.numel() for p in model.parameters()):,} parameters")
    train_text, validation_text = python_docs()
    train_bytes = torch.tensor(list(train_text.encode("utf-8")), dtype=torch.long)
    val_bytes = torch.tensor(list(validation_text.encode("utf-8")), dtype=torch.long)
    start = time.perf_counter()
    losses = train(
        model, train_bytes, args.steps, args.batch, args.length, args.lr, args.seed
    )
    seconds = time.perf_counter() - start
    val_loss = evaluate(model, val_bytes, args.length)
    print(f"trained {args.steps} steps in {seconds:.1f} s")
    print(f"first loss {losses[0]:.3f}, last loss {losses[-1]:.3f} nats/byte")
    unigram = unigram_loss(train_bytes, val_bytes)
    print(f"validation loss {val_loss:.3f} nats/byte")
    print(f"(byte frequencies alone: {unigram:.3f}; uniform: {math.log(256):.3f})")

    prompt = torch.tensor([list(b"The ")], device=args.device)  # [1, 4]
    knobs = {
        "greedy": dict(temperature=0.0),
        "temperature 0.8, top-k 20": dict(temperature=0.8, top_k=20),
        "top-p 0.9": dict(top_p=0.9),
    }
    for label, knob in knobs.items():
        generator = torch.Generator(args.device).manual_seed(args.seed)
        tokens = generate(model, prompt, args.new_tokens, generator=generator, **knob)
        text = bytes(tokens[0].tolist()).decode("utf-8", errors="replace")
        print(f"{label:>26s}: {text!r}")
    plot(losses, val_loss, unigram, out, layers=args.layers)
    return {
        "first_loss": losses[0],
        "final_loss": sum(losses[-10:]) / len(losses[-10:]),
        "validation_loss": val_loss,
        "unigram_loss": unigram,
    }


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Add a KV cache to `CausalSelfAttention` as the [KV-cache
#    chapter](../transformers/kv_cache.md) does, check that cached and uncached
#    logits agree, and time `generate` with and without it at 64 and 512 tokens.
# 2. Untie the embeddings (give the model its own `lm_head`) and train the byte
#    model again. How many parameters does it add at GPT-2 small's size, and does the
#    tiny model's validation loss change?
# 3. Initialise the residual projections with 0.02 instead of $0.02/\sqrt{2L}$ and
#    measure the standard deviation of the residual stream after each block of a
#    48-layer model at initialisation. How does it grow with depth, with and without
#    the scaling?
# 4. Sample 200 bytes with top-p 0.5, 0.9 and 1.0 and count the distinct 4-byte
#    sequences in each. Where does the text start to loop, and where to fall apart?
