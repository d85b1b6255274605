"""Verified against torch.matmul and the float64 product in Triton's interpreter on a
CPU: float32 (input_precision="ieee") within the rounding bound K·2⁻²³·(|A||B|) and to
1e-5 of torch.matmul, float16 within one unit in the last place of the rounded exact
product; on a GPU also float16, bfloat16 and float32 on ragged 1000-scale shapes.

Shapes include 1×1×1, 17×33×65, K not a multiple of BLOCK_K, K = 0 and empty outputs;
operands come transposed, sliced with a step and broadcast with stride 0. The grouped
launch order is checked to be a permutation of the tiles and to change no bit of the
result, and the tile-load counts the prose quotes are counted again.
"""

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

import triton  # noqa: E402

from annotated.kernels import matmul as lesson  # noqa: E402
from annotated.kernels.matmul import (  # noqa: E402
    CPU_CONFIG,
    blocked_matmul,
    dataflow,
    example,
    gpu_report,
    hbm_traffic,
    main,
    matmul,
    tile_coordinates,
)
from tools.fake_cuda import fake_cuda  # noqa: E402

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# conftest.py sets TRITON_INTERPRET=1 unless it is set already, so by default the
# kernel runs in the interpreter on CPU tensors, GPU or not. With TRITON_INTERPRET=0 on
# a GPU it is compiled, and the CPU-sized tests below run on the GPU instead.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu"


pytestmark = pytest.mark.usefixtures("one_thread")


