"""How a report reads: one model of it (analysis/document.py), built once from the summary
that analysis/summary.py computes, and its two renderings, report.md and the self-contained
report.html, each from that model through its Jinja2 template (analysis/templates/).

The page: the headline (fusion against the best member, with the bootstrap interval, and
against the seed's fusion) first, then the accuracy table, the figures side by side in a
grid, each with a title and a short reading, and the detailed tables last, the searches' cost
(analysis/render_cost.py) at the end. The words are analysis/readings.py's.

The templates are files of the package (shipped as package data, pyproject.toml): each is
read and edited as the markdown or HTML it makes, and Jinja2 names the file and line of a
mistake in one.
"""

from __future__ import annotations

import base64
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from analysis.document import (
    Figure,
    Figures,
    Paragraph,
    Report,
    Section,
    bold,
    code,
    inline,
    table,
)
from analysis.readings import (
    WIDE,
    figure_reading,
    figure_title,
    fusion_fitted,
    headline,
    pct,
    seed_table,
)
from analysis.render_cost import cost_section
from trainables.classes import CLASSES


def build(summary: dict, figures: dict[str, Path]) -> Report:
    """The report's model from the summary and its figures' PNG files (by key)."""
    f = summary["fusion"]
    accuracy = (table(("model", "validation accuracy", "test accuracy"), seed_table(summary)),
                Paragraph(fusion_fitted(summary)))
    sections = [Section("Accuracy", accuracy)]
    if figures:
        sections.append(Section("Figures", (Figures(tuple(
            Figure(key, figure_title(key), path, figure_reading(key, summary), key in WIDE)
            for key, path in figures.items())),)))
    rows = [(m["label"], pct(m["val_acc"]), pct(m["test_acc"]), f"{m['test']['nll']:.4f}",
             f"{m['test']['ece']:.4f}", f"{m['temperature']:.3f}", code(m["run_id"][:8]))
            for m in summary["members"]]
    t_fused = f.get("temperature")
    rows.append((bold("fusion"), pct(f["val_acc"]), pct(f["test_acc"]),
                 f"{f['test']['nll']:.4f}", f"{f['test']['ece']:.4f}",
                 "" if t_fused is None else f"{t_fused:.3f}", ""))
    members = [table(("classifier", "val acc", "test acc", "test NLL", "test ECE",
                      "temperature", "run"), rows)]
    if t_fused is not None:
        members.append(Paragraph(inline(
            "The fusion's temperature scales the fused output (fitted on validation after the "
            "fusion; it changes no label).")))
    sections.append(Section("Members and fusion on the test set", tuple(members)))
    t = f["test"]
    sections.append(Section("Per-class test scores of the fusion", (table(
        ("class", "precision", "recall", "F1"),
        [(f"{c} {name}", f"{t['precision'][c]:.4f}", f"{t['recall'][c]:.4f}",
          f"{t['f1'][c]:.4f}") for c, name in enumerate(CLASSES)]),)))
    cost = cost_section(summary)
    if cost is not None:
        sections.append(cost)
    data = summary["data"]
    intro = inline(f"{summary['created']}; workspace ", code(summary["workspace"]), "; data ",
                   code(data["fingerprint"][:16]), f" ({data['val_images']} validation, "
                   f"{data['test_images']} test images).")
    return Report(f"tunefuse report {summary['name']}", Paragraph(intro),
                  Paragraph(headline(summary)), tuple(sections))


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def environment(html: bool) -> Environment:
    """The templates' environment: HTML escapes every value (autoescape), markdown none."""
    env = Environment(loader=PackageLoader("analysis", "templates"), autoescape=html,
                      undefined=StrictUndefined, keep_trailing_newline=True)
    env.filters["data_uri"] = png_data_uri  # the page is self-contained: figures inline
    return env


def markdown(report: Report) -> str:
    """report.md."""
    return environment(html=False).get_template("report.md.j2").render(report=report)


def html(report: Report) -> str:
    """report.html: one file, its figures embedded as data URIs."""
    return environment(html=True).get_template("report.html.j2").render(report=report)


def markdown_of(part: Section | Paragraph) -> str:
    """One part of the model as report.md has it."""
    return _part(environment(html=False), "markdown.j2", part)


def html_of(part: Section | Paragraph) -> str:
    """One part of the model as report.html has it."""
    return _part(environment(html=True), "html.j2", part)


def _part(env: Environment, macros: str, part: Section | Paragraph) -> str:
    module = env.get_template(macros).module
    if isinstance(part, Section):
        return str(module.section(part))
    return str(module.inline(part.spans))
