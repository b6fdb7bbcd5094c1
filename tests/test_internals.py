"""Every private Ray Tune or Optuna internal the project leans on, checked on the real objects.

An upgrade of Ray or Optuna may rename, reshape or stop using a private attribute without a word;
the project's code would then fail far from the cause, or, worse, go on silently doing the wrong
thing (a sampler reseeded through a stream TPE no longer draws from). Each test here exercises
the internal through the project's own code where it can, and fails with a message that names
the internal, the library's version and the file that relies on it:

- search/asha.py: AsyncHyperBandScheduler ``_brackets``, ``_max_t``, ``_trial_info``,
  ``_metric_op``, a bracket's ``_rungs``, ``cutoff()`` and ``on_result()``, TrialScheduler's
  ``_metric`` behind ``metric``; a Trial's ``path`` (and its ``result.json``) when Tune adds it;
- search/study.py: TPESampler ``_rng.rng`` and ``_random_sampler._rng.rng``; OptunaSearch
  ``_ot_trials``, ``_ot_study``, ``_completed_trials``; Study ``_storage`` with its
  ``set_trial_user_attr`` and ``set_trial_state_values``; FrozenTrial ``_trial_id`` and
  ``system_attrs["fixed_params"]`` (an enqueued point);
- trainables/trainable.py: ``ray.train._internal.session._TrainingResult``, what Tune passes
  to ``Trainable.restore()``, and its refusal of a checkpoint that no longer exists;
  checkpoint folders ``checkpoint_NNNNNN`` side by side; ``should_checkpoint`` in a result;
- search/backfill.py: the trial id read from Tune's trial folder name;
- search/driver.py, search/cluster.py, search/progress.py and search/lineage.py: Tune's
  progress-reporter API (``RAY_AIR_NEW_OUTPUT=0``), the statuses ExperimentAnalysis gives, a
  trial's ``error_file`` and ``num_failures``.

One tiny local Ray cluster (1 CPU, no dashboard) serves the tests that need real Tune runs.
Two tests keep search/backfill.py reading a Result's trial from its folder: a Result's
metrics may be another trial's (reused actors), and a searcher's trial ids are 8 hex digits.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import optuna
import pytest
import ray
from conftest import ray_for_the_tests
from optuna.distributions import FloatDistribution
from optuna.samplers import TPESampler
from optuna.trial import TrialState
from ray import tune
from ray.tune.result import SHOULD_CHECKPOINT
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from search import backfill, driver
from search.asha import ScheduleAwareASHA
from search.context import RunContext
from search.lineage import error_line
from search.progress import ProgressView
from search.study import DurableOptunaSearch, SeededTPESampler
from search.tuner import Build, make_tuner, restore, restored_parts
from trainables import trainable as project_trainable
from trainables.trainable import CHECKPOINT_FILE

HERE = Path(__file__).resolve().parent
RAY = f"Ray {ray.__version__}"
OPTUNA = f"Optuna {optuna.__version__}"


def changed(what: str, version: str, where: str) -> str:
    return f"{what} changed in {version}; {where} relies on it"


def internal(obj, name: str, what: str, version: str, where: str):
    """``obj.name``, or a failure that says which upgrade broke which file."""
    assert hasattr(obj, name), changed(f"{what}.{name}", version, where) + " (it is gone)"
    return getattr(obj, name)


@pytest.fixture(scope="module", autouse=True)
def quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


# --- search/asha.py: one AsyncHyperBandScheduler per schedule length -------------------------

ASHA = "search/asha.py"


class FakeTrial:
    """What the scheduler reads of a Tune Trial: its id, config, folder and status."""

    def __init__(self, trial_id: str, epochs: int, path: Path | None = None,
                 status: str = "PENDING"):
        self.trial_id, self.config = trial_id, {"epochs": epochs}
        self.path, self.status = (str(path) if path else None), status


def test_asha_group_internals_have_the_shape_schedule_aware_asha_reads():
    asha = ScheduleAwareASHA(grace_period=2, reduction_factor=2)
    group = asha._group_for_length(8)  # the project's own helper; it reads no internal
    assert isinstance(group, AsyncHyperBandScheduler)
    brackets = internal(group, "_brackets", "AsyncHyperBandScheduler", RAY, ASHA)
    assert isinstance(brackets, list) and len(brackets) == 1, changed(
        "AsyncHyperBandScheduler._brackets (one bracket by default)", RAY, ASHA)
    bracket = brackets[0]
    rungs = internal(bracket, "_rungs", "AsyncHyperBandScheduler bracket", RAY, ASHA)
    # (milestone, {trial_id: value}) pairs, the largest milestone first
    assert [m for m, _ in rungs] == [8, 4, 2] and all(r == {} for _, r in rungs), changed(
        "the bracket's _rungs, [(milestone, {trial_id: value}), ...] from max_t down,",
        RAY, ASHA)
    assert internal(group, "_max_t", "AsyncHyperBandScheduler", RAY, ASHA) == 8, changed(
        "AsyncHyperBandScheduler._max_t (the group's length)", RAY, ASHA)
    assert asha.rungs(8) == [2, 4], changed(
        "AsyncHyperBandScheduler._brackets[0]._rungs", RAY, f"{ASHA} (rungs())")

    trial = FakeTrial("a", 8)
    asha.on_trial_add(None, trial)
    info = internal(group, "_trial_info", "AsyncHyperBandScheduler", RAY, ASHA)
    assert info.get("a") is bracket, changed(
        "AsyncHyperBandScheduler._trial_info (trial id -> its bracket)", RAY, ASHA)
    assert asha.on_trial_result(None, trial, {"epoch": 2, "val_acc": 0.5}) == \
        TrialScheduler.CONTINUE
    assert dict(rungs)[2] == {"a": 0.5}, changed(
        "the bracket's _rungs (a rung records {trial_id: value} of each trial reaching it)",
        RAY, ASHA)
    cutoff = internal(bracket, "cutoff", "AsyncHyperBandScheduler bracket", RAY, ASHA)
    assert cutoff({}) is None and cutoff({"a": 0.2, "b": 0.4, "c": 0.9}) == pytest.approx(
        np.nanpercentile([0.2, 0.4, 0.9], 50)), changed(
        "the bracket's cutoff(recorded) (the 1 - 1/reduction_factor quantile)", RAY, ASHA)

    # a trial that completes leaves _trial_info; Tune may still remove it afterwards
    asha.on_trial_complete(None, trial, {"epoch": 8, "val_acc": 0.9})
    assert "a" not in info, changed(
        "AsyncHyperBandScheduler.on_trial_complete (drops the trial from _trial_info)",
        RAY, f"{ASHA} (on_trial_remove)")
    asha.on_trial_remove(None, trial)


def test_asha_metric_is_the_one_schedule_aware_asha_sets():
    # ScheduleAwareASHA sets TrialScheduler._metric itself; Tune reads it through .metric
    asha = ScheduleAwareASHA(grace_period=1, reduction_factor=3, metric="hard_acc")
    assert asha.metric == "hard_acc", changed(
        "TrialScheduler.metric (a property over _metric)", RAY, ASHA)
    assert asha.groups == {} and asha.rungs(9) == [1, 3]
    assert asha._group_for_length(9) is asha.groups[9]  # rungs() is pure (search/rungs.py)
    assert asha.groups[9].metric == "hard_acc"
    assert asha.set_search_properties("hard_acc", "max") and \
        not asha.set_search_properties("val_acc", "max")


def test_asha_records_each_stop_with_its_rung_and_cutoff():
    asha = ScheduleAwareASHA(grace_period=1, reduction_factor=3)
    trials = [FakeTrial(f"t{i}", 9) for i in range(4)]
    for t in trials:
        asha.on_trial_add(None, t)

    def report(t, epoch, acc):
        return asha.on_trial_result(None, t, {"epoch": epoch, "val_acc": acc})

    for t, acc in zip(trials[:3], (0.5, 0.6, 0.7), strict=True):
        assert report(t, 1, acc) == TrialScheduler.CONTINUE
    assert report(trials[3], 1, 0.4) == TrialScheduler.STOP
    assert asha.stops["t3"] == {
        "epoch": 1, "rung": 1, "metric": "val_acc", "value": 0.4,
        "cutoff": pytest.approx(np.nanpercentile([0.5, 0.6, 0.7], 100 * 2 / 3)),
        "compared_with": 3, "group_epochs": 9, "margin": 0.0}, changed(
        "AsyncHyperBandScheduler's _trial_info/_rungs/cutoff()", RAY, f"{ASHA} (the stop record)")
    assert report(trials[1], 3, 0.80) == TrialScheduler.CONTINUE
    assert report(trials[2], 3, 0.85) == TrialScheduler.CONTINUE
    assert report(trials[0], 3, 0.60) == TrialScheduler.STOP
    why = asha.stops["t0"]
    assert (why["rung"], why["compared_with"]) == (3, 2)
    assert why["cutoff"] == pytest.approx(np.nanpercentile([0.80, 0.85], 100 * 2 / 3))
    # at its last epoch a trial ends (STOP from Tune's ASHA): that is no early stop
    assert report(trials[1], 9, 0.95) == TrialScheduler.STOP
    assert "t1" not in asha.stops and set(asha.stops) == {"t0", "t3"}


def write_results(folder: Path, rows) -> Path:
    """A trial folder as Tune leaves it: result.json, one JSON result a line."""
    folder.mkdir(parents=True)
    lines = [json.dumps({"epoch": e, "val_acc": v, "training_iteration": e}) for e, v in rows]
    (folder / "result.json").write_text("\n".join(lines) + '\n{"epoch": 3, "val_')  # cut
    return folder


def test_a_restored_trial_brings_back_its_rung_values_and_stop(tmp_path):
    asha = ScheduleAwareASHA(grace_period=1, reduction_factor=2)
    assert asha.rungs(4) == [1, 2]
    group = asha._group_for_length(4)
    assert internal(group, "_metric_op", "AsyncHyperBandScheduler", RAY, ASHA) == 1.0, changed(
        "AsyncHyperBandScheduler._metric_op (+1.0 for mode max)", RAY, f"{ASHA} (_replay)")
    bracket = group._brackets[0]
    internal(bracket, "on_result", "AsyncHyperBandScheduler bracket", RAY, f"{ASHA} (_replay)")
    # two trials ran on (restored at their end), one was stopped at epoch 1 by them
    a = FakeTrial("a", 4, write_results(tmp_path / "a", [(1, 0.8), (2, 0.9)]), "TERMINATED")
    b = FakeTrial("b", 4, write_results(tmp_path / "b", [(1, 0.9), (2, 0.95)]), "TERMINATED")
    c = FakeTrial("c", 4, write_results(tmp_path / "c", [(1, 0.2)]), "RUNNING")
    new = FakeTrial("d", 4)  # never ran: no folder yet
    for t in (a, b, c, new):
        asha.on_trial_add(None, t)
    rungs = dict(bracket._rungs)
    assert rungs[1] == {"a": 0.8, "b": 0.9, "c": 0.2} and rungs[2] == {"a": 0.9, "b": 0.95}, \
        changed("the bracket's on_result()/_rungs (a replayed result is recorded at its rung)",
                RAY, f"{ASHA} (_replay)")
    assert asha.stops["c"]["rung"] == 1 and asha.stops["c"]["compared_with"] == 2
    assert set(asha.stops) == {"c"}
    # its next result carries out the stop decided before the interruption
    assert asha.on_trial_result(None, c, {"epoch": 2, "val_acc": 0.99}) == TrialScheduler.STOP
    assert asha.on_trial_result(None, new, {"epoch": 1, "val_acc": 0.85}) == \
        TrialScheduler.CONTINUE


# --- search/study.py: TPE reseeded per trial, a durable OptunaSearch --------------------------

WEIGHTS = "search/study.py"
SPACE = {"a": FloatDistribution(0, 1), "b": FloatDistribution(0, 1)}
STARTUP = 2


def suggestions(sampler, n: int, burn: int = 0) -> list[dict]:
    """n points a study offers; ``burn`` trials of another study first use the sampler's
    random streams, as a sampler that lived longer (or less long) would have."""
    if burn:
        other = optuna.create_study(sampler=sampler)
        for _ in range(burn):
            t = other.ask(SPACE)
            other.tell(t, t.params["a"])
    study = optuna.create_study(sampler=sampler, direction="maximize")
    out = []
    for _ in range(n):
        t = study.ask(SPACE)
        study.tell(t, (t.params["a"] - 0.3) ** 2 + t.params["b"])
        out.append(t.params)
    return out


def test_tpe_random_streams_are_where_seeded_tpe_reseeds_them():
    sampler = TPESampler(seed=1)
    rng = internal(sampler, "_rng", "optuna TPESampler", OPTUNA, WEIGHTS)
    assert isinstance(internal(rng, "rng", "optuna TPESampler._rng", OPTUNA, WEIGHTS),
                      np.random.RandomState), changed(
        "optuna TPESampler._rng.rng (a numpy RandomState, reseeded with .seed())", OPTUNA,
        WEIGHTS)
    random_sampler = internal(sampler, "_random_sampler", "optuna TPESampler", OPTUNA, WEIGHTS)
    rng = internal(random_sampler, "_rng", "optuna TPESampler._random_sampler", OPTUNA, WEIGHTS)
    assert isinstance(rng.rng, np.random.RandomState), changed(
        "optuna TPESampler._random_sampler._rng.rng (a numpy RandomState)", OPTUNA, WEIGHTS)

    # what the reseeding is for: trial n's point depends on (seed, n) and the history alone,
    # not on what the sampler drew before (a study resumed in a new process gets a new one)
    kw = dict(n_startup_trials=STARTUP, multivariate=True)
    fresh = suggestions(SeededTPESampler(3, **kw), 6)
    used = suggestions(SeededTPESampler(3, **kw), 6, burn=3)
    assert used[:STARTUP] == fresh[:STARTUP], changed(
        "optuna TPESampler._random_sampler._rng.rng (no longer the stream of the start-up "
        "trials)", OPTUNA, f"{WEIGHTS} (SeededTPESampler)")
    assert used[STARTUP:] == fresh[STARTUP:], changed(
        "optuna TPESampler._rng.rng (no longer the stream TPE draws from)", OPTUNA,
        f"{WEIGHTS} (SeededTPESampler)")
    # the check has teeth: a plain seeded TPE's points depend on what it drew before
    plain_fresh = suggestions(TPESampler(seed=3, **kw), 6)
    plain_used = suggestions(TPESampler(seed=3, **kw), 6, burn=3)
    assert all(a != b for a, b in zip(plain_fresh, plain_used, strict=True))


def searcher(tmp_path: Path, epochs: int = 4) -> DurableOptunaSearch:
    s = DurableOptunaSearch(epochs=epochs, study_name="w", sampler=SeededTPESampler(0),
                            storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db"))
    s.set_search_properties("val_acc", "max", {"w0": tune.uniform(0.5, 2.5)})
    return s


def test_optuna_search_internals_durable_optuna_search_reads(tmp_path):
    where = f"{WEIGHTS} (DurableOptunaSearch)"
    s = searcher(tmp_path)
    trials = internal(s, "_ot_trials", "ray.tune OptunaSearch", RAY, where)
    study = internal(s, "_ot_study", "ray.tune OptunaSearch", RAY, where)
    assert isinstance(study, optuna.Study), changed("ray.tune OptunaSearch._ot_study", RAY,
                                                    where)
    done = internal(s, "_completed_trials", "ray.tune OptunaSearch", RAY, where)
    assert isinstance(done, set) and not done, changed(
        "ray.tune OptunaSearch._completed_trials (a set of Tune trial ids)", RAY, where)
    s.suggest("t1")
    s.suggest("t2")
    assert set(trials) == {"t1", "t2"} and all(
        isinstance(t, optuna.Trial) for t in trials.values()), changed(
        "ray.tune OptunaSearch._ot_trials (Tune trial id -> optuna.Trial)", RAY, where)

    for epoch, acc in ((1, 0.5), (2, 0.6)):
        s.on_trial_result("t1", {"val_acc": acc, "training_iteration": epoch, "epoch": epoch})
    s.on_trial_complete("t1", {"val_acc": 0.6, "epoch": 2})  # stopped at 2 of 4: pruned
    assert done == {"t1"}, changed("ray.tune OptunaSearch._completed_trials", RAY, where)
    first = study.get_trials(deepcopy=False)[0]
    assert (first.state, first.value) == (TrialState.PRUNED, 0.6)
    s.on_trial_complete("t1", {"val_acc": 0.6, "epoch": 2})  # a second completion: ignored

    storage = internal(study, "_storage", "optuna Study", OPTUNA, where)
    assert isinstance(storage, optuna.storages.BaseStorage), changed(
        "optuna Study._storage (its BaseStorage)", OPTUNA, where)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert [t.number for t in running] == [1]
    trial_id = internal(running[0], "_trial_id", "optuna FrozenTrial", OPTUNA, where)
    assert isinstance(trial_id, int) and storage.get_trial(trial_id).number == 1, changed(
        "optuna FrozenTrial._trial_id (the storage's id of the trial)", OPTUNA, where)
    for name in ("set_trial_user_attr", "set_trial_state_values"):
        internal(storage, name, "optuna BaseStorage", OPTUNA, where)

    # what they serve: a restored searcher marks the trials asked after its snapshot as lost
    s.save(str(tmp_path / "snapshot.pkl"))
    study.ask()  # asked after the snapshot; then the driver dies
    restored = DurableOptunaSearch(epochs=4)
    restored.restore(str(tmp_path / "snapshot.pkl"))
    after = optuna.load_study(study_name="w", storage=f"sqlite:///{tmp_path}/o.db").trials
    assert [t.state for t in after] == [TrialState.PRUNED, TrialState.RUNNING,
                                        TrialState.FAIL], changed(
        "optuna Study._storage.set_trial_state_values", OPTUNA, where)
    assert "asked before an interruption" in after[2].user_attrs.get("lost", ""), changed(
        "optuna Study._storage.set_trial_user_attr", OPTUNA, where)
    assert restored.epochs == 4 and set(restored._ot_trials) == {"t1", "t2"}


def test_a_lost_trial_gives_its_starting_point_back_through_optunas_fixed_params(tmp_path):
    where = f"{WEIGHTS} (DurableOptunaSearch.restore)"
    s = DurableOptunaSearch(epochs=4, study_name="w", sampler=SeededTPESampler(0),
                            storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db"),
                            points_to_evaluate=[{"w0": 2.0}, {"w0": 1.0}])
    s.set_search_properties("val_acc", "max", {"w0": tune.uniform(0.5, 2.5)})
    assert s.suggest("t1") == {"w0": 2.0}
    s.save(str(tmp_path / "snapshot.pkl"))
    assert s.suggest("t2") == {"w0": 1.0}  # asked after the snapshot; then the driver dies
    asked = s._ot_study.get_trials(deepcopy=False)[1]
    attrs = internal(asked, "system_attrs", "optuna FrozenTrial", OPTUNA, where)
    assert attrs.get("fixed_params") == {"w0": 1.0}, changed(
        "optuna's record of an enqueued trial's point (FrozenTrial.system_attrs"
        f"['fixed_params']; got {attrs})", OPTUNA, where)
    restored = DurableOptunaSearch(epochs=4)
    restored.restore(str(tmp_path / "snapshot.pkl"))
    assert restored.suggest("t3") == {"w0": 1.0}  # the lost starting point, tried after all


# --- trainables/trainable.py: what Tune hands Trainable.restore() ------------------------------

TRAINABLE = "trainables/trainable.py"


def training_result_class():
    try:
        from ray.train._internal.session import _TrainingResult
    except ImportError as e:
        pytest.fail(changed("ray.train._internal.session._TrainingResult (import: "
                            f"{e})", RAY, TRAINABLE))
    return _TrainingResult


class Probe(tune.Trainable):
    def setup(self, config):
        self.loaded = []

    def step(self):
        return {"done": True}

    def save_checkpoint(self, checkpoint_dir):
        Path(checkpoint_dir, CHECKPOINT_FILE).write_text("weights")

    def load_checkpoint(self, checkpoint_dir):
        self.loaded.append(checkpoint_dir)


def test_trainable_restore_takes_a_training_result_and_the_checkpoint_folder_itself(tmp_path):
    training_result = training_result_class()
    named = tmp_path / "trial" / "checkpoint_000003"
    named.mkdir(parents=True)
    (named / CHECKPOINT_FILE).write_text("weights")
    ckpt = tune.Checkpoint.from_directory(str(named))
    assert (ckpt.path, ckpt.filesystem.type_name) == (str(named), "local"), changed(
        "ray.tune Checkpoint .path / .filesystem.type_name", RAY, TRAINABLE)
    result = training_result(checkpoint=ckpt, metrics={"epoch": 3, "training_iteration": 3})
    assert (result.checkpoint, result.metrics["epoch"]) == (ckpt, 3), changed(
        "ray.train._internal.session._TrainingResult(checkpoint=, metrics=)", RAY, TRAINABLE)

    probe = Probe(config={})
    try:
        saved = probe.save(str(tmp_path / "saved"))
        assert isinstance(saved, training_result), changed(
            "Trainable.save() (returns the _TrainingResult Tune later passes to restore())",
            RAY, TRAINABLE)
        probe.restore(result)
        # the folder itself, not a copy: a trial looks for other checkpoints beside it
        assert probe.loaded == [str(named)], changed(
            "Trainable.restore() (calls load_checkpoint with the local checkpoint's own "
            "folder)", RAY, TRAINABLE)
        assert probe.iteration == 3
        gone = training_result(checkpoint=tune.Checkpoint.from_directory(
            str(tmp_path / "trial" / "checkpoint_000004")), metrics={"epoch": 4})
        # why the project's restore() swaps in a stand-in for a deleted checkpoint
        refused = changed("Trainable.restore() of a checkpoint that no longer exists (a "
                          "ValueError: does not exist)", RAY, f"{TRAINABLE} (restore())")
        try:
            probe.restore(gone)
        except ValueError as e:
            assert "does not exist" in str(e), f"{refused}; got: {e}"
        else:
            pytest.fail(refused)
    finally:
        probe.stop()


# --- real Tune runs: trial folders, restore after a failure, the driver's Tuner ---------------

class Toy(tune.Trainable):
    """``epochs`` epochs; ``dead`` raises before its first result, ``flaky`` fails once at
    epoch 2 and is restored from its checkpoint. Epoch 2 asks for no checkpoint. Like the
    project's trainable it takes a new config on a reused actor (reset_config)."""

    def setup(self, config):
        if config["kind"] == "dead":
            raise RuntimeError("dies before its first result")
        self.epoch, self.restored = 0, None

    def reset_config(self, new_config):  # reuse_actors, as trainables/trainable.py does
        self.setup(new_config)
        return True

    def step(self):
        self.epoch += 1
        marks = Path(self.config["marks"])
        failed_once = marks / f"{self.config['kind']}.failed"
        if self.config["kind"] == "flaky" and self.epoch == 2 and not failed_once.exists():
            failed_once.touch()
            raise RuntimeError("fails once")
        bonus = 0.05 if self.config["kind"] == "flaky" else 0.0  # never below "ok" (ASHA)
        return {"epoch": self.epoch, "val_acc": 0.1 * self.epoch + bonus,
                "restored": self.restored, SHOULD_CHECKPOINT: self.epoch != 2,
                "done": self.epoch >= self.config["epochs"]}

    def save_checkpoint(self, checkpoint_dir):
        Path(checkpoint_dir, CHECKPOINT_FILE).write_text(str(self.epoch))
        with open(Path(self.config["marks"]) / f"{self.config['kind']}.saves", "a") as f:
            f.write(f"{self.epoch}\n")

    def load_checkpoint(self, checkpoint_dir):
        self.epoch = int(Path(checkpoint_dir, CHECKPOINT_FILE).read_text())

    def restore(self, checkpoint_path):
        got = checkpoint_path
        self.restored = {"type": type(got).__name__, "module": type(got).__module__,
                         "epoch": getattr(got, "metrics", {}).get("epoch")}
        return super().restore(checkpoint_path)


