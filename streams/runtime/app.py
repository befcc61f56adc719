"""The faust app factory and what every agent shares: codec, topics, dead-lettering."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import EventT

from streams.core.topology import Topology, load_topology
from streams.runtime.metrics import Metrics
from streams.runtime.settings import Settings
from streams.wire.codec import (
    AvroCodec,
    DecodeError,
    RegistryUnavailable,
    SchemaStore,
    derive_meta,
)
from streams.wire.dlq import Origin, dead_letter_headers
from streams.wire.registry import build_codec

log = logging.getLogger("sagastream")

RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}
# RocksDB per partition; small buffers, since sagas keep compact values
STORE_OPTIONS = {
    "driver": "rocksdict",
    "write_buffer_size": 4 * 1024 * 1024,
    "block_cache_size": 16 * 1024 * 1024,
    "target_file_size_base": 8 * 1024 * 1024,
}


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Runtime:
    """A worker's shared objects: settings, topology, codec, faust app and metrics."""

    settings: Settings
    topology: Topology
    store: SchemaStore
    codec: AvroCodec
    app: faust.App
    role: str
    metrics: Metrics
    _topics: dict[str, faust.TopicT] = field(default_factory=dict)
    _fields: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def producer_name(self) -> str:
        return f"sagastream-{self.role}"

    def topic(self, name: str) -> faust.TopicT:
        """The faust topic for a topology topic name (prefix applied), created once."""
        if name not in self._topics:
            self._topics[name] = self.app.topic(self.settings.topic(name), **RAW)
        return self._topics[name]

    def logical(self, physical: str) -> str:
        prefix = self.settings.topic_prefix
        return physical[len(prefix) :] if prefix and physical.startswith(prefix) else physical

    def schema_fields(self, event_type: str) -> tuple[str, ...]:
        if event_type not in self._fields:
            self._fields[event_type] = tuple(
                f["name"] for f in self.store.raw(event_type)["fields"]
            )
        return self._fields[event_type]

    async def decode(self, event: EventT) -> tuple[str, dict[str, Any]] | None:
        """Decode an input; undecodable or undeclared input is dead-lettered (returns None).

        While the schema registry cannot be reached the input waits and is retried with
        backoff (blocking its agent), never dead-lettered. The first input also resolves
        the ids of every event type, so producing needs no registry afterwards.
        """
        topic = self.logical(event.message.topic)

        def attempt() -> tuple[str, dict[str, Any]]:
            self.codec.prepare(self.topology.events)
            return self.codec.decode(event.value)

        failures = 0
        while True:
            try:
                # retries run off the event loop: a hanging registry must not stop heartbeats
                event_type, record = await asyncio.to_thread(attempt) if failures else attempt()
                break
            except DecodeError as exc:
                await self.dead_letter(event, exc.reason, str(exc))
                return None
            except RegistryUnavailable as exc:
                from streams.wire.registry import retry_delay

                delay = retry_delay(failures)
                failures += 1
                self.metrics.registry_up.labels(self.role).set(0)
                self.metrics.registry_retries.labels(self.role).inc()
                where = f"{event.message.topic}[{event.message.partition}]@{event.message.offset}"
                log.warning("%s; %s waits, retry %d in %.1fs", exc, where, failures, delay)
                await asyncio.sleep(delay)
        if failures:
            self.metrics.registry_up.labels(self.role).set(1)
            log.warning("schema registry reachable again after %d retries", failures)
        spec = self.topology.events.get(event_type)
        if spec is None or topic not in spec.all_topics:
            why = f"{event_type} is not declared for topic {topic}"
            await self.dead_letter(event, "undeclared_event_type", why)
            return None
        return event_type, record

    def encode(self, event_type: str, fields: dict[str, Any], meta: dict[str, Any]) -> bytes:
        record = {name: fields[name] for name in self.schema_fields(event_type) if name in fields}
        record["meta"] = meta
        return self.codec.encode(event_type, record)

    async def emit(
        self,
        event_type: str,
        key: bytes,
        fields: dict[str, Any],
        parent: dict[str, Any],
        attempt: int,
    ) -> None:
        """Produce an event caused by `parent`; awaiting only queues it (the producer batches)."""
        meta = derive_meta(parent, event_type, self.producer_name, attempt=attempt, now_ms=now_ms())
        headers = [
            ("event_type", event_type.encode()),
            ("traceparent", meta["traceparent"].encode()),
        ]
        topic = self.topic(self.topology.event_topic(event_type))
        await topic.send(key=key, value=self.encode(event_type, fields, meta), headers=headers)
        self.metrics.produced.labels(self.role, event_type).inc()

    async def dead_letter(self, event: EventT, reason: str, error: str, attempts: int = 1) -> None:
        """Send an input to its topic's dead-letter topic, with headers saying why and where from."""
        msg = event.message
        topic = self.logical(msg.topic)
        dlq = self.topology.dlq(topic) if topic in self.topology.topic_map else f"{topic}.dlq"
        origin = Origin(msg.topic, msg.partition, msg.offset, int(msg.timestamp * 1000))
        headers = dead_letter_headers(origin, reason, error, self.producer_name, attempts)
        await self.topic(dlq).send(key=event.key, value=event.value, headers=headers)
        self.metrics.dead_letters.labels(self.role, topic, reason).inc()
        log.warning(
            "dead-lettered %s[%s]@%s to %s: %s", msg.topic, msg.partition, msg.offset, dlq, error
        )


def make_runtime(settings: Settings, role: str, guarantee: str | None = None) -> Runtime:
    """Create the faust app of one worker role (its consumer group is the app id)."""
    store = SchemaStore(SchemaStore.default_dir())
    topology = load_topology(settings.topology_file, store.directory)
    partitions = {topology.partitions(t) for s in topology.sagas for t in topology.saga_topics(s)}
    datadir = settings.data_dir / settings.group(role)
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.group(role),
        broker=[f"kafka://{server}" for server in settings.bootstrap_servers.split(",")],
        broker_credentials=_credentials(settings),
        store="rocksdb://",
        datadir=str(datadir),
        processing_guarantee=guarantee or "exactly_once",
        topic_partitions=max(partitions, default=topology.defaults.partitions),
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.heartbeat_interval_ms / 1000,
        broker_commit_every=1000,
        broker_commit_interval=0.5,
        producer_linger=0.005,  # batch the many small sends of one burst into fewer requests
        web_enabled=False,
        table_cleanup_interval=3600.0,
        key_serializer="raw",
        value_serializer="raw",
    )
    codec = build_codec(settings, store)
    return Runtime(settings, topology, store, codec, app, role, Metrics.create(role))


def _credentials(settings: Settings) -> Any:
    if settings.security_protocol == "PLAINTEXT":
        return None
    import ssl

    context = ssl.create_default_context(
        cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None
    )
    if settings.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password.get_secret_value() if settings.sasl_password else None,
            mechanism=settings.sasl_mechanism or "PLAIN",
            ssl_context=context if settings.security_protocol == "SASL_SSL" else None,
        )
    return faust.SSLCredentials(context)
