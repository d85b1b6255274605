"""Verified against Optimal Brain Quantisation solved with explicit inverses of the
shrinking Hessian in float64 (codes equal, weights to 1e-10), for every block size.

Also checked: the error the OBS formula predicts equals the measured output error
‖δW X‖²/n (to 1e-9 relative), dampening adds λ·mean(diag H), an enormous dampening
turns GPTQ into round-to-nearest, the min–max grid against hand-computed values,
every group on its own grid, GPTQ's output error below 0.7× RTN's at 4 and 3 bits on
correlated inputs, and the bad-input errors. Benchmarks: lazy blocks of 128 and 32
against the plain column loop (block 1) and RTN on a 512×512 layer.
"""

import pytest
import torch

import annotated.llm.gptq as lesson
from annotated.llm.bpe import train as train_tokenizer
from annotated.llm.gpt2 import GPT2, GPT2Config
from annotated.llm.gptq import (
    dataflow,
    dequantize,
    example,
    gptq,
    grid,
    hessian,
    quantize,
    quantize_model,
    rtn,
)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def correlated_inputs(samples: int, features: int, seed: int) -> torch.Tensor:
    """Inputs whose features are mixed by a random matrix with a decaying spectrum."""
    generator = torch.Generator().manual_seed(seed)
    spectrum = torch.logspace(0, -1.5, features, dtype=torch.float64)  # [features]
    mixing = torch.randn(features, features, generator=generator, dtype=torch.float64)
    z = torch.randn(samples, features, generator=generator, dtype=torch.float64)
    return (z * spectrum) @ mixing  # [samples, features]


def obq_reference(weight, h, bits, group_size=None):
    """OBQ in the fixed column order: at step q, invert H restricted to the free
    columns q.. explicitly, apply the OBS update, move on."""
    w = weight.clone()
    columns = w.shape[1]
    group_size = group_size or columns
    codes = torch.zeros_like(w)
    for q in range(columns):
        if q % group_size == 0:
            scale, zero = grid(w[:, q : q + group_size], bits)
        h_inverse = torch.linalg.inv(h[q:, q:])  # [free, free]
        codes[:, q] = quantize(w[:, q], scale, zero, bits)
        error = (w[:, q] - dequantize(codes[:, q], scale, zero)) / h_inverse[0, 0]
        w[:, q:] -= error[:, None] * h_inverse[0][None, :]
    return codes, w


