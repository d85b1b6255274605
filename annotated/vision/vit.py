r"""
---
title: The Vision Transformer
summary: >-
  An image cut into 16×16 patches is a sentence of words: patch embedding as a strided
  convolution and as unfold-and-multiply, a class token, learned positions resized to a
  new resolution, and the pre-LN Transformer encoder, equal to Hugging Face's ViTModel
  with copied weights and trained on coloured shapes.
time: 25 s
expected:
  metric: accuracy
  short: ["--train", "2000", "--test", "300", "--epochs", "3", "--batch-size", "64"]
references:
  - key: dosovitskiy2021image
    authors:
      - Alexey Dosovitskiy
      - Lucas Beyer
      - Alexander Kolesnikov
      - Dirk Weissenborn
      - et al.
    title: "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale"
    year: 2021
    venue: ICLR 2021
    arxiv: "2010.11929"
  - key: vaswani2017attention
    authors: [Ashish Vaswani, Noam Shazeer, Niki Parmar, Jakob Uszkoreit, Llion Jones,
      Aidan N. Gomez, Łukasz Kaiser, Illia Polosukhin]
    title: Attention Is All You Need
    year: 2017
    venue: NeurIPS 2017
    arxiv: "1706.03762"
  - key: touvron2021training
    authors: [Hugo Touvron, Matthieu Cord, Matthijs Douze, Francisco Massa, et al.]
    title: Training data-efficient image transformers & distillation through attention
    year: 2021
    venue: ICML 2021
    arxiv: "2012.12877"
  - key: devlin2019bert
    authors: [Jacob Devlin, Ming-Wei Chang, Kenton Lee, Kristina Toutanova]
    title: >-
      BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding
    year: 2019
    venue: NAACL 2019
    arxiv: "1810.04805"
  - key: xiong2020layer
    authors: [Ruibin Xiong, Yunchang Yang, Di He, Kai Zheng, et al.]
    title: On Layer Normalization in the Transformer Architecture
    year: 2020
    venue: ICML 2020
    arxiv: "2002.04745"
  - key: abnar2020quantifying
    authors: [Samira Abnar, Willem Zuidema]
    title: Quantifying Attention Flow in Transformers
    year: 2020
    venue: ACL 2020
    arxiv: "2005.00928"
  - key: keys1981cubic
    authors: [Robert G. Keys]
    title: Cubic convolution interpolation for digital image processing
    year: 1981
    venue: IEEE Transactions on Acoustics, Speech, and Signal Processing 29(6)
    url: https://doi.org/10.1109/TASSP.1981.1163711
worksheet:
  - region: patchify
    hint: >-
      Reshape [batch, C, H, W] to [batch, C, rows, P, cols, P], move the two grid
      axes to the front of the pixel axes (batch, rows, cols, C, P, P), and flatten
      to [batch, rows * cols, C * P * P].
    tests:
      - test_patchify_orders_patches_row_major_and_pixels_channel_row_column
      - test_unfold_patch_embedding_equals_strided_convolution
  - region: interpolate_positions
    hint: >-
      Split off the class token's row; view the other n * n rows as a [1, D, n, n]
      image, resize it with F.interpolate(mode="bicubic", align_corners=False) to
      (rows, cols), flatten it back to [1, rows * cols, D] and put the class row in
      front.
    tests:
      - test_interpolated_positions_match_hf
      - test_interpolation_to_the_same_grid_is_the_identity_and_keeps_class_row
  - region: Embeddings.forward
    hint: >-
      Embed the patches, put the class token (expanded over the batch) in front,
      add the position table (interpolated to the image's grid when asked), and
      apply dropout: [batch, 1 + N, D].
    tests:
      - test_last_hidden_state_and_pooler_match_hf_vit_model
      - test_gradients_match_hf_vit_model
---

A convolutional network builds in what images are like: nearby pixels belong together,
and a pattern means the same wherever it appears. The Vision Transformer (ViT)
[@dosovitskiy2021image] builds in almost none of it. It cuts the image into a grid of
square patches, flattens each patch into a vector, and hands the sequence of patch
vectors to the encoder of the [Transformer](../transformers/transformer.md)
[@vaswani2017attention], unchanged from the one that reads sentences. Every patch may
attend to every other from the first layer on; which patches are neighbours is
something the model must learn from its position embeddings. With enough data (the
paper pre-trains on 14 to 300 million images) this weaker prior stops mattering and
the simpler, more uniform model wins; with little data, a ViT trails a ResNet of the
same cost, which is what DeiT [@touvron2021training] then set out to fix with
augmentation and distillation.

The chapter builds the model in the paper's order:

1. the **patch embedding**, written twice: as a convolution whose kernel and stride are
   the patch size, and as an explicit cut-flatten-multiply; the test checks the two
   agree to $10^{-12}$ in float64;
2. the **class token** and the **learned position embeddings**, and how those
   embeddings are resized by bicubic interpolation on their 2-D grid when the model
   meets a new image size;
3. the **encoder**: the pre-LN blocks of the Transformer chapter, a final LayerNorm,
   and a classification head on the class token.

The test builds a random `transformers.ViTModel` of a small size, copies its weights
into ours with `VisionTransformer.from_hf_state_dict`, and checks the last hidden
states and the pooled output to $10^{-10}$ in float64, at the trained resolution and
at three others with the position embeddings interpolated, and the gradients the
same way: every weight's and the input's at the trained resolution, the input's at
the other three.

The demo trains a ViT of 63 thousand weights on 32×32 pictures of coloured shapes to
name the shape and the colour (15 classes), in about twenty seconds on two cores, and
draws where its class token looks and what its position embeddings have learned.
"""

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from annotated.data import COLOURS, SHAPE_NAMES, integer, number, shapes, torch_device
from annotated.figures import figure, save
from annotated.transformers.transformer import Config as EncoderConfig
from annotated.transformers.transformer import Encoder

