"""Verified against transformers.CLIPModel with copied weights in float64 (image and
text embeddings, logits_per_image, the return_loss loss and every gradient to 1e-10),
and the loss against a cross-entropy written out by hand.

The zero-shot classifier is checked against a softmax over all thirty descriptions with
the size summed out; the demo trains briefly and must beat chance zero-shot on
held-out colour-shape pairs.
"""

import math

import pytest
import torch
import transformers
from torch.optim.optimizer import register_optimizer_step_pre_hook

from annotated.data import shapes
from annotated.vision import clip

from annotated.vision.clip import (
    CLIP,
    Config,
    TEMPLATES,
    WordTokenizer,
    class_embeddings,
    classify,
    clip_loss,
    example,
    main,
    quick_gelu,
    train,
    training_pairs,
    zero_shot,
    HELD_OUT_CLASSES,
    pair_index,
)
from tools.literate.figures import short_band

torch.set_num_threads(1)
transformers.logging.set_verbosity_error()

EOS = 98  # the highest id of the 99-word vocabulary, as OpenAI's EOT is


def hf_config(**overrides) -> transformers.CLIPConfig:
    text = dict(
        vocab_size=99,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
        eos_token_id=EOS,
        bos_token_id=97,
        pad_token_id=0,
    )
    vision = dict(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    return transformers.CLIPConfig(
        text_config=text | overrides.pop("text", {}),
        vision_config=vision | overrides.pop("vision", {}),
        projection_dim=16,
        attn_implementation="sdpa",  # eager rounds softmax to float32
        **overrides,
    )


def random_pair(seed: int = 0, **overrides):
    """A random HF CLIPModel in float64, every weight perturbed off its trivial
    initial value (LayerNorms at (1, 0)), and ours with its weights."""
    torch.manual_seed(seed)
    theirs = transformers.CLIPModel(hf_config(**overrides)).double().eval()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if name != "logit_scale":
                p.add_(torch.randn_like(p) * 0.1)
    ours = CLIP.from_hf_state_dict(
        theirs.state_dict(), Config.from_hf(theirs.config)
    ).eval()
    return theirs, ours


def random_ids(batch: int, seq: int, generator=None) -> torch.Tensor:
    """Ids below EOS, one EOT per row at a random place, padding 0 after it."""
    ids = torch.randint(1, EOS, (batch, seq), generator=generator)
    ends = torch.randint(1, seq, (batch,), generator=generator)
    for row, end in enumerate(ends.tolist()):
        ids[row, end] = EOS
        ids[row, end + 1 :] = 0
    return ids


@pytest.mark.parametrize("seed, hidden_act", [(0, "quick_gelu"), (1, "gelu")])
def test_embeddings_and_logits_match_hf_clip_model(seed, hidden_act):
    theirs, ours = random_pair(
        seed, text={"hidden_act": hidden_act}, vision={"hidden_act": hidden_act}
    )
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    ids = random_ids(5, 16)
    reference = theirs(input_ids=ids, pixel_values=images)
    tolerance = dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        ours.encode_image(images), reference.image_embeds, **tolerance
    )
    torch.testing.assert_close(
        ours.encode_text(ids), reference.text_embeds, **tolerance
    )
    logits = ours(images, ids)
    assert logits.shape == (3, 5)
    torch.testing.assert_close(logits, reference.logits_per_image, **tolerance)


def test_loss_and_every_gradient_match_hf_clip_model():
    theirs, ours = random_pair(2)
    images = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    ids = random_ids(4, 12)
    ours_images = images.clone().requires_grad_()
    theirs_images = images.clone().requires_grad_()
    loss = clip_loss(ours(ours_images, ids))
    reference = theirs(input_ids=ids, pixel_values=theirs_images, return_loss=True)
    torch.testing.assert_close(loss, reference.loss, rtol=1e-10, atol=1e-10)
    loss.backward()
    reference.loss.backward()
    torch.testing.assert_close(
        ours_images.grad, theirs_images.grad, rtol=1e-10, atol=1e-10
    )
    ours_params = dict(ours.named_parameters())
    theirs_grads = CLIP.from_hf_state_dict(
        {k: p.grad for k, p in theirs.named_parameters()}, ours.config
    ).state_dict()  # their gradients, under our names and shapes
    assert len(ours_params) == len(list(theirs.parameters()))
    for name, p in ours_params.items():
        torch.testing.assert_close(
            p.grad, theirs_grads[name], rtol=1e-10, atol=1e-10, msg=name
        )


