"""Running one search: the workspace, its saved state, the parent run, its Tune runs, the end.

An experiment kind (search/grid.py, search/weights.py) defines its search space, scheduler and
searcher as a ``Search`` (search/context.py) and calls ``run_search``; the cluster
(search/cluster.py) and what each trial takes of it (search/sizing.py), the plan printed before
training (search/plan.py), lineage (search/lineage.py), the Tuner of each part of the
experiment, made or restored (search/tuner.py), resume, failures and the summary
(search/summary.py) are done here once for all of them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path

from mlflow.entities import Param
from ray import tune

from search import budget, budgeted, plan, throughput
from search.backfill import catch_up
from search.claims import WORKSPACE_TAG, check_owner, claim_search
from search.clock import Clock, TrialCost, quiet_done
from search.cluster import check_storage, job_submission_id, joined, room, start_ray
from search.context import Opened, RunContext, Search
from search.kinds import FUSION_TAG
from search.lineage import MLflowLineage
from search.offline import TRACKING_ERRORS
from search.options import AUTO, UsageError, check_resume, cluster_address
from search.records import log_datasets, split_datasets
from search.sizing import check_cluster, resources
from search.summary import resource_text, summarise
from search.tuner import Build, StateError, interrupted, make_tuner, restorable, restore
from search.workspace import Workspace, WorkspaceError, git_commit, redact
from trainables import failpoints
from trainables.cli import EXIT_INTERRUPTED, EXIT_STATE, EXIT_USAGE
from trainables.files import first_line
from trainables.trainable import ClassifierTrainable

__all__ = ["Search", "StateError", "interrupted", "run_search"]  # what kinds and tests import


def run_search(options, search: Search, split, context: RunContext | None = None) -> int:
    """Run (or resume) one Tune experiment with its MLflow lineage; returns the exit code.
    ``context``: the run context of the command (search/context.py): a pipeline's stage is
    handed the pipeline's (``StageRun.context``); a search of its own makes one here."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    if context is None:  # a search of its own: its budget counts from here
        context = RunContext(options.verbosity, budget=options.time_budget, deadline=(
            time.time() + options.time_budget if options.time_budget else None))
    with contextlib.ExitStack() as claims:  # what it holds alone, until it ends
        return _run(options, search, split, context, claims)


