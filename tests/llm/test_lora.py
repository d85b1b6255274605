"""Verified against peft's LoRA on transformers' GPT2LMHeadModel with the same A and B:
logits equal in float64 to 1e-10 and the adapters' gradients to a relative 1e-9, and a
saved adapter loaded by peft.PeftModel.from_pretrained gives our outputs.

Also: merged weights give the unmerged outputs and unmerging restores the base weights
(float64, 1e-12); at initialisation the adapted model equals the base model exactly;
only the adapters receive gradients and only they change in a training step; the
trainable count equals peft's; the demo's short run lowers the loss on source.
"""

import copy
import json
import math

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import GPT2Config as HFConfig
from transformers import GPT2LMHeadModel

import annotated.llm.lora as lora
from annotated.llm.bpe import train as train_tokenizer
from annotated.llm.gpt2 import GPT2, GPT2Config, from_hf_state_dict
from annotated.llm.lora import (
    LINEARS,
    LoRALinear,
    adapters,
    add_lora,
    example,
    finetune,
    load_adapter,
    main,
    merge_lora,
    save_adapter,
    trainable_parameters,
    training_state_bytes,
    unmerge_lora,
)
from annotated.llm.pretraining import TrainSettings, make_optimizer, train_step

SIZES = dict(vocab_size=61, n_positions=16, n_embd=24, n_layer=2, n_head=3)
PEFT_TARGETS = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]


def hf_and_ours(dtype=torch.float64):
    """HF's GPT-2 and ours with the same random weights, in eval mode."""
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(
        HFConfig(
            **SIZES,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
        )  # fmt: skip
    ).to(dtype)
    ours = GPT2(GPT2Config(**SIZES, dropout=0.0)).to(dtype)
    ours.load_state_dict(from_hf_state_dict(hf.state_dict(), ours.config))
    return hf.eval(), ours.eval()


def peft_model(hf, rank=4, alpha=8.0):
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=PEFT_TARGETS,
        lora_dropout=0.0,
        fan_in_fan_out=True,
        init_lora_weights=False,  # random B as well, so the adapters matter
    )
    return get_peft_model(hf, config)


def copy_from_peft(peft, ours):
    """Copy peft's A and B into our adapters (the same layouts: [r, in], [out, r])."""
    weights = dict(peft.named_parameters())
    with torch.no_grad():
        for name, layer in adapters(ours).items():
            prefix = f"base_model.model.transformer.{name}"
            layer.lora_A.copy_(weights[f"{prefix}.lora_A.default.weight"])
            layer.lora_B.copy_(weights[f"{prefix}.lora_B.default.weight"])


def test_outputs_and_gradients_equal_peft():
    hf, ours = hf_and_ours()
    peft = peft_model(hf)
    add_lora(ours, rank=4, alpha=8.0)
    copy_from_peft(peft, ours)
    idx = torch.randint(0, SIZES["vocab_size"], (3, 13))
    theirs_logits = peft(input_ids=idx).logits
    our_logits = ours(idx)
    torch.testing.assert_close(our_logits, theirs_logits, rtol=0, atol=1e-10)
    weights = torch.randn_like(our_logits)
    (our_logits * weights).sum().backward()
    (theirs_logits * weights).sum().backward()
    named = dict(peft.named_parameters())
    for name, layer in adapters(ours).items():
        prefix = f"base_model.model.transformer.{name}"
        for part in ("lora_A", "lora_B"):
            theirs = named[f"{prefix}.{part}.default.weight"].grad
            torch.testing.assert_close(
                getattr(layer, part).grad, theirs, rtol=1e-9, atol=1e-12
            )


def test_trainable_count_equals_peft():
    hf, ours = hf_and_ours(torch.float32)
    trainable, total = peft_model(hf).get_nb_trainable_parameters()
    add_lora(ours, rank=4, alpha=8.0)
    # peft counts HF's total, which has the same parameters (lm_head is tied)
    assert trainable_parameters(ours) == (trainable, total)
    # r (d_in + d_out) per layer: c_attn 4(24+72), c_proj 4(24+24), c_fc 4(24+96),
    # mlp.c_proj 4(96+24), in each of 2 blocks
    assert trainable == 2 * 4 * (96 + 48 + 120 + 120)


