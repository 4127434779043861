# xlalign: the two commands a new user needs are `make reproduce` and `make test`.
# Both create (or refresh) the project virtualenv in .venv from the exact pins first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PROFILE ?= cpu
RUN_ID ?=
ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.xlalign-installed
# Extra pip flags, e.g. PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cpu" where the
# default index would otherwise serve a CUDA torch wheel.
PIP_EXTRA ?=

.PHONY: venv reproduce plan test test-fast lab lint format lock clean-cache help gallery gpu-smoke

help:
	@echo "make reproduce [PROFILE=cpu|smoke|paper] [RUN_ID=...]  run every notebook with papermill"
	@echo "make plan [PROFILE=...]                             what reproduce would run, per notebook (a dry run)"
	@echo "make test                                           run the test suite (smoke profile)"
	@echo "make test-fast                                      the suite without the slow tests (notebooks, Gemma, processes)"
	@echo "make lab                                            JupyterLab on the project kernel, in notebooks/"
	@echo "make gallery RUN_ID=<id>                           copy runs/<id>/figures/ours_* to figures/, redraw paper_*"
	@echo "make gpu-smoke                                      first run on a GPU machine: launched QLoRA training, tokens/s vs stock TRL"
	@echo "make lint | format | lock"

$(STAMP): pyproject.toml requirements/lock-cpu.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check $(PIP_EXTRA) --no-deps -r requirements/lock-cpu.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

venv: $(STAMP)

reproduce: venv
	$(BIN)/python -m xlalign reproduce --profile $(PROFILE) $(if $(RUN_ID),--run-id $(RUN_ID)) $(ARGS)

# What reproduce would run, per notebook (datasets, benchmarks, launches, model runs); loads no model.
plan: venv
	$(BIN)/python -m xlalign reproduce --profile $(PROFILE) --dry-run $(ARGS)

test: venv
	$(BIN)/python -m pytest $(ARGS)

test-fast: venv
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

# Jupyter refuses to run as root without --allow-root (containers and CI machines often are root).
lab: venv
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root) $(ARGS)

# The tracked gallery (figures/, shown in the README) changes only here: one run's ours_* figures
# and the paper_* figures redrawn from data/paper/. Runs write their figures into runs/<id>/figures/.
gallery: venv
	@test -n "$(RUN_ID)" || { echo "usage: make gallery RUN_ID=<id> (a run directory under runs/)" >&2; exit 2; }
	$(BIN)/python -m xlalign.report.build --gallery runs/$(RUN_ID)

# The first thing to run on a GPU machine (CUDA torch installed): one training run of the gpu-smoke
# profile through accelerate launch (2 processes where there are two GPUs, else 1), then tokens/s of ours
# against stock TRL and peak GPU memory, in one process, written to runs/gpu-smoke-bench.json.
gpu-smoke: venv
	$(BIN)/python -m xlalign train --profile gpu-smoke $(ARGS)
	$(BIN)/python scripts/bench_training.py --profile gpu-smoke --methods orpo --steps 6 --stock-trl \
		--skip-orpo-forward --json runs/gpu-smoke-bench.json

lint: venv
	$(BIN)/ruff check src tests notebooks scripts
	$(BIN)/ruff format --check src tests notebooks scripts

format: venv
	$(BIN)/ruff format src tests notebooks scripts

# Re-resolve the lock from pyproject.toml in a scratch venv (needs the package index).
lock:
	rm -rf /tmp/xlalign-lock && $(PYTHON) -m venv /tmp/xlalign-lock
	/tmp/xlalign-lock/bin/pip install -q $(PIP_EXTRA) -e .[dev]
	{ head -2 requirements/lock-cpu.txt; /tmp/xlalign-lock/bin/pip freeze --exclude-editable | sed 's/+cpu//'; } > requirements/lock-cpu.txt.new
	mv requirements/lock-cpu.txt.new requirements/lock-cpu.txt
