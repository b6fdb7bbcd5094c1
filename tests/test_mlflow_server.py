"""A real MLflow tracking server on a real PostgreSQL database, as a team would share one.

The module starts Debian's PostgreSQL (the set-up installs it: `make postgres`) in a temporary
cluster on 127.0.0.1, a role with a password and a database, then docs/cluster.md's
`PGPASSWORD=... mlflow server --backend-store-uri postgresql://USER@127.0.0.1:PORT/mlflow
--artifacts-destination DIR --host 127.0.0.1`, and tears both down afterwards. Against it, one
smoke search with a password in its --tracking-uri: the server is killed mid-search (training
goes on, says so once, ends normally), started again, and the same command with --resume
records what was missed; then the report. Every record, checkpoint and the registered model
are in the server, and the password is written nowhere.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import ROOT, VENV_BIN, free_port, wait_http

from trainables import data

pytestmark = pytest.mark.slow  # a PostgreSQL cluster, an MLflow server and three commands

PG_BINS = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                 key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
DB_USER, DB_PASSWORD, DB_NAME = "tunefuse", "Db-pw-7Kq2", "mlflow"
HTTP_PASSWORD = "S3cretPw-x9"  # embedded in a tracking URI; must never be written anywhere
ENV = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}


class Server:
    """A PostgreSQL cluster and an MLflow server on it, both on 127.0.0.1."""

    def __init__(self, root: Path, artifacts: Path):
        self.root, self.artifacts = root, artifacts
        self.bin = Path(PG_BINS[-1])
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.pg_port, self.port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None
        # as docs/cluster.md has it: the password in PGPASSWORD (libpq reads it), not on the
        # command line, where `ps` shows it to every user
        self.backend = f"postgresql://{DB_USER}@127.0.0.1:{self.pg_port}/{DB_NAME}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pg_ctl(self, *args, check=True):
        return subprocess.run([*self.as_postgres, str(self.bin / "pg_ctl"), "-D",
                               str(self.root / "data"), *args], capture_output=True,
                              text=True, timeout=60, check=check)

    def start_postgres(self) -> None:
        pwfile = self.root / "superuser-password"
        pwfile.write_text("postgres-pw\n")
        if self.as_postgres:  # initdb refuses root: the cluster belongs to postgres
            for p in (self.root, pwfile):
                shutil.chown(p, "postgres", "postgres")
        subprocess.run([*self.as_postgres, str(self.bin / "initdb"), "-D",
                        str(self.root / "data"), "-U", "postgres", f"--pwfile={pwfile}",
                        "--auth=scram-sha-256", "-E", "UTF8", "--no-sync",
                        "--no-instructions"], capture_output=True, text=True, timeout=120,
                       check=True)
        self.pg_ctl("-w", "-l", str(self.root / "postgres.log"), "-o",
                    f"-c listen_addresses=127.0.0.1 -p {self.pg_port} -k {self.root} "
                    "-c fsync=off -c synchronous_commit=off", "start")
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.pg_port, user="postgres",
                             password="postgres-pw", dbname="postgres",
                             autocommit=True) as con:
            con.execute(f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{DB_PASSWORD}'")
            con.execute(f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}")

    def start_mlflow(self) -> None:
        """docs/cluster.md's command (its own session, so that it and its workers stop together)."""
        log = open(self.root / "mlflow-server.log", "a")  # noqa: SIM115 (the server holds it)
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", self.backend,
             "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**ENV, "PGPASSWORD": DB_PASSWORD})
        log.close()
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("mlflow server exited:\n" + self.log()[-3000:])
            try:
                if wait_http(f"{self.url}/health", timeout=1) == 200:
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("mlflow server did not answer /health:\n" + self.log()[-3000:])

    def stop_mlflow(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):  # gone at once, as a crashed server is
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.stop_mlflow()
        if (self.root / "data" / "postmaster.pid").exists() and \
                self.pg_ctl("-m", "fast", "-w", "stop", check=False).returncode != 0:
            self.pg_ctl("-m", "immediate", "-w", "stop", check=False)

    def log(self) -> str:
        path = self.root / "mlflow-server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.url)

    def dump(self) -> str:
        """The whole MLflow database as SQL text."""
        return subprocess.run(
            [str(self.bin / "pg_dump"), "-h", "127.0.0.1", "-p", str(self.pg_port), "-U",
             DB_USER, DB_NAME], capture_output=True, text=True, timeout=120, check=True,
            env={**os.environ, "PGPASSWORD": DB_PASSWORD}).stdout


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    missing = [what for what, ok in (
        ("PostgreSQL (make postgres)", PG_BINS),
        ("the Debian data set (make data)", not data.find_files(data.SYSTEM_DIR)[1]))
        if not ok]
    try:
        import psycopg  # noqa: F401 (the `server` extra)
    except ImportError:
        missing.append("psycopg (pip install -e '.[server]')")
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"missing {', '.join(missing)}: the set-up should install it")
        pytest.skip(f"missing {', '.join(missing)}")
    # not under pytest's tmp folder: the postgres user must reach the cluster's folder
    root = Path(tempfile.mkdtemp(prefix="tunefuse-pg-"))
    os.chmod(root, 0o700)
    srv = Server(root, tmp_path_factory.mktemp("mlartifacts"))
    try:
        srv.start_postgres()
        srv.start_mlflow()
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(root, ignore_errors=True)


def command(module: str, *args, timeout: float = 300):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=ENV)


class Study:
    """What the module's commands printed and took."""

    outputs: list[str]
    offline: tuple[int, str, str, float]  # exit code, stdout, stderr, seconds
    offline_state: dict
    resumed: subprocess.CompletedProcess
    report: subprocess.CompletedProcess
    ws: Path


NAME = "srv-grid-cnn"


@pytest.fixture(scope="module")
def study(server, tmp_path_factory) -> Study:
    """A smoke grid (2 trials of 2 epochs, one at a time) against
    `--tracking-uri http://USER:PASSWORD@127.0.0.1:PORT`; the server is killed once the first
    epoch is logged, so the rest of trial 1 and all of trial 2 go unrecorded (the server is
    started again on the same database and port once the search said it is offline). Then the
    same command runs with --resume, and the report ships the best trial as the registered
    model (one member: this is about the server, not fusion, and each member's inference on the
    10,000 test images is the cost here)."""
    tmp = tmp_path_factory.mktemp("study")
    ws = tmp / "ws"
    uri = f"http://tunefuse:{HTTP_PASSWORD}@127.0.0.1:{server.port}"
    args = ["--model", "cnn", "--profile", "smoke", "--train-size", "300", "--name", NAME,
            "--batch-sizes", "64,128", "--epochs", "2", "--max-concurrent", "1",
            "--scheduler", "none", "--workspace", str(ws), "--tracking-uri", uri,
            "--num-cpus", "2", "--no-dashboard"]
    result = Study()
    client = server.client()
    started = time.time()
    with open(tmp / "stdout", "w") as out, open(tmp / "stderr", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "search.grid", *args], cwd=ROOT,
                                stdout=out, stderr=err, env=ENV)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:  # the first epoch is logged
            exp = client.get_experiment_by_name(NAME)
            if exp and client.search_runs([exp.experiment_id], "metrics.epoch >= 1"):
                break
            time.sleep(0.3)
        server.stop_mlflow()
        # once the search has said it is offline it never calls MLflow again in this run:
        # the server comes back (same database and port) while the trials still train
        while proc.poll() is None and "MLflow offline" not in (tmp / "stderr").read_text():
            time.sleep(0.3)
        server.start_mlflow()
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    result.offline = (proc.returncode, (tmp / "stdout").read_text(),
                      (tmp / "stderr").read_text(), time.time() - started)
    result.offline_state = json.loads((ws / "experiments" / f"{NAME}.json").read_text())

    result.resumed = command("search.grid", *args, "--resume")
    result.report = command("analysis.report", "--workspace", str(ws), "--tracking-uri", uri,
                            "--experiments", NAME, "--top-k", "1", "--name", "srv",
                            "--bootstrap", "200")
    result.ws = ws
    return result


def trial_runs(client):
    exp = client.get_experiment_by_name(NAME)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("kind") == "grid"]
    return parents, [r for r in runs if r.data.tags.get("kind") == "trial"]


