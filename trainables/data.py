"""The Fashion-MNIST data layer every trial uses: find the IDX files, check them, split them.

    python -m trainables.data --summary [--data-dir D] [--train-size N|all] [--seed S] [--download]

Seed protocol (docs/seed.md, "The task"): a stratified, seeded subset of 30,000 of the 60,000
training images, split 9:1 (stratified) into train / val (27,000 / 3,000), plus the official
10,000-image test set. Images stay uint8 (N, 28, 28) tensors in memory (55 MB for the whole set);
normalisation happens later, on the training device. The split is a pure function of (file contents,
train size, seed) and carries a fingerprint of exactly those, which later runs record.

Where the files come from, first match wins: ``--data-dir``, ``$TUNEFUSE_DATA``, Debian's
``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist), the cache
(``$XDG_CACHE_HOME`` or ``~/.cache``, then ``tunefuse/fashion-mnist``). A folder named explicitly
(flag or variable) must hold the files; ``--download`` fetches them there, or into the cache,
from torchvision's Fashion-MNIST mirrors with their MD5 checksums verified.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch

from trainables.classes import CLASSES, NUM_CLASSES
from trainables.cli import ArgParser, at_least, exit_now
from trainables.download import download_files
from trainables.flags import Options, flag, parser_for, run_command
from trainables.idx import DataError, read_idx

__all__ = ["CLASSES", "NUM_CLASSES", "DataError", "DataSplit", "download_files", "load_split",
           "locate", "split_indices"]

FILES = MappingProxyType({
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
})
IMAGE_SHAPE = (28, 28)
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "TUNEFUSE_DATA"
DEFAULT_TRAIN_SIZE = 30_000
DEFAULT_SEED = 0
VAL_FRACTION = 0.1  # the seed's 9:1 split
BALANCE_TOLERANCE_PP = 1.0
HOW_TO_GET = (
    "install them with `apt-get install dataset-fashion-mnist`, point --data-dir (or "
    f"${ENV_VAR}) at a folder holding the four IDX files, or pass --download"
)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tunefuse" / "fashion-mnist"


def find_files(directory: Path) -> tuple[dict[str, Path], list[str]]:
    """The four files in ``directory`` (raw preferred over .gz), and the names it lacks."""
    found, missing = {}, []
    for key, name in FILES.items():
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            missing.append(name)
    return found, missing


@dataclass(frozen=True)
class DataSource:
    directory: Path
    origin: str  # "--data-dir", "$TUNEFUSE_DATA", "system", "cache"
    files: dict[str, Path]


def locate(data_dir: str | Path | None = None, download: bool = False) -> DataSource:
    """Find the four IDX files (see the module docstring for the order)."""
    explicit = None
    if data_dir is not None:
        explicit = (Path(data_dir).expanduser(), "--data-dir")
    elif os.environ.get(ENV_VAR):
        explicit = (Path(os.environ[ENV_VAR]).expanduser(), f"${ENV_VAR}")
    candidates = [explicit] if explicit else [(SYSTEM_DIR, "system"), (cache_dir(), "cache")]
    if explicit and explicit[0].is_file():
        raise DataError(f"{explicit[0]} is a file, not a folder; point {explicit[1]} at the "
                        "folder holding the four IDX files")
    notes = []
    for directory, origin in candidates:
        found, missing = find_files(directory)
        if not missing:
            return DataSource(directory, origin, found)
        notes.append(f"{directory} lacks {', '.join(missing)}" if found or explicit
                     else f"{directory} has none of them")
    target = explicit[0] if explicit else cache_dir()
    if download:
        download_files(target)
        found, _ = find_files(target)
        return DataSource(target, explicit[1] if explicit else "cache", found)
    raise DataError(f"Fashion-MNIST files not found ({'; '.join(notes)}): {HOW_TO_GET}")


def _load_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, "
                        f"tunefuse needs {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]}")
    if len(images) != len(labels):
        raise DataError(f"{labels_path}: holds {len(labels)} labels but {images_path.name} "
                        f"holds {len(images)} images; the two files must come from one set")
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        raise DataError(f"{labels_path}: label {labels[bad[0]]} at index {bad[0]} is outside "
                        f"0..{NUM_CLASSES - 1} ({bad.size} such labels)")
    return images, labels


def _stratified_take(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``n`` items whose class counts are the largest-remainder rounding of
    the classes' shares: every class gets within 1 of its ideal count."""
    classes, counts = np.unique(labels, return_counts=True)
    take, remainder = np.divmod(counts * n, len(labels))  # exact integer arithmetic
    order = np.lexsort((classes, -remainder))  # largest remainder first, ties by class
    take[order[: n - take.sum()]] += 1
    picks = [rng.permutation(np.flatnonzero(labels == c))[:k]
             for c, k in zip(classes, take, strict=True)]
    return np.sort(np.concatenate(picks))


