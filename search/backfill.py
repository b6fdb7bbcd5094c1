"""Record in MLflow what a search's Tune results hold and its runs lack (``--resume``).

After a tracking server went away mid-search (search/offline.py), Tune's results and kept
checkpoints hold everything MLflow missed. A resumed search reconciles every trial's Result
with its child run (found by its ``trial_id`` tag under the parent run, created if missing):
the epochs not logged yet (step = epoch), the best epoch's metrics, the best checkpoint and
the final status. It only adds what is missing, so it is a no-op for a complete experiment and
never creates a second run for a trial or logs an epoch twice. A run completed this way is
tagged ``backfilled``.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

from mlflow.entities import Metric, RunTag

from search.context import Opened
from search.records import (
    BEST_KEYS,
    asha_tags,
    log_datasets,
    log_params,
    new_trial_run,
    record_end,
    scalar_metrics,
)

BATCH = 1000  # MLflow's limit of metrics per log_batch


# Tune's trial folders: NAME_<trial id>_<index>_<config>_<date>; a grid's trial ids are
# <5 hex>_<5 digits>, a searcher's (Trial.generate_id) 8 hex digits
TRIAL_FOLDER = re.compile(r"^[A-Za-z0-9]+_([0-9a-f]{5}_\d{5}|[0-9a-f]{8})_\d+(?:_|$)")


def trial_id(result) -> str | None:
    """The id of the trial a Result belongs to, from its own folder: its metrics may be
    another trial's (a trial that failed before its first result on a reused actor carries the
    previous trial's), so they count only when the folder says nothing."""
    m = TRIAL_FOLDER.search(Path(result.path).name) if result.path else None
    if m:
        return m.group(1)
    tid = (result.metrics or {}).get("trial_id")
    return str(tid) if tid else None


def epochs(result) -> dict[int, dict]:
    """Every reported epoch's numbers, by epoch (a restored trial may repeat one: last wins)."""
    df = result.metrics_dataframe
    if df is None or df.empty:
        return {}
    out = {}
    for row in df.to_dict("records"):
        row = {k: v.item() if hasattr(v, "item") else v for k, v in row.items()}
        epoch = row.get("epoch", row.get("training_iteration"))
        if isinstance(epoch, int | float) and math.isfinite(epoch):
            out[int(epoch)] = row
    return out


def kept_checkpoint(result, metric: str) -> tuple[str | None, dict]:
    """The folder and metrics of the trial's kept (best) checkpoint."""
    kept = [(c, m) for c, m in (result.best_checkpoints or []) if c is not None]
    if not kept:
        return None, {}
    ckpt, m = max(kept, key=lambda t: (t[1].get(metric, -math.inf), -t[1].get("epoch", 0)))
    return ckpt.path, m


def catch_up(opened: Opened, search, results, parent_id: str,
             datasets: list[dict] | None = None) -> None:
    """``backfill``, through search/offline.py's guard; one line when it added anything."""
    added = opened.offline.tracked(opened.ws.tracking_uri, backfill, results, opened.client,
                                   opened.experiment_id, parent_id, search.metric,
                                   search.scheduler, datasets=datasets)
    if added and any(added.values()):
        print(f"experiment {search.name}: recorded in MLflow what it had missed: "
              f"{added['epochs']} epoch(s), {added['runs']} new trial run(s), "
              f"{added['closed']} trial run(s) completed", flush=True)


def backfill(results, client, experiment_id: str, parent_id: str, metric: str,
             scheduler=None, datasets: list[dict] | None = None) -> dict[str, int]:
    """Reconcile every result with its child run; returns what was added."""
    done = {"runs": 0, "epochs": 0, "closed": 0}
    children = client.search_runs([experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent_id}'",
                                  max_results=50_000)
    runs = {}
    for r in sorted(children, key=lambda r: r.info.start_time or 0):
        runs.setdefault(r.data.tags.get("trial_id"), r)
    for result in results:
        tid = trial_id(result)
        if tid is None:
            continue
        config = result.config or {}
        run = runs.get(tid)
        if run is None:
            run = new_trial_run(client, experiment_id, parent_id, tid, config)
            done["runs"] += 1
        log_datasets(client, run.info.run_id, datasets)  # (if it has none yet)
        if not run.data.params:  # new, or created by a driver killed before its params
            log_params(client, run.info.run_id, config)
        run_id = run.info.run_id
        rows = epochs(result)
        fast = next((row["fast_path"] for row in rows.values() if row.get("fast_path")), None)
        if fast and "fast_path" not in run.data.params:
            client.log_param(run_id, "fast_path", str(fast))
        logged = {m.step for m in client.get_metric_history(run_id, "epoch")}
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, e) for e, row in sorted(rows.items()) if e not in logged
                   for k, v in scalar_metrics(row).items()]
        tags = [RunTag("warmup_reused", str(rows[1].get("warmup_reused", False)).lower())] \
            if 1 in rows and 1 not in logged else []
        for i in range(0, len(metrics), BATCH):
            client.log_batch(run_id, metrics=metrics[i:i + BATCH],
                             tags=tags if i == 0 else [])
        added = len({e for e in rows if e not in logged})
        done["epochs"] += added
        if not _needs_closing(run, result, rows, metric):
            continue
        checkpoint, at_ckpt = kept_checkpoint(result, metric)
        best = _best(rows, metric, at_ckpt)
        best_row = rows.get(best[1], {}) if best else {}
        extra = {"backfilled": "true"}
        status = "FINISHED"
        if result.error is not None:
            status = "FAILED"
            lines = [ln for ln in str(result.error).splitlines() if ln.strip()]
            extra["error"] = lines[-1][:500] if lines else "trial failed"
        stop = getattr(scheduler, "stops", {}).get(tid)
        last = max(rows, default=0)
        if stop:
            extra.update(asha_tags(stop))
        elif scheduler is not None and status == "FINISHED" and \
                last < int(config.get("epochs", last)):
            extra.update(stopped_by="asha", stopped_at_epoch=str(last),
                         stop_reason=f"stopped by ASHA at epoch {last} (recorded on --resume;"
                                     " the rung's comparison was not kept)")
        record_end(client, run_id, status, metric, best,
                   {k: best_row.get(k) for k in BEST_KEYS},
                   checkpoint if best and at_ckpt.get("epoch") == best[1] else None, extra)
        done["closed"] += 1
    return done


def _best(rows: dict[int, dict], metric: str, at_ckpt: dict) -> tuple[float, int] | None:
    """(value, epoch) of the best epoch: the kept checkpoint's on a tie, else the first."""
    scored = [(row[metric], e) for e, row in rows.items()
              if isinstance(row.get(metric), int | float) and math.isfinite(row[metric])]
    if not scored:
        return None
    value = max(v for v, _ in scored)
    if at_ckpt.get(metric) == value and "epoch" in at_ckpt:
        return float(value), int(at_ckpt["epoch"])
    return float(value), min(e for v, e in scored if v == value)


def _needs_closing(run, result, rows: dict, metric: str) -> bool:
    """Whether the run lacks its end: a status, the best epoch, the best checkpoint."""
    if run.info.status in ("RUNNING", "SCHEDULED"):
        return True
    if run.info.status == "KILLED" and "interrupted" in run.data.tags:
        return True  # closed by an interruption, then finished by Tune unseen
    tags = run.data.tags
    if any(metric in row for row in rows.values()) and "best_epoch" not in tags:
        return True
    return bool(result.best_checkpoints) and "best_checkpoint" not in tags and \
        result.error is None
