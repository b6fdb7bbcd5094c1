"""Extension points, used as a newcomer would: a new model family is one new file under
trainables/models/ plus one import line, and everything else picks up what its ModelCard
declares (trainables/models/registry.py): `--model` and its alias, the profiles' widths, the
default augmentation, the fast path's compile choice, the report. A search kind is one module
of search/ and one line of search/kinds.py; a fusion method one file under analysis/methods/
and one import line (analysis/methods/registry.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, need_real_data

TINY = '''"""A tiny family: a convolution, a pooling, a linear layer."""

import torch.nn as nn

from trainables.models.registry import register_model


@register_model("tiny", width=8, widths={"smoke": 6, "quick": 12}, augment="shift",
                compile_pays=True, aliases=("small",))
def tiny(width: int = 8, in_channels: int = 1, num_classes: int = 10,
         dropout: float = 0.25) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Dropout(dropout),
                         nn.Linear(width * 16, num_classes))
'''


def tree_copy(dest: Path) -> Path:
    """The checkout's files (tracked and not ignored), as a newcomer's clone has them."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def run(tree: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=tree, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_a_model_added_as_one_file_and_one_import_line(tmp_path):
    need_real_data()
    tree = tree_copy(tmp_path / "tree")
    (tree / "trainables" / "models" / "tiny.py").write_text(TINY)
    init = tree / "trainables" / "models" / "__init__.py"
    init.write_text(init.read_text() + "from trainables.models import tiny  # noqa: E402, F401\n")

    help_ = run(tree, "-m", "search.grid", "--help")
    assert "tiny" in help_.stdout and "small" in help_.stdout, help_.stdout[-2000:]
    ws = tmp_path / "ws"
    for profile in ("smoke", "quick"):  # --model by its alias; each profile's width
        out = run(tree, "-m", "search.grid", "--model", "small", "--profile", profile,
                  "--name", f"{profile}-tiny", "--train-size", "300", "--batch-sizes", "64",
                  "--epochs", "1", "--scheduler", "none", "--num-cpus", "1", "--no-dashboard",
                  "--workspace", str(ws))
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    for profile, width in (("smoke", 6), ("quick", 12)):
        exp = client.get_experiment_by_name(f"{profile}-tiny")
        (trial,) = client.search_runs([exp.experiment_id], "tags.kind = 'trial'")
        params = trial.data.params
        assert params["model"] == "tiny" and params["augment"] == "shift", params
        assert params["model_kwargs.width"] == str(width), params
    # the fast path asks the card: compiled where compiling pays (fp32 on a CPU, a training
    # set large enough, a compiler there), as for ResNet18
    fast = run(tree, "-c", "import torch; from trainables import fastpath; "
               "print(fastpath.compile_pays('tiny'), fastpath.fast_path('fp32', 'auto', "
               "torch.device('cpu'), 'auto', 'tiny', 10**6).compiled, "
               "fastpath.compiler() is not None)")
    pays, compiled, compiler = fast.stdout.split()
    assert pays == "True" and compiled == compiler, fast.stdout + fast.stderr[-2000:]
    # and the report fuses it, loading the checkpoints through the registry
    out = run(tree, "-m", "analysis.report", "--workspace", str(ws), "--name", "tiny",
              "--no-register")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((ws / "reports" / "tiny" / "summary.json").read_text())
    assert {m["model"] for m in summary["members"]} == {"tiny"}, summary["members"]


TOY = '''"""A toy search kind: the CNN, one epoch, two seeds."""

from ray import tune

from search.driver import Search, run_search
from search.kinds import SearchKind, StageRun, register_kind
from search.options import SearchOptions, base_config, for_stage, load_data


def run_stage(stage: StageRun) -> int:
    options = for_stage(SearchOptions, stage.options, name=stage.name, resume=stage.resume)
    split = load_data(options)
    base = base_config(options, stage.model, None, 0, batch_size=64, epochs=1)
    space = {**base.to_dict(), "seed": tune.grid_search([1, 2])}
    return run_search(options, Search(
        name=stage.name, kind=KIND.name, fuses=KIND.fuses, param_space=space, scheduler=None,
        params={"model": stage.model, "seed": options.seed,
                "train_size": len(split.y_train) + len(split.y_val)}), split, stage.context)


KIND = register_kind(SearchKind(
    "toy", stages=lambda pipeline, models, options: [(f"{pipeline}-toy", "cnn")],
    run_stage=run_stage))
'''


