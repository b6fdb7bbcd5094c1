"""nll: the mixture weights over the whole pool that minimise the fused validation NLL.

The log-loss of sum_k w_k p_k, found by EM: the fused log-likelihood is concave in the
weights, so EM's monotone steps reach its maximum; members left with less than MIN_WEIGHT are
dropped and the rest refitted. A smooth, proper objective: accuracy on a few thousand
validation images moves in steps of one image, which greedy's accuracy-first choice follows
into noise (docs/profiles.md, "Fusion").
"""

from __future__ import annotations

import numpy as np

from analysis.fusion import EPS
from analysis.methods.registry import register_method

MIN_WEIGHT = 0.01  # lighter members change almost no prediction and still cost inference


def nll_weights(val_probs, y_val: np.ndarray, tol: float = 1e-10, max_iter: int = 5000,
                min_weight: float = MIN_WEIGHT) -> np.ndarray:
    """The convex weights minimising the validation NLL of the fused probabilities (EM for
    the weights of a mixture of fixed members), fitted on validation only. Members whose
    weight ends below ``min_weight`` are dropped and the others refitted, so every kept member
    weighs at least that (unless one alone is left)."""
    stack = np.asarray(val_probs, dtype=np.float64)
    if stack.ndim != 3 or not len(stack):
        raise ValueError("nll_weights needs at least one member's (N, C) probabilities")
    # each member's probability of the true label, floored as fusion.log_probs floors
    right = np.maximum(stack[:, np.arange(len(y_val)), y_val], EPS)  # (K, N)
    keep = np.arange(len(stack))
    while True:
        w = _em_weights(right[keep], tol, max_iter)
        light = w < min_weight
        if not light.any() or light.all():
            break
        keep = keep[~light]
    out = np.zeros(len(stack))
    out[keep] = w
    return out / out.sum()


def _em_weights(right: np.ndarray, tol: float, max_iter: int) -> np.ndarray:
    """EM for mixture weights over fixed members: ``right`` (K, N) holds each member's
    probability of each example's label. Each step is w_k <- mean_n(w_k r_kn / sum_j w_j r_jn);
    the log-likelihood never falls, and it stops once a step gains less than ``tol``."""
    k = len(right)
    w = np.full(k, 1 / k)
    mixed = w @ right
    last = np.log(mixed).mean()
    for _ in range(max_iter):
        w = w * (right / mixed).mean(axis=1)
        w /= w.sum()
        mixed = w @ right
        ll = np.log(mixed).mean()
        if ll - last < tol:
            break
        last = ll
    return w


@register_method("nll", help="the weights over every candidate that minimise the fused "
                             "validation log-loss",
                 words="the weights that minimise the fused validation log-loss", pooled=True)
def fit(val_probs, y_val: np.ndarray, given=None) -> np.ndarray:
    return nll_weights(val_probs, y_val)
