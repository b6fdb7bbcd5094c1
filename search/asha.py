"""ASHA that only ever compares trials at the same point of the same LR schedule.

In the seed's grid the epoch count is also the length of the learning-rate schedule: at epoch
10, a 20-epoch trial has annealed half way while a 100-epoch trial is still at a high rate, so
its lower accuracy says nothing about where it will end. Plain ASHA (Li et al. 2020) would cut
it there. Here each epoch count gets its own ASHA bracket (max_t = that epoch count): a trial is
only ever ranked against trials of the same length, at the same epoch, hence at the same
learning rate. Rungs sit at ``grace_period * reduction_factor**k`` epochs, counted from the
start of the run (the warm-up included), below each group's max_t.

Under the wsd schedule with shared trunks (trainables/trunk.py) every trial runs at the same
constant rate until its decay starts, so the rungs inside that stable phase compare every batch
size: one value per trunk (its trials report the same numbers there), ASHA's rule over trunks.
A trunk that is cut stops its trials there, and any of its trials that has not begun its decay
yet: no branch of it starts later. Rungs inside a decay compare trials of one length, as above.

A margin (the profile's ``asha_margin``, ``--asha-margin``) lowers every cutoff by that much of
the metric: a trial is stopped only when it is behind by more than the validation set's noise.
With one trunk per batch size a rung compares two values, and ASHA's rule alone stops the
lower one at any gap, 0.1 points included (docs/profiles.md).

Every stop is recorded (trial, epoch, rung, cutoff, the trial's value) so the lineage can say
when and why a trial was stopped. Tune does not save a scheduler with its experiment state: a
resumed search rebuilds the rungs from what each trial reported before (``_replay``), so its
decisions are those of the uninterrupted search.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from search.rungs import rung_epochs
from trainables.cli import above_one, at_least, non_negative
from trainables.flags import flag
from trainables.trainable import METRIC, MODE, TIME_ATTR
from trainables.trunk import place


class ScheduleAwareASHA(FIFOScheduler):
    def __init__(self, grace_period: int, reduction_factor: float, group_key: str = "epochs",
                 metric: str = METRIC, margin: float = 0.0):
        super().__init__()
        self._metric, self._mode = metric, MODE
        self.grace_period = grace_period
        self.reduction_factor = reduction_factor
        self.margin = float(margin)  # every cutoff lowered by this much of the metric
        self.group_key = group_key
        self.groups: dict[int, AsyncHyperBandScheduler] = {}
        self.stops: dict[str, dict] = {}  # trial_id -> why it was stopped
        self.replayed_stops: dict[str, int] = {}  # trial_id -> epoch (a resumed search)
        self.trunk_rungs: dict[int, dict[str, float]] = {}  # epoch -> trunk -> its value
        self.trunk_cuts: dict[str, dict] = {}  # trunk -> where and why it was cut
        self._trunks: dict[str, tuple[str | None, int, list[int]]] = {}
        self._restored: list[tuple] = []  # (reported at, order, trial, epoch, value), resumed

    def _group(self, trial) -> AsyncHyperBandScheduler:
        return self._group_for_length(int(trial.config[self.group_key]))

    def _group_for_length(self, length: int) -> AsyncHyperBandScheduler:
        if length not in self.groups:
            self.groups[length] = AsyncHyperBandScheduler(
                time_attr=TIME_ATTR, metric=self.metric, mode=MODE, max_t=length,
                grace_period=min(self.grace_period, length),
                reduction_factor=self.reduction_factor)
            for bracket in self.groups[length]._brackets:  # Ray's rule, less the margin
                bracket.cutoff = self._lowered(bracket.cutoff)
        return self.groups[length]

    def _lowered(self, cutoff):
        """A bracket's cutoff less the margin (rewards are metric_op x value, so the margin
        is lenient in either mode)."""
        def lowered(recorded):
            value = cutoff(recorded)
            return None if value is None else value - self.margin
        return lowered

    def rungs(self, length: int) -> list[int]:
        """The epochs at which trials of ``length`` epochs are compared."""
        return rung_epochs(length, self.grace_period, self.reduction_factor)

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return metric in (None, self.metric) and mode in (None, MODE)

    def on_trial_add(self, tune_controller, trial):
        group = self._group(trial)
        group.on_trial_add(tune_controller, trial)
        self._replay(group, trial)

    def _replay(self, group: AsyncHyperBandScheduler, trial) -> None:
        """A resumed search: Tune does not save its scheduler, so each trial it restores
        brings back the results it reported before (its result.json), and the rungs are
        rebuilt from every restored result so far in the order they were reported (Tune
        restores trials in no set order, and a wsd trunk's rung is ranked across trials), as
        the uninterrupted run recorded them, with any decision to stop a trial that Tune had
        not carried out when it was killed; later results are judged against the same rungs.
        A new trial has no results: nothing to do."""
        try:
            path = trial.path  # the trial's folder on the storage path
        except (AttributeError, RuntimeError):  # a new trial: Tune has not named its folder
            return
        results = Path(path, "result.json") if path else None
        if results is None or not results.exists():
            return
        added = False
        for line in results.read_text().splitlines():
            try:
                result = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if TIME_ATTR not in result or not isinstance(result.get(self.metric), int | float):
                continue
            when = float(result.get("reported_at") or result.get("timestamp") or 0)
            self._restored.append((when, len(self._restored), trial, result[TIME_ATTR],
                                   result[self.metric]))
            added = True
        if added:
            self._rebuild()

    def _rebuild(self) -> None:
        """Every rung value and replayed decision made again from the restored results, in
        the order they were reported (ties: the order they were read)."""
        replayed = {trial.trial_id for *_, trial, _, _ in self._restored}
        self.trunk_rungs.clear()
        self.trunk_cuts.clear()
        self.replayed_stops = {}
        self.stops = {k: v for k, v in self.stops.items() if k not in replayed}
        for g in self.groups.values():
            for bracket in g._brackets:
                for _, recorded in bracket._rungs:
                    recorded.clear()
        for _, _, trial, epoch, value in sorted(self._restored, key=lambda r: r[:2]):
            if trial.trial_id in self.replayed_stops:
                continue  # stopped before the kill: its later lines are not ranked
            finished = trial.status == "TERMINATED"
            action = self._decide(trial, epoch, value, record=not finished)
            group = self._group(trial)
            if action == TrialScheduler.STOP and epoch < group._max_t and not finished:
                self.replayed_stops[trial.trial_id] = epoch
                if trial.trial_id not in self.stops:
                    self._record_stop(group, trial, epoch, value)

    def _record_stop(self, group: AsyncHyperBandScheduler, trial, epoch, value) -> None:
        bracket = group._trial_info[trial.trial_id]
        rung = max(m for m, _ in bracket._rungs if m <= epoch)
        recorded = dict(next(r for m, r in bracket._rungs if m == rung))
        recorded.pop(trial.trial_id, None)
        self.stops[trial.trial_id] = {
            "epoch": int(epoch), "rung": int(rung), "metric": self.metric,
            "value": float(value),
            "cutoff": float(bracket.cutoff(recorded)) if recorded else None,
            "compared_with": len(recorded), "group_epochs": int(group._max_t),
            "margin": self.margin,
        }

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        group = self._group(trial)
        epoch = result.get(TIME_ATTR, 0)
        if epoch >= self.replayed_stops.get(trial.trial_id, float("inf")):
            return TrialScheduler.STOP  # decided before the interruption (_replay)
        decision = self._decide(trial, epoch, result[self.metric], tune_controller, result)
        if decision == TrialScheduler.STOP and epoch < group._max_t and \
                trial.trial_id not in self.stops:
            self._record_stop(group, trial, epoch, result[self.metric])
        return decision

    def _decide(self, trial, epoch: int, value: float, tune_controller=None,
                result: dict | None = None, record: bool = True) -> str:
        """A result's fate: on its trunk's rungs while it is in its trunk, else on its
        length's (a replayed result, ``result`` None, goes to the bracket directly)."""
        trunk, branch, milestones = self._trunk(trial)
        if trunk is not None and epoch <= branch:
            return self._judge_trunk(trial, trunk, epoch, value, milestones, record)
        group = self._group(trial)
        if trunk is not None and epoch not in self.rungs(group._max_t):
            # in its decay between rungs: Ray's bracket would record this epoch at a rung of
            # the trunk's, which compared trunks, not trials of this length
            return TrialScheduler.CONTINUE
        if result is None:
            bracket = group._trial_info[trial.trial_id]
            return bracket.on_result(trial, epoch, group._metric_op * value)
        return group.on_trial_result(tune_controller, trial, result)

    def _trunk(self, trial) -> tuple[str | None, int, list[int]]:
        """The trial's trunk (None without one), its branch epoch, and the trunk's rungs."""
        if trial.trial_id not in self._trunks:
            wsd = trial.config.get("schedule") == "wsd"  # (a warm-up is compared per length)
            where = place(trial.config)
            trunk = where.trunk if wsd else None
            branch, milestones = where.branch if trunk else 0, []
            if trunk is not None:
                lengths = trial.config.get("trunk_lengths") or [trial.config["epochs"]]
                milestones = self.rungs(max(int(e) for e in lengths))
            self._trunks[trial.trial_id] = (trunk, branch, milestones)
        return self._trunks[trial.trial_id]

    def _judge_trunk(self, trial, trunk: str, epoch: int, value: float, milestones: list[int],
                     record: bool) -> str:
        """ASHA's rule with one entry per trunk: at a rung, the first of its trials to get
        there ranks the trunk against the trunks recorded there before; a trunk cut there
        stops every one of its trials still in its trunk."""
        cut = self.trunk_cuts.get(trunk)
        if cut is None and epoch in milestones:
            recorded = self.trunk_rungs.setdefault(epoch, {})
            if trunk in recorded:
                return TrialScheduler.CONTINUE
            others = list(recorded.values())
            cutoff = float(np.nanpercentile(others, (1 - 1 / self.reduction_factor) * 100)
                           ) - self.margin if others else None
            recorded[trunk] = float(value)
            if cutoff is not None and value < cutoff:
                cut = self.trunk_cuts[trunk] = {
                    "rung": int(epoch), "metric": self.metric, "trunk_value": float(value),
                    "cutoff": cutoff, "compared_with": len(others), "margin": self.margin,
                    "trunk": f"batch size {trial.config.get('batch_size')}"}
        if cut is None:
            return TrialScheduler.CONTINUE
        if record:
            self.stops[trial.trial_id] = {**cut, "epoch": int(epoch), "value": float(value),
                                          "group_epochs": int(trial.config[self.group_key])}
        return TrialScheduler.STOP

    def on_trial_complete(self, tune_controller, trial, result: dict):
        self._group(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        group = self._group(trial)
        if trial.trial_id in group._trial_info:
            group.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "ScheduleAwareASHA: " + "; ".join(
            f"{length} epochs: {g.debug_string()}" for length, g in sorted(self.groups.items()))


@dataclass(frozen=True)
class AshaFlags:
    """The grid's and the weights search's ASHA flags (their options take each with
    trainables/flags.py ``like``, in their own group)."""

    scheduler: str = flag("asha", choices=("asha", "none"))
    grace_period: int | None = flag(None, type=at_least(1),
                                    help="first ASHA rung, epochs (default profile)")
    reduction_factor: float | None = flag(None, type=above_one,
                                          help="ASHA's (default profile)")
    asha_margin: float | None = flag(None, type=non_negative, help="stop a trial only when it "
                                     "is this far below ASHA's cutoff, in the metric's units, "
                                     "e.g. 0.01 (default profile)")


def scheduler_for(options, profile, metric: str = METRIC) -> ScheduleAwareASHA | None:
    """The search's scheduler: ASHA with the options' settings, the profile's where they are
    not given; None for ``--scheduler none``."""
    if options.scheduler != "asha":
        return None
    margin = profile.asha_margin if options.asha_margin is None else options.asha_margin
    return ScheduleAwareASHA(options.grace_period or profile.grace_period,
                             options.reduction_factor or profile.reduction_factor,
                             metric=metric, margin=margin)


def scheduler_params(scheduler: ScheduleAwareASHA | None) -> dict:
    """ASHA's settings for the search's parent run (None without ASHA)."""
    return {k: getattr(scheduler, a, None) for k, a in (
        ("grace_period", "grace_period"), ("reduction_factor", "reduction_factor"),
        ("asha_margin", "margin"))}
