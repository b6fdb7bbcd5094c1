"""Faults a trial survives: a corrupted or unreadable checkpoint, a restore at its last epoch, a
full disk. The Trainable is driven directly here (no Ray); tests/test_crash.py does the same
through real Ray clusters with killed drivers and workers."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
from conftest import need_real_data

from trainables import checkpoint, data
from trainables.config import TrainConfig
from trainables.trainable import CHECKPOINT_FILE, ClassifierTrainable

pytestmark = pytest.mark.usefixtures("torch_threads_kept")  # CONFIG sets 2 threads


@pytest.fixture(scope="module")
def split():
    return data.load_split(need_real_data(), train_size=400, seed=0)


CONFIG = TrainConfig(model="cnn", augment="flip", batch_size=64, warmup_epochs=1, epochs=3,
                     device="cpu", num_threads=2).to_dict()


def trainable(split, config=CONFIG):
    class Local(ClassifierTrainable):  # the object store's role, played by a closure
        def setup(self, config):
            super().setup(config, split=split)

    return Local(config=dict(config))


def train(t, until: int) -> list[dict]:
    results = []
    while t.state.epoch < until:
        results.append(t.train())
    return results


@pytest.fixture(scope="module")
def uninterrupted(split):
    t = trainable(split)
    results = train(t, 3)
    t.stop()
    return results


def flip_a_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, still a zip: torch.load alone may not notice
    path.write_bytes(bytes(raw))


def save_epochs(split, trial_dir: Path, epochs=(1, 2)) -> None:
    """A trial that kept checkpoint_00000E/ after the given epochs, as Tune lays them out."""
    t = trainable(split)
    for e in epochs:
        train(t, e)
        d = trial_dir / f"checkpoint_{e:06d}"
        d.mkdir(parents=True)
        t.save_checkpoint(str(d))
    t.stop()


def same_numbers(a: list[dict], b: list[dict]) -> bool:
    keys = ("epoch", "val_acc", "val_loss", "train_loss")
    return [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]


def test_a_checksum_catches_a_flipped_byte(split, tmp_path):
    save_epochs(split, tmp_path, epochs=(1,))
    path = tmp_path / "checkpoint_000001" / CHECKPOINT_FILE
    assert checkpoint.digest_path(path).read_text().split()[1] == CHECKPOINT_FILE
    checkpoint.load(path)
    flip_a_byte(path)
    with pytest.raises(checkpoint.CheckpointError, match=r"corrupted \(its SHA-256"):
        checkpoint.load(path)


def test_a_corrupted_latest_checkpoint_falls_back_to_the_previous_good_one(split, tmp_path,
                                                                           uninterrupted,
                                                                           capfd):
    save_epochs(split, tmp_path)
    flip_a_byte(tmp_path / "checkpoint_000002" / CHECKPOINT_FILE)
    t = trainable(split)
    t.load_checkpoint(str(tmp_path / "checkpoint_000002"))
    assert t.state.epoch == 1
    results = train(t, 3)
    t.stop()
    assert "SHA-256" in results[0]["checkpoint_fault"]
    assert "continued from checkpoint_000001 (epoch 1)" in results[0]["checkpoint_fault"]
    assert all("checkpoint_fault" not in r for r in results[1:])  # said once, not every epoch
    assert "checkpoint fault:" in capfd.readouterr().err
    assert same_numbers(results, uninterrupted[1:])  # the replayed epoch is the same epoch


def test_no_good_checkpoint_left_restarts_from_scratch(split, tmp_path, uninterrupted):
    save_epochs(split, tmp_path)
    for e in (1, 2):
        path = tmp_path / f"checkpoint_{e:06d}" / CHECKPOINT_FILE
        path.write_bytes(path.read_bytes()[:1000])  # truncated: torch.load fails
        checkpoint.digest_path(path).unlink()  # and no checksum to compare with
    t = trainable(split)
    t.load_checkpoint(str(tmp_path / "checkpoint_000002"))
    assert t.state.epoch == 0
    results = train(t, 3)
    t.stop()
    assert "not a readable checkpoint" in results[0]["checkpoint_fault"]
    assert "restarted from scratch" in results[0]["checkpoint_fault"]
    assert same_numbers(results, uninterrupted)


def test_a_trial_restored_at_its_last_epoch_is_not_trained_again(split, tmp_path,
                                                                  uninterrupted):
    save_epochs(split, tmp_path, epochs=(3,))
    t = trainable(split)
    t.load_checkpoint(str(tmp_path / "checkpoint_000003"))
    before = [v.clone() for v in t.state.model.state_dict().values()]
    result = t.train()
    t.stop()
    assert result["done"] and result["epoch"] == 3
    assert result["val_acc"] == uninterrupted[-1]["val_acc"]
    assert all(torch.equal(a, b) for a, b in zip(before, t.state.model.state_dict().values(),
                                                 strict=True))


def test_a_full_disk_keeps_the_previous_checkpoint(split, tmp_path, monkeypatch):
    save_epochs(split, tmp_path, epochs=(1,))
    path = tmp_path / "checkpoint_000001" / CHECKPOINT_FILE
    kept = path.read_bytes()
    t = trainable(split)
    t.load_checkpoint(str(path.parent))
    train(t, 2)

    def full(obj, f, *a, **kw):
        Path(f).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(checkpoint.CheckpointError, match="the disk is full"):
        t.save_checkpoint(str(path.parent))
    t.stop()
    assert path.read_bytes() == kept
    assert sorted(p.name for p in path.parent.iterdir()) == [CHECKPOINT_FILE,
                                                             CHECKPOINT_FILE + ".sha256"]
    checkpoint.load(path)  # still good, checksum and all
