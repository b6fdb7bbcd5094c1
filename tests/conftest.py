"""Shared fixtures: small IDX data sets written by the tests, and the real Debian files."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from trainables import data
from trainables.idx import write_idx

REAL_DIR = data.SYSTEM_DIR


def write_idx_set(directory: Path, train_counts=(70, 60, 50, 40, 30, 30, 40, 50, 60, 70),
                  test_per_class: int = 10, gz: bool = True, seed: int = 0) -> Path:
    """Write a small, uneven Fashion-MNIST-shaped set: class c has train_counts[c] images."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    y = np.repeat(np.arange(10, dtype=np.uint8), train_counts)
    y = y[rng.permutation(len(y))]
    y_test = np.repeat(np.arange(10, dtype=np.uint8), test_per_class)
    arrays = {
        "train_images": rng.integers(0, 256, (len(y), 28, 28), dtype=np.uint8),
        "train_labels": y,
        "test_images": rng.integers(0, 256, (len(y_test), 28, 28), dtype=np.uint8),
        "test_labels": y_test,
    }
    for key, name in data.FILES.items():
        write_idx(directory / f"{name}{suffix}", arrays[key])
    return directory


@pytest.fixture
def small_set(tmp_path) -> Path:
    return write_idx_set(tmp_path / "small")


@pytest.fixture
def real_dir() -> Path:
    """The Debian files; the set-up installs them, so in CI their absence is a failure."""
    _, missing = data.find_files(REAL_DIR)
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{REAL_DIR} lacks {missing}: the set-up (make data) should install them")
        pytest.skip(f"{REAL_DIR} lacks {missing}; run `make data`")
    return REAL_DIR


@pytest.fixture
def no_default_data(tmp_path, monkeypatch):
    """Point the system folder and the cache at empty folders, and unset $TUNEFUSE_DATA."""
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    return tmp_path


def exit_code(main, *args) -> int:
    """A command's main() run in this process: argparse exits, the rest returns its code."""
    try:
        return main(list(args))
    except SystemExit as e:
        return e.code


# --- the smoke pipeline, shared by the pipeline, analysis and browser tests --------------------

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# Where tests keep what a person may want to look at afterwards (screenshots): one folder per
# test under tests/output/ (TUNEFUSE_TEST_OUTPUT elsewhere); ignored by git.
OUTPUT_ROOT = Path(os.environ.get("TUNEFUSE_TEST_OUTPUT", ROOT / "tests" / "output"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60, headers: dict | None = None) -> int:
    """Poll ``url`` until it answers (any HTTP status); returns the status."""
    deadline = time.time() + timeout
    while True:
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture
def out_dir(request) -> Path:
    """tests/output/TEST_NAME/, emptied first."""
    path = OUTPUT_ROOT / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def chromium(profile_dir: Path):
    """Debian's headless Chromium through Debian's chromedriver (Selenium), as a user sees it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for exe in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        if not Path(exe).exists():
            if os.environ.get("CI"):
                pytest.fail(f"{exe} is missing: the set-up (make browser) should install it")
            pytest.skip(f"{exe} is missing; run `make browser`")
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic",
                 f"--user-data-dir={profile_dir}", "--window-size=1400,1000"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture
def browser(tmp_path):
    driver = chromium(tmp_path / "chromium-profile")
    yield driver
    driver.quit()


def wait_text(driver, text: str, timeout: float = 60) -> str:
    """Wait until the page's visible text contains ``text``; returns the text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.5).until(
        lambda d: text in d.find_element(By.TAG_NAME, "body").text)
    return driver.find_element(By.TAG_NAME, "body").text


class Pipeline:
    """The smoke pipeline's workspace and what its two runs printed."""

    def __init__(self, ws: Path):
        self.ws = ws
        self.interrupted_out = ""
        self.interrupted_code = None
        self.killed_out = ""
        self.killed_code = None
        self.killed_state: dict = {}
        self.killed_runs: dict = {}
        self.out = ""
        self.code = None
        self.dashboard: dict = {}


def _run_streaming(cmd, on_line=None, timeout: float = 900, **kw) -> tuple[int, str]:
    """Run ``cmd``, calling on_line(proc, line) for each output line; (exit code, output)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, **kw)
    lines: list[str] = []
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            if on_line:
                on_line(proc, line)
        return proc.wait(), "".join(lines)
    finally:
        timer.cancel()


def trial_records(ws: Path, experiment: str) -> dict[str, tuple[str, list]]:
    """trial id -> (status, [(epoch, val_acc, timestamp)]) of an experiment's MLflow runs."""
    import sqlite3

    with sqlite3.connect(ws / "mlflow.db", timeout=30) as con:
        runs = con.execute(
            "select t.value, r.status, r.run_uuid from runs r join experiments e on "
            "r.experiment_id = e.experiment_id join tags t on t.run_uuid = r.run_uuid "
            "where t.key = 'trial_id' and e.name = ?", (experiment,)).fetchall()
        return {trial: (status, con.execute(
            "select step, value, timestamp from metrics where run_uuid = ? and key = "
            "'val_acc' order by step, timestamp", (run,)).fetchall())
            for trial, status, run in runs}


