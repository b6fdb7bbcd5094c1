"""Bad input, everywhere: every row of docs/bad-input.md is a test here (or names the test
that already covers it). Each bad input must give one line on stderr naming the problem and
the fix, exit code 2, and leave what was recorded before as it was.

A tiny real search (one CNN trial on 180 images) runs once for the module, and a pipeline's
state file is added beside it; the bad input is then given against that workspace, and
everything it holds is compared before and after (conftest.py ``untouched``: every folder,
every file's SHA-256, every row of every MLflow table; nothing added, changed or removed).
Read-only and full disks are real tmpfs mounts where this user may mount (root), else those
tests are skipped; the full disk is also simulated by a patched write.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import (
    ROOT,
    environ_kept,
    exit_code,
    free_port,
    untouched,
    workspace_snapshot,
    write_idx_set,
)

from analysis import predict, report
from search import claims, grid, options, sizing, weights
from trainables import data, train
from tunefuse import pipeline

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing answers there


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """500 training images (uneven classes) and 100 test images, gzipped IDX."""
    return write_idx_set(tmp_path_factory.mktemp("data") / "small")


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory) -> Path:
    """The same kind of set with a truncated training-image file."""
    d = write_idx_set(tmp_path_factory.mktemp("data") / "corrupt", gz=False)
    images = d / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    return d


@pytest.fixture(scope="module")
def searched(small, tmp_path_factory) -> Path:
    """A workspace holding one finished grid search (experiment grid-cnn, one trial: MLflow
    runs, its state file, Tune's experiment and checkpoint, a warm-up) and the state file of
    an earlier pipeline."""
    import ray

    ws = tmp_path_factory.mktemp("searched") / "ws"
    # the search joins this cluster (one per process): no dashboard to start, seconds saved;
    # the cluster, and what the search sets in os.environ, go when it is done
    with environ_kept():
        os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR",
                 log_to_driver=False)
        try:
            code = grid.main(["--model", "cnn", "--profile", "smoke", "--data-dir", str(small),
                              "--train-size", "200", "--batch-sizes", "64", "--epochs", "1",
                              "--warmup-epochs", "1", "--scheduler", "none", "--workspace",
                              str(ws), "--num-cpus", "2", "--dashboard-port", str(free_port())])
        finally:
            ray.shutdown()
    assert code == 0
    (ws / "pipelines").mkdir()
    (ws / "pipelines" / "earlier.json").write_text(json.dumps({
        "name": "earlier", "profile": "smoke", "created": 1.0, "argv": ["--name", "earlier"],
        "stages": [{"name": "grid-cnn", "kind": "grid", "model": "cnn", "status": "done",
                    "seconds": 9.0}]}, indent=2))
    held = workspace_snapshot(ws)["files"]
    assert any(k.startswith("ray_results/grid-cnn/") for k in held)  # Tune's state is part
    assert "experiments/grid-cnn.json" in held and any(k.endswith(".pt") for k in held)
    return ws


@pytest.fixture
def searched_copy(searched, tmp_path) -> Path:
    """The test's own copy of ``searched``, for commands known to write where they should not
    (an expected failure must not leave its file for the tests after it)."""
    ws = tmp_path / "ws"
    shutil.copytree(searched, ws)
    return ws


def one_line(capsys, *fragments: str) -> str:
    """stderr as a terminal shows it (a progress bar redraws, then clears, its own line) is one
    line holding every fragment."""
    err = capsys.readouterr().err
    lines = [ln.rsplit("\r", 1)[-1] for ln in err.split("\n")]
    lines = [ln for ln in lines if ln.strip()]
    assert len(lines) == 1, err
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    """A real tmpfs at ``path`` (``ro`` or a tiny ``size=``): chmod does not stop root."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; a chmod'ed folder would not stop root")
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# --- search.grid ------------------------------------------------------------------------------

