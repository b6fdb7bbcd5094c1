"""What a search shows while it runs: one progress view, on Tune's reporter API.

``ProgressView`` is the search's Tune progress reporter (a ``CLIReporter``): one row per trial,
under the name its MLflow run has (records.trial_run_name), with its status (an ASHA stop with
its rung and cutoff), epoch k/N, val_acc, its best, img/s and its ETA; above the rows the
trials done, running, stopped, failed and pending, the best trial so far and the search's ETA.
On a terminal the view is redrawn in place (at most every REFRESH_S); otherwise each trial that
finished an epoch gets one line, at most every ``TUNEFUSE_PROGRESS_EVERY`` seconds (default
10), then one line for the search. ``TrialLines``, a Tune callback, feeds it every result and
prints one line when a trial ends (finished, stopped by ASHA, failed, retried).

The verbosity (trainables/cli.py) is read when the view prints, not when it is made: Tune keeps
the reporter it was given in the experiment, so a search resumed with -v or -q shows what the
resumed command asked for. -v prints Tune's own table (with its scheduler dump and logdir), -q
nothing but errors.

ETAs come from the epochs' measured wall time (``time_this_iter_s`` over ``epochs_computed``:
an epoch a trial took from its shared trunk costs nothing); until a trial has computed one,
from the search's other trials, else from the plan's estimate (search/plan.py). The search's
epochs left count a shared trunk once, as far as its latest branch still to come.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass

from ray import tune
from ray.tune import CLIReporter

from search import plan as plans
from search.records import error_line, trial_run_name
from trainables.cli import QUIET, VERBOSE, verbosity
from trainables.trunk import ALONE, Place, Progress, epochs_left, place

REFRESH_S = 1.0  # a terminal's view is redrawn at most this often
EVERY_ENV = "TUNEFUSE_PROGRESS_EVERY"
EVERY_S = 10.0  # without a terminal: a batch of epoch lines at most this often (EVERY_ENV)
_LIVE: list = []  # the view drawn in place on the terminal now (at most one)


def clock(seconds: float | None) -> str:
    """A duration as a clock: 0:42, 12:05, 1:02:03; "?" when it is not known yet."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    m, s = divmod(max(0, round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def say(text: str, err: bool = False) -> None:
    """Print a line of the search's (a trial's end, a fault) above the live view, if one is
    drawn; the view comes back at its next refresh."""
    if _LIVE:
        _LIVE[0].clear()
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


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


