"""Verified against torch.nn.functional.scaled_dot_product_attention and, with the
weights copied across, torch.nn.MultiheadAttention, in float64 to 1e-12 (values and
gradients), under padding, causal, additive and combined masks.

Also checked: fully masked rows (zero output and zero gradient, as torch's SDPA, where
nn.MultiheadAttention's weights path gives NaN), dropout (bit-equal to torch's under the
same seed; each weight zeroed or scaled by exactly 1/(1-p)), random shapes and masks
with hypothesis, extreme scores, a 2048-long sequence, kdim/vdim, both layouts, a
safetensors round trip, the numbers the prose quotes, and the demo's accuracy.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn

from tools.literate.figures import short_band
from annotated.transformers.attention import (
    PAD,
    AssociativeRecall,
    MultiHeadAttention,
    example,
    main,
    recall_batch,
    scaled_dot_product_attention,
)

EXACT = dict(rtol=1e-12, atol=1e-12)
INF = float("-inf")


pytestmark = pytest.mark.usefixtures("one_thread")


def randn(*shape, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=dtype)


def run(fn, inputs, seed=1):
    """`fn(*inputs)`'s first output and the gradients of `<output, w>` for a random
    `w` with respect to every input."""
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    output = fn(*inputs)
    output = output[0] if isinstance(output, tuple) else output
    weight = randn(*output.shape, seed=seed, dtype=output.dtype)
    grads = torch.autograd.grad((output * weight).sum(), inputs)
    return output.detach(), grads


def assert_same(ours, reference, **tolerance):
    tolerance = tolerance or EXACT
    torch.testing.assert_close(ours[0], reference[0], **tolerance)
    for a, b in zip(ours[1], reference[1], strict=True):
        torch.testing.assert_close(a, b, **tolerance)


# ------------------------------------------------- scaled_dot_product_attention

B, H, L, S, E, EV = 2, 3, 5, 7, 6, 4  # E = 6: 1/sqrt(E) is not a power of two


def qkv(target=L, source=S, seed=0):
    return (
        randn(B, H, target, E, seed=seed),
        randn(B, H, source, E, seed=seed + 1),
        randn(B, H, source, EV, seed=seed + 2),
    )


def masks(target=L, source=S):
    """Every mask kind, in F.scaled_dot_product_attention's convention."""
    generator = torch.Generator().manual_seed(5)
    lengths = torch.tensor([source, 3])
    padding = torch.arange(source) < lengths[:, None]  # [B, S]: True = real key
    return {
        "bool [L, S]": torch.rand(target, source, generator=generator) > 0.3,
        "key padding [B, 1, 1, S]": padding[:, None, None, :],
        "bool [B, H, L, S]": torch.rand(B, H, target, source, generator=generator)
        > 0.5,
        "float [L, S]": randn(target, source, seed=6),
        "float -inf padding": torch.zeros(
            B, 1, 1, source, dtype=torch.float64
        ).masked_fill(~padding[:, None, None, :], INF),
        "bool [1, S]": (torch.arange(source) % 3 != 1)[None],
    }


@pytest.mark.parametrize("kind", list(masks()))
def test_sdpa_matches_torch_for_every_mask_kind(kind):
    mask = masks()[kind]
    inputs = (*qkv(), mask) if mask.is_floating_point() else qkv()

    def ours(q, k, v, *float_mask):
        return scaled_dot_product_attention(
            q, k, v, float_mask[0] if float_mask else mask
        )

    def reference(q, k, v, *float_mask):
        used = float_mask[0] if float_mask else mask
        return F.scaled_dot_product_attention(q, k, v, attn_mask=used)

    # For a float mask the gradient with respect to the mask itself is compared too:
    # a learned additive bias (ALiBi, T5's relative positions) trains through it.
    assert_same(run(ours, inputs), run(reference, inputs))


@pytest.mark.parametrize("target, source", [(5, 5), (3, 7), (7, 3), (1, 9)])
def test_sdpa_causal_is_top_left_like_torch(target, source):
    inputs = qkv(target, source)
    ours = run(
        lambda q, k, v: scaled_dot_product_attention(q, k, v, is_causal=True), inputs
    )
    reference = run(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), inputs
    )
    assert_same(ours, reference)


