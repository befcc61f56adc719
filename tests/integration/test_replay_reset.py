"""`sagastream replay reset` on a real broker: plan, refuse while running, commit, reprocess once."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest
from confluent_kafka import Consumer, ConsumerGroupState, ConsumerGroupTopicPartitions
from confluent_kafka import TopicPartition as KafkaTopicPartition

from sagastream.ops import cli
from sagastream.ops.admin import admin_client
from sagastream.ops.demo import settings_env
from sagastream.ops.replay import role_topics
from tests.integration.conftest import HANDLERS
from tests.integration.helpers import OUTCOMES, place_order, wait_outcomes

pytestmark = pytest.mark.integration

RESET = ["replay", "reset", "--group", "orchestrator", "--saga", "order", "--to-beginning"]


def committed(ns, group: str, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int | None]:
    request = ConsumerGroupTopicPartitions(group, [KafkaTopicPartition(t, p) for t, p in tps])
    admin = admin_client(ns.settings)
    result = admin.list_consumer_group_offsets([request], request_timeout=10)[group].result()
    return {
        (tp.topic, tp.partition): tp.offset if tp.offset >= 0 else None
        for tp in result.topic_partitions
    }


def partitions_and_low_watermarks(ns, topics: list[str]) -> dict[tuple[str, int], int]:
    consumer = Consumer(
        {
            **ns.settings.librdkafka(),
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed",
        }
    )
    try:
        metadata = consumer.list_topics(timeout=10)
        return {
            (t, p): consumer.get_watermark_offsets(KafkaTopicPartition(t, p), timeout=10)[0]
            for t in topics
            for p in sorted(metadata.topics[t].partitions)
        }
    finally:
        consumer.close()


def wait_group_empty(ns, group: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        admin = admin_client(ns.settings)
        described = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
        if described.state in (ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD):
            return
        assert time.monotonic() < deadline, f"group {group} still {described.state.name}"
        time.sleep(0.5)


def plan_table(out: str, topics: list[str]) -> dict[tuple[str, int], tuple[str, int, int]]:
    """The printed plan's rows: (topic, partition) -> (current, new, reprocess)."""
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        if len(cells) >= 5 and cells[0] in topics:
            rows[(cells[0], int(cells[1]))] = (cells[2], int(cells[3]), int(cells[4]))
    return rows


def test_reset_to_beginning_reprocesses_without_second_effects(
    ns, start_workers, monkeypatch, capsys
):
    for name, value in settings_env(ns.settings).items():
        monkeypatch.setenv(name, value)
    keys = {f"order-replay-{i}" for i in range(5)}
    workers = start_workers("orchestrator", HANDLERS)
    for key in sorted(keys):
        place_order(ns, key)
    wait_outcomes(ns, keys)

    capsys.readouterr()
    assert cli.main([*RESET, "--execute"]) == 2
    assert "stop its workers first" in capsys.readouterr().err

    code, _ = workers.terminate("orchestrator")
    assert code == 0
    group = ns.settings.group("orchestrator")
    wait_group_empty(ns, group)

    topics = [ns.topic(t) for t in role_topics(ns.topology, "orchestrator", saga="order")]
    low = partitions_and_low_watermarks(ns, topics)
    before = committed(ns, group, list(low))
    assert sum(offset or 0 for offset in before.values()) > 0

    assert cli.main(RESET) == 0
    out = capsys.readouterr().out
    expected = {
        tp: (
            "none" if before[tp] is None else str(before[tp]),
            low[tp],
            (low[tp] if before[tp] is None else before[tp]) - low[tp],
        )
        for tp in low
    }
    assert plan_table(out, topics) == expected
    total = sum(r[2] for r in expected.values())
    assert f"total: {total} messages to reprocess on {len(low)} partitions" in out
    assert "dry run" in out and "reprocessing is safe" in out
    assert committed(ns, group, list(low)) == before

    assert cli.main([*RESET, "--execute"]) == 0
    assert f"committed the new offsets of {len(low)} partitions" in capsys.readouterr().out
    assert committed(ns, group, list(low)) == low

    workers.start(["orchestrator"])
    workers.wait_ready()
    # the orchestrator has read its inputs again once its commits are back where they were
    deadline = time.monotonic() + 60
    while True:
        now = committed(ns, group, list(low))
        if all((now[tp] or 0) >= (before[tp] or 0) for tp in low):
            break
        assert time.monotonic() < deadline, f"replay stuck at {now}, was {before}"
        time.sleep(0.5)

    outcomes = Counter(
        m.key.decode()
        for m in ns.client.read_to_end([ns.topic("sagas.outcomes")])
        if m.event_type in OUTCOMES and m.key
    )
    assert outcomes == dict.fromkeys(keys, 1)
    charges = Counter(
        (m.record["idempotency_key"], m.record["meta"]["attempt"])
        for m in ns.client.read_to_end([ns.topic("payments.commands")])
        if m.record
    )
    assert charges and max(charges.values()) == 1, charges
