r"""
---
title: Parallel-training tricks for recurrent networks
summary: >-
  Five ways to make a recurrent network cheaper to train: truncated backpropagation
  through time with the state carried between chunks, packed sequences instead of
  padding, batches bucketed by length, a log-depth parallel scan for linear
  recurrences, and minGRU, a recurrent layer built for that scan; each is checked
  against the plain computation, and the first four are measured.
time: 25 s
expected:
  metric: loss_k8
  short:
    - "--stream-length"
    - "800"
    - "--delay"
    - "3"
    - "--truncations"
    - "3,8"
    - "--sequences"
    - "128"
    - "--batch-size"
    - "32"
    - "--pool-batches"
    - "2"
    - "--max-steps"
    - "32"
    - "--device"
    - "cpu"
references:
  - key: williams1990efficient
    authors: [Ronald J. Williams, Jing Peng]
    title: >-
      An Efficient Gradient-Based Algorithm for On-Line Training of Recurrent Network
      Trajectories
    year: 1990
    venue: Neural Computation 2(4)
    url: https://doi.org/10.1162/neco.1990.2.4.490
  - key: khomenko2017accelerating
    authors: [Viacheslav Khomenko, Oleg Shyshkov, Olga Radyvonenko, Kostiantyn Bokhan]
    title: >-
      Accelerating recurrent neural network training using sequence bucketing and
      multi-GPU data parallelization
    year: 2017
    venue: arXiv preprint (IEEE DSMP 2016)
    arxiv: "1708.05604"
  - key: williams1940note
    authors: [C. B. Williams]
    title: >-
      A Note on the Statistical Analysis of Sentence-Length as a Criterion of Literary
      Style
    year: 1940
    venue: Biometrika 31(3/4)
    url: https://doi.org/10.2307/2332615
  - key: sichel1974distribution
    authors: [H. S. Sichel]
    title: On a Distribution Representing Sentence-Length in Written Prose
    year: 1974
    venue: Journal of the Royal Statistical Society, Series A 137(1)
    url: https://www.jstor.org/stable/2345142
  - key: hillis1986data
    authors: [W. Daniel Hillis, Guy L. Steele Jr.]
    title: Data Parallel Algorithms
    year: 1986
    venue: Communications of the ACM 29(12)
    url: https://doi.org/10.1145/7902.7903
  - key: blelloch1990prefix
    authors: [Guy E. Blelloch]
    title: Prefix Sums and Their Applications
    year: 1990
    venue: Technical Report CMU-CS-90-190, Carnegie Mellon University
    url: https://www.cs.cmu.edu/~guyb/papers/Ble93.pdf
  - key: martin2018parallelizing
    authors: [Eric Martin, Chris Cundy]
    title: Parallelizing Linear Recurrent Neural Nets Over Sequence Length
    year: 2018
    venue: ICLR 2018
    arxiv: "1709.04057"
  - key: gu2023mamba
    authors: [Albert Gu, Tri Dao]
    title: "Mamba: Linear-Time Sequence Modeling with Selective State Spaces"
    year: 2023
    venue: arXiv preprint (COLM 2024)
    arxiv: "2312.00752"
  - key: feng2024rnns
    authors:
      - Leo Feng
      - Frederick Tung
      - Mohamed Osama Ahmed
      - Yoshua Bengio
      - Hossein Hajimirsadeghi
    title: Were RNNs All We Needed?
    year: 2024
    venue: arXiv preprint
    arxiv: "2410.01201"
worksheet:
  - region: truncated_bptt
    hint: >-
      Check chunk and the shapes; walk the stream in chunks of `chunk` steps: run the
      model on the chunk from the carried state, take the mean cross-entropy over the
      chunk's targets, backpropagate (zeroing and stepping the optimizer when there is
      one), then detach the state before the next chunk; collect each chunk's loss.
    tests:
      - test_one_chunk_is_full_bptt
      - test_truncated_gradient_equals_chunks_started_from_the_long_pass_state
  - region: run_packed
    hint: >-
      For each entry of batch_sizes (the sequences still alive, a prefix of the sorted
      batch), first set aside the bottom rows of h and c for sequences that just ended,
      then step the cell on the next `alive` rows of packed.data. Concatenate the
      pieces set aside, in reverse, to get the final states, undo the sort with
      unsorted_indices, and wrap the outputs in a PackedSequence with the input's
      bookkeeping.
    tests: [test_run_packed_matches_nn_lstm_forward_and_gradients]
  - region: linear_scan
    hint: >-
      Hillis–Steele: with offset 1, 2, 4, ... below the length, compose each element
      with the one `offset` earlier: new B = later A * earlier B + later B, then new A
      = later A * earlier A, keeping the first `offset` elements as they are (build new
      tensors, no in-place writes). B is the state from h0 = 0; with an h0 add A h0.
    tests: [test_scan_equals_the_loop_forward_and_gradients, test_scan_gradcheck]
---

A recurrent network reads a sequence one step at a time: $h_t = f(h_{t-1}, x_t)$. That
one line is why it is slow to train. The steps cannot run side by side, because step
$t$ needs the state step $t-1$ made; backpropagation through time keeps every state
of the sequence until the backward pass; and a batch of sentences of different lengths
is a rectangle whose short rows are filled with padding the network still steps
through. The [vanilla RNN](rnn.md) and the [LSTM and GRU](lstm.md) lessons build the
cells; this one is about feeding them, with four tricks used wherever recurrent
networks are trained and a fifth built on the last of them.

1. **Truncated backpropagation through time** [@williams1990efficient] cuts a long
   stream into chunks of $k$ steps, carries the state from chunk to chunk and cuts the
   graph behind it. Memory is $O(k)$ instead of $O(T)$ and the weights are updated
   after every chunk. The price: no gradient reaches back more than $k$ steps, and the
   demo shows a GRU that cannot learn to copy a symbol from 4 steps back when $k = 4$,
   and learns it when $k = 8$.
2. **Packed sequences** run each time step on only the sequences still alive, so no
   arithmetic is spent on padding. For sentence-like lengths in random batches of 64,
   71 % of the padded rectangle is padding. Whether skipping it saves *time* depends
   on the kernel behind the call, and on a CPU the answer is a surprise.
3. **Bucketing**: a batch sampler that puts sequences of similar length together.
   Sorting within pools of 4 batches cuts the padding to 43 %, a full sort to 10 %,
   and both cut the time of an epoch with it.
4. **A parallel scan** for the *linear* recurrence $h_t = a_t \odot h_{t-1} + b_t$:
   $\lceil \log_2 T \rceil$ rounds of whole-sequence tensor operations instead of $T$
   dependent steps [@hillis1986data; @blelloch1990prefix]. It is what lets linear
   recurrent layers [@martin2018parallelizing; @feng2024rnns] and state-space models
   such as Mamba [@gu2023mamba] train in parallel over the length of the sequence, as
   attention does.
5. **minGRU** [@feng2024rnns] is one such layer: a GRU whose gates no longer read
   $h_{t-1}$, so that its recurrence is linear and runs as one scan.

Each trick is checked against the computation it replaces: the chunked pass against
one long pass, the packed LSTM against each sequence run alone, the sampler against
"every index exactly once", the scan against the sequential loop in float64,
gradients included.
"""

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import (
    PackedSequence,
    pack_padded_sequence,
    pad_sequence,
)
from torch.utils.data import BatchSampler, RandomSampler, Sampler
from tqdm import tqdm

