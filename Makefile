PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test faults lint services bench clean constraints

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

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	MYPY=$(abspath $(BIN))/mypy bash scripts/typecheck.sh

# Most tests wait on brokers, not on the CPU: they run in three pytest processes, a
# file's tests in one. The conformance suite's timing bounds and the fault suite's
# deadlines hold on a machine of their own, so those two run alone afterwards.
test: lint services
	$(BIN)/pytest -n 3 --dist loadfile --ignore=tests/conformance --ignore=tests/faults
	$(BIN)/pytest tests/conformance tests/faults

# the fault suite alone (tests/faults: stopped brokers, blackholes, kills, and the
# three-node cluster failovers, about 2 minutes of it); `make test` runs it too
faults: $(VENV)/.dev-installed services
	$(BIN)/pytest tests/faults

# the exact versions the container image installs (see Dockerfile): every dependency
# of mailbag[redis,postgres] resolved for the image's Python 3.12 on any platform
constraints: | $(BIN)/python
	$(BIN)/pip install --quiet 'uv>=0.4'
	$(BIN)/uv pip compile pyproject.toml --extra redis --extra postgres --universal --python-version 3.12 \
		--upgrade --custom-compile-command 'make constraints' --output-file docker/constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache
