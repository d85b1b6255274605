r"""
---
title: Experiment management with MLflow
summary: >-
  A learning-rate × width sweep of a digits MLP, every run tracked in an embedded MLflow
  store (parameters, per-epoch metrics, figures, the model), then the best model
  registered under a name and an alias and loaded back by it.
time: 20 s
expected:
  metric: best_test_accuracy
  short: ["--lrs", "0.1", "--widths", "16", "32", "--epochs", "2"]
references:
  - key: zaharia2018accelerating
    authors: [Matei Zaharia, Andrew Chen, Aaron Davidson, Ali Ghodsi, et al.]
    title: Accelerating the Machine Learning Lifecycle with MLflow
    year: 2018
    venue: IEEE Data Engineering Bulletin 41(4)
    url: http://sites.computer.org/debull/A18dec/p39.pdf
  - key: sculley2015hidden
    authors: [D. Sculley, Gary Holt, Daniel Golovin, Eugene Davydov, et al.]
    title: Hidden Technical Debt in Machine Learning Systems
    year: 2015
    venue: NeurIPS 2015
    url: https://papers.nips.cc/paper/5656-hidden-technical-debt-in-machine-learning-systems
  - key: bergstra2012random
    authors: [James Bergstra, Yoshua Bengio]
    title: Random Search for Hyper-Parameter Optimization
    year: 2012
    venue: Journal of Machine Learning Research 13
    url: https://jmlr.org/papers/v13/bergstra12a.html
  - key: mlflow2025registry
    authors: [MLflow project]
    title: "MLflow Model Registry: model aliases"
    year: 2025
    venue: MLflow 3 documentation
    url: https://mlflow.org/docs/latest/ml/model-registry/
worksheet:
  - region: train_run
    hint: >-
      Inside the active child run, log the parameters, seed and build the MLP and
      SGD with momentum 0.9; each epoch train, evaluate, log the three metrics in one
      log_metrics call at step = epoch and keep them; log the learning-curve figure,
      then log the CPU model with its signature and return a RunResult.
    tests:
      - test_metric_histories_read_back_exactly
      - test_parameters_and_parent_links_round_trip
  - region: best_run
    hint: >-
      search_runs in the experiment, filtered on tags.mlflow.parentRunId, ordered
      by test accuracy descending then test loss ascending, one result; refuse an
      empty answer.
    tests: [test_best_run_is_the_highest_final_accuracy_then_lowest_loss]
  - region: register
    hint: >-
      Check the name and alias; find the run's one logged model with
      search_logged_models (source_run_id), register its URI under the name, and
      point the alias at the new version.
    tests: [test_registered_model_loads_by_alias_with_identical_outputs]
---

A week into a project the question is no longer "does it train?" but "which of the
forty runs was the good one, what were its settings, and where are its weights?". A
folder of `loss_lr0.03_final_v2.png` files does not answer it, and the answer matters:
a result nobody can trace back to its code, data and parameters cannot be reproduced,
compared or shipped [@sculley2015hidden]. An *experiment tracker* is the habit made
into a tool. Every run writes down, as it goes, what it was given (parameters), what it
measured (metrics, step by step), and what it made (figures, the model); a query over
all runs then answers the question above.

MLflow [@zaharia2018accelerating] is one such tool, and the one used here because it
runs *embedded*: the same `mlflow.log_metric` calls write to a SQLite file on one
machine or to a tracking server shared by a team, and only the tracking URI changes.
Weights & Biases offers the same model as a hosted service; DVC versions the data and
pipelines beside the code in git. The ideas carry over: a run, its parameters and
metrics, its artifacts, a registry of models with names.

The lesson runs a small sweep, the learning rate $\eta \in \{0.003, 0.03, 0.3\}$ ×
the hidden width $h \in \{16, 128\}$ of the digits MLP
from [the training monitor](../networks/training_monitor.md): six runs, each a nested
child of one parent run for the sweep. Each child logs its parameters, three metrics
per epoch, its learning curve as a figure and its trained model (exported with
`torch.export`, with a signature and an input example). Then the lesson queries the
store for the best run, registers its model under a name, points an alias at that
version, and loads it back by `models:/<name>@<alias>`, checking the outputs are the
in-memory model's to the last bit. The test reads every metric back through
`MlflowClient` and compares it with what the run returned.
"""