# ## The sizes
#
# One dataclass holds every size. The names are those of `transformers.ViTConfig`
# where there is one, so that `Config.from_hf` is a copy. The paper's ViT-Base/16 is
# `image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12,
# num_attention_heads=12, intermediate_size=3072`: $14 \times 14 = 196$ patches, each a
# "word" of $16 \cdot 16 \cdot 3 = 768$ numbers. The defaults here are the demo's
# model, a ViT for 32×32 images with 4×4 patches: 64 patches of 48 numbers.
#
# The LayerNorm epsilon is $10^{-12}$, as in Hugging Face's ViT (and BERT), not
# PyTorch's default $10^{-5}$; in float64 the difference would show at the test's
# tolerance.


@dataclass(frozen=True)
class Config:
    """The sizes of a Vision Transformer; the defaults are the demo's small model."""

    image_size: int = 32  # the side of the (square) training images, in pixels
    patch_size: int = 4  # the side of a patch, in pixels
    num_channels: int = 3
    hidden_size: int = 48  # the width $D$ of every token
    num_hidden_layers: int = 3
    num_attention_heads: int = 3
    intermediate_size: int = 96  # the MLP's hidden width
    dropout: float = 0.0
    layer_norm_eps: float = 1e-12
    num_labels: int = 15  # classes of the head on the class token; 0: no head
    pooler: bool = False  # ViTModel's dense + tanh on the class token

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(
                f"Config: image_size {self.image_size} must be a multiple of "
                f"patch_size {self.patch_size}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"Config: hidden_size {self.hidden_size} must be divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )

    @property
    def grid(self) -> int:
        """Patches along each side of a training image."""
        return self.image_size // self.patch_size

    @classmethod
    def from_hf(cls, hf_config, pooler: bool = True) -> "Config":
        """The sizes of a `transformers.ViTConfig`."""
        if hf_config.hidden_act != "gelu" or not hf_config.qkv_bias:
            raise ValueError(
                "Config.from_hf: only hidden_act='gelu' with qkv_bias=True is built "
                f"here, got {hf_config.hidden_act!r}, qkv_bias={hf_config.qkv_bias}"
            )
        return cls(
            image_size=hf_config.image_size,
            patch_size=hf_config.patch_size,
            num_channels=hf_config.num_channels,
            hidden_size=hf_config.hidden_size,
            num_hidden_layers=hf_config.num_hidden_layers,
            num_attention_heads=hf_config.num_attention_heads,
            intermediate_size=hf_config.intermediate_size,
            dropout=hf_config.hidden_dropout_prob,
            layer_norm_eps=hf_config.layer_norm_eps,
            num_labels=0,
            pooler=pooler,
        )