def grid_cases(small: Path, corrupt: Path) -> list:
    return [
        (["--profile", "fast"], "invalid choice: 'fast'"),
        (["--batch-sizes", "0"], "--batch-sizes: values must be at least 1"),
        (["--model", "resnet18", "--width", "0"], "--width: must be at least 1"),
        (["--warmup-epochs", "-1"], "--warmup-epochs: must be at least 0"),
        (["--grace-period", "0"], "--grace-period: must be at least 1"),
        (["--reduction-factor", "1"], "--reduction-factor: must be above 1"),
        (["--asha-margin", "-0.01"], "--asha-margin: must be 0 or more"),
        (["--cpus-per-trial", "-1"], "--cpus-per-trial must be above 0"),
        (["--cpus-per-trial", "4"], "more than the 2 CPUs of the local cluster"),
        (["--gpus-per-trial", "1.5"], "whole GPUs"),
        (["--num-cpus", "0"], "--num-cpus must be at least 1"),
        (["--max-concurrent", "-1"], "--max-concurrent must be 0"),
        (["--address", f"127.0.0.1:{free_port()}"], "no Ray cluster answers at 127.0.0.1:"),
        (["--address", "auto", "--no-dashboard"], "--no-dashboard is for the local cluster"),
        (["--address", "ray://127.0.0.1:10001"], "Ray Client (ray://) is not supported for "
                                                 "searches; submit the command as a Ray Job"),
        (["--seed", "-1"], "--seed: must be 0 or more"),
        (["--train-size", "501"], "larger than the 500 labelled training images"),
        (["--train-size", "50"], "train size 50 is too small"),
        (["--data-dir", str(small.parent / "nothere")], "nothere lacks train-images"),
        (["--data-dir", str(corrupt)], "train-images-idx3-ubyte: is truncated"),
        (["--data-dir", str(small / "t10k-labels-idx1-ubyte.gz")], "is a file, not a folder"),
        ([], "experiment 'grid-cnn' already exists"),
        (["--resume", "--train-size", "300"], "was run on data"),
        (["--name", "new", "--tracking-uri", UNREACHABLE], "does not answer"),
    ]


GRID_IDS = ["unknown profile", "batch size 0", "width 0", "warm-up -1", "grace period 0",
            "reduction factor 1", "asha margin -0.01", "cpus per trial -1",
            "cpus per trial above the cluster",
            "gpus per trial 1.5", "num cpus 0", "max concurrent -1", "address not answering",
            "no dashboard with address", "ray client address",
            "seed -1", "train size above the data", "train size too small", "missing data",
            "corrupt data", "data dir is a file", "existing experiment without --resume",
            "--resume on other data", "unreachable tracking URI"]


@pytest.mark.parametrize("case", range(len(GRID_IDS)), ids=GRID_IDS)
def test_grid(case, small, corrupt, searched, capsys):
    args, fragment = grid_cases(small, corrupt)[case]
    with untouched(searched):
        code = exit_code(grid.main, "--model", "cnn", "--profile", "smoke", "--data-dir",
                         str(small), "--train-size", "200", "--workspace", str(searched),
                         "--num-cpus", "2", "--dashboard-port", "0", *args)
    assert code == 2
    one_line(capsys, fragment)


@pytest.mark.parametrize("address, fragment", [
    ("http://127.0.0.1:8265", "$RAY_ADDRESS is http://127.0.0.1:8265, the address of a Ray "
                              "cluster's Jobs API, not of the cluster: submit this command as "
                              "a job"),
    ("127.0.0.1:1", "no Ray cluster answers at 127.0.0.1:1 (Connection refused); start it "
                    "(`ray start --head`) or fix $RAY_ADDRESS"),
])
def test_ray_address_names_the_cluster_to_join(address, fragment, small, searched, capsys,
                                               monkeypatch):
    """$RAY_ADDRESS (what Ray Jobs sets for a job's driver) is the cluster a command joins
    without --address; the Jobs API's http:// address is not one, and says what to do."""
    monkeypatch.setenv("RAY_ADDRESS", address)
    with untouched(searched):
        assert exit_code(grid.main, "--model", "cnn", "--profile", "smoke", "--data-dir",
                         str(small), "--workspace", str(searched)) == 2
    one_line(capsys, fragment)


