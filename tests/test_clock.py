"""A time budget kept while the trials run (search/clock.py): a trial that cannot end before the
deadline does not start, the search is cut when nothing left fits or the deadline comes, and
what was cut resumes. A real Tune run on a real local Ray cluster (a function trainable that
reports its epochs at once), and the trunk arithmetic of a trial's cost."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import need_real_data, ray_for_the_tests, run_module, trial_records
from ray import tune

from search.clock import Clock, Clocked, TrialCost
from search.context import RunContext
from search.summary import config_of
from search.throughput import Throughput
from search.tuner import restored_parts
from trainables.cli import EXIT_NONE_FINISHED, EXIT_OK
from trainables.trunk import place


def epochs_trainable(config):
    for epoch in range(1, config["epochs"] + 1):
        tune.report({"epoch": epoch, "val_acc": epoch / 10})


class PerEpoch:
    """A cost of 100 s an epoch, whatever the trial (its config's ``epochs``)."""

    def seconds(self, trial, trials) -> float:
        return 100.0 * trial.config["epochs"]


@pytest.fixture(scope="module")
def local_ray():
    with ray_for_the_tests(num_cpus=2):
        yield


def run(tmp_path, clock: Clock, lengths) -> tune.ResultGrid:
    scheduler = Clocked()
    scheduler.attach(RunContext(clock=clock))
    return tune.Tuner(
        tune.with_resources(epochs_trainable, {"cpu": 1}),
        param_space={"epochs": tune.grid_search(list(lengths))},
        tune_config=tune.TuneConfig(metric="val_acc", mode="max", scheduler=scheduler),
        run_config=tune.RunConfig(name="clocked", storage_path=str(tmp_path), verbose=0),
    ).fit()


def test_a_trial_that_cannot_end_before_the_deadline_does_not_start(local_ray, tmp_path):
    """250 s left: the 1- and 2-epoch trials (100 s, 200 s) run; the 3- and 4-epoch ones never
    start, and once nothing runs the search is cut, its waiting trials kept for a resume."""
    clock = Clock(time.time() + 250, PerEpoch())
    results = run(tmp_path, clock, (1, 3, 2, 4))
    epochs = {config_of(r)["epochs"]: (r.metrics or {}).get("epoch") for r in results}
    assert epochs[1] == 1 and epochs[2] == 2, epochs
    assert clock.why == "no trial left to start fits what is left of it"
    assert sorted(clock.cut.values()) == [0, 0], clock.cut  # two cut, neither started
    assert epochs[3] is None and epochs[4] is None, epochs
    saved = tune.ExperimentAnalysis(str(tmp_path / "clocked")).trials
    waiting = sorted(t.config["epochs"] for t in saved if t.status != "TERMINATED")
    assert waiting == [3, 4], [(t.config, t.status) for t in saved]

    # a longer budget, resumed: the two that waited run, the two that ended do not again
    restored = tune.Tuner.restore(str(tmp_path / "clocked"), trainable=tune.with_resources(
        epochs_trainable, {"cpu": 1}), resume_unfinished=True)
    later = Clock(time.time() + 1000, PerEpoch())
    restored_parts(restored)[-1].attach(RunContext(clock=later))
    again = restored.fit()
    assert not later.cut
    assert sorted((r.metrics or {}).get("epoch") for r in again) == [1, 2, 3, 4]


def test_a_deadline_already_past_starts_nothing(local_ray, tmp_path):
    """A deadline already past: nothing starts, every trial is cut before it started."""
    clock = Clock(time.time() - 1, PerEpoch())
    results = run(tmp_path, clock, (1, 2))
    assert clock.why == "its deadline came" and sorted(clock.cut.values()) == [0, 0]
    assert all(not (r.metrics or {}).get("epoch") for r in results)


def test_without_a_deadline_every_trial_runs(local_ray, tmp_path):
    clock = Clock(None, PerEpoch())
    results = run(tmp_path, clock, (1, 2, 3))
    assert not clock.cut
    assert sorted((r.metrics or {}).get("epoch") for r in results) == [1, 2, 3]


def trial(reached: int = 0):
    """A 20-epoch trial of a grid with shared trunks, at epoch ``reached``."""
    config = {"model": "resnet18", "model_kwargs": {"width": 16}, "batch_size": 64,
              "epochs": 20, "warmup_epochs": 2, "schedule": "wsd", "decay_fraction": 0.2,
              "trunk_cache": "/tmp/trunks", "trunk_lengths": [10, 20]}
    return SimpleNamespace(config=config, trial_id=f"t{reached}-{id(config)}",
                           last_result={"epoch": reached} if reached else {})


def test_a_trials_trunk_counts_until_a_sibling_computed_it():
    """1,000 img/s on 1,000 images, no validation, 5 s start: an epoch is 1 s. A trial's shared
    trunk counts until a sibling of that trunk got past it."""
    cost = TrialCost(lambda c: Throughput({64: 1000.0}, 0.0, 1, 5.0), 1000, 0)
    new = trial()
    branch = place(new.config).branch
    assert 0 < branch < 20
    assert cost.seconds(new, [new]) == pytest.approx(5 + 20)
    assert cost.seconds(new, [new, trial(branch - 1)]) == pytest.approx(5 + 20)
    assert cost.seconds(new, [new, trial(branch)]) == pytest.approx(5 + 20 - branch)


# --- a search cut mid-trial, and resumed ----------------------------------------------------------

GRID = ("search.grid", "--model", "cnn", "--profile", "smoke", "--batch-sizes", "64",
        "--scheduler", "none", "--num-cpus", "2", "--cpus-per-trial", "1", "--no-dashboard")


def grid(ws: Path, *more: str, env: dict | None = None):
    out = run_module(*GRID, "--workspace", str(ws), *more, env=env)
    return out, out.stdout + out.stderr


@pytest.mark.slow
def test_a_budget_that_ends_mid_trial_loses_no_trial(tmp_path):
    """The deadline at an exact point (the first trial's epoch 2 recorded:
    TUNEFUSE_DEADLINE_AT, trainables/failpoints.py) while the 3- and 4-epoch trials of a shared
    trunk run: the running trials are cut at their last checkpoint and recorded so, never as
    fusion candidates; --resume with a longer budget ends them, each in its one MLflow run,
    every epoch's val_acc that of the search run without a budget (one thread a trial: to the
    bit)."""
    need_real_data()
    plain, text = grid(tmp_path / "plain")
    assert plain.returncode == 0, text[-3000:]
    ws = tmp_path / "cut"
    cut, text = grid(ws, "--time-budget", "10m",
                     env={**os.environ, "TUNEFUSE_DEADLINE_AT": "result-logged:epoch=2"})
    assert cut.returncode in (EXIT_OK, EXIT_NONE_FINISHED), text[-3000:]
    assert "the time budget ended it (its deadline came)" in text, text[-3000:]
    assert re.search(r"cnn-b64-e4-\d+ +64 +4 +cut at [1-3] \(budget\)", text), text[-3000:]
    runs = trial_records(ws, "grid-cnn")
    with contextlib.closing(sqlite3.connect(ws / "mlflow.db")) as con:
        tags = dict(con.execute("select r.run_uuid || '/' || t.key, t.value from runs r join "
                                "tags t on t.run_uuid = r.run_uuid where t.key in "
                                "('time_budget', 'time_budget_cut')").fetchall())
    cut_runs = [status for status, _ in runs.values() if status == "KILLED"]
    assert cut_runs and len([k for k in tags if k.endswith("/time_budget")]) == len(cut_runs)
    assert all(status in ("FINISHED", "KILLED") for status, _ in runs.values()), runs
    assert any(k.endswith("/time_budget_cut") for k in tags), tags

    resumed, text = grid(ws, "--time-budget", "10m", "--resume")
    assert resumed.returncode == EXIT_OK, text[-3000:]
    # trials by their index in the grid (Tune's ids differ by experiment)
    after, before = ({t.rsplit("_", 1)[-1]: r for t, r in trial_records(w, "grid-cnn").items()}
                     for w in (ws, tmp_path / "plain"))
    assert {t: s for t, (s, _) in after.items()} == {t: "FINISHED" for t in before}
    for trial, (_, epochs) in after.items():
        assert [(e, v) for e, v, _ in epochs] == [(e, v) for e, v, _ in before[trial][1]], trial


@pytest.mark.slow
def test_a_budgeted_pipeline_ends_inside_its_budget_with_a_report_and_resumes(tmp_path):
    """The smoke pipeline under --time-budget 3m, the deadline of the stage running when a trial
    first records its epoch 2 put there (TUNEFUSE_DEADLINE_AT): it ends inside the budget with
    a report made from the trials that finished (each stage's deadline is kept by its clock,
    past it only by a grace the later stages lose, and the report's reserve, 90 s at least, is
    what the report stage has: a smoke report takes 10 to 30 s). Which stages are cut depends
    on the machine (a stage's share of 3 minutes is under 40 s, and in CI make test runs
    beside): --resume with a longer budget continues every stage cut, and makes the report
    again."""
    need_real_data()
    ws, budget = tmp_path / "ws", 180
    command = ("search.pipeline", "--profile", "smoke", "--workspace", str(ws), "--num-cpus",
               "2", "--no-dashboard")
    began = time.monotonic()
    out = run_module(*command, "--time-budget", f"{budget}s", env={
        **os.environ, "TUNEFUSE_DEADLINE_AT": "result-logged:epoch=2"})
    took = time.monotonic() - began
    text = out.stdout + out.stderr
    assert out.returncode == EXIT_OK, text[-3000:]
    assert took < budget, f"{took:.0f} s for a budget of {budget} s"
    assert re.search(r"^experiment smoke-\S+: the time budget ended it", text, re.M), text[-3000:]
    state = json.loads((ws / "pipelines" / "smoke.json").read_text())
    cut_stages = [s["name"] for s in state["stages"] if s.get("cut")]
    assert cut_stages and f"cut by the time budget: {', '.join(cut_stages)}" in text, state
    report = ws / "reports" / "smoke" / "summary.json"
    first = json.loads(report.read_text())["mlflow"]["run_id"]

    again = run_module(*command, "--time-budget", "10m", "--resume")
    text = again.stdout + again.stderr
    assert again.returncode == EXIT_OK, text[-3000:]
    assert f"continuing the stage(s) its time budget cut: {', '.join(cut_stages)}" in text
    state = json.loads((ws / "pipelines" / "smoke.json").read_text())
    assert not any(s.get("cut") for s in state["stages"]) and all(
        s["status"] == "done" for s in state["stages"]), state
    for stage in cut_stages:  # every trial ended, once (ASHA's stops end FINISHED as well)
        ended = {t: s for t, (s, _) in trial_records(ws, stage).items()}
        assert ended and set(ended.values()) == {"FINISHED"}, (stage, ended)
    assert json.loads(report.read_text())["mlflow"]["run_id"] != first  # made again


def running(epochs: int, reached: int, seconds_per_epoch: float):
    return SimpleNamespace(status="RUNNING", config={"epochs": epochs},
                           last_result={"epoch": reached, "time_this_iter_s": seconds_per_epoch})


def test_past_the_deadline_the_trials_that_end_within_the_grace_go_on():
    """A pipeline's stage (its grace: what the later stages can spare) lets a trial at 9 of its
    10 epochs end rather than lose it; a standalone search (no grace) does not; one that ends
    too late, or has not reported an epoch, does not keep the search open."""
    now = time.time()
    staged = Clock(now - 1, None, grace=60.0)
    near, far = running(10, 9, 30.0), running(10, 2, 30.0)
    fresh = SimpleNamespace(status="RUNNING", config={"epochs": 10}, last_result={})
    assert staged.finishing([near, far, fresh]) == [near]
    assert staged.finishing([far, fresh]) == []
    assert Clock(now - 1, None).finishing([near]) == []  # no grace
    assert Clock(now - 1, None, grace=20.0).finishing([near]) == []  # 30 s to go


def test_a_stages_grace_is_a_quarter_of_what_the_later_stages_have():
    from tunefuse.stages import Stage, stage_grace

    stages = [Stage("g1", "grid"), Stage("g2", "grid"), Stage("w", "weights"),
              Stage("r", "report")]
    started = time.time()
    ctx = SimpleNamespace(options=SimpleNamespace(time_budget=3600.0), stages=stages,
                          context=RunContext(deadline=started + 1000))
    end = started + 3600 - 144  # the report's reserve: 4% of an hour
    assert stage_grace(ctx, 0, started) == pytest.approx(0.25 * (end - (started + 1000)))
    assert stage_grace(ctx, 2, started) == 0.0  # the last search stage: the report only after
    ctx.context.deadline = None
    assert stage_grace(ctx, 0, started) == 0.0  # no budget


def test_a_later_stage_nothing_fits_is_skipped_and_the_report_still_comes(tmp_path, capsys,
                                                                          monkeypatch):
    """A pipeline whose second search stage is refused by what is left of its budget (the
    first stage ran long) skips it, marked cut, and goes on to its report; --resume runs it.
    The first stage's refusal would be the pipeline's (tests/test_pipeline.py)."""
    from search.budget import NothingFits
    from search.profiles import PROFILES
    from search.workspace import Workspace
    from trainables.cli import EXIT_INTERRUPTED, EXIT_USAGE, NORMAL
    from tunefuse import stages as pipeline

    ws = Workspace.open(tmp_path / "ws")
    stages = pipeline.plan("p", ["cnn", "resnet18"], SimpleNamespace(no_weights=True))
    store = pipeline.PipelineState(ws, "p")
    state = {"name": "p", "stages": [{"name": s.name, "kind": s.kind, "model": s.model,
                                      "status": "pending", "seconds": 0.0} for s in stages]}
    ran: list[str] = []

    def stage_run(ctx, stage, resume):
        ran.append(stage.name)
        if stage.kind == "report":
            raise KeyboardInterrupt  # the pipeline stops here: its state says the rest
        if stage.name == "p-grid-resnet18" and len(ran) < 4:  # refused, nothing recorded
            ctx.context.refused = NothingFits("pipeline p", 600, 400.0, 900.0, "grid search")
            return EXIT_USAGE
        ctx.ws.save_state(stage.name, {"name": stage.name})
        return 0

    monkeypatch.setattr(pipeline, "run_stage", stage_run)
    options = SimpleNamespace(verbosity=NORMAL, time_budget=600.0)
    code = pipeline.run_pipeline(options, ws, None, store, state, stages, PROFILES["smoke"])
    assert code == EXIT_INTERRUPTED and ran == ["p-grid-cnn", "p-grid-resnet18", "p"]
    out = capsys.readouterr().out
    assert "pipeline p: stage p-grid-resnet18 skipped: its smallest plan needs about 7 min" \
        in out, out
    records = {r["name"]: r for r in store.load()["stages"]}
    assert records["p-grid-resnet18"]["status"] == "done"
    assert records["p-grid-resnet18"]["cut"] and records["p-grid-resnet18"]["skipped"]
    assert records["p"]["status"] == "interrupted"

    code = pipeline.run_pipeline(options, ws, None, store, store.load(), stages,
                                 PROFILES["smoke"])
    assert "continuing the stage(s) its time budget cut: p-grid-resnet18" in \
        capsys.readouterr().out
    assert ran[3:] == ["p-grid-resnet18", "p"] and code == EXIT_INTERRUPTED
    assert not store.load()["stages"][1]["cut"]


def test_the_report_fuses_the_stages_that_ran(monkeypatch):
    """A stage the budget skipped has no experiment: the report stage is not handed it."""
    from search.profiles import PROFILES
    from trainables.cli import options_from
    from tunefuse import pipeline
    from tunefuse import stages as staged

    options = options_from(pipeline.PipelineOptions, pipeline.parser().parse_args(
        ["--profile", "smoke", "--name", "p", "--models", "cnn,resnet18", "--no-weights"]))
    stages = staged.plan("p", ["cnn", "resnet18"], options)
    state = {"name": "p", "stages": [{"name": s.name, "kind": s.kind, "status": "done",
                                      "skipped": s.name == "p-grid-resnet18"} for s in stages]}
    given = []
    monkeypatch.setattr(staged.report, "run", lambda o: given.append(o) or 0)
    ctx = SimpleNamespace(options=options, stages=stages, profile=PROFILES["smoke"],
                          state=state)
    assert staged.run_stage(ctx, stages[-1], False) == 0
    assert given[0].experiments == "p-grid-cnn" and given[0].name == "p"
