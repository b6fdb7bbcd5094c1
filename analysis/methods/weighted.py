"""weighted: the weights the user gives (``--weights``), normalised to sum to 1."""

from __future__ import annotations

import numpy as np

from analysis.fusion import normalise
from analysis.methods.registry import register_method


@register_method("weighted", help="--weights", takes_weights=True, pipeline=False)
def given_weights(val_probs, y_val: np.ndarray, given=None) -> np.ndarray:
    """``given``, one per member, normalised; ValueError for none, a wrong count, or weights
    that are not finite, non-negative and not all zero."""
    if given is None:
        raise ValueError("the weighted fusion needs weights, one per member")
    w = normalise(given)
    if len(w) != len(val_probs):
        raise ValueError(f"{len(w)} weights for {len(val_probs)} members")
    return w