def test_saved_adapter_loads_in_peft_and_back(tmp_path):
    hf, ours = hf_and_ours()
    base = copy.deepcopy(ours)
    add_lora(ours, rank=2, alpha=5.0)
    for layer in adapters(ours).values():
        nn.init.normal_(layer.lora_B)
    folder = save_adapter(ours, tmp_path / "adapter")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["target_modules"] == sorted(PEFT_TARGETS)
    loaded = PeftModel.from_pretrained(hf, folder)
    idx = torch.randint(0, SIZES["vocab_size"], (2, 9))
    torch.testing.assert_close(
        loaded(input_ids=idx).logits, ours(idx), rtol=0, atol=1e-10
    )
    again = load_adapter(base, folder)
    torch.testing.assert_close(again(idx), ours(idx), rtol=0, atol=0)


def test_merge_equals_unmerged_and_unmerge_restores():
    _, ours = hf_and_ours()
    before = {n: p.clone() for n, p in ours.state_dict().items()}
    add_lora(ours, rank=3, alpha=6.0)
    for layer in adapters(ours).values():
        nn.init.normal_(layer.lora_B)
    idx = torch.randint(0, SIZES["vocab_size"], (2, 16))
    unmerged = ours(idx)
    merge_lora(ours)
    assert all(layer.merged for layer in adapters(ours).values())
    torch.testing.assert_close(ours(idx), unmerged, rtol=0, atol=1e-12)
    with pytest.raises(RuntimeError, match="already merged"):
        merge_lora(ours)
    unmerge_lora(ours)
    torch.testing.assert_close(ours(idx), unmerged, rtol=0, atol=1e-12)
    with pytest.raises(RuntimeError, match="unmerge: this adapter is not merged"):
        unmerge_lora(ours)
    for name, layer in adapters(ours).items():
        torch.testing.assert_close(
            layer.base.weight, before[f"{name}.weight"], rtol=0, atol=1e-15
        )


def test_starts_as_the_base_model_and_only_adapters_learn():
    _, ours = hf_and_ours(torch.float32)
    base = copy.deepcopy(ours)
    add_lora(ours)
    idx = torch.randint(0, SIZES["vocab_size"], (4, 16))
    torch.testing.assert_close(ours(idx), base(idx), rtol=0, atol=0)  # B = 0
    frozen = {n: p.clone() for n, p in ours.named_parameters() if not p.requires_grad}
    assert all("lora_" not in n for n in frozen)
    logits = ours(idx[:, :-1])
    nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten()).backward()
    for name, parameter in ours.named_parameters():
        if "lora_" in name:
            assert parameter.grad is not None
        else:
            assert parameter.grad is None, name
    layer = adapters(ours)["h.0.attn.c_attn"]
    assert layer.lora_B.grad.abs().sum() > 0
    assert layer.lora_A.grad.abs().sum() == 0  # ∂L/∂A ∝ B = 0 at the start
    adapter_before = layer.lora_A.detach().clone()
    settings = TrainSettings(steps=3, micro_batch=4, block=15, warmup=0)
    optimizer = make_optimizer(ours, settings)
    for step in range(3):
        train_step(ours, optimizer, [idx], step, settings)
    for name, parameter in ours.named_parameters():
        if name in frozen:
            assert torch.equal(parameter, frozen[name]), name
    assert adapters(ours)["h.0.attn.c_attn"].lora_A.grad is None  # zeroed
    assert not torch.equal(layer.lora_A, adapter_before)  # the adapters moved
    state = training_state_bytes(ours, optimizer)
    trainable, _ = trainable_parameters(ours)
    assert state["optimizer"] == 2 * 4 * trainable  # AdamW's two moments
    assert state["gradients"] == 4 * trainable  # float32, one per adapter weight


@pytest.mark.parametrize("eval_every, evaluated", [(2, [0, 2, 4, 5]), (5, [0, 5])])
def test_finetune_scores_every_eval_every_steps_and_at_the_end(eval_every, evaluated):
    _, ours = hf_and_ours(torch.float32)
    add_lora(ours)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, SIZES["vocab_size"], (400,), generator=generator)
    held_out = {"a": tokens[:100], "b": tokens[100:200]}
    settings = TrainSettings(steps=5, micro_batch=2, block=15, warmup=1)
    history = finetune(ours, tokens, held_out, settings, eval_every, "test")
    assert history["steps"] == evaluated and len(history["loss"]) == 5
    assert len(history["a"]) == len(history["b"]) == len(evaluated)
    assert not ours.training  # it hands the model back in eval mode


