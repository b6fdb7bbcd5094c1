"""The report's search-cost section: per search, the epochs an exhaustive run computes against
those its trials computed, what shared warm-ups, shared trunks and ASHA saved, and its wall
time, read from a real MLflow store written directly (no training), as a report reads it."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from analysis import fusion_run
from analysis.grids import cost_rows
from analysis.render import html_of, markdown_of
from analysis.render_cost import cost_section, duration
from analysis.select import Candidate
from analysis.summary import Fused, busy_seconds, search_costs, summarise, trial_cost

T0 = 1_767_225_600_000  # 2026-01-01, in ms: every time in the store is fixed


def add_trial(client, exp: str, parent: str, name: str, epochs: int, warmup: int,
              per_epoch: dict[str, list[float]], tags: dict | None = None,
              batch_size: int = 64) -> str:
    """A finished trial run: its params, one value per logged epoch of each metric."""
    run = client.create_run(exp, run_name=name, start_time=T0, tags={
        "mlflow.parentRunId": parent, "kind": "trial", "trial_id": name,
        "best_val_acc": "0.800000", **(tags or {})}).info.run_id
    for key, value in (("model", "resnet18"), ("epochs", str(epochs)),
                       ("warmup_epochs", str(warmup)), ("batch_size", str(batch_size)),
                       ("schedule", "wsd")):
        client.log_param(run, key, value)
    client.log_batch(run, metrics=[Metric(key, float(v), T0 + step, step)
                                   for key, values in per_epoch.items()
                                   for step, v in enumerate(values, 1)])
    client.set_terminated(run, "FINISHED", end_time=T0 + 60_000)
    return run


def add_search(client, name: str, kind: str, seconds: int | None) -> tuple[str, str]:
    """An experiment and its search's parent run, ended ``seconds`` after it started (None:
    still running)."""
    exp = client.create_experiment(name)
    parent = client.create_run(exp, run_name=name, start_time=T0, tags={
        "kind": kind, "model": "resnet18"}).info.run_id
    client.log_param(parent, "grace_period", "1")
    client.log_param(parent, "reduction_factor", "2")
    if seconds is not None:
        client.set_terminated(parent, "FINISHED", end_time=T0 + 1000 * seconds)
    return exp, parent


@pytest.fixture
def store(tmp_path):
    """A grid with the per-epoch cost metrics, a class-weight search recorded before them (and
    still running), and a grid the report does not cover.

    grid-resnet18 (warm-up 2, wsd): b64 e6 computes its trunk and its decay; b64 e4 takes
    the warm-up (2) and the trunk's epoch 3 (1) from it, computes epoch 4; b128 e6 is stopped
    by ASHA after epoch 2 (4 epochs saved); b128 e4 takes the warm-up, computes epoch 3, and
    catches epoch 3 up again with epoch 4 after a restore (2). Exhaustive 6+4+6+4 = 20,
    computed 6+1+2+3 = 12; saved: warm-ups 4, trunk 1, ASHA 4.

    weights-resnet18 (warm-up 1, 3 epochs each, no epochs_computed): one run with the
    per-epoch shared flag (epoch 1 shared: computed 2), one with only the warmup_reused tag
    (true: computed 2), one stopped by ASHA after epoch 1 (tag false: computed 1, 2 saved),
    one with epochs_computed and branch_epoch but none of the flags (epochs 1 and 2 not
    computed: a warm-up and a trunk epoch; computed 1). Exhaustive 12, computed 6; saved:
    warm-ups 3, trunk 1, ASHA 2."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp, parent = add_search(client, "grid-resnet18", "grid", 754)
    acc = [0.5, 0.6, 0.7, 0.75, 0.78, 0.8]
    add_trial(client, exp, parent, "b64-e6", 6, 2, {
        "val_acc": acc, "epochs_computed": [1] * 6, "shared": [0] * 6})
    add_trial(client, exp, parent, "b64-e4", 4, 2, {
        "val_acc": acc[:4], "epochs_computed": [0, 0, 0, 1], "shared": [1, 1, 1, 0]})
    add_trial(client, exp, parent, "b128-e6", 6, 2, {
        "val_acc": acc[:2], "epochs_computed": [1, 1], "shared": [0, 0]},
        {"stopped_by": "asha", "stopped_at_epoch": "2"}, batch_size=128)
    add_trial(client, exp, parent, "b128-e4", 4, 2, {
        "val_acc": acc[:4], "epochs_computed": [0, 0, 1, 2], "shared": [1, 1, 0, 0]},
        batch_size=128)
    exp, parent = add_search(client, "weights-resnet18", "weights", None)
    add_trial(client, exp, parent, "w-flag", 3, 1, {"val_acc": acc[:3], "shared": [1, 0, 0]})
    add_trial(client, exp, parent, "w-tag", 3, 1, {"val_acc": acc[:3]},
              {"warmup_reused": "true"})
    add_trial(client, exp, parent, "w-asha", 3, 1, {"val_acc": acc[:1]},
              {"warmup_reused": "false", "stopped_by": "asha", "stopped_at_epoch": "1"})
    add_trial(client, exp, parent, "w-noflags", 3, 1, {
        "val_acc": acc[:3], "epochs_computed": [0, 0, 1], "branch_epoch": [2, 2, 2]},
        {"warmup_reused": "true"})
    exp, parent = add_search(client, "grid-inception", "grid", 30)
    add_trial(client, exp, parent, "other", 9, 1, {"val_acc": acc[:3]})
    return client


