# One command runs the server, one runs the tests (see README.md).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= data
# The browser libraries (Leaflet, for the console's map) come from the npm registry.
NODE_PACKAGES := nodejs npm
SYSTEM_PACKAGES := redis-server libopus0
TEST_SYSTEM_PACKAGES := redis-server libopus0 opus-tools ffmpeg sox espeak-ng chromium chromium-driver iproute2 coturn

.PHONY: run test lint bench screenshots system-deps test-system-deps node-system-deps vendor clean

# Installs missing Debian packages when running as root; otherwise names them.
define ensure_packages
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing system packages:$$missing"; \
	    echo "install them with: sudo apt-get install$$missing"; exit 1; \
	  fi; \
	fi
endef

system-deps:
	$(call ensure_packages,$(SYSTEM_PACKAGES))

test-system-deps:
	$(call ensure_packages,$(TEST_SYSTEM_PACKAGES))

node-system-deps:
	$(call ensure_packages,$(NODE_PACKAGES))

# Browser libraries the server serves itself (never a CDN), at the versions package-lock.json
# pins. A Node.js that brought its own npm (not Debian's packages) is used as it is.
node_modules/.installed: package.json package-lock.json
	@command -v npm >/dev/null 2>&1 || $(MAKE) --no-print-directory node-system-deps
	npm ci --ignore-scripts --no-audit --no-fund
	touch $@

vendor: node_modules/.installed

$(BIN)/ptt-server: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

# The bench extra too: `make test` runs a smoke version of every benchmark.
$(VENV)/.test-deps: $(BIN)/ptt-server
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@

run: system-deps $(BIN)/ptt-server vendor
	$(BIN)/ptt-server --data-dir $(DATA_DIR) serve $(SERVE_ARGS)

PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# Network tests stay on loopback: as root, the suite runs in a private network namespace that
# has only `lo`, so nothing a test starts can reach another address.
test: test-system-deps $(VENV)/.test-deps vendor
	@if [ "$$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then \
	  echo "running the tests in a private network namespace (loopback only)"; \
	  unshare -n sh -c 'ip link set lo up && exec $(PYTEST)'; \
	else \
	  $(PYTEST); \
	fi

lint: $(VENV)/.test-deps
	$(BIN)/ruff check ptt_server client_cli tests bench
	$(BIN)/mypy

# Every benchmark, bounded in time; rewrites docs/performance.md and its plots.
bench: test-system-deps $(VENV)/.test-deps
	$(BIN)/python -m bench.run_all

# Regenerates the page screenshots shown in the README (docs/screenshots/).
screenshots: test-system-deps $(VENV)/.test-deps vendor
	$(BIN)/python client_web/tools/screenshots.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
