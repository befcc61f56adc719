"""The orchestrator loop: consume a batch, decide per partition in offset order, commit together.

One consumer subscribes to every orchestrator input topic, and to the state changelog as an
anchor (paused, never read): a process owns store p only while it holds partition p of the
anchor and of every input (see `ownership`), so one store per partition, owned by one process,
holds every saga whose key hashes there. Each event is read (`read_input`), decided by the pure
core (`decide`), and its outputs are encoded and handed to the open `Checkpoint`; due timers are
decided inline, from the stores' due-index and this transaction's states. Once per commit
interval the Checkpoint commits outputs, changelog and input offsets in one transaction. An
aborted transaction rewinds every partition to its committed offset; nothing of it was applied.
"""

from __future__ import annotations

import fcntl
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import IO, Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from sagastream.core.migration import MIGRATE_CHANGE, repin
from sagastream.core.saga import TERMINAL, Decision, Event, caused_by, decide, saga_for
from sagastream.core.spans import attempts_ended, decision_spans, traceparents
from sagastream.core.state import SagaState, StateEncodingError, decode_state, encode_state
from sagastream.core.topology import (
    LIFECYCLE_EVENT,
    MIGRATE_EVENT,
    TIMER_EVENT,
    SagaSpec,
    Topology,
    saga_event_types,
)
from sagastream.errors import ClusterError, NotAuthorized, SagastreamError
from sagastream.runtime import logs, tracing
from sagastream.runtime.checkpoint import (
    Checkpoint,
    ProducerFatal,
    TrailEntry,
    TransactionFailed,
)
from sagastream.runtime.definitions import DefinitionBook
from sagastream.runtime.health import Check, RoleHealth
from sagastream.runtime.horizon import Horizon, timestamp
from sagastream.runtime.inputs import (
    Decoded,
    OutRecord,
    Rejected,
    Unavailable,
    dead_letter,
    read_input,
)
from sagastream.runtime.kafka_io import AUTHORIZATION_CODES, read_refused, refused
from sagastream.runtime.lag import ConsumerLag
from sagastream.runtime.limits import RecordLimits, RecordTooLarge, check_fits
from sagastream.runtime.metrics import LifecycleMetrics, Metrics, Tally
from sagastream.runtime.outputs import Encoder, now_ms
from sagastream.runtime.ownership import Ownership, ownership
from sagastream.runtime.restore import restore
from sagastream.runtime.settings import Settings
from sagastream.runtime.store import (
    EXPIRY,
    PartitionStore,
    RocksStore,
    changelog_headers,
    timers_of,
)
from sagastream.runtime.waiting import Waiting, waiting_steps, waits_of
from sagastream.wire.codec import AvroCodec, EncodeError, RegistryUnavailable, SchemaStore
from sagastream.wire.dlq import Origin, dead_letter_headers
from sagastream.wire.registry import retry_delay

log = logging.getLogger("sagastream.orchestrator")

ROLE = "orchestrator"
PRODUCER_NAME = "sagastream-orchestrator"
BATCH = 1000
MAX_RECORDS_PER_TRANSACTION = 20_000
MAX_DUE_PER_TICK = 5_000
# how long an assignment waits for the metadata of a topic created a moment ago
METADATA_WAIT_S = 30.0
OUTCOME_CHANGES = frozenset({"started", MIGRATE_CHANGE, *TERMINAL})
# how often a partition waiting for an unknown definition reads the definitions topic again
SHAPE_RETRY_S = 2.0
# one saga's audit entry of the open transaction: saga, status, changes, parent meta


@dataclass
class Instance:
    """This process's slot: its data directory and its stable transactional id.

    A restarted process takes the slot its predecessor left (an flock dies with its process), so
    it reuses the predecessor's stores and, by reusing its transactional id, fences it and aborts
    its open transaction at once instead of after the transaction timeout.
    """

    directory: Path
    transactional_id: str
    lock: IO[bytes]

    @classmethod
    def claim(cls, settings: Settings) -> Instance:
        group = settings.group(ROLE)
        base = settings.data_dir / group
        base.mkdir(parents=True, exist_ok=True)
        names = [settings.instance_id] if settings.instance_id else [f"{n}" for n in range(256)]
        for name in names:
            lock = open(base / f"instance-{name}.lock", "wb")  # noqa: SIM115 - held for life
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            txn = (
                f"{group}-{name}"
                if settings.instance_id
                else f"{group}-{socket.gethostname()}-{name}"
            )
            return cls(base / f"instance-{name}", txn, lock)
        raise ClusterError(
            f"every instance slot in {base} is taken"
            + (
                f" (SAGASTREAM_INSTANCE_ID={settings.instance_id} is in use)"
                if settings.instance_id
                else ""
            )
        )


class ShapeUnknown(SagastreamError, RuntimeError):
    """A saga state pinned to a shape no definitions record has (yet): its input waits."""

    def __init__(self, saga: str, shape: str | None, topic: str, missing: list[str]) -> None:
        what = f"shape {shape}" if shape else "no shape (a state from before versions)"
        super().__init__(
            f"saga {saga} with {what} has no definition in {topic}: its inputs wait until "
            "one is published (run the orchestrator of that version, or `sagastream topics "
            "create` with its topology file)"
            if not missing
            else f"saga {saga} with {what} uses event types this orchestrator did not load "
            f"({', '.join(missing)}: published after it started); its inputs wait until it "
            "is restarted, which reads them"
        )


def _fetch(consumer: Consumer, timeout: float) -> list[Message]:
    """What is there now, up to BATCH: waits (up to `timeout`) for the first message only."""
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(BATCH - 1, 0)]


