"""What every search command shares: arguments, Ray, the workspace, MLflow, the Tuner, the end.

An experiment kind (search/grid.py, ...) defines its search space and scheduler and calls
``run_search``; everything else (resources, cluster, lineage, resume, failures, the summary and
exit codes) lives here once.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from search import offline
from search.workspace import Workspace, WorkspaceError, git_commit, redact
from trainables import failpoints
from trainables.cli import ArgParser
from trainables.data import add_data_args
from trainables.trainable import METRIC, MODE

EXIT_OK, EXIT_NONE_FINISHED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_STATE = 4  # Tune's saved experiment state is unreadable (search/driver.py interrupted)


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


def above_one(text: str) -> float:
    """An argparse type for ASHA's reduction factor (Ray asserts it is above 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 1):
        raise argparse.ArgumentTypeError(f"must be above 1 (e.g. 2 or 3), got {text}")
    return value


def check_resources(args) -> None:
    """Resource and cluster flags no trial could ever run with, refused before anything starts
    or is recorded: Tune itself waits for ever for resources the cluster lacks (it only warns
    every 60 s), and Ray waits minutes for an address that does not answer."""
    cpus, gpus = args.cpus_per_trial, args.gpus_per_trial
    if not (math.isfinite(cpus) and cpus > 0):
        raise UsageError(f"--cpus-per-trial must be above 0, got {cpus:g}; e.g. 1, or 0.5 for "
                         "two trials per CPU")
    if not (math.isfinite(gpus) and gpus >= 0):
        raise UsageError(f"--gpus-per-trial must be 0 or more, got {gpus:g}")
    if gpus > 1 and gpus != int(gpus):
        raise UsageError(f"--gpus-per-trial {gpus:g}: above 1 a trial takes whole GPUs; use a "
                         "fraction of one (e.g. 0.5) or a whole number")
    if args.num_cpus is not None and args.num_cpus < 1:
        raise UsageError(f"--num-cpus must be at least 1, got {args.num_cpus}")
    if args.max_concurrent < 0:
        raise UsageError(f"--max-concurrent must be 0 (as resources allow) or more, got "
                         f"{args.max_concurrent}")
    if args.max_failures < -1:
        raise UsageError(f"--max-failures must be -1 (retry for ever) or more, got "
                         f"{args.max_failures}")
    if not 0 <= args.dashboard_port <= 65535:
        raise UsageError(f"--dashboard-port must be a port number, 0..65535, got "
                         f"{args.dashboard_port}")
    if args.address:
        check_address(args.address)
        return
    have = args.num_cpus or os.cpu_count() or 1
    if cpus > have:
        raise UsageError(f"--cpus-per-trial {cpus:g} is more than the {have} CPUs of the local "
                         "cluster; lower it" + (" or raise --num-cpus" if args.num_cpus else ""))
    if gpus > 0:
        import torch

        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if math.ceil(gpus) > have:
            raise UsageError(f"--gpus-per-trial {gpus:g} needs a GPU, and this machine has "
                             f"{have or 'none'} that CUDA can use; drop --gpus-per-trial, or "
                             "join a cluster with GPUs (--address)")


def check_address(address: str) -> None:
    """A HOST:PORT (or ray://HOST:PORT) that accepts no connection, in seconds not minutes."""
    if address == "auto":  # Ray says at once when no cluster runs here
        return
    host, sep, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"--address {address!r} is not auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise UsageError(f"no Ray cluster answers at {address} ({e.strerror or e}); start it "
                         "(`ray start --head`) or fix --address") from None


