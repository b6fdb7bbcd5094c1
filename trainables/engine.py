"""The training engine: the seed's recipe as plain functions over in-memory uint8 tensors.

    python -m trainables.train --model cnn --epochs 10      # one run; see trainables/train.py

Recipe (docs/seed.md, "Training"): ``warmup_epochs`` epochs of Adam at ``warmup_lr`` (5 at 1e-3),
then SGD with momentum 0.9 from those weights, the rate cut by a schedule sized to the epochs left.
``epochs`` counts both phases. The loss is cross-entropy, weighted per class when ``class_weights``
is given (docs/seed.md, "Tuning": gradient weights for the hard classes).

The schedules, wsd's included, are in trainables/schedule.py.

Every epoch draws its shuffling, augmentation and dropout randomness from (seed, epoch) alone, so
a run restored from a checkpoint at epoch k continues exactly as the uninterrupted run would, and
the warm-up's result does not depend on how many epochs follow it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F

from trainables import augment
from trainables.data import NUM_CLASSES, DataSplit
from trainables.fastpath import (
    COMPILES,
    FP32,
    MEMORY_FORMATS,
    PRECISIONS,
    AugmentClock,
    FastPath,
    compiler,
    fast_path,
)
from trainables.models import get_model, list_models
from trainables.schedule import (
    DECAY_FRACTION,
    DECAY_SHAPE,
    DECAY_SHAPES,
    SCHEDULES,
    branch_epoch,
    lr_at,
)

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


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite: the trial must fail, not go on."""


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name} requested but CUDA is not available; use --device cpu")
    return torch.device(name)


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 17) % 2**63


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, phase: str,
                   fused: bool | None = None) -> torch.optim.Optimizer:
    """Adam for the warm-up, SGD after it. ``fused``: one kernel for the whole update instead
    of torch's default (foreach, a few launches per parameter group); bench/gpu_check.sh
    measures it on a GPU, where small models are launch-bound. None: torch's default."""
    if phase == "warmup":
        return torch.optim.Adam(model.parameters(), lr=cfg.warmup_lr, fused=fused)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, fused=fused)


