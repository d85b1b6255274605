r"""
---
title: Data-parallel training
summary: >-
  Two processes on torch.distributed with gloo: a from-scratch data-parallel wrapper
  with bucketed gradient all-reduce, DDP, ZeRO-1 sharded optimizer state and FSDP, each
  matching single-process training on the global batch.
time: 30 s
references:
  - key: li2020pytorch
    authors: [Shen Li, Yanli Zhao, Rohan Varma, Omkar Salpekar, Pieter Noordhuis,
      Teng Li, Adam Paszke, Jeff Smith, Brian Vaughan, Pritam Damania, Soumith Chintala]
    title: "PyTorch Distributed: Experiences on Accelerating Data Parallel Training"
    year: 2020
    venue: Proceedings of the VLDB Endowment 13(12)
    arxiv: "2006.15704"
  - key: rajbhandari2020zero
    authors: [Samyam Rajbhandari, Jeff Rasley, Olatunji Ruwase, Yuxiong He]
    title: "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models"
    year: 2020
    venue: SC 2020
    arxiv: "1910.02054"
  - key: zhao2023fsdp
    authors: [Yanli Zhao, Andrew Gu, Rohan Varma, Liang Luo, Chien-Chin Huang, et al.]
    title: "PyTorch FSDP: Experiences on Scaling Fully Sharded Data Parallel"
    year: 2023
    venue: Proceedings of the VLDB Endowment 16(12)
    arxiv: "2304.11277"
  - key: goyal2017accurate
    authors:
      - Priya Goyal
      - Piotr Dollár
      - Ross Girshick
      - Pieter Noordhuis
      - Lukasz Wesolowski
      - Aapo Kyrola
      - Andrew Tulloch
      - Yangqing Jia
      - Kaiming He
    title: "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour"
    year: 2017
    venue: arXiv preprint
    arxiv: "1706.02677"
worksheet:
  - region: assign_buckets
    hint: >-
      Walk the sizes in order, adding each index to the current bucket; open a new
      bucket first when the current one is non-empty and the tensor would take it past
      bucket_bytes (so a tensor larger than the cap sits alone).
    tests:
      - test_assign_buckets_and_partition_by_hand
      - test_buckets_fill_in_reverse_order_under_the_cap
  - region: DataParallel._gradient_ready
    hint: >-
      On the first hook of a backward pass queue _finish on the autograd engine
      (once); count the parameter off in its bucket, then launch every bucket that is
      complete, strictly in index order starting from next_bucket.
    tests: [test_wrapper_leaves_the_plain_gradients]
  - region: DataParallel._finish
    hint: >-
      If a bucket was never launched, reset and raise a RuntimeError naming the
      parameters that got no gradient; otherwise wait for each in-flight all-reduce,
      split its flat buffer back into the bucket's parameters and copy each piece into
      that parameter's grad; reset for the next backward.
    tests:
      - test_wrapper_leaves_the_plain_gradients
      - test_unused_parameter_raises_naming_it
---

*Data parallelism* trains one model on $W$ processes ("ranks") at once. Every rank holds
a full copy of the model, reads a different slice of each global batch, and computes the
gradient of its own slice. The ranks then average their gradients, so that every copy
takes the same optimizer step and the copies never drift apart [@li2020pytorch].

Why averaging is exactly right: split a global batch $B$ of $Wb$ examples into $W$
shards $B_r$ of $b$ examples each. The loss of the global batch is the mean of the
per-example losses, and that is the mean of the shard means:

$$
\begin{aligned}
\nabla L_B &= \frac{1}{Wb}\sum_{i \in B} \nabla \ell_i
= \frac{1}{W}\sum_{r=0}^{W-1} \nabla L_{B_r}.
\end{aligned}
$$

(The shards must be equal in size for the plain average to be right; the sampler below
sees to it.) So $W$ ranks with $b$ examples each must produce, step for step, the
parameters that one process would produce on the whole global batch. That is this
chapter's test: every implementation below trains a digits MLP for $k$ steps on 2 CPU
processes talking through *gloo*, PyTorch's CPU collective backend, and its parameters
are compared with single-process training on the global batch. In float64 they agree to
$10^{-12}$, on every rank. Seen this way, adding ranks at a fixed $b$ grows the global
batch, which is why large runs scale the learning rate with $W$
[@goyal2017accurate]; this chapter keeps the global batch fixed and only splits it.

The chapter builds, side by side:

1. a from-scratch wrapper: broadcast the parameters once, then all-reduce the gradients
   from autograd hooks, in buckets, while the backward pass is still running;
2. `torch.nn.parallel.DistributedDataParallel` (DDP), which does the same in C++;
3. `DistributedSampler`, per-rank seeding, and a checkpoint saved by rank 0 and loaded
   by all;
4. ZeRO stage 1 [@rajbhandari2020zero] from scratch: each rank keeps the optimizer
   state of only its share of the parameters; checked against
   `torch.distributed.optim.ZeroRedundancyOptimizer`;
5. FSDP's `fully_shard` [@zhao2023fsdp], which shards parameters, gradients and state.
   In PyTorch 2.13 it runs on CPU with gloo, so it runs here too.

A distributed program is launched once per rank, by `torchrun`:

    torchrun --nproc-per-node 2 -m annotated.systems.data_parallel --worker

`python -m annotated.systems.data_parallel` without `--worker` starts those two
processes itself, waits for them, and draws the figures.
"""

