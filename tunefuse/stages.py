"""The pipeline's stages: the plan, the state that says what each did, and running them.

Each stage is an ordinary experiment of the workspace, run through its own ``run(options)``
(search/grid.py, search/weights.py, analysis/report.py) with options built from the pipeline's:
the same commands a user runs one by one, with the same MLflow lineage and resume.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, fields, replace

from analysis import report
from analysis.publish import FUSION_EXPERIMENT
from analysis.readings import headline_lines, seed_table_text
from search import budget
from search.context import RunContext, Whole
from search.kinds import StageRun, kind, kinds
from search.plan import duration
from search.summary import where_to_look
from search.workspace import Workspace
from trainables import failpoints
from trainables.cli import (
    EXIT_INTERRUPTED,
    EXIT_NONE_FINISHED,
    EXIT_OFFLINE,
    EXIT_OK,
    EXIT_USAGE,
)
from trainables.files import write_json
from trainables.flags import carried


@dataclass
class Stage:
    name: str  # the experiment (or report) name
    kind: str  # a search kind (search/kinds.py), or report
    model: str | None = None


def plan(name: str, models: list[str], options) -> list[Stage]:
    """The pipeline's stages: each search kind's (search/kinds.py, in their order), then the
    report that fuses them."""
    stages = [Stage(experiment, k.name, model) for k in kinds()
              for experiment, model in k.stages(name, models, options)]
    return [*stages, Stage(name, "report")]


class PipelineState:
    """WORKSPACE/pipelines/NAME.json: the plan, and what each stage did."""

    def __init__(self, ws: Workspace, name: str):
        self.path = ws.root / "pipelines" / f"{name}.json"

    def load(self) -> dict | None:
        return json.loads(self.path.read_text()) if self.path.exists() else None

    def save(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, state)


@dataclass(frozen=True)
class PipelineRun:
    """What every stage of one run of a pipeline runs with."""

    options: object  # tunefuse/pipeline.py PipelineOptions
    ws: Workspace
    client: object
    store: PipelineState
    state: dict
    stages: list
    profile: object
    context: RunContext  # verbosity, the dashboard, no footers (search/context.py)


def fmt_time(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m // 60}h {m % 60:02d}m" if m >= 60 else f"{m}m {s:02d}s"


def run_pipeline(options, ws, client, store, state, stages, profile) -> int:
    records = {s["name"]: s for s in state["stages"]}
    reopened = [r["name"] for r in state["stages"] if r.get("cut") and r["status"] == "done"]
    if reopened:  # stages a time budget cut: resumed, and the report made again after them
        for r in state["stages"]:
            if r["name"] in reopened or r["kind"] == "report":
                r["status"] = "pending"
                r.pop("started", None)  # the report before is not this one (report_done)
        print(f"pipeline {state['name']}: continuing the stage(s) its time budget cut: "
              f"{', '.join(reopened)}; the report is made again after them", flush=True)
    todo = [s for s in stages if records[s.name]["status"] != "done"]
    print(f"pipeline {state['name']} ({profile.name} profile): " +
          " -> ".join(s.name for s in stages) +
          (f"; {len(stages) - len(todo)} stage(s) already done" if len(todo) < len(stages)
           else ""), flush=True)
    started = time.time()
    ran = False  # whether a stage ran in this run of it (a later one's refusal is a skip)
    # one run context for every stage: one cluster and its dashboard; where to look, once, at
    # the end (print_summary), not after each stage's search
    ctx = PipelineRun(options, ws, client, store, state, stages, profile,
                      RunContext(options.verbosity, footers=False))
    for i, stage in enumerate(stages, 1):
        rec = records[stage.name]
        if rec["status"] == "done":
            continue
        resume = ws.load_state(stage.name) is not None and stage.kind != "report"
        print(f"\n=== stage {i}/{len(stages)}: {stage.name} ({stage.kind}"
              f"{' ' + stage.model if stage.model else ''}){' - resuming' if resume else ''}",
              flush=True)
        t0 = time.time()
        ctx.context.deadline = stage_deadline(ctx, i - 1, started)
        ctx.context.budget = None if ctx.context.deadline is None else \
            ctx.context.deadline - time.time()
        ctx.context.whole = whole(ctx, i - 1, started, first=not ran)
        ctx.context.grace = stage_grace(ctx, i - 1, started)
        ctx.context.refused = None
        code = attempt(ctx, stage, resume)
        ran = True
        if code == EXIT_USAGE and refused_at_start(ctx, stage):
            store.path.unlink()  # nothing recorded: the same command may run again
            return code
        skipped = code == EXIT_USAGE and ctx.context.refused is not None and \
            ctx.context.whole is not None and not ctx.context.whole.first
        if skipped:  # what is left of the budget fits none of its plans: the report still comes
            print(f"pipeline {state['name']}: stage {stage.name} skipped: its smallest plan "
                  f"needs about {duration(ctx.context.refused.smallest)} and what is left of "
                  f"the budget gives it {duration(max(0.0, ctx.context.budget or 0.0))}; the "
                  "pipeline goes on to its report (--resume with a longer --time-budget runs "
                  "it)", flush=True)
            code = EXIT_OK
        cut = skipped or bool((ws.load_state(stage.name) or {}).get("time_budget_cut"))
        if cut and code == EXIT_NONE_FINISHED:  # its budget ended it before a trial finished
            print(f"pipeline {state['name']}: the time budget cut {stage.name} before any of "
                  "its trials finished; the pipeline goes on without it", flush=True)
            code = EXIT_OK
        if code == EXIT_OK and (ws.load_state(stage.name) or {}).get("mlflow_offline"):
            code = EXIT_OFFLINE
        rec["seconds"] = rec.get("seconds", 0.0) + time.time() - t0
        if code != EXIT_OK:
            rec["status"] = "interrupted" if code == EXIT_INTERRUPTED else "failed"
            rec["exit_code"] = code
            store.save(state)
            print(f"\npipeline {state['name']}: stage {stage.name} {why_stopped(code)} re-run "
                  "the same command with --resume to continue from it (finished stages are "
                  "skipped)", file=sys.stderr)
            return code
        rec["status"] = "done"
        rec["cut"] = cut  # ended from the trials that finished; --resume continues it
        rec["skipped"] = skipped
        store.save(state)
    state["finished"] = time.time()
    store.save(state)
    print_summary(ws, client, state, stages, time.time() - started, ctx.context.dashboard)
    return EXIT_OK


def stage_deadline(ctx: PipelineRun, index: int, started: float) -> float | None:
    """When stage ``index`` must end under --time-budget (None without one): its share of what
    this run has left for its searches (search/budget.py)."""
    if not ctx.options.time_budget or ctx.stages[index].kind == "report":
        return None
    now = time.time()
    left = started + ctx.options.time_budget - budget.report_reserve(
        ctx.options.time_budget) - now
    pending = [s for s in ctx.stages[index:] if s.kind != "report" and next(
        r for r in ctx.state["stages"] if r["name"] == s.name)["status"] != "done"]
    shares = [kind(s.kind).budget_share for s in pending]
    return now + budget.stage_seconds(left, shares[0], sum(shares))


GRACE_SHARE = 0.25  # of the later stages' time, what a stage may run past its deadline


def stage_grace(ctx: PipelineRun, index: int, started: float) -> float:
    """How long past its deadline stage ``index`` may let its running trials end (their pace
    says they will: search/clock.py): a quarter of what the later search stages would have
    then, which they lose to it; 0 for the last search stage (only the report is after it)."""
    deadline = ctx.context.deadline
    later = [s for s in ctx.stages[index + 1:] if s.kind != "report"]
    if deadline is None or not later:
        return 0.0
    end = started + ctx.options.time_budget - budget.report_reserve(ctx.options.time_budget)
    return GRACE_SHARE * max(0.0, end - deadline)


def whole(ctx: PipelineRun, index: int, started: float, first: bool) -> Whole | None:
    """The pipeline as a stage's refusal names it (search/context.py ``Whole``): a stage's
    need is its share of what the pipeline has left once the report's reserve is kept, so the
    pipeline needs what it spent, that need over the share, and the reserve."""
    if not ctx.options.time_budget:
        return None
    shares = [kind(s.kind).budget_share for s in ctx.stages[index:] if s.kind != "report"
              and next(r for r in ctx.state["stages"] if r["name"] == s.name)["status"] != "done"]
    spent = time.time() - started
    reserve = budget.report_reserve(ctx.options.time_budget)
    return Whole(f"pipeline {ctx.state['name']}", ctx.options.time_budget,
                 lambda need: spent + need * sum(shares) / shares[0] + reserve, first)


def refused_at_start(ctx: PipelineRun, stage: Stage) -> bool:
    """Whether the pipeline's first stage refused its arguments before any stage recorded
    anything (a budget nothing fits, a bad flag): then its state goes too."""
    return ctx.state["stages"][0]["name"] == stage.name and \
        all(ctx.ws.load_state(s.name) is None for s in ctx.stages if s.kind != "report")


def why_stopped(code: int) -> str:
    if code == EXIT_INTERRUPTED:
        return "was interrupted;"
    if code == EXIT_OFFLINE:
        return "trained its trials, but MLflow went away (above); when it is back,"
    return f"ended with exit code {code}; fix the cause above, then"


def attempt(ctx: PipelineRun, stage: Stage, resume: bool) -> int:
    """Run one stage, its state saved as running first; its exit code."""
    rec = next(s for s in ctx.state["stages"] if s["name"] == stage.name)
    if stage.kind == "report" and report_done(ctx.ws, ctx.client, stage, rec):
        print(f"the report {stage.name} was written before the interruption; kept",
              flush=True)
        return EXIT_OK  # it ended before a kill, and the state did not say so yet
    if stage.kind == "report" and "started" in rec:
        close_killed_reports(ctx.client, stage)
    rec["status"] = "running"
    rec.setdefault("started", time.time())
    ctx.store.save(ctx.state)
    try:
        code = run_stage(ctx, stage, resume)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    # the stage has ended; the pipeline's state does not say so yet
    failpoints.reach("stage-finished", stage=stage.name, code=code)
    return code


def report_done(ws: Workspace, client, stage: Stage, rec: dict) -> bool:
    """Whether this pipeline's report stage wrote its report and finished its MLflow run
    (after the stage started) although the pipeline's state still says it runs."""
    if "started" not in rec:
        return False
    try:
        summary = json.loads((ws.root / "reports" / stage.name / "summary.json").read_text())
        run = client.get_run(summary["mlflow"]["run_id"])
    except Exception:  # no report, or one without its run: write it
        return False
    return run.info.status == "FINISHED" and run.info.start_time / 1000 >= rec["started"] - 1


