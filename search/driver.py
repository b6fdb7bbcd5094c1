"""Running one search: the workspace, its saved state, the parent run, the Tuner, the end.

An experiment kind (search/grid.py, search/weights.py) defines its search space, scheduler and
searcher as a ``Search`` and calls ``run_search``; resources and the cluster (search/cluster.py),
the plan printed before training (search/plan.py), lineage (search/lineage.py), resume,
failures and the summary (search/summary.py) are done here once for all of them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray
from mlflow.entities import Param
from ray import tune
from ray.tune import ExperimentAnalysis

from search import offline, plan, throughput, tunestate
from search.backfill import catch_up
from search.claims import WORKSPACE_TAG, check_owner, claim_search
from search.cluster import (
    check_cluster,
    check_storage,
    job_submission_id,
    joined,
    resources,
    room,
    start_ray,
)
from search.kinds import FUSION_TAG
from search.lineage import MLflowLineage
from search.options import AUTO, UsageError, check_resume, cluster_address
from search.progress import ProgressView, TrialLines
from search.records import log_datasets, split_datasets
from search.spare import spare_cores
from search.summary import resource_text, summarise
from search.workspace import Workspace, WorkspaceError, git_commit, redact
from trainables import failpoints
from trainables.cli import EXIT_INTERRUPTED, EXIT_STATE, EXIT_USAGE
from trainables.files import first_line
from trainables.trainable import METRIC, MODE, ClassifierTrainable


@dataclass
class Search:
    """What an experiment kind hands to run_search."""

    name: str
    kind: str  # "grid", "weights"
    param_space: dict
    scheduler: object
    num_samples: int = 1  # trials in all, over every part of the experiment
    params: dict | None = None  # the search's arguments, for the parent run
    tags: dict | None = None
    metric: str = METRIC  # what the scheduler, the searcher and checkpoint keeping maximise
    columns: tuple[str, ...] = ("batch_size", "epochs")  # config keys in the trial table
    # make_searcher(ws, first) -> a Tune searcher; first is False for a later part, which
    # must not repeat the starting points. None: Tune's grid/random variant generator.
    make_searcher: Callable[[Workspace, bool], object] | None = None
    # trials_done(ws) -> trials the experiment has run so far, over all its parts; when it
    # is short of num_samples after a resumed part ends, a new part runs the rest.
    trials_done: Callable[[Workspace], int] | None = None
    # report(results, client, parent_id, ws): extra lines and records at the end
    report: Callable | None = None
    resources: tuple[float, float] | None = None  # (CPUs, GPUs) a trial takes, once resolved
    fuses: bool = True  # its finished trials are fusion candidates (search/kinds.py)


@dataclass
class Opened:
    """What a search has once its checks passed (``_open``): its workspace, saved state
    (None: a new search), MLflow client, dashboard; then its MLflow experiment and the
    hardware its trials run on."""

    ws: Workspace
    state: dict | None
    client: object
    dashboard: str | None
    experiment_id: str = ""
    hardware: str = ""


class StateError(Exception):
    """Tune's saved experiment state is there but cannot be read; one line, exit 4."""


