"""Verified against single-process torch.optim.Adam training on the global batch
(float64: the losses at every step and the parameters after every run to 1e-12, on both
ranks of a real 2-process gloo run), against DistributedDataParallel,
ZeroRedundancyOptimizer and fully_shard in the same run, and against plain autograd
gradients for the wrapper's hooks and buckets.

The 2-process run is launched once for the module, by the demo itself (two worker
processes with the environment torchrun sets). The in-process tests use a 1-rank gloo
group, where the all-reduce is the identity and the hook, bucket and copy-back
machinery is checked on its own.
"""

import functools

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from annotated.systems.data_parallel import (
    METHODS,
    DataParallel,
    ShardedOptimizer,
    assign_buckets,
    digits_tensors,
    example,
    global_batches,
    launch,
    main,
    make_model,
    partition_parameters,
    worker,
    parse,
)

FLAGS = dict(steps=6, batch_size=16, hidden=32, lr=1e-2, bucket_kb=8, seed=3)
X_TRAIN, Y_TRAIN, _, _ = digits_tensors()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The demo's real 2-rank run, shortened: its metrics, results and folder."""
    out = tmp_path_factory.mktemp("data_parallel")
    argv = [f"--{name.replace('_', '-')}={value}" for name, value in FLAGS.items()]
    metrics = main(argv + ["--out", str(out)])
    results = torch.load(out / "results.pt", weights_only=False)
    return metrics, results, out


