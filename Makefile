# Everything a person or CI runs. `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# What is installed: the gateway with the demo's broker (`demo` extra), or with the dev tools too.
DEMO_STAMP ?= $(VENV)/.installed-demo
DEV_STAMP  ?= $(VENV)/.installed-dev
DEMO_ARGS  ?=

# The lowest versions pyproject allows, in a venv of their own, and the tests that exercise them.
FLOORS ?= .venv-floors
FLOOR_TESTS ?= tests/test_decode_json.py tests/test_decode_senml.py tests/test_decode_bare.py \
	tests/test_decode_mapping.py tests/test_config.py tests/test_transforms.py \
	tests/test_sinks_files.py tests/test_sinks_dead_letter.py tests/test_e2e_delivery.py \
	tests/test_e2e_source.py tests/test_e2e_protocols.py tests/test_e2e_tls.py \
	tests/test_compaction.py tests/test_compaction_readers.py tests/test_audit.py tests/test_top.py

.PHONY: help install install-demo system-deps test test-floors faults lint run demo bench \
	bench-compaction bench-decode bench-dedupe clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/python:
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || ./scripts/system-deps.sh venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[demo]'
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,demo]'
	touch $@ $(DEMO_STAMP)

install: $(DEV_STAMP) ## create .venv with the gateway, the demo's broker and the dev tools

install-demo: $(DEMO_STAMP) ## create .venv with the gateway and the demo's broker only

system-deps: ## install mosquitto, mosquitto-clients, prometheus (promtool) if missing
	./scripts/system-deps.sh

test: system-deps install lint ## lint, the whole test suite (real Mosquitto, real files), test-floors
	$(BIN)/pytest -q
	$(MAKE) test-floors

test-floors: system-deps install ## the lowest dependency versions pyproject allows, and the tests that use them
	$(BIN)/uv venv -q --allow-existing -p $(BIN)/python $(FLOORS)
	$(BIN)/uv pip install -q -p $(FLOORS)/bin/python --resolution lowest-direct -e '.[dev,demo]'
	$(FLOORS)/bin/python -m pytest -q -p no:cacheprovider $(FLOOR_TESTS)

faults: system-deps install ## the reliability matrix (~4 min): writes benchmarks/RELIABILITY.md (+ results/reliability.json) and README's table
	$(BIN)/pytest -q -m faults --reliability-report=benchmarks/RELIABILITY.md tests
	$(BIN)/python -m tests.support.reliability benchmarks/RELIABILITY.md README.md

lint: install ## ruff (lint and format) and mypy
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	$(BIN)/mypy gateway simulators harness benchmarks

demo: install-demo ## embedded broker + 200 simulated devices + gateway + metrics; Ctrl-C prints the audit (DEMO_ARGS=...)
	$(BIN)/gateway demo $(DEMO_ARGS)

run: system-deps install-demo ## run the gateway against a local Mosquitto on 127.0.0.1:1883
	./scripts/run-local.sh

bench: system-deps install ## gateway vs mosquitto_sub: throughput, latency, memory, scale-out (~9 min; BENCH_ARGS=--quick)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

bench-compaction: install ## compact 1M readings to Parquet: seconds, peak RSS, bytes before and after (~1 min)
	$(BIN)/python -m benchmarks.compaction

bench-decode: install ## CPU per reading: mappings and presets against the json format (~1 min)
	$(BIN)/python -m benchmarks.decode
bench-dedupe: system-deps install ## storing once: check µs per reading, bytes per identity, start-up seeded with 1M readings (~1 min)
	$(BIN)/python -m benchmarks.dedupe

clean:
	rm -rf $(VENV) $(FLOORS) data demo-data .pytest_cache .ruff_cache
