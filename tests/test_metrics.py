"""The standard metrics, now scikit-learn's, give the numbers of the numpy code they replaced: on a
fixed input, against those numbers written down here and, for the whole curves, against that numpy
code kept below as the reference."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from analysis import figures, fusion


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def fixed_input():
    """1000 examples, 10 classes: class 7 absent from the labels (but predicted), class 9 with
    four examples and never predicted, ties in column 2, and a confidence on every reliability
    bin edge from 2/15 to 1."""
    rng = np.random.default_rng(7)
    y = rng.choice([0, 1, 2, 3, 4, 5, 6, 8], 1000)
    y[[10, 20, 30, 40]] = 9
    z = rng.normal(size=(1000, 10)) * 1.5
    z[np.arange(1000), y] += rng.uniform(0, 3, 1000)
    z[:, 9] -= 10
    p = softmax(z)
    p[:, 2] = np.round(p[:, 2], 2)
    edges = np.linspace(0, 1, 16)
    for i, k in enumerate(range(2, 16)):
        p[100 + i] = (1 - edges[k]) / 9
        p[100 + i, i % 7] = edges[k]
    return p, y


# what the numpy code gave on fixed_input()
AUC = [
    0.7671578653310851, 0.7816196299361866, 0.7694747616007458, 0.762057334080937,
    0.7874638628173143, 0.7416265724800919, 0.7972262762080212, 0.0, 0.7174535809018568,
    0.892570281124498]

AP = [
    0.301456220171166, 0.44742331516228473, 0.3508089313155256, 0.4018640709384312,
    0.398898554525044, 0.35204913437686947, 0.5192508696933349, 0.0, 0.35324463799759265,
    0.04084514878965215]

CONFUSION = [
    [33, 10, 9, 10, 11, 7, 12, 13, 8, 0],
    [8, 55, 13, 11, 4, 9, 5, 10, 14, 0],
    [9, 8, 40, 6, 7, 12, 12, 6, 11, 0],
    [11, 11, 12, 48, 9, 9, 12, 7, 10, 0],
    [10, 8, 11, 14, 46, 3, 7, 6, 9, 0],
    [9, 9, 9, 18, 7, 42, 5, 14, 10, 0],
    [4, 14, 11, 10, 9, 17, 65, 9, 8, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [9, 12, 15, 11, 12, 9, 12, 10, 40, 0],
    [0, 0, 1, 0, 1, 0, 2, 0, 0, 0]]

RELIABILITY = [  # (mean confidence, accuracy, count) per bin
    (None, None, 0),
    (0.13333333333333333, 0.0, 1),
    (0.19799352204135037, 0.25, 4),
    (0.24550343636711644, 0.14492753623188406, 69),
    (0.30289408855416483, 0.23741007194244604, 139),
    (0.3684488906406772, 0.29411764705882354, 153),
    (0.43210667645489514, 0.3, 140),
    (0.4970213783037645, 0.35714285714285715, 126),
    (0.565456525810102, 0.4144144144144144, 111),
    (0.6332813617340681, 0.4166666666666667, 84),
    (0.7018737071539399, 0.475, 40),
    (0.7635055805545815, 0.574468085106383, 47),
    (0.8328860284016562, 0.7333333333333333, 45),
    (0.8998605104659506, 0.7692307692307693, 26),
    (0.9602293121591908, 0.8666666666666667, 15)]

SCORES = {
    "acc": 0.369, "nll": 1.9924845244571934, "ece": 0.12607638685689423,
    "precision": [
        0.3548387096774194, 0.4330708661417323, 0.3305785123966942, 0.375, 0.4339622641509434,
        0.3888888888888889, 0.49242424242424243, 0.0, 0.36363636363636365, 0.0],
    "recall": [
        0.2920353982300885, 0.4263565891472868, 0.36036036036036034, 0.37209302325581395,
        0.40350877192982454, 0.34146341463414637, 0.4421768707482993, 0.0, 0.3076923076923077, 0.0],
    "f1": [
        0.32038834951456313, 0.42968749999999994, 0.3448275862068965, 0.3735408560311284,
        0.41818181818181815, 0.36363636363636365, 0.4659498207885304, 0.0, 0.33333333333333337,
        0.0],
}


# --- the numpy code the curves were computed with --------------------------------------------

def ranked(scores, positive):
    """Cumulative true and false positives at each distinct score threshold, high to low."""
    order = np.argsort(-scores, kind="stable")
    s, pos = scores[order], positive[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(pos)[last]
    return tp, (last + 1) - tp


def reference_roc(scores, positive):
    tp, fp = ranked(scores, positive)
    p, n = positive.sum(), len(positive) - positive.sum()
    return np.r_[0, fp / max(n, 1)], np.r_[0, tp / max(p, 1)]


def reference_pr(scores, positive):
    tp, fp = ranked(scores, positive)
    return np.r_[0, tp / max(positive.sum(), 1)], np.r_[1, tp / (tp + fp)]


# --- the comparisons --------------------------------------------------------------------------

def test_curves_are_as_before():
    p, y = fixed_input()
    for c in range(10):
        fpr, tpr, auc = figures.roc_curve(p[:, c], y == c)
        recall, precision, ap = figures.pr_curve(p[:, c], y == c)
        for ours, ref in zip((fpr, tpr, recall, precision),
                             (*reference_roc(p[:, c], y == c), *reference_pr(p[:, c], y == c)),
                             strict=True):
            np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-15)
        np.testing.assert_allclose(auc, AUC[c], rtol=1e-12, err_msg=str(c))
        np.testing.assert_allclose(ap, AP[c], rtol=1e-12, err_msg=str(c))
    assert len(figures.roc_curve(p[:, 2], y == 2)[0]) == 93  # ties: one point per distinct score


def test_curves_of_a_class_alone_or_absent():
    """No examples of the class: recall and true positive rate 0 throughout, AUC and AP 0. Only
    examples of it: false positive rate 0 throughout, AUC 0, AP 1. No warning either way."""
    scores = np.array([0.9, 0.8, 0.8, 0.1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        absent_roc = figures.roc_curve(scores, np.zeros(4, bool))
        absent_pr = figures.pr_curve(scores, np.zeros(4, bool))
        alone_roc = figures.roc_curve(scores, np.ones(4, bool))
        alone_pr = figures.pr_curve(scores, np.ones(4, bool))
    for got, want in [(absent_roc, ([0, 0.25, 0.75, 1], [0, 0, 0, 0], 0.0)),
                      (absent_pr, ([0, 0, 0, 0], [1, 0, 0, 0], 0.0)),
                      (alone_roc, ([0, 0, 0, 0], [0, 0.25, 0.75, 1], 0.0)),
                      (alone_pr, ([0, 0.25, 0.75, 1], [1, 1, 1, 1], 1.0))]:
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        assert got[2] == want[2] and isinstance(got[2], float)


def test_confusion_and_scores_are_as_before():
    p, y = fixed_input()
    cm = fusion.confusion(p.argmax(1), y, 10)
    np.testing.assert_array_equal(cm, CONFUSION)
    assert cm.dtype.kind == "i"
    s = fusion.scores(p, y)
    assert s.keys() == SCORES.keys()
    for key, want in SCORES.items():
        np.testing.assert_allclose(s[key], want, rtol=1e-12, atol=0, err_msg=key)
    for key in ("precision", "recall", "f1"):
        assert all(type(v) is float for v in s[key])


def test_reliability_is_as_before():
    """Empty bins keep their place (None, None, 0); a confidence on a bin edge counts in the
    bin below it; the bins' ECE is fusion's."""
    p, y = fixed_input()
    edges, bins = fusion.reliability(p, y)
    np.testing.assert_array_equal(edges, np.linspace(0, 1, 16))
    assert [b[2] for b in bins] == [b[2] for b in RELIABILITY] and sum(b[2] for b in bins) == 1000
    assert bins[0] == (None, None, 0)
    np.testing.assert_allclose([b[:2] for b in bins[1:]], [b[:2] for b in RELIABILITY[1:]],
                               rtol=1e-12, atol=0)
    assert all(type(v) is float for b in bins[1:] for v in b[:2])
    ece = sum(n / 1000 * abs(acc - conf) for conf, acc, n in bins if n)
    assert fusion.expected_calibration_error(p, y) == pytest.approx(ece, abs=1e-15)
    # every prediction right, then every one wrong: one class of outcome only
    for shift, acc in ((0, 1.0), (1, 0.0)):
        probs = np.eye(10)[(y + shift) % 10] * 0.5 + 0.05
        [(conf, got, n)] = [b for b in fusion.reliability(probs, y)[1] if b[2]]
        assert (conf, got, n) == (pytest.approx(0.55), acc, 1000)


def test_figures_on_the_fixed_input(tmp_path):
    p, y = fixed_input()
    classes = [f"class {c}" for c in range(10)]
    path, aucs = figures.plot_roc(p, y, classes, tmp_path / "roc.png", "ROC")
    assert path.stat().st_size > 0
    np.testing.assert_allclose(aucs, AUC, rtol=1e-12)
    path, aps = figures.plot_pr(p, y, classes, tmp_path / "pr.png", "PR")
    assert path.stat().st_size > 0
    np.testing.assert_allclose(aps, AP, rtol=1e-12)
    assert figures.plot_confusion(p, y, classes, tmp_path / "cm.png", "CM").stat().st_size > 0
    assert figures.plot_reliability({"a": p, "b": fusion.apply_temperature(p, 0.5)}, y,
                                    tmp_path / "rel.png", "reliability").stat().st_size > 0
