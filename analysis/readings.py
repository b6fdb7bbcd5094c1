"""What the report says in words, from the summary that analysis/summary.py computes (nothing
here computes a number; the readings under the figures only pick and compare the summary's
own): the headline (fusion against the best member, with the bootstrap interval, and against
the seed's fusion), the same for a terminal, the accuracy table's rows, the sentence on how the
fusion was fitted, and each figure's title and reading. analysis/render.py places them in the
report's model.
"""

from __future__ import annotations

import math
from types import MappingProxyType

from analysis import methods
from analysis.document import Inline, bold, inline
from analysis.summary import SEED_RESULTS
from trainables.classes import CLASSES


def pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def seed_table(summary: dict) -> list[list[str]]:
    """model | val | test rows: members, the fusion, then the seed's own numbers."""
    rows = [[m["label"], pct(m["val_acc"]), pct(m["test_acc"])] for m in summary["members"]]
    f = summary["fusion"]
    rows.append([f"Fusion ({f['method']}, {len(summary['members'])} models)",
                 pct(f["val_acc"]), pct(f["test_acc"])])
    rows += [[f"seed: {name}", pct(v), pct(t)] for name, v, t in SEED_RESULTS]
    return rows


def _class(c: int) -> str:
    return f"class {c} {CLASSES[c]}" if c < len(CLASSES) else f"class {c}"


def _extremes(values) -> str | None:
    """'the mean is M; the lowest is class C NAME at V' from per-class numbers, or None."""
    vals = [v for v in values or [] if v is not None and not math.isnan(v)]
    if not vals or len(vals) != len(values):
        return None
    low = min(range(len(vals)), key=vals.__getitem__)
    return f"{sum(vals) / len(vals):.3f}; the lowest is {_class(low)} at {vals[low]:.3f}"


def fusion_bought(summary: dict) -> dict:
    """What the fusion bought, on the test set: its accuracy, its gain over the best member
    (chosen on validation) with the bootstrap interval and what the interval says, its
    margin over the seed's own fusion, and the two calibrations where the summary has them."""
    f = summary["fusion"]
    lo, hi = f["test_gain_interval"]
    seed_name, _, seed_test = next((r for r in SEED_RESULTS if "fusion" in r[0].lower()),
                                   SEED_RESULTS[-1])
    if lo > 0:
        verdict = "the interval lies above zero: the fusion is better than its best member"
        short = "above zero: a gain"
    elif hi < 0:
        verdict = "the interval lies below zero: the fusion is worse than its best member"
        short = "below zero: a loss"
    else:
        verdict = "the interval includes zero: no clear gain over the best member"
        short = "includes zero: no clear gain"
    return {"name": f"Fusion ({f['method']}, {len(summary['members'])} models)",
            "test": f["test_acc"], "best": summary["best_member"],
            "best_test": f["test_acc"] - f["test_gain"],  # the gain is fusion minus best
            "gain": 100 * f["test_gain"], "low": 100 * lo, "high": 100 * hi,
            "verdict": verdict, "short": short,
            "seed_name": seed_name.lower(), "seed_test": seed_test,
            "vs_seed": 100 * (f["test_acc"] - seed_test),
            "ece": f["test"]["ece"], "nll": f["test"]["nll"],
            "best_calibration": f.get("best_member_test"),
            "ece_difference": f.get("test_ece_difference")}


def headline(summary: dict) -> Inline:
    """One paragraph: the fusion against the best member (with the bootstrap interval) and
    against the seed's own fusion, all on the test set."""
    b = fusion_bought(summary)
    text = (f" against {pct(b['best_test'])} "
            f"for {b['best']}, the best member on validation: {b['gain']:+.2f} points, 95% "
            f"bootstrap interval [{b['low']:+.2f}, {b['high']:+.2f}] "
            f"({summary['fusion']['bootstrap']} resamples); {b['verdict']}. The seed's "
            f"{b['seed_name']}: {pct(b['seed_test'])} test accuracy ({b['vs_seed']:+.2f} "
            "points for this fusion).")
    if b["best_calibration"]:
        c = b["best_calibration"]
        text += (f" Calibration on test: ECE {b['ece']:.4f} and NLL {b['nll']:.4f} for the "
                 f"fusion, {c['ece']:.4f} and {c['nll']:.4f} for its best member")
        if b["ece_difference"]:
            d, lo, hi = b["ece_difference"]
            text += f" (ECE difference {d:+.4f}, 95% interval [{lo:+.4f}, {hi:+.4f}])"
        text += "."
    return inline(bold(f"{b['name']}: {pct(b['test'])} test accuracy"), text)


def seed_table_text(summary: dict) -> str:
    """``seed_table`` as the terminal shows it: aligned columns under a header."""
    rows = seed_table(summary)
    width = max(len(r[0]) for r in rows)
    return "\n".join([f"{'model':<{width}}  {'validation':>10}  {'test':>8}",
                      *(f"{a:<{width}}  {b:>10}  {c:>8}" for a, b, c in rows)])


