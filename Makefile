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
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: help install install-dev run test lint fmt bench lock clean test-tools node-deps dbt

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(UV):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Keel needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

# One lock file (uv.lock, universal): `make run` installs the runtime dependencies only; `make test`,
# `make lint` and `make bench` add the dev extra (Spark, Playwright, the test clients). --inexact: a
# later runtime sync never removes what the tests installed.
$(STAMP): uv.lock pyproject.toml | $(UV)
	$(UV) sync --quiet --frozen --inexact --python $(PYTHON)
	touch $(STAMP)

$(DEV_STAMP): uv.lock pyproject.toml | $(UV)
	$(UV) sync --quiet --frozen --inexact --extra dev --python $(PYTHON)
	touch $(STAMP) $(DEV_STAMP)

install: $(STAMP) ## Create the environment in .venv/ from uv.lock, runtime only (.venv/bin/keel is the CLI)

install-dev: $(DEV_STAMP) ## The environment with the dev extra too (what the tests, lint and bench need)

run: install ## Start embedded Postgres, migrate, seed the demo, run the pipelines once, serve everything
	$(VENV)/bin/keel dev

lint: install-dev ## ruff (format check + lint), mypy, and the import direction (lint-imports)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

fmt: install-dev ## Format and autofix
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

# The official JavaScript clients the tests drive (Segment's Node and browser SDKs, OpenFeature's
# server and web SDKs with their OFREP providers), pinned by tests/node/package-lock.json: `npm ci`
# into tests/node/node_modules, again only when the lock (or package.json) changed, as the venv's stamp.
NODE_DIR := tests/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed
$(NODE_STAMP): $(NODE_DIR)/package-lock.json $(NODE_DIR)/package.json
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  echo "The tests drive the official JavaScript SDKs and need Node.js 20+ and npm: install them (Debian: sudo apt-get install -y nodejs npm) and then make test again" >&2; \
	  exit 1; }
	@node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' || { \
	  echo "The JavaScript client tests need Node.js 20 or newer; this is $$(node --version)" >&2; exit 1; }
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

node-deps: $(NODE_STAMP) ## Install the JavaScript clients the tests drive (npm ci in tests/node, from its lock)

# LAYER=unit|api|pipelines|e2e runs one layer of the suite (the markers of pyproject.toml).
# The suite runs on every core (pytest-xdist): each worker starts its own Postgres and Prefect server
# once, on free ports. Each worker starts with half the tests in order (the heaviest layers first,
# tests/conftest.py) and an idle one takes half of what another has left (`--dist worksteal`):
# a file's tests mostly stay on one worker, and neither ends waiting alone (`load` handed out
# fixed shares: one worker held the long tests while the other sat idle, 18% of the run).
# `loadfile` would hand schemathesis's per-operation tests over as one. WORKERS=0: one process.
LAYER ?=
WORKERS ?= auto
test: lint test-tools node-deps ## Lint, type-check and run the suite (own Postgres); LAYER=unit|api|pipelines|e2e: one layer
	$(VENV)/bin/pytest -n $(WORKERS) --dist worksteal $(if $(LAYER),-m $(LAYER)) $(PYTEST_ARGS)

# dbt by hand on the current lake (KEEL_LAKE_URL, default .keel/lake) into .keel/dbt-dev.duckdb, never
# the served warehouse: make dbt ARGS="build -s stg_events+"; make dbt ARGS="test"; make dbt ARGS="docs generate"
ARGS ?= build
dbt: install ## Run dbt (ARGS="build", "test -s org_health"…) on the current lake, into .keel/dbt-dev.duckdb
	$(VPY) -m warehouse.build $(ARGS)

bench: install-dev ## Run the benchmark programs under bench/, each beside its same-run baseline
	@for b in bench/bench_*.py; do echo "== $$b"; $(VPY) $$b || exit 1; done

lock: | $(UV) ## Re-resolve uv.lock from pyproject.toml (runtime and dev extra)
	$(UV) lock --python 3.11

clean: ## Remove the environment and local data (.venv/, .keel/, tests/node/node_modules/)
	rm -rf $(VENV) .keel $(NODE_DIR)/node_modules
