r"""
---
title: The GGML quantisation formats
summary: >-
  llama.cpp's block formats Q8_0, Q4_0, Q4_1 and Q5_0 written from their byte layout,
  bit for bit equal to the gguf package's reference quantisers, stored in a real GGUF
  file with its metadata, and measured on the small GPT's perplexity.
time: 5 s
references:
  - key: gerganov2023llamacpp
    authors: [Georgi Gerganov, et al.]
    title: "llama.cpp: LLM inference in C/C++"
    year: 2023
    venue: GitHub repository (ggml-quants.c, llama-quant.cpp)
    url: https://github.com/ggml-org/llama.cpp
  - key: gguf2023spec
    authors: [Georgi Gerganov, et al.]
    title: "GGUF: the file format of GGML"
    year: 2023
    venue: ggml documentation (docs/gguf.md)
    url: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
  - key: gerganov2023bitshuffling
    authors: [Georgi Gerganov]
    title: "ggml : remove bit shuffling (pull request #1405)"
    year: 2023
    venue: llama.cpp
    url: https://github.com/ggml-org/llama.cpp/pull/1405
  - key: dettmers2022llmint8
    authors: [Tim Dettmers, Mike Lewis, Younes Belkada, Luke Zettlemoyer]
    title: "LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale"
    year: 2022
    venue: NeurIPS 2022
    arxiv: "2208.07339"
  - key: dettmers2023case
    authors: [Tim Dettmers, Luke Zettlemoyer]
    title: "The case for 4-bit precision: k-bit Inference Scaling Laws"
    year: 2023
    venue: ICML 2023
    arxiv: "2212.09720"
worksheet:
  - region: quantize_q8_0
    hint: >-
      Per block of 32: d is the largest magnitude over 127; q is each weight times
      inverse_scale(d), rounded halves away from zero (round_half_away), as int8. The
      block's bytes are d as fp16 (fp16_bytes) followed by the 32 q reinterpreted as
      uint8.
    tests:
      - test_halves_round_away_from_zero_in_q8_0_and_up_in_q4_0
      - test_extreme_blocks_match_gguf
  - region: quantize_q4_0
    hint: >-
      Per block: take the weight of largest magnitude with its sign (the first on a
      tie) and set d = that / -8; q = trunc(x * inverse_scale(d) + 8.5) clamped to
      [0, 15], in float32 in exactly that order. The bytes are d as fp16 and then
      pack_nibbles(q).
    tests:
      - test_q4_0_layout_by_hand
      - test_random_weights_match_gguf_bit_for_bit
  - region: quantize_q5_0
    hint: >-
      Q4_0 with 32 levels: d = signed maximum / -16 and q = trunc(x * id + 16.5)
      clamped to [0, 31]. The fifth bits (q >> 4) of the 32 weights form one 32-bit
      integer qh, bit i for weight i, stored as 4 little-endian bytes between the
      fp16 d and the nibbles of q's low four bits.
    tests:
      - test_q5_0_fifth_bits_by_hand
      - test_scales_from_tiny_to_large_match_gguf
---

[llama.cpp](https://github.com/ggml-org/llama.cpp) runs language models on laptops and
phones, and the files it reads hold weights of four or five bits
[@gerganov2023llamacpp]. Its oldest formats, which everything later built on, are
*block* formats: a row of a weight matrix is cut into blocks of 32 consecutive
weights, and each block is stored as one 16-bit scale $d$ (and, for Q4_1, an offset
$m$) followed by 32 small integers.
There is no per-tensor or per-row parameter at all.

The [quantisation chapter](../systems/quantization.md) gave each *row* of a matrix its
own scale (per-channel) and packed int4 two to a byte. This chapter shrinks the group to
32 weights and writes the four formats llama.cpp calls Q8_0, Q4_0, Q4_1 and Q5_0 from
their byte layout: where each bit of each block goes, and which float operations turn a
weight into those bits. The test holds us to the byte: on random, extreme and real
weights our packed blocks equal the ones the `gguf` package's reference quantisers
(`gguf.quants`, a NumPy port of llama.cpp's `ggml-quants.c`) produce.

Then the blocks go where llama.cpp reads them: a GGUF file [@gguf2023spec], written
with `gguf.GGUFWriter` with the metadata a runtime needs (architecture, context length,
widths, the token list), read back with `gguf.GGUFReader`, and turned into a model
again. The demo does this for the [pretrained small GPT](pretraining.md) in every
format and measures what each costs in perplexity on the validation pages.
"""

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gguf
import numpy as np
import torch
from matplotlib.patches import Rectangle
from torch import Tensor
from tqdm import tqdm

from annotated.data import integer, torch_device
from annotated.figures import figure, save
from annotated.llm.bpe import Tokenizer
from annotated.llm.gpt2 import GPT2, GPT2Config
from annotated.llm.pretraining import evaluate, pack, small_gpt
from annotated.systems.quantization import INT4_WEIGHT, minmax, qparams
from annotated.systems.quantization import dequantize as dequantize_affine
from annotated.systems.quantization import quantize as quantize_affine

