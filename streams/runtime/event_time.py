"""Replaying history in event time: an orchestrator that reads a bounded range of its inputs in
timestamp order, decides each at its record's timestamp, fires timers when event time passes
them, and stops at the end of the range (a shadow replay, `sagastream replay shadow`).

Replaying fast must not change decisions about time. The live orchestrator read its inputs as
they arrived, so the replay merges the input partitions by record timestamp (`Merge`); its clock
is the largest timestamp so far, and before a record is decided every timer due by its
timestamp fires, each at its own due time (`EventClock`). Timestamps alone do not say in which
order the live run took results that came close together (a busy orchestrator takes a fetch's
partitions in any order), and a saga's decisions depend on it (compensation runs in reverse
completion order); so the events of one saga are decided in the order its live state recorded
them (`LiveOrder`). The live path pays nothing for this: it is a subclass, and the live clock
stays the wall clock.

A replay through a changed topology decides with the live results, which answer the live run's
commands (`LiveAnswers`): a result of a step the new topology renames answers its new name, and
a result read before the replay has sent the attempt it answers (the step now waits for another,
or retries later) waits until it has, as its handler would have answered the later command.
"""

from __future__ import annotations

import heapq
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, Message, TopicPartition

from sagastream.core.state import SagaState, seen_digest
from sagastream.core.topology import ATTEMPT_FAILED_EVENT, SIGNAL_EVENT, SagaSpec, Topology
from sagastream.errors import SagastreamError
from sagastream.runtime.horizon import timestamp
from sagastream.runtime.inputs import Decoded, Rejected, Unavailable
from sagastream.runtime.metrics import Metrics
from sagastream.runtime.orchestrator import Orchestrator
from sagastream.runtime.settings import Settings
from sagastream.runtime.store import timers_of
from sagastream.wire.codec import AvroCodec, SchemaStore

Partition = tuple[str, int]
# a partition buffers this many records at most before it is paused (and resumed below half)
BUFFERED_MAX = 10_000


class ReplayFailed(SagastreamError, RuntimeError):
    """The replay cannot go on exactly (an aborted transaction, a rebalance, no registry)."""


class EventClock:
    """Event time, and the timers armed in it: time moves only when an input or a timer says so."""

    def __init__(self) -> None:
        self.now = 0
        self._armed: list[tuple[int, int, bytes]] = []
        self._queued: set[tuple[int, int, bytes]] = set()

    def time(self) -> int:
        return self.now

    def arm(self, due_ms: int, partition: int, key: bytes) -> None:
        """A saga's timer; arming one that is queued already changes nothing."""
        entry = (due_ms, partition, key)
        if entry not in self._queued:
            self._queued.add(entry)
            heapq.heappush(self._armed, entry)

    def fire_next(self, until: int) -> list[tuple[int, bytes]]:
        """The sagas with a timer at the earliest due time up to `until`, with the clock moved
        to it; none when nothing is due by then. Whoever fires them re-arms what is still armed."""
        if not self._armed or self._armed[0][0] > until:
            return []
        due = self._armed[0][0]
        self.now = max(self.now, due)
        fired = []
        while self._armed and self._armed[0][0] == due:
            entry = heapq.heappop(self._armed)
            self._queued.discard(entry)
            fired.append(entry[1:])
        return fired

    def reach(self, until: int) -> None:
        self.now = max(self.now, until)


