"""--cpus-per-trial / --gpus-per-trial auto: sized to the cluster, resolved in the trial's
worker, recorded on the parent run; and bench/gpu_check.sh rehearsed on the CPU."""

from __future__ import annotations

import subprocess

import pytest
from conftest import ROOT

from search import cluster
from search.grid import GridOptions
from search.options import AUTO, base_config, check_resources, resource_arg
from trainables.engine import TrainConfig
from trainables.trainable import on_this_worker


@pytest.mark.parametrize("have, given, expected", [
    ({"CPU": 2.0}, (AUTO, AUTO), (1.0, 0.0)),  # this machine: a CPU each, side by side
    ({"CPU": 16.0, "GPU": 1.0}, (AUTO, AUTO), (4.0, 0.25)),  # 4 trials a GPU, 4 CPUs each
    ({"CPU": 8.0, "GPU": 2.0}, (AUTO, AUTO), (1.0, 0.25)),  # 8 packed trials on 8 CPUs
    ({"CPU": 64.0, "GPU": 1.0}, (AUTO, AUTO), (4.0, 0.25)),  # at most 4 CPUs a GPU trial
    ({"CPU": 16.0, "GPU": 1.0}, (AUTO, 0.5), (4.0, 0.5)),
    ({"CPU": 16.0, "GPU": 1.0}, (2.0, AUTO), (2.0, 0.25)),
    ({"CPU": 16.0, "GPU": 1.0}, (1.0, 0.0), (1.0, 0.0)),  # numbers are kept
])
def test_auto_resources_are_sized_to_the_cluster(have, given, expected, monkeypatch):
    monkeypatch.setattr(cluster.ray, "cluster_resources", lambda: have)
    options = GridOptions(cpus_per_trial=given[0], gpus_per_trial=given[1])
    assert cluster.resources(options) == expected


def test_auto_is_the_default_and_reaches_the_trial_unresolved():
    assert resource_arg("auto") == AUTO and resource_arg("0.5") == 0.5
    options = GridOptions()
    assert (options.cpus_per_trial, options.gpus_per_trial) == (AUTO, AUTO)
    check_resources(options)  # nothing to refuse
    cfg = base_config(options, "cnn", None, 1)
    assert cfg.device == "auto" and cfg.num_threads is None  # the worker decides
    cfg = base_config(GridOptions(cpus_per_trial=2.0, gpus_per_trial=0.0), "cnn", None, 1)
    assert cfg.device == "cpu" and cfg.num_threads == 2
    # outside Ray the engine resolves them from the machine, as before
    assert on_this_worker(TrainConfig(device="auto")) == TrainConfig(device="auto")


@pytest.mark.slow  # its two packed processes and the seed-protocol run: 40 s alone
def test_the_gpu_check_rehearses_on_the_cpu():
    out = subprocess.run([str(ROOT / "bench" / "gpu_check.sh"), "--dry-run"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    checks = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in table[1:]}
    assert checks["engine: cnn, the same seed twice"] == "identical"
    assert checks["engine: cnn, resumed from a checkpoint"] == "identical"
    assert checks["engine: cnn, analysis inference = evaluate()"] == "ok"
    assert any(k.startswith("speed: speed-up vs fp32 eager") for k in checks)
    assert any(k.startswith("packing: 2 process(es)") for k in checks)
    assert any(k.startswith("seed protocol:") for k in checks)
