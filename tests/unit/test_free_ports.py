"""sagastream.local.proc.free_ports, which the bench's trade-off phase uses for a worker's
metrics port (and the integration tests' free_port, free_broker_port and local cluster, whose
range tests/unit/test_own_ports.py checks): every offset free, below the ephemeral range."""

from __future__ import annotations

import socket
from pathlib import Path

from sagastream.local.proc import free_ports

RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_low() -> int:
    """The first port Linux hands to outgoing connections (32768 unless configured)."""
    return int(RANGE_FILE.read_text().split()[0]) if RANGE_FILE.exists() else 32768


def _binds(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_every_offset_of_a_cluster_is_free_and_below_the_ephemeral_range() -> None:
    offsets = [0, 1, 2, 100, 101, 102]
    firsts = [free_ports("127.0.0.1", offsets) for _ in range(20)]
    assert [f for f in firsts if f + max(offsets) >= _ephemeral_low()] == []
    assert all(_binds(firsts[0] + offset) for offset in offsets)


def test_a_port_held_by_another_socket_is_never_chosen() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", free_ports("127.0.0.1")))
        taken = held.getsockname()[1]
        assert taken not in {free_ports("127.0.0.1") for _ in range(200)}
