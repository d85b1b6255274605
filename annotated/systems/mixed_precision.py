r"""
---
title: Mixed precision and a loss scaler
summary: >-
  bfloat16 autocast on the CPU, float16's underflow on real gradients, fp32 master
  weights, and a dynamic loss scaler that makes GradScaler's every decision.
time: 12 s
expected:
  metric: "float16 + scaler accuracy"
  short: ["--steps", "150", "--growth-interval", "10", "--lr", "0.03"]
references:
  - key: micikevicius2018mixed
    authors:
      - Paulius Micikevicius
      - Sharan Narang
      - Jonah Alben
      - Gregory Diamos
      - Erich Elsen
      - David Garcia
      - Boris Ginsburg
      - Michael Houston
      - Oleksii Kuchaiev
      - Ganesh Venkatesh
      - Hao Wu
    title: Mixed Precision Training
    year: 2018
    venue: ICLR 2018
    arxiv: "1710.03740"
  - key: kalamkar2019study
    authors: [Dhiraj Kalamkar, Dheevatsa Mudigere, Naveen Mellempudi, et al.]
    title: A Study of BFLOAT16 for Deep Learning Training
    year: 2019
    venue: arXiv preprint
    arxiv: "1905.12322"
  - key: ieee2019floating
    authors: [IEEE Computer Society]
    title: IEEE Standard for Floating-Point Arithmetic (IEEE Std 754-2019)
    year: 2019
    venue: IEEE
    url: https://doi.org/10.1109/IEEESTD.2019.8766229
  - key: goldberg1991every
    authors: [David Goldberg]
    title: What every computer scientist should know about floating-point arithmetic
    year: 1991
    venue: ACM Computing Surveys 23(1)
    url: https://doi.org/10.1145/103162.103163
worksheet:
  - region: LossScaler.unscale_
    hint: >-
      Refuse a second call before update(); multiply every existing gradient of the
      optimizer's parameters in place, without autograd, by 1 / S rounded to float32,
      note whether any entry is inf or nan, store that verdict in found_inf and return
      it.
    tests:
      - test_scaler_makes_gradscalers_decisions_step_for_step
      - test_scaler_refuses_to_unscale_twice_or_update_too_early
  - region: LossScaler.step
    hint: >-
      Unscale first unless unscale_ already ran this step; if an inf or nan was found
      skip the optimizer step and return False, otherwise step and return True.
    tests: [test_skipped_step_leaves_weights_and_adam_state_untouched]
  - region: LossScaler.update
    hint: >-
      Refuse to run before a step; after an overflow multiply the scale by
      backoff_factor and reset the count of good steps; otherwise count the step and,
      after growth_interval of them, multiply by growth_factor unless that overflows
      float32, and reset the count; scales stay float32; clear found_inf.
    tests:
      - test_scale_sequence_for_the_default_factors_is_the_one_the_rules_give
      - test_scale_stops_growing_at_the_float32_limit_like_gradscaler
      - test_state_dict_round_trip_and_gradscaler_state_resume_the_sequence
---

A float32 number takes four bytes. Half that, two bytes, halves the memory every
activation saved for the backward pass needs, halves the bytes every matrix product
reads, and on hardware with 16-bit units (tensor cores, AVX-512 BF16, AMX) multiplies
the arithmetic rate several times over. *Mixed precision* training takes those savings
where they are safe and keeps 32 bits where they are not [@micikevicius2018mixed].

Two 16-bit formats compete. Each number is a sign, an exponent $e$ and a fraction $f$,
worth $(-1)^s \, 2^{e - \text{bias}} \, (1.f)$ [@ieee2019floating; @goldberg1991every]:

| format | exponent | fraction | largest | smallest normal | $\epsilon$ |
| --- | --- | --- | --- | --- | --- |
| float32 | 8 | 23 | $3.4 \cdot 10^{38}$ | $1.2 \cdot 10^{-38}$ | $1.2 \cdot 10^{-7}$ |
| float16 | 5 | 10 | $65504$ | $6.1 \cdot 10^{-5}$ | $9.8 \cdot 10^{-4}$ |
| bfloat16 | 8 | 7 | $3.4 \cdot 10^{38}$ | $1.2 \cdot 10^{-38}$ | $7.8 \cdot 10^{-3}$ |

(The exponent and fraction columns count bits.)

float16 keeps more digits but has a narrow *range*: its smallest number is
$2^{-24} \approx 6 \times 10^{-8}$ (anything under half of it rounds to zero) and its
largest 65504 (anything from 65520 up rounds to infinity). bfloat16 is
float32 with the last 16 fraction bits cut off: the same range, but only two or three
significant decimal digits [@kalamkar2019study]. So the two formats fail differently.
float16 loses small gradients to *underflow*, which a *loss scale* repairs; bfloat16
loses small *updates* to rounding, which *fp32 master weights* repair.

This lesson shows both failures on a real network, the 64→128→128→10 digits classifier,
and builds the repairs: `torch.autocast` with bfloat16 (and what it casts), fp32 master
weights, and a dynamic loss scaler written from scratch. The test runs our scaler and
`torch.amp.GradScaler` side by side through a script of steps with injected overflows
and checks they make the same decision, and hold the same scale, at every step.
"""

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from annotated.data import digits, integer, number, torch_device
from annotated.figures import figure, save


