"""What a trial does when Tune restores it from the checkpoint its saved experiment state names,
whatever disagrees between that state and the disk (docs/crash-windows.md). The Trainable is
driven directly, through Tune's own ``restore`` entry point, with what Tune passes it; the
same windows with real clusters and SIGKILLs are in tests/test_windows.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import need_real_data
from ray import tune
from ray.train._internal.session import _TrainingResult

from trainables import checkpoint, data
from trainables.config import TrainConfig
from trainables.trainable import CHECKPOINT_FILE, ClassifierTrainable

KEYS = ("epoch", "val_acc", "val_loss", "train_loss")


@pytest.fixture(scope="module")
def split():
    need_real_data()
    return data.load_split(data.SYSTEM_DIR, train_size=400, seed=0)


def config(**kw) -> dict:
    kw = {"warmup_epochs": 1, **kw}
    return TrainConfig(model="cnn", augment="flip", batch_size=64, epochs=4, device="cpu",
                       num_threads=2, **kw).to_dict()


def trainable(split, cfg: dict):
    class Local(ClassifierTrainable):  # the object store's role, played by a closure
        def setup(self, config):
            super().setup(config, split=split)

    return Local(config=dict(cfg))


def numbers(results) -> list[list]:
    return [[r[k] for k in KEYS] for r in results]


def run_trial(split, cfg: dict, trial_dir: Path | None = None) -> list[dict]:
    """A trial to its end; with trial_dir, a checkpoint after every epoch whose result asks for
    one, laid out as Tune lays them out (checkpoint_000000, ...), with the result's metrics."""
    t = trainable(split, cfg)
    results, index = [], 0
    while not (results and results[-1]["done"]):
        results.append(t.train())
        if trial_dir is not None and results[-1]["should_checkpoint"]:
            d = trial_dir / f"checkpoint_{index:06d}"
            d.mkdir(parents=True)
            t.save_checkpoint(str(d))
            (d / "metrics.txt").write_text(str(results[-1]["epoch"]))
            index += 1
    t.stop()
    return results


def named(d: Path, epoch: int) -> _TrainingResult:
    """What Tune passes to restore(): the checkpoint its saved state names, with its result."""
    return _TrainingResult(checkpoint=tune.Checkpoint.from_directory(str(d)),
                           metrics={"epoch": epoch, "training_iteration": epoch})


def resume(split, cfg: dict, restoring: _TrainingResult) -> list[dict]:
    t = trainable(split, cfg)
    t.restore(restoring)
    results = []
    while not (results and results[-1]["done"]):
        results.append(t.train())
    t.stop()
    return results


@pytest.fixture(scope="module")
def reference(split, tmp_path_factory):
    d = tmp_path_factory.mktemp("reference")
    return run_trial(split, config(), d), d


def test_every_epoch_asks_for_a_checkpoint_of_its_own_weights(split, reference):
    results, d = reference
    assert [r["should_checkpoint"] for r in results] == [True] * 4
    for i in range(4):
        ckpt = checkpoint.load(d / f"checkpoint_{i:06d}" / CHECKPOINT_FILE)
        assert ckpt["epoch"] == results[i]["epoch"] == i + 1


def test_a_deleted_named_checkpoint_continues_from_the_newer_one(split, reference, tmp_path,
                                                                  capfd):
    """The saved state names checkpoint_000001 (epoch 2); Tune deleted it when it registered
    checkpoint_000002 (epoch 3), then the driver died before saving its state again."""
    results, d = reference
    trial = tmp_path / "trial"
    shutil.copytree(d, trial)
    shutil.rmtree(trial / "checkpoint_000001")
    shutil.rmtree(trial / "checkpoint_000003")
    resumed = resume(split, config(), named(trial / "checkpoint_000001", 2))
    # epoch 3 comes from the newer checkpoint's history, whose weights are epoch 3's
    assert [r["epoch"] for r in resumed] == [3, 4]
    assert numbers(resumed) == numbers(results[2:])
    assert [r["should_checkpoint"] for r in resumed] == [True, True]
    assert resumed[0]["checkpoint_fault"] == (
        "checkpoint_000001, named by the saved experiment state, no longer exists; "
        "continued from checkpoint_000002 (epoch 3)")
    assert all("checkpoint_fault" not in r for r in resumed[1:])
    assert "checkpoint fault:" in capfd.readouterr().err


