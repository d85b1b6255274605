"""Verified against Hugging Face's GPT2LMHeadModel with copied weights: logits and
every parameter's gradient (relative to its largest entry) to 1e-5 in float32 and 1e-10
in float64, the loss to 1e-6.

Also: the parameter counts of the four presets (124,439,808 for gpt2) against HF's
models on the meta device, the initialisation's statistics (N(0, 0.02²), residual
projections 0.02/√(2L), by standard deviation and a Kolmogorov–Smirnov test), a
safetensors folder written by `save_pretrained`, greedy generation against HF's
`generate`, top-k and top-p against HF's logits warpers and on hand distributions.
"""

import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch.optim import lr_scheduler
from torch.optim.optimizer import register_optimizer_step_pre_hook
from scipy import stats
from transformers import GPT2Config as HFConfig
from transformers import GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D
from transformers.generation.logits_process import (
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from annotated.llm.gpt2 import (
    GPT2,
    PRESETS,
    GPT2Config,
    example,
    from_hf_state_dict,
    generate,
    lm_loss,
    load_safetensors,
    main,
    parameter_breakdown,
    to_hf_state_dict,
    top_k_filter,
    top_p_filter,
    train,
)
from tools.literate.figures import short_band

torch.set_num_threads(1)

SMALL = dict(vocab_size=100, n_positions=32, n_embd=64, n_layer=2, n_head=4)


def hf_config(**sizes) -> HFConfig:
    return HFConfig(
        **sizes,
        bos_token_id=None,
        eos_token_id=None,
        attn_implementation="eager",
    )


def pair(dtype=torch.float32, seed=0, **sizes):
    """A random HF model and ours with its weights, both in eval mode."""
    sizes = sizes or SMALL
    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(hf_config(**sizes)).to(dtype).eval()
    config = GPT2Config(**sizes)
    ours = GPT2(config).to(dtype).eval()
    ours.load_state_dict(from_hf_state_dict(hf.state_dict(), config))
    return hf, ours


def tokens(batch=3, seq=17, vocab=100, seed=1):
    return torch.randint(
        0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed)
    )


def conv1d_weights(hf) -> set[str]:
    """The names of HF's `Conv1D` weights, stored `[in, out]` (the square
    `attn.c_proj` too, so the shape cannot tell)."""
    return {
        f"{name}.weight"
        for name, module in hf.named_modules()
        if isinstance(module, Conv1D)
    }


def assert_gradients_match(ours, hf, tol):
    """Each gradient to `tol` of its largest entry: a bias's gradient sums a term per
    token, so an entry near 0 carries the rounding of terms of the largest's size."""
    theirs = dict(hf.named_parameters())
    transposed = conv1d_weights(hf)
    for name, param in ours.named_parameters():
        grad = theirs[f"transformer.{name}"].grad
        if f"transformer.{name}" in transposed:
            grad = grad.t()
        scale = max(1.0, grad.abs().max().item())
        torch.testing.assert_close(
            param.grad, grad, rtol=tol, atol=tol * scale, msg=name
        )


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_logits_and_gradients_match_hf(dtype, tol):
    hf, ours = pair(dtype)
    idx = tokens()
    logits, reference = ours(idx), hf(idx).logits
    torch.testing.assert_close(logits, reference, rtol=tol, atol=tol)
    # A random linear function of the logits reaches every parameter's gradient.
    weights = torch.randn(
        logits.shape, dtype=dtype, generator=torch.Generator().manual_seed(2)
    )
    (logits * weights).sum().backward()
    (reference * weights).sum().backward()
    assert_gradients_match(ours, hf, tol)


def test_loss_and_its_gradients_match_hf():
    hf, ours = pair()
    idx = tokens()
    labels = idx.clone()
    labels[0, :5] = -100  # an ignored prompt
    reference = hf(idx, labels=labels).loss
    loss = lm_loss(ours(idx), labels)
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-6)
    loss.backward()
    reference.backward()
    assert_gradients_match(ours, hf, 1e-5)


