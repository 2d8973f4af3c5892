# Two commands do all the setup on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
DEMO_OUT ?= cnnviz-demo

.PHONY: demo test lint typecheck unit install dev clean browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Runtime install (the demo needs nothing more).
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -q -c constraints.txt -e .
	touch $@

# Development install: runtime + test tools + reference implementations.
$(VENV)/.dev-installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
dev: $(VENV)/.dev-installed

demo: $(VENV)/.installed
	$(BIN)/cnnviz report --demo --out $(DEMO_OUT)
	@echo "Open $(DEMO_OUT)/index.html in a browser."


lint: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/ruff format --check src tests examples benchmarks

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

# Plain pytest, so a developer's own `pytest` runs the same suite: tests/conftest.py does all the
# isolation (offline, empty TORCH_HOME, shapes_vgg11 cached once in build/test-cache, never ~/.cache).
unit: $(VENV)/.dev-installed browser
	$(BIN)/python -m pytest --durations=15

# Headless Chromium for the report-rendering test (Debian's package). Best effort: when it
# cannot be installed, that one test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "chromium could not be installed; the browser test will be skipped"

test: lint typecheck unit

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache
