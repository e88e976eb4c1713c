# Keel — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_VERSION := 0.13.8
TOOLS := .keel/tools
UV := $(TOOLS)/bin/uv
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help install run test lint fmt bench lock clean test-tools dbt

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(UV):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Keel needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

$(STAMP): requirements.lock pyproject.toml | $(UV)
	[ -x $(VPY) ] || $(UV) venv --quiet --python $(PYTHON) $(VENV)
	$(UV) pip sync --quiet --python $(VPY) requirements.lock
	$(UV) pip install --quiet --python $(VPY) --no-deps -e .
	touch $(STAMP)

install: $(STAMP) ## Create the environment in .venv/ from the lock file (.venv/bin/keel is the CLI)

run: install ## Start embedded Postgres, migrate, seed the demo, run the pipelines once, serve everything
	$(VENV)/bin/keel dev

lint: install ## ruff (format check + lint), mypy, and the import direction (lint-imports)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

fmt: install ## Format and autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# What the tests need beyond the venv: Debian's Chromium (the report and the docs pages are checked in
# a real browser, driven by Playwright through executable_path; browser downloads are not possible)
# and a Java 17 runtime (the Spark test reads the lake with pyspark in local mode).
CHROMIUM ?= $(shell command -v chromium || command -v chromium-browser)
JAVA ?= $(shell command -v java)
MISSING_DEBS = $(if $(CHROMIUM),,chromium) $(if $(JAVA),,openjdk-17-jre-headless)
test-tools: ## Install what the tests need beyond Python (Debian's chromium and Java 17; as root, else says how)
	@if [ -n "$(strip $(MISSING_DEBS))" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's $(strip $(MISSING_DEBS)) for the browser and Spark tests"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(strip $(MISSING_DEBS)) >/dev/null; \
	  else \
	    echo "The tests need Debian's $(strip $(MISSING_DEBS)): run  sudo apt-get install -y $(strip $(MISSING_DEBS))  and then make test again" >&2; \
	    exit 1; \
	  fi; \
	fi

# LAYER=unit|api|pipelines|e2e runs one layer of the suite (the markers of pyproject.toml).
LAYER ?=
test: lint test-tools ## Lint, type-check and run the suite (own Postgres); LAYER=unit|api|pipelines|e2e: one layer
	$(VENV)/bin/pytest $(if $(LAYER),-m $(LAYER)) $(PYTEST_ARGS)

# dbt by hand on the current lake (KEEL_LAKE_URL, default .keel/lake) into .keel/dbt-dev.duckdb, never
# the served warehouse: make dbt ARGS="build -s stg_events+"; make dbt ARGS="test"; make dbt ARGS="docs generate"
ARGS ?= build
dbt: install ## Run dbt (ARGS="build", "test -s org_health"…) on the current lake, into .keel/dbt-dev.duckdb
	$(VPY) -m warehouse.build $(ARGS)

bench: install ## Run the benchmark programs under bench/, each beside its same-run baseline
	@for b in bench/bench_*.py; do echo "== $$b"; $(VPY) $$b || exit 1; done

lock: | $(UV) ## Re-resolve requirements.lock from pyproject.toml
	$(UV) pip compile pyproject.toml --extra dev --generate-hashes --no-emit-index-url --python-version 3.11 -o requirements.lock

clean: ## Remove the environment and local data (.venv/, .keel/)
	rm -rf $(VENV) .keel
