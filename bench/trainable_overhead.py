"""Training images/s of one trial inside Ray Tune against the plain engine loop.

    python bench/trainable_overhead.py [--model cnn] [--epochs 4] [--train-size 6000]

Same model, batch, data and threads, side by side in one run: (a) trainables.engine.fit in
this process; (b) one ClassifierTrainable trial under tune.Tuner (object-store data, per-epoch
checkpoints, the MLflow lineage callback writing to a sqlite store). Reports the mean
training images/s of each (the engine's own per-epoch measurement, so Ray's start-up is not
counted) and the ratio (b)/(a); target >= 0.95.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from trainables.config import TrainConfig
from trainables.data import load_split
from trainables.engine import fit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="cnn")
    p.add_argument("--width", type=int)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--train-size", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import ray
    from ray import tune

    from search.lineage import MLflowLineage
    from search.workspace import Workspace
    from trainables.trainable import METRIC, MODE, ClassifierTrainable

    split = load_split(train_size=args.train_size)
    cfg = TrainConfig(model=args.model, model_kwargs={"width": args.width} if args.width else {},
                      batch_size=args.batch_size, epochs=args.epochs, warmup_epochs=1,
                      device="cpu", num_threads=args.threads, seed=0)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    plain = fit(cfg, split).history
    plain_ips = sum(h["images_per_s"] for h in plain) / len(plain)
    plain_s = time.perf_counter() - t0

    ray.init(address="local", num_cpus=args.threads, include_dashboard=False,
             logging_level="ERROR")
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.open(tmp)
        client = ws.client()
        exp = ws.experiment_id(client, "overhead")
        parent = client.create_run(exp).info.run_id
        trainable = tune.with_resources(
            tune.with_parameters(ClassifierTrainable, split=split), {"cpu": args.threads})
        t0 = time.perf_counter()
        result = tune.Tuner(
            trainable, param_space=cfg.to_dict(),
            tune_config=tune.TuneConfig(metric=METRIC, mode=MODE),
            run_config=tune.RunConfig(
                storage_path=tmp + "/ray", verbose=0,
                callbacks=[MLflowLineage(ws.tracking_uri, exp, parent)],
                checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1, num_to_keep=1,
                                                        checkpoint_score_attribute=METRIC)),
        ).fit()[0]
        tune_s = time.perf_counter() - t0
    ray.shutdown()
    df = result.metrics_dataframe
    tune_ips = df["images_per_s"].mean()
    same = [round(v, 6) for v in df["val_acc"]] == [round(h["val_acc"], 6) for h in plain]
    print(f"{args.model}, {len(split.y_train)} images, batch {args.batch_size}, "
          f"{args.epochs} epochs, {args.threads} threads")
    print(f"  plain engine loop   {plain_ips:8,.0f} img/s   ({plain_s:.0f} s wall)")
    print(f"  one Tune trial      {tune_ips:8,.0f} img/s   ({tune_s:.0f} s wall, Ray start "
          "excluded, trial start-up included)")
    print(f"  ratio Tune / plain  {tune_ips / plain_ips:8.3f}   (target >= 0.95: "
          f"{'met' if tune_ips / plain_ips >= 0.95 else 'NOT met'}); "
          f"same val_acc every epoch: {same}")


if __name__ == "__main__":
    main()
