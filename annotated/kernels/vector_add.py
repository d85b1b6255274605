r"""
---
title: "Triton's programming model: adding two vectors"
summary: >-
  Programs, blocks, masks and pointers: the smallest Triton kernel, a vector add,
  checked bit for bit against torch.add in Triton's interpreter, and on a GPU measured
  against the bandwidth of a plain copy, because 12 bytes per float32 element and one
  addition make it a pure memory-traffic problem.
time: 3 s
references:
  - key: tillet2019triton
    authors: [Philippe Tillet, H. T. Kung, David Cox]
    title: "Triton: An Intermediate Language and Compiler for Tiled Neural Network
      Computations"
    year: 2019
    venue: MAPL 2019
    url: https://doi.org/10.1145/3315508.3329973
  - key: williams2009roofline
    authors: [Samuel Williams, Andrew Waterman, David Patterson]
    title: "Roofline: An Insightful Visual Performance Model for Multicore
      Architectures"
    year: 2009
    venue: Communications of the ACM 52(4)
    url: https://doi.org/10.1145/1498765.1498785
  - key: triton2024tutorials
    authors: [The Triton authors]
    title: "Tutorials: Vector Addition"
    year: 2024
    venue: Triton documentation
    url: https://triton-lang.org/main/getting-started/tutorials/01-vector-add.html
worksheet:
  - region: add_kernel
    hint: >-
      Each program takes the block of BLOCK offsets that starts at its program id
      times BLOCK, masks off the lanes past n_elements, loads x and y at those offsets,
      and stores their sum at the same offsets of out, under the same mask.
    tests:
      - test_masked_lanes_touch_nothing_past_the_end
      - test_add_matches_torch_add_bit_for_bit
      - test_int32_wraps_around_like_torch
---

`z = x + y` is the smallest kernel there is, and the right one to learn a GPU
language on, because nothing in it is hard except the machine. Each element costs one
addition and twelve bytes of memory traffic in float32 (read 4, read 4, write 4), so
the arithmetic is free and the time is the bytes divided by the memory's bandwidth.
The only question a vector add can answer is how close a kernel gets to that
bandwidth.

Triton [@tillet2019triton] is a language, embedded in Python, for writing GPU kernels
a *block* at a time instead of a thread at a time. This chapter writes the add the way
Triton's first tutorial does [@triton2024tutorials] and names every piece of the
programming model on the way: the *program* and its `tl.program_id`, the block of
offsets `tl.arange` makes, the *mask* that switches off the lanes past the ragged end,
pointers and `tl.load` / `tl.store`, and the launch *grid* that `triton.cdiv` sizes.
On a CPU the same kernel runs in Triton's interpreter and is checked against
`torch.add` to the last bit; on a GPU `gpu_report` measures its bandwidth at $2^{28}$
elements against a device-to-device copy, the ceiling for anything that only streams
memory. The [fused softmax](softmax.md) builds on every piece of it.
"""

import argparse
import os
from pathlib import Path

import torch
from matplotlib.patches import Rectangle
from torch import Tensor
from tqdm import tqdm

from annotated.data import integer, torch_device
from annotated.figures import figure, save

# Triton compiles a kernel for the GPU when it is first launched. Without a GPU it can
# run the same kernel in its *interpreter*, which executes each program with NumPy on
# the CPU: slow, but exact enough to test against PyTorch. The switch is the variable
# `TRITON_INTERPRET`, and Triton reads it while it is being imported, so it has to be
# set before `import triton`, and only when there is no GPU to compile for.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