import argparse
import itertools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from annotated.data import digits, integer, number, torch_device
from annotated.figures import figure, save

# ## The model and the data
#
# A small MLP on scikit-learn's 8×8 digits, in float64 so that the comparison with
# single-process training can be tight: the only differences left are the rounding of
# a sum taken in another order, about $10^{-16}$ relative. (In float32 the same runs
# agree to about $10^{-6}$.)


def make_model(hidden: int = 128, seed: int = 0) -> nn.Sequential:
    """The MLP every rank trains: 64 pixels → `hidden` → `hidden` → 10 classes."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(64, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, 10),
    ).double()


def digits_tensors() -> tuple[torch.Tensor, ...]:
    """`x_train [1438, 64]`, `y_train [1438]`, `x_test [359, 64]`, `y_test [359]`."""
    return tuple(torch.tensor(array) for array in digits())


# ## Checking arguments
#
# One checker for the counts this chapter takes (steps, batch sizes, bucket sizes,
# ranks): a bool is not a count, and each count has a least sensible value.


def check_count(owner: str, name: str, value: object, minimum: int = 1) -> int:
    """Return `value` if it is an int ≥ `minimum`, else raise naming `owner`'s
    `name`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")
    return value


# ## The distributed environment
#
# `torchrun` starts one process per rank and tells each who it is through environment
# variables: `RANK` (this process, $0..W-1$), `WORLD_SIZE` ($W$), and `MASTER_ADDR` and
# `MASTER_PORT`, where rank 0 listens so that the others can find it. With those set,
# `dist.init_process_group("gloo")` connects the ranks; its default `env://` method
# reads them. Started without them, it would wait or fail with a message about a
# missing variable. So the worker checks first and says how to launch it.

LAUNCH = "torchrun --nproc-per-node 2 -m annotated.systems.data_parallel --worker"


def require_distributed() -> tuple[int, int]:
    """Join the process group that `torchrun` describes; return `(rank, world_size)`."""
    missing = [
        name
        for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
        if name not in os.environ
    ]
    if missing:
        raise RuntimeError(
            f"data_parallel worker: {', '.join(missing)} not set; this entry point is "
            f"one rank of a distributed run. Launch it with `{LAUNCH}`, or run "
            "`python -m annotated.systems.data_parallel` to start both ranks for you."
        )
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


# ## Same start on every rank
#
# Averaged gradients keep the copies equal only if they start equal. Seeding every
# rank alike would do it, but a single rank that seeds differently (or loads another
# checkpoint) would silently train a different model. So the wrapper copies rank 0's
# parameters and buffers to all the others with `dist.broadcast` before the first step.
# DDP does the same in its constructor (`_sync_module_states` in
# `torch/distributed/utils.py`). The demo seeds each rank's model with `seed + rank` on
# purpose, so that without this broadcast the test fails.


