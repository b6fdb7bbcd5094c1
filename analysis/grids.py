"""The grids' trials and ASHA's rungs of the searches a report covers, read back from MLflow
(the heat maps and the survival figure of the report)."""

from __future__ import annotations

from search.rungs import rung_epochs


def grid_rows(client, experiments) -> tuple[dict, dict]:
    """Per model, the grid trials (batch size, epochs, best val acc, where ASHA stopped them);
    per search experiment, the ASHA rungs with the trials that reached and passed each."""
    grids, survival = {}, {}
    for exp in experiments:
        runs = client.search_runs([exp.experiment_id], max_results=50_000)
        parents = {r.info.run_id: r for r in runs if r.data.tags.get("kind") in
                   ("grid", "weights")}
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
