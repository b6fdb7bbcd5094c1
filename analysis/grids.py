"""The grids' trials, ASHA's rungs and the cost of the searches a report covers, read back from
MLflow (the heat maps, the survival figure and the search-cost table of the report): plain rows,
which analysis/summary.py turns into numbers."""

from __future__ import annotations

from search.kinds import search_parent
from search.rungs import rung_epochs

# the per-epoch metrics a trial's cost is counted from (trainables/trainable.py ``step``); val_acc
# marks the epochs logged by runs older than all of them
COST_METRICS = ("val_acc", "epochs_computed", "shared", "warmup_reused", "branch_epoch",
                "train_seconds", "val_seconds", "threads")


def grid_rows(client, experiments) -> tuple[dict, dict]:
    """Per model, the grid trials (batch size, epochs, best val acc, where ASHA stopped them);
    per search experiment, the ASHA rungs with the trials that reached and passed each."""
    grids, survival = {}, {}
    for exp in experiments:
        runs = client.search_runs([exp.experiment_id], max_results=50_000)
        parents = {r.info.run_id: r for r in runs if search_parent(r.data.tags)}
        trials = [r for r in runs if r.data.tags.get("kind") == "trial"
                  and r.data.tags.get("mlflow.parentRunId") in parents]
        for r in trials:
            parent = parents[r.data.tags["mlflow.parentRunId"]]
            if parent.data.tags["kind"] != "grid" or "best_val_acc" not in r.data.tags:
                continue
            stopped = r.data.tags.get("stopped_at_epoch")
            grids.setdefault(r.data.params.get("model", "?"), []).append({
                "batch_size": int(r.data.params["batch_size"]),
                "epochs": int(r.data.params["epochs"]),
                "val_acc": float(r.data.tags["best_val_acc"]),
                "stopped_at": int(stopped) if stopped else None})
        for pid, parent in parents.items():
            g, rf = parent.data.params.get("grace_period"), parent.data.params.get(
                "reduction_factor")
            if g in (None, "None") or rf in (None, "None"):
                continue
            reached_by = []
            for r in trials:
                if r.data.tags.get("mlflow.parentRunId") != pid or \
                        r.info.status != "FINISHED":
                    continue
                epochs = int(r.data.params["epochs"])
                last = int(r.data.tags.get("stopped_at_epoch") or epochs)
                reached_by.append((epochs, last))
            counts: dict[int, list[int]] = {}
            for epochs, last in reached_by:  # the rungs of the trial's own length group
                for m in rung_epochs(epochs, int(g), float(rf)):
                    c = counts.setdefault(m, [0, 0])
                    c[0] += last >= m
                    c[1] += last > m
            survival[exp.name] = [(m, r, p) for m, (r, p) in sorted(counts.items())]
    return grids, survival


def cost_rows(client, experiments) -> list[dict]:
    """Every grid and weights search (parent run) of ``experiments``: its times and status,
    and each of its trial runs with what its cost is counted from (``trial_cost_row``)."""
    out = []
    for exp in experiments:
        runs = client.search_runs([exp.experiment_id], max_results=50_000)
        for parent in runs:
            if not search_parent(parent.data.tags):
                continue
            trials = [trial_cost_row(client, r) for r in runs
                      if r.data.tags.get("kind") == "trial" and
                      r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
            out.append({"experiment": exp.name, "kind": parent.data.tags["kind"],
                        "run_id": parent.info.run_id, "run_name": parent.info.run_name,
                        "status": parent.info.status, "start_ms": parent.info.start_time,
                        "cpus": _float(parent.data.params.get("cluster_cpus")),
                        "end_ms": parent.info.end_time, "trials": trials,
                        "budget": budget_of(parent)})
    return sorted(out, key=lambda s: (s["experiment"], s["start_ms"] or 0, s["run_id"]))


def budget_of(parent) -> dict | None:
    """A search's time budget as its parent run recorded it (search/budget.py ``Fit.params``,
    search/driver.py ``cut_by_budget``): the budget and its plan's estimate in seconds (its
    start's: MLflow keeps a param's first value), what the plan left out, what the clock cut;
    None for a search run without one."""
    params, tags = parent.data.params, parent.data.tags
    if "budget_seconds" not in params:
        return None
    return {"seconds": _float(params["budget_seconds"]),
            "plan_seconds": _float(params.get("budget_plan_seconds")),
            "left_out": params.get("budget_left_out") or "nothing",
            "cut": tags.get("time_budget_cut")}


def trial_cost_row(client, run) -> dict:
    """A trial run as plain values: its length and warm-up (params), whether and where ASHA
    stopped it, its ``warmup_reused`` tag (runs older than the per-epoch flags), and its
    per-epoch cost metrics by epoch."""
    tags, params = run.data.tags, run.data.params
    per_epoch: dict[int, dict[str, float]] = {}
    for key in COST_METRICS:
        for m in client.get_metric_history(run.info.run_id, key):
            per_epoch.setdefault(int(m.step), {})[key] = float(m.value)
    reused = tags.get("warmup_reused")
    return {"run_id": run.info.run_id, "status": run.info.status,
            "epochs": _int(params.get("epochs")),
            "warmup_epochs": _int(params.get("warmup_epochs")) or 0,
            "stopped_by": tags.get("stopped_by"),
            "stopped_at": _int(tags.get("stopped_at_epoch")),
            "warmup_reused": None if reused is None else reused.lower() == "true",
            "per_epoch": per_epoch}


def _float(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _int(text) -> int | None:
    try:
        return int(float(text))
    except (TypeError, ValueError):
        return None
