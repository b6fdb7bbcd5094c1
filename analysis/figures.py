"""The report's figures as PNG files and the curves behind them.

matplotlib's object API: each figure is a ``Figure`` of its own, saved to PNG by the Agg
renderer, with neither pyplot's global list of figures nor a global backend switch.
ROC and precision/recall curves are one-vs-rest per class, from scikit-learn.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn import metrics
from sklearn.exceptions import UndefinedMetricWarning

from analysis import fusion


def roc_curve(scores: np.ndarray, positive: np.ndarray):
    """(fpr, tpr, auc) of one class against the rest, a point at every distinct score. Without
    positives (a class absent from the labels) or without negatives, the undefined rate is 0
    throughout and the area 0."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        fpr, tpr, _ = metrics.roc_curve(positive, scores, drop_intermediate=False)
    fpr, tpr = np.nan_to_num(fpr), np.nan_to_num(tpr)
    return fpr, tpr, float(metrics.auc(fpr, tpr))


def pr_curve(scores: np.ndarray, positive: np.ndarray):
    """(recall, precision, average precision) of one class against the rest, from recall 0 up.
    A class absent from the labels has recall 0 all along (scikit-learn says 1) and AP 0."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "No positive class found", UserWarning)
        precision, recall, _ = metrics.precision_recall_curve(positive, scores)
        ap = metrics.average_precision_score(positive, scores)
    if not np.any(positive):
        recall = np.zeros_like(recall)
    return recall[::-1], precision[::-1], float(ap)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


@dataclass(frozen=True)
class PerClass:
    """A one-vs-rest figure: its curve (scores, positives) -> (x, y, area), what the area is
    called, the axes' labels and limits, where the legend goes, and whether the chance
    diagonal is drawn."""

    curve: Callable[[np.ndarray, np.ndarray], tuple]
    score: str
    xlabel: str
    ylabel: str
    legend: str
    ylim: tuple[float, float] | None = None
    diagonal: bool = False


ROC = PerClass(roc_curve, "AUC", "false positive rate", "true positive rate", "lower right",
               diagonal=True)
PR = PerClass(pr_curve, "AP", "recall", "precision", "lower left", ylim=(0, 1.02))


def _plot_per_class(kind: PerClass, probs, y, classes, path: Path,
                    title: str) -> tuple[Path, list[float]]:
    """One curve per class (one vs rest); returns the figure and each class's area."""
    fig = Figure(figsize=(6.4, 5.6))
    ax = fig.subplots()
    areas = []
    for c, name in enumerate(classes):
        x, yy, area = kind.curve(probs[:, c], y == c)
        areas.append(area)
        ax.plot(x, yy, lw=1.2, label=f"{name} ({kind.score} {area:.4f})")
    if kind.diagonal:
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel=kind.xlabel, ylabel=kind.ylabel, title=title)
    if kind.ylim:
        ax.set(ylim=kind.ylim)
    ax.legend(fontsize=7, loc=kind.legend)
    return _save(fig, path), areas


def plot_roc(probs, y, classes, path: Path, title: str) -> tuple[Path, list[float]]:
    return _plot_per_class(ROC, probs, y, classes, path, title)


def plot_pr(probs, y, classes, path: Path, title: str) -> tuple[Path, list[float]]:
    return _plot_per_class(PR, probs, y, classes, path, title)


def plot_confusion(probs, y, classes, path: Path, title: str) -> Path:
    cm = fusion.confusion(probs.argmax(1), y, len(classes))
    fig = Figure(figsize=(7, 6))
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Blues")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def plot_reliability(curves: dict[str, np.ndarray], y, path: Path, title: str) -> Path:
    """One line per classifier: accuracy against confidence, per bin."""
    fig = Figure(figsize=(5.6, 5.2))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="perfect calibration")
    for label, probs in curves.items():
        _, bins = fusion.reliability(probs, y)
        pts = [(c, a) for c, a, n in bins if n > 0]
        ece = fusion.expected_calibration_error(probs, y)
        ax.plot(*zip(*pts, strict=True), marker="o", ms=3, lw=1.2,
                label=f"{label} (ECE {ece:.4f})")
    ax.set(xlabel="confidence", ylabel="accuracy", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


def plot_grid_heatmaps(grids: dict[str, list[dict]], path: Path) -> Path | None:
    """Per model: best val accuracy of each (batch size, epochs) trial."""
    grids = {m: rows for m, rows in grids.items() if rows}
    if not grids:
        return None
    fig = Figure(figsize=(4.8 * len(grids), 4))
    axes = fig.subplots(1, len(grids), squeeze=False)
    for ax, (model, rows) in zip(axes[0], sorted(grids.items()), strict=True):
        bs = sorted({r["batch_size"] for r in rows})
        ep = sorted({r["epochs"] for r in rows})
        grid = np.full((len(bs), len(ep)), np.nan)
        for r in rows:
            i, j = bs.index(r["batch_size"]), ep.index(r["epochs"])
            grid[i, j] = np.nanmax([grid[i, j], r["val_acc"]])
        im = ax.imshow(grid, cmap="viridis", aspect="auto")
        for r in rows:
            i, j = bs.index(r["batch_size"]), ep.index(r["epochs"])
            note = "" if r.get("stopped_at") is None else f"\nstop@{r['stopped_at']}"
            ax.text(j, i, f"{grid[i, j]:.4f}{note}", ha="center", va="center", fontsize=7,
                    color="white")
        ax.set_xticks(range(len(ep)), ep)
        ax.set_yticks(range(len(bs)), bs)
        ax.set(xlabel="epochs", ylabel="batch size", title=f"{model}: best val accuracy")
        fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def plot_asha(survival: dict[str, list[tuple[int, int, int]]], path: Path) -> Path | None:
    """Per experiment: trials that reached each ASHA rung and trials that went past it."""
    survival = {k: v for k, v in survival.items() if v}
    if not survival:
        return None
    fig = Figure(figsize=(4.4 * len(survival), 3.6))
    axes = fig.subplots(1, len(survival), squeeze=False)
    for ax, (name, rungs) in zip(axes[0], sorted(survival.items()), strict=True):
        x = np.arange(len(rungs))
        reached = [r for _, r, _ in rungs]
        passed = [p for _, _, p in rungs]
        ax.bar(x - 0.2, reached, 0.4, label="reached")
        ax.bar(x + 0.2, passed, 0.4, label="continued")
        ax.set_xticks(x, [f"epoch {e}" for e, _, _ in rungs])
        ax.set(ylabel="trials", title=name)
        ax.legend(fontsize=7)
    return _save(fig, path)
