"""The handler loop: a handler role's commands in, its results out, at least once.

One consumer group per role. Commands of different keys run concurrently, up to
`handler_concurrency` per loop; commands of one key run in order. A partition's offset is
committed only below its oldest unfinished command, and a command finishes when the brokers
have acknowledged its result or dead letter (acks=all). Side effects may therefore repeat;
handlers make that safe with the command's idempotency key.

The thread that calls `run` alternates between the Kafka clients and short slices of its own
asyncio loop. Rebalance callbacks fire inside `consume`, when the asyncio loop is not running,
so a revocation can run the loop itself until the revoked partitions' work has finished.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from sagastream.core.topology import Topology
from sagastream.runtime.inputs import (
    Decoded,
    OutRecord,
    Rejected,
    Unavailable,
    dead_letter,
    logical_topic,
    read_input,
)
from sagastream.runtime.kafka_io import produce
from sagastream.runtime.metrics import Metrics
from sagastream.runtime.outputs import Encoder
from sagastream.runtime.settings import Settings
from sagastream.wire.codec import AvroCodec, RegistryUnavailable, SchemaStore
from sagastream.wire.registry import retry_delay

log = logging.getLogger("sagastream.handlers")

Result = tuple[str, dict[str, Any]]
Call = Callable[[str, dict[str, Any]], Awaitable[Result] | Result]
Partition = tuple[str, int]

# How long the asyncio loop runs between two polls while work is in flight: the intake latency.
TICK_S = 0.002
# How long a poll blocks when nothing is in flight: idle wake-ups, and how soon `stop` is seen.
IDLE_WAIT_S = 0.1
# How long a full loop may go without polling before it pauses its partitions instead.
PAUSE_AFTER_S = 1.0


class PartitionOffsets:
    """One partition's commands from intake to completion, and the offset that is safe to commit.

    Offsets start in increasing order and finish in any order. An abandoned offset will not
    finish here (its partition was revoked, or its output could not be delivered): it holds the
    commit back for good, so whoever consumes the partition next runs it again.
    """

    def __init__(self) -> None:
        self._started: deque[int] = deque()
        self._settled: set[int] = set()
        self._next: int | None = None
        self._floor: int | None = None
        self._committed: int | None = None
        self.outstanding = 0

    def start(self, offset: int) -> None:
        self._started.append(offset)
        self._next = offset + 1
        self.outstanding += 1

    def finish(self, offset: int) -> None:
        self._settle(offset)

    def abandon(self, offset: int) -> None:
        self._floor = offset if self._floor is None else min(self._floor, offset)
        self._settle(offset)

    def position(self) -> int | None:
        """The offset to commit: the oldest unfinished command's, else the one after the last."""
        head = self._started[0] if self._started else self._next
        if head is None or self._floor is None:
            return head
        return min(head, self._floor)

    def to_commit(self) -> int | None:
        """The position, if it moved since the last call."""
        position = self.position()
        if position is None or position == self._committed:
            return None
        self._committed = position
        return position

    def _settle(self, offset: int) -> None:
        self.outstanding -= 1
        self._settled.add(offset)
        # settled offsets behind the oldest unfinished one are kept; the rest are forgotten
        while self._started and self._started[0] in self._settled:
            self._settled.remove(self._started.popleft())


def throttled(in_flight: int, bound: int, paused: bool, full_for: float) -> bool:
    """Whether the partitions are paused: once the loop has been full for PAUSE_AFTER_S, until
    in-flight work drops below half the bound.

    A loop that is full only briefly stops taking messages and leaves them in the client's
    bounded prefetch queue. Pausing drops that queue and resuming waits for a new fetch (up to
    fetch.wait.max.ms), which under steady load would cost more than it saves. A loop that
    stays full pauses so that it can poll again: rebalances wait for its callbacks.
    """
    if paused:
        return 2 * in_flight >= bound
    return in_flight >= bound and full_for >= PAUSE_AFTER_S


@dataclass(eq=False)
class _Job:
    """A consumed message between intake and completion."""

    msg: Message
    partition: Partition
    offset: int
    offsets: PartitionOffsets


@dataclass
class _Wait:
    """A partition waiting for the schema registry, paused at the message it could not read."""

    failures: int
    retry_at: float
    resumed: bool = False


