"""Kill -9 at any instant: SIGKILL a search at seeded random instants, resume it, compare.

    python bench/chaos.py --cycles 10 [--what grid|wsd|weights|pipeline|all] [--seed 0]
        [--signal kill|term] [--grace 60] [--workspace DIR] [--data-dir DIR]

For each kind of run (``--what``), an uninterrupted reference run first; then ``--cycles``
cycles. A cycle starts the same run in a new workspace and SIGKILLs the driver's whole process
group (its Ray cluster with it) at a random instant drawn from ``--seed``, between Ray's start
and the reference run's length; it resumes the run with ``--resume`` and kills it again, at a
new instant, until a resumed run completes. Then it compares the run with the reference:

- every trial FINISHED exactly once (Tune's and MLflow's view), none FAILED or left RUNNING;
- one MLflow parent run per experiment, one child run per trial (a trial run twice, or a
  child left behind by a trial Tune forgot, is a duplicate);
- each trial's per-epoch val_acc equal to the reference's, epoch by epoch;
- for the class-weight search, the Optuna study equal (the trials that ran, in order, with
  their states, weights and values).

``--signal term`` stops the driver as `ray job stop`, `docker stop` and Kubernetes do instead:
SIGTERM to the driver at the random instant, which every command handles as Ctrl-C (a first
run's instants count from when the driver has set that handler, /proc/PID/status: before it,
while Python imports, SIGTERM ends the process by itself and nothing is recorded yet). A stop
must then end as Ctrl-C ends: exit code 130 (or 0, a run that finished first; or death by
the signal itself, when it came before the command set its handler, still importing) within
``--grace`` seconds, and no MLflow run left RUNNING (the parent and the open trial runs
KILLED). About every other stop (seeded) gets a second signal during that shutdown: SIGKILL of
the whole group at a random instant of its first 3 s (about what the shutdown takes), as a
SIGKILL that follows a SIGTERM too soon; it must lose nothing either. A stop that breaks
the rule counts as a ``stop fault``.

It prints one row per cycle and a table per kind, and ends with the line
``lost L, duplicated D, mismatched M`` (and ``, stop faults F`` with ``--signal term``). Exit
code 0 when all are 0, else 1.

The functions here are also what tests/test_windows.py uses to stop a run at an exact point
(a failpoint, trainables/failpoints.py) instead of a random instant.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
COMMON = ("--profile", "smoke", "--train-size", "400", "--num-cpus", "1",
          "--max-concurrent", "1", "--no-dashboard")
# smoke-sized runs, one trial at a time, so that a run is the same run whatever the kills
RUNS = {
    "grid": ("search.grid", ("--model", "cnn", "--batch-sizes", "32,64", "--epochs", "2,3",
                             "--scheduler", "asha", "--grace-period", "1", *COMMON)),
    # wsd trunks: the 5-epoch trials extend the trunks the 3-epoch ones computed (branch
    # epochs 2 and 4), and ASHA compares the batch sizes on them
    "wsd": ("search.grid", ("--model", "cnn", "--batch-sizes", "32,64", "--epochs", "3,5",
                            "--schedule", "wsd", "--scheduler", "asha", "--grace-period", "1",
                            *COMMON)),
    "weights": ("search.weights", ("--model", "cnn", "--num-samples", "4", "--batch-size",
                                   "64", "--epochs", "3", "--grace-period", "2", *COMMON)),
    "pipeline": ("search.pipeline", ("--models", "cnn,resnet18", "--top-k", "2",
                                     "--no-register", *COMMON)),
}
EXPERIMENTS = {"grid": ["grid-cnn"], "wsd": ["grid-cnn"], "weights": ["weights-cnn"],
               "pipeline": ["smoke-grid-cnn", "smoke-grid-resnet18", "smoke-weights-resnet18"]}
EXIT_DONE = 0


def command(module: str, args, ws: Path, data_dir: str | None, resume: bool) -> list[str]:
    return [sys.executable, "-m", module, *args, "--workspace", str(ws),
            *(["--data-dir", data_dir] if data_dir else []), *(["--resume"] if resume else [])]


def start(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """The driver in a process group of its own, so that a kill takes all of it."""
    with open(log, "a") as out:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**ENV, **(env or {})}, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the driver's process group, then whatever of its Ray cluster left the group
    (Ray starts some of its processes in sessions of their own) and still runs."""
    import psutil

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    for p in family:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(family, timeout=30)


def wait_for(proc: subprocess.Popen, what: str, check, timeout: float = 300):
    """Poll ``check()`` until it returns something true (an event the run writes); fails if
    the process ends first or the event never comes."""
    deadline = time.time() + timeout
    while True:
        found = check()
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}")
        if time.time() > deadline:
            raise AssertionError(f"{what} did not happen in {timeout:.0f} s")
        time.sleep(0.1)


def stop_at(cmd: list[str], log: Path, failpoint: str, then=None) -> dict:
    """Run ``cmd`` until it reaches ``failpoint`` (trainables/failpoints.py), wait for
    ``then(info)`` if given, and SIGKILL the process group; returns the failpoint's record."""
    marker = log.with_suffix(".failpoint.json")
    marker.unlink(missing_ok=True)
    proc = start(cmd, log, {"TUNEFUSE_FAILPOINT": failpoint,
                            "TUNEFUSE_FAILPOINT_FILE": str(marker)})
    try:
        info = json.loads(wait_for(proc, f"failpoint {failpoint}",
                                   lambda: marker.exists() and marker.read_text()))
        if then is not None:
            wait_for(proc, f"the condition after {failpoint}", lambda: then(info), 120)
    finally:
        kill_group(proc)
    return info


def finish(cmd: list[str], log: Path, timeout: float = 900) -> int:
    proc = start(cmd, log)
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            kill_group(proc)


# --- what a run recorded ------------------------------------------------------------------------

def mlflow_runs(ws: Path, experiment: str) -> dict:
    """The experiment's parent runs and, per trial id, its child runs with their per-epoch
    val_acc (step, value) as MLflow holds them."""
    db = ws / "mlflow.db"
    if not db.exists():
        return {"parents": [], "trials": {}}
    with sqlite3.connect(db, timeout=30) as con:
        runs = con.execute(
            "select r.run_uuid, r.status, r.lifecycle_stage, (select value from tags t where "
            "t.run_uuid = r.run_uuid and t.key = 'trial_id'), (select value from tags t where "
            "t.run_uuid = r.run_uuid and t.key = 'mlflow.parentRunId') from runs r join "
            "experiments e on e.experiment_id = r.experiment_id where e.name = ?",
            (experiment,)).fetchall()
        out = {"parents": [], "trials": {}}
        for run_id, status, stage, trial, parent in runs:
            if stage != "active":
                continue
            if parent is None:
                out["parents"].append(status)
                continue
            history = con.execute(
                "select step, value from metrics where run_uuid = ? and key = 'val_acc' "
                "order by step, timestamp", (run_id,)).fetchall()
            out["trials"].setdefault(trial, []).append(
                {"status": status, "val_acc": [(int(s), v) for s, v in history]})
    return out


def tune_statuses(ws: Path, experiment: str) -> dict[str, str]:
    from ray.tune import ExperimentAnalysis

    path = ws / "ray_results" / experiment
    try:
        return {t.trial_id: t.status for t in ExperimentAnalysis(str(path)).trials}
    except Exception:
        return {}