@NO_CUDA
@pytest.mark.parametrize("command", [grid, weights, pipeline])
def test_gpus_per_trial_on_a_machine_without_a_gpu(command, small, searched, capsys):
    model = [] if command is pipeline else ["--model", "cnn"]
    with untouched(searched):  # for the pipeline too: no pipelines/smoke.json
        assert exit_code(command.main, *model, "--profile", "smoke", "--data-dir", str(small),
                         "--workspace", str(searched), "--gpus-per-trial", "1") == 2
    one_line(capsys, "--gpus-per-trial 1 needs a GPU", "--address")


def test_a_cluster_without_the_resources_a_trial_asks_for(monkeypatch):
    """--address joined a cluster: checked against what Ray says it has."""
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})
    args = grid.parser().parse_args(["--model", "cnn", "--gpus-per-trial", "0.5"])
    with pytest.raises(options.UsageError, match=r"--gpus-per-trial 0\.5 is more than the 0 GPUs"):
        sizing.check_cluster(args)
    args = grid.parser().parse_args(["--model", "cnn", "--cpus-per-trial", "16"])
    with pytest.raises(options.UsageError, match="--cpus-per-trial 16 is more than the 8 CPUs"):
        sizing.check_cluster(args)


# --- what another search holds (search/claims.py) ---------------------------------------------

def held_cases(searched: Path) -> list:
    ws, db = str(searched), f"sqlite:///{searched / 'mlflow.db'}"
    base = ["--profile", "smoke", "--workspace", ws]
    grid_cmd = [grid, "--model", "cnn", *base]
    return [
        (searched / "experiments" / "grid-cnn.lock", [*grid_cmd, "--resume"],
         f"experiment 'grid-cnn' in {ws} is in use by pid 1 on host; wait for that search to "
         "end, or give this one its own --name or --workspace"),
        (searched / "mlflow.db.lock", [*grid_cmd, "--name", "other"],
         f"the sqlite MLflow store {searched / 'mlflow.db'} is in use by pid 1 on host; "
         "sqlite serves one search at a time: give this search its own --workspace, or record "
         "both in an MLflow server (--tracking-uri http://HOST:5000, docs/cluster.md)"),
        (searched / "experiments" / "smoke.pipeline.lock", [pipeline, *base],
         f"pipeline 'smoke' in {ws} is in use by pid 1 on host; wait for it to end, or give "
         "this one its own --name or --workspace"),
        (None, [grid, "--model", "cnn", "--profile", "smoke", "--workspace",
                str(searched.parent / "elsewhere"), "--tracking-uri", db],
         f"MLflow experiment 'grid-cnn' in {db} holds the searches of workspace {ws}; a "
         f"search of {searched.parent / 'elsewhere'} under that name would be mixed with them "
         "in reports: give it its own --name"),
    ]


HELD_IDS = ["experiment run by another process", "sqlite store in use by another search",
            "pipeline run by another process", "experiment of another workspace in the store"]


@pytest.mark.parametrize("case", range(len(HELD_IDS)), ids=HELD_IDS)
def test_what_another_search_holds(case, small, searched, capsys):
    """Two searches at once where they would share what one search holds alone: the second is
    refused before it records anything (the lock held here as another process holds it: an
    flock of another open file)."""
    lock, (command, *args), fragment = held_cases(searched)[case]
    with contextlib.ExitStack() as stack:
        if lock is not None:
            stack.enter_context(claims.hold(lock, "?", "?"))
            lock.write_text("pid 1 on host\n")  # what the holder wrote
        with untouched(searched):
            code = exit_code(command.main, *args, "--data-dir", str(small), "--train-size",
                             "200", "--num-cpus", "2", "--no-dashboard")
    assert code == 2
    one_line(capsys, fragment)
    assert lock is None or not lock.exists()  # gone with its holder


# --- search.weights ---------------------------------------------------------------------------

def weights_cases(small: Path) -> list:
    return [
        (["--model", "vgg"], "invalid choice: 'vgg'"),
        (["--epochs", "1", "--warmup-epochs", "2"], "fewer than the 2 warm-up epochs"),
        (["--batch-size", "0"], "--batch-size: must be at least 1"),
        (["--num-samples", "0"], "--num-samples: must be at least 2"),
        (["--low", "-1"], "need 0 < --low < --high"),
        (["--low", "nan"], "need 0 < --low < --high"),
        (["--high", "inf"], "both finite"),
        (["--cpus-per-trial", "0"], "--cpus-per-trial must be above 0"),
        (["--train-size", "501"], "larger than the 500 labelled training images"),
        (["--data-dir", str(small.parent / "nothere")], "nothere lacks train-images"),
        (["--tracking-uri", UNREACHABLE], "does not answer"),
    ]


