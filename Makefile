# korlm front door. `make run` and `make test` set themselves up on a fresh machine:
# they create .venv and install the pinned dependencies (requirements.lock) first.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= configs/local.yaml
PIPELINE_YAML ?= build/korlm-pipeline.yaml
PYTEST_ARGS ?=

export KERAS_BACKEND ?= tensorflow
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: help install run test test-fast compile lint clean-runs

help:
	@echo "make run      run the whole pipeline on this machine (kfp.local) with $(CONFIG)"
	@echo "make test     run the test suite"
	@echo "make compile  write the compiled pipeline to $(PIPELINE_YAML)"
	@echo "make lint     ruff"
	@echo "make install  create $(VENV) and install pinned dependencies"

$(BIN)/.installed: pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/korlm pipeline run --config $(CONFIG)

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

compile: install
	$(BIN)/korlm pipeline compile --config $(CONFIG) --output $(PIPELINE_YAML)

lint: install
	$(BIN)/ruff check korlm corpus_beam components pipelines tests benchmarks data

clean-runs:
	rm -rf runs build