# ## Why a vector add is memory-bound
#
# Adding two float32 vectors of $n$ elements reads $4n + 4n$ bytes, writes $4n$, and
# does $n$ additions. Its *arithmetic intensity*, operations per byte of memory
# traffic, is
#
# $$
# I = \frac{n \text{ FLOP}}{12 n \text{ bytes}} = \tfrac{1}{12}
# \text{ FLOP/byte}
# $$
#
# in float32, and $\tfrac16$ in float16 (6 bytes an element). The roofline model
# [@williams2009roofline] says a kernel runs at most at $\min(P, I \cdot B)$
# operations a second on a machine that computes $P$ and moves $B$ bytes a second. An
# H200's datasheet gives about 67 TFLOP/s of float32 arithmetic and 4.8 TB/s: the two
# limits meet at $67 / 4.8 \approx 14$ FLOP/byte, and the add sits 170 times to the
# left of that line. Its speed is the memory's: $2^{28}$ float32 elements are 3 GiB of
# traffic, at least 0.67 ms at 4.8 TB/s, during which the arithmetic units could have
# done 45 billion additions instead of 268 million.
#
# So the only figure of merit is bandwidth, and the honest ceiling is not the
# datasheet's but what the simplest possible streaming kernel reaches: a
# device-to-device copy, which moves about 85–90 % of the datasheet figure. A vector
# add that moves its 12 bytes an element as fast as a copy moves its 8 is as fast as
# the machine allows.
#
# ## The operation in plain PyTorch
#
# The reference the kernel is checked against, and the version it competes with:
# `torch.add` launches one CUDA kernel that does exactly this traffic.


def add_reference(x: Tensor, y: Tensor) -> Tensor:
    """`x + y`, elementwise, by PyTorch."""
    return torch.add(x, y)


def traffic(n_elements: int, dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """The bytes a vector add of `n_elements` must move, its additions, and their
    ratio."""
    moved = 3 * n_elements * dtype.itemsize  # read x, read y, write z
    return {
        "bytes": moved,
        "FLOP": n_elements,
        "FLOP per byte": n_elements / moved if moved else 0.0,
    }


# ## Programs and blocks
#
# A CUDA kernel is written for one thread, and the programmer arranges threads into
# blocks and warps. A Triton kernel is written for one *program*: one instance of the
# function that works on a whole block of data at once, with `tl` operations on
# blocks the way NumPy works on arrays. The compiler decides how the block is spread
# over the threads of the program's warps (`num_warps`, four by default), keeps it in
# registers, and makes the loads wide and coalesced. What is left to the programmer
# is the part that matters for memory traffic: which program touches which bytes.
#
# A launch runs a *grid* of programs, and each asks `tl.program_id(0)` which one it
# is. Program $p$ with a block of `BLOCK` elements owns the offsets
#
# $$
# p \cdot \text{BLOCK} + [0, 1, \ldots, \text{BLOCK} - 1],
# $$
#
# a block made by `tl.arange(0, BLOCK)` (`BLOCK` must be a power of two and known when
# the kernel is compiled: a `tl.constexpr`). The grid has
# $\lceil n / \text{BLOCK} \rceil$ programs, `triton.cdiv(n, BLOCK)`, so unless
# `BLOCK` divides $n$ the last program's block runs past the end. A *mask*,
# `offsets < n`, turns those lanes off: a masked `tl.load` reads nothing there (and
# returns `other`, if given) and a masked `tl.store` writes nothing. Without it the
# last program would read and write memory that belongs to someone else.
#
# This first kernel shows only that arithmetic: each program stores its own id into
# the elements it owns. Running it draws the map in this page's figure, and the test
# checks the map against $\lfloor i / \text{BLOCK} \rfloor$.


@triton.jit
def program_map_kernel(owner_ptr, n_elements, BLOCK: tl.constexpr):
    program = tl.program_id(0)
    offsets = program * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    mask = offsets < n_elements
    owner = tl.zeros([BLOCK], dtype=tl.int32) + program  # the id, once per lane
    tl.store(owner_ptr + offsets, owner, mask=mask)


# ## Pointers, loads and stores
#
# A tensor reaches a kernel as a *pointer* to its first element, typed by its dtype:
# `x_ptr + offsets` is a block of `BLOCK` pointers, one per element, and
# `tl.load(x_ptr + offsets, mask=mask)` reads them all. Pointer arithmetic counts
# elements, not bytes, as in C. Nothing knows the tensor's shape or strides: the
# kernel sees flat memory, which is why the wrapper below insists on contiguous
# tensors. The add itself is one line; the rest is addressing.
#
# Each program reads `BLOCK` consecutive elements of `x` and of `y` and writes
# `BLOCK` consecutive elements of `z`: neighbouring lanes touch neighbouring
# addresses, so a warp's 32 loads are served by a few wide memory transactions. Every
# byte crosses the memory bus exactly once.


@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n_elements, BLOCK: tl.constexpr):
    program = tl.program_id(0)
    offsets = program * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    mask = offsets < n_elements  # off past the ragged end
    x = tl.load(x_ptr + offsets, mask=mask)  # [BLOCK]
    y = tl.load(y_ptr + offsets, mask=mask)  # [BLOCK]
    tl.store(out_ptr + offsets, x + y, mask=mask)