def run_search(options, search: Search, split, on_start=None) -> int:
    """Run (or resume) one Tune experiment with its MLflow lineage; returns the exit code."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    with contextlib.ExitStack() as claims:  # what it holds alone, until it ends
        return _run(options, search, split, on_start, claims)


def _run(options, search: Search, split, on_start, claims: contextlib.ExitStack) -> int:
    try:
        opened = _open(options, search, split, claims)
    except (WorkspaceError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except StateError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_STATE
    ws, state, client = opened.ws, opened.state, opened.client
    offline.back_online(ws.tracking_uri)  # it answered: this search records again
    hardware = throughput.hardware(search.resources, cluster_address(options))
    job = job_submission_id()  # a search submitted as a Ray Job: which one
    search.tags = {**(search.tags or {}), "hardware": hardware,  # on a new parent run
                   **({"ray_job_submission_id": job} if job else {})}
    experiment_id = ws.experiment_id(client, search.name)
    if state is None:  # saved before the parent run exists: a kill between the two leaves a
        state = {"name": search.name, "kind": search.kind, "parent_run_id": None,  # state
                 "experiment_id": experiment_id, "storage_path": ws.storage_path,  # that
                 "data_fingerprint": split.fingerprint, "created": time.time()}  # finds it
        ws.save_state(search.name, state)
    opened.state, opened.experiment_id, opened.hardware = state, experiment_id, hardware
    try:
        return _search(options, search, split, on_start, opened)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM outside Tune's run (which handles its own)
        parent_id = state.get("parent_run_id") or _parent_of(client, experiment_id, state)
        if parent_id is None:  # nothing recorded yet but the state file: --resume starts it
            print(f"\nexperiment {search.name} interrupted before it recorded anything; run "
                  "the same command with --resume", file=sys.stderr)
            return EXIT_INTERRUPTED
        return stop_interrupted(client, parent_id, search, ws, state)


def _search(options, search: Search, split, on_start, opened: Opened) -> int:
    """The search once its state exists: its parent run, Tune's run, the summary."""
    ws, state, client, dashboard = opened.ws, opened.state, opened.client, opened.dashboard
    experiment_id, hardware = opened.experiment_id, opened.hardware
    if state.get("parent_run_id") is None:
        state["parent_run_id"] = parent_run(client, experiment_id, search, split, state,
                                             ws.root)
        ws.save_state(search.name, state)
    else:
        client.update_run(state["parent_run_id"], status="RUNNING")
        if job := search.tags.get("ray_job_submission_id"):  # resubmitted: the latest job
            client.set_tag(state["parent_run_id"], "ray_job_submission_id", job)
        log_datasets(client, state["parent_run_id"], split_datasets(split))  # if none yet
    parent_id = state["parent_run_id"]

    if on_start:
        on_start(ws, dashboard)
    print(f"experiment {search.name}: MLflow {redact(ws.tracking_uri)} (parent run "
          f"{parent_id}), Ray dashboard {dashboard or 'n/a'}; each trial takes "
          f"{resource_text(search.resources)}"
          + (" (auto)" if AUTO in (options.cpus_per_trial, options.gpus_per_trial) else ""),
          flush=True)
    found = show_plan(options, search, split, client, parent_id, hardware, ws.tracking_uri)
    cpus, gpus = search.resources
    trainable = tune.with_resources(
        tune.with_parameters(ClassifierTrainable, split=split), {"cpu": cpus, "gpu": gpus})
    lineage = MLflowLineage(ws.tracking_uri, experiment_id, parent_id, search.scheduler,
                            metric=search.metric, datasets=split_datasets(split))
    try:
        results, code = _fit(options, search, ws, state, trainable, lineage, client, found)
    except StateError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_STATE
    if code is not None:
        return code
    if options.resume:  # what MLflow missed (a server that went away), from Tune's results
        catch_up(ws.tracking_uri, search, results, client, experiment_id, parent_id,
                 split_datasets(split))
    code = summarise(results, client, parent_id, ws, dashboard, search)
    offline.note(ws, search.name, state)
    return code


def show_plan(options, search: Search, split, client, parent_id: str, hardware: str,
              tracking_uri: str) -> plan.Plan:
    """Print the search's plan (search/plan.py) before it trains and record its figures as the
    parent run's plan_* params; the plan. A resumed search prints it again; the params stay
    those of the start (MLflow keeps a param's first value)."""
    def earlier(config: dict):
        try:
            return throughput.earlier_throughput(client, hardware, config,
                                                 search.resources[1], len(split.y_train))
        except offline.TRACKING_ERRORS as e:
            print(f"plan: earlier trials unreadable ({first_line(e)})", file=sys.stderr)
            return None

    trials = len(plan.trial_configs(search.param_space, search.num_samples))
    found = plan.make(
        search.param_space, search.num_samples, asha=search.scheduler is not None,
        at_a_time=plan.at_a_time(trials, search.resources, room(options),
                                 options.max_concurrent),
        train_images=len(split.y_train), val_images=len(split.y_val), throughput=earlier)
    print(found.line(), flush=True)

    def record():
        if not any(k.startswith("plan_") for k in client.get_run(parent_id).data.params):
            client.log_batch(parent_id, params=[Param(k, str(v)[:500])
                                                for k, v in found.params().items()])

    offline.tracked(tracking_uri, record)
    return found


