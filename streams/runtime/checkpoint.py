"""The one place that commits: outputs, state changelog and input offsets in one Kafka transaction.

A `Checkpoint` collects one commit interval's work: the records the orchestrator produced, the
saga states it changed with the changelog bytes they were encoded to when decided (coalesced
per key: one changelog record per saga per transaction), the
audit trail of those changes, the metric updates that count them, and the input offsets it
consumed. `commit` produces the changelog records, sends the offsets with the consumer's group
metadata, commits the transaction, and only then writes the states to each partition's store
with the changelog offset they reach and counts the metrics. `abort` (and a failed or fenced
session) forgets all of it together; the caller re-reads from the last committed offsets.

Every transaction is fenced by the group generation, timer-only ones too: it always sends the
positions of every owned input partition, so a process that lost its partitions cannot commit.
A commit that times out is resumed (librdkafka keeps it going and refuses an abort), so it ends
as what it became: committed, aborted, or unknown (the session is rebuilt).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from sagastream.core.state import SagaState, decode_state
from sagastream.errors import SagastreamError
from sagastream.runtime.inputs import OutRecord
from sagastream.runtime.kafka_io import produce
from sagastream.runtime.store import PartitionStore, changelog_headers, timers_of

log = logging.getLogger("sagastream.orchestrator")


class TransactionFailed(SagastreamError, RuntimeError):
    """The transaction was aborted; state was rolled back and inputs must be re-read."""


class ProducerFatal(SagastreamError, RuntimeError):
    """The producer cannot go on (fenced, or a fatal error): rebuild it and rejoin."""


Where = tuple[str, int]  # (topic, partition) of an input


# a saga's audit entry of this transaction: saga, newest status, its changes, parent meta
TrailEntry = tuple[str, str, list[dict[str, Any]], dict[str, Any]]


@dataclass
class Touched:
    """A saga changed in this transaction: its committed timers, its newest state and that
    state's changelog bytes (None: removed)."""

    committed_timers: dict[str, int]
    state: SagaState | None
    value: bytes | None


@dataclass
class PartitionWork:
    """One partition's share of the open transaction."""

    store: PartitionStore
    touched: dict[bytes, Touched] = field(default_factory=dict)
    changelog_offset: int = -1


def _left(deadline: float, share: float = 1.0) -> float:
    """That share of the time left before `deadline`, at least a second."""
    return max(1.0, (deadline - time.monotonic()) * share)


