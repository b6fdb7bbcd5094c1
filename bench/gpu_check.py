"""The GPU check: the engine on CUDA, its speed, packed trials and a short seed-protocol run.

    bench/gpu_check.sh [--dry-run] [--data-dir DIR]      # at most ~8 minutes on one GPU

Needs PyTorch only (a GPU machine may have no Ray, MLflow or Optuna) and the Fashion-MNIST
files (``--data-dir``, ``$TUNEFUSE_DATA`` or Debian's folder). Four parts, one table at the end:

1. engine checks on the device: every model trains two epochs with a finite loss; the same
   seed gives the same numbers; a checkpoint restored mid-run continues as the run did;
   evaluate() and analysis.inference agree; no host synchronisation inside the batch loop
   (CUDA's sync debug mode counts them: an epoch of twice the batches must not sync more);
2. bench/train_step.py: img/s of the plain fp32 path and of the default, at the quick widths
   and width 64, batch 128 and 512; and ResNet18 at batch 512 under torch.compile(mode=
   "max-autotune"), which captures CUDA graphs (the engine does not compile: this says whether
   it should);
3. N training processes side by side on the one device, N = 1, 2, 4, 8 (ResNet18 width 64,
   batch 128): aggregate img/s, the case of --gpus-per-trial 1/N;
4. ResNet18 width 64 on the seed's protocol (27,000 / 3,000 / the official 10,000) for a few
   epochs: validation and test accuracy, wall time.

``--dry-run`` runs the same steps on the CPU at toy size (CI runs it).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402 (after the path: the project's packages are imported from ROOT)

from analysis.inference import predict_probs  # noqa: E402
from trainables import checkpoint  # noqa: E402
from trainables.data import load_split  # noqa: E402
from trainables.engine import TrainConfig, build, fit, run_epoch, train_one_epoch  # noqa: E402

Row = tuple[str, str, str]  # (check, result, detail)


def sizes(dry: bool) -> dict:
    if dry:
        return dict(device="cpu", train_size=500, models={"cnn": {}}, width=4, epochs=2,
                    seed_model=("cnn", {}), seed_train=500, seed_epochs=1, seed_test=1_000,
                    pack=(1, 2), pack_seconds=0.5, pack_model=("cnn", {}), pack_batch=64)
    return dict(device="cuda", train_size=30_000,
                models={"cnn": {}, "resnet18": {"width": 64}, "inception": {"width": 64}},
                width=64, epochs=2, seed_model=("resnet18", {"width": 64}), seed_train=30_000,
                seed_epochs=8, seed_test=None, pack=(1, 2, 4, 8), pack_seconds=8.0,
                pack_model=("resnet18", {"width": 64}), pack_batch=128)


def engine_checks(s: dict, data_dir: str | None, tmp: Path) -> list[Row]:
    rows: list[Row] = []
    split = load_split(data_dir, s["train_size"] if s["device"] == "cpu" else 2_000, 0)
    for model, kw in s["models"].items():
        cfg = TrainConfig(model=model, model_kwargs=kw, epochs=s["epochs"], warmup_epochs=1,
                          batch_size=64, device=s["device"], seed=0)
        a = fit(cfg, split)
        b = fit(cfg, split)
        losses = [h["train_loss"] for h in a.history]
        ok = all(math.isfinite(v) for v in losses)
        same = [h["val_acc"] for h in a.history] == [h["val_acc"] for h in b.history] and \
            losses == [h["train_loss"] for h in b.history]
        rows.append((f"engine: {model} trains, {a.fast}", "ok" if ok else "FAILED",
                     f"loss {losses[-1]:.4f}, val {a.history[-1]['val_acc']:.4f}"))
        rows.append((f"engine: {model}, the same seed twice", "identical" if same else "differs",
                     "" if same else "non-deterministic kernels on this device"))
        # restored after epoch 1 of 2: the second epoch as the uninterrupted run had it
        half = build(cfg, split)
        run_epoch(half)
        path = checkpoint.save(half, tmp / f"{model}.pt")
        resumed = build(cfg, split)
        checkpoint.restore(resumed, checkpoint.load(path), str(path))
        last = run_epoch(resumed)
        rows.append((f"engine: {model}, resumed from a checkpoint",
                     "identical" if last["val_acc"] == a.history[-1]["val_acc"] else "differs",
                     f"val {last['val_acc']:.4f} vs {a.history[-1]['val_acc']:.4f}"))
        ckpt = checkpoint.load(checkpoint.save(a, tmp / f"{model}-end.pt"))
        probs = predict_probs(ckpt, split.x_val, s["device"])
        acc = float((torch.as_tensor(probs).argmax(1) == split.y_val).double().mean())
        rows.append((f"engine: {model}, analysis inference = evaluate()",
                     "ok" if abs(acc - a.history[-1]["val_acc"]) < 1e-9 else "DIFFERS",
                     f"{acc:.4f} vs {a.history[-1]['val_acc']:.4f}"))
    rows.append(syncs(s, split))
    return rows


def syncs(s: dict, split) -> Row:
    """Host synchronisations in an epoch of n and of 2n batches (CUDA's sync debug mode)."""
    if s["device"] != "cuda":
        return ("engine: host syncs in the batch loop", "n/a", "CUDA only")
    cfg = TrainConfig(model="resnet18", model_kwargs={"width": 16}, batch_size=64,
                      device="cuda", augment="online")
    state = build(cfg, split)
    counts = []
    for batches in (4, 8):
        g = torch.Generator("cuda").manual_seed(0)
        n = batches * cfg.batch_size
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train_one_epoch(state.model, state.optimizer, state.x_train[:n],
                                state.y_train[:n], batch_size=cfg.batch_size, mean=state.mean,
                                std=state.std, policy=cfg.augment, class_weights=None,
                                generator=g, fast=state.fast)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in seen))
    ok = counts[1] == counts[0]
    return ("engine: host syncs in the batch loop", "none" if ok else "PER BATCH",
            f"{counts[0]} in an epoch of 4 batches, {counts[1]} of 8")


