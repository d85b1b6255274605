r"""
---
title: Deployment with ONNX Runtime
summary: >-
  Fold batch norm into convolutions by hand, export a trained digits CNN to ONNX, run it
  in ONNX Runtime at each graph optimisation level and as dynamic int8, and compare
  latency with eager PyTorch.
time: 10 s
expected:
  metric: accuracy eager
  short: ["--epochs", "3", "--width", "8", "--repeats", "3", "--device", "cpu"]
references:
  - key: ioffe2015batch
    authors: [Sergey Ioffe, Christian Szegedy]
    title: >-
      Batch Normalization: Accelerating Deep Network Training by Reducing Internal
      Covariate Shift
    year: 2015
    venue: ICML 2015
    arxiv: "1502.03167"
  - key: jacob2018quantization
    authors:
      - Benoit Jacob
      - Skirmantas Kligys
      - Bo Chen
      - Menglong Zhu
      - Matthew Tang
      - Andrew Howard
      - Hartwig Adam
      - Dmitry Kalenichenko
    title: >-
      Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
      Inference
    year: 2018
    venue: CVPR 2018
    arxiv: "1712.05877"
  - key: onnxruntime
    authors: [ONNX Runtime developers]
    title: ONNX Runtime
    year: 2021
    venue: Software, Microsoft
    url: https://onnxruntime.ai/
  - key: tensorrt
    authors: [NVIDIA]
    title: NVIDIA TensorRT Developer Guide
    year: 2024
    venue: NVIDIA documentation
    url: https://docs.nvidia.com/deeplearning/tensorrt/
worksheet:
  - region: fold_conv_bn
    hint: >-
      Check the pair; compute the per-channel scale gamma / sqrt(running_var + eps);
      build a new Conv2d with the same geometry and a bias, whose weight is the old
      filter times its channel's scale and whose bias is (old bias, or zero, minus
      running_mean) times the scale plus beta; return it in eval mode.
    tests:
      - test_fold_matches_torch_fusion_and_eager_float64
      - test_fold_with_extreme_statistics
  - region: fold_model
    hint: >-
      Walk the Sequential's layers; where a Conv2d is directly followed by a
      BatchNorm2d, append their fold and skip both, else keep the layer; return a new
      Sequential in eval mode.
    tests: [test_fold_model_removes_every_bn_and_keeps_the_function]
---

A trained network is a fixed function. Training needed autograd, mutable batch
statistics and Python deciding what to run next; serving needs none of them. Deployment
throws that machinery away in three steps, each checked here against the model it
replaces:

1. **Fold what training left behind.** A batch-norm layer [@ioffe2015batch] in eval mode
   is a per-channel affine map, and an affine map after a convolution is another
   convolution. We fold it by hand and check the outputs agree to float64 round-off.
2. **Export a graph.** `torch.onnx.export` records the forward pass as an ONNX graph: a
   file of typed operators and weights that any runtime can load. ONNX Runtime
   [@onnxruntime] loads it, rewrites it (constant folding, operator fusion, layout
   changes) at one of its *graph optimisation levels*, and runs it from C++ with no
   Python between operators.
3. **Shrink the arithmetic.** ONNX Runtime's *dynamic* 8-bit ("int8") quantisation
   stores the weights as 8-bit integers (here uint8 with a zero point) and quantises
   each activation tensor at run time from its own min and max
   [@jacob2018quantization]: no calibration data needed.

The demo trains a small CNN on the 8×8 digits, exports it, and reports accuracy and
latency for eager PyTorch, ONNX Runtime fp32 and ONNX Runtime int8 at batch 1 and 32.
On a GPU the same ONNX file goes to TensorRT [@tensorrt]; the last section shows how,
in code that runs only where TensorRT and a GPU exist.
"""

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
import torch.nn.functional as F
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch import nn
from tqdm import tqdm

from annotated.data import digits, integer, torch_device
from annotated.figures import figure, save

