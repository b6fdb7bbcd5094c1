"""A search's Tune experiment on disk and in Tune: the Tuner of each part, made or restored,
and whether a saved one was interrupted.

Each part's Tuner runs the Trainable with the search's scheduler (its spare cores,
search/spare.py, and its time budget's clock, search/clock.py), searcher, progress view
(search/progress.py), MLflow lineage (search/lineage.py) and state copies
(search/tunestate.py). Tune keeps the view and the
callbacks in the experiment (its ``tuner.pkl``) and restores them from there on --resume; the
restored ones are handed the resumed command's run context (``restore``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune
from ray.tune import ExperimentAnalysis

from search import plan, tunestate
from search.clock import Clocked
from search.cluster import joined
from search.context import RunContext, Search
from search.options import AUTO
from search.progress import ProgressView, TrialLines
from search.spare import spare_cores
from search.workspace import Workspace
from trainables import failpoints
from trainables.files import first_line
from trainables.trainable import MODE


class StateError(Exception):
    """Tune's saved experiment state is there but cannot be read; one line, exit 4."""


@dataclass(frozen=True)
class Build:
    """What every part of a search's experiment is made with: the search, its Trainable (with
    its resources and data), its MLflow lineage callback, the options, the workspace (where
    Tune keeps its experiments), the command's run context and the search's plan (the view's
    first ETAs)."""

    search: Search
    trainable: object
    lineage: tune.Callback
    options: object
    ws: Workspace
    context: RunContext
    found: plan.Plan | None = None


def make_tuner(build: Build, name: str, num_samples: int, first: bool) -> tune.Tuner:
    """The Tuner of the part ``name`` of the search, of ``num_samples`` trials (``first``:
    the search's first part, whose searcher queues its starting points)."""
    search, options, storage = build.search, build.options, build.ws.storage_path
    searcher = search.make_searcher(build.ws, first) if search.make_searcher else None
    # one row per trial under its MLflow run's name, with ETAs (search/progress.py)
    view = ProgressView(name, search.metric, search.columns, search.scheduler, build.found,
                        build.context.level)
    # the cores of trials that ended go to the trials left (search/spare.py); a part of an
    # extended experiment plans its own trials
    scheduler = search.scheduler
    if search.resources is not None:
        scheduler = spare_cores(scheduler, search.resources, options.cpus_per_trial == AUTO,
                                len(plan.trial_configs(search.param_space, num_samples)),
                                ray.cluster_resources().get("CPU", 0), joined(options))
    reuse = scheduler is search.scheduler  # a grown trial needs a new worker
    # outermost: the time budget's clock, kept as the trials run (search/clock.py)
    clocked = Clocked(scheduler)
    clocked.attach(build.context)
    tuner = tune.Tuner(
        build.trainable, param_space=search.param_space,
        tune_config=tune.TuneConfig(
            metric=search.metric, mode=MODE, scheduler=clocked,
            search_alg=searcher, num_samples=num_samples,
            max_concurrent_trials=options.max_concurrent or None, reuse_actors=reuse),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, verbose=1, progress_reporter=view,
            callbacks=[build.lineage, TrialLines(name, search.metric, search.columns,
                                                 search.scheduler, view),
                       tunestate.StateCopies(os.path.join(storage, name))],
            # each result says whether to checkpoint (should_checkpoint): every epoch whose
            # weights the trial holds, not the epochs it replays (trainables/trainable.py).
            # Not at the end as well (Tune's default for a class trainable): a trial that ASHA
            # stopped while it replayed its trunk holds no weights of that epoch, and its
            # untrained state would be kept as the checkpoint of the epoch it reported
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=search.metric,
                checkpoint_score_order=MODE, checkpoint_frequency=0,
                checkpoint_at_end=False),
            failure_config=tune.FailureConfig(max_failures=options.max_failures)))
    # Tune wrote tuner.pkl; no experiment state yet (restorable)
    failpoints.reach("tuner-created", experiment=name)
    return tuner


def restorable(path: str) -> bool:
    """Whether Tune saved an experiment state at ``path`` to restore. A Tuner writes its
    tuner.pkl when it is made and its first experiment state only once it runs: a search
    killed between the two has nothing to restore (no trial has reported) and starts again."""
    return tune.Tuner.can_restore(path) and bool(list(Path(path).glob("experiment_state*.json")))


def restore(path: str, trainable, context: RunContext) -> tune.Tuner:
    """The Tuner Tune saved at ``path``, its unfinished and failed trials to go on, its
    progress view, callbacks and scheduler (restored by Tune from its tuner.pkl, which takes no
    new ones) attached to this command's run ``context``: its verbosity, its budget's clock."""
    try:
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    except StateError:
        raise
    except Exception as e:
        raise StateError(f"Tune cannot restore {path} ({first_line(e)}); start the experiment "
                         "again under a new --name (its MLflow runs stay as they are)"
                         ) from None
    for restored in restored_parts(tuner):
        if callable(getattr(restored, "attach", None)):
            restored.attach(context)
    return tuner


def restored_parts(tuner: tune.Tuner) -> list:
    """The progress reporter, callbacks and scheduler of a restored Tuner (what Tune
    unpickled)."""
    local = tuner._local_tuner  # a local Tuner: Ray Client is refused
    config = local.get_run_config()
    return [config.progress_reporter, *(config.callbacks or []), local._tune_config.scheduler]


def interrupted(path: str) -> bool:
    """Whether the Tune run saved at ``path`` was stopped (Ctrl-C) with trials still open.
    Nothing saved yet means it never got going (stopped at once); a saved state that cannot
    be read is a StateError, not an interruption."""
    if put := tunestate.repair(path):  # a kill in the middle of Tune's copy of its state
        print(f"{Path(path).name}: Tune's saved state was cut short by the kill "
              f"({', '.join(put)}); resuming from its last complete copy", file=sys.stderr)
    if not list(Path(path).glob("experiment_state*.json")):
        return True
    try:
        trials = ExperimentAnalysis(path).trials
    except Exception as e:
        raise StateError(f"Tune cannot restore {path}: its saved state cannot be read "
                         f"({first_line(e)}); start the experiment again under a new --name "
                         "(its MLflow runs stay as they are)") from None
    return any(t.status not in ("TERMINATED", "ERROR") for t in trials)