def test_full_finetuning_state_counts_every_moment_biases_included():
    """AdamW keeps two float32 moments per weight, vectors (biases, LayerNorm) as
    well as matrices, and a step count that is not counted."""
    _, ours = hf_and_ours(torch.float32)
    settings = TrainSettings(steps=1, micro_batch=2, block=15, warmup=0)
    optimizer = make_optimizer(ours, settings)
    idx = torch.randint(0, SIZES["vocab_size"], (2, 16))
    train_step(ours, optimizer, [idx], 0, settings)
    count = sum(p.numel() for p in ours.parameters())
    vectors = sum(p.numel() for p in ours.parameters() if p.dim() == 1)
    assert vectors > 0
    state = training_state_bytes(ours, optimizer)
    assert state == {
        "weights": 4 * count,
        "gradients": 4 * count,
        "optimizer": 8 * count,
    }


def test_adapters_start_as_peft_starts_them():
    """B at zero; A from kaiming_uniform_ with a = √5, peft's (and nn.Linear's)
    default, which is U(-1/√in, 1/√in): 2,048 draws reach past 99 % of the bound."""
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(256, 64), rank=8, alpha=16.0)
    largest = layer.lora_A.detach().abs().max().item()
    assert 0.99 / math.sqrt(256) < largest <= 1 / math.sqrt(256)
    assert torch.equal(layer.lora_B, torch.zeros(64, 8))


def test_odd_shapes_and_leading_dimensions():
    torch.manual_seed(1)
    base = nn.Linear(7, 5, dtype=torch.float64)
    layer = LoRALinear(copy.deepcopy(base), rank=9, alpha=3.0)  # r > min(in, out)
    nn.init.normal_(layer.lora_B)
    x = torch.randn(2, 3, 4, 7, dtype=torch.float64)
    expected = base(x) + x @ (layer.lora_B @ layer.lora_A).T * (3.0 / 9)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
    assert layer(torch.randn(0, 7, dtype=torch.float64)).shape == (0, 5)


def test_repr_shows_rank_alpha_and_whether_merged():
    layer = LoRALinear(nn.Linear(3, 2), rank=2, alpha=4.0)
    assert layer.extra_repr() == "rank=2, alpha=4.0, merged=False"
    layer.merge()
    assert "  rank=2, alpha=4.0, merged=True\n" in repr(layer)


def test_a_lone_layer_freezes_its_base_and_drops_out_only_the_adapters_input():
    class Holder(nn.Module):
        def __init__(self, base):
            super().__init__()
            self.proj = base

        def forward(self, x):
            return self.proj(x)

    torch.manual_seed(2)
    base = nn.Linear(7, 5, dtype=torch.float64)
    layer = LoRALinear(copy.deepcopy(base), rank=3, alpha=6.0, dropout=0.5)
    nn.init.normal_(layer.lora_B)
    # Frozen by the layer itself, not only by add_lora.
    trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {"lora_A", "lora_B"}
    config = LoraConfig(r=3, lora_alpha=6.0, lora_dropout=0.5, target_modules=["proj"])
    peft = get_peft_model(Holder(copy.deepcopy(base)), config)
    with torch.no_grad():
        peft.base_model.model.proj.lora_A.default.weight.copy_(layer.lora_A)
        peft.base_model.model.proj.lora_B.default.weight.copy_(layer.lora_B)
    x = torch.randn(4, 6, 7, dtype=torch.float64)
    # In training both draw one dropout mask, on the adapter's input: the same seed
    # gives the same mask, and the base sees x whole.
    torch.manual_seed(5)
    ours = layer.train()(x)
    torch.manual_seed(5)
    theirs = peft.train()(x)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    assert not torch.allclose(ours, layer.eval()(x))  # the mask mattered
    ours.sum().backward()
    assert layer.base.weight.grad is None and layer.lora_A.grad is not None


