# The two quick-start commands: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test unit integration lint broker-start broker-stop clean

# The package `sagastream` maps onto streams/ and handlers/ (see pyproject.toml). A strict
# editable install links each file into build/__editable__*, which mypy can follow; it is
# redone when a package folder gains or loses a file.
PACKAGE_DIRS := $(shell find streams handlers schemas -type d -not -name __pycache__)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml $(PACKAGE_DIRS) | $(BIN)/python
	$(BIN)/pip install --quiet --config-settings editable_mode=strict -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/sagastream demo --orders 200

test: install
	$(BIN)/pytest

unit: install
	$(BIN)/pytest tests/unit

integration: install
	$(BIN)/pytest tests/integration

lint: install
	$(BIN)/ruff check streams handlers tests
	$(BIN)/mypy -p sagastream
	$(BIN)/sagastream schemas check

broker-start: install
	$(BIN)/sagastream broker start

broker-stop: install
	$(BIN)/sagastream broker stop

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