class HandlerLoop:
    """Runs one handler role: consumes its commands topic in its own group, produces results."""

    _loop: asyncio.AbstractEventLoop
    _consumer: Consumer
    _producer: Producer

    def __init__(
        self,
        settings: Settings,
        topology: Topology,
        store: SchemaStore,
        codec: AvroCodec,
        role: str,
        call: Call,
        commands: frozenset[str],
        metrics: Metrics,
        *,
        is_async: Callable[[str], bool] | None = None,
        consumer: Consumer | None = None,
        producer: Producer | None = None,
    ) -> None:
        """`is_async(command_type)` says which commands `call` answers with an awaitable (default:
        all if `call` is a coroutine function); `consumer` and `producer` replace the clients
        built from settings (tests use fakes); the producer must be this loop's alone, as its
        delivery callbacks touch the loop's state."""
        self._settings = settings
        self._topology = topology
        self._codec = codec
        self._role = role
        self._call = call
        coroutine = inspect.iscoroutinefunction(call)
        self._is_async = is_async or (lambda _command_type: coroutine)
        self._commands = commands
        self._metrics = metrics
        self._name = f"sagastream-{role}"
        self._encoder = Encoder(settings, topology, store, codec, self._name)
        self._topic = settings.topic(topology.handlers[role].consumes)
        self._bound = topology.handlers[role].concurrency or settings.handler_concurrency
        self._given = (consumer, producer)
        self._ready = False
        self._owned: dict[Partition, PartitionOffsets] = {}
        self._fresh: set[Partition] = set()
        self._paused: set[Partition] = set()
        self._waiting: dict[Partition, _Wait] = {}
        self._tails: dict[bytes, asyncio.Task[None]] = {}
        self._in_flight = 0
        self._throttled = False
        self._full_since: float | None = None
        self._next_commit = 0.0
        self._deadline: float | None = None
        self._crash: BaseException | None = None
        self._polls = metrics.handler_polls.labels(role)

    @property
    def ready(self) -> bool:
        """True once the consumer has joined its group and been given its partitions."""
        return self._ready

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set, then drain (bounded by settings.drain_timeout_s), commit
        what finished, close the consumer (leaves the group)."""
        consumer, producer = self._given
        group = self._settings.group(self._role)
        self._producer = producer or Producer(self._settings.producer_config())
        self._consumer = consumer or Consumer(
            self._settings.consumer_config(group, on_commit=_log_commit_errors)
        )
        self._loop = asyncio.new_event_loop()
        self._loop.set_default_executor(
            ThreadPoolExecutor(self._bound, thread_name_prefix=f"{self._role}-handler")
        )
        try:
            self._consumer.subscribe(
                [self._topic],
                on_assign=self._assigned,
                on_revoke=self._revoked,
                on_lost=self._lost,
            )
            while not stop.is_set():
                self._tick()
            self._drain()
        finally:
            self._ready = False
            if self._deadline is None:  # crashed: what runs still is abandoned, not awaited
                self._deadline = time.monotonic()
            self._cancel_tasks()
            self._consumer.close()
            self._loop.close()

    # ------------------------------------------------------------------ the Kafka side

    def _tick(self) -> None:
        if self._crash is not None:
            raise self._crash
        self._polls.inc()
        messages = self._fetch()
        for msg in messages:
            self._accept(msg)
        self._producer.poll(0)
        now = time.monotonic()
        for wait in self._waiting.values():
            wait.resumed = wait.resumed or now >= wait.retry_at
        self._apply_pauses(now)
        if now >= self._next_commit:
            self._commit(self._owned.items(), asynchronous=True)
            self._next_commit = now + self._settings.commit_interval_ms / 1000
        if self._in_flight:
            self._run_loop(0 if messages else TICK_S)

    def _fetch(self) -> list[Message]:
        room = self._bound - self._in_flight
        if room <= 0 and not self._throttled:
            return []  # full: the next commands wait in the client's prefetch queue
        if self._in_flight or self._throttled:
            return self._consumer.consume(max(1, room), 0)
        # nothing runs, so blocking here delays nothing; consume(timeout) would wait for `room`
        retries = [w.retry_at for w in self._waiting.values() if not w.resumed]
        wait = min([IDLE_WAIT_S, *(t - time.monotonic() for t in retries)])
        first = self._consumer.poll(max(0.0, wait))
        if first is None:
            return []
        return [first, *self._consumer.consume(room - 1, 0)] if room > 1 else [first]

    def _accept(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.fatal():
                raise KafkaException(err)
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("%s handler: consumer error: %s", self._role, err)
            return
        partition = (msg.topic() or "", msg.partition() or 0)
        offsets = self._owned.get(partition)
        wait = self._waiting.get(partition)
        if offsets is None or (wait is not None and not wait.resumed):
            return  # revoked, or behind a message that waits for the registry (seeked back to it)
        read = self._read(msg)
        if isinstance(read, Unavailable):
            self._wait_for_registry(msg, partition, read)
            return
        if wait is not None:
            self._registry_back(partition)
        job = _Job(msg, partition, msg.offset() or 0, offsets)
        offsets.start(job.offset)
        self._in_flight += 1
        if isinstance(read, Rejected):
            self._dead_letter(job, read)
            return
        self._metrics.consumed.labels(self._role, read.event_type).inc()
        if read.event_type not in self._commands:
            why = f"{self._role} cannot handle {read.event_type}"
            self._dead_letter(job, Rejected("unsupported_command", why))
            return
        previous = self._tails.get(read.key)
        task = self._loop.create_task(self._execute(job, read, previous))
        self._tails[read.key] = task
        task.add_done_callback(partial(self._ended, read.key))

    def _read(self, msg: Message) -> Decoded | Rejected | Unavailable:
        try:
            # every id is resolved before the first input, so results never wait for the registry
            self._codec.prepare(self._topology.events)
        except RegistryUnavailable as exc:
            return Unavailable(str(exc))
        return read_input(msg, self._codec, self._topology, self._settings)

    def _wait_for_registry(self, msg: Message, partition: Partition, why: Unavailable) -> None:
        before = self._waiting.get(partition)
        failures = 1 if before is None else before.failures + 1
        delay = retry_delay(failures - 1)
        self._waiting[partition] = _Wait(failures, time.monotonic() + delay)
        here = TopicPartition(partition[0], partition[1], msg.offset() or 0)
        # pause before seeking: the fetcher must not move past the message while it waits
        self._consumer.pause([here])
        self._paused.add(partition)
        self._consumer.seek(here)
        self._metrics.registry_up.labels(self._role).set(0)
        self._metrics.registry_retries.labels(self._role).inc()
        log.warning("%s; %s waits, retry %d in %.1fs", why.error, _where(msg), failures, delay)

    def _registry_back(self, partition: Partition) -> None:
        failures = self._waiting.pop(partition).failures
        log.warning(
            "schema registry answers again; %s[%d] resumes after %d retries", *partition, failures
        )
        if not self._waiting:
            self._metrics.registry_up.labels(self._role).set(1)

    def _apply_pauses(self, now: float) -> None:
        if self._in_flight < self._bound:
            self._full_since = None
        elif self._full_since is None:
            self._full_since = now
        full_for = 0.0 if self._full_since is None else now - self._full_since
        self._throttled = throttled(self._in_flight, self._bound, self._throttled, full_for)
        want = set(self._owned) if self._throttled else set()
        want.update(p for p, wait in self._waiting.items() if not wait.resumed)
        pause = want - self._paused
        # a newly assigned partition may still carry the pause of an earlier assignment
        resume = (self._paused | self._fresh) - want
        if pause:
            self._consumer.pause(_partitions(pause))
        if resume:
            self._consumer.resume(_partitions(resume))
        self._paused = want
        self._fresh.clear()

    def _commit(
        self, partitions: Iterable[tuple[Partition, PartitionOffsets]], *, asynchronous: bool
    ) -> None:
        """Commit what finished: in the background, or synchronously on revoke and shutdown."""
        offsets = []
        for (topic, partition), tracker in partitions:
            # a synchronous commit repeats the position: a background one may have failed
            position = tracker.to_commit() if asynchronous else tracker.position()
            if position is not None:
                offsets.append(TopicPartition(topic, partition, position))
        if not offsets:
            return
        # a failed commit costs re-runs only: the next owner starts from the last one that worked
        try:
            if asynchronous:
                self._consumer.commit(offsets=offsets, asynchronous=True)
                return
            done = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("%s handler: commit of %s failed: %s", self._role, _names(offsets), exc)
            return
        failed = [p for p in done if p.error]
        if failed:
            why = failed[0].error
            log.warning("%s handler: commit of %s failed: %s", self._role, _names(failed), why)

    # ------------------------------------------------------------------ rebalance

    def _assigned(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            self._owned[(p.topic, p.partition)] = PartitionOffsets()
            self._fresh.add((p.topic, p.partition))
        self._ready = True
        log.info("%s handler assigned %s", self._role, _names(partitions))

    def _revoked(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = self._release(partitions)
        until = time.monotonic() + self._settings.drain_timeout_s
        if self._deadline is not None:
            until = min(until, self._deadline)
        if revoked:
            self._settle(lambda: not any(o.outstanding for o in revoked.values()), until)
            self._commit(revoked.items(), asynchronous=False)
        log.info("%s handler revoked %s", self._role, _names(partitions))

    def _lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # another member may own them already: nothing to wait for, nothing to commit
        self._release(partitions)
        log.warning("%s handler lost %s", self._role, _names(partitions))

    def _release(self, partitions: list[TopicPartition]) -> dict[Partition, PartitionOffsets]:
        """Stop taking work for these partitions; queued commands of theirs will not start."""
        released = {}
        for p in partitions:
            key = (p.topic, p.partition)
            offsets = self._owned.pop(key, None)
            if offsets is not None:
                released[key] = offsets
            self._fresh.discard(key)
            self._paused.discard(key)
            if self._waiting.pop(key, None) is not None and not self._waiting:
                self._metrics.registry_up.labels(self._role).set(1)
        return released

    # ------------------------------------------------------------------ shutdown

    def _drain(self) -> None:
        self._deadline = time.monotonic() + self._settings.drain_timeout_s
        self._settle(lambda: self._in_flight == 0, self._deadline)
        if self._in_flight:
            log.warning(
                "%s handler: %d commands unfinished after %.1fs; they run again after a restart",
                self._role,
                self._in_flight,
                self._settings.drain_timeout_s,
            )
        self._cancel_tasks()
        self._producer.flush(max(0.0, self._deadline - time.monotonic()))
        self._commit(self._release(_partitions(self._owned)).items(), asynchronous=False)

    def _settle(self, done: Callable[[], bool], until: float) -> None:
        """Run the asyncio loop, with delivery reports, until `done()` or the deadline."""

        async def settle() -> None:
            while not done() and time.monotonic() < until:
                self._producer.poll(0)
                await asyncio.sleep(TICK_S)

        self._loop.run_until_complete(settle())

    def _cancel_tasks(self) -> None:
        tasks = asyncio.all_tasks(self._loop)
        for task in tasks:
            task.cancel()
        if tasks:
            self._loop.run_until_complete(asyncio.wait(tasks))

    def _run_loop(self, seconds: float) -> None:
        self._loop.call_later(seconds, self._loop.stop)
        self._loop.run_forever()

    # ------------------------------------------------------------------ the asyncio side

    async def _execute(
        self, job: _Job, command: Decoded, previous: asyncio.Task[None] | None
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # for order only: its outcome is its own
        if self._owned.get(job.partition) is not job.offsets:
            self._abandon(job)  # revoked while it queued: the partition's next owner runs it
            return
        meta = command.record["meta"]
        try:
            result_type, fields = await self._invoke(command.event_type, command.record)
            out = self._encoder.derived(result_type, command.key, fields, meta, meta["attempt"])
        except Exception as exc:  # a failing command must not stop its partition or the loop
            log.exception("%s handler failed on %s", self._role, _where(job.msg))
            self._dead_letter(job, Rejected("processing_error", f"{type(exc).__name__}: {exc}"))
            return
        self._send(job, out)
        self._metrics.produced.labels(self._role, result_type).inc()

    async def _invoke(self, command_type: str, record: dict[str, Any]) -> Result:
        """Async handlers run on the loop, plain functions in the thread pool."""
        if self._is_async(command_type):
            result: Any = self._call(command_type, record)
        else:
            result = await self._loop.run_in_executor(None, self._call, command_type, record)
        if inspect.isawaitable(result):
            result = await result
        return cast(Result, result)

    def _ended(self, key: bytes, task: asyncio.Task[None]) -> None:
        if self._tails.get(key) is task:
            del self._tails[key]
        if not task.cancelled() and task.exception() is not None:
            self._crash = task.exception()  # a bug, not bad input: fail loudly, re-run on restart

    def _dead_letter(self, job: _Job, rejected: Rejected) -> None:
        out = dead_letter(job.msg, self._topology, self._settings, rejected, self._name)
        self._send(job, out)
        topic = logical_topic(self._settings, job.partition[0])
        self._metrics.dead_letters.labels(self._role, topic, rejected.reason).inc()
        log.warning(
            "dead-lettered %s to %s (%s): %s",
            _where(job.msg),
            out.topic,
            rejected.reason,
            rejected.error,
        )

    def _send(self, job: _Job, out: OutRecord) -> None:
        produce(
            self._producer,
            out.topic,
            out.value,
            out.key,
            out.headers,
            on_delivery=partial(self._delivered, job),
        )

    def _delivered(self, job: _Job, err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            job.offsets.finish(job.offset)
            self._in_flight -= 1
            return
        log.error(
            "%s handler: the output of %s was not delivered (%s); the command runs again "
            "after the next restart or rebalance",
            self._role,
            _where(job.msg),
            err,
        )
        self._abandon(job)

    def _abandon(self, job: _Job) -> None:
        job.offsets.abandon(job.offset)
        self._in_flight -= 1


def _where(msg: Message) -> str:
    return f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"


def _partitions(keys: Iterable[Partition]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition) for topic, partition in keys]


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "no partitions"


def _log_commit_errors(err: KafkaError | None, partitions: list[TopicPartition]) -> None:
    failed = [p for p in partitions if p.error]
    if err is not None or failed:
        log.warning("background offset commit failed: %s %s", err or "", failed)
