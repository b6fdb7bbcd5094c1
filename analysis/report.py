"""Pick the top checkpoints of the workspace's searches, fuse them, report, ship the ensemble.

    python -m analysis.report [--workspace outputs] [--top-k 4] [--per-model-cap N]
        [--method uniform|weighted|greedy|nll] [--weights 0.4,0.3,...] [--calibrate]
        [--experiments grid-cnn,weights-resnet18] [--name NAME]

Writes WORKSPACE/reports/NAME/: summary.json, report.md, a self-contained report.html and the
PNG figures (ROC and precision/recall curves per class, the confusion matrix, a reliability
diagram, the grids' val accuracy heat maps, ASHA survival per rung) with each search's cost in
epochs and wall time, logs all of it to an MLflow run in the experiment ``fusion`` tagged with
its members' run ids, and registers the fused model (an MLflow pyfunc) in the model registry.
Selection, weights and temperatures use the validation set only; the test set is only scored.
What is computed lives in analysis/summary.py, how it reads in analysis/render.py, where it
goes in analysis/publish.py.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from analysis import figures as fig
from analysis import fusion
from analysis.grids import cost_rows, grid_rows
from analysis.inference import TTA, cached_probs
from analysis.publish import (
    FUSION_EXPERIMENT,
    ended,
    fetch_checkpoint,
    log_to_mlflow,
    publish,
    staging,
)
from analysis.render import headline_lines, markdown, seed_table, to_html
from analysis.select import SelectionError, distinct, gather, same_data, top_k
from analysis.summary import Fused, fuse_members, search_costs, summarise
from search.workspace import Workspace, WorkspaceError, redact
from trainables.classes import CLASSES
from trainables.cli import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    ArgParser,
    at_least,
    exit_now,
    options_from,
    output,
)
from trainables.data import DataError, DataOptions, load_split
from trainables.engine import ConfigError, resolve_device
from trainables.files import write_reason
from trainables.flags import flag, parser_for


@dataclass(frozen=True)
class ReportOptions(DataOptions):
    """The flags of ``python -m analysis.report``, typed (--train-size and --seed are accepted
    with the data flags, unused: the members' own split is loaded)."""

    workspace: str = flag("outputs")
    tracking_uri: str | None = flag(None, help="MLflow tracking URI (default sqlite in "
                                    "workspace)")
    experiments: str | None = flag(None, help="comma-separated experiment names (default: every "
                                   "grid and weights experiment)")
    top_k: int = flag(4, type=int, help="members to fuse with uniform and weighted (default "
                      "%(default)s); greedy and nll weigh every candidate")
    per_model_cap: int | None = flag(None, type=int, help="at most N members per architecture")
    method: str = flag("uniform", choices=lambda: fusion.METHODS, help=(
        "uniform: the seed's average; weighted: --weights; greedy: Caruana selection over "
        "every candidate; nll: the weights over every candidate that minimise the fused "
        "validation log-loss"))
    weights: str | None = flag(None, help="comma-separated fusion weights, one per member "
                               "(--method weighted)")
    calibrate: bool = flag(False, action="store_true",
                           help="temperature-scale each member on validation first")
    tta: str = flag("none", choices=TTA, help="test-time augmentation of every member: flip "
                    "scores each image as the mean with its left-right mirror (default "
                    "%(default)s)")
    name: str | None = flag(None, help="report name (default fusion-DATE-TIME)")
    registered_name: str = flag("tunefuse-ensemble",
                                help="model registry name of the fused model")
    no_register: bool = flag(False, action="store_true", help="do not log the pyfunc model")
    bootstrap: int = flag(2000, type=at_least(1), help="bootstrap resamples")
    device: str = flag("auto", help="inference device: auto, cpu, cuda")


def parser() -> ArgParser:
    return parser_for(ReportOptions, prog="python -m analysis.report", description=(
        "Fuse the best checkpoints of the workspace's searches; report."))


def _weights_arg(text: str | None, k: int) -> list[float]:
    if not text:
        raise SelectionError(f"--method weighted needs --weights, one number per member "
                             f"({k}, as --top-k)")
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SelectionError(f"--weights must be numbers separated by commas, got {text!r}"
                             ) from None
    if len(values) != k:
        raise SelectionError(f"--weights has {len(values)} values for {k} members; give one "
                             "per member (--top-k)")
    try:
        return fusion.normalise(values).tolist()
    except ValueError:
        raise SelectionError(f"--weights must be finite, non-negative and not all zero, got "
                             f"{text!r}; e.g. 0.4,0.3,0.2,0.1") from None


@dataclass
class Selection:
    """The candidates a report fuses, chosen on validation, and the data they were scored on."""

    ws: Workspace
    client: object
    names: list[str] | None  # the experiments asked for (None: all)
    group: list  # the candidates on the best one's data, ranked
    others: list  # those trained on other data, left out
    members: list
    weights: list[float] | None  # --weights, for --method weighted
    split: object


def select(options: ReportOptions) -> Selection:
    """Choose the members; SelectionError (and the others below) for a report that cannot be
    made, before anything is written."""
    resolve_device(options.device)
    ws = Workspace.open(options.workspace, options.tracking_uri)
    client = ws.client()
    names = [n.strip() for n in options.experiments.split(",")] if options.experiments \
        else None
    candidates = gather(client, names)
    if not candidates:
        raise SelectionError(f"no finished trial with a checkpoint in "
                             f"{redact(ws.tracking_uri)}; run python -m search.grid first")
    group, others = same_data(candidates)
    unique = distinct(group)
    if len(unique) < len(group):
        print(f"note: {len(group) - len(unique)} candidate(s) kept a shared warm-up "
              "checkpoint another candidate already holds; each model is fused once")
    group = unique
    members = top_k(group, options.top_k, options.per_model_cap)
    weights = _weights_arg(options.weights, len(members)) if options.method == "weighted" \
        else None
    if options.method != "weighted" and options.weights:
        raise SelectionError("--weights is only for --method weighted")
    best = group[0]
    split = load_split(options.data_dir, best.train_size or None, best.seed, options.download)
    if split.fingerprint != best.fingerprint:
        raise SelectionError(
            f"the members were trained on data {best.fingerprint[:16]}, the data found "
            f"gives {split.fingerprint[:16]}; pass the --data-dir they were trained on")
    return Selection(ws, client, names, group, others, members, weights, split)


def run(options: ReportOptions) -> int:
    """Write the report; the exit code."""
    try:
        sel = select(options)
    except (WorkspaceError, SelectionError, DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    name = options.name or time.strftime("fusion-%Y%m%d-%H%M%S")
    try:
        return report(options, name, sel)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (trainables/cli.py): its run is KILLED
        print(f"\nreport {name} interrupted; nothing of it was published, earlier reports "
              "and runs are as they were: run it again", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:  # a full disk, a read-only reports folder: one line, nothing lost
        print(f"error: cannot write the report in {sel.ws.root} ({write_reason(e)}); earlier "
              "reports and runs are as they were: free space on that disk and run it again",
              file=sys.stderr)
        return EXIT_USAGE
    finally:  # nothing half-written stays behind
        shutil.rmtree(staging(sel.ws.root / "reports" / name), ignore_errors=True)


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


def report(options: ReportOptions, name: str, sel: Selection) -> int:
    ws, client, split = sel.ws, sel.client, sel.split
    if sel.others:
        print(f"note: {len(sel.others)} candidate(s) trained on other data (another "
              "--train-size or --seed) are left out: fusion needs one validation set")
    pool = sel.group if options.method in fusion.POOLED else sel.members
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
    run_id, model_uri = log_to_mlflow(options, ws, client, summary, out, fused.members,
                                      fused.weights, fused.temperatures, paths,
                                      fused.fused_temperature)
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
    md = markdown(summary, figures)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(to_html(md, figures))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


def print_result(summary: dict, final: Path, run_id: str, model_uri: str | None) -> None:
    print("\n" + "\n".join(headline_lines(summary)))
    rows = seed_table(summary)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'model':<{width}}  {'validation':>10}  {'test':>8}")
    for a, b, c in rows:
        print(f"{a:<{width}}  {b:>10}  {c:>8}")
    print(f"\nreport:   {final / 'report.html'}")
    print(f"MLflow:   run {run_id} in experiment {FUSION_EXPERIMENT!r}" +
          (f"; model {model_uri}" if model_uri else ""))


def main(argv: list[str] | None = None) -> int:
    options = options_from(ReportOptions, parser().parse_args(argv))
    with output(options.verbosity):
        return run(options)


if __name__ == "__main__":
    exit_now(main)