# ## Launching
#
# `kernel[grid](args...)` compiles the kernel for the arguments' dtypes and the
# `constexpr` values on first use, caches the binary, and launches `grid` programs.
# Tensors become pointers; Python ints become scalars. A block of 1024 elements over
# the default four warps (128 threads) gives each thread eight elements, enough for
# 16-byte loads; the launch grid then has $\lceil n / 1024 \rceil$ programs, 262,144
# of them at $2^{28}$ elements, far more than the GPU's 132 multiprocessors can run at
# once, which is what lets it hide the memory's latency.
#
# Three details the kernel cannot check for itself, so the wrapper does, before
# anything runs. Offsets are 32-bit integers: $n$ must stay below $2^{31}$ (a larger
# add would need `program.to(tl.int64)`). An empty tensor gets no launch at all, since
# a grid of zero programs is not a launch. And the interpreter has no NumPy type for
# bfloat16: in Triton 3.9 it adds the raw bits as if they were another type and
# returns garbage, so bfloat16 is refused there and checked on a GPU only, where the
# compiled kernel adds it correctly. (A compiled kernel also needs its tensors on the
# GPU: a CPU tensor's pointer means nothing there.)

# In the interpreter, set by `TRITON_INTERPRET=1` above or by the caller.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

DTYPES = (
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.int32,
    torch.int64,
)


def check_block_size(function: str, block_size: object) -> None:
    """Raise unless `block_size` is a power of two."""
    if (
        isinstance(block_size, bool)
        or not isinstance(block_size, int)
        or block_size < 1
        or block_size != triton.next_power_of_2(block_size)
    ):
        raise ValueError(
            f"{function}: block_size must be a power of two, got {block_size!r}"
        )


def check_operands(function: str, x: object, y: object) -> None:
    """Raise unless `x` and `y` are contiguous tensors of one supported dtype, shape
    and device."""
    for name, value in (("x", x), ("y", y)):
        if not isinstance(value, Tensor):
            raise TypeError(
                f"{function}: {name} must be a torch.Tensor, got {type(value).__name__}"
            )
        if value.dtype not in DTYPES:
            names = ", ".join(str(d).removeprefix("torch.") for d in DTYPES)
            raise TypeError(
                f"{function}: {name} must be one of {names}, got {value.dtype}"
            )
        if not value.is_contiguous():
            raise ValueError(
                f"{function}: {name} must be contiguous (the kernel reads it as flat "
                f"memory), got strides {value.stride()}: pass {name}.contiguous()"
            )
    if x.dtype != y.dtype:
        raise TypeError(
            f"{function}: x is {x.dtype} but y is {y.dtype}; the kernel does not "
            "promote types, convert one first"
        )
    if x.shape != y.shape:
        raise ValueError(
            f"{function}: x has shape {tuple(x.shape)} but y {tuple(y.shape)}; the "
            "kernel does not broadcast"
        )
    if x.device != y.device:
        raise ValueError(f"{function}: x is on {x.device} but y on {y.device}")
    if x.numel() >= 2**31:
        raise ValueError(
            f"{function}: x has {x.numel()} elements; the kernel indexes with 32-bit "
            "integers, so at most 2**31 - 1"
        )
    if INTERPRETED and x.dtype == torch.bfloat16:
        raise TypeError(
            f"{function}: x is bfloat16, which Triton's interpreter adds wrongly; "
            "run on a GPU, or convert to float32 first"
        )
    if not INTERPRETED and x.device.type != "cuda":
        raise ValueError(
            f"{function}: x is on {x.device}, but the compiled kernel runs on a CUDA "
            "GPU (set TRITON_INTERPRET=1 before importing triton to run on the CPU)"
        )


