# Two commands do everything on a fresh machine with Python 3.11+:
#   make demo   create .venv, install, materialize the whole pipeline on the embedded default data
#   make test   create .venv, install, run the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export HF_HUB_OFFLINE := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: demo test install ui bench-ingest clean

demo: install
	$(BIN)/python -m pipelines.demo

test: install
	$(BIN)/python -m pytest

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

clean:
	rm -rf data/outputs data/generated $(VENV)