# ## Why blocks of 32
#
# A symmetric grid's step is set by the largest magnitude it must reach: with $2^b$
# levels over $[-\max|x|, \max|x|]$ every weight is rounded to a multiple of about
# $2\max|x| / 2^b$. In a per-row scheme a single large weight sets the step for the
# whole row, and the rows of a language model's matrices do hold such weights: the
# "outlier features" of LLM.int8() are a few input dimensions whose weights and
# activations are many times larger than the rest [@dettmers2022llmint8]. At four bits
# the step is an eighth of the largest weight, so in a row of 4,096 weights whose
# largest is ten times the typical one, the typical weight is rounded to zero or to
# the first level on either side.
#
# A block of 32 confines the damage: the outlier coarsens its 31 neighbours and no
# others. The price is the scale itself, 16 bits shared by 32 weights, **0.5 bits per
# weight**; smaller blocks cost more (1 bit at 16) and larger ones protect less.
# Dettmers and Zettlemoyer, measuring accuracy against total bits over many models,
# found small blocks to be one of the few changes that improve 4-bit inference at a
# fixed bit budget [@dettmers2023case]; llama.cpp's 32 sits at the accurate end.
#
# The second reason is the hardware. A block runs along a row, which is the direction
# of the dot products a matrix–vector product takes, so llama.cpp never dequantises a
# matrix: it quantises the activation vector to Q8_0 blocks too and computes each
# block's contribution as one integer dot product of 32 pairs, scaled once,
# $$
# \textstyle\sum_{k} w_k x_k \approx d_w\, d_x \sum_{k=1}^{32} q_{w,k}\, q_{x,k},
# $$
# and 32 int8 values are exactly one 256-bit AVX2 register (two 128-bit NEON ones).
# That is also why a row's length must be a multiple of 32.
#
# ## The four layouts
#
# Each block is a C struct, packed, little-endian (`block_q4_0` and its siblings in
# `ggml-common.h`). Sizes in bytes, and the bits each weight costs:
#
# | format | fields, in order | bytes / block | bits / weight |
# | --- | --- | --- | --- |
# | Q8_0 | `d` fp16 · `qs` 32 × int8 | 2 + 32 = 34 | 8.5 |
# | Q4_0 | `d` fp16 · `qs` 16 bytes of nibbles | 2 + 16 = 18 | 4.5 |
# | Q4_1 | `d` fp16 · `m` fp16 · `qs` 16 bytes | 2 + 2 + 16 = 20 | 5.0 |
# | Q5_0 | `d` fp16 · `qh` 4 bytes · `qs` 16 bytes | 2 + 4 + 16 = 22 | 5.5 |
#
# The weights decode as $d\,q$ (Q8_0, $q \in [-127, 127]$), $d\,(q - 8)$ (Q4_0,
# $q \in [0, 15]$), $d\,q + m$ (Q4_1, $q \in [0, 15]$) and $d\,(q - 16)$ (Q5_0,
# $q \in [0, 31]$). The 4-bit formats put the 32 values $q_0 \ldots q_{31}$ into 16
# bytes *by halves*, not by pairs:
#
# | byte $j$ of `qs` ($0 \le j < 16$) | bits 7–4 | bits 3–0 |
# | --- | --- | --- |
# | Q4_0, Q4_1 | $q_{j+16}$ | $q_j$ |
# | Q5_0 | low 4 bits of $q_{j+16}$ | low 4 bits of $q_j$ |
#
# and Q5_0 keeps the fifth bit of every $q_i$ as bit $i$ of `qh`, read as a
# little-endian 32-bit integer. One AND
# with `0x0F` over the 16 bytes gives weights 0–15 in order, one shift right by 4 gives
# weights 16–31: unpacking costs two vector instructions and no shuffle. The
# [quantisation chapter](../systems/quantization.md)'s `pack_int4` interleaves pairs
# instead ($q_{2j}$ low, $q_{2j+1}$ high), which is what ggml did too until May 2023,
# when this order replaced it and every file quantised before had to be redone
# [@gerganov2023bitshuffling]. The figure `layouts.png` of the demo draws the four
# blocks byte by byte.
BLOCK = 32  # weights per block: QK8_0, QK4_0, QK4_1 and QK5_0 in ggml-common.h


@dataclass(frozen=True)
class BlockFormat:
    """One GGML block format: its name, the bytes a block of 32 weights takes, and
    the two functions between `[blocks, 32]` float32 weights and `[blocks,
    block_bytes]` uint8."""

    name: str
    block_bytes: int
    quantize_blocks: Callable[[Tensor], Tensor]
    dequantize_blocks: Callable[[Tensor], Tensor]

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.block_bytes / BLOCK


# ## Half-precision scales
#
# The scale is stored as IEEE fp16, two bytes, low byte first. Rounding a float32 to
# fp16 is round-to-nearest-even in NumPy (`astype(np.float16)`), in torch (`.half()`)
# and in ggml's `GGML_FP32_TO_FP16`, so the three agree. Two things follow from the
# conversion. The quantiser computes the integers with the float32 $d$ but the decoder
# multiplies by the fp16 one, which differs from it by up to $2^{-11}$ relatively: a
# small, systematic stretch of every block. And fp16 ends at 65,504, so a block whose
# largest magnitude exceeds $65{,}504 \times 8 \approx 524{,}000$ (Q4_0) gets
# $d = \pm\infty$; trained weights are nowhere near, and the test checks that even there
# our bytes are gguf's.
def fp16_bytes(d: Tensor) -> Tensor:
    """`d [blocks, 1]` float32 as fp16, viewed as bytes: `[blocks, 2]` uint8."""
    return d.half().view(torch.uint8)


def fp16_from_bytes(pair: Tensor) -> Tensor:
    """The inverse of `fp16_bytes`: `[blocks, 2]` uint8 → `[blocks, 1]` float32."""
    return pair.contiguous().view(torch.float16).float()


# ## Q8_0: eight bits, rounded half away from zero
#
# Q8_0 is the per-block form of the symmetric int8 scheme: $d = \max|x| / 127$ and
# $q = \mathrm{round}(x / d)$. ggml's `quantize_row_q8_0_ref` multiplies by the float32
# reciprocal `id = 1/d` (zero when $d = 0$, so an all-zero block stores zeros) and
# rounds with C's `roundf`, which sends halves *away from zero*: $2.5 \to 3$,
# $-2.5 \to -3$. torch's `round` sends halves to the even neighbour ($2.5 \to 2$), so
# we cannot use it. `round_half_away` is the construction gguf uses: with
# $a = |v|$, $\lfloor a \rfloor + \lfloor 2(a - \lfloor a \rfloor) \rfloor$ adds one
# exactly when the fraction is at least one half, and every step is exact in float32
# (the simpler $\lfloor a + 0.5 \rfloor$ is not: $0.49999997 + 0.5$ rounds up to 1).
def round_half_away(v: Tensor) -> Tensor:
    """`v` rounded to the nearest integer, halves away from zero (C's `roundf`)."""
    a = v.abs()
    floored = a.floor()
    return v.sign() * (floored + (2 * (a - floored)).floor())


