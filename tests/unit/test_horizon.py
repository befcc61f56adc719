"""Timers are judged against what a partition has read: the Horizon's rule, and the orchestrator
firing by it, on a fake consumer, a fake producer and in-memory stores."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from sagastream.runtime.checkpoint import Checkpoint
from sagastream.runtime.horizon import Horizon
from sagastream.runtime.metrics import Metrics
from sagastream.runtime.orchestrator import Orchestrator
from sagastream.runtime.settings import Settings
from sagastream.runtime.store import MemoryStore
from tests.unit.test_checkpoint import FakeProducer
from tests.unit.test_event_time import CODEC, ORDER, STORE, _input, _topology

NOW = 1_000_000
TOPICS = ["orders", "results"]
ALL = {(t, p) for t in TOPICS for p in range(2)}


def _ends(known: dict[tuple[str, int], tuple[int, int]]):
    return known.get


def test_a_partition_read_to_its_end_fires_by_the_clock() -> None:
    horizon = Horizon(TOPICS)
    horizon.assigned([("orders", 0, 5), ("results", 0, -1001)])
    ends = _ends({("orders", 0): (0, 5), ("results", 0): (0, 0)})
    assert horizon.until(0, NOW, ends, {}, ALL) == NOW


def test_nothing_fires_while_a_lagging_input_has_decided_nothing_yet() -> None:
    """After a restart the results on the topic may be older than any timer due by the clock."""
    horizon = Horizon(TOPICS)
    horizon.assigned([("orders", 0, 5), ("results", 0, 2)])
    ends = _ends({("orders", 0): (0, 5), ("results", 0): (0, 9)})
    assert horizon.until(0, NOW, ends, {}, ALL) is None
    assert horizon.until(0, NOW, _ends({("orders", 0): (0, 5)}), {}, ALL) is None  # end unknown


def test_a_lagging_partition_fires_only_before_its_last_read_record() -> None:
    horizon = Horizon(TOPICS)
    horizon.assigned([("orders", 0, 5), ("results", 0, 2)])
    ends = _ends({("orders", 0): (0, 5), ("results", 0): (0, 9)})
    horizon.read(("results", 0), 2, NOW - 8_000)
    horizon.read(("results", 0), 3, NOW - 9_000)  # an earlier stamp after a later one
    assert horizon.until(0, NOW, ends, {}, ALL) == NOW - 9_001
    for offset in range(4, 9):
        horizon.read(("results", 0), offset, NOW - 7_000)
    assert horizon.until(0, NOW, ends, {}, ALL) == NOW  # read to its end: the clock again


def test_the_consumers_position_passes_control_records() -> None:
    """A transaction's commit marker ends the partition: the position says it was passed."""
    horizon = Horizon(TOPICS)
    horizon.assigned([("orders", 0, 0), ("results", 0, 0)])
    horizon.read(("orders", 0), 2, NOW - 50)
    ends = _ends({("orders", 0): (0, 4), ("results", 0): (0, 0)})
    assert horizon.until(0, NOW, ends, {}, ALL) == NOW - 51
    assert horizon.until(0, NOW, ends, {("orders", 0): 4}, ALL) == NOW


def test_a_record_held_for_the_registry_stops_time_before_it() -> None:
    horizon = Horizon(TOPICS)
    horizon.assigned([("orders", 0, 0), ("results", 0, 0)])
    ends = _ends({("orders", 0): (0, 1), ("results", 0): (0, 0)})
    horizon.held(("orders", 0), 0, NOW - 3_000)
    # a paused partition is not fetched, so its cached end may say nothing: the hold still does
    assert horizon.until(0, NOW, _ends({("results", 0): (0, 0)}), {}, ALL) == NOW - 3_001
    horizon.read(("orders", 0), 0, NOW - 3_000)
    assert horizon.until(0, NOW, ends, {}, ALL) == NOW


def test_an_input_partition_not_assigned_holds_nothing_back() -> None:
    horizon = Horizon(TOPICS)
    horizon.assigned([("orders", 0, 5)])
    ends = _ends({("orders", 0): (0, 5)})
    assert horizon.until(0, NOW, ends, {}, {("orders", 0)}) == NOW


def test_an_abort_undoes_what_was_read_since_the_committed_offsets() -> None:
    horizon = Horizon(TOPICS)
    horizon.assigned([("orders", 0, 0), ("results", 0, 0)])
    ends = _ends({("orders", 0): (0, 3), ("results", 0): (0, 0)})
    horizon.read(("orders", 0), 0, NOW - 10)
    horizon.rewound([("orders", 0, 0), ("results", 0, 0)])
    assert horizon.until(0, NOW, ends, {}, ALL) is None
    horizon.dropped({0})
    horizon.assigned([("orders", 1, -1001), ("results", 1, -1001)])
    # nothing committed, a partition emptied by retention: the consumer starts at its low end
    ends = _ends({("orders", 1): (7, 7), ("results", 1): (0, 0)})
    assert horizon.until(1, NOW, ends, {}, ALL) == NOW


