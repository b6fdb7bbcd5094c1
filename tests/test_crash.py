"""Crashes survived for real: a search driver killed with SIGKILL mid-way and continued with
--resume, a checkpoint corrupted while it was down, a trial's worker process killed under it.
Each ends as the same experiment run without a fault ends: the same trials, the same numbers,
one MLflow child run per trial under the original parent. (The pipeline's own interruptions are
in the smoke pipeline, tests/conftest.py.)"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import ROOT, saved_tune_trials

from trainables.trainable import CHECKPOINT_FILE

pytestmark = pytest.mark.slow
ENV = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
# Four trials one after the other, no early stopping: which trial runs when is fixed, so a
# killed run can be compared number for number with an uninterrupted one.
GRID = ("--model", "cnn", "--profile", "smoke", "--train-size", "400", "--batch-sizes",
        "32,64", "--epochs", "2,3", "--scheduler", "none", "--num-cpus", "1",
        "--max-concurrent", "1", "--no-dashboard")
WEIGHTS = ("--model", "cnn", "--profile", "smoke", "--train-size", "400", "--num-samples", "3",
           "--batch-size", "64", "--epochs", "2", "--scheduler", "none", "--num-cpus", "1",
           "--max-concurrent", "1", "--no-dashboard")


@pytest.fixture(scope="module", autouse=True)
def need_data():
    from conftest import need_real_data

    need_real_data()


def command(module: str, *args) -> list[str]:
    return [sys.executable, "-m", module, *args]


def run(module: str, *args) -> subprocess.CompletedProcess:
    out = subprocess.run(command(module, *args), cwd=ROOT, capture_output=True, text=True,
                         timeout=600, env=ENV)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def trial_runs(ws: Path) -> dict[str, dict]:
    """trial id -> status and last logged epoch of its MLflow child run, read from the store
    while the search writes it."""
    with sqlite3.connect(ws / "mlflow.db", timeout=30) as con:
        rows = con.execute(
            "select t.value, r.status, (select max(m.value) from metrics m where "
            "m.run_uuid = r.run_uuid and m.key = 'epoch') from runs r join tags t on "
            "r.run_uuid = t.run_uuid where t.key = 'trial_id'").fetchall()
    return {tid: {"status": status, "epoch": int(epoch or 0)} for tid, status, epoch in rows}


def trial_dir(ws: Path, experiment: str, trial_id: str) -> Path | None:
    return next((d for d in (ws / "ray_results" / experiment).glob(f"*_{trial_id}_*")
                 if d.is_dir()), None)


def start_until(module: str, args, ws: Path, experiment: str, ready) -> subprocess.Popen:
    """Start a search and return once ``ready(trials, ws, experiment)`` holds."""
    proc = subprocess.Popen(command(module, *args), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=ENV)
    wait_until(proc, ws, experiment, ready)
    return proc


def wait_until(proc: subprocess.Popen, ws: Path, experiment: str, ready) -> None:
    """Poll the search's records until ``ready`` holds (on what it recorded, never a timer)."""
    deadline = time.time() + 300
    while True:
        assert proc.poll() is None, f"the search ended ({proc.returncode}) before the fault"
        assert time.time() < deadline, "the search never reached the point of the fault"
        if (ws / "mlflow.db").exists():
            try:
                trials = trial_runs(ws)
            except sqlite3.OperationalError:  # tables not created yet
                trials = {}
            if ready(trials, ws, experiment):
                return
        time.sleep(0.2)


def restorable(ws: Path, experiment: str) -> dict[str, Path]:
    """Trials that Tune's saved experiment state will restore from a checkpoint (it saves
    running trials as pending): trial id ->
    that checkpoint's folder."""
    return {t.trial_id: Path(t.checkpoint.path) for t in saved_tune_trials(ws, experiment)
            if t.status not in ("TERMINATED", "ERROR") and t.checkpoint is not None}


def mid_way(trials: dict, ws: Path, experiment: str) -> bool:
    """One trial finished, and Tune's saved state holds another one's checkpoint."""
    return any(r["status"] == "FINISHED" for r in trials.values()) and \
        bool(restorable(ws, experiment))


def sigkill(proc: subprocess.Popen) -> list[str]:
    """SIGKILL the driver; returns the names of its cluster's processes that kept running
    (Ray's GCS, raylet and trial workers share their driver's fate; some of Ray's agents take
    longer and are killed here)."""
    family = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    deadline = time.time() + 30
    while (alive := [p for p in family if running(p)]) and time.time() < deadline:
        time.sleep(0.5)
    names = []
    for p in alive:
        with contextlib.suppress(psutil.Error):
            names.append(" ".join(p.cmdline())[:60])
            p.kill()
    return [n for n in names if "Trainable" in n or "raylet" in n or "gcs_server" in n]


def running(p: psutil.Process) -> bool:
    """Still running: neither gone nor a zombie (dead, waiting for a parent to reap it)."""
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def children(ws: Path, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("kind") != "trial"]
    kids = [r for r in runs if r.data.tags.get("kind") == "trial"]
    return client, parents, kids


def histories(ws: Path, experiment: str, key=("batch_size", "epochs")) -> dict:
    """(config values) -> the val_acc of every epoch, as (step, value), from MLflow."""
    client, _, kids = children(ws, experiment)
    return {tuple(r.data.params[k] for k in key):
            [(m.step, m.value) for m in sorted(client.get_metric_history(r.info.run_id,
                                                                          "val_acc"),
                                              key=lambda m: m.step)] for r in kids}