def study(ws: Path, name: str) -> list[tuple]:
    """The Optuna study's trials that ran, in order: (state, weights, value)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        s = optuna.load_study(study_name=name, storage=f"sqlite:///{ws / 'optuna.db'}")
    except KeyError:
        return []
    return [(t.state.name, tuple(sorted(t.params.items())), t.value)
            for t in s.get_trials(deepcopy=False) if "lost" not in t.user_attrs]


def snapshot(ws: Path, what: str) -> dict:
    out = {}
    for name in EXPERIMENTS[what]:
        runs = mlflow_runs(ws, name)
        out[name] = {"parents": runs["parents"], "trials": runs["trials"],
                     "tune": tune_statuses(ws, name)}
        if "weights" in name:
            out[name]["study"] = study(ws, name)
    return out


def by_config(ws: Path, experiment: str) -> dict:
    """Each trial's val_acc history keyed by what it is (its params), not by its Tune id."""
    db = ws / "mlflow.db"
    with sqlite3.connect(db, timeout=30) as con:
        rows = con.execute(
            "select r.run_uuid from runs r join experiments e on e.experiment_id = "
            "r.experiment_id join tags t on t.run_uuid = r.run_uuid where e.name = ? and "
            "t.key = 'trial_id' and r.lifecycle_stage = 'active'", (experiment,)).fetchall()
        out = {}
        for (run_id,) in rows:
            params = tuple(sorted(con.execute(
                "select key, value from params where run_uuid = ? and key not in "
                "('trunk_cache')", (run_id,)).fetchall()))
            out.setdefault(params, []).append([(int(s), v) for s, v in con.execute(
                "select step, value from metrics where run_uuid = ? and key = 'val_acc' "
                "order by step, timestamp", (run_id,)).fetchall()])
    return out


def compare(ws: Path, ref: Path, what: str) -> dict[str, int]:
    """Trials lost, runs duplicated and metrics mismatched between a run and its reference."""
    counts = {"lost": 0, "duplicated": 0, "mismatched": 0}
    got, want = snapshot(ws, what), snapshot(ref, what)
    for name in EXPERIMENTS[what]:
        g, w = got[name], want[name]
        counts["duplicated"] += max(0, len(g["parents"]) - 1)
        counts["lost"] += int(g["parents"] != ["FINISHED"])
        for trial, runs in g["trials"].items():
            counts["duplicated"] += len(runs) - 1
            counts["lost"] += sum(r["status"] != "FINISHED" for r in runs)
            if g["tune"].get(trial) != "TERMINATED":
                counts["lost"] += 1
        counts["lost"] += max(0, len(w["trials"]) - len(g["trials"]))
        counts["lost"] += sum(s != "TERMINATED" for t, s in g["tune"].items()
                              if t not in g["trials"])
        histories, reference = by_config(ws, name), by_config(ref, name)
        for params, runs in reference.items():
            mine = histories.get(params)
            if mine is None or any(h != runs[0] for h in mine):
                counts["mismatched"] += 1
        counts["mismatched"] += len(set(histories) - set(reference))
        if "study" in w and g.get("study") != w["study"]:
            counts["mismatched"] += 1
    return counts


# --- the soak ----------------------------------------------------------------------------------

def reference(what: str, root: Path, data_dir: str | None) -> tuple[Path, float]:
    module, args = RUNS[what]
    ws = root / f"{what}-reference"
    t0 = time.time()
    code = finish(command(module, args, ws, data_dir, False), root / f"{what}-reference.log")
    if code != EXIT_DONE:
        raise SystemExit(f"the reference {what} run failed (exit {code}); see "
                         f"{root / f'{what}-reference.log'}")
    return ws, time.time() - t0


def resumable(ws: Path, what: str) -> bool:
    """Whether a killed run left something for --resume (else it is started again, as a
    user does when told there is nothing to resume)."""
    first = "pipelines/smoke.json" if what == "pipeline" else \
        f"experiments/{EXPERIMENTS[what][0]}.json"
    return (ws / first).exists()


def cycle(what: str, root: Path, i: int, rng: random.Random, length: float,
          data_dir: str | None, max_kills: int = 3,
          stopper: Stopper | None = None) -> tuple[Path, int]:
    """One run, killed at random instants and resumed until it completes; (workspace, kills).
    A run that ends before its first kill (the machine was faster than the reference run) is
    started again in a new workspace with an earlier instant: every cycle has a kill."""
    for attempt in range(6):
        ws, kills = _cycle(what, root, f"{i:03d}" + "abcdef"[attempt] * bool(attempt), rng,
                           length * 0.8 ** attempt, data_dir, max_kills, stopper)
        if kills:
            break
    return ws, kills