def inverse_scale(d: Tensor) -> Tensor:
    """`1 / d`, and 0 where `d` is 0 (ggml's `id = d ? 1.0f/d : 0.0f`)."""
    return torch.where(d == 0, torch.zeros_like(d), 1.0 / d)


def quantize_q8_0(blocks: Tensor) -> Tensor:
    """`[n, 32]` float32 → `[n, 34]` uint8: fp16 `d`, then 32 int8 `q`."""
    d = blocks.abs().amax(dim=1, keepdim=True) / 127  # [n, 1]
    q = round_half_away(blocks * inverse_scale(d))  # [n, 32], in [-127, 127]
    return torch.cat([fp16_bytes(d), q.to(torch.int8).view(torch.uint8)], dim=1)


def dequantize_q8_0(data: Tensor) -> Tensor:
    r"""`[n, 34]` uint8 → `[n, 32]` float32: $d\,q$."""
    d = fp16_from_bytes(data[:, :2])  # [n, 1]
    return data[:, 2:].view(torch.int8).float() * d  # [n, 32]


# ## Nibbles, by halves
#
# The 4-bit formats share the packing of the table above: `q[:, :16]` into the low
# nibbles and `q[:, 16:]` into the high ones. Masking with `0x0F` before the shift is
# what Q5_0 needs (its $q$ has five bits, the fifth goes to `qh`); for Q4_0 and Q4_1
# it changes nothing.
def pack_nibbles(q: Tensor) -> Tensor:
    """`[n, 32]` uint8 → `[n, 16]` uint8: byte `j` holds `q[j]` in its low nibble and
    `q[j + 16]` in its high one."""
    return (q[:, :16] & 0x0F) | ((q[:, 16:] & 0x0F) << 4)


def unpack_nibbles(qs: Tensor) -> Tensor:
    """The inverse of `pack_nibbles`: `[n, 16]` → `[n, 32]` values in [0, 15]."""
    return torch.cat([qs & 0x0F, qs >> 4], dim=1)


# ## Q4_0: the signed maximum
#
# Q4_0 decodes $d\,(q - 8)$ with $q \in [0, 15]$: sixteen levels from $-8d$ to $7d$,
# one more below zero than above. A symmetric scale $\max|x| / 7$ would leave the level
# $-8$ unused. ggml instead takes the weight of largest magnitude *with its sign*,
# `max`, and sets $d = \texttt{max} / {-8}$: that weight lands exactly on level $-8$
# ($q = 0$), whichever its sign, and the opposite side, which holds smaller
# magnitudes, gets the seven levels up to $7|d|$ (llama.cpp's "use full range for
# q4_0" of April 2023, in place of a $\max|x|/7$ scale). If two weights tie in
# magnitude with opposite signs, the first one in the block wins: NumPy's `argmax` and
# torch's `argmax` both return the first maximum, and the other is clamped to $7|d|$,
# an eighth short of its value.
#
# The integers are `(uint8)(x * id + 8.5f)`, clamped to 15. Since
# $x \cdot id + 8 \ge 0$, truncation after adding $8.5$ rounds $x \cdot id$ to the
# nearest integer with halves going *up* (towards $+\infty$, so $-2.5 \to -2$, not
# away from zero as in Q8_0). And the rounding happens in float32 *after* the
# addition: $x \cdot id = 0.49999997$ plus $8.5$ is $8.99999997$, which float32 stores
# as exactly 9, so the weight gets level 1 where exact arithmetic would give 0. The
# formula is the format: to match its bits we compute the same float32 products and
# sums in the same order, never a fused multiply–add and never in float64.
def quantize_q4_0(blocks: Tensor) -> Tensor:
    """`[n, 32]` float32 → `[n, 18]` uint8: fp16 `d`, then 16 bytes of nibbles."""
    index = blocks.abs().argmax(dim=1, keepdim=True)  # [n, 1], the first maximum
    signed_max = blocks.gather(1, index)  # [n, 1], with its sign
    d = signed_max / -8  # [n, 1]
    q = torch.trunc(blocks * inverse_scale(d) + 8.5).clamp(0, 15).to(torch.uint8)
    return torch.cat([fp16_bytes(d), pack_nibbles(q)], dim=1)


def dequantize_q4_0(data: Tensor) -> Tensor:
    r"""`[n, 18]` uint8 → `[n, 32]` float32: $d\,(q - 8)$."""
    d = fp16_from_bytes(data[:, :2])  # [n, 1]
    q = unpack_nibbles(data[:, 2:]).to(torch.int8) - 8  # [n, 32] in [-8, 7]
    return d * q.float()


