"""The data a run used, as MLflow dataset inputs: the split's train, val and test sets on the
parent run of a search and on every trial run (the runs table's Dataset column, and a filter).
"""

from __future__ import annotations

import json
import pickle

import pytest
from mlflow.tracking import MlflowClient

from search.records import DATASET_PARTS, log_datasets, split_datasets
from trainables import data

NAMES = ["fashion-mnist-train", "fashion-mnist-val", "fashion-mnist-test"]
CONTEXTS = {"fashion-mnist-train": "training", "fashion-mnist-val": "validation",
            "fashion-mnist-test": "test"}


def inputs_of(client: MlflowClient, run_id: str) -> dict[str, tuple]:
    """name -> (digest, context, source, profile) of a run's dataset inputs."""
    out = {}
    for d in client.get_run(run_id).inputs.dataset_inputs:
        tags = {t.key: t.value for t in d.tags}
        out[d.dataset.name] = (d.dataset.digest, tags.get("mlflow.data.context"),
                               json.loads(d.dataset.source), json.loads(d.dataset.profile))
    return out


@pytest.fixture
def split(small_set):
    return data.load_split(small_set, 300, seed=0)


def test_split_datasets_are_logged_as_run_inputs(split, tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("inputs")
    run_id = client.create_run(experiment_id).info.run_id
    datasets = split_datasets(split)
    assert pickle.loads(pickle.dumps(datasets)) == datasets  # plain data: Tune pickles it
    assert log_datasets(client, run_id, datasets)
    got = inputs_of(client, run_id)
    assert sorted(got) == sorted(NAMES)
    for part, name, context in DATASET_PARTS:
        digest, ctx, source, profile = got[name]
        assert ctx == context == CONTEXTS[name]
        assert len(digest) == 16 and int(digest, 16) >= 0
        assert source == {"uri": split.source}
        assert profile["num_images"] == len(getattr(split, f"y_{part}"))
        assert profile["class_histogram"] == split.histogram(part).tolist()
        assert profile["data_fingerprint"] == split.fingerprint
    assert len({d for d, *_ in got.values()}) == 3
    assert got["fashion-mnist-train"][3]["num_images"] == 270  # 9:1 of 300
    # once per run: a resumed run that has them gets no second set
    assert not log_datasets(client, run_id, datasets)
    assert len(client.get_run(run_id).inputs.dataset_inputs) == 3
    # the same data, the same digests; other data, others
    again = split_datasets(data.load_split(split.source, 300, seed=0))
    other = split_datasets(data.load_split(split.source, 300, seed=1))
    assert [d["digest"] for d in again] == [d["digest"] for d in datasets]
    assert not {d["digest"] for d in other} & {d["digest"] for d in datasets}
    # which data a run used is a filter
    plain = client.create_run(experiment_id).info.run_id
    found = client.search_runs([experiment_id], "dataset.name = 'fashion-mnist-val' and "
                               f"dataset.digest = '{got['fashion-mnist-val'][0]}'")
    assert [r.info.run_id for r in found] == [run_id] and plain != run_id


def test_a_run_without_datasets_to_log_is_left_alone(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("inputs")).info.run_id
    assert not log_datasets(client, run_id, None) and not log_datasets(client, run_id, [])
    assert client.get_run(run_id).inputs.dataset_inputs == []


def test_the_smoke_pipeline_runs_carry_their_datasets(smoke_pipeline):
    """The parent run and every trial run of smoke-grid-cnn show train, val and test, with
    the digests of one split (the parent's data_fingerprint)."""
    client = MlflowClient(f"sqlite:///{smoke_pipeline.ws / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke-grid-cnn")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get("kind") != "trial"]
    trials = [r for r in runs if r.data.tags.get("kind") == "trial"]
    assert trials
    want = inputs_of(client, parent.info.run_id)
    assert sorted(want) == sorted(NAMES)
    for name, (_, context, _, profile) in want.items():
        assert context == CONTEXTS[name]
        assert profile["data_fingerprint"] == parent.data.params["data_fingerprint"]
    for t in trials:
        assert inputs_of(client, t.info.run_id) == want, t.info.run_name
