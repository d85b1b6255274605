r"""
---
title: Performance analysis
summary: >-
  Measure the machine's peak FLOP/s and memory bandwidth, count each operation's FLOPs
  with FlopCounterMode and its bytes from its tensors, place every operation on the
  roofline, then trace a GPT training step with torch.profiler: the operator table, a
  Perfetto trace, a TensorBoard trace on a schedule, and the memory of the step by
  category against the formulas of the memory chapter; on a GPU, NVTX ranges and a
  capture range for a system-wide timeline in Nsight Systems.
time: 10 s
references:
  - key: williams2009roofline
    authors: [Samuel Williams, Andrew Waterman, David Patterson]
    title: >-
      Roofline: An Insightful Visual Performance Model for Multicore Architectures
    year: 2009
    venue: Communications of the ACM 52(4)
    url: https://doi.org/10.1145/1498765.1498785
  - key: mccalpin1995stream
    authors: [John D. McCalpin]
    title: Memory Bandwidth and Machine Balance in Current High Performance Computers
    year: 1995
    venue: IEEE Computer Society TCCA Newsletter
    url: https://www.cs.virginia.edu/stream/ref.html
  - key: paszke2019pytorch
    authors: [Adam Paszke, Sam Gross, Francisco Massa, Adam Lerer, et al.]
    title: "PyTorch: An Imperative Style, High-Performance Deep Learning Library"
    year: 2019
    venue: NeurIPS 2019
    arxiv: "1912.01703"
  - key: korthikanti2022reducing
    authors: [Vijay Korthikanti, Jared Casper, Sangkug Lym, Lawrence McAfee,
      Michael Andersch, Mohammad Shoeybi, Bryan Catanzaro]
    title: Reducing Activation Recomputation in Large Transformer Models
    year: 2022
    venue: arXiv preprint (MLSys 2023)
    arxiv: "2205.05198"
  - key: nvidia2025nsys
    authors: [NVIDIA]
    title: Nsight Systems User Guide
    year: 2025
    venue: NVIDIA documentation
    url: https://docs.nvidia.com/nsight-systems/UserGuide/index.html
worksheet:
  - region: op
    hint: >-
      Call fn once on the args to get its output, and count the bytes as every
      input read once plus the output written once.
    tests: [test_bytes_model_reads_inputs_and_writes_output_once]
  - region: bound
    hint: >-
      Check the peak and the intensity; below the ridge point (peak FLOP/s over
      bandwidth) an operation is memory-bound, at or above it compute-bound.
    tests: [test_roofline_classifies_add_as_memory_and_matmul_as_compute_bound]
  - region: roofline
    hint: >-
      For each op time a call, divide its FLOPs by the seconds, classify it with
      bound, and measure the fraction of its roof it reaches (bytes per second over
      the bandwidth if memory-bound, achieved over peak FLOP/s if not); the roof is
      min(peak FLOP/s, intensity * bandwidth). One dict per op, with FlopCounter's
      count beside the hand formula.
    tests: [test_roofline_rows_are_consistent]
---

"Make it faster" starts with two numbers and a question. The numbers are the machine's:
how many floating-point operations it can do per second, $P$, and how many bytes it can
move between memory and the cores per second, $B$. The question is the operation's:
how many operations does it do per byte it moves? That ratio is its *arithmetic
intensity* $I$, and the roofline model [@williams2009roofline] says the best an
operation can reach is

$$
\text{attainable FLOP/s} = \min(P,\ I \cdot B).
$$

Below the *ridge point* $I = P/B$ an operation waits for memory, and making its
arithmetic faster changes nothing; above it the arithmetic is the limit, and moving
fewer bytes changes nothing. The ratio $P/B$ is what McCalpin called the machine's
balance [@mccalpin1995stream].

This chapter measures $P$ with a large matrix product and $B$ with a large copy, on
whatever device it runs on (`--device cuda` measures a GPU the same way). It counts
the FLOPs of the operations the earlier chapters are built from with PyTorch's
`FlopCounterMode`, checked against $2mnk$ and its relatives exactly, estimates their
bytes from their tensors, times each with `torch.utils.benchmark`, and draws them all
on the roofline. Then it looks at a whole training step of the GPT from
[the memory chapter](../transformers/memory_analysis.md) with `torch.profiler`
[@paszke2019pytorch]: which operators take the time, a trace to open in Perfetto, a
TensorBoard trace recorded on a schedule, and the memory of the step by category
(parameters, gradients, Adam's state, activations) against that chapter's formulas.

On this page's CPU the large matrix product and the convolution reach the measured
peak, while most element-wise operations reach a fifth of their roof or less, for a
reason that has nothing to do with arithmetic (a fresh output costs page faults). The
profiler's memory categories match the formulas to the byte for the parameters, the
gradients and the optimizer state, and the activations to 7 %.

On a GPU the same code profiles CUDA kernels too and, in addition, records a CUDA
memory snapshot, which only exists there. With `--nvtx` it instead runs a few steps
marked with NVTX ranges inside a capture range, for a system-wide timeline in NVIDIA's
Nsight Systems [@nvidia2025nsys]. Both paths are written below; this page's CPU runs
neither (a test runs the NVTX path where a GPU is present).
"""

import argparse
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.profiler_util import EventList
from torch.profiler import (
    ProfilerActivity,
    profile,
    record_function,
    schedule,
    tensorboard_trace_handler,
)
from torch.utils import benchmark
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from annotated.data import integer, number, torch_device
from annotated.figures import figure, save
from annotated.transformers.attention import scaled_dot_product_attention
from annotated.transformers.memory_analysis import (
    GPT,
    Config,
    breakdown,
    lm_loss,
    make_batch,
)

# ## Arguments
#
# Every public function takes sizes as positive ints; one checker names the argument
# that is not.