# ## Q4_1: a minimum instead of a zero point
#
# Q4_1 is the asymmetric scheme per block, spending all sixteen levels on
# $[\min x, \max x]$: $d = (\max - \min)/15$, $q = \lfloor (x - \min)\cdot id + 0.5
# \rfloor$ (round half up again, by truncation of a non-negative float32). Where the
# [quantisation chapter](../systems/quantization.md) stored an integer zero point, Q4_1
# stores the minimum itself as a second fp16, `m`, and decodes $d\,q + m$: the
# smallest weight comes back exact up to fp16 rounding, and a block with all weights
# of one sign loses nothing to a wasted half of the grid. It costs two more bytes a
# block, 5 bits a weight. As with $d$, the integers come from the float32 minimum and
# the decoder adds the fp16 one. The decoder's $d\,q + m$ is two float32 operations,
# a product rounded and then a sum rounded, in NumPy and in torch alike; a fused
# multiply–add would round once and could differ in the last bit.
def quantize_q4_1(blocks: Tensor) -> Tensor:
    """`[n, 32]` float32 → `[n, 20]` uint8: fp16 `d`, fp16 `m`, 16 bytes of nibbles."""
    low = blocks.amin(dim=1, keepdim=True)  # [n, 1]
    high = blocks.amax(dim=1, keepdim=True)  # [n, 1]
    d = (high - low) / 15  # [n, 1]
    q = torch.trunc((blocks - low) * inverse_scale(d) + 0.5).clamp(0, 15)
    q = q.to(torch.uint8)  # [n, 32]
    return torch.cat([fp16_bytes(d), fp16_bytes(low), pack_nibbles(q)], dim=1)


def dequantize_q4_1(data: Tensor) -> Tensor:
    r"""`[n, 20]` uint8 → `[n, 32]` float32: $d\,q + m$."""
    d, m = fp16_from_bytes(data[:, :2]), fp16_from_bytes(data[:, 2:4])  # [n, 1] each
    return d * unpack_nibbles(data[:, 4:]).float() + m


# ## Q5_0: the fifth bits in a word of their own
#
# Q5_0 is Q4_0 with 32 levels: $d = \texttt{max} / {-16}$, $q =
# \mathrm{trunc}(x \cdot id + 16.5)$ clamped to 31, decoded as $d\,(q - 16)$. Five bits
# do not pack evenly into bytes, so ggml splits each $q$: the low four bits go into the
# nibbles exactly as in Q4_0, and the 32 fifth bits form one 32-bit integer `qh`, bit
# $i$ being the fifth bit of $q_i$, stored little-endian. The decoder rebuilds
# $q_i = \text{nibble}_i \,|\, (\text{bit}_i \ll 4)$. Half a byte plus one bit per
# weight, and a scale: 5.5 bits.
FIFTH_BIT_SHIFTS = torch.arange(BLOCK)  # bit i of qh belongs to weight i
BYTE_SHIFTS = torch.tensor([0, 8, 16, 24])  # little-endian: low byte first


def quantize_q5_0(blocks: Tensor) -> Tensor:
    """`[n, 32]` float32 → `[n, 22]` uint8: fp16 `d`, uint32 `qh`, 16 bytes of
    nibbles."""
    index = blocks.abs().argmax(dim=1, keepdim=True)  # [n, 1]
    d = blocks.gather(1, index) / -16  # [n, 1]
    q = torch.trunc(blocks * inverse_scale(d) + 16.5).clamp(0, 31).to(torch.uint8)
    fifth = (q >> 4).long()  # [n, 32] in {0, 1}
    qh = (fifth << FIFTH_BIT_SHIFTS).sum(dim=1, keepdim=True)  # [n, 1], < 2^32
    qh_bytes = ((qh >> BYTE_SHIFTS) & 0xFF).to(torch.uint8)  # [n, 4]
    return torch.cat([fp16_bytes(d), qh_bytes, pack_nibbles(q)], dim=1)


def dequantize_q5_0(data: Tensor) -> Tensor:
    r"""`[n, 22]` uint8 → `[n, 32]` float32: $d\,(q - 16)$."""
    d = fp16_from_bytes(data[:, :2])  # [n, 1]
    byte_shifts = BYTE_SHIFTS.to(data.device)
    qh = (data[:, 2:6].long() << byte_shifts).sum(dim=1, keepdim=True)  # [n, 1]
    fifth = (qh >> FIFTH_BIT_SHIFTS.to(data.device)) & 1  # [n, 32]
    q = unpack_nibbles(data[:, 6:]).long() | (fifth << 4)  # [n, 32] in [0, 31]
    return d * (q - 16).float()


FORMATS = {
    "Q8_0": BlockFormat("Q8_0", 34, quantize_q8_0, dequantize_q8_0),
    "Q4_0": BlockFormat("Q4_0", 18, quantize_q4_0, dequantize_q4_0),
    "Q4_1": BlockFormat("Q4_1", 20, quantize_q4_1, dequantize_q4_1),
    "Q5_0": BlockFormat("Q5_0", 22, quantize_q5_0, dequantize_q5_0),
}


# ## Whole tensors
#
# A tensor of any shape whose last dimension (a row, `ne0` in ggml's terms) is a
# multiple of 32 becomes `[..., row / 32 × block_bytes]` bytes: its rows cut into
# blocks, each block quantised, the bytes laid end to end. That is the shape
# `gguf.quants.quantize` returns and the byte order of a GGUF tensor. The input is
# converted to float32 first (as gguf does), so a float64 or bf16 tensor gives the
# bytes its float32 rounding would.
#
# Quantising runs on the CPU whatever the input's device. It is a one-off conversion,
# as llama.cpp's `llama-quantize` is, and on a GPU PyTorch divides a tensor by a Python
# number by multiplying by its reciprocal, which can change the last bit of $d$.
# Dequantising runs where the bytes are: fp16 to float32, integers to float32 and one
# float32 product (and sum) per weight are exact or correctly rounded everywhere.
def check_format(qtype: str) -> BlockFormat:
    if qtype not in FORMATS:
        raise ValueError(f"qtype must be one of {tuple(FORMATS)}, got {qtype!r}")
    return FORMATS[qtype]


