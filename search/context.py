"""What a search runs with: its command's run context, its kind's ``Search``, and what it holds
once its checks passed (``Opened``).

A command makes one ``RunContext`` where it starts and passes it down: a search of its own
(``python -m search.grid``) makes it in ``run_search`` (search/driver.py), the pipeline makes one
for all its stages (tunefuse/stages.py), which a kind's stage hands on (``StageRun.context``,
search/kinds.py). Nothing of it lives in a module: two commands in one process (the tests)
share nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from search.clock import Clock
from search.offline import Offline
from search.workspace import Workspace
from trainables.cli import NORMAL
from trainables.trainable import METRIC


@dataclass(frozen=True)
class Whole:
    """A command of several searches (a pipeline) under --time-budget, for the refusal of a
    budget that fits none of a stage's plans: its name ("pipeline smoke"), its budget and the
    smallest budget it needs for a stage's need (seconds -> seconds: the stage's share of what
    is left, the time spent before it and the report's reserve; tunefuse/stages.py). A later
    stage that nothing fits is skipped, not refused: the pipeline goes on to its report."""

    what: str
    budget: float
    need: Callable[[float], float]
    first: bool = True  # the first stage this run of it starts: its refusal is the command's


@dataclass
class RunContext:
    """One command's run: its verbosity (-q, -v: what the progress view shows), whether its
    searches end with where to look (a pipeline prints that once, at its end), the dashboard
    of the Ray cluster it connected to (search/cluster.py start_ray: the stages of a pipeline
    share one cluster), and the MLflow stores that stopped answering (search/offline.py)."""

    level: int = NORMAL
    footers: bool = True
    dashboard: str | None = None
    offline: Offline = field(default_factory=Offline)
    # when the command's (or the pipeline stage's) time budget runs out (time.time()), and
    # that budget in seconds; None: no budget (search/budget.py)
    deadline: float | None = None
    budget: float | None = None
    grace: float = 0.0  # how long past the deadline running trials may finish (search/clock.py)
    # a pipeline's stage: the command it is a stage of, under its own --time-budget (Whole)
    whole: Whole | None = None
    refused: Exception | None = None  # the budget a search refused (search/budget.py NothingFits)
    # the clock of the search running now, kept while its trials run (search/clock.py)
    clock: Clock = field(default_factory=Clock)


@dataclass
class Search:
    """What an experiment kind hands to run_search."""

    name: str
    kind: str  # "grid", "weights"
    param_space: dict
    scheduler: object
    num_samples: int = 1  # trials in all, over every part of the experiment
    params: dict | None = None  # the search's arguments, for the parent run
    tags: dict | None = None
    metric: str = METRIC  # what the scheduler, the searcher and checkpoint keeping maximise
    columns: tuple[str, ...] = ("batch_size", "epochs")  # config keys in the trial table
    # make_searcher(ws, first) -> a Tune searcher; first is False for a later part, which
    # must not repeat the starting points. None: Tune's grid/random variant generator.
    make_searcher: Callable[[Workspace, bool], object] | None = None
    # trials_done(ws) -> trials the experiment has run so far, over all its parts; when it
    # is short of num_samples after a resumed part ends, a new part runs the rest.
    trials_done: Callable[[Workspace], int] | None = None
    # what a time budget (search/budget.py) may cut: the fewest samples the search takes, and
    # whether its width is given (--width, a class-weight study's grid winner)
    least_samples: int = 1
    width_fixed: bool = False
    # report(results, client, parent_id, ws): extra lines and records at the end
    report: Callable | None = None
    resources: tuple[float, float] | None = None  # (CPUs, GPUs) a trial takes, once resolved
    fuses: bool = True  # its finished trials are fusion candidates (search/kinds.py)


@dataclass
class Opened:
    """What a search has once its checks passed (search/driver.py ``_open``): its workspace,
    saved state (None: a new search), MLflow client and its command's run context; then its
    MLflow experiment, the hardware its trials run on, and the throughput measured here."""

    ws: Workspace
    state: dict | None
    client: object
    context: RunContext
    experiment_id: str = ""
    hardware: str = ""
    # model (search/throughput.py model_of) -> what a time budget's short measurement found,
    # for the plan printed after it (search/budget.py)
    measured: dict = field(default_factory=dict)

    @property
    def dashboard(self) -> str | None:
        return self.context.dashboard

    @property
    def offline(self) -> Offline:
        return self.context.offline
