"""What a search holds alone while it runs: the policy for several searches at once.

Searches may share a Ray cluster, an MLflow server and a workspace. What two of them must not
share is taken by the first, for as long as its process runs, and refused to the second at
its start, in one line naming the fix, before the second records anything:

- **an experiment** (a name in a workspace; a pipeline's name likewise): its state file,
  Tune's folder and its MLflow parent run are one search's. A lock file beside the state
  (``experiments/NAME.lock``, ``experiments/NAME.pipeline.lock``) and, for a --storage-path
  of its own, beside Tune's folder (``STORAGE/NAME.lock``);
- **a sqlite MLflow store** (the workspace's default ``mlflow.db``, or one named with
  --tracking-uri sqlite:///...): one search writes to it at a time (``mlflow.db.lock``);
  searches that run together share an MLflow server instead;
- **an MLflow experiment name in one tracking store**: it holds the searches of one
  workspace (its parent runs are tagged ``workspace``); another workspace's search under the
  same name would be mixed with them in every report, so it is refused, naming --name.

The locks are flock(2) locks: the kernel lets go of them when their process ends, however
it ends (a SIGKILL leaves a lock file behind, not a lock), and each lock file says who holds
it. What searches share by construction stays shared: the trunk and warm-up cache (``trunks/``) is
keyed by the data and every setting that changes a trunk's weights, and locked while it is
extended (trainables/trunk_store.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from search.options import UsageError
from search.workspace import Workspace, redact

WORKSPACE_TAG = "workspace"  # on a parent run: the workspace whose search it is


@contextlib.contextmanager
def hold(path: Path, what: str, fix: str) -> Iterator[None]:
    """Hold the lock file ``path`` for the ``with`` block, or refuse (UsageError) when another
    process holds it, saying who and ``fix``. The file is there only while it is held (a
    refused command leaves the workspace as it was): it is removed before it is let go of,
    and a file taken that was removed meanwhile (its holder ended) is taken again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        file = open(path, "a+")  # noqa: SIM115 (closed below, or held for the block)
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            raise UsageError(f"{what} is in use by {holder}; {fix}") from None
        try:
            if os.stat(path).st_ino == os.fstat(file.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        file.close()  # its holder removed it as this process opened it: a new one
    try:
        file.seek(0)
        file.truncate()
        file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        file.flush()
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        file.close()  # the lock goes with it


def sqlite_path(tracking_uri: str) -> Path | None:
    """The file of a sqlite tracking store, else None."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):])
    return None


def claim_search(stack: contextlib.ExitStack, ws: Workspace, name: str) -> None:
    """Take what the search ``name`` of ``ws`` holds alone (module docstring), into ``stack``
    (released when it closes), or refuse."""
    stack.enter_context(hold(
        ws.state_file(name).with_suffix(".lock"), f"experiment {name!r} in {ws.root}",
        "wait for that search to end, or give this one its own --name or --workspace"))
    default = str(ws.root / "ray_results")
    if ws.storage_path != default and "://" not in ws.storage_path:
        stack.enter_context(hold(
            Path(ws.storage_path) / f"{name}.lock", f"Tune's folder {name!r} in "
            f"{ws.storage_path}", "give this search its own --name or --storage-path"))
    if db := sqlite_path(ws.tracking_uri):
        stack.enter_context(hold(
            db.with_name(db.name + ".lock"), f"the sqlite MLflow store {db}",
            "sqlite serves one search at a time: give this search its own --workspace, or "
            "record both in an MLflow server (--tracking-uri http://HOST:5000, "
            "docs/cluster.md)"))


def claim_pipeline(stack: contextlib.ExitStack, ws: Workspace, name: str) -> None:
    """Take the pipeline ``name`` of ``ws`` (its state file), or refuse."""
    stack.enter_context(hold(
        ws.state_file(name).with_suffix(".pipeline.lock"), f"pipeline {name!r} in {ws.root}",
        "wait for it to end, or give this one its own --name or --workspace"))


def check_owner(client, ws: Workspace, name: str) -> None:
    """Refuse a search of ``ws`` under a name whose MLflow experiment holds the searches of
    another workspace (a shared tracking server): the two would be one in every report."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return
    other = client.search_runs([exp.experiment_id],
                               f"tags.{WORKSPACE_TAG} != '{ws.root}'", max_results=1)
    if other:
        theirs = other[0].data.tags[WORKSPACE_TAG]
        raise UsageError(f"MLflow experiment {name!r} in {redact(ws.tracking_uri)} holds the "
                         f"searches of workspace {theirs}; a search of {ws.root} under that "
                         "name would be mixed with them in reports: give it its own --name")
