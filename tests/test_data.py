"""The data layer: split sizes, stratification, determinism, fingerprint, search order, CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_idx_set

from trainables import data

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainables.data", *args], cwd=ROOT, capture_output=True,
        text=True, env={**os.environ, **(env or {})}, timeout=120,
    )


def assert_stratified(part_labels: np.ndarray, pool_labels: np.ndarray) -> None:
    """Every class's count is within 1 of its ideal share of the pool."""
    ideal = np.bincount(pool_labels, minlength=10) * len(part_labels) / len(pool_labels)
    counts = np.bincount(part_labels, minlength=10)
    assert np.all(np.abs(counts - ideal) < 1), (counts, ideal)


# --- the real Debian files ---------------------------------------------------------------------

def test_real_default_protocol(real_dir):
    s = data.load_split(real_dir)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (27_000, 3_000, 10_000)
    assert s.x_train.shape == (27_000, 28, 28) and s.x_train.dtype == torch.uint8
    assert s.x_test.shape == (10_000, 28, 28) and s.y_test.dtype == torch.int64
    # Fashion-MNIST is balanced (6,000 per class), so the seed protocol is exactly 2,700 / 300.
    assert s.histogram("train").tolist() == [2_700] * 10
    assert s.histogram("val").tolist() == [300] * 10
    assert s.histogram("test").tolist() == [1_000] * 10
    assert not set(s.train_index) & set(s.val_index)
    assert s.origin == "--data-dir" and len(s.fingerprint) == 64


def test_real_summary_cli(real_dir):
    out = run_cli("--summary", "--data-dir", str(real_dir))
    assert out.returncode == 0, out.stderr
    assert "train 27000  val 3000  test 10000" in out.stdout
    assert "balanced: every class" in out.stdout and "<- off uniform" not in out.stdout
    assert str(real_dir) in out.stdout


def test_real_all_and_deterministic(real_dir):
    full = data.load_split(real_dir, train_size=None, seed=3)
    assert (len(full.y_train), len(full.y_val)) == (54_000, 6_000)
    a, b = data.load_split(real_dir, seed=5), data.load_split(real_dir, seed=5)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)
    assert a.fingerprint == b.fingerprint


# --- small sets the tests write ----------------------------------------------------------------

@pytest.mark.parametrize("train_size", [100, 257, 300, 499, None])
def test_counts_and_stratification(small_set, train_size):
    s = data.load_split(small_set, train_size=train_size, seed=1)
    pool = np.repeat(np.arange(10), (70, 60, 50, 40, 30, 30, 40, 50, 60, 70))
    n = len(pool) if train_size is None else train_size
    assert len(s.y_train) + len(s.y_val) == n == s.train_size
    assert len(s.y_val) == round(n / 10)
    subset = np.concatenate([s.y_train.numpy(), s.y_val.numpy()])
    assert_stratified(subset, pool)
    assert_stratified(s.y_val.numpy(), subset)
    assert len(s.y_test) == 100


def test_labels_follow_their_images(small_set):
    """Indices, images and labels stay aligned: re-read the files and compare."""
    from trainables.idx import read_idx

    s = data.load_split(small_set, train_size=300, seed=2)
    x = read_idx(small_set / "train-images-idx3-ubyte.gz", 3)
    y = read_idx(small_set / "train-labels-idx1-ubyte.gz", 1)
    assert np.array_equal(s.x_train.numpy(), x[s.train_index])
    assert np.array_equal(s.y_val.numpy(), y[s.val_index])
    assert len(np.intersect1d(s.train_index, s.val_index)) == 0


def test_deterministic_and_seed_sensitive(small_set):
    a = data.load_split(small_set, train_size=300, seed=7)
    b = data.load_split(small_set, train_size=300, seed=7)
    c = data.load_split(small_set, train_size=300, seed=8)
    assert np.array_equal(a.train_index, b.train_index) and a.fingerprint == b.fingerprint
    assert not np.array_equal(a.train_index, c.train_index)
    assert a.fingerprint != c.fingerprint and a.files_sha256 == c.files_sha256
    assert data.load_split(small_set, train_size=400, seed=7).fingerprint != a.fingerprint


def test_fingerprint_is_of_contents(tmp_path):
    gz = write_idx_set(tmp_path / "gz", gz=True)
    raw = write_idx_set(tmp_path / "raw", gz=False)
    assert data.load_split(gz, 300).fingerprint == data.load_split(raw, 300).fingerprint
    changed = write_idx_set(tmp_path / "changed", seed=1)  # other pixels, other labels
    assert data.load_split(changed, 300).files_sha256 != data.load_split(gz, 300).files_sha256


