"""The architecture of docs/architecture.md, held: the layer contracts pass, the analysis runs
without Ray, each command's typed options agree with its parser, and the ASHA rungs that the
analysis computes without Ray are the ones Ray's scheduler uses."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import blocked_ray

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
    from tunefuse import pipeline

    return [(grid.parser, grid.GridOptions, ["--model", "cnn"]),
            (weights.parser, weights.WeightsOptions, ["--model", "resnet18"]),
            (pipeline.parser, pipeline.PipelineOptions, []),
            (report.parser, report.ReportOptions, [])]


@pytest.mark.parametrize("index", range(4), ids=["grid", "weights", "pipeline", "report"])
def test_each_command_s_options_are_its_flags_with_the_same_defaults(index):
    """A flag the parser has and the options class lacks (or the other way round) would be
    lost between main(argv) and run(options); a default that differs would make the pipeline
    (which builds options, not argv) behave unlike the command line."""
    make_parser, cls, required = _commands()[index]
    p = make_parser()
    dests = {a.dest for a in p._actions if not isinstance(a, argparse._HelpAction)}
    names = {f.name for f in dataclasses.fields(cls)}
    assert dests == names, (sorted(dests - names), sorted(names - dests))
    parsed = vars(p.parse_args(required))
    for f in dataclasses.fields(cls):
        if f.name == "model":  # required on the command line
            continue
        assert parsed[f.name] == f.default, (f.name, parsed[f.name], f.default)


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
