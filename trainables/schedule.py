"""The learning-rate schedules of the SGD phase, and their flags.

The seed cuts SGD's rate step by step after its Adam warm-up (docs/seed.md, "Training");
``cosine``, ``step`` and ``multistep`` size that cut to the epochs left. ``wsd``
(warmup-stable-decay; Hägele et al. 2024) keeps the rate constant and decays it to zero, batch by
batch, over the last ``decay_fraction`` of the SGD epochs: runs of different lengths are the
same run until their decay starts (``branch_epoch``), which shared trunks exploit
(trainables/trunk.py). Functions take any object with TrainConfig's fields.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from trainables.flags import flag

SCHEDULES = ("cosine", "step", "multistep", "wsd")
DECAY_SHAPES = ("linear", "cosine")  # wsd's decay to zero
DECAY_FRACTION, DECAY_SHAPE = 0.2, "linear"  # wsd's defaults (TrainConfig's)


def decay_epochs(cfg) -> int:
    """wsd: the SGD epochs at the end that decay the rate (at least one); other schedules: 0."""
    sgd = cfg.epochs - cfg.warmup_epochs
    if cfg.schedule != "wsd" or sgd == 0:
        return 0
    return min(sgd, max(1, round(cfg.decay_fraction * sgd)))


def branch_epoch(cfg) -> int:
    """The epochs this run shares with every run that differs from it only in its length (and
    its decay): the warm-up, and under wsd the stable phase after it too."""
    if cfg.schedule != "wsd":
        return cfg.warmup_epochs
    return cfg.epochs - decay_epochs(cfg)


def lr_at(cfg, epoch: int, fraction: float = 0.0) -> float:
    """The learning rate of (0-based) ``epoch``: constant during the warm-up, then the schedule
    over the SGD epochs (docs/seed.md, "Training": the rate is cut step by step). Only wsd's
    decay changes within an epoch: ``fraction`` is the share of the epoch done."""
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr
    k, n = epoch - cfg.warmup_epochs, cfg.epochs - cfg.warmup_epochs
    if cfg.schedule == "wsd":
        d = decay_epochs(cfg)
        into = k + fraction - (n - d)  # epochs into the decay
        if into < 0:
            return cfg.lr
        if cfg.decay_shape == "linear":
            return cfg.lr * (1 - into / d)
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * into / d))
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * k / n))
    if cfg.schedule == "step":  # three equal steps, each a tenth of the one before
        return cfg.lr * 0.1 ** (k // max(1, math.ceil(n / 3)))
    milestones = (round(0.5 * n), round(0.75 * n))  # multistep
    return cfg.lr * 0.1 ** sum(k >= m for m in milestones)


def fraction(text: str) -> float:
    """An argparse type: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, got {text}")
    return value


@dataclass(frozen=True)
class ScheduleFlags:
    """The schedule's flags, for every command that trains (its options take each with
    trainables/flags.py ``like``)."""

    schedule: str = flag("cosine", choices=SCHEDULES, help="SGD's rate after the warm-up: "
                         "cosine, step, multistep, or wsd (constant, then a decay to zero; "
                         "default %(default)s)")
    decay_fraction: float = flag(DECAY_FRACTION, type=fraction, help="wsd: the share of the "
                                 "SGD epochs that decay (default %(default)s)")
    decay_shape: str = flag(DECAY_SHAPE, choices=DECAY_SHAPES,
                            help="wsd: the decay's shape (default %(default)s)")