def test_sdpa_combines_causal_with_a_mask():
    """torch refuses attn_mask with is_causal; ours must equal torch given the AND."""
    padding = masks()["key padding [B, 1, 1, S]"]
    combined = padding & torch.ones(L, S, dtype=torch.bool).tril()
    inputs = qkv()
    ours = run(
        lambda q, k, v: scaled_dot_product_attention(q, k, v, padding, is_causal=True),
        inputs,
    )
    reference = run(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=combined),
        inputs,
    )
    assert_same(ours, reference)


def test_sdpa_weights_are_the_softmax_of_the_masked_scores():
    q, k, v = qkv()
    mask = masks()["bool [L, S]"]
    output, weights = scaled_dot_product_attention(q, k, v, mask, scale=0.7)
    scores = (q @ k.transpose(-2, -1) * 0.7).masked_fill(~mask, INF)
    torch.testing.assert_close(weights, torch.softmax(scores, dim=-1), **EXACT)
    torch.testing.assert_close(output, weights @ v, **EXACT)
    assert (weights[..., ~mask] == 0).all()
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.7)
    torch.testing.assert_close(output, reference, **EXACT)


@st.composite
def attention_problems(draw):
    batch = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=2)))
    target, source = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    width, value_width = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    kind = draw(st.sampled_from(["none", "bool", "float", "causal", "causal+bool"]))
    # a high density of blocked pairs makes fully masked rows common
    blocked = draw(st.floats(0.0, 0.9))
    seed = draw(st.integers(0, 2**16))
    return batch, target, source, width, value_width, kind, blocked, seed


@given(attention_problems())
def test_sdpa_matches_torch_on_random_shapes_and_masks(problem):
    batch, target, source, width, value_width, kind, blocked, seed = problem
    generator = torch.Generator().manual_seed(seed)
    inputs = (
        randn(*batch, target, width, seed=seed),
        randn(*batch, source, width, seed=seed + 1),
        randn(*batch, source, value_width, seed=seed + 2),
    )
    allowed = torch.rand(*batch, target, source, generator=generator) >= blocked
    mask, reference_mask, causal = None, None, kind.startswith("causal")
    if kind in ("bool", "causal+bool"):
        mask = reference_mask = allowed
    elif kind == "float":
        mask = reference_mask = randn(target, source, seed=seed + 3).masked_fill(
            ~allowed, INF
        )
    if kind == "causal+bool":
        reference_mask = allowed & torch.ones(target, source, dtype=torch.bool).tril()
    ours = run(
        lambda q, k, v: scaled_dot_product_attention(q, k, v, mask, is_causal=causal),
        inputs,
    )
    reference = run(
        lambda q, k, v: F.scaled_dot_product_attention(
            q, k, v, reference_mask, is_causal=causal and kind == "causal"
        ),
        inputs,
    )
    assert_same(ours, reference, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["bool", "float -inf"])
def test_fully_masked_rows_give_zero_output_and_zero_gradient(kind):
    allowed = torch.ones(L, S, dtype=torch.bool)
    allowed[1] = False  # query 1 may look nowhere
    allowed[3, 4:] = False
    mask = allowed
    if kind == "float -inf":
        mask = torch.zeros(L, S, dtype=torch.float64).masked_fill(~allowed, INF)
    inputs = qkv()
    ours = run(lambda q, k, v: scaled_dot_product_attention(q, k, v, mask), inputs)
    reference = run(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), inputs
    )
    assert_same(ours, reference)
    output, (grad_q, grad_k, grad_v) = ours
    assert output.isfinite().all() and all(g.isfinite().all() for g in ours[1])
    assert (output[..., 1, :] == 0).all() and (grad_q[..., 1, :] == 0).all()
    _, weights = scaled_dot_product_attention(*inputs, mask)
    assert (weights[..., 1, :] == 0).all()
    torch.testing.assert_close(
        weights[..., [0, 2, 3, 4], :].sum(-1), torch.ones(B, H, 4, dtype=torch.float64)
    )


def test_a_finite_minimum_mask_gives_a_uniform_row_like_torch():
    mask = torch.zeros(L, S, dtype=torch.float64)
    mask[2] = torch.finfo(torch.float64).min
    q, k, v = qkv()
    output, weights = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(
        weights[..., 2, :], torch.full((B, H, S), 1 / S, dtype=torch.float64)
    )
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(output, reference, **EXACT)


