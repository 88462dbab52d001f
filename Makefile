# Cadenza: everything a new machine needs is made by these targets.
#   make run    set up, then run the retrain flow on the built-in corpus (Bach chorales)
#   make test   set up, then run the test suite
#   make ablations  the adversarial ablations as DVC experiments, then their table
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed on its own, first: on a machine without a GPU this pin resolves to the
# local/CPU wheel, so no CUDA packages are pulled. Point TORCH_INDEX at
# https://download.pytorch.org/whl/cpu on a GPU-less machine that only sees PyPI.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: setup run test test-stack lint ablations clean-venv

setup: $(VENV)/.installed

# Everything after torch is installed by uv (from PyPI, in parallel): the same versions as
# pip resolves, in less time (docs/PERFORMANCE.md). --compile-bytecode as pip does: where
# PYTHONDONTWRITEBYTECODE is set, a venv without .pyc files imports 2-3x slower, every process.
UV := $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet "uv>=0.5,<1"
	$(UV) -e '.[dev]'
	# the synthesizer, without PyAudio (playback only; no Linux wheel): see pyproject.toml
	$(UV) --no-deps "tinysoundfont>=0.3.7,<0.4"
	touch $@

run: setup
	$(BIN)/cadenza retrain

# two pytest-xdist workers; tests on the Prefect API share one (tests/conftest.py)
TEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup -m "not stack"

# the team stack end to end (infra/stack.py: PostgreSQL, object store, MLflow and Prefect
# servers, a worker) with its faults; needs Debian's postgresql; minutes, one process
$(VENV)/.stack-installed: $(VENV)/.installed
	$(UV) -e '.[dev,stack]'
	touch $@

test-stack: $(VENV)/.stack-installed
	$(BIN)/python -m pytest -q -m stack tests/test_stack.py

# the adversarial ablation grid as queued DVC experiments (register is a no-op inside them),
# then the GAN-vs-control table for docs/EXPERIMENTS.md; hours on a CPU
ablations: setup
	$(BIN)/python benchmarks/ablations.py queue --start
	$(BIN)/python benchmarks/ablations.py table

lint: setup
	$(BIN)/ruff check src tests flows benchmarks
	$(BIN)/ruff format --check src tests flows benchmarks

clean-venv:
	rm -rf $(VENV)