@torch.no_grad()
def broadcast_parameters(module: nn.Module, source: int = 0) -> None:
    """Overwrite every parameter and buffer of `module` with rank `source`'s, in
    place."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        dist.broadcast(tensor, src=source)


# ## Buckets
#
# One all-reduce per parameter tensor would pay the collective's fixed cost (a round
# trip between the ranks, tens of microseconds on one machine, more across a network)
# once per tensor; a transformer has hundreds of them. One all-reduce of everything
# would wait for the last gradient before sending the first. DDP's compromise
# [@li2020pytorch] is *buckets*: consecutive parameters grouped until a bucket holds
# `bucket_bytes` (25 MB by default), each bucket flattened into one buffer and reduced
# in one call.
#
# The order matters. Backward produces the gradients of the last layer first, so DDP
# fills the buckets in *reverse* parameter order: the first bucket is ready while the
# backward pass is still working on the early layers (C++:
# `compute_bucket_assignment_by_size` in `torch/csrc/distributed/c10d/reducer.cpp`).


def assign_buckets(sizes: list[int], bucket_bytes: int) -> list[list[int]]:
    """Group consecutive tensors of `sizes` bytes into buckets of at most
    `bucket_bytes` each (a tensor larger than the cap gets a bucket of its own).
    Returns lists of indices into `sizes`."""
    buckets, filled = [[]], 0
    for index, size in enumerate(sizes):
        if buckets[-1] and filled + size > bucket_bytes:
            buckets.append([])
            filled = 0
        buckets[-1].append(index)
        filled += size
    return buckets


# ## The from-scratch data-parallel wrapper
#
# The wrapper registers a hook on every parameter with
# `Tensor.register_post_accumulate_grad_hook`: autograd calls it right after it has
# added the parameter's gradient into `.grad`. The hook counts the parameter as ready
# in its bucket. When a bucket is complete, the wrapper flattens its gradients into one
# buffer, divides by $W$ (gloo has no averaging all-reduce, so DDP divides first too)
# and starts `dist.all_reduce(buffer, async_op=True)`. That call returns at once with a
# `Work` handle; gloo sums the buffers across ranks on a background thread.
#
# **Overlap.** Because the call returns at once, autograd goes on computing the
# gradients of earlier layers while the last layers' bucket travels. On a GPU cluster
# this hides most of the communication behind the backward pass: with buckets the
# step costs about $\max(\text{compute}, \text{communication})$ rather than their sum
# [@li2020pytorch]. A bucket that is too small brings back the per-call cost; one that
# is too large starts late and leaves little to overlap with.
#
# **Order.** Collectives are matched across ranks by the order in which they are
# issued, not by name: if rank 0 reduces bucket 1 while rank 1 reduces bucket 0, gloo
# adds unrelated buffers, or hangs when their sizes differ. Autograd usually produces
# the same order on every rank, but not always (a branch taken on one rank only). So,
# like DDP's `Reducer::mark_variable_ready`, the wrapper launches buckets strictly in
# index order: a ready bucket waits for the ones before it.
#
# **The end of backward.** The optimizer must not step before every bucket is back.
# The first hook of a backward pass queues a callback on the autograd engine
# (`Variable._execution_engine.queue_callback`, the Python face of
# `Engine::queue_callback` in `torch/csrc/autograd/engine.cpp`); the engine runs it when
# the whole backward pass is done. It waits for each bucket and copies the averaged
# values back into the `.grad` of its parameters, as DDP's `Reducer::finalize_backward`
# does. After `loss.backward()` returns, the gradients are averaged: the training loop
# is the single-process one.
#
# A parameter that receives no gradient leaves its bucket incomplete forever. DDP asks
# for `find_unused_parameters=True` then; this wrapper raises, naming the parameter.


class DataParallel(nn.Module):
    """Wrap `module` so that `loss.backward()` leaves gradients averaged over all ranks.

    Broadcasts rank 0's parameters at construction; all-reduces gradients in buckets of
    at most `bucket_bytes`, started from autograd hooks as they become ready.
    """

    def __init__(self, module: nn.Module, bucket_bytes: int = 25 * 2**20):
        super().__init__()
        check_count("DataParallel", "bucket_bytes", bucket_bytes)
        if not dist.is_initialized():
            raise RuntimeError(
                "DataParallel: no process group; call dist.init_process_group first "
                f"(launched with `{LAUNCH}`)"
            )
        self.module = module
        self.world_size = dist.get_world_size()
        broadcast_parameters(module)
        names = {param: name for name, param in module.named_parameters()}
        params = [param for param in module.parameters() if param.requires_grad]
        self.params = params[::-1]  # reverse: the order backward produces gradients
        self.names = [names[param] for param in self.params]
        sizes = [param.numel() * param.element_size() for param in self.params]
        self.buckets = assign_buckets(sizes, bucket_bytes)
        self.bucket_of = {}
        for bucket, indices in enumerate(self.buckets):
            for index in indices:
                self.bucket_of[self.params[index]] = bucket
        for param in self.params:
            param.register_post_accumulate_grad_hook(self._gradient_ready)
        self._reset()

    def _reset(self) -> None:
        self.waiting = [len(indices) for indices in self.buckets]  # grads still due
        self.next_bucket = 0  # the next bucket to launch, in index order
        self.in_flight = []  # (work handle, bucket index, flat buffer)
        self.callback_queued = False

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def _gradient_ready(self, param: torch.Tensor) -> None:
        if not self.callback_queued:
            torch.autograd.Variable._execution_engine.queue_callback(self._finish)
            self.callback_queued = True
        self.waiting[self.bucket_of[param]] -= 1
        while (
            self.next_bucket < len(self.buckets) and self.waiting[self.next_bucket] == 0
        ):
            self._launch(self.next_bucket)
            self.next_bucket += 1

    def _launch(self, bucket: int) -> None:
        grads = [self.params[index].grad for index in self.buckets[bucket]]
        flat = torch.cat([grad.reshape(-1) for grad in grads])  # [bucket elements]
        flat.div_(self.world_size)  # sum of (g_r / W) over ranks = the mean
        work = dist.all_reduce(flat, async_op=True)
        self.in_flight.append((work, bucket, flat))

    def _finish(self) -> None:
        if self.next_bucket < len(self.buckets):
            stuck = self.buckets[self.next_bucket]
            unused = [self.names[i] for i in stuck if self.params[i].grad is None]
            self._reset()
            raise RuntimeError(
                f"DataParallel: parameters {unused or 'in bucket'} got no gradient "
                "in this backward pass, so their bucket was never reduced; every "
                "parameter must take part in the loss"
            )
        for work, bucket, flat in self.in_flight:
            work.wait()
            params = [self.params[index] for index in self.buckets[bucket]]
            pieces = flat.split([param.numel() for param in params])
            for param, piece in zip(params, pieces):
                param.grad.copy_(piece.view_as(param))
        self._reset()


# ## Each rank its own slice: `DistributedSampler`
#
# Every rank must see a different part of each global batch, and together the ranks
# must cover the data set once per epoch. `DistributedSampler` does this without any
# communication: every rank draws the *same* permutation of the data set (seeded with
# `seed + epoch`, so `set_epoch` must be called each epoch or every epoch repeats the
# first order) and keeps every $W$-th index starting at its rank. When the data set
# does not divide by $W$, it repeats the first few indices so that every rank has the
# same number of batches; a rank with one batch fewer would wait forever in its last
# all-reduce.
#
# The global batch of step $t$ is then the union of the ranks' batches of step $t$,
# which is how the single-process reference below is built.


def shard_batches(
    n_examples: int, rank: int, world_size: int, batch_size: int, seed: int
):
    """Endless stream of this rank's index batches `[batch_size]`, epoch after epoch."""
    sampler = DistributedSampler(
        range(n_examples), num_replicas=world_size, rank=rank, shuffle=True, seed=seed
    )
    for epoch in itertools.count():
        sampler.set_epoch(epoch)
        indices = torch.tensor(list(sampler))  # [ceil(n_examples / world_size)]
        yield from indices.split(batch_size)


