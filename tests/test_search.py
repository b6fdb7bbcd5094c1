"""The search service: the Trainable, warm-up reuse, schedule-aware ASHA, the grid end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import torch
from conftest import (
    environ_kept,
    exit_code,
    internal_lines,
    need_real_data,
    run_trial,
    untouched,
    weights,
)
from ray.tune.schedulers import TrialScheduler

from search.asha import ScheduleAwareASHA
from trainables import checkpoint, data
from trainables.config import TrainConfig
from trainables.engine import evaluate
from trainables.trainable import ClassifierTrainable

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("torch_threads_kept")  # trials set torch's threads


@pytest.fixture(scope="module")
def split():
    return data.load_split(need_real_data(), train_size=1_000, seed=0)


# --- ASHA compares trials only at the same point of the same schedule -------------------------

class FakeTrial:
    def __init__(self, trial_id, epochs):
        self.trial_id, self.config = trial_id, {"epochs": epochs}


def test_asha_groups_trials_by_schedule_length():
    asha = ScheduleAwareASHA(grace_period=2, reduction_factor=2)
    short = [FakeTrial(f"s{i}", 4) for i in range(3)]
    long = FakeTrial("long", 8)
    for t in [*short, long]:
        asha.on_trial_add(None, t)
    assert asha.rungs(4) == [2] and asha.rungs(8) == [2, 4]

    def report(t, epoch, acc):
        return asha.on_trial_result(None, t, {"epoch": epoch, "val_acc": acc})

    assert report(short[0], 2, 0.90) == TrialScheduler.CONTINUE
    assert report(short[1], 2, 0.91) == TrialScheduler.CONTINUE
    # far below every short trial at the same epoch, but at another point of its own
    # (longer) schedule: never compared with them, so never stopped by them
    assert report(long, 2, 0.10) == TrialScheduler.CONTINUE
    assert report(long, 4, 0.20) == TrialScheduler.CONTINUE
    # a short trial below its own group's cutoff at the rung is stopped, and the reason kept
    assert report(short[2], 2, 0.50) == TrialScheduler.STOP
    why = asha.stops["s2"]
    assert why["rung"] == 2 and why["group_epochs"] == 4 and why["compared_with"] == 2
    assert why["cutoff"] == pytest.approx(0.905)
    assert "long" not in asha.stops


def test_asha_s_margin_lowers_the_cutoff_of_each_length():
    asha = ScheduleAwareASHA(grace_period=2, reduction_factor=2, margin=0.02)
    trials = [FakeTrial(f"t{i}", 4) for i in range(3)]
    for t in trials:
        asha.on_trial_add(None, t)

    def report(t, acc):
        return asha.on_trial_result(None, t, {"epoch": 2, "val_acc": acc})

    assert report(trials[0], 0.90) == TrialScheduler.CONTINUE
    assert report(trials[1], 0.89) == TrialScheduler.CONTINUE  # 0.01 behind: within 0.02
    assert report(trials[2], 0.85) == TrialScheduler.STOP  # cutoff 0.895 - 0.02
    assert asha.stops["t2"]["cutoff"] == pytest.approx(0.875)
    assert asha.stops["t2"]["margin"] == 0.02


# --- the Trainable ----------------------------------------------------------------------------

def test_warmup_is_computed_once_and_reused_exactly(split, tmp_path):
    base = TrainConfig(model="cnn", augment="none", batch_size=64, warmup_epochs=2, epochs=3,
                       device="cpu", num_threads=2).to_dict()
    cache = str(tmp_path / "warmups")
    _, r1 = run_trial(split, {**base, "trunk_cache": cache})
    assert [r["warmup_reused"] for r in r1] == [False, False, False]
    assert len(list(Path(cache).glob("*/*.pt"))) == 1
    reused, r2 = run_trial(split, {**base, "epochs": 4, "trunk_cache": cache})
    assert [r["warmup_reused"] for r in r2] == [True, True, False, False]
    assert [r["epoch"] for r in r2] == [1, 2, 3, 4]
    alone, r3 = run_trial(split, {**base, "epochs": 4})  # an independent warm-up
    assert [r["val_loss"] for r in r2] == [r["val_loss"] for r in r3]
    assert torch.equal(weights(reused.state.model), weights(alone.state.model))
    assert len(list(Path(cache).glob("*/*.pt"))) == 1  # still the one warm-up


def test_validate_save_restore(split):
    import ray
    from ray import tune
    from ray.tune.utils.util import validate_save_restore

    config = TrainConfig(model="resnet18", model_kwargs={"width": 4}, augment="none",
                         warmup_epochs=1, epochs=6, device="cpu", num_threads=1).to_dict()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        assert validate_save_restore(tune.with_parameters(ClassifierTrainable, split=split),
                                     config)
    finally:
        ray.shutdown()


# --- the grid command end to end --------------------------------------------------------------

def grid(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "search.grid", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"})


def mlflow_runs(ws: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name("grid-resnet18")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("kind") == "grid"]
    children = [r for r in runs if r.data.tags.get("kind") == "trial"]
    return client, parents, children


@pytest.mark.slow
@pytest.mark.soak
def test_smoke_grid_end_to_end(split, tmp_path):
    ws = tmp_path / "ws"
    # batch 512 of 900 images takes two steps an epoch: clearly behind at the first rung
    out = grid("--model", "resnet", "--profile", "smoke", "--batch-sizes", "32,64,512",
               "--epochs", "3,4", "--workspace", str(ws), "--num-cpus", "2",
               "--max-concurrent", "1", "--no-dashboard")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "best: val_acc" in out.stdout and "mlflow ui --backend-store-uri" in out.stdout
    client, parents, children = mlflow_runs(ws)
    assert len(parents) == 1 and len(children) == 6
    parent = parents[0]
    assert parent.data.params["profile"] == "smoke" and "data_fingerprint" in parent.data.params
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    stopped = [c for c in children if c.data.tags.get("stopped_by") == "asha"]
    assert stopped and all("ASHA rung at epoch 2" in c.data.tags["stop_reason"]
                           for c in stopped)
    for c in children:
        history = client.get_metric_history(c.info.run_id, "val_acc")
        steps = [m.step for m in history]
        assert steps == list(range(1, len(steps) + 1))  # every epoch once, step = epoch
        assert c.info.status == "FINISHED"
    # the best checkpoint reproduces the val accuracy logged for its epoch
    best = max(children, key=lambda c: float(c.data.tags["best_val_acc"]))
    local = client.download_artifacts(best.info.run_id, "best_checkpoint/checkpoint.pt",
                                      str(tmp_path))
    ckpt = checkpoint.load(local)
    assert ckpt["epoch"] == int(best.data.tags["best_epoch"])
    mean, std = ckpt["normalize"]
    acc = evaluate(checkpoint.model_from(ckpt), split.x_val, split.y_val, batch_size=500,
                   mean=mean, std=std, fast=checkpoint.fast_path_of(ckpt))["acc"]
    assert acc == pytest.approx(float(best.data.tags["best_val_acc"]), abs=1e-6)
    trunks = {p.parent for p in (ws / "trunks").glob("*/*.pt")}
    assert len(trunks) == 3  # one per batch size, not one per trial


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_the_rest_go_on(tmp_path, capfd):
    import ray
    from ray import tune

    from search import grid as grid_module

    need_real_data()
    ws = tmp_path / "ws"
    with environ_kept():  # the search starts this process's Ray cluster and sets its defaults
        try:
            code = grid_module.main(
                ["--model", "resnet18", "--profile", "smoke", "--batch-sizes", "64", "--epochs",
                 "3", "--workspace", str(ws), "--num-cpus", "2", "--scheduler", "none",
                 "--max-failures", "0", "--no-dashboard"],
                space_overrides={"lr": tune.grid_search([0.01, 1e12])})  # 1e12: loss explodes
        finally:
            ray.shutdown()
    assert code == 0
    _, _, children = mlflow_runs(ws)
    status = sorted(c.info.status for c in children)
    assert status == ["FAILED", "FINISHED"]
    failed = next(c for c in children if c.info.status == "FAILED")
    assert "loss became" in failed.data.tags["error"]
    # on the terminal: one line under the trial's MLflow name, no traceback of Tune's
    out = capfd.readouterr()
    assert re.search(rf"^\[grid-resnet18\] {re.escape(failed.info.run_name)}: FAILED \(.*loss "
                     "became", out.err, re.M), out.err
    assert "Traceback" not in out.out + out.err and not internal_lines(out.out + out.err)
    assert re.search(rf"^failed trials:\n  {re.escape(failed.info.run_name)}: .*loss became",
                     out.out, re.M), out.out


@pytest.mark.parametrize("args, message", [
    (["--model", "vgg"], "--model"),
    (["--model", "cnn", "--epochs", ""], "empty"),
    (["--model", "cnn", "--profile", "smoke", "--batch-sizes", "5000"], "larger than"),
    (["--model", "cnn", "--profile", "smoke", "--epochs", "2", "--warmup-epochs", "3"],
     "warm-up"),
    (["--model", "cnn", "--profile", "smoke", "--width", "8"], "fixed width"),
    (["--model", "cnn", "--profile", "smoke", "--time-budget", "soon"], "1h30m"),
    (["--model", "cnn", "--profile", "smoke", "--name", "new", "--time-budget", "1s",
      "--no-dashboard"], "fits no grid search new on this machine"),
    (["--model", "cnn", "--profile", "smoke", "--resume"], "to resume"),
    (["--model", "cnn", "--profile", "smoke", "--tracking-uri", "http://127.0.0.1:9"],
     "does not answer"),
])
def test_bad_arguments(args, message, earlier_workspace, capsys):
    from search import grid as grid_module

    try:
        with untouched(earlier_workspace):  # docs/bad-input.md: workspace untouched
            assert exit_code(grid_module.main, *args, "--workspace",
                             str(earlier_workspace)) == 2
    finally:  # a refusal after Ray started (a budget nothing fits): the next test's own cluster
        ray.shutdown()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_bad_arguments_from_the_shell(earlier_workspace):
    with untouched(earlier_workspace):
        out = grid("--model", "cnn", "--profile", "smoke", "--batch-sizes", "5000",
                   "--workspace", str(earlier_workspace), timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.strip().splitlines() == [
        "error: batch size 5000 is larger than the 900 training images; lower --batch-sizes"]
