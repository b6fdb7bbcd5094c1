"""A search's plan before its cost (search/plan.py, search/throughput.py): the trials, the epochs
an exhaustive run and the shared trunks compute, the estimate from earlier trials; printed before
the first trial and recorded on the parent run."""

from __future__ import annotations

import pytest
import ray
from conftest import environ_kept, write_idx_set
from ray import tune

from search import grid, plan
from search.profiles import PROFILES
from search.throughput import Throughput
from search.weights import Settings, WeightsOptions, make_search
from search.workspace import Workspace
from trainables import data
from trainables import trunk as trunks
from trainables.config import TrainConfig

pytestmark = pytest.mark.usefixtures("torch_threads_kept")  # trials set torch's threads


def grid_space(schedule: str = "wsd", trunk_cache: str | None = "/tmp/trunks",
               batch_sizes=(64, 128), lengths=(4, 6, 8, 12), **fields) -> dict:
    """A grid's param_space as search/grid.py builds it."""
    base = TrainConfig(model="cnn", warmup_epochs=2, schedule=schedule, decay_fraction=0.2,
                       **fields)
    return {**base.to_dict(), "trunk_cache": trunk_cache, "trunk_lengths": list(lengths),
            "epochs": tune.grid_search(list(lengths)),
            "batch_size": tune.grid_search(list(batch_sizes))}


# --- the arithmetic ---------------------------------------------------------------------------

def test_wsd_shares_everything_but_each_decay():
    configs = plan.trial_configs(grid_space())
    assert len(configs) == 8
    assert plan.describe(grid_space()) == "batch 64,128 x epochs 4,6,8,12"
    # decays of 1, 1, 1 and 2 epochs: branches at 3, 5, 7 and 10
    assert sorted(trunks.place(c).branch for c in configs if c["batch_size"] == 64) == [3, 5, 7, 10]
    groups = trunks.groups(configs)
    assert sorted(len(g) for g in groups) == [4, 4]  # one trunk per batch size
    for group in groups:
        assert trunks.epochs_exhaustive(group) == 4 + 6 + 8 + 12 == 30
        assert trunks.epochs_at_most(group) == 10 + (1 + 1 + 1 + 2) == 15
    assert trunks.epochs_exhaustive(configs) == 60 and trunks.epochs_at_most(configs) == 30


@pytest.mark.parametrize("model", ["cnn", "resnet18", "inception"])
def test_the_standard_profile_is_an_asha_grid_on_shared_trunks(model):
    """Each family's grid in `standard`: one trunk per batch size that the short trial branches
    off, so a lane costs its longest trial plus the short one's decay; ASHA's first rung lies in
    the shared constant-rate phase (it compares the trunks), the second inside the long trial."""
    profile = PROFILES["standard"]
    space = grid.space(grid.GridOptions(model=model, profile="standard"), model, "/tmp/trunks")
    configs = plan.trial_configs(space)
    (short, long), groups = profile.grid(model)[1], trunks.groups(configs)
    assert len(configs) == 4 and sorted(len(g) for g in groups) == [2, 2]
    # flips; ResNet18 flips and shifts (its 50-epoch trial memorised the set with flips alone)
    assert {c["augment"] for c in configs} == {"shift" if model == "resnet18" else "flip"}
    for group in groups:
        assert trunks.epochs_at_most(group) == long + (short - trunks.place(
            next(c for c in group if c["epochs"] == short)).branch)
    assert profile.grace_period < min(trunks.place(c).branch for c in configs)
    assert profile.grace_period * profile.reduction_factor < long


def test_other_schedules_share_the_warmup_only():
    configs = plan.trial_configs(grid_space("cosine"))
    assert {trunks.place(c).branch for c in configs} == {2}
    assert trunks.epochs_at_most(configs) == 2 * (2 + (2 + 4 + 6 + 10)) == 48
    # what the SGD phase reads does not split a warm-up: two rates, still one per batch size
    configs = plan.trial_configs({**grid_space("cosine"), "lr": tune.grid_search([0.01, 0.1])})
    assert len(configs) == 16 and len(trunks.groups(configs)) == 2
    assert trunks.epochs_at_most(configs) == 2 * (2 + 2 * (2 + 4 + 6 + 10)) == 92
    # under wsd the rate is read before the decay: a trunk per batch size and rate
    configs = plan.trial_configs({**grid_space(), "lr": tune.grid_search([0.01, 0.1])})
    assert len(trunks.groups(configs)) == 4 and trunks.epochs_at_most(configs) == 60


def test_without_trunk_cache_every_epoch_is_computed():
    for schedule in ("wsd", "cosine"):
        configs = plan.trial_configs(grid_space(schedule, trunk_cache=None))
        assert trunks.epochs_at_most(configs) == trunks.epochs_exhaustive(configs) == 60
        assert trunks.groups(configs) and all(len(g) == 1 for g in trunks.groups(configs))
    found = plan.make(grid_space(trunk_cache=None), 1, asha=False, at_a_time=2,
                      train_images=900, val_images=100)
    assert "60 epochs exhaustive, at most 60 computed (no shared trunks)" in found.line()
    assert "ASHA" not in found.line()


