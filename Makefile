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

.PHONY: serve test lint bench ingest clean system-deps

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

# Debian packages: Tesseract for OCR (the app's, and the tests'), and a PostgreSQL server
# for the tests (the text index's second backend; they start their own in a temporary
# folder). Installed once, with sudo unless root.
SYSTEM_PKGS := tesseract-ocr tesseract-ocr-eng postgresql
system-deps:
	@{ command -v tesseract && ls /usr/lib/postgresql/*/bin/initdb; } >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q $(SYSTEM_PKGS); }

test: lint system-deps
	$(BIN)/pytest

bench: $(BIN)/.installed
	$(BIN)/python scripts/bench.py

# make ingest DIR=~/Pictures [ARGS=--ids-from-filenames]
ingest: $(BIN)/.installed
	$(BIN)/python scripts/ingest.py $(DIR) $(ARGS)

clean:
	rm -rf $(VENV) data
