"""The physical limit `sagastream bench` compares against: the order saga's hops on plain Kafka.

Raw bytes, no Avro, no saga state beyond a join counter, one process per role, like the
sagastream workers: a start event goes to the orchestrator, which sends one command to each of
the three step handlers and, per saga, as many filler records as sagastream writes to its
lifecycle, changelog and timer topics; each handler answers its command with a result; when the
three results are in, the orchestrator emits the outcome and a notification command, which the
notification handler answers too. The orchestrator's outputs and input offsets commit in one
transaction, by the commit policy it is given: with ``--linger-ms``, sagastream's (a transaction
gathers up to the commit interval under load and commits once its inputs run dry and it has been
open the linger), else once per commit interval; handlers produce through an idempotent producer
and commit offsets automatically once a command's result is queued.

One role per process: ``python -m sagastream.ops.pipeline_baseline ROLE --prefix P --filler K
[--linger-ms MS]``, with the connection settings in the usual SAGASTREAM_* variables.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from confluent_kafka import Consumer, Message, Producer
from confluent_kafka.admin import NewTopic

from sagastream.ops.admin import admin_client
from sagastream.runtime.kafka_io import produce
from sagastream.runtime.settings import Settings

ORCHESTRATOR = "orchestrator"
STEPS = ("payment", "inventory", "shipping")
NOTIFY = "notification"
HANDLERS = (*STEPS, NOTIFY)
ROLES = (ORCHESTRATOR, *HANDLERS)
PARTITIONS = 4
BATCH = 1000  # messages per fetch at most, as sagastream's orchestrator takes them
IDLE_WAIT_S = 0.05  # the longest wait for input when nothing is open
READY = "baseline ready"
# per saga: start, a command and a result per step, outcome, notification command and result
STRUCTURAL_WRITES = 1 + 2 * len(STEPS) + 3

RESULT = b"r" * 48
FILLER = b"f" * 96


@dataclass(frozen=True)
class BaselineTopics:
    """The pipeline's physical topic names under one prefix."""

    prefix: str

    @property
    def start(self) -> str:
        return f"{self.prefix}start"

    @property
    def outcomes(self) -> str:
        return f"{self.prefix}outcomes"

    @property
    def lifecycle(self) -> str:
        return f"{self.prefix}lifecycle"

    def commands(self, role: str) -> str:
        return f"{self.prefix}{role}.commands"

    def results(self, role: str) -> str:
        return f"{self.prefix}{role}.events"

    def all(self) -> list[str]:
        per_role = [t for role in HANDLERS for t in (self.commands(role), self.results(role))]
        return [self.start, *per_role, self.outcomes, self.lifecycle]


def create_baseline_topics(
    settings: Settings, topics: BaselineTopics, timeout: float = 30.0
) -> None:
    """Create the pipeline's topics with the partition count of the order saga's topics."""
    admin = admin_client(settings)
    replication = min(3, len(admin.list_topics(timeout=timeout).brokers))
    new = [
        NewTopic(t, num_partitions=PARTITIONS, replication_factor=replication) for t in topics.all()
    ]
    for future in admin.create_topics(new, operation_timeout=timeout).values():
        future.result()


def commit_due(open_for: float, interval: float, linger: float | None, drained: bool) -> bool:
    """Whether a transaction open for `open_for` seconds commits now: at the commit interval,
    or (with a linger, sagastream's policy) once the inputs ran dry and it lingered that long."""
    if open_for >= interval:
        return True
    return linger is not None and drained and open_for >= linger


def _batches(
    consumer: Consumer, stop: threading.Event, wait: Callable[[], float] = lambda: IDLE_WAIT_S
) -> Iterator[list[Message]]:
    """Batches of what is there, up to BATCH, until `stop`: waits up to `wait()` seconds for
    the first message only, as sagastream's workers fetch; says READY once it has partitions."""
    announced = False
    while not stop.is_set():
        batch = []
        first = consumer.poll(max(0.0, wait()))
        got = [first, *consumer.consume(BATCH - 1, 0)] if first is not None else []
        for msg in got:
            error = msg.error()
            if error is None:
                batch.append(msg)
            elif error.fatal():
                raise RuntimeError(f"consumer error: {error}")
        if not announced and consumer.assignment():
            print(READY, flush=True)
            announced = True
        yield batch