class ProgressView(CLIReporter):
    """The search's progress view (module docstring); Tune's CLIReporter under -v."""

    def __init__(self, name: str, metric: str, columns: tuple[str, ...], scheduler=None,
                 plan: plans.Plan | None = None):
        super().__init__(  # Tune's own table, for -v
            metric_columns={metric: metric, "epoch": "epoch", "train_loss": "train loss",
                            "images_per_s": "img/s"},
            parameter_columns={k: k for k in columns}, max_report_frequency=30,
            sort_by_metric=True, max_progress_rows=40)
        self.name, self.metric, self.scheduler, self.plan = name, metric, scheduler, plan
        self.rows: dict[str, Row] = {}
        self.queued: list[str] = []  # trial ids with an epoch line not printed yet
        self.changed = False  # a trial started or ended since the search's last line
        self.printed_at = 0.0  # time.monotonic() of the last batch of lines or drawing
        self.drawn = 0  # lines of the view on the terminal now

    def __getstate__(self):  # Tune pickles the reporter with the experiment
        state = dict(self.__dict__)
        state.update(drawn=0, printed_at=0.0, queued=[], changed=False)
        return state

    # --- fed by TrialLines ----------------------------------------------------------------

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

    # --- Tune's reporter API ---------------------------------------------------------------

    def setup(self, start_time: float | None = None, total_samples: int | None = None,
              metric: str | None = None, mode: str | None = None, **kwargs) -> None:
        super().setup(start_time, total_samples, metric, mode, **kwargs)
        self.printed_at = time.monotonic()  # the first lines after EVERY_S, not at once

    def should_report(self, trials, done: bool = False) -> bool:
        level = verbosity()
        if level >= VERBOSE:
            return super().should_report(trials, done)
        if level <= QUIET:
            return False
        for trial in trials:
            self._sync(trial)
        since = time.monotonic() - self.printed_at
        if self._tty():
            return done or since >= REFRESH_S or not self.drawn
        every = float(os.environ.get(EVERY_ENV, EVERY_S))
        return bool(self.queued or (self.changed and not done)) and (done or since >= every)

    def report(self, trials, done: bool, *sys_info: str) -> None:
        if verbosity() >= VERBOSE:
            return super().report(trials, done, *sys_info)
        if self._tty():
            self.clear()
            lines = self.view_lines(self._height())
            self._print_lines(lines)
            self.drawn = len(lines)
            _LIVE[:] = [] if done else [self]
            if done:
                self.drawn = 0  # the last view stays on the screen, above what follows
            return None
        lines = [self._epoch_line(t) for t in self.queued]
        if not done:  # what follows the last is the search's table
            lines.append(f"[{self.name}] {self.header()}")
        self.queued, self.changed = [], False
        if lines:
            self._print_lines(lines)
        return None

    # --- what is shown -----------------------------------------------------------------------

    def _sync(self, trial) -> None:
        """A row's status from Tune's trial (pending, and ends the callback did not see); a
        trial that reported before a --resume, its epoch and val_acc from Tune's record."""
        row = self.row(trial)
        last = getattr(trial, "last_result", None) or {}
        if not row.epoch and last.get(self.metric) is not None:
            row.epoch, row.value = int(last.get("epoch", 0)), float(last[self.metric])
            best = (getattr(trial, "metric_analysis", None) or {}).get(self.metric, {})
            row.best = float(best.get("max", row.value))
        was = row.status
        if trial.status == "RUNNING" and row.status == "pending":
            row.status = "running"
        elif trial.status == "ERROR":
            row.status = "failed"
        elif trial.status == "TERMINATED" and row.status in ("pending", "running"):
            stop = getattr(self.scheduler, "stops", {}).get(trial.trial_id)
            row.status = "stopped" if stop else "done"
            if stop:
                row.stop, row.trunk_cut = stop_text(stop), "trunk" in stop
        self.changed = self.changed or row.status != was

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

    def _status(self, row: Row) -> str:
        return f"stopped at {row.stop}" if row.status == "stopped" and row.stop else row.status

    def _epoch_line(self, trial_id: str) -> str:
        row = self.rows[trial_id]
        value = "?" if row.value is None else f"{row.value:.4f}"
        best = "?" if row.best is None else f"{row.best:.4f}"
        ips = "" if row.images_per_s is None else f"  {row.images_per_s:,.0f} img/s"
        return (f"[{self.name}] {row.name}  epoch {row.epoch}/{row.epochs}  {self.metric} "
                f"{value}  best {best}{ips}  ETA {clock(self.row_eta(row))}")

    def view_lines(self, height: int) -> list[str]:
        """The view on a terminal: the search's line, a header, then rows (running first,
        then the best, then pending), as many as ``height`` leaves room for; the status last,
        where a narrow terminal cuts a long one (an ASHA stop's reason)."""
        order = {"running": 0, "retrying": 0, "done": 1, "stopped": 1, "failed": 2,
                 "pending": 3}
        rows = [r for _, r in sorted(self.rows.items(), key=lambda kv: (
            order.get(kv[1].status, 4), -(kv[1].best or 0.0), kv[0]))]
        width = max([5, *(len(r.name) for r in rows)])
        lines = [f"{self.name}: {self.header(eta_first=True)}",
                 f"  {'trial':<{width}}  {'epoch':>7} {self.metric:>8} {'best':>7} "
                 f"{'img/s':>7} {'ETA':>8}  status"]
        room = max(3, height - len(lines) - 1)
        for row in rows[:room]:
            value = "" if row.value is None else f"{row.value:.4f}"
            best = "" if row.best is None else f"{row.best:.4f}"
            ips = "" if row.images_per_s is None else f"{row.images_per_s:,.0f}"
            eta = clock(self.row_eta(row)) if row.status in ("running", "retrying") else ""
            lines.append(f"  {row.name:<{width}}  {f'{row.epoch}/{row.epochs}':>7} {value:>8} "
                         f"{best:>7} {ips:>7} {eta:>8}  {self._status(row)}")
        if len(rows) > room:
            rest = rows[room:]
            kinds = {}
            for r in rest:
                kinds[r.status] = kinds.get(r.status, 0) + 1
            lines.append(f"  ... {len(rest)} more (" +
                         ", ".join(f"{n} {k}" for k, n in kinds.items()) + ")")
        columns = shutil.get_terminal_size((120, 24)).columns
        return [ln[:columns - 1].rstrip() for ln in lines]

    # --- the terminal ------------------------------------------------------------------------

    def _tty(self) -> bool:
        return sys.stdout.isatty()

    def _height(self) -> int:
        return shutil.get_terminal_size((120, 24)).lines

    def clear(self) -> None:
        """Take the drawn view off the terminal (cursor up its lines, erase below)."""
        if self.drawn:
            sys.stdout.write(f"\x1b[{self.drawn}F\x1b[J")
            sys.stdout.flush()
            self.drawn = 0
            self.printed_at = 0.0  # drawn again at the next report

    def _print_lines(self, lines: list[str]) -> None:
        print("\n".join(lines), flush=True)
        self.printed_at = time.monotonic()