def operands(M, N, K, seed=0):
    """Float64 `a` `[M, K]` and `b` `[K, N]` on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(M, K, generator=generator, dtype=torch.float64)
    b = torch.randn(K, N, generator=generator, dtype=torch.float64)
    return a, b


def assert_float32_product(ours, a, b):
    """`ours` is `a @ b` up to float32 rounding: the inputs' rounding and the sum's,
    bounded by K·2⁻²³ times |A||B| (Higham's γ_K, doubled for the rounded inputs)."""
    exact = a.float().double() @ b.float().double()
    scale = a.abs() @ b.abs()
    K = a.shape[1]
    assert ours.dtype == torch.float32 and ours.shape == exact.shape
    error = (ours.cpu().double() - exact).abs()
    assert (error <= (K + 2) * 2**-23 * scale + 1e-30).all(), error.max()


def ulps_from_rounded_product(ours, a, b, dtype):
    """Distance of `ours` from the exact product of the `dtype`-rounded inputs, rounded
    to `dtype`, in units in the last place."""
    rounded = (a.to(dtype).double() @ b.to(dtype).double()).to(dtype).double()
    ulp = torch.finfo(dtype).eps * rounded.abs().clamp_min(torch.finfo(dtype).tiny)
    return ((ours.cpu().double() - rounded).abs() / ulp).max().item()


# ---------------------------------------------------------------- against torch.matmul


@pytest.mark.parametrize(
    "M, N, K",
    [
        (1, 1, 1),  # one live element in a 16×16 tile
        (17, 33, 65),  # ragged in all three: 2×3 programs, the last K step 1 wide
        (16, 32, 48),  # blocks that divide every size
        (3, 50, 7),  # K smaller than one block
        (40, 24, 100),  # several groups of GROUP_M = 4 rows? 3 rows of tiles, 1 group
        (70, 20, 33),  # 5 rows of tiles: a full group of 4, then a group of 1
    ],
)
def test_float32_matches_torch_matmul_and_the_float64_product(M, N, K):
    a, b = operands(M, N, K)
    ours = matmul(a.float().to(DEVICE), b.float().to(DEVICE))
    assert_float32_product(ours, a, b)
    reference = torch.matmul(a.float(), b.float())
    torch.testing.assert_close(ours.cpu(), reference, rtol=1e-5, atol=1e-5)


def test_the_plain_pytorch_tiling_matches_torch_matmul_and_the_kernel():
    a, b = (t.float() for t in operands(23, 35, 41))
    plain = blocked_matmul(a, b, **{k.lower(): v for k, v in CPU_CONFIG.items()})
    torch.testing.assert_close(plain, torch.matmul(a, b), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        matmul(a.to(DEVICE), b.to(DEVICE)).cpu(), plain, rtol=1e-5, atol=1e-5
    )


@settings(max_examples=12)
@given(
    M=st.integers(1, 40),
    N=st.integers(1, 40),
    K=st.integers(1, 70),
    block=st.sampled_from([(16, 16, 16), (32, 16, 32), (16, 32, 16)]),
    group_m=st.sampled_from([1, 2, 3, 8]),
    transpose_a=st.booleans(),
    transpose_b=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_blocks_orders_and_layouts(
    M, N, K, block, group_m, transpose_a, transpose_b, seed
):
    a, b = operands(M, N, K, seed)
    a32 = a.float().T.contiguous().T if transpose_a else a.float()
    b32 = b.float().T.contiguous().T if transpose_b else b.float()
    config = dict(zip(("BLOCK_M", "BLOCK_N", "BLOCK_K"), block), GROUP_M=group_m)
    ours = matmul(a32.to(DEVICE), b32.to(DEVICE), config=config)
    assert_float32_product(ours, a, b)


@pytest.mark.parametrize(
    "layout", ["a transposed", "b transposed", "both", "strided", "NaN-padded"]
)
def test_strided_operands_are_read_where_they_lie(layout):
    a, b = operands(19, 21, 37)
    a32, b32 = a.float(), b.float()
    if layout in ("a transposed", "both"):
        a32 = a32.T.contiguous().T  # column-major storage: strides (1, 19)
        assert a32.stride() == (1, 19)
    if layout in ("b transposed", "both"):
        b32 = b32.T.contiguous().T
        assert b32.stride() == (1, 37)
    if layout == "strided":
        wide = torch.zeros(19, 2 * 37)
        wide[:, ::2] = a32
        a32 = wide[:, ::2]  # every other column of a wider matrix: strides (74, 2)
        assert a32.stride() == (74, 2)
    if layout == "NaN-padded":
        # views into larger matrices whose other entries are NaN: a single read past
        # K, along either operand, would turn the result into NaN
        wide = torch.full((19, 50), float("nan"))
        wide[:, :37] = a32
        tall = torch.full((45, 21), float("nan"))
        tall[:37] = b32
        a32, b32 = wide[:, :37], tall[:37]
    ours = matmul(a32.to(DEVICE), b32.to(DEVICE))
    assert_float32_product(ours, a, b)


def test_a_broadcast_operand_with_stride_zero():
    a, _ = operands(9, 1, 30)
    column = torch.randn(30, 1, generator=torch.Generator().manual_seed(3))
    b = column.expand(30, 20)  # every column the same, stride (1, 0)
    assert b.stride() == (1, 0)
    ours = matmul(a.float().to(DEVICE), b.to(DEVICE))
    assert_float32_product(ours, a, b.double())


def test_the_launch_order_changes_no_bit_of_the_result():
    a, b = (t.float().to(DEVICE) for t in operands(50, 45, 40))
    results = [
        matmul(a, b, config={**CPU_CONFIG, "GROUP_M": group_m})
        for group_m in (1, 2, 4, 100)
    ]
    assert all(torch.equal(results[0], other) for other in results[1:])


@pytest.mark.parametrize("M, N", [(0, 5), (5, 0), (0, 0)])
def test_an_empty_output_is_empty(M, N):
    a, b = operands(M, N, 3)
    ours = matmul(a.float().to(DEVICE), b.float().to(DEVICE))
    assert ours.shape == (M, N) and ours.dtype == torch.float32


def test_k_zero_gives_zeros_like_torch():
    a, b = (t.float().to(DEVICE) for t in operands(5, 7, 0))
    ours = matmul(a, b)
    assert torch.equal(ours, torch.zeros(5, 7, device=DEVICE))
    assert torch.equal(ours.cpu(), torch.matmul(a.cpu(), b.cpu()))


def test_extreme_values_are_exact_where_the_product_is():
    # Powers of two multiply exactly: 2**60 · 2**60 is 2**120 < float32's 2**128, and
    # the tiny entries (2**-60 · 2**-60 = 2**-120, subnormal-free) add exactly too.
    a = torch.tensor([[2.0**60, 2.0**-60, 0.0], [-(2.0**60), 0.0, 1.0]])
    b = torch.tensor([[2.0**60, 1.0], [2.0**-60, -1.0], [3.0, 2.0**-60]])
    ours = matmul(a.to(DEVICE), b.to(DEVICE)).cpu()
    assert torch.equal(ours, torch.matmul(a, b))
    assert ours[0, 0].item() == 2.0**120 + 2.0**-120 or ours[0, 0].item() == 2.0**120


@pytest.mark.parametrize("M, N, K", [(1, 1, 1), (17, 33, 65), (30, 20, 40)])
def test_float16_is_within_one_ulp_of_the_rounded_exact_product(M, N, K):
    a, b = operands(M, N, K)
    ours = matmul(a.half().to(DEVICE), b.half().to(DEVICE))
    assert ours.dtype == torch.float16
    assert ulps_from_rounded_product(ours, a, b, torch.float16) <= 1.0
    reference = torch.matmul(a.half(), b.half())  # float32 sums on a CPU too
    assert ulps_from_rounded_product(reference, a, b, torch.float16) <= 1.0


def test_float16_accumulates_in_float32_over_a_long_k():
    # 1024 terms: a float16 running sum would drift by tens of ulps; float32 does not.
    a, b = operands(16, 16, 1024, seed=4)
    ours = matmul(a.half().to(DEVICE), b.half().to(DEVICE))
    assert ulps_from_rounded_product(ours, a, b, torch.float16) <= 1.0


# ---------------------------------------------------------------- the launch order


@settings(max_examples=30)
@given(
    m_tiles=st.integers(1, 20), n_tiles=st.integers(1, 20), group_m=st.integers(1, 25)
)
def test_grouped_order_visits_every_tile_once(m_tiles, n_tiles, group_m):
    tiles = [
        tile_coordinates(pid, m_tiles, n_tiles, group_m)
        for pid in range(m_tiles * n_tiles)
    ]
    assert sorted(tiles) == [(i, j) for i in range(m_tiles) for j in range(n_tiles)]


def test_group_of_one_row_is_row_major_and_groups_go_down_columns():
    assert [tile_coordinates(p, 3, 4, 1) for p in range(12)] == [
        (i, j) for i in range(3) for j in range(4)
    ]
    # 5 rows in groups of 2: columns of 2 in each group, then a last group of 1 row
    order = [tile_coordinates(p, 5, 3, 2) for p in range(15)]
    assert order[:6] == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    assert order[12:] == [(4, 0), (4, 1), (4, 2)]


def test_the_tutorials_nine_by_nine_count_90_against_54():
    # Triton's tutorial: 9 programs on a 9×9 grid of tiles, 9 tiles along K, read 90
    # tiles in row-major order and 54 grouped by 3. Counted per wave, 9 waves.
    row_major = hbm_traffic(9, 9, 9, 1, 1, 1, group_m=1, wave=9, itemsize=1)
    grouped = hbm_traffic(9, 9, 9, 1, 1, 1, group_m=3, wave=9, itemsize=1)
    assert row_major["this order"] == 9 * 90
    assert grouped["this order"] == 9 * 54
    assert row_major["no reuse"] == 81 * 9 * 2
    assert row_major["each input once"] == 2 * 81
    assert row_major["output written"] == 81


def test_the_counts_the_prose_quotes():
    counts = {
        g: hbm_traffic(4096, 4096, 4096, 128, 128, 64, g, wave=132)
        for g in (1, 4, 8, 16)
    }
    flops = 2 * 4096**3

    def intensity(read):
        return flops / (read + counts[1]["output written"])

    assert round(counts[1]["no reuse"] / 1e6) == 2147
    assert round(intensity(counts[1]["no reuse"])) == 63
    assert [round(counts[g]["this order"] / 1e6) for g in (1, 4, 8, 16)] == [
        309,
        324,
        231,
        224,
    ]
    assert [round(intensity(counts[g]["this order"])) for g in (1, 4, 8, 16)] == [
        401,
        384,
        520,
        533,
    ]
    assert round(intensity(counts[1]["each input once"])) == 1365
    wide = {
        g: hbm_traffic(16384, 16384, 16384, 128, 128, 64, g, wave=132) for g in (1, 8)
    }
    written = wide[1]["output written"]
    assert round(2 * 16384**3 / (wide[1]["this order"] + written)) == 129
    assert round(2 * 16384**3 / (wide[8]["this order"] + written)) == 625


# ---------------------------------------------------------------- example and demo


def test_example_and_its_declared_dataflow():
    fn, (a, b) = example()
    output = fn(a.to(DEVICE), b.to(DEVICE))
    torch.testing.assert_close(output.cpu(), a @ b, rtol=1e-5, atol=1e-5)
    nodes, edges = dataflow(output)
    names = {node for node, _ in nodes}
    assert all(source in names and target in names for source, target, _ in edges)
    assert ("a", "A [17, 65]") in nodes and ("c", "C [17, 33]") in nodes
    assert ("kernel", "matmul_kernel\n6 programs, grouped order") in nodes


def test_demo_checks_products_and_counts_orders(tmp_path, capsys):
    metrics = main(
        [
            "--check-shapes",
            "1x1x1",
            "17x33x65",
            "--count-size",
            "1024",
            "--group-m",
            "1",
            "8",
            "--report-size",  # used on a GPU only
            "256",
            "--device",
            DEVICE,
            "--out",
            str(tmp_path),
        ]
    )
    assert metrics["float32 relative error"] < 1e-6
    assert metrics["float16 error (ulps)"] <= 1.0
    # 1024³ in 128-tiles: 8 tiles a row; a wave of 132 covers every tile of 16 rows
    # in either order, and GROUP_M = 8 is no better than row-major
    assert metrics["row-major / grouped"] == pytest.approx(1.0)
    printed = capsys.readouterr().out
    assert "GROUP_M = 8" in printed and "each input once" in printed
    assert (tmp_path / "orders.png").stat().st_size > 0
    assert (tmp_path / "roofline.png").stat().st_size > 0


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, error, match",
    [
        (
            lambda: matmul(torch.zeros(3, 4), torch.zeros(5, 2)),
            ValueError,
            "a is 3×4 but b is 5×2; a's columns must equal b's rows",
        ),
        (
            lambda: matmul(torch.zeros(3, 4), torch.zeros(4, 2, dtype=torch.float16)),
            TypeError,
            "a is torch.float32 but b is torch.float16",
        ),
        (
            lambda: matmul(torch.zeros(3, 4, dtype=torch.float64), torch.zeros(4, 2)),
            TypeError,
            "a must be float16, bfloat16 or float32, got torch.float64",
        ),
        (
            lambda: matmul(torch.zeros(3, 4), torch.zeros(4, 2, dtype=torch.int32)),
            TypeError,
            "b must be float16, bfloat16 or float32, got torch.int32",
        ),
        (
            lambda: matmul(torch.zeros(4), torch.zeros(4, 2)),
            ValueError,
            r"a must be a 2-D tensor, got shape \(4,\)",
        ),
        (
            lambda: matmul(torch.zeros(3, 4), torch.zeros(2, 4, 2)),
            ValueError,
            r"b must be a 2-D tensor, got shape \(2, 4, 2\)",
        ),
        (
            lambda: matmul([[1.0]], torch.zeros(1, 1)),
            TypeError,
            "a must be a torch.Tensor, got list",
        ),
        (
            lambda: matmul(torch.zeros(3, 4), torch.zeros(4, 2, device="meta")),
            ValueError,
            "a is on cpu but b on meta",
        ),
        (
            lambda: matmul(
                torch.zeros(2, 2, dtype=torch.bfloat16),
                torch.zeros(2, 2, dtype=torch.bfloat16),
            ),
            TypeError,
            "bfloat16 needs a GPU",
        ),
        (
            lambda: matmul(  # meta tensors: shapes without memory
                torch.empty(2**16 + 1, 2**15, device="meta"),
                torch.empty(2**15, 1, device="meta"),
            ),
            ValueError,
            "a spans 2147516416 elements; the kernel indexes with 32-bit integers",
        ),
    ],
)
def test_bad_input_raises_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


class StandInAutotuner:
    """`tuned_matmul_kernel`, which exists only where a GPU was found at import: the
    plain kernel launched with `best_config`, a configuration the interpreter runs."""

    best_config = triton.Config(CPU_CONFIG, num_warps=2, num_stages=3)

    def __getitem__(self, grid):
        kernel = lesson.matmul_kernel[grid]
        return lambda *args, **options: kernel(*args, **options, **CPU_CONFIG)


def test_gpu_report_runs_end_to_end_on_a_stand_in_device(monkeypatch, fixed_times):
    """gpu_report runs on a fake GPU; its TFLOP/s and ratios follow from fixed times."""
    times = {"fp16": (2.0, 3.0, 1.0), "bf16": (0.5, 1.0, 0.25)}  # ms, in call order
    fixed_times([ms for label in times for ms in times[label]])
    monkeypatch.setattr(lesson, "tuned_matmul_kernel", StandInAutotuner(), False)
    monkeypatch.setattr(lesson, "BF16_DENSE_PEAK_TFLOPS", {"fake CUDA": 1e-6})
    with fake_cuda():  # bfloat16 is let through as on a GPU; its values go unchecked
        report = gpu_report(size=5)
    config = "16×16×16, GROUP_M 4, 2 warps, 3 stages"
    expected = {"size": 5, "device": "fake CUDA device"}
    for label, ms in times.items():
        for entry, each in zip(("ours", "ours, row-major order", "torch"), ms):
            expected[f"{label} {entry} µs"] = 1e3 * each
            expected[f"{label} {entry} TFLOP/s"] = 250 / (each * 1e-3) / 1e12
        expected[f"{label} best config"] = config
    expected |= {
        "fp16 ours / torch": 0.5,
        "fp16 grouped / row-major": 1.5,
        "bf16 ours / torch": 0.5,
        "bf16 grouped / row-major": 2.0,
        "bf16 dense peak TFLOP/s": 1e-6,
        "bf16 ours of peak": 0.5,  # 250 FLOP in 0.5 ms: 5e-7 TFLOP/s
        "bf16 torch of peak": 1.0,
    }
    assert report == pytest.approx(expected)


# ---------------------------------------------------------------- on a GPU only


@CUDA
@pytest.mark.parametrize(
    "dtype, ulps", [(torch.float16, 1.0), (torch.bfloat16, 1.0), (torch.float32, None)]
)
@pytest.mark.parametrize("transpose", [False, True])
def test_gpu_matches_torch_matmul_on_ragged_shapes(dtype, ulps, transpose):
    a, b = operands(1000, 777, 513)
    a_gpu, b_gpu = a.to("cuda", dtype), b.to("cuda", dtype)
    if transpose:
        a_gpu, b_gpu = a_gpu.T.contiguous().T, b_gpu.T.contiguous().T
    ours = matmul(a_gpu, b_gpu)
    assert ours.dtype == dtype and ours.is_cuda
    if ulps is None:
        assert_float32_product(ours, a, b)
        torch.testing.assert_close(ours, a_gpu @ b_gpu, rtol=1e-5, atol=1e-4)
    else:
        # float32 sums in another order may land on the other side of a rounding
        # boundary: one ulp from the correctly rounded product, at most
        assert ulps_from_rounded_product(ours, a, b, dtype) <= ulps
        assert ulps_from_rounded_product(torch.matmul(a_gpu, b_gpu), a, b, dtype) <= 2


@CUDA
def test_gpu_grouped_and_row_major_orders_agree_bitwise():
    a, b = (t.to("cuda", torch.float16) for t in operands(700, 600, 300))
    config = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 4}
    grouped = matmul(a, b, config={**config, "GROUP_M": 8})
    row_major = matmul(a, b, config={**config, "GROUP_M": 1})
    assert torch.equal(grouped, row_major)


