"""How a report reads: its markdown and its self-contained HTML page, from the summary that
analysis/summary.py computes (nothing here computes a number)."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

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


def markdown(summary: dict, figures: dict[str, Path]) -> str:
    f = summary["fusion"]
    lo, hi = f["test_gain_interval"]
    lines = [f"# tunefuse report {summary['name']}", "",
             f"{summary['created']}; workspace `{summary['workspace']}`; data "
             f"`{summary['data']['fingerprint'][:16]}` ({summary['data']['val_images']} "
             f"validation, {summary['data']['test_images']} test images).", "",
             "| model | validation accuracy | test accuracy |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in seed_table(summary)]
    scaled = " with temperature scaling" if f["calibrated"] else ""
    rounded = [round(w, 4) for w in f["weights"]]
    lines += ["", f"Fusion: **{f['method']}**{scaled}, weights {rounded} "
              "(fitted on validation only). "
              f"Test accuracy minus the best member's (chosen on validation, "
              f"{summary['best_member']}): {100 * f['test_gain']:+.2f} points, 95% bootstrap "
              f"interval [{100 * lo:+.2f}, {100 * hi:+.2f}] ({f['bootstrap']} resamples).", "",
              "| classifier | val acc | test acc | test NLL | test ECE | temperature | run |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for m in summary["members"]:
        lines.append(f"| {m['label']} | {pct(m['val_acc'])} | {pct(m['test_acc'])} | "
                     f"{m['test']['nll']:.4f} | {m['test']['ece']:.4f} | "
                     f"{m['temperature']:.3f} | `{m['run_id'][:8]}` |")
    lines.append(f"| **fusion** | {pct(f['val_acc'])} | {pct(f['test_acc'])} | "
                 f"{f['test']['nll']:.4f} | {f['test']['ece']:.4f} | | |")
    lines += ["", "Per-class test precision / recall / F1 of the fusion:", "",
              "| class | precision | recall | F1 |", "| --- | --- | --- | --- |"]
    for c, name in enumerate(CLASSES):
        t = f["test"]
        lines.append(f"| {c} {name} | {t['precision'][c]:.4f} | {t['recall'][c]:.4f} | "
                     f"{t['f1'][c]:.4f} |")
    lines.append("")
    for key, path in figures.items():
        lines += [f"![{key}]({path.name})", ""]
    return "\n".join(lines)


def to_html(md: str, figures: dict[str, Path]) -> str:
    """A self-contained page: the markdown's tables and text, figures embedded as data URIs."""
    body, table = [], []

    def flush():
        if table:
            head, *rest = [r for r in table if not set(r.replace("|", "").strip()) <= {"-", " "}]
            cells = [c.strip() for c in head.strip("|").split("|")]
            out = ["<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in cells) + "</tr>"]
            for r in rest:
                cells = [c.strip() for c in r.strip("|").split("|")]
                out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in cells) + "</tr>")
            body.append("\n".join(out) + "</table>")
            table.clear()

    images = {p.name: p for p in figures.values()}
    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("![") and "](" in line:
            alt, name = line[2:].split("](", 1)
            name = name.rstrip(")")
            if name in images:
                body.append(f'<figure><img alt="{html.escape(alt)}" '
                            f'src="{png_data_uri(images[name])}"><figcaption>'
                            f"{html.escape(alt)}</figcaption></figure>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    flush()
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;"
             "padding:0 1em}table{border-collapse:collapse;margin:1em 0}td,th{border:1px "
             "solid #ccc;padding:4px 8px;text-align:left}img{max-width:100%}"
             "figure{margin:1.5em 0}")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>tunefuse report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _inline(text: str) -> str:
    out = html.escape(text)
    for mark, tag in (("**", "b"), ("`", "code")):
        parts = out.split(mark)
        out = "".join(p if i % 2 == 0 else f"<{tag}>{p}</{tag}>" for i, p in enumerate(parts))
    return out
