"""Batched online augmentation against the same policy per sample in a DataLoader.

    python bench/augment.py
    python bench/augment.py --threads 2 --batch-size 128 --device auto   # the defaults

One epoch of the 27,000 training images of the seed protocol, images per second:
(a) tunefuse's ``augment_batch(..., "online")`` on whole batches (uint8 -> float included);
(b) torchvision.transforms.v2 per sample (RandomHorizontalFlip, RandomRotation(10),
    RandomCrop(28, padding=2), RandomErasing) through a DataLoader with 0 and 2 workers.
Also times the CNN's offline 3x expansion. Target: (a) at least 10x the best of (b).
Timings on a shared machine are noisy: compare the ratios, which come from one run.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from trainables import augment
from trainables.data import load_split


class PerSample(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y
        self.transform = v2.Compose([
            v2.ToDtype(torch.float32, scale=True),
            v2.RandomHorizontalFlip(),
            v2.RandomRotation(augment.ROTATE_DEGREES),
            v2.RandomCrop(28, padding=augment.TRANSLATE_PIXELS),
            v2.RandomErasing(p=augment.ERASE_P, scale=augment.ERASE_SCALE,
                             ratio=augment.ERASE_RATIO),
        ])

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.transform(self.x[i].unsqueeze(0)), self.y[i]


def batched(x: torch.Tensor, batch_size: int, device: torch.device) -> float:
    x = x.to(device)
    g = torch.Generator(device).manual_seed(0)
    start = time.perf_counter()
    for i in range(0, len(x), batch_size):
        out = augment.augment_batch(x[i:i + batch_size].unsqueeze(1).float().div_(255),
                                    "online", g)
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert out.shape[1:] == (1, 28, 28)
    return len(x) / (time.perf_counter() - start)


def per_sample(x: torch.Tensor, y: torch.Tensor, batch_size: int, workers: int) -> float:
    loader = DataLoader(PerSample(x, y), batch_size=batch_size, shuffle=True,
                        num_workers=workers, persistent_workers=False)
    start = time.perf_counter()
    n = sum(len(xb) for xb, _ in loader)
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device != "auto" else
                          "cuda" if torch.cuda.is_available() else "cpu")
    split = load_split()
    x, y = split.x_train, split.y_train
    print(f"{len(x)} images, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"device {device}")
    ours = batched(x, args.batch_size, device)
    print(f"  batched augment_batch (ours)          {ours:>10,.0f} img/s  "
          f"{len(x) / ours:6.2f} s/epoch", flush=True)
    theirs = {}
    for workers in (0, 2):
        theirs[workers] = per_sample(x, y, args.batch_size, workers)
        print(f"  per-sample v2 DataLoader, {workers} workers   {theirs[workers]:>10,.0f} img/s  "
              f"{len(x) / theirs[workers]:6.2f} s/epoch", flush=True)
    g = torch.Generator(device).manual_seed(0)
    start = time.perf_counter()
    x3, _ = augment.expand_offline(x.to(device), y.to(device), g)
    print(f"  offline 3x expansion (once per run)   {time.perf_counter() - start:6.2f} s "
          f"for {len(x3):,} images")
    for workers, speed in theirs.items():
        print(f"ratio ours / per-sample, {workers} workers: {ours / speed:6.1f}x")
    ratio = ours / max(theirs.values())
    print(f"target: ours >= 10x the faster per-sample loader: {ratio:.1f}x, "
          f"{'met' if ratio >= 10 else 'NOT met'}")


if __name__ == "__main__":
    main()
