# Two entry points: `make run` (set up, then the default DVC pipeline) and `make test` (set up, then the tests).
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin

.PHONY: setup run test bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

run: setup
	PATH="$(BIN):$$PATH" dvc repro

test: setup
	PATH="$(BIN):$$PATH" pytest -q

bench: setup
	PATH="$(BIN):$$PATH" python bench/update_throughput.py