def quantize(weights: Tensor, qtype: str) -> Tensor:
    """`weights [..., n]` (float, `n` a multiple of 32) as GGML `qtype` blocks:
    `[..., n / 32 * block_bytes]` uint8 on the CPU."""
    block_format = check_format(qtype)
    if not isinstance(weights, Tensor):
        raise TypeError(
            f"quantize: weights must be a float torch.Tensor, got "
            f"{type(weights).__name__} (torch.from_numpy converts an array)"
        )
    if not weights.is_floating_point():
        raise TypeError(
            f"quantize: weights must be a float tensor, got {weights.dtype}"
        )
    if weights.dim() == 0 or weights.shape[-1] % BLOCK:
        raise ValueError(
            f"quantize: weights' last dimension must be a multiple of {BLOCK} for "
            f"{qtype}, got shape {tuple(weights.shape)}"
        )
    rows = weights.detach().to("cpu", torch.float32)
    blocks = rows.reshape(-1, BLOCK)  # [blocks, 32]
    data = block_format.quantize_blocks(blocks)  # [blocks, block_bytes]
    width = weights.shape[-1] // BLOCK * block_format.block_bytes
    return data.reshape(*weights.shape[:-1], width)


def dequantize(data: Tensor, qtype: str) -> Tensor:
    """GGML `qtype` blocks `[..., m]` uint8 back to float32 weights
    `[..., m / block_bytes * 32]`, on `data`'s device."""
    block_format = check_format(qtype)
    if not isinstance(data, Tensor) or data.dtype != torch.uint8:
        kind = data.dtype if isinstance(data, Tensor) else type(data).__name__
        raise TypeError(f"dequantize: data must be a uint8 tensor, got {kind}")
    size = block_format.block_bytes
    if data.dim() == 0 or data.shape[-1] % size:
        raise ValueError(
            f"dequantize: data's last dimension must be a multiple of {qtype}'s "
            f"{size} bytes a block, got shape {tuple(data.shape)}"
        )
    blocks = data.reshape(-1, size)  # [blocks, block_bytes]
    weights = block_format.dequantize_blocks(blocks)  # [blocks, 32]
    return weights.reshape(*data.shape[:-1], data.shape[-1] // size * BLOCK)


# ## Which tensors, and the tied embedding
#
# llama.cpp's `llama-quantize` converts a tensor only if it is a matrix: vectors (the
# biases and LayerNorm gains here) stay in float32, they are a sliver of the model and
# are read once per token. It also skips the position embedding ("do not quantize
# positional embeddings", in `llama-quant.cpp`), and so do we. That leaves the token
# embedding and, in each block, `c_attn`, `attn.c_proj`, `c_fc` and `mlp.c_proj`. Our
# `nn.Linear` weights are `[out, in]`, so their rows run along the input: the
# direction of the dot products, as the blocks need. (HF's GPT-2 stores `Conv1D`
# weights as `[in, out]`, and llama.cpp's converter transposes them for this reason.)
#
# GPT-2's output head is its token embedding, tied. We quantise that matrix once and
# both uses read the same blocks: the embedding looks up rows of it and the head takes
# dot products with them. A GGUF file stores it once, as `token_embd.weight`, with no
# separate `output.weight`. The tie matters for the error: the embedding matrix is
# 769 × 128 here, a tenth of the model, and its error reaches every logit.
def is_quantised(name: str, tensor: Tensor) -> bool:
    """Whether llama.cpp's quantiser converts the tensor `name` of our state dict."""
    return tensor.dim() == 2 and name != "wpe.weight"


def quantize_model(model: GPT2, qtype: str) -> GPT2:
    """A copy of `model` whose quantised matrices are replaced by their `qtype`
    round trip (dequantise(quantise(w)))."""
    check_format(qtype)
    state = {
        name: dequantize(quantize(tensor, qtype), qtype).to(tensor.device)
        if is_quantised(name, tensor)
        else tensor
        for name, tensor in model.state_dict().items()
    }
    copy = GPT2(model.config).to(next(model.parameters()).device)
    copy.load_state_dict(state)
    return copy.eval()


# ## A GGUF file
#
# GGUF is one file: a header, a list of typed key–value pairs (the metadata), a table
# of tensors (name, shape, ggml type, offset) and the tensor data, each tensor aligned
# to 32 bytes [@gguf2023spec]. Shapes are written fastest dimension first, ggml's
# `ne0, ne1`: our `[out, in]` matrix is `[in, out]` in the file, and the bytes are the
# rows one after the other, exactly what `quantize` returns.
#
# Tensor names follow llama.cpp's scheme (`token_embd.weight`, `blk.0.attn_qkv.weight`,
# `blk.0.ffn_up.weight`, ...). The `gguf` package holds the map from HF module names to
# them, `gguf.get_tensor_name_map`, and our state dict's names are HF's without
# `transformer.`. The keys a GPT-2 runtime reads are prefixed with the architecture:
# `gpt2.context_length`, `gpt2.embedding_length`, `gpt2.feed_forward_length`,
# `gpt2.block_count`, `gpt2.attention.head_count` and
# `gpt2.attention.layer_norm_epsilon`; `general.file_type` records the format the
# matrices are in.
def gguf_names(model: GPT2) -> dict[str, str]:
    """`model`'s state-dict names → llama.cpp's GGUF tensor names."""
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, model.config.n_layer)
    return {
        name: name_map.get_name(
            f"transformer.{name}", try_suffixes=(".weight", ".bias")
        )
        for name in model.state_dict()
    }


# The token list is stored the way GPT-2's own vocabulary file and llama.cpp store it:
# each token's bytes spelled with GPT-2's byte-to-character table, in which the 188
# printable bytes stand for themselves and the other 68 (space, control bytes, ...)
# are mapped to the characters from U+0100 on. A space becomes `Ġ`, and any sequence
# of bytes, valid UTF-8 or not, becomes a valid string.
def byte_characters() -> dict[int, str]:
    """GPT-2's `bytes_to_unicode`: a printable character for every byte."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def token_strings(tokenizer: Tokenizer) -> list[str]:
    """Every token of `tokenizer`, by id, in GPT-2's byte-level spelling."""
    table = byte_characters()
    specials = set(tokenizer.special_tokens.values())
    return [
        tokenizer.token_bytes[i].decode("utf-8")
        if i in specials
        else "".join(table[b] for b in tokenizer.token_bytes[i])
        for i in range(tokenizer.vocabulary_size)
    ]


