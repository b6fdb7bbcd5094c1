"""--time-budget's planner (search/budget.py): a pure function of the space, the budget, the
throughput and the trials side by side. Synthetic throughputs, the real trunk arithmetic
(search/plan.py, trainables/trunk.py)."""

from __future__ import annotations

import argparse
import json

import pytest

from search import budget, budgeted, plan
from search.throughput import Throughput
from trainables.config import TrainConfig

SEED_BATCHES = (32, 64, 128, 256, 512)
SEED_LENGTHS = (20, 30, 40, 50, 60, 70, 80, 90, 100, 200)
TRAIN, VAL = 27_000, 3_000


def grid_space(batch_sizes=SEED_BATCHES, lengths=SEED_LENGTHS, width=16,
               trunk_cache: str | None = "/tmp/trunks") -> dict:
    """A grid's param_space as search/grid.py builds it (a plain grid_search dict: no Ray)."""
    base = TrainConfig(model="resnet18", model_kwargs={"width": width}, warmup_epochs=5,
                       schedule="wsd", decay_fraction=0.2)
    return {**base.to_dict(), "trunk_cache": trunk_cache, "trunk_lengths": list(lengths),
            "epochs": {"grid_search": list(lengths)},
            "batch_size": {"grid_search": list(batch_sizes)}}


def rate(width: int) -> Throughput:
    """Synthetic: 64 / width times 200 images/s at width 64 (so width 16: 800 img/s), a little
    faster at larger batches; validation 3 times the training speed; 5 s of start-up."""
    base = 200 * 64 / width
    return Throughput({b: base * (1 + 0.05 * i) for i, b in enumerate(SEED_BATCHES)},
                      1 / (3 * base), 3, 5.0)


def estimate(at_a_time: int = 2):
    """The search's plan's seconds (search/plan.py) at the synthetic throughputs; each space
    estimated once (the planner asks of a space's every plan in each fit)."""
    known: dict = {}

    def seconds(space: dict, num_samples: int) -> float:
        key = (json.dumps(space, sort_keys=True, default=repr), num_samples)
        if key not in known:
            known[key] = plan.make(space, num_samples, asha=False, at_a_time=at_a_time,
                                   train_images=TRAIN, val_images=VAL,
                                   throughput=lambda c: rate(c["model_kwargs"]["width"])).seconds
        return known[key]
    return seconds


def kept(fit: budget.Fit) -> tuple[list, list, int]:
    s = fit.space
    return s["batch_size"]["grid_search"], s["epochs"]["grid_search"], s["model_kwargs"]["width"]


# --- the flag -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("25m", 1500), ("2h", 7200), ("1h30m", 5400), ("1.5h", 5400), ("600", 600),
    ("2h 5m 10s", 7510)])
def test_a_duration_in_the_forms_the_flag_takes(text, seconds):
    assert budget.duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "2x", "0m", "m", "1m2h"])
def test_a_duration_it_cannot_read_says_what_it_takes(text):
    with pytest.raises(argparse.ArgumentTypeError, match=r"90s, 25m, 2h or 1h30m|more than 0"):
        budget.duration(text)


@pytest.mark.parametrize(("seconds", "text"), [(30.2, "31s"), (95, "2m"), (3600, "1h"),
                                               (5401, "1h31m")])
def test_the_smallest_budget_as_the_flag_takes_it(seconds, text):
    assert budget.budget_text(seconds) == text
    assert budget.duration(text) >= seconds


# --- what the planner keeps and cuts ----------------------------------------------------------

def test_the_middle_batch_sizes_first():
    assert budget.middle_first(SEED_BATCHES) == [128, 64, 256, 32, 512]
    assert budget.middle_first((64, 128)) == [64, 128]