def test_loss_equals_cross_entropy_written_out():
    torch.manual_seed(3)
    logits = torch.randn(6, 6, dtype=torch.float64) * 5
    rows = -(logits.diag() - logits.logsumexp(dim=1)).mean()
    columns = -(logits.diag() - logits.logsumexp(dim=0)).mean()
    torch.testing.assert_close(clip_loss(logits), (rows + columns) / 2)
    # perfect, confident pairs cost nothing; a uniform guess costs log N
    assert clip_loss(torch.eye(6, dtype=torch.float64) * 1e3).item() < 1e-12
    assert clip_loss(torch.zeros(6, 6)).item() == pytest.approx(math.log(6))
    # the loss is not symmetric in rows and columns term by term, only in sum
    skewed = torch.tensor([[2.0, 1.0], [0.0, 0.0]])
    torch.testing.assert_close(clip_loss(skewed), clip_loss(skewed.T))


def test_padding_after_eot_changes_nothing_and_first_eot_is_read():
    _, ours = random_pair(4)
    ids = random_ids(3, 10)
    other = ids.clone()
    for row in range(3):
        end = (ids[row] == EOS).nonzero()[0, 0]
        other[row, end + 1 :] = torch.randint(1, EOS, (9 - end.item(),))
    torch.testing.assert_close(ours.encode_text(ids), ours.encode_text(other))
    # a token before the EOT does matter: the pooled state has read it
    changed = ids.clone()
    changed[:, 0] = (changed[:, 0] % 50) + 1 + (changed[:, 0] == 1).long()
    assert (ours.encode_text(changed) - ours.encode_text(ids)).abs().max() > 1e-6


def test_logit_scale_starts_at_one_over_007_and_is_clipped_at_100():
    model = CLIP(Config())
    assert model.scale().item() == pytest.approx(1 / 0.07)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.scale().item() == pytest.approx(100.0)
    fn, (images, ids) = example()
    model.load_state_dict(fn.state_dict())
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    model(images, ids).sum().backward()
    assert model.logit_scale.grad.item() == 0.0  # no push past the ceiling


def test_quick_gelu_is_the_sigmoid_approximation():
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    torch.testing.assert_close(quick_gelu(x), x / (1 + torch.exp(-1.702 * x)))
    assert (quick_gelu(x) - torch.nn.functional.gelu(x)).abs().max() > 0.01


def test_tokenizer_puts_eot_highest_and_refuses_unknown_words():
    tokenizer = WordTokenizer()
    ids = tokenizer.encode(["a small red circle left of a large blue square"])
    assert tokenizer.eot == len(tokenizer.vocab) - 1
    assert ids.shape == (1, 16)
    assert ids[0].argmax().item() == 11  # <sot>, 10 words, then <eot>
    assert (ids[0, 12:] == 0).all()
    with pytest.raises(ValueError, match=r"unknown words \['dog'\]"):
        tokenizer.encode(["a small red dog"])
    with pytest.raises(ValueError, match="longer than length 4"):
        tokenizer.encode(["a small red circle"], length=4)


def test_training_pairs_hold_no_held_out_pair():
    images, captions = training_pairs(300, seed=5)
    assert images.shape == (300, 3, 32, 32) and len(captions) == 300
    for caption in captions:
        for colour, shape in [("red", "triangle"), ("blue", "square")]:
            assert f"{colour} {shape}" not in caption
    assert pair_index(0, 2) in HELD_OUT_CLASSES  # red triangle


