# Set-up and the everyday commands. Every target is idempotent: it does only what is missing.
#   make run     set up, then run the whole pipeline (PROFILE=quick, WORKSPACE=outputs, ARGS=...)
#   make test    set up, then run the test suite (all but the slow tests; about 11 minutes)
#   make test-slow   the slow tests that fit CI (CI runs both)
#   make test-soak   the slow tests CI has no room for (they repeat what others cover)
#   make lint    ruff and the import-layer contracts (CI runs it first)
#   make docker-test   build docker/'s image and run its compose cluster for real, with podman
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR := /usr/share/datasets/fashion-mnist
DATA_FILES := train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte
# The PyTorch build this project is developed and measured with (pyproject.toml admits a range).
TORCH := torch==2.14.1 torchvision==0.29.1

PROFILE ?= quick
WORKSPACE ?= outputs
ARGS ?=
# apt-get as root, or through password-less sudo; empty when neither is possible
APT = $(shell if [ "$$(id -u)" = 0 ]; then echo apt-get; elif sudo -n true 2>/dev/null; then \
	echo "sudo -n apt-get"; fi)

.PHONY: setup data compiler browser compose postgres venv run test test-slow test-soak lint clean \
	podman docker-test docker-clean gpu-data gpu-rehearsal

setup: data compiler browser compose postgres venv

# Debian's dataset-fashion-mnist, when the files are not there yet and apt can be used; the
# files in the cache (what --download fetched) or $TUNEFUSE_DATA do as well. Without any of
# them it fails, with one line saying what to do: every command would fail without data.
# `make data DATA_DIR=DIR APT=` checks another folder without apt (the tests do).
data:
	@has_data() { for f in $(DATA_FILES); do \
	  [ -f "$$1/$$f" ] || [ -f "$$1/$$f.gz" ] || return 1; done; }; \
	cache="$${XDG_CACHE_HOME:-$$HOME/.cache}/tunefuse/fashion-mnist"; \
	if has_data "$(DATA_DIR)"; then echo "data: Fashion-MNIST found in $(DATA_DIR)"; \
	elif [ -n "$${TUNEFUSE_DATA:-}" ]; then echo "data: using \$$TUNEFUSE_DATA=$$TUNEFUSE_DATA"; \
	elif has_data "$$cache"; then echo "data: Fashion-MNIST found in $$cache"; \
	elif command -v apt-get >/dev/null && [ -n "$(APT)" ]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  { $(APT) install -y -q dataset-fashion-mnist \
	    || { $(APT) update -q && $(APT) install -y -q dataset-fashion-mnist; }; } \
	  && has_data "$(DATA_DIR)" \
	  || { echo "data: apt-get did not install dataset-fashion-mnist into $(DATA_DIR); see" \
	    "its output above, or set TUNEFUSE_DATA to a folder holding the four IDX files" >&2; \
	    exit 1; }; \
	else echo "data: Fashion-MNIST is not in $(DATA_DIR) nor in $$cache, \$$TUNEFUSE_DATA is" \
	  "not set, and apt-get cannot be used here: install dataset-fashion-mnist as root, set" \
	  "TUNEFUSE_DATA to a folder holding the four IDX files, or fetch them into the cache" \
	  "(make venv, then .venv/bin/python -m trainables.data --summary --download)" >&2; \
	  exit 1; fi

# The four Fashion-MNIST files, gzipped (30.9 MB), in a folder of the checkout that git ignores
# (.fmnist), for a GPU machine that has none: the device command carries it (docs/benchmarks.md).
GPU_DATA ?= .fmnist
gpu-data: data
	@src=""; cache="$${XDG_CACHE_HOME:-$$HOME/.cache}/tunefuse/fashion-mnist"; \
	for d in "$${TUNEFUSE_DATA:-}" "$(DATA_DIR)" "$$cache"; do \
	  [ -n "$$d" ] && [ -f "$$d/train-images-idx3-ubyte" -o -f "$$d/train-images-idx3-ubyte.gz" ] \
	    && { src=$$d; break; }; done; \
	mkdir -p "$(GPU_DATA)"; \
	for f in $(DATA_FILES); do \
	  if [ -f "$$src/$$f.gz" ]; then cp "$$src/$$f.gz" "$(GPU_DATA)/$$f.gz"; \
	  else gzip -c "$$src/$$f" > "$(GPU_DATA)/$$f.gz"; fi; done; \
	echo "gpu-data: $(GPU_DATA) holds the four files from $$src ($$(du -sh "$(GPU_DATA)" | cut -f1))"

# bench/gpu_check.sh --dry-run as the GPU machine runs it: a copy of what travels, a venv with
# PyTorch and NumPy only, the data carried (CI runs it; bench/gpu_rehearsal.sh says what it checks)
# (its venv links torch's closure from the project's venv: no second install)
gpu-rehearsal: data venv
	FROM="$(abspath $(VENV))" bench/gpu_rehearsal.sh

