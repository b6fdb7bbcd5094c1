"""Search the per-class loss weights with Optuna's TPE inside Ray Tune.

    python -m search.weights --model resnet [--space full|hard-pairs] [--objective val_acc|hard_acc]
        [--num-samples N] [--batch-size B] [--epochs E] [--profile smoke|quick|seed] [--resume]

The seed hand-tuned the weights of its "strong" ResNet (docs/seed.md, "Tuning"); here TPE searches
them, starting from what is known: the seed's vector and the uniform vector are the first two
trials. ``--space hard-pairs`` searches only the weights of classes 0, 2, 4 and 6 (the hard
pairs 0/6 and 2/4) with the rest fixed at 1.0; its "seed" point is the seed's weights for those
four classes.

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

import logging
import math
import sys
import warnings

import optuna
from optuna.samplers import TPESampler
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from search.asha import ScheduleAwareASHA
from search.driver import (
    EXIT_USAGE,
    Search,
    UsageError,
    above_one,
    add_search_args,
    check_resources,
    run_search,
    train_size,
)
from search.grid import ALIASES
from search.profiles import PROFILES
from search.workspace import Workspace, WorkspaceError
from trainables import failpoints
from trainables.cli import ArgParser, at_least
from trainables.data import NUM_CLASSES, DataError, load_split
from trainables.engine import HARD_CLASSES, SEED_CLASS_WEIGHTS, ConfigError, TrainConfig
from trainables.models import list_models

SPACES = {"full": tuple(range(NUM_CLASSES)), "hard-pairs": HARD_CLASSES}
UNIFORM = (1.0,) * NUM_CLASSES
OBJECTIVES = ("val_acc", "hard_acc")  # hard_acc: mean val accuracy of classes 0, 2, 4, 6
STORAGE_FILE = "optuna.db"


def parser() -> ArgParser:
    p = ArgParser(prog="python -m search.weights",
                  description="Search the per-class loss weights of one model with Optuna.")
    p.add_argument("--model", required=True, choices=list_models() + sorted(ALIASES))
    g = p.add_argument_group("weights")
    g.add_argument("--space", choices=tuple(SPACES), default="full",
                   help="full: all 10 weights; hard-pairs: classes 0, 2, 4, 6, the rest 1.0")
    g.add_argument("--low", type=float, default=0.5, help="smallest weight (default 0.5)")
    g.add_argument("--high", type=float, default=2.5, help="largest weight (default 2.5)")
    g.add_argument("--objective", choices=OBJECTIVES, default="val_acc",
                   help="what TPE and ASHA maximise (hard_acc: mean of classes 0, 2, 4, 6)")
    g.add_argument("--num-samples", type=at_least(2),
                   help="trials in the study in all, the two starting points included "
                        "(default: the profile's)")
    g.add_argument("--batch-size", type=at_least(1),
                   help="default: the grid's best, else the profile's")
    g.add_argument("--epochs", type=at_least(1), help="warm-up included; default as --batch-size")
    g.add_argument("--width", type=at_least(1), help="channel width; default as --batch-size")
    g.add_argument("--warmup-epochs", type=at_least(0), help="default: the profile's (seed: 5)")
    g.add_argument("--scheduler", choices=("asha", "none"), default="asha")
    g.add_argument("--grace-period", type=at_least(1),
                   help="first ASHA rung, epochs (default profile)")
    g.add_argument("--reduction-factor", type=above_one, help="ASHA's (default profile)")
    add_search_args(p, "weights-MODEL")
    return p


class SeededTPESampler(TPESampler):
    """TPE whose randomness for trial n comes from (seed, n) alone.

    A plain seeded sampler carries one random stream through the study, so a study resumed in
    a new process (a fresh sampler) would offer different points than the uninterrupted one;
    re-seeding per trial makes the sequence depend on the study's history only. The trial is
    counted among the trials that ran, not by its number: a trial asked for and lost with a
    killed driver (marked ``lost``) takes a number, and must not shift what later trials get.
    """

    def __init__(self, seed: int, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.base_seed = seed

    def before_trial(self, study, trial) -> None:
        ran = sum(1 for t in study.get_trials(deepcopy=False)
                  if t.number < trial.number and "lost" not in t.user_attrs)
        seed = (self.base_seed * 1_000_003 + ran * 7_919 + 1) % 2**32
        self._rng.rng.seed(seed)
        self._random_sampler._rng.rng.seed(seed)
        super().before_trial(study, trial)


class DurableOptunaSearch(OptunaSearch):
    """OptunaSearch over a study in a persistent storage, with two corrections.

    - A trial that the scheduler stopped before its last epoch is told as PRUNED (TPE ranks
      it by its last reported value) rather than COMPLETE with a partial-run value.
    - After Tune restores the searcher from its snapshot, trials the study still holds as
      RUNNING but the snapshot does not know (asked after it, then lost with the driver)
      are marked FAIL and ``lost``, so that TPE's constant liar does not count them for ever;
      a lost trial that held one of the starting points gives it back to the queue, so the
      point is still tried.
    """

    def __init__(self, *, epochs: int, **kwargs):
        super().__init__(**kwargs)
        self.epochs = epochs

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False):
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if error or not result or int(result.get("epoch", 0)) >= self.epochs:
            return super().on_trial_complete(trial_id, result, error)
        try:
            self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
        except Exception as e:  # e.g. told before an interruption
            logging.getLogger(__name__).warning("optuna: %s", e)
        self._completed_trials.add(trial_id)

    def suggest(self, trial_id: str):
        params = super().suggest(trial_id)
        # asked of the study, not yet in Tune's saved searcher (docs/crash-windows.md)
        failpoints.reach("optuna-asked", trial=trial_id,
                         number=self._ot_trials[trial_id].number)
        return params

    def restore(self, checkpoint_path: str):
        super().restore(checkpoint_path)
        known = {t.number for t in self._ot_trials.values()}
        lost = [t for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if t.number not in known]
        for t in lost:
            storage = self._ot_study._storage
            storage.set_trial_user_attr(t._trial_id, "lost", "asked before an "
                                        "interruption, never run")
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        for t in lost:  # a starting point it held goes back to the queue, in its order
            if "fixed_params" in t.system_attrs:
                self._ot_study.enqueue_trial(t.system_attrs["fixed_params"])


def storage_url(ws: Workspace) -> str:
    return f"sqlite:///{ws.root / STORAGE_FILE}"


def study_trials(ws: Workspace, name: str) -> list:
    """The study's trials that ran (not the ones lost to an interruption). No study file, no
    trials: looking one up must not create the file (a refused command leaves no trace)."""
    if not (ws.root / STORAGE_FILE).exists():
        return []
    try:
        study = optuna.load_study(study_name=name, storage=storage_url(ws))
    except KeyError:
        return []
    return [t for t in study.get_trials(deepcopy=False) if "lost" not in t.user_attrs]


def grid_defaults(client, model: str, profile: str) -> dict:
    """Batch size, epochs and width of the best trial of the latest finished grid experiment
    for ``model`` and ``profile`` in this tracking store; {} when there is none."""
    ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return {}
    runs = client.search_runs(
        ids, f"tags.kind = 'grid' and tags.model = '{model}' and tags.profile = '{profile}' "
        "and attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
        max_results=20)
    for run in runs:
        tags = run.data.tags
        if "best.batch_size" in tags and "best.epochs" in tags:
            width = tags.get("best.model_kwargs.width")
            return {"batch_size": int(tags["best.batch_size"]),
                    "epochs": int(tags["best.epochs"]),
                    "width": int(width) if width not in (None, "None") else None,
                    "from": f"{client.get_experiment(run.info.experiment_id).name} "
                            f"(best val_acc {run.data.metrics.get('best_val_acc', 0):.4f})"}
    return {}


def starting_points(space: str) -> dict[str, dict[str, float]]:
    """The seed's and the uniform vector, restricted to the searched classes."""
    classes = SPACES[space]
    return {"seed": {f"w{c}": SEED_CLASS_WEIGHTS[c] for c in classes},
            "uniform": {f"w{c}": UNIFORM[c] for c in classes}}


