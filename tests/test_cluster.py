"""A real two-node Ray cluster on this machine: a head and a second node started with `ray start`
as docs/cluster.md says, a grid search joined to it with --address and a shared --storage-path, and
the results showing that trials ran on both nodes."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, VENV_BIN, free_port, need_real_data

RAY = str(VENV_BIN / "ray")
# Nodes that join a cluster, and drivers, send Ray's token only in token mode (the head turns it
# on by itself); the token is the one in ~/.ray/auth_token, as `ray get-auth-token` prints it.
ENV = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}


def ray_start(log: Path, *args, env: dict | None = None) -> subprocess.Popen:
    """A node; its workers wait at a trial's start until both trials have started (they inherit
    the node's environment, not the driver's), so that neither trial ends before the other has
    an actor of its own: Tune would give it the ended one's (reuse_actors), on the same node."""
    env = {**ENV, "TUNEFUSE_RENDEZVOUS": f"{log.parent / 'rendezvous'}:2", **(env or {})}
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


@contextlib.contextmanager
def two_nodes(tmp_path: Path, node_env: dict | None = None):
    """A head and a second node, one CPU each; the second node's processes get ``node_env``.
    (the cluster's address, [the two node ids], the second node's `ray start` process)."""
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
                               "--node-ip-address", "127.0.0.1", env=node_env))
        while len(ids := alive_nodes(f"http://127.0.0.1:{dash}")) < 2:
            assert nodes[1].poll() is None and time.time() < deadline, \
                (tmp_path / "node.log").read_text()[-3000:]
            time.sleep(1)
        yield address, ids, nodes[1]
    finally:
        for proc in reversed(nodes):
            stop(proc)


def two_node_grid(address: str, shared: Path, ws: Path, epochs: str) -> list[str]:
    """A smoke grid of batch sizes 64 and 128 on the cluster at ``address``, its Tune storage
    ``shared`` (both nodes see it)."""
    return [sys.executable, "-m", "search.grid", "--model", "cnn", "--profile", "smoke",
            "--train-size", "600", "--batch-sizes", "64,128", "--epochs", epochs,
            "--scheduler", "none", "--address", address, "--storage-path", str(shared),
            "--workspace", str(ws)]


def first_of(*waits, timeout: float = 600):
    """Run the blocking ``waits`` in threads and return (index, result) of the first to return:
    the test wakes on whichever event comes first, and fails if none comes in ``timeout``."""
    done: queue.Queue = queue.Queue()
    for i, wait in enumerate(waits):
        threading.Thread(target=lambda i=i, w=wait: done.put((i, w())), daemon=True).start()
    try:
        return done.get(timeout=timeout)
    except queue.Empty:
        pytest.fail(f"none of {len(waits)} events came in {timeout:g} s")


@pytest.fixture
def cluster(tmp_path):
    with two_nodes(tmp_path) as (address, ids, _):
        yield address, ids


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
    out = subprocess.run(two_node_grid(address, shared, tmp_path / "ws", "2"), cwd=ROOT,
                         capture_output=True, text=True, env=ENV, timeout=600)
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