def test_a_full_context_matches_hf():
    sizes = dict(vocab_size=50, n_positions=256, n_embd=32, n_layer=1, n_head=2)
    hf, ours = pair(torch.float64, **sizes)
    idx = tokens(batch=1, seq=256, vocab=50)
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, rtol=1e-10, atol=1e-10)


def test_to_hf_state_dict_loads_strictly_into_hf():
    torch.manual_seed(3)
    config = GPT2Config(**SMALL)
    ours = GPT2(config).eval()
    hf = GPT2LMHeadModel(hf_config(**SMALL)).eval()
    hf.load_state_dict(to_hf_state_dict(ours), strict=True)
    idx = tokens()
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, rtol=1e-5, atol=1e-5)


def test_old_checkpoint_keys_load_and_bad_ones_are_named():
    hf, ours = pair()
    config = GPT2Config(**SMALL)
    # The converted OpenAI checkpoints: no prefix, the causal mask as a buffer.
    old = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items()}
    old["h.0.attn.bias"] = torch.ones(1, 1, 32, 32).tril()
    old["h.0.attn.masked_bias"] = torch.tensor(-1e4)
    model = GPT2(config).eval()
    model.load_state_dict(from_hf_state_dict(old, config))
    idx = tokens()
    with torch.no_grad():
        torch.testing.assert_close(model(idx), ours(idx), rtol=0, atol=0)

    missing = dict(hf.state_dict())
    del missing["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(ValueError, match=r"missing keys \['h.1.mlp.c_fc.bias'\]"):
        from_hf_state_dict(missing, config)
    extra = dict(hf.state_dict(), **{"transformer.h.2.ln_1.weight": torch.ones(64)})
    with pytest.raises(ValueError, match=r"unexpected keys \['h.2.ln_1.weight'\]"):
        from_hf_state_dict(extra, config)
    with pytest.raises(ValueError, match="wrong shape.*wpe.weight"):
        from_hf_state_dict(hf.state_dict(), GPT2Config(**{**SMALL, "n_positions": 16}))
    with pytest.raises(TypeError, match="config must be a GPT2Config"):
        from_hf_state_dict(hf.state_dict(), hf.config)


def test_load_safetensors_reads_a_save_pretrained_folder(tmp_path):
    hf, _ = pair(seed=4)
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    model = load_safetensors(tmp_path).eval()
    assert model.config == GPT2Config(**SMALL)
    idx = tokens()
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf(idx).logits, rtol=1e-5, atol=1e-5)
        # The file itself with an explicit config, and a file without config.json.
        same = load_safetensors(tmp_path / "model.safetensors", GPT2Config(**SMALL))
        torch.testing.assert_close(same.eval()(idx), model(idx), rtol=0, atol=0)
    alone = tmp_path / "alone"
    alone.mkdir()
    save_file(
        {k: v.clone() for k, v in to_hf_state_dict(model).items()},
        alone / "weights.safetensors",
    )
    with pytest.raises(ValueError, match="no config.json"):
        load_safetensors(alone / "weights.safetensors")
    with pytest.raises(ValueError, match="no safetensors file"):
        load_safetensors(tmp_path / "nothing.safetensors")
    settings = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(settings | {"n_inner": 100}))
    with pytest.raises(ValueError, match=r"sets \{'n_inner': 100\}"):
        load_safetensors(tmp_path)
    del settings["layer_norm_epsilon"], settings["resid_pdrop"]  # GPT-2's defaults
    (tmp_path / "config.json").write_text(json.dumps(settings))
    assert load_safetensors(tmp_path).config == GPT2Config(**SMALL)


@pytest.mark.parametrize("name", list(PRESETS))
def test_parameter_counts_of_the_presets_match_hf(name):
    config = GPT2Config.preset(name)
    with torch.device("meta"):
        ours = sum(p.numel() for p in GPT2(config).parameters())
        hf_model = GPT2LMHeadModel(
            HFConfig(**PRESETS[name], bos_token_id=None, eos_token_id=None)
        )
        theirs = sum(p.numel() for p in hf_model.parameters())
    assert ours == theirs == sum(parameter_breakdown(config).values())
    published = {
        "gpt2": 124_439_808,
        "gpt2-medium": 354_823_168,
        "gpt2-large": 774_030_080,
        "gpt2-xl": 1_557_611_200,
    }
    assert ours == published[name]


