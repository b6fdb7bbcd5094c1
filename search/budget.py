"""--time-budget: the most of a search's space that fits the user's clock, chosen before it trains.

A search's space is cut along the axes its param_space has (search/grid.py's, search/weights.py's):

- **lengths** (the ``epochs`` grid): trials of one batch size share a trunk (trainables/trunk.py),
  so the cost of a set of lengths is about its longest trunk plus each shorter trial's decay.
  The planner keeps every length up to the longest that fits and cuts those above it;
- **batch sizes** (the ``batch_size`` grid), each a trunk of its own: the middle of the grid
  first (the extremes bracket it), then outwards;
- **width** (``model_kwargs.width``): the profile's, else the next narrower one the model's card
  names (trainables/models), when the profile's cannot fit even its shortest plan;
- **samples** (``num_samples``, the class-weight trials): as many as fit.

Among the plans that fit, the planner takes the best by one order, so that a bigger budget never
plans less: the widest width; then enough batch sizes to fill the trials side by side (idle
cores are wasted time); then the longest length; then more batch sizes; then more samples.

search/budgeted.py cuts a search to the plan chosen here. Every figure comes from a function
passed in, ``estimate(param_space, num_samples)`` (the
search's plan, search/plan.py, from the measured throughput of this machine), so the planner is
a pure function of the space, the budget, that estimate and the trials side by side: the tests
give it synthetic throughputs.
"""

from __future__ import annotations

import argparse
import copy
import re
from collections.abc import Callable
from dataclasses import dataclass

from search.plan import duration as in_words

Estimate = Callable[[dict, int], float]  # (param_space, num_samples) -> seconds
UNITS = {"h": 3600, "m": 60, "s": 1}


def duration(text: str) -> float:
    """An argparse type: ``90s``, ``25m``, ``2h``, ``1h30m`` (or a number of seconds) in
    seconds."""
    spaced = text.strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", spaced):
        seconds = float(spaced)
    else:
        parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?",
                             spaced)
        if not spaced or parts is None:
            raise argparse.ArgumentTypeError(
                f"expected a duration such as 90s, 25m, 2h or 1h30m, got {text!r}")
        seconds = sum(float(v) * UNITS[u] for v, u in zip(parts.groups(), "hms", strict=True)
                      if v)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"a time budget must be more than 0, got {text!r}")
    return seconds


class NothingFits(ValueError):
    """Not even the smallest plan of the space fits the budget; ``smallest``: its seconds."""

    def __init__(self, what: str, budget: float, smallest: float, need: float | None = None,
                 part: str = ""):
        """``need``: the smallest budget the command takes (``smallest`` when None); ``part``:
        the search, when ``what`` is a command of several (a pipeline, whose stage it is)."""
        self.what, self.smallest = what, smallest
        needs = f"its stage {part} needs about {in_words(smallest)} of its share" if part \
            else f"its smallest plan needs about {in_words(smallest)}"
        super().__init__(f"a time budget of {in_words(budget)} fits no {what} on this machine: "
                         f"{needs}; pass --time-budget "
                         f"{budget_text(smallest if need is None else need)} or more")


