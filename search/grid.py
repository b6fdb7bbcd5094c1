"""The seed's batch_size x epochs grid as a Ray Tune experiment, with ASHA early stopping.

    python -m search.grid --model resnet [--profile smoke|quick|standard|seed]
        [--scheduler asha|none] [--batch-sizes 32,64] [--epochs 20,40] [--train-size N]
        [--width W] [--seed S] [--workspace outputs] [--name grid-resnet18] [--resume]
        [--address auto] ...

Every trial is recorded in MLflow (search/lineage.py); ``mlflow ui --backend-store-uri
sqlite:///outputs/mlflow.db`` shows the parent run with its trials nested.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

from ray import tune

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
    for_stage,
    load_data,
    model_flag,
    name_flag,
)
from search.profiles import PROFILES
from trainables.cli import (
    EXIT_USAGE,
    ArgParser,
    at_least,
    exit_now,
    positive_ints,
)
from trainables.flags import flag, like, parser_for, run_command


@dataclass(frozen=True)
class GridOptions(SearchOptions):
    """The flags of ``python -m search.grid``, typed (the shared ones in SearchOptions)."""

    model: str = model_flag("cnn")
    batch_sizes: tuple[int, ...] | None = flag(None, group="grid", type=positive_ints,
                                               help="e.g. 32,64 (default: profile)")
    epochs: tuple[int, ...] | None = flag(None, group="grid", type=positive_ints,
                                          help="e.g. 20,40, warm-up included")
    width: int | None = flag(None, group="grid", type=at_least(1),
                             help="channel width (resnet18, inception)")
    warmup_epochs: int | None = flag(None, group="grid", type=at_least(0),
                                     help="default: the profile's (seed: 5)")
    no_shared_warmups: bool = flag(False, group="grid", action="store_true", help=(
        "every trial computes its own warm-up (for comparisons)"))
    scheduler: str = like(AshaFlags, "scheduler", group="grid")
    grace_period: int | None = like(AshaFlags, "grace_period", group="grid")
    reduction_factor: float | None = like(AshaFlags, "reduction_factor", group="grid")
    asha_margin: float | None = like(AshaFlags, "asha_margin", group="grid")
    name: str | None = name_flag("grid-MODEL")


def parser() -> ArgParser:
    return parser_for(GridOptions, prog="python -m search.grid",
                      description="Search the batch size x epochs grid of one model.")


def space(options: GridOptions, model: str, trunk_cache: str | None) -> dict:
    """The search space: the one place the grid is defined (optuna-examples convention)."""
    profile = PROFILES[options.profile]
    batch_sizes, epochs = profile.grid(model)
    base = base_config(options, model, options.width or profile.width(model),
                       warmup(options))
    # epochs outermost: the first trials to start differ in batch size, so each computes a
    # different warm-up and the later ones reuse them (trainables/trainable.py).
    lengths = list(options.epochs or epochs)
    return {**base.to_dict(), "trunk_cache": trunk_cache, "trunk_lengths": lengths,
            "epochs": tune.grid_search(lengths),
            "batch_size": tune.grid_search(list(options.batch_sizes or batch_sizes))}


def warmup(options) -> int:
    """The warm-up epochs: --warmup-epochs, else the profile's."""
    return PROFILES[options.profile].warmup_epochs if options.warmup_epochs is None \
        else options.warmup_epochs


def run(options: GridOptions, space_overrides: dict | None = None, context=None) -> int:
    """Run (or resume) the grid; the exit code. ``space_overrides`` replaces entries of the
    search space (tests); ``context``: the command's run context (search/driver.py)."""
    model = ALIASES.get(options.model, options.model)
    options = replace(options, model=model)
    profile = PROFILES[options.profile]
    name = options.name or f"grid-{model}"
    batch_sizes = options.batch_sizes or profile.grid(model)[0]
    epochs = options.epochs or profile.grid(model)[1]
    try:
        check_resources(options)
        split = load_data(options)
        check_trial(model, max(batch_sizes), min(epochs), warmup(options), options.width,
                    len(split.y_train), "--batch-sizes")
        warmups = None if options.no_shared_warmups else str(
            Path(options.workspace).expanduser().resolve() / "trunks")
        param_space = {**space(options, model, warmups), **(space_overrides or {})}
    except REFUSED as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    scheduler = scheduler_for(options, profile)
    params = {"model": model, "profile": profile.name, "batch_sizes": list(batch_sizes),
              "epochs": list(epochs), "scheduler": options.scheduler, "train_size": len(
                  split.y_train) + len(split.y_val), "seed": options.seed,
              "width": param_space["model_kwargs"].get("width"),
              "warmup_epochs": warmup(options),
              **scheduler_params(scheduler)}
    search = Search(name=name, kind=KIND.name, fuses=KIND.fuses, param_space=param_space,
                    scheduler=scheduler, params=params, tags={
                        "profile": profile.name, "scheduler": options.scheduler,
                        "model": model}, width_fixed=options.width is not None)
    return run_search(options, search, split, context)


def run_stage(stage: StageRun) -> int:
    """A pipeline's grid stage: one model's grid, the pipeline's shared flags."""
    return run(for_stage(GridOptions, stage.options, model=stage.model, name=stage.name,
                         resume=stage.resume), context=stage.context)


# a pipeline runs one grid per model, first
KIND = register_kind(SearchKind(
    "grid", stages=lambda pipeline, models, options: [(f"{pipeline}-grid-{m}", m)
                                                      for m in models],
    run_stage=run_stage))


def main(argv: list[str] | None = None, space_overrides: dict | None = None) -> int:
    return run_command(GridOptions, parser(), lambda o: run(o, space_overrides), argv)


if __name__ == "__main__":
    exit_now(main)
