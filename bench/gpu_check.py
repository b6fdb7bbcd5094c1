"""The GPU check: the engine on CUDA, its speed, the speed levers, packed trials, a short
seed-protocol run and torch.compile, one row at a time.

    bench/gpu_check.sh [--data-dir DIR] [--deadline 480]    # on a GPU machine (about 6 min)
    bench/gpu_check.sh --dry-run [--data-dir DIR]           # the same steps, CPU, toy size

Needs PyTorch and NumPy only (a GPU machine may have no Ray, MLflow or Optuna, nor this project
installed: the sections find it through PYTHONPATH) and the Fashion-MNIST files (``--data-dir``,
``$TUNEFUSE_DATA`` or Debian's folder; .gz files do). docs/benchmarks.md gives the one device
command.

It is built to report whatever happens. Each section runs in a process of its own (a CUDA error
poisons its process; cuBLAS reads its determinism setting at start-up), its rows printed and
flushed as they come, and appended to ``$OUT/gpu_check.log`` when ``$OUT`` is set (tracebacks
to ``$OUT/gpu_check.err``). A section that raises, dies or outlives the deadline gives a FAILED
row with a one-line reason, and the next one starts. The whole check keeps one deadline
(``--deadline``, 480 s): a section that would start after it is SKIPPED, said so in its row, and
one running at it is stopped. The slowest and least certain probes (packing, compilation) come
last. The sections, in order:

1. ``device``: the GPU, torch, CUDA and cuDNN, and what ``auto`` picks on it;
2. ``engine``: every model trains two epochs with a finite loss; the same seed twice; a
   checkpoint restored mid-run continues as the run did; analysis.inference gives evaluate()'s
   accuracy; no host synchronisation inside the batch loop (CUDA's sync debug mode counts them:
   an epoch of twice the batches must not sync more);
3. ``determinism``: the same seed twice with cuDNN's deterministic algorithms (and torch's
   deterministic mode, cuBLAS's fixed workspace), and what that costs in img/s;
4. ``speed``: img/s of the plain fp32 path and of the default (bench/train_step.py), quick's
   widths and width 64, batch 128 and 512;
5. ``levers``: each against the default, side by side: fused optimisers, torch's own Dropout
   (the CNN's), cudnn.benchmark, augmentation in chunks of an epoch rather than per batch;
6. ``seed``: ResNet18 width 64 on the seed's protocol (27,000 / 3,000 / the official 10,000)
   for a few epochs: accuracy, time, and what a checkpoint (with its SHA-256) costs per epoch;
7. ``packing``: N training processes side by side on the one GPU, N = 1, 2, 4, 8, at quick's
   ResNet18 (width 16, batch 64) and the seed's (width 64, batch 128): aggregate img/s, the
   case of --gpus-per-trial 1/N;
8. ``compile-reduce-overhead``, ``compile-max-autotune``: torch.compile of the training step
   (reduce-overhead captures CUDA graphs, the lever for launch-bound small models).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]  # the project and bench/train_step.py

import torch  # noqa: E402

Row = tuple[str, str, str]  # (check, result, detail)
FAILING = ("FAILED", "DIFFERS", "PER BATCH")  # results that make the check exit 1
DEADLINE_S = 480.0  # the device's limit is 600 s a command: room for start-up and the copy back


@dataclass(frozen=True)
class Sizes:
    """What the check runs: on a GPU the real sizes, in a dry run toy ones on the CPU."""

    device: str
    engine_train: int  # training images of the engine checks
    models: dict  # model -> kwargs, the engine checks
    speed_cases: list  # (model, kwargs, batch), bench/train_step.py's measurement
    seconds: float  # per timed measurement
    rounds: int  # alternations of two things measured side by side (each one's best kept)
    lever_cases: list  # (model, kwargs, batch)
    determinism_case: tuple  # (model, kwargs, batch)
    seed_model: tuple  # (model, kwargs)
    seed_train: int | None
    seed_epochs: int
    seed_test: int | None  # test images scored (None: all)
    pack: tuple  # numbers of processes side by side
    pack_cases: list  # (model, kwargs, batch)
    pack_seconds: float
    pack_train: int
    compile_cases: list  # (model, kwargs, batch)
    augment_images: int  # an epoch's images, augmented per batch or in chunks
    least: dict = field(default_factory=dict)  # section -> seconds it needs to be worth starting


def sizes(dry: bool) -> Sizes:
    if dry:
        cnn = ("cnn", {}, 64)
        return Sizes(device="cpu", engine_train=500, models={"cnn": {}}, speed_cases=[cnn],
                     seconds=0.3, rounds=2, lever_cases=[cnn], determinism_case=cnn,
                     seed_model=("cnn", {}), seed_train=500, seed_epochs=1, seed_test=1_000,
                     pack=(1, 2), pack_cases=[cnn], pack_seconds=0.5, pack_train=1_000,
                     compile_cases=[("cnn", {}, 32)], augment_images=2_048)
    r16, r64 = {"width": 16}, {"width": 64}
    return Sizes(
        device="cuda", engine_train=2_000,
        models={"cnn": {}, "resnet18": r64, "inception": r64},
        speed_cases=[("cnn", {}, 128), ("cnn", {}, 512), ("resnet18", r16, 64),
                     ("resnet18", r64, 128), ("resnet18", r64, 512),
                     ("inception", {"width": 8}, 128), ("inception", r64, 128),
                     ("inception", r64, 512)],
        seconds=2.0, rounds=1,
        lever_cases=[("cnn", {}, 64), ("resnet18", r16, 64), ("resnet18", r64, 512)],
        determinism_case=("resnet18", r64, 128),
        seed_model=("resnet18", r64), seed_train=30_000, seed_epochs=8, seed_test=None,
        pack=(1, 2, 4, 8), pack_cases=[("resnet18", r16, 64), ("resnet18", r64, 128)],
        pack_seconds=4.0, pack_train=30_000,
        compile_cases=[("resnet18", r16, 64), ("resnet18", r64, 512)], augment_images=27_000,
        least={"speed": 40, "levers": 30, "seed": 40, "packing": 60,
               "compile-reduce-overhead": 60, "compile-max-autotune": 90})


def name_of(model: str, kwargs: dict) -> str:
    return model + "".join(f"-w{v}" for v in kwargs.values())


def attempt(check: str, fn: Callable[[], Iterator[Row]]) -> Iterator[Row]:
    """The rows of ``fn``, or after those it gave, one FAILED row naming why it stopped: one
    case failing leaves the section's other cases to run."""
    try:
        yield from fn()
    except Exception as e:
        traceback.print_exc()
        yield (check, "FAILED", one_line(e))


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}".rstrip(": ")


