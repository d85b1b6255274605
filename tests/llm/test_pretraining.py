"""Verified against torch.optim.AdamW's decoupled update written out in float64 (to
1e-12), transformers' get_cosine_schedule_with_warmup and torch's CosineAnnealingLR (to
1e-12), one large batch for accumulated micro-batches (gradients to 1e-6), and a
one-process run for two gloo processes under torchrun with DDP (losses to 1e-5).

Also: a resumed run from safetensors checkpoints equals an uninterrupted one bit for
bit (dropout's random state included), TensorBoard event files read back with
tensorboard's EventAccumulator, the presets' parameter counts against GPT-2's and the
memory chapter's, and the FLOPs of a step against torch.utils.flop_counter.
"""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.tensorboard import SummaryWriter
from transformers import GPT2Config as HFConfig
from transformers import GPT2LMHeadModel, get_cosine_schedule_with_warmup

import annotated.llm.pretraining as lesson
from annotated.llm.gpt2 import GPT2, GPT2Config
from annotated.llm.pretraining import (
    TrainSettings,
    accumulate_gradients,
    build_tokenizer,
    corpus_pages,
    dataflow,
    evaluate,
    example,
    learning_rate,
    load_checkpoint,
    main,
    make_optimizer,
    next_token_loss,
    pack,
    parameter_groups,
    pretrain,
    run_cost,
    sample_windows,
    save_checkpoint,
    train_step,
)
from annotated.transformers.memory_analysis import Config as MemoryConfig
from annotated.transformers.memory_analysis import parameter_count, training_flops
from tools.literate.figures import short_band

TINY = GPT2Config(vocab_size=50, n_positions=12, n_embd=16, n_layer=2, n_head=2)


def tiny_model(dropout: float = 0.0, dtype=torch.float32) -> GPT2:
    torch.manual_seed(0)
    config = GPT2Config(**{**TINY.__dict__, "dropout": dropout})
    return GPT2(config).to(dtype)


def tiny_tokens(n: int = 500) -> torch.Tensor:
    return torch.randint(0, 50, (n,), generator=torch.Generator().manual_seed(3))


# ## Data


def test_pages_rejoin_into_python_docs_and_pack_ends_each_with_endoftext():
    train_pages, validation_pages = corpus_pages()
    assert len(train_pages) > 50 and len(validation_pages) > 2
    tokenizer = build_tokenizer(train_pages, 64)
    end = tokenizer.special_tokens["<|endoftext|>"]
    tokens = pack(validation_pages, tokenizer)
    assert (tokens == end).sum().item() == len(validation_pages)
    assert tokens[-1].item() == end
    expected = "".join(page + "<|endoftext|>" for page in validation_pages)
    assert tokenizer.decode(tokens.tolist()) == expected


def test_pages_that_no_longer_rejoin_python_docs_are_refused(monkeypatch):
    monkeypatch.setattr(lesson, "python_docs", lambda fraction: ("not the docs", ""))
    with pytest.raises(RuntimeError, match="python_docs no longer joins the topic"):
        corpus_pages()


def test_tokenizer_is_trained_once_then_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("ANNOTATED_DL_CACHE", str(tmp_path))
    pages = ["the cat sat on the mat", "the dog sat on the log"]
    trained = build_tokenizer(pages, 8)
    assert len(list(tmp_path.glob("pretraining-bpe-8-*/tokenizer.json"))) == 1

    def no_training(text, merges):
        raise AssertionError("the cached tokenizer should have been read back")

    monkeypatch.setattr(lesson, "train_tokenizer", no_training)
    loaded = build_tokenizer(pages, 8)
    assert loaded.ranks == trained.ranks
    assert loaded.special_tokens == trained.special_tokens