def _inputs(xb: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 (B, 28, 28) -> float (B, 1, 28, 28) in [0, 1]; normalisation comes after augment."""
    x = xb.unsqueeze(1).float().div_(255)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_one_epoch(model, optimizer, x, y, *, batch_size: int, mean: float, std: float,
                    policy: str, class_weights: torch.Tensor | None,
                    generator: torch.Generator, on_batch=None, fast: FastPath = FP32,
                    lr_of=None, compiled=None) -> dict:
    """One pass over (x, y) in a seeded random order; returns loss, images/s, augment share.
    Nothing in the batch loop waits for the device: one synchronisation per epoch.
    ``lr_of(fraction)``, when given, sets the rate of each batch (wsd's decay). ``compiled``,
    when given, is ``model`` under torch.compile: it runs every full batch; the last, shorter
    one runs eager (the same weights), rather than compiling a second graph for its shape."""
    device = x.device
    model.train()
    order = torch.randperm(len(x), generator=generator, device=device)
    total = torch.zeros((), device=device)
    clock = AugmentClock(device)
    start = time.perf_counter()
    for i in range(0, len(x), batch_size):
        idx = order[i:i + batch_size]
        if lr_of is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_of(i / len(x))
        began = clock.start()
        xb = augment.augment_batch(_inputs(x[idx], fast.channels_last), policy, generator)
        xb = (xb - mean) / std
        clock.stop(began)
        net = compiled if compiled is not None and len(idx) == batch_size else model
        with fast.autocast(device):
            logits = net(xb)
        loss = F.cross_entropy(logits.float(), y[idx], weight=class_weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(idx)
        if on_batch is not None:
            on_batch(len(idx))
    mean_loss = (total / len(x)).item()  # the epoch's one synchronisation
    seconds = time.perf_counter() - start
    aug_s = clock.total()
    if not math.isfinite(mean_loss):
        raise NonFiniteLoss(f"training loss became {mean_loss}; lower the learning rate")
    return {"train_loss": mean_loss, "images_per_s": len(x) / seconds,
            "train_seconds": seconds, "augment_share": aug_s / seconds}


@torch.no_grad()
def evaluate(model, x, y, *, batch_size: int, mean: float, std: float,
             return_probs: bool = False, fast: FastPath = FP32) -> dict:
    """Unweighted cross-entropy, accuracy, per-class accuracy and (optionally) probabilities,
    the model run on ``fast``'s path (as it trained), the loss and softmax in fp32."""
    device = x.device
    model.eval()
    logits = []
    for i in range(0, len(x), batch_size):
        xb = (_inputs(x[i:i + batch_size], fast.channels_last) - mean) / std
        with fast.autocast(device):
            logits.append(model(xb).float())
    logits = torch.cat(logits)
    pred = logits.argmax(1)
    correct = torch.bincount(y[pred == y], minlength=NUM_CLASSES).double()
    per_class = (correct / torch.bincount(y, minlength=NUM_CLASSES).clamp(min=1)).tolist()
    out = {"loss": F.cross_entropy(logits, y).item(), "acc": (pred == y).double().mean().item(),
           "per_class_acc": per_class,
           "hard_acc": sum(per_class[c] for c in HARD_CLASSES) / len(HARD_CLASSES)}
    if return_probs:
        out["probs"] = logits.softmax(1).cpu()
    return out


@dataclass
class TrainState:
    """Everything one run holds between epochs; the Trainable keeps one of these."""

    cfg: TrainConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    phase: str  # "warmup" (Adam) or "sgd"
    device: torch.device
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    mean: float
    std: float
    class_weights: torch.Tensor | None
    fingerprint: str
    fast: FastPath = FP32  # the resolved precision, memory format and compilation
    epoch: int = 0  # epochs completed
    history: list = field(default_factory=list)
    compiled: torch.nn.Module | None = None  # ``model`` under torch.compile, when fast says so


def build(cfg: TrainConfig, split: DataSplit) -> TrainState:
    """Model, optimiser and on-device data for a fresh run of ``cfg``."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    # Normalisation statistics of this run's training images, before any expansion.
    pixels = split.x_train.float().div_(255)
    mean, std = pixels.mean().item(), pixels.std().item()
    x, y = split.x_train.to(device), split.y_train.to(device)
    if cfg.augment == "offline":  # docs/seed.md, "Tuning": the CNN's training set tripled, once
        g = torch.Generator(device).manual_seed(epoch_seed(cfg.seed, -1))
        x, y = augment.expand_offline(x, y, g)
    fast = fast_path(cfg.precision, cfg.memory_format, device, cfg.compile, cfg.model, len(x))
    if fast.compiled:
        check_compiler()
    torch.manual_seed(cfg.seed)
    model = fast.prepare(get_model(cfg.model, **cfg.model_args()).to(device))
    weights = None
    if cfg.class_weights is not None:
        weights = torch.tensor(cfg.class_weights, dtype=torch.float32, device=device)
    phase = "warmup" if cfg.warmup_epochs > 0 else "sgd"
    return TrainState(cfg, model, make_optimizer(model, cfg, phase), phase, device, x, y,
                      split.x_val.to(device), split.y_val.to(device), mean, std, weights,
                      split.fingerprint, fast,
                      compiled=torch.compile(model) if fast.compiled else None)


def run_epoch(state: TrainState, on_batch=None) -> dict:
    """Train one epoch (switching Adam -> SGD when the warm-up is over), then validate."""
    cfg = state.cfg
    if state.epoch >= cfg.warmup_epochs and state.phase == "warmup":
        state.phase = "sgd"  # docs/seed.md: formal training starts from the warm-up weights
        state.optimizer = make_optimizer(state.model, cfg, "sgd")
    lr = lr_at(cfg, state.epoch)
    decaying = cfg.schedule == "wsd" and state.epoch >= branch_epoch(cfg)
    lr_of = (lambda f, e=state.epoch: lr_at(cfg, e, f)) if decaying else None
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    seed = epoch_seed(cfg.seed, state.epoch)
    torch.manual_seed(seed)  # dropout
    generator = torch.Generator(state.device).manual_seed(seed)
    train = train_one_epoch(state.model, state.optimizer, state.x_train, state.y_train,
                            batch_size=cfg.batch_size, mean=state.mean, std=state.std,
                            policy=cfg.augment, class_weights=state.class_weights,
                            generator=generator, on_batch=on_batch, fast=state.fast,
                            lr_of=lr_of, compiled=state.compiled)
    val = evaluate(state.model, state.x_val, state.y_val, batch_size=cfg.eval_batch_size,
                   mean=state.mean, std=state.std, fast=state.fast)
    state.epoch += 1
    metrics = {"epoch": state.epoch, "phase": state.phase, "lr": lr,
               "fast_path": f"{state.device.type}, {state.fast}", **train,
               "val_loss": val["loss"], "val_acc": val["acc"], "hard_acc": val["hard_acc"],
               **{f"val_acc_{c}": a for c, a in enumerate(val["per_class_acc"])}}
    if state.class_weights is not None:  # read back from the tensor the loss was given
        metrics.update({f"loss_w{c}": w for c, w in enumerate(state.class_weights.tolist())})
    state.history.append(metrics)
    return metrics


def fit(cfg: TrainConfig, split: DataSplit, on_epoch=None) -> TrainState:
    """The whole recipe: ``cfg.epochs`` epochs; ``on_epoch(state, metrics)`` after each."""
    state = build(cfg, split)
    while state.epoch < cfg.epochs:
        metrics = run_epoch(state)
        if on_epoch is not None:
            on_epoch(state, metrics)
    return state