def test_the_class_weight_search_samples_one_config(tmp_path):
    split = data.load_split(write_idx_set(tmp_path / "small"), train_size=None, seed=0)
    options = WeightsOptions(model="resnet18", profile="smoke", workspace=str(tmp_path / "ws"))
    ws = Workspace.open(options.workspace)
    settings = Settings("resnet18", "weights-resnet18", num_samples=4, batch_size=64, epochs=3,
                        width=4, warmup=1, found={})
    search = make_search(options, settings, ws, split)
    found = plan.make(search.param_space, search.num_samples, asha=True, at_a_time=2,
                      train_images=len(split.y_train), val_images=len(split.y_val))
    assert (found.trials, found.exhaustive, found.at_most, found.shared) == (4, 12, 12, False)
    assert found.line() == (
        "plan: 4 trials (class weights w0-w9 sampled 4 times; batch 64, epochs 3); 12 epochs "
        "exhaustive, at most 12 computed (no shared trunks; ASHA may stop trials sooner); no "
        "time estimate yet (no earlier resnet18 width 4 trial on this machine), 2 trials at a "
        "time")
    assert "plan_estimated_seconds" not in found.params()


def test_the_estimate_counts_every_image_an_epoch_trains_on():
    """The CNN's offline augmentation triples its training set; validation adds its share."""
    space = {**TrainConfig(model="cnn", warmup_epochs=1, epochs=3, batch_size=64).to_dict()}
    seen = Throughput({64: 300.0}, None, 2)
    offline = plan.make({**space, "augment": "offline"}, 1, asha=False, at_a_time=1,
                        train_images=900, val_images=100, throughput=lambda c: seen)
    assert offline.seconds == pytest.approx(3 * 2700 / 300)
    assert offline.images_per_s == pytest.approx(300)
    assert "about 27 s at 300 img/s (training only, from 2 earlier cnn trials on this " \
        "machine)" in offline.line()
    assert offline.params()["plan_estimate_covers"] == "training"
    flips = plan.make({**space, "augment": "flip"}, 1, asha=False, at_a_time=1,
                      train_images=900, val_images=100,
                      throughput=lambda c: Throughput({128: 300.0}, 0.01, 2, 5.0))
    assert flips.seconds == pytest.approx(5 + 3 * (900 / 300 + 100 * 0.01))
    assert "(with validation and start-up, from 2 earlier" in flips.line()
    assert flips.params()["plan_estimated_seconds"] == 17
    # two at a time halve the total, but never below the longest trial
    two = plan.make({**space, "epochs": tune.grid_search([1, 3])}, 1, asha=False,
                    at_a_time=2, train_images=900, val_images=100, throughput=lambda c: seen)
    assert two.seconds == pytest.approx(3 * 2700 / 300)


def test_the_estimate_looks_for_trials_on_the_path_a_trial_will_take(monkeypatch):
    """Earlier trials count for an estimate only on the fast path this one will report: it
    ends in ", compiled" where "auto" compiles (the search's training set decides, with the
    model and the device), and not where it does not."""
    from search.throughput import expected_fast_path
    from trainables import fastpath

    monkeypatch.setattr(fastpath, "native_bf16", lambda device: False)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(fastpath.shutil, "which", lambda name: f"/usr/bin/{name}")
    cfg = TrainConfig(model="resnet18", epochs=25, batch_size=64).to_dict()
    assert expected_fast_path(cfg, 0, 27_000) == ("cpu", "cpu, fp32, contiguous, compiled")
    eager = ("cpu", "cpu, fp32, contiguous")
    assert expected_fast_path(cfg, 0, 900) == eager
    assert expected_fast_path({**cfg, "compile": "off"}, 0, 27_000) == eager
    assert expected_fast_path({**cfg, "model": "cnn"}, 0, 27_000) == eager


def test_trials_at_a_time():
    assert plan.at_a_time(8, (1.0, 0.0), {"CPU": 2.0}) == 2
    assert plan.at_a_time(8, (1.0, 0.0), {"CPU": 16.0}, max_concurrent=3) == 3
    assert plan.at_a_time(1, (1.0, 0.0), {"CPU": 16.0}) == 1
    assert plan.at_a_time(50, (4.0, 0.25), {"CPU": 16.0, "GPU": 1.0}) == 4
    assert plan.at_a_time(50, (1.0, 0.25), {"CPU": 16.0, "GPU": 1.0}) == 4


def test_durations():
    assert [plan.duration(s) for s in (0.2, 40, 720, 5 * 3600, 7 * 86400)] == \
        ["1 s", "40 s", "12 min", "5.0 h", "7.0 days"]