def check_positive_int(name: str, value) -> int:
    """Return `value` if it is a positive int (not a bool); raise naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


# ## Timing an operation
#
# A single call timed with `time.perf_counter` measures the call and its noise. On a
# GPU it measures even less: a kernel launch returns before the kernel has run.
# `torch.utils.benchmark.Timer` handles both. It synchronises the GPU around its
# measurements, and `blocked_autorange` runs the statement in blocks long enough for
# the clock to be precise, then repeats blocks until `min_run_time` has passed. We
# keep the median time per call, which one slow block cannot move.
#
# One trap: `Timer` runs the statement with **one** thread unless told otherwise
# (`num_threads=1` is its default, so that measurements are comparable across
# machines). A matrix product that a training loop runs on every core would be timed
# on one. We pass the thread count torch is using, and the demo's `--threads` sets it.


def seconds_per_call(fn, args: tuple, min_run_time: float = 0.2) -> float:
    """Median seconds of one `fn(*args)`, measured with `blocked_autorange`."""
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if not min_run_time > 0:
        raise ValueError(f"min_run_time must be > 0 seconds, got {min_run_time!r}")
    timer = benchmark.Timer(
        stmt="fn(*args)",
        globals={"fn": fn, "args": args},
        num_threads=torch.get_num_threads(),
    )
    return timer.blocked_autorange(min_run_time=min_run_time).median


# ## The machine's two numbers
#
# **Compute.** An $n \times n$ by $n \times n$ matrix product does $n^3$ multiplies
# and $n^3$ adds, $2n^3$ FLOPs, and for large $n$ it is the fastest thing a BLAS
# library does, so its FLOP/s is a fair *measured* peak. The data sheet's peak
# (cores × clock × SIMD lanes × 2 for fused multiply-add) is higher; what code
# actually reaches is the better roof to measure against. We report which library did
# the work and with how many threads: on a CPU the peak is a property of the BLAS
# build (MKL, OpenBLAS) as much as of the chip. On a GPU the float32 product runs on
# the CUDA cores unless TF32 is allowed (`torch.backends.cuda.matmul.allow_tf32`),
# which would be a different, higher roof.
#
# **Bandwidth.** `dst.copy_(src)` reads every byte of `src` and writes every byte of
# `dst`, no arithmetic at all: $2 \times$ the tensor's bytes per call. The tensor must
# be much larger than the last-level cache (32 MiB on this page's CPU), or we would
# measure the cache. This is the STREAM benchmark's "copy" [@mccalpin1995stream].
#
# The ridge point $P/B$ is in FLOPs per byte. This page's CPU measures a few. An
# H100's data sheet gives about 20 for float32 on its CUDA cores (67 TFLOP/s over
# 3.35 TB/s) and about 300 for bfloat16 on its tensor cores: the faster the
# arithmetic, the more operations sit below the ridge.


def blas_info() -> str:
    """The BLAS library and thread count PyTorch uses, from its build information."""
    config = torch.__config__.show()
    blas = next(
        (part.split("=", 1)[1] for part in config.split(", ") if "BLAS_INFO=" in part),
        "unknown",
    )
    return f"{blas}, {torch.get_num_threads()} threads"


def machine_peak(
    device: str = "cpu",
    matmul_size: int = 2048,
    copy_elements: int = 1 << 25,
    min_run_time: float = 0.5,
) -> dict:
    """Measured peak: `"flops"` in FLOP/s (float32 matmul of `matmul_size`),
    `"bandwidth"` in bytes/s (copy of `copy_elements` float32s), `"ridge"` in
    FLOP/byte, and the `"blas"` used."""
    check_positive_int("matmul_size", matmul_size)
    check_positive_int("copy_elements", copy_elements)
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(matmul_size, matmul_size, generator=generator).to(device)
    b = torch.randn(matmul_size, matmul_size, generator=generator).to(device)
    seconds = seconds_per_call(torch.mm, (a, b), min_run_time)
    flops = 2 * matmul_size**3 / seconds  # FLOP/s
    src = torch.ones(copy_elements, device=device)
    dst = torch.empty_like(src)
    seconds = seconds_per_call(dst.copy_, (src,), min_run_time)
    bandwidth = 2 * src.nbytes / seconds  # bytes/s: one read, one write
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else blas_info()
    return {
        "flops": flops,
        "bandwidth": bandwidth,
        "ridge": flops / bandwidth,
        "blas": name,
    }


# ## Counting FLOPs
#
# `torch.utils.flop_counter.FlopCounterMode` is a `TorchDispatchMode`: every aten
# operator called inside it passes through it, and for the ones it has a formula for
# (`torch/utils/flop_counter.py`'s `flop_registry`) it adds that formula's count. The
# formulas are the ones we would write by hand, so the test holds them to these
# exactly:
#
# - a product of an $m \times k$ and a $k \times n$ matrix: $2mnk$;
# - a convolution of $N$ images, $C_{in} \to C_{out}$ channels, a $k \times k$ kernel
#   and an $H_{out} \times W_{out}$ output: $2 N C_{out} H_{out} W_{out} C_{in} k^2$,
#   one multiply-add per weight per output position;
# - attention over $L$ queries and $S$ keys of width $E$ (values of width $E_v$), per
#   head: $2LSE$ for the scores $QK^\top$ and $2LSE_v$ for the weighted sum.
#
# What it does not count matters as much. It has no formula for element-wise work:
# adds, GELU, softmax, LayerNorm all count zero, because in a large model they are a
# small share of the FLOPs (though not of the time, as the roofline will show). And it
# counts only the operators it knows by name, so what it says about
# `F.scaled_dot_product_attention` depends on the kernel PyTorch picks for it. On a
# CPU, 3-D `[heads, L, E]` tensors take the unfused math path, two `bmm` and a softmax,
# and the counter counts the two products (268,435,456 FLOPs for `[16, 256, 64]`, the
# formula above). 4-D `[batch, heads, L, E]` tensors run the fused
# `_scaled_dot_product_flash_attention_for_cpu`, which is not registered, and the
# counter reports **zero** FLOPs for the whole attention. On a GPU the fused kernels
# (`_scaled_dot_product_flash_attention`, `_scaled_dot_product_efficient_attention`)
# are registered. We count the attention of
# [the attention chapter](../transformers/attention.md), written with two matrix
# products the counter sees whatever the shapes and the device.


def matmul_flops(m: int, n: int, k: int) -> int:
    """FLOPs of an `[m, k] @ [k, n]` product: one multiply and one add per term."""
    return 2 * m * n * k


def conv2d_flops(
    batch: int, c_in: int, c_out: int, h_out: int, w_out: int, kernel: int
) -> int:
    """FLOPs of a square-kernel 2-D convolution (groups=1), bias not counted."""
    return 2 * batch * c_out * h_out * w_out * c_in * kernel**2


def attention_flops(batch: int, q_len: int, k_len: int, d_qk: int, d_v: int) -> int:
    """FLOPs of `softmax(Q Kᵀ) V`'s two products over `batch` (batch × heads) rows."""
    return 2 * batch * q_len * k_len * (d_qk + d_v)


