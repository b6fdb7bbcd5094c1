"""Every window in which what is on disk and what a saved state says can disagree, forced: the
run is stopped at a failpoint (trainables/failpoints.py) inside the window, the test waits for
the state to be as the window says, SIGKILLs the whole process group, resumes, and compares the
run with an uninterrupted one (bench/chaos.py's compare: no trial lost, no duplicated run, the
same val_acc epoch by epoch). docs/crash-windows.md lists the windows."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from conftest import ROOT, need_real_data, saved_tune_trials

from bench import chaos

pytestmark = pytest.mark.slow
COMMON = ("--profile", "smoke", "--train-size", "400", "--num-cpus", "1", "--max-concurrent",
          "1", "--no-dashboard")
GRID = ("--model", "cnn", "--batch-sizes", "32,64", "--epochs", "3", "--scheduler", "none",
        *COMMON)
WEIGHTS = ("--model", "cnn", "--num-samples", "3", "--batch-size", "64", "--epochs", "2",
           "--scheduler", "none", *COMMON)
PIPELINE = ("--models", "cnn", "--no-weights", "--no-register", "--top-k", "1", *COMMON)


@pytest.fixture(scope="module", autouse=True)
def need_data():
    need_real_data()


def grid(ws: Path, resume=False) -> list[str]:
    return chaos.command("search.grid", GRID, ws, None, resume)


@pytest.fixture(scope="module")
def grid_reference(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("grid-reference") / "ws"
    assert chaos.finish(grid(ws), ws.parent / "run.log") == 0
    return ws


WSD = ("--model", "cnn", "--batch-sizes", "32,64", "--epochs", "3,5", "--schedule", "wsd",
       "--scheduler", "asha", "--grace-period", "1", *COMMON)


def saved_trials(ws: Path, experiment: str = "grid-cnn") -> dict:
    """trial id -> (status, the checkpoint the saved experiment state names, its epoch)."""
    out = {}
    for t in saved_tune_trials(ws, experiment):
        result = t.run_metadata.checkpoint_manager.latest_checkpoint_result
        out[t.trial_id] = (t.status, t.checkpoint.path if t.checkpoint else None,
                           (result.metrics or {}).get("epoch") if result else None)
    return out


def resume_and_compare(cmd: list[str], ws: Path, reference: Path, what: str) -> str:
    log = ws.parent / "resumed.log"
    assert chaos.finish(cmd, log) == 0, log.read_text()[-3000:]
    assert chaos.compare(ws, reference, what) == {"lost": 0, "duplicated": 0, "mismatched": 0}
    return log.read_text()


def tags_of(ws: Path, trial: str) -> dict:
    with sqlite3.connect(ws / "mlflow.db") as con:
        run = con.execute("select run_uuid from tags where key = 'trial_id' and value = ?",
                          (trial,)).fetchall()
        assert len(run) == 1
        return dict(con.execute("select key, value from tags where run_uuid = ?", run[0]))


def test_a_checkpoint_deleted_after_the_saved_state_named_it(tmp_path, grid_reference):
    """Tune registered a newer checkpoint and deleted the one its saved state names, then the
    driver died before saving its state again (the flaky pipeline test's failure)."""
    ws = tmp_path / "ws"

    def state_names_the_deleted_one(info):
        return saved_trials(ws).get(info["trial"], (None, None))[1] == info["deleted"]

    info = chaos.stop_at(grid(ws), tmp_path / "run.log", "checkpoint-replaced",
                         state_names_the_deleted_one)
    assert not Path(info["deleted"]).exists()
    resume_and_compare(grid(ws, True), ws, grid_reference, "grid")
    fault = tags_of(ws, info["trial"])["checkpoint_fault"]
    assert f"{Path(info['deleted']).name}, named by the saved experiment state, no longer " \
           "exists; continued from checkpoint_" in fault


@pytest.mark.parametrize("half", [pytest.param(False, marks=pytest.mark.soak), True],
                         ids=["not-copied", "half-copied"])
def test_a_checkpoint_written_before_tune_recorded_it(tmp_path, grid_reference, half):
    """The worker wrote its second checkpoint; Tune had not copied it into the trial's folder
    (or had copied half of it) nor named it in its saved state when everything was killed."""
    ws = tmp_path / "ws"
    marker = tmp_path / "run.failpoint.json"

    def state_names_the_first(info):
        _status, path, epoch = saved_trials(ws).get(info["trial"], (None, None, None))
        if epoch != info["epoch"] - 1:
            return False
        if half:  # what a kill in the middle of Tune's copy leaves behind
            trial_dir = Path(path).parent
            src = Path(path) / "checkpoint.pt"
            target = trial_dir / f"checkpoint_{int(Path(path).name[-6:]) + 1:06d}"
            target.mkdir()
            (target / "checkpoint.pt").write_bytes(src.read_bytes()[:src.stat().st_size // 2])
        return True

    info = chaos.stop_at(grid(ws), tmp_path / "run.log", "checkpoint-written@2",
                         state_names_the_first)
    assert json.loads(marker.read_text())["epoch"] == 2
    out = resume_and_compare(grid(ws, True), ws, grid_reference, "grid")
    assert "checkpoint_fault" not in tags_of(ws, info["trial"])  # the named one was good
    assert "Traceback" not in out


def test_mlflow_ahead_of_the_saved_state(tmp_path, grid_reference):
    """MLflow logged an epoch whose checkpoint Tune had not saved yet; the state names the
    previous epoch's checkpoint. The resumed trial trains that epoch again, and it is not
    logged twice."""
    ws = tmp_path / "ws"

    def state_one_epoch_behind(info):
        return saved_trials(ws).get(info["trial"], (0, 0, 0))[2] == info["epoch"] - 1

    chaos.stop_at(grid(ws), tmp_path / "run.log", "result-logged@3", state_one_epoch_behind)
    resume_and_compare(grid(ws, True), ws, grid_reference, "grid")


@pytest.mark.parametrize("hit", [pytest.param(1, marks=pytest.mark.soak), 2],
                         ids=["first-trial", "second-trial"])
def test_a_trial_run_created_before_tune_saved_the_trial(tmp_path, grid_reference, hit):
    """The lineage created a trial's MLflow run (and was killed before it logged its params);
    Tune's saved state may not hold the trial yet, so the resumed Tune makes it again under a
    new id: the run is taken over, not doubled, and gets its params."""
    ws = tmp_path / "ws"
    info = chaos.stop_at(grid(ws), tmp_path / "run.log", f"trial-run-created@{hit}")
    resume_and_compare(grid(ws, True), ws, grid_reference, "grid")
    with sqlite3.connect(ws / "mlflow.db") as con:
        tags = dict(con.execute("select key, value from tags where run_uuid = ?",
                                (info["run"],)).fetchall())
    assert tags["trial_id"] in saved_trials(ws)  # the run is the trial Tune ran
    if tags["trial_id"] != info["trial"]:
        assert tags["trial_id_lost"] == info["trial"]


def test_a_parent_run_created_before_the_workspace_named_it(tmp_path, grid_reference):
    ws = tmp_path / "ws"
    info = chaos.stop_at(grid(ws), tmp_path / "run.log", "parent-run-created")
    state = json.loads((ws / "experiments" / "grid-cnn.json").read_text())
    assert state["parent_run_id"] is None
    resume_and_compare(grid(ws, True), ws, grid_reference, "grid")
    state = json.loads((ws / "experiments" / "grid-cnn.json").read_text())
    assert state["parent_run_id"] == info["run"]


def test_a_tuner_made_before_tune_saved_any_state(tmp_path, grid_reference):
    """Tune wrote its tuner.pkl (Tuner.can_restore says yes) and was killed before its first
    experiment state: there is nothing to restore, so --resume starts the run again (found by
    bench/chaos.py: Tune's own restore failed with KeyError 'epochs')."""
    ws = tmp_path / "ws"
    chaos.stop_at(grid(ws), tmp_path / "run.log", "tuner-created")
    folder = ws / "ray_results" / "grid-cnn"
    assert (folder / "tuner.pkl").exists() and not list(folder.glob("experiment_state*"))
    out = resume_and_compare(grid(ws, True), ws, grid_reference, "grid")
    assert "Traceback" not in out


def test_an_optuna_trial_asked_before_tune_saved_its_searcher(tmp_path):
    reference = tmp_path / "reference"
    cmd = chaos.command("search.weights", WEIGHTS, reference, None, False)
    assert chaos.finish(cmd, tmp_path / "reference.log") == 0
    ws = tmp_path / "ws"
    chaos.stop_at(chaos.command("search.weights", WEIGHTS, ws, None, False),
                  tmp_path / "run.log", "optuna-asked@2")
    resume_and_compare(chaos.command("search.weights", WEIGHTS, ws, None, True), ws,
                       reference, "weights")
    assert chaos.study(ws, "weights-cnn") == chaos.study(reference, "weights-cnn")


def test_the_pipeline_state_behind_its_stages(tmp_path):
    """Killed after a stage ended and before the pipeline's state said so: first the grid
    stage, then the report. Resumed, the grid is continued (nothing trained again) and the
    report written before is kept (no second fusion run)."""
    ws = tmp_path / "ws"

    def pipeline(resume):
        return chaos.command("search.pipeline", PIPELINE, ws, None, resume)

    chaos.stop_at(pipeline(False), tmp_path / "run.log", "stage-finished")
    state = json.loads((ws / "pipelines" / "smoke.json").read_text())
    assert [s["status"] for s in state["stages"]] == ["running", "pending"]
    chaos.stop_at(pipeline(True), tmp_path / "run.log", "stage-finished@2")
    state = json.loads((ws / "pipelines" / "smoke.json").read_text())
    assert [s["status"] for s in state["stages"]] == ["done", "running"]
    log = tmp_path / "resumed.log"
    assert chaos.finish(pipeline(True), log) == 0, log.read_text()[-3000:]
    assert "was written before the interruption; kept" in log.read_text()
    with sqlite3.connect(ws / "mlflow.db") as con:
        fusion = con.execute("select r.status from runs r join experiments e on "
                             "e.experiment_id = r.experiment_id where e.name = 'fusion'"
                             ).fetchall()
    assert fusion == [("FINISHED",)]
    runs = chaos.mlflow_runs(ws, "smoke-grid-cnn")
    assert runs["parents"] == ["FINISHED"]
    assert all(len(r) == 1 and r[0]["status"] == "FINISHED" for r in runs["trials"].values())


def test_unreadable_tune_state_is_its_own_error_not_an_interruption(tmp_path, grid_reference):
    """A Tune state file that is there but damaged, with no complete copy to put back (the
    copies of search/tunestate.py gone too): one line, exit 4 (not 130 and a resume hint),
    and MLflow's records as they were."""
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(grid_reference, ws)
    shutil.rmtree(ws / "ray_results" / "grid-cnn" / ".last-complete")
    for f in (ws / "ray_results" / "grid-cnn").glob("experiment_state*.json"):
        f.write_text(f.read_text()[:100])
    before = chaos.mlflow_runs(ws, "grid-cnn")
    out = chaos.subprocess.run(grid(ws, True), cwd=ROOT, capture_output=True, text=True,
                               timeout=600, env=chaos.ENV)
    assert out.returncode == 4, out.stdout[-2000:] + out.stderr[-2000:]
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "cannot restore" in errors[0] and "--name" in errors[0]
    assert "--resume" not in errors[0] and "Traceback" not in out.stderr
    assert chaos.mlflow_runs(ws, "grid-cnn") == before


def test_a_state_cut_short_by_a_kill_during_tunes_copy(tmp_path, grid_reference):
    """Tune was copying its saved state to the storage path when everything was killed: the
    experiment state there is cut short (what a kill in the middle of the copy leaves; the
    smoke pipeline's test, killed as a trial ended, found it empty). The resume puts back the
    last complete copy (search/tunestate.py), says so, and ends as the uninterrupted run."""
    ws = tmp_path / "ws"
    folder = ws / "ray_results" / "grid-cnn"

    def a_complete_copy_kept(_info):  # Tune goes on saving while the trial waits
        return any((folder / ".last-complete").glob("experiment_state-*.json"))

    chaos.stop_at(grid(ws), tmp_path / "run.log", "checkpoint-written@2", a_complete_copy_kept)
    (state,) = folder.glob("experiment_state-*.json")
    state.write_bytes(state.read_bytes()[:state.stat().st_size // 2])
    out = resume_and_compare(grid(ws, True), ws, grid_reference, "grid")
    assert f"grid-cnn: Tune's saved state was cut short by the kill ({state.name}); " \
           "resuming from its last complete copy" in out


def test_tune_state_copies_are_kept_only_whole_and_put_back_only_where_cut(tmp_path):
    import pickle

    from search import tunestate

    state, searcher = tmp_path / "experiment_state-1.json", tmp_path / "searcher-state-1.pkl"
    state.write_text(json.dumps({"trial_data": [1, 2, 3]}))
    searcher.write_bytes(pickle.dumps({"queue": list(range(100))}))
    assert tunestate.whole(state) and tunestate.whole(searcher)
    assert tunestate.keep_copy(tmp_path)
    copies = tmp_path / tunestate.COPIES
    assert sorted(p.name for p in copies.iterdir()) == [state.name, searcher.name]
    # being copied (cut short): the complete copies stay as they were
    state.write_text(json.dumps({"trial_data": [1, 2, 3, 4]})[:20])
    assert not tunestate.whole(state) and not tunestate.keep_copy(tmp_path)
    assert json.loads((copies / state.name).read_text()) == {"trial_data": [1, 2, 3]}
    searcher.write_bytes(searcher.read_bytes()[:-1])  # a pickle short of its STOP
    assert not tunestate.whole(searcher)
    assert tunestate.repair(tmp_path) == [state.name, searcher.name]
    assert json.loads(state.read_text()) == {"trial_data": [1, 2, 3]}
    assert pickle.loads(searcher.read_bytes()) == {"queue": list(range(100))}
    assert tunestate.repair(tmp_path) == []  # whole now: nothing put back
    state.unlink()  # emptied and never written: as missing
    assert tunestate.repair(tmp_path) == [state.name] and tunestate.whole(state)
    assert tunestate.repair(tmp_path / "nothing-saved") == []
    assert not list(tmp_path.glob(".*.tmp-*")) and not list(copies.glob(".*.tmp-*"))


def test_interrupted_tells_an_unreadable_state_from_an_interruption(tmp_path):
    from search.driver import StateError, interrupted

    assert interrupted(str(tmp_path))  # nothing saved yet: stopped before it got going
    (tmp_path / "experiment_state-2026.json").write_text('{"trial_data": [')
    with pytest.raises(StateError, match="cannot be read"):
        interrupted(str(tmp_path))


@pytest.mark.parametrize("cycles", [1, pytest.param(3, marks=pytest.mark.soak)],
                         ids=["one-cycle", "three-cycles"])
def test_chaos_kills_at_random_instants_lose_nothing(tmp_path, cycles):
    """bench/chaos.py's short version: cycles of up to three random SIGKILLs and resumes of a
    grid. CI runs one cycle (the windows above are each forced there already); the soak run
    three."""
    assert chaos.main(["--cycles", str(cycles), "--what", "grid", "--seed", "0", "--workspace",
                       str(tmp_path)]) == 0


@pytest.mark.parametrize("what, cycles", [
    ("grid", 1), pytest.param("weights", 2, marks=pytest.mark.soak),
    pytest.param("pipeline", 1, marks=pytest.mark.soak)], ids=["grid", "weights", "pipeline"])
def test_chaos_sigterms_at_random_instants_stop_as_ctrl_c(tmp_path, what, cycles, capsys):
    """bench/chaos.py --signal term: SIGTERM to the driver at random instants, as `ray job
    stop` and `docker stop` send it; each stop ends as Ctrl-C does (exit 130, no MLflow run
    left RUNNING) within the grace period, every other one with a SIGKILL in the middle of
    that shutdown, and the resumed run loses nothing."""
    assert chaos.main(["--cycles", str(cycles), "--what", what, "--seed", "1", "--signal",
                       "term", "--workspace", str(tmp_path)]) == 0
    assert ", stop faults 0" in capsys.readouterr().out


def test_a_trunk_killed_while_it_is_extended(tmp_path):
    """The 5-epoch trial of batch 32 extends the trunk that the 3-epoch trial computed to its
    branch epoch 2; it is killed after writing the trunk's checkpoint at epoch 4 and before the
    history naming that epoch. The resumed search extends the trunk again from what is on disk
    and every trial's numbers are the uninterrupted run's."""
    reference = tmp_path / "reference" / "ws"
    cmd = chaos.command("search.grid", WSD, reference, None, False)
    assert chaos.finish(cmd, tmp_path / "reference.log") == 0
    ws = tmp_path / "ws"
    info = chaos.stop_at(chaos.command("search.grid", WSD, ws, None, False),
                         tmp_path / "run.log", "trunk-checkpoint-written-4")
    assert info["epoch"] == 4
    trunk = next(p for p in (ws / "trunks").iterdir() if p.is_dir() and
                 (p / "epoch-0004.pt").exists())
    assert len(json.loads((trunk / "history.json").read_text())) == 3
    resume_and_compare(chaos.command("search.grid", WSD, ws, None, True), ws, reference, "wsd")
