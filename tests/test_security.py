"""Security defaults: nothing is unpickled from files, servers bind to 127.0.0.1 unless asked
otherwise, Ray's token authentication is left on. (Credentials in tracking URIs:
tests/test_mlflow_server.py; the live dashboard's 401 without a token: tests/test_pipeline.py.)

"Binds to 127.0.0.1" is checked on the sockets that listen while the servers run: the Ray
dashboard that search/cluster.py's start_ray starts, and the README's `mlflow ui` and `mlflow
models serve` commands; each server's process tree is listed with psutil, and its port is
tried on every other address of the machine."""

from __future__ import annotations

import ast
import contextlib
import ipaddress
import os
import pickle
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from unittest import mock

import numpy as np
import psutil
import pytest
import torch
from conftest import free_port, wait_http

from bench.chaos import kill_group
from trainables import checkpoint
from trainables.files import sha256_file

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
SOURCES = sorted(p for d in ("search", "trainables", "analysis", "bench")
                 for p in (ROOT / d).rglob("*.py"))


def calls(name: str):
    """Every call of ``<module>.name(...)`` in the project's code, with its file and line."""
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr == name and isinstance(node.func.value, ast.Name):
                yield node.func.value.id, node, f"{path.relative_to(ROOT)}:{node.lineno}"


def keyword(node: ast.Call, name: str):
    kw = next((k for k in node.keywords if k.arg == name), None)
    return None if kw is None or not isinstance(kw.value, ast.Constant) else kw.value.value


def test_every_load_in_the_code_refuses_pickles():
    loads = [(mod, node, where) for mod, node, where in calls("load") if mod in ("torch", "np")]
    assert loads  # the check below looks at something
    for mod, node, where in loads:
        if mod == "torch":
            assert keyword(node, "weights_only") is True, where
        else:
            assert keyword(node, "allow_pickle") is False, where
    assert not [where for mod, _, where in calls("loads") if mod == "pickle"]
    assert not [where for mod, _, where in calls("load") if mod == "pickle"]


class Payload:
    """What a malicious checkpoint would carry: unpickling it runs code."""

    ran = False

    def __reduce__(self):
        return (Payload._run, ())

    @staticmethod
    def _run():
        Payload.ran = True
        return {}


