# `make run` and `make test` work on a fresh machine with Python 3.11+ and make: they create
# .venv when it is missing and install the project into it.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do command -v $$p >/dev/null && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' && echo $$p && break; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install run demo test lint postgres chromium bench histories clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11 or newer is needed"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/parcours dev --apply examples

demo: run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The tests spend most of their time waiting on servers, so two processes (each with its own
# servers, one test file at a time) finish the suite in about two thirds of the time on 2 cores.
TEST_WORKERS ?= 2
test: $(STAMP) lint postgres chromium
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

# The store tests also run on a real PostgreSQL server, started by the tests themselves from
# Debian's binaries; install them when they are missing.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { \
		echo "installing Debian's postgresql package for the tests"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql >/dev/null; }

# The journey page test loads the page in Debian's headless Chromium (its own browser download
# never works here); install it when it is missing.
chromium:
	@command -v chromium >/dev/null || { \
		echo "installing Debian's chromium package for the journey page test"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

# Every benchmark script rewrites its own section of docs/benchmarks.md; bench.report then
# gathers every goal into the table at the top.
BENCHMARKS := $(filter-out bench/__init__.py bench/report.py,$(wildcard bench/*.py))
bench: $(STAMP)
	for b in $(BENCHMARKS); do $(BIN)/python $$b || exit 1; done
	$(BIN)/python -m bench.report

# Record the histories the replay test runs (see docs/changing-workflows.md).
histories: $(STAMP)
	$(BIN)/python tests/record_histories.py --tag "$(TAG)"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
