"""Verified against torch.nn.utils.fusion.fuse_conv_bn_eval and eager PyTorch in float64
(folded outputs to 1e-12), and ONNX Runtime's fp32 outputs against eager PyTorch (to
1e-5) at every graph optimisation level; int8 is checked by its agreement with fp32.

The benchmarks time eager PyTorch (the baseline) against ONNX Runtime fp32 and dynamic
int8 on the same digits CNN at batch 1 and 32, one thread each.
"""

import importlib.util

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from annotated.cnn.deployment import (
    LEVELS,
    build_tensorrt_engine,
    example,
    export_onnx,
    fold_conv_bn,
    fold_model,
    main,
    make_cnn,
    make_session,
    quantize_int8,
    run_session,
    run_tensorrt,
)
from tools.literate.figures import short_band


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomised_bn(bn: nn.BatchNorm2d, seed: int) -> nn.BatchNorm2d:
    """Give `bn` non-trivial affine parameters and running statistics, in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    n = bn.num_features
    with torch.no_grad():
        bn.weight.copy_(torch.randn(n, generator=generator))
        bn.bias.copy_(torch.randn(n, generator=generator))
        bn.running_mean.copy_(torch.randn(n, generator=generator))
        bn.running_var.copy_(torch.rand(n, generator=generator) * 3 + 0.1)
    return bn.eval()


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 6, 3, padding=1),
        nn.Conv2d(4, 6, (3, 1), stride=2, bias=False),
        nn.Conv2d(4, 8, 3, groups=2, dilation=2, padding=2, padding_mode="reflect"),
    ],
    ids=["plain", "no-bias-strided", "grouped-dilated-reflect"],
)
def test_fold_matches_torch_fusion_and_eager_float64(conv):
    torch.manual_seed(0)
    conv = conv.double().eval()
    bn = randomised_bn(nn.BatchNorm2d(conv.out_channels).double(), 1)
    folded = fold_conv_bn(conv, bn)
    reference = fuse_conv_bn_eval(conv, bn)
    torch.testing.assert_close(folded.weight, reference.weight, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(folded.bias, reference.bias, rtol=1e-12, atol=1e-12)
    x = torch.randn(2, conv.in_channels, 9, 7, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), bn(conv(x)), rtol=1e-12, atol=1e-12)
    assert not conv.weight.requires_grad or conv.weight.grad is None


def test_fold_of_a_bn_without_gamma_and_beta_matches_torch():
    """`BatchNorm2d(affine=False)` has no weight or bias; torch's fusion reads them as
    1 and 0, and so does the fold."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3).double().eval()
    bn = nn.BatchNorm2d(4, affine=False).double()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(4, dtype=torch.float64))
        bn.running_var.copy_(torch.rand(4, dtype=torch.float64) + 0.5)
    bn.eval()
    folded = fold_conv_bn(conv, bn)
    reference = fuse_conv_bn_eval(conv, bn)
    torch.testing.assert_close(folded.weight, reference.weight, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(folded.bias, reference.bias, rtol=1e-12, atol=1e-12)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), bn(conv(x)), rtol=1e-12, atol=1e-12)


def test_fold_with_extreme_statistics():
    """A channel with tiny variance scales its filter by ~1e4; large means shift the
    bias far: the fold still agrees in float64."""
    conv = nn.Conv2d(2, 3, 3).double().eval()
    bn = nn.BatchNorm2d(3, eps=1e-8).double().eval()
    with torch.no_grad():
        bn.running_var.copy_(torch.tensor([1e-8, 1.0, 1e6], dtype=torch.float64))
        bn.running_mean.copy_(torch.tensor([1e3, -1e3, 0.0], dtype=torch.float64))
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(
            fold_conv_bn(conv, bn)(x), bn(conv(x)), rtol=1e-10, atol=1e-8
        )


def test_fold_model_removes_every_bn_and_keeps_the_function():
    torch.manual_seed(0)
    model = make_cnn(8).double()
    for layer in model:
        if isinstance(layer, nn.BatchNorm2d):
            randomised_bn(layer, 2)
    model.eval()
    folded = fold_model(model)
    assert len(folded) == len(model) - 2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded)
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-12, atol=1e-12)


