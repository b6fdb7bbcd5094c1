"""The Ray cluster a search runs on: a local one of this process, or the one --address joins.

Started once per process, so the stages of a pipeline share one cluster and one dashboard.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import ray

from search.options import AUTO, UsageError, cluster_address
from trainables.cli import sigterm_as_ctrl_c
from trainables.files import first_line

_DASHBOARD: list[str | None] = []  # the dashboard of the cluster this process started
AUTH_REFUSED = "InvalidAuthToken"  # what Ray's GCS client logs when the head refuses a token


class _Log:
    def __init__(self, file):
        self.file = file

    def read(self) -> str:
        self.file.seek(0)
        return self.file.read().decode(errors="replace")


@contextlib.contextmanager
def ray_log():
    """Standard error of this process (file descriptor 2, where Ray's C++ client writes, not
    through Python) kept in a file while Ray connects: its retry warnings, one a second, say why
    a connection failed; they are read, not shown. Shown after a connection that worked."""
    with tempfile.TemporaryFile() as file:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(file.fileno(), 2)
        ok = False
        try:
            yield _Log(file)
            ok = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if ok:
                sys.stderr.write(_Log(file).read())
                sys.stderr.flush()


def dashboard_url() -> str | None:
    """The dashboard of the cluster this process connected to (None before start_ray)."""
    return _DASHBOARD[0] if _DASHBOARD else None


def start_ray(options) -> str | None:
    """Connect to Ray once per process: to the cluster cluster_address names (--address, or a
    Ray Job's own), else to a new local one; returns the dashboard's URL."""
    if ray.is_initialized():
        return dashboard_url()
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's table reporter (search/driver.py)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    with ray_sigterm_as_ctrl_c():
        ctx = _init(options)
    url = getattr(ctx, "dashboard_url", None)
    url = f"http://{url}" if url and not url.startswith("http") else url
    _DASHBOARD[:] = [url]
    return url


@contextlib.contextmanager
def ray_sigterm_as_ctrl_c():
    """ray.init sets its own SIGTERM handler, an exit on the spot (SystemExit(15), wherever
    the driver is in ray.init); a SIGTERM in it, or before the command's handler is set again
    after it, is Ctrl-C too (KeyboardInterrupt), as it is everywhere else."""
    try:
        yield
        sigterm_as_ctrl_c()  # ray.init replaced it
    except SystemExit as e:
        if e.code != signal.SIGTERM:
            raise
        sigterm_as_ctrl_c()
        raise KeyboardInterrupt from None


def _init(options):
    kw = dict(logging_level=logging.WARNING, log_to_driver=False)
    if address := cluster_address(options):
        refused = (f"the Ray cluster at {address} refused this driver's token (Ray: "
                   "InvalidAuthToken); export RAY_AUTH_MODE=token and the head's token (`ray "
                   "get-auth-token` there) as RAY_AUTH_TOKEN")
        with ray_log() as log:
            try:
                ctx = ray.init(address=address, **kw)
            except ray.exceptions.AuthenticationError:
                raise UsageError(refused) from None
            except (ConnectionError, TimeoutError, ray.exceptions.RpcError) as e:
                if AUTH_REFUSED in log.read():  # said only in Ray's C++ client's log lines
                    raise UsageError(refused) from None
                raise UsageError(f"no Ray cluster answers at {address} "
                                 f"({first_line(e)}); start it (`ray start --head`) or fix "
                                 "--address or $RAY_ADDRESS") from None
    else:
        # "local": a new cluster of this process, even when `ray start` runs one on this machine
        ctx = ray.init(address="local", num_cpus=options.num_cpus,
                       include_dashboard=not options.no_dashboard,
                       dashboard_host="127.0.0.1", dashboard_port=options.dashboard_port, **kw)
    return ctx


def job_submission_id() -> str | None:
    """The submission id of the Ray Job this driver runs as (`ray job submit` prints it, `ray
    job logs ID` and the dashboard's Jobs tab take it), or None outside a job: Ray Jobs gives
    its driver its metadata in RAY_JOB_CONFIG_JSON_ENV_VAR."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return None
    try:
        metadata = json.loads(raw).get("metadata") or {}
    except (ValueError, AttributeError):
        return None
    return metadata.get("job_submission_id") or None


def joined(options) -> bool:
    """Whether the search runs on a cluster it joined (--address, or the Ray Job's own), which
    other searches may share, rather than on one this process started for itself."""
    return cluster_address(options) is not None


def room(options) -> dict[str, float]:
    """The resources a search may size itself by: on a cluster of its own, Ray's totals; on
    one it joined, what is free as it starts (other searches' trials hold the rest)."""
    return ray.available_resources() if joined(options) else ray.cluster_resources()


SEEN_TIMEOUT_S = 60.0  # a worker's start on each node (a task of no CPU: busy nodes answer)


def _sees(marker: str) -> bool:
    """Whether ``marker`` exists on this node: run on each node."""
    return os.path.exists(marker)


def nodes_not_seeing(folder: str, timeout: float = SEEN_TIMEOUT_S) -> list[str]:
    """The live nodes (their addresses) on which the local ``folder`` of this driver's node is
    not the same folder (no shared file system there): a file written here is looked for there
    by a task of no CPU pinned to each other node. Nodes that do not answer in time are not
    counted; the driver's own node is not asked."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    others = {n["NodeID"]: n.get("NodeManagerAddress", n["NodeID"]) for n in ray.nodes()
              if n.get("Alive") and n["NodeID"] != here}
    if not others:
        return []
    os.makedirs(folder, exist_ok=True)
    fd, marker = tempfile.mkstemp(prefix=".tunefuse-seen-", dir=folder)
    os.close(fd)
    try:
        probe = ray.remote(num_cpus=0, max_retries=0)(_sees)
        refs = {probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            node, soft=False)).remote(marker): address for node, address in others.items()}
        ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
        for ref in late:
            ray.cancel(ref, force=True)
        blind = []
        for ref in ready:
            try:
                if not ray.get(ref):
                    blind.append(refs[ref])
            except ray.exceptions.RayError:
                continue  # a node that went away meanwhile
        return sorted(blind)
    finally:
        os.unlink(marker)


def check_storage(storage_path: str, unseen: Callable[[str], list[str]] = nodes_not_seeing
                  ) -> None:
    """On a cluster of several nodes, say in one line when Tune's storage path (a local
    folder; a URI such as s3:// is shared by nature) is not seen by every node: checkpoints
    then stay on the node that wrote them, and a trial of a lost node starts again from
    scratch on another (docs/cluster.md)."""
    if "://" in storage_path:
        return
    if blind := unseen(storage_path):
        print(f"note: the storage path {storage_path} is not shared with {len(blind)} node(s) "
              f"of the cluster ({', '.join(blind)}): checkpoints stay on the node that wrote "
              "them, and a trial of a node that is lost starts again from scratch; pass a "
              "--storage-path that every node mounts (NFS) or a bucket (s3://...)",
              file=sys.stderr, flush=True)


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