# ## The model
#
# Two blocks of convolution, batch norm, ReLU and 2×2 max-pooling take an 8×8 digit to
# 32 channels of 2×2, and a linear layer reads the ten logits. Each `Conv2d` is
# followed by its `BatchNorm2d` in the same `nn.Sequential`, which is what the folding
# pass below looks for.


def make_cnn(width: int = 16) -> nn.Sequential:
    """A digits CNN: `[batch, 1, 8, 8]` images to `[batch, 10]` logits."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),  # [batch, width, 8, 8]
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.MaxPool2d(2),  # [batch, width, 4, 4]
        nn.Conv2d(width, 2 * width, 3, padding=1),  # [batch, 2 width, 4, 4]
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.MaxPool2d(2),  # [batch, 2 width, 2, 2]
        nn.Flatten(),  # [batch, 8 width]
        nn.Linear(8 * width, 10),  # [batch, 10]
    )


def train(model: nn.Module, x, y, epochs: int, batch: int = 64, seed: int = 0):
    """Adam on cross-entropy; `x` is `[n, 1, 8, 8]`, `y` is `[n]`."""
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in tqdm(range(epochs), desc="training", leave=False):
        for index in torch.randperm(len(x), generator=generator).split(batch):
            optimizer.zero_grad()
            F.cross_entropy(model(x[index]), y[index]).backward()
            optimizer.step()
    return model.eval()


# ## Folding batch norm into the convolution
#
# In eval mode batch norm uses the running mean $\mu_c$ and variance $\sigma_c^2$ it
# collected during training, so for output channel $c$ of a convolution with weight
# $W_c$ and bias $b_c$ it computes
#
# $$
# \begin{aligned}
# y_c &= \gamma_c\,\frac{W_c * x + b_c - \mu_c}{\sqrt{\sigma_c^2+\epsilon}} + \beta_c \\
#     &= (s_c W_c) * x + s_c (b_c - \mu_c) + \beta_c,
# \end{aligned}
# $$
#
# with $s_c = \gamma_c / \sqrt{\sigma_c^2 + \epsilon}$. That is one convolution with
# weight $W'_c = s_c W_c$ and bias $b'_c = s_c(b_c - \mu_c) + \beta_c$: the batch-norm
# layer disappears, along with one full read and write of the activation tensor.
# PyTorch ships the same algebra as `fuse_conv_bn_weights` in
# `torch/nn/utils/fusion.py`, which the test uses as the reference; ONNX Runtime does
# it again inside the graph (`ConvBNFusion`, in
# `onnxruntime/core/optimizer/conv_bn_fusion.cc`) at its basic level.
#
# The fold is only valid in eval mode: in training mode batch norm normalises with the
# statistics of the current batch, which no fixed weight can reproduce. So we refuse
# a batch-norm layer that is still training.


def check_fold_pair(conv: nn.Module, bn: nn.Module) -> None:
    """Raise unless `conv` is a `Conv2d` and `bn` an eval-mode `BatchNorm2d` over its
    output channels, with running statistics."""
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"fold_conv_bn: conv must be nn.Conv2d, got {type(conv)}")
    if not isinstance(bn, nn.BatchNorm2d):
        raise TypeError(f"fold_conv_bn: bn must be nn.BatchNorm2d, got {type(bn)}")
    if bn.num_features != conv.out_channels:
        raise ValueError(
            f"fold_conv_bn: bn has {bn.num_features} features but conv has "
            f"{conv.out_channels} output channels; they must be equal"
        )
    if bn.training or bn.running_mean is None:
        raise ValueError(
            "fold_conv_bn: bn must be in eval mode with running statistics "
            "(call model.eval() first)"
        )


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new `Conv2d` equal to `bn(conv(x))` in eval mode; the inputs are untouched."""
    check_fold_pair(conv, bn)
    # A BN built with affine=False has no gamma and beta: they are 1 and 0.
    ones, zeros = torch.ones_like(bn.running_var), torch.zeros_like(bn.running_mean)
    gamma = bn.weight if bn.affine else ones  # [out]
    beta = bn.bias if bn.affine else zeros  # [out]
    scale = gamma / torch.sqrt(bn.running_var + bn.eps)  # [out]
    bias = conv.bias if conv.bias is not None else zeros
    folded = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(conv.weight)
    with torch.no_grad():
        # Scale each output channel's filter: [out, in/groups, kh, kw] * [out, 1, 1, 1]
        folded.weight.copy_(conv.weight * scale[:, None, None, None])
        folded.bias.copy_((bias - bn.running_mean) * scale + beta)  # [out]
    return folded.eval()


