# Two commands on a fresh machine: `make demo` runs the whole pipeline, `make test` the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-postgres test-postgres-workers test-postgres-others test-sqlite lint install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/jobctl demo

# The whole suite on PostgreSQL and again on SQLite (tests marked postgres_only are skipped there),
# in three pytest processes side by side: the PostgreSQL pass, the longer one, is split in two by
# directory (WORKER_TESTS, where most of the time is waiting on worker processes, and the rest).
# Each process has its own database, Redis and RabbitMQ vhost; its output is printed whole when it ends.
WORKER_TESTS := tests/worker tests/hosts tests/jobs tests/observe

test: $(STAMP)
	$(MAKE) --no-print-directory -j3 --output-sync=target test-postgres-workers test-postgres-others test-sqlite

test-postgres: $(STAMP)
	$(MAKE) --no-print-directory -j2 --output-sync=target test-postgres-workers test-postgres-others

test-postgres-workers: $(STAMP)
	JOBRUNNER_TEST_DATABASE=postgresql $(BIN)/pytest -q --reruns 1 $(WORKER_TESTS)

test-postgres-others: $(STAMP)
	JOBRUNNER_TEST_DATABASE=postgresql $(BIN)/pytest -q --reruns 1 $(addprefix --ignore=,$(WORKER_TESTS))

test-sqlite: $(STAMP)
	JOBRUNNER_TEST_DATABASE=sqlite $(BIN)/pytest -q --reruns 1

# The quality gates CI runs before the tests: lint, formatting, types.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var .pytest_cache
