"""A repeatable microbenchmark of a handler role's per-command work, without a broker.

The real HandlerLoop runs on stand-in clients that hand out pre-encoded commands at once and
acknowledge every result on the next poll: each command is decoded, routed, run by its function
as the worker runs an app's function (model, context, contract check), its result encoded and
produced. Prints CPU µs per command (time.process_time, so the plain functions' threads count
too; the machine is shared) for an async and a plain function that answer at once, the median
of `--repeat` runs; with --demo, for the demo's own functions instead (payment async,
notification plain, each with its SQLite idempotency ledger, no latency).

Run: .venv/bin/python -m tests.perf.handler_profile [--commands N] [--repeat 5] [--demo] [--profile]
It prints figures and asserts nothing; tests/unit/test_handler_profile.py checks that every
command it sends is answered with its success event.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Message, TopicPartition

from sagastream.app import App, RoleHandler
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

ROOT = Path(__file__).resolve().parents[2]
STORE = SchemaStore(ROOT / "schemas")
TOPOLOGY = load_topology(ROOT / "topology.yaml", STORE.directory)
CODEC = AvroCodec(STORE, LocalSchemaIds(STORE))
SETTINGS = Settings()
CHARGE = {"customer_id": "c-1", "amount_cents": 100, "currency": "EUR", "card_token": "tok"}
NOTIFY = {
    "customer_id": "c-1",
    "email": "a@example.com",
    "channel": "email",
    "template": "order_completed",
    "outcome": "completed",
}


@dataclass(frozen=True)
class Case:
    """What one run feeds a role: its command type, the command's fields, and its functions."""

    name: str
    role: str
    command: str
    step: str | None  # the step that sends the command (None: a notification)
    fields: dict[str, Any]
    handler: Callable[[], RoleHandler]

    @property
    def topic(self) -> str:
        return SETTINGS.topic(TOPOLOGY.handlers[self.role].consumes)


async def charge_async(cmd: ChargePayment) -> PaymentCharged:
    return PaymentCharged(order_id=cmd.order_id, payment_id="pay-1", amount_cents=1)


def charge_plain(cmd: ChargePayment) -> PaymentCharged:
    return PaymentCharged(order_id=cmd.order_id, payment_id="pay-1", amount_cents=1)


def refund(cmd: RefundPayment) -> PaymentRefunded:
    """The role's other command: never sent here, but a role needs a function for each."""
    return PaymentRefunded(order_id=cmd.order_id, payment_id=cmd.payment_id)


def payment_role(function: Callable[..., Any]) -> RoleHandler:
    app = App()
    app.handler(function)
    app.handler(refund)
    return app.role_handler("payment", TOPOLOGY)


def demo_role(role: str, folder: Path) -> RoleHandler:
    """The demo app's functions for `role`, their ledgers in `folder`."""
    import sagastream.examples.notification
    import sagastream.examples.payment  # noqa: F401 - registers the role's functions
    from sagastream.examples.app import app

    app.start(Settings(data_dir=folder, handler_latency_ms=0))
    return app.role_handler(role, TOPOLOGY)


def commands(case: Case, count: int) -> list[Message]:
    """`count` commands of `case`, each of its own saga, on partition 0."""
    found = []
    names = {field["name"] for field in STORE.raw(case.command)["fields"]}
    for n in range(count):
        key = f"o-{n}-{time.monotonic_ns()}"  # new keys each run: the demo's ledgers remember
        record = {
            "meta": {**new_meta(case.command, key, "bench"), "step": case.step},
            "idempotency_key": f"order:{key}:{case.role}",
            "order_id": key,
            **case.fields,
        }
        value = CODEC.encode(case.command, {k: v for k, v in record.items() if k in names})
        found.append(
            Message(
                topic=case.topic,
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
        self._topic = messages[0].topic() or ""
        self._next = 0
        self._on_assign: Callable[..., None] | None = None
        self.started = (0.0, 0.0)  # CPU and wall clock at the first command handed out

    def subscribe(self, topics: list[str], **callbacks: Callable[..., None]) -> None:
        self._on_assign = callbacks["on_assign"]

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        if self._on_assign is not None:
            self._on_assign(self, [TopicPartition(self._topic, 0)])
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
        self.results: Counter[bytes] = Counter()  # by the event_type header

    def produce(self, topic: str, value: bytes, key: bytes | None, **kw: Any) -> None:
        self._unacked.append(kw["on_delivery"])
        self.results[kw["headers"][0][1]] += 1

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


def one_run(case: Case, count: int) -> tuple[float, float, Counter[bytes]]:
    """One run of `count` commands through a fresh loop: CPU and wall µs per command, and the
    results produced by event type."""
    handler = case.handler()
    stop = threading.Event()
    consumer, producer = Consumer(commands(case, count)), Producer(count, stop)
    loop = HandlerLoop(
        SETTINGS,
        TOPOLOGY,
        STORE,
        CODEC,
        case.role,
        handler,
        handler.commands,
        Metrics.create(case.role),
        is_async=handler.is_async,
        consumer=consumer,  # type: ignore[arg-type]
        producer=producer,  # type: ignore[arg-type]
    )
    loop.run(stop)
    if producer.acked < count:
        raise RuntimeError(f"only {producer.acked} of {count} commands were answered")
    cpu = producer.ended[0] - consumer.started[0]
    wall = producer.ended[1] - consumer.started[1]
    return cpu / count * 1e6, wall / count * 1e6, producer.results


def own_cases() -> list[Case]:
    def payment(function: Callable[..., Any]) -> Callable[[], RoleHandler]:
        return lambda: payment_role(function)

    return [
        Case("async", "payment", "ChargePayment", "payment", CHARGE, payment(charge_async)),
        Case("plain", "payment", "ChargePayment", "payment", CHARGE, payment(charge_plain)),
    ]


def demo_cases(folder: Path) -> list[Case]:
    def demo(role: str) -> Callable[[], RoleHandler]:
        return lambda: demo_role(role, folder)

    return [
        Case("async", "payment", "ChargePayment", "payment", CHARGE, demo("payment")),
        Case("plain", "notification", "SendNotification", None, NOTIFY, demo("notification")),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commands", type=int, default=5_000, help="commands per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per function; the median")
    parser.add_argument("--demo", action="store_true", help="the demo's functions instead")
    parser.add_argument("--profile", action="store_true", help="cProfile one run of each")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-handler-") as folder:
        cases = demo_cases(Path(folder)) if args.demo else own_cases()
        one_run(cases[0], 500)  # warm-up: imports, schema parsing, first-call caches
        for case in cases:
            measure(case, args.commands, args.repeat, args.profile)


def measure(case: Case, count: int, repeat: int, profile: bool) -> None:
    """Print the median of `repeat` runs of `case`, and its profile if asked."""
    runs = [one_run(case, count) for _ in range(repeat)]
    cpu = statistics.median(r[0] for r in runs)
    wall = statistics.median(r[1] for r in runs)
    spread = ", ".join(f"{r[0]:.0f}" for r in runs)
    print(f"{case.name:6} {cpu:7.1f} µs CPU per command ({spread}); {wall:7.1f} µs wall")
    if profile:
        profiler = cProfile.Profile()
        profiler.runcall(one_run, case, count)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
