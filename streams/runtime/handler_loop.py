"""The handler loop: a handler role's commands in, its results out, at least once.

One consumer group per role. Commands run concurrently, up to `handler_concurrency` per loop,
but the attempts of one idempotency key run in order (a command without one: in the order of
its saga key). Other commands of one saga, which the orchestrator sent concurrently, may run
concurrently; an undo is sent only once its step's attempt has ended, so it follows it. A
partition's offset is committed only below its oldest unfinished command, and a command finishes when the brokers
have acknowledged its result or dead letter (acks=all). Side effects may therefore repeat;
handlers make that safe with the command's idempotency key.

The thread that calls `run` alternates between the Kafka clients and short slices of its own
asyncio loop. Rebalance callbacks fire inside `consume`, when the asyncio loop is not running,
so a revocation can run the loop itself until the revoked partitions' work has finished. While
nothing moves (results wait for a broker that does not answer), the slices grow, so an idle
loop does not spin.

An attempt is answered once: by its function's result, if the handler contract
(runtime/contract.py) allows it, else by a StepAttemptFailed (the function raised, broke the
contract, made a result too large to send, or ran past its bound) that the orchestrator
retries by the step's policy at once. The dead-letter topic is for commands that cannot be
decoded or routed, and results the brokers keep refusing. The run-time bound (start-to-close)
counts from the moment the function starts, not while the command queues, and a heartbeat
(sagastream.heartbeat()) starts it again.

A command may run for its bound (`command_bounds`); past it, the attempt is abandoned as timed
out (`_timed_out`, the one place that reports it) and its offset is done: an async function is
cancelled, a plain one keeps its thread, its result dropped, and holds a slot of the bound
until it returns, so hung functions saturate the role (reported on /readyz) instead of piling
up. Plain functions run on a pool of daemon threads (`PlainPool`) that never holds the process
at exit; a thread whose call was abandoned is not reused, later calls get others. A result the
brokers refuse is sent again (`handler_delivery_attempts`), then its command is dead-lettered
(`undeliverable`), so its partition's commit moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import inspect
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from sagastream.core.topology import Topology
from sagastream.errors import NotAuthorized
from sagastream.runtime import contract, logs, tracing
from sagastream.runtime.contract import AttemptError, Contract
from sagastream.runtime.health import Check, RoleHealth
from sagastream.runtime.inputs import (
    Decoded,
    OutRecord,
    Rejected,
    Unavailable,
    dead_letter,
    logical_topic,
    read_input,
)
from sagastream.runtime.kafka_io import AUTHORIZATION_CODES, produce, read_refused, refused
from sagastream.runtime.lag import ConsumerLag
from sagastream.runtime.limits import RecordLimits, RecordTooLarge, check_fits
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
# While work is in flight but nothing moves, the slices double up to this long.
STILL_TICK_MAX_S = 0.05
# How long a poll blocks when nothing is in flight: idle wake-ups, and how soon `stop` is seen.
IDLE_WAIT_S = 0.1
# How long a full loop may go without polling before it pauses its partitions instead.
PAUSE_AFTER_S = 1.0
# How long a plain function's pool thread waits for another call before it ends.
IDLE_THREAD_S = 60.0
# The run-time bound of a command that no step sends (notifications).
NO_STEP_BOUND_MS = 30_000
# Broker refusals that the same bytes would meet again: not worth another attempt.
REFUSED_FOR_GOOD = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE})


def command_bounds(
    topology: Topology, commands: Iterable[str], override_ms: int | None
) -> dict[str, float]:
    """Seconds each command may run: `override_ms`, else the longest timeout_ms of the steps and
    compensations that send it (its attempt has timed out for the saga by then anyway), else
    NO_STEP_BOUND_MS."""
    longest: dict[str, int] = {}
    for saga in topology.sagas.values():
        for step in saga.steps.values():
            for sends in (step, step.compensation):
                if sends is not None and sends.command is not None:
                    longest[sends.command] = max(longest.get(sends.command, 0), sends.timeout_ms)
    return {c: (override_ms or longest.get(c, NO_STEP_BOUND_MS)) / 1000 for c in commands}


def sagas_sending(topology: Topology, commands: Iterable[str]) -> dict[str, str]:
    """The saga types whose steps, compensations or notifications send each command, for the
    logs (comma separated when several do)."""
    sending: dict[str, set[str]] = {c: set() for c in commands}
    for name, saga in topology.sagas.items():
        if saga.notify is not None and saga.notify.command in sending:
            sending[saga.notify.command].add(name)
        for step in saga.steps.values():
            for sends in (step, step.compensation):
                if sends is not None and sends.command in sending:
                    sending[sends.command].add(name)
    return {c: ",".join(sorted(names)) for c, names in sending.items()}


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
    # failed deliveries of its current output, and whether that output is its dead letter
    refused: int = 0
    dead_lettered: bool = False


class PlainCall:
    """One call of a plain handler function on a pool thread, its outcome a future on the loop.

    `finished` once the function has returned (its thread may serve another call), and
    `abandoned` once the loop stopped waiting for it (its bound passed, or the loop ended).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, call: Call, args: tuple[Any, ...]):
        self.finished = False
        self.abandoned = False
        self.future: asyncio.Future[Any] = loop.create_future()
        self.loop = loop
        # the caller's context (its heartbeat, its span) goes along to the thread
        self._run = partial(contextvars.copy_context().run, call, *args)

    def run(self) -> tuple[Any, Exception | None]:
        """Run the function (on a pool thread): its result, or the exception it raised."""
        try:
            return self._run(), None
        except Exception as exc:
            return None, exc
        finally:
            self.finished = True

    def abandon(self) -> None:
        """The loop no longer waits: the result is dropped and the thread is not reused."""
        self.abandoned = True

    def settle(self, result: Any, error: Exception | None) -> None:
        """Its outcome, on the loop."""
        if self.future.done():
            return  # abandoned at its bound: the result is dropped
        if error is None:
            self.future.set_result(result)
        else:
            self.future.set_exception(error)


