"""Training speed of every model, and the share of step time spent in augmentation.

    python bench/train_step.py [--seconds 20] [--threads 2] [--device auto] [--full-width]

For each model (the CNN with the seed's offline expansion; ResNet18 and Inception with online
augmentation at the CPU profile's width and, with --full-width or on a GPU, at width 64) it runs
real training epochs of the engine (trainables.engine.train_one_epoch) on a slice of the real
training images sized to take about --seconds, and prints training images/s and the share of
step time spent in augmentation (target: under 10%). Measured side by side in one run: each
model is also timed with augmentation "none", and the ratio with/without is printed.
"""

from __future__ import annotations

import argparse
import time

import torch

from trainables.data import load_split
from trainables.engine import TrainConfig, build, resolve_device, train_one_epoch

CPU_WIDTH = 16  # the CPU profiles' width for resnet18 and inception


def measure(cfg: TrainConfig, split, seconds: float) -> dict:
    state = build(cfg, split)
    # Calibrate on a small slice, then time one epoch over a slice sized to ``seconds``.
    probe = 4 * cfg.batch_size
    g = torch.Generator(state.device).manual_seed(0)
    args = dict(batch_size=cfg.batch_size, mean=state.mean, std=state.std, policy=cfg.augment,
                class_weights=None, generator=g)
    first = train_one_epoch(state.model, state.optimizer, state.x_train[:probe],
                            state.y_train[:probe], **args)
    n = int(min(len(state.x_train), max(probe, first["images_per_s"] * seconds)))
    n = max(cfg.batch_size, n // cfg.batch_size * cfg.batch_size)
    return train_one_epoch(state.model, state.optimizer, state.x_train[:n], state.y_train[:n],
                           **args)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=20, help="time per measurement")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--full-width", action="store_true", help="also width 64 on the CPU")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    full = args.full_width or device.type == "cuda"
    split = load_split()
    cases = [("cnn", {}, 64, "offline")]
    for model in ("resnet18", "inception"):
        widths = [CPU_WIDTH] + ([64] if full else [])
        cases += [(model, {"width": w}, 128, "online") for w in widths]
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'model':<22} {'batch':>5} {'augment':>8} {'img/s':>9} {'img/s no aug':>13} "
          f"{'ratio':>6} {'aug share':>10}")
    for model, kwargs, batch, policy in cases:
        cfg = TrainConfig(model=model, model_kwargs=kwargs, batch_size=batch, augment=policy,
                          device=args.device, seed=0)
        t0 = time.perf_counter()
        with_aug = measure(cfg, split, args.seconds)
        # "offline" adds no per-step work (the expansion is made once), so its share is ~0.
        without = measure(TrainConfig(**{**cfg.to_dict(), "augment": "none"}), split,
                          args.seconds)
        name = f"{model}({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
        print(f"{name:<22} {batch:>5} {policy:>8} {with_aug['images_per_s']:>9,.0f} "
              f"{without['images_per_s']:>13,.0f} "
              f"{with_aug['images_per_s'] / without['images_per_s']:>6.2f} "
              f"{100 * with_aug['augment_share']:>9.1f}%   ({time.perf_counter() - t0:.0f} s)",
              flush=True)


if __name__ == "__main__":
    main()
