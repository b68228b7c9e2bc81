# Every target sets itself up: a fresh clone needs only Python 3.10+ and `make`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
# make results: which normal classes and seeds, and where the (re-created) CIFAR-10 copy is
CLASSES ?= range(0,10)
SEEDS ?= 0,1,2
DATA ?= ../shared/data/cifar10

.PHONY: help install lint format docs docs-serve test test-slow test-all train train-guidebook results plan bench tensorboard clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'
	@echo "  pass Hydra overrides with ARGS=\"...\", e.g. make train ARGS=\"data.root=../shared/data/cifar10 data.verify_checksums=false\""

install: $(STAMP) ## create .venv and install the package with its test, lint and docs tools
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: install ## style, import order and formatting (ruff), types (mypy over src/anogan)
	$(VENV)/bin/ruff check src tests benchmarks train.py predict.py
	$(VENV)/bin/ruff format --check src tests benchmarks train.py predict.py
	$(PY) -m mypy

format: install ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix src tests benchmarks train.py predict.py
	$(VENV)/bin/ruff format src tests benchmarks train.py predict.py

docs: install ## build the documentation site into site/ (warnings, e.g. broken links, are errors)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

docs-serve: install ## serve the documentation at http://127.0.0.1:8000 while editing
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

test: install ## the fast test suite
	$(PY) -m pytest -q -m "not slow"

test-slow: install ## the slow tests only (multi-process DDP, resume, the browser tests: needs /usr/bin/chromium)
	$(PY) -m pytest -q -m slow || [ $$? -eq 5 ]  # exit 5: no slow tests collected

test-all: install ## every test
	$(PY) -m pytest -q

train: install ## the CPU default end to end: the GeoTrans SS-GAN, scored by D, report (its time here: make plan)
	$(PY) train.py experiment=cifar_car_cpu $(ARGS)

train-guidebook: install ## the guidebook's full recipe (64 px, 200 epochs: for a GPU; make plan ARGS=experiment=cifar_car)
	$(PY) train.py experiment=cifar_car $(ARGS)

results: install ## per-class results table, one-class protocol (CLASSES=1 SEEDS=0,1,2; one job's time: make plan)
	$(PY) train.py hparams_search=classes experiment=cifar_car_cpu data.root=$(DATA) data.verify_checksums=false \
		'data.normal_class=$(CLASSES)' 'seed=$(SEEDS)' $(ARGS)

plan: install ## what `make train` would do and cost here: splits, steps and estimated time per phase (trains nothing)
	$(PY) train.py experiment=cifar_car_cpu plan=true $(ARGS)

bench: install ## speed benchmark, prints one JSON object
	@$(PY) benchmarks/bench.py $(ARGS)

tensorboard: install ## dashboards of every run under outputs/
	$(VENV)/bin/tensorboard --logdir outputs

clean: ## remove the virtual environment (runs in outputs/ are kept)
	rm -rf $(VENV) src/*.egg-info site .mypy_cache