class Seen(tune.Callback):
    """What search/lineage.py reads of a trial in its callbacks."""

    def __init__(self):
        self.errors, self.failures = {}, {}

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.failures[trial.config["kind"]] = trial.num_failures

    def on_trial_error(self, iteration, trials, trial, **info):
        self.errors[trial.config["kind"]] = error_line(trial)


class WatchedASHA(ScheduleAwareASHA):
    """The project's scheduler; an error when Tune adds a trial is kept for the test that
    checks it, so that the run (and the other tests) go on."""

    def __init__(self):
        super().__init__(grace_period=1, reduction_factor=2)
        self.add_errors: list[str] = []

    def on_trial_add(self, tune_controller, trial):
        try:
            super().on_trial_add(tune_controller, trial)
        except Exception as e:
            self.add_errors.append(f"{type(e).__name__}: {e}")
            if trial.trial_id not in self._group(trial)._trial_info:
                self._group(trial).on_trial_add(tune_controller, trial)


@pytest.fixture(scope="module")
def local_ray():
    with ray_for_the_tests(num_cpus=1):
        yield


@pytest.fixture(scope="module")
def grid_run(local_ray, tmp_path_factory):
    """A grid (Tune's own trial ids) through the Tuner that search/driver.py builds."""
    root = tmp_path_factory.mktemp("tune")
    marks = root / "marks"
    marks.mkdir()
    seen, asha = Seen(), WatchedASHA()
    search = driver.Search(name="toy", kind="grid", scheduler=asha, metric="val_acc",
                           columns=("kind",), param_space={
                               "kind": tune.grid_search(["ok", "dead", "flaky"]),
                               "epochs": 3, "marks": str(marks)})
    args = SimpleNamespace(max_concurrent=0, max_failures=1)
    build = Build(search, Toy, seen, args, SimpleNamespace(storage_path=str(root)),
                  RunContext())
    with mock.patch.object(tune, "Tuner", lambda trainable, **kw: kw):
        kw = make_tuner(build, "toy", 1, first=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        results = list(tune.Tuner(Toy, **kw).fit())
    return SimpleNamespace(results=results, path=root / "toy", marks=marks, seen=seen,
                           asha=asha, out=out.getvalue(), checkpoint_config=kw["run_config"]
                           .checkpoint_config, view=kw["run_config"].progress_reporter)


def trials_of(run) -> dict[str, SimpleNamespace]:
    """kind -> Tune's trial id and its Result, matched by the trial's folder (a Result's config
    and metrics may be another trial's)."""
    trials = {Path(t.path).name: t for t in tune.ExperimentAnalysis(str(run.path)).trials}
    out = {}
    for r in run.results:
        t = trials[Path(r.path).name]
        out[t.config["kind"]] = SimpleNamespace(trial_id=t.trial_id, result=r)
    return out


def without_metrics(result) -> SimpleNamespace:
    """A Result as backfill sees one of a trial that failed before its first result."""
    return SimpleNamespace(metrics={}, path=result.path)


def test_backfill_reads_the_trial_id_from_tunes_trial_folder(grid_run):
    trials = trials_of(grid_run)
    assert set(trials) == {"ok", "dead", "flaky"}
    assert trials["dead"].result.error is not None
    where = "search/backfill.py (trial_id(), for a trial that failed before its first result)"
    for t in trials.values():
        assert backfill.trial_id(without_metrics(t.result)) == t.trial_id, changed(
            f"Tune's trial folder name ({Path(t.result.path).name!r} for trial "
            f"{t.trial_id})", RAY, where)
    for kind in ("ok", "flaky"):
        assert backfill.trial_id(trials[kind].result) == trials[kind].trial_id


def test_backfill_names_the_trial_a_result_belongs_to_when_actors_are_reused(grid_run):
    dead = trials_of(grid_run)["dead"]
    assert backfill.trial_id(dead.result) == dead.trial_id, \
        f"the Result of {dead.trial_id} says {dict(dead.result.metrics or {})}"


def test_tune_restores_a_trainable_from_a_training_result_with_the_checkpoints_metrics(
        grid_run):
    flaky = trials_of(grid_run)["flaky"].result
    assert flaky.error is None and flaky.metrics["epoch"] == 3
    restored = flaky.metrics["restored"]
    assert restored == {"type": "_TrainingResult", "module": "ray.train._internal.session",
                        "epoch": 1}, changed(
        "what Tune passes to Trainable.restore() after a failure (a "
        "ray.train._internal.session._TrainingResult with the metrics of the checkpoint's "
        f"result; got {restored})", RAY, f"{TRAINABLE} (restore())")
    assert grid_run.seen.failures.get("flaky") == 1, changed(
        "Trial.num_failures in Callback.on_trial_recover", RAY, "search/lineage.py")


def test_tune_checkpoints_the_results_that_ask_and_lays_them_out_side_by_side(grid_run):
    freq = grid_run.checkpoint_config.checkpoint_frequency
    saves = [int(e) for e in (grid_run.marks / "ok.saves").read_text().split()]
    expected = [e for e in (1, 2, 3) if e != 2 or (freq and e % freq == 0)]
    assert saves == expected, changed(
        f"when Tune saves a checkpoint (should_checkpoint in a result, checkpoint_frequency "
        f"{freq}; saved after epochs {saves})", RAY,
        f"{TRAINABLE} and search/driver.py (CheckpointConfig)")
    trials = trials_of(grid_run)
    for kind in ("ok", "flaky"):
        trial_dir = Path(trials[kind].result.path)
        kept = sorted(trial_dir.glob(f"checkpoint_*/{CHECKPOINT_FILE}"))
        assert kept and all(re.fullmatch(r"checkpoint_\d{6}", p.parent.name) for p in kept), \
            changed(f"Tune's checkpoint folder names ({[p.parent.name for p in kept]})", RAY,
                    f"{TRAINABLE} (_other_checkpoints)")
        newest = kept[-1]
        assert newest.read_text() == "3"
        assert project_trainable._other_checkpoints(newest) == kept[-2::-1]


def test_schedule_aware_asha_in_tune_and_the_results_it_replays(grid_run):
    # Tune names a trial's folder when the trial starts, after on_trial_add
    assert grid_run.asha.add_errors == [], (
        f"Trial.path of a trial Tune has just added raises in {RAY} "
        f"({grid_run.asha.add_errors[0]}); {ASHA} (_replay, from on_trial_add) reads it, and "
        "getattr(trial, 'path', None) only catches AttributeError")
    ok = trials_of(grid_run)["ok"]
    assert grid_run.asha.rungs(3) == [1, 2] and not grid_run.asha.stops
    lines = [json.loads(ln) for ln in Path(ok.result.path, "result.json").read_text()
             .splitlines()]
    assert [(r.get("epoch"), r.get("val_acc")) for r in lines] == [
        (e, pytest.approx(0.1 * e)) for e in (1, 2, 3)], changed(
        "Tune's result.json in a trial's folder (one result a line)", RAY, f"{ASHA} (_replay)")
    # the same trial restored into a fresh scheduler, as a resumed search would
    fresh = ScheduleAwareASHA(grace_period=1, reduction_factor=2)
    fresh.on_trial_add(None, FakeTrial(ok.trial_id, 3, Path(ok.result.path), "TERMINATED"))
    rungs = dict(fresh.groups[3]._brackets[0]._rungs)
    assert rungs[1] == {ok.trial_id: pytest.approx(0.1)} and \
        rungs[2] == {ok.trial_id: pytest.approx(0.2)}


def test_the_driver_s_tuner_shows_its_progress_view_and_reads_trial_statuses(grid_run,
                                                                              tmp_path):
    # Tune hands every trial to the reporter's should_report (the trial that died before its
    # first result is known from that alone) and the callbacks print each trial's end
    rows = {row.name.rsplit("-", 1)[-1]: row for row in grid_run.view.rows.values()}
    assert len(rows) == 3 and sorted(r.status for r in rows.values()) == [
        "done", "done", "failed"], changed(
        "Tune's ProgressReporter API (setup, should_report(trials, done), report; called only "
        "when RAY_AIR_NEW_OUTPUT=0)", RAY,
        "search/progress.py (ProgressView), search/cluster.py (start_ray)") + \
        f"; rows: {rows}"
    ended = [ln for ln in grid_run.out.splitlines() if re.match(r"\[toy\] \S+: finished", ln)]
    assert len(ended) == 2 and "== Status ==" not in grid_run.out, grid_run.out[-3000:]
    assert "dies before its first result" in grid_run.seen.errors.get("dead", ""), changed(
        "Trial.error_file (its last line is the error)", RAY, "search/lineage.py (error_line)")
    statuses = sorted(t.status for t in tune.ExperimentAnalysis(str(grid_run.path)).trials)
    assert statuses == ["ERROR", "TERMINATED", "TERMINATED"], changed(
        f"ExperimentAnalysis(path).trials statuses ({statuses})", RAY,
        "search/driver.py (interrupted())")
    assert not driver.interrupted(str(grid_run.path))
    assert driver.interrupted(str(tmp_path / "never-ran"))


def test_a_restored_tuner_s_view_and_callbacks_get_the_resumed_command_s_context(grid_run):
    """Tune restores the progress view and the callbacks from its tuner.pkl and takes no new
    ones: search/tuner.py's restore hands them the resumed command's run context (its -v
    here), found in the restored Tuner's run config."""
    from trainables.cli import VERBOSE

    parts = restored_parts(restore(str(grid_run.path), Toy, RunContext(VERBOSE)))
    views = [p for p in parts if isinstance(p, ProgressView)]
    assert len(views) == 1 and views[0].level == VERBOSE, changed(
        "Tuner._local_tuner.get_run_config() (the restored reporter and callbacks)", RAY,
        "search/tuner.py (restored_parts)") + f"; found {parts}"
    assert any(isinstance(p, Seen) for p in parts), parts
    assert grid_run.view.level != VERBOSE  # the view of the run itself: not that one


def test_the_tune_and_ray_api_the_driver_calls():
    import inspect

    import ray.exceptions

    for name in ("AuthenticationError", "RpcError"):  # start_ray's one-line errors
        assert issubclass(getattr(ray.exceptions, name, type(None)), Exception), changed(
            f"ray.exceptions.{name}", RAY, "search/cluster.py (start_ray)")
    restore = inspect.signature(tune.Tuner.restore).parameters
    assert {"trainable", "resume_unfinished", "resume_errored"} <= set(restore), changed(
        "tune.Tuner.restore's arguments", RAY, "search/tuner.py (restore)")
    assert callable(tune.Tuner.can_restore)


@pytest.fixture(scope="module")
def searcher_run(local_ray, tmp_path_factory):
    """The class-weight search's searcher in a real run: Tune names its trials itself."""
    root = tmp_path_factory.mktemp("tune-searcher")
    marks = root / "marks"
    marks.mkdir()
    s = DurableOptunaSearch(epochs=1, study_name="w", sampler=SeededTPESampler(0),
                            storage=optuna.storages.RDBStorage(f"sqlite:///{root}/o.db"),
                            points_to_evaluate=[{"kind": "dead"}, {"kind": "ok"}])
    tuner = tune.Tuner(
        Toy, param_space={"kind": tune.choice(["ok", "dead"]), "epochs": 1,
                          "marks": str(marks)},
        tune_config=tune.TuneConfig(metric="val_acc", mode="max", search_alg=s, num_samples=2,
                                    max_concurrent_trials=1),
        run_config=tune.RunConfig(name="weights", storage_path=str(root), verbose=0))
    with contextlib.redirect_stdout(io.StringIO()):
        results = list(tuner.fit())
    return SimpleNamespace(results=results, path=root / "weights", study=root / "o.db")


@pytest.mark.slow
def test_backfill_reads_the_trial_id_of_a_searcher_s_trial_from_its_folder(searcher_run):
    trials = trials_of(searcher_run)
    assert set(trials) == {"ok", "dead"}
    study = optuna.load_study(study_name="w", storage=f"sqlite:///{searcher_run.study}")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "FAIL"]
    for t in trials.values():
        assert re.fullmatch(r"[0-9a-f]{8}", t.trial_id)
        assert backfill.trial_id(without_metrics(t.result)) == t.trial_id, \
            f"{Path(t.result.path).name!r} is trial {t.trial_id}"