from annotated.data import integer, integers, number, torch_device
from annotated.figures import figure, save

# ## 1. Truncated backpropagation through time
#
# Full backpropagation through time (BPTT) on a stream of $T$ steps keeps all $T$
# states for the backward pass and updates the weights once per stream. On a stream
# of a million characters neither is acceptable. Truncated BPTT [@williams1990efficient]
# splits the stream into chunks of $k$ steps and treats each as a short sequence whose
# initial state is the final state of the previous chunk, *as a constant*. The loss of
# chunk $c$ is differentiated only through its own $k$ steps:
#
# $$
# \begin{aligned}
# \frac{\partial L_c}{\partial h_{t}}
#   &= \sum_{s = t}^{\text{end of } c} \frac{\partial \ell_s}{\partial h_s}
#      \prod_{u = t + 1}^{s} \frac{\partial h_u}{\partial h_{u-1}},
#   \quad t \in c,
# \end{aligned}
# $$
#
# and the chain stops at the chunk's first step. The forward pass loses nothing: the
# state that enters chunk $c$ is exactly the state one long pass would have there, so
# predictions are made with all the history the network can hold. Only the *credit*
# is truncated: a dependency longer than $k$ steps is never rewarded, because the
# weights that wrote the information into the state ran in an earlier chunk whose
# graph is gone.
#
# In PyTorch the cut is `Tensor.detach()`: a tensor that shares the state's storage
# but has no `grad_fn`, so the next chunk's graph starts at it. Forgetting it is the
# classic bug: the second `backward()` then walks on into the first chunk's graph,
# whose saved tensors were already freed, and autograd raises "Trying to backward
# through the graph a second time". (Passing `retain_graph=True` to silence it turns
# truncated BPTT back into full BPTT, with memory growing without bound.) An LSTM's
# state is a pair $(h, c)$ and a GRU's a single tensor, so one helper cuts either.


def detach_state(state: torch.Tensor | tuple[torch.Tensor, ...] | None):
    """Cut the graph behind a recurrent state: a tensor (RNN, GRU) or a tuple (LSTM)."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(part.detach() for part in state)
    return state.detach()


# ### A model that reads a stream
#
# An embedding, one `nn.GRU` (or `nn.LSTM`) layer and a linear read-out: a character
# language model in miniature. `forward` takes the state to start from and returns the
# state it ends in, which is all truncated BPTT needs from a model.


class StreamModel(nn.Module):
    """Tokens `[batch, steps]` and a state → logits `[batch, steps, vocab]` and the
    new state."""

    def __init__(self, vocab: int, hidden: int, cell: str = "gru", embed: int = 16):
        super().__init__()
        if cell not in ("gru", "lstm"):
            raise ValueError(f"cell must be 'gru' or 'lstm', got {cell!r}")
        self.embed = nn.Embedding(vocab, embed)
        recurrent = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = recurrent(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens: torch.Tensor, state=None):
        outputs, state = self.rnn(self.embed(tokens), state)  # [batch, steps, hidden]
        return self.head(outputs), state  # [batch, steps, vocab]


# ### The training loop
#
# One pass over a stream `[batch, T]` in chunks of `chunk` steps (the last one may be
# shorter). After each chunk's backward the state is detached and handed to the next
# chunk. With an optimizer, each chunk is one update; without one, the chunks'
# gradients add up in `.grad`, which is how the tests compare truncated gradients with
# a reference. With `chunk >= T` there is one chunk and this is full BPTT, exactly.
#
# The loss of a chunk is its mean cross-entropy, so a short last chunk weighs each of
# its positions as much as a full one does.


def truncated_bptt(
    model: nn.Module,
    tokens: torch.Tensor,
    targets: torch.Tensor,
    chunk: int,
    optimizer: torch.optim.Optimizer | None = None,
    state=None,
) -> tuple[list[float], object]:
    """Run `model` over `tokens [batch, T]` in chunks of `chunk` steps, carrying and
    detaching the state; returns each chunk's loss and the final state."""
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"truncated_bptt: chunk must be an int >= 1, got {chunk!r}")
    if tokens.ndim != 2 or tokens.shape != targets.shape:
        raise ValueError(
            f"truncated_bptt: tokens and targets must both be [batch, steps], got "
            f"{tuple(tokens.shape)} and {tuple(targets.shape)}"
        )
    losses = []
    for start in range(0, tokens.shape[1], chunk):
        logits, state = model(tokens[:, start : start + chunk], state)
        loss = F.cross_entropy(
            logits.flatten(0, 1),  # [batch * chunk, vocab]
            targets[:, start : start + chunk].flatten(),
        )
        if optimizer is not None:
            optimizer.zero_grad()
        loss.backward()
        if optimizer is not None:
            optimizer.step()
        state = detach_state(state)
        losses.append(loss.item())
    return losses, state


# ### A stream with a known dependency length
#
# To see what truncation costs, the stream has one dependency of a known length: the
# target at step $t$ is the token seen `delay` steps earlier, $y_t = x_{t-d}$, with
# tokens uniform over `vocab` symbols. A model that has not learned the copy can do no
# better than guessing, a cross-entropy of $\ln(\text{vocab})$; one that has learned it
# reaches 0. The tokens are cut from a longer random stream, so the first `delay`
# targets are tokens from before the cut: no model can predict those few.
#
# With chunks of $k \le d$ steps, $x_{t-d}$ is always in an earlier chunk than $y_t$:
# no gradient reaches the step that read it, so nothing trains the network to keep it.
# The read-out can still learn to use whatever trace of $x_{t-d}$ the recurrence keeps
# by accident, and after 4 steps that is next to nothing: the loss should stay near
# $\ln(\text{vocab})$ however long we train. With $k > d$, a fraction $(k - d)/k$ of
# the positions see their source in the same chunk, and the copy can be learned.


def echo_stream(
    batch: int, length: int, delay: int, vocab: int = 4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Random tokens `[batch, length]` and targets `[batch, length]` with
    $y_t = x_{t - \text{delay}}$."""
    generator = torch.Generator().manual_seed(seed)
    stream = torch.randint(0, vocab, (batch, length + delay), generator=generator)
    return stream[:, delay:], stream[:, :length]  # tokens, targets


# ## 2. Packing instead of padding
#
# A batch of sequences of lengths $L_1, \dots, L_B$ padded to the longest one is a
# rectangle of $B \cdot \max_i L_i$ time steps, of which $\sum_i L_i$ are real. A
# recurrent layer steps through all of them: for an LSTM with input size $I$ and
# hidden size $H$, each step of each sequence costs two matrix-vector products with
# the stacked gate weights, $2 \cdot 4H(I + H)$ floating-point operations (a multiply
# and an add each), so the padding wastes
#
# $$
# \begin{aligned}
# \text{waste} &= 8H(I + H)\Bigl(B \max_i L_i - \sum_i L_i\Bigr)
# \end{aligned}
# $$
#
# operations in the forward pass, about twice that again in the backward. Padding is
# also *wrong* for the final state: a sequence of length 3 padded to 10 comes out of
# `nn.LSTM` with the state after 7 steps of zeros, not after its last token.
#
# A `PackedSequence` stores the batch time-major with the padding removed. Sort the
# sequences longest first; `batch_sizes[t]` is how many are still alive at step $t$,
# and `data` holds their inputs at step $t$, one block after another. Lengths 3, 2 and
# 1 give `batch_sizes = [3, 2, 1]` and `data` = (seq0 step0, seq1 step0, seq2 step0,
# seq0 step1, seq1 step1, seq0 step2). `sorted_indices` remembers the original order.
#
# `nn.LSTM` given a `PackedSequence` on a CPU runs `PackedLayer` in
# `aten/src/ATen/native/RNN.cpp`: it computes the input half of the gate products for
# all $\sum_i L_i$ rows in one matrix product, then at step $t$ slices
# `batch_sizes[t]` rows, narrows the hidden state to the same rows (the sequences that
# just ended drop off the bottom, and their state is put aside as their final state),
# and runs the cell on that smaller batch. The loop below is the same algorithm over an
# `nn.LSTMCell`, so the saving is visible: the cell is called on $\sum_i L_i$ rows in
# all, never on a padded one. (On a GPU, `nn.LSTM` hands the packed batch to cuDNN,
# which takes the same `batch_sizes`.)


def lstm_cell_like(lstm: nn.LSTM) -> nn.LSTMCell:
    """An `nn.LSTMCell` sharing the weights of a one-layer, one-direction `nn.LSTM`."""
    if lstm.num_layers != 1 or lstm.bidirectional or lstm.proj_size:
        raise ValueError("lstm_cell_like: lstm must be one layer, one direction")
    cell = nn.LSTMCell(lstm.input_size, lstm.hidden_size, bias=lstm.bias)
    cell.weight_ih, cell.weight_hh = lstm.weight_ih_l0, lstm.weight_hh_l0
    if lstm.bias:
        cell.bias_ih, cell.bias_hh = lstm.bias_ih_l0, lstm.bias_hh_l0
    return cell.to(lstm.weight_ih_l0.device, lstm.weight_ih_l0.dtype)


def run_packed(
    cell: nn.LSTMCell, packed: PackedSequence
) -> tuple[PackedSequence, tuple[torch.Tensor, torch.Tensor]]:
    """Run `cell` over `packed` step by step on the sequences still alive; returns the
    packed outputs and the final `(h, c)`, each `[batch, hidden]` in the batch's
    original order, like `nn.LSTM`."""
    if not isinstance(packed, PackedSequence):
        raise TypeError(
            f"run_packed: packed must be a PackedSequence (see "
            f"torch.nn.utils.rnn.pack_sequence), got {type(packed).__name__}"
        )
    batch_sizes = packed.batch_sizes.tolist()
    h = packed.data.new_zeros(batch_sizes[0], cell.hidden_size)  # [batch, hidden]
    c = torch.zeros_like(h)
    outputs, final_h, final_c = [], [], []
    offset = 0
    for alive in batch_sizes:
        # Rows `alive:` belong to sequences that ended at the previous step: their
        # state is final. Sorting longest-first makes them the bottom rows.
        if alive < len(h):
            final_h.append(h[alive:])
            final_c.append(c[alive:])
            h, c = h[:alive], c[:alive]
        h, c = cell(packed.data[offset : offset + alive], (h, c))  # [alive, hidden]
        outputs.append(h)
        offset += alive
    final_h.append(h)
    final_c.append(c)
    # The pieces were put aside shortest sequences first: reversed, they are rows
    # 0, 1, ... of the sorted batch.
    h_n, c_n = torch.cat(final_h[::-1]), torch.cat(final_c[::-1])  # [batch, hidden]
    if packed.unsorted_indices is not None:
        h_n, c_n = h_n[packed.unsorted_indices], c_n[packed.unsorted_indices]
    # nn.LSTM builds its output the same way: the new data with the old bookkeeping.
    output = PackedSequence(
        torch.cat(outputs),
        packed.batch_sizes,
        packed.sorted_indices,
        packed.unsorted_indices,
    )
    return output, (h_n, c_n)


# ### How much padding, for realistic lengths
#
# Sentence lengths have a long right tail: most sentences are short, a few are very
# long. C. B. Williams modelled them as lognormal [@williams1940note], and Sichel's
# survey of English, Greek and Latin prose fits a related long-tailed law
# [@sichel1974distribution]. We draw token counts from a lognormal with a median of
# 20 and $\sigma = 0.6$: mean about 24, standard deviation about 15, and 126 tokens
# for the longest of the demo's 2,048 draws, the shape of a tokenised corpus of
# sentences.
#
# `padding_fraction` measures a list of batches: the share of the padded rectangles'
# time steps that are padding. `lstm_flops` turns time steps into forward-pass
# operations with the formula above.


def sequence_lengths(
    n: int, median: float = 20.0, sigma: float = 0.6, seed: int = 0
) -> torch.Tensor:
    r"""`n` sentence-like lengths, lognormal with the given median and $\sigma$,
    clipped to [1, 512]; int64 `[n]`."""
    rng = np.random.default_rng(seed)
    lengths = np.rint(rng.lognormal(math.log(median), sigma, n)).clip(1, 512)
    return torch.as_tensor(lengths, dtype=torch.int64)


def padding_fraction(lengths: torch.Tensor, batches: list[list[int]]) -> float:
    """The fraction of the padded time steps of `batches` (lists of indices into
    `lengths`) that are padding."""
    padded = sum(len(batch) * int(lengths[batch].max()) for batch in batches)
    real = sum(int(lengths[batch].sum()) for batch in batches)
    return 1.0 - real / padded


def lstm_flops(timesteps: int, input_size: int, hidden: int) -> int:
    """Forward floating-point operations of an LSTM layer's gate products over
    `timesteps` sequence steps: $8H(I + H)$ each."""
    return 8 * hidden * (input_size + hidden) * timesteps


# ## 3. Bucketing by length
#
# Packing removes the arithmetic on padding but not the memory of the padded input,
# and not the sequential steps: a batch still takes $\max_i L_i$ dependent steps, and
# at its tail the cell runs on a batch of one or two rows, which uses a GPU no better
# than a loop. The cheaper fix is upstream: make the sequences of a batch about the
# same length [@khomenko2017accelerating].
#
# Sorting the whole data set by length removes the most padding, but every epoch would
# then see nearly the same batches. The usual compromise (torchtext's
# `BucketIterator`, AllenNLP's `BucketBatchSampler`) keeps some randomness: shuffle,
# cut the shuffled indices into *pools* of `pool_batches` batches, sort each pool by
# length, cut it into batches, and shuffle the order of the batches. A pool of one
# batch is random batching; a pool of the whole set is a full sort. How big a pool
# must be depends on how densely it samples the lengths: on the demo's 2,048
# sentence lengths in batches of 64, random batches are 71 % padding, pools of 4
# batches (256 sequences) 43 %, and a sort of all 2,048 still 10 %, because the
# batches of 64 neighbours in the long tail each span many lengths.
#
# It is a `torch.utils.data.Sampler` of lists of indices, so it plugs into a
# `DataLoader` as `batch_sampler=`. Like `DistributedSampler`, it draws its shuffles
# from `seed + epoch`, and the training loop calls `set_epoch` before each epoch: two
# workers or two runs with the same seed see the same batches.


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of indices whose `lengths` are close, reshuffled every epoch; every
    index appears in exactly one batch per epoch."""

    def __init__(
        self,
        lengths,
        batch_size: int,
        pool_batches: int = 50,
        shuffle: bool = True,
        seed: int = 0,
    ):
        self.lengths = torch.as_tensor(lengths)
        if self.lengths.ndim != 1 or self.lengths.is_floating_point():
            raise ValueError(
                "BucketBatchSampler: lengths must be a 1-D sequence of integers, got "
                f"shape {tuple(self.lengths.shape)} and dtype {self.lengths.dtype}"
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                "BucketBatchSampler: batch_size must be an int >= 1, got "
                f"{batch_size!r}"
            )
        if not isinstance(pool_batches, int) or pool_batches < 1:
            raise ValueError(
                "BucketBatchSampler: pool_batches must be an int >= 1, got "
                f"{pool_batches!r}"
            )
        self.batch_size = batch_size
        self.pool_size = batch_size * pool_batches
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shuffle the next iteration draws."""
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        n = len(self.lengths)
        if self.shuffle:
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        batches = []
        for start in range(0, n, self.pool_size):
            pool = order[start : start + self.pool_size]
            # A stable sort keeps the shuffled order among equal lengths.
            pool = pool[torch.argsort(self.lengths[pool], stable=True)]
            for first in range(0, len(pool), self.batch_size):
                batches.append(pool[first : first + self.batch_size].tolist())
        if self.shuffle:
            batches = [
                batches[i] for i in torch.randperm(len(batches), generator=generator)
            ]
        yield from batches

    def __len__(self) -> int:
        n, pool = len(self.lengths), self.pool_size
        full_pools, rest = divmod(n, pool)
        return full_pools * math.ceil(pool / self.batch_size) + math.ceil(
            rest / self.batch_size
        )


# `collate_padded` is the `collate_fn` for a data set of variable-length tensors: it
# pads them into one `[batch, max_len, features]` tensor and returns the lengths
# beside it, from which `pack_padded_sequence` packs (with `enforce_sorted=False` it
# sorts itself and records the permutation).


def collate_padded(sequences: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad `[length_i, features]` tensors into `[batch, max_len, features]`; returns it
    and the lengths `[batch]`."""
    lengths = torch.tensor([len(sequence) for sequence in sequences])
    return pad_sequence(sequences, batch_first=True), lengths


# ## 4. A parallel scan for linear recurrences
#
# Packing and bucketing make each step cheaper; none of them shortens the chain of
# $T$ dependent steps. For a general cell nothing can: $h_t = \tanh(W h_{t-1} + U x_t)$
# must wait for $h_{t-1}$. But when the recurrence is *linear in the state*,
#
# $$
# h_t = a_t \odot h_{t-1} + b_t, \qquad a_t, b_t \in \mathbb{R}^d,
# $$
#
# with $a_t$ and $b_t$ computed from the inputs alone, each step is an affine map
# $h \mapsto a_t \odot h + b_t$, and composing two affine maps gives an affine map:
#
# $$
# \begin{aligned}
# (a_2, b_2) \circ (a_1, b_1)
#   &= (a_2 \odot a_1,\; a_2 \odot b_1 + b_2).
# \end{aligned}
# $$
#
# Composition is associative, so the maps $h_0 \mapsto h_t$ for every $t$ are a
# *prefix scan* of the sequence of pairs under $\circ$, and a prefix scan of $T$
# elements takes $O(\log T)$ parallel steps [@blelloch1990prefix].
#
# Hillis and Steele's scan [@hillis1986data] does it in rounds. Before round $r$,
# element $t$ holds the composition of the steps $(t - 2^r, t]$ (clipped at 0). In
# round $r$ every element $t \ge 2^r$ composes itself with element $t - 2^r$, which
# holds the $2^r$ steps before its own span; after the round it spans $2^{r+1}$ steps.
# For $T = 8$:
#
# | round | offset | element 7 covers | element 3 covers |
# | --- | --- | --- | --- |
# | start | | step 7 | step 3 |
# | 0 | 1 | steps 6–7 | steps 2–3 |
# | 1 | 2 | steps 4–7 | steps 0–3 (done) |
# | 2 | 4 | steps 0–7 (done) | |
#
# After $\lceil \log_2 T \rceil$ rounds every element holds $(A_t, B_t)$, the whole map
# from $h_0$ to $h_t$, and $h_t = A_t \odot h_0 + B_t$. Each round is five tensor
# operations over the whole sequence (two multiplications, an addition, two
# concatenations), so the number of *sequential* operations, each a kernel launch on a
# GPU, is $5\lceil \log_2 T\rceil$ against the loop's $2T$ (a multiplication and an
# addition per step). The test counts them as PyTorch dispatches them: for
# $T = 4096$, 60 against 8,194 in the forward pass, and 235 against 20,484 with the
# backward pass.
#
# The price is work: every round touches all $T$ elements, $O(T \log T)$ in all
# against the loop's $O(T)$, and autograd keeps each round's tensors for the backward
# pass, $O(T \log T)$ memory. Blelloch's scan [@blelloch1990prefix] does $O(T)$ work
# in $2\lceil\log_2 T\rceil$ rounds (an up-sweep building a tree of partial
# compositions, a down-sweep pushing prefixes back down); Martin and Cundy's CUDA kernel
# [@martin2018parallelizing] and Mamba's selective scan [@gu2023mamba] go further and
# fuse the whole scan into one kernel that keeps the running state in on-chip memory.
# The backward pass of a linear recurrence is itself a linear recurrence run backwards
# in time, $\bar h_t = \bar y_t + a_{t+1} \odot \bar h_{t+1}$, so it parallelises the
# same way; here autograd differentiates the rounds, which are already parallel.
#
# Both functions take `a` and `b` as `[batch, seq, hidden]` and an optional initial
# state `h0 [batch, hidden]` (zeros when absent), and check them once, here.


def check_recurrence(a, b, h0, caller: str) -> None:
    """Raise naming the argument when `a`, `b`, `h0` are not a batch of linear
    recurrences."""
    for name, value in (("a", a), ("b", b)):
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise TypeError(
                f"{caller}: {name} must be a floating-point tensor, got "
                f"{getattr(value, 'dtype', type(value).__name__)}"
            )
    if a.ndim != 3 or a.shape != b.shape or a.shape[1] == 0:
        raise ValueError(
            f"{caller}: a and b must both be [batch, seq, hidden] with seq >= 1, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    if h0 is not None and (
        not isinstance(h0, torch.Tensor) or h0.shape != (a.shape[0], a.shape[2])
    ):
        raise ValueError(
            f"{caller}: h0 must be [batch, hidden] = {(a.shape[0], a.shape[2])}, got "
            f"{tuple(getattr(h0, 'shape', ())) or type(h0).__name__}"
        )


# The reference: $T$ steps, each waiting for the one before. It walks the sequence
# with `unbind(1)`, not `a[:, t]`, for the backward pass's sake: the backward of an
# index `a[:, t]` is a zero tensor the size of all of `a` with one slice filled in, so
# $T$ of them cost $O(T^2)$ memory traffic (4.5 s instead of 0.12 s for $T = 4096$ in
# a quick measurement), while `unbind`'s backward stacks the $T$ slice gradients once.


@torch.fx.wrap
def linear_recurrence_loop(
    a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None
) -> torch.Tensor:
    r"""$h_t = a_t \odot h_{t-1} + b_t$ one step at a time; returns `[batch, seq,
    hidden]`."""
    check_recurrence(a, b, h0, "linear_recurrence_loop")
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0  # [batch, hidden]
    states = []
    for a_t, b_t in zip(a.unbind(1), b.unbind(1)):  # [batch, hidden] each
        h = a_t * h + b_t
        states.append(h)
    return torch.stack(states, dim=1)  # [batch, seq, hidden]


# The scan. Each round builds new tensors instead of updating in place, so that
# autograd can differentiate it, and updates `b` before `a` because the new $B_t$
# needs the old $A_t$. The first `offset` elements already hold complete prefixes and
# are carried over unchanged.


@torch.fx.wrap
def linear_scan(
    a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None
) -> torch.Tensor:
    r"""$h_t = a_t \odot h_{t-1} + b_t$ for all $t$ in $\lceil \log_2 T \rceil$
    rounds (Hillis–Steele); returns `[batch, seq, hidden]`."""
    check_recurrence(a, b, h0, "linear_scan")
    steps, offset = a.shape[1], 1
    while offset < steps:
        # Element t composes with element t - offset: (A, B) ∘ (A', B').
        earlier_a, earlier_b = a[:, :-offset], b[:, :-offset]  # [batch, T-off, hidden]
        later_a, later_b = a[:, offset:], b[:, offset:]
        b = torch.cat([b[:, :offset], later_a * earlier_b + later_b], dim=1)
        a = torch.cat([a[:, :offset], later_a * earlier_a], dim=1)
        offset *= 2
    if h0 is None:
        return b  # [batch, seq, hidden]: B_t, the state reached from h_0 = 0
    return a * h0[:, None] + b  # [batch, seq, hidden]


# ## 5. A recurrent layer built for the scan: minGRU
#
# A GRU's update gate and candidate state read $h_{t-1}$, which is what makes it
# sequential. Drop that dependence and keep the gating, and the GRU becomes Feng et
# al.'s minGRU [@feng2024rnns], a linear recurrence of the form above:
#
# $$
# \begin{aligned}
# z_t &= \sigma(W_z x_t + c_z), \qquad \tilde h_t = W_h x_t + c_h, \\
# h_t &= (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t,
# \end{aligned}
# $$
#
# so $a_t = 1 - z_t$ and $b_t = z_t \odot \tilde h_t$. All the $z_t$ and $\tilde h_t$
# come from one matrix product over the whole sequence, and the recurrence is one
# scan. Because $0 < a_t < 1$, the state is a running weighted average that cannot
# blow up, and the products $A_t$ shrink towards 0 with distance instead of
# overflowing. Martin and Cundy's GILR-LSTM [@martin2018parallelizing] and Mamba's
# selective state space [@gu2023mamba] are the same shape with more structure: in
# Mamba, $a_t = \exp(\Delta_t A)$ and $b_t = \Delta_t B_t x_t$, with $\Delta_t$ and
# $B_t$ computed from the input. What such a layer gives up is the nonlinearity
# *inside* the recurrence; depth (stacking layers with nonlinearities between them)
# takes its place.
#
# `parallel=False` runs the same layer with the loop, which is how the test checks the
# two agree, and how one would run it token by token at inference time.


class MinGRU(nn.Module):
    """minGRU: `x [batch, seq, input]` (and `h0 [batch, hidden]`) → states `[batch,
    seq, hidden]`."""

    def __init__(self, input_size: int, hidden_size: int, parallel: bool = True):
        super().__init__()
        self.gate = nn.Linear(input_size, hidden_size)
        self.candidate = nn.Linear(input_size, hidden_size)
        self.parallel = parallel

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
        z = torch.sigmoid(self.gate(x))  # [batch, seq, hidden]
        a, b = 1 - z, z * self.candidate(x)  # [batch, seq, hidden] each
        if self.parallel:
            return linear_scan(a, b, h0)
        return linear_recurrence_loop(a, b, h0)


# ## The example
#
# A minGRU on a batch of two sequences of 13 steps, a length that is not a power of
# two: the dataflow diagram shows the two input projections feeding one scan.


def example():
    """A minGRU layer (8 → 16) on `[2, 13, 8]`, run with the parallel scan."""
    torch.manual_seed(0)
    return MinGRU(8, 16), (torch.randn(2, 13, 8),)


# ## The demo
#
# Three measurements, each drawn as a figure.
#
# **Truncation.** A GRU learns the delay-4 copy stream with chunks of 4, 8 and 16
# steps, on the same 32 streams of 4,800 tokens (so $k = 4$ makes four times as many
# updates as $k = 16$). Before training, the demo checks that the state carried through
# chunks of 7 steps gives the same outputs as one long pass.
#
# **Padding.** 2,048 sequences with the lengths above are batched in 64s: at random
# (`BatchSampler(RandomSampler(...))`), with `BucketBatchSampler` for pools of 1 to 32
# batches (32 batches is the whole set, a full sort), and one epoch of an `nn.LSTM`'s
# forward and backward pass is timed for random batches, pools of 4 batches and the
# full sort, each padded and packed.
#
# **Scan.** The loop and the scan compute a linear recurrence with a batch of 4 and 64
# channels, forward alone and forward with backward, for $T$ from 16 to 4,096.
#
# What the defaults gave on a shared 2-core CPU:
#
# - **Truncation**: a final loss of 1.39 nats for $k = 4$, against $\ln 4 = 1.386$
#   for guessing, and 0.001 or less for $k = 8$ and $k = 16$. With $k = 4$ the GRU
#   never learns the copy; $k = 8$ learns it from fewer tokens than $k = 16$ because
#   it makes twice as many updates from the same stream, though only half its
#   positions carry a gradient to their source (against three quarters for $k = 16$).
# - **Padding**: 71 %, 43 % and 10 % of the padded time steps are padding for random
#   batches, pools of 4 and the full sort: 4.8, 1.5 and 0.2 GFLOP wasted in an epoch's
#   forward pass. The padded LSTM epoch follows: the sort makes it 2 to 4× shorter than
#   random batches (about 2.2× in the run below). Packing did *not* make it faster: each
#   packed epoch took 1.5 to 4.5 times as long as the padded one in our runs. The reason
#   is in `RNN.cpp`: on a CPU a padded batch goes to oneDNN's fused LSTM kernel, while a
#   packed one (unless every sequence has the same length) goes to `PackedLayer`, a loop
#   of small ATen operations, and the skipped arithmetic does not pay for the lost
#   kernel. The benchmark pins it down, forward and backward: the oneDNN padded batch
#   (10.5 ms) beats all three others: 20.1 ms with oneDNN off, 16.4 ms for `nn.LSTM` on
#   the packed batch, and 14.7 ms for our `run_packed` over `nn.LSTMCell`, which walks
#   the packed batch a little faster than `PackedLayer` does (on an Intel Xeon, twice as
#   fast). With oneDNN switched off, the packed batch beats the padded one on the AMD
#   EPYC this page's benchmark ran on, and lost to it on an Intel Xeon (21.4 ms against
#   13.8), where its backward pass, a loop of small operations too, costs more.
#   (Forward alone on the benchmark's batch, in CPU time on one thread: 1.8 ms padded
#   through oneDNN, 3.5 ms padded through ATen and 2.0 ms packed on the Xeon; 3.8,
#   10.5 and 5.4 ms on the EPYC.) So on a CPU:
#   bucket, pad, and read each sequence's final state from its output at step
#   $L_i - 1$ rather than from `h_n` (padding only ever comes after the real steps);
#   pack for bidirectional layers, whose backward direction would otherwise start in
#   the padding. On a GPU, where cuDNN takes the packed batch natively, measure both.
# - **Scan**: the scan does $\log_2 T$ times the loop's arithmetic; what it saves is
#   operator calls, 60 against 8,194 at $T = 4096$, each with microseconds of overhead,
#   and each of its calls is a whole-sequence operation that torch can spread over
#   threads, where the loop's are too small to. The figure's run used both cores: the
#   scan is ahead at every length but the shortest, most widely at the long end: 2 to 5×
#   forward and 2 to 3× with the backward pass from $T = 1024$ on (2.1× and 2.5× at
#   $T = 4096$). On an Intel Xeon the two stayed within about 2× of each other, the scan
#   ahead most clearly in the middle of the range where the loop's per-call overhead
#   dominates, and its lead narrowed, sometimes to a loss, at $T = 4096$, where its
#   extra arithmetic and the backward through 12 rounds of whole-sequence tensors caught
#   up. The benchmark pins one thread and repeats $T = 1024$: there the scan takes 0.67
#   of the loop's time (14 ms against 21), where on the Xeon it took 1.3 to 1.6 times as
#   long (20 to 22 ms against 14 to 15; with two threads, 10 against 14). How far fewer
#   calls pay for $\log_2 T$ times the arithmetic depends on the machine, and even two
#   cores are parallel hardware the scan can use.
#   The scan's real home is a GPU, where a round over all $T$ positions is a few
#   kernel launches, as one step of the loop is; there Martin and Cundy measured up
#   to 9× faster training of whole models [@martin2018parallelizing], and Feng et al.
#   report a minGRU training 175× faster than a GRU on sequences of 512 steps
#   [@feng2024rnns]. (This page's figures come from a CPU; `--device cuda` runs the
#   same demo on a GPU.)


def timed(fn, device: str, repeats: int = 3) -> float:
    """The median wall time of `fn()` over `repeats` calls, in seconds, after one
    warm-up; on a GPU, the queued kernels are waited for."""
    times = []
    for index in range(repeats + 1):
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if index:
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def carried_state_gap(device: str, seed: int) -> float:
    """The largest difference between the logits of a pass in chunks of 7 steps, the
    state carried over, and of one long pass."""
    torch.manual_seed(seed)
    model = StreamModel(4, 16).to(device)
    tokens, _ = echo_stream(2, 100, 4, seed=seed)
    tokens = tokens.to(device)
    with torch.no_grad():
        whole, _ = model(tokens)  # [2, 100, 4]
        state, pieces = None, []
        for start in range(0, 100, 7):
            logits, state = model(tokens[:, start : start + 7], state)
            pieces.append(logits)
    return (torch.cat(pieces, dim=1) - whole).abs().max().item()


def train_truncations(args) -> dict[int, list[float]]:
    """The loss of every chunk while training a `StreamModel` with each truncation
    length in `args.truncations`, from the same initial weights."""
    tokens, targets = echo_stream(32, args.stream_length, args.delay, seed=args.seed)
    tokens, targets = tokens.to(args.device), targets.to(args.device)
    curves = {}
    for chunk in tqdm(args.truncations, desc="truncated BPTT"):
        torch.manual_seed(args.seed)
        model = StreamModel(4, args.hidden).to(args.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        curves[chunk], _ = truncated_bptt(model, tokens, targets, chunk, optimizer)
    return curves


def epoch_seconds(
    lstm: nn.LSTM, dataset, batches: list[list[int]], packed: bool, device: str
) -> float:
    """Wall time (the median of three) of one forward and backward pass of `lstm` over
    `dataset` in `batches`, padded or packed."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, collate_fn=collate_padded
    )

    def epoch():
        for padded, lengths in loader:
            padded = padded.to(device)  # [batch, max_len, features]
            if packed:
                inputs = pack_padded_sequence(
                    padded, lengths, batch_first=True, enforce_sorted=False
                )
                outputs = lstm(inputs)[0].data  # [sum of lengths, hidden]
            else:
                outputs = lstm(padded)[0]  # [batch, max_len, hidden]
            outputs.square().mean().backward()

    return timed(epoch, device)


def scan_timings(max_steps: int, device: str) -> tuple[list[int], dict]:
    """Times of the loop and the scan for T = 16, 32, ..., `max_steps`: forward alone
    and forward with backward."""
    steps = [2**power for power in range(4, int(math.log2(max_steps)) + 1)]
    times = {}
    for length in tqdm(steps, desc="scan vs loop"):
        a = torch.rand(4, length, 64, device=device, requires_grad=True)
        b = torch.randn(4, length, 64, device=device, requires_grad=True)
        for name, fn in (("loop", linear_recurrence_loop), ("scan", linear_scan)):

            def forward(fn=fn):
                with torch.no_grad():
                    fn(a, b)

            times.setdefault((name, "forward"), []).append(timed(forward, device))
            times.setdefault((name, "forward + backward"), []).append(
                timed(lambda fn=fn: fn(a, b).sum().backward(), device)
            )
    return steps, times


def plot_truncation(curves: dict[int, list[float]], delay: int, out: Path) -> Path:
    """Training loss against tokens read, one curve per truncation length."""
    fig, ax = figure()
    for chunk, losses in curves.items():
        window = max(1, len(losses) // 40)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        tokens = (np.arange(len(smooth)) + window) * chunk
        ax.plot(tokens, smooth, label=f"$k = {chunk}$")
    ax.axhline(math.log(4), color="gray", ls=":", label=r"guessing, $\ln 4$")
    ax.set_xlabel("tokens read per stream")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title(f"copying the token {delay} steps back")
    ax.legend()
    return save(
        fig,
        out / "truncation.png",
        caption=f"Truncated BPTT on a stream whose target is the token {delay} steps "
        f"back: with chunks of k = {delay} steps no gradient links a target to its "
        "source and the loss stays at ln 4; longer chunks learn the copy.",
    )


def plot_padding(lengths, pools, pool_padding, random_padding, seconds, out: Path):
    """The length distribution, the padding against the bucketing pool, and the epoch
    time padded and packed."""
    fig, (hist, curve, bars) = figure(panels=3)
    hist.hist(lengths.numpy(), bins=60, color="C0")
    hist.set_xlabel("sequence length $L$ (tokens)")
    hist.set_ylabel("sequences")
    hist.set_title(f"{len(lengths):,} lognormal lengths")
    curve.semilogx(
        pools, [100 * p for p in pool_padding], "o-", base=2, label="buckets"
    )
    curve.axhline(100 * random_padding, color="C3", ls="--", label="random batches")
    curve.set_ylim(0, 100)
    curve.set_xlabel("bucketing pool (batches of 64)")
    curve.set_ylabel("padded time steps (%)")
    curve.set_title("padding against pool size")
    curve.legend()
    names = list(dict.fromkeys(name for name, _ in seconds))
    positions, width = np.arange(len(names)), 0.38
    for shift, mode in ((-width / 2, "padded"), (width / 2, "packed")):
        heights = [seconds[name, mode] for name in names]
        bars.bar(positions + shift, heights, width, label=mode)
    bars.set_xticks(positions, names)
    bars.set_ylabel("seconds per epoch")
    bars.set_title("LSTM forward + backward, one epoch")
    bars.legend()
    return save(
        fig,
        out / "padding.png",
        caption="Sentence-like lengths (left); the share of padding in batches of 64 "
        "as the bucketing pool grows from one batch (random) to the whole set (a "
        "full sort) (middle); one LSTM epoch on three batchings, padded and packed "
        "(right).",
    )


def plot_scan(steps: list[int], times: dict, device: str, out: Path) -> Path:
    """Loop and scan time against the sequence length, forward and with backward."""
    fig, axes = figure(panels=2, sharey=True)
    for ax, mode in zip(axes, ("forward", "forward + backward")):
        for name, marker in (("loop", "o-"), ("scan", "s-")):
            label = "loop, $T$ steps" if name == "loop" else "scan, $\\log_2 T$ rounds"
            ax.loglog(steps, [1e3 * t for t in times[name, mode]], marker, label=label)
        ax.set_xlabel("sequence length $T$")
        ax.set_title(f"{mode}, {device}")
        ax.legend()
    axes[0].set_ylabel("milliseconds (batch 4, 64 channels)")
    return save(
        fig,
        out / "scan.png",
        caption="Time of the linear recurrence against its length: the sequential "
        "loop against the Hillis–Steele scan, forward alone (left) and with the "
        "backward pass (right).",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train with truncated BPTT, measure padding and packing, time the scan."""
    parser = argparse.ArgumentParser(
        description="Truncated BPTT, packing, bucketing and a parallel scan for "
        "recurrent networks, measured.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--stream-length",
        type=integer(at_least=1),
        default=4800,
        help="tokens per training stream",
    )
    parser.add_argument(
        "--delay",
        type=integer(at_least=1),
        default=4,
        help="how far back the copy stream's target is",
    )
    parser.add_argument(
        "--truncations",
        type=integers(at_least=1),
        default="4,8,16",
        help="comma-separated chunk lengths k to train with",
    )
    parser.add_argument(
        "--hidden", type=integer(at_least=1), default=32, help="GRU hidden size"
    )
    parser.add_argument(
        "--lr", type=number(above=0), default=0.02, help="Adam learning rate"
    )
    parser.add_argument(
        "--sequences",
        type=integer(at_least=1),
        default=2048,
        help="sequences in the padding data set",
    )
    parser.add_argument(
        "--batch-size", type=integer(at_least=1), default=64, help="sequences a batch"
    )
    parser.add_argument(
        "--pool-batches",
        type=integer(at_least=1),
        default=4,
        help="batches per pool for the timing",
    )
    parser.add_argument(
        "--max-steps",
        type=integer(at_least=16),
        default=4096,
        help="longest T for the scan timing",
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to run on",
    )
    parser.add_argument("--out", default="out/parallel_rnn", help="folder for figures")
    args = parser.parse_args(argv)
    if args.stream_length <= args.delay:
        parser.error("--delay must be below --stream-length")
    if min(args.truncations) < 1:
        parser.error("--truncations must be >= 1")
    if args.sequences < args.batch_size:
        parser.error("--batch-size must be at most --sequences")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gap = carried_state_gap(args.device, args.seed)
    metrics = {"carried_state_gap": gap}
    print(f"chunked vs one long pass: max logit difference {gap:.1e}")

    curves = train_truncations(args)
    for chunk, losses in curves.items():
        metrics[f"loss_k{chunk}"] = float(np.mean(losses[-max(1, len(losses) // 10) :]))
        print(
            f"truncation k={chunk:>2}: final loss {metrics[f'loss_k{chunk}']:.3f} nats"
        )
    print(f"(guessing: ln 4 = {math.log(4):.3f} nats)")
    plot_truncation(curves, args.delay, out)

    lengths = sequence_lengths(args.sequences, seed=args.seed)
    whole = math.ceil(args.sequences / args.batch_size)
    pools = [2**p for p in range(int(math.log2(whole)) + 1)] + [whole]
    pools = sorted(set(pools))
    pool_padding = [
        padding_fraction(
            lengths, list(BucketBatchSampler(lengths, args.batch_size, pool))
        )
        for pool in pools
    ]
    generator = torch.Generator().manual_seed(args.seed)
    random_batches = list(
        BatchSampler(
            RandomSampler(lengths, generator=generator), args.batch_size, False
        )
    )
    strategies = {
        "random": random_batches,
        f"pools of {args.pool_batches}": list(
            BucketBatchSampler(
                lengths, args.batch_size, args.pool_batches, seed=args.seed
            )
        ),
        "sorted": list(
            BucketBatchSampler(lengths, args.batch_size, whole, seed=args.seed)
        ),
    }
    torch.manual_seed(args.seed)
    dataset = [torch.randn(int(length), 16) for length in lengths]
    lstm = nn.LSTM(16, 64, batch_first=True).to(args.device)
    seconds = {}
    for name, batches in tqdm(strategies.items(), desc="LSTM epochs"):
        fraction = padding_fraction(lengths, batches)
        padded_steps = sum(len(batch) * int(lengths[batch].max()) for batch in batches)
        wasted = lstm_flops(padded_steps - int(lengths.sum()), 16, 64)
        for mode in ("padded", "packed"):
            seconds[name, mode] = epoch_seconds(
                lstm, dataset, batches, mode == "packed", args.device
            )
        metrics[f"padding_{name.replace(' ', '_')}"] = fraction
        print(
            f"{name:>12}: {100 * fraction:4.1f} % padding, {wasted / 1e9:.2f} GFLOP "
            f"wasted a forward epoch; epoch {seconds[name, 'padded']:.2f} s padded, "
            f"{seconds[name, 'packed']:.2f} s packed"
        )
    plot_padding(lengths, pools, pool_padding, metrics["padding_random"], seconds, out)

    steps, times = scan_timings(args.max_steps, args.device)
    for mode in ("forward", "forward + backward"):
        loop, scan = times["loop", mode][-1], times["scan", mode][-1]
        metrics[f"scan_speedup_{mode.replace(' + ', '_')}"] = loop / scan
        print(
            f"T={steps[-1]} {mode}: loop {1e3 * loop:.1f} ms ({steps[-1]} steps), "
            f"scan {1e3 * scan:.1f} ms ({math.ceil(math.log2(steps[-1]))} rounds), "
            f"ratio {loop / scan:.2f}"
        )
    plot_scan(steps, times, args.device, out)
    return metrics


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Implement Blelloch's work-efficient scan (an up-sweep that composes pairs, then a
#    down-sweep that hands each element its prefix) with the same tensor operations.
#    Count its rounds and its multiplications against Hillis–Steele's for $T = 4096$,
#    and time both.
# 2. With $P_t = \prod_{s \le t} a_s$ the recurrence has the closed form
#    $h_t = P_t \sum_{s \le t} b_s / P_s$: one `cumprod` and one `cumsum`. Check it
#    against the loop for $a_t = 0.9$ and $T = 50$, then $T = 5000$, and explain the
#    failure. Feng et al. compute it in log space; rewrite it with `logcumsumexp`.
# 3. Train the copy stream with `delay=8` and $k = 8, 12, 32$. Does the final loss
#    follow the fraction $(k - d)/k$ of positions whose source lies inside the chunk?
# 4. Make `BucketBatchSampler` batch by a budget of tokens (`max_tokens`, as fairseq
#    does) instead of a fixed count, so that batches of short sequences hold more of
#    them. Measure the padding and the number of batches per epoch.
