"""What every search command shares: arguments, Ray, the workspace, MLflow, the Tuner, the end.

An experiment kind (search/grid.py, ...) defines its search space and scheduler and calls
``run_search``; everything else (resources, cluster, lineage, resume, failures, the summary and
exit codes) lives here once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from search.workspace import Workspace, WorkspaceError, git_commit, redact
from trainables.cli import ArgParser
from trainables.data import add_data_args
from trainables.trainable import METRIC, MODE

EXIT_OK, EXIT_NONE_FINISHED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """Bad arguments found after parsing; one line, exit 2."""


def positive_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}"
                                         ) from None
    if not values:
        raise argparse.ArgumentTypeError("the list is empty")
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"values must be at least 1, got {text!r}")
    return values


def check_resume(what: str, name: str, exists: bool, resume: bool, root) -> None:
    """The one rule of --resume: it continues an existing NAME; without it, NAME must be new."""
    if resume and not exists:
        raise UsageError(f"no {what} named {name!r} in {root} to resume; drop --resume to "
                         "start it")
    if not resume and exists:
        raise UsageError(f"{what} {name!r} already exists in {root}; pass --resume to continue "
                         "it or --name for a new one")


def add_search_args(p: ArgParser, default_name: str) -> None:
    g = p.add_argument_group("experiment")
    g.add_argument("--profile", choices=("smoke", "quick", "seed"), default="quick",
                   help="preset grid, subset and widths (default quick)")
    g.add_argument("--name", help=f"experiment name (default {default_name})")
    g.add_argument("--resume", action="store_true",
                   help="continue an interrupted experiment of this name")
    g.add_argument("--workspace", default="outputs", help="folder for everything written")
    g.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite in workspace)")
    g.add_argument("--storage-path", help="Ray Tune results (default WORKSPACE/ray_results)")
    g.add_argument("--max-failures", type=int, default=1,
                   help="retries of a failing trial before it is recorded as failed")
    r = p.add_argument_group("resources")
    r.add_argument("--cpus-per-trial", type=float, default=1)
    r.add_argument("--gpus-per-trial", type=float, default=0,
                   help="fractions pack trials on one GPU, e.g. 0.25")
    r.add_argument("--max-concurrent", type=int, default=0, help="0: as resources allow")
    r.add_argument("--address", help="join a Ray cluster (auto, ray://host:10001)")
    r.add_argument("--num-cpus", type=int, help="CPUs of the local cluster (default all)")
    r.add_argument("--dashboard-port", type=int, default=8265)
    add_data_args(p)
    p.set_defaults(train_size=PROFILE_TRAIN_SIZE, seed=0)


PROFILE_TRAIN_SIZE = -1  # --train-size not given: the profile's (None, from "all", is all)


def train_size(args, profile) -> int | None:
    """The labelled images a search uses: --train-size (a number, or None for all), else the
    profile's."""
    return profile.train_size if args.train_size == PROFILE_TRAIN_SIZE else args.train_size


@dataclass
class Search:
    """What an experiment kind hands to run_search."""

    name: str
    kind: str  # "grid", "weights"
    param_space: dict
    scheduler: object
    num_samples: int = 1  # trials in all, over every part of the experiment
    params: dict | None = None  # the search's arguments, for the parent run
    tags: dict | None = None
    metric: str = METRIC  # what the scheduler, the searcher and checkpoint keeping maximise
    columns: tuple[str, ...] = ("batch_size", "epochs")  # config keys in the trial table
    # make_searcher(ws, first) -> a Tune searcher; first is False for a later part, which
    # must not repeat the starting points. None: Tune's grid/random variant generator.
    make_searcher: Callable[[Workspace, bool], object] | None = None
    # trials_done(ws) -> trials the experiment has run so far, over all its parts; when it
    # is short of num_samples after a resumed part ends, a new part runs the rest.
    trials_done: Callable[[Workspace], int] | None = None
    # report(results, client, parent_id, ws): extra lines and records at the end
    report: Callable | None = None


_DASHBOARD: list[str | None] = []  # the dashboard of the cluster this process started


def dashboard_url() -> str | None:
    """The dashboard of the cluster this process connected to (None before start_ray)."""
    return _DASHBOARD[0] if _DASHBOARD else None


def start_ray(args) -> str | None:
    """Connect to Ray once per process: a pipeline's stages share one cluster and dashboard."""
    import ray

    if ray.is_initialized():
        return dashboard_url()
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's table reporter (_tuner)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    kw = dict(logging_level=logging.WARNING, log_to_driver=False)
    if args.address:
        ctx = ray.init(address=args.address, **kw)
    else:
        ctx = ray.init(num_cpus=args.num_cpus, include_dashboard=True,
                       dashboard_host="127.0.0.1", dashboard_port=args.dashboard_port, **kw)
    url = getattr(ctx, "dashboard_url", None)
    url = f"http://{url}" if url and not url.startswith("http") else url
    _DASHBOARD[:] = [url]
    return url


