"""The Ray cluster a search runs on: a local one of this process, or the one --address joins.

Started once per process, so the stages of a pipeline share one cluster and one dashboard.
"""

from __future__ import annotations

import logging
import os

import ray

from search.options import UsageError
from trainables.files import first_line

_DASHBOARD: list[str | None] = []  # the dashboard of the cluster this process started


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
        try:
            ctx = ray.init(address=options.address, **kw)
        except ray.exceptions.AuthenticationError:
            raise UsageError(f"the Ray cluster at {options.address} refused this driver's "
                             "token; export RAY_AUTH_MODE=token and the head's token (`ray "
                             "get-auth-token` there) as RAY_AUTH_TOKEN") from None
        except (ConnectionError, TimeoutError, ray.exceptions.RpcError) as e:
            raise UsageError(f"no Ray cluster answers at {options.address} ({first_line(e)}); "
                             "start it (`ray start --head`) or fix --address") from None
    else:
        # "local": a new cluster of this process, even when `ray start` runs one on this machine
        ctx = ray.init(address="local", num_cpus=options.num_cpus, include_dashboard=True,
                       dashboard_host="127.0.0.1", dashboard_port=options.dashboard_port, **kw)
    url = getattr(ctx, "dashboard_url", None)
    url = f"http://{url}" if url and not url.startswith("http") else url
    _DASHBOARD[:] = [url]
    return url


def check_cluster(options) -> None:
    """A trial must fit the cluster it was sent to (the one --address joined, too)."""
    total = ray.cluster_resources()
    for flag, want, key in (("--cpus-per-trial", options.cpus_per_trial, "CPU"),
                            ("--gpus-per-trial", options.gpus_per_trial, "GPU")):
        if want > total.get(key, 0):
            raise UsageError(f"{flag} {want:g} is more than the {total.get(key, 0):g} "
                             f"{key}s of the Ray cluster; lower it or add nodes with {key}s")
