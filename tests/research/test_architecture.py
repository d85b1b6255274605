"""Verified against Hugging Face's GPT2LMHeadModel, with F.conv1d (depthwise, groups=d)
hooked after each ln_1 as the convolution (logits, and the gradients of the
convolutions, projections and embedding, to 1e-10 in float64), and the convolution
alone against nn.Conv1d to 1e-12 and torch.autograd's gradcheck.

Also: the probe's labels against a dictionary look-up, the most-frequent-value ceiling
against collections.Counter, the identity start (the new model computes exactly what
the baseline computes), the parameter counts the prose quotes, the attention weights
against the block's own output, the look-up shares on a planted pattern, the transfer's
pairing of its arms, a safetensors round trip, and a short probe run in which one layer
with the convolution leaves the plateau and looks up the value.
"""

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import GPT2Config as HFConfig
from transformers import GPT2LMHeadModel

import annotated.research.architecture as lesson
from annotated.llm.gpt2 import GPT2, GPT2Config, lm_loss, to_hf_state_dict
from annotated.research.architecture import (
    ABLATION,
    IGNORE,
    ConvBlock,
    ConvGPT,
    ProbeConfig,
    ProbeRun,
    ShortConv,
    Variant,
    attention_weights,
    build,
    count_parameters,
    example,
    extra_parameters,
    lookup_shares,
    main,
    most_frequent_value_accuracy,
    recall_accuracy,
    recall_sequences,
    steps_to,
    train_probe,
    transfer,
)

torch.set_num_threads(1)


def depthwise_reference(x, weight):
    """`nn.Conv1d(groups=d)` with K - 1 zeros of padding in front: row i of our
    weight (lag i) is the kernel's tap K - 1 - i."""
    k, width = weight.shape
    conv = nn.Conv1d(width, width, k, groups=width, bias=False).to(x.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight.flip(0).t()[:, None, :])  # [width, 1, K]
    return conv(F.pad(x.transpose(1, 2), (k - 1, 0))).transpose(1, 2), conv


# ## The convolution


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    seq=st.integers(1, 9),
    width=st.integers(1, 6),
    k=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_short_conv_matches_a_depthwise_nn_conv1d_in_float64(
    batch, seq, width, k, seed
):
    torch.manual_seed(seed)
    conv = ShortConv(width, k).double()
    with torch.no_grad():
        conv.weight.normal_()
    x = torch.randn(batch, seq, width, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    ours = conv(x)
    ref, torch_conv = depthwise_reference(x_ref, conv.weight.detach())
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    upstream = torch.randn_like(ours)
    ours.backward(upstream)
    ref.backward(upstream)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=1e-12)
    torch_weight_grad = torch_conv.weight.grad[:, 0, :].t().flip(0)  # [K, width]
    torch.testing.assert_close(conv.weight.grad, torch_weight_grad, rtol=0, atol=1e-12)


def test_short_conv_passes_gradcheck():
    torch.manual_seed(0)
    conv = ShortConv(3, 3).double()
    weight = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)

    def fn(x, weight):
        return torch.func.functional_call(conv, {"weight": weight}, (x,))

    assert torch.autograd.gradcheck(fn, (x, weight))


def test_short_conv_is_causal_and_starts_as_the_identity():
    torch.manual_seed(0)
    conv = ShortConv(4, 3)
    x = torch.randn(2, 7, 4)
    assert torch.equal(conv(x), x)  # w_0 = 1, the other lags 0
    with torch.no_grad():
        conv.weight.normal_()
    y = conv(x)
    moved = x.clone()
    moved[:, 4] += 1.0
    changed = (conv(moved) - y).abs().amax(dim=(0, 2)) > 0  # [seq]
    # Position 4 reaches positions 4, 5 and 6 (K = 3), and nothing before it:
    assert changed.tolist() == [False, False, False, False, True, True, True]


def test_short_conv_rejects_bad_input():
    with pytest.raises(ValueError, match="kernel_size must be a positive int"):
        ShortConv(4, 0)
    with pytest.raises(ValueError, match="width must be a positive int"):
        ShortConv(True, 3)
    with pytest.raises(ValueError, match=r"x must be \[batch, seq, 4\], got \(2, 5\)"):
        ShortConv(4, 3)(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"got \(2, 5, 3\)"):
        ShortConv(4, 3)(torch.zeros(2, 5, 3))


# ## The probe's data