@pytest.mark.slow
def test_a_search_kind_added_as_one_module_runs_in_the_pipeline_and_reaches_the_fusion(
        tmp_path):
    need_real_data()
    tree = tree_copy(tmp_path / "tree")
    (tree / "search" / "toy.py").write_text(TOY)
    kinds = tree / "search" / "kinds.py"
    text = kinds.read_text()
    assert '"search.weights")' in text
    kinds.write_text(text.replace('"search.weights")', '"search.weights", "search.toy")'))
    ws = tmp_path / "ws"
    out = run(tree, "-m", "search.pipeline", "--profile", "smoke", "--models", "cnn",
              "--no-weights", "--top-k", "6", "--train-size", "300", "--num-cpus", "1",
              "--no-dashboard", "--no-register", "--workspace", str(ws))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "smoke-grid-cnn -> smoke-toy -> smoke" in out.stdout, out.stdout[:2000]
    summary = json.loads((ws / "reports" / "smoke" / "summary.json").read_text())
    members = {m["experiment"] for m in summary["members"]}
    assert members == {"smoke-grid-cnn", "smoke-toy"}, summary["members"]


BEST = '''"""best: all the weight on the candidate most accurate on validation."""

import numpy as np

from analysis.fusion import accuracy
from analysis.methods.registry import register_method


@register_method("best", help="the single most accurate candidate on validation",
                 words="the candidate most accurate on validation, alone", pooled=True)
def best_weights(val_probs, y_val, given=None):
    scores = [accuracy(p, y_val) for p in val_probs]
    w = np.zeros(len(val_probs))
    w[int(np.argmax(scores))] = 1.0
    return w
'''

FUSE_WITH_BEST = '''
import json
import numpy as np
from analysis import methods
from analysis.render import build, markdown
from analysis.select import Candidate
from analysis.summary import fuse_members, summarise

rng = np.random.default_rng(0)
y_val, y_test = rng.integers(0, 10, 300), rng.integers(0, 10, 300)
pool, probs = [], {}
for k, noise in enumerate((3.0, 0.5, 2.0)):  # the second candidate is the most accurate
    def member(y):
        return np.eye(10)[y] + rng.random((len(y), 10)) * noise
    p = [m / m.sum(1, keepdims=True) for m in (member(y_val), member(y_test))]
    probs[f"r{k}"] = tuple(p)
    pool.append(Candidate(f"r{k}", "grid-cnn", "grid", "cnn", 0.5, 1, "c.pt", "f", 1000, 0))
fused = fuse_members(pool, pool[:1], None, probs, y_val, "best", calibrate=False)
context = {"name": "toy", "created": "now", "workspace": "/ws", "experiments": ["grid-cnn"],
           "data": {"fingerprint": "f" * 64, "val_images": 300, "test_images": 300}}
summary = summarise(fused, pool[0], y_val, y_test, 20, context, dict.fromkeys(probs, "c.pt"))
print(json.dumps({"pipeline": methods.names(pipeline=True),
                  "members": [c.run_id for c in fused.members], "weights": fused.weights,
                  "markdown": markdown(build(summary, {}))}))
'''


def test_a_fusion_method_added_as_one_file_and_one_import_line(tmp_path):
    """A new fusion method is one file under analysis/methods/ plus its import line: the
    report's --method offers it (with its help), the fusion weighs the pool with it, the
    report's text describes it in its own words, and the pipeline is offered it
    (analysis/methods/registry.py)."""
    tree = tree_copy(tmp_path / "tree")
    (tree / "analysis" / "methods" / "best.py").write_text(BEST)
    init = tree / "analysis" / "methods" / "__init__.py"
    text = init.read_text()
    assert "# isort: on" in text
    init.write_text(text.replace("# isort: on", "from analysis.methods import best  # noqa: "
                                                "F401\n# isort: on"))
    help_ = run(tree, "-m", "analysis.report", "--help")
    assert help_.returncode == 0, help_.stderr[-2000:]
    flat = " ".join(help_.stdout.split())
    assert "{uniform,weighted,greedy,nll,best}" in flat, flat
    assert "best: the single most accurate candidate on validation" in flat, flat
    assert "greedy, nll and best weigh every candidate" in flat, flat
    out = run(tree, "-c", FUSE_WITH_BEST)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout)
    assert got["pipeline"] == ["uniform", "greedy", "nll", "best"]
    # pooled: it weighed every candidate and kept the one it gave a weight
    assert got["members"] == ["r1"] and got["weights"] == [1.0]
    assert ("Fusion: **best** (the candidate most accurate on validation, alone), weights "
            "[1.0]") in got["markdown"]
