"""Named points where a crash test can stop a process, so a SIGKILL lands in an exact window.

A failpoint does nothing unless ``TUNEFUSE_FAILPOINT`` names it. Then, when the process reaches
that point for the ``K``-th time (``NAME@K``; default the first), it writes one line (the name,
its pid and what the call site passed) to the file ``TUNEFUSE_FAILPOINT_FILE`` and waits there
for ever: the test sees the file appear (an event, not a timer), does what it needs to the
workspace, and kills the process group. Other threads of the process (Tune's state syncer) go
on running while it waits.

Ray's workers inherit the driver's environment, so a failpoint in a Trainable works as one in
the driver does. The points are listed in docs/crash-windows.md.
"""

from __future__ import annotations

import os
import threading
import time

from trainables.files import write_json

ENV, FILE_ENV = "TUNEFUSE_FAILPOINT", "TUNEFUSE_FAILPOINT_FILE"
_hits: dict[str, int] = {}
_lock = threading.Lock()


def armed(name: str) -> bool:
    """Whether ``name`` is the failpoint this process was asked to stop at (cheap check)."""
    spec = os.environ.get(ENV, "")
    return bool(spec) and spec.split("@", 1)[0] == name


def reach(name: str, **context) -> None:
    """Stop here for ever if ``TUNEFUSE_FAILPOINT`` names this point and this hit."""
    if not armed(name):
        return
    spec = os.environ[ENV]
    want = int(spec.split("@", 1)[1]) if "@" in spec else 1
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        if _hits[name] != want:
            return
    marker = os.environ.get(FILE_ENV)
    if marker:
        write_json(marker, {"failpoint": name, "pid": os.getpid(), **context}, indent=None,
                   default=str)
    while True:  # until the test kills this process
        time.sleep(3600)