def stop_text(stop: dict) -> str:
    """Where and why ASHA stopped a trial, short (search/asha.py's record; records.asha_tags
    words it in full for MLflow)."""
    cutoff = "n/a" if stop.get("cutoff") is None else f"{stop['cutoff']:.4f}"
    value = stop.get("trunk_value", stop.get("value"))
    trunk = " (trunk)" if "trunk" in stop else ""
    return f"rung {stop['rung']}{trunk}: {value:.4f} < {cutoff}"


class TrialLines(tune.Callback):
    """A Tune callback: feeds the search's ProgressView every result, and prints one line when
    a trial ends (finished, stopped by ASHA with its rung and cutoff, failed) or is retried,
    and for a checkpoint fault. Lines name the trial as its MLflow run does."""

    def __init__(self, name: str, metric: str, columns: tuple[str, ...], scheduler=None,
                 view: ProgressView | None = None):
        self.name, self.metric, self.columns, self.scheduler = name, metric, columns, scheduler
        self.view = view
        self.best: dict[str, tuple[float, int]] = {}

    def _name(self, trial) -> str:
        return trial_run_name(trial.trial_id, trial.config)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if value is not None and value > self.best.get(trial.trial_id, (-1.0, 0))[0]:
            self.best[trial.trial_id] = (float(value), int(result.get("epoch", 0)))
        if getattr(self, "view", None) is not None:
            self.view.result(trial, result)
        if result.get("checkpoint_fault"):
            say(f"[{self.name}] {self._name(trial)}: checkpoint fault: "
                f"{result['checkpoint_fault']}", err=True)

    def on_trial_recover(self, iteration, trials, trial, **info):
        why = error_line(trial) or "its worker died"
        if getattr(self, "view", None) is not None:
            self.view.ended(trial, "retrying")
        say(f"[{self.name}] {self._name(trial)}: failed ({why}); retrying from its last "
            f"checkpoint (failure {trial.num_failures})", err=True)

    def _line(self, trial, outcome: str, err: bool = False) -> None:
        value, epoch = self.best.get(trial.trial_id, (float("nan"), 0))
        say(f"[{self.name}] {self._name(trial)}: {outcome}; best {self.metric} {value:.4f} at "
            f"epoch {epoch}", err=err)

    def on_trial_complete(self, iteration, trials, trial, **info):
        stop = getattr(self.scheduler, "stops", {}).get(trial.trial_id)
        if getattr(self, "view", None) is not None:
            self.view.ended(trial, "stopped" if stop else "done", stop)
        self._line(trial, f"stopped by ASHA at epoch {stop['epoch']} ({stop_text(stop)})"
                   if stop else f"finished, {(trial.config or {}).get('epochs', '?')} epochs")

    def on_trial_error(self, iteration, trials, trial, **info):
        if getattr(self, "view", None) is not None:
            self.view.ended(trial, "failed")
        self._line(trial, f"FAILED ({error_line(trial) or 'see the table at the end'})",
                   err=True)