@pytest.mark.parametrize("shape", [(1, 4), (2, 5), (3, 12)])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_matches_obq_with_explicit_inverses(shape, bits):
    torch.manual_seed(sum(shape) + bits)
    weight = torch.randn(shape, dtype=torch.float64)
    h = hessian(correlated_inputs(64, shape[1], seed=bits))
    codes, want = obq_reference(weight, h, bits)
    for block_size in (1, 2, shape[1]):
        quantized, _ = gptq(weight, h, bits, block_size=block_size, damp=0.0)
        assert torch.equal(quantized.codes.double(), codes)
        torch.testing.assert_close(quantized.dequantize(), want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("block_size", [1, 2, 5, 12])
def test_matches_obq_with_groups_for_any_block_size(block_size):
    torch.manual_seed(3)
    weight = torch.randn(4, 12, dtype=torch.float64)
    h = hessian(correlated_inputs(64, 12, seed=3))
    codes, want = obq_reference(weight, h, 3, group_size=4)
    quantized, _ = gptq(weight, h, 3, group_size=4, block_size=block_size, damp=0.0)
    assert torch.equal(quantized.codes.double(), codes)
    torch.testing.assert_close(quantized.dequantize(), want, rtol=0, atol=1e-10)


def test_block_sizes_agree_on_a_larger_layer():
    torch.manual_seed(4)
    weight = torch.randn(16, 64, dtype=torch.float64)
    h = hessian(correlated_inputs(256, 64, seed=4))
    results = [gptq(weight, h, 3, 16, block_size=b)[0] for b in (1, 2, 24, 64)]
    for other in results[1:]:
        assert torch.equal(other.codes, results[0].codes)
        torch.testing.assert_close(other.scale, results[0].scale, rtol=0, atol=1e-12)


def test_predicted_error_is_the_measured_output_error():
    torch.manual_seed(5)
    weight = torch.randn(6, 20, dtype=torch.float64)
    x = correlated_inputs(100, 20, seed=5)  # [samples, in]
    quantized, predicted = gptq(weight, hessian(x), 3, block_size=8, damp=0.0)
    delta = quantized.dequantize() - weight  # [out, in]
    measured = (x @ delta.T).square().sum(0) / len(x)  # [out]
    torch.testing.assert_close(predicted, measured, rtol=1e-9, atol=0)


def test_damp_adds_a_fraction_of_the_mean_diagonal():
    torch.manual_seed(6)
    weight = torch.randn(5, 10, dtype=torch.float64)
    h = hessian(correlated_inputs(40, 10, seed=6))
    damped = h + 0.1 * h.diagonal().mean() * torch.eye(10, dtype=torch.float64)
    got, got_error = gptq(weight, h, 3, damp=0.1)
    want, want_error = gptq(weight, damped, 3, damp=0.0)
    assert torch.equal(got.codes, want.codes)
    torch.testing.assert_close(got_error, want_error, rtol=1e-12, atol=0)


def test_enormous_dampening_is_round_to_nearest():
    torch.manual_seed(7)
    weight = torch.randn(8, 32, dtype=torch.float64)
    h = hessian(correlated_inputs(64, 32, seed=7))
    for group_size in (None, 8):
        quantized, _ = gptq(weight, h, 3, group_size, damp=1e12)
        assert torch.equal(quantized.codes, rtn(weight, 3, group_size).codes)


def test_grid_matches_hand_computed_values():
    weights = torch.tensor(
        [[-1.0, 0.5, 2.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [-4.0, -2.0, -1.0]]
    )
    scale, zero = grid(weights, bits=2)
    # Ranges widened to contain 0; the zero row gets [-1, 1].
    torch.testing.assert_close(scale, torch.tensor([1.0, 1.0, 2 / 3, 4 / 3]))
    torch.testing.assert_close(zero, torch.tensor([1.0, 0.0, 2.0, 3.0]))
    codes = quantize(weights, scale[:, None], zero[:, None], bits=2)
    # round(0.5) = 0 and round(-1.5) = -2 (halves to even), as torch.round does.
    assert codes.tolist() == [[0, 1, 3], [1, 2, 3], [2, 2, 2], [0, 1, 2]]
    values = dequantize(codes, scale[:, None], zero[:, None])
    torch.testing.assert_close(values[0], torch.tensor([-1.0, 0.0, 2.0]))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_every_group_lies_on_its_own_grid(bits):
    torch.manual_seed(8)
    weight = torch.randn(8, 64) * torch.linspace(0.1, 3, 64)  # groups differ in range
    h = hessian(correlated_inputs(128, 64, seed=8)).float()
    for quantized in (gptq(weight, h, bits, 16)[0], rtn(weight, bits, 16)):
        assert quantized.scale.shape == quantized.zero.shape == (8, 4)
        assert quantized.codes.dtype == torch.uint8
        assert int(quantized.codes.max()) <= 2**bits - 1
        values = quantized.dequantize().reshape(8, 4, 16)
        steps = values / quantized.scale[..., None] + quantized.zero[..., None]
        torch.testing.assert_close(steps, steps.round(), rtol=0, atol=1e-4)
        # Wider groups get coarser grids: the scales grow along the row.
        assert (quantized.scale[:, -1] > 2 * quantized.scale[:, 0]).all()


def test_rtn_rounds_each_weight_to_the_nearest_level():
    torch.manual_seed(9)
    weight = torch.randn(6, 24, dtype=torch.float64)
    quantized = rtn(weight, 3, 8)
    scale = quantized.scale.repeat_interleave(8, dim=1)  # [6, 24]
    error = (quantized.dequantize() - weight).abs()
    assert (error <= scale / 2 + 1e-12).all()


@pytest.mark.parametrize("bits", [4, 3])
def test_gptq_output_error_is_well_below_rtn(bits):
    torch.manual_seed(10)
    weight = torch.randn(64, 128, dtype=torch.float64) * 0.05
    x = correlated_inputs(512, 128, seed=10)  # [samples, in]
    reference = x @ weight.T  # [samples, out]

    def error(quantized):
        return (x @ quantized.dequantize().double().T - reference).square().sum().item()

    ours = error(gptq(weight.float(), hessian(x).float(), bits)[0])
    baseline = error(rtn(weight, bits))
    assert ours < 0.7 * baseline


def test_float32_and_float64_agree():
    torch.manual_seed(11)
    weight = torch.randn(16, 48, dtype=torch.float64)
    h = hessian(correlated_inputs(256, 48, seed=11))
    q64, _ = gptq(weight, h, 4, 16)
    q32, _ = gptq(weight.float(), h.float(), 4, 16)
    assert q32.scale.dtype == torch.float32
    assert (q32.codes != q64.codes).float().mean() < 0.02  # rare ties flip


def test_bad_input_errors():
    weight, h = torch.randn(4, 8), torch.eye(8)
    with pytest.raises(ValueError, match=r"bits must be an int in 2\.\.8"):
        gptq(weight, h, bits=1)
    with pytest.raises(ValueError, match=r"bits must be an int in 2\.\.8"):
        rtn(weight, bits=9)
    with pytest.raises(ValueError, match="bits"):
        gptq(weight, h, bits=True)
    with pytest.raises(ValueError, match="group_size must be a positive int dividing"):
        gptq(weight, h, group_size=3)
    with pytest.raises(ValueError, match="group_size"):
        rtn(weight, 4, group_size=0)
    with pytest.raises(ValueError, match="inputs' feature dim must equal weight's in"):
        gptq(weight, hessian(torch.randn(10, 6)))
    with pytest.raises(ValueError, match="weight must be"):
        gptq(torch.randn(8), h)
    with pytest.raises(TypeError, match="floating-point"):
        gptq(torch.ones(4, 8, dtype=torch.long), h)
    with pytest.raises(TypeError, match="floating-point"):
        hessian(torch.ones(3, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="block_size"):
        gptq(weight, h, block_size=0)
    with pytest.raises(ValueError, match="damp"):
        gptq(weight, h, damp=-0.1)
    with pytest.raises(ValueError, match="not positive definite"):
        gptq(weight, torch.zeros(8, 8), damp=0.0)
    with pytest.raises(ValueError, match="method"):
        quantize_model(tiny_model(), torch.zeros(1, 4, dtype=torch.long), "awq", 4)


def test_example_and_dataflow():
    fn, args = example()
    quantized, predicted = fn(*args)
    assert quantized.codes.shape == (8, 32) and quantized.scale.shape == (8, 2)
    assert (predicted > 0).all()
    nodes, edges = dataflow((quantized, predicted))
    ids = {node for node, _ in nodes}
    assert all(src in ids and dst in ids for src, dst, _ in edges)


def tiny_model(vocab_size: int = 40) -> GPT2:
    config = GPT2Config(
        vocab_size=vocab_size, n_positions=32, n_embd=64, n_layer=2, n_head=2
    )
    torch.manual_seed(0)
    return GPT2(config).eval()


def test_quantize_model_is_sequential_and_touches_only_the_blocks():
    model = tiny_model()
    original = {n: p.clone() for n, p in model.named_parameters()}
    windows = torch.randint(0, 40, (16, 32), generator=torch.Generator().manual_seed(0))
    errors = quantize_model(model, windows, "gptq", 3)
    assert list(errors) == [
        f"h.{i}.{part}"
        for i in range(2)
        for part in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    ]
    for name, parameter in model.named_parameters():
        changed = not torch.equal(parameter, original[name])
        assert changed == (
            name.endswith(".weight") and ("attn.c" in name or "mlp.c" in name)
        )
    # Every quantised weight has at most 2**3 distinct values per row.
    weight = model.h[1].mlp.c_proj.weight
    assert max(len(row.unique()) for row in weight) <= 8
    # Sequential: a layer's Hessian comes from the inputs it sees once every layer
    # before it (in its block, and in the blocks before) is quantised.
    quantised = dict(model.named_parameters())
    for layer_name, earlier in [
        ("h.0.attn.c_proj", ["h.0.attn.c_attn"]),
        ("h.1.attn.c_attn", [f"h.0.{part}" for part in ("attn.c_attn", "attn.c_proj",
                                                        "mlp.c_fc", "mlp.c_proj")]),
    ]:  # fmt: skip
        mixed = tiny_model()
        with torch.no_grad():
            for name in earlier:
                mixed.get_parameter(f"{name}.weight").copy_(quantised[f"{name}.weight"])
        layer, seen = mixed.get_submodule(layer_name), []
        hook = layer.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
        with torch.no_grad():
            mixed(windows)
        hook.remove()
        h = hessian(seen[0]).double()
        expected = gptq(original[f"{layer_name}.weight"].double(), h, 3)[0]
        torch.testing.assert_close(
            quantised[f"{layer_name}.weight"].double(),
            expected.dequantize(),
            rtol=0,
            atol=1e-6,
        )
        # The error it reports is the layer's relative output error on those inputs,
        # |X ΔWᵀ|² / |X Wᵀ|², here without the Hessian.
        x = seen[0].double().reshape(-1, seen[0].shape[-1])  # [samples, in]
        weight = original[f"{layer_name}.weight"].double()  # [out, in]
        delta = quantised[f"{layer_name}.weight"].double() - weight
        relative = (x @ delta.T).square().sum() / (x @ weight.T).square().sum()
        assert errors[layer_name] == pytest.approx(relative.item(), rel=1e-6)


def test_demo_short_run(tmp_path, monkeypatch):
    # The demo's small GPT is trained once and cached; a fresh machine would train it
    # for a minute, so the test hands the demo a tiny model instead.
    text = "the quick brown fox jumps over the lazy dog. " * 40
    tokenizer = train_tokenizer(text, 20)
    model = tiny_model(tokenizer.vocabulary_size)
    pages = [text] * 2
    monkeypatch.setattr(
        lesson, "small_gpt", lambda device: (model.to(device), tokenizer, pages, pages)
    )
    metrics = lesson.main(
        ["--calibration", "8", "--bits", "3", "--device", "cpu", "--out", str(tmp_path)]
    )
    assert set(metrics) >= {"perplexity_fp32", "perplexity_rtn3", "perplexity_gptq3"}
    assert metrics["loss_rtn3"] != metrics["loss_fp32"]
    assert metrics["layer_error_gptq3"] < 0.7 * metrics["layer_error_rtn3"]
    assert (tmp_path / "gptq.png").exists()


def bench_layer():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(512, 512, generator=generator) * 0.02
    mixing = torch.randn(512, 512, generator=generator) / 512**0.5
    x = torch.randn(1024, 512, generator=generator) @ mixing
    return weight, hessian(x)


@pytest.mark.benchmark(group="quantise a 512×512 layer to 4 bits")
def test_bench_gptq_lazy_blocks(benchmark):
    benchmark.extra_info["label"] = "GPTQ, lazy blocks of 128"
    weight, h = bench_layer()
    benchmark(gptq, weight, h, 4, None, 128)


@pytest.mark.benchmark(group="quantise a 512×512 layer to 4 bits")
def test_bench_gptq_lazy_blocks_of_32(benchmark):
    benchmark.extra_info["label"] = "GPTQ, lazy blocks of 32"
    weight, h = bench_layer()
    benchmark(gptq, weight, h, 4, None, 32)


@pytest.mark.benchmark(group="quantise a 512×512 layer to 4 bits")
def test_bench_gptq_column_loop(benchmark):
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["label"] = "GPTQ, plain column loop (block 1)"
    weight, h = bench_layer()
    benchmark(gptq, weight, h, 4, None, 1)


@pytest.mark.benchmark(group="quantise a 512×512 layer to 4 bits")
def test_bench_rtn(benchmark):
    benchmark.extra_info["label"] = "round-to-nearest"
    weight, _ = bench_layer()
    benchmark(rtn, weight, 4)