def test_shared_trunks_make_the_shorter_lengths_nearly_free():
    """With trunks, every length up to the longest costs its decay only: keeping 20-40 costs
    little more than 40 alone, and the planner keeps every length under the longest it keeps."""
    seconds = estimate()
    only = seconds(grid_space(batch_sizes=(64, 128), lengths=(40,)), 1)
    three = seconds(grid_space(batch_sizes=(64, 128), lengths=(20, 30, 40)), 1)
    assert only < three < 1.3 * only  # the 20 and 30-epoch trials: their 4 and 6 decay epochs
    fit = budget.fit(grid_space(), 1, three * 1.01, seconds, at_a_time=2, widths=(16,))
    assert kept(fit) == ([64, 128], [20, 30, 40], 16)
    assert fit.seconds == pytest.approx(three)
    assert fit.left_out[0].startswith("epochs 50-200 (trials of 20-40 epochs fit; with 50 "
                                      "the plan takes")
    assert "batch sizes 32,256,512 (batch 64,128 kept" in fit.left_out[1]


def test_without_trunks_each_length_costs_its_own_epochs():
    seconds = estimate()
    shared = seconds(grid_space(batch_sizes=(64, 128), lengths=(20, 30, 40)), 1)
    alone = seconds(grid_space(batch_sizes=(64, 128), lengths=(20, 30, 40), trunk_cache=None),
                    1)
    # per batch size 20 + 30 + 40 epochs, against a 40-epoch trunk and two decays of 4 and 6
    assert alone == pytest.approx(shared * 90 / 50, rel=0.05)  # and each trial its start


def test_the_cores_are_filled_before_a_length_is_added():
    """Two trials side by side: two batch sizes at 30 epochs rather than one at 40, though one
    trunk of 40 epochs would fit."""
    seconds = estimate()
    one_at_40 = seconds(grid_space(batch_sizes=(128,), lengths=(20, 30, 40)), 1)
    two_at_30 = seconds(grid_space(batch_sizes=(64, 128), lengths=(20, 30)), 1)
    two_at_40 = seconds(grid_space(batch_sizes=(64, 128), lengths=(20, 30, 40)), 1)
    room = max(one_at_40, two_at_30)
    assert room < two_at_40
    fit = budget.fit(grid_space(), 1, room, seconds, at_a_time=2, widths=(16,))
    assert kept(fit)[:2] == ([64, 128], [20, 30])
    fit = budget.fit(grid_space(), 1, room, estimate(1), at_a_time=1, widths=(16,))
    assert kept(fit)[0] == [128]  # one at a time: the one batch size, longer


def test_a_bigger_budget_never_plans_less():
    seconds = estimate()
    widths = (64, 16, 4)
    ranks = []
    for minutes in range(10, 24 * 60, 20):
        try:
            fit = budget.fit(grid_space(width=64), 1, minutes * 60.0, seconds, at_a_time=2,
                             widths=widths)
        except budget.NothingFits:
            ranks.append(None)
            continue
        assert fit.seconds <= minutes * 60
        batches, lengths, width = kept(fit)
        ranks.append((-widths.index(width), min(len(batches), 2), max(lengths), len(batches)))
    found = [r for r in ranks if r is not None]
    assert found == sorted(found) and len(set(found)) > 5
    assert ranks.index(found[0]) == ranks.count(None)  # once something fits, something always does


def test_the_profiles_width_unless_even_its_smallest_plan_cannot_fit():
    seconds = estimate()
    smallest_at_64 = seconds(grid_space(batch_sizes=(128,), lengths=(20,), width=64), 1)
    fit = budget.fit(grid_space(width=64), 1, smallest_at_64 * 0.9, seconds, at_a_time=2,
                     widths=(64, 16, 4))
    assert kept(fit)[2] == 16
    assert fit.left_out[0].startswith("width 64 (width 16 kept: at width 64 the smallest plan "
                                      "takes")
    fit = budget.fit(grid_space(width=64), 1, smallest_at_64, seconds, at_a_time=2,
                     widths=(64, 16, 4))
    assert kept(fit) == ([128], [20], 64)