# ## Patches as words
#
# An image $x \in \mathbb{R}^{C \times H \times W}$ is cut into $N = HW/P^2$
# non-overlapping patches of $P \times P$ pixels, and each patch, flattened to
# $x_p^i \in \mathbb{R}^{P^2 C}$, is mapped to the model's width $D$ by one matrix
# $E \in \mathbb{R}^{P^2C \times D}$ (the paper's Eq. 1):
#
# $$
# z^i = x_p^i\, E + b, \qquad i = 1, \dots, N.
# $$
#
# `patchify` does the cutting with two reshapes and a permutation, and no copy of any
# pixel is made twice: the patches do not overlap. Splitting the height into
# (rows of patches, $P$) and the width into (columns of patches, $P$) gives
# `[batch, C, rows, P, cols, P]`; moving the two grid axes to the front and flattening
# the rest gives each patch's numbers in the order (channel, row, column) inside the
# patch. Patches are numbered row by row, left to right, as text is read.


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """`[batch, C, H, W]` → `[batch, (H/P)·(W/P), C·P·P]`, patches in row-major
    order, each flattened as (channel, row, column)."""
    batch, channels, height, width = images.shape
    rows, cols = height // patch_size, width // patch_size
    grid = images.reshape(batch, channels, rows, patch_size, cols, patch_size)
    grid = grid.permute(0, 2, 4, 1, 3, 5)  # [batch, rows, cols, C, P, P]
    return grid.reshape(batch, rows * cols, channels * patch_size**2)


# The same map is a convolution. A convolution with kernel $P \times P$ and stride
# $P$ places its kernel on each patch exactly once, and at each place it computes,
# for each of its $D$ output channels, the dot product of the kernel with the patch:
# one column of $E$ per output channel. The kernel of output channel $d$, flattened in
# the (channel, row, column) order of `nn.Conv2d`'s weight `[D, C, P, P]`, *is* column
# $d$ of $E$, so `weight.flatten(1)` is $E^\top$ and nothing needs reordering. That is
# why every ViT implementation, the paper's JAX code and Hugging Face's included,
# stores the patch embedding as a convolution (`projection` in Hugging Face's
# `ViTPatchEmbeddings`): one call to a tuned kernel and no reshapes. The
# convolution's output `[batch, D, rows, cols]` is a $D$-channel image with one pixel
# per patch; flattening its grid gives the tokens in the same row-major order.
#
# `patch_embed_unfold` is the explicit version; the model runs the convolution.


def patch_embed_unfold(images: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The patch embedding as cut, flatten and multiply, with a convolution's
    `weight [D, C, P, P]` and `bias [D]`: `[batch, C, H, W]` → `[batch, N, D]`."""
    patches = patchify(images, weight.shape[-1])  # [batch, N, C·P·P]
    return patches @ weight.flatten(1).T + bias  # [batch, N, D]


class PatchEmbedding(nn.Module):
    """The patch embedding as a strided convolution: `[batch, C, H, W]` →
    `[batch, N, D]`."""

    def __init__(self, config: Config):
        super().__init__()
        p = config.patch_size
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=p, stride=p
        )

    def forward(self, images: Tensor) -> Tensor:
        grid = self.projection(images)  # [batch, D, rows, cols]
        return grid.flatten(2).transpose(1, 2)  # [batch, N, D]


# ## Positions on a grid, and a new resolution
#
# Attention does not know where a patch came from: shuffle the patches and every
# output is shuffled the same way. Like BERT [@devlin2019bert], the ViT adds a
# *learned* vector to each position, one row of a table
# $E_\text{pos} \in \mathbb{R}^{(N+1) \times D}$ trained with the rest. The paper tried
# 2-D-aware variants (a row embedding plus a column embedding, and relative
# positions) and found no gain over this plain 1-D table (its Table 8): with enough
# training data the model learns the grid by itself (its Figure 7).
#
# A table learned for one grid has no entry for another. Fine-tuning at a higher
# resolution than pre-training (the paper goes from 224 to 384 pixels, a 14×14 grid to
# 24×24) keeps the patch size and so lengthens the sequence. The paper's answer (its
# §3.2) is to treat the table as what it is, a $D$-channel image of
# $\sqrt{N} \times \sqrt{N}$ pixels, and resize it to the new grid by 2-D
# interpolation. Hugging Face's `ViTEmbeddings.interpolate_pos_encoding` does this
# with `F.interpolate(mode="bicubic", align_corners=False)` and no anti-aliasing, and
# so does ours; every detail of that call changes the numbers:
#
# - *bicubic*: each new value is a weighted sum of the 4×4 nearest old ones, with
#   Keys' cubic-convolution weights ($a = -0.75$, PyTorch's choice)
#   [@keys1981cubic]. Between grid points it is smoother than bilinear; at a grid
#   point its weights are $(0, 1, 0, 0)$, so resizing to the same grid returns the
#   table exactly (the test checks it).
# - `align_corners=False`: new position $j$ reads old coordinate
#   $(j + \tfrac12)\,\tfrac{n_\text{old}}{n_\text{new}} - \tfrac12$, treating each
#   entry as the centre of a patch-sized cell, which is how patches cover an image.
#   `True` would pin the corner entries to the corners instead.
# - no `antialias`: timm's `resample_abs_pos_embed` passes `antialias=True`, which
#   in PyTorch selects another implementation, the one that matches Pillow: its cubic
#   has $a = -0.5$, and when the grid shrinks its kernel widens to low-pass the table
#   first. Its numbers differ from Hugging Face's whether the grid grows or shrinks
#   (the test shows both), so a checkpoint fine-tuned with one should be resized with
#   the same one.
#
# The class token's position is not on the grid: it is kept as it is and put back in
# front. Hugging Face's version reshapes the old table as a square, so it assumes a
# square training grid, as we do; the new grid may be any rectangle.


def interpolate_positions(position_embeddings: Tensor, rows: int, cols: int) -> Tensor:
    """Resize a `[1, 1 + n·n, D]` position table learned on an `n×n` grid to
    `[1, 1 + rows·cols, D]`, bicubically, keeping the class token's row."""
    class_position = position_embeddings[:, :1]  # [1, 1, D]
    grid_positions = position_embeddings[:, 1:]  # [1, n·n, D]
    side = math.isqrt(grid_positions.shape[1])
    dim = grid_positions.shape[-1]
    table = grid_positions.reshape(1, side, side, dim).permute(0, 3, 1, 2)  # [1,D,n,n]
    table = F.interpolate(
        table, size=(rows, cols), mode="bicubic", align_corners=False
    )  # [1, D, rows, cols]
    table = table.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)  # [1, N', D]
    return torch.cat([class_position, table], dim=1)  # [1, 1 + N', D]


