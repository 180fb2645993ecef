# Two commands do everything on a fresh machine with Python 3.11+:
#   make demo   create .venv, install, materialize the whole pipeline on the embedded default data
#   make test   create .venv, install, run the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export HF_HUB_OFFLINE := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: demo test install browser services ui bench-ingest bench-duckdb clean

demo: install
	$(BIN)/python -m assets.demo

test: install browser services
	$(BIN)/python -m pytest

# Debian's chromium for the browser tests (the dataset card and Data Docs render headless, Playwright
# drives the Dagster UI); installed
# only when missing and when running as root with apt-get, else those tests are skipped with a reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		echo "installing Debian's chromium for the browser tests ..." && \
		apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium not available: the browser tests will be skipped"

# Debian's redis-server (the Celery broker) and PostgreSQL (the shared instance storage) for the
# distributed tests (tests/test_distributed.py): the tests start their own throwaway servers on free
# ports (Debian's redis-server service is not started), so only the binaries are needed. Installed only
# when missing and when running as root with apt-get, else those tests are skipped with a reason.
services:
	@command -v redis-server >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		echo "installing Debian's redis-server for the Celery tests ..." && \
		apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; } || \
		echo "redis-server not available: the Celery tests will be skipped"
	@{ command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; } || \
		ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		echo "installing Debian's postgresql for the PostgreSQL instance tests ..." && \
		apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
		echo "PostgreSQL (initdb, pg_ctl) not available: the PostgreSQL instance tests will be skipped"

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required; run: make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -qq --disable-pip-version-check -e '.[dev]'
	@touch $@

ui: install
	$(BIN)/dagster dev -w workspace.yaml

bench-ingest: install
	$(BIN)/python bench/ingest_taobao.py

# the pipeline against DuckDB (and pandas) on the same files; duckdb comes from the `bench` extra
bench-duckdb: install
	$(BIN)/pip install -qq --disable-pip-version-check -e '.[bench]'
	$(BIN)/python bench/duckdb_peer.py

clean:
	rm -rf data/outputs data/generated $(VENV)
