"""The whole pipeline end to end at smoke scale, its resume, the README, and what a user opens in
a browser: the MLflow UI, the Ray dashboard and the report (Debian's headless Chromium)."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    OUTPUT_ROOT,
    ROOT,
    VENV_BIN,
    exit_code,
    free_port,
    trial_records,
    wait_http,
    wait_text,
)

STAGES = ["smoke-grid-cnn", "smoke-grid-resnet18", "smoke-grid-inception",
          "smoke-weights-resnet18", "smoke"]


def trial_runs(ws: Path) -> dict[str, list[tuple[str, str]]]:
    """experiment name -> [(trial_id, status)] of its trial runs, read from the store."""
    with sqlite3.connect(ws / "mlflow.db") as con:
        rows = con.execute(
            "select e.name, t.value, r.status from runs r join experiments e on "
            "r.experiment_id = e.experiment_id join tags t on t.run_uuid = r.run_uuid "
            "where t.key = 'trial_id'").fetchall()
    out: dict[str, list[tuple[str, str]]] = {}
    for name, trial, status in rows:
        out.setdefault(name, []).append((trial, status))
    return out


# --- the pipeline -----------------------------------------------------------------------------

def test_interrupted_pipeline_says_how_to_resume(smoke_pipeline):
    p = smoke_pipeline
    assert p.interrupted_code == 130, p.interrupted_out[-3000:]
    assert "re-run the same command with --resume" in p.interrupted_out
    assert "=== stage 3/5" not in p.interrupted_out  # it stopped, it did not go on


def test_a_killed_pipeline_resumes_where_it_was(smoke_pipeline):
    p = smoke_pipeline
    assert p.killed_code == -9, p.killed_out[-3000:]  # SIGKILL: no chance to save anything
    assert "1 stage(s) already done" in p.killed_out
    assert "=== stage 2/5: smoke-grid-resnet18 (grid resnet18) - resuming" in p.killed_out
    assert [s["status"] for s in p.killed_state["stages"]] == [
        "done", "done", "running", "pending", "pending"]
    assert p.code == 0, p.out[-5000:]
    assert "2 stage(s) already done" in p.out
    assert "=== stage 2/5" not in p.out  # the finished grids were not started again
    assert "=== stage 3/5: smoke-grid-inception (grid inception) - resuming" in p.out
    finished = {t: r for t, r in p.killed_runs.items() if r[0] == "FINISHED"}
    assert finished
    after = trial_records(p.ws, "smoke-grid-inception")
    assert len(after) == 4 and {s for s, _ in after.values()} == {"FINISHED"}
    for trial, record in finished.items():  # not trained again: its records are untouched
        assert after[trial] == record


def test_resume_skips_finished_stages_and_completes(smoke_pipeline):
    p = smoke_pipeline
    assert p.code == 0, p.out[-5000:]
    state = json.loads((p.ws / "pipelines" / "smoke.json").read_text())
    assert [s["name"] for s in state["stages"]] == STAGES
    assert all(s["status"] == "done" and s["seconds"] > 0 for s in state["stages"])
    runs = trial_runs(p.ws)
    for name in STAGES[:-1]:
        trials = runs[name]
        assert len(trials) == 4, (name, trials)  # smoke: 4 trials each, no duplicates
        assert len({t for t, _ in trials}) == 4
        assert {s for _, s in trials} == {"FINISHED"}, (name, trials)
    with sqlite3.connect(p.ws / "mlflow.db") as con:  # the interruption is on record
        tags = dict(con.execute(
            "select t.key, r.status from runs r join experiments e on r.experiment_id = "
            "e.experiment_id join tags t on t.run_uuid = r.run_uuid where e.name = "
            "'smoke-grid-resnet18' and t.key in ('interrupted', 'kind') and t.value != 'trial'"
        ).fetchall())
    assert tags == {"interrupted": "FINISHED", "kind": "FINISHED"}, tags


def test_pipeline_ends_with_the_seed_table_and_where_to_look(smoke_pipeline):
    out = smoke_pipeline.out
    tail = out[out.index("pipeline smoke: all 5 stages done"):]
    for stage in STAGES:
        assert re.search(rf"^{re.escape(stage)}\s", tail, re.M), stage
    assert re.search(r"^Fusion \(uniform, 4 models\)\s+\d+\.\d\d%\s+\d+\.\d\d%$", tail, re.M)
    assert "seed: Model fusion (4 models)      91.72%    90.33%" in tail
    ws = smoke_pipeline.ws
    assert f"report:         {ws / 'reports' / 'smoke' / 'report.html'}" in tail
    assert f"mlflow ui --backend-store-uri sqlite:///{ws / 'mlflow.db'} --host 127.0.0.1" in tail
    assert re.search(r"Ray dashboard:  http://127\.0\.0\.1:\d+", tail)
    summary = json.loads((ws / "reports" / "smoke" / "summary.json").read_text())
    assert set(summary["experiments"]) == set(STAGES[:-1])
    assert summary["mlflow"]["model_uri"] == "models:/tunefuse-ensemble/1"


def test_one_ray_cluster_for_all_stages(smoke_pipeline):
    urls = set(re.findall(r"Ray dashboard (http://\S+)", smoke_pipeline.out))
    assert len(urls) == 1, urls


def test_the_weights_stage_starts_from_the_grid_winner(smoke_pipeline):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{smoke_pipeline.ws / 'mlflow.db'}")
    grid_parent = client.search_runs(
        [client.get_experiment_by_name("smoke-grid-resnet18").experiment_id],
        "tags.kind = 'grid'")[0]
    weights_parent = client.search_runs(
        [client.get_experiment_by_name("smoke-weights-resnet18").experiment_id],
        "tags.kind = 'weights'")[0]
    for key in ("batch_size", "epochs"):
        assert weights_parent.data.params[key] == grid_parent.data.tags[f"best.{key}"]
    assert weights_parent.data.params["width"] == grid_parent.data.tags[
        "best.model_kwargs.width"]


def test_resume_of_a_finished_pipeline_only_prints_the_summary(smoke_pipeline):
    from search import pipeline

    before = trial_runs(smoke_pipeline.ws)
    out = subprocess.run([sys.executable, "-m", "search.pipeline", "--profile", "smoke",
                          "--workspace", str(smoke_pipeline.ws), "--resume"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "5 stage(s) already done" in out.stdout and "=== stage" not in out.stdout
    assert "seed: Model fusion (4 models)" in out.stdout
    assert trial_runs(smoke_pipeline.ws) == before
    assert pipeline.fmt_time(3725) == "1h 02m" and pipeline.fmt_time(61.4) == "1m 01s"


@pytest.mark.parametrize("args, message", [
    (["--models", "cnn,vgg"], "unknown model(s) vgg"),
    (["--models", ","], "--models is empty"),
    (["--models", "cnn,cnn"], "names a model twice"),
    (["--top-k", "0"], "--top-k must be at least 1"),
    (["--resume"], "no pipeline named 'smoke'"),
])
def test_bad_arguments(args, message, tmp_path, capsys):
    from search import pipeline

    code = exit_code(pipeline.main, "--profile", "smoke", "--workspace", str(tmp_path / "ws"),
                     *args)
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


@pytest.mark.parametrize("given, expected", [(None, 30_000), ("all", None), ("5000", 5000)])
def test_the_train_size_reaches_every_stage(given, expected):
    """--train-size given to the pipeline (a number, or all) is what each stage loads; without
    it, the profile's."""
    from search import grid, pipeline, weights
    from search.driver import train_size
    from search.profiles import PROFILES

    args = pipeline.parser().parse_args(
        ["--profile", "quick", *(["--train-size", given] if given else [])])
    stage_argv = pipeline.shared_argv(args)
    for module in (grid, weights):
        stage_args = module.parser().parse_args(["--model", "resnet18", *stage_argv])
        assert train_size(stage_args, PROFILES["quick"]) == expected