WEIGHTS_IDS = ["unknown model", "epochs below warm-up", "batch size 0", "num samples 0",
               "negative low", "NaN low", "infinite high", "cpus per trial 0",
               "train size above the data", "missing data", "unreachable tracking URI"]


@pytest.mark.parametrize("case", [
    pytest.param(i, id=name) for i, name in enumerate(WEIGHTS_IDS)])
def test_weights(case, small, searched_copy, capsys):
    args, fragment = weights_cases(small)[case]
    with untouched(searched_copy):
        code = exit_code(weights.main, "--model", "cnn", "--profile", "smoke", "--data-dir",
                         str(small), "--train-size", "200", "--workspace", str(searched_copy),
                         "--num-cpus", "2", "--dashboard-port", "0", *args)
        assert code == 2  # checked before the workspace: an expected failure is only that
        one_line(capsys, fragment)


# --- search.pipeline --------------------------------------------------------------------------

def pipeline_cases(small: Path) -> list:
    return [
        (["--profile", "fast"], "invalid choice: 'fast'"),
        (["--per-model-cap", "0"], "--per-model-cap: must be at least 1"),
        (["--cpus-per-trial", "-2"], "--cpus-per-trial must be above 0"),
        (["--train-size", "100"], "batch size 128 is larger than the 90 training images"),
        (["--data-dir", str(small.parent / "nothere")], "nothere lacks train-images"),
        (["--tracking-uri", UNREACHABLE], "does not answer"),
    ]


PIPELINE_IDS = ["unknown profile", "per-model cap 0", "cpus per trial -2",
                "train size below the profile's batch", "missing data",
                "unreachable tracking URI"]


@pytest.mark.parametrize("case", range(len(PIPELINE_IDS)), ids=PIPELINE_IDS)
def test_pipeline(case, small, searched, capsys):
    args, fragment = pipeline_cases(small)[case]
    with untouched(searched):  # no pipelines/smoke.json: a pipeline only --resume continues
        code = exit_code(pipeline.main, "--profile", "smoke", "--data-dir", str(small),
                         "--train-size", "200", "--workspace", str(searched), *args)
    assert code == 2
    one_line(capsys, fragment)


# --- a workspace on a read-only disk ----------------------------------------------------------

@pytest.mark.parametrize("command", ["grid", "weights", "pipeline", "report"])
def test_read_only_workspace(command, small, tmp_path, capsys):
    module = {"grid": grid, "weights": weights, "pipeline": pipeline, "report": report}[command]
    args = {"grid": ["--model", "cnn", "--profile", "smoke"],
            "weights": ["--model", "cnn", "--profile", "smoke"],
            "pipeline": ["--profile", "smoke"], "report": []}[command]
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        code = exit_code(module.main, *args, "--data-dir", str(small), "--train-size", "200",
                         "--workspace", str(ro / "ws"))
    assert code == 2
    one_line(capsys, f"workspace {ro / 'ws'} is not writable (Read-only file system)",
             "pass --workspace with a writable folder")


# --- trainables.train -------------------------------------------------------------------------

def train_cases(small: Path, corrupt: Path) -> list:
    ones = ["1"] * 9
    return [
        (["--class-weights", ",".join(["nan", *ones])], "finite and non-negative"),
        (["--class-weights", ",".join(["inf", *ones])], "finite and non-negative"),
        (["--class-weights", ",".join(["0"] * 10)], "must not all be zero"),
        (["--warmup-epochs", "-1"], "--warmup-epochs: must be 0 or more"),
        (["--batch-size", "5000"], "larger than the 180 training images; lower --batch-size"),
        (["--epochs", "2", "--warmup-epochs", "3"], "at least the warm-up epochs"),
        (["--train-size", "501"], "larger than the 500 labelled training images"),
        (["--data-dir", str(small.parent / "nothere")], "nothere lacks train-images"),
        (["--data-dir", str(corrupt)], "train-images-idx3-ubyte: is truncated"),
        (["--seed", "-3"], "--seed: must be 0 or more"),
    ]


