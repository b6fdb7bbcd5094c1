"""The whole pipeline end to end at smoke scale, its resume, the README, and what a user opens in
a browser: the MLflow UI, the Ray dashboard and the report (Debian's headless Chromium)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from conftest import (
    NAME,
    OUTPUT_ROOT,
    ROOT,
    VENV_BIN,
    _run_streaming,
    exit_code,
    free_port,
    internal_lines,
    need_browser,
    one_run_per_trial,
    trial_records,
    untouched,
    wait_http,
    wait_text,
)

from trainables.config import TrainConfig
from trainables.schedule import branch_epoch

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


def parent_runs(ws: Path, experiment: str) -> list[tuple[str, str, dict]]:
    """(run id, status, tags) of every run of an experiment that is not a trial's."""
    with contextlib.closing(sqlite3.connect(ws / "mlflow.db")) as con:
        runs = con.execute(
            "select r.run_uuid, r.status from runs r join experiments e on r.experiment_id = "
            "e.experiment_id where e.name = ? and not exists (select 1 from tags t where "
            "t.run_uuid = r.run_uuid and t.key = 'kind' and t.value = 'trial')",
            (experiment,)).fetchall()
        return [(run, status, dict(con.execute(
            "select key, value from tags where run_uuid = ?", (run,)).fetchall()))
            for run, status in runs]


def the_parent(ws: Path, experiment: str) -> tuple[str, str, dict]:
    """The experiment's one parent run: a second one (a resume that started another) fails."""
    parents = parent_runs(ws, experiment)
    assert len(parents) == 1, f"{experiment}: {len(parents)} parent runs, not one: {parents}"
    return parents[0]


# --- the pipeline -----------------------------------------------------------------------------

def test_a_pipeline_stopped_with_sigterm_says_how_to_resume(smoke_pipeline):
    """SIGTERM (`ray job stop`, `docker stop`, Kubernetes) as Ctrl-C: Tune's state saved, exit
    130, the resume hint; the stage's parent run and every trial run it left open are KILLED
    and tagged interrupted, none RUNNING (the resumed run reopens and finishes them)."""
    p = smoke_pipeline
    assert p.interrupted_code == 130, p.interrupted_out[-3000:]
    assert "re-run the same command with --resume" in p.interrupted_out
    assert "=== stage 3/5" not in p.interrupted_out  # it stopped, it did not go on
    assert len(p.stopped_parent) == 1 and p.stopped_parent[0][0] == "KILLED", p.stopped_parent
    assert p.stopped_parent[0][1], "the parent run has no interrupted tag"
    statuses = [status for runs in p.stopped_runs.values() for status, _ in runs]
    assert statuses and "RUNNING" not in statuses, p.stopped_runs


def test_the_pipelines_terminal_shows_its_own_lines_only(smoke_pipeline):
    """At the default verbosity, in its three runs (Ctrl-C'd, killed, run to the end): no line
    from Ray or Tune (nor MLflow's own), every trial named as its MLflow run is, and after the
    Ctrl-C the pipeline's resume hint is the last line."""
    p = smoke_pipeline
    for out in (p.interrupted_out, p.killed_out, p.out):
        assert not internal_lines(out), internal_lines(out)
    with contextlib.closing(sqlite3.connect(p.ws / "mlflow.db")) as con:
        runs = {name for (name,) in con.execute(
            "select r.name from runs r join tags t on t.run_uuid = r.run_uuid where "
            "t.key = 'kind' and t.value = 'trial'")}
    printed = {m.group(0) for out in (p.interrupted_out, p.killed_out, p.out)
               for m in NAME.finditer(out)}
    assert printed and printed <= runs, printed - runs
    last = [ln for ln in p.interrupted_out.splitlines() if ln.strip()][-1]
    assert "re-run the same command with --resume" in last, p.interrupted_out[-2000:]


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
    killed = one_run_per_trial(p.killed_runs, "smoke-grid-inception when killed")
    finished = {t: r for t, r in killed.items() if r[0] == "FINISHED"}
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
        the_parent(p.ws, name)  # one parent run, however often the stage was resumed
    _, status, tags = the_parent(p.ws, "smoke-grid-resnet18")  # the interruption is on record
    assert status == "FINISHED" and tags["kind"] == "grid" and "interrupted" in tags, tags


