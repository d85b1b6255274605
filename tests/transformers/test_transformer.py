"""Verified against torch.nn.Transformer with the weights copied across (encoder,
decoder and full model, post-LN and pre-LN, with source padding, causal and memory
padding masks), values and gradients to 1e-5 in float32 and 1e-12 in float64; and, with
all-MiniLM-L6-v2's pretrained weights, against transformers.AutoModel's token states
and sentence-transformers' embeddings to 1e-5.

Also checked: every dropout draws as PyTorch's layers draw (bit for bit, with our
attention inside PyTorch's layer), PyTorch's inference fast path, odd shapes, a 300-long
sequence, extreme inputs, the sinusoids against their formula and their rotation
property, label smoothing against F.cross_entropy (float64, hypothesis, with ignored
targets) and its floor, the schedule's peak, step-by-step decoding against the
teacher-forced forward, padded batches against single rows, beam scores against
teacher-forced rescoring, an exhaustive beam against brute-force search, the number
words (30,000 numbers parsed back), a safetensors round trip with tied weights, the
bad-input errors, and a short demo run.
"""

import itertools
import math
import os
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, load_model, save_model
from torch import nn

from annotated.sequence.seq2seq import beam_search as stop_at_k_beam_search
from annotated.sequence.seq2seq import (
    BOS,
    EOS,
    PAD,
    Hypothesis,
    greedy_decode,
    sequence_log_probs,
)
from annotated.transformers.attention import MultiHeadAttention
from annotated.transformers.transformer import (
    HF_BERT_UNUSED,
    SENTENCES,
    TOKEN,
    VOCAB,
    Config,
    DecoderLayer,
    EncoderLayer,
    Transformer,
    TranslationTransformer,
    beam_search,
    decode_digits,
    embed_sentences,
    example,
    held_out_numbers,
    inverse_sqrt_schedule,
    label_smoothed_loss,
    load_sentence_encoder,
    main,
    make_batch,
    minilm_folder,
    number_to_words,
    sample_numbers,
    sinusoidal_positions,
    state_dict_from_hf_bert,
    state_dict_from_torch,
    train,
)

# Nothing may be downloaded: the pretrained model is read from the installed package.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

# PyTorch warns when its encoder cannot use nested tensors (pre-LN, odd head counts),
# and that nested tensors are a prototype when it does.
pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:enable_nested_tensor is True"),
    pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors"),
]


TOLERANCE = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float64: dict(rtol=1e-12, atol=1e-12),
}
D, HEADS, FF = 16, 4, 40  # FF = 40: not a multiple of d_model


def small_config(**changes) -> Config:
    settings = dict(
        d_model=D,
        nhead=HEADS,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dim_feedforward=FF,
        dropout=0.1,
    )
    return Config(**{**settings, **changes})


def torch_twin(
    config: Config, dtype: torch.dtype
) -> tuple[nn.Transformer, Transformer]:
    """A fresh nn.Transformer and ours with its weights, both in eval mode."""
    reference = nn.Transformer(
        config.d_model,
        config.nhead,
        config.num_encoder_layers,
        config.num_decoder_layers,
        config.dim_feedforward,
        config.dropout,
        activation=config.activation,
        batch_first=True,
        norm_first=config.norm_first,
        dtype=dtype,
    ).eval()
    ours = Transformer(config).to(dtype).eval()
    ours.load_state_dict(state_dict_from_torch(reference.state_dict()))
    return reference, ours


def inputs(batch, source_len, target_len, dtype, seed=0):
    """Random src, tgt and the padding masks (True = padding) of a ragged batch."""
    generator = torch.Generator().manual_seed(seed)
    src = torch.randn(batch, source_len, D, generator=generator, dtype=dtype)
    tgt = torch.randn(batch, target_len, D, generator=generator, dtype=dtype)
    source_lengths = torch.randint(1, source_len + 1, (batch,), generator=generator)
    target_lengths = torch.randint(1, target_len + 1, (batch,), generator=generator)
    source_lengths[0], target_lengths[0] = source_len, target_len  # one row full
    src_padding = torch.arange(source_len) >= source_lengths[:, None]
    tgt_padding = torch.arange(target_len) >= target_lengths[:, None]
    return src, tgt, src_padding, tgt_padding


def causal_mask(length: int) -> torch.Tensor:
    """PyTorch's causal `tgt_mask` as booleans, True = blocked, like the padding."""
    return torch.ones(length, length, dtype=torch.bool).triu(1)


