"""Shared pytest configuration: the crash suite's size; integration tests need a broker."""

from __future__ import annotations

import pytest


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
