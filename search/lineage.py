"""MLflow lineage of a search, logged on the driver by a Tune callback (workers need no store).

One MLflow experiment per search name; one parent run per search (kept across ``--resume``);
one nested child run per trial (``mlflow.parentRunId``), with the trial's config as params,
every epoch's metrics at ``step=epoch``, the trial's best checkpoint (by val_acc, not the last)
as an artifact, status FAILED for failed trials, and tags saying when and why ASHA stopped one.
A resumed search finds its child runs by trial id and never logs an epoch twice.
A tracking server that goes away does not stop the search (search/offline.py); --resume
records what it missed (search/backfill.py).
Faults are recorded on the trial's run, never only in a log: ``failures`` (a worker that died
and the trial retried from its last checkpoint, with ``last_failure``), ``checkpoint_fault``
(a checkpoint that failed its checksum or did not load, and what the trial did instead), and
``node_id`` / ``node_ip`` of the Ray node that ran it (the latest, after a retry).
"""

from __future__ import annotations

import os
import time

from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient
from ray import tune

from search.offline import Offline, tracked_hook
from search.records import (
    BEST_KEYS,
    asha_tags,
    config_key,
    error_line,
    log_datasets,
    log_params,
    new_trial_run,
    record_end,
    scalar_metrics,
    trial_run_name,
)
from search.workspace import mlflow_client
from trainables import failpoints
from trainables.trainable import METRIC