# Debian's g++, the C++ compiler torch.compile needs on a CPU: with it `--compile auto` trains
# ResNet18 and Inception compiled in fp32 (1.2x and 1.3-1.4x, docs/benchmarks.md); without it
# they train eager, and the compiled-training test is skipped.
compiler:
	@if command -v "$${CXX:-g++}" >/dev/null; then echo "compiler: $${CXX:-g++} found"; \
	elif command -v apt-get >/dev/null && [ -n "$(APT)" ]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(APT) install -y -q --no-install-recommends g++ \
	    || { $(APT) update -q && $(APT) install -y -q --no-install-recommends g++; }; \
	  command -v "$${CXX:-g++}" >/dev/null || echo "compiler: still no $${CXX:-g++} after" \
	    "apt-get install g++; ResNet18 and Inception train eager (install g++ or set CXX)"; \
	else echo "compiler: no $${CXX:-g++}, and apt-get cannot be used here; ResNet18 and" \
	  "Inception train eager and the compiled-training test is skipped (install g++)"; fi

# Debian's Chromium and ChromeDriver, for the browser tests of the MLflow UI, the Ray dashboard
# and the report.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
	  echo "browser: chromium and chromedriver found"; \
	elif command -v apt-get >/dev/null && [ -n "$(APT)" ]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(APT) install -y -q chromium chromium-driver \
	    || { $(APT) update -q && $(APT) install -y -q chromium chromium-driver; }; \
	else echo "browser: chromium is not installed and apt-get cannot be used here;" \
	  "the browser tests will be skipped (install chromium and chromium-driver)"; fi

# Debian's docker-compose (v1), which checks docker/compose.yaml (`config`) without an engine.
compose:
	@if command -v docker-compose >/dev/null; then echo "compose: docker-compose found"; \
	elif command -v apt-get >/dev/null && [ -n "$(APT)" ]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(APT) install -y -q --no-install-recommends docker-compose \
	    || { $(APT) update -q && $(APT) install -y -q --no-install-recommends docker-compose; }; \
	else echo "compose: docker-compose is not installed and apt-get cannot be used here;" \
	  "the docker-compose test will be skipped (install docker-compose)"; fi

# Debian's PostgreSQL server binaries (initdb, pg_ctl), for the test of an MLflow tracking
# server backed by PostgreSQL; the test starts its own cluster, the system's stays untouched.
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "postgres: PostgreSQL found in /usr/lib/postgresql"; \
	elif command -v apt-get >/dev/null && [ -n "$(APT)" ]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(APT) install -y -q postgresql || { $(APT) update -q && $(APT) install -y -q postgresql; }; \
	else echo "postgres: PostgreSQL is not installed and apt-get cannot be used here;" \
	  "the MLflow server test will be skipped (install postgresql)"; fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

run: data compiler venv
	$(PY) -m search.pipeline --profile $(PROFILE) --workspace $(WORKSPACE) $(ARGS)

test: setup
	$(PY) -m pytest -m "not slow"

# TESTS: which of them (pytest's paths and options, e.g. --ignore=tests/test_crash.py)
test-slow: setup
	$(PY) -m pytest -m "slow and not soak" $(TESTS)

test-soak: setup
	$(PY) -m pytest -m soak

# Debian's podman, runc, podman-compose and debootstrap, for make docker-test.
PODMAN_PKGS := podman runc podman-compose debootstrap
podman:
	@if (for t in $(PODMAN_PKGS); do command -v $$t >/dev/null || exit 1; done); then \
	  echo "podman: podman, runc, podman-compose and debootstrap found"; \
	elif command -v apt-get >/dev/null && [ -n "$(APT)" ]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(APT) install -y -q $(PODMAN_PKGS) || { $(APT) update -q && $(APT) install -y -q $(PODMAN_PKGS); }; \
	else echo "podman: install $(PODMAN_PKGS) (Debian's packages) to run make docker-test"; exit 2; fi

# docker/Dockerfile built on a Debian base and docker/compose.yaml brought up with podman, a
# smoke grid run through it, then everything taken down (tests/test_docker_stack.py; 7 minutes
# from a clean state, 2.5 once the images are built). Runs as root. KEEP_VOLUMES=1 keeps the volumes;
# CONTAINERS_CONF replaces docker/podman/containers.conf (runc, cgroupfs: a host without systemd).
CONTAINERS_CONF ?= $(CURDIR)/docker/podman/containers.conf
docker-test: data podman venv
	CONTAINERS_CONF=$(CONTAINERS_CONF) TUNEFUSE_KEEP_VOLUMES=$(KEEP_VOLUMES) \
	  $(PY) -m pytest -m soak -s tests/test_docker_stack.py

# The images make docker-test built, with the layers podman cached for the next build.
docker-clean:
	CONTAINERS_CONF=$(CONTAINERS_CONF) podman rmi -f --ignore localhost/tunefuse:podman \
	  localhost/tunefuse-postgres:15 localhost/tunefuse-base:bookworm

# ruff, then the layer contracts of pyproject.toml [tool.importlinter] (docs/architecture.md)
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
