"""Verified against transformers.GPT2LMHeadModel(inputs_embeds=...) with copied weights
in float64 (logits and the gradients reaching the projector and the GPT to 1e-10), and
the answer-only loss against a cross-entropy over the answer positions written out.

Also: greedy answers decoded in a padded batch equal those decoded one at a time and
Hugging Face's `generate(inputs_embeds=...)`; a stage-1 step moves the projector and
nothing else; each generated question's answer agrees with the rendered pixels
(colour, shape and size read off each colour's coverage, the count as connected
regions, the position from the two colours' centroids; where two objects share a
colour, only the colour and count answers are checked); a prompt that overflows the
context is a ValueError; the demo runs on tiny models.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from scipy import ndimage
from torch.optim.optimizer import register_optimizer_step_pre_hook
from transformers import GPT2Config as HFConfig
from transformers import GPT2LMHeadModel

from annotated.data import COLOURS, RELATIONS, shapes
from annotated.llm import bpe
from annotated.llm.gpt2 import CONV1D_WEIGHTS, GPT2, GPT2Config, to_hf_state_dict
from annotated.vision import multimodal_chat
from annotated.vision.clip import CLIP
from annotated.vision.clip import Config as CLIPConfig
from annotated.vision.multimodal_chat import (
    MultimodalGPT,
    answer,
    answer_loss,
    answer_prior,
    chat,
    collate,
    encode_example,
    example,
    image_questions,
    make_pictures,
    question_set,
    train_stage,
)

torch.set_num_threads(1)
transformers.logging.set_verbosity_error()

SIZES = dict(n_positions=64, n_embd=32, n_layer=2, n_head=4)


def tiny_clip(seed: int = 0) -> CLIP:
    """A random CLIP with 16 patches of 8 pixels and a width of 16."""
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_hidden_size=16,
        text_layers=1,
        text_heads=2,
        text_intermediate_size=32,
        vision_hidden_size=16,
        vision_layers=1,
        vision_heads=2,
        vision_intermediate_size=32,
        projection_dim=8,
    )
    return CLIP(config).eval()


def tiny_gpt(vocab_size: int = 257, seed: int = 1) -> GPT2:
    torch.manual_seed(seed)
    return GPT2(GPT2Config(vocab_size=vocab_size, dropout=0.0, **SIZES)).eval()


def tiny_model(seed: int = 0) -> MultimodalGPT:
    model = MultimodalGPT(tiny_clip(seed), tiny_gpt(seed=seed + 1))
    torch.manual_seed(seed + 2)
    with torch.no_grad():  # off the default init, so that every weight matters
        for p in model.projector.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def byte_tokenizer() -> bpe.Tokenizer:
    return bpe.train("", 0)  # the 256 bytes and <|endoftext|> = 256


def hf_twin(model: MultimodalGPT) -> GPT2LMHeadModel:
    config = model.gpt.config
    hf = GPT2LMHeadModel(
        HFConfig(
            vocab_size=config.vocab_size,
            n_positions=config.n_positions,
            n_embd=config.n_embd,
            n_layer=config.n_layer,
            n_head=config.n_head,
            bos_token_id=None,
            eos_token_id=None,
            attn_implementation="eager",
        )
    )
    hf.load_state_dict(to_hf_state_dict(model.gpt), strict=True)
    return hf.to(next(model.parameters()).dtype).eval()


def test_forward_and_gradients_match_hf_inputs_embeds():
    model = tiny_model().double()
    hf = hf_twin(model)
    images = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    ids = torch.randint(0, 257, (3, 21))
    logits = model(images, ids)
    assert logits.shape == (3, 16 + 21, 257)
    theirs = hf(inputs_embeds=model.embed(images, ids)).logits
    torch.testing.assert_close(logits, theirs, rtol=0, atol=1e-10)

    weights = torch.randn_like(logits)
    hf_parameters = dict(hf.named_parameters())
    grads = {}
    for name, run in (("ours", lambda: logits), ("hf", lambda: theirs)):
        model.zero_grad()
        hf.zero_grad()
        (run() * weights).sum().backward()
        gpt = {}
        for key, p in model.gpt.named_parameters():
            if name == "ours":
                gpt[key] = p.grad.clone()
                continue
            grad = hf_parameters[f"transformer.{key}"].grad
            if key.endswith(CONV1D_WEIGHTS):
                grad = grad.T  # Conv1D [in, out] → nn.Linear [out, in]
            if key == "wte.weight":  # HF's copy serves as the tied output layer only;
                grad = grad + p.grad  # the text embedding goes through model.embed
            gpt[key] = grad.clone()
        grads[name] = {
            "projector": [p.grad.clone() for p in model.projector.parameters()],
            "gpt": gpt,
        }
    for ours, theirs in zip(grads["ours"]["projector"], grads["hf"]["projector"]):
        assert ours.abs().max() > 0
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
    assert len(grads["ours"]["gpt"]) == len(list(model.gpt.parameters()))
    for key, ours in grads["ours"]["gpt"].items():
        assert ours.abs().max() > 0, key
        torch.testing.assert_close(
            ours,
            grads["hf"]["gpt"][key],
            rtol=0,
            atol=1e-10,
            msg=lambda message, key=key: f"{key}: {message}",
        )
    assert all(p.grad is None for p in model.clip.parameters())


def test_image_tokens_are_clip_patches_projected():
    model = tiny_model()
    images = torch.rand(2, 3, 32, 32)
    ids = torch.randint(0, 257, (2, 5))
    embeds = model.embed(images, ids)  # [2, 21, 32]
    patches = model.clip.image_tokens(images)[:, 1:]  # the class token dropped
    torch.testing.assert_close(embeds[:, :16], model.projector(patches))
    torch.testing.assert_close(embeds[:, 16:], model.gpt.wte(ids))
    first = model.projector.linear_1
    torch.testing.assert_close(
        model.projector(patches),
        model.projector.linear_2(F.gelu(patches @ first.weight.T + first.bias)),
    )


def test_answer_loss_is_cross_entropy_over_answer_positions():
    torch.manual_seed(0)
    n, batch, seq, vocab = 4, 3, 7, 11
    logits = torch.randn(batch, n + seq, vocab, dtype=torch.float64)
    labels = torch.randint(0, vocab, (batch, seq))
    labels[0, :5] = -100  # prompts of different lengths, and right padding
    labels[1, :2] = -100
    labels[1, 6:] = -100
    labels[2, :6] = -100
    terms = [
        F.cross_entropy(logits[b, n + t - 1], labels[b, t])
        for b in range(batch)
        for t in range(seq)
        if labels[b, t] != -100
    ]
    expected = torch.stack(terms).mean()
    torch.testing.assert_close(
        answer_loss(logits, labels, n), expected, rtol=0, atol=1e-12
    )
    with pytest.raises(ValueError, match="do not match logits"):
        answer_loss(logits, labels, n + 1)


def test_encode_example_masks_the_prompt_and_collate_pads():
    tokenizer = byte_tokenizer()
    ids, labels = encode_example(tokenizer, "how many objects are there?", "two")
    prompt = "Q: how many objects are there?\nA:"
    assert tokenizer.decode(ids) == prompt + " two<|endoftext|>"
    assert labels[: len(prompt)] == [-100] * len(prompt)
    assert labels[len(prompt) :] == ids[len(prompt) :] == [*b" two", 256]
    short = encode_example(tokenizer, "why?", "no")
    input_ids, padded = collate(tokenizer, [(ids, labels), short])
    assert input_ids.shape == padded.shape == (2, len(ids))
    assert input_ids[1, len(short[0]) :].eq(256).all()
    assert padded[1, len(short[0]) :].eq(-100).all()


def test_a_stage_warms_up_for_a_tenth_of_its_steps_then_follows_a_cosine():
    # The learning rate each optimizer step used, recorded by torch's global step
    # hook: 20 steps warm up over 2, lr * (s + 1) / 2, then follow
    # lr * (1 + cos(pi s / 20)) / 2.
    used = []
    handle = register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: used.append(optimizer.param_groups[0]["lr"])
    )
    model, tokenizer = tiny_model(), byte_tokenizer()
    examples = [(0, *encode_example(tokenizer, "what?", "red"))]
    try:
        train_stage(
            model,
            torch.rand(1, 3, 32, 32),
            examples,
            tokenizer,
            list(model.projector.parameters()),
            steps=20,
            batch_size=1,
            lr=1e-2,
            seed=0,
            desc="stage 1",
        )
    finally:
        handle.remove()
    cosine = [0.5 * (1 + math.cos(math.pi * s / 20)) for s in range(20)]
    expected = [1e-2 * min((s + 1) / 2, cosine[s]) for s in range(20)]
    assert used == pytest.approx(expected, rel=1e-12)
    assert used[0] == pytest.approx(5e-3) and used[-1] < 1e-4


def test_stage1_step_moves_only_the_projector():
    model = tiny_model()
    tokenizer = byte_tokenizer()
    images = torch.rand(4, 3, 32, 32)
    examples = [(i, *encode_example(tokenizer, "what?", "red")) for i in range(4)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = train_stage(
        model,
        images,
        examples,
        tokenizer,
        list(model.projector.parameters()),
        steps=2,
        batch_size=4,
        lr=1e-2,
        seed=0,
        desc="stage 1",
    )
    assert len(losses) == 2 and all(np.isfinite(losses))
    after = model.state_dict()
    for name, tensor in before.items():
        if name.startswith("projector."):
            assert not torch.equal(tensor, after[name]), name
        else:
            assert torch.equal(tensor, after[name]), name
    model.train()
    assert model.gpt.training and not model.clip.training
    assert not any(p.requires_grad for p in model.clip.parameters())


def test_batched_greedy_answers_equal_one_by_one_and_hf_generate():
    model = tiny_model()
    with torch.no_grad():  # large weights, so that the replies differ
        for p in model.gpt.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    tokenizer = byte_tokenizer()
    images = torch.rand(3, 3, 32, 32)
    questions = ["what colour is the circle?", "why?", "how many objects are there?"]
    batched = answer(model, tokenizer, images, questions, max_new_tokens=6)
    alone = [chat(model, tokenizer, image, q, 6) for image, q in zip(images, questions)]
    assert batched == alone
    assert len(set(batched)) == 3, batched
    hf = hf_twin(model)
    for image, question, reply in zip(images, questions, batched):
        ids = torch.tensor([tokenizer.encode_ordinary(f"Q: {question}\nA:")])
        new = hf.generate(
            inputs_embeds=model.embed(image[None], ids),
            attention_mask=torch.ones(1, 16 + ids.shape[1], dtype=torch.long),
            max_new_tokens=6,
            do_sample=False,
            eos_token_id=256,
            pad_token_id=256,
        )[0].tolist()
        new = new[: new.index(256)] if 256 in new else new
        assert tokenizer.decode(new).strip() == reply


def test_a_prompt_that_overflows_the_context_is_a_value_error():
    model = tiny_model()
    tokenizer = byte_tokenizer()
    image = torch.rand(3, 32, 32)
    fits = torch.randint(0, 257, (1, 64 - 16))
    assert model(image[None], fits).shape == (1, 64, 257)
    with pytest.raises(ValueError, match="context overflow: 16 image tokens"):
        model(image[None], torch.randint(0, 257, (1, 64 - 15)))
    long_question = "where " * 10  # 60 bytes and the template's 7
    with pytest.raises(ValueError, match="context overflow"):
        chat(model, tokenizer, image, long_question)
    with pytest.raises(ValueError, match="image must be one"):
        chat(model, tokenizer, image[None], "why?")
    with pytest.raises(ValueError, match="one image per question"):
        answer(model, tokenizer, image[None].repeat(2, 1, 1, 1), ["why?"])
    with pytest.raises(TypeError, match="int64"):
        model(image[None], fits.float())
    with pytest.raises(ValueError, match=r"input_ids must be \[batch, seq\], got \(48"):
        model(image[None], fits[0])


def centre(image: np.ndarray, colour: str) -> np.ndarray:
    """The (row, column) centroid of the pixels nearest to `colour`."""
    rgb = np.array(COLOURS[colour], dtype=np.float32)[:, None, None]
    mask = np.abs(image - rgb).sum(0) < 0.1  # [H, W]
    assert mask.any()
    return np.argwhere(mask).mean(0)


def coverage(image: np.ndarray, colour: str) -> np.ndarray:
    """How much of each pixel `[H, W]` the shapes of `colour` cover: the pixel's
    multiple of the colour where the pixel is one (shapes lie on black), else 0."""
    rgb = np.array(COLOURS[colour], dtype=np.float32)[:, None, None]
    amount = (image * rgb).sum(0) / (rgb**2).sum()  # [H, W]
    return np.where(np.abs(image - amount * rgb).sum(0) < 0.05, amount, 0.0)


def size_of(cover: np.ndarray) -> str:
    """A shape's area in pixels: at most 64 when small, at least 90 when large."""
    return "small" if cover.sum() < 77 else "large"