def test_sigterm_is_handled_as_ctrl_c_in_every_command():
    """`ray job stop`, `docker stop` and Kubernetes send SIGTERM: inside a command's output()
    it does what Ctrl-C does at that moment (KeyboardInterrupt, or the SIGINT handler Tune
    sets while a search runs), and the old handler is back after the command."""
    script = (
        "import os, signal\n"
        "from trainables.cli import NORMAL, output\n"
        "with output(NORMAL):\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        signal.pause()\n"
        "    except KeyboardInterrupt:\n"
        "        print('KeyboardInterrupt')\n"
        "    seen = []\n"
        "    signal.signal(signal.SIGINT, lambda s, f: seen.append(s))  # Tune's, in a search\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    print('SIGINT handler' if seen == [signal.SIGINT] else seen)\n"
        "print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=HERE.parent, capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.splitlines() == ["KeyboardInterrupt", "SIGINT handler", "True"], \
        out.stdout + out.stderr


def test_a_trial_that_failed_before_its_first_result_is_named_from_its_config(tmp_path):
    """Its Result has no metrics, so no config (a worker that could not start, a runtime env
    that did not download): the trial table takes the config from the params.json Tune wrote
    when it started the trial, and names it as its MLflow run is."""
    from ray.tune import Result

    from search.summary import trial_rows

    folder = tmp_path / "ClassifierTrainable_3f2a1_00000_0_batch_size=64,epochs=3_2026-12-07"
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps(
        {"model": "cnn", "model_kwargs": {}, "batch_size": 64, "epochs": 3}))
    failed = Result(metrics={}, checkpoint=None, error=RuntimeError("worker could not start"),
                    path=str(folder))
    rows, finished, why = trial_rows([failed], "val_acc", ())
    assert why == [("cnn-b64-e3-00000", "worker could not start")]
    assert rows[0][3] == "cnn-b64-e3-00000" and rows[0][1] == "FAILED" and not finished