TRAIN_IDS = ["NaN class weight", "infinite class weight", "all-zero class weights",
             "warm-up -1", "batch size above the training set", "epochs below warm-up",
             "train size above the data", "missing data", "corrupt data", "seed -3"]


@pytest.mark.parametrize("case", range(len(TRAIN_IDS)), ids=TRAIN_IDS)
def test_train(case, small, corrupt, tmp_path, capsys):
    args, fragment = train_cases(small, corrupt)[case]
    code = exit_code(train.main, "--model", "cnn", "--epochs", "1", "--warmup-epochs", "1",
                     "--data-dir", str(small), "--train-size", "200", "--out",
                     str(tmp_path / "run"), *args)
    assert code == 2
    one_line(capsys, fragment)
    assert not (tmp_path / "run").exists()  # refused before anything was written


@NO_CUDA
@pytest.mark.parametrize("command", ["train", "report"])
def test_cuda_on_a_machine_without_a_gpu(command, small, searched, tmp_path, capsys):
    with untouched(searched):
        if command == "train":
            code = exit_code(train.main, "--data-dir", str(small), "--train-size", "200",
                             "--device", "cuda", "--out", str(tmp_path / "run"))
        else:
            code = exit_code(report.main, "--workspace", str(searched), "--data-dir",
                             str(small), "--no-register", "--device", "cuda")
    assert code == 2
    one_line(capsys, "device cuda requested but CUDA is not available; use --device cpu")
    assert not (tmp_path / "run").exists()


TRAIN = ["--model", "cnn", "--epochs", "1", "--warmup-epochs", "1", "--augment", "none",
         "--threads", "1", "--train-size", "200"]


def test_train_out_on_a_read_only_disk_fails_before_training(small, tmp_path, capsys):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        code = exit_code(train.main, *TRAIN, "--data-dir", str(small), "--out", str(ro / "run"))
    assert code == 2
    line = one_line(capsys, f"--out {ro / 'run'} is not writable (Read-only file system)")
    assert "epoch" not in capsys.readouterr().out and "--out" in line


@pytest.fixture
def previous_run(small, tmp_path, capsys) -> tuple[Path, dict]:
    out = tmp_path / "run"
    assert exit_code(train.main, *TRAIN, "--data-dir", str(small), "--out", str(out)) == 0
    capsys.readouterr()
    return out, {p.name: p.read_bytes() for p in out.iterdir()}


def test_train_checkpoint_write_on_a_full_disk_keeps_the_previous_run(previous_run, small,
                                                                      monkeypatch, capsys):
    """torch.save writes part of the checkpoint, then the disk is full."""
    out, before = previous_run

    def partial_then_full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        no_space()

    monkeypatch.setattr(torch, "save", partial_then_full)
    code = exit_code(train.main, *TRAIN, "--seed", "1", "--data-dir", str(small), "--out",
                     str(out))
    assert code == 2
    one_line(capsys, f"cannot write the results to {out} (the disk is full)",
             "free space on that disk or pass --out on another one")
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before  # checkpoint, digest and metrics as they were; no .tmp left


def test_train_on_a_really_full_disk(small, tmp_path, capsys):
    """A 64 KiB tmpfs: the 4.9 MB CNN checkpoint cannot fit; what was there stays."""
    with tmpfs(tmp_path / "full", "size=64k") as full:
        out = full / "run"
        out.mkdir()
        (out / "metrics.json").write_text('{"previous": true}')
        code = exit_code(train.main, *TRAIN, "--data-dir", str(small), "--out", str(out))
        names = sorted(p.name for p in out.iterdir())
        previous = (out / "metrics.json").read_text()
    assert code == 2
    one_line(capsys, "(the disk is full)", "--out")
    assert previous == '{"previous": true}'
    assert names == ["metrics.json"], names


# --- analysis.report --------------------------------------------------------------------------