def speed(s: dict, dry: bool, data_dir: str | None) -> list[Row]:
    args = ["--device", s["device"], "--seconds", "0.5" if dry else "3", "--rounds", "1"]
    args += ["--train-size", "2000", "--models", "cnn"] if dry else \
        ["--full-width", "--batch-sizes", "128,512"]
    out = run([sys.executable, str(ROOT / "bench" / "train_step.py"), *args], data_dir)
    rows = []
    for line in out.splitlines():
        if line.startswith(("cnn", "resnet18", "inception")):
            name, batch, plain, default, ratio = line.split()[:5]
            rows.append((f"speed: {name} batch {batch}", f"{default} img/s",
                         f"plain fp32 {plain} img/s, {ratio}"))
        elif line.startswith("speed-up"):
            rows.append(("speed: " + line.split(":")[0], line.split(":", 1)[1].strip(), ""))
    if not dry:  # CUDA graphs through torch.compile(max-autotune): kept only if it pays
        out = run([sys.executable, str(ROOT / "bench" / "train_step.py"), "--device", "cuda",
                   "--models", "resnet18", "--widths", "64", "--batch-sizes", "512",
                   "--rounds", "1", "--seconds", "3", "--compile"], data_dir)
        for line in out.splitlines():
            if line.startswith("resnet18"):
                cells = line.split()
                rows.append((f"speed: {cells[0]} batch {cells[1]}, torch.compile",
                             f"{cells[6]} img/s", f"eager default {cells[3]} img/s"))
    return rows


def worker(model: str, width: int | None, batch: int, seconds: float, device: str,
           data_dir: str | None) -> None:
    """One of the packed processes: loaded and warmed up, it says "ready", waits for "go" on
    its stdin (all of them start together), trains for ``seconds`` and prints its img/s."""
    split = load_split(data_dir, 30_000 if device == "cuda" else 1_000, 0)
    cfg = TrainConfig(model=model, model_kwargs={"width": width} if width else {},
                      batch_size=batch, device=device, augment="flip", seed=0)
    state = build(cfg, split)
    g = torch.Generator(state.device).manual_seed(0)
    kw = dict(batch_size=batch, mean=state.mean, std=state.std, policy=cfg.augment,
              class_weights=None, generator=g, fast=state.fast)
    train_one_epoch(state.model, state.optimizer, state.x_train[:4 * batch],
                    state.y_train[:4 * batch], **kw)  # kernels chosen before the clock
    print("ready", flush=True)
    sys.stdin.readline()
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        n = 8 * batch
        train_one_epoch(state.model, state.optimizer, state.x_train[:n], state.y_train[:n],
                        **kw)
        done += n
    print(f"img/s {done / (time.perf_counter() - began):.1f}", flush=True)


