"""The seed's whole study in one command: three architectures, class weights, fusion, a report.

    python -m search.pipeline [--profile quick|seed|smoke] [--models cnn,resnet18,inception]
        [--workspace outputs] [--name NAME] [--resume] [--no-weights] [--method greedy] ...

Stages, in order, each an ordinary experiment of the workspace (the same commands a user runs
one by one, with the same MLflow lineage and resume):

    NAME-grid-MODEL          python -m search.grid --model MODEL, for every model
    NAME-weights-resnet18    python -m search.weights --model resnet18, from its grid's winner
    NAME (the report)        python -m analysis.report over the experiments above

NAME defaults to the profile's name. The pipeline's own state (which stages finished, how long
each took) lives in WORKSPACE/pipelines/NAME.json. ``--resume`` skips the finished stages and
continues the interrupted one from its last checkpoints. All stages share one Ray cluster, so
the dashboard stays at one address for the whole run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass

from search import grid, weights
from search.driver import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    PROFILE_TRAIN_SIZE,
    UsageError,
    add_search_args,
    check_resources,
    check_resume,
    dashboard_url,
    train_size,
)
from search.grid import ALIASES
from search.profiles import PROFILES
from search.workspace import Workspace, WorkspaceError, redact
from trainables import failpoints
from trainables.cli import ArgParser, at_least
from trainables.data import DataError, load_split
from trainables.models import list_models

DEFAULT_MODELS = ("cnn", "resnet18", "inception")
# a stage trained its trials but MLflow went away (search/offline.py); the later stages read
# MLflow, so the pipeline stops there until --resume, with the server back, records them
EXIT_OFFLINE = 3
WEIGHTS_MODEL = "resnet18"  # the seed hand-tuned the class weights of its ResNet


def parser() -> ArgParser:
    p = ArgParser(prog="python -m search.pipeline",
                  description="Grid-search three architectures, search ResNet18's class "
                              "weights, fuse the best checkpoints and write the report.")
    g = p.add_argument_group("pipeline")
    g.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help="comma-separated models to grid-search (default "
                        f"{','.join(DEFAULT_MODELS)})")
    g.add_argument("--no-weights", action="store_true", help="skip the class-weight search")
    g.add_argument("--top-k", type=int, help="members to fuse (default: the profile's)")
    g.add_argument("--per-model-cap", type=at_least(1), help="at most N members per architecture")
    g.add_argument("--method", choices=("uniform", "greedy"),
                   help="fusion (default: the profile's)")
    g.add_argument("--calibrate", action="store_true", default=None,
                   help="temperature-scale each member on validation first")
    g.add_argument("--no-register", action="store_true",
                   help="do not register the fused model in MLflow")
    add_search_args(p, "the profile's name")
    return p


@dataclass
class Stage:
    name: str  # the experiment (or report) name
    kind: str  # grid, weights, report
    model: str | None = None


def plan(name: str, models: list[str], with_weights: bool) -> list[Stage]:
    stages = [Stage(f"{name}-grid-{m}", "grid", m) for m in models]
    if with_weights and WEIGHTS_MODEL in models:
        stages.append(Stage(f"{name}-weights-{WEIGHTS_MODEL}", "weights", WEIGHTS_MODEL))
    stages.append(Stage(name, "report"))
    return stages


def shared_argv(args) -> list[str]:
    """The flags every stage takes from the pipeline's command line."""
    out = ["--profile", args.profile, "--workspace", args.workspace,
           "--max-failures", str(args.max_failures), "--seed", str(args.seed),
           "--cpus-per-trial", str(args.cpus_per_trial),
           "--gpus-per-trial", str(args.gpus_per_trial),
           "--max-concurrent", str(args.max_concurrent),
           "--dashboard-port", str(args.dashboard_port)]
    for flag, value in (("--tracking-uri", args.tracking_uri),
                        ("--storage-path", args.storage_path), ("--address", args.address),
                        ("--num-cpus", args.num_cpus), ("--data-dir", args.data_dir)):
        if value is not None:
            out += [flag, str(value)]
    if args.train_size != PROFILE_TRAIN_SIZE:
        out += ["--train-size", "all" if args.train_size is None else str(args.train_size)]
    if args.download:
        out.append("--download")
    return out


def report_argv(args, stages: list[Stage], profile) -> list[str]:
    out = ["--workspace", args.workspace, "--name", stages[-1].name,
           "--experiments", ",".join(s.name for s in stages if s.kind != "report"),
           "--top-k", str(args.top_k or profile.fusion_top_k),
           "--method", args.method or profile.fusion_method]
    cap = args.per_model_cap or profile.fusion_per_model_cap
    if cap:
        out += ["--per-model-cap", str(cap)]
    if args.calibrate if args.calibrate is not None else profile.fusion_calibrate:
        out.append("--calibrate")
    if args.no_register:
        out.append("--no-register")
    for flag, value in (("--tracking-uri", args.tracking_uri), ("--data-dir", args.data_dir)):
        if value is not None:
            out += [flag, str(value)]
    return out