def test_samples_as_many_as_fit():
    """A class-weight search: its trials sampled, each the same cost: as many as fit."""
    space = {**grid_space(lengths=(8,), batch_sizes=(64,)), "epochs": 8, "batch_size": 64,
             "w0": _Sampled()}
    seconds = estimate()
    one = seconds(space, 1)
    fit = budget.fit(space, 40, one * 3.5 / 2, seconds, at_a_time=2, widths=(16,))
    assert fit.num_samples == 3  # two side by side, then one
    assert fit.left_out == ("37 of 40 samples (3 fit; 4 take " + plan.duration(
        seconds(space, 4)) + ")",)


def test_a_budget_nothing_fits_names_the_smallest_that_does():
    seconds = estimate()
    smallest = seconds(grid_space(batch_sizes=(128,), lengths=(20,), width=4), 1)
    with pytest.raises(budget.NothingFits) as e:
        budget.fit(grid_space(width=64), 1, smallest - 1, seconds, at_a_time=2,
                   widths=(64, 16, 4), what="resnet18 grid")
    assert e.value.smallest == pytest.approx(smallest)
    text = str(e.value)
    assert text.startswith("a time budget of ") and "fits no resnet18 grid on this machine" in text
    need = text.rsplit("--time-budget ", 1)[1].split()[0]
    assert budget.duration(need) >= smallest
    fit = budget.fit(grid_space(width=64), 1, budget.duration(need), seconds, at_a_time=2,
                     widths=(64, 16, 4))
    assert kept(fit)[1:] == ([20], 4)  # rounded up to a minute: room for a second batch size


class _Sampled:
    """A Tune search domain as search/plan.py recognises one (it has ``sample``)."""

    def sample(self):  # pragma: no cover - never drawn here
        return 1.0


# --- a search cut, and cut again on --resume --------------------------------------------------

def test_a_resumed_search_is_cut_as_its_start_was():
    """The state keeps the fit (Fit.record, JSON); --resume cuts the search's full space the same
    way, and the parent run's params say what was trained."""
    import json as json_

    from search.context import Search

    space = grid_space(width=64)
    full = Search("grid-resnet18", "grid", space, None, params={
        "batch_sizes": list(SEED_BATCHES), "epochs": list(SEED_LENGTHS), "width": 64,
        "model": "resnet18"})
    fit = budget.fit(space, 1, 3 * 3600, estimate(), at_a_time=2, widths=(64, 16, 4))
    started = budgeted.applied(full, fit)
    again = budgeted.resumed(full, json_.loads(json_.dumps(fit.record())))
    assert again.param_space == started.param_space == fit.space
    assert again.params == started.params
    batches, lengths, width = kept(fit)
    assert started.params["batch_sizes"] == batches and started.params["epochs"] == lengths
    assert started.params["width"] == width and started.param_space["trunk_lengths"] == lengths
    assert started.params["budget_seconds"] == 3 * 3600
    assert started.params["budget_left_out"] == "; ".join(fit.left_out)


def test_the_widths_a_search_may_train_at():
    """The model's card names them (trainables/models): ResNet18's profile widths and default,
    widest first, from the space's own; a given width alone; the CNN has none."""
    assert budgeted.widths_of(grid_space(width=64)) == (64, 16, 4)
    assert budgeted.widths_of(grid_space(width=16)) == (16, 4)
    assert budgeted.widths_of(grid_space(width=16), fixed=True) == (16,)
    cnn = {**grid_space(), "model": "cnn", "model_kwargs": {}}
    assert budgeted.widths_of(cnn) == (None,)


def test_a_pipeline_stage_gets_its_share_of_what_is_left():
    assert budget.stage_seconds(1000, 1.0, 3.5) == pytest.approx(1000 / 3.5)
    assert budget.stage_seconds(1000, 0.5, 0.5) == 1000  # the last stage: all that is left
    assert budget.stage_seconds(-5, 1.0, 2.0) == 0.0
    assert budget.report_reserve(25 * 60) == 90 and budget.report_reserve(2 * 3600) == 288
