"""The orchestrator agent: load saga state, call decide, store it, send commands, arm timers."""

from __future__ import annotations

import json
import logging
from typing import Any

from faust.types import EventT

from streams.core.saga import TERMINAL, Event, decide, saga_for
from streams.core.topology import LIFECYCLE_EVENT
from streams.runtime.app import RAW, STORE_OPTIONS, Runtime, now_ms
from streams.runtime.timers import TimerFirer, index_key

log = logging.getLogger("sagastream.orchestrator")


def _dumps(state: dict[str, Any]) -> bytes:
    return json.dumps(state, separators=(",", ":")).encode()


def install_orchestrator(rt: Runtime) -> None:
    """Register the orchestrator agent, its two tables and the timer tick on the runtime's app."""
    topo, app = rt.topology, rt.app
    inputs = topo.orchestrator_inputs()
    partitions = topo.partitions(inputs[0])
    source = app.topic(*[rt.settings.topic(t) for t in inputs], **RAW)
    table_args: dict[str, Any] = {
        "partitions": partitions,
        "default": None,
        "options": dict(STORE_OPTIONS),
        "key_type": bytes,
        "value_type": bytes,
    }
    sagas = app.Table("sagas", help="saga state by saga key", **table_args)
    timer_index = app.Table("timer-index", help="armed timers by due time", **table_args)
    firer = TimerFirer(rt, timer_index, {rt.settings.topic(t) for t in inputs})
    audit = LIFECYCLE_EVENT in topo.events

    async def handle(event: EventT) -> None:
        decoded = await rt.decode(event)
        if decoded is None:
            return
        event_type, record = decoded
        rt.metrics.consumed.labels(rt.role, event_type).inc()
        meta = record.pop("meta")
        key: bytes | None = event.key
        if not key:
            await rt.dead_letter(
                event, "missing_key", f"{event_type} has no message key (saga key)"
            )
            return
        raw = sagas.get(key)
        state = json.loads(raw) if raw else None
        if state is not None:
            definition = (state["saga"], topo.sagas[state["saga"]])
        elif (found := saga_for(topo.sagas, event_type)) is not None:
            definition = found
        else:
            await rt.dead_letter(
                event, "no_saga", f"{event_type} starts no saga and none is running"
            )
            return
        incoming = Event(
            event_type,
            meta["event_id"],
            record,
            attempt=meta["attempt"],
            hop=meta["hop"],
            correlation_id=meta["correlation_id"],
            traceparent=meta["traceparent"],
        )
        decision = decide(definition, state, incoming, now_ms())
        if decision.duplicate:
            return
        new = decision.state
        if new is not None:
            sagas[key] = _dumps(new)
            _sync_timers(timer_index, key, state["timers"] if state else {}, new["timers"])
            parent = {**meta, "correlation_id": new["corr"] or meta["correlation_id"]}
            parent["traceparent"] = new["tp"] or meta["traceparent"]
        else:
            parent = meta
        for command in decision.commands:
            await rt.emit(command.event_type, key, command.fields, parent, command.attempt)
        if audit and new is not None:
            for what, step in decision.lifecycle:
                entry = {
                    "saga_type": new["saga"],
                    "what": what,
                    "step": step,
                    "status": new["status"],
                }
                await rt.emit(LIFECYCLE_EVENT, key, entry, parent, 1)
        if decision.dead_letter:
            await rt.dead_letter(event, "saga", decision.dead_letter)
        if (
            new is not None
            and new["status"] in TERMINAL
            and (state is None or state["status"] not in TERMINAL)
        ):
            rt.metrics.outcomes.labels(new["saga"], new["status"]).inc()
            rt.metrics.saga_seconds.labels(new["saga"], new["status"]).observe(
                (new["ended"] - new["started"]) / 1000
            )

    @app.agent(source, name="orchestrator")
    async def orchestrate(stream: Any) -> None:
        async for event in stream.events():
            try:
                await handle(event)
            except Exception as exc:  # a bug must not stop the partition: park the input
                log.exception("orchestrator failed on %s", event.message.tp)
                await rt.dead_letter(event, "processing_error", f"{type(exc).__name__}: {exc}")

    @app.timer(interval=rt.settings.timer_tick_ms / 1000)
    async def tick() -> None:
        try:
            await firer.fire_due(now_ms())
        except Exception:  # the next tick tries again; a crash here would stop the worker
            log.exception("firing due timers failed")

    @app.task
    async def started() -> None:
        log.info("orchestrator consuming %s", ", ".join(rt.settings.topic(t) for t in inputs))


def _sync_timers(index: Any, key: bytes, old: dict[str, int], new: dict[str, int]) -> None:
    """Keep the due-time index equal to the timers armed in the saga state."""
    for timer, due in old.items():
        if new.get(timer) != due:
            index.pop(index_key(due, key, timer), None)
    for timer, due in new.items():
        if old.get(timer) != due:
            index[index_key(due, key, timer)] = b"1"