def test_extreme_scores_stay_finite_and_match_torch():
    q, k, v = qkv()
    inputs = (q * 1e4, k * 1e3, v)  # scores around 1e7: every softmax is one-hot
    ours = run(scaled_dot_product_attention, inputs)
    reference = run(F.scaled_dot_product_attention, inputs)
    assert ours[0].isfinite().all()
    assert_same(ours, reference)
    q32, k32, v32 = (x.float() for x in inputs)
    torch.testing.assert_close(
        scaled_dot_product_attention(q32, k32, v32)[0],
        F.scaled_dot_product_attention(q32, k32, v32),
        rtol=1e-5,
        atol=1e-5,
    )


def test_long_sequence_in_float32_matches_torch():
    q = randn(1, 1, 2048, 16, seed=0, dtype=torch.float32)
    k = randn(1, 1, 2048, 16, seed=1, dtype=torch.float32)
    v = randn(1, 1, 2048, 16, seed=2, dtype=torch.float32)
    ours = run(lambda *x: scaled_dot_product_attention(*x, is_causal=True), (q, k, v))
    reference = run(
        lambda *x: F.scaled_dot_product_attention(*x, is_causal=True), (q, k, v)
    )
    assert_same(ours, reference, rtol=1e-4, atol=1e-5)


def test_scaling_numbers_quoted_in_the_prose():
    """Ten keys of d_k = 64: the largest weight averages 0.87 unscaled and 0.32 scaled;
    sum_i w_i (1 - w_i) is 0.19 and 0.81."""
    query = randn(20000, 1, 64, seed=0)
    keys = randn(20000, 10, 64, seed=1)
    values = torch.zeros(20000, 10, 1, dtype=torch.float64)
    measured = {}
    for name, scale in (("unscaled", 1.0), ("scaled", None)):
        _, weights = scaled_dot_product_attention(query, keys, values, scale=scale)
        measured[name] = (
            weights.amax(dim=-1).mean().item(),
            (weights * (1 - weights)).sum(-1).mean().item(),
        )
    assert measured["unscaled"] == pytest.approx((0.87, 0.19), abs=0.01)
    assert measured["scaled"] == pytest.approx((0.32, 0.81), abs=0.01)


def test_dropout_matches_torch_under_the_same_seed():
    inputs = qkv()

    def seeded(fn):
        def call(q, k, v):
            torch.manual_seed(7)
            return fn(q, k, v, dropout_p=0.3)

        return call

    ours = run(seeded(scaled_dot_product_attention), inputs)
    reference = run(seeded(F.scaled_dot_product_attention), inputs)
    assert_same(ours, reference)
    assert not torch.allclose(ours[0], scaled_dot_product_attention(*inputs)[0])


def test_dropout_zeroes_each_weight_or_scales_it_by_one_over_keep():
    p = 0.3
    q, k, v = randn(16, 32, 8), randn(16, 48, 8, seed=1), randn(16, 48, 5, seed=2)
    clean, clean_weights = scaled_dot_product_attention(q, k, v)
    torch.manual_seed(0)
    output, weights = scaled_dot_product_attention(q, k, v, dropout_p=p)
    dropped = weights == 0
    torch.testing.assert_close(weights[~dropped], clean_weights[~dropped] / (1 - p))
    torch.testing.assert_close(output, weights @ v, **EXACT)
    n = dropped.numel()
    assert abs(dropped.float().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)
    # unbiased: averaged over many draws, the output approaches the clean one
    draws = torch.stack(
        [scaled_dot_product_attention(q, k, v, dropout_p=p)[0] for _ in range(400)]
    )
    standard_error = draws.std(dim=0) / math.sqrt(len(draws))
    z = (draws.mean(dim=0) - clean) / standard_error
    assert z.abs().mean() < 1.0  # |z| of a standard normal averages 0.80


# ------------------------------------------------------------------ MultiHeadAttention

EMBED, HEADS, BATCH, TARGET, SOURCE = 15, 3, 3, 4, 6  # head_dim 5