def global_batches(n_examples: int, world_size: int, batch_size: int, seed: int):
    """What one process must train on to match `world_size` ranks: the ranks' batches
    of each step, joined."""
    streams = [
        shard_batches(n_examples, rank, world_size, batch_size, seed)
        for rank in range(world_size)
    ]
    for shards in zip(*streams):
        yield torch.cat(shards)


# ## Seeding per rank
#
# Two kinds of randomness need opposite treatment. The *initial weights* and the
# *shuffle order* must agree across ranks: the weights come from rank 0 by broadcast,
# the order from the sampler's shared seed. Anything drawn *per example* (dropout
# masks, data augmentation) must differ, or the ranks would apply the same mask to
# different examples, and $W$ ranks would see $W$ times fewer distinct masks. So after
# the model is built each rank reseeds its generator with `seed + rank`. This MLP has
# no dropout; the line is where a model that had it would need it.


def seed_per_rank(seed: int, rank: int) -> None:
    """Give this rank's per-example randomness its own stream."""
    torch.manual_seed(seed + rank)


# ## A checkpoint from rank 0
#
# Every rank holds the same parameters and optimizer state, so one copy is enough: rank
# 0 writes it, and a barrier keeps the other ranks from reading a half-written file.
# Loading is done by every rank (`map_location="cpu"` so that a checkpoint written on
# a GPU loads anywhere). The state dict of the *inner* module is saved, without DDP's
# `module.` prefix, so the checkpoint also loads into a plain single-process model.
# With ZeRO each rank holds only part of the optimizer state; that part is collected on
# rank 0 first (`ZeroRedundancyOptimizer.consolidate_state_dict(to=0)`).


def save_checkpoint(path: Path, module: nn.Module, optimizer, step: int) -> None:
    """Rank 0 writes `{model, optimizer, step}` to `path`; every rank waits for it."""
    if dist.get_rank() == 0:
        checkpoint = {
            "model": module.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
        }
        torch.save(checkpoint, path)
    dist.barrier()


