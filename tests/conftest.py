"""Shared pytest configuration: the crash suite's size; integration tests need a broker; what
one run's processes share under pytest-xdist (a directory, the local services started, the
lines said for the summary) and the `serial` tests that never run beside others."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from sagastream.local.proc import flock

# the controller's run directory, handed to each xdist worker in its workerinput
RUN_DIR_KEY = "sagastream_run_dir"
RUN_DIR = pytest.StashKey[Path]()
STARTED_SUFFIX = ".started"
SAID_FILE = "said.txt"
SERIAL_UNDER_XDIST = (
    "{test} is marked `serial`: it stops or restarts the broker or registry every test of "
    "this run shares, so it never runs on an xdist worker beside others. Run it without -n "
    "(`pytest -m serial`); `make test` runs `-m 'not serial'` on workers, then `-m serial` alone."
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sagastream")
    group.addoption(
        "--crash-orders", default="500", help="orders sent through the crash suite (default 500)"
    )
    group.addoption(
        "--crash-kills",
        default="3",
        help="worker SIGKILLs in the crash suite; 2/3 orchestrator, 1/3 handlers (default 3)",
    )


def _on_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    if not _on_xdist_worker(config):
        config.stash[RUN_DIR] = Path(tempfile.mkdtemp(prefix="sagastream-run-"))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist, in the controller: every worker learns the run's directory."""
    node.workerinput[RUN_DIR_KEY] = str(node.config.stash[RUN_DIR])


def run_dir(config: pytest.Config) -> Path:
    """A directory shared by every process of this pytest run (the controller's)."""
    if _on_xdist_worker(config):
        return Path(config.workerinput[RUN_DIR_KEY])  # type: ignore[attr-defined]
    return config.stash[RUN_DIR]


@contextlib.contextmanager
def run_lock(config: pytest.Config, name: str) -> Any:
    """Held by one process of the run at a time (a file lock in the run's directory)."""
    with flock(run_dir(config) / f"{name}.lock"):
        yield


def note_started(config: pytest.Config, service: str) -> None:
    """This run started `service`: the controller stops it after the last worker is done."""
    (run_dir(config) / f"{service}{STARTED_SUFFIX}").touch()


def say_in_summary(config: pytest.Config, line: str) -> None:
    """A line for the summary that the controller prints, whichever process said it."""
    with run_lock(config, "said"), (run_dir(config) / SAID_FILE).open("a") as said:
        said.write(line + "\n")


def _stop_local_service(service: str) -> None:
    """Stop a local service a test fixture started, as its fixture named it."""
    if service == "local-kafka":
        from sagastream.local import kafka as localkafka

        localkafka.stop(log=lambda m: None)
    elif service == "local-registry":
        from sagastream.local import registry as localregistry

        localregistry.stop(log=lambda m: None)
    else:
        raise ValueError(f"tests/conftest.py: no way to stop {service!r}, noted as started")


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if _on_xdist_worker(config):
        return
    said = run_dir(config) / SAID_FILE
    lines = said.read_text().splitlines() if said.exists() else []
    for line in dict.fromkeys(lines):  # each worker says the same: once
        terminalreporter.write_line(line)


def pytest_unconfigure(config: pytest.Config) -> None:
    """In the controller, once every worker is done: stop what the run started."""
    if _on_xdist_worker(config) or RUN_DIR not in config.stash:
        return
    directory = config.stash[RUN_DIR]
    try:
        for note in sorted(directory.glob(f"*{STARTED_SUFFIX}")):
            _stop_local_service(note.name.removesuffix(STARTED_SUFFIX))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# A test's time bound (pyproject's `timeout`) covers its fixtures' setup: the first test that
# reads Jaeger may wait for its cold Go build (CI's background build, or the fixture's own).
JAEGER_COLD_BUILD_TIMEOUT_S = 3600


def _reads_jaeger(item: pytest.Item) -> bool:
    return "jaeger" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from sagastream.local import jaeger as localjaeger

    jaeger_built = bool(localjaeger.status()["built"])
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
        if _reads_jaeger(item) and not jaeger_built:
            item.add_marker(pytest.mark.timeout(JAEGER_COLD_BUILD_TIMEOUT_S))
    if _on_xdist_worker(config):
        # the long integration tests first, the many short unit tests after: these fill the
        # workers' last minutes instead of one long test running alone at the end. Tests that
        # read Jaeger go last: in CI its build may still be running beside the first ones.
        items.sort(
            key=lambda item: (_reads_jaeger(item), item.get_closest_marker("integration") is None)
        )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("serial") and _on_xdist_worker(item.config):
        pytest.fail(SERIAL_UNDER_XDIST.format(test=item.nodeid), pytrace=False)
