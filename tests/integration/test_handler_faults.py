"""Handler workers under faults: a hung plain function, a refused result, a frozen broker.

The payment role runs the plain functions of `stuck_app` in a real worker process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from sagastream.core.topology import load_topology
from sagastream.local import kafka as localkafka
from sagastream.ops.admin import admin_client, create_topics
from sagastream.ops.client import EventClient
from sagastream.ops.demo import WorkerSet
from sagastream.runtime.settings import Settings
from sagastream.runtime.worker import CLOSE_GRACE_S
from sagastream.wire.codec import new_meta
from sagastream.wire.dlq import read_dead_letter_headers
from sagastream.wire.partitioner import partition_for
from sagastream.wire.registry import build_codec
from tests.integration import stuck_app
from tests.integration.helpers import (
    every_dead_letter,
    free_broker_port,
    free_port,
    http_get,
    metric,
)

pytestmark = pytest.mark.integration

STUCK_APP = "tests.integration.stuck_app"
REPO = str(Path(__file__).parents[2])
# a busy loop polls hundreds of times a second; a backed-off one a few dozen at most
MAX_POLLS_PER_S = 50
FREEZE_S = 30
BOUND_MS = 3000  # the hung charge's run-time bound
DRAIN_S = 3.0


def charge(client: EventClient, topic: str, order_id: str) -> None:
    record = {
        "meta": new_meta("ChargePayment", order_id, "test", attempt=1),
        "idempotency_key": f"order:{order_id}:payment",
        "order_id": order_id,
        "customer_id": "c-1",
        "amount_cents": 100,
        "currency": "EUR",
        "card_token": "tok_visa",
    }
    client.publish_raw(topic, order_id.encode(), client.codec.encode("ChargePayment", record))


def stuck_env(port: int, **settings: str) -> dict[str, str]:
    """A worker running `stuck_app`, serving its metrics on `port`."""
    env = {"SAGASTREAM_APP": STUCK_APP, "SAGASTREAM_METRICS_PORT": str(port), "PYTHONPATH": REPO}
    env.update({f"SAGASTREAM_{k.upper()}": v for k, v in settings.items()})
    return env


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def own_broker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A single broker of this test's own, on its own ports: it can be frozen without harming
    anyone else's. Yields (bootstrap, broker pid)."""
    monkeypatch.setenv(localkafka.ENV_DATA_DIR, str(tmp_path / "kafka"))
    monkeypatch.setenv(localkafka.ENV_PORT, str(free_broker_port()))
    bootstrap = localkafka.start(log=lambda m: None)
    [pid] = localkafka.status()["pids"]  # type: ignore[misc]
    try:
        yield bootstrap, pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        localkafka.stop(log=lambda m: None)


def test_a_handler_backs_off_while_its_results_cannot_be_delivered(
    own_broker: tuple[str, int], tmp_path: Path
) -> None:
    bootstrap, broker_pid = own_broker
    settings = Settings(
        bootstrap_servers=bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}-",
        data_dir=tmp_path / "data",
    )
    topology = load_topology(settings.topology_file, settings.schemas_path)
    create_topics(settings, topology)
    client = EventClient(settings, topology, build_codec(settings), "test")
    port = free_port()
    workers = WorkerSet(settings, tmp_path / "logs")
    workers.start(["payment"], stuck_env(port))
    try:
        workers.wait_ready()
        orders = [f"slow-{n}" for n in range(3)]
        for order in orders:
            charge(client, settings.topic("payments.commands"), order)
        client.flush()
        deadline = time.monotonic() + 30
        while metric(port, "sagastream_events_consumed_total", role="payment") < len(orders):
            assert time.monotonic() < deadline, "the handler never took its commands"
            time.sleep(0.1)
        os.kill(broker_pid, signal.SIGSTOP)
        # the slow functions end during the freeze; their results wait for the broker
        time.sleep(stuck_app.SLOW_S + 1)
        pid = workers.procs["payment"].pid
        polls, cpu = metric(port, "sagastream_handler_polls_total"), cpu_seconds(pid)
        started = time.monotonic()
        time.sleep(FREEZE_S)
        polls = metric(port, "sagastream_handler_polls_total") - polls
        cpu, seconds = cpu_seconds(pid) - cpu, time.monotonic() - started
        os.kill(broker_pid, signal.SIGCONT)
        print(
            f"frozen {seconds:.0f}s with {len(orders)} results undelivered: handler "
            f"{polls:.0f} polls ({polls / seconds:.1f}/s), {cpu:.2f} CPU seconds"
        )
        assert polls / seconds < MAX_POLLS_PER_S
        # a command whose partition was lost in the freeze may run again (at least once): its
        # result can come twice, so the read ends when every order has one
        answered = client.read(
            [settings.topic("payments.events")],
            lambda m: {r.record["order_id"] for r in m} >= set(orders),
            90,
        )
        assert {m.record["order_id"] for m in answered} == set(orders)
        assert {m.event_type for m in answered} == {"PaymentCharged"}
        workers.check_alive()
    finally:
        workers.stop()
        client.close()


def same_partition_keys(ns: Any, first: str, count: int) -> tuple[int, list[str]]:
    """`count` order ids whose commands share the partition of `first`'s: (partition, ids)."""
    partitions = ns.topology.partitions("payments.commands")
    home = partition_for(first.encode(), partitions)
    found = (f"ok-{n}" for n in range(10_000))
    return home, [k for k in found if partition_for(k.encode(), partitions) == home][:count]