@settings(max_examples=20, deadline=None)
@given(
    pairs=st.integers(1, 8),
    queries=st.integers(1, 6),
    half=st.integers(8, 20),
    seed=st.integers(0, 2**16),
)
def test_recall_sequences_agree_with_a_dictionary_lookup(pairs, queries, half, seed):
    vocab = 2 * half
    tokens, labels = recall_sequences(
        5, pairs, vocab, queries, torch.Generator().manual_seed(seed)
    )
    assert tokens.shape == labels.shape == (5, 2 * (pairs + queries))
    for row, label in zip(tokens.tolist(), labels.tolist()):
        keys, values = row[0 : 2 * pairs : 2], row[1 : 2 * pairs : 2]
        assert len(set(keys)) == pairs and all(0 <= k < half for k in keys)
        assert all(half <= v < vocab for v in values)
        lookup = dict(zip(keys, values))
        expected = [IGNORE] * (2 * pairs)
        for position in range(2 * pairs, len(row), 2):
            asked, answer = row[position], row[position + 1]
            assert answer == lookup[asked]  # the value stored under the asked key
            expected += [IGNORE, answer]
        assert label == expected


def test_recall_sequences_are_fixed_by_the_generator():
    one, again = (
        recall_sequences(4, 8, 64, 8, torch.Generator().manual_seed(3))
        for _ in range(2)
    )
    other = recall_sequences(4, 8, 64, 8, torch.Generator().manual_seed(4))
    assert torch.equal(one[0], again[0]) and not torch.equal(one[0], other[0])


def test_recall_sequences_reject_bad_input():
    with pytest.raises(ValueError, match="pairs .9. must be at most vocab / 2 = 8"):
        recall_sequences(2, 9, 16, 4)
    with pytest.raises(ValueError, match="vocab must be an even int >= 4"):
        recall_sequences(2, 2, 15, 4)
    with pytest.raises(ValueError, match="queries must be a positive int"):
        recall_sequences(2, 2, 16, 0)
    with pytest.raises(ValueError, match="batch must be a positive int"):
        recall_sequences(True, 2, 16, 2)


def test_recall_accuracy_counts_only_the_graded_positions():
    tokens, labels = recall_sequences(3, 4, 16, 5, torch.Generator().manual_seed(0))

    class Oracle(nn.Module):
        """Predicts the next token of `tokens` exactly, except at two graded places."""

        def forward(self, idx):
            following = torch.cat([idx[:, 1:], idx[:, :1]], dim=1)
            following[0, 2 * 4 + 0] = 0  # predicts the first answer wrong
            following[1, 2 * 4 + 2] = 0  # and the second answer of row 1
            following[2, 0] = 0  # an ungraded position: does not count
            return F.one_hot(following, 16).float()

    assert recall_accuracy(Oracle(), tokens, labels) == pytest.approx(13 / 15)


# ## The model against references


def probe_config(layers=2, width=32, vocab=24, positions=12, heads=4):
    return GPT2Config(
        vocab_size=vocab,
        n_positions=positions,
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        dropout=0.0,
    )


def hf_with_convolutions(model: ConvGPT) -> GPT2LMHeadModel:
    """HF's GPT-2 with our weights, and F.conv1d applied to each ln_1's output by a
    forward hook: the reference for the whole new architecture."""
    config = model.config
    hf = GPT2LMHeadModel(
        HFConfig(
            vocab_size=config.vocab_size,
            n_positions=config.n_positions,
            n_embd=config.n_embd,
            n_layer=config.n_layer,
            n_head=config.n_head,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=None,
            eos_token_id=None,
            attn_implementation="eager",
        )
    ).to(model.wte.weight.dtype)
    state = {
        k: v
        for k, v in to_hf_state_dict(model).items()
        if not k.endswith("conv.weight")
    }
    hf.load_state_dict(state)
    for block, ours in zip(hf.transformer.h, model.h):
        weight = ours.conv.weight.detach().clone().requires_grad_()  # [K, d]

        def hook(module, inputs, output, weight=weight):
            k, width = weight.shape
            kernel = weight.flip(0).t()[:, None, :]  # [d, 1, K]
            padded = F.pad(output.transpose(1, 2), (k - 1, 0))
            out = F.conv1d(padded, kernel, groups=width)  # [batch, d, seq]
            return out.transpose(1, 2).contiguous()

        block.ln_1.register_forward_hook(hook)
        block.conv_weight = weight
    return hf