class Checkpoint:
    """An open transaction of the orchestrator's producer, and what commits with it."""

    def __init__(
        self, producer: Producer, changelog_topic: str, cached_states: int = 100_000
    ) -> None:
        self.producer = producer
        self.changelog_topic = changelog_topic
        self.open = False
        self.started = 0.0
        self.records = 0
        self.offsets: dict[Where, int] = {}
        # the committed positions of the owned input partitions: every transaction sends them
        self.positions: dict[Where, int] = {}
        self.owned: set[Where] = set()
        self.work: dict[int, PartitionWork] = {}
        self.trail: dict[bytes, tuple[TrailEntry, OutRecord]] = {}
        self._after: list[Callable[[], None]] = []
        self._delivery_error: KafkaError | None = None
        # committed states as decide last saw them, so sagas in flight skip RocksDB and decoding
        self._cached: dict[bytes, SagaState] = {}
        self._cache_size = cached_states

    # -- filling it -----------------------------------------------------------------------
    def begin(self) -> None:
        if not self.open:
            self._call(self.producer.begin_transaction)
            self.open = True
            self.started = time.monotonic()

    def state(self, partition: int, store: PartitionStore, saga_key: bytes) -> SagaState | None:
        """A saga's newest state: this transaction's, else the store's."""
        work = self.work.get(partition)
        if work is not None and (t := work.touched.get(saga_key)) is not None:
            return t.state
        cached = self._cached.get(saga_key)
        if cached is not None:
            return cached
        raw = store.get(saga_key)
        if not raw:
            return None
        state = decode_state(raw)
        self._remember(saga_key, state)
        return state

    def put_state(
        self,
        partition: int,
        store: PartitionStore,
        saga_key: bytes,
        old: SagaState | None,
        new: SagaState | None,
        value: bytes | None,
    ) -> None:
        """Record a saga's new state and its changelog bytes (`encode_state(new)`, None with a
        removed saga); `old` is what `state` returned before this decision."""
        work = self.work.get(partition)
        if work is None:
            work = self.work[partition] = PartitionWork(store)
        touched = work.touched.get(saga_key)
        if touched is None:
            work.touched[saga_key] = Touched(timers_of(old), new, value)
        else:
            touched.state, touched.value = new, value

    def produce(self, record: OutRecord) -> None:
        self._produce(record.topic, record.key, record.value, record.headers, None)

    def consumed(self, msg: Message) -> None:
        """Input consumed: its offset commits with this transaction."""
        self.offsets[(msg.topic() or "", msg.partition() or 0)] = (msg.offset() or 0) + 1

    def keep_trail(self, saga_key: bytes, audit: tuple[TrailEntry, OutRecord]) -> None:
        """Audit: a saga's one SagaLifecycle record of this transaction (every change it made
        here, encoded); it commits, or is forgotten, with the states it describes."""
        self.trail[saga_key] = audit

    def after_commit(self, count: Callable[[], None]) -> None:
        """Run `count` (a metric update) once this transaction has committed; never if not."""
        self._after.append(count)

    def hold(self, positions: dict[Where, int]) -> None:
        """Input partitions now owned, at their committed offsets (negative: none yet)."""
        self.owned.update(positions)
        self.positions.update({w: o for w, o in positions.items() if o >= 0})

    def release(self, partitions: set[int]) -> None:
        """Input partitions no longer owned: their positions are not ours to send."""
        self.positions = {w: o for w, o in self.positions.items() if w[1] not in partitions}
        self.owned = {w for w in self.owned if w[1] not in partitions}

    def pending_states(self, partition: int) -> dict[bytes, Touched]:
        work = self.work.get(partition)
        return work.touched if work else {}

    # -- ending it ------------------------------------------------------------------------
    def commit(self, consumer: Consumer, timeout: float = 30.0) -> None:
        """Changelog, offsets and outputs commit together; then the stores take the states.

        All of it, an abort included, ends within `timeout` (and at least a second).
        """
        if not self.open:
            return
        deadline = time.monotonic() + timeout
        encoded: dict[int, dict[bytes, bytes | None]] = {}
        try:
            for partition, work in self.work.items():
                values = encoded[partition] = {k: t.value for k, t in work.touched.items()}
                for saga_key, value in values.items():
                    headers = changelog_headers(work.touched[saga_key].state)
                    self._produce(
                        self.changelog_topic, saga_key, value, headers, partition, self._note(work)
                    )
            positions = {**self.positions, **self.offsets}
            if not positions:  # nothing committed or read yet: where the consumer stands
                positions = self._fetch_positions(consumer)
            if not positions:
                raise KafkaException(
                    KafkaError(
                        KafkaError._STATE,
                        "no owned input partition has a position to commit, so this transaction "
                        "could not carry the group generation; aborted, it is redone later",
                    )
                )
            # every owned input, not only those read: a timer-only transaction is fenced too
            self._call(
                self.producer.send_offsets_to_transaction,
                [TopicPartition(t, p, o) for (t, p), o in positions.items()],
                consumer.consumer_group_metadata(),
                _left(deadline, share=0.5),
            )
        except KafkaException as exc:
            self.abort(_left(deadline))
            raise TransactionFailed(str(exc)) from exc
        self._commit_resuming(deadline)
        if self._delivery_error is not None:
            # cannot happen after a successful commit, but the checkpoint must never lie
            error, self._delivery_error = self._delivery_error, None
            self._reset()
            raise ProducerFatal(f"a record of a committed transaction failed: {error}")
        self.positions.update(self.offsets)
        for count in self._after:
            count()
        for partition, work in self.work.items():
            if work.touched and work.changelog_offset >= 0:
                timers = {
                    k: (t.committed_timers, timers_of(t.state)) for k, t in work.touched.items()
                }
                work.store.apply(encoded[partition], work.changelog_offset, timers)
                for key, touched in work.touched.items():
                    self._cached.pop(key, None)
                    if touched.state is not None:
                        self._remember(key, touched.state)
        self._reset()

    def abort(self, timeout: float = 10.0) -> None:
        """Forget this transaction's outputs and states (the caller rewinds the inputs)."""
        if self.open:
            try:
                self.producer.abort_transaction(timeout)
            except KafkaException as exc:
                if exc.args[0].fatal():
                    self._reset()
                    raise ProducerFatal(str(exc)) from exc
                log.warning("aborting the transaction failed: %s", exc)
        self._reset()

    def _fetch_positions(self, consumer: Consumer) -> dict[Where, int]:
        """The consumer's positions of the owned inputs (known once it has fetched them)."""
        if not self.owned:
            return {}
        found = consumer.position([TopicPartition(t, p) for t, p in sorted(self.owned)])
        return {(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}

    def forget_cached(self) -> None:
        """Drop cached states (partitions moved: a state may change elsewhere meanwhile)."""
        self._cached.clear()

    def _remember(self, saga_key: bytes, state: SagaState) -> None:
        if len(self._cached) >= self._cache_size:
            del self._cached[next(iter(self._cached))]  # the oldest entry
        self._cached[saga_key] = state

    def _reset(self) -> None:
        self.open = False
        self.records = 0
        self.offsets = {}
        self.work = {}
        self.trail = {}
        self._after = []
        self._delivery_error = None

    def _note(self, work: PartitionWork) -> Callable[[KafkaError | None, Message], None]:
        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self._delivery_error = err
            else:
                work.changelog_offset = max(work.changelog_offset, msg.offset() or 0)

        return delivered

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None,
        partition: int | None,
        on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
    ) -> None:
        produce(self.producer, topic, value, key, headers, partition, on_delivery)
        self.records += 1

    def _commit_resuming(self, deadline: float) -> None:
        """Commit; a call that times out is called again, as librdkafka asks, until `deadline`.

        A timed-out commit goes on in librdkafka, which refuses to abort it: so it is resumed,
        never aborted. Still unresolved at the deadline, its outcome is the coordinator's to
        decide: the session is rebuilt (a new producer with this transactional id settles it)
        and the inputs are re-read from the offsets that did commit.
        """
        while True:
            try:
                self.producer.commit_transaction(max(1.0, deadline - time.monotonic()))
                return
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if err.fatal():
                    self._reset()
                    raise ProducerFatal(str(exc)) from exc
                if not err.retriable():  # the transaction must abort
                    self.abort(_left(deadline))
                    raise TransactionFailed(str(exc)) from exc
                if time.monotonic() >= deadline:
                    self._reset()
                    raise ProducerFatal(
                        f"the commit did not finish in time ({err}); its outcome is the "
                        "transaction coordinator's: rebuilding the producer settles it"
                    ) from exc
                log.warning("the commit goes on; resuming it: %s", err)

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except KafkaException as exc:
            if exc.args[0].fatal():
                self._reset()
                raise ProducerFatal(str(exc)) from exc
            raise
