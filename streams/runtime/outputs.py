"""Turning what a loop decided into records to produce: event type + fields + parent meta -> bytes."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from sagastream.core.topology import Topology
from sagastream.runtime.inputs import OutRecord
from sagastream.runtime.settings import Settings
from sagastream.wire.codec import AvroCodec, SchemaStore, derive_meta


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Encoder:
    """Encodes events caused by a parent event onto their topology topic (schema fields cached)."""

    def __init__(
        self,
        settings: Settings,
        topology: Topology,
        store: SchemaStore,
        codec: AvroCodec,
        producer: str,
    ) -> None:
        self.settings = settings
        self.topology = topology
        self.store = store
        self.codec = codec
        self.producer = producer
        self._fields: dict[str, tuple[str, ...]] = {}
        self._topics: dict[str, str] = {}

    def prepare(self) -> None:
        """Resolve the schema id of every event type of the topology, once (retried until it
        succeeds, and again when the registry renumbered its ids).

        Raises RegistryUnavailable while the registry cannot give them: the caller makes what
        it was about to decide wait, so nothing is decided that could not then be encoded.
        """
        self.codec.prepare(self.topology.events)

    def _schema_fields(self, event_type: str) -> tuple[str, ...]:
        names = self._fields.get(event_type)
        if names is None:
            schema = self.store.raw(self.topology.events[event_type].schema_name)
            names = self._fields[event_type] = tuple(f["name"] for f in schema["fields"])
        return names

    def topic_of(self, event_type: str) -> str:
        """The physical topic an event type is produced to."""
        topic = self._topics.get(event_type)
        if topic is None:
            topic = self._topics[event_type] = self.settings.topic(
                self.topology.event_topic(event_type)
            )
        return topic

    def derived(
        self,
        event_type: str,
        key: bytes,
        fields: Mapping[str, Any],
        parent: Mapping[str, Any],
        attempt: int,
        now: int | None = None,
        step: str | None = None,
        traceparent: str | None = None,
    ) -> OutRecord:
        """The record of an event caused by `parent` (same saga and trace, one hop further);
        `step` goes into its meta: the step a command is for, or the one a result answers;
        `traceparent` its own (a command's: its attempt's span), else a new child span's."""
        meta = derive_meta(
            parent,
            event_type,
            self.producer,
            attempt=attempt,
            now_ms=now,
            step=step,
            traceparent=traceparent,
        )
        record = {name: fields[name] for name in self._schema_fields(event_type) if name in fields}
        record["meta"] = meta
        headers = [
            ("event_type", event_type.encode()),
            ("traceparent", meta["traceparent"].encode()),
        ]
        return OutRecord(
            self.topic_of(event_type), key, self.codec.encode(event_type, record), headers
        )
