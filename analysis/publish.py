"""Where a report goes: the members' checkpoints fetched into the workspace, the report folder
moved into place whole, and its MLflow run with the registered ensemble."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from analysis.ensemble import log_ensemble, mlflow_prints
from search.workspace import Workspace
from trainables.cli import VERBOSE

FUSION_EXPERIMENT = "fusion"


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


def log_to_mlflow(args, ws, client, summary: dict, out: Path, fused, paths: dict):
    """The report's MLflow run in the experiment ``fusion``: its flags (``args``, the report's
    options) and the fusion (``fused``, analysis/summary.py Fused: members, weights,
    temperatures) as params, the summary's scores as metrics, the files of ``out`` as
    artifacts, and, unless --no-register, the ensemble of the members' local checkpoints
    (``paths``, by run id) logged and registered. (run id, model URI or None); the run stays
    RUNNING for the caller to end."""
    members, weights, temps = fused.members, fused.weights, fused.temperatures
    fused_temperature = fused.fused_temperature
    exp_id = ws.experiment_id(client, FUSION_EXPERIMENT)
    run = client.create_run(exp_id, run_name=summary["name"], tags={
        "kind": "fusion", "method": args.method,
        "members": ",".join(c.run_id for c in members),
        **{f"member.{i}.run_id": c.run_id for i, c in enumerate(members)}})
    run_id = run.info.run_id
    try:
        f = summary["fusion"]
        for k, v in {"method": args.method, "top_k": args.top_k, "calibrate": args.calibrate,
                     "tta": args.tta,
                     "per_model_cap": args.per_model_cap,
                     "experiments": ",".join(summary["experiments"]),
                     "data_fingerprint": summary["data"]["fingerprint"],
                     "weights": json.dumps([round(w, 6) for w in weights]),
                     "fused_temperature": round(fused_temperature, 6)}.items():
            client.log_param(run_id, k, str(v)[:500])
        for k, v in {"val_acc": f["val_acc"], "test_acc": f["test_acc"],
                     "val_nll": f["val"]["nll"], "test_nll": f["test"]["nll"],
                     "test_ece": f["test"]["ece"], "val_ece": f["val"]["ece"],
                     "test_gain": f["test_gain"], "test_gain_low": f["test_gain_interval"][0],
                     "test_gain_high": f["test_gain_interval"][1]}.items():
            client.log_metric(run_id, k, float(v))
        for path in sorted(out.iterdir()):
            if path.is_file() and path.name != "summary.json":
                client.log_artifact(run_id, str(path), "report")
        model_uri = None
        if not args.no_register:
            with mlflow_prints(args.verbosity >= VERBOSE):
                model_uri, _ = log_ensemble(run_id, [str(paths[c.run_id]) for c in members],
                                            weights, [temps[c.run_id] for c in members],
                                            args.registered_name, ws.tracking_uri,
                                            fused_temperature, args.tta)
    except BaseException as e:  # its report never came; not left RUNNING
        client.set_terminated(run_id, ended(e))
        raise
    return run_id, model_uri


def ended(e: BaseException) -> str:
    """The status of a fusion run whose report did not come: KILLED when it was stopped
    (Ctrl-C, SIGTERM), as an interrupted search's runs are; else FAILED."""
    return "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