def add(x: Tensor, y: Tensor, *, block_size: int = 1024) -> Tensor:
    """`x + y` by `add_kernel`: one program per block of `block_size` elements."""
    check_block_size("add", block_size)
    check_operands("add", x, y)
    out = torch.empty_like(x)
    n_elements = x.numel()
    if n_elements == 0:
        return out
    grid = (triton.cdiv(n_elements, block_size),)
    add_kernel[grid](x, y, out, n_elements, BLOCK=block_size)
    return out


def program_map(n_elements: int, block_size: int, device: str = "cpu") -> Tensor:
    """Which program of an add's launch owns each of `n_elements` elements, as written
    by the programs themselves: `[n_elements]` int32."""
    if (
        isinstance(n_elements, bool)
        or not isinstance(n_elements, int)
        or n_elements < 1
    ):
        raise ValueError(
            f"program_map: n_elements must be an int >= 1, got {n_elements!r}"
        )
    check_block_size("program_map", block_size)
    owner = torch.full((n_elements,), -1, dtype=torch.int32, device=device)
    grid = (triton.cdiv(n_elements, block_size),)
    program_map_kernel[grid](owner, n_elements, BLOCK=block_size)
    return owner


# ## Measuring on a GPU
#
# `gpu_report` times the kernel and `torch.add` with `triton.testing.do_bench`, which
# runs a function for about 100 ms after a warm-up, clears the L2 cache before every
# run so that each one reads from memory, and here returns the median. The bytes
# counted above divided by the time give the bandwidth; divided by the bandwidth of a
# 1 GiB device-to-device copy (read and write both counted), measured in the same
# call, they give the fraction of the practical ceiling. `"ours / torch"` is a speed
# ratio: above 1, ours is faster. The default size is $2^{28}$ float32 elements,
# 1 GiB a tensor, 3 GiB of traffic, far beyond the 50 MB L2 cache of an H200.


def copy_bandwidth() -> float:
    """GB/s of a 1 GiB device-to-device copy, read and write both counted."""
    source = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    ms = triton.testing.do_bench(lambda: target.copy_(source), return_mode="median")
    return 2 * source.nbytes / ms / 1e6


def gpu_report(
    n_elements: int = 2**28, dtype: torch.dtype = torch.float32, block_size: int = 1024
) -> dict[str, float | str]:
    """Time (µs) and bandwidth (GB/s) of `add` and `torch.add` on the current CUDA
    device, against a device-to-device copy."""
    if not torch.cuda.is_available():
        raise RuntimeError("gpu_report needs a CUDA GPU: do_bench times CUDA events")
    if dtype not in DTYPES:
        raise TypeError(f"gpu_report: dtype must be one of {DTYPES}, got {dtype}")
    device = torch.device("cuda")
    if dtype.is_floating_point:
        x = torch.randn(n_elements, device=device, dtype=dtype)
        y = torch.randn(n_elements, device=device, dtype=dtype)
    else:
        x = torch.randint(-1000, 1000, (n_elements,), device=device, dtype=dtype)
        y = torch.randint(-1000, 1000, (n_elements,), device=device, dtype=dtype)
    torch.testing.assert_close(add(x, y, block_size=block_size), torch.add(x, y))
    ours_ms = triton.testing.do_bench(
        lambda: add(x, y, block_size=block_size), return_mode="median"
    )
    torch_ms = triton.testing.do_bench(lambda: torch.add(x, y), return_mode="median")
    moved = traffic(n_elements, dtype)["bytes"]
    copy_gbps = copy_bandwidth()
    ours_gbps, torch_gbps = moved / ours_ms / 1e6, moved / torch_ms / 1e6
    return {
        "device": torch.cuda.get_device_name(),
        "elements": n_elements,
        "dtype": str(dtype).removeprefix("torch."),
        "block": block_size,
        "ours µs": ours_ms * 1e3,
        "torch µs": torch_ms * 1e3,
        "ours GB/s": ours_gbps,
        "torch GB/s": torch_gbps,
        "copy GB/s": copy_gbps,
        "ours of copy": ours_gbps / copy_gbps,
        "torch of copy": torch_gbps / copy_gbps,
        "ours / torch": torch_ms / ours_ms,
    }


# ## The example
#
# One add of 1,000 float32 elements in blocks of 1024, the kernel's default: one
# program, 24 of its lanes masked off. The dataflow diagram above is declared by
# `dataflow` below, not traced: `torch.fx` cannot look inside a Triton kernel, and the
# point of the picture is what crosses memory: two reads and one write.


