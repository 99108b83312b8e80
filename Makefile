# Two commands do all the set-up on a fresh machine with Python 3.11, git and make:
#   make repro   run the whole pipeline on the data pinned by data.dvc
#   make test    run the test suite (make test-fast: the quick tier, no model training)
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The Node.js consumer of the exported model (tests/export/test_consumers.py runs it).
NODE_DIR := consumers/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed
# DVC runs each stage's `python -m ...` through the shell: it must find the venv's python.
export PATH := $(abspath $(BIN)):$(PATH)
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: help repro test test-fast data install lint clean
.DEFAULT_GOAL := help

help:
	@echo "make repro  - install, make sure data/ is present, run 'dvc repro'"
	@echo "make test   - install, make sure data/ is present, run the tests"
	@echo "make test-fast - the quick tier: no model training, under 3 minutes"
	@echo "make lint   - ruff"

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[pipeline,dev]'
	@touch $(STAMP)

# --ignore-scripts: onnxruntime-node's postinstall downloads GPU binaries from a host outside
# the npm registry; the CPU binaries ship in the package itself.
$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	@command -v npm >/dev/null || { echo "make: npm not found: install Node.js 20 or later"; exit 1; }
	cd $(NODE_DIR) && npm ci --ignore-scripts --no-audit --no-fund
	@touch $@

install: $(STAMP) $(NODE_STAMP)

# data/ must match data.dvc: dvc pull from a configured remote, else the embedded sample.
data: $(STAMP)
	$(BIN)/rarespecies ensure-data

repro: data
	$(BIN)/dvc repro
	@echo
	@echo "First:    source .venv/bin/activate   (then dvc, rarespecies, python -m flows...)"
	@echo "Metrics:  metrics/*.json; compare experiments with the README's dvc exp show command"
	@echo "Plots:    dvc plots show     (writes dvc_plots/index.html)"
	@echo "Models:   reports/leaderboard.md"
	@echo "ONNX:     export/model.onnx  (benchmark: reports/benchmark.md)"

# Two workers: the tests that share the tiny pipeline run stay on one (conftest.py).
test: data $(NODE_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadgroup

test-fast: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf artifacts models dvclive dvc_plots .pytest_cache $(NODE_DIR)/node_modules