def test_a_checkpoint_that_holds_a_pickle_is_refused_unrun(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": checkpoint.FORMAT, "model": "cnn", "evil": Payload()}, path)
    with pytest.raises(checkpoint.CheckpointError, match="not a readable checkpoint"):
        checkpoint.load(path)
    assert not Payload.ran
    with open(path, "wb") as f:  # a plain pickle under the checkpoint's name
        pickle.dump(Payload(), f)
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(path)
    assert not Payload.ran


def test_a_cached_array_that_holds_objects_is_recomputed_not_unpickled(tmp_path, monkeypatch):
    from analysis import inference

    class Split:
        fingerprint = "f" * 64
        x_val = x_test = torch.zeros(2, 28, 28, dtype=torch.uint8)

    ckpt = tmp_path / "member.pt"
    ckpt.write_bytes(b"weights")
    key = f"{sha256_file(ckpt)[:24]}-{Split.fingerprint[:16]}"
    (tmp_path / "cache").mkdir()
    np.savez(tmp_path / "cache" / f"{key}.npz", val=np.array([Payload()], dtype=object),
             test=np.zeros(1))
    computed = []
    monkeypatch.setattr(inference.checkpoint, "load", lambda p: computed.append(p) or {})
    monkeypatch.setattr(inference.checkpoint, "model_from", lambda c, where: None)
    monkeypatch.setattr(inference, "predict_probs",
                        lambda c, x, device, model, tta: np.full((len(x), 10), 0.1))
    val, _ = inference.cached_probs(tmp_path / "cache", ckpt, Split)
    assert computed == [ckpt] and val.shape == (2, 10)  # recomputed from the checkpoint
    assert not Payload.ran


def test_servers_bind_to_loopback_and_ray_keeps_its_token():
    source = (ROOT / "search" / "cluster.py").read_text()
    assert 'dashboard_host="127.0.0.1"' in source
    for path in SOURCES:  # token authentication is never turned off, nothing binds everywhere
        text = path.read_text()
        assert not re.search(r"RAY_AUTH_MODE\W{1,6}disabled", text), path
        assert '"0.0.0.0"' not in text, path
    readme = (ROOT / "README.md").read_text()
    for line in readme.splitlines():
        if "mlflow ui" in line or "mlflow server" in line:
            assert "--host 0.0.0.0" not in line, line


# --- what really listens ----------------------------------------------------------------------

def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if addr.version == 6 and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def listening(root: psutil.Process) -> list[tuple[int, str, str, int]]:
    """(pid, process name, address, port) of every listening TCP socket of ``root`` and its
    descendants."""
    found = []
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            name = p.name()
            found += [(p.pid, name, c.laddr.ip, c.laddr.port)
                      for c in p.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
    return found


def other_addresses() -> list[str]:
    """This machine's addresses other than loopback (link-local IPv6 left out)."""
    out = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                ip = a.address.split("%")[0]
                addr = ipaddress.ip_address(ip)
                if not (addr.is_loopback or addr.is_link_local):
                    out.append(ip)
    return out


def answers(ip: str, port: int) -> bool:
    try:
        socket.create_connection((ip, port), timeout=3).close()
        return True
    except OSError:
        return False


def table(title: str, sockets) -> str:
    rows = [f"  {pid:>7} {name[:28]:<28} {ip}:{port}" for pid, name, ip, port in sorted(sockets)]
    return "\n".join([title, *rows])


def assert_loopback_only(port: int, sockets, what: str) -> None:
    on_port = [s for s in sockets if s[3] == port]
    assert on_port, f"{what}: nothing listens on {port}"
    assert all(is_loopback(ip) for _, _, ip, _ in on_port), \
        table(f"{what} listens beyond loopback:", on_port)
    reached = [ip for ip in other_addresses() if answers(ip, port)]
    assert not reached, f"{what} answers on {reached} port {port}"


def stop_tree(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's session (it shuts down as at Ctrl-C), then SIGKILL to whatever
    of it is left (bench/chaos.py's kill_group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    kill_group(proc)


def readme_command(program: str) -> tuple[dict[str, str], list[str]]:
    """The README's first command that runs ``program`` (e.g. "mlflow ui"): its leading
    VAR=value assignments and its argv, continuation lines joined."""
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if re.search(rf"\b{program}\b", ln) and
             "--host" in ln]
    assert lines, f"the README has no `{program} ... --host` command"
    words = shlex.split(lines[0])
    env = {}
    while "=" in words[0] and not words[0].startswith("-"):
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    return env, words


def with_value(argv: list[str], flag: str, value: str) -> list[str]:
    assert flag in argv, f"{flag} missing from {argv}"
    i = argv.index(flag)
    return [*argv[:i + 1], value, *argv[i + 2:]]


# what the uvicorn of mlflow ui and mlflow models serve prints once a server process has
# started (its "Uvicorn running on" comes earlier, from the parent that binds the socket)
READY = "Application startup complete."


def serve(argv: list[str], env: dict, port: int, ready: str, cwd: Path) -> list:
    """Start a README command, wait for the line its server prints once it has started, then
    for ``ready`` to answer, and return the listening sockets of its process tree; the server is
    stopped in any case."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    listens = threading.Event()

    def read():  # every line, until the server ends (its pipe closes)
        for line in proc.stdout:
            lines.append(line)
            if READY in line:
                listens.set()
        listens.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        listens.wait(timeout=180)
        assert any(READY in line for line in lines), \
            f"{argv[:3]} never said it listens:\n{''.join(lines)[-3000:]}"
        # uvicorn listens a moment after that line and prints nothing then: conftest's
        # wait_http waits for the answer
        assert wait_http(f"http://127.0.0.1:{port}{ready}", timeout=60) == 200
        sockets = listening(psutil.Process(proc.pid))
        print(table(f"{' '.join(argv[:3])}: listening sockets", sockets))
        return sockets
    finally:
        stop_tree(proc)


def test_the_ray_dashboard_listens_on_loopback_only():
    """search/cluster.py's start_ray, as `python -m search.grid` calls it. Only the dashboard
    is the project's promise: Ray's GCS, raylet, workers, agents and metrics exporters listen
    beyond loopback by design (docs/cluster.md, *What listens where*); the table lists them."""
    import ray
    from ray.dashboard.consts import DASHBOARD_METRIC_PORT

    from search import cluster
    from search.context import RunContext
    from search.grid import parser

    port = free_port()
    args = parser().parse_args(["--model", "cnn", "--num-cpus", "1", "--dashboard-port",
                                str(port)])
    with mock.patch.dict(os.environ, {"RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}):
        try:
            url = cluster.start_ray(args, RunContext())
            assert url == f"http://127.0.0.1:{port}"
            # it answers once up (ray.init does not wait for it), and its API wants the
            # token (the page itself is public)
            assert wait_http(f"{url}/nodes?view=summary") == 401
            sockets = listening(psutil.Process())
        finally:
            ray.shutdown()
    print(table("Ray (start_ray): listening sockets", sockets))
    assert_loopback_only(port, sockets, "the Ray dashboard")
    # whatever else the dashboard's own process opens stays on loopback too, but for Ray's
    # Prometheus exporter of the dashboard's metrics (read-only, no token)
    dashboard = {pid for pid, _, _, p in sockets if p == port}
    beyond = [s for s in sockets if s[0] in dashboard and not is_loopback(s[2]) and
              s[3] != DASHBOARD_METRIC_PORT]
    assert not beyond, table("the Ray dashboard's process listens beyond loopback:", beyond)


@pytest.mark.slow
def test_the_readme_s_mlflow_ui_listens_on_loopback_only(tmp_path):
    _, argv = readme_command("mlflow ui")
    assert argv[0].endswith("mlflow") and "127.0.0.1" in argv
    port = free_port()
    argv = with_value(argv, "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    argv = [str(VENV_BIN / "mlflow"), *with_value(argv, "--port", str(port))[1:]]
    sockets = serve(argv, ENV, port, "/health", tmp_path)
    assert_loopback_only(port, sockets, "mlflow ui")
    assert all(is_loopback(ip) for _, _, ip, _ in sockets), table(
        "mlflow ui's process tree listens beyond loopback:", sockets)


ECHO_MODEL = """
import mlflow
from mlflow.pyfunc import PythonModel


class Echo(PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


mlflow.models.set_model(Echo())
"""


@pytest.mark.slow
def test_the_readme_s_mlflow_models_serve_listens_on_loopback_only(tmp_path):
    """The README's `mlflow models serve` of the registered model, with a stand-in model
    registered under its name (what binds is the command, not the model)."""
    import mlflow

    env, argv = readme_command("mlflow models serve")
    assert argv[:3] == ["mlflow", "models", "serve"] and "127.0.0.1" in argv
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    model_uri = argv[argv.index("-m") + 1]
    name, version = re.fullmatch(r"models:/([^/]+)/(\d+)", model_uri).groups()
    (tmp_path / "echo.py").write_text(ECHO_MODEL)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("serve", artifact_location=(
            tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            info = mlflow.pyfunc.log_model(name="model", python_model=str(tmp_path / "echo.py"),
                                           registered_model_name=name)
        assert str(info.registered_model_version) == version
    finally:
        mlflow.set_tracking_uri(previous)
    assert set(env) == {"PATH", "MLFLOW_TRACKING_URI"}
    env = {**ENV, "MLFLOW_TRACKING_URI": uri,  # the CLI execs the uvicorn found on PATH
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    port = free_port()
    argv = [str(VENV_BIN / "mlflow"), *with_value(argv, "--port", str(port))[1:]]
    sockets = serve(argv, env, port, "/ping", tmp_path)
    assert_loopback_only(port, sockets, "mlflow models serve")
    assert all(is_loopback(ip) for _, _, ip, _ in sockets), table(
        "mlflow models serve's process tree listens beyond loopback:", sockets)