class Merge:
    """Input records in timestamp order, each input partition within its offset range.

    A record is released once every partition that may still hold an earlier one has a record
    buffered or has been read to the end of its range. Ties go to the topic ranked first (a
    saga's start event before its results), then by partition and offset.
    """

    def __init__(
        self, ranges: Mapping[Partition, tuple[int, int]], rank: Mapping[str, int]
    ) -> None:
        self._ends = {tp: end for tp, (_, end) in ranges.items()}
        self._next = {tp: start for tp, (start, _) in ranges.items()}
        self._rank = rank
        self._buffers: dict[Partition, deque[Message]] = {tp: deque() for tp in ranges}
        self._heads: list[tuple[int, int, int, int, Partition]] = []
        # partitions that hold back every release: not read to their end, nothing buffered
        self._starved = {tp for tp in ranges if not self.exhausted(tp)}

    def partitions(self) -> list[Partition]:
        return list(self._ends)

    def exhausted(self, tp: Partition) -> bool:
        """Read to the end of its range (what it buffered may still wait)."""
        return self._next[tp] >= self._ends[tp]

    def buffered(self, tp: Partition) -> int:
        return len(self._buffers[tp])

    @property
    def done(self) -> bool:
        return not self._heads and all(self.exhausted(tp) for tp in self._ends)

    def add(self, msg: Message) -> bool:
        """Buffer a record; False if it lies past its partition's range (the partition is done)."""
        tp = (msg.topic() or "", msg.partition() or 0)
        offset = msg.offset() or 0
        if offset >= self._ends[tp]:
            self.reached(tp, offset)
            return False
        self._next[tp] = offset + 1
        buffer = self._buffers[tp]
        buffer.append(msg)
        if len(buffer) == 1:
            heapq.heappush(self._heads, self._order(tp, msg))
        self._starved.discard(tp)
        return True

    def reached(self, tp: Partition, offset: int) -> None:
        """The partition has nothing before `offset` left to read (its end, or past its range)."""
        self._next[tp] = max(self._next[tp], min(offset, self._ends[tp]))
        if self.exhausted(tp):
            self._starved.discard(tp)

    def ready(self) -> Iterator[Message]:
        """Release records in order while no partition holds them back."""
        while self._heads and not self._starved:
            tp = heapq.heappop(self._heads)[-1]
            buffer = self._buffers[tp]
            msg = buffer.popleft()
            if buffer:
                heapq.heappush(self._heads, self._order(tp, buffer[0]))
            elif not self.exhausted(tp):
                self._starved.add(tp)
            yield msg

    def _order(self, tp: Partition, msg: Message) -> tuple[int, int, int, int, Partition]:
        return (timestamp(msg) or 0, self._rank.get(tp[0], 0), tp[1], msg.offset() or 0, tp)


class LiveOrder:
    """The order the live run decided each saga's events in (the `seen` of its state: digests
    of the event ids, fired timers left out), so that a replay decides them in that order too:
    an event waits for those decided before it."""

    def __init__(self, seen: Mapping[bytes, Sequence[str]]) -> None:
        self._position = {
            digest: (key, n) for key, digests in seen.items() for n, digest in enumerate(digests)
        }
        self._next: dict[bytes, int] = {}
        self._held: dict[bytes, dict[int, Message]] = {}

    def admit(self, msg: Message, event_id: str | None) -> list[Message]:
        """What may be decided now: `msg` and the events it held back, or nothing while an
        event the live run decided before it has not come."""
        where = None if event_id is None else self._position.get(seen_digest(event_id))
        if where is None:
            return [msg]
        key, n = where
        expected = self._next.get(key, 0)
        held = self._held.setdefault(key, {})
        if n > expected:
            held[n] = msg
            return []
        out = [msg]
        expected = max(expected, n + 1)
        while expected in held:
            out.append(held.pop(expected))
            expected += 1
        self._next[key] = expected
        return out

    def rest(self) -> list[Message]:
        """What still waits for an event that never came (outside the replay), in order."""
        out = [msg for held in self._held.values() for _, msg in sorted(held.items())]
        self._held.clear()
        return out


class LiveAnswers:
    """The live results, as answers to a replay's commands under a changed topology: renamed
    steps (per saga, old name -> new name) and results that wait for their command."""

    def __init__(self, renames: Mapping[str, Mapping[str, str]]) -> None:
        self.renames = renames
        self._early: dict[bytes, list[Message]] = {}

    def renamed(self, got: Decoded, topology: Topology) -> Decoded:
        """The result with the step it names renamed as the new topology renames it."""
        record, meta = got.record, got.record["meta"]
        if got.event_type in (ATTEMPT_FAILED_EVENT, SIGNAL_EVENT):
            new = self.renames.get(str(record.get("saga_type")), {}).get(str(record.get("step")))
            return got if new is None else Decoded(got.event_type, {**record, "step": new}, got.key)
        for saga, steps in self.renames.items():
            new = steps.get(str(meta.get("step")))
            spec = topology.sagas.get(saga)
            if new is not None and spec is not None and got.event_type in _results(spec, new):
                renamed = {**record, "meta": {**meta, "step": new}}
                return Decoded(got.event_type, renamed, got.key)
        return got

    def hold(self, msg: Message) -> None:
        self._early.setdefault(msg.key() or b"", []).append(msg)

    def waiting(self, key: bytes) -> list[Message]:
        return list(self._early.get(key, ()))

    def take(self, key: bytes, msg: Message) -> bool:
        """Take a held result to decide it; False if it was decided already (a decision it
        waited for answered it on the way)."""
        held = self._early.get(key, [])
        if not any(m is msg for m in held):
            return False
        held[:] = [m for m in held if m is not msg]
        if not held:
            del self._early[key]
        return True

    def rest(self) -> list[Message]:
        """The results whose command the replay never sent, in the order they were read."""
        out = [msg for held in self._early.values() for msg in held]
        self._early.clear()
        return out


