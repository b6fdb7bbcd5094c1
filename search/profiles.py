"""Named presets for every search (nanoGPT style: profiles, not flag soup).

``seed`` is the seed's own grid (docs/seed.md, "Tuning"); ``quick`` is a reduced grid with narrow
models that finishes in minutes on a 2-core CPU and still gives a real classifier;
``standard`` is the seed's protocol with ASHA grids, trunks and long schedules on narrow models,
sized for 2 hours on a 2-core CPU; ``smoke`` is a tiny subset for tests (about a minute).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

from trainables.models import card


@dataclass(frozen=True)
class Profile:
    name: str
    train_size: int | None
    batch_sizes: tuple[int, ...]
    epochs: tuple[int, ...]
    warmup_epochs: int
    grace_period: int  # first ASHA rung, in epochs from the start of a run
    reduction_factor: float
    # ASHA stops a trial only when it is behind the cutoff by more than this (val_acc units)
    asha_margin: float = 0.0
    # the class-weight search (search/weights.py) when no grid result says otherwise
    weights_trials: int = 12
    weights_batch_size: int = 64
    weights_epochs: int = 10
    # the pipeline's class-weight stage takes its grid winner's settings, its epochs at most
    # this many (None: the winner's)
    weights_epochs_cap: int | None = None
    # model -> (batch sizes, epochs) where a model's grid differs from the profile's
    grids: dict = field(default_factory=dict)
    augment: dict = field(default_factory=dict)  # model -> policy, where not the seed's
    # the pipeline's report (tunefuse/stages.py)
    fusion_top_k: int = 4
    fusion_method: str = "uniform"
    fusion_per_model_cap: int | None = None
    fusion_calibrate: bool = False
    fusion_tta: str = "none"  # the members' test-time augmentation (analysis/inference.py)

    def grid(self, model: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(batch sizes, epochs) of ``model``'s grid."""
        return self.grids.get(model, (self.batch_sizes, self.epochs))

    def width(self, model: str) -> int | None:
        """``model``'s width in this profile (None: it takes none): its ModelCard says."""
        return card(model).width_in(self.name)


PROFILES = MappingProxyType({
    # smoke: flips, as quick and standard (the seed's offline expansion triples the CNN's
    # epochs, its online augmentation costs a share of each; tests/test_augment.py and
    # tests/test_engine.py check both)
    "smoke": Profile("smoke", 1_000, (64, 128), (3, 4), warmup_epochs=1, grace_period=2,
                     reduction_factor=2,
                     weights_trials=4, weights_batch_size=64, weights_epochs=3,
                     augment={"cnn": "flip", "resnet18": "flip", "inception": "flip"}),
    # quick: the seed's data protocol (27,000 / 3,000) with short schedules and narrow models, sized
    # so that the whole pipeline (three grids, the class-weight search, the report) fits 30 minutes
    # on 2 cores, and so that its fusion beats its best member: three families of comparable
    # strength (about 90-92% validation), each grid two trials side by side on the two cores. The
    # CNN, the most accurate per second here, gets the longest schedule. Short schedules learn
    # faster with flips only. No ASHA rung falls inside a grid: with two trials side by side,
    # stopping one saves no wall time and loses a member. The class-weight search compares its
    # weight vectors on 4-epoch runs of the ResNet18 winner's batch size: at the winner's 10 epochs
    # it took 13 of the run's 32 minutes, and none of its trials added to the fusion. The fusion
    # weighs every candidate by the fused validation NLL (nll), members scored with their mirror
    # images (flip TTA, seconds per member): greedy's accuracy-first choice followed the noise of
    # 3,000 validation images (docs/profiles.md). ResNet18's width is a multiple of 16, which the
    # bf16 kernels vectorise: at width 16 it trains 1.5x faster than at 12 in fp32
    # (bench/train_step.py).
    "quick": Profile("quick", 30_000, (64, 128), (10,), warmup_epochs=1, grace_period=20,
                     reduction_factor=2,
                     weights_trials=4, weights_batch_size=128, weights_epochs=4,
                     weights_epochs_cap=4, grids={"cnn": ((64, 128), (16,))},
                     augment={"cnn": "flip", "resnet18": "flip", "inception": "flip"},
                     fusion_top_k=4, fusion_method="nll", fusion_calibrate=True,
                     fusion_tta="flip"),
    # standard: the seed's protocol on one 2-core bf16 machine in about 100 minutes (the 2-hour
    # budget with room; in fp32 on an AVX2-only CPU its grids took 4 hours eager, and compiling
    # ResNet18 and Inception, --compile auto, saves about a fifth of that): each family a 2 x 2
    # grid under wsd, one trunk per batch size, the short trial costing only its decay, so a
    # stage lasts its longest trial plus that decay (per epoch, two trials side by side at
    # 27,000 images: CNN 22 s, ResNet18 width 16 38 s, Inception width 8 35 s at batch 64, a
    # little less at 128). ASHA's rungs (15, 30) are in the constant-rate phase, where they
    # compare the two trunks: the later one to arrive stops there if it is behind by more than
    # a margin of 1 point of validation accuracy (without it, ASHA stopped trunks 0.1 and 0.46
    # points behind, and the second held Inception's best trial, 0.95 points above the one kept
    # on test; docs/profiles.md). Flips only: with the seed's online augmentation the CNN
    # needed 40 epochs for the 92.0% validation flips give in 16, and ResNet18 reached 88.97%
    # in 25 epochs, what flips give in 10 (docs/profiles.md). ResNet18 alone gets flips and
    # shifts of up to 2 pixels (``shift``): with flips only its 50-epoch trial memorised the
    # training set (training loss 0.008, validation loss up from 0.28 to 0.38) and stopped at
    # 92.21% on test; with shifts, 93.20%. The class-weight search compares 4 weight vectors
    # on 8-epoch runs of the ResNet18 winner's batch size.
    "standard": Profile("standard", 30_000, (64, 128), (25, 50), warmup_epochs=2,
                        grace_period=15, reduction_factor=2, asha_margin=0.01,
                        weights_trials=4, weights_batch_size=64, weights_epochs=8,
                        weights_epochs_cap=8, grids={"cnn": ((64, 128), (20, 40))},
                        augment={"cnn": "flip", "resnet18": "shift", "inception": "flip"},
                        fusion_top_k=4, fusion_method="nll", fusion_calibrate=True,
                        fusion_tta="flip"),
    "seed": Profile("seed", 30_000, (32, 64, 128, 256, 512),
                    (20, 30, 40, 50, 60, 70, 80, 90, 100, 200), warmup_epochs=5,
                    grace_period=10, reduction_factor=3,
                    weights_trials=40, weights_batch_size=64, weights_epochs=50),
})
