"""Shared trunks on disk: the epochs that trials differing only in their length compute once.

Which trials share a trunk, and where each branches off it, is trainables/trunk.py's answer;
this module keeps a trunk's epochs in one folder:

    CACHE/KEY/history.json        the trunk's per-epoch metrics, as far as it has been computed
    CACHE/KEY/epoch-0007.pt       its checkpoint at each branch point (the trials' branch epochs)
    CACHE/KEY.lock                held by the one trial extending it

The trunk is extended lazily, by whichever trial needs an epoch it does not hold yet, under the
lock; the others report its epochs from history.json without computing them and load its
checkpoint at their own branch epoch. Each epoch draws its randomness from (seed, epoch) alone,
so a trial that branches off gives exactly the numbers of an independent run.

A checkpoint is written before the history that names its epoch, so a trunk killed between the
two holds a checkpoint one epoch ahead of its history, never the reverse.
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

from trainables import checkpoint, failpoints
from trainables.engine import TrainState
from trainables.files import write_json


class Trunk:
    def __init__(self, cache: str | Path, key: str, points: list[int]):
        self.folder = Path(cache) / key
        self.lock_path = Path(cache) / f"{key}.lock"
        self.points = set(points)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = None
        self._seen: list[dict] = []  # the history as last read (or, held, as written)

    # --- what has been computed ---------------------------------------------------------------
    def history(self, need: int = 0) -> list[dict]:
        """The trunk's per-epoch metrics so far (empty when none or unreadable). The copy read
        before serves while it holds ``need`` epochs: only a trunk another trial may have
        extended since is read again."""
        if need and len(self._seen) >= need:
            return self._seen
        try:
            data = json.loads((self.folder / "history.json").read_text())
        except (OSError, ValueError):
            data = []
        self._seen = data if isinstance(data, list) else []
        return self._seen

    def checkpoint_path(self, epoch: int) -> Path:
        return self.folder / f"epoch-{epoch:04d}.pt"

    def load(self, state: TrainState, upto: int) -> bool:
        """Restore ``state`` from the trunk's newest good checkpoint at or before ``upto`` and
        after the epoch ``state`` holds; False when there is none."""
        for epoch in sorted((p for p in self.points if state.epoch < p <= upto), reverse=True):
            path = self.checkpoint_path(epoch)
            if not path.exists():
                continue
            try:
                checkpoint.restore(state, checkpoint.load(path), str(path))
            except checkpoint.CheckpointError:
                continue  # damaged: an earlier one, and the epochs after it computed again
            return True
        return False

    # --- extending it ---------------------------------------------------------------------------
    @property
    def held(self) -> bool:
        return self._lock is not None

    def acquire(self) -> None:
        """Wait while another trial extends the trunk, then hold it."""
        if self._lock is None:
            self._lock = open(self.lock_path, "w")  # noqa: SIM115 (held across steps)
            fcntl.flock(self._lock, fcntl.LOCK_EX)
            self.history()  # as the last holder left it; nobody else writes it while held

    def release(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def record(self, state: TrainState) -> None:
        """After the holder computed an epoch: its checkpoint if it is a branch point, then the
        history, when it is longer than the stored one."""
        if state.epoch in self.points:  # (again, over a damaged one)
            checkpoint.save(state, self.checkpoint_path(state.epoch))
            # the branch point is on disk; its history, naming the epoch, not yet
            failpoints.reach(f"trunk-checkpoint-written-{state.epoch}", epoch=state.epoch)
        if len(state.history) > len(self._seen):  # (read when the lock was taken)
            self._seen = checkpoint.plain(state.history)
            write_json(self.folder / "history.json", self._seen)
