# The MNIST retraining pipeline. `make run` and `make test` are the two commands a newcomer needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
ROOT := $(CURDIR)

# Where the data comes from and where artifacts + the model registry go.
MNIST_SOURCE ?= default
STORE ?= file://$(ROOT)/.store
PRESET ?= seed_mlp
EPOCHS ?=
# A relative folder is made absolute: Airflow tasks may run elsewhere than this shell.
SOURCE_URI := $(if $(or $(filter default,$(MNIST_SOURCE)),$(findstring ://,$(MNIST_SOURCE))),$(MNIST_SOURCE),$(abspath $(MNIST_SOURCE)))
comma := ,
# `airflow dags test` has no one to answer an approval request (it would wait until the
# request's timeout), so `make run` runs with approval off, whatever MNIST_APPROVAL says.
CONF ?= {"source": "$(SOURCE_URI)", "store": "$(STORE)", "preset": "$(PRESET)", "approval": "off"$(if $(EPOCHS),$(comma) "epochs": $(EPOCHS))}

# A project-local Airflow on SQLite for `make run` / `make airflow`.
export AIRFLOW_HOME ?= $(ROOT)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(ROOT)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(ROOT)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__UNIT_TEST_MODE := False
export MNIST_STORE := $(STORE)
export MNIST_SOURCE := $(SOURCE_URI)
export TF_CPP_MIN_LOG_LEVEL := 2
# uv installs without compiling bytecode (seconds instead of a minute); Python then writes each
# module's .pyc on its first import into .venv (and the ignored __pycache__ folders here). With
# PYTHONDONTWRITEBYTECODE set it never would, and every process would compile TensorFlow's
# sources again (about 26 s of CPU per `import tensorflow` on this machine, 7 s with .pyc).
unexport PYTHONDONTWRITEBYTECODE
# `airflow dags test` on Airflow 3.3.2 crashes at the end of a run of a DAG with a deadline
# alert (its test loop passes serialized alerts where ids are expected: apache/airflow#73428,
# fix pending in #73430), so `make run` switches the alert off; the scheduler (`make airflow`,
# a deployment) handles it fine.
DAGS_TEST_DEADLINE ?= off

.PHONY: help venv mlflow-venv mlflow-lock run airflow test test-deps test-fast lint bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

# The environment: requirements-lock.txt, then this package (editable), installed by uv (on PyPI
# as `uv`; seconds instead of minutes). Without uv on PATH, `make venv` installs it from PyPI
# with pip into .cache/uv-tool/; if that fails too (no network to PyPI, no wheel for this
# platform), it builds the same environment with pip. INSTALLER=pip forces pip.
INSTALLER ?= uv
UV_TOOL := .cache/uv-tool

$(BIN)/activate: requirements-lock.txt pyproject.toml
	@rm -rf $(VENV)
	@uv=""; \
	if [ "$(INSTALLER)" = uv ]; then \
	  uv=$$(command -v uv || true); \
	  if [ -z "$$uv" ] && [ -x $(UV_TOOL)/bin/uv ]; then uv=$(UV_TOOL)/bin/uv; fi; \
	  if [ -z "$$uv" ]; then \
	    echo "uv is not installed: installing it from PyPI into $(UV_TOOL)"; \
	    if $(PYTHON) -m venv $(UV_TOOL) && $(UV_TOOL)/bin/python -m pip install --quiet uv; then \
	      uv=$(UV_TOOL)/bin/uv; \
	    else \
	      echo "could not install uv: building $(VENV) with pip instead (slower)"; \
	    fi; \
	  fi; \
	fi; \
	if [ -n "$$uv" ]; then \
	  echo "building $(VENV) with $$uv"; \
	  "$$uv" venv --quiet --python $(PYTHON) $(VENV) && \
	  "$$uv" pip install --quiet --python $(BIN)/python -r requirements-lock.txt && \
	  "$$uv" pip install --quiet --python $(BIN)/python --no-deps -e .; \
	else \
	  echo "building $(VENV) with pip" && \
	  $(PYTHON) -m venv $(VENV) && \
	  $(BIN)/pip install --quiet --upgrade pip && \
	  $(BIN)/pip install --quiet -r requirements-lock.txt && \
	  $(BIN)/pip install --quiet --no-deps -e .; \
	fi
	touch $(BIN)/activate

venv: $(BIN)/activate  ## create .venv from the pinned lock (uv; pip as the fallback)

# The MLflow server's own environment: mlflow needs cachetools<8 and Airflow 3.3 pins 8.0.0, so
# it cannot share .venv; the pipeline speaks MLflow's REST API (docs/registry.md). Built by uv
# (installed by `make venv`) from requirements-mlflow-lock.txt; the tests build it on first use.
MLFLOW_VENV := .venv-mlflow
UV := $(or $(shell command -v uv),$(UV_TOOL)/bin/uv)

$(MLFLOW_VENV)/bin/mlflow: requirements-mlflow-lock.txt | $(BIN)/activate
	@rm -rf $(MLFLOW_VENV)
	@echo "building $(MLFLOW_VENV) with $(UV)"
	@$(UV) venv --quiet --python $(PYTHON) $(MLFLOW_VENV)
	@$(UV) pip install --quiet --python $(MLFLOW_VENV)/bin/python -r requirements-mlflow-lock.txt
	@touch $@

mlflow-venv: $(MLFLOW_VENV)/bin/mlflow  ## the MLflow server's environment (.venv-mlflow)

mlflow-lock:  ## re-resolve requirements-mlflow-lock.txt from requirements-mlflow.txt
	$(UV) pip compile --quiet --python-version 3.11 requirements-mlflow.txt \
	  -o requirements-mlflow-lock.txt --custom-compile-command "make mlflow-lock"

# A fresh venv's first `import keras` writes TensorFlow's .pyc files (about 20 s on this machine):
# started on the other core while the database migrates and the run's first tasks go, instead
# of inside the first train task. Python writes each .pyc atomically, so the two never clash.
$(AIRFLOW_HOME)/.migrated: $(BIN)/activate
	mkdir -p $(AIRFLOW_HOME)
	@echo "airflow db migrate (TensorFlow's bytecode is written alongside: $(AIRFLOW_HOME)/warm-up.log)"
	@nohup $(BIN)/python -c "import keras" > $(AIRFLOW_HOME)/warm-up.log 2>&1 &
	$(BIN)/airflow db migrate > $(AIRFLOW_HOME)/migrate.log 2>&1 || (cat $(AIRFLOW_HOME)/migrate.log; exit 1)
	touch $@

run: $(AIRFLOW_HOME)/.migrated  ## run the DAG once through Airflow (MNIST_SOURCE=..., STORE=..., PRESET=..., EPOCHS=...)
	@echo "make run: approval is off (airflow dags test cannot answer a request; see docs/approval.md)"
	MNIST_DEADLINE_MARGIN_MINUTES=$(DAGS_TEST_DEADLINE) $(BIN)/airflow dags test mnist_training --conf '$(CONF)'
	@$(BIN)/python -m mnist_tasks --log-level WARNING report --store '$(STORE)' --latest

# standalone starts the scheduler, dag-processor, api-server and triggerer as a plain `airflow`
# found on PATH: this venv's, not whatever else (or nothing) PATH holds.
airflow: $(AIRFLOW_HOME)/.migrated  ## start `airflow standalone` (UI on http://localhost:8080) with this DAG
	PATH="$(ROOT)/$(BIN):$$PATH" $(BIN)/airflow standalone

# Three pytest-xdist workers on this machine's two cores: the Celery deployment's two halves (one
# worker each) wait on the scheduler and use about 0.8 of a core, and the third worker takes the
# rest (1,027 s against 1,094 s on two workers: docs/benchmarks.md). Tests that share a set-up
# stay on one worker (tests/conftest.py).
TEST_WORKERS ?= 3
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope

test: test-deps $(BIN)/activate  ## the whole suite: unit, DAG, integration (services), end to end
	$(PYTEST)

# Chromium, chromedriver, docker-compose, PostgreSQL and Redis: installed with apt-get when
# missing (as root, on Debian), started when stopped; else one line saying what to run.
test-deps:  ## what the integration tests need besides .venv (scripts/setup-test-services.sh)
	@scripts/setup-test-services.sh

test-fast: $(BIN)/activate  ## unit and DAG-integrity tests: no services, under 90 s
	$(PYTEST) -m "unit or dags" tests/unit tests/dags

lint: $(BIN)/activate  ## ruff and mypy
	$(BIN)/ruff check mnist_tasks dags plugins tests bench
	$(BIN)/mypy

bench: $(BIN)/activate  ## all benchmarks on the real MNIST (see docs/benchmarks.md)
	$(BIN)/python bench/ingest.py --source ../shared/datasets/mnist
	$(BIN)/python bench/train.py --source ../shared/datasets/mnist
	$(BIN)/python bench/pipeline.py --source ../shared/datasets/mnist
	$(BIN)/python bench/score.py --source ../shared/datasets/mnist
	$(BIN)/python bench/score_scale.py

clean:  ## remove the local Airflow home and store (keeps the venv)
	rm -rf .airflow .store
