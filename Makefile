# Everything runs from a project-local virtualenv; `make test` or `make serve` on a fresh
# machine creates it first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `make serve` / `make emulator` need the service alone: not the ~500 MB of test, load and
# framework extras (`make install`, `make test` add them)
SERVE_STAMP := $(VENV)/.installed-service

# The compiled build (mypyc: the fan-out's per-session modules listed in sessions/native.py):
# `build_native.py` rebuilds it when a source changed and does nothing otherwise, so `make
# test` and `make serve` never run a stale one; without mypyc or a C compiler, or with
# CONTROLPLANE_PURE=1, the sources run (docs/architecture.md, "The compiled build").
NATIVE := $(BIN)/python build_native.py --quiet

.PHONY: install native serve emulator test lint types imports check bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,load,frameworks]'
	touch $(STAMP)

$(SERVE_STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(SERVE_STAMP)

install: $(STAMP)
	$(NATIVE)

native: $(STAMP)
	$(NATIVE)

serve: $(SERVE_STAMP)
	$(NATIVE)
	$(BIN)/controlplane serve

emulator: $(SERVE_STAMP)
	$(NATIVE)
	$(BIN)/controlplane emulator

# `make test` runs the suite on two pytest-xdist workers, each taking whole test files
# (--dist loadfile: a file's module fixtures, e.g. the JS SDK's `npm ci` or the console's
# Chromium, run in one worker; each worker starts its own NATS and Redis), then the fault
# tests marked `alone` (tests/conftest.py: timed against the machine) one at a time; on a
# quiet 2-core machine ~10 min against ~15 min in one process. TEST_WORKERS=0 runs everything
# in one process (a machine already busy with other work: a few distributed fault tests
# failed beside a second worker at a load of 5-9). PYTEST_ARGS adds options.
TEST_WORKERS ?= 2
PYTEST_ARGS ?=

test: $(STAMP)
	$(NATIVE)
ifeq ($(TEST_WORKERS),0)
	$(BIN)/pytest -q $(PYTEST_ARGS)
else
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not alone" $(PYTEST_ARGS)
	$(BIN)/pytest -q -m alone $(PYTEST_ARGS)
endif

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/mypy

imports: $(STAMP)
	$(BIN)/lint-imports

check: lint types imports test

# A few minutes on 2 cores; docs/benchmarks.md has the full sizes and the recorded figures.
bench: $(STAMP)
	$(NATIVE)
	$(BIN)/python loadtest/bench_emulator_idle.py --sessions 2000
	$(BIN)/python loadtest/bench_propagation.py --variant control --sessions 5000 --runs 3
	$(BIN)/python loadtest/bench_propagation.py --variant gateway --sessions 1000 --runs 3
	$(BIN)/python loadtest/bench_gateway.py --sessions 2000 --runs 3
	$(BIN)/python loadtest/bench_reconfigure.py --sessions 2000 --runs 1
	$(BIN)/python loadtest/bench_audit.py --sessions 10000 --per-session 10 --runs 3
	$(BIN)/python loadtest/bench_memory.py --variant both --sessions 2000 --runs 1
	$(BIN)/python loadtest/bench_audio_latency.py --sessions 100 --seconds 10 --runs 1

clean:
	-$(PY) build_native.py --clean
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
