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
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from trainables import augment
from trainables.config import HARD_CLASSES, ConfigError, TrainConfig, check_compiler
from trainables.data import NUM_CLASSES, DataSplit
from trainables.fastpath import FP32, AugmentClock, FastPath, fast_path
from trainables.models import get_model
from trainables.schedule import branch_epoch, lr_at


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite: the trial must fail, not go on."""


# what an epoch's metrics time (seconds, rates, shares): all that differs between two runs of
# one config on the CPU
TIMINGS = ("images_per_s", "train_seconds", "augment_share", "val_seconds")


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


def train_one_epoch(state: TrainState, generator: torch.Generator, *,
                    images: int | None = None, on_batch=None, lr_of=None) -> dict:
    """One pass over ``state``'s training images (the first ``images`` of them, or all) in a
    seeded random order, in batches of its config's size and augmented as it says; returns
    loss, images/s, augment share. Nothing in the batch loop waits for the device: one
    synchronisation per epoch. ``lr_of(fraction)``, when given, sets the rate of each batch
    (wsd's decay). A compiled model (``state.compiled``) runs every full batch; the last,
    shorter one runs eager (the same weights), rather than compiling a second graph for its
    shape."""
    x, y = state.x_train[:images], state.y_train[:images]
    model, optimizer, fast = state.model, state.optimizer, state.fast
    batch_size, policy, compiled = state.cfg.batch_size, state.cfg.augment, state.compiled
    mean, std, class_weights = state.mean, state.std, state.class_weights
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
    train = train_one_epoch(state, generator, on_batch=on_batch, lr_of=lr_of)
    began = time.perf_counter()
    val = evaluate(state.model, state.x_val, state.y_val, batch_size=cfg.eval_batch_size,
                   mean=state.mean, std=state.std, fast=state.fast)
    val_seconds = time.perf_counter() - began  # (evaluate's .item() waits for the device)
    state.epoch += 1
    metrics = {"epoch": state.epoch, "phase": state.phase, "lr": lr,
               "fast_path": f"{state.device.type}, {state.fast}", **train,
               "val_seconds": val_seconds,
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
