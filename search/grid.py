"""The seed's batch_size x epochs grid as a Ray Tune experiment, with ASHA early stopping.

    python -m search.grid --model resnet [--profile smoke|quick|seed] [--scheduler asha|none]
        [--batch-sizes 32,64] [--epochs 20,40] [--train-size N] [--width W] [--seed S]
        [--workspace outputs] [--name grid-resnet18] [--resume] [--address auto] ...

Every trial is recorded in MLflow (search/lineage.py); ``mlflow ui --backend-store-uri
sqlite:///outputs/mlflow.db`` shows the parent run with its trials nested.
"""

from __future__ import annotations

import sys
from pathlib import Path

from search.asha import ScheduleAwareASHA
from search.driver import (
    EXIT_USAGE,
    Search,
    UsageError,
    above_one,
    add_search_args,
    check_resources,
    positive_ints,
    run_search,
    train_size,
)
from search.profiles import PROFILES, Profile
from trainables.cli import ArgParser, at_least
from trainables.data import DataError, load_split
from trainables.engine import ConfigError, TrainConfig
from trainables.models import list_models

ALIASES = {"resnet": "resnet18"}


def parser() -> ArgParser:
    p = ArgParser(prog="python -m search.grid",
                  description="Search the batch size x epochs grid of one model.")
    p.add_argument("--model", required=True, choices=list_models() + sorted(ALIASES))
    g = p.add_argument_group("grid")
    g.add_argument("--batch-sizes", type=positive_ints, help="e.g. 32,64 (default: profile)")
    g.add_argument("--epochs", type=positive_ints, help="e.g. 20,40, warm-up included")
    g.add_argument("--width", type=at_least(1), help="channel width (resnet18, inception)")
    g.add_argument("--warmup-epochs", type=at_least(0), help="default: the profile's (seed: 5)")
    g.add_argument("--scheduler", choices=("asha", "none"), default="asha")
    g.add_argument("--no-shared-warmups", action="store_true",
                   help="every trial computes its own warm-up (for comparisons)")
    g.add_argument("--grace-period", type=at_least(1),
                   help="first ASHA rung, epochs (default profile)")
    g.add_argument("--reduction-factor", type=above_one, help="ASHA's (default profile)")
    add_search_args(p, "grid-MODEL")
    return p


def space(args, profile: Profile, model: str, warmup_cache: str | None) -> dict:
    """The search space: the one place the grid is defined (optuna-examples convention)."""
    from ray import tune

    width = args.width or profile.widths.get(model)
    base = TrainConfig(
        model=model, model_kwargs={"width": width} if width else {},
        warmup_epochs=profile.warmup_epochs if args.warmup_epochs is None
        else args.warmup_epochs,
        seed=args.seed, num_threads=max(1, int(args.cpus_per_trial)),
        augment=profile.augment.get(model, "auto"),
        device="cuda" if args.gpus_per_trial > 0 else "cpu")
    # epochs outermost: the first trials to start differ in batch size, so each computes a
    # different warm-up and the later ones reuse them (trainables/trainable.py).
    return {**base.to_dict(), "warmup_cache": warmup_cache,
            "epochs": tune.grid_search(list(args.epochs or profile.grid(model)[1])),
            "batch_size": tune.grid_search(list(args.batch_sizes or profile.grid(model)[0]))}


def main(argv: list[str] | None = None, space_overrides: dict | None = None) -> int:
    args = parser().parse_args(argv)
    model = ALIASES.get(args.model, args.model)
    profile = PROFILES[args.profile]
    name = args.name or f"grid-{model}"
    try:
        check_resources(args)
        split = load_split(args.data_dir, train_size(args, profile), args.seed,
                           args.download)
        epochs = args.epochs or profile.grid(model)[1]
        batch_sizes = args.batch_sizes or profile.grid(model)[0]
        if max(batch_sizes) > len(split.y_train):
            raise ConfigError(f"batch size {max(batch_sizes)} is larger than the "
                              f"{len(split.y_train)} training images; lower --batch-sizes")
        warmup = profile.warmup_epochs if args.warmup_epochs is None else args.warmup_epochs
        if min(epochs) < warmup:
            raise ConfigError(f"epochs {min(epochs)} is fewer than the {warmup} warm-up "
                              "epochs; raise --epochs or lower --warmup-epochs")
        if args.width is not None and model == "cnn":
            raise ConfigError("the cnn has a fixed width (the seed's); drop --width")
        warmups = None if args.no_shared_warmups else str(
            Path(args.workspace).expanduser().resolve() / "warmups")
        param_space = {**space(args, profile, model, warmups), **(space_overrides or {})}
    except (DataError, ConfigError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    scheduler = None
    if args.scheduler == "asha":
        scheduler = ScheduleAwareASHA(args.grace_period or profile.grace_period,
                                      args.reduction_factor or profile.reduction_factor)
    params = {"model": model, "profile": profile.name, "batch_sizes": list(batch_sizes),
              "epochs": list(epochs), "scheduler": args.scheduler, "train_size": len(
                  split.y_train) + len(split.y_val), "seed": args.seed,
              "width": param_space["model_kwargs"].get("width"), "warmup_epochs": warmup,
              "grace_period": getattr(scheduler, "grace_period", None),
              "reduction_factor": getattr(scheduler, "reduction_factor", None)}
    search = Search(name=name, kind="grid", param_space=param_space, scheduler=scheduler,
                    params=params, tags={"profile": profile.name, "scheduler": args.scheduler,
                                         "model": model})
    return run_search(args, search, split)


if __name__ == "__main__":
    sys.exit(main())
