"""The gguf package's reference quantisers `gguf.quants` for Q8_0, Q4_0, Q4_1 and Q5_0,
bit for bit (exact equality of the packed bytes and of the dequantised float32 weights),
and through a GGUF file written and read back with gguf's writer and reader.

The inputs are random (several shapes and scales, and hypothesis), extreme (zeros,
constant blocks, huge outliers, a negative maximum, ties, exact halves) and the weights
of a tiny GPT-2 built from a config. The nibble and fifth-bit layouts are also checked
against the format description by hand, independently of gguf.
"""

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGML_QUANT_SIZES
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import annotated.llm.ggml_quant as lesson
from annotated.llm.bpe import train as train_tokenizer
from annotated.llm.gpt2 import GPT2, GPT2Config
from annotated.llm.ggml_quant import (
    FORMATS,
    byte_characters,
    dataflow,
    dequantize,
    example,
    model_from_gguf,
    quantize,
    quantize_model,
    read_gguf,
    write_gguf,
)

torch.set_num_threads(1)
NAMES = list(FORMATS)


def assert_matches_gguf(x: np.ndarray, qtype: str) -> None:
    """Our bytes and our dequantised weights equal gguf's for the float32 array `x`."""
    reference = gguf_quantize(x, GGMLQuantizationType[qtype])
    ours = quantize(torch.from_numpy(x), qtype)
    assert ours.dtype == torch.uint8 and ours.shape == reference.shape
    np.testing.assert_array_equal(ours.numpy(), reference)
    restored = dequantize(ours, qtype)
    assert restored.dtype == torch.float32 and restored.shape == x.shape
    np.testing.assert_array_equal(
        restored.numpy(), gguf_dequantize(reference, GGMLQuantizationType[qtype])
    )


@pytest.mark.parametrize("qtype", NAMES)
@pytest.mark.parametrize("shape", [(32,), (1, 32), (3, 64), (2, 3, 96), (17, 256)])
def test_random_weights_match_gguf_bit_for_bit(qtype, shape):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape) * rng.exponential(1.0, size=shape)
    assert_matches_gguf(x.astype(np.float32), qtype)


@pytest.mark.parametrize("qtype", NAMES)
@pytest.mark.parametrize("scale", [1e-6, 0.02, 1.0, 300.0])
def test_scales_from_tiny_to_large_match_gguf(qtype, scale):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((8, 128)) * scale).astype(np.float32)
    assert_matches_gguf(x, qtype)


# Values away from float32's subnormals: there ggml's reciprocal 1/d overflows and the
# C and NumPy references cast NaN to an integer, which no two platforms agree on.
finite_weights = st.floats(-1e4, 1e4, width=32, allow_subnormal=False).map(
    lambda v: v if abs(v) > 1e-20 else 0.0
)


@given(
    qtype=st.sampled_from(NAMES),
    x=arrays(
        np.float32,
        st.tuples(st.integers(1, 4), st.integers(1, 3).map(lambda k: 32 * k)),
        elements=finite_weights,
    ),
)
def test_hypothesis_weights_match_gguf(qtype, x):
    assert_matches_gguf(x, qtype)


def extreme_blocks() -> np.ndarray:
    """One block per row: the cases where a rounding or a sign choice shows."""
    rng = np.random.default_rng(3)
    small = rng.standard_normal(32) * 0.01
    rows = [
        np.zeros(32),  # d = 0: id must be 0, not inf
        np.full(32, 0.7),  # one value: the maximum, everywhere
        np.full(32, -3.0),
        np.r_[small[:31], 1e6],  # an outlier: d's fp16 overflows for Q4/Q5
        np.r_[small[:5], 1e30, small[6:]],  # and for Q8_0
        np.r_[small[:10], -5.0, small[11:]],  # the signed maximum is negative
        np.r_[2.0, -2.0, small[2:]],  # a tie in magnitude: the first wins
        np.r_[-2.0, 2.0, small[2:]],
        np.r_[127.0, np.arange(31) - 15.5],  # Q8_0: d = 1, halves round away
        np.r_[8.0, np.arange(31) / 4 - 3.75],  # Q4_0: d = -1, quarter steps
        np.r_[-16.0, np.arange(31) - 15.5],  # Q5_0: d = 1, halves round up
        np.r_[np.arange(31) * 0.5, 15.0 + 0.25],  # Q4_1: min 0, d = 1, halves
        np.r_[np.full(31, 1e-3), -1e-3],  # every weight but one of one sign
    ]
    return np.stack(rows).astype(np.float32)  # [13, 32]


@pytest.mark.parametrize("qtype", NAMES)
def test_extreme_blocks_match_gguf(qtype):
    with np.errstate(invalid="ignore", over="ignore"):
        assert_matches_gguf(extreme_blocks(), qtype)