def shape_of(cover: np.ndarray) -> str:
    """A shape's area over its widest row times its tallest column: 1 for a square,
    pi/4 for a circle, about 0.6 for the triangle."""
    fill = cover.sum() / (cover.sum(1).max() * cover.sum(0).max())
    return "square" if fill > 0.9 else "circle" if fill > 0.72 else "triangle"


def test_each_question_is_answered_by_the_pixels():
    data = shapes(60, objects=2, seed=3)
    rng = np.random.default_rng(0)
    seen = set()
    for image, objects, relation in zip(data.images, data.attributes, data.relations):
        covers = {c: coverage(image, c) for c in COLOURS}
        present = {c: cover for c, cover in covers.items() if cover.sum() > 20}
        blobs = ndimage.label(sum(covers.values()) > 0.5)[1]  # connected regions
        for kind, question, right in image_questions(objects, int(relation), rng):
            seen.add(kind)
            if kind == "count":
                assert right == ("one", "two")[blobs - 1]
            if kind == "colour":  # a shape of that colour and of the named shape
                named = question.removeprefix("what colour is the ").removesuffix("?")
                assert right in present, (question, right)
                if len(present) == 2:
                    assert shape_of(present[right]) == named, (question, right)
            if kind == "shape":  # the only shape of the named colour
                named = question.split()[4]
                assert shape_of(present[named]) == right, (question, right)
            if kind == "size" and len(present) == 2:
                named = question.split()[2]
                assert size_of(present[named]) == right, (question, right)
            if kind == "position":
                words = question.removeprefix("where is the ").split()
                first, second = centre(image, words[0]), centre(image, words[5])
                if words[0] == words[5]:
                    continue  # same colour: centroids mixed
                offset = {
                    "above": (-1, 0),
                    "below": (1, 0),
                    "left of": (0, -1),
                    "right of": (0, 1),
                }[right]
                assert np.dot(first - second, offset) > 0, (question, right)
    assert seen == {"colour", "shape", "size", "count", "position"}
    one = shapes(20, objects=1, seed=4)
    for image, objects in zip(one.images, one.attributes):
        asked = image_questions(objects, -1, rng)
        assert [kind for kind, _, _ in asked] == ["colour", "shape", "size", "count"]
        (colour, cover), *others = [
            (c, cover) for c in COLOURS if (cover := coverage(image, c)).sum() > 20
        ]
        assert not others
        assert [right for _, _, right in asked] == [
            colour,
            shape_of(cover),
            size_of(cover),
            "one",
        ]


