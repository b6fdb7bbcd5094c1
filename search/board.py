"""What the progress view (search/progress.py) knows of a search's trials: one ``Row`` each, fed
by Tune's results and ends, and the numbers it shows from them (the counts, the best trial,
the ETAs), in words (``header``, ``clock``, ``stop_text``). No Tune and no terminal here.

ETAs come from the epochs' measured wall time (``time_this_iter_s`` over ``epochs_computed``:
an epoch a trial took from its shared trunk costs nothing); until a trial has computed one,
from the search's other trials, else from the plan's estimate (search/plan.py). The search's
epochs left count a shared trunk once, as far as its latest branch still to come.
"""

from __future__ import annotations

from dataclasses import dataclass

from search import plan as plans
from search.records import trial_run_name
from trainables.trunk import ALONE, Place, Progress, epochs_left, place


def clock(seconds: float | None) -> str:
    """A duration as a clock: 0:42, 12:05, 1:02:03; "?" when it is not known yet."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    m, s = divmod(max(0, round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def stop_text(stop: dict) -> str:
    """Where and why ASHA stopped a trial, short (search/asha.py's record; records.asha_tags
    words it in full for MLflow)."""
    cutoff = "n/a" if stop.get("cutoff") is None else f"{stop['cutoff']:.4f}"
    value = stop.get("trunk_value", stop.get("value"))
    trunk = " (trunk)" if "trunk" in stop else ""
    return f"rung {stop['rung']}{trunk}: {value:.4f} < {cutoff}"


@dataclass
class Row:
    """What the view knows of one trial."""

    name: str
    epochs: int
    status: str = "pending"  # pending, running, done, stopped, failed, retrying
    epoch: int = 0
    value: float | None = None
    best: float | None = None
    images_per_s: float | None = None
    computed_s: float = 0.0  # wall time of the epochs it computed itself
    computed: int = 0  # those epochs
    stop: str = ""  # why ASHA stopped it: "rung 4: 0.8213 < 0.8400"
    trunk_cut: bool = False  # ASHA cut its trunk: none of that trunk's trials goes on
    place: Place = ALONE  # among the trials it shares epochs with (trainables/trunk.py)

    def seconds_per_epoch(self) -> float | None:
        return self.computed_s / self.computed if self.computed else None


class TrialBoard:
    """A search's trials as rows, by trial id, and what they add up to (the module
    docstring). ``metric`` is what the rows show and the best is by; ``plan`` the search's
    plan (its estimate and trials at a time), if it has one."""

    def __init__(self, metric: str, plan: plans.Plan | None = None):
        self.metric, self.plan = metric, plan
        self.rows: dict[str, Row] = {}
        self.queued: list[str] = []  # trial ids with an epoch line not printed yet
        self.changed = False  # a trial started or ended since the search's last line

    def row(self, trial) -> Row:
        if trial.trial_id not in self.rows:
            cfg = trial.config or {}
            self.rows[trial.trial_id] = Row(
                trial_run_name(trial.trial_id, cfg), int(cfg.get("epochs") or 0),
                place=place(cfg) if "epochs" in cfg else ALONE)
        return self.rows[trial.trial_id]

    def result(self, trial, result: dict) -> None:
        row = self.row(trial)
        row.status = "running"
        row.epoch = int(result.get("epoch", result.get("training_iteration", row.epoch)))
        value = result.get(self.metric)
        if value is not None:
            row.value = float(value)
            row.best = row.value if row.best is None else max(row.best, row.value)
        if result.get("images_per_s"):
            row.images_per_s = float(result["images_per_s"])
        computed = int(result.get("epochs_computed", 1) or 0)
        if computed and result.get("time_this_iter_s") is not None:
            row.computed_s += float(result["time_this_iter_s"])
            row.computed += computed
        if trial.trial_id not in self.queued:
            self.queued.append(trial.trial_id)

    def ended(self, trial, status: str, stop: dict | None = None) -> None:
        row = self.row(trial)
        row.status = status
        if stop:
            row.stop, row.trunk_cut = stop_text(stop), "trunk" in stop
        if trial.trial_id in self.queued:  # the line of its end says what its last epoch did
            self.queued.remove(trial.trial_id)
        self.changed = True

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in ("done", "running", "stopped", "failed", "pending")}
        for row in self.rows.values():
            key = "running" if row.status == "retrying" else row.status
            out[key] = out.get(key, 0) + 1
        return out

    def best_row(self) -> Row | None:
        rows = [r for r in self.rows.values() if r.best is not None]
        return max(rows, key=lambda r: r.best) if rows else None

    def seconds_per_epoch(self, row: Row | None = None) -> float | None:
        """Wall seconds per computed epoch: the trial's own, else the search's, else the
        plan's estimate."""
        if row is not None and row.computed:
            return row.seconds_per_epoch()
        computed = sum(r.computed for r in self.rows.values())
        if computed:
            return sum(r.computed_s for r in self.rows.values()) / computed
        p = self.plan
        if p is not None and p.seconds is not None and p.at_most:
            return p.seconds * p.at_a_time / p.at_most
        return None

    def epochs_left(self) -> int:
        """The epochs the unfinished trials still compute: a shared trunk once, from as far as
        any of its trials took it to the latest branch still to come, then each trial's own;
        nothing for the trials of a trunk ASHA cut (they stop at their next epoch)."""
        cut = {r.place.trunk for r in self.rows.values() if r.trunk_cut and r.place.trunk}
        return epochs_left(
            Progress(r.place, r.epochs, r.epoch, r.status not in ("done", "stopped", "failed")
                     and r.place.trunk not in cut)
            for r in self.rows.values())

    def eta(self) -> float | None:
        per_epoch = self.seconds_per_epoch()
        if per_epoch is None:
            return None
        open_rows = sum(r.status in ("running", "pending", "retrying")
                        for r in self.rows.values())
        at_a_time = max(1, min(self.plan.at_a_time if self.plan else 1, open_rows or 1))
        return self.epochs_left() * per_epoch / at_a_time

    def row_eta(self, row: Row) -> float | None:
        if row.status in ("done", "stopped", "failed"):
            return 0.0
        per_epoch = self.seconds_per_epoch(row)
        return None if per_epoch is None else max(0, row.epochs - row.epoch) * per_epoch

    def header(self, eta_first: bool = False) -> str:
        """The search in a line: its trials' counts, the best so far, the ETA (first, on a
        terminal: a narrow one cuts the end of the line)."""
        c = self.counts()
        parts = [", ".join(f"{n} {k}" for k, n in c.items())]
        best = self.best_row()
        if best is not None:
            parts.append(f"best {best.name} {self.metric} {best.best:.4f}")
        if c["running"] or c["pending"]:
            eta = self.eta()
            when = "search ETA " + (clock(eta) if eta is not None else "after the first epoch")
            parts.insert(0 if eta_first else len(parts), when)
        return "; ".join(parts)