def test_pipeline_ends_with_the_seed_table_and_where_to_look(smoke_pipeline):
    out = smoke_pipeline.out
    tail = out[out.index("pipeline smoke: all 5 stages done"):]
    # what the fusion bought first: against its best member (with the interval), the seed
    bought = tail.splitlines()[2:6]
    assert re.fullmatch(r"Fusion \(uniform, 4 models\): \d+\.\d\d% on test", bought[0]), bought
    assert re.match(r"  vs its best member .+ \(\d+\.\d\d%\): [+-]\d+\.\d\d points, 95% "
                    r"interval \[[+-]\d+\.\d\d, [+-]\d+\.\d\d\] \(", bought[1]), bought
    assert bought[2].startswith("  vs the seed's model fusion (4 models) (90.33%): "), bought
    assert bought[3].startswith("  calibration on test: ECE "), bought
    assert re.search(r"; ECE difference [+-]\d\.\d{4}, 95% interval \[", bought[3]), bought
    for stage in STAGES:
        assert re.search(rf"^{re.escape(stage)}\s", tail, re.M), stage
    assert re.search(r"^Fusion \(uniform, 4 models\)\s+\d+\.\d\d%\s+\d+\.\d\d%$", tail, re.M)
    assert re.search(r"^seed: Model fusion \(4 models\)\s+91\.72%\s+90\.33%$", tail, re.M)
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
    grid_parents = client.search_runs(
        [client.get_experiment_by_name("smoke-grid-resnet18").experiment_id],
        "tags.kind = 'grid'")
    weights_parents = client.search_runs(
        [client.get_experiment_by_name("smoke-weights-resnet18").experiment_id],
        "tags.kind = 'weights'")
    assert len(grid_parents) == 1 and len(weights_parents) == 1, (grid_parents, weights_parents)
    grid_parent, weights_parent = grid_parents[0], weights_parents[0]
    for key in ("batch_size", "epochs"):
        assert weights_parent.data.params[key] == grid_parent.data.tags[f"best.{key}"]
    assert weights_parent.data.params["width"] == grid_parent.data.tags[
        "best.model_kwargs.width"]


def test_each_search_records_its_resources_and_each_trial_its_fast_path(smoke_pipeline):
    """--cpus-per-trial / --gpus-per-trial auto, as resolved on this cluster, on every parent
    run; the precision and memory format "auto" chose, on every trial run that trained."""
    import torch
    from mlflow.tracking import MlflowClient

    from trainables.fastpath import fast_path

    client = MlflowClient(f"sqlite:///{smoke_pipeline.ws / 'mlflow.db'}")
    expected = f"cpu, {fast_path('auto', 'auto', torch.device('cpu'))}"
    for name in ("smoke-grid-cnn", "smoke-grid-resnet18", "smoke-grid-inception",
                 "smoke-weights-resnet18"):
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id],
                                  max_results=1000)
        (parent,) = [r for r in runs if r.data.tags.get("kind") != "trial"]
        assert (parent.data.params["cpus_per_trial"], parent.data.params["gpus_per_trial"]) \
            == ("1.0", "0.0"), name
        trials = [r for r in runs if r.data.tags.get("kind") == "trial"]
        assert trials and all(t.data.params.get("fast_path") == expected for t in trials), \
            (name, [t.data.params.get("fast_path") for t in trials])
    assert "each trial takes 1 CPU (auto)" in smoke_pipeline.out


