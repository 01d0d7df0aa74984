# wxpush — the two commands that work on a fresh machine with only python3 and make.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TEST_WORKERS ?= 3

.PHONY: demo test test-fast serve lint ui bench-simulator clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## demo: start the simulator and a local Prefect server, set up, refresh the token, send a message
demo: $(STAMP)
	$(VENV)/bin/wxpush demo

## test: lint, then the whole suite (PostgreSQL tests run when WXPUSH_TEST_POSTGRES_URL is set)
# On TEST_WORKERS workers: the tests mostly wait on other processes, so three workers keep two
# cores busy (tests/fixtures/parallel.py). `make test TEST_WORKERS=0` runs it in one process.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

## test-fast: lint, then every test that needs no Prefect server and starts no process (< 1 min)
test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not harness and not process"

## serve: Prefect server + UI (127.0.0.1:4200), simulator, deployments and a worker; Ctrl-C stops all
serve: $(STAMP)
	$(VENV)/bin/wxpush serve $(SERVE_ARGS)

## ui: the Prefect UI on the demo's history (.wxpush/prefect), at http://127.0.0.1:4200
ui: $(STAMP)
	PREFECT_HOME=$(CURDIR)/.wxpush/prefect PREFECT_SERVER_ANALYTICS_ENABLED=false \
		$(VENV)/bin/prefect server start --host 127.0.0.1 --port 4200

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench-simulator: $(STAMP)
	$(PY) bench/simulator.py

clean:
	rm -rf $(VENV) .wxpush
