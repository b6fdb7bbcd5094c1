"""Shared fixtures: small IDX data sets written by the tests, the real Debian files and the other
prerequisites of the set-up (a skip, or a failure in CI), workspaces holding earlier results and
their snapshots, and the smoke pipeline."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NoReturn
from unittest import mock

import numpy as np
import pytest

from bench.chaos import kill_group
from trainables import data
from trainables.files import sha256_file
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


# --- prerequisites the set-up installs: a skip here, a failure in CI ----------------------------

# --- a Trainable driven directly, as Tune would (tests/test_search.py, tests/test_trunks.py) ----

def trainable_for(split):
    """The Trainable with ``split`` handed to setup: the object store's role, by a closure."""
    from trainables.trainable import ClassifierTrainable

    class Local(ClassifierTrainable):
        def setup(self, config):
            super().setup(config, split=split)

    return Local


def run_trial(split, config):
    """A trial of ``config`` to its end: the Trainable and its results."""
    trial = trainable_for(split)(config=config)
    results = []
    while not (results and results[-1]["done"]):
        results.append(trial.train())
    trial.stop()
    return trial, results


def weights(model):
    """A model's weights as one flat tensor."""
    import torch

    return torch.cat([v.flatten().float() for v in model.state_dict().values()])


def in_ci() -> bool:
    """CI sets CI=true: there a missing prerequisite is a failure, not a skip."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing_prerequisite(what: str, make_target: str) -> NoReturn:
    """Skip the test, or fail it in CI: a CI machine must not pass by skipping what its set-up
    (``make_target``) should have installed."""
    if in_ci():
        pytest.fail(f"{what}: the set-up (`{make_target}`) should have provided it (CI=true)",
                    pytrace=False)
    pytest.skip(f"{what}; run `{make_target}`")


def need_real_data() -> Path:
    """The Debian files (data.SYSTEM_DIR, read when called): every test or fixture that needs
    them starts with this."""
    _, missing = data.find_files(data.SYSTEM_DIR)
    if missing:
        missing_prerequisite(f"{data.SYSTEM_DIR} lacks {', '.join(missing)}", "make data")
    return data.SYSTEM_DIR


BROWSER = ("/usr/bin/chromium", "/usr/bin/chromedriver")


def browser_missing() -> list[str]:
    return [exe for exe in BROWSER if not Path(exe).exists()]


def need_browser() -> None:
    """Debian's Chromium and chromedriver, for the browser tests."""
    if missing := browser_missing():
        missing_prerequisite(f"{' and '.join(missing)} missing", "make browser")


def need_compiler() -> None:
    """A C++ compiler, which torch.compile needs on a CPU (make compiler: Debian's g++)."""
    from trainables.fastpath import compiler

    if compiler() is None:
        missing_prerequisite("no C++ compiler (g++, clang++ or $CXX)", "make compiler")


@pytest.fixture
def real_dir() -> Path:
    """The Debian files; the set-up installs them, so in CI their absence is a failure."""
    return need_real_data()


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


# --- process-wide state a test must leave as it found it ---------------------------------------

@contextlib.contextmanager
def environ_kept():
    """os.environ as it was, whatever the block sets: a search's main() run in this process
    sets Ray's defaults there (search/cluster.py start_ray)."""
    saved = os.environ.copy()
    try:
        yield
    finally:
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        os.environ.update(saved)


@pytest.fixture
def mlflow_uri_kept(monkeypatch):
    """MLflow's global tracking URI (and $MLFLOW_TRACKING_URI, which mlflow.set_tracking_uri
    exports to every later subprocess) as they were before the test."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    previous = utils._tracking_uri
    if "MLFLOW_TRACKING_URI" in os.environ:  # monkeypatch restores it, or its absence
        monkeypatch.setenv("MLFLOW_TRACKING_URI", os.environ["MLFLOW_TRACKING_URI"])
    else:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def torch_threads_kept():
    """torch's thread count, which training sets (TrainConfig.num_threads), as it was."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# --- a workspace holding earlier results, and what it holds -------------------------------------

