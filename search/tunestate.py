"""Tune's saved experiment state, kept whole across a kill in the middle of its copy.

Tune writes its experiment state (``experiment_state-*.json``, the searcher's state beside it,
some of it pickles) in a staging folder and copies it to the storage path (``ray_results/NAME``)
from a background thread, every ten seconds or so, file by file, each file emptied before it is
written. A SIGKILL during a copy leaves a file empty or cut short, which Tune's restore cannot
read: the search could not be resumed (the smoke pipeline's test, killed as a trial ended while
two cores were busy, found it).

``StateCopies`` is a Tune callback: each time Tune saves its state (it asks its callbacks for
theirs before it starts the next copy), when every state file on the storage path reads whole,
they are copied into ``.last-complete/`` beside them (each written aside, then moved in whole).
``repair``, before a resume reads the state, puts back the copy of any state file that does not
read whole. The copy is at most a save or two older than what the kill cut short: as if the kill
had come that much earlier, which the resume already handles (docs/crash-windows.md).
"""

from __future__ import annotations

import json
import os
import pickletools
import shutil
from pathlib import Path

from ray.tune import Callback

COPIES = ".last-complete"
PATTERNS = ("*.json", "*.pkl")


def whole(path: Path) -> bool:
    """Whether a state file reads to its end: a pickle (Tune writes some under .json names)
    whose opcodes run to STOP (read, not executed), else JSON that parses."""
    try:
        data = path.read_bytes()
        if data[:1] == b"\x80":  # pickle's PROTO opcode (protocol 2 and later)
            ops = list(pickletools.genops(data))
            return ops[-1][0].name == "STOP"
        json.loads(data)
        return True
    except (OSError, ValueError, UnicodeDecodeError, IndexError):
        return False


def state_files(folder: Path) -> list[Path]:
    return sorted(p for pattern in PATTERNS for p in folder.glob(pattern) if p.is_file())


def _put(src: Path, dst: Path) -> bool:
    """``src`` copied to ``dst`` whole (written beside it, read back whole, then moved in);
    whether it was: Tune's copy may be writing ``src`` meanwhile."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        shutil.copyfile(src, tmp)
        if not whole(tmp):
            return False
        os.replace(tmp, dst)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def keep_copy(folder: Path) -> bool:
    """Copy the state files of ``folder`` into its COPIES folder when every one reads whole;
    whether they all were (a file Tune is copying meanwhile keeps its last complete copy)."""
    files = state_files(folder)
    if not files or not all(whole(p) for p in files):
        return False  # a copy in progress (or cut short): the last complete one stays
    copies = folder / COPIES
    copies.mkdir(exist_ok=True)
    return all([_put(p, copies / p.name) for p in files])


def repair(folder: str | Path) -> list[str]:
    """Put back, from the last complete copy, every state file of ``folder`` that does not read
    whole (or is missing); the names put back."""
    copies = Path(folder) / COPIES
    if not copies.is_dir():
        return []
    put = []
    for saved in state_files(copies):
        live = Path(folder) / saved.name
        if (not live.exists() or not whole(live)) and _put(saved, live):
            put.append(saved.name)
    return put


class StateCopies(Callback):
    """Keeps the last complete copy of the experiment's saved state (``keep_copy``) each time
    Tune saves it."""

    def __init__(self, folder: str):
        self.folder = folder

    def get_state(self) -> None:
        keep_copy(Path(self.folder))
        return None
