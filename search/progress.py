"""What a search shows while it runs: one progress view, on Tune's reporter API.

``ProgressView`` is the search's Tune progress reporter (a ``CLIReporter``): one row per trial,
under the name its MLflow run has (records.trial_run_name), with its status (an ASHA stop with
its rung and cutoff), epoch k/N, val_acc, its best, img/s and its ETA; above the rows the
trials done, running, stopped, failed and pending, the best trial so far and the search's ETA
(what it knows and computes: search/board.py). On a terminal the view is redrawn in place (at
most every REFRESH_S), and the search's other lines are printed above it (``say``); otherwise
each trial that finished an epoch gets one line, at most every ``TUNEFUSE_PROGRESS_EVERY``
seconds (default 10), then one line for the search. ``TrialLines``, a Tune callback, feeds it
every result and prints one line when a trial ends (finished, stopped by ASHA, failed,
retried).

The verbosity is the command's (its run context, search/context.py): Tune keeps the reporter
it was given in the experiment, and a search resumed with -v or -q hands the restored view the
resumed command's (``attach``, search/tuner.py). -v prints Tune's own table (with its scheduler
dump and logdir), -q nothing but errors.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

from ray import tune
from ray.tune import CLIReporter

from search import plan as plans
from search.board import Row, TrialBoard, clock, stop_text
from search.records import error_line, trial_run_name
from trainables.cli import NORMAL, QUIET, VERBOSE

REFRESH_S = 1.0  # a terminal's view is redrawn at most this often
EVERY_ENV = "TUNEFUSE_PROGRESS_EVERY"
EVERY_S = 10.0  # without a terminal: a batch of epoch lines at most this often (EVERY_ENV)


class ProgressView(TrialBoard, CLIReporter):
    """The search's progress view (module docstring); Tune's CLIReporter under -v. ``level``:
    the command's verbosity (trainables/cli.py)."""

    def __init__(self, name: str, metric: str, columns: tuple[str, ...], scheduler=None,
                 plan: plans.Plan | None = None, level: int = NORMAL):
        CLIReporter.__init__(  # Tune's own table, for -v
            self, metric_columns={metric: metric, "epoch": "epoch", "train_loss": "train loss",
                                  "images_per_s": "img/s"},
            parameter_columns={k: k for k in columns}, max_report_frequency=30,
            sort_by_metric=True, max_progress_rows=40)
        TrialBoard.__init__(self, metric, plan)
        self.name, self.scheduler, self.level = name, scheduler, level
        self.printed_at = 0.0  # time.monotonic() of the last batch of lines or drawing
        self.drawn = 0  # lines of the view on the terminal now

    def __getstate__(self):  # Tune pickles the reporter with the experiment
        state = dict(self.__dict__)
        state.update(drawn=0, printed_at=0.0, queued=[], changed=False)
        return state

    def attach(self, context) -> None:
        """The view Tune restored for a resumed search: the resumed command's verbosity
        (``context``: its search/context.py RunContext)."""
        self.level = context.level

    # --- Tune's reporter API ---------------------------------------------------------------

    def setup(self, start_time: float | None = None, total_samples: int | None = None,
              metric: str | None = None, mode: str | None = None, **kwargs) -> None:
        CLIReporter.setup(self, start_time, total_samples, metric, mode, **kwargs)
        self.printed_at = time.monotonic()  # the first lines after EVERY_S, not at once

    def should_report(self, trials, done: bool = False) -> bool:
        if self.level >= VERBOSE:
            return CLIReporter.should_report(self, trials, done)
        if self.level <= QUIET:
            return False
        for trial in trials:
            self._sync(trial)
        since = time.monotonic() - self.printed_at
        if self._tty():
            return done or since >= REFRESH_S or not self.drawn
        every = float(os.environ.get(EVERY_ENV, EVERY_S))
        return bool(self.queued or (self.changed and not done)) and (done or since >= every)

    def report(self, trials, done: bool, *sys_info: str) -> None:
        if self.level >= VERBOSE:
            return CLIReporter.report(self, trials, done, *sys_info)
        if self._tty():
            self.clear()
            lines = self.view_lines(self._height())
            self._print_lines(lines)
            self.drawn = len(lines)
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

    def say(self, text: str, err: bool = False) -> None:
        """Print a line of the search's (a trial's end, a fault) above the view, if it is
        drawn; the view comes back at its next refresh."""
        self.clear()
        print(text, file=sys.stderr if err else sys.stdout, flush=True)


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

    def say(self, text: str, err: bool = False) -> None:
        """A line of the search's, above its view (ProgressView.say) when it has one."""
        view = getattr(self, "view", None)
        if view is not None:
            view.say(text, err)
        else:
            print(text, file=sys.stderr if err else sys.stdout, flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if value is not None and value > self.best.get(trial.trial_id, (-1.0, 0))[0]:
            self.best[trial.trial_id] = (float(value), int(result.get("epoch", 0)))
        if getattr(self, "view", None) is not None:
            self.view.result(trial, result)
        if result.get("checkpoint_fault"):
            self.say(f"[{self.name}] {self._name(trial)}: checkpoint fault: "
                     f"{result['checkpoint_fault']}", err=True)

    def on_trial_recover(self, iteration, trials, trial, **info):
        why = error_line(trial) or "its worker died"
        if getattr(self, "view", None) is not None:
            self.view.ended(trial, "retrying")
        self.say(f"[{self.name}] {self._name(trial)}: failed ({why}); retrying from its "
                 f"last checkpoint (failure {trial.num_failures})", err=True)

    def _line(self, trial, outcome: str, err: bool = False) -> None:
        value, epoch = self.best.get(trial.trial_id, (float("nan"), 0))
        self.say(f"[{self.name}] {self._name(trial)}: {outcome}; best {self.metric} "
                 f"{value:.4f} at epoch {epoch}", err=err)

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
