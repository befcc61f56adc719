"""The handler loop's bookkeeping: offsets, per-key order, the concurrency bound, waits, drains.

The loop runs against small in-memory fakes of the consumer and producer, which keep just
enough of confluent-kafka's behaviour (positions, pause, seek, commits, delivery reports) to
show what it commits, pauses and produces.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, TopicPartition

import sagastream
from sagastream.core.topology import Topology, load_topology
from sagastream.examples import app
from sagastream.runtime import handler_loop
from sagastream.runtime.handler_loop import (
    HandlerLoop,
    PartitionOffsets,
    command_bounds,
    throttled,
)
from sagastream.runtime.metrics import Metrics
from sagastream.runtime.settings import Settings
from sagastream.wire.codec import (
    AvroCodec,
    LocalSchemaIds,
    RegistryUnavailable,
    SchemaStore,
    new_meta,
)
from sagastream.wire.dlq import read_dead_letter_headers

STORE = SchemaStore(Path(__file__).parents[2] / "schemas")
TOPOLOGY = load_topology(Path(__file__).parents[2] / "topology.yaml", STORE.directory)
TOPIC = "payments.commands"


# ------------------------------------------------------------------ pure bookkeeping


def test_commit_position_stays_below_the_oldest_unfinished_command():
    offsets = PartitionOffsets()
    assert offsets.position() is None
    for offset in (10, 11, 12):
        offsets.start(offset)
    offsets.finish(11)
    offsets.finish(12)
    assert (offsets.position(), offsets.outstanding) == (10, 1)
    offsets.finish(10)
    assert (offsets.position(), offsets.outstanding) == (13, 0)


def test_to_commit_answers_only_when_the_position_moved():
    offsets = PartitionOffsets()
    assert offsets.to_commit() is None
    offsets.start(0)
    assert offsets.to_commit() == 0
    assert offsets.to_commit() is None
    offsets.finish(0)
    assert offsets.to_commit() == 1


def test_an_abandoned_command_holds_the_commit_back_for_good():
    offsets = PartitionOffsets()
    for offset in (5, 6, 7):
        offsets.start(offset)
    offsets.finish(5)
    offsets.abandon(6)
    offsets.finish(7)
    offsets.start(8)
    offsets.finish(8)
    assert (offsets.position(), offsets.outstanding) == (6, 0)


@pytest.mark.parametrize(
    ("in_flight", "paused", "full_for", "expected"),
    [
        (7, False, 60.0, False),
        (8, False, 0.0, False),
        (8, False, handler_loop.PAUSE_AFTER_S, True),
        (5, True, 0.0, True),
        (4, True, 0.0, True),
        (3, True, 0.0, False),
    ],
)
def test_a_loop_that_stays_full_pauses_until_below_half(in_flight, paused, full_for, expected):
    assert throttled(in_flight, 8, paused, full_for) is expected


# ------------------------------------------------------------------ fakes


class FakeMessage:
    def __init__(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes):
        self._where = (topic, partition, offset)
        self._key = key
        self._value = value

    def topic(self) -> str:
        return self._where[0]

    def partition(self) -> int:
        return self._where[1]

    def offset(self) -> int:
        return self._where[2]

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return 1, 1_700_000_000_000

    def headers(self) -> list[tuple[str, bytes]] | None:
        return None

    def error(self) -> None:
        return None


class FakeConsumer:
    """A group of one: every partition is assigned on the first poll."""

    def __init__(self, topic: str = TOPIC, partitions: int = 2) -> None:
        self.topic = topic
        self.log: dict[int, list[FakeMessage]] = {p: [] for p in range(partitions)}
        self.position = dict.fromkeys(self.log, 0)
        self.assigned: set[int] = set()
        self.paused: set[int] = set()
        self.seeks: list[tuple[int, int]] = []
        self.commits: list[tuple[dict[int, int], bool]] = []
        self.closed = False
        self._callbacks: dict[str, Callable[..., None]] = {}
        self._to_revoke: set[int] = set()
        self._lock = threading.Lock()

    def append(self, partition: int, key: bytes | None, value: bytes) -> int:
        with self._lock:
            offset = len(self.log[partition])
            self.log[partition].append(FakeMessage(self.topic, partition, offset, key, value))
        return offset

    def revoke(self, partitions: set[int]) -> None:
        self._to_revoke |= partitions

    def committed(self, partition: int) -> int | None:
        return next((c[partition] for c, _ in reversed(self.commits) if partition in c), None)

    def subscribe(self, topics: list[str], **callbacks: Callable[..., None]) -> None:
        assert topics == [self.topic]
        self._callbacks = callbacks

    def poll(self, timeout: float = -1) -> FakeMessage | None:
        found = self.consume(1, 0)
        if not found:
            time.sleep(min(timeout, 0.002))
        return found[0] if found else None

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        if not self.assigned and not self.closed:
            self.assigned = set(self.log)
            self._callbacks["on_assign"](self, self._partitions(self.assigned))
        if self._to_revoke:
            revoked, self._to_revoke = self._to_revoke, set()
            self._callbacks["on_revoke"](self, self._partitions(revoked))
            self.assigned -= revoked
        taken: list[FakeMessage] = []
        with self._lock:
            for p in sorted(self.assigned - self.paused):
                while len(taken) < num_messages and self.position[p] < len(self.log[p]):
                    taken.append(self.log[p][self.position[p]])
                    self.position[p] += 1
        return taken

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {p.partition for p in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {p.partition for p in partitions}

    def seek(self, partition: TopicPartition) -> None:
        self.position[partition.partition] = partition.offset
        self.seeks.append((partition.partition, partition.offset))

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition]:
        self.commits.append(({p.partition: p.offset for p in offsets}, asynchronous))
        return []

    def close(self) -> None:
        if self.assigned:
            self._callbacks["on_revoke"](self, self._partitions(self.assigned))
        self.assigned = set()
        self.closed = True

    def _partitions(self, partitions: set[int]) -> list[TopicPartition]:
        return [TopicPartition(self.topic, p) for p in sorted(partitions)]


class FakeProducer:
    """Acknowledges what was produced on the next poll, unless told to hold acks back; refuses
    what goes to a topic of `refused` (the broker's INVALID_RECORD)."""

    def __init__(self, refused: frozenset[str] = frozenset()) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, dict[str, bytes]]] = []
        self.hold = False
        self.refused = refused
        self._unacked: list[tuple[str, Callable[..., None]]] = []

    def produce(self, topic: str, value: bytes, key: bytes | None, **kw: Any) -> None:
        self.sent.append((topic, key, value, dict(kw["headers"])))
        self._unacked.append((topic, kw["on_delivery"]))

    def poll(self, timeout: float = 0) -> int:
        if self.hold:
            return 0
        acks, self._unacked = self._unacked, []
        for topic, ack in acks:
            ack(KafkaError(KafkaError.INVALID_RECORD) if topic in self.refused else None, None)
        return len(acks)

    def flush(self, timeout: float = -1) -> int:
        self.poll()
        return len(self._unacked)


