"""Benchmark of a handler role's per-command work without a broker: the real HandlerLoop.

Each command is decoded, routed, run by its function (as the worker runs an app's function:
model, context, contract check), its result encoded and produced; the clients are stand-ins
that hand out pre-encoded commands at once and acknowledge every result on the next poll.
Prints CPU µs per command (process time, so the plain functions' threads count too) for an
async and a plain function, the median of `--repeat` runs; asserts nothing.

Run: .venv/bin/python scripts/bench_handler.py [--commands N] [--repeat 5] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Message, TopicPartition

from sagastream.app import App
from sagastream.core.topology import load_topology
from sagastream.examples.events import (
    ChargePayment,
    PaymentCharged,
    PaymentRefunded,
    RefundPayment,
)
from sagastream.runtime.handler_loop import HandlerLoop
from sagastream.runtime.metrics import Metrics
from sagastream.runtime.settings import Settings
from sagastream.wire.codec import AvroCodec, LocalSchemaIds, SchemaStore, new_meta

ROOT = Path(__file__).resolve().parent.parent
STORE = SchemaStore(ROOT / "schemas")
TOPOLOGY = load_topology(ROOT / "topology.yaml", STORE.directory)
CODEC = AvroCodec(STORE, LocalSchemaIds(STORE))
SETTINGS = Settings()
TOPIC = SETTINGS.topic(TOPOLOGY.handlers["payment"].consumes)


async def charge_async(cmd: ChargePayment) -> PaymentCharged:
    return PaymentCharged(order_id=cmd.order_id, payment_id="pay-1", amount_cents=1)


def charge_plain(cmd: ChargePayment) -> PaymentCharged:
    return PaymentCharged(order_id=cmd.order_id, payment_id="pay-1", amount_cents=1)


def refund(cmd: RefundPayment) -> PaymentRefunded:
    """The role's other command: never sent here, but a role needs a function for each."""
    return PaymentRefunded(order_id=cmd.order_id, payment_id=cmd.payment_id)


def commands(count: int) -> list[Message]:
    """`count` ChargePayment commands, each of its own saga, on partition 0."""
    found = []
    for n in range(count):
        key = f"o-{n}"
        record = {
            "meta": {**new_meta("ChargePayment", key, "bench"), "step": "payment"},
            "idempotency_key": f"order:{key}:payment",
            "order_id": key,
            "customer_id": "c-1",
            "amount_cents": 100,
            "currency": "EUR",
            "card_token": "tok",
        }
        value = CODEC.encode("ChargePayment", record)
        found.append(
            Message(
                topic=TOPIC,
                partition=0,
                offset=n,
                key=key.encode(),
                value=value,
                timestamp=(1, int(time.time() * 1000)),
            )
        )
    return found


class Consumer:
    """Hands out every command at once, the partition assigned on the first call."""

    def __init__(self, messages: list[Message]) -> None:
        self._messages = messages
        self._next = 0
        self._on_assign: Callable[..., None] | None = None
        self.started = (0.0, 0.0)  # CPU and wall clock at the first command handed out

    def subscribe(self, topics: list[str], **callbacks: Callable[..., None]) -> None:
        self._on_assign = callbacks["on_assign"]

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        if self._on_assign is not None:
            self._on_assign(self, [TopicPartition(TOPIC, 0)])
            self._on_assign = None
            self.started = (time.process_time(), time.perf_counter())
        taken = self._messages[self._next : self._next + num_messages]
        self._next += len(taken)
        return taken

    def poll(self, timeout: float = -1) -> Message | None:
        taken = self.consume(1)
        return taken[0] if taken else None

    def commit(self, **_kw: Any) -> list[TopicPartition]:
        return []

    def pause(self, _partitions: list[TopicPartition]) -> None:
        pass

    def resume(self, _partitions: list[TopicPartition]) -> None:
        pass

    def close(self) -> None:
        pass


class Producer:
    """Acknowledges every result on the next poll; sets `stop` once `count` are."""

    def __init__(self, count: int, stop: threading.Event) -> None:
        self._count = count
        self._stop = stop
        self._unacked: list[Callable[..., None]] = []
        self.acked = 0
        self.ended = (0.0, 0.0)

    def produce(self, topic: str, value: bytes, key: bytes | None, **kw: Any) -> None:
        self._unacked.append(kw["on_delivery"])

    def poll(self, timeout: float = 0) -> int:
        acks, self._unacked = self._unacked, []
        for ack in acks:
            ack(None, None)
        self.acked += len(acks)
        if acks and self.acked >= self._count:
            self.ended = (time.process_time(), time.perf_counter())
            self._stop.set()
        return len(acks)

    def flush(self, timeout: float = -1) -> int:
        self.poll()
        return 0


def one_run(function: Callable[..., Any], count: int) -> tuple[float, float]:
    """CPU and wall µs per command of one run of `count` commands through a fresh loop."""
    app = App()
    app.handler(function)
    app.handler(refund)
    handler = app.role_handler("payment", TOPOLOGY)
    stop = threading.Event()
    consumer, producer = Consumer(commands(count)), Producer(count, stop)
    loop = HandlerLoop(
        SETTINGS,
        TOPOLOGY,
        STORE,
        CODEC,
        "payment",
        handler,
        handler.commands,
        Metrics.create("payment"),
        is_async=handler.is_async,
        consumer=consumer,  # type: ignore[arg-type]
        producer=producer,  # type: ignore[arg-type]
    )
    loop.run(stop)
    if producer.acked < count:
        raise RuntimeError(f"only {producer.acked} of {count} commands were answered")
    cpu = producer.ended[0] - consumer.started[0]
    wall = producer.ended[1] - consumer.started[1]
    return cpu / count * 1e6, wall / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commands", type=int, default=5_000, help="commands per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per function; the median")
    parser.add_argument("--profile", action="store_true", help="cProfile one run of each")
    args = parser.parse_args()
    one_run(charge_async, 500)  # warm-up: imports, schema parsing, first-call caches
    for name, function in (("async", charge_async), ("plain", charge_plain)):
        runs = [one_run(function, args.commands) for _ in range(args.repeat)]
        cpu = statistics.median(r[0] for r in runs)
        wall = statistics.median(r[1] for r in runs)
        spread = ", ".join(f"{r[0]:.0f}" for r in runs)
        print(f"{name:6} {cpu:7.1f} µs CPU per command ({spread}); {wall:7.1f} µs wall")
        if args.profile:
            profiler = cProfile.Profile()
            profiler.runcall(one_run, function, args.commands)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
