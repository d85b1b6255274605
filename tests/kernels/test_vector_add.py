"""Verified against torch.add bit for bit (tolerance 0: both round each sum once, as
IEEE arithmetic requires) in every supported dtype, in Triton's interpreter on a CPU
and compiled on a GPU.

The sizes are the launch's edge cases: one element, one short of a block, exactly a
block, one past it, a ragged last block, an empty tensor; the values include
infinities, NaN, float16 overflow and int32 wrap-around. The masked lanes are checked
not to touch memory past the end, the program map against floor(i / BLOCK), the
counted traffic against the prose, and the demo on a short run.
"""

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

import triton  # noqa: E402

from annotated.kernels import vector_add  # noqa: E402
from annotated.kernels.vector_add import (  # noqa: E402
    DTYPES,
    add,
    add_kernel,
    add_reference,
    dataflow,
    example,
    gpu_report,
    main,
    program_map,
    traffic,
)
from tools.fake_cuda import fake_cuda  # noqa: E402

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# conftest.py sets TRITON_INTERPRET=1 unless it is set already, so by default the
# kernels run in the interpreter on CPU tensors, GPU or not. With TRITON_INTERPRET=0 on
# a GPU they are compiled, and every test below runs on the GPU instead.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu"


def operands(shape, dtype, seed=0, scale=1.0):
    shape = (shape,) if isinstance(shape, int) else shape
    generator = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        x = scale * torch.randn(shape, generator=generator, dtype=torch.float64)
        y = scale * torch.randn(shape, generator=generator, dtype=torch.float64)
    else:
        info = torch.iinfo(dtype)
        x = torch.randint(info.min, info.max, shape, generator=generator, dtype=dtype)
        y = torch.randint(info.min, info.max, shape, generator=generator, dtype=dtype)
    return x.to(DEVICE, dtype), y.to(DEVICE, dtype)


def assert_bitwise_equal(ours, reference):
    assert ours.dtype == reference.dtype and ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, rtol=0, atol=0, equal_nan=True)


# ---------------------------------------------------------------- the add


def test_masked_lanes_touch_nothing_past_the_end():
    # First in the file, since a kernel that writes past its tensors can crash the
    # interpreter in a later test instead of failing this one. Called directly on
    # larger buffers: the lanes past n must leave the output's neighbours alone.
    n, block = 13, 8
    x, y = operands(n + block, torch.float32)
    out = torch.full((n + block,), -7.0, device=DEVICE)
    add_kernel[(triton.cdiv(n, block),)](x, y, out, n, BLOCK=block)
    assert_bitwise_equal(out[:n], torch.add(x[:n], y[:n]))
    assert torch.all(out[n:] == -7.0)


# The interpreter mis-adds bfloat16 (the lesson refuses it there); on a GPU it is in.
RUNNABLE = [d for d in DTYPES if not (INTERPRETED and d == torch.bfloat16)]


@pytest.mark.parametrize("n", [1, 1023, 1024, 1025, 3 * 1024 + 7])
@pytest.mark.parametrize("dtype", RUNNABLE, ids=str)
def test_add_matches_torch_add_bit_for_bit(n, dtype):
    x, y = operands(n, dtype)
    assert_bitwise_equal(add(x, y), add_reference(x, y))


# The interpreter runs each program in Python, so the grid stays small: at most 900
# elements in blocks of at least 8 is at most 113 programs.
@settings(max_examples=15)
@given(
    shape=st.lists(st.integers(0, 30), min_size=1, max_size=2),
    block_size=st.sampled_from([8, 16, 64, 1024]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.int64]),
    seed=st.integers(0, 2**16),
)
def test_add_matches_torch_add_on_random_shapes(shape, block_size, dtype, seed):
    x, y = operands(tuple(shape), dtype, seed=seed)
    assert_bitwise_equal(add(x, y, block_size=block_size), torch.add(x, y))