def test_initialisation_follows_the_paper():
    torch.manual_seed(5)
    config = GPT2Config(
        vocab_size=2000, n_positions=512, n_embd=256, n_layer=6, n_head=4
    )
    model = GPT2(config)
    residual = 0.02 / math.sqrt(2 * config.n_layer)
    groups = {0.02: [], residual: []}
    for name, param in model.named_parameters():
        if name.endswith("c_proj.weight"):
            groups[residual].append(param.detach().flatten())
        elif name.endswith(
            ("c_attn.weight", "c_fc.weight", "wte.weight", "wpe.weight")
        ):
            groups[0.02].append(param.detach().flatten())
        elif "ln" in name:
            expected = 1.0 if name.endswith("weight") else 0.0
            assert torch.all(param == expected), name
        else:
            assert name.endswith("bias") and torch.all(param == 0), name
    for std, tensors in groups.items():
        values = torch.cat(tensors).double()
        assert abs(values.std().item() / std - 1) < 0.01
        assert abs(values.mean().item()) < 0.01 * std
        sample = values[torch.randperm(len(values))[:20000]].numpy()
        assert stats.kstest(sample, "norm", args=(0, std)).pvalue > 1e-3
    # Each matrix on its own, so that one wrongly scaled layer cannot hide in the pool.
    for block in model.h:
        for linear, std in (
            (block.attn.c_attn, 0.02),
            (block.attn.c_proj, residual),
            (block.mlp.c_fc, 0.02),
            (block.mlp.c_proj, residual),
        ):
            assert abs(linear.weight.std().item() / std - 1) < 0.05


def test_output_embedding_is_tied():
    model, (idx,) = example()
    model.wte.weight.data[7] = 0.0
    logits = model(idx)
    torch.testing.assert_close(logits[..., 7], torch.zeros_like(logits[..., 7]))
    names = [name for name, _ in model.named_parameters()]
    assert "wte.weight" in names and not any("lm_head" in n for n in names)


def test_dropout_is_used_in_training_only():
    torch.manual_seed(6)
    model = GPT2(GPT2Config(**{**SMALL, "dropout": 0.5}))
    idx = tokens()
    model.train()
    assert not torch.allclose(model(idx), model(idx))
    model.eval()
    torch.testing.assert_close(model(idx), model(idx), rtol=0, atol=0)


def test_greedy_generation_matches_hf_generate():
    hf, ours = pair(seed=7)
    idx = tokens(batch=2, seq=5)
    theirs = hf.generate(
        idx,
        attention_mask=torch.ones_like(idx),
        max_new_tokens=12,
        do_sample=False,
        pad_token_id=0,
    )
    torch.testing.assert_close(generate(ours, idx, 12, temperature=0.0), theirs)


def test_temperature_zero_top_k_one_and_a_cold_temperature_are_greedy():
    _, ours = pair(seed=8)
    idx = tokens(batch=2, seq=4)
    greedy = generate(ours, idx, 10, temperature=0.0)
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(generate(ours, idx, 10, top_k=1, generator=generator), greedy)
    cold = generate(ours, idx, 10, temperature=1e-4, generator=generator)
    assert torch.equal(cold, greedy)
    assert not torch.equal(generate(ours, idx, 10, generator=generator), greedy)


def test_sampling_with_a_generator_is_reproducible():
    _, ours = pair(seed=9)
    idx = tokens(batch=2, seq=4)

    def draw(seed):
        generator = torch.Generator().manual_seed(seed)
        return generate(ours, idx, 15, 1.3, top_k=50, top_p=0.95, generator=generator)

    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))


