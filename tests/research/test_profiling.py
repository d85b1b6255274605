"""Hand formulas, exactly: FlopCounterMode's counts equal 2mnk, the conv2d count
2·N·Cout·Hout·Wout·Cin·k² and the attention's 2·L·S·(E+Ev) per head, and the profiler's
memory categories equal the memory chapter's parameter, gradient and Adam-state bytes to
the byte.

Also checked: the read-once bytes model on a few ops, the exported Chrome and
TensorBoard traces (valid JSON holding the expected operators and scheduled steps), the
measured peak (positive, finite, consistent units), the roofline classification of a
large add and a large matmul on the measured machine, the NVTX ranges and capture
range of `--nvtx` (on a GPU; on a CPU the flag is an error), and bad inputs. No test
asserts a time.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.profiler import ProfilerActivity

from annotated.research.profiling import (
    ELEMENTWISE_FLOPS,
    MEMORY_CATEGORIES,
    TRACED,
    activities,
    attention_flops,
    bound,
    conv2d_flops,
    counted_flops,
    example,
    machine_peak,
    main,
    make_ops,
    matmul_flops,
    memory_against_prediction,
    memory_timeline,
    nvtx_steps,
    operator_table,
    profile_step,
    roofline,
    seconds_per_call,
    tensorboard_trace,
    top_operators,
)
from annotated.transformers.attention import scaled_dot_product_attention
from annotated.transformers.memory_analysis import model_state_bytes


@pytest.fixture(scope="module")
def peak():
    # One thread, a 256³ product and a 2 × 32 MiB copy: a realistic ridge point even
    # on a busy machine, where two threads can stall on each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return machine_peak(matmul_size=256, copy_elements=1 << 23, min_run_time=0.05)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def step(tmp_path_factory):
    out = tmp_path_factory.mktemp("trace")
    prof = profile_step(TRACED, 2, out)
    return prof, out


# ## Counting FLOPs


@settings(max_examples=15)  # each example enters and leaves the dispatch mode
@given(
    m=st.integers(1, 40),
    n=st.integers(1, 40),
    k=st.integers(1, 40),
)
def test_matmul_count_is_2mnk(m, n, k):
    a, b = torch.randn(m, k), torch.randn(k, n)
    assert counted_flops(torch.mm, a, b) == matmul_flops(m, n, k) == 2 * m * n * k


def test_matmul_training_count_is_three_products():
    x = torch.randn(16, 8, requires_grad=True)
    w = torch.randn(8, 4, requires_grad=True)
    assert counted_flops(lambda: (x @ w).sum().backward()) == 3 * matmul_flops(16, 4, 8)


@pytest.mark.parametrize(
    "batch, c_in, c_out, size, kernel, stride, padding",
    [(2, 3, 5, 10, 3, 1, 0), (1, 4, 6, 9, 3, 2, 1), (3, 2, 2, 7, 5, 1, 2)],
)
def test_conv2d_count_matches_formula(
    batch, c_in, c_out, size, kernel, stride, padding
):
    x = torch.randn(batch, c_in, size, size)
    w = torch.randn(c_out, c_in, kernel, kernel)
    y = F.conv2d(x, w, stride=stride, padding=padding)
    counted = counted_flops(lambda: F.conv2d(x, w, stride=stride, padding=padding))
    h_out, w_out = y.shape[-2:]
    assert counted == conv2d_flops(batch, c_in, c_out, h_out, w_out, kernel)


@pytest.mark.parametrize("q_len, k_len, d_qk, d_v", [(8, 8, 4, 4), (5, 11, 6, 3)])
def test_attention_count_matches_formula(q_len, k_len, d_qk, d_v):
    q = torch.randn(2, 3, q_len, d_qk)
    k = torch.randn(2, 3, k_len, d_qk)
    v = torch.randn(2, 3, k_len, d_v)
    counted = counted_flops(scaled_dot_product_attention, q, k, v)
    assert counted == attention_flops(6, q_len, k_len, d_qk, d_v)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a claim about the CPU kernel")
def test_fused_sdpa_and_elementwise_ops_count_zero_on_cpu():
    q = torch.randn(1, 2, 8, 4)
    assert counted_flops(F.scaled_dot_product_attention, q, q, q) == 0
    # 3-D tensors take the math path: two bmm, which the counter sees
    q = torch.randn(2, 8, 4)
    counted = counted_flops(F.scaled_dot_product_attention, q, q, q)
    assert counted == attention_flops(2, 8, 8, 4, 4)
    x = torch.randn(4, 8)
    for fn in (torch.softmax, F.gelu, torch.add):
        args = (x, -1) if fn is torch.softmax else (x, x) if fn is torch.add else (x,)
        assert counted_flops(fn, *args) == 0


# ## The bytes model


def test_bytes_model_reads_inputs_and_writes_output_once():
    ops = {o.name: o for o in make_ops(64)}
    n = 64
    assert ops["matmul"].bytes == 3 * n * n * 4
    assert ops["matvec"].bytes == (4 * n + 16 * n * n + 4 * n) * 4
    assert ops["add"].bytes == 3 * (8 * n * n) * 4
    assert ops["softmax"].bytes == 2 * (8 * n * n) * 4
    assert ops["layernorm"].bytes == (2 * 8 * n * n + 2 * n) * 4
    # the embedding reads only the gathered rows: ids (int64) + rows + output
    assert ops["embedding"].bytes == 16 * n * 8 + 2 * (16 * n) * (n // 2) * 4
    assert ops["add, out="].bytes == ops["add"].bytes
    assert ops["add"].flops == 8 * n * n * ELEMENTWISE_FLOPS["add"]
    for item in ops.values():
        assert item.intensity == item.flops / item.bytes


def test_ops_counted_by_flopcounter_match_their_hand_formula():
    for item in make_ops(64):
        if item.name in ("matmul", "matvec", "bmm 8×8", "conv2d", "attention"):
            assert counted_flops(item.fn, *item.args) == item.flops, item.name


# ## The machine and the roofline


def test_peak_is_positive_finite_and_consistent(peak):
    for key in ("flops", "bandwidth", "ridge"):
        assert 0 < peak[key] < math.inf
    assert peak["ridge"] == pytest.approx(peak["flops"] / peak["bandwidth"])
    # FLOP/s of a 256³ product and bytes/s of a 64 MiB copy: sane orders of magnitude
    assert 1e6 < peak["flops"] < 1e16 and 1e6 < peak["bandwidth"] < 1e14
    assert isinstance(peak["blas"], str) and peak["blas"]


def test_roofline_classifies_add_as_memory_and_matmul_as_compute_bound(peak):
    # a large add: 1 FLOP per 12 bytes; a 2048³ matmul: 2048/6 FLOP per byte
    assert bound(1 / 12, peak) == "memory-bound"
    assert bound(2048 / 6, peak) == "compute-bound"
    ops = {o.name: o for o in make_ops(64)}
    assert bound(ops["add"].intensity, peak) == "memory-bound"
    assert bound(ops["embedding"].intensity, peak) == "memory-bound"
    # The ridge itself: the roof is flat from there on (min(P, I B) = P).
    ridge = peak["ridge"]
    assert bound(ridge, peak) == "compute-bound"
    assert bound(math.nextafter(ridge, 0), peak) == "memory-bound"


def test_roofline_rows_are_consistent(peak):
    rows = roofline(make_ops(32)[:2] + make_ops(32)[-2:], peak, min_run_time=0.01)
    for row in rows:
        assert row["seconds"] > 0
        assert row["achieved"] == pytest.approx(row["flops"] / row["seconds"])
        assert row["roof"] == pytest.approx(
            min(peak["flops"], row["intensity"] * peak["bandwidth"])
        )
        assert row["bound"] == bound(row["intensity"], peak)
        assert row["of roof"] > 0


# ## Traces


def test_chrome_trace_is_valid_json_with_the_expected_ops(step):
    prof, out = step
    trace = json.loads((out / "trace.json").read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    for name in ("forward", "backward", "optimizer", "aten::mm", "aten::bmm"):
        assert name in names
    assert any(n and n.startswith("Optimizer.step#Adam") for n in names)
    top = top_operators(prof, count=3)
    assert len(top) == 3 and all(name.startswith("aten::") for name, _ in top)
    assert top[0][1] >= top[1][1] >= top[2][1] > 0
    table = operator_table(prof)
    assert "aten::mm" in table and ".py(" not in table


def test_memory_timeline_categories_match_the_formulas_exactly(step):
    prof, out = step
    milliseconds, by_category = memory_timeline(prof, out / "memory.json")
    assert set(by_category) == set(MEMORY_CATEGORIES)
    assert milliseconds[0] == 0 and milliseconds == sorted(milliseconds)
    states = model_state_bytes(TRACED)
    assert max(by_category["parameters"]) == states["parameters"]
    assert max(by_category["gradients"]) == states["gradients"]
    assert max(by_category["optimizer state"]) == states["optimizer"]
    # the gradients appear during the step (they were set to None), the rest persists
    assert by_category["gradients"][0] == 0
    assert by_category["parameters"][0] == states["parameters"]
    compared = memory_against_prediction(by_category, TRACED, 2)
    measured, predicted = compared["activations"]
    assert 0.8 < measured / predicted < 1.25


# ## Bad input


def test_bad_inputs_are_named(peak):
    with pytest.raises(ValueError, match="matmul_size"):
        machine_peak(matmul_size=0)
    with pytest.raises(ValueError, match="copy_elements"):
        machine_peak(copy_elements=2.5)
    with pytest.raises(ValueError, match="multiple of 32"):
        make_ops(48)
    with pytest.raises(ValueError, match="n must be a positive int"):
        make_ops(True)
    with pytest.raises(ValueError, match="intensity"):
        bound(-1.0, peak)
    with pytest.raises(ValueError, match="intensity"):
        bound(float("nan"), peak)
    with pytest.raises(ValueError, match="ridge"):
        bound(1.0, {"flops": 1.0, "bandwidth": 1.0, "ridge": 0.0})
    with pytest.raises(TypeError, match="peak"):
        roofline([], [1, 2, 3])
    with pytest.raises(TypeError, match="fn must be callable"):
        counted_flops(3)
    with pytest.raises(TypeError, match="fn must be callable"):
        seconds_per_call(3, ())
    with pytest.raises(ValueError, match="min_run_time"):
        seconds_per_call(torch.zeros, (1,), min_run_time=0)
    # nvtx_steps checks its counts before touching the (named, unused) CUDA device
    with pytest.raises(ValueError, match="warmup must be an int >= 0"):
        nvtx_steps(TRACED, 1, "cuda", warmup=-1)
    with pytest.raises(ValueError, match="warmup must be an int >= 0"):
        nvtx_steps(TRACED, 1, "cuda", warmup=True)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        nvtx_steps(TRACED, 1, "cuda", steps=0)
    with pytest.raises(ValueError, match="active"):
        tensorboard_trace(TRACED, 1, "unused", active=0)
    with pytest.raises(ValueError, match="wait"):
        tensorboard_trace(TRACED, 1, "unused", wait=-1)


def test_profiler_activities_add_cuda_kernels_only_on_a_gpu():
    assert activities(torch.device("cpu")) == [ProfilerActivity.CPU]
    cuda = activities(torch.device("cuda"))  # no CUDA call: only the device's type
    assert cuda == [ProfilerActivity.CPU, ProfilerActivity.CUDA]


# ## Example and demo


def test_example_runs():
    model, args = example()
    assert model(*args).shape == (2, 16, TRACED.vocab_size)


def test_demo_reports_peak_and_every_op(tmp_path):
    result = main(
        [
            "--n", "64",
            "--peak-size", "64",
            "--copy-elements", "65536",
            "--min-run-time", "0.01",
            "--batch", "1",
            "--threads", "1",
            "--device", "cpu",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    assert result["ridge FLOP/B"] == pytest.approx(
        result["peak FLOP/s"] / result["bandwidth B/s"]
    )
    assert result["matmul intensity"] == pytest.approx(64 / 6)
    assert result["add intensity"] == pytest.approx(1 / 12)
    assert all(math.isfinite(v) and v >= 0 for v in result.values())
    for name in ("roofline.png", "trace_top_ops.png", "memory.png", "trace.json"):
        assert (tmp_path / name).exists()
    # the TensorBoard handler's file, with the schedule wait=1, warmup=1, active=2
    files = list((tmp_path / "tensorboard").glob("*.pt.trace.json"))
    assert len(files) == 1
    names = {e.get("name") for e in json.loads(files[0].read_text())["traceEvents"]}
    assert {"ProfilerStep#2", "ProfilerStep#3"} <= names
    assert "ProfilerStep#0" not in names and "ProfilerStep#1" not in names


# ## Nsight Systems: NVTX ranges inside a capture range


def test_nvtx_flag_on_a_cpu_is_an_error(tmp_path, capsys):
    # A usage line before anything runs: the demo writes nothing.
    with pytest.raises(SystemExit) as exit:
        main(["--device", "cpu", "--nvtx", "--out", str(tmp_path / "out")])
    assert exit.value.code == 2
    assert "--nvtx needs --device cuda, got --device cpu" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="--nvtx needs --device cuda"):
        nvtx_steps(TRACED, 1, "cpu")
    assert not any(tmp_path.iterdir())  # it stopped before measuring anything


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_nvtx_steps_sit_inside_the_capture_range(monkeypatch, capsys):
    calls = []
    for module, name in (
        (torch.cuda.nvtx, "range_push"),
        (torch.cuda.nvtx, "range_pop"),
        (torch.cuda.profiler, "start"),
        (torch.cuda.profiler, "stop"),
    ):

        def record(*args, real=getattr(module, name), name=name):
            calls.append((name, *args))
            return real(*args)

        monkeypatch.setattr(module, name, record)
    result = main(["--device", "cuda", "--nvtx", "--nvtx-steps", "2", "--batch", "1"])
    assert calls.count(("start",)) == calls.count(("stop",)) == 1
    start, stop = calls.index(("start",)), calls.index(("stop",))
    phases = ["forward", "backward", "optimizer"]
    # three warm-up steps before the capture range, two steps inside it
    assert [c[1] for c in calls[:start] if c[0] == "range_push"] == 3 * phases
    inside = [c[1] for c in calls[start:stop] if c[0] == "range_push"]
    assert inside == ["step 0", *phases, "step 1", *phases]
    pushes = [c for c in calls if c[0] == "range_push"]
    assert len(pushes) == calls.count(("range_pop",))  # every range closed
    assert result["nvtx steps"] == 2 and result["ms per step"] > 0
    printed = capsys.readouterr().out
    assert "nsys profile -t cuda,nvtx,osrt --capture-range=cudaProfilerApi" in printed
    assert "--device cuda --nvtx --batch 1 --nvtx-steps 2" in printed
    # emit_nvtx adds a range per operator; the step's own ranges are unchanged
    calls.clear()
    timed = nvtx_steps(TRACED, 1, "cuda", warmup=0, steps=1, per_operator=True)
    assert [c[1] for c in calls if c[0] == "range_push"] == ["step 0", *phases]
    assert timed["steps"] == 1 and math.isfinite(timed["loss"])


# ## Benchmarks: the same FLOPs at two intensities
#
# 2·256³ FLOPs as one 256 × 256 product (intensity 42.7 FLOP/byte), or as 32,768
# products of 8 × 8 matrices (intensity 1.3): the same arithmetic, 32 times the bytes.
# Each round runs 20 calls back to back, as a training loop would, on one thread: the
# story is per core, and two threads on a busy machine mostly measure each other.

BIG = (torch.randn(256, 256), torch.randn(256, 256))
TINY = (torch.randn(32768, 8, 8), torch.randn(32768, 8, 8))


def test_bench_pair_has_equal_flops():
    assert counted_flops(torch.mm, *BIG) == counted_flops(torch.bmm, *TINY)


@pytest.mark.benchmark(group="2·256³ FLOPs, one thread: one matmul vs 32,768 tiny ones")
def test_bench_one_big_matmul(benchmark):
    benchmark.extra_info["label"] = "x @ W, 256×256 (I = 42.7)"
    benchmark.extra_info["baseline"] = True
    torch.set_num_threads(1)  # the autouse fixture in conftest.py restores it
    benchmark.pedantic(torch.mm, BIG, rounds=10, iterations=20, warmup_rounds=1)


@pytest.mark.benchmark(group="2·256³ FLOPs, one thread: one matmul vs 32,768 tiny ones")
def test_bench_tiny_matmuls(benchmark):
    benchmark.extra_info["label"] = "bmm of 32,768 8×8 products (I = 1.3)"
    torch.set_num_threads(1)
    benchmark.pedantic(torch.bmm, TINY, rounds=10, iterations=20, warmup_rounds=1)
