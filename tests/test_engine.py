"""The engine: the recipe, the schedule, class weights, repeatability, checkpoints, the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import need_compiler, need_real_data

from trainables import checkpoint, data, fastpath
from trainables.config import ConfigError, TrainConfig
from trainables.engine import TIMINGS, build, evaluate, fit, lr_at, run_epoch, train_one_epoch
from trainables.models import card, list_models

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(model="cnn", augment="none", batch_size=64, device="cpu")


@pytest.fixture(scope="module")
def split():
    """2,000 real images (1,800 train / 200 val): enough to learn, quick to train on."""
    return data.load_split(need_real_data(), train_size=2_000, seed=0)


@pytest.fixture(scope="module")
def small_split():
    """500 real images (450 / 50): for what needs a run, not learning. bf16 on a CPU without
    native bf16 (AVX2 only) is emulated, several times slower than fp32."""
    return data.load_split(need_real_data(), train_size=500, seed=0)


def weights(model):
    return torch.cat([p.detach().flatten() for p in model.state_dict().values()
                      if p.dtype.is_floating_point])


# --- the schedule and the recipe ----------------------------------------------------------------

def test_lr_schedule_values():
    cfg = TrainConfig(epochs=15, warmup_epochs=5, lr=0.1, warmup_lr=1e-3, schedule="cosine")
    lrs = [lr_at(cfg, e) for e in range(15)]
    assert lrs[:5] == [1e-3] * 5
    assert lrs[5] == pytest.approx(0.1)
    assert lrs[10] == pytest.approx(0.05)  # half way through the 10 SGD epochs
    sgd = lrs[5:]
    assert all(sgd[i] > sgd[i + 1] for i in range(len(sgd) - 1)) and sgd[-1] > 0
    step = [lr_at(replace(cfg, schedule="step"), e) for e in range(5, 15)]
    assert step == pytest.approx([0.1] * 4 + [0.01] * 4 + [0.001] * 2)
    multi = [lr_at(replace(cfg, schedule="multistep"), e) for e in range(5, 15)]
    assert multi == pytest.approx([0.1] * 5 + [0.01] * 3 + [0.001] * 2)
    no_warmup = TrainConfig(epochs=4, warmup_epochs=0, lr=0.2)
    assert lr_at(no_warmup, 0) == pytest.approx(0.2)


def test_warmup_switches_to_sgd_after_exactly_the_warmup(small_split):
    seen = []
    cfg = TrainConfig(**FAST, epochs=3, warmup_epochs=2)
    state = fit(cfg, small_split, on_epoch=lambda s, m: seen.append((type(s.optimizer).__name__,
                                                               m["phase"], m["lr"])))
    assert seen == [("Adam", "warmup", 1e-3), ("Adam", "warmup", 1e-3),
                    ("SGD", "sgd", pytest.approx(cfg.lr))]
    assert state.optimizer.param_groups[0]["momentum"] == 0.9


def test_short_run_learns_and_repeats(split):
    cfg = TrainConfig(**FAST, epochs=2, warmup_epochs=1, seed=1)
    a, b = fit(cfg, split), fit(cfg, split)
    assert a.history[-1]["val_acc"] > 0.6  # chance is 0.1 (0.73 here)
    strip = [{k: v for k, v in h.items() if k not in TIMINGS} for h in a.history]
    assert strip == [{k: v for k, v in h.items() if k not in TIMINGS} for h in b.history]
    assert torch.equal(weights(a.model), weights(b.model))  # bit for bit on the CPU
    c = fit(replace(cfg, seed=2), split)
    assert not torch.equal(weights(a.model), weights(c.model))


def test_class_weights_weight_the_loss(split):
    """One full batch, lr 0: the reported loss is exactly the class-weighted cross-entropy."""
    w = torch.tensor([3.0, 0.5, 1, 1, 1, 1, 2, 1, 1, 1])
    # the plain path, as the expected loss below is computed
    state = build(TrainConfig(**FAST, dropout=0.0, precision="fp32", memory_format="contiguous"),
                  split)
    x, y = state.x_train[:300], state.y_train[:300]  # every class, several times
    assert set(y.tolist()) == set(range(10))
    model = state.model.train()
    with torch.no_grad():
        logp = F.log_softmax(model(((x.unsqueeze(1).float() / 255) - state.mean) / state.std), 1)
    nll = -logp.gather(1, y[:, None]).squeeze(1)
    expected = ((w[y] * nll).sum() / w[y].sum()).item()

    def loss_with(weight):
        # one batch of the 300 images, not augmented, at a rate of 0, weighted by ``weight``
        each = replace(state, cfg=replace(state.cfg, batch_size=len(x), augment="none"),
                       optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                       class_weights=weight)
        g = torch.Generator().manual_seed(0)
        return train_one_epoch(each, g, images=len(x))["train_loss"]

    assert loss_with(w) == pytest.approx(expected, rel=1e-5)
    assert loss_with(None) == pytest.approx(nll.mean().item(), rel=1e-5)
    assert loss_with(torch.full((10,), 2.0)) == pytest.approx(nll.mean().item(), rel=1e-5)
    assert not math.isclose(expected, nll.mean().item(), rel_tol=1e-3)


def test_offline_expansion_triples_the_training_set(split):
    state = build(TrainConfig(model="cnn", augment="offline", device="cpu"), split)
    assert len(state.x_train) == 3 * len(split.y_train) and state.x_train.dtype == torch.uint8
    assert torch.equal(state.y_train, split.y_train.repeat(3))


def test_threads_are_honoured(split):
    before = torch.get_num_threads()
    try:
        build(TrainConfig(**FAST, num_threads=1), split)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bad, message", [
    (dict(model="vgg"), "unknown model"), (dict(batch_size=0), "batch size"),
    (dict(epochs=3, warmup_epochs=5), "at least the warm-up"),
    (dict(class_weights=(1.0,) * 9), "need 10 values"),
    (dict(class_weights=(1.0,) * 11), "need 10 values"),
    (dict(class_weights=(-1.0,) + (1.0,) * 9), "non-negative"),
    (dict(class_weights=(float("nan"),) + (1.0,) * 9), "non-negative"),
    (dict(schedule="linear"), "unknown schedule"), (dict(augment="mixup"), "augmentation"),
])
def test_config_refuses_bad_values(bad, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**bad)


def test_config_round_trips_through_a_flat_dict():
    cfg = TrainConfig(model="resnet18", model_kwargs={"width": 8}, class_weights=[1.0] * 10)
    assert TrainConfig.from_dict({**cfg.to_dict(), "tune_only_key": 1}) == cfg
    assert cfg.augment == "online" and TrainConfig().augment == "offline"


# --- checkpoints --------------------------------------------------------------------------------

def test_checkpoint_round_trip_and_exact_resume(small_split, tmp_path):
    split = small_split
    cfg = TrainConfig(**FAST, epochs=3, warmup_epochs=1, seed=4)
    whole = fit(cfg, split)
    part = build(cfg, split)
    run_epoch(part)
    run_epoch(part)
    path = checkpoint.save(part, tmp_path / "ck.pt")
    ckpt = checkpoint.load(path)
    assert ckpt["epoch"] == 2 and ckpt["phase"] == "sgd" and ckpt["model"] == "cnn"
    assert TrainConfig.from_dict(ckpt["config"]) == cfg
    # the same logits from the reloaded model
    model = checkpoint.model_from(ckpt)
    x = ((split.x_val[:50].unsqueeze(1).float() / 255) - part.mean) / part.std
    part.model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), part.model(x))
    # resuming in a fresh state gives exactly the uninterrupted run
    resumed = build(cfg, split)
    checkpoint.restore(resumed, ckpt)
    run_epoch(resumed)
    assert torch.equal(weights(resumed.model), weights(whole.model))
    assert resumed.history[-1]["val_loss"] == whole.history[-1]["val_loss"]


def test_checkpoint_mismatch_and_corruption(split, tmp_path):
    small = build(TrainConfig(model="resnet18", model_kwargs={"width": 4}, **{
        k: v for k, v in FAST.items() if k != "model"}), split)
    path = checkpoint.save(small, tmp_path / "r.pt")
    other = build(TrainConfig(model="resnet18", model_kwargs={"width": 8}, device="cpu"), split)
    holds = r"holds resnet18\(dropout=0.25, width=4\)"
    with pytest.raises(checkpoint.CheckpointError, match=holds):
        checkpoint.restore(other, checkpoint.load(path))
    ckpt = checkpoint.load(path)
    ckpt["model_kwargs"] = {**ckpt["model_kwargs"], "width": 8}
    with pytest.raises(checkpoint.CheckpointError, match="do not fit the model"):
        checkpoint.model_from(ckpt)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(checkpoint.CheckpointError, match=r"corrupted \(its SHA-256"):
        checkpoint.load(path)
    checkpoint.digest_path(path).unlink()  # without its checksum: torch.load fails on it
    with pytest.raises(checkpoint.CheckpointError, match="not a readable checkpoint"):
        checkpoint.load(path)
    torch.save({"anything": 1}, tmp_path / "x.pt")
    with pytest.raises(checkpoint.CheckpointError, match="not a tunefuse checkpoint"):
        checkpoint.load(tmp_path / "x.pt")


def test_evaluate_probabilities(split):
    state = build(TrainConfig(**FAST), split)
    out = evaluate(state.model, state.x_val, state.y_val, batch_size=64, mean=state.mean,
                   std=state.std, return_probs=True)
    assert out["probs"].shape == (200, 10)
    assert torch.allclose(out["probs"].sum(1), torch.ones(200), atol=1e-5)
    assert out["acc"] == pytest.approx((out["probs"].argmax(1) == state.y_val).float().mean())
    assert len(out["per_class_acc"]) == 10


# --- the command line ---------------------------------------------------------------------------

def train_cli(*args):
    return subprocess.run([sys.executable, "-m", "trainables.train", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_cli_run_writes_metrics_and_checkpoint(split, tmp_path):
    out = train_cli("--model", "cnn", "--epochs", "2", "--warmup-epochs", "1", "--augment",
                    "none", "--train-size", "500", "--class-weights", "seed", "--out",
                    str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr
    assert "test_acc" in out.stdout and "epoch   2/2 sgd" in out.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(metrics["history"]) == 2 and metrics["config"]["class_weights"][0] == 2.0
    ckpt = checkpoint.load(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["data_fingerprint"] == metrics["data_fingerprint"]
    # the checkpoint reproduces the val accuracy it recorded
    val = data.load_split(train_size=500, seed=0)
    mean, std = ckpt["normalize"]
    result = evaluate(checkpoint.model_from(ckpt), val.x_val, val.y_val, batch_size=256,
                      mean=mean, std=std, fast=checkpoint.fast_path_of(ckpt))
    assert result["acc"] == pytest.approx(metrics["final"]["val_acc"])


@pytest.mark.parametrize("args, message", [
    (["--model", "vgg"], "--model"), (["--batch-size", "0"], "--batch-size"),
    (["--class-weights", "1,1,1,1,1,1,1,1,1"], "expected 10 weights"),
    (["--class-weights", ",".join(["1"] * 11)], "expected 10 weights"),
    (["--class-weights=-1," + ",".join(["1"] * 9)], "non-negative"),
    (["--epochs", "3"], "warm-up"), (["--batch-size", "5000", "--train-size", "1000"], "larger"),
])
def test_cli_bad_arguments(args, message, tmp_path):
    out = train_cli(*args, "--out", str(tmp_path / "run"))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert not (tmp_path / "run").exists()  # docs/bad-input.md: nothing written


# --- the fast path ------------------------------------------------------------------------------

def test_the_fast_path_auto_and_explicit(monkeypatch):
    cpu = torch.device("cpu")
    assert fastpath.fast_path("fp32", "contiguous", cpu) == fastpath.FP32
    assert fastpath.fast_path("bf16", "channels_last", cpu) == fastpath.FastPath("bf16", True)
    # fp32 on a CPU stays NCHW: channels_last's backward crashed there at odd widths
    assert fastpath.fast_path("fp32", "auto", cpu) == fastpath.FP32
    cuda = torch.device("cuda")
    assert fastpath.fast_path("fp32", "auto", cuda) == fastpath.FastPath("fp32", True)
    monkeypatch.setattr(fastpath, "native_bf16", lambda device: False)  # bf16 emulated: fp32
    assert fastpath.fast_path("auto", "auto", cpu) == fastpath.FP32
    monkeypatch.setattr(fastpath, "native_bf16", lambda device: True)
    assert fastpath.fast_path("auto", "auto", cpu) == fastpath.FastPath("bf16", True)
    with pytest.raises(ConfigError, match="unknown precision 'fp16'"):
        TrainConfig(precision="fp16")
    with pytest.raises(ConfigError, match="unknown memory format"):
        TrainConfig(memory_format="nhwc")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_path_is_recorded_and_inference_runs_it_as_training_did(precision, small_split,
                                                                     tmp_path):
    from analysis.inference import predict_probs

    split = small_split
    cfg = TrainConfig(**FAST, epochs=2, warmup_epochs=1, precision=precision,
                      memory_format="channels_last")
    state = fit(cfg, split)
    assert state.fast == fastpath.FastPath(precision, True)
    assert all(h["fast_path"] == f"cpu, {precision}, channels_last" for h in state.history)
    param = next(state.model.parameters())
    assert param.dtype == torch.float32  # autocast: the weights stay fp32
    assert all(p.is_contiguous(memory_format=torch.channels_last)
               for p in state.model.parameters() if p.dim() == 4)
    ckpt = checkpoint.load(checkpoint.save(state, tmp_path / "c.pt"))
    assert ckpt["fast_path"] == {"precision": precision, "channels_last": True}
    assert checkpoint.fast_path_of(ckpt) == state.fast
    probs = predict_probs(ckpt, split.x_val)  # another batch size than the training's eval
    acc = (torch.as_tensor(probs).argmax(1) == split.y_val).double().mean().item()
    assert acc == state.history[-1]["val_acc"]
    assert probs.dtype.name == "float64" and abs(probs.sum(1) - 1).max() < 1e-6


@pytest.mark.parametrize("capability, native", [((6, 1), False), ((7, 0), False),
                                                 ((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_bf16_is_native_on_gpus_of_compute_capability_8_and_more(capability, native,
                                                                  monkeypatch):
    """torch.cuda.is_bf16_supported() says yes on a V100 or a T4 too (it counts emulation):
    the decision is the compute capability's, so "auto" trains fp32 on those."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    cuda = torch.device("cuda")
    assert fastpath.native_bf16(cuda) is native
    assert fastpath.fast_path("auto", "auto", cuda).precision == ("bf16" if native else "fp32")


