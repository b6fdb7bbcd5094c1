"""A search outlives its MLflow tracking server: training goes on, MLflow is caught up later.

Every MLflow call a running search makes (search/lineage.py's callback, the driver's end of
search records) goes through its command's ``Offline`` (search/context.py ``RunContext``): the
first call that fails (the server or its database gone, a request timing out after
MLFLOW_HTTP_REQUEST_TIMEOUT) takes the store offline: one line on stderr names the store and
says what happens, and no later call of this run touches MLflow, so nothing waits on a dead
server again. Tune's own results and checkpoints (the storage path) keep everything;
``--resume`` with the server back records what was missed (search/backfill.py). The
experiment's state file says so meanwhile (``mlflow_offline``).

The stores are keyed by their redacted URI, because Tune restores the lineage callback from its
pickle on --resume (with the redacted URI only): the driver hands the restored callback the
command's ``Offline`` (search/tuner.py), and the two agree on the store.
"""

from __future__ import annotations

import functools
import re
import sys
import time

import requests
from mlflow.exceptions import MlflowException
from sqlalchemy.exc import SQLAlchemyError

from search.workspace import redact, scrub
from trainables.files import first_line

# What a lost or failing store raises: MLflow's REST errors (connection refused, 5xx, timeouts
# are all MlflowException), requests' own, a database named directly, the network.
TRACKING_ERRORS = (MlflowException, requests.exceptions.RequestException, SQLAlchemyError,
                   OSError)
DROPPED = "the connection was closed during a request"


class Offline:
    """The MLflow stores of one command that stopped answering, and the URIs it was given."""

    def __init__(self):
        self.down: dict[str, str] = {}  # redacted tracking URI -> why it stopped answering
        self.uris: dict[str, str] = {}  # redacted -> the URI as given (with its password)

    def __reduce__(self):  # Tune pickles what holds it: the password must not go along
        raise TypeError("an Offline holds the tracking URIs' passwords: it is never pickled")

    def remember(self, uri: str) -> str:
        """Keep ``uri`` here only; returns the redacted form, which is safe to pickle (Tune
        writes callbacks to the storage path) and which ``resolve`` turns back."""
        self.uris[redact(uri)] = uri
        return redact(uri)

    def resolve(self, uri: str) -> str:
        return self.uris.get(uri, uri)

    def is_offline(self, uri: str) -> bool:
        return redact(uri) in self.down

    def reason(self, uri: str) -> str | None:
        return self.down.get(redact(uri))

    def go_offline(self, uri: str, error: BaseException) -> None:
        """Say once, on stderr, that the store is gone and what happens now."""
        key = redact(uri)
        if key in self.down:
            return
        self.down[key] = why = _why(error)
        what = "server" if key.startswith(("http:", "https:")) else "store"
        print(f"MLflow offline: the tracking {what} {key} stopped answering ({why}); training "
              "goes on and Tune keeps every result and checkpoint, but nothing more is recorded "
              "in MLflow this run. When it is back, run the same command with --resume "
              "to record what was missed.", file=sys.stderr, flush=True)

    def back_online(self, uri: str) -> None:
        """A new search (or a resumed one) whose store answered: calls go through again."""
        self.down.pop(redact(uri), None)

    def tracked(self, uri: str, fn, *args, **kw):
        """``fn(*args, **kw)``, unless the store ``uri`` is offline; a tracking error takes it
        offline instead of stopping the search. Returns fn's value, or None."""
        if self.is_offline(uri):
            return None
        try:
            return fn(*args, **kw)
        except TRACKING_ERRORS as e:
            self.go_offline(uri, e)
            return None

    def note(self, ws, name: str, state: dict) -> None:
        """The experiment's state file (search/workspace.py) says whether MLflow missed part of
        it (``mlflow_offline``: since when, why) until a --resume with the server back
        recorded it."""
        why = self.reason(ws.tracking_uri)
        if why is None and "mlflow_offline" not in state:
            return
        if why is None:
            del state["mlflow_offline"]
        else:
            state.setdefault("mlflow_offline", {"since": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                "reason": why})
        ws.save_state(name, state)


def _why(error: BaseException) -> str:
    """The short reason: the OS's (Connection refused), a timeout, a server that went away in
    the middle of a request, else the first line."""
    text = str(error).strip()
    if m := re.search(r"\[Errno -?\d+\] ([^'\")(]+)", text):
        return m.group(1).strip()
    if re.search(r"Remote end closed connection|Connection aborted|RemoteDisconnected", text):
        return DROPPED
    if m := re.search(r"(Read|Connect) timed out\.?( \(\w+ timeout=[\d.]+\))?", text):
        return m.group(0).strip()
    if m := re.search(r"Caused by \w+\((?:<[^>]*>[:,] )?'?([^'\")(]+)", text):  # urllib3's cause
        return scrub(m.group(1).strip())[:200]
    return scrub(first_line(error, 10_000))[:200]


def tracked_hook(hook):
    """A Tune callback hook that writes to MLflow (``self.tracking_uri``), run through its
    ``self.offline.tracked``: Tune stops an experiment whose callback raises, and a search
    must not stop because its tracking server did."""

    @functools.wraps(hook)
    def wrapper(self, *args, **kw):
        return self.offline.tracked(self.tracking_uri, hook, self, *args, **kw)

    return wrapper