def trial_histories(ws: Path, parent_id: str, metric: str) -> dict[str, dict]:
    """trial id -> its run's status, tags, epochs and {epoch: (metric, timestamp)}, for the
    trial runs under one parent run (one run per trial, asserted)."""
    with contextlib.closing(sqlite3.connect(ws / "mlflow.db")) as con:
        runs = con.execute(
            "select r.run_uuid, r.status from runs r join tags t on t.run_uuid = r.run_uuid "
            "where t.key = 'mlflow.parentRunId' and t.value = ?", (parent_id,)).fetchall()
        out: dict[str, dict] = {}
        for run, status in runs:
            tags = dict(con.execute("select key, value from tags where run_uuid = ?", (run,)))
            assert tags["trial_id"] not in out, f"trial {tags['trial_id']} has two runs"
            params = dict(con.execute("select key, value from params where run_uuid = ?",
                                      (run,)))
            epochs = params["epochs"]
            history = {step: (value, ts) for step, value, ts in con.execute(
                "select step, value, timestamp from metrics where run_uuid = ? and key = ?",
                (run, metric))}
            out[tags["trial_id"]] = {"status": status, "tags": tags, "epochs": int(epochs),
                                     "history": history, "params": params}
        return out


def asha_replays(history: dict[str, dict], rungs: list[int], rf: float) -> list[dict]:
    """ASHA's decisions replayed on the recorded metrics of one group of trials (same epochs):
    at each rung, trials arrive in the order of their metric's timestamp at that epoch (the
    lineage logs a result right after the scheduler has ruled on it) and one is stopped when
    its value is below the (1 - 1/rf) percentile of those that arrived before it. Returns
    {trial: (rung, value, cutoff, trials compared)} of the stopped ones, for each arrival order
    the timestamps allow (two trials in the same millisecond could have come either way)."""
    outcomes: list[tuple[dict, set]] = [({}, set(history))]
    for rung in rungs:
        replayed = []
        for stops, alive in outcomes:
            assert all(rung in history[t] for t in alive), (rung, alive)  # all reached it
            arrivals = sorted((history[t][rung][1], t) for t in alive)
            ties = [[t for _, t in group]
                    for _, group in itertools.groupby(arrivals, key=lambda a: a[0])]
            for order in itertools.product(*(itertools.permutations(g) for g in ties)):
                stopped, seen = dict(stops), []
                for trial in itertools.chain.from_iterable(order):
                    value = history[trial][rung][0]
                    if seen and value < (cutoff := float(np.percentile(seen, (1 - 1 / rf)
                                                                       * 100))):
                        stopped[trial] = (rung, value, cutoff, len(seen))
                    seen.append(value)
                replayed.append((stopped, alive - set(stopped)))
        outcomes = replayed
    return [stopped for stopped, _ in outcomes]


def trunk_replays(trials: dict[str, dict], rungs: list[int], rf: float) -> list[dict]:
    """ASHA on wsd trunks (search/asha.py), replayed: a trunk's value at a rung is its trials'
    (they report the same numbers there), arriving when the first of them logged it; returns
    {batch size: (rung, value, cutoff, trunks compared)} of the trunks cut, for each arrival
    order the timestamps allow."""
    trunks: dict[str, dict] = {}
    for t in trials.values():
        branch = branch_epoch(TrainConfig(
            epochs=t["epochs"], warmup_epochs=int(t["params"]["warmup_epochs"]),
            schedule="wsd", decay_fraction=float(t["params"]["decay_fraction"])))
        for rung in rungs:
            if rung in t["history"] and rung <= branch:
                seen = trunks.setdefault(t["params"]["batch_size"], {}).get(rung)
                if seen is None or t["history"][rung][1] < seen[1]:
                    trunks[t["params"]["batch_size"]][rung] = t["history"][rung]
    return asha_replays(trunks, rungs, rf)