def load_checkpoint(path: Path, module: nn.Module, optimizer) -> int:
    """Load `path` into `module` and `optimizer` on every rank; return its step."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    module.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    return checkpoint["step"]


# ## ZeRO stage 1: shard the optimizer state
#
# Adam keeps two buffers per parameter, $m$ and $v$: twice the model's size, and with
# mixed precision's float32 master weights more still. Under plain data parallelism
# every rank keeps all of it, $W$ identical copies. ZeRO stage 1
# [@rajbhandari2020zero] assigns each parameter to one *owner* rank. All ranks still
# all-reduce all gradients, but each runs the optimizer only on the parameters it owns,
# keeping only their state, then broadcasts the updated values to the others:
#
# $$
# \text{state per rank} \approx \frac{1}{W}\,\text{state}.
# $$
#
# The step is the same arithmetic as before, split by owner, so the parameters match
# the replicated optimizer exactly. The price is one broadcast of the parameters per
# step. Stage 2 would also reduce-scatter the gradients so each rank keeps only its
# own, and stage 3 shards the parameters themselves; that is FSDP, below.
#
# The partition balances element counts greedily: the largest tensors first, each to
# the rank that owns the fewest elements so far. `ZeroRedundancyOptimizer` partitions
# the same way (`_partition_parameters` in
# `torch/distributed/optim/zero_redundancy_optimizer.py`).


def partition_parameters(sizes: list[int], world_size: int) -> list[int]:
    """The owner rank of each tensor of `sizes` elements, balancing the totals."""
    owner, load = [0] * len(sizes), [0] * world_size
    for index in sorted(range(len(sizes)), key=lambda i: sizes[i], reverse=True):
        rank = min(range(world_size), key=lambda r: load[r])
        owner[index] = rank
        load[rank] += sizes[index]
    return owner


class ShardedOptimizer:
    """ZeRO-1: `optimizer_class(**defaults)` runs on this rank's share of `params`
    only; every step ends with each owner broadcasting the parameters it updated."""

    def __init__(self, params, optimizer_class=torch.optim.Adam, **defaults):
        self.params = list(params)
        rank, world_size = dist.get_rank(), dist.get_world_size()
        if len(self.params) < world_size:
            raise ValueError(
                f"ShardedOptimizer: {len(self.params)} parameter tensors cannot give "
                f"each of {world_size} ranks a share; use fewer ranks"
            )
        self.owner = partition_parameters([p.numel() for p in self.params], world_size)
        mine = [p for p, owner in zip(self.params, self.owner) if owner == rank]
        self.optim = optimizer_class(mine, **defaults)  # named as in torch's ZeRO

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.optim.step()
        for param, owner in zip(self.params, self.owner):
            dist.broadcast(param, src=owner)


def state_bytes(optimizer) -> int:
    """Bytes of optimizer state this rank holds (a DTensor counts its local shard)."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                local = value.to_local() if hasattr(value, "to_local") else value
                total += local.numel() * local.element_size()
    return total


# ## FSDP: shard everything
#
# `torch.distributed.fsdp.fully_shard` (FSDP2) replaces each parameter by a `DTensor`
# holding only this rank's rows. Before a layer's forward it all-gathers the full
# weight, and frees it after; in backward it gathers again and reduce-scatters the
# gradient, so each rank ends with the averaged gradient of its own rows only
# [@zhao2023fsdp]. The optimizer then updates just those rows: ZeRO stage 3. Applying
# it per layer, then to the root, makes each layer one communication unit. FSDP does
# not broadcast at wrap time, so the weights are made equal first.
#
# It runs on CPU with gloo in PyTorch 2.13 (checked by this chapter's test), so no code
# path here is GPU-only.


def fully_sharded(model: nn.Sequential) -> nn.Sequential:
    """Shard `model` with FSDP2, one unit per `Linear`, after equalising its weights."""
    from torch.distributed.fsdp import fully_shard

    broadcast_parameters(model)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    return fully_shard(model)


