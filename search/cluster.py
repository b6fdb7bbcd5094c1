"""The Ray cluster a search runs on: a local one of this process, or the one --address joins;
what a search may size itself by, and whether every node sees its storage path.

Started once per process, so the stages of a pipeline share one cluster and one dashboard (its
URL kept in the command's run context, search/context.py). What each trial takes of it:
search/sizing.py.
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

import ray

from search.context import RunContext
from search.options import UsageError, cluster_address
from trainables.cli import sigterm_as_ctrl_c
from trainables.files import first_line

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


def start_ray(options, context: RunContext) -> str | None:
    """Connect to Ray once per process: to the cluster cluster_address names (--address, or a
    Ray Job's own), else to a new local one; returns the dashboard's URL, which ``context``
    keeps (a later search of the command, Ray already connected, returns it from there)."""
    if ray.is_initialized():
        return context.dashboard
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's table reporter (search/driver.py)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    with ray_sigterm_as_ctrl_c():
        ctx = _init(options)
    url = getattr(ctx, "dashboard_url", None)
    url = f"http://{url}" if url and not url.startswith("http") else url
    context.dashboard = url
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