import argparse
import re
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import torch
import torch.nn.functional as F
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from torch import nn
from tqdm import tqdm

from annotated.data import cache_folder, digits, integer, number, torch_device
from annotated.figures import figure, save
from annotated.networks.training_monitor import make_mlp

# ## The store
#
# MLflow keeps two kinds of things apart. The *backend store* holds the small,
# queryable records: experiments, runs, parameters, metrics, tags, and the model
# registry. The *artifact store* holds files: figures, model weights. On one machine
# both are local: a SQLite database file and a folder. A team points both at a
# tracking server instead (`mlflow server --backend-store-uri postgresql://...
# --artifacts-destination s3://...`) and calls `mlflow.set_tracking_uri("http://...")`;
# the rest of this file does not change.
#
# Why SQLite? MLflow 3 deprecates its old store, a `mlruns/` folder of small files, and
# ships a migration from it to a database; the registry's aliases and the run search
# below are database queries. One SQLite file is also easy to copy, back up or delete.
# The first open creates the tables (MLflow runs its schema migrations, a few seconds);
# later opens find them.
#
# Everything lives under one folder that the caller chooses, never the current
# directory. That needs saying because MLflow's default, when no tracking URI is set, is
# `sqlite:///mlflow.db` *relative to the current directory*, with artifacts in
# `./mlruns`: tracking data appears wherever a script happened to be started, and
# gets lost or committed by accident. The fluent API (`mlflow.start_run`,
# `mlflow.log_metric`, ...) reads a process-wide tracking URI, so `open_store` sets
# it, and the registry URI with it.


def open_store(folder: str | Path, experiment: str = "digits-sweep"):
    """Point MLflow at the SQLite store `<folder>/mlflow.db`, with artifacts in
    `<folder>/artifacts`; create or find `experiment`. Returns `(client, experiment_id,
    tracking_uri)`."""
    if not isinstance(experiment, str) or not experiment.strip():
        raise ValueError(f"experiment must be a non-empty name, got {experiment!r}")
    folder = Path(folder).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        artifacts = (folder / "artifacts").as_uri()  # file:///... absolute
        experiment_id = client.create_experiment(experiment, artifacts)
    else:
        experiment_id = found.experiment_id
    # The store's built-in "Default" experiment keeps its artifacts in `./mlruns`,
    # relative to the current directory: a run that lands there writes files wherever
    # the script was started. Making ours the active experiment keeps every run here.
    mlflow.set_experiment(experiment_id=experiment_id)
    return client, experiment_id, uri


# ## One run
#
# A run is one training job. What it logs falls in three kinds:
#
# - **parameters**, set once: the learning rate, the width, the epochs. MLflow stores
#   them as strings (`"0.03"`); Python's `repr` of a float reads back to the same float,
#   so nothing is lost.
# - **metrics**, a series each: one value per epoch, logged with `step=epoch`, so the
#   store keeps the whole learning curve rather than the last number. Each value is a
#   float64 in the database and reads back exactly.
# - **artifacts**, files: the learning-curve figure (`mlflow.log_figure` renders a
#   matplotlib figure straight into the run's artifact folder) and the model.
#
# The model is logged with `mlflow.pytorch.log_model`. In MLflow 3 a model is an entity
# of its own (a *LoggedModel*, `models:/m-<id>`) linked to the run that made it. By
# default it is saved in PyTorch's `pt2` format: `torch.export` traces `forward` on the
# input example into a graph of ATen operators, so loading it back runs no pickled
# Python code and needs no copy of the model's class. The *signature* records the
# input and output shapes and dtypes (`[-1, 64]` float32 in, `[-1, 10]` out); a server
# checks requests against it. Passing `pip_requirements` explicitly skips MLflow's
# inference of the environment, which imports the model's modules and takes seconds.
#
# Logging is not free. Each `log_metric` call is one database transaction, written to
# disk before it returns. The benchmark in the test file logs 100 values one call each
# and then all in one `MlflowClient.log_batch`. On an idle 2-core machine the 100
# calls took about 0.36 s against about 0.013 s for the batch (about 28×; the header's
# table has the stored run); on a busy one 2–3 s against 0.03–0.05 s. Either way a
# call costs milliseconds, far more than one training step of this MLP.
# A loop that logs every step should batch its values, or pass `synchronous=False` so
# that a background thread writes them. Here each epoch's three values go in one
# `mlflow.log_metrics` call, which is one batch.
#
# Training itself is the plain loop of the earlier lessons: SGD with momentum on
# mini-batches, the same seed for every run so that two runs differ only in what the
# sweep varies.


