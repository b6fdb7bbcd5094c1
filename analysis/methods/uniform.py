"""uniform: the seed's average, every member weighing the same (docs/seed.md, "Fusion")."""

from __future__ import annotations

import numpy as np

from analysis.methods.registry import register_method


@register_method("uniform", help="the seed's average")
def uniform_weights(val_probs, y_val: np.ndarray, given=None) -> np.ndarray:
    """1/K for each of the K members."""
    return np.full(len(val_probs), 1 / len(val_probs))