def workspace_snapshot(ws: Path) -> dict:
    """Everything a workspace holds: every folder, every file with its SHA-256, and every row
    of every table of its MLflow store (mlflow.db is compared by its rows, not its bytes:
    sqlite may rewrite pages without changing a row; its journal files come and go)."""
    dirs, files = [], {}
    for p in sorted(ws.rglob("*")):
        rel = str(p.relative_to(ws))
        if p.is_dir():
            dirs.append(rel)
        elif p.name.startswith("mlflow.db-"):
            continue
        elif p.name == "mlflow.db":
            files[rel] = "(rows below)"
        else:
            files[rel] = sha256_file(p)
    rows = None
    if (ws / "mlflow.db").exists():
        with contextlib.closing(sqlite3.connect(ws / "mlflow.db", timeout=30)) as db:
            tables = [r[0] for r in db.execute(
                "select name from sqlite_master where type = 'table' order by name")]
            rows = {t: sorted(map(repr, db.execute(f"select * from \"{t}\"")))
                    for t in tables}
    return {"dirs": dirs, "files": files, "mlflow": rows}


class WorkspaceChanged(AssertionError):
    """A workspace that should have been left as it was was not."""


def assert_same_workspace(ws: Path, before: dict) -> None:
    """The workspace holds exactly what ``before`` says: no file, folder or MLflow row added,
    changed or removed."""
    after = workspace_snapshot(ws)
    for part in ("dirs", "files"):
        added = sorted(set(after[part]) - set(before[part]))
        gone = sorted(set(before[part]) - set(after[part]))
        changed = sorted(k for k in set(after[part]) & set(before[part])
                         if after[part][k] != before[part][k]) if part == "files" else []
        if added or gone or changed:
            raise WorkspaceChanged(f"{ws}: {part} added {added}, removed {gone}, changed "
                                   f"{changed}")
    if before["mlflow"] != after["mlflow"]:
        rows, now = before["mlflow"] or {}, after["mlflow"] or {}
        differ = {t: {"added": sorted(set(now.get(t) or []) - set(rows.get(t) or []))[:3],
                      "removed": sorted(set(rows.get(t) or []) - set(now.get(t) or []))[:3]}
                  for t in sorted(set(rows) | set(now)) if rows.get(t) != now.get(t)}
        raise WorkspaceChanged(f"{ws}: MLflow rows changed: {differ}")


@contextlib.contextmanager
def untouched(ws: Path):
    """Assert that the block leaves the workspace exactly as it found it."""
    before = workspace_snapshot(ws)
    yield before
    assert_same_workspace(ws, before)


def _write_earlier_workspace(ws: Path) -> None:
    """What a workspace holds after an earlier search and pipeline, built directly (seconds,
    no training): a real MLflow store with the experiment grid-inception (a parent run, a
    finished trial run with params, per-epoch metrics and a checkpoint artifact), its state
    file, a pipeline state file, Tune's experiment folder, a trunk and a report. The names
    are none that the bad-input tests' commands (cnn, resnet18, profile smoke) would take."""
    from mlflow.tracking import MlflowClient

    for sub in ("mlartifacts", "trunks", "experiments", "reports/earlier", "pipelines",
                "ray_results/grid-inception/trial_00000/checkpoint_000001", "cache/probs"):
        (ws / sub).mkdir(parents=True, exist_ok=True)
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.create_experiment(
        "grid-inception", artifact_location=(ws / "mlartifacts" / "grid-inception").as_uri())
    parent = client.create_run(exp, run_name="grid-earlier", tags={
        "kind": "grid", "profile": "quick", "model": "inception", "scheduler": "asha"}).info
    client.log_param(parent.run_id, "data_fingerprint", "0" * 64)
    trial = client.create_run(exp, run_name="inception-w8-b64-e3-00000", tags={
        "mlflow.parentRunId": parent.run_id, "trial_id": "earlier_00000",
        "kind": "trial"}).info
    client.log_param(trial.run_id, "batch_size", "64")
    for epoch, acc in ((1, 0.61), (2, 0.72), (3, 0.75)):
        client.log_metric(trial.run_id, "val_acc", acc, step=epoch)
    checkpoint = ws / "ray_results/grid-inception/trial_00000/checkpoint_000001/checkpoint.pt"
    checkpoint.write_bytes(b"PK\x03\x04 an earlier checkpoint")
    client.log_artifact(trial.run_id, str(checkpoint), "best_checkpoint")
    client.set_tag(trial.run_id, "best_val_acc", "0.750000")
    client.set_terminated(trial.run_id, "FINISHED")
    client.set_terminated(parent.run_id, "FINISHED")
    (ws / "experiments" / "grid-inception.json").write_text(json.dumps({
        "name": "grid-inception", "kind": "grid", "parent_run_id": parent.run_id,
        "experiment_id": exp, "storage_path": str(ws / "ray_results"),
        "data_fingerprint": "0" * 64, "created": 1.0}, indent=2))
    (ws / "pipelines" / "earlier.json").write_text(json.dumps({
        "name": "earlier", "profile": "quick", "created": 1.0, "argv": ["--name", "earlier"],
        "stages": [{"name": "grid-inception", "kind": "grid", "model": "inception",
                    "status": "done", "seconds": 12.5}]}, indent=2))
    (ws / "ray_results/grid-inception/experiment_state-earlier.json").write_text("{}")
    (ws / "trunks" / "0123456789abcdef0123").mkdir()
    (ws / "trunks" / "0123456789abcdef0123" / "epoch-0001.pt").write_bytes(b"an earlier trunk")
    (ws / "reports/earlier/summary.json").write_text('{"earlier": true}')
    (ws / "cache/probs/earlier.npy").write_bytes(b"\x93NUMPY earlier probabilities")