def test_bad_inputs_raise_naming_the_problem():
    model, (images, ids) = example()
    with pytest.raises(ValueError, match=r"rows \[1\] hold no end-of-text token"):
        model.encode_text(torch.stack([ids[0], torch.ones_like(ids[1])]))
    with pytest.raises(ValueError, match=r"input_ids must be \[batch, seq\]"):
        model.encode_text(ids[0])
    with pytest.raises(TypeError, match="int64"):
        model.encode_text(ids.float())
    with pytest.raises(ValueError, match="longer than the 16 positions"):
        model.encode_text(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"must lie in \[0, 23\)"):
        model.encode_text(ids + 40)
    with pytest.raises(ValueError, match=r"images must be \[batch, 3"):
        model.encode_image(images[0])
    with pytest.raises(ValueError, match="must be square"):
        clip_loss(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="hidden_act must be one of"):
        Config(hidden_act="relu")
    with pytest.raises(ValueError, match=r"eos_token_id 23 is not in the vocab"):
        Config(vocab_size=23, eos_token_id=23)
    with pytest.raises(ValueError, match="legacy eos_token_id=2"):
        Config.from_hf(hf_config(text={"eos_token_id": 2}))
    with pytest.raises(ValueError, match="both towers must share hidden_act"):
        Config.from_hf(hf_config(vision={"hidden_act": "gelu"}))
    state = random_pair(5)[0].state_dict()
    del state["text_projection.weight"]
    with pytest.raises(ValueError, match=r"missing \['text_projection.weight'\]"):
        CLIP.from_hf_state_dict(state, Config.from_hf(hf_config()))


def test_demo_refuses_a_batch_larger_than_the_training_set(capsys):
    with pytest.raises(SystemExit):
        main(["--train", "64", "--batch-size", "128"])
    assert "--batch-size must not exceed --train" in capsys.readouterr().err


def test_extreme_pixels_stay_finite_and_state_dict_round_trips(tmp_path):
    model, (images, ids) = example()
    assert torch.isfinite(model(torch.full_like(images, 1e6), ids)).all()
    torch.save(model.state_dict(), tmp_path / "clip.pt")
    other = CLIP(Config())
    other.load_state_dict(torch.load(tmp_path / "clip.pt"))
    torch.testing.assert_close(
        model(images, ids), other.eval()(images, ids), rtol=0, atol=0
    )


def test_zero_shot_scores_each_held_out_pair_on_its_own_images(monkeypatch):
    """With a classifier that is right on two images in three, the accuracies are
    those shares over the held-out images, the seen ones and each held-out pair's."""
    data = shapes(300, size=32, objects=1, seed=3)  # zero_shot draws the same images
    labels = torch.from_numpy(
        pair_index(data.attributes[:, 0, 1], data.attributes[:, 0, 2])
    )
    right = torch.arange(300) % 3 != 0
    guesses = torch.where(right, labels, (labels + 1) % 15)
    monkeypatch.setattr(
        clip, "classify", lambda m, d, x: torch.eye(15)[guesses[: len(x)]]
    )
    model, _ = example()
    scores = zero_shot(model, WordTokenizer(), 300, seed=3)
    held_out = torch.isin(labels, torch.tensor(HELD_OUT_CLASSES))
    assert scores["held_out"] == right[held_out].double().mean().item()
    assert scores["seen"] == right[~held_out].double().mean().item()
    assert scores["per_pair"] == [
        right[labels == c].double().mean().item() for c in HELD_OUT_CLASSES
    ]
    assert len(set(scores["per_pair"])) > 1  # the pairs differ: each was its own


def test_zero_shot_sums_the_size_out_of_a_softmax_over_all_descriptions():
    model, (images, _) = example()
    tokenizer = WordTokenizer()
    descriptions = class_embeddings(model, tokenizer)  # [2, 15, d]
    assert descriptions.shape == (2, 15, model.config.projection_dim)
    # The large red circle (class 0 of size 1) is the mean of its three templates.
    prompts = [t.format(size="large", colour="red", shape="circle") for t in TEMPLATES]
    with torch.no_grad():
        direct = model.encode_text(tokenizer.encode(prompts)).mean(dim=0)
    torch.testing.assert_close(descriptions[1, 0], direct / direct.norm())
    probs = classify(model, descriptions, images)  # [2, 15]
    with torch.no_grad():
        logits = (
            model.scale()
            * model.encode_image(images)
            @ torch.cat([descriptions[0], descriptions[1]]).T
        )  # [2, 30]: the 15 small descriptions, then the 15 large ones
    joint = logits.softmax(dim=-1)
    torch.testing.assert_close(probs, joint[:, :15] + joint[:, 15:])
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2))


