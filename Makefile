# Set-up and the everyday commands. Every target is idempotent: it does only what is missing.
#   make run     set up, then run the main job
#   make test    set up, then run the whole test suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR := /usr/share/datasets/fashion-mnist
DATA_FILES := train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte
# The PyTorch build this project is developed and measured with (pyproject.toml admits a range).
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: setup data venv run test lint clean

setup: data venv

# Debian's dataset-fashion-mnist, when the files are not there yet and apt can be used.
data:
	@missing=0; for f in $(DATA_FILES); do \
	  [ -f $(DATA_DIR)/$$f ] || [ -f $(DATA_DIR)/$$f.gz ] || missing=1; done; \
	if [ $$missing = 0 ]; then echo "data: Fashion-MNIST found in $(DATA_DIR)"; \
	elif [ -n "$${TUNEFUSE_DATA:-}" ]; then echo "data: using \$$TUNEFUSE_DATA=$$TUNEFUSE_DATA"; \
	elif command -v apt-get >/dev/null && { [ "$$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then \
	  sudo=; [ "$$(id -u)" = 0 ] || sudo="sudo -n"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$sudo apt-get install -y -q dataset-fashion-mnist \
	    || { $$sudo apt-get update -q && $$sudo apt-get install -y -q dataset-fashion-mnist; }; \
	else echo "data: Fashion-MNIST is not installed and apt-get cannot be used here;" \
	  "install dataset-fashion-mnist, or pass --data-dir or --download to the commands"; fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

run: setup
	$(PY) -m trainables.data --summary

test: setup
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
