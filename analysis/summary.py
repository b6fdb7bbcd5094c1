"""What a report says, computed: the members' fusion and every number of the summary.

``fuse_members`` applies the fusion method (one of analysis/methods/: the seed's average,
given weights, Caruana's greedy selection, NLL-fitted weights) to the members' probabilities,
each temperature-scaled first where asked, then scales the fused output by a temperature of its
own; ``summarise`` is a pure function from the fused members to the summary (summary.json) that
analysis/render.py writes out. Selection and fitting use the validation set
only; the test set is only scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis import fusion, methods

# docs/seed.md, "Evaluation": the seed's own validation and test accuracies.
SEED_RESULTS = (("4-CNN", 0.8963, 0.8953), ("ResNet", 0.9128, 0.8860),
                ("Inception", 0.9097, 0.9006), ("Model fusion (4 models)", 0.9172, 0.9033))


@dataclass
class Fused:
    """The fusion of some candidates: who, with which weights and temperatures, and the fused
    probabilities."""

    method: str
    calibrated: bool
    members: list  # Candidates (analysis/select.py), the heaviest first for greedy
    weights: list[float]
    temperatures: dict[str, float]  # run id -> temperature (1.0 uncalibrated)
    scaled: dict[str, tuple[np.ndarray, np.ndarray]]  # run id -> (val, test) probabilities
    val: np.ndarray
    test: np.ndarray
    # The fused output's own temperature, fitted on validation after the fusion (averaging
    # softens: a fusion of sharp members is under-confident); it never changes a label.
    fused_temperature: float = 1.0


def fuse_members(pool: list, members: list, weights: list[float] | None,
                 probs: dict[str, tuple[np.ndarray, np.ndarray]], y_val: np.ndarray,
                 method: str, calibrate: bool) -> Fused:
    """Fuse ``members`` (or, for a method that weighs every candidate, the members its fit
    weighs in ``pool``) by the registered ``method`` (analysis/methods/); ``weights`` only for
    one that takes --weights. Fitted on validation only."""
    how = methods.method(method)
    temps = {c.run_id: fusion.fit_temperature(probs[c.run_id][0], y_val) if calibrate
             else 1.0 for c in pool}
    scaled = {rid: tuple(fusion.apply_temperature(p, temps[rid]) for p in pair)
              if calibrate else pair for rid, pair in probs.items()}
    weighed = pool if how.pooled else members
    w = how.fit([scaled[c.run_id][0] for c in weighed], y_val, weights)
    kept = range(len(weighed))
    if how.pooled:  # the candidates it gave a weight, the heaviest first
        kept = sorted((i for i in kept if w[i] > 0), key=lambda i: (-w[i], i))
    members = [weighed[i] for i in kept]
    weights = [float(w[i]) for i in kept]
    val = fusion.fuse([scaled[c.run_id][0] for c in members], weights)
    test = fusion.fuse([scaled[c.run_id][1] for c in members], weights)
    t = fusion.fit_temperature(val, y_val)
    return Fused(method, calibrate, members, weights, temps, scaled,
                 fusion.apply_temperature(val, t), fusion.apply_temperature(test, t), t)


def summarise(fused: Fused, best, y_val: np.ndarray, y_test: np.ndarray, bootstrap: int,
              context: dict, checkpoints: dict[str, str]) -> dict:
    """The report's summary: each member's and the fusion's scores on validation and test,
    and the fusion's test gain over ``best`` (the best candidate on validation) with its
    paired bootstrap interval. ``context`` (name, data, selection, ...) is copied in;
    ``checkpoints`` maps run ids to the local checkpoint files."""
    test_best = fused.scaled[best.run_id][1]
    gain, lo, hi = fusion.bootstrap_difference(fused.test, test_best, y_test, n=bootstrap)
    best_test = fusion.scores(test_best, y_test)
    ece_gap = fusion.bootstrap_ece_difference(fused.test, test_best, y_test, n=bootstrap)
    rows = []
    for c, w in zip(fused.members, fused.weights, strict=True):
        val_p, test_p = fused.scaled[c.run_id]
        v, t = fusion.scores(val_p, y_val), fusion.scores(test_p, y_test)
        rows.append({
            "run_id": c.run_id, "experiment": c.experiment, "kind": c.kind, "model": c.model,
            "label": c.label, "config": c.params, "checkpoint": checkpoints[c.run_id],
            "artifact": f"runs:/{c.run_id}/{c.checkpoint}", "epoch": c.epoch,
            "recorded_val_acc": c.val_acc, "val_acc": v["acc"], "test_acc": t["acc"],
            "weight": w, "temperature": fused.temperatures[c.run_id], "val": v, "test": t})
    ev, et = fusion.scores(fused.val, y_val), fusion.scores(fused.test, y_test)
    return {
        **context,
        "members": rows,
        "best_member": best.label,
        "fusion": {"method": fused.method, "calibrated": fused.calibrated,
                   "weights": fused.weights, "val_acc": ev["acc"], "test_acc": et["acc"],
                   "val": ev, "test": et, "test_gain": gain, "test_gain_interval": [lo, hi],
                   "bootstrap": bootstrap, "best_member_run_id": best.run_id,
                   "temperature": fused.fused_temperature,
                   "best_member_test": {k: best_test[k] for k in ("acc", "nll", "ece")},
                   "test_ece_difference": list(ece_gap)},
        "seed": [{"model": n, "val_acc": v, "test_acc": t} for n, v, t in SEED_RESULTS],
    }


# --- the search cost --------------------------------------------------------------------------
# What a trial's computed epochs are counted from, best first (trial_cost): the per-epoch
# epochs_computed; else its logged epochs less those taken from a trunk, as the per-epoch
# ``shared`` flag, the per-epoch ``warmup_reused`` flag or the run's ``warmup_reused`` tag (the
# whole warm-up) says; else every logged epoch.
COUNTED_FROM = ("epochs_computed", "shared", "warmup_reused", "warmup_reused_tag", "logged")


def shared_epochs(trial: dict) -> tuple[set[int], str]:
    """The logged epochs of ``trial`` (analysis/grids.py ``trial_cost_row``) that it took
    from a shared trunk or warm-up instead of computing them, and what says so. Runs whose
    flags did not reach MLflow but whose ``epochs_computed`` did: the epochs up to the branch
    epoch that none of its steps computed."""
    per = trial["per_epoch"]
    for key in ("shared", "warmup_reused"):
        if any(key in v for v in per.values()):
            return {e for e, v in per.items() if v.get(key) == 1}, key
    warmup = trial.get("warmup_epochs") or 0
    if any("epochs_computed" in v for v in per.values()):
        return {e for e, v in per.items() if v.get("epochs_computed") == 0 and
                e <= v.get("branch_epoch", warmup)}, "epochs_computed"
    if trial.get("warmup_reused") is not None:  # the tag: the warm-up reused or not
        return {e for e in per if trial["warmup_reused"] and e <= warmup}, "warmup_reused_tag"
    return set(), "logged"


def busy_seconds(per_epoch: dict) -> dict:
    """A trial's core-seconds in its training and validation steps: each epoch it computed,
    (train_seconds + val_seconds) x the threads it ran on; ``busy_validation``: whether every
    such epoch recorded its validation time (runs before val_seconds count training only)."""
    steps = [v for v in per_epoch.values()
             if v.get("epochs_computed", 1) != 0 and "train_seconds" in v]
    return {"busy_core_seconds": sum((v["train_seconds"] + v.get("val_seconds", 0.0)) *
                                     v.get("threads", 1.0) for v in steps),
            "busy_validation": all("val_seconds" in v for v in steps)}


def busy_fraction(core_seconds: float, wall: float | None, cpus: float | None) -> float | None:
    """Core-seconds in training and validation steps over wall time x the search's cores
    (None when either is unknown: a run still open, or recorded before its cores were)."""
    return core_seconds / (wall * cpus) if wall and cpus else None


def trial_cost(trial: dict) -> dict:
    """One trial's epochs: its length (what an exhaustive run computes), those computed, and
    those saved by shared warm-ups, shared trunks (after the warm-up) and ASHA."""
    per = trial["per_epoch"]
    logged = sorted(per)
    shared, source = shared_epochs(trial)
    counted = bool(logged) and all("epochs_computed" in per[e] for e in logged)
    computed = sum(round(per[e]["epochs_computed"]) if "epochs_computed" in per[e]
                   else int(e not in shared) for e in logged)
    epochs = trial.get("epochs") or (logged[-1] if logged else 0)
    warmup = trial.get("warmup_epochs") or 0
    asha = 0
    if trial.get("stopped_by") == "asha":
        last = trial.get("stopped_at") or (logged[-1] if logged else 0)
        asha = max(0, epochs - last)
    return {"exhaustive": epochs, "computed": computed, **busy_seconds(per),
            "shared_warmup": sum(e <= warmup for e in shared),
            "shared_trunk": sum(e > warmup for e in shared), "asha": asha,
            "counted_from": "epochs_computed" if counted else
            ("logged" if source == "epochs_computed" else source)}


def search_cost(search: dict) -> dict:
    """One search (analysis/grids.py ``cost_rows``): its trials, the epochs an exhaustive run
    of them computes and those computed, what each kind of sharing and ASHA saved, the
    ratio, and its wall time (None while its run is open)."""
    costs = [trial_cost(t) for t in search["trials"]]
    total = {k: sum(c[k] for c in costs) for k in ("exhaustive", "computed", "shared_warmup",
                                                   "shared_trunk", "asha")}
    running = search["status"] == "RUNNING" or not search.get("end_ms")
    wall = None if running or not search.get("start_ms") else \
        (search["end_ms"] - search["start_ms"]) / 1000
    busy = sum(c["busy_core_seconds"] for c in costs)
    return {"experiment": search["experiment"], "kind": search["kind"],
            "run_id": search["run_id"], "run_name": search.get("run_name"),
            "status": search["status"], "trials": len(costs),
            "stopped_by_asha": sum(t.get("stopped_by") == "asha" for t in search["trials"]),
            **_cost_numbers(total), "wall_seconds": wall, "running": running,
            "cpus": search.get("cpus"), "busy_core_seconds": busy,
            "busy": busy_fraction(busy, wall, search.get("cpus")),
            "busy_validation": all(c["busy_validation"] for c in costs),
            "budget": search.get("budget"),
            "counted_from": {k: n for k in COUNTED_FROM
                             if (n := sum(c["counted_from"] == k for c in costs))}}


def search_costs(searches: list[dict]) -> dict:
    """Every search's cost (``search_cost``), and their total: the searches one after the
    other (its wall time None when any is still open)."""
    rows = [search_cost(s) for s in searches]
    total = {k: sum(r[f"{k}_epochs"] for r in rows) for k in ("exhaustive", "computed")}
    total.update({k: sum(r["saved_epochs"][k] for r in rows)
                  for k in ("shared_warmup", "shared_trunk", "asha")})
    running = any(r["running"] for r in rows)
    wall = None if running else sum(r["wall_seconds"] or 0 for r in rows)
    busy = sum(r["busy_core_seconds"] for r in rows)
    known = not running and all(r["cpus"] for r in rows)  # each search's wall x its cores
    core_wall = sum(r["wall_seconds"] * r["cpus"] for r in rows) if known else None
    return {"searches": rows, "total": {
        "searches": len(rows), "trials": sum(r["trials"] for r in rows),
        "stopped_by_asha": sum(r["stopped_by_asha"] for r in rows), **_cost_numbers(total),
        "wall_seconds": wall, "running": running, "busy_core_seconds": busy,
        "busy": busy_fraction(busy, core_wall, 1.0),
        "busy_validation": all(r["busy_validation"] for r in rows)}}


def _cost_numbers(total: dict) -> dict:
    return {"exhaustive_epochs": total["exhaustive"], "computed_epochs": total["computed"],
            "ratio": total["computed"] / total["exhaustive"] if total["exhaustive"] else None,
            "saved_epochs": {k: total[k] for k in ("shared_warmup", "shared_trunk", "asha")}}
