# Two entry points: `make serve` and `make test`. Both set up everything they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Evidently (it needs pandas 2) for the drift report's HTML, kept apart from the service's environment
REPORT_VENV := .venv-report
LOG ?= payload_logs
MODEL ?= $(MODEL_NAME):latest
OUT ?= drift.html
PORT ?= 3000
MODEL_NAME ?= sklearn_model
# Seldon MLServer, for the benchmark only: a venv of its own (its pins clash with BentoML's)
MLSERVER_VENV := bench/.venv-mlserver
export BENTOML_DO_NOT_TRACK := True

.PHONY: serve test lint test-fast test-served test-slow install install-dev system-deps base-image train build bench bench-models clean report-env \
	drift-report grpc-code

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt | $(BIN)/activate
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

# kserve's declared pins (pandas<3, psutil<6) clash with the service's: its client goes in without them
$(VENV)/.installed-dev: requirements-dev.txt requirements-kserve.txt $(VENV)/.installed
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-kserve.txt
	touch $@

# --no-compile: byte-compiling its ~1 GB takes as long as installing it; a small report compiles what reports
# import, once (with PYTHONDONTWRITEBYTECODE set, as it may be, each run would compile it again)
$(REPORT_VENV)/.installed: requirements-report.txt
	$(PYTHON) -m venv $(REPORT_VENV)
	$(REPORT_VENV)/bin/pip install --quiet --no-compile -r requirements-report.txt
	touch $@

$(REPORT_VENV)/.compiled: $(REPORT_VENV)/.installed sklearn_service/drift_html.py
	env -u PYTHONDONTWRITEBYTECODE $(REPORT_VENV)/bin/python sklearn_service/drift_html.py --warm-up
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev
report-env: $(REPORT_VENV)/.compiled

system-deps:  ## Debian packages the tests and the benchmark use
	bash scripts/install-system-deps.sh

# the image test's base image, made once before the tests (as root; the test skips otherwise), so that
# its build never runs beside the soak
base-image: system-deps
	[ "$$(id -u)" -ne 0 ] || bash scripts/make-base-image.sh

train: install  ## trains the default model unless the store already has one
	$(BIN)/python train.py --name $(MODEL_NAME) --if-missing

serve: train  ## http://localhost:$(PORT)
	$(BIN)/bentoml serve service:SklearnService --port $(PORT)

# The suite in worker processes (pytest-xdist; tests/conftest.py keeps the tests of a server on one worker):
# in-process tests first, then the served ones; then the soak and the image build, beside each other but
# after the rest, so that their load meets no other test's timing. Exit 5 (nothing selected, e.g. by a
# PYTEST_ARGS -m or -k) is no failure for one run of the two.
TEST_WORKERS ?= 3
PYTEST := $(BIN)/python -m pytest --dist loadgroup --no-loadscope-reorder
test: lint system-deps base-image report-env
	$(PYTEST) -n $(TEST_WORKERS) -m "not soak and not slow" $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(PYTEST) -n 2 -m "soak or slow" $(PYTEST_ARGS) || [ $$? -eq 5 ]

lint: install-dev  ## ruff and mypy, with the settings in pyproject.toml
	$(BIN)/ruff check .
	$(BIN)/mypy

test-fast: install-dev system-deps report-env
	$(PYTEST) -n $(TEST_WORKERS) -m "not served and not soak and not slow" $(PYTEST_ARGS)

test-served: install-dev system-deps report-env
	$(PYTEST) -n $(TEST_WORKERS) -m "served and not soak and not slow" $(PYTEST_ARGS)

test-slow: install-dev system-deps base-image report-env
	$(PYTEST) -n 2 -m "soak or slow" $(PYTEST_ARGS)

build: train  ## the bento for MODELS (else MODEL_TAG), with the extras (XGBoost, ...) its models need
	$(BIN)/bentoml build -f "$$($(BIN)/python -m sklearn_service.bento_extras)"

drift-report: install report-env  ## payload log vs training: make drift-report LOG=payload_logs MODEL=name:version
	$(BIN)/python -m sklearn_service.drift_report --log $(LOG) --model $(MODEL) --out $(OUT)

grpc-code:  ## regenerate sklearn_service/v2_grpc/*_pb2*.py from its .proto (grpcio-tools in a throwaway venv)
	sklearn_service/v2_grpc/generate.sh

clean:
	rm -rf $(VENV) $(REPORT_VENV) $(MLSERVER_VENV) .pytest_cache test-artifacts

$(MLSERVER_VENV)/.installed: bench/requirements-mlserver.txt
	$(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/pip install --quiet -r bench/requirements-mlserver.txt
	touch $@

bench: install-dev system-deps $(MLSERVER_VENV)/.installed  ## side-by-side benchmark, ~6 min; writes bench/results/latest.*
	$(BIN)/python bench/run.py --mlserver-venv $(MLSERVER_VENV) $(BENCH_ARGS)

bench-models: install-dev system-deps $(MLSERVER_VENV)/.installed  ## 20 models vs 1, a live version swap, MLServer's multi-model mode; ~4 min; writes bench/results/many_models.*
	$(BIN)/python bench/many_models.py --mlserver-venv $(MLSERVER_VENV) $(BENCH_ARGS)
