# The two commands a new user needs (see README):
#   make demo   run the embedded default pipeline (no broker, no Elasticsearch)
#   make test   install brokers if missing, lint, type-check and run the whole test suite
# Both create ./.venv on first use. Other targets: make bench, make faults, make lint.
# Test tooling shared by tests/, benchmarks/ and `make faults` is the harness/ package; the
# commands run from this directory so `python -m harness.faults` / `-m benchmarks.run` find it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test lint typecheck pytest brokers bench faults clean

demo: $(VENV)/.core
	$(BIN)/python examples/demo.py

test: brokers $(VENV)/.dev lint typecheck pytest

lint: $(VENV)/.dev
	$(BIN)/ruff check mqlogging harness tests benchmarks examples
	$(BIN)/ruff format --check mqlogging harness tests benchmarks examples

typecheck: $(VENV)/.dev
	$(BIN)/mypy --strict mqlogging harness

pytest: $(VENV)/.dev
	$(BIN)/pytest $(PYTEST_ARGS)

test-slow: brokers $(VENV)/.dev
	$(BIN)/pytest -m slow $(PYTEST_ARGS)

brokers:
	scripts/install-brokers.sh

bench: $(VENV)/.bench
	scripts/install-brokers.sh valgrind
	$(BIN)/python -m benchmarks.run

faults: brokers $(VENV)/.dev
	$(BIN)/python -m harness.faults --write docs/reliability.md

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.core: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e '.[fast,collector]'
	touch $@

$(VENV)/.dev: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e '.[all,dev]'
	touch $@ $(VENV)/.core

$(VENV)/.bench: $(VENV)/.dev
	$(PIP) install -e '.[all,dev,bench]'
	touch $@

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