def test_small_gpt_is_the_demos_default_model(monkeypatch):
    """small_gpt's wiring, with a stand-in tokenizer and untrained weights: the
    cached weights must fit the demo's defaults on the tokenizer's vocabulary."""
    tokenizer = lesson.train_tokenizer("the cat sat on the mat", 4)
    asked = []

    def fake_tokenizer(pages, merges):
        asked.append((pages, merges))
        return tokenizer

    expected = GPT2Config(vocab_size=tokenizer.vocabulary_size, n_positions=64,
                          n_embd=128, n_layer=4, n_head=4, dropout=0.0)  # fmt: skip
    weights = GPT2(expected).state_dict()
    monkeypatch.setattr(lesson, "build_tokenizer", fake_tokenizer)
    monkeypatch.setattr(lesson, "cached_weights", lambda name, file, train: weights)
    model, got, train_pages, validation_pages = lesson.small_gpt()
    assert (train_pages, validation_pages) == corpus_pages()
    assert asked == [(train_pages, 512)] and got is tokenizer
    assert model.config == expected and not model.training
    assert torch.equal(model.wte.weight, weights["wte.weight"])


def test_windows_are_contiguous_slices_and_reproducible():
    tokens = torch.arange(1000)
    windows = sample_windows(tokens, 7, 16, torch.Generator().manual_seed(0))
    assert windows.shape == (7, 17)
    assert torch.equal(windows - windows[:, :1], torch.arange(17).expand(7, 17))
    again = sample_windows(tokens, 7, 16, torch.Generator().manual_seed(0))
    assert torch.equal(windows, again)
    # every offset can be drawn, including the last window that fits
    starts = sample_windows(torch.arange(20), 2000, 16, torch.Generator())[:, 0]
    assert set(starts.tolist()) == set(range(4))


# ## AdamW groups


def test_groups_decay_exactly_the_matrices_and_embeddings():
    model = tiny_model()
    decay, no_decay = parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = dict(model.named_parameters())
    assert set(decay["names"]) | set(no_decay["names"]) == set(names)
    assert not set(decay["names"]) & set(no_decay["names"])
    assert {"wte.weight", "wpe.weight", "h.0.attn.c_attn.weight"} <= set(decay["names"])
    assert {"h.1.mlp.c_proj.weight", "h.0.mlp.c_fc.weight"} <= set(decay["names"])
    for name in no_decay["names"]:
        assert name.endswith(".bias") or ".ln_" in name or name.startswith("ln_f")
    assert len(decay["names"]) == 2 + 4 * TINY.n_layer


def test_one_step_equals_the_decoupled_update_written_out():
    model = tiny_model(dtype=torch.float64)
    settings = TrainSettings(steps=10, warmup=0, max_lr=0.05, weight_decay=0.3)
    optimizer = make_optimizer(model, settings)
    tokens = tiny_tokens()
    window = sample_windows(tokens, 4, 11, torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    next_token_loss(model(window[:, :-1]), window[:, 1:]).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    optimizer.step()
    (b1, b2), eps, lr = settings.betas, 1e-8, settings.max_lr
    decayed = set(optimizer.param_groups[0]["names"])
    for name, parameter in model.named_parameters():
        g = grads[name]
        m_hat = (1 - b1) * g / (1 - b1)
        v_hat = (1 - b2) * g * g / (1 - b2)
        decay = 0.3 if name in decayed else 0.0
        expected = before[name] - lr * (
            m_hat / (v_hat.sqrt() + eps) + decay * before[name]
        )
        torch.testing.assert_close(parameter.detach(), expected, rtol=0, atol=1e-12)


# ## The schedule


def test_schedule_equals_transformers_cosine_with_warmup():
    settings = TrainSettings(steps=100, warmup=10, max_lr=0.5, min_lr=0.0)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
    scheduler = get_cosine_schedule_with_warmup(optimizer, 10, 100)
    for step in range(101):
        assert learning_rate(step, settings) == pytest.approx(
            optimizer.param_groups[0]["lr"], abs=1e-12
        )
        optimizer.step()
        scheduler.step()


def test_schedule_after_warmup_equals_cosine_annealing_with_eta_min():
    settings = TrainSettings(steps=60, warmup=5, max_lr=1.0, min_lr=0.1)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 55, eta_min=0.1)
    for step in range(5, 61):
        assert learning_rate(step, settings) == pytest.approx(
            optimizer.param_groups[0]["lr"], abs=1e-12
        )
        optimizer.step()
        cosine.step()
    assert [learning_rate(s, settings) for s in range(6)] == pytest.approx(
        [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    )


# ## Accumulation and clipping


@pytest.mark.parametrize("k", [2, 3])
def test_k_micro_batches_give_the_gradient_of_one_batch(k):
    batch = sample_windows(tiny_tokens(), 3 * k, 11, torch.Generator().manual_seed(1))
    whole = tiny_model(dtype=torch.float64)
    loss_whole = accumulate_gradients(whole, [batch])
    parts = tiny_model(dtype=torch.float64)
    loss_parts = accumulate_gradients(parts, list(batch.split(3)))
    assert loss_parts.item() == pytest.approx(loss_whole.item(), abs=1e-12)
    for (name, p), q in zip(whole.named_parameters(), parts.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=1e-6, msg=name)
    assert whole.wte.weight.grad.abs().max() > 1e-3


def test_step_sets_the_rate_and_clips_the_global_norm():
    model = tiny_model(dtype=torch.float64)
    settings = TrainSettings(steps=10, warmup=4, max_lr=1.0, clip=0.01)
    batch = sample_windows(tiny_tokens(), 4, 11, torch.Generator().manual_seed(1))
    reference = tiny_model(dtype=torch.float64)
    accumulate_gradients(reference, [batch])
    grads = [p.grad for p in reference.parameters()]
    norm = torch.cat([g.flatten() for g in grads]).norm().item()
    assert norm > settings.clip
    optimizer = torch.optim.SGD(model.parameters(), lr=123.0)
    loss, returned_norm, lr = train_step(model, optimizer, [batch], 2, settings)
    assert lr == 0.5 and returned_norm == pytest.approx(norm, rel=1e-12)
    for p, q, g in zip(model.parameters(), reference.parameters(), grads):
        expected = q.detach() - lr * g * settings.clip / norm
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-9)
        assert p.grad is None


def test_bf16_autocast_is_close_to_float32():
    batch = sample_windows(tiny_tokens(), 4, 11, torch.Generator().manual_seed(1))
    exact = accumulate_gradients(tiny_model(), [batch]).item()
    low = accumulate_gradients(tiny_model(), [batch], bf16=True).item()
    assert low != exact and low == pytest.approx(exact, rel=2e-2)


# ## Checkpoints and logs


def test_resumed_run_equals_an_uninterrupted_one_bit_for_bit(tmp_path):
    settings = TrainSettings(steps=6, micro_batch=3, accumulation=2, block=11, warmup=2)
    tokens = tiny_tokens()

    def fresh():
        model = tiny_model(dropout=0.1)
        return model, make_optimizer(model, settings), torch.Generator().manual_seed(5)

    model, optimizer, generator = fresh()
    torch.manual_seed(9)
    straight = pretrain(model, optimizer, tokens, settings, generator)["loss"]

    model, optimizer, generator = fresh()
    torch.manual_seed(9)
    first = pretrain(model, optimizer, tokens, settings, generator, stop=3)["loss"]
    save_checkpoint(tmp_path / "ckpt", model, optimizer, 3, generator, settings)
    torch.manual_seed(1234)  # a fresh process would start from another state
    model, optimizer, generator = fresh()
    start = load_checkpoint(tmp_path / "ckpt", model, optimizer, generator)
    second = pretrain(model, optimizer, tokens, settings, generator, start=start)[
        "loss"
    ]
    assert start == 3 and len(second) == 3
    assert first + second == straight
    state = load_file(tmp_path / "ckpt" / "optimizer.safetensors")
    assert "state.0.exp_avg_sq" in state and len(state) == 3 * len(
        list(model.parameters())
    )


def test_a_killed_run_resumes_from_its_last_periodic_checkpoint(tmp_path, monkeypatch):
    # A run saving every 2 of 5 steps writes at steps 2 and 4 and after the last; the
    # checkpoint of step 2, copied aside as a kill after step 3 would have left it,
    # resumes into the uninterrupted run's last 3 losses bit for bit.
    settings = TrainSettings(steps=5, micro_batch=3, accumulation=2, block=11, warmup=2)
    tokens, saved = tiny_tokens(), []

    def save_and_copy(folder, *args):
        written = save_checkpoint(folder, *args)
        saved.append(args[2])
        if args[2] == 2:
            shutil.copytree(written, tmp_path / "killed")
        return written

    monkeypatch.setattr(lesson, "save_checkpoint", save_and_copy)
    model = tiny_model(dropout=0.1)
    optimizer, generator = make_optimizer(model, settings), torch.Generator()
    generator.manual_seed(5)
    torch.manual_seed(9)
    straight = pretrain(model, optimizer, tokens, settings, generator,
                        checkpoint=tmp_path / "ckpt", save_every=2)["loss"]  # fmt: skip
    assert saved == [2, 4, 5]
    torch.manual_seed(1234)
    model = tiny_model(dropout=0.1)
    optimizer, generator = make_optimizer(model, settings), torch.Generator()
    start = load_checkpoint(tmp_path / "killed", model, optimizer, generator)
    resumed = pretrain(model, optimizer, tokens, settings, generator, start=start)
    assert start == 2 and resumed["loss"] == straight[2:]
    assert json.loads((tmp_path / "ckpt" / "trainer.json").read_text())["step"] == 5


def test_checkpoint_of_another_model_or_a_missing_file_is_refused(tmp_path):
    model, settings = tiny_model(), TrainSettings(steps=2, warmup=1)
    optimizer, generator = make_optimizer(model, settings), torch.Generator()
    save_checkpoint(tmp_path / "a", model, optimizer, 1, generator, settings)
    save_checkpoint(tmp_path / "a", model, optimizer, 2, generator, settings)  # again
    assert not (tmp_path / "a.partial").exists()
    other = GPT2(
        GPT2Config(vocab_size=50, n_positions=12, n_embd=8, n_layer=1, n_head=2)
    )
    with pytest.raises(ValueError, match="model: the checkpoint is of"):
        load_checkpoint(
            tmp_path / "a", other, make_optimizer(other, settings), generator
        )
    (tmp_path / "a" / "trainer.json").unlink()
    with pytest.raises(FileNotFoundError, match="trainer.json is missing"):
        load_checkpoint(tmp_path / "a", model, optimizer, generator)


def test_tensorboard_events_hold_every_step(tmp_path):
    settings = TrainSettings(steps=4, micro_batch=2, block=11, warmup=1)
    model = tiny_model()
    writer = SummaryWriter(str(tmp_path))
    history = pretrain(
        model,
        make_optimizer(model, settings),
        tiny_tokens(),
        settings,
        torch.Generator().manual_seed(0),
        validation=tiny_tokens(300),
        eval_every=2,
        writer=writer,
    )
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "train/loss",
        "train/lr",
        "train/grad_norm",
        "train/tokens_per_second",
    } <= tags
    logged = [event.value for event in events.Scalars("train/loss")]
    assert logged == pytest.approx(history["loss"], rel=1e-6)
    assert [e.step for e in events.Scalars("validation/loss")] == [2, 4]
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx(history["lr"])


# ## Costs of the real sizes


def test_costs_use_gpt2s_counts_and_the_memory_chapters_formulas():
    counts = {
        "gpt2": 124_439_808,
        "gpt2-medium": 354_823_168,
        "gpt2-large": 774_030_080,
    }
    for name, count in counts.items():
        config = GPT2Config.preset(name)
        cost = run_cost(config)
        assert cost["parameters"] == count
        memory = MemoryConfig(
            vocab_size=50257, n_ctx=1024, layers=config.n_layer,
            hidden=config.n_embd, heads=config.n_head,
        )  # fmt: skip
        assert parameter_count(memory) == count
        tensors = 12 * config.n_layer + 4
        assert cost["state_bytes"] == 16 * count + 4 * tensors
        per_token = 6 * count + 12 * config.n_layer * 1024 * config.n_embd
        assert cost["flops_per_token"] == per_token
        assert cost["tokens"] == 20 * count
        hours = per_token * 20 * count / (0.4 * 989e12) / 3600
        assert cost["gpu_hours"] == pytest.approx(hours, rel=1e-12)
    assert 1 < run_cost(GPT2Config.preset("gpt2"))["gpu_hours"] < 3