def test_training_warms_up_then_follows_a_cosine_and_never_decays_the_scale():
    # What each optimizer step used, recorded by torch's global step hook: 20 steps
    # warm up over 2, lr * (s + 1) / 2, then follow lr * (1 + cos(pi s / 20)) / 2, in
    # both groups; weight decay 0.05 on the weights, none on the logit scale.
    model, (images, ids) = example()
    used = []

    def record(optimizer, args, kwargs):
        groups = optimizer.param_groups
        assert groups[1]["params"] == [model.logit_scale]
        used.append([(group["lr"], group["weight_decay"]) for group in groups])

    handle = register_optimizer_step_pre_hook(record)
    try:
        losses = train(model, images, ids, epochs=20, batch_size=2, lr=1e-3)
    finally:
        handle.remove()
    assert len(losses) == len(used) == 20
    cosine = [0.5 * (1 + math.cos(math.pi * s / 20)) for s in range(20)]
    expected = [1e-3 * min((s + 1) / 2, cosine[s]) for s in range(20)]
    for group, decay in ((0, 0.05), (1, 0.0)):
        assert [step[group][0] for step in used] == pytest.approx(expected, rel=1e-12)
        assert {step[group][1] for step in used} == {decay}
    assert losses[-1] < losses[0]


def test_small_clip_trains_through_the_cache_with_the_demos_settings(
    tmp_path, monkeypatch
):
    """The cached model's wiring, with training stubbed: `fit` hands the demo's
    settings to `train`, and the model returned holds the weights `fit` returned."""
    monkeypatch.setenv("ANNOTATED_DL_CACHE", str(tmp_path))
    for name, value in (("TRAIN_PAIRS", 8), ("EPOCHS", 1), ("BATCH_SIZE", 4)):
        monkeypatch.setattr(clip, name, value)
    runs = []
    monkeypatch.setattr(clip, "train", lambda *a, **k: runs.append((a[1:], k)))
    model, tokenizer = clip.small_clip()
    (images, ids, *settings), keywords = runs[0]
    assert len(runs) == 1 and settings == [1, 4, clip.LR] and keywords == {"seed": 0}
    assert images.shape[0] == ids.shape[0] == 8 and not model.training
    assert isinstance(tokenizer, WordTokenizer)
    assert model.config.eos_token_id == tokenizer.eot
    assert len(list(tmp_path.glob("clip-small-*.safetensors"))) == 1
    torch.manual_seed(0)
    fitted = CLIP(model.config).state_dict()  # what `fit` returns, untrained
    pairs = zip(model.state_dict().values(), fitted.values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_example_runs():
    fn, args = example()
    assert fn(*args).shape == (2, 2)


def test_demo_beats_chance_on_held_out_pairs(tmp_path):
    metric, args, low, high = short_band("annotated/vision/clip.py")
    metrics = main([*args, "--out", str(tmp_path)])
    assert low <= metrics[metric] <= high  # the short run's band over stored seeds
    assert metrics["held_out_accuracy"] > 2 / 15  # chance is 1/15
    assert metrics["seen_accuracy"] > 0.3
    assert metrics["loss"] < math.log(128) - 1
    for name in ("similarity.png", "zero_shot.png"):
        assert (tmp_path / name).exists()


def forward_pair():
    theirs, ours = random_pair(9)
    images = torch.rand(8, 3, 32, 32)
    return theirs.float(), ours.float(), images, random_ids(8, 16)


@pytest.mark.benchmark(
    group="CLIP forward, 8 images 32×32 and 8 texts of 16 tokens, test config"
)
def test_bench_forward_hf(benchmark):
    benchmark.extra_info["label"] = "transformers.CLIPModel (SDPA attention)"
    benchmark.extra_info["baseline"] = True
    theirs, _, images, ids = forward_pair()
    with torch.no_grad():
        benchmark(theirs, input_ids=ids, pixel_values=images)


@pytest.mark.benchmark(
    group="CLIP forward, 8 images 32×32 and 8 texts of 16 tokens, test config"
)
def test_bench_forward_ours(benchmark):
    benchmark.extra_info["label"] = "ours"
    _, ours, images, ids = forward_pair()
    with torch.no_grad():
        benchmark(ours, images, ids)