def trunk_stop_reason(rung: int, batch: str, metric: str, value: float, cutoff: float,
                      compared: int) -> str:
    return (f"ASHA rung at epoch {rung} of the shared trunk: the trunk of batch size {batch} "
            f"had {metric} {value:.4f}, below the cutoff {cutoff:.4f} of {compared} other "
            "trunk(s); no branch of it starts later")


def stop_reason(rung: int, length: int, metric: str, value: float, cutoff: float,
                compared: int) -> str:
    """The stop_reason tag of a trial ASHA stopped (search/lineage.py asha_tags)."""
    return (f"ASHA rung at epoch {rung} of the {length}-epoch trials: {metric} {value:.4f} "
            f"below the cutoff {cutoff:.4f} of {compared} other trial(s)")


def test_asha_stopped_exactly_the_trials_below_their_rungs_cutoff(smoke_pipeline):
    """Schedule-aware ASHA end to end: in each search that ran start to end in one process (no
    Ctrl-C, no kill, no resume in between), the trials whose MLflow runs say stopped_by=asha
    are exactly those that ASHA, replayed on the recorded metrics of the trials of the same
    length at the same rung, stops; each stopped where the replay says, trained no further,
    and says why with the value and cutoff the replay computes. The others trained to their
    last epoch."""
    p = smoke_pipeline
    headers = re.findall(r"^=== stage \d+/\d+: (\S+) ",
                         "\n".join((p.interrupted_out, p.killed_out, p.out)), re.M)
    whole = {name for name in STAGES[:-1] if headers.count(name) == 1}
    assert {"smoke-grid-cnn", "smoke-weights-resnet18"} <= whole, headers  # how the fixture
    stopped = {}  # interrupts the pipeline: in its second and third stages
    for name in sorted(whole):
        parent_id, _, _ = the_parent(p.ws, name)
        with contextlib.closing(sqlite3.connect(p.ws / "mlflow.db")) as con:
            params = dict(con.execute("select key, value from params where run_uuid = ?",
                                      (parent_id,)))
        grace, rf = int(params["grace_period"]), float(params["reduction_factor"])
        metric = params.get("objective", "val_acc")  # what the search (and ASHA) maximises
        trials = trial_histories(p.ws, parent_id, metric)
        assert len(trials) == 4, (name, sorted(trials))
        if all(t["params"].get("schedule") == "wsd" and "trunk_lengths" in t["params"]
               for t in trials.values()):  # shared trunks: ranked per trunk, across lengths
            stopped.update({f"{name}/{k}": v for k, v in trunk_stops(name, trials, grace, rf,
                                                                     metric).items()})
            continue
        for length in sorted({t["epochs"] for t in trials.values()}):
            group = {tid: t for tid, t in trials.items() if t["epochs"] == length}
            rungs = [r for r in (int(grace * rf ** k) for k in range(8)) if r < length]
            assert rungs, (name, length)  # the smoke grids are long enough to have a rung
            expected = [{tid: (str(rung), stop_reason(rung, length, metric, *why))
                         for tid, (rung, *why) in replay.items()}
                        for replay in asha_replays({tid: t["history"] for tid, t in
                                                    group.items()}, rungs, rf)]
            recorded = {tid: (t["tags"]["stopped_at_epoch"], t["tags"]["stop_reason"])
                        for tid, t in group.items() if t["tags"].get("stopped_by") == "asha"}
            assert recorded in expected, (name, length, recorded, expected)
            for tid, t in group.items():  # a stopped trial trained no further than its rung
                last = int(recorded[tid][0]) if tid in recorded else length
                assert sorted(t["history"]) == list(range(1, last + 1)), (name, tid)
                assert t["status"] == "FINISHED", (name, tid, t["status"])
                if tid not in recorded:
                    assert not {"stopped_by", "stopped_at_epoch", "stop_reason"} & set(
                        t["tags"]), (name, tid, t["tags"])
            stopped.update({f"{name}/{tid}": why for tid, why in recorded.items()})
    assert stopped, "ASHA stopped no trial in these searches: nothing of its was checked"