# A model is folded by walking its `Sequential` and replacing every `Conv2d` that is
# directly followed by a `BatchNorm2d` with their fold. The result has two layers fewer
# per block and the same function.


def fold_model(model: nn.Sequential) -> nn.Sequential:
    """A copy of `model` with each Conv2d → BatchNorm2d pair folded into one Conv2d."""
    layers, i = [], 0
    modules = list(model)
    while i < len(modules):
        layer = modules[i]
        following = modules[i + 1] if i + 1 < len(modules) else None
        if isinstance(layer, nn.Conv2d) and isinstance(following, nn.BatchNorm2d):
            layers.append(fold_conv_bn(layer, following))
            i += 2
        else:
            layers.append(layer)
            i += 1
    return nn.Sequential(*layers).eval()


# ## Export to ONNX
#
# `torch.onnx.export` runs the model once on an example input and records the
# operators it calls. Marking axis 0 as `batch` in `dynamic_axes` makes the batch size
# symbolic, so one file serves batch 1 and batch 32. We choose the TorchScript exporter
# (`dynamo=False`): on a plain `Sequential` it writes the same graph as the newer
# `torch.export`-based one, and faster; it warns that it is the older path, which we
# know. Export of each ATen operator is a *symbolic function* registered per opset in
# `torch/onnx/_internal/torchscript_exporter/symbolic_opset9.py` and its siblings
# (`conv2d` → `Conv`, `max_pool2d` → `MaxPool`, ...).
#
# The exporter already folds batch norm itself: in eval mode its peephole pass
# (`fuseConvBatchNorm` in `torch/csrc/jit/passes/onnx/eval_peephole.cpp`) applies the
# algebra above, so the exported graph holds 8 nodes (`Conv`, `Relu`, `MaxPool` twice,
# `Flatten`, `Gemm`) and no `BatchNormalization`. The runtime's optimiser then works
# on what is left.


def export_onnx(model: nn.Module, path: Path) -> Path:
    """Write `model` (eval mode, `[batch, 1, 8, 8]` float32 input) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "You are using the legacy")
        warnings.filterwarnings("ignore", "The feature will be removed")
        torch.onnx.export(
            model.eval(),
            (torch.zeros(1, 1, 8, 8),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )
    onnx.checker.check_model(onnx.load(str(path)))
    return path


# ## Running it in ONNX Runtime, at each optimisation level
#
# An `InferenceSession` loads the graph, partitions it among execution providers (here
# only the CPU one), and rewrites it once before the first run. The level decides how
# far it rewrites [@onnxruntime]:
#
# - `disable`: run the graph as exported;
# - `basic`: provider-independent rewrites that keep the semantics exactly: constant
#   folding, removing redundant nodes, and fusions such as Conv + BatchNormalization
#   and Conv + Add;
# - `extended`: fusions that only some providers implement, such as Conv + ReLU into
#   one `FusedConv` on the CPU, GELU and attention fusions;
# - `all`: adds layout optimisations, e.g. converting convolutions to the NCHWc
#   blocked layout that the CPU kernels (MLAS) vectorise best. (Recent versions also
#   name a `layout` level for these alone, `ORT_ENABLE_LAYOUT`; we use the other four.)
#
# The transformers are listed by level in
# `onnxruntime/core/optimizer/graph_transformer_utils.cc`,
# `GenerateTransformers`. Setting `optimized_model_filepath` makes the session write
# the rewritten graph to disk, which is how the demo counts the nodes each level
# leaves: 8 at `disable` and `basic` (the exporter left nothing basic to do), 6 at
# `extended` (both Conv + Relu pairs fused), and 7 at `all`, where the NCHWc layout
# adds reorder nodes at the graph's edges but runs faster.

LEVELS = {
    "disable": onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def make_session(
    path: Path, level: str = "all", threads: int = 1, save_to: Path | None = None
) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session for the model at `path`, optimised at `level`."""
    if level not in LEVELS:
        raise ValueError(
            f"make_session: level must be one of {list(LEVELS)}, got {level!r}"
        )
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if save_to is not None:
        options.optimized_model_filepath = str(save_to)
    return onnxruntime.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"]
    )


