"""A run's configuration: ``TrainConfig``, the checks it makes when built, and the facts about
its fields that other modules ask (which fields only the SGD phase or only wsd's decay reads,
the seed's class weights).

The recipe these fields drive is trainables/engine.py's; the schedules trainables/schedule.py's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from trainables import augment
from trainables.data import NUM_CLASSES
from trainables.fastpath import COMPILES, MEMORY_FORMATS, PRECISIONS, compiler
from trainables.models import list_models
from trainables.schedule import DECAY_FRACTION, DECAY_SHAPE, DECAY_SHAPES, SCHEDULES

# docs/seed.md, "Tuning": the strong ResNet's weights for labels 0..9 (hard pairs 0/6 and 2/4).
SEED_CLASS_WEIGHTS = (2.0, 0.8, 1.5, 0.8, 1.5, 1.2, 2.0, 1.2, 1.0, 1.2)
HARD_CLASSES = (0, 2, 4, 6)


class ConfigError(ValueError):
    """A configuration that cannot run; the message is one line for the user."""


def check_batch(batch_size: int, train_images: int, fix: str, what: str = "batch size"
                ) -> None:
    """A batch must fit the training set: one larger is one batch of another size than the
    trial asked for; ``fix`` says what to change, ``what`` names the batch size."""
    if batch_size > train_images:
        raise ConfigError(f"{what} {batch_size} is larger than the {train_images} training "
                          f"images; {fix}")


# What the warm-up does not depend on: only the SGD phase reads these (shared warm-ups,
# trainables/trainable.py; identical members, analysis/select.py).
SGD_ONLY = ("epochs", "lr", "momentum", "weight_decay", "schedule", "decay_fraction",
            "decay_shape")
# What a wsd run's stable phase does not depend on: only its decay reads these (shared trunks).
DECAY_ONLY = ("epochs", "decay_fraction", "decay_shape")


@dataclass(frozen=True)
class TrainConfig:
    model: str = "cnn"
    model_kwargs: dict = field(default_factory=dict)  # e.g. {"width": 16}
    batch_size: int = 64
    epochs: int = 10  # warm-up epochs included
    warmup_epochs: int = 5
    warmup_lr: float = 1e-3
    lr: float = 0.01  # SGD's starting rate after the warm-up
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    decay_fraction: float = DECAY_FRACTION  # wsd: the share of the SGD epochs that decay
    decay_shape: str = DECAY_SHAPE  # wsd: linear | cosine, to zero at the last batch
    dropout: float = 0.25
    class_weights: tuple[float, ...] | None = None
    augment: str = "auto"  # "auto": the seed's choice for the model (augment.default_policy)
    seed: int = 0
    device: str = "auto"
    num_threads: int | None = None
    eval_batch_size: int = 1024
    # the fast path (FastPath): "auto" picks, per device, what bench/train_step.py measured
    # fastest at equal accuracy; the loss, softmax and metrics are fp32 whatever these say
    precision: str = "auto"  # fp32 | bf16 (autocast) | auto
    memory_format: str = "auto"  # contiguous | channels_last | auto
    compile: str = "auto"  # on | off | auto: torch.compile the training steps where it pays

    def __post_init__(self):
        def fail(msg):
            raise ConfigError(msg)

        if self.model not in list_models():
            fail(f"unknown model {self.model!r}; choose one of {', '.join(list_models())}")
        if self.augment == "auto":
            object.__setattr__(self, "augment", augment.default_policy(self.model))
        if self.class_weights is not None:
            object.__setattr__(self, "class_weights", tuple(float(w) for w in self.class_weights))
        object.__setattr__(self, "model_kwargs", dict(self.model_kwargs))
        if self.batch_size < 1:
            fail(f"batch size must be at least 1, got {self.batch_size}")
        if self.epochs < 1:
            fail(f"epochs must be at least 1, got {self.epochs}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            fail(f"epochs ({self.epochs}) must be at least the warm-up epochs "
                 f"({self.warmup_epochs}); raise the epochs or lower --warmup-epochs")
        for name in ("warmup_lr", "lr"):
            if not getattr(self, name) > 0:
                fail(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.momentum < 1 or not self.weight_decay >= 0:
            fail("momentum must be in [0, 1) and weight decay at least 0")
        if not 0 <= self.dropout < 1:
            fail(f"dropout must be in [0, 1), got {self.dropout}")
        if self.schedule not in SCHEDULES:
            fail(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if not 0 < self.decay_fraction <= 1:
            fail(f"decay fraction must be in (0, 1], got {self.decay_fraction}")
        if self.decay_shape not in DECAY_SHAPES:
            fail(f"unknown decay shape {self.decay_shape!r}; choose one of "
                 f"{', '.join(DECAY_SHAPES)}")
        if self.augment not in augment.POLICIES:
            fail(f"unknown augmentation {self.augment!r}; "
                 f"choose one of {', '.join(augment.POLICIES)}")
        w = self.class_weights
        if w is not None:
            if len(w) != NUM_CLASSES:
                fail(f"class weights need {NUM_CLASSES} values, one per class, got {len(w)}")
            if not all(math.isfinite(x) and x >= 0 for x in w) or sum(w) <= 0:
                fail(f"class weights must be finite, non-negative and not all zero, got {w}")
        if self.precision not in PRECISIONS:
            fail(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.memory_format not in MEMORY_FORMATS:
            fail(f"unknown memory format {self.memory_format!r}; choose one of "
                 f"{', '.join(MEMORY_FORMATS)}")
        if self.compile not in COMPILES:
            fail(f"unknown compile setting {self.compile!r}; choose one of {', '.join(COMPILES)}")
        if self.device != "auto" and not self.device.startswith(("cpu", "cuda")):
            fail(f"unknown device {self.device!r}; use auto, cpu, cuda or cuda:N")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Build from a (possibly flat, possibly larger) dict such as Tune's trial config.

        Class weights may come as one value per key, ``w0`` .. ``w9`` (a searcher's space).
        """
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        split = [f"w{c}" for c in range(NUM_CLASSES)]
        if any(k in d for k in split):
            missing = [k for k in split if k not in d]
            if missing or kw.get("class_weights") is not None:
                raise ConfigError("give class weights either as class_weights or as all of "
                                  f"w0..w{NUM_CLASSES - 1}" + (f"; missing {missing}"
                                                               if missing else ""))
            kw["class_weights"] = tuple(float(d[k]) for k in split)
        return cls(**kw)

    def model_args(self) -> dict:
        return {**self.model_kwargs, "dropout": self.dropout}


def check_compiler() -> None:
    """torch.compile's CPU code needs a C++ compiler: a ConfigError naming the fix if none."""
    if compiler() is None:
        raise ConfigError("--compile on needs a C++ compiler for torch.compile (g++ or "
                          "clang++, or $CXX); install one (apt-get install g++) or pass "
                          "--compile off")