def config(model: str, kwargs: dict, batch: int, device: str, **kw):
    from trainables.config import TrainConfig
    return TrainConfig(model=model, model_kwargs=kwargs, batch_size=batch, device=device,
                       seed=0, **kw)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --- the sections: each a generator of rows, run in a process of its own ----------------------

def device_section(s: Sizes, data_dir: str | None) -> Iterator[Row]:
    from trainables.fastpath import fast_path, native_bf16
    dev = torch.device(s.device)
    if s.device == "cuda":
        p = torch.cuda.get_device_properties(0)
        yield ("device", p.name, f"compute capability {p.major}.{p.minor}, "
               f"{p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB")
        yield ("device: software", f"torch {torch.__version__}",
               f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    else:
        yield ("device", "CPU (dry run)", f"{os.cpu_count()} cores, torch {torch.__version__}")
    yield ("device: auto picks", str(fast_path("auto", "auto", dev, "auto", "resnet18", 27_000)),
           f"native bf16: {native_bf16(dev)} (trainables/fastpath.py)")


def engine_section(s: Sizes, data_dir: str | None) -> Iterator[Row]:
    from trainables.data import load_split
    split = load_split(data_dir, s.engine_train, 0)
    for model, kw in s.models.items():
        yield from attempt(f"engine: {model}", lambda m=model, k=kw: engine_model(s, split, m, k))
    yield from attempt("engine: host syncs in the batch loop", lambda: syncs(s, split))


def engine_model(s: Sizes, split, model: str, kw: dict) -> Iterator[Row]:
    import tempfile

    from analysis.inference import predict_probs
    from trainables import checkpoint
    from trainables.engine import build, fit, run_epoch
    cfg = config(model, kw, 64, s.device, epochs=2, warmup_epochs=1)
    a = fit(cfg, split)
    losses = [h["train_loss"] for h in a.history]
    ok = all(math.isfinite(v) for v in losses)
    yield (f"engine: {model} trains, {a.fast}", "ok" if ok else "FAILED",
           f"loss {losses[-1]:.4f}, val {a.history[-1]['val_acc']:.4f}")
    b = fit(cfg, split)
    same = [h["val_acc"] for h in a.history] == [h["val_acc"] for h in b.history] and \
        losses == [h["train_loss"] for h in b.history]
    # on a CPU a difference is a defect; on CUDA the default kernels may differ run to run
    # (docs/usage.md, "Reproducibility"): the determinism section measures the other mode
    differs = "DIFFERS" if s.device == "cpu" else "differs"
    yield (f"engine: {model}, the same seed twice", "identical" if same else differs,
           "" if same else f"loss {losses[-1]:.6f} vs {b.history[-1]['train_loss']:.6f}")
    with tempfile.TemporaryDirectory() as tmp:
        half = build(cfg, split)
        run_epoch(half)
        path = checkpoint.save(half, Path(tmp) / f"{model}.pt")
        resumed = build(cfg, split)
        checkpoint.restore(resumed, checkpoint.load(path), str(path))
        last = run_epoch(resumed)
        yield (f"engine: {model}, resumed from a checkpoint",
               "identical" if last["val_acc"] == a.history[-1]["val_acc"] else differs,
               f"val {last['val_acc']:.4f} vs {a.history[-1]['val_acc']:.4f}")
        ckpt = checkpoint.load(checkpoint.save(a, Path(tmp) / f"{model}-end.pt"))
    probs = predict_probs(ckpt, split.x_val, s.device)
    acc = float((torch.as_tensor(probs).argmax(1) == split.y_val).double().mean())
    yield (f"engine: {model}, analysis inference = evaluate()",
           "ok" if abs(acc - a.history[-1]["val_acc"]) < 1e-9 else "DIFFERS",
           f"{acc:.4f} vs {a.history[-1]['val_acc']:.4f}")


def syncs(s: Sizes, split) -> Iterator[Row]:
    """Host synchronisations in an epoch of n and of 2n batches (CUDA's sync debug mode)."""
    import warnings

    from trainables.engine import build, train_one_epoch
    if s.device != "cuda":
        yield ("engine: host syncs in the batch loop", "n/a", "CUDA only")
        return
    cfg = config("resnet18", {"width": 16}, 64, "cuda", augment="online")
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
                train_one_epoch(state, g, images=n)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in seen))
    yield ("engine: host syncs in the batch loop", "none" if counts[1] == counts[0] else
           "PER BATCH", f"{counts[0]} in an epoch of 4 batches, {counts[1]} of 8")