def test_question_set_and_prior():
    images, attributes, relations, captions = make_pictures(40, seed=5)
    assert images.shape == (40, 3, 32, 32) and len(captions) == 40
    assert (attributes[:20, 1] == -1).all() and (relations[:20] == -1).all()
    asked = question_set(attributes, relations, seed=0)
    assert {index for index, *_ in asked} == set(range(40))
    assert answer_prior(asked)["count"] in ("one", "two")
    assert all(a in RELATIONS for _, k, _, a in asked if k == "position")


def test_a_question_type_nobody_asked_has_no_prior_and_scores_nan():
    """Two pictures may allow no position question (the demo's smallest counts)."""
    images, attributes, relations, _ = make_pictures(2, seed=3)
    asked = [q for q in question_set(attributes, relations, seed=0) if q[1] != "count"]
    asked = [q for q in asked if q[1] != "position"]
    prior = answer_prior(asked)
    assert prior["position"] is None and prior["count"] is None
    assert prior["colour"] is not None
    result = multimodal_chat.evaluate(
        tiny_model(), byte_tokenizer(), images, asked, prior
    )
    assert np.isnan(result["seeing"]["position"]) and np.isnan(result["blind"]["count"])
    assert 0 <= result["seeing"]["overall"] <= 1 and result["blind"]["colour"] == 1


