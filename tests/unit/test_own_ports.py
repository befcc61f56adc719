"""The ports the integration tests hand to servers of their own lie outside the OS's ephemeral
range, where no client connection can take them before the server binds them."""

from __future__ import annotations

from pathlib import Path

from tests.integration.helpers import free_broker_port, free_port

RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral() -> range:
    """The OS's ephemeral ports (Linux's default where the file is missing)."""
    text = RANGE_FILE.read_text() if RANGE_FILE.exists() else "32768 60999"
    low, high = (int(n) for n in text.split())
    return range(low, high + 1)


def test_a_server_port_is_outside_the_ephemeral_range() -> None:
    ephemeral = _ephemeral()
    assert [p for p in (free_port() for _ in range(50)) if p in ephemeral] == []


def test_a_broker_port_pair_is_outside_the_ephemeral_range() -> None:
    ephemeral = _ephemeral()
    pairs = [free_broker_port() for _ in range(50)]
    assert [p for p in pairs if p in ephemeral or p + 1 in ephemeral] == []
