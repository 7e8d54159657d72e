# DKD on Kubernetes: `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Re-install only when the dependency pins change.
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup test lint format bench demo run compile submit toy-data toy clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv and install the package with its pinned dependencies

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

test: setup ## run the default test suite on CPU (unit + integration; not kind)
	$(PY) -m pytest -m "not kind" -q

lint: setup ## ruff check and ruff format --check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup ## speed and memory figures vs baselines, saved as JSON in build/bench (CPU; CUDA when present)
	@mkdir -p build/bench
	$(PY) benchmarks/bench_model.py --json build/bench/model.json
	$(PY) benchmarks/bench_train.py --json build/bench/train.json
	$(PY) benchmarks/bench_data.py --json build/bench/data.json
	$(PY) benchmarks/bench_push.py --json build/bench/push.json
	$(PY) benchmarks/toy_forgetting.py --json build/bench/toy_forgetting.json

# The machine's own python (and torch) may be used: make gpu-check GPU_PYTHON=python3
GPU_PYTHON ?= $(PY)
.PHONY: gpu-check
gpu-check: ## the CUDA path on one GPU in < 8 min, JSON in build/ [REFERENCE_DIR=authors' code] [GPU_CHECK_ARGS=...]
	$(GPU_PYTHON) benchmarks/gpu_check.py --json build/gpu_check.json \
		$(if $(REFERENCE_DIR),--reference-dir $(REFERENCE_DIR)) $(GPU_CHECK_ARGS)

.PHONY: mutate
mutate: setup ## mutation testing of the method's modules, niced (slow): [MODULE=dkd_core/losses.py] [SAMPLE=40 SEED=0] [ONLY=66-70,74]
	nice -n 19 $(PY) tools/mutate.py $(if $(MODULE),--module $(MODULE)) \
		$(if $(SAMPLE),--sample $(SAMPLE) --seed $(or $(SEED),0)) $(if $(ONLY),--only $(ONLY))

PIPELINE ?= toy
# $(call given,VAR): VAR's value when set on the command line or in the environment, else
# nothing (a default from this file is not a user's choice: IMAGE, DATA).
given = $(if $(filter command line environment,$(origin $(1))),$($(1)))
# The cluster image of compile/submit: only one the user named (make images push IMAGE=...).
CLUSTER_IMAGE = $(call given,IMAGE)
# SEEDS=1,2,3: one chain of steps per seed in the same run, aggregated in one report.
SEEDS_OPTION = $(if $(SEEDS),--seeds $(SEEDS))
# PARALLEL_SEEDS=N (compile, submit): at most N seeds' chains at once (default: all).
PARALLEL_OPTION = $(if $(PARALLEL_SEEDS),--parallel-seeds $(PARALLEL_SEEDS))

demo: setup ## run the toy pipeline on this machine (Kubeflow's local runner) and print the per-step table [SEEDS=1,2] [VERBOSE=1]
	$(PY) -m pipelines demo $(SEEDS_OPTION) $(if $(VERBOSE),--verbose)

.PHONY: readme-figure
readme-figure: setup ## draw the README's figure, docs/demo_miou_steps.png, from the demo's report (runs make demo first when there is none)
	@test -f build/demo/report/summary.json || $(MAKE) demo
	$(PY) tools/readme_figure.py build/demo/report/summary.json docs/demo_miou_steps.png

run: setup ## run a benchmark's pipeline on this machine: make run PIPELINE=voc_15-1 [DATA=/data/VOC2012 (default: the config's data.root)] [GPUS=4 (torchrun, one process per GPU)] [SEEDS=1,2] [VERBOSE=1]
	$(PY) -m pipelines run $(PIPELINE) $(if $(call given,DATA),--data $(DATA)) \
		$(if $(GPUS),--gpus $(GPUS)) $(foreach p,$(PARAMS),--param '$(p)') \
		$(SEEDS_OPTION) $(if $(VERBOSE),--verbose)

compile: setup ## compile for a cluster to build/PIPELINE.yaml: make compile PIPELINE=voc_15-1 IMAGE=registry/dkd:tag [LAUNCHER=trainjob] [SEEDS=1,2,3 (the default of the seeds parameter)] [PARALLEL_SEEDS=N]
	$(PY) -m pipelines compile $(PIPELINE) $(if $(CLUSTER_IMAGE),--image $(CLUSTER_IMAGE)) \
		$(if $(LAUNCHER),--launcher $(LAUNCHER)) $(SEEDS_OPTION) $(PARALLEL_OPTION) \
		--output build/$(PIPELINE).yaml

submit: setup ## start a run on Kubeflow Pipelines: make submit PIPELINE=voc_15-1 IMAGE=registry/dkd:tag DATA=s3://... KFP_HOST=... [SEEDS=1,2,3] [PARALLEL_SEEDS=N] [PARAMS="KEY=VALUE ..."] [KFP_NAMESPACE=...] [EXPERIMENT=...] [LAUNCHER=...]
	$(PY) -m pipelines submit $(PIPELINE) $(if $(CLUSTER_IMAGE),--image $(CLUSTER_IMAGE)) \
		$(if $(LAUNCHER),--launcher $(LAUNCHER)) $(if $(call given,DATA),--data $(DATA)) \
		$(SEEDS_OPTION) $(PARALLEL_OPTION) \
		$(foreach p,$(PARAMS),--param '$(p)') $(if $(KFP_HOST),--host $(KFP_HOST)) \
		$(if $(KFP_NAMESPACE),--namespace $(KFP_NAMESPACE)) $(if $(EXPERIMENT),--experiment $(EXPERIMENT))

toy-data: setup ## generate the toy dataset in data/toy (kept when it is already there)
	@test -f data/toy/class_names.txt || $(PY) -m dkd_core toy-data data/toy

toy: toy-data ## train and evaluate every step of the toy task (pipelines/configs/toy.yaml)
	$(PY) -m dkd_core train --config pipelines/configs/toy.yaml --step 0
	$(PY) -m dkd_core train --config pipelines/configs/toy.yaml --step 1
	$(PY) -m dkd_core train --config pipelines/configs/toy.yaml --step 2

include deploy.mk

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) build .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
