"""The images people bring, read as (N, 28, 28) uint8 arrays (analysis/predict.py labels them).

Each reader returns a ``Read`` (ids, images, labels or None; analysis/pixels.py): an IDX image
file (raw or gzipped), a .npy array, a Kaggle-style CSV, or a folder of PNGs (any mode and
size: converted to 28x28 grayscale, unreadable files skipped; ``strict`` refuses both, as
before; analysis/pngs.py). Malformed input is an InputError naming the file, the row or image
at fault, and the fix.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from analysis.pixels import H, InputError, Read, W
from analysis.pngs import read_png_folder, read_pngs
from trainables.classes import NUM_CLASSES
from trainables.idx import FIX as IDX_FIX
from trainables.idx import DataError, read_idx

PIXELS = H * W
IDX_NAMES = (".gz", "ubyte", ".idx")
FIX_VALUES = "pixels must be whole numbers in 0..255"


# --- readers: each returns (ids, images (N, 28, 28) uint8, labels (N,) int64 or None) ---------

def read_images(path, strict: bool = False) -> tuple[list, np.ndarray, np.ndarray | None]:
    """Read ``path`` by its kind: a folder of PNGs, .png, .npy, .csv, or an IDX file."""
    read = read_input(path, strict)
    return read.ids, read.images, read.labels


def read_input(path, strict: bool = False) -> Read:
    """Read ``path`` by its kind (as read_images), with what was converted or skipped."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; check the --input path")
    if path.is_dir():
        return read_png_folder(path, strict)
    name = path.name.lower()
    suffix = path.suffix.lower()
    if suffix == ".png":
        return read_pngs([path], strict)
    if suffix == ".npy":
        return Read(*read_npy(path))
    if suffix == ".csv":
        return Read(*read_csv(path))
    if suffix == "" or name.endswith(IDX_NAMES):
        return Read(*read_idx_images(path))
    raise InputError(f"{path}: unknown kind of input {path.suffix!r}; give an IDX file "
                     "(raw or .gz), a .npy array, a .csv of 784 pixel columns, or a folder of "
                     "28x28 grayscale .png files")


def _row_ids(n: int) -> list[int]:
    return list(range(n))


def _check_pixels(path: Path, x: np.ndarray, what: str = "image") -> np.ndarray:
    """Any numeric (N, 28, 28) array -> uint8, or an InputError naming the first bad image."""
    if x.dtype == np.uint8:
        return x
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise InputError(f"{path}: holds {x.dtype} values, not numbers; {FIX_VALUES}")
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(x) | (x < 0) | (x > 255) | (x != np.round(x))
    if bad.any():
        i, r, c = np.argwhere(bad)[0]
        raise InputError(f"{path}: {what} {i} has the value {x[i, r, c]} at row {r}, "
                         f"column {c}; {FIX_VALUES}")
    return x.astype(np.uint8)


def _check_count(path: Path, x: np.ndarray) -> None:
    if len(x) == 0:
        raise InputError(f"{path}: holds no images; give at least one 28x28 image")


def read_idx_images(path: Path):
    try:
        x = read_idx(path)
    except DataError as e:  # drop the "re-install the data set" advice: this is user input
        message = str(e).replace(f"; {IDX_FIX}", "")
        raise InputError(f"{message}; give an unsigned-byte IDX image file (N x 28 x 28), "
                         "like t10k-images-idx3-ubyte.gz") from None
    if x.ndim != 3 or x.shape[1:] != (H, W):
        shape = "x".join(map(str, x.shape))
        hint = " (a labels file?)" if x.ndim == 1 else ""
        raise InputError(f"{path}: holds a {shape} array{hint}, not 28x28 images; give an IDX "
                         "image file of shape N x 28 x 28")
    _check_count(path, x)
    return _row_ids(len(x)), x, None


