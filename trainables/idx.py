"""IDX files (the MNIST / Fashion-MNIST format), read and written with numpy only.

The format (http://yann.lecun.com/exdb/mnist/, "FILE FORMATS"): a 4-byte magic number
``00 00 <dtype> <ndim>``, then ``ndim`` big-endian uint32 dimensions, then the data in C order.
tunefuse only reads unsigned-byte files (dtype 0x08). Nothing in a file is trusted: every check
below raises ``DataError`` with one line that names the file, the problem and the fix.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

UBYTE = 0x08
FIX = "re-install the data (apt-get install --reinstall dataset-fashion-mnist) or re-download it"


class DataError(Exception):
    """Missing, unreadable or malformed data: the message is one line for the user."""


def read_idx(path: Path, ndim: int | None = None) -> np.ndarray:
    """Return the array stored in an IDX file (raw, or gzipped when the name ends in ``.gz``)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    if path.name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: is not a valid gzip file ({e}); {FIX}") from None
    if len(raw) < 4:
        raise DataError(f"{path}: is truncated ({len(raw)} bytes, not even a header); {FIX}")
    magic = struct.unpack(">I", raw[:4])[0]
    if raw[0] != 0 or raw[1] != 0 or raw[2] != UBYTE or (ndim is not None and raw[3] != ndim):
        want = f"0x{UBYTE << 8 | ndim:08x}" if ndim is not None else f"0x{UBYTE << 8:06x}NN"
        raise DataError(
            f"{path}: wrong magic number 0x{magic:08x} (expected {want}), "
            f"not an unsigned-byte IDX file of {ndim or 'any'} dimension(s); {FIX}"
        )
    nd = raw[3]
    header = 4 + 4 * nd
    if len(raw) < header:
        raise DataError(f"{path}: is truncated inside its header; {FIX}")
    dims = struct.unpack(f">{nd}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    actual = len(raw) - header
    shape = "x".join(map(str, dims))
    if actual < expected:
        raise DataError(
            f"{path}: is truncated: the header says {shape} = {expected} bytes of data, "
            f"the file holds {actual}; {FIX}"
        )
    if actual > expected:
        raise DataError(
            f"{path}: has {actual - expected} bytes after the {shape} data its header "
            f"declares; {FIX}"
        )
    return np.frombuffer(raw, dtype=np.uint8, count=expected, offset=header).reshape(dims)


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file, gzipped when the name ends in ``.gz``."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"IDX writer takes uint8 arrays, got {array.dtype}")
    data = struct.pack(f">BBBB{array.ndim}I", 0, 0, UBYTE, array.ndim, *array.shape)
    data += array.tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return path