def test_the_augmentation_clock_records_on_the_training_devices_stream(monkeypatch):
    """With --device cuda:1 the events sit on cuda:1's stream, not the current device's."""
    asked, recorded = [], []

    class Event:
        def __init__(self, enable_timing=False):
            assert enable_timing

        def record(self, stream=None):
            recorded.append(stream)

        def elapsed_time(self, end):
            return 250.0

    monkeypatch.setattr(torch.cuda, "current_stream",
                        lambda device=None: asked.append(device) or f"stream of {device}")
    monkeypatch.setattr(torch.cuda, "Event", Event)
    clock = fastpath.AugmentClock(torch.device("cuda:1"))
    clock.stop(clock.start())
    assert asked == [torch.device("cuda:1")]
    assert recorded == ["stream of cuda:1"] * 2
    assert clock.total() == 0.25


def test_a_checkpoint_is_scored_on_the_path_it_recorded(monkeypatch, small_split, tmp_path):
    """A checkpoint trained where "auto" meant bf16 (a GPU) scored where it means fp32 (a CPU
    without native bf16) runs bf16, as it trained, and gives the accuracy it recorded."""
    from analysis.inference import predict_probs

    monkeypatch.setattr(fastpath, "native_bf16", lambda device: True)
    state = fit(TrainConfig(**FAST, epochs=2, warmup_epochs=1), small_split)
    assert state.fast.precision == "bf16" and state.cfg.precision == "auto"
    ckpt = checkpoint.load(checkpoint.save(state, tmp_path / "c.pt"))
    monkeypatch.setattr(fastpath, "native_bf16", lambda device: False)  # another machine
    assert fastpath.fast_path("auto", "auto", torch.device("cpu")) == fastpath.FP32
    assert checkpoint.fast_path_of(ckpt) == fastpath.FastPath("bf16", True)
    probs = predict_probs(ckpt, small_split.x_val, "cpu")
    acc = (torch.as_tensor(probs).argmax(1) == small_split.y_val).double().mean().item()
    assert acc == state.history[-1]["val_acc"]
    # a checkpoint from before the record: its config's "auto", resolved where it is scored
    old = {k: v for k, v in ckpt.items() if k != "fast_path"}
    assert checkpoint.fast_path_of(old) == fastpath.FP32