def covered(client) -> list:
    return [client.get_experiment_by_name(n) for n in ("grid-resnet18", "weights-resnet18")]


def test_search_cost_counts_each_saving_and_falls_back_for_older_runs(store):
    cost = search_costs(cost_rows(store, covered(store)))
    grid, weights = cost["searches"]
    assert (grid["experiment"], grid["kind"], weights["kind"]) == \
        ("grid-resnet18", "grid", "weights")
    assert {k: grid[k] for k in ("trials", "stopped_by_asha", "exhaustive_epochs",
                                 "computed_epochs", "ratio", "saved_epochs", "wall_seconds",
                                 "running", "counted_from")} == {
        "trials": 4, "stopped_by_asha": 1, "exhaustive_epochs": 20, "computed_epochs": 12,
        "ratio": 0.6, "saved_epochs": {"shared_warmup": 4, "shared_trunk": 1, "asha": 4},
        "wall_seconds": 754.0, "running": False, "counted_from": {"epochs_computed": 4}}
    assert {k: weights[k] for k in ("trials", "stopped_by_asha", "exhaustive_epochs",
                                    "computed_epochs", "ratio", "saved_epochs",
                                    "wall_seconds", "running", "counted_from")} == {
        "trials": 4, "stopped_by_asha": 1, "exhaustive_epochs": 12, "computed_epochs": 6,
        "ratio": 0.5, "saved_epochs": {"shared_warmup": 3, "shared_trunk": 1, "asha": 2},
        "wall_seconds": None, "running": True,
        "counted_from": {"epochs_computed": 1, "shared": 1, "warmup_reused_tag": 2}}
    total = cost["total"]
    assert total == {"searches": 2, "trials": 8, "stopped_by_asha": 2,
                     "exhaustive_epochs": 32, "computed_epochs": 18, "ratio": 18 / 32,
                     "saved_epochs": {"shared_warmup": 7, "shared_trunk": 2, "asha": 6},
                     "wall_seconds": None, "running": True, "busy_core_seconds": 0,
                     "busy": None, "busy_validation": True}
    # the grid on its own: finished, so its total has a wall time
    alone = search_costs(cost_rows(store, covered(store)[:1]))["total"]
    assert (alone["wall_seconds"], alone["running"], alone["ratio"]) == (754.0, False, 0.6)


def test_trial_cost_fallbacks_one_by_one():
    base = {"epochs": 4, "warmup_epochs": 2, "stopped_by": None, "stopped_at": None}
    steps = {e: {"val_acc": 0.5} for e in range(1, 5)}
    # the per-epoch warmup_reused flag of a run without shared
    flagged = {e: {**v, "warmup_reused": float(e <= 2)} for e, v in steps.items()}
    assert trial_cost({**base, "per_epoch": flagged}) == {
        "exhaustive": 4, "computed": 2, "shared_warmup": 2, "shared_trunk": 0, "asha": 0,
        "counted_from": "warmup_reused", "busy_core_seconds": 0, "busy_validation": True}
    # nothing but logged epochs: each counts as computed
    assert trial_cost({**base, "per_epoch": steps})["computed"] == 4
    assert trial_cost({**base, "per_epoch": steps})["counted_from"] == "logged"
    # the tag says the warm-up was not reused: every epoch computed
    assert trial_cost({**base, "warmup_reused": False, "per_epoch": steps})["computed"] == 4
    # stopped by ASHA without its epoch tag: after the last epoch it logged
    stopped = {**base, "epochs": 10, "stopped_by": "asha", "per_epoch": steps}
    assert trial_cost(stopped)["asha"] == 6
    # a trial killed before its first result: its length, nothing computed
    assert trial_cost({**base, "per_epoch": {}})["computed"] == 0


