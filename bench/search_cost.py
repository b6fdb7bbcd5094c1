"""What shared warm-ups, wsd trunks and ASHA save: epochs computed, wall time, best val accuracy.

    python bench/search_cost.py [--model cnn] [--profile quick] [--train-size 10000]
        [--batch-sizes 32,64,128,256,512] [--epochs 4,6,8,12] [--grace-period 2]

Runs one grid three ways, side by side in one run, each in a workspace of its own:
(a) the exhaustive grid, every trial computing its own warm-up (--scheduler none
    --no-shared-warmups), cosine schedule;
(b) schedule-aware ASHA with warm-ups shared between trials, cosine schedule;
(c) the wsd schedule, trials of one batch size sharing one trunk, ASHA across lengths on it.
Epochs computed are counted from the trials' results (``epochs_computed``: an epoch taken from
a shared warm-up or trunk costs nothing, one a restored trial computes again counts again).

It then gives the epochs each would compute on the seed's grid (5 batch sizes x 10 lengths,
three models): exact for (a), and for (b) and (c) without pruning; with pruning, a simulation:
Tune's scheduler (search/asha.py, the seed profile's rungs) is fed, trial by trial in the
grid's order, with the learning curves recorded in arm (a), stretched to the seed's lengths.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.plan import epochs_at_most
from search.profiles import PROFILES
from trainables.config import TrainConfig
from trainables.schedule import branch_epoch

ARMS = (("(a) exhaustive, own warm-ups", ["--scheduler", "none", "--no-shared-warmups",
                                           "--schedule", "cosine"]),
        ("(b) ASHA + shared warm-ups", ["--scheduler", "asha", "--schedule", "cosine"]),
        ("(c) wsd trunks + ASHA", ["--scheduler", "asha", "--schedule", "wsd"]))


def results_of(path: Path) -> list[list[dict]]:
    """Each trial's results (result.json lines) under a Tune experiment folder."""
    trials = []
    for f in sorted(path.glob("*/result.json")):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        trials.append([r for r in rows if "epoch" in r])
    return trials


def computed(trials: list[list[dict]]) -> int:
    return sum(int(r.get("epochs_computed", 1)) for rows in trials for r in rows)


def best(trials: list[list[dict]]) -> float:
    return max(r["val_acc"] for rows in trials for r in rows)


def curves(trials: list[list[dict]]) -> dict[tuple[int, int], list[float]]:
    """(batch size, epochs) -> val_acc per epoch, of the complete trials."""
    out = {}
    for rows in trials:
        cfg = rows[0]["config"]
        if len(rows) == cfg["epochs"]:
            out[int(cfg["batch_size"]), int(cfg["epochs"])] = [r["val_acc"] for r in rows]
    return out


# --- the seed's grid ----------------------------------------------------------------------------

def exhaustive(lengths, batch_sizes) -> int:
    return sum(lengths) * len(batch_sizes)


def unpruned(lengths, batch_sizes, warmup: int, schedule: str, fraction: float) -> int:
    """Epochs with sharing and no early stopping: what a search's plan says it computes at
    most (search/plan.py)."""
    return epochs_at_most([{"batch_size": b, "epochs": e, "warmup_epochs": warmup,
                            "schedule": schedule, "decay_fraction": fraction,
                            "trunk_cache": "bench"} for b in batch_sizes for e in lengths])


class SimTrial:
    status = "RUNNING"

    def __init__(self, trial_id: str, config: dict):
        self.trial_id, self.config = trial_id, config


