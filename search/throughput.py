"""What a trial's throughput depends on, and what earlier trials measured: the hardware a search
runs on (the parent run's ``hardware`` tag, ``hardware()``) and, from an MLflow client passed
in, the throughput of earlier trials of the same model (architecture, model_kwargs, the fast
path it ran on) whose search ran on the same hardware: their training images/s, per batch size,
their epochs' wall time beyond training (validation, the checkpoint, reporting), per validation
image, and their start before the first epoch. Earlier trials on the same number of training
images are preferred when there are any. search/plan.py turns these into a search's time
estimate.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from trainables.config import TrainConfig
from trainables.fastpath import fast_path

EARLIER_RUNS = 24  # the most recent matching trials an estimate reads


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")) and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def hardware(resources: tuple[float, float], address: str | None = None) -> str:
    """What a trial's throughput depends on, as the parent run's ``hardware`` tag: this host,
    its CPU (and the GPU when trials take one), the CPUs and GPUs per trial, and the cluster
    when the search joined one (its trials run on that cluster's nodes)."""
    cpus, gpus = resources
    parts = [platform.node() or "unknown host", f"{cpu_model()} x{os.cpu_count() or 1}"]
    if gpus > 0:
        parts.append(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "GPU")
    parts.append(f"{cpus:g} CPU, {gpus:g} GPU per trial")
    if address:
        parts.append(f"Ray cluster {address}")
    return "; ".join(parts).replace("'", "")  # quoted in MLflow's filter strings


def model_of(config: dict) -> tuple[str, str]:
    """(model, its model_kwargs as MLflow params hold them) of a trial: what its throughput is
    matched on, besides the fast path."""
    kwargs = {f"model_kwargs.{k}": str(v) for k, v in (config.get("model_kwargs") or {}).items()}
    return str(config.get("model", TrainConfig.model)), json.dumps(kwargs, sort_keys=True)


def expected_fast_path(config: dict, gpus: float,
                       train_images: int = 0) -> tuple[str, str | None]:
    """(device type, the fast_path a trial will report: "cpu, bf16, channels_last"); None for
    the second when this process cannot tell (a GPU it does not see). ``train_images``: the
    search's training set, which decides whether "auto" compiles."""
    device = config.get("device", "auto")
    kind = ("cuda" if gpus > 0 else "cpu") if device == "auto" else str(device).split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        return kind, None
    fast = fast_path(config.get("precision", "auto"), config.get("memory_format", "auto"),
                     torch.device(kind), config.get("compile", "auto"), config.get("model"),
                     train_images)
    return kind, f"{kind}, {fast}"


@dataclass(frozen=True)
class Throughput:
    """What earlier trials of one model measured on this hardware."""

    images_per_s: dict  # batch size -> median training images/s
    extra_s_per_val_image: float | None  # an epoch's wall time beyond training, per val image
    trials: int  # the earlier trials these come from
    start_s: float | None = None  # a trial's start before its first epoch (actor, data, model)

    def rate(self, batch_size: int) -> float:
        """Images/s at ``batch_size``: its own, else the nearest batch size's (the smaller of
        two as near)."""
        nearest = min(self.images_per_s,
                      key=lambda b: (abs(math.log(b / batch_size)), b))
        return self.images_per_s[nearest]


def _matches(run, model: str, kwargs: str, kind: str, fast: str | None, config: dict) -> bool:
    p = run.data.params
    if "images_per_s" not in run.data.metrics or p.get("model") != model:
        return False
    if json.dumps({k: v for k, v in p.items() if k.startswith("model_kwargs.")},
                  sort_keys=True) != kwargs:
        return False
    if fast is not None:
        return p.get("fast_path") == fast
    return str(p.get("fast_path", "")).startswith(f"{kind}, ") and \
        p.get("precision") == str(config.get("precision", "auto")) and \
        p.get("memory_format") == str(config.get("memory_format", "auto")) and \
        p.get("compile", "auto") == str(config.get("compile", "auto"))


def _val_images(parent) -> int | None:
    try:
        return int(parent.data.params["train_size"]) - int(parent.data.params["train_images"])
    except (KeyError, ValueError):
        return None


def _beyond_training(client, run) -> tuple[list[float], float | None]:
    """What a trial's MLflow record says of its time beyond training: each epoch's (validation,
    checkpoint, reporting: the time between its result and the one before, less its
    train_seconds), and its start (from its run's creation to its first result, less that
    epoch), both only from the epochs the trial computed alone in their step (not taken from a
    trunk, not caught up after a restore)."""
    seconds = sorted(client.get_metric_history(run.info.run_id, "train_seconds"),
                     key=lambda m: m.step)
    computed = {m.step: m.value for m in
                client.get_metric_history(run.info.run_id, "epochs_computed")}
    at = {m.step: m.timestamp for m in seconds}
    extra = [max(0.0, (m.timestamp - at[m.step - 1]) / 1000 - m.value) for m in seconds
             if computed.get(m.step) == 1 and m.step - 1 in at]
    start = None
    first = seconds[0] if seconds else None
    if first is not None and first.step == 1 and computed.get(1) == 1 and run.info.start_time:
        start = max(0.0, (first.timestamp - run.info.start_time) / 1000 - first.value -
                    (statistics.median(extra) if extra else 0.0))
    return extra, start


def _images_per_s(client, run, parent) -> float:
    """A trial's training images/s on the CPUs it was given: its latest, unless it trained on
    more threads later (search/spare.py), then the median of its epochs on the fewest."""
    latest = run.data.metrics["images_per_s"]
    try:
        given = float(parent.data.params["cpus_per_trial"])
    except (KeyError, ValueError):
        return latest
    if run.data.metrics.get("threads", given) <= given:
        return latest
    threads = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "threads")}
    fewest = min(threads.values())
    rates = [m.value for m in client.get_metric_history(run.info.run_id, "images_per_s")
             if threads.get(m.step) == fewest]
    return statistics.median(rates) if rates else latest


