# The two commands: `make demo` and `make test`. Both set everything up on a fresh machine
# (virtualenv, Python dependencies, Apache Kafka from Maven Central) and cache it for the next run.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
EVENTS ?= 20000
QUICK  ?=

.PHONY: setup demo test lint typecheck unit integration bench kafka-assemble chromium clean

setup: $(STAMP) kafka-assemble chromium

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

kafka-assemble: $(STAMP)
	$(PY) -c 'from deploy.kafka.launcher import LocalKafka; print("kafka classpath:", LocalKafka(".creditflow").assemble())'

# Headless Chromium renders the HTML report in its test (Debian's package; needs root or sudo once).
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] && echo "" || echo sudo ); \
	  $$SUDO apt-get install -y --no-install-recommends chromium || \
	  { $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends chromium; }; }

demo: setup
	$(VENV)/bin/creditflow demo --events $(EVENTS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(VENV)/bin/pytest tests/unit -q

integration: setup
	$(VENV)/bin/pytest tests/integration tests/benchmarks -q

test: setup lint typecheck
	$(VENV)/bin/pytest tests -q -p no:cacheprovider

bench: setup
	$(PY) -m tests.benchmarks.run $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) .creditflow .mypy_cache .ruff_cache .pytest_cache