def read_npy(path: Path):
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise InputError(f"{path}: not a readable .npy file ({reason}); save the images with "
                         "numpy.save(path, images) as an (N, 28, 28) uint8 array") from None
    if not isinstance(x, np.ndarray):
        raise InputError(f"{path}: holds several arrays (.npz?); give one (N, 28, 28) array")
    if x.shape == (H, W):
        x = x[None]
    if x.ndim != 3 or x.shape[1:] != (H, W):
        raise InputError(f"{path}: holds an array of shape {x.shape}, not 28x28 images; give "
                         "an (N, 28, 28) array")
    _check_count(path, x)
    return _row_ids(len(x)), _check_pixels(path, x), None


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _csv_layout(path: Path, first: list[str]) -> tuple[bool, int | None, list[int], int]:
    """(has header, label column or None, pixel columns in image order, columns per row)."""
    numeric = sum(_is_number(c) for c in first)
    fix = ("expected 784 pixel columns (pixel1..pixel784, or no header) and an optional "
           "label column")
    if numeric < len(first) / 2:  # a header
        names = [c.strip().lower() for c in first]
        label = names.index("label") if "label" in names else None
        pixels = [i for i in range(len(names)) if i != label]
        if len(pixels) != PIXELS:
            raise InputError(f"{path}: line 1 (the header) names {len(pixels)} pixel columns; "
                             f"{fix}")
        numbers = [re.fullmatch(r"pixel(\d+)", names[i]) for i in pixels]
        if all(numbers) and sorted(int(m[1]) for m in numbers) == list(range(1, PIXELS + 1)):
            pixels = [i for _, i in sorted(zip((int(m[1]) for m in numbers), pixels,
                                               strict=True))]
        return True, label, pixels, len(first)
    if len(first) == PIXELS:
        return False, None, list(range(PIXELS)), PIXELS
    if len(first) == PIXELS + 1:  # Kaggle's order: the label, then the pixels
        return False, 0, list(range(1, PIXELS + 1)), PIXELS + 1
    raise InputError(f"{path}: line 1 has {len(first)} columns; {fix}")


def read_csv(path: Path):
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's BOM
            reader = csv.reader(f)
            rows, lines = [], []
            for row in reader:
                if row:  # blank lines carry nothing
                    rows.append(row)
                    lines.append(reader.line_num)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise InputError(f"{path}: cannot be read as CSV text ({reason}); give a .csv of "
                         "784 pixel columns") from None
    if not rows:
        raise InputError(f"{path}: is empty; give a .csv with one image of 784 pixels per row")
    header, label, pixels, ncols = _csv_layout(path, rows[0])
    if header:
        rows, lines = rows[1:], lines[1:]
    if not rows:
        raise InputError(f"{path}: holds only a header, no images; add one row per image")
    for row, line in zip(rows, lines, strict=True):
        if len(row) != ncols:
            raise InputError(f"{path}: line {line} has {len(row)} columns, the file's first "
                             f"{'row' if not header else 'line (header)'} has {ncols}; "
                             "every row needs the same columns")
    cells = np.array(rows)
    try:
        values = cells.astype(np.float64)
    except ValueError:  # find the cell at fault; cells numpy refuses but float() takes pass
        for row, line in zip(rows, lines, strict=True):
            for c, cell in enumerate(row):
                if not _is_number(cell):
                    raise InputError(f"{path}: line {line}, column {c + 1}: {cell!r} is not a "
                                     f"number; {FIX_VALUES}") from None
        values = np.array([[float(cell) for cell in row] for row in rows])
    x = values[:, pixels]
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(x) | (x < 0) | (x > 255) | (x != np.round(x))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise InputError(f"{path}: line {lines[r]}, column {pixels[c] + 1}: "
                         f"{rows[r][pixels[c]]!r} is not a pixel value; {FIX_VALUES}")
    labels = None
    if label is not None:
        y = values[:, label]
        with np.errstate(invalid="ignore"):
            bad_y = ~np.isfinite(y) | (y < 0) | (y >= NUM_CLASSES) | (y != np.round(y))
        if bad_y.any():
            r = int(np.flatnonzero(bad_y)[0])
            raise InputError(f"{path}: line {lines[r]}: label {rows[r][label]!r} is not a "
                             f"class; labels must be whole numbers in 0..{NUM_CLASSES - 1}")
        labels = y.astype(np.int64)
    images = x.astype(np.uint8).reshape(-1, H, W)
    return _row_ids(len(images)), images, labels