EXIT_INTERRUPTED = 130  # what a command stopped by Ctrl-C or SIGTERM exits with
SHUTDOWN_S = 3.0  # about what a search takes from SIGTERM to its exit on 2 cores


def running_runs(ws: Path) -> int:
    """MLflow runs of the workspace's store still RUNNING (none after a clean stop)."""
    db = ws / "mlflow.db"
    if not db.exists():
        return 0
    with sqlite3.connect(db, timeout=30) as con:
        return con.execute("select count(*) from runs where status = 'RUNNING' and "
                           "lifecycle_stage = 'active'").fetchone()[0]


def catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a SIGTERM handler set (Linux: SigCgt in /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next((line.split()[1] for line in status.splitlines()
                   if line.startswith("SigCgt:")), "0")
    return bool(int(caught, 16) >> (signal.SIGTERM - 1) & 1)


@dataclass
class Stopper:
    """How a cycle stops its run: SIGKILL of the group (``kill``), or SIGTERM to the driver
    (``term``), which must end as Ctrl-C does within ``grace`` seconds; every other SIGTERM
    (drawn from the cycle's random numbers) is followed, during the shutdown, by SIGKILL.
    ``faults`` counts the stops that broke the rule (module docstring)."""

    signal: str = "kill"
    grace: float = 60.0
    faults: int = 0
    notes: list = field(default_factory=list)

    def stop(self, proc: subprocess.Popen, ws: Path, rng: random.Random) -> str:
        """Stop ``proc``; what was done, for the log."""
        if self.signal == "kill":
            kill_group(proc)
            return "SIGKILL"
        second = rng.random() < 0.5  # a SIGKILL within the shutdown's first seconds
        cut = rng.uniform(0, min(SHUTDOWN_S, self.grace)) if second else self.grace
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=cut)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            if second:
                return f"SIGTERM, then SIGKILL {cut:.1f} s into its shutdown"
            self.faults += 1
            self.notes.append(f"no exit {self.grace:g} s after SIGTERM")
            return f"SIGTERM, no exit in {self.grace:g} s: SIGKILL (a stop fault)"
        kill_group(proc)  # what of its Ray cluster may be left
        left = running_runs(ws)
        # -SIGTERM: it came before the command set its handler (Python still importing),
        # when nothing is recorded yet
        if code not in (EXIT_INTERRUPTED, EXIT_DONE, -signal.SIGTERM) or (code and left):
            self.faults += 1
            self.notes.append(f"exit {code} after SIGTERM, {left} run(s) left RUNNING")
            return f"SIGTERM: exit {code}, {left} run(s) RUNNING (a stop fault)"
        return (f"SIGTERM: exit {code}" + (" (it had finished)" if code == EXIT_DONE else "")
                + (f" before the SIGKILL planned {cut:.1f} s after it" if second else ""))