class Orchestrator:
    """The orchestrator role of one worker process."""

    def __init__(
        self,
        settings: Settings,
        topology: Topology,
        schemas: SchemaStore,
        codec: AvroCodec,
        metrics: Metrics,
        limits: RecordLimits | None = None,
        book: DefinitionBook | None = None,
    ) -> None:
        """`limits`: the record size limits the worker read from the broker (default: the
        setting `max_record_bytes` for every topic). `book`: the definitions read before the
        topology, codec and schemas were built (its recorded sagas' inputs are read too)."""
        self.settings = settings
        self.limits = limits or RecordLimits(settings.max_record_bytes)
        self.topology = topology
        self.codec = codec
        self.metrics = metrics
        self.encoder = Encoder(settings, topology, schemas, codec, PRODUCER_NAME)
        self._book_read = 0.0  # when the definitions topic was last read (monotonic)
        # partitions waiting for a definition of the shape of a state: why, for /readyz
        self.shape_waits: dict[tuple[str, int], str] = {}
        self._unloaded_by_shape: dict[str, list[str]] = {}
        # running (not ended) saga instances per store partition, by saga and shape
        self.running: dict[int, dict[tuple[str, str | None], int]] = {}
        # and by saga and status (running or compensating)
        self.statuses: dict[int, dict[tuple[str, str], int]] = {}
        self._lifecycle = LifecycleMetrics(metrics)
        # counted once per transaction: its counters, and the (saga, shape)s and (saga,
        # status)es whose running sagas it changed
        self.tally = Tally()
        self._versions_changed: set[tuple[str, str | None]] = set()
        self._statuses_changed: set[tuple[str, str]] = set()
        self.tracer = tracing.tracer(f"{settings.app_id}-orchestrator")
        self._waits = Waiting(metrics.sagas_waiting, metrics.oldest_waiting)
        self.book = book or DefinitionBook(settings, topology, schemas)
        recorded = self.book.recorded_specs()
        self.inputs = [settings.input_topic(t) for t in topology.orchestrator_inputs(recorded)]
        self.timer_topic = (
            topology.event_topic(TIMER_EVENT) if TIMER_EVENT in topology.events else None
        )
        self.instance = Instance.claim(settings)
        self.stores: dict[int, PartitionStore] = {}
        # partitions paused for the schema registry: when to retry, and how often they failed
        self.waiting: dict[tuple[str, int], float] = {}
        self._failures: dict[tuple[str, int], int] = {}
        # how far each input partition is read: a timer fires only below what its partition read
        self.horizon = Horizon(self.inputs)
        self.owner = Ownership(frozenset(), settings.changelog_topic())
        self.ready = threading.Event()
        self.health = RoleHealth(settings)
        # the time decisions are made at: the wall clock, or event time in a shadow replay
        self.clock: Callable[[], int] = now_ms
        self._consumer: Consumer | None = None
        self._ckpt: Checkpoint | None = None
        self._timers_wait: str | None = None  # why due timers wait for the registry

    # -- the process ----------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Process until `stop` is set, then commit what is open and leave the group."""
        while not stop.is_set():
            try:
                self._session(stop)
            except (ProducerFatal, KafkaException, TimeoutError) as exc:
                log.error("orchestrator session failed (%s); rebuilding it and rejoining", exc)
                self.health.aborted(exc)
                self._close_stores()
                stop.wait(1.0)
        if self.tracer is not None:
            self.tracer.shutdown()  # the spans of the last transactions, before the process ends

    def _session(self, stop: threading.Event) -> None:
        producer = Producer(
            self.settings.transactional_producer_config(self.instance.transactional_id)
        )
        while not stop.is_set():
            self.health.advanced()
            try:
                producer.init_transactions(10)
                break
            except KafkaException as exc:
                if exc.args[0].code() in AUTHORIZATION_CODES:
                    raise NotAuthorized(
                        refused(
                            self.settings,
                            "WRITE",
                            f"transactional id {self.instance.transactional_id}",
                            ROLE,
                        )
                    ) from None
                if exc.args[0].fatal():
                    raise ProducerFatal(str(exc)) from exc
                log.warning("waiting for the transaction coordinator: %s", exc.args[0])
        else:
            return
        ckpt = self._ckpt = Checkpoint(producer, self.settings.changelog_topic())
        self._publish_definitions()
        consumer = self._consumer = Consumer(self._consumer_config())
        consumer.subscribe(
            [*self.inputs, self.settings.changelog_topic()],
            on_assign=self._assigned,
            on_revoke=self._revoked,
            on_lost=self._lost,
        )
        log.info("orchestrator consuming %s", ", ".join(self.inputs))
        interval = self.settings.commit_interval_ms / 1000
        linger = min(interval, self.settings.commit_linger_ms / 1000)
        tick = self.settings.timer_tick_ms / 1000
        next_tick = 0.0
        try:
            while not stop.is_set():
                self.health.advanced()
                now = time.monotonic()
                wait = ckpt.started + linger - now if ckpt.open else next_tick - now
                msgs = _fetch(consumer, max(0.0, min(wait, tick)))
                for msg in msgs:
                    self._handle(msg)
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + tick
                    self._fire_due()
                    self._resume_waiting()
                # under load a transaction gathers up to `interval`; once the inputs run dry,
                # what is open commits after `linger`, so a quiet saga is not held back
                open_for = time.monotonic() - ckpt.started
                if ckpt.open and (
                    open_for >= interval
                    or ckpt.records >= MAX_RECORDS_PER_TRANSACTION
                    or (len(msgs) < BATCH and open_for >= linger)
                ):
                    self._commit()
            # what is open commits (or aborts) within the drain bound, leaving time to close
            self._commit(max(1.0, self.settings.drain_timeout_s - 2))
        finally:
            self.ready.clear()
            consumer.close()
            self._close_stores()
            producer.flush(1)  # committed or aborted: nothing should be left

    def _publish_definitions(self) -> None:
        """Before anything is consumed, the file's definitions are on the definitions topic, so
        no state is pinned to an unpublished shape. A refused write (DeliveryFailed) or a
        missing topic (ClusterError) stops the worker with the reason, and so does a file that
        changes a deployed saga's identity (RefusedChange), unless that is allowed."""
        # the worker read the topic a moment ago, before it built the topology and codec
        self.book.refuse_changes(self.settings.allow_refused_changes)
        published = self.book.publish(self.instance.transactional_id, now_ms(), SHAPE_RETRY_S)
        self._book_read = time.monotonic()
        for found in published:
            log.warning(
                "published %s v%d (shape %s) to %s",
                found.saga,
                found.version,
                found.shape,
                self.book.topic,
            )

    def _consumer_config(self) -> dict[str, Any]:
        group = self.settings.group(ROLE)
        lag = ConsumerLag(
            self.metrics.consumer_lag,
            group,
            self.inputs,
            interval_ms=self.settings.consumer_lag_interval_ms,
        )
        return self.settings.consumer_config(
            group,
            **lag.config(),
            **{
                "partition.assignment.strategy": "range",
                # restore runs in the assignment callback: a large one may take minutes
                "max.poll.interval.ms": 900_000,
                # partitions added to an input must be noticed (and refused) soon
                "topic.metadata.refresh.interval.ms": 10_000,
            },
        )

    def readiness(self) -> Check:
        """/readyz: the stores are restored and it consumes, and no trouble RoleHealth watches."""
        restoring = (
            []
            if self.ready.is_set()
            else [self.owner.refused or "no partitions assigned, or still restoring"]
        )
        refused = self.codec.config_error  # waiting will not fix wrong registry credentials
        shapes = [f"{t}[{p}] waits: {why}" for (t, p), why in sorted(self.shape_waits.items())]
        return self.health.ready(*restoring, *([refused] if refused else []), *shapes)

    # -- one input ------------------------------------------------------------------------
    def _handle(self, msg: Message) -> None:
        ckpt = self._ckpt
        assert ckpt is not None
        err = msg.error()
        if err is not None:
            refusal = read_refused(self.settings, err, msg.topic(), self.settings.group(ROLE), ROLE)
            if refusal is not None:
                raise refusal
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer: %s", err)
                if msg.topic():
                    self.health.input_failed(msg.topic() or "", err.str())
            return
        where = (msg.topic() or "", msg.partition() or 0)
        if (
            where[1] not in self.stores
            or where in self.owner.waiting
            or where[0] == self.owner.anchor
        ):
            return  # not ours (paused; the anchor is never read): its owner reads it
        if where in self.waiting:
            return  # its partition waits for the schema registry; this one is re-read later
        got = self._read(msg)
        if isinstance(got, Decoded):
            try:
                self.encoder.prepare()  # what it causes must be encodable before it is decided
            except RegistryUnavailable as exc:
                got = Unavailable(f"cannot encode what {got.event_type} causes: {exc}")
        if isinstance(got, Unavailable):
            self._wait_for_registry(msg, got)
            return
        if isinstance(got, Decoded):
            self.tally.add(self.metrics.consumed, ROLE, got.event_type)
        self.health.input_read(where[:1])
        self.health.registry_back(where)
        if self._failures.pop(where, None) is not None and not self._failures:
            self.metrics.registry_up.labels(ROLE).set(1)
        try:
            # before a transaction begins: one holding only a wait could not commit
            if isinstance(got, Decoded):
                self._definition_known(where[1], got.key)
        except ShapeUnknown as exc:
            self._wait_for_definition(msg, exc)
            return
        ckpt.begin()
        try:
            rejected = got if isinstance(got, Rejected) else self._decide(where[1], got, msg)
        except RegistryUnavailable as exc:
            self._wait_for_registry(msg, Unavailable(str(exc)))
            return
        except ShapeUnknown as exc:
            self._wait_for_definition(msg, exc)
            return
        if self.shape_waits.pop(where, None) is not None:
            log.warning("%s[%d] goes on: the definition it waited for is read", *where)
        if rejected is not None:
            self._dead_letter(self._letter(msg, None, where[1], rejected), rejected, msg)
        ckpt.consumed(msg)
        self.horizon.read(where, msg.offset() or 0, timestamp(msg))

    def _read(self, msg: Message) -> Decoded | Rejected | Unavailable:
        try:
            return read_input(msg, self.codec, self.topology, self.settings)
        except Exception as exc:  # a bug in decoding must not stop the partition either
            log.exception("reading %s[%s]@%s failed", msg.topic(), msg.partition(), msg.offset())
            return Rejected("processing_error", f"{type(exc).__name__}: {exc}")

    def _decide(self, partition: int, got: Decoded, msg: Message | None) -> Rejected | None:
        """Decide one input into the open transaction: all it causes, or nothing of it and
        why (the caller dead-letters the input, and the loop goes on)."""
        try:
            return self._decide_input(partition, got, msg)
        except (KafkaException, RegistryUnavailable, ShapeUnknown):
            # the producer failed (the session is rebuilt), or the registry cannot give an id,
            # or its saga's definition is not read yet (the input waits): not the input's
            # fault, and nothing of it was kept
            raise
        except Exception as exc:  # a bug must not stop the partition: park the input
            log.exception("orchestrator failed on %s of %r", got.event_type, got.key)
            return Rejected("processing_error", f"{type(exc).__name__}: {exc}")

    def _decide_input(self, partition: int, got: Decoded, msg: Message | None) -> Rejected | None:
        ckpt = self._ckpt
        assert ckpt is not None
        store = self.stores[partition]
        key, record = got.key, dict(got.record)
        meta = record.pop("meta")
        state = ckpt.state(partition, store, key)
        if state is not None:
            definition = (state.saga, self._spec_of(state))
        elif (found := saga_for(self.topology.sagas, got.event_type)) is not None:
            definition = found
        else:
            return Rejected("no_saga", f"{got.event_type} starts no saga and none is running")
        now = self.clock()
        incoming = Event(
            got.event_type,
            meta["event_id"],
            record,
            attempt=meta["attempt"],
            hop=meta["hop"],
            correlation_id=meta["correlation_id"],
            traceparent=meta["traceparent"],
            step=meta.get("step"),
        )
        if incoming.event_type == MIGRATE_EVENT:
            if state is None:
                return Rejected("no_saga", f"{MIGRATE_EVENT}: no saga is stored under this key")
            decision, definition = self._migrate(definition, state, incoming, now)
        else:
            decision = decide(definition, state, incoming, now)
        if decision.duplicate:
            return None
        new = decision.state
        parent = meta if new is None else caused_by(new, meta)
        spec = definition[1]
        # a step's command carries its attempt's span as parent (the handler's span nests there)
        parents = (
            [None] * len(decision.commands)
            if new is None
            else traceparents(spec, new, decision.commands)
        )
        # encode everything first: a failure here must leave nothing of this input behind
        refused = None if decision.dead_letter is None else Rejected("saga", decision.dead_letter)
        try:
            out = [
                self.encoder.derived(
                    c.event_type, key, c.fields, parent, c.attempt, now, c.step, tp
                )
                for c, tp in zip(decision.commands, parents, strict=True)
            ]
            letter = None if refused is None else self._letter(msg, got, partition, refused)
            audit = (
                None
                if new is None
                else self._audit(key, definition[1].audit, new, decision.lifecycle, parent)
            )
        except EncodeError as exc:
            return Rejected("output_encoding", str(exc))
        try:
            value = None if new is None else encode_state(new)
        except StateEncodingError as exc:
            return Rejected("state_encoding", str(exc))
        try:  # all of it must fit before any of it enters the transaction
            self._check_fits(key, decision.commands, out, new, value, audit)
        except RecordTooLarge as exc:
            return Rejected(exc.reason, str(exc))
        # handing over: nothing below fails on this input's account
        if new is not None:
            ckpt.put_state(partition, store, key, state, new, value)
        if audit is not None:
            ckpt.keep_trail(key, audit)
        for rec in out:
            ckpt.produce(rec)
        for c in decision.commands:
            self.tally.add(self.metrics.produced, ROLE, c.event_type)
        if new is not None:
            self._lifecycle.noted(new.saga, decision.lifecycle, new.steps)
        self._observe(spec, state, decision, incoming, now, msg)
        logs.decided(
            definition[0],
            parent,  # the input's ids, with the saga's own trace and correlation
            None if new is None else new.status,
            (c.event_type for c in decision.commands),
            (what if step is None else f"{what}:{step}" for what, step in decision.lifecycle),
        )
        if letter is not None and refused is not None:
            self._dead_letter(letter, refused, msg)
        if (
            new is not None
            and new.status in TERMINAL
            and (state is None or state.status not in TERMINAL)
        ):
            ckpt.after_commit(partial(self._count_outcome, new.saga, new.status, new))
        moved = new is not None and state is not None and new.shape != state.shape
        if new is not None and _running(new) and (moved or not _running(state)):
            ckpt.after_commit(partial(self._count_running, partition, _version_of(new), 1))
        if state is not None and _running(state) and (moved or not _running(new)):
            ckpt.after_commit(partial(self._count_running, partition, _version_of(state), -1))
        if _status_of(new) != _status_of(state):  # started, compensating or ended: rare
            ckpt.after_commit(partial(self._count_status, partition, state, new))
        if waiting_steps(new) != waiting_steps(state):
            ckpt.after_commit(partial(self._waits.decided, partition, state, new, now))
        return None

    def _observe(
        self,
        spec: SagaSpec,
        before: SagaState | None,
        decision: Decision,
        event: Event,
        now: int,
        msg: Message | None,
    ) -> None:
        """Once the decision commits: the attempts it ended into the step-duration metric and,
        when tracing is on, the spans it finished to the exporter (never an aborted one's)."""
        assert self._ckpt is not None
        after = decision.state
        ended = [] if after is None else attempts_ended(before, after, event)
        if ended and after is not None:
            self._ckpt.after_commit(partial(self._lifecycle.ended, after.saga, ended))
        if self.tracer is None:
            return
        spans = decision_spans(
            spec, before, decision, event, now, self.encoder.topic_of, _where(msg)
        )
        if spans:
            self._ckpt.after_commit(partial(self.tracer.export, spans))

    def _migrate(
        self, definition: tuple[str, SagaSpec], state: SagaState, event: Event, now: int
    ) -> tuple[Decision, tuple[str, SagaSpec]]:
        """A SagaMigrate: the instance re-pinned to the event's to_shape (read the definitions
        again once if that shape is not read yet), or refused; and the definition it is on after."""
        saga, to_shape = state.saga, str(event.fields.get("to_shape"))
        new = self.book.spec(saga, to_shape)
        if new is None:
            self._reread_definitions()
            new = self.book.spec(saga, to_shape)
        if new is not None and (missing := self._unloaded(new)):
            raise ShapeUnknown(saga, to_shape, self.book.topic, missing)
        decision = repin(saga, definition[1], new, state, event, now)
        return decision, definition if decision.state is None or new is None else (saga, new)

    # -- definitions ----------------------------------------------------------------------
    def _spec_of(self, state: SagaState) -> SagaSpec:
        """The definition a stored saga is decided by: its pinned shape's (the lowest version's
        for a state without one); ShapeUnknown, after reading the topic again, if none."""
        saga, shape = state.saga, state.shape
        spec = self._recorded(saga, shape)
        if spec is None and time.monotonic() - self._book_read >= SHAPE_RETRY_S:
            self._reread_definitions()
            spec = self._recorded(saga, shape)
        if spec is None:
            raise ShapeUnknown(saga, shape, self.book.topic, [])
        if missing := self._unloaded(spec):
            raise ShapeUnknown(saga, shape, self.book.topic, missing)
        return spec

    def _unloaded(self, spec: SagaSpec) -> list[str]:
        """Event types of a definition the topology, codec and encoder were not built with."""
        found = self._unloaded_by_shape.get(spec.shape)
        if found is None:
            events = dict.fromkeys(saga_event_types(spec))
            found = [e for e in events if e not in self.topology.events]
            self._unloaded_by_shape[spec.shape] = found
        return found

    def _definition_known(self, partition: int, key: bytes) -> None:
        """ShapeUnknown if the saga stored under `key` has no definition this process can use."""
        assert self._ckpt is not None
        state = self._ckpt.state(partition, self.stores[partition], key)
        if state is not None:
            self._spec_of(state)

    def _recorded(self, saga: str, shape: str | None) -> SagaSpec | None:
        if shape is None:
            lowest = self.book.lowest(saga)
            return None if lowest is None else self.book.spec(saga, lowest.shape)
        return self.book.spec(saga, shape)

    def _reread_definitions(self) -> None:
        """Read the definitions topic again; while it cannot be read, what was read before
        stays (an input whose shape is still unknown goes on waiting)."""
        self._book_read = time.monotonic()
        try:
            self.book.read(patience=0)  # the loop must go on: the next miss asks again
        except (ClusterError, KafkaException, TimeoutError) as exc:
            log.warning("cannot read %s again (%s); keeping what was read", self.book.topic, exc)

    def _wait_for_definition(self, msg: Message, exc: ShapeUnknown) -> None:
        """Its partition waits (paused, rewound to it) and reads the topic again later."""
        where = (msg.topic() or "", msg.partition() or 0)
        if where not in self.shape_waits:
            log.warning("%s[%d]@%d: %s", *where, msg.offset(), exc)
        self.shape_waits[where] = str(exc)
        self._hold(msg, SHAPE_RETRY_S)

    def _count_running(self, partition: int, version: tuple[str, str | None], delta: int) -> None:
        counts = self.running.setdefault(partition, {})
        counts[version] = counts.get(version, 0) + delta
        self._versions_changed.add(version)

    def _count_status(self, partition: int, old: SagaState | None, new: SagaState | None) -> None:
        """sagastream_sagas_running (shown once the transaction ended) after a saga's status
        changed: it started, began compensating or ended."""
        counts = self.statuses.setdefault(partition, {})
        for state, delta in ((old, -1), (new, 1)):
            status = _status_of(state)
            if state is not None and status is not None:
                counts[state.saga, status] = counts.get((state.saga, status), 0) + delta
                self._statuses_changed.add((state.saga, status))

    def _show_statuses(self, pairs: Iterable[tuple[str, str]]) -> None:
        """sagastream_sagas_running for these (saga, status)es, over every store."""
        for saga, status in pairs:
            total = sum(c.get((saga, status), 0) for c in self.statuses.values())
            self.metrics.sagas_running.labels(saga, status).set(total)

    def _count_restored(self, partition: int, store: PartitionStore) -> None:
        """The running instances of a restored store, by saga and shape and by saga and
        status: read once here, then kept by each start, status change and end."""
        counts: dict[tuple[str, str | None], int] = {}
        statuses: dict[tuple[str, str], int] = {}
        waits = []
        for _, raw in store.states():
            state = decode_state(raw)
            if _running(state):
                waits.extend(waits_of(state))
                version = _version_of(state)
                counts[version] = counts.get(version, 0) + 1
                statuses[state.saga, state.status] = statuses.get((state.saga, state.status), 0) + 1
        self.running[partition] = counts
        self.statuses[partition] = statuses
        self._waits.restored(partition, waits)
        self._show_running(set(counts))
        self._show_statuses(set(statuses))

    def _show_running(self, versions: set[tuple[str, str | None]]) -> None:
        """sagastream_saga_versions_running for these (saga, shape)s, over every store."""
        for saga, shape in versions:
            total = sum(c.get((saga, shape), 0) for c in self.running.values())
            pinned = shape
            if pinned is None and (lowest := self.book.lowest(saga)) is not None:
                pinned = lowest.shape
            found = None if pinned is None else self.book.find(saga, pinned)
            version = "?" if found is None else str(found.version)
            self.metrics.versions_running.labels(saga, version, pinned or "?").set(total)

    def _count_outcome(self, saga: str, status: str, state: SagaState) -> None:
        self.metrics.outcomes.labels(saga, status).inc()
        assert state.ended is not None  # an ended saga's
        seconds = (state.ended - state.started) / 1000
        self.metrics.saga_seconds.labels(saga, status).observe(seconds)

    def _audit(
        self,
        key: bytes,
        audit: str,
        state: SagaState,
        lifecycle: list[tuple[str, str | None]],
        parent: dict[str, Any],
    ) -> tuple[TrailEntry, OutRecord] | None:
        """Audit: one SagaLifecycle record per saga per transaction, carrying its changes; the
        saga's entry with this decision's changes added, and its record (None: nothing to
        audit). The record is encoded here, so that its size is known before it is kept."""
        if audit == "off" or LIFECYCLE_EVENT not in self.topology.events:
            return None
        changes = [
            {"what": what, "step": step}
            for what, step in lifecycle
            if audit == "full" or what in OUTCOME_CHANGES
        ]
        if not changes:
            return None
        assert self._ckpt is not None
        kept = self._ckpt.trail.get(key)
        saga, earlier = (state.saga, []) if kept is None else (kept[0][0], kept[0][2])
        entry = (saga, state.status, earlier + changes, parent)
        fields = {"saga_type": saga, "status": entry[1], "changes": entry[2]}
        return entry, self.encoder.derived(LIFECYCLE_EVENT, key, fields, parent, 1)

    def _check_fits(
        self,
        key: bytes,
        commands: list[Any],
        out: list[OutRecord],
        state: SagaState | None,
        encoded: bytes | None,
        audit: tuple[TrailEntry, OutRecord] | None,
    ) -> None:
        """Raise RecordTooLarge if a record of one input's decision would not fit its topic:
        its commands and outcomes, its audit record and its saga state (`encoded`)."""
        records = [
            (c.event_type, r.topic, r.key, r.value, r.headers)
            for c, r in zip(commands, out, strict=True)
        ]
        if audit is not None:
            rec = audit[1]
            records.append(("the audit record", rec.topic, rec.key, rec.value, rec.headers))
        if state is not None:
            changelog = self.settings.changelog_topic()
            records.append(("the saga state", changelog, key, encoded, changelog_headers(state)))
        check_fits(self.limits, records)

    def _letter(
        self, msg: Message | None, got: Decoded | None, partition: int, rejected: Rejected
    ) -> OutRecord:
        """The dead-letter record of an input: the message's bytes as they came, or for a fired
        timer (no message) the TimerFired event itself."""
        if msg is not None:
            return dead_letter(
                msg, self.topology, self.settings, rejected, PRODUCER_NAME, limits=self.limits
            )
        assert got is not None
        timers = self.timer_topic or "sagas.timers"
        topic = self.settings.topic(self.topology.dlq(timers))
        value = self.codec.encode(TIMER_EVENT, got.record)
        origin = Origin(self.settings.topic(timers), partition, -1, now_ms())
        headers = dead_letter_headers(origin, rejected.reason, rejected.error, PRODUCER_NAME)
        return OutRecord(topic, got.key, value, headers)

    def _dead_letter(self, letter: OutRecord, rejected: Rejected, msg: Message | None) -> None:
        """Produce an input's dead-letter record; `msg` is the input (None: a fired timer)."""
        assert self._ckpt is not None
        self._ckpt.produce(letter)
        if msg is None:
            source, what = self.timer_topic or "", f"a timer of {letter.key!r}"
        else:
            source = msg.topic() or ""
            what = f"{source}[{msg.partition()}]@{msg.offset()}"
        self.metrics.dead_letters.labels(ROLE, source, rejected.reason).inc()
        log.warning("dead-lettered %s to %s: %s", what, letter.topic, rejected.error)

    # -- timers ---------------------------------------------------------------------------
    def _fire_due(self) -> None:
        """Decide every timer due now, in this transaction; a fired timer is gone from state.

        "Now" is, per partition, no later than what its inputs have read (see Horizon): a
        result already on the topic is decided before the timer it would have disarmed.
        """
        ckpt = self._ckpt
        assert ckpt is not None
        now = self.clock()
        limits = self._timer_limits(now)
        for partition, store in list(self.stores.items()):
            until = limits.get(partition)
            if until is None:
                continue  # nothing read yet that says how late it is
            due = set(store.due(until, MAX_DUE_PER_TICK))
            for key, touched in ckpt.pending_states(partition).items():
                due.update((d, t, key) for t, d in timers_of(touched.state).items() if d <= until)
            for due_ms, timer, key in sorted(due):
                state = ckpt.state(partition, store, key)
                if timer == EXPIRY:  # an ended saga's retention is over: a tombstone removes it
                    if state is not None and state.expires == due_ms:
                        ckpt.begin()
                        ckpt.put_state(partition, store, key, state, None, None)
                        self.tally.add(self.metrics.timers_fired, EXPIRY)
                        self._count_lateness(EXPIRY, now - due_ms)
                    continue
                if state is None or state.timers.get(timer) != due_ms:
                    continue  # disarmed, or fired already in this transaction
                if not self._can_encode():
                    return  # every due timer stays armed and is fired on a later tick
                kind, step, attempt = timer.split("|")
                event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{key.hex()}|{timer}|{due_ms}"))
                meta = {
                    "event_id": event_id,
                    "event_type": TIMER_EVENT,
                    "saga_key": key.decode(errors="replace"),
                    "occurred_at": now,
                    "producer": PRODUCER_NAME,
                    "correlation_id": state.correlation_id or event_id,
                    "causation_id": None,
                    "traceparent": state.traceparent,
                    "hop": 0,
                    "attempt": 1,
                }
                fields = {"kind": kind, "step": step, "attempt": int(attempt), "due_ms": due_ms}
                fired = Decoded(TIMER_EVENT, {**fields, "meta": meta}, key)
                ckpt.begin()
                try:
                    rejected = self._decide(partition, fired, None)
                except RegistryUnavailable:
                    return  # it stays armed; _can_encode says why on the next tick
                except ShapeUnknown:
                    continue  # it stays armed until its definition is read
                if rejected is not None:
                    # it must not fail again every tick: park the timer, disarmed
                    disarmed = state.copy()
                    del disarmed.timers[timer]
                    value = encode_state(disarmed)  # its state was stored: it encodes
                    ckpt.put_state(partition, store, key, state, disarmed, value)
                    letter = self._letter(None, fired, partition, rejected)
                    self._dead_letter(letter, rejected, None)
                    continue
                self.tally.add(self.metrics.timers_fired, kind)
                self._count_lateness(kind, now - due_ms)

    def _count_lateness(self, kind: str, late_ms: int) -> None:
        """sagastream_timer_lateness_seconds, once this fire is committed: a fire undone by an
        abort fires again later, and is counted then."""
        assert self._ckpt is not None
        observe = self.metrics.timer_lateness.labels(kind).observe
        self._ckpt.after_commit(partial(observe, max(0, late_ms) / 1000))

    def _timer_limits(self, now: int) -> dict[int, int | None]:
        """Per store partition, the latest due time that may fire now (None: none yet)."""
        consumer = self._consumer
        if consumer is None:
            return {}
        assignment = consumer.assignment()
        assigned = {(tp.topic, tp.partition) for tp in assignment}
        positions = {
            (tp.topic, tp.partition): tp.offset
            for tp in consumer.position(assignment)
            if tp.offset >= 0
        }
        return {p: self.horizon.until(p, now, self._ends, positions, assigned) for p in self.stores}

    def _ends(self, where: tuple[str, int]) -> tuple[int, int] | None:
        """The watermarks of the last fetch (a local look-up). Under read_committed the high one
        is still the high watermark, past any open transaction: such a partition counts as not
        read to its end, since what that transaction commits may be older than a timer."""
        assert self._consumer is not None
        try:
            low, high = self._consumer.get_watermark_offsets(TopicPartition(*where), cached=True)
        except KafkaException:  # not known to the consumer (yet): not read to its end
            return None
        return (max(low, 0), high) if high >= 0 else None

    # -- the schema registry is down --------------------------------------------------------
    def _can_encode(self) -> bool:
        """Whether what a timer causes can be encoded now; says so once when that changes."""
        try:
            self.encoder.prepare()
        except RegistryUnavailable as exc:
            if self._timers_wait is None:  # said once: this is asked again at every tick
                log.warning("%s; due timers stay armed and fire once it answers", exc)
                self.metrics.registry_up.labels(ROLE).set(0)
                self.metrics.registry_retries.labels(ROLE).inc()
            self._timers_wait = str(exc)
            return False
        if self._timers_wait is not None:
            log.warning("schema registry answers again; due timers fire")
            self._timers_wait = None
            if not self._failures:
                self.metrics.registry_up.labels(ROLE).set(1)
        return True

    def _wait_for_registry(self, msg: Message, got: Unavailable) -> None:
        """Only this partition waits: paused, rewound to this message, retried after a backoff."""
        where = (msg.topic() or "", msg.partition() or 0)
        failures = self._failures.get(where, 0)
        delay = retry_delay(failures)
        self._failures[where] = failures + 1
        self._hold(msg, delay)
        self.health.registry_waits(where)
        self.metrics.registry_up.labels(ROLE).set(0)
        self.metrics.registry_retries.labels(ROLE).inc()
        log.warning("%s; %s[%d]@%d waits, retry in %.1fs", got.error, *where, msg.offset(), delay)

    def _hold(self, msg: Message, delay: float) -> None:
        """Pause the message's partition, rewound to it, until `delay` seconds from now."""
        consumer = self._consumer
        assert consumer is not None
        where = (msg.topic() or "", msg.partition() or 0)
        tp = TopicPartition(where[0], where[1], msg.offset() or 0)
        consumer.pause([tp])
        consumer.seek(tp)
        self.horizon.held(where, tp.offset, timestamp(msg))
        self.waiting[where] = time.monotonic() + delay

    def _resume_waiting(self) -> None:
        if not self.waiting or self._consumer is None:
            return
        now = time.monotonic()
        ready = [w for w, at in self.waiting.items() if at <= now]
        for where in ready:
            del self.waiting[where]
        if ready:
            self._consumer.resume([TopicPartition(t, p) for t, p in ready])

    # -- commit and rebalance -------------------------------------------------------------
    def _commit(self, timeout: float = 30.0) -> None:
        ckpt, consumer = self._ckpt, self._consumer
        assert ckpt is not None and consumer is not None
        if not ckpt.open:
            return
        self._flush_trail()
        try:
            committed = commit_counted(ckpt, consumer, self.metrics, self.health, timeout)
        except BaseException:
            self.tally.discard()  # the session is rebuilt and the inputs read again
            raise
        if not committed:
            self.tally.discard()
        self._show_counts()
        if not committed:
            self._rewind()

    def _show_counts(self) -> None:
        """The metrics of the transaction that just ended, once for all its decisions: its
        counters, and the gauges of the sagas it started, moved, paused at a step or ended."""
        self.tally.flush()
        if self._versions_changed:
            self._show_running(self._versions_changed)
            self._versions_changed = set()
        if self._statuses_changed:
            self._show_statuses(self._statuses_changed)
            self._statuses_changed = set()
        self._waits.flush()

    def _flush_trail(self) -> None:
        ckpt = self._ckpt
        assert ckpt is not None
        for _, record in ckpt.trail.values():
            ckpt.produce(record)
        if ckpt.trail:
            self.tally.add(self.metrics.produced, ROLE, LIFECYCLE_EVENT, n=len(ckpt.trail))

    def _rewind(self) -> None:
        """After an abort: every assigned partition back to its committed offset."""
        consumer = self._consumer
        assert consumer is not None
        assigned = consumer.assignment()
        if not assigned:
            return
        try:
            committed = consumer.committed(assigned, timeout=30)
            self.horizon.rewound((tp.topic, tp.partition, tp.offset) for tp in committed)
            for tp in committed:
                tp.offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                consumer.seek(tp)
            self.waiting.clear()
            # only what this process owns: the anchor and others' inputs stay paused
            consumer.resume([tp for tp in assigned if self.owner.owns(tp.topic, tp.partition)])
        except KafkaException as exc:
            # cannot rewind in place: start over (new consumer, committed offsets, restore)
            raise ProducerFatal(f"rewinding after an abort failed: {exc}") from exc

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # assigned here, so what is not ours is paused before anything of it is fetched
        consumer.assign(partitions)
        owner = self.owner = self._ownership(consumer, partitions)
        mine = [tp for tp in partitions if owner.owns(tp.topic, tp.partition)]
        others = [tp for tp in partitions if not owner.owns(tp.topic, tp.partition)]
        if others:
            consumer.pause(others)
        if mine:
            # librdkafka keeps an application's pause across rebalances: what waited for its
            # store's owner or for the registry (a wait dropped with the partition) last
            # generation and is ours now is read again from its committed offset, on purpose
            consumer.resume(mine)
        self.metrics.partitions_waiting.set(len(owner.waiting))
        if owner.refused or owner.disagreement:
            log.error("%s", owner.refused or owner.disagreement)
        if owner.refused:
            self.ready.clear()
            return
        # waits until no transaction of a previous owner is pending on these partitions, so
        # the changelog below is final up to where our inputs start
        committed = consumer.committed(mine, timeout=60) if mine else []
        self.horizon.assigned((tp.topic, tp.partition, tp.offset) for tp in committed)
        numbers = set(owner.owned) - set(self.stores)
        opened = {p: RocksStore(self.instance.directory / f"p{p}") for p in sorted(numbers)}
        self.stores.update(opened)  # closed by the session's end even if restoring fails
        started = time.monotonic()
        self.health.input_read(tp.topic for tp in partitions)
        self._reread_definitions()  # another member may have published a version meanwhile
        for done in restore(self.settings, self.settings.changelog_topic(), opened):
            self.health.advanced()
            log.info(
                "partition %d restored: %d changelog records from %s",
                done.partition,
                done.records,
                "the start"
                if done.from_offset is None or done.from_offset < 0
                else done.from_offset,
            )
        self.metrics.restore_seconds.set(time.monotonic() - started)
        for partition, store in opened.items():
            self._count_restored(partition, store)
        assert self._ckpt is not None
        self._ckpt.hold({(tp.topic, tp.partition): tp.offset for tp in committed})
        self.ready.set()
        log.info("assigned partitions %s; owns stores %s", _listed(partitions), sorted(owner.owned))

    def _ownership(self, consumer: Consumer, partitions: list[TopicPartition]) -> Ownership:
        held = [(tp.topic, tp.partition) for tp in partitions]
        return ownership(self.settings.changelog_topic(), self.inputs, held, self._counts(held))

    def _counts(self, held: list[tuple[str, int]]) -> dict[str, int]:
        """Partition counts of the assigned topics, once this process's metadata has them all.

        Asked through the producer: the consumer's own list_topics, called inside its
        rebalance callback, breaks confluent-kafka's call state (the process aborts); and the
        producer may not know a topic created a moment ago yet, so it asks again a while.
        """
        assert self._ckpt is not None
        wanted = {t for t, _ in held}
        deadline = time.monotonic() + METADATA_WAIT_S
        while True:
            topics = self._ckpt.producer.list_topics(timeout=10).topics
            counts = {
                t: len(topics[t].partitions)
                for t in [self.settings.changelog_topic(), *self.inputs]
                if t in topics and topics[t].error is None
            }
            if wanted <= set(counts) or time.monotonic() > deadline:
                return counts
            time.sleep(0.5)

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._ckpt is not None and self._ckpt.open:
            self._commit()
        self._drop({tp.partition for tp in partitions})

    def _lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._ckpt is not None:
            self._ckpt.abort()
            self.tally.discard()
        self._drop({tp.partition for tp in partitions})

    def _drop(self, numbers: set[int]) -> None:
        if self._ckpt is not None:
            self._ckpt.forget_cached()
            self._ckpt.release(numbers)
        self.owner = replace(self.owner, owned=self.owner.owned - numbers)
        self.waiting = {w: v for w, v in self.waiting.items() if w[1] not in numbers}
        self.shape_waits = {w: v for w, v in self.shape_waits.items() if w[1] not in numbers}
        for p in numbers & set(self.running):
            self._show_running(set(self.running.pop(p)))
        for p in numbers & set(self.statuses):
            self._show_statuses(set(self.statuses.pop(p)))
        self._waits.dropped(numbers)
        self._failures = {w: n for w, n in self._failures.items() if w[1] not in numbers}
        self.health.registry_only(self._failures)
        self.horizon.dropped(numbers)
        if not self._failures:
            self.metrics.registry_up.labels(ROLE).set(1)
        for p in numbers:
            store = self.stores.pop(p, None)
            if store is not None:
                store.close()
        if not self.stores:
            self.ready.clear()

    def _close_stores(self) -> None:
        for store in self.stores.values():
            store.close()
        self.stores.clear()


