# Two entry points: `make serve` and `make test`. Both set up everything they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 3000
MODEL_NAME ?= sklearn_model
# Seldon MLServer, for the benchmark only: a venv of its own (its pins clash with BentoML's)
MLSERVER_VENV := bench/.venv-mlserver
export BENTOML_DO_NOT_TRACK := True

.PHONY: serve test install install-dev system-deps train build bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt | $(BIN)/activate
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

system-deps:  ## Debian packages the tests and the benchmark use
	bash scripts/install-system-deps.sh

train: install  ## trains the default model unless the store already has one
	$(BIN)/python train.py --name $(MODEL_NAME) --if-missing

serve: train  ## http://localhost:$(PORT)
	$(BIN)/bentoml serve service:SklearnService --port $(PORT)

test: install-dev system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

build: train
	$(BIN)/bentoml build

clean:
	rm -rf $(VENV) $(MLSERVER_VENV) .pytest_cache

$(MLSERVER_VENV)/.installed: bench/requirements-mlserver.txt
	$(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/pip install --quiet -r bench/requirements-mlserver.txt
	touch $@

bench: install-dev system-deps $(MLSERVER_VENV)/.installed  ## side-by-side benchmark, ~6 min; writes bench/results/latest.*
	$(BIN)/python bench/run.py --mlserver-venv $(MLSERVER_VENV) $(BENCH_ARGS)
