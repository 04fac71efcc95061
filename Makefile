# Two entry points: `make run` (set up, then the default DVC pipeline) and `make test` (set up, then the tests).
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin

.PHONY: setup run test bench slurm-deps

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

run: setup
	PATH="$(BIN):$$PATH" dvc repro

# tests/test_slurm.py starts a real single-node Slurm cluster. Install its daemons where that is possible (root and
# apt-get); quiet and never fatal: without them that test skips and says why.
slurm-deps:
	@export PATH="$$PATH:/usr/sbin:/sbin"; \
	if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing slurm-wlm and munge (apt-get) for tests/test_slurm.py"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; } >/dev/null 2>&1 \
	      || echo "slurm-wlm/munge could not be installed: tests/test_slurm.py will skip"; \
	  fi; \
	fi

test: setup slurm-deps
	PATH="$(BIN):$$PATH" pytest -q

bench: setup
	PATH="$(BIN):$$PATH" python bench/update_throughput.py
