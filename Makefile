# Two entry points: `make run` (install, then the main job) and `make test`
# (install, then the test suite). Both reuse .venv on a second call.
VENV   ?= .venv
PY     := $(VENV)/bin/python
KEDRO  := $(VENV)/bin/kedro
PIPELINE ?= __default__
ENV    ?= base

export KEDRO_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1

.PHONY: install run test lint viz repro

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed

run: install
	$(KEDRO) run --pipelines=$(PIPELINE) --env=$(ENV)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

viz: install
	$(KEDRO) viz build

repro: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro
