# Set-up and entry points. `make repro`, `make test`, `make test-fast` and `make lint` create .venv
# when it is missing and install the pinned dependencies of pyproject.toml (the one place where
# versions are pinned); a second call with the environment present installs nothing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: env repro ablation test test-fast lint clean-venv

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The default DAG (the `tables` and `figures` stages and everything upstream); the ablation stages are left out.
repro: $(STAMP)
	$(BIN)/dvc repro tables figures

# The ablation rows (params.yaml `ablation:`) and their tables, on top of the default runs.
ablation: $(STAMP)
	$(BIN)/dvc repro tables_ablation

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

# The inner loop: everything but the end-to-end runs (`slow`) and the tests that build the tiny
# dataset's frames and features or spawn long subprocesses (`heavy`, see tests/conftest.py).
test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not slow and not heavy" -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/rules

clean-venv:
	rm -rf $(VENV)
