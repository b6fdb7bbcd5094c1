"""How a report reads: its markdown and its self-contained HTML page, from the summary that
analysis/summary.py computes (nothing here computes a number; the readings under the figures
only pick and compare the summary's own).

The page: the headline (fusion against the best member, with the bootstrap interval, and
against the seed's fusion) first, then the accuracy table, the figures side by side in a
grid, each with a title and a short reading, and the detailed tables last, the searches' cost
(analysis/render_cost.py) at the end."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from analysis.render_cost import cost_section
from analysis.summary import SEED_RESULTS
from trainables.classes import CLASSES


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


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


def headline(summary: dict) -> str:
    """One paragraph: the fusion against the best member (with the bootstrap interval) and
    against the seed's own fusion, all on the test set."""
    b = fusion_bought(summary)
    text = (f"**{b['name']}: {pct(b['test'])} test accuracy** against {pct(b['best_test'])} "
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
    return text


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


TITLES = {
    "roc": "ROC curves per class, fused model, test set",
    "precision_recall": "Precision / recall curves per class, fused model, test set",
    "confusion": "Confusion matrix of the fused model, test set",
    "reliability": "Calibration: accuracy against confidence, test set",
    "grid_heatmap": "Grid search: best validation accuracy by batch size and epochs",
    "asha_rungs": "ASHA early stopping: trials reaching each rung",
}
WIDE = {"grid_heatmap", "asha_rungs"}  # one panel per model or experiment: a row to itself


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


METHOD_WORDS = {"greedy": " (Caruana's selection by validation accuracy)",
                "nll": " (the weights that minimise the fused validation log-loss)"}


def markdown(summary: dict, figures: dict[str, Path]) -> str:
    f = summary["fusion"]
    lines = [f"# tunefuse report {summary['name']}", "",
             f"{summary['created']}; workspace `{summary['workspace']}`; data "
             f"`{summary['data']['fingerprint'][:16]}` ({summary['data']['val_images']} "
             f"validation, {summary['data']['test_images']} test images).", "",
             "> " + headline(summary), "",
             "## Accuracy", "",
             "| model | validation accuracy | test accuracy |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in seed_table(summary)]
    scaled = " with temperature scaling" if f["calibrated"] else ""
    rounded = [round(w, 4) for w in f["weights"]]
    tta = (" Every member scored each image as the mean of its softmaxes on the image and its "
           "left-right mirror (flip TTA), on validation and test alike."
           if summary.get("tta") == "flip" else "")
    lines += ["", f"Fusion: **{f['method']}**{METHOD_WORDS.get(f['method'], '')}{scaled}, "
              f"weights {rounded} (fitted on validation only); the best member is chosen on "
              f"validation too.{tta}", ""]
    if figures:
        lines += ["## Figures", ""]
    for key, path in figures.items():
        title = figure_title(key)
        lines += [f"### {title}", "", f"![{title}]({path.name})", "",
                  figure_reading(key, summary), ""]
    lines += ["## Members and fusion on the test set", "",
              "| classifier | val acc | test acc | test NLL | test ECE | temperature | run |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for m in summary["members"]:
        lines.append(f"| {m['label']} | {pct(m['val_acc'])} | {pct(m['test_acc'])} | "
                     f"{m['test']['nll']:.4f} | {m['test']['ece']:.4f} | "
                     f"{m['temperature']:.3f} | `{m['run_id'][:8]}` |")
    t_fused = f.get("temperature")
    lines.append(f"| **fusion** | {pct(f['val_acc'])} | {pct(f['test_acc'])} | "
                 f"{f['test']['nll']:.4f} | {f['test']['ece']:.4f} | "
                 f"{'' if t_fused is None else f'{t_fused:.3f}'} | |")
    if t_fused is not None:
        lines += ["", "The fusion's temperature scales the fused output (fitted on validation "
                  "after the fusion; it changes no label)."]
    lines += ["", "## Per-class test scores of the fusion", "",
              "| class | precision | recall | F1 |", "| --- | --- | --- | --- |"]
    for c, name in enumerate(CLASSES):
        t = f["test"]
        lines.append(f"| {c} {name} | {t['precision'][c]:.4f} | {t['recall'][c]:.4f} | "
                     f"{t['f1'][c]:.4f} |")
    lines.append("")
    return "\n".join(lines + cost_section(summary))


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1240px;margin:1.5em auto;"
    "padding:0 1.25em;line-height:1.45;color:#222}"
    "h1{font-size:1.6em;margin:.2em 0}h2{font-size:1.25em;margin:1.4em 0 .5em}"
    ".headline{border-left:4px solid #2b6cb0;background:#eef4fb;padding:.8em 1em;"
    "margin:1em 0;font-size:1.08em}"
    ".scroll{overflow-x:auto;max-width:100%}"
    "table{border-collapse:collapse;margin:.5em 0 1em;font-size:.92em}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f4f4f4}"
    ".figures{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,460px),1fr));"
    "gap:1.25em;align-items:start}"
    "figure{margin:0;padding:.75em;border:1px solid #ddd;border-radius:6px;min-width:0}"
    "figure.wide{grid-column:1/-1}figure h3{margin:0 0 .5em;font-size:1.02em}"
    "figure img{display:block;width:100%;height:auto}"
    "figure.wide img{width:auto;max-width:100%;margin:0 auto}"
    "figcaption{font-size:.9em;color:#444;margin-top:.5em}")


def to_html(md: str, figures: dict[str, Path]) -> str:
    """A self-contained page: the markdown's headline, tables and text; each figure (a `###`
    title, its image, the paragraph after it) a card in a grid, embedded as a data URI."""
    body, table, grid = [], [], []
    fig: dict | None = None  # the figure being read: title, key, src, reading
    images = {p.name: (k, p) for k, p in figures.items()}

    def flush_table():
        if table:
            head, *rest = [r for r in table if not set(r.replace("|", "").strip()) <= {"-", " "}]
            cells = [c.strip() for c in head.strip("|").split("|")]
            out = ["<div class='scroll'><table><tr>"
                   + "".join(f"<th>{_inline(c)}</th>" for c in cells) + "</tr>"]
            for r in rest:
                cells = [c.strip() for c in r.strip("|").split("|")]
                out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in cells) + "</tr>")
            body.append("\n".join(out) + "</table></div>")
            table.clear()

    def close_figure():
        nonlocal fig
        if fig is not None and fig.get("src"):
            wide = " wide" if fig["key"] in WIDE else ""
            title = html.escape(fig["title"])
            grid.append(f'<figure class="fig{wide}" id="fig-{html.escape(fig["key"])}">'
                        f"<h3>{title}</h3><img alt=\"{title}\" src=\"{fig['src']}\">"
                        f"<figcaption>{_inline(fig.get('reading', ''))}</figcaption></figure>")
        elif fig is not None:  # a title without an image: an ordinary heading
            flush_grid()
            body.append(f"<h3>{html.escape(fig['title'])}</h3>")
        fig = None

    def flush_grid():
        if grid:
            body.append("<div class='figures'>\n" + "\n".join(grid) + "\n</div>")
            grid.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            close_figure()
            flush_grid()
            table.append(line)
            continue
        flush_table()
        if line.startswith("### "):
            close_figure()
            fig = {"title": line[4:], "key": ""}
        elif line.startswith("![") and "](" in line:
            alt, name = line[2:].split("](", 1)
            name = name.rstrip(")")
            if name not in images:
                continue
            if fig is None or fig.get("src"):
                close_figure()
                fig = {"title": alt}
            fig["key"] = images[name][0]
            fig["src"] = png_data_uri(images[name][1])
        elif not line.strip():
            continue
        elif fig is not None and fig.get("src") and "reading" not in fig:
            fig["reading"] = line
        else:
            close_figure()
            flush_grid()
            if line.startswith("# "):
                body.append(f"<h1>{html.escape(line[2:])}</h1>")
            elif line.startswith("## "):
                body.append(f"<h2>{html.escape(line[3:])}</h2>")
            elif line.startswith("> "):
                body.append(f"<p class='headline' id='headline'>{_inline(line[2:])}</p>")
            else:
                body.append(f"<p>{_inline(line)}</p>")
    flush_table()
    close_figure()
    flush_grid()
    title = next((line[2:] for line in md.splitlines() if line.startswith("# ")),
                 "tunefuse report")
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _inline(text: str) -> str:
    out = html.escape(text)
    for mark, tag in (("**", "b"), ("`", "code")):
        parts = out.split(mark)
        out = "".join(p if i % 2 == 0 else f"<{tag}>{p}</{tag}>" for i, p in enumerate(parts))
    return out