def earlier_throughput(client, hardware_tag: str, config: dict, gpus: float,
                       train_images: int) -> Throughput | None:
    """The throughput of earlier trials of ``config``'s model on the fast path it will take,
    from searches whose parent run has the tag ``hardware_tag``, the newest first (those on
    ``train_images`` training images only, when there are any); None when there is none."""
    ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return None
    model, kwargs = model_of(config)
    kind, fast = expected_fast_path(config, gpus, train_images)
    parents = client.search_runs(
        ids, f"tags.hardware = '{hardware_tag}' and tags.model = '{model}'",
        order_by=["attributes.start_time DESC"], max_results=1000)
    same = [p for p in parents if p.data.params.get("train_images") == str(train_images)]
    runs: list = []
    for group in (same, [p for p in parents if p not in same]):
        for parent in group:
            runs += [(r, parent) for r in client.search_runs(
                [parent.info.experiment_id],
                f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.kind = 'trial'"
                + (f" and params.fast_path = '{fast}'" if fast else ""),
                order_by=["attributes.start_time DESC"], max_results=EARLIER_RUNS)
                if _matches(r, model, kwargs, kind, fast, config)]
            if len(runs) >= EARLIER_RUNS:
                break
        if runs:  # earlier trials on as many images as this search's: those alone
            break
    runs = runs[:EARLIER_RUNS]
    if not runs:
        return None
    by_batch: dict = {}
    for r, parent in runs:
        by_batch.setdefault(int(r.data.params["batch_size"]), []).append(
            _images_per_s(client, r, parent))
    extra, starts = [], []
    for r, parent in runs:
        seconds, start = _beyond_training(client, r)
        if val := _val_images(parent):
            extra += [s / val for s in seconds]
        if start is not None:
            starts.append(start)
    return Throughput({b: statistics.median(v) for b, v in by_batch.items()},
                      statistics.median(extra) if extra else None, len(runs),
                      statistics.median(starts) if starts else None)