# ## The class token
#
# The paper borrows BERT's `[CLS]` token: one more learned vector $x_\text{class}$,
# put in front of the patches, with no pixels of its own. It attends to the patches in
# every layer, and its final state, after the last LayerNorm, is the image's
# representation $y$ (Eq. 1 and Eq. 4):
#
# $$
# \begin{aligned}
# z_0 &= [x_\text{class};\, x_p^1E;\, \dots;\, x_p^NE] + E_\text{pos},\\
# y &= \mathrm{LN}(z_L^0).
# \end{aligned}
# $$
#
# Averaging the patch tokens instead works as well once the learning rate is retuned
# (the paper's Appendix D.3); the class token was kept to stay close to the
# Transformer for text. `Embeddings` holds the three learned pieces under Hugging
# Face's names (`cls_token`, `position_embeddings`, `patch_embeddings`).
#
# The check sits here, at the first thing every image meets. Two mistakes would
# otherwise be silent or confusing: an image whose side is not a multiple of the patch
# (the convolution would quietly drop the leftover pixels, as Hugging Face's does),
# and an image of another size without interpolation (the sum with the table would
# fail to broadcast far from the cause). `torch.fx.wrap` keeps the check one node in
# the page's dataflow diagram.


@torch.fx.wrap
def check_images(config: Config, images: Tensor, interpolate: bool) -> None:
    """Raise naming the shape when `images` cannot go through the model."""
    channels, patch = config.num_channels, config.patch_size
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise ValueError(
            f"images must be [batch, {channels}, height, width], got "
            f"{tuple(getattr(images, 'shape', ())) or type(images).__name__}"
        )
    _, got_channels, height, width = images.shape
    if got_channels != channels:
        raise ValueError(
            f"images {tuple(images.shape)} have {got_channels} channels; the model "
            f"expects {channels}"
        )
    if height % patch or width % patch or height == 0 or width == 0:
        raise ValueError(
            f"images {tuple(images.shape)}: height and width must be positive "
            f"multiples of the patch size {patch}"
        )
    if not interpolate and (height, width) != (config.image_size,) * 2:
        raise ValueError(
            f"images {tuple(images.shape)} are not {config.image_size}×"
            f"{config.image_size}; pass interpolate_pos_encoding=True for another size"
        )


