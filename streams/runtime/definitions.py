"""The definitions topic: every published shape of every saga, and which one decides an instance.

`sagas.definitions` (one partition, compacted) keeps one record per saga and shape, keyed
`<saga>/<shape>`. A record is self-contained: the saga's spec and, per event type it uses, the
event's topics and Avro schema, so any orchestrator can decide an instance pinned to a shape its
own topology file no longer has. `DefinitionBook` reads the topic to its end, publishes the
loaded topology's shapes that are missing (a new version: one more than the highest read) or
whose policies changed (same version), and answers which spec decides a shape
(docs/versioning.md).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from sagastream.core.topology import SagaSpec, Topology, saga_event_types
from sagastream.errors import ClusterError, SagastreamError
from sagastream.runtime.kafka_io import Publisher, read_ranges, reader, whole
from sagastream.runtime.settings import Settings
from sagastream.wire.codec import SchemaStore

log = logging.getLogger("sagastream.definitions")

TOPIC = "sagas.definitions"
FORMAT = 1
# reading the definitions topic to its end: a few records per saga, this is generous
READ_TIMEOUT_S = 60.0


class DefinitionError(SagastreamError, ValueError):
    """A definitions record that cannot be read; the message names its key and what is wrong."""


class RefusedChange(SagastreamError, ValueError):
    """The topology file changes a deployed saga in a way no version can carry (its start event
    or key field); the message names each change and what to do."""


@dataclass(frozen=True)
class RecordedEvent:
    """An event type as a definition recorded it: the topics it travels on and its schema."""

    topics: tuple[str, ...]
    schema: dict[str, Any]


@dataclass(frozen=True)
class Definition:
    """One published shape of one saga, with the readable version number it was given."""

    saga: str
    shape: str
    version: int
    published_ms: int
    published_by: str
    spec: SagaSpec
    events: dict[str, RecordedEvent] = field(default_factory=dict)

    @property
    def key(self) -> bytes:
        return f"{self.saga}/{self.shape}".encode()

    def encode(self) -> bytes:
        """The record's value: UTF-8 JSON in the format docs/versioning.md describes."""
        body = {
            "format": FORMAT,
            "saga": self.saga,
            "shape": self.shape,
            "version": self.version,
            "published_ms": self.published_ms,
            "published_by": self.published_by,
            "definition": policies(self.spec),
            "events": {
                name: {"topics": list(e.topics), "schema": e.schema}
                for name, e in sorted(self.events.items())
            },
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, key: bytes, value: bytes) -> Definition:
        """A record read back; DefinitionError naming the key if it is not one of ours."""
        where = f"{TOPIC} record {key.decode(errors='replace')!r}"
        try:
            body = json.loads(value)
            if body.get("format") != FORMAT:
                raise DefinitionError(
                    f"{where}: format {body.get('format')!r}, this sagastream reads {FORMAT}; "
                    "upgrade sagastream to read it"
                )
            spec = SagaSpec.model_validate(body["definition"])
            events = {
                name: RecordedEvent(tuple(e["topics"]), e["schema"])
                for name, e in body["events"].items()
            }
            found = cls(
                body["saga"],
                body["shape"],
                int(body["version"]),
                int(body["published_ms"]),
                str(body["published_by"]),
                spec,
                events,
            )
        except (ValueError, KeyError, TypeError, AttributeError, ValidationError) as exc:
            if isinstance(exc, DefinitionError):
                raise
            raise DefinitionError(f"{where}: not a saga definition: {exc}") from exc
        if spec.shape != found.shape:
            raise DefinitionError(
                f"{where}: its definition has shape {spec.shape}, not {found.shape}: the record "
                "was altered; publish the saga again with `sagastream topics create`"
            )
        return found


def policies(spec: SagaSpec) -> dict[str, Any]:
    """The spec as JSON values: what a record keeps, and what tells a policy update apart."""
    return spec.model_dump(mode="json", by_alias=True)


