"""Verified against transformers.ViTModel with copied weights in float64 (last hidden
states and pooled output to 1e-10 at the trained size and with interpolated positions at
three others; every weight's and the input's gradient at the trained size and the
input's gradient at the three others, to 1e-10), and the two patch embeddings against
each other to 1e-12.

The demo trains briefly and must clear a loose accuracy bar.
"""

import pytest
import torch
import torch.nn.functional as F
import transformers
from hypothesis import given
from hypothesis import strategies as st

from tools.literate.figures import short_band
from annotated.vision.vit import (
    Config,
    PatchEmbedding,
    VisionTransformer,
    attention_maps,
    attention_rollout,
    example,
    interpolate_positions,
    main,
    patch_embed_unfold,
    patchify,
)

torch.set_num_threads(1)
transformers.logging.set_verbosity_error()


def hf_config(**overrides) -> transformers.ViTConfig:
    sizes = dict(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=96,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="sdpa",  # eager rounds softmax to float32
    )
    return transformers.ViTConfig(**(sizes | overrides))


def random_pair(seed: int = 0, **overrides):
    """A randomly initialised HF ViTModel in float64 and ours with its weights.

    HF initialises position embeddings and the class token with a truncated normal
    of std 0.02 and LayerNorms to (1, 0); everything is perturbed so that no weight
    is a trivial value that could hide a mistake."""
    torch.manual_seed(seed)
    theirs = transformers.ViTModel(hf_config(**overrides)).double().eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ours = VisionTransformer.from_hf_state_dict(
        theirs.state_dict(), Config.from_hf(theirs.config)
    ).eval()
    return theirs, ours


def test_patchify_orders_patches_row_major_and_pixels_channel_row_column():
    images = torch.arange(2 * 3 * 4 * 6).reshape(2, 3, 4, 6)
    patches = patchify(images, 2)  # 2 × 3 patches of 3·2·2
    assert patches.shape == (2, 6, 12)
    # patch 4 is grid row 1, column 1: pixels rows 2–3, columns 2–3
    torch.testing.assert_close(patches[1, 4], images[1, :, 2:4, 2:4].flatten())