def run_search(args, search: Search, split, on_start=None) -> int:
    """Run (or resume) one Tune experiment with its MLflow lineage; returns the exit code."""
    from ray import tune

    from search.lineage import MLflowLineage
    from trainables.trainable import ClassifierTrainable

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        ws = Workspace.open(args.workspace, args.tracking_uri, args.storage_path)
        state = ws.load_state(search.name)
        check_resume("experiment", search.name, state is not None, args.resume, ws.root)
        client = ws.client()
    except (WorkspaceError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    experiment_id = ws.experiment_id(client, search.name)
    if state is None:
        run_name = f"{search.kind}-{time.strftime('%Y%m%d-%H%M%S')}"
        parent = client.create_run(experiment_id, run_name=run_name,
                                   tags={"kind": search.kind, **(search.tags or {})})
        parent_id = parent.info.run_id
        for k, v in {**(search.params or {}), "data_fingerprint": split.fingerprint,
                     "git_commit": git_commit(), "train_images": len(split.y_train)}.items():
            client.log_param(parent_id, k, str(v)[:500])
        state = {"name": search.name, "kind": search.kind, "parent_run_id": parent_id,
                 "experiment_id": experiment_id, "storage_path": ws.storage_path,
                 "data_fingerprint": split.fingerprint, "created": time.time()}
        ws.save_state(search.name, state)
    else:
        parent_id = state["parent_run_id"]
        if state["data_fingerprint"] != split.fingerprint:
            print(f"error: experiment {search.name!r} was run on data "
                  f"{state['data_fingerprint'][:16]}, this one is {split.fingerprint[:16]}; "
                  "use the same --data-dir, --train-size and --seed", file=sys.stderr)
            return EXIT_USAGE
        client.update_run(parent_id, status="RUNNING")

    dashboard = start_ray(args)
    if on_start:
        on_start(ws, dashboard)
    print(f"experiment {search.name}: MLflow {redact(ws.tracking_uri)} (parent run "
          f"{parent_id}), Ray dashboard {dashboard or 'n/a'}", flush=True)
    resources = {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
    trainable = tune.with_resources(
        tune.with_parameters(ClassifierTrainable, split=split), resources)
    lineage = MLflowLineage(ws.tracking_uri, experiment_id, parent_id, search.scheduler,
                            metric=search.metric)
    parts = state.get("parts", [search.name])
    results = []
    for part in parts[:-1]:  # earlier parts of an extended experiment: finished, read only
        results += list(tune.Tuner.restore(os.path.join(ws.storage_path, part),
                                           trainable=trainable).get_results())
    path = os.path.join(ws.storage_path, parts[-1])
    if args.resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
        results += list(tuner.fit())
        if interrupted(path):
            return stop_interrupted(client, parent_id, search)
        missing = search.num_samples - search.trials_done(ws) if search.trials_done else 0
        if missing > 0:  # a finished search asked for more trials: a new part runs them
            part = f"{search.name}-part{len(parts) + 1}"
            print(f"experiment {search.name}: {missing} more trial(s) in part {part}",
                  flush=True)
            state["parts"] = [*parts, part]
            ws.save_state(search.name, state)
            results += list(_tuner(search, trainable, lineage, ws, args, part, missing,
                                   first=False).fit())
            path = os.path.join(ws.storage_path, part)
    else:
        results += list(_tuner(search, trainable, lineage, ws, args, parts[-1],
                               search.num_samples, first=True).fit())
    if interrupted(path):
        return stop_interrupted(client, parent_id, search)
    return summarise(results, client, parent_id, ws, dashboard, search)


def interrupted(path: str) -> bool:
    """Whether the Tune run saved at ``path`` was stopped (Ctrl-C) with trials still open."""
    from ray.tune import ExperimentAnalysis

    try:
        trials = ExperimentAnalysis(path).trials
    except Exception:  # nothing saved yet: the run never got going
        return True
    return any(t.status not in ("TERMINATED", "ERROR") for t in trials)


def stop_interrupted(client, parent_id: str, search: Search) -> int:
    client.set_tag(parent_id, "interrupted", time.strftime("%Y-%m-%d %H:%M:%S"))
    client.set_terminated(parent_id, "KILLED")
    print(f"\nexperiment {search.name} interrupted; its state is saved. Continue it with the "
          "same command and --resume (finished trials are not run again)", file=sys.stderr)
    return EXIT_INTERRUPTED


def _tuner(search: Search, trainable, lineage, ws: Workspace, args, name: str,
           num_samples: int, first: bool):
    from ray import tune
    from ray.tune import CLIReporter

    from search.lineage import TrialLines

    searcher = search.make_searcher(ws, first) if search.make_searcher else None
    # Tune's own progress table, one row per trial, at most every 30 s; no per-trial boxes.
    reporter = CLIReporter(
        metric_columns={search.metric: search.metric, "epoch": "epoch",
                        "train_loss": "train loss", "images_per_s": "img/s"},
        parameter_columns={k: k for k in search.columns}, max_report_frequency=30,
        sort_by_metric=True, max_progress_rows=40)
    return tune.Tuner(
        trainable, param_space=search.param_space,
        tune_config=tune.TuneConfig(
            metric=search.metric, mode=MODE, scheduler=search.scheduler,
            search_alg=searcher, num_samples=num_samples,
            max_concurrent_trials=args.max_concurrent or None, reuse_actors=True),
        run_config=tune.RunConfig(
            name=name, storage_path=ws.storage_path, verbose=1, progress_reporter=reporter,
            callbacks=[lineage, TrialLines(name, search.metric, search.columns,
                                           search.scheduler)],
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=search.metric,
                checkpoint_score_order=MODE, checkpoint_frequency=1),
            failure_config=tune.FailureConfig(max_failures=args.max_failures)))


def summarise(results, client, parent_id: str, ws: Workspace, dashboard: str | None,
              search: Search) -> int:
    """Print the trial table, the best config, failures and where to look; close the parent."""
    from search.lineage import flat_params

    metric, cols = search.metric, search.columns
    rows, finished, failed = [], [], []
    for r in results:
        cfg, m = r.config or {}, r.metrics or {}
        df = r.metrics_dataframe
        best = df[metric].max() if df is not None and metric in df else float("nan")
        epoch = int(m.get("epoch", 0))
        if r.error is not None:
            status = "FAILED"
            failed.append((cfg, str(r.error).strip().splitlines()[-1][:200]))
        elif epoch < int(cfg.get("epochs", 0)):
            status = f"stopped at {epoch}"
        else:
            status = "finished"
        if r.error is None:
            finished.append((best, cfg, r))
        rows.append(([cfg.get(k) for k in cols], status, best))
    width = max(6, *(len(k) for k in cols))
    print("\n" + " ".join(f"{k:>{width}}" for k in cols) +
          f"  {'status':<16} {'best ' + metric:>12}")
    for values, s, v in sorted(rows, key=lambda t: [x or 0 for x in t[0]]):
        cells = " ".join(f"{cell(x):>{width}}" for x in values)
        print(f"{cells}  {s:<16} {v:>12.4f}")
    if failed:
        print("\nfailed trials:")
        for cfg, why in failed:
            print(f"  {', '.join(f'{k} {cell(cfg.get(k))}' for k in cols)}: {why}")
    if finished:
        best, cfg, r = max(finished, key=lambda t: t[0])
        keys = ("model", "model_kwargs", "batch_size", "epochs", "class_weights", "augment",
                *(k for k in cols if k not in ("batch_size", "epochs")))
        print(f"\nbest: {metric} {best:.4f} with " +
              ", ".join(f"{k}={cell(cfg.get(k))}" for k in keys if k in cfg))
        client.log_metric(parent_id, f"best_{metric}", float(best))
        for k, v in flat_params({k: cfg.get(k) for k in keys if k in cfg}).items():
            client.set_tag(parent_id, f"best.{k}", v)
    if search.report is not None:
        search.report(results, client, parent_id, ws)
    client.set_tag(parent_id, "trials_finished", str(len(finished)))
    client.set_tag(parent_id, "trials_failed", str(len(failed)))
    client.set_terminated(parent_id, "FINISHED" if finished else "FAILED")
    if ws.tracking_uri.startswith("sqlite:"):
        print(f"\nMLflow UI:      mlflow ui --backend-store-uri {ws.tracking_uri} "
              "--host 127.0.0.1 --port 5000   (then http://127.0.0.1:5000)")
    else:
        print(f"\nMLflow:         {redact(ws.tracking_uri)}")
    print(f"Ray dashboard:  {dashboard or 'n/a'} while the cluster runs (token authentication "
          "is on: `ray get-auth-token` prints the token it asks for)")
    return EXIT_OK if finished else EXIT_NONE_FINISHED


def cell(x) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)