def run_part(part, module, src, tgt, src_padding, tgt_padding, theirs: bool):
    """The output of the encoder, the decoder or the whole model, called with
    PyTorch's arguments (`theirs`) or ours."""
    causal = causal_mask(tgt.shape[1])
    if part == "encoder":
        if theirs:
            return module.encoder(src, src_key_padding_mask=src_padding)
        return module.encoder(src, src_padding)
    if part == "decoder":
        memory = src  # any [batch, S, d] tensor serves as the memory
        if theirs:
            return module.decoder(
                tgt,
                memory,
                tgt_mask=causal,
                tgt_key_padding_mask=tgt_padding,
                memory_key_padding_mask=src_padding,
                tgt_is_causal=True,
            )
        return module.decoder(tgt, memory, tgt_padding, src_padding)
    if theirs:
        return module(
            src,
            tgt,
            tgt_mask=causal,
            src_key_padding_mask=src_padding,
            tgt_key_padding_mask=tgt_padding,
            memory_key_padding_mask=src_padding,
            tgt_is_causal=True,
        )
    return module(src, tgt, src_padding, tgt_padding, src_padding)


def output_and_gradients(part, module, src, tgt, src_padding, tgt_padding, theirs):
    """The part's output, and the gradients of `<output, w>` for a fixed random `w`
    with respect to src, tgt and every parameter (under our names)."""
    src = src.detach().clone().requires_grad_()
    tgt = tgt.detach().clone().requires_grad_()
    module.zero_grad()
    output = run_part(part, module, src, tgt, src_padding, tgt_padding, theirs)
    weight = torch.randn(
        output.shape, generator=torch.Generator().manual_seed(9), dtype=output.dtype
    )
    (output * weight).sum().backward()
    grads = {
        name: p.grad for name, p in module.named_parameters() if p.grad is not None
    }
    if theirs:
        grads = state_dict_from_torch(grads)
    return output.detach(), src.grad, tgt.grad, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
@pytest.mark.parametrize("part", ["encoder", "decoder", "model"])
def test_matches_nn_transformer_values_and_gradients(part, norm_first, dtype):
    config = small_config(norm_first=norm_first)
    reference, ours = torch_twin(config, dtype)
    args = inputs(3, 7, 5, dtype)
    want = output_and_gradients(part, reference, *args, theirs=True)
    got = output_and_gradients(part, ours, *args, theirs=False)
    torch.testing.assert_close(got[0], want[0], **TOLERANCE[dtype])
    torch.testing.assert_close(got[1], want[1], **TOLERANCE[dtype])  # d/d src
    if part == "encoder":
        assert got[2] is None and want[2] is None  # the encoder never reads tgt
    else:
        torch.testing.assert_close(got[2], want[2], **TOLERANCE[dtype])
    assert got[3].keys() == want[3].keys() and got[3]
    for name, grad in got[3].items():
        torch.testing.assert_close(grad, want[3][name], **TOLERANCE[dtype], msg=name)


def test_gelu_and_no_final_norm_match_torch():
    """BERT's settings: GELU, and a stack without the final LayerNorm."""
    config = small_config(activation="gelu", final_norm=False)
    reference = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(
            D, HEADS, FF, activation="gelu", batch_first=True, dtype=torch.float64
        ),
        num_layers=2,
        enable_nested_tensor=False,
    ).eval()
    ours = Transformer(config).encoder.double().eval()
    ours.load_state_dict(state_dict_from_torch(reference.state_dict()))
    src, _, padding, _ = inputs(3, 6, 2, torch.float64)
    torch.testing.assert_close(
        ours(src, padding),
        reference(src, src_key_padding_mask=padding),
        **TOLERANCE[torch.float64],
    )


def test_real_positions_match_torchs_inference_fast_path():
    """In eval mode without autograd, PyTorch's post-LN encoder runs fused kernels on
    nested tensors and returns zeros at the padding; the real positions agree."""
    reference, ours = torch_twin(small_config(), torch.float32)
    src, _, padding, _ = inputs(4, 9, 2, torch.float32)
    with torch.no_grad():
        want = reference.encoder(src, src_key_padding_mask=padding)
        got = ours.encoder(src, padding)
    assert (want[padding] == 0).all() and (got[padding] != 0).any()
    torch.testing.assert_close(got[~padding], want[~padding], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_dropout_draws_as_pytorch_draws(kind, norm_first):
    """PyTorch's layer with our attention inside it, in training mode with the same
    seed, equals our layer bit for bit. (With PyTorch's own attention the masks
    differ: its attention returns a transposed view, and dropout fills a mask in
    memory order.)"""
    config = small_config(dropout=0.3, norm_first=norm_first)
    torch_layer = (
        nn.TransformerEncoderLayer
        if kind == "encoder"
        else (nn.TransformerDecoderLayer)
    )
    reference = torch_layer(
        D, HEADS, FF, 0.3, batch_first=True, norm_first=norm_first, dtype=torch.float64
    )
    ours = (EncoderLayer if kind == "encoder" else DecoderLayer)(config).double()
    ours.load_state_dict(state_dict_from_torch(reference.state_dict()))
    reference.self_attn = MultiHeadAttention.from_torch(reference.self_attn)
    if kind == "decoder":
        reference.multihead_attn = MultiHeadAttention.from_torch(
            reference.multihead_attn
        )
    src, tgt, src_padding, tgt_padding = inputs(3, 6, 5, torch.float64)
    causal = causal_mask(5)
    torch.manual_seed(7)
    if kind == "encoder":
        want = reference(src, src_key_padding_mask=src_padding)
    else:
        want = reference(
            tgt,
            src,
            tgt_mask=causal,
            tgt_key_padding_mask=tgt_padding,
            memory_key_padding_mask=src_padding,
            tgt_is_causal=True,
        )
    torch.manual_seed(7)
    if kind == "encoder":
        got = ours(src, src_padding)
    else:
        got = ours(tgt, src, tgt_padding, src_padding)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.manual_seed(8)
    if kind == "encoder":
        again = ours(src, src_padding)
    else:
        again = ours(tgt, src, tgt_padding, src_padding)
    assert not torch.allclose(again, got)  # dropout is on: another seed, other masks


@pytest.mark.parametrize(
    "batch, source_len, target_len, d_model, heads",
    [(1, 1, 1, 16, 4), (2, 3, 11, 12, 3), (2, 300, 300, 8, 2)],
    ids=["one token", "three heads of 4", "300 positions"],
)
def test_odd_shapes_and_long_sequences_match_torch(
    batch, source_len, target_len, d_model, heads
):
    config = small_config(d_model=d_model, nhead=heads, dim_feedforward=2 * d_model)
    reference, ours = torch_twin(config, torch.float64)
    generator = torch.Generator().manual_seed(3)
    src = torch.randn(batch, source_len, d_model, generator=generator).double()
    tgt = torch.randn(batch, target_len, d_model, generator=generator).double()
    padding = torch.zeros(batch, source_len, dtype=torch.bool)
    padding[1:, source_len // 2 + 1 :] = True
    causal = causal_mask(target_len)
    want = reference(
        src,
        tgt,
        tgt_mask=causal,
        src_key_padding_mask=padding,
        memory_key_padding_mask=padding,
        tgt_is_causal=True,
    )
    got = ours(src, tgt, padding, None, padding)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_extreme_inputs_match_torch_and_stay_finite():
    reference, ours = torch_twin(small_config(), torch.float64)
    src, tgt, src_padding, tgt_padding = inputs(2, 5, 4, torch.float64)
    args = (src * 1e6, tgt * 1e-6, src_padding, tgt_padding)
    want = run_part("model", reference, *args, theirs=True)
    got = run_part("model", ours, *args, theirs=False)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_state_dict_from_torch_renames_only_the_stacked_projections():
    reference, ours = torch_twin(small_config(), torch.float32)
    theirs = reference.state_dict()
    mapped = state_dict_from_torch(theirs)
    assert mapped.keys() == ours.state_dict().keys()
    stacked = [name for name in theirs if ".in_proj_" in name]
    assert len(stacked) == 2 * (2 + 2 * 2)  # weight and bias of 6 attention layers
    assert len(mapped) == len(theirs) + 2 * len(stacked)
    name = "decoder.layers.1.multihead_attn.in_proj_weight"
    torch.testing.assert_close(
        mapped["decoder.layers.1.multihead_attn.k_proj.weight"],
        theirs[name][D : 2 * D],
        rtol=0,
        atol=0,
    )


def test_transformer_rejects_bad_inputs():
    model = Transformer(small_config())
    src, tgt = torch.randn(2, 5, D), torch.randn(2, 4, D)
    with pytest.raises(ValueError, match="src must be"):
        model(torch.randn(5, D), tgt)
    with pytest.raises(ValueError, match=r"tgt \(2, 4, 8\) must be"):
        model(src, torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match="src_key_padding_mask must be a bool"):
        model(src, tgt, src_key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="memory_key_padding_mask must be a bool"):
        model(src, tgt, memory_key_padding_mask=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="divisible by nhead"):
        Config(d_model=10, nhead=4)
    with pytest.raises(ValueError, match="activation must be"):
        Config(activation="tanh")
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        Config(dropout=1.0)


# ----------------------------------------------------------------------- positions


def test_sinusoids_match_the_papers_formula():
    length, d = 10_000, 64
    table = sinusoidal_positions(length, d).numpy()
    pos = np.arange(length)[:, None]
    i = np.arange(d // 2)[None, :]
    angle = pos / 10000 ** (2 * i / d)
    np.testing.assert_allclose(table[:, 0::2], np.sin(angle), rtol=0, atol=1e-9)
    np.testing.assert_allclose(table[:, 1::2], np.cos(angle), rtol=0, atol=1e-9)
    assert np.abs(table).max() <= 1.0


@pytest.mark.parametrize("offset", [1, 7, 100])
def test_a_fixed_offset_is_one_rotation_for_every_position(offset):
    d = 32
    table = sinusoidal_positions(2048 + offset, d)
    frequency = 1.0 / 10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    cos, sin = torch.cos(offset * frequency), torch.sin(offset * frequency)
    s, c = table[:-offset, 0::2], table[:-offset, 1::2]  # [positions, d/2]
    shifted = table[offset:]
    torch.testing.assert_close(shifted[:, 0::2], cos * s + sin * c, rtol=0, atol=1e-9)
    torch.testing.assert_close(shifted[:, 1::2], -sin * s + cos * c, rtol=0, atol=1e-9)


def test_sinusoids_reject_an_odd_width():
    with pytest.raises(ValueError, match="even d_model"):
        sinusoidal_positions(10, 7)


# ------------------------------------------------------------------ label smoothing


@given(
    n=st.integers(1, 12),
    vocab=st.integers(3, 20),
    smoothing=st.floats(0.0, 0.9),
    seed=st.integers(0, 2**16),
)
def test_label_smoothing_matches_f_cross_entropy(n, vocab, smoothing, seed):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, vocab, generator=generator, dtype=torch.float64) * 3
    targets = torch.randint(0, vocab, (n,), generator=generator)
    targets[0] = 1 + targets[0] % (vocab - 1)  # at least one target is not PAD (0)
    logits.requires_grad_()
    ours = label_smoothed_loss(logits, targets, smoothing)
    (ours_grad,) = torch.autograd.grad(ours, logits)
    want = F.cross_entropy(logits, targets, ignore_index=PAD, label_smoothing=smoothing)
    (want_grad,) = torch.autograd.grad(want, logits)
    torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours_grad, want_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ignore_index", [-100, PAD, 7])
def test_label_smoothing_ignores_any_index_and_rejects_other_targets(ignore_index):
    """F.cross_entropy(label_smoothing=0.1, ignore_index=...) in float64, values and
    gradients, for an ignore index below, inside and above the 7 classes; a target
    that is neither a class nor ignored is a ValueError."""
    generator = torch.Generator().manual_seed(ignore_index % 97)
    vocab, smoothing = 7, 0.1
    logits = torch.randn(10, vocab, generator=generator, dtype=torch.float64) * 3
    targets = torch.randint(0, vocab, (10,), generator=generator)
    targets[[2, 5, 6]] = ignore_index
    logits.requires_grad_()
    ours = label_smoothed_loss(logits, targets, smoothing, ignore_index=ignore_index)
    (ours_grad,) = torch.autograd.grad(ours, logits)
    want = F.cross_entropy(
        logits, targets, ignore_index=ignore_index, label_smoothing=smoothing
    )
    (want_grad,) = torch.autograd.grad(want, logits)
    torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours_grad, want_grad, rtol=1e-12, atol=1e-12)
    assert ours_grad[[2, 5, 6]].abs().max() == 0  # ignored rows get no gradient
    for bad in {-100, -1, vocab, vocab + 1} - {ignore_index}:
        wrong = targets.clone()
        wrong[0] = bad
        with pytest.raises(ValueError, match=rf"classes 0\.\.6 .*got {bad}$"):
            label_smoothed_loss(logits, wrong, smoothing, ignore_index=ignore_index)


def test_label_smoothing_is_smallest_at_the_smoothed_target():
    """At p = q' the loss equals the entropy of q' (0.688 nats for 44 tokens and 0.1,
    the number the prose quotes) and its gradient vanishes."""
    vocab, smoothing = len(VOCAB), 0.1
    targets = torch.tensor([TOKEN["7"], TOKEN["thousand"]])
    smoothed = torch.full((2, vocab), smoothing / vocab, dtype=torch.float64)
    smoothed[torch.arange(2), targets] += 1 - smoothing
    logits = smoothed.log().requires_grad_()
    loss = label_smoothed_loss(logits, targets, smoothing)
    entropy = -(smoothed[0] * smoothed[0].log()).sum()
    torch.testing.assert_close(loss, entropy, rtol=1e-12, atol=1e-12)
    assert round(entropy.item(), 3) == 0.688
    (grad,) = torch.autograd.grad(loss, logits)
    assert grad.abs().max() < 1e-15
    with pytest.raises(ValueError, match="smoothing must be in"):
        label_smoothed_loss(logits, targets, 1.0)
    with pytest.raises(ValueError, match="logits must be"):
        label_smoothed_loss(logits[0], targets, 0.1)


# ------------------------------------------------------------------------ schedule


@pytest.mark.parametrize("d_model, warmup", [(512, 4000), (64, 400), (64, 1)])
def test_schedule_peaks_at_the_end_of_warmup(d_model, warmup):
    rates = [
        inverse_sqrt_schedule(s, d_model, warmup) for s in range(1, 3 * warmup + 2)
    ]
    peak = max(range(len(rates)), key=rates.__getitem__) + 1
    assert peak == warmup
    assert math.isclose(rates[peak - 1], d_model**-0.5 * warmup**-0.5, rel_tol=1e-15)
    for s in (1, warmup // 2 or 1):  # linear rise, then decay as s^-1/2
        assert math.isclose(rates[s - 1], rates[warmup - 1] * s / warmup, rel_tol=1e-12)
    s = 3 * warmup
    assert math.isclose(
        rates[s - 1], rates[warmup - 1] * (warmup / s) ** 0.5, rel_tol=1e-12
    )


def test_peaks_the_prose_quotes():
    assert round(inverse_sqrt_schedule(4000, 512, 4000), 7) == 6.988e-4
    assert inverse_sqrt_schedule(400, 64, 400) == 6.25e-3  # the demo's
    assert round(inverse_sqrt_schedule(2000, 64, 400), 4) == 2.8e-3  # its last step
    with pytest.raises(ValueError, match="count from 1"):
        inverse_sqrt_schedule(0, 512, 4000)


def test_training_uses_the_schedule_from_step_one():
    model = TranslationTransformer(tiny_config())
    history = train(model, 7, batch_size=4, warmup=3, probe=[5, 42], eval_every=3)
    want = [inverse_sqrt_schedule(s, model.config.d_model, 3) for s in range(1, 8)]
    assert history["lr"] == pytest.approx(want, rel=1e-12)
    # The probe is scored every eval_every steps and after the last one.
    assert history["probe_step"] == [3, 6, 7] and len(history["probe"]) == 3


LINEAR = "transformer.decoder.layers.0.linear1.weight"


def test_training_ends_on_the_average_of_the_last_checkpoints():
    """A run of n steps follows the first n steps of a longer one, so the average of
    steps 2, 4 and 6 can be rebuilt from three short runs."""

    def trained(steps: int, average: int = 1) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = TranslationTransformer(tiny_config())
        train(model, steps, batch_size=4, average=average, average_every=2)
        return model.state_dict()

    averaged = trained(6, average=3)
    states = [trained(steps) for steps in (2, 4, 6)]
    for name, tensor in averaged.items():
        mean = sum(state[name] for state in states) / 3
        torch.testing.assert_close(tensor, mean, rtol=1e-6, atol=1e-7, msg=name)
    assert not torch.allclose(averaged[LINEAR], states[2][LINEAR])


# ---------------------------------------------------------------------------- task


def words_to_number(words: str) -> int:
    """The reading a person would give: the inverse of number_to_words."""
    values = {w: i for i, w in enumerate(number_to_words(i) for i in range(20))}
    values |= {number_to_words(10 * t): 10 * t for t in range(2, 10)}
    total = current = 0
    for word in words.split():
        if word == "thousand":
            total, current = 1000 * current, 0
        elif word == "hundred":
            current *= 100
        elif word != "and":
            current += values[word]
    return total + current


def test_number_words_read_back():
    """Every number below 20,000, and every 97th above it."""
    numbers = itertools.chain(range(20_000), range(20_000, 1_000_000, 97))
    for number in numbers:
        assert words_to_number(number_to_words(number)) == number, number


@pytest.mark.parametrize(
    "number, words",
    [
        (0, "zero"),
        (21, "twenty one"),
        (100, "one hundred"),
        (1005, "one thousand and five"),
        (1100, "one thousand one hundred"),
        (305012, "three hundred and five thousand and twelve"),
        (
            999999,
            "nine hundred and ninety nine thousand nine hundred and ninety nine",
        ),
    ],
)
def test_number_words_follow_british_usage(number, words):
    assert number_to_words(number) == words


def test_held_out_numbers_never_appear_in_training():
    held = held_out_numbers(450)
    assert [len(v) for v in held.values()] == [450] * 4
    assert all(len(str(n)) == digits for digits, v in held.items() for n in v)
    exclude = frozenset(n for v in held.values() for n in v)
    drawn = sample_numbers(20_000, random.Random(0), exclude)
    assert not exclude & set(drawn)
    assert {len(str(n)) for n in drawn} == set(range(1, 7))
    # d digits with probability d/21: of 21,000 free draws, about 1,000 single digits
    # (sd 31), 0 among them.
    free = sample_numbers(21_000, random.Random(1), frozenset())
    single = [n for n in free if n < 10]
    assert 880 < len(single) < 1120 and set(single) == set(range(10))
    with pytest.raises(ValueError, match="number must be an int"):
        number_to_words(1_000_000)
    with pytest.raises(ValueError, match="per_length"):
        held_out_numbers(0)


def test_batch_layout():
    batch = make_batch([7, 305012])
    assert batch.source_lengths.tolist() == [1, 7]
    assert batch.source[0].tolist() == [TOKEN["seven"]] + [PAD] * 6
    assert batch.target_in[0].tolist() == [BOS, TOKEN["7"]] + [PAD] * 5
    assert batch.target_out[0].tolist() == [TOKEN["7"], EOS] + [PAD] * 5
    assert [VOCAB[t] for t in batch.target_out[1].tolist()] == [*"305012", "<eos>"]
    assert (PAD, BOS, EOS) == (0, 1, 2) and len(VOCAB) == 44
    with pytest.raises(ValueError, match="numbers must not be empty"):
        make_batch([])


def test_decode_digits_reads_up_to_the_first_eos():
    tokens = [BOS, TOKEN["3"], TOKEN["seven"], TOKEN["0"], EOS, TOKEN["7"], PAD]
    assert decode_digits(tokens) == "30"


# ---------------------------------------------------------- model and decoding


def tiny_config(**changes) -> Config:
    settings = dict(
        d_model=16,
        nhead=2,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dim_feedforward=32,
        dropout=0.0,
        vocab_size=len(VOCAB),
        max_len=32,
    )
    return Config(**{**settings, **changes})


@pytest.fixture(scope="module")
def half_trained() -> TranslationTransformer:
    """A model trained for 120 steps, then in float64: unsure enough that greedy and
    beam search disagree on some numbers."""
    torch.manual_seed(0)
    model = TranslationTransformer(tiny_config())
    train(model, 120, batch_size=32, warmup=50, eval_every=120)
    return model.double().eval()


NUMBERS = [7, 305012, 12, 4000, 999, 17705, 80, 120000]


def test_step_by_step_decoding_equals_the_teacher_forced_forward(half_trained):
    batch = make_batch(NUMBERS)
    logits = half_trained(batch.source, batch.source_lengths, batch.target_in)
    state = half_trained.start(batch.source, batch.source_lengths)
    for t in range(batch.target_in.shape[1]):
        step_logits, state = half_trained.step(batch.target_in[:, t], state)
        torch.testing.assert_close(step_logits, logits[:, t], rtol=1e-10, atol=1e-10)


def test_a_padded_batch_gives_each_row_what_it_gets_alone(half_trained):
    batch = make_batch(NUMBERS)
    logits = half_trained(batch.source, batch.source_lengths, batch.target_in)
    together = greedy_decode(half_trained, batch.source, batch.source_lengths, 8)
    for row, number in enumerate(NUMBERS):
        alone = make_batch([number])
        single = half_trained(alone.source, alone.source_lengths, alone.target_in)
        width = alone.target_in.shape[1]
        torch.testing.assert_close(
            logits[row, :width], single[0], rtol=1e-10, atol=1e-10
        )
        (hypothesis,) = greedy_decode(
            half_trained, alone.source, alone.source_lengths, 8
        )
        assert hypothesis.tokens == together[row].tokens


@pytest.mark.parametrize("beam_size, alpha", [(1, 0.0), (3, 0.0), (4, 0.6)])
def test_beam_scores_are_teacher_forced_log_probs(half_trained, beam_size, alpha):
    batch = make_batch(NUMBERS)
    args = (half_trained, batch.source, batch.source_lengths)
    found = beam_search(*args, beam_size, 8, alpha)
    rescored = sequence_log_probs(*args, found)
    torch.testing.assert_close(
        torch.tensor([h.score for h in found], dtype=torch.float64),
        rescored,
        rtol=1e-10,
        atol=1e-10,
    )


def test_beam_of_one_never_scores_below_greedy(half_trained):
    numbers = held_out_numbers(25)[5]
    batch = make_batch(numbers)
    args = (half_trained, batch.source, batch.source_lengths)
    greedy = greedy_decode(*args, max_length=8)
    beam = beam_search(*args, 1, 8)
    assert all(b.score >= g.score - 1e-12 for b, g in zip(beam, greedy))
    assert any(b.tokens != g.tokens for b, g in zip(beam, greedy))  # not a copy


def test_stopping_at_k_finished_hypotheses_cuts_the_beam_short(half_trained):
    """The sequence chapter's beam stops once K hypotheses have ended; on this
    label-smoothed model that returns less probable outputs for a good share of the 100
    (42 and 57 on two machines, whose arithmetic trains slightly different models),
    never more probable ones."""
    numbers = [n for group in held_out_numbers(25).values() for n in group]
    batch = make_batch(numbers)
    args = (half_trained, batch.source, batch.source_lengths, 4, 8)
    ours = beam_search(*args)
    stopped = stop_at_k_beam_search(*args)
    assert all(s.score <= o.score + 1e-12 for s, o in zip(stopped, ours))
    shorter = sum(s.score < o.score - 1e-9 for s, o in zip(stopped, ours))
    assert 25 <= shorter <= 75


@pytest.mark.parametrize("alpha", [0.0, 3.0, 10.0])
def test_exhaustive_beam_finds_the_most_probable_output(alpha):
    """With five tokens (two writable besides <eos>) and at most 4 steps, a beam of
    16 holds every prefix, and must find the best of the 15 outputs that end and the
    16 that run to the limit, which brute force enumerates. Untrained, the model
    likes to end at once; a length penalty of 10 makes the long outputs win, so that
    a search that stops too early is caught. At 3, the one-token source still ends
    at once, and that wins only because |y| counts the <eos>."""
    torch.manual_seed(3)
    model = TranslationTransformer(tiny_config(vocab_size=5)).double().eval()
    source = torch.tensor([[3, 4, 3], [4, 0, 0]])
    lengths = torch.tensor([3, 1])
    found = beam_search(model, source, lengths, 16, 4, length_penalty=alpha)
    candidates = [
        Hypothesis(list(tokens), 0.0, length < 4)
        for length in range(5)
        for tokens in itertools.product([3, 4], repeat=length)
    ]
    for row in range(2):
        scores = sequence_log_probs(
            model,
            source[row : row + 1].expand(len(candidates), -1),
            lengths[row : row + 1].expand(len(candidates)),
            candidates,
        ).tolist()
        normalised = [
            score / ((5 + len(h.tokens) + h.ended) / 6) ** alpha
            for score, h in zip(scores, candidates)
        ]
        best = max(range(len(candidates)), key=normalised.__getitem__)
        assert found[row].tokens == candidates[best].tokens
        assert found[row].ended == candidates[best].ended
        assert math.isclose(found[row].score, scores[best], abs_tol=1e-10)
        if alpha == 10.0:
            assert len(found[row].tokens) >= 2


def test_tied_weights_survive_a_safetensors_round_trip(tmp_path):
    model = TranslationTransformer(tiny_config()).eval()
    assert model.output.weight is model.embedding.weight
    save_model(model, tmp_path / "model.safetensors")
    assert (
        len(load_file(tmp_path / "model.safetensors")) == len(model.state_dict()) - 1
    )  # the tied matrix is stored once
    other = TranslationTransformer(tiny_config()).eval()
    load_model(other, tmp_path / "model.safetensors")
    assert other.output.weight is other.embedding.weight
    batch = make_batch(NUMBERS)
    args = (batch.source, batch.source_lengths, batch.target_in)
    torch.testing.assert_close(other(*args), model(*args), rtol=0, atol=0)


def test_translation_model_rejects_bad_inputs():
    model = TranslationTransformer(tiny_config())
    batch = make_batch([12, 305012])
    source, lengths, target = batch.source, batch.source_lengths, batch.target_in
    with pytest.raises(TypeError, match="source must hold int64"):
        model(source.int(), lengths, target)
    with pytest.raises(ValueError, match="target_in must be a 2-D"):
        model(source, lengths, target[0])
    with pytest.raises(ValueError, match="more than max_len 32"):
        model(source.repeat(1, 5), lengths, target)
    with pytest.raises(ValueError, match=r"ids must lie in 0\.\.43"):
        model(source + 40, lengths, target)
    with pytest.raises(ValueError, match="lengths must lie in"):
        model(source, lengths + 5, target)
    with pytest.raises(ValueError, match="one per row"):
        model(source, lengths[:1], target)
    with pytest.raises(ValueError, match="target_in has 1 rows but source has 2"):
        model(source, lengths, target[:1])
    with pytest.raises(ValueError, match="steps, batch_size, eval_every, average"):
        train(model, 5, average=0)
    with pytest.raises(ValueError, match="max_length must be"):
        beam_search(model, source, lengths, 2, 0)
    state = model.start(source, lengths)
    with pytest.raises(ValueError, match="exceed max_len"):
        for _ in range(33):
            _, state = model.step(torch.tensor([BOS, BOS]), state)


def test_example_runs():
    model, args = example()
    assert model(*args).shape == (3, 7, len(VOCAB))


# ----------------------------------------------------------- all-MiniLM-L6-v2

SENTENCE_SET = [
    "Hi.",
    "The quick brown fox jumps over the lazy dog, then sleeps for an hour.",
    "Attention is all you need.",
    "Transformers process every position of a sentence in parallel, attending to "
    "all the others at once.",
    "café naïve résumé",
]


@pytest.fixture(scope="module")
def minilm():
    return load_sentence_encoder()


@pytest.fixture(scope="module")
def references():
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    folder = str(minilm_folder())
    return (
        AutoModel.from_pretrained(folder).eval(),
        SentenceTransformer(folder, device="cpu"),
    )


def tokenized(tokenizer, sentences):
    encodings = tokenizer.encode_batch(sentences)
    ids = torch.tensor([e.ids for e in encodings])
    mask = torch.tensor([e.attention_mask for e in encodings])
    return ids, mask


def test_mapping_uses_every_pretrained_tensor_but_the_pooler():
    hf_state = load_file(minilm_folder() / "model.safetensors")
    mapped = state_dict_from_hf_bert(hf_state, 6)
    assert len(mapped) == len(hf_state) - len(HF_BERT_UNUSED) == 101
    del hf_state["encoder.layer.5.output.dense.bias"]
    with pytest.raises(ValueError, match="missing.*layer.5.output.dense.bias"):
        state_dict_from_hf_bert(hf_state, 6)


def test_token_states_match_transformers_automodel(minilm, references):
    model, tokenizer = minilm
    hf_model, _ = references
    ids, mask = tokenized(tokenizer, SENTENCE_SET)
    assert len(set(mask.sum(dim=1).tolist())) == len(SENTENCE_SET)  # all lengths
    with torch.no_grad():
        want = hf_model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = model(ids, mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-5)


def test_token_states_match_in_float64(minilm, references):
    model, tokenizer = minilm
    hf_model, _ = references
    ids, mask = tokenized(tokenizer, SENTENCE_SET[:3])
    with torch.no_grad():
        want = hf_model.double()(input_ids=ids, attention_mask=mask).last_hidden_state
        got = model.double()(ids, mask)
    model.float(), hf_model.float()
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], rtol=1e-10, atol=1e-10)