def trunk_stops(name: str, trials: dict[str, dict], grace: int, rf: float, metric: str
                ) -> dict[str, tuple]:
    """A wsd grid's stops checked against trunk_replays: every trial of a cut trunk stopped at
    or before the rung (one that started after the cut, at its first epoch), saying why with
    the trunk's value and cutoff; the others trained to their end (the smoke grid's rungs all
    lie inside the trunk: no decay rung)."""
    longest = max(t["epochs"] for t in trials.values())
    rungs = [r for r in (int(grace * rf ** k) for k in range(8)) if r < longest]
    recorded = {tid: (t["tags"]["stopped_at_epoch"], t["tags"]["stop_reason"])
                for tid, t in trials.items() if t["tags"].get("stopped_by") == "asha"}
    outcomes = []
    for cut in trunk_replays(trials, rungs, rf):
        outcome = {}
        for tid, t in trials.items():
            batch = t["params"]["batch_size"]
            if batch in cut:
                rung, *why = cut[batch]
                last = max(t["history"])
                outcome[tid] = (str(last), trunk_stop_reason(rung, batch, metric, *why))
                if last > rung:
                    outcome[tid] = None  # trained past the rung that cut its trunk
        outcomes.append(outcome)
    assert recorded in outcomes, (name, recorded, outcomes)
    for tid, t in trials.items():
        last = int(recorded[tid][0]) if tid in recorded else t["epochs"]
        assert sorted(t["history"]) == list(range(1, last + 1)), (name, tid)
        assert t["status"] == "FINISHED", (name, tid, t["status"])
    return recorded


def test_resume_of_a_finished_pipeline_only_prints_the_summary(smoke_pipeline):
    from tunefuse.stages import fmt_time

    before = trial_runs(smoke_pipeline.ws)
    code, out = _run_streaming([sys.executable, "-m", "search.pipeline", "--profile", "smoke",
                                "--workspace", str(smoke_pipeline.ws), "--resume"],
                               timeout=300)  # in a process group of its own, killed after
    assert code == 0, out[-5000:]
    assert "5 stage(s) already done" in out and "=== stage" not in out
    assert "seed: Model fusion (4 models)" in out
    assert trial_runs(smoke_pipeline.ws) == before
    assert fmt_time(3725) == "1h 02m" and fmt_time(61.4) == "1m 01s"


@pytest.mark.parametrize("args, message", [
    (["--models", "cnn,vgg"], "unknown model(s) vgg"),
    (["--models", ","], "--models is empty"),
    (["--models", "cnn,cnn"], "names a model twice"),
    (["--top-k", "0"], "--top-k must be at least 1"),
    (["--resume"], "no pipeline named 'smoke'"),
    # its first stage refuses, before any records: the pipeline's state goes too
    (["--name", "new", "--time-budget", "20s", "--no-dashboard"],
     "fits no pipeline new on this machine: its stage grid search new-grid-cnn needs"),
])
def test_bad_arguments(args, message, earlier_workspace, capsys):
    from tunefuse import pipeline

    try:
        with untouched(earlier_workspace):  # docs/bad-input.md: workspace untouched
            code = exit_code(pipeline.main, "--profile", "smoke", "--workspace",
                             str(earlier_workspace), *args)
    finally:  # a refusal after Ray started (a budget nothing fits): the next test's own cluster
        ray.shutdown()
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


