# The two README commands: `make serve` and `make test`. Both set up the virtual environment
# on first use (and again when pyproject.toml changes).
VENV ?= .venv
BIN := $(VENV)/bin
export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE := disabled
export HF_HUB_OFFLINE := 1
# HAProxy (shipped with ray[serve]) in front of the ingress instead of the Python proxy: it
# saves ~10 ms per request on 2 cores (scripts/bench.py measures the whole path).
export RAY_SERVE_ENABLE_HA_PROXY := 1

.PHONY: serve test lint bench ingest clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

serve: $(BIN)/.installed
	$(BIN)/serve run configs/serve.yaml

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

bench: $(BIN)/.installed
	$(BIN)/python scripts/bench.py

# make ingest DIR=~/Pictures [ARGS=--ids-from-filenames]
ingest: $(BIN)/.installed
	$(BIN)/python scripts/ingest.py $(DIR) $(ARGS)

clean:
	rm -rf $(VENV) data
