"""The set-up and the tests' prerequisites: `make data` fails, with one line, when it cannot
provide the data; a test whose prerequisite (the data, Chromium) is missing is skipped, and
fails in CI (CI=true), where the set-up should have installed it."""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, in_ci, need_browser, need_compiler, need_real_data, write_idx_set

from trainables import data

FILES = [f"{name}.gz" for name in data.FILES.values()]


# --- make data ---------------------------------------------------------------------------------

def make_data(tmp_path: Path, *variables: str, path: str | None = None, **env):
    """`make data VARIABLE=...` with no $TUNEFUSE_DATA and an empty cache unless given."""
    environ = {k: v for k, v in os.environ.items() if k != "TUNEFUSE_DATA"}
    environ.update({"XDG_CACHE_HOME": str(tmp_path / "cache"), **env})
    if path:
        environ["PATH"] = f"{path}:{environ['PATH']}"
    return subprocess.run(["make", "--no-print-directory", "data", *variables], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=environ)


def fake_apt_get(tmp_path: Path) -> str:
    """A folder holding an `apt-get` that does nothing: the Makefile sees apt, and the test
    says what its install does with APT=true (succeeds, installs nothing) or APT=false."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "apt-get").chmod(0o755)
    return str(bin_dir)


def one_error_line(out: subprocess.CompletedProcess) -> str:
    """make failed, and said why in one line of its own (beside make's `*** ... Error`)."""
    assert out.returncode != 0, out.stdout + out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip() and "***" not in ln]
    assert len(lines) == 1 and lines[0].startswith("data: "), out.stderr
    assert not out.stdout.strip(), out.stdout
    return lines[0]


def test_make_data_without_data_tunefuse_data_or_apt_fails(tmp_path):
    line = one_error_line(make_data(tmp_path, "DATA_DIR=/nonexistent", "APT="))
    assert "Fashion-MNIST is not in /nonexistent" in line and "apt-get cannot be used" in line
    assert "install dataset-fashion-mnist" in line and "TUNEFUSE_DATA" in line


@pytest.mark.parametrize("apt", ["false", "true"], ids=["install fails", "installs nothing"])
def test_make_data_fails_when_apt_does_not_provide_the_files(apt, tmp_path):
    line = one_error_line(make_data(tmp_path, "DATA_DIR=/nonexistent", f"APT={apt}",
                                    path=fake_apt_get(tmp_path)))
    assert "apt-get did not install dataset-fashion-mnist into /nonexistent" in line


def test_make_data_succeeds_with_the_files_tunefuse_data_or_the_cache(tmp_path):
    files = write_idx_set(tmp_path / "files", train_counts=(1,) * 10, test_per_class=1)
    out = make_data(tmp_path, f"DATA_DIR={files}", "APT=")
    assert out.returncode == 0 and f"data: Fashion-MNIST found in {files}" in out.stdout, out
    out = make_data(tmp_path, "DATA_DIR=/nonexistent", "APT=", TUNEFUSE_DATA=str(files))
    assert out.returncode == 0 and f"using $TUNEFUSE_DATA={files}" in out.stdout, out
    cache = tmp_path / "cache" / "tunefuse" / "fashion-mnist"
    shutil.copytree(files, cache)
    out = make_data(tmp_path, "DATA_DIR=/nonexistent", "APT=")
    assert out.returncode == 0 and f"data: Fashion-MNIST found in {cache}" in out.stdout, out
    assert sorted(p.name for p in cache.iterdir()) == sorted(FILES)


def make_compiler(path: str, *variables: str, **env) -> str:
    """`make compiler VARIABLE=...` with ``path`` first on $PATH; its one line of output."""
    environ = {**os.environ, **env}
    environ["PATH"] = f"{path}:{environ['PATH']}"
    out = subprocess.run(["make", "--no-print-directory", "compiler", *variables], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, env=environ)
    assert out.returncode == 0 and not out.stderr, out.stdout + out.stderr  # optional: no failure
    return out.stdout.strip()


def test_make_compiler_finds_installs_or_says_what_is_missing(tmp_path):
    """g++ for torch.compile: found; else apt-get asked for it (here a fake that installs
    nothing: said so); else, without apt, one line saying what training does without it."""
    apt = fake_apt_get(tmp_path)
    assert make_compiler(apt, "APT=true", CXX="sh") == "compiler: sh found"
    assert make_compiler(apt, "APT=true", CXX="no-such-cxx") == (
        "compiler: still no no-such-cxx after apt-get install g++; ResNet18 and Inception "
        "train eager (install g++ or set CXX)")
    line = make_compiler(apt, "APT=", CXX="no-such-cxx")
    assert line.startswith("compiler: no no-such-cxx, and apt-get cannot be used here") and \
        "train eager" in line and "(install g++)" in line


# --- missing prerequisites: skipped here, failed in CI -------------------------------------------

def ci_env(monkeypatch, ci: str | None) -> None:
    """$CI as given (None: unset)."""
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)


@pytest.mark.parametrize("ci, outcome", [
    ("true", pytest.fail.Exception), (None, pytest.skip.Exception),
    ("false", pytest.skip.Exception)], ids=["CI=true", "no CI", "CI=false"])
def test_missing_data_fails_in_ci_and_is_skipped_elsewhere(ci, outcome, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "empty")
    ci_env(monkeypatch, ci)
    assert in_ci() is (ci == "true")
    with pytest.raises(outcome, match=re.escape(f"{tmp_path / 'empty'} lacks train-images")):
        need_real_data()
    monkeypatch.setattr(data, "SYSTEM_DIR", write_idx_set(tmp_path / "full"))
    assert need_real_data() == tmp_path / "full"  # present: neither