def report_cases(small: Path, other: Path) -> list:
    return [
        (["--top-k", "0"], "--top-k must be at least 1"),
        (["--per-model-cap", "0"], "--per-model-cap must be at least 1"),
        (["--experiments", "nope"], "no experiment named 'nope'"),
        (["--method", "weighted"], "--method weighted needs --weights"),
        (["--method", "weighted", "--weights", "1,2"], "one per member"),
        (["--method", "weighted", "--weights", "-1"], "finite, non-negative"),
        (["--method", "weighted", "--weights", "nan"], "finite, non-negative"),
        (["--weights", "1"], "only for --method weighted"),
        (["--bootstrap", "0"], "--bootstrap: must be at least 1"),
        (["--data-dir", str(small.parent / "nothere")], "nothere lacks train-images"),
        (["--data-dir", str(other)], "pass the --data-dir they were trained on"),
        (["--tracking-uri", UNREACHABLE], "does not answer"),
    ]


REPORT_IDS = ["top-k 0", "per-model cap 0", "experiment that does not exist",
              "weighted without weights", "weights of wrong length", "negative weight",
              "NaN weight", "weights without weighted", "bootstrap 0", "missing data",
              "other data than the members'", "unreachable tracking URI"]


@pytest.mark.parametrize("case", range(len(REPORT_IDS)), ids=REPORT_IDS)
def test_report(case, small, searched, tmp_path, capsys):
    other = write_idx_set(tmp_path / "other", seed=1)
    args, fragment = report_cases(small, other)[case]
    with untouched(searched):  # no report folder, no fusion run
        code = exit_code(report.main, "--workspace", str(searched), "--data-dir", str(small),
                         "--no-register", "--name", "r", *args)
    assert code == 2
    one_line(capsys, fragment)


@pytest.mark.parametrize("how", ["patched", "tmpfs"])
def test_report_on_a_full_disk_keeps_the_earlier_report(how, small, searched, monkeypatch,
                                                         capsys):
    reports = searched / "reports"
    with contextlib.ExitStack() as stack:
        if how == "tmpfs":  # figures and pages do not fit in 64 KiB
            stack.enter_context(tmpfs(reports, "size=64k"))
        else:  # the page is half written, then the disk is full
            real = Path.write_text

            def full_at_html(self, text, *args, **kwargs):
                if self.name == "report.html":
                    real(self, text[:100])
                    no_space()
                return real(self, text, *args, **kwargs)

            monkeypatch.setattr(Path, "write_text", full_at_html)
        earlier = reports / "r"
        earlier.mkdir(parents=True, exist_ok=True)
        (earlier / "summary.json").write_text('{"earlier": true}')
        before = workspace_snapshot(searched)
        code = exit_code(report.main, "--workspace", str(searched), "--data-dir", str(small),
                         "--no-register", "--name", "r", "--bootstrap", "10")
        assert code == 2
        one_line(capsys, f"cannot write the report in {searched} (the disk is full)",
                 "free space")
        assert sorted(p.name for p in reports.iterdir()) == ["r"]  # no half report
        assert [p.name for p in earlier.iterdir()] == ["summary.json"]
        assert (earlier / "summary.json").read_text() == '{"earlier": true}'
        # no fusion run recorded for a report that never came (the probabilities it cached
        # on the way may stay: nothing promises otherwise)
        assert workspace_snapshot(searched)["mlflow"] == before["mlflow"]
        if how == "patched":
            monkeypatch.undo()
            (earlier / "summary.json").unlink()
            earlier.rmdir()


# --- analysis.predict -------------------------------------------------------------------------

@pytest.fixture
def images(tmp_path) -> Path:
    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((3, 28, 28), np.uint8))
    return tmp_path / "x.npy"


def test_predict_a_run_that_does_not_exist(searched, images, tmp_path, mlflow_uri_kept,
                                           capsys):
    code = predict.main(["--model-uri", "runs:/0123456789abcdef/ensemble", "--tracking-uri",
                         f"sqlite:///{searched / 'mlflow.db'}", "--input", str(images),
                         "--output", str(tmp_path / "p.csv")])
    assert code == 2
    one_line(capsys, "runs:/0123456789abcdef/ensemble: cannot load the model",
             "Run with id=0123456789abcdef not found")
    assert not (tmp_path / "p.csv").exists()