def close_killed_reports(client, stage: Stage) -> None:
    """A report killed before it ended left its fusion run RUNNING: mark it KILLED (the
    report is written again under a new run)."""
    exp = client.get_experiment_by_name(FUSION_EXPERIMENT)
    if exp is None:
        return
    for run in client.search_runs([exp.experiment_id], f"attributes.run_name = '{stage.name}' "
                                  "and attributes.status = 'RUNNING'", max_results=100):
        client.set_terminated(run.info.run_id, "KILLED")


def run_stage(ctx: PipelineRun, stage: Stage, resume: bool) -> int:
    if stage.kind == "report":
        skipped = {r["name"] for r in ctx.state["stages"] if r.get("skipped")}
        return report.run(report_options(ctx.options, [s for s in ctx.stages
                                                       if s.name not in skipped], ctx.profile))
    return kind(stage.kind).run_stage(StageRun(ctx.options, ctx.ws, ctx.client, ctx.state,
                                               stage.name, stage.model, ctx.profile, resume,
                                               ctx.context))


def report_options(options, stages, profile) -> report.ReportOptions:
    """The report stage's options: every flag the pipeline shares with the report (its fusion
    flags, the workspace, the data) as given, a fusion flag left to the profile (None) the
    profile's (its ``fusion_`` field of that name); the report fuses the pipeline's searches."""
    given = carried(report.ReportOptions, options, name=stages[-1].name,
                    experiments=",".join(s.name for s in stages if s.kind != "report"))
    return replace(given, **{f.name: getattr(profile, f"fusion_{f.name}") for f in fields(given)
                             if getattr(given, f.name) is None
                             and hasattr(profile, f"fusion_{f.name}")})


