"""What the terminal shows (search/progress.py, trainables/cli.py's verbosity): the progress view
fed as Tune feeds it, on a pipe and on a terminal; -q and -v on every command; and a real smoke
grid, Ctrl-C'd and resumed, as a user sees it (no Ray or Tune internals, every trial under its
MLflow run's name, ETAs, the resume hint last)."""

from __future__ import annotations

import io
import os
import re
import signal
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from conftest import (
    ETA,
    NAME,
    ROOT,
    _run_streaming,
    internal_lines,
    need_real_data,
    write_idx_set,
)

from search import plan as plans
from search.context import RunContext
from search.progress import ProgressView, TrialLines, clock, stop_text
from search.records import trial_run_name
from trainables import trunk as trunks
from trainables.cli import NORMAL, QUIET, VERBOSE, ArgParser, OneLineErrors, output

HINT = "Continue it with the same command and --resume"


class Trial:
    """What the view and TrialLines read of a Tune Trial."""

    def __init__(self, trial_id: str, batch_size: int, epochs: int, status: str = "PENDING",
                 trunk: bool = False):
        self.trial_id, self.status = trial_id, status
        self.config = {"model": "cnn", "model_kwargs": {}, "batch_size": batch_size,
                       "epochs": epochs, "warmup_epochs": 1, "schedule": "wsd",
                       "decay_fraction": 0.2, "trunk_cache": "/trunks" if trunk else None}
        self.error_file, self.num_failures = None, 0


class Stops:
    def __init__(self):
        self.stops: dict = {}


def feed(view: ProgressView, lines: TrialLines, trial: Trial, epoch: int, acc: float,
         seconds: float = 2.0, computed: int = 1) -> None:
    trial.status = "RUNNING"
    lines.on_trial_result(0, [], trial, {"epoch": epoch, "val_acc": acc, "images_per_s": 1234.5,
                                         "time_this_iter_s": seconds,
                                         "epochs_computed": computed})


def test_a_clock_is_a_time_or_a_question_mark():
    assert [clock(s) for s in (0, 42, 725, 3723, None)] == ["0:00", "0:42", "12:05", "1:02:03",
                                                            "?"]


def test_on_a_pipe_each_epoch_is_a_line_with_the_trials_mlflow_name_and_an_eta(monkeypatch):
    monkeypatch.setenv("TUNEFUSE_PROGRESS_EVERY", "0")
    a, b = Trial("abc12_00000", 64, 4), Trial("abc12_00001", 128, 4)
    scheduler = Stops()
    view = ProgressView("grid-cnn", "val_acc", ("batch_size", "epochs"), scheduler)
    lines = TrialLines("grid-cnn", "val_acc", ("batch_size", "epochs"), scheduler, view)
    with redirect_stdout(io.StringIO()) as out, output(NORMAL):
        view.setup(start_time=0.0, total_samples=2)
        assert not view.should_report([a, b])  # nothing happened yet
        feed(view, lines, a, 1, 0.7512)
        assert view.should_report([a, b])
        view.report([a, b], False)
        feed(view, lines, a, 2, 0.8)
        scheduler.stops["abc12_00001"] = {"epoch": 1, "rung": 2, "metric": "val_acc",
                                          "value": 0.5, "cutoff": 0.75, "compared_with": 1}
        feed(view, lines, b, 1, 0.5)
        b.status = "TERMINATED"
        lines.on_trial_complete(0, [], b)
        view.should_report([a, b])
        view.report([a, b], False)
    text = out.getvalue()
    assert not internal_lines(text), text
    names = {m.group(0) for m in NAME.finditer(text)}
    assert names == {trial_run_name(t.trial_id, t.config) for t in (a, b)} == {
        "cnn-b64-e4-00000", "cnn-b128-e4-00001"}
    first = text.splitlines()[0]
    assert first == ("[grid-cnn] cnn-b64-e4-00000  epoch 1/4  val_acc 0.7512  best 0.7512  "
                     "1,234 img/s  ETA 0:06"), first  # 3 epochs left at 2 s each
    assert "[grid-cnn] 0 done, 1 running, 0 stopped, 0 failed, 1 pending; best " \
           "cnn-b64-e4-00000 val_acc 0.7512; search ETA 0:14" in text  # 3 + 4 epochs, 1 at a time
    # the stop is one line with its rung and cutoff, and the count says stopped
    assert "[grid-cnn] cnn-b128-e4-00001: stopped by ASHA at epoch 1 (rung 2: 0.5000 < 0.7500);" \
           " best val_acc 0.5000 at epoch 1" in text
    assert "0 done, 1 running, 1 stopped, 0 failed, 0 pending" in text
    assert all(ETA.search(ln) for ln in text.splitlines() if "epoch " in ln and "/" in ln)


