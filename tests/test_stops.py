"""SIGTERM (`ray job stop`, `docker stop`, Kubernetes) at random instants, as Ctrl-C.

Every command handles SIGTERM as Ctrl-C (trainables/cli.py). The searches are stopped at
random instants by bench/chaos.py --signal term (tests/test_windows.py: a grid in CI, the
class-weight search and the pipeline in the soak run) and by the Ray Jobs test
(tests/test_cluster.py); here the report: stopped at seeded random instants of its run, it
exits 130 with one line, publishes nothing half-written, leaves its fusion run KILLED (never
RUNNING) and the workspace's earlier report as it was; run again, it completes.
"""

from __future__ import annotations

import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, need_real_data, run_module

pytestmark = pytest.mark.slow

REPORT = ("analysis.report", "--name", "stopped")


def fusion_runs(ws: Path, name: str) -> list[str]:
    """The statuses of the runs named ``name`` (a report's fusion runs)."""
    with sqlite3.connect(ws / "mlflow.db", timeout=30) as con:
        return [s for (s,) in con.execute("select status from runs where name = ?", (name,))]


def running(ws: Path) -> int:
    with sqlite3.connect(ws / "mlflow.db", timeout=30) as con:
        return con.execute("select count(*) from runs where status = 'RUNNING'").fetchone()[0]


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> tuple[Path, float]:
    """A workspace with one finished smoke grid and one report, and how long a report took."""
    need_real_data()
    ws = tmp_path_factory.mktemp("stops") / "ws"
    out = run_module("search.grid", "--model", "cnn", "--profile", "smoke", "--train-size",
                     "300", "--batch-sizes", "64", "--epochs", "1", "--scheduler", "none",
                     "--num-cpus", "1", "--no-dashboard", "--workspace", str(ws))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    t0 = time.time()
    out = run_module("analysis.report", "--name", "earlier", "--workspace", str(ws))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return ws, time.time() - t0


@pytest.mark.parametrize("seed", [0, 1])
def test_a_report_stopped_with_sigterm_at_a_random_instant(searched, tmp_path, seed):
    template, length = searched
    ws = tmp_path / "ws"
    shutil.copytree(template, ws)
    earlier = {p.name: p.read_bytes() for p in (ws / "reports" / "earlier").iterdir()
               if p.is_file()}
    instant = random.Random(seed).uniform(0.5, length)
    proc = subprocess.Popen([sys.executable, "-m", *REPORT, "--workspace", str(ws)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        proc.wait(timeout=instant)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    code = proc.returncode
    # 0: it had ended; -SIGTERM: still importing, before any command sets its handler
    assert code in (0, 130, -signal.SIGTERM), (code, err[-3000:])
    if code == 130:
        assert err.strip().splitlines()[-1] in (
            "report stopped interrupted; nothing of it was published, earlier reports and "
            "runs are as they were: run it again",
            "interrupted (Ctrl-C or SIGTERM); what it had recorded is kept: run the same "
            "command again (a search that had started: with --resume)"), err[-3000:]
        assert "Traceback" not in err
    assert running(ws) == 0  # the fusion run KILLED (or FINISHED), never RUNNING
    reports = sorted(p.name for p in (ws / "reports").iterdir())
    assert reports == (["earlier", "stopped"] if code == 0 else ["earlier"])  # no .partial
    assert {p.name: p.read_bytes() for p in (ws / "reports" / "earlier").iterdir()
            if p.is_file()} == earlier
    assert set(fusion_runs(ws, "stopped")) <= ({"FINISHED"} if code == 0 else {"KILLED"})
    again = run_module(*REPORT, "--workspace", str(ws))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert (ws / "reports" / "stopped" / "report.html").exists()
    # one run a report: the one run again, and the stopped one if it had ended before the stop
    assert fusion_runs(ws, "stopped").count("FINISHED") == 1 + (code == 0)
