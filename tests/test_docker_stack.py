"""docker/ built and run for real, with podman: the image, and the compose cluster running a search.

`make docker-test` runs this module (it is `soak`: the build alone outlasts CI's room). It
builds, with docker/podman/build.sh, a Debian base from Debian's archive, docker/Dockerfile on
it and a PostgreSQL image; checks the image's commands as its non-root user; then brings up
docker/compose.yaml, unchanged, with podman-compose (a copy in a temporary folder beside its
own .env, so a user's docker/.env is never read): PostgreSQL, the MLflow server on it, a Ray
head and a Ray worker, each started once the one before it passes its health check (Debian's
podman-compose 1.0.3 does not wait on `condition: service_healthy` itself). In the head, a
smoke grid with `--address auto --tracking-uri http://mlflow:5000` is interrupted after its
first finished trial; the stack is taken down (volumes kept) and brought up again; the same
command with `--resume` finishes it and `python -m analysis.report` fuses and registers. Every
trial's run is in PostgreSQL, every trial ran on the worker (`node_ip`), the dashboard and
MLflow answer on 127.0.0.1 and on no other address of the host. At the end `down -v` leaves no
container, network or volume of the project (TUNEFUSE_KEEP_VOLUMES=1 keeps the volumes).

Podman's configuration: CONTAINERS_CONF, else docker/podman/containers.conf (runc, cgroupfs,
no default ulimits: what a host without systemd needs).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, free_port

from trainables import data

pytestmark = [pytest.mark.slow, pytest.mark.soak]

PROJECT = "tunefusetest"  # container names: PROJECT_SERVICE_1
IMAGE = os.environ.get("TUNEFUSE_IMAGE", "localhost/tunefuse:podman")
POSTGRES_IMAGE = os.environ.get("POSTGRES_IMAGE", "localhost/tunefuse-postgres:15")
BASE_IMAGE = os.environ.get("BASE_IMAGE", "localhost/tunefuse-base:bookworm")
ORDER = ("postgres", "mlflow", "ray-head", "ray-gpu-worker")  # compose's depends_on chain
READY = {"postgres": "database system is ready to accept connections",  # what each logs once up
         "mlflow": "Application startup complete", "ray-head": "Ray runtime started",
         "ray-gpu-worker": "Ray runtime started"}
ENV = {**os.environ,
       "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF",
                                         str(ROOT / "docker" / "podman" / "containers.conf"))}
GRID = ["python", "-m", "search.grid", "--model", "cnn", "--profile", "smoke",
        "--address", "auto", "--workspace", "/shared/outputs",
        "--tracking-uri", "http://mlflow:5000",
        "--data-dir", "/usr/share/datasets/fashion-mnist"]


def sh(cmd: list[str], *, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}:\n"
                             f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def needs(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} missing: `make docker-test` installs them")
    if os.geteuid() != 0:
        pytest.skip("the podman recipe here runs as root (debootstrap, rootful networks)")


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    """The three images, built by docker/podman/build.sh; its size and time lines."""
    needs("podman", "podman-compose", "debootstrap", "runc", "ip")
    out = sh(["sh", str(ROOT / "docker" / "podman" / "build.sh")], timeout=3600)
    built = dict(re.findall(r"^build\.sh: (\S+) in (.+)$", out.stdout, flags=re.M))
    print("\n".join(f"{k}: {v}" for k, v in built.items()))
    return built


def test_the_image_builds_on_a_debian_base_and_runs_its_commands_as_non_root(images):
    assert set(images) == {IMAGE, POSTGRES_IMAGE}
    def layers(image: str) -> list[str]:
        return json.loads(sh(["podman", "image", "inspect", "--format",
                              "{{json .RootFS.Layers}}", image]).stdout)

    base = layers(BASE_IMAGE)
    assert layers(IMAGE)[:len(base)] == base, "the image is not built on the local Debian base"

    def run(*cmd: str) -> str:
        return sh(["podman", "run", "--rm", "--network", "none", IMAGE, *cmd]).stdout

    assert "--model" in run("python", "-m", "search.grid", "--help")
    assert re.search(r"ray, version 2\.60\.0", run("ray", "--version"))
    assert re.search(r"mlflow, version 3\.17\.2", run("mlflow", "--version"))
    assert run("id", "-u").strip() == "10001"
    versions = json.loads(run("python", "-c", "import json, torch, torchvision, ray, mlflow; "
                              "print(json.dumps([torch.__version__, torchvision.__version__]))"))
    assert [v.split("+")[0] for v in versions] == ["2.14.1", "0.29.1"]  # the Makefile's TORCH


class Stack:
    """docker/compose.yaml under podman-compose, as project PROJECT."""

    def __init__(self, folder: Path, env: dict[str, str]):
        self.folder = folder
        shutil.copy(ROOT / "docker" / "compose.yaml", folder / "compose.yaml")
        (folder / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        self.env = env

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return sh(["podman-compose", "-p", PROJECT, "-f", str(self.folder / "compose.yaml"),
                   *args], timeout=timeout)

    @staticmethod
    def name(service: str) -> str:
        return f"{PROJECT}_{service}_1"

    def up(self) -> None:
        for service in ORDER:  # each once the one it depends on is healthy
            self.compose("up", "-d", "--no-build", service)
            self.wait_healthy(service)

    def down(self, *, volumes: bool) -> None:
        """`down`, and the network with it, as `docker compose down` does (podman-compose 1.0.3
        leaves the network; containers started again on the old one could not resolve each
        other's names for a moment, on a new one they always could)."""
        self.compose("down", *(["-v"] if volumes else []))
        for network in self.leftovers()["networks"]:
            sh(["podman", "network", "rm", network])

    def wait_healthy(self, service: str, timeout: float = 300) -> None:
        """Until the service logs that it is ready (READY), then its own health check must pass
        (podman without systemd has no timer that runs it)."""
        name = self.name(service)
        logs = subprocess.Popen(["podman", "logs", "--follow", name], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=ENV)
        timer = threading.Timer(timeout, logs.kill)
        timer.start()
        seen = []
        try:
            for line in logs.stdout:
                seen.append(line)
                if READY[service] in line:
                    break
            else:  # the container stopped, or the time ran out
                raise AssertionError(f"{service} never logged {READY[service]!r}:\n"
                                     + "".join(seen[-40:]))
        finally:
            timer.cancel()
            logs.kill()
            logs.wait()
        check = sh(["podman", "healthcheck", "run", name], check=False)
        assert check.returncode == 0, f"{service} is ready but its health check fails: " \
            f"{check.stdout}{check.stderr}"

    def exec(self, service: str, *cmd: str, check: bool = True,
             timeout: float = 900) -> subprocess.CompletedProcess:
        return sh(["podman", "exec", self.name(service), *cmd], check=check, timeout=timeout)

    def ip(self, service: str) -> str:
        return sh(["podman", "inspect", "--format",
                   "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                   self.name(service)]).stdout.strip()

    def ray_nodes(self) -> list[dict]:
        """The Ray cluster's live nodes (the worker's "Ray runtime started" comes after its
        raylet registered with the head)."""
        ask = ("import json, ray; ray.init(address='auto', logging_level='ERROR'); "
               "print(json.dumps([{'ip': n['NodeManagerAddress'], "
               "'cpus': n['Resources'].get('CPU', 0)} for n in ray.nodes() if n['Alive']]))")
        out = self.exec("ray-head", "python", "-c", ask).stdout
        return json.loads(out.strip().splitlines()[-1])

    def sql(self, query: str) -> list[list[str]]:
        out = self.exec("postgres", "psql", "-U", "mlflow", "-d", "mlflow", "-At", "-F", "\t",
                        "-c", query).stdout
        return [line.split("\t") for line in out.splitlines() if line]

    def leftovers(self) -> dict[str, list[str]]:
        def names(kind: str, fmt: str) -> list[str]:
            cmd = ["podman", kind, "ls", "--format", fmt]
            if kind == "container":
                cmd.insert(3, "-a")
            lines = sh(cmd).stdout.split()
            return [n for n in lines if n.startswith(PROJECT)]
        return {"containers": names("container", "{{.Names}}"),
                "networks": names("network", "{{.Name}}"),
                "volumes": names("volume", "{{.Name}}")}


@pytest.fixture(scope="module")
def stack(images, tmp_path_factory):
    folder = tmp_path_factory.mktemp("compose")
    stack = Stack(folder, {
        "POSTGRES_PASSWORD": secrets.token_hex(16),
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "TUNEFUSE_IMAGE": IMAGE,
        "POSTGRES_IMAGE": POSTGRES_IMAGE,
        "FASHION_MNIST_DIR": str(data.SYSTEM_DIR),
        "RAY_SHM_SIZE": "1gb",
        "MLFLOW_PORT": str(free_port()),
        "RAY_DASHBOARD_PORT": str(free_port()),
    })
    assert not any(stack.leftovers().values()), f"an earlier run left {stack.leftovers()}"
    try:
        yield stack
    finally:
        keep = os.environ.get("TUNEFUSE_KEEP_VOLUMES") == "1"
        stack.down(volumes=not keep)
        left = stack.leftovers()
        if keep:
            left.pop("volumes")
        assert not any(left.values()), f"left behind: {left}"


def host_addresses() -> list[str]:
    """The host's IPv4 addresses other than loopback."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True)
    found = re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", out.stdout)
    return [a for a in found if not a.startswith("127.")]


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


def interrupt_after_first_trial(stack: Stack) -> str:
    """The grid in the head, Ctrl-C'd (SIGINT to its process) once a trial has finished."""
    proc = subprocess.Popen(["podman", "exec", stack.name("ray-head"), *GRID],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if re.search(r": (finished|stopped by ASHA)", line):
            break
    else:
        raise AssertionError("the grid ended before a trial finished:\n" + "".join(lines))
    stack.exec("ray-head", "python", "-c",
               "import os, signal\n"
               "for p in os.listdir('/proc'):\n"
               "    if p.isdigit():\n"
               "        cmd = open(f'/proc/{p}/cmdline', 'rb').read().split(b'\\0')\n"
               "        if cmd[1:3] == [b'-m', b'search.grid']:\n"
               "            os.kill(int(p), signal.SIGINT)\n")
    rest, _ = proc.communicate(timeout=300)
    return "".join(lines) + rest


def test_the_compose_cluster_runs_a_smoke_grid_resumes_it_after_a_restart_and_reports(stack):
    stack.up()
    head_ip, worker_ips = stack.ip("ray-head"), {stack.ip("ray-gpu-worker")}
    nodes = stack.ray_nodes()
    assert len(nodes) == 2, f"the worker did not join the head: {nodes}"
    assert [n["cpus"] for n in nodes if n["ip"] == head_ip] == [0], nodes  # no trial on the head

    # The dashboard and MLflow answer on the host's loopback, and on no other address of it.
    mlflow_port, dash_port = int(stack.env["MLFLOW_PORT"]), int(stack.env["RAY_DASHBOARD_PORT"])
    for port, path in ((mlflow_port, "/health"), (dash_port, "/api/gcs_healthz")):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            assert r.status == 200
        for address in host_addresses():
            assert not answers(address, port), f"port {port} answers on {address}"
    published = sh(["podman", "port", "-a"]).stdout
    assert re.findall(r"-> (\S+):\d+", published) and all(
        h == "127.0.0.1" for h in re.findall(r"-> (\S+):\d+", published)), published

    first = interrupt_after_first_trial(stack)
    assert "--resume" in first.strip().splitlines()[-1], first

    stack.down(volumes=False)
    stack.up()
    worker_ips.add(stack.ip("ray-gpu-worker"))
    resumed = stack.exec("ray-head", *GRID, "--resume").stdout
    assert re.search(r"cnn-b\d+-e\d+-\d+\s+\d+\s+\d+\s+(finished|stopped)", resumed), resumed
    report = stack.exec("ray-head", "python", "-m", "analysis.report", "--workspace",
                        "/shared/outputs", "--tracking-uri", "http://mlflow:5000",
                        "--data-dir", "/usr/share/datasets/fashion-mnist").stdout
    assert re.search(r"fus", report, flags=re.I), report

    # Every trial's run is in PostgreSQL, with the worker's address.
    trials = stack.sql(
        "select r.name, t.value from runs r join experiments e using (experiment_id) "
        "join tags t on t.run_uuid = r.run_uuid and t.key = 'node_ip' "
        "where e.name = 'grid-cnn' and r.lifecycle_stage = 'active'")
    assert len(trials) == 4, trials  # the smoke grid: batch 64,128 x epochs 3,4
    assert all(ip in worker_ips and ip != head_ip for _, ip in trials), (trials, worker_ips)
    counts = {table: int(stack.sql(f"select count(*) from {table}")[0][0])
              for table in ("experiments", "runs", "params", "metrics", "tags",
                            "registered_models", "model_versions")}
    print("\n" + "\n".join(f"{k}: {v}" for k, v in counts.items()))
    print(first, resumed, report, sep="\n")
    assert counts["registered_models"] >= 1 and counts["model_versions"] >= 1, counts
