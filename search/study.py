"""The Optuna side of the class-weight search: a study that outlives Ray and its driver.

Where the study lives, how its sampling is seeded and how ASHA's stops reach TPE: search/weights.py
says, for the search as a whole; this module is the searcher and the sampler that do it.
"""

from __future__ import annotations

import logging

import optuna
from optuna.samplers import TPESampler
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from search.workspace import Workspace
from trainables import failpoints

STORAGE_FILE = "optuna.db"


class SeededTPESampler(TPESampler):
    """TPE whose randomness for trial n comes from (seed, n) alone.

    A plain seeded sampler carries one random stream through the study, so a study resumed in
    a new process (a fresh sampler) would offer different points than the uninterrupted one;
    re-seeding per trial makes the sequence depend on the study's history only. The trial is
    counted among the trials that ran, not by its number: a trial asked for and lost with a
    killed driver (marked ``lost``) takes a number, and must not shift what later trials get.
    """

    def __init__(self, seed: int, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.base_seed = seed

    def before_trial(self, study, trial) -> None:
        ran = sum(1 for t in study.get_trials(deepcopy=False)
                  if t.number < trial.number and "lost" not in t.user_attrs)
        seed = (self.base_seed * 1_000_003 + ran * 7_919 + 1) % 2**32
        self._rng.rng.seed(seed)
        self._random_sampler._rng.rng.seed(seed)
        super().before_trial(study, trial)


class DurableOptunaSearch(OptunaSearch):
    """OptunaSearch over a study in a persistent storage, with two corrections.

    - A trial that the scheduler stopped before its last epoch is told as PRUNED (TPE ranks
      it by its last reported value) rather than COMPLETE with a partial-run value.
    - After Tune restores the searcher from its snapshot, trials the study still holds as
      RUNNING but the snapshot does not know (asked after it, then lost with the driver)
      are marked FAIL and ``lost``, so that TPE's constant liar does not count them for ever;
      a lost trial that held one of the starting points gives it back to the queue, so the
      point is still tried.
    """

    def __init__(self, *, epochs: int, **kwargs):
        super().__init__(**kwargs)
        self.epochs = epochs

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False):
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if error or not result or int(result.get("epoch", 0)) >= self.epochs:
            return super().on_trial_complete(trial_id, result, error)
        try:
            self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
        except Exception as e:  # e.g. told before an interruption
            logging.getLogger(__name__).warning("optuna: %s", e)
        self._completed_trials.add(trial_id)

    def suggest(self, trial_id: str):
        params = super().suggest(trial_id)
        # asked of the study, not yet in Tune's saved searcher (docs/crash-windows.md)
        failpoints.reach("optuna-asked", trial=trial_id,
                         number=self._ot_trials[trial_id].number)
        return params

    def restore(self, checkpoint_path: str):
        super().restore(checkpoint_path)
        forget_lost(self._ot_study, {t.number for t in self._ot_trials.values()})


def forget_lost(study: optuna.Study, known: set[int]) -> int:
    """Mark the study's RUNNING trials that Tune does not know (``known``: their numbers) FAIL
    and ``lost``; a starting point one held goes back to the queue, in its order. Returns how
    many were lost."""
    lost = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.number not in known]
    for t in lost:
        storage = study._storage
        storage.set_trial_user_attr(t._trial_id, "lost", "asked before an interruption, "
                                    "never run")
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    for t in lost:
        if "fixed_params" in t.system_attrs:
            study.enqueue_trial(t.system_attrs["fixed_params"])
    return len(lost)


def started_before(ws: Workspace, name: str) -> bool:
    """Whether a study of this name exists with trials although Tune saved no state to
    restore: a search killed before Tune first saved it, now started afresh. Its trials asked
    then are lost (forget_lost), and its starting points were queued then: not again."""
    study = existing_study(ws, name)
    if study is None or not study.get_trials(deepcopy=False):
        return False
    forget_lost(study, set())
    return True


def storage_url(ws: Workspace) -> str:
    return f"sqlite:///{ws.root / STORAGE_FILE}"


def study_trials(ws: Workspace, name: str) -> list:
    """The study's trials that ran (not the ones lost to an interruption); none without a
    study."""
    study = existing_study(ws, name)
    if study is None:
        return []
    return [t for t in study.get_trials(deepcopy=False) if "lost" not in t.user_attrs]


def existing_study(ws: Workspace, name: str) -> optuna.Study | None:
    """The study of this name, if the workspace has one. Looking it up never creates the
    study file: a refused command leaves no trace."""
    if not (ws.root / STORAGE_FILE).exists():
        return None
    try:
        return optuna.load_study(study_name=name, storage=storage_url(ws))
    except KeyError:
        return None