@dataclass
class RunResult:
    """What one run returns: its id, parameters, metric history and model."""

    run_id: str
    lr: float
    width: int
    model_uri: str
    model: nn.Module
    history: dict[str, list[float]]


def train_epoch(model, optimizer, x_train, y_train, batch_size, generator) -> float:
    """One pass over the shuffled training set; returns the mean training loss."""
    model.train()
    order = torch.randperm(len(x_train), generator=generator).to(x_train.device)
    total = 0.0
    for start in range(0, len(x_train), batch_size):
        batch = order[start : start + batch_size]
        loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
    return total / len(x_train)


@torch.no_grad()
def evaluate(model, x, y) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on `x [n, 64]`, `y [n]`."""
    model.eval()
    logits = model(x)  # [n, 10]
    accuracy = (logits.argmax(dim=1) == y).double().mean().item()
    return F.cross_entropy(logits, y).item(), accuracy


def plot_run(history: dict[str, list[float]], title: str):
    """One run's learning curves: training and test loss, test accuracy."""
    fig, (losses, accuracy) = figure(panels=2)
    epochs = range(1, len(history["train_loss"]) + 1)
    losses.plot(epochs, history["train_loss"], label="training")
    losses.plot(epochs, history["test_loss"], label="test")
    losses.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title=title)
    losses.legend()
    accuracy.plot(epochs, history["test_accuracy"])
    accuracy.set(xlabel="epoch", ylabel="test accuracy", title=title)
    return fig


def train_run(lr, width, data, epochs, batch_size, seed, device) -> RunResult:
    """Train one MLP inside the active child run, logging as it goes."""
    x_train, y_train, x_test, y_test = data
    mlflow.log_params({"lr": lr, "width": width, "epochs": epochs, "seed": seed})
    mlflow.log_params({"batch_size": batch_size, "optimizer": "SGD, momentum 0.9"})
    torch.manual_seed(seed)
    model = make_mlp(64, (width,), 10).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    history = {"train_loss": [], "test_loss": [], "test_accuracy": []}
    for epoch in range(epochs):
        train_loss = train_epoch(
            model, optimizer, x_train, y_train, batch_size, generator
        )
        test_loss, test_accuracy = evaluate(model, x_test, y_test)
        metrics = {
            "train_loss": train_loss,
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
        }
        # One call, one transaction, for the three values of the epoch.
        mlflow.log_metrics(metrics, step=epoch)
        for key, value in metrics.items():
            history[key].append(value)
    title = f"lr {lr:g}, width {width}"
    mlflow.log_figure(plot_run(history, title), "learning_curves.png")
    # The registry stores a CPU model: whoever loads it may not have a GPU.
    model = model.cpu().eval()
    example = x_test[:5].cpu().numpy()  # [5, 64] float32
    with torch.no_grad():
        signature = infer_signature(example, model(torch.from_numpy(example)).numpy())
    info = mlflow.pytorch.log_model(
        model,
        name="model",
        signature=signature,
        input_example=example,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
    )
    run_id = mlflow.active_run().info.run_id
    return RunResult(run_id, lr, width, info.model_uri, model, history)


