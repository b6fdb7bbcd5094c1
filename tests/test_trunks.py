"""The wsd schedule and shared trunks: trials of different lengths computed as one trunk and
their own decays, with exactly an independent run's numbers; ASHA across lengths on the trunk."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import torch
from conftest import need_real_data, run_trial, weights
from ray.tune.schedulers import TrialScheduler

from search.asha import ScheduleAwareASHA
from search.records import asha_tags, scalar_metrics
from trainables import data
from trainables.config import TrainConfig
from trainables.schedule import branch_epoch, decay_epochs, lr_at
from trainables.trunk import branch_points, place
from trainables.trunk_store import Trunk

pytestmark = pytest.mark.usefixtures("torch_threads_kept")  # trials set torch's threads


SIZE = 300  # 270 training images, five batches an epoch: what equality of numbers needs


@pytest.fixture(scope="module")
def split():
    return data.load_split(need_real_data(), train_size=SIZE, seed=0)


# --- the schedule ------------------------------------------------------------------------------

def test_wsd_is_constant_then_decays_to_zero_batch_by_batch():
    cfg = TrainConfig(schedule="wsd", epochs=12, warmup_epochs=2, lr=0.1, decay_fraction=0.2)
    assert decay_epochs(cfg) == 2 and branch_epoch(cfg) == 10
    assert [lr_at(cfg, e) for e in range(2)] == [cfg.warmup_lr] * 2
    assert [lr_at(cfg, e) for e in range(2, 10)] == [0.1] * 8
    assert lr_at(cfg, 10) == pytest.approx(0.1) and lr_at(cfg, 10, 0.5) == pytest.approx(0.075)
    assert lr_at(cfg, 11) == pytest.approx(0.05) and lr_at(cfg, 11, 1.0) == pytest.approx(0)
    cos = TrainConfig(schedule="wsd", epochs=12, warmup_epochs=2, lr=0.1, decay_shape="cosine")
    assert lr_at(cos, 11) == pytest.approx(0.05) and lr_at(cos, 10, 0.5) < 0.1
    # every length shares the stable phase; the decay is at least one epoch
    for epochs in (3, 4, 6, 8, 12, 20, 200):
        c = TrainConfig(schedule="wsd", epochs=epochs, warmup_epochs=2)
        assert decay_epochs(c) >= 1 and branch_epoch(c) + decay_epochs(c) == epochs
    assert branch_epoch(TrainConfig(schedule="cosine", epochs=12, warmup_epochs=2)) == 2
    assert branch_points(cfg, [4, 6, 8, 12]) == [3, 5, 7, 10]


def test_bad_decay_settings_are_refused():
    from trainables.config import ConfigError

    with pytest.raises(ConfigError, match="decay fraction"):
        TrainConfig(schedule="wsd", decay_fraction=0)
    with pytest.raises(ConfigError, match="decay shape"):
        TrainConfig(schedule="wsd", decay_shape="step")


# --- shared trunks ---------------------------------------------------------------------------

NUMBERS = ("train_loss", "val_loss", "val_acc", "lr")


def numbers(results):
    return [tuple(r[k] for k in NUMBERS) for r in results]


def base(**kw):
    kw = {"model": "cnn", "augment": "flip", "batch_size": 64, "warmup_epochs": 1, "epochs": 8,
          "schedule": "wsd", "device": "cpu", "num_threads": 1, **kw}
    return TrainConfig(**kw).to_dict()


def test_branched_trials_give_an_independent_runs_numbers(split, tmp_path):
    """The 8-epoch trial computes the trunk (branch points 3, 5, 7 of lengths 4, 6, 8); the
    4- and 6-epoch trials after it compute only their decay, and every epoch of each equals
    an independent run of the same seed, weights included."""
    cache = {"trunk_cache": str(tmp_path / "trunks"), "trunk_lengths": [4, 6, 8]}
    _, long = run_trial(split, {**base(), **cache})
    assert [r["epochs_computed"] for r in long] == [1] * 8
    assert not any(r["shared"] for r in long)
    assert [r["trunk"] for r in long] == [True] * 7 + [False]
    trunk = next(p for p in (tmp_path / "trunks").iterdir() if p.is_dir())
    assert sorted(p.name for p in trunk.glob("*.pt")) == [
        "epoch-0003.pt", "epoch-0005.pt", "epoch-0007.pt"]
    for epochs in (4, 6):
        branched, results = run_trial(split, {**base(epochs=epochs), **cache})
        alone, own = run_trial(split, base(epochs=epochs))  # no trunk: every epoch computed
        assert numbers(results) == numbers(own)
        assert torch.equal(weights(branched.state.model), weights(alone.state.model))
        b = epochs - 1
        assert [r["shared"] for r in results] == [True] * b + [False]
        assert [r["epochs_computed"] for r in results] == [0] * b + [1]
        assert [r["warmup_reused"] for r in results] == [True] + [False] * b
        # the branch epoch's result carries the trunk's weights there: it may be checkpointed
        assert [r["should_checkpoint"] for r in results] == [False] * (b - 1) + [True, True]
        # and the trunk's epochs are the long trial's
        assert numbers(results[:b]) == numbers(long[:b])
    assert len(list(trunk.glob("*.pt"))) == 3  # nothing more was stored


def test_the_trunk_key_tells_a_compiled_trunk_from_an_eager_one():
    """A compiled trunk's numbers differ from an eager one's by rounding: another key. The
    --compile setting itself is not in the key, the path it resolved to is (an eager trunk's
    key is the one it had before the engine could compile); the trials' lengths are not."""
    from dataclasses import replace

    from trainables.fastpath import FP32, FastPath
    from trainables.trunk import trunk_key

    cfg = TrainConfig.from_dict(base())
    eager = trunk_key(cfg, "data", FP32)
    assert trunk_key(replace(cfg, compile="off"), "data", FP32) == eager
    assert trunk_key(replace(cfg, epochs=4), "data", FP32) == eager
    compiled = trunk_key(cfg, "data", FastPath("fp32", False, True))
    assert compiled != eager
    assert trunk_key(replace(cfg, compile="on", epochs=4), "data",
                     FastPath("fp32", False, True)) == compiled


