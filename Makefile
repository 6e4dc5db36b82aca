# Set-up and entry points. `make repro` and `make test` create .venv when it is missing and install
# the pinned dependencies of pyproject.toml (the one place where versions are pinned); a second call
# with the environment present installs nothing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: env repro test clean-venv

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

repro: $(STAMP)
	$(BIN)/dvc repro

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

clean-venv:
	rm -rf $(VENV)
