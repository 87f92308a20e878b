# Two entry points: `make run` (install, then the main job) and `make test`
# (install, then the test suite). Both reuse .venv on a second call.
VENV   ?= .venv
PY     := $(VENV)/bin/python
KEDRO  := $(VENV)/bin/kedro
PIPELINE ?= __default__
ENV    ?= base
KEDRO_ARGS ?=
# the suite's files run in parallel, one worker process per core (pytest-xdist; a file's tests stay together so
# its module fixtures are built once; files start in collection order, where tests/conftest.py puts the longest
# first); PYTEST_WORKERS=0 runs them in this process, in file order
PYTEST_WORKERS ?= 2

export KEDRO_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1

.PHONY: install run test lint viz repro ui

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed

run: install
	$(KEDRO) run --pipelines=$(PIPELINE) --env=$(ENV) $(KEDRO_ARGS)

test: install
	$(PY) -m pytest $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder) $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

viz: install
	$(KEDRO) viz build

# `make repro` reproduces the base environment's stages; `make repro ENV=toy2d` another environment's
# (stage distill_env@ENV in dvc.yaml). A bare `dvc repro` reproduces every environment listed there.
BASE_STAGES := teacher reference degradation backtracking evaluation compare
repro: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro \
		$(if $(filter base,$(ENV)),$(BASE_STAGES),distill_env@$(ENV))

# MLflow 3's UI opens an experiment on its GenAI overview unless told otherwise: the URL below asks for the
# model-training view (runs table), which the browser then remembers.
ui: install
	@echo "MLflow UI: http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db \
		--host 127.0.0.1 --workers 1