def _run(options, search: Search, split, context: RunContext,
         claims: contextlib.ExitStack) -> int:
    try:
        opened = _open(options, search, split, context, claims)
    except (WorkspaceError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except StateError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_STATE
    ws, state, client = opened.ws, opened.state, opened.client
    opened.offline.back_online(ws.tracking_uri)  # it answered: this search records again
    hardware = throughput.hardware(search.resources, cluster_address(options))
    job = job_submission_id()  # a search submitted as a Ray Job: which one
    search.tags = {**(search.tags or {}), "hardware": hardware,  # on a new parent run
                   **({"ray_job_submission_id": job} if job else {})}
    opened.hardware = hardware
    # the cores it may use (the report's busy fraction: analysis/summary.py)
    search.params = {**(search.params or {}), "cluster_cpus": room(options).get("CPU", 0)}
    fit = None
    if state is None and opened.context.deadline is not None:  # cut to the time budget, before
        try:  # anything is recorded: a budget nothing fits is refused (search/budget.py)
            search, fit = budgeted.fit_search(search, earlier_of(search, split, opened),
                                            at_a_time(options, search), split, opened)
        except budget.NothingFits as e:
            opened.context.refused = e
            if opened.context.whole is None or opened.context.whole.first:
                print(f"error: {e}", file=sys.stderr)  # else its pipeline skips it, and says so
            return EXIT_USAGE
    elif state is not None and state.get("time_budget"):  # the space its start's plan cut
        search = budgeted.resumed(search, state["time_budget"])
    experiment_id = ws.experiment_id(client, search.name)
    if state is None:  # saved before the parent run exists: a kill between the two leaves a
        state = {"name": search.name, "kind": search.kind, "parent_run_id": None,  # state
                 "experiment_id": experiment_id, "storage_path": ws.storage_path,  # that
                 "data_fingerprint": split.fingerprint, "created": time.time(),  # finds
                 **({"time_budget": fit.record()} if fit else {})}  # it
        ws.save_state(search.name, state)
    opened.state, opened.experiment_id = state, experiment_id
    try:
        return _search(options, search, split, opened)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM outside Tune's run (which handles its own)
        parent_id = state.get("parent_run_id") or _parent_of(client, experiment_id, state)
        if parent_id is None:  # nothing recorded yet but the state file: --resume starts it
            print(f"\nexperiment {search.name} interrupted before it recorded anything; run "
                  "the same command with --resume", file=sys.stderr)
            return EXIT_INTERRUPTED
        return stop_interrupted(parent_id, search, opened)


def _search(options, search: Search, split, opened: Opened) -> int:
    """The search once its state exists: its parent run, Tune's run, the summary."""
    ws, state, client = opened.ws, opened.state, opened.client
    if state.get("parent_run_id") is None:
        state["parent_run_id"] = parent_run(client, opened.experiment_id, search, split, state,
                                             ws.root)
        ws.save_state(search.name, state)
    else:
        client.update_run(state["parent_run_id"], status="RUNNING")
        if job := search.tags.get("ray_job_submission_id"):  # resubmitted: the latest job
            client.set_tag(state["parent_run_id"], "ray_job_submission_id", job)
        log_datasets(client, state["parent_run_id"], split_datasets(split))  # if none yet
    parent_id = state["parent_run_id"]

    print(f"experiment {search.name}: MLflow {redact(ws.tracking_uri)} (parent run "
          f"{parent_id}), Ray dashboard {opened.dashboard or 'n/a'}; each trial takes "
          f"{resource_text(search.resources)}"
          + (" (auto)" if AUTO in (options.cpus_per_trial, options.gpus_per_trial) else ""),
          flush=True)
    found = show_plan(options, search, split, parent_id, opened)
    # the budget kept as the trials run (search/clock.py), at the throughput the plan used
    opened.context.clock = Clock(opened.context.deadline, TrialCost(
        earlier_of(search, split, opened), len(split.y_train), len(split.y_val)),
        opened.context.grace)
    cpus, gpus = search.resources
    trainable = tune.with_resources(
        tune.with_parameters(ClassifierTrainable, split=split), {"cpu": cpus, "gpu": gpus})
    lineage = MLflowLineage(ws.tracking_uri, opened.experiment_id, parent_id, search.scheduler,
                            metric=search.metric, datasets=split_datasets(split),
                            offline=opened.offline)
    build = Build(search, trainable, lineage, options, ws, opened.context, found)
    try:
        results, code = _fit(build, opened)
    except StateError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_STATE
    if code is not None:
        return code
    if opened.context.clock.cut or "time_budget_cut" in state:  # cut by the budget, or ended
        if opened.context.clock.cut:  # after it was (a pipeline resumes the stages cut)
            state["time_budget_cut"] = opened.context.clock.why
        else:
            state.pop("time_budget_cut")
        ws.save_state(search.name, state)
    if options.resume:  # what MLflow missed (a server that went away), from Tune's results
        catch_up(opened, search, results, parent_id, split_datasets(split))
    code = summarise(results, parent_id, search, opened)
    opened.offline.note(ws, search.name, state)
    return code


def earlier_of(search: Search, split, opened: Opened):
    """throughput(config): what earlier trials of a config's model measured on this hardware
    (search/throughput.py), else what the time budget measured here (search/budget.py), None
    when there is neither or MLflow cannot say."""
    def earlier(config: dict):
        if (found := opened.measured.get(throughput.model_of(config))) is not None:
            return found
        try:
            return throughput.earlier_throughput(opened.client, opened.hardware, config,
                                                 search.resources[1], len(split.y_train))
        except TRACKING_ERRORS as e:
            print(f"plan: earlier trials unreadable ({first_line(e)})", file=sys.stderr)
            return None
    return earlier


def at_a_time(options, search: Search) -> int:
    trials = len(plan.trial_configs(search.param_space, search.num_samples))
    return plan.at_a_time(trials, search.resources, room(options), options.max_concurrent)


def show_plan(options, search: Search, split, parent_id: str, opened: Opened) -> plan.Plan:
    """Print the search's plan (search/plan.py) before it trains and record its figures as the
    parent run's plan_* params; the plan. A resumed search prints it again; the params stay
    those of the start (MLflow keeps a param's first value)."""
    client = opened.client
    found = plan.make(
        search.param_space, search.num_samples, asha=search.scheduler is not None,
        at_a_time=at_a_time(options, search), train_images=len(split.y_train),
        val_images=len(split.y_val), throughput=earlier_of(search, split, opened))
    print(found.line(), flush=True)

    def record():
        if not any(k.startswith("plan_") for k in client.get_run(parent_id).data.params):
            client.log_batch(parent_id, params=[Param(k, str(v)[:500])
                                                for k, v in found.params().items()])

    opened.offline.tracked(opened.ws.tracking_uri, record)
    return found


def _open(options, search: Search, split, context: RunContext,
          claims: contextlib.ExitStack) -> Opened:
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
    start_ray(options, context)  # before anything is recorded: a cluster that refuses us
    # the CUDA question asked once: the check's answer sizes the trials
    search.resources = resources(options, check_cluster(options))
    if joined(options):  # a cluster of several nodes, perhaps: do they all see the storage?
        check_storage(ws.storage_path)
    return Opened(ws, state, client, context)


def _fit(build: Build, opened: Opened):
    """Run the experiment's parts: (Tune's results, None) when it ended, else (results, the
    exit code of an interruption or an unreadable state)."""
    search, ws, state = build.search, opened.ws, opened.state
    names = state.get("parts", [search.name])
    parent_id = state["parent_run_id"]
    results = []
    for part in names[:-1]:  # earlier parts of an extended experiment: finished, read only
        results += list(tune.Tuner.restore(os.path.join(ws.storage_path, part),
                                           trainable=build.trainable).get_results())
    path = os.path.join(ws.storage_path, names[-1])
    if not (build.options.resume and restorable(path)):
        results += list(make_tuner(build, names[-1], search.num_samples, first=True).fit())
        return results, stopped(path, parent_id, search, opened)
    results += list(restore(path, build.trainable, opened.context).fit())
    if (code := stopped(path, parent_id, search, opened)) is not None:
        return results, code
    if opened.context.clock.cut:  # the budget ended it: no new part
        return results, None
    missing = search.num_samples - search.trials_done(ws) if search.trials_done else 0
    if missing <= 0:
        return results, None
    # a finished search asked for more trials: a new part runs them
    part = f"{search.name}-part{len(names) + 1}"
    print(f"experiment {search.name}: {missing} more trial(s) in part {part}", flush=True)
    state["parts"] = [*names, part]
    ws.save_state(search.name, state)
    results += list(make_tuner(build, part, missing, first=False).fit())
    path = os.path.join(ws.storage_path, part)
    return results, stopped(path, parent_id, search, opened)


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


def stopped(path: str, parent_id: str, search: Search, opened: Opened) -> int | None:
    """None when the Tune run at ``path`` ended, or was cut by the time budget (its search ends
    from the trials that finished); else the search's exit code."""
    quiet_done()
    try:
        if not interrupted(path):
            return None
    except StateError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_STATE
    if opened.context.clock.cut:
        return cut_by_budget(parent_id, search, opened)
    return stop_interrupted(parent_id, search, opened)


def cut_by_budget(parent_id: str, search: Search, opened: Opened) -> None:
    """The trials the time budget cut (search/clock.py), recorded: their runs KILLED (never
    fusion candidates) and tagged ``time_budget`` with the epoch each reached, the parent run
    tagged with what was cut and why. Tune's state keeps them for --resume."""
    clock, client = opened.context.clock, opened.client
    started = sum(1 for epoch in clock.cut.values() if epoch)
    print(f"\nexperiment {search.name}: the time budget ended it ({clock.why}): "
          f"{started} trial(s) cut at their last checkpoint, {len(clock.cut) - started} not "
          "started; the search ends with the trials that finished. Continue them with "
          "--resume and a longer --time-budget", flush=True)

    def record():
        experiment = client.get_run(parent_id).info.experiment_id
        for run in client.search_runs([experiment],
                                      f"tags.`mlflow.parentRunId` = '{parent_id}' and "
                                      "attributes.status = 'RUNNING'", max_results=50_000):
            epoch = clock.cut.get(run.data.tags.get("trial_id"))
            client.set_tag(run.info.run_id, "time_budget",
                           f"cut at epoch {epoch or 0}/{run.data.params.get('epochs', '?')}")
            client.set_terminated(run.info.run_id, "KILLED")
        client.set_tag(parent_id, "time_budget_cut",
                       f"{started} trial(s) cut, {len(clock.cut) - started} not started: "
                       f"{clock.why}")

    opened.offline.tracked(opened.ws.tracking_uri, record)
    return None


def stop_interrupted(parent_id: str, search: Search, opened: Opened) -> int:
    client = opened.client

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

    opened.offline.tracked(opened.ws.tracking_uri, record)
    opened.offline.note(opened.ws, search.name, opened.state)
    print(f"\nexperiment {search.name} interrupted; its state is saved. Continue it with the "
          "same command and --resume (finished trials are not run again)", file=sys.stderr)
    return EXIT_INTERRUPTED
