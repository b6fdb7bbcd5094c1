"""greedy: Caruana et al. (2004) ensemble selection with replacement over the whole pool.

Start from the best single member, repeatedly add the member (possibly again) that most
improves validation (accuracy, then NLL), keep the best prefix; the weights are how often each
member was picked. Never below the best member on validation accuracy.
"""

from __future__ import annotations

import numpy as np

from analysis.fusion import accuracy, nll
from analysis.methods.registry import register_method


def greedy_weights(val_probs, y_val: np.ndarray, rounds: int = 50) -> np.ndarray:
    """Caruana ensemble selection with replacement, fitted on validation only."""
    stack = np.asarray(val_probs, dtype=np.float64)
    k = len(stack)

    def score(p):  # higher is better: accuracy first, then lower NLL
        return (accuracy(p, y_val), -nll(p, y_val))

    counts = np.zeros(k)
    total = np.zeros_like(stack[0])
    best_score, best_counts = None, None
    for _ in range(rounds):
        n = counts.sum()
        candidates = [score((total + stack[i]) / (n + 1)) for i in range(k)]
        i = max(range(k), key=lambda j: candidates[j])
        counts[i] += 1
        total += stack[i]
        if best_score is None or candidates[i] > best_score:
            best_score, best_counts = candidates[i], counts.copy()
    return best_counts / best_counts.sum()


@register_method("greedy", help="Caruana selection over every candidate",
                 words="Caruana's selection by validation accuracy", pooled=True)
def fit(val_probs, y_val: np.ndarray, given=None) -> np.ndarray:
    return greedy_weights(val_probs, y_val)
