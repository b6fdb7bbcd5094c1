"""The class-weight search's space and what it reads back: the classes each space searches,
the points it starts from (the seed's weights and the uniform ones), the space Tune samples, and
at its end the best / seed / uniform comparison, from the trials' MLflow runs
(search/weights.py runs the search).
"""

from __future__ import annotations

from types import MappingProxyType

from ray import tune

from search.study import storage_url
from search.workspace import Workspace
from trainables.config import HARD_CLASSES, SEED_CLASS_WEIGHTS
from trainables.data import NUM_CLASSES

SPACES = MappingProxyType({"full": tuple(range(NUM_CLASSES)), "hard-pairs": HARD_CLASSES})
UNIFORM = (1.0,) * NUM_CLASSES
OBJECTIVES = ("val_acc", "hard_acc")  # hard_acc: mean val accuracy of classes 0, 2, 4, 6


def starting_points(space: str) -> dict[str, dict[str, float]]:
    """The seed's and the uniform vector, restricted to the searched classes."""
    classes = SPACES[space]
    return {"seed": {f"w{c}": SEED_CLASS_WEIGHTS[c] for c in classes},
            "uniform": {f"w{c}": UNIFORM[c] for c in classes}}


def search_space(space: str, low: float, high: float) -> dict:
    """The one place the weight space is defined: searched classes uniform in [low, high],
    the others fixed at 1.0."""
    searched = SPACES[space]
    return {f"w{c}": tune.uniform(low, high) if c in searched else 1.0
            for c in range(NUM_CLASSES)}


def comparison(client, parent_id: str, experiment_id: str, space: str, metric: str) -> dict:
    """Best / seed / uniform trials: their weights and, at each one's best epoch, val_acc,
    hard_acc and the accuracy of each hard class. Read back from the MLflow child runs."""
    runs = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'",
                              max_results=10_000)
    scored = [r for r in runs if f"best_{metric}" in r.data.metrics]
    if not scored:
        return {}
    rows = {"best": max(scored, key=lambda r: r.data.metrics[f"best_{metric}"])}
    for label, point in starting_points(space).items():
        for r in scored:
            if all(abs(float(r.data.params.get(k, "nan")) - v) < 1e-9
                   for k, v in point.items()):
                rows[label] = r
                break
    keys = ["val_acc", "hard_acc", *(f"val_acc_{c}" for c in HARD_CLASSES)]
    return {label: {"run_id": r.info.run_id,
                    "weights": [float(r.data.params[f"w{c}"]) for c in range(NUM_CLASSES)],
                    **{k: r.data.metrics.get(f"best_{k}") for k in keys}}
            for label, r in rows.items()}


def format_comparison(table: dict) -> str:
    cols = ["val_acc", "hard_acc", *(f"val_acc_{c}" for c in HARD_CLASSES)]
    head = ["", *cols, "weights"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in table.items():
        cells = [f"{row[k]:.4f}" if row[k] is not None else "n/a" for k in cols]
        weights = "[" + ", ".join(f"{w:.2f}" for w in row["weights"]) + "]"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {weights} |")
    return "\n".join(lines)


def report(client, parent_id: str, ws: Workspace, name: str, space: str, metric: str) -> None:
    """The end of a weights search: best / seed / uniform weights, printed and recorded."""
    state = ws.load_state(name) or {}
    table = comparison(client, parent_id, state.get("experiment_id"), space, metric)
    if not table:
        return
    text = format_comparison(table)
    print(f"\nbest / seed / uniform weights (validation, at each trial's best epoch by "
          f"{metric}):\n{text}")
    best = table["best"]
    for c, w in enumerate(best["weights"]):
        client.log_metric(parent_id, f"best_w{c}", w)
    client.set_tag(parent_id, "best.weights", str([round(w, 4) for w in best["weights"]]))
    client.log_text(parent_id, text + "\n", "weights_comparison.md")
    client.log_dict(parent_id, table, "weights_comparison.json")
    print(f"Optuna study:   optuna-dashboard {storage_url(ws)}   (study {name!r})")
