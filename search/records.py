"""A trial's record in MLflow, written the same way by the live lineage (search/lineage.py) and
by the catch-up after an outage (search/backfill.py): its run, params, metrics and its end;
and the data a run used, as MLflow dataset inputs (split_datasets, log_datasets).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param

from trainables.classes import NUM_CLASSES
from trainables.trainable import CHECKPOINT_FILE
from trainables.trunk import place_tags

SKIP_PARAMS = ("trunk_cache",)
# metrics also logged as best_<key> for the epoch of a trial's best checkpoint
BEST_KEYS = ("val_acc", "val_loss", "hard_acc",
             *(f"val_acc_{c}" for c in range(NUM_CLASSES)))


# flags of a result logged as 0/1 per epoch (trainables/trainable.py): the trunk's epochs,
# and those taken from it rather than computed
FLAGS = ("shared", "trunk", "warmup_reused")


def scalar_metrics(result: dict) -> dict[str, float]:
    out = {k: float(result[k]) for k in FLAGS if isinstance(result.get(k), bool)}
    for k, v in result.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if k in ("done", "training_iteration", "time_total_s", "time_this_iter_s", "pid",
                 "timestamp", "time_since_restore", "iterations_since_restore",
                 "reported_at") or \
                k.startswith(("config", "node", "hostname")):
            continue
        if math.isfinite(v):
            out[k] = float(v)
    return out


def flat_params(config: dict) -> dict[str, str]:
    """A trial's config as MLflow params: nested dicts flattened, long values cut to 500."""
    out = {}
    for k, v in config.items():
        if k in SKIP_PARAMS:
            continue
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": str(vv)[:500] for kk, vv in v.items()})
        elif k == "class_weights" and v is not None:
            out.update({f"w{i}": str(w) for i, w in enumerate(v)})
        else:
            out[k] = str(v)[:500]
    return out


def config_key(config: dict) -> str:
    """What a trial is, as a short hash of its params (a tag set when its run is created)."""
    text = json.dumps(flat_params(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def trial_run_name(trial_id: str, config: dict | None) -> str:
    """A child run's name: what the trial is, then its Tune id (cnn-b64-e12-00003)."""
    cfg = config or {}
    width = (cfg.get("model_kwargs") or {}).get("width")
    parts = [str(cfg.get("model", "trial")), *([f"w{width}"] if width else []),
             f"b{cfg.get('batch_size')}", f"e{cfg.get('epochs')}", trial_id[-5:]]
    return "-".join(parts)


def error_line(trial) -> str:
    """The last line of a Tune trial's error file (what raised, or why its worker died)."""
    if trial.error_file and Path(trial.error_file).exists():
        lines = [ln for ln in Path(trial.error_file).read_text().splitlines() if ln.strip()]
        return lines[-1][:500] if lines else ""
    return ""


def new_trial_run(client, experiment_id: str, parent_id: str, trial_id: str, config: dict):
    """A trial's child run, its params not logged yet (log_params), its place among the trials
    it shares its first epochs with recorded (trainables/trunk.py)."""
    return client.create_run(experiment_id, run_name=trial_run_name(trial_id, config), tags={
        "mlflow.parentRunId": parent_id, "trial_id": trial_id, "kind": "trial",
        "config_key": config_key(config), **place_tags(config)})


def log_params(client, run_id: str, config: dict) -> None:
    """A trial's config as its run's params, 100 per call (MLflow's batch limit)."""
    params = [Param(k, v) for k, v in flat_params(config).items()]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i:i + 100])


def record_end(client, run_id: str, status: str, metric: str, best: tuple[float, int] | None,
               best_result: dict, checkpoint_dir: str | None, extra_tags: dict) -> None:
    """Close a trial's run: the best epoch's metrics as best_<key> (those of the kept
    checkpoint), the checkpoint as an artifact, the tags, the status."""
    tags = dict(extra_tags)
    if best is not None:
        value, epoch = best
        tags.update(best_epoch=str(epoch), best_metric=metric)
        at_best = {k: v for k, v in best_result.items() if isinstance(v, int | float)}
        at_best[metric] = value
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[
            Metric(f"best_{k}", float(v), now, epoch) for k, v in at_best.items()])
        if "val_acc" in at_best:
            tags["best_val_acc"] = f"{at_best['val_acc']:.6f}"
    if checkpoint_dir and Path(checkpoint_dir, CHECKPOINT_FILE).exists():
        client.log_artifact(run_id, str(Path(checkpoint_dir, CHECKPOINT_FILE)), "best_checkpoint")
        tags["best_checkpoint"] = "best_checkpoint/" + CHECKPOINT_FILE
    for k, v in tags.items():
        client.set_tag(run_id, k, v)
    client.set_terminated(run_id, status)


def asha_tags(stop: dict) -> dict[str, str]:
    """Where and why ASHA stopped a trial (search/asha.py's record of the decision)."""
    cutoff = "n/a" if stop["cutoff"] is None else f"{stop['cutoff']:.4f}"
    if stop.get("margin") and stop["cutoff"] is not None:  # ASHA's cutoff less the margin
        cutoff += f" (with the margin {stop['margin']:.4f})"
    tags = {"stopped_by": "asha", "stopped_at_epoch": str(stop["epoch"])}
    if "trunk" in stop:  # cut on the shared trunk, where every batch size runs at one rate
        tags["stop_reason"] = (
            f"ASHA rung at epoch {stop['rung']} of the shared trunk: the trunk of "
            f"{stop['trunk']} had {stop['metric']} {stop['trunk_value']:.4f}, below the "
            f"cutoff {cutoff} of {stop['compared_with']} other trunk(s); no branch of it "
            "starts later")
        return tags
    tags["stop_reason"] = (
        f"ASHA rung at epoch {stop['rung']} of the {stop['group_epochs']}-epoch trials: "
        f"{stop['metric']} {stop['value']:.4f} below the cutoff {cutoff} of "
        f"{stop['compared_with']} other trial(s)")
    return tags


# the split's parts as MLflow datasets: (part, name, the mlflow.data.context tag)
DATASET_PARTS = (("train", "fashion-mnist-train", "training"),
                 ("val", "fashion-mnist-val", "validation"),
                 ("test", "fashion-mnist-test", "test"))


def split_datasets(split) -> list[dict]:
    """The train, val and test sets of a DataSplit as plain dicts (Tune pickles the lineage
    that carries them): name, digest (16 hex digits of SHA-256 of the split's fingerprint and
    the part), the data folder as a local source, the tensor schema, and a profile with the
    image count, the class histogram and the split's provenance."""
    out = []
    for part, name, context in DATASET_PARTS:
        histogram = [int(n) for n in split.histogram(part)]
        digest = hashlib.sha256(f"{split.fingerprint}/{part}".encode()).hexdigest()[:16]
        schema = {"mlflow_tensorspec": {
            "features": json.dumps([{"type": "tensor", "tensor-spec": {
                "dtype": "uint8", "shape": [-1, 28, 28]}, "name": "images"}]),
            "targets": json.dumps([{"type": "tensor", "tensor-spec": {
                "dtype": "int64", "shape": [-1]}, "name": "labels"}])}}
        profile = {"num_images": sum(histogram), "class_histogram": histogram,
                   "data_fingerprint": split.fingerprint, "files_sha256": split.files_sha256,
                   "origin": split.origin, "train_size": split.train_size, "seed": split.seed,
                   "files": "t10k-*" if part == "test" else "train-*"}
        out.append({"name": name, "digest": digest, "source_type": "local",
                    "source": json.dumps({"uri": str(split.source)}),
                    "schema": json.dumps(schema), "profile": json.dumps(profile),
                    "context": context})
    return out


def log_datasets(client, run_id: str, datasets: list[dict] | None) -> bool:
    """Log ``datasets`` (split_datasets) as the run's dataset inputs, unless the run has some
    already (a resumed run); returns whether it logged them."""
    if not datasets or client.get_run(run_id).inputs.dataset_inputs:
        return False
    client.log_inputs(run_id, datasets=[
        DatasetInput(dataset=Dataset(name=d["name"], digest=d["digest"],
                                     source_type=d["source_type"], source=d["source"],
                                     schema=d["schema"], profile=d["profile"]),
                     tags=[InputTag(key="mlflow.data.context", value=d["context"])])
        for d in datasets])
    return True


def cell(x) -> str:
    """A config value in a table or a line: floats to 3 decimals."""
    return f"{x:.3f}" if isinstance(x, float) else str(x)
