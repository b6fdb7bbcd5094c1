"""What ASHA and shared warm-ups save: epochs computed and the best val accuracy found.

    python bench/search_cost.py [--model cnn] [--profile smoke|quick] [--batch-sizes 64,128]
        [--epochs 3,4,6]

Runs the same grid twice, side by side in one run, in a temporary workspace:
(a) tunefuse's way: schedule-aware ASHA and warm-ups shared between trials;
(b) the exhaustive grid with every trial computing its own warm-up.
Prints the training epochs each actually computed (replayed warm-up epochs are not computed),
their wall time, and the best val accuracy each found.
"""

from __future__ import annotations

import argparse
import tempfile
import time


def computed_epochs(path: str) -> tuple[int, float]:
    from ray import tune

    analysis = tune.ExperimentAnalysis(path)
    computed, best = 0, 0.0
    for df in analysis.trial_dataframes.values():
        computed += int((~df["warmup_reused"].astype(bool)).sum())
        best = max(best, float(df["val_acc"].max()))
    return computed, best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="cnn")
    p.add_argument("--profile", default="smoke")
    p.add_argument("--batch-sizes", default="64,128")
    p.add_argument("--epochs", default="3,4,6")
    p.add_argument("--num-cpus", default="2")
    args = p.parse_args()
    import ray

    from search import grid

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, extra in (("ASHA + shared warm-ups", ["--scheduler", "asha"]),
                             ("exhaustive, own warm-ups",
                              ["--scheduler", "none", "--no-shared-warmups"])):
            name = "asha" if "asha" in extra else "full"
            t0 = time.perf_counter()
            ws = f"{tmp}/{name}"  # a workspace each: no warm-up carries over between them
            code = grid.main(["--model", args.model, "--profile", args.profile,
                              "--batch-sizes", args.batch_sizes, "--epochs", args.epochs,
                              "--workspace", ws, "--name", name, "--num-cpus", args.num_cpus,
                              "--max-concurrent", "1", "--dashboard-port", "0", *extra])
            wall = time.perf_counter() - t0
            ray.shutdown()
            assert code == 0, f"{label} failed"
            computed, best = computed_epochs(f"{ws}/ray_results/{name}")
            rows.append((label, computed, wall, best))
    print(f"\n{args.model}, profile {args.profile}, batch sizes {args.batch_sizes}, "
          f"epochs {args.epochs}")
    print(f"{'search':<28} {'epochs computed':>15} {'wall s':>8} {'best val_acc':>13}")
    for label, computed, wall, best in rows:
        print(f"{label:<28} {computed:>15} {wall:>8.0f} {best:>13.4f}")
    (_, a, wa, ba), (_, b, wb, bb) = rows
    print(f"ratio: {a / b:.2f} of the epochs, {wa / wb:.2f} of the wall time, "
          f"best val_acc {ba - bb:+.4f}")


if __name__ == "__main__":
    main()