def committed(ns: Any, partition: int) -> int:
    """The payment handler group's committed offset of one payments.commands partition."""
    group = Consumer(ns.settings.consumer_config(ns.settings.group("payment")))
    try:
        [tp] = group.committed([TopicPartition(ns.topic("payments.commands"), partition)], 10)
        return int(tp.offset)
    finally:
        group.close()


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout}s"
        time.sleep(0.2)


def test_a_hung_plain_handler_is_passed_at_its_bound_and_saturates_the_role(
    ns: Any, tmp_path: Path
) -> None:
    port = free_port()
    workers = WorkerSet(ns.settings, tmp_path / "logs")
    env = stuck_env(port, handler_timeout_ms=str(BOUND_MS), handler_concurrency="2")
    workers.start(["payment"], env)
    commands = ns.topic("payments.commands")
    try:
        workers.wait_ready()
        partition, others = same_partition_keys(ns, "block-1", 3)
        for order in ["block-1", *others]:
            charge(ns.client, commands, order)
        ns.client.flush()
        answered = ns.client.read(
            [ns.topic("payments.events")], lambda m: len(m) >= len(others) + 1, 60
        )
        charged = [m.record["order_id"] for m in answered if m.event_type == "PaymentCharged"]
        assert sorted(charged) == sorted(others)
        # the hung charge is abandoned at its bound, reported, and the commit passes it
        [failed] = [m for m in answered if m.event_type == "StepAttemptFailed"]
        assert (failed.key, failed.record["kind"]) == (b"block-1", "timeout")
        wait_until(lambda: committed(ns, partition) == 4, 30, "the commit never passed block-1")
        labels = {"role": "payment", "command": "ChargePayment"}
        assert metric(port, "sagastream_handler_timeouts_total", **labels) == 1
        assert http_get(port, "/readyz")[0] == 200  # one slot of two is still free
        charge(ns.client, commands, "block-2")
        ns.client.flush()
        wait_until(lambda: http_get(port, "/readyz")[0] == 503, 30, "never unready when saturated")
        answer = json.loads(http_get(port, "/readyz")[1])
        assert answer["roles"] == {"payment": False}
        [reason] = answer["reasons"]["payment"]
        assert reason.startswith("saturated: 2 commands past their run-time bound still run")
        assert every_dead_letter(ns) == []
    finally:
        workers.stop()


def test_sigterm_ends_a_worker_with_a_hung_plain_handler_within_the_drain_bound(
    ns: Any, tmp_path: Path
) -> None:
    port = free_port()
    workers = WorkerSet(ns.settings, tmp_path / "logs")
    workers.start(["payment"], stuck_env(port, drain_timeout_s=str(DRAIN_S)))
    try:
        workers.wait_ready()
        charge(ns.client, ns.topic("payments.commands"), "block-1")
        ns.client.flush()
        wait_until(
            lambda: metric(port, "sagastream_events_consumed_total", role="payment") == 1,
            30,
            "the handler never took its command",
        )
        code, seconds = workers.terminate("payment", timeout=60)
        print(f"SIGTERM with a hung handler thread: exit {code} after {seconds:.1f}s")
        assert code == 0
        assert seconds < DRAIN_S + CLOSE_GRACE_S
        assert every_dead_letter(ns) == []
    finally:
        workers.stop()


def _until_refused_as_old(ns: Any, topic: str) -> None:
    """The broker applies a config change a moment after it accepted it (the result went
    through, unrefused, in a CI run on a container broker): probe every partition with records a
    minute old until each refuses them."""
    probe = Producer(ns.settings.producer_config())
    deadline = time.monotonic() + 30
    while True:
        answers: list[KafkaError | None] = []
        for partition in range(ns.topology.partitions("payments.events")):
            probe.produce(
                topic,
                b"probe",
                b"probe",
                partition=partition,
                timestamp=int(time.time() * 1000) - 60_000,
                on_delivery=lambda err, _msg, into=answers: into.append(err),
            )
        probe.flush(30)
        if all(e is not None and e.code() == KafkaError.INVALID_TIMESTAMP for e in answers):
            return
        assert time.monotonic() < deadline, f"{topic} still takes old records: {answers}"
        time.sleep(0.2)


def test_a_result_the_broker_refuses_is_retried_then_its_command_dead_lettered(
    ns: Any, tmp_path: Path
) -> None:
    # the broker refuses every record of this topic (older than 1 ms on arrival): INVALID_RECORD
    refusing = ConfigResource(
        ConfigResource.Type.TOPIC,
        ns.topic("payments.events"),
        incremental_configs=[
            ConfigEntry(
                "message.timestamp.before.max.ms",
                "1",
                incremental_operation=AlterConfigOpType.SET,
            )
        ],
    )
    admin = admin_client(ns.settings)
    for future in admin.incremental_alter_configs([refusing]).values():
        future.result(30)
    _until_refused_as_old(ns, ns.topic("payments.events"))
    workers = WorkerSet(ns.settings, tmp_path / "logs")
    workers.start(["payment"])
    try:
        workers.wait_ready()
        charge(ns.client, ns.topic("payments.commands"), "refused-1")
        ns.client.flush()
        dead = ns.client.read([ns.topic("payments.commands.dlq")], lambda m: len(m) >= 1, 60)
        assert [m.record["order_id"] for m in dead] == ["refused-1"]
        why = read_dead_letter_headers(dead[0].headers)
        assert why["reason"] == "undeliverable"
        assert "payments.events was refused 3 times, last: KafkaError" in why["error"]
        partition = int(why["original.partition"])
        wait_until(lambda: committed(ns, partition) == 1, 30, "the commit stayed pinned")
        assert [m.key for m in every_dead_letter(ns)] == [b"refused-1"]
    finally:
        workers.stop()