# ## The three formats, from `torch.finfo`
#
# The table above is not typed in by hand: `torch.finfo` holds each format's limits, and
# the test checks the numbers quoted in the prose against it. `tiny` is the smallest
# *normal* number; below it the exponent is stuck at its minimum and the fraction loses
# leading bits (the *subnormals*), down to one unit in the last place,
# $\text{tiny} \cdot \epsilon$, the smallest number that is not zero.
def float_formats() -> dict[str, dict[str, float]]:
    r"""For float32, float16 and bfloat16: the bits, the largest number, the smallest
    normal and subnormal numbers, and $\epsilon$ (the gap between 1 and the next
    number)."""
    formats = {}
    for name, dtype in [
        ("float32", torch.float32),
        ("float16", torch.float16),
        ("bfloat16", torch.bfloat16),
    ]:
        info = torch.finfo(dtype)
        formats[name] = {
            "bits": info.bits,
            "max": info.max,
            "smallest normal": info.tiny,
            "smallest subnormal": info.tiny * info.eps,
            "eps": info.eps,
        }
    return formats


# ## What `torch.autocast` casts
#
# Inside `with torch.autocast("cpu", dtype=torch.bfloat16):` nothing about the model
# changes: its parameters stay float32. Instead, each operator called in the block goes
# through the *Autocast* dispatch key first, which casts its inputs according to the
# operator's *policy* before calling the real kernel. The policies are one table per
# device in PyTorch's `aten/src/ATen/autocast_mode.cpp`, as lines such as
# `KERNEL_CPU(linear, lower_precision_fp)` inside `TORCH_LIBRARY_IMPL(aten, AutocastCPU,
# m)`. There are three kinds of operator:
#
# - **lower precision** (`lower_precision_fp`): matrix products and convolutions
#   (`mm`, `addmm`, `linear`, `matmul`, `bmm`, `_convolution`) cast float32 inputs down
#   to bfloat16. They are where the time goes, and where 16-bit units pay off; their
#   sums are accumulated in float32 inside the kernel.
# - **float32** (`fp32`): operators whose result is sensitive to rounding or range,
#   such as the losses (`cross_entropy_loss`, `nll_loss`, `mse_loss`), cast bfloat16
#   inputs up to float32.
# - **everything else** is not in the table and runs in the dtype it is given: `relu`
#   or `softmax` of a bfloat16 tensor is bfloat16, of a float32 tensor float32, and
#   `a + b` with one of each follows the usual type promotion to float32.
#
# `autocast_output_dtypes` probes one operator of each kind with float32 or bfloat16
# inputs and reports the dtype that comes out. The cast of a weight is cached for the
# length of the block, so a layer called twice pays for it once; and the cast is an
# ordinary differentiable operation, so the gradient flowing back to the float32
# parameter is float32 again.
def autocast_output_dtypes(
    device_type: str = "cpu", dtype: torch.dtype = torch.bfloat16
) -> dict[str, torch.dtype]:
    """The dtype each probe operator returns inside `torch.autocast(device_type,
    dtype)`."""
    generator = torch.Generator().manual_seed(0)
    x32 = torch.randn(8, 16, generator=generator).to(device_type)  # [8, 16] float32
    w32 = torch.randn(4, 16, generator=generator).to(device_type)  # [4, 16] float32
    x16 = x32.to(dtype)  # [8, 16] in the low-precision dtype
    labels = torch.zeros(8, dtype=torch.long, device=device_type)  # [8]
    with torch.autocast(device_type, dtype=dtype):
        outputs = {
            "linear(float32)": F.linear(x32, w32),
            "matmul(float32)": x32 @ x32.T,
            "relu(float32)": torch.relu(x32),
            "relu(low)": torch.relu(x16),
            "softmax(float32)": torch.softmax(x32, dim=1),
            "softmax(low)": torch.softmax(x16, dim=1),
            "cross_entropy(low)": F.cross_entropy(x16, labels),
            "mse_loss(low)": F.mse_loss(x16, torch.zeros_like(x16)),
            "add(low, float32)": x16 + x32,
        }
    return {name: value.dtype for name, value in outputs.items()}


