"""What each trial of a search takes of the Ray cluster: CPUs and GPUs ("auto" sized to it), and
whether PyTorch can use CUDA where the cluster's GPUs are (asked there, once)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import ray

from search.cluster import room
from search.options import AUTO, UsageError
from trainables.files import first_line

TRIALS_PER_GPU = 4  # trials packed on one GPU by --gpus-per-trial auto (bench/gpu_check.sh)
MAX_CPUS_PER_GPU_TRIAL = 4  # a GPU trial's CPU work is its Python loop and the launches
PROBE_GPU = 0.001  # the CUDA check's share of a GPU: it fits beside trials packed on one
PROBE_TIMEOUT_S = 120.0  # a worker's start and torch's import; a busy cluster may not answer


@dataclass(frozen=True)
class CudaAnswer:
    """What PyTorch says about CUDA on a node with a GPU, asked there: usable is None when no
    answer came in time."""

    usable: bool | None
    torch: str = "?"
    cuda: str | None = None  # torch.version.cuda: None for a CPU-only build
    reason: str = ""  # why CUDA is not usable, in a few words

    def text(self) -> str:
        return ", ".join(filter(None, (f"torch {self.torch}", self.reason)))

    def fix(self) -> str:
        """What to install: a CUDA build of PyTorch, or, for one, a driver for its CUDA."""
        return "install a CUDA build of PyTorch" if self.cuda is None else \
            f"install an NVIDIA driver that supports CUDA {self.cuda}"


def cuda_here() -> CudaAnswer:
    """Whether PyTorch in this process can use CUDA, and if not, why (the first sentence of
    what CUDA's initialisation raises: no driver, a driver too old, no visible device)."""
    try:
        import torch
    except ImportError as e:
        return CudaAnswer(False, "missing", reason=f"PyTorch does not import ({first_line(e)})")
    answer = CudaAnswer(torch.cuda.is_available(), torch.__version__, torch.version.cuda)
    if answer.usable:
        return answer
    if torch.version.cuda is None:
        reason = "a CPU-only build"
    else:
        try:
            torch.cuda.init()
            reason = "no CUDA device visible"
        except Exception as e:
            reason = first_line(e).split(". ")[0].rstrip(".")
            reason = reason[0].lower() + reason[1:] if reason[:2].istitle() else reason
    return CudaAnswer(False, answer.torch, answer.cuda, reason)


def ask_cluster(timeout: float = PROBE_TIMEOUT_S) -> CudaAnswer:
    """cuda_here() run as a Ray task on a GPU of the cluster, where trials would run: the driver
    may be a CPU-only head whose own torch says nothing about the GPU nodes'. No CPU, so that
    trials holding every CPU do not keep it waiting; a task that fails is an answer too (the
    trials would fail the same way), one that does not start in time is none."""
    task = ray.remote(num_gpus=PROBE_GPU, num_cpus=0, max_retries=0)(cuda_here)
    ref = task.remote()
    try:
        return ray.get(ref, timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref, force=True)
        return CudaAnswer(None, reason=f"no answer in {timeout:g} s")
    except ray.exceptions.RayError as e:
        return CudaAnswer(False, reason=first_line(getattr(e, "cause", None) or e))


class CudaCheck:
    """Whether PyTorch can use CUDA where the cluster's GPUs are, asked once (ask_cluster: a
    task of seconds) when a trial would take a GPU, then kept: the driver passes the one
    check to check_cluster and resources. ``ask`` is injectable, so tests need no cluster."""

    def __init__(self, ask: Callable[[], CudaAnswer] = ask_cluster):
        self._ask = ask
        self._answer: CudaAnswer | None = None

    def answer(self) -> CudaAnswer:
        if self._answer is None:
            self._answer = self._ask()
        return self._answer

    def usable(self) -> bool:
        """False only when the cluster said no: without an answer, GPUs are used as before."""
        return self.answer().usable is not False


def resources(options, cuda: CudaCheck | None = None) -> tuple[float, float]:
    """(CPUs, GPUs) each trial takes: the numbers given, "auto" sized to the cluster. On GPUs
    a trial takes 1/TRIALS_PER_GPU of one (small 28x28 models leave a GPU mostly idle, so
    packed trials add throughput) and an equal share of the CPUs (at most
    MAX_CPUS_PER_GPU_TRIAL); without GPUs, one CPU, trials side by side on the cores. GPUs
    that Ray counts but PyTorch there cannot use (``cuda``, asked when needed) count as none
    for "auto": every trial would fail on its first epoch. A GPU trial's share of the CPUs
    is of those the search may use (room: on a joined cluster, those free as it starts)."""
    total = ray.cluster_resources()
    have_gpus = total.get("GPU", 0)
    gpus = options.gpus_per_trial
    if gpus == AUTO:
        usable = have_gpus >= 1 and (cuda or CudaCheck()).usable()
        gpus = 1 / TRIALS_PER_GPU if usable else 0.0
    cpus = options.cpus_per_trial
    if cpus == AUTO:
        cpus = 1.0
        if gpus > 0:
            share = int(room(options).get("CPU", 1) // max(1, round(have_gpus / gpus)))
            cpus = float(max(1, min(MAX_CPUS_PER_GPU_TRIAL, share)))
    return float(cpus), float(gpus)


def check_cluster(options, cuda: CudaCheck | None = None) -> CudaCheck:
    """A trial must fit the cluster it was sent to (the one --address joined, too), and GPUs
    it is given must be ones PyTorch there can use: "auto" falls back to the CPUs, saying so
    once; a number is refused. Returns the CUDA check, for resources() to reuse its answer."""
    cuda = cuda or CudaCheck()
    total = ray.cluster_resources()
    cpus, gpus = resources(options, cuda)
    for flag, want, key in (("--cpus-per-trial", cpus, "CPU"), ("--gpus-per-trial", gpus, "GPU")):
        if want > total.get(key, 0):
            raise UsageError(f"{flag} {want:g} is more than the {total.get(key, 0):g} "
                             f"{key}s of the Ray cluster; lower it or add nodes with {key}s")
    have = total.get("GPU", 0)
    auto = options.gpus_per_trial == AUTO
    if not (gpus > 0 or (auto and have >= 1)):  # the fit above: gpus > 0 means have > 0
        return cuda  # no GPU asked for: nothing to check
    answer = cuda.answer()
    counted = f"the Ray cluster counts {have:g} GPU{'' if have == 1 else 's'}"
    if answer.usable is None:
        print(f"{counted} but did not say whether PyTorch there can use CUDA ({answer.reason}); "
              "trials get GPUs as Ray counts them", file=sys.stderr, flush=True)
    elif not answer.usable:
        cannot = f"{counted} but PyTorch there cannot use CUDA ({answer.text()})"
        if not auto:
            raise UsageError(f"--gpus-per-trial {gpus:g}: {cannot}; {answer.fix()} on the GPU "
                             "nodes or pass --gpus-per-trial 0")
        print(f"{cannot}; trials run on the CPUs ({answer.fix()}, or pass --gpus-per-trial 0 "
              "to silence this)", file=sys.stderr, flush=True)
    return cuda
