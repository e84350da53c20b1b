# Two commands on a fresh machine: `make demo` runs the whole pipeline, `make test` the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-postgres test-sqlite lint install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/jobctl demo

# The whole suite on PostgreSQL and again on SQLite (tests marked postgres_only are skipped there),
# the two passes side by side: each has its own database and Redis, and much of a pass is waiting on
# worker processes. Each pass's output is printed whole when it ends.
test: $(STAMP)
	$(MAKE) --no-print-directory -j2 --output-sync=target test-postgres test-sqlite

test-postgres: $(STAMP)
	JOBRUNNER_TEST_DATABASE=postgresql $(BIN)/pytest -q --reruns 1

test-sqlite: $(STAMP)
	JOBRUNNER_TEST_DATABASE=sqlite $(BIN)/pytest -q --reruns 1

# The quality gates CI runs before the tests: lint, formatting, types.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var .pytest_cache