def test_halves_round_away_from_zero_in_q8_0_and_up_in_q4_0():
    # Q8_0 with d = 1: 2.5 → 3 and -2.5 → -3 (roundf), not to the even 2 and -2.
    x = torch.zeros(32)
    x[0], x[1], x[2] = 127.0, 2.5, -2.5
    q = quantize(x, "Q8_0")[2:].view(torch.int8)
    assert q[:3].tolist() == [127, 3, -3]
    # Q4_0 with d = -1 (signed max 8): x·id = -x; -2.5 → -2 and 2.5 → 3, so
    # x = 2.5 decodes to 2 and x = -2.5 to -3.
    x = torch.zeros(32)
    x[0], x[1], x[2] = 8.0, 2.5, -2.5
    restored = dequantize(quantize(x, "Q4_0"), "Q4_0")
    assert restored[:3].tolist() == [8.0, 2.0, -3.0]


def test_q4_0_layout_by_hand():
    # Signed max -8 gives d = 1 and id = 1, so q = x + 8 for integers x in [-8, 7].
    values = torch.tensor([-8, *range(-7, 8), *range(7, -9, -1)], dtype=torch.float32)
    q = (values + 8).to(torch.uint8).tolist()  # [32] in [0, 15]
    data = quantize(values, "Q4_0")
    assert data.tolist()[:2] == [0x00, 0x3C]  # fp16 1.0 = 0x3C00, low byte first
    assert data.tolist()[2:] == [q[j] | (q[j + 16] << 4) for j in range(16)]


def test_q5_0_fifth_bits_by_hand():
    # Signed max -16 gives d = 1, so q = x + 16 for integers x in [-16, 15].
    values = torch.tensor([-16, *range(-15, 16)], dtype=torch.float32)
    q = (values + 16).long().tolist()  # [32] in [0, 31]
    data = quantize(values, "Q5_0").tolist()
    assert data[:2] == [0x00, 0x3C]
    qh = int.from_bytes(bytes(data[2:6]), "little")
    assert [(qh >> i) & 1 for i in range(32)] == [v >> 4 for v in q]
    assert data[6:] == [(q[j] & 15) | ((q[j + 16] & 15) << 4) for j in range(16)]


def test_q4_1_stores_the_minimum():
    values = torch.linspace(-1.0, 2.0, 32)
    data = quantize(values, "Q4_1")
    d, m = data[:2].view(torch.float16), data[2:4].view(torch.float16)
    assert m.item() == torch.tensor(-1.0).half().item()
    assert d.item() == torch.tensor(3.0 / 15).half().item()
    assert dequantize(data, "Q4_1")[[0, -1]].tolist() == pytest.approx([-1, 2], 1e-3)


def test_bits_per_weight_from_the_layout():
    assert {n: f.bits_per_weight for n, f in FORMATS.items()} == {
        "Q8_0": 8.5,
        "Q4_0": 4.5,
        "Q4_1": 5.0,
        "Q5_0": 5.5,
    }
    for name, block_format in FORMATS.items():
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType[name]]
        assert (block, size) == (32, block_format.block_bytes)


def test_round_trip_error_is_within_half_a_step():
    # Half a step, plus the fp16 rounding of d (and m): up to |q| · 2^-11 steps. The
    # signed-maximum formats clamp the opposite side one step short: up to a step.
    torch.manual_seed(0)
    x = torch.randn(64, 256)
    blocks = x.reshape(-1, 32)  # [512, 32]
    steps = {
        "Q8_0": blocks.abs().amax(1) / 127,
        "Q5_0": blocks.abs().amax(1) / 16,
        "Q4_0": blocks.abs().amax(1) / 8,
        "Q4_1": (blocks.amax(1) - blocks.amin(1)) / 15,
    }
    for qtype, step in steps.items():
        error = (dequantize(quantize(x, qtype), qtype) - x).abs().reshape(-1, 32)
        most = 1.0 if qtype in ("Q4_0", "Q5_0") else 0.5
        bound = step * (most + 0.07)  # [512]
        assert (error.amax(1) <= bound).all(), qtype
        assert (error.amax(1) > 0.3 * step).all(), qtype  # a real rounding, not 0


def test_other_float_dtypes_quantise_as_float32():
    torch.manual_seed(1)
    x = torch.randn(3, 64, dtype=torch.float64)
    for qtype in NAMES:
        assert torch.equal(quantize(x, qtype), quantize(x.float(), qtype))


def tiny_model_and_tokenizer():
    text = "the quick brown fox jumps over the lazy dog. " * 20 + "héllo wörld\n\t"
    tokenizer = train_tokenizer(text, 30)
    config = GPT2Config(
        vocab_size=tokenizer.vocabulary_size,
        n_positions=32,
        n_embd=64,
        n_layer=2,
        n_head=2,
        dropout=0.0,
    )
    torch.manual_seed(0)
    return GPT2(config).eval(), tokenizer