def test_conv_gpt_matches_hf_gpt2_with_hooked_convolutions_in_float64():
    torch.manual_seed(0)
    model = ConvGPT(probe_config(), kernel_size=3).double()
    with torch.no_grad():
        for block in model.h:
            block.conv.weight.normal_()
    hf = hf_with_convolutions(model)
    tokens = torch.randint(0, 24, (3, 12), generator=torch.Generator().manual_seed(1))
    ours = model(tokens)
    theirs = hf(tokens).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
    lm_loss(ours, tokens).backward()
    lm_loss(theirs, tokens).backward()
    for ours_block, hf_block in zip(model.h, hf.transformer.h):
        torch.testing.assert_close(
            ours_block.conv.weight.grad, hf_block.conv_weight.grad, rtol=0, atol=1e-10
        )
        torch.testing.assert_close(
            ours_block.attn.c_attn.weight.grad,
            hf_block.attn.c_attn.weight.grad.t(),
            rtol=0,
            atol=1e-10,
        )
        for ours_linear, hf_conv1d in (
            (ours_block.attn.c_proj, hf_block.attn.c_proj),
            (ours_block.mlp.c_fc, hf_block.mlp.c_fc),
            (ours_block.mlp.c_proj, hf_block.mlp.c_proj),
        ):
            torch.testing.assert_close(
                ours_linear.weight.grad, hf_conv1d.weight.grad.t(), rtol=0, atol=1e-10
            )
    torch.testing.assert_close(
        model.wte.weight.grad, hf.transformer.wte.weight.grad, rtol=0, atol=1e-10
    )


@pytest.mark.parametrize("kernel_size", [1, 2, 4])
def test_from_baseline_computes_exactly_what_the_baseline_computes(kernel_size):
    torch.manual_seed(0)
    baseline = GPT2(probe_config(layers=3))
    model = ConvGPT.from_baseline(baseline, kernel_size)
    tokens = torch.randint(0, 24, (2, 12), generator=torch.Generator().manual_seed(2))
    assert torch.equal(model(tokens), baseline(tokens))
    assert isinstance(model.h[2], ConvBlock) and model.kernel_size == kernel_size
    # The baseline is copied, not shared: training the new model leaves it alone.
    assert model.wte.weight.data_ptr() != baseline.wte.weight.data_ptr()


def test_build_pairs_the_arms_on_the_same_initial_weights():
    config = probe_config()
    baseline, control, conv = (build(config, k, seed=5) for k in (0, 1, 3))
    for name, tensor in baseline.state_dict().items():
        assert torch.equal(control.state_dict()[name], tensor)
        assert torch.equal(conv.state_dict()[name], tensor)
    assert not torch.equal(build(config, 0, seed=6).wte.weight, baseline.wte.weight)


def test_building_rejects_bad_arguments():
    with pytest.raises(TypeError, match="baseline must be a GPT2 without convolutions"):
        ConvGPT.from_baseline(ConvGPT(probe_config(), 2), 3)
    with pytest.raises(TypeError, match="got Linear"):
        ConvGPT.from_baseline(nn.Linear(2, 2), 3)
    with pytest.raises(ValueError, match="kernel_size must be >= 0"):
        build(probe_config(), -1, seed=0)
    with pytest.raises(TypeError, match="kernel_size must be an int"):
        build(probe_config(), 2.0, seed=0)

    class Extra(GPT2):
        def __init__(self, config):
            super().__init__(config)
            self.extra = nn.Parameter(torch.zeros(3))

    with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
        ConvGPT.from_baseline(Extra(probe_config()), 3)


@pytest.mark.parametrize("layers,width,k", [(1, 64, 3), (2, 32, 1), (3, 48, 4)])
def test_extra_parameters_counts_the_convolutions_to_the_unit(layers, width, k):
    config = probe_config(layers=layers, width=width)
    torch.manual_seed(0)
    added = count_parameters(ConvGPT(config, k)) - count_parameters(GPT2(config))
    assert added == extra_parameters(config, k) == layers * k * width


def test_the_prose_parameter_counts():
    probe = ProbeConfig()
    config = probe_config(
        layers=1, width=probe.width, vocab=probe.vocab, positions=32, heads=4
    )
    two = probe_config(layers=2, width=probe.width, vocab=probe.vocab, positions=32)
    torch.manual_seed(0)
    one_layer = count_parameters(GPT2(config))
    assert one_layer == 56_256
    assert count_parameters(ConvGPT(config, 3)) - one_layer == 192
    assert count_parameters(GPT2(two)) - one_layer == 49_984
    language = probe_config(layers=2, width=64, vocab=256, positions=64)
    assert count_parameters(GPT2(language)) == 120_576
    assert count_parameters(ConvGPT(language, 3)) == 120_576 + 384 < 121_000


