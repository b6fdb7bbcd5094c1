"""The report's search-cost section, a part of the report's model (analysis/document.py;
analysis/render.py places it, its templates render it): per search, the epochs an exhaustive
run of its trials computes against those computed, what shared warm-ups, shared trunks and
ASHA saved, its wall time and how busy its cores were; the numbers are analysis/summary.py's
(``search_costs``)."""

from __future__ import annotations

from types import MappingProxyType

from analysis.document import Inline, Paragraph, Section, Span, bold, code, inline, table

HEADER = ("search", "trials", "exhaustive epochs", "computed epochs", "computed / exhaustive",
          "saved: shared warm-ups", "saved: shared trunks", "saved: ASHA", "wall time",
          "cores busy", "run")
# how a trial's computed epochs were counted, when not from its epochs_computed metric
COUNTED = MappingProxyType({
    "shared": "its logged epochs less those flagged shared",
    "warmup_reused": "its logged epochs less those flagged warmup_reused",
    "warmup_reused_tag": "its logged epochs less the warm-up its warmup_reused tag says it "
                         "reused",
    "logged": "every epoch it logged",
})


def duration(seconds: float | None) -> str:
    """42s, 8m 11s, 1h 05m; "running" for a search still open."""
    if seconds is None:
        return "running"
    m, s = divmod(round(seconds), 60)
    if m >= 60:
        return f"{m // 60}h {m % 60:02d}m"
    return f"{m}m {s:02d}s" if m else f"{s}s"


def ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def cost_lead(total: dict) -> Inline:
    """Two sentences: what the searches computed of an exhaustive run, and what saved the
    rest."""
    saved, n = total["saved_epochs"], total["searches"]
    when = "; some are still running" if total["running"] else \
        f", in {duration(total['wall_seconds'])} of wall time"
    return inline(
        f"The {n} search{'es' if n != 1 else ''} ({_count(total['trials'], 'trial')}) "
        "computed ", bold(f"{total['computed_epochs']} of the {total['exhaustive_epochs']} "
                          "epochs"),
        f" an exhaustive run of their trials computes ({ratio(total['ratio'])}){when}. Shared "
        f"warm-ups saved {saved['shared_warmup']} epochs, shared trunks "
        f"{saved['shared_trunk']}, ASHA's early stops {saved['asha']} "
        f"({_count(total['stopped_by_asha'], 'trial')} stopped)." + busy_text(total))


def busy_text(total: dict) -> str:
    """How busy the cores were, when known."""
    if total.get("busy") is None:
        return ""
    steps = "training and validation" if total["busy_validation"] else "training"
    return (f" Their {steps} steps kept the cores busy {ratio(total['busy'])} of the wall "
            "time (the rest: each trial's start, checkpoints, MLflow, and cores left idle "
            "while a search's last trials ran).")


BUDGET_HEADER = ("search", "time budget", "plan's estimate", "wall time", "estimate / wall",
                 "left out by the plan", "cut by the clock")


def budget_blocks(rows: list[dict]) -> list:
    """The searches run under --time-budget (search/budget.py, search/clock.py): each one's
    budget, its plan's estimate against the wall time it took, what its plan left out and what
    its clock cut."""
    lines = []
    for r in rows:
        b, wall = r["budget"], r["wall_seconds"]
        lines.append((r["experiment"], duration(b["seconds"]), duration(b["plan_seconds"]),
                      duration(wall), ratio(b["plan_seconds"] / wall)
                      if wall and b["plan_seconds"] is not None else "n/a",
                      b["left_out"], b["cut"] or "nothing"))
    return [Paragraph(inline(
        "Time budget: ", bold(f"{len(rows)} search{'es' if len(rows) != 1 else ''}"),
        " ran under --time-budget. Each one's plan chose, before it trained, what of its space "
        "fits its share of the budget; its clock started a trial only when its estimate ended "
        "before the deadline, and cut what still ran at it (docs/usage.md, \"A time budget\"). "
        "The budget and estimate are those of the search's start; the wall time is its "
        "run's, a resume included.")), table(BUDGET_HEADER, lines)]


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'s' if n != 1 else ''}"


def _row(name: str | Span, r: dict, run: str | Span) -> tuple:
    s, status = r["saved_epochs"], r.get("status", "FINISHED")
    wall = duration(r["wall_seconds"]) + ("" if status in ("FINISHED", "RUNNING") else
                                          f" ({status.lower()})")  # stopped, not resumed
    return (name, str(r["trials"]), str(r["exhaustive_epochs"]), str(r["computed_epochs"]),
            ratio(r["ratio"]), str(s["shared_warmup"]), str(s["shared_trunk"]), str(s["asha"]),
            wall, ratio(r.get("busy")), run)


def cost_section(summary: dict) -> Section | None:
    """The section; None when the summary has no search cost."""
    cost = summary.get("search_cost") or {}
    rows = cost.get("searches") or []
    if not rows:
        return None
    lines = [_row(r["experiment"], r, code(r["run_id"][:8])) for r in rows]
    if len(rows) > 1:
        lines.append(_row(bold("all searches"), cost["total"], ""))
    blocks = [Paragraph(cost_lead(cost["total"])), table(HEADER, lines), Paragraph(inline(
        "Exhaustive: every trial trained to its full length on its own. Computed: the epochs "
        "the trials trained (an epoch taken from a shared trunk counts 0, a restored trial "
        "catching up counts each epoch it trained again). Shared warm-ups and trunks: the "
        "epochs a trial took from another's computation, within its warm-up and after it (the "
        "wsd schedule's constant-rate phase). ASHA: the epochs its early stops left out. Wall "
        "time: the search's MLflow run, start to end (a resumed search counts the pause "
        "too). Cores busy: the core-seconds of the trials' training and validation steps "
        "(each computed epoch's seconds x its threads) over wall time x the cores the search "
        "had (n/a for a run still open or recorded before its cores were)."))]
    if budgeted := [r for r in rows if r.get("budget")]:
        blocks += budget_blocks(budgeted)
    notes = [f"{_count(n, 'trial')} of {r['experiment']} by {COUNTED[k]}"
             for r in rows for k, n in r["counted_from"].items() if k in COUNTED]
    if notes:
        blocks.append(Paragraph(inline(
            "Runs recorded before the per-epoch epochs_computed metric: computed epochs "
            "counted for " + "; ".join(notes) + ".")))
    return Section("Search cost", tuple(blocks))