@pytest.mark.parametrize("qtype", NAMES)
def test_real_gpt2_weights_match_gguf(qtype):
    model, _ = tiny_model_and_tokenizer()
    matrices = 0
    for name, tensor in model.state_dict().items():
        if tensor.dim() == 2:
            assert_matches_gguf(tensor.numpy(), qtype)
            matrices += 1
    assert matrices == 2 + 4 * 2  # wte, wpe and four per block


def test_byte_characters_are_gpt2s_bytes_to_unicode():
    """The round trip below reads tokens back with our own table, so it could not see
    a wrong one: the table is checked against Hugging Face's copy of GPT-2's."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    assert byte_characters() == bytes_to_unicode()
    assert byte_characters()[ord(" ")] == "Ġ" and byte_characters()[161] == "¡"


@pytest.mark.parametrize("qtype", ["F32", *NAMES])
def test_gguf_file_round_trip(tmp_path, qtype):
    model, tokenizer = tiny_model_and_tokenizer()
    path = write_gguf(tmp_path / "tiny.gguf", model, tokenizer, qtype)
    metadata, tensors = read_gguf(path)
    assert metadata["general.architecture"] == "gpt2"
    assert metadata["gpt2.context_length"] == 32
    assert metadata["gpt2.embedding_length"] == 64
    assert metadata["gpt2.feed_forward_length"] == 256
    assert metadata["gpt2.attention.head_count"] == 2
    assert metadata["gpt2.block_count"] == 2
    assert metadata["tokenizer.ggml.model"] == "gpt2"
    tokens = metadata["tokenizer.ggml.tokens"]
    assert len(tokens) == tokenizer.vocabulary_size
    table = {c: b for b, c in byte_characters().items()}
    for i, token in enumerate(tokens[:-1]):
        assert bytes(table[c] for c in token) == tokenizer.token_bytes[i]
    assert tokens[-1] == "<|endoftext|>"
    assert metadata["tokenizer.ggml.eos_token_id"] == tokenizer.vocabulary_size - 1
    types = metadata["tokenizer.ggml.token_type"]  # the special token is CONTROL
    assert types == [gguf.TokenType.NORMAL] * (len(tokens) - 1) + [
        gguf.TokenType.CONTROL
    ]
    file_types = {
        "F32": gguf.LlamaFileType.ALL_F32,
        "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
        "Q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
        "Q5_0": gguf.LlamaFileType.MOSTLY_Q5_0,
    }
    assert metadata["general.file_type"] == file_types[qtype]

    assert len(tensors) == len(model.state_dict())
    kind, shape, data = tensors["blk.1.ffn_up.weight"]  # c_fc: [256, 64] ours
    assert shape == (64, 256)  # ggml order: the row length first
    if qtype == "F32":
        assert kind == "F32"
        np.testing.assert_array_equal(data, model.h[1].mlp.c_fc.weight.detach())
    else:
        assert kind == qtype
        expected = quantize(model.h[1].mlp.c_fc.weight, qtype)
        np.testing.assert_array_equal(data, expected.numpy())
    assert tensors["position_embd.weight"][0] == "F32"  # as llama.cpp: never quantised
    assert tensors["blk.0.attn_norm.weight"][0] == "F32"
    assert "output.weight" not in tensors  # tied: the token embedding serves

    restored = model_from_gguf(path)
    expected = model if qtype == "F32" else quantize_model(model, qtype)
    idx = torch.randint(0, tokenizer.vocabulary_size, (2, 32))
    with torch.no_grad():
        assert torch.equal(restored(idx), expected(idx))


def test_quantize_model_changes_exactly_the_matrices():
    model, _ = tiny_model_and_tokenizer()
    quantised = quantize_model(model, "Q4_0")
    state = quantised.state_dict()
    for name, tensor in model.state_dict().items():
        changed = not torch.equal(tensor, state[name])
        assert changed == (tensor.dim() == 2 and name != "wpe.weight"), name
        if changed:
            assert torch.equal(
                state[name], dequantize(quantize(tensor, "Q4_0"), "Q4_0")
            )
    # The head is tied: its logits are dot products with the quantised embedding.
    idx = torch.randint(0, model.config.vocab_size, (1, 8))
    with torch.no_grad():
        hidden = quantised.ln_f(torch.randn(1, 8, 64))
        head = torch.nn.functional.linear(hidden, state["wte.weight"])
        assert torch.equal(
            head, torch.nn.functional.linear(hidden, quantised.wte.weight)
        )
        assert quantised(idx).shape == (1, 8, model.config.vocab_size)


def test_bad_inputs_raise_naming_the_argument():
    with pytest.raises(ValueError, match="multiple of 32.*Q4_0.*\\(3, 100\\)"):
        quantize(torch.randn(3, 100), "Q4_0")
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize(torch.tensor(1.0), "Q8_0")
    with pytest.raises(ValueError, match="'Q8_0', 'Q4_0', 'Q4_1', 'Q5_0'.*'Q3_K'"):
        quantize(torch.randn(32), "Q3_K")
    with pytest.raises(ValueError, match="qtype must be one of"):
        dequantize(torch.zeros(18, dtype=torch.uint8), "q4_0")
    with pytest.raises(TypeError, match="weights must be a float tensor.*int64"):
        quantize(torch.arange(32), "Q4_0")
    with pytest.raises(
        TypeError, match="weights must be a float torch.Tensor, got ndarray"
    ):
        quantize(np.zeros(32, np.float32), "Q4_0")
    with pytest.raises(TypeError, match="data must be a uint8 tensor.*float32"):
        dequantize(torch.zeros(18), "Q4_0")
    with pytest.raises(ValueError, match="18 bytes a block.*\\(2, 20\\)"):
        dequantize(torch.zeros(2, 20, dtype=torch.uint8), "Q4_0")
    model, tokenizer = tiny_model_and_tokenizer()
    with pytest.raises(ValueError, match="qtype must be one of"):
        write_gguf("unused.gguf", model, tokenizer, "Q6_K")
    with pytest.raises(ValueError, match="tokenizer has 257 tokens but the model's"):
        write_gguf("unused.gguf", model, train_tokenizer("a b", 0), "F32")


def test_a_gguf_file_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "llama.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="llama.gguf: not a gpt2 GGUF file"):
        model_from_gguf(path)


def test_example_and_dataflow():
    fn, args = example()
    output = fn(*args)
    assert output.shape == (4, 2 * 18)
    nodes, edges = dataflow(output)
    ids = {node for node, _ in nodes}
    assert all(src in ids and dst in ids for src, dst, _ in edges)
    assert "[8, 32]" in dict(nodes)["blocks"]


def test_demo_measures_every_format(tmp_path, monkeypatch):
    # The demo's small GPT is trained once and cached; a fresh machine would train it
    # for a minute, so the test hands the demo the tiny model instead.
    model, tokenizer = tiny_model_and_tokenizer()
    pages = ["the lazy dog jumps over the quick brown fox. " * 8] * 3
    monkeypatch.setattr(
        lesson, "small_gpt", lambda device: (model.to(device), tokenizer, pages, pages)
    )
    metrics = lesson.main(["--windows", "4", "--device", "cpu", "--out", str(tmp_path)])
    assert metrics["bits_per_weight_Q4_0"] == 4.5
    assert metrics["bits_per_weight_Q8_0"] == 8.5
    assert metrics["weight_error_F32"] == 0.0
    errors = [metrics[f"weight_error_{n}"] for n in ("Q8_0", "Q5_0", "Q4_0")]
    assert 0 < errors[0] < errors[1] < errors[2] < 0.2
    # A random-init model is nearly uniform: quantising it moves perplexity little.
    f32 = metrics["perplexity_F32"]
    assert 0.9 * model.config.vocab_size < f32 < 1.1 * model.config.vocab_size
    assert abs(metrics["perplexity_Q8_0"] - f32) < 1e-3 * f32
    for name in ("layouts.png", "perplexity.png", "small-gpt-Q4_0.gguf"):
        assert (tmp_path / name).exists()


def bench_weights() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.standard_normal((512, 512)) * 0.02).astype(np.float32)


@pytest.mark.benchmark(group="quantise 512×512 to Q4_0")
def test_bench_q4_0_gguf(benchmark):
    benchmark.extra_info["label"] = "gguf.quants.quantize (NumPy)"
    benchmark.extra_info["baseline"] = True
    x = bench_weights()
    benchmark(gguf_quantize, x, GGMLQuantizationType.Q4_0)


@pytest.mark.benchmark(group="quantise 512×512 to Q4_0")
def test_bench_q4_0_ours(benchmark):
    benchmark.extra_info["label"] = "ours (torch)"
    x = torch.from_numpy(bench_weights())
    benchmark(quantize, x, "Q4_0")


@pytest.mark.benchmark(group="quantise 512×512 to Q8_0")
def test_bench_q8_0_gguf(benchmark):
    benchmark.extra_info["label"] = "gguf.quants.quantize (NumPy)"
    benchmark.extra_info["baseline"] = True
    x = bench_weights()
    benchmark(gguf_quantize, x, GGMLQuantizationType.Q8_0)


@pytest.mark.benchmark(group="quantise 512×512 to Q8_0")
def test_bench_q8_0_ours(benchmark):
    benchmark.extra_info["label"] = "ours (torch)"
    x = torch.from_numpy(bench_weights())
    benchmark(quantize, x, "Q8_0")