@dataclass
class FakeConsumer:
    """Assignment, positions and cached watermarks, as the orchestrator asks them."""

    ends: dict[tuple[str, int], tuple[int, int]]
    paused: list[int] = field(default_factory=list)

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.ends]

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, -1001) for tp in partitions]

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool) -> tuple[int, int]:
        assert cached, "the timer tick must not ask the broker"
        return self.ends.get((tp.topic, tp.partition), (-1001, -1001))


def test_the_orchestrator_decides_results_on_the_topic_before_their_timeouts(
    tmp_path: Path,
) -> None:
    """Every step's timeout is due by the clock, but their results wait on the topics unread
    (the orchestrator was down): no timer fires until they are read, and the saga completes."""
    topology = _topology()
    orchestrator = Orchestrator(
        Settings(data_dir=tmp_path), topology, STORE, CODEC, Metrics.create("t")
    )
    producer = FakeProducer()
    orchestrator._ckpt = Checkpoint(producer, "changelog")  # type: ignore[arg-type]
    orchestrator.stores = {0: MemoryStore()}
    # nothing committed yet: each input is read from its low watermark, one record on each
    ends = {(t, 0): (0, 1) for t in topology.orchestrator_inputs()}
    orchestrator._consumer = FakeConsumer(ends)  # type: ignore[assignment]
    orchestrator.clock = lambda: 1000
    placed = _input("orders.events", 0, 1000, "OrderPlaced", **ORDER)
    orchestrator._handle(placed)  # type: ignore[arg-type]
    orchestrator.clock = lambda: 1000 + 600_000  # long past every step's timeout
    orchestrator._fire_due()
    assert _sent(producer) == ["ChargePayment", "ReserveInventory", "CreateShipment"]

    for record in [
        _input("payments.events", 0, 1200, "PaymentCharged", payment_id="p", amount_cents=1),
        _input("inventory.events", 0, 1300, "InventoryReserved", reservation_id="r"),
        _input("shipping.events", 0, 1400, "ShipmentCreated", shipment_id="s"),
    ]:
        orchestrator._fire_due()
        orchestrator._handle(record)  # type: ignore[arg-type]
    orchestrator._fire_due()
    sent = _sent(producer)
    assert sent[:4] == ["ChargePayment", "ReserveInventory", "CreateShipment", "SagaCompleted"]
    assert set(sent[4:]) <= {"SendNotification"}, sent


def _sent(producer: FakeProducer) -> list[str]:
    return [
        CODEC.decode(value)[0] for topic, _, value, _ in producer.pending if topic != "changelog"
    ]


@dataclass
class CommittingConsumer(FakeConsumer):
    """The fake consumer, able to send its group's offsets with a transaction."""

    def consumer_group_metadata(self) -> str:
        return "group-metadata"


def test_a_fired_timer_counts_how_late_it_fired_once_its_transaction_commits(
    tmp_path: Path,
) -> None:
    """sagastream_timer_lateness_seconds: the clock at the fire less the due time, counted at the
    commit (a fire undone by an abort fires again, later, and is counted then)."""
    topology = _topology()
    orchestrator = Orchestrator(
        Settings(data_dir=tmp_path), topology, STORE, CODEC, Metrics.create("t")
    )
    orchestrator._ckpt = Checkpoint(FakeProducer(), "changelog")  # type: ignore[arg-type]
    store = orchestrator.stores[0] = MemoryStore()
    ends = {(t, 0): (0, 0) for t in topology.orchestrator_inputs()}
    ends["orders.events", 0] = (0, 1)
    orchestrator._consumer = CommittingConsumer(ends)  # type: ignore[assignment]
    orchestrator.clock = lambda: 1000
    orchestrator._handle(_input("orders.events", 0, 1000, "OrderPlaced", **ORDER))  # type: ignore[arg-type]
    orchestrator._commit()
    state = orchestrator._ckpt.state(0, store, b"o-1")
    assert state is not None
    timeouts = [due for timer, due in state.timers.items() if timer.startswith("step_timeout|")]
    assert len(timeouts) == 3, state.timers  # one a step, each due before the saga's deadline
    fire_at = max(timeouts) + 2500
    orchestrator.clock = lambda: fire_at
    orchestrator._fire_due()
    registry = orchestrator.metrics.registry

    def observed(what: str) -> float | None:
        return registry.get_sample_value(
            f"sagastream_timer_lateness_seconds_{what}", {"kind": "step_timeout"}
        )

    assert not observed("count"), "nothing is counted before the commit"
    orchestrator._commit()
    assert observed("count") == 3
    assert observed("sum") == pytest.approx(sum(fire_at - due for due in timeouts) / 1000)