def search_space(space: str, low: float, high: float) -> dict:
    """The one place the weight space is defined: searched classes uniform in [low, high],
    the others fixed at 1.0."""
    from ray import tune

    searched = SPACES[space]
    return {f"w{c}": tune.uniform(low, high) if c in searched else 1.0
            for c in range(NUM_CLASSES)}


def weights_of(cfg: dict) -> tuple[float, ...]:
    return tuple(float(cfg[f"w{c}"]) for c in range(NUM_CLASSES))


def comparison(client, parent_id: str, experiment_id: str, space: str, metric: str) -> dict:
    """Best / seed / uniform trials: their weights and, at each one's best epoch, val_acc,
    hard_acc and the accuracy of each hard class. Read back from the MLflow child runs."""
    runs = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'",
                              max_results=10_000)
    scored = [r for r in runs if f"best_{metric}" in r.data.metrics]
    if not scored:
        return {}
    rows = {"best": max(scored, key=lambda r: r.data.metrics[f"best_{metric}"])}
    for label, point in starting_points(space).items():
        for r in scored:
            if all(abs(float(r.data.params.get(k, "nan")) - v) < 1e-9
                   for k, v in point.items()):
                rows[label] = r
                break
    keys = ["val_acc", "hard_acc", *(f"val_acc_{c}" for c in HARD_CLASSES)]
    return {label: {"run_id": r.info.run_id,
                    "weights": [float(r.data.params[f"w{c}"]) for c in range(NUM_CLASSES)],
                    **{k: r.data.metrics.get(f"best_{k}") for k in keys}}
            for label, r in rows.items()}


