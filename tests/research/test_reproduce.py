"""Verified against Hugging Face's GPT2LMHeadModel with copied weights (answer logits,
loss and every gradient to 1e-10 in float64) and an nn.TransformerEncoderLayer twin, and
the statistics against scipy (t.interval, ttest_rel, signal.lfilter) to 1e-10.

Also: the operation table (every pair once, a disjoint split of the stated size, right
answers), AdamW's decoupled decay and warm-up on torch.optim.AdamW, the Fourier energy
against an explicit cosine-sine projection, the paper's 396,800 non-embedding
parameters at width 128, and a short run whose training accuracy rises far above
chance.
"""

import csv
import math
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from scipy import signal, stats
from torch import nn
from transformers import GPT2Config as HFConfig
from transformers import GPT2LMHeadModel

from annotated.llm.gpt2 import CONV1D_WEIGHTS, to_hf_state_dict
from annotated.research import reproduce
from annotated.research.reproduce import (
    AnswerModel,
    GrokConfig,
    GrokfastEMA,
    Run,
    adamw,
    answer_loss,
    example,
    fourier_energy,
    grokking_caption,
    main,
    modular_addition,
    plot_runs,
    plot_sweep,
    speedup_interval,
    steps_to_threshold,
    t_interval,
    top_share,
    train,
)

torch.set_num_threads(1)

PRIMES = [2, 3, 5, 7, 11, 13, 23, 47, 97]


# ## The data


@given(
    prime=st.sampled_from(PRIMES[1:]),
    fraction=st.floats(0.1, 0.9),
    seed=st.integers(0, 2**16),
)
def test_the_split_covers_every_pair_once_disjointly_at_the_stated_fraction(
    prime, fraction, seed
):
    split = modular_addition(prime, fraction, seed)
    tokens = torch.cat([split.train_tokens, split.val_tokens])  # [p², 3]
    answers = torch.cat([split.train_answers, split.val_answers])
    assert len(split.train_tokens) == round(fraction * prime**2)
    pairs = {(a, b) for a, b, _ in tokens.tolist()}
    assert len(pairs) == prime**2 == len(tokens)  # every ordered pair exactly once
    train_pairs = {tuple(t[:2]) for t in split.train_tokens.tolist()}
    val_pairs = {tuple(t[:2]) for t in split.val_tokens.tolist()}
    assert not train_pairs & val_pairs
    assert (tokens[:, 2] == prime).all()  # the "=" token
    assert answers.tolist() == [(a + b) % prime for a, b, _ in tokens.tolist()]


def test_the_split_is_fixed_by_the_seed():
    one, again, other = (modular_addition(47, 0.4, s) for s in (3, 3, 4))
    assert torch.equal(one.train_tokens, again.train_tokens)
    assert not torch.equal(one.train_tokens, other.train_tokens)


# ## The model against references


def hf_twin(model: AnswerModel) -> GPT2LMHeadModel:
    config = model.gpt.config
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
    ).to(model.gpt.wte.weight.dtype)
    hf.load_state_dict(to_hf_state_dict(model.gpt))
    return hf.train()


def test_answer_logits_loss_and_gradients_match_gpt2lmheadmodel_in_float64():
    torch.manual_seed(0)
    prime = 13
    model = AnswerModel(prime, width=32, layers=2, heads=4).double()
    hf = hf_twin(model)
    split = modular_addition(prime, 0.5, seed=1)
    tokens, answers = split.train_tokens[:40], split.train_answers[:40]
    ours = model(tokens)
    theirs = hf(tokens).logits[:, -1, :prime]
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    loss, hf_loss = answer_loss(ours, answers), F.cross_entropy(theirs, answers)
    torch.testing.assert_close(loss, hf_loss, rtol=1e-10, atol=1e-10)
    loss.backward()
    hf_loss.backward()
    hf_params = dict(hf.named_parameters())
    for name, param in model.gpt.named_parameters():
        grad = param.grad.t() if name.endswith(CONV1D_WEIGHTS) else param.grad
        torch.testing.assert_close(
            grad, hf_params[f"transformer.{name}"].grad, rtol=1e-10, atol=1e-10
        )