def best_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("best: "))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    ws = tmp_path_factory.mktemp("reference") / "ws"
    out = run("search.grid", *GRID, "--workspace", str(ws))
    return histories(ws, "grid-cnn"), best_line(out.stdout)


def test_a_grid_survives_a_killed_worker_a_killed_driver_and_a_corrupt_checkpoint(
        tmp_path, uninterrupted):
    ws = tmp_path / "ws"
    args = (*GRID, "--workspace", str(ws))

    seen = {}

    def in_a_long_trial(trials, ws, experiment):  # the first 3-epoch trial, 1 or 2 epochs in
        for t, r in trials.items():  # (its worker's pid in its result.json, which Tune may
            d = trial_dir(ws, experiment, t)  # write after the lineage logged the epoch)
            if r["status"] == "RUNNING" and 1 <= r["epoch"] < 3 and d and \
                    "batch_size=32,epochs=3" in d.name and (d / "result.json").exists() and \
                    (lines := (d / "result.json").read_text().splitlines()):
                seen.update(victim=t, results=lines)
                return True
        return False

    # 1. a trial's worker process dies: Tune retries the trial from its checkpoint
    proc = start_until("search.grid", args, ws, "grid-cnn", in_a_long_trial)
    victim, results = seen["victim"], seen["results"]
    worker = psutil.Process(json.loads(results[-1])["pid"])  # as Tune recorded it
    assert worker.cmdline()[0].startswith("ray::") and "Trainable" in worker.cmdline()[0]
    worker.kill()

    # 2. later, the driver is killed while the next trial runs
    def victim_done_and_mid_way(trials, ws, experiment):
        return trials.get(victim, {}).get("status") == "FINISHED" and \
            bool(set(restorable(ws, experiment)) - {victim})

    wait_until(proc, ws, "grid-cnn", victim_done_and_mid_way)
    assert sigkill(proc) == []  # Ray's processes went down with their driver
    before = trial_runs(ws)
    finished = {t for t, r in before.items() if r["status"] == "FINISHED"}
    client, _, kids = children(ws, "grid-cnn")
    kept = {r.data.tags["trial_id"]: client.get_metric_history(r.info.run_id, "val_acc")
            for r in kids if r.data.tags["trial_id"] in finished}
    # 3. while it was down, every checkpoint of the trials to be restored got a flipped byte
    broken = list(restorable(ws, "grid-cnn"))
    assert broken
    for t in broken:
        for path in trial_dir(ws, "grid-cnn", t).glob(f"checkpoint_*/{CHECKPOINT_FILE}"):
            raw = bytearray(path.read_bytes())
            raw[len(raw) // 2] ^= 0xFF
            path.write_bytes(bytes(raw))

    out = run("search.grid", *args, "--resume")
    assert best_line(out.stdout) == uninterrupted[1]
    assert histories(ws, "grid-cnn") == uninterrupted[0]  # the same numbers, epoch by epoch
    client, parents, kids = children(ws, "grid-cnn")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    ids = [r.data.tags["trial_id"] for r in kids]
    assert len(ids) == len(set(ids)) == 4 and set(before) <= set(ids)  # one run a trial
    assert all(r.info.status == "FINISHED" for r in kids)
    for r in kids:
        trial = r.data.tags["trial_id"]
        assert r.data.tags.get("failures") == ("1" if trial == victim else None)
        if trial in finished:  # not trained again: its records are the ones from before
            assert client.get_metric_history(r.info.run_id, "val_acc") == kept[trial]
        if trial in broken:  # the corruption was caught and recorded, not silently used
            assert "SHA-256" in r.data.tags["checkpoint_fault"]
            assert "restarted from scratch" in r.data.tags["checkpoint_fault"]
        else:
            assert "checkpoint_fault" not in r.data.tags
    assert "checkpoint fault" in out.stdout + out.stderr


@pytest.mark.soak  # tests/test_windows.py kills one in its Optuna window; bench/chaos.py
def test_a_killed_weights_search_keeps_its_optuna_study(tmp_path_factory):
    from search.study import study_trials
    from search.workspace import Workspace

    ref = tmp_path_factory.mktemp("weights-reference") / "ws"
    reference = run("search.weights", *WEIGHTS, "--workspace", str(ref))

    def told(ws):
        return [(t.number, t.state.name, t.params, t.value)
                for t in study_trials(Workspace.open(ws), "weights-cnn")]

    ws = tmp_path_factory.mktemp("weights-killed") / "ws"
    args = (*WEIGHTS, "--workspace", str(ws))
    proc = start_until("search.weights", args, ws, "weights-cnn", mid_way)
    assert sigkill(proc) == []
    before = [t for t in told(ws) if t[1] == "COMPLETE"]
    assert before
    out = run("search.weights", *args, "--resume")
    after = told(ws)
    assert after[:len(before)] == before  # what the study held is intact
    assert after == told(ref)  # and it ends as the uninterrupted study did
    assert best_line(out.stdout) == best_line(reference.stdout)
    _, parents, kids = children(ws, "weights-cnn")
    assert len(parents) == 1 and len(kids) == 3
    assert len({r.data.tags["trial_id"] for r in kids}) == 3