def _results(spec: SagaSpec, step: str) -> tuple[str, ...]:
    """Every event type that answers a step or its compensation."""
    found = spec.steps.get(step)
    if found is None:
        return ()
    comp = found.compensation
    undo = () if comp is None else (comp.success, *comp.failure)
    return (*((found.success,) if found.success else ()), *found.failure, *undo)


def sent_yet(spec: SagaSpec, state: SagaState, got: Decoded) -> bool:
    """Whether a saga has sent the attempt a result answers (True for anything that is not a
    step's result, or names no step of the saga: deciding it says what it is)."""
    record, meta = got.record, got.record["meta"]
    if got.event_type == ATTEMPT_FAILED_EVENT:
        step, undo = record.get("step"), bool(record.get("compensation"))
    else:
        step = meta.get("step")
        found = spec.steps.get(str(step))
        comp = None if found is None else found.compensation
        undo = comp is not None and got.event_type in (comp.success, *comp.failure)
    st = state.steps.get(str(step)) if step is not None else None
    if st is None:
        return True
    return int(meta.get("attempt") or 1) <= (st.undo_attempt if undo else st.attempt)


class EventTimeOrchestrator(Orchestrator):
    """An orchestrator that decides the `ranges` of its inputs in event time, each saga's in the
    order of its live `seen`, fires what is due by `until_ms` (the wall time the ranges' ends
    were taken at), commits, and stops.

    Its stores start empty, so every armed timer passes through a decision it sees. Anything
    that would make it re-read inputs (an aborted transaction, a rebalance, a registry that
    does not answer) ends it with ReplayFailed: a replay is run again, not resumed.
    """

    def __init__(
        self,
        settings: Settings,
        topology: Topology,
        schemas: SchemaStore,
        codec: AvroCodec,
        metrics: Metrics,
        ranges: Mapping[Partition, tuple[int, int]],
        until_ms: int,
        seen: Mapping[bytes, Sequence[str]],
        renames: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        super().__init__(settings, topology, schemas, codec, metrics)
        rank = {settings.input_topic(t): n for n, t in enumerate(topology.orchestrator_inputs())}
        self.merge = Merge(ranges, rank)
        self.order = LiveOrder(seen)
        self.answers = LiveAnswers(renames or {})
        self.unanswered = 0  # live results whose command the replay never sent
        self.events = EventClock()
        self.clock = self.events.time
        self.until_ms = until_ms
        self.replayed = 0
        self.finished = False
        self.failure: str | None = None
        self._stop = threading.Event()
        self._sessions = 0
        self._paused: set[Partition] = set()

    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        super().run(stop)
        if self.failure is not None:
            raise ReplayFailed(self.failure)

    def _session(self, stop: threading.Event) -> None:
        self._sessions += 1
        if self._sessions > 1:
            raise ReplayFailed("the replay lost its session with the brokers (see the log)")
        super()._session(stop)

    def _consumer_config(self) -> dict[str, Any]:
        return {**super()._consumer_config(), "enable.partition.eof": True}

    # -- inputs, in event time ------------------------------------------------------------
    def _handle(self, msg: Message) -> None:
        err = msg.error()
        if err is not None and err.code() == KafkaError._PARTITION_EOF:
            self.merge.reached((msg.topic() or "", msg.partition() or 0), msg.offset() or 0)
        elif err is not None:
            super()._handle(msg)
        else:
            self.merge.add(msg)
        for ready in self.merge.ready():
            self._replay(self.order.admit(ready, self._event_id(ready)))

    def _replay(self, msgs: Iterable[Message]) -> None:
        for msg in msgs:
            self._advance(timestamp(msg) or self.events.now)
            if self._sent(msg):
                self._decide_read(msg)
            else:
                self.answers.hold(msg)

    def _decide_read(self, msg: Message) -> None:
        """Decide a record now, then the held results its decision sent the commands for."""
        super()._handle(msg)
        self.replayed += 1
        if key := msg.key():
            self._arm(msg.partition() or 0, key)
            self._answer(key)

    def _answer(self, key: bytes) -> None:
        for msg in self.answers.waiting(key):
            if self._sent(msg) and self.answers.take(key, msg):
                self._decide_read(msg)

    def _sent(self, msg: Message) -> bool:
        """False for a step's result whose attempt this saga has not sent yet."""
        ckpt, store = self._ckpt, self.stores.get(msg.partition() or 0)
        got = self._read(msg)
        if ckpt is None or store is None or not isinstance(got, Decoded):
            return True
        state = ckpt.state(msg.partition() or 0, store, got.key)
        return state is None or sent_yet(self._spec_of(state), state, got)

    def _read(self, msg: Message) -> Decoded | Rejected | Unavailable:
        got = super()._read(msg)
        return self.answers.renamed(got, self.topology) if isinstance(got, Decoded) else got

    def _event_id(self, msg: Message) -> str | None:
        got = self._read(msg)
        return got.record["meta"]["event_id"] if isinstance(got, Decoded) else None

    def _advance(self, until: int) -> None:
        """Event time moves to `until`: what is due by then fires first, each at its due time."""
        while fired := self.events.fire_next(until):
            super()._fire_due()
            for partition, key in fired:
                self._arm(partition, key)
                self._answer(key)
        self.events.reach(until)

    def _arm(self, partition: int, key: bytes) -> None:
        ckpt, store = self._ckpt, self.stores.get(partition)
        if ckpt is None or store is None:
            return
        for due_ms in timers_of(ckpt.state(partition, store, key)).values():
            self.events.arm(due_ms, partition, key)

    def _fire_due(self) -> None:
        """The wall-clock tick: event time moves with the inputs only, and to `until_ms` once
        every input is decided; then the replay stops."""
        self._pace()
        if self.merge.done and not self.finished:
            self._replay(self.order.rest())
            self._advance(self.until_ms)
            unanswered = self.answers.rest()
            self.unanswered = len(unanswered)
            for msg in unanswered:  # decided as read: each says why it answers nothing
                self._decide_read(msg)
            self.finished = True
            self._stop.set()

    def _timer_limits(self, now: int) -> dict[int, int | None]:
        """In event time every input before `now` is decided already (the merge saw to it)."""
        return dict.fromkeys(self.stores, now)

    def _pace(self) -> None:
        """Pause a partition read to its end or far ahead of the others; resume it once drained."""
        consumer = self._consumer
        if consumer is None:
            return
        pause, resume = [], []
        for tp in self.merge.partitions():
            ahead = self.merge.buffered(tp)
            if tp not in self._paused and (self.merge.exhausted(tp) or ahead >= BUFFERED_MAX):
                self._paused.add(tp)
                pause.append(TopicPartition(*tp))
            elif tp in self._paused and not self.merge.exhausted(tp) and ahead < BUFFERED_MAX / 2:
                self._paused.discard(tp)
                resume.append(TopicPartition(*tp))
        if pause:
            consumer.pause(pause)
        if resume:
            consumer.resume(resume)

    # -- what a live orchestrator survives, and a replay does not ---------------------------
    def _wait_for_registry(self, msg: Message, got: Unavailable) -> None:
        raise ReplayFailed(f"{got.error}: run the replay again once the registry answers")

    def _rewind(self) -> None:
        raise ReplayFailed("a transaction of the replay was aborted (see the log)")

    def _revoked(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        super()._revoked(consumer, partitions)
        self._moved(partitions)

    def _lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        super()._lost(consumer, partitions)
        self._moved(partitions)

    def _moved(self, partitions: list[TopicPartition]) -> None:
        if partitions and not self.finished and self.failure is None:
            self.failure = "the replay's partitions were taken away mid-way (another member?)"
            self._stop.set()