# --- end to end: printed before the first trial, recorded, then an estimate -----------------

def parent_of(ws, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.kind = 'grid'")
    assert len(runs) == 1
    return runs[0]


def before_training(out: str, name: str) -> str:
    """The plan line, asserted to come before anything a trial printed."""
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("plan: "))
    trial = next(i for i, line in enumerate(lines) if line.startswith(f"[{name}] "))
    assert at < trial, out
    return lines[at]


@pytest.mark.slow  # three real grids on a local Ray cluster
def test_a_grid_prints_its_plan_and_the_next_one_an_estimate(small_set, tmp_path, capsys):
    ws = tmp_path / "ws"
    args = ["--model", "cnn", "--profile", "smoke", "--data-dir", str(small_set),
            "--train-size", "all", "--warmup-epochs", "1", "--epochs", "2,3",
            "--schedule", "wsd", "--workspace", str(ws), "--num-cpus", "2",
            "--no-dashboard"]
    with environ_kept():  # the search starts this process's Ray cluster and sets its defaults
        try:
            assert grid.main([*args, "--batch-sizes", "64"]) == 0
            first = capsys.readouterr().out
            assert grid.main([*args, "--batch-sizes", "128", "--name", "again"]) == 0
            second = capsys.readouterr().out
            recorded = parent_of(ws, "again").data.params
            assert grid.main([*args, "--batch-sizes", "128", "--name", "again",
                              "--resume"]) == 0
            resumed = capsys.readouterr().out
        finally:
            ray.shutdown()
    # wsd, warm-up 1: the 2-epoch trial branches at 1, the 3-epoch one at 2
    assert before_training(first, "grid-cnn") == (
        "plan: 2 trials (batch 64 x epochs 2,3); 5 epochs exhaustive, at most 4 computed after "
        "shared trunks (ASHA may stop trials sooner); no time estimate yet (no earlier cnn "
        "trial on this machine), 2 trials at a time")
    parent = parent_of(ws, "grid-cnn")
    assert {k: v for k, v in parent.data.params.items() if k.startswith("plan_")} == {
        "plan_trials": "2", "plan_space": "batch 64 x epochs 2,3",
        "plan_epochs_exhaustive": "5", "plan_epochs_at_most": "4",
        "plan_shared_trunks": "True", "plan_trials_at_a_time": "2",
        "plan_no_estimate": "no earlier cnn trial on this machine"}
    assert parent.data.tags["hardware"].endswith("; 1 CPU, 0 GPU per trial")

    line = before_training(second, "again")
    assert line.startswith("plan: 2 trials (batch 128 x epochs 2,3); 5 epochs exhaustive, at "
                           "most 4 computed after shared trunks (ASHA may stop trials sooner); "
                           "about ")
    assert line.endswith(" (with validation and start-up, from 2 earlier cnn trials on this "
                         "machine), 2 trials at a time")
    assert parent_of(ws, "again").data.tags["hardware"] == parent.data.tags["hardware"]
    assert recorded["plan_throughput_trials"] == "2"
    assert int(recorded["plan_estimated_seconds"]) >= 1
    assert float(recorded["plan_throughput_img_s"]) > 0
    assert recorded["plan_estimate_covers"] == "training, validation, start-up"
    assert "plan_no_estimate" not in recorded

    # resumed: the plan printed again (from the search's own trials too), the params kept
    again = [line for line in resumed.splitlines() if line.startswith("plan: ")]
    assert len(again) == 1 and "from 4 earlier cnn trials on this machine)" in again[0]
    assert parent_of(ws, "again").data.params == recorded


def test_a_trial_that_grew_is_read_at_the_speed_of_the_cpus_it_was_given(tmp_path):
    """The estimate's images/s of a trial that went on with freed cores (search/spare.py): its
    epochs on the CPUs it was given, not its faster last epochs."""
    from mlflow.tracking import MlflowClient

    from search.throughput import _images_per_s

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("grid-cnn")
    parent = client.create_run(exp)
    client.log_param(parent.info.run_id, "cpus_per_trial", "1.0")
    grew, stayed = client.create_run(exp), client.create_run(exp)
    for step, (threads, rate) in enumerate([(1, 500), (1, 520), (1, 510), (2, 780), (2, 790)],
                                           start=1):
        client.log_metric(grew.info.run_id, "threads", threads, step=step)
        client.log_metric(grew.info.run_id, "images_per_s", rate, step=step)
        client.log_metric(stayed.info.run_id, "threads", 1, step=step)
        client.log_metric(stayed.info.run_id, "images_per_s", rate - 10, step=step)
    parent = client.get_run(parent.info.run_id)
    assert _images_per_s(client, client.get_run(grew.info.run_id), parent) == 510
    assert _images_per_s(client, client.get_run(stayed.info.run_id), parent) == 780  # latest