def full_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole parameters of `model` on every rank (FSDP's DTensors gathered)."""
    return {
        name: value.full_tensor() if hasattr(value, "full_tensor") else value.clone()
        for name, value in model.state_dict().items()
    }


# ## One training run, any of the five ways
#
# The loop is the single-process loop: forward on this rank's batch, `backward`,
# `step`. What differs is how the model and the optimizer are wrapped, which is all
# that `build` chooses. The losses are this rank's; at the end one all-reduce turns
# them into the global batch's losses.

METHODS = ("ours", "ddp", "ours + zero-1", "ddp + ZeroRedundancyOptimizer", "fsdp")


def build(method: str, model: nn.Module, lr: float, bucket_bytes: int):
    """`(wrapped model, optimizer, inner module)` for one of `METHODS`."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    if method == "ours":
        wrapped = DataParallel(model, bucket_bytes)
        return wrapped, torch.optim.Adam(model.parameters(), lr=lr), model
    if method == "ddp":
        wrapped = DistributedDataParallel(model, bucket_cap_mb=bucket_bytes / 2**20)
        return wrapped, torch.optim.Adam(model.parameters(), lr=lr), model
    if method == "ours + zero-1":
        wrapped = DataParallel(model, bucket_bytes)
        return wrapped, ShardedOptimizer(model.parameters(), lr=lr), model
    if method == "ddp + ZeroRedundancyOptimizer":
        wrapped = DistributedDataParallel(model, bucket_cap_mb=bucket_bytes / 2**20)
        optimizer = ZeroRedundancyOptimizer(
            model.parameters(), optimizer_class=torch.optim.Adam, lr=lr
        )
        return wrapped, optimizer, model
    wrapped = fully_sharded(model)
    return wrapped, torch.optim.Adam(wrapped.parameters(), lr=lr), wrapped


def train(method: str, args, rank: int, world_size: int, data) -> dict:
    """Train `args.steps` steps; return the final full parameters, the global losses
    and this rank's optimizer state bytes."""
    x_train, y_train = data
    model = make_model(args.hidden, seed=args.seed + rank)  # unequal until broadcast
    wrapped, optimizer, inner = build(method, model, args.lr, args.bucket_kb * 1024)
    seed_per_rank(args.seed, rank)
    batches = shard_batches(len(x_train), rank, world_size, args.batch_size, args.seed)
    losses = torch.zeros(args.steps, dtype=torch.float64)
    for step, index in zip(range(args.steps), batches):
        loss = F.cross_entropy(wrapped(x_train[index]), y_train[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses[step] = loss.detach()
    dist.all_reduce(losses)
    local = getattr(optimizer, "optim", optimizer)  # a ZeRO optimizer's own shard
    return {
        "parameters": full_parameters(inner),
        "loss": losses / world_size,
        "state_bytes": state_bytes(local),
    }


# The checkpoint run trains half the steps with the from-scratch wrapper, saves from
# rank 0, then builds a *fresh* model and optimizer on every rank, loads the file and
# trains the rest, skipping the batches already seen. It must end exactly where the
# uninterrupted "ours" run ends: Adam's moments and step count travel in the optimizer
# state dict.


def train_resumed(args, rank: int, world_size: int, data, path: Path) -> dict:
    """`train("ours", ...)` with a save and a reload half way."""
    x_train, y_train = data
    halfway = args.steps // 2
    losses = torch.zeros(args.steps, dtype=torch.float64)
    start = 0
    for stop in (halfway, args.steps):
        # The second model starts from other weights: the load must overwrite them.
        seed = args.seed + rank if start == 0 else args.seed + world_size + rank
        model = make_model(args.hidden, seed=seed)
        wrapped = DataParallel(model, args.bucket_kb * 1024)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        if start > 0:
            start = load_checkpoint(path, model, optimizer)
        batches = shard_batches(
            len(x_train), rank, world_size, args.batch_size, args.seed
        )
        for step, index in zip(
            range(start, stop), itertools.islice(batches, start, None)
        ):
            loss = F.cross_entropy(wrapped(x_train[index]), y_train[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses[step] = loss.detach()
        save_checkpoint(path, model, optimizer, stop)
        start = stop
    dist.all_reduce(losses)
    return {
        "parameters": full_parameters(model),
        "loss": losses / world_size,
        "state_bytes": state_bytes(optimizer),
    }


# ## The worker: one rank
#
# This is what `torchrun` runs in each process. It trains every method in turn, then
# checks that the ranks agree: each rank's parameters are gathered on all ranks and
# the largest difference from rank 0's is kept. Rank 0 writes everything to
# `results.pt`, which the launcher reads.


def worker(args) -> None:
    rank, world_size = require_distributed()
    torch.set_num_threads(1)  # one core per rank
    x_train, y_train, _, _ = digits_tensors()
    out = Path(args.out)
    results = {}
    for method in tqdm(METHODS + ("checkpoint",), desc=f"rank {rank}", disable=rank):
        if method == "checkpoint":
            run = train_resumed(
                args, rank, world_size, (x_train, y_train), out / "checkpoint.pt"
            )
        else:
            run = train(method, args, rank, world_size, (x_train, y_train))
        flat = torch.cat([value.reshape(-1) for value in run["parameters"].values()])
        gathered = [torch.empty_like(flat) for _ in range(world_size)]
        dist.all_gather(gathered, flat)
        run["rank_spread"] = max((g - gathered[0]).abs().max().item() for g in gathered)
        every_rank = [None] * world_size
        dist.all_gather_object(every_rank, run["state_bytes"])
        run["state_bytes"] = every_rank
        results[method] = run
    if rank == 0:
        torch.save(results, out / "results.pt")
    dist.barrier()
    dist.destroy_process_group()


# ## The launcher
#
# Started without `torchrun`, the demo plays its part: it finds a free port (binding
# port 0 makes the operating system pick one), starts one worker process per rank with
# the environment variables `torchrun` would set, all on 127.0.0.1, and waits for
# them. If either fails, its output is shown.


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(worker_argv: list[str], world_size: int) -> None:
    """Run `python -m annotated.systems.data_parallel --worker ...` on `world_size`
    ranks, as `torchrun --nproc-per-node world_size` would."""
    port = free_port()
    processes = []
    for rank in range(world_size):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world_size),
            LOCAL_WORLD_SIZE=str(world_size),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
        )
        command = [sys.executable, "-m", "annotated.systems.data_parallel", "--worker"]
        processes.append(
            subprocess.Popen(
                command + worker_argv,
                env=env,
                stdout=None if rank == 0 else subprocess.PIPE,
                stderr=None if rank == 0 else subprocess.STDOUT,
                text=True,
            )
        )
    failures = []
    for rank, process in enumerate(processes):
        output, _ = process.communicate(timeout=600)  # None for rank 0: printed above
        if process.returncode != 0:
            said = "(its output is above)" if output is None else output
            failures.append(f"rank {rank} exited with {process.returncode}\n{said}")
    if failures:
        raise RuntimeError("data_parallel: a worker failed\n" + "\n".join(failures))


# ## The reference: one process, the global batch
#
# The same model (rank 0's seed, since rank 0's weights are the ones broadcast), the
# same Adam, and at each step the union of the ranks' batches.


def train_single_process(args, world_size: int, data) -> dict:
    x_train, y_train = data
    model = make_model(args.hidden, seed=args.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    batches = global_batches(len(x_train), world_size, args.batch_size, args.seed)
    losses = torch.zeros(args.steps, dtype=torch.float64)
    for step, index in zip(range(args.steps), batches):
        loss = F.cross_entropy(model(x_train[index]), y_train[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses[step] = loss.detach()
    return {
        "parameters": full_parameters(model),
        "loss": losses,
        "state_bytes": [state_bytes(optimizer)] * world_size,
        "model": model,
    }


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between two state dicts with the same keys."""
    return max((a[name] - b[name]).abs().max().item() for name in a)


# ## The example
#
# What every rank runs on its shard: the MLP on a batch of 16 digits. (The demo gives
# each rank 32, `--batch-size` being per rank, so its 2 ranks share a global batch of
# 64.)


def example():
    """The replicated model on one rank's batch."""
    x_train, _, _, _ = digits_tensors()
    return make_model(hidden=128, seed=0), (x_train[:16],)


# ## The demo
#
# Train the five ways and the resumed run on 2 ranks, compare each with one process on
# the global batch, and draw the losses and the optimizer state each rank holds.


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Data-parallel training on 2 gloo ranks, "
        "compared with one process.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--steps", type=integer(at_least=1), default=200, help="training steps"
    )
    parser.add_argument(
        "--batch-size",
        type=integer(at_least=1),
        default=32,
        help="examples per rank per step",
    )
    parser.add_argument(
        "--hidden", type=integer(at_least=1), default=128, help="hidden width"
    )
    parser.add_argument(
        "--lr", type=number(above=0), default=1e-3, help="Adam learning rate"
    )
    parser.add_argument(
        "--bucket-kb",
        type=integer(at_least=1),
        default=64,
        help="gradient bucket size in KiB",
    )
    parser.add_argument(
        "--world-size", type=integer(at_least=1), default=2, help="number of ranks"
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cpu",
        help="device (gloo runs on cpu)",
    )
    parser.add_argument("--out", default="out/data_parallel", help="output folder")
    parser.add_argument(
        "--worker", action="store_true", help="run as one rank (under torchrun)"
    )
    args = parser.parse_args(argv)
    if args.device != "cpu":
        parser.error(f"--device must be cpu (the gloo backend), got {args.device}")
    return args


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse(argv)
    if args.worker:
        worker(args)
        # A finished rank leaves without the interpreter's shutdown. At a normal exit
        # Python tears itself down and C++ destructors run, torch.distributed's among
        # them. In about one run in 30 on this machine, rank 1 then died by SIGABRT
        # ("terminate called without an active exception", with no Python code left
        # running) after its work was done, and the launcher reported a failure. The
        # barrier at the end of `worker` means every collective has finished and rank 0
        # has written `results.pt`, so skipping the shutdown loses nothing once the
        # output streams are flushed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    worker_argv = [
        "--steps", str(args.steps), "--batch-size", str(args.batch_size),
        "--hidden", str(args.hidden), "--lr", str(args.lr),
        "--bucket-kb", str(args.bucket_kb), "--seed", str(args.seed),
        "--out", str(out),
    ]  # fmt: skip
    started = time.perf_counter()
    launch(worker_argv, args.world_size)
    seconds = time.perf_counter() - started
    results = torch.load(out / "results.pt", weights_only=False)
    x_train, y_train, x_test, y_test = digits_tensors()
    reference = train_single_process(args, args.world_size, (x_train, y_train))
    deviation = {
        method: max_difference(run["parameters"], reference["parameters"])
        for method, run in results.items()
    }
    with torch.no_grad():
        predictions = reference["model"](x_test).argmax(dim=1)
    accuracy = (predictions == y_test).double().mean().item()
    metrics = {
        "max parameter difference": max(deviation.values()),
        "max rank spread": max(run["rank_spread"] for run in results.values()),
        "test accuracy": accuracy,
        "launch seconds": seconds,
    }
    for method, value in deviation.items():
        print(f"{method:32s} max |θ − θ_single| {value:.1e}")
    for name, value in metrics.items():
        print(f"{name} {value:.3g}")
    draw(results, reference, deviation, args, out)
    return metrics


def draw(results, reference, deviation, args, out: Path) -> None:
    fig, (left, right) = figure(panels=2)
    steps = torch.arange(1, args.steps + 1)
    left.plot(steps, reference["loss"], color="black", lw=4, label="one process")
    for index, run in enumerate(results.values()):
        label = (
            f"{len(results)} runs on {args.world_size} ranks" if index == 0 else None
        )
        left.plot(steps, run["loss"], lw=1, color="C0", label=label)  # one colour
    left.set_xlabel("step $k$")
    left.set_ylabel("global-batch loss")
    left.set_yscale("log")
    left.legend()
    floor = 1e-18
    names = list(deviation)
    right.barh(names, [max(deviation[name], floor) for name in names])
    right.set_xscale("log")
    right.set_xlim(floor, 1e-5)
    right.axvline(1e-6, color="red", ls="--")
    right.set_xlabel(r"max $|\theta - \theta_{\rm single}|$ at the end")
    save(
        fig,
        out / "loss.png",
        caption=(
            f"Left: loss of the global batch over {args.steps} steps, one process "
            "(black) under the data-parallel runs. Right: each run's largest parameter "
            "difference from one-process training (float64; exact zeros drawn at "
            f"{floor:g}; the red line is 1e-6)."
        ),
    )
    fig, axis = figure()
    names = list(results)
    for rank in range(args.world_size):
        kib = [results[name]["state_bytes"][rank] / 1024 for name in names]
        offset = (rank - (args.world_size - 1) / 2) * 0.8 / args.world_size
        rows = [row + offset for row in range(len(names))]
        axis.barh(rows, kib, height=0.8 / args.world_size, label=f"rank {rank}")
    full = reference["state_bytes"][0] / 1024
    axis.axvline(full, color="black", ls="--", label="one process")
    axis.set_yticks(range(len(names)), names)
    axis.set_xlabel("Adam state held by the rank (KiB)")
    fig.legend(loc="outside lower center", ncols=3)
    parts = {1: "into one part", 2: "in half"}.get(
        args.world_size, f"into {args.world_size} parts"
    )
    save(
        fig,
        out / "optimizer_state.png",
        caption=(
            "Adam's state on each rank: the replicated runs keep all of it on every "
            "rank; ZeRO-1 and FSDP split it between the ranks. ZeRO-1 assigns whole "
            f"tensors, so its split is uneven; FSDP splits every tensor {parts}."
        ),
    )


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Set `--bucket-kb` to 1 and to 100000 and time the runs. With two processes on one
#    machine the overlap hardly shows; where would it?
# 2. Remove the `broadcast_parameters` call from `DataParallel.__init__` and run the
#    demo. Which numbers change, and why does the rank spread stay small only by luck
#    when the seeds agree?
# 3. Add dropout to the model. What must the single-process reference do to stay
#    equal to the two ranks, given `seed_per_rank`?
# 4. Turn `ShardedOptimizer` into ZeRO stage 2: replace the all-reduce with
#    `dist.reduce_scatter_tensor` so that each rank keeps only the gradients it owns.