def test_a_search_outlives_its_tracking_server(server, study):
    """Killed mid-search, the server is named once on stderr; training goes on to the end."""
    code, out, err, took = study.offline
    assert code == 0, out[-3000:] + err[-3000:]
    lines = [ln for ln in err.splitlines() if "MLflow offline" in ln]
    assert len(lines) == 1, err[-3000:]
    # the kill lands between two requests (Connection refused) or during one (the connection
    # closed, or whatever urllib3 gives as the cause): the reason in a few words either way
    reason = study.offline_state["mlflow_offline"]["reason"]
    assert "API request" not in reason and len(reason) < 80, reason
    assert f"tracking server http://tunefuse:***@127.0.0.1:{server.port} stopped answering " \
           f"({reason})" in lines[0]
    assert "run the same command with --resume" in lines[0]
    assert out.count(" finished ") >= 2 and "best: val_acc" in out  # both trials trained
    assert took < 240, took  # nothing waited on the dead server


def test_resume_records_what_was_missed(server, study):
    out = study.resumed
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "MLflow offline" not in out.stderr
    assert "recorded in MLflow what it had missed" in out.stdout
    client = server.client()
    parents, trials = trial_runs(client)
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["trials_finished"] == "2"
    assert "best_val_acc" in parent.data.metrics
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:")  # served by the server
    # one run per trial, every epoch once, the best checkpoint, the final status
    assert len(trials) == 2 and len({t.data.tags["trial_id"] for t in trials}) == 2
    assert any(t.data.tags.get("backfilled") == "true" for t in trials)
    for t in trials:
        assert t.info.status == "FINISHED"
        assert t.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert t.data.params["batch_size"] in ("64", "128")
        for key in ("val_acc", "train_loss", "epoch"):
            steps = [m.step for m in client.get_metric_history(t.info.run_id, key)]
            assert steps == [1, 2], (key, steps)
        assert int(t.data.tags["best_epoch"]) in (1, 2) and "best_val_acc" in t.data.metrics
        assert t.data.tags["best_checkpoint"] == "best_checkpoint/checkpoint.pt"
    state = json.loads((study.ws / "experiments" / f"{NAME}.json").read_text())
    assert "mlflow_offline" not in state


def test_report_and_model_through_the_server(server, study, tmp_path):
    out = study.report
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client = server.client()
    _, trials = trial_runs(client)
    for t in trials:  # the checkpoints come back through the server
        local = client.download_artifacts(t.info.run_id, "best_checkpoint/checkpoint.pt",
                                          str(tmp_path / t.info.run_id))
        assert Path(local).stat().st_size > 0
    assert list(server.artifacts.rglob("checkpoint.pt"))  # in the server's artifact store,
    assert not list((study.ws / "mlartifacts").rglob("checkpoint.pt"))  # not the workspace
    summary = json.loads((study.ws / "reports" / "srv" / "summary.json").read_text())
    fusion = client.get_run(summary["mlflow"]["run_id"])
    assert fusion.info.status == "FINISHED"
    assert {m["run_id"] for m in summary["members"]} <= {t.info.run_id for t in trials}
    assert [v.run_id for v in client.search_model_versions("name = 'tunefuse-ensemble'")] \
        == [fusion.info.run_id]
    assert summary["tracking_uri"] == f"http://tunefuse:***@127.0.0.1:{server.port}"


def test_a_password_in_the_tracking_uri_is_written_nowhere(server, study):
    """Not printed, not in any file of the workspace (state, Ray results, report, caches) or
    the artifact store, not in any row of the database (params, tags, metrics, models)."""
    _, out, err, _ = study.offline
    for text in (out, err, study.resumed.stdout, study.resumed.stderr, study.report.stdout,
                 study.report.stderr):
        assert HTTP_PASSWORD not in text
    assert "tunefuse:***@" in out
    secret = HTTP_PASSWORD.encode()
    for folder in (study.ws, server.artifacts):
        files = [p for p in folder.rglob("*") if p.is_file()]
        assert files and not [p for p in files if secret in p.read_bytes()]
    assert HTTP_PASSWORD not in server.dump()


# --- without a server -------------------------------------------------------------------------