def budget_text(seconds: float) -> str:
    """Seconds as --time-budget takes them, rounded up to a whole minute (90 s and under: s)."""
    if seconds <= 90:
        return f"{int(-(-seconds // 1))}s"
    minutes = int(-(-seconds // 60))
    hours, minutes = divmod(minutes, 60)
    return (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes or not hours else "")


# --- the axes of a space ----------------------------------------------------------------------

def grid_values(space: dict, key: str) -> list | None:
    """The values of ``space``'s tune.grid_search entry ``key`` (None: it has none)."""
    value = space.get(key)
    return list(value["grid_search"]) if isinstance(value, dict) and "grid_search" in value \
        else None


def middle_first(values) -> list:
    """``values`` (ascending) from the middle outwards, the smaller of two as near first:
    32,64,128,256,512 -> 128,64,256,32,512."""
    values = sorted(values)
    centre = (len(values) - 1) / 2
    return sorted(values, key=lambda v: (abs(values.index(v) - centre), v))


@dataclass(frozen=True)
class Axes:
    """What a space may be cut to: its lengths (ascending), batch sizes (in the order they are
    kept), widths (widest first; (None,) for a model of one width) and sample counts."""

    lengths: tuple[int, ...] | None
    batch_sizes: tuple[int, ...] | None
    widths: tuple[int | None, ...]
    samples: int

    @staticmethod
    def of(space: dict, num_samples: int, widths: tuple[int | None, ...] = (None,)) -> Axes:
        lengths, batches = grid_values(space, "epochs"), grid_values(space, "batch_size")
        return Axes(tuple(sorted(lengths)) if lengths else None,
                    tuple(middle_first(batches)) if batches else None, widths or (None,),
                    max(1, num_samples))


@dataclass(frozen=True)
class Cut:
    """One plan of a space: the width, how many batch sizes (in Axes' order), the longest length
    kept (every length up to it is kept) and the samples."""

    width: int | None
    batches: int
    longest: int | None
    samples: int

    def space(self, space: dict, axes: Axes) -> dict:
        """``space`` cut to this plan."""
        return cut_space(
            space, sorted(axes.batch_sizes[:self.batches]) if axes.batch_sizes else None,
            [e for e in axes.lengths if e <= self.longest] if axes.lengths else None,
            self.width)


def cut_space(space: dict, batch_sizes, lengths, width: int | None) -> dict:
    """A copy of ``space`` whose batch size and epochs grids hold ``batch_sizes`` and
    ``lengths`` (its trunks' lengths too) and whose model has ``width``; None leaves one as
    it is."""
    out = copy.deepcopy(space)
    if lengths is not None:
        out["epochs"] = {"grid_search": list(lengths)}
        if "trunk_lengths" in out:
            out["trunk_lengths"] = list(lengths)
    if batch_sizes is not None:
        out["batch_size"] = {"grid_search": list(batch_sizes)}
    if width is not None:
        out["model_kwargs"] = {**(out.get("model_kwargs") or {}), "width": width}
    return out


def _cuts(axes: Axes, width: int | None) -> list[Cut]:
    """Every plan of the space at ``width``."""
    lengths = axes.lengths or (None,)
    batches = range(1, len(axes.batch_sizes) + 1) if axes.batch_sizes else (1,)
    return [Cut(width, b, longest, n) for b in batches for longest in lengths
            for n in range(1, axes.samples + 1)]


def _rank(cut: Cut, axes: Axes, at_a_time: int) -> tuple:
    """The planner's order: the larger, the better (module docstring)."""
    return (-axes.widths.index(cut.width), min(cut.batches, at_a_time), cut.longest or 0,
            cut.batches, cut.samples)


# --- the plan -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fit:
    """The plan a budget gives a space: the space cut, its samples, the estimate, and each cut
    in words (what was left out, and why)."""

    space: dict
    num_samples: int
    seconds: float
    budget: float
    left_out: tuple[str, ...]

    def lines(self) -> list[str]:
        head = (f"time budget {in_words(self.budget)}: plan estimated at "
                f"{in_words(self.seconds)}")
        if not self.left_out:
            return [f"{head}; the whole space fits"]
        return [f"{head}; left out:", *(f"  {w}" for w in self.left_out)]

    def record(self) -> dict:
        """What the search's state keeps of it (JSON), so that --resume trains the same cut
        space (``resumed``)."""
        width = (self.space.get("model_kwargs") or {}).get("width")
        return {"budget": self.budget, "seconds": self.seconds, "left_out": list(self.left_out),
                "num_samples": self.num_samples, "width": width,
                **{k: grid_values(self.space, k) for k in ("batch_size", "epochs")}}

    def params(self) -> dict:
        """The parent run's params: the budget, the estimate and what was left out."""
        return {"budget_seconds": round(self.budget), "budget_plan_seconds": round(self.seconds),
                "budget_left_out": "; ".join(self.left_out) or "nothing"}


def fit(space: dict, num_samples: int, budget: float, estimate: Estimate, *, at_a_time: int,
        widths: tuple[int | None, ...] = (None,), what: str = "search") -> Fit:
    """The best plan of ``space`` (``num_samples`` samples) whose estimate fits ``budget``
    seconds, ``at_a_time`` trials side by side, over ``widths`` (widest first; the space's own
    width among them); NothingFits when none does."""
    axes = Axes.of(space, num_samples, widths)
    seconds: dict = {}
    for width in axes.widths:  # widest first: a narrower width is priced (and its throughput
        for cut in _cuts(axes, width):  # measured) only when no plan of the wider ones fits
            seconds[cut] = estimate(cut.space(space, axes), cut.samples)
        if any(s <= budget for s in seconds.values()):
            break
    fitting = [c for c, s in seconds.items() if s <= budget]
    if not fitting:
        raise NothingFits(what, budget, min(seconds.values()))
    best = max(fitting, key=lambda c: _rank(c, axes, at_a_time))
    return Fit(best.space(space, axes), best.samples, seconds[best], budget,
               tuple(_left_out(best, axes, seconds, budget)))


def _lengths(values) -> str:
    values = list(values)
    return f"{values[0]}-{values[-1]}" if len(values) > 2 else ",".join(map(str, values))


def _left_out(best: Cut, axes: Axes, seconds: dict, budget: float) -> list[str]:
    """Each cut of ``best`` in words, with the estimate of the next step it did not take."""
    out = []
    if best.width != axes.widths[0]:
        wider = Cut(axes.widths[axes.widths.index(best.width) - 1], 1,
                    axes.lengths[0] if axes.lengths else None, 1)
        out.append(f"width {axes.widths[0]} (width {best.width} kept: at width {wider.width} "
                   f"the smallest plan takes {in_words(seconds[wider])})")
    if axes.lengths and best.longest != axes.lengths[-1]:
        kept = [e for e in axes.lengths if e <= best.longest]
        cut = [e for e in axes.lengths if e > best.longest]
        longer = Cut(best.width, best.batches, cut[0], best.samples)
        out.append(f"epochs {_lengths(cut)} (trials of {_lengths(kept)} epochs fit; with "
                   f"{cut[0]} the plan takes {in_words(seconds[longer])})")
    if axes.batch_sizes and best.batches < len(axes.batch_sizes):
        kept = sorted(axes.batch_sizes[:best.batches])
        more = Cut(best.width, best.batches + 1, best.longest, best.samples)
        out.append(f"batch sizes {','.join(map(str, sorted(axes.batch_sizes[best.batches:])))} "
                   f"(batch {','.join(map(str, kept))} kept; one more takes "
                   f"{in_words(seconds[more])})")
    if best.samples < axes.samples:
        more = Cut(best.width, best.batches, best.longest, best.samples + 1)
        out.append(f"{axes.samples - best.samples} of {axes.samples} samples ({best.samples} "
                   f"fit; {best.samples + 1} take {in_words(seconds[more])})")
    return out


# --- a pipeline's budget, stage by stage -------------------------------------------------------

# what a pipeline keeps for its report: its reports took 1m 00s of quick's 25 min (4%) and
# 1m 51s of standard's 1h 36m (2%) on 2 cores (docs/profiles.md)
REPORT_SHARE, REPORT_LEAST_S = 0.04, 90.0


def report_reserve(budget: float) -> float:
    return max(REPORT_LEAST_S, REPORT_SHARE * budget)


def stage_seconds(left: float, share: float, shares_left: float) -> float:
    """A search stage's budget: what is ``left`` of the pipeline's for its searches (the
    report's reserve taken off), in proportion to its kind's share (search/kinds.py
    ``budget_share``) among the stages still to run. Re-planned before each stage, from what
    the earlier ones really took."""
    return max(0.0, left) * share / shares_left if shares_left > 0 else 0.0
