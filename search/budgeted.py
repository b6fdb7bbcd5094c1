"""A search cut to its time budget (search/budget.py chooses the plan): the widths it may train
at, the throughput the plan is priced with (earlier trials, else a short measurement here:
search/probe.py), the search's space, samples and parent-run params cut, and on --resume cut
again as its start's plan cut it. search/driver.py asks, before anything is recorded.
"""

from __future__ import annotations

import time
from dataclasses import replace

from search import probe
from search.budget import Estimate, Fit, NothingFits, cut_space, fit, grid_values
from search.plan import duration as in_words
from search.plan import make, model_text
from search.throughput import model_of
from trainables.models import card


def widths_of(space: dict, fixed: bool = False) -> tuple[int | None, ...]:
    """The widths a search may train at, widest first: the space's own (alone when ``fixed``:
    the user's --width, a class-weight study's winner), then each narrower one the model's card
    names (its default and its profiles')."""
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
    known: dict = {}  # model -> its throughput, earlier or measured
    batches = grid_values(search.param_space, "batch_size") or [search.param_space["batch_size"]]
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

    given, deadline = opened.context.budget, opened.context.deadline
    try:
        found = fitted(search, deadline - time.time(), throughput_of, at_a_time, split)
        if found.seconds > deadline - time.time():  # the measurements took what it had left:
            found = fitted(search, deadline - time.time(), throughput_of, at_a_time, split)
    except NothingFits as e:
        need = e.smallest + given - (deadline - time.time())  # what it spent measuring included
        if (whole := opened.context.whole) is not None:  # a pipeline's stage: the pipeline's
            raise NothingFits(whole.what, whole.budget, need, whole.need(need), e.what) from None
        raise NothingFits(e.what, given, need) from None
    print("\n".join(found.lines()), flush=True)
    return applied(search, found), found


def fitted(search, budget: float, throughput_of, at_a_time: int, split) -> Fit:
    """The plan of ``search`` (search/context.py ``Search``: its space, samples, the fewest
    samples it takes and whether its width is fixed) that fits ``budget`` seconds, ``at_a_time``
    trials side by side: ``throughput_of(config)`` gives a trial's model's throughput (earlier
    trials, else a short measurement: search/probe.py); NothingFits when none fits."""
    space = search.param_space

    def estimate(cut: dict, num_samples: int) -> float:
        return make(cut, num_samples, asha=False, at_a_time=at_a_time,
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
    space = cut_space(search.param_space, record.get("batch_size"), record.get("epochs"),
                      record.get("width"))
    return applied(search, Fit(space, record["num_samples"], record["seconds"],
                               record["budget"], tuple(record["left_out"])))


def applied(search, fit: Fit):
    """``search`` cut to ``fit``: its space and samples, and its parent run's params saying so."""
    params = dict(search.params or {})
    space = fit.space
    for key, value in (("batch_sizes", grid_values(space, "batch_size")),
                       ("epochs", grid_values(space, "epochs")),
                       ("width", (space.get("model_kwargs") or {}).get("width"))):
        if key in params and value is not None:
            params[key] = value
    if "num_samples" in params:
        params["num_samples"] = fit.num_samples
    return replace(search, param_space=space, num_samples=fit.num_samples,
                   params={**params, **fit.params()})
