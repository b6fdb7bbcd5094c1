"""The Ray Tune adapter: one trial = one run of the engine, one ``step`` = one epoch.

"Add tuning without changing the training code" (Ray Tune's examples): setup builds the frozen
TrainConfig from Tune's flat config and takes the data from Ray's object store (the driver puts
it there once with ``tune.with_parameters``); checkpoints are the engine's own format.

The seed's Adam warm-up (SEED.md, "Training") depends on the model, batch size, augmentation,
class weights, data and seed, not on the epoch count, so trials that share those share one
warm-up: the first computes it (holding a file lock) and stores it under ``warmup_cache``; the
others wait for the lock, load it and replay its per-epoch metrics instead of training. Each
epoch draws its randomness from (seed, epoch) only, so the result is exactly what an
independent warm-up would have given.

Faults (Tune restores a trial from its latest checkpoint after its worker died or the driver
was restarted with ``--resume``): a latest checkpoint that does not load or fails its checksum
is not used silently. The trial falls back to the newest good checkpoint beside it (Tune keeps
the best one as well as the latest), else starts again from scratch; either way the next result
carries ``checkpoint_fault`` (the lineage records it on the trial's MLflow run). Because every
epoch's randomness comes from (seed, epoch), replayed epochs give the same numbers. A trial
restored from the checkpoint of its last epoch (it ended after Tune's last snapshot of the
experiment) reports that epoch again instead of training past its schedule.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
from pathlib import Path

from ray import tune

from trainables import checkpoint
from trainables.engine import SGD_ONLY, TrainConfig, build, run_epoch

METRIC, MODE = "val_acc", "max"  # shared by the scheduler, checkpointing and selection
TIME_ATTR = "epoch"
CHECKPOINT_FILE = "checkpoint.pt"


def warmup_key(cfg: TrainConfig, fingerprint: str) -> str:
    fixed = {k: v for k, v in cfg.to_dict().items() if k not in SGD_ONLY}
    fixed.update(device="", num_threads=None, eval_batch_size=None, data=fingerprint)
    return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:20]


class ClassifierTrainable(tune.Trainable):
    def setup(self, config: dict, split=None):
        if split is None:
            raise ValueError("the data set must be passed with tune.with_parameters(..., split=)")
        self.split = split
        self.fault = None  # why the latest checkpoint could not be used, for the next result
        self._start(config)

    def _start(self, config: dict):
        self.cfg = TrainConfig.from_dict(config)
        self.state = build(self.cfg, self.split)
        self.pending = []  # metrics of a stored warm-up still to be reported, epoch by epoch
        self.lock = None
        self.warmup_path = None
        cache = config.get("warmup_cache")
        if not cache or self.cfg.warmup_epochs == 0:
            return
        Path(cache).mkdir(parents=True, exist_ok=True)
        key = warmup_key(self.cfg, self.split.fingerprint)
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
        self.pending = list(self.state.history)

    def _release(self):
        if self.lock is not None:
            fcntl.flock(self.lock, fcntl.LOCK_UN)
            self.lock.close()
            self.lock = None

    def step(self) -> dict:
        if self.pending:  # the weights are already the stored warm-up's; report its epochs
            result = {**self.pending.pop(0), "warmup_reused": True}
        elif self.state.epoch >= self.cfg.epochs and self.state.history:
            result = {**self.state.history[-1], "warmup_reused": False}  # restored at its end
        else:
            result = {**run_epoch(self.state), "warmup_reused": False}
            if self.lock is not None and self.state.epoch == self.cfg.warmup_epochs:
                checkpoint.save(self.state, self.warmup_path)
                self._release()
        result["done"] = not self.pending and self.state.epoch >= self.cfg.epochs
        result["node_id"] = _node_id()
        if self.fault:
            result["checkpoint_fault"], self.fault = self.fault, None
        return result

    def save_checkpoint(self, checkpoint_dir: str):
        checkpoint.save(self.state, os.path.join(checkpoint_dir, CHECKPOINT_FILE))

    def load_checkpoint(self, checkpoint_dir: str):
        path = Path(checkpoint_dir, CHECKPOINT_FILE)
        try:
            checkpoint.restore(self.state, checkpoint.load(path), str(path))
            self.pending = []  # epochs restored from a checkpoint were reported before
        except checkpoint.CheckpointError as e:
            self._recover(path, str(e))
        if self.state.epoch >= self.cfg.warmup_epochs:
            self._release()

    def _recover(self, bad: Path, why: str) -> None:
        """The latest checkpoint is unusable: the newest good one beside it, else scratch."""
        for older in _other_checkpoints(bad):
            try:
                state = build(self.cfg, self.split)
                checkpoint.restore(state, checkpoint.load(older), str(older))
            except checkpoint.CheckpointError:
                continue
            self.state, self.pending = state, []
            self.fault = f"{why}; continued from {older.parent.name} (epoch {state.epoch})"
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
        return True

    def cleanup(self):
        self._release()


def _other_checkpoints(bad: Path) -> list[Path]:
    """The trial's other checkpoints that Tune kept (``checkpoint_000007/``), newest first."""
    siblings = bad.parent.parent.glob(f"checkpoint_*/{CHECKPOINT_FILE}")
    return sorted((p for p in siblings if p.parent != bad.parent), reverse=True)


def _node_id() -> str:
    import ray

    if not ray.is_initialized():  # outside Ray (tests drive the Trainable directly); asking
        return ""  # the runtime context would start or join a cluster
    return ray.get_runtime_context().get_node_id()
