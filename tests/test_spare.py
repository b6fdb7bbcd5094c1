"""Spare cores (search/spare.py): the core of a trial that ended goes to the trials left."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import environ_kept, need_real_data, saved_tune_trials
from ray.tune import PlacementGroupFactory
from ray.tune.experiment import Trial

from search.asha import ScheduleAwareASHA
from search.spare import MIN_EPOCHS_LEFT, ShareOfCores, SpareCores, spare_cores
from trainables import checkpoint, data
from trainables.engine import evaluate

pytestmark = pytest.mark.usefixtures("torch_threads_kept")  # trials set torch's threads


def test_a_trial_gets_an_equal_share_of_the_cores_of_the_trials_not_ended():
    rule = ShareOfCores(cpus=1.0, planned=4)
    assert rule.share(4, 2, 2) == 1.0  # more trials than cores: what each was given
    assert rule.share(2, 2, 2) == 1.0
    assert rule.share(1, 2, 2) == 2.0  # alone: both cores
    assert rule.share(1, 8, 4) == 4.0  # at most one node's (a bundle fits on one node)
    assert rule.share(3, 8, 8) == 2.0  # whole CPUs
    assert rule.share(0, 2, 2) == 2.0
    assert ShareOfCores(cpus=2.0, planned=2).share(2, 2, 2) == 2.0  # never below its own


class Controller:
    def __init__(self, statuses):
        self.trials = [type("T", (), {"status": s})() for s in statuses]

    def get_trials(self):
        return self.trials


class FakeTrial:
    def __init__(self, epochs, cpus=1.0):
        self.config = {"epochs": epochs}
        self.placement_group_factory = PlacementGroupFactory([{"CPU": cpus, "GPU": 0}])


class TwoCores(ShareOfCores):
    @staticmethod
    def cluster():
        return 2.0, 2.0


def _cpus(pgf) -> float | None:
    return None if pgf is None else pgf.required_resources["CPU"]


def test_a_trial_grows_only_alone_at_an_epoch_whose_weights_it_holds_with_epochs_to_go():
    rule = TwoCores(cpus=1.0, planned=3)
    alone = Controller([Trial.TERMINATED, Trial.TERMINATED, Trial.RUNNING])
    held = {"epoch": 2, "should_checkpoint": True}
    assert _cpus(rule(alone, FakeTrial(10), held, None)) == 2.0
    # an epoch reported from its trunk, without its weights: Tune's checkpoint would not hold it
    assert rule(alone, FakeTrial(10), {**held, "should_checkpoint": False}, None) is None
    # too few epochs left to pay for the restart
    end = 2 + MIN_EPOCHS_LEFT - 1
    assert rule(alone, FakeTrial(end), held, None) is None
    assert _cpus(rule(alone, FakeTrial(end + 1), held, None)) == 2.0
    # another trial still running, or one the searcher has not created yet: no spare core
    assert rule(Controller([Trial.TERMINATED, Trial.RUNNING, Trial.PENDING]), FakeTrial(10),
                held, None) is None
    assert rule(Controller([Trial.TERMINATED, Trial.RUNNING]), FakeTrial(10), held,
                None) is None
    # a failed trial has ended too; a grown trial keeps its share
    assert rule(Controller([Trial.ERROR, Trial.TERMINATED, Trial.RUNNING]),
                FakeTrial(10, cpus=2.0), held, None) is None
    # a resumed search whose grown trial has company again gives its core back
    assert _cpus(rule(Controller([Trial.PENDING, Trial.TERMINATED, Trial.RUNNING]),
                      FakeTrial(10, cpus=2.0), held, None)) == 1.0


class SharedEightCores(ShareOfCores):
    """A cluster of 8 CPUs (one node) that another search uses too: ``busy`` CPUs are its."""

    busy = 0.0

    @staticmethod
    def cluster():
        return 8.0, 8.0

    def free(self):
        return 8.0 - self.busy - self.held

    held = 0.0


def test_on_a_shared_cluster_only_its_own_and_the_free_cores_are_shared():
    """On a cluster it joined, the cores a search shares out among its trials are those its
    running trials hold and those free: never another search's."""
    held = {"epoch": 2, "should_checkpoint": True}
    alone = Controller([Trial.TERMINATED, Trial.TERMINATED, Trial.TERMINATED, Trial.RUNNING])
    alone.trials[-1].placement_group_factory = FakeTrial(10).placement_group_factory
    rule = SharedEightCores(cpus=1.0, planned=4, shared=True)
    rule.held = 1.0
    rule.busy = 6.0  # the other search's trials: 1 free core, 1 of its own
    assert _cpus(rule(alone, FakeTrial(10), held, None)) == 2.0
    rule.busy = 7.0  # the other search took the freed cores: none spare
    assert rule(alone, FakeTrial(10), held, None) is None
    rule.busy = 0.0  # the other search ended: the whole node
    assert _cpus(rule(alone, FakeTrial(10), held, None)) == 8.0
    # the same cluster as one of its own (a local cluster): its total, whatever is busy
    own = SharedEightCores(cpus=1.0, planned=4)
    own.busy = 7.0
    assert _cpus(own(alone, FakeTrial(10), held, None)) == 8.0