def deterministic_mode(on: bool) -> None:
    """cuDNN's deterministic algorithms and torch's deterministic mode (warn, not raise, where
    an operation has none); cuBLAS's workspace is fixed by the environment the process started
    with (CUBLAS_WORKSPACE_CONFIG, set by the parent for this section)."""
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(on, warn_only=True)


def determinism_section(s: Sizes, data_dir: str | None) -> Iterator[Row]:
    from train_step import measure

    from trainables.data import load_split
    from trainables.engine import fit
    split = load_split(data_dir, s.engine_train, 0)
    model, kw, batch = s.determinism_case
    cfg = config(model, kw, batch, s.device, epochs=2, warmup_epochs=1)
    deterministic_mode(True)
    a, b = fit(cfg, split), fit(cfg, split)
    same = [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    yield (f"determinism: {name_of(model, kw)}, the same seed twice, deterministic mode",
           "identical" if same else "differs",
           f"loss {a.history[-1]['train_loss']:.6f} vs {b.history[-1]['train_loss']:.6f}")
    big = load_split(data_dir, None if s.device == "cuda" else s.engine_train, 0)
    rates = {}
    for _ in range(s.rounds):  # alternating: a drift in the machine hits both
        for on in (False, True):
            deterministic_mode(on)
            r = measure(config(model, kw, batch, s.device), big, s.seconds)["images_per_s"]
            rates[on] = max(rates.get(on, 0.0), r)
    yield (f"determinism: {name_of(model, kw)} b{batch}, its cost",
           f"{rates[True] / rates[False]:.2f}x the default's img/s",
           f"deterministic {rates[True]:,.0f} img/s, default {rates[False]:,.0f}")


def speed_section(s: Sizes, data_dir: str | None) -> Iterator[Row]:
    from train_step import measure

    from trainables.data import load_split
    from trainables.fastpath import FP32
    split = load_split(data_dir, None if s.device == "cuda" else 2_000, 0)
    for model, kw, batch in s.speed_cases:
        name = f"speed: {name_of(model, kw)} batch {batch}"

        def case(model=model, kw=kw, batch=batch, name=name):
            cfg = config(model, kw, batch, s.device, augment="flip")
            plain = config(model, kw, batch, s.device, augment="flip",
                           precision=FP32.precision, memory_format="contiguous", compile="off")
            a = measure(plain, split, s.seconds, plain=True)["images_per_s"]
            fast = measure(cfg, split, s.seconds)
            b = fast["images_per_s"]
            target = ""
            if s.device == "cuda" and (model, kw.get("width"), batch) == ("resnet18", 64, 512):
                target = f"; target 30,000: {'met' if b >= 30_000 else 'MISSED'}"
            yield (name, f"{b:,.0f} img/s",
                   f"plain fp32 {a:,.0f} img/s, {b / a:.2f}x; {fast['path']}; augmentation "
                   f"{100 * fast['augment_share']:.0f}% of the step{target}")
        yield from attempt(name, case)


def levers_section(s: Sizes, data_dir: str | None) -> Iterator[Row]:
    from train_step import measure, torch_dropout

    from trainables.data import load_split
    from trainables.engine import make_optimizer
    split = load_split(data_dir, None if s.device == "cuda" else 2_000, 0)

    def fused(state):
        state.optimizer = make_optimizer(state.model, state.cfg, state.phase, fused=True)

    def benchmark(on):
        torch.backends.cudnn.benchmark = on

    levers = [("fused optimiser (Adam, fused=True)", fused, None),
              ("torch's Dropout", lambda state: torch_dropout(state.model), None),
              ("cudnn.benchmark", None, benchmark)]
    for model, kw, batch in s.lever_cases:
        cfg = config(model, kw, batch, s.device, augment="flip")
        for lever, tweak, switch in levers:
            if lever == "torch's Dropout" and model != "cnn":
                continue  # only the CNN has the project's Dropout (the heads have torch's)
            if switch is not None and s.device != "cuda":
                continue
            name = f"lever: {lever}, {name_of(model, kw)} b{batch}"

            def case(cfg=cfg, tweak=tweak, switch=switch, name=name):
                rates = {False: 0.0, True: 0.0}
                for _ in range(s.rounds):  # alternating, each side's best
                    for on in (False, True):
                        if switch is not None:
                            switch(on)
                        r = measure(cfg, split, s.seconds, tweak=tweak if on else None)
                        rates[on] = max(rates[on], r["images_per_s"])
                if switch is not None:
                    switch(False)
                yield (name, f"{rates[True] / rates[False]:.2f}x the default",
                       f"{rates[True]:,.0f} vs {rates[False]:,.0f} img/s")
            yield from attempt(name, case)
    yield from attempt("lever: augmentation in chunks", lambda: augment_chunks(s, split))


def augment_chunks(s: Sizes, split) -> Iterator[Row]:
    """An epoch's online augmentation per batch (what the engine does: ~40 small kernels a
    batch) against the same work in chunks of 8,192 images (a few large kernels each)."""
    from trainables import augment
    x = split.x_train[:s.augment_images].to(s.device).unsqueeze(1).float().div_(255)
    out = {}
    for chunk in (128, 8_192, 128, 8_192):  # alternating, each one's best
        g = torch.Generator(s.device).manual_seed(0)
        sync(s.device)
        began = time.perf_counter()
        for i in range(0, len(x), chunk):
            augment.augment_batch(x[i:i + chunk], "online", g)
        sync(s.device)
        out[chunk] = min(out.get(chunk, math.inf), time.perf_counter() - began)
    yield (f"lever: online augmentation of {len(x):,} images in chunks of 8,192",
           f"{out[128] / out[8_192]:.2f}x faster than per batch of 128",
           f"{1000 * out[8_192]:.0f} ms vs {1000 * out[128]:.0f} ms an epoch")


def seed_section(s: Sizes, data_dir: str | None) -> Iterator[Row]:
    import tempfile

    from analysis.inference import predict_probs
    from trainables import checkpoint
    from trainables.data import load_split
    from trainables.engine import fit
    model, kw = s.seed_model
    split = load_split(data_dir, s.seed_train, 0)
    cfg = config(model, kw, 128, s.device, epochs=s.seed_epochs, warmup_epochs=1,
                 augment="flip")
    began = time.perf_counter()
    state = fit(cfg, split)
    seconds = time.perf_counter() - began
    with tempfile.TemporaryDirectory() as tmp:
        saves = []
        for i in range(3):
            t0 = time.perf_counter()
            checkpoint.save(state, Path(tmp) / f"c{i}.pt")
            saves.append(time.perf_counter() - t0)
        ckpt = checkpoint.load(Path(tmp) / "c0.pt")
    x_test, y_test = split.x_test[:s.seed_test], split.y_test[:s.seed_test]
    probs = predict_probs(ckpt, x_test, s.device)
    test = float((torch.as_tensor(probs).argmax(1) == y_test).double().mean())
    last = state.history[-1]
    tested = "" if len(y_test) == len(split.y_test) else f" (first {len(y_test):,} images)"
    yield (f"seed protocol: {name_of(model, kw)} b128, {cfg.epochs} epochs, "
           f"{len(split.y_train):,} train",
           f"val {100 * last['val_acc']:.2f}%, test {100 * test:.2f}%{tested}",
           f"{seconds:.0f} s ({last['images_per_s']:,.0f} img/s in its last epoch)")
    epoch = last["train_seconds"]
    save = min(saves)
    yield (f"seed protocol: a checkpoint with its SHA-256, {name_of(model, kw)}",
           f"{1000 * save:.0f} ms", f"{100 * save / (epoch + save):.0f}% of an epoch "
           f"({epoch:.2f} s of training) when written every epoch")


def packing_section(s: Sizes, data_dir: str | None) -> Iterator[Row]:
    for model, kw, batch in s.pack_cases:
        single = None
        for n in s.pack:
            name = f"packing: {n} process(es) x {name_of(model, kw)} b{batch}"
            rows = list(attempt(name, lambda n=n, m=model, k=kw, b=batch:
                                packed(s, data_dir, n, m, k, b)))
            for row in rows:
                if row[1] != "FAILED":
                    total = float(row[1].split()[0].replace(",", ""))
                    single = single or total
                    target = ""
                    if s.device == "cuda" and n == 4 and kw.get("width") == 16:
                        target = f"; target 1.5x: {'met' if total >= 1.5 * single else 'MISSED'}"
                    row = (row[0], row[1], f"{total / single:.2f}x one process{target}")
                yield row


def packed(s: Sizes, data_dir: str | None, n: int, model: str, kw: dict, batch: int
           ) -> Iterator[Row]:
    """N worker processes, each loaded and warmed up, then started together; their img/s."""
    cmd = [sys.executable, __file__, "--worker", model, str(kw.get("width") or 0), str(batch),
           str(s.pack_seconds), s.device, str(s.pack_train),
           *(["--data-dir", data_dir] if data_dir else [])]
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=child_env())
             for _ in range(n)]
    try:
        heard = [p.stdout.readline() for p in procs]  # each one's "ready" (or its error)
        for p in procs:
            with contextlib.suppress(BrokenPipeError):
                p.stdin.write("go\n")
                p.stdin.flush()
        outs = [h + p.communicate()[0] for h, p in zip(heard, procs, strict=True)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    rates = [float(line.split()[1]) for o in outs for line in o.splitlines()
             if line.startswith("img/s ")]
    if len(rates) != n:
        bad = next(o for o in outs if "img/s " not in o)
        raise RuntimeError(f"{n - len(rates)} of {n} processes gave no rate: "
                           f"{bad.strip().splitlines()[-1] if bad.strip() else 'no output'}")
    yield (f"packing: {n} process(es) x {name_of(model, kw)} b{batch}", f"{sum(rates):,.0f} img/s",
           "")


def worker(model: str, width: int | None, batch: int, seconds: float, device: str,
           train: int, data_dir: str | None) -> None:
    """One of the packed processes: loaded and warmed up, it says "ready", waits for "go" on
    its stdin (all of them start together), trains for ``seconds`` and prints its img/s."""
    from trainables.data import load_split
    from trainables.engine import build, train_one_epoch
    if device == "cpu":
        torch.set_num_threads(1)  # processes side by side on the cores, as CPU trials run
    split = load_split(data_dir, train, 0)
    cfg = config(model, {"width": width} if width else {}, batch, device, augment="flip")
    state = build(cfg, split)
    g = torch.Generator(state.device).manual_seed(0)
    train_one_epoch(state, g, images=4 * batch)  # kernels chosen before the clock
    print("ready", flush=True)
    sys.stdin.readline()
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        n = 8 * batch
        train_one_epoch(state, g, images=n)
        done += n
    print(f"img/s {done / (time.perf_counter() - began):.1f}", flush=True)


def compile_section(mode: str):
    def section(s: Sizes, data_dir: str | None) -> Iterator[Row]:
        from train_step import measure

        from trainables.data import load_split
        from trainables.fastpath import compiler
        if s.device == "cpu" and compiler() is None:
            yield (f"compile {mode}", "n/a", "no C++ compiler for torch.compile on the CPU")
            return
        split = load_split(data_dir, None if s.device == "cuda" else 2_000, 0)
        for model, kw, batch in s.compile_cases:
            name = f"compile {mode}: {name_of(model, kw)} b{batch}"

            def case(model=model, kw=kw, batch=batch, name=name):
                cfg = config(model, kw, batch, s.device, augment="flip", compile="off")
                eager = measure(cfg, split, s.seconds)["images_per_s"]
                began = time.perf_counter()
                c = measure(cfg, split, s.seconds, compile_=mode)["images_per_s"]
                yield (name, f"{c / eager:.2f}x eager",
                       f"{c:,.0f} vs {eager:,.0f} img/s; compiled and timed in "
                       f"{time.perf_counter() - began:.0f} s")
            yield from attempt(name, case)
    return section


SECTIONS: dict[str, Callable[[Sizes, str | None], Iterator[Row]]] = {
    "device": device_section,
    "engine": engine_section,
    "determinism": determinism_section,
    "speed": speed_section,
    "levers": levers_section,
    "seed": seed_section,
    "packing": packing_section,
    "compile-reduce-overhead": compile_section("reduce-overhead"),
    "compile-max-autotune": compile_section("max-autotune"),
}


# --- the parent: one process per section, rows as they come ------------------------------------

def child_env(section: str | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]), "PYTHONUNBUFFERED": "1"}
    if section == "determinism":  # cuBLAS reads it when it starts: before the process does
        env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    return env


