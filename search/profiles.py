"""Named presets for every search (nanoGPT style: profiles, not flag soup).

``seed`` is the seed's own grid (SEED.md, "Tuning"); ``quick`` is a reduced grid with narrow
models that finishes in minutes on a 2-core CPU and still gives a real classifier; ``smoke``
is a tiny subset for tests (about a minute).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Profile:
    name: str
    train_size: int | None
    batch_sizes: tuple[int, ...]
    epochs: tuple[int, ...]
    warmup_epochs: int
    grace_period: int  # first ASHA rung, in epochs from the start of a run
    reduction_factor: float
    widths: dict = field(default_factory=dict)  # model -> width (models that take one)
    # the class-weight search (search/weights.py) when no grid result says otherwise
    weights_trials: int = 12
    weights_batch_size: int = 64
    weights_epochs: int = 10


PROFILES = {
    "smoke": Profile("smoke", 1_000, (64, 128), (3, 4), warmup_epochs=1, grace_period=2,
                     reduction_factor=2, widths={"resnet18": 4, "inception": 4},
                     weights_trials=4, weights_batch_size=64, weights_epochs=3),
    "quick": Profile("quick", 6_000, (64, 128), (8, 12), warmup_epochs=5, grace_period=6,
                     reduction_factor=2, widths={"resnet18": 16, "inception": 16},
                     weights_trials=10, weights_batch_size=128, weights_epochs=8),
    "seed": Profile("seed", 30_000, (32, 64, 128, 256, 512),
                    (20, 30, 40, 50, 60, 70, 80, 90, 100, 200), warmup_epochs=5,
                    grace_period=10, reduction_factor=3,
                    widths={"resnet18": 64, "inception": 64},
                    weights_trials=40, weights_batch_size=64, weights_epochs=50),
}
