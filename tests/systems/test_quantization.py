"""torch.ao.quantization's MinMaxObserver and PerChannelMinMaxObserver, bit for bit
(scales and zero points), torch.quantize_per_tensor / quantize_per_channel (integers),
torch._int_mm (int32 accumulators) and torch.fake_quantize_per_{tensor,channel}_affine
(values and straight-through gradients).

The int8 layer is compared with fbgemm's torch.ops.quantized.linear to within one step
of its output grid, the percentile calibrator with numpy.percentile, and the exported
QDQ model with our int8 model in ONNX Runtime. Benchmarks time int8 and fp32 matmuls.
"""

import numpy as np
import onnx
from onnx import numpy_helper
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver

from annotated.systems.quantization import (
    INT4_WEIGHT,
    INT8_ACTIVATION,
    Int4WeightOnlyLinear,
    Int8Linear,
    MinMaxCalibrator,
    INT8_WEIGHT,
    PercentileCalibrator,
    QATLinear,
    Scheme,
    dequantize,
    example,
    export_onnx,
    fake_quantize,
    int_matmul,
    main,
    minmax,
    model_bytes,
    onnx_logits,
    pack_int4,
    qparams,
    quantize,
    unpack_int4,
)
from tools.literate.figures import short_band


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def observer_for(scheme: Scheme):
    """torch's observer configured like `scheme` (signed integers, our range)."""
    if scheme.per_channel:
        qscheme = (
            torch.per_channel_symmetric
            if scheme.symmetric
            else torch.per_channel_affine
        )
        return PerChannelMinMaxObserver(
            ch_axis=0,
            dtype=torch.qint8,
            qscheme=qscheme,
            quant_min=scheme.qmin,
            quant_max=scheme.qmax,
        )
    qscheme = (
        torch.per_tensor_symmetric if scheme.symmetric else torch.per_tensor_affine
    )
    return MinMaxObserver(
        dtype=torch.qint8, qscheme=qscheme, quant_min=scheme.qmin, quant_max=scheme.qmax
    )


SCHEMES = [
    Scheme(bits, symmetric, per_channel)
    for bits in (8, 4)
    for symmetric in (True, False)
    for per_channel in (True, False)
]
TENSORS = {
    "gaussian": lambda: torch.randn(7, 33) * 3,
    "all positive": lambda: torch.rand(5, 9) + 2.0,
    "all negative": lambda: -torch.rand(5, 9) - 0.5,
    "zeros": lambda: torch.zeros(4, 6),
    "huge and tiny rows": lambda: (
        torch.randn(3, 8) * torch.tensor([[1e4], [1e-6], [1]])
    ),
    "3-d": lambda: torch.randn(4, 3, 5),
}


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
@pytest.mark.parametrize("name", TENSORS)
def test_qparams_match_torch_observers_bitwise(scheme, name):
    torch.manual_seed(0)
    x = TENSORS[name]()
    observer = observer_for(scheme)
    observer(x)
    ref_scale, ref_zero = observer.calculate_qparams()
    scale, zero = qparams(*minmax(x, scheme), scheme)
    assert torch.equal(scale.reshape(-1), ref_scale.float())  # torch's 0-d is [1]
    assert torch.equal(zero.long().reshape(-1), ref_zero.long())


@pytest.mark.parametrize("scheme", [s for s in SCHEMES if s.bits == 8], ids=str)
def test_quantize_and_dequantize_match_torch_bitwise(scheme):
    torch.manual_seed(1)
    x = torch.randn(16, 40) * 2
    scale, zero = qparams(*minmax(x, scheme), scheme)
    if scheme.per_channel:
        ref = torch.quantize_per_channel(x, scale.double(), zero.long(), 0, torch.qint8)
    else:
        ref = torch.quantize_per_tensor(x, scale.item(), zero.item(), torch.qint8)
    q = quantize(x, scale, zero, scheme)
    assert q.dtype == torch.int8
    assert torch.equal(q, ref.int_repr())
    assert torch.equal(dequantize(q, scale, zero), ref.dequantize())


