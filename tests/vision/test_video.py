"""Verified against joint attention under a same-position or same-frame mask (equal in
float64 to 1e-10, outputs and gradients, over random shapes with odd T and N), and
against nn.MultiheadAttention, F.scaled_dot_product_attention and an nn.Conv2d patch
embedding with copied weights (float64, 1e-10).

The score counts hooked from the models must equal the cost formulas exactly; a
space-only model must be blind to the order of the frames, and the demo must learn the
direction of motion on a short run.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn

from annotated.vision.video import (
    Attention,
    Block,
    Config,
    VideoTransformer,
    count_score_entries,
    example,
    factorised_mask,
    joint_attention,
    main,
    patchify,
    plot_clips,
    score_entries,
    spatial_attention,
    temporal_attention,
)
from tools.literate.figures import short_band

torch.set_num_threads(1)
TOL = {"rtol": 1e-10, "atol": 1e-10}


def layer(dim: int, heads: int, seed: int) -> Attention:
    torch.manual_seed(seed)
    attention = Attention(dim, heads).double()
    with torch.no_grad():  # non-zero biases, so that a dropped bias would show
        attention.qkv.bias.normal_()
        attention.proj.bias.normal_()
    return attention


def gradients(output: torch.Tensor, inputs: list[torch.Tensor], seed: int):
    upstream = torch.randn(output.shape, dtype=output.dtype, generator=_gen(seed))
    return torch.autograd.grad(output, inputs, upstream)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


shapes = st.tuples(
    st.integers(1, 2),  # batch
    st.integers(1, 5),  # frames T
    st.integers(1, 6),  # patches N
    st.integers(1, 3),  # heads
    st.integers(1, 4),  # head width
    st.integers(0, 2**16),  # seed
)


@given(shapes)
def test_temporal_attention_equals_joint_attention_with_same_position_mask(shape):
    batch, frames, patches, heads, head_dim, seed = shape
    attention = layer(heads * head_dim, heads, seed)
    x = torch.randn(batch, frames, patches, heads * head_dim, dtype=torch.float64)
    x.requires_grad_(True)
    mask = factorised_mask(frames, patches, "time")
    divided = temporal_attention(attention, x)
    joint = joint_attention(attention, x, mask)
    torch.testing.assert_close(divided, joint, **TOL)
    inputs = [x, *attention.parameters()]
    for got, want in zip(
        gradients(divided, inputs, seed), gradients(joint, inputs, seed)
    ):
        torch.testing.assert_close(got, want, **TOL)


@given(shapes)
def test_spatial_attention_with_class_token_equals_joint_with_same_frame_mask(shape):
    batch, frames, patches, heads, head_dim, seed = shape
    dim = heads * head_dim
    attention = layer(dim, heads, seed)
    x = torch.randn(batch, frames, patches, dim, dtype=torch.float64)
    cls = torch.randn(batch, dim, dtype=torch.float64)
    x.requires_grad_(True)
    cls.requires_grad_(True)
    cls_divided, divided = spatial_attention(attention, cls, x)
    # The joint form: the class token copied into every frame, T·(1+N) tokens.
    tokens = torch.cat([cls[:, None, None].expand(-1, frames, 1, -1), x], dim=2)
    joint = joint_attention(
        attention, tokens, factorised_mask(frames, patches + 1, "space")
    )
    torch.testing.assert_close(divided, joint[:, :, 1:], **TOL)
    torch.testing.assert_close(cls_divided, joint[:, :, 0].mean(1), **TOL)
    inputs = [x, cls, *attention.parameters()]
    ours = torch.cat([cls_divided.flatten(), divided.flatten()])
    theirs = torch.cat([joint[:, :, 0].mean(1).flatten(), joint[:, :, 1:].flatten()])
    for got, want in zip(
        gradients(ours, inputs, seed), gradients(theirs, inputs, seed)
    ):
        torch.testing.assert_close(got, want, **TOL)


def test_masks_allow_exactly_the_factorised_pairs():
    frames, patches = 3, 5
    time = factorised_mask(frames, patches, "time")
    space = factorised_mask(frames, patches, "space")
    assert time.sum() == patches * frames**2 and space.sum() == frames * patches**2
    assert time[0, patches] and not time[0, 1]  # (t=0,n=0) sees (t=1,n=0), not (0,1)
    assert space[0, 1] and not space[0, patches]
    assert (time & space).equal(torch.eye(frames * patches, dtype=torch.bool))


def mha_copy(attention: Attention) -> nn.MultiheadAttention:
    dim = attention.proj.in_features
    mha = nn.MultiheadAttention(dim, attention.heads, batch_first=True).double()
    with torch.no_grad():
        mha.in_proj_weight.copy_(attention.qkv.weight)
        mha.in_proj_bias.copy_(attention.qkv.bias)
        mha.out_proj.weight.copy_(attention.proj.weight)
        mha.out_proj.bias.copy_(attention.proj.bias)
    return mha


def test_attention_matches_nn_multihead_attention_with_a_mask():
    attention = layer(12, 3, seed=0)
    mha = mha_copy(attention)
    x = torch.randn(2, 3 * 5, 12, dtype=torch.float64, requires_grad=True)
    mask = factorised_mask(3, 5, "space")
    ours = attention(x, mask)
    theirs, _ = mha(x, x, x, attn_mask=~mask, need_weights=False)  # True = blocked
    torch.testing.assert_close(ours, theirs, **TOL)
    for got, want in zip(
        gradients(ours, [x, attention.qkv.weight], 1),
        gradients(theirs, [x, mha.in_proj_weight], 1),
    ):
        torch.testing.assert_close(got, want, **TOL)


def test_attention_core_matches_torch_scaled_dot_product_attention():
    attention = layer(8, 2, seed=3)
    x = torch.randn(2, 4, 7, 8, dtype=torch.float64)  # [batch, T, N, D]: 4-D input
    q, k, v = attention.qkv(x).unflatten(-1, (3, 2, 4)).movedim(-3, 0).transpose(-3, -2)
    core = F.scaled_dot_product_attention(q, k, v)  # [batch, T, heads, N, 4]
    expected = attention.proj(core.transpose(-3, -2).flatten(-2))
    torch.testing.assert_close(attention(x), expected, **TOL)


def test_temporal_attention_matches_mha_on_rearranged_sequences():
    # TimeSformer rearranges 'b (n t) d -> (b n) t d' and runs ordinary attention.
    attention = layer(8, 2, seed=4)
    mha = mha_copy(attention)
    batch, frames, patches = 2, 5, 3
    x = torch.randn(batch, frames, patches, 8, dtype=torch.float64)
    sequences = x.permute(0, 2, 1, 3).reshape(batch * patches, frames, 8)
    theirs, _ = mha(sequences, sequences, sequences, need_weights=False)
    theirs = theirs.reshape(batch, patches, frames, 8).permute(0, 2, 1, 3)
    torch.testing.assert_close(temporal_attention(attention, x), theirs, **TOL)


def test_patch_embedding_equals_a_strided_conv2d():
    torch.manual_seed(0)
    model = VideoTransformer(Config(frames=3, image_size=12, patch_size=4, channels=2))
    model = model.double()
    clips = torch.randn(2, 3, 2, 12, 12, dtype=torch.float64)
    conv = nn.Conv2d(2, model.config.dim, 4, stride=4).double()
    with torch.no_grad():
        conv.weight.copy_(model.embed.weight.reshape(conv.weight.shape))
        conv.bias.copy_(model.embed.bias)
    ours = model.embed(patchify(clips, 4, 3, 2, 12))  # [batch, T, N, D]
    theirs = conv(clips.flatten(0, 1)).flatten(2).transpose(1, 2)  # [batch·T, N, D]
    torch.testing.assert_close(ours, theirs.reshape(ours.shape), **TOL)


@pytest.mark.parametrize("kind", ["divided", "joint", "space"])
@pytest.mark.parametrize("frames, image_size, patch", [(8, 32, 8), (3, 15, 5)])
def test_hooked_score_counts_equal_the_formulas(kind, frames, image_size, patch):
    config = Config(frames, image_size, patch_size=patch, attention=kind, depth=3)
    counted = count_score_entries(VideoTransformer(config))
    assert counted == score_entries(frames, config.patches, kind)


def test_cost_numbers_in_the_prose():
    assert score_entries(8, 196, "joint") == 2_461_761
    assert score_entries(8, 196, "divided") == 323_016
    assert (
        round(score_entries(96, 196, "joint") / score_entries(96, 196, "divided")) == 64
    )
    assert (score_entries(8, 16, "joint"), score_entries(8, 16, "divided")) == (
        16_641,
        3_336,
    )


def test_space_model_is_blind_to_frame_order_and_divided_is_not():
    torch.manual_seed(0)
    clips = torch.rand(2, 8, 1, 32, 32)
    reversed_clips = clips.flip(1)
    space = VideoTransformer(Config(attention="space")).eval()
    divided = VideoTransformer(Config(attention="divided")).eval()
    with torch.no_grad():
        torch.testing.assert_close(space(clips), space(reversed_clips))
        assert (divided(clips) - divided(reversed_clips)).abs().max() > 1e-3


def test_divided_block_with_its_temporal_branch_zeroed_is_the_space_block():
    """The temporal attention adds to the residual stream: with its output projection
    zeroed, a divided block computes what a space-only block with the same other
    weights does."""
    torch.manual_seed(0)
    divided = Block(Config(attention="divided")).double()
    space = Block(Config(attention="space")).double()
    shared = {k: v for k, v in divided.state_dict().items() if "temporal" not in k}
    space.load_state_dict(shared)
    with torch.no_grad():
        divided.temporal_attn.proj.weight.zero_()
        divided.temporal_attn.proj.bias.zero_()
    cls = torch.randn(2, 32, dtype=torch.float64, generator=_gen(1))
    patches = torch.randn(2, 8, 16, 32, dtype=torch.float64, generator=_gen(2))
    for got, want in zip(divided(cls, patches), space(cls, patches)):
        torch.testing.assert_close(got, want, **TOL)


def test_joint_model_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = VideoTransformer(Config(attention="joint", depth=1))
    model(torch.rand(2, 8, 1, 32, 32)).sum().backward()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters()
    )


def test_state_dict_round_trip_through_safetensors(tmp_path):
    model, (clips,) = example()
    save_file(model.state_dict(), tmp_path / "video.safetensors")
    other = VideoTransformer(Config())
    other.load_state_dict(load_file(tmp_path / "video.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(model(clips), other(clips), rtol=0, atol=0)


def test_extreme_clips_stay_finite():
    model, (clips,) = example()
    with torch.no_grad():
        assert torch.isfinite(model(clips * 1e6)).all()


def test_bad_clips_raise_naming_the_argument():
    model = VideoTransformer(Config())
    with pytest.raises(ValueError, match="clips must be a 5-D tensor"):
        model(torch.rand(2, 1, 32, 32))
    with pytest.raises(
        ValueError, match=r"clips must be float \[batch, 8, 1, 32, 32\]"
    ):
        model(torch.rand(2, 4, 1, 32, 32))
    with pytest.raises(ValueError, match="clips must be float"):
        model(torch.zeros(2, 8, 1, 32, 32, dtype=torch.int64))
    with pytest.raises(ValueError, match="keep must be"):
        factorised_mask(2, 2, "both")
    with pytest.raises(ValueError, match="attention must be"):
        VideoTransformer(Config(attention="sparse"))
    with pytest.raises(ValueError, match="image_size 30 must be a multiple of patch"):
        VideoTransformer(Config(image_size=30))
    with pytest.raises(ValueError, match="dim 10 must be divisible by heads 3"):
        Attention(10, 3)
    with pytest.raises(ValueError, match="unknown attention 'sparse'"):
        score_entries(8, 16, "sparse")


def test_the_demo_needs_the_divided_model(capsys, tmp_path):
    # The demo reports the divided model's accuracy as its metric, so that one must run.
    with pytest.raises(SystemExit):
        main(["--models", "joint,space", "--out", str(tmp_path)])
    assert "--models must include divided, got 'joint,space'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_example_runs():
    fn, args = example()
    assert fn(*args).shape == (2, 8)


def test_demo_learns_the_direction_on_a_short_run(tmp_path):
    metric, args, low, high = short_band("annotated/vision/video.py")
    metrics = main([*args, "--out", str(tmp_path)])
    assert low <= metrics[metric] <= high  # the short run's band over stored seeds
    assert metrics["accuracy"] > 0.2  # chance is 1/8; the full demo reaches 0.97
    for name in ("accuracy.png", "clips.png", "cost.png"):
        assert (tmp_path / name).exists()


def test_the_clips_figure_draws_as_many_clips_as_there_are_up_to_four(tmp_path):
    """`--test 2` leaves two held-out clips: the figure draws those two (it indexed
    four and crashed after training)."""
    clips = torch.rand(2, 3, 1, 8, 8)  # [clips, frames, channel, height, width]
    labels = torch.tensor([0, 5])
    path = plot_clips(clips, labels, labels, tmp_path)
    assert path.exists()


# Benchmarks: one attention step at TimeSformer-small's size, 8 frames of 196 patches
# (1,568 tokens), width 384, 6 heads, one clip. Ours divided (temporal then spatial),
# ours joint, and joint attention in nn.MultiheadAttention (PyTorch's fused SDPA path).


def realistic():
    torch.manual_seed(0)
    attention, other = Attention(384, 6), Attention(384, 6)
    x = torch.randn(1, 8, 196, 384)
    return attention, other, x, torch.zeros(1, 384)


@pytest.mark.benchmark(group="attention forward, 8 × 196 tokens, width 384")
def test_bench_joint_nn_multihead_attention(benchmark):
    benchmark.extra_info["label"] = "joint, nn.MultiheadAttention"
    benchmark.extra_info["baseline"] = True
    attention, _, x, _ = realistic()
    mha = mha_copy(attention.double()).float().eval()
    tokens = x.flatten(1, 2)
    with torch.no_grad():
        benchmark(mha, tokens, tokens, tokens, need_weights=False)


@pytest.mark.benchmark(group="attention forward, 8 × 196 tokens, width 384")
def test_bench_joint_ours(benchmark):
    benchmark.extra_info["label"] = "joint, ours"
    attention, _, x, _ = realistic()
    with torch.no_grad():
        benchmark(joint_attention, attention, x)


@pytest.mark.benchmark(group="attention forward, 8 × 196 tokens, width 384")
def test_bench_divided_ours(benchmark):
    benchmark.extra_info["label"] = "divided (temporal + spatial), ours"
    temporal, spatial, x, cls = realistic()

    def divided():
        return spatial_attention(spatial, cls, temporal_attention(temporal, x))

    with torch.no_grad():
        benchmark(divided)