@CUDA
@pytest.mark.skipif(
    INTERPRETED, reason="interpreted kernels: do_bench would time NumPy"
)
def test_gpu_report_reports_rates_for_both_dtypes():
    report = gpu_report(512)
    for label in ("fp16", "bf16"):
        for entry in ("ours", "ours, row-major order", "torch"):
            assert report[f"{label} {entry} TFLOP/s"] > 0
        assert 0 < report[f"{label} ours / torch"] < 10
        assert "warps" in report[f"{label} best config"]
    peak = report["bf16 dense peak TFLOP/s"]
    if peak != "unknown":
        assert 0 < report["bf16 torch of peak"] < 1.05


# ---------------------------------------------------------------- benchmarks

BENCH = [t.float().to(DEVICE) for t in operands(32, 32, 32)]


@pytest.mark.benchmark(group="matmul 32×32×32 float32, CPU")
def test_bench_matmul_triton(benchmark):
    benchmark.extra_info["label"] = "Triton kernel, in the interpreter"
    benchmark(matmul, *BENCH)


@pytest.mark.benchmark(group="matmul 32×32×32 float32, CPU")
def test_bench_matmul_blocked_pytorch(benchmark):
    benchmark.extra_info["label"] = "blocked_matmul (plain PyTorch tiles)"
    benchmark(blocked_matmul, *BENCH)


@pytest.mark.benchmark(group="matmul 32×32×32 float32, CPU")
def test_bench_matmul_torch(benchmark):
    benchmark.extra_info["label"] = "torch.matmul"
    benchmark.extra_info["baseline"] = True
    benchmark(torch.matmul, *BENCH)
