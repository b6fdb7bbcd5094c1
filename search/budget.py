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

Every figure comes from a function passed in, ``estimate(param_space, num_samples)`` (the
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

    def __init__(self, what: str, budget: float, smallest: float):
        self.what, self.smallest = what, smallest
        super().__init__(f"a time budget of {in_words(budget)} fits no {what} on this machine: "
                         f"its smallest plan needs about {in_words(smallest)}; pass "
                         f"--time-budget {budget_text(smallest)} or more")


def budget_text(seconds: float) -> str:
    """Seconds as --time-budget takes them, rounded up to a whole minute (90 s and under: s)."""
    if seconds <= 90:
        return f"{int(-(-seconds // 1))}s"
    minutes = int(-(-seconds // 60))
    hours, minutes = divmod(minutes, 60)
    return (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes or not hours else "")


# --- the axes of a space ----------------------------------------------------------------------

def _grid(space: dict, key: str) -> list | None:
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
        lengths, batches = _grid(space, "epochs"), _grid(space, "batch_size")
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
        out = copy.deepcopy(space)
        if axes.lengths is not None:
            kept = [e for e in axes.lengths if e <= self.longest]
            out["epochs"] = {"grid_search": kept}
            if "trunk_lengths" in out:
                out["trunk_lengths"] = kept
        if axes.batch_sizes is not None:
            out["batch_size"] = {"grid_search": sorted(axes.batch_sizes[:self.batches])}
        if self.width is not None:
            out["model_kwargs"] = {**(out.get("model_kwargs") or {}), "width": self.width}
        return out


def _cuts(axes: Axes) -> list[Cut]:
    """Every plan of the space."""
    lengths = axes.lengths or (None,)
    batches = range(1, len(axes.batch_sizes) + 1) if axes.batch_sizes else (1,)
    return [Cut(w, b, longest, n) for w in axes.widths for b in batches for longest in lengths
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
                **{k: _grid(self.space, k) for k in ("batch_size", "epochs")}}

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
    seconds = {}
    for cut in _cuts(axes):
        seconds[cut] = estimate(cut.space(space, axes), cut.samples)
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


# --- a search fitted to its budget (search/driver.py asks, before anything is recorded) ---------

def widths_of(space: dict, fixed: bool = False) -> tuple[int | None, ...]:
    """The widths a search may train at, widest first: the space's own (alone when ``fixed``:
    the user's --width, a class-weight study's winner), then each narrower one the model's card
    names (its default and its profiles')."""
    from trainables.models import card

    own = (space.get("model_kwargs") or {}).get("width")
    model = card(str(space.get("model")))
    if own is None or fixed or not model.takes_width:
        return (own,)
    ladder = {model.width, *model.widths.values()}
    return (own, *sorted((w for w in ladder if w < own), reverse=True))


def fit_search(search, earlier, at_a_time: int, split, opened):
    """(``search`` cut to what fits until its run context's deadline (``opened.context``,
    search/context.py), its Fit), the plan printed;
    ``earlier(config)``: the throughput of earlier trials of a config's model on this hardware
    (search/throughput.py), None when there is none: then a short measurement here
    (search/probe.py), kept in ``opened.measured`` by model. NothingFits when nothing does,
    naming the budget the command needs (what it spent already, Ray's start and the
    measurement, included)."""
    import time

    from search import probe
    from search.plan import model_text
    from search.throughput import model_of

    known: dict = {}  # model -> its throughput, earlier or measured
    batches = _grid(search.param_space, "batch_size") or [search.param_space["batch_size"]]
    threads = int(max(1, (search.resources or (1, 0))[0]))

    def throughput_of(config: dict):
        key = model_of(config)
        if key not in known:
            known[key] = earlier(config)
            if known[key] is None:
                began = time.time()
                known[key] = opened.measured[key] = probe.measure(config, batches, split,
                                                                  threads)
                rates = ", ".join(f"{r:.0f} at batch {b}"
                                  for b, r in sorted(known[key].images_per_s.items()))
                print(f"time budget: no earlier {model_text(config)} trial on this machine; "
                      f"measured {rates} img/s in {in_words(time.time() - began)}",
                      flush=True)
        return known[key]

    for config in _widths_first(search.param_space, search.width_fixed):
        throughput_of(config)  # each width measured before the clock is read
    given, deadline = opened.context.budget, opened.context.deadline
    try:
        found = fitted(search, deadline - time.time(), throughput_of, at_a_time, split)
    except NothingFits as e:
        spent = given - (deadline - time.time())
        raise NothingFits(e.what, given, e.smallest + spent) from None
    print("\n".join(found.lines()), flush=True)
    return applied(search, found), found


def _widths_first(space: dict, fixed: bool) -> list[dict]:
    """A flat config of ``space`` at each width it may train at."""
    from search.plan import trial_configs

    config = trial_configs(space)[0]
    return [{**config, "model_kwargs": {**(config.get("model_kwargs") or {}), "width": w}}
            if w is not None else config for w in widths_of(space, fixed)]


def fitted(search, budget: float, throughput_of, at_a_time: int, split) -> Fit:
    """The plan of ``search`` (search/context.py ``Search``: its space, samples, the fewest
    samples it takes and whether its width is fixed) that fits ``budget`` seconds, ``at_a_time``
    trials side by side: ``throughput_of(config)`` gives a trial's model's throughput (earlier
    trials, else a short measurement: search/probe.py); NothingFits when none fits."""
    from search import plan

    space = search.param_space

    def estimate(cut: dict, num_samples: int) -> float:
        return plan.make(cut, num_samples, asha=False, at_a_time=at_a_time,
                         train_images=len(split.y_train), val_images=len(split.y_val),
                         throughput=throughput_of).seconds or 0.0

    what = f"{search.kind} search {search.name}"
    return fit(space, search.num_samples, budget, _at_least(estimate, search.least_samples),
               at_a_time=at_a_time, widths=widths_of(space, search.width_fixed), what=what)


def _at_least(estimate: Estimate, least: int) -> Estimate:
    """An estimate that prices fewer than ``least`` samples out of any budget (a class-weight
    study needs its two starting points)."""
    return lambda space, n: estimate(space, n) if n >= least else float("inf")


def resumed(search, record: dict):
    """``search`` cut as its start's plan cut it (``Fit.record`` in its state)."""
    space = copy.deepcopy(search.param_space)
    for key in ("batch_size", "epochs"):
        if record.get(key) is not None:
            space[key] = {"grid_search": list(record[key])}
            if key == "epochs" and "trunk_lengths" in space:
                space["trunk_lengths"] = list(record[key])
    if record.get("width") is not None:
        space["model_kwargs"] = {**(space.get("model_kwargs") or {}), "width": record["width"]}
    return applied(search, Fit(space, record["num_samples"], record["seconds"],
                               record["budget"], tuple(record["left_out"])))


def applied(search, fit: Fit):
    """``search`` cut to ``fit``: its space and samples, and its parent run's params saying so."""
    from dataclasses import replace

    params = dict(search.params or {})
    space = fit.space
    for key, value in (("batch_sizes", _grid(space, "batch_size")),
                       ("epochs", _grid(space, "epochs")),
                       ("width", (space.get("model_kwargs") or {}).get("width"))):
        if key in params and value is not None:
            params[key] = value
    if "num_samples" in params:
        params["num_samples"] = fit.num_samples
    return replace(search, param_space=space, num_samples=fit.num_samples,
                   params={**params, **fit.params()})
