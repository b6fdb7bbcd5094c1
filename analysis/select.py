"""Candidate members from the MLflow store, ranked by validation accuracy; the test set plays no
part here (docs/usage.md, "Fusion and the report": the test set chooses nothing).

A candidate is a finished trial run (tag ``kind=trial``) of a grid or weights experiment with a
best checkpoint artifact; its score is the validation accuracy of that checkpoint's epoch
(``best_val_acc``, logged by search/lineage.py). Fusion needs one validation set, so candidates
are grouped by the data they were trained and validated on (the parent run's fingerprint) and
only the group of the best candidate is used.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from search.kinds import fusion_candidates, search_parent
from search.profiles import PROFILES
from trainables.trunk import Place, place, place_of_run


class SelectionError(Exception):
    """No usable candidates; one line for the user."""


@dataclass(frozen=True)
class Candidate:
    run_id: str
    experiment: str
    kind: str  # the parent's: grid or weights
    model: str
    val_acc: float
    epoch: int
    checkpoint: str  # artifact path inside the run
    fingerprint: str
    train_size: int
    seed: int
    params: dict = field(default_factory=dict, compare=False)
    place: Place | None = field(default=None, compare=False)  # None: asked from its params

    @property
    def label(self) -> str:
        p = self.params
        if self.kind == "weights":
            return f"{self.model} weighted ({self.experiment}, {self.run_id[:6]})"
        return f"{self.model} b{p.get('batch_size')} e{p.get('epochs')}"


@dataclass
class Selection:
    """The candidates a report fuses, chosen on validation, and the data they were scored on
    (analysis/report.py ``select``)."""

    ws: object  # the workspace (search/workspace.py)
    client: object
    names: list[str] | None  # the experiments asked for (None: all)
    group: list[Candidate]  # the candidates on the best one's data, ranked
    others: list[Candidate]  # those trained on other data, left out
    members: list[Candidate]
    weights: list[float] | None  # --weights, for a method that takes them
    split: object


def search_experiments(client, names: list[str] | None = None) -> list:
    """The named experiments (each must exist), or every experiment holding a grid or weights
    search."""
    if names:
        found = []
        for name in names:
            exp = client.get_experiment_by_name(name)
            if exp is None:
                known = ", ".join(e.name for e in search_experiments(client)) or "none"
                raise SelectionError(f"no experiment named {name!r} in the tracking store "
                                     f"(searches there: {known}); check --experiments")
            found.append(exp)
        return found
    out = []
    for exp in client.search_experiments():
        parents = client.search_runs([exp.experiment_id], "tags.kind != 'trial'",
                                     max_results=50)
        if any(search_parent(r.data.tags) for r in parents):
            out.append(exp)
    return out


def gather(client, experiments: list[str] | None = None) -> list[Candidate]:
    """Every finished trial with a best checkpoint, from the given (or all) search experiments."""
    out = []
    for exp in search_experiments(client, experiments):
        runs = client.search_runs([exp.experiment_id], max_results=50_000)
        parents = {r.info.run_id: r for r in runs if fusion_candidates(r.data.tags)}
        for r in runs:
            tags = r.data.tags
            parent = parents.get(tags.get("mlflow.parentRunId", ""))
            if tags.get("kind") != "trial" or parent is None or r.info.status != "FINISHED":
                continue
            if "best_checkpoint" not in tags or "best_val_acc" not in tags:
                continue
            pp = parent.data.params
            out.append(Candidate(
                run_id=r.info.run_id, experiment=exp.name, kind=parent.data.tags["kind"],
                model=r.data.params.get("model", "?"), val_acc=float(tags["best_val_acc"]),
                epoch=int(tags.get("best_epoch", 0)), checkpoint=tags["best_checkpoint"],
                fingerprint=pp.get("data_fingerprint", ""),
                train_size=_train_size(parent), seed=int(pp.get("seed", 0)),
                params=dict(r.data.params), place=place_of_run(tags, r.data.params)))
    return out


def _train_size(parent) -> int:
    """Images of train + val the search used (0: all); older runs only name their profile."""
    if "train_size" in parent.data.params:
        return int(parent.data.params["train_size"])
    profile = PROFILES.get(parent.data.tags.get("profile", ""))
    return (profile.train_size or 0) if profile else 0


def rank(candidates: list[Candidate]) -> list[Candidate]:
    """Best validation accuracy first; ties broken by experiment and config (then run id), so
    the same search run again ranks its trials in the same order (run ids are random)."""
    return sorted(candidates, key=lambda c: (-c.val_acc, c.experiment,
                                             sorted(c.params.items()), c.run_id))


def same_data(candidates: list[Candidate]) -> tuple[list[Candidate], list[Candidate]]:
    """(the candidates sharing the best one's data, the others)."""
    ranked = rank(candidates)
    if not ranked:
        return [], []
    fp = ranked[0].fingerprint
    return [c for c in ranked if c.fingerprint == fp], [c for c in ranked if c.fingerprint != fp]


def distinct(candidates: list[Candidate]) -> list[Candidate]:
    """The candidates, ranked, less those whose checkpoint holds another's weights.

    Trials that differ only in their length (or, for the warm-up, in SGD-phase settings)
    share their first epochs (trainables/trunk.py, as each trial's run recorded it), so when a
    trial's best epoch falls among them, its kept checkpoint has the same weights as a
    sibling's kept at that epoch; fusing both would count one model twice.
    """
    seen, out = set(), []
    for c in rank(candidates):
        where = c.place or place(c.params)
        if 0 < c.epoch <= where.shared:
            key = (c.fingerprint, c.epoch, where.group)
            if key in seen:
                continue
            seen.add(key)
        out.append(c)
    return out


def top_k(candidates: list[Candidate], k: int, per_model_cap: int | None = None
          ) -> list[Candidate]:
    """The k best by validation accuracy, at most ``per_model_cap`` of any one architecture."""
    if k < 1:
        raise SelectionError(f"--top-k must be at least 1, got {k}")
    if per_model_cap is not None and per_model_cap < 1:
        raise SelectionError(f"--per-model-cap must be at least 1, got {per_model_cap}")
    chosen, per_model = [], Counter()
    for c in rank(candidates):
        if per_model_cap is not None and per_model[c.model] >= per_model_cap:
            continue
        chosen.append(c)
        per_model[c.model] += 1
        if len(chosen) == k:
            break
    return chosen