def test_a_second_pipeline_of_the_same_name_is_refused(smoke_pipeline, capsys):
    from search import pipeline

    code = exit_code(pipeline.main, "--profile", "smoke", "--workspace",
                     str(smoke_pipeline.ws))
    assert code == 2
    assert "already exists" in capsys.readouterr().err
    code = exit_code(pipeline.main, "--profile", "smoke", "--workspace",
                     str(smoke_pipeline.ws), "--resume", "--models", "cnn")
    assert code == 2
    assert "other stages" in capsys.readouterr().err


# --- the README -------------------------------------------------------------------------------

def first_block(text: str) -> list[str]:
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [ln.split("#")[0].strip() for ln in block.splitlines() if ln.split("#")[0].strip()]


def test_readme_opens_with_the_pipeline_and_the_tests_and_ci_runs_them():
    readme = (ROOT / "README.md").read_text()
    assert readme.index("```bash") < readme.index("\n## ")  # before any section
    run_cmd, test_cmd = first_block(readme)
    assert (run_cmd, test_cmd) == ("make run", "make test")
    make = subprocess.run(["make", "-n", "--no-print-directory", "run", "test"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60).stdout
    assert "-m search.pipeline --profile quick --workspace outputs" in make
    assert '-m pytest -m "not slow"' in make
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()
          if ln.strip() and not ln.startswith("#")]
    assert test_cmd in ci and ci.index(test_cmd) < ci.index("make test-slow")