def test_safetensors_round_trip_keeps_the_function(tmp_path):
    model, (tokens,) = example()
    with torch.no_grad():
        model.h[0].conv.weight.normal_()
    path = tmp_path / "conv_gpt.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    reloaded = ConvGPT(model.config, 3)
    reloaded.load_state_dict(load_file(path))
    assert torch.equal(reloaded.eval()(tokens), model(tokens))


# ## The mechanism


def test_attention_weights_reproduce_the_blocks_attention_output():
    model, (tokens,) = example()
    with torch.no_grad():
        model.h[0].conv.weight.normal_()
    block = model.h[0]
    weights = attention_weights(model, tokens)  # [batch, heads, seq, seq]
    assert torch.allclose(weights.sum(-1), torch.ones(()), atol=1e-6)
    assert (weights.triu(1) == 0).all()  # causal
    positions = torch.arange(tokens.shape[1])
    x = block.conv(block.ln_1(model.wte(tokens) + model.wpe(positions)))
    batch, seq, width = x.shape
    v = block.attn.c_attn(x)[..., 2 * width :]
    v = v.view(batch, seq, 4, -1).transpose(1, 2)  # [batch, heads, seq, d_head]
    mixed = (weights @ v).transpose(1, 2).reshape(batch, seq, width)
    with torch.no_grad():
        torch.testing.assert_close(
            block.attn.c_proj(mixed), block.attn(x), rtol=1e-5, atol=1e-6
        )


def test_lookup_shares_find_the_value_and_the_key_on_a_planted_pattern(monkeypatch):
    # One sequence by hand, 3 pairs then 3 queries; key 1 is asked twice, so its
    # second query may look up the value either in the context or after the first.
    tokens = torch.tensor([[0, 10, 1, 11, 2, 12, 1, 11, 2, 12, 1, 11]])
    pairs, seq = 3, tokens.shape[1]
    planted = torch.zeros(1, 2, seq, seq)
    planted[0, 0, 6, [2, 3]] = torch.tensor([0.2, 0.8])  # key 1: its key, its value
    planted[0, 0, 8, [4, 5]] = torch.tensor([0.4, 0.6])  # key 2
    planted[0, 0, 10, [7, 3, 0]] = torch.tensor([0.5, 0.3, 0.2])  # key 1 again
    planted[0, 1, [6, 8, 10], [2, 4, 6]] = 1.0  # head 1: always on a key
    monkeypatch.setattr(lesson, "attention_weights", lambda model, tokens: planted)
    on_value, on_key, head = lookup_shares(None, tokens, pairs)
    assert head == 0
    assert on_value == pytest.approx((0.8 + 0.6 + 0.8) / 3)
    assert on_key == pytest.approx((0.2 + 0.4 + 0.0) / 3)  # position 0 holds key 0


def test_lookup_masks_mark_earlier_keys_and_values_but_never_the_query_itself():
    # The planted sequence above: queries at 6, 8, 10 ask keys 1, 2, 1. A value
    # position is one right after the asked key; the query's own position holds the
    # key but is what is asking, so it is not a place to look it up.
    tokens = torch.tensor([[0, 10, 1, 11, 2, 12, 1, 11, 2, 12, 1, 11]])
    asked_at, holds_value, holds_key = lesson.lookup_masks(tokens, 3)
    assert asked_at.tolist() == [6, 8, 10]
    marked = [
        [set(row.nonzero()[:, 0].tolist()) for row in m[0]]
        for m in (holds_value, holds_key)
    ]
    assert marked[0] == [{3}, {5}, {3, 7}]
    assert marked[1] == [{2}, {4}, {2, 6}]


def test_most_frequent_value_accuracy_matches_a_counter():
    tokens, labels = recall_sequences(300, 8, 64, 8, torch.Generator().manual_seed(5))
    hits = []
    for row, label in zip(tokens.tolist(), labels.tolist()):
        counts = Counter(row[1:16:2])
        best = max(counts.values())
        guess = min(v for v, c in counts.items() if c == best)
        hits += [answer == guess for answer in label if answer != IGNORE]
    expected = sum(hits) / len(hits)
    assert most_frequent_value_accuracy(tokens, labels, 8) == pytest.approx(expected)
    assert 0.15 < expected < 0.3  # far above 1/32, the guess among all values


# ## Training


def test_steps_to_reports_the_first_step_or_none():
    run = ProbeRun(ABLATION[0], 0, [0, 50, 100, 150], [0.1, 0.5, 0.96, 0.99], None)
    assert steps_to(run) == 100 and steps_to(run, 0.99) == 150
    assert steps_to(run, 0.999) is None


def test_one_layer_with_the_convolution_leaves_the_plateau_and_looks_up_the_value():
    """The demo's probe, K = 2, 400 updates: accuracy far above the plateau of about
    19 % that the variants without a look-back never leave (the stored run), with the
    attention on the asked value, as step 2 predicts. Seed 2 left the plateau first
    in the stored run (95 % after 350 updates), which keeps this test short."""
    probe = ProbeConfig(steps=400, eval_every=200)
    held_out = recall_sequences(200, 8, 64, 8, torch.Generator().manual_seed(999))
    run = train_probe(Variant("K = 2", 1, 2), 2, probe, held_out, "cpu")
    assert run.steps == [0, 200, 400]
    assert run.accuracy[0] < 0.1  # an untrained model guesses
    assert run.accuracy[-1] > 0.6
    on_value, on_key, _ = lookup_shares(run.model, held_out[0], 8)
    assert on_value > 0.5 > on_key


def test_transfer_starts_both_arms_from_the_same_function_and_batches():
    generator = torch.Generator().manual_seed(0)
    data = (
        torch.randint(0, 256, (3000,), generator=generator),
        torch.randint(0, 256, (1000,), generator=generator),
    )
    run = transfer(0, 3, data, steps=3, length=16, device="cpu")
    assert run.baseline_losses[0] == run.conv_losses[0]  # same weights, same batch
    assert run.baseline_losses[1:] != run.conv_losses[1:]  # then the convolution moves
    assert len(run.baseline_losses) == len(run.conv_losses) == 3


def test_demo_short_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    metrics = main(
        ["--seeds", "2", "--steps", "5", "--lm-steps", "5", "--out", str(out)]
    )
    assert set(metrics) == {
        "probe_accuracy",
        "baseline_probe_accuracy",
        "loss_gain",
        "loss_gain_low",
        "loss_gain_high",
    }
    assert all(np.isfinite(v) for v in metrics.values())
    assert metrics["loss_gain_low"] <= metrics["loss_gain"] <= metrics["loss_gain_high"]
    for name in ("probe.png", "attention.png", "transfer.png", "mlflow/mlflow.db"):
        assert (out / name).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # nothing else written


# ## Benchmarks

BENCH_X = torch.randn(16, 64, 64, generator=torch.Generator().manual_seed(0))


def conv_step(module):
    x = BENCH_X.clone().requires_grad_()

    def step():
        module(x).sum().backward()

    return step


@pytest.mark.benchmark(
    group="causal depthwise convolution, K = 3, [16, 64, 64], fwd+bwd"
)
def test_bench_short_conv_ours(benchmark):
    benchmark.extra_info["label"] = "ours: K shifted products"
    conv = ShortConv(64, 3)
    benchmark(conv_step(conv))


@pytest.mark.benchmark(
    group="causal depthwise convolution, K = 3, [16, 64, 64], fwd+bwd"
)
def test_bench_short_conv_torch(benchmark):
    benchmark.extra_info["label"] = "nn.Conv1d(groups=64), padded"
    benchmark.extra_info["baseline"] = True
    conv = nn.Conv1d(64, 64, 3, groups=64, bias=False)

    def module(x):
        return conv(F.pad(x.transpose(1, 2), (2, 0))).transpose(1, 2)

    benchmark(conv_step(module))


def training_step(model):
    _, (tokens,) = example()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        loss = lm_loss(model(tokens), tokens)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


@pytest.mark.benchmark(group="one AdamW step of the probe's 1-layer model, 2 sequences")
def test_bench_step_with_convolution(benchmark):
    benchmark.extra_info["label"] = "with the convolution, K = 3"
    model, _ = example()
    benchmark(training_step(model.train()))


@pytest.mark.benchmark(group="one AdamW step of the probe's 1-layer model, 2 sequences")
def test_bench_step_plain_gpt2(benchmark):
    benchmark.extra_info["label"] = "plain GPT-2 block"
    benchmark.extra_info["baseline"] = True
    model, _ = example()
    torch.manual_seed(0)
    benchmark(training_step(GPT2(model.config).train()))