def torch_and_ours(seed=0, **kwargs):
    torch.manual_seed(seed)
    reference = nn.MultiheadAttention(EMBED, HEADS, **kwargs).double()
    with torch.no_grad():  # nonzero biases, so that a mapping error would show
        for name, parameter in reference.named_parameters():
            if "bias" in name:
                parameter.normal_()
    return reference, MultiHeadAttention.from_torch(reference)


def module_inputs(batch_first, kdim=EMBED, vdim=EMBED):
    query = randn(BATCH, TARGET, EMBED, seed=10)
    key = randn(BATCH, SOURCE, kdim, seed=11)
    value = randn(BATCH, SOURCE, vdim, seed=12)
    if not batch_first:
        query, key, value = (x.transpose(0, 1) for x in (query, key, value))
    return query, key, value


def module_masks():
    """nn.MultiheadAttention's convention: True = blocked."""
    generator = torch.Generator().manual_seed(3)
    padding = torch.arange(SOURCE) >= torch.tensor([6, 2, 4])[:, None]  # [B, S]
    future = torch.ones(TARGET, SOURCE, dtype=torch.bool).triu(1)
    per_head = randn(BATCH * HEADS, TARGET, SOURCE, seed=4)
    random_blocks = torch.rand(TARGET, SOURCE, generator=generator) > 0.7
    random_blocks[:, 0] = False  # keep one key per query, so torch gives no NaN
    return {
        "no mask": {},
        "key padding, bool": {"key_padding_mask": padding},
        "key padding, float": {
            "key_padding_mask": torch.zeros(
                BATCH, SOURCE, dtype=torch.float64
            ).masked_fill(padding, INF)
        },
        "attn_mask [L, S], bool": {"attn_mask": random_blocks},
        "attn_mask [B·H, L, S], float": {"attn_mask": per_head},
        "causal and padding, bool": {"attn_mask": future, "key_padding_mask": padding},
    }


def named_gradients(reference, ours):
    """Our parameters' gradients beside torch's, mapped as `from_torch` maps them."""
    if reference._qkv_same_embed_dim:
        torch_weights = reference.in_proj_weight.grad.chunk(3)
    else:
        torch_weights = [
            reference.q_proj_weight.grad,
            reference.k_proj_weight.grad,
            reference.v_proj_weight.grad,
        ]
    pairs = [
        (ours.q_proj.weight.grad, torch_weights[0]),
        (ours.k_proj.weight.grad, torch_weights[1]),
        (ours.v_proj.weight.grad, torch_weights[2]),
        (ours.out_proj.weight.grad, reference.out_proj.weight.grad),
    ]
    if reference.in_proj_bias is not None:
        biases = reference.in_proj_bias.grad.chunk(3)
        pairs += [
            (ours.q_proj.bias.grad, biases[0]),
            (ours.k_proj.bias.grad, biases[1]),
            (ours.v_proj.bias.grad, biases[2]),
            (ours.out_proj.bias.grad, reference.out_proj.bias.grad),
        ]
    return pairs


def compare_modules(reference, ours, inputs, **call):
    """Outputs, weights, input gradients and parameter gradients, ours against torch."""
    results = []
    for module in (reference, ours):
        tensors = [x.detach().clone().requires_grad_() for x in inputs]
        output, weights = module(*tensors, **call)
        weight = randn(*output.shape, seed=99)
        loss = (output * weight).sum()
        if weights is not None:
            loss = loss + (weights * randn(*weights.shape, seed=98)).sum()
        loss.backward()
        results.append((output, weights, [t.grad for t in tensors]))
    (torch_out, torch_weights, torch_grads), (out, weights, grads) = results
    torch.testing.assert_close(out, torch_out, **EXACT)
    if torch_weights is None:
        assert weights is None
    else:
        torch.testing.assert_close(weights, torch_weights, **EXACT)
    for a, b in zip(grads, torch_grads, strict=True):
        torch.testing.assert_close(a, b, **EXACT)
    for a, b in named_gradients(reference, ours):
        torch.testing.assert_close(a, b, **EXACT)


