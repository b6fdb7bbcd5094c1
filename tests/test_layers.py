"""The architecture of docs/architecture.md, held: the layer contracts pass, the analysis runs
without Ray, each command's parser (derived from its typed options) lists and parses exactly
them, and the ASHA rungs that the analysis computes without Ray are the ones Ray's scheduler
uses."""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import blocked_ray

from trainables.cli import options_from

ROOT = Path(__file__).resolve().parents[1]


def test_the_layer_contracts_hold():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint, "lint-imports (import-linter) is not installed: pip install -e '.[dev]'"
    out = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "0 broken" in out.stdout, out.stdout[-3000:]


def test_every_analysis_module_imports_without_ray(tmp_path):
    modules = sorted(p.stem for p in (ROOT / "analysis").glob("*.py") if p.stem != "__init__")
    code = "import importlib\n" + "".join(f"importlib.import_module('analysis.{m}')\n"
                                          for m in modules)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env=blocked_ray(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    help_ = subprocess.run([sys.executable, "-m", "analysis.report", "--help"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300,
                           env=blocked_ray(tmp_path))
    assert help_.returncode == 0 and "--top-k" in help_.stdout, help_.stderr[-3000:]


def _commands():
    from analysis import report
    from search import grid, weights
    from trainables import data, train
    from tunefuse import pipeline

    return {"grid": (grid.parser, grid.GridOptions, ["--model", "cnn"]),
            "weights": (weights.parser, weights.WeightsOptions, ["--model", "resnet18"]),
            "pipeline": (pipeline.parser, pipeline.PipelineOptions, []),
            "report": (report.parser, report.ReportOptions, []),
            "train": (train.parser, train.TrainOptions, []),
            "data": (data.parser, data.SummaryOptions, [])}


def _spelling(name: str) -> list[str]:
    """How --help spells the flag of an options field: -q and -v for the verbosity, else
    --FIELD-NAME."""
    return ["-q", "-v"] if name == "verbosity" else ["--" + name.replace("_", "-")]


@pytest.mark.parametrize("command", ["grid", "weights", "pipeline", "report", "train", "data"])
def test_each_command_s_help_lists_its_options_and_parses_to_their_defaults(command):
    """Each command's parser is derived from its options class (trainables/flags.py): its
    --help lists the flag of every field, it parses into nothing but the class's fields, and
    no arguments (but the required --model) give the class's defaults, so the pipeline, which
    builds options and not argv, runs a stage as its command line would."""
    make_parser, cls, required = _commands()[command]
    p = make_parser()
    help_ = p.format_help()
    names = [f.name for f in dataclasses.fields(cls)]
    for name in names:
        for spelling in _spelling(name):
            assert re.search(rf"(?<![\w-]){re.escape(spelling)}(?![\w-])", help_), \
                (command, spelling)
    dests = {a.dest for a in p._actions if not isinstance(a, argparse._HelpAction)}
    assert dests == set(names), (sorted(dests - set(names)), sorted(set(names) - dests))
    assert options_from(cls, p.parse_args(required)) == cls()


def test_the_rungs_without_ray_are_ray_s():
    from ray.tune.schedulers import AsyncHyperBandScheduler

    from search.asha import ScheduleAwareASHA
    from search.rungs import rung_epochs

    for length in range(1, 121):
        for grace in (1, 2, 3, 4, 5, 10):
            for factor in (1.5, 2, 2.5, 3, 4):
                ray_asha = AsyncHyperBandScheduler(
                    time_attr="epoch", metric="val_acc", mode="max", max_t=length,
                    grace_period=min(grace, length), reduction_factor=factor)
                rungs = sorted(int(m) for m, _ in ray_asha._brackets[0]._rungs if m < length)
                assert rung_epochs(length, grace, factor) == rungs, (length, grace, factor)
    assert ScheduleAwareASHA(10, 3).rungs(200) == [10, 30, 90]


def test_every_layer_is_packaged_and_in_the_image():
    """A layer left out of the distribution or the Docker image would only fail there."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    packages = sorted(p.parent.name for p in ROOT.glob("*/__init__.py")
                      if p.parent.name not in ("tests", "bench"))
    assert packages == ["analysis", "search", "trainables", "tunefuse"]
    for name in packages:
        assert f"{name}*" in include, name
        assert f"COPY {name} ./{name}\n" in dockerfile, name
