"""Search the per-class loss weights with Optuna's TPE inside Ray Tune.

    python -m search.weights --model resnet [--space full|hard-pairs] [--objective val_acc|hard_acc]
        [--num-samples N] [--batch-size B] [--epochs E] [--profile smoke|quick|standard|seed]
        [--resume]

The seed hand-tuned the weights of its "strong" ResNet (docs/seed.md, "Tuning"); here TPE searches
them, starting from what is known: the seed's vector and the uniform vector are the first two
trials. ``--space hard-pairs`` searches only the weights of classes 0, 2, 4 and 6 (the hard
pairs 0/6 and 2/4) with the rest fixed at 1.0; its "seed" point is the seed's weights for those
four classes (the spaces, the starting points and the end's comparison: search/weightspace.py).

Batch size, epochs and width default to the best trial of the latest finished grid experiment
for the model and profile in the workspace (search/grid.py), else to the profile's.

The Optuna study lives in ``WORKSPACE/optuna.db`` under the experiment's name, so it outlives
Ray: ``--resume`` continues the same study with its whole history, and ``--resume
--num-samples N`` with a larger N adds trials to a finished one. ``optuna-dashboard
sqlite:///WORKSPACE/optuna.db`` shows it. Each trial's sampling draws its randomness from
(seed, trial number) alone, so an interruption does not change what later trials are offered.
Trials that ASHA stopped are told to Optuna as pruned, with their last value, which is how TPE
ranks pruned trials.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass

import optuna

from search.asha import AshaFlags, scheduler_for, scheduler_params
from search.driver import Search, run_search
from search.kinds import SearchKind, StageRun, register_kind
from search.options import (
    ALIASES,
    REFUSED,
    SearchOptions,
    base_config,
    check_resources,
    check_trial,
    check_width,
    for_stage,
    load_data,
    model_flag,
    name_flag,
)
from search.profiles import PROFILES
from search.study import (
    STORAGE_FILE,
    DurableOptunaSearch,
    SeededTPESampler,
    started_before,
    storage_url,
    study_trials,
)
from search.summary import grid_defaults, winner
from search.weightspace import (
    OBJECTIVES,
    SPACES,
    report,
    search_space,
    starting_points,
)
from search.workspace import Workspace
from trainables.cli import (
    EXIT_USAGE,
    ArgParser,
    at_least,
    exit_now,
)
from trainables.config import ConfigError
from trainables.flags import flag, like, parser_for, run_command
from trainables.models import card


@dataclass(frozen=True)
class WeightsOptions(SearchOptions):
    """The flags of ``python -m search.weights``, typed (the shared ones in SearchOptions)."""

    model: str = model_flag("resnet18")
    space: str = flag("full", group="weights", choices=lambda: tuple(SPACES), help=(
        "full: all 10 weights; hard-pairs: classes 0, 2, 4, 6, the rest 1.0"))
    low: float = flag(0.5, group="weights", type=float,
                      help="smallest weight (default %(default)s)")
    high: float = flag(2.5, group="weights", type=float,
                       help="largest weight (default %(default)s)")
    objective: str = flag("val_acc", group="weights", choices=OBJECTIVES, help=(
        "what TPE and ASHA maximise (hard_acc: mean of classes 0, 2, 4, 6)"))
    num_samples: int | None = flag(None, group="weights", type=at_least(2), help=(
        "trials in the study in all, the two starting points included (default: the "
        "profile's)"))
    batch_size: int | None = flag(None, group="weights", type=at_least(1),
                                  help="default: the grid's best, else the profile's")
    epochs: int | None = flag(None, group="weights", type=at_least(1),
                              help="warm-up included; default as --batch-size")
    width: int | None = flag(None, group="weights", type=at_least(1),
                             help="channel width; default as --batch-size")
    warmup_epochs: int | None = flag(None, group="weights", type=at_least(0),
                                     help="default: the profile's (seed: 5)")
    scheduler: str = like(AshaFlags, "scheduler", group="weights")
    grace_period: int | None = like(AshaFlags, "grace_period", group="weights")
    reduction_factor: float | None = like(AshaFlags, "reduction_factor", group="weights")
    asha_margin: float | None = like(AshaFlags, "asha_margin", group="weights")
    name: str | None = name_flag("weights-MODEL")


def parser() -> ArgParser:
    return parser_for(WeightsOptions, prog="python -m search.weights", description=(
        "Search the per-class loss weights of one model with Optuna."))


@dataclass(frozen=True)
class Settings:
    """What a weights search runs with, once its defaults are resolved and checked."""

    model: str
    name: str
    num_samples: int
    batch_size: int
    epochs: int
    width: int | None
    warmup: int
    found: dict  # the grid winner the defaults came from ({}: the profile's)


def check_flags(options: WeightsOptions) -> int:
    """The flags no search could run with, refused before the workspace is opened; returns
    the trials of the study."""
    if not (0 < options.low < options.high and math.isfinite(options.high)):
        raise ConfigError(f"need 0 < --low < --high, both finite, got {options.low} and "
                          f"{options.high}")
    known = [w for p in starting_points(options.space).values() for w in p.values()]
    if min(known) < options.low or max(known) > options.high:
        raise ConfigError(f"--low {options.low} .. --high {options.high} must contain the "
                          f"starting points' weights ({min(known)} .. {max(known)})")
    num_samples = options.num_samples or PROFILES[options.profile].weights_trials
    if num_samples < 2:
        raise ConfigError(f"--num-samples must be at least 2 (the seed's and the uniform "
                          f"weights come first), got {num_samples}")
    return num_samples


def settings(options: WeightsOptions, ws: Workspace, num_samples: int) -> Settings:
    """Resolve the search's settings (from the grid's winner where not given) and check them;
    ConfigError for those it cannot run with."""
    model = ALIASES.get(options.model, options.model)
    profile = PROFILES[options.profile]
    name = options.name or f"weights-{model}"
    found = grid_defaults(ws.client(), model, profile.name)
    if study_trials(ws, name) and not options.resume:
        raise ConfigError(f"an Optuna study named {name!r} already exists in "
                          f"{ws.root / STORAGE_FILE}; pass --resume to continue it or "
                          "--name for a new one")
    width = options.width or found.get("width") or profile.width(model)
    if not card(model).takes_width:
        check_width(model, options.width)
        width = None
    warmup = profile.warmup_epochs if options.warmup_epochs is None else options.warmup_epochs
    return Settings(model, name, num_samples,
                    options.batch_size or found.get("batch_size") or profile.weights_batch_size,
                    options.epochs or found.get("epochs") or profile.weights_epochs,
                    width, warmup, found)


def run(options: WeightsOptions, context=None) -> int:
    """Run (or resume) the class-weight search; the exit code. ``context``: the command's run
    context (search/driver.py)."""
    profile = PROFILES[options.profile]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        check_resources(options)
        num_samples = check_flags(options)
        ws = Workspace.open(options.workspace, options.tracking_uri, options.storage_path)
        s = settings(options, ws, num_samples)
        split = load_data(options)
        check_trial(s.model, s.batch_size, s.epochs, s.warmup, None, len(split.y_train),
                    "--batch-size")
    except REFUSED as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    source = s.found.get("from") or f"the {profile.name} profile"
    given = [f for f, v in (("batch size", options.batch_size), ("epochs", options.epochs),
                            ("width", options.width)) if v]
    print(f"weights search {s.name}: {s.model} width {s.width}, batch size {s.batch_size}, "
          f"{s.epochs} epochs (defaults from {source}" +
          (f"; {', '.join(given)} as given)" if given else ")") +
          f"; {s.num_samples} trials, objective {options.objective}", flush=True)
    return run_search(options, make_search(options, s, ws, split), split, context)


def make_search(options: WeightsOptions, s: Settings, ws: Workspace, split) -> Search:
    """The Tune experiment of a weights search: TPE over the weights, ASHA on the objective."""
    profile = PROFILES[options.profile]
    metric = options.objective
    scheduler = scheduler_for(options, profile, metric)
    base = base_config(options, s.model, s.width, s.warmup, batch_size=s.batch_size,
                       epochs=s.epochs)
    # no shared warm-ups: the class weights shape the warm-up, and every trial has its own
    param_space = {**{k: v for k, v in base.to_dict().items() if k != "class_weights"},
                   **search_space(options.space, options.low, options.high)}
    points = list(starting_points(options.space).values())
    startup = min(10, max(2, s.num_samples // 3))

    def make_searcher(ws: Workspace, first: bool):
        if first and started_before(ws, s.name):
            first = False  # its starting points are in the study already
        return DurableOptunaSearch(
            epochs=s.epochs, study_name=s.name,
            storage=optuna.storages.RDBStorage(storage_url(ws)),
            sampler=SeededTPESampler(options.seed, n_startup_trials=startup, multivariate=True),
            points_to_evaluate=points if first else None)

    params = {"model": s.model, "profile": profile.name, "space": options.space,
              "low": options.low, "high": options.high, "objective": metric,
              "num_samples": s.num_samples, "batch_size": s.batch_size, "epochs": s.epochs,
              "width": s.width, "seed": options.seed,
              "train_size": len(split.y_train) + len(split.y_val),
              "warmup_epochs": s.warmup, "defaults_from": s.found.get("from", "profile"),
              "scheduler": options.scheduler, "optuna_storage": storage_url(ws),
              **scheduler_params(scheduler)}
    return Search(
        name=s.name, kind=KIND.name, fuses=KIND.fuses, param_space=param_space,
        scheduler=scheduler, num_samples=s.num_samples, params=params, metric=metric,
        tags={"profile": profile.name, "model": s.model, "space": options.space,
              "objective": metric},
        columns=tuple(f"w{c}" for c in SPACES[options.space]),
        make_searcher=make_searcher,
        trials_done=lambda ws: len(study_trials(ws, s.name)),
        least_samples=2, width_fixed=True,  # its starting points; the grid winner's width
        report=lambda results, client, parent_id, ws: report(
            client, parent_id, ws, s.name, options.space, metric))


WEIGHTS_MODEL = "resnet18"  # the seed hand-tuned the class weights of its ResNet


def stages(pipeline: str, models: list[str], options) -> list[tuple[str, str | None]]:
    """The pipeline's class-weight stage: ResNet18's, after its grid, unless --no-weights."""
    if getattr(options, "no_weights", False) or WEIGHTS_MODEL not in models:
        return []
    return [(f"{pipeline}-weights-{WEIGHTS_MODEL}", WEIGHTS_MODEL)]


def run_stage(stage: StageRun) -> int:
    """A pipeline's class-weight stage: with the settings of its grid's winner (its epochs at
    most the profile's cap)."""
    profile, grid_stage = stage.profile, f"{stage.state['name']}-grid-{stage.model}"
    found = stage.ws.load_state(grid_stage) or {}
    win = winner(stage.client.get_run(found["parent_run_id"]))
    epochs = win["epochs"] if profile.weights_epochs_cap is None \
        else min(win["epochs"], profile.weights_epochs_cap)
    capped = f" (the {profile.name} profile's cap; the winner ran {win['epochs']})" \
        if epochs < win["epochs"] else ""
    print(f"class weights of {stage.model} with its grid's winner ({grid_stage}, val "
          f"{win['val_acc']:.4f}): batch size {win['batch_size']}, {epochs} epochs"
          f"{capped}, width {win['width']}", flush=True)
    return run(for_stage(WeightsOptions, stage.options, model=stage.model, name=stage.name,
                         resume=stage.resume, batch_size=win["batch_size"], epochs=epochs,
                         width=win["width"]), context=stage.context)


# its stage's share of a pipeline's time budget, a grid stage's being 1: the class weights took
# 0.85 of a grid's mean time in quick and 0.43 in standard (docs/profiles.md)
KIND = register_kind(SearchKind("weights", stages=stages, run_stage=run_stage,
                                budget_share=0.5))


def main(argv: list[str] | None = None) -> int:
    return run_command(WeightsOptions, parser(), run, argv)


if __name__ == "__main__":
    exit_now(main)