def test_an_unreachable_store_is_said_once_and_never_waited_on(capsys):
    """The lineage callback against a port where nothing listens: every hook returns at once,
    one line says so, and what Tune pickles of the callback holds no password."""
    import pickle
    from types import SimpleNamespace

    from search.lineage import MLflowLineage
    from search.offline import Offline

    uri = f"http://tunefuse:{HTTP_PASSWORD}@127.0.0.1:{free_port()}"
    offline = Offline()  # the command's (search/context.py RunContext)
    lineage = MLflowLineage(uri, "1", "parent", offline=offline)
    trial = SimpleNamespace(trial_id="abc12_00000", config={"model": "cnn", "batch_size": 64,
                                                            "epochs": 2}, error_file=None)
    started = time.time()
    try:
        lineage.on_trial_start(0, [], trial)
        for epoch in (1, 2):
            lineage.on_trial_result(0, [], trial, {"epoch": epoch, "val_acc": 0.5})
        lineage.on_trial_complete(0, [], trial)
        assert offline.is_offline(uri)
        assert offline.tracked(uri, pytest.fail, "an offline store is not called") is None
    finally:
        offline.back_online(uri)
    assert time.time() - started < 10
    err = capsys.readouterr().err
    assert err.count("MLflow offline") == 1, err
    assert "tunefuse:***@127.0.0.1" in err and "(Connection refused)" in err
    assert HTTP_PASSWORD not in err
    assert HTTP_PASSWORD.encode() not in pickle.dumps(lineage)


def test_the_pipeline_stops_after_a_stage_that_trained_without_mlflow(tmp_path, monkeypatch,
                                                                      capsys):
    """Its later stages read MLflow: the pipeline stops (exit 3), the stage stays to do, so
    --resume with the server back records it before going on."""
    from search.profiles import PROFILES
    from search.workspace import Workspace
    from trainables.cli import EXIT_OFFLINE, NORMAL
    from tunefuse import stages as pipeline

    ws = Workspace.open(tmp_path / "ws")
    stages = pipeline.plan("p", ["cnn"], SimpleNamespace(no_weights=True))
    store = pipeline.PipelineState(ws, "p")
    state = {"name": "p", "stages": [{"name": s.name, "kind": s.kind, "model": s.model,
                                      "status": "pending", "seconds": 0.0} for s in stages]}

    def trained_offline(ctx, stage, resume):
        ctx.ws.save_state(stage.name, {"mlflow_offline": {"reason": "Connection refused"}})
        return 0

    monkeypatch.setattr(pipeline, "run_stage", trained_offline)
    code = pipeline.run_pipeline(SimpleNamespace(verbosity=NORMAL, time_budget=None), ws, None,
                                 store, state, stages, PROFILES["smoke"])
    assert code == EXIT_OFFLINE == 3
    assert [s["status"] for s in store.load()["stages"]] == ["failed", "pending"]
    assert "MLflow went away (above); when it is back, re-run the same command with " \
           "--resume" in capsys.readouterr().err


@pytest.mark.parametrize("cause, reason", [
    ("Failed to establish a new connection: [Errno 111] Connection refused", "Connection refused"),
    ("ProtocolError('Connection aborted.', RemoteDisconnected('Remote end closed connection "
     "without response'))", "the connection was closed during a request"),
    ("ResponseError('too many 500 error responses')", "too many 500 error responses"),
    ("ConnectTimeoutError(<urllib3.connection.HTTPConnection object at 0x7f>, 'Connection to "
     "127.0.0.1 timed out. (connect timeout=10)')", "Connection to 127.0.0.1 timed out."),
])
def test_the_offline_reason_is_a_few_words(cause, reason):
    """What a search says when its server went away: the cause urllib3 names, not MLflow's
    first line ("API request to ... failed with exception HTTPConnectionPool(...)")."""
    from search import offline

    error = Exception(f"API request to http://u:pw@127.0.0.1:5000/api/2.0/mlflow/runs/log-batch "
                      f"failed with exception HTTPConnectionPool(host='127.0.0.1', port=5000): "
                      f"Max retries exceeded with url: /api/2.0/mlflow/runs/log-batch (Caused by "
                      f"{cause})")
    assert offline._why(error) == reason
