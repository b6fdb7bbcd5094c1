"""Fusion of member classifiers from their softmax probabilities, and the scores of a classifier.

Plain numpy over arrays of probabilities (N, C), one per member; nothing here sees a model.
Every weight and temperature is fitted on validation arrays only: the functions that fit take
the validation probabilities and labels and nothing else (docs/seed.md, "Fusion": softmax outputs
averaged with weights, arg-max is the label). The methods that choose the weights (uniform,
weighted, greedy, nll) are files of their own under analysis/methods/; ``calibrate``
temperature-scales each member (one scalar T minimising validation NLL) first.

Whatever the method, the fused output then gets a temperature of its own, fitted the same way
(analysis/summary.py): averaging softens, so a fusion of sharp members comes out
under-confident; one scalar T restores its calibration and never changes a label.

The scores: accuracy, NLL and the expected calibration error (ECE, equal-width confidence
bins) here; the confusion matrix, per-class precision/recall/F1 and the reliability curve from
scikit-learn, imported where they are computed: the served model (analysis/ensemble.py) fuses
with this module and neither needs nor pins scikit-learn.
"""

from __future__ import annotations

import math

import numpy as np

EPS = 1e-12


def log_probs(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(probs, EPS, 1.0))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): T > 1 softens, T < 1 sharpens, T = 1 returns p (renormalised)."""
    z = log_probs(probs) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-log_probs(probs[np.arange(len(y)), y]).mean())


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float((probs.argmax(1) == y).mean())


def fit_temperature(probs: np.ndarray, y: np.ndarray, low: float = 0.05,
                    high: float = 20.0) -> float:
    """The T in [low, high] minimising validation NLL (golden-section search on log T; the
    NLL of temperature-scaled logits is unimodal in T)."""
    a, b = math.log(low), math.log(high)
    g = (math.sqrt(5) - 1) / 2

    def f(t):
        return nll(apply_temperature(probs, math.exp(t)), y)

    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return float(math.exp((a + b) / 2))


def normalise(weights) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or not np.all(np.isfinite(w)) or (w < 0).any() \
            or w.sum() <= 0:
        raise ValueError(f"fusion weights must be finite, non-negative and not all zero, "
                         f"got {list(w)}")
    return w / w.sum()


def fuse(member_probs, weights) -> np.ndarray:
    """sum_k w_k p_k with the weights normalised to 1; rows still sum to 1."""
    stack = np.asarray(member_probs, dtype=np.float64)
    w = normalise(weights)
    if len(w) != len(stack):
        raise ValueError(f"{len(w)} weights for {len(stack)} members")
    return np.tensordot(w, stack, axes=1)


def _confidence_bins(probs: np.ndarray, y: np.ndarray, bins: int):
    """Confidence (top probability), whether the top class is right, the bin edges and each
    example's bin: equal widths over [0, 1], closed on the right (a confidence on an edge
    counts in the bin below it, as in sklearn's calibration_curve)."""
    conf = probs.max(1)
    correct = probs.argmax(1) == y
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    return conf, correct, edges, idx


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    conf, correct, _, idx = _confidence_bins(probs, y, bins)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = 15):
    """Per confidence bin: mean confidence, accuracy, count (for the reliability diagram); an
    empty bin has None for both means. The means are sklearn's calibration_curve of whether the
    top class is right against the confidence, which leaves empty bins out."""
    from sklearn.calibration import calibration_curve

    conf, correct, edges, idx = _confidence_bins(probs, y, bins)
    counts = np.bincount(idx, minlength=bins)
    acc, mean_conf = calibration_curve(correct, conf, n_bins=bins, pos_label=True)
    out = [(None, None, 0)] * bins
    for b, c, a in zip(np.flatnonzero(counts), mean_conf, acc, strict=True):
        out[b] = (float(c), float(a), int(counts[b]))
    return edges, out


def confusion(pred: np.ndarray, y: np.ndarray, classes: int) -> np.ndarray:
    """Rows: true class; columns: predicted."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y, pred, labels=np.arange(classes))


def per_class(probs: np.ndarray, y: np.ndarray) -> dict[str, list[float]]:
    """Precision, recall and F1 of each class; 0 where undefined (a class never predicted, or
    absent from the labels)."""
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, _ = precision_recall_fscore_support(
        y, probs.argmax(1), labels=np.arange(probs.shape[1]), zero_division=0)
    return {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist()}


def scores(probs: np.ndarray, y: np.ndarray) -> dict:
    return {"acc": accuracy(probs, y), "nll": nll(probs, y),
            "ece": expected_calibration_error(probs, y), **per_class(probs, y)}


def bootstrap_difference(probs_a: np.ndarray, probs_b: np.ndarray, y: np.ndarray,
                         n: int = 2000, seed: int = 0, level: float = 0.95):
    """Paired bootstrap of accuracy(a) - accuracy(b) over the same resampled examples:
    (observed difference, lower, upper) of the percentile interval."""
    a = (probs_a.argmax(1) == y).astype(np.float64)
    b = (probs_b.argmax(1) == y).astype(np.float64)
    d = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(n)
    for i in range(0, n, 100):  # 100 resamples at a time keeps memory small
        m = min(100, n - i)
        idx = rng.integers(0, len(y), size=(m, len(y)))
        means[i:i + m] = d[idx].mean(1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(d.mean()), float(lo), float(hi)


def bootstrap_ece_difference(probs_a: np.ndarray, probs_b: np.ndarray, y: np.ndarray,
                             n: int = 2000, seed: int = 0, level: float = 0.95,
                             bins: int = 15):
    """Paired bootstrap of ECE(a) - ECE(b) over the same resampled examples: (observed
    difference, lower, upper) of the percentile interval. Per resample, each bin's count,
    confidence sum and correct count come from np.bincount: ECE = sum |correct - conf| / N."""
    def parts(probs):
        conf, correct, _, idx = _confidence_bins(probs, y, bins)
        return conf, correct.astype(np.float64), idx

    def ece(p, i):
        conf, correct, idx = p
        gap = np.bincount(idx[i], correct[i] - conf[i], minlength=bins)
        return float(np.abs(gap).sum() / len(i))

    a, b = parts(probs_a), parts(probs_b)
    everything = np.arange(len(y))
    rng = np.random.default_rng(seed)
    diffs = np.empty(n)
    for k in range(n):
        i = rng.integers(0, len(y), size=len(y))
        diffs[k] = ece(a, i) - ece(b, i)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(diffs, [alpha, 1 - alpha])
    return ece(a, everything) - ece(b, everything), float(lo), float(hi)