def stage_best(ws: Workspace, client, stage: Stage) -> tuple[int | None, float | None]:
    """Trials finished and the best validation accuracy of a search stage, from MLflow."""
    state = ws.load_state(stage.name)
    if not state:
        return None, None
    run = client.get_run(state["parent_run_id"])
    finished = run.data.tags.get("trials_finished")
    return (int(finished) if finished else None), run.data.metrics.get("best_val_acc")


def print_summary(ws, client, state, stages, seconds: float, dashboard: str | None) -> None:
    total = sum(s["seconds"] for s in state["stages"])
    print(f"\n{'=' * 72}\npipeline {state['name']}: all {len(stages)} stages done "
          f"(this run {fmt_time(seconds)}, all runs {fmt_time(total)})\n")
    if cut := [s["name"] for s in state["stages"] if s.get("cut")]:
        print(f"cut by the time budget: {', '.join(cut)} (ended from the trials that "
              "finished; --resume with a longer --time-budget continues them)\n")
    out = ws.root / "reports" / stages[-1].name
    summary = json.loads((out / "summary.json").read_text())
    print("\n".join(headline_lines(summary)) + "\n")
    print(f"{'stage':<32} {'trials':>6} {'best val_acc':>12} {'time':>9}")
    for s, rec in zip(stages, state["stages"], strict=True):
        trials, best = stage_best(ws, client, s) if s.kind != "report" else (None, None)
        print(f"{s.name:<32} {'' if trials is None else trials:>6} "
              f"{'' if best is None else f'{best:.4f}':>12} {fmt_time(rec['seconds']):>9}"
              + ("  skipped (budget)" if rec.get("skipped") else
                 "  cut by the budget" if rec.get("cut") else ""))
    print("\n" + seed_table_text(summary))
    print()
    where_to_look(ws.tracking_uri, dashboard, report=str(out / "report.html"),
                  fused_model=(summary.get("mlflow") or {}).get("model_uri"))