@pytest.fixture(scope="module")
def one_rank_group():
    """A 1-rank gloo group inside the test process: collectives run, and are
    identities."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    torch.set_num_threads(threads)


@functools.cache
def reference_training(world_size: int = 2):
    """One process, plain Adam, each step on the union of what DistributedSampler gives
    every rank: built here from the sampler, not from the lesson's helpers."""
    model = make_model(FLAGS["hidden"], seed=FLAGS["seed"])
    optimizer = torch.optim.Adam(model.parameters(), lr=FLAGS["lr"])
    per_rank = []
    for rank in range(world_size):
        sampler = DistributedSampler(
            range(len(X_TRAIN)), world_size, rank, shuffle=True, seed=FLAGS["seed"]
        )
        sampler.set_epoch(0)
        per_rank.append(list(sampler))
    losses = []
    size = FLAGS["batch_size"]
    for step in range(FLAGS["steps"]):
        index = torch.tensor(
            [i for rank in per_rank for i in rank[step * size : (step + 1) * size]]
        )
        loss = F.cross_entropy(model(X_TRAIN[index]), Y_TRAIN[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model.state_dict(), torch.tensor(losses, dtype=torch.float64), optimizer


# --------------------------------------------------------------------------------------
# The 2-process run.


@pytest.mark.parametrize("method", METHODS + ("checkpoint",))
def test_every_method_matches_single_process_training(run, method):
    _, results, _ = run
    parameters, losses, _ = reference_training()
    ours = results[method]
    assert ours["parameters"].keys() == parameters.keys()
    for name in parameters:
        torch.testing.assert_close(
            ours["parameters"][name], parameters[name], rtol=0, atol=1e-12
        )
    torch.testing.assert_close(ours["loss"], losses, rtol=1e-12, atol=0)
    assert ours["rank_spread"] <= 1e-15  # both ranks hold the same parameters


def test_training_moved_the_parameters(run):
    """The comparison is sharp only if the steps change something."""
    _, results, _ = run
    start = make_model(FLAGS["hidden"], seed=FLAGS["seed"]).state_dict()
    moved = results["ours"]["parameters"]
    assert all((moved[name] - start[name]).abs().max() > 1e-3 for name in start)


def test_zero_shards_adam_state_like_zero_redundancy_optimizer(run):
    _, results, _ = run
    _, _, optimizer = reference_training()
    full = sum(
        t.numel() * t.element_size()
        for state in optimizer.state.values()
        for t in state.values()
    )
    replicated = results["ours"]["state_bytes"]
    ours, torchs = (
        results["ours + zero-1"]["state_bytes"],
        results["ddp + ZeroRedundancyOptimizer"]["state_bytes"],
    )
    assert replicated == [full, full]
    assert sum(ours) == full and max(ours) < 0.7 * full  # each rank holds a share
    assert ours == torchs  # the same greedy partition as torch's
    assert max(results["fsdp"]["state_bytes"]) < 0.7 * full


def test_demo_reports_its_metrics_and_figures(run):
    metrics, _, out = run
    assert metrics["max parameter difference"] < 1e-12
    assert metrics["max rank spread"] == 0.0
    assert 0.1 < metrics["test accuracy"] <= 1.0
    for name in ("loss.png", "optimizer_state.png"):
        assert (out / name).stat().st_size > 0


def test_lessons_global_batches_are_the_ranks_batches_joined():
    ours = global_batches(len(X_TRAIN), 2, 16, seed=3)
    samplers = [
        DistributedSampler(range(len(X_TRAIN)), 2, rank, shuffle=True, seed=3)
        for rank in range(2)
    ]
    per_epoch = (len(X_TRAIN) + 1) // 2
    steps_per_epoch = -(-per_epoch // 16)
    for epoch in range(2):
        for sampler in samplers:
            sampler.set_epoch(epoch)
        shards = [list(sampler) for sampler in samplers]
        for step in range(steps_per_epoch):
            batch = next(ours)
            expected = [i for s in shards for i in s[step * 16 : (step + 1) * 16]]
            assert batch.tolist() == expected
    assert len(set(shards[0]) | set(shards[1])) == len(X_TRAIN)


# --------------------------------------------------------------------------------------
# The wrapper's machinery, in one process.


def test_wrapper_without_process_group_raises():
    assert not dist.is_initialized()  # runs before the 1-rank group below exists
    with pytest.raises(RuntimeError, match=r"no process group"):
        DataParallel(branchy_model())


def branchy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3), nn.Tanh(), nn.Linear(3, 2)
    ).double()


@pytest.mark.parametrize("bucket_bytes", [1, 100, 300, 10**6])
def test_wrapper_leaves_the_plain_gradients(one_rank_group, bucket_bytes):
    model, reference = branchy_model(), branchy_model()
    wrapped = DataParallel(model, bucket_bytes)
    x = torch.randn(11, 5, dtype=torch.float64)
    for _ in range(2):  # a second backward must reset the buckets
        for net in (wrapped, reference):
            net.zero_grad(set_to_none=True)
            (net(x) ** 2).sum().backward()
        for ours, theirs in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(ours.grad, theirs.grad, rtol=0, atol=0)


def test_buckets_fill_in_reverse_order_under_the_cap(one_rank_group):
    wrapped = DataParallel(branchy_model(), bucket_bytes=200)
    sizes = [p.numel() * 8 for p in wrapped.params]
    assert [p.shape for p in wrapped.params][0] == (2,)  # the last bias comes first
    for bucket in wrapped.buckets:
        assert len(bucket) == 1 or sum(sizes[i] for i in bucket) <= 200
    assert sum(wrapped.buckets, []) == list(range(len(sizes)))


def test_assign_buckets_and_partition_by_hand():
    assert assign_buckets([40, 40, 40, 100, 10], 100) == [[0, 1], [2], [3], [4]]
    assert assign_buckets([500], 100) == [[0]]
    # "at most" the cap: a bucket may be filled to exactly bucket_bytes
    assert assign_buckets([60, 40, 50, 50], 100) == [[0, 1], [2, 3]]
    assert partition_parameters([10, 50, 30, 20], 2) == [0, 0, 1, 1]
    assert partition_parameters([7], 1) == [0]


class WithUnused(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(3, 2).double()
        self.unused = nn.Linear(3, 2).double()

    def forward(self, x):
        return self.used(x)


def test_unused_parameter_raises_naming_it(one_rank_group):
    wrapped = DataParallel(WithUnused(), bucket_bytes=1)
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"\['unused.bias'\] got no gradient"):
        wrapped(x).sum().backward()
    wrapped.module.unused.requires_grad_(False)  # the wrapper was built with it
    with pytest.raises(RuntimeError, match=r"got no gradient"):
        wrapped(x).sum().backward()


def test_sharded_optimizer_matches_adam_on_one_rank(one_rank_group):
    model, reference = branchy_model(), branchy_model()
    ours = ShardedOptimizer(model.parameters(), lr=0.1)
    theirs = torch.optim.Adam(reference.parameters(), lr=0.1)
    x = torch.randn(4, 5, dtype=torch.float64)
    for _ in range(3):
        for net, optimizer in ((model, ours), (reference, theirs)):
            optimizer.zero_grad()
            net(x).square().sum().backward()
            optimizer.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# --------------------------------------------------------------------------------------
# Bad input.


def test_worker_without_distributed_environment_says_how_to_launch(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match=r"RANK, WORLD_SIZE.*torchrun --nproc-per"):
        worker(parse(["--worker"]))


def test_a_gpu_device_is_a_usage_error(monkeypatch, capsys):
    # As on a GPU machine, where `--device cuda` gets past argparse's check that the
    # device exists to the lesson's own: gloo runs on the CPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(SystemExit):
        main(["--device", "cuda"])
    assert (
        "--device must be cpu (the gloo backend), got cuda" in capsys.readouterr().err
    )


def test_bad_bucket_size_raises(one_rank_group):
    with pytest.raises(ValueError, match=r"DataParallel: bucket_bytes must be >= 1"):
        DataParallel(branchy_model(), bucket_bytes=0)
    with pytest.raises(TypeError, match=r"bucket_bytes must be an int, got float"):
        DataParallel(branchy_model(), bucket_bytes=2.5)


def test_sharded_optimizer_needs_a_tensor_for_every_rank(one_rank_group):
    with pytest.raises(ValueError, match="0 parameter tensors cannot give each of 1"):
        ShardedOptimizer([], lr=0.1)


def test_a_failing_worker_is_named_with_its_output():
    """Rank 0 prints to the terminal; another rank's output comes in the error."""
    failed = r"(?s)a worker failed\nrank 0 exited with 2\n\(its output is above\)\n"
    with pytest.raises(RuntimeError, match=failed + r"rank 1 exited with 2\n.*--steps"):
        launch(["--steps", "many"], 2)


def test_example_runs():
    model, (x,) = example()
    assert model(x).shape == (16, 10)


# --------------------------------------------------------------------------------------
# Benchmarks: forward, backward and gradient synchronisation of the demo's MLP on one
# rank's batch of 32, 1-rank gloo group, 64 KiB buckets.


def step_with(wrap):
    model = make_model(128, seed=0)
    wrapped = wrap(model)
    x, y = X_TRAIN[:32], Y_TRAIN[:32]

    def step():
        wrapped.zero_grad(set_to_none=True)
        F.cross_entropy(wrapped(x), y).backward()

    return step


@pytest.mark.benchmark(group="backward + gradient all-reduce, 1 rank")
def test_bench_backward_ours(benchmark, one_rank_group):
    benchmark.extra_info["label"] = "our DataParallel"
    benchmark(step_with(lambda m: DataParallel(m, 64 * 1024)))


@pytest.mark.benchmark(group="backward + gradient all-reduce, 1 rank")
def test_bench_backward_ddp(benchmark, one_rank_group):
    benchmark.extra_info["label"] = "DistributedDataParallel"
    benchmark.extra_info["baseline"] = True
    benchmark(step_with(lambda m: DistributedDataParallel(m, bucket_cap_mb=64 / 1024)))
