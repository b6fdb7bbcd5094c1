"""Search kinds: what a kind of search (a grid, the class weights) declares, in one place.

Each kind is a module of its own that registers a ``SearchKind`` when it is imported: its name
(the ``kind`` tag of its searches' parent MLflow runs), the stages it adds to a pipeline, how
such a stage runs, and whether its trials are fusion candidates. ``KIND_MODULES`` lists the
kind modules in the order a pipeline runs their stages; a new kind is its module and one line
there. The pipeline (tunefuse/stages.py) iterates ``kinds()``; the report (analysis/) reads what
each search recorded on its parent run (``search_parent``, ``FUSION_TAG``), so it needs none
of the kinds' modules (nor Ray, which they import).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

# the modules that register the kinds, in the pipeline's order of stages
KIND_MODULES = ("search.grid", "search.weights")
# on a search's parent run: "candidates" when its finished trials may join a fusion, "none"
# when not; runs recorded before the tag were all candidates
FUSION_TAG = "fusion"
NOT_SEARCHES = ("trial", "fusion")  # the other values of the `kind` tag: a trial, a report


@dataclass(frozen=True)
class StageRun:
    """What a pipeline stage of a kind runs with: the pipeline's options, its workspace, MLflow
    client and state, the stage's experiment name and model, the profile, whether the
    stage continues an earlier run of it (--resume), and the pipeline's run context
    (search/context.py), which the stage's searches take (``run_search(..., context)``)."""

    options: object
    ws: object
    client: object
    state: dict
    name: str
    model: str | None
    profile: object
    resume: bool
    context: object = None


@dataclass(frozen=True)
class SearchKind:
    """A kind of search. ``stages(pipeline, models, options)``: the (experiment name, model)
    of each stage it adds to the pipeline named ``pipeline`` over ``models``; ``run_stage``
    runs one, returning its exit code."""

    name: str
    stages: Callable[[str, list[str], object], list[tuple[str, str | None]]]
    run_stage: Callable[[StageRun], int]
    fuses: bool = True  # its finished trials are fusion candidates
    # its stage's share of a pipeline's time budget, against a grid stage's 1 (search/budget.py)
    budget_share: float = 1.0


_KINDS: dict[str, SearchKind] = {}


def register_kind(kind: SearchKind) -> SearchKind:
    """Register ``kind`` (from its module, at import); a kind of that name from another file
    raises. The same file may register it twice: run as a program (``python -m search.grid``
    is module ``__main__``) and imported by name."""
    taken = _KINDS.get(kind.name)
    if kind.name in (*NOT_SEARCHES, "report") or (
            taken is not None and inspect.getfile(taken.run_stage) !=
            inspect.getfile(kind.run_stage)):
        raise ValueError(f"search kind {kind.name!r} is already taken")
    _KINDS[kind.name] = kind
    return kind


def kinds() -> list[SearchKind]:
    """Every kind, in KIND_MODULES' order (their modules imported here; a kind registered
    by a module not listed comes last)."""
    for module in KIND_MODULES:
        importlib.import_module(module)

    def place(k: SearchKind) -> int:
        module = k.run_stage.__module__
        return KIND_MODULES.index(module) if module in KIND_MODULES else len(KIND_MODULES)

    return sorted(_KINDS.values(), key=place)


def kind(name: str) -> SearchKind:
    for k in kinds():
        if k.name == name:
            return k
    raise ValueError(f"unknown search kind {name!r}")


def search_parent(tags: dict) -> bool:
    """Whether a run with these tags is the parent run of a search (of any kind)."""
    return bool(tags.get("kind")) and tags["kind"] not in NOT_SEARCHES \
        and "mlflow.parentRunId" not in tags


def fusion_candidates(tags: dict) -> bool:
    """Whether the finished trials of the search whose parent run has these tags may join a
    fusion (its kind said so when it recorded the parent)."""
    return search_parent(tags) and tags.get(FUSION_TAG, "candidates") != "none"
