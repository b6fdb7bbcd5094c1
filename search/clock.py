"""A search's time budget kept while it runs: no trial starts that cannot end before the deadline,
and at the deadline the trials still running stop at their last checkpoint, cut by the budget.

search/budget.py chose, before the search trained, what of its space fits; estimates are
estimates, so this module keeps the clock as the trials run:

- **A trial starts only when its estimate fits what is left.** ``Clocked``, the outermost of the
  search's Tune schedulers (around ASHA and the spare cores, search/spare.py), holds every new
  trial back (PAUSED, never started) and hands one to Tune when a trial's room is free and its
  estimate (``TrialCost``: its start, its epochs at the throughput the plan was priced with, the
  shared trunk counted once a sibling computed it) ends before the deadline. A trial that has
  trained (a resumed one, one paused to grow) goes on as it would without a budget.
- **At the deadline, or when nothing running is left and nothing waiting fits**, the search is
  cut (a pipeline's stage first lets the trials that end, at their pace, within a grace the
  later stages can spare go on: ``Clock.finishing``): Tune's run ends as after Ctrl-C (its own
  stop handler, called here, not signalled), each running trial keeping its last checkpoint and
  each waiting one its place. The driver
  (search/driver.py) then records the trials cut (tag ``time_budget``, status KILLED: never
  fusion candidates) and ends the search from the trials that finished, as a search that
  ended does; ``--resume --time-budget LONGER`` continues the cut trials from their checkpoints
  and starts those that waited.

The clock (``Clock``: the deadline, the cost, what was cut) is the search's (search/driver.py
makes it per search, in its command's run context): Tune pickles the scheduler with the
experiment, and a resumed search hands the restored one its own clock (``attach``).
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from search.plan import epochs_seconds
from search.throughput import model_of
from trainables import failpoints
from trainables.files import write_json
from trainables.trunk import place

FREE_EVERY_S = 0.5  # the cluster's free resources asked at most this often


class TrialCost:
    """What a trial costs from its start: ``throughput(config)`` (search/throughput.py, the
    plan's: asked once per model), a trial's start and its epochs at the search's image counts;
    None when there is no throughput for its model."""

    def __init__(self, throughput, train_images: int, val_images: int):
        self.throughput, self.train_images, self.val_images = throughput, train_images, val_images
        self.known: dict = {}  # model -> its throughput
        self.places: dict = {}  # trial id -> its place (a hash of its config: asked each step)

    def _place(self, trial):
        if trial.trial_id not in self.places:
            self.places[trial.trial_id] = place(trial.config)
        return self.places[trial.trial_id]

    def seconds(self, trial, trials) -> float | None:
        config = trial.config
        if (key := model_of(config)) not in self.known:
            self.known[key] = self.throughput(config)
        found = self.known[key]
        if found is None:
            return None
        epochs, where = int(config.get("epochs", 0)), self._place(trial)
        # its trunk's epochs are computed once: by a sibling that got past them, not by it
        done = where.trunk is not None and any(
            t is not trial and self._place(t).trunk == where.trunk
            and _epoch(t) >= where.branch for t in trials)
        own = epochs - where.branch if done else epochs
        return (found.start_s or 0.0) + epochs_seconds(config, own, found, self.train_images,
                                                       self.val_images)


def _epoch(trial) -> int:
    return int((getattr(trial, "last_result", None) or {}).get("epoch", 0) or 0)


def _seconds_left(trial) -> float | None:
    """A running trial's epochs to go at the pace of its last one (None before its first)."""
    last = getattr(trial, "last_result", None) or {}
    if not last.get("epoch") or not last.get("time_this_iter_s"):
        return None
    return (int(trial.config.get("epochs", 0)) - int(last["epoch"])) * \
        float(last["time_this_iter_s"])


@dataclass
class Clock:
    """One search's clock: its deadline (time.time(); None: no budget), what a trial costs,
    and, once it cut the search, why and each trial cut (trial id -> the epoch it had reached,
    0 for one that never started)."""

    deadline: float | None = None
    cost: TrialCost | None = None
    grace: float = 0.0  # how long past it running trials may go on to finish (``finishing``)
    why: str = ""
    cut: dict = field(default_factory=dict)

    def left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.time()

    def passed(self) -> bool:
        if self.deadline is not None and failpoints.deadline_passed():  # a test's deadline
            self.deadline = time.time()
        return self.deadline is not None and self.left() <= 0

    def finishing(self, trials) -> list:
        """The running trials that, at the pace of their last epoch, end within the grace past
        the deadline (a pipeline's stage: the later stages absorb it, tunefuse/stages.py);
        while there are any, the search is not cut."""
        end = (self.deadline or 0.0) + self.grace
        return [t for t in trials if t.status == Trial.RUNNING
                and _seconds_left(t) is not None and time.time() + _seconds_left(t) <= end]

    def fits(self, trial, trials) -> bool:
        """Whether ``trial``, started now, is estimated to end before the deadline."""
        if self.deadline is None:
            return True
        seconds = self.cost.seconds(trial, trials) if self.cost else None
        return seconds is None or seconds <= self.left()


class _Quiet(logging.Filter):
    """Tune's lines after a stop it takes for Ctrl-C ("Stop signal received", "Experiment has
    been interrupted", "Trials did not complete"): the search says what happened itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


class Clocked(TrialScheduler):
    """The search's scheduler (``base``: spare cores, ASHA, or None for Tune's FIFO) with the
    clock kept (module docstring)."""

    def __init__(self, base=None):
        super().__init__()
        self.base = base if base is not None else FIFOScheduler()
        self.clock: Clock | None = None  # attach; a search without one runs as without it
        self._free_at, self._free, self._waiting = 0.0, {}, False

    def __getstate__(self):  # Tune pickles the scheduler with the experiment: not the clock
        return {**self.__dict__, "clock": None, "_free_at": 0.0, "_free": {}, "_waiting": False}

    def __getattr__(self, name: str):  # what the base scheduler has (ASHA's stops)
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def attach(self, context) -> None:
        """This command's clock for the search (``context``: its search/context.py
        RunContext)."""
        self.clock = context.clock

    def _kept(self) -> bool:
        return self.clock is not None and self.clock.deadline is not None

    # --- Tune's scheduler API: the base's, new trials held back --------------------------------

    @property
    def metric(self):
        return self.base.metric

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return self.base.set_search_properties(metric, mode, **spec)

    def on_trial_add(self, tune_controller, trial: Trial):
        self.base.on_trial_add(tune_controller, trial)
        if self._kept() and trial.status == Trial.PENDING and not _epoch(trial) \
                and not trial.checkpoint:
            trial.set_status(Trial.PAUSED)  # waits for choose_trial_to_run to start it
            # its folder and config, as Tune writes them at its start: a trial cut before it
            # started is one of the search's results, named by its config (search/summary.py)
            trial.init_local_path()
            write_json(Path(trial.local_path) / "params.json", trial.config, default=str)

    def on_trial_error(self, tune_controller, trial: Trial):
        return self.base.on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        return self.base.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict):
        return self.base.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial: Trial):
        return self.base.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return self.base.debug_string()

    def save(self, checkpoint_path: str):
        return self.base.save(checkpoint_path)

    def restore(self, checkpoint_path: str):
        return self.base.restore(checkpoint_path)

    def choose_trial_to_run(self, tune_controller):
        if not self._kept():
            return self.base.choose_trial_to_run(tune_controller)
        trials = tune_controller.get_trials()
        if self.clock.cut:
            return None
        if self.clock.passed():
            if not (ending := self.clock.finishing(trials)):
                self._cut(trials, "its deadline came")
            elif not self._waiting:
                self._waiting = True
                print(f"time budget: the deadline came; {len(ending)} running trial(s) end within "
                      f"the {round(self.clock.grace)} s the later stages can spare, and go on",
                      flush=True)
            return None
        for t in trials:  # a trial that trained goes on (paused to grow, or resumed)
            if t.status == Trial.PAUSED and (_epoch(t) or t.checkpoint):
                return t
        waiting = [t for t in trials if t.status == Trial.PAUSED]
        if not waiting:
            return None
        starting = [t for t in trials if t.status == Trial.PENDING]  # handed to Tune, no worker yet
        running = starting or any(t.status == Trial.RUNNING for t in trials)
        if running and not self._room_for(waiting[0], starting):
            return None
        fitting = next((t for t in waiting if self.clock.fits(t, trials)), None)
        if fitting is None and not running:
            self._cut(trials, "no trial left to start fits what is left of it")
        return fitting if fitting is not None and self._room_for(fitting, starting) else None

    def _room_for(self, trial: Trial, starting: list) -> bool:
        """Whether the cluster has free what ``trial`` takes, besides what the trials
        ``starting`` take (Ray's free resources asked at most every FREE_EVERY_S)."""
        if time.monotonic() - self._free_at >= FREE_EVERY_S:
            self._free, self._free_at = ray.available_resources(), time.monotonic()
        need = trial.placement_group_factory.required_resources
        taken: dict = {}
        for t in starting:
            for k, v in t.placement_group_factory.required_resources.items():
                taken[k] = taken.get(k, 0.0) + v
        return all(self._free.get(k, 0.0) - taken.get(k, 0.0) + 1e-9 >= v
                   for k, v in need.items() if v)

    def _cut(self, trials, why: str) -> None:
        """End Tune's run as Ctrl-C does: the running trials keep their last checkpoints, the
        waiting ones their places; what was cut is the clock's."""
        left = {t.trial_id: _epoch(t) for t in trials
                if t.status not in (Trial.TERMINATED, Trial.ERROR)}
        if not left:  # every trial ended: Tune's run ends by itself
            return
        self.clock.why, self.clock.cut = why, left
        logging.getLogger("ray.tune.tune").addFilter(_QUIET)
        stop = signal.getsignal(signal.SIGUSR1)  # Tune's own handler while it runs
        if callable(stop) and getattr(stop, "__module__", "").startswith("ray.tune"):
            stop(signal.SIGUSR1, None)
            return
        # Tune installs it only on the main thread: here the search cannot be cut, and goes on
        # as one without a budget rather than hold its waiting trials for ever
        print(f"time budget: {why}, but this search runs off the main thread, where Tune's "
              "run cannot be stopped; it goes on without its budget", flush=True)
        self.clock.cut, self.clock.deadline = {}, None


_QUIET = _Quiet()


def quiet_done() -> None:
    """Tune's interruption lines shown again (after a search's run that was cut)."""
    logging.getLogger("ray.tune.tune").removeFilter(_QUIET)
