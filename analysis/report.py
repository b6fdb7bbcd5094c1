"""Pick the top checkpoints of the workspace's searches, fuse them, report, ship the ensemble.

    python -m analysis.report [--workspace outputs] [--top-k 4] [--per-model-cap N]
        [--method uniform|weighted|greedy] [--weights 0.4,0.3,...] [--calibrate]
        [--experiments grid-cnn,weights-resnet18] [--name NAME]

Writes WORKSPACE/reports/NAME/: summary.json, report.md, a self-contained report.html and the
PNG figures (ROC and precision/recall curves per class, the confusion matrix, a reliability
diagram, the grids' val accuracy heat maps, ASHA survival per rung), logs all of it to an MLflow
run in the experiment ``fusion`` tagged with its members' run ids, and registers the fused
model (an MLflow pyfunc) in the model registry. Selection, weights and temperatures use the
validation set only; the test set is only scored.
"""

from __future__ import annotations

import base64
import errno
import html
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

from analysis import fusion
from analysis.select import SelectionError, distinct, gather, same_data, top_k
from search.asha import ScheduleAwareASHA
from search.workspace import Workspace, WorkspaceError, redact
from trainables.cli import ArgParser, at_least
from trainables.data import CLASSES, DataError, add_data_args, load_split
from trainables.engine import ConfigError, resolve_device

EXIT_OK, EXIT_USAGE = 0, 2
FUSION_EXPERIMENT = "fusion"
# docs/seed.md, "Evaluation": the seed's own validation and test accuracies.
SEED_RESULTS = (("4-CNN", 0.8963, 0.8953), ("ResNet", 0.9128, 0.8860),
                ("Inception", 0.9097, 0.9006), ("Model fusion (4 models)", 0.9172, 0.9033))


def parser() -> ArgParser:
    p = ArgParser(prog="python -m analysis.report",
                  description="Fuse the best checkpoints of the workspace's searches; report.")
    p.add_argument("--workspace", default="outputs")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite in workspace)")
    p.add_argument("--experiments", help="comma-separated experiment names (default: every "
                                         "grid and weights experiment)")
    p.add_argument("--top-k", type=int, default=4, help="members to fuse (default 4)")
    p.add_argument("--per-model-cap", type=int, help="at most N members per architecture")
    p.add_argument("--method", choices=fusion.METHODS, default="uniform",
                   help="uniform: the seed's average; weighted: --weights; greedy: Caruana "
                        "selection over every candidate, fitted on validation")
    p.add_argument("--weights", help="comma-separated fusion weights, one per member "
                                     "(--method weighted)")
    p.add_argument("--calibrate", action="store_true",
                   help="temperature-scale each member on validation first")
    p.add_argument("--name", help="report name (default fusion-DATE-TIME)")
    p.add_argument("--registered-name", default="tunefuse-ensemble",
                   help="model registry name of the fused model")
    p.add_argument("--no-register", action="store_true", help="do not log the pyfunc model")
    p.add_argument("--bootstrap", type=at_least(1), default=2000, help="bootstrap resamples")
    p.add_argument("--device", default="auto", help="inference device: auto, cpu, cuda")
    add_data_args(p)
    return p


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


def fetch_checkpoint(client, ws: Workspace, cand) -> Path:
    """The member's best checkpoint, downloaded once into the workspace's cache."""
    dst = ws.root / "cache" / "checkpoints" / cand.run_id
    local = dst / Path(cand.checkpoint).name
    if not local.exists():  # downloaded beside it, moved in whole: a kill leaves no half file
        part = dst.with_name(dst.name + ".partial")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        got = Path(client.download_artifacts(cand.run_id, cand.checkpoint, str(part)))
        dst.mkdir(parents=True, exist_ok=True)
        os.replace(got, local)
        shutil.rmtree(part, ignore_errors=True)
    return local


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
            asha = ScheduleAwareASHA(int(g), float(rf))
            counts: dict[int, list[int]] = {}
            for epochs, last in reached_by:  # the rungs of the trial's own length group
                for m in asha.rungs(epochs):
                    c = counts.setdefault(m, [0, 0])
                    c[0] += last >= m
                    c[1] += last > m
            survival[exp.name] = [(m, r, p) for m, (r, p) in sorted(counts.items())]
    return grids, survival


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def seed_table(summary: dict) -> list[list[str]]:
    """model | val | test rows: members, the fusion, then the seed's own numbers."""
    rows = [[m["label"], pct(m["val_acc"]), pct(m["test_acc"])] for m in summary["members"]]
    f = summary["fusion"]
    rows.append([f"Fusion ({f['method']}, {len(summary['members'])} models)",
                 pct(f["val_acc"]), pct(f["test_acc"])])
    rows += [[f"seed: {name}", pct(v), pct(t)] for name, v, t in SEED_RESULTS]
    return rows


def markdown(summary: dict, figures: dict[str, Path]) -> str:
    f = summary["fusion"]
    lo, hi = f["test_gain_interval"]
    lines = [f"# tunefuse report {summary['name']}", "",
             f"{summary['created']}; workspace `{summary['workspace']}`; data "
             f"`{summary['data']['fingerprint'][:16]}` ({summary['data']['val_images']} "
             f"validation, {summary['data']['test_images']} test images).", "",
             "| model | validation accuracy | test accuracy |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in seed_table(summary)]
    scaled = " with temperature scaling" if f["calibrated"] else ""
    rounded = [round(w, 4) for w in f["weights"]]
    lines += ["", f"Fusion: **{f['method']}**{scaled}, weights {rounded} "
              "(fitted on validation only). "
              f"Test accuracy minus the best member's (chosen on validation, "
              f"{summary['best_member']}): {100 * f['test_gain']:+.2f} points, 95% bootstrap "
              f"interval [{100 * lo:+.2f}, {100 * hi:+.2f}] ({f['bootstrap']} resamples).", "",
              "| classifier | val acc | test acc | test NLL | test ECE | temperature | run |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for m in summary["members"]:
        lines.append(f"| {m['label']} | {pct(m['val_acc'])} | {pct(m['test_acc'])} | "
                     f"{m['test']['nll']:.4f} | {m['test']['ece']:.4f} | "
                     f"{m['temperature']:.3f} | `{m['run_id'][:8]}` |")
    lines.append(f"| **fusion** | {pct(f['val_acc'])} | {pct(f['test_acc'])} | "
                 f"{f['test']['nll']:.4f} | {f['test']['ece']:.4f} | | |")
    lines += ["", "Per-class test precision / recall / F1 of the fusion:", "",
              "| class | precision | recall | F1 |", "| --- | --- | --- | --- |"]
    for c, name in enumerate(CLASSES):
        t = f["test"]
        lines.append(f"| {c} {name} | {t['precision'][c]:.4f} | {t['recall'][c]:.4f} | "
                     f"{t['f1'][c]:.4f} |")
    lines.append("")
    for key, path in figures.items():
        lines += [f"![{key}]({path.name})", ""]
    return "\n".join(lines)


def to_html(md: str, figures: dict[str, Path]) -> str:
    """A self-contained page: the markdown's tables and text, figures embedded as data URIs."""
    body, table = [], []

    def flush():
        if table:
            head, *rest = [r for r in table if not set(r.replace("|", "").strip()) <= {"-", " "}]
            cells = [c.strip() for c in head.strip("|").split("|")]
            out = ["<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in cells) + "</tr>"]
            for r in rest:
                cells = [c.strip() for c in r.strip("|").split("|")]
                out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in cells) + "</tr>")
            body.append("\n".join(out) + "</table>")
            table.clear()

    images = {p.name: p for p in figures.values()}
    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("![") and "](" in line:
            alt, name = line[2:].split("](", 1)
            name = name.rstrip(")")
            if name in images:
                body.append(f'<figure><img alt="{html.escape(alt)}" '
                            f'src="{png_data_uri(images[name])}"><figcaption>'
                            f"{html.escape(alt)}</figcaption></figure>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    flush()
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;"
             "padding:0 1em}table{border-collapse:collapse;margin:1em 0}td,th{border:1px "
             "solid #ccc;padding:4px 8px;text-align:left}img{max-width:100%}"
             "figure{margin:1.5em 0}")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>tunefuse report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _inline(text: str) -> str:
    out = html.escape(text)
    for mark, tag in (("**", "b"), ("`", "code")):
        parts = out.split(mark)
        out = "".join(p if i % 2 == 0 else f"<{tag}>{p}</{tag}>" for i, p in enumerate(parts))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        resolve_device(args.device)
        ws = Workspace.open(args.workspace, args.tracking_uri)
        client = ws.client()
        names = [n.strip() for n in args.experiments.split(",")] if args.experiments else None
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
        members = top_k(group, args.top_k, args.per_model_cap)
        weights = _weights_arg(args.weights, len(members)) if args.method == "weighted" \
            else None
        if args.method != "weighted" and args.weights:
            raise SelectionError("--weights is only for --method weighted")
        best = group[0]
        split = load_split(args.data_dir, best.train_size or None, best.seed, args.download)
        if split.fingerprint != best.fingerprint:
            raise SelectionError(
                f"the members were trained on data {best.fingerprint[:16]}, the data found "
                f"gives {split.fingerprint[:16]}; pass the --data-dir they were trained on")
    except (WorkspaceError, SelectionError, DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    args.name = args.name or time.strftime("fusion-%Y%m%d-%H%M%S")
    try:
        return report(args, ws, client, names, group, others, members, weights, split)
    except OSError as e:  # a full disk, a read-only reports folder: one line, nothing lost
        why = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        print(f"error: cannot write the report in {ws.root} ({why}); earlier reports and runs "
              "are as they were: free space on that disk and run it again", file=sys.stderr)
        return EXIT_USAGE
    finally:  # nothing half-written stays behind
        shutil.rmtree(staging(ws.root / "reports" / args.name), ignore_errors=True)


def staging(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial")


def publish(out: Path, final: Path) -> None:
    """Move a complete report into place; an earlier report of that name goes only now."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    out.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def report(args, ws, client, names, group, others, members, weights, split) -> int:
    from tqdm import tqdm

    from analysis import figures as fig
    from analysis.inference import cached_probs

    if others:
        print(f"note: {len(others)} candidate(s) trained on other data (another --train-size "
              "or --seed) are left out: fusion needs one validation set")
    pool = group if args.method == "greedy" else members
    y_val, y_test = split.y_val.numpy(), split.y_test.numpy()
    probs, paths = {}, {}
    for cand in tqdm(pool, desc="member inference", unit="model", file=sys.stdout,
                     disable=None):
        paths[cand.run_id] = fetch_checkpoint(client, ws, cand)
        probs[cand.run_id] = cached_probs(ws.root / "cache" / "probs", paths[cand.run_id], split,
                                          args.device)
    temps = {c.run_id: fusion.fit_temperature(probs[c.run_id][0], y_val) if args.calibrate
             else 1.0 for c in pool}

    # each member's (temperature-scaled) probabilities, once: (val, test)
    scaled = {rid: tuple(fusion.apply_temperature(p, temps[rid]) for p in pair)
              if args.calibrate else pair for rid, pair in probs.items()}

    def val_p(c):
        return scaled[c.run_id][0]

    def test_p(c):
        return scaled[c.run_id][1]

    if args.method == "greedy":
        w_pool = fusion.greedy_weights([val_p(c) for c in pool], y_val)
        chosen = sorted((i for i in range(len(pool)) if w_pool[i] > 0),
                        key=lambda i: (-w_pool[i], i))
        members = [pool[i] for i in chosen]
        weights = [float(w_pool[i]) for i in chosen]
    elif args.method == "uniform":
        weights = [1 / len(members)] * len(members)
    ens_val = fusion.fuse([val_p(c) for c in members], weights)
    ens_test = fusion.fuse([test_p(c) for c in members], weights)
    best = group[0]  # the best single candidate on validation; always a member unless greedy
    gain, lo, hi = fusion.bootstrap_difference(ens_test, test_p(best), y_test,
                                               n=args.bootstrap)
    name = args.name
    final = ws.root / "reports" / name
    out = staging(final)  # written here, moved into place once complete (publish)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    member_rows = []
    for c, w in zip(members, weights, strict=True):
        v, t = fusion.scores(val_p(c), y_val), fusion.scores(test_p(c), y_test)
        member_rows.append({
            "run_id": c.run_id, "experiment": c.experiment, "kind": c.kind, "model": c.model,
            "label": c.label, "config": c.params, "checkpoint": str(paths[c.run_id]),
            "artifact": f"runs:/{c.run_id}/{c.checkpoint}", "epoch": c.epoch,
            "recorded_val_acc": c.val_acc, "val_acc": v["acc"], "test_acc": t["acc"],
            "weight": w, "temperature": temps[c.run_id], "val": v, "test": t})
    ev, et = fusion.scores(ens_val, y_val), fusion.scores(ens_test, y_test)
    summary = {
        "name": name, "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "workspace": str(ws.root), "tracking_uri": redact(ws.tracking_uri),
        "experiments": names or sorted({c.experiment for c in group}),
        "data": {"fingerprint": split.fingerprint, "val_images": len(y_val),
                 "test_images": len(y_test), "train_size": split.train_size,
                 "seed": split.seed},
        "selection": {"top_k": args.top_k, "per_model_cap": args.per_model_cap,
                      "candidates": len(group), "left_out_other_data": len(others),
                      "ranked_by": "validation accuracy of each trial's best checkpoint"},
        "members": member_rows,
        "best_member": best.label,
        "fusion": {"method": args.method, "calibrated": args.calibrate, "weights": weights,
                   "val_acc": ev["acc"], "test_acc": et["acc"], "val": ev, "test": et,
                   "test_gain": gain, "test_gain_interval": [lo, hi],
                   "bootstrap": args.bootstrap, "best_member_run_id": best.run_id},
        "seed": [{"model": n, "val_acc": v, "test_acc": t} for n, v, t in SEED_RESULTS],
    }
    figures = {}
    title = f"fusion ({args.method}), test set"
    figures["roc"], aucs = fig.plot_roc(ens_test, y_test, CLASSES, out / "roc.png",
                                        "ROC, one vs rest: " + title)
    figures["precision_recall"], aps = fig.plot_pr(ens_test, y_test, CLASSES, out / "pr.png",
                                                   "precision / recall: " + title)
    figures["confusion"] = fig.plot_confusion(ens_test, y_test, CLASSES, out / "confusion.png",
                                              "confusion matrix: " + title)
    curves = {m["label"]: test_p(c) for m, c in zip(member_rows, members, strict=True)}
    curves["fusion"] = ens_test
    figures["reliability"] = fig.plot_reliability(curves, y_test, out / "reliability.png",
                                                  "reliability, test set")
    exps = [client.get_experiment_by_name(n) for n in summary["experiments"]]
    grids, survival = grid_rows(client, [e for e in exps if e is not None])
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
    md = markdown(summary, figures)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(to_html(md, figures))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    run_id, model_uri = log_to_mlflow(args, ws, client, summary, out, members, weights,
                                      temps, paths)
    summary["mlflow"] = {"run_id": run_id, "model_uri": model_uri}
    try:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        client.log_artifact(run_id, str(out / "summary.json"), "report")
        publish(out, final)
    except BaseException:
        client.set_terminated(run_id, "FAILED")  # its report never came; not left RUNNING
        raise
    client.set_terminated(run_id, "FINISHED")
    out = final

    width = max(len(r[0]) for r in seed_table(summary))
    print(f"\n{'model':<{width}}  {'validation':>10}  {'test':>8}")
    for a, b, c in seed_table(summary):
        print(f"{a:<{width}}  {b:>10}  {c:>8}")
    print(f"\nfusion - best member ({best.label}) on test: {100 * gain:+.2f} points, 95% "
          f"interval [{100 * lo:+.2f}, {100 * hi:+.2f}]")
    print(f"report:   {out / 'report.html'}")
    print(f"MLflow:   run {run_id} in experiment {FUSION_EXPERIMENT!r}" +
          (f"; model {model_uri}" if model_uri else ""))
    return EXIT_OK


def log_to_mlflow(args, ws, client, summary, out: Path, members, weights, temps, paths):
    exp_id = ws.experiment_id(client, FUSION_EXPERIMENT)
    run = client.create_run(exp_id, run_name=summary["name"], tags={
        "kind": "fusion", "method": args.method,
        "members": ",".join(c.run_id for c in members),
        **{f"member.{i}.run_id": c.run_id for i, c in enumerate(members)}})
    run_id = run.info.run_id
    try:
        f = summary["fusion"]
        for k, v in {"method": args.method, "top_k": args.top_k, "calibrate": args.calibrate,
                     "per_model_cap": args.per_model_cap,
                     "experiments": ",".join(summary["experiments"]),
                     "data_fingerprint": summary["data"]["fingerprint"],
                     "weights": json.dumps([round(w, 6) for w in weights])}.items():
            client.log_param(run_id, k, str(v)[:500])
        for k, v in {"val_acc": f["val_acc"], "test_acc": f["test_acc"],
                     "val_nll": f["val"]["nll"], "test_nll": f["test"]["nll"],
                     "test_ece": f["test"]["ece"],
                     "test_gain": f["test_gain"], "test_gain_low": f["test_gain_interval"][0],
                     "test_gain_high": f["test_gain_interval"][1]}.items():
            client.log_metric(run_id, k, float(v))
        for path in sorted(out.iterdir()):
            if path.is_file() and path.name != "summary.json":
                client.log_artifact(run_id, str(path), "report")
        model_uri = None
        if not args.no_register:
            from analysis.ensemble import log_ensemble

            model_uri, _ = log_ensemble(run_id, [str(paths[c.run_id]) for c in members],
                                        weights, [temps[c.run_id] for c in members],
                                        args.registered_name, ws.tracking_uri)
    except BaseException:
        client.set_terminated(run_id, "FAILED")  # its report never came; not left RUNNING
        raise
    return run_id, model_uri


if __name__ == "__main__":
    sys.exit(main())