def test_demo_short_run(tmp_path, monkeypatch, capsys):
    pictures = make_pictures(400, seed=9)
    text = " ".join(q + " " + a for _, _, q, a in question_set(*pictures[1:3], seed=0))
    tokenizer = bpe.train(text + " " + " ".join(pictures[3]) + " Q: A:", 150)
    vocab = tokenizer.vocabulary_size
    monkeypatch.setattr(
        multimodal_chat, "small_clip", lambda device: (tiny_clip().to(device), None)
    )
    monkeypatch.setattr(
        multimodal_chat,
        "small_gpt",
        lambda device: (tiny_gpt(vocab).to(device), tokenizer, [], []),
    )
    flags = ["--pictures", "200", "--test", "20", "--stage1-steps", "3",
             "--batch-size", "16", "--lr2", "1e-2", "--device", "cpu",
             "--out", str(tmp_path)]  # fmt: skip
    result = multimodal_chat.main([*flags, "--stage2-steps", "100", "--bar", "0"])
    printed = capsys.readouterr().out
    assert "Q: " in printed and "overall" in printed
    assert result["stage2_loss"] < 1.5  # from about ln(vocab) = 5.9
    assert 0.1 < result["accuracy"] <= 1 and 0 < result["blind_accuracy"] < 1
    assert (tmp_path / "dialogues.png").is_file()
    assert (tmp_path / "accuracy.png").is_file()
    with pytest.raises(RuntimeError, match="is not above the bar 0.9"):
        multimodal_chat.main([*flags, "--stage2-steps", "2", "--bar", "0.9"])


def test_example_runs():
    model, args = example()
    assert model(*args).shape == (2, 16 + 10, 257)


def bench_inputs():
    model, (images, ids) = example()
    images, ids = images.repeat(4, 1, 1, 1), ids.repeat(4, 1)  # batch 8
    return model, hf_twin(model), images, ids


@pytest.mark.benchmark(group="multimodal forward, batch 8, 26 positions")
def test_bench_forward_ours(benchmark):
    benchmark.extra_info["label"] = "ours"
    model, _, images, ids = bench_inputs()
    with torch.no_grad():
        benchmark(model, images, ids)


@pytest.mark.benchmark(group="multimodal forward, batch 8, 26 positions")
def test_bench_forward_hf(benchmark):
    benchmark.extra_info["label"] = "GPT2LMHeadModel(inputs_embeds=...)"
    benchmark.extra_info["baseline"] = True
    model, hf, images, ids = bench_inputs()
    with torch.no_grad():
        benchmark(lambda: hf(inputs_embeds=model.embed(images, ids)).logits)
