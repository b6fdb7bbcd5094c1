"""Analysis: fusion maths, selection on validation only, the report end to end."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import blocked_ray, exit_code
from conftest import run_module as run
from sklearn.metrics import average_precision_score, roc_auc_score

from analysis import figures, fusion
from analysis.methods.greedy import greedy_weights
from analysis.methods.nll import MIN_WEIGHT, nll_weights
from analysis.select import Candidate, SelectionError, distinct, same_data, top_k

ROOT = Path(__file__).resolve().parents[1]


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def member(rng, y, skill, n_classes=10):
    """Probabilities that favour the true class by ``skill`` logits (plus noise)."""
    z = rng.normal(size=(len(y), n_classes))
    z[np.arange(len(y)), y] += skill
    return softmax(z)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 2000)
    return rng, y


# --- fusion maths -----------------------------------------------------------------------------

def test_identical_members_fuse_to_that_member(data):
    rng, y = data
    p = member(rng, y, 2.0)
    for w in ([1, 1, 1], [0.2, 0.5, 0.3], [5, 0, 1]):
        assert np.array_equal(fusion.fuse([p, p, p], w), p) or \
            np.abs(fusion.fuse([p, p, p], w) - p).max() < 1e-15
    assert np.allclose(fusion.apply_temperature(p, 1.0), p)


def test_weights_and_probabilities_sum_to_one(data):
    rng, y = data
    ps = [member(rng, y, s) for s in (0.5, 1.5, 2.5, 1.0)]
    assert fusion.normalise([3, 1, 0, 4]).sum() == pytest.approx(1.0)
    w = greedy_weights(ps, y)
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    for weights in ([1, 1, 1, 1], [0.1, 0.2, 0.3, 0.4], w):
        assert np.allclose(fusion.fuse(ps, weights).sum(1), 1.0)
    for t in (0.3, 1.0, 4.0):
        assert np.allclose(fusion.apply_temperature(ps[0], t).sum(1), 1.0)
    with pytest.raises(ValueError, match="non-negative"):
        fusion.fuse(ps, [1, -1, 0, 0])
    with pytest.raises(ValueError, match="4 members"):
        fusion.fuse(ps, [1, 1])


@pytest.mark.parametrize("seed", range(5))
def test_greedy_never_worse_on_validation_than_the_best_member(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, 500)
    ps = [member(rng, y, s) for s in rng.uniform(0.2, 2.0, 6)]
    w = greedy_weights(ps, y)
    best = max(fusion.accuracy(p, y) for p in ps)
    assert fusion.accuracy(fusion.fuse(ps, w), y) >= best


@pytest.mark.parametrize("seed", range(3))
def test_nll_weights_minimise_the_fused_validation_nll(seed):
    """The EM weights are the optimum of the fused validation log-loss: lower than uniform,
    than every member alone, than greedy's; at the optimum every kept member's gradient
    (the mean of its label probability over the mixture's) is 1; members that add nothing
    (a copy's weight is split, a useless one dropped) weigh nothing, the rest at least
    MIN_WEIGHT."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, 1500)
    ps = [member(rng, y, s) for s in rng.uniform(0.5, 3.0, 5)]
    useless = softmax(rng.normal(size=(len(y), 10)) * 4)  # confident and wrong at chance
    pool = [*ps, useless]
    w = nll_weights(pool, y)
    assert w.sum() == pytest.approx(1.0) and w[-1] == 0
    kept = w > 0
    assert (w[kept] >= MIN_WEIGHT).all()
    fused_nll = fusion.nll(fusion.fuse(pool, w), y)
    assert fused_nll < fusion.nll(fusion.fuse(pool, np.ones(len(pool))), y)
    assert fused_nll < min(fusion.nll(p, y) for p in pool)
    assert fused_nll <= fusion.nll(fusion.fuse(pool, greedy_weights(pool, y)), y)
    right = np.stack([p[np.arange(len(y)), y] for p in pool])
    gradient = (right / (w @ right)).mean(1)
    assert np.allclose(gradient[kept], 1.0, atol=1e-3)
    assert gradient[-1] < 1.0  # the useless member: any weight on it raises the NLL
    # moving any weight off the optimum, within the simplex, costs NLL
    for i, j in ((0, 1), (2, 4), (1, 3)):
        if kept[i] and kept[j]:
            for eps in (0.005, -0.005):
                v = w.copy()
                v[i] += eps
                v[j] -= eps
                assert fusion.nll(fusion.fuse(pool, v), y) >= fused_nll - 1e-12
    # a member twice: the two copies together weigh what the one did
    twice = nll_weights([*ps, ps[0]], y)
    once = nll_weights(ps, y)
    assert twice[0] + twice[-1] == pytest.approx(once[0], abs=2e-3)
    assert np.allclose(twice[1:-1], once[1:], atol=2e-3)


def test_temperature_fit_recovers_a_known_temperature():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(20_000, 10)) * 2
    truth = softmax(z)
    y = np.array([rng.choice(10, p=p) for p in truth])
    overconfident = softmax(z * 2.5)  # the true probabilities sharpened by T = 1 / 2.5
    t = fusion.fit_temperature(overconfident, y)
    assert t == pytest.approx(2.5, rel=0.05)
    assert fusion.nll(fusion.apply_temperature(overconfident, t), y) < \
        fusion.nll(overconfident, y)
    assert fusion.expected_calibration_error(truth, y) < 0.02  # calibrated by construction
    assert fusion.expected_calibration_error(overconfident, y) > 0.1


def test_curves_and_scores_match_scikit_learn(data):
    rng, y = data
    p = member(rng, y, 1.0)
    p[:, 3] = np.round(p[:, 3], 2)  # ties
    for c in range(10):
        _, _, auc = figures.roc_curve(p[:, c], y == c)
        _, _, ap = figures.pr_curve(p[:, c], y == c)
        assert auc == pytest.approx(roc_auc_score(y == c, p[:, c]), abs=1e-12)
        assert ap == pytest.approx(average_precision_score(y == c, p[:, c]), abs=1e-12)
    from sklearn.metrics import precision_recall_fscore_support

    pr, rc, f1, _ = precision_recall_fscore_support(y, p.argmax(1), labels=range(10),
                                                    zero_division=0)
    ours = fusion.per_class(p, y)
    assert np.allclose(ours["precision"], pr) and np.allclose(ours["recall"], rc)
    assert np.allclose(ours["f1"], f1)


def test_bootstrap_interval(data):
    rng, y = data
    a, b = member(rng, y, 2.0), member(rng, y, 0.5)
    diff, lo, hi = fusion.bootstrap_difference(a, b, y, n=500)
    assert diff == pytest.approx(fusion.accuracy(a, y) - fusion.accuracy(b, y))
    assert lo < diff < hi and lo > 0
    assert fusion.bootstrap_difference(a, a, y, n=200) == (0.0, 0.0, 0.0)
    # the same for the two calibrations: ECE(a) - ECE(b); a calibrated member, and a sharpened
    # copy of it, far worse
    a = fusion.apply_temperature(a, fusion.fit_temperature(a, y))
    sharp = fusion.apply_temperature(a, 0.4)
    diff, lo, hi = fusion.bootstrap_ece_difference(sharp, a, y, n=500)
    assert diff == pytest.approx(fusion.expected_calibration_error(sharp, y) -
                                 fusion.expected_calibration_error(a, y))
    assert 0 < lo < diff < hi
    assert fusion.bootstrap_ece_difference(a, a, y, n=200) == (0.0, 0.0, 0.0)


# --- the test set never chooses ---------------------------------------------------------------

def cand(run_id, model, val_acc, fp="f"):
    return Candidate(run_id=run_id, experiment="grid", kind="grid", model=model,
                     val_acc=val_acc, epoch=3, checkpoint="best_checkpoint/checkpoint.pt",
                     fingerprint=fp, train_size=1000, seed=0)


def test_selection_is_by_validation_with_a_cap_and_one_data_set():
    cs = [cand("a", "cnn", 0.90), cand("b", "cnn", 0.89), cand("c", "resnet18", 0.85),
          cand("d", "cnn", 0.88), cand("e", "inception", 0.80), cand("z", "cnn", 0.95, "g")]
    group, others = same_data(cs)
    assert [c.run_id for c in others] == ["a", "b", "d", "c", "e"] and group[0].run_id == "z"
    group, others = same_data(cs[:-1])
    assert [c.run_id for c in top_k(group, 3)] == ["a", "b", "d"]
    assert [c.run_id for c in top_k(group, 3, per_model_cap=1)] == ["a", "c", "e"]
    with pytest.raises(SelectionError):
        top_k(group, 0)


def test_a_shared_warmup_checkpoint_is_fused_once():
    """Trials that differ only in SGD settings share the warm-up: kept at a warm-up epoch, their
    checkpoints are one model; kept after it, they are different models."""
    base = {"model": "cnn", "batch_size": "64", "warmup_epochs": "1", "augment": "offline",
            "trunk_cache": "/ws/warmups", "num_threads": "1"}

    def trial(run_id, epoch, val_acc, **params):
        return replace(cand(run_id, "cnn", val_acc), epoch=epoch,
                       params={**base, **params})

    cs = [trial("e3", 1, 0.83, epochs="3"), trial("e4", 1, 0.83, epochs="4", lr="0.02"),
          trial("b128", 1, 0.80, epochs="4", batch_size="128"),
          trial("late3", 3, 0.82, epochs="3"), trial("late4", 3, 0.82, epochs="4")]
    assert [c.run_id for c in distinct(cs)] == ["e3", "late3", "late4", "b128"]
    assert [c.run_id for c in top_k(distinct(cs), 2)] == ["e3", "late3"]


@pytest.mark.parametrize("fit", [greedy_weights, nll_weights])
def test_test_set_cannot_change_the_chosen_weights(fit):
    """Member A is better on validation, B on test: greedy and nll, fitted on validation,
    weigh A most; had the test set been used, the answer would be B."""
    rng = np.random.default_rng(3)
    y_val, y_test = rng.integers(0, 10, 800), rng.integers(0, 10, 800)
    a_val, b_val = member(rng, y_val, 3.0), member(rng, y_val, 0.3)
    a_test, b_test = member(rng, y_test, 0.3), member(rng, y_test, 3.0)
    w = fit([a_val, b_val], y_val)
    assert w[0] > w[1]
    assert fit([a_test, b_test], y_test)[1] > 0.5  # what test would pick
    # the temperature, too, is the one minimising validation NLL (against a fine grid over
    # fit_temperature's range), far from the one the test set would pick
    t = fusion.fit_temperature(a_val, y_val)
    grid = np.geomspace(0.05, 20.0, 1001)  # steps of 0.6%
    grid_nll = [fusion.nll(fusion.apply_temperature(a_val, g), y_val) for g in grid]
    assert t == pytest.approx(grid[np.argmin(grid_nll)], rel=0.01)
    assert fusion.nll(fusion.apply_temperature(a_val, t), y_val) <= min(grid_nll) + 1e-12
    assert fusion.fit_temperature(a_test, y_test) > 3 * t


def test_the_fused_output_gets_its_own_temperature_fitted_on_validation():
    """Four members, each calibrated on its own, that disagree: their average is right more
    often than any of them and under-confident. The fused output's temperature, fitted on
    validation, sharpens it (T < 1), changes no label, and brings its test ECE from far above
    its members' to theirs and its test NLL below every member's."""
    from analysis.summary import fuse_members

    rng = np.random.default_rng(5)
    n = 3000
    signal = rng.normal(size=(2 * n, 10)) * 3
    y = np.array([rng.choice(10, p=p) for p in softmax(signal)])
    y_val, y_test = y[:n], y[n:]
    probs, pool = {}, []
    for k in range(4):
        p = softmax(signal + rng.normal(size=signal.shape) * 2.0)
        p = fusion.apply_temperature(p, fusion.fit_temperature(p[:n], y_val))
        probs[f"m{k}"] = (p[:n], p[n:])
        pool.append(Candidate(f"m{k}", "grid-cnn", "grid", "cnn", 0.5, 1, "c.pt", "f", n, 0))
    fused = fuse_members(pool, pool, None, probs, y_val, "uniform", calibrate=False)
    plain = fusion.fuse([probs[c.run_id][1] for c in pool], [0.25] * 4)
    assert fused.fused_temperature < 0.8
    assert (fused.test.argmax(1) == plain.argmax(1)).all()
    assert fused.fused_temperature == fusion.fit_temperature(
        fusion.fuse([probs[c.run_id][0] for c in pool], [0.25] * 4), y_val)
    members_ece = [fusion.expected_calibration_error(probs[k][1], y_test) for k in probs]
    members_nll = [fusion.nll(probs[k][1], y_test) for k in probs]
    assert fusion.expected_calibration_error(plain, y_test) > 4 * max(members_ece)
    assert fusion.expected_calibration_error(fused.test, y_test) < 1.5 * max(members_ece)
    assert fusion.nll(fused.test, y_test) < min(members_nll)


# --- the report end to end --------------------------------------------------------------------

@pytest.fixture
def searched(smoke_pipeline):
    """The smoke pipeline's workspace: grids of the three models and a weights search."""
    return smoke_pipeline.ws


GREEDY = ("--top-k", "3", "--method", "greedy", "--calibrate")


@pytest.fixture(scope="module")
def greedy_report(smoke_pipeline, tmp_path_factory) -> tuple[Path, list[str], dict, str]:
    """The report the smoke pipeline did not make, as a user runs it: greedy selection with
    temperature scaling, registered. Its pool is every candidate of the searches the
    pipeline's own (uniform) report took its members from, the CNN grid: that report left
    their probabilities in the workspace's cache, and inference of all the others (the
    Inception nets above all) would cost minutes. (workspace, arguments, summary, output)
    It runs where ``import ray`` fails: the analysis needs no Ray (docs/architecture.md)."""
    ws = smoke_pipeline.ws
    smoke = json.loads((ws / "reports" / "smoke" / "summary.json").read_text())
    searches = ",".join(sorted({m["experiment"] for m in smoke["members"]}))
    args = ["--workspace", str(ws), *GREEDY, "--experiments", searches]
    out = run("analysis.report", *args, "--name", "g",
              env=blocked_ray(tmp_path_factory.mktemp("no-ray")))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return ws, args, json.loads((ws / "reports" / "g" / "summary.json").read_text()), out.stdout


def test_report_end_to_end(greedy_report):
    import mlflow
    from mlflow.tracking import MlflowClient

    from analysis import report
    from analysis.inference import predict_probs
    from trainables import checkpoint, data

    searched, _, s, stdout = greedy_report
    assert "Model fusion (4 models)" in stdout and "90.33%" in stdout
    # what the fusion bought comes first: against its best member, with the interval, and
    # against the seed's fusion
    said = [line for line in stdout.splitlines() if line.strip()]
    assert said[0].startswith("Fusion (greedy, ") and said[0].endswith("on test"), said[:4]
    assert said[1].startswith(f"  vs its best member {s['best_member']} (")
    assert "95% interval [" in said[1]
    assert said[2].startswith("  vs the seed's model fusion (4 models) (90.33%): ")
    rep = searched / "reports" / "g"
    for f in ("summary.json", "report.md", "report.html", "roc.png", "pr.png",
              "confusion.png", "reliability.png", "grid_heatmap.png", "asha_rungs.png"):
        assert (rep / f).stat().st_size > 0, f
    html = (rep / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html and "src=\"roc" not in html
    # what the searches cost: every trial of the grids ran or was stopped, none for free
    assert "## Search cost" in (rep / "report.md").read_text() and "Search cost" in html
    cost = s["search_cost"]["total"]
    assert 0 < cost["computed_epochs"] <= cost["exhaustive_epochs"]
    assert s["fusion"]["method"] == "greedy" and sum(s["fusion"]["weights"]) == \
        pytest.approx(1.0)
    # every number recomputed from the checkpoints themselves (each model built once)
    split = data.load_split(data.SYSTEM_DIR, s["data"]["train_size"], s["data"]["seed"])
    y_val, y_test = split.y_val.numpy(), split.y_test.numpy()
    vals, tests = [], []
    for m in s["members"]:
        ckpt = checkpoint.load(m["checkpoint"])
        model = checkpoint.model_from(ckpt, m["checkpoint"])
        pv, pt = (fusion.apply_temperature(predict_probs(ckpt, x, model=model),
                                           m["temperature"]) for x in (split.x_val, split.x_test))
        assert fusion.accuracy(pv, y_val) == pytest.approx(m["val_acc"], abs=1e-9)
        assert fusion.accuracy(pt, y_test) == pytest.approx(m["test_acc"], abs=1e-9)
        assert m["val_acc"] == pytest.approx(m["recorded_val_acc"], abs=1e-6)
        vals.append(pv)
        tests.append(pt)
    w = s["fusion"]["weights"]
    assert fusion.accuracy(fusion.fuse(vals, w), y_val) == pytest.approx(s["fusion"]["val_acc"])
    assert fusion.accuracy(fusion.fuse(tests, w), y_test) == \
        pytest.approx(s["fusion"]["test_acc"])
    assert s["fusion"]["val_acc"] >= max(m["val_acc"] for m in s["members"])
    lo, hi = s["fusion"]["test_gain_interval"]
    assert lo <= s["fusion"]["test_gain"] <= hi
    d, lo, hi = s["fusion"]["test_ece_difference"]
    assert lo <= d <= hi and d == pytest.approx(
        s["fusion"]["test"]["ece"] - s["fusion"]["best_member_test"]["ece"])
    # the MLflow fusion run links its members, holds the report and the registered model
    uri = f"sqlite:///{searched / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_ = client.get_run(s["mlflow"]["run_id"])
    assert run_.data.tags["members"].split(",") == [m["run_id"] for m in s["members"]]
    assert client.get_experiment(run_.info.experiment_id).name == "fusion"
    assert {a.path for a in client.list_artifacts(run_.info.run_id, "report")} >= {
        "report/report.html", "report/summary.json", "report/roc.png"}
    # the registered version, found through this store (mlflow.set_tracking_uri would stay set,
    # in the environment too, for every later test; models:/ URIs resolve only through it)
    name, version = s["mlflow"]["model_uri"].removeprefix("models:/").split("/")
    assert client.get_model_version(name, version).run_id == run_.info.run_id
    model = mlflow.pyfunc.load_model(client.get_model_version_download_uri(name, version))
    pred = model.predict(split.x_test.numpy()[:200])
    ours = fusion.apply_temperature(fusion.fuse(tests, w), s["fusion"]["temperature"])[:200]
    assert np.allclose(pred[[f"p{c}" for c in range(10)]].to_numpy(), ours, atol=1e-5)

    # uniform over the top 2 of every search, one per architecture
    assert exit_code(report.main, "--workspace", str(searched), "--top-k", "2",
                     "--per-model-cap", "1", "--name", "u", "--no-register") == 0
    s = json.loads((searched / "reports" / "u" / "summary.json").read_text())
    models = [m["model"] for m in s["members"]]
    assert len(set(models)) == 2 and s["fusion"]["weights"] == [0.5, 0.5]


@pytest.mark.parametrize("method", ["greedy", "nll"])
def test_test_labels_change_nothing_the_report_chooses(greedy_report, monkeypatch, method):
    """The greedy (or nll) report again, same workspace, candidates and validation set, with
    the test labels a candidate it left out (or weighed least) predicts: that one is right on every
    test image, so had the test set chosen anything, it would have chosen it. The same members,
    weights and temperatures; only the test scores move.

    The labels change in the split the report loads, not in the files: other files give another
    data fingerprint, which the report refuses (tests/test_bad_input.py). The images are the
    same, so every candidate's probabilities come from the cache the first report filled."""
    import torch
    from mlflow.tracking import MlflowClient

    from analysis import report
    from analysis.inference import cached_probs
    from analysis.select import distinct, gather, same_data

    ws, args, first, _ = greedy_report
    if method != "greedy":
        args = [*args]
        args[args.index("--method") + 1] = method
        assert exit_code(report.main, *args, "--name", method, "--no-register",
                         "--bootstrap", "100") == 0
        first = json.loads((ws / "reports" / method / "summary.json").read_text())
        assert first["fusion"]["method"] == method
    weight = {m["run_id"]: m["weight"] for m in first["members"]}
    searches = args[args.index("--experiments") + 1].split(",")
    pool, _ = same_data(gather(MlflowClient(f"sqlite:///{ws / 'mlflow.db'}"), searches))
    outsider = min(distinct(pool), key=lambda c: (weight.get(c.run_id, 0.0), -c.val_acc))
    checkpoint = ws / "cache" / "checkpoints" / outsider.run_id / Path(outsider.checkpoint).name
    load_split, loaded = report.load_split, []

    def load_relabelled(*args, **kwargs):
        split = load_split(*args, **kwargs)
        _, test = cached_probs(ws / "cache" / "probs", checkpoint, split)
        y_new = test.argmax(1)
        loaded.append((split.y_test.numpy(), y_new))
        return replace(split, y_test=torch.from_numpy(y_new))

    monkeypatch.setattr(report, "load_split", load_relabelled)
    assert exit_code(report.main, *args, "--name", f"{method}-relabelled", "--no-register",
                     "--bootstrap", "100") == 0
    [(y_real, y_new)] = loaded
    assert (y_real != y_new).mean() > 0.05
    second = json.loads((ws / "reports" / f"{method}-relabelled" / "summary.json").read_text())

    def chosen(s):
        return [(m["run_id"], m["weight"], m["temperature"], m["val_acc"]) for m in s["members"]]

    assert chosen(second) == chosen(first)
    for key in ("weights", "val_acc", "best_member_run_id", "temperature"):
        assert second["fusion"][key] == first["fusion"][key], key
    assert second["fusion"]["test_acc"] != first["fusion"]["test_acc"]
    assert [m["test_acc"] for m in second["members"]] != \
        [m["test_acc"] for m in first["members"]]


@pytest.mark.parametrize("args, message", [
    (["--method", "weighted"], "needs --weights"),
    (["--method", "weighted", "--weights", "1,2"], "one per member"),
    (["--weights", "1,2,3,4"], "only for --method weighted"),
    (["--experiments", "nope"], "no experiment named"),
    (["--top-k", "0"], "at least 1"),
])
def test_bad_arguments(searched, args, message, capsys):
    from analysis import report

    assert exit_code(report.main, "--workspace", str(searched), *args, "--no-register") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_empty_workspace(tmp_path):
    out = run("analysis.report", "--workspace", str(tmp_path / "ws"), timeout=120)
    assert out.returncode == 2 and "run python -m search.grid first" in out.stderr


def test_a_wsd_trunk_checkpoint_is_fused_once():
    """Under wsd, trials that differ only in length share their stable phase: kept at an epoch
    of it (up to each one's branch epoch), their checkpoints are one model; kept in a decay,
    different models; another learning rate is another trunk."""
    base = {"model": "cnn", "batch_size": "64", "warmup_epochs": "1", "augment": "flip",
            "schedule": "wsd", "decay_fraction": "0.2", "trunk_cache": "/ws/trunks",
            "trunk_lengths": "[4, 8]", "lr": "0.01"}

    def trial(run_id, epoch, val_acc, **params):
        return replace(cand(run_id, "cnn", val_acc), epoch=epoch, params={**base, **params})

    # branch epochs: 4 epochs -> 3, 8 epochs -> 7
    cs = [trial("e8", 3, 0.85, epochs="8"), trial("e4", 3, 0.85, epochs="4"),
          trial("lr", 3, 0.84, epochs="8", lr="0.02"),
          trial("decay4", 4, 0.83, epochs="4"), trial("trunk8", 4, 0.83, epochs="8")]
    kept = [c.run_id for c in distinct(cs)]
    assert kept[0] in ("e8", "e4") and kept[1:] == ["lr", "decay4", "trunk8"]