def simulate(recorded, batch_sizes, lengths, warmup, schedule, profile) -> int:
    """Epochs computed by the seed's grid with the real scheduler, trials one at a time in the
    grid's order (lengths outermost, as search/grid.py orders them), each reporting, epoch by
    epoch, the recorded curve of its batch size stretched to its length; an epoch of a shared
    trunk (or warm-up) already computed costs nothing."""
    from ray.tune.schedulers import TrialScheduler

    from search.asha import ScheduleAwareASHA

    asha = ScheduleAwareASHA(profile.grace_period, profile.reduction_factor)
    longest = {b: max(e for bb, e in recorded if bb == b) for b, _ in recorded}
    extent = dict.fromkeys(batch_sizes, 0)  # how far each batch size's trunk was computed
    total = 0
    for length in lengths:
        for b in batch_sizes:
            cfg = TrainConfig(batch_size=b, epochs=length, warmup_epochs=warmup,
                              schedule=schedule).to_dict()
            trial = SimTrial(f"b{b}e{length}", {**cfg, "trunk_cache": "sim",
                                                "trunk_lengths": list(lengths)})
            asha.on_trial_add(None, trial)
            curve = recorded[b, longest[b]]
            branch = branch_epoch(TrainConfig.from_dict(cfg))
            for epoch in range(1, length + 1):
                if epoch > branch or epoch > extent[b]:
                    total += 1
                    if epoch <= branch:
                        extent[b] = epoch
                # the trunk runs at one rate: its curve is stretched over the longest length;
                # a decay over its own length
                span = max(lengths) if epoch <= branch and schedule == "wsd" else length
                value = curve[min(len(curve), math.ceil(len(curve) * epoch / span)) - 1]
                if asha.on_trial_result(None, trial, {"epoch": epoch, "val_acc": value}) \
                        == TrialScheduler.STOP and epoch < length:
                    break
            trial.status = "TERMINATED"
            asha.on_trial_complete(None, trial, {"epoch": epoch})
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="cnn")
    p.add_argument("--profile", default="quick")
    p.add_argument("--train-size", default="10000")
    p.add_argument("--batch-sizes", default="32,64,128,256,512")
    p.add_argument("--epochs", default="4,6,8,12")
    p.add_argument("--grace-period", default="2")
    p.add_argument("--num-cpus", default="2")
    p.add_argument("--max-concurrent", default="2")
    p.add_argument("--keep", help="keep the three workspaces in this folder")
    args = p.parse_args()
    import ray

    from search import grid

    rows, runs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        for i, (label, extra) in enumerate(ARMS):
            name = "abc"[i]
            ws = root / name  # a workspace each: nothing shared carries over between arms
            t0 = time.perf_counter()
            code = grid.main(["--model", args.model, "--profile", args.profile,
                              "--train-size", args.train_size, "--batch-sizes", args.batch_sizes,
                              "--epochs", args.epochs, "--grace-period", args.grace_period,
                              "--workspace", str(ws), "--name", name, "--num-cpus",
                              args.num_cpus, "--max-concurrent", args.max_concurrent,
                              "--cpus-per-trial", "1", "--dashboard-port", "0", *extra])
            wall = time.perf_counter() - t0
            ray.shutdown()
            assert code == 0, f"{label} failed"
            runs[name] = results_of(ws / "ray_results" / name)
            rows.append((label, computed(runs[name]), wall, best(runs[name])))
    print(f"\n{args.model}, profile {args.profile}, train size {args.train_size}, batch sizes "
          f"{args.batch_sizes}, epochs {args.epochs}, ASHA grace period {args.grace_period}, "
          f"{args.max_concurrent} trials at a time")
    print(f"{'search':<30} {'epochs computed':>15} {'of (a)':>7} {'wall s':>7} "
          f"{'of (a)':>7} {'best val_acc':>13} {'vs (a)':>7}")
    _, ca, wa, ba = rows[0]
    for label, c, w, b in rows:
        print(f"{label:<30} {c:>15} {c / ca:>7.2f} {w:>7.0f} {w / wa:>7.2f} {b:>13.4f} "
              f"{100 * (b - ba):>+6.2f}p")

    seed = PROFILES["seed"]
    batch_sizes, lengths = seed.batch_sizes, seed.epochs
    recorded = curves(runs["a"])
    sizes = sorted({b for b, _ in recorded})
    a = exhaustive(lengths, batch_sizes)
    b_full = unpruned(lengths, batch_sizes, seed.warmup_epochs, "cosine", 0.2)
    c_full = unpruned(lengths, batch_sizes, seed.warmup_epochs, "wsd", 0.2)
    print(f"\nthe seed's grid: batch sizes {','.join(map(str, batch_sizes))} x epochs "
          f"{','.join(map(str, lengths))}, warm-up {seed.warmup_epochs}, ASHA grace period "
          f"{seed.grace_period}, reduction factor {seed.reduction_factor:g}; per model (x3 for "
          "the three models)")
    print(f"{'search':<30} {'epochs':>8} {'of (a)':>7}   how")
    print(f"{'(a) exhaustive':<30} {a:>8} {1:>7.2f}   exact")
    print(f"{'(b) shared warm-ups':<30} {b_full:>8} {b_full / a:>7.2f}   exact, without pruning")
    print(f"{'(c) wsd trunks':<30} {c_full:>8} {c_full / a:>7.2f}   exact, without pruning")
    if len(sizes) == len(batch_sizes):
        curve_of = {s: b for s, b in zip(batch_sizes, sizes, strict=True)}
        mapped = {(s, e): recorded[b, e] for s, b in curve_of.items()
                  for bb, e in recorded if bb == b}
        for label, schedule in (("(b) + ASHA", "cosine"), ("(c) + ASHA", "wsd")):
            n = simulate(mapped, batch_sizes, lengths, seed.warmup_epochs, schedule, seed)
            print(f"{label:<30} {n:>8} {n / a:>7.2f}   simulation: arm (a)'s curves of batch "
                  f"sizes {','.join(map(str, sizes))}, stretched")
    else:
        print(f"(no pruning simulation: it needs curves of {len(batch_sizes)} batch sizes, "
              f"arm (a) recorded {len(sizes)})")


if __name__ == "__main__":
    main()