def sigkill(proc: subprocess.Popen) -> None:
    """SIGKILL a driver, then whatever of its Ray cluster outlives it (Ray's GCS, raylet and
    workers share their driver's fate; some of its agents take a while)."""
    import psutil

    family = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()
    proc.wait(timeout=60)
    _, alive = psutil.wait_procs(family, timeout=30)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


def _values(obj, key: str):
    """Every value of ``key`` anywhere in nested dicts and lists."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                yield v
            yield from _values(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from _values(v, key)


def check_ray_dashboard(url: str, shots: Path) -> dict:
    """Open the Ray dashboard of a live cluster in Chromium: the token prompt, then (with the
    token set as the dashboard's cookie) the cluster page listing the node."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    token = subprocess.run([str(VENV_BIN / "ray"), "get-auth-token"], capture_output=True,
                           text=True, timeout=60).stdout.strip().splitlines()[-1]
    found: dict = {"url": url}
    req = urllib.request.Request(f"{url}/nodes?view=summary",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        summary = json.loads(r.read())["data"]["summary"]
    found["node_ips"] = sorted({ip for n in summary for ip in _values(n, "nodeManagerAddress")})
    found["unauthenticated_status"] = wait_http(f"{url}/nodes?view=summary")
    driver = chromium(Path(tempfile.mkdtemp(prefix="chromium-")))
    prompt = "Authentication Token Required"
    try:
        driver.get(f"{url}/#/cluster")
        found["prompt"] = prompt in wait_text(driver, prompt, timeout=90)
        driver.save_screenshot(str(shots / "ray_dashboard_token_prompt.png"))
        # as a user does: paste the token into the dashboard's dialog and submit it
        driver.find_element(By.XPATH, "//div[@role='dialog']//input").send_keys(token)
        driver.find_element(By.XPATH, "//div[@role='dialog']//button[translate(normalize-space("
                            "), 'SUBMIT', 'submit') = 'submit']").click()
        found["text"] = wait_text(driver, "ALIVE", timeout=90)
        WebDriverWait(driver, 60, 0.5).until(
            lambda d: prompt not in d.find_element(By.TAG_NAME, "body").text)
        found["text"] = driver.find_element(By.TAG_NAME, "body").text
        driver.save_screenshot(str(shots / "ray_dashboard_cluster.png"))
        found["title"] = driver.title
        found["rows"] = len(driver.find_elements(By.CSS_SELECTOR, "tbody tr"))
    except Exception as e:  # kept for the test to report; the pipeline must go on
        found["error"] = f"{type(e).__name__}: {e}"
        driver.save_screenshot(str(shots / "ray_dashboard_error.png"))
    finally:
        driver.quit()
    return found


@pytest.fixture(scope="session")
def smoke_pipeline(tmp_path_factory) -> Pipeline:
    """The README's first command at smoke scale, as a user would live it: started, stopped
    with Ctrl-C during its second stage, continued with --resume and killed (SIGKILL) during
    its third, then continued again with --resume through `make run`; while that run's cluster
    is up, its Ray dashboard is opened in Chromium."""
    from trainables import data

    _, missing = data.find_files(data.SYSTEM_DIR)
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{data.SYSTEM_DIR} lacks {missing}: the set-up should install them")
        pytest.skip("the Debian data set is not installed (make data)")
    ws = tmp_path_factory.mktemp("pipeline") / "ws"
    result = Pipeline(ws)
    port = free_port()
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}

    def interrupt_in_stage_two(proc, line):
        if line.startswith("experiment smoke-grid-resnet18:"):
            time.sleep(1)  # Tune is starting the stage's trials
            proc.send_signal(signal.SIGINT)

    result.interrupted_code, result.interrupted_out = _run_streaming(
        [sys.executable, "-m", "search.pipeline", "--profile", "smoke", "--workspace", str(ws),
         "--dashboard-port", str(port)], interrupt_in_stage_two, timeout=600, env=env)

    def kill_in_stage_three(proc, line):  # once one of its trials has finished
        if line.startswith("[smoke-grid-inception] trial ") and "finished" in line and \
                proc.poll() is None:
            sigkill(proc)

    result.killed_code, result.killed_out = _run_streaming(
        [sys.executable, "-m", "search.pipeline", "--profile", "smoke", "--workspace", str(ws),
         "--dashboard-port", str(port), "--resume"], kill_in_stage_three, timeout=600, env=env)
    result.killed_state = json.loads((ws / "pipelines" / "smoke.json").read_text())
    result.killed_runs = trial_records(ws, "smoke-grid-inception")

    shots = OUTPUT_ROOT / "ray_dashboard"
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)

    def dashboard_while_running(proc, line):
        m = re.search(r"Ray dashboard (http://127\.0\.0\.1:\d+)", line)
        if m and not result.dashboard:
            result.dashboard = check_ray_dashboard(m.group(1), shots)

    result.code, result.out = _run_streaming(
        ["make", "--no-print-directory", "run", "PROFILE=smoke", f"WORKSPACE={ws}",
         f"ARGS=--resume --dashboard-port {port}"], dashboard_while_running, timeout=900,
        env=env)
    return result