class Report:
    """Prints each line as it comes, flushed, and appends it to $OUT/gpu_check.log."""

    def __init__(self, out: str | None):
        self.log = Path(out) / "gpu_check.log" if out else None
        self.err = Path(out) / "gpu_check.err" if out else None
        self.rows: list[Row] = []

    def line(self, text: str) -> None:
        print(text, flush=True)
        if self.log:
            with self.log.open("a") as f:
                f.write(text + "\n")

    def row(self, row: Row) -> None:
        self.rows.append(row)
        self.line("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")

    def stderr(self, section: str, text: str) -> None:
        if self.err and text.strip():
            with self.err.open("a") as f:
                f.write(f"=== {section}\n{text}\n")


def run_section(name: str, args, report: Report, seconds: float) -> None:
    """The section in a child process: its rows as they come; a FAILED row if it raises, dies
    or is still running after ``seconds``."""
    cmd = [sys.executable, __file__, "--section", name,
           *(["--dry-run"] if args.dry_run else []),
           *(["--data-dir", args.data_dir] if args.data_dir else []),
           *(["--fail", args.fail] if args.fail else []),
           *(["--hang", args.hang] if args.hang else [])]
    err = subprocess.PIPE
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT,
                            env=child_env(name), start_new_session=True)
    lines: queue.Queue = queue.Queue()
    errors: list[str] = []
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)],
                     daemon=True).start()
    reader = threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True)
    reader.start()
    began, rows = time.perf_counter(), 0
    while True:
        left = seconds - (time.perf_counter() - began)
        try:
            line = lines.get(timeout=max(left, 0.01))
        except queue.Empty:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the section and its workers
            proc.wait()
            reader.join(5)
            report.stderr(name, "".join(errors))
            report.row((name, "FAILED", f"stopped at the deadline after {seconds:.0f} s "
                        f"({rows} row(s) before it)"))
            return
        if line is None:
            break
        if line.startswith("ROW\t"):
            report.row(tuple(line.rstrip("\n").split("\t")[1:4]))
            rows += 1
    code = proc.wait()
    reader.join(5)  # its last lines (a worker left holding the pipe cannot keep us: 5 s)
    text = "".join(errors)
    report.stderr(name, text)
    if (code != 0 and rows == 0) or code < 0:
        last = next((x for x in reversed(text.strip().splitlines()) if x.strip()), "")
        why = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        report.row((name, "FAILED", f"{why}: {last[:200]}" if last else why))
    elif rows == 0:
        report.row((name, "FAILED", "it printed no row"))