@pytest.mark.parametrize("ci, outcome", [
    ("true", pytest.fail.Exception), (None, pytest.skip.Exception)], ids=["CI=true", "no CI"])
def test_missing_browser_fails_in_ci_and_is_skipped_elsewhere(ci, outcome, tmp_path,
                                                              monkeypatch):
    import conftest

    monkeypatch.setattr(conftest, "BROWSER", (str(tmp_path / "chromium"),))
    ci_env(monkeypatch, ci)
    with pytest.raises(outcome, match=r"chromium missing.*make browser"):
        need_browser()


@pytest.mark.parametrize("ci, outcome", [
    ("true", pytest.fail.Exception), (None, pytest.skip.Exception)], ids=["CI=true", "no CI"])
def test_missing_compiler_fails_in_ci_and_is_skipped_elsewhere(ci, outcome, monkeypatch):
    from trainables import fastpath

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(fastpath.shutil, "which", lambda name: None)
    ci_env(monkeypatch, ci)
    with pytest.raises(outcome, match=r"no C\+\+ compiler.*make compiler"):
        need_compiler()


def test_tests_that_need_the_data_ask_conftest():
    """One place decides skip or fail: no test file checks for the data itself."""
    for name in ("test_engine", "test_search", "test_faults", "test_crash", "test_cluster",
                 "test_weights"):
        text = (ROOT / "tests" / f"{name}.py").read_text()
        assert "need_real_data()" in text, name
        assert "find_files(data.SYSTEM_DIR)" not in text and "pytest.skip(" not in text, name


def test_the_smoke_pipeline_checks_its_prerequisites_before_starting_anything(
        tmp_path, tmp_path_factory, monkeypatch):
    import conftest

    started = []
    monkeypatch.setattr(conftest, "_run_streaming", lambda *a, **kw: started.append(a))
    monkeypatch.setattr(data, "SYSTEM_DIR", write_idx_set(tmp_path / "data"))
    monkeypatch.setattr(conftest, "BROWSER", (str(tmp_path / "chromium"),))
    monkeypatch.setenv("CI", "true")
    pipeline = getattr(conftest.smoke_pipeline, "__wrapped__", conftest.smoke_pipeline)
    with pytest.raises(pytest.fail.Exception, match="chromium missing"):
        pipeline(tmp_path_factory)
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "empty")
    with pytest.raises(pytest.fail.Exception, match="lacks train-images"):
        pipeline(tmp_path_factory)
    assert not started


# --- what the tests start, they stop -------------------------------------------------------------

def test_a_streamed_command_and_what_it_started_are_killed_when_the_caller_fails():
    """_run_streaming (the smoke pipeline's runs): an exception in the line handler kills the
    command's whole process group, children included, and nothing is left running."""
    from conftest import _run_streaming

    script = ("import signal, subprocess; child = subprocess.Popen(['sleep', 'infinity']); "
              "print(child.pid, flush=True); signal.pause()")  # until it is killed
    seen: list[int] = []

    def fail_on_first_line(proc, line):
        seen.extend([proc.pid, int(line)])
        raise RuntimeError("the caller failed")

    with pytest.raises(RuntimeError, match="the caller failed"):
        _run_streaming([sys.executable, "-c", script], fail_on_first_line, timeout=60)
    assert len(seen) == 2

    for pid in seen:  # SIGKILL is sent already: wait for each to end (an exited process's
        try:  # pidfd becomes readable, a zombie's too)
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            assert select.select([fd], [], [], 30)[0], f"process {pid} still runs"
        finally:
            os.close(fd)


# --- the tunefuse console script ----------------------------------------------------------------

def test_the_tunefuse_command_works_from_any_directory_once_installed(tmp_path):
    """`pip install .` (here into a folder of its own, without the dependencies this venv has)
    gives a `tunefuse` script whose subcommands are the python -m commands, run from a
    directory that is not the checkout, on the installed packages (not the checkout's)."""
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(site), str(ROOT)], check=True,
                   capture_output=True, timeout=300, cwd=tmp_path)
    script = site / "bin" / "tunefuse"
    assert script.is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}

    def tunefuse(*args):
        return subprocess.run([str(script), *args], cwd=elsewhere, capture_output=True,
                              text=True, env=env, timeout=120)

    where = subprocess.run([sys.executable, "-c", "import tunefuse.cli, trainables, search; "
                            "print(tunefuse.cli.__file__, trainables.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
    assert where.stdout.split() == [str(site / "tunefuse" / "cli.py"),
                                    str(site / "trainables" / "__init__.py")], where.stderr
    out = tunefuse("--help")
    assert out.returncode == 0
    assert [line.split()[0] for line in out.stdout.splitlines()[2:]] == [
        "run", "grid", "weights", "report", "predict", "train", "data"]
    grid = tunefuse("grid", "--help")
    assert grid.returncode == 0 and grid.stdout.startswith("usage: tunefuse grid ")
    assert "--batch-sizes" in grid.stdout
    bad = tunefuse("data", "--summary", "--data-dir", str(elsewhere))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "Fashion-MNIST files not found" in bad.stderr
    unknown = tunefuse("serve")
    assert unknown.returncode == 2 and unknown.stderr.startswith(
        "error: unknown subcommand 'serve'; choose one of run, grid, weights")