@pytest.mark.parametrize("mask_kind", list(module_masks()))
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize(
    "weights_kind", ["averaged", "per head", "none"], ids=lambda kind: f"weights {kind}"
)
def test_mha_matches_torch(mask_kind, batch_first, weights_kind):
    reference, ours = torch_and_ours(batch_first=batch_first)
    call = dict(module_masks()[mask_kind])
    call["need_weights"] = weights_kind != "none"
    call["average_attn_weights"] = weights_kind == "averaged"
    compare_modules(reference, ours, module_inputs(batch_first), **call)


@pytest.mark.parametrize("batch_first", [True, False])
def test_mha_with_other_key_and_value_widths_matches_torch(batch_first):
    reference, ours = torch_and_ours(kdim=7, vdim=9, batch_first=batch_first)
    assert not reference._qkv_same_embed_dim
    inputs = module_inputs(batch_first, kdim=7, vdim=9)
    compare_modules(reference, ours, inputs, **module_masks()["key padding, bool"])


def test_mha_without_bias_matches_torch():
    reference, ours = torch_and_ours(bias=False, batch_first=True)
    assert ours.q_proj.bias is None and ours.out_proj.bias is None
    compare_modules(reference, ours, module_inputs(True))


def test_mha_is_causal_applies_the_mask_itself():
    reference, ours = torch_and_ours(batch_first=True)
    query, key, value = module_inputs(True)
    padding = module_masks()["key padding, bool"]["key_padding_mask"]
    future = torch.ones(TARGET, SOURCE, dtype=torch.bool).triu(1)
    output, weights = ours(query, key, value, padding, is_causal=True)
    expected, expected_weights = reference(query, key, value, padding, attn_mask=future)
    torch.testing.assert_close(output, expected, **EXACT)
    torch.testing.assert_close(weights, expected_weights, **EXACT)


def test_mha_dropout_matches_torch_under_the_same_seed():
    reference, ours = torch_and_ours(dropout=0.3, batch_first=True)
    inputs = module_inputs(True)
    padding = module_masks()["key padding, bool"]
    for need_weights in (True, False):
        torch.manual_seed(3)
        expected = reference(*inputs, **padding, need_weights=need_weights)
        torch.manual_seed(3)
        output = ours(*inputs, **padding, need_weights=need_weights)
        torch.testing.assert_close(output[0], expected[0], **EXACT)
        if need_weights:
            torch.testing.assert_close(output[1], expected[1], **EXACT)
    ours.eval()
    reference.eval()
    clean = ours(*inputs, **padding)[0]
    assert not torch.allclose(output[0], clean)  # dropout did act in training
    torch.testing.assert_close(clean, reference(*inputs, **padding)[0], **EXACT)


def test_mha_dropout_changes_training_output_only():
    _, ours = torch_and_ours(dropout=0.5, batch_first=True)
    inputs = module_inputs(True)
    torch.manual_seed(0)
    first = ours(*inputs)[0]
    second = ours(*inputs)[0]
    assert not torch.allclose(first, second)
    ours.eval()
    torch.testing.assert_close(ours(*inputs)[0], ours(*inputs)[0], **EXACT)


def test_mha_fully_masked_query_returns_the_output_bias():
    """A sequence whose every key is padding: zero attention, so out_proj's bias."""
    reference, ours = torch_and_ours(batch_first=True)
    inputs = module_inputs(True)
    padding = torch.zeros(BATCH, SOURCE, dtype=torch.bool)
    padding[1] = True
    output, weights = ours(*inputs, key_padding_mask=padding)
    torch.testing.assert_close(output[1], ours.out_proj.bias.expand(TARGET, EMBED))
    assert (weights[1] == 0).all() and output.isfinite().all()
    # torch's SDPA path agrees; its weights path returns NaN, as the prose says
    expected, _ = reference(*inputs, key_padding_mask=padding, need_weights=False)
    torch.testing.assert_close(output, expected, **EXACT)
    nan_output, _ = reference(*inputs, key_padding_mask=padding, need_weights=True)
    assert nan_output[1].isnan().all() and nan_output[0].isfinite().all()
    # and so does its inference fast path (self-attention, eval, no autograd), where
    # its conditions hold, as here (float32, even head width)
    fast_path = nn.MultiheadAttention(16, 2, batch_first=True).eval()
    x = randn(BATCH, TARGET, 16, dtype=torch.float32)
    with torch.no_grad():
        fast, _ = fast_path(x, x, x, key_padding_mask=padding[:, :TARGET])
    assert fast[1].isnan().all() and fast[0].isfinite().all()
    ours_fast = MultiHeadAttention.from_torch(fast_path).eval()
    with torch.no_grad():
        ours_output, _ = ours_fast(x, x, x, key_padding_mask=padding[:, :TARGET])
    assert (ours_output[1] == 0).all()  # out_proj's bias is zero at initialisation