@pytest.fixture(scope="session")
def _earlier_workspace_template(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("earlier") / "ws"
    _write_earlier_workspace(ws)
    return ws


@pytest.fixture
def earlier_workspace(_earlier_workspace_template, tmp_path) -> Path:
    """A workspace holding earlier results (see _write_earlier_workspace), the test's own copy:
    for checking that a refused command leaves it as it was (``untouched``)."""
    ws = tmp_path / "ws"
    shutil.copytree(_earlier_workspace_template, ws)
    return ws


# --- the smoke pipeline, shared by the pipeline, analysis and browser tests --------------------

ROOT = Path(__file__).resolve().parents[1]

# --- what the terminal shows (tests/test_progress.py, tests/test_pipeline.py) ---------------------
# What Ray, Tune and MLflow print on their own: none of it at the default verbosity.
INTERNALS = re.compile(
    r"== Status ==|Bracket:|AsyncHyperBand|Result logdir|Logical resource usage|"
    r"Current best trial|Number of trials|Tuner\.restore|Resume experiment|Failed to fetch|"
    r"FileNotFoundError|TensorBoard|ClassifierTrainable|Trial status|Traceback|"
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d+\s|\b(INFO|WARNING|DEBUG)\b|\(pid=|"
    r"Successfully registered model|Created version|authentication_token")
# a trial's name as its MLflow run has it (search/records.py trial_run_name)
NAME = re.compile(r"\b(?:cnn|resnet18|inception)(?:-w\d+)?-b\d+-e\d+-[0-9a-f]{5}\b")
ETA = re.compile(r"ETA (\d+:)?\d{1,2}:\d\d\b")


def internal_lines(text: str) -> list[str]:
    """The lines of a command's output that Ray, Tune or MLflow printed."""
    return [ln for ln in text.splitlines() if INTERNALS.search(ln)]

VENV_BIN = Path(sys.executable).parent
# Where tests keep what a person may want to look at afterwards (screenshots): one folder per
# test under tests/output/ (TUNEFUSE_TEST_OUTPUT elsewhere); ignored by git.
OUTPUT_ROOT = Path(os.environ.get("TUNEFUSE_TEST_OUTPUT", ROOT / "tests" / "output"))


def blocked_ray(folder: Path) -> dict:
    """An environment in which ``import ray`` fails (a package of that name that refuses)."""
    (folder / "ray").mkdir(parents=True, exist_ok=True)
    (folder / "ray" / "__init__.py").write_text(
        'raise ImportError("ray is blocked: this process must run without it")\n')
    path = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


@contextlib.contextmanager
def ray_for_the_tests(num_cpus: int):
    """A local Ray cluster whose workers import the trainables of the tests' own modules (the
    folder of the tests on their path), Tune's old reporter API on (search/cluster.py's
    start_ray sets it, so that Tune calls a search's progress view, search/progress.py)."""
    import ray

    path = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent),
                                         os.environ.get("PYTHONPATH")]))
    with mock.patch.dict(os.environ, {"RAY_AIR_NEW_OUTPUT": "0", "PYTHONPATH": path,
                                      "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}):
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 logging_level="ERROR", log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()


def run_module(module: str, *args, timeout: float = 600, env: dict | None = None
               ) -> subprocess.CompletedProcess:
    """``python -m module args`` from the repository root, its output captured."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout,
                          env={**(env or os.environ), "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"})


def saved_tune_trials(ws: Path, experiment: str) -> list:
    """The trials Tune's saved experiment state of ``experiment`` holds ([] before it saved
    any)."""
    from ray.tune import ExperimentAnalysis

    try:
        return ExperimentAnalysis(str(ws / "ray_results" / experiment)).trials
    except Exception:  # nothing saved yet
        return []


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

    need_browser()
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
    """Wait until the page's visible text contains ``text``; returns the text. A body made
    stale by a page that replaced its document (the Ray dashboard reloads itself once it has
    its token) is looked up again on the next poll."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.5, ignored_exceptions=_stale()).until(
        lambda d: t if text in (t := body_text(d)) else False)