def counted_flops(fn, *args) -> int:
    """The FLOPs `FlopCounterMode` counts in `fn(*args)`."""
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


# For the element-wise operations we count by hand, one FLOP for each add, multiply,
# compare, exponential or tanh, per element. A transcendental costs a core far more
# than an add, so these counts are a convention; they only need to be stated, and they
# place the operations where they belong, far left on the roofline.
#
# - `add`: $x + y$, 1.
# - `softmax` along a row: the max (1 compare), $x - \max$ (1), $\exp$ (1), the sum
#   (1), the division (1): 5.
# - `layernorm`: the mean (1 add), $x - \mu$ (1), its square (1), the variance's sum
#   (1), the scaling by $1/\sigma$ (1), $\gamma$ (1), $\beta$ (1): 7.
# - `gelu` in GPT-2's tanh form, $\frac12 x(1 + \tanh[\sqrt{2/\pi}(x + 0.044715x^3)])$:
#   $x^3$ (2), $\times 0.044715$ (1), $+x$ (1), $\times\sqrt{2/\pi}$ (1), $\tanh$ (1),
#   $+1$ (1), $\times x$ (1), $\times \frac12$ (1): 9.
# - an embedding lookup copies rows: 0.

ELEMENTWISE_FLOPS = {"add": 1, "softmax": 5, "layernorm": 7, "gelu": 9, "embedding": 0}

# ## Counting bytes
#
# The bytes model is the simplest one that says something: an operation reads each of
# its inputs once from memory and writes its output once. That is the *least* traffic
# the operation could have. A real kernel may move more (a matrix product too large for
# the cache reads its inputs several times; the unfused attention writes and reads its
# $L \times S$ scores), and then it lands below the roof, which is the roofline's
# point: the distance to the roof is traffic or overhead that a better kernel could
# remove.
#
# One exception: an embedding lookup reads only the rows it gathers, not the whole
# table, so its reads are the ids plus the output's worth of rows.


def tensor_bytes(*tensors: Tensor) -> int:
    """Total bytes of `tensors`' elements."""
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class Op:
    """One operation to place on the roofline: `fn(*args)`, its FLOPs by hand
    formula, and its bytes by the read-once, write-once model."""

    name: str
    fn: object
    args: tuple
    flops: int
    bytes: int

    @property
    def intensity(self) -> float:
        """FLOPs per byte moved."""
        return self.flops / self.bytes


def op(name: str, fn, args: tuple, flops: int) -> Op:
    """An `Op` whose bytes are its inputs read once plus its output written once."""
    output = fn(*args)
    return Op(name, fn, args, flops, tensor_bytes(*args) + tensor_bytes(output))


# ## The operations of the earlier chapters
#
# One representative of each kind, all in float32, sized by one width `n` (the demo
# uses 1024, the tests 64). Element-wise tensors are $8n \times n$, 32 MiB at
# $n = 1024$, so that they do not fit in the cache either.
#
# - `matmul`: $x W$, $n \times n$ by $n \times n$, as in every linear layer.
# - `matvec`: one row times a $4n \times 4n$ matrix, the shape of a linear layer
#   when a language model generates one token at a time.
# - `bmm 8×8`: many tiny products, each $8 \times 8$ by $8 \times 8$.
# - `conv2d`: 3 × 3, 64 → 64 channels, as in the [CNN chapters](../cnn/resnet.md).
# - `attention`: 16 heads of width 64 over $n/4$ positions, with
#   [the attention chapter's](../transformers/attention.md) function.
# - `layernorm`, `softmax`, `gelu`, `add`: the element-wise parts of a Transformer.
# - `add, out=`: the same add, written into an output allocated once (see the demo's
#   findings for why it is there).
# - `embedding`: $16n$ distinct ids into a table of $32n$ rows of width $n/2$
#   (64 MiB), so that the rows it gathers do not fit in the cache either.