def test_sentence_embeddings_match_sentence_transformers(minilm, references):
    model, tokenizer = minilm
    _, sbert = references
    long = " ".join(["word"] * 400)  # 400 tokens: both truncate at 256
    sentences = SENTENCE_SET + SENTENCES + [long]
    got = embed_sentences(model, tokenizer, sentences)
    want = sbert.encode(sentences, convert_to_tensor=True, batch_size=4)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(len(sentences)))
    alone = torch.cat([embed_sentences(model, tokenizer, [s]) for s in sentences[:5]])
    torch.testing.assert_close(got[:5], alone, rtol=1e-6, atol=1e-6)


def test_bert_rejects_bad_inputs(minilm):
    model, tokenizer = minilm
    ids, mask = tokenized(tokenizer, ["a b c"])
    with pytest.raises(ValueError, match="more than the 512 positions"):
        model(ids.repeat(1, 200), mask.repeat(1, 200))
    with pytest.raises(ValueError, match="attention_mask must have"):
        model(ids, mask[:, :-1])
    with pytest.raises(ValueError, match="input_ids must be"):
        model(ids[0], mask[0])
    with pytest.raises(ValueError, match="non-empty list"):
        embed_sentences(model, tokenizer, [])


# ---------------------------------------------------------------------------- demo