def write_gguf(path: str | Path, model: GPT2, tokenizer: Tokenizer, qtype: str) -> Path:
    """Write `model` to the GGUF file `path`, its matrices in `qtype` (or "F32"),
    with GPT-2's metadata and `tokenizer`'s tokens."""
    if qtype != "F32":
        check_format(qtype)
    config = model.config
    if tokenizer.vocabulary_size != config.vocab_size:
        raise ValueError(
            f"write_gguf: tokenizer has {tokenizer.vocabulary_size} tokens but the "
            f"model's vocab_size is {config.vocab_size}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, "gpt2")
    writer.add_name("small GPT")
    writer.add_context_length(config.n_positions)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(4 * config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)
    file_type = "ALL_F32" if qtype == "F32" else f"MOSTLY_{qtype}"
    writer.add_file_type(gguf.LlamaFileType[file_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(token_strings(tokenizer))
    specials = set(tokenizer.special_tokens.values())
    writer.add_token_types(
        [
            gguf.TokenType.CONTROL if i in specials else gguf.TokenType.NORMAL
            for i in range(tokenizer.vocabulary_size)
        ]
    )
    writer.add_eos_token_id(tokenizer.special_tokens["<|endoftext|>"])
    names = gguf_names(model)
    for name, tensor in model.state_dict().items():
        if qtype != "F32" and is_quantised(name, tensor):
            data = quantize(tensor, qtype).numpy()  # [out, in / 32 * block_bytes]
            writer.add_tensor(
                names[name], data, raw_dtype=gguf.GGMLQuantizationType[qtype]
            )
        else:
            writer.add_tensor(names[name], tensor.detach().float().cpu().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# Reading is the reverse, with `gguf.GGUFReader`, which maps the file into memory:
# each field's `contents()` is its value, each tensor has its ggml type, its shape
# (ggml order) and its data as a NumPy array (raw bytes for a quantised type). The
# model comes back from the metadata alone, and each quantised matrix through our
# `dequantize`, so that a file `write_gguf` wrote gives the same logits as
# `quantize_model`, to the bit.
def read_gguf(path: str | Path) -> tuple[dict[str, object], dict[str, tuple]]:
    """The metadata `{key: value}` and the tensors `{name: (type name, ggml shape,
    data)}` of the GGUF file `path`."""
    reader = gguf.GGUFReader(path)
    metadata = {
        key: field.contents()
        for key, field in reader.fields.items()
        if not key.startswith("GGUF.")
    }
    tensors = {
        tensor.name: (
            tensor.tensor_type.name,
            tuple(int(n) for n in tensor.shape),
            np.array(tensor.data),
        )
        for tensor in reader.tensors
    }
    return metadata, tensors


def model_from_gguf(path: str | Path) -> GPT2:
    """The GPT2 stored in the GGUF file `path`, its matrices dequantised."""
    metadata, tensors = read_gguf(path)
    if metadata.get("general.architecture") != "gpt2":
        raise ValueError(f"{path}: not a gpt2 GGUF file")
    config = GPT2Config(
        vocab_size=len(metadata["tokenizer.ggml.tokens"]),
        n_positions=metadata["gpt2.context_length"],
        n_embd=metadata["gpt2.embedding_length"],
        n_layer=metadata["gpt2.block_count"],
        n_head=metadata["gpt2.attention.head_count"],
        dropout=0.0,
        layer_norm_epsilon=metadata["gpt2.attention.layer_norm_epsilon"],
    )
    model = GPT2(config)
    state = {}
    for name, gguf_name in gguf_names(model).items():
        kind, _, data = tensors[gguf_name]
        if kind == "F32":
            state[name] = torch.from_numpy(data)
        else:
            state[name] = dequantize(torch.from_numpy(data), kind)
    model.load_state_dict(state)
    return model.eval()


# ## The example
#
# One Q4_0 quantisation of a 4 × 64 matrix: eight blocks, eighteen bytes each. The page
# draws the steps between the weights and the bytes.
def example():
    """`quantize` on a 4 × 64 float32 matrix in Q4_0."""
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(4, 64, generator=generator)  # [4, 64]
    return quantize, (weights, "Q4_0")


def dataflow(output: Tensor):
    """The steps of `quantize` in Q4_0, with the example's shapes."""
    rows, width = output.shape
    blocks = rows * width // 18
    nodes = [
        ("weights", f"weights\n[{rows}, {blocks // rows * BLOCK}] float32"),
        ("blocks", f"reshape into blocks\n[{blocks}, 32]"),
        ("scale", f"signed max / -8 → d\n[{blocks}, 1] → fp16 bytes [{blocks}, 2]"),
        ("levels", f"trunc(x · id + 8.5), clamp\nq [{blocks}, 32] in 0..15"),
        ("nibbles", f"pack_nibbles: q[j] | q[j+16] << 4\n[{blocks}, 16] uint8"),
        ("bytes", f"d ‖ qs per block\n[{rows}, {width}] uint8"),
    ]
    edges = [
        ("weights", "blocks", f"[{blocks}, 32]"),
        ("blocks", "scale", "max |x| with its sign"),
        ("blocks", "levels", "x"),
        ("scale", "levels", "id = 1 / d"),
        ("levels", "nibbles", "32 values"),
        ("scale", "bytes", "2 bytes"),
        ("nibbles", "bytes", "16 bytes"),
    ]
    return nodes, edges


# ## The demo
#
# The small GPT of the [pretraining chapter](pretraining.md) (4 layers, width 128,
# 0.9M parameters), written to a GGUF file in float32 and in each block format, read
# back, and scored on the validation pages: mean next-token loss over evenly spaced
# windows of 64 tokens, and its exponential, the perplexity. For contrast, one more
# row quantises the same matrices to 4-bit with one scale *per row*, the
# [quantisation chapter](../systems/quantization.md)'s `INT4_WEIGHT` (symmetric,
# $s = \max|w| / 7.5$ per row, levels $[-8, 7]$): the same four bits per weight as
# Q4_0's integers, and one scale per 128 or 512 weights instead of one per 32.
#
# On the small GPT (float32 perplexity 30.25 on 64 windows) Q8_0 costs 0.001, Q5_0
# 0.09, Q4_1 0.28 and Q4_0 0.37, and per-row int4, with half a bit less per weight
# than Q4_0, costs 0.39. Here Q4_0's blocks cut the weight error from 0.108 to 0.082
# but buy almost no perplexity; in a run on another machine, whose training gave a
# slightly different model, per-row int4 cost 0.78 against Q4_0's 0.34. Q4_1 has the
# lower weight error of the two 4-bit formats (0.074 against 0.082) and the better
# score; but the RMS error of the weights is not the loss, and gaps of a tenth or less
# are one measurement on one set of windows of a small model. Real 7B models show the
# same order at larger gaps: llama.cpp's tables put Q4_0 and Q4_1 well behind Q5_0,
# and Q8_0 within a hair of float16 [@gerganov2023llamacpp].
#
# Each file is checked against `quantize_model`, the same round trip done in memory:
# the weights read back from the file must be equal to the bit. The weight error
# printed is the root-mean-square error of all quantised matrices relative to their
# root-mean-square value. The bits per weight are the format's; the
# file sizes include the float32 vectors, the position embedding and the metadata.
def per_row_int4(model: GPT2) -> GPT2:
    """A copy of `model` with the same matrices in per-row symmetric int4."""
    state = {}
    for name, tensor in model.state_dict().items():
        if is_quantised(name, tensor):
            weights = tensor.detach().float().cpu()  # [out, in]
            scale, zero = qparams(*minmax(weights, INT4_WEIGHT), INT4_WEIGHT)
            q = quantize_affine(weights, scale, zero, INT4_WEIGHT)
            tensor = dequantize_affine(q, scale, zero).to(tensor.device)
        state[name] = tensor
    copy = GPT2(model.config).to(next(model.parameters()).device)
    copy.load_state_dict(state)
    return copy.eval()


def weight_error(model: GPT2, reference: GPT2) -> float:
    """RMS error of `model`'s quantised matrices relative to `reference`'s RMS."""
    error, total = 0.0, 0.0
    reference_state = reference.state_dict()
    for name, tensor in model.state_dict().items():
        if is_quantised(name, tensor):
            original = reference_state[name].double()
            error += (tensor.double() - original).square().sum().item()
            total += original.square().sum().item()
    return (error / total) ** 0.5


FIELD_COLOURS = {"d": "#2171b5", "m": "#6baed6", "qh": "#d94801", "qs": "#bbbbbb"}
LAYOUTS = {  # the fields of each block, (name, bytes), in the order stored
    "Q8_0": [("d", 2), ("qs", 32)],
    "Q5_0": [("d", 2), ("qh", 4), ("qs", 16)],
    "Q4_1": [("d", 2), ("m", 2), ("qs", 16)],
    "Q4_0": [("d", 2), ("qs", 16)],
}


def plot_layouts(out: Path) -> Path:
    """`layouts.png`: each format's block, one cell per byte."""
    fig, axes = figure(panels=2)
    grid = axes[0].get_gridspec()
    for axis in axes:
        axis.remove()
    ax = fig.add_subplot(grid[0, :])
    for row, (name, fields) in enumerate(LAYOUTS.items()):
        start = 0
        for field, size in fields:
            for byte in range(start, start + size):
                colour = FIELD_COLOURS[field]
                ax.add_patch(
                    Rectangle((byte, row - 0.35), 1, 0.7, fc=colour, ec="white")
                )
            label = {
                "d": "d",
                "m": "m",
                "qh": "qh",
                "qs": "qs: int8 $q_0 \\ldots q_{31}$"
                if name == "Q8_0"
                else "qs: byte $j$ = $q_j$ | $q_{j+16}$ << 4",
            }[field]
            ax.text(start + size / 2, row, label, ha="center", va="center")
            start += size
        bits = FORMATS[name].bits_per_weight
        ax.text(start + 0.6, row, f"{start} bytes, {bits:g} bits/weight", va="center")
    ax.set(xlim=(0, 46), ylim=(3.6, -0.6), xlabel="byte offset in the block")
    ax.set_yticks(range(len(LAYOUTS)), list(LAYOUTS))
    ax.set_xticks(range(0, 35, 2))
    ax.set_title("One block of 32 weights in each GGML format")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return save(
        fig,
        out / "layouts.png",
        caption="The bytes of one block of 32 weights in Q8_0, Q5_0, Q4_1 and Q4_0: "
        "the fp16 scale d (dark blue), Q4_1's fp16 minimum m (light blue), Q5_0's "
        "32 fifth bits qh (orange; bit i is the fifth bit of weight i) and the "
        "integers qs (grey), packed two to a byte by halves in the 4- and 5-bit "
        "formats.",
    )


def plot_perplexity(results: dict[str, dict[str, float]], out: Path) -> Path:
    """`perplexity.png`: perplexity and weight error of each format."""
    names = list(results)
    fig, (left, right) = figure(panels=2)
    colours = ["#444444" if n == "F32" else "#2171b5" for n in names]
    colours = ["#d94801" if n == "int4 per row" else c for n, c in zip(names, colours)]
    perplexities = [results[n]["perplexity"] for n in names]
    left.bar(names, perplexities, color=colours)
    left.axhline(results["F32"]["perplexity"], color="#444444", lw=0.8, ls="--")
    low = min(perplexities)
    left.set_ylim(low * 0.97, max(perplexities) * 1.01)
    for x, value in enumerate(perplexities):
        left.text(x, value, f"{value:.2f}", ha="center", va="bottom")
    left.set(title="Validation perplexity", ylabel="perplexity")
    left.tick_params(axis="x", rotation=30)
    quantised = [n for n in names if n != "F32"]
    right.bar(
        quantised,
        [results[n]["weight_error"] for n in quantised],
        color=colours[1:],
    )
    for x, n in enumerate(quantised):
        right.text(
            x,
            results[n]["weight_error"],
            f"{results[n]['bits_per_weight']:g} b",
            ha="center",
            va="bottom",
        )
    right.set(
        title="Relative RMS error of the matrices",
        ylabel="RMS error / RMS weight",
        yscale="log",
    )
    top = max(results[n]["weight_error"] for n in quantised)
    right.set_ylim(top=top * 1.6)  # room above the tallest bar for its label
    right.tick_params(axis="x", rotation=30)
    return save(
        fig,
        out / "perplexity.png",
        caption="Left: the small GPT's perplexity on the validation pages with its "
        "matrices in float32 and read back from GGUF files in each block format, and "
        "in per-row int4 (orange); the axis starts just below float32's value. "
        "Right: the relative RMS error of the quantised matrices, labelled with the "
        "bits each weight costs.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Write the small GPT to GGUF in every format, read it back, measure perplexity."""
    parser = argparse.ArgumentParser(
        description="Quantise the small GPT to GGML block formats in GGUF files and "
        "measure validation perplexity.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--formats",
        nargs="+",
        default=["Q8_0", "Q5_0", "Q4_1", "Q4_0"],
        choices=list(FORMATS),
        help="block formats to write and evaluate",
    )
    parser.add_argument(
        "--windows",
        type=integer(at_least=1),
        default=64,
        help="validation windows of 64 tokens",
    )
    parser.add_argument(
        "--threads",
        type=integer(at_least=1),
        default=1,
        help="torch CPU threads: at these sizes a second thread costs more than it "
        "saves, much more on a busy machine",
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to evaluate on",
    )
    parser.add_argument("--out", default="out/ggml_quant", help="folder for the files")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model, tokenizer, _, validation_pages = small_gpt("cpu")
    tokens = pack(validation_pages, tokenizer)
    block = model.config.n_positions
    results = {}
    for name in tqdm(["F32", *args.formats], desc="formats"):
        path = write_gguf(out / f"small-gpt-{name}.gguf", model, tokenizer, name)
        restored = model_from_gguf(path)
        if name != "F32":  # the file holds exactly the in-memory round trip
            in_memory = quantize_model(model, name).state_dict()
            same = all(
                torch.equal(tensor, in_memory[key])
                for key, tensor in restored.state_dict().items()
            )
            print(f"{name}: the GGUF file's weights equal quantize_model's: {same}")
        loss = evaluate(restored.to(args.device), tokens, block, args.windows)
        results[name] = {
            "loss": loss,
            "perplexity": float(np.exp(loss)),
            "bits_per_weight": 32.0 if name == "F32" else FORMATS[name].bits_per_weight,
            "file_bytes": path.stat().st_size,
            "weight_error": weight_error(restored, model),
        }
    row_int4 = per_row_int4(model)
    loss = evaluate(row_int4.to(args.device), tokens, block, args.windows)
    results["int4 per row"] = {
        "loss": loss,
        "perplexity": float(np.exp(loss)),
        "bits_per_weight": 4.0,
        "file_bytes": float("nan"),
        "weight_error": weight_error(row_int4, model),
    }

    print(
        f"{'format':>13} {'bits/w':>7} {'file KiB':>9} {'loss':>7} "
        f"{'perplexity':>10} {'rel. error':>10}"
    )
    for name, r in results.items():
        print(
            f"{name:>13} {r['bits_per_weight']:7.2f} {r['file_bytes'] / 1024:9.1f} "
            f"{r['loss']:7.4f} {r['perplexity']:10.3f} {r['weight_error']:10.4f}"
        )
    plot_layouts(out)
    plot_perplexity(results, out)
    metrics = {}
    for name, r in results.items():
        key = name.replace(" ", "_")
        metrics[f"perplexity_{key}"] = r["perplexity"]
        metrics[f"bits_per_weight_{key}"] = r["bits_per_weight"]
        metrics[f"weight_error_{key}"] = r["weight_error"]
    return metrics


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Write Q5_1 (`d`, `m`, `qh`, `qs`: 24 bytes, 6 bits a weight) from Q4_1 and Q5_0,
#    and check it against `gguf.quants.quantize(x, GGMLQuantizationType.Q5_1)`. Where
#    does it land in the demo's table?
# 2. Give `quantize_q4_0` a `block` argument and measure the small GPT's perplexity
#    with blocks of 16, 32, 64, 128 and whole rows, counting 16 bits of scale per
#    block. Plot perplexity against bits per weight: where is the knee?
# 3. Replace Q4_0's $d = \texttt{max}/{-8}$ by the symmetric $\max|x|/7$ with levels
#    $[-7, 7]$, and by a search over a few scales per block for the one with the least
#    squared error (what the k-quants do). How much perplexity does each buy?
# 4. llama.cpp needs the merges to tokenise: derive `tokenizer.ggml.merges` from the
#    tokenizer's ranks (each token of two or more bytes is the merge of the pair that
#    produced it), add them to `write_gguf`, and load the file with llama.cpp's
#    `llama-cli` if you have it.