def test_a_pipe_gets_its_lines_at_most_every_n_seconds(monkeypatch):
    monkeypatch.setenv("TUNEFUSE_PROGRESS_EVERY", "3600")
    a = Trial("abc12_00000", 64, 4)
    view = ProgressView("g", "val_acc", ("batch_size",), Stops())
    lines = TrialLines("g", "val_acc", ("batch_size",), Stops(), view)
    with redirect_stdout(io.StringIO()) as out, output(NORMAL):
        view.setup(start_time=0.0, total_samples=1)
        for epoch in (1, 2, 3):
            feed(view, lines, a, epoch, 0.5)
            assert not view.should_report([a])
        assert view.should_report([a], done=True)  # the end: what is queued, latest epoch only
        view.report([a], True)
    assert out.getvalue().splitlines() == [
        "[g] cnn-b64-e4-00000  epoch 3/4  val_acc 0.5000  best 0.5000  1,234 img/s  ETA 0:02"]


def test_the_search_eta_counts_a_shared_trunk_once():
    """wsd trials of 4, 8 and 12 epochs on one trunk branch at 3, 7 and 10 (warm-up 1): the
    trunk's 10 epochs once, then 1 + 1 + 2 of their own."""
    trials = [Trial(f"t_0000{i}", 64, e, trunk=True) for i, e in enumerate((4, 8, 12))]
    assert [trunks.place(t.config).branch for t in trials] == [3, 7, 10]
    view = ProgressView("g", "val_acc", ("epochs",), Stops(),
                        plans.Plan(3, "", 24, 14, True, True, at_a_time=2))
    for t in trials:
        view._sync(t)
    assert view.epochs_left() == 14 == trunks.epochs_at_most([t.config for t in trials])
    lines = TrialLines("g", "val_acc", ("epochs",), Stops(), view)
    feed(view, lines, trials[0], 3, 0.7, seconds=1.0)
    assert view.epochs_left() == 11  # the trunk at 3 of 10, then 1 + 1 + 2
    assert view.eta() == pytest.approx(11 * 1.0 / 2)
    feed(view, lines, trials[0], 4, 0.7, seconds=1.0)
    trials[0].status = "TERMINATED"
    lines.on_trial_complete(0, [], trials[0])
    assert view.epochs_left() == 10  # the trunk still at 3 (of 10), then 1 + 2
    # ASHA cuts the trunk: its other trials stop at their next epoch, nothing is left
    lines.scheduler.stops["t_00001"] = {"epoch": 4, "rung": 4, "trunk": "batch size 64",
                                        "trunk_value": 0.5, "value": 0.5, "cutoff": 0.6}
    feed(view, lines, trials[1], 4, 0.5, seconds=1.0)
    trials[1].status = "TERMINATED"
    lines.on_trial_complete(0, [], trials[1])
    assert view.epochs_left() == 0


