"""The Ray cluster a search runs on: a local one of this process, or the one --address joins.

Started once per process, so the stages of a pipeline share one cluster and one dashboard.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile

import ray

from search.options import AUTO, UsageError
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
    """Connect to Ray once per process; returns the dashboard's URL."""
    if ray.is_initialized():
        return dashboard_url()
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's table reporter (search/driver.py)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    kw = dict(logging_level=logging.WARNING, log_to_driver=False)
    if options.address:
        refused = (f"the Ray cluster at {options.address} refused this driver's token (Ray: "
                   "InvalidAuthToken); export RAY_AUTH_MODE=token and the head's token (`ray "
                   "get-auth-token` there) as RAY_AUTH_TOKEN")
        with ray_log() as log:
            try:
                ctx = ray.init(address=options.address, **kw)
            except ray.exceptions.AuthenticationError:
                raise UsageError(refused) from None
            except (ConnectionError, TimeoutError, ray.exceptions.RpcError) as e:
                if AUTH_REFUSED in log.read():  # said only in Ray's C++ client's log lines
                    raise UsageError(refused) from None
                raise UsageError(f"no Ray cluster answers at {options.address} "
                                 f"({first_line(e)}); start it (`ray start --head`) or fix "
                                 "--address") from None
    else:
        # "local": a new cluster of this process, even when `ray start` runs one on this machine
        ctx = ray.init(address="local", num_cpus=options.num_cpus,
                       include_dashboard=not options.no_dashboard,
                       dashboard_host="127.0.0.1", dashboard_port=options.dashboard_port, **kw)
    url = getattr(ctx, "dashboard_url", None)
    url = f"http://{url}" if url and not url.startswith("http") else url
    _DASHBOARD[:] = [url]
    return url


TRIALS_PER_GPU = 4  # trials packed on one GPU by --gpus-per-trial auto (bench/gpu_check.sh)
MAX_CPUS_PER_GPU_TRIAL = 4  # a GPU trial's CPU work is its Python loop and the launches


def resources(options) -> tuple[float, float]:
    """(CPUs, GPUs) each trial takes: the numbers given, "auto" sized to the cluster. On GPUs
    a trial takes 1/TRIALS_PER_GPU of one (small 28x28 models leave a GPU mostly idle, so
    packed trials add throughput) and an equal share of the CPUs (at most
    MAX_CPUS_PER_GPU_TRIAL); without GPUs, one CPU, trials side by side on the cores."""
    total = ray.cluster_resources()
    have_gpus = total.get("GPU", 0)
    gpus = options.gpus_per_trial
    if gpus == AUTO:
        gpus = 1 / TRIALS_PER_GPU if have_gpus >= 1 else 0.0
    cpus = options.cpus_per_trial
    if cpus == AUTO:
        cpus = 1.0
        if gpus > 0:
            share = int(total.get("CPU", 1) // max(1, round(have_gpus / gpus)))
            cpus = float(max(1, min(MAX_CPUS_PER_GPU_TRIAL, share)))
    return float(cpus), float(gpus)


def check_cluster(options) -> None:
    """A trial must fit the cluster it was sent to (the one --address joined, too)."""
    total = ray.cluster_resources()
    cpus, gpus = resources(options)
    for flag, want, key in (("--cpus-per-trial", cpus, "CPU"), ("--gpus-per-trial", gpus, "GPU")):
        if want > total.get(key, 0):
            raise UsageError(f"{flag} {want:g} is more than the {total.get(key, 0):g} "
                             f"{key}s of the Ray cluster; lower it or add nodes with {key}s")