def test_flops_of_a_step_equal_the_flop_counter():
    config = GPT2Config(vocab_size=97, n_positions=24, n_embd=32, n_layer=3, n_head=4)
    model = GPT2(config)
    batch = torch.randint(0, 97, (2, 25))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        next_token_loss(model(batch[:, :-1]), batch[:, 1:]).backward()
    memory = MemoryConfig(vocab_size=97, n_ctx=24, layers=3, hidden=32, heads=4)
    assert counter.get_total_flops() == training_flops(memory, 2, 24)


# ## Bad input


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(steps=0), "steps must be a positive int"),
        (dict(micro_batch=2.0), "micro_batch must be a positive int"),
        (dict(steps=5, warmup=6), "warmup must be in"),
        (dict(min_lr=1.0, max_lr=0.1), "min_lr <= max_lr"),
        (dict(clip=0.0), "clip must be > 0"),
    ],
)
def test_bad_settings_raise(fields, match):
    with pytest.raises(ValueError, match=match):
        TrainSettings(**fields)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="tokens must be a 1-D integer tensor"):
        sample_windows(torch.zeros(10), 1, 4, torch.Generator())
    with pytest.raises(ValueError, match="too few for windows of block"):
        sample_windows(torch.arange(5), 1, 4, torch.Generator())
    with pytest.raises(ValueError, match="merges must be an int >= 0"):
        build_tokenizer(["a"], -1)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        parameter_groups(tiny_model(), -0.1)
    with pytest.raises(ValueError, match="mfu must be in"):
        run_cost(TINY, mfu=1.5)
    settings = TrainSettings(steps=3, warmup=1)
    model = tiny_model()
    with pytest.raises(ValueError, match="need 0 <= start <= stop <= steps"):
        pretrain(model, make_optimizer(model, settings), tiny_tokens(), settings,
                 torch.Generator(), start=2, stop=5)  # fmt: skip
    with pytest.raises(ValueError, match="save_every must be >= 0, and > 0 only"):
        pretrain(model, make_optimizer(model, settings), tiny_tokens(), settings,
                 torch.Generator(), save_every=2)  # fmt: skip


def test_evaluate_refuses_more_windows_than_a_stride_of_1_allows():
    # 30 tokens leave offsets 0..18 for windows of 12: 18 windows have stride 1.
    model, tokens = tiny_model(), tiny_tokens(30)
    windows = tokens[torch.arange(18)[:, None] + torch.arange(12)]
    expected = next_token_loss(model(windows[:, :-1]), windows[:, 1:]).item()
    assert evaluate(model, tokens, 11, windows=18) == pytest.approx(expected)
    for bad in (0, 19, 64):
        with pytest.raises(
            ValueError, match=r"evaluate: 30 tokens allow 1 to 18 evenly spaced windows"
        ):
            evaluate(model, tokens, 11, windows=bad)
    with pytest.raises(ValueError, match=r"too few for one window of block \+ 1 = 12"):
        evaluate(model, tokens[:11], 11, windows=1)
    # 12 tokens hold one window only, at offset 0 (stride 0)
    assert evaluate(model, tokens[:12], 11, windows=1) == pytest.approx(
        next_token_loss(model(tokens[None, :11]), tokens[None, 1:12]).item()
    )


def test_evaluate_scores_without_dropout_and_leaves_the_model_training():
    # The loop calls model.train() once, before its first step: an evaluation that
    # left the model in eval mode would switch dropout off for the rest of the run.
    model, tokens = tiny_model(dropout=0.5), tiny_tokens(30)
    windows = tokens[torch.arange(18)[:, None] + torch.arange(12)]
    with torch.no_grad():
        expected = next_token_loss(model.eval()(windows[:, :-1]), windows[:, 1:])
    model.train()
    assert evaluate(model, tokens, 11, windows=18) == pytest.approx(expected.item())
    assert model.training and all(m.training for m in model.modules())


def test_example_runs_and_its_dataflow_has_the_stages():
    fn, args = example()
    loss, norm, lr = fn(*args)
    assert math.isfinite(loss) and norm > 0 and 3e-4 < lr < 3e-3
    nodes, edges = dataflow((loss, norm, lr))
    ids = {node for node, _ in nodes}
    assert all(src in ids and dst in ids for src, dst, _ in edges)


# ## The demo, on one process and on two