# ## Figures of the sweep
#
# A heat map of the final test accuracy over the grid shows the shape of the
# hyperparameter space at a glance: here, that a small learning rate has not converged
# in ten epochs, and that the largest one is fine for the wide network but unstable for
# the narrow one. Beside it, every run's test-loss curve.


def plot_sweep(results: list[RunResult], lrs, widths):
    """Final test accuracy as an lr × width heat map, and every run's test loss."""
    accuracy = np.array([r.history["test_accuracy"][-1] for r in results])
    accuracy = accuracy.reshape(len(lrs), len(widths))  # [lr, width]
    fig, (heat, curves) = figure(panels=2)
    image = heat.imshow(accuracy, cmap="viridis", aspect="auto")
    for i in range(len(lrs)):
        for j in range(len(widths)):
            color = "black" if accuracy[i, j] > accuracy.mean() else "white"
            heat.text(j, i, f"{accuracy[i, j]:.3f}", ha="center", va="center", c=color)
    heat.set_xticks(range(len(widths)), [str(w) for w in widths])
    heat.set_yticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
    heat.set(xlabel="hidden width", ylabel="learning rate", title="final test accuracy")
    fig.colorbar(image, ax=heat)
    # Colour is the learning rate, line style the width.
    for r in results:
        epochs = range(1, len(r.history["test_loss"]) + 1)
        color = f"C{lrs.index(r.lr) % 10}"
        style = ["-", "--", ":", "-."][widths.index(r.width) % 4]
        label = f"lr {r.lr:g}, w {r.width}"
        curves.plot(epochs, r.history["test_loss"], color=color, ls=style, label=label)
    curves.set(xlabel="epoch", ylabel="test cross-entropy", yscale="log")
    curves.set_title("learning curves")
    curves.legend(ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    return fig


# ## The sweep: nested runs
#
# A grid over two hyperparameters is the simplest sweep; random search covers wide
# spaces better for the same budget [@bergstra2012random], and the logging is the
# same either way. The sweep is a *parent* run, and each configuration a child started
# with `nested=True`: MLflow tags the child with `mlflow.parentRunId`, the UI folds the
# children under the parent, and one query finds exactly this sweep's runs even after
# many sweeps have shared the experiment. The parent records what is common to all
# children: the grid, and the data set, logged with `mlflow.log_input` so the run
# names the exact data it saw by a digest of its contents (the question DVC answers for
# files in git).


def check_grid(lrs, widths, epochs, batch_size) -> None:
    """Raise naming the argument before anything is written to the store."""
    if not lrs or not all(
        isinstance(lr, (int, float)) and np.isfinite(lr) and lr > 0 for lr in lrs
    ):
        raise ValueError(
            f"lrs must be a non-empty list of positive floats, got {lrs!r}"
        )
    if not widths or not all(
        isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths
    ):
        raise ValueError(
            f"widths must be a non-empty list of positive ints, got {widths!r}"
        )
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")


def run_sweep(
    experiment_id: str,
    lrs: list[float],
    widths: list[int],
    epochs: int = 10,
    batch_size: int = 32,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[str, list[RunResult]]:
    """Train every `(lr, width)` pair as a child run of one parent run; returns the
    parent's id and the children's results, in grid order (lr-major)."""
    check_grid(lrs, widths, epochs, batch_size)
    arrays = digits(seed=seed)
    x_train, y_train, x_test, y_test = (
        torch.tensor(array, device=device) for array in arrays
    )
    data = (x_train.float(), y_train, x_test.float(), y_test)
    grid = [(float(lr), width) for lr in lrs for width in widths]
    results = []
    with mlflow.start_run(experiment_id=experiment_id, run_name="sweep") as parent:
        mlflow.log_params({"lrs": list(lrs), "widths": list(widths), "epochs": epochs})
        dataset = mlflow.data.from_numpy(arrays[0], targets=arrays[1], name="digits")
        mlflow.log_input(dataset, context="training")
        for lr, width in tqdm(grid, desc="runs"):
            name = f"lr={lr:g} width={width}"
            with mlflow.start_run(run_name=name, nested=True):
                results.append(
                    train_run(lr, width, data, epochs, batch_size, seed, device)
                )
        accuracy = np.array([r.history["test_accuracy"][-1] for r in results])
        mlflow.log_metric("best_test_accuracy", float(accuracy.max()))
        mlflow.log_figure(plot_sweep(results, lrs, widths), "sweep.png")
    return parent.info.run_id, results


# ## Asking the store
#
# The sweep's results are in memory here, but the point of the store is that they need
# not be: a teammate, a notebook next week, or the UI can ask it. `search_runs` takes a
# filter in MLflow's small SQL-like language and an ordering. A metric in a filter or an
# ordering means its *latest* value, here the last epoch's. Ties in accuracy (359 test
# digits: steps of 0.28 %) are broken by the lower test loss.


def best_run(client: MlflowClient, experiment_id: str, parent_id: str):
    """The child of `parent_id` with the highest final test accuracy."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
        order_by=["metrics.test_accuracy DESC", "metrics.test_loss ASC"],
        max_results=1,
    )
    if not runs:
        raise ValueError(f"parent_id {parent_id!r} has no child runs in the store")
    return runs[0]


# ## The registry: a name, versions, aliases
#
# A run's model is found by its run; a deployed model is found by its *name*. The
# registry gives each registered name a list of versions, each pointing at one logged
# model, and *aliases*: movable labels such as `champion` that point at one version.
# Serving code loads `models:/digits-mlp@champion` and never changes; promoting a new
# model is moving the alias. Aliases replace the fixed stages (`Staging`,
# `Production`) of MLflow 2, which are deprecated [@mlflow2025registry]. Registering
# the same name again makes version 2, 3, ...: each sweep that reruns here adds one.
#
# The best run's model is found through the store too: `search_logged_models` with the
# run as `source_run_id`.


def check_name(name: str, alias: str) -> None:
    """MLflow allows letters, digits, `_` and `-` in an alias and reserves `latest` and
    version-like aliases (`v3`); refuse the rest up front, before a version is
    registered."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a non-empty model name, got {name!r}")
    if not isinstance(alias, str):
        raise TypeError(f"alias must be a str, got {type(alias).__name__}")
    reserved = alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias)
    if not re.fullmatch(r"[\w-]+", alias) or reserved:
        raise ValueError(
            f"alias must be a word such as 'champion' (not 'latest' nor 'v<number>'), "
            f"got {alias!r}"
        )


