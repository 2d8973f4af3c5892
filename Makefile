# Two commands do all the setup on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
DEMO_OUT ?= cnnviz-demo

.PHONY: demo test checks lint typecheck unit test-cache install dev clean browser

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
# One worker per core (pytest-xdist); each uses one torch thread (conftest).
unit: $(VENV)/.dev-installed browser
	$(BIN)/python -m pytest -n auto --durations=15

# The tests' shapes_vgg11 and shapes_vgg11_watermark (each trained once on one thread, 1.5–4 min,
# then cached in build/test-cache, or in $$CNNVIZ_CACHE when set, as in conftest). `make test`
# trains them while ruff, mypy and the first tests run; tests that need one wait on its lock file.
test-cache: $(VENV)/.dev-installed
	CNNVIZ_CACHE="$${CNNVIZ_CACHE:-$(CURDIR)/build/test-cache}" CNNVIZ_OFFLINE=1 $(BIN)/python -c \
	  "from cnnviz.models.shapes_vgg11 import load_shapes_vgg11; load_shapes_vgg11(); \
	  from cnnviz.models.shapes_watermark import load_shapes_vgg11_watermark as load; load()"

checks:
	@$(MAKE) --no-print-directory lint && $(MAKE) --no-print-directory typecheck && \
	  $(MAKE) --no-print-directory unit

# Headless Chromium for the report-rendering test (Debian's package). Best effort: when it
# cannot be installed, that one test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "chromium could not be installed; the browser test will be skipped"

test: $(VENV)/.dev-installed browser
	@$(MAKE) --no-print-directory -j2 checks test-cache

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache
