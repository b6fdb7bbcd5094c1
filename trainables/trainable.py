"""The Ray Tune adapter: one trial = one run of the engine, one ``step`` = one epoch.

"Add tuning without changing the training code" (Ray Tune's examples): setup builds the frozen
TrainConfig from Tune's flat config and takes the data from Ray's object store (the driver puts
it there once with ``tune.with_parameters``); checkpoints are the engine's own format.

The seed's Adam warm-up (docs/seed.md, "Training") depends on the model, batch size, augmentation,
class weights, data and seed, not on the epoch count, so trials that share those share one
warm-up: the first computes it (holding a file lock) and stores it under ``warmup_cache``; the
others wait for the lock, load it and replay its per-epoch metrics instead of training. Each
epoch draws its randomness from (seed, epoch) only, so the result is exactly what an
independent warm-up would have given.

Faults (Tune restores a trial from the checkpoint its saved experiment state names, after
the trial's worker died or the driver was restarted with ``--resume``). A SIGKILL can fall
anywhere, so what the state names and what is on disk may disagree (docs/crash-windows.md):

- The named checkpoint was deleted after the state was saved (Tune keeps one besides the
  best, and removes the older one when a newer one is registered), or it is half written,
  corrupt or fails its checksum: the trial continues from the newest good checkpoint beside
  it, else from its stored warm-up or from scratch, and says so once (``checkpoint_fault`` in
  its next result, which the lineage records on the trial's MLflow run).
- Each step reports exactly the epoch after the last one the saved state knows
  (``self.reported``). A checkpoint newer than that (the state was saved before it) holds
  epochs already computed: they are reported from its history before any training. An older
  one is trained forward, without reporting again, up to that epoch. Every epoch's randomness
  comes from (seed, epoch), so either way the numbers are those of an uninterrupted run.
- A result asks Tune for a checkpoint (``should_checkpoint``) only when the weights are those
  of the epoch it reports, so every checkpoint holds the epoch it names: the epochs of a
  replayed warm-up or of a newer checkpoint are reported but not checkpointed.
- A trial restored at its last epoch (it ended after Tune's last snapshot) reports that epoch
  once more, ending it, instead of training past its schedule.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import ray
from ray import tune
from ray.train._internal.session import _TrainingResult  # what Tune passes to restore()
from ray.tune.result import SHOULD_CHECKPOINT, TRAINING_ITERATION

from trainables import checkpoint, failpoints
from trainables.engine import SGD_ONLY, TrainConfig, build, run_epoch
from trainables.fastpath import FastPath

METRIC, MODE = "val_acc", "max"  # shared by the scheduler, checkpointing and selection
TIME_ATTR = "epoch"
CHECKPOINT_FILE = "checkpoint.pt"


def warmup_key(cfg: TrainConfig, fingerprint: str, fast: FastPath) -> str:
    fixed = {k: v for k, v in cfg.to_dict().items() if k not in SGD_ONLY}
    fixed.update(device="", num_threads=None, eval_batch_size=None, data=fingerprint,
                 precision=fast.precision, memory_format=fast.channels_last)
    return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:20]


class ClassifierTrainable(tune.Trainable):
    def setup(self, config: dict, split=None):
        if split is None:
            raise ValueError("the data set must be passed with tune.with_parameters(..., split=)")
        self.split = split
        self.fault = None  # why the named checkpoint could not be used, for the next result
        self.known = 0  # the epoch of the checkpoint Tune restores, as its saved state says
        self.missing = None  # the checkpoint Tune named, when it no longer exists
        self._start(config)

    def _start(self, config: dict):
        self.cfg = on_this_worker(TrainConfig.from_dict(config))
        self.state = build(self.cfg, self.split)
        self.reported = 0  # epochs reported to Tune, one result an epoch
        self.reused = False  # the weights are a stored warm-up's
        self.lock = None
        self.warmup_path = None
        cache = config.get("warmup_cache")
        if not cache or self.cfg.warmup_epochs == 0:
            return
        Path(cache).mkdir(parents=True, exist_ok=True)
        key = warmup_key(self.cfg, self.split.fingerprint, self.state.fast)
        self.warmup_path = Path(cache) / f"{key}.pt"
        self.lock = open(Path(cache) / f"{key}.lock", "w")  # noqa: SIM115 (held across steps)
        fcntl.flock(self.lock, fcntl.LOCK_EX)  # wait while another trial computes it
        if not self.warmup_path.exists():
            return  # this trial computes it and stores it when its warm-up ends
        self._release()
        try:
            stored = checkpoint.load(self.warmup_path)
            checkpoint.restore(self.state, stored, str(self.warmup_path))
        except checkpoint.CheckpointError:  # damaged: this trial computes it afresh
            self.state = build(self.cfg, self.split)
            self.warmup_path = None
            return
        self.reused = True

    def _release(self):
        if self.lock is not None:
            fcntl.flock(self.lock, fcntl.LOCK_UN)
            self.lock.close()
            self.lock = None

    def _train(self) -> dict:
        metrics = run_epoch(self.state)
        if self.lock is not None and self.state.epoch == self.cfg.warmup_epochs:
            checkpoint.save(self.state, self.warmup_path)
            self._release()
        return metrics

    def step(self) -> dict:
        again = self.reported >= self.cfg.epochs  # restored at its end: its last epoch once
        epoch = self.cfg.epochs if again else self.reported + 1  # more, to end it
        trained = False
        while self.state.epoch < epoch - 1 or (again and self.state.epoch < epoch):
            self._train()  # a checkpoint older than Tune's saved state: reported before
            trained = True
        if epoch <= self.state.epoch:  # computed before: a stored warm-up, a checkpoint newer
            result = dict(self.state.history[epoch - 1])  # than Tune's state, or its end
            holds = epoch == self.state.epoch and (trained or not again)
        else:
            result, holds = dict(self._train()), True
        self.reported = epoch
        result["warmup_reused"] = self.reused and epoch <= self.cfg.warmup_epochs
        result["done"] = epoch >= self.cfg.epochs
        result[SHOULD_CHECKPOINT] = holds  # the weights are this epoch's
        result["node_id"] = _node_id()
        if self.fault:
            result["checkpoint_fault"], self.fault = self.fault, None
        return result

    def save_checkpoint(self, checkpoint_dir: str):
        checkpoint.save(self.state, os.path.join(checkpoint_dir, CHECKPOINT_FILE))
        # written where Tune will copy it from; not in the trial's folder yet
        failpoints.reach("checkpoint-written", trial=self.trial_id, epoch=self.state.epoch)

    def restore(self, checkpoint_path):
        """Tune's restore, from the checkpoint its saved state names; when that one no longer
        exists (Tune refuses it), from an empty stand-in, so that load_checkpoint falls back."""
        restoring = checkpoint_path
        self.known, self.missing = 0, None
        if isinstance(restoring, _TrainingResult) and restoring.checkpoint is not None:
            metrics = restoring.metrics or {}
            self.known = int(metrics.get(TIME_ATTR) or metrics.get(TRAINING_ITERATION) or 0)
            named = restoring.checkpoint
            if named.filesystem.type_name == "local" and not os.path.isdir(named.path):
                self.missing = Path(named.path)
                with tempfile.TemporaryDirectory(prefix="tunefuse-missing-") as stand_in:
                    return super().restore(_TrainingResult(
                        checkpoint=tune.Checkpoint.from_directory(stand_in), metrics=metrics))
        return super().restore(restoring)

    def load_checkpoint(self, checkpoint_dir: str):
        path = Path(checkpoint_dir, CHECKPOINT_FILE)
        if self.missing is not None:
            self._recover(self.missing / CHECKPOINT_FILE, f"{self.missing.name}, named by the "
                          "saved experiment state, no longer exists")
        else:
            try:
                checkpoint.restore(self.state, checkpoint.load(path), str(path))
                self.reused = False
            except checkpoint.CheckpointError as e:
                self._recover(path, str(e))
        # the next result is the epoch after the one Tune's saved state holds
        self.reported = self.known or self.state.epoch
        if self.state.epoch >= self.cfg.warmup_epochs:
            self._release()

    def _recover(self, bad: Path, why: str) -> None:
        """The named checkpoint is unusable: the newest good one beside it, else scratch."""
        for other in _other_checkpoints(bad):
            try:
                state = build(self.cfg, self.split)
                checkpoint.restore(state, checkpoint.load(other), str(other))
            except checkpoint.CheckpointError:
                continue
            self.state, self.reused = state, False
            self.fault = f"{why}; continued from {other.parent.name} (epoch {state.epoch})"
            break
        else:  # as a new trial would start (a stored warm-up is reused)
            self._release()
            self._start(self.config)
            self.fault = f"{why}; no good checkpoint left, restarted from scratch"
        print(f"checkpoint fault: {self.fault}", file=sys.stderr, flush=True)

    def reset_config(self, new_config: dict) -> bool:
        self._release()
        self._start(new_config)
        self.config = new_config
        self.fault, self.known, self.missing = None, 0, None
        return True

    def cleanup(self):
        self._release()


def _other_checkpoints(bad: Path) -> list[Path]:
    """The trial's other checkpoints that Tune kept (``checkpoint_000007/``), newest first."""
    siblings = bad.parent.parent.glob(f"checkpoint_*/{CHECKPOINT_FILE}")
    return sorted((p for p in siblings if p.parent != bad.parent), reverse=True)


def on_this_worker(cfg: TrainConfig) -> TrainConfig:
    """The config with "auto" resources resolved to what Ray gave this trial's worker: device
    "auto" is a GPU when the trial got one (--gpus-per-trial), num_threads None the CPUs it got
    (--cpus-per-trial). Outside Ray (tests) the engine resolves them from the machine."""
    if not ray.is_initialized() or (cfg.device != "auto" and cfg.num_threads is not None):
        return cfg
    changes = {}
    if cfg.device == "auto":
        changes["device"] = "cuda" if ray.get_gpu_ids() else "cpu"
    if cfg.num_threads is None:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU") or 1
        changes["num_threads"] = max(1, int(cpus))
    return dataclasses.replace(cfg, **changes)


def _node_id() -> str:
    if not ray.is_initialized():  # outside Ray (tests drive the Trainable directly); asking
        return ""  # the runtime context would start or join a cluster
    return ray.get_runtime_context().get_node_id()