class MLflowLineage(tune.Callback):
    """The lineage of one search (module docstring). ``offline``: the MLflow stores of its
    command that stopped answering (search/offline.py; its own when None)."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str,
                 scheduler=None, metric: str = METRIC, datasets: list[dict] | None = None,
                 offline: Offline | None = None):
        self._offline = offline or Offline()
        # the URI without its password: Tune pickles this callback into the storage path
        self.tracking_uri = self._offline.remember(tracking_uri)
        self.datasets = datasets  # records.split_datasets: plain dicts, logged on each run
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.scheduler = scheduler
        self.metric = metric  # what the trial's best epoch (and kept checkpoint) maximises
        self._client = None
        self.runs: dict[str, str] = {}  # trial_id -> run id
        self.logged_step: dict[str, int] = {}  # trial_id -> last epoch logged
        self.best: dict[str, tuple[float, int]] = {}  # trial_id -> (metric, epoch)
        self.best_result: dict[str, dict] = {}  # trial_id -> the metrics of that epoch
        self.best_checkpoint: dict[str, str] = {}
        self.latest_checkpoint: dict[str, str] = {}  # trial_id -> its newest checkpoint
        self.replaced: list[tuple[str, str]] = []  # (trial_id, checkpoint) since Tune's save
        self.last_result: dict[str, dict] = {}
        self.node: dict[str, str] = {}  # trial_id -> the node of its latest result
        self.fast_logged: set[str] = set()  # trials whose fast_path param is logged

    def __getstate__(self):  # Tune pickles callbacks with the experiment; the client and
        state = dict(self.__dict__)  # the URI with its password (the offline's) stay out
        state.update(_client=None, _offline=None)
        return state

    def attach(self, context) -> None:
        """The callback Tune restored for a resumed search: its command's stores
        (``context``: its search/context.py RunContext), which know this one's URI."""
        self._offline = context.offline

    @property
    def offline(self) -> Offline:
        if getattr(self, "_offline", None) is None:  # restored and not attached
            self._offline = Offline()
        return self._offline

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = mlflow_client(self.offline.resolve(self.tracking_uri))
        return self._client

    def _run_for(self, trial, trials=None) -> str:
        if trial.trial_id in self.runs:
            return self.runs[trial.trial_id]
        found = self.client.search_runs(
            [self.experiment_id],
            f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' "
            f"and tags.trial_id = '{trial.trial_id}'", max_results=1)
        run = found[0] if found else self._orphan(trial, trials)
        if run is not None:  # a resumed search: same child run, after its last logged epoch
            run_id = run.info.run_id
            if not run.data.params:  # killed between creating it and logging its params
                log_params(self.client, run_id, trial.config)
            log_datasets(self.client, run_id, getattr(self, "datasets", None))  # if none yet
            self._resume_run(trial, run_id)
            if run.info.status == "KILLED":  # left by an interruption: it runs again
                self.client.update_run(run_id, status="RUNNING")
        else:
            run = new_trial_run(self.client, self.experiment_id, self.parent_run_id,
                                trial.trial_id, trial.config)
            run_id = run.info.run_id
            # the run exists; Tune's saved experiment state may not know the trial yet
            failpoints.reach("trial-run-created", trial=trial.trial_id, run=run_id)
            log_params(self.client, run_id, trial.config)
            log_datasets(self.client, run_id, getattr(self, "datasets", None))
        self.runs[trial.trial_id] = run_id
        return run_id

    def _orphan(self, trial, trials):
        """The open child run of a trial that Tune forgot: created for it before the driver
        was killed, when Tune's saved state did not hold the trial yet; Tune made it again
        under a new id. Found by its config, taken over by the new id."""
        if trials is None:
            return None
        known = {t.trial_id for t in trials}
        candidates = self.client.search_runs(
            [self.experiment_id],
            f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' and "
            f"tags.config_key = '{config_key(trial.config)}' and "
            "attributes.status = 'RUNNING'", max_results=100)
        orphans = [r for r in candidates if r.data.tags.get("trial_id") not in known and
                   r.data.tags.get("trial_id") not in self.runs]
        if not orphans:
            return None
        run = min(orphans, key=lambda r: r.info.start_time or 0)
        self.client.set_tag(run.info.run_id, "trial_id_lost", run.data.tags.get("trial_id"))
        self.client.set_tag(run.info.run_id, "trial_id", trial.trial_id)
        self.client.set_tag(run.info.run_id, "mlflow.runName",
                            trial_run_name(trial.trial_id, trial.config))
        return run

    def _resume_run(self, trial, run_id: str) -> None:
        history = self.client.get_metric_history(run_id, "epoch")
        self.logged_step[trial.trial_id] = max((int(m.value) for m in history), default=0)
        best = max(self.client.get_metric_history(run_id, self.metric),
                   key=lambda m: (m.value, -m.step), default=None)
        if best is not None:  # the best epoch before the interruption still counts
            self.best[trial.trial_id] = (best.value, best.step)
            self.best_result[trial.trial_id] = {
                k: next((m.value for m in self.client.get_metric_history(run_id, k)
                         if m.step == best.step), None) for k in BEST_KEYS}
        self.client.set_tag(run_id, "resumed", "true")

    @tracked_hook
    def on_trial_start(self, iteration, trials, trial, **info):
        self._run_for(trial, trials)

    @tracked_hook
    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self._run_for(trial, trials)
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        self.last_result[trial.trial_id] = result
        node = result.get("node_id")
        if node and self.node.get(trial.trial_id) != node:  # first result on a (new) node
            self.node[trial.trial_id] = node
            self.client.set_tag(run_id, "node_id", node)
            self.client.set_tag(run_id, "node_ip", str(result.get("node_ip", "")))
        if result.get("checkpoint_fault"):
            self.client.set_tag(run_id, "checkpoint_fault", str(result["checkpoint_fault"])[:5000])
        logged = self.__dict__.setdefault("fast_logged", set())  # (a callback pickled earlier)
        if result.get("fast_path") and trial.trial_id not in logged:
            self._log_fast_path(run_id, str(result["fast_path"]))
            logged.add(trial.trial_id)
        value = result.get(self.metric)
        if value is not None and value > self.best.get(trial.trial_id, (-1.0, 0))[0]:
            self.best[trial.trial_id] = (float(value), epoch)
            self.best_result[trial.trial_id] = {k: result.get(k) for k in BEST_KEYS}
        if epoch <= self.logged_step.get(trial.trial_id, 0):
            return  # logged before an interruption; the run is deterministic
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, epoch) for k, v in scalar_metrics(result).items()]
        tags = [RunTag("warmup_reused", str(result.get("warmup_reused", False)).lower())] \
            if epoch == 1 else []
        self.client.log_batch(run_id, metrics=metrics, tags=tags)
        self.logged_step[trial.trial_id] = epoch
        # MLflow holds the epoch; Tune's saved state and checkpoints do not yet
        failpoints.reach("result-logged", trial=trial.trial_id, epoch=epoch)

    def _log_fast_path(self, run_id: str, fast: str) -> None:
        """What "auto" chose on the trial's device, beside the config's params. A param cannot
        change: a trial continued on another fast path (resumed on another machine, or by a
        version whose "auto" chooses differently) keeps its first as the param and says the
        one it went on with (the latest, once there is one) in the tag ``fast_path_resumed``."""
        data = self.client.get_run(run_id).data
        before = data.params.get("fast_path")
        if before is None:
            self.client.log_param(run_id, "fast_path", fast)
        elif before != fast or "fast_path_resumed" in data.tags:
            self.client.set_tag(run_id, "fast_path_resumed", fast)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        result = self.last_result.get(trial.trial_id, {})
        epoch = int(result.get("epoch", 0))
        if self.best.get(trial.trial_id, (None, -1))[1] == epoch:
            self.best_checkpoint[trial.trial_id] = checkpoint.path
        previous = self.latest_checkpoint.get(trial.trial_id)
        self.latest_checkpoint[trial.trial_id] = checkpoint.path
        if previous:  # Tune deletes it next if it is not the trial's best
            self.replaced.append((trial.trial_id, previous))

    def get_state(self) -> None:
        """Tune asks as it saves its experiment state: written in its staging folder, not yet
        copied to the storage path, whose state may name a checkpoint Tune has deleted since
        (docs/crash-windows.md). Nothing to save: the lineage state is MLflow's."""
        replaced, self.replaced = self.replaced, []
        for trial_id, path in replaced:
            if not os.path.exists(path):
                failpoints.reach("checkpoint-replaced", trial=trial_id, deleted=path)
        return None

    def _finish(self, trial, status: str, extra_tags: dict):
        stop = getattr(self.scheduler, "stops", {}).get(trial.trial_id)
        record_end(self.client, self._run_for(trial), status, self.metric,
                   self.best.get(trial.trial_id), self.best_result.get(trial.trial_id, {}),
                   self.best_checkpoint.get(trial.trial_id),
                   {**extra_tags, **(asha_tags(stop) if stop else {})})

    @tracked_hook
    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, "FINISHED", {})

    @tracked_hook
    def on_trial_recover(self, iteration, trials, trial, **info):
        run_id = self._run_for(trial)
        self.client.set_tag(run_id, "failures", str(trial.num_failures))
        self.client.set_tag(run_id, "last_failure", error_line(trial) or "worker failed")

    @tracked_hook
    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, "FAILED", {"error": error_line(trial) or "trial failed"})


# A search saved before the progress view pickled its TrialLines under this module's name
# (search/progress.py holds it now); --resume unpickles it from here.
from search.progress import TrialLines  # noqa: E402, F401
