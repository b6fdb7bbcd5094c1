"""What a report says, computed: the members' fusion and every number of the summary.

``fuse_members`` applies the fusion method to the members' probabilities (temperature scaling,
Caruana's greedy selection, weights); ``summarise`` is a pure function from the fused members to
the summary (summary.json) that analysis/render.py writes out. Selection and fitting use the
validation set only; the test set is only scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis import fusion

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


def fuse_members(pool: list, members: list, weights: list[float] | None,
                 probs: dict[str, tuple[np.ndarray, np.ndarray]], y_val: np.ndarray,
                 method: str, calibrate: bool) -> Fused:
    """Fuse ``members`` (or, for greedy, the members Caruana's selection picks from ``pool``)
    by ``method``; ``weights`` only for "weighted". Fitted on validation only."""
    temps = {c.run_id: fusion.fit_temperature(probs[c.run_id][0], y_val) if calibrate
             else 1.0 for c in pool}
    scaled = {rid: tuple(fusion.apply_temperature(p, temps[rid]) for p in pair)
              if calibrate else pair for rid, pair in probs.items()}
    if method == "greedy":
        w_pool = fusion.greedy_weights([scaled[c.run_id][0] for c in pool], y_val)
        chosen = sorted((i for i in range(len(pool)) if w_pool[i] > 0),
                        key=lambda i: (-w_pool[i], i))
        members = [pool[i] for i in chosen]
        weights = [float(w_pool[i]) for i in chosen]
    elif method == "uniform":
        weights = [1 / len(members)] * len(members)
    return Fused(method, calibrate, members, weights, temps, scaled,
                 fusion.fuse([scaled[c.run_id][0] for c in members], weights),
                 fusion.fuse([scaled[c.run_id][1] for c in members], weights))


def summarise(fused: Fused, best, y_val: np.ndarray, y_test: np.ndarray, bootstrap: int,
              context: dict, checkpoints: dict[str, str]) -> dict:
    """The report's summary: each member's and the fusion's scores on validation and test,
    and the fusion's test gain over ``best`` (the best candidate on validation) with its
    paired bootstrap interval. ``context`` (name, data, selection, ...) is copied in;
    ``checkpoints`` maps run ids to the local checkpoint files."""
    test_best = fused.scaled[best.run_id][1]
    gain, lo, hi = fusion.bootstrap_difference(fused.test, test_best, y_test, n=bootstrap)
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
                   "bootstrap": bootstrap, "best_member_run_id": best.run_id},
        "seed": [{"model": n, "val_acc": v, "test_acc": t} for n, v, t in SEED_RESULTS],
    }
