"""Training speed of the engine's default path against the plain fp32 path, side by side.

    python bench/train_step.py [--seconds 10] [--threads 1] [--device auto] [--full-width]
        [--batch-sizes 128,512] [--rounds 2] [--compile]

For each model at the quick profile's widths (ResNet18 16, Inception 8; the CNN has the seed's) and,
with --full-width, at width 64, it runs real training epochs of the engine
(trainables.engine.train_one_epoch, the profile's augmentation) on a slice of the real training
images sized to take about --seconds, once on the plain path (fp32, contiguous NCHW, eager, torch's
Dropout: what the engine ran before it had a fast path) and once on the default path (``auto``: bf16
autocast where the device has it natively, channels_last; torch.compile where trainables/fastpath.py
says it pays: ResNet18 and Inception in fp32 on a CPU), alternating the two --rounds times and
keeping each one's best, and prints images/s, their ratio and the augmentation's share of the step
time. It ends with one line: ``speed-up vs fp32 eager: cnn X.XXx, resnet18 X.XXx, inception X.XXx``
(the first width of each model). --compile adds a third path, the default under
torch.compile(mode="max-autotune"), for the GPU measurement (bench/gpu_check.sh)."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, run as a script

import torch

from search.profiles import PROFILES
from trainables.config import TrainConfig
from trainables.data import load_split
from trainables.engine import TrainState, build, resolve_device, train_one_epoch
from trainables.fastpath import FP32, fast_path
from trainables.models import card
from trainables.models.layers import Dropout

PROFILE = PROFILES["quick"]
BATCH = {"cnn": 64, "resnet18": 128, "inception": 128}


def torch_dropout(model: torch.nn.Module) -> None:
    """torch's own Dropout in place of the project's (the plain path is the engine as it was)."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, Dropout):
                module._modules[name] = torch.nn.Dropout(child.p)


def measure(cfg: TrainConfig, split, seconds: float, compile_: bool | str = False,
            plain: bool = False, tweak=None) -> dict:
    """img/s of real training epochs of ``cfg``: warmed up (kernels chosen, compiled), then one
    epoch over a slice sized to take about ``seconds``. ``compile_``: torch.compile's mode
    (True: "max-autotune"); ``tweak(state)``, when given, changes the built run first (the GPU
    check's levers: a fused optimiser, another Dropout)."""
    state = build(cfg, split)
    if plain:
        torch_dropout(state.model)
    if tweak is not None:
        tweak(state)
    model, fast, compiled = state.model, state.fast, state.compiled
    if compile_:
        compiled = torch.compile(model, mode="max-autotune" if compile_ is True else compile_)
    return timed_epochs(state, seconds, compiled) | {"path": str(fast)}


def timed_epochs(state: TrainState, seconds: float, compiled=None) -> dict:
    """Warm up on 4 batches twice, then time one epoch over a slice sized to take ``seconds``."""
    cfg = state.cfg
    g = torch.Generator(state.device).manual_seed(0)
    state = replace(state, compiled=compiled, class_weights=None)
    probe = 4 * cfg.batch_size
    train_one_epoch(state, g, images=probe)
    first = train_one_epoch(state, g, images=probe)
    n = int(min(len(state.x_train), max(probe, first["images_per_s"] * seconds)))
    n = max(cfg.batch_size, n // cfg.batch_size * cfg.batch_size)
    return train_one_epoch(state, g, images=n)


def cases(full_width: bool, batch_sizes: list[int] | None, models: list[str],
          only_widths: list[int] | None = None) -> list[tuple[str, dict, int]]:
    out = []
    for model in models:
        fixed = not card(model).takes_width
        widths = [PROFILE.width(model)] + ([64] if full_width and not fixed else [])
        if only_widths and not fixed:
            widths = only_widths
        for width in widths:
            for batch in batch_sizes or [BATCH[model]]:
                out.append((model, {"width": width} if width else {}, batch))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=10, help="time per measurement")
    p.add_argument("--threads", type=int, default=1,
                   help="threads per run (default 1: a quick-profile trial's, two side by side "
                        "on two cores)")
    p.add_argument("--device", default="auto")
    p.add_argument("--full-width", action="store_true", help="also width 64")
    p.add_argument("--batch-sizes", help="e.g. 128,512 (default: cnn 64, the others 128)")
    p.add_argument("--rounds", type=int, default=2, help="alternations of the two paths")
    p.add_argument("--compile", action="store_true", help="also torch.compile(max-autotune)")
    p.add_argument("--train-size", type=int, default=30_000)
    p.add_argument("--models", default="cnn,resnet18,inception")
    p.add_argument("--widths", help="e.g. 64: only these widths (resnet18, inception)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    split = load_split(train_size=args.train_size)
    default = fast_path("auto", "auto", device)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else None
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"plain: {FP32}, eager; default: {default}")
    head = (f"{'model':<20} {'batch':>5} {'plain img/s':>12} {'default img/s':>14} "
            f"{'speed-up':>9} {'aug share':>10}" + (f" {'compiled':>9}" if args.compile else ""))
    print(head)
    first = {}
    widths = [int(w) for w in args.widths.split(",")] if args.widths else None
    for model, kwargs, batch in cases(args.full_width, batch_sizes, args.models.split(","),
                                      widths):
        cfg = TrainConfig(model=model, model_kwargs=kwargs, batch_size=batch, seed=0,
                          augment=PROFILE.augment.get(model, "auto"), device=args.device)
        cfg_plain = TrainConfig(**{**cfg.to_dict(), "precision": FP32.precision,
                                   "memory_format": "contiguous", "compile": "off"})
        t0 = time.perf_counter()
        plain, fast = [], []
        for _ in range(args.rounds):  # alternating: a drift in the machine hits both
            plain.append(measure(cfg_plain, split, args.seconds, plain=True))
            fast.append(measure(cfg, split, args.seconds))
        a = max(r["images_per_s"] for r in plain)
        best = max(fast, key=lambda r: r["images_per_s"])
        b = best["images_per_s"]
        name = model + "".join(f"-w{v}" for v in kwargs.values())
        line = (f"{name:<20} {batch:>5} {a:>12,.0f} {b:>14,.0f} {b / a:>8.2f}x "
                f"{100 * best['augment_share']:>9.1f}%")
        if args.compile:
            c = measure(cfg, split, args.seconds, compile_=True)["images_per_s"]
            line += f" {c:>9,.0f}"
        print(f"{line}   ({time.perf_counter() - t0:.0f} s; default: {best['path']})",
              flush=True)
        first.setdefault(model, b / a)
    print("speed-up vs fp32 eager: " +
          ", ".join(f"{m} {r:.2f}x" for m, r in first.items()))


if __name__ == "__main__":
    main()
