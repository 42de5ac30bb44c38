# Confide: `make up` starts the native stack and every service; `make test` runs every test
# against the real Kafka broker and PostgreSQL (starting them when they are not running).
SHELL := /bin/bash
.DEFAULT_GOAL := help
STACK_DIR ?= $(CURDIR)/.stack
export CONFIDE_STACK_DIR := $(STACK_DIR)
UV ?= uv
PYTEST_ARGS ?=

.PHONY: help install prerequisites test-prerequisites up down status logs test faults replay test-unit lint format schemas compose-up compose-down bench

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

install: ## install uv when missing, then the Python workspace (uv sync from the committed uv.lock)
	@UV=$(UV) deploy/prerequisites.sh uv
	@$(UV) sync --frozen --quiet

prerequisites: ## install what the stack needs from the machine (JDK, Maven, PostgreSQL) when missing
	@deploy/prerequisites.sh stack

test-prerequisites: ## what the stack needs, and Chromium and poppler-utils for the tests, when missing
	@deploy/prerequisites.sh test

up: install prerequisites ## start PostgreSQL, Kafka and every service; wait until each is ready
	@deploy/stack.sh up

down: ## stop every service, Kafka and PostgreSQL (data is kept in .stack/)
	@deploy/stack.sh down

status: ## what runs, where it listens, where it logs
	@deploy/stack.sh status

logs: ## follow every log of the native stack
	@deploy/stack.sh logs

test: install test-prerequisites ## every test, unit to end-to-end and the fault scenarios, against real Kafka and PostgreSQL (not the erasure journeys)
	@deploy/stack.sh infra-up
	@source $(STACK_DIR)/stack.env && $(UV) run --frozen pytest -m "not faults" $(PYTEST_ARGS); \
	  status=$$?; $(UV) run --frozen python tests/faults/report.py --print; exit $$status

faults: install prerequisites ## the fault scenarios, longer bad-input runs and the erasure journeys; writes docs/reliability.md
	@deploy/stack.sh infra-up
	@source $(STACK_DIR)/stack.env && CONFIDE_SCHEMATHESIS_SECONDS=60 \
	  $(UV) run --frozen pytest tests/faults tests/integration/test_erasure_journey.py $(PYTEST_ARGS); \
	  status=$$?; $(UV) run --frozen python tests/faults/report.py; exit $$status

replay: install ## rebuild audit's trail from offset 0 beside the live one, switched in when caught up
	@source $(STACK_DIR)/stack.env && CONFIDE_SERVICE_NAME=audit \
	  CONFIDE_DATABASE_URL="$$CONFIDE_AUDIT_DATABASE_URL" CONFIDE_KEK_FILE="$(STACK_DIR)/keys/audit.kek.json" \
	  $(UV) run --frozen python -m confide_audit replay

test-unit: install ## only the tests that need no broker or database
	@$(UV) run --frozen pytest -m "not integration" $(PYTEST_ARGS)

lint: install ## ruff, mypy --strict and the import-linter architecture contracts
	@$(UV) run --frozen ruff check .
	@$(UV) run --frozen ruff format --check .
	@$(UV) run --frozen mypy shared/events/src shared/toolkit/src shared/testing/src services/*/src bench
	@$(UV) run --frozen python .ci/lint_imports.py

format: install ## apply ruff's formatting and safe fixes
	@$(UV) run --frozen ruff format .
	@$(UV) run --frozen ruff check --fix .

schemas: install ## regenerate the committed JSON Schemas of the event contract
	@$(UV) run --frozen python -m confide_events.schemas write

bench: install prerequisites ## benchmarks beside their raw baselines on the native stack; writes docs/benchmarks.md
	@deploy/stack.sh infra-up
	@source $(STACK_DIR)/stack.env && $(UV) run --frozen python -m bench $(BENCH_ARGS)

compose-up: ## the same suite on Docker (needs a Docker engine)
	docker compose -f deploy/compose.yaml up --build -d

compose-down: ## stop the Docker suite
	docker compose -f deploy/compose.yaml down