def test_compile_auto_where_it_pays_and_explicit(monkeypatch):
    """--compile auto: ResNet18 and Inception, fp32 on a CPU, a training set of at least
    COMPILE_MIN_IMAGES, a C++ compiler there (bench/train_step.py measured it faster there
    alone); on and off as they say; an unknown setting refused."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    n = fastpath.COMPILE_MIN_IMAGES
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(fastpath.shutil, "which", lambda name: f"/usr/bin/{name}")
    pays = [m for m in list_models() if card(m).compile_pays]  # their ModelCards say
    assert pays == ["inception", "resnet18"]
    for model in pays:
        assert fastpath.fast_path("fp32", "auto", cpu, "auto", model, n).compiled
        assert fastpath.fast_path("auto", "auto", cpu, "auto", model, n) == \
            fastpath.FastPath("fp32", False, True) or fastpath.native_bf16(cpu)
        assert not fastpath.fast_path("fp32", "auto", cpu, "auto", model, n - 1).compiled
        assert not fastpath.fast_path("bf16", "auto", cpu, "auto", model, n).compiled
        assert not fastpath.fast_path("fp32", "auto", cuda, "auto", model, n).compiled
        assert not fastpath.fast_path("fp32", "auto", cpu, "off", model, n).compiled
    assert not fastpath.fast_path("fp32", "auto", cpu, "auto", "cnn", n).compiled
    assert fastpath.fast_path("bf16", "auto", cuda, "on", "cnn", 1).compiled
    assert not fastpath.fast_path("fp32", "auto", cpu).compiled  # inference: eager
    assert str(fastpath.FastPath("fp32", False, True)) == "fp32, contiguous, compiled"
    monkeypatch.setattr(fastpath.shutil, "which", lambda name: None)
    assert not fastpath.fast_path("fp32", "auto", cpu, "auto", "resnet18", n).compiled
    with pytest.raises(ConfigError, match="unknown compile setting 'yes'"):
        TrainConfig(compile="yes")


def test_compile_on_without_a_compiler_is_refused(small_split, tmp_path, monkeypatch):
    """No C++ compiler: --compile on is refused before anything trains or is written, by the
    train CLI (exit 2, one line) and by the searches' checks; auto stays eager."""
    from search.options import SearchOptions, check_resources

    env = {k: v for k, v in os.environ.items() if k != "CXX"}
    out = subprocess.run([sys.executable, "-m", "trainables.train", "--compile", "on",
                          "--train-size", "500", "--out", str(tmp_path / "run")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300,
                         env={**env, "PATH": str(tmp_path)})
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "--compile on needs a C++ compiler" in lines[0] and \
        "apt-get install g++" in lines[0], out.stderr
    assert not (tmp_path / "run").exists()
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(fastpath.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="or pass --compile off"):
        check_resources(SearchOptions(compile="on"))
    check_resources(SearchOptions(compile="auto"))
    assert not build(TrainConfig(**FAST, compile="auto"), small_split).fast.compiled


@pytest.mark.slow
def test_a_compiled_run_trains_as_the_eager_one_and_resumes_exactly(small_split, tmp_path):
    """--compile on: every full batch through torch.compile (the last, shorter one eager), the
    eager model's function, the first epoch's loss the eager run's to rounding (no dropout:
    compiled dropout draws its own numbers), the path recorded; its checkpoints hold the plain
    module's weights, and a compiled run resumed from one is the uninterrupted run exactly."""
    from torch._dynamo.utils import counters

    need_compiler()
    split = small_split  # 450 training images: 7 batches of 64 and one of 2
    # the fp32 path named, not "auto": on a CPU with native bf16 "auto" picks bf16
    cfg = TrainConfig(**FAST, epochs=3, warmup_epochs=1, dropout=0.0, seed=4, compile="on",
                      precision="fp32", memory_format="contiguous")
    eager = fit(replace(cfg, compile="off"), split)
    assert eager.compiled is None and eager.fast == fastpath.FP32
    before = counters["frames"]["ok"]
    whole = fit(cfg, split)
    assert counters["frames"]["ok"] > before  # Dynamo compiled the model's forward
    assert whole.compiled is not None
    assert all(h["fast_path"] == "cpu, fp32, contiguous, compiled" for h in whole.history)
    # the same function of the same weights
    fresh = build(cfg, split)
    x = ((split.x_train[:64].unsqueeze(1).float() / 255) - fresh.mean) / fresh.std
    fresh.model.train()
    torch.testing.assert_close(fresh.compiled(x), fresh.model(x), rtol=1e-4, atol=1e-5)
    # and an epoch from them to rounding (later ones part: 450 images at these rates are
    # chaotic, the eager run's third epoch spikes to 1.14 where the compiled one falls to 0.50)
    assert whole.history[0]["train_loss"] == pytest.approx(eager.history[0]["train_loss"],
                                                           rel=1e-2)
    part = build(cfg, split)
    run_epoch(part)
    run_epoch(part)
    ckpt = checkpoint.load(checkpoint.save(part, tmp_path / "ck.pt"))
    assert set(ckpt["model_state"]) == set(eager.model.state_dict())  # no "_orig_mod." keys
    resumed = build(cfg, split)
    checkpoint.restore(resumed, ckpt)
    run_epoch(resumed)
    assert torch.equal(weights(resumed.model), weights(whole.model))
    assert resumed.history[-1]["val_loss"] == whole.history[-1]["val_loss"]


def test_the_plain_path_is_contiguous_fp32(split):
    state = build(TrainConfig(**FAST, precision="fp32", memory_format="contiguous"), split)
    assert state.fast == fastpath.FP32
    assert all(p.is_contiguous() for p in state.model.parameters())
