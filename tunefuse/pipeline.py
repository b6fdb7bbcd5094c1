"""The seed's whole study in one command: three architectures, class weights, fusion, a report.

    python -m search.pipeline [--profile quick|seed|smoke] [--models cnn,resnet18,inception]
        [--workspace outputs] [--name NAME] [--resume] [--no-weights] [--method nll] ...

(``python -m tunefuse.pipeline`` is the same command.) Stages, in order, each an ordinary
experiment of the workspace (the same commands a user runs one by one, with the same MLflow
lineage and resume; tunefuse/stages.py):

    NAME-grid-MODEL          python -m search.grid --model MODEL, for every model
    NAME-weights-resnet18    python -m search.weights --model resnet18, from its grid's winner
    NAME (the report)        python -m analysis.report over the experiments above

NAME defaults to the profile's name. The pipeline's own state (which stages finished, how long
each took) lives in WORKSPACE/pipelines/NAME.json. ``--resume`` skips the finished stages and
continues the interrupted one from its last checkpoints. All stages share one Ray cluster, so
the dashboard stays at one address for the whole run.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass

from analysis import methods
from analysis.report import ReportOptions
from search.claims import check_owner, claim_pipeline
from search.options import (
    ALIASES,
    REFUSED,
    SearchOptions,
    check_resources,
    check_resume,
    load_data,
    name_flag,
)
from search.profiles import PROFILES
from search.workspace import Workspace, redact
from trainables.cli import EXIT_USAGE, ArgParser, at_least, exit_now
from trainables.config import check_batch
from trainables.flags import flag, like, parser_for, run_command
from trainables.models import list_models
from tunefuse.stages import PipelineState, plan, run_pipeline

DEFAULT_MODELS = ("cnn", "resnet18", "inception")


@dataclass(frozen=True)
class PipelineOptions(SearchOptions):
    """The flags of the pipeline, typed. The searches' own (SearchOptions) reach every stage;
    its fusion flags are the report's (analysis/report.py ``ReportOptions``' fields, None for
    the profile's) and reach the report stage (tunefuse/stages.py ``report_options``)."""

    models: str = flag(",".join(DEFAULT_MODELS), group="pipeline", help=(
        "comma-separated models to grid-search (default %(default)s)"))
    no_weights: bool = flag(False, group="pipeline", action="store_true",
                            help="skip the class-weight search")
    top_k: int | None = like(ReportOptions, "top_k", None, group="pipeline",
                             help=lambda: methods.top_k_help("the profile's", pipeline=True))
    per_model_cap: int | None = like(ReportOptions, "per_model_cap", group="pipeline",
                                     type=at_least(1))
    method: str | None = like(ReportOptions, "method", None, group="pipeline",
                              choices=lambda: methods.names(pipeline=True),
                              help="fusion (default: the profile's)")
    calibrate: bool | None = like(ReportOptions, "calibrate", None, group="pipeline")
    tta: str | None = like(ReportOptions, "tta", None, group="pipeline", help=(
        "members' test-time augmentation (default: the profile's)"))
    no_register: bool = like(ReportOptions, "no_register", group="pipeline",
                             help="do not register the fused model in MLflow")
    name: str | None = name_flag("the profile's name")


def parser() -> ArgParser:
    return parser_for(PipelineOptions, prog="python -m search.pipeline", description=(
        "Grid-search three architectures, search ResNet18's class weights, fuse the best "
        "checkpoints and write the report."))


def model_list(options: PipelineOptions) -> list[str]:
    """--models as registered model names; ValueError for an empty, unknown or repeated one."""
    models = [ALIASES.get(m.strip(), m.strip()) for m in options.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in list_models()]
    if not models:
        raise ValueError(f"--models is empty; name at least one of {', '.join(list_models())}")
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)} in --models; choose from "
                         f"{', '.join(list_models())}")
    if len(set(models)) != len(models):
        raise ValueError(f"--models names a model twice ({options.models})")
    return models


def check_new(options: PipelineOptions, ws: Workspace, stages, models) -> None:
    """A new pipeline: its experiments must be new, and every stage must take its data,
    checked before the pipeline is recorded (a stage that refused it would leave a pipeline
    that only --resume continues)."""
    taken = [s.name for s in stages if s.kind != "report" and ws.load_state(s.name)]
    if taken:
        raise ValueError(f"experiment {taken[0]!r} already exists in {ws.root}; pass "
                         "--name for a new pipeline")
    profile = PROFILES[options.profile]
    split = load_data(options)
    check_batch(max(max(profile.grid(m)[0]) for m in models), len(split.y_train),
                "raise --train-size", what=f"the {profile.name} profile's batch size")


def run(options: PipelineOptions, argv: list[str] | None = None) -> int:
    """Run (or resume) the pipeline; the exit code. ``argv`` is recorded in its state."""
    profile = PROFILES[options.profile]
    name = options.name or profile.name
    with contextlib.ExitStack() as claims:  # the pipeline, until it ends (search/claims.py)
        return _run(options, argv, profile, name, claims)


def _run(options: PipelineOptions, argv: list[str] | None, profile, name: str,
         claims: contextlib.ExitStack) -> int:
    try:
        models = model_list(options)
        if options.top_k is not None and options.top_k < 1:
            raise ValueError("--top-k must be at least 1")
        check_resources(options)
        ws = Workspace.open(options.workspace, options.tracking_uri, options.storage_path)
        claim_pipeline(claims, ws, name)
        client = ws.client()
        store = PipelineState(ws, name)
        state = store.load()
        stages = plan(name, models, options)
        check_resume("pipeline", name, state is not None, options.resume, ws.root)
        if state is not None and [s["name"] for s in state["stages"]] != [s.name for s in
                                                                            stages]:
            raise ValueError(f"pipeline {name!r} was started with other stages ("
                             f"{', '.join(s['name'] for s in state['stages'])}); resume it "
                             "with the same --models and weights setting")
        if state is None:
            check_new(options, ws, stages, models)
        for stage in stages:  # each stage's own check, before the first one records
            if stage.kind != "report":
                check_owner(client, ws, stage.name)
    except (ValueError, *REFUSED) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if state is None:
        state = {"name": name, "profile": profile.name, "created": time.time(),
                 "argv": [redact(a) for a in (sys.argv[1:] if argv is None else argv)],
                 "stages": [{"name": s.name, "kind": s.kind, "model": s.model,
                             "status": "pending", "seconds": 0.0} for s in stages]}
        store.save(state)
    return run_pipeline(options, ws, client, store, state, stages, profile)


def main(argv: list[str] | None = None) -> int:
    return run_command(PipelineOptions, parser(), lambda o: run(o, argv), argv)


if __name__ == "__main__":
    exit_now(main)
