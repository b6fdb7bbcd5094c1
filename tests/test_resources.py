"""--cpus-per-trial / --gpus-per-trial auto: sized to the cluster, resolved in the trial's
worker, recorded on the parent run; GPUs that Ray counts but PyTorch there cannot use; and
bench/gpu_check.sh rehearsed on the CPU."""

from __future__ import annotations

import os
import re
import subprocess
from unittest import mock

import pytest
from conftest import ROOT

from search import sizing
from search.grid import GridOptions
from search.options import AUTO, UsageError, base_config, check_resources, resource_arg
from trainables.config import TrainConfig
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
    monkeypatch.setattr(sizing.ray, "cluster_resources", lambda: have)
    options = GridOptions(cpus_per_trial=given[0], gpus_per_trial=given[1])
    cuda = sizing.CudaCheck(lambda: sizing.CudaAnswer(True, "2.14.1+cu130", "13.0"))
    assert sizing.resources(options, cuda) == expected


CPU_ONLY = sizing.CudaAnswer(False, "2.14.1+cpu", None, "a CPU-only build")


def asked(answer: sizing.CudaAnswer) -> tuple[sizing.CudaCheck, list]:
    """A CUDA check that answers ``answer``, and the list of its questions."""
    questions: list = []
    return sizing.CudaCheck(lambda: questions.append(1) or answer), questions


@pytest.mark.parametrize("given", [(AUTO, AUTO), (AUTO, 0.0), (1.0, 0.0), (AUTO, 0.5)])
def test_the_cluster_is_asked_about_cuda_only_for_gpu_trials(given, monkeypatch, capsys):
    monkeypatch.setattr(sizing.ray, "cluster_resources", lambda: {"CPU": 8.0})
    options = GridOptions(cpus_per_trial=given[0], gpus_per_trial=given[1])
    cuda, questions = asked(CPU_ONLY)
    if given[1] == 0.5:  # no GPU at all: refused as before, without a question
        with pytest.raises(UsageError, match=r"0\.5 is more than the 0 GPUs"):
            sizing.check_cluster(options, cuda)
    else:
        sizing.check_cluster(options, cuda)
        assert sizing.resources(options, cuda) == (1.0, 0.0)
    monkeypatch.setattr(sizing.ray, "cluster_resources", lambda: {"CPU": 8.0, "GPU": 1.0})
    sizing.check_cluster(GridOptions(gpus_per_trial=0.0), cuda)  # 0 asks for no GPU
    assert questions == [] and capsys.readouterr().err == ""


def test_gpus_without_cuda_are_asked_about_once_and_not_given(monkeypatch, capsys):
    monkeypatch.setattr(sizing.ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 2.0})
    cuda, questions = asked(CPU_ONLY)
    assert sizing.check_cluster(GridOptions(), cuda) is cuda
    assert sizing.resources(GridOptions(), cuda) == (1.0, 0.0)  # a CPU each, side by side
    assert questions == [1]  # once per driver: resources() reuses check_cluster's answer
    note = capsys.readouterr().err
    assert note == ("the Ray cluster counts 2 GPUs but PyTorch there cannot use CUDA (torch "
                    "2.14.1+cpu, a CPU-only build); trials run on the CPUs (install a CUDA "
                    "build of PyTorch, or pass --gpus-per-trial 0 to silence this)\n")
    with pytest.raises(UsageError) as e:
        sizing.check_cluster(GridOptions(gpus_per_trial=1.0), cuda)
    assert str(e.value) == ("--gpus-per-trial 1: the Ray cluster counts 2 GPUs but PyTorch "
                            "there cannot use CUDA (torch 2.14.1+cpu, a CPU-only build); "
                            "install a CUDA build of PyTorch on the GPU nodes or pass "
                            "--gpus-per-trial 0")
    # no answer in time (a busy cluster): GPUs as Ray counts them, as before, said once
    late = sizing.CudaCheck(lambda: sizing.CudaAnswer(None, reason="no answer in 120 s"))
    sizing.check_cluster(GridOptions(gpus_per_trial=0.5), late)
    assert sizing.resources(GridOptions(), late) == (2.0, 0.25)  # 16 CPUs, 8 trials
    assert "did not say whether PyTorch there can use CUDA (no answer in 120 s)" in \
        capsys.readouterr().err


