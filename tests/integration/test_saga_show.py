"""`Client` and `saga show` with two orchestrator processes: a saga is described whichever owns it;
and the changelog read behind it, on a partition of its own."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest
from confluent_kafka import ConsumerGroupState, Producer
from confluent_kafka.admin import NewTopic

from sagastream.examples.events import OrderPlaced
from sagastream.ops.admin import admin_client
from sagastream.ops.client import AsyncClient, Client, SagaView, _describer, _last_record
from sagastream.ops.demo import settings_env
from sagastream.wire.partitioner import partition_for
from tests.integration.conftest import HANDLERS
from tests.integration.helpers import good_order, loan_applied, wait_outcomes

pytestmark = pytest.mark.integration

LOAN_HANDLERS = "credit,documents,disbursement"


def owned_partitions(ns: Any, timeout: float = 60.0) -> list[set[int]]:
    """The start topic's partitions of each orchestrator process, once two share them."""
    admin = admin_client(ns.settings)
    group = ns.settings.group("orchestrator")
    topic = ns.topic(ns.topology.event_topic("OrderPlaced"))
    deadline = time.monotonic() + timeout
    while True:
        described = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
        owned = [
            {tp.partition for tp in m.assignment.topic_partitions if tp.topic == topic}
            for m in described.members
        ]
        if described.state == ConsumerGroupState.STABLE and len(owned) == 2 and all(owned):
            return owned
        assert time.monotonic() < deadline, f"no two orchestrators share {topic}: {owned}"
        time.sleep(0.5)


def keys_on(partitions: set[int], count: int, prefix: str, n: int) -> list[str]:
    """The first `count` keys `<prefix>-<i>` that producers send to one of `partitions`."""
    keys = (f"{prefix}-{i}" for i in range(10_000))
    return [k for k in keys if partition_for(k.encode(), n) in partitions][:count]