class PlainPool:
    """Daemon threads that run plain handler functions, each thread reused from call to call.

    A call never waits for a thread: when none is idle, one is started. A thread whose call
    was abandoned (it ran past its bound) is not taken back once the call returns, as it may
    have been left in any state; it ends, and a new thread takes its place when one is needed.
    Threads idle for IDLE_THREAD_S end too, so a burst does not keep its threads for good.
    Being daemons, the threads never hold the process at exit.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._calls: queue.SimpleQueue[PlainCall] = queue.SimpleQueue()
        self._lock = threading.Lock()
        # threads waiting for a call, less the calls queued for them: never below zero, so a
        # queued call always has a waiting thread of its own
        self._idle = 0
        # by loop: outcomes not yet handed over, while a hand-over is scheduled
        self._outcomes: dict[asyncio.AbstractEventLoop, list[tuple[PlainCall, Any, Any]]] = {}
        self._numbered = 0
        self.threads = 0  # alive, busy or idle

    def submit(self, loop: asyncio.AbstractEventLoop, call: Call, *args: Any) -> PlainCall:
        """Start `call(*args)` on an idle thread, else on a new one; its outcome settles on
        `loop`."""
        plain = PlainCall(loop, call, args)
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._calls.put(plain)
                return plain
            self._numbered += 1
            self.threads += 1
            name = f"{self._name}-{self._numbered}"
        threading.Thread(target=self._serve, args=(plain,), name=name, daemon=True).start()
        return plain

    def _serve(self, plain: PlainCall | None) -> None:
        try:
            while plain is not None:
                outcome = plain.run()
                if plain.abandoned:
                    return  # nobody waits for its outcome, and the thread is not reused
                self._returned(plain, *outcome)
                plain = self._next()
        finally:
            with self._lock:
                self.threads -= 1

    def _returned(self, plain: PlainCall, result: Any, error: Exception | None) -> None:
        """The thread is idle again, and the outcome goes to the loop. Outcomes that arrive
        while the loop has not yet taken the earlier ones join them: one wake-up of the loop
        (a write to its self-pipe, and a round of its selector) serves them all."""
        loop = plain.loop
        with self._lock:  # idle before the loop hears of it: its next call finds this thread
            self._idle += 1
            waiting = self._outcomes.get(loop)
            if waiting is not None and not loop.is_closed():
                waiting.append((plain, result, error))
                return
            self._outcomes[loop] = [(plain, result, error)]
        try:
            loop.call_soon_threadsafe(self._hand_over, loop)
        except RuntimeError:  # the loop is closed (its worker stopped): nobody waits any more
            with self._lock:
                self._outcomes.pop(loop, None)

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop: settle every outcome that came since the last hand-over."""
        with self._lock:
            outcomes = self._outcomes.pop(loop)
        for plain, result, error in outcomes:
            plain.settle(result, error)

    def _next(self) -> PlainCall | None:
        """The next call for this (idle) thread; None once it waited IDLE_THREAD_S for one."""
        while True:
            try:
                return self._calls.get(timeout=IDLE_THREAD_S)
            except queue.Empty:
                with self._lock:
                    if self._idle:  # no call is queued for this thread: it may end
                        self._idle -= 1
                        return None


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
        limits: RecordLimits | None = None,
    ) -> None:
        """`is_async(command_type)` says which commands `call` answers with an awaitable (default:
        all if `call` is a coroutine function); `consumer` and `producer` replace the clients
        built from settings (tests use fakes); the producer must be this loop's alone, as its
        delivery callbacks touch the loop's state; `limits` are the record size limits (default:
        the setting `max_record_bytes` for every topic)."""
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
        self._limits = limits or RecordLimits(settings.max_record_bytes)
        self._topic = settings.topic(topology.handlers[role].consumes)
        self._results_topic = settings.topic(topology.handlers[role].produces)
        self._bound = topology.handlers[role].concurrency or settings.handler_concurrency
        self._run_bounds = command_bounds(topology, commands, settings.handler_timeout_ms)
        self._sagas = sagas_sending(topology, commands)
        self._contract = Contract(topology)
        self._thread: threading.Thread | None = None
        self._pool = PlainPool(f"{role}-plain")
        # plain calls abandoned at their bound whose threads still run
        self._overdue: list[PlainCall] = []
        self.health = RoleHealth(settings)
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
        self._calls_running = 0  # of _in_flight, those whose function runs (the rest queue)
        self._in_flight_gauge = metrics.handler_in_flight.labels(role)
        self._queued_gauge = metrics.handler_queued.labels(role)
        # labelled metric children by event type (see _child)
        self._consumed: dict[str, Any] = {}
        self._produced: dict[str, Any] = {}
        self._run_times: dict[str, Any] = {}
        self._queue_times: dict[str, Any] = {}
        self._moved = False
        self._still_ticks = 0
        self._tracer = tracing.tracer(f"{settings.app_id}-{role}")

    @property
    def ready(self) -> bool:
        """True once the consumer has joined its group and been given its partitions."""
        return self._ready

    def readiness(self) -> Check:
        """/readyz: assigned, and not saturated with calls past their bound (nor the common
        troubles of `RoleHealth`)."""
        reasons = [] if self._ready else ["no partitions assigned yet"]
        refused = self._codec.config_error  # waiting will not fix wrong registry credentials
        if refused:
            reasons.append(refused)
        overdue = sum(not call.finished for call in list(self._overdue))
        if overdue >= self._bound:
            reasons.append(
                f"saturated: {overdue} commands past their run-time bound still run and take "
                f"all {self._bound} slots of the role; fix or restart its handler functions"
            )
        return self.health.ready(*reasons)

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set, then drain (bounded by settings.drain_timeout_s), commit
        what finished, close the consumer (leaves the group)."""
        consumer, producer = self._given
        group = self._settings.group(self._role)
        self._producer = producer or Producer(self._settings.producer_config())
        lag = ConsumerLag(
            self._metrics.consumer_lag,
            group,
            [self._topic],
            interval_ms=self._settings.consumer_lag_interval_ms,
            unfinished=self._unfinished,
        )
        self._consumer = consumer or Consumer(
            self._settings.consumer_config(group, on_commit=_log_commit_errors, **lag.config())
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.current_thread()
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
            if self._tracer is not None:
                self._tracer.shutdown()  # the spans of the last commands, before the process ends

    # ------------------------------------------------------------------ the Kafka side

    def _tick(self) -> None:
        if self._crash is not None:
            raise self._crash
        self._polls.inc()
        self.health.advanced()
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
            self._run_loop(0 if messages else self._slice())
        # once a round, not per command: the gauges are read seconds apart
        self._in_flight_gauge.set(self._calls_running)
        self._queued_gauge.set(self._in_flight - self._calls_running)

    def _unfinished(self, topic: str, partition: int) -> int:
        """Commands of a partition taken from Kafka and not finished: lag still (ConsumerLag)."""
        offsets = self._owned.get((topic, partition))
        return 0 if offsets is None else offsets.outstanding

    def _slice(self) -> float:
        """How long the asyncio loop runs before the next poll: TICK_S while anything moves,
        doubling up to STILL_TICK_MAX_S while nothing does (a frozen broker must not make the
        loop spin)."""
        self._still_ticks = 0 if self._moved else self._still_ticks + 1
        self._moved = False
        return min(STILL_TICK_MAX_S, TICK_S * 2 ** min(self._still_ticks, 16))

    def _busy(self) -> int:
        """Slots taken: commands in flight, and plain calls abandoned whose threads still run."""
        if self._overdue:
            self._overdue = [call for call in self._overdue if not call.finished]
        return self._in_flight + len(self._overdue)

    def _fetch(self) -> list[Message]:
        room = self._bound - self._busy()
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
            group = self._settings.group(self._role)
            refusal = read_refused(self._settings, err, msg.topic(), group, self._role)
            if refusal is not None:
                raise refusal
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("%s handler: consumer error: %s", self._role, err)
                if msg.topic():
                    self.health.input_failed(msg.topic() or "", err.str())
            return
        self._moved = True
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
        self.health.input_read(partition[:1])
        job = _Job(msg, partition, msg.offset() or 0, offsets)
        offsets.start(job.offset)
        self._in_flight += 1
        if isinstance(read, Rejected):
            self._dead_letter(job, read)
            return
        self._child(self._consumed, self._metrics.consumed, read.event_type).inc()
        if read.event_type not in self._commands:
            why = f"{self._role} cannot handle {read.event_type}"
            self._dead_letter(job, Rejected("unsupported_command", why))
            return
        # attempts of one idempotency key run in order; other commands of the saga need not
        # (the orchestrator sends an undo only after its step's attempt has ended)
        order = str(read.record.get("idempotency_key") or "").encode() or read.key
        previous = self._tails.get(order)
        task = self._loop.create_task(self._execute(job, read, previous))
        self._tails[order] = task
        task.add_done_callback(partial(self._ended, order))

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
        self.health.registry_waits(partition)
        self._metrics.registry_up.labels(self._role).set(0)
        self._metrics.registry_retries.labels(self._role).inc()
        log.warning("%s; %s waits, retry %d in %.1fs", why.error, _where(msg), failures, delay)

    def _registry_back(self, partition: Partition) -> None:
        failures = self._waiting.pop(partition).failures
        self.health.registry_back(partition)
        log.warning(
            "schema registry answers again; %s[%d] resumes after %d retries", *partition, failures
        )
        if not self._waiting:
            self._metrics.registry_up.labels(self._role).set(1)

    def _apply_pauses(self, now: float) -> None:
        busy = self._busy()
        if busy < self._bound:
            self._full_since = None
        elif self._full_since is None:
            self._full_since = now
        full_for = 0.0 if self._full_since is None else now - self._full_since
        self._throttled = throttled(busy, self._bound, self._throttled, full_for)
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
        self.health.input_read(p.topic for p in partitions)
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
            self.health.registry_back(key)
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
                self.health.advanced()
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
        answer = await self._attempt(job, command)
        logs.handled(
            self._role,
            self._sagas.get(command.event_type, ""),
            command.record["meta"],
            None if answer is None else answer[0],
        )
        answered = None if answer is None else await self._answered(job, command, answer)
        if answered is None and answer is not None:
            self._abandon(job)  # revoked or draining while its result waited: runs again
            return
        if answered is None or answered[1] is None:
            self._finish(job)  # nobody to tell (a notification): logged, its offset passes
            return
        self._send(job, answered[1])
        self._child(self._produced, self._metrics.produced, answered[0]).inc()

    async def _attempt(self, job: _Job, command: Decoded) -> Result | None:
        """The command's attempt, inside its span when tracing is on: the child of the span its
        command's traceparent names (its attempt's), current while the function runs."""
        if self._tracer is None:
            return await self._bounded(job, command)
        meta = command.record["meta"]
        name = f"handle {command.event_type}"
        with self._tracer.handling(
            name, meta.get("traceparent"), _span_attributes(job, command)
        ) as span:
            answer = await self._bounded(job, command)
            tracing.answered(span, None if answer is None else answer[0], answer and answer[1])
            return answer

    async def _bounded(self, job: _Job, command: Decoded) -> Result | None:
        """Run the command's function within its bound: its result if the contract allows it,
        else the StepAttemptFailed that says why (None if its sender cannot be told)."""
        bound = self._run_bounds[command.event_type]
        limit = asyncio.timeout(bound)
        token = contract.HEARTBEAT.set(partial(self._heartbeat, limit, bound))
        run_time, started = self._started(job, command.event_type)
        try:
            async with limit:
                result_type, fields = await self._invoke(command.event_type, command.record)
        except Exception as exc:  # a failing command must not stop its partition or the loop
            if limit.expired():
                return self._timed_out(job, command, bound)
            return self._failed(job, command, AttemptError.from_exception(exc))
        finally:
            contract.HEARTBEAT.reset(token)
            self._calls_running -= 1
            run_time.observe(time.monotonic() - started)
        why = self._contract.check_result(command.event_type, result_type)
        if why is not None:
            return self._failed(job, command, AttemptError.of("contract", why))
        return result_type, fields

    def _started(self, job: _Job, command_type: str) -> tuple[Any, float]:
        """A command's function starts: its queue time (from the command's produce time) is
        observed; its run-time histogram child and the start are returned."""
        kind, produced_ms = job.msg.timestamp()
        if kind != TIMESTAMP_NOT_AVAILABLE:
            queue = self._child(
                self._queue_times, self._metrics.handler_queue_seconds, command_type
            )
            queue.observe(max(0.0, time.time() - produced_ms / 1000))
        self._calls_running += 1
        run = self._child(self._run_times, self._metrics.handler_run_seconds, command_type)
        return run, time.monotonic()

    def _child(self, children: dict[str, Any], metric: Any, event_type: str) -> Any:
        """`metric`'s child for this role and an event type, from `children` once looked up:
        labels() per command would cost more than the inc() or observe() itself."""
        child = children.get(event_type)
        if child is None:
            child = children[event_type] = metric.labels(self._role, event_type)
        return child

    def _heartbeat(self, limit: asyncio.Timeout, bound: float) -> None:
        """The attempt's function says it is alive: its bound starts again from now. Called on
        the loop (async functions) or from the function's own thread (plain ones)."""
        deadline = time.monotonic() + bound  # the loop's clock is time.monotonic

        def extend() -> None:
            if not limit.expired():
                with contextlib.suppress(RuntimeError):  # the attempt has ended meanwhile
                    limit.reschedule(deadline)

        if threading.current_thread() is self._thread:
            extend()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self._loop.call_soon_threadsafe(extend)

    async def _answered(
        self, job: _Job, command: Decoded, answer: Result
    ) -> tuple[str, OutRecord | None] | None:
        """The answer's record, its meta naming the command's step. A result that cannot be
        encoded, or is too large to send, is answered by a StepAttemptFailed instead (no record
        if nobody can be told). None once the partition is no longer ours while the registry
        keeps the record waiting."""
        result_type, fields = answer
        try:
            out = await self._encoded(job, command, result_type, fields)
            if out is not None:
                check_fits(
                    self._limits, [(result_type, out.topic, out.key, out.value, out.headers)]
                )
            return None if out is None else (result_type, out)
        except RecordTooLarge as exc:
            error = AttemptError.of("too_large", f"{exc.reason}: {exc}")
        except Exception as exc:  # fields the result's schema does not take: the function's bug
            error = AttemptError.from_exception(exc)
        if result_type == contract.ATTEMPT_FAILED:
            raise RuntimeError(f"the failed attempt report for {_where(job.msg)} did not encode")
        failed = self._failed(job, command, error)
        if failed is None:
            return result_type, None
        return await self._answered(job, command, failed)

    async def _encoded(
        self, job: _Job, command: Decoded, result_type: str, fields: dict[str, Any]
    ) -> OutRecord | None:
        """The result's record. While the registry cannot give its schema id the result waits,
        retried with backoff, not dead-lettered; None once the partition is no longer ours."""
        meta = command.record["meta"]
        failures = 0
        while True:
            try:
                out = self._encoder.derived(
                    result_type, command.key, fields, meta, meta["attempt"], step=meta.get("step")
                )
            except RegistryUnavailable as exc:
                if self._owned.get(job.partition) is not job.offsets or self._deadline is not None:
                    return None
                delay = retry_delay(failures)
                failures += 1
                self._metrics.registry_up.labels(self._role).set(0)
                self._metrics.registry_retries.labels(self._role).inc()
                log.warning("%s; the result of %s waits %.1fs", exc, _where(job.msg), delay)
                await asyncio.sleep(delay)
                continue
            if failures and not self._waiting:
                self._metrics.registry_up.labels(self._role).set(1)
            if result_type == contract.ATTEMPT_FAILED:
                # declared on every role's results topic: this role's is the one its saga reads
                out = dataclasses.replace(out, topic=self._results_topic)
            return out

    async def _invoke(self, command_type: str, record: dict[str, Any]) -> Result:
        """Async handlers run on the loop, plain functions on the pool's threads."""
        if self._is_async(command_type):
            result: Any = self._call(command_type, record)
        else:
            call = self._pool.submit(self._loop, self._call, command_type, record)
            try:
                result = await call.future
            except asyncio.CancelledError:
                call.abandon()
                self._overdue.append(call)  # its thread runs on; its result will be dropped
                raise
        if inspect.isawaitable(result):
            result = await result
        return cast(Result, result)

    def _timed_out(self, job: _Job, command: Decoded, bound: float) -> Result | None:
        """The one place an attempt that outran its bound is reported: a log line, a metric,
        and a StepAttemptFailed (kind timeout) that the orchestrator retries at once."""
        self._metrics.handler_timeouts.labels(self._role, command.event_type).inc()
        why = f"ran past its bound of {bound:.1f}s (the step's timeout_ms); abandoned"
        log.warning("%s handler: %s on %s %s", self._role, command.event_type, _where(job.msg), why)
        return self._failed(job, command, AttemptError.of("timeout", why), logged=True)

    def _failed(
        self, job: _Job, command: Decoded, error: AttemptError, *, logged: bool = False
    ) -> Result | None:
        """The StepAttemptFailed that answers a failed attempt; None for a command no step
        sends (a notification), whose failure is only logged."""
        self._metrics.attempts_failed.labels(self._role, command.event_type, error.kind).inc()
        if not logged:
            log.warning(
                "%s handler: %s on %s failed (%s): %s: %s",
                *(self._role, command.event_type, _where(job.msg)),
                *(error.kind, error.error_type, error.message),
            )
        if not self._contract.reports_failures(command.event_type):
            return None
        return self._contract.attempt_failed(command.event_type, command.record, error)

    def _ended(self, key: bytes, task: asyncio.Task[None]) -> None:
        self._moved = True
        if self._tails.get(key) is task:
            del self._tails[key]
        if not task.cancelled() and task.exception() is not None:
            self._crash = task.exception()  # a bug, not bad input: fail loudly, re-run on restart

    def _dead_letter(self, job: _Job, rejected: Rejected) -> None:
        out = dead_letter(
            job.msg, self._topology, self._settings, rejected, self._name, limits=self._limits
        )
        job.refused, job.dead_lettered = 0, True
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
        try:
            produce(
                self._producer,
                out.topic,
                out.value,
                out.key,
                out.headers,
                on_delivery=partial(self._delivered, job, out),
            )
        except KafkaException as exc:  # refused before it left, e.g. over message.max.bytes
            self._delivered(job, out, exc.args[0], None)

    def _delivered(
        self, job: _Job, out: OutRecord, err: KafkaError | None, _msg: Message | None
    ) -> None:
        self._moved = True
        if err is None:
            self._finish(job)
        else:
            self._refused(job, out, err)

    def _refused(self, job: _Job, out: OutRecord, err: KafkaError) -> None:
        """Send it again after a backoff, a few times; then dead-letter the command instead;
        a refused dead letter leaves the command to run again after a restart. A missing ACL
        stops the worker: every command would be dead-lettered for it."""
        if err.code() in AUTHORIZATION_CODES:
            what = f"topic {out.topic}"
            self._crash = NotAuthorized(refused(self._settings, "WRITE", what, self._role))
            self._abandon(job)  # not committed: it runs again once the ACL is there
            return
        if err.fatal():
            self._crash = KafkaException(err)  # the producer is done for: restart the worker
        job.refused += 1
        what = "dead letter" if job.dead_lettered else "result"
        if job.refused < self._settings.handler_delivery_attempts and (
            err.code() not in REFUSED_FOR_GOOD
        ):
            delay = retry_delay(job.refused - 1)
            log.warning(
                "%s handler: the %s of %s was refused (%s); attempt %d in %.1fs",
                *(self._role, what, _where(job.msg), err, job.refused + 1, delay),
            )
            self._loop.call_later(delay, self._send, job, out)
        elif not job.dead_lettered:
            why = f"its result to {out.topic} was refused {job.refused} times, last: {err}"
            self._dead_letter(job, Rejected("undeliverable", why))
        else:
            log.error(
                "%s handler: the dead letter of %s was refused too (%s); the command runs again "
                "after the next restart or rebalance",
                *(self._role, _where(job.msg), err),
            )
            self._abandon(job)

    def _finish(self, job: _Job) -> None:
        job.offsets.finish(job.offset)
        self._in_flight -= 1

    def _abandon(self, job: _Job) -> None:
        job.offsets.abandon(job.offset)
        self._in_flight -= 1


def _span_attributes(job: _Job, command: Decoded) -> dict[str, Any]:
    """A handler span's attributes: OpenTelemetry's messaging ones, and the saga's."""
    meta, msg = command.record["meta"], job.msg
    return {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": msg.topic() or "",
        "messaging.destination.partition.id": str(msg.partition()),
        "messaging.kafka.offset": msg.offset() or 0,
        "messaging.kafka.message.key": meta.get("saga_key") or "",
        "messaging.message.id": meta.get("event_id") or "",
        "saga.command": command.event_type,
        "saga.key": meta.get("saga_key") or "",
        "saga.step": meta.get("step") or "",
        "saga.attempt": meta.get("attempt") or 1,
        "saga.idempotency_key": command.record.get("idempotency_key") or "",
        "saga.correlation_id": meta.get("correlation_id") or "",
    }


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