def headline_lines(summary: dict) -> list[str]:
    """The same, for a terminal: what the fusion bought, in three or four lines."""
    b = fusion_bought(summary)
    lines = [f"{b['name']}: {pct(b['test'])} on test",
             f"  vs its best member {b['best']} ({pct(b['best_test'])}): {b['gain']:+.2f} "
             f"points, 95% interval [{b['low']:+.2f}, {b['high']:+.2f}] ({b['short']})",
             f"  vs the seed's {b['seed_name']} ({pct(b['seed_test'])}): "
             f"{b['vs_seed']:+.2f} points"]
    if b["best_calibration"]:
        c = b["best_calibration"]
        lines.append(f"  calibration on test: ECE {b['ece']:.4f}, NLL {b['nll']:.4f} "
                     f"(best member {c['ece']:.4f}, {c['nll']:.4f})")
        if b["ece_difference"]:
            d, lo, hi = b["ece_difference"]
            lines[-1] += f"; ECE difference {d:+.4f}, 95% interval [{lo:+.4f}, {hi:+.4f}]"
    return lines


TITLES = MappingProxyType({
    "roc": "ROC curves per class, fused model, test set",
    "precision_recall": "Precision / recall curves per class, fused model, test set",
    "confusion": "Confusion matrix of the fused model, test set",
    "reliability": "Calibration: accuracy against confidence, test set",
    "grid_heatmap": "Grid search: best validation accuracy by batch size and epochs",
    "asha_rungs": "ASHA early stopping: trials reaching each rung",
})
# one panel per model or experiment: a row of the page to itself
WIDE = frozenset({"grid_heatmap", "asha_rungs"})


def figure_title(key: str) -> str:
    return TITLES.get(key, key.replace("_", " ").capitalize())


def figure_reading(key: str, summary: dict) -> str:
    """One or two sentences on what the figure shows, its numbers taken from the summary."""
    f, t = summary["fusion"], summary["fusion"]["test"]
    if key == "roc":
        text = "One curve per class against the rest; the dotted diagonal is chance."
        stats = _extremes(t.get("roc_auc"))
        return text + (f" The mean AUC is {stats}." if stats else "")
    if key == "precision_recall":
        text = "One curve per class against the rest, precision as recall rises."
        stats = _extremes(t.get("average_precision"))
        return text + (f" The mean average precision is {stats}." if stats else "")
    if key == "confusion":
        rec = t["recall"]
        hi = max(range(len(rec)), key=rec.__getitem__)
        low = min(range(len(rec)), key=rec.__getitem__)
        return ("Rows are the true class, columns the prediction; the diagonal counts the "
                f"correct ones. Recall is highest for {_class(hi)} ({pct(rec[hi])}) and lowest "
                f"for {_class(low)} ({pct(rec[low])}).")
    if key == "reliability":
        eces = [(m["test"]["ece"], m["label"]) for m in summary["members"]]
        text = ("Accuracy against confidence, per bin, for each member and the fusion; a "
                "calibrated classifier follows the dotted diagonal. The fusion's expected "
                f"calibration error is {t['ece']:.4f}")
        if eces:
            best = min(eces)
            text += (f"; the members' range from {best[0]:.4f} ({best[1]}) to "
                     f"{max(eces)[0]:.4f}")
        return text + (". All are temperature-scaled on validation." if f["calibrated"]
                       else ".")
    if key == "grid_heatmap":
        models = sorted({m["model"] for m in summary["members"] if m.get("model")})
        text = ("One panel per model: the best validation accuracy of each (batch size, epochs) "
                "trial of the grid search, with the epoch where ASHA stopped a trial early.")
        return text + (f" The fusion's members are {', '.join(models)}." if models else "")
    if key == "asha_rungs":
        text = ("Per experiment, the trials that reached each ASHA rung (an epoch milestone) "
                "and those that continued past it.")
        parts = []
        for name, rungs in sorted((summary.get("asha_survival") or {}).items()):
            if rungs:
                first, last = rungs[0], rungs[-1]
                parts.append(f"{name}: {last['continued']} of {first['reached']} trials went "
                             f"past epoch {last['rung']}")
        return text + (" " + "; ".join(parts) + "." if parts else "")
    return f"The {figure_title(key).lower()} figure."


def fusion_fitted(summary: dict) -> Inline:
    """How the fusion was fitted: its method (in the method's own words,
    analysis/methods/), temperature scaling, its weights, and the members' TTA."""
    f = summary["fusion"]
    words = methods.method(f["method"]).words
    scaled = " with temperature scaling" if f["calibrated"] else ""
    rounded = [round(w, 4) for w in f["weights"]]
    tta = (" Every member scored each image as the mean of its softmaxes on the image and its "
           "left-right mirror (flip TTA), on validation and test alike."
           if summary.get("tta") == "flip" else "")
    return inline("Fusion: ", bold(f["method"]),
                  f"{f' ({words})' if words else ''}{scaled}, weights {rounded} (fitted on "
                  f"validation only); the best member is chosen on validation too.{tta}")