@pytest.fixture
def fake_gpu_cluster():
    """A local Ray cluster that counts a GPU which PyTorch cannot use: none here, and on a
    machine with GPUs CUDA_VISIBLE_DEVICES=-1 hides them from the workers (Ray hands its one
    id, -1, to a task that takes the GPU). Shut down after the test: the tests below run
    outside Ray."""
    import ray

    with mock.patch.dict(os.environ, {"CUDA_VISIBLE_DEVICES": "-1",
                                      "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}):
        ray.init(address="local", num_cpus=1, num_gpus=1, include_dashboard=False,
                 logging_level="ERROR", log_to_driver=False)
        try:
            yield ray
        finally:
            ray.shutdown()


def test_a_cluster_whose_gpu_pytorch_cannot_use(fake_gpu_cluster, capsys):
    """Asked of the cluster, in a task on its GPU, not of the driver's own torch: auto falls
    back to the CPUs with a note, a number is refused."""
    import torch

    cuda = sizing.check_cluster(GridOptions())
    answer = cuda.answer()
    assert answer.usable is False and answer.torch == torch.__version__, answer
    assert answer.cuda == torch.version.cuda and answer.reason, answer
    assert sizing.resources(GridOptions(), cuda) == (1.0, 0.0)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "the Ray cluster counts 1 GPU but PyTorch there cannot use CUDA (torch "
        f"{torch.__version__}, {answer.reason}); trials run on the CPUs"), err
    with pytest.raises(UsageError) as e:
        sizing.check_cluster(GridOptions(gpus_per_trial=0.25), cuda)
    message = str(e.value)
    assert "\n" not in message and message.startswith("--gpus-per-trial 0.25: the Ray cluster "
                                                      "counts 1 GPU but PyTorch there cannot")
    assert message.endswith(f"{answer.fix()} on the GPU nodes or pass --gpus-per-trial 0")
    want = (f"install an NVIDIA driver that supports CUDA {torch.version.cuda}"
            if torch.version.cuda else "install a CUDA build of PyTorch")
    assert answer.fix() == want  # a CUDA build (this venv's) lacks a driver, not a build


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


def gpu_check(tmp_path, *args) -> tuple[int, str, list]:
    """bench/gpu_check.sh --dry-run with ``args``, $OUT in tmp_path: (exit code, stdout, the
    table's rows as (check, result, detail))."""
    out = subprocess.run([str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OUT": str(tmp_path)})
    rows = [line.split("|") for line in out.stdout.splitlines() if line.startswith("| ")]
    return out.returncode, out.stdout, [tuple(c.strip() for c in r[1:4]) for r in rows[1:]]


def test_a_failing_section_is_a_row_and_the_check_goes_on(tmp_path):
    """The whole dry run is bench/gpu_rehearsal.sh's (CI, a torch-only venv); here its failure
    paths. A section that raises gives one FAILED row with its reason, the next section runs,
    the table ends, every row is in $OUT/gpu_check.log as printed, and the exit code is 1."""
    code, stdout, rows = gpu_check(tmp_path, "--only", "engine,device", "--fail", "engine")
    assert code == 1, stdout
    assert ("engine", "FAILED", "RuntimeError: failure injected by --fail engine") in rows
    checks = [r[0] for r in rows]
    assert checks.index("device: auto picks") > checks.index("engine")  # the next one ran
    assert stdout.splitlines()[0].startswith("gpu check on the CPU (dry run)")
    assert "(system)" in stdout.splitlines()[0] or "train-images" in stdout.splitlines()[0]
    assert re.search(r"^gpu check done in \d+ s: \d+ rows, 1 failed, 0 skipped$", stdout, re.M)
    log = (tmp_path / "gpu_check.log").read_text()
    assert [x for x in log.splitlines() if x.startswith("| ")] == \
        [x for x in stdout.splitlines() if x.startswith("| ")]
    assert "failure injected" in (tmp_path / "gpu_check.err").read_text()  # its traceback


def test_the_deadline_stops_a_hanging_section_and_skips_the_rest(tmp_path):
    code, stdout, rows = gpu_check(tmp_path, "--only", "engine,seed", "--hang", "engine",
                                   "--deadline", "3")
    assert code == 1, stdout
    engine = [r for r in rows if r[0] == "engine"]
    assert engine[0] == ("engine", "hanging", "injected by --hang")  # rows before it are kept
    assert engine[1][1] == "FAILED" and "stopped at the deadline" in engine[1][2], rows
    seed = [r for r in rows if r[0] == "seed"]
    assert seed and seed[0][1] == "SKIPPED" and "deadline" in seed[0][2]
    assert "gpu check done" in stdout