def test_only_cpu_trials_with_auto_cpus_on_a_cluster_with_cores_to_spare():
    asha = ScheduleAwareASHA(grace_period=2, reduction_factor=2)
    wrapped = spare_cores(asha, (1.0, 0.0), True, 4, 2)
    assert isinstance(wrapped, SpareCores) and wrapped._base_scheduler is asha
    assert spare_cores(asha, (1.0, 0.0), False, 4, 2) is asha  # --cpus-per-trial given
    assert spare_cores(asha, (1.0, 0.25), True, 4, 16) is asha  # GPU trials
    assert spare_cores(asha, (2.0, 0.0), True, 4, 2) is asha  # no core to spare
    assert isinstance(spare_cores(None, (1.0, 0.0), True, 2, 2), SpareCores)  # no ASHA


@pytest.mark.slow
def test_the_trial_left_alone_trains_on_the_freed_core_and_loses_nothing(tmp_path, capfd):
    """A real grid on a 2-CPU Ray cluster, one trial at a time (so that the order is fixed):
    the 1-epoch trial runs on one CPU though two are free, the 6-epoch one has no company
    left: after the first epoch it trains it is paused at a checkpoint, restarted with both
    CPUs, and goes on from there: every epoch logged once, on one MLflow run, its best
    checkpoint the weights of the epoch it names."""
    import ray
    from mlflow.tracking import MlflowClient

    from search import grid as grid_module

    real = need_real_data()
    ws = tmp_path / "ws"
    with environ_kept():
        try:
            code = grid_module.main(
                ["--model", "cnn", "--profile", "smoke", "--batch-sizes", "64", "--epochs",
                 "1,6", "--train-size", "2000", "--workspace", str(ws), "--num-cpus", "2",
                 "--max-concurrent", "1", "--scheduler", "none", "--no-dashboard"])
        finally:
            ray.shutdown()
    assert code == 0
    assert "resources: each trial took 1 CPU; 1 trial went on with up to 2 CPUs once the " \
           "others had ended (spare cores)" in capfd.readouterr().out
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name("grid-cnn")
    runs = [r for r in client.search_runs([exp.experiment_id])
            if r.data.tags.get("kind") == "trial"]
    assert sorted(r.data.params["epochs"] for r in runs) == ["1", "6"]
    short, long = sorted(runs, key=lambda r: int(r.data.params["epochs"]))

    def history(run, key):
        return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))

    assert [t for _, t in history(short, "threads")] == [1.0]
    # epoch 1 is the trunk's (the 1-epoch trial computed it): reported, not held; epoch 2 is
    # the first whose weights it holds, the first it can be checkpointed and grown at
    assert [t for _, t in history(long, "threads")] == [1.0, 1.0] + [2.0] * 4
    assert [s for s, v in history(long, "shared") if v] == [1]
    assert [s for s, _ in history(long, "val_acc")] == list(range(1, 7))  # each epoch once
    assert long.info.status == "FINISHED"
    (trial,) = [t for t in saved_tune_trials(ws, "grid-cnn") if t.config["epochs"] == 6]
    assert trial.placement_group_factory.required_resources["CPU"] == 2.0
    # the best checkpoint is the epoch it names, across the restart
    local = client.download_artifacts(long.info.run_id, "best_checkpoint/checkpoint.pt",
                                      str(tmp_path))
    ckpt = checkpoint.load(local)
    assert ckpt["epoch"] == int(long.data.tags["best_epoch"])
    split = data.load_split(Path(real), train_size=2000, seed=0)
    mean, std = ckpt["normalize"]
    acc = evaluate(checkpoint.model_from(ckpt), split.x_val, split.y_val, batch_size=500,
                   mean=mean, std=std, fast=checkpoint.fast_path_of(ckpt))["acc"]
    assert acc == pytest.approx(float(long.data.tags["best_val_acc"]), abs=1e-6)
