"""A short measurement of a model's throughput on this machine, for a time budget's plan when the
MLflow store holds no earlier trial of it (search/throughput.py reads those).

It runs the engine itself (trainables/engine.py) on the search's own data, config and threads:
one model built once, and for each batch size a few warm-up batches, then real training batches
for about ``seconds``;
then validation over a slice of the validation images. What it returns is a ``Throughput`` as
earlier trials give one, with a start-up assumed (``STARTUP_ASSUMED_S``) until a trial here
measures one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import replace

import torch

from search.throughput import Throughput
from trainables.config import TrainConfig
from trainables.engine import build, evaluate, train_one_epoch

WARM_BATCHES = 2
VAL_IMAGES = 2_000  # the most validation images timed
# A trial's start (its actor, its data, its model, Tune's bookkeeping), assumed, not measured:
# earlier trials' records time their start from their MLflow run's creation, which comes after
# their actor started, and read about 0 s. A smoke grid's four trials of 0.6 s epochs took
# 20 s here where their epochs account for 3 s.
STARTUP_ASSUMED_S = 5.0


def measure(config: dict, batch_sizes: Iterable[int], split, threads: int,
            seconds: float = 2.0) -> Throughput:
    """The throughput of ``config``'s model (its flat Tune config) at ``batch_sizes``, on
    ``threads`` threads (torch's count is put back after)."""
    before = torch.get_num_threads()
    cfg = TrainConfig.from_dict({k: v for k, v in config.items()
                                 if k in TrainConfig.__dataclass_fields__})
    rates = {}
    try:
        torch.set_num_threads(max(1, int(threads)))
        # one model and one copy of the data (an offline policy's expansion made once); each
        # batch size trains it on
        built = build(replace(cfg, num_threads=None, class_weights=None), split)
        generator = torch.Generator(built.device).manual_seed(0)
        for batch in sorted(set(batch_sizes)):
            state = replace(built, cfg=replace(built.cfg, batch_size=int(batch)))
            warm = min(len(state.x_train), WARM_BATCHES * batch)
            first = train_one_epoch(state, generator, images=warm)
            n = int(min(len(state.x_train), max(batch, first["images_per_s"] * seconds)))
            rates[int(batch)] = train_one_epoch(state, generator,
                                                images=max(batch, n // batch * batch))[
                "images_per_s"]
        n = min(len(state.x_val), VAL_IMAGES)
        began = time.perf_counter()
        evaluate(state.model, state.x_val[:n], state.y_val[:n], batch_size=cfg.eval_batch_size,
                 mean=state.mean, std=state.std, fast=state.fast)
        per_val_image = (time.perf_counter() - began) / max(1, n)
    finally:
        torch.set_num_threads(before)
    return Throughput(rates, per_val_image, trials=0, start_s=STARTUP_ASSUMED_S)