class TorchTwin(nn.Module):
    """The same network written with torch.nn.TransformerEncoderLayer."""

    def __init__(self, prime: int, width: int, layers: int, heads: int):
        super().__init__()
        self.prime = prime
        self.wte = nn.Embedding(prime + 1, width)
        self.wpe = nn.Embedding(3, width)
        layer = nn.TransformerEncoderLayer(
            width,
            heads,
            4 * width,
            dropout=0.0,
            activation=lambda x: F.gelu(x, approximate="tanh"),
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.ln_f = nn.LayerNorm(width)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(3))

    def forward(self, tokens):
        x = self.wte(tokens) + self.wpe.weight  # [batch, 3, d]
        x = self.blocks(x, mask=self.mask.to(x.dtype), is_causal=True)
        return F.linear(self.ln_f(x[:, -1]), self.wte.weight)[:, : self.prime]

    def load_from(self, model: AnswerModel):
        gpt = model.gpt
        with torch.no_grad():
            self.wte.weight.copy_(gpt.wte.weight)
            self.wpe.weight.copy_(gpt.wpe.weight)
            self.ln_f.load_state_dict(gpt.ln_f.state_dict())
            for ours, block in zip(self.blocks.layers, gpt.h):
                ours.self_attn.in_proj_weight.copy_(block.attn.c_attn.weight)
                ours.self_attn.in_proj_bias.copy_(block.attn.c_attn.bias)
                ours.self_attn.out_proj.load_state_dict(block.attn.c_proj.state_dict())
                ours.linear1.load_state_dict(block.mlp.c_fc.state_dict())
                ours.linear2.load_state_dict(block.mlp.c_proj.state_dict())
                ours.norm1.load_state_dict(block.ln_1.state_dict())
                ours.norm2.load_state_dict(block.ln_2.state_dict())
        return self


def test_the_model_matches_an_nn_transformerencoderlayer_twin():
    torch.manual_seed(1)
    model = AnswerModel(23, width=32, layers=2, heads=4).double()
    twin = TorchTwin(23, 32, 2, 4).double().load_from(model)
    tokens = modular_addition(23, 0.5).train_tokens[:16]
    torch.testing.assert_close(model(tokens), twin(tokens), rtol=1e-10, atol=1e-10)


def test_non_embedding_parameters_are_the_papers_4e5_at_width_128():
    def non_embedding(model):
        return sum(
            p.numel()
            for n, p in model.named_parameters()
            if "wte" not in n and "wpe" not in n
        )

    assert non_embedding(AnswerModel(97, width=128)) == 396_800
    assert non_embedding(AnswerModel(47, width=64)) == 100_096


# ## The optimiser


def test_adamw_decays_a_zero_gradient_weight_by_one_minus_lr_lambda_with_warmup():
    weight = nn.Parameter(torch.full((3,), 2.0, dtype=torch.float64))
    holder = nn.Module()
    holder.weight = weight
    optimizer, scheduler = adamw(holder, lr=1e-2, weight_decay=3.0, warmup=10)
    expected = 2.0
    for step in range(1, 15):
        weight.grad = torch.zeros_like(weight)
        optimizer.step()
        scheduler.step()
        expected *= 1 - 1e-2 * min(1.0, step / 10) * 3.0
        torch.testing.assert_close(
            weight.detach(), torch.full((3,), expected, dtype=torch.float64)
        )


# ## Grokfast


def test_grokfast_matches_an_iir_filter_from_scipy_signal_lfilter():
    alpha, lamb = 0.9, 2.0
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(40, 3, 2))  # [time, parameter shape]
    holder = nn.Module()
    holder.weight = nn.Parameter(torch.zeros(3, 2, dtype=torch.float64))
    holder.unused = nn.Parameter(torch.zeros(4, dtype=torch.float64))  # no gradient
    grokfast = GrokfastEMA(alpha, lamb)
    filtered = []
    for g in raw:
        holder.weight.grad = torch.tensor(g)
        grokfast(holder)
        filtered.append(holder.weight.grad.numpy().copy())
    # μ_t = α μ_{t-1} + (1 - α) g_t with μ_1 = g_1: a first-order IIR filter whose
    # state before the first sample is α g_1.
    ema, _ = signal.lfilter([1 - alpha], [1, -alpha], raw, axis=0, zi=alpha * raw[:1])
    np.testing.assert_allclose(
        np.array(filtered), raw + lamb * ema, rtol=1e-10, atol=1e-12
    )
    assert holder.unused.grad is None


def test_grokfast_with_zero_gain_leaves_gradients_alone():
    holder = nn.Linear(3, 2)
    holder(torch.randn(5, 3)).sum().backward()
    before = [p.grad.clone() for p in holder.parameters()]
    GrokfastEMA(0.98, 0.0)(holder)
    for b, p in zip(before, holder.parameters()):
        assert torch.equal(b, p.grad)


# ## The Fourier energy


