# Two commands on a fresh machine: `make demo` runs the whole pipeline, `make test` the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-postgres test-postgres-workers test-postgres-others test-sqlite test-sqlite-workers test-sqlite-others test-rabbitmq test-pgbroker lint install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/jobctl demo

# The whole suite on PostgreSQL and again on SQLite (tests marked postgres_only are skipped there),
# in six pytest processes side by side. On Redis: the PostgreSQL pass and the SQLite pass, each split
# in two by directory (WORKER_TESTS, where most of the time is waiting on worker processes, and the
# rest). The broker-dependent tests run again on RabbitMQ and on the PostgreSQL broker, one process
# each, on the PostgreSQL pass (`--brokers` picks a test's broker parameter; see tests/conftest.py).
# Each process has its own database, Redis and RabbitMQ vhost; its output is printed whole when it ends.
WORKER_TESTS := tests/worker tests/hosts tests/jobs tests/observe
PYTEST_POSTGRES := JOBRUNNER_TEST_DATABASE=postgresql $(BIN)/pytest -q --reruns 1

test: $(STAMP)
	$(MAKE) --no-print-directory -j6 --output-sync=target test-postgres-workers test-postgres-others test-sqlite-workers test-sqlite-others test-rabbitmq test-pgbroker

test-postgres: $(STAMP)
	$(MAKE) --no-print-directory -j2 --output-sync=target test-postgres-workers test-postgres-others

test-postgres-workers: $(STAMP)
	$(PYTEST_POSTGRES) --brokers redis $(WORKER_TESTS)

test-postgres-others: $(STAMP)
	$(PYTEST_POSTGRES) --brokers redis $(addprefix --ignore=,$(WORKER_TESTS))

test-sqlite: $(STAMP)
	$(MAKE) --no-print-directory -j2 --output-sync=target test-sqlite-workers test-sqlite-others

test-sqlite-workers: $(STAMP)
	JOBRUNNER_TEST_DATABASE=sqlite $(BIN)/pytest -q --reruns 1 $(WORKER_TESTS)

test-sqlite-others: $(STAMP)
	JOBRUNNER_TEST_DATABASE=sqlite $(BIN)/pytest -q --reruns 1 $(addprefix --ignore=,$(WORKER_TESTS))

# On RabbitMQ and the PostgreSQL broker, the CLI's own tests (tests/acceptance) are left out, but
# `jobctl dev` with a broker set: the CLI sends through the producer the API's tests run on every
# broker, and the subprocess-heavy CLI tests a third time would take CI past its time.
OTHER_BROKERS_SELECTION := -k "not acceptance or dev_with_a_broker_set"

test-rabbitmq: $(STAMP)
	$(PYTEST_POSTGRES) --brokers rabbitmq $(OTHER_BROKERS_SELECTION)

test-pgbroker: $(STAMP)
	$(PYTEST_POSTGRES) --brokers postgres $(OTHER_BROKERS_SELECTION)

# The quality gates CI runs before the tests: lint, formatting, types.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var .pytest_cache
