# icefield: one entry point. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Two installs: what the demo needs (icefield and its core dependencies) and what the tests, lint and
# benchmarks need besides (every extra: the PostgreSQL drivers, pyspark, confluent-kafka, Great
# Expectations, the test tools). The full install also satisfies the core one.
CORE_STAMP := $(VENV)/.icefield-core
STAMP := $(VENV)/.icefield-test
DEMO_DIR ?= build/demo
PYTEST_ARGS ?= --durations=30

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(CORE_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e .
	touch $(CORE_STAMP)

AIRFLOW_CONSTRAINTS := constraints/airflow-3.3.2-py3.11.txt

$(STAMP): pyproject.toml $(AIRFLOW_CONSTRAINTS) | $(BIN)/python
	$(BIN)/pip install -e ".[postgres,spark,kafka,hive,trino,airflow,lineage,dev,gx]" -c $(AIRFLOW_CONSTRAINTS)
	touch $(STAMP) $(CORE_STAMP)

.PHONY: venv
venv: $(STAMP) ## Create .venv and install icefield with every extra and its test tools

.PHONY: demo
demo: $(CORE_STAMP) ## Run the shop demo on the embedded default (SQLite catalog, local warehouse, DuckDB); installs the core only
	$(BIN)/icefield demo --dir $(DEMO_DIR) --fresh

.PHONY: test
test: $(STAMP) ## Run every test (starts PostgreSQL, Kafka, Kafka Connect, an Iceberg REST catalog, a Hive Metastore, an S3 server (versitygw), Trino 476, Airflow 3 and VictoriaLogs natively; fetches jars and the Trino server with Maven, builds versitygw and VictoriaLogs once with Go; installs icefield alone in a clean venv)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

.PHONY: test-fast
test-fast: $(STAMP) ## Run the tests that need no server
	$(BIN)/python -m pytest -m "not postgres and not kafka and not connect and not spark and not rest and not hive and not s3 and not airflow and not trino and not prometheus and not victorialogs and not slow and not packaging" $(PYTEST_ARGS)

.PHONY: test-long
test-long: $(STAMP) ## Run the long reliability variants
	ICEFIELD_LONG=1 $(BIN)/python -m pytest tests/reliability $(PYTEST_ARGS)

.PHONY: lint
lint: $(STAMP) ## ruff, mypy, and the layers of the packages (.importlinter)
	$(BIN)/ruff check src tests stack bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo

.PHONY: bench
bench: $(STAMP) ## Run the benchmarks beside their peers (BENCH_SCALE scales them)
	$(BIN)/python -m bench

.PHONY: stack-up
stack-up: $(STAMP) ## Start native services: make stack-up SERVICES="postgres kafka connect rest hive s3 spark trino airflow pushgateway alertmanager prometheus victorialogs"
	$(BIN)/python -m stack up $(SERVICES)

.PHONY: stack-down
stack-down: $(STAMP) ## Stop the native services started by stack-up
	$(BIN)/python -m stack down $(SERVICES)

.PHONY: stack-status
stack-status: $(STAMP) ## Show which native services run
	$(BIN)/python -m stack status

.PHONY: clean
clean: ## Remove build outputs and the demo project (keeps .venv)
	rm -rf build .pytest_cache