def split_indices(labels: np.ndarray, train_size: int | None,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices into ``labels``: a stratified subset of ``train_size`` (None: all),
    then a stratified 9:1 split of it. Deterministic in (labels, train_size, seed)."""
    total = len(labels)
    n = total if train_size is None else train_size
    if n > total:
        raise DataError(f"train size {n} is larger than the {total} labelled training images; "
                        f"use --train-size {total} (or all) or less")
    if n < 10 * NUM_CLASSES:
        raise DataError(f"train size {n} is too small: use at least {10 * NUM_CLASSES} so that "
                        "every class can appear in the validation split")
    rng = np.random.default_rng(seed)
    subset = _stratified_take(labels, n, rng) if n < total else np.arange(total)
    val = subset[_stratified_take(labels[subset], round(n * VAL_FRACTION), rng)]
    return np.setdiff1d(subset, val, assume_unique=True), val


@dataclass(frozen=True, eq=False)
class DataSplit:
    """Train / val / test tensors (images uint8 (N, 28, 28), labels int64) and their provenance."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    train_index: np.ndarray  # indices into the 60,000 official training images
    val_index: np.ndarray
    fingerprint: str  # sha256 of the files' contents and the split parameters
    files_sha256: str
    source: str
    origin: str
    train_size: int
    seed: int

    def histogram(self, part: str) -> np.ndarray:
        labels = getattr(self, f"y_{part}")
        return np.bincount(labels.numpy(), minlength=NUM_CLASSES)


def _files_digest(arrays: list[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(repr(a.shape).encode())
        digest.update(memoryview(a).cast("B"))
    return digest.hexdigest()


def load_split(data_dir: str | Path | None = None, train_size: int | None = DEFAULT_TRAIN_SIZE,
               seed: int = DEFAULT_SEED, download: bool = False) -> DataSplit:
    """Locate, check and split the data: the one entry point of every trial and CLI."""
    source = locate(data_dir, download)
    f = source.files
    x_all, y_all = _load_pair(f["train_images"], f["train_labels"])
    x_test, y_test = _load_pair(f["test_images"], f["test_labels"])
    train, val = split_indices(y_all, train_size, seed)
    # The fingerprint hashes decoded contents, so gzipped and raw copies of a set agree.
    files_sha = _files_digest([x_all, y_all, x_test, y_test])
    params = f"tunefuse-split-v1 train_size={len(train) + len(val)} seed={seed} val={VAL_FRACTION}"
    fingerprint = hashlib.sha256(f"{files_sha} {params}".encode()).hexdigest()

    def images(a):  # fancy indexing already copied; the test set is a view of the file bytes
        return torch.from_numpy(a if a.flags.writeable else a.copy())

    def labels(a):
        return torch.from_numpy(a.astype(np.int64))

    return DataSplit(
        x_train=images(x_all[train]), y_train=labels(y_all[train]),
        x_val=images(x_all[val]), y_val=labels(y_all[val]),
        x_test=images(x_test), y_test=labels(y_test),
        train_index=train, val_index=val, fingerprint=fingerprint, files_sha256=files_sha,
        source=str(source.directory), origin=source.origin,
        train_size=len(train) + len(val), seed=seed,
    )


def train_size_arg(text: str) -> int | None:
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'all', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


seed_arg = at_least(0, "0 or more")  # numpy's generators take no seed below 0


@dataclass(frozen=True)
class DataOptions(Options):
    """The data flags of every command that loads the split, typed."""

    data_dir: str | None = flag(None, group="data", help=lambda: (
        f"folder holding the four IDX files (default: ${ENV_VAR}, then {SYSTEM_DIR}, then "
        f"{cache_dir()})"))
    download: bool = flag(False, group="data", action="store_true",
                          help="download the files (checksums verified) when they are not found")
    train_size: int | None = flag(DEFAULT_TRAIN_SIZE, group="data", type=train_size_arg,
                                  help="labelled images to use, split 9:1 into train/val, or "
                                       "'all' (default %(default)s, the seed's protocol)")
    seed: int = flag(DEFAULT_SEED, group="data", type=seed_arg,
                     help="seed of the split (default %(default)s)")


def format_summary(split: DataSplit) -> str:
    origin = {"system": "Debian package dataset-fashion-mnist", "cache": "tunefuse cache"}
    total = len(split.train_index) + len(split.val_index)
    lines = [
        f"source       {split.source}  ({origin.get(split.origin, split.origin)})",
        f"fingerprint  {split.fingerprint[:16]}  (files {split.files_sha256[:16]}, "
        f"train size {total}, seed {split.seed})",
        f"split        train {len(split.y_train)}  val {len(split.y_val)}  "
        f"test {len(split.y_test)}",
        "",
        f"{'class':<5} {'name':<12} {'train':>6} {'share':>7} {'val':>6} {'share':>7} "
        f"{'test':>6}",
    ]
    uniform = 100.0 / NUM_CLASSES
    hist = {part: split.histogram(part) for part in ("train", "val", "test")}
    flagged = []
    for c, name in enumerate(CLASSES):
        shares = [100.0 * hist[p][c] / hist[p].sum() for p in ("train", "val")]
        off = [abs(s - uniform) > BALANCE_TOLERANCE_PP for s in shares]
        if any(off):
            flagged.append(f"{c} ({name})")
        lines.append(f"{c:<5} {name:<12} {hist['train'][c]:>6} {shares[0]:>6.2f}% "
                     f"{hist['val'][c]:>6} {shares[1]:>6.2f}% {hist['test'][c]:>6}"
                     + ("   <- off uniform" if any(off) else ""))
    lines.append("")
    if flagged:
        lines.append(f"imbalanced: {', '.join(flagged)} differ from uniform ({uniform:.2f}%) "
                     f"by more than {BALANCE_TOLERANCE_PP:g} percentage point")
    else:
        lines.append(f"balanced: every class of train and val is within "
                     f"{BALANCE_TOLERANCE_PP:g} percentage point of uniform ({uniform:.2f}%)")
    return "\n".join(lines)


@dataclass(frozen=True)
class SummaryOptions(DataOptions):
    """The flags of ``python -m trainables.data``."""

    summary: bool = flag(False, action="store_true", help="print the source, fingerprint, split "
                         "sizes and class histogram (the default action)")


def parser() -> ArgParser:
    return parser_for(SummaryOptions, prog="python -m trainables.data", description="Check "
                      "the Fashion-MNIST files and summarise the split.")


def run(options: SummaryOptions) -> int:
    try:
        split = load_split(options.data_dir, options.train_size, options.seed, options.download)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(split))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(SummaryOptions, parser(), run, argv)


if __name__ == "__main__":
    exit_now(main)