def run_session(
    session: onnxruntime.InferenceSession, images: np.ndarray
) -> np.ndarray:
    """Logits `[batch, 10]` for float images `[batch, 1, 8, 8]`."""
    if not isinstance(images, np.ndarray) or images.shape[1:] != (1, 8, 8):
        raise ValueError(
            "run_session: images must be a NumPy array of shape [batch, 1, 8, 8], got "
            f"{getattr(images, 'shape', type(images))}"
        )
    return session.run(None, {"images": images.astype(np.float32)})[0]


# ## Dynamic int8 quantisation
#
# `quantize_dynamic` rewrites the graph offline: every weight of a `Conv`, `MatMul` or
# `Gemm` (which it first splits into `MatMul` and `Add`) becomes uint8, as
# `QuantType.QUInt8` asks, with one scale and one zero point per tensor, and in front
# of each such node it inserts `DynamicQuantizeLinear`, which at run time finds the
# activation's range $[m, M]$ and quantises it to uint8 with
#
# $$
# \begin{aligned}
# s &= \frac{\max(M, 0) - \min(m, 0)}{255}, \\
# z &= \operatorname{round}\!\left(-\min(m, 0)/s\right).
# \end{aligned}
# $$
#
# The integer product runs in `ConvInteger` or `MatMulInteger` with int32
# accumulation, and a multiply by the two scales returns to float
# [@jacob2018quantization]. The weights shrink 4×; this small file, whose graph and
# scales are a larger share, by about 2.4×. Whether it gets *faster*
# depends on the model: the per-call range scan and the dequantise are overhead that a
# small convolution does not earn back, as the demo shows; the win is on large
# matrix products (transformers, big linear layers).


def quantize_int8(path: Path, out_path: Path) -> Path:
    """Write a dynamically int8-quantised copy of the ONNX model at `path`."""
    out_path = Path(out_path)
    quantize_dynamic(str(path), str(out_path), weight_type=QuantType.QUInt8)
    return out_path


# ## TensorRT: the GPU path
#
# On an NVIDIA GPU the same ONNX file goes to TensorRT [@tensorrt]. Its ONNX parser
# (`onnx-tensorrt`, `ModelImporter::parse`) builds a network definition; the *builder*
# then fuses layers (Conv + bias + ReLU becomes one kernel), chooses fp16 or int8 where
# allowed, and *times* candidate kernels for every layer on the actual GPU, keeping the
# fastest. The result is a serialised *engine*, specific to that GPU model and
# TensorRT version. A dynamic batch axis needs an *optimisation profile* giving the
# minimum, typical and maximum shapes the engine must accept.
#
# The function below builds such an engine. It imports TensorRT only when called, so
# this lesson runs on machines without it; the test runs it only where TensorRT and a
# GPU exist and is skipped elsewhere.