# ## The model and its data
#
# The same classifier serves every experiment: the 1,797 8×8 digits of
# `annotated.data.digits`, and an MLP wide enough that its matrix products dominate.
# `model_dtype` builds it directly in another dtype, for the run *without* master
# weights below.
def make_model(seed: int, device: str, model_dtype=torch.float32) -> nn.Module:
    """A fresh 64→128→128→10 ReLU MLP, its weights drawn from `seed`."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(64, 128),
        nn.ReLU(),
        nn.Linear(128, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )
    return model.to(device=device, dtype=model_dtype)


def load_digits(device: str, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """The digits split as float32 / int64 tensors on `device`."""
    x_train, y_train, x_test, y_test = digits(seed=seed)
    return (
        torch.tensor(x_train, dtype=torch.float32, device=device),  # [1438, 64]
        torch.tensor(y_train, device=device),  # [1438]
        torch.tensor(x_test, dtype=torch.float32, device=device),  # [359, 64]
        torch.tensor(y_test, device=device),  # [359]
    )


# ## float16's range problem, on real gradients
#
# A trained network's gradients are small: the loss is near its minimum, and a mean over
# the batch divides every per-example gradient by the batch size. Micikevicius et al.
# found that most of the activation gradients of an SSD detector lay below float16's
# smallest subnormal, $2^{-24}$, and were flushed to zero [@micikevicius2018mixed].
#
# `fp16_gradient_loss` measures the same thing on our classifier. It computes every
# weight gradient twice on one batch: in float32, the reference, and in a real float16
# backward pass under `torch.autocast(dtype=torch.float16)`, where the matrix products
# of the backward pass run in float16 too. It returns the fraction of the entries that
# are nonzero in float32 but come out zero in float16. Multiplying the loss by a scale
# $S$ before `backward()` multiplies every gradient by $S$ (the chain rule is linear),
# which shifts the whole distribution up by $\log_2 S$ binades, out of the underflow
# zone; dividing the float32 gradients by $S$ afterwards undoes it exactly when $S$ is a
# power of two. The price is the other end of the range: multiply by too much and the
# largest gradients pass 65504 and become `inf`.
def fp16_gradient_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_scale: float
) -> float:
    """The fraction of nonzero float32 weight-gradient entries that a float16 backward
    pass with loss scale `loss_scale` turns into zeros."""
    device_type = x.device.type
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    reference = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with torch.autocast(device_type, dtype=torch.float16):
        loss = F.cross_entropy(
            model(x), y
        )  # float32: cross_entropy is on the fp32 list
    (loss * loss_scale).backward()
    lost = nonzero = 0
    for ref, p in zip(reference, model.parameters()):
        lost += int(((ref != 0) & (p.grad == 0)).sum())
        nonzero += int((ref != 0).sum())
    model.zero_grad()
    return lost / nonzero


# ## fp32 master weights
#
# bfloat16 has float32's range, so its gradients do not underflow, and it needs no loss
# scale. Its problem is the other one: with 8 significant bits, the numbers next to
# $w$ are about $w \cdot 2^{-8}$ away, and an update $\eta g$ smaller than half that gap
# is rounded away entirely:
# $$
# \begin{aligned}
# \operatorname{bf16}(w + \eta g) &= w
# \quad\text{whenever}\\
# |\eta g| &< 2^{-9}\,|w| \approx 0.002\,|w| .
# \end{aligned}
# $$
# Late in training nearly every update is that small. `accumulate` shows it with one
# weight of 1.0 receiving a thousand updates of $10^{-3}$: in float32 it ends at 2.0, in
# bfloat16 it never leaves 1.0.
#
# The repair is to keep the *master* copy of every weight, and the optimizer's state, in
# float32, and to cast to 16 bits only for the forward and backward passes
# [@micikevicius2018mixed]. That is exactly what `torch.autocast` does: the parameters
# stay float32 and the matrix products see bfloat16 casts of them.
def accumulate(dtype: torch.dtype, start: float, update: float, steps: int) -> float:
    """Add `update` to `start` `steps` times, rounding to `dtype` after every add."""
    weight = torch.tensor(start, dtype=dtype)
    for _ in range(steps):
        weight = weight + torch.tensor(update, dtype=dtype)
    return weight.item()


# ## A dynamic loss scaler
#
# float16 training needs a loss scale $S$ as large as possible without overflow, and
# the right $S$ changes as training goes. A *dynamic* scaler finds it by trial
# [@micikevicius2018mixed]. Every step it
#
# 1. **scales**: `backward()` runs on $S \cdot L$ instead of $L$;
# 2. **unscales**: multiplies every gradient by $1/S$ (computed in float64, rounded to
#    float32 once, so that $1/S$ is exact for powers of two);
# 3. **checks**: if any gradient entry is `inf` or `nan`, $S$ was too large;
# 4. **skips** the optimizer step when it found one, since the gradients are garbage;
# 5. **updates** $S$: after an overflow it *backs off*, $S \leftarrow \beta S$ with
#    $\beta = 1/2$, and resets its count of good steps; after `growth_interval`
#    consecutive good steps it *grows*, $S \leftarrow \gamma S$ with $\gamma = 2$, and
#    resets the count.
#
# So $S$ saws up and down around the largest safe value, and a skipped step is the
# price of probing. With PyTorch's defaults ($S_0 = 2^{16}$, an interval of 2000) a
# skip happens every couple of thousand steps.
#
# PyTorch's `torch.amp.GradScaler` (in `torch/amp/grad_scaler.py`) does the same in
# `unscale_`, `step` and `update`, with two kernels written for the job:
# `_amp_foreach_non_finite_check_and_unscale_` multiplies the gradients and sets a flag
# in one pass, and `_amp_update_scale_` applies rule 5 (on the CPU,
# `_amp_update_scale_cpu_kernel` in
# `aten/src/ATen/native/cpu/AmpGradScalerKernels.cpp`; on the GPU,
# `amp_update_scale_cuda_kernel` in `aten/src/ATen/native/cuda/AmpKernels.cu`).
# GradScaler keeps $S$ in a float32 tensor on the device so that a GPU never waits for
# the CPU; ours keeps a Python float rounded to float32, since the float32 rounding of
# $\gamma S$ and $\beta S$ is part of the sequence the test compares. Two more details
# come from the kernel: $S$ grows only if $\gamma S$ is still finite in float32, and the
# good-step count resets both on a growth and on an overflow.
def check_scaler_arguments(
    init_scale: float, growth_factor: float, backoff_factor: float, growth_interval: int
) -> None:
    """Raise a ValueError naming the first argument of `LossScaler` that is out of
    range."""
    if not (isinstance(init_scale, int | float) and 0 < init_scale < math.inf):
        raise ValueError(
            "LossScaler: init_scale must be a positive finite number, "
            f"got {init_scale!r}"
        )
    if not (isinstance(growth_factor, int | float) and growth_factor > 1):
        raise ValueError(
            f"LossScaler: growth_factor must be a number > 1, got {growth_factor!r}"
        )
    if not (isinstance(backoff_factor, int | float) and 0 < backoff_factor < 1):
        raise ValueError(
            f"LossScaler: backoff_factor must lie in (0, 1), got {backoff_factor!r}"
        )
    if (
        isinstance(growth_interval, bool)
        or not isinstance(growth_interval, int)
        or growth_interval < 1
    ):
        raise ValueError(
            "LossScaler: growth_interval must be a positive int, "
            f"got {growth_interval!r}"
        )


def to_float32(value: float) -> float:
    """`value` rounded to the nearest float32, as a Python float."""
    return torch.tensor(value, dtype=torch.float32).item()  # 2**128 becomes inf


class LossScaler:
    r"""A dynamic loss scaler with `torch.amp.GradScaler`'s interface: `scale(loss)`,
    `unscale_(optimizer)`, `step(optimizer)`, `update()`, `get_scale()`, and
    `state_dict()` / `load_state_dict()` for checkpoints.

    The scale $S$ starts at `init_scale`; it is multiplied by `backoff_factor` after a
    step with an `inf` or `nan` gradient and by `growth_factor` after `growth_interval`
    consecutive steps without.
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ):
        check_scaler_arguments(
            init_scale, growth_factor, backoff_factor, growth_interval
        )
        self.scale_value = to_float32(init_scale)
        self.growth_factor = growth_factor
        self.backoff_factor = backoff_factor
        self.growth_interval = growth_interval
        self.good_steps = (
            0  # consecutive steps without inf or nan since the last change
        )
        self.found_inf: bool | None = None  # this step's verdict, once unscaled

    def get_scale(self) -> float:
        return self.scale_value

    # Step 1. The multiplication is an ordinary autograd operation, so `backward()` on
    # its result sends $S$ times every gradient down the graph.
    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        r"""$S \cdot L$, to call `backward()` on."""
        return loss * self.scale_value

    # Steps 2 and 3, once per step (a second call would divide by $S$ twice, so it is
    # refused). `torch.isfinite(...).all()` over every gradient is the inf/nan check;
    # the multiplication by $1/S$ leaves an `inf` an `inf` and a `nan` a `nan`, so the
    # order of the two does not matter.
    def unscale_(self, optimizer: torch.optim.Optimizer) -> bool:
        """Divide every gradient of `optimizer`'s parameters by $S$ in place; return
        whether any entry was `inf` or `nan`."""
        if self.found_inf is not None:
            raise RuntimeError("LossScaler.unscale_: already unscaled since update()")
        inv_scale = to_float32(1.0 / self.scale_value)
        found_inf = False
        with torch.no_grad():
            for group in optimizer.param_groups:
                for param in group["params"]:
                    if param.grad is None:
                        continue
                    param.grad.mul_(inv_scale)
                    found_inf = found_inf or not bool(torch.isfinite(param.grad).all())
        self.found_inf = found_inf
        return found_inf

    # Step 4. Skipping leaves the parameters and the optimizer's state (Adam's moments,
    # its step count) untouched, as if the batch had never been drawn.
    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Unscale (unless `unscale_` already ran), then take the optimizer step if
        every gradient is finite; return whether it was taken."""
        if self.found_inf is None:
            self.unscale_(optimizer)
        if self.found_inf:
            return False
        optimizer.step()
        return True

    # Step 5, the rule of `_amp_update_scale_cpu_kernel`.
    def update(self) -> None:
        """Back off after an overflow, grow after `growth_interval` good steps."""
        if self.found_inf is None:
            raise RuntimeError("LossScaler.update: call step() or unscale_() first")
        if self.found_inf:
            self.scale_value = to_float32(self.scale_value * self.backoff_factor)
            self.good_steps = 0
        else:
            self.good_steps += 1
            if self.good_steps == self.growth_interval:
                grown = to_float32(self.scale_value * self.growth_factor)
                if math.isfinite(grown):
                    self.scale_value = grown
                self.good_steps = 0
        self.found_inf = None

    # The scale and the count are state: a run resumed from a checkpoint without them
    # starts again at $2^{16}$ and pays a burst of skipped steps to find its way back.
    def state_dict(self) -> dict[str, float | int]:
        return {
            "scale": self.scale_value,
            "growth_factor": self.growth_factor,
            "backoff_factor": self.backoff_factor,
            "growth_interval": self.growth_interval,
            "_growth_tracker": self.good_steps,
        }

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        check_scaler_arguments(
            state["scale"],
            state["growth_factor"],
            state["backoff_factor"],
            state["growth_interval"],
        )
        self.scale_value = to_float32(state["scale"])
        self.growth_factor = state["growth_factor"]
        self.backoff_factor = state["backoff_factor"]
        self.growth_interval = state["growth_interval"]
        self.good_steps = int(state["_growth_tracker"])
        self.found_inf = None


# ## One mixed-precision training step
#
# The whole recipe in one function. The parameters and the optimizer are float32 (the
# master weights); the forward pass runs under autocast, so its matrix products are
# 16-bit; the loss comes out float32; with float16 the scaler wraps `backward()` and the
# step. `mode` picks one of the four ways the demo trains:
#
# - `"float32"`: no autocast, the reference;
# - `"bfloat16"`: bfloat16 autocast with float32 master weights, no scaler;
# - `"bfloat16 weights"`: the model itself converted to bfloat16, no master copy;
# - `"float16 + scaler"`: float16 autocast with float32 master weights and `LossScaler`.
MODES = ("float32", "bfloat16", "bfloat16 weights", "float16 + scaler")


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    mode: str,
    scaler: LossScaler | None = None,
) -> tuple[float, bool]:
    """One step on the batch `x` `[batch, 64]`, `y` `[batch]`; returns the loss and
    whether the optimizer step was taken."""
    if mode not in MODES:
        raise ValueError(f"train_step: mode must be one of {MODES}, got {mode!r}")
    if (mode == "float16 + scaler") != (scaler is not None):
        raise ValueError("train_step: pass a scaler with mode 'float16 + scaler' only")
    low = {"bfloat16": torch.bfloat16, "float16 + scaler": torch.float16}.get(mode)
    with torch.autocast(x.device.type, dtype=low or torch.bfloat16, enabled=bool(low)):
        inputs = x.to(next(model.parameters()).dtype)  # bfloat16 only without masters
        logits = model(inputs)  # [batch, 10]
        loss = F.cross_entropy(logits, y)  # float32 under autocast
    optimizer.zero_grad()
    if scaler is None:
        loss.backward()
        optimizer.step()
        return loss.item(), True
    scaler.scale(loss).backward()
    stepped = scaler.step(optimizer)
    scaler.update()
    return loss.item(), stepped


def train(
    mode: str,
    data: tuple[torch.Tensor, ...],
    steps: int,
    batch_size: int,
    lr: float,
    growth_interval: int,
    seed: int,
) -> dict:
    """Train a fresh classifier in `mode`; return its losses, test accuracy, and the
    scaler's scale and skipped steps (empty without a scaler)."""
    x_train, y_train, x_test, y_test = data
    device = x_train.device
    model_dtype = torch.bfloat16 if mode == "bfloat16 weights" else torch.float32
    model = make_model(seed, device, model_dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    scaler = LossScaler(growth_interval=growth_interval) if "scaler" in mode else None
    batches = torch.Generator().manual_seed(seed)  # the same batches for every mode
    losses, scales, skipped = [], [], []
    for step in range(steps):
        index = torch.randint(len(x_train), (batch_size,), generator=batches).to(device)
        loss, stepped = train_step(
            model, optimizer, x_train[index], y_train[index], mode, scaler
        )
        losses.append(loss)
        if scaler is not None:
            scales.append(scaler.get_scale())
            if not stepped:
                skipped.append(step)
    with torch.no_grad():
        logits = model(x_test.to(model_dtype))  # [n_test, 10]
        accuracy = (logits.argmax(dim=1) == y_test).float().mean().item()
    return {
        "model": model,
        "losses": losses,
        "accuracy": accuracy,
        "scales": scales,
        "skipped": skipped,
    }


# ## Memory: what the backward pass keeps
#
# Autocast's saving in memory is in the *activations* that autograd saves for the
# backward pass: each `linear` saves its input and weight, and under bfloat16 autocast
# both are bfloat16 copies, half the bytes. `torch.autograd.graph.saved_tensors_hooks`
# sees every tensor as autograd saves it, so `saved_activation_bytes` adds up their
# sizes for one forward pass. The float32 master weights themselves are shared with the
# model and cost the same either way; the optimizer's state stays float32 too.
#
# Time is another matter. A CPU without bfloat16 arithmetic (no AVX-512 BF16 or AMX)
# converts to float32 to multiply, so autocast adds the casts and saves nothing: on the
# machine this page's benchmark ran on, a bfloat16-autocast training step is about 1.1×
# *slower* than a float32 one. The speed-up belongs to hardware with 16-bit units.
def saved_activation_bytes(
    model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None
) -> int:
    """Bytes of the tensors autograd saves for backward in one forward pass of `model`
    on `x`, under autocast to `dtype` (None: no autocast)."""
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast(
            x.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None
        ):
            labels = torch.zeros(len(x), dtype=torch.long, device=x.device)
            F.cross_entropy(model(x), labels).sum()
    return sum(saved)


# ## The example
#
# One float16 step with the scaler on a batch of 32 digits-shaped inputs. Autocast
# happens inside the step, so a `torch.fx` trace of the model would not show it; the
# lesson declares the step's data flow by hand in `dataflow`.
def example():
    """A small example: `fn(*args)` takes one float16 + scaler step and returns the
    scaler."""
    model = make_model(0, "cpu")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(32, 64, generator=generator)  # [32, 64]
    y = torch.randint(10, (32,), generator=generator)  # [32]

    def mixed_precision_step(model, optimizer, x, y, scaler):
        train_step(model, optimizer, x, y, "float16 + scaler", scaler)
        return scaler

    return mixed_precision_step, (model, optimizer, x, y, LossScaler())


def dataflow(
    scaler: LossScaler,
) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """The steps of one float16 step with loss scaling (declared by the lesson, not
    traced), with the dtypes and shapes that pass between them."""
    nodes = [
        ("master", "fp32 master weights"),
        ("cast", "autocast: cast to fp16 (cached)"),
        ("x", "batch x [32, 64] fp32"),
        ("forward", "linear/ReLU ×3 in fp16"),
        ("loss", "cross_entropy in fp32"),
        ("scale", "× S"),
        ("backward", "backward: fp16 products"),
        ("unscale", "grads × 1/S, inf/nan check"),
        ("step", "optimizer step (or skip)"),
        ("update", f"update S (now {scaler.get_scale():g})"),
    ]
    edges = [
        ("master", "cast", "fp32"),
        ("cast", "forward", "fp16 weights"),
        ("x", "forward", "[32, 64] → fp16"),
        ("forward", "loss", "logits [32, 10] fp16"),
        ("loss", "scale", "L, fp32 scalar"),
        ("scale", "backward", "S·L"),
        ("backward", "unscale", "S·grads, fp32"),
        ("unscale", "step", "grads, fp32"),
        ("unscale", "update", "found inf?"),
        ("step", "master", "new weights"),
    ]
    return nodes, edges


# ## The demo
#
# It trains the classifier four ways from the same weights on the same batches and
# reports each test accuracy, then takes the float32 model, now well trained, and
# measures how many of its gradient entries a float16 backward pass loses with and
# without a loss scale. The figures show the gradients' magnitudes against float16's
# limits, and the scaler's scale over the float16 run: up every `growth_interval` good
# steps, halved at each overflow.
def plot_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, out: Path):
    r"""A histogram of $\log_2 |g|$ over the trained model's weight gradients, with
    float16's limits."""
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()]).abs()
    grads = grads[grads > 0].double().log2().cpu().numpy()  # [n_nonzero]
    model.zero_grad()
    fp16 = torch.finfo(torch.float16)
    fig, axes = figure()
    axes.hist(grads, bins=80, color="0.6")
    axes.axvline(math.log2(fp16.tiny * fp16.eps), color="C3", label="fp16 zero below")
    axes.axvline(math.log2(fp16.tiny), color="C1", linestyle="--", label="fp16 normal")
    axes.axvline(math.log2(fp16.max), color="C0", linestyle=":", label="fp16 max")
    axes.set(
        xlabel="$\\log_2 |g|$",
        ylabel="gradient entries",
        title="weight gradients of the trained classifier",
    )
    axes.legend()
    save(
        fig,
        out / "gradient_range.png",
        caption="Magnitudes of the trained float32 classifier's weight gradients on "
        "one batch, as a histogram of log2|g|, against float16's limits: entries left "
        "of the red line become zero in float16; a loss scale of 2^k moves the "
        "histogram k to the right.",
    )


