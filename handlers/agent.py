"""The stateless handler agent: command in, idempotent side effect, result event out."""

from __future__ import annotations

import logging
from typing import Any

from faust.types import EventT

from handlers import SERVICES, Behaviour
from handlers.ledger import IdempotencyLedger
from streams.runtime.app import Runtime

log = logging.getLogger("sagastream.handlers")


def ledger_path(rt: Runtime, role: str) -> Any:
    """Where the simulated external service of a role keeps its idempotency ledger."""
    return rt.settings.data_dir / "external" / f"{rt.settings.topic_prefix}{role}.sqlite"


def install_handler(rt: Runtime, role: str) -> None:
    """Register the agent of one handler role (payment, inventory, shipping, notification)."""
    spec = rt.topology.handlers[role]
    s = rt.settings
    behaviour = Behaviour(s.handler_latency_ms, s.handler_failure_rate, s.handler_seed)
    service = SERVICES[role](IdempotencyLedger(ledger_path(rt, role)), behaviour)

    async def handle(event: EventT) -> None:
        decoded = await rt.decode(event)
        if decoded is None:
            return
        command_type, record = decoded
        rt.metrics.consumed.labels(role, command_type).inc()
        if command_type not in service.operations:
            await rt.dead_letter(
                event, "unsupported_command", f"{role} cannot handle {command_type}"
            )
            return
        result_type, fields = await service.handle(command_type, record)
        meta = record["meta"]
        await rt.emit(result_type, bytes(event.key or b""), fields, meta, meta["attempt"])

    @rt.app.agent(rt.topic(spec.consumes), name=f"{role}-handler")
    async def run(stream: Any) -> None:
        async for event in stream.events():
            try:
                await handle(event)
            except Exception as exc:  # a bad command must not stop the worker
                log.exception("%s handler failed on %s", role, event.message.tp)
                await rt.dead_letter(event, "processing_error", f"{type(exc).__name__}: {exc}")
