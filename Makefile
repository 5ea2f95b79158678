# Everything a person or CI runs. `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# What is installed: the gateway with the demo's broker (`demo` extra), or with the dev tools too.
DEMO_STAMP ?= $(VENV)/.installed-demo
DEV_STAMP  ?= $(VENV)/.installed-dev
DEMO_ARGS  ?=

.PHONY: help install install-demo system-deps test faults-once lint run demo bench bench-compaction bench-dedupe clean

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

test: system-deps install ## run the whole test suite (real Mosquitto, real files)
	$(BIN)/pytest -q

faults-once: system-deps install ## stored once: gateway SIGKILL x10, broker SIGTERM/SIGKILL x10 under load; prints lost and duplicated (~3 min)
	$(BIN)/pytest -m once -q -rP -p no:logging

lint: install ## ruff
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

demo: install-demo ## embedded broker + 200 simulated devices + gateway + metrics; Ctrl-C prints the audit (DEMO_ARGS=...)
	$(BIN)/gateway demo $(DEMO_ARGS)

run: system-deps install-demo ## run the gateway against a local Mosquitto on 127.0.0.1:1883
	./scripts/run-local.sh

bench: system-deps install ## gateway vs mosquitto_sub: throughput, latency, memory, scale-out (~9 min; BENCH_ARGS=--quick)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

bench-compaction: install ## compact 1M readings to Parquet: seconds, peak RSS, bytes before and after (~1 min)
	$(BIN)/python -m benchmarks.compaction

bench-dedupe: system-deps install ## storing once: check µs per reading, bytes per identity, start-up seeded with 1M readings (~1 min)
	$(BIN)/python -m benchmarks.dedupe

clean:
	rm -rf $(VENV) data demo-data .pytest_cache .ruff_cache
