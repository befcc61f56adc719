"""Where the console's pages get their data, committed records only: the sagas page and the
overview from the console's live index (index.py, kept by a background thread), one saga from
the client's `describe`, the dead letters from the dead-letter tool's reading, the versions from
the definitions book; the last three read per request (the book at most every VERSIONS_EVERY_S).
Nothing here writes to Kafka.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sagastream.console.index import Freshness, IndexFollower, SagaIndex, Topics, human_steps
from sagastream.console.lag import RoleLag, read_role_lags
from sagastream.console.views import SagaPage, SagaQuery, TypeOverview
from sagastream.core.topology import SagaSpec
from sagastream.errors import ClusterError
from sagastream.ops import dlq
from sagastream.ops.admin import admin_client
from sagastream.ops.client import Client
from sagastream.ops.inspect import SagaView
from sagastream.runtime.definitions import DefinitionBook
from sagastream.runtime.settings import Settings
from sagastream.wire.codec import SchemaStore

METADATA_TIMEOUT_S = 10.0
# how long the published versions are taken as read (the definitions topic changes rarely)
VERSIONS_EVERY_S = 10.0
# how long a page waits for the index to be whole (read to the changelog's end once) or to
# fail; past it, the page shows what is read so far, saying it is loading
FIRST_READ_WAIT_S = 10.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Overview:
    """The overview page: each saga type's numbers, the dead letters by topic and reason, and
    how fresh the index they come from is."""

    types: list[TypeOverview]
    dead_letters: list[dlq.Group]
    dead_letter_count: int
    at_ms: int
    freshness: Freshness


class ConsoleReader:
    """The console's one door to Kafka; read-only (its client never opens a producer)."""

    def __init__(self, settings: Settings) -> None:
        """Its index starts following the topics at once."""
        self.settings = settings
        self.client = Client(settings)
        self.topology = self.client.topology
        self.schemas = SchemaStore(settings.schemas_path)
        self.index = SagaIndex(human_steps(self.topology.sagas.items()))
        self.follower = IndexFollower(
            settings, self.index, self._topics(), self.client.events.decoded, now_ms
        )
        self._versions: tuple[float, dict[str, int]] = (-VERSIONS_EVERY_S, {})
        self.follower.start()

    def _topics(self) -> Topics:
        outcomes = sorted({s.outcome_topic for s in self.topology.sagas.values()})
        return Topics(
            self.settings.changelog_topic(),
            [self.settings.topic(t) for t in outcomes],
            {self.settings.topic(t): t for t in dlq.dlq_topics(self.topology)},
        )

    def book(self) -> DefinitionBook:
        """The published definitions (the definitions topic, read now)."""
        book = DefinitionBook(self.settings, self.topology, self.schemas)
        book.read()
        return book

    def versions(self) -> dict[str, int]:
        """Each published shape's version number, as read at most VERSIONS_EVERY_S ago; the
        index learns each version's human steps with it."""
        read_at, known = self._versions
        if time.monotonic() - read_at < VERSIONS_EVERY_S:
            return known
        found = self.book().versions()
        recorded = [(d.saga, d.spec) for d in found]
        self.index.human = human_steps([*self.topology.sagas.items(), *recorded])
        self._versions = (time.monotonic(), {d.shape: d.version for d in found})
        return self._versions[1]

    def freshness(self) -> Freshness:
        """How far the index has read; ClusterError (the page says Kafka did not answer) while
        it has never read the changelog to its end and cannot read it now."""
        fresh = self.index.freshness(FIRST_READ_WAIT_S)
        if fresh.error is not None and not fresh.loaded:
            raise ClusterError(fresh.error)
        return fresh

    def sagas(self, query: SagaQuery) -> tuple[SagaPage, dict[str, int], Freshness]:
        """A page of the sagas the query selects, from the index; the version number of each
        published shape, and how fresh the index is."""
        fresh = self.freshness()
        versions = self.versions()
        return self.index.sagas(query, versions, now_ms()), versions, fresh

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

    def overview(self) -> Overview:
        """Starts, running sagas and latencies from the index's states, outcomes of the last
        hour and dead letters as the index has read them."""
        fresh, at = self.freshness(), now_ms()
        groups = self.index.dead_letters()
        types = self.index.overview(self.topology.sagas, at)
        return Overview(types, groups, sum(g.count for g in groups), at, fresh)

    def lags(self) -> list[RoleLag]:
        """Each worker role's consumer lag (the orchestrator's, each handler role's), now."""
        return read_role_lags(self.settings, self.topology)

    def close(self) -> None:
        self.follower.stop()
        self.client.close()
