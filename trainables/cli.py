"""What every tunefuse command shares on its command line: the exit codes, the one-line
argument errors and the argument types."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import fields

# The exit codes of every command (docs/bad-input.md): 1 a search where no trial finished,
# 2 bad input (nothing recorded), 3 a pipeline stage that trained but could not record (MLflow
# went away), 4 Tune's saved state unreadable, 5 done but some inputs skipped (analysis.predict:
# unreadable files of a folder), 130 interrupted (state saved; --resume).
EXIT_OK, EXIT_NONE_FINISHED, EXIT_USAGE, EXIT_OFFLINE, EXIT_STATE = 0, 1, 2, 3, 4
EXIT_SKIPPED = 5
EXIT_INTERRUPTED = 130


class ArgParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump) and exit with code 2."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def at_least(low: int, bound: str | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number no smaller than ``low`` (``bound`` words the limit in
    the error, e.g. "0 or more")."""
    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {bound or f'at least {low}'}, got {value}")
        return value

    return whole


def positive_ints(text: str) -> tuple[int, ...]:
    """An argparse type: whole numbers of at least 1, separated by commas ("32,64")."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}"
                                         ) from None
    if not values:
        raise argparse.ArgumentTypeError("the list is empty")
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"values must be at least 1, got {text!r}")
    return values


def above_one(text: str) -> float:
    """An argparse type for ASHA's reduction factor (Ray asserts it is above 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 1):
        raise argparse.ArgumentTypeError(f"must be above 1 (e.g. 2 or 3), got {text}")
    return value


def options_from(cls, args: argparse.Namespace):
    """A typed options dataclass from parsed arguments: each field from the attribute of its
    name. A parser and its options class must agree exactly (tests/test_options.py)."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