def example():
    """A small example: `fn(*args)` adds two float32 vectors of 1,000 elements."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1000, generator=generator)
    y = torch.randn(1000, generator=generator)
    return add, (x, y)


def dataflow(output: Tensor):
    """The two inputs, the one kernel launch and the output, with shapes and the
    launch grid."""
    n = output.numel()
    shape = f"[{n}]"
    programs = triton.cdiv(n, 1024)
    nodes = [
        ("x", "x (memory)"),
        ("y", "y (memory)"),
        ("kernel", f"add_kernel\n{programs} program(s) × BLOCK 1024"),
        ("z", "z (memory)"),
    ]
    edges = [
        ("x", "kernel", f"{shape}, read once"),
        ("y", "kernel", f"{shape}, read once"),
        ("kernel", "z", f"{shape}, written once"),
    ]
    return nodes, edges


# ## The demo
#
# On a CPU the kernel runs in the interpreter, one program at a time, so the demo
# keeps to small sizes: it adds vectors of 1, 1,023, 1,024 and 100,003 elements (one
# element; one short of a block; exactly one block; 98 blocks with a ragged end) and
# counts the elements that differ from `torch.add`. Addition of two floats is
# correctly rounded in IEEE arithmetic, so the kernel and PyTorch must agree bit for
# bit: the count is 0. It draws which program owns which element for a ragged launch,
# and the add's place on the roofline. With `--device cuda` the kernel is compiled and
# the demo also prints `gpu_report` at `--report-size` elements.


def plot_launch(owner: Tensor, block_size: int, out: Path) -> None:
    """The program map of a ragged launch and the add on an H200's roofline."""
    fig, (grid_axis, roof_axis) = figure(panels=2)
    n_elements = owner.numel()
    programs = triton.cdiv(n_elements, block_size)
    colours = [f"C{p % 10}" for p in range(programs)]
    for lane in range(programs * block_size):
        program, column = divmod(lane, block_size)
        masked = lane >= n_elements
        grid_axis.add_patch(
            Rectangle(
                (column, program),
                1,
                1,
                facecolor="white" if masked else colours[int(owner[lane])],
                edgecolor="grey",
                hatch="//" if masked else None,
                alpha=1.0 if masked else 0.55,
            )
        )
        if not masked:
            grid_axis.text(
                column + 0.5, program + 0.5, str(lane), ha="center", va="center"
            )
    grid_axis.set_xlim(0, block_size)
    grid_axis.set_ylim(programs, 0)
    grid_axis.set_xticks([c + 0.5 for c in range(block_size)], range(block_size))
    grid_axis.set_yticks([p + 0.5 for p in range(programs)], range(programs))
    grid_axis.set(
        xlabel="lane: tl.arange(0, BLOCK)",
        ylabel="program: tl.program_id(0)",
        title=f"n = {n_elements}, BLOCK = {block_size}: "
        f"{programs} programs, {programs * block_size - n_elements} lanes masked",
    )
    grid_axis.tick_params(length=0)

    bandwidth, peak = 4.8e12, 67e12  # H200 datasheet: bytes/s, float32 FLOP/s
    intensities = torch.logspace(-5, 7, 200, base=2.0)
    roof = torch.minimum(intensities * bandwidth, torch.tensor(peak)) / 1e12
    roof_axis.plot(intensities, roof, color="black", label="roof: min(P, I·B)")
    for dtype, marker in ((torch.float32, "o"), (torch.float16, "s")):
        intensity = traffic(1, dtype)["FLOP per byte"]
        roof_axis.plot(
            [intensity],
            [intensity * bandwidth / 1e12],
            marker,
            markersize=9,
            label=f"vector add, {str(dtype).removeprefix('torch.')}: "
            f"I = 1/{round(1 / intensity)}",
        )
    roof_axis.axvline(peak / bandwidth, color="grey", linestyle=":")
    roof_axis.set(
        xscale="log",
        yscale="log",
        xlabel="arithmetic intensity $I$ (FLOP/byte)",
        ylabel="attainable TFLOP/s",
        title="H200 datasheet roofline",
    )
    roof_axis.legend(loc="upper left")
    save(
        fig,
        out / "launch.png",
        caption=f"Left: which program owns which element when {n_elements} elements "
        f"are added in blocks of {block_size}, as the programs of program_map_kernel "
        f"wrote it (hatched: lanes of the last block that the mask switches off). "
        "Right: a count, not a measurement: the vector add's arithmetic intensity "
        "(1 addition per 12 bytes in float32, per 6 in float16) on a roofline drawn "
        "from an H200's datasheet figures (4.8 TB/s, 67 TFLOP/s of float32).",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description="Triton's vector add: check it against torch.add, draw its "
        "launch, and on a GPU measure its bandwidth.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--sizes",
        type=integer(at_least=0),
        nargs="+",
        default=[1, 1023, 1024, 100_003],
        help="vector lengths checked against torch.add",
    )
    parser.add_argument(
        "--block-size", type=integer(at_least=1), default=1024, help="BLOCK of add"
    )
    parser.add_argument(
        "--map-size",
        type=integer(at_least=1),
        default=37,
        help="elements in the drawn launch",
    )
    parser.add_argument(
        "--map-block",
        type=integer(at_least=1),
        default=8,
        help="BLOCK of the drawn launch",
    )
    parser.add_argument(
        "--report-size",
        type=integer(at_least=1),
        default=2**28,
        help="elements gpu_report measures (GPU only)",
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (cpu runs the kernel in Triton's interpreter)",
    )
    parser.add_argument("--out", default="out/vector_add", help="folder for figures")
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(args.seed)
    out = Path(args.out)

    mismatched = 0
    for n in tqdm(args.sizes, desc="checking against torch.add", leave=False):
        x = torch.randn(n, generator=generator).to(args.device)
        y = torch.randn(n, generator=generator).to(args.device)
        ours = add(x, y, block_size=args.block_size)
        differing = int((ours != torch.add(x, y)).sum())
        mismatched += differing
        programs = triton.cdiv(n, args.block_size)
        tqdm.write(
            f"n = {n:>9,}: {programs:>6,} programs, "
            f"{programs * args.block_size - n:>5} lanes masked, "
            f"{differing} elements differ from torch.add"
        )
    counted = traffic(1)
    print(
        f"float32: {counted['bytes']} bytes and {counted['FLOP']} FLOP an element, "
        f"arithmetic intensity 1/{round(1 / counted['FLOP per byte'])} FLOP/byte"
    )
    owner = program_map(args.map_size, args.map_block, args.device).cpu()
    plot_launch(owner, args.map_block, out)
    metrics = {
        "elements differing from torch.add": mismatched,
        "FLOP per byte": counted["FLOP per byte"],
    }
    if args.device.startswith("cuda"):
        report = gpu_report(args.report_size, block_size=args.block_size)
        print(
            f"\n{report['device']}, {report['elements']:,} float32 elements: "
            f"ours {report['ours µs']:.0f} µs ({report['ours GB/s']:.0f} GB/s, "
            f"{report['ours of copy']:.0%} of copy), torch.add "
            f"{report['torch µs']:.0f} µs ({report['torch GB/s']:.0f} GB/s), "
            f"copy {report['copy GB/s']:.0f} GB/s"
        )
        metrics.update({f"gpu {k}": v for k, v in report.items() if k != "device"})
    return metrics


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Launch `add` with `block_size` 64, 256, 1024 and 4096, and with `num_warps` 1, 4
#    and 8 (`add_kernel[grid](..., num_warps=8)`), and run `gpu_report` for each.
#    Which settings fall short of the copy's bandwidth, and why does a small block
#    with many warps waste most of its threads?
# 2. Make the kernel index with 64-bit offsets (`program.to(tl.int64)`), add
#    `torch.int8` to `DTYPES`, lift the $2^{31}$ limit in `check_operands`, and add
#    two vectors of $2^{31} + 5$ int8 elements on a GPU. What does the 32-bit version
#    do at that size without the check?
# 3. Write `axpy_kernel` for $z = a x + y$ with a scalar $a$. What is its arithmetic
#    intensity in float32, and should `gpu_report` show it any slower than the add?
# 4. Remove the mask and run the tests in the interpreter. Which sizes fail, and what
#    would the unmasked kernel do on a GPU instead?
