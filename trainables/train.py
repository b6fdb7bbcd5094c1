"""One run of the engine on the seed protocol, outside any search.

    python -m trainables.train --model cnn --epochs 10 [--batch-size 64] [--width W]
        [--class-weights seed|uniform|w0,...,w9] [--augment none|flip|shift|online|offline]
        [--out DIR]

Prints each epoch's train loss, val loss, val accuracy and images/s, then the test accuracy of
the final model, and writes DIR/metrics.json and DIR/checkpoint.pt (trainables/checkpoint.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from trainables import augment, checkpoint
from trainables.cli import (
    EXIT_OK,
    EXIT_USAGE,
    QUIET,
    ArgParser,
    at_least,
    exit_now,
)
from trainables.config import SEED_CLASS_WEIGHTS, ConfigError, TrainConfig, check_batch
from trainables.data import CLASSES, DataError, DataOptions, load_split
from trainables.engine import NonFiniteLoss, build, evaluate, run_epoch
from trainables.fastpath import FastPathFlags
from trainables.files import write_reason
from trainables.flags import flag, like, parser_for, run_command
from trainables.models import list_models
from trainables.schedule import ScheduleFlags


def class_weights_arg(text: str) -> tuple[float, ...]:
    if text == "seed":
        return SEED_CLASS_WEIGHTS
    if text == "uniform":
        return (1.0,) * len(CLASSES)
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seed, uniform or {len(CLASSES)} comma-separated numbers, got {text!r}"
        ) from None
    if len(values) != len(CLASSES):
        raise argparse.ArgumentTypeError(
            f"expected {len(CLASSES)} weights, one per class, got {len(values)}")
    if any(not (v >= 0) or v == float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"weights must be finite and non-negative: {text}")
    if not any(values):
        raise argparse.ArgumentTypeError(f"weights must not all be zero: {text}")
    return values


positive_int = at_least(1)
non_negative_int = at_least(0, "0 or more")


@dataclass(frozen=True)
class TrainOptions(DataOptions):
    """The flags of ``python -m trainables.train``, typed (TrainConfig's defaults)."""

    model: str = flag(TrainConfig.model, choices=list_models)
    epochs: int = flag(TrainConfig.epochs, type=positive_int,
                       help="epochs in all, warm-up included (default %(default)s)")
    batch_size: int = flag(TrainConfig.batch_size, type=positive_int)
    width: int | None = flag(None, type=positive_int, help="channel width (resnet18, inception)")
    class_weights: tuple[float, ...] | None = flag(
        None, type=class_weights_arg, metavar="seed|uniform|w0,...,w9",
        help="per-class loss weights (default: none, plain cross-entropy)")
    augment: str | None = flag(None, choices=augment.POLICIES, help="default: offline for cnn, "
                               "online for the others (the seed's choice)")
    warmup_epochs: int = flag(TrainConfig.warmup_epochs, type=non_negative_int)
    warmup_lr: float = flag(TrainConfig.warmup_lr, type=float)
    lr: float = flag(TrainConfig.lr, type=float, help="SGD's rate after the warm-up")
    schedule: str = like(ScheduleFlags, "schedule")
    decay_fraction: float = like(ScheduleFlags, "decay_fraction")
    decay_shape: str = like(ScheduleFlags, "decay_shape")
    weight_decay: float = flag(TrainConfig.weight_decay, type=float)
    dropout: float = flag(TrainConfig.dropout, type=float)
    device: str = flag("auto", help="auto, cpu, cuda or cuda:N")
    threads: int | None = flag(None, type=positive_int, help="CPU threads (torch.set_num_threads)")
    precision: str = like(FastPathFlags, "precision")
    memory_format: str = like(FastPathFlags, "memory_format")
    compile: str = like(FastPathFlags, "compile")
    out: Path | None = flag(None, type=Path, help="output folder (default "
                            "outputs/train/MODEL-TIME)")


def parser() -> ArgParser:
    return parser_for(TrainOptions, prog="python -m trainables.train", description="Train one "
                      "model with the seed's recipe; report val/test accuracy.")


def config_from(options: TrainOptions) -> TrainConfig:
    return TrainConfig(
        model=options.model, model_kwargs={"width": options.width} if options.width else {},
        batch_size=options.batch_size, epochs=options.epochs,
        warmup_epochs=options.warmup_epochs, warmup_lr=options.warmup_lr, lr=options.lr,
        weight_decay=options.weight_decay, schedule=options.schedule,
        decay_fraction=options.decay_fraction, decay_shape=options.decay_shape,
        dropout=options.dropout, class_weights=options.class_weights,
        augment=options.augment or "auto", seed=options.seed, device=options.device,
        num_threads=options.threads, precision=options.precision,
        memory_format=options.memory_format, compile=options.compile,
    )


def write_error(e: Exception, out: Path) -> str:
    """One line for results that could not be written (a full disk, a read-only folder)."""
    why = write_reason(e.__cause__ or e)
    return (f"cannot write the results to {out} ({why}); nothing there was replaced: free "
            "space on that disk or pass --out on another one")


def main(argv: list[str] | None = None) -> int:
    return run_command(TrainOptions, parser(), run, argv)


def run(options: TrainOptions) -> int:
    """Train one model as ``options`` (main's flags) say; the exit code."""
    try:
        cfg = config_from(options)
        split = load_split(options.data_dir, options.train_size, options.seed, options.download)
        check_batch(cfg.batch_size, len(split.y_train), "lower --batch-size")
        state = build(cfg, split)
    except (ConfigError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    out = options.out or Path("outputs/train") / f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:  # an --out that cannot be written fails now, not after the training
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        print(f"error: --out {out} is not writable ({e.strerror or e}); pass --out with a "
              "writable folder", file=sys.stderr)
        return EXIT_USAGE
    print(f"{cfg.model} {cfg.model_args()} on {state.device}, {len(state.x_train)} training "
          f"images ({cfg.augment}), {len(split.y_val)} val, data {split.fingerprint[:16]}")
    started = time.perf_counter()
    if not train(state, cfg, quiet=options.verbosity <= QUIET):
        with contextlib.suppress(OSError):
            out.rmdir()  # only when empty: a previous run's files stay
        return 1
    return finish(state, cfg, split, out, started)


def train(state, cfg: TrainConfig, quiet: bool = False) -> bool:
    """Every epoch, one line each (and a progress bar, unless ``quiet``: -q); False when the
    loss stopped being finite."""
    while state.epoch < cfg.epochs:
        with tqdm(total=len(state.x_train), unit="img", leave=False, file=sys.stderr,
                  desc=f"epoch {state.epoch + 1}/{cfg.epochs}",
                  disable=True if quiet else None) as bar:
            try:
                m = run_epoch(state, on_batch=bar.update)
            except NonFiniteLoss as e:
                print(f"error: epoch {state.epoch + 1}: {e}", file=sys.stderr)
                return False
        print(f"epoch {m['epoch']:>3}/{cfg.epochs} {m['phase']:<6} lr {m['lr']:.2e}  "
              f"train_loss {m['train_loss']:.4f}  val_loss {m['val_loss']:.4f}  "
              f"val_acc {100 * m['val_acc']:.2f}%  {m['images_per_s']:,.0f} img/s "
              f"({m['train_seconds']:.1f} s)", flush=True)
    return True


def finish(state, cfg: TrainConfig, split, out: Path, started: float) -> int:
    """The test score, then metrics.json and the checkpoint in ``out``; the exit code."""
    x_test, y_test = split.x_test.to(state.device), split.y_test.to(state.device)
    test = evaluate(state.model, x_test, y_test, batch_size=cfg.eval_batch_size,
                    mean=state.mean, std=state.std, fast=state.fast)
    last = state.history[-1]
    best = max(state.history, key=lambda h: h["val_acc"])
    print(f"final: val_acc {100 * last['val_acc']:.2f}%  test_acc {100 * test['acc']:.2f}%  "
          f"(best val {100 * best['val_acc']:.2f}% at epoch {best['epoch']}; "
          f"{time.perf_counter() - started:.0f} s in all)")
    metrics = {
        "config": cfg.to_dict(), "data_fingerprint": split.fingerprint,
        "data_source": split.source, "device": str(state.device), "history": state.history,
        "final": {"val_acc": last["val_acc"], "val_loss": last["val_loss"],
                  "test_acc": test["acc"], "test_loss": test["loss"],
                  "test_per_class_acc": dict(zip(CLASSES, test["per_class_acc"], strict=True)),
                  "val_per_class_acc": {c: last[f"val_acc_{i}"] for i, c in enumerate(CLASSES)}},
        "best_val": {"epoch": best["epoch"], "val_acc": best["val_acc"]},
        "torch": torch.__version__,
    }
    # metrics.json replaces a previous one only once the checkpoint is in place, so a failed
    # write (a full disk) leaves the previous run's pair as it was (checkpoint.save is atomic)
    tmp = out / "metrics.json.tmp"
    try:
        tmp.write_text(json.dumps(metrics, indent=2))
        checkpoint.save(state, out / "checkpoint.pt")
        os.replace(tmp, out / "metrics.json")
    except (OSError, RuntimeError, checkpoint.CheckpointError) as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        print(f"error: {write_error(e, out)}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {out / 'metrics.json'} and {out / 'checkpoint.pt'}")
    return EXIT_OK


if __name__ == "__main__":
    exit_now(main)