def register(client: MlflowClient, experiment_id: str, run, name: str, alias: str):
    """Register `run`'s model as a new version of `name` and point `alias` at it;
    returns the `ModelVersion`."""
    check_name(name, alias)
    logged = mlflow.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
        output_format="list",
    )
    if len(logged) != 1:
        raise ValueError(
            f"run {run.info.run_id} should have logged one model, found {len(logged)}"
        )
    version = mlflow.register_model(logged[0].model_uri, name)
    client.set_registered_model_alias(name, alias, version.version)
    return version


def example():
    """The model the sweep trains, at width 16, on four digits-sized inputs."""
    torch.manual_seed(0)
    return make_mlp(64, (16,), 10), (torch.rand(4, 64),)


# ## Demo
#
# Open the store (under the user's cache folder unless `--out` says otherwise), run
# the sweep, ask the store for the best run, register its model, load it back by alias
# and compare outputs. Finally print the command that opens the UI on this store;
# `mlflow ui` reads the same SQLite file, and no server is needed to write it.


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run a tracked lr × width sweep, register the best model, reload it by alias."""
    parser = argparse.ArgumentParser(
        description="A tracked sweep of a digits MLP in an embedded MLflow store.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--lrs",
        type=number(above=0),
        nargs="+",
        default=[0.003, 0.03, 0.3],
        help="SGD learning rates to sweep",
    )
    parser.add_argument(
        "--widths",
        type=integer(at_least=1),
        nargs="+",
        default=[16, 128],
        help="hidden widths to sweep",
    )
    parser.add_argument(
        "--epochs", type=integer(at_least=1), default=10, help="epochs per run"
    )
    parser.add_argument(
        "--batch-size", type=integer(at_least=1), default=32, help="mini-batch size"
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed of every run"
    )
    parser.add_argument(
        "--name", default="digits-mlp", help="registered model name for the best run"
    )
    parser.add_argument("--alias", default="champion", help="alias to point at it")
    parser.add_argument(
        "--threads",
        type=integer(at_least=1),
        default=1,
        help="torch CPU threads: a network this small trains slower on two, and much "
        "slower on a busy machine",
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device to train on",
    )
    parser.add_argument(
        "--out",
        default=str(cache_folder() / "experiments"),
        help="folder for the figures and the MLflow store (mlflow.db, artifacts/)",
    )
    args = parser.parse_args(argv)
    check_grid(args.lrs, args.widths, args.epochs, args.batch_size)
    check_name(args.name, args.alias)
    out = Path(args.out)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    client, experiment_id, uri = open_store(out / "mlflow")
    parent_id, results = run_sweep(
        experiment_id,
        args.lrs,
        args.widths,
        args.epochs,
        args.batch_size,
        args.seed,
        args.device,
    )
    best = best_run(client, experiment_id, parent_id)
    version = register(client, experiment_id, best, args.name, args.alias)
    loaded = mlflow.pytorch.load_model(f"models:/{args.name}@{args.alias}")
    chosen = next(r for r in results if r.run_id == best.info.run_id)
    x_test = torch.tensor(digits(seed=args.seed)[2], dtype=torch.float32)
    with torch.no_grad():
        same = torch.equal(loaded(x_test), chosen.model(x_test))
    seconds = time.perf_counter() - started
    save(
        plot_sweep(results, args.lrs, args.widths),
        out / "sweep.png",
        caption="Left: final test accuracy of each run of the sweep, learning rate "
        "× hidden width. Right: every run's test loss per epoch, coloured by learning "
        "rate, one line style per width.",
    )
    accuracy = best.data.metrics["test_accuracy"]
    print(
        f"best run {best.info.run_name}: test accuracy {accuracy:.4f}, "
        f"lr {best.data.params['lr']}, width {best.data.params['width']}"
    )
    print(
        f"registered {args.name} version {version.version} as @{args.alias}; "
        f"reloaded outputs identical: {same}"
    )
    print(f"{len(results)} runs tracked in {seconds:.1f} s")
    print(f"browse them: mlflow ui --backend-store-uri {uri}")
    return {
        "best_test_accuracy": accuracy,
        "best_lr": float(best.data.params["lr"]),
        "best_width": float(best.data.params["width"]),
        "version": float(version.version),
        "reloaded_identical": float(same),
        "seconds": seconds,
    }


if __name__ == "__main__":
    main()

# ## Exercises
#
# 1. Replace the grid by random search: draw six learning rates log-uniformly in
#    $[10^{-3}, 1]$ and widths from $\{8, \dots, 256\}$. Does the best run beat the
#    grid's for the same six runs?
# 2. Start `mlflow server --backend-store-uri sqlite:///<folder>/mlflow.db
#    --artifacts-destination <folder>/artifacts` and point the demo at
#    `http://127.0.0.1:5000` instead of the SQLite file. Which lines change?
# 3. Rerun the demo with a different `--seed`. The alias now points at version 2; write
#    the few lines that move it back to version 1 when version 2's accuracy is lower.
# 4. Log `train_loss` after every mini-batch instead of every epoch, with `step` the
#    global step. How much slower is the sweep with one `log_metric` per value, and
#    with the values collected and sent once per epoch through `MlflowClient.log_batch`?
