"""The IDX reader and writer."""

from __future__ import annotations

import numpy as np
import pytest

from trainables.idx import DataError, read_idx, write_idx


@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
def test_round_trip(tmp_path, name):
    x = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    assert np.array_equal(read_idx(write_idx(tmp_path / name, x), ndim=3), x)


def test_header_is_big_endian(tmp_path):
    path = write_idx(tmp_path / "l", np.arange(3, dtype=np.uint8))
    assert path.read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 0, 1, 2])


def test_wrong_dimension_count(tmp_path):
    path = write_idx(tmp_path / "labels", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match=r"wrong magic number 0x00000801 \(expected 0x00000803"):
        read_idx(path, ndim=3)


def test_unreadable(tmp_path):
    with pytest.raises(DataError, match="cannot be read"):
        read_idx(tmp_path / "absent")


def test_writer_refuses_other_dtypes(tmp_path):
    with pytest.raises(ValueError):
        write_idx(tmp_path / "f", np.zeros(3, np.float32))