def recorded(
    topology: Topology,
    schemas: SchemaStore,
    saga: str,
    version: int,
    published_ms: int,
    published_by: str,
) -> Definition:
    """The definition of one saga of `topology`, with every event type it sends or reads."""
    spec = topology.sagas[saga]
    events = {
        name: RecordedEvent(
            topology.events[name].all_topics,
            schemas.raw(topology.events[name].schema_name),
        )
        for name in dict.fromkeys(saga_event_types(spec))
    }
    return Definition(saga, spec.shape, version, published_ms, published_by, spec, events)


class DefinitionBook:
    """What this process knows of the definitions topic, and the topology file it loaded.

    `spec` answers the file's spec for the file's shape (its newest policies), else the
    recorded one. Readers and publishers of one process share one book.
    """

    def __init__(self, settings: Settings, topology: Topology, schemas: SchemaStore) -> None:
        self.settings = settings
        self.topology = topology
        self.schemas = schemas
        self.topic = settings.topic(TOPIC)
        self._known: dict[tuple[str, str], Definition] = {}
        self.read_at = -math.inf  # when the topic was last read to its end (monotonic)

    def read(self, patience: float = READ_TIMEOUT_S) -> None:
        """Read the topic to its end, committed records only. A topic created a moment ago
        may have no leader yet: asked again for up to `patience` seconds, then ClusterError."""
        deadline = time.monotonic() + patience
        while True:
            # its end is what a read waits for: told at once, not after a fetch's long wait
            consumer = reader(self.settings, "sagastream-definitions", **{"fetch.wait.max.ms": 10})
            try:
                ranges = whole(consumer, [self.topic])
                records = read_ranges(consumer, ranges, time.monotonic() + READ_TIMEOUT_S)
                self.take((msg.key() or b"", msg.value()) for msg in records)
                self.read_at = time.monotonic()
                return
            except ClusterError as exc:
                if time.monotonic() > deadline:
                    raise
                log.info("%s; reading it again", exc)
                time.sleep(0.5)
            finally:
                consumer.close()

    def take(self, records: Iterable[tuple[bytes, bytes | None]]) -> None:
        """Know what these records of the topic say, in offset order, and nothing else: the
        newest record per key wins, a tombstone removes its key."""
        known: dict[tuple[str, str], Definition] = {}
        for key, value in records:
            saga, _, shape = key.decode(errors="replace").partition("/")
            if value is None:
                known.pop((saga, shape), None)
                continue
            try:
                found = Definition.decode(key, value)
            except DefinitionError as exc:
                # one bad record must not hide the others; a state pinned to it waits, said
                log.error("%s; skipped", exc)
                continue
            known[(found.saga, found.shape)] = found
        self._known = known

    def unpublished(self, by: str, now_ms: int) -> list[Definition]:
        """The topology's sagas whose shape no record has (a new version: one more than the
        highest read) or whose record's policies differ (a policy update: same version)."""
        due: list[Definition] = []
        for saga, spec in self.topology.sagas.items():
            have = self._known.get((saga, spec.shape))
            if have is not None and policies(have.spec) == policies(spec):
                continue
            version = have.version if have is not None else 1 + self.highest(saga)
            due.append(recorded(self.topology, self.schemas, saga, version, now_ms, by))
        return due

    def publish(self, by: str, now_ms: int, fresh_s: float = 0.0) -> list[Definition]:
        """Read the topic (unless it was read within `fresh_s` seconds), then publish what
        `unpublished` names, with confirmed delivery: DeliveryFailed if the broker refused any
        record. Returns what was published."""
        if time.monotonic() - self.read_at > fresh_s:
            self.read()
        due = self.unpublished(by, now_ms)
        if due:
            publisher = Publisher(self.settings.producer_config())
            try:
                for found in due:
                    publisher.send(self.topic, found.key, found.encode())
                publisher.confirm()
            finally:
                publisher.close()
        self._known.update({(found.saga, found.shape): found for found in due})
        return due

    def spec(self, saga: str, shape: str) -> SagaSpec | None:
        """What decides an instance of `saga` pinned to `shape`; None if no record has it."""
        mine = self.topology.sagas.get(saga)
        if mine is not None and mine.shape == shape:
            return mine
        found = self._known.get((saga, shape))
        return None if found is None else found.spec

    def lowest(self, saga: str) -> Definition | None:
        """The saga's first published version: what decides states that carry no shape."""
        return min(self.versions(saga), key=_order, default=None)

    def highest(self, saga: str) -> int:
        """The highest version number read for the saga (0: none)."""
        return max((d.version for d in self.versions(saga)), default=0)

    def newest(self) -> dict[str, Definition]:
        """Each saga's highest published version: what is deployed, as a new file sees it."""
        return {d.saga: d for d in self.versions()}  # sorted by version: the last one wins

    def refuse_changes(self, allowed: bool) -> None:
        """RefusedChange if the file changes a saga's identity against its newest published
        version (`topology diff`'s refused class), unless `allowed` (the setting
        allow_refused_changes): sagas in flight were started and keyed by the old identity."""
        from sagastream.ops.topology_diff import refused_against

        deployed = self.newest()
        found = refused_against({s: d.spec for s, d in deployed.items()}, self.topology)
        if not found or allowed:
            for finding in found:
                log.warning("deploying a refused change, as allowed: %s", finding)
            return
        saga = (f.where.split(".")[0] for f in found)
        lines = "\n".join(
            f"  {f} (deployed: v{deployed[s].version})" for f, s in zip(found, saga, strict=True)
        )
        raise RefusedChange(
            f"{self.settings.topology_file} changes what deployed sagas are found by, in "
            f"{self.topic}:\n{lines}\nOnce `sagastream topology versions` shows none of "
            "it running, SAGASTREAM_ALLOW_REFUSED_CHANGES=true lets this file through"
        )

    def find(self, saga: str, shape: str) -> Definition | None:
        return self._known.get((saga, shape))

    def versions(self, saga: str | None = None) -> list[Definition]:
        """Every definition read, of one saga or all, by saga, version and publish time."""
        return sorted(
            (d for d in self._known.values() if saga is None or d.saga == saga),
            key=lambda d: (d.saga, *_order(d)),
        )

    def recorded_specs(self) -> list[SagaSpec]:
        """The recorded definitions of the topology's sagas other than the file's own shapes."""
        mine = {saga: spec.shape for saga, spec in self.topology.sagas.items()}
        return [d.spec for d in self.versions() if d.saga in mine and d.shape != mine[d.saga]]

    def recorded_events(self) -> dict[str, RecordedEvent]:
        """Event types of the topology's sagas' recorded definitions it does not declare."""
        out: dict[str, RecordedEvent] = {}
        for found in self.versions():
            if found.saga in self.topology.sagas:
                for name, event in found.events.items():
                    if name not in self.topology.events:
                        out.setdefault(name, event)
        return out

    def with_recorded_events(self) -> Topology:
        """The topology with the event types only recorded definitions of its sagas have (and
        their topics), their schemas added to the SchemaStore, so that an orchestrator built
        on both reads, decodes and encodes what its older instances need; the book keeps it."""
        events = self.recorded_events()
        if not events:
            return self.topology
        data = self.topology.model_dump(mode="json", by_alias=True)
        declared = {t["name"] for t in data["topics"]}
        for name, event in sorted(events.items()):
            self.schemas.add(name, event.schema)
            data["events"][name] = {"schema": name, "topics": list(event.topics)}
            for topic in event.topics:
                if topic not in declared:
                    declared.add(topic)
                    data["topics"].append({"name": topic})
        log.warning(
            "event types only recorded definitions have, added with their topics: %s",
            ", ".join(sorted(events)),
        )
        self.topology = Topology.model_validate(data)
        return self.topology


def _order(found: Definition) -> tuple[int, int, str]:
    return (found.version, found.published_ms, found.shape)
