"""What every reader of the images people bring shares (analysis/images.py, analysis/pngs.py):
the 28x28 shape, what a reader returns (``Read``) and the error it raises (``InputError``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

H, W = 28, 28


class InputError(Exception):
    """Input that cannot be read as images: one line naming the file, the fault and the fix."""


@dataclass
class Read:
    """What a reader found: ids, images (N, 28, 28) uint8, labels (N,) int64 or None; for PNGs
    also why each converted image was converted (e.g. "RGB, of 56x56") and one line for each
    file skipped as unreadable."""
    ids: list
    images: np.ndarray
    labels: np.ndarray | None
    converted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