class Embeddings(nn.Module):
    """Class token, patch embeddings and positions: `[batch, C, H, W]` →
    `[batch, 1 + N, D]`."""

    def __init__(self, config: Config):
        super().__init__()
        d = config.hidden_size
        self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.position_embeddings = nn.Parameter(
            torch.randn(1, 1 + config.grid**2, d) * 0.02
        )
        self.patch_embeddings = PatchEmbedding(config)
        self.dropout = nn.Dropout(config.dropout)
        self.patch_size = config.patch_size

    def forward(self, images: Tensor, interpolate_pos_encoding: bool = False) -> Tensor:
        tokens = self.patch_embeddings(images)  # [batch, N, D]
        class_token = self.cls_token.expand(images.shape[0], -1, -1)  # [batch, 1, D]
        tokens = torch.cat([class_token, tokens], dim=1)  # [batch, 1 + N, D]
        positions = self.position_embeddings  # [1, 1 + N, D]
        if interpolate_pos_encoding:
            rows = images.shape[2] // self.patch_size
            cols = images.shape[3] // self.patch_size
            positions = interpolate_positions(positions, rows, cols)
        return self.dropout(tokens + positions)  # [batch, 1 + N, D]


# ## The encoder
#
# The rest is the Transformer's encoder, and the paper means it literally: the blocks
# are those of [the Transformer chapter](../transformers/transformer.md#encoderlayer),
# imported, not rewritten. Its `Config` selects the variant the ViT uses (Eq. 2–3):
#
# $$
# \begin{aligned}
# z'_\ell &= \mathrm{MSA}(\mathrm{LN}(z_{\ell-1})) + z_{\ell-1},\\
# z_\ell &= \mathrm{MLP}(\mathrm{LN}(z'_\ell)) + z'_\ell,
# \end{aligned}
# $$
#
# *pre-LN* (`norm_first=True`), the arrangement that trains without a warm-up-or-diverge
# knife edge [@xiong2020layer]; an MLP of two linear layers with an exact GELU between
# them (`activation="gelu"`, the erf form, which is what Hugging Face's `"gelu"`
# means too, not the tanh approximation); and a final LayerNorm after the last block
# (`final_norm=True`), the $\mathrm{LN}$ of $y$ above.
#
# The test's benchmark runs this model and Hugging Face's `ViTModel` on the same
# batch. Ours is slower on a CPU (1.7× to 3.2× in runs on a busy two-core
# machine): the Transformer chapter's attention computes the scores, masks and
# softmax in plain tensor operations (and checks for rows with no allowed key), where
# `ViTModel` calls PyTorch's fused `F.scaled_dot_product_attention`. The arithmetic
# is the same; the test's float64 comparison to $10^{-10}$ says so.
#
# On top sit two optional heads on the class token's final state. `classifier` is the
# fine-tuning head of the paper and of `ViTForImageClassification`, one linear layer
# to the classes; with no classes it is the identity and `forward` returns $y$.
# `pooler` is what `ViTModel` returns as `pooler_output`: a dense layer and a $\tanh$,
# the hidden layer of the paper's pre-training head.


class Pooler(nn.Module):
    """Dense and tanh on the class token: `[batch, 1 + N, D]` → `[batch, D]`."""

    def __init__(self, config: Config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: Tensor) -> Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # [batch, D]