def test_search_cost_section_in_markdown_and_html(store):
    cost = search_costs(cost_rows(store, covered(store)))
    section = cost_section({"search_cost": cost})
    md = markdown_of(section)
    lines = md.splitlines()
    assert lines[0] == "## Search cost"
    assert ("The 2 searches (8 trials) computed **18 of the 32 epochs** an exhaustive run of "
            "their trials computes (56.2%); some are still running. Shared warm-ups saved 7 "
            "epochs, shared trunks 2, ASHA's early stops 6 (2 trials stopped).") in md
    rows = [line for line in lines if line.startswith("| ")]
    grid_id, weights_id = (s["run_id"][:8] for s in cost["searches"])
    assert rows[2:] == [
        f"| grid-resnet18 | 4 | 20 | 12 | 60.0% | 4 | 1 | 4 | 12m 34s | n/a | `{grid_id}` |",
        f"| weights-resnet18 | 4 | 12 | 6 | 50.0% | 3 | 1 | 2 | running | n/a | `{weights_id}` |",
        "| **all searches** | 8 | 32 | 18 | 56.2% | 7 | 2 | 6 | running | n/a |  |"]
    assert rows[0].count("|") - 1 == rows[1].count("---") == len(rows[2].split(" | ")) == 11
    assert "grid-inception" not in md  # a search the report does not cover
    assert ("computed epochs counted for 1 trial of weights-resnet18 by its logged epochs "
            "less those flagged shared; 2 trials of weights-resnet18 by its logged epochs "
            "less the warm-up its warmup_reused tag says it reused.") in md
    page = html_of(section)
    assert "<h2>Search cost</h2>" in page and "<b>18 of the 32 epochs</b>" in page
    assert re.search(r"<tr><td>grid-resnet18</td><td>4</td><td>20</td><td>12</td>"
                     r"<td>60.0%</td><td>4</td><td>1</td><td>4</td><td>12m 34s</td>", page)
    assert "<td><b>all searches</b></td>" in page
    # a search interrupted and not resumed: its time until then, and its status
    cost["searches"][0]["status"] = "KILLED"
    assert "| 4 | 12m 34s (killed) |" in markdown_of(cost_section({"search_cost": cost}))
    # a summary without the section (an older report) renders none
    assert cost_section({}) is None and cost_section({"search_cost": {"searches": []}}) is None
    assert [duration(s) for s in (42, 491, 3900, None)] == ["42s", "8m 11s", "1h 05m",
                                                            "running"]


def test_report_writes_the_section_into_its_files(store, tmp_path):
    """fusion_run.write, the step of the report command that reads the searches back: the
    section reaches summary.json, report.md and report.html, after the detailed tables."""
    rng = np.random.default_rng(0)
    y_val, y_test = rng.integers(0, 10, 200), rng.integers(0, 10, 300)
    probs = {}
    members = []
    for i, name in enumerate(("a" * 32, "b" * 32)):
        members.append(Candidate(name, "grid-resnet18", "grid", "resnet18", 0.8 - i / 10,
                                 3, "best_checkpoint/checkpoint.pt", "f" * 64, 1000, 0,
                                 {"batch_size": "64", "epochs": "4"}))
        probs[name] = tuple(rng.dirichlet(np.ones(10), len(y)) for y in (y_val, y_test))
    fused = Fused("uniform", False, members, [0.5, 0.5], dict.fromkeys(probs, 1.0), probs,
                  (probs["a" * 32][0] + probs["b" * 32][0]) / 2,
                  (probs["a" * 32][1] + probs["b" * 32][1]) / 2)
    context = {"name": "cost", "created": "2026-01-01 00:00:00 UTC", "workspace": "/ws",
               "experiments": ["grid-resnet18", "weights-resnet18"],
               "data": {"fingerprint": "f" * 64, "val_images": 200, "test_images": 300}}
    summary = summarise(fused, members[0], y_val, y_test, 20, context,
                        {m.run_id: "x.pt" for m in members})
    out = tmp_path / "out"
    out.mkdir()
    fusion_run.write(out, summary, fused, y_test, store)
    saved = json.loads((out / "summary.json").read_text())["search_cost"]
    assert [s["experiment"] for s in saved["searches"]] == ["grid-resnet18", "weights-resnet18"]
    assert (saved["total"]["exhaustive_epochs"], saved["total"]["computed_epochs"]) == (32, 18)
    md = (out / "report.md").read_text()
    assert md.index("## Per-class test scores") < md.index("## Search cost")
    assert "| grid-resnet18 | 4 | 20 | 12 | 60.0% | 4 | 1 | 4 | 12m 34s |" in md
    page = (out / "report.html").read_text()
    assert "<h2>Search cost</h2>" in page and "<td>weights-resnet18</td>" in page


