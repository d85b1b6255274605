"""The tensors PyTorch holds and the FLOPs torch.utils.flop_counter counts, exactly (0
bytes, 0 FLOPs), on small GPTs, and against the published GPT-2 parameter counts.

Parameters, gradients and Adam state (float32, and bfloat16 with float32 master
weights) are read from the tensors after a real step, and again after a save and
reload; activations are the storages autograd saves for backward, per part, for every
precision, dropout setting and recomputation mode (hypothesis over shapes), and are
cross-checked against the bytes the CPU profiler sees still allocated after the
forward pass. Korthikanti et al.'s sbh(34 + 5as/h) is reproduced to the byte in
bfloat16 once LayerNorm's statistics are added (and is within 1% per layer without
them). The block equals nn.TransformerEncoderLayer(norm_first=True) under a causal
mask in float64 (values 1e-12, gradients 1e-10), recomputed gradients equal plain ones
to 1e-12, and the master-weight Adam equals torch.optim.Adam on the upcast gradients
exactly.
"""

import io
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.profiler import ProfilerActivity, profile

from annotated.transformers.memory_analysis import (
    BYTES,
    GPT,
    GPT2,
    MEASURED,
    RECOMPUTE,
    Block,
    Config,
    MasterWeightAdam,
    activation_bytes,
    breakdown,
    check_tokens,
    counted_flops,
    example,
    korthikanti_layer_bytes,
    lm_loss,
    main,
    make_batch,
    make_optimizer,
    measure,
    measured_state_bytes,
    model_state_bytes,
    parameter_count,
    saved_bytes,
    six_n_flops,
    training_flops,
)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Small tensors: a second torch thread costs more in handoffs than it saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def expected_parts(config, batch, seq=None, precision="float32"):
    formula = activation_bytes(config, batch, seq, precision)
    parts = {"embedding": formula["embedding"], "head": formula["head"]}
    return parts | {f"layer {i}": formula["layer"] for i in range(config.layers)}


configs = st.builds(
    lambda layers, heads, head_dim, vocab, n_ctx, dropout, recompute: Config(
        vocab_size=vocab,
        n_ctx=n_ctx,
        layers=layers,
        hidden=heads * head_dim,
        heads=heads,
        dropout=dropout,
        recompute=recompute,
    ),
    layers=st.integers(1, 3),
    heads=st.integers(1, 4),
    head_dim=st.integers(1, 12),
    vocab=st.integers(2, 70),
    n_ctx=st.integers(1, 24),
    dropout=st.sampled_from([0.0, 0.1, 0.5]),
    recompute=st.sampled_from(RECOMPUTE),
)


# --- the model is a GPT-2 block stack -------------------------------------------------