class FlakyCodec(AvroCodec):
    """A codec whose registry is down for messages that contain b'wait' while `down` is set,
    and for encoding results while `results_down` is set."""

    down = True
    results_down = False

    def decode(self, data: bytes) -> tuple[str, dict[str, Any]]:
        if self.down and b"wait" in data:
            raise RegistryUnavailable("schema registry at http://registry is unreachable")
        return super().decode(data)

    def encode(self, event_type: str, record: Any) -> bytes:
        if self.results_down and event_type == "PaymentCharged":
            raise RegistryUnavailable("schema registry at http://registry is unreachable")
        return super().encode(event_type, record)


CODEC = FlakyCodec(STORE, LocalSchemaIds(STORE))


def charge(
    order: str,
    attempt: int = 1,
    command: str = "ChargePayment",
    *,
    saga: str | None = None,
    step: str | None = "payment",
) -> bytes:
    """A command for `order` (its idempotency key), of saga key `saga` (default: the order)."""
    record: dict[str, Any] = {
        "meta": {**new_meta(command, saga or order, "test", attempt=attempt), "step": step},
        "idempotency_key": f"order:{order}:payment",
        "order_id": order,
        "customer_id": "c-1",
        "amount_cents": 100,
        "currency": "EUR",
        "card_token": "tok",
        "payment_id": "pay-1",
    }
    names = {field["name"] for field in STORE.raw(command)["fields"]}
    return CODEC.encode(command, {k: v for k, v in record.items() if k in names})


def charged(order: str) -> tuple[str, dict[str, Any]]:
    return "PaymentCharged", {"order_id": order, "payment_id": f"pay-{order}", "amount_cents": 1}