def packing(s: dict, data_dir: str | None) -> list[Row]:
    rows, single = [], None
    model, kw = s["pack_model"]
    for n in s["pack"]:
        procs = [subprocess.Popen(
            [sys.executable, __file__, "--worker", model, str(kw.get("width") or 0),
             str(s["pack_batch"]), str(s["pack_seconds"]), s["device"],
             *(["--data-dir", data_dir] if data_dir else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True) for _ in range(n)]
        heard = [p.stdout.readline() for p in procs]  # each one's "ready" (or its error)
        for p in procs:
            with contextlib.suppress(BrokenPipeError):
                p.stdin.write("go\n")
                p.stdin.flush()
        outs = [h + p.communicate(timeout=300)[0] for h, p in zip(heard, procs, strict=True)]
        rates = [float(line.split()[1]) for o in outs for line in o.splitlines()
                 if line.startswith("img/s ")]
        if len(rates) != n:
            rows.append((f"packing: {n} process(es)", "FAILED", outs[0][-300:]))
            continue
        total = sum(rates)
        single = single or total
        rows.append((f"packing: {n} process(es) x {model} b{s['pack_batch']}",
                     f"{total:,.0f} img/s", f"{total / single:.2f}x one process"))
    return rows


def seed_run(s: dict, data_dir: str | None) -> Row:
    model, kw = s["seed_model"]
    split = load_split(data_dir, s["seed_train"], 0)
    cfg = TrainConfig(model=model, model_kwargs=kw, epochs=s["seed_epochs"],
                      warmup_epochs=1, batch_size=128,
                      device=s["device"], augment="flip", seed=0)
    began = time.perf_counter()
    state = fit(cfg, split)
    seconds = time.perf_counter() - began
    ckpt = checkpoint.load(checkpoint.save(state, Path(os.environ.get("TMPDIR", "/tmp")) /
                                           "gpu-check-seed.pt"))
    x_test, y_test = split.x_test[:s["seed_test"]], split.y_test[:s["seed_test"]]
    probs = predict_probs(ckpt, x_test, s["device"])
    test = float((torch.as_tensor(probs).argmax(1) == y_test).double().mean())
    last = state.history[-1]
    tested = "" if len(y_test) == len(split.y_test) else f" (first {len(y_test):,} images)"
    return (f"seed protocol: {model} {kw or ''} {cfg.epochs} epochs, {len(split.y_train)} "
            "train", f"val {100 * last['val_acc']:.2f}%, test {100 * test:.2f}%{tested}",
            f"{seconds:.0f} s ({last['images_per_s']:,.0f} img/s in its last epoch)")


def run(cmd: list[str], data_dir: str | None) -> str:
    env = {**os.environ, **({"TUNEFUSE_DATA": data_dir} if data_dir else {})}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return out.stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="the same steps, CPU, toy size")
    p.add_argument("--data-dir", help="the four Fashion-MNIST files (default: as the project)")
    p.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        model, width, batch, seconds, device = args.worker
        worker(model, int(width) or None, int(batch), float(seconds), device, args.data_dir)
        return 0
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device here; run with --dry-run for the CPU rehearsal",
              file=sys.stderr)
        return 2
    s = sizes(args.dry_run)
    began = time.perf_counter()
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu-check-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if s["device"] == "cuda" else "CPU (dry run)"
    print(f"gpu check on {device}, torch {torch.__version__}", flush=True)
    rows = engine_checks(s, args.data_dir, tmp)
    rows += speed(s, args.dry_run, args.data_dir)
    rows += packing(s, args.data_dir)
    rows.append(seed_run(s, args.data_dir))
    width = max(len(r[0]) for r in rows)
    print(f"\n| {'check':<{width}} | result | detail |\n|{'-' * (width + 2)}|---|---|")
    for check, result, detail in rows:
        print(f"| {check:<{width}} | {result} | {detail} |")
    print(f"\n{time.perf_counter() - began:.0f} s in all")
    failed = [r for r in rows if r[1] in ("FAILED", "DIFFERS", "PER BATCH")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