def test_a_newer_checkpoint_reports_the_epochs_tune_has_not_seen(split, reference, tmp_path):
    """The named checkpoint_000000 (epoch 1) is gone and the newest is epoch 3: epoch 2 is
    reported from its history (not checkpointed: the weights are epoch 3's), then epoch 3."""
    results, d = reference
    trial = tmp_path / "trial"
    shutil.copytree(d, trial)
    for i in (0, 1, 3):
        shutil.rmtree(trial / f"checkpoint_{i:06d}")
    resumed = resume(split, config(), named(trial / "checkpoint_000000", 1))
    assert [r["epoch"] for r in resumed] == [2, 3, 4]
    assert numbers(resumed) == numbers(results[1:])
    assert [r["should_checkpoint"] for r in resumed] == [False, True, True]


def test_no_checkpoint_left_trains_forward_without_reporting_again(split, reference,
                                                                   tmp_path):
    """Every checkpoint is gone or half written: the trial starts from scratch, trains the
    epochs Tune has seen without reporting them again, and reports the next one."""
    results, d = reference
    trial = tmp_path / "trial"
    shutil.copytree(d, trial)
    for i in (0, 1):
        shutil.rmtree(trial / f"checkpoint_{i:06d}")
    half = trial / "checkpoint_000002" / CHECKPOINT_FILE  # copied half way, no checksum yet
    half.write_bytes(half.read_bytes()[: half.stat().st_size // 2])
    checkpoint.digest_path(half).unlink()
    shutil.rmtree(trial / "checkpoint_000003")
    resumed = resume(split, config(), named(trial / "checkpoint_000001", 2))
    assert [r["epoch"] for r in resumed] == [3, 4]
    assert numbers(resumed) == numbers(results[2:])
    assert "restarted from scratch" in resumed[0]["checkpoint_fault"]


def test_a_half_written_named_checkpoint_falls_back(split, reference, tmp_path):
    results, d = reference
    trial = tmp_path / "trial"
    shutil.copytree(d, trial)
    half = trial / "checkpoint_000002" / CHECKPOINT_FILE
    half.write_bytes(half.read_bytes()[: half.stat().st_size // 2])
    checkpoint.digest_path(half).unlink()
    shutil.rmtree(trial / "checkpoint_000003")
    resumed = resume(split, config(), named(trial / "checkpoint_000002", 3))
    assert [r["epoch"] for r in resumed] == [4]
    assert numbers(resumed) == numbers(results[3:])
    assert "continued from checkpoint_000001 (epoch 2)" in resumed[0]["checkpoint_fault"]


def test_a_replayed_warmup_is_never_checkpointed_under_the_wrong_epoch(split, tmp_path):
    """With a 2-epoch warm-up stored by one trial, another replays it: epoch 1 is reported
    from the store without a checkpoint (its weights are epoch 2's); a restore in the middle
    of the replay reports the rest of it, each epoch once."""
    cfg = config(warmup_epochs=2)
    cfg["trunk_cache"] = str(tmp_path / "warmups")
    first = run_trial(split, cfg)
    assert [r["warmup_reused"] for r in first] == [False] * 4
    d = tmp_path / "trial"
    second = run_trial(split, cfg, d)
    assert numbers(second) == numbers(first)
    assert [r["warmup_reused"] for r in second] == [True, True, False, False]
    assert [r["should_checkpoint"] for r in second] == [False, True, True, True]
    for i, epoch in enumerate((2, 3, 4)):
        assert checkpoint.load(d / f"checkpoint_{i:06d}" / CHECKPOINT_FILE)["epoch"] == epoch
    # the saved state named a checkpoint of epoch 1 (gone); the newest one left is epoch 4's:
    # epochs 2 and 3 are reported from its history, then epoch 4 ends the trial
    shutil.rmtree(d / "checkpoint_000000")
    resumed = resume(split, cfg, named(d / "checkpoint_000000", 1))
    assert [r["epoch"] for r in resumed] == [2, 3, 4]
    assert numbers(resumed) == numbers(first[1:])


def test_a_trial_restored_at_its_end_reports_its_last_epoch_once(split, reference, tmp_path):
    results, d = reference
    resumed = resume(split, config(), named(d / "checkpoint_000003", 4))
    assert len(resumed) == 1 and resumed[0]["done"] and not resumed[0]["should_checkpoint"]
    assert numbers(resumed) == numbers(results[3:])
    # its last checkpoint is corrupt: from the one before, the last epoch trained again
    trial = tmp_path / "trial"
    shutil.copytree(d, trial)
    path = trial / "checkpoint_000003" / CHECKPOINT_FILE
    path.write_bytes(path.read_bytes()[:1000])
    resumed = resume(split, config(), named(trial / "checkpoint_000003", 4))
    assert len(resumed) == 1 and resumed[0]["done"] and resumed[0]["should_checkpoint"]
    assert numbers(resumed) == numbers(results[3:])
    assert "continued from checkpoint_000002 (epoch 3)" in resumed[0]["checkpoint_fault"]


# --- the scheduler, which Tune does not save ------------------------------------------------


class Trial:
    def __init__(self, trial_id: str, path: Path, status: str = "RUNNING"):
        self.trial_id, self.config, self.path, self.status = trial_id, {"epochs": 4}, str(path), \
            status

    def report(self, asha, epoch: int, value: float) -> str:
        result = {"epoch": epoch, "val_acc": value}
        with open(Path(self.path, "result.json"), "a") as f:
            f.write(json.dumps(result) + "\n")
        return asha.on_trial_result(None, self, result)


def test_a_resumed_asha_decides_as_the_uninterrupted_one(tmp_path):
    """Three 4-epoch trials, rungs at epochs 1 and 2. Killed after the third trial's epoch-1
    result (which the uninterrupted ASHA stops) was written but before Tune stopped it; the
    resumed scheduler is a new one: it rebuilds the rungs and stops the trial again."""
    from search.asha import ScheduleAwareASHA

    values = {"a": [0.5, 0.6, 0.7, 0.8], "b": [0.6, 0.7, 0.8, 0.9], "c": [0.4, 0.5, 0.6, 0.7]}

    def run(asha, trials, upto: dict) -> dict:
        decisions = {}
        for t in trials:
            asha.on_trial_add(None, t)
        for t in trials:
            for e in range(upto[t.trial_id][0], upto[t.trial_id][1] + 1):
                decisions[(t.trial_id, e)] = t.report(asha, e, values[t.trial_id][e - 1])
                if decisions[(t.trial_id, e)] == "STOP":
                    break
        return decisions

    for d in ("ref", "killed"):
        for t in "abc":
            (tmp_path / d / t).mkdir(parents=True)
    ref = [Trial(t, tmp_path / "ref" / t) for t in "abc"]
    reference = run(ScheduleAwareASHA(1, 2), ref, {"a": (1, 4), "b": (1, 4), "c": (1, 4)})
    assert reference[("c", 1)] == "STOP"  # below the cutoff of a and b at epoch 1
    killed = [Trial(t, tmp_path / "killed" / t) for t in "abc"]
    run(ScheduleAwareASHA(1, 2), killed, {"a": (1, 4), "b": (1, 4), "c": (1, 1)})
    # resumed: a and b finished (TERMINATED), c restored; a fresh scheduler, as Tune's
    killed[0].status = killed[1].status = "TERMINATED"
    asha = ScheduleAwareASHA(1, 2)
    for t in killed:
        asha.on_trial_add(None, t)
    assert killed[2].report(asha, 1, values["c"][0]) == "STOP"
    assert asha.stops["c"]["epoch"] == 1 and asha.stops["c"]["compared_with"] == 2


# --- the lineage, whose child runs may be ahead of Tune's saved state ------------------------


def test_a_trial_tune_made_again_takes_over_the_run_created_for_it(tmp_path):
    """A child run was created (params not logged yet) for a trial Tune's saved state did not
    hold; the resumed Tune makes the trial again under a new id. The lineage takes the open run
    over instead of creating a second one; a finished run of the same config is not taken."""
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from search.lineage import MLflowLineage
    from search.records import config_key

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("grid-cnn")
    parent = client.create_run(exp).info.run_id
    cfg = {"model": "cnn", "batch_size": 64, "epochs": 3}
    finished = client.create_run(exp, tags={"mlflow.parentRunId": parent, "kind": "trial",
                                            "trial_id": "a_00009",
                                            "config_key": config_key(cfg)})
    client.set_terminated(finished.info.run_id, "FINISHED")
    orphan = client.create_run(exp, tags={"mlflow.parentRunId": parent, "kind": "trial",
                                          "trial_id": "a_00001", "config_key": config_key(cfg)})
    again = SimpleNamespace(trial_id="b_00001", config=cfg)
    lineage = MLflowLineage(uri, exp, parent)
    assert lineage._run_for(again, [again]) == orphan.info.run_id
    run = client.get_run(orphan.info.run_id)
    assert run.data.tags["trial_id"] == "b_00001" and run.data.tags["trial_id_lost"] == "a_00001"
    assert run.data.params["batch_size"] == "64"
    other = SimpleNamespace(trial_id="b_00002", config={**cfg, "batch_size": 128})
    assert lineage._run_for(other, [again, other]) not in (orphan.info.run_id,
                                                           finished.info.run_id)
    kids = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert len(kids) == 3


def test_a_trial_resumed_on_another_fast_path_keeps_recording(tmp_path):
    """A trial's run holds the fast path it started on as a param; continued on another one
    (another machine, a version whose "auto" chooses differently), the param stays, the new
    path goes to a tag, and the epochs after the resume are still recorded: the store does
    not go offline for a param MLflow will not change."""
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from search.lineage import MLflowLineage
    from search.offline import Offline

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("grid-resnet18")
    parent = client.create_run(exp).info.run_id
    trial = SimpleNamespace(trial_id="a_00001", config={"model": "resnet18", "epochs": 4})

    def epoch(lineage, n, fast):
        lineage.on_trial_result(0, [trial], trial, {"epoch": n, "val_acc": 0.5 + n / 100,
                                                    "fast_path": fast})

    offline = Offline()  # the command's (search/context.py RunContext)
    first = MLflowLineage(uri, exp, parent, offline=offline)
    for n in (1, 2):
        epoch(first, n, "cpu, fp32, channels_last")
    again = MLflowLineage(uri, exp, parent, offline=offline)  # resumed with --resume
    for n in (2, 3, 4):
        epoch(again, n, "cpu, fp32, contiguous")
    assert not offline.is_offline(uri), offline.reason(uri)
    run = client.get_run(first.runs[trial.trial_id])
    assert run.data.params["fast_path"] == "cpu, fp32, channels_last"
    assert run.data.tags["fast_path_resumed"] == "cpu, fp32, contiguous"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == \
        [1, 2, 3, 4]
    again = MLflowLineage(uri, exp, parent)  # back on the first path: the tag says the latest
    epoch(again, 4, "cpu, fp32, channels_last")
    run = client.get_run(run.info.run_id)
    assert run.data.params["fast_path"] == run.data.tags["fast_path_resumed"] == \
        "cpu, fp32, channels_last"


def test_a_store_killed_while_mlflow_creates_its_tables_is_made_again(tmp_path):
    """MLflow creates a sqlite store's tables in many steps; a kill among them used to leave a
    mlflow.db every later command refused ("table secrets already exists"). The store is now
    made beside its place and linked in whole."""
    import subprocess
    import sys

    from search.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    db = tmp_path / "ws" / "mlflow.db"
    # a process killed while it made the store: its half-made file is left beside it
    code = ("import os, signal, sqlite3, sys\n"
            "from search import workspace\n"
            "real = workspace.MlflowClient\n"
            "class Dying(real):\n"
            "    def __init__(self, uri, *a, **kw):\n"
            "        if '.init-' in uri:\n"
            "            db = sqlite3.connect(uri[len('sqlite:///'):])\n"
            "            db.execute('create table secrets (x)')\n"
            "            os.kill(os.getpid(), signal.SIGKILL)\n"
            "        super().__init__(uri, *a, **kw)\n"
            "workspace.MlflowClient = Dying\n"
            f"workspace.Workspace.open({str(tmp_path / 'ws')!r}).client()\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1])
    assert out.returncode == -9
    assert not db.exists() and list(db.parent.glob("mlflow.db.init-*"))
    client = ws.client()  # the next command: a whole store, the leftover gone
    assert client.search_experiments() is not None and db.exists()
    assert not list(db.parent.glob("mlflow.db.init-*"))


def test_a_checkpoint_download_cut_short_is_not_taken_for_the_checkpoint(tmp_path):
    """The report's cache of members' checkpoints: a download killed half way leaves nothing
    the next report would take for a whole checkpoint."""
    from types import SimpleNamespace

    from analysis.publish import fetch_checkpoint
    from search.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    cand = SimpleNamespace(run_id="r1", checkpoint="best_checkpoint/checkpoint.pt")

    class Client:
        def __init__(self, cut: bool):
            self.cut = cut

        def download_artifacts(self, run_id, path, dst):
            out = Path(dst, Path(path).name)
            out.write_bytes(b"half" if self.cut else b"whole checkpoint")
            if self.cut:
                raise KeyboardInterrupt  # the process stops here
            return str(out)

    with pytest.raises(KeyboardInterrupt):
        fetch_checkpoint(Client(cut=True), ws, cand)
    local = fetch_checkpoint(Client(cut=False), ws, cand)
    assert local.read_bytes() == b"whole checkpoint"
    assert sorted(p.name for p in local.parent.parent.iterdir()) == ["r1"]