def _cycle(what: str, root: Path, label: str, rng: random.Random, length: float,
           data_dir: str | None, max_kills: int,
           stopper: Stopper | None = None) -> tuple[Path, int]:
    stopper = stopper or Stopper()
    module, args = RUNS[what]
    ws = root / f"{what}-{label}"
    log = root / f"{what}-{label}.log"
    kills = 0
    while True:
        cmd = command(module, args, ws, data_dir, resume=resumable(ws, what))
        offset = log.stat().st_size if log.exists() else 0
        proc = start(cmd, log)
        code = None
        if kills < max_kills:
            # the first kill anywhere in a whole run; a later one once the resumed run has
            # started its search (Ray is up), anywhere in the rest of a run's length
            if kills:
                try:
                    wait_for(proc, "the search's start", lambda o=offset: "experiment " in
                             log.read_text(errors="replace")[o:], timeout=300)
                except AssertionError:
                    code = proc.wait()
            elif stopper.signal == "term":
                # a SIGTERM while Python imports ends the command by the signal itself (no
                # handler yet, nothing recorded): the instants count from the handler's setting
                try:
                    wait_for(proc, "its SIGTERM handler", lambda p=proc.pid: catches_sigterm(p),
                             timeout=300)
                except AssertionError:
                    code = proc.wait()
            instant = rng.uniform(0.5, length) if kills == 0 else rng.uniform(0, 0.7 * length)
            if code is None:
                try:
                    code = proc.wait(timeout=instant)
                except subprocess.TimeoutExpired:
                    done = stopper.stop(proc, ws, rng)
                    kills += 1
                    with open(log, "a") as f:
                        f.write(f"\n=== chaos: {done} at {instant:.1f} s (stop {kills})\n")
                    continue
        if code is None:
            code = proc.wait(timeout=900)
        if code != EXIT_DONE:
            raise RuntimeError(f"{what} cycle {label}: the run ended with exit {code} after "
                               f"{kills} kill(s); see {log}")
        return ws, kills


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/chaos.py", description=__doc__.split("\n")[0])
    p.add_argument("--cycles", type=int, default=3)
    p.add_argument("--what", choices=(*RUNS, "all"), default="grid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workspace", default=None, help="folder for the runs (default a temp one)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--signal", choices=("kill", "term"), default="kill",
                   help="kill: SIGKILL the driver's group; term: SIGTERM the driver, as `ray "
                        "job stop` and `docker stop` do (module docstring)")
    p.add_argument("--grace", type=float, default=60.0,
                   help="seconds a SIGTERM'd run has to exit (RAY_JOB_STOP_WAIT_TIME_S)")
    args = p.parse_args(argv)
    stopper = Stopper(args.signal, args.grace)
    import tempfile

    root = Path(args.workspace or tempfile.mkdtemp(prefix="tunefuse-chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    kinds = list(RUNS) if args.what == "all" else [args.what]
    totals = {"cycles": 0, "kills": 0, "lost": 0, "duplicated": 0, "mismatched": 0}
    rows = []
    print(f"chaos: {args.cycles} cycle(s) of {', '.join(kinds)}, seed {args.seed}, in {root}",
          flush=True)
    for what in kinds:
        ref, length = reference(what, root, args.data_dir)
        print(f"{what}: reference run {length:.0f} s", flush=True)
        row = {"what": what, "cycles": 0, "kills": 0, "lost": 0, "duplicated": 0,
               "mismatched": 0}
        for i in range(args.cycles):
            ws, kills = cycle(what, root, i, rng, length, args.data_dir, stopper=stopper)
            counts = compare(ws, ref, what)
            print(f"{what} cycle {i}: {kills} kill(s); lost {counts['lost']}, duplicated "
                  f"{counts['duplicated']}, mismatched {counts['mismatched']}", flush=True)
            row["cycles"] += 1
            row["kills"] += kills
            for k, v in counts.items():
                row[k] += v
        rows.append(row)
        for k in totals:
            totals[k] += row[k]
    print("\n| run | cycles | kills | trials lost | duplicated runs | metric mismatches |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in [*rows, {"what": "all", **totals}]:
        print(f"| {r['what']} | {r['cycles']} | {r['kills']} | {r['lost']} | "
              f"{r['duplicated']} | {r['mismatched']} |")
    faults = f", stop faults {stopper.faults}" if args.signal == "term" else ""
    print(f"\nlost {totals['lost']}, duplicated {totals['duplicated']}, mismatched "
          f"{totals['mismatched']}{faults}")
    for note in stopper.notes:
        print(f"stop fault: {note}")
    clean = totals["lost"] == totals["duplicated"] == totals["mismatched"] == stopper.faults
    return 0 if clean and stopper.faults == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