@pytest.mark.filterwarnings("ignore:overflow encountered")  # NumPy, in the interpreter
def test_extreme_values_round_like_torch():
    special = [float("inf"), -float("inf"), float("nan"), 65504.0, -0.0, 1e-8]
    x = torch.tensor(special, device=DEVICE)
    y = torch.tensor([-float("inf"), -float("inf"), 1.0, 65504.0, 0.0, 1e-8])
    y = y.to(DEVICE)
    for dtype in (torch.float32, torch.float16):
        ours = add(x.to(dtype), y.to(dtype))
        assert_bitwise_equal(ours, torch.add(x.to(dtype), y.to(dtype)))
    assert torch.isinf(add(x.half(), y.half())[3])  # 65504 + 65504 overflows float16


def test_int32_wraps_around_like_torch():
    x = torch.tensor([2**31 - 1, -(2**31)], dtype=torch.int32, device=DEVICE)
    y = torch.tensor([1, -1], dtype=torch.int32, device=DEVICE)
    assert_bitwise_equal(add(x, y), torch.add(x, y))
    assert add(x, y).tolist() == [-(2**31), 2**31 - 1]


def test_an_empty_tensor_launches_nothing_and_returns_empty():
    x = torch.empty(0, 5, device=DEVICE)
    assert add(x, x).shape == (0, 5)


def test_the_result_keeps_the_shape_and_does_not_alias():
    x, y = operands((3, 5, 7), torch.float32)
    ours = add(x, y)
    assert ours.shape == (3, 5, 7)
    assert ours.data_ptr() not in (x.data_ptr(), y.data_ptr())
    assert_bitwise_equal(ours, x + y)


# ---------------------------------------------------------------- the launch