def test_quantize_clamps_outside_the_range():
    scale, zero = torch.tensor(0.1), torch.tensor(5, dtype=torch.int32)
    x = torch.tensor([-1e9, -12.0, 0.0, 12.0, 1e9])
    q = quantize(x, scale, zero, INT8_ACTIVATION)
    assert q.tolist() == [-128, -115, 5, 125, 127]


@pytest.mark.parametrize("n", [1, 2, 15, 16, 129])
def test_int4_pack_round_trip(n):
    values = torch.arange(n) % 16 - 8  # every int4 value
    q = values.to(torch.int8).reshape(n, 1)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.numel() == (n + 1) // 2
    assert torch.equal(unpack_int4(packed, (n, 1)), q)


def test_int4_layer_stores_half_a_byte_per_weight_and_matches_dequantized():
    torch.manual_seed(2)
    linear = nn.Linear(30, 6)
    layer = Int4WeightOnlyLinear(linear)
    assert layer.weight_packed.numel() == 30 * 6 // 2
    scale, zero = qparams(*minmax(linear.weight.detach(), INT4_WEIGHT), INT4_WEIGHT)
    ref_q = torch.quantize_per_channel(
        linear.weight.detach(), scale.double(), zero.long(), 0, torch.qint8
    ).int_repr()
    ref_q = ref_q.clamp(-8, 7)  # torch's qint8 keeps [-128, 127]: clamp to int4's
    x = torch.randn(5, 30)
    expected = F.linear(x, ref_q.float() * scale[:, None], linear.bias)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(32, 64, 48), (17, 8, 24), (64, 1024, 32)])
def test_int_matmul_equals_torch_int_mm(shape):
    m, k, n = shape
    generator = torch.Generator().manual_seed(3)
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=generator)
    b = torch.randint(-128, 128, (k, n), dtype=torch.int8, generator=generator)
    assert torch.equal(int_matmul(a, b), torch._int_mm(a, b))
    extreme = torch.full((m, k), -128, dtype=torch.int8)
    assert torch.equal(
        int_matmul(extreme, extreme.T), torch._int_mm(extreme, extreme.T)
    )


def test_int_matmul_refuses_floats():
    with pytest.raises(TypeError, match="int_matmul: needs int8"):
        int_matmul(torch.ones(2, 2), torch.ones(2, 2, dtype=torch.int8))


def test_int8_linear_stores_a_byte_per_weight_and_accumulates_in_int32():
    layer = Int8Linear(nn.Linear(64, 32), torch.tensor(0.05), torch.tensor(-3))
    assert layer.weight_row_sums.dtype == torch.int32
    # int8 weights, then float32 scale and bias and int32 row sum per row, then the
    # input's float32 scale and int32 zero point
    assert model_bytes(layer) == 64 * 32 + 32 * (4 + 4 + 4) + 4 + 4
    x_q = quantize(
        torch.randn(5, 64), layer.input_scale, layer.input_zero, INT8_ACTIVATION
    )
    accumulator = int_matmul(x_q, layer.weight_q.T)
    assert (accumulator - layer.input_zero * layer.weight_row_sums).dtype == torch.int32


