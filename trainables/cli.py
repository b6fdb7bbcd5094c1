"""What every tunefuse command shares on its command line: the exit codes, the one-line
argument errors, the argument types and the verbosity (-q, -v).

The verbosity is the command's parsed flag (``options.verbosity``), passed to what depends on
it; ``output`` applies it to the process (the libraries' loggers, standard output) for the
command's ``with`` block."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import math
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import fields
from typing import NoReturn

# The exit codes of every command (docs/bad-input.md): 1 a search where no trial finished,
# 2 bad input (nothing recorded), 3 a pipeline stage that trained but could not record (MLflow
# went away), 4 Tune's saved state unreadable, 5 done but some inputs skipped (analysis.predict:
# unreadable files of a folder), 130 interrupted by Ctrl-C or SIGTERM (state saved; --resume).
EXIT_OK, EXIT_NONE_FINISHED, EXIT_USAGE, EXIT_OFFLINE, EXIT_STATE = 0, 1, 2, 3, 4
EXIT_SKIPPED = 5
EXIT_INTERRUPTED = 130


INTERRUPTED = ("interrupted (Ctrl-C or SIGTERM); what it had recorded is kept: run the same "
               "command again (a search that had started: with --resume)")


def exit_now(code: int | Callable[[], int]) -> NoReturn:
    """End a command that returned ``code`` (or run ``code``, a command's main, first: Ctrl-C
    or SIGTERM that reaches it, outside what a search handles itself, ends it with one line
    and EXIT_INTERRUPTED, not a traceback): its output flushed and the exit handlers run
    (Ray's shutdown of the command's local cluster, logging's), but not the interpreter's
    teardown of the torch, Ray and MLflow modules, which costs about 2 s of CPU per command on
    a 2-core machine and writes nothing. What a command records is on disk before it returns,
    written to survive a kill at any instant (docs/crash-windows.md). While a thread that is
    not a daemon runs, the command exits the ordinary way, which waits for it."""
    if callable(code):
        try:
            code = code()
        except KeyboardInterrupt:
            print(f"\n{INTERRUPTED}", file=sys.stderr)
            code = EXIT_INTERRUPTED
    _flush()
    others = [t for t in threading.enumerate()
              if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if others:
        sys.exit(code)
    atexit._run_exitfuncs()  # CPython's own, as its ordinary exit calls them
    _flush()
    os._exit(code)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe has nothing left to take
            stream.flush()


class ArgParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump) and exit with code 2, with
    every command's -q and -v (``verbosity``, for ``output``). Its ``prog`` names the command
    as the user typed it: ``python -m search.grid``, or ``tunefuse grid`` when the console
    script runs it (tunefuse/cli.py puts that in sys.argv[0])."""

    def __init__(self, *args, **kwargs):
        if sys.argv and sys.argv[0].startswith("tunefuse "):
            kwargs["prog"] = sys.argv[0]
        super().__init__(*args, **kwargs)
        g = self.add_mutually_exclusive_group()
        g.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=QUIET,
                       help="print errors only")
        g.add_argument("-v", "--verbose", dest="verbosity", action="store_const",
                       const=VERBOSE, help="also print what Ray, Tune, MLflow and Optuna say "
                       "(Tune's own trial table, its scheduler and warnings), for debugging")
        self.set_defaults(verbosity=NORMAL)

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


def non_negative(text: str) -> float:
    """An argparse type: a finite number of at least 0 (ASHA's margin)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be 0 or more (e.g. 0.01), got {text}")
    return value


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
    name (the parser is derived from the class: trainables/flags.py; tests/test_layers.py
    checks that they agree)."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


# --- verbosity ----------------------------------------------------------------------------------
# QUIET: errors only. NORMAL: the command's own lines (a search's progress view), and of the
# libraries it drives only their errors, one line each. VERBOSE: everything they say as well.
QUIET, NORMAL, VERBOSE = -1, 0, 1
LIBRARIES = ("ray", "mlflow", "optuna", "alembic", "sqlalchemy", "huey", "urllib3", "filelock")
LIBRARY_MODULES = r"(ray|mlflow|optuna|torch|torchvision|alembic|sqlalchemy|pydantic|numpy)(\.|$)"
# Library errors a command reports itself, in its own words: (the message's start, the error
# raised, None: any). Tune's trial failure (its traceback), which the search's progress lines
# name by the trial's MLflow run, and its list of trials that did not complete, which the
# search's table lists as failed; Tune failing to delete a checkpoint that is already gone (a
# trial killed after Tune's saved state named it), which the trial reports as its checkpoint
# fault (trainables/trainable.py).
REPORTED = (("Trial task failed", None), ("Trials did not complete", None),
            ("Error handling checkpoint", FileNotFoundError))


class OneLineErrors(logging.Handler):
    """A library's errors as one line each on stderr ("ray: <its first line>"); nothing else."""

    def __init__(self):
        super().__init__(logging.ERROR)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            lines = [ln for ln in record.getMessage().splitlines() if ln.strip()]
        except Exception:  # a record whose arguments do not format
            lines = [str(record.msg)]
        error = record.exc_info[1] if record.exc_info else None
        if not lines or any(start in lines[0][:80] and (kind is None or isinstance(error, kind))
                            for start, kind in REPORTED):
            return
        text = lines[0][:300]
        if error is not None:  # what raised, not its traceback
            why = str(error).strip().splitlines()
            text += f" ({type(error).__name__}{': ' + why[0][:200] if why else ''})"
        print(f"{record.name.split('.')[0]}: {text}", file=sys.stderr, flush=True)


def _as_ctrl_c(signum, frame) -> None:
    """SIGTERM's handler: whatever Ctrl-C does now (Tune's own SIGINT handler while a search
    runs: its state saved, then the search stops as interrupted; elsewhere KeyboardInterrupt)."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def sigterm_as_ctrl_c() -> Callable | int | None:
    """Handle SIGTERM as Ctrl-C from now on in this process: `ray job stop`, `docker stop`,
    Kubernetes and systemd stop a command with SIGTERM (then SIGKILL), and it must stop as after
    Ctrl-C (exit code 130, the resume hint), not half-way. ray.init sets its own handler (an
    exit on the spot), so the search calls this again after it. Returns the handler it
    replaced; None where signals cannot be set (not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _as_ctrl_c)


@contextlib.contextmanager
def output(level: int) -> Iterator[None]:
    """A command's output at ``level`` (-q, -v), set for the ``with`` block and put back
    after: below VERBOSE the libraries' loggers print their errors only, one line each, and
    their Python warnings are not shown; at QUIET standard output is dropped (every error goes
    to stderr). Every command runs in it, so it also handles SIGTERM as Ctrl-C for the block
    (sigterm_as_ctrl_c)."""
    loggers = [logging.getLogger(name) for name in LIBRARIES]
    saved = [(lg, lg.handlers[:], lg.propagate) for lg in loggers]
    term = sigterm_as_ctrl_c()
    try:
        with contextlib.ExitStack() as stack:
            if level < VERBOSE:
                handler = OneLineErrors()
                for lg in loggers:
                    lg.handlers[:] = [handler]
                    lg.propagate = False
                stack.enter_context(warnings.catch_warnings())
                warnings.filterwarnings("ignore", module=LIBRARY_MODULES)
            if level <= QUIET:
                sink = stack.enter_context(open(os.devnull, "w"))
                stack.enter_context(contextlib.redirect_stdout(sink))
            yield
    finally:
        if term is not None:
            signal.signal(signal.SIGTERM, term)
        for lg, handlers, propagate in saved:
            lg.handlers[:] = handlers
            lg.propagate = propagate