def test_fold_bad_input():
    conv, bn = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)
    with pytest.raises(TypeError, match="conv must be nn.Conv2d"):
        fold_conv_bn(nn.Linear(2, 4), bn)
    with pytest.raises(TypeError, match="bn must be nn.BatchNorm2d"):
        fold_conv_bn(conv, nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match="5 features but conv has 4"):
        fold_conv_bn(conv, nn.BatchNorm2d(5).eval())
    with pytest.raises(ValueError, match="eval mode"):
        fold_conv_bn(conv, bn.train())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A CNN with random batch-norm statistics, exported in fp32 and int8."""
    torch.manual_seed(0)
    model = make_cnn(8)
    for layer in model:
        if isinstance(layer, nn.BatchNorm2d):
            randomised_bn(layer, 3)
    model.eval()
    folder = tmp_path_factory.mktemp("onnx")
    fp32 = export_onnx(model, folder / "fp32.onnx")
    int8 = quantize_int8(fp32, folder / "int8.onnx")
    return model, fp32, int8, folder


@pytest.mark.parametrize("batch", [1, 7, 32])
@pytest.mark.parametrize("level", list(LEVELS))
def test_onnxruntime_matches_eager_at_every_level(exported, level, batch):
    model, fp32, _, _ = exported
    x = np.random.default_rng(batch).random((batch, 1, 8, 8), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = run_session(make_session(fp32, level), x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_optimisation_levels_rewrite_the_graph(exported):
    _, fp32, _, folder = exported
    exported_ops = [n.op_type for n in onnx.load(str(fp32)).graph.node]
    assert "BatchNormalization" not in exported_ops  # folded by the exporter
    assert exported_ops.count("Conv") == 2
    counts = {}
    for level in LEVELS:
        make_session(fp32, level, save_to=folder / f"{level}.onnx")
        ops = [n.op_type for n in onnx.load(str(folder / f"{level}.onnx")).graph.node]
        counts[level] = len(ops)
        if level in ("extended", "all"):
            assert "Relu" not in ops  # fused into the convolutions
    assert counts["disable"] == len(exported_ops) == 8
    assert counts["extended"] == 6


def test_int8_model_is_quantised_smaller_and_agrees(exported):
    model, fp32, int8, _ = exported
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"} <= ops
    assert int8.stat().st_size < 0.8 * fp32.stat().st_size
    x = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
    fp32_logits = run_session(make_session(fp32), x)
    int8_logits = run_session(make_session(int8), x)
    scale = np.abs(fp32_logits).max()
    assert np.abs(int8_logits - fp32_logits).max() < 0.1 * scale
    assert not np.allclose(int8_logits, fp32_logits, atol=1e-6)  # really int8


def test_session_bad_input(exported):
    _, fp32, _, _ = exported
    with pytest.raises(ValueError, match="level must be one of"):
        make_session(fp32, "maximum")
    with pytest.raises(ValueError, match=r"shape \[batch, 1, 8, 8\]"):
        run_session(make_session(fp32), np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="NumPy array"):
        run_session(make_session(fp32), torch.zeros(2, 1, 8, 8))


HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(
    not (HAS_TENSORRT and torch.cuda.is_available()), reason="needs TensorRT and a GPU"
)
def test_tensorrt_matches_eager(exported):
    model, fp32, _, _ = exported
    engine = build_tensorrt_engine(fp32, max_batch=32, fp16=False)
    x = torch.rand(32, 1, 8, 8)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(
        run_tensorrt(engine, x).cpu(), expected, rtol=1e-3, atol=1e-3
    )


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_tensorrt_missing_is_a_clear_error(exported):
    with pytest.raises(RuntimeError, match="TensorRT is not installed"):
        build_tensorrt_engine(exported[1])


def test_example_runs():
    fn, args = example()
    assert fn(*args).shape == (4, 10)


def test_demo_trains_folds_and_exports(tmp_path):
    # The short run's accuracy over the stored seeds is its expected band.
    metric, args, low, high = short_band("annotated/cnn/deployment.py")
    results = main([*args, "--out", str(tmp_path)])
    assert results["accuracy eager"] > 0.85
    assert low <= results[metric] <= high  # the short run's band over stored seeds
    assert results["fold max abs diff"] < 1e-4
    assert results["accuracy folded"] == results["accuracy eager"]
    assert results["accuracy ORT fp32"] == results["accuracy eager"]
    assert abs(results["accuracy ORT int8"] - results["accuracy eager"]) < 0.03
    assert results["nodes extended"] < results["nodes disable"]
    assert (tmp_path / "latency.png").exists()


# ## Benchmarks: eager torch against ONNX Runtime, at batch 1 and 32


@pytest.fixture(scope="module")
def bench_setup(exported):
    model, fp32, int8, _ = exported
    sessions = {"fp32": make_session(fp32), "int8": make_session(int8)}
    return model, sessions


def _images(batch):
    return np.random.default_rng(0).random((batch, 1, 8, 8), dtype=np.float32)


def _bench_eager(benchmark, model, batch):
    x = torch.from_numpy(_images(batch))
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["label"] = "eager torch"

    def call():
        with torch.inference_mode():
            return model(x)

    benchmark(call)


def _bench_ort(benchmark, session, name, batch):
    x = _images(batch)
    benchmark.extra_info["label"] = f"ONNX Runtime {name}"
    benchmark(run_session, session, x)


@pytest.mark.benchmark(group="digits CNN, batch 1")
def test_bench_eager_batch1(benchmark, bench_setup):
    _bench_eager(benchmark, bench_setup[0], 1)


@pytest.mark.benchmark(group="digits CNN, batch 1")
def test_bench_ort_fp32_batch1(benchmark, bench_setup):
    _bench_ort(benchmark, bench_setup[1]["fp32"], "fp32", 1)


@pytest.mark.benchmark(group="digits CNN, batch 1")
def test_bench_ort_int8_batch1(benchmark, bench_setup):
    _bench_ort(benchmark, bench_setup[1]["int8"], "int8", 1)


@pytest.mark.benchmark(group="digits CNN, batch 32")
def test_bench_eager_batch32(benchmark, bench_setup):
    _bench_eager(benchmark, bench_setup[0], 32)


@pytest.mark.benchmark(group="digits CNN, batch 32")
def test_bench_ort_fp32_batch32(benchmark, bench_setup):
    _bench_ort(benchmark, bench_setup[1]["fp32"], "fp32", 32)


@pytest.mark.benchmark(group="digits CNN, batch 32")
def test_bench_ort_int8_batch32(benchmark, bench_setup):
    _bench_ort(benchmark, bench_setup[1]["int8"], "int8", 32)
