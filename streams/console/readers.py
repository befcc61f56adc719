"""Where the console's pages get their data: the project's own Kafka readers (the client's
`list_sagas` and `describe`, the dead-letter tool's reading, the definitions book), each read
afresh per request, committed records only. Nothing here writes to Kafka.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from sagastream.console.lag import RoleLag, read_role_lags
from sagastream.console.views import (
    MINUTE_MS,
    WINDOW_MINUTES,
    Outcome,
    SagaPage,
    SagaQuery,
    TypeOverview,
    overview,
    page_of,
)
from sagastream.core.topology import SagaSpec
from sagastream.ops import dlq
from sagastream.ops.admin import admin_client
from sagastream.ops.client import Client
from sagastream.ops.inspect import SagaView
from sagastream.runtime.definitions import DefinitionBook
from sagastream.runtime.settings import Settings
from sagastream.wire.codec import SchemaStore

METADATA_TIMEOUT_S = 10.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Overview:
    """The overview page: each saga type's numbers, and the dead letters by topic and reason."""

    types: list[TypeOverview]
    dead_letters: list[dlq.Group]
    dead_letter_count: int
    at_ms: int


class ConsoleReader:
    """The console's one door to Kafka; read-only (its client never opens a producer)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = Client(settings)
        self.topology = self.client.topology
        self.schemas = SchemaStore(settings.schemas_path)

    def book(self) -> DefinitionBook:
        """The published definitions (the definitions topic, read now)."""
        book = DefinitionBook(self.settings, self.topology, self.schemas)
        book.read()
        return book

    def versions(self) -> dict[str, int]:
        """Each published shape's version number."""
        return {d.shape: d.version for d in self.book().versions()}

    def sagas(self, query: SagaQuery) -> tuple[SagaPage, dict[str, int]]:
        """A page of the sagas the query selects, as `saga list` reads them, and the version
        number of each published shape."""
        listing = self.client.list_sagas(
            (query.status,) if query.status else (), query.saga or None
        )
        versions = self.versions()
        return page_of(listing.sagas, query, versions, now_ms()), versions

    def saga(self, saga: str, key: str) -> SagaView | None:
        return self.client.describe(saga, key)

    def definition(self, saga: str, shape: str | None) -> tuple[SagaSpec, int | None]:
        """What decides a saga on `shape` (None: a state from before shapes, decided by the
        first version), and its version number; the topology file's when it is not published."""
        book = self.book()
        found = book.lowest(saga) if shape is None else book.find(saga, shape)
        if found is None:
            return self.topology.sagas[saga], None
        return found.spec, found.version

    def existing(self, topics: list[str]) -> list[str]:
        """The logical topics that exist on the broker: one not created yet (a dead-letter topic
        before its first dead letter, say) holds nothing, and a read would wait for it."""
        metadata = admin_client(self.settings).list_topics(timeout=METADATA_TIMEOUT_S)
        return [t for t in topics if self.settings.topic(t) in metadata.topics]

    def dead_letters(self) -> list[dlq.DeadLetter]:
        """Every dead letter of every dead-letter topic of the topology, read to the end now."""
        topics = self.existing(dlq.dlq_topics(self.topology))
        return dlq.read_dead_letters(self.client.events, topics) if topics else []

    def dead_letter(self, topic: str, partition: int, offset: int) -> dlq.DeadLetter:
        """One dead letter (UsageError naming where to look if there is none there)."""
        topic = dlq.resolve_topic(self.topology, topic)
        letters = dlq.read_dead_letters(self.client.events, [topic])
        return dlq.find(letters, topic, partition, offset)

    def outcomes_since(self, since_ms: int) -> list[Outcome]:
        """The outcome records of every saga's outcome topic written since `since_ms`."""
        logical = sorted({s.outcome_topic for s in self.topology.sagas.values()})
        topics = [self.settings.topic(t) for t in self.existing(logical)]
        return [
            Outcome(str(m.record.get("saga_type", "")), m.event_type, _written_ms(m.record))
            for m in (self.client.events.read_since(topics, since_ms) if topics else [])
            if m.record is not None and m.event_type is not None
        ]

    def overview(self) -> Overview:
        """Starts and running sagas from the state changelog, outcomes from the outcome topics
        over the last hour, and the dead letters."""
        at = now_ms()
        states = self.client.list_sagas().sagas
        since = (at // MINUTE_MS - WINDOW_MINUTES + 1) * MINUTE_MS
        types = overview(self.topology.sagas, states, self.outcomes_since(since), at)
        letters = self.dead_letters()
        return Overview(types, dlq.group(letters), len(letters), at)

    def lags(self) -> list[RoleLag]:
        """Each worker role's consumer lag (the orchestrator's, each handler role's), now."""
        return read_role_lags(self.settings, self.topology)

    def close(self) -> None:
        self.client.close()


def _written_ms(record: dict[str, object]) -> int:
    """When an outcome happened: its meta's occurred_at."""
    meta = record.get("meta")
    occurred = meta.get("occurred_at") if isinstance(meta, dict) else None
    if isinstance(occurred, int):
        return occurred
    # fastavro decodes timestamp-millis as an aware datetime
    return int(occurred.timestamp() * 1000) if isinstance(occurred, datetime) else 0
