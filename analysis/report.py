"""Pick the top checkpoints of the workspace's searches, fuse them, report, ship the ensemble.

    python -m analysis.report [--workspace outputs] [--top-k 4] [--per-model-cap N]
        [--method uniform|weighted|greedy|nll|...] [--weights 0.4,0.3,...] [--calibrate]
        [--experiments grid-cnn,weights-resnet18] [--name NAME]

Writes WORKSPACE/reports/NAME/: summary.json, report.md, a self-contained report.html and the
PNG figures (ROC and precision/recall curves per class, the confusion matrix, a reliability
diagram, the grids' val accuracy heat maps, ASHA survival per rung) with each search's cost in
epochs and wall time, logs all of it to an MLflow run in the experiment ``fusion`` tagged with
its members' run ids, and registers the fused model (an MLflow pyfunc) in the model registry.
Selection, weights and temperatures use the validation set only; the test set is only scored.
This module is the command: its options, and the members chosen before anything is written;
the run that fuses and writes is analysis/fusion_run.py, the methods analysis/methods/; what
is computed lives in analysis/summary.py, how it reads in analysis/render.py, where it goes in
analysis/publish.py.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass

from analysis import fusion, methods
from analysis.fusion_run import make
from analysis.inference import TTA
from analysis.publish import staging
from analysis.select import Selection, SelectionError, distinct, gather, same_data, top_k
from search.workspace import Workspace, WorkspaceError, redact
from trainables.cli import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    ArgParser,
    at_least,
    exit_now,
)
from trainables.config import ConfigError
from trainables.data import DataError, DataOptions, load_split
from trainables.engine import resolve_device
from trainables.files import write_reason
from trainables.flags import flag, parser_for, run_command


@dataclass(frozen=True)
class ReportOptions(DataOptions):
    """The flags of ``python -m analysis.report``, typed (--train-size and --seed are accepted
    with the data flags, unused: the members' own split is loaded)."""

    workspace: str = flag("outputs")
    tracking_uri: str | None = flag(None, help="MLflow tracking URI (default sqlite in "
                                    "workspace)")
    experiments: str | None = flag(None, help="comma-separated experiment names (default: every "
                                   "grid and weights experiment)")
    top_k: int = flag(4, type=int, help=lambda: methods.top_k_help("%(default)s"))
    per_model_cap: int | None = flag(None, type=int, help="at most N members per architecture")
    method: str = flag("uniform", choices=lambda: methods.names(), help=lambda: "; ".join(
        f"{m.name}: {m.help}" for m in methods.methods()))
    weights: str | None = flag(None, help=lambda: "comma-separated fusion weights, one per "
                               f"member (--method {_weighted_methods()})")
    calibrate: bool = flag(False, action="store_true",
                           help="temperature-scale each member on validation first")
    tta: str = flag("none", choices=TTA, help="test-time augmentation of every member: flip "
                    "scores each image as the mean with its left-right mirror (default "
                    "%(default)s)")
    name: str | None = flag(None, help="report name (default fusion-DATE-TIME)")
    registered_name: str = flag("tunefuse-ensemble",
                                help="model registry name of the fused model")
    no_register: bool = flag(False, action="store_true", help="do not log the pyfunc model")
    bootstrap: int = flag(2000, type=at_least(1), help="bootstrap resamples")
    device: str = flag("auto", help="inference device: auto, cpu, cuda")


def parser() -> ArgParser:
    return parser_for(ReportOptions, prog="python -m analysis.report", description=(
        "Fuse the best checkpoints of the workspace's searches; report."))


def _weighted_methods() -> str:
    """The methods that take --weights, for a message: "weighted"."""
    return " or ".join(m.name for m in methods.methods() if m.takes_weights)


def _weights_arg(text: str | None, method: str, k: int) -> list[float]:
    """--weights, checked: one finite, non-negative number per member, not all zero."""
    if not text:
        raise SelectionError(f"--method {method} needs --weights, one number per member "
                             f"({k}, as --top-k)")
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SelectionError(f"--weights must be numbers separated by commas, got {text!r}"
                             ) from None
    if len(values) != k:
        raise SelectionError(f"--weights has {len(values)} values for {k} members; give one "
                             "per member (--top-k)")
    try:
        fusion.normalise(values)
    except ValueError:
        raise SelectionError(f"--weights must be finite, non-negative and not all zero, got "
                             f"{text!r}; e.g. 0.4,0.3,0.2,0.1") from None
    return values


def select(options: ReportOptions) -> Selection:
    """Choose the members; SelectionError (and the others below) for a report that cannot be
    made, before anything is written."""
    resolve_device(options.device)
    ws = Workspace.open(options.workspace, options.tracking_uri)
    client = ws.client()
    names = [n.strip() for n in options.experiments.split(",")] if options.experiments \
        else None
    candidates = gather(client, names)
    if not candidates:
        raise SelectionError(f"no finished trial with a checkpoint in "
                             f"{redact(ws.tracking_uri)}; run python -m search.grid first")
    group, others = same_data(candidates)
    unique = distinct(group)
    if len(unique) < len(group):
        print(f"note: {len(group) - len(unique)} candidate(s) kept a shared warm-up "
              "checkpoint another candidate already holds; each model is fused once")
    group = unique
    members = top_k(group, options.top_k, options.per_model_cap)
    takes_weights = methods.method(options.method).takes_weights
    weights = _weights_arg(options.weights, options.method, len(members)) if takes_weights \
        else None
    if not takes_weights and options.weights:
        raise SelectionError(f"--weights is only for --method {_weighted_methods()}")
    best = group[0]
    split = load_split(options.data_dir, best.train_size or None, best.seed, options.download)
    if split.fingerprint != best.fingerprint:
        raise SelectionError(
            f"the members were trained on data {best.fingerprint[:16]}, the data found "
            f"gives {split.fingerprint[:16]}; pass the --data-dir they were trained on")
    return Selection(ws, client, names, group, others, members, weights, split)


def run(options: ReportOptions) -> int:
    """Write the report; the exit code."""
    try:
        sel = select(options)
    except (WorkspaceError, SelectionError, DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    name = options.name or time.strftime("fusion-%Y%m%d-%H%M%S")
    try:
        return make(options, name, sel)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (trainables/cli.py): its run is KILLED
        print(f"\nreport {name} interrupted; nothing of it was published, earlier reports "
              "and runs are as they were: run it again", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:  # a full disk, a read-only reports folder: one line, nothing lost
        print(f"error: cannot write the report in {sel.ws.root} ({write_reason(e)}); earlier "
              "reports and runs are as they were: free space on that disk and run it again",
              file=sys.stderr)
        return EXIT_USAGE
    finally:  # nothing half-written stays behind
        shutil.rmtree(staging(sel.ws.root / "reports" / name), ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    return run_command(ReportOptions, parser(), run, argv)


if __name__ == "__main__":
    exit_now(main)
