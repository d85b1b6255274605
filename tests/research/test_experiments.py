"""Verified against MLflow's own store read back through MlflowClient: every metric
history, parameter and parent link equals what the runs returned (exactly), and the
model registered under a name loads back by alias with outputs identical to the
in-memory model's (torch.equal).

One embedded SQLite store is shared by the module, since opening a new one runs
MLflow's schema migrations; every test that writes checks the current directory stays
empty.
"""

import time
from types import SimpleNamespace

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
from mlflow.entities import Metric
from mlflow.models import get_model_info

from annotated.data import digits
from annotated.research.experiments import (
    best_run,
    evaluate,
    example,
    main,
    open_store,
    register,
    run_sweep,
    train_epoch,
)
from tools.literate.figures import short_band

LRS, WIDTHS, EPOCHS = [0.05, 0.5], [8, 16], 3


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A 2 × 2 sweep of three epochs in a fresh store, run from an empty directory."""
    folder = tmp_path_factory.mktemp("store")
    cwd = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        client, experiment_id, uri = open_store(folder / "mlflow")
        parent_id, results = run_sweep(
            experiment_id, LRS, WIDTHS, epochs=EPOCHS, batch_size=64
        )
        torch.set_num_threads(threads)
    return SimpleNamespace(
        folder=folder,
        cwd=cwd,
        client=client,
        experiment_id=experiment_id,
        uri=uri,
        parent_id=parent_id,
        results=results,
    )


def test_nothing_is_written_to_the_current_directory(sweep):
    assert list(sweep.cwd.iterdir()) == []
    assert sweep.uri == f"sqlite:///{sweep.folder / 'mlflow' / 'mlflow.db'}"
    experiment = sweep.client.get_experiment(sweep.experiment_id)
    assert experiment.artifact_location.startswith((sweep.folder / "mlflow").as_uri())


def test_metric_histories_read_back_exactly(sweep):
    assert len(sweep.results) == len(LRS) * len(WIDTHS)
    for result in sweep.results:
        for key, values in result.history.items():
            history = sweep.client.get_metric_history(result.run_id, key)
            history = sorted(history, key=lambda metric: metric.step)
            assert [metric.step for metric in history] == list(range(EPOCHS))
            assert [metric.value for metric in history] == values  # exact floats


def test_logged_final_metrics_are_the_returned_models_own(sweep):
    _, _, x_test, y_test = digits()
    x_test = torch.tensor(x_test, dtype=torch.float32)
    for result in sweep.results:
        loss, accuracy = evaluate(result.model, x_test, torch.tensor(y_test))
        assert loss == result.history["test_loss"][-1]
        assert accuracy == result.history["test_accuracy"][-1]


def test_training_loss_is_the_mean_over_examples_with_a_short_last_batch():
    # At learning rate 0 the model does not move, so the epoch's reported loss must be
    # the cross-entropy averaged over all 100 examples, the last batch of 4 weighing
    # 4/100 and not as much as a full batch of 32.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 10)).double()
    x, y = torch.randn(100, 64, dtype=torch.float64), torch.randint(0, 10, (100,))
    y[96:] = 0
    model[0].bias.data[0] = -5.0  # the last batch's loss is far from the others'
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    got = train_epoch(model, optimizer, x, y, 32, torch.Generator().manual_seed(1))
    want = torch.nn.functional.cross_entropy(model(x), y).item()
    assert got == pytest.approx(want, rel=1e-12)


def test_parameters_and_parent_links_round_trip(sweep):
    grid = [(lr, width) for lr in LRS for width in WIDTHS]
    for (lr, width), result in zip(grid, sweep.results):
        run = sweep.client.get_run(result.run_id)
        params = run.data.params
        assert (float(params["lr"]), int(params["width"])) == (lr, width)
        assert (result.lr, result.width) == (lr, width)
        assert int(params["epochs"]) == EPOCHS and int(params["batch_size"]) == 64
        assert run.data.tags["mlflow.parentRunId"] == sweep.parent_id
        assert run.info.experiment_id == sweep.experiment_id
    parent = sweep.client.get_run(sweep.parent_id)
    assert parent.data.params["widths"] == str(WIDTHS)
    best = max(r.history["test_accuracy"][-1] for r in sweep.results)
    assert parent.data.metrics["best_test_accuracy"] == best
    assert len(parent.inputs.dataset_inputs) == 1


def test_each_run_logged_its_figure_and_its_trained_model(sweep):
    x = torch.rand(7, 64)
    for result in sweep.results:
        names = [a.path for a in sweep.client.list_artifacts(result.run_id)]
        assert "learning_curves.png" in names
        loaded = mlflow.pytorch.load_model(result.model_uri)
        with torch.no_grad():
            assert torch.equal(loaded(x), result.model(x))
    info = get_model_info(sweep.results[0].model_uri)
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 64)
    assert info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 10)


def test_best_run_is_the_highest_final_accuracy_then_lowest_loss(sweep):
    best = best_run(sweep.client, sweep.experiment_id, sweep.parent_id)
    want = max(
        sweep.results,
        key=lambda r: (r.history["test_accuracy"][-1], -r.history["test_loss"][-1]),
    )
    assert best.info.run_id == want.run_id
    assert best.data.metrics["test_accuracy"] == want.history["test_accuracy"][-1]


def test_registered_model_loads_by_alias_with_identical_outputs(sweep):
    client, results = sweep.client, sweep.results
    best = best_run(client, sweep.experiment_id, sweep.parent_id)
    chosen = next(r for r in results if r.run_id == best.info.run_id)
    version = register(client, sweep.experiment_id, best, "test-mlp", "champion")
    assert int(version.version) == 1
    x_test = torch.tensor(digits()[2], dtype=torch.float32)
    with torch.no_grad():
        loaded = mlflow.pytorch.load_model("models:/test-mlp@champion")
        assert torch.equal(loaded(x_test), chosen.model(x_test))
        # Registering another run makes version 2 and moves the alias to it.
        other = next(r for r in results if r.run_id != chosen.run_id)
        register(
            client,
            sweep.experiment_id,
            client.get_run(other.run_id),
            "test-mlp",
            "champion",
        )
        alias = client.get_model_version_by_alias("test-mlp", "champion")
        assert int(alias.version) == 2
        moved = mlflow.pytorch.load_model("models:/test-mlp@champion")
        assert torch.equal(moved(x_test), other.model(x_test))
        first = mlflow.pytorch.load_model("models:/test-mlp/1")
        assert torch.equal(first(x_test), chosen.model(x_test))
    assert list(sweep.cwd.iterdir()) == []


def test_bad_arguments_are_named_and_nothing_is_written(sweep):
    before = len(sweep.client.search_runs([sweep.experiment_id]))
    with pytest.raises(ValueError, match="lrs must be a non-empty list"):
        run_sweep(sweep.experiment_id, [], WIDTHS)
    with pytest.raises(ValueError, match="lrs must be"):
        run_sweep(sweep.experiment_id, [0.1, -1.0], WIDTHS)
    with pytest.raises(ValueError, match="widths must be"):
        run_sweep(sweep.experiment_id, LRS, [8, 2.5])
    with pytest.raises(ValueError, match="epochs must be"):
        run_sweep(sweep.experiment_id, LRS, WIDTHS, epochs=0)
    with pytest.raises(ValueError, match="batch_size must be"):
        run_sweep(sweep.experiment_id, LRS, WIDTHS, batch_size=0)
    assert len(sweep.client.search_runs([sweep.experiment_id])) == before
    best = best_run(sweep.client, sweep.experiment_id, sweep.parent_id)
    with pytest.raises(ValueError, match="alias must be a word"):
        register(sweep.client, sweep.experiment_id, best, "bad-alias", "v2")
    with pytest.raises(ValueError, match="alias must be a word"):
        register(sweep.client, sweep.experiment_id, best, "bad-alias", "latest")
    with pytest.raises(ValueError, match="alias must be a word"):
        register(sweep.client, sweep.experiment_id, best, "bad-alias", "two words")
    with pytest.raises(TypeError, match="alias must be a str"):
        register(sweep.client, sweep.experiment_id, best, "bad-alias", 3)
    with pytest.raises(ValueError, match="name must be"):
        register(sweep.client, sweep.experiment_id, best, " ", "champion")
    parent = sweep.client.get_run(sweep.parent_id)  # the sweep's run logs no model
    with pytest.raises(ValueError, match="should have logged one model, found 0"):
        register(sweep.client, sweep.experiment_id, parent, "bad-alias", "champion")
    assert sweep.client.search_registered_models("name = 'bad-alias'") == []
    with pytest.raises(ValueError, match="has no child runs"):
        best_run(sweep.client, sweep.experiment_id, "0" * 32)
    with pytest.raises(ValueError, match="experiment must be"):
        open_store(sweep.folder / "mlflow", experiment="")


def test_example_runs():
    model, (x,) = example()
    assert model(x).shape == (4, 10)


def test_demo_registers_and_reloads_the_best_run(sweep, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metric, args, low, high = short_band("annotated/research/experiments.py")
    metrics = main([*args, "--out", str(sweep.folder)])
    assert low <= metrics[metric] <= high  # the short run's band over stored seeds
    assert metrics["reloaded_identical"] == 1.0
    assert metrics["best_lr"] == 0.1 and metrics["best_width"] in (16.0, 32.0)
    assert metrics["best_test_accuracy"] > 0.8
    assert metrics["version"] == 1.0  # the demo's own name, new in this store
    assert (sweep.folder / "sweep.png").exists()
    assert list(tmp_path.iterdir()) == []


# Logging 100 values of one metric, as a training loop that logs every step would:
# one `log_metric` call (one database transaction) each, against one `log_batch`.
VALUES = np.linspace(2.0, 0.1, 100).tolist()


def fresh_run(sweep, name):
    """A pedantic `setup`: each measured round logs into a new, empty run."""

    def setup():
        run = sweep.client.create_run(sweep.experiment_id, run_name=name)
        return (run.info.run_id,), {}

    return setup


@pytest.mark.benchmark(group="log 100 metric values to SQLite")
def test_bench_log_metric_each(benchmark, sweep):
    benchmark.extra_info["label"] = "MlflowClient.log_metric, one call per value"
    benchmark.extra_info["baseline"] = True

    def log_each(run_id):
        for step, value in enumerate(VALUES):
            sweep.client.log_metric(run_id, "loss", value, step=step)

    setup = fresh_run(sweep, "bench log_metric")
    benchmark.pedantic(log_each, setup=setup, rounds=3, iterations=1)


@pytest.mark.benchmark(group="log 100 metric values to SQLite")
def test_bench_log_batch(benchmark, sweep):
    benchmark.extra_info["label"] = "MlflowClient.log_batch, one call"

    def log_batch(run_id):
        timestamp = int(time.time() * 1000)
        metrics = [Metric("loss", v, timestamp, s) for s, v in enumerate(VALUES)]
        sweep.client.log_batch(run_id, metrics=metrics)

    setup = fresh_run(sweep, "bench log_batch")
    benchmark.pedantic(log_batch, setup=setup, rounds=3, iterations=1)