@given(
    batch=st.integers(1, 3),
    channels=st.integers(1, 4),
    patch=st.integers(1, 5),
    rows=st.integers(1, 4),
    cols=st.integers(1, 4),
    dim=st.integers(1, 8),
)
def test_unfold_patch_embedding_equals_strided_convolution(
    batch, channels, patch, rows, cols, dim
):
    torch.manual_seed(batch * 1000 + channels * 100 + patch * 10 + rows + cols)
    config = Config(
        image_size=patch,
        patch_size=patch,
        num_channels=channels,
        hidden_size=dim,
        num_attention_heads=1,
    )
    conv = PatchEmbedding(config).double()
    images = torch.randn(batch, channels, rows * patch, cols * patch).double()
    w, b = conv.projection.weight, conv.projection.bias
    torch.testing.assert_close(
        patch_embed_unfold(images, w, b), conv(images), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_last_hidden_state_and_pooler_match_hf_vit_model(seed):
    theirs, ours = random_pair(seed)
    images = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    reference = theirs(pixel_values=images)
    hidden, pooled = ours.encode(images)
    torch.testing.assert_close(
        hidden, reference.last_hidden_state, rtol=1e-10, atol=1e-10
    )
    torch.testing.assert_close(pooled, reference.pooler_output, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours(images), hidden[:, 0], rtol=0, atol=0)


def test_gradients_match_hf_vit_model():
    theirs, ours = random_pair(2)
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    ours_images = images.clone().requires_grad_()
    theirs_images = images.clone().requires_grad_()
    hidden, pooled = ours.encode(ours_images)
    reference = theirs(pixel_values=theirs_images)
    g_hidden, g_pooled = torch.randn_like(hidden), torch.randn_like(pooled)
    ((hidden * g_hidden).sum() + (pooled * g_pooled).sum()).backward()
    (
        (reference.last_hidden_state * g_hidden).sum()
        + (reference.pooler_output * g_pooled).sum()
    ).backward()
    torch.testing.assert_close(
        ours_images.grad, theirs_images.grad, rtol=1e-10, atol=1e-10
    )
    ours_params = dict(ours.named_parameters())
    ours_state = VisionTransformer.from_hf_state_dict(
        {k: p.grad for k, p in theirs.named_parameters()}, ours.config
    ).state_dict()  # their gradients, under our names
    assert len(ours_state) == len(ours_params) == len(list(theirs.parameters()))
    for name, p in ours_params.items():
        torch.testing.assert_close(p.grad, ours_state[name], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("height, width", [(48, 48), (24, 40), (16, 16)])
def test_interpolated_positions_match_hf(height, width):
    theirs, ours = random_pair(3)
    images = torch.randn(2, 3, height, width, dtype=torch.float64, requires_grad=True)
    reference = theirs(pixel_values=images, interpolate_pos_encoding=True)
    hidden, pooled = ours.encode(images, interpolate_pos_encoding=True)
    torch.testing.assert_close(
        hidden, reference.last_hidden_state, rtol=1e-10, atol=1e-10
    )
    torch.testing.assert_close(pooled, reference.pooler_output, rtol=1e-10, atol=1e-10)
    assert hidden.shape == (2, 1 + (height // 8) * (width // 8), 48)
    (theirs_grad,) = torch.autograd.grad(reference.last_hidden_state.sum(), images)
    (ours_grad,) = torch.autograd.grad(hidden.sum(), images)
    torch.testing.assert_close(ours_grad, theirs_grad, rtol=1e-10, atol=1e-10)


def test_classifier_on_another_size_matches_hf_with_interpolated_positions():
    """`forward` passes `interpolate_pos_encoding` on to `encode`, as
    `ViTForImageClassification` does."""
    torch.manual_seed(8)
    theirs = transformers.ViTForImageClassification(hf_config(num_labels=5))
    theirs = theirs.double().eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    config = Config.from_hf(theirs.config, pooler=False)
    config = Config(**(config.__dict__ | {"num_labels": 5}))
    ours = VisionTransformer.from_hf_state_dict(theirs.state_dict(), config).eval()
    images = torch.randn(2, 3, 48, 40, dtype=torch.float64)
    reference = theirs(pixel_values=images, interpolate_pos_encoding=True).logits
    logits = ours(images, interpolate_pos_encoding=True)
    assert logits.shape == (2, 5)
    torch.testing.assert_close(logits, reference, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match=r"are not 32×32"):
        ours(images)


def test_interpolation_to_the_same_grid_is_the_identity_and_keeps_class_row():
    table = torch.randn(1, 1 + 5 * 5, 7, dtype=torch.float64)
    torch.testing.assert_close(
        interpolate_positions(table, 5, 5), table, rtol=0, atol=0
    )
    larger = interpolate_positions(table, 9, 6)
    assert larger.shape == (1, 1 + 54, 7)
    torch.testing.assert_close(larger[:, 0], table[:, 0], rtol=0, atol=0)


def test_antialias_as_timm_passes_it_would_change_the_table():
    """The detail HF fixes and timm does not: PyTorch's anti-aliased bicubic is
    Pillow's (cubic a = -0.5, widened when shrinking), not Keys' a = -0.75."""
    torch.manual_seed(0)
    grid = torch.randn(1, 4, 8, 8, dtype=torch.float64)

    def resize(size, antialias):
        return F.interpolate(
            grid, size=size, mode="bicubic", align_corners=False, antialias=antialias
        )

    table = torch.cat([torch.zeros(1, 1, 4).double(), grid.flatten(2).mT], dim=1)
    for size in (4, 12):
        ours = interpolate_positions(table, size, size)[:, 1:]
        ours = ours.mT.reshape(1, 4, size, size)
        torch.testing.assert_close(ours, resize((size, size), False), rtol=0, atol=0)
        assert (resize((size, size), True) - ours).abs().max() > 1e-2


def test_transformers_4_checkpoint_names_load_like_transformers_5():
    theirs, ours = random_pair(4)
    old = {}
    for name, tensor in theirs.state_dict().items():
        for new, legacy in [
            ("layers.", "encoder.layer."),
            ("attention.q_proj", "attention.attention.query"),
            ("attention.k_proj", "attention.attention.key"),
            ("attention.v_proj", "attention.attention.value"),
            ("attention.o_proj", "attention.output.dense"),
            ("mlp.fc1", "intermediate.dense"),
            ("mlp.fc2", "output.dense"),
        ]:
            name = name.replace(new, legacy)
        old["vit." + name] = tensor
    loaded = VisionTransformer.from_hf_state_dict(old, ours.config)
    for (name, a), b in zip(ours.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_classification_head_matches_vit_for_image_classification():
    torch.manual_seed(5)
    theirs = transformers.ViTForImageClassification(hf_config(num_labels=7))
    theirs = theirs.double().eval()
    config = Config.from_hf(theirs.config, pooler=False)
    config = Config(**(config.__dict__ | {"num_labels": 7}))
    ours = VisionTransformer.from_hf_state_dict(theirs.state_dict(), config).eval()
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(
        ours(images), theirs(pixel_values=images).logits, rtol=1e-10, atol=1e-10
    )


def test_a_wrong_state_dict_is_refused():
    theirs, ours = random_pair(6)
    state = theirs.state_dict()
    del state["layers.1.mlp.fc2.bias"]
    with pytest.raises(ValueError, match="missing .*layers.1.mlp.fc2.bias"):
        VisionTransformer.from_hf_state_dict(state, ours.config)


def test_patches_are_a_set_without_positions():
    """Permuting the patches changes nothing but the order of the outputs when the
    position table is permuted with them: all the grid lives in the positions."""
    torch.manual_seed(7)
    model = VisionTransformer(Config(num_labels=0)).double().eval()
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    order = torch.randperm(64)
    grid = images.reshape(2, 3, 8, 4, 8, 4).permute(0, 2, 4, 1, 3, 5).reshape(2, 64, -1)
    shuffled = grid[:, order].reshape(2, 8, 8, 3, 4, 4).permute(0, 3, 1, 4, 2, 5)
    shuffled = shuffled.reshape(2, 3, 32, 32)
    hidden, _ = model.encode(images)
    with torch.no_grad():
        table = model.embeddings.position_embeddings
        table[:, 1:] = table[:, 1:][:, order]
    shuffled_hidden, _ = model.encode(shuffled)
    torch.testing.assert_close(shuffled_hidden[:, 1:], hidden[:, 1:][:, order])
    torch.testing.assert_close(shuffled_hidden[:, 0], hidden[:, 0])


def test_attention_maps_match_hf_attentions_and_rollout_is_a_distribution():
    """HF returns attention weights only from its eager path, whose softmax runs in
    float32: hence 1e-6 here."""
    theirs, ours = random_pair(8, attn_implementation="eager")
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    maps = attention_maps(ours, images)
    assert maps.shape == (2, 3, 3, 17, 17)  # layers, batch, heads, tokens, tokens
    reference = theirs(pixel_values=images, output_attentions=True).attentions
    torch.testing.assert_close(maps, torch.stack(reference), rtol=0, atol=1e-6)
    rollout = attention_rollout(maps)
    assert rollout.shape == (3, 16) and (rollout > 0).all()
    assert (rollout.sum(-1) < 1).all()  # the rest stays on the class token itself
    # with uniform attention in every layer, the class token keeps half of itself
    # through each of the three layers; (U + I)^3 / 8 = (I + 7U) / 8 as U² = U
    uniform = torch.full((3, 1, 1, 65, 65), 1 / 65, dtype=torch.float64)
    share = (1 - 0.5**3) / 65 * torch.ones(1, 64, dtype=torch.float64)
    torch.testing.assert_close(attention_rollout(uniform), share)


def test_rollout_puts_the_later_layer_on_the_left_by_hand():
    """Two layers that do not commute, on a class token and one patch: in layer 1
    every token reads the patch, in layer 2 every token reads the class token. With
    the residual, A1 = [[.5, .5], [0, 1]] and A2 = [[1, 0], [.5, .5]]; the class
    token's final state is its layer-1 state, half the patch: (A2 A1)[0, 1] = 0.5,
    where A1 A2 would give 0.25."""
    maps = torch.tensor(
        [[[0.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]], dtype=torch.float64
    )[:, None, None]  # [layers, batch, heads, T, T]
    torch.testing.assert_close(
        attention_rollout(maps), torch.tensor([[0.5]], dtype=torch.float64)
    )


def test_extreme_pixels_stay_finite_and_state_dict_round_trips(tmp_path):
    model = VisionTransformer(Config()).eval()
    logits = model(torch.full((1, 3, 32, 32), 1e6))
    assert torch.isfinite(logits).all()
    torch.save(model.state_dict(), tmp_path / "vit.pt")
    other = VisionTransformer(Config())
    other.load_state_dict(torch.load(tmp_path / "vit.pt"))
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model(x), other.eval()(x), rtol=0, atol=0)


def test_bad_images_raise_naming_the_shape():
    model = VisionTransformer(Config())
    with pytest.raises(ValueError, match=r"\(2, 1, 32, 32\) have 1 channels"):
        model(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(2, 3, 30, 32\).*multiples of the patch"):
        model.encode(torch.rand(2, 3, 30, 32), interpolate_pos_encoding=True)
    with pytest.raises(ValueError, match=r"\(2, 3, 48, 48\) are not 32×32"):
        model(torch.rand(2, 3, 48, 48))
    with pytest.raises(ValueError, match=r"images must be \[batch, 3"):
        model(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        Config(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="hidden_size 30 must be divisible by num_"):
        Config(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="only hidden_act='gelu' with qkv_bias"):
        Config.from_hf(hf_config(qkv_bias=False))


def test_example_runs():
    fn, args = example()
    assert fn(*args).shape == (2, 15)


def test_demo_learns(tmp_path):
    metric, args, low, high = short_band("annotated/vision/vit.py")
    metrics = main([*args, "--out", str(tmp_path)])
    assert low <= metrics[metric] <= high  # the short run's band over stored seeds
    assert metrics["accuracy"] > 0.3  # chance is 1/15
    for name in ("loss.png", "position_similarity.png", "attention.png"):
        assert (tmp_path / name).exists()


GROUP = "ViT forward, 32 images 32×32, patches 4×4, 3 layers, width 48"


def forward_pair():
    """Demo-sized models, ours and HF's, with the same weights, and a batch of 32."""
    theirs, ours = random_pair(
        9,
        patch_size=4,
        num_hidden_layers=3,
    )
    return theirs.float(), ours.float(), torch.rand(32, 3, 32, 32)


@pytest.mark.benchmark(
    group="ViT forward, 32 images 32×32, patches 4×4, 3 layers, width 48"
)
def test_bench_forward_hf(benchmark):
    benchmark.extra_info["label"] = "transformers.ViTModel (SDPA attention)"
    benchmark.extra_info["baseline"] = True
    theirs, _, images = forward_pair()
    with torch.no_grad():
        benchmark(theirs, pixel_values=images)


@pytest.mark.benchmark(
    group="ViT forward, 32 images 32×32, patches 4×4, 3 layers, width 48"
)
def test_bench_forward_ours(benchmark):
    benchmark.extra_info["label"] = "ours"
    _, ours, images = forward_pair()
    with torch.no_grad():
        benchmark(ours.encode, images)