def test_a_longer_trial_extends_the_trunk_from_its_last_branch_point(split, tmp_path):
    cache = {"trunk_cache": str(tmp_path / "trunks"), "trunk_lengths": [4, 8]}
    _, short = run_trial(split, {**base(epochs=4), **cache})
    assert sum(r["epochs_computed"] for r in short) == 4
    _, long = run_trial(split, {**base(epochs=8), **cache})
    # epochs 1..3 from the trunk's history, 4..7 extend it, 8 its decay
    assert [r["shared"] for r in long] == [True] * 3 + [False] * 5
    assert sum(r["epochs_computed"] for r in long) == 5
    _, alone = run_trial(split, base(epochs=8))
    assert numbers(long) == numbers(alone)


def test_a_damaged_trunk_checkpoint_is_computed_again(split, tmp_path):
    cache = {"trunk_cache": str(tmp_path / "trunks"), "trunk_lengths": [4, 6]}
    run_trial(split, {**base(epochs=6), **cache})
    trunk = next(p for p in (tmp_path / "trunks").iterdir() if p.is_dir())
    (trunk / "epoch-0003.pt").write_bytes(b"half a checkpoint")
    _, four = run_trial(split, {**base(epochs=4), **cache})
    _, alone = run_trial(split, base(epochs=4))
    assert numbers(four) == numbers(alone)
    # epochs 1..3 reported from the history; the weights at 3 computed again (3 epochs), then
    # the decay
    assert [r["shared"] for r in four] == [True, True, True, False]
    assert sum(r["epochs_computed"] for r in four) == 4


def _trial_in_a_process(epochs: int, cache: dict, queue) -> None:
    """A trial in a process of its own, as Ray runs it (torch's random state is per process)."""
    split = data.load_split(need_real_data(), train_size=SIZE, seed=0)
    queue.put((epochs, run_trial(split, {**base(epochs=epochs), **cache})[1]))


