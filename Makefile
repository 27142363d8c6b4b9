# korlm front door. `make run` and `make test` set themselves up on a fresh machine:
# they create .venv and install the pinned dependencies (requirements.lock) first.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= configs/local.yaml
PIPELINE_YAML ?= build/korlm-pipeline.yaml
PYTEST_ARGS ?=
# make test runs the suite in TEST_WORKERS processes (pytest-xdist), a test file per worker at
# a time (module fixtures are built once); TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2

export KERAS_BACKEND ?= tensorflow
export TF_CPP_MIN_LOG_LEVEL ?= 2

# Images: tagged with the git commit (and -dirty for uncommitted changes), never :latest.
REGISTRY ?= localhost:5001/korlm
TAG      ?= $(shell git rev-parse --short=12 HEAD)$(shell git diff --quiet HEAD -- 2>/dev/null || echo -dirty)
DOCKER   ?= docker
IMAGES   := korlm korlm-gpu korlm-tpu korlm-dataflow korlm-serve

.PHONY: help install run test test-fast compile lint clean-runs build push-images

help:
	@echo "make run      run the whole pipeline on this machine (kfp.local) with $(CONFIG)"
	@echo "make test     run the test suite"
	@echo "make compile  write the compiled pipeline to $(PIPELINE_YAML)"
	@echo "make lint     ruff"
	@echo "make install  create $(VENV) and install pinned dependencies"
	@echo "make build    build the component images ($(IMAGES)) as $(REGISTRY)/NAME:$(TAG)"
	@echo "make push-images REGISTRY=...  build and push them"

$(BIN)/.installed: pyproject.toml requirements.lock requirements-test.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock -r requirements-test.lock
	# koeda only for its Korean WordNet data file (korlm.evaluation.augment); its code needs konlpy + Java
	$(BIN)/python -m pip install --quiet --no-deps koeda==0.0.4
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/korlm pipeline run --config $(CONFIG)

test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=30 $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

compile: install
	$(BIN)/korlm pipeline compile --config $(CONFIG) --output $(PIPELINE_YAML)

lint: install
	$(BIN)/ruff check korlm components pipelines tests benchmarks data
	$(BIN)/hadolint docker/Dockerfile docker/Dockerfile.dataflow docker/Dockerfile.serve

build:
	$(DOCKER) build -f docker/Dockerfile --build-arg VARIANT=cpu -t $(REGISTRY)/korlm:$(TAG) .
	$(DOCKER) build -f docker/Dockerfile --build-arg VARIANT=gpu -t $(REGISTRY)/korlm-gpu:$(TAG) .
	$(DOCKER) build -f docker/Dockerfile --build-arg VARIANT=tpu -t $(REGISTRY)/korlm-tpu:$(TAG) .
	$(DOCKER) build -f docker/Dockerfile.dataflow -t $(REGISTRY)/korlm-dataflow:$(TAG) .
	$(DOCKER) build -f docker/Dockerfile.serve -t $(REGISTRY)/korlm-serve:$(TAG) .
	@echo "images: $(foreach i,$(IMAGES),$(REGISTRY)/$(i):$(TAG))"

push-images: build
	$(foreach i,$(IMAGES),$(DOCKER) push $(REGISTRY)/$(i):$(TAG) &&) true
	@echo "set pipeline.image: $(REGISTRY)/korlm:$(TAG) in your config"

clean-runs:
	rm -rf runs build

# KFP on a local cluster (issue #9): kind by default, minikube with CLUSTER=minikube.
# KFP standalone comes from the kustomizations in k8s/kfp/ (pinned KFP release), korlm's
# resources from k8s/korlm/. See k8s/README.md.
CLUSTER      ?= kind
CLUSTER_NAME ?= korlm
KUBECTL      ?= kubectl
KIND         ?= kind
MINIKUBE     ?= minikube
KFP_PORT     ?= 8080
LOCAL_IMAGE  ?= $(REGISTRY)/korlm:$(TAG)
ifeq ($(CLUSTER),minikube)
KUBE_CONTEXT ?= $(CLUSTER_NAME)
else
KUBE_CONTEXT ?= kind-$(CLUSTER_NAME)
endif
K := $(KUBECTL) --context $(KUBE_CONTEXT)

.PHONY: run-local clean-local

run-local: install
	@mkdir -p build
ifeq ($(CLUSTER),minikube)
	$(MINIKUBE) start -p $(CLUSTER_NAME) --kubernetes-version=v1.32.2 --cpus=4 --memory=12g \
	  --mount --mount-string=$(CURDIR)/data:/korlm/data
else ifeq ($(CLUSTER),kind)
	sed 's|hostPath: data$$|hostPath: $(CURDIR)/data|' k8s/kind-cluster.yaml > build/kind-cluster.yaml
	$(KIND) get clusters | grep -qx $(CLUSTER_NAME) || \
	  $(KIND) create cluster --name $(CLUSTER_NAME) --config build/kind-cluster.yaml --wait 120s
else
	$(error CLUSTER must be kind or minikube, not $(CLUSTER))
endif
	$(K) apply -k k8s/kfp/cluster-scoped
	$(K) wait --for=condition=established --timeout=120s crd --all
	$(K) apply -k k8s/kfp/platform-agnostic
	$(K) apply -k k8s/korlm
	$(K) -n kubeflow wait --for=condition=available --timeout=1200s deployment --all
	$(DOCKER) image inspect $(LOCAL_IMAGE) > /dev/null 2>&1 || \
	  $(DOCKER) build -f docker/Dockerfile --build-arg VARIANT=cpu -t $(LOCAL_IMAGE) .
ifeq ($(CLUSTER),minikube)
	$(MINIKUBE) -p $(CLUSTER_NAME) image load $(LOCAL_IMAGE)
else
	$(KIND) load docker-image $(LOCAL_IMAGE) --name $(CLUSTER_NAME)
endif
	@if [ -n "$$HF_TOKEN" ]; then \
	  echo "creating Secret kubeflow/korlm-hf-token from \$$HF_TOKEN"; \
	  printf '%s' "$$HF_TOKEN" | $(K) -n kubeflow create secret generic korlm-hf-token \
	    --from-file=token=/dev/stdin --dry-run=client -o yaml | $(K) apply -f - > /dev/null; \
	else echo "HF_TOKEN is not set: no Hub token Secret; the push step stays a dry run"; fi
	$(K) -n kubeflow port-forward svc/ml-pipeline-ui $(KFP_PORT):80 > build/port-forward.log 2>&1 & pf=$$!; \
	  trap "kill $$pf" EXIT; \
	  for i in $$(seq 60); do curl -sf http://localhost:$(KFP_PORT)/apis/v2beta1/healthz > /dev/null && break; sleep 2; done; \
	  $(BIN)/korlm pipeline submit --target kfp --config $(CONFIG) --host http://localhost:$(KFP_PORT) --wait \
	    --set pipeline.image=$(LOCAL_IMAGE) --set kfp.data_pvc=korlm-data > build/kfp-run.json
	@cat build/kfp-run.json; echo "run summary (run id, state, report location): build/kfp-run.json"

clean-local:
ifeq ($(CLUSTER),minikube)
	$(MINIKUBE) delete -p $(CLUSTER_NAME)
else
	$(KIND) delete cluster --name $(CLUSTER_NAME)
endif
