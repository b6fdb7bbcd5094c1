"""What every tunefuse command shares on its command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


class ArgParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump) and exit with code 2."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


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
