"""The class-weight search: Optuna inside Tune, a durable study, the weights really used."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from conftest import exit_code, need_real_data, untouched
from conftest import run_module as run
from optuna.trial import TrialState

from search.study import DurableOptunaSearch, SeededTPESampler
from trainables.config import SEED_CLASS_WEIGHTS, ConfigError, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
UNIFORM = [1.0] * 10


@pytest.fixture(scope="module", autouse=True)
def quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def weights_runs(ws: Path, name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("kind") == "weights"]
    children = [r for r in runs if r.data.tags.get("kind") == "trial"]
    return client, parents, children


def study(ws: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{ws / 'optuna.db'}")


def run_weights(child) -> list[float]:
    return [float(child.data.params[f"w{c}"]) for c in range(10)]


# --- pieces -----------------------------------------------------------------------------------

def test_class_weights_from_flat_keys():
    cfg = TrainConfig.from_dict({"model": "cnn", **{f"w{c}": c / 2 + 0.5 for c in range(10)}})
    assert cfg.class_weights == tuple(c / 2 + 0.5 for c in range(10))
    with pytest.raises(ConfigError, match="missing"):
        TrainConfig.from_dict({"model": "cnn", "w0": 1.0})
    with pytest.raises(ConfigError, match="either"):
        TrainConfig.from_dict({"model": "cnn", "class_weights": UNIFORM,
                               **{f"w{c}": 1.0 for c in range(10)}})


def suggest_all(sampler, storage, n, name="s"):
    st = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                             direction="maximize", load_if_exists=True)
    out = []
    for _ in range(n):
        t = st.ask({"a": optuna.distributions.FloatDistribution(0, 1),
                    "b": optuna.distributions.FloatDistribution(0, 1)})
        st.tell(t, (t.params["a"] - 0.3) ** 2 + t.params["b"])
        out.append(t.params)
    return out


def test_a_resumed_study_is_offered_what_the_uninterrupted_one_is(tmp_path):
    kw = dict(n_startup_trials=3, multivariate=True)
    straight = suggest_all(SeededTPESampler(7, **kw), None, 8)
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    first = suggest_all(SeededTPESampler(7, **kw), storage, 5)
    then = suggest_all(SeededTPESampler(7, **kw), storage, 3)  # a new process, a new sampler
    assert first + then == straight
    assert suggest_all(SeededTPESampler(8, **kw), None, 8) != straight


def searcher_for(tmp_path, epochs=4):
    from ray import tune

    s = DurableOptunaSearch(epochs=epochs, study_name="w", sampler=SeededTPESampler(0),
                            storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db"),
                            points_to_evaluate=[{"w0": 2.0}])
    s.set_search_properties("val_acc", "max", {"w0": tune.uniform(0.5, 2.5), "epochs": epochs})
    return s


def test_stopped_trials_are_told_as_pruned_and_lost_ones_as_failed(tmp_path):
    s = searcher_for(tmp_path)
    assert s.suggest("t1") == {"w0": 2.0}  # the starting point comes first
    s.suggest("t2")
    for epoch, acc in ((1, 0.5), (2, 0.6)):
        s.on_trial_result("t1", {"val_acc": acc, "training_iteration": epoch, "epoch": epoch})
        s.on_trial_result("t2", {"val_acc": acc, "training_iteration": epoch, "epoch": epoch})
    s.on_trial_complete("t1", {"val_acc": 0.6, "epoch": 2})  # stopped by the scheduler at 2/4
    s.on_trial_result("t2", {"val_acc": 0.7, "training_iteration": 4, "epoch": 4})
    s.on_trial_complete("t2", {"val_acc": 0.7, "epoch": 4})
    s.suggest("t3")
    s.save(str(tmp_path / "snapshot.pkl"))
    s._ot_study.ask()  # asked after the snapshot; the driver then dies
    restored = DurableOptunaSearch(epochs=4)
    restored.restore(str(tmp_path / "snapshot.pkl"))
    trials = optuna.load_study(study_name="w", storage=f"sqlite:///{tmp_path}/o.db").trials
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.COMPLETE,
                                         TrialState.RUNNING, TrialState.FAIL]
    assert trials[0].value == 0.6 and trials[1].value == 0.7  # pruned: its last value
    assert "lost" in trials[3].user_attrs
    restored.on_trial_result("t3", {"val_acc": 0.8, "training_iteration": 4, "epoch": 4})
    restored.on_trial_complete("t3", {"val_acc": 0.8, "epoch": 4})  # t3 goes on after restore
    assert optuna.load_study(study_name="w", storage=f"sqlite:///{tmp_path}/o.db"
                             ).trials[2].value == 0.8


# --- the command end to end -------------------------------------------------------------------

SMOKE = ["--model", "resnet", "--profile", "smoke", "--num-cpus", "2", "--no-dashboard"]


@pytest.mark.slow
@pytest.mark.soak
def test_smoke_weights_search_end_to_end_and_resume(tmp_path):
    need_real_data()
    ws = tmp_path / "ws"
    args = [*SMOKE, "--workspace", str(ws), "--max-concurrent", "2", "--num-samples", "4"]
    out = run("search.weights", *args)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "best / seed / uniform weights" in out.stdout and "optuna-dashboard" in out.stdout
    client, parents, children = weights_runs(ws, "weights-resnet18")
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    st = study(ws, "weights-resnet18")
    assert [t.number for t in st.trials] == [0, 1, 2, 3]
    # the first two trials are the seed's vector and the uniform one, in that order
    assert [[t.params[f"w{c}"] for c in range(10)] for t in st.trials[:2]] == [
        list(SEED_CLASS_WEIGHTS), UNIFORM]
    by_weights = {tuple(run_weights(c)): c for c in children}
    assert tuple(SEED_CLASS_WEIGHTS) in by_weights and tuple(UNIFORM) in by_weights
    for c in children:
        # the weights the loss was given, read back from its tensor each epoch, are the trial's
        for k in range(10):
            used = client.get_metric_history(c.info.run_id, f"loss_w{k}")
            assert used and all(m.value == pytest.approx(float(c.data.params[f"w{k}"]),
                                                         rel=1e-6) for m in used)
        assert c.data.params["batch_size"] == "64" and c.data.params["epochs"] == "3"
    assert len({tuple(run_weights(c)) for c in children}) == 4
    best = max(st.trials, key=lambda t: t.value if t.value is not None else -1)
    table = client.download_artifacts(parent.info.run_id, "weights_comparison.json",
                                       str(tmp_path))
    import json

    table = json.loads(Path(table).read_text())
    assert set(table) == {"best", "seed", "uniform"}
    assert table["seed"]["weights"] == list(SEED_CLASS_WEIGHTS)
    assert table["uniform"]["weights"] == UNIFORM
    assert table["best"]["val_acc"] == pytest.approx(best.value, abs=1e-9) or \
        best.state == TrialState.PRUNED
    assert all(table[k]["hard_acc"] is not None for k in table)
    assert [parent.data.metrics[f"best_w{c}"] for c in range(10)] == table["best"]["weights"]

    # --resume with more samples: the same study and parent run, four numbers more
    out = run("search.weights", *args[:-1], "6", "--resume")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client, parents, children = weights_runs(ws, "weights-resnet18")
    assert len(parents) == 1 and parents[0].info.run_id == parent.info.run_id
    st = study(ws, "weights-resnet18")
    assert [t.number for t in st.trials] == list(range(6))
    assert len(children) == 6 and len({c.data.tags["trial_id"] for c in children}) == 6
    assert len({tuple(run_weights(c)) for c in children}) == 6  # no point offered twice

    # a new search of the same name without --resume is refused, nothing touched
    out = run("search.weights", *args)
    assert out.returncode == 2 and "already exists" in out.stderr
    assert len(study(ws, "weights-resnet18").trials) == 6


@pytest.mark.slow
@pytest.mark.soak
def test_hard_pairs_objective_and_grid_defaults(tmp_path):
    need_real_data()
    ws = tmp_path / "ws"
    common = [*SMOKE, "--workspace", str(ws), "--train-size", "600", "--warmup-epochs", "1"]
    out = run("search.grid", *common, "--batch-sizes", "32", "--epochs", "2")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    out = run("search.weights", *common, "--space", "hard-pairs", "--objective", "hard_acc",
              "--num-samples", "3", "--max-concurrent", "1")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "defaults from grid-resnet18" in out.stdout
    _, parents, children = weights_runs(ws, "weights-resnet18")
    assert len(children) == 3
    for c in children:  # the grid's winner: batch 32, 2 epochs
        assert c.data.params["batch_size"] == "32" and c.data.params["epochs"] == "2"
        w = run_weights(c)
        assert [w[k] for k in (1, 3, 5, 7, 8, 9)] == [1.0] * 6
        assert "best_hard_acc" in c.data.metrics and c.data.tags["best_metric"] == "hard_acc"
    st = study(ws, "weights-resnet18")
    assert set(st.trials[0].params) == {"w0", "w2", "w4", "w6"}
    assert st.trials[0].params == {"w0": 2.0, "w2": 1.5, "w4": 1.5, "w6": 2.0}
    assert st.trials[1].params == {"w0": 1.0, "w2": 1.0, "w4": 1.0, "w6": 1.0}
    assert "best_hard_acc" in parents[0].data.metrics


@pytest.mark.parametrize("args, message", [
    (["--low", "1.2"], "must contain"),
    (["--low", "3", "--high", "2"], "--low < --high"),
    (["--num-samples", "1"], "at least 2"),
    (["--batch-size", "5000"], "larger than"),
    (["--resume"], "to resume"),
])
def test_bad_arguments(args, message, earlier_workspace, capsys):
    from search import weights

    with untouched(earlier_workspace):  # docs/bad-input.md: workspace untouched
        assert exit_code(weights.main, "--model", "cnn", "--profile", "smoke", *args,
                         "--workspace", str(earlier_workspace)) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines  # before the workspace's check


def test_bad_arguments_from_the_shell(earlier_workspace):
    with untouched(earlier_workspace):
        out = run("search.weights", "--model", "cnn", "--low", "1.2", "--workspace",
                  str(earlier_workspace), timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "must contain" in lines[0], out.stderr


def test_a_study_started_before_tune_saved_anything(tmp_path):
    """A weights search killed after its study asked a trial and before Tune first saved its
    state starts again: the asked trial is lost (its starting point queued again, once), and
    the starting points still waiting are not queued a second time."""
    from search.study import started_before, storage_url, study_trials
    from search.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    assert not started_before(ws, "w")  # no study file: a new search
    study = optuna.create_study(study_name="w", storage=storage_url(ws), direction="maximize")
    seed, uniform = {"w0": 2.0}, {"w0": 1.0}
    study.enqueue_trial(seed)
    study.enqueue_trial(uniform)
    asked = study.ask({"w0": optuna.distributions.FloatDistribution(0.5, 2.5)})
    assert asked.params == seed
    assert started_before(ws, "w")
    trials = study.get_trials(deepcopy=False)
    assert trials[0].state == TrialState.FAIL and "lost" in trials[0].user_attrs
    waiting = [t.system_attrs["fixed_params"] for t in trials if t.state == TrialState.WAITING]
    assert waiting == [uniform, seed]  # each starting point once, the lost one queued again
    assert study_trials(ws, "w") == trials[1:]