def test_bad_input_is_named(tmp_path):
    with pytest.raises(TypeError, match="base must be an nn.Linear"):
        LoRALinear(nn.Conv1d(3, 3, 1), rank=2, alpha=1.0)
    with pytest.raises(ValueError, match="rank must be an int >= 1"):
        LoRALinear(nn.Linear(3, 3), rank=0, alpha=1.0)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        LoRALinear(nn.Linear(3, 3), rank=2, alpha=0.0)
    with pytest.raises(ValueError, match="dropout must be in"):
        LoRALinear(nn.Linear(3, 3), rank=2, alpha=1.0, dropout=1.0)
    _, ours = hf_and_ours(torch.float32)
    with pytest.raises(ValueError, match=r"\['attn.q_proj'\] match no nn.Linear"):
        add_lora(ours, ("attn.c_attn", "attn.q_proj"))
    with pytest.raises(ValueError, match="non-empty tuple"):
        add_lora(ours, "attn.c_attn")
    assert not adapters(ours)  # nothing was changed by the failed calls
    add_lora(ours)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        add_lora(ours)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        save_adapter(GPT2(GPT2Config(**SIZES)), "unused")
    # peft's file holds one rank, alpha and dropout for all the adapters.
    ours.h[0].attn.c_attn = LoRALinear(ours.h[0].attn.c_attn.base, rank=3, alpha=1.0)
    with pytest.raises(ValueError, match=r"adapters differ in \(rank, alpha, dropo"):
        save_adapter(ours, tmp_path / "mixed")
    two_layers = add_lora(GPT2(GPT2Config(**SIZES)))
    folder = save_adapter(two_layers, tmp_path / "adapter")
    one_layer = GPT2(GPT2Config(**{**SIZES, "n_layer": 1}))
    with pytest.raises(ValueError, match="adapter: 16 tensors, expected 8"):
        load_adapter(one_layer, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["peft_type"] = "IA3"
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="adapter holds a IA3 adapter"):
        load_adapter(GPT2(GPT2Config(**SIZES)), folder)
    with pytest.raises(ValueError, match="'sys' is not a pure-Python standard-lib"):
        lora.module_source(("sys",))


def test_example_is_the_adapted_projection():
    layer, (x,) = example()
    assert isinstance(layer, LoRALinear) and layer(x).shape == (2, 5, 96)
    assert set(LINEARS) == set(PEFT_TARGETS)


def test_demo_short_run_learns_the_new_style(tmp_path, monkeypatch):
    """The demo on a tiny GPT standing in for the pretrained one."""
    text = "The list type.\n\n\nSequences hold items in order.\n" * 20
    tokenizer = train_tokenizer(text, 40)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=tokenizer.vocabulary_size, n_positions=32, n_embd=32,
        n_layer=2, n_head=2, dropout=0.0,
    )  # fmt: skip
    model = GPT2(config).eval()
    monkeypatch.setattr(
        lora, "small_gpt", lambda device: (model.to(device), tokenizer, [text], [text])
    )
    monkeypatch.setattr(lora, "TRAIN_MODULES", ("bisect",))
    monkeypatch.setattr(lora, "VALIDATION_MODULES", ("colorsys",))
    result = main(["--steps", "8", "--eval-every", "4", "--batch", "8", "--lr", "1e-2",
                   "--full-lr", "3e-3", "--out", str(tmp_path)])  # fmt: skip
    assert result["lora_code_loss"] < result["base_code_loss"] - 0.1
    assert result["full_code_loss"] < result["base_code_loss"] - 0.1
    assert result["merged_code_loss"] == pytest.approx(result["lora_code_loss"], 1e-4)
    assert result["lora_state_bytes"] < result["full_state_bytes"]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "lora.png").is_file()


@pytest.mark.parametrize("library", ["ours", "peft"])
def test_bench_lora_training_step(benchmark, library):
    """One LoRA training step (forward, backward, AdamW) at rank 8 on every linear
    layer of a 4-layer, 128-wide GPT-2, batch 8 × 64 tokens."""
    sizes = dict(vocab_size=515, n_positions=64, n_embd=128, n_layer=4, n_head=4)
    torch.manual_seed(0)
    idx = torch.randint(0, 515, (8, 65))
    if library == "ours":
        model = add_lora(GPT2(GPT2Config(**sizes, dropout=0.0)))

        def loss():
            logits = model(idx[:, :-1])
            return nn.functional.cross_entropy(
                logits.flatten(0, 1), idx[:, 1:].flatten()
            )

    else:
        hf = GPT2LMHeadModel(
            HFConfig(**sizes, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        )
        model = get_peft_model(
            hf, LoraConfig(r=8, lora_alpha=16, target_modules=PEFT_TARGETS,
                           fan_in_fan_out=True)
        )  # fmt: skip
        benchmark.extra_info["baseline"] = True

        def loss():
            return model(input_ids=idx[:, :-1], labels=idx[:, :-1]).loss

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-3
    )

    def step():
        loss().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    benchmark.extra_info["label"] = f"{library}: LoRA step, r=8, all linears"
    benchmark.group = "lora-step"
    benchmark(step)