def body_text(driver) -> str:
    """The page's visible text; empty while the page replaces its document."""
    from selenium.webdriver.common.by import By

    try:
        return driver.find_element(By.TAG_NAME, "body").text
    except Exception as e:
        if _replaced(e):
            return ""
        raise


def _replaced(e: Exception) -> bool:
    """Chromium's word for an element of a document the page has just replaced, when it comes
    as a plain WebDriverException rather than a StaleElementReferenceException."""
    return "does not belong to the document" in str(e)


def _stale() -> tuple:
    """What a wait for a page's state looks up again: an element of a replaced document."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    return (NoSuchElementException, StaleElementReferenceException)


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
        self.stopped_runs: dict = {}  # stage two's runs after SIGTERM stopped it
        self.stopped_parent: list = []  # [(status, interrupted tag)] of its parent run(s)
        self.out = ""
        self.code = None
        self.dashboard: dict = {}


def _run_streaming(cmd, on_line=None, timeout: float = 900, **kw) -> tuple[int, str]:
    """Run ``cmd`` in a session of its own, calling on_line(proc, line) for each output line;
    (exit code, output). Its process group is killed when it ends, times out, or when anything
    raises (on_line, a failed assertion, Ctrl-C): nothing it started outlives the call."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, start_new_session=True, **kw)
    lines: list[str] = []
    timer = threading.Timer(timeout, kill_group, (proc,))
    timer.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            if on_line:
                on_line(proc, line)
        return proc.wait(), "".join(lines)
    finally:
        timer.cancel()
        kill_group(proc)
        proc.stdout.close()


def trial_run_records(ws: Path, experiment: str) -> dict[str, list[tuple[str, list]]]:
    """trial id -> [(status, [(epoch, val_acc, timestamp)]) for each MLflow run tagged with
    it] in an experiment: every run, so a trial recorded twice shows as two."""
    with contextlib.closing(sqlite3.connect(ws / "mlflow.db", timeout=30)) as con:
        runs = con.execute(
            "select t.value, r.status, r.run_uuid from runs r join experiments e on "
            "r.experiment_id = e.experiment_id join tags t on t.run_uuid = r.run_uuid "
            "where t.key = 'trial_id' and e.name = ?", (experiment,)).fetchall()
        out: dict[str, list[tuple[str, list]]] = {}
        for trial, status, run in runs:
            out.setdefault(trial, []).append((status, con.execute(
                "select step, value, timestamp from metrics where run_uuid = ? and key = "
                "'val_acc' order by step, timestamp", (run,)).fetchall()))
        return out


def one_run_per_trial(runs: dict[str, list], experiment: str) -> dict:
    """trial id -> its one run's record; fails when a trial has more than one run."""
    twice = {trial: len(r) for trial, r in runs.items() if len(r) != 1}
    assert not twice, f"{experiment}: trials recorded by more than one MLflow run: {twice}"
    return {trial: r[0] for trial, r in runs.items()}


def trial_records(ws: Path, experiment: str) -> dict[str, tuple[str, list]]:
    """trial id -> (status, [(epoch, val_acc, timestamp)]) of an experiment's MLflow runs,
    asserting that each trial has exactly one run (a duplicate must not merge silently)."""
    return one_run_per_trial(trial_run_records(ws, experiment), experiment)


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


