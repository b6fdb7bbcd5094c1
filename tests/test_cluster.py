"""A real two-node Ray cluster on this machine: a head and a second node started with `ray start`
as docs/cluster.md says, a grid search joined to it with --address and a shared --storage-path, and
the results showing that trials ran on both nodes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, VENV_BIN, free_port, need_real_data

RAY = str(VENV_BIN / "ray")
# Nodes that join a cluster, and drivers, send Ray's token only in token mode (the head turns it
# on by itself); the token is the one in ~/.ray/auth_token, as `ray get-auth-token` prints it.
ENV = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}


def ray_start(log: Path, *args) -> subprocess.Popen:
    """A node; its workers wait at a trial's start until both trials have started (they inherit
    the node's environment, not the driver's), so that neither trial ends before the other has
    an actor of its own: Tune would give it the ended one's (reuse_actors), on the same node."""
    env = {**ENV, "TUNEFUSE_RENDEZVOUS": f"{log.parent / 'rendezvous'}:2"}
    return subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """What Ctrl-C on `ray start --block` does: the node drains and stops its processes."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything of the node's still there


def alive_nodes(address: str) -> list[str]:
    out = subprocess.run([RAY, "list", "nodes", "--address", address, "--format", "json",
                          "--filter", "state=ALIVE"], capture_output=True, text=True,
                         env=ENV, timeout=60)
    try:
        return sorted(n["node_id"] for n in json.loads(out.stdout))
    except (json.JSONDecodeError, KeyError):
        return []


@pytest.fixture
def cluster(tmp_path):
    need_real_data()  # before any node starts
    port, dash = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    head = ray_start(tmp_path / "head.log", "--head", "--num-cpus", "1", "--port", str(port),
                     "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
                     "--dashboard-port", str(dash))
    nodes = [head]
    try:
        deadline = time.time() + 120
        while not alive_nodes(f"http://127.0.0.1:{dash}"):
            assert head.poll() is None and time.time() < deadline, \
                (tmp_path / "head.log").read_text()[-3000:]
            time.sleep(1)
        nodes.append(ray_start(tmp_path / "node.log", "--address", address, "--num-cpus", "1",
                               "--node-ip-address", "127.0.0.1"))
        while len(ids := alive_nodes(f"http://127.0.0.1:{dash}")) < 2:
            assert nodes[1].poll() is None and time.time() < deadline, \
                (tmp_path / "node.log").read_text()[-3000:]
            time.sleep(1)
        yield address, ids
    finally:
        for proc in reversed(nodes):
            stop(proc)


@pytest.mark.slow
def test_a_grid_runs_its_trials_on_both_nodes_of_a_cluster(cluster, tmp_path):
    from mlflow.tracking import MlflowClient

    address, node_ids = cluster
    # first as a new user tried it: without RAY_AUTH_MODE=token the head refuses the driver,
    # and the one line says so (Ray's own reason is only in its client's retry warnings)
    refused = subprocess.run(
        [sys.executable, "-m", "search.grid", "--model", "cnn", "--profile", "smoke",
         "--address", address, "--workspace", str(tmp_path / "refused")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={k: v for k, v in ENV.items() if k != "RAY_AUTH_MODE"})
    assert refused.returncode == 2, refused.stdout[-3000:] + refused.stderr[-3000:]
    assert refused.stderr.splitlines() == [
        f"error: the Ray cluster at {address} refused this driver's token (Ray: "
        "InvalidAuthToken); export RAY_AUTH_MODE=token and the head's token (`ray "
        "get-auth-token` there) as RAY_AUTH_TOKEN"], refused.stderr[-3000:]
    shared = tmp_path / "shared" / "ray_results"
    out = subprocess.run(
        [sys.executable, "-m", "search.grid", "--model", "cnn", "--profile", "smoke",
         "--train-size", "600", "--batch-sizes", "64,128", "--epochs", "2",
         "--scheduler", "none", "--address", address, "--storage-path", str(shared),
         "--workspace", str(tmp_path / "ws")],
        cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # Tune's own records on the shared storage: every trial says which node ran it
    ran_on = {}
    for result in shared.glob("grid-cnn/*/result.json"):
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        ran_on[result.parent.name] = {r["node_id"] for r in lines}
    assert len(ran_on) == 2 and all(len(ids) == 1 for ids in ran_on.values())
    assert set().union(*ran_on.values()) == set(node_ids)  # one trial on each node
    # and so do their MLflow runs
    client = MlflowClient(f"sqlite:///{tmp_path / 'ws' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("grid-cnn")
    trials = [r for r in client.search_runs([exp.experiment_id])
              if r.data.tags.get("kind") == "trial"]
    assert sorted(r.data.tags["node_id"] for r in trials) == node_ids
    assert all(r.info.status == "FINISHED" for r in trials)
    assert re.search(r"experiment grid-cnn: .*Ray dashboard http://127\.0\.0\.1:\d+",
                     out.stdout)
