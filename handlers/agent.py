"""The simulated service of a handler role, as the call and command types a HandlerLoop runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sagastream.core.topology import Topology
from sagastream.examples import SERVICES, Behaviour
from sagastream.examples.ledger import IdempotencyLedger
from sagastream.runtime.settings import Settings


def ledger_path(settings: Settings, role: str) -> Path:
    """Where the simulated external service of a role keeps its idempotency ledger."""
    return settings.data_dir / "external" / f"{settings.topic_prefix}{role}.sqlite"


def build_handler(
    settings: Settings, topology: Topology, role: str
) -> tuple[Callable[..., Any], frozenset[str]]:
    """The simulated service of a role: its call (command_type, record) -> (result_type, fields)
    and the command types it handles."""
    if role not in topology.handlers:
        raise ValueError(
            f"{settings.topology_file}: handlers: no role {role!r}; "
            f"declared: {', '.join(topology.handlers) or 'none'}"
        )
    service_type = SERVICES.get(role)
    if service_type is None:
        raise ValueError(
            f"handler role {role!r} has no simulated service; known: {', '.join(SERVICES)}"
        )
    behaviour = Behaviour(
        settings.handler_latency_ms, settings.handler_failure_rate, settings.handler_seed
    )
    service = service_type(IdempotencyLedger(ledger_path(settings, role)), behaviour)
    return service.handle, frozenset(service.operations)