def build_tensorrt_engine(path: Path, max_batch: int = 32, fp16: bool = True) -> bytes:
    """A serialised TensorRT engine for the ONNX model at `path` (needs a GPU)."""
    try:
        import tensorrt as trt
    except ImportError as error:
        raise RuntimeError(
            "build_tensorrt_engine: TensorRT is not installed"
        ) from error
    if not torch.cuda.is_available():
        raise RuntimeError("build_tensorrt_engine: TensorRT needs a CUDA GPU")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(path).read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"build_tensorrt_engine: parse failed: {errors}")
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(
        "images", (1, 1, 8, 8), (max_batch, 1, 8, 8), (max_batch, 1, 8, 8)
    )
    config.add_optimization_profile(profile)
    return bytes(builder.build_serialized_network(network, config))


def run_tensorrt(engine_bytes: bytes, images: torch.Tensor) -> torch.Tensor:
    """Run a serialised engine on images `[batch, 1, 8, 8]`; logits `[batch, 10]`."""
    import tensorrt as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    context = engine.create_execution_context()
    images = images.float().contiguous().cuda()
    logits = torch.empty(len(images), 10, device="cuda")
    context.set_input_shape("images", tuple(images.shape))
    context.set_tensor_address("images", images.data_ptr())
    context.set_tensor_address("logits", logits.data_ptr())
    context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    return logits


# ## Measuring latency
#
# The demo times each engine by the median of many calls after a few warm-up calls
# (the first calls allocate buffers and, in ONNX Runtime, pick kernels). The lesson's
# tests measure the same pairs with pytest-benchmark.