def test_generation_past_the_context_slides_the_window():
    _, ours = pair(seed=10)
    seen = []  # what each step feeds the model
    hook = ours.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    out = generate(ours, tokens(batch=1, seq=30), 10, temperature=0.0)
    hook.remove()
    assert out.shape == (1, 40)
    # Step i reads the 32 tokens just before position 30 + i, never the first 32: a
    # random model repeats one token greedily, so the tokens alone cannot tell.
    assert len(seen) == 10
    for i, idx in enumerate(seen):
        assert torch.equal(idx, out[:, max(0, 30 + i - 32) : 30 + i]), i
    # The last token is the greedy choice given the last 32 tokens only.
    with torch.no_grad():
        expected = ours(out[:, -33:-1])[:, -1].argmax(-1)
    assert out[0, -1] == expected[0]


def test_top_p_on_a_hand_distribution():
    probs = torch.tensor([0.125, 0.5, 0.125, 0.25], dtype=torch.float64)
    logits = probs.log()

    def kept(p):
        return set(torch.nonzero(top_p_filter(logits, p).isfinite()).flatten().tolist())

    assert kept(0.3) == {1}
    assert kept(0.5) == {1}  # 0.5 reaches p exactly: nothing more is needed
    assert kept(0.6) == {1, 3}
    assert kept(0.75) == {1, 3}
    assert kept(0.8) == {0, 1, 2, 3}  # 0.125 brings it to 0.875; its tie comes too
    assert kept(1.0) == {0, 1, 2, 3}
    # The kept logits are unchanged, so a softmax renormalises them.
    torch.testing.assert_close(top_p_filter(logits, 0.6)[[1, 3]], logits[[1, 3]])
    uniform = torch.zeros(2, 5)
    assert top_p_filter(uniform, 0.1).isfinite().all()  # all tied: all kept


@given(
    seed=st.integers(0, 10_000),
    p=st.floats(0.05, 0.99),
    k=st.integers(1, 40),
)
def test_top_k_and_top_p_match_hf_warpers(seed, p, k):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 37, generator=generator, dtype=torch.float64) * 3
    torch.testing.assert_close(
        top_k_filter(logits, k), TopKLogitsWarper(k)(None, logits)
    )
    torch.testing.assert_close(
        top_p_filter(logits, p), TopPLogitsWarper(p)(None, logits)
    )


def test_top_k_keeps_ties_at_the_boundary():
    logits = torch.tensor([1.0, 3.0, 2.0, 2.0, 0.0])
    kept = top_k_filter(logits, 2).isfinite()
    assert kept.tolist() == [False, True, True, True, False]
    assert top_k_filter(logits, 100).isfinite().all()


