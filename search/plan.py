"""A search's plan, printed and recorded before it trains: its trials, the epochs they compute,
and about how long that takes here.

An exhaustive search computes every trial's ``epochs``. With shared trunks (``trunk_cache``)
trials that differ only in what the part after their branch reads compute their first epochs
once: which trials, how far, and the epochs that leaves are trainables/trunk.py's answers. ASHA
may stop trials sooner: these are the most a search computes.

The time is an estimate from earlier trials of the same model on the same hardware, read by
search/throughput.py: their training images/s, per batch size, and their epochs' wall time
beyond training, per validation image.

The arithmetic takes flat trial configs (``trial_configs`` expands a Tune param_space) and needs
no Ray; the earlier trials' throughput comes from a function passed in.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import MappingProxyType

from search.throughput import Throughput, model_of
from trainables.augment import default_policy
from trainables.config import TrainConfig
from trainables.trunk import epochs_at_most, epochs_exhaustive, groups, place

OFFLINE_FACTOR = 3  # augment.expand_offline: the originals, flipped and erased, blurred
LABELS = MappingProxyType({"batch_size": "batch", "epochs": "epochs"})
SAMPLED = "<sampled>"  # a searcher's or sampler's value, different in every trial


# --- the trials -------------------------------------------------------------------------------

def _is_grid(value) -> bool:
    return isinstance(value, dict) and set(value) == {"grid_search"}


def _is_sampled(value) -> bool:
    """A Tune search domain (tune.uniform, ...), recognised without importing Ray."""
    return callable(getattr(value, "sample", None)) and not isinstance(value, dict)


def _grids(space: dict, prefix: tuple = ()) -> list[tuple[tuple, list]]:
    """(path, values) of every tune.grid_search entry, nested dicts included."""
    found = []
    for k, v in space.items():
        if _is_grid(v):
            found.append(((*prefix, k), list(v["grid_search"])))
        elif isinstance(v, dict):
            found += _grids(v, (*prefix, k))
    return found


def _sampled(space: dict, prefix: tuple = ()) -> list[str]:
    found = []
    for k, v in space.items():
        if _is_sampled(v):
            found.append(".".join((*prefix, k)))
        elif isinstance(v, dict) and not _is_grid(v):
            found += _sampled(v, (*prefix, k))
    return found


def _resolved(space: dict, sample: int, paths: dict) -> dict:
    out = {}
    for k, v in space.items():
        if isinstance(v, dict) and not _is_grid(v):
            out[k] = _resolved(v, sample, paths.get(k, {}))
        elif _is_grid(v):
            out[k] = paths[k]
        elif _is_sampled(v):
            out[k] = f"{SAMPLED} {sample}"
        else:
            out[k] = v
    return out


def trial_configs(param_space: dict, num_samples: int = 1) -> list[dict]:
    """The flat trial configs a Tune param_space gives: every combination of its grid_search
    entries, ``num_samples`` times (Tune's rule); a sampled value stands as a marker that
    differs between samples."""
    grids = _grids(param_space)
    out = []
    for sample in range(max(1, num_samples)):
        for combo in itertools.product(*(values for _, values in grids)):
            paths: dict = {}
            for (path, _), value in zip(grids, combo, strict=True):
                node = paths
                for k in path[:-1]:
                    node = node.setdefault(k, {})
                node[path[-1]] = value
            out.append(_resolved(param_space, sample, paths))
    return out


def _cell(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _names(keys: list[str]) -> str:
    """Sampled keys in a few words: class weights w0-w9, or their names."""
    numbers = [int(k[1:]) for k in keys if re.fullmatch(r"w\d+", k)]
    if len(numbers) != len(keys):
        return ", ".join(keys)
    numbers.sort()
    if len(numbers) > 2 and numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"class weights w{numbers[0]}-w{numbers[-1]}"
    return "class weights " + ",".join(f"w{n}" for n in numbers)


def describe(param_space: dict, num_samples: int = 1) -> str:
    """What the trials are, in a few words: "batch 64,128 x epochs 3,4", or "class weights
    w0-w9 sampled 4 times; batch 64, epochs 3"."""
    order = {k: i for i, k in enumerate(LABELS)}
    grids = sorted(_grids(param_space), key=lambda g: order.get(".".join(g[0]), len(order)))
    parts = [f"{LABELS.get('.'.join(p), '.'.join(p))} {','.join(_cell(v) for v in values)}"
             for p, values in grids]
    text = " x ".join(parts)
    sampled = _sampled(param_space)
    if sampled:
        what = f"{_names(sampled)} sampled {num_samples} time{'s' * (num_samples != 1)}"
        text = f"{text}, {what}" if text else what
    elif num_samples > 1:
        text = f"{text}, {num_samples} samples each" if text else f"{num_samples} samples"
    fixed = [f"{label} {_cell(param_space[k])}" for k, label in LABELS.items()
             if k in param_space and not _is_grid(param_space[k])]
    if fixed:
        text = f"{text}; {', '.join(fixed)}" if text else ", ".join(fixed)
    return text


# --- trials side by side ----------------------------------------------------------------------

def at_a_time(trials: int, resources: tuple[float, float], totals: dict,
              max_concurrent: int = 0) -> int:
    """Trials that run side by side: --max-concurrent, else as many as the cluster's CPUs and
    GPUs (``totals``, Ray's cluster_resources) hold at the resources each takes."""
    cpus, gpus = resources
    k = int(totals.get("CPU", 1) / cpus + 1e-9)
    if gpus > 0:
        k = min(k, int(totals.get("GPU", 0) / gpus + 1e-9))
    if max_concurrent:
        k = min(k, max_concurrent)
    return max(1, min(k, trials))


# --- the plan ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    trials: int
    space: str  # what the trials are (describe)
    exhaustive: int  # epochs, every trial's own
    at_most: int  # epochs computed at most, trunks shared
    shared: bool  # whether trials share trunks (trunk_cache)
    asha: bool  # whether ASHA may stop trials sooner
    at_a_time: int
    seconds: float | None = None  # the estimate; None when there is none
    images_per_s: float | None = None  # training images/s over the epochs estimated
    covers: str = ""  # what the estimate holds: "training, validation, start-up"
    earlier: int = 0  # the earlier trials the estimate comes from
    model: str = ""  # whose trials: "cnn", "resnet18 width 4"
    why_none: str = ""  # why there is no estimate

    def line(self) -> str:
        epochs = f"{self.exhaustive} epochs exhaustive, at most {self.at_most} computed"
        notes = [] if self.shared else ["no shared trunks"]
        if self.asha:
            notes.append("ASHA may stop trials sooner")
        if self.shared:
            epochs += " after shared trunks"
        if notes:
            epochs += f" ({'; '.join(notes)})"
        if self.seconds is None:
            time = f"no time estimate yet ({self.why_none})"
        else:
            covers = "training only" if self.covers == "training" else \
                f"with {self.covers.removeprefix('training, ').replace(', ', ' and ')}"
            source = (f"from {self.earlier} earlier {self.model} "
                      f"trial{'s' * (self.earlier != 1)} on this machine" if self.earlier else
                      f"from the time budget's measurement of {self.model} here")
            time = f"about {duration(self.seconds)} at {self.images_per_s:.0f} img/s ({covers}, "\
                f"{source})"
        return (f"plan: {self.trials} trial{'s' * (self.trials != 1)} ({self.space}); {epochs}; "
                f"{time}, {self.at_a_time} trial{'s' * (self.at_a_time != 1)} at a time")

    def params(self) -> dict:
        """The parent run's params: the same figures as the line."""
        out = {"plan_trials": self.trials, "plan_space": self.space,
               "plan_epochs_exhaustive": self.exhaustive, "plan_epochs_at_most": self.at_most,
               "plan_shared_trunks": self.shared, "plan_trials_at_a_time": self.at_a_time}
        if self.seconds is None:
            out["plan_no_estimate"] = self.why_none
        else:
            out.update(plan_estimated_seconds=round(self.seconds),
                       plan_throughput_img_s=round(self.images_per_s, 1),
                       plan_throughput_trials=self.earlier, plan_estimate_covers=self.covers)
        return out


def model_text(config: dict) -> str:
    """A trial's model in words: "cnn", "resnet18 width 4"."""
    kwargs = config.get("model_kwargs") or {}
    return " ".join([str(config.get("model", TrainConfig.model)),
                     *(f"{k} {v}" for k, v in sorted(kwargs.items()))])


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def make(param_space: dict, num_samples: int, *, asha: bool, at_a_time: int,
         train_images: int, val_images: int,
         throughput: Callable[[dict], Throughput | None] | None = None) -> Plan:
    """The plan of a search over ``param_space``. ``throughput(config)`` gives the earlier
    trials' throughput for a trial's model (None: there is none, and no estimate)."""
    configs = trial_configs(param_space, num_samples)
    plan = Plan(trials=len(configs), space=describe(param_space, num_samples),
                exhaustive=epochs_exhaustive(configs), at_most=epochs_at_most(configs),
                shared=any(place(c).trunk for c in configs), asha=asha, at_a_time=at_a_time)
    models: dict = {}
    for c in configs:
        models.setdefault(model_of(c), c)
    found = {k: throughput(c) if throughput else None for k, c in models.items()}
    missing = [model_text(models[k]) for k, t in found.items() if t is None]
    if missing:
        return replace(plan, why_none=f"no earlier {' or '.join(missing)} trial on this "
                       "machine")
    total = images = train_s = 0.0
    path = 0.0  # the longest chain one after the other: a start, a trunk, its longest branch
    for group in groups(configs):
        branch = [place(c).branch for c in group]
        head = max(range(len(group)), key=branch.__getitem__)
        parts = [_cost(group[head], branch[head], found, train_images, val_images)] + \
            [_cost(c, int(c["epochs"]) - b, found, train_images, val_images)
             for c, b in zip(group, branch, strict=True)]
        starts = [found[model_of(c)].start_s or 0.0 for c in group]
        total += sum(p[0] for p in parts) + sum(starts)
        images += sum(p[1] for p in parts)
        train_s += sum(p[2] for p in parts)
        path = max(path, max(starts) + parts[0][0] + max(p[0] for p in parts[1:]))
    covers = ["training"]
    if all(t.extra_s_per_val_image is not None for t in found.values()):
        covers.append("validation")
    if all(t.start_s is not None for t in found.values()):
        covers.append("start-up")
    return replace(plan, seconds=max(total / at_a_time, path),
                   images_per_s=images / train_s if train_s else 0.0, covers=", ".join(covers),
                   earlier=sum(t.trials for t in found.values()),
                   model=" and ".join(model_text(c) for c in models.values()))


def epochs_seconds(config: dict, epochs: int, throughput: Throughput, train_images: int,
                   val_images: int) -> float:
    """The seconds ``epochs`` epochs of a trial of ``config`` take, training and validation, at
    ``throughput`` (its model's)."""
    return _cost(config, epochs, {model_of(config): throughput}, train_images, val_images)[0]


def _cost(config: dict, epochs: int, found: dict, train_images: int,
          val_images: int) -> tuple[float, float, float]:
    """(seconds, training images, training seconds) of ``epochs`` epochs of a trial."""
    t = found[model_of(config)]
    n = train_images * (OFFLINE_FACTOR if _augment(config) == "offline" else 1)
    train = epochs * n / t.rate(int(config["batch_size"]))
    return train + epochs * val_images * (t.extra_s_per_val_image or 0.0), epochs * n, train


def _augment(config: dict) -> str:
    policy = config.get("augment", "auto")
    return default_policy(str(config.get("model", TrainConfig.model))) if policy == "auto" \
        else policy


