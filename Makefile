# The two quick-start commands: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo demo-stop test unit integration tools lint broker-start broker-stop clean

# The package `sagastream` maps onto streams/ and handlers/ (see pyproject.toml). A strict
# editable install links each file into build/__editable__*, which mypy can follow; it is
# redone when a package folder gains or loses a file.
PACKAGE_DIRS := $(shell find streams handlers schemas -type d -not -name __pycache__)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml $(PACKAGE_DIRS) | $(BIN)/python
	$(BIN)/pip install --quiet --config-settings editable_mode=strict -e '.[dev,console]'
	touch $(STAMP)

install: $(STAMP)

# the demo leaves a console on its sagas running (it prints where); `make demo-stop` ends it
demo: install
	$(BIN)/sagastream demo --orders 200 --console

demo-stop: install
	$(BIN)/sagastream demo --stop

# `make test` runs every test, unit and integration, in two passes: all but the `serial` ones
# on TEST_WORKERS pytest-xdist workers, then the `serial` ones (they restart the broker the
# others share) alone. The second pass runs even if the first failed; a pass that selects
# nothing (exit 5) is no failure unless neither selects anything. TESTS narrows both to some
# paths; PYTEST_ARGS is added to both; MARKS, a marker expression, narrows both (CI's
# testcontainers pass gives "not once"). JUNIT, a path prefix, makes the passes write JUnit XML
# reports to JUNIT-parallel.xml and JUNIT-serial.xml (CI's, to name the failed tests at its end).
TEST_WORKERS ?= 2
TESTS ?=
PYTEST_ARGS ?= --durations=25
MARKS ?=
JUNIT ?=
marks = $(if $(MARKS), and ($(MARKS)),)
junit = $(if $(JUNIT),--junitxml=$(JUNIT)-$(1).xml,)

test: install tools
	parallel=0; serial=0; \
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal -m "not serial$(marks)" $(PYTEST_ARGS) \
		$(call junit,parallel) \
		$(TESTS) || parallel=$$?; \
	$(BIN)/pytest -m "serial$(marks)" $(PYTEST_ARGS) $(call junit,serial) $(TESTS) \
		|| serial=$$?; \
	if [ $$parallel = 5 ] && [ $$serial = 5 ]; then exit 5; fi; \
	[ $$parallel = 5 ] && parallel=0; [ $$serial = 5 ] && serial=0; \
	[ $$parallel = 0 ] && exit $$serial; exit $$parallel

unit: install tools
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal tests/unit

# promtool (Debian's prometheus package) for the alert rules' tests, and chromium and
# chromedriver for the console's browser test, installed when missing (scripts/test-tools)
tools:
	scripts/test-tools

integration:
	$(MAKE) test TESTS=tests/integration

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
