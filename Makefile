# Everything a person or CI runs. `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help install system-deps test lint run demo bench bench-compaction clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || ./scripts/system-deps.sh venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,demo]'
	touch $(STAMP)

install: $(STAMP) ## create .venv with the gateway and its dev tools

system-deps: ## install mosquitto, mosquitto-clients, prometheus (promtool) if missing
	./scripts/system-deps.sh

test: system-deps install ## run the whole test suite (real Mosquitto, real files)
	$(BIN)/pytest -q

lint: install ## ruff
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

demo: install ## embedded broker + 200 simulated devices + gateway + metrics; Ctrl-C prints the audit
	$(BIN)/gateway demo

run: system-deps install ## run the gateway against a local Mosquitto on 127.0.0.1:1883
	./scripts/run-local.sh

bench: system-deps install ## gateway vs mosquitto_sub: throughput, latency, memory, scale-out (~9 min; BENCH_ARGS=--quick)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

bench-compaction: install ## compact 1M readings to Parquet: seconds, peak RSS, bytes before and after (~1 min)
	$(BIN)/python -m benchmarks.compaction

clean:
	rm -rf $(VENV) data demo-data .pytest_cache .ruff_cache
