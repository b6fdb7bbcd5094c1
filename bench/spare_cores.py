"""A search's wall time when the trials left get the cores of the trials that ended, against
each trial keeping one core.

    python bench/spare_cores.py [--model cnn] [--epochs 2,10] [--train-size 6000]

The same grid twice, side by side in one run, each in a workspace of its own on a fresh 2-CPU
Ray cluster: (a) ``--cpus-per-trial 1``, every trial on one CPU and one thread to its end (what
the search did before search/spare.py); (b) the default, "auto" CPUs: when the short trial has
ended, the long one is paused at a checkpoint and restarted on both CPUs. The grid is one batch
size at two lengths, independent trials (``--no-shared-warmups``, no ASHA), so that the long one
is left alone after the short one's last epoch, as a trunk that ASHA kept is after it cut the
others. Prints each arm's wall time (the whole command: Ray's start, the restart and a compiled
model's compilation included), the long trial's training images/s before and after it grew, its
best validation accuracy, and the ratio of the wall times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(ws: Path, args, given_cpus: bool) -> dict:
    cmd = [sys.executable, "-m", "search.grid", "--model", args.model, "--profile", "quick",
           "--batch-sizes", str(args.batch_size), "--epochs", args.epochs, "--train-size",
           str(args.train_size), "--no-shared-warmups", "--scheduler", "none", "--num-cpus",
           "2", "--workspace", str(ws), "--dashboard-port", "0", "-q"]
    if args.width:
        cmd += ["--width", str(args.width)]
    if given_cpus:
        cmd += ["--cpus-per-trial", "1"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"})
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"search failed ({out.returncode}):\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = next(e for e in client.search_experiments() if e.name.startswith("grid-"))
    trials = [r for r in client.search_runs([exp.experiment_id])
              if r.data.tags.get("kind") == "trial"]
    long = max(trials, key=lambda r: int(r.data.params["epochs"]))
    threads = {m.step: m.value for m in client.get_metric_history(long.info.run_id, "threads")}
    rates = {m.step: m.value for m in client.get_metric_history(long.info.run_id,
                                                                 "images_per_s")}
    one = [v for s, v in rates.items() if threads.get(s) == 1]
    more = [v for s, v in rates.items() if threads.get(s, 1) > 1]
    return {"wall": wall, "one": statistics.median(one) if one else None,
            "more": statistics.median(more) if more else None,
            "grown_at": min((s for s, t in threads.items() if t > 1), default=None),
            "best": float(long.data.tags.get("best_val_acc", "nan"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="cnn")
    p.add_argument("--width", type=int)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", default="2,10", help="the two lengths")
    p.add_argument("--train-size", type=int, default=6000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="spare-cores-") as tmp:
        fixed = run(Path(tmp, "fixed"), args, given_cpus=True)
        spare = run(Path(tmp, "spare"), args, given_cpus=False)
    print(f"{args.model} batch {args.batch_size}, epochs {args.epochs}, "
          f"{args.train_size} images, 2 CPUs")
    print(f"{'arm':28s} {'wall s':>8s} {'img/s 1 thread':>15s} {'img/s grown':>12s} "
          f"{'grew at':>8s} {'best val':>9s}")
    for name, r in (("(a) one CPU per trial", fixed), ("(b) spare cores", spare)):
        def cell(v):
            return "-" if v is None else f"{v:,.0f}"
        print(f"{name:28s} {r['wall']:8.1f} {cell(r['one']):>15s} {cell(r['more']):>12s} "
              f"{r['grown_at'] or '-'!s:>8s} {r['best']:9.4f}")
    print(f"wall time (b)/(a): {spare['wall'] / fixed['wall']:.2f}")


if __name__ == "__main__":
    main()