@pytest.mark.parametrize("given, expected", [(None, 30_000), ("all", None), ("5000", 5000)])
def test_the_train_size_reaches_every_stage(given, expected):
    """--train-size given to the pipeline (a number, or all) is what each stage loads; without
    it, the profile's."""
    from search.grid import GridOptions
    from search.options import for_stage, train_size
    from search.profiles import PROFILES
    from search.weights import WeightsOptions
    from trainables.cli import options_from
    from tunefuse import pipeline

    args = pipeline.parser().parse_args(
        ["--profile", "quick", *(["--train-size", given] if given else [])])
    options = options_from(pipeline.PipelineOptions, args)
    for cls in (GridOptions, WeightsOptions):
        stage = for_stage(cls, options, model="resnet18", name="s", resume=False)
        assert train_size(stage, PROFILES["quick"]) == expected


@pytest.mark.parametrize("profile, given, expected", [
    ("standard", None, "flip"), ("standard", "none", "none"), ("quick", None, "flip"),
    ("quick", "none", "none")])
def test_the_report_stage_takes_the_profiles_tta_unless_given(profile, given, expected):
    from search.profiles import PROFILES
    from trainables.cli import options_from
    from tunefuse import pipeline
    from tunefuse.stages import plan, report_options

    args = pipeline.parser().parse_args(
        ["--profile", profile, *(["--tta", given] if given else [])])
    options = options_from(pipeline.PipelineOptions, args)
    stages = plan(profile, ["cnn"], options)
    got = report_options(options, stages, PROFILES[profile])
    assert got.tta == expected and got.calibrate is PROFILES[profile].fusion_calibrate


def test_a_second_pipeline_of_the_same_name_is_refused(smoke_pipeline, capsys):
    from tunefuse import pipeline

    with untouched(smoke_pipeline.ws):  # the pipeline's state, its runs and files as they were
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
    ci = [ln.split("#")[0].strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()
          if ln.strip() and not ln.startswith("#")]
    assert test_cmd + " || status=$?" in ci  # its failure is CI's, once the slow tests end
    assert any(ln.startswith("make test-slow ") and ln.endswith("&") for ln in ci)
    # the whole set-up, before the tests: the venv beside Debian's packages, both waited for
    setup = re.search(r"^setup: (.*)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    apt = next(ln for ln in ci if ln.startswith("make data "))
    assert set(setup.split()) == set(apt.split("||")[0].split()[1:]) | {"venv"}
    first_test = ci.index(test_cmd + " || status=$?")
    assert ci.index('make venv > "$venv_log" 2>&1 &') < ci.index(apt) < first_test
    assert ci.index('wait "$venv" || status=$?') < first_test
    # the slow tests left for after make test count as much as the others
    assert ci.index('make test-slow TESTS="$LATE" || status=$?') == first_test + 1
    assert 'wait "$slow" || status=$?' in ci and ci[-1] == 'exit "$status"'


def test_readme_commands_name_real_flags():
    """Every `python -m MODULE --flag` in the README is a flag that MODULE accepts."""
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"python -m ([\w.]+)((?:[^\n`]|\\\n)*)", readme)
    assert len(commands) >= 8
    asked = {module: subprocess.Popen([sys.executable, "-m", module, "--help"], cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for module in dict.fromkeys(m for m, _ in commands)}  # side by side
    helps = {module: proc.communicate(timeout=120)[0] for module, proc in asked.items()}
    for module, rest in commands:
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", rest):
            assert flag in helps[module], f"README: python -m {module} ... {flag}"


# --- in the browser ---------------------------------------------------------------------------

def test_ray_dashboard_of_the_pipeline_lists_its_node(smoke_pipeline):
    need_browser()  # without Chromium the pipeline ran without opening its dashboard
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
         "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)  # its server workers share its process group
    try:
        assert wait_http(f"http://127.0.0.1:{port}/health", timeout=120) == 200
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever did not stop


def test_mlflow_ui_shows_the_experiment_its_trials_and_a_val_acc_chart(
        smoke_pipeline, mlflow_ui, browser, out_dir):
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    client = MlflowClient(f"sqlite:///{smoke_pipeline.ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke-grid-cnn")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "grid"]
    assert len(parents) == 1, [r.info.run_id for r in parents]
    parent = parents[0]
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