def _open(options, search: Search, split, claims: contextlib.ExitStack):
    """The workspace, the search's saved state (None: a new search), the MLflow client and the
    dashboard, with every check that must pass before anything is recorded; what the search
    holds alone is taken into ``claims`` (search/claims.py)."""
    ws = Workspace.open(options.workspace, options.tracking_uri, options.storage_path)
    claim_search(claims, ws, search.name)
    state = ws.load_state(search.name)
    check_resume("experiment", search.name, state is not None, options.resume, ws.root)
    if state is not None and state["data_fingerprint"] != split.fingerprint:
        raise UsageError(f"experiment {search.name!r} was run on data "
                         f"{state['data_fingerprint'][:16]}, this one is "
                         f"{split.fingerprint[:16]}; use the same --data-dir, --train-size "
                         "and --seed")
    if state is not None:  # before anything is recorded: a state Tune cannot read
        for part in state.get("parts", [search.name]):
            interrupted(os.path.join(ws.storage_path, part))
    client = ws.client()
    check_owner(client, ws, search.name)
    dashboard = start_ray(options)  # before anything is recorded: a cluster that refuses us
    # the CUDA question asked once: the check's answer sizes the trials
    search.resources = resources(options, check_cluster(options))
    if joined(options):  # a cluster of several nodes, perhaps: do they all see the storage?
        check_storage(ws.storage_path)
    return Opened(ws, state, client, dashboard)


def _fit(options, search: Search, ws: Workspace, state: dict, trainable, lineage, client,
         found: plan.Plan | None = None):
    """Run the experiment's parts: (Tune's results, None) when it ended, else (results, the
    exit code of an interruption or an unreadable state)."""
    parts = state.get("parts", [search.name])
    parent_id = state["parent_run_id"]
    results = []
    for part in parts[:-1]:  # earlier parts of an extended experiment: finished, read only
        results += list(tune.Tuner.restore(os.path.join(ws.storage_path, part),
                                           trainable=trainable).get_results())
    path = os.path.join(ws.storage_path, parts[-1])
    if not (options.resume and restorable(path)):
        results += list(_tuner(search, trainable, lineage, ws, options, parts[-1],
                               search.num_samples, first=True, found=found).fit())
        return results, stopped(path, client, parent_id, search, ws, state)
    results += list(_restore(path, trainable).fit())
    if (code := stopped(path, client, parent_id, search, ws, state)) is not None:
        return results, code
    missing = search.num_samples - search.trials_done(ws) if search.trials_done else 0
    if missing <= 0:
        return results, None
    # a finished search asked for more trials: a new part runs them
    part = f"{search.name}-part{len(parts) + 1}"
    print(f"experiment {search.name}: {missing} more trial(s) in part {part}", flush=True)
    state["parts"] = [*parts, part]
    ws.save_state(search.name, state)
    results += list(_tuner(search, trainable, lineage, ws, options, part, missing,
                           first=False, found=found).fit())
    path = os.path.join(ws.storage_path, part)
    return results, stopped(path, client, parent_id, search, ws, state)


def restorable(path: str) -> bool:
    """Whether Tune saved an experiment state at ``path`` to restore. A Tuner writes its
    tuner.pkl when it is made and its first experiment state only once it runs: a search
    killed between the two has nothing to restore (no trial has reported) and starts again."""
    return tune.Tuner.can_restore(path) and bool(list(Path(path).glob("experiment_state*.json")))


def _restore(path: str, trainable):
    try:
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)
    except StateError:
        raise
    except Exception as e:
        raise StateError(f"Tune cannot restore {path} ({first_line(e)}); start the experiment "
                         "again under a new --name (its MLflow runs stay as they are)"
                         ) from None


def _parent_of(client, experiment_id: str, state: dict) -> str | None:
    """The parent run created for this state (tagged with its creation time), if any."""
    found = client.search_runs([experiment_id], f"tags.state_created = '{state['created']!r}'",
                               max_results=1)
    return found[0].info.run_id if found else None


