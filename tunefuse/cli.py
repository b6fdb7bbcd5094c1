"""``tunefuse``: one command for every part of the study, from any directory.

    tunefuse run --profile quick --workspace outputs     # python -m search.pipeline ...
    tunefuse grid --model resnet18                        # python -m search.grid ...
    tunefuse weights | report | predict | train | data    # the other python -m commands

Each subcommand is the ``python -m`` command of the same flags (those keep working): its
module's ``main(argv)``, run with ``tunefuse SUBCOMMAND`` as the program's name in its help and
errors. The modules are imported by name when their subcommand runs, so ``tunefuse data`` does
not import Ray, MLflow or Optuna.
"""

from __future__ import annotations

import importlib
import sys
from types import MappingProxyType

from trainables.cli import exit_now

# subcommand -> (the module whose main(argv) it runs, what it does)
SUBCOMMANDS = MappingProxyType({
    "run": ("tunefuse.pipeline", "the whole study: the grids, the class weights, the report"),
    "grid": ("search.grid", "one batch size x epochs grid of one model (Ray Tune, ASHA)"),
    "weights": ("search.weights", "ResNet18's class weights searched with Optuna"),
    "report": ("analysis.report", "fuse the best checkpoints, write the report, ship the model"),
    "predict": ("analysis.predict", "label images with a checkpoint or the shipped ensemble"),
    "train": ("trainables.train", "train one model, no Ray, no MLflow"),
    "data": ("trainables.data", "find, check and summarise the Fashion-MNIST files"),
})


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {what} (python -m "
                     f"{'search.pipeline' if module == 'tunefuse.pipeline' else module})"
                     for name, (module, what) in SUBCOMMANDS.items())
    return (f"usage: tunefuse SUBCOMMAND [flags]   (tunefuse SUBCOMMAND --help: its flags)\n\n"
            f"{rows}\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), end="")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"error: unknown subcommand {name!r}; choose one of {', '.join(SUBCOMMANDS)} "
              "(tunefuse --help)", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    sys.argv[0] = f"tunefuse {name}"  # argparse's prog: the help and errors name this command
    return module.main(rest)


def entry() -> None:
    """The console script: main(), then the exit the python -m commands make."""
    exit_now(main)


if __name__ == "__main__":
    entry()