def test_parameter_count_and_initialisation():
    ours = MultiHeadAttention(64, 8)
    assert sum(p.numel() for p in ours.parameters()) == 4 * 64 * 64 + 4 * 64
    bound = math.sqrt(6 / (64 + 64))
    for projection in (ours.q_proj, ours.k_proj, ours.v_proj):
        assert projection.weight.abs().max() <= bound
        assert projection.weight.std().item() == pytest.approx(
            bound / math.sqrt(3), rel=0.05
        )
        assert (projection.bias == 0).all()
    assert (ours.out_proj.bias == 0).all()


def test_state_round_trip_through_safetensors(tmp_path):
    _, ours = torch_and_ours(batch_first=True)
    save_file(ours.state_dict(), tmp_path / "attention.safetensors")
    loaded = MultiHeadAttention(EMBED, HEADS, batch_first=True).double()
    loaded.load_state_dict(load_file(tmp_path / "attention.safetensors"))
    inputs = module_inputs(True)
    torch.testing.assert_close(loaded(*inputs)[0], ours(*inputs)[0], rtol=0, atol=0)


def test_bad_inputs_raise_naming_the_argument():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="query .* must have the same last dimension"):
        scaled_dot_product_attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="same number of entries S"):
        scaled_dot_product_attention(q, k, v[..., :3, :])
    with pytest.raises(ValueError, match="query must be a tensor"):
        scaled_dot_product_attention(q[0, 0, 0], k, v)
    with pytest.raises(TypeError, match="share one float dtype"):
        scaled_dot_product_attention(q, k.float(), v)
    with pytest.raises(TypeError, match="attn_mask must be bool .* got torch.int64"):
        scaled_dot_product_attention(q, k, v, torch.ones(L, S, dtype=torch.long))
    with pytest.raises(ValueError, match=r"attn_mask \(5, 5\) must broadcast"):
        scaled_dot_product_attention(q, k, v, torch.ones(L, L, dtype=torch.bool))
    with pytest.raises(ValueError, match="dropout_p must be in"):
        scaled_dot_product_attention(q, k, v, dropout_p=1.0)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match=r"MultiHeadAttention: dropout must be in"):
        MultiHeadAttention(10, 2, dropout=1.0)
    with pytest.raises(ValueError, match=r"max_pairs must be in \[3, n_keys=8\]"):
        recall_batch(2, n_keys=8, max_pairs=9)
    _, ours = torch_and_ours(batch_first=True)
    query, key, value = module_inputs(True)
    with pytest.raises(ValueError, match=r"query must be \[batch, seq, 15\]"):
        ours(query[..., :4], key, value)
    with pytest.raises(ValueError, match=r"key must be \[batch, seq, 15\]"):
        ours(query, key[0], value)
    with pytest.raises(ValueError, match="must match in batch and length"):
        ours(query, key, value[:, :3])
    with pytest.raises(ValueError, match=r"key_padding_mask must be \[batch, S\]"):
        ours(query, key, value, key_padding_mask=torch.zeros(BATCH, TARGET).bool())
    with pytest.raises(ValueError, match=r"attn_mask must be \[L, S\]"):
        ours(query, key, value, attn_mask=torch.zeros(SOURCE, TARGET).bool())
    with pytest.raises(TypeError, match="key_padding_mask must be bool"):
        ours(query, key, value, key_padding_mask=torch.zeros(BATCH, SOURCE).long())
    with pytest.raises(ValueError, match="add_bias_kv and add_zero_attn"):
        MultiHeadAttention.from_torch(nn.MultiheadAttention(8, 2, add_zero_attn=True))


# ------------------------------------------------------------------------ the demo