def median_latency(fn, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` calls, after 5 warm-up calls."""
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


# ## The example
#
# The page traces the CNN on a batch of four digits.


def example():
    """The digits CNN, untrained, in eval mode, on four random 8×8 images."""
    torch.manual_seed(0)
    model = make_cnn(8).eval()
    return model, (torch.rand(4, 1, 8, 8),)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description="Export a digits CNN to ONNX and compare eager torch with "
        "ONNX Runtime fp32 and int8.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--width", type=integer(at_least=1), default=16, help="first conv's channels"
    )
    parser.add_argument(
        "--epochs", type=integer(at_least=1), default=15, help="training epochs"
    )
    parser.add_argument(
        "--repeats", type=integer(at_least=1), default=300, help="timed calls per case"
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="device for training and for the eager latency (ONNX Runtime uses CPU)",
    )
    parser.add_argument("--out", default="out/deployment", help="folder for outputs")
    args = parser.parse_args(argv)

    # Latency at batch 1 is dominated by per-operator overhead; one thread each keeps
    # the comparison fair and the numbers steady on a shared machine.
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = digits(seed=args.seed)
    images = torch.tensor(x_train, dtype=torch.float32).view(-1, 1, 8, 8)
    labels = torch.tensor(y_train)
    test_images = x_test.astype(np.float32).reshape(-1, 1, 8, 8)  # [n_test, 1, 8, 8]
    device = torch.device(args.device)
    model = make_cnn(args.width).to(device)
    train(model, images.to(device), labels.to(device), args.epochs, seed=args.seed)
    model = model.cpu().eval()
    folded = fold_model(model)

    out = Path(args.out)
    fp32_path = export_onnx(model, out / "cnn_fp32.onnx")
    int8_path = quantize_int8(fp32_path, out / "cnn_int8.onnx")
    node_counts = {}
    for level in LEVELS:
        saved = out / f"cnn_{level}.onnx"
        make_session(fp32_path, level, save_to=saved)
        node_counts[level] = len(onnx.load(str(saved)).graph.node)
    sessions = {
        "ORT fp32": make_session(fp32_path, "all"),
        "ORT int8": make_session(int8_path, "all"),
    }

    with torch.no_grad():
        eager_logits = model(torch.from_numpy(test_images)).numpy()
        folded_logits = folded(torch.from_numpy(test_images)).numpy()
    results = {
        "accuracy eager": accuracy(eager_logits, y_test),
        "accuracy folded": accuracy(folded_logits, y_test),
        "fold max abs diff": float(np.abs(folded_logits - eager_logits).max()),
    }
    for name, session in sessions.items():
        logits = run_session(session, test_images)
        results[f"accuracy {name}"] = accuracy(logits, y_test)
    results["size ratio fp32/int8"] = (
        fp32_path.stat().st_size / int8_path.stat().st_size
    )

    eager_device = model.to(device)
    latencies = {}
    cases = [(name, b) for b in (1, 32) for name in ("eager", *sessions)]
    for name, batch in tqdm(cases, desc="latency", leave=False):
        x = test_images[:batch]
        if name == "eager":
            xt = torch.from_numpy(x).to(device)

            def call(xt=xt):
                with torch.inference_mode():
                    eager_device(xt)
                if device.type == "cuda":
                    torch.cuda.synchronize()
        else:

            def call(session=sessions[name], x=x):
                run_session(session, x)

        latencies[name, batch] = median_latency(call, args.repeats)
    for batch in (1, 32):
        for name in sessions:
            ratio = latencies["eager", batch] / latencies[name, batch]
            results[f"speedup {name} batch {batch}"] = ratio

    fig, (left, right) = figure(panels=2)
    names = ["eager", *sessions]
    for offset, batch in zip((-0.2, 0.2), (1, 32)):
        values = [latencies[n, batch] * 1e6 / batch for n in names]
        left.bar(np.arange(3) + offset, values, width=0.4, label=f"batch {batch}")
    left.set_xticks(np.arange(3), ["eager\ntorch", "ORT\nfp32", "ORT\nint8"])
    fastest = min(latencies[key] * 1e6 / key[1] for key in latencies)
    left.set_yscale("log")  # the latencies span almost two decades
    left.set_ylim(bottom=10 ** np.floor(np.log10(fastest)))  # the bars' foot
    left.set_ylabel("median latency per image (µs)")
    left.legend()
    right.bar(range(4), list(node_counts.values()), color="tab:gray")
    right.set_xticks(range(4), list(node_counts))
    right.set_ylabel("nodes after optimisation")
    right.set_xlabel("ONNX Runtime graph optimisation level")
    save(
        fig,
        out / "latency.png",
        caption="Left: median latency per image of the digits CNN in eager PyTorch and "
        "ONNX Runtime (fp32 and dynamic int8), at batch 1 and 32, one thread. Right: "
        "the nodes left in the graph at each ONNX Runtime optimisation level.",
    )

    print("nodes per level   " + "  ".join(f"{k} {v}" for k, v in node_counts.items()))
    for key, value in results.items():
        print(f"{key:28s} {value:.4g}")
    for (name, batch), seconds in latencies.items():
        print(f"latency {name:9s} batch {batch:2d}  {seconds * 1e6:8.1f} µs")
    results.update({f"nodes {k}": float(v) for k, v in node_counts.items()})
    return results


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Fold a `Linear` followed by `BatchNorm1d` the same way. Which axis of the weight
#    does the scale multiply?
# 2. Quantise with `per_channel=True`, and with `op_types_to_quantize=["MatMul"]`
#    only (not `["Gemm"]`: the quantiser first splits the classifier's `Gemm` into
#    `MatMul` and `Add`, so `["Gemm"]` quantises nothing; `["MatMul"]` turns the
#    linear layer into a `MatMulInteger`). How do the accuracy, file size and batch-32
#    latency change, and why might leaving the convolutions in fp32 be faster?
# 3. Save the graph optimised at `all` and open it in Netron. The exporter already
#    folded the batch norms; which nodes replaced each `Conv` + `Relu` pair of the
#    exported graph, and what do the nodes added at the graph's edges do?
# 4. Set `intra_op_num_threads` to 2 and compare batch 1 with batch 32: where does the
#    second thread help?