def test_predict_a_registry_uri_without_a_tracking_store(images, tmp_path, monkeypatch,
                                                         capsys):
    """MLflow would create ./mlflow.db and then not find the model in it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code = predict.main(["--model-uri", "models:/tunefuse-ensemble/1", "--input", str(images),
                         "--output", "p.csv"])
    assert code == 2
    one_line(capsys, "needs its tracking store; pass --tracking-uri")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


def test_predict_a_mistyped_sqlite_store(images, tmp_path, capsys):
    """MLflow would create an empty store at the typo and then not find the model in it."""
    typo = tmp_path / "mlfow.db"
    code = predict.main(["--model-uri", "models:/tunefuse-ensemble/1", "--tracking-uri",
                         f"sqlite:///{typo}", "--input", str(images), "--output",
                         str(tmp_path / "p.csv")])
    assert code == 2
    one_line(capsys, f"no MLflow store at {typo}; check --tracking-uri")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


def test_predict_against_an_unreachable_tracking_server_answers_at_once(images, tmp_path):
    """From the shell: MLflow's default retries took 4 minutes here."""
    out = subprocess.run([sys.executable, "-m", "analysis.predict", "--model-uri",
                          "models:/tunefuse-ensemble/1", "--tracking-uri", UNREACHABLE,
                          "--input", str(images), "--output", str(tmp_path / "p.csv")],
                         cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "models:/tunefuse-ensemble/1: cannot load the model" in lines[0]
    assert "check --model-uri and --tracking-uri" in lines[0]


def a_frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"label": [3] * n, **{f"p{c}": [0.1] * n for c in range(10)}})


def test_predict_output_on_a_full_disk_keeps_the_previous_file(images, tmp_path, monkeypatch,
                                                               capsys):
    previous = tmp_path / "p.csv"
    previous.write_text("id,label\n0,7\n")
    monkeypatch.setattr(predict, "predict_frame", lambda uri, x, t=None: a_frame(len(x)))
    real = pd.DataFrame.to_csv

    def half_then_full(self, path, *args, **kwargs):
        Path(path).write_text("id,la")
        no_space()

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_full)
    code = predict.main(["--model-uri", "models:/m/1", "--input", str(images), "--output",
                         str(previous)])
    monkeypatch.setattr(pd.DataFrame, "to_csv", real)
    assert code == 2
    one_line(capsys, f"{previous}: cannot write the predictions (the disk is full)",
             "free space or choose a writable --output")
    assert previous.read_text() == "id,label\n0,7\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv", "x.npy"]


def test_predict_output_on_a_read_only_disk(images, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(predict, "predict_frame", lambda uri, x, t=None: a_frame(len(x)))
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        code = predict.main(["--model-uri", "models:/m/1", "--input", str(images), "--output",
                             str(ro / "p.csv")])
    assert code == 2
    one_line(capsys, "cannot write the predictions (Read-only file system)")


# --- trainables.data --------------------------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    (["--seed", "-1"], "--seed: must be 0 or more"),
    (["--seed", "x"], "--seed: expected a whole number"),
], ids=["seed -1", "seed not a number"])
def test_data_cli(args, fragment, small, capsys):
    assert exit_code(data.main, "--data-dir", str(small), "--train-size", "200", *args) == 2
    one_line(capsys, fragment)


def test_data_dir_that_is_a_file(small, capsys):
    path = small / "train-images-idx3-ubyte.gz"
    assert exit_code(data.main, "--data-dir", str(path)) == 2
    one_line(capsys, f"{path} is a file, not a folder; point --data-dir at the folder")


def test_docs_table_names_every_test_here():
    """docs/bad-input.md names the test of each of its rows; every name must exist."""
    import re

    text = (ROOT / "docs" / "bad-input.md").read_text()
    named = set(re.findall(r"`(tests/test_\w+\.py)::(\w+)", text))
    assert named
    for path, name in named:
        assert f"def {name}(" in (ROOT / path).read_text(), (path, name)
    here = set(re.findall(r"^def (test_\w+)\(", Path(__file__).read_text(), re.M))
    here.discard("test_docs_table_names_every_test_here")
    assert here <= {n for p, n in named if p == "tests/test_bad_input.py"}, \
        here - {n for _, n in named}