def test_int8_linear_matches_fbgemm_quantized_linear():
    torch.manual_seed(4)
    linear = nn.Linear(64, 32)
    x = torch.randn(16, 64)
    # On an x86 CPU without VNNI, fbgemm multiplies uint8 activations by int8 weights
    # with vpmaddubsw, which adds each pair of products in int16 and saturates; that is
    # why torch's x86 qconfig gives activations 7 bits (reduce_range). So here too: x's
    # range over 127 steps, q in [-128, -1], 0..127 once moved up by 128, where a pair
    # of products fits in int16 (2 × 127 × 127 = 32,258).
    scale = (x.max() - x.min()) / 127
    zero = (-128 - torch.round(x.min() / scale)).to(torch.int32)
    layer = Int8Linear(linear, scale, zero)
    ours = layer(x)  # [16, 32]
    # fbgemm wants unsigned activations: the same numbers with q and z moved up by 128.
    x_q = quantize(x, layer.input_scale, layer.input_zero, INT8_ACTIVATION)
    x_u8 = torch._make_per_tensor_quantized_tensor(
        (x_q.to(torch.int32) + 128).to(torch.uint8),
        layer.input_scale.item(),
        int(layer.input_zero) + 128,
    )
    weight = torch._make_per_channel_quantized_tensor(
        layer.weight_q,
        layer.weight_scale.double(),
        torch.zeros(32, dtype=torch.long),
        0,
    )
    packed = torch.ops.quantized.linear_prepack(weight, layer.bias)
    out_scale = (ours.max() - ours.min()).item() / 255
    out_zero = int(round(-ours.min().item() / out_scale))
    reference = torch.ops.quantized.linear(x_u8, packed, out_scale, out_zero)
    assert (ours - reference.dequantize()).abs().max() <= out_scale * 0.5 + 1e-5
    # and with float arithmetic on the dequantised operands: the same up to rounding
    x_hat = dequantize(x_q, layer.input_scale, layer.input_zero)
    w_hat = layer.weight_q.float() * layer.weight_scale[:, None]
    torch.testing.assert_close(ours, F.linear(x_hat, w_hat, layer.bias))


def test_example_runs():
    fn, args = example()
    assert fn(*args).shape == (8, 4)


@pytest.mark.parametrize("per_channel", [False, True])
def test_fake_quantize_matches_torch_values_and_gradients(per_channel):
    torch.manual_seed(5)
    x = (torch.randn(6, 20) * 4).requires_grad_()
    scheme = Scheme(8, symmetric=False, per_channel=per_channel)
    # a range narrower than the data, so that some values are clamped
    low, high = minmax(x.detach() * 0.5, scheme)
    scale, zero = qparams(low, high, scheme)
    grad_output = torch.randn(6, 20)
    ours = fake_quantize(x, scale, zero, scheme)
    (grad_ours,) = torch.autograd.grad(ours, x, grad_output)
    if per_channel:
        ref = torch.fake_quantize_per_channel_affine(x, scale, zero, 0, -128, 127)
    else:
        ref = torch.fake_quantize_per_tensor_affine(x, scale, zero, -128, 127)
    (grad_ref,) = torch.autograd.grad(ref, x, grad_output)
    assert torch.equal(ours, ref)
    assert torch.equal(grad_ours, grad_ref)
    assert (grad_ours == 0).any() and (grad_ours != 0).any()


@pytest.mark.parametrize("per_channel", [False, True])
def test_straight_through_mask_is_taken_on_the_rounded_integer_like_torch(per_channel):
    # Up to half a step outside the range a value rounds onto the grid's end, is not
    # clamped and keeps its gradient; from half a step on it is clamped. Random inputs
    # rarely land in those bands, so these sit at -0.6, -0.3, 0 steps from the low end
    # and 0, 0.3, 0.6 from the high end, in each of two rows.
    torch.manual_seed(5)
    scheme = Scheme(8, symmetric=False, per_channel=per_channel)
    scale, zero = qparams(*minmax(torch.randn(2, 20) * 4, scheme), scheme)
    s, z = (scale[:, None], zero[:, None]) if per_channel else (scale, zero)
    low, high = s * (scheme.qmin - z), s * (scheme.qmax - z)
    steps = torch.tensor([-0.6, -0.3, 0.0])
    x = torch.cat([low + steps * s, high - steps.flip(0) * s], -1).expand(2, 6)
    x = x.contiguous().requires_grad_()
    (grad_ours,) = torch.autograd.grad(fake_quantize(x, scale, zero, scheme).sum(), x)
    if per_channel:
        ref = torch.fake_quantize_per_channel_affine(x, scale, zero, 0, -128, 127)
    else:
        ref = torch.fake_quantize_per_tensor_affine(x, scale, zero, -128, 127)
    (grad_ref,) = torch.autograd.grad(ref.sum(), x)
    expected = torch.tensor([0.0, 1, 1, 1, 1, 0]).expand(2, 6)
    assert torch.equal(grad_ref, expected)
    assert torch.equal(grad_ours, expected)