def section_main(name: str, args) -> int:
    """In the child: the section's rows, each printed as it is made."""
    s = sizes(args.dry_run)

    def emit(row: Row) -> None:
        print("ROW\t" + "\t".join(str(c).replace("\t", " ").replace("\n", " ") for c in row),
              flush=True)

    def rows() -> Iterator[Row]:
        if args.fail == name:
            raise RuntimeError(f"failure injected by --fail {name}")
        if args.hang == name:  # a section that never ends: the deadline must stop it
            yield (name, "hanging", "injected by --hang")
            threading.Event().wait()
        yield from SECTIONS[name](s, args.data_dir)

    failed = False
    for row in attempt(name, rows):
        emit(row)
        failed = failed or row[1] in FAILING
    return 1 if failed else 0


def data_line(data_dir: str | None) -> str:
    try:
        from trainables.data import locate
        src = locate(data_dir)
    except Exception as e:
        return f"data: none ({one_line(e)})"
    names = ", ".join(sorted(p.name for p in src.files.values()))
    return f"data: {src.directory} ({src.origin}): {names}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="the same steps, CPU, toy size")
    p.add_argument("--data-dir", help="the four Fashion-MNIST files (default: as the project)")
    p.add_argument("--deadline", type=float, default=DEADLINE_S,
                   help=f"seconds for the whole check (default {DEADLINE_S:.0f}); sections "
                        "that would start after it are skipped, one running at it stopped")
    p.add_argument("--only", help="these sections, comma-separated (default all): " +
                   ", ".join(SECTIONS))
    p.add_argument("--fail", help=argparse.SUPPRESS)  # a section made to fail (the tests)
    p.add_argument("--hang", help=argparse.SUPPRESS)  # a section made to hang (the tests)
    p.add_argument("--section", help=argparse.SUPPRESS)
    p.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        model, width, batch, seconds, device, train = args.worker
        worker(model, int(width) or None, int(batch), float(seconds), device, int(train),
               args.data_dir)
        return 0
    if args.section:
        return section_main(args.section, args)
    names = args.only.split(",") if args.only else list(SECTIONS)
    if unknown := [n for n in names if n not in SECTIONS]:
        print(f"error: unknown section {', '.join(unknown)}; choose from {', '.join(SECTIONS)}",
              file=sys.stderr)
        return 2
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device here; run with --dry-run for the CPU rehearsal",
              file=sys.stderr)
        return 2
    report = Report(os.environ.get("OUT"))
    began = time.perf_counter()
    where = torch.cuda.get_device_name(0) if not args.dry_run else "the CPU (dry run)"
    report.line(f"gpu check on {where}, torch {torch.__version__}, deadline "
                f"{args.deadline:.0f} s; {data_line(args.data_dir)}")
    report.line("\n| check | result | detail |\n|---|---|---|")
    s = sizes(args.dry_run)
    for name in names:
        left = args.deadline - (time.perf_counter() - began)
        need = s.least.get(name, 5.0 if not args.dry_run else 0.0)
        if left <= need:
            report.row((name, "SKIPPED", f"{max(left, 0):.0f} s left of the "
                        f"{args.deadline:.0f} s deadline, it needs about {need:.0f}"))
            continue
        t0 = time.perf_counter()
        run_section(name, args, report, left)
        report.line(f"|   ({name}: {time.perf_counter() - t0:.0f} s) | | |")
    failed = [r for r in report.rows if r[1] in FAILING]
    skipped = [r for r in report.rows if r[1] == "SKIPPED"]
    report.line(f"\ngpu check done in {time.perf_counter() - began:.0f} s: "
                f"{len(report.rows)} rows, {len(failed)} failed, {len(skipped)} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