@pytest.mark.parametrize("n, block", [(37, 8), (1, 1), (64, 16), (1000, 128)])
def test_each_program_owns_the_block_the_launch_arithmetic_gives_it(n, block):
    owner = program_map(n, block, DEVICE).cpu()
    assert torch.equal(owner, (torch.arange(n) // block).to(torch.int32))
    assert owner.max().item() == triton.cdiv(n, block) - 1


def test_traffic_is_what_the_prose_counts():
    assert traffic(1) == {"bytes": 12, "FLOP": 1, "FLOP per byte": 1 / 12}
    assert traffic(1, torch.float16)["FLOP per byte"] == 1 / 6
    big = traffic(2**28)
    assert big["bytes"] == 3 * 2**30  # 3 GiB at the report's size
    assert 0.66e-3 < big["bytes"] / 4.8e12 < 0.68e-3  # "at least 0.67 ms"
    assert traffic(0)["FLOP per byte"] == 0.0


# ---------------------------------------------------------------- example and demo


def test_example_and_its_declared_dataflow():
    fn, args = example()
    output = fn(*args)
    assert_bitwise_equal(output, torch.add(*args))
    nodes, edges = dataflow(output)
    names = {node for node, _ in nodes}
    assert all(source in names and target in names for source, target, _ in edges)
    assert ("kernel", "z", "[1000], written once") in edges


def test_demo_finds_no_differing_element(tmp_path, capsys):
    flags = ["--sizes", "0", "1", "1025", "--report-size", "4099"]  # 4099: GPU only
    metrics = main([*flags, "--device", DEVICE, "--out", str(tmp_path)])
    assert metrics["elements differing from torch.add"] == 0
    assert metrics["FLOP per byte"] == 1 / 12
    printed = capsys.readouterr().out
    assert "1,025:      2 programs,  1023 lanes masked" in printed
    assert "arithmetic intensity 1/12" in printed
    assert (tmp_path / "launch.png").stat().st_size > 0


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, error, match",
    [
        (
            lambda: add([1.0], torch.ones(1)),
            TypeError,
            "add: x must be a torch.Tensor, got list",
        ),
        (
            lambda: add(torch.ones(3), torch.ones(3, dtype=torch.float64)),
            TypeError,
            "add: x is torch.float32 but y is torch.float64; the kernel does not",
        ),
        (
            lambda: add(
                torch.ones(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool)
            ),
            TypeError,
            "add: x must be one of float16, bfloat16, float32, float64, int32, int64, "
            "got torch.bool",
        ),
        (
            lambda: add(torch.ones(3), torch.ones(1)),
            ValueError,
            r"add: x has shape \(3,\) but y \(1,\); the kernel does not broadcast",
        ),
        (
            lambda: add(torch.ones(4, 3).T, torch.ones(3, 4)),
            ValueError,
            r"add: x must be contiguous .* pass x.contiguous\(\)",
        ),
        (
            lambda: add(torch.ones(3), torch.ones(3, device="meta")),
            ValueError,
            "add: x is on cpu but y on meta",
        ),
        (
            lambda: add(torch.ones(3), torch.ones(3), block_size=24),
            ValueError,
            "add: block_size must be a power of two, got 24",
        ),
        (
            lambda: program_map(0, 8),
            ValueError,
            "program_map: n_elements must be an int >= 1, got 0",
        ),
    ],
)
def test_bad_input_raises_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.skipif(not INTERPRETED, reason="the interpreter's limitation")
def test_bfloat16_is_refused_in_the_interpreter():
    x = torch.ones(3, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="bfloat16, which Triton's interpreter adds"):
        add(x, x)


def test_too_many_elements_for_32_bit_offsets_is_refused():
    huge = torch.empty(2**31, dtype=torch.float16, device="meta")
    with pytest.raises(ValueError, match="at most 2\\*\\*31 - 1"):
        add(huge, huge)


def test_gpu_report_runs_end_to_end_on_a_stand_in_device(monkeypatch, fixed_times):
    """gpu_report runs on a fake GPU; its GB/s and ratios follow from fixed times."""
    fixed_times([2.0, 5.0])  # ms: ours, torch.add
    monkeypatch.setattr(vector_add, "copy_bandwidth", lambda: 8e-3)
    with fake_cuda():
        report = gpu_report(n_elements=1000, dtype=torch.float16, block_size=512)
    moved = 3 * 1000 * 2  # read x, read y, write z: 6,000 bytes
    assert report == pytest.approx(
        {
            "device": "fake CUDA device",
            "elements": 1000,
            "dtype": "float16",
            "block": 512,
            "ours µs": 2000.0,
            "torch µs": 5000.0,
            "ours GB/s": moved / 2e-3 / 1e9,
            "torch GB/s": moved / 5e-3 / 1e9,
            "copy GB/s": 8e-3,
            "ours of copy": 3e-3 / 8e-3,
            "torch of copy": 1.2e-3 / 8e-3,
            "ours / torch": 2.5,
        }
    )


# ---------------------------------------------------------------- on a GPU only


@CUDA
@pytest.mark.skipif(INTERPRETED, reason="bfloat16 needs the compiled kernel")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gpu_add_matches_torch_add_at_a_ragged_million(dtype):
    x, y = operands(2**20 + 3, dtype)
    x, y = x.cuda(), y.cuda()
    assert_bitwise_equal(add(x, y), torch.add(x, y))


@CUDA
@pytest.mark.skipif(
    INTERPRETED, reason="interpreted kernels: do_bench would time NumPy"
)
def test_gpu_report_measures_bandwidth_below_the_copy_ceiling():
    report = gpu_report(n_elements=2**24)
    assert report["elements"] == 2**24 and report["dtype"] == "float32"
    assert report["ours µs"] > 0 and report["torch µs"] > 0
    assert 0 < report["ours of copy"] < 1.5  # a fraction, not a number of GB/s
    assert report["ours / torch"] == pytest.approx(
        report["torch µs"] / report["ours µs"]
    )


# ---------------------------------------------------------------- benchmarks

BENCH = operands(4096, torch.float32)


@pytest.mark.benchmark(group="vector add, 4096 float32 elements, CPU")
def test_bench_add_ours(benchmark):
    benchmark.extra_info["label"] = "Triton add_kernel, in the interpreter"
    benchmark(add, *BENCH)


@pytest.mark.benchmark(group="vector add, 4096 float32 elements, CPU")
def test_bench_add_torch(benchmark):
    benchmark.extra_info["label"] = "torch.add"
    benchmark.extra_info["baseline"] = True
    benchmark(torch.add, *BENCH)