def test_what_a_search_holds_alone_is_let_go_of_when_its_process_is_killed(tmp_path):
    """search/claims.py: another process holding a claim refuses it here, naming that process;
    a holder killed with SIGKILL lets go of it (the kernel drops its lock) and leaves the lock
    file, which the next claim takes over and removes when it is done."""
    from search import claims
    from search.options import UsageError

    lock = tmp_path / "experiments" / "grid-cnn.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import signal; from search import claims\n"
         f"with claims.hold(__import__('pathlib').Path({str(lock)!r}), 'x', 'y'):\n"
         "    print('held', flush=True); signal.pause()"],  # until its SIGKILL
        cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"  # the event: it holds the lock
        with pytest.raises(UsageError) as refused, claims.hold(
                lock, "experiment 'grid-cnn'", "give this one its own --name"):
            pass
        assert str(refused.value) == (f"experiment 'grid-cnn' is in use by pid {holder.pid} on "
                                      f"{os.uname().nodename}; give this one its own --name")
    finally:
        holder.kill()
        holder.wait()
    assert lock.exists()  # what SIGKILL leaves behind: a file, no lock
    with claims.hold(lock, "experiment 'grid-cnn'", "?"):
        assert lock.read_text() == f"pid {os.getpid()} on {os.uname().nodename}\n"
    assert not lock.exists()


