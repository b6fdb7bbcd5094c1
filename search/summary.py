"""The end of a search: its trial table, the best config, failures, where to look (unless its
command's run context says the command prints that itself: a pipeline, once, at its end); the
parent run's summary tags; and reading a finished search's winner back from them."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

from search.backfill import trial_id
from search.context import Opened
from search.records import cell, flat_params, trial_run_name
from search.workspace import redact
from trainables.cli import EXIT_NONE_FINISHED, EXIT_OK

# the config keys that name a trial's setting in the best line and the parent's best.* tags
BEST_KEYS = ("model", "model_kwargs", "batch_size", "epochs", "class_weights", "augment")


def config_of(result) -> dict:
    """A Result's trial config: from its last result, or, for a trial that failed before its
    first (a worker that could not start), from the params.json Tune wrote in its folder when
    it started it, so that it is named as its MLflow run is, never ``trial-bNone-eNone``."""
    if result.config:
        return result.config
    params = Path(result.path) / "params.json" if result.path else None
    if params is not None and params.is_file():
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(params.read_text())
            if isinstance(loaded, dict):
                return loaded
    return {}


def trial_rows(results, metric: str, columns, cut: dict | None = None
               ) -> tuple[list, list, list]:
    """(table rows, finished (best, config, result), failed (trial, why)) of Tune's results;
    trials named as their MLflow runs are. ``cut``: the trials a time budget cut (trial id ->
    the epoch each reached, search/clock.py), neither finished nor failed."""
    rows, finished, failed = [], [], []
    for r in results:
        cfg, m = config_of(r), r.metrics or {}
        name = trial_run_name(trial_id(r) or "", cfg)
        df = r.metrics_dataframe
        best = df[metric].max() if df is not None and metric in df else float("nan")
        epoch = int(m.get("epoch", 0))
        if (cut or {}).get(trial_id(r), -1) >= 0:
            rows.append(([cfg.get(k) for k in columns],
                         f"cut at {epoch} (budget)" if epoch else "not started (budget)",
                         best, name))
            continue
        if r.error is not None:
            status = "FAILED"
            failed.append((name, str(r.error).strip().splitlines()[-1][:200]))
        elif epoch < int(cfg.get("epochs", 0)):
            status = f"stopped at {epoch}"
        else:
            status = "finished"
        if r.error is None:
            finished.append((best, cfg, r))
        rows.append(([cfg.get(k) for k in columns], status, best, name))
    return rows, finished, failed


def print_table(rows, failed, metric: str, columns) -> None:
    width = max(6, *(len(k) for k in columns))
    names = max([5, *(len(t[3]) for t in rows)])
    status = max([16, *(len(t[1]) for t in rows)])
    print(f"\n{'trial':<{names}}  " + " ".join(f"{k:>{width}}" for k in columns) +
          f"  {'status':<{status}} {'best ' + metric:>12}")
    for values, s, v, name in sorted(rows, key=lambda t: [x or 0 for x in t[0]]):
        cells = " ".join(f"{cell(x):>{width}}" for x in values)
        print(f"{name:<{names}}  {cells}  {s:<{status}} {v:>12.4f}")
    if failed:
        print("\nfailed trials:")
        for name, why in failed:
            print(f"  {name}: {why}")


def summarise(results, parent_id: str, search, opened: Opened) -> int:
    """Print the trial table, the best config, failures and where to look; close the parent."""
    metric, cols = search.metric, search.columns
    client, ws = opened.client, opened.ws
    rows, finished, failed = trial_rows(results, metric, cols, opened.context.clock.cut)
    print_table(rows, failed, metric, cols)
    keys = (*BEST_KEYS, *(k for k in cols if k not in ("batch_size", "epochs")))
    best, cfg = math.nan, {}
    if finished:
        # ties go to the first trial by id, so a resumed search names the same winner
        finished.sort(key=lambda t: str((t[2].metrics or {}).get("trial_id", "")))
        best, cfg, _ = max(finished, key=lambda t: t[0])
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

    opened.offline.tracked(ws.tracking_uri, record)
    if search.resources:
        print(f"resources: each trial took {resource_text(search.resources)}"
              + grown_text(results, search.resources[0]))
    if opened.context.footers:
        print()
        where_to_look(ws.tracking_uri, opened.dashboard)
    return EXIT_OK if finished else EXIT_NONE_FINISHED


def grown_text(results, cpus: float) -> str:
    """How many trials went on with the cores of trials that had ended (search/spare.py), by
    the threads of their last result."""
    grown = [int((r.metrics or {}).get("threads", 0)) for r in results
             if (r.metrics or {}).get("threads", 0) > cpus]
    if not grown:
        return ""
    most = max(grown)
    return (f"; {len(grown)} trial{'s' if len(grown) > 1 else ''} went on with up to {most} "
            "CPUs once the others had ended (spare cores)")


def resource_text(resources: tuple[float, float]) -> str:
    cpus, gpus = resources
    return f"{cpus:g} CPU" + (f" and {gpus:g} GPU" if gpus else "")


def where_to_look(tracking_uri: str, dashboard: str | None, **more: str | None) -> None:
    """The footer of a search and of the pipeline: ``more`` lines (label=value) first, then
    MLflow and the Ray dashboard."""
    for label, value in more.items():
        if value:
            print(f"{label.replace('_', ' ') + ':':<16}{value}")
    if tracking_uri.startswith("sqlite:"):
        print(f"MLflow UI:      mlflow ui --backend-store-uri {tracking_uri} "
              "--host 127.0.0.1 --port 5000   (then http://127.0.0.1:5000)")
    else:
        print(f"MLflow:         {redact(tracking_uri)}")
    if dashboard:
        print(f"Ray dashboard:  {dashboard} while this command runs (token authentication is on: "
              "`ray get-auth-token` prints the token it asks for)")
    else:
        print("Ray dashboard:  none (the cluster ran without one: --no-dashboard)")


def winner(run) -> dict:
    """Batch size, epochs and width of a finished search's best trial, and its val_acc, from
    its parent run's best.* tags (summarise)."""
    tags = run.data.tags
    width = tags.get("best.model_kwargs.width")
    return {"batch_size": int(tags["best.batch_size"]), "epochs": int(tags["best.epochs"]),
            "width": int(width) if width not in (None, "None") else None,
            "val_acc": run.data.metrics.get("best_val_acc")}


def grid_defaults(client, model: str, profile: str) -> dict:
    """Batch size, epochs and width of the best trial of the latest finished grid experiment
    for ``model`` and ``profile`` in this tracking store; {} when there is none."""
    ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return {}
    runs = client.search_runs(
        ids, f"tags.kind = 'grid' and tags.model = '{model}' and tags.profile = '{profile}' "
        "and attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
        max_results=20)
    for run in runs:
        if "best.batch_size" in run.data.tags and "best.epochs" in run.data.tags:
            found = winner(run)
            return {**found, "from": f"{client.get_experiment(run.info.experiment_id).name} "
                                     f"(best val_acc {found['val_acc'] or 0:.4f})"}
    return {}