def test_a_stop_on_a_trunk_says_so():
    assert stop_text({"rung": 4, "trunk": "batch size 64", "trunk_value": 0.81, "cutoff": 0.83,
                      "value": 0.81}) == "rung 4 (trunk): 0.8100 < 0.8300"
    assert stop_text({"rung": 2, "value": 0.5, "cutoff": None}) == "rung 2: 0.5000 < n/a"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_view_is_redrawn_in_place(monkeypatch):
    a, b = Trial("abc12_00000", 64, 4), Trial("abc12_00001", 128, 4)
    view = ProgressView("grid-cnn", "val_acc", ("batch_size", "epochs"), Stops())
    lines = TrialLines("grid-cnn", "val_acc", ("batch_size", "epochs"), Stops(), view)
    screen = Terminal()
    with redirect_stdout(screen), output(NORMAL):
        view.setup(start_time=0.0, total_samples=2)
        assert view.should_report([a, b])  # nothing drawn yet
        view.report([a, b], False)
        drawn = screen.getvalue().splitlines()
        assert drawn[0] == "grid-cnn: search ETA after the first epoch; 0 done, 0 running, " \
                           "0 stopped, 0 failed, 2 pending"
        assert len(drawn) == 4 and NAME.search(drawn[2]) and "pending" in drawn[2]
        feed(view, lines, a, 1, 0.75)
        view.printed_at = 0.0  # a second later
        assert view.should_report([a, b])
        view.report([a, b], False)
        # the old view is taken off (cursor up 4 lines, erase below), the new one drawn
        redraw = screen.getvalue()[len("\n".join(drawn)) + 1:]
        assert redraw.startswith("\x1b[4F\x1b[J")
        row = next(ln for ln in redraw.splitlines() if ln.startswith("  cnn-b64-e4-00000"))
        assert re.search(r"1/4\s+0\.7500\s+0\.7500\s+1,234\s+0:06  running$", row), row
        # a trial's end is printed above the view, which comes back at the next report
        a.status = "TERMINATED"
        lines.on_trial_complete(0, [], a)
        assert view.drawn == 0 and view.should_report([a, b])
        view.report([a, b], True)
    assert "[grid-cnn] cnn-b64-e4-00000: finished, 4 epochs" in screen.getvalue()
    assert view.drawn == 0  # the last view stays, above what follows


def test_quiet_shows_nothing_and_verbose_shows_tunes_table(capsys, monkeypatch):
    """The view shows what its command's verbosity says: -q nothing; the same view (Tune keeps
    it with the experiment) attached to a command resumed with -v, Tune's own table."""
    a = Trial("abc12_00000", 64, 4)
    view = ProgressView("g", "val_acc", ("batch_size",), Stops(), level=QUIET)
    lines = TrialLines("g", "val_acc", ("batch_size",), Stops(), view)
    with output(QUIET):
        view.setup(start_time=0.0, total_samples=1, metric="val_acc", mode="max")
        feed(view, lines, a, 1, 0.5)
        print("not shown")
        assert not view.should_report([a], done=True)
        a.status = "TERMINATED"
        lines.on_trial_complete(0, [], a)
    assert capsys.readouterr().out == ""
    from ray.tune import CLIReporter

    monkeypatch.setattr(CLIReporter, "report", lambda self, trials, done, *info: print(
        "Tune's table with", *info))
    view.attach(RunContext(VERBOSE))  # search/tuner.py restore: the resumed command's
    with output(VERBOSE):
        assert view.should_report([a], done=True)
        view.report([a], True, "ScheduleAwareASHA: a bracket")
    assert capsys.readouterr().out == "Tune's table with ScheduleAwareASHA: a bracket\n"


# Each command's main parses -q / -v into its options and runs under them (trainables/flags.py
# run_command).
COMMANDS = ("search.grid", "search.weights", "tunefuse.pipeline", "analysis.report",
            "trainables.train", "trainables.data")
REQUIRED = {"search.grid": ["--model", "cnn"], "search.weights": ["--model", "resnet18"]}


@pytest.mark.parametrize("module", COMMANDS)
@pytest.mark.parametrize(("flags", "level"), [(["-q"], QUIET), ([], NORMAL), (["-v"], VERBOSE)])
def test_every_command_runs_at_the_verbosity_asked(module, flags, level, monkeypatch, capsys):
    """Its main hands its run the level asked for, inside the output block of that level: the
    command's own lines print unless -q (trainables/cli.py output)."""
    import importlib

    mod = importlib.import_module(module)
    seen = []

    def run(options, *more):  # the command's run, in its main's output block
        seen.append(options.verbosity)
        print("the command's own line")
        return 0

    monkeypatch.setattr(mod, "run", run)
    assert mod.main([*flags, *REQUIRED.get(module, [])]) == 0
    assert seen == [level]
    assert ("the command's own line" in capsys.readouterr().out) == (level > QUIET)