def plot_training(runs: dict[str, dict], growth_interval: int, out: Path) -> None:
    """Left: the training loss of each mode. Right: the float16 run's loss scale."""
    fig, (loss_axes, scale_axes) = figure(panels=2)
    window = np.ones(20) / 20
    styles = [("-", 4.0), ("--", 1.5), ("-", 1.5), (":", 1.5)]  # float32 shows below
    for index, (name, run) in enumerate(runs.items()):
        curve = np.asarray(run["losses"])
        smoothed = (
            np.convolve(curve, window, mode="valid") if len(curve) >= 20 else curve
        )
        linestyle, linewidth = styles[index % len(styles)]
        loss_axes.plot(
            np.arange(len(smoothed)) + len(curve) - len(smoothed),
            smoothed,
            linestyle=linestyle,
            linewidth=linewidth,
            label=name,
        )
    loss_axes.set(
        yscale="log",
        xlabel="step $k$",
        ylabel="training cross-entropy (20-step mean)",
        title="the same network, four precisions",
    )
    loss_axes.legend()
    scaled = runs["float16 + scaler"]
    scale_axes.plot(scaled["scales"], color="C3")
    scale_axes.plot(
        scaled["skipped"],
        [scaled["scales"][k] for k in scaled["skipped"]],
        "kx",
        label="skipped step (overflow)",
    )
    scale_axes.set(
        yscale="log",
        xlabel="step $k$",
        ylabel="loss scale $S$ after the step",
        title=f"dynamic loss scale, growth interval {growth_interval}",
    )
    scale_axes.legend()
    save(
        fig,
        out / "training.png",
        caption="Left: training loss of the digits classifier in float32, bfloat16 "
        "autocast, pure bfloat16 weights, and float16 autocast with the loss scaler, "
        "from the same weights on the same batches. Right: the float16 run's loss "
        "scale, doubled after every growth interval of good steps and halved at each "
        "overflow (crosses, where the step was skipped).",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train the digits classifier in four precisions, measure fp16 underflow, save the
    figures."""
    parser = argparse.ArgumentParser(
        description="Mixed precision on the digits: bfloat16, float16, a loss scaler.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--steps", type=integer(at_least=1), default=600, help="training steps per run"
    )
    parser.add_argument(
        "--batch-size", type=integer(at_least=1), default=64, help="mini-batch size"
    )
    parser.add_argument(
        "--lr", type=number(above=0), default=0.01, help="SGD learning rate"
    )
    parser.add_argument(
        "--growth-interval",
        type=integer(at_least=1),
        default=50,
        help="good steps before the loss scaler doubles its scale",
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to run on",
    )
    parser.add_argument(
        "--out", default="out/mixed_precision", help="folder for the figures"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_digits(args.device, args.seed)
    metrics = {}

    runs = {}
    for mode in tqdm(MODES, desc="precisions"):
        runs[mode] = train(
            mode,
            data,
            args.steps,
            args.batch_size,
            args.lr,
            args.growth_interval,
            args.seed,
        )
        final_loss = float(np.mean(runs[mode]["losses"][-50:]))
        tqdm.write(
            f"{mode:17s} test accuracy {runs[mode]['accuracy']:.4f}, "
            f"final training loss {final_loss:.4f}"
        )
        metrics[f"{mode} accuracy"] = runs[mode]["accuracy"]
        metrics[f"{mode} final loss"] = final_loss
    scaled = runs["float16 + scaler"]
    print(
        f"loss scale: {len(scaled['skipped'])} skipped steps, "
        f"final scale {scaled['scales'][-1]:g}"
    )
    metrics["skipped steps"] = len(scaled["skipped"])

    trained = runs["float32"]["model"]
    x_test, y_test = data[2], data[3]
    for loss_scale in (1.0, 2.0**10):
        lost = fp16_gradient_loss(trained, x_test, y_test, loss_scale)
        print(f"fp16 backward, loss scale {loss_scale:g}: {lost:.1%} of gradients lost")
        metrics[f"fp16 lost at scale {loss_scale:g}"] = lost
    bytes32 = saved_activation_bytes(trained, x_test, None)
    bytes16 = saved_activation_bytes(trained, x_test, torch.bfloat16)
    print(
        f"saved for backward: {bytes32 / 1e6:.2f} MB float32, "
        f"{bytes16 / 1e6:.2f} MB bfloat16 autocast ({bytes16 / bytes32:.2f}×)"
    )
    metrics["saved bytes ratio"] = bytes16 / bytes32

    plot_gradients(trained, x_test, y_test, out)
    plot_training(runs, args.growth_interval, out)
    return metrics


if __name__ == "__main__":
    main()

# ## Exercises
#
# 1. Run `fp16_gradient_loss` on the trained model for every loss scale $2^k$,
#    $k = 0, \dots, 24$, and plot the lost fraction and whether any gradient overflowed.
#    How wide is the window of safe scales, in binades, and how does it compare with
#    the width of the histogram in `gradient_range.png`?
# 2. Train in `"bfloat16 weights"` mode with Adam instead of SGD. Adam's update is about
#    $\eta$ in size whatever the gradient: for which $\eta$ does it survive bfloat16's
#    rounding at the weights' typical magnitude, and does the accuracy agree?
# 3. Change `LossScaler.update` to reset `good_steps` only on an overflow, not on a
#    growth. Which step of the scripted sequence in the test first tells the two apart?
# 4. Add *stochastic rounding* to the `"bfloat16 weights"` mode: after each step, round
#    every weight up or down to a neighbouring bfloat16 number with probabilities that
#    make the rounding unbiased. Does it recover float32's accuracy without a master
#    copy?