def make_ops(n: int = 1024, device: str = "cpu") -> list[Op]:
    """The operations to place on the roofline, sized by `n` (a multiple of 32)."""
    check_positive_int("n", n)
    if n % 32:
        raise ValueError(f"n must be a multiple of 32, got {n}")
    generator = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator).to(device)

    rows, side, positions = 8 * n, n // 32, n // 4
    wide, other = randn(rows, n), randn(rows, n)  # [8n, n] each
    gain, shift = randn(n), randn(n)  # [n]
    table = randn(4 * rows, n // 2)  # [32n, n/2]
    ids = torch.randperm(4 * rows, generator=generator)[: 2 * rows].to(device)  # [16n]
    q, k, v = (randn(16, positions, 64) for _ in range(3))  # [heads, n/4, 64]

    ops = [
        op("matmul", torch.mm, (randn(n, n), randn(n, n)), matmul_flops(n, n, n)),
        op(
            "matvec",
            torch.mm,
            (randn(1, 4 * n), randn(4 * n, 4 * n)),
            matmul_flops(1, 4 * n, 4 * n),
        ),
        op(
            "bmm 8×8",
            torch.bmm,
            (randn(64 * n, 8, 8), randn(64 * n, 8, 8)),
            64 * n * matmul_flops(8, 8, 8),
        ),
        op(
            "conv2d",
            lambda x, w: F.conv2d(x, w, padding=1),
            (randn(8, 64, side, side), randn(64, 64, 3, 3)),
            conv2d_flops(8, 64, 64, side, side, 3),
        ),
        op(
            "attention",
            lambda q, k, v: scaled_dot_product_attention(q, k, v)[0],
            (q, k, v),
            attention_flops(16, positions, positions, 64, 64),
        ),
        op(
            "layernorm",
            lambda x, g, b: F.layer_norm(x, (n,), g, b),
            (wide, gain, shift),
            ELEMENTWISE_FLOPS["layernorm"] * wide.numel(),
        ),
        op(
            "softmax",
            lambda x: torch.softmax(x, dim=-1),
            (wide,),
            ELEMENTWISE_FLOPS["softmax"] * wide.numel(),
        ),
        op(
            "gelu",
            lambda x: F.gelu(x, approximate="tanh"),
            (wide,),
            ELEMENTWISE_FLOPS["gelu"] * wide.numel(),
        ),
        op("add", torch.add, (wide, other), wide.numel()),
    ]
    # The same add into an output allocated once: three tensors moved, not four.
    into = torch.empty_like(wide)
    ops.append(
        Op(
            "add, out=",
            lambda x, y, out: torch.add(x, y, out=out),
            (wide, other, into),
            wide.numel(),
            tensor_bytes(wide, other, into),
        )
    )
    gathered = 2 * ids.numel() * table.shape[1] * table.element_size()  # read, write
    ops.append(
        Op("embedding", F.embedding, (ids, table), 0, tensor_bytes(ids) + gathered)
    )
    return ops


# ## The roofline
#
# With the machine's $P$ and $B$, each operation of intensity $I$ gets its roof,
# $\min(P, IB)$, and its class: *memory-bound* below the ridge $P/B$, *compute-bound*
# above it. How far below its roof it lands is the fraction that a faster kernel
# could still win. For a memory-bound operation we state that fraction in bandwidth
# (its bytes per second over $B$), which is the same number when $I > 0$ and still
# means something for the embedding, whose $I$ is zero.


def bound(intensity: float, peak: dict) -> str:
    """`"memory-bound"` if `intensity` (FLOP/byte) is below `peak`'s ridge point,
    else `"compute-bound"`."""
    check_peak(peak)
    if not (isinstance(intensity, (int, float)) and 0 <= intensity < math.inf):
        raise ValueError(f"intensity must be a finite number >= 0, got {intensity!r}")
    return "memory-bound" if intensity < peak["ridge"] else "compute-bound"


def check_peak(peak: dict) -> None:
    """Raise unless `peak` holds positive finite `flops`, `bandwidth` and `ridge`."""
    if not isinstance(peak, dict):
        raise TypeError(f"peak must be a dict, got {type(peak).__name__}")
    for key in ("flops", "bandwidth", "ridge"):
        value = peak.get(key)
        if not (isinstance(value, (int, float)) and 0 < value < math.inf):
            raise ValueError(f"peak[{key!r}] must be a positive finite number")


def roofline(ops: list[Op], peak: dict, min_run_time: float = 0.2) -> list[dict]:
    """Time every op and place it under `peak`'s roof: one row per op."""
    check_peak(peak)
    rows = []
    for item in tqdm(ops, desc="timing ops", leave=False):
        seconds = seconds_per_call(item.fn, item.args, min_run_time)
        achieved = item.flops / seconds  # FLOP/s
        kind = bound(item.intensity, peak)
        if kind == "memory-bound":
            fraction = item.bytes / seconds / peak["bandwidth"]
        else:
            fraction = achieved / peak["flops"]
        rows.append(
            {
                "name": item.name,
                "flops": item.flops,
                "counted": counted_flops(item.fn, *item.args),
                "bytes": item.bytes,
                "intensity": item.intensity,
                "seconds": seconds,
                "achieved": achieved,
                "roof": min(peak["flops"], item.intensity * peak["bandwidth"]),
                "bound": kind,
                "of roof": fraction,
            }
        )
    return rows


# ## Tracing a training step
#
# The roofline speaks about one operation. A model is hundreds of them, and the
# question becomes where the time of a step goes. `torch.profiler.profile` records
# every aten operator (and, with `ProfilerActivity.CUDA`, every kernel and memory copy
# on the GPU) with its start and duration, through the Kineto library. Its options:
#
# - `record_shapes=True` keeps each operator's input shapes, so that the table can
#   tell a `[512, 64] @ [64, 192]` from a `[512, 64] @ [64, 256]`;
# - `profile_memory=True` records every allocation and free;
# - `with_stack=True` keeps the Python stack of each operator, which the trace shows
#   and the memory profiler needs to tell the model's tensors apart.
#
# `record_function("forward")` marks a span of our own, which appears in the trace
# above the operators it contains. The step profiled is the *second* one: the first
# creates Adam's state and warms the allocator, and would show both as if every step
# did it.


def training_step(
    model: GPT, optimizer, tokens: Tensor, targets: Tensor, mark=record_function
) -> Tensor:
    """Zero the gradients, run forward and backward, update: one step, each phase
    labelled by `mark(name)` (`record_function` for torch.profiler,
    `torch.cuda.nvtx.range` for Nsight Systems)."""
    optimizer.zero_grad(set_to_none=True)
    with mark("forward"):
        loss = lm_loss(model(tokens), targets)
    with mark("backward"):
        loss.backward()
    with mark("optimizer"):
        optimizer.step()
    return loss


def activities(device: torch.device) -> list:
    """The profiler's activities: the CPU, and the GPU's kernels when there is one."""
    if device.type == "cuda":
        return [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    return [ProfilerActivity.CPU]


def setup_step(config: Config, batch: int, device: str = "cpu", seed: int = 0):
    """A GPT, its Adam, one batch, and one step already taken: `(model, optimizer,
    tokens, targets)`."""
    check_positive_int("batch", batch)
    torch.manual_seed(seed)
    model = GPT(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    tokens, targets = make_batch(config, batch, seed=seed, device=device)
    training_step(model, optimizer, tokens, targets)
    return model, optimizer, tokens, targets


def profile_step(config: Config, batch: int, out: Path, device: str = "cpu"):
    """Profile the second training step of `GPT(config)` on `batch` sequences; write
    the trace to `out/trace.json` and return the profiler."""
    model, optimizer, tokens, targets = setup_step(config, batch, device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with profile(
        activities=activities(torch.device(device)),
        record_shapes=True,
        profile_memory=True,
        with_stack=True,
    ) as prof:
        training_step(model, optimizer, tokens, targets)
    # A Chrome trace-event file: drop it on ui.perfetto.dev (or chrome://tracing) to
    # see the operators on a timeline, the forward, backward and optimizer spans above
    # them, and each operator's shapes and Python stack when clicked.
    prof.export_chrome_trace(str(out / "trace.json"))
    return prof


# `key_averages()` aggregates the events by operator name (and, with
# `group_by_input_shape=True`, by shapes too). *Self* time is an operator's own,
# without the operators it called; *total* includes them. Summing self times never
# counts anything twice, so the bar chart below uses self time. On a GPU the column
# that matters is the device's self time, because the CPU only launches kernels.
# `with_stack` adds a row for every Python function as well; the printed table leaves
# those out (the trace keeps them).


def self_time_key(device: str) -> str:
    """The `key_averages` field of an operator's own time: the GPU's on a GPU."""
    on_gpu = device.startswith("cuda")
    return "self_device_time_total" if on_gpu else "self_cpu_time_total"


def operator_table(prof, device: str = "cpu", rows: int = 12) -> str:
    """`key_averages().table` of the step, most self time first, without the rows
    `with_stack` adds for Python functions (they stay in the trace)."""
    key = self_time_key(device)
    events = EventList(
        [
            e
            for e in prof.key_averages()
            if ".py(" not in e.key and not e.key.startswith("<built-in")
        ]
    )
    return events.table(sort_by=key, row_limit=rows)


def top_operators(prof, device: str = "cpu", count: int = 10) -> list[tuple]:
    """The `count` aten operators with the most self time: `(name, milliseconds)`."""
    check_positive_int("count", count)
    key = self_time_key(device)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    return [(e.key, getattr(e, key) / 1000) for e in events[:count]]


# ## A TensorBoard trace on a schedule
#
# Profiling every step of a long run would slow it and produce gigabytes. A
# `schedule(wait, warmup, active)` skips `wait` steps, then profiles `warmup` steps
# and throws them away (the profiler's own start-up cost lands there), then keeps
# `active` steps. The loop tells the profiler where steps end with `prof.step()`. When
# the active steps are done, `on_trace_ready` is called:
# `tensorboard_trace_handler(folder)` writes `<host>_<pid>.<time>.pt.trace.json` into
# the folder that TensorBoard's profiler plugin reads, with one `ProfilerStep#i` span
# per kept step. (That plugin, `torch-tb-profiler`, is no longer maintained; the files
# are ordinary trace-event files and open in Perfetto as well.)


def tensorboard_trace(
    config: Config,
    batch: int,
    folder: Path,
    device: str = "cpu",
    wait: int = 1,
    warmup: int = 1,
    active: int = 2,
) -> list[Path]:
    """Train `wait + warmup + active` steps under a profiler schedule and return the
    trace files the TensorBoard handler wrote into `folder`."""
    for name, value in (("wait", wait), ("warmup", warmup)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    check_positive_int("active", active)
    model, optimizer, tokens, targets = setup_step(config, batch, device)
    with profile(
        activities=activities(torch.device(device)),
        schedule=schedule(wait=wait, warmup=warmup, active=active, repeat=1),
        on_trace_ready=tensorboard_trace_handler(str(folder)),
    ) as prof:
        for _ in range(wait + warmup + active):
            training_step(model, optimizer, tokens, targets)
            prof.step()
    return sorted(Path(folder).glob("*.pt.trace.json"))


# ## On a GPU: one timeline for the whole process, with Nsight Systems
#
# `torch.profiler` looks at the step from inside PyTorch: operators, and the kernels
# they launched. Some questions about a GPU step are about what happens between them,
# and the operator table cannot answer those. Is the GPU idle between kernels because
# one Python thread cannot launch them fast enough? A step of many short kernels, like
# this small GPT's, is usually *CPU-bound*: each launch costs the CPU a few
# microseconds, about as long as the kernel runs. Does the step stop in the middle to
# wait for the GPU, at a `loss.item()` or a `print(loss)` that synchronises? Does a
# copy between host and device sit on the critical path? NVIDIA's Nsight Systems
# [@nvidia2025nsys] draws the whole process on one time axis: each CPU thread with
# its calls into the operating system, the CUDA API calls each thread makes, and, on
# the GPU's rows, every kernel and memory copy, each linked to the call that launched
# it. A gap on the GPU's row under a busy CPU row is a launch gap; a long
# `cudaStreamSynchronize` or `cudaMemcpy` on a CPU row is a synchronisation.
#
# Nsight knows nothing of forward, backward or the optimizer, so we tell it with NVTX
# ranges (the NVIDIA Tools Extension), the counterpart of `record_function`:
# `with torch.cuda.nvtx.range("forward"):` pushes a named range on the calling thread
# when the block starts and pops it when the block ends (`torch.cuda.nvtx.range_push`
# and `range_pop` do the same by hand). Each range is a bar on its thread's NVTX row,
# above the CUDA calls made inside it. `torch.autograd.profiler.emit_nvtx()` goes
# further: while it is active, every operator autograd runs gets a range of its own,
# named after the operator, so the timeline has the operator table's detail. Those
# ranges cost time on every operator, so they are an option here (`--emit-nvtx`).
#
# The first steps are not the ones to look at (they create the CUDA context, the cuBLAS
# handles, the allocator's pool and Adam's state), and a whole run is far more than a
# profile needs. `torch.cuda.profiler.start()` and `stop()` call CUDA's
# `cudaProfilerStart` and `cudaProfilerStop`; under
# `nsys profile --capture-range=cudaProfilerApi`, Nsight records only between the two.
# With `--nvtx` the demo does only this: a few warm-up steps, then `--nvtx-steps` steps
# inside the capture range, each an NVTX range `step i` with `forward`, `backward` and
# `optimizer` nested inside. It measures and plots nothing else: `torch.profiler` and
# Nsight both collect through CUPTI, NVIDIA's profiling interface, which serves one
# subscriber at a time. The command to record the steps, which the demo prints too:
#
# ```bash
# nsys profile -t cuda,nvtx,osrt --capture-range=cudaProfilerApi \
#     --capture-range-end=stop -o gpt_step \
#     python -m annotated.research.profiling --device cuda --nvtx
# ```
#
# `-t cuda,nvtx,osrt` traces the CUDA API with its kernels and copies, the NVTX ranges,
# and the OS runtime calls (waits on locks and semaphores, sleeps); with
# `--capture-range-end=stop` the recording ends at `cudaProfilerStop`; `-o` names the
# report `gpt_step.nsys-rep`. `nsys stats gpt_step.nsys-rep` prints summary tables from
# it: time per NVTX range, per CUDA API function, per kernel and per kind of memory
# copy. The Nsight Systems GUI opens the same file as the timeline, where the step
# ranges show how long each step took and whether the GPU's row is full under them.
# Without `nsys` the flag runs all the same: nothing listens to the ranges. A CPU has
# neither NVTX nor a capture range, and `--nvtx` with `--device cpu` is an error.

NSYS_COMMAND = (
    "nsys profile -t cuda,nvtx,osrt --capture-range=cudaProfilerApi "
    "--capture-range-end=stop -o gpt_step "
    "python -m annotated.research.profiling --device cuda --nvtx"
)


def check_nvtx_device(device: str) -> None:
    """Raise unless `device` is a CUDA device, which NVTX and the capture range need."""
    if torch.device(device).type != "cuda":
        raise ValueError(
            "--nvtx needs --device cuda (NVTX ranges and the cudaProfilerApi capture "
            f"range exist only on a CUDA device), got --device {device}"
        )


def nvtx_steps(
    config: Config,
    batch: int,
    device: str = "cuda",
    warmup: int = 3,
    steps: int = 5,
    per_operator: bool = False,
) -> dict:
    """After `setup_step`'s step and `warmup` more, train `steps` steps between
    `torch.cuda.profiler.start()` and `stop()`, each in an NVTX range `step i` (and
    inside `emit_nvtx` if `per_operator`): `{"steps", "ms per step", "loss"}`."""
    check_nvtx_device(device)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    check_positive_int("steps", steps)
    model, optimizer, tokens, targets = setup_step(config, batch, device)
    for _ in range(warmup):
        training_step(model, optimizer, tokens, targets, torch.cuda.nvtx.range)
    torch.cuda.synchronize(device)
    torch.cuda.profiler.start()
    try:
        begin = time.perf_counter()
        with torch.autograd.profiler.emit_nvtx(enabled=per_operator):
            for index in range(steps):
                with torch.cuda.nvtx.range(f"step {index}"):
                    loss = training_step(
                        model, optimizer, tokens, targets, torch.cuda.nvtx.range
                    )
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - begin
    finally:
        torch.cuda.profiler.stop()
    return {"steps": steps, "ms per step": 1000 * seconds / steps, "loss": loss.item()}


# ## The memory of a step
#
# With all three options on, the profiler can replay the step's allocations and give
# every tensor a category: parameters, optimizer state, inputs, temporaries,
# activations (made in forward, used in backward), gradients, and autograd's own
# bookkeeping. `export_memory_timeline(path, device)` writes, for every moment where
# something changed, the bytes alive in each category: a list `[times, sizes]` whose
# sizes have one unused leading column and then the categories in the order of
# `_CATEGORY_TO_COLORS` in `torch/profiler/_memory_profiler.py`, unknown last. The
# test checks that order against the model's own tensors.
#
# PyTorch marks the method deprecated in favour of the CUDA allocator's snapshots,
# which exist only on a GPU; on a CPU it is the tool there is, so we silence that
# warning here and keep it.

MEMORY_CATEGORIES = (
    "parameters",
    "optimizer state",
    "inputs",
    "temporaries",
    "activations",
    "gradients",
    "autograd detail",
    "unknown",
)


def memory_timeline(prof, path: Path, device: str = "cpu") -> tuple[list, dict]:
    """Write the memory timeline JSON to `path` and return `(milliseconds, bytes by
    category)` over the profiled step."""
    memory_device = "cuda:0" if device.startswith("cuda") else "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        prof.export_memory_timeline(str(path), device=memory_device)
    times, sizes = json.loads(Path(path).read_text())
    start = times[0]
    milliseconds = [(t - start) / 1000 for t in times]
    by_category = {
        name: [row[i + 1] for row in sizes] for i, name in enumerate(MEMORY_CATEGORIES)
    }
    return milliseconds, by_category


# ### On a GPU: the allocator's snapshot
#
# CUDA's caching allocator can record the stack of every allocation it serves.
# `torch.cuda.memory._record_memory_history` switches that on, `_dump_snapshot`
# writes it as a pickle, and pytorch.org/memory_viz draws it: each live block over
# time, with the line of Python that allocated it. It is the tool for a GPU run that
# runs out of memory. There is no CPU equivalent, so this function runs only with
# `--device cuda` and this page's tests do not exercise it.


def cuda_memory_snapshot(config: Config, batch: int, path: Path) -> Path:
    """Record the CUDA allocator's history over one training step into `path`."""
    model, optimizer, tokens, targets = setup_step(config, batch, "cuda")
    torch.cuda.memory._record_memory_history(max_entries=100_000)
    training_step(model, optimizer, tokens, targets)
    torch.cuda.synchronize()
    torch.cuda.memory._dump_snapshot(str(path))
    torch.cuda.memory._record_memory_history(enabled=None)
    return Path(path)


# ## Measured against predicted
#
# [The memory chapter](../transformers/memory_analysis.md) predicts, from the
# configuration alone, the bytes of the parameters, the gradients, Adam's state
# (two moments and a step counter per tensor) and the activations autograd keeps. Its
# activation formula follows Korthikanti et al.'s count [@korthikanti2022reducing]
# term by term. We compare each with the largest the profiler saw of the matching
# category during the step. The activations are the loosest match, because the
# profiler's "activation" is any tensor made in forward and used in backward, which
# includes a few that the formula charges to no one (the loss's intermediate
# results), and some of what the formula counts is filed as autograd detail. At the
# demo's batch of 8 the profiler's activations peak at 8,048,648 bytes against the
# formula's 7,533,060: 7 % more.


def memory_against_prediction(
    by_category: dict, config: Config, batch: int
) -> dict[str, tuple[int, int]]:
    """`{part: (measured peak bytes, predicted bytes)}` for the four parts of a step."""
    predicted = breakdown(config, batch, precision="float32")
    matching = {
        "parameters": "parameters",
        "gradients": "gradients",
        "optimizer": "optimizer state",
        "activations": "activations",
    }
    return {
        part: (max(by_category[category]), predicted[part])
        for part, category in matching.items()
    }


# ## The example
#
# The model the trace profiles: a two-layer GPT of width 64 from the memory chapter,
# on two sequences of 16 tokens.

TRACED = Config(vocab_size=256, n_ctx=64, layers=2, hidden=64, heads=4)


def example():
    """A small example: `fn(*args)` is a forward pass of the traced GPT."""
    torch.manual_seed(0)
    tokens, _ = make_batch(TRACED, batch=2, seq=16)
    return GPT(TRACED), (tokens,)


# ## The demo
#
# The demo measures the machine, places the eleven operations on its roofline, and
# traces a step of the GPT. What it finds on two CPU cores with MKL (the run printed
# above is an Intel Xeon's, an earlier one an AMD EPYC's, and the exact numbers vary
# from run to run). One
# caution first: measure on an idle machine, or with `--threads 1`. When other
# programs share the cores, the threads of one multi-threaded product wait for each
# other at every barrier, and the compute-bound operations fall far below a peak that
# was measured a moment earlier.
#
# - a peak of 165–420 GFLOP/s over the two cores and a copy bandwidth of 25–50 GB/s
#   (a read and a write counted per byte copied): a ridge point of 3.5–15 FLOP/byte;
# - only `matmul`, `conv2d` and `attention` are compute-bound. The first two come
#   within a few tenths of the peak or reach it (slightly above it, at times: the peak
#   is itself a measurement, of one matrix size), because at 140–170 FLOP/byte the
#   bytes have no say;
# - `matvec` does the same arithmetic per weight as `matmul` but uses each weight once:
#   an intensity of 0.5, and it moves 20–58 GB/s, from half to twice the copy
#   bandwidth (it only reads, and a copy's writes cost more than its reads), a few
#   percent of the peak's FLOP/s. This is why generating text one token at a time is
#   limited by memory, not arithmetic;
# - the tiny `bmm 8×8` products have an intensity of 1.3 and stay under even that
#   memory roof (a fifth to two fifths of it on the EPYC, four fifths to nine tenths
#   on the Xeon): each $8 \times 8$ product is mostly bookkeeping. The benchmark in this
#   page's header times the same $2 \cdot 256^3$ FLOPs both ways on one thread, as
#   one $256 \times 256$ product and as 32,768 tiny ones: the tiny ones take ten to
#   thirteen times as long;
# - `attention` has the intensity of a matrix product in the read-once model, but its
#   unfused form writes and reads the $L \times S$ scores several times and runs a
#   softmax over them, so it stays well below its roof. Fusing it
#   (FlashAttention) is the removal of exactly that traffic;
# - the element-wise operations sit far left, and most reach only 10–30 % of their
#   roof. The reason is not arithmetic. Compare `add` with `add, out=`: the same
#   bytes, four to eight times slower. Each call of `torch.add` asks for a fresh 32 MiB
#   output; the C allocator hands blocks that large back to the operating system
#   when they are freed and maps new ones, so every 4 KiB page of the output costs a
#   page fault and a zero-fill before the add writes it. Writing into an output
#   allocated once, as `add, out=` does, runs at the copy bandwidth or above it.
#   `layernorm`, `softmax`, `gelu` and the embedding's gather allocate their outputs
#   the same way and pay the same toll. On a GPU PyTorch's caching allocator keeps
#   freed blocks for reuse, and the difference disappears.
#
# The trace of the GPT step tells a similar story at small scale: the matrix products
# lead the table, but LayerNorm's backward, the element-wise operators and Adam's
# many small updates together take more of the step than their FLOPs would suggest.


def plot_roofline(rows: list[dict], peak: dict, out: Path) -> Path:
    """The roofline with every op of nonzero intensity placed under it."""
    fig, (ax, key) = figure(panels=2, gridspec_kw={"width_ratios": [2.2, 1]})
    placed = [row for row in rows if row["intensity"] > 0]
    low = min(row["intensity"] for row in placed) / 2
    high = max(max(row["intensity"] for row in placed), peak["ridge"]) * 2
    grid = torch.logspace(math.log10(low), math.log10(high), 200).tolist()
    roof = [min(peak["flops"], i * peak["bandwidth"]) / 1e9 for i in grid]
    ax.loglog(grid, roof, color="black", label="roof: min(P, I·B)")
    ax.axvline(peak["ridge"], color="grey", linestyle="--", label="ridge point P/B")
    colors = matplotlib.colormaps["tab20"].colors
    for index, row in enumerate(placed):
        memory = row["bound"] == "memory-bound"
        ax.scatter(
            row["intensity"],
            row["achieved"] / 1e9,
            color=colors[index],
            marker="o" if memory else "s",
            zorder=3,
            label=f"{row['name']} ({'memory' if memory else 'compute'})",
        )
    ax.set_xlabel("arithmetic intensity $I$ (FLOP/byte)")
    ax.set_ylabel("achieved GFLOP/s")
    key.axis("off")
    key.legend(*ax.get_legend_handles_labels(), loc="center left", frameon=False)
    path = out / "roofline.png"
    save(
        fig,
        path,
        caption=(
            f"The measured roofline: peak {peak['flops'] / 1e9:.0f} GFLOP/s, copy "
            f"bandwidth {peak['bandwidth'] / 1e9:.1f} GB/s, ridge at "
            f"{peak['ridge']:.1f} FLOP/byte; each operation at its intensity and "
            "achieved FLOP/s, circles memory-bound, squares compute-bound."
        ),
    )
    return path


def plot_trace(top: list[tuple[str, float]], out: Path) -> Path:
    """The operators with the most self time in the profiled step."""
    fig, ax = figure()
    names = [name.removeprefix("aten::") for name, _ in reversed(top)]
    ax.barh(names, [ms for _, ms in reversed(top)], color="tab:blue")
    ax.set_xlabel("self time (ms)")
    path = out / "trace_top_ops.png"
    save(
        fig,
        path,
        caption=(
            "Self time of the aten operators that took longest in one profiled "
            "training step of the two-layer GPT, from torch.profiler's key_averages."
        ),
    )
    return path


def plot_memory(
    milliseconds: list, by_category: dict, compared: dict, out: Path
) -> Path:
    """The memory of the step over time by category, and the peaks against the
    memory chapter's formulas."""
    fig, (left, right) = figure(panels=2)
    shown = [name for name in MEMORY_CATEGORIES if max(by_category[name]) > 0]
    left.stackplot(
        milliseconds,
        *[[b / 2**20 for b in by_category[name]] for name in shown],
        labels=shown,
        step="post",
    )
    left.set_xlabel("time in the step (ms)")
    left.set_ylabel("live memory (MiB)")
    top = max(map(sum, zip(*(by_category[name] for name in shown))))
    left.set_ylim(0, 1.6 * top / 2**20)  # room for the legend above the peak
    left.legend(loc="upper center", ncols=2, fontsize="small")
    parts = list(compared)
    x = torch.arange(len(parts)).tolist()
    right.bar(
        [i - 0.2 for i in x],
        [compared[p][0] / 2**20 for p in parts],
        0.4,
        label="profiler, peak",
    )
    right.bar(
        [i + 0.2 for i in x],
        [compared[p][1] / 2**20 for p in parts],
        0.4,
        label="formula",
    )
    right.set_xticks(x, parts)
    right.set_ylabel("MiB")
    right.legend()
    path = out / "memory.png"
    save(
        fig,
        path,
        caption=(
            "Left: live memory during one training step of the GPT by the profiler's "
            "categories. Right: each category's peak against the memory chapter's "
            "formula for the same model and batch."
        ),
    )
    return path


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Measure the machine, draw the roofline, trace and profile a GPT step; with
    `--nvtx`, only train a few steps for Nsight Systems to record."""
    parser = argparse.ArgumentParser(
        description="Roofline of the earlier chapters' operations, and a profiled "
        "GPT training step.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--n", type=integer(at_least=1), default=1024, help="width that sizes the ops"
    )
    parser.add_argument(
        "--peak-size",
        type=integer(at_least=1),
        default=2048,
        help="matrix size of the peak matmul",
    )
    parser.add_argument(
        "--copy-elements",
        type=integer(at_least=1),
        default=1 << 25,
        help="float32 elements copied to measure bandwidth",
    )
    parser.add_argument(
        "--min-run-time",
        type=number(above=0),
        default=0.3,
        help="seconds of timing per op",
    )
    parser.add_argument(
        "--batch", type=integer(at_least=1), default=8, help="GPT step's batch"
    )
    parser.add_argument(
        "--threads",
        type=integer(at_least=1),
        default=torch.get_num_threads(),
        help="CPU threads for torch (and so for every measurement)",
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to measure and profile",
    )
    parser.add_argument("--out", default="out/profiling", help="figure folder")
    parser.add_argument(
        "--nvtx",
        action="store_true",
        help="only train a few steps in NVTX ranges inside a cudaProfilerApi capture "
        "range, for nsys (needs --device cuda)",
    )
    parser.add_argument(
        "--nvtx-steps",
        type=integer(at_least=1),
        default=5,
        help="with --nvtx: steps to capture",
    )
    parser.add_argument(
        "--emit-nvtx",
        action="store_true",
        help="with --nvtx: one more NVTX range per operator (emit_nvtx)",
    )
    args = parser.parse_args(argv)
    if args.nvtx and torch.device(args.device).type != "cuda":
        parser.error(f"--nvtx needs --device cuda, got --device {args.device}")
    torch.set_num_threads(args.threads)
    if args.nvtx:
        timed = nvtx_steps(
            TRACED,
            args.batch,
            args.device,
            steps=args.nvtx_steps,
            per_operator=args.emit_nvtx,
        )
        changed = "".join(
            f" --{name.replace('_', '-')} {value}"
            for name, value in (("batch", args.batch), ("nvtx_steps", args.nvtx_steps))
            if value != parser.get_default(name)
        )
        command = NSYS_COMMAND + changed + (" --emit-nvtx" if args.emit_nvtx else "")
        print(
            f"{timed['steps']} steps in NVTX ranges inside the capture range: "
            f"{timed['ms per step']:.2f} ms per step\n"
            f"record them with\n  {command}\nthen read the report with "
            "`nsys stats gpt_step.nsys-rep`, or open it in the Nsight Systems GUI"
        )
        return {"nvtx steps": timed["steps"], "ms per step": timed["ms per step"]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    peak = machine_peak(
        args.device, args.peak_size, args.copy_elements, args.min_run_time
    )
    rows = roofline(make_ops(args.n, args.device), peak, args.min_run_time)
    plot_roofline(rows, peak, out)

    prof = profile_step(TRACED, args.batch, out, args.device)
    print(operator_table(prof, args.device, rows=8))
    plot_trace(top_operators(prof, args.device), out)
    milliseconds, by_category = memory_timeline(prof, out / "memory.json", args.device)
    compared = memory_against_prediction(by_category, TRACED, args.batch)
    plot_memory(milliseconds, by_category, compared, out)
    traces = tensorboard_trace(TRACED, args.batch, out / "tensorboard", args.device)
    print(f"trace: {out / 'trace.json'}; TensorBoard: {traces[-1]}")
    if args.device.startswith("cuda"):
        snapshot = cuda_memory_snapshot(TRACED, args.batch, out / "snapshot.pickle")
        print(f"CUDA memory snapshot: {snapshot} (open it at pytorch.org/memory_viz)")

    # The summary comes last, where the page's copy of the output shows it.
    for part, (measured, predicted) in compared.items():
        print(f"{part:11s} profiler {measured:>9,d} B   formula {predicted:>9,d} B")
    print(f"machine: {peak['blas']}")
    print(
        f"peak {peak['flops'] / 1e9:.1f} GFLOP/s, bandwidth "
        f"{peak['bandwidth'] / 1e9:.2f} GB/s, ridge {peak['ridge']:.2f} FLOP/byte"
    )
    header = f"{'op':10s} {'I FLOP/B':>9s} {'GFLOP/s':>9s} {'GB/s':>7s}  bound"
    print(header + "         of roof")
    for row in rows:
        print(
            f"{row['name']:10s} {row['intensity']:9.2f} {row['achieved'] / 1e9:9.2f} "
            f"{row['bytes'] / row['seconds'] / 1e9:7.2f}  {row['bound']:13s} "
            f"{row['of roof']:.0%}"
        )

    result = {
        "peak FLOP/s": peak["flops"],
        "bandwidth B/s": peak["bandwidth"],
        "ridge FLOP/B": peak["ridge"],
    }
    for row in rows:
        result[f"{row['name']} intensity"] = row["intensity"]
        result[f"{row['name']} FLOP/s"] = row["achieved"]
    return result


if __name__ == "__main__":
    main()

# ## Exercises
#
# 1. Run the demo with `torch.set_num_threads(1)` at the top. Which of the two roofs
#    moves more, and what happens to the ridge point and to the classification of
#    `conv2d`?
# 2. Add `x @ W` in bfloat16 to `make_ops`. Its intensity doubles (half the bytes for
#    the same FLOPs); does it reach twice the float32 FLOP/s on your CPU? Measure the
#    bfloat16 peak with `machine_peak` changed to take a dtype.
# 3. Replace the attention by `F.scaled_dot_product_attention` and place it on the
#    roofline. With `make_ops`'s 3-D q, k, v (`[16, n/4, 64]`) a CPU runs the unfused
#    math path, and the counter counts the hand formula; viewed as 4-D
#    `[1, 16, n/4, 64]` they run the fused CPU kernel, which the counter does not know
#    (it says zero: use the hand-counted FLOPs). How far does the fused kernel move the
#    attention towards its roof, compared with the math path?
# 4. Profile the step with `group_by_input_shape=True` in `key_averages` and find the
#    single most expensive `aten::mm` by shape. Which layer of the GPT does it belong
#    to, and is it forward or backward?