def _where(msg: Message | None) -> dict[str, Any]:
    """The messaging attributes of a decided input (a fired timer has none)."""
    if msg is None:
        return {}
    return {
        "messaging.source.name": msg.topic() or "",
        "messaging.destination.partition.id": str(msg.partition()),
        "messaging.kafka.offset": msg.offset() or 0,
    }


def _running(state: SagaState | None) -> bool:
    return state is not None and state.status not in TERMINAL


def _status_of(state: SagaState | None) -> str | None:
    """The status a running saga is counted under; None for none or an ended one."""
    return None if state is None or state.status in TERMINAL else state.status


def _version_of(state: SagaState) -> tuple[str, str | None]:
    return state.saga, state.shape


def _listed(partitions: list[TopicPartition]) -> str:
    by_topic: dict[str, list[int]] = {}
    for tp in partitions:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return "; ".join(f"{t} {sorted(ps)}" for t, ps in sorted(by_topic.items()))


def commit_counted(
    ckpt: Checkpoint, consumer: Consumer, metrics: Metrics, health: RoleHealth, timeout: float
) -> bool:
    """Commit the open transaction and count it as what it became; False if it was aborted.

    A commit whose outcome stays unknown (it timed out and could not be resumed in time) or a
    fenced producer rebuilds the session: counted as `failed` (the inputs are re-read from the
    offsets that did commit), then raised.
    """
    records, started = ckpt.records, time.monotonic()
    try:
        ckpt.commit(consumer, timeout)
    except TransactionFailed as exc:
        metrics.transactions.labels("aborted").inc()
        health.aborted(exc)
        log.warning("transaction aborted (%s); re-reading from the committed offsets", exc)
        return False
    except ProducerFatal:
        metrics.transactions.labels("failed").inc()
        raise
    metrics.transactions.labels("committed").inc()
    health.committed()
    metrics.commit_seconds.observe(time.monotonic() - started)
    metrics.transaction_records.observe(records)
    return True