class VisionTransformer(nn.Module):
    """The ViT: images `[batch, C, H, W]` → logits `[batch, num_labels]` (or the class
    token's state `[batch, D]` with no labels)."""

    def __init__(self, config: Config = Config()):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(
            EncoderConfig(
                d_model=config.hidden_size,
                nhead=config.num_attention_heads,
                num_encoder_layers=config.num_hidden_layers,
                dim_feedforward=config.intermediate_size,
                dropout=config.dropout,
                activation="gelu",
                layer_norm_eps=config.layer_norm_eps,
                norm_first=True,
                final_norm=True,
            )
        )
        self.pooler = Pooler(config) if config.pooler else None
        self.classifier = (
            nn.Linear(config.hidden_size, config.num_labels)
            if config.num_labels
            else nn.Identity()
        )

    def encode(
        self, images: Tensor, interpolate_pos_encoding: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """`(last_hidden_state [batch, 1 + N, D], pooler_output [batch, D] or None)`,
        as `transformers.ViTModel` returns them."""
        check_images(self.config, images, interpolate_pos_encoding)
        tokens = self.embeddings(images, interpolate_pos_encoding)  # [batch, 1+N, D]
        hidden = self.encoder(tokens)  # [batch, 1 + N, D], after the final LayerNorm
        pooled = None if self.pooler is None else self.pooler(hidden)
        return hidden, pooled

    def forward(self, images: Tensor, interpolate_pos_encoding: bool = False) -> Tensor:
        hidden, _ = self.encode(images, interpolate_pos_encoding)  # [batch, 1 + N, D]
        return self.classifier(hidden[:, 0])  # [batch, num_labels]

    # ## Loading Hugging Face's weights
    #
    # The names are mapped one by one, in the manner of nanoGPT's `from_pretrained`:
    # five for the embeddings, eight linear or norm layers per block, the final norm,
    # the pooler and the classifier. No matrix needs transposing: both sides use
    # `nn.Linear` and `nn.Conv2d`. Two generations of names exist: the installed
    # transformers 5 stores a block as `layers.{i}.attention.q_proj`, `mlp.fc1`, ...,
    # while checkpoints saved by transformers 4 (every ViT on the Hub) say
    # `encoder.layer.{i}.attention.attention.query`, `intermediate.dense`, ...; both
    # load. A `ViTForImageClassification` state dict has everything under `vit.` and
    # adds `classifier`. Anything missing or left over is an error, so a checkpoint of
    # another shape cannot load half-way.

    HF_LAYER = {  # ours: (transformers 5, transformers 4)
        "self_attn.q_proj": ("attention.q_proj", "attention.attention.query"),
        "self_attn.k_proj": ("attention.k_proj", "attention.attention.key"),
        "self_attn.v_proj": ("attention.v_proj", "attention.attention.value"),
        "self_attn.out_proj": ("attention.o_proj", "attention.output.dense"),
        "norm1": ("layernorm_before", "layernorm_before"),
        "norm2": ("layernorm_after", "layernorm_after"),
        "linear1": ("mlp.fc1", "intermediate.dense"),
        "linear2": ("mlp.fc2", "output.dense"),
    }

    @classmethod
    def from_hf_state_dict(
        cls, hf_state: dict[str, Tensor], config: Config
    ) -> "VisionTransformer":
        """A model of `config` holding the weights of a Hugging Face `ViTModel` or
        `ViTForImageClassification` state dict, in their dtype."""
        hf_state = {k.removeprefix("vit."): v for k, v in hf_state.items()}
        old = any(k.startswith("encoder.layer.") for k in hf_state)
        names = {  # ours → theirs
            "embeddings.cls_token": "embeddings.cls_token",
            "embeddings.position_embeddings": "embeddings.position_embeddings",
            "encoder.norm.weight": "layernorm.weight",
            "encoder.norm.bias": "layernorm.bias",
        }
        for kind in ("weight", "bias"):
            names[f"embeddings.patch_embeddings.projection.{kind}"] = (
                f"embeddings.patch_embeddings.projection.{kind}"
            )
            for i in range(config.num_hidden_layers):
                prefix = f"encoder.layer.{i}." if old else f"layers.{i}."
                for ours, theirs in cls.HF_LAYER.items():
                    names[f"encoder.layers.{i}.{ours}.{kind}"] = (
                        prefix + theirs[old] + f".{kind}"
                    )
            if config.pooler:
                names[f"pooler.dense.{kind}"] = f"pooler.dense.{kind}"
            if config.num_labels:
                names[f"classifier.{kind}"] = f"classifier.{kind}"
        missing = sorted(set(names.values()) - set(hf_state))
        unexpected = sorted(set(hf_state) - set(names.values()))
        if missing or unexpected:
            raise ValueError(
                f"from_hf_state_dict: not a ViT state dict of this config; missing "
                f"{missing[:3]}, unexpected {unexpected[:3]}"
            )
        model = cls(config).to(next(iter(hf_state.values())).dtype)
        model.load_state_dict(
            {ours: hf_state[theirs] for ours, theirs in names.items()}
        )
        return model


# ## What the class token looks at
#
# The encoder layers are the Transformer chapter's, which skip returning attention
# weights; `attention_maps` walks the layers itself and asks each layer's attention
# for its weights on the normalised input, exactly what the layer computes inside.
#
# A single layer's weights say little about the whole network: after the first layer
# every token is already a mixture. *Attention rollout* [@abnar2020quantifying], which
# the paper uses for its Figure 6, follows the mixing through the stack. Each layer's
# head-averaged weights $\bar A_\ell$ are mixed with the identity, for the residual
# path that carries every token past the attention (each row still sums to one), and
# multiplied from the first layer to the last:
#
# $$
# R = \prod_{\ell = L}^{1} \tfrac12\bigl(\bar A_\ell + I\bigr).
# $$
#
# Row 0 of $R$, without its own entry, is how much of each patch reaches the class
# token at the end.


@torch.no_grad()
def attention_maps(model: VisionTransformer, images: Tensor) -> Tensor:
    """Every layer's attention weights: `[layers, batch, heads, 1 + N, 1 + N]`."""
    model.eval()
    x = model.embeddings(images)  # [batch, 1 + N, D]
    maps = []
    for layer in model.encoder.layers:
        normed = layer.norm1(x)
        _, weights = layer.self_attn(
            normed, normed, normed, average_attn_weights=False
        )  # [batch, heads, 1 + N, 1 + N]
        maps.append(weights)
        x = layer(x)
    return torch.stack(maps)


def attention_rollout(maps: Tensor) -> Tensor:
    """Rollout of `maps [layers, batch, heads, T, T]`: the class token's share of each
    patch, `[batch, N]`."""
    averaged = maps.mean(dim=2)  # [layers, batch, T, T]
    identity = torch.eye(averaged.shape[-1], dtype=maps.dtype, device=maps.device)
    rollout = identity.expand_as(averaged[0])  # [batch, T, T]
    for layer in averaged:
        mixed = (layer + identity) / 2
        rollout = mixed @ rollout  # later layers on the left
    return rollout[:, 0, 1:]  # [batch, N]


# ## The shapes data
#
# `annotated.data.shapes` draws one coloured circle, square or triangle, small or
# large, anywhere on a black 32×32 image. The label is the pair (shape, colour): 3
# shapes × 5 colours = 15 classes, class $5s + c$. Colour could be read off one
# pixel; the shape needs the outline, which at 4×4 patches spreads over four to
# thirty patches, so the model must combine patches to name it. The training set is
# drawn fresh from one seed and the test set from another.


def shapes_dataset(count: int, seed: int) -> tuple[Tensor, Tensor]:
    """`count` images `[count, 3, 32, 32]` and their (shape, colour) class in
    `[0, 15)`."""
    data = shapes(count, size=32, seed=seed)  # attributes: (size, colour, shape)
    attributes = torch.from_numpy(data.attributes[:, 0])  # [count, 3]
    labels = attributes[:, 2] * len(COLOURS) + attributes[:, 1]
    return torch.from_numpy(data.images), labels


# ## Training
#
# AdamW with weight decay, a linear warm-up and a cosine decay: the recipe of the
# paper and of DeiT [@touvron2021training], shrunk to twenty seconds. No augmentation is
# needed here, because every image is fresh and the test images come from the same
# generator.


def train(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    epochs: int,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
) -> list[float]:
    """Train `model` in place; returns the loss of each step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * math.ceil(len(images) / batch_size)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * s / steps))),
    )
    generator = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    with tqdm(total=steps, desc="training") as bar:
        for _ in range(epochs):
            order = torch.randperm(len(images), generator=generator)
            for start in range(0, len(images), batch_size):
                batch = order[start : start + batch_size]
                loss = F.cross_entropy(model(images[batch]), labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    return losses


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    """The fraction of `images` whose class `model` predicts."""
    model.eval()
    predicted = torch.cat([model(chunk).argmax(1) for chunk in images.split(500)])
    return (predicted == labels).double().mean().item()


def example():
    """An untrained demo-sized ViT on two 32×32 images."""
    torch.manual_seed(0)
    return VisionTransformer(Config()).eval(), (torch.rand(2, 3, 32, 32),)


# ## The figures
#
# The paper's Figure 7 (centre) draws, for each patch position, the cosine similarity
# of its position embedding with every other position's: a small image per position,
# arranged on the grid. If the model has learned the geometry, each small image has
# a bright spot at its own place that fades with distance, and positions in the same
# row or column are more alike. The demo's figure is the same, for the 8×8 grid, and
# it shows what twenty seconds of training do *not* do: the table is still close to its
# random start, each tile bright only at its own position. The task does not need
# the geometry (a shape and a colour can be named from an unordered set of patches),
# and the paper's smooth neighbourhoods come from pre-training on millions of
# images. The attention rollout, by contrast, has already learned where to look.


def plot_position_similarity(model: VisionTransformer, out: Path) -> Path:
    """The cosine similarity of each patch's position embedding with all others."""
    grid = model.config.grid
    table = model.embeddings.position_embeddings[0, 1:].detach().cpu()  # [N, D]
    table = F.normalize(table, dim=-1)
    similarity = (table @ table.T).reshape(grid, grid, grid, grid)  # [r, c, r', c']
    pad = 1
    mosaic = np.full((grid * (grid + pad), grid * (grid + pad)), np.nan)
    for r in range(grid):
        for c in range(grid):
            top, left = r * (grid + pad), c * (grid + pad)
            mosaic[top : top + grid, left : left + grid] = similarity[r, c].numpy()
    fig, ax = figure()
    image = ax.imshow(mosaic, cmap="viridis", vmin=-1, vmax=1)
    ax.set_xticks(
        [(c + 0.5) * (grid + pad) - 1 for c in range(grid)], range(1, grid + 1)
    )
    ax.set_yticks(
        [(r + 0.5) * (grid + pad) - 1 for r in range(grid)], range(1, grid + 1)
    )
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    fig.colorbar(image, ax=ax, label="cosine similarity")
    return save(
        fig,
        out / "position_similarity.png",
        caption="Cosine similarity of each learned position embedding (one small "
        "tile per patch position, in its place on the 8×8 grid) with every other "
        "position's, after the demo's training: each tile is bright only at its own "
        "position, so this short run has not yet learned the smooth 2-D "
        "neighbourhoods of the paper's Figure 7.",
    )


def plot_attention(
    model: VisionTransformer, images: Tensor, labels: Tensor, out: Path
) -> Path:
    """Test images above the rollout of their class token's attention."""
    rollout = attention_rollout(attention_maps(model, images)).cpu()  # [n, N]
    grid = model.config.grid
    fig, axes = figure(panels=6, rows=2)
    for column, (image, label, share) in enumerate(zip(images.cpu(), labels, rollout)):
        shape, colour = SHAPE_NAMES[label // len(COLOURS)], list(COLOURS)[label % 5]
        axes[0, column].imshow(image.permute(1, 2, 0).numpy())
        axes[0, column].set_title(f"{colour} {shape}")
        axes[1, column].imshow(share.reshape(grid, grid).numpy(), cmap="magma")
        axes[1, column].set_title("class token's rollout")
        for ax in axes[:, column]:
            ax.set_xticks([])
            ax.set_yticks([])
    return save(
        fig,
        out / "attention.png",
        caption="Three test images (top) and the attention rollout of the trained "
        "ViT's class token over their 8×8 grid of patches (bottom, bright = more): "
        "the class token draws from the patches that hold the shape.",
    )


def plot_training(losses: list[float], batch_size: int, out: Path) -> Path:
    """The training loss per step of `batch_size` images."""
    fig, ax = figure()
    ax.plot(losses)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    return save(
        fig,
        out / "loss.png",
        caption="Training loss of the ViT on shapes × colours, per step of "
        f"{batch_size} images.",
    )


# ## The demo
#
# It trains the default model on fresh shapes and reports the accuracy on 2,000
# held-out images, then draws the three figures.


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train a small ViT on shapes × colours and draw what it learned."""
    parser = argparse.ArgumentParser(
        description="Train a small Vision Transformer on coloured shapes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--train", type=integer(at_least=1), default=6000, help="training images"
    )
    parser.add_argument(
        "--test", type=integer(at_least=1), default=2000, help="held-out test images"
    )
    parser.add_argument(
        "--epochs", type=integer(at_least=1), default=5, help="passes over the data"
    )
    parser.add_argument(
        "--batch-size", type=integer(at_least=1), default=128, help="mini-batch size"
    )
    parser.add_argument(
        "--lr", type=number(above=0), default=2e-3, help="peak AdamW step size"
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
    parser.add_argument("--out", default="out/vit", help="folder for the figures")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    x_train, y_train = shapes_dataset(args.train, seed=args.seed)
    x_test, y_test = shapes_dataset(args.test, seed=args.seed + 1000)

    model = VisionTransformer(Config()).to(args.device)
    weights = sum(p.numel() for p in model.parameters())
    print(f"parameters: {weights:,}")
    losses = train(
        model,
        x_train.to(args.device),
        y_train.to(args.device),
        args.epochs,
        args.batch_size,
        args.lr,
        args.seed,
    )
    test_accuracy = accuracy(model, x_test.to(args.device), y_test.to(args.device))
    print(f"final training loss {losses[-1]:.4f}")
    print(f"test accuracy {test_accuracy:.4f}")
    plot_training(losses, args.batch_size, out)
    plot_position_similarity(model, out)
    plot_attention(model, x_test[:3].to(args.device), y_test[:3].tolist(), out)
    return {"accuracy": test_accuracy, "loss": losses[-1]}


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Replace the class token by the mean of the patch tokens after the final
#    LayerNorm (the paper's Appendix D.3). Does the accuracy change, and at which
#    learning rate?
# 2. Train with 8×8 patches instead of 4×4. How do the sequence length, the time per
#    step and the accuracy change, and what happens to the small shapes?
# 3. Train at 32×32, then evaluate on 48×48 images of the same shapes with
#    `model(images, interpolate_pos_encoding=True)`, and again with the positions
#    left at their nearest grid entry. Which keeps more accuracy?
# 4. Shuffle the patches of every test image (the same permutation for all) and
#    shuffle the position table the same way. Why is the accuracy unchanged, and what
#    does that say about what a ViT knows of images?
