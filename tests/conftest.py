"""Shared fixtures: small IDX data sets written by the tests, and the real Debian files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from trainables import data
from trainables.idx import write_idx

REAL_DIR = data.SYSTEM_DIR


def write_idx_set(directory: Path, train_counts=(70, 60, 50, 40, 30, 30, 40, 50, 60, 70),
                  test_per_class: int = 10, gz: bool = True, seed: int = 0) -> Path:
    """Write a small, uneven Fashion-MNIST-shaped set: class c has train_counts[c] images."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    y = np.repeat(np.arange(10, dtype=np.uint8), train_counts)
    y = y[rng.permutation(len(y))]
    y_test = np.repeat(np.arange(10, dtype=np.uint8), test_per_class)
    arrays = {
        "train_images": rng.integers(0, 256, (len(y), 28, 28), dtype=np.uint8),
        "train_labels": y,
        "test_images": rng.integers(0, 256, (len(y_test), 28, 28), dtype=np.uint8),
        "test_labels": y_test,
    }
    for key, name in data.FILES.items():
        write_idx(directory / f"{name}{suffix}", arrays[key])
    return directory


@pytest.fixture
def small_set(tmp_path) -> Path:
    return write_idx_set(tmp_path / "small")


@pytest.fixture
def real_dir() -> Path:
    """The Debian files; the set-up installs them, so in CI their absence is a failure."""
    _, missing = data.find_files(REAL_DIR)
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{REAL_DIR} lacks {missing}: the set-up (make data) should install them")
        pytest.skip(f"{REAL_DIR} lacks {missing}; run `make data`")
    return REAL_DIR


@pytest.fixture
def no_default_data(tmp_path, monkeypatch):
    """Point the system folder and the cache at empty folders, and unset $TUNEFUSE_DATA."""
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    return tmp_path


def exit_code(main, *args) -> int:
    """A command's main() run in this process: argparse exits, the rest returns its code."""
    try:
        return main(list(args))
    except SystemExit as e:
        return e.code