def check_cluster(args) -> None:
    """A trial must fit the cluster it was sent to (the one --address joined, too)."""
    import ray

    total = ray.cluster_resources()
    for flag, want, key in (("--cpus-per-trial", args.cpus_per_trial, "CPU"),
                            ("--gpus-per-trial", args.gpus_per_trial, "GPU")):
        if want > total.get(key, 0):
            raise UsageError(f"{flag} {want:g} is more than the {total.get(key, 0):g} "
                             f"{key}s of the Ray cluster; lower it or add nodes with {key}s")


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
        try:
            ctx = ray.init(address=args.address, **kw)
        except ray.exceptions.AuthenticationError:
            raise UsageError(f"the Ray cluster at {args.address} refused this driver's token; "
                             "export RAY_AUTH_MODE=token and the head's token (`ray "
                             "get-auth-token` there) as RAY_AUTH_TOKEN") from None
        except (ConnectionError, TimeoutError, ray.exceptions.RpcError) as e:
            why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise UsageError(f"no Ray cluster answers at {args.address} ({why}); start it "
                             "(`ray start --head`) or fix --address") from None
    else:
        # "local": a new cluster of this process, even when `ray start` runs one on this machine
        ctx = ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=True,
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
        if state is not None and state["data_fingerprint"] != split.fingerprint:
            raise UsageError(f"experiment {search.name!r} was run on data "
                             f"{state['data_fingerprint'][:16]}, this one is "
                             f"{split.fingerprint[:16]}; use the same --data-dir, --train-size "
                             "and --seed")
        if state is not None:  # before anything is recorded: a state Tune cannot read
            for part in state.get("parts", [search.name]):
                interrupted(os.path.join(ws.storage_path, part))
        client = ws.client()
        dashboard = start_ray(args)  # before anything is recorded: a cluster that refuses us
        check_cluster(args)
    except (WorkspaceError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except StateError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_STATE
    offline.back_online(ws.tracking_uri)  # it answered: this search records again
    experiment_id = ws.experiment_id(client, search.name)
    if state is None:  # saved before the parent run exists: a kill between the two leaves a
        state = {"name": search.name, "kind": search.kind, "parent_run_id": None,  # state
                 "experiment_id": experiment_id, "storage_path": ws.storage_path,  # that
                 "data_fingerprint": split.fingerprint, "created": time.time()}  # finds it
        ws.save_state(search.name, state)
    if state.get("parent_run_id") is None:
        state["parent_run_id"] = parent_run(client, experiment_id, search, split, state)
        ws.save_state(search.name, state)
    else:
        client.update_run(state["parent_run_id"], status="RUNNING")
    parent_id = state["parent_run_id"]

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
        try:
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
        except Exception as e:
            if not isinstance(e, StateError):
                why = str(e).strip().splitlines()[0][:200] if str(e).strip() else \
                    type(e).__name__
                e = StateError(f"Tune cannot restore {path} ({why}); start the experiment "
                               "again under a new --name (its MLflow runs stay as they are)")
            print(f"error: {e}", file=sys.stderr)
            return EXIT_STATE
        results += list(tuner.fit())
        if (code := stopped(path, client, parent_id, search, ws, state)) is not None:
            return code
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
    if (code := stopped(path, client, parent_id, search, ws, state)) is not None:
        return code
    if args.resume:  # what MLflow missed (a server that went away), from Tune's results
        from search.backfill import catch_up

        catch_up(ws.tracking_uri, search, results, client, experiment_id, parent_id)
    code = summarise(results, client, parent_id, ws, dashboard, search)
    offline.note(ws, search.name, state)
    return code


def parent_run(client, experiment_id: str, search: Search, split, state: dict) -> str:
    """The search's parent run: the one created for this state before a kill, else a new one
    (tagged with the state's creation time, so that a resumed search finds it)."""
    created = repr(state["created"])
    found = client.search_runs([experiment_id], f"tags.state_created = '{created}'",
                               max_results=1)
    if found:
        parent_id = found[0].info.run_id
    else:
        run_name = f"{search.kind}-{time.strftime('%Y%m%d-%H%M%S')}"
        parent_id = client.create_run(experiment_id, run_name=run_name, tags={
            "kind": search.kind, "state_created": created, **(search.tags or {})}).info.run_id
        # the run exists; the workspace's state does not name it yet
        failpoints.reach("parent-run-created", run=parent_id)
    params = {**(search.params or {}), "data_fingerprint": split.fingerprint,
              "git_commit": git_commit(), "train_images": len(split.y_train)}
    logged = client.get_run(parent_id).data.params
    for k, v in params.items():
        if k not in logged:
            client.log_param(parent_id, k, str(v)[:500])
    return parent_id


class StateError(Exception):
    """Tune's saved experiment state is there but cannot be read; one line, exit 4."""


def interrupted(path: str) -> bool:
    """Whether the Tune run saved at ``path`` was stopped (Ctrl-C) with trials still open.
    Nothing saved yet means it never got going (stopped at once); a saved state that cannot
    be read is a StateError, not an interruption."""
    from ray.tune import ExperimentAnalysis

    if not list(Path(path).glob("experiment_state*.json")):
        return True
    try:
        trials = ExperimentAnalysis(path).trials
    except Exception as e:
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise StateError(f"Tune cannot restore {path}: its saved state cannot be read "
                         f"({why}); start the experiment again under a new --name (its "
                         "MLflow runs stay as they are)") from None
    return any(t.status not in ("TERMINATED", "ERROR") for t in trials)


def stopped(path: str, client, parent_id: str, search: Search, ws: Workspace,
            state: dict) -> int | None:
    """None when the Tune run at ``path`` ended; else the search's exit code."""
    try:
        if not interrupted(path):
            return None
    except StateError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_STATE
    return stop_interrupted(client, parent_id, search, ws, state)


def stop_interrupted(client, parent_id: str, search: Search, ws: Workspace,
                     state: dict) -> int:
    def record():
        client.set_tag(parent_id, "interrupted", time.strftime("%Y-%m-%d %H:%M:%S"))
        client.set_terminated(parent_id, "KILLED")

    offline.tracked(ws.tracking_uri, record)
    offline.note(ws, search.name, state)
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
            # each result says whether to checkpoint (should_checkpoint): every epoch whose
            # weights the trial holds, not the epochs it replays (trainables/trainable.py)
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=search.metric,
                checkpoint_score_order=MODE, checkpoint_frequency=0),
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
        # ties go to the first trial by id, so a resumed search names the same winner
        finished.sort(key=lambda t: str((t[2].metrics or {}).get("trial_id", "")))
        best, cfg, r = max(finished, key=lambda t: t[0])
        keys = ("model", "model_kwargs", "batch_size", "epochs", "class_weights", "augment",
                *(k for k in cols if k not in ("batch_size", "epochs")))
        print(f"\nbest: {metric} {best:.4f} with " +
              ", ".join(f"{k}={cell(cfg.get(k))}" for k in keys if k in cfg))

    def record():  # the parent run's end; skipped (the --resume does it) if MLflow is gone
        if finished:
            client.log_metric(parent_id, f"best_{metric}", float(best))
            for k, v in flat_params({k: cfg.get(k) for k in keys if k in cfg}).items():
                client.set_tag(parent_id, f"best.{k}", v)
        if search.report is not None:
            search.report(results, client, parent_id, ws)
        client.set_tag(parent_id, "trials_finished", str(len(finished)))
        client.set_tag(parent_id, "trials_failed", str(len(failed)))
        client.set_terminated(parent_id, "FINISHED" if finished else "FAILED")

    offline.tracked(ws.tracking_uri, record)
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
