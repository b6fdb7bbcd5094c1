"""The Ray Tune adapter: one trial = one run of the engine, one ``step`` = one epoch.

"Add tuning without changing the training code" (Ray Tune's examples): setup builds the frozen
TrainConfig from Tune's flat config and takes the data from Ray's object store (the driver puts
it there once with ``tune.with_parameters``); checkpoints are the engine's own format.

A run's first epochs do not depend on its epoch count (the seed's Adam warm-up; under wsd the
constant-rate phase after it too), so trials that differ only in their length share them: a
trunk under ``trunk_cache`` (trainables/trunk.py; on disk trainables/trunk_store.py), computed
once. A trial reports the trunk's epochs from its history without computing them (``shared``
in the result), extends it when it needs an epoch the trunk does not hold yet, and at its branch
epoch loads the trunk's checkpoint and trains only its own decay. ``trunk_lengths`` names the
lengths of the search, whose branch epochs the trunk is checkpointed at. Each epoch draws its
randomness from (seed, epoch) only, so the numbers are exactly those of an independent run.

Faults (Tune restores a trial from the checkpoint its saved experiment state names, after
the trial's worker died or the driver was restarted with ``--resume``). A SIGKILL can fall
anywhere, so what the state names and what is on disk may disagree (docs/crash-windows.md):

- The named checkpoint was deleted after the state was saved (Tune keeps one besides the
  best, and removes the older one when a newer one is registered), or it is half written,
  corrupt or fails its checksum: the trial continues from the newest good checkpoint beside
  it, else from its trunk or from scratch, and says so once (``checkpoint_fault`` in
  its next result, which the lineage records on the trial's MLflow run).
- Each step reports exactly the epoch after the last one the saved state knows
  (``self.reported``). A checkpoint newer than that (the state was saved before it) holds
  epochs already computed: they are reported from its history before any training. An older
  one is trained forward, without reporting again, up to that epoch. Every epoch's randomness
  comes from (seed, epoch), so either way the numbers are those of an uninterrupted run.
- A result asks Tune for a checkpoint (``should_checkpoint``) only when the weights are those
  of the epoch it reports, so every checkpoint holds the epoch it names: the epochs of a
  shared trunk or of a newer checkpoint are reported but not checkpointed.
- A trial restored at its last epoch (it ended after Tune's last snapshot) reports that epoch
  once more, ending it, instead of training past its schedule.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch
from ray import tune
from ray.train._internal.session import _TrainingResult  # what Tune passes to restore()
from ray.tune.result import SHOULD_CHECKPOINT, TRAINING_ITERATION

from trainables import checkpoint, failpoints
from trainables.config import TrainConfig
from trainables.engine import build, run_epoch
from trainables.trunk import branch_points, place, trunk_key
from trainables.trunk_store import Trunk

METRIC, MODE = "val_acc", "max"  # shared by the scheduler, checkpointing and selection
TIME_ATTR = "epoch"
CHECKPOINT_FILE = "checkpoint.pt"


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
        failpoints.rendezvous()  # a test's: trials that must run side by side wait for each other
        self.cfg = on_this_worker(TrainConfig.from_dict(config))
        self.state = build(self.cfg, self.split)
        self.reported = 0  # epochs reported to Tune, one result an epoch
        self.shared = 0  # the leading epochs this trial took from its trunk, not computed
        where = place(config)
        self.branch = where.shared
        self.trunk = None
        if where.trunk is not None:
            key = trunk_key(self.cfg, self.split.fingerprint, self.state.fast)
            self.trunk = Trunk(config["trunk_cache"], key,
                               branch_points(self.cfg, config.get("trunk_lengths") or ()))

    def _release(self):
        if self.trunk is not None:
            self.trunk.release()

    def _train(self) -> dict:
        """Train the next epoch; a trunk epoch is recorded in the trunk, which this trial holds
        (it waited for any other trial extending it)."""
        in_trunk = self.trunk is not None and self.state.epoch < self.branch
        if in_trunk:
            self.trunk.acquire()
        metrics = run_epoch(self.state)
        if in_trunk:
            self.trunk.record(self.state)
            if self.state.epoch == self.branch:
                self.trunk.release()
        return metrics

    def _from_trunk(self, epoch: int) -> tuple[dict | None, bool]:
        """The trunk's metrics of ``epoch`` when it holds them and this trial's weights are not
        there yet: reported without computing (at the branch epoch with the trunk's weights
        loaded, so that the result can be checkpointed: the second value). When no trial has
        computed the epoch yet, this one will, holding the trunk (after waiting for any trial
        extending it)."""
        if self.trunk is None or not self.state.epoch < epoch <= self.branch:
            return None, False
        history = self.trunk.history(epoch)
        if len(history) < epoch and not self.trunk.held:
            self.trunk.acquire()
            history = self.trunk.history(epoch)
        if len(history) < epoch:
            return None, False
        self.trunk.release()
        self.shared = max(self.shared, epoch)
        holds = epoch == self.branch and self.trunk.load(self.state, epoch) and \
            self.state.epoch == epoch
        return dict(history[epoch - 1]), holds

    def _reach(self, epoch: int) -> int:
        """Bring the weights to ``epoch``: the trunk's checkpoint where it has one, then
        training; the epochs trained."""
        upto = min(epoch, self.branch)
        if self.trunk is not None and self.state.epoch < upto:
            if not self.trunk.held and self.trunk.load(self.state, upto):
                self.shared = max(self.shared, self.state.epoch)
            if self.state.epoch < upto:  # computed from the newest point the trunk holds
                self.trunk.acquire()
                if self.trunk.load(self.state, upto):
                    self.shared = max(self.shared, self.state.epoch)
        trained = 0
        while self.state.epoch < epoch:
            self._train()
            trained += 1
        return trained

    def step(self) -> dict:
        again = self.reported >= self.cfg.epochs  # restored at its end: its last epoch once
        epoch = self.cfg.epochs if again else self.reported + 1  # more, to end it
        (result, holds), computed = self._from_trunk(epoch), 0
        if result is None:  # a checkpoint older than Tune's saved state is trained forward
            computed = self._reach(epoch if again else epoch - 1)
            if epoch <= self.state.epoch:  # a checkpoint newer than Tune's state, or its end
                result = dict(self.state.history[epoch - 1])
                holds = epoch == self.state.epoch and (computed > 0 or not again)
            else:
                result, holds = dict(self._train()), True
                computed += 1
        self.reported = epoch
        if self.state.epoch >= self.branch:  # past its trunk (loaded, say): others may extend it
            self._release()
        shared = epoch <= self.shared
        result["shared"] = shared  # taken from the trunk, computed by another trial
        result["warmup_reused"] = shared and epoch <= self.cfg.warmup_epochs
        result["trunk"] = self.trunk is not None and epoch <= self.branch
        result["branch_epoch"] = self.branch if self.trunk is not None else 0
        result["epochs_computed"] = computed  # trained in this step (more when catching up)
        result["done"] = epoch >= self.cfg.epochs
        result[SHOULD_CHECKPOINT] = holds  # the weights are this epoch's
        result["threads"] = torch.get_num_threads()  # CPU threads it trained on (search/spare.py)
        result["node_id"] = _node_id()
        result["reported_at"] = time.time()  # the order a resumed ASHA replays results in
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
            except checkpoint.CheckpointError as e:
                self._recover(path, str(e))
        # the next result is the epoch after the one Tune's saved state holds
        self.reported = self.known or self.state.epoch
        self.shared = 0
        self._release()  # taken again when this trial has a trunk epoch to compute

    def _recover(self, bad: Path, why: str) -> None:
        """The named checkpoint is unusable: the newest good one beside it, else scratch."""
        for other in _other_checkpoints(bad):
            try:
                state = build(self.cfg, self.split)
                checkpoint.restore(state, checkpoint.load(other), str(other))
            except checkpoint.CheckpointError:
                continue
            self.state = state
            self.fault = f"{why}; continued from {other.parent.name} (epoch {state.epoch})"
            break
        else:  # as a new trial would start (its trunk is shared)
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
