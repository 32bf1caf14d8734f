# The two README commands: `make serve` and `make test`. Both set up the virtual environment
# on first use (and again when pyproject.toml changes).
VENV ?= .venv
BIN := $(VENV)/bin
export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE := disabled
export HF_HUB_OFFLINE := 1
# HAProxy (shipped with ray[serve]) in front of the ingress instead of the Python proxy:
# fewer ms per request (docs/architecture.md; the bench's http section measures it).
export RAY_SERVE_ENABLE_HA_PROXY := 1

.PHONY: serve test lint bench ingest clean system-deps ocr-deps

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# scripts/serve.py: the preflight (it stops here, with the reason, a config that exposes the
# API without keys or misspells an option), then `serve run`; Ctrl-C or SIGTERM stops every
# process of the app, HAProxy included, so that the next start finds the port free.
CONFIG ?= configs/serve.yaml
serve: $(BIN)/.installed
	$(BIN)/python scripts/serve.py $(CONFIG)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Debian packages, installed once with apt-get (sudo unless root), for the tests: DejaVu fonts,
# Tesseract (the OCR engine besides the default rapidocr, which ships its models in its Python
# package), a PostgreSQL server (the text index's second backend; the tests start their own
# in a temporary folder) and Chromium (the page's browser tests drive it with Playwright,
# whose own browser downloads are not used). `make ocr-deps` installs Tesseract alone, for
# an app configured with the ocr option `engine: tesseract`; without it, that app runs with
# the ocr feature reported unavailable in /health.
OCR_PKGS := tesseract-ocr tesseract-ocr-eng
# DejaVu: the fonts the OCR tests and benches render text with.
FONT_PKGS := fonts-dejavu-core fonts-dejavu-extra
TEST_PKGS := $(OCR_PKGS) $(FONT_PKGS) postgresql chromium
APT = SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); $$SUDO apt-get update -q && $$SUDO apt-get install -y -q
system-deps:
	@{ command -v tesseract && ls /usr/lib/postgresql/*/bin/initdb && command -v chromium \
	  && ls /usr/share/fonts/truetype/dejavu/DejaVuSansCondensed.ttf; } \
	  >/dev/null 2>&1 || { $(APT) $(TEST_PKGS); }

ocr-deps:
	@command -v tesseract >/dev/null 2>&1 || { $(APT) $(OCR_PKGS); } \
	  || echo "Tesseract not installed: OCR stays unavailable (apt-get install $(OCR_PKGS))"

test: lint system-deps
	$(BIN)/pytest
	$(BIN)/pytest -m own_ray

bench: $(BIN)/.installed
	$(BIN)/python -m bench

# make ingest DIR=~/Pictures [ARGS=--ids-from-filenames]; with API keys: IMGSEARCH_API_KEY=<write key>
ingest: $(BIN)/.installed
	$(BIN)/python scripts/ingest.py $(DIR) $(ARGS)

clean:
	rm -rf $(VENV) data
