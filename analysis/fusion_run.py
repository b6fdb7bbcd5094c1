"""One report's run, once its members are chosen (analysis/report.py ``select``): the
candidates' probabilities, the fusion and its summary, the figures and pages written into a
staging folder, the MLflow run with the registered ensemble, the folder moved into place, and
what the fusion bought on the terminal."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from tqdm import tqdm

from analysis import figures as fig
from analysis import methods, render
from analysis.grids import cost_rows, grid_rows
from analysis.inference import cached_probs
from analysis.publish import (
    FUSION_EXPERIMENT,
    ended,
    fetch_checkpoint,
    log_to_mlflow,
    publish,
    staging,
)
from analysis.readings import headline_lines, seed_table_text
from analysis.select import Selection
from analysis.summary import Fused, fuse_members, search_costs, summarise
from search.workspace import redact
from trainables.classes import CLASSES
from trainables.cli import EXIT_OK


def member_probs(sel: Selection, pool: list, device: str, tta: str = "none"
                 ) -> tuple[dict, dict]:
    """Each candidate's (val, test) probabilities and its local checkpoint, by run id."""
    probs, paths = {}, {}
    for cand in tqdm(pool, desc="member inference", unit="model", file=sys.stdout,
                     disable=None):
        paths[cand.run_id] = fetch_checkpoint(sel.client, sel.ws, cand)
        probs[cand.run_id] = cached_probs(sel.ws.root / "cache" / "probs", paths[cand.run_id],
                                          sel.split, device, tta)
    return probs, paths


def make(options, name: str, sel: Selection) -> int:
    """Fuse ``sel``'s members as ``options`` (analysis/report.py ReportOptions) say, write the
    report ``name`` and its MLflow run; the exit code."""
    ws, client, split = sel.ws, sel.client, sel.split
    if sel.others:
        print(f"note: {len(sel.others)} candidate(s) trained on other data (another "
              "--train-size or --seed) are left out: fusion needs one validation set")
    pool = sel.group if methods.method(options.method).pooled else sel.members
    y_val, y_test = split.y_val.numpy(), split.y_test.numpy()
    probs, paths = member_probs(sel, pool, options.device, options.tta)
    fused = fuse_members(pool, sel.members, sel.weights, probs, y_val, options.method,
                         options.calibrate)
    best = sel.group[0]  # the best single candidate on validation
    context = {
        "name": name, "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "workspace": str(ws.root), "tracking_uri": redact(ws.tracking_uri),
        "experiments": sel.names or sorted({c.experiment for c in sel.group}),
        "data": {"fingerprint": split.fingerprint, "val_images": len(y_val),
                 "test_images": len(y_test), "train_size": split.train_size,
                 "seed": split.seed},
        "selection": {"top_k": options.top_k, "per_model_cap": options.per_model_cap,
                      "candidates": len(sel.group), "left_out_other_data": len(sel.others),
                      "ranked_by": "validation accuracy of each trial's best checkpoint"},
        "tta": options.tta}
    summary = summarise(fused, best, y_val, y_test, options.bootstrap, context,
                        {rid: str(p) for rid, p in paths.items()})
    final = ws.root / "reports" / name
    out = staging(final)  # written here, moved into place once complete (publish)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    write(out, summary, fused, y_test, client)
    run_id, model_uri = log_to_mlflow(options, ws, client, summary, out, fused, paths)
    summary["mlflow"] = {"run_id": run_id, "model_uri": model_uri}
    try:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        client.log_artifact(run_id, str(out / "summary.json"), "report")
        publish(out, final)
    except BaseException as e:  # its report never came; not left RUNNING
        client.set_terminated(run_id, ended(e))
        raise
    client.set_terminated(run_id, "FINISHED")
    print_result(summary, final, run_id, model_uri)
    return EXIT_OK


def write(out: Path, summary: dict, fused: Fused, y_test, client) -> None:
    """The figures, report.md, report.html and summary.json, into ``out``."""
    figures = {}
    title = f"fusion ({fused.method}), test set"
    figures["roc"], aucs = fig.plot_roc(fused.test, y_test, CLASSES, out / "roc.png",
                                        "ROC, one vs rest: " + title)
    figures["precision_recall"], aps = fig.plot_pr(fused.test, y_test, CLASSES, out / "pr.png",
                                                   "precision / recall: " + title)
    figures["confusion"] = fig.plot_confusion(fused.test, y_test, CLASSES,
                                              out / "confusion.png", "confusion matrix: " + title)
    curves = {m["label"]: fused.scaled[m["run_id"]][1] for m in summary["members"]}
    curves["fusion"] = fused.test
    figures["reliability"] = fig.plot_reliability(curves, y_test, out / "reliability.png",
                                                  "reliability, test set")
    exps = [e for e in map(client.get_experiment_by_name, summary["experiments"]) if e]
    grids, survival = grid_rows(client, exps)
    heat = fig.plot_grid_heatmaps(grids, out / "grid_heatmap.png")
    if heat:
        figures["grid_heatmap"] = heat
    asha = fig.plot_asha(survival, out / "asha_rungs.png")
    if asha:
        figures["asha_rungs"] = asha
    summary["fusion"]["test"]["roc_auc"] = aucs
    summary["fusion"]["test"]["average_precision"] = aps
    summary["asha_survival"] = {k: [{"rung": m, "reached": r, "continued": p}
                                    for m, r, p in v] for k, v in survival.items()}
    summary["search_cost"] = search_costs(cost_rows(client, exps))
    page = render.build(summary, figures)  # one model of the report, two renderings
    (out / "report.md").write_text(render.markdown(page))
    (out / "report.html").write_text(render.html(page))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


def print_result(summary: dict, final: Path, run_id: str, model_uri: str | None) -> None:
    print("\n" + "\n".join(headline_lines(summary)))
    print("\n" + seed_table_text(summary))
    print(f"\nreport:   {final / 'report.html'}")
    print(f"MLflow:   run {run_id} in experiment {FUSION_EXPERIMENT!r}" +
          (f"; model {model_uri}" if model_uri else ""))