def grid_winner(ws: Workspace, client, stage_name: str) -> dict:
    """Batch size, epochs and width of the best trial of a finished grid stage."""
    state = ws.load_state(stage_name) or {}
    run = client.get_run(state["parent_run_id"])
    tags = run.data.tags
    width = tags.get("best.model_kwargs.width")
    return {"batch_size": int(tags["best.batch_size"]), "epochs": int(tags["best.epochs"]),
            "width": int(width) if width not in (None, "None") else None,
            "val_acc": run.data.metrics.get("best_val_acc")}


def stage_best(ws: Workspace, client, stage: Stage) -> tuple[int | None, float | None]:
    """Trials finished and the best validation accuracy of a search stage, from MLflow."""
    state = ws.load_state(stage.name)
    if not state:
        return None, None
    run = client.get_run(state["parent_run_id"])
    finished = run.data.tags.get("trials_finished")
    return (int(finished) if finished else None), run.data.metrics.get("best_val_acc")


def fmt_time(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m // 60}h {m % 60:02d}m" if m >= 60 else f"{m}m {s:02d}s"


class PipelineState:
    """WORKSPACE/pipelines/NAME.json: the plan, and what each stage did."""

    def __init__(self, ws: Workspace, name: str):
        self.path = ws.root / "pipelines" / f"{name}.json"

    def load(self) -> dict | None:
        return json.loads(self.path.read_text()) if self.path.exists() else None

    def save(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.path)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    profile = PROFILES[args.profile]
    name = args.name or profile.name
    models = [ALIASES.get(m.strip(), m.strip()) for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in list_models()]
    try:
        if not models:
            raise ValueError("--models is empty; name at least one of "
                             f"{', '.join(list_models())}")
        if unknown:
            raise ValueError(f"unknown model(s) {', '.join(unknown)} in --models; choose from "
                             f"{', '.join(list_models())}")
        if len(set(models)) != len(models):
            raise ValueError(f"--models names a model twice ({args.models})")
        if args.top_k is not None and args.top_k < 1:
            raise ValueError("--top-k must be at least 1")
        check_resources(args)
        ws = Workspace.open(args.workspace, args.tracking_uri, args.storage_path)
        client = ws.client()
        store = PipelineState(ws, name)
        state = store.load()
        stages = plan(name, models, not args.no_weights)
        check_resume("pipeline", name, state is not None, args.resume, ws.root)
        if state is not None and [s["name"] for s in state["stages"]] != [s.name for s in
                                                                            stages]:
            raise ValueError(f"pipeline {name!r} was started with other stages ("
                             f"{', '.join(s['name'] for s in state['stages'])}); resume it "
                             "with the same --models and weights setting")
        if state is None:
            taken = [s.name for s in stages if s.kind != "report" and ws.load_state(s.name)]
            if taken:
                raise ValueError(f"experiment {taken[0]!r} already exists in {ws.root}; pass "
                                 "--name for a new pipeline")
            # the data every stage loads, checked before the pipeline is recorded: a stage
            # that refused it would leave a pipeline that only --resume continues
            split = load_split(args.data_dir, train_size(args, profile), args.seed,
                               args.download)
            batch = max(max(profile.grid(m)[0]) for m in models)
            if batch > len(split.y_train):
                raise ValueError(f"the {profile.name} profile's batch size {batch} is larger "
                                 f"than the {len(split.y_train)} training images; raise "
                                 "--train-size")
    except (ValueError, UsageError, WorkspaceError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if state is None:
        state = {"name": name, "profile": profile.name, "created": time.time(),
                 "argv": [redact(a) for a in (sys.argv[1:] if argv is None else argv)],
                 "stages": [{"name": s.name, "kind": s.kind, "model": s.model,
                             "status": "pending", "seconds": 0.0} for s in stages]}
        store.save(state)
    return run_pipeline(args, ws, client, store, state, stages, profile)


def run_pipeline(args, ws, client, store, state, stages, profile) -> int:
    from tqdm import tqdm

    records = {s["name"]: s for s in state["stages"]}
    todo = [s for s in stages if records[s.name]["status"] != "done"]
    print(f"pipeline {state['name']} ({profile.name} profile): " +
          " -> ".join(s.name for s in stages) +
          (f"; {len(stages) - len(todo)} stage(s) already done" if len(todo) < len(stages)
           else ""), flush=True)
    started = time.time()
    dashboard = None
    bar = tqdm(total=len(stages), initial=len(stages) - len(todo), desc="pipeline",
               unit="stage", file=sys.stdout, disable=None, leave=True)
    for i, stage in enumerate(stages, 1):
        rec = records[stage.name]
        if rec["status"] == "done":
            continue
        resume = ws.load_state(stage.name) is not None and stage.kind != "report"
        print(f"\n=== stage {i}/{len(stages)}: {stage.name} ({stage.kind}"
              f"{' ' + stage.model if stage.model else ''}){' - resuming' if resume else ''}",
              flush=True)
        bar.set_postfix_str(stage.name)
        t0 = time.time()
        if stage.kind == "report" and report_done(ws, client, stage, rec):
            code = EXIT_OK  # it ended before a kill, and the state did not say so yet
            print(f"the report {stage.name} was written before the interruption; kept",
                  flush=True)
        else:
            if stage.kind == "report" and "started" in rec:
                close_killed_reports(client, stage)
            rec["status"] = "running"
            rec.setdefault("started", time.time())
            store.save(state)
            try:
                code = run_stage(args, ws, client, state, stage, stages, profile, resume)
            except KeyboardInterrupt:
                code = EXIT_INTERRUPTED
            # the stage has ended; the pipeline's state does not say so yet
            failpoints.reach("stage-finished", stage=stage.name, code=code)
        if code == EXIT_OK and (ws.load_state(stage.name) or {}).get("mlflow_offline"):
            code = EXIT_OFFLINE
        dashboard = dashboard or dashboard_url()
        rec["seconds"] = rec.get("seconds", 0.0) + time.time() - t0
        if code != EXIT_OK:
            rec["status"] = "interrupted" if code == EXIT_INTERRUPTED else "failed"
            rec["exit_code"] = code
            store.save(state)
            bar.close()
            why = "was interrupted;" if code == EXIT_INTERRUPTED else \
                "trained its trials, but MLflow went away (above); when it is back," \
                if code == EXIT_OFFLINE else f"ended with exit code {code}; fix the cause " \
                "above, then"
            print(f"\npipeline {state['name']}: stage {stage.name} {why} re-run the same "
                  "command with --resume to continue from it (finished stages are skipped)",
                  file=sys.stderr)
            return code
        rec["status"] = "done"
        store.save(state)
        bar.update(1)
    bar.close()
    state["finished"] = time.time()
    store.save(state)
    print_summary(ws, client, state, stages, time.time() - started, dashboard)
    return EXIT_OK


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
    from analysis.report import FUSION_EXPERIMENT

    exp = client.get_experiment_by_name(FUSION_EXPERIMENT)
    if exp is None:
        return
    for run in client.search_runs([exp.experiment_id], f"attributes.run_name = '{stage.name}' "
                                  "and attributes.status = 'RUNNING'", max_results=100):
        client.set_terminated(run.info.run_id, "KILLED")


def run_stage(args, ws, client, state, stage: Stage, stages, profile, resume: bool) -> int:
    from analysis import report

    if stage.kind == "grid":
        code = grid.main(["--model", stage.model, "--name", stage.name,
                          *(["--resume"] if resume else []), *shared_argv(args)])
    elif stage.kind == "weights":
        grid_stage = f"{state['name']}-grid-{stage.model}"
        win = grid_winner(ws, client, grid_stage)
        print(f"class weights of {stage.model} with its grid's winner ({grid_stage}, val "
              f"{win['val_acc']:.4f}): batch size {win['batch_size']}, {win['epochs']} "
              f"epochs, width {win['width']}", flush=True)
        code = weights.main(["--model", stage.model, "--name", stage.name,
                             "--batch-size", str(win["batch_size"]),
                             "--epochs", str(win["epochs"]),
                             *(["--width", str(win["width"])] if win["width"] else []),
                             *(["--resume"] if resume else []), *shared_argv(args)])
    else:
        code = report.main(report_argv(args, stages, profile))
    return code


def print_summary(ws, client, state, stages, seconds: float, dashboard: str | None) -> None:
    from analysis.report import seed_table

    total = sum(s["seconds"] for s in state["stages"])
    print(f"\n{'=' * 72}\npipeline {state['name']}: all {len(stages)} stages done "
          f"(this run {fmt_time(seconds)}, all runs {fmt_time(total)})\n")
    print(f"{'stage':<32} {'trials':>6} {'best val_acc':>12} {'time':>9}")
    for s, rec in zip(stages, state["stages"], strict=True):
        trials, best = stage_best(ws, client, s) if s.kind != "report" else (None, None)
        print(f"{s.name:<32} {'' if trials is None else trials:>6} "
              f"{'' if best is None else f'{best:.4f}':>12} {fmt_time(rec['seconds']):>9}")
    out = ws.root / "reports" / stages[-1].name
    summary = json.loads((out / "summary.json").read_text())
    rows = seed_table(summary)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'model':<{width}}  {'validation':>10}  {'test':>8}")
    for a, b, c in rows:
        print(f"{a:<{width}}  {b:>10}  {c:>8}")
    print(f"\nreport:         {out / 'report.html'}")
    if ws.tracking_uri.startswith("sqlite:"):
        print(f"MLflow UI:      mlflow ui --backend-store-uri {ws.tracking_uri} "
              "--host 127.0.0.1 --port 5000   (then http://127.0.0.1:5000)")
    else:
        print(f"MLflow:         {redact(ws.tracking_uri)}")
    model_uri = (summary.get("mlflow") or {}).get("model_uri")
    if model_uri:
        print(f"fused model:    {model_uri}")
    print(f"Ray dashboard:  {dashboard or 'n/a'} (while this command runs; `ray "
          "get-auth-token` prints the token it asks for)")


if __name__ == "__main__":
    sys.exit(main())