def test_demo_learns_and_agrees_with_torch(tmp_path):
    metrics = main(
        [
            "--steps",
            "150",
            "--warmup",
            "300",
            "--test-per-length",
            "10",
            "--eval-every",
            "75",
            "--average",
            "2",
            "--average-every",
            "25",
            "--out",
            str(tmp_path),
        ]
    )
    assert metrics["torch_gap"] < 1e-5
    assert metrics["loss"] < 0.5 * metrics["first_loss"]  # 4.1 → 1.5 in 150 steps
    assert metrics["token_accuracy"] > 0.55  # 0.69
    assert metrics["accuracy"] > 0.4  # 29 of 40 held-out numbers exactly right
    assert metrics["paraphrase_cosine"] > metrics["unrelated_cosine"] + 0.3
    for name in ("training.png", "attention.png", "similarity.png"):
        assert (tmp_path / name).exists()


# ---------------------------------------------------------------------- benchmarks

BENCH = Config(
    d_model=128,
    nhead=4,
    num_encoder_layers=2,
    num_decoder_layers=2,
    dim_feedforward=512,
    dropout=0.0,
)


def bench_inputs():
    torch.manual_seed(0)
    reference, ours = torch_twin(BENCH, torch.float32)
    src, tgt = torch.randn(16, 32, 128), torch.randn(16, 32, 128)
    padding = torch.arange(32) >= torch.randint(16, 33, (16,))[:, None]
    causal = causal_mask(32)
    theirs = dict(
        tgt_mask=causal,
        src_key_padding_mask=padding,
        memory_key_padding_mask=padding,
        tgt_is_causal=True,
    )
    return reference, ours, src, tgt, padding, theirs


