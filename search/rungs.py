"""Where ASHA compares trials, as a pure function: the analysis draws the rungs of a finished
search from its parameters without Ray (search/asha.py runs them)."""

from __future__ import annotations

import numpy as np


def rung_epochs(length: int, grace_period: int, reduction_factor: float) -> list[int]:
    """The epochs at which ``length``-epoch trials are compared: ``grace_period *
    reduction_factor**k`` below ``length``. The same arithmetic as the one bracket of Ray's
    AsyncHyperBandScheduler with max_t = length (tests/test_layers.py checks they agree)."""
    min_t = min(grace_period, length)
    count = int(np.log(length / min_t) / np.log(reduction_factor) + 1)
    return sorted(int(m) for m in (min_t * reduction_factor ** k for k in range(count))
                  if m < length)