DEMO = ["--steps", "6", "--micro-batch", "4", "--block", "16", "--layers", "1",
        "--width", "16", "--heads", "2", "--merges", "64", "--warmup", "2",
        "--eval-every", "3", "--lr", "3e-2"]  # fmt: skip


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    metrics = main(DEMO + ["--accumulation", "2", "--out", str(out)])
    return out, metrics


def test_demo_learns_and_writes_its_outputs(single):
    out, metrics = single
    # The short run's validation loss over the stored seeds is its expected band;
    # `single` is that run, at the default seed.
    metric, args, low, high = short_band("annotated/llm/pretraining.py")
    assert args == DEMO + ["--accumulation", "2"]
    assert low <= metrics[metric] <= high
    assert metrics["final_loss"] < metrics["first_loss"] - 0.1
    assert math.isfinite(metrics["validation_loss"])
    assert metrics["validation_nats_per_byte"] < metrics["validation_loss"]
    assert (out / "pretraining.png").is_file()
    assert (out / "checkpoint" / "model.safetensors").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_demo_resumes_from_its_checkpoint(single, tmp_path, capsys):
    out, _ = single
    longer = DEMO[:1] + ["8"] + DEMO[2:]
    resumed = main(longer + ["--accumulation", "2", "--resume", str(out / "checkpoint"),
                             "--out", str(tmp_path)])  # fmt: skip
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history["loss"]) == 2 and math.isfinite(resumed["validation_loss"])
    with pytest.raises(SystemExit):
        main(DEMO + ["--accumulation", "2", "--resume", str(out / "checkpoint"),
                     "--out", str(tmp_path / "again")])  # fmt: skip
    assert "is at step 6, nothing to do for --steps 6" in capsys.readouterr().err


def test_demo_saves_a_checkpoint_every_save_every_steps(tmp_path, monkeypatch):
    saved = []

    def save_and_record(folder, *args):
        saved.append(args[2])
        return save_checkpoint(folder, *args)

    monkeypatch.setattr(lesson, "save_checkpoint", save_and_record)
    main(DEMO + ["--save-every", "4", "--out", str(tmp_path)])
    assert saved == [4, 6]
    trainer = json.loads((tmp_path / "checkpoint" / "trainer.json").read_text())
    assert trainer["step"] == 6


def test_two_ddp_processes_under_torchrun_equal_one_process(single, tmp_path):
    out, _ = single
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "annotated.llm.pretraining"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        command + DEMO + ["--accumulation", "1", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 process(es)" in result.stdout
    two = json.loads((tmp_path / "history.json").read_text())
    one = json.loads((out / "history.json").read_text())
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-5)
    assert [s for s, _ in two["validation"]] == [s for s, _ in one["validation"]]
    two_val, one_val = (
        [v for _, v in two["validation"]],
        [v for _, v in one["validation"]],
    )
    assert two_val == pytest.approx(one_val, abs=1e-5)
    assert two["loss"][-1] < two["loss"][0]


# ## Benchmarks: one training iteration, ours against GPT2LMHeadModel

BENCH = dict(vocab_size=1024, n_positions=64, n_embd=128, n_layer=4, n_head=4)


def bench_batch() -> torch.Tensor:
    return torch.randint(0, 1024, (12, 64), generator=torch.Generator().manual_seed(0))


@pytest.mark.benchmark(group="training iteration, 4 layers, width 128, batch 12×64")
def test_bench_iteration_ours(benchmark):
    torch.manual_seed(0)
    model = GPT2(GPT2Config(**BENCH, dropout=0.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = bench_batch()

    def iteration():
        logits = model(batch)
        next_token_loss(logits[:, :-1], batch[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    benchmark.extra_info["label"] = "ours (GPT2)"
    benchmark(iteration)


@pytest.mark.benchmark(group="training iteration, 4 layers, width 128, batch 12×64")
def test_bench_iteration_transformers(benchmark):
    torch.manual_seed(0)
    config = HFConfig(
        vocab_size=1024, n_positions=64, n_embd=128, n_layer=4, n_head=4,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    model = GPT2LMHeadModel(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = bench_batch()

    def iteration():
        model(batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["label"] = "transformers GPT2LMHeadModel"
    benchmark(iteration)