def test_fourier_energy_matches_an_explicit_cosine_sine_projection():
    p, d = 13, 5
    embedding = torch.randn(p, d, dtype=torch.float64)
    a = np.arange(p)[:, None]
    e = embedding.numpy()
    total = (e**2).sum()
    expected = [(e.mean(0) ** 2).sum() * p / total]
    for k in range(1, (p + 1) // 2):
        cos = np.cos(2 * np.pi * k * a / p) * math.sqrt(2 / p)  # orthonormal columns
        sin = np.sin(2 * np.pi * k * a / p) * math.sqrt(2 / p)
        expected.append(
            (((cos * e).sum(0)) ** 2 + ((sin * e).sum(0)) ** 2).sum() / total
        )
    np.testing.assert_allclose(fourier_energy(embedding).numpy(), expected, atol=1e-12)


def test_a_single_frequency_embedding_has_all_its_energy_there():
    p = 47
    a = torch.arange(p, dtype=torch.float64)[:, None]
    embedding = torch.cat(
        [
            torch.cos(2 * math.pi * 7 * a / p + 0.3),
            2 * torch.sin(2 * math.pi * 7 * a / p),
        ],
        dim=1,
    )  # [p, 2]
    energy = fourier_energy(embedding)
    assert energy.shape == ((p + 1) // 2,)
    assert energy[7].item() == pytest.approx(1.0, abs=1e-12)
    assert top_share(energy, k=1) == pytest.approx(1.0, abs=1e-12)
    random = fourier_energy(torch.randn(p, 500, dtype=torch.float64))
    assert random.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert top_share(random) < 0.35  # no frequency stands out in noise


def test_top_share_leaves_out_the_constant_frequency():
    # A column of a constant 3 and a column of one cosine of amplitude 1 at k = 4:
    # energy p·9 at k = 0 and 2·p/4 at k = 4 (both halves), so the constant has
    # 9 / 9.5 of it; the top non-constant share is the cosine's 0.5 / 9.5.
    p = 31
    a = torch.arange(p, dtype=torch.float64)[:, None]
    embedding = torch.cat(
        [torch.full_like(a, 3.0), torch.cos(2 * math.pi * 4 * a / p)], 1
    )
    energy = fourier_energy(embedding)
    assert energy[0].item() == pytest.approx(9 / 9.5, abs=1e-12)
    assert top_share(energy, k=1) == pytest.approx(0.5 / 9.5, abs=1e-12)
    assert top_share(energy, k=3) == pytest.approx(0.5 / 9.5, abs=1e-12)


# ## The statistics


def test_steps_to_threshold_returns_the_first_crossing():
    assert steps_to_threshold([10, 20, 30, 40], [0.5, 0.99, 0.2, 1.0], 0.99) == 20
    assert steps_to_threshold([10, 20], [0.5, 0.98], 0.99) is None
    assert steps_to_threshold([], [], 0.5) is None


def test_the_grokking_caption_reads_its_claims_from_the_runs():
    def run(decay, generalised, prime=47, layers=2):
        config = GrokConfig(prime=prime, layers=layers, weight_decay=decay)
        return Run(config, "run", generalised_at=generalised)

    sweep = [run(0.0, None), run(0.3, None), run(1.0, 1750), run(3.0, 600)]
    caption = grokking_caption(sweep[2], sweep)
    assert "2-layer GPT-2 on a + b mod 47 reaches 99 % long before" in caption
    assert (
        "with four weight decays; without decay, or with 0.3, the held-out half is "
        "not learned within the budget, and more decay learns it sooner." in caption
    )
    sweep = [run(1.0, None, 23, 3), run(3.0, 900, 23, 3)]
    caption = grokking_caption(sweep[0], sweep)
    assert "3-layer GPT-2 on a + b mod 23 reaches 99 %, but validation" in caption
    assert "two weight decays; with 1, the held-out half is not learned" in caption
    assert "sooner" not in caption
    sweep = [run(1.0, 600), run(3.0, 900)]
    caption = grokking_caption(sweep[0], sweep)
    assert "every decay learns the held-out half within the budget." in caption


@given(
    values=st.lists(st.floats(1, 1e5), min_size=2, max_size=12).filter(
        lambda v: np.std(v) > 1e-6 * np.mean(v)
    ),
    level=st.sampled_from([0.8, 0.9, 0.95, 0.99]),
)
def test_t_interval_matches_scipy_stats_t_interval(values, level):
    mean, low, high = t_interval(values, level)
    x = np.asarray(values)
    ref_low, ref_high = stats.t.interval(
        level, len(x) - 1, loc=x.mean(), scale=stats.sem(x)
    )
    assert mean == pytest.approx(x.mean(), rel=1e-12)
    assert low == pytest.approx(ref_low, rel=1e-10, abs=1e-8)
    assert high == pytest.approx(ref_high, rel=1e-10, abs=1e-8)


def test_speedup_interval_matches_scipy_paired_t_test_on_logs():
    baseline, improved = [2600, 2300, 2900], [1100, 1000, 1400]
    speedup, low, high = speedup_interval(baseline, improved)
    result = stats.ttest_rel(np.log(baseline), np.log(improved))
    ci = result.confidence_interval(0.95)
    assert math.log(speedup) == pytest.approx(
        np.mean(np.log(np.divide(baseline, improved)))
    )
    assert low == pytest.approx(math.exp(ci.low), rel=1e-10)
    assert high == pytest.approx(math.exp(ci.high), rel=1e-10)
    assert 1 < low < speedup < high


# ## Training


SMALL = GrokConfig(prime=23, train_fraction=0.5, width=32, steps=300, eval_every=50)


def test_a_short_run_fits_the_training_half_far_above_chance():
    began = time.perf_counter()
    run, model = train(SMALL, progress=False)
    assert 0 < run.seconds <= time.perf_counter() - began  # the run's own duration
    assert run.steps == [50, 100, 150, 200, 250, 300]
    assert run.train_accuracy[-1] > 0.8 > 10 / SMALL.prime  # chance is 1/23
    assert run.train_loss[-1] < 0.5 * run.train_loss[0]
    assert run.memorised_at is None or run.memorised_at in run.steps
    assert len(run.weight_norm) == len(run.steps)


def test_runs_are_reproducible_and_the_filter_is_the_only_difference():
    config = GrokConfig(prime=23, train_fraction=0.5, width=32, steps=30, eval_every=10)
    one, _ = train(config, progress=False)
    again, _ = train(config, progress=False)
    filtered, _ = train(config, grad_filter=GrokfastEMA(), progress=False)
    assert one.train_loss == again.train_loss
    assert one.train_loss != filtered.train_loss


def test_a_run_stops_run_on_times_past_its_generalisation_step():
    """A 1 % threshold is met at the first evaluation (chance is 1/23)."""
    config = replace(SMALL, eval_every=1, threshold=0.01)
    run, _ = train(config, progress=False)
    assert run.generalised_at == 1 and run.steps == [1]
    run, _ = train(config, run_on=3, progress=False)
    assert run.generalised_at == 1 and run.steps == [1, 2, 3]


def test_figures_mark_the_step_counts_a_run_reached(tmp_path, monkeypatch):
    """Dashed lines at the main run's two counts; a generalised run's count is
    written above its circle, a censored run's budget above its triangle."""
    figures = []

    def keep(fig, path, caption):
        figures.append(fig)
        return path

    monkeypatch.setattr(reproduce, "save", keep)

    def run(decay, memorised, generalised):
        return Run(
            GrokConfig(weight_decay=decay),
            "run",
            steps=[10, 100],
            train_accuracy=[0.1, 1.0],
            val_accuracy=[0.0, 1.0],
            weight_norm=[2.0, 1.0],
            memorised_at=memorised,
            generalised_at=generalised,
        )

    censored, done = run(0.0, 40, None), run(1.0, 30, 1750)
    plot_runs(done, [censored, done], tmp_path)
    flat = torch.full((24,), 1 / 24)
    plot_sweep([censored, done], 4000, (flat, flat), tmp_path)
    lines = figures[0].axes[0].lines
    dashed = [line.get_xdata()[0] for line in lines if line.get_linestyle() == "--"]
    assert dashed == [30, 1750]
    assert [t.get_text() for t in figures[1].axes[0].texts] == ["> 4,000", "1,750"]


def test_demo_runs_and_reports_every_number(tmp_path):
    metrics = main(
        [
            "--prime", "23", "--fraction", "0.5", "--width", "32", "--steps", "60",
            "--eval-every", "20", "--seeds", "2", "--weight-decays", "1,3",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    assert metrics["final_train_accuracy"] > 3 / 23
    assert {"speedup", "speedup_low", "steps_wd_1", "steps_wd_3"} <= set(metrics)
    for name in ("grokking.png", "sweep.png", "improvement.png"):
        assert (tmp_path / name).exists()
    rows = (tmp_path / "runs.csv").read_text().splitlines()
    # the sweep's two runs, then seed 1 of each arm (seed 0 of both is reused)
    assert rows[0].startswith("run,step") and len(rows) == 1 + 4 * 3


def test_demo_with_grokfast_as_the_improvement(tmp_path):
    metrics = main(
        [
            "--prime", "11", "--width", "16", "--steps", "20", "--eval-every", "10",
            "--seeds", "2", "--weight-decays", "1", "--grokfast",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    with open(tmp_path / "runs.csv", newline="") as file:
        runs = [row["run"] for row in csv.DictReader(file)]
    assert runs.count("λ = 1 + Grokfast, seed 0") == runs.count("λ = 1, seed 1") == 2
    assert metrics["censored_runs"] == 4.0  # nothing generalises in 20 updates


# ## Bad input


def test_bad_inputs_raise_naming_the_argument(capsys):
    with pytest.raises(ValueError, match="prime must be a prime"):
        modular_addition(48, 0.5)
    with pytest.raises(ValueError, match="train_fraction"):
        modular_addition(47, 1.0)
    model = AnswerModel(7, width=16, heads=2)
    with pytest.raises(TypeError, match="tokens must be an integer"):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\[batch, 3\]"):
        model(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"rows \(a, b, 7\)"):
        model(torch.tensor([[7, 1, 7]]))
    with pytest.raises(ValueError, match=r"rows \(a, b, 7\)"):
        model(torch.tensor([[1, 1, 6]]))
    with pytest.raises(ValueError, match="divisible by heads"):
        GrokConfig(width=30, heads=4)
    with pytest.raises(ValueError, match="weight_decay"):
        GrokConfig(weight_decay=-1.0)
    with pytest.raises(TypeError, match="config must be a GrokConfig"):
        train({"prime": 7})
    with pytest.raises(ValueError, match="same length"):
        steps_to_threshold([1, 2], [0.5], 0.9)
    with pytest.raises(ValueError, match="at least two finite"):
        t_interval([3.0])
    with pytest.raises(ValueError, match="paired"):
        speedup_interval([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="alpha"):
        GrokfastEMA(alpha=1.0)
    with pytest.raises(ValueError, match="odd number of rows"):
        fourier_energy(torch.randn(46, 4))
    with pytest.raises(ValueError, match=r"embedding must be a \[p, d\] tensor"):
        fourier_energy(torch.randn(47))
    with pytest.raises(ValueError, match="GrokConfig.width must be a positive int"):
        GrokConfig(width=0)
    with pytest.raises(ValueError, match="threshold must be in"):
        GrokConfig(threshold=1.5)
    with pytest.raises(ValueError, match="eval_every must be a positive int"):
        GrokConfig(eval_every=0)
    with pytest.raises(ValueError, match="run_on must be >= 1"):
        train(SMALL, run_on=0.5)
    with pytest.raises(ValueError, match="level must be in"):
        t_interval([1.0, 2.0], level=1.0)
    with pytest.raises(ValueError, match="lamb must be >= 0"):
        GrokfastEMA(lamb=-1.0)
    with pytest.raises(ValueError, match="step counts must be positive"):
        speedup_interval([1, 2], [0, 1])
    with pytest.raises(SystemExit):
        main(["--weight-decays", "0,3"])
    assert "--weight-decays must include 1" in capsys.readouterr().err


def test_example_runs():
    fn, args = example()
    assert fn(*args).shape == (8, 47)


# ## Benchmarks: one full-batch training step


def full_batch_step(model):
    split = modular_addition(47, 0.4, seed=0)
    tokens, answers = split.train_tokens, split.train_answers  # all 884 equations
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1.0)

    def step():
        optimizer.zero_grad(set_to_none=True)
        answer_loss(model(tokens), answers).backward()
        optimizer.step()

    return step


@pytest.mark.benchmark(group="one full-batch AdamW step, 884 equations mod 47")
def test_bench_step_ours(benchmark):
    benchmark.extra_info["label"] = "ours: GPT-2 blocks from the GPT-2 lesson"
    torch.manual_seed(0)
    benchmark(full_batch_step(AnswerModel(47)))


@pytest.mark.benchmark(group="one full-batch AdamW step, 884 equations mod 47")
def test_bench_step_torch_transformer_encoder_layer(benchmark):
    benchmark.extra_info["label"] = "nn.TransformerEncoderLayer twin"
    benchmark.extra_info["baseline"] = True
    torch.manual_seed(0)
    twin = TorchTwin(47, 64, 2, 4).load_from(AnswerModel(47))
    benchmark(full_batch_step(twin))