def format_comparison(table: dict) -> str:
    cols = ["val_acc", "hard_acc", *(f"val_acc_{c}" for c in HARD_CLASSES)]
    head = ["", *cols, "weights"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in table.items():
        cells = [f"{row[k]:.4f}" if row[k] is not None else "n/a" for k in cols]
        weights = "[" + ", ".join(f"{w:.2f}" for w in row["weights"]) + "]"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {weights} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    model = ALIASES.get(args.model, args.model)
    profile = PROFILES[args.profile]
    name = args.name or f"weights-{model}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        check_resources(args)
        if not (0 < args.low < args.high and math.isfinite(args.high)):
            raise ConfigError(f"need 0 < --low < --high, both finite, got {args.low} and "
                              f"{args.high}")
        known = [w for p in starting_points(args.space).values() for w in p.values()]
        if min(known) < args.low or max(known) > args.high:
            raise ConfigError(f"--low {args.low} .. --high {args.high} must contain the "
                              f"starting points' weights ({min(known)} .. {max(known)})")
        num_samples = args.num_samples or profile.weights_trials
        if num_samples < 2:
            raise ConfigError(f"--num-samples must be at least 2 (the seed's and the uniform "
                              f"weights come first), got {num_samples}")
        ws = Workspace.open(args.workspace, args.tracking_uri, args.storage_path)
        found = grid_defaults(ws.client(), model, profile.name)
        done = study_trials(ws, name)
        if done and not args.resume:
            raise ConfigError(f"an Optuna study named {name!r} already exists in "
                              f"{ws.root / STORAGE_FILE}; pass --resume to continue it or "
                              "--name for a new one")
        batch_size = args.batch_size or found.get("batch_size") or profile.weights_batch_size
        epochs = args.epochs or found.get("epochs") or profile.weights_epochs
        width = args.width or found.get("width") or profile.widths.get(model)
        if model == "cnn":
            if args.width is not None:
                raise ConfigError("the cnn has a fixed width (the seed's); drop --width")
            width = None
        warmup = profile.warmup_epochs if args.warmup_epochs is None else args.warmup_epochs
        split = load_split(args.data_dir, train_size(args, profile), args.seed,
                           args.download)
        if batch_size > len(split.y_train):
            raise ConfigError(f"batch size {batch_size} is larger than the "
                              f"{len(split.y_train)} training images; lower --batch-size")
        if epochs < warmup:
            raise ConfigError(f"epochs {epochs} is fewer than the {warmup} warm-up epochs; "
                              "raise --epochs or lower --warmup-epochs")
    except (DataError, ConfigError, WorkspaceError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    source = found.get("from") or f"the {profile.name} profile"
    given = [f for f, v in (("batch size", args.batch_size), ("epochs", args.epochs),
                            ("width", args.width)) if v]
    print(f"weights search {name}: {model} width {width}, batch size {batch_size}, "
          f"{epochs} epochs (defaults from {source}" +
          (f"; {', '.join(given)} as given)" if given else ")") +
          f"; {num_samples} trials, objective {args.objective}", flush=True)

    metric = args.objective
    scheduler = None
    if args.scheduler == "asha":
        scheduler = ScheduleAwareASHA(args.grace_period or profile.grace_period,
                                      args.reduction_factor or profile.reduction_factor,
                                      metric=metric)
    base = TrainConfig(model=model, model_kwargs={"width": width} if width else {},
                       batch_size=batch_size, epochs=epochs, warmup_epochs=warmup,
                       seed=args.seed, num_threads=max(1, int(args.cpus_per_trial)),
                       augment=profile.augment.get(model, "auto"),
                       device="cuda" if args.gpus_per_trial > 0 else "cpu")
    # no shared warm-ups: the class weights shape the warm-up, and every trial has its own
    param_space = {**{k: v for k, v in base.to_dict().items() if k != "class_weights"},
                   **search_space(args.space, args.low, args.high)}
    points = list(starting_points(args.space).values())
    startup = min(10, max(2, num_samples // 3))

    def make_searcher(ws: Workspace, first: bool):
        return DurableOptunaSearch(
            epochs=epochs, study_name=name, storage=optuna.storages.RDBStorage(storage_url(ws)),
            sampler=SeededTPESampler(args.seed, n_startup_trials=startup, multivariate=True),
            points_to_evaluate=points if first else None)

    def report(results, client, parent_id, ws):
        state = ws.load_state(name) or {}
        table = comparison(client, parent_id, state.get("experiment_id"), args.space, metric)
        if not table:
            return
        text = format_comparison(table)
        print(f"\nbest / seed / uniform weights (validation, at each trial's best epoch by "
              f"{metric}):\n{text}")
        best = table["best"]
        for c, w in enumerate(best["weights"]):
            client.log_metric(parent_id, f"best_w{c}", w)
        client.set_tag(parent_id, "best.weights", str([round(w, 4) for w in best["weights"]]))
        client.log_text(parent_id, text + "\n", "weights_comparison.md")
        client.log_dict(parent_id, table, "weights_comparison.json")
        print(f"Optuna study:   optuna-dashboard {storage_url(ws)}   (study {name!r})")

    params = {"model": model, "profile": profile.name, "space": args.space, "low": args.low,
              "high": args.high, "objective": metric, "num_samples": num_samples,
              "batch_size": batch_size, "epochs": epochs, "width": width, "seed": args.seed,
              "train_size": len(split.y_train) + len(split.y_val),
              "warmup_epochs": warmup, "defaults_from": found.get("from", "profile"),
              "scheduler": args.scheduler, "optuna_storage": storage_url(ws),
              "grace_period": getattr(scheduler, "grace_period", None),
              "reduction_factor": getattr(scheduler, "reduction_factor", None)}
    search = Search(
        name=name, kind="weights", param_space=param_space, scheduler=scheduler,
        num_samples=num_samples, params=params, metric=metric,
        tags={"profile": profile.name, "model": model, "space": args.space,
              "objective": metric},
        columns=tuple(f"w{c}" for c in SPACES[args.space]),
        make_searcher=make_searcher,
        trials_done=lambda ws: len(study_trials(ws, name)), report=report)
    return run_search(args, search, split)


if __name__ == "__main__":
    sys.exit(main())
