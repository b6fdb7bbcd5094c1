"""The small things every layer does with files and errors, written once: a file's SHA-256, an
atomic JSON write, and the one-line reason of an error (a full disk named as such)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path


def digest_file(path: str | Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes, read in 1 MiB blocks (md5: a checksum to compare with
    a published one, not a security measure)."""
    h = hashlib.new(algorithm, usedforsecurity=algorithm != "md5")
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes."""
    return digest_file(path, "sha256")


def write_json(path: str | Path, obj, indent: int | None = 2, default=None) -> None:
    """Write ``obj`` as JSON atomically: a kill or a full disk mid-write leaves the previous
    file as it was, never half a file."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=indent, default=default))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an error's message (its type's name when it has none), cut short."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__


def disk_full(error: BaseException) -> bool:
    """Whether an error is a full disk. torch.save reports one as a RuntimeError ("unexpected
    pos N vs M" from its zip writer), not as ENOSPC."""
    text = str(error)
    return getattr(error, "errno", None) == errno.ENOSPC or any(
        t in text for t in ("No space left", "unexpected pos"))


def write_reason(error: BaseException) -> str:
    """Why a write failed, in a few words: "the disk is full", else the OS's reason."""
    if disk_full(error):
        return "the disk is full"
    return getattr(error, "strerror", None) or first_line(error)
