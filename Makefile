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

# Images: tagged with the git commit (and -dirty for uncommitted changes), never :latest.
REGISTRY ?= localhost:5001/korlm
TAG      ?= $(shell git rev-parse --short=12 HEAD)$(shell git diff --quiet HEAD -- 2>/dev/null || echo -dirty)
DOCKER   ?= docker
IMAGES   := korlm korlm-gpu korlm-tpu korlm-dataflow

.PHONY: help install run test test-fast compile lint clean-runs build push-images

help:
	@echo "make run      run the whole pipeline on this machine (kfp.local) with $(CONFIG)"
	@echo "make test     run the test suite"
	@echo "make compile  write the compiled pipeline to $(PIPELINE_YAML)"
	@echo "make lint     ruff"
	@echo "make install  create $(VENV) and install pinned dependencies"
	@echo "make build    build the component images ($(IMAGES)) as $(REGISTRY)/NAME:$(TAG)"
	@echo "make push-images REGISTRY=...  build and push them"

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
	$(BIN)/hadolint docker/Dockerfile docker/Dockerfile.dataflow

build:
	$(DOCKER) build -f docker/Dockerfile --build-arg VARIANT=cpu -t $(REGISTRY)/korlm:$(TAG) .
	$(DOCKER) build -f docker/Dockerfile --build-arg VARIANT=gpu -t $(REGISTRY)/korlm-gpu:$(TAG) .
	$(DOCKER) build -f docker/Dockerfile --build-arg VARIANT=tpu -t $(REGISTRY)/korlm-tpu:$(TAG) .
	$(DOCKER) build -f docker/Dockerfile.dataflow -t $(REGISTRY)/korlm-dataflow:$(TAG) .
	@echo "images: $(foreach i,$(IMAGES),$(REGISTRY)/$(i):$(TAG))"

push-images: build
	$(foreach i,$(IMAGES),$(DOCKER) push $(REGISTRY)/$(i):$(TAG) &&) true
	@echo "set pipeline.image: $(REGISTRY)/korlm:$(TAG) in your config"

clean-runs:
	rm -rf runs build