def test_a_storage_path_some_nodes_do_not_see_is_said_in_one_line(capsys):
    """search/cluster.py check_storage: the nodes that do not see the storage path (asked of
    each node by nodes_not_seeing; here its answer) are named in one line, with the fix; a
    bucket is shared by nature and not asked."""
    from search.cluster import check_storage

    check_storage("/srv/runs", lambda path: ["10.0.0.7", "10.0.0.8"])
    check_storage("/srv/runs", lambda path: [])
    check_storage("s3://bucket/runs", lambda path: pytest.fail("a bucket is not asked"))
    assert capsys.readouterr().err.splitlines() == [
        "note: the storage path /srv/runs is not shared with 2 node(s) of the cluster "
        "(10.0.0.7, 10.0.0.8): checkpoints stay on the node that wrote them, and a trial of a "
        "node that is lost starts again from scratch; pass a --storage-path that every node "
        "mounts (NFS) or a bucket (s3://...)"]


def test_a_sigterm_while_ray_starts_is_ctrl_c_too():
    """ray.init sets a SIGTERM handler that exits on the spot (SystemExit(15)); inside
    start_ray it is turned into Ctrl-C, and the command's own handler is set again."""
    import signal

    from search.cluster import ray_sigterm_as_ctrl_c

    def rays(signum, frame):  # what ray.init installs
        sys.exit(signum)

    saved = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(KeyboardInterrupt), ray_sigterm_as_ctrl_c():
            signal.signal(signal.SIGTERM, rays)
            os.kill(os.getpid(), signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is not rays
        with pytest.raises(SystemExit), ray_sigterm_as_ctrl_c():
            sys.exit(2)  # any other exit is left as it is
    finally:
        signal.signal(signal.SIGTERM, saved)


def test_search_kinds_register_once_and_say_what_a_search_parent_is():
    """search/kinds.py: the kinds in the pipeline's order, each registered by its module; a
    second kind of a taken name refused; which runs are searches' parents and which searches'
    trials are fusion candidates, read from the tags their parents recorded."""
    from search import kinds

    assert [k.name for k in kinds.kinds()] == ["grid", "weights"]
    assert kinds.kind("grid").fuses
    with pytest.raises(ValueError, match="'grid' is already taken"):
        kinds.register_kind(kinds.SearchKind("grid", stages=lambda *a: [],
                                             run_stage=lambda stage: 0))
    with pytest.raises(ValueError, match="'trial' is already taken"):
        kinds.register_kind(kinds.SearchKind("trial", stages=lambda *a: [],
                                             run_stage=lambda stage: 0))
    parent = {"kind": "toy"}
    assert kinds.search_parent(parent) and kinds.fusion_candidates(parent)  # before the tag
    assert not kinds.fusion_candidates({**parent, kinds.FUSION_TAG: "none"})
    assert not kinds.search_parent({"kind": "trial", "mlflow.parentRunId": "p"})
    assert not kinds.search_parent({"kind": "fusion"})
    assert not kinds.search_parent({"kind": "grid", "mlflow.parentRunId": "p"})