@contextmanager
def running(
    call: Callable[..., Any],
    *,
    consumer: FakeConsumer,
    producer: FakeProducer | None = None,
    topology: Topology = TOPOLOGY,
    **settings: Any,
) -> Iterator[HandlerLoop]:
    options = {"commit_interval_ms": 10, "drain_timeout_s": 5.0, **settings}
    loop = HandlerLoop(
        Settings(**options),
        topology,
        STORE,
        CODEC,
        "payment",
        call,
        frozenset({"ChargePayment"}),
        Metrics.create("payment"),
        consumer=consumer,  # type: ignore[arg-type]
        producer=producer or FakeProducer(),  # type: ignore[arg-type]
    )
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    try:
        yield loop
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def eventually(condition: Callable[[], Any], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def results(producer: FakeProducer) -> list[tuple[bytes | None, str, dict[str, Any]]]:
    """What was produced, decoded, dead letters left out."""
    sent = [(key, value) for topic, key, value, _ in producer.sent if not topic.endswith(".dlq")]
    return [(key, *CODEC.decode(value)) for key, value in sent]


# ------------------------------------------------------------------ the loop


def test_a_result_is_keyed_like_its_command_and_committed_once_acknowledged():
    consumer, producer = FakeConsumer(), FakeProducer()
    producer.hold = True
    consumer.append(0, b"o-1", charge("o-1", attempt=2))

    async def call(command_type: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return charged(record["order_id"])

    with running(call, consumer=consumer, producer=producer) as loop:
        eventually(lambda: producer.sent)
        eventually(lambda: loop.ready)
        time.sleep(0.05)
        assert consumer.committed(0) == 0  # produced, not yet acknowledged
        producer.hold = False
        eventually(lambda: consumer.committed(0) == 1)
    [(key, event_type, record)] = results(producer)
    assert (key, event_type, record["order_id"]) == (b"o-1", "PaymentCharged", "o-1")
    assert record["meta"]["attempt"] == 2
    assert producer.sent[0][0] == "payments.events"


def test_attempts_of_one_idempotency_key_run_in_order_and_other_commands_concurrently():
    consumer = FakeConsumer()
    # three attempts of each of three commands; a and b are steps of one saga (key s)
    for n in range(1, 4):
        for name in ("a", "b", "c"):
            saga = "s" if name != "c" else "c"
            consumer.append(0 if name != "c" else 1, saga.encode(), charge(name, n, saga=saga))
    trace: list[tuple[str, str]] = []

    async def call(command_type: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        attempt = f"{record['order_id']}{record['meta']['attempt']}"
        trace.append(("start", attempt))
        await asyncio.sleep(0.02)
        trace.append(("end", attempt))
        return charged(record["order_id"])

    with running(call, consumer=consumer):
        eventually(lambda: len(trace) == 18)
    for name in "abc":
        mine = [step for step in trace if step[1].startswith(name)]
        assert mine == [(edge, f"{name}{n}") for n in range(1, 4) for edge in ("start", "end")]
    running_at_once = max(
        sum(1 if edge == "start" else -1 for edge, _ in trace[: i + 1]) for i in range(18)
    )
    assert running_at_once == 3  # a and b of one saga key run at once


def test_a_full_loop_takes_no_more_then_pauses_and_runs_plain_functions_in_threads(monkeypatch):
    monkeypatch.setattr(handler_loop, "PAUSE_AFTER_S", 0.2)
    consumer = FakeConsumer()
    for n in range(20):
        consumer.append(n % 2, f"k{n}".encode(), charge(f"o{n}"))
    gate = threading.Event()
    lock = threading.Lock()
    now_running: list[int] = []
    most = [0]
    threads: set[int] = set()

    def call(command_type: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        with lock:
            now_running.append(1)
            most[0] = max(most[0], len(now_running))
            threads.add(threading.get_ident())
        gate.wait(5)
        with lock:
            now_running.pop()
        return charged(record["order_id"])

    producer = FakeProducer()
    with running(call, consumer=consumer, producer=producer, handler_concurrency=4):
        eventually(lambda: len(now_running) == 4)
        assert consumer.paused == set()
        eventually(lambda: consumer.paused == {0, 1})
        assert sum(consumer.position.values()) == 4
        assert len(now_running) == 4
        gate.set()
        eventually(lambda: len(producer.sent) == 20)
        eventually(lambda: (consumer.committed(0), consumer.committed(1)) == (10, 10))
        assert consumer.paused == set()
    assert most[0] == 4
    assert threading.get_ident() not in threads


def test_bad_input_is_dead_lettered_with_its_reason_and_committed():
    consumer = FakeConsumer(partitions=1)
    consumer.append(0, None, charge("keyless"))
    consumer.append(0, b"x", b"not avro")
    consumer.append(0, b"r", charge("r", command="RefundPayment"))
    consumer.append(0, b"boom", charge("boom"))
    consumer.append(0, b"ok", charge("ok"))
    called: list[str] = []

    async def call(command_type: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        called.append(record["order_id"])
        if record["order_id"] == "boom":
            raise RuntimeError("gateway exploded")
        return charged(record["order_id"])

    producer = FakeProducer()
    with running(call, consumer=consumer, producer=producer):
        eventually(lambda: consumer.committed(0) == 5)
    assert called == ["boom", "ok"]
    dead = {}
    for topic, _, _, headers in producer.sent:
        if topic == "payments.commands.dlq":
            why = read_dead_letter_headers(list(headers.items()))
            dead[int(why["original.offset"])] = why["reason"]
    # the exception is no dead letter: the attempt is reported failed, with the exception
    assert dead == {0: "missing_key", 1: "bad_magic", 2: "unsupported_command"}
    [(key, _, failed)] = [r for r in results(producer) if r[1] == "StepAttemptFailed"]
    assert key == b"boom"
    assert {k: failed[k] for k in ("saga_type", "step", "kind", "error_type", "message")} == {
        "saga_type": "order",
        "step": "payment",
        "kind": "exception",
        "error_type": "RuntimeError",
        "message": "gateway exploded",
    }
    assert failed["compensation"] is False
    assert (failed["meta"]["step"], failed["meta"]["attempt"]) == ("payment", 1)


def test_a_result_too_large_fails_the_attempt_and_the_loop_goes_on():
    consumer = FakeConsumer(partitions=1)
    consumer.append(0, b"huge", charge("huge"))
    consumer.append(0, b"ok", charge("ok"))

    async def call(command_type: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        result_type, fields = charged(record["order_id"])
        if record["order_id"] == "huge":
            fields["payment_id"] = "p" * 20_000
        return result_type, fields

    producer = FakeProducer()
    with running(call, consumer=consumer, producer=producer, max_record_bytes=10_000):
        eventually(lambda: consumer.committed(0) == 2)
    assert [s for s in producer.sent if s[0].endswith(".dlq")] == []
    answered = {key: (event_type, record) for key, event_type, record in results(producer)}
    event_type, failed = answered[b"huge"]
    assert (event_type, failed["kind"], failed["error_type"]) == (
        "StepAttemptFailed",
        "too_large",
        "too_large",
    )
    assert "PaymentCharged for payments.events" in failed["message"]
    assert "over the limit of 10000" in failed["message"]
    assert answered[b"ok"][0] == "PaymentCharged"


def test_a_result_the_contract_refuses_fails_the_attempt_and_is_not_sent():
    consumer = FakeConsumer(partitions=1)
    consumer.append(0, b"forge", charge("forge"))

    async def call(command_type: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return "SagaCompleted", {"saga_type": "order", "completed_steps": ["payment"]}

    producer = FakeProducer()
    with running(call, consumer=consumer, producer=producer):
        eventually(lambda: consumer.committed(0) == 1)
    [(_, event_type, failed)] = results(producer)
    assert (event_type, failed["kind"]) == ("StepAttemptFailed", "contract")
    assert "answered SagaCompleted, an engine event" in failed["message"]
    assert producer.sent[0][0] == "payments.events"


def test_a_result_names_the_step_its_command_named():
    consumer = FakeConsumer(partitions=1)
    consumer.append(0, b"o-1", charge("o-1", step="payment"))
    consumer.append(0, b"o-2", charge("o-2", step=None))

    async def call(command_type: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return charged(record["order_id"])

    producer = FakeProducer()
    with running(call, consumer=consumer, producer=producer):
        eventually(lambda: consumer.committed(0) == 2)
    steps = {key: record["meta"]["step"] for key, _, record in results(producer)}
    assert steps == {b"o-1": "payment", b"o-2": None}


@pytest.mark.parametrize("plain", [True, False])
def test_a_heartbeat_starts_the_bound_again(plain: bool):
    consumer = FakeConsumer(partitions=1)
    consumer.append(0, b"long", charge("long"))
    consumer.append(0, b"silent", charge("silent"))

    def work(record: dict[str, Any], beat: bool) -> tuple[str, dict[str, Any]]:
        for _ in range(8):  # 0.4s of work against a bound of 0.15s
            time.sleep(0.05)
            if beat:
                sagastream.heartbeat()
        return charged(record["order_id"])

    def call(command_type: str, record: dict[str, Any]) -> Any:
        beat = record["order_id"] == "long"
        if plain:
            return work(record, beat)

        async def run() -> tuple[str, dict[str, Any]]:
            for _ in range(8):
                await asyncio.sleep(0.05)
                if beat:
                    sagastream.heartbeat()
            return charged(record["order_id"])

        return run()

    producer = FakeProducer()
    with running(call, consumer=consumer, producer=producer, handler_timeout_ms=150):
        eventually(lambda: consumer.committed(0) == 2)
    answered = {key: (event_type, record) for key, event_type, record in results(producer)}
    assert answered[b"long"][0] == "PaymentCharged"
    assert answered[b"silent"][0] == "StepAttemptFailed"
    assert answered[b"silent"][1]["kind"] == "timeout"


def test_a_partition_waits_for_the_registry_while_others_go_on(monkeypatch):
    monkeypatch.setattr(handler_loop, "retry_delay", lambda failures: 0.02)
    monkeypatch.setattr(CODEC, "down", True)
    consumer = FakeConsumer()
    consumer.append(0, b"w", charge("wait-1"))
    consumer.append(0, b"w", charge("wait-2"))
    consumer.append(1, b"g", charge("go"))
    done: list[str] = []

    async def call(command_type: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        done.append(record["order_id"])
        return charged(record["order_id"])

    with running(call, consumer=consumer) as loop:
        metrics = loop._metrics.registry
        eventually(lambda: done == ["go"] and len(consumer.seeks) >= 2)
        assert set(consumer.seeks) == {(0, 0)}
        assert metrics.get_sample_value("sagastream_registry_up", {"role": "payment"}) == 0
        assert consumer.committed(0) is None
        CODEC.down = False
        eventually(lambda: done == ["go", "wait-1", "wait-2"])
        eventually(lambda: consumer.committed(0) == 2)
        assert metrics.get_sample_value("sagastream_registry_up", {"role": "payment"}) == 1
        retries = metrics.get_sample_value("sagastream_registry_retries_total", {"role": "payment"})
        assert retries is not None and retries >= 2


def test_a_result_that_cannot_get_its_schema_id_waits_and_is_not_dead_lettered(monkeypatch):
    monkeypatch.setattr(handler_loop, "retry_delay", lambda failures: 0.02)
    monkeypatch.setattr(CODEC, "down", False)
    monkeypatch.setattr(CODEC, "results_down", True)
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.append(0, b"o-1", charge("o-1"))
    calls: list[str] = []

    async def call(command_type: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        calls.append(record["order_id"])
        return charged(record["order_id"])

    with running(call, consumer=consumer, producer=producer) as loop:
        metrics = loop._metrics.registry
        eventually(lambda: calls == ["o-1"])
        time.sleep(0.2)
        assert producer.sent == [], "neither a result nor a dead letter while it waits"
        assert consumer.committed(0) in (None, 0), "the command stays uncommitted"
        assert metrics.get_sample_value("sagastream_registry_up", {"role": "payment"}) == 0
        CODEC.results_down = False
        eventually(lambda: consumer.committed(0) == 1)
    [(key, event_type, record)] = results(producer)
    assert (key, event_type, calls) == (b"o-1", "PaymentCharged", ["o-1"])


def test_a_revoke_waits_for_running_commands_commits_and_drops_queued_ones():
    consumer = FakeConsumer(partitions=1)
    consumer.append(0, b"k", charge("first"))
    consumer.append(0, b"k", charge("first", attempt=2))  # queues behind its first attempt
    started: list[int] = []

    async def call(command_type: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        started.append(record["meta"]["attempt"])
        await asyncio.sleep(0.1)
        return charged(record["order_id"])

    producer = FakeProducer()
    with running(call, consumer=consumer, producer=producer):
        eventually(lambda: started == [1])
        consumer.revoke({0})
        eventually(lambda: ({0: 1}, False) in consumer.commits)
        time.sleep(0.15)
    assert started == [1]
    assert len(producer.sent) == 1


def test_shutdown_finishes_work_in_flight_commits_and_leaves():
    consumer = FakeConsumer(partitions=1)
    consumer.append(0, b"k", charge("slow"))
    started = threading.Event()

    async def call(command_type: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        started.set()
        await asyncio.sleep(0.2)
        return charged(record["order_id"])

    producer = FakeProducer()
    with running(call, consumer=consumer, producer=producer) as loop:
        assert started.wait(5)
    assert len(producer.sent) == 1
    assert ({0: 1}, False) in consumer.commits
    assert consumer.closed and not loop.ready


def test_shutdown_abandons_what_outlasts_the_drain_time():
    consumer = FakeConsumer(partitions=1)
    consumer.append(0, b"k", charge("stuck"))
    started = threading.Event()

    async def call(command_type: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        started.set()
        await asyncio.sleep(30)
        return charged(record["order_id"])

    producer = FakeProducer()
    began = time.monotonic()
    with running(call, consumer=consumer, producer=producer, drain_timeout_s=0.1):
        assert started.wait(5)
    assert time.monotonic() - began < 5
    assert producer.sent == []
    assert all(c.get(0, 0) == 0 for c, _ in consumer.commits)


# ------------------------------------------------------------------ run-time bounds, delivery


def test_a_command_may_run_for_its_steps_timeout_unless_a_setting_says_otherwise():
    commands = ["ChargePayment", "RefundPayment", "SendNotification"]
    assert command_bounds(TOPOLOGY, commands, None) == {
        "ChargePayment": 15.0,  # the payment step's timeout_ms
        "RefundPayment": 15.0,  # its compensation's (the default)
        "SendNotification": handler_loop.NO_STEP_BOUND_MS / 1000,
    }
    assert set(command_bounds(TOPOLOGY, commands, 250).values()) == {0.25}


def timeouts(loop: HandlerLoop) -> float | None:
    labels = {"role": "payment", "command": "ChargePayment"}
    return loop._metrics.registry.get_sample_value("sagastream_handler_timeouts_total", labels)


def test_a_hung_plain_function_is_abandoned_at_its_bound_and_saturates_the_role():
    consumer = FakeConsumer(partitions=1)
    for order in ("hung-1", "ok-1", "ok-2", "hung-2"):
        consumer.append(0, order.encode(), charge(order))
    release = threading.Event()

    def call(command_type: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if record["order_id"].startswith("hung"):
            release.wait(30)  # a gateway that never answers
        return charged(record["order_id"])

    producer = FakeProducer()
    options = {"handler_timeout_ms": 200, "handler_concurrency": 2}
    with running(call, consumer=consumer, producer=producer, **options) as loop:
        # the other keys are answered, and the commit passes the hung ones at their bound
        eventually(lambda: consumer.committed(0) == 4)
        assert sorted(key for key, t, _ in results(producer) if t == "PaymentCharged") == [
            b"ok-1",
            b"ok-2",
        ]
        # each hung attempt is reported at its bound, at once
        reports = [(key, r["kind"]) for key, t, r in results(producer) if t == "StepAttemptFailed"]
        assert sorted(reports) == [(b"hung-1", "timeout"), (b"hung-2", "timeout")]
        assert timeouts(loop) == 2
        # both hung threads still run: they take every slot, so the role is not ready
        check = loop.readiness()
        assert (
            not check.ok and "saturated: 2 commands past their run-time bound" in check.reasons[0]
        )
        consumer.append(0, b"ok-3", charge("ok-3"))
        time.sleep(0.1)
        assert len(results(producer)) == 4
        release.set()  # the threads return: their results are dropped, the slots free again
        eventually(lambda: consumer.committed(0) == 5)
        assert loop.readiness().ok
    answered = sorted(key for key, t, _ in results(producer) if t == "PaymentCharged")
    assert answered == [b"ok-1", b"ok-2", b"ok-3"]


def test_a_hung_plain_functions_thread_is_not_reused_while_the_pool_serves_the_rest():
    consumer = FakeConsumer(partitions=1)
    consumer.append(0, b"hung", charge("hung"))
    release = threading.Event()
    hung: list[threading.Thread] = []
    served: dict[str, threading.Thread] = {}

    def call(command_type: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if record["order_id"] == "hung":
            hung.append(threading.current_thread())
            release.wait(30)  # a gateway that never answers, until the test lets it
        else:
            served[record["order_id"]] = threading.current_thread()
        return charged(record["order_id"])

    producer = FakeProducer()
    with running(call, consumer=consumer, producer=producer, handler_timeout_ms=200):
        eventually(lambda: hung)
        # while it hangs, others are served (before and after its bound has passed)
        for n in range(10):
            consumer.append(0, f"k{n}".encode(), charge(f"ok-{n}"))
        eventually(lambda: consumer.committed(0) == 11)
        assert len(served) == 10 and hung[0] not in served.values()
        assert [r["kind"] for _, t, r in results(producer) if t == "StepAttemptFailed"] == [
            "timeout"
        ]
        release.set()  # it returns: its result is dropped and its thread ends, not reused
        eventually(lambda: not hung[0].is_alive())
        served.clear()
        for n in range(10, 15):
            consumer.append(0, f"k{n}".encode(), charge(f"ok-{n}"))
        eventually(lambda: consumer.committed(0) == 16)
    assert len(served) == 5 and hung[0] not in served.values()
    answered = [key for key, t, _ in results(producer) if t == "PaymentCharged"]
    assert len(answered) == 15 and b"hung" not in answered


def test_a_plain_functions_thread_serves_one_call_after_another():
    consumer = FakeConsumer(partitions=1)
    for attempt in range(1, 9):  # one idempotency key: they run one after another
        consumer.append(0, b"o-1", charge("o-1", attempt))
    threads: list[threading.Thread] = []

    def call(command_type: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        threads.append(threading.current_thread())
        return charged(record["order_id"])

    producer = FakeProducer()
    with running(call, consumer=consumer, producer=producer):
        eventually(lambda: consumer.committed(0) == 8)
    assert len(threads) == 8 and len(set(threads)) == 1
    assert threading.current_thread() not in threads


def test_pool_threads_idle_too_long_end(monkeypatch):
    monkeypatch.setattr(handler_loop, "IDLE_THREAD_S", 0.05)
    pool = handler_loop.PlainPool("test")
    loop = asyncio.new_event_loop()
    gate = threading.Event()

    async def two_at_once() -> list[str]:
        calls = [pool.submit(loop, lambda n: gate.wait(5) and n, n) for n in ("a", "b")]
        assert pool.threads == 2
        gate.set()
        return list(await asyncio.gather(*(c.future for c in calls)))

    try:
        assert loop.run_until_complete(two_at_once()) == ["a", "b"]
    finally:
        loop.close()
    eventually(lambda: pool.threads == 0)


def test_outcomes_that_come_together_each_reach_their_own_call():
    pool = handler_loop.PlainPool("test")
    gate = threading.Event()

    def call(n: int, _: None) -> int:
        gate.wait(5)
        if n % 3 == 0:
            raise ValueError(f"no {n}")
        return n * 10

    async def many() -> list[Any]:
        loop = asyncio.get_running_loop()
        calls = [pool.submit(loop, call, n, None) for n in range(12)]
        gate.set()  # they return at once: their outcomes reach the loop in a few hand-overs
        return await asyncio.gather(*(c.future for c in calls), return_exceptions=True)

    outcomes = asyncio.run(many())
    assert [o if isinstance(o, int) else str(o) for o in outcomes] == [
        f"no {n}" if n % 3 == 0 else n * 10 for n in range(12)
    ]


def test_an_outcome_for_a_closed_loop_is_dropped_and_its_thread_serves_on():
    pool = handler_loop.PlainPool("test")
    gate = threading.Event()
    closed = asyncio.new_event_loop()
    late = pool.submit(closed, lambda _a, _b: gate.wait(5), None, None)
    closed.close()  # its worker stopped while the call ran
    gate.set()
    # its thread is idle again (its outcome was kept until then), and nothing is kept for it
    eventually(lambda: pool._idle == 1 and not pool._outcomes)

    async def again() -> str:
        call = pool.submit(asyncio.get_running_loop(), lambda a, _b: a, "served", None)
        return await call.future

    assert asyncio.run(again()) == "served"
    assert pool.threads == 1 and late.finished and not late.future.done()


def test_an_async_function_past_its_bound_is_cancelled():
    consumer = FakeConsumer(partitions=1)
    consumer.append(0, b"k", charge("slow"))
    cancelled = threading.Event()

    async def call(command_type: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return charged(record["order_id"])

    producer = FakeProducer()
    with running(call, consumer=consumer, producer=producer, handler_timeout_ms=100) as loop:
        eventually(lambda: consumer.committed(0) == 1)
        assert cancelled.is_set() and timeouts(loop) == 1 and loop.readiness().ok
    [(_, event_type, failed)] = results(producer)
    assert (event_type, failed["kind"], failed["error_type"]) == (
        "StepAttemptFailed",
        "timeout",
        "timeout",
    )
    assert "ran past its bound of 0.1s" in failed["message"]


def test_a_refused_result_is_sent_again_then_its_command_is_dead_lettered(monkeypatch):
    monkeypatch.setattr(handler_loop, "retry_delay", lambda failures: 0.01)
    consumer = FakeConsumer(partitions=1)
    consumer.append(0, b"k", charge("refused"))
    consumer.append(0, b"j", charge("fine"))

    async def call(command_type: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return charged(record["order_id"])

    producer = FakeProducer(refused=frozenset({"payments.events"}))
    with running(call, consumer=consumer, producer=producer, handler_delivery_attempts=3):
        eventually(lambda: consumer.committed(0) == 2)
    topics = [topic for topic, *_ in producer.sent]
    assert topics.count("payments.events") == 6  # three attempts for each of the two results
    dead = [headers for topic, *_, headers in producer.sent if topic == "payments.commands.dlq"]
    reasons = [read_dead_letter_headers(list(h.items())) for h in dead]
    assert sorted(int(r["original.offset"]) for r in reasons) == [0, 1]
    assert {r["reason"] for r in reasons} == {"undeliverable"}
    assert "its result to payments.events was refused 3 times" in reasons[0]["error"]


def test_a_command_whose_dead_letter_is_refused_too_runs_again_after_a_restart(monkeypatch):
    monkeypatch.setattr(handler_loop, "retry_delay", lambda failures: 0.01)
    consumer = FakeConsumer(partitions=1)
    consumer.append(0, b"k", charge("refused"))

    async def call(command_type: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return charged(record["order_id"])

    producer = FakeProducer(refused=frozenset({"payments.events", "payments.commands.dlq"}))
    with running(call, consumer=consumer, producer=producer, handler_delivery_attempts=2):
        eventually(lambda: len(producer.sent) == 4)
        time.sleep(0.05)
    assert [topic for topic, *_ in producer.sent].count("payments.commands.dlq") == 2
    assert all(c.get(0, 0) == 0 for c, _ in consumer.commits)


# ------------------------------------------------------------------ the simulated services


def test_the_demo_app_answers_a_role_once_per_idempotency_key(tmp_path):
    settings = Settings(data_dir=tmp_path, handler_latency_ms=0)
    app.start(settings)
    handler = app.role_handler("payment", TOPOLOGY)
    assert handler.commands == {"ChargePayment", "RefundPayment"}
    assert handler.is_async("ChargePayment")
    record = CODEC.decode(charge("o-1"))[1]
    first = asyncio.run(handler("ChargePayment", record))
    assert first[0] == "PaymentCharged"
    assert asyncio.run(handler("ChargePayment", record)) == first
    assert (tmp_path / "external" / "payment.sqlite").exists()
    with pytest.raises(ValueError, match="roles: payment, inventory"):
        app.role_handler("teleport", TOPOLOGY)


@pytest.mark.parametrize("latency_ms", [0, 3])
def test_the_demo_services_sleep_only_for_a_latency(tmp_path, monkeypatch, latency_ms):
    from sagastream.examples import base

    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def recorded(seconds: float) -> None:
        slept.append(seconds)
        await real_sleep(seconds)

    monkeypatch.setattr(base.time, "sleep", slept.append)
    monkeypatch.setattr(base.asyncio, "sleep", recorded)
    app.start(Settings(data_dir=tmp_path, handler_latency_ms=latency_ms))
    notify = app.role_handler("notification", TOPOLOGY)
    assert not notify.is_async("SendNotification")
    names = {field["name"] for field in STORE.raw("SendNotification")["fields"]}
    fields = {"customer_id": "c-1", "email": "a@b.c", "channel": "sms", "template": "t"}
    record = {"meta": new_meta("SendNotification", "o-1", "test"), **fields, "outcome": "ok"}
    record["idempotency_key"] = "order:o-1:notify:sms"
    assert notify("SendNotification", {k: v for k, v in record.items() if k in names})[0] == (
        "NotificationSent"
    )
    payment = app.role_handler("payment", TOPOLOGY)
    assert asyncio.run(payment("ChargePayment", CODEC.decode(charge("o-1"))[1]))[0] == (
        "PaymentCharged"
    )
    assert slept == ([latency_ms / 1000] * 2 if latency_ms else [])


def test_a_registry_that_refuses_the_credentials_makes_the_role_unready(monkeypatch):
    refused = "schema registry at http://registry refused the credentials: 401"
    monkeypatch.setattr(FlakyCodec, "config_error", property(lambda self: refused))
    consumer = FakeConsumer()

    async def call(command_type: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return charged(record["order_id"])

    with running(call, consumer=consumer) as loop:
        eventually(lambda: loop.ready)
        check = loop.readiness()
    assert (check.ok, check.reasons) == (False, (refused,))