def run_orchestrator(
    settings: Settings,
    topics: BaselineTopics,
    filler: int,
    stop: threading.Event,
    linger_ms: int | None = None,
) -> None:
    """Fan out, join, emit; outputs and input offsets commit in one transaction, by the commit
    interval alone or (with `linger_ms`) by sagastream's policy (see `commit_due`)."""
    group = f"{topics.prefix}baseline-{ORCHESTRATOR}"
    consumer = Consumer(settings.consumer_config(group))
    results = {topics.results(step) for step in STEPS}
    consumer.subscribe([topics.start, *(topics.results(role) for role in HANDLERS)])
    producer = Producer(settings.transactional_producer_config(f"{group}-tx"))
    producer.init_transactions()
    producer.begin_transaction()
    # lifecycle/changelog-like writes: half when the saga starts, the rest when it ends
    at_start, at_end = filler // 2, filler - filler // 2
    joined: dict[bytes | None, int] = {}
    interval = settings.commit_interval_ms / 1000
    linger = None if linger_ms is None else min(interval, linger_ms / 1000)
    opened = 0.0  # when the open transaction got its first input
    pending = False

    def wait() -> float:
        # an open transaction's next commit bounds the wait for input, as in sagastream
        deadline = opened + (interval if linger is None else linger)
        return min(IDLE_WAIT_S, deadline - time.monotonic()) if pending else IDLE_WAIT_S

    for batch in _batches(consumer, stop, wait):
        for msg in batch:
            topic, key = msg.topic(), msg.key()
            if topic == topics.start:
                for step in STEPS:
                    produce(producer, topics.commands(step), msg.value() or b"", key)
                for _ in range(at_start):
                    produce(producer, topics.lifecycle, FILLER, key)
            elif topic in results:
                seen = joined.get(key, 0) + 1
                if seen < len(STEPS):
                    joined[key] = seen
                    continue
                joined.pop(key, None)
                produce(producer, topics.outcomes, RESULT, key)
                produce(producer, topics.commands(NOTIFY), RESULT, key)
                for _ in range(at_end):
                    produce(producer, topics.lifecycle, FILLER, key)
            # a notification result ends nothing: the saga already has its outcome
        if batch and not pending:
            pending, opened = True, time.monotonic()
        producer.poll(0)
        drained = len(batch) < BATCH
        if pending and commit_due(time.monotonic() - opened, interval, linger, drained):
            _commit(consumer, producer)
            pending = False
    if pending:
        _commit(consumer, producer)
    consumer.close()


def _commit(consumer: Consumer, producer: Producer) -> None:
    offsets = [tp for tp in consumer.position(consumer.assignment()) if tp.offset >= 0]
    producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata())
    producer.commit_transaction()
    producer.begin_transaction()


def run_handler(
    settings: Settings, topics: BaselineTopics, role: str, stop: threading.Event
) -> None:
    """Answer every command with a result; offsets commit automatically once it is queued."""
    consumer = Consumer(
        settings.consumer_config(
            f"{topics.prefix}baseline-{role}",
            **{"enable.auto.commit": True, "auto.commit.interval.ms": settings.commit_interval_ms},
        )
    )
    consumer.subscribe([topics.commands(role)])
    producer = Producer(settings.producer_config())
    for batch in _batches(consumer, stop):
        for msg in batch:
            produce(producer, topics.results(role), RESULT, msg.key())
            consumer.store_offsets(msg)
        producer.poll(0)
    producer.flush(10)
    consumer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sagastream.ops.pipeline_baseline")
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("--prefix", required=True, help="the pipeline's topic prefix")
    parser.add_argument("--filler", type=int, default=0, help="extra orchestrator writes per saga")
    parser.add_argument(
        "--linger-ms",
        type=int,
        default=None,
        help="commit once inputs run dry and the transaction is this old (sagastream's "
        "commit_linger_ms); default: at the commit interval only",
    )
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    settings, topics = Settings(), BaselineTopics(args.prefix)
    if args.role == ORCHESTRATOR:
        run_orchestrator(settings, topics, args.filler, stop, args.linger_ms)
    else:
        run_handler(settings, topics, args.role, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