def test_recall_batch_is_a_valid_lookup():
    keys, values, queries, padding, answers = recall_batch(
        500, generator=torch.Generator().manual_seed(0)
    )
    lengths = (~padding).sum(dim=1)
    assert lengths.min() == 3 and lengths.max() == 12
    for b in range(500):
        n = int(lengths[b])
        real_keys = keys[b, :n].tolist()
        assert len(set(real_keys)) == n and (keys[b, n:] == 32).all()
        assert sorted(queries[b, :n].tolist()) == sorted(real_keys)
        table = dict(zip(real_keys, values[b, :n].tolist()))
        assert answers[b, :n].tolist() == [table[q] for q in queries[b, :n].tolist()]
        assert (answers[b, n:] == PAD).all() and (queries[b, n:] == 32).all()


def test_example_runs_and_traces_like_eager():
    model, args = example()
    logits, weights = model(*args)
    assert logits.shape == (2, 5, 8) and weights.shape == (2, 4, 5, 5)
    padding = args[3]
    assert padding.any() and (weights.permute(0, 3, 1, 2)[padding] == 0).all()
    traced = torch.fx.symbolic_trace(model)
    traced_logits, traced_weights = traced(*args)
    torch.testing.assert_close(traced_logits, logits, rtol=0, atol=0)
    torch.testing.assert_close(traced_weights, weights, rtol=0, atol=0)


def test_demo_learns_the_lookup(tmp_path):
    metric, args, low, high = short_band("annotated/transformers/attention.py")
    metrics = main([*args, "--out", str(tmp_path)])
    assert low <= metrics[metric] <= high  # the short run's band over stored seeds
    assert metrics["torch_gap"] < 1e-5
    assert metrics["accuracy"] > 0.9  # chance: 1/32
    assert metrics["best_head_weight"] > 0.8
    assert (tmp_path / "attention.png").exists()


def test_untrained_model_is_at_chance():
    torch.manual_seed(0)
    model = AssociativeRecall()
    keys, values, queries, padding, answers = recall_batch(
        2000, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        logits, _ = model(keys, values, queries, padding)
    real = answers != PAD
    accuracy = (logits.argmax(-1) == answers)[real].float().mean().item()
    assert accuracy < 0.1


# ------------------------------------------------------------------------ benchmarks


def attention_inputs():
    """Batch 8, 8 heads, 256 queries and keys, head width 64, float32."""
    return tuple(randn(8, 8, 256, 64, seed=s, dtype=torch.float32) for s in range(3))


@pytest.mark.benchmark(group="attention forward, 8×8 heads, 256×256, d 64")
def test_bench_sdpa_torch(benchmark):
    benchmark.extra_info["label"] = "F.scaled_dot_product_attention"
    benchmark.extra_info["baseline"] = True
    inputs = attention_inputs()
    with torch.no_grad():
        benchmark(F.scaled_dot_product_attention, *inputs, is_causal=True)


@pytest.mark.benchmark(group="attention forward, 8×8 heads, 256×256, d 64")
def test_bench_sdpa_ours(benchmark):
    benchmark.extra_info["label"] = "ours"
    inputs = attention_inputs()
    with torch.no_grad():
        benchmark(scaled_dot_product_attention, *inputs, is_causal=True)


def mha_step(module):
    """Forward and backward of self-attention on batch 8 × 128 tokens of width 256."""
    x = randn(8, 128, 256, dtype=torch.float32).requires_grad_()
    padding = torch.arange(128) >= torch.arange(100, 132, 4)[:, None]  # [8, 128]

    def step():
        output, _ = module(x, x, x, key_padding_mask=padding, need_weights=False)
        output.sum().backward()

    return step


@pytest.mark.benchmark(group="MHA forward + backward, 8 × 128 tokens, width 256")
def test_bench_mha_torch(benchmark):
    benchmark.extra_info["label"] = "nn.MultiheadAttention"
    benchmark.extra_info["baseline"] = True
    torch.manual_seed(0)
    benchmark(mha_step(nn.MultiheadAttention(256, 8, batch_first=True)))


@pytest.mark.benchmark(group="MHA forward + backward, 8 × 128 tokens, width 256")
def test_bench_mha_ours(benchmark):
    benchmark.extra_info["label"] = "ours"
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(256, 8, batch_first=True)
    benchmark(mha_step(MultiHeadAttention.from_torch(reference)))