def test_readme_commands_name_real_flags():
    """Every `python -m MODULE --flag` in the README is a flag that MODULE accepts."""
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"python -m ([\w.]+)((?:[^\n`]|\\\n)*)", readme)
    assert len(commands) >= 8
    helps: dict[str, str] = {}
    for module, rest in commands:
        if module not in helps:
            helps[module] = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT,
                                           capture_output=True, text=True, timeout=120).stdout
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", rest):
            assert flag in helps[module], f"README: python -m {module} ... {flag}"


# --- in the browser ---------------------------------------------------------------------------

def test_ray_dashboard_of_the_pipeline_lists_its_node(smoke_pipeline):
    d = smoke_pipeline.dashboard
    assert d, "the resumed pipeline never printed its dashboard address"
    assert "error" not in d, d.get("error")
    assert d["unauthenticated_status"] == 401 and d["prompt"]  # token authentication is on
    assert d["node_ips"] and all(ip in d["text"] for ip in d["node_ips"]), d
    assert "ALIVE" in d["text"] and d["title"]
    assert (OUTPUT_ROOT / "ray_dashboard" / "ray_dashboard_cluster.png").stat().st_size > 0


@pytest.fixture
def mlflow_ui(smoke_pipeline):
    """The README's `mlflow ui` command on the pipeline's workspace."""
    port = free_port()
    proc = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "ui", "--backend-store-uri",
         f"sqlite:///{smoke_pipeline.ws / 'mlflow.db'}", "--host", "127.0.0.1",
         "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_http(f"http://127.0.0.1:{port}/health", timeout=120) == 200
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_mlflow_ui_shows_the_experiment_its_trials_and_a_val_acc_chart(
        smoke_pipeline, mlflow_ui, browser, out_dir):
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    client = MlflowClient(f"sqlite:///{smoke_pipeline.ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke-grid-cnn")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("kind") == "grid")
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(trials) == 4

    browser.get(f"{mlflow_ui}/#/experiments")
    wait_text(browser, "smoke-grid-resnet18")
    browser.save_screenshot(str(out_dir / "experiments.png"))

    browser.get(f"{mlflow_ui}/#/experiments/{exp.experiment_id}/runs")
    wait_text(browser, parent.info.run_name)
    assert trials[0].info.run_name not in browser.find_element(By.TAG_NAME, "body").text
    row = browser.find_element(
        By.XPATH, f"//*[@role='row'][.//*[text()='{parent.info.run_name}']]")
    row.find_element(By.TAG_NAME, "button").click()  # the parent's expander
    for t in trials:
        wait_text(browser, t.info.run_name, timeout=30)
    browser.save_screenshot(str(out_dir / "parent_and_trials.png"))

    # the trial that trained longest; its metrics page filtered to the one val_acc chart
    history = {t.info.run_id: client.get_metric_history(t.info.run_id, "val_acc")
               for t in trials}
    trial = max(trials, key=lambda t: len(history[t.info.run_id]))
    steps = [m.step for m in history[trial.info.run_id]]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 3
    browser.get(f"{mlflow_ui}/#/experiments/{exp.experiment_id}/runs/{trial.info.run_id}"
                "/model-metrics")
    wait_text(browser, "Model metrics")
    search = browser.find_element(By.CSS_SELECTOR, "input[placeholder*='Search metric']")
    search.send_keys("^val_acc$", Keys.ENTER)  # the search box takes a regular expression
    wait_text(browser, f"{trial.info.run_name} (val_acc)")  # the chart's legend
    deadline = time.time() + 60
    while time.time() < deadline:
        titles = browser.find_elements(By.XPATH, "//*[text()='val_acc']")
        plots = browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot, svg.main-svg")
        if titles and plots:
            break
        time.sleep(0.5)
    browser.save_screenshot(str(out_dir / "trial_val_acc_chart.png"))
    assert titles, "no val_acc chart on the trial's metrics page"
    assert plots, "the val_acc chart has no plot"


def test_report_opens_with_its_table_and_figures(smoke_pipeline, browser, out_dir):
    from selenium.webdriver.common.by import By

    report = smoke_pipeline.ws / "reports" / "smoke" / "report.html"
    browser.get(report.as_uri())
    text = wait_text(browser, "seed: Model fusion (4 models)")
    assert "Fusion (uniform, 4 models)" in text
    rows = browser.find_elements(By.CSS_SELECTOR, "table tr")
    assert len(rows) >= 10
    images = browser.find_elements(By.TAG_NAME, "img")
    assert len(images) >= 5
    widths = [browser.execute_script("return arguments[0].naturalWidth", i) for i in images]
    assert all(w > 100 for w in widths), widths  # every figure decoded, none broken
    browser.set_window_size(1400, max(1000, browser.execute_script(
        "return document.body.scrollHeight")))
    browser.save_screenshot(str(out_dir / "report.png"))