def test_how_busy_the_cores_were():
    """Each computed epoch's training and validation seconds x its threads, over wall time x the
    search's cores; an epoch taken from a trunk costs nothing; older runs count training only."""
    from analysis.render_cost import busy_text

    per = {1: {"epochs_computed": 1, "train_seconds": 10.0, "val_seconds": 2.0, "threads": 1.0},
           2: {"epochs_computed": 0, "train_seconds": 10.0, "val_seconds": 2.0, "threads": 1.0},
           3: {"epochs_computed": 1, "train_seconds": 8.0, "val_seconds": 2.0, "threads": 2.0}}
    assert busy_seconds(per) == {"busy_core_seconds": 12.0 + 20.0, "busy_validation": True}
    old = {1: {"train_seconds": 10.0, "threads": 1.0}}
    assert busy_seconds(old) == {"busy_core_seconds": 10.0, "busy_validation": False}
    trial = {"epochs": 3, "warmup_epochs": 1, "per_epoch": per}
    search = {"experiment": "grid-cnn", "kind": "grid", "run_id": "r", "status": "FINISHED",
              "start_ms": 1_000, "end_ms": 81_000, "cpus": 2.0, "trials": [trial, trial]}
    cost = search_costs([search, {**search, "cpus": None}])
    assert cost["searches"][0]["busy"] == pytest.approx(64 / (80 * 2))
    assert cost["searches"][1]["busy"] is None and cost["total"]["busy"] is None
    total = search_costs([search])["total"]
    assert total["busy"] == pytest.approx(0.4)
    assert busy_text(total).startswith(" Their training and validation steps kept the cores "
                                       "busy 40.0% of the wall time")


def test_a_budgeted_search_shows_its_budget_plan_wall_and_cuts():
    """A search run under --time-budget: its budget, its plan's estimate against its wall time,
    what the plan left out and what its clock cut, from its parent run (analysis/grids.py
    budget_of); a search without one has no such row, and a report of none no table."""
    from types import SimpleNamespace

    from analysis.grids import budget_of

    parent = SimpleNamespace(data=SimpleNamespace(
        params={"budget_seconds": "600", "budget_plan_seconds": "540",
                "budget_left_out": "epochs 4 (the 3-epoch trunk fits; 4 does not)"},
        tags={"time_budget_cut": "1 trial(s) cut, 0 not started: its deadline came"}))
    budget = budget_of(parent)
    assert budget == {"seconds": 600.0, "plan_seconds": 540.0,
                      "left_out": "epochs 4 (the 3-epoch trunk fits; 4 does not)",
                      "cut": "1 trial(s) cut, 0 not started: its deadline came"}
    assert budget_of(SimpleNamespace(data=SimpleNamespace(params={}, tags={}))) is None
    trial = {"epochs": 3, "warmup_epochs": 1, "per_epoch": {}}
    search = {"experiment": "grid-cnn", "kind": "grid", "run_id": "r", "status": "FINISHED",
              "start_ms": 1_000, "end_ms": 601_000, "cpus": 2.0, "trials": [trial],
              "budget": budget}
    plain = {**search, "experiment": "grid-resnet18", "budget": None}
    md = markdown_of(cost_section({"search_cost": search_costs([search, plain])}))
    assert "Time budget: **1 search** ran under --time-budget." in md
    assert ("| grid-cnn | 10m 00s | 9m 00s | 10m 00s | 90.0% | epochs 4 (the 3-epoch trunk "
            "fits; 4 does not) | 1 trial(s) cut, 0 not started: its deadline came |") in md
    assert "| grid-resnet18 | 10m" not in md
    assert "Time budget" not in markdown_of(cost_section({"search_cost": search_costs([plain])}))