def test_predict_takes_q_and_v():
    from analysis import predict

    p = ArgParser(prog="x")
    assert p.parse_args(["-q"]).verbosity == QUIET and p.parse_args(["-v"]).verbosity == VERBOSE
    assert p.parse_args([]).verbosity == NORMAL
    assert "output(" in Path(predict.__file__).read_text()  # its main runs under them


def test_quiet_prints_errors_only(tmp_path):
    import subprocess

    small = write_idx_set(tmp_path / "small")
    ok = subprocess.run([sys.executable, "-m", "trainables.data", "-q", "--data-dir",
                         str(small), "--train-size", "all"], cwd=ROOT, capture_output=True,
                        text=True)
    assert ok.returncode == 0 and ok.stdout == "" and ok.stderr == ""
    bad = subprocess.run([sys.executable, "-m", "trainables.data", "-q", "--data-dir",
                          str(tmp_path / "none")], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == "" and bad.stderr.startswith("error: ")


EXITS = """
import atexit, sys, threading
from trainables.cli import exit_now
atexit.register(lambda: print("exit handler ran"))
print("buffered " * 2000)  # more than a line, left in the pipe's buffer
if sys.argv[1] == "thread":  # a thread that is not a daemon: the ordinary exit waits for it
    started = threading.Event()
    def late():  # prints once the main thread has ended, which only the ordinary exit marks
        started.set(); threading.main_thread().join()
        print("the thread's last line", flush=True)
    threading.Thread(target=late).start()
    started.wait()
exit_now(int(sys.argv[2]))
"""


@pytest.mark.parametrize("case", ["plain", "thread"])
def test_a_command_ends_with_its_code_its_output_and_its_exit_handlers(case):
    """trainables/cli.py's exit_now, which every command's __main__ ends with: it skips the
    interpreter's teardown of the modules, not what a command leaves behind."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", EXITS, case, "3"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stderr
    assert out.stdout.count("buffered") == 2000 and out.stdout.endswith("exit handler ran\n")
    assert ("the thread's last line" in out.stdout) == (case == "thread")
    for module in (*COMMANDS, "analysis.predict"):
        source = (ROOT / (module.replace("search.pipeline", "tunefuse.pipeline")
                          .replace(".", "/") + ".py")).read_text()
        assert source.rstrip().endswith("exit_now(main)"), module

# --- a real smoke grid ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def interrupted_grid(tmp_path_factory):
    """A user's smoke grid at the default verbosity, one trial at a time: Ctrl-C once a trial
    has printed an epoch, then --resume to the end. Batch 16 and 256 of the smoke profile's 900
    training images: at the first rung (epoch 2) the 256 trunk has taken 8 steps, the 16 one
    114, so the 256 trunk is cut there, and its 4-epoch trial, started after that, is stopped
    at its first epoch, which it took from the trunk. (workspace, output of the interrupted
    run, of the resumed one, the epoch line the Ctrl-C came after)"""
    need_real_data()
    ws = tmp_path_factory.mktemp("interrupted") / "ws"
    cmd = [sys.executable, "-m", "search.grid", "--model", "cnn", "--profile", "smoke",
           "--batch-sizes", "16,256", "--max-concurrent", "1", "--workspace", str(ws),
           "--no-dashboard"]
    env = {**os.environ, "TUNEFUSE_PROGRESS_EVERY": "0"}
    seen: list[str] = []

    def ctrl_c_after_an_epoch(proc, line):
        if re.search(r"  epoch \d+/\d+ ", line) and not seen:
            seen.append(line)
            proc.send_signal(signal.SIGINT)

    code, interrupted = _run_streaming(cmd, ctrl_c_after_an_epoch, timeout=300, env=env)
    assert code == 130, interrupted
    code, resumed = _run_streaming([*cmd, "--resume"], timeout=300, env=env)
    assert code == 0, resumed
    return ws, interrupted, resumed, seen[0]


@pytest.mark.slow
def test_a_smoke_grid_ctrl_c_then_resumed_shows_only_its_own_lines(interrupted_grid):
    """No line of either run comes from Ray or Tune, every trial name printed is its MLflow
    run's, the epoch line has an ETA that is a time, the resume hint is the last line after
    the Ctrl-C, and an ASHA stop shows its rung and cutoff."""
    from mlflow.tracking import MlflowClient

    ws, interrupted, resumed, epoch_line = interrupted_grid
    assert ETA.search(epoch_line), epoch_line
    last = [ln for ln in interrupted.splitlines() if ln.strip()][-1]
    assert HINT in last, interrupted
    for text in (interrupted, resumed):
        assert not internal_lines(text), internal_lines(text)
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name("grid-cnn")
    runs = {r.info.run_name for r in client.search_runs([exp.experiment_id],
                                                        "tags.kind = 'trial'")}
    printed = {m.group(0) for m in NAME.finditer(interrupted + resumed)}
    assert len(runs) == 4 and printed == runs, (printed, runs)
    assert re.search(r"cnn-b256-e3-\w+: stopped by ASHA at epoch 2 \(rung 2 \(trunk\): "
                     r"0\.\d{4} < 0\.\d{4}\)", resumed), resumed
    assert re.search(r"^trial\s+batch_size\s+epochs\s+status", resumed, re.M)


@pytest.mark.slow
def test_a_kept_checkpoint_holds_the_epoch_it_is_recorded_for(interrupted_grid):
    """A trial ASHA stopped at an epoch it took from its trunk holds no weights of its own: it
    keeps no checkpoint (Tune's checkpoint at the end would have saved its untrained state as
    that epoch's). Every kept checkpoint is of its run's best epoch, with its val_acc."""
    from mlflow.tracking import MlflowClient

    from trainables import checkpoint

    ws = interrupted_grid[0]
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name("grid-cnn")
    runs = {r.info.run_name.rsplit("-", 1)[0]: r for r in client.search_runs(
        [exp.experiment_id], "tags.kind = 'trial'")}
    replayed = runs["cnn-b256-e4"]
    assert replayed.data.tags["stopped_at_epoch"] == "1", replayed.data.tags
    assert "best_checkpoint" not in replayed.data.tags
    kept = [r for r in runs.values() if "best_checkpoint" in r.data.tags]
    assert len(kept) == 3
    for run in kept:
        path = client.download_artifacts(run.info.run_id, "best_checkpoint/checkpoint.pt",
                                         str(ws / "downloads" / run.info.run_id))
        ckpt = checkpoint.load(path)
        assert ckpt["epoch"] == int(run.data.tags["best_epoch"]) > 0, run.info.run_name
        assert ckpt["metrics"]["val_acc"] == pytest.approx(float(run.data.tags["best_val_acc"]))


def test_a_librarys_errors_are_one_line_and_its_warnings_only_under_v(capfd):
    import logging

    tune_log = logging.getLogger("ray.tune.execution.tune_controller")
    with output(NORMAL):
        tune_log.warning("Experiment has been interrupted\nResume experiment with: Tuner.restore")
        try:
            raise OSError("No space left on device\n  more")
        except OSError:
            tune_log.exception("Trial X: Error handling checkpoint %s", "ckpt")
        try:
            raise FileNotFoundError("Path not found: checkpoint_000001")
        except FileNotFoundError:  # a checkpoint already gone: the trial says so itself
            tune_log.exception("Trial X: Error handling checkpoint %s", "ckpt")
        tune_log.error("Trial task failed for trial X\nTraceback ...")  # the view says it
    assert capfd.readouterr().err.splitlines() == [
        "ray: Trial X: Error handling checkpoint ckpt (OSError: No space left on device)"]
    ray_log = logging.getLogger("ray")
    own = list(ray_log.handlers)
    with output(VERBOSE):  # Ray's own handlers print everything, as without tunefuse
        assert ray_log.handlers == own and not any(
            isinstance(h, OneLineErrors) for h in ray_log.handlers)
    with output(NORMAL):
        assert [type(h) for h in ray_log.handlers] == [OneLineErrors]
    assert ray_log.handlers == own  # put back