def test_qat_layer_computes_on_torchs_fake_quantised_input_and_weight():
    torch.manual_seed(10)
    linear = nn.Linear(12, 5)
    x = torch.randn(30, 12) * 2
    calibrator = MinMaxCalibrator()
    calibrator.update(x * 0.5)  # a range narrower than x: some inputs are clamped
    in_scale, in_zero = calibrator.qparams()
    layer = QATLinear(linear, in_scale, in_zero)
    w_scale, w_zero = qparams(*minmax(linear.weight.detach(), INT8_WEIGHT), INT8_WEIGHT)
    qmin, qmax = INT8_ACTIVATION.qmin, INT8_ACTIVATION.qmax
    x_hat = torch.fake_quantize_per_tensor_affine(x, in_scale, in_zero, qmin, qmax)
    w_hat = torch.fake_quantize_per_channel_affine(
        linear.weight.detach(), w_scale, w_zero, 0, INT8_WEIGHT.qmin, INT8_WEIGHT.qmax
    )
    expected = F.linear(x_hat, w_hat, linear.bias.detach())
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-6)


def test_minmax_calibrator_matches_observer_over_batches():
    torch.manual_seed(6)
    calibrator, observer = MinMaxCalibrator(), observer_for(INT8_ACTIVATION)
    for shift in (0.0, 5.0, -3.0):
        batch = torch.randn(10, 7) + shift
        calibrator.update(batch)
        observer(batch)
    scale, zero = calibrator.qparams()
    ref_scale, ref_zero = observer.calculate_qparams()
    assert torch.equal(scale, ref_scale.float().reshape(()))
    assert int(zero) == int(ref_zero)


def test_percentile_calibrator_matches_numpy_and_ignores_an_outlier():
    torch.manual_seed(7)
    values = torch.rand(10000)
    values[17] = 1000.0
    calibrator = PercentileCalibrator(percentile=99.0)
    for chunk in values.split(3000):
        calibrator.update(chunk)
    low, high = calibrator.range()
    np_low, np_high = np.percentile(values.double().numpy(), [1.0, 99.0])
    assert abs(low.item() - np_low) < 1e-6 and abs(high.item() - np_high) < 1e-6
    assert high < 1.0 < MinMaxCalibrator.range(calibrator)[1]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        Scheme(bits=3)
    with pytest.raises(TypeError, match="symmetric must be a bool"):
        Scheme(symmetric=1)
    with pytest.raises(ValueError, match="percentile must lie in"):
        PercentileCalibrator(percentile=40)
    with pytest.raises(ValueError, match="call update"):
        MinMaxCalibrator().qparams()


def test_onnx_qdq_export_runs_in_onnxruntime_like_ours(tmp_path):
    torch.manual_seed(8)
    float_model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(40, 12)
    scales = [MinMaxCalibrator(), MinMaxCalibrator()]
    scales[0].update(x)
    scales[1].update(float_model[1](float_model[0](x)))
    model = nn.Sequential(
        Int8Linear(float_model[0], *scales[0].qparams()),
        nn.ReLU(),
        Int8Linear(float_model[2], *scales[1].qparams()),
    )
    path = export_onnx(model, tmp_path / "m.onnx", 12)
    graph = onnx.load(str(path))
    ops = [node.op_type for node in graph.graph.node]
    assert ops.count("QuantizeLinear") == 2 and ops.count("DequantizeLinear") == 4
    stored = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    weights = [w for w in stored.values() if w.ndim == 2]
    assert sorted(w.shape for w in weights) == [(3, 16), (16, 12)]
    assert all(w.dtype == np.uint8 for w in weights)  # one byte per weight
    for layer in (model[0], model[2]):  # the same integers, plus 128
        shifted = layer.weight_q.numpy().astype(np.int32) + 128
        assert any(np.array_equal(w, shifted) for w in weights)
    with torch.no_grad():
        ours = model(x).numpy()
    np.testing.assert_allclose(onnx_logits(path, x.numpy()), ours, atol=1e-4)


