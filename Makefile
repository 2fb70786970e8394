PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test faults services bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/mailbag demo

services:
	bash scripts/services.sh

test: $(VENV)/.dev-installed services
	$(BIN)/pytest

# the fault suite alone (tests/faults: stopped brokers, blackholes, kills, a cluster);
# `make test` runs it too, so CI (.ci/run) does
faults: $(VENV)/.dev-installed services
	$(BIN)/pytest tests/faults

clean:
	rm -rf $(VENV) .pytest_cache
