"""Named points where a crash test can stop a process, so a SIGKILL lands in an exact window.

A failpoint does nothing unless ``TUNEFUSE_FAILPOINT`` names it. Then, when the process reaches
that point for the ``K``-th time (``NAME@K``; default the first; ``NAME@K:KEY=VALUE`` counts only
the hits whose context has that value), it writes one line (the name,
its pid and what the call site passed) to the file ``TUNEFUSE_FAILPOINT_FILE`` (or, when that is
a named pipe, into it: a test blocked reading it wakes at once) and waits there
for ever: the test sees the file appear (an event, not a timer), does what it needs to the
workspace, and kills the process group. Other threads of the process (Tune's state syncer) go
on running while it waits.

Ray's workers inherit the driver's environment, so a failpoint in a Trainable works as one in
the driver does. The points are listed in docs/crash-windows.md.

``TUNEFUSE_DEADLINE_AT=NAME[@K][:KEY=VALUE,...]`` moves a --time-budget's deadline to a point:
the search's clock (search/clock.py) finds its deadline passed once this process reached that
point (``deadline_passed``, once), and goes on as it does at its deadline, so that a test
lands the end of a budget in an exact window (mid-trial) without timing it.

``TUNEFUSE_RENDEZVOUS=FOLDER:N`` is the other test hook: every trial waits at its start until N
trials have started, so that a test which needs trials running at the same time (one on each
node of a cluster) does not depend on the first one still running when the next one starts.

The hit counts (``_hits``, under ``_lock``) are the one state of this module, and they are the
process's by nature, as its environment and signal handlers are: ``NAME@K`` means the K-th time
*this process* reaches the point, whichever object reaches it (a worker that Tune reuses for
several trials, the driver's lineage callback restored from Tune's pickle, a pipeline's
stages), and the points sit in objects of every layer that Tune pickles and restores. An object
passed to each of them would have to be the process's one anyway; nothing but a test that sets
``TUNEFUSE_FAILPOINT`` ever counts.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time

from trainables.files import write_json

ENV, FILE_ENV = "TUNEFUSE_FAILPOINT", "TUNEFUSE_FAILPOINT_FILE"
DEADLINE_ENV = "TUNEFUSE_DEADLINE_AT"
_DEADLINE = "deadline passed"  # the hit count that says so (deadline_passed)
RENDEZVOUS_ENV = "TUNEFUSE_RENDEZVOUS"
_hits: dict[str, int] = {}
_lock = threading.Lock()


def _spec(env: str = ENV) -> tuple[str, int, dict[str, str]]:
    """``TUNEFUSE_FAILPOINT`` (or ``env``) read: NAME[@K][:KEY=VALUE,...] as
    (NAME, K, {KEY: VALUE})."""
    spec, _, where = os.environ.get(env, "").partition(":")
    name, _, k = spec.partition("@")
    return name, int(k or 1), dict(kv.split("=", 1) for kv in where.split(",") if kv)


def armed(name: str) -> bool:
    """Whether ``name`` is the failpoint this process was asked to stop at (cheap check)."""
    spec = os.environ.get(ENV, "")
    return bool(spec) and spec.partition(":")[0].partition("@")[0] == name


def reach(name: str, **context) -> None:
    """Stop here for ever if ``TUNEFUSE_FAILPOINT`` names this point and this hit. With
    ``:KEY=VALUE`` pairs, only the hits whose context has those values count (``epoch=3``:
    a checkpoint of epoch 3, whichever trial writes it)."""
    if os.environ.get(DEADLINE_ENV):
        _count_deadline(name, context)
    if not armed(name):
        return
    _, want, where = _spec()
    if any(str(context.get(k)) != v for k, v in where.items()):
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        if _hits[name] != want:
            return
    marker = os.environ.get(FILE_ENV)
    record = {"failpoint": name, "pid": os.getpid(), **context}
    if marker and os.path.exists(marker) and stat.S_ISFIFO(os.stat(marker).st_mode):
        with open(marker, "w") as fifo:  # a test blocked reading it wakes up: an event
            fifo.write(json.dumps(record, default=str) + "\n")
    elif marker:
        write_json(marker, record, indent=None, default=str)
    while True:  # until the test kills this process
        time.sleep(3600)


def rendezvous() -> None:
    """Wait here until N callers have arrived, if ``TUNEFUSE_RENDEZVOUS`` says ``FOLDER:N``: each
    arrival is a file of its own in FOLDER (on the machine's disk, so processes of every node
    of a one-machine cluster see it); the wait watches the folder fill."""
    spec = os.environ.get(RENDEZVOUS_ENV)
    if not spec:
        return
    folder, n = spec.rsplit(":", 1)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{os.getpid()}-{time.monotonic_ns()}"), "w"):
        pass
    while len(os.listdir(folder)) < int(n):
        time.sleep(0.05)


def _count_deadline(name: str, context: dict) -> None:
    point, want, where = _spec(DEADLINE_ENV)
    if point != name or any(str(context.get(k)) != v for k, v in where.items()):
        return
    with _lock:
        _hits[f"{_DEADLINE} at {name}"] = _hits.get(f"{_DEADLINE} at {name}", 0) + 1
        if _hits[f"{_DEADLINE} at {name}"] == want:
            _hits[_DEADLINE] = 1


def deadline_passed() -> bool:
    """Whether this process reached the point ``TUNEFUSE_DEADLINE_AT`` names (a test's
    deadline: module docstring) since it was last asked: one clock takes it, and the searches
    after it (a pipeline's next stages) keep their own."""
    with _lock:
        return bool(_hits.pop(_DEADLINE, 0))