@pytest.mark.slow  # two trials in processes of their own, 14 epochs
def test_two_trials_extending_one_trunk_at_once_compute_it_once(split, tmp_path):
    """Side by side: one holds the trunk while it computes its epochs; the other waits for it,
    then reports them from the trunk's history (whichever started first)."""
    cache = {"trunk_cache": str(tmp_path / "trunks"), "trunk_lengths": [6, 8]}
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_trial_in_a_process, args=(e, cache, queue)) for e in (6, 8)]
    for p in procs:
        p.start()
    out = dict(queue.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    computed = sum(r["epochs_computed"] for rs in out.values() for r in rs)
    assert computed == 7 + 1 + 1  # the trunk to epoch 7 once, and each decay
    for epochs, results in out.items():
        assert numbers(results) == numbers(run_trial(split, base(epochs=epochs))[1])


def test_trunk_history_is_what_the_holder_recorded(split, tmp_path):
    trunk = Trunk(tmp_path, "k", [2])
    assert trunk.history() == [] and not trunk.held
    (trunk.folder / "history.json").write_text("{not json")
    assert trunk.history() == []  # unreadable: as if nothing had been computed


# --- ASHA across lengths on the trunk ---------------------------------------------------------

class FakeTrial:
    status = "RUNNING"

    def __init__(self, trial_id, batch_size, epochs, lengths=(4, 8, 12)):
        self.trial_id = trial_id
        self.config = {**base(epochs=epochs), "batch_size": batch_size, "warmup_epochs": 2,
                       "trunk_cache": "/ws/trunks", "trunk_lengths": list(lengths)}


def test_asha_compares_batch_sizes_on_the_trunk_and_cuts_a_trunk_with_its_branches():
    asha = ScheduleAwareASHA(grace_period=2, reduction_factor=2)
    trials = {(b, e): FakeTrial(f"b{b}e{e}", b, e) for b in (64, 128, 256) for e in (4, 8, 12)}
    for t in trials.values():
        asha.on_trial_add(None, t)
    # branch epochs: 4 -> 3, 8 -> 7, 12 -> 10; the trunk's rungs: 2, 4, 8 of the 12 epochs
    assert asha._trunk(trials[64, 12])[1:] == (10, [2, 4, 8])
    assert place(trials[64, 4].config).trunk == place(trials[64, 12].config).trunk
    assert place(trials[64, 4].config).trunk != place(trials[128, 4].config).trunk

    def report(b, e, epoch, acc):
        return asha.on_trial_result(None, trials[b, e], {"epoch": epoch, "val_acc": acc})

    assert report(64, 4, 2, 0.80) == TrialScheduler.CONTINUE
    # another length of another batch size, at the same epoch and rate: compared, and cut
    assert report(256, 12, 2, 0.50) == TrialScheduler.STOP
    why = asha.stops["b256e12"]
    assert why["rung"] == 2 and why["trunk"] == "batch size 256" and why["compared_with"] == 1
    assert "shared trunk" in asha_tags(why)["stop_reason"]
    # every trial of that trunk stops at its next trunk epoch: none of its branches starts
    assert report(256, 4, 1, 0.40) == TrialScheduler.STOP
    assert asha.stops["b256e4"]["epoch"] == 1
    # a trial of a trunk already ranked at a rung goes on without being ranked again
    assert report(64, 12, 2, 0.80) == TrialScheduler.CONTINUE
    assert asha.trunk_rungs[2] == {place(trials[64, 4].config).trunk: 0.80,
                                   place(trials[256, 4].config).trunk: 0.50}
    # in its decay (after epoch 3), a 4-epoch trial is judged among 4-epoch trials only: the
    # 4-epoch trials have no rung in their decay, so it ends
    assert report(64, 4, 4, 0.10) == TrialScheduler.CONTINUE
    assert report(128, 4, 2, 0.90) == TrialScheduler.CONTINUE  # above the cutoff


def test_a_margin_spares_a_trunk_within_it_and_cuts_one_behind_by_more():
    """With two trunks a rung compares two values: ASHA's rule alone cuts the lower at any
    gap. A margin of 0.01 lets a trunk 0.005 behind go on and cuts one 0.02 behind, and the
    record says which cutoff it was held to."""
    asha = ScheduleAwareASHA(grace_period=2, reduction_factor=2, margin=0.01)
    trials = {b: FakeTrial(f"b{b}", b, 12) for b in (64, 128, 256)}
    for t in trials.values():
        asha.on_trial_add(None, t)

    def report(b, epoch, acc):
        return asha.on_trial_result(None, trials[b], {"epoch": epoch, "val_acc": acc})

    assert report(64, 2, 0.800) == TrialScheduler.CONTINUE
    assert report(128, 2, 0.795) == TrialScheduler.CONTINUE  # 0.005 behind: within the margin
    assert report(256, 2, 0.780) == TrialScheduler.STOP  # cutoff 0.7975 - 0.01
    why = asha.stops["b256"]
    assert why["cutoff"] == pytest.approx(0.7875) and why["margin"] == 0.01
    assert "0.7875 (with the margin 0.0100)" in asha_tags(why)["stop_reason"]


def test_without_wsd_asha_keeps_each_length_apart():
    asha = ScheduleAwareASHA(grace_period=2, reduction_factor=2)
    a, b = FakeTrial("a", 64, 8), FakeTrial("b", 128, 12)
    for t in (a, b):
        t.config["schedule"] = "cosine"
        asha.on_trial_add(None, t)
    assert asha._trunk(a)[0] is None
    assert asha.on_trial_result(None, a, {"epoch": 2, "val_acc": 0.9}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, b, {"epoch": 2, "val_acc": 0.1}) == TrialScheduler.CONTINUE


def test_the_trunk_flags_reach_mlflow_as_numbers():
    metrics = scalar_metrics({"epoch": 3, "val_acc": 0.5, "shared": True, "trunk": False,
                              "warmup_reused": False, "done": True, "epochs_computed": 0})
    assert metrics["shared"] == 1.0 and metrics["trunk"] == 0.0 and "done" not in metrics
    assert metrics["epochs_computed"] == 0.0



def test_a_resumed_asha_replays_results_in_the_order_they_were_reported(tmp_path):
    """Tune restores trials in no set order: the 64 trunk's trial comes back before the 32
    one's, whose rung value came first. The rungs are rebuilt in the order of the results, so
    the 64 trunk is cut as it was, and its 3-epoch trial, not started before the kill, stops at
    its first epoch."""
    import json

    def restored(trial_id, batch, epochs, rows):
        t = FakeTrial(trial_id, batch, epochs, lengths=(2, 3))
        t.config["warmup_epochs"] = 1
        t.status = "TERMINATED"
        t.path = str(tmp_path / trial_id)
        Path(t.path).mkdir()
        Path(t.path, "result.json").write_text("".join(
            json.dumps({"epoch": e, "val_acc": v, "reported_at": at}) + "\n"
            for e, v, at in rows))
        return t

    first = restored("b32e2", 32, 2, [(1, 0.55, 100.0), (2, 0.50, 101.0)])
    second = restored("b64e2", 64, 2, [(1, 0.325, 102.0)])
    asha = ScheduleAwareASHA(grace_period=1, reduction_factor=2)
    for t in (second, first):  # as Tune restored them
        asha.on_trial_add(None, t)
    assert asha.trunk_cuts[place(second.config).trunk]["rung"] == 1
    assert "b64e2" not in asha.stops  # it had ended: a record of its stop is the lineage's
    late = FakeTrial("b64e3", 64, 3, lengths=(2, 3))
    late.config["warmup_epochs"] = 1
    asha.on_trial_add(None, late)
    report = {"epoch": 1, "val_acc": 0.325}
    assert asha.on_trial_result(None, late, report) == TrialScheduler.STOP


# --- the one owner: a trial's place, as configs, runs and the report see it -------------------

def test_a_place_is_the_same_from_a_config_its_recorded_run_and_its_params(tmp_path):
    """trainables/trunk.py answers for Tune's config; the trial's run records that answer when it
    is made (search/records.py), the report reads it back (analysis/select.py), and a run
    recorded without it is asked from its params: the same trunk, the same shared epochs."""
    from mlflow.tracking import MlflowClient

    from search.records import flat_params, new_trial_run
    from trainables.trunk import place_of_run

    def config(**kw):
        return {"model": "cnn", "batch_size": 64, "epochs": 8, "warmup_epochs": 1,
                "schedule": "wsd", "decay_fraction": 0.2, "lr": 0.01, "augment": "flip",
                "trunk_cache": str(tmp_path / "trunks"), "trunk_lengths": [4, 8],
                "num_threads": 1, **kw}

    eight, four, other = config(), config(epochs=4), config(lr=0.02)
    assert place(eight).group == place(four).group != place(other).group
    assert (place(eight).shared, place(four).shared) == (7, 3)  # decays of 1 epoch each
    assert place(eight).trunk == place(eight).group and place(eight).branch == 7
    uncached = place(config(trunk_cache=None))
    assert uncached.shared == 7 and uncached.branch == 0 and uncached.trunk is None
    cosine = place(config(schedule="cosine"))
    assert cosine.shared == 1 and cosine.group == place(config(schedule="cosine", lr=0.5)).group

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("g")
    parent = client.create_run(exp).info.run_id
    run = new_trial_run(client, exp, parent, "t_00000", eight)
    recorded = client.get_run(run.info.run_id).data
    assert place_of_run(recorded.tags, {}) == place(eight)
    params = flat_params(eight)  # as MLflow holds them: text
    assert place_of_run({}, params).shared == 7
    assert place_of_run({}, params).group == place_of_run({}, flat_params(four)).group


def test_the_epochs_left_count_a_trunk_once():
    """Trials of 4, 8 and 12 epochs on one trunk branch at 3, 7 and 10 (warm-up 1): the trunk's
    10 epochs once, then 1 + 1 + 2 of their own; a trial that shares none counts its own."""
    from trainables.trunk import Progress, epochs_at_most, epochs_left

    def config(epochs, **kw):
        return {"model": "cnn", "batch_size": 64, "epochs": epochs, "warmup_epochs": 1,
                "schedule": "wsd", "trunk_cache": "/ws/trunks", **kw}

    configs = [config(4), config(8), config(12)]
    assert epochs_at_most(configs) == 14
    assert epochs_at_most([*configs, config(6, trunk_cache=None)]) == 20
    first, second, third = (place(c) for c in configs)
    # the 4-epoch trial finished (the trunk at 3); the 8-epoch one is at 5
    assert epochs_left([Progress(first, 4, 4, open=False), Progress(second, 8, 5),
                        Progress(third, 12, 0)]) == (10 - 5) + 1 + 2