def test_bad_inputs_raise_naming_the_argument():
    with pytest.raises(
        ValueError, match=r"n_embd \(30\) must be divisible by .*n_head \(4\)"
    ):
        GPT2Config(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="n_layer must be a positive int"):
        GPT2Config(n_layer=0)
    with pytest.raises(ValueError, match="dropout"):
        GPT2Config(dropout=1.0)
    with pytest.raises(ValueError, match="layer_norm_epsilon must be > 0"):
        GPT2Config(layer_norm_epsilon=0.0)
    with pytest.raises(ValueError, match="preset must be one of"):
        GPT2Config.preset("gpt3")
    model, (idx,) = example()
    with pytest.raises(TypeError, match="idx must be an integer tensor"):
        model(idx.float())
    with pytest.raises(TypeError, match="token ids, got torch.bool"):
        model(idx > 0)
    with pytest.raises(
        ValueError, match="17 positions but the model's n_positions is 16"
    ):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"idx must be \[batch, seq\]"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids in \[0, 64\)"):
        model(torch.full((1, 3), 64))
    with pytest.raises(ValueError, match="top_p must be in"):
        top_p_filter(torch.zeros(3), 0.0)
    with pytest.raises(ValueError, match="top_k must be an int"):
        top_k_filter(torch.zeros(3), 0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        generate(model, idx, 2, temperature=-1.0)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0"):
        generate(model, idx, -1)
    with pytest.raises(ValueError, match="max_new_tokens must be an int, got 2.0"):
        generate(model, idx, 2.0)
    with pytest.raises(ValueError, match=r"labels must be \(2, 8\)"):
        lm_loss(model(idx), idx[:, :4])
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        lm_loss(model(idx), idx.float())


def test_extreme_embeddings_stay_finite():
    model, (idx,) = example()
    with torch.no_grad():
        model.wte.weight.mul_(1e4)
    assert model(idx).isfinite().all()


def test_example_runs():
    fn, args = example()
    assert fn(*args).shape == (2, 8, 64)


def test_train_warms_up_linearly_then_follows_torch_cosine_annealing():
    # The learning rate of every step: torch's LinearLR over the first tenth of the
    # steps, from lr / warmup up to lr, then CosineAnnealingLR down towards 0.
    torch.manual_seed(0)
    model = GPT2(GPT2Config(**SMALL))
    data = torch.randint(0, SMALL["vocab_size"], (400,))
    seen = []
    handle = register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: seen.append(optimizer.param_groups[0]["lr"])
    )
    try:
        train(model, data, steps=30, batch=2, length=8, lr=1e-3)
    finally:
        handle.remove()
    reference = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    schedule = lr_scheduler.SequentialLR(
        reference,
        [
            lr_scheduler.LinearLR(reference, 1 / 3, 1.0, total_iters=2),
            lr_scheduler.CosineAnnealingLR(reference, T_max=27),
        ],
        milestones=[3],
    )
    expected = []
    for _ in range(30):
        expected.append(reference.param_groups[0]["lr"])
        reference.step()
        schedule.step()
    assert seen == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_demo_loss_falls(tmp_path):
    # The short run's validation loss over the stored seeds is its expected band.
    metric, args, low, high = short_band("annotated/llm/gpt2.py")
    metrics = main([*args, "--out", str(tmp_path)])
    assert low <= metrics[metric] <= high
    assert metrics["first_loss"] > 5.0  # about ln 256 = 5.55 at the start
    assert metrics["final_loss"] < metrics["first_loss"] - 1.5
    assert metrics["validation_loss"] < 4.0
    assert metrics["unigram_loss"] == pytest.approx(3.22, abs=0.01)
    assert (tmp_path / "gpt2.png").exists()


BENCH = dict(vocab_size=512, n_positions=128, n_embd=128, n_layer=2, n_head=4)


def bench_pair():
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(
        HFConfig(**BENCH, bos_token_id=None, eos_token_id=None)
    ).eval()  # HF's default attention: PyTorch's SDPA, as ours
    config = GPT2Config(**BENCH)
    ours = GPT2(config).eval()
    ours.load_state_dict(from_hf_state_dict(hf.state_dict(), config))
    return hf, ours, tokens(batch=8, seq=128, vocab=512)


@pytest.mark.benchmark(group="gpt2 forward, 2 layers × 128 wide, batch 8 × 128")
def test_bench_forward_ours(benchmark):
    benchmark.extra_info["label"] = "our GPT2"
    _, ours, idx = bench_pair()
    with torch.no_grad():
        benchmark(ours, idx)


@pytest.mark.benchmark(group="gpt2 forward, 2 layers × 128 wide, batch 8 × 128")
def test_bench_forward_hf(benchmark):
    benchmark.extra_info["label"] = "transformers GPT2LMHeadModel"
    benchmark.extra_info["baseline"] = True
    hf, _, idx = bench_pair()
    with torch.no_grad():
        benchmark(hf, idx)


@pytest.mark.benchmark(
    group="gpt2 forward + backward, 2 layers × 128 wide, batch 8 × 128"
)
def test_bench_forward_backward_ours(benchmark):
    benchmark.extra_info["label"] = "our GPT2"
    _, ours, idx = bench_pair()
    benchmark(lambda: lm_loss(ours(idx), idx).backward())


@pytest.mark.benchmark(
    group="gpt2 forward + backward, 2 layers × 128 wide, batch 8 × 128"
)
def test_bench_forward_backward_hf(benchmark):
    benchmark.extra_info["label"] = "transformers GPT2LMHeadModel"
    benchmark.extra_info["baseline"] = True
    hf, _, idx = bench_pair()
    benchmark(lambda: hf(idx, labels=idx).loss.backward())