def parent_run(client, experiment_id: str, search: Search, split, state: dict,
               ws_root: Path) -> str:
    """The search's parent run: the one created for this state before a kill, else a new one
    (tagged with the state's creation time, so that a resumed search finds it)."""
    created = repr(state["created"])
    if found := _parent_of(client, experiment_id, state):
        parent_id = found
    else:
        run_name = f"{search.kind}-{time.strftime('%Y%m%d-%H%M%S')}"
        parent_id = client.create_run(experiment_id, run_name=run_name, tags={
            "kind": search.kind, "state_created": created, WORKSPACE_TAG: str(ws_root),
            FUSION_TAG: "candidates" if search.fuses else "none",
            **(search.tags or {})}).info.run_id
        # the run exists; the workspace's state does not name it yet
        failpoints.reach("parent-run-created", run=parent_id)
    params = {**(search.params or {}), "data_fingerprint": split.fingerprint,
              "git_commit": git_commit(), "train_images": len(split.y_train)}
    if search.resources:  # what each trial got ("auto" resolved on this cluster)
        params.update(cpus_per_trial=search.resources[0], gpus_per_trial=search.resources[1])
    logged = client.get_run(parent_id).data.params
    for k, v in params.items():
        if k not in logged:
            client.log_param(parent_id, k, str(v)[:500])
    log_datasets(client, parent_id, split_datasets(split))  # train, val, test (if none yet)
    return parent_id


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


def stopped(path: str, client, parent_id: str, search: Search, ws: Workspace,
            state: dict) -> int | None:
    """None when the Tune run at ``path`` ended; else the search's exit code."""
    try:
        if not interrupted(path):
            return None
    except StateError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_STATE
    return stop_interrupted(client, parent_id, search, ws, state)


def stop_interrupted(client, parent_id: str, search: Search, ws: Workspace,
                     state: dict) -> int:
    def record():
        # the parent and the trial runs left open, KILLED rather than RUNNING: a run of an
        # interrupted search is not running; --resume reopens those it continues
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        experiment = client.get_run(parent_id).info.experiment_id
        for run in client.search_runs([experiment],
                                      f"tags.`mlflow.parentRunId` = '{parent_id}' and "
                                      "attributes.status = 'RUNNING'", max_results=50_000):
            client.set_tag(run.info.run_id, "interrupted", when)
            client.set_terminated(run.info.run_id, "KILLED")
        client.set_tag(parent_id, "interrupted", when)
        client.set_terminated(parent_id, "KILLED")

    offline.tracked(ws.tracking_uri, record)
    offline.note(ws, search.name, state)
    print(f"\nexperiment {search.name} interrupted; its state is saved. Continue it with the "
          "same command and --resume (finished trials are not run again)", file=sys.stderr)
    return EXIT_INTERRUPTED


def _tuner(search: Search, trainable, lineage, ws: Workspace, options, name: str,
           num_samples: int, first: bool, found: plan.Plan | None = None):
    searcher = search.make_searcher(ws, first) if search.make_searcher else None
    # one row per trial under its MLflow run's name, with ETAs (search/progress.py)
    view = ProgressView(name, search.metric, search.columns, search.scheduler, found)
    # the cores of trials that ended go to the trials left (search/spare.py); a part of an
    # extended experiment plans its own trials
    scheduler = search.scheduler
    if search.resources is not None:
        scheduler = spare_cores(scheduler, search.resources, options.cpus_per_trial == AUTO,
                                len(plan.trial_configs(search.param_space, num_samples)),
                                ray.cluster_resources().get("CPU", 0), joined(options))
    tuner = tune.Tuner(
        trainable, param_space=search.param_space,
        tune_config=tune.TuneConfig(
            metric=search.metric, mode=MODE, scheduler=scheduler,
            search_alg=searcher, num_samples=num_samples,
            max_concurrent_trials=options.max_concurrent or None,
            reuse_actors=scheduler is search.scheduler),  # a grown trial needs a new worker
        run_config=tune.RunConfig(
            name=name, storage_path=ws.storage_path, verbose=1, progress_reporter=view,
            callbacks=[lineage, TrialLines(name, search.metric, search.columns,
                                           search.scheduler, view),
                       tunestate.StateCopies(os.path.join(ws.storage_path, name))],
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
