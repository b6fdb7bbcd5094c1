"""The workspace: one folder that holds everything a search writes.

    DIR/mlflow.db          the default MLflow tracking store (sqlite:///DIR/mlflow.db)
    DIR/mlartifacts/       MLflow artifacts of that store
    DIR/ray_results/       Ray Tune's experiment folders (--storage-path may point elsewhere)
    DIR/trunks/            shared trunks: warm-ups, wsd stable phases (trainables/trunk.py)
    DIR/experiments/NAME.json   what --resume needs: the parent run, the Tune path, the arguments
    DIR/pipelines/NAME.json     a pipeline's plan and the status and time of each stage
    DIR/reports/           analysis reports
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit, urlunsplit

from mlflow.tracking import MlflowClient

from trainables.files import first_line, write_json

# What every MLflow client of the project runs with (mlflow_client), where the environment does
# not say otherwise. Fail fast on a tracking server that does not answer (MLflow retries for
# minutes by default); no artifact progress bars; not MLflow's "View run NAME at: URL" line per
# finished run: noise for a search's trials, and it would print a password given in
# --tracking-uri. MLflow reads them at each request.
MLFLOW_ENV = MappingProxyType({
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
})


class NoDatabaseErrors(logging.Filter):
    """A database named as the store (postgresql://...): MLflow logs its error with a traceback
    before raising it; the command says it in one line instead (MLflow's retry warnings
    stay)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


def mlflow_client(uri: str) -> MlflowClient:
    """An MLflow client of ``uri``, in a process set up for MLflow first (MLFLOW_ENV,
    NoDatabaseErrors): every MLflow client of a command is made here."""
    for name, value in MLFLOW_ENV.items():
        os.environ.setdefault(name, value)
    db = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, NoDatabaseErrors) for f in db.filters):
        db.addFilter(NoDatabaseErrors())
    return MlflowClient(uri)


class WorkspaceError(Exception):
    """A workspace or tracking problem; one line for the user."""


def redact(uri: str) -> str:
    """A URI without its password, for anything that is printed, logged or recorded."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    user = f"{parts.username}:***@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}{host}{port}"))


def scrub(text: str) -> str:
    """Any text (an error message quoting a request's URL, say) with the passwords of the URIs
    in it masked as redact() masks them."""
    return re.sub(r"(?<=://)([^/\s:@]*):[^\s/]*@", r"\1:***@", text)


@dataclass(frozen=True)
class Workspace:
    root: Path
    tracking_uri: str
    storage_path: str

    @classmethod
    def open(cls, root: str | Path, tracking_uri: str | None = None,
             storage_path: str | None = None) -> Workspace:
        root = Path(root).expanduser().resolve()
        try:
            for sub in ("mlartifacts", "trunks", "experiments", "reports"):
                (root / sub).mkdir(parents=True, exist_ok=True)
            probe = root / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise WorkspaceError(f"workspace {root} is not writable ({e.strerror}); "
                                 "pass --workspace with a writable folder") from None
        storage = storage_path or str(root / "ray_results")
        return cls(root, tracking_uri or f"sqlite:///{root / 'mlflow.db'}", storage)

    @property
    def trunks(self) -> Path:
        return self.root / "trunks"

    def client(self) -> MlflowClient:
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its table-creation notes
        try:  # a database named directly is connected to (and retried) here already
            self._create_sqlite_store()
            client = mlflow_client(self.tracking_uri)
            client.search_experiments(max_results=1)
        except Exception as e:
            reason = scrub(first_line(e, 10_000))[:200]
            raise WorkspaceError(f"MLflow tracking store {redact(self.tracking_uri)} does not "
                                 f"answer ({reason}); start it or pass another --tracking-uri"
                                 ) from None
        return client

    def _create_sqlite_store(self) -> None:
        """A new sqlite store is made whole beside its place and then linked into it: MLflow
        creates its tables in many steps, and a store killed half way would refuse every
        later command ("table ... already exists")."""
        if not self.tracking_uri.startswith("sqlite:///"):
            return
        db = Path(self.tracking_uri[len("sqlite:///"):])
        if db.exists():
            return
        for stale in db.parent.glob(f"{db.name}.init-*"):  # left by a process killed here
            if not _alive(stale.name.split(".init-", 1)[1].split("-")[0]):
                stale.unlink(missing_ok=True)
        tmp = db.with_name(f"{db.name}.init-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        mlflow_client(f"sqlite:///{tmp}").search_experiments(max_results=1)
        try:
            os.link(tmp, db)  # only if no other process made it meanwhile
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)

    def experiment_id(self, client: MlflowClient, name: str) -> str:
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        # a database named directly (sqlite, postgresql, ...) keeps artifacts in the
        # workspace, not in ./mlruns of wherever the command runs; a server keeps its own
        if not self.tracking_uri.startswith(("http:", "https:", "databricks")):
            location = (self.root / "mlartifacts" / _safe(name)).as_uri()
        return client.create_experiment(name, artifact_location=location)

    def state_file(self, name: str) -> Path:
        return self.root / "experiments" / f"{_safe(name)}.json"

    def load_state(self, name: str) -> dict | None:
        path = self.state_file(name)
        return json.loads(path.read_text()) if path.exists() else None

    def save_state(self, name: str, state: dict) -> None:
        path = self.state_file(name)
        write_json(path, state)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