@pytest.mark.benchmark(group="forward, batch 16 × 32 tokens, d 128, 2+2 layers")
def test_bench_forward_torch(benchmark):
    benchmark.extra_info["label"] = "nn.Transformer (inference fast path)"
    benchmark.extra_info["baseline"] = True
    reference, _, src, tgt, _, theirs = bench_inputs()
    with torch.no_grad():
        benchmark(lambda: reference(src, tgt, **theirs))


@pytest.mark.benchmark(group="forward, batch 16 × 32 tokens, d 128, 2+2 layers")
def test_bench_forward_ours(benchmark):
    benchmark.extra_info["label"] = "ours"
    _, ours, src, tgt, padding, _ = bench_inputs()
    with torch.no_grad():
        benchmark(lambda: ours(src, tgt, padding, None, padding))


@pytest.mark.benchmark(group="forward + backward, batch 16 × 32 tokens, d 128")
def test_bench_training_step_torch(benchmark):
    benchmark.extra_info["label"] = "nn.Transformer"
    benchmark.extra_info["baseline"] = True
    reference, _, src, tgt, _, theirs = bench_inputs()
    reference.train()
    benchmark(lambda: reference(src, tgt, **theirs).square().mean().backward())


@pytest.mark.benchmark(group="forward + backward, batch 16 × 32 tokens, d 128")
def test_bench_training_step_ours(benchmark):
    benchmark.extra_info["label"] = "ours"
    _, ours, src, tgt, padding, _ = bench_inputs()
    ours.train()
    benchmark(lambda: ours(src, tgt, padding, None, padding).square().mean().backward())