def submit_token(driver, token: str) -> bool:
    """Paste the token into the Ray dashboard's dialog and submit it, as a user does (a dialog
    re-rendered meanwhile is found again by the caller's wait)."""
    from selenium.webdriver.common.by import By

    try:
        field = driver.find_element(By.XPATH, "//div[@role='dialog']//input")
        field.clear()
        field.send_keys(token)
        driver.find_element(By.XPATH, "//div[@role='dialog']//button[translate(normalize-"
                            "space(), 'SUBMIT', 'submit') = 'submit']").click()
    except Exception as e:
        if _replaced(e):
            return False  # the dialog was re-rendered under us: the caller's wait tries again
        raise
    return True


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
        WebDriverWait(driver, 60, 0.5, ignored_exceptions=_stale()).until(
            lambda d: submit_token(d, token))
        wait_text(driver, "ALIVE", timeout=90)
        WebDriverWait(driver, 60, 0.5, ignored_exceptions=_stale()).until(
            lambda d: (t := body_text(d)) and prompt not in t)
        found["text"] = wait_text(driver, "ALIVE", timeout=90)
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
    with SIGTERM (what `ray job stop`, `docker stop` and Kubernetes send; the same as Ctrl-C)
    during its second stage, continued with --resume and killed (SIGKILL) during
    its third, then continued again with --resume through `make run`; while that run's cluster
    is up, its Ray dashboard is opened in Chromium (when Chromium is there: outside CI the
    dashboard's test alone is skipped without it). Prerequisites are checked before anything
    starts; each run's process group is killed when the run ends or anything fails."""
    need_real_data()
    if in_ci():
        need_browser()  # fails now, before anything is started
    with_browser = not browser_missing()
    ws = tmp_path_factory.mktemp("pipeline") / "ws"
    result = Pipeline(ws)
    port = free_port()
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}

    interrupted: list[str] = []

    def interrupt_in_stage_two(proc, line):  # when the first of its trials has ended (Tune
        if re.match(r"\[smoke-grid-resnet18\] \S+: ", line) and not interrupted:  # runs the
            interrupted.append(line)  # others); once: a second signal hard-stops Tune
            proc.send_signal(signal.SIGTERM)

    result.interrupted_code, result.interrupted_out = _run_streaming(
        [sys.executable, "-m", "search.pipeline", "--profile", "smoke", "--workspace", str(ws),
         "--dashboard-port", str(port)], interrupt_in_stage_two, timeout=600, env=env)
    result.stopped_runs = trial_run_records(ws, "smoke-grid-resnet18")
    with contextlib.closing(sqlite3.connect(ws / "mlflow.db", timeout=30)) as con:
        result.stopped_parent = con.execute(
            "select r.status, (select value from tags t where t.run_uuid = r.run_uuid and "
            "t.key = 'interrupted') from runs r join experiments e on r.experiment_id = "
            "e.experiment_id where e.name = 'smoke-grid-resnet18' and not exists (select 1 "
            "from tags t where t.run_uuid = r.run_uuid and t.key = 'kind' and "
            "t.value = 'trial')").fetchall()

    def kill_in_stage_three(proc, line):  # once one of its trials has finished
        if re.match(r"\[smoke-grid-inception\] \S+: finished", line) and \
                proc.poll() is None:
            kill_group(proc)

    result.killed_code, result.killed_out = _run_streaming(
        [sys.executable, "-m", "search.pipeline", "--profile", "smoke", "--workspace", str(ws),
         "--dashboard-port", str(port), "--resume"], kill_in_stage_three, timeout=600, env=env)
    result.killed_state = json.loads((ws / "pipelines" / "smoke.json").read_text())
    result.killed_runs = trial_run_records(ws, "smoke-grid-inception")

    shots = OUTPUT_ROOT / "ray_dashboard"
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)

    def dashboard_while_running(proc, line):
        m = re.search(r"Ray dashboard (http://127\.0\.0\.1:\d+)", line)
        if m and with_browser and not result.dashboard:
            try:
                result.dashboard = check_ray_dashboard(m.group(1), shots)
            except Exception as e:  # kept for the test to report; the pipeline must go on
                result.dashboard = {"error": f"{type(e).__name__}: {e}"}

    result.code, result.out = _run_streaming(
        ["make", "--no-print-directory", "run", "PROFILE=smoke", f"WORKSPACE={ws}",
         f"ARGS=--resume --dashboard-port {port}"], dashboard_while_running, timeout=900,
        env=env)
    return result