def kill_node(proc: subprocess.Popen) -> None:
    """A node lost whole: SIGKILL to its `ray start`, its raylet and every worker and agent of
    it at once, as a machine that loses power (nothing drains, nothing is told)."""
    import psutil

    node = psutil.Process(proc.pid)
    for p in [node, *node.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    proc.wait()


@pytest.mark.slow
def test_a_node_lost_mid_trial_the_trial_continues_on_the_other(tmp_path):
    """A two-node cluster, storage both nodes see (--storage-path). The trial on the second
    node is held as it writes its second checkpoint (a failpoint in that node's environment),
    and the node is killed whole: Tune retries the trial on the head from its first checkpoint
    (epoch 1, not from scratch), the search completes, MLflow holds each trial once with each
    epoch once."""
    from mlflow.tracking import MlflowClient

    held = tmp_path / "held.fifo"  # the failpoint writes its line into it: an event
    os.mkfifo(held)
    hold = {"TUNEFUSE_FAILPOINT": "checkpoint-written@2", "TUNEFUSE_FAILPOINT_FILE": str(held)}
    with two_nodes(tmp_path, hold) as (address, (one, two), node):
        shared = tmp_path / "shared" / "ray_results"
        driver = subprocess.Popen(
            two_node_grid(address, shared, tmp_path / "ws", "3"), cwd=ROOT,
            stdout=open(tmp_path / "driver.log", "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT, env=ENV)
        try:
            which, line = first_of(lambda: held.read_text(), driver.wait)
            assert which == 0, (tmp_path / "driver.log").read_text()[-3000:]
            lost = json.loads(line)["trial"]
            kill_node(node)
            assert driver.wait(timeout=600) == 0, (tmp_path / "driver.log").read_text()[-3000:]
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
    text = (tmp_path / "driver.log").read_text()
    assert "is not shared with" not in text  # both nodes saw the storage path (a probe)
    # Tune's own record of the lost trial: epoch 1 on the lost node, then on the other one
    # from epoch 2 (its first checkpoint), not from scratch
    (folder,) = [p for p in shared.glob("grid-cnn/*") if lost in p.name]
    results = [json.loads(line) for line in (folder / "result.json").read_text().splitlines()
               if line.strip()]
    lost_node = results[0]["node_id"]
    other = ({one, two} - {lost_node}).pop()
    after = [r["epoch"] for r in results if r["node_id"] == other]
    assert after and after[0] == 2 and after[-1] == 3, [(r["epoch"], r["node_id"])
                                                        for r in results]
    client = MlflowClient(f"sqlite:///{tmp_path / 'ws' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("grid-cnn")
    runs = client.search_runs([exp.experiment_id])
    trials = [r for r in runs if r.data.tags.get("kind") == "trial"]
    assert len(trials) == 2 and {r.info.status for r in runs} == {"FINISHED"}, text[-3000:]
    for run in trials:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert sorted(steps) == [1, 2, 3], (run.info.run_name, steps)


# --- a search submitted as a Ray Job --------------------------------------------------------------

# what the working-dir upload leaves out besides .gitignore's: the venv, the runs, the data
EXCLUDES = [".venv", "outputs", ".fmnist", "tests/output", ".git"]


@pytest.fixture
def head(tmp_path):
    """One `ray start --head` node, started from the project's venv (so that `python` in a
    job's entrypoint is that venv's: docs/cluster.md, "Run it as a service"), its Jobs API
    (the dashboard) on 127.0.0.1 with token authentication; (dashboard URL, node id, the
    cluster's address)."""
    need_real_data()
    port, dash = free_port(), free_port()
    env = {**ENV, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
           "RAY_JOB_STOP_WAIT_TIME_S": "60"}
    # the ports a head takes besides these have fixed defaults (the dashboard agent's 52365,
    # through which the Jobs API submits): free ones, or a cluster of another test running
    # beside this one holds them, and the Jobs API answers "No available agent" for ever
    ports = [f"--{flag}={free_port()}" for flag in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port", "ray-client-server-port")]
    proc = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", "--head",
                             "--num-cpus", "2", "--port", str(port), "--node-ip-address",
                             "127.0.0.1", "--dashboard-host", "127.0.0.1", "--dashboard-port",
                             str(dash), *ports], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    started = threading.Event()

    def read():  # the node's output into head.log; the event: `ray start` says it is up
        with open(tmp_path / "head.log", "w") as log:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if "Ray runtime started" in line:
                    started.set()
        started.set()  # it ended: the assertion below says so

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{dash}"
    try:
        assert started.wait(180) and proc.poll() is None, \
            (tmp_path / "head.log").read_text()[-3000:]
        ids = alive_nodes(url)
        assert len(ids) == 1, ids
        yield url, ids[0], f"127.0.0.1:{port}"
    finally:
        stop(proc)
        reader.join(60)


def ray_job(*args, env=ENV, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, "job", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=timeout)


def val_acc_by_trial(ws: Path, experiment: str = "grid-cnn",
                     tracking_uri: str | None = None) -> dict[str, list]:
    """Each trial run of ``experiment`` (in the workspace's store, or ``tracking_uri``), by its
    name less Tune's id: [its val_acc, epoch by epoch]."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri or f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    out: dict[str, list] = {}
    for run in client.search_runs([exp.experiment_id], "tags.kind = 'trial'"):
        name = run.info.run_name.rsplit("-", 1)[0]
        assert name not in out, f"{name} recorded twice"
        out[name] = [m.value for m in sorted(client.get_metric_history(run.info.run_id,
                                                                       "val_acc"),
                                             key=lambda m: (m.step, m.timestamp))]
    return out


def grid_job(ws, *more, env_vars: dict | None = None) -> list[str]:
    """`ray job submit`'s arguments for a smoke grid (4 trials) with workspace ``ws``, its
    runtime environment's ``env_vars`` for its driver and its trials' workers."""
    runtime_env = {"excludes": EXCLUDES, **({"env_vars": env_vars} if env_vars else {})}
    return ["--working-dir", str(ROOT), "--runtime-env-json", json.dumps(runtime_env), "--",
            "python", "-m", "search.grid", "--model", "cnn", "--profile", "smoke",
            "--train-size", "600", "--batch-sizes", "32,64", "--epochs", "2,3",
            "--scheduler", "none", "--workspace", str(ws), *more]


def finished_trials(client) -> int:
    exp = client.get_experiment_by_name("grid-cnn")
    if exp is None:
        return 0
    return len(client.search_runs([exp.experiment_id], "tags.kind = 'trial' and "
                                  "attributes.status = 'FINISHED'"))


@pytest.mark.slow
def test_a_grid_submitted_as_a_ray_job_runs_on_that_cluster_stops_and_resumes(head, tmp_path):
    """`ray job submit` of a smoke grid: the job's driver joins the cluster the job runs on
    ($RAY_ADDRESS; before, it started a second cluster inside the job, whose workers could not
    fetch the job's working dir) and runs to SUCCEEDED, its trials on the head's node, its logs
    the progress lines a pipe shows, its parent run tagged with the submission id. Without the
    token the Jobs API refuses a submission. The same job stopped with `ray job stop` leaves no
    run RUNNING, and resubmitted with --resume ends with every trial once and the numbers of
    the uninterrupted job, epoch by epoch."""
    from mlflow.tracking import MlflowClient

    url, node, _ = head
    no_token = {k: v for k, v in ENV.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    refused = ray_job("submit", "--address", url, "--submission-id", "refused", "--no-wait",
                      "--", "python", "-c", "pass", env=no_token, timeout=120)
    assert refused.returncode != 0, refused.stdout[-2000:]
    assert "Unauthorized: Missing authentication token" in refused.stdout + refused.stderr, \
        refused.stdout[-2000:] + refused.stderr[-2000:]
    listed = ray_job("list", "--address", url, timeout=120)
    assert listed.returncode == 0 and "refused" not in listed.stdout, listed.stdout[-2000:]

    whole = tmp_path / "whole"
    out = ray_job("submit", "--address", url, "--submission-id", "grid-whole", *grid_job(whole))
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "Job 'grid-whole' succeeded" in out.stdout, out.stdout[-3000:]
    logs = ray_job("logs", "--address", url, "grid-whole", timeout=120).stdout
    assert re.search(r"^\[grid-cnn\] cnn-b\d+-e[23]-\w+: finished, [23] epochs; best val_acc",
                     logs, re.M), logs[-3000:]
    assert re.search(r"^trial\s+batch_size\s+epochs\s+status", logs, re.M), logs[-3000:]
    assert alive_nodes(url) == [node]  # no second cluster
    client = MlflowClient(f"sqlite:///{whole / 'mlflow.db'}")
    exp = client.get_experiment_by_name("grid-cnn")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.data.tags.get("kind") != "trial"]
    trials = [r for r in runs if r.data.tags.get("kind") == "trial"]
    assert len(parent) == 1 and parent[0].data.tags["ray_job_submission_id"] == "grid-whole"
    assert len(trials) == 4 and all(r.info.status == "FINISHED" for r in trials)
    assert {r.data.tags["node_id"] for r in trials} == {node}

    # the same grid stopped with `ray job stop` while the 3-epoch trials are held at their
    # last checkpoint (a failpoint in the job's environment: its driver and trial workers
    # inherit it), once the 2-epoch trials, which Tune starts first, have finished;
    # resubmitted with --resume, no failpoint
    stopped = tmp_path / "stopped"
    hold = {"TUNEFUSE_FAILPOINT": "checkpoint-written:epoch=3"}
    out = ray_job("submit", "--address", url, "--submission-id", "grid-stopped", "--no-wait",
                  *grid_job(stopped, env_vars=hold))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    client = MlflowClient(f"sqlite:///{stopped / 'mlflow.db'}")
    # the job cannot end while its 3-epoch trials are held, so its followed logs (however
    # late) show both 2-epoch trials' ends before anything else can happen
    follow = subprocess.Popen([RAY, "job", "logs", "--address", url, "--follow",
                               "grid-stopped"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=ENV)
    watchdog = threading.Timer(600, follow.kill)  # a job that never logs them: the test fails
    watchdog.start()
    try:
        ends = 0
        for line in follow.stdout:  # each line as the job prints it
            ends += bool(re.match(r"\[grid-cnn\] \S+-e2-\S+: finished", line))
            if ends == 2:
                break
    finally:
        watchdog.cancel()
        follow.kill()
        follow.wait()
    assert finished_trials(client) == 2, "the job's logs ended before its 2-epoch trials did"
    out = ray_job("stop", "--address", url, "grid-stopped", timeout=180)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    status = ray_job("status", "--address", url, "grid-stopped", timeout=120).stdout
    assert "Job 'grid-stopped' was stopped" in status, status[-2000:]
    logs = ray_job("logs", "--address", url, "grid-stopped", timeout=120).stdout
    assert "experiment grid-cnn interrupted; its state is saved" in logs, logs[-3000:]
    exp = client.get_experiment_by_name("grid-cnn")
    left = [r.info.status for r in client.search_runs([exp.experiment_id])]
    assert "FINISHED" in left and "RUNNING" not in left, left
    out = ray_job("submit", "--address", url, "--submission-id", "grid-resumed",
                  *grid_job(stopped, "--resume"))
    assert out.returncode == 0 and "Job 'grid-resumed' succeeded" in out.stdout, \
        out.stdout[-4000:] + out.stderr[-2000:]
    assert val_acc_by_trial(stopped) == val_acc_by_trial(whole)  # each trial once, same numbers
    parent = [r for r in client.search_runs([exp.experiment_id])
              if r.data.tags.get("kind") != "trial"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert parent[0].data.tags["ray_job_submission_id"] == "grid-resumed"


# --- several searches at once on one cluster ------------------------------------------------------

@pytest.fixture
def mlflow_server(tmp_path):
    """An MLflow tracking server on 127.0.0.1 (sqlite behind it), as searches share one."""
    from conftest import wait_http

    port = free_port()
    log = open(tmp_path / "mlflow-server.log", "w")  # noqa: SIM115 (the server holds it)
    proc = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri",
         f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
         str(tmp_path / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env=ENV)
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_http(f"{url}/health", timeout=120) == 200
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def small_grid(name: str, seed: int, ws: Path, *more) -> list[str]:
    """A smoke grid of two 2-epoch trials named ``name`` on the data of ``seed``, one trial at
    a time on one CPU."""
    return ["python", "-m", "search.grid", "--model", "cnn", "--profile", "smoke", "--name",
            name, "--seed", str(seed), "--train-size", "600", "--batch-sizes", "32,64",
            "--epochs", "2", "--scheduler", "none", "--cpus-per-trial", "1",
            "--max-concurrent", "1", "--workspace", str(ws), *more]


@pytest.mark.slow
def test_two_searches_at_once_on_one_cluster_and_one_mlflow_server(head, mlflow_server,
                                                                    tmp_path):
    """Two searches submitted together as Ray Jobs to one cluster, recording to one MLflow
    server: both finish, each with the per-epoch numbers of its solo run, each progress view
    with its own trials, each search in its own MLflow experiment tagged with its workspace.
    They run at the same time by construction: their first trials wait for each other at their
    start (TUNEFUSE_RENDEZVOUS in the jobs' environment), one on each of the two CPUs."""
    from mlflow.tracking import MlflowClient

    url, _, address = head
    env = {**ENV, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    searches = {"grid-a": 0, "grid-b": 1}
    for name, seed in searches.items():  # each alone first, with --address, a store of its own
        out = subprocess.run(small_grid(name, seed, tmp_path / f"solo-{name}", "--address",
                                        address), cwd=ROOT, capture_output=True, text=True,
                             env=env, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    together = {name: tmp_path / f"together-{name}" for name in searches}
    runtime_env = json.dumps({"excludes": EXCLUDES, "env_vars": {
        "TUNEFUSE_RENDEZVOUS": f"{tmp_path / 'rendezvous'}:2"}})
    for name, seed in searches.items():
        job = ray_job("submit", "--address", url, "--submission-id", name, "--no-wait",
                      "--working-dir", str(ROOT), "--runtime-env-json", runtime_env, "--",
                      *small_grid(name, seed, together[name], "--tracking-uri", mlflow_server))
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-2000:]
    client = MlflowClient(mlflow_server)
    for name in searches:
        logs = ray_job("logs", "--address", url, "--follow", name).stdout  # until it ends
        status = ray_job("status", "--address", url, name).stdout
        assert f"Job '{name}' succeeded" in status, logs[-3000:]
        assert val_acc_by_trial(together[name], name, mlflow_server) == \
            val_acc_by_trial(tmp_path / f"solo-{name}", name)
        # its progress view: its own two trials, under their MLflow runs' names
        exp = client.get_experiment_by_name(name)
        runs = client.search_runs([exp.experiment_id])
        trials = {r.info.run_name for r in runs if r.data.tags.get("kind") == "trial"}
        shown = set(re.findall(rf"^\[{name}\] (\S+): finished", logs, re.M))
        assert shown == trials and len(trials) == 2, (shown, trials)
        (parent,) = [r for r in runs if r.data.tags.get("kind") == "grid"]
        assert parent.data.tags["workspace"] == str(together[name])
        assert parent.data.tags["ray_job_submission_id"] == name
        assert {r.info.status for r in runs} == {"FINISHED"}
    assert val_acc_by_trial(tmp_path / "solo-grid-a", "grid-a") != \
        val_acc_by_trial(tmp_path / "solo-grid-b", "grid-b")  # two searches, not one twice