def run_cli(ns: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sagastream.ops.cli", "saga", "show", *args],
        env={**os.environ, **settings_env(ns.settings)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def check_ended(view: SagaView | None, status: str) -> SagaView:
    assert view is not None and view.status == status
    assert view.ended_ms is not None and view.ended_ms >= view.started_ms
    assert view.timers == []  # an ended saga disarms every timer
    assert [c.what for c in view.history][0] == "started"
    assert view.history[-1].what == status and view.history_complete
    for step in view.steps:
        if step.attempts:
            assert step.started_ms is not None and step.ended_ms is not None
            assert view.started_ms <= step.started_ms <= step.ended_ms
    return view


async def describe_async(ns: Any, saga: str, key: str) -> SagaView | None:
    async with AsyncClient(ns.settings) as client:
        return await client.describe(saga, key)


def wait_for(describe: Any, until: Any, timeout: float = 40.0) -> SagaView:
    deadline = time.monotonic() + timeout
    while True:
        view = describe()
        if view is not None and until(view):
            return view
        assert time.monotonic() < deadline, f"the saga never got there: {view}"
        time.sleep(0.5)


def test_describe_and_saga_show_answer_for_keys_on_either_orchestrator(
    ns: Any, start_workers: Any
) -> None:
    start_workers("orchestrator")
    start_workers("orchestrator")
    start_workers(f"{HANDLERS},{LOAN_HANDLERS}")
    owners = owned_partitions(ns)
    n = ns.topology.partitions(ns.topology.event_topic("OrderPlaced"))

    with Client(ns.settings) as client:
        expected: dict[str, str] = {}
        for owner, partitions in enumerate(owners):
            good, declined = keys_on(partitions, 2, f"show{owner}", n)
            assert client.start(OrderPlaced(**good_order(good))) == good
            client.start(OrderPlaced(**{**good_order(declined), "card_token": "tok_decline"}))
            expected.update({good: "completed", declined: "compensated"})
        loan = loan_applied("show-loan")
        client.start(loan, wait=False)
        outcomes = wait_outcomes(ns, set(expected))

        for key, status in expected.items():
            view = check_ended(client.describe("order", key), status)
            assert view.partition == partition_for(key.encode(), n) == outcomes[key].partition
            steps = {s.name: s for s in view.steps}
            if status == "completed":
                assert all(s.state == "succeeded" and s.attempts == 1 for s in steps.values())
            else:
                assert view.failed_step == "payment" and view.reason
                assert (steps["payment"].state, steps["payment"].attempts) == ("failed", 1)
                for name in ("inventory", "shipping"):
                    assert steps[name].state == "compensated"
                    assert steps[name].compensation_attempts == 1
                    assert steps[name].compensation_ended_ms is not None

        # the loan waits for a person: running, with its review's escalation, its maximum wait
        # and the deadline armed
        waiting = wait_for(
            lambda: client.describe("loan", "show-loan"),
            lambda v: {s.name: s.state for s in v.steps}["review"] == "running",
        )
        assert waiting.status == "running" and waiting.ended_ms is None
        assert {(t.kind, t.step, t.attempt) for t in waiting.timers} == {
            ("step_timeout", "review", 1),
            ("max_wait", "review", 1),
            ("deadline", None, 0),
        }
        assert ("step_started", "review") in [(c.what, c.step) for c in waiting.history]
        client.signal("loan", "show-loan", "review", "approved", note="fine", decided_by="test")
        wait_outcomes(ns, {"show-loan"})
        paid = check_ended(client.describe("loan", "show-loan"), "completed")
        assert [(s.name, s.state) for s in paid.steps][-2:] == [
            ("review", "succeeded"),
            ("disbursement", "succeeded"),
        ]

        assert client.describe("order", "no-such-order") is None
        with pytest.raises(ValueError, match="show-loan is the key of a loan saga"):
            client.describe("order", "show-loan")
        one = next(k for k, s in expected.items() if s == "compensated")
        assert asyncio.run(describe_async(ns, "order", one)) == client.describe("order", one)

    shown = run_cli(ns, "order", one)
    assert shown.returncode == 0, shown.stderr
    assert "status   compensated" in shown.stdout and "failed   payment" in shown.stdout
    rows = {line.split()[0]: line.split() for line in shown.stdout.splitlines() if line[:2] == "  "}
    assert rows["payment"][1:4] == ["failed", "1", "0"]
    assert rows["inventory"][1:4] == ["compensated", "1", "1"]
    assert shown.stdout.rstrip().splitlines()[-1].split()[1] == "compensated"
    as_json = json.loads(run_cli(ns, "order", one, "--json").stdout)
    assert as_json["status"] == "compensated" and as_json["history"][-1]["what"] == "compensated"

    missing = run_cli(ns, "order", "no-such-order")
    assert missing.returncode == 1
    assert "no order saga with key 'no-such-order'" in missing.stderr


def test_the_last_record_of_a_key_is_found_far_back_past_an_aborted_transaction(ns: Any) -> None:
    topic = ns.topic("last-record")
    admin = admin_client(ns.settings)
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result()
    producer = Producer(ns.settings.transactional_producer_config(f"{topic}-writer"))
    producer.init_transactions(30)

    def write(records: list[tuple[bytes, bytes | None]], commit: bool = True) -> None:
        producer.begin_transaction()
        for key, value in records:
            producer.produce(topic, key=key, value=value, partition=0)
        (producer.commit_transaction if commit else producer.abort_transaction)(30)

    write([(b"target", b"old"), (b"target", b"last")])
    write([(b"filler-%d" % i, b"x") for i in range(1_000)])
    write([(b"target", b"aborted")] * 300, commit=False)
    write([(b"filler-%d" % i, b"x") for i in range(600)])
    write([(b"gone", b"x")])
    write([(b"gone", None)])

    consumer = _describer(ns.settings)
    try:
        deadline = time.monotonic() + 30
        found = _last_record(consumer, topic, 0, b"target", deadline)
        assert found is not None and found.value() == b"last"
        gone = _last_record(consumer, topic, 0, b"gone", deadline)
        assert gone is not None and gone.value() is None
        assert _last_record(consumer, topic, 0, b"never", deadline) is None
    finally:
        consumer.close()