def test_split_is_a_pure_function():
    labels = np.repeat(np.arange(10), 100)
    t1, v1 = data.split_indices(labels, 500, seed=0)
    t2, v2 = data.split_indices(labels, 500, seed=0)
    assert np.array_equal(t1, t2) and np.array_equal(v1, v2)
    assert np.bincount(labels[v1]).tolist() == [5] * 10
    assert np.bincount(labels[t1]).tolist() == [45] * 10


# --- where the files are looked for ------------------------------------------------------------

def test_search_order(tmp_path, no_default_data, monkeypatch):
    system = write_idx_set(data.SYSTEM_DIR)
    cache = write_idx_set(data.cache_dir())
    env_dir = write_idx_set(tmp_path / "env")
    flag_dir = write_idx_set(tmp_path / "flag")
    assert data.locate().directory == system
    assert data.locate().origin == "system"
    monkeypatch.setenv(data.ENV_VAR, str(env_dir))
    assert data.locate().directory == env_dir
    assert data.locate(flag_dir).directory == flag_dir
    monkeypatch.delenv(data.ENV_VAR)
    for f in system.iterdir():
        f.unlink()
    assert data.locate().directory == cache and data.locate().origin == "cache"


def test_explicit_folder_must_hold_the_files(tmp_path, no_default_data):
    write_idx_set(data.SYSTEM_DIR)
    partial = write_idx_set(tmp_path / "partial")
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte"):
        data.locate(partial)


def test_raw_files_preferred_over_gz(tmp_path):
    d = write_idx_set(tmp_path / "both", gz=True)
    write_idx_set(d, gz=False)
    found, missing = data.find_files(d)
    assert not missing and all(not p.name.endswith(".gz") for p in found.values())


# --- errors through the CLI: exit 2, one line naming the file, no traceback ---------------------

def corrupt(directory: Path, case: str) -> str:
    """Damage one file of a written set; return the file name the error must carry."""
    images = directory / "train-images-idx3-ubyte"
    labels = directory / "train-labels-idx1-ubyte"
    if case == "magic":
        b = bytearray(images.read_bytes())
        b[2:4] = b"\x0d\x03"  # float data: not an unsigned-byte IDX file
        images.write_bytes(bytes(b))
        return images.name
    if case == "truncated":
        images.write_bytes(images.read_bytes()[:-100])
        return images.name
    if case == "trailing":
        labels.write_bytes(labels.read_bytes() + b"\x00")
        return labels.name
    if case == "gzip":
        gz = directory / "t10k-images-idx3-ubyte"
        gz.rename(directory / "t10k-images-idx3-ubyte.gz")  # raw bytes under a .gz name
        return "t10k-images-idx3-ubyte.gz"
    if case == "gzip-truncated":
        gz = directory / "t10k-labels-idx1-ubyte"
        import gzip
        (directory / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(gz.read_bytes())[:-9])
        gz.unlink()
        return "t10k-labels-idx1-ubyte.gz"
    if case == "count":
        from trainables.idx import read_idx, write_idx
        write_idx(labels, read_idx(labels, 1)[:-1])
        return labels.name
    if case == "label":
        from trainables.idx import read_idx, write_idx
        y = read_idx(labels, 1).copy()
        y[17] = 12
        write_idx(labels, y)
        return labels.name
    if case == "missing":
        images.unlink()
        return images.name
    raise AssertionError(case)


@pytest.mark.parametrize("case, problem", [
    ("magic", "wrong magic number"), ("truncated", "truncated"), ("trailing", "bytes after"),
    ("gzip", "not a valid gzip file"), ("gzip-truncated", "not a valid gzip file"),
    ("count", "labels but"), ("label", "label 12 at index 17"), ("missing", "lacks"),
])
def test_cli_errors(tmp_path, case, problem):
    d = write_idx_set(tmp_path / case, gz=False)
    name = corrupt(d, case)
    out = run_cli("--data-dir", str(d), "--train-size", "200")
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert name in lines[0] and problem in lines[0] and "Traceback" not in out.stderr


def test_cli_train_size_too_large(small_set):
    out = run_cli("--data-dir", str(small_set), "--train-size", "501")
    assert out.returncode == 2
    assert "larger than the 500 labelled training images" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("value", ["zero", "0", "-5"])
def test_cli_bad_train_size_argument(value):
    out = run_cli("--train-size", value)
    assert out.returncode == 2 and "--train-size" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_cli_no_data_says_how_to_get_it(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = run_cli("--data-dir", str(empty))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    for hint in ("apt-get install dataset-fashion-mnist", "--data-dir", "--download"):
        assert hint in out.stderr


def test_cli_env_var(small_set):
    out = run_cli("--train-size", "300", env={data.ENV_VAR: str(small_set)})
    assert out.returncode == 0, out.stderr
    assert f"{small_set}  ($TUNEFUSE_DATA)" in out.stdout
    assert "train 270  val 30  test 100" in out.stdout