def test_onnx_export_cannot_saturate_16_bit_pair_sums(tmp_path):
    # Inputs at the top of their range times equal weights make every pair of integer
    # products 2 * 255 * 127 = 64,770, past int16. The kernel ONNX Runtime runs for
    # int8 weights on x86 without VNNI saturates there: an int8-weight file was off by
    # 9.5 on outputs of 19 (AMD EPYC, AVX2). The uint8 file must match on any CPU. Two
    # layers, because the runtime fuses DQ → Gemm → Q (the first) into an integer Gemm.
    torch.manual_seed(0)
    first, second = nn.Linear(64, 8), nn.Linear(8, 2)
    with torch.no_grad():
        first.weight.fill_(0.1)
    x = 10 * torch.rand(16, 64)  # [16, 64]
    x[:4] = 10.0
    scales = [MinMaxCalibrator(), MinMaxCalibrator()]
    scales[0].update(x)
    scales[1].update(torch.relu(first(x)))
    model = nn.Sequential(
        Int8Linear(first, *scales[0].qparams()),
        nn.ReLU(),
        Int8Linear(second, *scales[1].qparams()),
    )
    with torch.no_grad():
        ours = model(x).numpy()  # [16, 2]
    path = export_onnx(model, tmp_path / "m.onnx", 64)
    np.testing.assert_allclose(onnx_logits(path, x.numpy()), ours, atol=1e-4)


def test_demo_short_run(tmp_path):
    # --epochs 4 --qat-epochs 1
    metric, args, low, high = short_band("annotated/systems/quantization.py")
    result = main([*args, "--out", str(tmp_path)])
    assert result["accuracy_fp32"] > 0.85
    assert low <= result[metric] <= high  # the short run's band over stored seeds
    for key in ("ptq_minmax", "ptq_percentile", "qat", "int4"):
        assert result[f"accuracy_{key}"] > result["accuracy_fp32"] - 0.05
    assert (
        result["onnx_agreement"] == 1.0
    )  # ONNX Runtime classifies every digit as ours
    assert result["accuracy_onnx"] == pytest.approx(result["accuracy_qat"], abs=1e-6)
    assert result["bytes_ptq_minmax"] < result["bytes_fp32"] / 3
    assert result["bytes_int4"] < result["bytes_ptq_minmax"] / 1.8
    assert (tmp_path / "ranges.png").exists()
    assert (tmp_path / "size_accuracy.png").exists()


# Benchmarks: one 256 × 512 by 512 × 512 product in int8 and in fp32.
M, K, N = 256, 512, 512


def _operands():
    generator = torch.Generator().manual_seed(9)
    a = torch.randint(-128, 128, (M, K), dtype=torch.int8, generator=generator)
    b = torch.randint(-128, 128, (K, N), dtype=torch.int8, generator=generator)
    return a, b


@pytest.mark.benchmark(group="matmul 256×512 @ 512×512")
def test_bench_matmul_fp32(benchmark):
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["label"] = "fp32 torch.mm"
    a, b = (t.float() for t in _operands())
    benchmark(torch.mm, a, b)


@pytest.mark.benchmark(group="matmul 256×512 @ 512×512")
def test_bench_matmul_int_mm(benchmark):
    benchmark.extra_info["label"] = "int8 torch._int_mm"
    benchmark(torch._int_mm, *_operands())


@pytest.mark.benchmark(group="matmul 256×512 @ 512×512")
def test_bench_matmul_ours(benchmark):
    benchmark.extra_info["label"] = "int8 ours (int_matmul)"
    benchmark(int_matmul, *_operands())


@pytest.mark.benchmark(group="matmul 256×512 @ 512×512")
def test_bench_matmul_fbgemm_quantized_linear(benchmark):
    benchmark.extra_info["label"] = "int8 torch.ops.quantized.linear (fbgemm)"
    a, b = _operands()
    x = torch._make_per_tensor_quantized_tensor(
        (a.int() + 128).to(torch.uint8), 0.1, 128
    )
    weight = torch._make_per_tensor_quantized_tensor(b.T.contiguous(), 0.1, 0)
    packed = torch.ops.quantized.linear_prepack(weight, None)
    benchmark(torch.ops.quantized.linear, x, packed, 1.0, 0)
