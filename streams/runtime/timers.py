"""Durable timers: a due-time index in RocksDB per partition, and the tick that fires due ones.

A timer lives in two places written in the same agent step: the saga state (so decide knows
what is armed) and the `timer-index` table, keyed `<due ms, 13 digits>|<saga key>|<timer>`.
RocksDB keeps keys sorted, so a tick reads each owned partition from the start and stops at the
first key that is not yet due: O(due timers), not O(sagas). Firing means producing a TimerFired
event to the saga's timer topic, keyed by the saga key, so the agent handles it like any other
event (same partition, same transaction); the agent's decide removes the timer from both places.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from streams.wire.codec import new_meta

log = logging.getLogger("sagastream.timers")

REFIRE_AFTER_MS = 10_000
MAX_PER_TICK = 5_000


def index_key(due_ms: int, saga_key: bytes, timer: str) -> bytes:
    return b"%013d|" % due_ms + saga_key + b"|" + timer.encode()


def parse_index_key(raw: bytes) -> tuple[int, bytes, str, str, int]:
    """(due, saga key, kind, step, attempt) of an index key."""
    head, kind, step, attempt = raw.rsplit(b"|", 3)
    due, saga_key = head.split(b"|", 1)
    return int(due), saga_key, kind.decode(), step.decode(), int(attempt)


class TimerFirer:
    """Fires due timers of the partitions this worker owns."""

    def __init__(self, rt: Any, index: Any, source_topics: set[str]) -> None:
        self.rt = rt
        self.index = index
        self.source_topics = source_topics
        self._fired: dict[bytes, int] = {}
        self._producer: Any = None

    def _owned_partitions(self) -> set[int]:
        return {
            tp.partition
            for tp in self.rt.app.assignor.assigned_actives()
            if tp.topic in self.source_topics
        }

    def due(self, now: int) -> list[bytes]:
        """Index keys due at `now` in the owned partitions, oldest first."""
        dbs = getattr(self.index.data, "_dbs", {})
        out: list[bytes] = []
        for partition in sorted(self._owned_partitions()):
            db = dbs.get(partition)
            if db is None:
                continue
            for raw in db.keys():  # noqa: SIM118 - a RocksDB handle, keys in sorted order
                if int(raw[:13]) > now or len(out) >= MAX_PER_TICK:
                    break
                out.append(raw)
        return out

    async def fire_due(self, now: int) -> int:
        """Produce a TimerFired event for each due timer not fired in the last few seconds."""
        keys = [
            k
            for k in self.due(now)
            if now - self._fired.get(k, -REFIRE_AFTER_MS) >= REFIRE_AFTER_MS
        ]
        self._fired = {k: t for k, t in self._fired.items() if now - t < REFIRE_AFTER_MS}
        if not keys:
            return 0
        producer = self._ensure_producer()
        topo, settings = self.rt.topology, self.rt.settings
        for raw in keys:
            due, saga_key, kind, step, attempt = parse_index_key(raw)
            meta = new_meta("TimerFired", saga_key.decode(), self.rt.producer_name, now_ms=now)
            meta["event_id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, raw.decode(errors="replace")))
            fields = {"kind": kind, "step": step, "attempt": attempt, "due_ms": due}
            value = self.rt.encode("TimerFired", fields, meta)
            topic = settings.topic(topo.event_topic("TimerFired"))
            producer.produce(
                topic, key=saga_key, value=value, headers=[("event_type", b"TimerFired")]
            )
            self._fired[raw] = now
            self.rt.metrics.timers_fired.labels(kind).inc()
        await asyncio.to_thread(producer.flush, 10)
        return len(keys)

    def _ensure_producer(self) -> Any:
        if self._producer is None:
            from confluent_kafka import Producer

            self._producer = Producer(self.rt.settings.producer_config())
        return self._producer
