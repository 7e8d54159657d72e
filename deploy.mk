# Deployment targets: container images, a local kind cluster, manifest checks.
# Included by the Makefile (`include deploy.mk`), which defines PY, VENV and `setup`.
# docs/deploy.md describes the whole deployment.

# One image serves the pipeline components and the training jobs. `make images` tags it
# IMAGE (default: a local tag); for a cluster, name a registry and push it:
#   make images push IMAGE=registry.example.org/ml/dkd:0.1.0
# then compile/submit with the same IMAGE=... (the Makefile passes it as --image).
IMAGE_REPO ?= dkd
# The package version, read from pyproject.toml's [project] table (override: make VERSION=...).
VERSION := $(shell awk -F'"' '/^\[project\]/ {p = 1; next} /^\[/ {p = 0} p && /^version *=/ {print $$2; exit}' pyproject.toml)
GIT_SHA := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo nogit)
# The full revision baked into the images (provenance.json of every trained step), -dirty
# when the work tree has uncommitted changes to tracked files.
GIT_REVISION := $(shell r=$$(git rev-parse HEAD 2>/dev/null) && { git diff --quiet HEAD 2>/dev/null && echo $$r || echo $$r-dirty; })
IMAGE ?= $(IMAGE_REPO):$(VERSION)-$(GIT_SHA)
IMAGE_CPU ?= $(IMAGE)-cpu
DOCKER ?= docker
KIND ?= kind
KIND_CLUSTER ?= dkd

# $(call require,COMMAND,what to do about it): fail with a clear message when COMMAND is missing.
require = command -v $(1) >/dev/null 2>&1 || { echo "make $@: '$(1)' not found: $(2)" >&2; exit 1; }
DOCKER_HINT := install Docker (https://docs.docker.com/engine/install/) and start its engine
KIND_HINT := install kind v0.33.0 (https://kind.sigs.k8s.io/docs/user/quick-start/\#installation)

.PHONY: images image-cpu push kind-up kind-down kind-test lint-manifests

images: ## build the CUDA and CPU images, tagged IMAGE_REPO:<version>-<git sha> and ...-cpu
	@$(call require,$(DOCKER),$(DOCKER_HINT))
	DOCKER_BUILDKIT=1 $(DOCKER) build -f docker/Dockerfile --build-arg GIT_REVISION=$(GIT_REVISION) -t $(IMAGE) .
	DOCKER_BUILDKIT=1 $(DOCKER) build -f docker/Dockerfile.cpu --build-arg GIT_REVISION=$(GIT_REVISION) -t $(IMAGE_CPU) .
	@echo "built $(IMAGE) and $(IMAGE_CPU)"

push: ## push the images of `make images` (IMAGE must name a registry: make push IMAGE=registry/dkd:tag)
	@$(call require,$(DOCKER),$(DOCKER_HINT))
	@test -n "$(call given,IMAGE)" || { echo "make push: set IMAGE=registry/dkd:tag, the image 'make images IMAGE=...' built" >&2; exit 2; }
	$(DOCKER) push $(IMAGE)
	$(DOCKER) push $(IMAGE_CPU)

image-cpu: ## build only the CPU image (kind, CPU clusters)
	@$(call require,$(DOCKER),$(DOCKER_HINT))
	DOCKER_BUILDKIT=1 $(DOCKER) build -f docker/Dockerfile.cpu --build-arg GIT_REVISION=$(GIT_REVISION) -t $(IMAGE_CPU) .

kind-up: image-cpu ## create the kind cluster and install KFP, the training operator and DKD (k8s/kind/install.sh)
	@$(call require,$(KIND),$(KIND_HINT))
	KIND_CLUSTER=$(KIND_CLUSTER) DKD_IMAGE=$(IMAGE_CPU) bash k8s/kind/install.sh

kind-down: ## delete the kind cluster
	@$(call require,$(KIND),$(KIND_HINT))
	$(KIND) delete cluster --name $(KIND_CLUSTER)

kind-test: setup ## end-to-end test on kind: image, cluster, toy pipeline through KFP (needs Docker and kind)
	@$(call require,$(DOCKER),$(DOCKER_HINT))
	@$(call require,$(KIND),$(KIND_HINT))
	DKD_KIND_CLUSTER=$(KIND_CLUSTER) DKD_KIND_IMAGE=$(IMAGE_CPU) $(PY) -m pytest -m kind tests/kind -v

lint-manifests: setup ## render every k8s overlay and validate it (Kubernetes 1.37 schemas, CRD schemas)
	$(PY) tools/lint_manifests.py