@pytest.mark.parametrize("recompute", RECOMPUTE)
def test_block_matches_torch_transformer_encoder_layer(recompute):
    """A pre-LN block with tanh-GELU is nn.TransformerEncoderLayer(norm_first=True)
    under a causal mask: values and gradients in float64."""
    config = Config(n_ctx=16, hidden=24, heads=3, dropout=0.0, recompute=recompute)
    torch.manual_seed(0)
    ours = Block(config).double()
    torch_layer = nn.TransformerEncoderLayer(
        24,
        3,
        dim_feedforward=96,
        dropout=0.0,
        activation=lambda x: F.gelu(x, approximate="tanh"),
        batch_first=True,
        norm_first=True,
        dtype=torch.float64,
    )
    pairs = {
        "self_attn.in_proj_weight": ours.attn.qkv.weight,
        "self_attn.in_proj_bias": ours.attn.qkv.bias,
        "self_attn.out_proj.weight": ours.attn.proj.weight,
        "self_attn.out_proj.bias": ours.attn.proj.bias,
        "linear1.weight": ours.mlp.fc1.weight,
        "linear1.bias": ours.mlp.fc1.bias,
        "linear2.weight": ours.mlp.fc2.weight,
        "linear2.bias": ours.mlp.fc2.bias,
        "norm1.weight": ours.ln1.weight,
        "norm1.bias": ours.ln1.bias,
        "norm2.weight": ours.ln2.weight,
        "norm2.bias": ours.ln2.bias,
    }
    torch_layer.load_state_dict({k: v.detach() for k, v in pairs.items()})
    x = torch.randn(2, 11, 24, dtype=torch.float64, requires_grad=True)
    mask = nn.Transformer.generate_square_subsequent_mask(11, dtype=torch.float64)
    want = torch_layer(x, src_mask=mask, is_causal=True)
    got = ours(x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(want)
    (got * weights).sum().backward()  # reentrant checkpoints refuse autograd.grad
    grads = [x.grad.clone(), *(p.grad for p in pairs.values())]
    x.grad = None
    (want * weights).sum().backward()
    torch_params = dict(torch_layer.named_parameters())
    want_grads = [x.grad, *(torch_params[k].grad for k in pairs)]
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("recompute", RECOMPUTE)
def test_dropout_drops_the_branches_and_never_the_residual_stream(recompute):
    """With both branches' output layers zeroed, a block in training mode passes its
    input through exactly, whatever dropout draws: as in GPT-2 and
    nn.TransformerEncoderLayer, dropout acts on what a branch adds."""
    config = Config(n_ctx=16, hidden=24, heads=3, dropout=0.5, recompute=recompute)
    torch.manual_seed(0)
    block = Block(config).double().train()
    with torch.no_grad():
        for layer in (block.attn.proj, block.mlp.fc2):
            layer.weight.zero_()
            layer.bias.zero_()
    x = torch.randn(2, 11, 24, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(block(x), x, rtol=0, atol=0)


def test_model_is_causal_and_its_loss_is_cross_entropy():
    config = replace(MEASURED["2×64"], dropout=0.0)
    torch.manual_seed(0)
    model = GPT(config).double()
    tokens, targets = make_batch(config, 2, 12)
    logits = model(tokens)
    changed = tokens.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % config.vocab_size
    torch.testing.assert_close(model(changed)[:, :7], logits[:, :7], rtol=0, atol=0)
    assert not torch.allclose(model(changed)[:, 7:], logits[:, 7:])
    want = F.cross_entropy(logits.reshape(-1, config.vocab_size), targets.reshape(-1))
    torch.testing.assert_close(lm_loss(logits, targets), want, rtol=1e-15, atol=0)


# --- parameters and model states ----------------------------------------------------


@settings(max_examples=25)
@given(config=configs)
def test_parameter_count_matches_the_model(config):
    model = GPT(config)
    assert sum(p.numel() for p in model.parameters()) == parameter_count(config)
    assert len(list(model.parameters())) == 12 * config.layers + 4


def test_gpt2_parameter_counts_match_published_numbers():
    """`num_parameters()` of Hugging Face's gpt2, gpt2-medium, gpt2-large, gpt2-xl."""
    published = [124_439_808, 354_823_168, 774_030_080, 1_557_611_200]
    assert [parameter_count(config) for config in GPT2.values()] == published


@pytest.mark.parametrize("name", list(GPT2))
def test_gpt2_parameter_count_matches_hugging_faces_model(name):
    """Hugging Face's GPT2LMHeadModel at each GPT-2 size, built on the `meta` device
    (shapes, no memory): its num_parameters(), which counts the tied head once."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2[name]
    hf_config = GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.n_ctx,
        n_embd=config.hidden,
        n_layer=config.layers,
        n_head=config.heads,
    )
    with torch.device("meta"):
        reference = GPT2LMHeadModel(hf_config)
        ours = GPT(config)
    assert reference.lm_head.weight is reference.transformer.wte.weight  # tied
    assert next(reference.parameters()).is_meta
    assert reference.num_parameters() == parameter_count(config)
    assert sum(p.numel() for p in reference.parameters()) == parameter_count(config)
    assert sum(p.numel() for p in ours.parameters()) == parameter_count(config)
    assert len(list(reference.parameters())) == 12 * config.layers + 4


@pytest.mark.parametrize("precision", list(BYTES))
def test_model_states_are_16_bytes_per_parameter_exactly(precision):
    config = MEASURED["2×64"]
    got = measure(config, batch=2, seq=8, precision=precision)["states"]
    want = model_state_bytes(config, precision)
    assert got == want
    n, tensors = parameter_count(config), 12 * config.layers + 4
    assert sum(want.values()) == 16 * n + 4 * tensors  # 4 bytes per Adam step counter


def test_adam_state_survives_a_save_and_reload():
    config = MEASURED["2×64"]
    torch.manual_seed(0)
    model = GPT(config)
    optimizer = make_optimizer(model)
    tokens, targets = make_batch(config, 2, 8)
    lm_loss(model(tokens), targets).backward()
    optimizer.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "adam": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    restored = GPT(config)
    restored.load_state_dict(saved["model"])
    again = make_optimizer(restored)
    again.load_state_dict(saved["adam"])
    states = measured_state_bytes(restored, again)
    assert states["optimizer"] == model_state_bytes(config)["optimizer"]
    assert states["gradients"] == 0  # gradients are not part of a checkpoint
    for model_, optimizer_ in ((model, optimizer), (restored, again)):
        torch.manual_seed(1)  # the same dropout masks
        optimizer_.zero_grad()
        lm_loss(model_(tokens), targets).backward()
        optimizer_.step()
    for a, b in zip(model.parameters(), restored.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_master_weight_adam_is_adam_on_the_upcast_gradients():
    torch.manual_seed(0)
    model = GPT(MEASURED["2×64"]).to(torch.bfloat16)
    reference = [p.detach().float().clone() for p in model.parameters()]
    adam = torch.optim.Adam(reference, lr=1e-2)
    ours = MasterWeightAdam(model.parameters(), lr=1e-2)
    tokens, targets = make_batch(MEASURED["2×64"], 2, 8)
    for _ in range(3):
        ours.zero_grad()
        lm_loss(model(tokens), targets).backward()
        for ref, p in zip(reference, model.parameters()):
            ref.grad = p.grad.float()
        ours.step()
        adam.step()
    for ref, master, p in zip(reference, ours.master, model.parameters()):
        torch.testing.assert_close(master, ref, rtol=0, atol=0)
        torch.testing.assert_close(p, ref.to(torch.bfloat16), rtol=0, atol=0)
        assert master.grad is None  # the float32 gradient copy is freed


# --- activations ----------------------------------------------------------------------


@settings(max_examples=20)
@given(
    config=configs,
    batch=st.integers(1, 3),
    data=st.data(),
    precision=st.sampled_from(list(BYTES)),
)
def test_saved_bytes_equal_the_formula_per_part(config, batch, data, precision):
    seq = data.draw(st.integers(1, config.n_ctx))
    dtype = torch.float32 if precision == "float32" else torch.bfloat16
    torch.manual_seed(0)
    model = GPT(config).to(dtype)
    tokens, targets = make_batch(config, batch, seq)
    assert saved_bytes(model, tokens, targets) == expected_parts(
        config, batch, seq, precision
    )


@pytest.mark.parametrize("recompute", RECOMPUTE)
def test_korthikanti_formula_to_the_byte_in_bfloat16(recompute):
    config = replace(MEASURED["3×96"], recompute=recompute)
    b, s, h = 2, config.n_ctx, config.hidden
    got = measure(config, b, precision="mixed")["activations"]
    paper = korthikanti_layer_bytes(s, b, h, config.heads, recompute)
    statistics = 0 if recompute == "full" else 4 * 2 * s * b  # two LayerNorms' rows
    for i in range(config.layers):
        assert got[f"layer {i}"] == paper + statistics
        assert abs(got[f"layer {i}"] / paper - 1) < 0.01


def test_float32_constants_are_66_and_9():
    """The derivation's constants with 4-byte values and 1-byte masks."""
    config = MEASURED["2×64"]
    s, b, h, a = 64, 3, config.hidden, config.heads
    layer = activation_bytes(config, b)["layer"]
    assert layer == s * b * h * 66 + a * s * s * b * 9 + 16 * s * b
    no_dropout = activation_bytes(replace(config, dropout=0.0), b)["layer"]
    assert no_dropout == s * b * h * 64 + a * s * s * b * 4 + 16 * s * b


def test_gpt2_small_layer_in_mixed_precision():
    """A number to check by hand: sbh(34 + 5as/h) + 8sb at s=1024, b=1, h=768, a=12."""
    layer = activation_bytes(
        replace(GPT2["GPT-2 small"], dropout=0.1), 1, 1024, "mixed"
    )
    assert layer["layer"] == 1024 * 768 * (34 + 80) + 8 * 1024


def live_bytes_after(run) -> int:
    """Bytes allocated and not freed while `run()` executes, from the CPU profiler."""
    keep = []
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        keep.append(run())
    events = list(prof.profiler.kineto_results.experimental_event_tree())
    total = 0
    while events:
        event = events.pop()
        events.extend(event.children)
        if event.tag == torch._C._profiler._EventType.Allocation:
            total += event.extra_fields.alloc_size
    return total


@pytest.mark.parametrize("recompute", RECOMPUTE)
def test_saved_bytes_are_what_the_profiler_sees_alive(recompute):
    """What autograd saves is what stays allocated after the forward pass: the saved
    storages less the token and target tensors (allocated before), plus the RNG state
    each checkpoint keeps, to within a few scalars."""
    config = replace(MEASURED["2×64"], recompute=recompute)
    torch.manual_seed(0)
    model = GPT(config)
    tokens, targets = make_batch(config, 3)
    saved = sum(saved_bytes(model, tokens, targets).values())
    live = live_bytes_after(lambda: lm_loss(model(tokens), targets))
    inputs = 2 * tokens.numel() * tokens.element_size()
    checkpoints = {"none": 0, "selective": 2, "full": 2}[recompute]
    rng_state = torch.get_rng_state().numel()
    assert abs(live - (saved - inputs + checkpoints * rng_state)) <= 64


def test_recomputation_saves_what_the_paper_says_on_a_long_sequence():
    """At s = 512 the attention matrices dominate; selective removes them, full keeps
    one tensor per layer."""
    base = Config(vocab_size=64, n_ctx=512, layers=2, hidden=32, heads=4)
    sizes = {}
    for recompute in RECOMPUTE:
        config = replace(base, recompute=recompute)
        torch.manual_seed(0)
        got = saved_bytes(GPT(config), *make_batch(config, 1))
        assert got == expected_parts(config, 1)
        sizes[recompute] = got["layer 1"]
    assert sizes["full"] == 4 * 512 * 32
    assert sizes["selective"] == 512 * 32 * 66 + 16 * 512
    assert sizes["none"] == 512 * 32 * 66 + 4 * 512 * 512 * 9 + 16 * 512


@pytest.mark.parametrize("recompute", ["selective", "full"])
def test_recomputed_gradients_equal_plain_ones(recompute):
    config = replace(MEASURED["2×64"], dropout=0.2)
    torch.manual_seed(0)
    plain = GPT(config).double()
    again = GPT(replace(config, recompute=recompute)).double()
    again.load_state_dict(plain.state_dict())
    tokens, targets = make_batch(config, 3, 20)
    losses = []
    for model in (plain, again):
        torch.manual_seed(1)  # the same dropout masks
        loss = lm_loss(model(tokens), targets)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    for p, q in zip(plain.parameters(), again.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-12, atol=1e-14)


# --- FLOPs ----------------------------------------------------------------------------


@settings(max_examples=20)
@given(config=configs, batch=st.integers(1, 3))
def test_counted_flops_equal_the_formula(config, batch):
    torch.manual_seed(0)
    model = GPT(config)
    tokens, targets = make_batch(config, batch)
    assert counted_flops(model, tokens, targets) == training_flops(config, batch)


def test_flops_of_recomputation_and_the_6n_rule():
    config = MEASURED["3×96"]
    L, h, s, b = config.layers, config.hidden, config.n_ctx, 2
    flops = {r: training_flops(replace(config, recompute=r), b) for r in RECOMPUTE}
    assert flops["selective"] - flops["none"] == 4 * L * s * h * b * s
    assert flops["full"] - flops["none"] == (24 * L * h * h + 4 * L * s * h) * b * s
    # 6N counts biases, LayerNorms and the position table that no product uses
    unused = 13 * L * h + config.n_ctx * h + 2 * h
    assert six_n_flops(config, b) - flops["none"] == 6 * unused * b * s
    small = GPT2["GPT-2 small"]
    assert 0.99 < training_flops(small, 1) / six_n_flops(small, 1) < 1


# --- the demo's breakdown and bad input -----------------------------------------------


def test_breakdown_adds_the_components():
    config = GPT2["GPT-2 small"]
    parts = breakdown(config, 8)
    act = activation_bytes(config, 8, precision="mixed")
    assert parts["activations"] == act["embedding"] + 12 * act["layer"] + act["head"]
    assert parts["parameters"] + parts["gradients"] + parts["optimizer"] == (
        16 * 124_439_808 + 4 * (12 * 12 + 4)
    )
    # the numbers the demo's prose quotes, in GiB
    gib = {r: breakdown(replace(config, recompute=r), 8) for r in RECOMPUTE}
    assert round(sum(gib["none"].values()) / 2**30, 1) == 11.4
    assert round(gib["none"]["activations"] / 2**30, 1) == 9.6
    assert round(gib["selective"]["activations"] / 2**30, 2) == 3.95
    assert round(gib["full"]["activations"] / 2**30, 2) == 1.70
    assert round(4 * 8 * 1024 * 50257 / 2**30, 2) == 1.53


def test_bad_input(capsys):
    with pytest.raises(ValueError, match="Config.hidden .* multiple of Config.heads"):
        Config(hidden=10, heads=4)
    with pytest.raises(ValueError, match="Config.layers must be a positive int"):
        Config(layers=0)
    with pytest.raises(ValueError, match="Config.recompute must be one of"):
        Config(recompute="some")
    with pytest.raises(ValueError, match="Config.dropout"):
        Config(dropout=1.0)
    config = MEASURED["2×64"]
    model = GPT(config)
    with pytest.raises(TypeError, match="tokens must be an integer tensor"):
        model(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"tokens must be \[batch, seq\]"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="65 positions but n_ctx is 64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match=r"ids in \[0, 256\)"):
        check_tokens(torch.tensor([[256]]), 256, 64)
    with pytest.raises(ValueError, match="targets must be"):
        lm_loss(torch.zeros(2, 4, 8), torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="targets must be an integer tensor"):
        lm_loss(torch.zeros(2, 4, 8), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="precision must be one of"):
        activation_bytes(config, 2, precision="float16")
    with pytest.raises(ValueError, match="seq must be at most n_ctx = 64"):
        training_flops(config, 2, 65)
    with pytest.raises(ValueError, match="batch must be a positive int"):
        activation_bytes(config, 0)
    with pytest.raises(TypeError, match="MasterWeightAdam: params must be float16"):
        MasterWeightAdam(model.parameters())
    with pytest.raises(SystemExit):
        main(["--configs", "9×9"])
    assert "argument --configs: expected comma-separated names from" in (
        capsys.readouterr().err
    )


def test_example_runs():
    fn, args = example()
    assert fn(*args).shape == (2, 16, MEASURED["2×64"].vocab_size)


def test_demo(tmp_path):
    metrics = main(["--configs", "2×64", "--batch", "2", "--out", str(tmp_path)])
    assert (tmp_path / "breakdown.png").exists()
    assert metrics["activation gap"] == metrics["state gap"] == 0
    assert metrics["parameter gap"] == metrics["flop gap"] == 0
    assert 0.9 < metrics["6N ratio"] < 1
    assert (
        metrics["GPT-2 small GiB"]
        == sum(breakdown(GPT2["GPT-2 small"], 8).values()) / 2**30
    )
    assert 0.8 < metrics["GPT-2 small activation share"] < 0.9


# --- benchmarks: one training step, with and without recomputation --------------------


def bench_step(recompute):
    config = replace(MEASURED["4×128"], recompute=recompute)
    torch.manual_seed(0)
    model = GPT(config)
    optimizer = make_optimizer(model)
    tokens, targets = make_batch(config, 4)

    def step():
        optimizer.zero_grad()
        lm_loss(model(tokens), targets).backward()
        optimizer.step()

    return step


GROUP = "GPT 4×128 Adam step, 4 × 128 tokens"


@pytest.mark.benchmark(group=GROUP)
def test_bench_step_plain(benchmark):
    benchmark.extra_info["label"] = "no recomputation"
    benchmark.extra_info["baseline"] = True
    benchmark(bench_step("none"))


@pytest.mark.benchmark(group=GROUP)
def test_bench_step_selective(benchmark):
    benchmark.extra_info["label"] = "selective recomputation (attention core)"
    benchmark(bench_step("selective"))


@pytest.mark.benchmark(group=GROUP)
def test_bench_step_full(benchmark):
    benchmark.extra_info["label"] = "full recomputation (torch.utils.checkpoint)"
    benchmark(bench_step("full"))
