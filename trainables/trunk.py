"""Trunks: which trials share their first epochs, where each branches off, and what a set of
trials computes. The one place that answers these; the Trainable (trainables/trainable.py),
ASHA (search/asha.py), the plan (search/plan.py), the progress view and the report's choice of
members (analysis/select.py) ask it.

A run's first ``branch_epoch`` epochs (trainables/schedule.py) do not depend on its length: the
seed's Adam warm-up, and under ``schedule="wsd"`` the constant-rate SGD after it too. Trials
that differ only in what the epochs after those read (``SGD_ONLY``, under wsd ``DECAY_ONLY``:
trainables/config.py) and in their resources are siblings: their first epochs are the same
weights, epoch for epoch, since each epoch draws its randomness from (seed, epoch) alone. Given a
trunk cache (``trunk_cache`` in the config) those epochs are computed once, by whichever sibling
needs one first: the trunk, kept on disk by trainables/trunk_store.py.

- ``place(config)``: the siblings' group, the epochs a trial shares with them, and the epochs its
  trunk computes for it (its branch epoch; 0 without a trunk cache).
- ``trunk_key``: the trunk's folder, the path the trial runs on resolved.
- ``branch_points``: where a trunk is checkpointed: its trials' branch epochs.
- ``epochs_left``, ``epochs_at_most``, ``groups``: the epochs trials compute, a trunk once.
- ``place_tags`` / ``place_of_run``: a trial's place as its MLflow run records it, and read back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType, SimpleNamespace

from trainables.config import DECAY_ONLY, SGD_ONLY, TrainConfig
from trainables.fastpath import FastPath
from trainables.schedule import branch_epoch

# What neither the trunk nor any result depends on.
RESOURCES = MappingProxyType({"device": "", "num_threads": None, "eval_batch_size": None})
# Where the trunk is kept and the lengths its trials have: not what its epochs compute.
KEPT = ("trunk_cache", "trunk_lengths")


def _shared_part(config: Mapping) -> dict:
    """A flat config less what only the part after its branch reads (under wsd its decay,
    else the whole SGD phase), its resources and where its trunk is kept."""
    after = DECAY_ONLY if config.get("schedule") == "wsd" else SGD_ONLY
    skip = {*after, *RESOURCES, *KEPT}
    return {k: v for k, v in config.items() if k not in skip}


def _schedule_of(config: Mapping) -> SimpleNamespace:
    """What branch_epoch reads, from a flat config or a run's params (numbers as text there),
    TrainConfig's defaults where absent."""
    def number(key: str) -> float:
        return float(config.get(key, getattr(TrainConfig, key)))

    return SimpleNamespace(epochs=int(number("epochs")), warmup_epochs=int(number("warmup_epochs")),
                           schedule=config.get("schedule", TrainConfig.schedule),
                           decay_fraction=number("decay_fraction"))


@dataclass(frozen=True)
class Place:
    """Where a trial stands among its siblings."""

    group: str  # the siblings' common id: a hash of what their shared epochs read
    shared: int  # its first epochs that are the same weights as every sibling's
    cached: bool  # a trunk cache: those epochs are computed once for all the siblings

    @property
    def branch(self) -> int:
        """The epochs its trunk computes for it (0: every epoch its own)."""
        return self.shared if self.cached else 0

    @property
    def trunk(self) -> str | None:
        """The trunk it shares; None when it shares none (a branch at epoch 0 included)."""
        return self.group if self.branch > 0 else None


ALONE = Place("", 0, False)  # a trial known to share no epoch (its config not known yet)


def place(config: Mapping) -> Place:
    """A trial's place, from its flat config (Tune's) or, for a run recorded without its place,
    its params."""
    text = json.dumps(_shared_part(config), sort_keys=True, default=str)
    return Place(group=hashlib.sha256(text.encode()).hexdigest()[:16],
                 shared=branch_epoch(_schedule_of(config)),
                 cached=bool(config.get("trunk_cache")))


def place_tags(config: Mapping) -> dict[str, str]:
    """A trial's place as its MLflow run records it (search/records.py, when the run is made)."""
    p = place(config)
    return {"trunk_group": p.group, "shared_epochs": str(p.shared),
            "trunk_cached": "true" if p.cached else "false"}


def place_of_run(tags: Mapping, params: Mapping) -> Place:
    """A trial run's place as it recorded it; runs recorded before their place was are asked
    from their params."""
    if "trunk_group" in tags and "shared_epochs" in tags:
        return Place(tags["trunk_group"], int(tags["shared_epochs"]),
                     tags.get("trunk_cached") == "true")
    return place(params)


def trunk_key(cfg: TrainConfig, fingerprint: str, fast: FastPath) -> str:
    """Trials with the same key compute the same trunk: everything but what only the part
    after the branch reads, the resources, and the path it runs on resolved (a compiled
    trunk's key has ``compile``; an eager one's is the key it had before the engine compiled)."""
    fixed = _shared_part(cfg.to_dict())
    fixed.pop("compile", None)
    fixed.update(RESOURCES, data=fingerprint, precision=fast.precision,
                 memory_format=fast.channels_last)
    if fast.compiled:
        fixed["compile"] = True
    return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:20]


def branch_points(cfg: TrainConfig, lengths) -> list[int]:
    """The branch epochs of ``cfg``'s trial at each of ``lengths`` (and its own), ascending:
    where the trunk is checkpointed."""
    points = {branch_epoch(replace(cfg, epochs=int(e))) for e in lengths
              if int(e) >= cfg.warmup_epochs}
    points.add(branch_epoch(cfg))
    return sorted(p for p in points if p > 0)


# --- what trials compute ----------------------------------------------------------------------

@dataclass(frozen=True)
class Progress:
    """A trial's place and how far it has come."""

    place: Place
    epochs: int  # its length
    done: int = 0  # the epochs it holds
    open: bool = True  # it goes on: not finished, stopped, failed, nor in a trunk ASHA cut


def epochs_left(trials: Iterable[Progress]) -> int:
    """The epochs the open trials still compute: a trunk once, from as far as any of its trials
    took it to the latest branch of its open trials, then each open trial's own epochs."""
    trials = list(trials)
    reached: dict[str, int] = {}  # trunk -> the furthest epoch of it computed
    for t in trials:
        if t.place.trunk is not None:
            reached[t.place.trunk] = max(reached.get(t.place.trunk, 0),
                                         min(t.done, t.place.branch))
    latest: dict[str, int] = {}  # trunk -> the latest branch of its open trials
    left = 0
    for t in trials:
        if not t.open:
            continue
        if t.place.trunk is None:
            left += max(0, t.epochs - t.done)
            continue
        latest[t.place.trunk] = max(latest.get(t.place.trunk, 0), t.place.branch)
        left += max(0, t.epochs - max(t.place.branch, t.done))
    return left + sum(max(0, b - reached.get(k, 0)) for k, b in latest.items())


def epochs_at_most(configs: Iterable[Mapping]) -> int:
    """The epochs trials compute from the start, each trunk once (ASHA may stop them sooner)."""
    return epochs_left(Progress(place(c), int(c["epochs"])) for c in configs)


def epochs_exhaustive(configs: Iterable[Mapping]) -> int:
    """The epochs trials compute with no trunk shared: each its own length."""
    return sum(int(c["epochs"]) for c in configs)


def groups(configs: list[Mapping]) -> list[list[Mapping]]:
    """The trials in groups that share a trunk (a trial that shares none is a group alone)."""
    out: dict = {}
    for i, config in enumerate(configs):
        out.setdefault(place(config).trunk or i, []).append(config)
    return list(out.values())
